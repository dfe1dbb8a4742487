//! Outputs become visible whole or not at all: a text sink's file replaces an earlier one only
//! when the whole job has succeeded; a failed or cancelled job leaves it byte for byte as it was
//! and no staged file behind; a sink's own staged output is committed or discarded likewise.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corestream::runtime::metrics::JobStatus;
use corestream::{JobError, PendingCommit, RuntimeMode, Sink, SinkContext, SinkError};
use corestream_tests::cluster;

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_successful_job_replaces_the_output_whole() {
    let cluster = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    std::fs::write(&out, "earlier output\n").unwrap();
    let mut env = cluster.environment();
    env.set_runtime_mode(RuntimeMode::Batch);
    env.from_sequence(0..1000).write_as_text(&out).set_parallelism(1);
    env.execute("writes").unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 1000);
    assert_eq!(entries(dir.path()), ["out.txt"]);

    let parts = dir.path().join("parts");
    let mut env = cluster.environment();
    env.set_parallelism(2).set_runtime_mode(RuntimeMode::Batch);
    env.from_sequence(0..1000).write_as_text(&parts);
    env.execute("writes parts").unwrap();
    assert_eq!(entries(&parts), ["part-0", "part-1"]);
    let lines: usize =
        entries(&parts).iter().map(|p| std::fs::read_to_string(parts.join(p)).unwrap().lines().count()).sum();
    assert_eq!(lines, 1000);
}

#[test]
fn a_failed_job_leaves_the_earlier_output_as_it_was() {
    let cluster = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let earlier = b"earlier output\nwith two lines\n".to_vec();
    std::fs::write(&out, &earlier).unwrap();
    let mut env = cluster.environment();
    env.set_runtime_mode(RuntimeMode::Batch);
    // The sink has written (and flushed) 100 000 lines by the time the record fails.
    env.from_sequence(0..200_000)
        .map(|v| {
            if v == 150_000 {
                panic!("record {v} is bad");
            }
            v
        })
        .name("Fails late")
        .set_parallelism(1)
        .write_as_text(&out)
        .set_parallelism(1);
    let err = env.execute("fails").unwrap_err();
    assert!(err.to_string().contains("record 150000 is bad"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), earlier, "the earlier output is byte-identical");
    assert_eq!(entries(dir.path()), ["out.txt"], "no staged file is left behind");
}

#[test]
fn a_cancelled_job_leaves_the_earlier_output_as_it_was() {
    let cluster = cluster(1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    std::fs::write(&out, "earlier\n").unwrap();
    let env = cluster.environment();
    env.generate_unbounded(|i| i).write_as_text(&out);
    let handle = env.execute_async("cancelled").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    handle.cancel();
    assert_eq!(handle.join().unwrap().status, JobStatus::Cancelled);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier\n");
    assert_eq!(entries(dir.path()), ["out.txt"]);
}

/// Stages one commit per subtask at the end of its input, counting commits and discards.
struct Staging {
    ctx: SinkContext,
    commits: Arc<AtomicU32>,
    discards: Arc<AtomicU32>,
    fail_commit: bool,
}

struct Staged {
    commits: Arc<AtomicU32>,
    discards: Arc<AtomicU32>,
    fail: bool,
    done: bool,
}

impl PendingCommit for Staged {
    fn commit(mut self: Box<Self>) -> Result<(), SinkError> {
        self.done = true;
        if self.fail {
            return Err("the store refused the commit".into());
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            self.discards.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Sink<u64> for Staging {
    fn write_batch(&mut self, batch: &mut Vec<u64>) -> Result<(), SinkError> {
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.ctx.commits.stage(Box::new(Staged {
            commits: self.commits.clone(),
            discards: self.discards.clone(),
            fail: self.fail_commit,
            done: false,
        }));
        Ok(())
    }
}

fn staging_job(fail_in_job: bool, fail_commit: bool) -> (Result<corestream::JobResult, JobError>, u32, u32) {
    let cluster = cluster(2);
    let (commits, discards) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let mut env = cluster.environment();
    env.set_parallelism(2).set_runtime_mode(RuntimeMode::Batch);
    let (c, d) = (commits.clone(), discards.clone());
    env.from_sequence(0..10_000)
        .map(move |v| {
            if fail_in_job && v == 9_999 {
                panic!("the last record is bad");
            }
            v
        })
        .add_sink("Staging", move |ctx| Ok(Staging { ctx, commits: c.clone(), discards: d.clone(), fail_commit }));
    let result = env.execute("staging");
    (result, commits.load(Ordering::SeqCst), discards.load(Ordering::SeqCst))
}

#[test]
fn staged_output_is_committed_only_when_every_task_succeeded() {
    let (result, commits, discards) = staging_job(false, false);
    assert_eq!(result.unwrap().status, JobStatus::Finished);
    assert_eq!((commits, discards), (2, 0));

    let (result, commits, _) = staging_job(true, false);
    assert!(result.unwrap_err().to_string().contains("the last record is bad"));
    assert_eq!(commits, 0, "a failed job commits nothing");

    let (result, commits, discards) = staging_job(false, true);
    match result.unwrap_err() {
        JobError::Commit { job, message } => {
            assert_eq!(job, "staging");
            assert!(message.contains("the store refused the commit"), "{message}");
        }
        other => panic!("expected a commit failure, got {other}"),
    }
    assert_eq!(commits, 0);
    assert_eq!(discards, 1, "the commit after the failed one is discarded");
}

#[test]
fn join_staged_leaves_the_commit_to_the_caller() {
    let cluster = cluster(1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    for commit in [false, true] {
        std::fs::write(&out, "earlier\n").unwrap();
        let mut env = cluster.environment();
        env.set_runtime_mode(RuntimeMode::Batch);
        env.from_sequence(0..10).write_as_text(&out);
        let (result, staged) = env.execute_async("staged").unwrap().join_staged().unwrap();
        assert_eq!(result.status, JobStatus::Finished);
        assert_eq!(staged.len(), 1);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier\n", "not visible before the commit");
        if commit {
            staged.commit().unwrap();
            assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 10);
        } else {
            drop(staged);
            assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier\n", "dropping discards");
        }
        assert_eq!(entries(dir.path()), ["out.txt"]);
    }
}
