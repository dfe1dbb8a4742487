//! `run wordcount` never destroys data: an output that is also the input is refused before
//! anything runs; a failed, interrupted or killed run (one process or several) leaves an
//! earlier output byte for byte as it was and no staged file behind; `--output -` and
//! `/dev/stdout` write the counts to standard output and the summary to standard error.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use common::group::{assert_status, start, write_text, Finished};
use common::names;

const LIMIT: Duration = Duration::from_secs(120);

fn corestream(args: &[&str]) -> Finished {
    start(args).finish_within(LIMIT)
}

/// About 120 MB of text: long enough that a run is still going a few hundred ms after it starts.
fn write_big_text(path: &Path) {
    let small = path.with_extension("small");
    write_text(&small);
    let block = std::fs::read(&small).unwrap();
    std::fs::remove_file(&small).unwrap();
    let mut text = Vec::with_capacity(120 << 20);
    while text.len() < 120 << 20 {
        text.extend_from_slice(&block);
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn an_output_that_is_the_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_text(&input);
    let original = std::fs::read(&input).unwrap();
    let hard = dir.path().join("hard.txt");
    std::fs::hard_link(&input, &hard).unwrap();
    let soft = dir.path().join("soft.txt");
    std::os::unix::fs::symlink(&input, &soft).unwrap();
    let relative = dir.path().join(".").join("in.txt");
    for output in [&input, &hard, &soft, &relative] {
        let out =
            corestream(&["run", "wordcount", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
        assert_status(&out, 2);
        assert!(out.stderr.contains("is the same file as input"), "{output:?}: {}", out.stderr);
        assert_eq!(std::fs::read(&input).unwrap(), original, "{output:?}: the input is intact");
    }
    assert_eq!(names(dir.path()), ["hard.txt", "in.txt", "soft.txt"]);
}

#[test]
fn bad_output_paths_are_refused_before_the_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_text(&input);
    let missing = dir.path().join("no/such/dir/out.txt");
    for (output, expected) in [
        (dir.path().to_str().unwrap(), "is a directory"),
        (missing.to_str().unwrap(), "does not exist"),
        ("/dev/null", "not a regular file"),
    ] {
        let out = corestream(&["run", "wordcount", "--input", input.to_str().unwrap(), "--output", output]);
        assert_status(&out, 2);
        assert!(out.stderr.contains(expected), "{output}: {}", out.stderr);
        assert!(!out.stdout.contains("wordcount:"), "{output}: the job did not run");
    }
}

#[test]
fn a_failed_run_leaves_the_earlier_output_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_text(&input);
    let mut bad = std::fs::read(&input).unwrap();
    bad.extend_from_slice(b"fine words\n\xff\xfe not utf-8\nmore words\n");
    std::fs::write(&input, bad).unwrap();
    let output = dir.path().join("out.txt");
    std::fs::write(&output, "earlier\tresult\n").unwrap();
    let out = corestream(&[
        "run",
        "wordcount",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--on-invalid-utf8",
        "fail",
        "-p",
        "2",
    ]);
    assert_status(&out, 1);
    assert!(out.stderr.contains("is not valid UTF-8"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "earlier\tresult\n");
    assert_eq!(names(dir.path()), ["in.txt", "out.txt"], "no staged file is left behind");
}

#[test]
fn counts_go_to_standard_output_and_the_summary_to_standard_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_text(&input);
    let file = dir.path().join("out.txt");
    let to_file =
        corestream(&["run", "wordcount", "--input", input.to_str().unwrap(), "--output", file.to_str().unwrap()]);
    assert_status(&to_file, 0);
    let mut expected: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(String::from).collect();
    expected.sort();
    for output in ["-", "/dev/stdout"] {
        let out = corestream(&["run", "wordcount", "--input", input.to_str().unwrap(), "--output", output, "-p", "2"]);
        assert_status(&out, 0);
        let mut got: Vec<String> = out.stdout.lines().map(String::from).collect();
        got.sort();
        assert_eq!(got, expected, "{output}: standard output holds exactly the counts");
        assert!(out.stderr.contains("wordcount: 5000 lines"), "{output}: the summary is on stderr: {}", out.stderr);
    }
}

#[test]
fn an_interrupted_run_leaves_the_earlier_output_and_ends_by_its_signal() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("words.fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path in this test's own directory.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "{}", std::io::Error::last_os_error());
    let output = dir.path().join("out.txt");
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        std::fs::write(&output, "earlier\n").unwrap();
        let run = start(&["run", "wordcount", "--input", fifo.to_str().unwrap(), "--output", output.to_str().unwrap()]);
        // Opening blocks until the job's source opens the FIFO; the job then waits for more
        // lines for as long as the writer keeps it open, so the signal always finds it running.
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        for _ in 0..1000 {
            writer.write_all(b"alpha beta gamma\n").unwrap();
        }
        writer.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill on the process this test started.
        assert_eq!(unsafe { libc::kill(run.pid(), signal) }, 0);
        let out = run.finish_within(LIMIT);
        drop(writer);
        assert_eq!(out.status.signal(), Some(signal), "{signal}: {out:?}");
        if signal != libc::SIGKILL {
            assert!(out.stderr.contains("was interrupted by SIG"), "{}", out.stderr);
        }
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "earlier\n", "signal {signal}");
        assert_eq!(names(dir.path()), ["out.txt", "words.fifo"], "signal {signal}: no staged file is left behind");
    }
}

#[test]
fn a_killed_task_manager_leaves_the_earlier_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.txt");
    write_big_text(&input);
    let output = dir.path().join("out.txt");
    std::fs::write(&output, "earlier\n").unwrap();
    let mut run = start(&[
        "run",
        "wordcount",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "-p",
        "2",
        "--processes",
        "2",
    ]);
    let started = run.stderr_line("TaskManager 1 started", Duration::from_secs(60));
    let pid: libc::pid_t = started
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {started:?}"));
    // SAFETY: kill on the pid `corestream` reported for its TaskManager.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let out = run.finish_within(LIMIT);
    assert_status(&out, 1);
    assert!(out.stderr.contains("killed by signal 9"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "earlier\n");
    assert_eq!(names(dir.path()), ["big.txt", "out.txt"]);
}

#[test]
fn a_regular_file_that_reports_no_length_is_read_to_its_end() {
    // /proc files say they are 0 bytes long; splitting by that length read nothing and
    // committed an empty output.
    let version = std::fs::read_to_string("/proc/version").unwrap();
    let words = version.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).count();
    let out = corestream(&["run", "wordcount", "--input", "/proc/version", "--output", "-", "-p", "2"]);
    assert_status(&out, 0);
    assert!(out.stderr.contains(&format!("wordcount: 1 lines, {words} words")), "{}", out.stderr);
    assert!(!out.stdout.is_empty());
}
