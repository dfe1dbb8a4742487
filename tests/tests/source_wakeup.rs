//! Application sources (`from_source`) that ask to be woken at a time (`IdleUntil`): the task
//! calls them again no earlier than asked, for a wait of milliseconds and one of microseconds,
//! and the job ends when they finish; an application source's error fails the job with its
//! message.

use std::time::{Duration, Instant};

use corestream::{SourceError, SourceFunction, SourceStatus};
use corestream_tests::cluster;

/// Emits 0, asks to be woken `wait` later, then emits how long after the first record it was
/// called again for good (µs) and finishes. Calls before the time (spurious wake-ups, which
/// the doorbell may cause) are answered with the same request.
struct WakeLater {
    wait: Duration,
    first: Option<Instant>,
}

impl SourceFunction<u64> for WakeLater {
    fn next_batch(&mut self, out: &mut Vec<u64>, _max_records: usize) -> Result<SourceStatus, SourceError> {
        let Some(first) = self.first else {
            out.push(0);
            let now = Instant::now();
            self.first = Some(now);
            return Ok(SourceStatus::IdleUntil(now + self.wait));
        };
        if first.elapsed() < self.wait {
            return Ok(SourceStatus::IdleUntil(first + self.wait));
        }
        out.push(first.elapsed().as_micros() as u64);
        Ok(SourceStatus::Finished)
    }
}

fn run(wait: Duration) -> Vec<u64> {
    let cluster = cluster(1);
    let mut env = cluster.environment();
    env.set_parallelism(1);
    let out = env.from_source("Source: wake later", Some(1), move |_ctx| Ok(WakeLater { wait, first: None })).collect();
    let handle = env.execute_async("wake-up").unwrap();
    let got: Vec<u64> = out.collect();
    handle.join().unwrap();
    got
}

#[test]
fn a_source_sleeping_until_a_time_is_called_again_after_it() {
    let got = run(Duration::from_millis(5));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], 0);
    assert!(got[1] >= 5_000, "called again {} us after the first record, asked for 5000", got[1]);
}

#[test]
fn a_source_waiting_microseconds_is_called_again_after_them() {
    let got = run(Duration::from_micros(10));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[1] >= 10, "called again {} us after the first record, asked for 10", got[1]);
}

#[test]
fn a_failing_application_source_fails_the_job_with_its_message() {
    struct Fails;
    impl SourceFunction<u64> for Fails {
        fn next_batch(&mut self, _out: &mut Vec<u64>, _max: usize) -> Result<SourceStatus, SourceError> {
            Err("the device is gone".into())
        }
    }
    let cluster = cluster(1);
    let env = cluster.environment();
    env.from_source("Source: fails", Some(1), |_ctx| Ok(Fails)).map(|v| v).add_sink("Sink: none", |_ctx| Ok(Drop));
    struct Drop;
    impl corestream::Sink<u64> for Drop {
        fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), corestream::SinkError> {
            batch.clear();
            Ok(())
        }
    }
    let err = env.execute("fails").unwrap_err();
    assert!(err.to_string().contains("the device is gone"), "{err}");
}
