//! Remote hosts: the ssh command line (batch mode, a connection timeout, the caller's options)
//! and the POSIX shell text it runs there — starting a TaskManager detached and printing its pid,
//! and stopping one (only a process whose command line is a TaskManager's; SIGTERM, a bounded
//! wait, SIGKILL) — with every ssh run bounded in time and output.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{DeployError, StopOutcome, KILL_WAIT, POLL};
use crate::processes::describe_exit;

/// Bytes of an ssh command's output read.
const SSH_OUTPUT_BYTES_MAX: u64 = 64 * 1024;
/// ssh's own connection timeout, in seconds.
const SSH_CONNECT_TIMEOUT_SECS: u32 = 10;

/// How remote hosts are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    /// The ssh program (`CORESTREAM_SSH`, default `ssh`).
    pub program: String,
    /// More options before the host (`CORESTREAM_SSH_OPTS`, split at blanks), as Flink's
    /// `FLINK_SSH_OPTS`.
    pub options: Vec<String>,
}

impl Default for SshSettings {
    fn default() -> Self {
        Self { program: "ssh".into(), options: Vec::new() }
    }
}

impl SshSettings {
    /// From `CORESTREAM_SSH` and `CORESTREAM_SSH_OPTS`.
    pub fn from_env() -> Self {
        Self {
            program: std::env::var("CORESTREAM_SSH").ok().filter(|p| !p.trim().is_empty()).unwrap_or("ssh".into()),
            options: std::env::var("CORESTREAM_SSH_OPTS")
                .map(|o| o.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
        }
    }

    /// The arguments after the program: batch mode (never a password prompt), a connection
    /// timeout, the caller's options, the host, and `script` for `sh -c` (the remote login
    /// shell may be any shell).
    pub fn args(&self, host: &str, script: &str) -> Vec<String> {
        let mut args = vec![
            "-o".to_string(),
            "BatchMode=yes".to_string(),
            "-o".to_string(),
            format!("ConnectTimeout={SSH_CONNECT_TIMEOUT_SECS}"),
        ];
        args.extend(self.options.iter().cloned());
        args.push(host.to_string());
        args.push(format!("sh -c {}", shell_quote(script)));
        args
    }

    /// Runs `script` on `host`; its standard output if ssh and the script succeeded within
    /// `limit`.
    pub(super) fn run(&self, host: &str, script: &str, limit: Duration) -> Result<String, String> {
        let mut child = Command::new(&self.program)
            .args(self.args(host, script))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(pipe) = pipe {
                    let _ = pipe.take(SSH_OUTPUT_BYTES_MAX).read_to_end(&mut bytes);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            })
        };
        let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let deadline = Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        let err = err.trim();
        match status {
            None => Err(format!("{} {host} did not answer within {limit:?}", self.program)),
            Some(s) if s.success() => Ok(out),
            Some(s) => Err(format!(
                "{} {host} {}{}",
                self.program,
                describe_exit(s),
                if err.is_empty() { String::new() } else { format!(": {err}") }
            )),
        }
    }
}

/// Quotes `s` for a POSIX shell (single quotes unless it is plainly safe).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn utf8<'a>(what: &str, s: &'a OsStr) -> Result<&'a str, DeployError> {
    s.to_str().ok_or_else(|| {
        DeployError::Invalid(format!(
            "{what} {} is not UTF-8, which the ssh command line needs",
            Path::new(s).display()
        ))
    })
}

/// The shell text that starts a TaskManager on a remote host: the log's directory created, an
/// earlier log kept as `.1`, the TaskManager detached with `setsid` and its output appended to
/// the log, then `corestream-pid PID` printed.
pub fn remote_start_script(
    binary: &Path,
    args: &[OsString],
    log: &Path,
    log_filter: &str,
) -> Result<String, DeployError> {
    let log_text = utf8("the log file", log.as_os_str())?;
    let dir = log.parent().map(Path::as_os_str).filter(|d| !d.is_empty()).unwrap_or(OsStr::new("."));
    let mut command = vec![shell_quote(utf8("the binary", binary.as_os_str())?)];
    for arg in args {
        command.push(shell_quote(utf8("the argument", arg)?));
    }
    Ok(format!(
        "log={log}; mkdir -p {dir} || exit 1; if [ -e \"$log\" ]; then mv -f \"$log\" \"$log.1\"; fi; \
         CORESTREAM_LOG={filter} setsid {command} </dev/null >>\"$log\" 2>&1 & echo \"corestream-pid $!\"",
        log = shell_quote(log_text),
        dir = shell_quote(utf8("the log directory", dir)?),
        filter = shell_quote(log_filter),
        command = command.join(" ")
    ))
}

/// The pid a remote start script printed.
pub fn parse_remote_pid(output: &str) -> Option<u32> {
    output.lines().rev().find_map(|l| l.trim().strip_prefix("corestream-pid ")).and_then(|p| p.trim().parse().ok())
}

/// The shell text that stops a remote TaskManager: nothing if `pid` is gone or is not a
/// TaskManager (its command line has no `taskmanager` argument), else `kill -TERM`, a wait of up
/// to `grace`, then `kill -KILL`; it prints `corestream-stop` and what happened.
pub fn remote_stop_script(pid: u32, grace: Duration) -> String {
    let ticks = grace.as_millis().div_ceil(100).max(1);
    let kill_ticks = KILL_WAIT.as_millis().div_ceil(100);
    format!(
        "pid={pid}; alive() {{ [ -r /proc/$pid/stat ] && ! grep -q ') [ZX] ' /proc/$pid/stat 2>/dev/null; }}; \
         if ! alive; then echo 'corestream-stop gone'; exit 0; fi; \
         case \" $(tr '\\000' ' ' </proc/$pid/cmdline 2>/dev/null) \" in *' taskmanager '*) ;; \
         *) echo 'corestream-stop other'; exit 0;; esac; \
         kill -TERM $pid 2>/dev/null; i=0; \
         while [ $i -lt {ticks} ]; do alive || {{ echo 'corestream-stop stopped'; exit 0; }}; sleep 0.1; i=$((i+1)); done; \
         kill -KILL $pid 2>/dev/null; i=0; \
         while [ $i -lt {kill_ticks} ]; do alive || {{ echo 'corestream-stop killed'; exit 0; }}; sleep 0.1; i=$((i+1)); done; \
         echo 'corestream-stop alive'"
    )
}

/// What a remote stop script reported.
pub fn parse_remote_stop(output: &str, grace: Duration) -> StopOutcome {
    match output.lines().rev().find_map(|l| l.trim().strip_prefix("corestream-stop ")) {
        Some("gone") => StopOutcome::NotRunning,
        Some("other") => StopOutcome::Reused,
        Some("stopped") => StopOutcome::Stopped,
        Some("killed") => StopOutcome::Killed,
        Some("alive") => StopOutcome::Failed(format!("still running {KILL_WAIT:?} after SIGKILL")),
        _ => StopOutcome::Failed(format!(
            "the stop command reported nothing (grace {grace:?}); output: {}",
            output.trim().chars().take(200).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::deploy::local::{local_liveness, wait_gone, Liveness};
    use crate::deploy::records::{ProcessRecord, ProcessRole};

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/usr/local/bin/corestream"), "/usr/local/bin/corestream");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("it's $HOME `x` \"q\"")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME `x` \"q\"");
    }

    #[test]
    fn ssh_arguments() {
        let ssh = SshSettings { program: "ssh".into(), options: vec!["-p".into(), "2222".into()] };
        let args = ssh.args("node2", "echo 'hi'");
        assert_eq!(
            args,
            vec!["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", "2222", "node2", r"sh -c 'echo '\''hi'\'''"]
        );
    }

    /// A stand-in for `corestream taskmanager` that runs until SIGTERM.
    fn fake_binary(dir: &Path) -> PathBuf {
        let path = dir.join("fake corestream");
        std::fs::write(&path, "#!/bin/sh\ntrap 'exit 0' TERM\necho \"started $*\"\nwhile :; do sleep 0.05; done\n")
            .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    }

    /// Runs a remote script the way the remote login shell would (`sh -c` of the last ssh argument).
    fn run_remote(script: &str) -> String {
        run_remote_in(Path::new("/"), script)
    }

    /// [`run_remote`] in the directory `home`, where ssh would start.
    fn run_remote_in(home: &Path, script: &str) -> String {
        let ssh = SshSettings::default();
        let args = ssh.args("node2", script);
        let out = Command::new("sh")
            .arg("-c")
            .arg(args.last().unwrap())
            .current_dir(home)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn remote_scripts_start_and_stop_a_detached_process() {
        let dir = tempfile::tempdir().unwrap();
        let binary = fake_binary(dir.path());
        let log = dir.path().join("logs").join("taskmanager-1-node2.log");
        let args = vec![OsString::from("taskmanager"), OsString::from("--slots"), OsString::from("2")];
        let script = remote_start_script(&binary, &args, &log, "info").unwrap();
        let pid = parse_remote_pid(&run_remote(&script)).expect("a pid");
        let record = ProcessRecord {
            role: ProcessRole::TaskManager,
            index: 1,
            host: "node2".into(),
            local: true,
            pid,
            start_ticks: None,
            log: log.clone(),
            started_at_ms: 0,
            started_on: "me".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("started taskmanager --slots 2") {
            assert!(Instant::now() < deadline, "the fake TaskManager never wrote its log");
            std::thread::sleep(POLL);
        }
        assert_eq!(local_liveness(&record), Liveness::Running);
        let out = run_remote(&remote_stop_script(pid, Duration::from_secs(5)));
        assert_eq!(parse_remote_stop(&out, Duration::from_secs(5)), StopOutcome::Stopped, "{out}");
        assert!(wait_gone(&record, Duration::from_secs(5)));
        let out = run_remote(&remote_stop_script(pid, Duration::from_secs(5)));
        assert_eq!(parse_remote_stop(&out, Duration::from_secs(5)), StopOutcome::NotRunning, "{out}");
        // A process that is not a TaskManager is never signalled.
        let out = run_remote(&remote_stop_script(std::process::id(), Duration::from_secs(1)));
        assert_eq!(parse_remote_stop(&out, Duration::from_secs(1)), StopOutcome::Reused, "{out}");
        assert_eq!(local_liveness(&ProcessRecord { pid: std::process::id(), ..record }), Liveness::Running);
        // A second start keeps the first log.
        let pid2 = parse_remote_pid(&run_remote(&script)).unwrap();
        assert!(log.with_extension("log.1").exists());
        let out = run_remote(&remote_stop_script(pid2, Duration::from_secs(5)));
        assert_eq!(parse_remote_stop(&out, Duration::from_secs(5)), StopOutcome::Stopped, "{out}");
        // A relative log path is relative to the home directory, where ssh starts.
        let relative = Path::new(".local/state/corestream/taskmanager-2-node2.log");
        let script = remote_start_script(&binary, &args, relative, "info").unwrap();
        let pid3 = parse_remote_pid(&run_remote_in(dir.path(), &script)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(dir.path().join(relative)).unwrap_or_default().contains("started") {
            assert!(Instant::now() < deadline, "no log at ~/{}", relative.display());
            std::thread::sleep(POLL);
        }
        let out = run_remote(&remote_stop_script(pid3, Duration::from_secs(5)));
        assert_eq!(parse_remote_stop(&out, Duration::from_secs(5)), StopOutcome::Stopped, "{out}");
        assert_eq!(
            parse_remote_stop("motd\n", Duration::from_secs(1)),
            StopOutcome::Failed("the stop command reported nothing (grace 1s); output: motd".into())
        );
    }
}
