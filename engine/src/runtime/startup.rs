//! Start-up checks: io_uring must be enabled and usable, and RLIMIT_MEMLOCK must cover the
//! registered memory of every slot's executor (unless the process holds CAP_IPC_LOCK). Each
//! failure says how to fix it. The decisions are pure functions of what was read.

use crate::error::StartupError;

/// Locked memory glommio needs per executor at the least.
pub const MIN_LOCKED_BYTES_PER_SLOT: u64 = 512 * 1024;

/// Decides whether the memlock limit suffices.
pub fn memlock_verdict(
    limit_bytes: Option<u64>,
    has_ipc_lock: bool,
    executors: u32,
    io_memory_bytes: usize,
) -> Result<(), StartupError> {
    let per_executor = (io_memory_bytes as u64).max(MIN_LOCKED_BYTES_PER_SLOT);
    let needed = per_executor * executors as u64;
    match limit_bytes {
        None => Ok(()),
        Some(_) if has_ipc_lock => Ok(()),
        Some(limit) if limit >= needed => Ok(()),
        Some(limit) => {
            Err(StartupError::MemlockTooLow { limit_kib: limit / 1024, needed_kib: needed.div_ceil(1024), executors })
        }
    }
}

/// Decides from `/proc/sys/kernel/io_uring_disabled` (absent on kernels before 6.6).
pub fn io_uring_sysctl_verdict(value: Option<&str>) -> Result<(), StartupError> {
    match value.map(str::trim) {
        None | Some("0") => Ok(()),
        Some("1") => Ok(()), // allowed for the io_uring group; the probe below decides
        Some(other) => Err(StartupError::IoUringDisabled { value: other.to_string() }),
    }
}

fn memlock_limit() -> Option<u64> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit struct we own; the resource id is a valid constant.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    if rc != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(rl.rlim_cur)
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("CapEff:")).map(|l| l[7..].trim().to_string()))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Creates and closes a one-entry ring to prove io_uring is usable here.
fn probe_io_uring() -> Result<(), StartupError> {
    // struct io_uring_params is 120 bytes; zeroed means "defaults".
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup reads and writes `params`, a buffer of the size the kernel expects,
    // and returns a new fd or -1; no other memory is touched.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return Err(StartupError::IoUringUnavailable { message: err.to_string() });
    }
    // SAFETY: `fd` is the descriptor io_uring_setup just returned and nothing else owns it.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Runs every start-up check for `slots` executors.
pub fn check(executors: u32, io_memory_bytes: usize) -> Result<(), StartupError> {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
    io_uring_sysctl_verdict(sysctl.as_deref())?;
    probe_io_uring()?;
    memlock_verdict(memlock_limit(), has_cap_ipc_lock(), executors, io_memory_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_memlock_is_refused_with_the_fix() {
        let err = memlock_verdict(Some(256 * 1024), false, 2, 512 * 1024).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("256 KiB"), "{msg}");
        assert!(msg.contains("ulimit -l 1024"), "{msg}");
    }

    #[test]
    fn enough_memlock_or_capability_passes() {
        assert!(memlock_verdict(Some(8 << 20), false, 2, 512 * 1024).is_ok());
        assert!(memlock_verdict(Some(64 * 1024), true, 2, 512 * 1024).is_ok());
        assert!(memlock_verdict(None, false, 64, 512 * 1024).is_ok());
    }

    #[test]
    fn disabled_io_uring_is_refused() {
        assert!(io_uring_sysctl_verdict(Some("2\n")).unwrap_err().to_string().contains("io_uring_disabled=0"));
        assert!(io_uring_sysctl_verdict(Some("0\n")).is_ok());
        assert!(io_uring_sysctl_verdict(None).is_ok());
    }

    #[test]
    fn this_machine_passes() {
        check(1, 512 * 1024).unwrap();
    }
}
