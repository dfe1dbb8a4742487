//! Event time end to end: watermarks across several source subtasks (an input that sends
//! nothing holds event time back; `with_idleness` releases it), the observed clock never moving
//! backwards (also when an idle input resumes behind it), periodic watermarks while a source
//! waits, the final watermark of bounded sources firing every window and timer, and ingestion
//! time.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{drain, join, log, read_for, read_until, take};
use corestream::{
    DataStream, KeyedContext, KeyedProcessFunction, ProcessContext, SourceSender, WatermarkStrategy, WindowAssigner,
    WindowContext,
};
use corestream_bench::throughput::CountAgg as CountAny;
use corestream_bench::throughput::CountAgg as Count;
use corestream_tests::cluster;

type Rec = (u64, i64);

fn strategy(idleness: Option<Duration>) -> WatermarkStrategy<Rec> {
    let s = WatermarkStrategy::for_monotonous_timestamps()
        .with_timestamp_assigner(|r: &Rec| r.1)
        .with_per_record_emission();
    match idleness {
        Some(d) => s.with_idleness(d),
        None => s,
    }
}

/// Two channel sources with their own watermarks (input B with the given idleness), unioned.
fn two_inputs(
    env: &corestream::StreamEnvironment,
    idleness_b: Option<Duration>,
) -> (SourceSender<Rec>, SourceSender<Rec>, DataStream<Rec>) {
    let (tx_a, a) = env.from_channel::<Rec>(4096);
    let (tx_b, b) = env.from_channel::<Rec>(4096);
    let a = a.assign_timestamps_and_watermarks(strategy(None)).set_parallelism(1);
    let b = b.assign_timestamps_and_watermarks(strategy(idleness_b)).set_parallelism(1);
    // Each input has its own assigner: the union needs its timestamp function declared.
    (tx_a, tx_b, a.union([b]).with_timestamps(|r: &Rec| r.1))
}

/// (record key, record timestamp, clock seen with it).
type Seen = (u64, i64, i64);
/// (key, window start, count).
type Fired = (u64, i64, u64);

fn observe_and_window(union: DataStream<Rec>) -> (corestream::CollectStream<Seen>, corestream::CollectStream<Fired>) {
    let seen = union
        .clone()
        .rebalance()
        .process(|| |r: Rec, ctx: &mut ProcessContext<'_, Seen>| ctx.collect((r.0, r.1, ctx.current_watermark())))
        .collect();
    let fired = union
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
        .aggregate_process(Count, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<Fired>| {
            out.push((*ctx.key, ctx.window.start, n))
        })
        .collect();
    (seen, fired)
}

/// Records of input A: keys 0..4, timestamps 50, 150, …, 3950 (40 records).
fn a_records() -> Vec<Rec> {
    (0..40).map(|i| (i % 4, i as i64 * 100 + 50)).collect()
}

fn windows_of(fired: &[Fired]) -> BTreeMap<(u64, i64), u64> {
    let mut m = BTreeMap::new();
    for &(k, s, n) in fired {
        assert!(m.insert((k, s), n).is_none(), "window ({k}, {s}) fired twice: {fired:?}");
    }
    m
}

#[test]
fn an_input_that_sends_nothing_holds_event_time_back() {
    for p in [1, 2] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let (tx_a, tx_b, union) = two_inputs(&env, None);
        let (seen, fired) = observe_and_window(union);
        let job = env.execute_async("idle input").unwrap();
        for r in a_records() {
            tx_a.send(r).unwrap();
        }
        let mut got = Vec::new();
        read_until(&seen, &mut got, Duration::from_secs(10), "records of input A", |g| g.len() == 40);
        assert!(got.iter().all(|s| s.2 == i64::MIN), "p={p}: event time advanced with input B silent: {got:?}");
        let early = read_for(&fired, Duration::from_millis(300));
        assert!(early.is_empty(), "p={p}: windows fired while input B holds event time back: {early:?}");

        // B ends: its final watermark releases the clock up to A's watermark (3949), while A
        // is still open: windows [0, 3000) fire, [3000, 4000) does not.
        drop(tx_b);
        let mut windows = Vec::new();
        read_until(&fired, &mut windows, Duration::from_secs(10), "windows below 3000", |w| w.len() == 12);
        assert!(read_for(&fired, Duration::from_millis(200)).is_empty(), "p={p}: window [3000, 4000) fired early");
        let mut want = BTreeMap::new();
        for (k, ts) in a_records() {
            *want.entry((k, ts - ts % 1000)).or_insert(0) += 1;
        }
        let early_want: BTreeMap<_, _> = want.iter().filter(|(w, _)| w.1 < 3000).map(|(w, n)| (*w, *n)).collect();
        assert_eq!(windows_of(&windows), early_want, "p={p}");
        drop(tx_a);
        windows.extend(drain(fired).join().unwrap());
        drop(drain(seen).join().unwrap());
        join(job);
        assert_eq!(windows_of(&windows), want, "p={p}");
    }
}

#[test]
fn an_idle_input_stops_holding_event_time_back() {
    for p in [1, 2] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let (tx_a, tx_b, union) = two_inputs(&env, Some(Duration::from_millis(100)));
        let (seen, fired) = observe_and_window(union);
        let job = env.execute_async("idleness").unwrap();
        // Input B is declared idle 100 ms after it starts; the margin covers a loaded machine.
        std::thread::sleep(Duration::from_millis(1500));
        let records = a_records();
        for r in &records {
            tx_a.send(*r).unwrap();
        }
        let mut got = Vec::new();
        read_until(&seen, &mut got, Duration::from_secs(10), "records of input A", |g| g.len() == 40);
        // Each record follows the watermark of the one before it (per-record emission).
        got.sort_by_key(|s| s.1);
        for (i, s) in got.iter().enumerate().skip(1) {
            assert_eq!(s.2, records[i - 1].1 - 1, "p={p}: clock seen with {s:?} (input B is idle)");
        }
        // Windows fire while both inputs are still open.
        let mut windows = Vec::new();
        read_until(&fired, &mut windows, Duration::from_secs(10), "windows below 3000", |w| w.len() == 12);
        drop(tx_a);
        drop(tx_b);
        windows.extend(drain(fired).join().unwrap());
        drop(drain(seen).join().unwrap());
        join(job);
        assert_eq!(windows_of(&windows).len(), 16, "p={p}");
    }
}

#[test]
fn the_clock_never_moves_backwards_when_an_idle_input_resumes_behind_it() {
    for p in [1, 2] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let (tx_a, tx_b, union) = two_inputs(&env, Some(Duration::from_millis(60)));
        let clocks = log::<(u32, i64, i64)>();
        let instances = Arc::new(AtomicU32::new(0));
        let (c, n) = (clocks.clone(), instances.clone());
        let seen = union
            .clone()
            .rebalance()
            .process(move || {
                let (clocks, id) = (c.clone(), n.fetch_add(1, Ordering::Relaxed));
                move |r: Rec, ctx: &mut ProcessContext<'_, Seen>| {
                    clocks.lock().unwrap().push((id, r.1, ctx.current_watermark()));
                    ctx.collect((r.0, r.1, ctx.current_watermark()));
                }
            })
            .collect();
        let windows = union
            .key_by(|r: &Rec| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
            .aggregate_process(Count, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<Fired>| {
                out.push((*ctx.key, ctx.window.start, n))
            })
            .collect();
        let windows = drain(windows);
        let job = env.execute_async("resume behind").unwrap();
        let mut got = Vec::new();
        // Phase 1: both inputs up to 100.
        for ts in (0..=100).step_by(10) {
            tx_a.send((1, ts)).unwrap();
            tx_b.send((2, ts)).unwrap();
        }
        read_until(&seen, &mut got, Duration::from_secs(10), "phase 1", |g| g.len() == 22);
        // Phase 2: B goes idle, A alone moves the clock to 4999.
        std::thread::sleep(Duration::from_millis(250));
        for ts in (200..=5000).step_by(100) {
            tx_a.send((1, ts)).unwrap();
        }
        read_until(&seen, &mut got, Duration::from_secs(10), "phase 2", |g| g.iter().any(|s| s.1 == 5000));
        std::thread::sleep(Duration::from_millis(200));
        // Phase 3: B resumes behind the clock; it must not pull the clock back.
        tx_b.send((2, 300)).unwrap();
        tx_b.send((2, 310)).unwrap();
        for ts in (5100..=6000).step_by(100) {
            tx_a.send((1, ts)).unwrap();
        }
        // Phase 4: B catches up (7000, ahead of the clock 5999), then goes idle again and A
        // moves on alone. The pauses let every task see each step before the next one: a
        // channel behind the clock does not hold it back, so A could otherwise pass 7000 before
        // B's record arrives and make it late.
        std::thread::sleep(Duration::from_millis(200));
        tx_b.send((2, 7000)).unwrap();
        read_until(&seen, &mut got, Duration::from_secs(10), "phase 4", |g| g.iter().any(|s| s.1 == 7000));
        std::thread::sleep(Duration::from_millis(200));
        for ts in (6100..=8000).step_by(100) {
            tx_a.send((1, ts)).unwrap();
        }
        drop(tx_a);
        drop(tx_b);
        got.extend(drain(seen).join().unwrap());
        let windows = windows.join().unwrap();
        let result = join(job);
        assert_eq!(got.len(), 22 + 49 + 2 + 10 + 1 + 20, "p={p}");
        let clocks = take(&clocks);
        let mut per_instance: BTreeMap<u32, Vec<(i64, i64)>> = BTreeMap::new();
        for (id, ts, w) in clocks {
            per_instance.entry(id).or_default().push((ts, w));
        }
        for (id, seq) in &per_instance {
            for pair in seq.windows(2) {
                assert!(pair[1].1 >= pair[0].1, "p={p}: subtask {id} saw the clock go back: {pair:?} in {seq:?}");
            }
        }
        let resumed: Vec<_> = got.iter().filter(|s| s.0 == 2 && (s.1 == 300 || s.1 == 310)).collect();
        assert!(resumed.iter().all(|s| s.2 >= 4999), "p={p}: resumed input pulled the clock back: {resumed:?}");
        // The two records of B behind the clock are late for window [0, 1000) of key 2.
        let w = result.operator("Window").expect("window operator");
        assert_eq!(w.late_records_dropped, 2, "p={p}: {result}");
        let m = windows_of(&windows);
        assert_eq!(m.get(&(2, 0)), Some(&11), "p={p}: key 2, window 0 keeps only its on-time records");
        assert_eq!(m.get(&(2, 7000)), Some(&1), "p={p}: B's record after it caught up is on time");
    }
}

#[test]
fn periodic_watermarks_advance_while_the_source_waits() {
    let cluster = cluster(1);
    let mut env = cluster.environment();
    env.set_parallelism(1).set_auto_watermark_interval(Duration::from_millis(10));
    let (tx, s) = env.from_channel::<Rec>(1024);
    let fired = s
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &Rec| r.1),
        )
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
        .aggregate_process(Count, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<Fired>| {
            out.push((*ctx.key, ctx.window.start, n))
        })
        .collect();
    let job = env.execute_async("periodic").unwrap();
    for ts in (0..2500).step_by(100) {
        tx.send((7, ts)).unwrap();
    }
    let mut got = Vec::new();
    read_until(&fired, &mut got, Duration::from_secs(10), "two windows", |g| g.len() == 2);
    assert_eq!(got, vec![(7, 0, 10), (7, 1000, 10)]);
    drop(tx);
    got.extend(drain(fired).join().unwrap());
    join(job);
    assert_eq!(got, vec![(7, 0, 10), (7, 1000, 10), (7, 2000, 5)]);
}

/// Fires one event-time timer per record far in the future; reports the clock at each firing.
struct FarTimers;

impl KeyedProcessFunction<u64, Rec, (u64, i64, i64)> for FarTimers {
    fn process_element(&mut self, r: Rec, ctx: &mut KeyedContext<'_, u64, (u64, i64, i64)>) {
        ctx.register_event_time_timer(r.1 + 1_000_000_000);
    }
    fn on_timer(&mut self, t: i64, ctx: &mut KeyedContext<'_, u64, (u64, i64, i64)>) {
        let (k, w) = (*ctx.key(), ctx.current_watermark());
        ctx.collect((k, t, w));
    }
}

#[test]
fn the_end_of_a_bounded_input_fires_every_window_and_timer() {
    const N: u64 = 30_000;
    let rec = |i: u64| (i % 37, (common::hash(i) % 100_000) as i64 - 20_000);
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let s = env.from_generator(N, rec).assign_timestamps_and_watermarks(
            WatermarkStrategy::no_watermarks().with_timestamp_assigner(|r: &Rec| r.1),
        );
        let fired = s
            .clone()
            .key_by(|r: &Rec| r.0)
            .window(WindowAssigner::sliding_event_time(Duration::from_secs(10), Duration::from_secs(3)))
            .aggregate_process(Count, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<(u64, i64, u64, i64)>| {
                out.push((*ctx.key, ctx.window.start, n, ctx.watermark))
            })
            .collect();
        let timers = s.key_by(|r: &Rec| r.0).process(|| FarTimers).collect();
        let (fired, timers) = (drain(fired), drain(timers));
        let job = env.execute_async("final watermark").unwrap();
        let (fired, timers) = (fired.join().unwrap(), timers.join().unwrap());
        join(job);
        assert!(fired.iter().all(|f| f.3 == i64::MAX), "p={p}: a window fired before the final watermark");
        let mut got = BTreeMap::new();
        for (k, s, n, _) in fired {
            assert!(got.insert((k, s), n).is_none(), "p={p}: window ({k}, {s}) fired twice");
        }
        let mut want = BTreeMap::new();
        let a = WindowAssigner::sliding_event_time(Duration::from_secs(10), Duration::from_secs(3));
        let mut timer_want = std::collections::BTreeSet::new();
        for i in 0..N {
            let (k, ts) = rec(i);
            let mut ws = Vec::new();
            a.assign(ts, &mut ws);
            for w in ws {
                *want.entry((k, w.start)).or_insert(0u64) += 1;
            }
            timer_want.insert((k, ts + 1_000_000_000));
        }
        assert_eq!(got, want, "p={p}");
        assert!(timers.iter().all(|t| t.2 == i64::MAX), "p={p}: a timer fired before the final watermark");
        let timer_got: Vec<(u64, i64)> = timers.iter().map(|t| (t.0, t.1)).collect();
        assert_eq!(timer_got.len(), timer_want.len(), "p={p}: each (key, time) fires once");
        assert_eq!(timer_got.into_iter().collect::<std::collections::BTreeSet<_>>(), timer_want, "p={p}");
    }
}

#[test]
fn ingestion_time_is_nondecreasing_and_close_to_now() {
    const N: u64 = 200_000;
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let stamped = env.from_sequence(0..N).assign_ingestion_timestamps();
        let out = stamped
            .clone()
            .process(|| {
                |r: corestream::Timestamped<u64>, ctx: &mut ProcessContext<'_, (u64, i64, Option<i64>)>| {
                    ctx.collect((r.value, r.timestamp, ctx.timestamp()))
                }
            })
            .collect();
        let counts = stamped
            .key_by(|r: &corestream::Timestamped<u64>| r.value % 3)
            .window(WindowAssigner::tumbling_event_time(Duration::from_millis(5)))
            .aggregate(CountAny)
            .collect();
        let (out, counts) = (drain(out), drain(counts));
        let before = common::now_ms();
        let job = env.execute_async("ingestion").unwrap();
        let (mut got, counts) = (out.join().unwrap(), counts.join().unwrap());
        join(job);
        let after = common::now_ms();
        assert_eq!(got.len() as u64, N);
        got.sort_unstable();
        for (v, ts, seen) in &got {
            assert_eq!(*seen, Some(*ts), "p={p}: the stream's timestamp is the ingestion time");
            assert!(before <= *ts && *ts <= after, "p={p}: record {v} stamped {ts}, job ran {before}..{after}");
        }
        // Each source subtask reads a contiguous range, in order.
        for i in 0..p as u64 {
            let (lo, hi) = ((i * N / p as u64) as usize, ((i + 1) * N / p as u64) as usize);
            for pair in got[lo..hi].windows(2) {
                assert!(pair[1].1 >= pair[0].1, "p={p}: ingestion time went back: {pair:?}");
            }
        }
        assert_eq!(counts.iter().sum::<u64>(), N, "p={p}: every record counted in some ingestion-time window");
    }
}

/// Event time is read from the record by the stream's timestamp function, so a union of inputs
/// whose assigners differ has none until one is declared: an event-time window on it is refused
/// with a message saying so (never silently read with one input's function), and works once
/// the union declares it.
#[test]
fn a_union_of_inputs_with_different_assigners_needs_its_timestamps_declared() {
    type R = (u64, i64, i64);
    for p in [1, 2] {
        let cluster = cluster(p);
        for declare in [false, true] {
            let mut env = cluster.environment();
            env.set_parallelism(p);
            // Input a: event time in field 1; input b: event time in field 2.
            let a = env.from_iter(vec![(1u64, 100i64, 100i64)]).assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &R| r.1),
            );
            let b = env.from_iter(vec![(1u64, 200i64, 200i64)]).assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &R| r.2),
            );
            let union = a.union([b]);
            let union = if declare { union.with_timestamps(|r: &R| r.1.min(r.2)) } else { union };
            let out = union
                .key_by(|r: &R| r.0)
                .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
                .process(|ctx: &WindowContext<'_, u64>, rs: Vec<R>, out: &mut Vec<(i64, usize)>| {
                    out.push((ctx.window.start, rs.len()))
                })
                .collect();
            match env.execute_async("union timestamps") {
                Ok(job) => {
                    assert!(declare, "p={p}: the undeclared union must be refused");
                    let got: Vec<(i64, usize)> = out.collect();
                    join(job);
                    assert_eq!(got, vec![(0, 2)], "p={p}: both records belong to window [0, 1000)");
                }
                Err(e) => {
                    assert!(!declare, "p={p}: {e}");
                    let msg = e.to_string();
                    assert!(msg.contains("without timestamps") && msg.contains("union"), "{msg}");
                }
            }
        }
    }
}

/// Window results feed a larger window downstream: per-second counts summed per 5 s equal
/// direct 5 s counts (the first window forwards the watermark after its results).
#[test]
fn cascaded_windows_match_one_large_window() {
    const N: u64 = 50_000;
    let rec = |i: u64| (i % 11, i as i64 / 4 + (common::hash(i) % 40) as i64);
    let mut want: BTreeMap<(u64, i64), u64> = BTreeMap::new();
    for i in 0..N {
        let (k, ts) = rec(i);
        *want.entry((k, ts - ts.rem_euclid(5000))).or_insert(0) += 1;
    }
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p).set_auto_watermark_interval(Duration::from_millis(5));
        let out = env
            .from_generator(N, rec)
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(100))
                    .with_timestamp_assigner(|r: &Rec| r.1),
            )
            .key_by(|r: &Rec| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
            .aggregate_process(Count, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<(u64, i64, u64)>| {
                out.push((*ctx.key, ctx.window.end - 1, n))
            })
            .with_timestamps(|r: &(u64, i64, u64)| r.1)
            .key_by(|r: &(u64, i64, u64)| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_secs(5)))
            .process(|ctx: &WindowContext<'_, u64>, rs: Vec<(u64, i64, u64)>, out: &mut Vec<(u64, i64, u64)>| {
                out.push((*ctx.key, ctx.window.start, rs.iter().map(|r| r.2).sum()))
            })
            .collect();
        let job = env.execute_async("cascade").unwrap();
        let got: Vec<(u64, i64, u64)> = out.collect();
        let result = join(job);
        let mut m = BTreeMap::new();
        for (k, s, n) in got {
            assert!(m.insert((k, s), n).is_none(), "p={p}: ({k}, {s}) fired twice");
        }
        assert_eq!(m, want, "p={p}");
        assert!(result.operators.iter().all(|o| o.late_records_dropped == 0), "p={p}: {result}");
    }
}
