//! Random strings, padding and prices with the distributions of Beam's `StringsGenerator` and
//! `PriceGenerator`: words of 3 to `max_len - 1` characters with a special character (space by
//! default) at 1 in 13, padding that brings a record to within ±20 % of its average size, and
//! prices log-uniform between 100 and 10^8 (Nexmark leaves the unit open; q1 treats it as
//! dollars).

use super::rng::SplitMix64;

const MIN_STRING_LENGTH: u64 = 3;

/// Beam's `nextString(random, maxLength, special)`: then trimmed of spaces, as in Java.
pub(crate) fn next_string(rng: &mut SplitMix64, max_len: u64, special: char) -> String {
    let len = MIN_STRING_LENGTH + rng.below(max_len - MIN_STRING_LENGTH);
    let mut out = String::with_capacity(len as usize);
    for _ in 0..len {
        if rng.below(13) == 0 {
            out.push(special);
        } else {
            out.push(letter(rng));
        }
    }
    out.trim_matches(' ').to_owned()
}

/// `len` lowercase letters, eight from each random word (a byte scaled to 26 letters: the
/// padding only needs letters, not Java's exact draws).
pub(crate) fn next_exact_string(rng: &mut SplitMix64, len: usize) -> String {
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let mut word = rng.next_u64();
        for _ in 0..(len - bytes.len()).min(8) {
            bytes.push(b'a' + (((word & 0xff) * 26) >> 8) as u8);
            word >>= 8;
        }
    }
    String::from_utf8(bytes).expect("ASCII letters")
}

fn letter(rng: &mut SplitMix64) -> char {
    char::from(b'a' + rng.below(26) as u8)
}

/// Padding for a record of `current_bytes` so that records average `avg_bytes` (Beam's
/// `nextExtra`): none if the record is already larger.
pub(crate) fn next_extra(rng: &mut SplitMix64, current_bytes: usize, avg_bytes: usize) -> String {
    if current_bytes > avg_bytes {
        return String::new();
    }
    let wanted = avg_bytes - current_bytes;
    let delta = (wanted as f64 * 0.2).round() as usize;
    let len = wanted - delta + if delta == 0 { 0 } else { rng.index(2 * delta) };
    next_exact_string(rng, len)
}

/// A price, `round(10^(6u) * 100)` for `u` uniform in `[0, 1)`.
pub(crate) fn next_price(rng: &mut SplitMix64) -> u64 {
    (10f64.powf(rng.unit_f64() * 6.0) * 100.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_short_lowercase_words() {
        let mut rng = SplitMix64::new(1, 1);
        for _ in 0..1000 {
            let s = next_string(&mut rng, 20, ' ');
            assert!(s.len() < 20);
            assert!(s.chars().all(|c| c == ' ' || c.is_ascii_lowercase()));
            assert!(!s.starts_with(' ') && !s.ends_with(' '));
        }
    }

    #[test]
    fn exact_strings_are_lowercase_letters_of_the_length_asked() {
        let mut rng = SplitMix64::new(4, 4);
        for len in [0, 1, 7, 8, 9, 100] {
            let s = next_exact_string(&mut rng, len);
            assert_eq!(s.len(), len);
            assert!(s.bytes().all(|b| b.is_ascii_lowercase()));
        }
        let long = next_exact_string(&mut rng, 26_000);
        assert!(('a'..='z').all(|c| long.contains(c)), "every letter appears");
    }

    #[test]
    fn extra_pads_to_within_twenty_percent() {
        let mut rng = SplitMix64::new(2, 2);
        for _ in 0..1000 {
            let len = next_extra(&mut rng, 32, 100).len();
            assert!((54..=81).contains(&len), "{len}");
        }
        assert_eq!(next_extra(&mut rng, 300, 100), "");
    }

    #[test]
    fn prices_are_log_uniform_between_1e2_and_1e8() {
        let mut rng = SplitMix64::new(3, 3);
        let prices: Vec<u64> = (0..10_000).map(|_| next_price(&mut rng)).collect();
        assert!(prices.iter().all(|&p| (100..=100_000_000).contains(&p)));
        let below_100_dollars = prices.iter().filter(|&&p| p < 10_000).count();
        assert!((3_000..3_700).contains(&below_100_dollars), "{below_100_dollars}");
    }
}
