//! Checkpoint storage: where task state files and `_metadata` are written and read, behind
//! [`CheckpointStorage`] so an object store can implement it later. [`FsCheckpointStorage`]
//! keeps a directory (local, or shared by every machine):
//!
//! ```text
//! <dir>/chk-<id>/task-<vertex>-<subtask>.state   header (magic, format, length, xxh3) + rkyv TaskSnapshot
//! <dir>/chk-<id>/_metadata                        written last (see `metadata`)
//! <dir>/shared/<random>-<local name>               files of incremental snapshots, used by
//!                                                  one or more checkpoints
//! ```
//!
//! Every file is written to a hidden temporary name, synced, renamed into place, and its
//! directory synced; any failure is returned, never ignored. A failed sync poisons the storage
//! (as fjall does): what the kernel wrote back is unknown, so every later write is refused and
//! the job's checkpoints fail until it is restarted with a new storage. Every read checks
//! sizes and checksums before it decodes, and an archive is validated before it is used.
//! The file system is reached through [`CheckpointFs`], so tests inject failing writes and syncs.
//!
//! A task file is encoded in place, header and archive, into one page-aligned buffer that the
//! storage keeps from one checkpoint to the next, and written with `O_DIRECT` where the file
//! system takes it (the tail that is not a whole page is written through the page cache). The
//! file's bytes then land on pages already faulted in and are not copied into the page cache:
//! on the window benchmark, zeroing fresh pages and that copy were two thirds of the snapshot
//! writer's CPU time (the frozen state and the parts it encodes still use fresh buffers).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rkyv::rancor;
use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::xxh3_64;

use super::metadata::{
    checkpoint_dir_name, decode_metadata, encode_metadata, parse_checkpoint_dir_name, parse_shared_file,
    parse_task_file, shared_file, task_file, CheckpointMetadata, SharedFile, TaskStateHandle, METADATA_BYTES_MAX,
    METADATA_FILE, METADATA_FORMAT, SHARED_DIR,
};
use super::{CheckpointId, TaskId, TaskSnapshot};

/// A task state file larger than this is refused before it is read (rkyv archives with 32-bit
/// offsets stay far below it).
pub const TASK_STATE_BYTES_MAX: u64 = 4 << 30;

const TASK_MAGIC: [u8; 8] = *b"CSSTATE\0";
/// Magic, format, a reserved word, payload length, payload xxh3: 32 bytes, so the payload
/// starts 16-byte aligned in an aligned read buffer, as rkyv's validation requires.
const TASK_HEADER_BYTES: usize = 32;

/// Alignment of the buffers task files are encoded into: a page, as `O_DIRECT` needs.
pub const FILE_ALIGN: usize = 4096;

/// A buffer a task file is encoded into.
pub type FileBuffer = AlignedVec<FILE_ALIGN>;

/// A kept encoding buffer larger than this is freed after use instead (a task whose state once
/// grew large does not hold the memory for good).
const KEPT_BUFFER_MAX: usize = 256 << 20;

/// Files shorter than this are written through the page cache only.
const DIRECT_WRITE_MIN: usize = 64 << 10;

/// What went wrong with a checkpoint file or directory, naming it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot sync {}: {source}; the checkpoint storage refuses further writes until the job restarts", path.display())]
    SyncFailed {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the checkpoint storage in {} refuses writes since an earlier sync failed ({cause})", dir.display())]
    Poisoned { dir: PathBuf, cause: String },
    #[error("{} is missing", path.display())]
    Missing { path: PathBuf },
    #[error("no checkpoint directory {}", dir.display())]
    NoDirectory { dir: PathBuf },
    #[error("truncated: {} has {actual} bytes of {expected}", path.display())]
    Truncated { path: PathBuf, actual: u64, expected: u64 },
    #[error("{} has {actual} bytes, {expected} expected", path.display())]
    SizeMismatch { path: PathBuf, actual: u64, expected: u64 },
    #[error("{} is larger than the {limit} bytes a checkpoint file may have ({actual} bytes)", path.display())]
    TooLarge { path: PathBuf, actual: u64, limit: u64 },
    #[error("checksum mismatch in {}: expected {expected:016x}, got {actual:016x}", path.display())]
    ChecksumMismatch { path: PathBuf, expected: u64, actual: u64 },
    #[error("{} is not a checkpoint file: {reason}", path.display())]
    NotCheckpointFile { path: PathBuf, reason: String },
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: String, reason: String },
    #[error("invalid task state handle: {0}")]
    BadHandle(String),
    #[error(
        "{} is already a complete checkpoint; is another job writing to this checkpoint directory?",
        dir.display()
    )]
    AlreadyComplete { dir: PathBuf },
}

impl StorageError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound && action.starts_with("read") {
            return StorageError::Missing { path: path.to_path_buf() };
        }
        StorageError::Io { action, path: path.to_path_buf(), source }
    }
}

/// Where checkpoints are kept. Writes are durable when they return `Ok`; `write_metadata` is
/// called last, after every task file of that checkpoint was written.
pub trait CheckpointStorage: Send + Sync + std::fmt::Debug {
    /// Writes one task's snapshot of checkpoint `id` and returns its handle.
    fn write_task_state(
        &self,
        id: CheckpointId,
        task: TaskId,
        snapshot: &TaskSnapshot,
    ) -> Result<TaskStateHandle, StorageError>;
    /// Reads a task's snapshot, checking the handle's size and checksum.
    fn read_task_state(&self, handle: &TaskStateHandle) -> Result<TaskSnapshot, StorageError>;
    /// Checks a task's file as [`read_task_state`](Self::read_task_state) does (size, checksum,
    /// a valid archive) without building the snapshot: what a restore checks before it chooses
    /// a checkpoint, leaving the loading to the TaskManagers.
    fn verify_task_state(&self, handle: &TaskStateHandle) -> Result<(), StorageError>;
    /// Makes the checkpoint complete: the metadata is written last, synced, renamed.
    fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<(), StorageError>;
    /// Reads and checks checkpoint `id`'s metadata (not its task files).
    fn read_metadata(&self, id: CheckpointId) -> Result<CheckpointMetadata, StorageError>;
    /// Ids of the checkpoints with a `_metadata`, ascending.
    fn list(&self) -> Result<Vec<CheckpointId>, StorageError>;
    /// Ids of every checkpoint directory, complete or not, ascending.
    fn list_all(&self) -> Result<Vec<CheckpointId>, StorageError>;
    /// Removes checkpoint `id` wholly (its metadata first, so it is never complete with
    /// files missing); nothing to remove is not an error.
    fn discard(&self, id: CheckpointId) -> Result<(), StorageError>;
    /// Removes one task file (of an acknowledgement the coordinator did not use).
    fn discard_file(&self, handle: &TaskStateHandle) -> Result<(), StorageError>;
    /// Checks that a shared file exists with its size (a restore downloads and checksums it).
    fn check_shared_file(&self, file: &SharedFile) -> Result<(), StorageError>;
    /// A description of where the checkpoints are, for messages.
    fn location(&self) -> String;
}

/// Which step of writing a file failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// Reading the file being copied.
    Read,
    Create,
    Write,
    Sync,
}

/// The file-system calls checkpoint storage makes: the seam through which tests inject
/// failing writes and syncs.
pub trait CheckpointFs: Send + Sync + std::fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates `path` (it must not exist), writes all of `bytes` and syncs the file.
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> Result<(), (WriteStep, io::Error)>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The file's length (following no symbolic link's absence: `NotFound` when missing).
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Reads the whole file into a 16-byte aligned buffer; at most `limit` bytes are read.
    fn read(&self, path: &Path, limit: u64) -> io::Result<AlignedVec>;
    /// The names in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn is_dir(&self, path: &Path) -> bool;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Copies `from` to `to` (which must not exist), syncing it if `sync`; returns its size
    /// and the xxh3-64 of its bytes.
    fn copy(&self, from: &Path, to: &Path, sync: bool) -> Result<(u64, u64), (WriteStep, io::Error)>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

impl CheckpointFs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> Result<(), (WriteStep, io::Error)> {
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(FILE_ALIGN);
        let pages = if aligned && bytes.len() >= DIRECT_WRITE_MIN { bytes.len() / FILE_ALIGN * FILE_ALIGN } else { 0 };
        let direct = match (pages > 0).then(|| open_direct(path)) {
            Some(Ok(file)) => Some(file),
            Some(Err(e)) if e.raw_os_error() != Some(libc::EINVAL) => return Err((WriteStep::Create, e)),
            _ => None,
        };
        let (mut file, written) = match direct {
            Some(mut file) => {
                let written = write_direct(&mut file, &bytes[..pages]).map_err(|e| (WriteStep::Write, e))?;
                clear_direct(&file).map_err(|e| (WriteStep::Write, e))?;
                (file, written)
            }
            None => {
                let file =
                    OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| (WriteStep::Create, e))?;
                (file, 0)
            }
        };
        file.write_all(&bytes[written..]).map_err(|e| (WriteStep::Write, e))?;
        file.sync_all().map_err(|e| (WriteStep::Sync, e))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn read(&self, path: &Path, limit: u64) -> io::Result<AlignedVec> {
        let file = File::open(path)?;
        let len = file.metadata()?.len().min(limit);
        let mut bytes = AlignedVec::with_capacity(usize::try_from(len).unwrap_or(usize::MAX));
        let mut chunk = vec![0u8; 1 << 16];
        let mut reader = file.take(limit);
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => return Ok(bytes),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            bytes.extend_from_slice(&chunk[..n]);
        }
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }

    fn copy(&self, from: &Path, to: &Path, sync: bool) -> Result<(u64, u64), (WriteStep, io::Error)> {
        let mut source = File::open(from).map_err(|e| (WriteStep::Read, e))?;
        let mut dest = OpenOptions::new().write(true).create_new(true).open(to).map_err(|e| (WriteStep::Create, e))?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut chunk = vec![0u8; COPY_CHUNK];
        let mut size = 0u64;
        loop {
            let n = match source.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((WriteStep::Read, e)),
            };
            hasher.update(&chunk[..n]);
            dest.write_all(&chunk[..n]).map_err(|e| (WriteStep::Write, e))?;
            size += n as u64;
        }
        if sync {
            dest.sync_all().map_err(|e| (WriteStep::Sync, e))?;
        }
        Ok((size, hasher.digest()))
    }
}

/// Bytes read and written per call when a shared file is copied.
const COPY_CHUNK: usize = 1 << 20;

/// Creates `path` (which must not exist) for writes that bypass the page cache. A file system
/// without `O_DIRECT` refuses with `EINVAL`; the file is then removed again (some create it
/// before they refuse), and the caller writes through the page cache.
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(path);
    if let Err(e) = &opened {
        if e.raw_os_error() == Some(libc::EINVAL) {
            let _ = std::fs::remove_file(path);
        }
    }
    opened
}

/// Writes whole pages of `bytes` (page-aligned in memory and length) from offset 0 of a file
/// opened with `O_DIRECT`; returns how many bytes it wrote. A write the device refuses at that
/// alignment (`EINVAL`), or a short one, stops it early: the caller writes the rest through the
/// page cache.
fn write_direct(file: &mut File, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match file.write(&bytes[written..]) {
            Ok(0) => break,
            Ok(n) if n % FILE_ALIGN == 0 => written += n,
            Ok(n) => return Ok(written + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Turns `O_DIRECT` off for an open file, so the rest is written through the page cache.
fn clear_direct(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file`, which outlives both calls; F_GETFL
    // and F_SETFL take and return plain integers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Checkpoints in a directory (see the module documentation for the layout).
#[derive(Debug)]
pub struct FsCheckpointStorage {
    dir: PathBuf,
    fs: Arc<dyn CheckpointFs>,
    poisoned: AtomicBool,
    poison_cause: Mutex<String>,
    /// The buffer the last task file was encoded into, kept for the next.
    buffer: Mutex<FileBuffer>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FsCheckpointStorage {
    /// The checkpoints in `dir`, which must exist (for reading: a restore, `checkpoints list`).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        Self::open_with(dir, Arc::new(OsFs))
    }

    /// [`open`](Self::open) through `fs`.
    pub fn open_with(dir: impl Into<PathBuf>, fs: Arc<dyn CheckpointFs>) -> Result<Self, StorageError> {
        let dir = dir.into();
        if !fs.is_dir(&dir) {
            return Err(StorageError::NoDirectory { dir });
        }
        Ok(Self::unchecked(dir, fs))
    }

    /// The checkpoints in `dir`, created (with its parents) if missing: where a job writes.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        Self::create_with(dir, Arc::new(OsFs))
    }

    /// [`create`](Self::create) through `fs`.
    pub fn create_with(dir: impl Into<PathBuf>, fs: Arc<dyn CheckpointFs>) -> Result<Self, StorageError> {
        let dir = dir.into();
        fs.create_dir_all(&dir).map_err(|e| StorageError::io("create the checkpoint directory", &dir, e))?;
        Ok(Self::unchecked(dir, fs))
    }

    fn unchecked(dir: PathBuf, fs: Arc<dyn CheckpointFs>) -> Self {
        Self {
            dir,
            fs,
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(String::new()),
            buffer: Mutex::new(FileBuffer::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/chk-<id>`.
    pub fn checkpoint_path(&self, id: CheckpointId) -> PathBuf {
        self.dir.join(checkpoint_dir_name(id))
    }

    /// Whether an earlier sync failed, after which every write is refused.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn check_writable(&self) -> Result<(), StorageError> {
        if !self.is_poisoned() {
            return Ok(());
        }
        let cause = self.poison_cause.lock().map(|c| c.clone()).unwrap_or_default();
        Err(StorageError::Poisoned { dir: self.dir.clone(), cause })
    }

    fn poison(&self, path: &Path, source: io::Error) -> StorageError {
        let error = StorageError::SyncFailed { path: path.to_path_buf(), source };
        if let Ok(mut cause) = self.poison_cause.lock() {
            if cause.is_empty() {
                *cause = error.to_string();
            }
        }
        self.poisoned.store(true, Ordering::Release);
        tracing::error!(dir = %self.dir.display(), "{error}");
        error
    }

    /// Writes `bytes` as `dir/name`: a temporary name, synced, renamed, the directory synced.
    fn write_file(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, StorageError> {
        self.check_writable()?;
        let dest = dir.join(name);
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
        if let Err((step, e)) = self.fs.write_synced(&temp, bytes) {
            let _ = self.fs.remove_file(&temp);
            return Err(match step {
                WriteStep::Create => StorageError::io("create", &temp, e),
                WriteStep::Read | WriteStep::Write => StorageError::io("write", &temp, e),
                WriteStep::Sync => self.poison(&temp, e),
            });
        }
        if let Err(e) = self.fs.rename(&temp, &dest) {
            let _ = self.fs.remove_file(&temp);
            return Err(StorageError::io("rename a temporary file to", &dest, e));
        }
        self.fs.sync_dir(dir).map_err(|e| self.poison(dir, e))?;
        Ok(dest)
    }

    /// Writes an encoded task file of checkpoint `id` as `file`; returns its size.
    fn write_encoded(&self, id: CheckpointId, file: &str, bytes: &[u8]) -> Result<u64, StorageError> {
        let dir = self.checkpoint_path(id);
        if self.fs.len(&dir.join(METADATA_FILE)).is_ok() {
            return Err(StorageError::AlreadyComplete { dir });
        }
        let created = !self.fs.is_dir(&dir);
        self.fs.create_dir_all(&dir).map_err(|e| StorageError::io("create", &dir, e))?;
        if created {
            self.fs.sync_dir(&self.dir).map_err(|e| self.poison(&self.dir, e))?;
        }
        let name = file.rsplit('/').next().unwrap_or(file).to_string();
        self.write_file(&dir, &name, bytes)?;
        Ok(bytes.len() as u64)
    }

    /// The path of a handle's file, after checking that it names a task file.
    fn handle_path(&self, handle: &TaskStateHandle) -> Result<PathBuf, StorageError> {
        parse_task_file(&handle.file).map_err(StorageError::BadHandle)?;
        Ok(self.dir.join(&handle.file))
    }

    /// `<dir>/shared`.
    pub fn shared_path(&self) -> PathBuf {
        self.dir.join(SHARED_DIR)
    }

    /// The path of shared file `name` (`shared/<file>`), after checking its shape.
    fn shared_file_path(&self, name: &str) -> Result<PathBuf, StorageError> {
        parse_shared_file(name).map_err(StorageError::BadHandle)?;
        Ok(self.dir.join(name))
    }

    /// Copies local file `local` into the shared area under a new random name (keeping the
    /// local name after it, for people reading the directory), synced and renamed into place.
    pub fn upload_shared(&self, local: &Path) -> Result<SharedFile, StorageError> {
        self.check_writable()?;
        let dir = self.shared_path();
        if !self.fs.is_dir(&dir) {
            self.fs.create_dir_all(&dir).map_err(|e| StorageError::io("create", &dir, e))?;
            self.fs.sync_dir(&self.dir).map_err(|e| self.poison(&self.dir, e))?;
        }
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| StorageError::Io {
            action: "draw a random name for",
            path: local.to_path_buf(),
            source: io::Error::other(e.to_string()),
        })?;
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let local_name: String = local
            .file_name()
            .map(|n| n.to_string_lossy().chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect())
            .unwrap_or_default();
        let name = format!("{hex}-{local_name}");
        let dest = dir.join(&name);
        let temp = dir.join(format!(".{name}.tmp"));
        let copied = self.fs.copy(local, &temp, true);
        let (size, checksum) = match copied {
            Ok(done) => done,
            Err((step, e)) => {
                let _ = self.fs.remove_file(&temp);
                return Err(match step {
                    WriteStep::Read => StorageError::io("read", local, e),
                    WriteStep::Create => StorageError::io("create", &temp, e),
                    WriteStep::Write => StorageError::io("write", &temp, e),
                    WriteStep::Sync => self.poison(&temp, e),
                });
            }
        };
        if let Err(e) = self.fs.rename(&temp, &dest) {
            let _ = self.fs.remove_file(&temp);
            return Err(StorageError::io("rename a temporary file to", &dest, e));
        }
        self.fs.sync_dir(&dir).map_err(|e| self.poison(&dir, e))?;
        Ok(SharedFile { name: shared_file(&name), size, checksum })
    }

    /// Copies shared file `file` to `dest` (a new local file), checking its size and checksum;
    /// a damaged copy is removed again.
    pub fn download_shared(&self, file: &SharedFile, dest: &Path) -> Result<(), StorageError> {
        let path = self.shared_file_path(&file.name)?;
        let (size, checksum) = self.fs.copy(&path, dest, false).map_err(|(step, e)| match step {
            WriteStep::Read => StorageError::io("read", &path, e),
            _ => StorageError::io("write", dest, e),
        })?;
        let wrong = if size < file.size {
            Some(StorageError::Truncated { path: path.clone(), actual: size, expected: file.size })
        } else if size > file.size {
            Some(StorageError::SizeMismatch { path: path.clone(), actual: size, expected: file.size })
        } else if checksum != file.checksum {
            Some(StorageError::ChecksumMismatch { path: path.clone(), expected: file.checksum, actual: checksum })
        } else {
            None
        };
        match wrong {
            Some(e) => {
                let _ = self.fs.remove_file(dest);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Checks that shared file `file` exists with its size, without reading it.
    pub fn check_shared_size(&self, file: &SharedFile) -> Result<(), StorageError> {
        let path = self.shared_file_path(&file.name)?;
        let actual = self.fs.len(&path).map_err(|e| StorageError::io("read", &path, e))?;
        match actual.cmp(&file.size) {
            std::cmp::Ordering::Less => Err(StorageError::Truncated { path, actual, expected: file.size }),
            std::cmp::Ordering::Greater => Err(StorageError::SizeMismatch { path, actual, expected: file.size }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// Removes shared files `names` (`shared/<file>`); one already gone is not an error. Every
    /// name is tried; the first failure is returned.
    pub fn discard_shared(&self, names: &[String]) -> Result<(), StorageError> {
        let mut first = Ok(());
        for name in names {
            let removed = self.shared_file_path(name).and_then(|path| match self.fs.remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io("remove", &path, e)),
                _ => Ok(()),
            });
            if first.is_ok() {
                first = removed;
            }
        }
        first
    }

    /// The shared files in storage (`shared/<file>`), without temporary files being written.
    pub fn list_shared(&self) -> Result<Vec<String>, StorageError> {
        let dir = self.shared_path();
        if !self.fs.is_dir(&dir) {
            return Ok(Vec::new());
        }
        let names = self.fs.list_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))?;
        let mut files: Vec<String> =
            names.iter().map(|n| shared_file(n)).filter(|n| parse_shared_file(n).is_ok()).collect();
        files.sort();
        Ok(files)
    }

    /// Checks that a handle's file exists with the handle's size, without reading it (a cheap
    /// check for listings; a restore reads and checksums every file).
    pub fn check_task_file_size(&self, handle: &TaskStateHandle) -> Result<(), StorageError> {
        let path = self.handle_path(handle)?;
        let actual = self.fs.len(&path).map_err(|e| StorageError::io("read", &path, e))?;
        match actual.cmp(&handle.size) {
            std::cmp::Ordering::Less => Err(StorageError::Truncated { path, actual, expected: handle.size }),
            std::cmp::Ordering::Greater => Err(StorageError::SizeMismatch { path, actual, expected: handle.size }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// A task file's path and bytes, of the size its handle says.
    fn read_task_file(&self, handle: &TaskStateHandle) -> Result<(PathBuf, AlignedVec), StorageError> {
        let path = self.handle_path(handle)?;
        let bytes = self.read_bounded(&path, TASK_STATE_BYTES_MAX)?;
        let actual = bytes.len() as u64;
        if actual < handle.size {
            return Err(StorageError::Truncated { path, actual, expected: handle.size });
        }
        if actual > handle.size {
            return Err(StorageError::SizeMismatch { path, actual, expected: handle.size });
        }
        Ok((path, bytes))
    }

    fn read_bounded(&self, path: &Path, limit: u64) -> Result<AlignedVec, StorageError> {
        let len = self.fs.len(path).map_err(|e| StorageError::io("read", path, e))?;
        if len > limit {
            return Err(StorageError::TooLarge { path: path.to_path_buf(), actual: len, limit });
        }
        self.fs.read(path, limit).map_err(|e| StorageError::io("read", path, e))
    }

    /// Makes checkpoint `meta.id` of this storage (task files only, every one canonical: a
    /// savepoint) the self-contained savepoint directory `dest`: its directory is moved (or,
    /// across file systems, copied and synced) into a hidden `.<name>.inprogress` next to
    /// `dest`, its metadata written there last, and the whole renamed to `dest` and the parent
    /// synced, so `dest` appears complete or not at all. On failure nothing is left at `dest`
    /// and the hidden directory is removed; the checkpoint's own directory may be gone (the
    /// coordinator discards it anyway).
    pub fn finalize_savepoint(&self, meta: &CheckpointMetadata, dest: &Path) -> Result<(), StorageError> {
        self.check_writable()?;
        let bad = |reason: &str| StorageError::BadHandle(format!("savepoint {}: {reason}", dest.display()));
        if !meta.savepoint || meta.tasks.iter().any(|t| !t.handle.shared.is_empty()) {
            return Err(bad("its state must be canonical, without shared files"));
        }
        let (Some(parent), Some(name)) = (dest.parent(), dest.file_name().and_then(|n| n.to_str())) else {
            return Err(bad("not a directory path"));
        };
        if self.fs.is_dir(dest) || self.fs.len(dest).is_ok() {
            return Err(StorageError::io(
                "create the savepoint directory",
                dest,
                io::Error::new(io::ErrorKind::AlreadyExists, "it exists"),
            ));
        }
        let hidden = parent.join(format!(".{name}.inprogress"));
        self.fs.create_dir_all(&hidden).map_err(|e| StorageError::io("create", &hidden, e))?;
        let moved = self.move_into_savepoint(meta, &hidden, parent, dest);
        if moved.is_err() {
            if let Err(e) = self.fs.remove_dir_all(&hidden) {
                tracing::warn!(dir = %hidden.display(), error = %e, "could not remove an unfinished savepoint");
            }
        }
        moved
    }

    fn move_into_savepoint(
        &self,
        meta: &CheckpointMetadata,
        hidden: &Path,
        parent: &Path,
        dest: &Path,
    ) -> Result<(), StorageError> {
        let from = self.checkpoint_path(meta.id);
        let to = hidden.join(checkpoint_dir_name(meta.id));
        match self.fs.rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                self.fs.create_dir_all(&to).map_err(|e| StorageError::io("create", &to, e))?;
                let names = self.fs.list_dir(&from).map_err(|e| StorageError::io("list", &from, e))?;
                for name in names.iter().filter(|n| !n.starts_with('.')) {
                    self.fs.copy(&from.join(name), &to.join(name), true).map_err(|(step, e)| match step {
                        WriteStep::Sync => StorageError::SyncFailed { path: to.join(name), source: e },
                        _ => StorageError::io("copy", &from.join(name), e),
                    })?;
                }
            }
            Err(e) => return Err(StorageError::io("move", &from, e)),
        }
        let sync =
            |dir: &Path| self.fs.sync_dir(dir).map_err(|e| StorageError::SyncFailed { path: dir.into(), source: e });
        sync(&to)?;
        sync(hidden)?;
        FsCheckpointStorage::open_with(hidden, self.fs.clone())?.write_metadata(meta)?;
        self.fs.rename(hidden, dest).map_err(|e| StorageError::io("rename", hidden, e))?;
        sync(parent)?;
        if self.fs.is_dir(&from) {
            if let Err(e) = self.fs.remove_dir_all(&from) {
                tracing::warn!(dir = %from.display(), error = %e, "could not remove a savepoint's copied checkpoint directory");
            }
        }
        Ok(())
    }

    fn ids(&self, complete_only: bool) -> Result<Vec<CheckpointId>, StorageError> {
        let names = self.fs.list_dir(&self.dir).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StorageError::NoDirectory { dir: self.dir.clone() },
            _ => StorageError::io("list", &self.dir, e),
        })?;
        let mut ids: Vec<CheckpointId> = names
            .iter()
            .filter_map(|name| parse_checkpoint_dir_name(name))
            .filter(|&id| self.fs.is_dir(&self.checkpoint_path(id)))
            .filter(|&id| !complete_only || self.fs.len(&self.checkpoint_path(id).join(METADATA_FILE)).is_ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

impl CheckpointStorage for FsCheckpointStorage {
    fn write_task_state(
        &self,
        id: CheckpointId,
        task: TaskId,
        snapshot: &TaskSnapshot,
    ) -> Result<TaskStateHandle, StorageError> {
        self.check_writable()?;
        let file = task_file(id, task);
        let kept = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|e| e.into_inner()));
        let (bytes, checksum) = encode_task_state(snapshot, kept).map_err(|reason| StorageError::Encode {
            what: format!("the state of {task} for checkpoint {id}"),
            reason,
        })?;
        let written = self.write_encoded(id, &file, &bytes);
        if bytes.capacity() <= KEPT_BUFFER_MAX {
            *self.buffer.lock().unwrap_or_else(|e| e.into_inner()) = bytes;
        }
        let nodes = Some(snapshot.nodes.iter().map(|(n, _)| *n).collect());
        written.map(|size| TaskStateHandle { file, size, checksum, shared: Vec::new(), nodes })
    }

    fn read_task_state(&self, handle: &TaskStateHandle) -> Result<TaskSnapshot, StorageError> {
        let (path, bytes) = self.read_task_file(handle)?;
        decode_task_state(&bytes, Some(handle.checksum)).map_err(|e| e.at(path))
    }

    fn verify_task_state(&self, handle: &TaskStateHandle) -> Result<(), StorageError> {
        let (path, bytes) = self.read_task_file(handle)?;
        let payload = checked_payload(&bytes, Some(handle.checksum)).map_err(|e| e.at(path.clone()))?;
        rkyv::access::<super::ArchivedTaskSnapshot, rancor::Error>(payload)
            .map(|_| ())
            .map_err(|e| TaskStateDecodeError::Archive(e.to_string()).at(path))
    }

    fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<(), StorageError> {
        self.check_writable()?;
        meta.check(meta.id).map_err(|reason| StorageError::Encode {
            what: format!("the metadata of checkpoint {}", meta.id),
            reason: format!("it is inconsistent: {reason}"),
        })?;
        let bytes = encode_metadata(meta).map_err(|reason| StorageError::Encode {
            what: format!("the metadata of checkpoint {}", meta.id),
            reason,
        })?;
        let dir = self.checkpoint_path(meta.id);
        if !self.fs.is_dir(&dir) {
            return Err(StorageError::Missing { path: dir });
        }
        self.write_file(&dir, METADATA_FILE, &bytes)?;
        self.fs.sync_dir(&self.dir).map_err(|e| self.poison(&self.dir, e))
    }

    fn read_metadata(&self, id: CheckpointId) -> Result<CheckpointMetadata, StorageError> {
        let path = self.checkpoint_path(id).join(METADATA_FILE);
        let bytes = self.read_bounded(&path, METADATA_BYTES_MAX)?;
        let meta =
            decode_metadata(&bytes).map_err(|e| StorageError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        meta.check(id).map_err(|reason| StorageError::Corrupt { path, reason })?;
        Ok(meta)
    }

    fn list(&self) -> Result<Vec<CheckpointId>, StorageError> {
        self.ids(true)
    }

    fn list_all(&self) -> Result<Vec<CheckpointId>, StorageError> {
        self.ids(false)
    }

    fn discard(&self, id: CheckpointId) -> Result<(), StorageError> {
        let dir = self.checkpoint_path(id);
        let metadata = dir.join(METADATA_FILE);
        let unlinked = match self.fs.remove_file(&metadata) {
            Ok(()) => self.fs.sync_dir(&dir).map_err(|e| StorageError::io("sync", &dir, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => return Err(StorageError::io("remove", &metadata, e)),
        };
        let removed = match self.fs.remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io("remove", &dir, e)),
            _ => Ok(()),
        };
        unlinked.and(removed)
    }

    fn discard_file(&self, handle: &TaskStateHandle) -> Result<(), StorageError> {
        let path = self.handle_path(handle)?;
        match self.fs.remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io("remove", &path, e)),
            _ => Ok(()),
        }
    }

    fn check_shared_file(&self, file: &SharedFile) -> Result<(), StorageError> {
        self.check_shared_size(file)
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

impl corestream_state::lsm::SharedFileStore for FsCheckpointStorage {
    fn location(&self) -> String {
        std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone()).display().to_string()
    }

    fn upload(&self, local: &Path) -> Result<SharedFile, String> {
        self.upload_shared(local).map_err(|e| e.to_string())
    }

    fn download(&self, file: &SharedFile, dest: &Path) -> Result<(), String> {
        self.download_shared(file, dest).map_err(|e| e.to_string())
    }
}

/// A task state file's bytes and its payload's checksum, encoded into `buffer` (cleared first;
/// its capacity is reused): the header is reserved, the archive serialized after it and the
/// header filled in, so the file's bytes are never copied.
pub fn encode_task_state(snapshot: &TaskSnapshot, mut buffer: FileBuffer) -> Result<(FileBuffer, u64), String> {
    // Sized up front: growing the archive by doubling would copy a large state several times.
    let capacity = TASK_HEADER_BYTES + snapshot.size_bytes() + snapshot.size_bytes() / 16 + 64 * 1024;
    buffer.clear();
    buffer.reserve(capacity);
    // Relative pointers and alignment padding survive the shift: the header is a multiple of
    // every archived type's alignment.
    buffer.extend_from_slice(&[0; TASK_HEADER_BYTES]);
    let mut bytes = rkyv::api::high::to_bytes_in::<_, rancor::Error>(snapshot, buffer).map_err(|e| e.to_string())?;
    let payload_len = (bytes.len() - TASK_HEADER_BYTES) as u64;
    let checksum = xxh3_64(&bytes[TASK_HEADER_BYTES..]);
    let header = &mut bytes[..TASK_HEADER_BYTES];
    header[..8].copy_from_slice(&TASK_MAGIC);
    header[8..12].copy_from_slice(&METADATA_FORMAT.to_le_bytes());
    header[12..16].copy_from_slice(&0u32.to_le_bytes());
    header[16..24].copy_from_slice(&payload_len.to_le_bytes());
    header[24..32].copy_from_slice(&checksum.to_le_bytes());
    Ok((bytes, checksum))
}

/// Why a task state file's bytes are not a snapshot (the path is added by `Self::at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStateDecodeError {
    Truncated { actual: u64, expected: u64 },
    SizeMismatch { actual: u64, expected: u64 },
    NotTaskState(String),
    Checksum { expected: u64, actual: u64 },
    Archive(String),
}

impl TaskStateDecodeError {
    fn at(self, path: PathBuf) -> StorageError {
        match self {
            Self::Truncated { actual, expected } => StorageError::Truncated { path, actual, expected },
            Self::SizeMismatch { actual, expected } => StorageError::SizeMismatch { path, actual, expected },
            Self::NotTaskState(reason) => StorageError::NotCheckpointFile { path, reason },
            Self::Checksum { expected, actual } => StorageError::ChecksumMismatch { path, expected, actual },
            Self::Archive(reason) => StorageError::Corrupt { path, reason },
        }
    }
}

/// Decodes a task state file read into an aligned buffer: header, length, checksum (also
/// against `expected_checksum`, the handle's), then the validated archive.
pub fn decode_task_state(
    bytes: &AlignedVec,
    expected_checksum: Option<u64>,
) -> Result<TaskSnapshot, TaskStateDecodeError> {
    let payload = checked_payload(bytes, expected_checksum)?;
    rkyv::from_bytes::<TaskSnapshot, rancor::Error>(payload).map_err(|e| TaskStateDecodeError::Archive(e.to_string()))
}

/// The archive of a task state file after its header, length and checksum are checked.
fn checked_payload(bytes: &AlignedVec, expected_checksum: Option<u64>) -> Result<&[u8], TaskStateDecodeError> {
    let actual_len = bytes.len() as u64;
    if bytes.len() < TASK_HEADER_BYTES {
        return Err(TaskStateDecodeError::Truncated { actual: actual_len, expected: TASK_HEADER_BYTES as u64 });
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if bytes[..8] != TASK_MAGIC {
        return Err(TaskStateDecodeError::NotTaskState("wrong magic".into()));
    }
    let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if format != METADATA_FORMAT {
        return Err(TaskStateDecodeError::NotTaskState(format!("format {format}, this build reads {METADATA_FORMAT}")));
    }
    let (payload_len, header_checksum) = (word(16), word(24));
    let expected_len = (TASK_HEADER_BYTES as u64).saturating_add(payload_len);
    if actual_len < expected_len {
        return Err(TaskStateDecodeError::Truncated { actual: actual_len, expected: expected_len });
    }
    if actual_len > expected_len {
        return Err(TaskStateDecodeError::SizeMismatch { actual: actual_len, expected: expected_len });
    }
    let expected = expected_checksum.unwrap_or(header_checksum);
    if header_checksum != expected {
        return Err(TaskStateDecodeError::Checksum { expected, actual: header_checksum });
    }
    let payload = &bytes[TASK_HEADER_BYTES..];
    let actual = xxh3_64(payload);
    if actual != expected {
        return Err(TaskStateDecodeError::Checksum { expected, actual });
    }
    Ok(payload)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::metadata::tests::metadata;
    use crate::checkpoint::metadata::TaskEntry;
    use crate::checkpoint::{
        ChannelEvent, ChannelState, ChannelWatermark, InputWatermarks, OperatorStateParts, PartLayout,
        TaskCheckpointMetrics, TimeEvent,
    };

    pub(crate) fn snapshot(seed: u8) -> TaskSnapshot {
        let mut state = OperatorStateParts::default();
        state.push("keyed", PartLayout::KeyGroups, vec![seed; 300]);
        state.push("position", PartLayout::Subtask, (seed as u64).to_le_bytes().to_vec());
        let mut snapshot = TaskSnapshot::default();
        snapshot.put_node(2, state);
        let events = vec![ChannelEvent { after: 1, event: TimeEvent::Watermark(i64::from(seed)) }];
        snapshot.input_channels.push(ChannelState { channel: 1, buffers: vec![vec![seed; 64], vec![1, 2, 3]], events });
        let channel = ChannelWatermark { watermark: i64::from(seed), idle: false, aligned: true };
        snapshot.input_watermarks =
            Some(InputWatermarks { clock: i64::from(seed), idle: false, channels: vec![channel; 2] });
        snapshot
    }

    /// Writes a complete checkpoint `id` of a job with vertices of `parallelism`, task `t`'s
    /// snapshot being `snapshot(t.vertex * 10 + t.subtask + id)`.
    pub(crate) fn write_checkpoint(
        storage: &FsCheckpointStorage,
        id: CheckpointId,
        parallelism: &[u32],
    ) -> CheckpointMetadata {
        let mut meta = metadata(id, parallelism);
        meta.tasks = meta
            .layout()
            .tasks()
            .map(|task| {
                let seed = (task.vertex * 10 + task.subtask) as u8 + id as u8;
                let handle = storage.write_task_state(id, task, &snapshot(seed)).unwrap();
                TaskEntry { task, handle, metrics: TaskCheckpointMetrics { sync_ms: 1, ..Default::default() } }
            })
            .collect();
        meta.state_bytes = meta.tasks.iter().map(|t| t.handle.size).sum();
        storage.write_metadata(&meta).unwrap();
        meta
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = OsFs.list_dir(dir).unwrap();
        v.sort();
        v
    }

    #[test]
    fn task_state_and_metadata_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path().join("cp")).unwrap();
        let meta = write_checkpoint(&storage, 3, &[2, 1]);
        assert_eq!(storage.list().unwrap(), vec![3]);
        assert_eq!(storage.read_metadata(3).unwrap(), meta);
        for entry in &meta.tasks {
            let seed = (entry.task.vertex * 10 + entry.task.subtask) as u8 + 3;
            assert_eq!(storage.read_task_state(&entry.handle).unwrap(), snapshot(seed));
        }
        assert_eq!(
            names(&storage.checkpoint_path(3)),
            ["_metadata", "task-0-0.state", "task-0-1.state", "task-1-0.state"],
            "no temporary file is left behind"
        );
    }

    #[test]
    fn an_empty_snapshot_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        let handle = storage.write_task_state(1, TaskId { vertex: 0, subtask: 0 }, &TaskSnapshot::default()).unwrap();
        assert_eq!(storage.read_task_state(&handle).unwrap(), TaskSnapshot::default());
    }

    /// A snapshot whose state part has `len` bytes of a pattern from `seed`.
    fn large_snapshot(seed: u8, len: usize) -> TaskSnapshot {
        let mut state = OperatorStateParts::default();
        state.push("keyed", PartLayout::KeyGroups, (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect());
        let mut snapshot = TaskSnapshot::default();
        snapshot.put_node(1, state);
        snapshot
    }

    #[test]
    fn large_task_files_round_trip_with_one_buffer_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        let lens = [300_000, 70_001, 1 << 20, 5];
        let handles: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let task = TaskId { vertex: 0, subtask: i as u32 };
                storage.write_task_state(1, task, &large_snapshot(i as u8, len)).unwrap()
            })
            .collect();
        assert!(storage.buffer.lock().unwrap().capacity() >= 1 << 20, "the largest buffer is kept");
        for (i, (handle, &len)) in handles.iter().zip(&lens).enumerate() {
            assert_eq!(storage.read_task_state(handle).unwrap(), large_snapshot(i as u8, len));
            assert_eq!(handle.size, OsFs.len(&tmp.path().join(&handle.file)).unwrap());
        }
    }

    #[test]
    fn os_writes_keep_every_byte_whatever_the_length_and_alignment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut buffer = FileBuffer::new();
        buffer.extend_from_slice(&(0..300_001u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        for len in [0, 1, 4095, 4096, 65_536, 65_537, 200_000, 300_001] {
            for offset in [0, 1] {
                let bytes = &buffer[offset..len.max(offset)];
                let path = tmp.path().join(format!("f-{len}-{offset}"));
                OsFs.write_synced(&path, bytes).unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), bytes, "{len} bytes from offset {offset}");
                let (step, _) = OsFs.write_synced(&path, bytes).unwrap_err();
                assert_eq!(step, WriteStep::Create, "an existing file is never overwritten");
            }
        }
    }

    #[test]
    fn only_directories_with_metadata_are_listed_as_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        write_checkpoint(&storage, 10, &[1]);
        write_checkpoint(&storage, 9, &[1]);
        storage.write_task_state(11, TaskId { vertex: 0, subtask: 0 }, &snapshot(1)).unwrap();
        std::fs::create_dir(tmp.path().join("chk-011")).unwrap();
        std::fs::write(tmp.path().join("chk-12"), b"a file, not a directory").unwrap();
        std::fs::create_dir(tmp.path().join("savepoints")).unwrap();
        assert_eq!(storage.list().unwrap(), vec![9, 10]);
        assert_eq!(storage.list_all().unwrap(), vec![9, 10, 11]);
    }

    fn corrupt_case(damage: impl FnOnce(&Path), expect: impl FnOnce(&StorageError, &str)) {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        let meta = write_checkpoint(&storage, 7, &[1, 1]);
        let file = tmp.path().join("chk-7/task-1-0.state");
        damage(&file);
        let err = storage.read_task_state(&meta.tasks[1].handle).unwrap_err();
        expect(&err, &err.to_string());
        assert!(err.to_string().contains(&file.display().to_string()), "{err} does not name {}", file.display());
        storage.read_task_state(&meta.tasks[0].handle).unwrap();
    }

    #[test]
    fn a_flipped_byte_is_a_checksum_mismatch() {
        corrupt_case(
            |file| {
                let mut bytes = std::fs::read(file).unwrap();
                let last = bytes.len() - 5;
                bytes[last] ^= 0x40;
                std::fs::write(file, bytes).unwrap();
            },
            |err, text| {
                assert!(matches!(err, StorageError::ChecksumMismatch { .. }), "{err:?}");
                assert!(text.starts_with("checksum mismatch in "), "{text}");
            },
        );
    }

    #[test]
    fn a_flipped_header_byte_is_detected() {
        corrupt_case(
            |file| {
                let mut bytes = std::fs::read(file).unwrap();
                bytes[30] ^= 1;
                std::fs::write(file, bytes).unwrap();
            },
            |err, _| assert!(matches!(err, StorageError::ChecksumMismatch { .. }), "{err:?}"),
        );
        corrupt_case(
            |file| {
                let mut bytes = std::fs::read(file).unwrap();
                bytes[0] = b'X';
                std::fs::write(file, bytes).unwrap();
            },
            |err, text| {
                assert!(matches!(err, StorageError::NotCheckpointFile { .. }), "{err:?}");
                assert!(text.contains("wrong magic"), "{text}");
            },
        );
    }

    #[test]
    fn a_truncated_file_says_how_much_is_left() {
        corrupt_case(
            |file| {
                let bytes = std::fs::read(file).unwrap();
                std::fs::write(file, &bytes[..bytes.len() - 100]).unwrap();
            },
            |err, text| {
                let StorageError::Truncated { actual, expected, .. } = err else { panic!("{err:?}") };
                assert_eq!(actual + 100, *expected);
                assert!(text.starts_with("truncated: "), "{text}");
                assert!(text.contains(&format!("{actual} bytes of {expected}")), "{text}");
            },
        );
        corrupt_case(
            |file| std::fs::write(file, b"CSSTATE").unwrap(),
            |err, _| assert!(matches!(err, StorageError::Truncated { actual: 7, .. }), "{err:?}"),
        );
    }

    #[test]
    fn a_deleted_task_file_is_missing() {
        corrupt_case(
            |file| std::fs::remove_file(file).unwrap(),
            |err, text| {
                assert!(matches!(err, StorageError::Missing { .. }), "{err:?}");
                assert!(text.ends_with("is missing"), "{text}");
            },
        );
    }

    #[test]
    fn a_file_replaced_by_another_valid_one_fails_the_handle_checksum() {
        corrupt_case(
            |file| {
                let (bytes, _) = encode_task_state(&snapshot(99), FileBuffer::new()).unwrap();
                let mut same_size = std::fs::read(file).unwrap();
                assert_eq!(bytes.len(), same_size.len());
                same_size.copy_from_slice(&bytes);
                std::fs::write(file, same_size).unwrap();
            },
            |err, _| assert!(matches!(err, StorageError::ChecksumMismatch { .. }), "{err:?}"),
        );
    }

    #[test]
    fn the_size_check_finds_truncated_grown_and_missing_files_without_reading_them() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        let meta = write_checkpoint(&storage, 1, &[3]);
        let path = |i: usize| tmp.path().join(&meta.tasks[i].handle.file);
        storage.check_task_file_size(&meta.tasks[0].handle).unwrap();
        std::fs::write(path(0), b"short").unwrap();
        let mut longer = std::fs::read(path(1)).unwrap();
        longer.push(0);
        std::fs::write(path(1), longer).unwrap();
        std::fs::remove_file(path(2)).unwrap();
        let errors: Vec<StorageError> =
            meta.tasks.iter().map(|t| storage.check_task_file_size(&t.handle).unwrap_err()).collect();
        assert!(matches!(errors[0], StorageError::Truncated { actual: 5, .. }), "{:?}", errors[0]);
        assert!(matches!(errors[1], StorageError::SizeMismatch { .. }), "{:?}", errors[1]);
        assert!(matches!(errors[2], StorageError::Missing { .. }), "{:?}", errors[2]);
    }

    /// A task file whose checksum is right but whose archive is not a snapshot.
    fn bad_archive() -> (AlignedVec, u64) {
        let mut bytes = AlignedVec::<16>::new();
        let payload = [0xffu8; 48];
        bytes.extend_from_slice(&TASK_MAGIC);
        bytes.extend_from_slice(&METADATA_FORMAT.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&xxh3_64(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        (bytes, xxh3_64(&payload))
    }

    #[test]
    fn a_valid_checksum_over_a_bad_archive_is_refused_by_validation() {
        let (bytes, _) = bad_archive();
        assert!(matches!(decode_task_state(&bytes, None), Err(TaskStateDecodeError::Archive(_))));
    }

    #[test]
    fn verifying_a_task_file_checks_what_reading_it_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        let handle = storage.write_task_state(1, TaskId { vertex: 0, subtask: 1 }, &snapshot(5)).unwrap();
        storage.verify_task_state(&handle).unwrap();

        let path = tmp.path().join(&handle.file);
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(storage.verify_task_state(&handle), Err(StorageError::Truncated { .. })));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(storage.verify_task_state(&handle), Err(StorageError::ChecksumMismatch { .. })));

        let (bad, checksum) = bad_archive();
        std::fs::write(&path, &bad).unwrap();
        let bad_handle = TaskStateHandle { size: bad.len() as u64, checksum, ..handle.clone() };
        for err in
            [storage.verify_task_state(&bad_handle).unwrap_err(), storage.read_task_state(&bad_handle).unwrap_err()]
        {
            assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        }
    }

    #[test]
    fn corrupt_truncated_or_missing_metadata_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        for id in 1..=3 {
            write_checkpoint(&storage, id, &[2]);
        }
        let path = |id: u64| tmp.path().join(format!("chk-{id}/_metadata"));
        let bytes = std::fs::read(path(1)).unwrap();
        std::fs::write(path(1), &bytes[..bytes.len() / 2]).unwrap();
        let mut edited = std::fs::read(path(2)).unwrap();
        let at = edited.windows(9).position(|w| w == b"\"test-job").unwrap();
        edited[at + 1] = b'b';
        std::fs::write(path(2), edited).unwrap();
        std::fs::remove_file(path(3)).unwrap();
        for (id, needle) in [(1, "truncated: "), (2, "checksum mismatch: expected "), (3, "is missing")] {
            let err = storage.read_metadata(id).unwrap_err().to_string();
            assert!(err.contains(&path(id).display().to_string()), "{err}");
            assert!(err.contains(needle), "{err}");
        }
        assert_eq!(storage.list().unwrap(), vec![1, 2]);
    }

    #[test]
    fn metadata_of_another_checkpoint_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        write_checkpoint(&storage, 4, &[1]);
        std::fs::create_dir(tmp.path().join("chk-5")).unwrap();
        std::fs::copy(tmp.path().join("chk-4/_metadata"), tmp.path().join("chk-5/_metadata")).unwrap();
        let err = storage.read_metadata(5).unwrap_err().to_string();
        assert!(err.contains("describes checkpoint 4, not 5"), "{err}");
    }

    #[test]
    fn a_handle_outside_the_layout_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path().join("cp")).unwrap();
        std::fs::write(tmp.path().join("victim"), b"keep").unwrap();
        let handle =
            TaskStateHandle { file: "../victim".into(), size: 4, checksum: 0, shared: Vec::new(), nodes: None };
        assert!(matches!(storage.read_task_state(&handle), Err(StorageError::BadHandle(_))));
        assert!(matches!(storage.discard_file(&handle), Err(StorageError::BadHandle(_))));
        assert!(tmp.path().join("victim").exists());
    }

    #[test]
    fn discard_removes_a_checkpoint_and_tolerates_what_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        let meta = write_checkpoint(&storage, 1, &[2]);
        write_checkpoint(&storage, 2, &[2]);
        storage.discard_file(&meta.tasks[0].handle).unwrap();
        storage.discard_file(&meta.tasks[0].handle).unwrap();
        assert!(!tmp.path().join(&meta.tasks[0].handle.file).exists());
        storage.discard(1).unwrap();
        storage.discard(1).unwrap();
        storage.discard(40).unwrap();
        assert_eq!(names(tmp.path()), ["chk-2"]);
    }

    #[test]
    fn a_complete_checkpoint_is_never_written_into() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        let meta = write_checkpoint(&storage, 1, &[1]);
        let err = storage.write_task_state(1, meta.tasks[0].task, &snapshot(50)).unwrap_err();
        assert!(matches!(err, StorageError::AlreadyComplete { .. }), "{err:?}");
        assert!(err.to_string().contains("another job"), "{err}");
        assert_eq!(storage.read_task_state(&meta.tasks[0].handle).unwrap(), snapshot(1));
    }

    #[test]
    fn a_failed_sync_while_discarding_still_removes_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (fs, storage) = faulty(tmp.path());
        write_checkpoint(&storage, 1, &[1]);
        *fs.fail_dir_sync.lock().unwrap() = Some(libc::EIO);
        assert!(matches!(storage.discard(1), Err(StorageError::Io { action: "sync", .. })));
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn shared_files_are_uploaded_listed_checked_and_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path().join("ckpt")).unwrap();
        let local = tmp.path().join("000012.sst");
        std::fs::write(&local, vec![7u8; 3 * COPY_CHUNK + 5]).unwrap();
        let file = storage.upload_shared(&local).unwrap();
        assert!(file.name.starts_with("shared/") && file.name.ends_with("-000012.sst"), "{}", file.name);
        assert_eq!(file.size, 3 * COPY_CHUNK as u64 + 5);
        assert_eq!(file.checksum, xxh3_64(&std::fs::read(&local).unwrap()));
        let again = storage.upload_shared(&local).unwrap();
        assert_ne!(file.name, again.name, "every upload has a name of its own");
        assert_eq!(storage.list_shared().unwrap().len(), 2);

        let dest = tmp.path().join("restored.sst");
        storage.download_shared(&file, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&local).unwrap());

        let path = storage.dir().join(&file.name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let dest = tmp.path().join("damaged.sst");
        let e = storage.download_shared(&file, &dest).unwrap_err();
        assert!(matches!(e, StorageError::ChecksumMismatch { .. }), "{e}");
        assert!(e.to_string().contains(&file.name), "{e}");
        assert!(!dest.exists(), "a damaged copy is removed");
        let e = storage.download_shared(&SharedFile { size: file.size + 1, ..file.clone() }, &dest).unwrap_err();
        assert!(matches!(e, StorageError::Truncated { .. }), "{e}");

        storage.discard_shared(&[file.name.clone(), "shared/gone.sst".into()]).unwrap();
        assert_eq!(storage.list_shared().unwrap(), vec![again.name.clone()]);
        let e = storage.download_shared(&file, &tmp.path().join("x.sst")).unwrap_err();
        assert!(matches!(e, StorageError::Missing { .. }), "{e}");
        assert!(e.to_string().contains(&file.name), "{e}");
        assert!(matches!(storage.discard_shared(&["chk-1/_metadata".into()]), Err(StorageError::BadHandle(_))));
    }

    #[test]
    fn a_failed_upload_leaves_no_file_and_a_failed_sync_poisons() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("1.sst");
        std::fs::write(&local, b"sst bytes").unwrap();
        let (fs, storage) = faulty(&tmp.path().join("ckpt"));
        *fs.fail_write.lock().unwrap() = Some(libc::ENOSPC);
        assert!(matches!(storage.upload_shared(&local), Err(StorageError::Io { action: "write", .. })));
        assert!(names(&storage.shared_path()).is_empty());
        *fs.fail_write.lock().unwrap() = None;
        *fs.fail_sync.lock().unwrap() = Some(libc::EIO);
        assert!(matches!(storage.upload_shared(&local), Err(StorageError::SyncFailed { .. })));
        assert!(names(&storage.shared_path()).is_empty());
        *fs.fail_sync.lock().unwrap() = None;
        assert!(matches!(storage.upload_shared(&local), Err(StorageError::Poisoned { .. })));
    }

    #[test]
    fn open_needs_an_existing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let err = FsCheckpointStorage::open(tmp.path().join("nope")).unwrap_err();
        assert!(matches!(err, StorageError::NoDirectory { .. }));
        assert!(err.to_string().contains("nope"), "{err}");
    }

    /// A file system whose writes or syncs fail on demand, as a full disk or a failing device.
    #[derive(Debug, Default)]
    pub(crate) struct FaultyFs {
        pub(crate) fail_write: Mutex<Option<i32>>,
        pub(crate) fail_sync: Mutex<Option<i32>>,
        pub(crate) fail_dir_sync: Mutex<Option<i32>>,
        pub(crate) fail_rename: Mutex<Option<i32>>,
    }

    fn injected(slot: &Mutex<Option<i32>>) -> Option<io::Error> {
        slot.lock().unwrap().map(io::Error::from_raw_os_error)
    }

    impl CheckpointFs for FaultyFs {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            OsFs.create_dir_all(dir)
        }
        fn write_synced(&self, path: &Path, bytes: &[u8]) -> Result<(), (WriteStep, io::Error)> {
            if let Some(e) = injected(&self.fail_write) {
                std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
                return Err((WriteStep::Write, e));
            }
            if let Some(e) = injected(&self.fail_sync) {
                std::fs::write(path, bytes).unwrap();
                return Err((WriteStep::Sync, e));
            }
            OsFs.write_synced(path, bytes)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            injected(&self.fail_rename).map_or_else(|| OsFs.rename(from, to), Err)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            injected(&self.fail_dir_sync).map_or_else(|| OsFs.sync_dir(dir), Err)
        }
        fn len(&self, path: &Path) -> io::Result<u64> {
            OsFs.len(path)
        }
        fn read(&self, path: &Path, limit: u64) -> io::Result<AlignedVec> {
            OsFs.read(path, limit)
        }
        fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
            OsFs.list_dir(dir)
        }
        fn is_dir(&self, path: &Path) -> bool {
            OsFs.is_dir(path)
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            OsFs.remove_file(path)
        }
        fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
            OsFs.remove_dir_all(dir)
        }
        fn copy(&self, from: &Path, to: &Path, sync: bool) -> Result<(u64, u64), (WriteStep, io::Error)> {
            if let Some(e) = injected(&self.fail_write) {
                std::fs::write(to, b"partial").unwrap();
                return Err((WriteStep::Write, e));
            }
            if let Some(e) = injected(&self.fail_sync).filter(|_| sync) {
                OsFs.copy(from, to, false).unwrap();
                return Err((WriteStep::Sync, e));
            }
            OsFs.copy(from, to, sync)
        }
    }

    fn faulty(tmp: &Path) -> (Arc<FaultyFs>, FsCheckpointStorage) {
        let fs = Arc::new(FaultyFs::default());
        let storage = FsCheckpointStorage::create_with(tmp, fs.clone()).unwrap();
        (fs, storage)
    }

    #[test]
    fn a_failed_write_fails_and_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (fs, storage) = faulty(tmp.path());
        *fs.fail_write.lock().unwrap() = Some(libc::ENOSPC);
        let task = TaskId { vertex: 0, subtask: 0 };
        let err = storage.write_task_state(1, task, &snapshot(1)).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("cannot write ") && text.contains("chk-1/.task-0-0.state"), "{text}");
        assert!(text.contains("No space left on device"), "{text}");
        assert!(names(&tmp.path().join("chk-1")).is_empty(), "the partial file is removed");
        assert!(!storage.is_poisoned(), "a failed write leaves the page cache consistent");
        *fs.fail_write.lock().unwrap() = None;
        storage.write_task_state(1, task, &snapshot(1)).unwrap();
    }

    #[test]
    fn a_failed_rename_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let (fs, storage) = faulty(tmp.path());
        let meta = write_checkpoint(&storage, 1, &[1]);
        storage.discard(1).unwrap();
        storage.write_task_state(1, meta.tasks[0].task, &snapshot(1)).unwrap();
        *fs.fail_rename.lock().unwrap() = Some(libc::EIO);
        let err = storage.write_metadata(&meta).unwrap_err().to_string();
        assert!(err.contains("cannot rename a temporary file to ") && err.contains("chk-1/_metadata"), "{err}");
        assert_eq!(storage.list().unwrap(), Vec::<u64>::new(), "the checkpoint is not complete");
    }

    #[test]
    fn a_failed_sync_fails_and_poisons_every_later_write() {
        let tmp = tempfile::tempdir().unwrap();
        let (fs, storage) = faulty(tmp.path());
        let task = TaskId { vertex: 0, subtask: 0 };
        *fs.fail_sync.lock().unwrap() = Some(libc::EIO);
        let err = storage.write_task_state(1, task, &snapshot(1)).unwrap_err();
        assert!(matches!(err, StorageError::SyncFailed { .. }), "{err:?}");
        assert!(storage.is_poisoned());
        *fs.fail_sync.lock().unwrap() = None;
        let err = storage.write_task_state(2, task, &snapshot(1)).unwrap_err().to_string();
        assert!(err.contains("refuses writes since an earlier sync failed"), "{err}");
        assert!(err.contains("Input/output error"), "{err}");
        let meta = metadata(1, &[1]);
        assert!(matches!(storage.write_metadata(&meta), Err(StorageError::Poisoned { .. })));
        storage.discard(1).unwrap();
    }

    #[test]
    fn a_failed_directory_sync_after_the_metadata_fails_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let (fs, storage) = faulty(tmp.path());
        let meta = write_checkpoint(&storage, 1, &[1]);
        storage.discard(1).unwrap();
        storage.write_task_state(1, meta.tasks[0].task, &snapshot(1)).unwrap();
        *fs.fail_dir_sync.lock().unwrap() = Some(libc::EIO);
        assert!(matches!(storage.write_metadata(&meta), Err(StorageError::SyncFailed { .. })));
        assert!(storage.is_poisoned());
    }

    #[test]
    fn inconsistent_metadata_is_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = FsCheckpointStorage::create(tmp.path()).unwrap();
        let mut meta = write_checkpoint(&storage, 1, &[2]);
        storage.discard(1).unwrap();
        for task in meta.layout().tasks() {
            storage.write_task_state(1, task, &snapshot(1)).unwrap();
        }
        meta.tasks.pop();
        let err = storage.write_metadata(&meta).unwrap_err().to_string();
        assert!(err.contains("inconsistent"), "{err}");
        assert!(storage.list().unwrap().is_empty());
    }
}
