//! Sources and sinks: text files split over subtasks, malformed lines, missing files, text
//! output, generators and iterators.

use std::io::Write;

use corestream::JobError;
use corestream_tests::cluster;

fn lines_of(path: &std::path::Path, parallelism: u32) -> (Vec<String>, corestream::JobResult) {
    let cluster = cluster(parallelism);
    let mut env = cluster.environment();
    env.set_parallelism(parallelism);
    let out = env.read_text_file(path).collect();
    let handle = env.execute_async("lines").unwrap();
    let mut got: Vec<String> = out.collect();
    let result = handle.join().unwrap();
    got.sort();
    (got, result)
}

#[test]
fn every_line_is_read_exactly_once_at_any_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    let mut text = String::new();
    for i in 0..5000 {
        // Lines of varied lengths so split points fall inside lines, plus CRLF and an empty line.
        text.push_str(&format!("line {i} {}", "x".repeat(i % 97)));
        text.push_str(if i % 10 == 0 { "\r\n" } else { "\n" });
        if i == 2500 {
            text.push('\n');
        }
    }
    text.push_str("last line without newline");
    std::fs::write(&path, &text).unwrap();
    let mut expected: Vec<String> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect();
    expected.sort();
    for p in [1, 2, 3, 4] {
        let (got, result) = lines_of(&path, p);
        assert_eq!(got, expected, "parallelism {p}");
        assert!(result.warnings.is_empty());
    }
}

#[test]
fn lines_that_are_not_utf8_are_counted_and_reported_never_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.txt");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"good line\n\xff\xfe bad bytes\nanother good one\n\xc3\x28\n").unwrap();
    drop(f);
    let (got, result) = lines_of(&path, 1);
    assert_eq!(got, vec!["another good one".to_string(), "good line".to_string()]);
    assert_eq!(result.warnings.len(), 1);
    let w = &result.warnings[0];
    assert_eq!(w.count, 2);
    assert_eq!(w.operator, "Source: text file");
    assert!(w.message.contains("not valid UTF-8") && w.message.contains("byte offset 10"), "{}", w.message);
}

#[test]
fn a_missing_input_file_fails_with_its_path() {
    let cluster = cluster(1);
    let env = cluster.environment();
    env.read_text_file("/nonexistent/corestream-input.txt").discard();
    let err = env.execute("missing").unwrap_err();
    assert!(matches!(err, JobError::Io { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("cannot open input file") && msg.contains("/nonexistent/corestream-input.txt"), "{msg}");
    assert_eq!(cluster.pool().in_use(), 0);
}

#[test]
fn text_output_is_one_file_or_one_part_per_subtask() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(2);
    let env = cluster.environment();
    let single = dir.path().join("single.txt");
    env.from_sequence(0..100).set_parallelism(1).write_as_text(&single).set_parallelism(1);
    env.execute("single").unwrap();
    let text = std::fs::read_to_string(&single).unwrap();
    assert_eq!(text.lines().map(|l| l.parse::<u64>().unwrap()).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());

    let env = cluster.environment();
    let parts = dir.path().join("parts");
    env.from_sequence(0..100).set_parallelism(2).write_as_text(&parts).set_parallelism(2);
    env.execute("parts").unwrap();
    let mut all: Vec<u64> = (0..2)
        .flat_map(|i| {
            std::fs::read_to_string(parts.join(format!("part-{i}")))
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect::<Vec<u64>>()
        })
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
}

#[test]
fn an_unwritable_output_fails_naming_the_sink() {
    let cluster = cluster(1);
    let env = cluster.environment();
    env.from_sequence(0..10).write_as_text("/proc/corestream-cannot-write/out.txt");
    match env.execute("unwritable").unwrap_err() {
        JobError::OperatorFailed { operator, message, .. } => {
            assert_eq!(operator, "Sink: text file");
            assert!(message.contains("cannot create the directory of output"), "{message}");
            assert!(message.contains("/proc/corestream-cannot-write/out.txt"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn generators_split_their_range_and_iterators_keep_order() {
    let cluster = cluster(3);
    let mut env = cluster.environment();
    env.set_parallelism(3);
    let out = env.from_generator(1000, |i| i * i).collect();
    let handle = env.execute_async("gen").unwrap();
    let mut got: Vec<u64> = out.collect();
    let result = handle.join().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..1000u64).map(|i| i * i).collect::<Vec<_>>());
    let shares: Vec<u64> = result.operator("Source").unwrap().per_subtask.iter().map(|s| s.1).collect();
    assert_eq!(shares, vec![333, 333, 334]);

    let mut env = cluster.environment();
    env.set_parallelism(1);
    let words = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let out = env.from_iter(words.clone()).collect();
    let handle = env.execute_async("iter").unwrap();
    assert_eq!(out.collect::<Vec<_>>(), words);
    handle.join().unwrap();
}

#[test]
fn the_fail_policy_stops_the_job_at_the_first_invalid_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.txt");
    std::fs::write(&path, b"fine\nalso fine\n\xff oops\nnever read\n").unwrap();
    let cluster = cluster(1);
    let env = cluster.environment();
    env.read_text_file_with(&path, corestream::InvalidUtf8::Fail).discard();
    match env.execute("strict").unwrap_err() {
        JobError::OperatorFailed { operator, message, .. } => {
            assert_eq!(operator, "Source: text file");
            assert!(message.contains("byte offset 15") && message.contains("not valid UTF-8"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A FIFO is read whole by one source subtask and its lines rebalanced: every line arrives
/// once at any parallelism, and the plan shows a source of parallelism 1.
#[test]
fn a_fifo_is_read_by_one_subtask_and_rebalanced() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..3000).map(|i| format!("fifo line {i}\n")).collect();
    let mut expected: Vec<String> = text.lines().map(str::to_string).collect();
    expected.sort();
    for p in [1, 3] {
        let fifo = dir.path().join(format!("fifo-{p}"));
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success(), "mkfifo");
        let writer = {
            let (fifo, text) = (fifo.clone(), text.clone());
            std::thread::spawn(move || std::fs::write(fifo, text))
        };
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let out = env.read_text_file(&fifo).map(|l: String| l).collect();
        let plan = env.explain().unwrap();
        assert!(plan.contains("[parallelism 1") && plan.contains("REBALANCE"), "{plan}");
        let handle = env.execute_async("fifo").unwrap();
        let mut got: Vec<String> = out.collect();
        handle.join().unwrap();
        writer.join().unwrap().unwrap();
        got.sort();
        assert_eq!(got, expected, "parallelism {p}");
    }
}

/// Lines over the limit are skipped and reported with the offset of the first; the others,
/// including one of exactly the limit, pass.
#[test]
fn lines_over_the_limit_are_skipped_and_reported() {
    use corestream::api::sources::TextFileOptions;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.txt");
    let text = format!("short\n{}\nexact{}\n{}\nend", "y".repeat(5000), "z".repeat(95), "w".repeat(101));
    std::fs::write(&path, &text).unwrap();
    for p in [1, 2] {
        let cluster = cluster(p);
        let mut env = cluster.environment();
        env.set_parallelism(p);
        let out = env.read_text_file_with_options(&path, TextFileOptions::default().max_line_bytes(100)).collect();
        let handle = env.execute_async("limit").unwrap();
        let mut got: Vec<String> = out.collect();
        let result = handle.join().unwrap();
        got.sort();
        assert_eq!(got, vec!["end".to_string(), format!("exact{}", "z".repeat(95)), "short".to_string()]);
        let skipped: u64 = result.warnings.iter().map(|w| w.count).sum();
        assert_eq!(skipped, 2, "parallelism {p}: {:?}", result.warnings);
        assert!(
            result
                .warnings
                .iter()
                .any(|w| w.message.contains("longer than 100 bytes") && w.message.contains("byte offset")),
            "{:?}",
            result.warnings
        );
    }
}
