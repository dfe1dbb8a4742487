//! Property tests of event-time windows end to end, against the single-threaded reference
//! model (`corestream_bench::window_model`): a one-subtask iterator source, per-record
//! bounded-out-of-orderness watermarks (so the firings are deterministic), and the window
//! operator at parallelism 1, 2 and 4.
//!
//! - Disorder within the bound: nothing is late, and the firings (sorted by key, start and end,
//!   firings of one window in emission order) equal the model's, for every assigner and
//!   aggregate.
//! - Records later than the allowed lateness go to the late side output and nowhere else: the
//!   late set equals the model's, no firing contains a late record, and every other record is
//!   in some firing.
//! - Session windows do not depend on the arrival order when nothing is late: a shuffled input
//!   gives the same sessions, with the same records, as the sorted input and as the model.
//!
//! Values are small integers, which the aggregates add exactly (as integers), so sums and
//! averages do not depend on the order of additions and merges. Each test function starts one
//! cluster and runs every job of its cases on it; cases are few and small so the file runs in
//! seconds in release.

use std::time::Duration;

use corestream::{AggregateFunction, Data, LocalCluster, WatermarkStrategy, WindowAssigner, WindowContext};
use corestream_bench::window_model::{
    final_results, run_model, sorted_firings, Agg, Event, ModelConfig, Num, WindowResult, WindowSpec,
};
use corestream_state::StateValue;
use corestream_tests::cluster;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// A record in the job: (id, key, timestamp, value).
use corestream_bench::window_agg::{event_time_assigner, Rec, ValueAgg};

const PARALLELISMS: [u32; 3] = [1, 2, 4];
/// Cases per property (override with `PROPTEST_CASES`).
const CASES: u32 = 32;

/// Collects the ids of a window's records, so a firing shows exactly what it contains.
#[derive(Clone)]
struct Ids;

impl AggregateFunction<Rec, Vec<u64>, Vec<u64>> for Ids {
    fn create_accumulator(&self) -> Vec<u64> {
        Vec::new()
    }
    fn add(&self, r: &Rec, acc: &mut Vec<u64>) {
        acc.push(r.0);
    }
    fn get_result(&self, acc: &Vec<u64>) -> Vec<u64> {
        acc.clone()
    }
    fn merge(&self, a: &mut Vec<u64>, b: Vec<u64>) {
        a.extend(b);
    }
}

/// What one job produced: every firing (key, start, end, result) sorted stably by (key, start,
/// end), and the late records sorted by id.
struct JobOutput<R> {
    firings: Vec<(String, i64, i64, R)>,
    late: Vec<Rec>,
}

/// Runs `input` (in arrival order) through a window job aggregating with `agg`, the window
/// operator at parallelism `p`, everything before it at parallelism 1.
fn run_job<ACC, R, A>(cluster: &LocalCluster, cfg: &ModelConfig, input: Vec<Rec>, p: u32, agg: A) -> JobOutput<R>
where
    ACC: StateValue,
    R: 'static,
    (String, i64, i64, R): Data,
    A: AggregateFunction<Rec, ACC, R> + Clone + Send + Sync,
{
    let mut env = cluster.environment();
    env.set_parallelism(p);
    let late_tag = corestream::OutputTag::<Rec>::new("late");
    let windowed = env
        .from_iter(input)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(cfg.out_of_orderness as u64))
                .with_timestamp_assigner(|r: &Rec| r.2)
                .with_per_record_emission(),
        )
        .set_parallelism(1)
        .key_by(|r: &Rec| r.1.clone())
        .window(event_time_assigner(cfg.window))
        .allowed_lateness(Duration::from_millis(cfg.allowed_lateness as u64))
        .side_output_late_data(&late_tag)
        .aggregate_process(agg, |ctx: &WindowContext<'_, String>, r: R, out: &mut Vec<(String, i64, i64, R)>| {
            out.push((ctx.key.clone(), ctx.window.start, ctx.window.end, r))
        })
        .set_parallelism(p);
    let late = windowed.side_output(&late_tag).collect();
    let firings = windowed.collect();
    let job = env.execute_async("window properties").expect("job starts");
    let late = std::thread::spawn(move || late.collect::<Vec<Rec>>());
    let mut firings: Vec<(String, i64, i64, R)> = firings.collect();
    let mut late = late.join().expect("late reader");
    job.join().expect("job succeeds");
    firings.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    late.sort_by_key(|r| r.0);
    JobOutput { firings, late }
}

/// Records numbered by their position in `events` (the arrival order).
fn records(events: &[Event]) -> Vec<Rec> {
    events.iter().zip(0u64..).map(|(e, id)| (id, e.key.clone(), e.ts, e.value)).collect()
}

fn event_of(r: &Rec) -> Event {
    Event { key: r.1.clone(), ts: r.2, value: r.3 }
}

/// The firings of an [`Ids`] job as window results: the aggregate of the ids' values.
fn id_results(agg: Agg, events: &[Event], firings: &[(String, i64, i64, Vec<u64>)]) -> Vec<WindowResult> {
    firings
        .iter()
        .map(|(key, start, end, ids)| {
            let values: Vec<Num> = ids.iter().map(|&i| events[i as usize].value).collect();
            WindowResult { key: key.clone(), start: *start, end: *end, value: agg.apply(&values) }
        })
        .collect()
}

fn spec() -> impl Strategy<Value = WindowSpec> {
    prop_oneof![
        (1i64..40)
            .prop_flat_map(|size| (Just(size), 0..size))
            .prop_map(|(size, offset)| WindowSpec::Tumbling { size, offset }),
        (1i64..40, 1i64..40)
            .prop_flat_map(|(a, b)| (Just(a.max(b)), Just(a.min(b)), 0..a.min(b)))
            .prop_map(|(size, slide, offset)| WindowSpec::Sliding { size, slide, offset }),
        (1i64..40).prop_map(|gap| WindowSpec::Session { gap }),
    ]
}

fn agg() -> impl Strategy<Value = Agg> {
    prop_oneof![Just(Agg::Count), Just(Agg::Sum), Just(Agg::Min), Just(Agg::Max), Just(Agg::Avg)]
}

fn key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "c", "d"])
}

/// Events whose timestamps follow a non-decreasing base (steps of 0..20, from -200) moved back
/// by a lag drawn by `lag`.
fn events_with_lag(lag: impl Strategy<Value = i64>) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((key(), 0i64..20, lag, -5i32..6), 0..50).prop_map(|steps| {
        let mut base = -200;
        steps
            .into_iter()
            .map(|(key, step, lag, value)| {
                base += step;
                Event { key: key.to_string(), ts: base - lag, value: Num::from(i64::from(value)) }
            })
            .collect()
    })
}

fn run_cases<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    // PROPTEST_CASES raises the count for a deeper search than the default run's.
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(CASES);
    // Shrinking is bounded: every job leaks descriptors (see `jobs_do_not_leak_file_descriptors`),
    // and an unbounded shrink could end in "too many open files" instead of a minimal case.
    let config = Config { cases, max_shrink_iters: 64, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

#[test]
fn disorder_within_the_bound_matches_the_model_at_every_parallelism() {
    let cluster = cluster(4);
    let cases = (spec(), agg(), 0i64..30, 0i64..5).prop_flat_map(|(spec, agg, bound, extra)| {
        (Just(spec), Just(agg), Just(bound + extra), events_with_lag(0..=bound))
    });
    run_cases(cases, |(window, agg, out_of_orderness, events)| {
        let cfg = ModelConfig { window, agg, out_of_orderness, allowed_lateness: 0 };
        let model = run_model(&cfg, &events);
        prop_assert!(model.late.is_empty(), "the generator keeps every event within the bound");
        let expected = sorted_firings(&model);
        for p in PARALLELISMS {
            let out = run_job(&cluster, &cfg, records(&events), p, ValueAgg(agg));
            prop_assert!(out.late.is_empty(), "late records within the bound at parallelism {}: {:?}", p, out.late);
            let got: Vec<WindowResult> = out
                .firings
                .into_iter()
                .map(|(key, start, end, value)| WindowResult { key, start, end, value })
                .collect();
            prop_assert_eq!(&got, &expected, "firings at parallelism {}", p);
        }
        Ok(())
    });
}

#[test]
fn records_later_than_the_allowed_lateness_go_only_to_the_late_output() {
    let cluster = cluster(4);
    // Mostly small lags, sometimes one beyond the bound plus the lateness (late) or in between.
    let cases = (spec(), agg(), 0i64..10, 0i64..30).prop_flat_map(|(spec, agg, ooo, lateness)| {
        let beyond = ooo + lateness + 1;
        let lag = prop_oneof![6 => 0..=ooo, 1 => 0..=beyond, 2 => beyond..beyond + 40];
        (Just(spec), Just(agg), Just(ooo), Just(lateness), events_with_lag(lag))
    });
    run_cases(cases, |(window, agg, out_of_orderness, allowed_lateness, events)| {
        let cfg = ModelConfig { window, agg, out_of_orderness, allowed_lateness };
        let model = run_model(&cfg, &events);
        let expected = sorted_firings(&model);
        for p in PARALLELISMS {
            let out = run_job(&cluster, &cfg, records(&events), p, Ids);
            let late: Vec<Event> = out.late.iter().map(event_of).collect();
            prop_assert_eq!(&late, &model.late, "late records at parallelism {}", p);
            let mut seen = vec![false; events.len()];
            for (key, start, end, ids) in &out.firings {
                for &id in ids {
                    prop_assert!(
                        !out.late.iter().any(|r| r.0 == id),
                        "late record {} is also in the firing of ({}, {}, {}) at parallelism {}",
                        id,
                        key,
                        start,
                        end,
                        p
                    );
                    seen[id as usize] = true;
                }
            }
            for r in &out.late {
                seen[r.0 as usize] = true;
            }
            prop_assert!(seen.iter().all(|s| *s), "records neither fired nor late at parallelism {}: {:?}", p, seen);
            prop_assert_eq!(id_results(agg, &events, &out.firings), expected.clone(), "firings at parallelism {}", p);
        }
        Ok(())
    });
}

#[test]
fn sessions_do_not_depend_on_the_arrival_order() {
    let cluster = cluster(4);
    let event = (key(), 0i64..300, -5i32..6).prop_map(|(key, ts, value)| Event {
        key: key.to_string(),
        ts,
        value: Num::from(i64::from(value)),
    });
    let cases = (1i64..40, agg(), prop::collection::vec(event, 0..50))
        .prop_flat_map(|(gap, agg, events)| (Just(gap), Just(agg), Just(events.clone()), Just(events).prop_shuffle()));
    run_cases(cases, |(gap, agg, events, shuffled)| {
        // Larger than the whole input's span: no window fires before the end, nothing is late.
        let cfg =
            ModelConfig { window: WindowSpec::Session { gap }, agg, out_of_orderness: 1_000, allowed_lateness: 0 };
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.ts);
        let model = final_results(&run_model(&cfg, &sorted));
        prop_assert_eq!(&final_results(&run_model(&cfg, &shuffled)), &model, "the model itself");

        // Ids are positions in `events`, whatever the arrival order.
        let ids_in = |order: &[Event]| -> Vec<Rec> {
            let mut used = vec![false; events.len()];
            order
                .iter()
                .map(|e| {
                    let id = (0..events.len()).find(|&i| !used[i] && events[i] == *e).expect("a permutation");
                    used[id] = true;
                    (id as u64, e.key.clone(), e.ts, e.value)
                })
                .collect()
        };
        let sessions = |out: JobOutput<Vec<u64>>| -> Vec<(String, i64, i64, Vec<u64>)> {
            out.firings
                .into_iter()
                .map(|(k, s, e, mut ids)| {
                    ids.sort_unstable();
                    (k, s, e, ids)
                })
                .collect()
        };
        let reference = sessions(run_job(&cluster, &cfg, ids_in(&sorted), 1, Ids));
        prop_assert_eq!(id_results(agg, &events, &reference), model.clone(), "sorted input against the model");
        for p in PARALLELISMS {
            let out = run_job(&cluster, &cfg, ids_in(&shuffled), p, Ids);
            prop_assert!(out.late.is_empty());
            let got = sessions(out);
            prop_assert_eq!(&got, &reference, "shuffled input at parallelism {}", p);
        }
        Ok(())
    });
}

/// Regression: window starts near `i64::MIN` once wrapped around to large positive values (and
/// sliding assignment then looped about 2^64 / slide times); starts are now clamped to the time
/// line.
#[test]
fn assigned_windows_contain_timestamps_near_i64_min() {
    for (assigner, ts) in [
        (WindowAssigner::tumbling_event_time(Duration::from_secs(10)), i64::MIN),
        (WindowAssigner::Tumbling { size: 10_000, offset: 3_000, event_time: true }, i64::MIN + 1_000),
        (WindowAssigner::Sliding { size: 1 << 62, slide: 1 << 61, offset: 1, event_time: true }, i64::MIN),
    ] {
        let mut windows = Vec::new();
        assigner.assign(ts, &mut windows);
        assert!(
            !windows.is_empty() && windows.iter().all(|w| w.start <= ts && ts < w.end),
            "{assigner:?} assigns {ts} to {windows:?}"
        );
    }
}
