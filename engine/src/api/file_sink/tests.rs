//! The file sink's protocol driven directly through its `Sink` hooks, as the task loop and the
//! coordinator drive them: writes, pre-commits (snapshots), completions and abortions, crashes
//! (the sink dropped without committing), restores, and disk failures injected through
//! [`PartFs`].

use std::cell::RefCell;
use std::ffi::OsString;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::api::sinks::{PendingCommit, Sink};
use crate::api::two_phase::TwoPhaseCommit;
use crate::checkpoint::CheckpointNotice::{Aborted, Complete};

/// The local file system, with syncs and renames that fail on demand.
#[derive(Default)]
struct FaultyFs {
    fail_sync: Arc<AtomicBool>,
    fail_rename: AtomicBool,
}

struct FaultyFile {
    file: std::fs::File,
    fail_sync: Arc<AtomicBool>,
}

impl Write for FaultyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl PartWrite for FaultyFile {
    fn sync(&mut self) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.sync_all()
    }
}

impl PartFs for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        LocalFs.create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn PartWrite>> {
        let file = std::fs::File::create(path)?;
        Ok(Box::new(FaultyFile { file, fail_sync: self.fail_sync.clone() }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.fail_rename.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        LocalFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        LocalFs.remove(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        LocalFs.exists(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        LocalFs.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        LocalFs.sync_dir(dir)
    }
}

type Staged = Rc<RefCell<Vec<Box<dyn PendingCommit>>>>;

struct Harness {
    dir: tempfile::TempDir,
    fs: Arc<FaultyFs>,
    staged: Staged,
}

type FileSinkT = TwoPhaseCommit<u64, FileSink>;

impl Harness {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), fs: Arc::new(FaultyFs::default()), staged: Staged::default() }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn sink_of(&self, subtask: u32, parallelism: u32, mode: FileSinkMode) -> FileSinkT {
        let options = FileSinkOptions::default().mode(mode).buffer_bytes(16);
        let sink = FileSink::with_fs(&self.out(), options, subtask, parallelism, self.fs.clone()).unwrap();
        let staged = self.staged.clone();
        TwoPhaseCommit::with_stage(sink, Box::new(move |c| staged.borrow_mut().push(c)))
    }

    fn sink(&self) -> FileSinkT {
        self.sink_of(0, 1, FileSinkMode::ExactlyOnce)
    }

    /// Commits what sinks staged at their end, as a successful job does.
    fn commit_staged(&self) {
        for c in self.staged.borrow_mut().drain(..) {
            c.commit().unwrap();
        }
    }

    /// Every file of the output directory, hidden ones too, with its contents.
    fn files(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(self.out())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().into_string().unwrap(), std::fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    fn visible_names(&self) -> Vec<String> {
        self.files().into_iter().map(|(n, _)| n).filter(|n| !n.starts_with('.')).collect()
    }

    /// The records of the visible parts, in name order (the write order of each subtask).
    fn visible_records(&self) -> Vec<u64> {
        self.files()
            .into_iter()
            .filter(|(n, _)| n.starts_with("part-"))
            .flat_map(|(_, text)| text.lines().map(|l| l.parse::<u64>().unwrap()).collect::<Vec<_>>())
            .collect()
    }
}

fn write(sink: &mut FileSinkT, records: std::ops::Range<u64>) {
    let mut batch: Vec<u64> = records.collect();
    sink.write_batch(&mut batch).unwrap();
    assert!(batch.is_empty());
}

fn snapshot(sink: &mut FileSinkT, checkpoint: CheckpointId) -> Vec<u8> {
    sink.snapshot_state(checkpoint).unwrap().expect("a two-phase-commit sink always has state")
}

fn name(seq: u64) -> String {
    PartName::visible(0, seq).file_name()
}

#[test]
fn parts_become_visible_only_when_their_checkpoint_completes() {
    let h = Harness::new();
    let mut sink = h.sink();
    write(&mut sink, 0..10);
    assert!(h.visible_names().is_empty(), "nothing visible while writing");
    snapshot(&mut sink, 1);
    assert!(h.visible_names().is_empty(), "nothing visible after the pre-commit");
    assert_eq!(h.files().len(), 1, "the pre-committed part is a hidden file");

    write(&mut sink, 10..20);
    sink.notify_checkpoint(Complete(1)).unwrap();
    assert_eq!(h.visible_names(), [name(0)]);
    assert_eq!(h.visible_records(), (0..10).collect::<Vec<_>>());

    // An aborted checkpoint's part stays pending and commits with the next completed one.
    snapshot(&mut sink, 2);
    sink.notify_checkpoint(Aborted(2)).unwrap();
    write(&mut sink, 20..25);
    snapshot(&mut sink, 3);
    // A checkpoint with nothing written since the last one adds no part.
    snapshot(&mut sink, 4);
    assert_eq!(h.visible_names(), [name(0)]);
    sink.notify_checkpoint(Complete(4)).unwrap();
    assert_eq!(h.visible_names(), [name(0), name(1), name(2)]);

    // The end of the job stages the last part; it is visible only once the job commits.
    write(&mut sink, 25..30);
    sink.finish().unwrap();
    assert_eq!(h.visible_names().len(), 3);
    h.commit_staged();
    assert_eq!(h.visible_names(), [name(0), name(1), name(2), name(3)]);
    assert_eq!(h.visible_records(), (0..30).collect::<Vec<_>>());
    assert!(h.files().iter().all(|(n, _)| !n.starts_with('.')), "no hidden file left: {:?}", h.files());
}

#[test]
fn a_restore_commits_the_pending_parts_again_and_deletes_what_came_after() {
    let h = Harness::new();
    let mut sink = h.sink();
    write(&mut sink, 0..10);
    snapshot(&mut sink, 1);
    sink.notify_checkpoint(Complete(1)).unwrap();
    write(&mut sink, 10..20);
    // Checkpoint 2 completes at the coordinator, but the task fails before it hears of it.
    let state = snapshot(&mut sink, 2);
    write(&mut sink, 20..27);
    snapshot(&mut sink, 3); // never completes
    write(&mut sink, 27..30);
    drop(sink); // the crash: nothing more is committed
    assert_eq!(h.visible_names(), [name(0)]);

    let mut restored = h.sink();
    restored.restore_state(&state).unwrap();
    let after_restore = h.files();
    assert_eq!(h.visible_names(), [name(0), name(1)], "{after_restore:?}");
    assert_eq!(after_restore.len(), 2, "parts after checkpoint 2 are gone: {after_restore:?}");
    assert_eq!(h.visible_records(), (0..20).collect::<Vec<_>>());

    // A failure during recovery: restored again from the same checkpoint, the files are the
    // same (the re-commit skips the part already renamed).
    drop(restored);
    let mut again = h.sink();
    again.restore_state(&state).unwrap();
    assert_eq!(h.files(), after_restore);

    // The replayed records go into new parts, numbered after the restored counter.
    write(&mut again, 20..25);
    snapshot(&mut again, 3);
    again.notify_checkpoint(Complete(3)).unwrap();
    write(&mut again, 25..30);
    again.finish().unwrap();
    h.commit_staged();
    assert_eq!(h.visible_names(), [name(0), name(1), name(2), name(3)]);
    assert_eq!(h.visible_records(), (0..30).collect::<Vec<_>>(), "every record exactly once");
}

#[test]
fn a_crash_between_rename_and_notification_is_repaired_by_the_restore() {
    let h = Harness::new();
    let mut sink = h.sink();
    write(&mut sink, 0..5);
    let state = snapshot(&mut sink, 1);
    sink.notify_checkpoint(Complete(1)).unwrap();
    drop(sink);
    let committed = h.files();
    let mut restored = h.sink();
    restored.restore_state(&state).unwrap();
    assert_eq!(h.files(), committed, "committing an already committed part changes nothing");
}

#[test]
fn a_failed_sync_fails_the_checkpoint_and_poisons_the_sink() {
    let h = Harness::new();
    let mut sink = h.sink();
    write(&mut sink, 0..5);
    h.fs.fail_sync.store(true, Ordering::SeqCst);
    let err = sink.snapshot_state(1).unwrap_err().to_string();
    assert!(err.contains("cannot sync part") && err.contains(".part-0-0000000000.inprogress"), "{err}");
    h.fs.fail_sync.store(false, Ordering::SeqCst);
    let mut more = vec![5u64];
    let refused = sink.write_batch(&mut more).unwrap_err().to_string();
    assert!(refused.contains("refuses further work") && refused.contains("cannot sync part"), "{refused}");
    assert!(sink.snapshot_state(2).is_err());
    assert!(sink.notify_checkpoint(Complete(1)).is_err());
    assert!(sink.finish().is_err());
    assert!(h.visible_names().is_empty());
}

#[test]
fn a_failed_rename_fails_the_commit_and_the_part_stays_pending() {
    let h = Harness::new();
    let mut sink = h.sink();
    write(&mut sink, 0..5);
    let state = snapshot(&mut sink, 1);
    h.fs.fail_rename.store(true, Ordering::SeqCst);
    let err = sink.notify_checkpoint(Complete(1)).unwrap_err().to_string();
    assert!(err.contains("cannot commit part"), "{err}");
    assert!(h.visible_names().is_empty());
    // The task fails; the restored subtask commits it.
    h.fs.fail_rename.store(false, Ordering::SeqCst);
    drop(sink);
    h.sink().restore_state(&state).unwrap();
    assert_eq!(h.visible_records(), (0..5).collect::<Vec<_>>());
}

#[test]
fn a_pending_part_that_disappeared_is_an_error_naming_it() {
    let h = Harness::new();
    let mut sink = h.sink();
    write(&mut sink, 0..5);
    snapshot(&mut sink, 1);
    std::fs::remove_file(h.out().join(PartName::hidden(0, 0).file_name())).unwrap();
    let err = sink.notify_checkpoint(Complete(1)).unwrap_err().to_string();
    assert!(err.contains(".part-0-0000000000.inprogress") && err.contains("neither pending nor committed"), "{err}");
}

#[test]
fn malformed_state_is_refused() {
    let h = Harness::new();
    let mut sink = h.sink();
    assert!(sink.restore_state(b"nonsense").is_err());
}

#[test]
fn at_least_once_parts_are_visible_at_the_barrier_and_a_restore_rewrites_later_ones() {
    let h = Harness::new();
    let mut sink = h.sink_of(0, 1, FileSinkMode::AtLeastOnce);
    write(&mut sink, 0..10);
    let state = snapshot(&mut sink, 1);
    assert_eq!(h.visible_names(), [name(0)], "visible without waiting for completion");
    write(&mut sink, 10..20);
    snapshot(&mut sink, 2); // never completes
    assert_eq!(h.visible_names(), [name(0), name(1)]);
    write(&mut sink, 20..23);
    drop(sink);

    // Restored from checkpoint 1: records 10.. are replayed, so the part written after it
    // goes (a reader may already have seen its records: at least once).
    let mut restored = h.sink_of(0, 1, FileSinkMode::AtLeastOnce);
    restored.restore_state(&state).unwrap();
    assert_eq!(h.files().len(), 1, "{:?}", h.files());
    write(&mut restored, 10..23);
    restored.finish().unwrap();
    h.commit_staged();
    assert_eq!(h.visible_records(), (0..23).collect::<Vec<_>>());
}

#[test]
fn the_first_commit_of_a_run_replaces_an_earlier_runs_output() {
    let h = Harness::new();
    std::fs::create_dir_all(h.out()).unwrap();
    let earlier = [
        (PartName::visible(0, 0), "100\n"),
        (PartName::visible(0, 5), "105\n"),
        (PartName::visible(1, 0), "110\n"),
        (PartName::visible(3, 1), "131\n"),
        (PartName::hidden(0, 2), "102\n"),
    ];
    for (p, text) in earlier {
        std::fs::write(h.out().join(p.file_name()), text).unwrap();
    }
    std::fs::write(h.out().join("README"), "not a part").unwrap();

    let mut s0 = h.sink_of(0, 2, FileSinkMode::ExactlyOnce);
    write(&mut s0, 0..3);
    let names: Vec<String> = h.files().into_iter().map(|(n, _)| n).collect();
    assert!(!names.contains(&PartName::hidden(0, 2).file_name()), "uncommitted leftovers go at the start: {names:?}");
    assert!(names.contains(&name(5)), "the earlier output stays until the first commit: {names:?}");
    snapshot(&mut s0, 1);
    s0.notify_checkpoint(Complete(1)).unwrap();
    assert_eq!(h.visible_names(), ["README", "part-0-0000000000", "part-1-0000000000"]);
    assert_eq!(h.visible_records().len(), 1 + 3, "README is not a number: read parts only");
}

#[test]
fn without_checkpoints_each_subtask_writes_one_part_at_the_end_even_when_empty() {
    let h = Harness::new();
    let mut s0 = h.sink_of(0, 2, FileSinkMode::ExactlyOnce);
    let mut s1 = h.sink_of(1, 2, FileSinkMode::ExactlyOnce);
    write(&mut s0, 0..4);
    s0.finish().unwrap();
    s1.finish().unwrap();
    assert!(h.visible_names().is_empty(), "staged, not committed");
    h.commit_staged();
    assert_eq!(
        h.files(),
        [
            ("part-0-0000000000".to_string(), "0\n1\n2\n3\n".to_string()),
            ("part-1-0000000000".to_string(), String::new())
        ]
    );
}

#[test]
fn a_job_that_fails_before_its_end_commits_nothing() {
    let h = Harness::new();
    let mut sink = h.sink();
    write(&mut sink, 0..4);
    sink.finish().unwrap();
    h.staged.borrow_mut().clear(); // the job failed: its staged output is dropped
    assert!(h.visible_names().is_empty());
}
