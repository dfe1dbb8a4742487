//! [`NexmarkGenerator`]: the resettable source of the Nexmark stream. Event number `n` is a pure
//! function of `(config, seed, n)`: its id, kind and timestamp follow from `n`, and its fields
//! from a random sequence seeded by `(seed, event id)`, as Beam seeds one `Random` per event id.
//! So a generator restarted at any offset (the position a checkpoint records) produces exactly
//! the events an uninterrupted run would have produced from there, and parallel sources can
//! split the event numbers among them without coordinating.
//!
//! [`NexmarkSource`] is the generator as a rewindable source subtask: its checkpointed position
//! is the generator's offset.

use corestream::{SourceError, SourceFunction, SourceStatus};

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

/// Subtask `i` of `p` of the Nexmark source: event numbers `i, i + p, i + 2p, …` below `events`
/// (interleaved, so all subtasks advance through event time together). In a job with
/// checkpoints it records the generator's offset and resumes there.
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    generator: NexmarkGenerator,
    first: u64,
    step: u64,
    end: u64,
}

const POSITION_TAG: &[u8; 4] = b"NXM1";

impl NexmarkSource {
    /// The share of subtask `subtask` of `parallelism` (at least 1) of the first `events`
    /// events of `generator`'s stream.
    pub fn new(generator: NexmarkGenerator, events: u64, subtask: u32, parallelism: u32) -> Self {
        let mut generator = generator;
        generator.seek(subtask as u64);
        Self { generator, first: subtask as u64, step: parallelism.max(1) as u64, end: events }
    }
}

impl SourceFunction<Event> for NexmarkSource {
    const REWINDABLE: bool = true;

    fn next_batch(&mut self, out: &mut Vec<Event>, max_records: usize) -> Result<SourceStatus, SourceError> {
        let mut next = self.generator.offset();
        for _ in 0..max_records {
            if next >= self.end {
                break;
            }
            out.push(self.generator.event(next));
            next = next.saturating_add(self.step);
        }
        self.generator.seek(next);
        Ok(if next >= self.end { SourceStatus::Finished } else { SourceStatus::More })
    }

    fn snapshot_state(&mut self) -> Result<Vec<u8>, SourceError> {
        let mut bytes = POSITION_TAG.to_vec();
        bytes.extend_from_slice(&self.generator.offset().to_le_bytes());
        Ok(bytes)
    }

    fn restore_state(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let offset = match position.split_first_chunk::<4>() {
            Some((tag, rest)) if tag == POSITION_TAG && rest.len() == 8 => {
                u64::from_le_bytes(rest.try_into().expect("8 bytes"))
            }
            _ => return Err(format!("not a Nexmark source's position ({} bytes)", position.len()).into()),
        };
        if offset < self.first || !(offset - self.first).is_multiple_of(self.step) {
            return Err(format!(
                "Nexmark event {offset} is not in this subtask's share (from {}, every {}): the parallelism changed",
                self.first, self.step
            )
            .into());
        }
        self.generator.seek(offset);
        Ok(())
    }
}
