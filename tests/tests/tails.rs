//! Regression tests for the end of a stream after the network output parked records (records
//! were left in an open buffer when end-of-partition was sent) and for sources that go idle
//! while their chain's output is full (the task waited without re-checking it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corestream::{Sink, SinkError};
use corestream_tests::cluster;

type Rec = (u64, Vec<u8>);

/// Counts records and checks that they arrive in sequence order (one producer feeds it).
struct OrderedCount {
    last: Option<u64>,
    count: u64,
    batches: u64,
    total: Arc<Mutex<(u64, Vec<String>)>>,
}

impl Sink<Rec> for OrderedCount {
    fn write_batch(&mut self, batch: &mut Vec<Rec>) -> Result<(), SinkError> {
        self.batches += 1;
        if self.batches.is_multiple_of(2) {
            // A slow consumer keeps the producer short of credit, so records get parked.
            std::thread::sleep(Duration::from_millis(1));
        }
        for (i, _) in batch.drain(..) {
            if let Some(prev) = self.last.filter(|p| i <= *p) {
                self.total.lock().unwrap().1.push(format!("{i} after {prev}"));
            }
            self.last = Some(i);
            self.count += 1;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.total.lock().unwrap().0 += self.count;
        Ok(())
    }
}

fn counting_sink(
    total: &Arc<Mutex<(u64, Vec<String>)>>,
) -> impl Fn(corestream::SinkContext) -> Result<OrderedCount, SinkError> + Send + Sync + 'static {
    let total = total.clone();
    move |_| Ok(OrderedCount { last: None, count: 0, batches: 0, total: total.clone() })
}

#[test]
fn the_last_records_after_parking_reach_the_sink() {
    for round in 0..5 {
        let cluster = cluster(2);
        let mut env = cluster.environment();
        env.set_buffer_timeout(Duration::from_millis(1));
        let total = Arc::new(Mutex::new((0u64, Vec::new())));
        // A first batch of tiny records, then a batch of 10 KB records that must park.
        env.from_generator(2048, |i| (i, vec![(i % 251) as u8; if i < 1024 { 1 } else { 10_000 }]))
            .set_parallelism(1)
            .rebalance()
            .add_sink("Count", counting_sink(&total))
            .set_parallelism(1);
        env.execute("tail").unwrap();
        let (count, errors) = total.lock().unwrap().clone();
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        assert_eq!(count, 2048, "round {round}");
    }
}

#[test]
fn the_last_records_of_an_input_task_reach_the_sink_with_flush_on_every_batch() {
    for round in 0..2 {
        let cluster = cluster(3);
        let mut env = cluster.environment();
        env.set_buffer_timeout(Duration::ZERO);
        let total = Arc::new(Mutex::new((0u64, Vec::new())));
        env.from_sequence(0..1000)
            .set_parallelism(1)
            .rebalance()
            .flat_map(|v: u64| (0..20u64).map(move |k| (v * 20 + k, vec![(v % 251) as u8; 10_000])).collect::<Vec<_>>())
            .set_parallelism(1)
            .rebalance()
            .add_sink("Count", counting_sink(&total))
            .set_parallelism(1);
        env.execute("tail-input").unwrap();
        let (count, errors) = total.lock().unwrap().clone();
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        assert_eq!(count, 20_000, "round {round}");
    }
}

#[test]
fn an_idle_source_still_delivers_what_its_full_sink_holds() {
    let cluster = cluster(1);
    let env = cluster.environment();
    let (tx, stream) = env.from_channel::<u64>(10_000);
    // More records than the collect channel holds (4096): the rest wait in the sink while the
    // source, chained to it, has nothing more to read.
    let out = stream.map(|v| v + 1).collect();
    for v in 0..5000u64 {
        tx.send(v).unwrap();
    }
    let handle = env.execute_async("idle-collect").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut got = Vec::new();
    while got.len() < 5000 {
        match out.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(v)) => got.push(v),
            other => panic!("after {} records, nothing more arrived while the source was idle: {other:?}", got.len()),
        }
    }
    drop(tx);
    assert!(out.collect::<Vec<_>>().is_empty());
    handle.join().unwrap();
    assert_eq!(got, (1..=5000).collect::<Vec<_>>());
}
