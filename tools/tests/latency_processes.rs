//! End-to-end tests of `corestream bench latency --processes 2` (the job type `bench-latency` on
//! a JobManager in the `corestream` process and two TaskManager processes): a one-second q0 run
//! at 20k records/s reports crossing and local percentiles; every record offered arrives at a
//! sink (crossing + local = offered, both halves non-empty); the percentiles are in order; the
//! interval log holds the merged intervals and their crossing and local parts (tagged) and the
//! plot draws all three; nothing is left in the temporary directory. A host feeder works across
//! the processes too. A killed TaskManager fails the run, names it and leaves an earlier report
//! as it was. q5 refuses the option (exit 2). No timing thresholds on latencies: the machine may
//! be busy.
//!
//! A watchdog kills a run (and, through their parent-death signal, its TaskManagers) that has not
//! ended after [`HANG_LIMIT`].

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{base64_decode, number, parse_flat_object, Value};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

const HANG_LIMIT: Duration = Duration::from_secs(120);

/// Runs `corestream` with `TMPDIR` set to `tmp`, under the watchdog.
fn corestream_in(tmp: &Path, args: &[&str]) -> Output {
    common::run_corestream_with_env(args, &[("TMPDIR", tmp.as_os_str())], HANG_LIMIT)
}

/// p50 ≤ p90 ≤ p99 ≤ p99.9 ≤ p99.99 ≤ max for the figures prefixed `prefix`.
fn assert_ordered(fields: &std::collections::HashMap<String, Value>, prefix: &str) {
    let keys = ["p50_us", "p90_us", "p99_us", "p99_9_us", "p99_99_us", "max_us"].map(|k| format!("{prefix}{k}"));
    let values: Vec<f64> = keys.iter().map(|k| number(fields, k)).collect();
    assert!(values[0] > 0.0, "{prefix}p50_us is {}", values[0]);
    for (pair, names) in values.windows(2).zip(keys.windows(2)) {
        assert!(pair[0] <= pair[1], "{} {} > {} {}", names[0], pair[0], names[1], pair[1]);
    }
}

#[test]
fn q0_across_two_processes_reports_crossing_and_local() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (json, hlog, svg) = (dir.path().join("l.json"), dir.path().join("l.hlog"), dir.path().join("l.svg"));
    let out = corestream_in(
        tmp.path(),
        &[
            "bench",
            "latency",
            "--query",
            "q0",
            "--rate",
            "20k",
            "--duration",
            "1s",
            "-p",
            "2",
            "--processes",
            "2",
            "--json",
            json.to_str().unwrap(),
            "--hdr-log",
            hlog.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("across 2 TaskManager processes"), "{stdout}");
    for part in ["crossing", "local"] {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(part)).unwrap_or_else(|| panic!("{stdout}"));
        for p in ["p50", "p99", "p99.9", "max"] {
            assert!(line.contains(&format!("{p} ")), "'{p}' missing from: {line}");
        }
    }
    assert!(stdout.contains("warm-up"), "{stdout}");
    assert!(stdout.contains("crossing (sink subtasks in the other TaskManager, over TCP)"), "{stdout}");
    assert!(stdout.contains("local (sink subtasks in the source's TaskManager, in memory)"), "{stdout}");
    // The TaskManagers report to the JobManager and print nothing.
    assert_eq!(stdout.matches("latency q0:").count(), 1, "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TaskManager 1 started (pid "), "{stderr}");

    let fields = parse_flat_object(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    assert_eq!(fields["query"], Value::Str("q0".to_string()));
    let num = |k: &str| number(&fields, k);
    assert_eq!(num("processes"), 2.0);
    assert_eq!(num("parallelism"), 2.0);
    assert_eq!(num("offered"), 20_000.0);
    assert_eq!(num("received"), 20_000.0);
    assert_eq!(num("samples"), 20_000.0);
    // No record lost, and both halves non-empty (round-robin over the two sink subtasks).
    assert!(num("crossing_count") > 0.0, "{fields:?}");
    assert!(num("local_count") > 0.0, "{fields:?}");
    assert_eq!(num("crossing_count") + num("local_count"), num("offered"), "{fields:?}");
    assert_eq!(num("crossing_samples"), num("crossing_count"));
    assert_eq!(num("local_samples"), num("local_count"));
    for prefix in ["", "crossing_", "local_"] {
        assert_ordered(&fields, prefix);
    }
    assert_eq!(num("max_us"), num("crossing_max_us").max(num("local_max_us")));
    // The clock started after both sink subtasks had received a warm-up record.
    assert!(num("warm_up_records") >= 2.0, "{fields:?}");

    // Interval log: untagged intervals hold every sample, the tagged ones each half.
    let log = std::fs::read(&hlog).unwrap();
    let mut deserializer = Deserializer::new();
    let (mut all, mut crossing, mut local) = (0u64, 0u64, 0u64);
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(ilh) = entry.expect("a valid log entry") {
            let bytes = base64_decode(ilh.encoded_histogram());
            let h: Histogram<u64> = deserializer.deserialize(&mut bytes.as_slice()).expect("a V2 histogram");
            match ilh.tag().map(|t| t.as_str()) {
                None => all += h.len(),
                Some("crossing") => crossing += h.len(),
                Some("local") => local += h.len(),
                Some(other) => panic!("unexpected tag {other}"),
            }
        }
    }
    assert_eq!(all, 20_000);
    assert_eq!(crossing as f64, num("crossing_count"));
    assert_eq!(local as f64, num("local_count"));

    // Plot: the merged distribution and both halves.
    let plot = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(plot.trim()).expect("the plot is well-formed XML");
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("polyline")).count(), 3, "{plot}");

    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// The host feeder runs in the TaskManager that runs the source; the others do not feed.
#[test]
fn a_host_feeder_across_two_processes_offers_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let json = dir.path().join("host.json");
    let args = ["bench", "latency", "--query", "q0", "--rate", "20k", "--duration", "500ms", "-p", "2"];
    let more = ["--processes", "2", "--feeder", "host", "--json", json.to_str().unwrap()];
    let out = corestream_in(tmp.path(), &[&args[..], &more[..]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let fields = parse_flat_object(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    let num = |k: &str| number(&fields, k);
    assert_eq!(num("offered"), 10_000.0);
    assert_eq!(num("received"), 10_000.0);
    assert_eq!(num("crossing_count") + num("local_count"), 10_000.0, "{fields:?}");
    assert!(num("crossing_count") > 0.0 && num("local_count") > 0.0, "{fields:?}");
}

/// One process: no split figures, no TaskManager process.
#[test]
fn one_process_has_no_split() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let json = dir.path().join("l.json");
    let out = corestream_in(
        tmp.path(),
        &[
            "bench",
            "latency",
            "--query",
            "q0",
            "--rate",
            "20k",
            "--duration",
            "1s",
            "-p",
            "2",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("crossing"), "{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("TaskManager"), "one process starts no TaskManager");
    let fields = parse_flat_object(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    assert_eq!(number(&fields, "processes"), 1.0);
    assert_eq!(number(&fields, "received"), 20_000.0);
    assert!(!fields.contains_key("crossing_count"), "{fields:?}");
    assert_ordered(&fields, "");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "a file is left in TMPDIR");
}

#[test]
fn q5_refuses_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = corestream_in(
        tmp.path(),
        &["bench", "latency", "--query", "q5", "--rate", "1000", "--duration", "3s", "--processes", "2"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("only q0 runs across TaskManager processes"), "{stderr}");
}

/// A TaskManager killed during the run fails it within seconds, names it, and leaves an earlier
/// report as it was; no TaskManager outlives the run.
#[test]
fn a_killed_task_manager_fails_the_run_and_keeps_the_earlier_report() {
    use common::group::{assert_status, start};
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("l.json");
    std::fs::write(&json, "earlier\n").unwrap();
    let args = ["bench", "latency", "--query", "q0", "--rate", "10k", "--duration", "60s", "-p", "2"];
    let more = ["--processes", "2", "--heartbeat-timeout", "2s", "--json", json.to_str().unwrap()];
    let mut run = start(&[&args[..], &more[..]].concat());
    let started = run.stderr_line("TaskManager 1 started (pid ", Duration::from_secs(60));
    let pid: libc::pid_t = started
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {started:?}"));
    run.stderr_line("TaskManager 1 (pid ", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill on the pid `corestream` reported for its TaskManager.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = std::time::Instant::now();
    let out = run.finish_within(Duration::from_secs(30));
    assert_status(&out, 1);
    assert!(killed.elapsed() < Duration::from_secs(10), "took {:?}", killed.elapsed());
    assert!(out.stderr.contains(&format!("TaskManager 1 (pid {pid}) was killed by signal 9")), "{}", out.stderr);
    assert!(!out.stdout.contains("latency q0:"), "no report after a failure:\n{}", out.stdout);
    assert!(!out.leftover, "a TaskManager outlived the run");
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "earlier\n");
    assert_eq!(common::names(dir.path()), ["l.json"], "no partial file left behind");
}
