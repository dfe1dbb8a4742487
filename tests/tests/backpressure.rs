//! Backpressure: a slow consumer slows the source down through credit-based flow control, the
//! job never holds more buffers than it reserved, and the host application's channels are
//! bounded in both directions.

use std::time::Duration;

use corestream::SourceSender;
use corestream_bench::examples::key_of;
use corestream_tests::cluster;

#[test]
fn a_slow_sink_slows_the_source_and_memory_stays_within_the_reservation() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2);
    let records = 400_000u64;
    let out = env
        .from_sequence(0..records)
        .map(|v| (key_of(v, 1000), v))
        .key_by(|r: &(u64, u64)| r.0)
        .into_stream()
        .map(|r| r.1)
        .name("After Exchange")
        .collect();
    let handle = env.execute_async("slow-sink").unwrap();
    let mut got = Vec::with_capacity(records as usize);
    for (i, v) in out.enumerate() {
        if i % 2000 == 0 {
            // A slow host: the collect channel fills, the sink blocks, credits run out.
            std::thread::sleep(Duration::from_millis(2));
        }
        got.push(v);
    }
    let result = handle.join().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..records).collect::<Vec<_>>(), "nothing lost or duplicated");

    let source_waits = result.backpressure_waits("Source: sequence");
    let sink_waits = result.backpressure_waits("Sink: collect");
    assert!(sink_waits > 0, "the sink waited for the host: {result}");
    assert!(source_waits > 0, "backpressure reached the source: {result}");
    let stalls: u64 = result.tasks.iter().filter(|t| t.task.contains("Source")).map(|t| t.credit_stalls).sum();
    assert!(stalls > 0, "the source ran out of credit");
    let stats = cluster.pool().stats();
    assert!(
        stats.peak_in_use <= result.buffers_reserved,
        "peak {} > reserved {}",
        stats.peak_in_use,
        result.buffers_reserved
    );
    assert_eq!(stats.in_use, 0);
}

#[test]
fn the_host_channel_source_pushes_back_when_the_job_is_blocked() {
    let cluster = cluster(1);
    let env = cluster.environment();
    let (tx, stream): (SourceSender<u64>, _) = env.from_channel(100);
    let out = stream.map(|v| v + 1).collect();
    let handle = env.execute_async("host-source").unwrap();
    // Nobody reads the output: the collect channel, the source and then the host channel fill.
    let mut sent = 0u64;
    let refused = loop {
        match tx.try_send(sent) {
            Ok(()) => sent += 1,
            Err(e) if e.is_full() => break e.into_inner(),
            Err(e) => panic!("unexpected {e:?}"),
        }
        if sent.is_multiple_of(1000) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(sent < 1_000_000, "the host channel never pushed back");
    };
    assert_eq!(refused, sent, "a refused record is handed back");
    let reader = std::thread::spawn(move || out.collect::<Vec<u64>>());
    tx.send(refused).unwrap();
    for v in sent + 1..sent + 1000 {
        tx.send(v).unwrap();
    }
    drop(tx);
    let got = reader.join().unwrap();
    let result = handle.join().unwrap();
    assert_eq!(got, (1..sent + 1001).collect::<Vec<_>>(), "in order, nothing lost");
    assert_eq!(result.records_in("Sink"), sent + 1000);
}

/// `send_all` wakes the source once per call, and early whenever the channel fills: a batch
/// far larger than the channel arrives whole and in order (without the early wake the host
/// would wait on a full channel that an idle source was never told about).
#[test]
fn send_all_delivers_batches_larger_than_the_channel() {
    let cluster = cluster(1);
    let env = cluster.environment();
    let (tx, stream): (SourceSender<u64>, _) = env.from_channel(16);
    let out = stream.map(|v| v).collect();
    let handle = env.execute_async("send-all").unwrap();
    let reader = std::thread::spawn(move || out.collect::<Vec<u64>>());
    within(60, "send_all", move || {
        for chunk in 0..10u64 {
            assert_eq!(tx.send_all(chunk * 10_000..(chunk + 1) * 10_000).unwrap(), 10_000);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(tx.send_all(std::iter::empty()).unwrap(), 0);
    });
    let got = reader.join().unwrap();
    assert_eq!(got, (0..100_000).collect::<Vec<_>>(), "in order, nothing lost");
    handle.join().unwrap();
}

#[test]
fn an_idle_producer_flushes_its_partly_filled_buffers_at_once() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2).set_buffer_timeout(Duration::from_secs(3600));
    let (tx, stream): (SourceSender<u64>, _) = env.from_channel(16);
    // Through an exchange: the record sits in a partly filled buffer until something flushes it.
    let out = stream.rebalance().map(|v| v * 10).collect();
    let handle = env.execute_async("idle-flush").unwrap();
    for v in 1..=3u64 {
        tx.send(v).unwrap();
        // The source stays open and the buffer timeout is an hour: only the idle flush can
        // deliver the record while we wait.
        let got = out.recv_timeout(Duration::from_secs(30)).expect("the record arrives while the source is idle");
        assert_eq!(got, Some(v * 10));
    }
    drop(tx);
    assert_eq!(out.recv_timeout(Duration::from_secs(30)).unwrap(), None, "the job ends when the host closes");
    let result = handle.join().unwrap();
    let idle_flushes: u64 = result.tasks.iter().map(|t| t.flushes_idle).sum();
    assert!(idle_flushes >= 3, "{result}");
}

#[test]
fn a_busy_producer_flushes_after_the_buffer_timeout() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(1).set_buffer_timeout(Duration::from_millis(1)).set_batch_size(1);
    // A source that is never idle but produces slowly: only the timeout can flush its buffers.
    env.generate_unbounded(|i| {
        std::thread::sleep(Duration::from_micros(200));
        i
    })
    .rebalance()
    .map(|v| v)
    .discard();
    let handle = env.execute_async("timeout-flush").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    handle.cancel();
    let result = handle.join().unwrap();
    let timeout_flushes: u64 = result.tasks.iter().map(|t| t.flushes_timeout).sum();
    assert!(timeout_flushes > 0, "{result}");
    assert!(result.records_in("Map") > 0);
}

/// Runs `f` on a thread and fails the test if it does not return within `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).unwrap_or_else(|_| panic!("{what} did not finish within {secs} s"))
}

/// A sink that is busy for a while after its first batch, like one waiting on an external
/// system, and optionally wakes its task when it is free again.
struct BusySink {
    busy_until: Option<std::time::Instant>,
    waker: Option<corestream::SinkWaker>,
}

impl corestream::Sink<u64> for BusySink {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), corestream::SinkError> {
        batch.clear();
        if self.busy_until.is_none() {
            self.busy_until = Some(std::time::Instant::now() + Duration::from_millis(20));
            if let Some(waker) = self.waker.clone() {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(25));
                    waker.wake();
                });
            }
        }
        Ok(())
    }

    fn poll_ready(&mut self) -> bool {
        self.busy_until.is_none_or(|t| std::time::Instant::now() >= t)
    }
}

#[test]
fn a_busy_custom_sink_resumes_with_or_without_its_waker() {
    for use_waker in [true, false] {
        let cluster = cluster(1);
        let env = cluster.environment();
        env.from_sequence(0..10_000).add_sink("Busy Sink", move |ctx: corestream::SinkContext| {
            Ok(BusySink { busy_until: None, waker: use_waker.then_some(ctx.waker) })
        });
        let job = env.execute_async("busy-sink").unwrap();
        let result = within(30, "the job with a busy sink", move || job.join().unwrap());
        assert_eq!(result.records_in("Busy Sink"), 10_000);
    }
}

#[test]
fn dropping_a_full_collect_stream_fails_the_job_instead_of_hanging() {
    let cluster = cluster(1);
    let env = cluster.environment();
    let mut out = env.from_sequence(0..1_000_000).collect();
    let job = env.execute_async("dropped-stream").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..10 {
        out.next();
    }
    drop(out);
    let outcome = within(30, "the job whose stream was dropped", move || job.join());
    let msg = outcome.unwrap_err().to_string();
    assert!(msg.contains("dropped the collect stream") && msg.contains("Sink: collect"), "{msg}");
    assert_eq!(cluster.pool().in_use(), 0);
}
