//! Keyed process functions end to end: event-time timers (registered twice → fire once, in
//! timestamp order, never before the watermark passes them, deleted ones never), keyed state
//! (value, list and map state scoped to each key), all against a single-threaded simulation
//! of Flink's semantics at several parallelisms; processing-time timers firing while the input
//! is open.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{join, read_until, Rng};
use corestream::{KeyedContext, KeyedProcessFunction, KeyedRuntimeContext, TimeDomain, WatermarkStrategy};
use corestream_state::{
    ListState, ListStateDescriptor, MapState, MapStateDescriptor, ValueState, ValueStateDescriptor,
};
use corestream_tests::cluster;

/// (key, timestamp).
type Rec = (u64, i64);

const BOUND_MS: i64 = 30;
const ELEMENT: u8 = 0;
const TIMER: u8 = 1;

/// (kind, key, time, watermark, count, list length, bucket count, subtask).
type Out = (u8, u64, i64, i64, u64, u64, u32, u32);

/// The "main" timer of a record: even times.
fn main_timer(ts: i64) -> i64 {
    (ts + 40) & !1
}

/// The "pending" timer of a record: odd times; each record of a key deletes the previous one.
fn pending_timer(ts: i64) -> i64 {
    (ts + 25) | 1
}

fn bucket(ts: i64) -> i64 {
    ts.div_euclid(100)
}

struct Timers {
    subtask: u32,
    count: Option<ValueState<u64, (), u64>>,
    pending: Option<ValueState<u64, (), i64>>,
    seen: Option<ListState<u64, (), i64>>,
    buckets: Option<MapState<u64, (), i64, u32>>,
}

impl Timers {
    fn new() -> Self {
        Self { subtask: u32::MAX, count: None, pending: None, seen: None, buckets: None }
    }
}

impl KeyedProcessFunction<u64, Rec, Out> for Timers {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.subtask = ctx.subtask();
        self.count = Some(ctx.state().value_state(&ValueStateDescriptor::new("count")).unwrap());
        self.pending = Some(ctx.state().value_state(&ValueStateDescriptor::new("pending")).unwrap());
        self.seen = Some(ctx.state().list_state(&ListStateDescriptor::new("seen")).unwrap());
        self.buckets = Some(ctx.state().map_state(&MapStateDescriptor::new("buckets")).unwrap());
    }

    fn process_element(&mut self, r: Rec, ctx: &mut KeyedContext<'_, u64, Out>) {
        assert_eq!(*ctx.key(), r.0, "the context's key is the record's key");
        assert_eq!(ctx.timestamp(), Some(r.1));
        assert_eq!(ctx.time_domain(), None);
        let count = self.count.as_mut().unwrap();
        let n = count.value().unwrap_or(0) + 1;
        count.update(n);
        self.seen.as_mut().unwrap().add(r.1);
        let buckets = self.buckets.as_mut().unwrap();
        let b = buckets.get(&bucket(r.1)).unwrap_or(0) + 1;
        buckets.put(bucket(r.1), b);
        ctx.register_event_time_timer(main_timer(r.1));
        ctx.register_event_time_timer(main_timer(r.1));
        let pending = self.pending.as_mut().unwrap();
        if let Some(prev) = pending.value() {
            ctx.delete_event_time_timer(prev);
        }
        pending.update(pending_timer(r.1));
        ctx.register_event_time_timer(pending_timer(r.1));
        let len = self.seen.as_ref().unwrap().len() as u64;
        let w = ctx.current_watermark();
        ctx.collect((ELEMENT, r.0, r.1, w, n, len, b, self.subtask));
    }

    fn on_timer(&mut self, t: i64, ctx: &mut KeyedContext<'_, u64, Out>) {
        assert_eq!(ctx.time_domain(), Some(TimeDomain::EventTime));
        assert_eq!(ctx.timestamp(), Some(t));
        let w = ctx.current_watermark();
        assert!(w >= t, "timer {t} fired at watermark {w}");
        let k = *ctx.key();
        if t % 2 != 0 {
            let pending = self.pending.as_mut().unwrap();
            assert_eq!(pending.value(), Some(t), "key {k}: a deleted pending timer fired");
            pending.clear();
        }
        let n = self.count.as_ref().unwrap().value().unwrap_or(0);
        let len = self.seen.as_ref().unwrap().len() as u64;
        let b = self.buckets.as_ref().unwrap().get(&bucket(t)).unwrap_or(0);
        ctx.collect((TIMER, k, t, w, n, len, b, self.subtask));
    }
}

fn records(n: usize, keys: u64, seed: u64) -> Vec<Rec> {
    let mut rng = Rng(seed);
    (0..n).map(|i| (rng.below(keys), 10 * i as i64 + rng.below(60) as i64)).collect()
}

/// The same function, run by hand: one record at a time, then the watermark it produces.
fn simulate(input: &[Rec]) -> BTreeMap<u64, Vec<Out>> {
    #[derive(Default)]
    struct KeyState {
        count: u64,
        pending: Option<i64>,
        seen: u64,
        buckets: BTreeMap<i64, u32>,
    }
    let mut state: BTreeMap<u64, KeyState> = BTreeMap::new();
    let mut timers: BTreeSet<(i64, u64)> = BTreeSet::new();
    let mut out: BTreeMap<u64, Vec<Out>> = BTreeMap::new();
    let mut watermark = i64::MIN;
    let mut max_ts = i64::MIN;
    let fire = |w: i64,
                timers: &mut BTreeSet<(i64, u64)>,
                state: &mut BTreeMap<u64, KeyState>,
                out: &mut BTreeMap<u64, Vec<Out>>| {
        while let Some(&(t, k)) = timers.iter().next().filter(|(t, _)| *t <= w) {
            timers.remove(&(t, k));
            let s = state.get_mut(&k).unwrap();
            if t % 2 != 0 {
                s.pending = None;
            }
            let b = s.buckets.get(&bucket(t)).copied().unwrap_or(0);
            out.entry(k).or_default().push((TIMER, k, t, w, s.count, s.seen, b, 0));
        }
    };
    for &(k, ts) in input {
        let s = state.entry(k).or_default();
        s.count += 1;
        s.seen += 1;
        *s.buckets.entry(bucket(ts)).or_default() += 1;
        timers.insert((main_timer(ts), k));
        if let Some(prev) = s.pending.take() {
            timers.remove(&(prev, k));
        }
        s.pending = Some(pending_timer(ts));
        timers.insert((pending_timer(ts), k));
        out.entry(k).or_default().push((ELEMENT, k, ts, watermark, s.count, s.seen, s.buckets[&bucket(ts)], 0));
        max_ts = max_ts.max(ts);
        let w = max_ts - BOUND_MS - 1;
        if w > watermark {
            watermark = w;
            fire(watermark, &mut timers, &mut state, &mut out);
        }
    }
    fire(i64::MAX, &mut timers, &mut state, &mut out);
    out
}

#[test]
fn event_time_timers_and_keyed_state_match_a_simulation() {
    let input = records(4000, 23, 7);
    let want = simulate(&input);
    let timer_count: usize = want.values().flatten().filter(|o| o.0 == TIMER).count();
    assert!(timer_count > 4000, "the data registers and deletes timers ({timer_count} fire)");
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let out = env
            .from_iter(input.clone())
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(BOUND_MS as u64))
                    .with_timestamp_assigner(|r: &Rec| r.1)
                    .with_per_record_emission(),
            )
            .set_parallelism(1)
            .key_by(|r: &Rec| r.0)
            .process(Timers::new)
            .collect();
        let job = env.execute_async("timers").unwrap();
        let got: Vec<Out> = out.collect();
        join(job);

        // Per subtask, the timers that fire at one watermark fire in timestamp order.
        let mut runs: BTreeMap<u32, Vec<(i64, i64)>> = BTreeMap::new();
        for o in got.iter().filter(|o| o.0 == TIMER) {
            runs.entry(o.7).or_default().push((o.3, o.2));
        }
        for (subtask, fired) in &runs {
            for pair in fired.windows(2) {
                if pair[0].0 == pair[1].0 {
                    assert!(pair[0].1 <= pair[1].1, "p={p}: subtask {subtask} fired out of order: {pair:?}");
                }
            }
        }
        let mut per_key: BTreeMap<u64, Vec<Out>> = BTreeMap::new();
        let mut subtask_of: BTreeMap<u64, u32> = BTreeMap::new();
        for o in got {
            assert_eq!(*subtask_of.entry(o.1).or_insert(o.7), o.7, "p={p}: key {} on two subtasks", o.1);
            per_key.entry(o.1).or_default().push((o.0, o.1, o.2, o.3, o.4, o.5, o.6, 0));
        }
        assert_eq!(per_key.len(), want.len(), "p={p}");
        for (k, w) in &want {
            assert_eq!(per_key.get(k), Some(w), "p={p}: key {k}");
        }
    }
}

/// Registers a processing-time timer 50 ms after each record (and one it deletes again).
struct Later;

/// (kind, key, time, processing time seen).
type PtOut = (u8, u64, i64, i64);

impl KeyedProcessFunction<u64, u64, PtOut> for Later {
    fn process_element(&mut self, k: u64, ctx: &mut KeyedContext<'_, u64, PtOut>) {
        let now = ctx.current_processing_time();
        ctx.register_processing_time_timer(now + 50);
        ctx.register_processing_time_timer(now + 50);
        ctx.register_processing_time_timer(now + 60);
        ctx.delete_processing_time_timer(now + 60);
        ctx.collect((ELEMENT, k, now + 50, now));
    }

    fn on_timer(&mut self, t: i64, ctx: &mut KeyedContext<'_, u64, PtOut>) {
        assert_eq!(ctx.time_domain(), Some(TimeDomain::ProcessingTime));
        let (k, now) = (*ctx.key(), ctx.current_processing_time());
        ctx.collect((TIMER, k, t, now));
    }
}

/// Sends one record per key while the job runs and waits for its timer before closing the
/// input. `fresh_clock`: also require that a record sees the processing time at which it is
/// processed (so a 50 ms timer fires no sooner than 50 ms after the record was sent).
fn processing_time_timers(p: u32, fresh_clock: bool) {
    let cluster = cluster(p);
    let mut env = cluster.environment();
    env.set_parallelism(p);
    let (tx, s) = env.from_channel::<u64>(64);
    let out = s.key_by(|k: &u64| *k).process(|| Later).collect();
    let job = env.execute_async("processing-time timers").unwrap();
    // Let the job's start recede, so a stale processing time would show.
    std::thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    for k in 0..4u64 {
        let sent = common::now_ms();
        let sent_at = Instant::now();
        tx.send(k).unwrap();
        read_until(&out, &mut got, Duration::from_secs(5), "the timer", |g| g.iter().any(|o| o.0 == TIMER && o.1 == k));
        let waited = sent_at.elapsed();
        let element = got.iter().find(|o| o.0 == ELEMENT && o.1 == k).copied().unwrap();
        let timer = got.iter().find(|o| o.0 == TIMER && o.1 == k).copied().unwrap();
        assert_eq!(timer.2, element.2, "p={p}: key {k}");
        assert!(timer.3 >= timer.2, "p={p}: timer {} fired at processing time {}", timer.2, timer.3);
        if fresh_clock {
            assert!(
                element.3 >= sent,
                "p={p}: key {k} sent at {sent} was processed at processing time {} ({} ms stale)",
                element.3,
                sent - element.3
            );
            assert!(waited >= Duration::from_millis(45), "p={p}: key {k}: a 50 ms timer fired after {waited:?}");
        }
    }
    std::thread::sleep(Duration::from_millis(150));
    drop(tx);
    got.extend(out);
    join(job);
    let timers: Vec<_> = got.iter().filter(|o| o.0 == TIMER).collect();
    assert_eq!(timers.len(), 4, "p={p}: one firing per key, the deleted timer never: {got:?}");
}

#[test]
fn processing_time_timers_fire_while_the_input_is_open() {
    for p in [1, 2] {
        processing_time_timers(p, false);
    }
}

#[test]
fn a_keyed_record_sees_the_processing_time_at_which_it_is_processed() {
    for p in [1, 2] {
        processing_time_timers(p, true);
    }
}

/// Each key's first record registers a timer at 100; every firing registers the next one
/// 100 ms later, up to 1000: a chain of ten firings per key, fired as the clock passes them
/// (several per watermark when it jumps), each exactly once.
struct Chain;

impl KeyedProcessFunction<u64, Rec, (u64, i64, i64)> for Chain {
    fn process_element(&mut self, _r: Rec, ctx: &mut KeyedContext<'_, u64, (u64, i64, i64)>) {
        ctx.register_event_time_timer(100);
    }
    fn on_timer(&mut self, t: i64, ctx: &mut KeyedContext<'_, u64, (u64, i64, i64)>) {
        let (k, w) = (*ctx.key(), ctx.current_watermark());
        assert!(w >= t);
        if t < 1000 {
            ctx.register_event_time_timer(t + 100);
        }
        ctx.collect((k, t, w));
    }
}

#[test]
fn timers_registered_while_firing_fire_in_the_same_advance_when_due() {
    // Keys 0..8 at time 0, then key 9 at 450 moves the clock to 449, then the end.
    let mut input: Vec<Rec> = (0..9).map(|k| (k, 0)).collect();
    input.push((9, 450));
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let out = env
            .from_iter(input.clone())
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|r: &Rec| r.1)
                    .with_per_record_emission(),
            )
            .set_parallelism(1)
            .key_by(|r: &Rec| r.0)
            .process(|| Chain)
            .collect();
        let job = env.execute_async("timer chain").unwrap();
        let got: Vec<(u64, i64, i64)> = out.collect();
        join(job);
        let mut per_key: BTreeMap<u64, Vec<(i64, i64)>> = BTreeMap::new();
        for (k, t, w) in got {
            per_key.entry(k).or_default().push((t, w));
        }
        assert_eq!(per_key.len(), 10, "p={p}");
        for (k, fired) in per_key {
            let times: Vec<i64> = fired.iter().map(|f| f.0).collect();
            assert_eq!(times, (1..=10).map(|i| i * 100).collect::<Vec<_>>(), "p={p}: key {k}");
            for (t, w) in fired {
                // 100..400 fire at the watermark 449 (key 9 registers 100 before it), the rest
                // at the end.
                let want = if t <= 400 { 449 } else { i64::MAX };
                assert_eq!(w, want, "p={p}: key {k}, timer {t}");
            }
        }
    }
}
