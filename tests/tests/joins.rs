//! Two-input operators end to end: window joins and co-groups over tumbling, sliding and session
//! windows and interval joins, each against a nested-loop computation at parallelism 1, 2 and
//! 4; late records of an interval join; co-process functions (keyed, with state and timers
//! shared by both inputs, and not keyed). The broadcast-state pattern is in `broadcast.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{drain, join, read_until};
use corestream::{
    CoProcessFunction, DataStream, JoinedTimestamps, KeyedCoProcessFunction, KeyedContext, KeyedRuntimeContext,
    OutputTag, ProcessContext, StreamEnvironment, WatermarkStrategy, WindowAssigner, WindowContext,
};
use corestream_state::{ValueState, ValueStateDescriptor};
use corestream_tests::cluster;

/// (key, timestamp, id).
type Rec = (u64, i64, u64);

const KEYS: u64 = 20;
const N_A: u64 = 4000;
const N_B: u64 = 3000;

/// Input A: timestamps 0..8000 ms, out of order by < 50 ms within a source subtask.
fn rec_a(i: u64) -> Rec {
    let h = common::hash(i);
    (h % KEYS, 2 * i as i64 + (h >> 32) as i64 % 50, i)
}

/// Input B: the same time range, sparser, ids from 1 000 000.
fn rec_b(i: u64) -> Rec {
    let h = common::hash(i + 77_777);
    (h % KEYS, (8 * i as i64) / 3 + (h >> 32) as i64 % 50, 1_000_000 + i)
}

fn inputs(env: &StreamEnvironment) -> (DataStream<Rec>, DataStream<Rec>) {
    let strategy = || {
        WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(300))
            .with_timestamp_assigner(|r: &Rec| r.1)
    };
    let a = env.from_generator(N_A, rec_a).assign_timestamps_and_watermarks(strategy());
    let b = env.from_generator(N_B, rec_b).assign_timestamps_and_watermarks(strategy());
    (a, b)
}

fn env_for(cluster: &corestream::LocalCluster, p: u32) -> StreamEnvironment {
    let mut env = cluster.environment();
    env.set_parallelism(p).set_auto_watermark_interval(Duration::from_millis(5));
    env
}

/// A co-group's output: (key, window start, window end, ids of A, ids of B).
type Group = (u64, i64, i64, Vec<u64>, Vec<u64>);

/// (key, window start, window end) → (ids of A, ids of B), for tumbling or sliding windows.
type Groups = BTreeMap<(u64, i64, i64), (Vec<u64>, Vec<u64>)>;

fn fixed_groups(assigner: WindowAssigner) -> Groups {
    let mut g = Groups::new();
    let mut ws = Vec::new();
    for (i, r) in (0..N_A).map(|i| (0, rec_a(i))).chain((0..N_B).map(|i| (1, rec_b(i)))) {
        ws.clear();
        assigner.assign(r.1, &mut ws);
        for w in &ws {
            let e = g.entry((r.0, w.start, w.end)).or_default();
            if i == 0 {
                e.0.push(r.2)
            } else {
                e.1.push(r.2)
            }
        }
    }
    g
}

/// Sessions over the records of both inputs: per key, timestamps closer than `gap` (touching
/// windows `[t, t + gap)` included) belong to one session.
fn session_groups(gap: i64) -> Groups {
    let mut per_key: BTreeMap<u64, Vec<(i64, u8, u64)>> = BTreeMap::new();
    for i in 0..N_A {
        let r = rec_a(i);
        per_key.entry(r.0).or_default().push((r.1, 0, r.2));
    }
    for i in 0..N_B {
        let r = rec_b(i);
        per_key.entry(r.0).or_default().push((r.1, 1, r.2));
    }
    let mut g = Groups::new();
    for (k, mut rs) in per_key {
        rs.sort_unstable();
        let mut start = 0;
        for i in 1..=rs.len() {
            if i == rs.len() || rs[i].0 > rs[i - 1].0 + gap {
                let session = &rs[start..i];
                let e = g.entry((k, session[0].0, session[i - start - 1].0 + gap)).or_default();
                for &(_, side, id) in session {
                    if side == 0 {
                        e.0.push(id)
                    } else {
                        e.1.push(id)
                    }
                }
                start = i;
            }
        }
    }
    g
}

fn sorted(mut g: Groups) -> Groups {
    for v in g.values_mut() {
        v.0.sort_unstable();
        v.1.sort_unstable();
    }
    g
}

/// Pairs a window join emits: every (a, b) of one group, once per group.
fn pairs(g: &Groups) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> =
        g.values().flat_map(|(a, b)| a.iter().flat_map(move |x| b.iter().map(move |y| (*x, *y)))).collect();
    out.sort_unstable();
    out
}

fn window_join(assigner: WindowAssigner, want: Groups) {
    let want = sorted(want);
    let want_pairs = pairs(&want);
    assert!(want_pairs.len() > 1000, "the data joins ({} pairs)", want_pairs.len());
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let env = env_for(&cluster, p);
        let (a, b) = inputs(&env);
        let joined = a
            .clone()
            .join(b.clone())
            .where_key(|r: &Rec| r.0)
            .equal_to(|r: &Rec| r.0)
            .window(assigner)
            .apply(|x: &Rec, y: &Rec| {
                assert_eq!(x.0, y.0);
                (x.2, y.2)
            })
            .collect();
        let grouped = a
            .join(b)
            .where_key(|r: &Rec| r.0)
            .equal_to(|r: &Rec| r.0)
            .window(assigner)
            .co_group(|ctx: &WindowContext<'_, u64>, xs: Vec<Rec>, ys: Vec<Rec>, out: &mut Vec<Group>| {
                out.push((
                    *ctx.key,
                    ctx.window.start,
                    ctx.window.end,
                    xs.iter().map(|r| r.2).collect(),
                    ys.iter().map(|r| r.2).collect(),
                ))
            })
            .collect();
        let (joined, grouped) = (drain(joined), drain(grouped));
        let job = env.execute_async("window join").unwrap();
        let (mut joined, grouped) = (joined.join().unwrap(), grouped.join().unwrap());
        join(job);
        joined.sort_unstable();
        assert_eq!(joined.len(), want_pairs.len(), "{assigner:?} p={p}: join pairs");
        assert!(joined == want_pairs, "{assigner:?} p={p}: join pairs differ");
        let mut got = Groups::new();
        for (k, s, e, xs, ys) in grouped {
            assert!(got.insert((k, s, e), (xs, ys)).is_none(), "{assigner:?} p={p}: group ({k}, {s}, {e}) twice");
        }
        let got = sorted(got);
        if got != want {
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).take(5).collect();
            let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(k)).take(5).collect();
            panic!("{assigner:?} p={p}: co-groups differ; missing {missing:?}, extra {extra:?}");
        }
    }
}

#[test]
fn tumbling_window_join_and_co_group_match_a_nested_loop() {
    let a = WindowAssigner::tumbling_event_time(Duration::from_millis(100));
    window_join(a, fixed_groups(a));
}

#[test]
fn sliding_window_join_and_co_group_match_a_nested_loop() {
    let a = WindowAssigner::sliding_event_time(Duration::from_millis(150), Duration::from_millis(50));
    window_join(a, fixed_groups(a));
}

#[test]
fn session_window_join_and_co_group_match_a_nested_loop() {
    window_join(WindowAssigner::event_time_session(Duration::from_millis(15)), session_groups(15));
}

#[test]
fn interval_joins_match_a_nested_loop() {
    for (lo, hi) in [(-40, 60), (10, 80), (-80, -10), (0, 0)] {
        let mut want = Vec::new();
        for i in 0..N_A {
            let x = rec_a(i);
            for j in 0..N_B {
                let y = rec_b(j);
                if x.0 == y.0 && x.1 + lo <= y.1 && y.1 <= x.1 + hi {
                    want.push((x.2, y.2, x.1, y.1));
                }
            }
        }
        want.sort_unstable();
        assert!(!want.is_empty(), "[{lo}, {hi}] joins something");
        for p in [1, 2, 4] {
            let cluster = cluster(p);
            let env = env_for(&cluster, p);
            let (a, b) = inputs(&env);
            let out = a
                .key_by(|r: &Rec| r.0)
                .interval_join(b.key_by(|r: &Rec| r.0))
                .between_ms(lo, hi)
                .process(|x: &Rec, y: &Rec, ts: JoinedTimestamps, out: &mut Vec<(u64, u64, i64, i64)>| {
                    out.push((x.2, y.2, ts.left, ts.right))
                })
                .collect();
            let job = env.execute_async("interval join").unwrap();
            let mut got: Vec<_> = out.collect();
            let result = join(job);
            got.sort_unstable();
            assert_eq!(got.len(), want.len(), "[{lo}, {hi}] p={p}");
            assert!(got == want, "[{lo}, {hi}] p={p}: pairs differ");
            assert_eq!(result.operator("Interval Join").unwrap().late_records_dropped, 0, "[{lo}, {hi}] p={p}");
        }
    }
}

/// Late records of an interval join: both inputs are channels the test feeds step by step.
fn interval_join_late(with_side_outputs: bool) {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2);
    let strategy = || {
        WatermarkStrategy::for_monotonous_timestamps()
            .with_timestamp_assigner(|r: &(u64, i64)| r.1)
            .with_per_record_emission()
    };
    let (tx_l, l) = env.from_channel::<(u64, i64)>(64);
    let (tx_r, r) = env.from_channel::<(u64, i64)>(64);
    let l = l.assign_timestamps_and_watermarks(strategy()).set_parallelism(1);
    let r = r.assign_timestamps_and_watermarks(strategy()).set_parallelism(1);
    let (late_l, late_r) = (OutputTag::<(u64, i64)>::new("late-left"), OutputTag::<(u64, i64)>::new("late-right"));
    let mut ij = l.key_by(|x: &(u64, i64)| x.0).interval_join(r.key_by(|x: &(u64, i64)| x.0)).between_ms(0, 0);
    if with_side_outputs {
        ij = ij.side_output_left_late_data(&late_l).side_output_right_late_data(&late_r);
    }
    let joined = ij
        .process(|x: &(u64, i64), y: &(u64, i64), _: JoinedTimestamps, out: &mut Vec<(i64, i64)>| out.push((x.1, y.1)));
    let late = with_side_outputs
        .then(|| (drain(joined.side_output(&late_l).collect()), drain(joined.side_output(&late_r).collect())));
    let out = joined.collect();
    let job = env.execute_async("interval join late").unwrap();
    tx_l.send((1, 1000)).unwrap();
    tx_r.send((1, 1000)).unwrap();
    let mut got = Vec::new();
    read_until(&out, &mut got, Duration::from_secs(5), "the first match", |g| g.len() == 1);
    // Let the watermarks (999 on both inputs) behind the matched records arrive.
    std::thread::sleep(Duration::from_millis(300));
    tx_l.send((1, 500)).unwrap();
    tx_r.send((1, 400)).unwrap();
    tx_l.send((1, 2000)).unwrap();
    tx_r.send((1, 2000)).unwrap();
    drop((tx_l, tx_r));
    got.extend(out);
    let result = join(job);
    assert_eq!(got, vec![(1000, 1000), (2000, 2000)]);
    let dropped = result.operator("Interval Join").unwrap().late_records_dropped;
    match late {
        Some((l, r)) => {
            assert_eq!(l.join().unwrap(), vec![(1, 500)]);
            assert_eq!(r.join().unwrap(), vec![(1, 400)]);
            assert_eq!(dropped, 0);
        }
        None => assert_eq!(dropped, 2, "{result}"),
    }
}

#[test]
fn late_records_of_an_interval_join_are_dropped_and_counted() {
    interval_join_late(false);
}

#[test]
fn late_records_of_an_interval_join_go_to_their_side_outputs() {
    interval_join_late(true);
}

/// A counter shared by both inputs of a key (A adds 1, B adds 1000) and a timer at the end of
/// each 100 ms bucket registered by either input.
struct Shared {
    count: Option<ValueState<u64, (), u64>>,
}

/// (kind, key, time, counter, watermark).
type CoOut = (u8, u64, i64, u64, i64);

impl KeyedCoProcessFunction<u64, Rec, Rec, CoOut> for Shared {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.count = Some(ctx.state().value_state(&ValueStateDescriptor::new("count")).unwrap());
    }
    fn process_element1(&mut self, r: Rec, ctx: &mut KeyedContext<'_, u64, CoOut>) {
        self.add(r, 1, ctx);
    }
    fn process_element2(&mut self, r: Rec, ctx: &mut KeyedContext<'_, u64, CoOut>) {
        self.add(r, 1000, ctx);
    }
    fn on_timer(&mut self, t: i64, ctx: &mut KeyedContext<'_, u64, CoOut>) {
        let n = self.count.as_ref().unwrap().value().unwrap_or(0);
        let (k, w) = (*ctx.key(), ctx.current_watermark());
        ctx.collect((1, k, t, n, w));
    }
}

impl Shared {
    fn add(&mut self, r: Rec, by: u64, ctx: &mut KeyedContext<'_, u64, CoOut>) {
        assert_eq!(*ctx.key(), r.0);
        let c = self.count.as_mut().unwrap();
        let n = c.value().unwrap_or(0) + by;
        c.update(n);
        ctx.register_event_time_timer((r.1.div_euclid(100) + 1) * 100);
        ctx.collect((0, r.0, r.1, n, ctx.current_watermark()));
    }
}

#[test]
fn a_keyed_co_process_function_shares_state_and_timers_between_its_inputs() {
    let mut counts: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut buckets: BTreeSet<(u64, i64)> = BTreeSet::new();
    for r in (0..N_A).map(rec_a) {
        counts.entry(r.0).or_default().0 += 1;
        buckets.insert((r.0, (r.1.div_euclid(100) + 1) * 100));
    }
    for r in (0..N_B).map(rec_b) {
        counts.entry(r.0).or_default().1 += 1;
        buckets.insert((r.0, (r.1.div_euclid(100) + 1) * 100));
    }
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let env = env_for(&cluster, p);
        let (a, b) = inputs(&env);
        let out = a.connect(b).key_by(|r: &Rec| r.0, |r: &Rec| r.0).process(|| Shared { count: None }).collect();
        let job = env.execute_async("keyed co-process").unwrap();
        let got: Vec<CoOut> = out.collect();
        join(job);
        let mut per_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut fired = Vec::new();
        for o in &got {
            if o.0 == 0 {
                per_key.entry(o.1).or_default().push(o.3);
            } else {
                assert!(o.4 >= o.2, "p={p}: timer {} fired at watermark {}", o.2, o.4);
                fired.push((o.1, o.2));
            }
        }
        for (k, &(na, nb)) in &counts {
            let mut seen = per_key.remove(k).unwrap_or_default();
            seen.sort_unstable();
            assert_eq!(seen.len() as u64, na + nb, "p={p}: key {k}");
            // One counter per key: every record adds its step to the previous value.
            let (mut ones, mut thousands, mut prev) = (0, 0, 0);
            for v in seen {
                match v - prev {
                    1 => ones += 1,
                    1000 => thousands += 1,
                    d => panic!("p={p}: key {k}: counter jumped by {d}"),
                }
                prev = v;
            }
            assert_eq!((ones, thousands), (na, nb), "p={p}: key {k}");
        }
        let fired_set: BTreeSet<(u64, i64)> = fired.iter().copied().collect();
        assert_eq!(fired.len(), fired_set.len(), "p={p}: a timer fired twice");
        assert_eq!(fired_set, buckets, "p={p}: timers registered by either input fire once");
    }
}

struct Describe;

impl CoProcessFunction<u64, String, String> for Describe {
    fn process_element1(&mut self, v: u64, ctx: &mut ProcessContext<'_, String>) {
        ctx.collect(format!("n{}", v * 2));
    }
    fn process_element2(&mut self, s: String, ctx: &mut ProcessContext<'_, String>) {
        ctx.collect(format!("s{}", s.len()));
    }
}

#[test]
fn a_co_process_function_sees_both_inputs() {
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let numbers = env.from_sequence(0..10_000);
        let words = env.from_generator(5_000, |i| "x".repeat((i % 17) as usize));
        let out = numbers.connect(words).process(|| Describe).collect();
        let job = env.execute_async("co-process").unwrap();
        let mut got: Vec<String> = out.collect();
        join(job);
        let mut want: Vec<String> = (0..10_000u64).map(|v| format!("n{}", v * 2)).collect();
        want.extend((0..5_000u64).map(|i| format!("s{}", i % 17)));
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "p={p}");
    }
}

/// Reports, per record of the first input, the last sequence number its key had seen.
struct Order {
    last: Option<ValueState<u64, (), u64>>,
}

impl KeyedCoProcessFunction<u64, (u64, u64), (u64, u64), (u64, u64, u64)> for Order {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.last = Some(ctx.state().value_state(&ValueStateDescriptor::new("last")).unwrap());
    }
    fn process_element1(&mut self, r: (u64, u64), ctx: &mut KeyedContext<'_, u64, (u64, u64, u64)>) {
        let last = self.last.as_mut().unwrap();
        let before = last.value().unwrap_or(0);
        last.update(r.1);
        ctx.collect((r.0, before, r.1));
    }
    fn process_element2(&mut self, _r: (u64, u64), _ctx: &mut KeyedContext<'_, u64, (u64, u64, u64)>) {}
}

/// Flink keeps the order of the records of one key from one upstream subtask; here both inputs
/// come from single-subtask sources (`from_iter`), and the job runs at parallelism 2.
#[test]
fn connected_inputs_keep_the_order_of_each_keys_records() {
    for p in [2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let first = env.from_iter((1..=20_000u64).map(|i| (i % 10, i)));
        let second = env.from_iter(vec![(0u64, 0u64)]);
        let out = first
            .connect(second)
            .key_by(|r: &(u64, u64)| r.0, |r: &(u64, u64)| r.0)
            .process(|| Order { last: None })
            .collect();
        let job = env.execute_async("order").unwrap();
        let got: Vec<(u64, u64, u64)> = out.collect();
        join(job);
        assert_eq!(got.len(), 20_000, "p={p}");
        let behind: Vec<_> = got.iter().filter(|(_, before, seq)| before > seq).take(5).collect();
        assert!(
            behind.is_empty(),
            "p={p}: records of one key arrived out of order, e.g. (key, previous, seq) {behind:?}"
        );
    }
}

#[test]
fn invalid_interval_joins_are_refused_before_they_run() {
    let cluster = cluster(1);
    // Lower bound above the upper bound.
    let env = cluster.environment();
    let (a, b) = inputs(&env);
    a.key_by(|r: &Rec| r.0)
        .interval_join(b.key_by(|r: &Rec| r.0))
        .between_ms(10, -10)
        .process(|_: &Rec, _: &Rec, _: JoinedTimestamps, _: &mut Vec<u64>| {})
        .discard();
    match env.execute("bounds") {
        Err(corestream::JobError::InvalidJob(msg)) => assert!(msg.contains("lower bound"), "{msg}"),
        other => panic!("expected an invalid job, got {other:?}"),
    }
    // An input without timestamps.
    let env = cluster.environment();
    let (a, _) = inputs(&env);
    let b = env.from_generator(10, rec_b);
    a.key_by(|r: &Rec| r.0)
        .interval_join(b.key_by(|r: &Rec| r.0))
        .between_ms(0, 10)
        .process(|_: &Rec, _: &Rec, _: JoinedTimestamps, _: &mut Vec<u64>| {})
        .discard();
    match env.execute("no timestamps") {
        Err(corestream::JobError::InvalidJob(msg)) => assert!(msg.contains("timestamps"), "{msg}"),
        other => panic!("expected an invalid job, got {other:?}"),
    }
}
