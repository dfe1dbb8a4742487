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

use common::names;

use std::collections::HashMap;
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

fn args_of(words: &[&str]) -> Vec<String> {
    ["run", "window-agg"].iter().chain(words).map(|s| s.to_string()).collect()
}

/// Every output path is checked before the run: a file in a missing directory, a directory,
/// the input itself (by path, symbolic link or hard link) and two outputs naming one file are
/// refused with exit status 2, and the input is left as it was.
#[test]
fn output_paths_are_checked_before_the_run() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("in.csv");
    let content = "user,ts,amount\na,1,2\n";
    std::fs::write(&input, content).unwrap();
    let soft = dir.path().join("soft.csv");
    std::os::unix::fs::symlink(&input, &soft).unwrap();
    let hard = dir.path().join("hard.csv");
    std::fs::hard_link(&input, &hard).unwrap();
    let out = dir.path().join("out.csv");
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "x").unwrap();
    let other_hard = dir.path().join("other-hard.csv");
    std::fs::hard_link(&other, &other_hard).unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let base = ["--input", &p(&input), "--key", "user", "--time", "ts", "--window", "tumbling:10s"]
        .into_iter()
        .chain(["--out-of-orderness", "0", "--agg", "sum:amount"])
        .map(String::from)
        .collect::<Vec<_>>();
    let missing = dir.path().join("missing/late.csv");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--output".into(), p(&out), "--late-output".into(), p(&missing)], "--late-output"),
        (vec!["--output".into(), p(dir.path())], "is a directory"),
        (vec!["--output".into(), p(&input)], "same file as input"),
        (vec!["--output".into(), p(&soft)], "same file as input"),
        (vec!["--output".into(), p(&hard)], "same file as input"),
        (vec!["--output".into(), p(&out), "--rejected-output".into(), p(&hard)], "same file as input"),
        (vec!["--output".into(), p(&out), "--late-output".into(), p(&soft)], "same file as input"),
        (vec!["--output".into(), p(&other), "--late-output".into(), p(&other_hard)], "are the same file"),
        (
            vec!["--output".into(), p(&out), "--late-output".into(), format!("{}/./out.csv", dir.path().display())],
            "are the same file",
        ),
        (vec!["--output".into(), "/dev/null".into()], "not a regular file"),
        (vec!["--output".into(), "-".into()], "--rejected-output"),
        (vec!["--output".into(), p(&out), "--late-output".into(), "-".into()], "only --output"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["run".to_string(), "window-agg".to_string()];
        args.extend(base.iter().cloned());
        args.extend(extra.iter().cloned());
        let what = extra.join(" ");
        let run = corestream(&args);
        assert_status(&run, 2, &what);
        assert_stderr_contains(&run, needle, &what);
        assert_eq!(read(&input), content, "{what}: the input is intact");
        assert_eq!(read(&other), "x", "{what}");
        assert!(!out.exists(), "{what}: nothing written");
    }
    assert_eq!(names(dir.path()), ["hard.csv", "in.csv", "other-hard.csv", "other.csv", "soft.csv"]);
}

/// A failed run (`--fail-on-malformed` on a bad row) leaves the output, late and rejected
/// files of an earlier run byte for byte as they were, and no staged file behind.
#[test]
fn a_failed_run_leaves_earlier_outputs_byte_identical() {
    let dir = TempDir::new().unwrap();
    let golden = golden_dir();
    let paths = Paths::new(&dir, golden.join("malformed.input.csv"), "again");
    let previous = [(&paths.output, "old output\n"), (&paths.late, "old late\u{0}rows"), (&paths.rejected, "")];
    for (path, bytes) in previous {
        std::fs::write(path, bytes).unwrap();
    }
    let before = names(dir.path());
    let mut args = paths.args(read(&golden.join("malformed.args")).trim());
    args.extend(["--late-output", paths.late.to_str().unwrap(), "--fail-on-malformed"].map(String::from));
    let out = corestream(&args);
    assert_status(&out, 1, "--fail-on-malformed over earlier outputs");
    for (path, bytes) in previous {
        assert_eq!(std::fs::read(path).unwrap(), bytes.as_bytes(), "{} changed", path.display());
    }
    assert_eq!(names(dir.path()), before, "no staged file is left behind");

    // The same run without --fail-on-malformed replaces all three.
    let args: Vec<String> = args.into_iter().filter(|a| a != "--fail-on-malformed").collect();
    assert_status(&corestream(&args), 0, "the run that succeeds");
    assert_eq!(read(&paths.output), read(&golden.join("malformed.expected.csv")));
    assert_eq!(read(&paths.rejected), read(&golden.join("malformed.expected-rejected.csv")));
    assert!(read(&paths.late).starts_with("user,ts,amount\n"));
    assert_eq!(names(dir.path()), before);
}

/// `--output -` writes the results to standard output and every summary line to standard
/// error; the rejected rows go to `--rejected-output`.
#[test]
fn results_can_go_to_standard_output() {
    let dir = TempDir::new().unwrap();
    let golden = golden_dir();
    let rejected = dir.path().join("bad.csv");
    let line = read(&golden.join("malformed.args"))
        .replace("{output}", "-")
        .replace("{rejected}", rejected.to_str().unwrap())
        .replace("{input}", golden.join("malformed.input.csv").to_str().unwrap());
    let args = args_of(&line.split_whitespace().collect::<Vec<_>>());
    let out = corestream(&args);
    assert_status(&out, 0, "--output -");
    assert_eq!(text(&out.stdout), read(&golden.join("malformed.expected.csv")), "standard output holds the results");
    assert_eq!(read(&rejected), read(&golden.join("malformed.expected-rejected.csv")));
    let err = text(&out.stderr);
    assert!(err.contains("window-agg: 15 rows read, 8 rejected") && err.contains("-> standard output"), "{err}");
    assert_eq!(names(dir.path()), ["bad.csv"]);
}

/// Integers are printed as integers (exact above 2^53 and past i64), floats in their shortest
/// round-trip form: the examples of issue 12.
#[test]
fn numbers_are_printed_exactly() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        "user,ts,v\nneg,1,-1e-7\nneg,2,-2e-7\nfrac,1,123456789.123456789\nhuge,1,1.5e300\n\
         big,1,9007199254740993\nbig,2,1\nmax,1,9223372036854775807\nmax,2,9223372036854775807\n\
         tiny,1,0.1\ntiny,2,0.2\n",
    )
    .unwrap();
    let output = dir.path().join("out.csv");
    let run = |agg: &str| {
        let out = corestream(&args_of(&[
            "--input",
            input.to_str().unwrap(),
            "--key",
            "user",
            "--time",
            "ts",
            "--window",
            "tumbling:10s",
            "--out-of-orderness",
            "0",
            "--agg",
            agg,
            "--output",
            output.to_str().unwrap(),
        ]));
        assert_status(&out, 0, agg);
        let values: HashMap<String, String> = read(&output)
            .lines()
            .skip(1)
            .map(|l| {
                let (key, rest) = l.split_once(',').unwrap();
                (key.to_string(), rest.rsplit(',').next().unwrap().to_string())
            })
            .collect();
        values
    };
    let max = run("max:v");
    assert_eq!(max["neg"], "-1e-7");
    assert_eq!(max["frac"], "123456789.12345679");
    assert_eq!(max["huge"], "1.5e300");
    assert_eq!(max["big"], "9007199254740993");
    let min = run("min:v");
    assert_eq!(min["neg"], "-2e-7");
    let sum = run("sum:v");
    assert_eq!(sum["big"], "9007199254740994");
    assert_eq!(sum["max"], "18446744073709551614");
    assert_eq!(sum["tiny"], "0.30000000000000004");
    assert_eq!(sum["huge"], "1.5e300");
    let avg = run("avg:v");
    assert_eq!(avg["max"], "9223372036854775807");
    assert_eq!(avg["tiny"], "0.15000000000000002");
    assert_eq!(run("count")["max"], "2");
}

/// A duration without a unit is refused everywhere window-agg reads one (a bare 0 is zero).
#[test]
fn durations_need_a_unit() {
    let dir = TempDir::new().unwrap();
    let golden = golden_dir();
    let paths = Paths::new(&dir, golden.join("tumbling-count.input.csv"), "units");
    let base = "--input {input} --key user --time ts --window tumbling:10s --out-of-orderness 2s --agg count --output {output}";
    for (from, to, flag) in [
        ("tumbling:10s", "tumbling:10", "--window"),
        ("tumbling:10s", "sliding:10s/2", "--window"),
        ("tumbling:10s", "tumbling:10s@3", "--window"),
        ("tumbling:10s", "session:500", "--window"),
        ("--out-of-orderness 2s", "--out-of-orderness 2000", "--out-of-orderness"),
        ("--agg count", "--agg count --allowed-lateness 5", "--allowed-lateness"),
        ("--agg count", "--agg count --trigger continuous:5", "--trigger"),
    ] {
        let line = base.replacen(from, to, 1);
        let out = corestream(&paths.args(&line));
        assert_status(&out, 2, &line);
        assert_stderr_contains(&out, flag, &line);
        assert_stderr_contains(&out, "a number needs a unit", &line);
        assert!(!paths.output.exists(), "{line}");
    }
    let line = base.replacen("2s", "0", 1) + " --allowed-lateness 0";
    assert_status(&corestream(&paths.args(&line)), 0, "a bare 0");
}

/// A row longer than `--max-line-bytes` is rejected with its line number, byte offset and a
/// bounded prefix of its text; a key too large for a record is rejected too; the other rows
/// are aggregated; a header over the limit fails the run.
#[test]
fn long_rows_and_huge_keys_are_rejected() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("in.csv");
    let long_row = format!("a,2,{}", "9".repeat(200_000));
    let huge_key = format!("{},3,1", "k".repeat(20_000));
    let csv = format!("user,ts,v\na,1,5\n{long_row}\n{huge_key}\nb,4,6\n");
    std::fs::write(&input, &csv).unwrap();
    let offset = "user,ts,v\na,1,5\n".len();
    let output = dir.path().join("out.csv");
    let rejected = dir.path().join("bad.csv");
    let common_args = |limit: &str| {
        args_of(&[
            "--input",
            input.to_str().unwrap(),
            "--key",
            "user",
            "--time",
            "ts",
            "--window",
            "tumbling:10s",
            "--out-of-orderness",
            "0",
            "--agg",
            "sum:v",
            "--output",
            output.to_str().unwrap(),
            "--rejected-output",
            rejected.to_str().unwrap(),
            "--max-line-bytes",
            limit,
        ])
    };
    let out = corestream(&common_args("64K"));
    assert_status(&out, 0, "long rows");
    assert_eq!(read(&output), "key,window_start,window_end,value\na,0,10000,5\nb,0,10000,6\n");
    let bad = read(&rejected);
    let rows: Vec<&str> = bad.lines().collect();
    assert_eq!(rows.len(), 3, "{bad:.300}");
    assert!(rows[1].starts_with(&format!(
        "3,the line is longer than --max-line-bytes 65536 ({} bytes at byte offset {offset})",
        long_row.len() + 1
    )));
    assert!(rows[2].starts_with("4,\"field 'user': the key has 20000 bytes, more than the 16384 a key may have"));
    assert!(rows[2].contains("(row of 20004 bytes; its first 4096 bytes shown)"), "{:.200}", rows[2]);
    assert!(rows.iter().all(|r| r.len() < 4096 + 300), "rejected rows are cut to a bounded prefix");
    assert!(text(&out.stdout).contains("1 line(s) longer than --max-line-bytes 65536 rejected"));

    let out = corestream(&common_args("8"));
    assert_status(&out, 1, "header over the limit");
    assert_stderr_contains(&out, "line 1: the header is longer than --max-line-bytes 8", "header");
    for bad in ["0", "2G", "lots"] {
        let out = corestream(&common_args(bad));
        assert_status(&out, 2, bad);
        assert_stderr_contains(&out, "--max-line-bytes", bad);
    }
}

/// Reading `/dev/zero` (no line break ever, as a header or as a data row after a header) keeps
/// memory bounded: the run is sampled for 3 s, killed, and leaves no output behind.
#[test]
fn endless_input_stays_in_bounded_memory() {
    const ENDLESS_RSS_MIB_MAX: u64 = 200;
    let dir = TempDir::new().unwrap();
    let output = dir.path().join("out.csv");
    let bin = env!("CARGO_BIN_EXE_corestream");
    let args = format!(
        "run window-agg --key user --time ts --window tumbling:10s --out-of-orderness 0 --agg count --output {}",
        output.display()
    );
    for (what, script) in [
        ("header", format!("exec {bin} {args} --input /dev/zero")),
        ("data row", format!("{{ echo user,ts; exec cat /dev/zero; }} | exec {bin} {args} --input /dev/stdin")),
    ] {
        let mut child = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("CORESTREAM_LOG", "off")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // bash execs corestream (the header case), or runs it as the last command of a pipeline.
        let pid = corestream_pid(child.id()).unwrap_or_else(|| panic!("{what}: no corestream process"));
        let mut peak = 0;
        for _ in 0..25 {
            std::thread::sleep(Duration::from_millis(100));
            let rss = common::measured::status_kib(pid, "VmRSS").unwrap_or(0);
            let hwm = common::measured::status_kib(pid, "VmHWM").unwrap_or(0);
            peak = peak.max(rss).max(hwm);
        }
        assert!(child.try_wait().unwrap().is_none(), "{what}: the run is still reading");
        // SAFETY: kill(2) on the corestream process this test started (found above).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("/dev/zero as {what}: peak RSS {} MiB", peak / 1024);
        assert!(peak > 0, "{what}: memory was sampled");
        assert!(peak / 1024 < ENDLESS_RSS_MIB_MAX, "{what}: peak RSS {} MiB", peak / 1024);
        assert!(!output.exists(), "{what}: no output from a killed run");
        assert_eq!(names(dir.path()), Vec::<String>::new(), "{what}: nothing staged is left behind");
    }
}

/// The corestream process among `pid` and its children.
fn corestream_pid(pid: u32) -> Option<u32> {
    let is_corestream =
        |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "corestream");
    if is_corestream(pid) {
        return Some(pid);
    }
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().filter_map(|c| c.parse().ok()).find(|&c| is_corestream(c))
}
