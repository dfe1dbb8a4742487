//! End-to-end tests of the `corestream` binary: word count against the single-threaded
//! reference (handwritten text, a generated corpus, invalid UTF-8, concurrent runs), the keyed
//! sum, `plan`, the benchmarks, and the exit status and message of failed runs and bad options.
//!
//! The corpus tests write about 10 MB and count it five times; run the suite with
//! `cargo test --release` to keep it quick. A watchdog kills a `corestream` process that has
//! not ended after [`HANG_LIMIT`] and fails the test, so a hung job cannot block the suite.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corestream_bench::corpus::write_corpus;
use corestream_bench::examples::reference_wordcount;
use tempfile::TempDir;

const CORPUS_BYTES: u64 = 10 * 1024 * 1024;
const HANG_LIMIT: Duration = Duration::from_secs(300);

/// A started `corestream` process whose output is being collected.
struct Running {
    args: String,
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).expect("cannot read the output of corestream");
        bytes
    })
}

fn start(args: &[&str]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corestream"))
        .args(args)
        .env("CORESTREAM_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the corestream binary");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    Running { args: args.join(" "), child, stdout, stderr }
}

impl Running {
    fn finish(mut self) -> Output {
        let deadline = Instant::now() + HANG_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("`corestream {}` did not end within {HANG_LIMIT:?}: the job hangs", self.args);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output { status, stdout: self.stdout.join().unwrap(), stderr: self.stderr.join().unwrap() }
    }
}

fn corestream(args: &[&str]) -> Output {
    start(args).finish()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_status(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit status {code}\n--- stdout\n{}--- stderr\n{}",
        stdout(out),
        stderr(out)
    );
}

#[track_caller]
fn assert_stderr_contains(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(err.contains(needle), "stderr does not mention {needle:?}:\n{err}");
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn write_input(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn write_corpus_file(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("corpus.txt");
    let mut file = BufWriter::new(File::create(&path).unwrap());
    let written = write_corpus(&mut file, CORPUS_BYTES, 42).unwrap();
    file.into_inner().unwrap().sync_all().unwrap();
    assert!(written >= CORPUS_BYTES);
    path
}

/// Starts `corestream run wordcount` on `input` with `extra` options, writing to a fresh file
/// in `dir`; returns the process and the output path.
fn start_wordcount(dir: &TempDir, input: &Path, extra: &[&str]) -> (Running, PathBuf) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let output = dir.path().join(format!("counts-{}.txt", RUNS.fetch_add(1, Ordering::Relaxed)));
    let mut args = vec!["run", "wordcount", "--input", path_str(input), "--output", path_str(&output)];
    args.extend_from_slice(extra);
    (start(&args), output)
}

fn wordcount(dir: &TempDir, input: &Path, extra: &[&str]) -> (Output, PathBuf) {
    let (running, output) = start_wordcount(dir, input, extra);
    (running.finish(), output)
}

/// Parses `word<TAB>count` lines, failing on malformed lines and on words that appear twice.
fn read_counts(path: &Path) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(path).expect("cannot read the word count output");
    let mut counts = HashMap::new();
    for line in text.lines() {
        let (word, count) = line.split_once('\t').unwrap_or_else(|| panic!("no tab in output line {line:?}"));
        let count: u64 = count.parse().unwrap_or_else(|_| panic!("bad count in output line {line:?}"));
        assert!(counts.insert(word.to_string(), count).is_none(), "word {word:?} appears twice in the output");
    }
    counts
}

#[track_caller]
fn assert_counts(out: &Output, output: &Path, expected: &HashMap<String, u64>, what: &str) {
    assert_status(out, 0);
    let got = read_counts(output);
    assert_eq!(got.len(), expected.len(), "number of distinct words ({what})");
    assert!(&got == expected, "counts differ from the reference ({what})");
}

#[test]
fn wordcount_small_text_matches_reference() {
    let dir = TempDir::new().unwrap();
    let text = "Die Straße, die STRASSE und die straße!\n\
                ÜBER über Über -- über? x86 2026 2026th\r\n\
                \n\
                café CAFÉ naïve; 東京 東京 данные ΠΟΤΑΜΌΣ ποταμός\n\
                io_uring a-b-c a.b.c\n\
                last line without newline Straße";
    let input = write_input(&dir, "small.txt", text.as_bytes());
    let expected = reference_wordcount(text.as_bytes());
    assert_eq!(expected["straße"], 3);
    assert_eq!(expected["über"], 4);
    for p in ["1", "2"] {
        let (out, output) = wordcount(&dir, &input, &["--parallelism", p]);
        assert_counts(&out, &output, &expected, &format!("parallelism {p}"));
    }
}

#[test]
fn wordcount_corpus_matches_reference() {
    let dir = TempDir::new().unwrap();
    let input = write_corpus_file(&dir);
    let expected = reference_wordcount(&std::fs::read(&input).unwrap());
    for extra in [&["--parallelism", "1"][..], &["--parallelism", "2"], &["--parallelism", "4", "--slots", "4"]] {
        let (out, output) = wordcount(&dir, &input, extra);
        assert_counts(&out, &output, &expected, &extra.join(" "));
    }
}

#[test]
fn wordcount_concurrent_runs_match_reference() {
    let dir = TempDir::new().unwrap();
    let input = write_corpus_file(&dir);
    let expected = reference_wordcount(&std::fs::read(&input).unwrap());
    let runs: Vec<_> = (0..2).map(|_| start_wordcount(&dir, &input, &["--parallelism", "1"])).collect();
    for (running, output) in runs {
        assert_counts(&running.finish(), &output, &expected, "two processes at once");
    }
}

#[test]
fn wordcount_skips_and_reports_invalid_utf8() {
    let dir = TempDir::new().unwrap();
    let text = b"good line\n\xff\xfe bad\nmore words\n";
    let input = write_input(&dir, "invalid.txt", text);
    let expected: HashMap<String, u64> = ["good", "line", "more", "words"].iter().map(|w| (w.to_string(), 1)).collect();
    assert_eq!(reference_wordcount(text), expected);

    let (out, output) = wordcount(&dir, &input, &[]);
    assert_counts(&out, &output, &expected, "default options");
    assert_stderr_contains(&out, "not valid UTF-8");
    assert_stderr_contains(&out, "byte offset 10");

    std::fs::remove_file(&output).unwrap();
    let (out, output) = wordcount(&dir, &input, &["--on-invalid-utf8", "fail"]);
    assert_status(&out, 1);
    assert_stderr_contains(&out, "not valid UTF-8");
    assert_stderr_contains(&out, "byte offset 10");
    assert!(!output.exists(), "a failed run leaves no output behind");
}

#[test]
fn wordcount_missing_input_fails() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("does-not-exist.txt");
    let (out, output) = wordcount(&dir, &missing, &[]);
    assert_status(&out, 1);
    assert_stderr_contains(&out, "cannot read input file");
    assert_stderr_contains(&out, path_str(&missing));
    assert!(!output.exists());
}

#[test]
fn wordcount_directory_input_reports_reason_once() {
    let dir = TempDir::new().unwrap();
    let (out, _) = wordcount(&dir, dir.path(), &[]);
    assert_status(&out, 1);
    assert_stderr_contains(&out, "cannot read input file");
    let err = stderr(&out);
    assert_eq!(err.matches("Is a directory").count(), 1, "the reason should be given once:\n{err}");
}

#[test]
fn bad_options_are_rejected() {
    let dir = TempDir::new().unwrap();
    let input = write_input(&dir, "in.txt", b"some words\n");
    let output = dir.path().join("out.txt");
    let run_wordcount = |extra: &[&str]| {
        let mut args = vec!["run", "wordcount", "--input", path_str(&input), "--output", path_str(&output)];
        args.extend_from_slice(extra);
        corestream(&args)
    };

    let out = corestream(&["frobnicate"]);
    assert_status(&out, 2);
    assert_stderr_contains(&out, "frobnicate");

    for (extra, problem) in [
        (&["--parallelism", "0"][..], "must be between 1"),
        (&["--parallelism", "abc"], "not a count"),
        (&["--buffer-timeout", "5"], "needs a unit"),
    ] {
        let out = run_wordcount(extra);
        assert_status(&out, 2);
        assert_stderr_contains(&out, extra[0]);
        assert_stderr_contains(&out, problem);
    }

    let out = corestream(&["run", "wordcount", "--output", path_str(&output)]);
    assert_status(&out, 2);
    assert_stderr_contains(&out, "--input");

    // Detectable only after parsing, but still an invalid argument: refused before the job.
    let out = run_wordcount(&["--parallelism", "4", "--slots", "2"]);
    assert_status(&out, 2);
    assert_stderr_contains(&out, "--slots is 2");
}

#[test]
fn sum_by_key_matches_reference() {
    let out = corestream(&["run", "sum-by-key", "--records", "100000", "--keys", "100"]);
    assert_status(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("match") && !text.contains("MISMATCH"), "no checksum match in:\n{text}");
}

#[test]
fn plan_lists_chains_and_known_examples() {
    let out = corestream(&["plan", "wordcount"]);
    assert_status(&out, 0);
    let plan = stdout(&out);
    for needle in ["Source: text file -> Tokenize", "HASH", "Format -> Sink: text file"] {
        assert!(plan.contains(needle), "plan does not mention {needle:?}:\n{plan}");
    }

    let out = corestream(&["plan", "nosuch"]);
    assert_status(&out, 1);
    assert_stderr_contains(&out, "nosuch");
    assert_stderr_contains(&out, "known examples");
    for example in ["wordcount", "sum-by-key", "passthrough", "keyed-sum"] {
        assert_stderr_contains(&out, example);
    }
}

#[test]
fn benchmarks_count_every_event() {
    for (args, count) in [
        (&["bench", "passthrough", "--events", "1000000", "-p", "1"][..], "count 1000000"),
        (&["bench", "keyed-sum", "--events", "100000", "--keys", "10", "-p", "2"], "count 100000"),
    ] {
        let out = corestream(args);
        assert_status(&out, 0);
        let text = stdout(&out);
        assert!(text.contains(count), "`corestream {}` does not print {count:?}:\n{text}", args.join(" "));
    }
}
