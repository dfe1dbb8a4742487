//! End-to-end tests of `corestream profile`: a short Nexmark run profiled for one second writes
//! a well-formed flame graph per slot thread and one for all threads (parsed as XML), whose
//! frames name the engine's slot and task loops, and folded stacks with positive counts; bad
//! arguments exit 2 naming the problem before any job runs, and an output directory that
//! cannot be created exits 1. Sample counts are only required to be positive: on a loaded
//! machine they vary widely.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use tempfile::TempDir;

const HANG_LIMIT: Duration = Duration::from_secs(120);

/// Functions of the engine that every slot thread of a running job has on its stack.
const ENGINE_FRAMES: [&str; 2] = ["corestream::runtime::slot::run_task", "corestream::runtime::task::run"];

fn corestream(args: &[&str]) -> Output {
    common::run_corestream(args, HANG_LIMIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses an SVG written by inferno and returns the text of its frames' `<title>` elements
/// (`function (N samples, P%)`).
fn frame_titles(path: &Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let options = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&svg, options)
        .unwrap_or_else(|e| panic!("{} is not well-formed XML: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg", "{}: root element", path.display());
    doc.descendants().filter(|n| n.has_tag_name("title")).filter_map(|n| n.text()).map(str::to_string).collect()
}

/// Sums the counts of a folded-stacks file, checking every line is `stack count`.
fn folded_samples(path: &Path) -> u64 {
    let folded = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    folded
        .lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no count in line: {line}"));
            assert!(!stack.is_empty(), "{}: empty stack", path.display());
            count.parse::<u64>().unwrap_or_else(|_| panic!("{}: bad count in line: {line}", path.display()))
        })
        .sum()
}

#[test]
fn writes_a_flame_graph_per_slot_thread_and_one_for_all_threads() {
    let dir = TempDir::new().unwrap();
    let output = dir.path().join("profile");
    let out = corestream(&[
        "profile",
        "--duration",
        "1s",
        "--output",
        output.to_str().unwrap(),
        "--",
        "bench",
        "nexmark",
        "--query",
        "q1",
        "--events",
        "6M",
        "-p",
        "2",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {}", out.status.code(), text(&out.stderr));
    assert!(stdout.contains("nexmark q1:"), "the job's own report is missing: {stdout}");

    for stem in ["cs-slot-0", "cs-slot-1", "combined"] {
        let svg = output.join(format!("{stem}.svg"));
        let folded = output.join(format!("{stem}.folded"));
        assert!(stdout.contains(svg.to_str().unwrap()), "{stem}.svg is not reported: {stdout}");
        assert!(folded_samples(&folded) > 0, "{stem}.folded holds no samples");

        let titles = frame_titles(&svg);
        assert!(!titles.is_empty(), "{stem}.svg has no frames");
        for function in ENGINE_FRAMES {
            assert!(
                titles.iter().any(|t| t.starts_with(function)),
                "{stem}.svg has no frame of {function}; frames: {:?}",
                &titles[..titles.len().min(40)]
            );
        }
    }
    assert!(
        frame_titles(&output.join("combined.svg")).iter().any(|t| t.starts_with("cs-slot-1 ")),
        "the combined graph has no root frame per thread"
    );
    assert!(!output.join("cs-slot-2.svg").exists(), "a graph for a slot the job did not use");
}

fn assert_usage_error(args: &[&str], expected: &str) {
    let out = corestream(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "`{}`: stderr: {stderr}", args.join(" "));
    assert!(stderr.contains(expected), "`{}`: expected '{expected}' in: {stderr}", args.join(" "));
}

#[test]
fn refuses_bad_arguments_with_status_2() {
    let dir = TempDir::new().unwrap();
    let output = dir.path().join("never-written");
    let out = output.to_str().unwrap();
    assert_usage_error(&["profile", "--duration", "2s", "--output", out], "-- <COMMAND>");
    assert_usage_error(&["profile", "--duration", "2s", "--output", out, "--"], "-- <COMMAND>");
    let job = ["--", "bench", "passthrough", "--events", "1M"];
    let with_duration = |duration: &'static str| {
        let mut args = vec!["profile", "--duration", duration, "--output", out];
        args.extend(job);
        args
    };
    assert_usage_error(&with_duration("fast"), "'fast' is not a duration");
    assert_usage_error(&with_duration("2"), "needs a unit");
    assert_usage_error(&with_duration("0"), "samples nothing");
    assert_usage_error(&["profile", "--duration", "1s", "--output", out, "--", "frobnicate"], "'frobnicate'");
    assert_usage_error(
        &["profile", "--duration", "1s", "--output", out, "--", "bench", "nexmark", "--query", "q99", "--events", "1"],
        "'q99'",
    );
    assert_usage_error(
        &[
            "profile",
            "--duration",
            "1s",
            "--output",
            out,
            "--",
            "profile",
            "--duration",
            "1s",
            "--output",
            out,
            "--",
            "bench",
            "passthrough",
            "--events",
            "1M",
        ],
        "cannot profile itself",
    );
    assert!(!output.exists(), "a refused command created its output directory");
}

#[test]
fn refuses_an_output_directory_that_cannot_be_created() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let output = file.join("profile");
    let out = corestream(&[
        "profile",
        "--duration",
        "1s",
        "--output",
        output.to_str().unwrap(),
        "--",
        "bench",
        "passthrough",
        "--events",
        "1M",
    ]);
    let stderr = text(&out.stderr);
    // An unusable output is an invalid argument, refused before the job (exit status 2).
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("cannot create the output directory"), "{stderr}");
    assert!(stderr.contains(output.to_str().unwrap()), "the path is not named: {stderr}");
}
