//! Channel state: the in-flight data of an unaligned checkpoint, as raw network buffers and
//! the event-time events between them.
//!
//! While a task takes an unaligned checkpoint it copies the input items the barriers overtook
//! and those it reads from channels whose barrier has not yet arrived ([`InputCapture`],
//! bounded by [`MAX_CHANNEL_STATE_BYTES`]); its network outputs copy the items their barriers
//! overtook (`runtime/output.rs`). Watermarks and watermark statuses are kept with their place
//! among the buffers ([`ChannelEvent`]), so that a replay delivers every record against the
//! event time it met in the original run (Flink drops them and lets watermarks be generated
//! again after the in-flight data, which can turn late records into on-time ones). On restore
//! the bytes come back from disk: they are checked against the task's channels
//! ([`check_channels`]: channels, sizes, event places) and every buffer is validated as records
//! of the channel's type in a 16-byte aligned copy ([`AlignedBuffer`]) before any archive in it
//! is read in place; [`ChannelState::replay`] gives the order in which to deliver them.

use corestream_netstack::record::BufferValidator;
use corestream_netstack::{Event, InFlightCopy, WatermarkStatus, BUFFER_SIZE};

use super::{ChannelEvent, ChannelState, CheckpointId, TimeEvent};

/// In-flight data one task may capture for one checkpoint. Credit bounds it far below this
/// (a channel holds its exclusive and floating buffers, a producer its backlog); a checkpoint
/// that would exceed it is declined instead of growing memory without limit.
pub const MAX_CHANNEL_STATE_BYTES: u64 = 256 << 20;

/// What one stored event counts against [`MAX_CHANNEL_STATE_BYTES`].
const EVENT_BYTES: u64 = std::mem::size_of::<ChannelEvent>() as u64;

impl TimeEvent {
    /// The event to keep for `event`, if channel state keeps it.
    pub fn of(event: &Event) -> Option<Self> {
        match event {
            Event::Watermark(ts) => Some(TimeEvent::Watermark(*ts)),
            Event::WatermarkStatus(WatermarkStatus::Idle) => Some(TimeEvent::Idle),
            Event::WatermarkStatus(WatermarkStatus::Active) => Some(TimeEvent::Active),
            Event::EndOfPartition | Event::CheckpointBarrier { .. } | Event::LatencyMarker { .. } => None,
        }
    }

    pub fn to_event(self) -> Event {
        match self {
            TimeEvent::Watermark(ts) => Event::Watermark(ts),
            TimeEvent::Idle => Event::WatermarkStatus(WatermarkStatus::Idle),
            TimeEvent::Active => Event::WatermarkStatus(WatermarkStatus::Active),
        }
    }
}

/// One step of replaying a channel state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The channel's buffer of this index.
    Buffer(usize),
    Event(Event),
}

impl ChannelState {
    /// A channel state of buffers only.
    pub fn of_buffers(channel: u32, buffers: Vec<Vec<u8>>) -> Self {
        Self { channel, buffers, events: Vec::new() }
    }

    /// The state of `channel` from a copy of what a barrier overtook (the events it keeps).
    pub fn from_copy(channel: u32, copy: InFlightCopy) -> Self {
        let mut state = Self::of_buffers(channel, Vec::new());
        state.append(copy);
        state
    }

    /// Appends a copy of later in-flight items.
    fn append(&mut self, copy: InFlightCopy) {
        let base = self.buffers.len();
        let events = copy.events.iter().filter_map(|(after, e)| Some((after, TimeEvent::of(e)?)));
        self.events.extend(events.map(|(after, event)| ChannelEvent { after: (base + after) as u32, event }));
        self.buffers.extend(copy.buffers);
    }

    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty() && self.events.is_empty()
    }

    /// The order in which to deliver the state: every event before the buffer it precedes.
    /// Events placed after the last buffer come last (also any misplaced one, which
    /// [`check_channels`] refuses first).
    pub fn replay(&self) -> Vec<Replay> {
        let mut steps = Vec::with_capacity(self.buffers.len() + self.events.len());
        let mut events = self.events.iter().peekable();
        for index in 0..self.buffers.len() {
            while let Some(e) = events.next_if(|e| e.after as usize <= index) {
                steps.push(Replay::Event(e.event.to_event()));
            }
            steps.push(Replay::Buffer(index));
        }
        steps.extend(events.map(|e| Replay::Event(e.event.to_event())));
        steps
    }
}

/// Whether a channel state is read or written by the task's input gate or its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

/// What is wrong with captured or restored channel state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelStateError {
    #[error("the in-flight data of checkpoint {checkpoint} exceeds {limit} bytes")]
    TooLarge { checkpoint: CheckpointId, limit: u64 },
    #[error("the restored state names {direction} channel {channel}, but the task has {channels}")]
    UnknownChannel { direction: Direction, channel: u32, channels: usize },
    #[error("the restored state describes {direction} channel {channel} twice")]
    Duplicate { direction: Direction, channel: u32 },
    #[error("buffer {index} of restored {direction} channel {channel} has {len} bytes, more than a network buffer")]
    Oversized { direction: Direction, channel: u32, index: usize, len: usize },
    #[error("buffer {index} of restored {direction} channel {channel} does not hold valid records: {cause}")]
    Invalid { direction: Direction, channel: u32, index: usize, cause: String },
    #[error(
        "event {index} of restored {direction} channel {channel} is placed after buffer {after}, \
         but the channel has {buffers} buffers and its previous event is placed after buffer {previous}"
    )]
    EventOutOfPlace { direction: Direction, channel: u32, index: usize, after: u32, previous: u32, buffers: usize },
}

/// The input channel state of one checkpoint while it is being captured.
#[derive(Debug)]
pub struct InputCapture {
    checkpoint: CheckpointId,
    per_channel: Vec<ChannelState>,
    bytes: u64,
}

impl InputCapture {
    pub fn new(checkpoint: CheckpointId, channels: usize) -> Self {
        let per_channel = (0..channels).map(|c| ChannelState::of_buffers(c as u32, Vec::new())).collect();
        Self { checkpoint, per_channel, bytes: 0 }
    }

    pub fn checkpoint(&self) -> CheckpointId {
        self.checkpoint
    }

    /// Bytes captured so far (an event counts as the size of one in memory).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends a copy of one buffer read from `channel`.
    pub fn push(&mut self, channel: usize, buffer: &[u8]) -> Result<(), ChannelStateError> {
        self.account(buffer.len() as u64)?;
        self.per_channel[channel].buffers.push(buffer.to_vec());
        Ok(())
    }

    /// Appends an event read from `channel`, if channel state keeps it.
    pub fn push_event(&mut self, channel: usize, event: &Event) -> Result<(), ChannelStateError> {
        let Some(event) = TimeEvent::of(event) else {
            return Ok(());
        };
        self.account(EVENT_BYTES)?;
        let state = &mut self.per_channel[channel];
        state.events.push(ChannelEvent { after: state.buffers.len() as u32, event });
        Ok(())
    }

    /// Appends the items copied from the queue of `channel`, in order.
    pub fn extend(&mut self, channel: usize, copy: InFlightCopy) -> Result<(), ChannelStateError> {
        self.account(copy.bytes() as u64 + copy.events.len() as u64 * EVENT_BYTES)?;
        self.per_channel[channel].append(copy);
        Ok(())
    }

    /// Counts `len` bytes (buffers, and [`EVENT_BYTES`] per event) against the bound.
    fn account(&mut self, len: u64) -> Result<(), ChannelStateError> {
        self.bytes += len;
        if self.bytes > MAX_CHANNEL_STATE_BYTES {
            return Err(ChannelStateError::TooLarge { checkpoint: self.checkpoint, limit: MAX_CHANNEL_STATE_BYTES });
        }
        Ok(())
    }

    /// The captured channels, those with data only, by channel index.
    pub fn into_states(self) -> Vec<ChannelState> {
        self.per_channel.into_iter().filter(|state| !state.is_empty()).collect()
    }
}

/// Checks restored channel states against a task with `channels` channels in `direction`: each
/// names an existing channel, none twice (buffers of one channel split over two entries could be
/// replayed out of order), no buffer is larger than a network buffer, and the events are in
/// order and placed within the buffers.
pub fn check_channels(states: &[ChannelState], channels: usize, direction: Direction) -> Result<(), ChannelStateError> {
    let mut seen = vec![false; channels];
    for state in states {
        let c = state.channel as usize;
        if c >= channels {
            return Err(ChannelStateError::UnknownChannel { direction, channel: state.channel, channels });
        }
        if std::mem::replace(&mut seen[c], true) {
            return Err(ChannelStateError::Duplicate { direction, channel: state.channel });
        }
        if let Some((index, b)) = state.buffers.iter().enumerate().find(|(_, b)| b.len() > BUFFER_SIZE) {
            return Err(ChannelStateError::Oversized { direction, channel: state.channel, index, len: b.len() });
        }
        let mut previous = 0;
        for (index, e) in state.events.iter().enumerate() {
            if e.after < previous || e.after as usize > state.buffers.len() {
                return Err(ChannelStateError::EventOutOfPlace {
                    direction,
                    channel: state.channel,
                    index,
                    after: e.after,
                    previous,
                    buffers: state.buffers.len(),
                });
            }
            previous = e.after;
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Block([u8; 16]);

/// A heap buffer of network-buffer size whose start is 16-byte aligned, as a pool buffer's is,
/// so that records copied into it can be validated and read in place.
pub struct AlignedBuffer {
    blocks: Box<[Block]>,
    len: usize,
}

impl Default for AlignedBuffer {
    fn default() -> Self {
        Self { blocks: vec![Block([0; 16]); BUFFER_SIZE / 16].into_boxed_slice(), len: 0 }
    }
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuffer").field("len", &self.len).finish()
    }
}

impl AlignedBuffer {
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `Block` is `repr(C)` around `[u8; 16]` with no padding, so the boxed slice is
        // `BUFFER_SIZE` initialised bytes in one allocation, exclusively borrowed here.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), self.blocks.len() * 16) }
    }

    /// The bytes last loaded.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `bytes_mut`, shared; `len <= BUFFER_SIZE`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }

    /// Copies restored buffer `index` of `channel` in and validates it as records of the
    /// channel's type; returns the aligned bytes, ready to be read in place.
    pub fn load_valid(
        &mut self,
        bytes: &[u8],
        validator: BufferValidator,
        direction: Direction,
        channel: u32,
        index: usize,
    ) -> Result<&[u8], ChannelStateError> {
        if bytes.len() > BUFFER_SIZE {
            return Err(ChannelStateError::Oversized { direction, channel, index, len: bytes.len() });
        }
        self.bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        self.len = bytes.len();
        validator(self.as_slice()).map_err(|e| ChannelStateError::Invalid {
            direction,
            channel,
            index,
            cause: e.to_string(),
        })?;
        Ok(self.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use corestream_netstack::record::{validate_buffer, RecordWriter};
    use corestream_netstack::BufferPool;

    use super::*;

    fn records(values: &[u64]) -> Vec<u8> {
        let pool = BufferPool::new(1);
        let mut buf = pool.take().unwrap();
        let mut writer = RecordWriter::new();
        for v in values {
            writer.write(&mut buf, v).unwrap();
        }
        buf.as_slice().to_vec()
    }

    #[test]
    fn a_capture_keeps_channels_apart_in_order_and_is_bounded() {
        let mut capture = InputCapture::new(3, 3);
        capture.push(2, &[1, 2]).unwrap();
        capture.extend(0, InFlightCopy { buffers: vec![vec![3], vec![4, 5]], events: Vec::new() }).unwrap();
        capture.push(2, &[6]).unwrap();
        assert_eq!(capture.bytes(), 6);
        assert_eq!(
            capture.into_states(),
            vec![
                ChannelState::of_buffers(0, vec![vec![3], vec![4, 5]]),
                ChannelState::of_buffers(2, vec![vec![1, 2], vec![6]])
            ]
        );
        let mut big = InputCapture::new(4, 1);
        let buffer = vec![0u8; BUFFER_SIZE];
        let fits = (MAX_CHANNEL_STATE_BYTES / BUFFER_SIZE as u64) as usize;
        for _ in 0..fits {
            big.push(0, &buffer).unwrap();
        }
        assert_eq!(
            big.push(0, &[0]),
            Err(ChannelStateError::TooLarge { checkpoint: 4, limit: MAX_CHANNEL_STATE_BYTES })
        );
    }

    #[test]
    fn a_capture_keeps_time_events_in_place_among_the_buffers() {
        let mut capture = InputCapture::new(5, 2);
        capture.push_event(1, &Event::Watermark(10)).unwrap();
        capture.push(1, &[1]).unwrap();
        capture.push_event(1, &Event::LatencyMarker { marked_time_ns: 1, source_subtask: 0 }).unwrap();
        capture.push_event(1, &Event::WatermarkStatus(WatermarkStatus::Idle)).unwrap();
        let copy = InFlightCopy {
            buffers: vec![vec![2], vec![3]],
            events: vec![
                (0, Event::WatermarkStatus(WatermarkStatus::Active)),
                (1, Event::Watermark(20)),
                (2, Event::Watermark(30)),
            ],
        };
        capture.extend(1, copy).unwrap();
        capture.push_event(0, &Event::Watermark(5)).unwrap();
        assert_eq!(capture.bytes(), 3 + 6 * EVENT_BYTES, "the latency marker is not kept");
        let states = capture.into_states();
        assert_eq!(states.len(), 2, "a channel with events only is state too");
        let at = |after, event| ChannelEvent { after, event };
        assert_eq!(states[0].events, [at(0, TimeEvent::Watermark(5))]);
        assert_eq!(
            states[1].events,
            [
                at(0, TimeEvent::Watermark(10)),
                at(1, TimeEvent::Idle),
                at(1, TimeEvent::Active),
                at(2, TimeEvent::Watermark(20)),
                at(3, TimeEvent::Watermark(30))
            ]
        );
        use Replay::{Buffer, Event as E};
        assert_eq!(
            states[1].replay(),
            [
                E(Event::Watermark(10)),
                Buffer(0),
                E(Event::WatermarkStatus(WatermarkStatus::Idle)),
                E(Event::WatermarkStatus(WatermarkStatus::Active)),
                Buffer(1),
                E(Event::Watermark(20)),
                Buffer(2),
                E(Event::Watermark(30))
            ]
        );
        assert_eq!(check_channels(&states, 2, Direction::Input), Ok(()));
        let mut events_bound = InputCapture::new(6, 1);
        let fits = MAX_CHANNEL_STATE_BYTES / EVENT_BYTES;
        events_bound.bytes = (fits - 1) * EVENT_BYTES;
        events_bound.push_event(0, &Event::Watermark(1)).unwrap();
        assert_eq!(
            events_bound.push_event(0, &Event::Watermark(2)),
            Err(ChannelStateError::TooLarge { checkpoint: 6, limit: MAX_CHANNEL_STATE_BYTES })
        );
    }

    #[test]
    fn restored_events_must_be_in_order_and_within_the_buffers() {
        let state = |events: &[u32]| ChannelState {
            channel: 1,
            buffers: vec![vec![0u8; 8]; 2],
            events: events.iter().map(|&after| ChannelEvent { after, event: TimeEvent::Watermark(0) }).collect(),
        };
        assert_eq!(check_channels(&[state(&[0, 0, 2])], 2, Direction::Output), Ok(()));
        assert_eq!(
            check_channels(&[state(&[0, 3])], 2, Direction::Output),
            Err(ChannelStateError::EventOutOfPlace {
                direction: Direction::Output,
                channel: 1,
                index: 1,
                after: 3,
                previous: 0,
                buffers: 2
            })
        );
        let err = check_channels(&[state(&[2, 1])], 2, Direction::Input).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 1 of restored input channel 1 is placed after buffer 1, but the channel has 2 buffers and its \
             previous event is placed after buffer 2"
        );
    }

    #[test]
    fn restored_channels_must_exist_once_and_fit_a_buffer() {
        let state = |channel, len| ChannelState::of_buffers(channel, vec![vec![0u8; len]]);
        assert_eq!(check_channels(&[state(1, 8), state(0, 8)], 2, Direction::Input), Ok(()));
        assert_eq!(
            check_channels(&[state(2, 8)], 2, Direction::Output),
            Err(ChannelStateError::UnknownChannel { direction: Direction::Output, channel: 2, channels: 2 })
        );
        assert_eq!(
            check_channels(&[state(1, 8), state(1, 8)], 2, Direction::Input),
            Err(ChannelStateError::Duplicate { direction: Direction::Input, channel: 1 })
        );
        assert_eq!(
            check_channels(&[state(0, BUFFER_SIZE + 1)], 2, Direction::Input),
            Err(ChannelStateError::Oversized {
                direction: Direction::Input,
                channel: 0,
                index: 0,
                len: BUFFER_SIZE + 1
            })
        );
    }

    #[test]
    fn restored_buffers_are_validated_in_an_aligned_copy() {
        let mut aligned = AlignedBuffer::default();
        let good = records(&[7, 8, 9]);
        // Misaligned on purpose: the copy, not the source, is what gets read.
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&good);
        let bytes = aligned.load_valid(&shifted[1..], validate_buffer::<u64>, Direction::Input, 0, 0).unwrap();
        assert_eq!(bytes, &good[..]);
        assert_eq!(bytes.as_ptr() as usize % 16, 0);
        let mut bad = good.clone();
        bad[0] = 200;
        let err = aligned.load_valid(&bad, validate_buffer::<u64>, Direction::Output, 3, 1).unwrap_err();
        assert!(
            matches!(err, ChannelStateError::Invalid { direction: Direction::Output, channel: 3, index: 1, .. }),
            "{err}"
        );
    }
}
