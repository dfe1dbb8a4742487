//! The report files of `bench` and `profile` (`--json`, `--hdr-log`, `--plot`, the profile's
//! flame graphs): checked before the job starts, staged beside their destinations and moved
//! into place together once the job succeeded.
//!
//! [`check`] runs before anything else: every path must be writable as an output
//! ([`corestream::fs::check_output`]: not a directory or device, its directory exists and
//! takes new files) and no two outputs may be the same file; a path refused there is an
//! invalid argument (exit status 2). [`commit_all`] stages every file ([`AtomicFile`]) and
//! renames them into place only when all were written, so a failed run, or a failed write,
//! leaves every earlier file byte for byte as it was.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::error::ErrorKind;
use clap::CommandFactory;
use corestream::fs::{check_output, same_file, AtomicFile};

use crate::Cli;

/// Checks the outputs `(option, path)` of one command that reads `inputs`: each can be written
/// and is not an input, and no two are the same file (by path once links are followed, or by
/// device and inode). The message names the option and the path.
pub fn validate(outputs: &[(&str, &Path)], inputs: &[&Path]) -> Result<(), String> {
    let mut seen: Vec<(&str, &Path, PathBuf)> = Vec::new();
    for &(option, path) in outputs {
        let real = check_output(path, inputs).map_err(|e| format!("{option}: {e}"))?;
        if let Some((other, other_path, _)) =
            seen.iter().find(|(_, _, seen_real)| *seen_real == real || same_file(seen_real, &real))
        {
            return Err(format!(
                "{option} '{}' and {other} '{}' are the same file; give each output its own path",
                path.display(),
                other_path.display()
            ));
        }
        seen.push((option, path, real));
    }
    Ok(())
}

/// [`validate`], exiting with status 2 (as clap does for any invalid option) if it refuses.
pub fn check(outputs: &[(&str, &Path)]) {
    if let Err(message) = validate(outputs, &[]) {
        Cli::command().error(ErrorKind::ValueValidation, message).exit();
    }
}

/// Writes every `(path, contents)`: all are staged first, then renamed into place one after
/// the other. Nothing is moved into place unless every file was written and synced.
pub fn commit_all(files: Vec<(PathBuf, Vec<u8>)>) -> anyhow::Result<()> {
    let mut staged = Vec::with_capacity(files.len());
    for (path, contents) in files {
        let mut file = AtomicFile::create(&path).with_context(|| format!("cannot write '{}'", path.display()))?;
        file.write_all(&contents).with_context(|| format!("cannot write '{}'", path.display()))?;
        staged.push((path, file));
    }
    for (path, file) in staged {
        file.commit().with_context(|| format!("cannot write '{}'", path.display()))?;
    }
    Ok(())
}

/// Checks an output directory of part files (the exactly-once file sink's): it is a directory
/// or does not exist yet (the sink creates it; its parent must exist), and it is none of
/// `inputs` and holds none of them.
pub fn check_output_dir(dir: &Path, inputs: &[&Path]) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("'{}' is not a directory: part files need a directory of their own", dir.display()))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(format!("cannot create '{}': '{}' is not a directory", dir.display(), parent.display()));
            }
        }
        Err(e) => return Err(format!("cannot use '{}' as an output directory: {e}", dir.display())),
    }
    let real_dir = std::fs::canonicalize(dir).ok();
    for input in inputs {
        let real_input = std::fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf());
        if real_dir.as_ref().is_some_and(|d| real_input.starts_with(d)) {
            return Err(format!(
                "the output directory '{}' holds the input '{}'; give another directory",
                dir.display(),
                input.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_checked_and_may_not_be_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.svg");
        assert_eq!(validate(&[("--json", &a), ("--plot", &b)], &[]), Ok(()));
        let dotted = dir.path().join(".").join("a.json");
        let e = validate(&[("--json", &a), ("--plot", &dotted)], &[]).unwrap_err();
        assert!(e.contains("same file") && e.contains("--plot") && e.contains("--json"), "{e}");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        assert!(validate(&[("--json", &a), ("--hdr-log", &link)], &[]).unwrap_err().contains("same file"));
        let missing = dir.path().join("missing/x.json");
        let e = validate(&[("--json", &missing)], &[]).unwrap_err();
        assert!(e.starts_with("--json: ") && e.contains("does not exist"), "{e}");
        assert!(validate(&[("--json", dir.path())], &[]).unwrap_err().contains("directory"));
    }

    #[test]
    fn all_files_appear_together() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        std::fs::write(&a, b"old").unwrap();
        let blocked = dir.path().join("sub");
        std::fs::create_dir(&blocked).unwrap();
        // The second file cannot be staged (its destination is a directory): the first stays.
        let e = commit_all(vec![(a.clone(), b"new".to_vec()), (blocked, b"x".to_vec())]).unwrap_err();
        assert!(format!("{e:#}").contains("sub"), "{e:#}");
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        commit_all(vec![(a.clone(), b"new".to_vec())]).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"new");
    }
}
