//! Honest reports and safe report files (issue 12, items 1 and 7): an error or warning is
//! printed once and without terminal colour codes when standard error is not a terminal;
//! `bench latency` at a rate the machine cannot offer ends on time and says that its feeder
//! fell behind; `bench window` names its window as the user wrote it; report paths are checked
//! before the job starts, may not be the same file, and a failed run leaves earlier reports
//! byte for byte as they were.
//!
//! Every run is guarded by a watchdog far above its expected time, as a hang guard only: no
//! test asserts a speed.

mod common;

use common::names;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::run_corestream;

const WATCHDOG: Duration = Duration::from_secs(120);

/// Runs `corestream args` with the default log filter (no `CORESTREAM_LOG`), as a user would,
/// with standard error a pipe. Short runs only: the output is read when it ends.
fn run_as_user(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_corestream"))
        .args(args)
        .env_remove("CORESTREAM_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the corestream binary");
    let pid = child.id();
    let guard = std::thread::spawn(move || {
        std::thread::sleep(WATCHDOG);
        // SAFETY: kill on the pid of the child this test started; if it already ended and was
        // reaped the test has finished with it.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    assert!(!guard.is_finished(), "`corestream {}` hung", args.join(" "));
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_failed_job_prints_its_error_once_and_without_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.txt");
    std::fs::write(&input, b"fine words\n\xff\xfe broken\nmore words\n").unwrap();
    let output = dir.path().join("out.txt");
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
    let out = run_as_user(&["run", "wordcount", "--input", i, "--output", o, "--on-invalid-utf8", "fail", "-p", "1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("is not valid UTF-8").count(), 1, "the error once:\n{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{stderr}");
    assert!(!stderr.contains("\x1b["), "colour codes in a pipe:\n{stderr:?}");

    // A warning too is printed once (the engine's log of it is not repeated).
    let out = run_as_user(&["run", "wordcount", "--input", i, "--output", o, "-p", "1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.matches("not valid UTF-8 and were skipped").count(), 1, "the warning once:\n{stderr}");
    assert!(!stderr.contains("\x1b["), "colour codes in a pipe:\n{stderr:?}");

    // And clap's own errors carry no colour codes either.
    let out = run_as_user(&["bench", "passthrough", "--events", "zero"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!text(&out.stderr).contains("\x1b["), "{:?}", text(&out.stderr));
}

/// `bench latency` far above what the machine can offer, with either feeder.
fn latency_beyond_the_machine(feeder: &str) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("l.json");
    let args = [
        "bench",
        "latency",
        "--query",
        "q0",
        "--rate",
        "50M",
        "--duration",
        "1s",
        "-p",
        "1",
        "--feeder",
        feeder,
        "--json",
        json.to_str().unwrap(),
    ];
    // The watchdog only guards against a hang: before the fix this ran for tens of seconds
    // per second of schedule, offering every record however late.
    let out = run_corestream(&args, Duration::from_secs(60));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "--feeder {feeder}:\n{stdout}\n{stderr}");
    let line = stdout.lines().find(|l| l.contains("feeder fell behind")).unwrap_or_else(|| {
        panic!("--feeder {feeder}: no fell-behind line:\n{stdout}");
    });
    let fields = common::parse_flat_object(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let num = |k: &str| common::number(&fields, k);
    assert_eq!(num("scheduled"), 50e6, "{line}");
    assert!(num("offered") < num("scheduled"), "the feeder stopped before offering every record: {line}");
    assert_eq!(num("offered") + num("not_offered"), num("scheduled"));
    assert_eq!(num("received"), num("offered"), "everything offered was received");
    assert!(num("behind_at_stop_s") > 0.0, "{line}");
    assert!(line.contains(&format!("{} records were never offered", num("not_offered") as u64)), "{line}");
}

#[test]
fn latency_at_an_impossible_rate_stops_on_time_and_says_the_source_feeder_fell_behind() {
    latency_beyond_the_machine("source");
}

#[test]
fn latency_at_an_impossible_rate_stops_on_time_and_says_the_host_feeder_fell_behind() {
    latency_beyond_the_machine("host");
}

#[test]
fn bench_window_names_the_window_as_given() {
    let args = ["bench", "window", "--events", "20k", "--keys", "10", "--window", "sliding:10s/2s", "-p", "1"];
    let out = run_corestream(&args, WATCHDOG);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("window: sliding:10s/2s, 10 keys"), "{stdout}");
    assert!(!stdout.contains("Sliding {") && !stdout.contains("size_ms"), "a debug struct:\n{stdout}");
}

#[test]
fn a_bad_report_path_is_refused_before_the_job_runs() {
    // 1e12 events would run for hours: an exit within the watchdog shows nothing ran.
    let args = ["bench", "nexmark", "--query", "q1", "--events", "1e12", "--json", "/nonexistent-dir/x.json"];
    let out = run_corestream(&args, Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--json") && stderr.contains("/nonexistent-dir"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    let dir = tempfile::tempdir().unwrap();
    let same = dir.path().join("l.json");
    let s = same.to_str().unwrap();
    let args = ["bench", "latency", "--query", "q0", "--rate", "1k", "--duration", "60m", "--json", s, "--plot", s];
    let out = run_corestream(&args, Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("same file"), "{stderr}");
    assert_eq!(names(dir.path()), Vec::<String>::new(), "nothing written");

    let args = ["bench", "transport", "--bytes", "2G", "--rounds", "100", "--json", dir.path().to_str().unwrap()];
    let out = run_corestream(&args, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is a directory"), "{}", text(&out.stderr));
}

#[test]
fn a_failed_bench_run_leaves_the_earlier_report_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("q5.json");
    let j = json.to_str().unwrap();
    let ok =
        run_corestream(&["bench", "nexmark", "--query", "q5", "--events", "20k", "-p", "2", "--json", j], WATCHDOG);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let before = std::fs::read(&json).unwrap();
    assert!(serde_json_like(&before), "{}", text(&before));
    assert_eq!(names(dir.path()), ["q5.json"], "no staged file left behind");

    // Too few buffers for the job's exchange: the engine refuses the job before it starts,
    // which is an invalid argument.
    let args =
        ["bench", "nexmark", "--query", "q5", "--events", "20k", "-p", "2", "--network-buffers", "1", "--json", j];
    let refused = run_corestream(&args, WATCHDOG);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("insufficient network buffers"), "{}", text(&refused.stderr));
    assert_eq!(std::fs::read(&json).unwrap(), before, "the earlier report changed");

    // A run interrupted while its job runs (SIGTERM, then SIGKILL) writes nothing either.
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corestream"))
            .args(["bench", "nexmark", "--query", "q5", "--events", "1e12", "-p", "2", "--json", j])
            .env("CORESTREAM_LOG", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was interrupted");
        // SAFETY: kill on the pid of the child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let status = child.wait().unwrap();
        assert!(!status.success(), "{status:?}");
        assert_eq!(std::fs::read(&json).unwrap(), before, "the earlier report changed");
        assert_eq!(names(dir.path()), ["q5.json"], "no partial file left behind");
    }
}

#[test]
fn a_failed_profiled_command_leaves_the_earlier_profile_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let prof = dir.path().join("prof");
    let p = prof.to_str().unwrap();
    let job = ["--", "bench", "keyed-sum", "--events", "2M", "--keys", "100", "-p", "2"];
    let ok = run_corestream(&[&["profile", "--duration", "1s", "--output", p][..], &job[..]].concat(), WATCHDOG);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let files = names(&prof);
    assert!(files.contains(&"combined.svg".to_string()) && files.contains(&"combined.folded".to_string()), "{files:?}");
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(prof.join(f)).unwrap()).collect();

    // A job that fails while it runs: word count stopping at a line that is not UTF-8.
    let input = dir.path().join("bad.txt");
    std::fs::write(&input, b"fine words\n\xff\xfe broken\n").unwrap();
    let counts = dir.path().join("counts.txt");
    // A report of the profiled command may not be one of the profile's files.
    let clash = prof.join("combined.svg");
    let args = ["profile", "--duration", "1s", "--output", p, "--", "bench", "nexmark", "--query", "q1"];
    let out = run_corestream(&[&args[..], &["--events", "1e12", "--json", clash.to_str().unwrap()]].concat(), WATCHDOG);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("same file"), "{}", text(&out.stderr));
    assert_eq!(names(&prof), files, "no file added or removed");

    let failing = ["--", "run", "wordcount", "--input", input.to_str().unwrap(), "--output", counts.to_str().unwrap()];
    let failing = [&failing[..], &["--on-invalid-utf8", "fail", "-p", "1"][..]].concat();
    let out = run_corestream(&[&["profile", "--duration", "1s", "--output", p][..], &failing[..]].concat(), WATCHDOG);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no profile was written"), "{}", text(&out.stderr));
    assert_eq!(names(&prof), files, "no file added or removed");
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(prof.join(f)).unwrap()).collect();
    assert!(before == after, "an earlier profile file changed");
}

/// A one-line flat JSON object as the reports write (checked by the flat parser).
fn serde_json_like(bytes: &[u8]) -> bool {
    let t = String::from_utf8_lossy(bytes);
    t.ends_with("}\n") && t.lines().count() == 1 && common::parse_flat_object(&t).is_ok()
}
