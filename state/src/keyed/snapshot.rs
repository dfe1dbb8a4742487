//! The snapshot of a keyed state backend: per key group, per state, one archive of that state's
//! live entries `Vec<(K, N, S)>` (`S`: the value, the list, or the map's `(key, value)` pairs,
//! each with its expiry time under TTL). Key groups are the unit, so a restore at another
//! parallelism takes exactly the key groups it owns. The types derive rkyv so a checkpoint can
//! write them as they are.

use rkyv::{Archive, Deserialize, Serialize};

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

impl KeyedStateSnapshot {
    /// Number of bytes of archived state.
    pub fn size_bytes(&self) -> usize {
        self.key_groups.iter().flat_map(|g| &g.states).map(|s| s.bytes.len()).sum()
    }
}
