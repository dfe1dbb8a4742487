//! Every stateful operator survives a checkpoint: a script of inputs (record batches,
//! watermarks, processing times) runs through a chain link uninterrupted, and again with the link
//! snapshotted at cut points, dropped, and replaced by a fresh one restored from the snapshot
//! (after a round trip through its framed bytes); both runs must emit the same records. Windows
//! and timers due at the same time may fire in another order across keys after a restore, so
//! outputs are compared as multisets. Also: restores at another parallelism through
//! `checkpoint::redistribute`, damaged parts, and the chain's recursion into side outputs.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use corestream_netstack::{Data, Event};
use corestream_state::{
    assign_key_group, key_group_range, AggregateFunction, AggregatingStateDescriptor, KeyGroupRange, KeyedStateBackend,
    StateBackendKind, StateKey, ValueState, ValueStateDescriptor,
};

use super::join::{
    BroadcastOp, BroadcastState, Either, IntervalJoinOp, JoinedTimestamps, KeyedBroadcastProcessFunction,
};
use super::operator_state::{OperatorListState, RuntimeContext, UnionListState};
use super::process::{
    KeyedContext, KeyedProcessFunction, KeyedProcessOp, KeyedRuntimeContext, ProcessContext, ProcessFunction,
    ProcessOp, TimeDomain,
};
use super::reduce::ReduceOp;
use super::{side_output, Control, Emit, OpNode, Operator, OperatorMetrics};
use crate::checkpoint::redistribute::redistribute;
use crate::checkpoint::{CheckpointNotice, PendingParts, PendingSnapshot, TaskSnapshot};
use crate::config::RuntimeMode;
use crate::error::TaskError;
use crate::runtime::build::SideOutputs;
use crate::time::{TimestampFn, Timestamps};
use crate::windows::operator::{AggregateContents, WindowContext, WindowOperator, WindowSpec};
use crate::windows::{Trigger, WindowAssigner};

const MAX_P: u32 = 128;
const NODE: usize = 7;
const ALL: KeyGroupRange = KeyGroupRange { start: 0, end: MAX_P };

fn backend<K: StateKey>(range: KeyGroupRange) -> KeyedStateBackend<K> {
    KeyedStateBackend::new(StateBackendKind::Heap, MAX_P, range)
}

/// The end of a test chain: keeps what reaches it.
struct Collect<O> {
    out: Rc<RefCell<Vec<O>>>,
}

impl<O: Data> Control for Collect<O> {}

impl<O: Data> Emit<O> for Collect<O> {
    fn emit_batch(&mut self, batch: &mut Vec<O>) -> Result<(), TaskError> {
        self.out.borrow_mut().append(batch);
        Ok(())
    }
    fn emit_archived(&mut self, _bytes: &[u8]) -> Result<(), TaskError> {
        Ok(())
    }
}

#[derive(Clone)]
enum Step<I> {
    Records(Vec<I>),
    Watermark(i64),
    ProcessingTime(i64),
}

type Link<I> = Box<dyn Emit<I>>;
type Out<O> = Rc<RefCell<Vec<O>>>;

fn link<I: Data, O: Data, Op: Operator<I, O>>(op: Op, out: &Out<O>) -> Link<I> {
    Box::new(OpNode::new(op, Box::new(Collect { out: out.clone() }), Arc::new(OperatorMetrics::default()), NODE))
}

fn drive<I: Data + Clone>(chain: &mut dyn Emit<I>, step: &Step<I>) {
    match step {
        Step::Records(records) => chain.emit_batch(&mut records.clone()).unwrap(),
        Step::Watermark(w) => chain.emit_event(&Event::Watermark(*w)).unwrap(),
        Step::ProcessingTime(now) => chain.on_processing_time(*now).unwrap(),
    }
    // Small steps, so firings really are spread over several calls.
    while !chain.resume(3).unwrap() {}
}

/// The snapshot as a task writes it and reads it back (framed, checksummed, validated).
fn through_bytes(snapshot: &TaskSnapshot) -> TaskSnapshot {
    corestream_state::part::decode(&corestream_state::part::encode(snapshot).unwrap()).unwrap()
}

fn snapshot<I: Data>(chain: &mut dyn Emit<I>, checkpoint: u64) -> TaskSnapshot {
    let mut snapshot = PendingSnapshot::default();
    chain.snapshot_state(checkpoint, &mut snapshot).unwrap();
    chain.notify_checkpoint(CheckpointNotice::Complete(checkpoint)).unwrap();
    through_bytes(&snapshot.complete().unwrap())
}

/// Runs `steps` through a chain made by `make`, then finishes it: once uninterrupted, once with
/// a snapshot and restore into a fresh chain before each step index in `cuts`. Returns both
/// outputs.
fn run<I: Data + Clone, O: Data>(
    make: &dyn Fn(&Out<O>) -> Link<I>,
    steps: &[Step<I>],
    cuts: &[usize],
) -> (Vec<O>, Vec<O>) {
    let out = Rc::new(RefCell::new(Vec::new()));
    let mut chain = make(&out);
    for step in steps {
        drive(&mut *chain, step);
    }
    while !chain.finish_step(3).unwrap() {}
    let uninterrupted = out.take();

    let out = Rc::new(RefCell::new(Vec::new()));
    let mut chain = make(&out);
    for (i, step) in steps.iter().enumerate() {
        if cuts.contains(&i) {
            let state = snapshot(&mut *chain, i as u64 + 1);
            assert!(state.node(NODE).is_some(), "a stateful operator writes parts");
            chain = make(&out);
            chain.restore_state(&state).unwrap();
        }
        drive(&mut *chain, step);
    }
    while !chain.finish_step(3).unwrap() {}
    (uninterrupted, out.take())
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Keyed records `(key, timestamp)` in batches, with watermarks between them; some records are
/// late by then.
fn keyed_script(keys: u64, batches: usize) -> Vec<Step<(u64, i64)>> {
    let mut steps = Vec::new();
    for b in 0..batches {
        let records = (0..40u64).map(|i| {
            let n = b as u64 * 40 + i;
            (n * 7919 % keys, (b as i64 * 100) + (n * 37 % 130) as i64 - 20)
        });
        steps.push(Step::Records(records.collect()));
        steps.push(Step::Watermark(b as i64 * 100 + 50));
    }
    steps
}

/// A restore before every third step, and at the first and last.
fn cuts(steps: usize) -> Vec<usize> {
    (0..steps).filter(|i| i % 3 == 1).chain([0, steps - 1]).collect()
}

// ---------------------------------------------------------------- keyed process function

/// Counts records per key in keyed state; reminds at the record's time + 100 (event time) and at
/// processing time 5000, emitting (key, count, domain).
struct CountAndRemind {
    count: Option<ValueState<u64, (), u64>>,
}

impl KeyedProcessFunction<u64, (u64, i64), (u64, u64, u8)> for CountAndRemind {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.count = Some(ctx.state().value_state(&ValueStateDescriptor::new("count")).unwrap());
    }
    fn process_element(&mut self, (_, ts): (u64, i64), ctx: &mut KeyedContext<'_, u64, (u64, u64, u8)>) {
        let count = self.count.as_mut().unwrap();
        count.update(count.value().unwrap_or(0) + 1);
        ctx.register_event_time_timer(ts + 100);
        ctx.register_processing_time_timer(5000);
    }
    fn on_timer(&mut self, _timestamp: i64, ctx: &mut KeyedContext<'_, u64, (u64, u64, u8)>) {
        let count = self.count.as_ref().unwrap().value().unwrap_or(0);
        let domain = match ctx.time_domain() {
            Some(TimeDomain::EventTime) => 0,
            _ => 1,
        };
        ctx.collect((*ctx.key(), count, domain));
    }
}

type KeyOf = fn(&(u64, i64)) -> u64;

fn keyed_process(range: KeyGroupRange) -> KeyedProcessOp<u64, (u64, i64), KeyOf, CountAndRemind> {
    let key: KeyOf = |r| r.0;
    KeyedProcessOp::new::<(u64, u64, u8)>(
        CountAndRemind { count: None },
        Arc::new(key),
        Some(Timestamps::new(|r: &(u64, i64)| r.1)),
        backend(range),
        SideOutputs::default(),
        0,
        1,
    )
}

#[test]
fn keyed_process_state_and_timers_survive_restores() {
    let mut steps = keyed_script(13, 6);
    steps.insert(5, Step::ProcessingTime(6000));
    steps.push(Step::ProcessingTime(7000));
    steps.push(Step::Watermark(i64::MAX));
    let (want, got) = run(&|out| link(keyed_process(ALL), out), &steps, &cuts(steps.len()));
    assert!(want.iter().any(|o| o.2 == 0) && want.iter().any(|o| o.2 == 1), "both domains fired");
    assert_eq!(sorted(got), sorted(want));
}

#[test]
fn keyed_state_and_timers_are_redistributed_by_key_group() {
    let records: Vec<(u64, i64)> = (0..200u64).map(|i| (i % 23, i as i64)).collect();
    let fire_all = |chain: &mut dyn Emit<(u64, i64)>| {
        drive(chain, &Step::Watermark(i64::MAX));
        drive(chain, &Step::ProcessingTime(i64::MAX / 2));
    };
    let out = Rc::new(RefCell::new(Vec::new()));
    let mut whole = link(keyed_process(ALL), &out);
    drive(&mut *whole, &Step::Records(records.clone()));
    fire_all(&mut *whole);
    let want = sorted(out.take());

    for (old_p, new_p) in [(2u32, 3u32), (3, 1), (1, 4)] {
        let mut old = Vec::new();
        for i in 0..old_p {
            let range = key_group_range(MAX_P, old_p, i);
            let mine = records.iter().filter(|r| range.contains(assign_key_group(&r.0, MAX_P))).cloned();
            let mut chain = link(keyed_process(range), &Rc::new(RefCell::new(Vec::new())));
            drive(&mut *chain, &Step::Records(mine.collect()));
            old.push(snapshot(&mut *chain, 1).node(NODE).cloned().unwrap_or_default());
        }
        let new = redistribute(&old, new_p, MAX_P).unwrap();
        let out = Rc::new(RefCell::new(Vec::new()));
        for (j, parts) in new.into_iter().enumerate() {
            let mut chain = link(keyed_process(key_group_range(MAX_P, new_p, j as u32)), &out);
            chain.restore_state(&TaskSnapshot { nodes: vec![(NODE as u32, parts)], ..Default::default() }).unwrap();
            fire_all(&mut *chain);
        }
        assert_eq!(sorted(out.take()), want, "{old_p} → {new_p}");
    }
}

// ---------------------------------------------------------------- windows

#[derive(Clone)]
struct Sum;

impl AggregateFunction<(u64, i64), u64, u64> for Sum {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, v: &(u64, i64), acc: &mut u64) {
        *acc += v.1.unsigned_abs() + 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: &mut u64, b: u64) {
        *a += b;
    }
}

type WOut = (u64, i64, u64);
type Post = fn(&WindowContext<'_, u64>, u64, &mut Vec<WOut>);
type SumWindows = WindowOperator<u64, (u64, i64), WOut, KeyOf, AggregateContents<u64, (u64, i64), u64, u64, Post>>;

fn windows(assigner: WindowAssigner, trigger: Trigger, lateness: i64) -> SumWindows {
    let key: KeyOf = |r| r.0;
    let spec = WindowSpec {
        assigner,
        trigger,
        allowed_lateness: lateness,
        timestamps: Some(Timestamps::new(|r: &(u64, i64)| r.1)),
    };
    let post: Post = |ctx, v, out| out.push((*ctx.key, ctx.window.start, v));
    WindowOperator::new(
        Arc::new(key),
        spec,
        backend(ALL),
        |b| AggregateContents {
            state: b.aggregating_state(&AggregatingStateDescriptor::new("sum", Sum)).unwrap(),
            post: Arc::new(post),
        },
        None,
        Arc::new(OperatorMetrics::default()),
    )
}

#[test]
fn event_time_windows_survive_restores_with_every_trigger() {
    let ms = std::time::Duration::from_millis;
    let assigners = [
        (WindowAssigner::tumbling_event_time(ms(100)), 0),
        (WindowAssigner::sliding_event_time(ms(100), ms(50)), 30),
        (WindowAssigner::event_time_session(ms(40)), 20),
    ];
    let triggers =
        [Trigger::EventTime, Trigger::EventTime.purging(), Trigger::Count(3), Trigger::ContinuousEventTime(30)];
    let mut steps = keyed_script(11, 8);
    steps.push(Step::Watermark(i64::MAX));
    for (assigner, lateness) in assigners {
        for trigger in &triggers {
            if assigner.is_merging() && *trigger == Trigger::Count(3) {
                continue;
            }
            let make = |out: &Out<WOut>| link(windows(assigner, trigger.clone(), lateness), out);
            let (want, got) = run(&make, &steps, &cuts(steps.len()));
            assert!(!want.is_empty(), "{assigner:?} {trigger:?}");
            assert_eq!(sorted(got), sorted(want), "{assigner:?} {trigger:?}");
        }
    }
}

#[test]
fn a_snapshot_between_firing_steps_keeps_the_rest_of_the_bucket() {
    // The task loop never snapshots there, but the operator's snapshot stays whole if one did.
    let assigner = WindowAssigner::tumbling_event_time(std::time::Duration::from_millis(100));
    let mut original = windows(assigner, Trigger::EventTime, 0);
    let mut out = Vec::new();
    original.process_batch(&mut (0..400u64).map(|i| (i % 7, (i * 37 % 1000) as i64)).collect(), &mut out);
    original.on_watermark(450, &mut out);
    assert!(!original.fire_step(&mut out, 5), "half-fired");
    let mut parts = PendingParts::default();
    original.snapshot_state(1, &mut parts).unwrap();
    let parts = parts.complete().unwrap();
    let fire_all = |op: &mut SumWindows, out: &mut Vec<WOut>| {
        op.on_watermark(i64::MAX, out);
        while !op.fire_step(out, 3) {}
    };
    let mut want = Vec::new();
    fire_all(&mut original, &mut want);
    let mut restored = windows(assigner, Trigger::EventTime, 0);
    restored.restore_state(&parts).unwrap();
    let mut got = Vec::new();
    fire_all(&mut restored, &mut got);
    assert!(!got.is_empty());
    assert_eq!(sorted(got), sorted(want));
}

#[test]
fn processing_time_windows_survive_restores() {
    let day = std::time::Duration::from_secs(86_400);
    for (assigner, trigger) in [
        (WindowAssigner::tumbling_processing_time(day), Trigger::ProcessingTime),
        (WindowAssigner::processing_time_session(day), Trigger::ProcessingTime),
        (WindowAssigner::tumbling_processing_time(day), Trigger::Count(4)),
    ] {
        let records: Vec<(u64, i64)> = (0..120u64).map(|i| (i % 9, i as i64)).collect();
        let steps: Vec<Step<(u64, i64)>> =
            records.chunks(30).map(|c| Step::Records(c.to_vec())).chain([Step::ProcessingTime(i64::MAX / 2)]).collect();
        let make = |out: &Out<WOut>| link(windows(assigner, trigger.clone(), 0), out);
        let (want, got) = run(&make, &steps, &[1, 2, 4]);
        // Windows start at the wall clock; keys and sums are what must match.
        let strip = |v: Vec<WOut>| sorted(v.into_iter().map(|(k, _, s)| (k, s)).collect::<Vec<_>>());
        assert!(!want.is_empty(), "{assigner:?}");
        assert_eq!(strip(got), strip(want), "{assigner:?} {trigger:?}");
    }
}

// ---------------------------------------------------------------- interval join

type JoinIn = Either<(u64, i64), (u64, i64)>;
type JoinOut = (u64, i64, i64);
type JoinKey = fn(&JoinIn) -> u64;
type JoinFn = fn(&(u64, i64), &(u64, i64), JoinedTimestamps, &mut Vec<JoinOut>);

fn interval_join() -> IntervalJoinOp<u64, (u64, i64), (u64, i64), JoinKey, JoinFn> {
    let key: JoinKey = |e| match e {
        Either::Left(a) => a.0,
        Either::Right(b) => b.0,
    };
    let ts: Arc<TimestampFn<JoinIn>> = Arc::new(|e: &JoinIn| match e {
        Either::Left(a) => a.1,
        Either::Right(b) => b.1,
    });
    let f: JoinFn = |a, _, t, out| out.push((a.0, t.left, t.right));
    IntervalJoinOp::new(
        Arc::new(key),
        ts,
        -30,
        20,
        Arc::new(f),
        backend(ALL),
        &SideOutputs::default(),
        (None, None),
        Arc::new(OperatorMetrics::default()),
    )
}

#[test]
fn interval_join_buffers_and_cleanup_timers_survive_restores() {
    let steps: Vec<Step<JoinIn>> =
        keyed_script(5, 8)
            .into_iter()
            .enumerate()
            .map(|(i, step)| match step {
                Step::Records(r) => Step::Records(
                    r.into_iter()
                        .map(|(k, t)| {
                            if (k + t as u64).is_multiple_of(2) {
                                Either::Left((k, t))
                            } else {
                                Either::Right((k, t))
                            }
                        })
                        .collect(),
                ),
                Step::Watermark(w) => Step::Watermark(w - (i as i64 % 4) * 10),
                Step::ProcessingTime(t) => Step::ProcessingTime(t),
            })
            .collect();
    let (want, got) = run(&|out| link(interval_join(), out), &steps, &cuts(steps.len()));
    assert!(want.len() > 50);
    assert_eq!(sorted(got), sorted(want));

    // The restored cleanup timers free every buffered record once the watermark passes them.
    let mut original = interval_join();
    let mut out = Vec::new();
    original.process_batch(&mut (0..50u64).map(|i| Either::Left((i % 5, i as i64))).collect(), &mut out);
    let mut parts = PendingParts::default();
    original.snapshot_state(1, &mut parts).unwrap();
    let parts = parts.complete().unwrap();
    let mut restored = interval_join();
    restored.restore_state(&parts).unwrap();
    assert_eq!(restored.core.backend.num_entries(), original.core.backend.num_entries());
    restored.on_watermark(i64::MAX, &mut out);
    assert_eq!(restored.core.backend.num_entries(), 0);
}

// ---------------------------------------------------------------- keyed broadcast

/// Rules `(id, multiplier)` in broadcast state; records `(key, value)` emit value × the sum of
/// the multipliers, the number of rules and how many records the key has seen (keyed state).
struct ApplyRules {
    seen: Option<ValueState<u64, (), u64>>,
}

type BOut = (u64, u64, usize, u64);

impl KeyedBroadcastProcessFunction<u64, (u64, u64), (u32, u64), BOut> for ApplyRules {
    type StateKey = u32;
    type StateValue = u64;
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.seen = Some(ctx.state().value_state(&ValueStateDescriptor::new("seen")).unwrap());
    }
    fn process_element(
        &mut self,
        (k, v): (u64, u64),
        rules: &BroadcastState<u32, u64>,
        ctx: &mut KeyedContext<'_, u64, BOut>,
    ) {
        let seen = self.seen.as_mut().unwrap();
        let n = seen.value().unwrap_or(0) + 1;
        seen.update(n);
        ctx.collect((k, v * rules.values().sum::<u64>(), rules.len(), n));
    }
    fn process_broadcast_element(
        &mut self,
        (id, m): (u32, u64),
        rules: &mut BroadcastState<u32, u64>,
        _ctx: &mut ProcessContext<'_, BOut>,
    ) {
        rules.insert(id, m);
    }
}

type BroadcastKey = fn(&(u64, u64)) -> u64;

fn broadcast() -> BroadcastOp<u64, (u64, u64), (u32, u64), BroadcastKey, ApplyRules, BOut> {
    let key: BroadcastKey = |r| r.0;
    BroadcastOp::new(ApplyRules { seen: None }, Arc::new(key), None, backend(ALL), SideOutputs::default(), (0, 1))
}

#[test]
fn broadcast_and_keyed_state_survive_restores_and_broadcast_state_rescales_as_copies() {
    let rules = |ids: std::ops::Range<u32>| Step::Records(ids.map(|i| Either::Right((i, 1u64 << i))).collect());
    let records = |from: u64| Step::Records((from..from + 30).map(|i| Either::Left((i % 7, i))).collect());
    let steps = vec![rules(0..3), records(0), records(30), rules(3..5), records(60), records(90)];
    let (want, got) = run(&|out| link(broadcast(), out), &steps, &[1, 2, 3, 4, 5]);
    assert_eq!(got, want);

    let mut chain = link(broadcast(), &Rc::new(RefCell::new(Vec::new())));
    drive(&mut *chain, &rules(0..4));
    let parts = snapshot(&mut *chain, 1).node(NODE).cloned().unwrap();
    for new in redistribute(&[parts.clone(), parts], 3, MAX_P).unwrap() {
        let out = Rc::new(RefCell::new(Vec::new()));
        let mut chain = link(broadcast(), &out);
        chain.restore_state(&TaskSnapshot { nodes: vec![(NODE as u32, new)], ..Default::default() }).unwrap();
        drive(&mut *chain, &Step::Records(vec![Either::Left((1, 1))]));
        assert_eq!(out.take(), vec![(1, 15, 4, 1)], "every subtask has every rule once");
    }
}

// ---------------------------------------------------------------- keyed reduce

type ReduceKey = fn(&(u64, u64)) -> u64;
type ReduceFn = fn((u64, u64), (u64, u64)) -> (u64, u64);

fn reduce(mode: RuntimeMode, range: KeyGroupRange) -> ReduceOp<(u64, u64), u64, ReduceKey, ReduceFn> {
    let key: ReduceKey = |r| r.0;
    let f: ReduceFn = |a, b| (a.0, a.1 + b.1);
    ReduceOp::new(Arc::new(key), Arc::new(f), mode, MAX_P, range)
}

#[test]
fn keyed_reduce_survives_restores_and_rescales() {
    let steps: Vec<Step<(u64, u64)>> =
        (0..10u64).map(|b| Step::Records((0..50).map(|i| ((b * 50 + i) % 17, i)).collect())).collect();
    for mode in [RuntimeMode::Streaming, RuntimeMode::Batch] {
        let (want, got) = run(&|out| link(reduce(mode, ALL), out), &steps, &[0, 3, 4, 9]);
        assert!(!want.is_empty());
        if mode == RuntimeMode::Streaming {
            assert_eq!(got, want, "running values in input order");
        } else {
            assert_eq!(sorted(got), sorted(want));
        }
    }

    let records: Vec<(u64, u64)> = (0..500u64).map(|i| (i % 31, i)).collect();
    let mut old = Vec::new();
    for i in 0..2 {
        let range = key_group_range(MAX_P, 2, i);
        let mine = records.iter().filter(|r| range.contains(assign_key_group(&r.0, MAX_P))).cloned().collect();
        let mut chain = link(reduce(RuntimeMode::Batch, range), &Rc::new(RefCell::new(Vec::new())));
        drive(&mut *chain, &Step::Records(mine));
        old.push(snapshot(&mut *chain, 1).node(NODE).cloned().unwrap());
    }
    let out = Rc::new(RefCell::new(Vec::new()));
    for (j, parts) in redistribute(&old, 3, MAX_P).unwrap().into_iter().enumerate() {
        let mut chain = link(reduce(RuntimeMode::Batch, key_group_range(MAX_P, 3, j as u32)), &out);
        chain.restore_state(&TaskSnapshot { nodes: vec![(NODE as u32, parts)], ..Default::default() }).unwrap();
        while !chain.finish_step(4).unwrap() {}
    }
    let want: Vec<(u64, u64)> =
        (0..31u64).map(|k| (k, records.iter().filter(|r| r.0 == k).map(|r| r.1).sum())).collect();
    assert_eq!(sorted(out.take()), want);
}

// ---------------------------------------------------------------- operator state

/// Numbers its records per subtask (the count in list state, brought up to date at each
/// snapshot) and remembers every subtask's count in union list state.
struct Numbered {
    count: u64,
    list: Option<OperatorListState<u64>>,
    union: Option<UnionListState<u64>>,
    restored_union: Vec<u64>,
}

impl ProcessFunction<u64, (u64, u64, u64)> for Numbered {
    fn open(&mut self, ctx: &mut RuntimeContext<'_>) {
        let list = ctx.list_state::<u64>("count").unwrap();
        let union = ctx.union_list_state::<u64>("counts").unwrap();
        self.count = list.get().into_iter().sum();
        self.restored_union = union.get();
        self.list = Some(list);
        self.union = Some(union);
    }
    fn process_element(&mut self, value: u64, ctx: &mut ProcessContext<'_, (u64, u64, u64)>) {
        self.count += 1;
        ctx.collect((self.count, value, self.restored_union.iter().sum()));
    }
    fn snapshot_state(&mut self, _checkpoint: u64) {
        self.list.as_ref().unwrap().update(vec![self.count]);
        self.union.as_ref().unwrap().update(vec![self.count]);
    }
}

fn numbered() -> ProcessOp<u64, Numbered> {
    let f = Numbered { count: 0, list: None, union: None, restored_union: Vec::new() };
    ProcessOp::new(f, None, SideOutputs::default(), 0, 1)
}

#[test]
fn list_and_union_state_of_a_process_function_survive_restores_and_rescale() {
    let steps: Vec<Step<u64>> = (0..6u64).map(|b| Step::Records((b * 10..b * 10 + 10).collect())).collect();
    let (want, got) = run(&|out| link(numbered(), out), &steps, &[]);
    assert_eq!(got, want);
    let (_, got) = run(&|out| link(numbered(), out), &steps, &[2, 3]);
    let counts: Vec<u64> = got.iter().map(|o| o.0).collect();
    assert_eq!(counts, (1..=60).collect::<Vec<u64>>(), "the count continues across restores");
    assert_eq!(got[59].2, 30, "the union state holds the count at the last restore");

    // Three subtasks that counted 5, 7 and 9 records, restored at parallelism 2.
    let mut old = Vec::new();
    for n in [5u64, 7, 9] {
        let mut chain = link(numbered(), &Rc::new(RefCell::new(Vec::new())));
        drive(&mut *chain, &Step::Records((0..n).collect()));
        old.push(snapshot(&mut *chain, 1).node(NODE).cloned().unwrap());
    }
    let mut firsts = Vec::new();
    for parts in redistribute(&old, 2, MAX_P).unwrap() {
        let out = Rc::new(RefCell::new(Vec::new()));
        let mut chain = link(numbered(), &out);
        chain.restore_state(&TaskSnapshot { nodes: vec![(NODE as u32, parts)], ..Default::default() }).unwrap();
        drive(&mut *chain, &Step::Records(vec![100]));
        firsts.push(out.take()[0]);
    }
    // Round-robin: subtask 0 gets the counts 5 and 9, subtask 1 gets 7; both see all in the union.
    assert_eq!(firsts, vec![(15, 100, 21), (8, 100, 21)]);
}

#[test]
fn a_restored_state_declared_with_another_type_or_kind_is_refused() {
    let mut chain = link(numbered(), &Rc::new(RefCell::new(Vec::new())));
    drive(&mut *chain, &Step::Records(vec![1, 2]));
    let state = snapshot(&mut *chain, 1);
    struct Other;
    impl ProcessFunction<u64, u64> for Other {
        fn open(&mut self, ctx: &mut RuntimeContext<'_>) {
            let err = ctx.list_state::<u32>("count").err().expect("another element type");
            assert!(err.to_string().contains("'count'"), "{err}");
            let err = ctx.list_state::<u64>("counts").err().expect("union restored, list declared");
            assert!(err.to_string().contains("union list state"), "{err}");
        }
        fn process_element(&mut self, value: u64, ctx: &mut ProcessContext<'_, u64>) {
            ctx.collect(value);
        }
    }
    let out = Rc::new(RefCell::new(Vec::new()));
    let mut chain = link(ProcessOp::new(Other, None, SideOutputs::default(), 0, 1), &out);
    chain.restore_state(&state).unwrap();
    drive(&mut *chain, &Step::Records(vec![3]));
    assert_eq!(out.take(), vec![3]);
    let again = snapshot(&mut *chain, 2);
    assert_eq!(again.node(NODE).map(|p| p.parts.len()), Some(2), "undeclared restored states are carried over");
}

// ---------------------------------------------------------------- the chain

fn discard<O>() -> Out<O> {
    Rc::new(RefCell::new(Vec::new()))
}

/// Feeds `steps` to a chain made by `make`, snapshots it, and restores copies of the snapshot
/// with one byte of one part flipped (every third byte of every part) into fresh chains: each
/// restore must fail naming the node and the part.
fn check_damage<I: Data + Clone>(make: &dyn Fn() -> Link<I>, steps: &[Step<I>]) {
    let mut chain = make();
    for step in steps {
        drive(&mut *chain, step);
    }
    let state = snapshot(&mut *chain, 1);
    let parts = &state.node(NODE).expect("state written").parts;
    for (p, part) in parts.iter().enumerate() {
        for at in (0..part.bytes.len()).step_by(3) {
            let mut damaged = state.clone();
            damaged.nodes[0].1.parts[p].bytes[at] ^= 0x08;
            match make().restore_state(&damaged) {
                Err(TaskError::Checkpoint { node: Some(NODE), message }) => {
                    assert!(message.contains(&format!("'{}'", part.name)), "byte {at}: {message}");
                }
                other => panic!("part '{}' byte {at} flipped: {other:?}", part.name),
            }
        }
    }
}

#[test]
fn a_damaged_part_fails_the_restore_naming_the_operator_and_the_part() {
    check_damage(&|| link(keyed_process(ALL), &discard()), &keyed_script(5, 1)[..1]);
    check_damage(&|| link(reduce(RuntimeMode::Streaming, ALL), &discard()), &[Step::Records(vec![(1, 2), (3, 4)])]);
    check_damage(
        &|| link(broadcast(), &discard()),
        &[Step::Records(vec![Either::Right((1, 2)), Either::Left((3, 4))])],
    );
    check_damage(&|| link(numbered(), &discard()), &[Step::Records(vec![1])]);
    let sessions = WindowAssigner::event_time_session(std::time::Duration::from_millis(40));
    check_damage(&|| link(windows(sessions, Trigger::EventTime, 0), &discard()), &keyed_script(5, 1)[..1]);
}

#[test]
fn snapshots_reach_every_link_and_side_output_of_the_chain() {
    let out = Rc::new(RefCell::new(Vec::new()));
    let side_reduce = OpNode::new(
        reduce(RuntimeMode::Streaming, ALL),
        Box::new(Collect { out: Rc::new(RefCell::new(Vec::new())) }),
        Arc::new(OperatorMetrics::default()),
        9,
    );
    let (_side, sink) = side_output::<(u64, u64)>(Box::new(side_reduce));
    let second = OpNode::new(
        reduce(RuntimeMode::Streaming, ALL),
        Box::new(Collect { out: out.clone() }),
        Arc::new(OperatorMetrics::default()),
        8,
    );
    let to_pairs = ProcessOp::new(
        |v: u64, ctx: &mut ProcessContext<'_, (u64, u64)>| ctx.collect((v % 3, v)),
        None,
        SideOutputs::default(),
        0,
        1,
    );
    let mut chain: Link<u64> = Box::new(OpNode::with_sides(
        to_pairs,
        Box::new(second),
        vec![sink],
        Arc::new(OperatorMetrics::default()),
        NODE,
    ));
    drive(&mut *chain, &Step::Records((0..9).collect()));
    let state = snapshot(&mut *chain, 1);
    let nodes: Vec<u32> = state.nodes.iter().map(|(n, _)| *n).collect();
    assert_eq!(nodes, vec![9, 8], "the stateless closure writes nothing; side output first, then the next link");
    assert_eq!(out.borrow().last(), Some(&(2, 2 + 5 + 8)));
}
