//! The generator's configuration ([`GeneratorConfig`]) and the pure arithmetic of the Nexmark
//! event stream that Beam keeps in `GeneratorConfig` and the `last`/`next` id helpers of its
//! person and auction generators: which kind an event id is, the timestamp of an event number,
//! the out-of-order permutation, and which person and auction ids exist at an event.
//!
//! Event ids cycle in epochs of `person + auction + bid` proportions (1 + 3 + 46 = 50 by
//! default): the first `person_proportion` ids of an epoch are people, the next
//! `auction_proportion` auctions, the rest bids. So the number of people and auctions created
//! before any event follows from its id alone, which is what makes the stream resettable.

use std::fmt;

/// Base-0 person ids are offset by this, so queries find matches on small runs.
pub const FIRST_PERSON_ID: u64 = 1000;
/// Base-0 auction ids are offset by this.
pub const FIRST_AUCTION_ID: u64 = 1000;
/// Categories are `FIRST_CATEGORY_ID..FIRST_CATEGORY_ID + NUM_CATEGORIES`.
pub const FIRST_CATEGORY_ID: u64 = 10;
pub const NUM_CATEGORIES: u64 = 5;
/// How many not-yet-created people a bid or auction may refer to.
pub const PERSON_ID_LEAD: u64 = 10;
/// How many not-yet-created auctions a bid may refer to.
pub const AUCTION_ID_LEAD: u64 = 10;
/// Hot auctions, bidders and sellers are the ids that are multiples of this (Beam's
/// `HOT_AUCTION_RATIO`, `HOT_BIDDER_RATIO`, `HOT_SELLER_RATIO` constants; hot bidders are one
/// past the multiple).
pub const HOT_ID_STRIDE: u64 = 100;
/// 2015-07-15T00:00:00Z, the base time of Beam's Nexmark tests.
pub const DEFAULT_BASE_TIME_MS: i64 = 1_436_918_400_000;

/// What to generate. `Default` gives the Nexmark defaults of Beam's and Flink's suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Id of event number 0; event number `n` has id `first_event_id + n` (before the
    /// out-of-order permutation). Default 0.
    pub first_event_id: u64,
    /// Events after which the generator's iterator ends; `None` is unbounded. Default `None`.
    pub max_events: Option<u64>,
    /// Event-time rate: event number `n` has timestamp
    /// `base_time_ms + n * 1000 / events_per_second`. Default 10 000 (Beam's `firstEventRate`).
    pub events_per_second: u64,
    /// Timestamp of event number 0, in ms since the epoch. Default [`DEFAULT_BASE_TIME_MS`].
    pub base_time_ms: i64,
    /// People per epoch of event ids. Default 1 (2 % of events).
    pub person_proportion: u64,
    /// Auctions per epoch of event ids. Default 3 (6 %).
    pub auction_proportion: u64,
    /// Bids per epoch of event ids. Default 46 (92 %).
    pub bid_proportion: u64,
    /// A bid goes to a hot auction with probability `1 - 1 / hot_auction_ratio`. Default 2.
    pub hot_auction_ratio: u64,
    /// A bid comes from a hot bidder with probability `1 - 1 / hot_bidder_ratio`. Default 4.
    pub hot_bidder_ratio: u64,
    /// An auction has a hot seller with probability `1 - 1 / hot_seller_ratio`. Default 4.
    pub hot_seller_ratio: u64,
    /// Cold bidders and sellers are drawn from the most recent this many people. Default 1000.
    pub num_active_people: u64,
    /// Cold bids go to the most recent this many auctions; also sets auction lengths. Default 100.
    pub num_in_flight_auctions: u64,
    /// Average size of a person in bytes, reached by padding `extra`. Default 200.
    pub avg_person_bytes: usize,
    /// Average size of an auction in bytes. Default 500.
    pub avg_auction_bytes: usize,
    /// Average size of a bid in bytes. Default 100.
    pub avg_bid_bytes: usize,
    /// Events are shuffled within consecutive groups of this many event numbers (1: in order).
    /// Position `n` takes event number `base + (n * 953) % size` as in Beam, so the size must
    /// not be a multiple of 953, and sizes dividing 952 leave the order unchanged. Default 1.
    pub out_of_order_group_size: u64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            first_event_id: 0,
            max_events: None,
            events_per_second: 10_000,
            base_time_ms: DEFAULT_BASE_TIME_MS,
            person_proportion: 1,
            auction_proportion: 3,
            bid_proportion: 46,
            hot_auction_ratio: 2,
            hot_bidder_ratio: 4,
            hot_seller_ratio: 4,
            num_active_people: 1000,
            num_in_flight_auctions: 100,
            avg_person_bytes: 200,
            avg_auction_bytes: 500,
            avg_bid_bytes: 100,
            out_of_order_group_size: 1,
        }
    }
}

/// The kind of event an event id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Person,
    Auction,
    Bid,
}

/// A setting of [`GeneratorConfig`] that the generator cannot honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Nexmark generator setting `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl GeneratorConfig {
    /// Checks the settings that the id and timestamp arithmetic relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("events_per_second", self.events_per_second),
            ("person_proportion", self.person_proportion),
            ("auction_proportion", self.auction_proportion),
            ("bid_proportion", self.bid_proportion),
            ("hot_auction_ratio", self.hot_auction_ratio),
            ("hot_bidder_ratio", self.hot_bidder_ratio),
            ("hot_seller_ratio", self.hot_seller_ratio),
            ("num_active_people", self.num_active_people),
            ("out_of_order_group_size", self.out_of_order_group_size),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError { field, reason: "must be at least 1" });
        }
        if self.out_of_order_group_size.is_multiple_of(953) {
            return Err(ConfigError {
                field: "out_of_order_group_size",
                reason: "must not be a multiple of 953, or the shuffle repeats event ids",
            });
        }
        Ok(())
    }

    /// Event ids per epoch (50 by default).
    pub fn total_proportion(&self) -> u64 {
        self.person_proportion + self.auction_proportion + self.bid_proportion
    }

    /// Average time between events in microseconds (Beam's `interEventDelayUs`).
    pub fn inter_event_delay_us(&self) -> f64 {
        1_000_000.0 / self.events_per_second as f64
    }

    /// The event number that takes position `n` of the stream: Beam's
    /// `nextAdjustedEventNumber`, a permutation within groups of `out_of_order_group_size`.
    pub fn adjusted_event_number(&self, n: u64) -> u64 {
        let group = self.out_of_order_group_size;
        let base = n / group * group;
        let offset = ((u128::from(n) * 953) % u128::from(group)) as u64;
        base + offset
    }

    /// Timestamp of event number `n` at the configured rate, in ms (saturating far in the
    /// future).
    pub fn timestamp_ms(&self, n: u64) -> i64 {
        let delta_ms = u128::from(n) * 1000 / u128::from(self.events_per_second);
        self.base_time_ms.saturating_add(i64::try_from(delta_ms).unwrap_or(i64::MAX))
    }

    pub fn kind_of(&self, event_id: u64) -> EventKind {
        let offset = event_id % self.total_proportion();
        if offset < self.person_proportion {
            EventKind::Person
        } else if offset < self.person_proportion + self.auction_proportion {
            EventKind::Auction
        } else {
            EventKind::Bid
        }
    }

    /// Base-0 id of the last person created at or before `event_id` (Beam's
    /// `lastBase0PersonId`).
    pub fn last_base0_person_id(&self, event_id: u64) -> u64 {
        let epoch = event_id / self.total_proportion();
        let offset = (event_id % self.total_proportion()).min(self.person_proportion - 1);
        epoch * self.person_proportion + offset
    }

    /// Base-0 id of the last auction created at or before `event_id` (Beam's
    /// `lastBase0AuctionId`), or `None` if there is none yet.
    pub fn last_base0_auction_id(&self, event_id: u64) -> Option<u64> {
        let epoch = event_id / self.total_proportion();
        let offset = event_id % self.total_proportion();
        if offset < self.person_proportion {
            (epoch * self.auction_proportion).checked_sub(1)
        } else {
            let offset = (offset - self.person_proportion).min(self.auction_proportion - 1);
            Some(epoch * self.auction_proportion + offset)
        }
    }

    /// Event numbers spanned while `num_in_flight_auctions` auctions are created; an
    /// auction lasts up to twice the time they take.
    pub(crate) fn events_per_auction_horizon(&self) -> u64 {
        self.num_in_flight_auctions * self.total_proportion() / self.auction_proportion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_mix_is_2_6_92_percent() {
        let config = GeneratorConfig::default();
        config.validate().unwrap();
        assert_eq!(config.total_proportion(), 50);
        let count = |kind| (0..50).filter(|&id| config.kind_of(id) == kind).count();
        assert_eq!((count(EventKind::Person), count(EventKind::Auction), count(EventKind::Bid)), (1, 3, 46));
        assert_eq!(config.inter_event_delay_us(), 100.0);
    }

    #[test]
    fn last_ids_count_people_and_auctions_created_so_far() {
        let config = GeneratorConfig::default();
        assert_eq!(config.last_base0_person_id(0), 0);
        assert_eq!(config.last_base0_person_id(49), 0);
        assert_eq!(config.last_base0_person_id(50), 1);
        assert_eq!(config.last_base0_auction_id(0), None);
        assert_eq!(config.last_base0_auction_id(1), Some(0));
        assert_eq!(config.last_base0_auction_id(3), Some(2));
        assert_eq!(config.last_base0_auction_id(49), Some(2));
        assert_eq!(config.last_base0_auction_id(50), Some(2));
        assert_eq!(config.last_base0_auction_id(51), Some(3));
    }

    #[test]
    fn adjusted_event_numbers_permute_each_group() {
        let config = GeneratorConfig { out_of_order_group_size: 10, ..GeneratorConfig::default() };
        for group in 0..4u64 {
            let mut numbers: Vec<u64> =
                (group * 10..group * 10 + 10).map(|n| config.adjusted_event_number(n)).collect();
            numbers.sort_unstable();
            assert_eq!(numbers, (group * 10..group * 10 + 10).collect::<Vec<_>>());
        }
        assert_ne!(config.adjusted_event_number(1), 1);
    }

    #[test]
    fn invalid_settings_are_named() {
        let zero_rate = GeneratorConfig { events_per_second: 0, ..GeneratorConfig::default() };
        assert_eq!(zero_rate.validate().unwrap_err().field, "events_per_second");
        let bad_group = GeneratorConfig { out_of_order_group_size: 953 * 2, ..GeneratorConfig::default() };
        assert_eq!(bad_group.validate().unwrap_err().field, "out_of_order_group_size");
    }
}
