//! Channel state: the in-flight data of an unaligned checkpoint, as raw network buffers.
//!
//! While a task takes an unaligned checkpoint it copies the input buffers the barriers
//! overtook and those it reads from channels whose barrier has not yet arrived
//! ([`InputCapture`], bounded by [`MAX_CHANNEL_STATE_BYTES`]); its network outputs copy the
//! buffers their barriers overtook (`runtime/output.rs`). On restore the bytes come back from
//! disk: they are checked against the task's channels ([`check_channels`]) and every buffer is
//! validated as records of the channel's type in a 16-byte aligned copy ([`AlignedBuffer`])
//! before any archive in it is read in place.

use corestream_netstack::record::BufferValidator;
use corestream_netstack::BUFFER_SIZE;

use super::{ChannelState, CheckpointId};

/// In-flight data one task may capture for one checkpoint. Credit bounds it far below this
/// (a channel holds its exclusive and floating buffers, a producer its backlog); a checkpoint
/// that would exceed it is declined instead of growing memory without limit.
pub const MAX_CHANNEL_STATE_BYTES: u64 = 256 << 20;

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
}

/// The input channel state of one checkpoint while it is being captured.
#[derive(Debug)]
pub struct InputCapture {
    checkpoint: CheckpointId,
    per_channel: Vec<Vec<Vec<u8>>>,
    bytes: u64,
}

impl InputCapture {
    pub fn new(checkpoint: CheckpointId, channels: usize) -> Self {
        Self { checkpoint, per_channel: vec![Vec::new(); channels], bytes: 0 }
    }

    pub fn checkpoint(&self) -> CheckpointId {
        self.checkpoint
    }

    /// Bytes captured so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends a copy of one buffer read from `channel`.
    pub fn push(&mut self, channel: usize, buffer: &[u8]) -> Result<(), ChannelStateError> {
        self.account(buffer.len())?;
        self.per_channel[channel].push(buffer.to_vec());
        Ok(())
    }

    /// Appends buffers copied from the queue of `channel`, in order.
    pub fn extend(&mut self, channel: usize, buffers: Vec<Vec<u8>>) -> Result<(), ChannelStateError> {
        self.account(buffers.iter().map(Vec::len).sum())?;
        self.per_channel[channel].extend(buffers);
        Ok(())
    }

    fn account(&mut self, len: usize) -> Result<(), ChannelStateError> {
        self.bytes += len as u64;
        if self.bytes > MAX_CHANNEL_STATE_BYTES {
            return Err(ChannelStateError::TooLarge { checkpoint: self.checkpoint, limit: MAX_CHANNEL_STATE_BYTES });
        }
        Ok(())
    }

    /// The captured channels, those with data only, by channel index.
    pub fn into_states(self) -> Vec<ChannelState> {
        self.per_channel
            .into_iter()
            .enumerate()
            .filter(|(_, buffers)| !buffers.is_empty())
            .map(|(channel, buffers)| ChannelState { channel: channel as u32, buffers })
            .collect()
    }
}

/// Checks restored channel states against a task with `channels` channels in `direction`: each
/// names an existing channel, none twice (buffers of one channel split over two entries could be
/// replayed out of order), and no buffer is larger than a network buffer.
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
        capture.extend(0, vec![vec![3], vec![4, 5]]).unwrap();
        capture.push(2, &[6]).unwrap();
        assert_eq!(capture.bytes(), 6);
        assert_eq!(
            capture.into_states(),
            vec![
                ChannelState { channel: 0, buffers: vec![vec![3], vec![4, 5]] },
                ChannelState { channel: 2, buffers: vec![vec![1, 2], vec![6]] }
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
    fn restored_channels_must_exist_once_and_fit_a_buffer() {
        let state = |channel, len| ChannelState { channel, buffers: vec![vec![0u8; len]] };
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
