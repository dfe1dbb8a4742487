//! The shared-state registry: which files of the storage's shared area (incremental snapshots)
//! completed checkpoints use, and when one may be deleted. As Flink's current
//! `SharedStateRegistryImpl`, it records for each file the last completed checkpoint that uses
//! it instead of a reference count: a file is deleted once that checkpoint is older than the
//! oldest retained one and no pending checkpoint's acknowledgement names it. Pure: the
//! coordinator asks, the job master deletes.
//!
//! A task reuses only files of the newest checkpoint it was told is complete, and says so in its
//! acknowledgement; a reused file the registry no longer has (deleted after a newer checkpoint
//! completed without it, before the task heard of that one) fails that checkpoint, as Flink's
//! registry refuses a placeholder for an unknown file. The next checkpoint uploads afresh.

use std::collections::{BTreeMap, BTreeSet};

use super::metadata::CheckpointMetadata;
use super::CheckpointId;

/// Shared files of completed checkpoints, by name (`shared/<file>`), with the last completed
/// checkpoint using each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedRegistry {
    last_used: BTreeMap<String, CheckpointId>,
}

impl SharedRegistry {
    /// The registry of the completed checkpoints in storage (after a restart).
    pub fn of_checkpoints<'a>(checkpoints: impl IntoIterator<Item = &'a CheckpointMetadata>) -> Self {
        let mut registry = Self::default();
        for meta in checkpoints {
            let files = meta.tasks.iter().flat_map(|t| &t.handle.shared).map(|r| r.file.name.as_str());
            registry.register(meta.id, files);
        }
        registry
    }

    /// Completed checkpoint `id` uses `files`.
    pub fn register<'a>(&mut self, id: CheckpointId, files: impl IntoIterator<Item = &'a str>) {
        for file in files {
            let last = self.last_used.entry(file.to_owned()).or_insert(id);
            *last = (*last).max(id);
        }
    }

    pub fn contains(&self, file: &str) -> bool {
        self.last_used.contains_key(file)
    }

    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }

    /// Forgets and returns the files that no checkpoint from `oldest_retained` on uses and that
    /// `in_use` (what pending checkpoints' acknowledgements name) does not hold: those to
    /// delete. With no retained checkpoint nothing is released.
    pub fn release(&mut self, oldest_retained: Option<CheckpointId>, in_use: &BTreeSet<String>) -> Vec<String> {
        let Some(oldest) = oldest_retained else { return Vec::new() };
        let unused: Vec<String> = self
            .last_used
            .iter()
            .filter(|(file, &last)| last < oldest && !in_use.contains(*file))
            .map(|(file, _)| file.clone())
            .collect();
        for file in &unused {
            self.last_used.remove(file);
        }
        unused
    }

    /// Of the files `listed` in storage, those the registry does not know and `in_use` does not
    /// hold: left by attempts that ended before their checkpoint completed.
    pub fn orphans(&self, listed: &[String], in_use: &BTreeSet<String>) -> Vec<String> {
        listed.iter().filter(|f| !self.contains(f) && !in_use.contains(*f)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::tests::metadata;
    use crate::checkpoint::metadata::{SharedFile, SharedFileRef};

    fn set(files: &[&str]) -> BTreeSet<String> {
        files.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn a_file_goes_once_no_retained_checkpoint_uses_it() {
        let mut r = SharedRegistry::default();
        r.register(1, ["a", "b"]);
        r.register(2, ["a", "c"]);
        assert_eq!(r.release(Some(1), &set(&[])), Vec::<String>::new());
        assert_eq!(r.release(Some(2), &set(&[])), ["b"], "checkpoint 2 no longer uses b");
        r.register(3, ["c", "d"]);
        assert_eq!(r.release(Some(3), &set(&[])), ["a"]);
        assert!(r.contains("c") && r.contains("d") && !r.contains("a"));
        assert_eq!(r.release(None, &set(&[])), Vec::<String>::new());
    }

    #[test]
    fn a_file_a_pending_checkpoint_names_stays() {
        let mut r = SharedRegistry::default();
        r.register(1, ["a", "b"]);
        r.register(2, ["c"]);
        assert_eq!(r.release(Some(2), &set(&["a"])), ["b"]);
        assert!(r.contains("a"));
        r.register(3, ["a"]);
        assert_eq!(r.release(Some(3), &set(&[])), ["c"]);
        assert!(r.contains("a"), "checkpoint 3 uses it now");
    }

    #[test]
    fn registering_an_older_checkpoint_never_moves_a_file_back() {
        let mut r = SharedRegistry::default();
        r.register(5, ["a"]);
        r.register(3, ["a"]);
        assert_eq!(r.release(Some(5), &set(&[])), Vec::<String>::new());
    }

    #[test]
    fn the_registry_of_stored_checkpoints_and_their_orphans() {
        let mut one = metadata(1, &[2]);
        let mut two = metadata(2, &[2]);
        let shared = |name: &str, reused| SharedFileRef {
            file: SharedFile { name: format!("shared/{name}"), size: 1, checksum: 0 },
            reused,
        };
        one.tasks[0].handle.shared = vec![shared("a", false), shared("b", false)];
        two.tasks[0].handle.shared = vec![shared("a", true)];
        two.tasks[1].handle.shared = vec![shared("c", false)];
        let r = SharedRegistry::of_checkpoints([&one, &two]);
        assert_eq!(r.len(), 3);
        let listed: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|n| format!("shared/{n}")).collect();
        assert_eq!(r.orphans(&listed, &set(&["shared/e"])), ["shared/d"]);
        let mut r = r;
        assert_eq!(r.release(Some(2), &set(&[])), ["shared/b"]);
    }
}
