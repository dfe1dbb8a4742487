//! End-to-end tests of `corestream run window-agg`: every golden case of
//! `tools/tests/golden/window-agg/` (checked against the reference model by the bench crate's
//! tests) run through the binary at window parallelism 1 and 2 (one case also at 4), with the
//! output, late and rejected-row files compared byte for byte; malformed rows reported with
//! line numbers and reasons or failing the run with `--fail-on-malformed`; and the exit status
//! and message of arguments that cannot be used.
//!
//! A golden case is `NAME.args` (the arguments, with `{input}`, `{output}`, `{late}` and
//! `{rejected}` standing for paths), `NAME.input.csv`, `NAME.expected.csv` (sorted by key,
//! start and end, firings of one window in emission order), and optionally
//! `NAME.expected-late.csv` and `NAME.expected-rejected.csv`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tempfile::TempDir;

const HANG_LIMIT: Duration = Duration::from_secs(120);
const REJECTED_HEADER: &str = "line,reason,row\n";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/window-agg")
}

fn corestream(args: &[String]) -> Output {
    common::run_corestream(args, HANG_LIMIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_status(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit status {code}\n--- stdout\n{}--- stderr\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[track_caller]
fn assert_stderr_contains(out: &Output, needle: &str, what: &str) {
    let err = text(&out.stderr);
    assert!(err.contains(needle), "{what}: stderr does not mention {needle:?}:\n{err}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read '{}': {e}", path.display()))
}

/// The paths one run of a case reads and writes.
struct Paths {
    input: PathBuf,
    output: PathBuf,
    late: PathBuf,
    rejected: PathBuf,
}

impl Paths {
    fn new(dir: &TempDir, input: PathBuf, run: &str) -> Self {
        let at = |name: &str| dir.path().join(format!("{run}.{name}"));
        Paths { input, output: at("out.csv"), late: at("late.csv"), rejected: at("rejected.csv") }
    }

    /// The arguments of a `.args` line with the placeholders replaced by these paths.
    fn args(&self, line: &str) -> Vec<String> {
        let mut args = vec!["run".to_string(), "window-agg".to_string()];
        for word in line.split_whitespace() {
            let path = match word {
                "{input}" => &self.input,
                "{output}" => &self.output,
                "{late}" => &self.late,
                "{rejected}" => &self.rejected,
                other => {
                    assert!(!other.contains('{'), "unknown placeholder {other}");
                    args.push(other.to_string());
                    continue;
                }
            };
            args.push(path.to_str().expect("temporary paths are UTF-8").to_string());
        }
        args
    }

    /// Where the rejected rows went: `--rejected-output`, or next to the output by default.
    fn rejected_written(&self, args_line: &str) -> PathBuf {
        if args_line.contains("{rejected}") {
            self.rejected.clone()
        } else {
            let mut p = self.output.clone().into_os_string();
            p.push(".rejected.csv");
            PathBuf::from(p)
        }
    }
}

fn cases() -> Vec<String> {
    let mut cases: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("golden directory")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|f| f.strip_suffix(".args").map(str::to_string))
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "golden cases missing: {cases:?}");
    cases
}

/// Runs one golden case at window parallelism `p` and compares every file it writes.
fn check_case(dir: &TempDir, case: &str, p: u32) {
    let golden = golden_dir();
    let args_line = read(&golden.join(format!("{case}.args")));
    let paths = Paths::new(dir, golden.join(format!("{case}.input.csv")), &format!("{case}-p{p}").replace('/', "-"));
    let mut args = paths.args(args_line.trim());
    args.extend(["--parallelism".to_string(), p.to_string(), "--slots".to_string(), p.to_string()]);
    let what = format!("{case} at parallelism {p}");
    let out = corestream(&args);
    assert_status(&out, 0, &what);

    let expect = |suffix: &str, written: &Path| {
        let expected = read(&golden.join(format!("{case}.{suffix}")));
        assert_eq!(read(written), expected, "{what}: {} differs from {case}.{suffix}", written.display());
    };
    expect("expected.csv", &paths.output);
    let late_expected = golden.join(format!("{case}.expected-late.csv"));
    if late_expected.exists() {
        expect("expected-late.csv", &paths.late);
    } else {
        assert!(!paths.late.exists(), "{what}: a late-row file without --late-output");
    }
    let rejected = paths.rejected_written(&args_line);
    if golden.join(format!("{case}.expected-rejected.csv")).exists() {
        expect("expected-rejected.csv", &rejected);
    } else {
        assert_eq!(read(&rejected), REJECTED_HEADER, "{what}: rejected rows in a clean input");
    }
    let summary = text(&out.stdout);
    let results = read(&paths.output).lines().count() - 1;
    assert!(summary.contains(&format!("{results} window results")), "{what}: summary {summary:?}");
}

#[test]
fn golden_cases_at_parallelism_1_and_2() {
    let dir = TempDir::new().unwrap();
    for case in cases() {
        for p in [1, 2] {
            check_case(&dir, &case, p);
        }
    }
}

/// Trigger cases (`triggers/`): count, continuous event time and their purging forms, whose
/// expected files were worked out by hand (the reference model knows only the default trigger).
#[test]
fn golden_trigger_cases_at_parallelism_1_and_2() {
    let dir = TempDir::new().unwrap();
    let mut cases: Vec<String> = std::fs::read_dir(golden_dir().join("triggers"))
        .expect("trigger cases")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|f| f.strip_suffix(".args").map(|c| format!("triggers/{c}")))
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 4, "{cases:?}");
    for case in cases {
        for p in [1, 2] {
            check_case(&dir, &case, p);
        }
    }
}

#[test]
fn golden_lateness_and_sessions_at_parallelism_4() {
    let dir = TempDir::new().unwrap();
    for case in ["lateness", "session-bridging"] {
        check_case(&dir, case, 4);
    }
}

#[test]
fn malformed_rows_are_reported_with_line_numbers_and_reasons() {
    let dir = TempDir::new().unwrap();
    let golden = golden_dir();
    let paths = Paths::new(&dir, golden.join("malformed.input.csv"), "malformed");
    let args = paths.args(read(&golden.join("malformed.args")).trim());
    let out = corestream(&args);
    assert_status(&out, 0, "malformed");
    let rejected = read(&paths.rejected);
    for (line, reason) in [
        (3, "missing field 'amount' (row has 2 fields, header has 3)"),
        (4, "field 'ts': 'abc' is not an integer"),
        (5, "field 'amount': 'x1' is not a number"),
        (6, "unterminated quoted field"),
        (8, "empty key in field 'user'"),
        (9, "'NaN' is not a finite number"),
        (14, "too many fields (row has 4 fields, header has 3)"),
    ] {
        let row = rejected
            .lines()
            .find(|l| l.starts_with(&format!("{line},")))
            .unwrap_or_else(|| panic!("line {line} is not in the rejected rows:\n{rejected}"));
        assert!(row.contains(reason), "line {line}: expected reason {reason:?} in {row:?}");
    }
    let summary = text(&out.stdout);
    assert!(summary.contains("15 rows read, 8 rejected"), "summary: {summary}");
    assert_stderr_contains(&out, "8 row(s) could not be used", "malformed");
    assert_stderr_contains(&out, "first: line 3: missing field 'amount'", "malformed");
}

#[test]
fn invalid_utf8_and_blank_lines() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, b"user,ts\r\na,1\r\n\r\n\nb,\xff2\nc,3").unwrap();
    let paths = Paths::new(&dir, input, "utf8");
    let args = paths.args(
        "--input {input} --key user --time ts --window tumbling:10s --out-of-orderness 0 --agg count --output {output}",
    );
    let out = corestream(&args);
    assert_status(&out, 0, "invalid UTF-8");
    assert_eq!(read(&paths.output), "key,window_start,window_end,value\na,0,10000,1\nc,0,10000,1\n");
    let rejected = read(&paths.rejected_written(""));
    assert!(rejected.starts_with(REJECTED_HEADER) && rejected.contains("5,the line is not valid UTF-8,"), "{rejected}");
    let summary = text(&out.stdout);
    assert!(summary.contains("3 rows read, 1 rejected") && summary.contains("2 blank line(s) skipped"), "{summary}");
}

#[test]
fn timestamps_outside_the_supported_range_are_rejected() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "user,ts\na,-9223372036854775808\na,4611686018427387903\na,9223372036854775807\n").unwrap();
    let paths = Paths::new(&dir, input, "range");
    for window in ["tumbling:10s@3s", "sliding:10s/3s", "session:5s"] {
        let line = format!(
            "--input {{input}} --key user --time ts --window {window} --out-of-orderness 0 --agg count --output {{output}} -p 2"
        );
        let out = corestream(&paths.args(&line));
        assert_status(&out, 0, window);
        let rejected = read(&paths.rejected_written(""));
        for (line, ts) in [(2, "-9223372036854775808"), (4, "9223372036854775807")] {
            let expected = format!("{line},field 'ts': {ts} is outside the supported range");
            assert!(rejected.contains(&expected), "{window}: no {expected:?} in\n{rejected}");
        }
        let output = read(&paths.output);
        assert_eq!(output.lines().count(), if window.starts_with("sliding") { 5 } else { 2 }, "{window}:\n{output}");
    }
}

#[test]
fn fail_on_malformed_names_the_first_bad_line() {
    let dir = TempDir::new().unwrap();
    let golden = golden_dir();
    let paths = Paths::new(&dir, golden.join("malformed.input.csv"), "fail");
    for p in ["1", "2"] {
        let mut args = paths.args(read(&golden.join("malformed.args")).trim());
        args.extend(["--fail-on-malformed", "-p", p].map(String::from));
        let out = corestream(&args);
        assert_status(&out, 1, "--fail-on-malformed");
        assert_stderr_contains(&out, "line 3: missing field 'amount'", "--fail-on-malformed");
        assert!(!text(&out.stderr).contains("line 4"), "only the first bad line is named");
        for path in [&paths.output, &paths.rejected] {
            assert!(!path.exists(), "a failed run leaves no '{}' behind", path.display());
        }
    }
}

#[test]
fn unusable_arguments_exit_2_naming_the_problem() {
    let dir = TempDir::new().unwrap();
    let golden = golden_dir();
    let paths = Paths::new(&dir, golden.join("tumbling-count.input.csv"), "bad");
    let base = "--input {input} --key user --time ts --window tumbling:10s --out-of-orderness 2s --agg count --output {output}";
    for (from, to, needles) in [
        ("tumbling:10s", "hopping:10s", &["--window", "unknown window type 'hopping'"][..]),
        ("tumbling:10s", "sliding:10s", &["--window", "expected SIZE/SLIDE"]),
        ("tumbling:10s", "session:0s", &["--window", "gap must be greater than 0"]),
        ("tumbling:10s", "tumbling:4611686018427387904ms", &["--window", "size 4611686018427387904 ms is too large"]),
        ("--out-of-orderness 2s", "--out-of-orderness 2x", &["--out-of-orderness", "unknown unit 'x'"]),
        ("--out-of-orderness 2s", "--out-of-orderness=-1s", &["--out-of-orderness", "must not be negative"]),
        (
            "--out-of-orderness 2s",
            "--out-of-orderness 2s --allowed-lateness 1.5s",
            &["--allowed-lateness", "fractions are not supported"],
        ),
        ("--agg count", "--agg median:amount", &["--agg", "unknown aggregate 'median'"]),
        ("--key user", "--key usr", &["--key", "unknown column 'usr'", "'user', 'ts', 'amount'"]),
        ("--time ts", "--time time", &["--time", "unknown column 'time'"]),
        ("--agg count", "--agg sum:amt", &["--agg", "unknown column 'amt'"]),
        ("--agg count", "--agg count --rejected-output {output}", &["same file"]),
    ] {
        assert!(base.contains(from));
        let line = base.replacen(from, to, 1);
        let out = corestream(&paths.args(&line));
        assert_status(&out, 2, &line);
        for needle in needles {
            assert_stderr_contains(&out, needle, &line);
        }
        assert!(!paths.output.exists(), "{line}: no output after a usage error");
    }

    let out = corestream(&paths.args(&base.replace(" --window tumbling:10s", "")));
    assert_status(&out, 2, "without --window");
    assert_stderr_contains(&out, "--window", "without --window");
}

#[test]
fn unreadable_input_fails_with_status_1() {
    let dir = TempDir::new().unwrap();
    let base = "--input {input} --key user --time ts --window tumbling:10s --out-of-orderness 2s --agg count --output {output}";
    let missing = dir.path().join("missing.csv");
    let out = corestream(&Paths::new(&dir, missing.clone(), "missing").args(base));
    assert_status(&out, 1, "missing input");
    assert_stderr_contains(&out, "cannot read input file", "missing input");
    assert_stderr_contains(&out, missing.to_str().unwrap(), "missing input");

    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let out = corestream(&Paths::new(&dir, empty, "empty").args(base));
    assert_status(&out, 1, "empty input");
    assert_stderr_contains(&out, "a header row is required", "empty input");
}
