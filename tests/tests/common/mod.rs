//! Helpers shared by the event-time test files: running a job while reading its collected
//! outputs, a deterministic pseudo-random sequence, and a shared log for observations made by
//! user functions on the slot threads.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corestream::{CollectStream, JobHandle, JobResult};

/// Reads a collect stream to its end on a thread of its own (several outputs of one job must
/// be read concurrently, or a full one stalls the job).
pub fn drain<T: Send + 'static>(stream: CollectStream<T>) -> JoinHandle<Vec<T>> {
    std::thread::spawn(move || stream.collect())
}

/// Waits for a job started with `execute_async` and returns its result, failing the test on
/// an error.
pub fn join(job: JobHandle) -> JobResult {
    job.join().unwrap_or_else(|e| panic!("job failed: {e}"))
}

/// Reads from `stream` until `done` holds for what was read, or `timeout` passes (then
/// panics with `what` and what was read). The job keeps running.
pub fn read_until<T: std::fmt::Debug>(
    stream: &CollectStream<T>,
    got: &mut Vec<T>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[T]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}; read so far: {got:?}");
        match stream.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(Some(r)) => got.push(r),
            Ok(None) => panic!("the job ended while waiting for {what}; read: {got:?}"),
            Err(_) => {}
        }
    }
}

/// Whatever arrives on `stream` within `wait` (the job keeps running).
pub fn read_for<T>(stream: &CollectStream<T>, wait: Duration) -> Vec<T> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        match stream.recv_timeout(left) {
            Ok(Some(r)) => got.push(r),
            Ok(None) => return got,
            Err(_) => {}
        }
    }
}

/// A shared log that user functions on slot threads append to.
pub type Log<T> = Arc<Mutex<Vec<T>>>;

pub fn log<T>() -> Log<T> {
    Arc::new(Mutex::new(Vec::new()))
}

pub fn take<T>(log: &Log<T>) -> Vec<T> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// A small deterministic generator (SplitMix64), so test data needs no dependency.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Pure function of `i` (for generator sources, which call it on the slot threads).
pub fn hash(i: u64) -> u64 {
    Rng(i.wrapping_mul(0xA24B_AED4_963E_E407)).next()
}

/// Milliseconds since the Unix epoch (the engine's processing-time clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
