//! `corestream cluster start|stop` on this machine: a JobManager and two TaskManagers from a
//! workers file of two `localhost` lines, with authentication from a secret file; they register,
//! and `stop` ends all three and removes their records. Also the refusals (a malformed workers
//! file, a missing configuration) and stale records. Every test holds a [`Reaper`] that kills
//! whatever the state directory recorded when the test ends, passed or failed.

mod common;

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::run_corestream_with_env;

const LIMIT: Duration = Duration::from_secs(120);

/// Kills, on drop, every process the state directory recorded or that `remember` was given,
/// if it is still one of ours (its command line runs this binary).
struct Reaper {
    state: PathBuf,
    pids: Vec<u32>,
}

impl Reaper {
    fn new(state: &Path) -> Self {
        Self { state: state.to_path_buf(), pids: Vec::new() }
    }

    fn remember(&mut self, pids: &[u32]) {
        self.pids.extend_from_slice(pids);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let mut pids = self.pids.clone();
        pids.extend(records(&self.state).into_iter().map(|(_, pid)| pid));
        for pid in pids {
            if ours(pid) {
                // SAFETY: kill(2) on a pid whose command line was just seen to run this test's binary.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// Whether `pid` is a live process running the `corestream` binary under test.
fn ours(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("Z");
    if state == "Z" || state == "X" {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let exe = env!("CARGO_BIN_EXE_corestream");
    cmdline.split(|b| *b == 0).next().is_some_and(|arg0| arg0 == exe.as_bytes())
}

/// The (file name, pid) of every record in `state`.
fn records(state: &Path) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(state) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(pid) = value["pid"].as_u64() {
            out.push((name, pid as u32));
        }
    }
    out.sort();
    out
}

/// This machine's host name, as `cluster` records it.
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A configuration with authentication from a secret file, the JobManager on a free port and
/// the REST API on another.
fn cluster_files(dir: &Path, workers: &str) -> (PathBuf, u16) {
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let rest_port = free_port();
    let config = dir.join("corestream.toml");
    std::fs::write(
        &config,
        format!(
            "jobmanager.rpc.address = \"127.0.0.1\"\njobmanager.rpc.port = {}\nrest.port = {rest_port}\n\
             taskmanager.numberOfTaskSlots = 1\n[security.cluster]\nsecret-file = \"{}\"\n",
            free_port(),
            secret.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("workers"), workers).unwrap();
    (config, rest_port)
}

fn cluster(args: &[&OsStr]) -> Output {
    let mut all = vec![OsStr::new("cluster")];
    all.extend_from_slice(args);
    run_corestream_with_env(&all, &[], LIMIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X")
}

/// `GET /v1/overview`'s TaskManager count, or `None` when the JobManager does not answer.
fn overview_taskmanagers(rest_port: u16) -> Option<u64> {
    let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().new_agent();
    let mut response = agent.get(format!("http://127.0.0.1:{rest_port}/v1/overview")).call().ok()?;
    let value: serde_json::Value = response.body_mut().read_json().ok()?;
    value["taskmanagers"].as_u64()
}

#[test]
fn start_registers_two_taskmanagers_and_stop_ends_all_three() {
    let dir = tempfile::tempdir().unwrap();
    let (config, rest_port) = cluster_files(dir.path(), "# two TaskManagers here\nlocalhost\nlocalhost\n");
    let state = dir.path().join("state");
    let mut reaper = Reaper::new(&state);

    // A record left by an earlier run whose process is gone is removed, not refused.
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let dead = dead_pid();
    let host = this_host();
    std::fs::write(
        state.join("taskmanager-7.json"),
        format!(
            r#"{{"role":"taskmanager","index":7,"host":"localhost","local":true,"pid":{dead},"start_ticks":1,"log":"/nonexistent.log","started_at_ms":0,"started_on":"{host}"}}"#
        ),
    )
    .unwrap();

    let out = cluster(&[
        "start".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--timeout".as_ref(),
        "60s".as_ref(),
        "--binary".as_ref(),
        env!("CARGO_BIN_EXE_corestream").as_ref(),
    ]);
    let recorded = records(&state);
    reaper.remember(&recorded.iter().map(|(_, pid)| *pid).collect::<Vec<_>>());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "cluster start failed: {out:?}\nJobManager log:\n{}", log(&state, "jobmanager.log"));
    assert!(
        stdout.contains(&format!("removed the stale record of TaskManager 7 on localhost (pid {dead})")),
        "{stdout}"
    );
    assert!(stdout.contains("cluster started: the JobManager at 127.0.0.1:"), "{stdout}");
    let names: Vec<&str> = recorded.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["jobmanager.json", "taskmanager-1.json", "taskmanager-2.json"]);
    let pids: Vec<u32> = recorded.iter().map(|(_, pid)| *pid).collect();
    assert!(pids.iter().all(|p| alive(*p)), "every recorded process runs: {pids:?}");
    for (i, pid) in pids[1..].iter().enumerate() {
        assert!(
            stdout.contains(&format!(
                "started TaskManager {} on localhost (pid {pid}): registered with the JobManager",
                i + 1
            )),
            "{stdout}"
        );
    }

    // The JobManager logged both registrations, with the recorded pids.
    let jm_log = log(&state, "jobmanager.log");
    assert!(jm_log.contains("jobmanager: TaskManagers connect to 127.0.0.1:"), "{jm_log}");
    for pid in &pids[1..] {
        assert!(
            jm_log.lines().any(|l| l.contains("TaskManager registered") && l.contains(&format!(" pid={pid} "))),
            "no registration of pid {pid} in:\n{jm_log}"
        );
    }
    let tm_log = log(&state, "taskmanager-2-localhost.log");
    assert!(tm_log.contains("1 slot(s), data on 127.0.0.1:"), "{tm_log}");
    assert_eq!(overview_taskmanagers(rest_port), Some(2), "GET /v1/overview");
    assert!(
        stdout.contains(&format!("(REST API on http://127.0.0.1:{rest_port}: 2 TaskManager(s), 2 slot(s), 2 free)")),
        "{stdout}"
    );

    // A second start refuses while the cluster runs.
    let again = cluster(&[
        "start".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(text(&again.stderr).contains("is still running (TaskManager 1 on localhost"), "{again:?}");

    let out = cluster(&["stop".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for (i, pid) in pids[1..].iter().enumerate() {
        assert!(stdout.contains(&format!("stopped TaskManager {} on localhost (pid {pid})", i + 1)), "{stdout}");
    }
    assert!(stdout.contains("stopped the JobManager on "), "{stdout}");
    assert!(stdout.trim_end().ends_with("cluster stopped"), "{stdout}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(pids.iter().all(|p| !alive(*p)), "still running after stop: {pids:?}");
    assert!(records(&state).is_empty(), "records left: {:?}", records(&state));
    assert!(state.join("jobmanager.log").exists(), "the logs stay for troubleshooting");

    let out = cluster(&["stop".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), format!("nothing is running: no process recorded in {}\n", state.display()));
}

/// Runs `command` to its end, killing it and failing the test after [`LIMIT`].
fn run_with_limit(command: &mut std::process::Command) -> Output {
    use std::io::Read;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start the command");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

fn log(state: &Path, name: &str) -> String {
    std::fs::read_to_string(state.join(name)).unwrap_or_default()
}

/// A pid that no process has now (a child that ran and was reaped).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn a_malformed_workers_file_is_refused_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = cluster_files(dir.path(), "localhost\nlocalhost slots=two\n");
    let state = dir.path().join("state");
    let _reaper = Reaper::new(&state);
    let out = cluster(&[
        "start".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let workers = dir.path().join("workers");
    assert_eq!(
        text(&out.stderr),
        format!("error: {}:2: `slots=two`: expected a whole number from 1 to 1024\n", workers.display())
    );
    assert!(!state.exists(), "nothing was started or recorded");

    std::fs::write(&workers, "# nobody\n").unwrap();
    let out = cluster(&[
        "start".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("names no TaskManager host"), "{out:?}");
}

#[test]
fn a_missing_configuration_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _reaper = Reaper::new(&state);
    let missing = dir.path().join("nowhere.toml");
    let out = cluster(&[
        "start".as_ref(),
        "--config".as_ref(),
        missing.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).starts_with(&format!("error: cannot read the configuration file {}: ", missing.display())),
        "{out:?}"
    );
    assert!(!state.exists(), "nothing was started or recorded");

    // A --binary that is not there is a bad argument, found before anything starts.
    let out = cluster(&[
        "start".as_ref(),
        "--binary".as_ref(),
        dir.path().join("nothing").as_os_str(),
        "--workers".as_ref(),
        missing.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--binary") && text(&out.stderr).contains("no such program file"), "{out:?}");

    // Without --config there is no workers file to find either.
    let out = cluster(&["start".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("no workers file: give --workers FILE"), "{out:?}");
}

#[test]
fn stop_removes_a_stale_record_without_signalling_anything() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let _reaper = Reaper::new(&state);
    let dead = dead_pid();
    let host = this_host();
    std::fs::write(
        state.join("jobmanager.json"),
        format!(
            r#"{{"role":"jobmanager","index":0,"host":"here","local":true,"pid":{dead},"start_ticks":1,"log":"/nonexistent.log","started_at_ms":0,"started_on":"{host}"}}"#
        ),
    )
    .unwrap();
    // This test's own pid, recorded with another start time: a reused pid is never signalled.
    let me = std::process::id();
    std::fs::write(
        state.join("taskmanager-1.json"),
        format!(
            r#"{{"role":"taskmanager","index":1,"host":"localhost","local":true,"pid":{me},"start_ticks":1,"log":"/nonexistent.log","started_at_ms":0,"started_on":"{host}"}}"#
        ),
    )
    .unwrap();
    let out = cluster(&["stop".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "pid {me} is now another process, not TaskManager 1 on localhost (pid {me}): nothing signalled; removed its \
             record\nthe JobManager on here (pid {dead}) was no longer running; removed its record\nnothing was \
             running; removed the stale records\n"
        )
    );
    assert!(records(&state).is_empty());

    // Records another machine made (a shared state directory) are left alone.
    let other = state.join("taskmanager-3.json");
    std::fs::write(
        &other,
        format!(
            r#"{{"role":"taskmanager","index":3,"host":"localhost","local":true,"pid":{dead},"start_ticks":1,"log":"/nonexistent.log","started_at_ms":0,"started_on":"elsewhere"}}"#
        ),
    )
    .unwrap();
    let out = cluster(&["stop".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains(&format!("was started on elsewhere, not on this machine ({host})")), "{out:?}");
    assert!(other.exists());
    std::fs::remove_file(&other).unwrap();

    // A record that is not one is reported, not guessed at.
    std::fs::write(state.join("taskmanager-2.json"), "{}").unwrap();
    let out = cluster(&["stop".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("taskmanager-2.json cannot be read: missing field `role`"), "{out:?}");
}

/// The repository's `deploy/` directory.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Sections of an INI-like systemd unit: `[Section]` headers, `key=value` lines, `#`/`;` comments.
fn parse_unit(path: &Path) -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.to_string(), Vec::new()));
            continue;
        }
        let (key, value) =
            line.split_once('=').unwrap_or_else(|| panic!("{}:{}: not `key=value`: {line}", path.display(), i + 1));
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()),
            "{}:{}: bad key `{key}`",
            path.display(),
            i + 1
        );
        let section =
            sections.last_mut().unwrap_or_else(|| panic!("{}:{}: a key before any section", path.display(), i + 1));
        section.1.push((key.to_string(), value.to_string()));
    }
    sections
}

fn unit_value<'a>(unit: &'a [(String, Vec<(String, String)>)], section: &str, key: &str) -> Option<&'a str> {
    unit.iter().find(|(s, _)| s == section)?.1.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A systemd size (`64M`, `512K`, `infinity`) in bytes.
fn unit_bytes(value: &str) -> u64 {
    if value == "infinity" {
        return u64::MAX;
    }
    let (digits, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("not a size: {value}"));
    n * match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => panic!("unknown size unit {other} in {value}"),
    }
}

#[test]
fn systemd_units_run_options_the_binary_accepts() {
    for (file, role) in
        [("corestream-jobmanager.service", "jobmanager"), ("corestream-taskmanager.service", "taskmanager")]
    {
        let path = deploy_dir().join("systemd").join(file);
        let unit = parse_unit(&path);
        let names: Vec<&str> = unit.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["Unit", "Service", "Install"], "{file}");
        let get = |key: &str| unit_value(&unit, "Service", key).unwrap_or_else(|| panic!("{file}: no {key}="));
        assert_eq!(get("Type"), "exec", "{file}");
        assert_eq!(get("Restart"), "on-failure", "{file}");
        assert_eq!(get("KillSignal"), "SIGTERM", "{file}");
        assert_eq!(get("User"), "corestream", "{file}");
        assert!(get("TimeoutStopSec").ends_with('s'), "{file}");
        assert!(
            unit_value(&unit, "Service", "SystemCallFilter").is_none(),
            "{file}: a syscall filter can block io_uring"
        );

        let exec: Vec<&str> = get("ExecStart").split_whitespace().collect();
        assert_eq!(exec[..2], ["/usr/local/bin/corestream", role], "{file}");
        let help = run_corestream_with_env(&[role, "--help"], &[], LIMIT);
        assert!(help.status.success(), "{help:?}");
        let help = text(&help.stdout);
        for option in exec[2..].iter().filter(|a| a.starts_with('-')) {
            assert!(
                help.contains(&format!("{option} ")),
                "{file}: `corestream {role} --help` has no {option}:\n{help}"
            );
        }
        assert_eq!(exec[2..], ["--config", "/etc/corestream/corestream.toml"], "{file}");
        // The whole command line parses: clap refuses an unknown option before it prints help.
        let mut args: Vec<&str> = exec[1..].to_vec();
        args.push("--help");
        let parsed = run_corestream_with_env(&args, &[], LIMIT);
        assert!(parsed.status.success(), "{file}: {parsed:?}");

        if role == "taskmanager" {
            // glommio locks at least 512 KiB per slot: the limit must cover a machine's slots.
            let memlock = unit_bytes(get("LimitMEMLOCK"));
            assert!(memlock >= 64 * 512 * 1024, "{file}: LimitMEMLOCK covers fewer than 64 slots");
        }
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_where_it_is_installed() {
    let dir = deploy_dir().join("systemd");
    let units = [dir.join("corestream-jobmanager.service"), dir.join("corestream-taskmanager.service")];
    let Ok(out) = std::process::Command::new("systemd-analyze").arg("verify").args(&units).output() else {
        eprintln!("systemd-analyze is not installed: only the syntax test ran");
        return;
    };
    // The binary is not installed here; every other complaint is a fault of the units.
    let stderr = text(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("Command /usr/local/bin/corestream is not executable"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify: {complaints:#?}");
}

#[test]
fn the_example_configuration_and_workers_file_load() {
    let conf = deploy_dir().join("conf");
    for role in [corestream::conf::Role::JobManager, corestream::conf::Role::TaskManager] {
        let empty: [(&str, &str); 0] = [];
        let settings = corestream::conf::ClusterSettings::load(Some(&conf.join("corestream.toml")), empty, &[], role)
            .unwrap_or_else(|e| panic!("deploy/conf/corestream.toml as {role}: {e}"));
        assert_eq!(settings.security.cluster_secret_file.as_deref(), Some(Path::new("/etc/corestream/secret")));
        assert_ne!(settings.jobmanager.rpc_address, "127.0.0.1", "the example has remote workers");
    }
    let workers = corestream::deploy::read_workers(&conf.join("workers")).unwrap();
    assert!(workers.len() >= 2 && workers.iter().any(|w| w.slots.is_some()), "{workers:?}");
}

#[test]
fn the_deployment_guide_quotes_the_real_messages() {
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DEPLOYMENT.md")).unwrap();
    let workers = Path::new("/etc/corestream/workers");
    let cases = [
        ("localhost\nnode-2.example.org\nnode-3.example.org cores=4\n", "unknown option `cores=4`"),
        ("localhost\nlocalhost slots=two\n", "`slots=two`"),
    ];
    for (text, what) in cases {
        let e = corestream::deploy::parse_workers(text, workers).unwrap_err();
        let quoted = format!("error: {e}");
        assert!(quoted.contains(what), "{quoted}");
        assert!(guide.contains(&quoted), "docs/DEPLOYMENT.md does not quote `{quoted}`");
    }
    let plans = corestream::deploy::plan_taskmanagers(
        &corestream::deploy::parse_workers("localhost\nnode2\n", workers).unwrap(),
        "jm",
        None,
        0,
    )
    .0;
    let e = corestream::deploy::check_jobmanager_address("127.0.0.1", &plans, workers).unwrap_err();
    let quoted = format!("error: {e}");
    assert!(guide.contains(&quoted), "docs/DEPLOYMENT.md does not quote `{quoted}`");
    // The example workers file in the guide is valid.
    let block = guide.split("```text\n# HOST [slots=N]\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    assert_eq!(corestream::deploy::parse_workers(block, workers).unwrap().len(), 4);
}

#[test]
fn a_taskmanager_that_cannot_start_is_named_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = cluster_files(dir.path(), "localhost slots=1\n");
    let state = dir.path().join("state");
    let mut reaper = Reaper::new(&state);
    // Too little locked memory for a slot: the TaskManager refuses to start. Root keeps
    // CAP_IPC_LOCK, which overrides the limit, unless setpriv drops it.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has_setpriv =
        std::process::Command::new("sh").args(["-c", "command -v setpriv"]).output().is_ok_and(|o| o.status.success());
    if root && !has_setpriv {
        eprintln!("running as root without setpriv (util-linux): CAP_IPC_LOCK cannot be dropped; skipped");
        return;
    }
    let drop_cap = if root { "setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock " } else { "" };
    let script = format!(
        "ulimit -l 256 && exec {drop_cap}\"$0\" cluster start --config \"$1\" --state-dir \"$2\" --timeout 30s"
    );
    let out = run_with_limit(
        std::process::Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_corestream")])
            .arg(&config)
            .arg(&state)
            .env("CORESTREAM_LOG", "off"),
    );
    reaper.remember(&records(&state).iter().map(|(_, pid)| *pid).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let log = state.join("taskmanager-1-localhost.log");
    assert!(stderr.contains("error: 1 TaskManager(s) did not come up:"), "{stderr}");
    assert!(
        stderr.contains(&format!("exited with status 1 before it registered: see {}; its last lines:", log.display())),
        "{stderr}"
    );
    assert!(stderr.contains("error: RLIMIT_MEMLOCK is 256 KiB but 2 io_uring executor(s) (one per slot, and a TaskManager's network executor) need at least 1024 KiB"), "{stderr}");
    // The JobManager started and stays recorded; the TaskManager that ended does not.
    let names: Vec<String> = records(&state).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["jobmanager.json"]);
    let out = cluster(&["stop".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).starts_with("stopped the JobManager on "), "{out:?}");
    assert!(records(&state).is_empty());
}
