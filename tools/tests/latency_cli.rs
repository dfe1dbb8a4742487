//! End-to-end tests of `corestream bench latency`: a one-second run at 20k records/s writes a
//! JSON object whose figures are numbers in order (p50 ≤ p99 ≤ max), an HdrHistogram interval
//! log that hdrhistogram reads back, and an SVG plot with a polyline; impossible settings exit 2
//! with a clear message. A watchdog kills a run that has not ended after [`HANG_LIMIT`].

mod common;

use std::process::Output;
use std::time::Duration;

use common::{base64_decode, number, parse_flat_object, Value};

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

const HANG_LIMIT: Duration = Duration::from_secs(120);

const NUMERIC_KEYS: [&str; 16] = [
    "parallelism",
    "rate",
    "duration_s",
    "offered",
    "received",
    "samples",
    "achieved_rate",
    "p50_us",
    "p90_us",
    "p99_us",
    "p99_9_us",
    "p99_99_us",
    "max_us",
    "mean_us",
    "offer_lag_p99_us",
    "offer_lag_max_us",
];

fn corestream(args: &[&str]) -> Output {
    common::run_corestream(args, HANG_LIMIT)
}

#[test]
fn one_second_at_20k_writes_json_hdr_log_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let (json, hlog, svg) = (dir.path().join("l.json"), dir.path().join("l.hlog"), dir.path().join("l.svg"));
    let out = corestream(&[
        "bench",
        "latency",
        "--query",
        "q0",
        "--rate",
        "20k",
        "--duration",
        "1s",
        "--parallelism",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--hdr-log",
        hlog.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--baseline",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("p99.99"), "{stdout}");

    // JSON
    let fields = parse_flat_object(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    assert_eq!(fields["query"], Value::Str("q0".to_string()));
    let num = |k: &str| number(&fields, k);
    for key in NUMERIC_KEYS {
        assert!(num(key) >= 0.0, "{key}");
    }
    assert_eq!(num("offered"), 20_000.0);
    assert_eq!(num("received"), 20_000.0);
    assert!(num("p50_us") > 0.0);
    assert!(num("p50_us") <= num("p90_us") && num("p90_us") <= num("p99_us"));
    assert!(num("p99_us") <= num("p99_9_us") && num("p99_9_us") <= num("p99_99_us"));
    assert!(num("p99_99_us") <= num("max_us"));
    assert!(num("achieved_rate") > 1_000.0);
    // The harness alone, run first with the same schedule.
    assert!(stdout.contains("baseline"), "{stdout}");
    assert!(num("baseline_p50_us") > 0.0 && num("baseline_p50_us") <= num("baseline_p99_us"));
    assert!(num("baseline_p99_us") <= num("baseline_max_us"));
    assert!(num("offer_lag_p99_us") <= num("offer_lag_max_us"));

    // HdrHistogram interval log: every interval decodes; the counts add up to the records.
    let log = std::fs::read(&hlog).unwrap();
    let mut deserializer = Deserializer::new();
    let (mut intervals, mut count, mut max_ns) = (0, 0u64, 0u64);
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(ilh) = entry.expect("a valid log entry") {
            let bytes = base64_decode(ilh.encoded_histogram());
            let h: Histogram<u64> = deserializer.deserialize(&mut bytes.as_slice()).expect("a V2 histogram");
            intervals += 1;
            count += h.len();
            max_ns = max_ns.max(h.max());
        }
    }
    assert!(intervals >= 1, "no interval in the log");
    assert_eq!(count, 20_000);
    let max_us = max_ns as f64 / 1e3;
    assert!((max_us - num("max_us")).abs() <= num("max_us") * 0.01 + 1.0, "log max {max_us} vs {}", num("max_us"));

    // SVG
    let plot = std::fs::read_to_string(&svg).unwrap();
    let plot = plot.trim();
    assert!(plot.starts_with("<svg"), "{plot}");
    assert!(plot.ends_with("</svg>"));
    let doc = roxmltree::Document::parse(plot).expect("the plot is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let polyline = doc.descendants().find(|n| n.has_tag_name("polyline")).expect("a polyline");
    let points = polyline.attribute("points").expect("polyline points");
    assert!(points.split_whitespace().count() > 100, "{points}");
    for p in points.split_whitespace() {
        let (x, y) = p.split_once(',').unwrap();
        assert!(x.parse::<f64>().unwrap().is_finite() && y.parse::<f64>().unwrap().is_finite());
    }
}

/// q5 measures window results from their window's end: a three-second run closes at least one
/// window by event time; the windows that only the end of the input closes are received but
/// not measured (their end lies after the last record, so they have no latency).
#[test]
fn q5_measures_window_results_closed_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("q5.json");
    let out = corestream(&[
        "bench",
        "latency",
        "--query",
        "q5",
        "--rate",
        "20k",
        "--duration",
        "3s",
        "-p",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("window result"), "{stdout}");
    let fields = parse_flat_object(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    assert_eq!(fields["query"], Value::Str("q5".to_string()));
    let num = |k: &str| number(&fields, k);
    assert_eq!(num("offered"), 60_000.0);
    assert!(num("samples") >= 1.0, "{fields:?}");
    assert!(num("received") > num("samples"), "windows closed by the end of input must not be measured: {fields:?}");
    // A measured window closed after its end (a real latency, not the 1 ns floor) and within
    // the run.
    assert!(num("p50_us") > 1.0 && num("max_us") < 3e6, "{fields:?}");
}

fn assert_refused(args: &[&str], message: &str) {
    let out = corestream(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "`{}`: {stderr}", args.join(" "));
    assert!(stderr.contains(message), "`{}`: expected '{message}' in: {stderr}", args.join(" "));
}

#[test]
fn impossible_settings_exit_2() {
    let base = ["bench", "latency", "--query"];
    let run = |q: &str, rate: &str, d: &str| {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        v.extend([q, "--rate", rate, "--duration", d].map(String::from));
        v
    };
    let cases = [
        (run("q0", "0", "1s"), "at least 1 record/s"),
        (run("q0", "100", "0"), "must be more than 0"),
        (run("q0", "100", "0ms"), "must be more than 0"),
        (run("q0", "10G", "2s"), "more than the limit"),
        (run("q0", "10M", "60m"), "more than the limit"),
        (run("q42", "100", "1s"), "q42"),
        (run("q0", "fast", "1s"), "not a count"),
        (run("q5", "1000", "2s"), "too short for q5"),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&args, message);
    }
}

#[test]
fn q0_fed_by_a_host_thread_receives_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("host.json");
    let args =
        ["bench", "latency", "--query", "q0", "--rate", "20k", "--duration", "500ms", "-p", "2", "--feeder", "host"];
    let out = corestream(&[&args[..], &["--json", json.to_str().unwrap()]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let fields = parse_flat_object(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    assert_eq!(number(&fields, "offered"), 10_000.0);
    assert_eq!(number(&fields, "received"), 10_000.0);
    assert_refused(
        &["bench", "latency", "--query", "q0", "--rate", "1k", "--duration", "1s", "--feeder", "thread"],
        "thread",
    );
}
