//! Barrier alignment at an input gate, as a pure state machine. Aligned barriers block each
//! channel that delivered the barrier until every channel has; then the barrier is forwarded
//! once and the channels resume. An unaligned barrier is forwarded as soon as it first arrives
//! (it overtook the buffers queued before it); its later copies from other channels are only
//! counted. A newer checkpoint's barrier aborts an unfinished older alignment.

use corestream_netstack::BarrierKind;

/// What the task must do after a barrier arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlignmentAction {
    /// Stop reading this channel until alignment completes.
    Block(usize),
    /// Forward the barrier downstream and unblock these channels.
    Forward { checkpoint_id: u64, unblock: Vec<usize> },
    /// A newer barrier superseded an unfinished alignment: unblock without forwarding.
    Abort { checkpoint_id: u64, unblock: Vec<usize> },
    /// Nothing to do (a duplicate of a barrier already forwarded).
    None,
}

#[derive(Debug, Clone)]
pub struct BarrierAligner {
    channels: usize,
    checkpoint: Option<u64>,
    seen: Vec<bool>,
    forwarded: bool,
    ended: Vec<bool>,
}

impl BarrierAligner {
    pub fn new(channels: usize) -> Self {
        Self { channels, checkpoint: None, seen: vec![false; channels], forwarded: false, ended: vec![false; channels] }
    }

    pub fn on_end(&mut self, channel: usize) {
        self.ended[channel] = true;
    }

    pub fn on_barrier(&mut self, channel: usize, checkpoint_id: u64, kind: BarrierKind) -> Vec<AlignmentAction> {
        let mut actions = Vec::new();
        match self.checkpoint {
            Some(current) if checkpoint_id < current => return vec![AlignmentAction::None],
            Some(current) if checkpoint_id > current => {
                let unblock = self.blocked();
                if !unblock.is_empty() {
                    actions.push(AlignmentAction::Abort { checkpoint_id: current, unblock });
                }
                self.start(checkpoint_id);
            }
            None => self.start(checkpoint_id),
            _ => {}
        }
        self.seen[channel] = true;
        let complete = (0..self.channels).all(|c| self.seen[c] || self.ended[c]);
        match kind {
            BarrierKind::Unaligned => {
                if !self.forwarded {
                    self.forwarded = true;
                    actions.push(AlignmentAction::Forward { checkpoint_id, unblock: Vec::new() });
                } else {
                    actions.push(AlignmentAction::None);
                }
            }
            BarrierKind::Aligned => {
                if complete {
                    let unblock = self.blocked();
                    self.forwarded = true;
                    actions.push(AlignmentAction::Forward { checkpoint_id, unblock });
                } else {
                    actions.push(AlignmentAction::Block(channel));
                }
            }
        }
        if complete {
            self.seen.iter_mut().for_each(|s| *s = false);
        }
        actions
    }

    fn start(&mut self, checkpoint_id: u64) {
        self.checkpoint = Some(checkpoint_id);
        self.seen.iter_mut().for_each(|s| *s = false);
        self.forwarded = false;
    }

    fn blocked(&self) -> Vec<usize> {
        (0..self.channels).filter(|c| self.seen[*c]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_barrier_blocks_until_all_channels_deliver() {
        let mut a = BarrierAligner::new(3);
        assert_eq!(a.on_barrier(0, 1, BarrierKind::Aligned), vec![AlignmentAction::Block(0)]);
        assert_eq!(a.on_barrier(2, 1, BarrierKind::Aligned), vec![AlignmentAction::Block(2)]);
        assert_eq!(
            a.on_barrier(1, 1, BarrierKind::Aligned),
            vec![AlignmentAction::Forward { checkpoint_id: 1, unblock: vec![0, 1, 2] }]
        );
    }

    #[test]
    fn unaligned_barrier_is_forwarded_once_on_first_arrival() {
        let mut a = BarrierAligner::new(2);
        assert_eq!(
            a.on_barrier(1, 4, BarrierKind::Unaligned),
            vec![AlignmentAction::Forward { checkpoint_id: 4, unblock: vec![] }]
        );
        assert_eq!(a.on_barrier(0, 4, BarrierKind::Unaligned), vec![AlignmentAction::None]);
    }

    #[test]
    fn newer_barrier_aborts_an_unfinished_alignment() {
        let mut a = BarrierAligner::new(2);
        a.on_barrier(0, 1, BarrierKind::Aligned);
        let actions = a.on_barrier(1, 2, BarrierKind::Aligned);
        assert_eq!(
            actions,
            vec![AlignmentAction::Abort { checkpoint_id: 1, unblock: vec![0] }, AlignmentAction::Block(1)]
        );
    }

    #[test]
    fn ended_channels_do_not_hold_alignment() {
        let mut a = BarrierAligner::new(2);
        a.on_end(1);
        assert_eq!(
            a.on_barrier(0, 2, BarrierKind::Aligned),
            vec![AlignmentAction::Forward { checkpoint_id: 2, unblock: vec![0] }]
        );
    }
}
