//! [`NexmarkGenerator`]: the resettable source of the Nexmark stream. Event number `n` is a pure
//! function of `(config, seed, n)`: its id, kind and timestamp follow from `n`, and its fields
//! from a random sequence seeded by `(seed, event id)`, as Beam seeds one `Random` per event id.
//! So a generator restarted at any offset (the position a checkpoint records) produces exactly
//! the events an uninterrupted run would have produced from there, and parallel sources can
//! split the event numbers among them without coordinating.

use super::auction::next_auction;
use super::bid::next_bid;
use super::config::{ConfigError, EventKind, GeneratorConfig};
use super::model::Event;
use super::person::next_person;
use super::rng::SplitMix64;

/// Generates the Nexmark stream; as an [`Iterator`] it yields the events from its current
/// offset up to `config.max_events`.
#[derive(Debug, Clone)]
pub struct NexmarkGenerator {
    config: GeneratorConfig,
    seed: u64,
    next: u64,
}

impl NexmarkGenerator {
    /// A generator at offset 0.
    ///
    /// # Panics
    /// If `config` is invalid; see [`NexmarkGenerator::try_new`].
    pub fn new(config: GeneratorConfig, seed: u64) -> Self {
        Self::at_offset(config, seed, 0)
    }

    /// A generator whose next event is event number `offset`.
    ///
    /// # Panics
    /// If `config` is invalid.
    pub fn at_offset(config: GeneratorConfig, seed: u64, offset: u64) -> Self {
        Self::try_new(config, seed, offset).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A generator whose next event is event number `offset`, or why `config` is invalid.
    pub fn try_new(config: GeneratorConfig, seed: u64, offset: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self { config, seed, next: offset })
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The number of the event the iterator yields next: the offset to restart from.
    pub fn offset(&self) -> u64 {
        self.next
    }

    /// Moves the iterator to event number `offset`.
    pub fn seek(&mut self, offset: u64) {
        self.next = offset;
    }

    /// Event number `n` (counted from 0 at `config.first_event_id`), whatever the offset.
    pub fn event(&self, n: u64) -> Event {
        let number = self.config.adjusted_event_number(n);
        let id = self.config.first_event_id + number;
        let date_time = self.config.timestamp_ms(number);
        let mut rng = SplitMix64::new(self.seed, id);
        let config = &self.config;
        match config.kind_of(id) {
            EventKind::Person => Event::Person(next_person(config, id, &mut rng, date_time)),
            EventKind::Auction => Event::Auction(next_auction(config, number, id, &mut rng, date_time)),
            EventKind::Bid => Event::Bid(next_bid(config, self.seed, id, &mut rng, date_time)),
        }
    }

    fn remaining(&self) -> Option<u64> {
        self.config.max_events.map(|max| max.saturating_sub(self.next))
    }
}

impl Iterator for NexmarkGenerator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.remaining() == Some(0) {
            return None;
        }
        let event = self.event(self.next);
        self.next += 1;
        Some(event)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.remaining() {
            Some(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                (n, Some(n))
            }
            None => (usize::MAX, None),
        }
    }
}
