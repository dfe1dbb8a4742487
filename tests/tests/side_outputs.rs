//! Side outputs end to end: a process function splitting a stream into its main output and two
//! tags of different record types; a tag nobody consumes (dropped without error); side outputs
//! of a keyed process function, from records and from timers; one tag id used with two types
//! (refused before the job runs).

mod common;

use std::time::Duration;

use common::{drain, join, read_until};
use corestream::{
    JobError, KeyedContext, KeyedProcessFunction, OutputTag, ProcessContext, WatermarkStrategy, WindowAssigner,
    WindowContext,
};
use corestream_tests::cluster;

const N: u64 = 50_000;

#[test]
fn a_process_function_splits_into_main_and_two_typed_side_outputs() {
    let odd = OutputTag::<u64>::new("odd");
    let threes = OutputTag::<String>::new("threes");
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let (o, t) = (odd.clone(), threes.clone());
        let main = env.from_sequence(0..N).process(move || {
            let (o, t) = (o.clone(), t.clone());
            move |v: u64, ctx: &mut ProcessContext<'_, u64>| {
                if v.is_multiple_of(3) {
                    ctx.output(&t, format!("three:{v}"));
                }
                if v % 2 == 1 {
                    ctx.output(&o, v);
                } else {
                    ctx.collect(v);
                }
            }
        });
        let odds = drain(main.side_output(&odd).map(|v| v * 10).collect());
        // The side output can be repartitioned and run at another parallelism.
        let strings = drain(main.side_output(&threes).rebalance().map(|s: String| s).set_parallelism(1).collect());
        let evens = drain(main.collect());
        let job = env.execute_async("side outputs").unwrap();
        let (mut evens, mut odds, mut strings) = (evens.join().unwrap(), odds.join().unwrap(), strings.join().unwrap());
        let result = join(job);
        evens.sort_unstable();
        odds.sort_unstable();
        strings.sort_unstable();
        assert_eq!(evens, (0..N).filter(|v| v % 2 == 0).collect::<Vec<_>>(), "p={p}");
        assert_eq!(odds, (0..N).filter(|v| v % 2 == 1).map(|v| v * 10).collect::<Vec<_>>(), "p={p}");
        let mut want: Vec<String> = (0..N).filter(|v| v % 3 == 0).map(|v| format!("three:{v}")).collect();
        want.sort_unstable();
        assert_eq!(strings, want, "p={p}");
        assert_eq!(result.records_in("Side Output: odd"), N / 2, "p={p}");
    }
}

#[test]
fn a_tag_nobody_consumes_is_dropped_without_error() {
    let unused = OutputTag::<(u64, String)>::new("nobody");
    let used = OutputTag::<u64>::new("used");
    for p in [1, 2] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let (u, w) = (unused.clone(), used.clone());
        let main = env.from_sequence(0..N).process(move || {
            let (u, w) = (u.clone(), w.clone());
            move |v: u64, ctx: &mut ProcessContext<'_, u64>| {
                ctx.output(&u, (v, "dropped".to_string()));
                if v.is_multiple_of(1000) {
                    ctx.output(&w, v);
                }
                ctx.collect(v + 1);
            }
        });
        let side = drain(main.side_output(&used).collect());
        let out = drain(main.collect());
        let job = env.execute_async("unused tag").unwrap();
        let (out, mut side) = (out.join().unwrap(), side.join().unwrap());
        join(job);
        assert_eq!(out.len() as u64, N, "p={p}");
        assert_eq!(out.iter().sum::<u64>(), (1..=N).sum::<u64>(), "p={p}");
        side.sort_unstable();
        assert_eq!(side, (0..N).step_by(1000).collect::<Vec<_>>(), "p={p}");
    }
}

/// Sends records with an even key to the main output, the others to `rest`, and each key's
/// timer firing to `fired`.
struct Split {
    rest: OutputTag<(u64, i64)>,
    fired: OutputTag<String>,
}

impl KeyedProcessFunction<u64, (u64, i64), (u64, i64)> for Split {
    fn process_element(&mut self, r: (u64, i64), ctx: &mut KeyedContext<'_, u64, (u64, i64)>) {
        ctx.register_event_time_timer(10_000);
        if r.0.is_multiple_of(2) {
            ctx.collect(r);
        } else {
            ctx.output(&self.rest, r);
        }
    }

    fn on_timer(&mut self, t: i64, ctx: &mut KeyedContext<'_, u64, (u64, i64)>) {
        let msg = format!("{}@{t}", ctx.key());
        ctx.output(&self.fired, msg);
    }
}

#[test]
fn a_keyed_process_function_emits_to_side_outputs_from_records_and_timers() {
    let rest = OutputTag::<(u64, i64)>::new("rest");
    let fired = OutputTag::<String>::new("fired");
    for p in [1, 2, 4] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let (r, f) = (rest.clone(), fired.clone());
        let main = env
            .from_generator(20_000, |i| (i % 50, i as i64))
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(5))
                    .with_timestamp_assigner(|r: &(u64, i64)| r.1),
            )
            .key_by(|r: &(u64, i64)| r.0)
            .process(move || Split { rest: r.clone(), fired: f.clone() });
        let odd = drain(main.side_output(&rest).collect());
        let timers = drain(main.side_output(&fired).collect());
        let even = drain(main.collect());
        let job = env.execute_async("keyed side outputs").unwrap();
        let (even, odd, mut timers) = (even.join().unwrap(), odd.join().unwrap(), timers.join().unwrap());
        join(job);
        assert_eq!(even.len(), 10_000, "p={p}");
        assert!(even.iter().all(|r| r.0 % 2 == 0) && odd.iter().all(|r| r.0 % 2 == 1), "p={p}");
        assert_eq!(odd.len(), 10_000, "p={p}");
        timers.sort();
        let mut want: Vec<String> = (0..50).map(|k| format!("{k}@10000")).collect();
        want.sort();
        assert_eq!(timers, want, "p={p}: one firing per key, sent to the side output");
    }
}

#[test]
fn one_tag_id_with_two_record_types_is_refused() {
    let cluster = cluster(1);
    let env = cluster.environment();
    let a = OutputTag::<u64>::new("same");
    let b = OutputTag::<String>::new("same");
    let (a2, b2) = (a.clone(), b.clone());
    let main = env.from_sequence(0..10).process(move || {
        let (a, b) = (a2.clone(), b2.clone());
        move |v: u64, ctx: &mut ProcessContext<'_, u64>| {
            ctx.output(&a, v);
            ctx.output(&b, v.to_string());
        }
    });
    main.side_output(&a).discard();
    main.side_output(&b).discard();
    main.discard();
    match env.execute("two types") {
        Err(JobError::InvalidJob(msg)) => assert!(msg.contains("same"), "{msg}"),
        other => panic!("expected an invalid job, got {other:?}"),
    }
}

/// A side output carries the producer's watermarks: event-time windows over it fire while the
/// input is still open.
#[test]
fn side_outputs_carry_watermarks() {
    let big = OutputTag::<(u64, i64)>::new("big");
    for p in [1, 2] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let (tx, s) = env.from_channel::<(u64, i64)>(1024);
        let b = big.clone();
        let main = s
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|r: &(u64, i64)| r.1)
                    .with_per_record_emission(),
            )
            .set_parallelism(1)
            .process(move || {
                let b = b.clone();
                move |r: (u64, i64), ctx: &mut ProcessContext<'_, (u64, i64)>| {
                    if r.0 >= 10 {
                        ctx.output(&b, r);
                    } else {
                        ctx.collect(r);
                    }
                }
            })
            .set_parallelism(1);
        let windows = main
            .side_output(&big)
            .with_timestamps(|r: &(u64, i64)| r.1)
            .key_by(|r: &(u64, i64)| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)))
            .process(|ctx: &WindowContext<'_, u64>, rs: Vec<(u64, i64)>, out: &mut Vec<(u64, i64, usize)>| {
                out.push((*ctx.key, ctx.window.start, rs.len()))
            })
            .collect();
        main.discard();
        let job = env.execute_async("side output watermarks").unwrap();
        for ts in (0..3000).step_by(100) {
            tx.send((10 + (ts as u64 / 100) % 2, ts)).unwrap();
            tx.send((1, ts)).unwrap();
        }
        let mut got = Vec::new();
        read_until(&windows, &mut got, Duration::from_secs(10), "windows [0, 2000)", |g| g.len() == 4);
        got.sort();
        assert_eq!(got, vec![(10, 0, 5), (10, 1000, 5), (11, 0, 5), (11, 1000, 5)], "p={p}");
        drop(tx);
        got.extend(windows);
        join(job);
        assert_eq!(got.len(), 6, "p={p}");
    }
}
