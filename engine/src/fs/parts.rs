//! The part files of the exactly-once file sink ([`crate::api::file_sink`]): their names, the
//! decisions of what to delete and rename (pure functions over a directory listing), and the
//! few disk operations the sink needs, behind [`PartFs`] so tests can make a sync or a rename
//! fail.
//!
//! A subtask's parts are `part-<subtask>-<seq>` once committed (visible) and
//! `.part-<subtask>-<seq>.inprogress` while being written or waiting for their commit (hidden:
//! readers skip dot files). `<seq>` has ten digits, so within a subtask the lexical order of the
//! names is the order in which the parts were written.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Digits of a part's sequence number in its name.
const SEQ_DIGITS: usize = 10;

/// The first sequence number whose name would need more digits.
pub(crate) const SEQ_LIMIT: u64 = 10_000_000_000;

/// A part file named in a sink's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PartName {
    pub subtask: u32,
    pub seq: u64,
    /// Still in progress or waiting for its commit.
    pub hidden: bool,
}

impl PartName {
    pub(crate) fn visible(subtask: u32, seq: u64) -> Self {
        Self { subtask, seq, hidden: false }
    }

    pub(crate) fn hidden(subtask: u32, seq: u64) -> Self {
        Self { subtask, seq, hidden: true }
    }

    pub(crate) fn file_name(&self) -> String {
        if self.hidden {
            format!(".part-{}-{:0width$}.inprogress", self.subtask, self.seq, width = SEQ_DIGITS)
        } else {
            format!("part-{}-{:0width$}", self.subtask, self.seq, width = SEQ_DIGITS)
        }
    }

    /// The part a file name denotes, if it is one (anything else in the directory is left
    /// alone).
    pub(crate) fn parse(name: &str) -> Option<Self> {
        let (hidden, rest) = match name.strip_prefix(".part-") {
            Some(rest) => (true, rest.strip_suffix(".inprogress")?),
            None => (false, name.strip_prefix("part-")?),
        };
        let (subtask, seq) = rest.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(subtask) || !digits(seq) || seq.len() != SEQ_DIGITS {
            return None;
        }
        Some(Self { subtask: subtask.parse().ok()?, seq: seq.parse().ok()?, hidden })
    }
}

/// The parts among a directory's file names (others ignored).
pub(crate) fn parse_listing(names: &[OsString]) -> Vec<PartName> {
    let mut parts: Vec<PartName> = names.iter().filter_map(|n| n.to_str().and_then(PartName::parse)).collect();
    parts.sort();
    parts
}

/// What a subtask starting without restored state deletes: its hidden parts, left by a run
/// that ended before committing them (they were never visible).
pub(crate) fn fresh_start_deletions(parts: &[PartName], subtask: u32) -> Vec<PartName> {
    parts.iter().filter(|p| p.subtask == subtask && p.hidden).copied().collect()
}

/// What a subtask restored with the part counter `counter` and the pending parts `pending`
/// (to be committed again) deletes: every part of its own, hidden or visible, numbered at or
/// after the counter (written after the checkpoint; their records will be written again), and
/// every hidden part that is not pending. Pending parts and visible parts before the counter
/// (committed) stay.
pub(crate) fn restore_deletions(parts: &[PartName], subtask: u32, counter: u64, pending: &[u64]) -> Vec<PartName> {
    parts
        .iter()
        .filter(|p| p.subtask == subtask && (p.seq >= counter || p.hidden) && !pending.contains(&p.seq))
        .copied()
        .collect()
}

/// What committing the parts `seqs` of `subtask` deletes first. A batch holding part 0 is the
/// first commit of a run (parts are numbered from 0 and committed in order): the output of an
/// earlier run is replaced, so every visible part of this subtask that is not being committed
/// goes, and subtask 0 also removes every part of subtasks the job no longer has. Any other
/// batch deletes nothing.
pub(crate) fn replaced_by_commit(parts: &[PartName], subtask: u32, parallelism: u32, seqs: &[u64]) -> Vec<PartName> {
    if !seqs.contains(&0) {
        return Vec::new();
    }
    parts
        .iter()
        .filter(|p| {
            (p.subtask == subtask && !p.hidden && !seqs.contains(&p.seq)) || (subtask == 0 && p.subtask >= parallelism)
        })
        .copied()
        .collect()
}

/// A part file being written.
pub(crate) trait PartWrite: Write + Send {
    /// Makes what was written durable (`fsync`).
    fn sync(&mut self) -> io::Result<()>;
}

impl PartWrite for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }
}

/// The disk operations of the file sink.
pub(crate) trait PartFs: Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates the file, or empties an existing one.
    fn create(&self, path: &Path) -> io::Result<Box<dyn PartWrite>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Makes the directory's entries durable (after renames and removals).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LocalFs;

impl PartFs for LocalFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn PartWrite>> {
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
        Ok(Box::new(file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(subtask: u32, seq: u64) -> PartName {
        PartName::visible(subtask, seq)
    }

    fn h(subtask: u32, seq: u64) -> PartName {
        PartName::hidden(subtask, seq)
    }

    #[test]
    fn names_round_trip_and_sort_in_write_order() {
        for p in [v(0, 0), h(3, 17), v(12, SEQ_LIMIT - 1)] {
            assert_eq!(PartName::parse(&p.file_name()), Some(p), "{}", p.file_name());
        }
        assert_eq!(v(1, 2).file_name(), "part-1-0000000002");
        assert_eq!(h(1, 2).file_name(), ".part-1-0000000002.inprogress");
        let mut names: Vec<String> = [9u64, 10, 100, 0, 1].iter().map(|s| v(4, *s).file_name()).collect();
        names.sort();
        let seqs: Vec<u64> = names.iter().map(|n| PartName::parse(n).unwrap().seq).collect();
        assert_eq!(seqs, [0, 1, 9, 10, 100]);
    }

    #[test]
    fn other_files_are_not_parts() {
        for name in [
            "part-1",
            "part-1-12",
            "part-a-0000000001",
            "part-1-00000000001",
            ".part-1-0000000001",
            "part-1-0000000001.inprogress",
            "_SUCCESS",
            "part--0000000001",
        ] {
            assert_eq!(PartName::parse(name), None, "{name}");
        }
        let listing: Vec<OsString> = ["x", "part-0-0000000001", ".part-0-0000000002.inprogress"].map(Into::into).into();
        assert_eq!(parse_listing(&listing), [v(0, 1), h(0, 2)]);
    }

    #[test]
    fn a_fresh_start_deletes_only_its_own_hidden_parts() {
        let parts = [v(0, 0), h(0, 1), h(1, 0), v(1, 1)];
        assert_eq!(fresh_start_deletions(&parts, 0), [h(0, 1)]);
        assert_eq!(fresh_start_deletions(&parts, 1), [h(1, 0)]);
    }

    #[test]
    fn a_restore_deletes_what_was_written_after_the_checkpoint_but_keeps_pending_and_committed_parts() {
        // Counter 5: parts 0..=4 existed at the checkpoint; 3 and 4 were pending (4 already
        // renamed before the failure), 5 and 6 came after it.
        let parts = [v(0, 0), v(0, 1), v(0, 2), h(0, 3), v(0, 4), v(0, 5), h(0, 6), h(1, 6), v(1, 9)];
        assert_eq!(restore_deletions(&parts, 0, 5, &[3, 4]), [v(0, 5), h(0, 6)]);
        // Nothing pending, counter 0: everything of the subtask goes.
        assert_eq!(restore_deletions(&parts, 1, 0, &[]), [h(1, 6), v(1, 9)]);
    }

    #[test]
    fn the_first_commit_of_a_run_replaces_the_earlier_output() {
        let parts = [v(0, 0), v(0, 7), h(0, 0), h(0, 1), v(1, 3), v(2, 0), h(3, 1)];
        // Subtask 0 of 2 commits its first parts: its earlier part 7 goes (part 0 is being
        // replaced by the rename), and so do the parts of subtasks 2 and 3.
        assert_eq!(replaced_by_commit(&parts, 0, 2, &[0, 1]), [v(0, 7), v(2, 0), h(3, 1)]);
        assert_eq!(replaced_by_commit(&parts, 1, 2, &[0]), [v(1, 3)]);
        // Later commits delete nothing.
        assert!(replaced_by_commit(&parts, 0, 2, &[2, 3]).is_empty());
    }
}
