//! `corestream bench transport`: what io_uring's zero-copy send and multishot receive are worth
//! for the TCP data plane, measured against plain `send`/`recv` on the same 32 KB pooled
//! buffers. A sender thread and a receiver thread (pinned to cores 0 and 1 when there are two)
//! move the same number of 32 KB frames over one 127.0.0.1 TCP connection per run, for each
//! variant, several rounds interleaved so that the noise of a shared machine hits every variant
//! alike; the figure of a variant is its median over the rounds.
//!
//! | variant          | sender                                  | receiver                       |
//! |------------------|-----------------------------------------|--------------------------------|
//! | `plain`          | blocking `send` (what glommio does)     | blocking `recv`                |
//! | `uring`          | io_uring SEND                           | io_uring RECV (`MSG_WAITALL`)  |
//! | `send_zc`        | io_uring SEND_ZC, buffer held until its notification CQE | blocking `recv` |
//! | `send_zc_fixed`  | SEND_ZC from registered (fixed) buffers | blocking `recv`                |
//! | `multishot`      | blocking `send`                         | multishot RECV from a provided buffer ring, then the copy that realigns each frame to offset 0 of a pool buffer |
//!
//! Every frame comes from a sender window of 64 pool buffers and is received into a fresh pool
//! buffer, as on the real data path. Every received frame is checked (sequence number, its
//! complement and one pattern word at a position derived from the sequence number), and every
//! 16th frame's whole payload against a checksum, so a variant that loses, reorders or
//! overwrites bytes fails the run instead of winning it. Limits: one send or receive SQE in
//! flight per connection (two SENDs in flight on one stream socket may interleave), at most 64
//! sender buffers held by the kernel, 64 provided buffers, and only the 64 sender buffers
//! (2 MiB) registered with io_uring, well under the 8 MiB `RLIMIT_MEMLOCK` of this machine.
//! Ring set-up and buffer registration happen before the clock starts, as they would once per
//! connection in production.
//!
//! Measured on this machine (Linux 6.18, 2 cores, load average 2.1 from other sessions'
//! builds): `./target/release/corestream bench transport --bytes 2G`, 3 rounds, GB/s median
//! (min–max):
//!
//! | variant          | run 1            | run 2            | notes                                |
//! |------------------|------------------|------------------|--------------------------------------|
//! | `plain`          | 1.99 (1.97–1.99) | 2.14 (2.09–2.21) |                                      |
//! | `uring`          | 1.95 (1.81–2.14) | 2.11 (1.96–2.43) | one SQE in flight, as plain          |
//! | `send_zc`        | 1.10 (1.07–1.18) | 1.11 (1.07–1.21) | every notification reports a copy    |
//! | `send_zc_fixed`  | 0.93 (0.82–1.18) | 1.01 (0.77–1.26) | the same; 64 MiB runs are bimodal (about 0.15 or 1.2) |
//! | `multishot`      | 1.88 (1.79–1.95) | 1.98 (1.94–2.10) | 1.01–1.02 CQEs per frame, 550–740 re-arms on ENOBUFS per run |
//!
//! So on loopback: io_uring SEND/RECV ties plain (within noise), SEND_ZC loses 45–50 %, SEND_ZC
//! from registered buffers loses as much or more, and multishot receive with its realign copy
//! loses about 5 %.
//!
//! Decision ("keep what pays"): the production transport sends and receives with plain
//! non-blocking `send`/`recv` through glommio's `TcpStream`, straight out of and into pool
//! buffers. SEND_ZC loses on loopback and on veth between namespaces because data delivered to a
//! local socket is always copied anyway (the notification reports it as copied), so zero copy
//! only adds page pinning and a second CQE per send; registering the buffers does not win that
//! back, and registering the whole pool would pin all of it. Multishot receive saves syscalls,
//! but it lands frames at arbitrary offsets of whatever provided buffer the kernel picks, and
//! archives are read in place at 16-byte alignment, so every byte must be copied once more to
//! realign it; that copy eats the saving.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use corestream_netstack::{BufferBuilder, BufferPool, BUFFER_SIZE};
use io_uring::{cqueue, opcode, types, IoUring, Probe};

const FRAME_BYTES: usize = BUFFER_SIZE;
const FRAME_WORDS: usize = FRAME_BYTES / 8;
const WINDOW_BUFFERS: usize = 64;
const RING_ENTRIES: u32 = 2 * WINDOW_BUFFERS as u32;
const BUF_GROUP: u16 = 7;
const SAMPLE_EVERY: u64 = 16;
/// `IORING_SEND_ZC_REPORT_USAGE` (6.2): the notification says whether the kernel copied after all.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`, in the result of a notification CQE.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;
const MULTISHOT_USER_DATA: u64 = u64::MAX - 1;
const CANCEL_USER_DATA: u64 = u64::MAX;
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);
const SEND_FLAGS: i32 = libc::MSG_WAITALL | libc::MSG_NOSIGNAL;
/// Most bytes one run may move (`--bytes`).
pub const MAX_BYTES: u64 = 1 << 40;

/// One sender/receiver pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Plain,
    Uring,
    SendZc,
    SendZcFixed,
    Multishot,
}

impl Variant {
    pub const ALL: [Variant; 5] = [Self::Plain, Self::Uring, Self::SendZc, Self::SendZcFixed, Self::Multishot];

    /// The prefix of this variant's JSON fields.
    pub fn key(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Uring => "uring",
            Self::SendZc => "send_zc",
            Self::SendZcFixed => "send_zc_fixed",
            Self::Multishot => "multishot",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Plain => "send / recv (std, blocking)",
            Self::Uring => "io_uring SEND / RECV(WAITALL)",
            Self::SendZc => "io_uring SEND_ZC / recv",
            Self::SendZcFixed => "io_uring SEND_ZC fixed buf / recv",
            Self::Multishot => "send / multishot RECV + realign",
        }
    }

    fn send_mode(self) -> SendMode {
        match self {
            Self::Plain | Self::Multishot => SendMode::Plain,
            Self::Uring => SendMode::Uring,
            Self::SendZc => SendMode::ZeroCopy { fixed: false },
            Self::SendZcFixed => SendMode::ZeroCopy { fixed: true },
        }
    }

    fn recv_mode(self) -> RecvMode {
        match self {
            Self::Plain | Self::SendZc | Self::SendZcFixed => RecvMode::Plain,
            Self::Uring => RecvMode::Uring,
            Self::Multishot => RecvMode::Multishot,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendMode {
    Plain,
    Uring,
    ZeroCopy { fixed: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvMode {
    Plain,
    Uring,
    Multishot,
}

/// The kernel lacks what a variant needs (`EINVAL`/`EOPNOTSUPP`, a missing opcode, no io_uring).
#[derive(Debug)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not supported by this kernel ({})", self.0)
    }
}

impl std::error::Error for Unsupported {}

fn is_unsupported_errno(errno: i32) -> bool {
    errno == libc::EINVAL || errno == libc::EOPNOTSUPP
}

/// The error of a failed io_uring operation; `EINVAL`/`EOPNOTSUPP` on a connection's first
/// operation means the kernel does not know the operation or its flags.
fn op_error(res: i32, what: &str, first: bool) -> anyhow::Error {
    let errno = -res;
    let e = std::io::Error::from_raw_os_error(errno);
    if first && is_unsupported_errno(errno) {
        return Unsupported(format!("{what}: {e}")).into();
    }
    anyhow::Error::new(e).context(format!("{what} failed"))
}

/// Parses `--bytes`: a count with an optional binary suffix (`512K`, `64M`, `2G`), at least 1.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let t = t.strip_suffix(['B', 'b']).unwrap_or(&t);
    let (digits, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a size (examples: 64M, 2G)"))?;
    let bytes = n.checked_mul(1 << shift).filter(|b| *b <= MAX_BYTES);
    match bytes {
        None => Err(format!("'{s}' is more than {} GiB", MAX_BYTES >> 30)),
        Some(0) => Err(format!("'{s}' must be at least 1 byte")),
        Some(b) => Ok(b),
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pattern_word(slot: usize, word: usize) -> u64 {
    splitmix64(((slot as u64) << 32) | word as u64)
}

fn read_word(frame: &[u8], word: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&frame[word * 8..word * 8 + 8]);
    u64::from_le_bytes(bytes)
}

fn write_word(frame: &mut [u8], word: usize, value: u64) {
    frame[word * 8..word * 8 + 8].copy_from_slice(&value.to_le_bytes());
}

/// Words 2.. of the frames sent from window slot `slot`; words 0 and 1 are stamped per send.
fn fill_slot(frame: &mut [u8], slot: usize) {
    for word in 2..FRAME_WORDS {
        write_word(frame, word, pattern_word(slot, word));
    }
}

fn stamp(frame: &mut [u8], seq: u64) {
    write_word(frame, 0, seq);
    write_word(frame, 1, !seq);
}

fn payload_checksum(frame: &[u8]) -> u64 {
    frame[16..].chunks_exact(8).fold(0xCBF2_9CE4_8422_2325, |acc, chunk| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        (acc.rotate_left(5) ^ u64::from_le_bytes(bytes)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// Checks received frames in order (see the module doc).
struct Verifier {
    next_seq: u64,
    frames: u64,
    slot_checksums: Arc<[u64]>,
}

impl Verifier {
    fn check(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        let seq = self.next_seq;
        if frame.len() != FRAME_BYTES || seq >= self.frames {
            bail!("frame {seq} of {}: {} bytes, expected {FRAME_BYTES}", self.frames, frame.len());
        }
        let (got, complement) = (read_word(frame, 0), read_word(frame, 1));
        if got != seq || complement != !seq {
            bail!("frame {seq}: sequence word {got}, complement {complement:#x}: bytes lost, reordered or misaligned");
        }
        let slot = (seq % WINDOW_BUFFERS as u64) as usize;
        let word = 2 + (splitmix64(seq) % (FRAME_WORDS as u64 - 2)) as usize;
        if read_word(frame, word) != pattern_word(slot, word) {
            bail!("frame {seq}: word {word} differs from what was sent (buffer overwritten while in flight?)");
        }
        if seq.is_multiple_of(SAMPLE_EVERY) && payload_checksum(frame) != self.slot_checksums[slot] {
            bail!("frame {seq}: payload checksum differs from what was sent");
        }
        self.next_seq += 1;
        Ok(())
    }

    fn finish(&self) -> anyhow::Result<()> {
        if self.next_seq != self.frames {
            bail!("received {} of {} frames", self.next_seq, self.frames);
        }
        Ok(())
    }
}

/// Counters of one run, beside its throughput.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    pub send_cqes: u64,
    pub zc_notifications: u64,
    pub zc_copied: u64,
    pub recv_cqes: u64,
    pub rearms: u64,
    pub enobufs: u64,
}

impl RunStats {
    fn add(&mut self, o: &RunStats) {
        self.send_cqes += o.send_cqes;
        self.zc_notifications += o.zc_notifications;
        self.zc_copied += o.zc_copied;
        self.recv_cqes += o.recv_cqes;
        self.rearms += o.rearms;
        self.enobufs += o.enobufs;
    }
}

fn submit_wait(ring: &mut IoUring, want: usize) -> std::io::Result<()> {
    loop {
        match ring.submit_and_wait(want) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other.map(drop),
        }
    }
}

/// Waits for one CQE at most `timeout`; `false` when none came.
fn submit_wait_timeout(ring: &mut IoUring, timeout: Duration) -> std::io::Result<bool> {
    let ts = types::Timespec::from(timeout);
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(true),
        Err(e) => Err(e),
    }
}

fn new_ring(entries: u32) -> anyhow::Result<IoUring> {
    IoUring::new(entries).map_err(|e| Unsupported(format!("io_uring_setup: {e}")).into())
}

/// The 64 buffers a sender cycles through, each filled with its slot's pattern.
fn take_window(pool: &BufferPool) -> anyhow::Result<Vec<BufferBuilder>> {
    (0..WINDOW_BUFFERS)
        .map(|slot| {
            let mut buffer = pool.take().context("taking the sender's window of buffers")?;
            fill_slot(buffer.whole_mut(), slot);
            buffer.set_len(FRAME_BYTES);
            Ok(buffer)
        })
        .collect()
}

fn send_plain(stream: &mut TcpStream, window: &mut [BufferBuilder], frames: u64) -> anyhow::Result<RunStats> {
    for seq in 0..frames {
        let buffer = &mut window[(seq % WINDOW_BUFFERS as u64) as usize];
        stamp(buffer.whole_mut(), seq);
        stream.write_all(buffer.as_slice()).with_context(|| format!("send of frame {seq}"))?;
    }
    Ok(RunStats::default())
}

/// An io_uring sender: one send SQE in flight; with zero copy a buffer stays held (not
/// rewritten) until every notification of its sends has come back.
struct UringSender {
    ring: IoUring,
    window: Vec<BufferBuilder>,
    zero_copy: bool,
    fixed: bool,
    held: Vec<u32>,
    stats: RunStats,
    sends_completed: u64,
}

impl UringSender {
    fn new(mode: SendMode, pool: &BufferPool) -> anyhow::Result<Self> {
        let ring = new_ring(RING_ENTRIES)?;
        let window = take_window(pool)?;
        let (zero_copy, fixed) = match mode {
            SendMode::ZeroCopy { fixed } => (true, fixed),
            _ => (false, false),
        };
        if fixed {
            let iovecs: Vec<libc::iovec> = window
                .iter()
                .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: FRAME_BYTES })
                .collect();
            // SAFETY: each iovec covers one whole buffer of `window`, which this sender owns at a
            // fixed address; `ring` is declared before `window`, so the ring (and with it the
            // registration) goes before the buffers go back to the pool.
            match unsafe { ring.submitter().register_buffers(&iovecs) } {
                Err(e) if e.raw_os_error().is_some_and(is_unsupported_errno) => {
                    return Err(Unsupported(format!("IORING_REGISTER_BUFFERS: {e}")).into());
                }
                other => other.context("registering the sender's 64 buffers (RLIMIT_MEMLOCK too low?)")?,
            }
        }
        Ok(Self {
            ring,
            window,
            zero_copy,
            fixed,
            held: vec![0; WINDOW_BUFFERS],
            stats: RunStats::default(),
            sends_completed: 0,
        })
    }

    fn send_all(&mut self, stream: &TcpStream, frames: u64) -> anyhow::Result<RunStats> {
        let fd = types::Fd(stream.as_raw_fd());
        for seq in 0..frames {
            let slot = (seq % WINDOW_BUFFERS as u64) as usize;
            while self.held[slot] > 0 {
                submit_wait(&mut self.ring, 1).context("waiting for a zero-copy notification")?;
                self.reap()?;
            }
            stamp(self.window[slot].whole_mut(), seq);
            let mut sent = 0;
            while sent < FRAME_BYTES {
                sent += self.send_one(fd, slot, sent).with_context(|| format!("send of frame {seq}"))?;
            }
        }
        self.drain_notifications()?;
        Ok(self.stats)
    }

    /// Sends the rest of `slot`'s frame from `offset`; returns the bytes the kernel took.
    fn send_one(&mut self, fd: types::Fd, slot: usize, offset: usize) -> anyhow::Result<usize> {
        let ptr = self.window[slot].as_slice()[offset..].as_ptr();
        let len = (FRAME_BYTES - offset) as u32;
        let sqe = if self.zero_copy {
            let op = opcode::SendZc::new(fd, ptr, len).flags(SEND_FLAGS).zc_flags(SEND_ZC_REPORT_USAGE);
            let op = if self.fixed { op.buf_index(Some(slot as u16)) } else { op };
            op.build()
        } else {
            opcode::Send::new(fd, ptr, len).flags(SEND_FLAGS).build()
        };
        // SAFETY: `ptr..ptr+len` lies in `window[slot]`, owned by this sender. Without zero copy
        // the kernel is done with it when the send CQE arrives, which is awaited below before the
        // buffer is touched again. With zero copy the slot stays held (never stamped again) until
        // its notification CQEs arrive, and `ring` is dropped before `window` on every path.
        unsafe { self.ring.submission().push(&sqe.user_data(slot as u64)) }
            .map_err(|_| anyhow!("submission queue full with one send in flight"))?;
        if self.zero_copy {
            self.held[slot] += 1;
        }
        let completed = self.sends_completed;
        let mut result = None;
        while self.sends_completed == completed {
            submit_wait(&mut self.ring, 1).context("io_uring_enter")?;
            result = self.reap()?.or(result);
        }
        let res = result.ok_or_else(|| anyhow!("send completion lost"))?;
        let what = if self.zero_copy { "io_uring SEND_ZC" } else { "io_uring SEND" };
        if res <= 0 {
            if res == 0 {
                bail!("{what} sent nothing: the receiver closed the connection");
            }
            return Err(op_error(res, what, self.sends_completed == 1));
        }
        Ok(res as usize)
    }

    /// Handles every ready CQE; returns the result of a send completion if one was among them.
    fn reap(&mut self) -> anyhow::Result<Option<i32>> {
        let mut send_result = None;
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as usize;
            let releases = if cqueue::notif(cqe.flags()) {
                self.stats.zc_notifications += 1;
                if cqe.result() as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                    self.stats.zc_copied += 1;
                }
                true
            } else {
                self.sends_completed += 1;
                self.stats.send_cqes += 1;
                send_result = Some(cqe.result());
                self.zero_copy && !cqueue::more(cqe.flags())
            };
            if releases {
                let held = self.held.get_mut(slot).ok_or_else(|| anyhow!("completion for unknown slot {slot}"))?;
                *held =
                    held.checked_sub(1).ok_or_else(|| anyhow!("notification for slot {slot} that holds no send"))?;
            }
        }
        Ok(send_result)
    }

    fn drain_notifications(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        while self.held.iter().any(|h| *h > 0) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !submit_wait_timeout(&mut self.ring, left)? {
                bail!("zero-copy notifications still missing after {TEARDOWN_TIMEOUT:?}");
            }
            self.reap()?;
        }
        Ok(())
    }
}

fn recv_plain(stream: &mut TcpStream, pool: &BufferPool, verifier: &mut Verifier) -> anyhow::Result<RunStats> {
    while verifier.next_seq < verifier.frames {
        let mut buffer = pool.take().context("taking a receive buffer")?;
        stream
            .read_exact(&mut buffer.whole_mut()[..FRAME_BYTES])
            .with_context(|| format!("receive of frame {}", verifier.next_seq))?;
        buffer.set_len(FRAME_BYTES);
        verifier.check(buffer.as_slice())?;
    }
    Ok(RunStats::default())
}

fn recv_uring(stream: &TcpStream, pool: &BufferPool, verifier: &mut Verifier) -> anyhow::Result<RunStats> {
    let mut ring = new_ring(8)?;
    let fd = types::Fd(stream.as_raw_fd());
    let mut stats = RunStats::default();
    while verifier.next_seq < verifier.frames {
        let mut buffer = pool.take().context("taking a receive buffer")?;
        let mut got = 0;
        while got < FRAME_BYTES {
            let spare = &mut buffer.whole_mut()[got..FRAME_BYTES];
            let sqe = opcode::Recv::new(fd, spare.as_mut_ptr(), spare.len() as u32).flags(libc::MSG_WAITALL).build();
            // SAFETY: the target lies inside `buffer`, which stays alive and untouched until the
            // completion is reaped below; if waiting fails, `buffer` is leaked rather than
            // returned to the pool while the kernel may still write into it.
            unsafe { ring.submission().push(&sqe) }.map_err(|_| anyhow!("submission queue full"))?;
            let cqe = match submit_wait(&mut ring, 1).map(|()| ring.completion().next()) {
                Ok(Some(cqe)) => cqe,
                failed => {
                    std::mem::forget(buffer);
                    return Err(anyhow!("io_uring_enter: {:?}", failed.err()));
                }
            };
            stats.recv_cqes += 1;
            match cqe.result() {
                res if res < 0 => return Err(op_error(res, "io_uring RECV", stats.recv_cqes == 1)),
                0 => bail!("connection closed at frame {} of {}", verifier.next_seq, verifier.frames),
                res => got += res as usize,
            }
        }
        buffer.set_len(FRAME_BYTES);
        verifier.check(buffer.as_slice())?;
    }
    Ok(stats)
}

/// The provided buffer ring of the multishot receiver: its entries live in one pool buffer
/// (page-aligned, 64 × 16 bytes used), the buffers it provides are 64 more pool buffers.
struct ProvidedBuffers {
    entries: *mut types::BufRingEntry,
    tail: u16,
    _ring_memory: BufferBuilder,
    buffers: Vec<BufferBuilder>,
}

impl ProvidedBuffers {
    fn take(pool: &BufferPool) -> anyhow::Result<Self> {
        let mut ring_memory = pool.take().context("taking the buffer ring's memory")?;
        let entries = ring_memory.whole_mut().as_mut_ptr().cast::<types::BufRingEntry>();
        let buffers = (0..WINDOW_BUFFERS)
            .map(|_| pool.take().context("taking the provided buffers"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { entries, tail: 0, _ring_memory: ring_memory, buffers })
    }

    /// Queues buffer `bid` for the kernel; visible to it after [`Self::publish`].
    fn provide(&mut self, bid: u16) {
        let addr = self.buffers[bid as usize].whole_mut().as_mut_ptr() as u64;
        let index = self.tail as usize & (WINDOW_BUFFERS - 1);
        // SAFETY: `index` < 64 and the ring memory is a 32 KB pool buffer owned by `self`, so the
        // entry is in bounds and aligned (the buffer is page-aligned); the kernel reads only
        // entries below the published tail, and this one is at or past it.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(FRAME_BYTES as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field is the `resv` u16 of the first entry, inside the ring memory
        // owned by `self` and 2-byte aligned; the kernel reads it concurrently, so it is written
        // with an atomic release store that also publishes the entries written before it.
        let tail = unsafe { AtomicU16::from_ptr(types::BufRingEntry::tail(self.entries).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }
}

/// Multishot receive into provided buffers, each completion's bytes copied into fresh pool
/// buffers so every 32 KB frame starts at offset 0 of its own buffer.
struct MultishotReceiver {
    ring: IoUring,
    fd: types::Fd,
    armed: bool,
    frame: Option<BufferBuilder>,
    stats: RunStats,
}

impl MultishotReceiver {
    fn arm(&mut self) -> anyhow::Result<()> {
        let sqe = opcode::RecvMulti::new(self.fd, BUF_GROUP).build().user_data(MULTISHOT_USER_DATA);
        // SAFETY: the SQE carries no buffer; the kernel writes only into buffers of group
        // BUF_GROUP, which stay registered and alive until `disarm` has seen the final CQE.
        unsafe { self.ring.submission().push(&sqe) }.map_err(|_| anyhow!("submission queue full"))?;
        self.armed = true;
        Ok(())
    }

    fn receive_all(
        &mut self,
        provided: &mut ProvidedBuffers,
        pool: &BufferPool,
        verifier: &mut Verifier,
    ) -> anyhow::Result<()> {
        let total = verifier.frames * FRAME_BYTES as u64;
        let mut got = 0u64;
        self.arm()?;
        while got < total {
            submit_wait(&mut self.ring, 1).context("io_uring_enter")?;
            loop {
                let next = self.ring.completion().next();
                let Some(cqe) = next else { break };
                self.stats.recv_cqes += 1;
                let (res, flags) = (cqe.result(), cqe.flags());
                if !cqueue::more(flags) {
                    self.armed = false;
                }
                if res == -libc::ENOBUFS {
                    self.stats.enobufs += 1;
                    continue;
                }
                if res < 0 {
                    return Err(op_error(res, "multishot RECV", got == 0));
                }
                if res == 0 {
                    if got < total {
                        bail!("connection closed after {got} of {total} bytes");
                    }
                    continue;
                }
                let bid = cqueue::buffer_select(flags)
                    .filter(|b| (*b as usize) < WINDOW_BUFFERS)
                    .ok_or_else(|| anyhow!("multishot RECV completion without a valid buffer id"))?;
                let n = res as usize;
                self.realign(&provided.buffers[bid as usize].whole_mut()[..n], pool, verifier)?;
                provided.provide(bid);
                got += n as u64;
            }
            provided.publish();
            if !self.armed && got < total {
                self.stats.rearms += 1;
                self.arm()?;
            }
        }
        Ok(())
    }

    fn realign(&mut self, mut src: &[u8], pool: &BufferPool, verifier: &mut Verifier) -> anyhow::Result<()> {
        while !src.is_empty() {
            let frame = match &mut self.frame {
                Some(frame) => frame,
                None => self.frame.insert(pool.take().context("taking a receive buffer")?),
            };
            let k = frame.remaining().min(src.len());
            frame.spare_mut()[..k].copy_from_slice(&src[..k]);
            frame.advance(k);
            src = &src[k..];
            if frame.len() == FRAME_BYTES {
                if let Some(full) = self.frame.take() {
                    verifier.check(full.as_slice())?;
                }
            }
        }
        Ok(())
    }

    /// Cancels the multishot receive and waits for its final CQE, after which the kernel no
    /// longer writes into the provided buffers.
    fn disarm(&mut self) -> anyhow::Result<()> {
        if !self.armed {
            return Ok(());
        }
        let sqe = opcode::AsyncCancel::new(MULTISHOT_USER_DATA).build().user_data(CANCEL_USER_DATA);
        // SAFETY: a cancel SQE refers to no memory.
        unsafe { self.ring.submission().push(&sqe) }.map_err(|_| anyhow!("submission queue full"))?;
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        while self.armed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !submit_wait_timeout(&mut self.ring, left)? {
                bail!("the multishot receive did not end within {TEARDOWN_TIMEOUT:?} of its cancellation");
            }
            for cqe in self.ring.completion() {
                if cqe.user_data() == MULTISHOT_USER_DATA && !cqueue::more(cqe.flags()) {
                    self.armed = false;
                }
            }
        }
        Ok(())
    }
}

fn recv_multishot(stream: &TcpStream, pool: &BufferPool, verifier: &mut Verifier) -> anyhow::Result<RunStats> {
    let mut provided = ProvidedBuffers::take(pool)?;
    let ring = new_ring(RING_ENTRIES)?;
    // SAFETY: the ring memory and the buffers it lists are owned by `provided`, which outlives
    // the registration: the group is unregistered (or, if the receive cannot be stopped,
    // `provided` is leaked) before it is dropped, and `provided` is declared before the ring.
    let registered = unsafe {
        ring.submitter().register_buf_ring_with_flags(provided.entries as u64, WINDOW_BUFFERS as u16, BUF_GROUP, 0)
    };
    match registered {
        Err(e) if e.raw_os_error().is_some_and(is_unsupported_errno) => {
            return Err(Unsupported(format!("IORING_REGISTER_PBUF_RING: {e}")).into());
        }
        other => other.context("registering the provided buffer ring")?,
    }
    for bid in 0..WINDOW_BUFFERS as u16 {
        provided.provide(bid);
    }
    provided.publish();
    let fd = types::Fd(stream.as_raw_fd());
    let mut rx = MultishotReceiver { ring, fd, armed: false, frame: None, stats: RunStats::default() };
    let received = rx.receive_all(&mut provided, pool, verifier);
    if let Err(e) = rx.disarm() {
        std::mem::forget(provided);
        return Err(e);
    }
    rx.ring.submitter().unregister_buf_ring(BUF_GROUP).context("unregistering the provided buffer ring")?;
    received.map(|()| rx.stats)
}

/// Checks that the kernel has what `variant` needs; `Some(reason)` when it does not.
fn check_support(variant: Variant) -> anyhow::Result<Option<String>> {
    let needed: &[(u8, &str)] = match variant {
        Variant::Plain => return Ok(None),
        Variant::Uring => &[(opcode::Send::CODE, "SEND"), (opcode::Recv::CODE, "RECV")],
        Variant::SendZc | Variant::SendZcFixed => &[(opcode::SendZc::CODE, "SEND_ZC")],
        Variant::Multishot => &[(opcode::RecvMulti::CODE, "RECV"), (opcode::AsyncCancel::CODE, "ASYNC_CANCEL")],
    };
    let ring = match IoUring::new(4) {
        Ok(ring) => ring,
        Err(e) => return Ok(Some(format!("io_uring_setup: {e}"))),
    };
    let mut probe = Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return Ok(Some(format!("IORING_REGISTER_PROBE: {e}")));
    }
    Ok(needed
        .iter()
        .find(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| format!("IORING_REGISTER_PROBE lacks {name}")))
}

/// Hands the two threads of a run to the starting line: each reports ready after its set-up,
/// then waits for the go; if the run is called off, the go never comes and the thread ends.
struct StartLine {
    ready: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
}

impl StartLine {
    fn wait(self) -> anyhow::Result<()> {
        let _ = self.ready.send(());
        self.go.recv().map_err(|_| anyhow!("the run was called off before it started"))
    }
}

fn connected_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let addr = listener.local_addr().context("listener address")?;
    let client = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let (server, _) = listener.accept().context("accepting the loopback connection")?;
    client.set_nodelay(true).context("TCP_NODELAY")?;
    server.set_nodelay(true).context("TCP_NODELAY")?;
    Ok((client, server))
}

fn pin(core: Option<core_affinity::CoreId>) {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
}

fn sender_thread(
    mode: SendMode,
    mut stream: TcpStream,
    pool: BufferPool,
    frames: u64,
    start: StartLine,
) -> anyhow::Result<RunStats> {
    match mode {
        SendMode::Plain => {
            let window = take_window(&pool);
            start.wait()?;
            send_plain(&mut stream, &mut window?, frames)
        }
        SendMode::Uring | SendMode::ZeroCopy { .. } => {
            let sender = UringSender::new(mode, &pool);
            start.wait()?;
            sender?.send_all(&stream, frames)
        }
    }
}

fn receiver_thread(
    mode: RecvMode,
    mut stream: TcpStream,
    pool: BufferPool,
    mut verifier: Verifier,
    start: StartLine,
) -> anyhow::Result<RunStats> {
    start.wait()?;
    let stats = match mode {
        RecvMode::Plain => recv_plain(&mut stream, &pool, &mut verifier)?,
        RecvMode::Uring => recv_uring(&stream, &pool, &mut verifier)?,
        RecvMode::Multishot => recv_multishot(&stream, &pool, &mut verifier)?,
    };
    verifier.finish()?;
    Ok(stats)
}

/// What every run of one harness shares.
struct Harness {
    pool: BufferPool,
    frames: u64,
    cores: Option<(core_affinity::CoreId, core_affinity::CoreId)>,
    slot_checksums: Arc<[u64]>,
}

impl Harness {
    fn new(frames: u64) -> anyhow::Result<Self> {
        let pool = BufferPool::new(3 * WINDOW_BUFFERS as u32 + 8);
        let mut scratch = pool.take().context("taking a scratch buffer")?;
        let slot_checksums = (0..WINDOW_BUFFERS)
            .map(|slot| {
                fill_slot(scratch.whole_mut(), slot);
                payload_checksum(scratch.whole_mut())
            })
            .collect();
        drop(scratch);
        let cores = core_affinity::get_core_ids().filter(|ids| ids.len() >= 2).map(|ids| (ids[0], ids[1]));
        Ok(Self { pool, frames, cores, slot_checksums })
    }

    fn run_once(&self, variant: Variant) -> anyhow::Result<(f64, RunStats)> {
        let (client, server) = connected_pair()?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (send_go, send_go_rx) = mpsc::channel();
        let (recv_go, recv_go_rx) = mpsc::channel();
        let (pool, frames, core) = (self.pool.clone(), self.frames, self.cores.map(|c| c.1));
        let verifier = Verifier { next_seq: 0, frames, slot_checksums: self.slot_checksums.clone() };
        let start = StartLine { ready: ready_tx.clone(), go: recv_go_rx };
        let receiver = std::thread::Builder::new()
            .name("cs-bench-recv".into())
            .spawn(move || {
                pin(core);
                let result = receiver_thread(variant.recv_mode(), server, pool, verifier, start);
                (result, Instant::now())
            })
            .context("spawning the receiver thread")?;
        let (pool, core) = (self.pool.clone(), self.cores.map(|c| c.0));
        let start = StartLine { ready: ready_tx, go: send_go_rx };
        let sender = std::thread::Builder::new().name("cs-bench-send".into()).spawn(move || {
            pin(core);
            sender_thread(variant.send_mode(), client, pool, frames, start)
        });
        let sender = match sender {
            Ok(sender) => sender,
            Err(e) => {
                drop(recv_go);
                let _ = receiver.join();
                return Err(e).context("spawning the sender thread");
            }
        };
        for _ in 0..2 {
            let _ = ready_rx.recv();
        }
        let began = Instant::now();
        let _ = recv_go.send(());
        let _ = send_go.send(());
        let (received, ended) = receiver.join().map_err(|_| anyhow!("the receiver thread panicked"))?;
        let sent = sender.join().map_err(|_| anyhow!("the sender thread panicked"))?;
        let stats = match (sent, received) {
            (Err(e), _) | (_, Err(e)) if e.is::<Unsupported>() => return Err(e),
            (Ok(s), Ok(r)) => {
                let mut stats = s;
                stats.add(&r);
                stats
            }
            (Err(e), _) => return Err(e.context("sender")),
            (_, Err(e)) => return Err(e.context("receiver")),
        };
        let in_use = self.pool.in_use();
        if in_use != 0 {
            bail!("{in_use} buffers were not returned to the pool after the run");
        }
        let bytes = (frames * FRAME_BYTES as u64) as f64;
        Ok((bytes / ended.duration_since(began).as_secs_f64().max(1e-9) / 1e9, stats))
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct TransportSettings {
    /// Bytes per run, rounded up to whole 32 KB frames.
    pub bytes: u64,
    pub rounds: u32,
}

/// The outcome of one variant over all rounds.
#[derive(Debug, Clone)]
pub enum Outcome {
    Unsupported(String),
    Measured { gbps: Vec<f64>, stats: RunStats },
}

#[derive(Debug, Clone)]
pub struct VariantReport {
    pub variant: Variant,
    pub outcome: Outcome,
}

impl VariantReport {
    /// Median, minimum and maximum GB/s over the rounds.
    pub fn gbps(&self) -> Option<(f64, f64, f64)> {
        let Outcome::Measured { gbps, .. } = &self.outcome else { return None };
        let mut sorted = gbps.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 };
        Some((median, *sorted.first()?, *sorted.last()?))
    }

    fn notes(&self, rounds: u32) -> String {
        let Outcome::Measured { stats, .. } = &self.outcome else { return String::new() };
        let per_run = |n: u64| n as f64 / rounds.max(1) as f64;
        match self.variant {
            Variant::SendZc | Variant::SendZcFixed => format!(
                "per run: {:.0} sends, {:.0} of {:.0} notifications report a copy",
                per_run(stats.send_cqes),
                per_run(stats.zc_copied),
                per_run(stats.zc_notifications)
            ),
            Variant::Multishot => format!(
                "per run: {:.0} CQEs, {:.0} re-arms, {:.0} ENOBUFS",
                per_run(stats.recv_cqes),
                per_run(stats.rearms),
                per_run(stats.enobufs)
            ),
            _ => String::new(),
        }
    }
}

/// Every variant's figures from one `bench transport` run.
#[derive(Debug, Clone)]
pub struct TransportReport {
    pub bytes_per_run: u64,
    pub rounds: u32,
    pub pinned: bool,
    pub load_1m: Option<f64>,
    pub variants: Vec<VariantReport>,
}

impl TransportReport {
    pub fn table(&self) -> String {
        let load = self.load_1m.map_or("unknown".to_string(), |l| format!("{l:.2}"));
        let mut out = format!(
            "transport over 127.0.0.1: {} MiB per run in 32 KB buffers, {} rounds, threads {}, load average {load} at start\n",
            self.bytes_per_run >> 20,
            self.rounds,
            if self.pinned { "pinned to cores 0 and 1" } else { "not pinned" },
        );
        out +=
            &format!("{:<36} {:>11} {:>6} {:>6}  notes\n", "variant (sender / receiver)", "median GB/s", "min", "max");
        for v in &self.variants {
            match (&v.outcome, v.gbps()) {
                (Outcome::Unsupported(reason), _) => {
                    out += &format!("{:<36} not supported by this kernel ({reason})\n", v.variant.label())
                }
                (_, Some((median, min, max))) => {
                    out += &format!(
                        "{:<36} {median:>11.2} {min:>6.2} {max:>6.2}  {}\n",
                        v.variant.label(),
                        v.notes(self.rounds)
                    );
                }
                (_, None) => {}
            }
        }
        out
    }

    /// One flat JSON object: `{variant}_gbps` (median, or null when unsupported), `_min_gbps`,
    /// `_max_gbps` and `_status` (`ok` or `unsupported`) per variant.
    pub fn json(&self) -> serde_json::Result<String> {
        let variants = self
            .variants
            .iter()
            .map(|v| {
                let (gbps, min_gbps, max_gbps) =
                    v.gbps().map_or((None, None, None), |(m, lo, hi)| (Some(m), Some(lo), Some(hi)));
                let status = if gbps.is_some() { "ok" } else { "unsupported" };
                (format!("{}_", v.variant.key()), VariantJson { gbps, min_gbps, max_gbps, status })
            })
            .collect();
        crate::json::to_line(&TransportJson {
            bytes_per_run: self.bytes_per_run,
            buffer_bytes: FRAME_BYTES,
            rounds: self.rounds,
            pinned: if self.pinned { "yes" } else { "no" },
            load_1m: self.load_1m,
            variants: crate::json::Prefixed(variants),
        })
    }
}

/// The JSON report of `bench transport`.
#[derive(Debug, serde::Serialize)]
struct TransportJson {
    bytes_per_run: u64,
    buffer_bytes: usize,
    rounds: u32,
    pinned: &'static str,
    load_1m: Option<f64>,
    #[serde(flatten)]
    variants: crate::json::Prefixed<VariantJson>,
}

/// One variant's figures in [`TransportJson`], under its key as prefix.
#[derive(Debug, serde::Serialize)]
struct VariantJson {
    gbps: Option<f64>,
    min_gbps: Option<f64>,
    max_gbps: Option<f64>,
    status: &'static str,
}

fn load_average_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// One run of the plain variant (blocking send and receive of 32 KB pool buffers over
/// loopback) moving `bytes`: the raw baseline of `bench network`. Returns GB/s.
pub fn plain_gbps(bytes: u64) -> anyhow::Result<f64> {
    let frames = bytes.div_ceil(FRAME_BYTES as u64).max(1);
    let harness = Harness::new(frames)?;
    harness.run_once(Variant::Plain).map(|(gbps, _)| gbps)
}

/// Runs every variant `rounds` times, interleaved; `on_run` sees each run as it ends.
pub fn run(
    settings: &TransportSettings,
    mut on_run: impl FnMut(u32, Variant, &anyhow::Result<f64>),
) -> anyhow::Result<TransportReport> {
    let frames = settings.bytes.div_ceil(FRAME_BYTES as u64).max(1);
    let harness = Harness::new(frames)?;
    let load_1m = load_average_1m();
    let mut variants: Vec<VariantReport> = Variant::ALL
        .iter()
        .map(|&variant| {
            let outcome = match check_support(variant)? {
                Some(reason) => Outcome::Unsupported(reason),
                None => Outcome::Measured { gbps: Vec::new(), stats: RunStats::default() },
            };
            Ok(VariantReport { variant, outcome })
        })
        .collect::<anyhow::Result<_>>()?;
    for round in 1..=settings.rounds {
        for report in &mut variants {
            let Outcome::Measured { gbps, stats } = &mut report.outcome else { continue };
            let result = harness.run_once(report.variant);
            let shown = result.as_ref().map(|(g, _)| *g).map_err(|e| anyhow!("{e:#}"));
            on_run(round, report.variant, &shown);
            match result {
                Ok((g, s)) => {
                    gbps.push(g);
                    stats.add(&s);
                }
                Err(e) => match e.downcast::<Unsupported>() {
                    Ok(Unsupported(reason)) => report.outcome = Outcome::Unsupported(reason),
                    Err(e) => return Err(e.context(format!("variant {} (round {round})", report.variant.key()))),
                },
            }
        }
    }
    Ok(TransportReport {
        bytes_per_run: frames * FRAME_BYTES as u64,
        rounds: settings.rounds,
        pinned: harness.cores.is_some(),
        load_1m,
        variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("512KB"), Ok(512 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("0").unwrap_err().contains("at least 1 byte"));
        assert!(parse_bytes("2T").is_err());
        assert!(parse_bytes("5000G").unwrap_err().contains("more than"));
    }

    #[test]
    fn verifier_refuses_a_wrong_frame() {
        let pool = BufferPool::new(2);
        let harness_sums: Arc<[u64]> = (0..WINDOW_BUFFERS)
            .map(|slot| {
                let mut b = pool.take().unwrap();
                fill_slot(b.whole_mut(), slot);
                payload_checksum(b.whole_mut())
            })
            .collect();
        let mut frame = pool.take().unwrap();
        fill_slot(frame.whole_mut(), 0);
        stamp(frame.whole_mut(), 0);
        let mut v = Verifier { next_seq: 0, frames: 2, slot_checksums: harness_sums };
        v.check(frame.whole_mut()).unwrap();
        stamp(frame.whole_mut(), 1);
        assert!(v.check(frame.whole_mut()).unwrap_err().to_string().contains("word"));
        assert!(v.finish().is_err());
    }
}
