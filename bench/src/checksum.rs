//! A sink that reduces a job's output to a count and an order-independent checksum: each
//! record's `Debug` text hashed with xxh3 and the hashes added up, wrapping. Two runs that
//! produce the same multiset of records — in one process or across TaskManagers, at any
//! parallelism, in any order — get the same figures, so a result can be compared without
//! moving the output anywhere.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corestream::{Data, DataStream, DataStreamSink, Sink, SinkError};

/// The count and checksum of what the sink's subtasks in this process received.
#[derive(Debug, Clone, Default)]
pub struct OutputChecksum {
    inner: Arc<(AtomicU64, AtomicU64)>,
}

impl OutputChecksum {
    /// Records received so far.
    pub fn count(&self) -> u64 {
        self.inner.0.load(Ordering::Acquire)
    }

    /// The sum of the records' hashes so far.
    pub fn checksum(&self) -> u64 {
        self.inner.1.load(Ordering::Acquire)
    }
}

/// The hash a record adds to the checksum.
pub fn record_hash<T: Debug>(record: &T) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{record:?}").as_bytes())
}

/// The checksum of `records`, as the sink computes it.
pub fn checksum_of<'a, T: Debug + 'a>(records: impl IntoIterator<Item = &'a T>) -> (u64, u64) {
    records.into_iter().fold((0, 0), |(n, sum), r| (n + 1, sum.wrapping_add(record_hash(r))))
}

struct ChecksumSink {
    totals: OutputChecksum,
    count: u64,
    sum: u64,
}

impl<T: Data + Debug> Sink<T> for ChecksumSink {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        for r in batch.drain(..) {
            self.count += 1;
            self.sum = self.sum.wrapping_add(record_hash(&r));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.totals.inner.0.fetch_add(self.count, Ordering::AcqRel);
        self.totals.inner.1.fetch_add(self.sum, Ordering::AcqRel);
        Ok(())
    }
}

/// Ends `stream` in a checksum sink; the returned totals are complete once the job's part in
/// this process has ended.
pub fn checksum_sink<T: Data + Debug>(stream: DataStream<T>) -> (DataStreamSink, OutputChecksum) {
    let totals = OutputChecksum::default();
    let t = totals.clone();
    let sink = stream.add_sink("Sink: checksum", move |_| Ok(ChecksumSink { totals: t.clone(), count: 0, sum: 0 }));
    (sink, totals)
}
