//! Review probes of event time, windows, state and the runtime pieces they rely on: buffer
//! reservations with side outputs, the clock when every input is idle, window firings emitted
//! in steps under backpressure, TTL in timers, and agreement of the window operator's two timer
//! paths. Each of the first four once failed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{drain, join, read_for, read_until};
use corestream::{
    AggregateFunction, ClusterConfig, LocalCluster, OutputTag, ProcessContext, WatermarkStrategy, WindowAssigner,
    WindowContext,
};
use corestream_bench::throughput::CountAgg as Count;
use corestream_tests::cluster;

type Rec = (u64, i64);

fn side_output_job(cluster: &LocalCluster) -> Result<corestream::JobResult, corestream::JobError> {
    let mut env = cluster.environment();
    env.set_parallelism(1);
    let tag = OutputTag::<Vec<u8>>::new("big-side");
    let t = tag.clone();
    let main = env.from_sequence(0..4096).process(move || {
        let t = t.clone();
        move |v: u64, ctx: &mut ProcessContext<'_, Vec<u8>>| {
            ctx.output(&t, vec![v as u8; 8000]);
            ctx.collect(vec![v as u8; 8000]);
        }
    });
    let side = drain(main.side_output(&tag).collect());
    // Not chained: the main output is a network output too.
    let out = drain(main.rebalance().collect());
    let job = env.execute_async("side output reservation").unwrap();
    let (side, out) = (side.join().unwrap(), out.join().unwrap());
    let result = job.join();
    if result.is_ok() {
        assert_eq!((side.len(), out.len()), (4096, 4096));
    }
    result
}

/// A process function with a side output holds two network outputs (main and side), each with
/// its own overdraft (`output.rs` allowance), while the job's reservation counts one overdraft per
/// task (`execution.rs`). The architecture promises a job never holds more than it reserved;
/// on a pool sized to the reservation the job fails with `PoolExhausted`.
#[test]
fn a_task_with_a_side_output_stays_within_its_buffer_reservation() {
    let cluster = cluster(1);
    let result = side_output_job(&cluster).expect("job runs on a roomy pool");
    let stats = cluster.pool().stats();
    let reserved = result.buffers_reserved;
    // A pool exactly the size of the reservation must be enough.
    let tight =
        LocalCluster::start(ClusterConfig { slots: Some(1), network_buffers: Some(reserved), ..Default::default() })
            .unwrap();
    let tight_result = side_output_job(&tight);
    assert!(
        stats.peak_in_use <= reserved && tight_result.is_ok(),
        "peak {} buffers in use, {reserved} reserved; on a pool of {reserved}: {:?}",
        stats.peak_in_use,
        tight_result.err()
    );
}

fn per_record(idleness: Duration) -> WatermarkStrategy<Rec> {
    WatermarkStrategy::for_monotonous_timestamps()
        .with_timestamp_assigner(|r: &Rec| r.1)
        .with_per_record_emission()
        .with_idleness(idleness)
}

/// Flink's `StatusWatermarkValve`: when the last active channel goes idle and it was the one
/// holding the clock back, the valve flushes the maximum watermark over all channels (nothing
/// will advance it any more). Here input A (watermark 3949) goes idle first, then input B
/// (watermark 99): Flink advances event time to 3949 and fires the windows below 3000 while both
/// inputs stay open; corestream keeps the clock at 99 until an input ends.
#[test]
fn when_every_input_goes_idle_the_clock_advances_to_the_highest_watermark() {
    let cluster = cluster(1);
    let mut env = cluster.environment();
    env.set_parallelism(1);
    let (tx_a, a) = env.from_channel::<Rec>(4096);
    let (tx_b, b) = env.from_channel::<Rec>(4096);
    let a = a.assign_timestamps_and_watermarks(per_record(Duration::from_millis(50))).set_parallelism(1);
    let b = b.assign_timestamps_and_watermarks(per_record(Duration::from_millis(500))).set_parallelism(1);
    let fired = a
        .union([b])
        .with_timestamps(|r: &Rec| r.1)
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
        .aggregate_process(Count, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<(u64, i64, u64)>| {
            out.push((*ctx.key, ctx.window.start, n))
        })
        .collect();
    let job = env.execute_async("all idle").unwrap();
    for i in 0..40u64 {
        tx_a.send((i % 4, i as i64 * 100 + 50)).unwrap();
    }
    tx_b.send((9, 100)).unwrap();
    // A idles after 50 ms, B after 500 ms; then everything is idle.
    let early = read_for(&fired, Duration::from_millis(2500));
    drop(tx_a);
    drop(tx_b);
    let rest = drain(fired).join().unwrap();
    join(job);
    assert_eq!(rest.len() + early.len(), 17);
    assert_eq!(early.len(), 13, "windows below 3000 should fire once all inputs are idle; fired early: {early:?}");
}

/// (key, window start, records, payload).
type Big = (u64, i64, u64, Vec<u8>);

/// Window outputs far larger than a task's buffer allowance (thousands of keys × 2 KB) are
/// parked in the network output, with the watermarks behind them; a second event-time window
/// downstream must see every one of them (none overtaken by its watermark, none late).
#[test]
fn huge_window_firings_keep_their_watermarks_behind_them() {
    const KEYS: u64 = 3000;
    const N: u64 = 24_000;
    for p in [1, 2] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let late = OutputTag::<(u64, i64, u64)>::new("late-2");
        let first = env
            .from_generator(N, |i| (i % KEYS, (i * 4000 / N) as i64))
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|r: &Rec| r.1)
                    .with_per_record_emission(),
            )
            .key_by(|r: &Rec| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
            .aggregate_process(Count, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<Big>| {
                out.push((*ctx.key, ctx.window.start, n, vec![7u8; 2048]))
            })
            .with_timestamps(|r: &Big| r.1 + 999);
        let second = first
            .map(|r: Big| (r.0 % 10, r.1, r.2))
            .with_timestamps(|r: &(u64, i64, u64)| r.1 + 999)
            .key_by(|r: &(u64, i64, u64)| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_secs(2)))
            .side_output_late_data(&late)
            .reduce(|a, b| (a.0, a.1.min(b.1), a.2 + b.2));
        let late_out = drain(second.side_output(&late).collect());
        let out = drain(second.collect());
        let job = env.execute_async("huge firings").unwrap();
        let (out, late_out) = (out.join().unwrap(), late_out.join().unwrap());
        let result = join(job);
        assert!(late_out.is_empty(), "p={p}: {} window results were late downstream", late_out.len());
        assert_eq!(out.iter().map(|r| r.2).sum::<u64>(), N, "p={p}");
        let mut per: BTreeMap<(u64, i64), u64> = BTreeMap::new();
        for r in &out {
            *per.entry((r.0, r.1 - r.1.rem_euclid(2000))).or_default() += 1;
        }
        assert!(per.values().all(|n| *n == 1), "p={p}: a downstream window fired twice");
        assert!(result.operators.iter().all(|o| o.late_records_dropped == 0), "p={p}");
    }
}

/// A job cancelled while its windows hold state and their firings wait in parked output (the
/// collect stream is never read) returns every buffer.
#[test]
fn cancelling_while_window_firings_are_parked_returns_every_buffer() {
    let cluster = cluster(2);
    let mut env = cluster.environment();
    env.set_parallelism(2).set_auto_watermark_interval(Duration::from_millis(10));
    let out = env
        .generate_unbounded(|i| (i % 2000, (i / 2000) as i64))
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &Rec| r.1),
        )
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_millis(100)))
        .aggregate_process(Count, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<Big>| {
            out.push((*ctx.key, ctx.window.start, n, vec![1u8; 256]))
        })
        .rebalance()
        .map(|r: Big| r)
        .collect();
    let handle = env.execute_async("cancel parked").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!handle.is_finished());
    handle.cancel();
    let result = handle.join().unwrap();
    drop(out);
    assert_eq!(cluster.pool().in_use(), 0, "every buffer is back in the pool");
    let stats = cluster.pool().stats();
    assert!(stats.peak_in_use <= result.buffers_reserved, "{stats:?} vs {}", result.buffers_reserved);
}

/// One watermark that fires many windows builds the whole firing's output in memory
/// (`WindowOperator::on_watermark` pops every due timer into one output batch, which the
/// network output then parks), whatever the backpressure: Flink's window operator emits through
/// the record writer and blocks on buffers instead. Here 60 000 windows fire at the final
/// watermark while the host does not read: in flight (emitted by the window function but not
/// yet received downstream) should stay around the buffers the job holds plus the collect
/// queue (~ 8 000 records), not the whole firing.
#[test]
fn a_window_firing_is_bounded_by_backpressure() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const KEYS: u64 = 60_000;
    let produced = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let cluster = cluster(1);
    let mut env = cluster.environment();
    env.set_parallelism(1);
    let (p, c) = (produced.clone(), consumed.clone());
    let out = env
        .from_generator(KEYS, |i| (i, 0i64))
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &Rec| r.1),
        )
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
        .aggregate_process(Count, move |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<Big>| {
            p.fetch_add(1, Ordering::Relaxed);
            out.push((*ctx.key, ctx.window.start, n, vec![3u8; 1024]))
        })
        .rebalance()
        .map(move |r: Big| {
            c.fetch_add(1, Ordering::Relaxed);
            r.0
        })
        .collect();
    let job = env.execute_async("bounded firing").unwrap();
    // The host reads nothing for a while.
    std::thread::sleep(Duration::from_millis(800));
    let (p_now, c_now) = (produced.load(Ordering::Relaxed), consumed.load(Ordering::Relaxed));
    let got = drain(out).join().unwrap();
    join(job);
    assert_eq!(got.len() as u64, KEYS);
    assert!(
        p_now - c_now <= 15_000,
        "{} window results (1 KB each) in flight while downstream has taken {c_now}: the firing is not bounded",
        p_now - c_now
    );
}

/// Writes a TTL'd value for each record's key and reads it back when the key's event-time
/// timer fires.
struct TtlProbe {
    value: Option<corestream_state::ValueState<u64, (), u64>>,
}

impl corestream::KeyedProcessFunction<u64, Rec, (u64, Option<u64>)> for TtlProbe {
    fn open(&mut self, ctx: &mut corestream::KeyedRuntimeContext<'_, u64>) {
        let desc = corestream_state::ValueStateDescriptor::new("ttl")
            .with_ttl(corestream::StateTtlConfig::new(Duration::from_millis(100)));
        self.value = Some(ctx.state().value_state(&desc).unwrap());
    }
    fn process_element(&mut self, r: Rec, ctx: &mut corestream::KeyedContext<'_, u64, (u64, Option<u64>)>) {
        self.value.as_mut().unwrap().update(42);
        ctx.register_event_time_timer(r.1 + 1000);
    }
    fn on_timer(&mut self, _t: i64, ctx: &mut corestream::KeyedContext<'_, u64, (u64, Option<u64>)>) {
        let k = *ctx.key();
        ctx.collect((k, self.value.as_ref().unwrap().value()));
    }
}

/// State TTL is measured on processing time, which the keyed process operator refreshes only
/// per input batch (`KeyedProcessOp::process_batch`), not when a watermark fires event-time
/// timers (`on_watermark`). A value written with a 100 ms TTL and read 600 ms later in an
/// event-time timer is still returned; Flink reads the clock at every access (expired: `None`).
/// The watermark reaches the operator without records: the second record is filtered out
/// before `key_by`, but its watermark flows on.
#[test]
fn ttl_state_read_in_an_event_time_timer_expires_on_the_current_clock() {
    let cluster = cluster(1);
    let mut env = cluster.environment();
    env.set_parallelism(1);
    let (tx, src) = env.from_channel::<Rec>(16);
    let out = src
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps()
                .with_timestamp_assigner(|r: &Rec| r.1)
                .with_per_record_emission(),
        )
        .filter(|r: &Rec| r.0 != 99)
        .key_by(|r: &Rec| r.0)
        .process(|| TtlProbe { value: None })
        .collect();
    let job = env.execute_async("ttl in timers").unwrap();
    tx.send((1, 0)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    tx.send((99, 5_000)).unwrap();
    let mut got = Vec::new();
    read_until(&out, &mut got, Duration::from_secs(5), "the timer of key 1", |g| !g.is_empty());
    drop(tx);
    drop(drain(out).join().unwrap());
    join(job);
    assert_eq!(got, vec![(1, None)], "a value 600 ms old with a 100 ms TTL was read in a timer");
}

/// (key, ts, id).
type IdRec = (u64, i64, u64);

#[derive(Clone)]
struct Ids;

impl AggregateFunction<IdRec, Vec<u64>, Vec<u64>> for Ids {
    fn create_accumulator(&self) -> Vec<u64> {
        Vec::new()
    }
    fn add(&self, r: &IdRec, acc: &mut Vec<u64>) {
        acc.push(r.2);
    }
    fn get_result(&self, acc: &Vec<u64>) -> Vec<u64> {
        let mut v = acc.clone();
        v.sort_unstable();
        v
    }
    fn merge(&self, a: &mut Vec<u64>, b: Vec<u64>) {
        a.extend(b);
    }
}

type Firing = (u64, i64, i64, Vec<u64>);

/// Firings per (key, window start, window end) — the record ids of each firing — and the late ids.
type TriggerRun = (BTreeMap<(u64, i64, i64), Vec<Vec<u64>>>, Vec<u64>);

fn run_trigger(
    cluster: &LocalCluster,
    input: &[IdRec],
    assigner: WindowAssigner,
    trigger: corestream::Trigger,
    lateness: u64,
) -> TriggerRun {
    let mut env = cluster.environment();
    env.set_parallelism(1);
    let late = OutputTag::<IdRec>::new("late");
    let out = env
        .from_iter(input.to_vec())
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(20))
                .with_timestamp_assigner(|r: &IdRec| r.1)
                .with_per_record_emission(),
        )
        .key_by(|r: &IdRec| r.0)
        .window(assigner)
        .trigger(trigger)
        .allowed_lateness(Duration::from_millis(lateness))
        .side_output_late_data(&late)
        .aggregate_process(Ids, |ctx: &WindowContext<'_, u64>, ids: Vec<u64>, out: &mut Vec<Firing>| {
            out.push((*ctx.key, ctx.window.start, ctx.window.end, ids))
        });
    let late = drain(out.side_output(&late).collect());
    let fired = drain(out.collect());
    let job = env.execute_async("trigger paths").unwrap();
    let (fired, late) = (fired.join().unwrap(), late.join().unwrap());
    join(job);
    let mut per: BTreeMap<(u64, i64, i64), Vec<Vec<u64>>> = BTreeMap::new();
    for (k, s, e, ids) in fired {
        per.entry((k, s, e)).or_default().push(ids);
    }
    let mut late: Vec<u64> = late.into_iter().map(|r| r.2).collect();
    late.sort_unstable();
    (per, late)
}

/// The window-end trigger takes the bucketed fast path (`timers_follow_contents`); a continuous
/// event-time trigger with an interval longer than any window fires exactly like it but takes the
/// general path (timer service, trigger state). Both, purging or not, with allowed lateness and
/// disorder beyond the watermark bound, must fire the same windows with the same contents.
#[test]
fn fast_and_general_window_paths_agree_with_lateness() {
    let cluster = cluster(1);
    let mut rng = common::Rng(7);
    for case in 0..6u64 {
        let mut base = 0i64;
        let input: Vec<IdRec> = (0..300u64)
            .map(|id| {
                base += rng.below(6) as i64;
                let lag = if rng.below(5) == 0 { rng.below(120) as i64 } else { rng.below(20) as i64 };
                (rng.below(3), (base - lag).max(0), id)
            })
            .collect();
        let assigner = if case % 2 == 0 {
            WindowAssigner::Tumbling { size: 50, offset: 7, event_time: true }
        } else {
            WindowAssigner::Sliding { size: 50, slide: 20, offset: 3, event_time: true }
        };
        for purging in [false, true] {
            let (fast, slow) = if purging {
                (corestream::Trigger::EventTime.purging(), corestream::Trigger::ContinuousEventTime(1 << 40).purging())
            } else {
                (corestream::Trigger::EventTime, corestream::Trigger::ContinuousEventTime(1 << 40))
            };
            let a = run_trigger(&cluster, &input, assigner, fast, 40);
            let b = run_trigger(&cluster, &input, assigner, slow, 40);
            assert_eq!(a.1, b.1, "case {case} purging={purging}: late records differ");
            assert_eq!(a.0, b.0, "case {case} purging={purging}: firings differ");
        }
    }
}
