//! Operator state (Flink's `OperatorStateStore`): state of one operator subtask that is not
//! scoped to a key, and how it is redistributed when a job is restored.
//!
//! - [`OperatorListState`]: a list per subtask; on restore the elements of every old subtask
//!   are dealt round-robin over the new subtasks (unchanged at the same parallelism).
//! - [`UnionListState`]: a list per subtask; on restore every subtask gets the elements of all.
//! - [`BroadcastState`]: the map of a keyed broadcast operator, the same on every subtask; each
//!   subtask writes its copy and a restore gives each subtask one copy.
//!
//! Non-keyed process functions declare list state by name in
//! [`ProcessFunction::open`](super::process::ProcessFunction::open) through a
//! [`RuntimeContext`]; the `OperatorStateStore` behind it writes one part per state
//! (`list/<name>`, layout `OperatorList` or `UnionList`, bytes: the framed archive of a
//! [`ListStateBytes`], one archive per element so a rescale can deal elements without knowing
//! their type) and keeps the parts of states it restored but that were not declared (yet), so a
//! snapshot taken in between carries them over unchanged. Everything lives on the subtask's
//! thread (`Rc`/`RefCell`).

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::rc::Rc;

use corestream_netstack::record::to_bytes;
use corestream_state::{part, StateError, StateKey, StateValue};
use hashbrown::HashMap;
use rkyv::{Archive, Deserialize, Serialize};

use super::state_parts::{self, PartError};
use crate::checkpoint::{OperatorStateParts, PartLayout, PendingParts};

/// Name of the part holding a keyed broadcast operator's broadcast state.
pub(crate) const BROADCAST_STATE_PART: &str = "broadcast-state";
/// Prefix of the part names of list and union list states.
pub(crate) const LIST_PART_PREFIX: &str = "list/";

/// The elements of one list state of one subtask, each archived on its own.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ListStateBytes {
    /// The element type (`std::any::type_name`), checked on restore.
    pub value_type: String,
    /// `corestream_netstack::record::to_bytes` of each element, in list order.
    pub elements: Vec<Vec<u8>>,
}

impl ListStateBytes {
    /// Encodes the framed archive of a list state.
    pub(crate) fn encode(&self, part: &str) -> Result<Vec<u8>, PartError> {
        part::encode(self).map_err(|e| PartError::state(part, e))
    }

    /// Reads back a framed archive made by [`encode`](Self::encode).
    pub(crate) fn decode(part: &str, bytes: &[u8]) -> Result<Self, PartError> {
        part::decode(bytes).map_err(|e| PartError::state(part, e))
    }
}

/// A list of `T` in the operator state of one subtask, redistributed round-robin on restore.
/// Handles are cheap clones of one list.
pub struct OperatorListState<T> {
    list: Rc<RefCell<Vec<T>>>,
}

/// A list of `T` in the operator state of one subtask; on restore every subtask gets the
/// elements of all subtasks (Flink's union list state, e.g. for source offsets that each subtask
/// filters by what it owns).
pub struct UnionListState<T> {
    list: Rc<RefCell<Vec<T>>>,
}

macro_rules! list_methods {
    ($ty:ident) => {
        impl<T> Clone for $ty<T> {
            fn clone(&self) -> Self {
                Self { list: self.list.clone() }
            }
        }

        impl<T: Clone> $ty<T> {
            /// The elements, in order.
            pub fn get(&self) -> Vec<T> {
                self.list.borrow().clone()
            }
        }

        impl<T> $ty<T> {
            pub fn add(&self, value: T) {
                self.list.borrow_mut().push(value);
            }
            pub fn add_all(&self, values: impl IntoIterator<Item = T>) {
                self.list.borrow_mut().extend(values);
            }
            /// Replaces the elements.
            pub fn update(&self, values: Vec<T>) {
                *self.list.borrow_mut() = values;
            }
            pub fn clear(&self) {
                self.list.borrow_mut().clear();
            }
            pub fn len(&self) -> usize {
                self.list.borrow().len()
            }
            pub fn is_empty(&self) -> bool {
                self.list.borrow().is_empty()
            }
            /// Runs `f` over the elements without copying them.
            pub fn with<R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
                f(&self.list.borrow())
            }
        }
    };
}

list_methods!(OperatorListState);
list_methods!(UnionListState);

/// Why a state could not be declared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorStateError {
    #[error(
        "operator state '{name}' is {registered}, but was requested as {requested}; \
         a name keeps its kind and type for the lifetime of the job (use another name)"
    )]
    Incompatible { name: String, registered: String, requested: String },
    #[error("restoring operator state '{name}': {reason}")]
    Restore { name: String, reason: String },
}

/// One declared list state, type-erased.
trait ErasedList {
    fn snapshot(&self) -> Result<ListStateBytes, StateError>;
    /// Reads restored elements (checked against the element type) without applying them.
    fn decode(&self, bytes: &ListStateBytes) -> Result<Box<dyn Any>, String>;
    /// Replaces the elements with what `decode` returned.
    fn replace(&self, decoded: Box<dyn Any>);
    fn as_any(&self) -> &dyn Any;
}

impl<T: StateValue> ErasedList for Rc<RefCell<Vec<T>>> {
    fn snapshot(&self) -> Result<ListStateBytes, StateError> {
        let elements = self.borrow().iter().map(|e| to_bytes(e)).collect::<Result<Vec<_>, _>>().map_err(|e| {
            StateError::Serialization { what: std::any::type_name::<T>().into(), reason: e.to_string() }
        })?;
        Ok(ListStateBytes { value_type: std::any::type_name::<T>().to_owned(), elements })
    }

    fn decode(&self, bytes: &ListStateBytes) -> Result<Box<dyn Any>, String> {
        let expected = std::any::type_name::<T>();
        if bytes.value_type != expected {
            return Err(format!("it holds elements of {}, declared as {expected}", bytes.value_type));
        }
        let elements = bytes
            .elements
            .iter()
            .enumerate()
            .map(|(i, e)| part::decode_archive::<T>(e).map_err(|e| format!("element {i}: {e}")))
            .collect::<Result<Vec<T>, String>>()?;
        Ok(Box::new(elements))
    }

    fn replace(&self, decoded: Box<dyn Any>) {
        if let Ok(elements) = decoded.downcast::<Vec<T>>() {
            *self.borrow_mut() = *elements;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Registered {
    layout: PartLayout,
    value_type: &'static str,
    list: Box<dyn ErasedList>,
}

/// The list and union list states of one operator subtask, by name.
#[derive(Default)]
pub(crate) struct OperatorStateStore {
    states: BTreeMap<String, Registered>,
    /// Restored states not declared yet: name → (layout, elements).
    pending: BTreeMap<String, (PartLayout, ListStateBytes)>,
    restored: bool,
}

fn describe(layout: PartLayout, value_type: &str) -> String {
    let kind = if layout == PartLayout::UnionList { "union list state" } else { "list state" };
    format!("a {kind} of {value_type}")
}

fn part_name(name: &str) -> String {
    format!("{LIST_PART_PREFIX}{name}")
}

impl OperatorStateStore {
    /// Whether state was restored from a checkpoint.
    pub(crate) fn is_restored(&self) -> bool {
        self.restored
    }

    fn declare<T: StateValue>(
        &mut self,
        name: &str,
        layout: PartLayout,
    ) -> Result<Rc<RefCell<Vec<T>>>, OperatorStateError> {
        let value_type = std::any::type_name::<T>();
        if let Some(registered) = self.states.get(name) {
            let typed = registered.list.as_any().downcast_ref::<Rc<RefCell<Vec<T>>>>();
            return match typed {
                Some(list) if registered.layout == layout => Ok(list.clone()),
                _ => Err(OperatorStateError::Incompatible {
                    name: name.to_owned(),
                    registered: describe(registered.layout, registered.value_type),
                    requested: describe(layout, value_type),
                }),
            };
        }
        let list: Rc<RefCell<Vec<T>>> = Rc::new(RefCell::new(Vec::new()));
        if let Some((restored_layout, bytes)) = self.pending.get(name) {
            if *restored_layout != layout {
                return Err(OperatorStateError::Incompatible {
                    name: name.to_owned(),
                    registered: format!("restored as {}", describe(*restored_layout, &bytes.value_type)),
                    requested: describe(layout, value_type),
                });
            }
            let decoded =
                list.decode(bytes).map_err(|reason| OperatorStateError::Restore { name: name.to_owned(), reason })?;
            list.replace(decoded);
            self.pending.remove(name);
        }
        self.states.insert(name.to_owned(), Registered { layout, value_type, list: Box::new(list.clone()) });
        Ok(list)
    }

    /// Adds one part per declared state and per restored state not declared.
    pub(crate) fn snapshot(&self, into: &mut PendingParts) -> Result<(), PartError> {
        for (name, registered) in &self.states {
            let part = part_name(name);
            let bytes = registered.list.snapshot().map_err(|e| PartError::state(&part, e))?;
            let encoded = bytes.encode(&part)?;
            into.push(part, registered.layout, encoded);
        }
        for (name, (layout, bytes)) in &self.pending {
            let part = part_name(name);
            let encoded = bytes.encode(&part)?;
            into.push(part, *layout, encoded);
        }
        Ok(())
    }

    /// Takes the list parts of `from` (all occurrences of a name, concatenated): declared states
    /// are replaced, the others kept until they are declared. Every part is read and checked
    /// before anything changes.
    pub(crate) fn restore(&mut self, from: &OperatorStateParts) -> Result<(), PartError> {
        let mut restored: BTreeMap<String, (PartLayout, ListStateBytes)> = BTreeMap::new();
        for p in &from.parts {
            let Some(name) = p.name.strip_prefix(LIST_PART_PREFIX) else { continue };
            if !matches!(p.layout, PartLayout::OperatorList | PartLayout::UnionList) {
                let expected = PartLayout::OperatorList;
                return Err(PartError::Layout { part: p.name.clone(), found: p.layout, expected });
            }
            let bytes = ListStateBytes::decode(&p.name, &p.bytes)?;
            match restored.get_mut(name) {
                None => {
                    restored.insert(name.to_owned(), (p.layout, bytes));
                }
                Some((layout, merged)) => {
                    if *layout != p.layout {
                        let (found, expected) = (p.layout, *layout);
                        return Err(PartError::Layout { part: p.name.clone(), found, expected });
                    }
                    merged.elements.extend(bytes.elements);
                }
            }
        }
        let mut decoded = Vec::new();
        for (name, (layout, bytes)) in &restored {
            if let Some(registered) = self.states.get(name) {
                let part = part_name(name);
                if registered.layout != *layout {
                    return Err(PartError::Layout { part, found: *layout, expected: registered.layout });
                }
                let elements = registered.list.decode(bytes).map_err(|reason| {
                    PartError::state(&part, StateError::InvalidPart { type_name: "a list state".into(), reason })
                })?;
                decoded.push((name.clone(), elements));
            }
        }
        for (name, elements) in decoded {
            restored.remove(&name);
            if let Some(registered) = self.states.get(&name) {
                registered.list.replace(elements);
            }
        }
        self.pending = restored;
        self.restored = true;
        Ok(())
    }
}

/// Set-up of a non-keyed process function on its subtask: where it declares its operator state
/// (Flink's `FunctionInitializationContext` of a `CheckpointedFunction`).
pub struct RuntimeContext<'a> {
    store: &'a mut OperatorStateStore,
    subtask: u32,
    parallelism: u32,
}

impl<'a> RuntimeContext<'a> {
    pub(crate) fn new(store: &'a mut OperatorStateStore, subtask: u32, parallelism: u32) -> Self {
        Self { store, subtask, parallelism }
    }

    /// The list state `name`, with the elements a restore dealt to this subtask. Declaring a
    /// name again gives another handle on the same list.
    pub fn list_state<T: StateValue>(&mut self, name: &str) -> Result<OperatorListState<T>, OperatorStateError> {
        Ok(OperatorListState { list: self.store.declare(name, PartLayout::OperatorList)? })
    }

    /// The union list state `name`, with the elements every subtask had when restored.
    pub fn union_list_state<T: StateValue>(&mut self, name: &str) -> Result<UnionListState<T>, OperatorStateError> {
        Ok(UnionListState { list: self.store.declare(name, PartLayout::UnionList)? })
    }

    /// Whether this subtask was restored from a checkpoint (its states hold what was restored).
    pub fn is_restored(&self) -> bool {
        self.store.is_restored()
    }

    pub fn subtask(&self) -> u32 {
        self.subtask
    }

    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }
}

/// The broadcast state of a
/// [`KeyedBroadcastProcessFunction`](super::join::KeyedBroadcastProcessFunction): the same map
/// on every subtask, read and written as a `HashMap` (it dereferences to one). Each subtask
/// snapshots its copy (`broadcast-state`, layout `Broadcast`); a restore gives each subtask one.
#[derive(Debug, Clone)]
pub struct BroadcastState<K, V> {
    map: HashMap<K, V>,
}

impl<K, V> Default for BroadcastState<K, V> {
    fn default() -> Self {
        Self { map: HashMap::new() }
    }
}

impl<K, V> BroadcastState<K, V> {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K, V> std::ops::Deref for BroadcastState<K, V> {
    type Target = HashMap<K, V>;
    fn deref(&self) -> &HashMap<K, V> {
        &self.map
    }
}

impl<K, V> std::ops::DerefMut for BroadcastState<K, V> {
    fn deref_mut(&mut self) -> &mut HashMap<K, V> {
        &mut self.map
    }
}

impl<K: StateKey + Hash + Eq, V: StateValue> BroadcastState<K, V> {
    /// Adds the `broadcast-state` part.
    pub(crate) fn snapshot(&self, into: &mut PendingParts) -> Result<(), PartError> {
        let entries: Vec<(K, V)> = self.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        state_parts::put(into, BROADCAST_STATE_PART, PartLayout::Broadcast, &entries)
    }

    /// Replaces the map with the `broadcast-state` part of `from`, if it has one.
    pub(crate) fn restore(&mut self, from: &OperatorStateParts) -> Result<(), PartError> {
        if let Some(entries) = state_parts::get_one::<Vec<(K, V)>>(from, BROADCAST_STATE_PART, PartLayout::Broadcast)? {
            self.map = entries.into_iter().collect();
        }
        Ok(())
    }
}
