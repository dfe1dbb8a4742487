//! The generator's random numbers: SplitMix64, seeded afresh for every event from the run's seed
//! and the event id (as Beam seeds `new Random(eventId)` per event), so any event can be
//! generated without generating the ones before it. Not cryptographic; the only requirement is
//! that the same `(seed, stream)` always yields the same sequence on every platform.

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The sequence of stream `stream` (an event id, or a channel number in a separate domain)
    /// of the run seeded by `seed`.
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        Self { state: mix(seed ^ mix(stream.wrapping_add(GOLDEN_GAMMA))) }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// Uniform in `0..bound` by multiply-shift (bias below `bound / 2^64`, negligible for the
    /// bounds used here). `bound` must be positive.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0, "empty range");
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    pub(crate) fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Uniform in `[0, 1)` with 53 random bits, like Java's `Random.nextDouble`.
    pub(crate) fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(7, 0);
        let mut seen = [false; 13];
        for _ in 0..10_000 {
            seen[rng.index(13)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn streams_differ_by_seed_and_stream() {
        let first = |seed, stream| SplitMix64::new(seed, stream).next_u64();
        assert_eq!(first(1, 2), first(1, 2));
        assert_ne!(first(1, 2), first(2, 2));
        assert_ne!(first(1, 2), first(1, 3));
    }

    #[test]
    fn unit_f64_is_in_unit_interval() {
        let mut rng = SplitMix64::new(3, 3);
        assert!((0..10_000).map(|_| rng.unit_f64()).all(|x| (0.0..1.0).contains(&x)));
    }
}
