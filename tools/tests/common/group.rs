//! Commands run in their own process group under a watchdog: the whole group (the
//! TaskManagers a command started included) is killed, and the test fails, when it does not end
//! in time; a process of the group still alive after the command ended is reported. Also the
//! word-count input the multi-process tests share.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A process group whose stdout is collected and whose stderr arrives line by line.
pub struct Running {
    /// The command line, for messages.
    command: String,
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr_lines: mpsc::Receiver<String>,
    stderr: String,
}

/// Starts `corestream args` in a new process group with `CORESTREAM_LOG=off`.
pub fn start(args: &[&str]) -> Running {
    start_program(env!("CARGO_BIN_EXE_corestream"), args, &[])
}

/// [`start`] with the variables `env` added to its environment.
pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    start_program(env!("CARGO_BIN_EXE_corestream"), args, env)
}

/// Starts `program args` in a new process group with `CORESTREAM_LOG=off` and `env`.
pub fn start_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .env("CORESTREAM_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).expect("cannot read the output of corestream");
        s
    });
    let err = child.stderr.take().unwrap();
    let (tx, stderr_lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let command = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    Running { command, child, stdout: Some(stdout), stderr_lines, stderr: String::new() }
}

impl Running {
    /// The process id of the command (the leader of its group).
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Whether the process has ended (it is reaped then).
    pub fn has_ended(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    pub fn kill_group(&mut self) {
        // SAFETY: kill on the process group this test created for the child (its pid).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Waits for a stderr line containing `needle`; fails the test after `limit`.
    pub fn stderr_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push_str(&line);
                    self.stderr.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    self.kill_group();
                    panic!("`{}` wrote no line with {needle:?} within {limit:?}:\n{}", self.command, self.stderr);
                }
            }
        }
    }

    /// Waits for the process to end within `limit`, else kills its group and fails the test.
    pub fn finish_within(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.kill_group();
                panic!("`{}` did not end within {limit:?}:\n{}", self.command, self.stderr);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push_str(&line);
            self.stderr.push('\n');
        }
        // The TaskManagers it started must be gone with it; kill any left so none outlive the test.
        // SAFETY: kill on the process group this test created.
        let leftover = unsafe { libc::kill(-(self.child.id() as libc::pid_t), 0) } == 0;
        if leftover {
            self.kill_group();
        }
        let stdout = self.stdout.take().unwrap().join().unwrap();
        Finished { status, stdout, stderr: std::mem::take(&mut self.stderr), leftover }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.stdout.is_some() {
            self.kill_group();
        }
    }
}

#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// A process of its group was still alive after it ended.
    pub leftover: bool,
}

#[track_caller]
pub fn assert_status(out: &Finished, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit status {code}\n--- stdout\n{}--- stderr\n{}",
        out.stdout,
        out.stderr
    );
}

/// The first line of stdout that starts with `prefix`.
#[track_caller]
pub fn line_with<'a>(out: &'a Finished, prefix: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{}\n{}", out.stdout, out.stderr))
}

/// A few thousand lines of words from a small vocabulary, some non-ASCII, from a fixed seed.
pub fn write_text(path: &Path) {
    let vocabulary: Vec<String> = ["Alpha", "beta", "épée", "straße", "naïve", "x1"]
        .into_iter()
        .map(String::from)
        .chain((0..400).map(|i| format!("w{i}")))
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut text = String::new();
    for _ in 0..5000 {
        let words = next(12);
        let line: Vec<&str> = (0..words).map(|_| vocabulary[next(vocabulary.len())].as_str()).collect();
        text.push_str(&line.join(if next(2) == 0 { " " } else { ", " }));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(String::from).collect();
    lines.sort();
    lines
}
