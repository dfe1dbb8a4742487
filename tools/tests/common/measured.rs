//! Memory of a `corestream` process: the peak resident set of a run, read from `wait4`'s
//! `ru_maxrss` when it ends, and the current and peak resident set of a running process, read
//! from `/proc/PID/status`. Used by the tests that bound memory on long lines and endless input.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A finished run: its status, output and peak resident set.
pub struct Measured {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub peak_rss_kib: u64,
}

/// Runs `cmd` to its end with `stdin` copied to a pipe on its standard input (or a null
/// input), killing it and failing the test after `limit`. The peak comes from `wait4`, so it
/// covers the whole run, the child's own children included — and the pages of this process
/// the child shared between fork and exec: hold no large buffer while calling this.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also reports its peak memory
pub fn run_measured(cmd: &mut Command, stdin: Option<Box<dyn Read + Send>>, limit: Duration) -> Measured {
    let mut child = cmd
        .env("CORESTREAM_LOG", "off")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the command");
    let pid = child.id() as libc::pid_t;
    let feeder = child.stdin.take().zip(stdin).map(|(mut pipe, mut source)| {
        // The reader may stop early (a failed run): a broken pipe then is not an error here.
        std::thread::spawn(move || drop(std::io::copy(&mut source, &mut pipe)))
    });
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while !done.load(Ordering::Relaxed) {
                if Instant::now() > deadline {
                    // SAFETY: kill(2) with a pid this test started and has not reaped yet.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our child, and `status` and `usage` are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    done.store(true, Ordering::Relaxed);
    assert!(!watchdog.join().unwrap(), "the command did not end within {limit:?}");
    if let Some(feeder) = feeder {
        feeder.join().unwrap();
    }
    Measured {
        status: ExitStatus::from_raw(status),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        peak_rss_kib: usage.ru_maxrss as u64,
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), if the process is still there.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
