//! Source positions: each source reads k records, records its position, and a new source
//! restored there reads the rest, which must equal what an uninterrupted source reads.

use std::fmt::Debug;
use std::io::Write;

use super::*;
use crate::api::env::sources_rewind_problem;

/// Reads until the source finishes (or `cap` records), in batches of at most `batch`.
fn read_all<T, S: Source<T> + ?Sized>(source: &mut S, batch: usize, cap: usize) -> Vec<T> {
    let mut out = Vec::new();
    while out.len() < cap {
        let want = batch.min(cap - out.len());
        if source.next_batch(&mut out, want).unwrap() == SourceStatus::Finished {
            break;
        }
    }
    out
}

/// Reads exactly `k` records (fewer if the source ends).
fn read_k<T, S: Source<T> + ?Sized>(source: &mut S, batch: usize, k: usize) -> Vec<T> {
    read_all(source, batch, k)
}

/// For every k in `ks`: k records, snapshot, a fresh source restored, the rest; together they
/// equal an uninterrupted read of at most `cap` records.
fn round_trips<T: PartialEq + Debug, S: Source<T>>(make: impl Fn() -> S, ks: &[usize], batch: usize, cap: usize) {
    let all = read_all(&mut make(), batch, cap);
    for &k in ks {
        let mut first = make();
        let mut got = read_k(&mut first, batch, k);
        let position = first.snapshot_position().unwrap();
        let mut second = make();
        second.restore_position(&position).unwrap();
        got.extend(read_all(&mut second, batch, cap - got.len()));
        assert_eq!(got, all, "restored after {k} records");
    }
}

fn ks(n: usize) -> Vec<usize> {
    vec![0, 1, 2, 7, n / 3, n / 2, n.saturating_sub(1), n, n + 5]
}

#[test]
fn generator_positions_round_trip() {
    let f = Arc::new(|i: u64| i * 10 + 3);
    for (subtask, parallelism) in [(0, 1), (1, 3), (2, 3)] {
        round_trips(|| GeneratorSource::split(f.clone(), 1000, subtask, parallelism), &ks(400), 64, usize::MAX);
        round_trips(|| GeneratorSource::strided(f.clone(), 1000, subtask, parallelism), &ks(400), 64, usize::MAX);
        round_trips(|| GeneratorSource::unbounded(f.clone(), subtask, parallelism), &ks(300), 50, 600);
    }
}

#[test]
fn a_generator_refuses_another_splits_position() {
    let f = Arc::new(|i: u64| i);
    let mut a = GeneratorSource::split(f.clone(), 100, 0, 2);
    read_k(&mut a, 10, 10);
    let position = a.snapshot_position().unwrap();
    let mut b = GeneratorSource::split(f.clone(), 100, 1, 2);
    let err = b.restore_position(&position).unwrap_err().to_string();
    assert!(err.contains("not in this subtask's split"), "{err}");
    let mut strided = GeneratorSource::strided(f.clone(), 100, 1, 4);
    assert!(strided.restore_position(&encode_position(GENERATOR_TAG, &[6, 100, 4])).is_err(), "6 is not 1 + 4k");
    let mut other = GeneratorSource::split(f, 100, 0, 2);
    assert!(other.restore_position(&encode_position(ITER_TAG, &[3])).is_err(), "an iterator's position");
    assert!(other.restore_position(&position[..9]).is_err(), "truncated");
}

#[test]
fn iterator_positions_round_trip_by_skipping() {
    let make = || IterSource { iter: (0..500u64).map(|i| format!("item {i}")), emitted: 0 };
    round_trips(make, &ks(500), 64, usize::MAX);
    let mut long = IterSource { iter: 0..100u64, emitted: 0 };
    read_k(&mut long, 16, 80);
    let position = long.snapshot_position().unwrap();
    let mut short = IterSource { iter: 0..50u64, emitted: 0 };
    let err = short.restore_position(&position).unwrap_err().to_string();
    assert!(err.contains("ended after 50 items") && err.contains("80 items"), "{err}");
}

fn context(subtask: u32, parallelism: u32) -> SourceContext {
    SourceContext {
        subtask,
        parallelism,
        bell: Arc::new(Doorbell::new()),
        node: 0,
        job: Arc::new(JobShared::new("test".into(), vec!["Source: text file".into()], vec![parallelism])),
    }
}

/// Lines of every kind the source meets: short, empty, CRLF, too long, not UTF-8.
fn text_file() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for i in 0..300 {
        match i % 7 {
            0 => writeln!(file, "line {i}").unwrap(),
            1 => write!(file, "crlf {i}\r\n").unwrap(),
            2 => writeln!(file).unwrap(),
            3 => writeln!(file, "{}", "x".repeat(100 + i)).unwrap(),
            4 => file.write_all(b"bad \xff utf-8\n").unwrap(),
            _ => writeln!(file, "{i} with some more text").unwrap(),
        }
    }
    write!(file, "last line without a break").unwrap();
    file.flush().unwrap();
    file
}

const TEST_OPTIONS: TextFileOptions = TextFileOptions { invalid_utf8: InvalidUtf8::Skip, max_line_bytes: 200 };

#[test]
fn text_file_positions_round_trip_in_every_split() {
    let file = text_file();
    for parallelism in [1, 3] {
        for subtask in 0..parallelism {
            let make = || {
                FileLinesSource::open(file.path(), TEST_OPTIONS, TextSplit::ByteRange, &context(subtask, parallelism))
                    .unwrap()
            };
            let n = read_all(&mut make(), 16, usize::MAX).len();
            round_trips(make, &ks(n), 16, usize::MAX);
        }
    }
}

#[test]
fn a_restored_text_source_counts_the_lines_it_skipped_before_the_checkpoint() {
    let file = text_file();
    let open = || FileLinesSource::open(file.path(), TEST_OPTIONS, TextSplit::ByteRange, &context(0, 1)).unwrap();
    let mut whole = open();
    read_all(&mut whole, 16, usize::MAX);
    let mut first = open();
    read_k(&mut first, 16, 150);
    let position = first.snapshot_position().unwrap();
    let mut second = open();
    second.restore_position(&position).unwrap();
    read_all(&mut second, 16, usize::MAX);
    assert!(whole.invalid.count > 0 && whole.too_long.count > 0);
    assert_eq!((second.invalid.count, second.invalid.first_offset), (whole.invalid.count, whole.invalid.first_offset));
    assert_eq!(
        (second.too_long.count, second.too_long.first_offset),
        (whole.too_long.count, whole.too_long.first_offset)
    );
}

#[test]
fn a_text_file_shorter_than_the_position_is_an_error_naming_it() {
    let file = text_file();
    let mut first = FileLinesSource::open(file.path(), TEST_OPTIONS, TextSplit::ByteRange, &context(0, 1)).unwrap();
    read_k(&mut first, 16, 200);
    let position = first.snapshot_position().unwrap();
    file.as_file().set_len(100).unwrap();
    let mut second = FileLinesSource::open(file.path(), TEST_OPTIONS, TextSplit::ByteRange, &context(0, 1)).unwrap();
    let err = second.restore_position(&position).unwrap_err().to_string();
    assert!(err.contains(&file.path().display().to_string()) && err.contains("has 100 bytes"), "{err}");
}

struct Counter {
    next: u64,
}

impl SourceFunction<u64> for Counter {
    const REWINDABLE: bool = true;

    fn next_batch(&mut self, out: &mut Vec<u64>, max_records: usize) -> Result<SourceStatus, SourceError> {
        let end = (self.next + max_records as u64).min(100);
        out.extend(self.next..end);
        self.next = end;
        Ok(if end == 100 { SourceStatus::Finished } else { SourceStatus::More })
    }

    fn snapshot_state(&mut self) -> Result<Vec<u8>, SourceError> {
        Ok(self.next.to_le_bytes().to_vec())
    }

    fn restore_state(&mut self, position: &[u8]) -> Result<(), SourceError> {
        self.next = u64::from_le_bytes(position.try_into().map_err(|_| "not a counter's position")?);
        Ok(())
    }
}

struct Forgetful;

impl SourceFunction<u64> for Forgetful {
    fn next_batch(&mut self, _out: &mut Vec<u64>, _max_records: usize) -> Result<SourceStatus, SourceError> {
        Ok(SourceStatus::Finished)
    }
}

#[test]
fn application_sources_round_trip_through_their_hooks_and_default_to_not_rewinding() {
    round_trips(|| FunctionSource { source: Counter { next: 0 }, node: 0 }, &ks(100), 8, usize::MAX);
    let mut forgetful = FunctionSource { source: Forgetful, node: 0 };
    assert!(forgetful.snapshot_position().unwrap_err().to_string().contains("not implemented"));
    assert!(forgetful.restore_position(b"").is_err());
    const { assert!(!<Forgetful as SourceFunction<u64>>::REWINDABLE) };
}

#[test]
fn a_job_with_sources_that_cannot_rewind_is_refused_unless_accepted() {
    let sources = [("Source: sequence", Rewind::Yes), ("Source: channel", Rewind::CHANNEL)];
    let problem = sources_rewind_problem(sources, false).unwrap();
    assert!(problem.contains("'Source: channel' (at most once"), "{problem}");
    assert!(!problem.contains("sequence"), "{problem}");
    assert!(problem.contains("allow_at_most_once_sources"), "{problem}");
    assert_eq!(sources_rewind_problem(sources, true), None);
    assert_eq!(sources_rewind_problem([("Source: text file", Rewind::of_text(TextSplit::ByteRange))], false), None);
    let stream =
        sources_rewind_problem([("a", Rewind::of_text(TextSplit::Whole)), ("b", Rewind::CHANNEL)], false).unwrap();
    assert!(stream.contains("these sources") && stream.contains("'a'") && stream.contains("'b'"), "{stream}");
}
