//! The core every keyed operator shares — keyed process, keyed co-process and keyed broadcast,
//! interval join, windows: the keyed state backend of the subtask's key groups, its timer
//! service, the clocks ([`KeyedClock`]), firing due timers in steps, and the snapshot and
//! restore of all of it, written once.
//!
//! A snapshot is two parts with [`PartLayout::KeyGroups`]: the keyed state, and `timers`, the
//! framed archive of the [`TimerSnapshot`]. The keyed state is `keyed-state`, the framed archive
//! of the backend's [`KeyedStateSnapshot`], or, for an LSM backend with incremental checkpoints,
//! `keyed-state-files`, an [`LsmFilesSnapshot`] naming the store's files in the checkpoint
//! storage's shared area (uploaded off the task's thread). Both are organised by key group, so
//! a restore at another parallelism takes the parts of every old subtask whose key groups
//! overlap its own and keeps only its key groups. A third part,
//! `watermark`, keeps the operator's event time ([`PartLayout::OperatorList`], one value per
//! subtask; after a rescale the lowest a subtask receives): a restored operator judges
//! lateness as it did when the checkpoint was taken, not against the minimum watermark until
//! its inputs send new ones — records replayed from unaligned channel state, or the first
//! records of a restored source, would otherwise be on time after a restore and late without
//! one. Watermarks lower than the restored one are ignored (event time never goes back).

use corestream_state::lsm::LsmFilesSnapshot;
use corestream_state::{
    KeyedStateBackend, KeyedStateSnapshot, Namespace, StateError, StateKey, Timer, TimerService, TimerSnapshot,
};

use super::now_ms;
use super::process::TimeDomain;
use super::state_parts::{self, PartError};
use crate::checkpoint::storage::FsCheckpointStorage;
use crate::checkpoint::{CheckpointId, CheckpointNotice, OperatorStateParts, PartLayout, PendingParts};

/// Name of the part holding a keyed operator's keyed state.
pub(crate) const KEYED_STATE_PART: &str = "keyed-state";
/// Name of the part holding an incremental snapshot of a keyed operator's LSM backend.
pub(crate) const KEYED_FILES_PART: &str = "keyed-state-files";
/// Name of the part holding a keyed operator's timers.
pub(crate) const TIMERS_PART: &str = "timers";
/// Name of the part holding a keyed operator's event time.
pub(crate) const WATERMARK_PART: &str = "watermark";

/// The clocks of a keyed operator with timers: its event time, the processing time of the batch
/// or firing being handled (also the TTL clock of its keyed state), and the limits up to which
/// due timers are fired in steps (`Operator::fire_step`).
pub(crate) struct KeyedClock {
    pub(crate) watermark: i64,
    pub(crate) processing_time: i64,
    /// Event-time timers up to this watermark are due.
    pub(crate) event_until: Option<i64>,
    /// Processing-time timers up to this time are due.
    pub(crate) processing_until: Option<i64>,
}

impl KeyedClock {
    pub(crate) fn new() -> Self {
        Self { watermark: i64::MIN, processing_time: now_ms(), event_until: None, processing_until: None }
    }

    /// Event time advanced: timers up to `watermark` are due. A lower watermark (an input
    /// that has not caught up with a restored event time) changes nothing.
    pub(crate) fn on_watermark<K: StateKey>(&mut self, watermark: i64, backend: &KeyedStateBackend<K>) -> bool {
        if watermark < self.watermark {
            return false;
        }
        self.watermark = watermark;
        self.processing_time = now_ms();
        backend.set_current_time(self.processing_time);
        self.event_until = Some(watermark);
        true
    }

    /// Processing time reached `now`: processing-time timers up to it are due.
    pub(crate) fn on_processing_time<K: StateKey>(&mut self, now: i64, backend: &KeyedStateBackend<K>) {
        self.processing_time = now;
        backend.set_current_time(now);
        self.processing_until = Some(now);
    }

    /// A new batch: reads the processing-time clock.
    pub(crate) fn refresh<K: StateKey>(&mut self, backend: &KeyedStateBackend<K>) {
        self.processing_time = now_ms();
        backend.set_current_time(self.processing_time);
    }

    /// The next due timer, event time first; a limit is cleared once nothing more is due
    /// under it.
    pub(crate) fn next_due<K: StateKey, N: Namespace>(
        &mut self,
        timers: &mut TimerService<K, N>,
    ) -> Option<(Timer<K, N>, TimeDomain)> {
        if let Some(watermark) = self.event_until {
            match timers.pop_event_timer(watermark) {
                Some(t) => return Some((t, TimeDomain::EventTime)),
                None => self.event_until = None,
            }
        }
        if let Some(now) = self.processing_until {
            match timers.pop_processing_timer(now) {
                Some(t) => return Some((t, TimeDomain::ProcessingTime)),
                None => self.processing_until = None,
            }
        }
        None
    }
}

/// Keyed state, timers and clocks of one keyed operator subtask.
pub(crate) struct KeyedCore<K: StateKey, N: Namespace> {
    pub(crate) backend: KeyedStateBackend<K>,
    pub(crate) timers: TimerService<K, N>,
    pub(crate) clock: KeyedClock,
}

impl<K: StateKey, N: Namespace> KeyedCore<K, N> {
    /// A core around `backend`, with timers for the same key groups.
    pub(crate) fn new(backend: KeyedStateBackend<K>) -> Self {
        let timers = TimerService::new(backend.max_parallelism(), backend.key_groups());
        Self { backend, timers, clock: KeyedClock::new() }
    }

    /// Event time advanced to `watermark`; false (nothing changed, nothing to forward) when it
    /// is below the operator's event time.
    pub(crate) fn on_watermark(&mut self, watermark: i64) -> bool {
        self.clock.on_watermark(watermark, &self.backend)
    }

    pub(crate) fn on_processing_time(&mut self, now: i64) {
        self.clock.on_processing_time(now, &self.backend);
    }

    /// A new batch: reads the processing-time clock.
    pub(crate) fn refresh(&mut self) {
        self.clock.refresh(&self.backend);
    }

    /// The earliest pending processing-time timer.
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        self.timers.next_processing_time()
    }

    /// Fires due timers (event time first) through `fire` until about `max_records` records
    /// were emitted; true when nothing due is left.
    #[inline]
    pub(crate) fn fire_step<O>(
        &mut self,
        out: &mut Vec<O>,
        max_records: usize,
        mut fire: impl FnMut(&mut Self, Timer<K, N>, TimeDomain, &mut Vec<O>),
    ) -> bool {
        let start = out.len();
        while out.len() - start < max_records.max(1) {
            match self.clock.next_due(&mut self.timers) {
                Some((timer, domain)) => fire(self, timer, domain, out),
                None => return true,
            }
        }
        false
    }

    /// Adds the keyed state and `timers` parts for `checkpoint`.
    pub(crate) fn snapshot(&self, checkpoint: CheckpointId, into: &mut PendingParts) -> Result<(), PartError> {
        self.snapshot_with(checkpoint, into, std::iter::empty(), std::iter::empty())
    }

    /// Tells the backend which incremental snapshot completed (its files are reused) or will
    /// never complete.
    pub(crate) fn notify(&self, notice: CheckpointNotice) {
        match notice {
            CheckpointNotice::Complete(id) => self.backend.notify_checkpoint_complete(id),
            CheckpointNotice::Aborted(id) => self.backend.notify_checkpoint_aborted(id),
        }
    }

    /// As [`snapshot`](Self::snapshot), with timers the operator keeps outside the timer service
    /// (`(timestamp, key, namespace)` of event time, then processing time) in the `timers` part.
    pub(crate) fn snapshot_with<'a>(
        &'a self,
        checkpoint: CheckpointId,
        into: &mut PendingParts,
        extra_event: impl IntoIterator<Item = (i64, &'a K, &'a N)>,
        extra_processing: impl IntoIterator<Item = (i64, &'a K, &'a N)>,
    ) -> Result<(), PartError> {
        let files = match into.is_canonical() {
            true => None,
            false => self.backend.freeze_files(checkpoint).map_err(|e| PartError::state(KEYED_FILES_PART, e))?,
        };
        match files {
            Some(files) => state_parts::put_files(into, KEYED_FILES_PART, files),
            None => {
                let state = self.backend.freeze();
                state_parts::put_deferred(into, KEYED_STATE_PART, PartLayout::KeyGroups, move || state.encode());
            }
        }
        let timers = self.timers.freeze_with(extra_event, extra_processing);
        state_parts::put_deferred(into, TIMERS_PART, PartLayout::KeyGroups, move || timers.encode());
        state_parts::put_watermarks(into, WATERMARK_PART, &[self.clock.watermark])
    }

    /// Replaces keyed state and timers with those of `from` in this subtask's key groups (every
    /// `keyed-state` and `timers` part is read, so parts of several old subtasks may be given
    /// after a rescale). Every part is read (framing, checksum, validation) before anything
    /// changes; a restore that fails after that fails the task, which discards the operator.
    pub(crate) fn restore(&mut self, from: &OperatorStateParts) -> Result<(), PartError> {
        let states: Vec<KeyedStateSnapshot> = state_parts::get_all(from, KEYED_STATE_PART, PartLayout::KeyGroups)?;
        let files: Vec<LsmFilesSnapshot> = state_parts::get_all(from, KEYED_FILES_PART, PartLayout::KeyGroups)?;
        let timers: Vec<TimerSnapshot> = state_parts::get_all(from, TIMERS_PART, PartLayout::KeyGroups)?;
        let watermark = state_parts::get_min_watermark(from, WATERMARK_PART)?;
        if files.is_empty() {
            self.backend.restore(&states).map_err(|e| PartError::state(KEYED_STATE_PART, e))?;
        } else {
            let state_error = |reason: String| {
                PartError::state(KEYED_FILES_PART, StateError::Store { what: "the keyed state".into(), reason })
            };
            if !states.is_empty() {
                return Err(state_error(
                    "the checkpoint holds both full and incremental snapshots of this operator's keyed state".into(),
                ));
            }
            let root = from
                .shared_root
                .as_ref()
                .ok_or_else(|| state_error("the checkpoint storage holding its shared files is unknown".into()))?;
            let storage = FsCheckpointStorage::open(root).map_err(|e| state_error(e.to_string()))?;
            self.backend.restore_files(&files, &storage).map_err(|e| PartError::state(KEYED_FILES_PART, e))?;
        }
        self.timers.restore(&timers).map_err(|e| PartError::state(TIMERS_PART, e))?;
        if let Some(w) = watermark {
            self.clock.watermark = w;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corestream_state::{KeyGroupRange, StateBackendKind, ValueStateDescriptor};

    fn core(range: KeyGroupRange) -> KeyedCore<u64, ()> {
        KeyedCore::new(KeyedStateBackend::new(StateBackendKind::Heap, 128, range))
    }

    #[test]
    fn state_and_timers_round_trip_and_split_by_key_group() {
        let mut original = core(KeyGroupRange { start: 0, end: 128 });
        let mut counts = original.backend.value_state::<(), u64>(&ValueStateDescriptor::new("count")).unwrap();
        for key in 0..50u64 {
            original.backend.set_current_key(key);
            counts.update(key * 10);
            original.timers.register_event_time_timer(key, (), key as i64);
        }
        let mut parts = PendingParts::default();
        original.snapshot(1, &mut parts).unwrap();
        let parts = parts.complete().unwrap();

        let halves = [KeyGroupRange { start: 0, end: 64 }, KeyGroupRange { start: 64, end: 128 }];
        let mut fired = Vec::new();
        for range in halves {
            let mut restored = core(range);
            let counts = restored.backend.value_state::<(), u64>(&ValueStateDescriptor::new("count")).unwrap();
            restored.restore(&parts).unwrap();
            restored.on_watermark(i64::MAX);
            let mut out = Vec::new();
            while !restored.fire_step(&mut out, 7, |core, timer, _, out| {
                core.backend.set_current_key(timer.key);
                out.push((timer.key, counts.value()));
            }) {}
            fired.extend(out);
        }
        fired.sort();
        assert_eq!(fired, (0..50u64).map(|k| (k, Some(k * 10))).collect::<Vec<_>>());
    }

    #[test]
    fn event_time_is_restored_and_never_goes_back() {
        let mut original = core(KeyGroupRange { start: 0, end: 128 });
        original.on_watermark(1_000);
        original.timers.register_event_time_timer(1, (), 1_500);
        let mut parts = PendingParts::default();
        original.snapshot(1, &mut parts).unwrap();
        let parts = parts.complete().unwrap();
        let mut restored = core(KeyGroupRange { start: 0, end: 128 });
        restored.restore(&parts).unwrap();
        assert_eq!(restored.clock.watermark, 1_000);
        restored.on_watermark(500);
        assert_eq!(restored.clock.watermark, 1_000, "a lower watermark is ignored");
        let mut out = Vec::new();
        assert!(restored.fire_step(&mut out, 10, |_, t, _, out| out.push(t.timestamp)));
        assert!(out.is_empty());
        restored.on_watermark(2_000);
        while !restored.fire_step(&mut out, 10, |_, t, _, out| out.push(t.timestamp)) {}
        assert_eq!(out, vec![1_500]);
    }

    #[test]
    fn a_damaged_part_is_an_error_naming_it_and_changes_nothing() {
        let mut original = core(KeyGroupRange { start: 0, end: 128 });
        original.timers.register_processing_time_timer(3, (), 5);
        let mut parts = PendingParts::default();
        original.snapshot(1, &mut parts).unwrap();
        let parts = parts.complete().unwrap();
        for (index, name) in [(0, KEYED_STATE_PART), (1, TIMERS_PART)] {
            for at in 0..parts.parts[index].bytes.len() {
                let mut damaged = parts.clone();
                damaged.parts[index].bytes[at] ^= 0x40;
                let mut restored = core(KeyGroupRange { start: 0, end: 128 });
                restored.timers.register_event_time_timer(9, (), 9);
                let err = restored.restore(&damaged).unwrap_err();
                assert!(err.to_string().contains(&format!("'{name}'")), "byte {at}: {err}");
                assert_eq!(restored.timers.num_event_time_timers(), 1, "nothing changed");
            }
        }
    }
}
