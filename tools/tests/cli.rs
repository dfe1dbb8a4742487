//! End-to-end tests of the `corestream` binary: word count against the single-threaded
//! reference (handwritten text, a generated corpus, invalid UTF-8), the keyed sum, `plan`, the
//! benchmarks, and the exit status and message of bad invocations.
//!
//! The corpus test writes and counts about 10 MB three times; run the suite with
//! `cargo test --release` to keep it quick.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::process::{Command, Output};

use corestream_bench::corpus::write_corpus;
use corestream_bench::examples::reference_wordcount;
use tempfile::TempDir;

const CORPUS_BYTES: u64 = 10 * 1024 * 1024;

fn corestream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corestream"))
        .args(args)
        .env("CORESTREAM_LOG", "off")
        .output()
        .expect("cannot start the corestream binary")
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

/// Runs `corestream run wordcount` on `input` with `extra` options; returns the process output
/// and the path of the output file.
fn wordcount(dir: &TempDir, input: &Path, extra: &[&str]) -> (Output, std::path::PathBuf) {
    let output = dir.path().join(format!("counts-{}.txt", extra.join("").replace('-', "")));
    let mut args = vec!["run", "wordcount", "--input", path_str(input), "--output", path_str(&output)];
    args.extend_from_slice(extra);
    (corestream(&args), output)
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
fn assert_wordcount_matches(dir: &TempDir, input: &Path, extra: &[&str]) {
    let (out, output) = wordcount(dir, input, extra);
    assert_status(&out, 0);
    let expected = reference_wordcount(&std::fs::read(input).unwrap());
    let got = read_counts(&output);
    assert_eq!(got.len(), expected.len(), "distinct words with {extra:?}");
    assert!(got == expected, "counts differ from the reference with {extra:?}");
}

fn write_input(dir: &TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
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
        assert_wordcount_matches(&dir, &input, &["--parallelism", p]);
    }
}

#[test]
fn wordcount_corpus_matches_reference() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("corpus.txt");
    let mut file = BufWriter::new(File::create(&input).unwrap());
    let written = write_corpus(&mut file, CORPUS_BYTES, 42).unwrap();
    drop(file);
    assert!(written >= CORPUS_BYTES);
    for extra in [&["--parallelism", "1"][..], &["--parallelism", "2"], &["--parallelism", "4", "--slots", "4"]] {
        assert_wordcount_matches(&dir, &input, extra);
    }
}

#[test]
fn wordcount_skips_and_reports_invalid_utf8() {
    let dir = TempDir::new().unwrap();
    let text = b"good line\n\xff\xfe bad\nmore words\n";
    let input = write_input(&dir, "invalid.txt", text);

    let (out, output) = wordcount(&dir, &input, &[]);
    assert_status(&out, 0);
    assert_stderr_contains(&out, "not valid UTF-8");
    assert_stderr_contains(&out, "byte offset 10");
    let expected: HashMap<String, u64> =
        ["good", "line", "more", "words"].iter().map(|w| (w.to_string(), 1)).collect();
    assert_eq!(read_counts(&output), expected);
    assert_eq!(reference_wordcount(text), expected);

    let (out, _) = wordcount(&dir, &input, &["--on-invalid-utf8", "fail"]);
    assert_status(&out, 1);
    assert_stderr_contains(&out, "not valid UTF-8");
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
fn bad_options_are_rejected() {
    let dir = TempDir::new().unwrap();
    let input = write_input(&dir, "in.txt", b"some words\n");
    let output = dir.path().join("out.txt");
    let wc = |extra: &[&str]| {
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
        let out = wc(extra);
        assert_status(&out, 2);
        assert_stderr_contains(&out, extra[0]);
        assert_stderr_contains(&out, problem);
    }

    let out = corestream(&["run", "wordcount", "--output", path_str(&output)]);
    assert_status(&out, 2);
    assert_stderr_contains(&out, "--input");

    let out = wc(&["--parallelism", "4", "--slots", "2"]);
    assert_status(&out, 1);
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
        assert!(text.contains(count), "{args:?} does not print {count:?}:\n{text}");
    }
}
