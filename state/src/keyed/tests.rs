//! Unit tests of keyed state: each state kind, namespaces and merges, key scoping, TTL,
//! registration rules and snapshot/restore edge cases, on the heap and the LSM backend.

use std::time::Duration;

use super::*;
use crate::error::StateError;
use crate::keygroup::{assign_key_group, key_group_range, stable_hash};

const MAX_P: u32 = 128;

/// The backend these tests run on: this file is compiled twice, as `tests` (heap) and as
/// `lsm_tests` (LSM), so every test here holds for both.
fn kind() -> StateBackendKind {
    if module_path!().ends_with("lsm_tests") {
        StateBackendKind::Lsm
    } else {
        StateBackendKind::Heap
    }
}

fn backend() -> KeyedStateBackend<u64> {
    KeyedStateBackend::new(kind(), MAX_P, KeyGroupRange { start: 0, end: MAX_P })
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn value_state_is_scoped_to_the_current_key() {
    let mut b = backend();
    let mut s = b.value_state::<(), String>(&ValueStateDescriptor::new("v")).unwrap();
    b.set_current_key(1);
    assert_eq!(s.value(), None);
    s.update("one".into());
    b.set_current_key(2);
    assert_eq!(s.value(), None, "key 2 does not see key 1's value");
    s.update("two".into());
    b.set_current_key_hashed(1, stable_hash(&1u64));
    assert_eq!(s.value().as_deref(), Some("one"));
    s.clear();
    assert_eq!(s.value(), None);
    b.set_current_key(2);
    assert_eq!(s.value().as_deref(), Some("two"));
    assert_eq!(b.num_entries(), 1);
    assert_eq!(b.current_key(), Some(2));
    assert_eq!(b.key_context().current_key_group(), assign_key_group(&2u64, MAX_P));
}

#[test]
fn update_with_reads_modifies_and_clears_in_place() {
    let mut b = backend();
    let mut s = b.value_state::<(), u64>(&ValueStateDescriptor::new("count")).unwrap();
    b.set_current_key(7);
    for i in 1..=5u64 {
        let seen = s.update_with(|v| {
            let n = v.unwrap_or(0) + 1;
            *v = Some(n);
            n
        });
        assert_eq!(seen, i);
    }
    assert_eq!(s.value(), Some(5));
    assert!(!s.update_with(|v| v.take().is_none()), "the closure saw the value");
    assert_eq!(s.value(), None);
    assert_eq!(b.num_entries(), 0, "None removes the entry");
    s.update_with(|v| assert!(v.is_none()));
    assert_eq!(b.num_entries(), 0, "leaving None on an absent entry creates nothing");
}

#[test]
fn namespaces_separate_values_of_one_key() {
    let mut b = backend();
    let mut s = b.value_state::<u32, i64>(&ValueStateDescriptor::new("w")).unwrap();
    b.set_current_key(3);
    s.set_namespace(10);
    s.update(100);
    s.set_namespace(20);
    assert_eq!(s.value(), None);
    s.update(200);
    assert_eq!(*s.namespace(), 20);
    s.set_namespace(10);
    assert_eq!(s.value(), Some(100));
    s.clear();
    s.set_namespace(20);
    assert_eq!(s.value(), Some(200), "clearing one namespace leaves the other");
}

#[test]
#[should_panic(expected = "before set_namespace")]
fn a_window_namespace_must_be_set_before_access() {
    let mut b = backend();
    let s = b.value_state::<u32, i64>(&ValueStateDescriptor::new("w")).unwrap();
    b.set_current_key(3);
    let _ = s.value();
}

#[test]
#[should_panic(expected = "before set_current_key")]
fn state_needs_a_current_key() {
    let mut b = backend();
    let s = b.value_state::<(), i64>(&ValueStateDescriptor::new("v")).unwrap();
    let _ = s.value();
}

#[test]
#[should_panic(expected = "wrong subtask")]
fn a_key_of_another_subtask_is_refused() {
    let b: KeyedStateBackend<u64> = KeyedStateBackend::new(kind(), MAX_P, key_group_range(MAX_P, 2, 0));
    let foreign = (0u64..).find(|k| assign_key_group(k, MAX_P) >= 64).unwrap();
    b.set_current_key(foreign);
}

#[test]
#[should_panic(expected = "inside a state access")]
fn the_key_cannot_change_during_an_access() {
    let mut b = backend();
    let mut s = b.value_state::<(), i64>(&ValueStateDescriptor::new("v")).unwrap();
    b.set_current_key(1);
    s.update_with(|_| b.set_current_key(2));
}

#[test]
fn value_merge_keeps_the_target_or_takes_the_first_source() {
    let mut b = backend();
    let mut s = b.value_state::<u32, i64>(&ValueStateDescriptor::new("w")).unwrap();
    b.set_current_key(1);
    for (ns, v) in [(2, 20), (3, 30)] {
        s.set_namespace(ns);
        s.update(v);
    }
    s.merge_namespaces(&1, &[4, 3, 2]);
    s.set_namespace(1);
    assert_eq!(s.value(), Some(30), "first source with a value");
    for ns in [2, 3] {
        s.set_namespace(ns);
        assert_eq!(s.value(), None, "sources are cleared");
    }
    s.set_namespace(5);
    s.update(50);
    s.merge_namespaces(&1, &[5]);
    s.set_namespace(1);
    assert_eq!(s.value(), Some(30), "the target keeps its value");
    assert_eq!(b.num_entries(), 1);
}

#[test]
fn list_state_keeps_order_and_merges_by_concatenation() {
    let mut b = backend();
    let mut l = b.list_state::<u8, u32>(&ListStateDescriptor::new("l")).unwrap();
    b.set_current_key(9);
    l.set_namespace(0);
    assert!(l.is_empty());
    assert_eq!(l.get(), Vec::<u32>::new());
    l.add(1);
    l.add_all([2, 3]);
    l.add_all(std::iter::empty());
    assert_eq!(l.get(), vec![1, 2, 3]);
    assert_eq!(l.len(), 3);
    l.set_namespace(1);
    l.add_all([10, 11]);
    l.set_namespace(2);
    l.add(20);
    l.merge_namespaces(&0, &[1, 2]);
    l.set_namespace(0);
    assert_eq!(l.get(), vec![1, 2, 3, 10, 11, 20]);
    l.set_namespace(1);
    assert!(l.is_empty());
    l.merge_namespaces(&7, &[0]);
    l.set_namespace(7);
    assert_eq!(l.len(), 6, "merging into an absent target moves the list");
    l.update(vec![5]);
    assert_eq!(l.get(), vec![5]);
    l.update(Vec::new());
    assert!(l.is_empty());
    assert_eq!(b.num_entries(), 0, "an emptied list is removed");
}

#[test]
fn map_state_puts_gets_and_removes_entries() {
    let mut b = backend();
    let mut m = b.map_state::<(), String, u64>(&MapStateDescriptor::new("m")).unwrap();
    b.set_current_key(4);
    assert!(m.is_empty());
    m.put("a".into(), 1);
    m.put("b".into(), 2);
    m.put("a".into(), 3);
    assert_eq!(m.get(&"a".into()), Some(3));
    assert!(m.contains(&"b".into()));
    assert!(!m.contains(&"c".into()));
    assert_eq!(sorted(m.entries()), vec![("a".into(), 3), ("b".into(), 2)]);
    assert_eq!(sorted(m.keys()), vec!["a".to_string(), "b".to_string()]);
    b.set_current_key(5);
    assert!(m.is_empty(), "another key has its own map");
    b.set_current_key(4);
    assert_eq!(m.remove(&"a".into()), Some(3));
    assert_eq!(m.remove(&"a".into()), None);
    assert_eq!(m.remove(&"b".into()), Some(2));
    assert!(m.is_empty());
    assert_eq!(b.num_entries(), 0, "an emptied map is removed");
    m.put("x".into(), 1);
    m.clear();
    assert!(m.is_empty());
}

#[test]
fn reducing_state_reduces_and_merges() {
    let mut b = backend();
    let mut r = b.reducing_state::<u8, i64>(&ReducingStateDescriptor::new("sum", |a, b| a + b)).unwrap();
    let mut s = b
        .reducing_state::<(), String>(&ReducingStateDescriptor::new_in_place("cat", |acc: &mut String, v: String| {
            acc.push_str(&v)
        }))
        .unwrap();
    b.set_current_key(1);
    r.set_namespace(0);
    assert_eq!(r.get(), None);
    for v in [1, 2, 3] {
        r.add(v);
    }
    assert_eq!(r.get(), Some(6));
    r.set_namespace(1);
    r.add(10);
    r.set_namespace(2);
    r.add(100);
    r.merge_namespaces(&0, &[1, 2]);
    r.set_namespace(0);
    assert_eq!(r.get(), Some(116));
    r.clear();
    assert_eq!(r.get(), None);
    s.add("ab".into());
    s.add("cd".into());
    assert_eq!(s.get().as_deref(), Some("abcd"));
}

/// Average of `i64`s: accumulator (sum, count).
struct Average;

impl AggregateFunction<i64, (i64, u64), f64> for Average {
    fn create_accumulator(&self) -> (i64, u64) {
        (0, 0)
    }
    fn add(&self, value: &i64, acc: &mut (i64, u64)) {
        acc.0 += value;
        acc.1 += 1;
    }
    fn get_result(&self, acc: &(i64, u64)) -> f64 {
        acc.0 as f64 / acc.1 as f64
    }
    fn merge(&self, a: &mut (i64, u64), b: (i64, u64)) {
        a.0 += b.0;
        a.1 += b.1;
    }
}

#[test]
fn aggregating_state_folds_inputs_and_merges_accumulators() {
    let mut b = backend();
    let mut a =
        b.aggregating_state::<u16, i64, (i64, u64), f64>(&AggregatingStateDescriptor::new("avg", Average)).unwrap();
    b.set_current_key(2);
    a.set_namespace(1);
    assert_eq!(a.get(), None);
    a.add(&2);
    a.add(&4);
    assert_eq!(a.get(), Some(3.0));
    assert_eq!(a.accumulator(), Some((6, 2)));
    a.set_namespace(2);
    a.set_accumulator((30, 3));
    a.merge_namespaces(&1, &[2, 1]);
    a.set_namespace(1);
    assert_eq!(a.accumulator(), Some((36, 5)));
    a.set_namespace(2);
    assert_eq!(a.get(), None);
    a.merge_namespaces(&3, &[1]);
    a.set_namespace(3);
    assert_eq!(a.accumulator(), Some((36, 5)));
    a.clear();
    assert_eq!(b.num_entries(), 0);
}

#[test]
fn aggregating_take_returns_the_result_and_clears() {
    let mut b = backend();
    let mut a =
        b.aggregating_state::<u16, i64, (i64, u64), f64>(&AggregatingStateDescriptor::new("avg", Average)).unwrap();
    b.set_current_key(2);
    a.set_namespace(1);
    assert!(a.add(&2), "the first add creates the state");
    assert!(!a.add(&6));
    a.set_namespace(2);
    a.add(&10);
    a.set_namespace(1);
    assert_eq!(a.take(), Some(4.0));
    assert_eq!(a.get(), None);
    assert_eq!(a.take(), None);
    a.set_namespace(2);
    assert_eq!(a.get(), Some(10.0), "other namespaces are untouched");
    assert_eq!(b.num_entries(), 1);
}

#[test]
fn registering_a_name_again_shares_or_refuses() {
    let mut b = backend();
    let mut first = b.value_state::<(), i64>(&ValueStateDescriptor::new("x")).unwrap();
    let second = b.value_state::<(), i64>(&ValueStateDescriptor::new("x")).unwrap();
    b.set_current_key(1);
    first.update(5);
    assert_eq!(second.value(), Some(5), "same name, same kind: same state");

    let kind = b.list_state::<(), i64>(&ListStateDescriptor::new("x"));
    assert!(matches!(kind, Err(StateError::Incompatible { ref name, .. }) if name == "x"), "{:?}", kind.err());
    let value_type = b.value_state::<(), u32>(&ValueStateDescriptor::new("x"));
    assert!(matches!(value_type, Err(StateError::Incompatible { .. })));
    let namespace = b.value_state::<u8, i64>(&ValueStateDescriptor::new("x"));
    assert!(matches!(namespace, Err(StateError::Incompatible { .. })));
    let ttl =
        b.value_state::<(), i64>(&ValueStateDescriptor::new("x").with_ttl(StateTtlConfig::new(Duration::from_secs(1))));
    let err = ttl.err().expect("another TTL is incompatible");
    assert!(err.to_string().contains("'x'") && err.to_string().contains("TTL"), "{err}");
    assert!(!err.is_retryable());
}

fn ttl_ms(ms: u64) -> StateTtlConfig {
    StateTtlConfig::new(Duration::from_millis(ms))
}

#[test]
fn ttl_on_create_and_write_expires_after_the_last_write() {
    let mut b = backend();
    let mut s = b.value_state::<(), i64>(&ValueStateDescriptor::new("t").with_ttl(ttl_ms(10))).unwrap();
    b.set_current_key(1);
    b.set_current_time(0);
    s.update(1);
    b.set_current_time(9);
    assert_eq!(s.value(), Some(1));
    s.update(2);
    b.set_current_time(18);
    assert_eq!(s.value(), Some(2), "the write at 9 restarted the TTL");
    b.set_current_time(19);
    assert_eq!(s.value(), None, "reads did not extend it");
    assert_eq!(b.num_entries(), 0, "the expired entry was removed when found");
    s.update(3);
    b.set_current_time(40);
    assert_eq!(s.update_with(|v| v.take()), None, "writes see an expired value as absent");
}

#[test]
fn ttl_on_read_and_write_extends_on_reads() {
    let mut b = backend();
    let config = ttl_ms(10).update_on_read_and_write();
    let mut s = b.value_state::<(), i64>(&ValueStateDescriptor::new("t").with_ttl(config)).unwrap();
    b.set_current_key(1);
    b.set_current_time(0);
    s.update(1);
    for now in [8, 16, 24] {
        b.set_current_time(now);
        assert_eq!(s.value(), Some(1), "read at {now}");
    }
    b.set_current_time(34);
    assert_eq!(s.value(), None);
}

#[test]
fn ttl_visibility_return_expired_returns_once() {
    let mut b = backend();
    let config = ttl_ms(10).return_expired_if_not_cleaned_up();
    let mut s = b.value_state::<(), i64>(&ValueStateDescriptor::new("t").with_ttl(config)).unwrap();
    let mut never = b.value_state::<(), i64>(&ValueStateDescriptor::new("n").with_ttl(ttl_ms(10))).unwrap();
    b.set_current_key(1);
    b.set_current_time(0);
    s.update(1);
    never.update(1);
    b.set_current_time(50);
    assert_eq!(never.value(), None);
    assert_eq!(s.value(), Some(1), "expired but not cleaned up yet");
    assert_eq!(s.value(), None, "the read cleaned it up");
}

#[test]
fn ttl_applies_to_each_list_element_and_map_entry() {
    let mut b = backend();
    let mut l = b.list_state::<(), u32>(&ListStateDescriptor::new("l").with_ttl(ttl_ms(10))).unwrap();
    let mut m = b.map_state::<(), u32, u32>(&MapStateDescriptor::new("m").with_ttl(ttl_ms(10))).unwrap();
    let mut r =
        b.reducing_state::<(), u32>(&ReducingStateDescriptor::new("r", |a, b| a + b).with_ttl(ttl_ms(10))).unwrap();
    let mut a = b
        .aggregating_state::<(), i64, (i64, u64), f64>(
            &AggregatingStateDescriptor::new("a", Average).with_ttl(ttl_ms(10)),
        )
        .unwrap();
    b.set_current_key(1);
    b.set_current_time(0);
    l.add(1);
    m.put(1, 1);
    r.add(1);
    a.add(&1);
    b.set_current_time(5);
    l.add(2);
    m.put(2, 2);
    r.add(1);
    b.set_current_time(12);
    assert_eq!(l.get(), vec![2]);
    assert_eq!(m.entries(), vec![(2, 2)]);
    assert!(!m.contains(&1));
    assert_eq!(r.get(), Some(2), "the add at 5 restarted the reduced value's TTL");
    assert_eq!(a.get(), None);
    a.add(&4);
    assert_eq!(a.accumulator(), Some((4, 1)), "an expired accumulator starts over");
    b.set_current_time(20);
    assert!(l.is_empty());
    assert!(m.is_empty());
    assert_eq!(r.get(), None);
    assert_eq!(b.num_entries(), 1, "only the accumulator written at 12 is left");
}

#[test]
fn snapshots_leave_out_expired_entries_and_keep_expiry() {
    let mut b = backend();
    let desc = ValueStateDescriptor::new("t").with_ttl(ttl_ms(10));
    let mut s = b.value_state::<(), i64>(&desc).unwrap();
    b.set_current_time(0);
    b.set_current_key(1);
    s.update(1);
    b.set_current_time(5);
    b.set_current_key(2);
    s.update(2);
    b.set_current_time(12);
    let snapshot = b.snapshot().unwrap();
    assert_eq!(snapshot.key_groups.len(), 1, "key 1 expired and is left out");

    let mut restored = backend();
    restored.restore(&[snapshot]).unwrap();
    let s = restored.value_state::<(), i64>(&desc).unwrap();
    restored.set_current_time(14);
    restored.set_current_key(2);
    assert_eq!(s.value(), Some(2));
    restored.set_current_time(15);
    assert_eq!(s.value(), None, "the restored entry keeps its expiry time");
}

#[test]
fn restore_before_registration_loads_lazily_and_keeps_pending_state() {
    let mut b = backend();
    let mut v = b.value_state::<(), String>(&ValueStateDescriptor::new("v")).unwrap();
    let mut l = b.list_state::<(), u8>(&ListStateDescriptor::new("l")).unwrap();
    for k in 0..50u64 {
        b.set_current_key(k);
        v.update(format!("v{k}"));
        l.add(k as u8);
    }
    let snapshot = b.snapshot().unwrap();
    assert!(snapshot.size_bytes() > 0);

    let mut r = backend();
    r.restore(std::slice::from_ref(&snapshot)).unwrap();
    assert_eq!(r.num_entries(), 0, "nothing registered yet");
    let v2 = r.value_state::<(), String>(&ValueStateDescriptor::new("v")).unwrap();
    let again = r.snapshot().unwrap();
    assert_eq!(again, snapshot, "the unregistered list is carried over unchanged");
    assert!(matches!(
        r.list_state::<(), u16>(&ListStateDescriptor::new("l")),
        Err(StateError::Incompatible { ref name, .. }) if name == "l"
    ));
    let l2 = r.list_state::<(), u8>(&ListStateDescriptor::new("l")).unwrap();
    for k in 0..50u64 {
        r.set_current_key(k);
        assert_eq!(v2.value(), Some(format!("v{k}")));
        assert_eq!(l2.get(), vec![k as u8]);
    }
    assert_eq!(r.num_entries(), 100);
}

#[test]
fn restore_refuses_bad_snapshots_without_changing_state() {
    let mut b = backend();
    let mut v = b.value_state::<(), i64>(&ValueStateDescriptor::new("v")).unwrap();
    b.set_current_key(1);
    v.update(1);
    let good = b.snapshot().unwrap();
    v.update(2);

    let mut other_max_p = good.clone();
    other_max_p.max_parallelism = 64;
    assert_eq!(b.restore(&[other_max_p]), Err(StateError::MaxParallelismMismatch { snapshot: 64, backend: MAX_P }));
    assert_eq!(
        b.restore(&[good.clone(), good.clone()]),
        Err(StateError::DuplicateKeyGroup { key_group: good.key_groups[0].key_group })
    );
    let mut out_of_range = good.clone();
    out_of_range.key_groups[0].key_group = 500;
    assert_eq!(
        b.restore(&[out_of_range]),
        Err(StateError::KeyGroupOutOfRange { key_group: 500, max_parallelism: MAX_P })
    );
    let mut corrupt = good.clone();
    corrupt.key_groups[0].states[0].bytes[0] ^= 1;
    assert!(matches!(b.restore(&[corrupt]), Err(StateError::Corrupt { .. })));
    let mut wrong_kind = good.clone();
    wrong_kind.key_groups[0].states[0].kind = StateKind::List;
    assert!(matches!(b.restore(&[wrong_kind]), Err(StateError::Incompatible { .. })));
    assert_eq!(v.value(), Some(2), "a refused restore changes nothing");
    let mut moved = good.clone();
    moved.key_groups[0].key_group = (moved.key_groups[0].key_group + 1) % MAX_P;
    assert!(matches!(b.restore(&[moved]), Err(StateError::Corrupt { .. })), "entries must belong to their key group");
    assert_eq!(b.num_entries(), 0, "a failure while loading leaves the backend empty");

    b.restore(&[good]).unwrap();
    assert_eq!(v.value(), Some(1), "handles registered before a restore see the restored state");
}

#[test]
fn void_namespace_is_the_default_namespace_only_for_unit() {
    assert_eq!(<() as Namespace>::default_namespace(), Some(()));
    assert_eq!(<u32 as Namespace>::default_namespace(), None);
    assert_eq!(<(u32, u32) as Namespace>::default_namespace(), None);
}

#[test]
fn value_snapshots_built_outside_a_backend_restore_into_one_and_back() {
    let values: Vec<(u64, String)> = (0..300).map(|k| (k, format!("v{k}"))).collect();
    let snapshot = KeyedStateSnapshot::of_values("sums", MAX_P, values.iter().map(|(k, v)| (k, v))).unwrap();
    let mut b = backend();
    let s = b.value_state::<(), String>(&ValueStateDescriptor::new("sums")).unwrap();
    b.restore(std::slice::from_ref(&snapshot)).unwrap();
    for (k, v) in &values {
        b.set_current_key(*k);
        assert_eq!(s.value().as_ref(), Some(v));
    }
    let full = KeyGroupRange { start: 0, end: MAX_P };
    let written = b.snapshot().unwrap();
    assert!(written.key_groups.iter().zip(&snapshot.key_groups).all(|(a, b)| a.key_group == b.key_group
        && a.states[0].value_type == b.states[0].value_type
        && a.states[0].kind == b.states[0].kind));
    assert!(
        sorted(written.values::<u64, String>("sums", full).unwrap()) == values,
        "the backend's snapshot reads back"
    );
    let half = key_group_range(MAX_P, 2, 1);
    let got: Vec<(u64, String)> = sorted(snapshot.values("sums", half).unwrap());
    let want: Vec<(u64, String)> =
        values.iter().filter(|(k, _)| half.contains(assign_key_group(k, MAX_P))).cloned().collect();
    assert_eq!(got, want);
    assert!(snapshot.values::<u64, u32>("sums", half).is_err(), "another value type");
    let mut moved = snapshot.clone();
    let (a, b) = (moved.key_groups[0].key_group, moved.key_groups[1].key_group);
    moved.key_groups[0].key_group = b;
    moved.key_groups[1].key_group = a;
    assert!(moved.values::<u64, String>("sums", full).is_err(), "keys of another group");
}
