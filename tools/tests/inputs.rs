//! Word count on any readable input, in bounded memory: a pipe on `/dev/stdin`, a FIFO and a
//! process substitution (`<(cmd)`, a `/dev/fd/N` path) count every line and word, as the run
//! on the same text as a regular file does (in one process and with `--processes 2`); a line
//! longer than the line limit (1 MiB by default) is skipped and reported with its byte offset
//! while the run's peak memory stays bounded; a word too large for a record is skipped and
//! reported instead of failing the job.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::measured::{run_measured, Measured};
use corestream_bench::examples::{reference_wordcount, reference_wordcount_with, MAX_WORD_BYTES};
use tempfile::TempDir;

const LIMIT: Duration = Duration::from_secs(180);

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corestream"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_ok(m: &Measured, what: &str) {
    assert_eq!(
        m.status.code(),
        Some(0),
        "{what}: failed\n--- stdout\n{}--- stderr\n{}",
        text(&m.stdout),
        text(&m.stderr)
    );
}

fn read_counts(path: &Path) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read '{}': {e}", path.display()));
    text.lines()
        .map(|l| {
            let (w, c) = l.rsplit_once('\t').unwrap_or_else(|| panic!("bad output line {l:?}"));
            (w.to_string(), c.parse().unwrap())
        })
        .collect()
}

/// Several thousand lines of words, with CRLF and blank lines, enough for many batches.
fn sample_text() -> String {
    let words = ["alpha", "Beta", "gamma", "déjà", "vu", "x1", "ÉCOLE", "tschüß"];
    let mut s = String::new();
    for i in 0..30_000usize {
        for j in 0..(i % 9) {
            s.push_str(words[(i * 7 + j * 3) % words.len()]);
            s.push(if j % 4 == 3 { ',' } else { ' ' });
        }
        s.push_str(if i % 11 == 0 { "\r\n" } else { "\n" });
    }
    s
}

fn wordcount_args(input: &str, output: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["run", "wordcount", "--input", input, "--output", output.to_str().unwrap()].map(String::from).to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `lines` counted by the summary line.
fn lines_counted(m: &Measured) -> u64 {
    let out = text(&m.stdout);
    let summary = out.lines().find(|l| l.starts_with("wordcount:")).unwrap_or_else(|| panic!("no summary in {out}"));
    summary["wordcount: ".len()..].split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn pipes_fifos_and_process_substitution_count_every_line() {
    let dir = TempDir::new().unwrap();
    let sample = sample_text();
    let file = dir.path().join("in.txt");
    std::fs::write(&file, &sample).unwrap();
    let expected = reference_wordcount(sample.as_bytes());
    let lines = sample.lines().count() as u64;

    for extra in [&["-p", "2"][..], &["-p", "2", "--processes", "2"]] {
        let what = |how: &str| format!("{how} {extra:?}");
        let out = dir.path().join("file.out");
        let m = run_measured(bin().args(wordcount_args(file.to_str().unwrap(), &out, extra)), None, LIMIT);
        assert_ok(&m, &what("regular file"));
        assert_eq!(read_counts(&out), expected, "{}", what("regular file"));
        let from_file = read_counts(&out);

        // A pipe on standard input.
        let out = dir.path().join("pipe.out");
        let m = run_measured(
            bin().args(wordcount_args("/dev/stdin", &out, extra)),
            Some(Box::new(std::io::Cursor::new(sample.clone().into_bytes()))),
            LIMIT,
        );
        assert_ok(&m, &what("pipe"));
        assert_eq!(lines_counted(&m), lines, "{}", what("pipe"));
        assert_eq!(read_counts(&out), from_file, "{}", what("pipe"));

        // A FIFO, written by another thread.
        let fifo = dir.path().join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let writer = {
            let (fifo, sample) = (fifo.clone(), sample.clone());
            std::thread::spawn(move || std::fs::write(fifo, sample))
        };
        let out = dir.path().join("fifo.out");
        let m = run_measured(bin().args(wordcount_args(fifo.to_str().unwrap(), &out, extra)), None, LIMIT);
        assert_ok(&m, &what("FIFO"));
        writer.join().unwrap().unwrap();
        assert_eq!(lines_counted(&m), lines, "{}", what("FIFO"));
        assert_eq!(read_counts(&out), from_file, "{}", what("FIFO"));

        // Process substitution: a /dev/fd/N path.
        let out = dir.path().join("subst.out");
        let script = format!("exec \"$0\" run wordcount --input <(cat \"$1\") --output \"$2\" {}", extra.join(" "));
        let m = run_measured(
            Command::new("bash").args([
                "-c",
                &script,
                env!("CARGO_BIN_EXE_corestream"),
                file.to_str().unwrap(),
                out.to_str().unwrap(),
            ]),
            None,
            LIMIT,
        );
        assert_ok(&m, &what("process substitution"));
        assert_eq!(lines_counted(&m), lines, "{}", what("process substitution"));
        assert_eq!(read_counts(&out), from_file, "{}", what("process substitution"));
    }
}

/// A file of short lines with one 50 MB line of words in the middle; the word counts of the
/// short lines and the long line's byte offset. The file is written a piece at a time: a run's
/// peak memory as `wait4` reports it is at least this process's own peak at the time it was
/// started (the child shares this process's memory until it executes the binary), so this
/// process never holds the long line.
fn long_line_file(dir: &TempDir) -> (PathBuf, HashMap<String, u64>, u64) {
    let path = dir.path().join("long.txt");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut short = Vec::new();
    for i in 0..2000 {
        short.extend_from_slice(format!("short line {i} with words\n").as_bytes());
    }
    let offset = short.len() as u64;
    file.write_all(&short).unwrap();
    let piece = "many words in one line ".repeat(1000);
    for _ in 0..(50_000_000 / piece.len() + 1) {
        file.write_all(piece.as_bytes()).unwrap();
    }
    file.write_all(b"\n").unwrap();
    let mut after = Vec::new();
    for i in 0..2000 {
        after.extend_from_slice(format!("after line {i}\n").as_bytes());
    }
    file.write_all(&after).unwrap();
    file.into_inner().unwrap().sync_all().unwrap();
    short.extend_from_slice(&after);
    (path, reference_wordcount_with(&short, 1 << 20), offset)
}

/// Peak memory of word count over a short file, the baseline of the bound below.
fn baseline_peak_mib(dir: &TempDir, p: &str) -> u64 {
    let input = dir.path().join("short.txt");
    std::fs::write(&input, "a few short words\n".repeat(1000)).unwrap();
    let out = dir.path().join("short.out");
    let m = run_measured(bin().args(wordcount_args(input.to_str().unwrap(), &out, &["-p", p])), None, LIMIT);
    assert_ok(&m, "short file");
    m.peak_rss_kib / 1024
}

/// The 50 MB line is skipped and reported with its byte offset; every other line is counted;
/// the run's peak memory stays within [`LONG_LINE_EXTRA_MIB`] of a run over a short file (the
/// line alone would take 50 MiB as one buffer, and its words as records far more), and under
/// [`LONG_LINE_PEAK_RSS_MIB`].
#[test]
fn a_line_over_the_limit_is_skipped_and_reported_in_bounded_memory() {
    const LONG_LINE_PEAK_RSS_MIB: u64 = 200;
    const LONG_LINE_EXTRA_MIB: u64 = 30;
    let dir = TempDir::new().unwrap();
    let (input, expected, offset) = long_line_file(&dir);
    assert!(std::fs::metadata(&input).unwrap().len() > 50_000_000);
    assert_eq!(expected.get("after"), Some(&2000));
    let check = |m: &Measured, out: &Path, what: &str, baseline_mib: u64| {
        assert_ok(m, what);
        assert_eq!(read_counts(out), expected, "{what}");
        let err = text(&m.stderr);
        assert!(
            err.contains("warning: 1 line(s) of") && err.contains(&format!("first at byte offset {offset})")),
            "{what}: the long line is reported with its offset: {err}"
        );
        let peak_mib = m.peak_rss_kib / 1024;
        eprintln!("long line, {what}: peak RSS {peak_mib} MiB (short file: {baseline_mib} MiB)");
        assert!(peak_mib < LONG_LINE_PEAK_RSS_MIB, "{what}: peak RSS {peak_mib} MiB");
        assert!(peak_mib < baseline_mib + LONG_LINE_EXTRA_MIB, "{what}: peak RSS {peak_mib} MiB");
    };
    for p in ["1", "2"] {
        let baseline = baseline_peak_mib(&dir, p);
        let out = dir.path().join(format!("long-{p}.out"));
        let m = run_measured(bin().args(wordcount_args(input.to_str().unwrap(), &out, &["-p", p])), None, LIMIT);
        check(&m, &out, &format!("regular file, -p {p}"), baseline);
        assert!(text(&m.stderr).contains("longer than 1048576 bytes"), "{}", text(&m.stderr));
    }
    // The same through a pipe: one subtask reads it; its lines are limited to one record.
    let out = dir.path().join("long-pipe.out");
    let feed = std::fs::File::open(&input).unwrap();
    let m = run_measured(bin().args(wordcount_args("/dev/stdin", &out, &["-p", "2"])), Some(Box::new(feed)), LIMIT);
    check(&m, &out, "pipe, -p 2", baseline_peak_mib(&dir, "2"));
}

/// A word larger than a record can hold is skipped, counted and reported; the job succeeds.
#[test]
fn a_word_too_large_for_a_record_is_skipped_and_reported() {
    let dir = TempDir::new().unwrap();
    let huge = "Z".repeat(40_000);
    let content = format!("small words here\n{huge} and more\nwords {huge}\n");
    let input = dir.path().join("huge.txt");
    std::fs::write(&input, &content).unwrap();
    let out = dir.path().join("huge.out");
    let m = run_measured(bin().args(wordcount_args(input.to_str().unwrap(), &out, &["-p", "2"])), None, LIMIT);
    assert_ok(&m, "huge word");
    let counts = read_counts(&out);
    assert_eq!(counts, reference_wordcount_with(content.as_bytes(), 1 << 20));
    assert_eq!((counts.get("words"), counts.get("more")), (Some(&2), Some(&1)));
    assert!(!counts.keys().any(|w| w.len() > MAX_WORD_BYTES));
    let err = text(&m.stderr);
    let reported: u64 = err
        .lines()
        .filter_map(|l| l.strip_prefix("warning: "))
        .filter(|l| l.contains(&format!("words longer than {MAX_WORD_BYTES} bytes were skipped")))
        .map(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(reported, 2, "both huge words are reported: {err}");
    assert!(err.contains("a word of 40000 bytes starting 'zzzz"), "{err}");
}
