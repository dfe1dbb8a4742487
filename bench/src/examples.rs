//! Example jobs: word count over a text file and a keyed sum over generated records, plus the
//! single-threaded reference implementations the tests and the demo check them against.

use std::collections::HashMap;
use std::path::Path;

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

/// Word count: text file → words → keyed count (final per word) → `word<TAB>count` lines in
/// one output file.
pub fn wordcount(env: &mut StreamEnvironment, input: &Path, output: &Path, invalid_utf8: InvalidUtf8) {
    wordcount_lines(env, input, invalid_utf8).write_as_text(output).set_parallelism(1);
}

/// Word count's output lines (`word<TAB>count`, formatted in one subtask), for a sink to take.
pub fn wordcount_lines(env: &mut StreamEnvironment, input: &Path, invalid_utf8: InvalidUtf8) -> DataStream<String> {
    env.set_runtime_mode(RuntimeMode::Batch);
    wordcount_stream(env, input, invalid_utf8)
        .map(|(word, count)| format!("{word}\t{count}"))
        .name("Format")
        .set_parallelism(1)
}

/// The (word, count) stream of word count.
pub fn wordcount_stream(env: &StreamEnvironment, input: &Path, invalid_utf8: InvalidUtf8) -> DataStream<(String, u64)> {
    env.read_text_file_with(input, invalid_utf8)
        .flat_map(|line: String| words(&line).map(|w| (w, 1u64)).collect::<Vec<_>>())
        .name("Tokenize")
        .key_by(|r: &(String, u64)| r.0.clone())
        .reduce(|a, b| (a.0, a.1 + b.1))
        .name("Count")
}

/// Reference word count, single-threaded. Lines that are not valid UTF-8 are skipped, as the
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
