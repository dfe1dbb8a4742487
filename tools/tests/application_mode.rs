//! Application mode: `examples/app/`, a crate outside this workspace that links corestream by
//! path and registers a job type of its own (`sensor-max`), is built with cargo and runs as the
//! JobManager and two TaskManagers (three processes of that binary, with a cluster secret); the
//! `corestream` client submits the application's job by name to the application's JobManager,
//! and its output file is checked against the readings computed here. A job type only this
//! `corestream` binary knows is refused by the application's JobManager, naming it.
//!
//! Every process runs in its own process group and is killed at the end; a watchdog bounds each
//! wait.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CORESTREAM: &str = env!("CARGO_BIN_EXE_corestream");
const SECRET: &str = "application-mode-test-secret";
const SECRET_ENV: &str = "CORESTREAM_CONF_SECURITY_CLUSTER_SECRET";
const START_LIMIT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tools/ is inside the workspace").to_path_buf()
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target tmp dir has a parent").to_path_buf()
}

/// Builds the example into the workspace's target directory (reusing what the workspace
/// compiled) and returns its binary.
fn build_app() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(workspace_root().join("examples/app/Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir())
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("running cargo build for examples/app");
    assert!(out.status.success(), "building examples/app failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let binary = target_dir().join("release/corestream-app-example");
    assert!(binary.is_file(), "cargo built no {}", binary.display());
    binary
}

/// A role of the application, in its own process group; its first stdout line arrives on a
/// channel.
struct Role {
    child: Child,
    first_line: mpsc::Receiver<String>,
}

impl Role {
    fn start(binary: &Path, args: &[&str]) -> Role {
        let mut child = Command::new(binary)
            .args(args)
            .env(SECRET_ENV, SECRET)
            .env("CORESTREAM_LOG", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, first_line) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Role { child, first_line }
    }

    fn line(&self, what: &str) -> String {
        self.first_line.recv_timeout(START_LIMIT).unwrap_or_else(|_| panic!("{what} printed no line in time"))
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        // SAFETY: kill on the process group this test created for the child (its pid).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `corestream args` with the cluster secret, bounded by a watchdog thread.
fn corestream(args: &[&str]) -> Output {
    let mut child = Command::new(CORESTREAM)
        .args(args)
        .env(SECRET_ENV, SECRET)
        .env("CORESTREAM_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting corestream");
    let pid = child.id() as libc::pid_t;
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(START_LIMIT).is_err() {
            // SAFETY: kill on the child this test started, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let _ = child.stdin.take();
    let out = child.wait_with_output().expect("waiting for corestream");
    let _ = done.send(());
    assert!(!watchdog.join().unwrap(), "corestream {args:?} did not end within {START_LIMIT:?}");
    out
}

/// The readings of `examples/app/src/main.rs`, and the highest per sensor.
fn expected_lines(readings: u64, sensors: u32) -> Vec<String> {
    let mut max = vec![0u64; sensors as usize];
    for i in 0..readings {
        let sensor = (i % u64::from(sensors)) as usize;
        max[sensor] = max[sensor].max(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44);
    }
    let mut lines: Vec<String> = max.iter().enumerate().map(|(s, m)| format!("{s}\t{m}")).collect();
    lines.sort();
    lines
}

/// `http://HOST:PORT` and `HOST:PORT` from "jobmanager: TaskManagers connect to RPC; REST API on URL".
fn addresses(line: &str) -> (String, String) {
    let rpc = line.split("connect to ").nth(1).and_then(|s| s.split(';').next()).map(str::trim);
    let rest = line.split("REST API on ").nth(1).map(str::trim);
    match (rpc, rest) {
        (Some(rpc), Some(rest)) => (rpc.to_string(), rest.to_string()),
        _ => panic!("unexpected JobManager line: {line}"),
    }
}

#[test]
fn an_application_binary_runs_as_jobmanager_and_taskmanagers_and_its_job_runs() {
    let app = build_app();
    let dir = tempfile::tempdir().unwrap();
    let jm = Role::start(
        &app,
        &["jobmanager", "-D", "rest.port=0", "-D", "jobmanager.rpc.port=0", "-D", "slot.request.timeout=30s"],
    );
    let (rpc, url) = addresses(&jm.line("the JobManager"));
    let tms: Vec<Role> = (0..2)
        .map(|_| {
            Role::start(
                &app,
                &["taskmanager", "--jobmanager", &rpc, "--slots", "1", "-D", "taskmanager.slot.pin-cores=false"],
            )
        })
        .collect();
    for tm in &tms {
        let line = tm.line("a TaskManager");
        assert!(line.starts_with("taskmanager "), "unexpected TaskManager line: {line}");
    }

    let output = dir.path().join("sensor-max.txt");
    let output_arg = output.to_str().unwrap();
    let (readings, sensors) = (200_000u64, 37u32);
    let (readings_arg, sensors_arg) = (readings.to_string(), sensors.to_string());
    // The JobManager waits for the second TaskManager's slot (slot.request.timeout) if need be.
    let out = corestream(&[
        "submit",
        "--jobmanager",
        &url,
        "-p",
        "2",
        "sensor-max",
        "--readings",
        &readings_arg,
        "--sensors",
        &sensors_arg,
        "--output",
        output_arg,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "submit failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("FINISHED"), "the job did not finish:\n{stdout}");

    let mut got: Vec<String> = std::fs::read_to_string(&output).unwrap().lines().map(String::from).collect();
    got.sort();
    assert_eq!(got, expected_lines(readings, sensors), "sensor-max's output differs from the readings' maxima");

    let out = corestream(&["submit", "--jobmanager", &url, "sum-by-key", "--records", "10", "--keys", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the application's JobManager ran a job type it does not register");
    assert!(stderr.contains("sum-by-key"), "the refusal does not name the job type:\n{stderr}");
    drop(tms);
    drop(jm);
}
