//! Two-phase-commit sinks (Flink's Sink V2 writer and committer, and its
//! `TwoPhaseCommitSinkFunction`): output becomes visible only for checkpoints that completed.
//!
//! A [`TwoPhaseCommitSink`] writes records into a transaction of its own (a hidden file, an
//! open database transaction). On a checkpoint's barrier it **pre-commits**: it flushes and
//! makes durable what it wrote since the last pre-commit and returns a *committable* that
//! names it; a failure (a failed `fsync`) fails the checkpoint, and the sink refuses any
//! further work (poisoned, as fjall does after a failed sync), so the task fails and the job
//! recovers from the last completed checkpoint. [`TwoPhaseCommit`] turns it into a [`Sink`]:
//! it keeps the committables not yet committed in the subtask's state, **commits** them through
//! the sink's [`Committer`] when a checkpoint at or after theirs completes, leaves them pending
//! when one is aborted (the next completed checkpoint commits them), and after a restore
//! **commits again** every committable of the restored state (the checkpoint is complete, but
//! the failure may have come before or during its commit), so commits must be idempotent. At
//! the end of a bounded job the last transaction and every pending committable are staged with
//! the job's output ([`JobCommits`]) and committed when the whole job has succeeded.
//!
//! Without checkpoints nothing is pre-committed before the end: the sink behaves like any
//! staged sink, committing once at the end of the job.

use std::fmt;

use corestream_netstack::record::deserialize;
use corestream_netstack::{Data, RecordIter};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::sinks::{JobCommits, PendingCommit, Sink, SinkContext, SinkError};
use super::stream::{DataStream, DataStreamSink};
use crate::checkpoint::{CheckpointId, CheckpointNotice};

/// A sink whose output becomes visible in two phases (see the module documentation).
pub trait TwoPhaseCommitSink<T: Data>: 'static {
    /// What the committer needs to make one pre-committed transaction visible. Kept in the
    /// subtask's state (as JSON), so it must stay small: names, ids, offsets.
    type Committable: Serialize + DeserializeOwned + Send + 'static;
    /// Makes committables visible, on the sink's thread or in the job's final commit.
    type Committer: Committer<Self::Committable>;

    /// Writes a batch into the current transaction; leaves it empty.
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError>;

    /// Records of one exchange buffer, read in place. The default deserializes them.
    fn write_archived(&mut self, records: RecordIter<'_, T>, scratch: &mut Vec<T>) -> Result<(), SinkError> {
        scratch.extend(records.map(deserialize::<T>));
        self.write_batch(scratch)
    }

    /// Whether the sink can take another batch now (see [`Sink::poll_ready`]).
    fn poll_ready(&mut self) -> bool {
        true
    }

    /// On the barrier of `checkpoint`: flushes the current transaction, makes it durable and
    /// closes it; the next write opens a new one. `None` when nothing was written since the
    /// last pre-commit. A failure fails the checkpoint and poisons the sink.
    fn pre_commit(&mut self, checkpoint: CheckpointId) -> Result<Option<Self::Committable>, SinkError>;

    /// The writer's own state besides its committables (e.g. the number of the next
    /// transaction), taken right after `pre_commit`.
    fn snapshot_writer(&mut self) -> Result<Vec<u8>, SinkError> {
        Ok(Vec::new())
    }

    /// Before any input of a restored job: the writer's state from the checkpoint and the
    /// committables it held, which are committed again right after this returns. A writer
    /// removes what it wrote after the checkpoint here (it will be written again).
    fn restore_writer(&mut self, writer: &[u8], pending: &[Self::Committable]) -> Result<(), SinkError>;

    /// `checkpoint` will never complete. Its committables stay pending and are committed with
    /// the next checkpoint that completes; the default does nothing else.
    fn abort(&mut self, _checkpoint: CheckpointId) -> Result<(), SinkError> {
        Ok(())
    }

    /// The input has ended: closes the current transaction as `pre_commit` does; it is
    /// committed with the job's output.
    fn finish(&mut self) -> Result<Option<Self::Committable>, SinkError>;

    /// A committer for this sink's committables.
    fn committer(&self) -> Self::Committer;
}

/// Makes pre-committed transactions visible. Idempotent: a committable that was already
/// committed (before a failure) is committed again without harm or error.
pub trait Committer<C>: Send + 'static {
    fn commit(&mut self, committables: &[C]) -> Result<(), SinkError>;
}

/// Why the state of a two-phase-commit sink could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum TwoPhaseStateError {
    #[error("the sink state is truncated or malformed ({0})")]
    Malformed(&'static str),
    #[error("a committable of checkpoint {checkpoint} cannot be read: {cause}")]
    Committable {
        checkpoint: CheckpointId,
        #[source]
        cause: serde_json::Error,
    },
}

const STATE_TAG: &[u8; 4] = b"2PC1";

/// The state bytes: tag, writer state (u32 length, bytes), committables (u32 count, then per
/// committable its checkpoint u64, u32 length and JSON). Integers little-endian.
fn encode_state<C: Serialize>(writer: &[u8], pending: &Pending<C>) -> Result<Vec<u8>, SinkError> {
    let len32 = |n: usize, what: &str| u32::try_from(n).map_err(|_| format!("the sink's {what} exceeds 4 GiB"));
    let mut out = Vec::with_capacity(16 + writer.len() + 32 * pending.committables.len());
    out.extend_from_slice(STATE_TAG);
    out.extend_from_slice(&len32(writer.len(), "writer state")?.to_le_bytes());
    out.extend_from_slice(writer);
    out.extend_from_slice(&len32(pending.committables.len(), "number of committables")?.to_le_bytes());
    for (checkpoint, c) in pending.checkpoints.iter().zip(&pending.committables) {
        let json = serde_json::to_vec(c)?;
        out.extend_from_slice(&checkpoint.to_le_bytes());
        out.extend_from_slice(&len32(json.len(), "committable")?.to_le_bytes());
        out.extend_from_slice(&json);
    }
    Ok(out)
}

/// Pre-committed, not yet committed: committables with their checkpoints, in checkpoint order
/// (two vectors, so a prefix of the committables is one slice for the committer).
#[derive(Debug, PartialEq, Eq)]
struct Pending<C> {
    checkpoints: Vec<CheckpointId>,
    committables: Vec<C>,
}

impl<C> Default for Pending<C> {
    fn default() -> Self {
        Self { checkpoints: Vec::new(), committables: Vec::new() }
    }
}

impl<C> Pending<C> {
    fn push(&mut self, checkpoint: CheckpointId, committable: C) {
        self.checkpoints.push(checkpoint);
        self.committables.push(committable);
    }

    /// How many belong to checkpoints up to `through`.
    fn due(&self, through: CheckpointId) -> usize {
        self.checkpoints.iter().take_while(|c| **c <= through).count()
    }

    fn drain_front(&mut self, n: usize) -> Vec<C> {
        self.checkpoints.drain(..n);
        self.committables.drain(..n).collect()
    }
}

type DecodedState<C> = (Vec<u8>, Pending<C>);

fn decode_state<C: DeserializeOwned>(bytes: &[u8]) -> Result<DecodedState<C>, TwoPhaseStateError> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TwoPhaseStateError> {
            if self.0.len() < n {
                return Err(TwoPhaseStateError::Malformed(what));
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u32(&mut self, what: &'static str) -> Result<usize, TwoPhaseStateError> {
            Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")) as usize)
        }
        fn u64(&mut self, what: &'static str) -> Result<u64, TwoPhaseStateError> {
            Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
        }
    }
    let mut r = Reader(bytes);
    if r.take(4, "tag")? != STATE_TAG {
        return Err(TwoPhaseStateError::Malformed("not the state of a two-phase-commit sink"));
    }
    let writer_len = r.u32("writer state length")?;
    let writer = r.take(writer_len, "writer state")?.to_vec();
    let count = r.u32("number of committables")?;
    // Each committable takes at least 12 bytes: a count beyond that is malformed, and never
    // reserves memory it does not describe.
    if count > r.0.len() / 12 {
        return Err(TwoPhaseStateError::Malformed("number of committables"));
    }
    let mut pending = Pending { checkpoints: Vec::with_capacity(count), committables: Vec::with_capacity(count) };
    for _ in 0..count {
        let checkpoint = r.u64("checkpoint of a committable")?;
        let len = r.u32("committable length")?;
        let json = r.take(len, "committable")?;
        let c = serde_json::from_slice(json).map_err(|cause| TwoPhaseStateError::Committable { checkpoint, cause })?;
        pending.push(checkpoint, c);
    }
    if !r.0.is_empty() {
        return Err(TwoPhaseStateError::Malformed("bytes after the last committable"));
    }
    Ok((writer, pending))
}

/// The committables left at the end of a bounded job, committed with the job's output.
struct StagedCommit<C, K> {
    committer: K,
    committables: Vec<C>,
}

impl<C: Send + 'static, K: Committer<C>> PendingCommit for StagedCommit<C, K> {
    fn commit(mut self: Box<Self>) -> Result<(), SinkError> {
        self.committer.commit(&self.committables)
    }
}

/// Where a sink hands the output it staged at its end.
type Stage = Box<dyn FnMut(Box<dyn PendingCommit>)>;

/// A [`TwoPhaseCommitSink`] as a [`Sink`]: keeps its pending committables in the subtask's
/// state and commits them as checkpoints complete (see the module documentation).
pub struct TwoPhaseCommit<T: Data, S: TwoPhaseCommitSink<T>> {
    sink: S,
    committer: S::Committer,
    pending: Pending<S::Committable>,
    stage: Stage,
    /// Why the sink refuses further work (a failed pre-commit).
    poisoned: Option<String>,
    _records: std::marker::PhantomData<fn(T)>,
}

impl<T: Data, S: TwoPhaseCommitSink<T>> fmt::Debug for TwoPhaseCommit<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwoPhaseCommit")
            .field("pending", &self.pending.checkpoints)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<T: Data, S: TwoPhaseCommitSink<T>> TwoPhaseCommit<T, S> {
    /// `sink` as the sink of the subtask described by `ctx`; at the end it stages its last
    /// committables with the job's output.
    pub fn new(sink: S, ctx: &SinkContext) -> Self {
        let commits: JobCommits = ctx.commits.clone();
        Self::with_stage(sink, Box::new(move |output| commits.stage(output)))
    }

    pub(crate) fn with_stage(sink: S, stage: Stage) -> Self {
        let committer = sink.committer();
        Self { sink, committer, pending: Pending::default(), stage, poisoned: None, _records: std::marker::PhantomData }
    }

    /// The wrapped sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    fn check_poisoned(&self) -> Result<(), SinkError> {
        match &self.poisoned {
            Some(why) => Err(format!("the sink refuses further work after a failed pre-commit: {why}").into()),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: SinkError) -> SinkError {
        self.poisoned = Some(e.to_string());
        e
    }

    /// Commits the pending committables of checkpoints up to `through`.
    fn commit_through(&mut self, through: CheckpointId) -> Result<(), SinkError> {
        let due = self.pending.due(through);
        if due == 0 {
            return Ok(());
        }
        // On failure they stay pending: the restore after the failure this causes commits
        // them again.
        self.committer.commit(&self.pending.committables[..due])?;
        self.pending.drain_front(due);
        tracing::debug!(checkpoint = through, committed = due, "two-phase-commit sink committed");
        Ok(())
    }
}

impl<T: Data, S: TwoPhaseCommitSink<T>> Sink<T> for TwoPhaseCommit<T, S> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        self.check_poisoned()?;
        self.sink.write_batch(batch)
    }

    fn write_archived(&mut self, records: RecordIter<'_, T>, scratch: &mut Vec<T>) -> Result<(), SinkError> {
        self.check_poisoned()?;
        self.sink.write_archived(records, scratch)
    }

    fn poll_ready(&mut self) -> bool {
        self.poisoned.is_some() || self.sink.poll_ready()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.check_poisoned()?;
        let last = self.sink.finish().map_err(|e| self.poison(e))?;
        let n = self.pending.committables.len();
        let mut committables = self.pending.drain_front(n);
        committables.extend(last);
        if !committables.is_empty() {
            (self.stage)(Box::new(StagedCommit { committer: self.sink.committer(), committables }));
        }
        Ok(())
    }

    fn snapshot_state(&mut self, checkpoint: CheckpointId) -> Result<Option<Vec<u8>>, SinkError> {
        self.check_poisoned()?;
        if let Some(c) = self.sink.pre_commit(checkpoint).map_err(|e| self.poison(e))? {
            self.pending.push(checkpoint, c);
        }
        let writer = self.sink.snapshot_writer().map_err(|e| self.poison(e))?;
        Ok(Some(encode_state(&writer, &self.pending)?))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), SinkError> {
        let (writer, pending) = decode_state::<S::Committable>(state)?;
        let committables = pending.committables;
        self.sink.restore_writer(&writer, &committables)?;
        // The restored checkpoint is complete: what it held pending is committed now (again,
        // if the failure came after its commit).
        self.committer.commit(&committables)?;
        tracing::info!(recommitted = committables.len(), "two-phase-commit sink restored");
        self.pending = Pending::default();
        Ok(())
    }

    fn notify_checkpoint(&mut self, notice: CheckpointNotice) -> Result<(), SinkError> {
        match notice {
            CheckpointNotice::Complete(id) => {
                self.check_poisoned()?;
                self.commit_through(id)
            }
            CheckpointNotice::Aborted(id) => self.sink.abort(id),
        }
    }
}

impl<T: Data> DataStream<T> {
    /// Ends the stream in a two-phase-commit sink built per subtask by `factory`: its output
    /// becomes visible only for completed checkpoints, and at the end of the job.
    pub fn add_two_phase_commit_sink<S, F>(self, name: &str, factory: F) -> DataStreamSink
    where
        S: TwoPhaseCommitSink<T>,
        F: Fn(&SinkContext) -> Result<S, SinkError> + Send + Sync + 'static,
    {
        self.add_sink(name, move |ctx: SinkContext| Ok(TwoPhaseCommit::new(factory(&ctx)?, &ctx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let pending = Pending { checkpoints: vec![3, 5], committables: vec!["a".to_string(), "b".to_string()] };
        let bytes = encode_state(b"writer", &pending).unwrap();
        let (writer, back) = decode_state::<String>(&bytes).unwrap();
        assert_eq!(writer, b"writer");
        assert_eq!(back, pending);
        let empty = encode_state::<String>(&[], &Pending::default()).unwrap();
        assert_eq!(decode_state::<String>(&empty).unwrap(), (Vec::new(), Pending::default()));
    }

    #[test]
    fn malformed_state_is_an_error_never_a_panic() {
        let bytes = encode_state(b"w", &Pending { checkpoints: vec![1, 2], committables: vec![7u64, 8] }).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_state::<u64>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(decode_state::<u64>(&extra), Err(TwoPhaseStateError::Malformed(_))));
        let mut huge = STATE_TAG.to_vec();
        huge.extend_from_slice(&0u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_state::<u64>(&huge), Err(TwoPhaseStateError::Malformed("number of committables"))));
        assert!(matches!(
            decode_state::<u64>(
                &encode_state(b"", &Pending { checkpoints: vec![4], committables: vec!["x"] }).unwrap()
            ),
            Err(TwoPhaseStateError::Committable { checkpoint: 4, .. })
        ));
    }
}
