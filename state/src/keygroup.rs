//! Key groups, as in Flink: a key hashes into one of `max_parallelism` key groups, and each
//! subtask of a keyed operator owns a contiguous range of key groups. Key groups are the unit of
//! state redistribution when a job is rescaled, so the mapping must never change between runs,
//! processes or versions of the binary: keys are hashed with [`StableHasher`] (xxh3 for byte
//! strings, a fixed 64-bit mix for integers), never with `std`'s randomly seeded hasher.
//!
//! Invariants (property-tested): every key maps to exactly one key group in
//! `0..max_parallelism`; the subtask ranges partition `0..max_parallelism` into contiguous
//! ranges whose sizes differ by at most one; `operator_index_for_key_group` agrees with them.

use std::hash::{Hash, Hasher};
use std::ops::Range;

/// Default number of key groups (Flink's default for small parallelism).
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;
/// Upper bound of max parallelism, as in Flink.
pub const MAX_MAX_PARALLELISM: u32 = 1 << 15;

/// A `Hasher` whose output is fixed by this file: the same key hashes the same in every process
/// and every build. Integers are folded with a multiply-rotate step; byte strings with xxh3.
#[derive(Debug, Clone, Copy)]
pub struct StableHasher {
    state: u64,
}

const SEED: u64 = 0x243f_6a88_85a3_08d3;
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

impl Default for StableHasher {
    fn default() -> Self {
        Self { state: SEED }
    }
}

impl StableHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(MUL).rotate_left(29);
    }
}

impl Hasher for StableHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.state);
        self.mix(h);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(i as u64);
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.mix(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.mix(i as u64);
        self.mix((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        // Fixed width so 32- and 64-bit builds agree.
        self.mix(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fmix64(self.state)
    }
}

/// MurmurHash3's 64-bit finaliser: spreads every input bit over the output.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The stable 64-bit hash of a key.
#[inline]
pub fn stable_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = StableHasher::default();
    key.hash(&mut h);
    h.finish()
}

/// Key group of a key hash.
#[inline]
pub fn key_group_for_hash(hash: u64, max_parallelism: u32) -> u32 {
    debug_assert!(max_parallelism > 0);
    // Multiply-shift maps the 64-bit hash uniformly onto 0..max_parallelism without a division.
    ((hash as u128 * max_parallelism as u128) >> 64) as u32
}

/// Key group of a key.
#[inline]
pub fn assign_key_group<K: Hash + ?Sized>(key: &K, max_parallelism: u32) -> u32 {
    key_group_for_hash(stable_hash(key), max_parallelism)
}

/// The subtask that owns `key_group` when the operator runs with `parallelism` subtasks.
#[inline]
pub fn operator_index_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u32) -> u32 {
    debug_assert!(key_group < max_parallelism && parallelism <= max_parallelism);
    (key_group as u64 * parallelism as u64 / max_parallelism as u64) as u32
}

/// A contiguous range of key groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyGroupRange {
    pub start: u32,
    pub end: u32,
}

impl KeyGroupRange {
    #[inline]
    pub fn contains(&self, key_group: u32) -> bool {
        (self.start..self.end).contains(&key_group)
    }

    #[inline]
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    #[inline]
    pub fn as_range(&self) -> Range<u32> {
        self.start..self.end
    }
}

/// The key groups owned by `subtask` (the inverse of [`operator_index_for_key_group`]).
pub fn key_group_range(max_parallelism: u32, parallelism: u32, subtask: u32) -> KeyGroupRange {
    assert!(parallelism > 0 && parallelism <= max_parallelism && subtask < parallelism);
    let (m, p, i) = (max_parallelism as u64, parallelism as u64, subtask as u64);
    let start = (i * m).div_ceil(p);
    let end = ((i + 1) * m).div_ceil(p);
    KeyGroupRange { start: start as u32, end: end as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hashes_are_pinned() {
        // Changing these values breaks the key-group layout of every savepoint: don't.
        assert_eq!(stable_hash(&42u64), stable_hash(&42u64));
        assert_eq!(assign_key_group(&0u64, 128), assign_key_group(&0u64, 128));
        let pinned: Vec<u32> = (0u64..8).map(|k| assign_key_group(&k, 128)).collect();
        assert_eq!(pinned, PINNED_KEY_GROUPS);
        assert_eq!(assign_key_group("flink", 128), PINNED_STR_GROUP);
    }

    const PINNED_KEY_GROUPS: [u32; 8] = [75, 117, 30, 121, 15, 6, 20, 117];
    const PINNED_STR_GROUP: u32 = 65;

    proptest! {
        #[test]
        fn key_group_is_total_and_stable(key in any::<u64>(), max_p in 1u32..=4096) {
            let kg = assign_key_group(&key, max_p);
            prop_assert!(kg < max_p);
            prop_assert_eq!(kg, assign_key_group(&key, max_p));
        }

        #[test]
        fn string_keys_are_total(key in ".*", max_p in 1u32..=4096) {
            prop_assert!(assign_key_group(key.as_str(), max_p) < max_p);
            prop_assert_eq!(assign_key_group(key.as_str(), max_p), assign_key_group(&key, max_p));
        }

        #[test]
        fn ranges_partition_key_groups(max_p in 1u32..=2048, p_seed in 1u32..=2048) {
            let p = 1 + p_seed % max_p;
            let mut next = 0;
            let mut sizes = Vec::new();
            for i in 0..p {
                let r = key_group_range(max_p, p, i);
                prop_assert_eq!(r.start, next);
                sizes.push(r.len());
                for kg in r.as_range() {
                    prop_assert_eq!(operator_index_for_key_group(max_p, p, kg), i);
                }
                next = r.end;
            }
            prop_assert_eq!(next, max_p);
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(hi - lo <= 1);
        }

        #[test]
        fn keys_spread_evenly_over_subtasks(seed in any::<u64>(), p in 1u32..=8) {
            let max_p = 128;
            let n = 20_000u64;
            let mut counts = vec![0u64; p as usize];
            for k in 0..n {
                let key = k.wrapping_mul(0x9e37_79b9).wrapping_add(seed);
                let kg = assign_key_group(&key, max_p);
                counts[operator_index_for_key_group(max_p, p, kg) as usize] += 1;
            }
            let expected = n as f64 / p as f64;
            for c in counts {
                // Key-group granularity (128 groups) plus sampling noise: within 15 %.
                prop_assert!((c as f64 - expected).abs() < expected * 0.15, "count {} vs {}", c, expected);
            }
        }
    }
}
