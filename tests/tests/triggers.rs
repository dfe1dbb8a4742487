//! Window semantics end to end, each case computed by hand (or by a direct computation) and run
//! at parallelism 1, 2 and 4: count, continuous event-time and purging triggers; allowed
//! lateness with late firings, the late side output and the count of dropped late records;
//! `reduce`, `aggregate`, `process` and `aggregate_process` over windows with offsets and
//! negative timestamps; session windows merging (a record bridging two sessions, touching
//! sessions, merging trigger counts, late merges); processing-time windows.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{drain, join, read_until};
use corestream::{
    AggregateFunction, DataStream, JobResult, OutputTag, StreamEnvironment, Trigger, WatermarkStrategy, WindowAssigner,
    WindowContext,
};
use corestream_tests::cluster;

/// (key, timestamp, value).
type Rec = (u64, i64, i64);

/// A deterministic stream: one source subtask, a watermark after every record that advances it
/// (watermark = highest timestamp − `bound_ms` − 1).
fn ordered(env: &StreamEnvironment, records: Vec<Rec>, bound_ms: u64) -> DataStream<Rec> {
    env.from_iter(records)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(bound_ms))
                .with_timestamp_assigner(|r: &Rec| r.1)
                .with_per_record_emission(),
        )
        .set_parallelism(1)
}

fn sum(a: &Rec, b: &Rec) -> Rec {
    (a.0, a.1.max(b.1), a.2 + b.2)
}

/// (key, window start, sum of values) in firing order.
type Fired = (u64, i64, i64);

/// Runs a window job per parallelism; returns each key's firings in order and the job result.
fn run_windows(
    records: &[Rec],
    bound_ms: u64,
    build: impl Fn(DataStream<Rec>) -> DataStream<Fired>,
) -> Vec<(BTreeMap<u64, Vec<Fired>>, JobResult)> {
    [1, 2, 4]
        .into_iter()
        .map(|p| {
            let cluster = cluster(p);
            let mut env = cluster.environment();
            env.set_parallelism(p);
            let out = build(ordered(&env, records.to_vec(), bound_ms)).collect();
            let job = env.execute_async("windows").unwrap();
            let got: Vec<Fired> = out.collect();
            let result = join(job);
            let mut per_key: BTreeMap<u64, Vec<Fired>> = BTreeMap::new();
            for f in got {
                per_key.entry(f.0).or_default().push(f);
            }
            (per_key, result)
        })
        .collect()
}

fn sums(key: u64, fired: &[(i64, i64)]) -> Vec<Fired> {
    fired.iter().map(|&(s, v)| (key, s, v)).collect()
}

fn sum_process(ctx: &WindowContext<'_, u64>, r: Rec, out: &mut Vec<Fired>) {
    out.push((*ctx.key, ctx.window.start, r.2))
}

#[test]
fn count_triggers_fire_every_n_records_and_purging_keeps_only_the_last_n() {
    // Key 1: values 1..=7 in one window; key 2: values 10..=14; key 3: 2 records (never fires).
    let mut records: Vec<Rec> = (1..=7).map(|v| (1, v * 10, v)).collect();
    records.extend((10..=14).map(|v| (2, v * 10, v)));
    records.extend([(3, 5, 100), (3, 6, 100)]);
    let size = Duration::from_secs(10);
    let want = |purging: bool| {
        let mut m = BTreeMap::new();
        if purging {
            m.insert(1, sums(1, &[(0, 6), (0, 15)]));
            m.insert(2, sums(2, &[(0, 33)]));
        } else {
            m.insert(1, sums(1, &[(0, 6), (0, 21)]));
            m.insert(2, sums(2, &[(0, 33)]));
        }
        m
    };
    for purging in [false, true] {
        let trigger = if purging { Trigger::Count(3).purging() } else { Trigger::Count(3) };
        for (p, (got, _)) in run_windows(&records, 0, |s| {
            s.key_by(|r: &Rec| r.0)
                .window(WindowAssigner::tumbling_event_time(size))
                .trigger(trigger.clone())
                .reduce_process(sum, sum_process)
        })
        .into_iter()
        .enumerate()
        {
            assert_eq!(got, want(purging), "purging={purging}, run {p}");
        }
    }
}

#[test]
fn continuous_event_time_triggers_fire_at_each_interval_and_at_the_end() {
    let records: Vec<Rec> = vec![(5, 10, 10), (5, 300, 300), (5, 600, 600), (5, 900, 900), (6, 2500, 2500)];
    let size = Duration::from_secs(1);
    for purging in [false, true] {
        let mut want = BTreeMap::new();
        if purging {
            want.insert(5, sums(5, &[(0, 310), (0, 600), (0, 900)]));
            want.insert(6, sums(6, &[(2000, 2500)]));
        } else {
            want.insert(5, sums(5, &[(0, 310), (0, 910), (0, 1810), (0, 1810)]));
            want.insert(6, sums(6, &[(2000, 2500), (2000, 2500)]));
        }
        let trigger = Trigger::ContinuousEventTime(250);
        let trigger = if purging { trigger.purging() } else { trigger };
        for (got, _) in run_windows(&records, 0, |s| {
            s.key_by(|r: &Rec| r.0)
                .window(WindowAssigner::tumbling_event_time(size))
                .trigger(trigger.clone())
                .reduce_process(sum, sum_process)
        }) {
            assert_eq!(got, want, "purging={purging}");
        }
    }
}

/// Key 1 (watermark = highest timestamp − 1): window [0, 1000) fires at 1199 with {100, 200};
/// 300 is late but within the lateness of 500 ms, so the window fires again; 1600 moves the
/// clock past the cleanup time 1499; 400 is then too late.
fn lateness_records() -> Vec<Rec> {
    vec![(2, 50, 50), (1, 100, 100), (1, 200, 200), (1, 1200, 1200), (1, 300, 300), (1, 1600, 1600), (1, 400, 400)]
}

#[test]
fn allowed_lateness_fires_again_and_later_records_are_dropped_and_counted() {
    let size = Duration::from_secs(1);
    for purging in [false, true] {
        let mut want = BTreeMap::new();
        if purging {
            want.insert(1, sums(1, &[(0, 300), (0, 300), (1000, 2800)]));
        } else {
            want.insert(1, sums(1, &[(0, 300), (0, 600), (1000, 2800)]));
        }
        want.insert(2, sums(2, &[(0, 50)]));
        for (got, result) in run_windows(&lateness_records(), 0, |s| {
            let w = s
                .key_by(|r: &Rec| r.0)
                .window(WindowAssigner::tumbling_event_time(size))
                .allowed_lateness(Duration::from_millis(500));
            let w = if purging { w.trigger(Trigger::EventTime.purging()) } else { w };
            w.reduce_process(sum, sum_process)
        }) {
            assert_eq!(got, want, "purging={purging}");
            let op = result.operator("Window").expect("window operator");
            assert_eq!(op.late_records_dropped, 1, "purging={purging}: {result}");
        }
    }
}

#[test]
fn records_later_than_the_lateness_go_to_the_late_side_output() {
    let late = OutputTag::<Rec>::new("late");
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let windows = ordered(&env, lateness_records(), 0)
            .key_by(|r: &Rec| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
            .allowed_lateness(Duration::from_millis(500))
            .side_output_late_data(&late)
            .process(|ctx: &WindowContext<'_, u64>, rs: Vec<Rec>, out: &mut Vec<(u64, i64, usize, bool)>| {
                out.push((*ctx.key, ctx.window.start, rs.len(), ctx.watermark >= ctx.window.max_timestamp()))
            });
        let late_out = drain(windows.side_output(&late).collect());
        let fired = drain(windows.collect());
        let job = env.execute_async("late side output").unwrap();
        let (mut fired, late_out) = (fired.join().unwrap(), late_out.join().unwrap());
        let result = join(job);
        assert_eq!(late_out, vec![(1, 400, 400)], "p={p}");
        fired.sort();
        assert_eq!(fired, vec![(1, 0, 2, true), (1, 0, 3, true), (1, 1000, 2, true), (2, 0, 1, true)], "p={p}");
        assert_eq!(result.operator("Window").unwrap().late_records_dropped, 0, "p={p}: sent to the side output");
    }
}

/// (count, sum) → mean × 1000, rounded down.
#[derive(Clone)]
struct Mean;

impl AggregateFunction<Rec, (u64, i64), (u64, i64)> for Mean {
    fn create_accumulator(&self) -> (u64, i64) {
        (0, 0)
    }
    fn add(&self, r: &Rec, acc: &mut (u64, i64)) {
        acc.0 += 1;
        acc.1 += r.2;
    }
    fn get_result(&self, acc: &(u64, i64)) -> (u64, i64) {
        (acc.0, (acc.1 * 1000).div_euclid(acc.0 as i64))
    }
    fn merge(&self, a: &mut (u64, i64), b: (u64, i64)) {
        a.0 += b.0;
        a.1 += b.1;
    }
}

const N: u64 = 60_000;

/// Timestamps from −6000 ms on, out of order by at most 50 ms within a source subtask.
fn gen(i: u64) -> Rec {
    let h = common::hash(i);
    (h % 13, i as i64 / 5 - 6000 + (h >> 20) as i64 % 50, (h >> 40) as i64 % 1000 - 500)
}

/// The windows of `ts`, computed from the definitions (not with the engine's assigner).
fn windows_of(ts: i64, size: i64, slide: i64, offset: i64) -> Vec<(i64, i64)> {
    let mut first = ts - size + 1;
    first += (offset - first).rem_euclid(slide);
    (0..).map(|j| first + j * slide).take_while(|s| *s <= ts).map(|s| (s, s + size)).collect()
}

#[test]
fn window_functions_match_a_direct_computation_with_offsets_and_negative_times() {
    // (size, slide, offset) in ms.
    let shapes = [(1000, 1000, 300), (2000, 500, -100), (700, 700, 0)];
    for &(size, slide, offset) in &shapes {
        let assigner = if size == slide {
            WindowAssigner::tumbling_event_time(Duration::from_millis(size as u64)).with_offset_ms(offset)
        } else {
            WindowAssigner::sliding_event_time(Duration::from_millis(size as u64), Duration::from_millis(slide as u64))
                .with_offset_ms(offset)
        };
        // Direct computation: per (key, start): count, sum, max ts.
        let mut want: BTreeMap<(u64, i64), (u64, i64, i64, i64)> = BTreeMap::new();
        for i in 0..N {
            let r = gen(i);
            for (s, _) in windows_of(r.1, size, slide, offset) {
                let e = want.entry((r.0, s)).or_insert((0, 0, i64::MIN, i64::MAX));
                e.0 += 1;
                e.1 += r.2;
                e.2 = e.2.max(r.1);
                e.3 = e.3.min(r.1);
            }
        }
        for p in [1, 2, 4] {
            let cluster = cluster(p);
            let mut env = cluster.environment();
            env.set_parallelism(p).set_auto_watermark_interval(Duration::from_millis(5));
            let stream = env.from_generator(N, gen).assign_timestamps_and_watermarks(
                WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(200))
                    .with_timestamp_assigner(|r: &Rec| r.1),
            );
            let keyed = || stream.clone().key_by(|r: &Rec| r.0);
            let reduced = drain(keyed().window(assigner).reduce(|a: &Rec, b: &Rec| sum(a, b)).collect());
            let means = drain(keyed().window(assigner).aggregate(Mean).collect());
            let whole = drain(
                keyed()
                    .window(assigner)
                    .process(
                        |ctx: &WindowContext<'_, u64>, rs: Vec<Rec>, out: &mut Vec<(u64, i64, i64, u64, i64, i64)>| {
                            assert!(ctx.watermark >= ctx.window.max_timestamp(), "fired early: {ctx:?}");
                            assert!(rs
                                .iter()
                                .all(|r| r.0 == *ctx.key && ctx.window.start <= r.1 && r.1 < ctx.window.end));
                            let lo = rs.iter().map(|r| r.1).min().unwrap();
                            let hi = rs.iter().map(|r| r.1).max().unwrap();
                            out.push((*ctx.key, ctx.window.start, ctx.window.end, rs.len() as u64, lo, hi))
                        },
                    )
                    .collect(),
            );
            let counted = drain(
                keyed()
                    .window(assigner)
                    .aggregate_process(
                        Mean,
                        |ctx: &WindowContext<'_, u64>, m: (u64, i64), out: &mut Vec<(u64, i64, u64, i64)>| {
                            out.push((*ctx.key, ctx.window.start, m.0, m.1))
                        },
                    )
                    .collect(),
            );
            let job = env.execute_async("window functions").unwrap();
            let (reduced, means, whole, counted) =
                (reduced.join().unwrap(), means.join().unwrap(), whole.join().unwrap(), counted.join().unwrap());
            let result = join(job);
            let ctx = format!("size {size} slide {slide} offset {offset} p={p}");
            assert_eq!(result.operator("Window").unwrap().late_records_dropped, 0, "{ctx}");

            let mut r: Vec<(u64, i64, i64)> = reduced.iter().map(|r| (r.0, r.1, r.2)).collect();
            let mut w: Vec<(u64, i64, i64)> = want.iter().map(|(k, v)| (k.0, v.2, v.1)).collect();
            r.sort_unstable();
            w.sort_unstable();
            assert_eq!(r, w, "reduce, {ctx}");

            let mut m = means;
            let mut w: Vec<(u64, i64)> = want.values().map(|v| (v.0, (v.1 * 1000).div_euclid(v.0 as i64))).collect();
            m.sort_unstable();
            w.sort_unstable();
            assert_eq!(m, w, "aggregate, {ctx}");

            let mut got = whole;
            got.sort_unstable();
            let w: Vec<_> = want.iter().map(|(k, v)| (k.0, k.1, k.1 + size, v.0, v.3, v.2)).collect();
            assert_eq!(got, w, "process, {ctx}");

            let mut got = counted;
            got.sort_unstable();
            let w: Vec<_> = want.iter().map(|(k, v)| (k.0, k.1, v.0, (v.1 * 1000).div_euclid(v.0 as i64))).collect();
            assert_eq!(got, w, "aggregate_process, {ctx}");
        }
    }
}

/// (key, start, end, timestamps in the session, sorted).
type Session = (u64, i64, i64, Vec<i64>);

fn sessions(
    records: &[Rec],
    bound_ms: u64,
    gap_ms: u64,
    trigger: Option<Trigger>,
    lateness_ms: u64,
) -> Vec<Vec<Session>> {
    [1, 2, 4]
        .into_iter()
        .map(|p| {
            let cluster = cluster(p);
            let mut env = cluster.environment();
            env.set_parallelism(p);
            let mut w = ordered(&env, records.to_vec(), bound_ms)
                .key_by(|r: &Rec| r.0)
                .window(WindowAssigner::event_time_session(Duration::from_millis(gap_ms)))
                .allowed_lateness(Duration::from_millis(lateness_ms));
            if let Some(t) = &trigger {
                w = w.trigger(t.clone());
            }
            let out = w
                .process(|ctx: &WindowContext<'_, u64>, rs: Vec<Rec>, out: &mut Vec<Session>| {
                    let mut ts: Vec<i64> = rs.iter().map(|r| r.1).collect();
                    ts.sort_unstable();
                    out.push((*ctx.key, ctx.window.start, ctx.window.end, ts))
                })
                .collect();
            let job = env.execute_async("sessions").unwrap();
            let mut got: Vec<Session> = out.collect();
            join(job);
            // Firing order matters only per key.
            got.sort_by_key(|s| s.0);
            got
        })
        .collect()
}

#[test]
fn sessions_merge_when_a_record_bridges_or_touches_them() {
    // Gap 500 ms, watermark = highest timestamp − 1001 ms, so nothing fires before 5000.
    // Key 1: [0, 600) and [1000, 1500) are bridged by 550 → [0, 1500); key 2: [0, 500) and
    // [500, 1000) touch → [0, 1000); key 3: two separate sessions.
    let records: Vec<Rec> = [(1, 0), (2, 0), (3, 0), (1, 100), (2, 500), (1, 1000), (1, 550), (3, 2000), (1, 5000)]
        .into_iter()
        .map(|(k, t)| (k, t, 1))
        .collect();
    let want: Vec<Session> = vec![
        (1, 0, 1500, vec![0, 100, 550, 1000]),
        (1, 5000, 5500, vec![5000]),
        (2, 0, 1000, vec![0, 500]),
        (3, 0, 500, vec![0]),
        (3, 2000, 2500, vec![2000]),
    ];
    for got in sessions(&records, 1000, 500, None, 0) {
        assert_eq!(got, want);
    }
}

#[test]
fn count_trigger_counts_merge_with_their_sessions() {
    // Key 1: two sessions of one record each ([100, 600) and [1000, 1500)), bridged by a third
    // ([550, 1050)) → 3 records → fires once. Key 2: two records in one session → never fires.
    let records: Vec<Rec> =
        [(1, 100), (2, 0), (1, 1000), (2, 100), (1, 550)].into_iter().map(|(k, t)| (k, t, 1)).collect();
    for got in sessions(&records, 10_000, 500, Some(Trigger::Count(3)), 0) {
        assert_eq!(got, vec![(1, 100, 1500, vec![100, 550, 1000])]);
    }
}

#[test]
fn a_late_record_within_the_lateness_extends_a_fired_session_and_fires_it_again() {
    // Watermark = highest timestamp − 1. [0, 600) fires at 999; 400 (lateness 1000 ms) extends
    // it to [0, 900), which fires again at once; [1000, 1500) fires at the end.
    let records: Vec<Rec> = [(1, 0), (1, 100), (1, 1000), (1, 400)].into_iter().map(|(k, t)| (k, t, 1)).collect();
    for got in sessions(&records, 0, 500, None, 1000) {
        assert_eq!(got, vec![(1, 0, 600, vec![0, 100]), (1, 0, 900, vec![0, 100, 400]), (1, 1000, 1500, vec![1000])]);
    }
}

/// (key, window start, window end, send times of its records).
type PtWindow = (u64, i64, i64, Vec<i64>);

/// Sends records for 700 ms while the job runs and waits for a window before closing the input.
/// `fresh_clock`: also require that each record lands in the window of its arrival.
fn processing_time_windows(p: u32, fresh_clock: bool) {
    let cluster = cluster(p);
    let mut env = cluster.environment();
    env.set_parallelism(p);
    let (tx, s) = env.from_channel::<(u64, i64)>(1024);
    let out = s
        .key_by(|r: &(u64, i64)| r.0)
        .window(WindowAssigner::tumbling_processing_time(Duration::from_millis(200)))
        .trigger(Trigger::ProcessingTime)
        .process(|ctx: &WindowContext<'_, u64>, rs: Vec<(u64, i64)>, out: &mut Vec<PtWindow>| {
            out.push((*ctx.key, ctx.window.start, ctx.window.end, rs.iter().map(|r| r.1).collect()))
        })
        .collect();
    let job = env.execute_async("processing-time windows").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_millis(700) {
        for k in 0..3 {
            tx.send((k, common::now_ms())).unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Windows fire on processing time, while the input is still open.
    let mut got = Vec::new();
    read_until(&out, &mut got, Duration::from_secs(5), "a window", |g| !g.is_empty());
    drop(tx);
    got.extend(out);
    join(job);
    assert_eq!(got.iter().map(|w| w.3.len()).sum::<usize>(), sent, "p={p}: every record in one window");
    for (k, s, e, times) in &got {
        assert_eq!(e - s, 200);
        if !fresh_clock {
            continue;
        }
        for t in times {
            // A record enters the window of its arrival, a little after it was sent.
            assert!(*t < *e && *t + 100 >= *s, "p={p}: key {k}: record sent at {t} in window [{s}, {e})");
        }
    }
}

#[test]
fn processing_time_windows_fire_while_the_input_is_open() {
    for p in [1, 2] {
        processing_time_windows(p, false);
    }
}

#[test]
fn a_record_lands_in_the_processing_time_window_of_its_arrival() {
    for p in [1, 2] {
        processing_time_windows(p, true);
    }
}

#[test]
fn processing_time_windows_still_open_fire_at_the_end_of_a_bounded_input() {
    for p in [1, 2] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let out = env
            .from_sequence(0..10_000)
            .map(|v| (v % 7, 0i64, 1i64))
            .key_by(|r: &Rec| r.0)
            .window(WindowAssigner::tumbling_processing_time(Duration::from_secs(3600)))
            .reduce(|a: &Rec, b: &Rec| sum(a, b))
            .collect();
        let job = env.execute_async("processing-time end").unwrap();
        let got: Vec<Rec> = out.collect();
        join(job);
        // One window per key (two if the run straddles the hour).
        let mut per_key = BTreeMap::new();
        for r in got {
            *per_key.entry(r.0).or_insert(0) += r.2;
        }
        let want: BTreeMap<u64, i64> = (0..7).map(|k| (k, (0..10_000).filter(|v| v % 7 == k).count() as i64)).collect();
        assert_eq!(per_key, want, "p={p}");
    }
}

#[test]
fn continuous_event_time_triggers_follow_merging_sessions() {
    // Gap 1000 ms, interval 300 ms, watermark = highest timestamp − 1. [0, 1000) merges with
    // 500 into [0, 1500): the pending firing at 300 moves to the merged session and fires
    // with {0, 500}; 1200 merges into [0, 2200) and the clock at 1199 fires 600 and 900; the
    // end fires 1200, 1500, 1800, 2100 and the session's end 2199.
    let records: Vec<Rec> = vec![(1, 0, 0), (1, 500, 500), (1, 1200, 1200)];
    let mut want = vec![(1, 0, 500)];
    want.extend([(1, 0, 1700); 7]);
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let out = ordered(&env, records.clone(), 0)
            .key_by(|r: &Rec| r.0)
            .window(WindowAssigner::event_time_session(Duration::from_millis(1000)))
            .trigger(Trigger::ContinuousEventTime(300))
            .reduce_process(sum, sum_process)
            .collect();
        let job = env.execute_async("continuous sessions").unwrap();
        let got: Vec<Fired> = out.collect();
        join(job);
        assert_eq!(got, want, "p={p}");
    }
}

#[test]
fn dropped_late_records_are_counted_over_all_subtasks() {
    // 16 keys with one on-time record each, a record that moves the clock to 4999, then one
    // record per key far behind it.
    let mut records: Vec<Rec> = (0..16).map(|k| (k, 100, 1)).collect();
    records.push((99, 5000, 1));
    records.extend((0..16).map(|k| (k, 200, 1)));
    for (got, result) in run_windows(&records, 0, |s| {
        s.key_by(|r: &Rec| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
            .reduce_process(sum, sum_process)
    }) {
        assert_eq!(got.values().map(Vec::len).sum::<usize>(), 17);
        assert_eq!(result.operator("Window").unwrap().late_records_dropped, 16, "{result}");
    }
}

/// (count, sum, max timestamp, min timestamp) of a window.
type Stats = (u64, i64, i64, i64);

/// Sparser than `gen`: per key about one record every 39 ms, out of order by < 50 ms.
fn gen_sparse(i: u64) -> Rec {
    let h = common::hash(i + 5);
    (h % 13, 3 * i as i64 - 6000 + (h >> 20) as i64 % 50, (h >> 40) as i64 % 1000 - 500)
}

#[test]
fn session_window_functions_match_a_direct_computation() {
    const M: u64 = 20_000;
    const GAP: i64 = 30;
    // Direct computation: per key, sorted timestamps split where the next one is more than a
    // gap after the previous one (windows [t, t + gap) that touch merge).
    let mut per_key: BTreeMap<u64, Vec<(i64, i64)>> = BTreeMap::new();
    for i in 0..M {
        let r = gen_sparse(i);
        per_key.entry(r.0).or_default().push((r.1, r.2));
    }
    // (key, start, end) → (count, sum, max ts, min ts)
    let mut want: BTreeMap<(u64, i64, i64), Stats> = BTreeMap::new();
    for (k, mut rs) in per_key {
        rs.sort_unstable();
        let mut start = 0;
        for i in 1..=rs.len() {
            if i == rs.len() || rs[i].0 > rs[i - 1].0 + GAP {
                let s = &rs[start..i];
                let v = (s.len() as u64, s.iter().map(|r| r.1).sum(), s[s.len() - 1].0, s[0].0);
                want.insert((k, s[0].0, s[s.len() - 1].0 + GAP), v);
                start = i;
            }
        }
    }
    assert!(want.len() > 1000 && want.values().any(|v| v.0 > 3), "the data makes many merged sessions");
    let assigner = WindowAssigner::event_time_session(Duration::from_millis(GAP as u64));
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p).set_auto_watermark_interval(Duration::from_millis(5));
        let stream = env.from_generator(M, gen_sparse).assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(200))
                .with_timestamp_assigner(|r: &Rec| r.1),
        );
        let keyed = || stream.clone().key_by(|r: &Rec| r.0);
        let reduced = drain(keyed().window(assigner).reduce(|a: &Rec, b: &Rec| sum(a, b)).collect());
        let means = drain(keyed().window(assigner).aggregate(Mean).collect());
        let whole = drain(
            keyed()
                .window(assigner)
                .process(|ctx: &WindowContext<'_, u64>, rs: Vec<Rec>, out: &mut Vec<(u64, i64, i64, u64, i64, i64)>| {
                    let lo = rs.iter().map(|r| r.1).min().unwrap();
                    let hi = rs.iter().map(|r| r.1).max().unwrap();
                    out.push((*ctx.key, ctx.window.start, ctx.window.end, rs.len() as u64, lo, hi))
                })
                .collect(),
        );
        let counted = drain(
            keyed()
                .window(assigner)
                .aggregate_process(
                    Mean,
                    |ctx: &WindowContext<'_, u64>, m: (u64, i64), out: &mut Vec<(u64, i64, i64, u64, i64)>| {
                        out.push((*ctx.key, ctx.window.start, ctx.window.end, m.0, m.1))
                    },
                )
                .collect(),
        );
        let job = env.execute_async("session functions").unwrap();
        let (reduced, means, whole, counted) =
            (reduced.join().unwrap(), means.join().unwrap(), whole.join().unwrap(), counted.join().unwrap());
        join(job);
        let mean = |v: &Stats| (v.1 * 1000).div_euclid(v.0 as i64);

        let mut got: Vec<(u64, i64, i64)> = reduced.iter().map(|r| (r.0, r.1, r.2)).collect();
        let mut w: Vec<(u64, i64, i64)> = want.iter().map(|(k, v)| (k.0, v.2, v.1)).collect();
        got.sort_unstable();
        w.sort_unstable();
        assert!(got == w, "p={p}: session reduce differs ({} vs {} sessions)", got.len(), w.len());

        let mut got = means;
        let mut w: Vec<(u64, i64)> = want.values().map(|v| (v.0, mean(v))).collect();
        got.sort_unstable();
        w.sort_unstable();
        assert!(got == w, "p={p}: session aggregate differs");

        let mut got = whole;
        got.sort_unstable();
        let w: Vec<_> = want.iter().map(|(k, v)| (k.0, k.1, k.2, v.0, v.3, v.2)).collect();
        assert!(got == w, "p={p}: session process differs");

        let mut got = counted;
        got.sort_unstable();
        let w: Vec<_> = want.iter().map(|(k, v)| (k.0, k.1, k.2, v.0, mean(v))).collect();
        assert!(got == w, "p={p}: session aggregate_process differs");
    }
}

#[test]
fn event_time_windows_on_a_stream_without_timestamps_are_refused() {
    let cluster = cluster(1);
    let env = cluster.environment();
    // `map` changes the record type, which ends the declared event time.
    ordered(&env, vec![(1, 1, 1)], 0)
        .map(|r: Rec| (r.0, r.1, r.2 + 1))
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
        .reduce(|a: &Rec, b: &Rec| sum(a, b))
        .discard();
    match env.execute("no timestamps") {
        Err(corestream::JobError::InvalidJob(msg)) => assert!(msg.contains("timestamps"), "{msg}"),
        other => panic!("expected an invalid job, got {other:?}"),
    }
}
