//! A snapshot between its two parts. The synchronous part, on the task's thread, copies what it
//! must (a frozen copy of keyed state and timers, a source position) and leaves the encoding of
//! large parts to the asynchronous part: such a part is added with a placeholder and a closure
//! that encodes the copy ([`PendingParts::push_deferred`]). The snapshot writer, off the slot's
//! thread, runs the closures ([`PendingSnapshot::complete`]) before it writes the task's file,
//! so a slot stops for the copy only, never for serialization. A closure that fails fails that
//! task's part of the checkpoint, which is then declined. A closure may also upload files to
//! the checkpoint storage's shared area (an incremental snapshot of the LSM backend) through
//! [`PartFiles`], which records every shared file the task's state uses for its
//! acknowledgement.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use corestream_state::lsm::{SharedFile, SharedFileRef, SharedFileStore};

use super::{OperatorStateParts, PartLayout, TaskSnapshot};
use crate::BarrierKind;

/// Encodes one state part, on the snapshot writer's thread; an error names what failed.
pub type EncodePart = Box<dyn FnOnce(&mut PartFiles<'_>) -> Result<Vec<u8>, String> + Send>;

/// The shared area of the checkpoint storage as the asynchronous part sees it, and the shared
/// files the task's parts use.
pub struct PartFiles<'a> {
    pub store: &'a dyn SharedFileStore,
    pub used: Vec<SharedFileRef>,
}

impl<'a> PartFiles<'a> {
    pub fn new(store: &'a dyn SharedFileStore) -> Self {
        Self { store, used: Vec::new() }
    }
}

/// The shared area of a snapshot that is not written to a checkpoint storage (tests, the
/// encoding of a snapshot in memory): any upload fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSharedFiles;

impl SharedFileStore for NoSharedFiles {
    fn location(&self) -> String {
        String::new()
    }

    fn upload(&self, local: &Path) -> Result<SharedFile, String> {
        Err(format!("{} cannot be uploaded: this snapshot has no checkpoint storage", local.display()))
    }

    fn download(&self, file: &SharedFile, _dest: &Path) -> Result<(), String> {
        Err(format!("shared file {} cannot be read: no checkpoint storage was given", file.name))
    }
}

/// The parts one operator subtask snapshotted, some of them still to be encoded. It reads and
/// writes as the [`OperatorStateParts`] it becomes.
#[derive(Default)]
pub struct PendingParts {
    parts: OperatorStateParts,
    /// A savepoint's: every part in the canonical, backend-independent format.
    canonical: bool,
    /// (index of the placeholder in `parts.parts`, its encoder).
    deferred: Vec<(usize, EncodePart)>,
}

impl std::fmt::Debug for PendingParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingParts")
            .field("parts", &self.parts)
            .field("deferred", &self.deferred.iter().map(|(i, _)| i).collect::<Vec<_>>())
            .finish()
    }
}

impl PendingParts {
    /// The parts of one operator for `snapshot` (canonical when it is).
    pub fn for_snapshot(snapshot: &PendingSnapshot) -> Self {
        Self { canonical: snapshot.canonical, ..Self::default() }
    }

    /// Whether the parts must be canonical (a savepoint): keyed state as key-group bytes,
    /// never files of one backend.
    pub fn is_canonical(&self) -> bool {
        self.canonical
    }

    /// Adds part `name`, whose bytes `encode` makes later, off the task's thread.
    pub fn push_deferred(&mut self, name: impl Into<String>, layout: PartLayout, encode: EncodePart) {
        self.deferred.push((self.parts.parts.len(), encode));
        self.parts.push(name, layout, Vec::new());
    }

    /// The parts, with every deferred one encoded now (on this thread), without shared files.
    pub fn complete(self) -> Result<OperatorStateParts, String> {
        let mut files = PartFiles::new(&NoSharedFiles);
        let mut parts = self.parts;
        for (index, encode) in self.deferred {
            parts.parts[index].bytes = encode(&mut files)?;
        }
        Ok(parts)
    }
}

impl Deref for PendingParts {
    type Target = OperatorStateParts;
    fn deref(&self) -> &OperatorStateParts {
        &self.parts
    }
}

impl DerefMut for PendingParts {
    fn deref_mut(&mut self) -> &mut OperatorStateParts {
        &mut self.parts
    }
}

/// A task's snapshot after its synchronous part: what the task hands to the snapshot writer.
/// It reads and writes as the [`TaskSnapshot`] it becomes.
#[derive(Default)]
pub struct PendingSnapshot {
    snapshot: TaskSnapshot,
    canonical: bool,
    /// (index of the node in `snapshot.nodes`, index of the part in its parts, encoder).
    deferred: Vec<(usize, usize, EncodePart)>,
}

impl std::fmt::Debug for PendingSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSnapshot")
            .field("snapshot", &self.snapshot)
            .field("deferred", &self.deferred.len())
            .finish()
    }
}

impl From<TaskSnapshot> for PendingSnapshot {
    fn from(snapshot: TaskSnapshot) -> Self {
        Self { snapshot, canonical: false, deferred: Vec::new() }
    }
}

impl PendingSnapshot {
    /// An empty snapshot for a barrier of `kind`: canonical for a savepoint.
    pub fn of_barrier(kind: BarrierKind) -> Self {
        Self { canonical: kind == BarrierKind::Savepoint, ..Self::default() }
    }

    /// Whether it is a savepoint's (see [`PendingParts::is_canonical`]).
    pub fn is_canonical(&self) -> bool {
        self.canonical
    }

    /// Adds the state of graph node `node` (nothing when it is empty).
    pub fn put_node_pending(&mut self, node: usize, parts: PendingParts) {
        if parts.is_empty() {
            return;
        }
        let entry = self.snapshot.nodes.len();
        self.deferred.extend(parts.deferred.into_iter().map(|(part, encode)| (entry, part, encode)));
        self.snapshot.nodes.push((node as u32, parts.parts));
    }

    /// Parts still to be encoded.
    pub fn deferred(&self) -> usize {
        self.deferred.len()
    }

    /// The snapshot, with every deferred part encoded (the asynchronous part's first step),
    /// without shared files.
    pub fn complete(self) -> Result<TaskSnapshot, String> {
        self.complete_with(&NoSharedFiles).map(|(snapshot, _)| snapshot)
    }

    /// As [`complete`](Self::complete), uploading to `store`; also returns every shared file the
    /// snapshot uses, each once.
    pub fn complete_with(self, store: &dyn SharedFileStore) -> Result<(TaskSnapshot, Vec<SharedFileRef>), String> {
        let mut files = PartFiles::new(store);
        let mut snapshot = self.snapshot;
        for (entry, part, encode) in self.deferred {
            snapshot.nodes[entry].1.parts[part].bytes = encode(&mut files)?;
        }
        let mut seen = std::collections::HashSet::new();
        files.used.retain(|r| seen.insert(r.file.name.clone()));
        Ok((snapshot, files.used))
    }
}

impl Deref for PendingSnapshot {
    type Target = TaskSnapshot;
    fn deref(&self) -> &TaskSnapshot {
        &self.snapshot
    }
}

impl DerefMut for PendingSnapshot {
    fn deref_mut(&mut self) -> &mut TaskSnapshot {
        &mut self.snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_parts_are_encoded_in_their_places_when_completed() {
        let mut parts = PendingParts::default();
        parts.push("position", PartLayout::Subtask, vec![1]);
        parts.push_deferred("keyed-state", PartLayout::KeyGroups, Box::new(|_| Ok(vec![2, 3])));
        parts.push("watermark", PartLayout::OperatorList, vec![4]);
        let mut other = PendingParts::default();
        other.push_deferred("timers", PartLayout::KeyGroups, Box::new(|_| Ok(vec![5])));
        let mut snapshot = PendingSnapshot::default();
        snapshot.put_node_pending(3, parts);
        snapshot.put_node_pending(4, PendingParts::default());
        snapshot.put_node_pending(7, other);
        assert_eq!(snapshot.deferred(), 2);
        assert_eq!(snapshot.node(3).and_then(|p| p.get("keyed-state")).map(|p| p.bytes.len()), Some(0));

        let done = snapshot.complete().unwrap();
        let bytes = |node: usize, name: &str| done.node(node).and_then(|p| p.get(name)).map(|p| p.bytes.clone());
        assert_eq!(bytes(3, "position"), Some(vec![1]));
        assert_eq!(bytes(3, "keyed-state"), Some(vec![2, 3]));
        assert_eq!(bytes(3, "watermark"), Some(vec![4]));
        assert_eq!(bytes(7, "timers"), Some(vec![5]));
        assert!(done.node(4).is_none(), "an empty node is left out");
    }

    #[test]
    fn a_failing_encoder_fails_the_snapshot_with_its_message() {
        let mut parts = PendingParts::default();
        parts.push_deferred("keyed-state", PartLayout::KeyGroups, Box::new(|_| Err("state 'count': too large".into())));
        let mut snapshot = PendingSnapshot::default();
        snapshot.put_node_pending(1, parts);
        assert_eq!(snapshot.complete().unwrap_err(), "state 'count': too large");
    }
}
