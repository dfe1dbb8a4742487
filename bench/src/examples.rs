//! Example jobs: word count over a text file and a keyed sum over generated records, plus the
//! single-threaded reference implementations the tests and the demo check them against.

use std::collections::HashMap;
use std::path::Path;

use corestream::api::skips::Skips;
use corestream::api::sources::TextFileOptions;
use corestream::{CollectStream, DataStream, InvalidUtf8, RuntimeMode, StreamEnvironment};

/// Jobs known by name to `corestream plan` and `corestream run`.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("wordcount", "count words (maximal runs of Unicode alphanumerics, lowercased) of a text file"),
    ("sum-by-key", "sum generated values per key; prints a checksum of the totals"),
    ("passthrough", "sequence → map → filter → discard (benchmark)"),
    ("keyed-sum", "sequence → key by (v × 7919) mod K → running sum → discard (benchmark)"),
];

/// Words of a line: maximal runs of Unicode alphanumeric characters, lowercased.
pub fn words(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// The longest word word count counts, in bytes (after lowercasing): a (word, count) record
/// and its `word<TAB>count` line must fit in one record (32 KB buffers). Longer words are
/// skipped and reported as a job warning, never failing the job.
pub const MAX_WORD_BYTES: usize = 16 * 1024;
const _: () = assert!(MAX_WORD_BYTES + 64 <= corestream_netstack::record::MAX_RECORD_BYTES);

/// The limit on `--max-line-bytes` (1 GiB): a line is held in memory up to this.
pub const MAX_LINE_BYTES_LIMIT: u64 = 1 << 30;

/// Parses `--max-line-bytes`: a size with an optional binary suffix (`64K`, `1M`, `1MiB`),
/// between 1 byte and 1 GiB.
pub fn parse_max_line_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix("ib")).map_or(t.to_string(), |p| format!("{p}B"));
    match crate::transport::parse_bytes(&t) {
        Ok(bytes) if bytes <= MAX_LINE_BYTES_LIMIT => Ok(bytes as usize),
        _ => Err(format!("'{s}' is not a line length between 1 byte and 1 GiB (examples: 4096, 64K, 1M)")),
    }
}

/// Word count: text file → words → keyed count (final per word) → `word<TAB>count` lines in
/// one output file.
pub fn wordcount(env: &mut StreamEnvironment, input: &Path, output: &Path, invalid_utf8: InvalidUtf8) {
    wordcount_with(env, input, output, TextFileOptions::default().invalid_utf8(invalid_utf8));
}

/// [`wordcount`] with the text source's options (treatment of invalid UTF-8, line limit).
pub fn wordcount_with(env: &mut StreamEnvironment, input: &Path, output: &Path, options: TextFileOptions) {
    wordcount_lines(env, input, options).write_as_text(output).set_parallelism(1);
}

/// Word count's output lines (`word<TAB>count`, formatted in one subtask), for a sink to take.
pub fn wordcount_lines(env: &mut StreamEnvironment, input: &Path, options: TextFileOptions) -> DataStream<String> {
    env.set_runtime_mode(RuntimeMode::Batch);
    wordcount_stream_with(env, input, options)
        .map(|(word, count)| format!("{word}\t{count}"))
        .name("Format")
        .set_parallelism(1)
}

/// The (word, count) stream of word count.
pub fn wordcount_stream(env: &StreamEnvironment, input: &Path, invalid_utf8: InvalidUtf8) -> DataStream<(String, u64)> {
    wordcount_stream_with(env, input, TextFileOptions::default().invalid_utf8(invalid_utf8))
}

/// The (word, count) stream of word count with the text source's options. Words longer than
/// [`MAX_WORD_BYTES`] are skipped, counted and reported as a job warning from `Tokenize`.
pub fn wordcount_stream_with(
    env: &StreamEnvironment,
    input: &Path,
    options: TextFileOptions,
) -> DataStream<(String, u64)> {
    env.read_text_file_with_options(input, options)
        .flat_map_skipping(|line: String, skips: &mut Skips| {
            let mut out = Vec::new();
            for w in words(&line) {
                if w.len() > MAX_WORD_BYTES {
                    skips.skip(&format!("words longer than {MAX_WORD_BYTES} bytes"), || {
                        let prefix: String = w.chars().take(20).collect();
                        format!("a word of {} bytes starting '{prefix}'", w.len())
                    });
                } else {
                    out.push((w, 1u64));
                }
            }
            out
        })
        .name("Tokenize")
        .key_by(|r: &(String, u64)| r.0.clone())
        .reduce(|a, b| (a.0, a.1 + b.1))
        .name("Count")
}

/// Reference word count, single-threaded: lines that are not valid UTF-8, lines longer than
/// `max_line_bytes` (the bytes before `\n`, a `\r` among them) and words longer than
/// [`MAX_WORD_BYTES`] are skipped, as the job does.
pub fn reference_wordcount_with(text: &[u8], max_line_bytes: usize) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    if text.ends_with(b"\n") {
        lines.pop();
    }
    for line in lines {
        if line.len() > max_line_bytes {
            continue;
        }
        if let Ok(line) = std::str::from_utf8(line) {
            for w in words(line).filter(|w| w.len() <= MAX_WORD_BYTES) {
                *counts.entry(w).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Reference word count, single-threaded, with the default line limit. Lines that are not valid UTF-8 are skipped, as the
/// job does.
pub fn reference_wordcount(text: &[u8]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for line in text.split(|b| *b == b'\n') {
        if let Ok(line) = std::str::from_utf8(line) {
            for w in words(line) {
                *counts.entry(w).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Key of record `i` in the keyed examples and benchmarks.
#[inline]
pub fn key_of(i: u64, keys: u64) -> u64 {
    i.wrapping_mul(7919) % keys
}

/// Keyed sum of `records` generated records (record i: key `key_of(i)`, value i); the final
/// total of every key is collected.
pub fn sum_by_key(env: &mut StreamEnvironment, records: u64, keys: u64) -> CollectStream<(u64, u64)> {
    env.set_runtime_mode(RuntimeMode::Batch);
    env.from_generator(records, move |i| (key_of(i, keys), i))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1.wrapping_add(b.1)))
        .name("Sum")
        .collect()
}

/// [`sum_by_key`] writing each key's final total as a `key,total` line through the
/// exactly-once file sink into part files of `dir` (see `DataStream::sink_to_files`): with
/// checkpoints the totals are in the reduce's checkpointed state until the input ends, so a
/// job restored from a checkpoint writes each total once.
pub fn sum_by_key_to_files(env: &mut StreamEnvironment, records: u64, keys: u64, dir: &std::path::Path) {
    env.set_runtime_mode(RuntimeMode::Batch);
    env.from_generator(records, move |i| (key_of(i, keys), i))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|a, b| (a.0, a.1.wrapping_add(b.1)))
        .name("Sum")
        .map(|(k, total): (u64, u64)| format!("{k},{total}"))
        .name("Format")
        .sink_to_files(dir, corestream::FileSinkOptions::default())
        .name("Sink: totals");
}

/// Reads the `key,total` lines [`sum_by_key_to_files`] committed in `dir` (every visible part).
pub fn read_totals(dir: &std::path::Path) -> Result<Vec<(u64, u64)>, String> {
    let mut totals = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list '{}': {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list '{}': {e}", dir.display()))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let parsed = line.split_once(',').and_then(|(k, t)| Some((k.parse().ok()?, t.parse().ok()?)));
            totals
                .push(parsed.ok_or_else(|| format!("'{}' line {}: not `key,total`: {line:?}", path.display(), n + 1))?);
        }
    }
    Ok(totals)
}

/// Order-independent checksum of per-key totals.
pub fn checksum(totals: impl IntoIterator<Item = (u64, u64)>) -> u64 {
    totals
        .into_iter()
        .map(|(k, v)| {
            let x = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ v.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
            x ^ (x >> 29)
        })
        .fold(0u64, u64::wrapping_add)
}

/// Reference per-key totals of the keys that occur, single-threaded.
pub fn reference_sum_by_key(records: u64, keys: u64) -> Vec<(u64, u64)> {
    let mut totals: Vec<Option<u64>> = vec![None; keys as usize];
    for i in 0..records {
        let slot = &mut totals[key_of(i, keys) as usize];
        *slot = Some(slot.unwrap_or(0).wrapping_add(i));
    }
    totals.into_iter().enumerate().filter_map(|(k, t)| t.map(|t| (k as u64, t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_limits_parse_within_bounds() {
        assert_eq!(parse_max_line_bytes("4096"), Ok(4096));
        assert_eq!(parse_max_line_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_max_line_bytes("1M"), Ok(1 << 20));
        assert_eq!(parse_max_line_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_max_line_bytes("1G"), Ok(1 << 30));
        for bad in ["0", "2G", "-1", "1e6", "lots", "", "18446744073709551615"] {
            let e = parse_max_line_bytes(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")) && e.contains("1 GiB"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_reference_skips_long_lines_and_huge_words() {
        let huge = "x".repeat(MAX_WORD_BYTES + 1);
        let text = format!("a b\n{huge} c\n{}\nb\r\n", "d ".repeat(10));
        let counts = reference_wordcount_with(text.as_bytes(), 19);
        assert_eq!(counts.get("a"), Some(&1));
        assert_eq!(counts.get("b"), Some(&2));
        assert_eq!(counts.get("d"), None, "the 20-byte line is over the limit");
        assert_eq!(counts.get("c"), None, "the line of the huge word is over the limit too");
        let counts = reference_wordcount_with(text.as_bytes(), 1 << 20);
        assert_eq!((counts.get("c"), counts.get(huge.as_str()), counts.get("d")), (Some(&1), None, Some(&10)));
    }
}
