//! Output files that appear whole or not at all.
//!
//! Every file corestream writes for a user (a text sink's output, the command-line program's
//! results, reports and profiles) is staged beside its destination and moved into place only
//! when the whole run has succeeded ([`AtomicFile`]). A failed, cancelled or killed run leaves
//! an earlier file at the destination byte for byte as it was and no partial file behind: the
//! staged file is an unnamed `O_TMPFILE` inode, which the kernel frees when the process ends
//! however it ends; on file systems without `O_TMPFILE` it is a hidden named file that is
//! removed when the [`AtomicFile`] is dropped. Committing syncs the file, links it into place
//! by `rename(2)` (atomic on POSIX file systems) and syncs the directory; a failed write or
//! sync fails the commit and is never ignored.
//!
//! [`check_output`] validates a destination before a job starts (a writable directory, not a
//! directory or device itself, and not the same file as any input, compared by device and
//! inode so that symbolic and hard links are caught too).

mod atomic;
mod check;
pub(crate) mod parts;

pub use atomic::AtomicFile;
pub use check::{check_output, same_file, OutputError};
