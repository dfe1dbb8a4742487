//! End-to-end tests of `--processes N`: `run sum-by-key` and `run wordcount` across TaskManager
//! processes give the single-process results; a killed TaskManager fails the job quickly and
//! names the signal; a killed TaskManager 0 takes its children with it; commands that run in
//! one process refuse the option.
//!
//! Every `corestream` runs in its own process group; a watchdog kills the whole group (the
//! TaskManagers it started included) and fails the test after [`HANG_LIMIT`].

mod common;

use std::time::{Duration, Instant};

use common::group::{assert_status, line_with, sorted_lines, start, write_text, Finished, Running};
use tempfile::TempDir;

const HANG_LIMIT: Duration = Duration::from_secs(60);

fn corestream(args: &[&str]) -> Finished {
    start(args).finish_within(HANG_LIMIT)
}

/// (keys line, checksum line) of a sum-by-key run.
fn sum_by_key(p: u32, processes: u32) -> (String, String, Finished) {
    let p = p.to_string();
    let n = processes.to_string();
    let out = corestream(&["run", "sum-by-key", "--records", "1M", "--keys", "1000", "-p", &p, "--processes", &n]);
    assert_status(&out, 0);
    assert!(!out.leftover, "a TaskManager outlived the run");
    let keys = line_with(&out, "sum-by-key:").to_string();
    let checksum = line_with(&out, "checksum").to_string();
    (keys, checksum, out)
}

#[test]
fn sum_by_key_across_two_processes_matches_one_process() {
    for p in [2, 3, 4] {
        let (keys_one, checksum_one, _) = sum_by_key(p, 1);
        let (keys_two, checksum_two, two) = sum_by_key(p, 2);
        assert!(checksum_two.ends_with("match)"), "-p {p}: {checksum_two}");
        assert_eq!(checksum_two, checksum_one, "-p {p}");
        assert_eq!(keys_two, keys_one, "-p {p}");
        assert!(keys_two.contains("1000 keys"), "{keys_two}");
        assert!(two.stderr.contains("corestream: TaskManager 1 started (pid "), "{}", two.stderr);
        let network = line_with(&two, "network: TaskManager 0 <-> TaskManager 1:");
        assert!(network.contains("buffers") && network.contains("credit stalls"), "{network}");
        assert!(!two.stdout.contains("TaskManager 1 <-> TaskManager 0"), "one line per connection:\n{}", two.stdout);
    }
}

#[test]
fn wordcount_across_two_processes_writes_the_single_process_output() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("text.txt");
    write_text(&input);
    let input = input.to_str().unwrap();
    let reference = dir.path().join("one.tsv");
    let one = corestream(&["run", "wordcount", "--input", input, "--output", reference.to_str().unwrap(), "-p", "2"]);
    assert_status(&one, 0);
    let expected = sorted_lines(&reference);
    assert!(expected.len() > 400, "{} distinct words", expected.len());
    let figures = |out: &Finished| line_with(out, "wordcount:").split(" in ").next().unwrap().to_string();
    for p in ["2", "4"] {
        let output = dir.path().join(format!("two-p{p}.tsv"));
        let two = corestream(&[
            "run",
            "wordcount",
            "--input",
            input,
            "--output",
            output.to_str().unwrap(),
            "-p",
            p,
            "--processes",
            "2",
        ]);
        assert_status(&two, 0);
        assert!(!two.leftover, "a TaskManager outlived the run");
        assert!(two.stderr.contains("TaskManager 1 started"), "{}", two.stderr);
        assert_eq!(sorted_lines(&output), expected, "-p {p}");
        assert_eq!(figures(&two), figures(&one), "lines, words and distinct words are sums over the processes");
    }
}

fn pid_in(line: &str) -> libc::pid_t {
    let rest = line.split("(pid ").nth(1).unwrap_or_else(|| panic!("no pid in {line:?}"));
    rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn long_run() -> Running {
    start(&[
        "run",
        "sum-by-key",
        "--records",
        "2G",
        "--keys",
        "1000",
        "-p",
        "2",
        "--processes",
        "2",
        "--heartbeat-timeout",
        "2s",
    ])
}

/// Alive means neither gone from /proc nor a zombie.
fn alive(pid: libc::pid_t) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat.rsplit(") ").next().and_then(|s| s.chars().next()), Some('Z' | 'X')),
        Err(_) => false,
    }
}

#[test]
fn a_killed_task_manager_fails_the_job_within_seconds() {
    let mut run = long_run();
    let started = run.stderr_line("TaskManager 1 started", Duration::from_secs(30));
    let child = pid_in(&started);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill on the pid TaskManager 0 reported for its child.
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let out = run.finish_within(Duration::from_secs(5));
    let took = killed.elapsed();
    assert_status(&out, 1);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(out.stderr.contains(&format!("TaskManager 1 (pid {child}) was killed by signal 9")), "{}", out.stderr);
    assert!(!out.stdout.contains("checksum"), "no result after a failure:\n{}", out.stdout);
}

#[test]
fn a_hung_task_manager_is_the_one_named() {
    // Four TaskManager processes: the others' connections to TaskManager 3 time out at about
    // the moment the JobManager misses its heartbeats; the error names TaskManager 3 either way.
    let mut run = start(&[
        "run",
        "sum-by-key",
        "--records",
        "2G",
        "--keys",
        "1000",
        "-p",
        "4",
        "--processes",
        "4",
        "--heartbeat-timeout",
        "2s",
    ]);
    let started = run.stderr_line("TaskManager 3 started", Duration::from_secs(60));
    let child = pid_in(&started);
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill on the pid TaskManager 0 reported for its child; SIGSTOP makes it hang
    // without ending it (SIGKILL from TaskManager 0 still ends it).
    assert_eq!(unsafe { libc::kill(child, libc::SIGSTOP) }, 0);
    let out = run.finish_within(Duration::from_secs(60));
    assert_status(&out, 1);
    let error = out.stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(error.starts_with(&format!("error: TaskManager 3 (pid {child}) hung")), "{}", out.stderr);
    for other in ["TaskManager 1 failed", "TaskManager 2 failed", "part of the job was cancelled"] {
        assert!(!error.contains(other), "blames another TaskManager: {error}");
    }
    assert_eq!(error.matches("hung").count(), 1, "named once: {error}");
    assert!(!alive(child), "the hung TaskManager was killed");
}

#[test]
fn a_bench_run_that_fails_leaves_the_earlier_report_byte_identical() {
    let dir = TempDir::new().unwrap();
    let json = dir.path().join("network.json");
    let j = json.to_str().unwrap();
    let args = ["bench", "network", "--events", "200k", "--raw-bytes", "32M", "-p", "2", "--processes", "2"];
    let ok = corestream(&[&args[..], &["--json", j]].concat());
    assert_status(&ok, 0);
    let before = std::fs::read(&json).unwrap();

    // The same benchmark, much longer, fails when TaskManager 1 is killed during the job.
    let long = ["bench", "network", "--events", "1e11", "--raw-bytes", "32M", "-p", "2", "--processes", "2"];
    let mut run = start(&[&long[..], &["--heartbeat-timeout", "2s", "--json", j]].concat());
    let started = run.stderr_line("TaskManager 1 started", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill on the pid TaskManager 0 reported for its child.
    assert_eq!(unsafe { libc::kill(pid_in(&started), libc::SIGKILL) }, 0);
    let out = run.finish_within(Duration::from_secs(60));
    assert_status(&out, 1);
    assert!(out.stderr.contains("TaskManager 1"), "{}", out.stderr);
    assert_eq!(std::fs::read(&json).unwrap(), before, "the earlier report changed");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["network.json"], "no partial file left behind");
}

#[test]
fn a_killed_task_manager_0_takes_its_children_with_it() {
    let mut run = long_run();
    let started = run.stderr_line("TaskManager 1 started", Duration::from_secs(30));
    let child = pid_in(&started);
    assert!(alive(child));
    // SAFETY: kill on the process this test started.
    assert_eq!(unsafe { libc::kill(run.pid(), libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = alive(child);
    run.kill_group();
    assert!(!survived, "TaskManager 1 (pid {child}) still runs 2 s after TaskManager 0 was killed");
}

#[test]
fn bad_process_counts_and_unsupported_commands_are_refused() {
    let out = corestream(&["run", "sum-by-key", "--records", "1k", "--keys", "10", "--processes", "0"]);
    assert_status(&out, 2);
    assert!(out.stderr.contains("'0' is not a number of TaskManager processes"), "{}", out.stderr);

    let out = corestream(&["bench", "keyed-sum", "--events", "1k", "--keys", "10", "--processes", "2"]);
    assert_status(&out, 2);
    assert!(out.stderr.contains("`corestream bench keyed-sum` runs in one process"), "{}", out.stderr);

    let out = corestream(&["plan", "wordcount", "--processes", "2"]);
    assert_status(&out, 2);
    assert!(out.stderr.contains("`corestream plan` runs in one process"), "{}", out.stderr);

    let out = corestream(&[
        "run",
        "window-agg",
        "--input",
        "in.csv",
        "--key",
        "k",
        "--time",
        "t",
        "--window",
        "tumbling:10s",
        "--out-of-orderness",
        "1s",
        "--agg",
        "count",
        "--output",
        "out.csv",
        "--processes",
        "3",
    ]);
    assert_status(&out, 2);
    assert!(out.stderr.contains("`corestream run window-agg` runs in one process"), "{}", out.stderr);

    let out = corestream(&["demo", "--processes", "2"]);
    assert_status(&out, 2);

    let dir = TempDir::new().unwrap();
    let out = corestream(&[
        "profile",
        "--duration",
        "1s",
        "--output",
        dir.path().to_str().unwrap(),
        "--",
        "run",
        "sum-by-key",
        "--records",
        "1k",
        "--keys",
        "10",
        "--processes",
        "2",
    ]);
    assert_status(&out, 2);
    assert!(out.stderr.contains("not one run by `corestream profile`"), "{}", out.stderr);

    let out = corestream(&[
        "run",
        "sum-by-key",
        "--records",
        "1k",
        "--keys",
        "10",
        "-p",
        "3",
        "--slots",
        "1",
        "--processes",
        "2",
    ]);
    assert_status(&out, 2);
    assert!(out.stderr.contains("--parallelism 3 needs 3 job slots"), "{}", out.stderr);
}

#[test]
fn bench_network_reports_the_exchange_against_the_raw_pair() {
    let dir = TempDir::new().unwrap();
    let json = dir.path().join("network.json");
    let args = [
        "bench",
        "network",
        "--events",
        "200k",
        "--keys",
        "1000",
        "--record-bytes",
        "256",
        "-p",
        "2",
        "--processes",
        "2",
        "--raw-bytes",
        "64M",
        "--max-backlog",
        "4",
        "--json",
        json.to_str().unwrap(),
    ];
    let done = start(&args).finish_within(HANG_LIMIT);
    assert!(done.status.success(), "exit {:?}\n{}\n{}", done.status, done.stdout, done.stderr);
    assert!(done.stdout.contains("raw loopback pair") && done.stdout.contains("ratio to raw"), "{}", done.stdout);
    let text = std::fs::read_to_string(&json).unwrap();
    let fields = common::parse_flat_object(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let field = |name: &str| common::number(&fields, name);
    assert_eq!(field("events"), 200_000.0);
    assert!(field("raw_gbps") > 0.0 && field("exchange_gbps") > 0.0 && field("ratio") > 0.0, "{text}");
    assert!(field("session_gbps") > 0.0 && field("session_ratio") > 0.0, "{text}");
    assert!(done.stdout.contains("session pair"), "{}", done.stdout);
    // About half the records change process each way: at least a quarter of 200k × 256 B.
    assert!(field("crossing_bytes") > 12_800_000.0, "{text}");
}
