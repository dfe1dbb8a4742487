//! The timer service against a model of live timers with their registration order: random
//! registrations, deletions and pops in both time domains. Every pop returns the model's earliest
//! due timer (ties in registration order), nothing fires after it was deleted, nothing fires
//! before its time, and every live timer fires exactly once when the time passes it. Snapshot and
//! restore (whole, or split over parallelism 2) keep exactly the pending timers.

use std::collections::HashMap;

use corestream_state::{key_group_range, KeyGroupRange, Timer, TimerService, TimerSnapshot};
use proptest::prelude::*;

const MAX_P: u32 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Domain {
    Event,
    Processing,
}

#[derive(Debug, Clone)]
enum Op {
    Register(Domain, u64, u8, i64),
    Delete(Domain, u64, u8, i64),
    Pop(Domain, i64),
    Snapshot,
}

fn domain() -> impl Strategy<Value = Domain> {
    prop_oneof![Just(Domain::Event), Just(Domain::Processing)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (domain(), 0..8u64, 0..2u8, -5..20i64).prop_map(|(d, k, n, t)| Op::Register(d, k, n, t)),
        2 => (domain(), 0..8u64, 0..2u8, -5..20i64).prop_map(|(d, k, n, t)| Op::Delete(d, k, n, t)),
        2 => (domain(), -5..25i64).prop_map(|(d, t)| Op::Pop(d, t)),
        1 => Just(Op::Snapshot),
    ]
}

type Key = (i64, u64, u8);

/// Live timers of one domain with their registration sequence number.
#[derive(Debug, Clone, Default)]
struct Model {
    live: HashMap<Key, u64>,
    next_seq: u64,
}

impl Model {
    fn register(&mut self, t: Key) -> bool {
        if self.live.contains_key(&t) {
            return false;
        }
        self.live.insert(t, self.next_seq);
        self.next_seq += 1;
        true
    }

    /// The next timer to fire at or before `limit`: earliest timestamp, then registration.
    fn next_due(&self, limit: i64) -> Option<Key> {
        self.live.iter().filter(|(t, _)| t.0 <= limit).min_by_key(|(t, seq)| (t.0, **seq)).map(|(t, _)| *t)
    }

    fn sorted(&self) -> Vec<Key> {
        let mut all: Vec<Key> = self.live.keys().copied().collect();
        all.sort();
        all
    }
}

fn pop(s: &mut TimerService<u64, u8>, d: Domain, limit: i64) -> Option<Timer<u64, u8>> {
    match d {
        Domain::Event => s.pop_event_timer(limit),
        Domain::Processing => s.pop_processing_timer(limit),
    }
}

/// Fires every timer of `d` (at the end of time): each must come once, in timestamp order.
fn drain(s: &mut TimerService<u64, u8>, d: Domain) -> Result<Vec<Key>, TestCaseError> {
    let mut fired = Vec::new();
    while let Some(t) = pop(s, d, i64::MAX) {
        if let Some(&(last, _, _)) = fired.last() {
            prop_assert!(t.timestamp >= last, "{} fired after {}", t.timestamp, last);
        }
        fired.push((t.timestamp, t.key, t.namespace));
    }
    prop_assert_eq!(pop(s, d, i64::MAX), None);
    fired.sort();
    Ok(fired)
}

fn restored(range: KeyGroupRange, snapshot: &TimerSnapshot) -> TimerService<u64, u8> {
    let mut s = TimerService::new(MAX_P, range);
    s.restore(std::slice::from_ref(snapshot)).unwrap();
    s
}

fn check_restores(snapshot: &TimerSnapshot, event: &Model, processing: &Model) -> Result<(), TestCaseError> {
    let full = KeyGroupRange { start: 0, end: MAX_P };
    let mut whole = restored(full, snapshot);
    prop_assert_eq!(whole.num_event_time_timers(), event.live.len());
    prop_assert_eq!(whole.next_event_time(), event.live.keys().map(|t| t.0).min());
    prop_assert_eq!(drain(&mut whole, Domain::Event)?, event.sorted());
    prop_assert_eq!(drain(&mut whole, Domain::Processing)?, processing.sorted());

    let (mut ev, mut pr) = (Vec::new(), Vec::new());
    for subtask in 0..2 {
        let mut half = restored(key_group_range(MAX_P, 2, subtask), snapshot);
        ev.extend(drain(&mut half, Domain::Event)?);
        pr.extend(drain(&mut half, Domain::Processing)?);
    }
    ev.sort();
    pr.sort();
    prop_assert_eq!(ev, event.sorted());
    prop_assert_eq!(pr, processing.sorted());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn timers_fire_once_in_order_and_survive_snapshots(ops in proptest::collection::vec(op(), 1..200)) {
        let mut s: TimerService<u64, u8> = TimerService::new(MAX_P, KeyGroupRange { start: 0, end: MAX_P });
        let mut models = [Model::default(), Model::default()];
        let mut snapshots = Vec::new();
        for op in &ops {
            match *op {
                Op::Register(d, k, n, t) => {
                    let ok = match d {
                        Domain::Event => s.register_event_time_timer(k, n, t),
                        Domain::Processing => s.register_processing_time_timer(k, n, t),
                    };
                    prop_assert_eq!(ok, models[d as usize].register((t, k, n)));
                }
                Op::Delete(d, k, n, t) => {
                    let ok = match d {
                        Domain::Event => s.delete_event_time_timer(&k, &n, t),
                        Domain::Processing => s.delete_processing_time_timer(&k, &n, t),
                    };
                    prop_assert_eq!(ok, models[d as usize].live.remove(&(t, k, n)).is_some());
                }
                Op::Pop(d, limit) => {
                    let model = &mut models[d as usize];
                    while let Some(t) = pop(&mut s, d, limit) {
                        prop_assert!(t.timestamp <= limit);
                        let key = (t.timestamp, t.key, t.namespace);
                        prop_assert_eq!(Some(key), model.next_due(limit), "the earliest due timer fires first");
                        model.live.remove(&key);
                    }
                    prop_assert_eq!(model.next_due(limit), None, "every due timer fired");
                }
                Op::Snapshot => snapshots.push((s.snapshot().unwrap(), models.clone())),
            }
            prop_assert_eq!(s.num_event_time_timers(), models[0].live.len());
            prop_assert_eq!(s.num_processing_time_timers(), models[1].live.len());
            prop_assert_eq!(s.next_event_time(), models[0].live.keys().map(|t| t.0).min());
            prop_assert_eq!(s.next_processing_time(), models[1].live.keys().map(|t| t.0).min());
        }
        for (snapshot, [event, processing]) in &snapshots {
            check_restores(snapshot, event, processing)?;
        }
        check_restores(&s.snapshot().unwrap(), &models[0], &models[1])?;
        prop_assert_eq!(drain(&mut s, Domain::Event)?, models[0].sorted());
        prop_assert_eq!(drain(&mut s, Domain::Processing)?, models[1].sorted());
    }
}

#[test]
fn a_popped_timer_registered_again_fires_again_and_a_deleted_one_never() {
    let mut s: TimerService<u64, ()> = TimerService::new(MAX_P, KeyGroupRange { start: 0, end: MAX_P });
    assert!(s.register_event_time_timer(1, (), 10));
    assert!(!s.register_event_time_timer(1, (), 10), "deduplicated");
    assert_eq!(s.pop_event_timer(9), None, "never before its time");
    assert_eq!(s.pop_event_timer(10), Some(Timer { timestamp: 10, key: 1, namespace: () }));
    assert_eq!(s.pop_event_timer(10), None, "once");
    assert!(s.register_event_time_timer(1, (), 10));
    assert_eq!(s.pop_event_timer(100).map(|t| t.timestamp), Some(10), "fires again after re-registration");

    // Many deletions: the stale heap entries are compacted away and never fire.
    for ts in 0..1000 {
        s.register_processing_time_timer(ts as u64 % 7, (), ts);
    }
    for ts in (0..1000).filter(|ts| ts % 10 != 0) {
        assert!(s.delete_processing_time_timer(&(ts as u64 % 7), &(), ts));
    }
    assert_eq!(s.num_processing_time_timers(), 100);
    assert_eq!(s.next_processing_time(), Some(0));
    let fired: Vec<i64> = std::iter::from_fn(|| s.pop_processing_timer(i64::MAX)).map(|t| t.timestamp).collect();
    assert_eq!(fired, (0..1000).step_by(10).collect::<Vec<i64>>());
}

#[test]
fn restore_refuses_other_max_parallelism_and_corrupt_bytes() {
    let mut s: TimerService<u64, ()> = TimerService::new(MAX_P, KeyGroupRange { start: 0, end: MAX_P });
    s.register_event_time_timer(3, (), 5);
    let snapshot = s.snapshot().unwrap();
    let mut other: TimerService<u64, ()> = TimerService::new(64, KeyGroupRange { start: 0, end: 64 });
    assert!(other.restore(std::slice::from_ref(&snapshot)).is_err());
    let mut corrupt = snapshot.clone();
    corrupt.key_groups[0].bytes[0] ^= 0xff;
    assert!(s.restore(&[corrupt]).is_err());
    assert_eq!(s.num_event_time_timers(), 1, "a refused restore changes nothing");
    let mut wrong_type: TimerService<u64, u8> = TimerService::new(MAX_P, KeyGroupRange { start: 0, end: MAX_P });
    assert!(wrong_type.restore(&[snapshot]).is_err(), "timers of another namespace type");
}

#[test]
fn timers_kept_outside_the_service_join_its_snapshot_after_its_own() {
    let mut s: TimerService<u64, u8> = TimerService::new(MAX_P, KeyGroupRange { start: 0, end: MAX_P });
    s.register_event_time_timer(1, 0, 20);
    s.register_processing_time_timer(2, 0, 7);
    let outside_event = [(20, 3u64, 1u8), (10, 1, 1), (20, 1, 0)];
    let outside_processing = [(7, 4u64, 0u8)];
    let snapshot = s
        .snapshot_with(
            outside_event.iter().map(|(t, k, n)| (*t, k, n)),
            outside_processing.iter().map(|(t, k, n)| (*t, k, n)),
        )
        .unwrap();
    let mut restored: TimerService<u64, u8> = TimerService::new(MAX_P, KeyGroupRange { start: 0, end: MAX_P });
    restored.restore(std::slice::from_ref(&snapshot)).unwrap();
    let mut event: Vec<(i64, u64, u8)> =
        std::iter::from_fn(|| restored.pop_event_timer(i64::MAX)).map(|t| (t.timestamp, t.key, t.namespace)).collect();
    let in_order = event.windows(2).all(|w| w[0].0 <= w[1].0);
    event.sort();
    assert!(in_order, "timestamp order across the service and the outside timers");
    assert_eq!(event, vec![(10, 1, 1), (20, 1, 0), (20, 3, 1)], "the duplicate (1, 0, 20) restored once");
    let mut processing: Vec<(i64, u64)> =
        std::iter::from_fn(|| restored.pop_processing_timer(i64::MAX)).map(|t| (t.timestamp, t.key)).collect();
    processing.sort();
    assert_eq!(processing, vec![(7, 2), (7, 4)]);
    assert_eq!(s.num_event_time_timers(), 1, "snapshot_with leaves the service as it was");
}
