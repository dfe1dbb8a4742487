//! First end-to-end checks of event-time windows: counts per key and tumbling window over a
//! sequence, at several parallelisms, equal to a direct computation.

use std::collections::BTreeMap;
use std::time::Duration;

use corestream::{WatermarkStrategy, WindowAssigner, WindowContext};
use corestream_bench::throughput::CountAgg as Count;
use corestream_tests::cluster;

fn run(p: u32, assigner: WindowAssigner) -> BTreeMap<(u64, i64, i64), u64> {
    let cluster = cluster(p);
    let mut env = cluster.environment();
    env.set_parallelism(p);
    let out = env
        .from_sequence(0..200_000)
        .map(|v| ((v * 7919) % 100, (v / 10) as i64))
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &(u64, i64)| r.1),
        )
        .key_by(|r: &(u64, i64)| r.0)
        .window(assigner)
        .aggregate_process(Count, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<(u64, i64, i64, u64)>| {
            out.push((*ctx.key, ctx.window.start, ctx.window.end, n))
        })
        .collect();
    let job = env.execute_async("windows").unwrap();
    let got: Vec<(u64, i64, i64, u64)> = out.collect();
    job.join().unwrap();
    let mut m = BTreeMap::new();
    for (k, s, e, n) in got {
        assert!(m.insert((k, s, e), n).is_none(), "window ({k},{s},{e}) fired twice");
    }
    m
}

fn expected(assigner: WindowAssigner) -> BTreeMap<(u64, i64, i64), u64> {
    let mut m = BTreeMap::new();
    let mut ws = Vec::new();
    for v in 0..200_000u64 {
        ws.clear();
        assigner.assign((v / 10) as i64, &mut ws);
        for w in &ws {
            *m.entry(((v * 7919) % 100, w.start, w.end)).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn tumbling_and_sliding_counts_match_at_each_parallelism() {
    for assigner in [
        WindowAssigner::tumbling_event_time(Duration::from_secs(1)),
        WindowAssigner::sliding_event_time(Duration::from_secs(1), Duration::from_millis(250)),
    ] {
        let want = expected(assigner);
        for p in [1, 2, 4] {
            assert_eq!(run(p, assigner), want, "{assigner:?} at parallelism {p}");
        }
    }
}
