//! The state directory of `cluster start|stop`: where it is by default, its ownership check,
//! the lock that keeps two commands apart, and one JSON record per started process, written with
//! [`AtomicFile`] so a record is whole or absent.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::workers::WORKERS_MAX;
use super::DeployError;
use crate::fs::{AtomicFile, OutputError};

/// Largest record file read, in bytes.
const RECORD_BYTES_MAX: u64 = 64 * 1024;

/// `$XDG_RUNTIME_DIR/corestream`, else `/tmp/corestream-$USER` (the uid when `$USER` is unset
/// or not a plain name).
pub fn default_state_dir(xdg_runtime_dir: Option<&OsStr>, user: Option<&str>, uid: u32) -> PathBuf {
    if let Some(dir) = xdg_runtime_dir.map(Path::new).filter(|d| d.is_absolute()) {
        return dir.join("corestream");
    }
    match user.filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))) {
        Some(user) => PathBuf::from(format!("/tmp/corestream-{user}")),
        None => PathBuf::from(format!("/tmp/corestream-{uid}")),
    }
}

/// [`default_state_dir`] from this process's environment.
pub fn default_state_dir_from_env() -> PathBuf {
    let user = std::env::var("USER").ok();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    default_state_dir(std::env::var_os("XDG_RUNTIME_DIR").as_deref(), user.as_deref(), uid)
}

/// Creates the state directory (mode 0700) and checks that it is a directory of this user's,
/// so nobody else can plant records in it.
pub(super) fn prepare_state_dir(dir: &Path) -> Result<(), DeployError> {
    let error = |message: String| DeployError::StateDir { path: dir.to_path_buf(), message };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| error(format!("cannot create it: {e}")))?;
    check_state_dir(dir)
}

pub(super) fn check_state_dir(dir: &Path) -> Result<(), DeployError> {
    let error = |message: String| DeployError::StateDir { path: dir.to_path_buf(), message };
    let meta = std::fs::metadata(dir).map_err(|e| error(e.to_string()))?;
    if !meta.is_dir() {
        return Err(error("not a directory".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(error(format!(
            "owned by uid {}, not by this user (uid {me}): give a directory of your own with --state-dir",
            meta.uid()
        )));
    }
    Ok(())
}

/// An exclusive lock on the state directory, held while a `cluster` command runs.
pub(super) struct StateLock {
    _file: File,
}

pub(super) fn lock_state_dir(dir: &Path) -> Result<StateLock, DeployError> {
    let path = dir.join(".lock");
    let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).map_err(|e| {
        DeployError::StateDir { path: dir.to_path_buf(), message: format!("cannot open {}: {e}", path.display()) }
    })?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            DeployError::Busy { path: dir.to_path_buf() }
        } else {
            DeployError::StateDir { path: dir.to_path_buf(), message: format!("cannot lock {}: {e}", path.display()) }
        });
    }
    Ok(StateLock { _file: file })
}

/// Which role a recorded process has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessRole {
    JobManager,
    TaskManager,
}

/// A process `start` started, as recorded in the state directory (one JSON file each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRecord {
    pub role: ProcessRole,
    /// The TaskManager's 1-based line number among the workers; 0 for the JobManager.
    pub index: usize,
    pub host: String,
    /// Started on this machine (else through ssh on `host`).
    pub local: bool,
    pub pid: u32,
    /// The process's start time in clock ticks after boot (`/proc/PID/stat`, field 22), which
    /// tells it from a later process given the same pid; local processes only.
    pub start_ticks: Option<u64>,
    /// Its log file (on `host`).
    pub log: PathBuf,
    /// When it was started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// The host name of the machine that ran `cluster start`: where a local process runs, and
    /// the only machine whose `/proc` can say whether it still does.
    pub started_on: String,
}

impl ProcessRecord {
    /// The record's file name in the state directory.
    pub fn file_name(&self) -> String {
        match self.role {
            ProcessRole::JobManager => "jobmanager.json".to_string(),
            ProcessRole::TaskManager => format!("taskmanager-{}.json", self.index),
        }
    }

    /// E.g. "TaskManager 2 on node7 (pid 4711)".
    pub fn describe(&self) -> String {
        match self.role {
            ProcessRole::JobManager => format!("the JobManager on {} (pid {})", self.host, self.pid),
            ProcessRole::TaskManager => format!("TaskManager {} on {} (pid {})", self.index, self.host, self.pid),
        }
    }

    /// Where its log is, as a person would look for it.
    pub(super) fn log_location(&self) -> String {
        if self.local {
            self.log.display().to_string()
        } else {
            let home = if self.log.is_relative() { "~/" } else { "" };
            format!("{}:{home}{}", self.host, self.log.display())
        }
    }
}

pub(super) fn write_record(dir: &Path, record: &ProcessRecord) -> Result<(), DeployError> {
    let path = dir.join(record.file_name());
    let record_error = |source| DeployError::Record { path: path.clone(), source };
    let mut json = serde_json::to_vec_pretty(record).map_err(|e| {
        record_error(OutputError::Io { what: "cannot encode", path: path.clone(), source: io::Error::other(e) })
    })?;
    json.push(b'\n');
    let mut file = AtomicFile::create(&path).map_err(record_error)?;
    file.write_all(&json)
        .map_err(|e| record_error(OutputError::Io { what: "cannot write", path: path.clone(), source: e }))?;
    file.commit().map_err(record_error)
}

pub(super) fn remove_record(dir: &Path, record: &ProcessRecord) -> Result<(), String> {
    let path = dir.join(record.file_name());
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove the record {}: {e}", path.display())),
    }
}

/// Every record in `dir`: the TaskManagers in order, then the JobManager.
pub fn read_records(dir: &Path) -> Result<Vec<ProcessRecord>, DeployError> {
    let dir_error = |e: io::Error| DeployError::StateDir { path: dir.to_path_buf(), message: e.to_string() };
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_error)? {
        let path = entry.map_err(dir_error)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if records.len() > WORKERS_MAX {
            return Err(DeployError::StateDir {
                path: dir.to_path_buf(),
                message: format!("more than {} records: not a directory of `corestream cluster`", WORKERS_MAX + 1),
            });
        }
        let bad = |message: String| DeployError::BadRecord { path: path.clone(), message };
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(RECORD_BYTES_MAX + 1).read_to_end(&mut bytes))
            .map_err(|e| bad(e.to_string()))?;
        if bytes.len() as u64 > RECORD_BYTES_MAX {
            return Err(bad(format!("larger than {RECORD_BYTES_MAX} bytes")));
        }
        let record: ProcessRecord = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if record.file_name() != name {
            return Err(bad(format!("it describes {}, whose record is {}", record.describe(), record.file_name())));
        }
        records.push(record);
    }
    records.sort_by_key(|r| (r.role == ProcessRole::JobManager, r.index));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_state_directory() {
        assert_eq!(
            default_state_dir(Some(OsStr::new("/run/user/1000")), Some("ann"), 1000),
            PathBuf::from("/run/user/1000/corestream")
        );
        assert_eq!(default_state_dir(None, Some("ann"), 1000), PathBuf::from("/tmp/corestream-ann"));
        assert_eq!(
            default_state_dir(Some(OsStr::new("relative")), Some("ann"), 1000),
            PathBuf::from("/tmp/corestream-ann")
        );
        assert_eq!(default_state_dir(None, None, 1000), PathBuf::from("/tmp/corestream-1000"));
        assert_eq!(default_state_dir(None, Some("../etc"), 7), PathBuf::from("/tmp/corestream-7"));
    }

    #[test]
    fn the_state_directory_is_locked_while_a_command_runs() {
        let dir = tempfile::tempdir().unwrap();
        let lock = lock_state_dir(dir.path()).unwrap();
        assert!(matches!(lock_state_dir(dir.path()), Err(DeployError::Busy { .. })));
        drop(lock);
        assert!(lock_state_dir(dir.path()).is_ok());
    }
}
