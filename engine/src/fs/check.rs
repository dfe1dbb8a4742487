//! Validation of an output path before anything runs, and the typed error of output files.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why an output file cannot be written or committed.
#[derive(Debug, Error)]
pub enum OutputError {
    #[error("output '{path}' is a directory; give the path of a file")]
    IsDirectory { path: PathBuf },
    #[error(
        "output '{path}' is a {kind}, not a regular file; outputs are written beside their destination and renamed \
         into place, so give the path of a regular file"
    )]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("output '{path}': the directory '{dir}' does not exist")]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("output '{output}' is the same file as input '{input}'; writing it would destroy the input")]
    SameAsInput { output: PathBuf, input: PathBuf },
    #[error("{what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl OutputError {
    pub(crate) fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        OutputError::Io { what, path: path.to_path_buf(), source }
    }
}

fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "named pipe (FIFO)"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Whether two paths name the same file (device and inode, after following symbolic links).
/// Paths that cannot be examined (one does not exist) are not the same file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The path an output is really written to: a symbolic link is followed to its target, so
/// the link keeps pointing at the new file instead of being replaced by it.
pub(crate) fn resolve(dest: &Path) -> Result<PathBuf, OutputError> {
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.file_type().is_symlink() => match std::fs::canonicalize(dest) {
            Ok(target) => Ok(target),
            // A dangling link: the file it names is created.
            Err(_) => {
                let target = std::fs::read_link(dest).map_err(|e| OutputError::io("cannot read link", dest, e))?;
                Ok(match dest.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                })
            }
        },
        _ => Ok(dest.to_path_buf()),
    }
}

/// The directory a destination lives in (`.` for a bare file name).
pub(crate) fn parent_dir(dest: &Path) -> &Path {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks that `dest` can be written as an output of a run that reads `inputs`: it is a
/// regular file or does not exist yet, its directory exists and takes new files, and it is
/// not the same file as any input. Returns the path that will really be written: symbolic
/// links followed and the directory made canonical, so that two spellings of one output that
/// does not exist yet (`a.json`, `./a.json`, a link to it) compare equal. Nothing is created or
/// changed.
pub fn check_output(dest: &Path, inputs: &[&Path]) -> Result<PathBuf, OutputError> {
    let real = resolve(dest)?;
    match std::fs::metadata(&real) {
        Ok(meta) if meta.is_dir() => return Err(OutputError::IsDirectory { path: dest.to_path_buf() }),
        Ok(meta) if !meta.is_file() => {
            return Err(OutputError::NotRegularFile { path: dest.to_path_buf(), kind: kind_of(&meta) })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(OutputError::io("cannot examine output", dest, e)),
    }
    for input in inputs {
        if same_file(&real, input) {
            return Err(OutputError::SameAsInput { output: dest.to_path_buf(), input: input.to_path_buf() });
        }
    }
    let dir = parent_dir(&real);
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) | Err(_) => return Err(OutputError::NoDirectory { path: dest.to_path_buf(), dir: dir.to_path_buf() }),
    }
    // Staging a file proves the directory takes new files; dropping it uncommitted removes it.
    drop(super::AtomicFile::create(&real)?);
    let canonical_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Ok(match real.file_name() {
        Some(name) => canonical_dir.join(name),
        None => real,
    })
}
