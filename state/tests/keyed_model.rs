//! Keyed state against a plain `HashMap` model: random operations on value, list and map state
//! over a few keys and namespaces; after every operation the handles read what the model holds.
//! A snapshot taken at a random point, restored into a fresh backend (and into the two halves of
//! a parallelism-2 split), holds exactly the model at that point. Each case runs on the heap or
//! the LSM backend and restores into either, so the two backends also read each other's
//! snapshots.

use std::collections::{BTreeMap, HashMap};

use corestream_state::{
    assign_key_group, key_group_range, KeyGroupRange, KeyedStateBackend, KeyedStateSnapshot, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, StateBackendKind, ValueState, ValueStateDescriptor,
};
use proptest::prelude::*;

const MAX_P: u32 = 128;
const KEYS: u64 = 8;
const NAMESPACES: u8 = 3;

#[derive(Debug, Clone)]
enum Op {
    Key(u64),
    Namespace(u8),
    ValueUpdate(i32),
    ValueAddWith(i32),
    ValueClearWith,
    ValueClear,
    ValueMerge(u8, Vec<u8>),
    ListAdd(i32),
    ListAddAll(Vec<i32>),
    ListUpdate(Vec<i32>),
    ListClear,
    ListMerge(u8, Vec<u8>),
    MapPut(u8, String),
    MapRemove(u8),
    MapClear,
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    let ns = 0..NAMESPACES;
    let sources = proptest::collection::vec(0..NAMESPACES, 0..3);
    prop_oneof![
        3 => (0..KEYS).prop_map(Op::Key),
        2 => ns.clone().prop_map(Op::Namespace),
        2 => any::<i32>().prop_map(Op::ValueUpdate),
        2 => (-5..5i32).prop_map(Op::ValueAddWith),
        1 => Just(Op::ValueClearWith),
        1 => Just(Op::ValueClear),
        1 => (ns.clone(), sources.clone()).prop_map(|(t, s)| Op::ValueMerge(t, s)),
        3 => any::<i32>().prop_map(Op::ListAdd),
        1 => proptest::collection::vec(any::<i32>(), 0..4).prop_map(Op::ListAddAll),
        1 => proptest::collection::vec(any::<i32>(), 0..3).prop_map(Op::ListUpdate),
        1 => Just(Op::ListClear),
        1 => (ns, sources).prop_map(|(t, s)| Op::ListMerge(t, s)),
        3 => (0..6u8, "[a-z]{0,6}").prop_map(|(k, v)| Op::MapPut(k, v)),
        2 => (0..6u8).prop_map(Op::MapRemove),
        1 => Just(Op::MapClear),
        1 => Just(Op::Snapshot),
    ]
}

/// What the backend should hold, by (key, namespace).
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    values: HashMap<(u64, u8), i32>,
    lists: HashMap<(u64, u8), Vec<i32>>,
    maps: HashMap<(u64, u8), BTreeMap<u8, String>>,
}

impl Model {
    fn entries_in(&self, range: KeyGroupRange) -> usize {
        let mine = |&&(k, _): &&(u64, u8)| range.contains(assign_key_group(&k, MAX_P));
        self.values.keys().filter(mine).count()
            + self.lists.keys().filter(mine).count()
            + self.maps.keys().filter(mine).count()
    }
}

struct Handles {
    backend: KeyedStateBackend<u64>,
    value: ValueState<u64, u8, i32>,
    list: ListState<u64, u8, i32>,
    map: MapState<u64, u8, u8, String>,
}

impl Handles {
    fn new(kind: StateBackendKind, range: KeyGroupRange) -> Self {
        let mut backend = KeyedStateBackend::new(kind, MAX_P, range);
        let value = backend.value_state(&ValueStateDescriptor::new("value")).unwrap();
        let list = backend.list_state(&ListStateDescriptor::new("list")).unwrap();
        let map = backend.map_state(&MapStateDescriptor::new("map")).unwrap();
        Self { backend, value, list, map }
    }

    fn set(&mut self, key: u64, ns: u8) {
        self.backend.set_current_key(key);
        self.value.set_namespace(ns);
        self.list.set_namespace(ns);
        self.map.set_namespace(ns);
    }

    /// Checks what the handles read for (key, ns) against the model.
    fn check(&mut self, model: &Model, key: u64, ns: u8) -> Result<(), TestCaseError> {
        self.set(key, ns);
        prop_assert_eq!(self.value.value(), model.values.get(&(key, ns)).copied(), "value of {:?}", (key, ns));
        prop_assert_eq!(self.list.get(), model.lists.get(&(key, ns)).cloned().unwrap_or_default());
        let mut entries = self.map.entries();
        entries.sort();
        let expected: Vec<(u8, String)> =
            model.maps.get(&(key, ns)).map(|m| m.clone().into_iter().collect()).unwrap_or_default();
        prop_assert_eq!(entries, expected);
        Ok(())
    }

    fn check_all(&mut self, model: &Model) -> Result<(), TestCaseError> {
        let range = self.backend.key_groups();
        for key in (0..KEYS).filter(|k| range.contains(assign_key_group(k, MAX_P))) {
            for ns in 0..NAMESPACES {
                self.check(model, key, ns)?;
            }
        }
        prop_assert_eq!(self.backend.num_entries(), model.entries_in(range));
        Ok(())
    }
}

fn merge_sources(target: u8, sources: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    for &s in sources {
        if s != target && !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen
}

fn apply(h: &mut Handles, model: &mut Model, key: &mut u64, ns: &mut u8, op: &Op) {
    let at = (*key, *ns);
    match op {
        Op::Key(k) => *key = *k,
        Op::Namespace(n) => *ns = *n,
        Op::ValueUpdate(v) => {
            h.value.update(*v);
            model.values.insert(at, *v);
        }
        Op::ValueAddWith(d) => {
            let old = h.value.update_with(|v| {
                let old = *v;
                *v = Some(v.unwrap_or(0).wrapping_add(*d));
                old
            });
            assert_eq!(old, model.values.get(&at).copied());
            *model.values.entry(at).or_insert(0) = old.unwrap_or(0).wrapping_add(*d);
        }
        Op::ValueClearWith => {
            h.value.update_with(|v| *v = None);
            model.values.remove(&at);
        }
        Op::ValueClear => {
            h.value.clear();
            model.values.remove(&at);
        }
        Op::ValueMerge(target, sources) => {
            h.value.merge_namespaces(target, sources);
            let mut first = None;
            for s in merge_sources(*target, sources) {
                if let Some(v) = model.values.remove(&(*key, s)) {
                    first = first.or(Some(v));
                }
            }
            if let Some(v) = first {
                model.values.entry((*key, *target)).or_insert(v);
            }
        }
        Op::ListAdd(v) => {
            h.list.add(*v);
            model.lists.entry(at).or_default().push(*v);
        }
        Op::ListAddAll(vs) => {
            h.list.add_all(vs.clone());
            if !vs.is_empty() {
                model.lists.entry(at).or_default().extend(vs);
            }
        }
        Op::ListUpdate(vs) => {
            h.list.update(vs.clone());
            if vs.is_empty() {
                model.lists.remove(&at);
            } else {
                model.lists.insert(at, vs.clone());
            }
        }
        Op::ListClear => {
            h.list.clear();
            model.lists.remove(&at);
        }
        Op::ListMerge(target, sources) => {
            h.list.merge_namespaces(target, sources);
            let mut moved = Vec::new();
            for s in merge_sources(*target, sources) {
                moved.extend(model.lists.remove(&(*key, s)).unwrap_or_default());
            }
            if !moved.is_empty() {
                model.lists.entry((*key, *target)).or_default().extend(moved);
            }
        }
        Op::MapPut(k, v) => {
            h.map.put(*k, v.clone());
            model.maps.entry(at).or_default().insert(*k, v.clone());
        }
        Op::MapRemove(k) => {
            let removed = h.map.remove(k);
            let expected = model.maps.get_mut(&at).and_then(|m| m.remove(k));
            assert_eq!(removed, expected);
            if model.maps.get(&at).is_some_and(BTreeMap::is_empty) {
                model.maps.remove(&at);
            }
        }
        Op::MapClear => {
            h.map.clear();
            model.maps.remove(&at);
        }
        Op::Snapshot => {}
    }
}

fn backend_kind() -> impl Strategy<Value = StateBackendKind> {
    prop_oneof![Just(StateBackendKind::Heap), Just(StateBackendKind::Lsm)]
}

fn parallelism_two() -> [KeyGroupRange; 2] {
    [key_group_range(MAX_P, 2, 0), key_group_range(MAX_P, 2, 1)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn keyed_state_matches_a_hashmap_model(
        ops in proptest::collection::vec(op(), 1..120),
        kind in backend_kind(),
        restore_kind in backend_kind(),
    ) {
        let full = KeyGroupRange { start: 0, end: MAX_P };
        let mut h = Handles::new(kind, full);
        let mut model = Model::default();
        let (mut key, mut ns) = (0u64, 0u8);
        let mut snapshots: Vec<(KeyedStateSnapshot, Model)> = Vec::new();
        for op in &ops {
            h.set(key, ns);
            apply(&mut h, &mut model, &mut key, &mut ns, op);
            if let Op::Snapshot = op {
                snapshots.push((h.backend.snapshot().unwrap(), model.clone()));
            }
            h.check(&model, key, ns)?;
        }
        h.check_all(&model)?;

        for (snapshot, at_snapshot) in &snapshots {
            let mut restored = Handles::new(restore_kind, full);
            restored.backend.restore(std::slice::from_ref(snapshot)).unwrap();
            restored.check_all(at_snapshot)?;
            let mut halves = 0;
            for range in parallelism_two() {
                let mut half = Handles::new(restore_kind, range);
                half.backend.restore(std::slice::from_ref(snapshot)).unwrap();
                half.check_all(at_snapshot)?;
                halves += half.backend.num_entries();
            }
            prop_assert_eq!(halves, restored.backend.num_entries(), "the halves split the entries");
        }

        // Restoring the halves' snapshots together gives the whole again (scale in).
        let final_snapshot = h.backend.snapshot().unwrap();
        let halves: Vec<KeyedStateSnapshot> = parallelism_two()
            .into_iter()
            .map(|range| {
                let mut half = Handles::new(kind, range);
                half.backend.restore(std::slice::from_ref(&final_snapshot)).unwrap();
                half.backend.snapshot().unwrap()
            })
            .collect();
        let mut merged = Handles::new(restore_kind, full);
        merged.backend.restore(&halves).unwrap();
        merged.check_all(&model)?;
    }
}
