//! The snapshot of a keyed state backend: per key group, per state, one archive of that state's
//! live entries `Vec<(K, N, S)>` (`S`: the value, the list, or the map's `(key, value)` pairs,
//! each with its expiry time under TTL). Key groups are the unit, so a restore at another
//! parallelism takes exactly the key groups it owns. The types derive rkyv so a checkpoint can
//! write them as they are.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize, Serialize};

use super::{StateKey, StateValue};
use crate::codec;
use crate::error::StateError;
use crate::keygroup::{assign_key_group, KeyGroupRange};

/// The kind of a keyed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
pub enum StateKind {
    Value,
    List,
    Map,
    Reducing,
    Aggregating,
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
            StateKind::Aggregating => "aggregating",
        })
    }
}

/// Every state of one backend, by key group.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct KeyedStateSnapshot {
    pub max_parallelism: u32,
    /// Key groups holding at least one live entry, ascending.
    pub key_groups: Vec<KeyGroupSnapshot>,
}

/// The states of one key group.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct KeyGroupSnapshot {
    pub key_group: u32,
    /// States with at least one live entry in this key group, by name.
    pub states: Vec<NamedStateBytes>,
}

/// One state's entries in one key group.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct NamedStateBytes {
    pub name: String,
    pub kind: StateKind,
    /// The Rust type archived in `bytes`, checked on restore.
    pub value_type: String,
    /// xxh3 of `bytes`, checked on restore.
    pub checksum: u64,
    /// `corestream_netstack::record::to_bytes` of the entries.
    pub bytes: Vec<u8>,
}

/// How a value state without TTL in the void namespace archives the entries of one key group
/// (the heap backend's layout: `(key, namespace, value cell)`).
type ValueEntries<K, V> = Vec<(K, (), Option<V>)>;

impl crate::codec::part::SizeHint for KeyedStateSnapshot {
    fn archive_size_hint(&self) -> usize {
        let states = self.key_groups.iter().flat_map(|g| &g.states);
        let bytes: usize = states.map(|s| s.bytes.len() + s.name.len() + s.value_type.len() + 64).sum();
        bytes + bytes / 8 + 16 * self.key_groups.len() + 4096
    }
}

impl KeyedStateSnapshot {
    /// Number of bytes of archived state.
    pub fn size_bytes(&self) -> usize {
        self.key_groups.iter().flat_map(|g| &g.states).map(|s| s.bytes.len()).sum()
    }

    /// The snapshot of one value state `name` (no TTL, void namespace) holding `entries`, laid
    /// out as [`KeyedStateBackend::snapshot`](super::KeyedStateBackend::snapshot) writes it: for
    /// operators that keep per-key values in a structure of their own (the running keyed
    /// reduce) yet snapshot and rescale like keyed state. It restores into a backend's
    /// `value_state::<(), V>(name)`.
    pub fn of_values<'a, K: StateKey, V: StateValue>(
        name: &str,
        max_parallelism: u32,
        entries: impl IntoIterator<Item = (&'a K, &'a V)>,
    ) -> Result<Self, StateError> {
        let mut groups: BTreeMap<u32, ValueEntries<K, V>> = BTreeMap::new();
        for (key, value) in entries {
            let key_group = assign_key_group(key, max_parallelism);
            groups.entry(key_group).or_default().push((key.clone(), (), Some(value.clone())));
        }
        let mut key_groups = Vec::with_capacity(groups.len());
        for (key_group, entries) in groups {
            let encoded = codec::encode(&entries, || format!("value state '{name}'"))?;
            let state = NamedStateBytes {
                name: name.to_owned(),
                kind: StateKind::Value,
                value_type: encoded.value_type,
                checksum: encoded.checksum,
                bytes: encoded.bytes,
            };
            key_groups.push(KeyGroupSnapshot { key_group, states: vec![state] });
        }
        Ok(Self { max_parallelism, key_groups })
    }

    /// The entries of value state `name` (no TTL, void namespace) in the key groups `range`,
    /// checked as a backend's restore checks them (type, checksum, validation, the key group of
    /// every key): the inverse of [`of_values`](Self::of_values), which also reads a backend's
    /// snapshot.
    pub fn values<K: StateKey, V: StateValue>(
        &self,
        name: &str,
        range: KeyGroupRange,
    ) -> Result<Vec<(K, V)>, StateError> {
        let mut values = Vec::new();
        for group in self.key_groups.iter().filter(|g| range.contains(g.key_group)) {
            let key_group = group.key_group;
            for state in group.states.iter().filter(|s| s.name == name) {
                let what = || format!("{} state '{name}'", state.kind);
                if state.kind != StateKind::Value {
                    let reason = format!("it is a {} state, expected a value state", state.kind);
                    return Err(StateError::Corrupt { what: what(), key_group, reason });
                }
                let entries: ValueEntries<K, V> =
                    codec::decode(&state.value_type, state.checksum, &state.bytes, what, key_group)?;
                for (key, (), value) in entries {
                    let found = assign_key_group(&key, self.max_parallelism);
                    if found != key_group {
                        let reason = format!("it holds a key of key group {found}");
                        return Err(StateError::Corrupt { what: what(), key_group, reason });
                    }
                    if let Some(value) = value {
                        values.push((key, value));
                    }
                }
            }
        }
        Ok(values)
    }
}
