//! Job start on an embedded cluster: runs many tiny jobs one after another and prints how long
//! `execute_async` took to hand back a handle (start) and how long the whole job took
//! (`execute`, start to joined). Usage: `job_start [JOBS] [SLOTS]` (default 1000 jobs, 2 slots).

use std::time::{Duration, Instant};

use corestream::{ClusterConfig, LocalCluster};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{what:<28} n={:<5} mean {:>8.1} µs  p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs",
        times.len(),
        mean.as_secs_f64() * 1e6,
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.9).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(1000, |a| a.parse().expect("JOBS is a number"));
    let slots: u32 = args.next().map_or(2, |a| a.parse().expect("SLOTS is a number"));
    let started = Instant::now();
    let cluster = LocalCluster::start(ClusterConfig { slots: Some(slots), ..Default::default() }).expect("cluster");
    println!("cluster start: {:.1} µs", started.elapsed().as_secs_f64() * 1e6);
    for p in [1, slots] {
        let mut start = Vec::with_capacity(jobs);
        let mut whole = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            let mut env = cluster.environment();
            env.set_parallelism(p);
            env.from_sequence(0..10).map(|v| v + 1).discard();
            let t = Instant::now();
            let handle = env.execute_async("tiny").expect("starts");
            start.push(t.elapsed());
            let result = handle.join().expect("runs");
            whole.push(t.elapsed());
            assert_eq!(result.records_in("Sink"), 10);
        }
        report(&format!("start p={p}"), start);
        report(&format!("start..joined p={p}"), whole);
    }
}
