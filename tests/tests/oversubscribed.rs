//! Regression test for lost executor wake-ups: many slots share few cores, so slot threads are
//! preempted at arbitrary points while they go to sleep. Every job must still finish. A
//! watchdog turns a hang into a failure instead of blocking the suite.

use std::sync::mpsc;
use std::time::Duration;

use corestream::RuntimeMode;
use corestream_bench::examples::{key_of, reference_sum_by_key};
use corestream_tests::cluster;

fn keyed_job(records: u64, keys: u64) -> Vec<(u64, u64)> {
    let cluster = cluster(4);
    let mut env = cluster.environment();
    env.set_parallelism(4).set_runtime_mode(RuntimeMode::Batch).set_batch_size(256);
    let out = env
        .from_generator(records, move |i| (key_of(i, keys), i))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1.wrapping_add(b.1)))
        .rebalance()
        .map(|r| r)
        .set_parallelism(1)
        .collect();
    let handle = env.execute_async("oversubscribed").unwrap();
    let mut got: Vec<(u64, u64)> = out.collect();
    handle.join().unwrap();
    got.sort_unstable();
    got
}

#[test]
fn concurrent_jobs_on_more_slots_than_cores_always_finish() {
    let (records, keys) = (300_000, 5_000);
    let expected = reference_sum_by_key(records, keys);
    let (tx, rx) = mpsc::channel();
    let jobs = 4;
    let rounds = 6;
    for _ in 0..jobs {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for _ in 0..rounds {
                tx.send(keyed_job(records, keys)).unwrap();
            }
        });
    }
    for done in 0..jobs * rounds {
        let got = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("a job hung: {done} of {} finished", jobs * rounds));
        assert_eq!(got, expected);
    }
}
