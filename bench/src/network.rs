//! `corestream bench network`: a keyed exchange whose records cross the connection between two
//! TaskManager processes, measured against a raw loopback TCP sender/receiver pair moving the
//! same 32 KB pooled buffers in the same run. The job: a generator of `(key, 1, payload)`
//! records of about `record_bytes` bytes → `key_by` → a per-key count that keeps the first
//! payload → discard. At parallelism p over two processes, a record whose key group belongs to
//! a subtask in the other process crosses the connection; `JobResult::network` counts the
//! bytes that did.

use corestream::{DataStream, RuntimeMode, StreamEnvironment};

use crate::examples::key_of;

/// One record of the exchange benchmark: key, count, payload. The payload is bytes, not a
/// string: validating a received string's UTF-8 is a per-byte cost of the job, not of the
/// network path this benchmark measures.
pub type ExchangeRecord = (u64, u64, Vec<u8>);

/// Bytes a record's payload takes so that its archive is about `record_bytes` (the key, the
/// count and the vector's header take 24 bytes, at least 1 byte of payload).
pub fn payload_len(record_bytes: usize) -> usize {
    record_bytes.saturating_sub(24).max(1)
}

/// The payload of record `i`: a run of one letter, so that the generator costs little.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    vec![b'a' + (i % 26) as u8; len]
}

/// Declares the exchange job on `env`: `events` records over `keys` keys.
pub fn exchange_job(env: &mut StreamEnvironment, events: u64, keys: u64, record_bytes: usize) {
    env.set_runtime_mode(RuntimeMode::Batch);
    let len = payload_len(record_bytes);
    let records: DataStream<ExchangeRecord> =
        env.from_generator(events, move |i| (key_of(i, keys), 1, payload(i, len)));
    records.key_by(|r: &ExchangeRecord| r.0).reduce(|a, b| (a.0, a.1 + b.1, a.2)).name("Count").discard();
}
