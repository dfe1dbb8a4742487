//! A deterministic text corpus for word count: words drawn from a fixed vocabulary (ASCII and
//! non-ASCII, mixed case) with a Zipf-like skew, punctuation and digits between them, so the
//! job sees a realistic mix of hot and rare keys. Same seed, same bytes.

use std::io::Write;

const VOCABULARY: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "stream",
    "Flink",
    "window",
    "watermark",
    "checkpoint",
    "barrier",
    "operator",
    "Straße",
    "Ünïcode",
    "naïve",
    "café",
    "Ωmega",
    "東京",
    "данные",
    "ποταμός",
    "x86",
    "io_uring",
    "2026",
];

/// Small, fast, seedable generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Writes about `bytes` bytes of text (whole lines) to `out`.
pub fn write_corpus(out: &mut impl Write, bytes: u64, seed: u64) -> std::io::Result<u64> {
    let mut rng = SplitMix64(seed);
    let mut written = 0u64;
    let mut line = String::with_capacity(128);
    while written < bytes {
        line.clear();
        let words = 4 + rng.next_u64() % 14;
        for i in 0..words {
            let r = rng.next_u64();
            // Zipf-like: a squared uniform favours low indices; a tail of rare synthetic words.
            let u = (r >> 11) as f64 / (1u64 << 53) as f64;
            let word = if r.is_multiple_of(10) {
                format!("w{}", rng.next_u64() % 50_000)
            } else {
                VOCABULARY[((u * u) * VOCABULARY.len() as f64) as usize].to_string()
            };
            if i > 0 {
                line.push_str(match r % 7 {
                    0 => ", ",
                    1 => " - ",
                    _ => " ",
                });
            }
            line.push_str(&word);
        }
        line.push_str(if rng.next_u64().is_multiple_of(3) { ".\n" } else { "\n" });
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    Ok(written)
}
