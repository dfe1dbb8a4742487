//! [`AtomicFile`]: a file staged beside its destination and renamed into place on commit.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::check::{parent_dir, resolve, OutputError};

/// A new version of `dest`, written to a staged file in the same directory. [`commit`] makes
/// it visible at `dest` in one step; dropping it uncommitted discards it and leaves `dest`
/// untouched. Writes go straight to the file: wrap it in a `BufWriter` and call
/// [`BufWriter::into_inner`](std::io::BufWriter::into_inner) before committing.
///
/// [`commit`]: AtomicFile::commit
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    /// Where the file goes (symbolic links resolved).
    dest: PathBuf,
    /// The staged file's name, when the file system has no unnamed temporary files.
    named: Option<PathBuf>,
}

static STAGED: AtomicU64 = AtomicU64::new(0);

/// A hidden name beside `dest` that no other process or call uses.
fn staging_name(dest: &Path) -> PathBuf {
    let base = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = STAGED.fetch_add(1, Ordering::Relaxed);
    parent_dir(dest).join(format!(".{base}.corestream-{}-{nanos:08x}-{n}.tmp", std::process::id()))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

impl AtomicFile {
    /// Stages a new version of `dest`. Fails if `dest` is a directory or its directory does not
    /// take new files; a symbolic link at `dest` is followed, so it keeps pointing at the file.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self, OutputError> {
        Self::create_staged(dest.as_ref(), true)
    }

    /// [`create`](Self::create); `unnamed: false` skips `O_TMPFILE`, as on a file system
    /// without it.
    fn create_staged(given: &Path, unnamed: bool) -> Result<Self, OutputError> {
        let dest = resolve(given)?;
        if dest.is_dir() {
            return Err(OutputError::IsDirectory { path: given.to_path_buf() });
        }
        let dir = parent_dir(&dest);
        if !dir.is_dir() {
            return Err(OutputError::NoDirectory { path: given.to_path_buf(), dir: dir.to_path_buf() });
        }
        let unnamed = if unnamed {
            OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC).mode(0o666).open(dir)
        } else {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        };
        let (file, named) = match unnamed {
            Ok(file) => (file, None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
                let name = staging_name(&dest);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o666)
                    .open(&name)
                    .map_err(|e| OutputError::io("cannot create a file beside output", given, e))?;
                (file, Some(name))
            }
            Err(e) => return Err(OutputError::io("cannot create a file beside output", given, e)),
        };
        Ok(Self { file, dest, named })
    }

    /// The destination (symbolic links resolved).
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Syncs the staged file, moves it to the destination (replacing an earlier file there in
    /// one step, keeping that file's permissions) and syncs the directory.
    pub fn commit(mut self) -> Result<(), OutputError> {
        let dest = self.dest.clone();
        if let Ok(old) = std::fs::metadata(&dest) {
            let mode = old.permissions().mode() & 0o7777;
            self.file
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| OutputError::io("cannot set the permissions of output", &dest, e))?;
        }
        self.file.sync_all().map_err(|e| OutputError::io("cannot sync output", &dest, e))?;
        match self.named.take() {
            Some(name) => {
                if let Err(e) = std::fs::rename(&name, &dest) {
                    let _ = std::fs::remove_file(&name);
                    return Err(OutputError::io("cannot move the new file into place at", &dest, e));
                }
            }
            None => {
                let name = staging_name(&dest);
                self.link_to(&name).map_err(|e| OutputError::io("cannot link the new file beside", &dest, e))?;
                if let Err(e) = std::fs::rename(&name, &dest) {
                    let _ = std::fs::remove_file(&name);
                    return Err(OutputError::io("cannot move the new file into place at", &dest, e));
                }
            }
        }
        let dir =
            File::open(parent_dir(&dest)).map_err(|e| OutputError::io("cannot open the directory of", &dest, e))?;
        dir.sync_all().map_err(|e| OutputError::io("cannot sync the directory of", &dest, e))
    }

    /// Gives the unnamed staged file the name `name`.
    fn link_to(&self, name: &Path) -> io::Result<()> {
        let target = c_path(name)?;
        let proc_path = c_path(Path::new(&format!("/proc/self/fd/{}", self.file.as_raw_fd())))?;
        // SAFETY: both paths are valid NUL-terminated strings that outlive the call, and the
        // descriptor is open for as long as `self` is.
        let rc = unsafe {
            libc::linkat(libc::AT_FDCWD, proc_path.as_ptr(), libc::AT_FDCWD, target.as_ptr(), libc::AT_SYMLINK_FOLLOW)
        };
        if rc == 0 {
            return Ok(());
        }
        let proc_error = io::Error::last_os_error();
        let empty = c"";
        // SAFETY: as above; AT_EMPTY_PATH links the descriptor itself (needs CAP_DAC_READ_SEARCH),
        // for systems without /proc.
        let rc = unsafe {
            libc::linkat(self.file.as_raw_fd(), empty.as_ptr(), libc::AT_FDCWD, target.as_ptr(), libc::AT_EMPTY_PATH)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(proc_error)
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.file.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(name) = self.named.take() {
            let _ = std::fs::remove_file(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{check_output, same_file};

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn committed_file_replaces_the_old_one_and_dropped_file_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.txt");
        std::fs::write(&dest, b"previous").unwrap();
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&dest).unwrap(), b"previous");
        assert_eq!(names(dir.path()), ["out.txt"]);

        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"new contents").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"previous", "nothing visible before commit");
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new contents");
        assert_eq!(names(dir.path()), ["out.txt"]);
    }

    #[test]
    fn without_unnamed_files_a_hidden_file_is_staged_and_removed_or_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.txt");
        std::fs::write(&dest, b"previous").unwrap();
        let mut f = AtomicFile::create_staged(&dest, false).unwrap();
        f.write_all(b"partial").unwrap();
        let listed = names(dir.path());
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed[0].starts_with(".out.txt.corestream-") && listed[0].ends_with(".tmp"), "{listed:?}");
        drop(f);
        assert_eq!(names(dir.path()), ["out.txt"], "dropping removes the staged file");
        assert_eq!(std::fs::read(&dest).unwrap(), b"previous");

        let mut f = AtomicFile::create_staged(&dest, false).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["out.txt"]);
    }

    #[test]
    fn new_file_keeps_the_permissions_of_the_one_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.txt");
        std::fs::write(&dest, b"x").unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o640)).unwrap();
        let f = AtomicFile::create(&dest).unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn a_symbolic_link_keeps_pointing_at_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.txt");
        let link = dir.path().join("link.txt");
        std::fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut f = AtomicFile::create(&link).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn outputs_are_checked_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.txt");
        std::fs::write(&input, b"words").unwrap();
        let hard = dir.path().join("hard.txt");
        std::fs::hard_link(&input, &hard).unwrap();
        let soft = dir.path().join("soft.txt");
        std::os::unix::fs::symlink(&input, &soft).unwrap();
        for same in [&input, &hard, &soft] {
            let e = check_output(same, &[&input]).unwrap_err();
            assert!(matches!(e, OutputError::SameAsInput { .. }), "{same:?}: {e}");
        }
        assert!(same_file(&hard, &input));
        assert!(matches!(check_output(dir.path(), &[]).unwrap_err(), OutputError::IsDirectory { .. }));
        assert!(matches!(
            check_output(&dir.path().join("missing/out.txt"), &[]).unwrap_err(),
            OutputError::NoDirectory { .. }
        ));
        assert!(matches!(
            check_output(Path::new("/dev/null"), &[]).unwrap_err(),
            OutputError::NotRegularFile { kind: "character device", .. }
        ));
        let out = dir.path().join("out.txt");
        assert_eq!(check_output(&out, &[&input]).unwrap(), out);
        assert!(!out.exists(), "checking creates nothing");
        assert_eq!(std::fs::read(&input).unwrap(), b"words");
        assert_eq!(names(dir.path()), ["hard.txt", "in.txt", "soft.txt"]);
    }
}
