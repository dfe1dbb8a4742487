//! End-to-end tests of `corestream bench nexmark`: short runs of a few queries exit 0 and write
//! a JSON object with every figure as a number (checked by a small parser, not by existence),
//! and an unknown query exits 2 with the list of valid ones. A watchdog kills a run that has
//! not ended after [`HANG_LIMIT`], so a hung job fails the test instead of blocking the suite.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{number, parse_flat_object, Value};

use tempfile::TempDir;

const HANG_LIMIT: Duration = Duration::from_secs(300);

/// The numeric fields every report must hold.
const NUMERIC_KEYS: [&str; 9] = [
    "parallelism",
    "events",
    "seed",
    "output_records",
    "wall_time_s",
    "cpu_time_s",
    "events_per_sec",
    "events_per_sec_per_core",
    "peak_rss_bytes",
];

fn corestream(args: &[&str]) -> Output {
    common::run_corestream(args, HANG_LIMIT)
}

fn run_query(query: &str, events: u64) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join(format!("{query}.json"));
    let events_arg = events.to_string();
    let out = corestream(&[
        "bench",
        "nexmark",
        "--query",
        query,
        "--events",
        &events_arg,
        "-p",
        "2",
        "--json",
        path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{query}: exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("nexmark {query}:")), "{query}: stdout {stdout}");
    assert!(stdout.contains("events/s per core"), "{query}: stdout {stdout}");

    let text = std::fs::read_to_string(&path).expect("the JSON report was not written");
    let fields = parse_flat_object(&text).unwrap_or_else(|e| panic!("{query}: invalid JSON ({e}): {text}"));
    assert_eq!(fields.get("query"), Some(&Value::Str(query.to_string())), "{text}");
    for key in NUMERIC_KEYS {
        assert!(number(&fields, key) >= 0.0, "{query}: '{key}' is negative: {text}");
    }
    assert_eq!(number(&fields, "events"), events as f64, "{text}");
    assert_eq!(number(&fields, "parallelism"), 2.0, "{text}");
    assert!(number(&fields, "output_records") > 0.0, "{query}: no output: {text}");
    assert!(number(&fields, "wall_time_s") > 0.0, "{text}");
    assert!(number(&fields, "cpu_time_s") > 0.0, "the OS charged no CPU time: {text}");
    assert!(number(&fields, "peak_rss_bytes") > 0.0, "{text}");
}

#[test]
fn q0_writes_valid_json() {
    run_query("q0", 200_000);
}

#[test]
fn q3_writes_valid_json() {
    run_query("q3", 200_000);
}

#[test]
fn q5_writes_valid_json() {
    run_query("q5", 200_000);
}

#[test]
fn q0_counts_every_event_at_the_sink() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("q0.json");
    let out = corestream(&["bench", "nexmark", "--query", "q0", "--events", "50k", "--json", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fields = parse_flat_object(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(number(&fields, "output_records"), 50_000.0);
}

#[test]
fn unknown_query_exits_2_with_the_valid_ones() {
    let out = corestream(&["bench", "nexmark", "--query", "q6", "--events", "1k"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("q6"), "{stderr}");
    for q in ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q11", "q12"] {
        assert!(stderr.contains(q), "stderr does not list {q}: {stderr}");
    }
}

#[test]
fn parser_rejects_malformed_json() {
    assert!(parse_flat_object("{\"a\": 1, \"b\": \"x\", \"c\": null}").is_ok());
    assert!(parse_flat_object("\"a\": 1").is_err());
    assert!(parse_flat_object("{\"a\": one}").is_err());
    assert!(parse_flat_object("{a: 1}").is_err());
    assert!(parse_flat_object("{\"a\": 1, \"a\": 2}").is_err());
}
