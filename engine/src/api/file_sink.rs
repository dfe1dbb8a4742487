//! The exactly-once file sink: one line per record (`Display`) into part files of a directory,
//! made visible through two-phase commit ([`crate::api::two_phase`]); see
//! `docs/CHECKPOINTS.md`.
//!
//! Each subtask writes its records into an in-progress part, a hidden file
//! `.part-<subtask>-<seq>.inprogress` (names in `crate::fs::parts`). On a checkpoint's barrier
//! (pre-commit) it flushes, syncs (a failed sync fails the checkpoint) and closes the part,
//! which stays hidden and is pending in the subtask's state with its sequence number; the next
//! record opens the next part. When the checkpoint completes, the pending parts are renamed to
//! their final names `part-<subtask>-<seq>` and the directory is synced; a part already renamed
//! is skipped, so committing again after a restore is harmless. A restored subtask deletes its
//! parts numbered at or after the restored counter (written after the checkpoint; their
//! records are written again) and every hidden part that is not pending, then commits the
//! pending ones. At the end of a bounded job the last part and the pending ones are committed
//! with the job's output, when the whole job has succeeded. Without checkpoints each subtask
//! writes one part, committed at the end, as the text sink does.
//!
//! The first commit of a run (the one holding part 0) replaces the output of an earlier run in
//! the directory: the subtask's visible parts that are not being committed are deleted, and
//! subtask 0 deletes the parts of subtasks the job no longer has. Until then an earlier run's
//! output stays as it was.
//!
//! In [`FileSinkMode::AtLeastOnce`] a part is renamed at its pre-commit, without waiting for
//! the checkpoint to complete: output is visible sooner, and a reader may see records twice,
//! because a restore deletes the visible parts written after the restored checkpoint and their
//! records are written again.
//!
//! The sink does its file I/O (writes, the sync at each checkpoint, renames) on the slot's
//! thread, as the text sink does.

use std::fmt::Display;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use corestream_netstack::Data;
use serde::{Deserialize, Serialize};

use super::sinks::{SinkContext, SinkError};
use super::stream::{DataStream, DataStreamSink};
use super::two_phase::{Committer, TwoPhaseCommitSink};
use crate::checkpoint::CheckpointId;
use crate::fs::parts::{
    fresh_start_deletions, parse_listing, replaced_by_commit, restore_deletions, LocalFs, PartFs, PartName, PartWrite,
    SEQ_LIMIT,
};

/// When the file sink's parts become visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileSinkMode {
    /// When the checkpoint after them completes (or the job ends successfully).
    #[default]
    ExactlyOnce,
    /// At the checkpoint's barrier, before it completes; after a failure a reader may see
    /// records twice.
    AtLeastOnce,
}

/// How the file sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSinkOptions {
    pub mode: FileSinkMode,
    /// Bytes buffered before a write to the part file. At least 1.
    pub buffer_bytes: usize,
}

impl Default for FileSinkOptions {
    fn default() -> Self {
        Self { mode: FileSinkMode::ExactlyOnce, buffer_bytes: 256 * 1024 }
    }
}

impl FileSinkOptions {
    pub fn mode(mut self, mode: FileSinkMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn buffer_bytes(mut self, buffer_bytes: usize) -> Self {
        self.buffer_bytes = buffer_bytes;
        self
    }
}

/// Why the file sink failed.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    #[error("{what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "subtask {subtask} of the file sink in '{dir}' has written {SEQ_LIMIT} parts, as many as names can number"
    )]
    TooManyParts { dir: PathBuf, subtask: u32 },
    #[error(
        "part '{path}' was pre-committed but is neither pending nor committed: something removed it from the \
         output directory"
    )]
    Lost { path: PathBuf },
    #[error("the file sink's state in the checkpoint is not one it wrote ({0} bytes)")]
    State(usize),
}

impl FileSinkError {
    fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        FileSinkError::Io { what, path: path.to_path_buf(), source }
    }
}

/// A pre-committed part: the committable of the file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePart {
    pub seq: u64,
}

struct OpenPart {
    seq: u64,
    path: PathBuf,
    out: BufWriter<Box<dyn PartWrite>>,
}

/// One subtask of the exactly-once file sink (see the module documentation).
pub struct FileSink {
    dir: PathBuf,
    subtask: u32,
    parallelism: u32,
    options: FileSinkOptions,
    fs: Arc<dyn PartFs>,
    /// The sequence number of the next part.
    next_seq: u64,
    current: Option<OpenPart>,
    /// The directory was tidied for this run (hidden leftovers removed, or restored).
    started: bool,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("dir", &self.dir)
            .field("subtask", &self.subtask)
            .field("next_seq", &self.next_seq)
            .field("writing", &self.current.as_ref().map(|p| p.seq))
            .finish_non_exhaustive()
    }
}

const WRITER_TAG: &[u8; 4] = b"FSK1";

impl FileSink {
    /// The subtask of `ctx`, writing into `dir` (created if missing).
    pub fn create(dir: &Path, options: FileSinkOptions, ctx: &SinkContext) -> Result<Self, FileSinkError> {
        Self::with_fs(dir, options, ctx.subtask, ctx.parallelism, Arc::new(LocalFs))
    }

    pub(crate) fn with_fs(
        dir: &Path,
        options: FileSinkOptions,
        subtask: u32,
        parallelism: u32,
        fs: Arc<dyn PartFs>,
    ) -> Result<Self, FileSinkError> {
        fs.create_dir_all(dir).map_err(|e| FileSinkError::io("cannot create the output directory", dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            subtask,
            parallelism,
            options,
            fs,
            next_seq: 0,
            current: None,
            started: false,
        })
    }

    fn list(&self) -> Result<Vec<PartName>, FileSinkError> {
        let names =
            self.fs.list(&self.dir).map_err(|e| FileSinkError::io("cannot list the output directory", &self.dir, e))?;
        Ok(parse_listing(&names))
    }

    fn remove_all(&self, parts: &[PartName]) -> Result<(), FileSinkError> {
        if parts.is_empty() {
            return Ok(());
        }
        for p in parts {
            let path = self.dir.join(p.file_name());
            self.fs.remove(&path).map_err(|e| FileSinkError::io("cannot delete part", &path, e))?;
        }
        self.fs.sync_dir(&self.dir).map_err(|e| FileSinkError::io("cannot sync the output directory", &self.dir, e))
    }

    /// On first use without restored state: removes this subtask's hidden parts left by an
    /// earlier run that ended before committing them.
    fn ensure_started(&mut self) -> Result<(), FileSinkError> {
        if self.started {
            return Ok(());
        }
        let stale = fresh_start_deletions(&self.list()?, self.subtask);
        if !stale.is_empty() {
            tracing::info!(dir = %self.dir.display(), subtask = self.subtask, parts = stale.len(), "file sink: deleting uncommitted parts of an earlier run");
        }
        self.remove_all(&stale)?;
        self.started = true;
        Ok(())
    }

    fn open_part(&mut self) -> Result<&mut OpenPart, FileSinkError> {
        self.ensure_started()?;
        if self.current.is_none() {
            let seq = self.next_seq;
            if seq >= SEQ_LIMIT {
                return Err(FileSinkError::TooManyParts { dir: self.dir.clone(), subtask: self.subtask });
            }
            let path = self.dir.join(PartName::hidden(self.subtask, seq).file_name());
            let file = self.fs.create(&path).map_err(|e| FileSinkError::io("cannot create part", &path, e))?;
            self.next_seq += 1;
            let out = BufWriter::with_capacity(self.options.buffer_bytes.max(1), file);
            self.current = Some(OpenPart { seq, path, out });
        }
        Ok(self.current.as_mut().expect("opened above"))
    }

    /// Flushes, syncs and closes the part being written; its sequence number.
    fn close_part(&mut self) -> Result<Option<u64>, FileSinkError> {
        let Some(part) = self.current.take() else { return Ok(None) };
        let OpenPart { seq, path, out } = part;
        let mut file = out.into_inner().map_err(|e| FileSinkError::io("cannot write part", &path, e.into_error()))?;
        file.sync().map_err(|e| FileSinkError::io("cannot sync part", &path, e))?;
        Ok(Some(seq))
    }

    fn file_committer(&self) -> FileCommitter {
        FileCommitter {
            dir: self.dir.clone(),
            subtask: self.subtask,
            parallelism: self.parallelism,
            fs: self.fs.clone(),
        }
    }
}

impl<T: Data + Display> TwoPhaseCommitSink<T> for FileSink {
    type Committable = FilePart;
    type Committer = FileCommitter;

    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let part = self.open_part()?;
        for r in batch.drain(..) {
            if let Err(e) = writeln!(part.out, "{r}") {
                return Err(FileSinkError::io("cannot write part", &part.path, e).into());
            }
        }
        Ok(())
    }

    fn pre_commit(&mut self, _checkpoint: CheckpointId) -> Result<Option<FilePart>, SinkError> {
        self.ensure_started()?;
        let Some(seq) = self.close_part()? else { return Ok(None) };
        match self.options.mode {
            FileSinkMode::ExactlyOnce => Ok(Some(FilePart { seq })),
            FileSinkMode::AtLeastOnce => {
                self.file_committer().commit(&[FilePart { seq }])?;
                Ok(None)
            }
        }
    }

    fn snapshot_writer(&mut self) -> Result<Vec<u8>, SinkError> {
        let mut bytes = WRITER_TAG.to_vec();
        bytes.extend_from_slice(&self.next_seq.to_le_bytes());
        Ok(bytes)
    }

    fn restore_writer(&mut self, writer: &[u8], pending: &[FilePart]) -> Result<(), SinkError> {
        if writer.len() != 12 || &writer[..4] != WRITER_TAG {
            return Err(FileSinkError::State(writer.len()).into());
        }
        let counter = u64::from_le_bytes(writer[4..].try_into().expect("8 bytes"));
        let pending: Vec<u64> = pending.iter().map(|p| p.seq).collect();
        let stale = restore_deletions(&self.list()?, self.subtask, counter, &pending);
        tracing::info!(
            dir = %self.dir.display(),
            subtask = self.subtask,
            counter,
            pending = pending.len(),
            deleted = stale.len(),
            "file sink restored"
        );
        self.remove_all(&stale)?;
        self.current = None;
        self.next_seq = counter;
        self.started = true;
        Ok(())
    }

    fn finish(&mut self) -> Result<Option<FilePart>, SinkError> {
        if self.next_seq == 0 {
            // A run that wrote nothing still ends with one (empty) part per subtask, so its
            // output replaces an earlier run's.
            self.open_part()?;
        }
        Ok(self.close_part()?.map(|seq| FilePart { seq }))
    }

    fn committer(&self) -> FileCommitter {
        self.file_committer()
    }
}

/// Renames pre-committed parts of one subtask to their final names (see the module
/// documentation); a part already renamed is skipped.
pub struct FileCommitter {
    dir: PathBuf,
    subtask: u32,
    parallelism: u32,
    fs: Arc<dyn PartFs>,
}

impl std::fmt::Debug for FileCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCommitter").field("dir", &self.dir).field("subtask", &self.subtask).finish_non_exhaustive()
    }
}

impl FileCommitter {
    fn commit_parts(&self, parts: &[FilePart]) -> Result<(), FileSinkError> {
        if parts.is_empty() {
            return Ok(());
        }
        let seqs: Vec<u64> = parts.iter().map(|p| p.seq).collect();
        if seqs.contains(&0) {
            let names = self
                .fs
                .list(&self.dir)
                .map_err(|e| FileSinkError::io("cannot list the output directory", &self.dir, e))?;
            for p in replaced_by_commit(&parse_listing(&names), self.subtask, self.parallelism, &seqs) {
                let path = self.dir.join(p.file_name());
                self.fs.remove(&path).map_err(|e| FileSinkError::io("cannot delete the earlier part", &path, e))?;
            }
        }
        for &seq in &seqs {
            let hidden = self.dir.join(PartName::hidden(self.subtask, seq).file_name());
            let visible = self.dir.join(PartName::visible(self.subtask, seq).file_name());
            match self.fs.rename(&hidden, &visible) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let committed =
                        self.fs.exists(&visible).map_err(|e| FileSinkError::io("cannot look for part", &visible, e))?;
                    if !committed {
                        return Err(FileSinkError::Lost { path: hidden });
                    }
                }
                Err(e) => return Err(FileSinkError::io("cannot commit part", &hidden, e)),
            }
        }
        self.fs.sync_dir(&self.dir).map_err(|e| FileSinkError::io("cannot sync the output directory", &self.dir, e))
    }
}

impl Committer<FilePart> for FileCommitter {
    fn commit(&mut self, committables: &[FilePart]) -> Result<(), SinkError> {
        self.commit_parts(committables).map_err(Into::into)
    }
}

impl<T: Data + Display> DataStream<T> {
    /// Writes one line per record into part files of the directory `dir` (created if
    /// missing), `part-<subtask>-<seq>`, through two-phase commit: with checkpoints, parts
    /// become visible when the checkpoint after them completes (or, with
    /// [`FileSinkMode::AtLeastOnce`], at its barrier), and the rest when the job has
    /// succeeded; without checkpoints, one part per subtask when the job has succeeded. The
    /// first commit of a run replaces an earlier run's parts in `dir`.
    pub fn sink_to_files(self, dir: impl Into<PathBuf>, options: FileSinkOptions) -> DataStreamSink {
        let dir: PathBuf = dir.into();
        self.add_two_phase_commit_sink("Sink: files", move |ctx| Ok(FileSink::create(&dir, options, ctx)?))
    }
}

#[cfg(test)]
mod tests;
