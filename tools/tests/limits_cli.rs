//! Every numeric option is bounded before anything is allocated: the huge values of issue 12
//! (`-p 10000`, `--network-buffers 4294967295`, `--keys 18446744073709551615`, `--records
//! 18446744073709551615`, `--keys 1e15`, and as many `--events`) given to every command that
//! takes them end with a clear error and exit status 2, never a panic or an abort, and so do
//! options that conflict only together (`--parallelism 4 --slots 2`).
//!
//! Each run is guarded by a watchdog far above the time an argument error takes: a command
//! that starts its job instead would be killed and fail the test.

mod common;

use std::time::Duration;

use common::run_corestream;

const WATCHDOG: Duration = Duration::from_secs(60);

const HUGE: &str = "18446744073709551615";

/// Runs `args` and checks that it was refused as an invalid argument, naming `needle`.
fn assert_refused(args: &[&str], needle: &str) {
    let out = run_corestream(args, WATCHDOG);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = args.join(" ");
    assert_eq!(out.status.code(), Some(2), "`corestream {shown}` should exit 2:\n{stderr}");
    assert!(stderr.starts_with("error: "), "`corestream {shown}`: no error line:\n{stderr}");
    assert!(stderr.contains(needle), "`corestream {shown}`: the error does not name {needle:?}:\n{stderr}");
    for bad in ["panicked", "abort", "RUST_BACKTRACE", "memory allocation", "capacity overflow"] {
        assert!(!stderr.contains(bad), "`corestream {shown}`: {bad:?} in:\n{stderr}");
    }
    assert!(out.stdout.is_empty(), "`corestream {shown}` ran something:\n{}", String::from_utf8_lossy(&out.stdout));
}

/// The commands, each with the options it needs and the numeric options it takes.
fn commands(dir: &std::path::Path) -> Vec<(Vec<String>, Vec<&'static str>)> {
    let input = dir.join("in.txt");
    std::fs::write(&input, "a b c\n").unwrap();
    let (input, output) = (input.display().to_string(), dir.join("out.txt").display().to_string());
    let profile_dir = dir.join("prof").display().to_string();
    let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    let common = ["-p", "--network-buffers"];
    vec![
        (v("run sum-by-key --records 1k --keys 10"), [&common[..], &["--keys", "--records"]].concat()),
        ([v("run wordcount --input"), vec![input.clone()], v("--output"), vec![output]].concat(), common.to_vec()),
        (v("bench passthrough --events 1k"), [&common[..], &["--events"]].concat()),
        (v("bench keyed-sum --events 1k --keys 10"), [&common[..], &["--keys", "--events"]].concat()),
        (v("bench window --events 1k --keys 10 --window tumbling:1s"), [&common[..], &["--keys", "--events"]].concat()),
        (v("bench nexmark --query q1 --events 1k"), [&common[..], &["--events"]].concat()),
        (v("bench latency --query q0 --rate 1k --duration 1s"), [&common[..], &["--rate"]].concat()),
        (v("bench network --events 1k"), [&common[..], &["--keys", "--events"]].concat()),
        (v("bench transport --bytes 1M"), vec!["--rounds", "--bytes"]),
        (v("plan wordcount"), common.to_vec()),
        (v("demo"), vec!["--slots", "--keys", "--records", "--events", "--window-events", "--corpus-mb"]),
        (
            [v("profile --duration 1s --output"), vec![profile_dir], v("-- bench keyed-sum --events 1k --keys 10")]
                .concat(),
            common.to_vec(),
        ),
    ]
}

#[test]
fn huge_numbers_are_refused_by_every_command_that_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    for (base, options) in commands(dir.path()) {
        for option in options {
            let mut values = vec![HUGE];
            match option {
                "-p" | "--slots" => values = vec!["10000", HUGE],
                "--network-buffers" => values = vec!["4294967295", HUGE],
                "--keys" => values.push("1e15"),
                _ => {}
            }
            for value in values {
                let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
                // An option given in the base command is replaced, so that it appears once.
                if let Some(at) = args.iter().position(|a| *a == option) {
                    args.drain(at..at + 2);
                }
                args.extend([option, value]);
                let needle = if option == "-p" { "--parallelism" } else { option };
                assert_refused(&args, needle);
            }
        }
    }
}

#[test]
fn options_that_conflict_together_are_refused_before_the_job_starts() {
    assert_refused(
        &["run", "sum-by-key", "--records", "1k", "--keys", "10", "-p", "4", "--slots", "2"],
        "--slots is 2",
    );
    assert_refused(&["bench", "passthrough", "--events", "1e12", "-p", "4", "--slots", "2"], "--slots is 2");
    assert_refused(
        &["run", "sum-by-key", "--records", "1k", "--keys", "10", "--slots", "100", "--processes", "2"],
        "more than the limit of 128",
    );
    // The pool that the slots and credit settings size must fit in memory.
    assert_refused(
        &[
            "bench",
            "passthrough",
            "--events",
            "1k",
            "-p",
            "128",
            "--max-backlog",
            "1024",
            "--exclusive-buffers",
            "1024",
        ],
        "memory",
    );
}

#[test]
fn durations_need_a_unit_everywhere() {
    for args in [
        &["bench", "window", "--events", "1k", "--keys", "10", "--window", "tumbling:10"][..],
        &["bench", "window", "--events", "1k", "--keys", "10", "--window", "sliding:10s/2"][..],
        &["bench", "latency", "--query", "q0", "--rate", "1k", "--duration", "1"][..],
        &["bench", "passthrough", "--events", "1k", "--buffer-timeout", "5"][..],
        &["profile", "--duration", "3", "--output", "x", "--", "bench", "passthrough", "--events", "1k"][..],
    ] {
        assert_refused(args, "needs a unit");
    }
    let help = run_corestream(&["bench", "passthrough", "--help"], WATCHDOG);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("a number and a unit (ns, us, ms, s, m), or a bare 0"), "{help}");
}
