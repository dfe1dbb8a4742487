//! The Nexmark benchmark's event source, following the specification as implemented by Apache
//! Beam's `org.apache.beam.sdk.nexmark.sources.generator` and Flink's Nexmark port: an online
//! auction site's stream of new people, new auctions and bids in a 2 / 6 / 92 mix, with hot
//! auctions, hot bidders and hot sellers, log-uniform prices, five categories and timestamps at
//! a configured event rate. The stream is deterministic in its seed and resettable: event
//! number `n` is computed directly, so a source can restart at any offset.
//!
//! `config` holds the settings and the id/time arithmetic, `model` the record types, `rng`,
//! `strings` and the per-kind modules the field distributions, `generator` the source itself.
//! It sits at the head of the Nexmark jobs, before any exchange.

mod auction;
mod bid;
pub mod config;
pub mod generator;
pub mod model;
mod person;
pub mod queries;
pub mod reference;
mod rng;
mod strings;
#[cfg(test)]
mod tests;

pub use bid::CHANNELS_NUMBER;
pub use config::{ConfigError, EventKind, GeneratorConfig};
pub use generator::{NexmarkGenerator, NexmarkSource};
pub use model::{Auction, Bid, Event, Person};
