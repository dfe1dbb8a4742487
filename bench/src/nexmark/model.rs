//! The three Nexmark record types and the [`Event`] that carries one of them, as in Flink's
//! Nexmark port (Beam's `Bid` lacks `channel` and `url`). They derive rkyv's traits so that they
//! cross exchanges as records (`corestream::Data`). Timestamps are ms since the epoch.

use corestream::rkyv::{Archive, Deserialize, Serialize};

/// A new user of the auction site.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(crate = corestream::rkyv)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    pub date_time: i64,
    pub extra: String,
}

/// An item put up for auction by `seller`, open from `date_time` until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(crate = corestream::rkyv)]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: u64,
    pub category: u64,
    pub extra: String,
}

/// A bid of `price` on `auction` by the person `bidder`.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(crate = corestream::rkyv)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

/// One event of the Nexmark stream.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(crate = corestream::rkyv)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// The event's timestamp in ms.
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// Replaces the event's timestamp (the latency harness stamps events with their scheduled
    /// time).
    pub fn set_date_time(&mut self, ms: i64) {
        match self {
            Event::Person(p) => p.date_time = ms,
            Event::Auction(a) => a.date_time = ms,
            Event::Bid(b) => b.date_time = ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corestream::rkyv;

    fn assert_data<T: corestream::Data>() {}

    #[test]
    fn events_are_records_and_survive_an_archive_round_trip() {
        assert_data::<Event>();
        let event = Event::Bid(Bid {
            auction: 1000,
            bidder: 1001,
            price: 4_200,
            channel: "Google".into(),
            url: "https://www.nexmark.com/x/y/z/item.htm?query=1".into(),
            date_time: 1_436_918_400_000,
            extra: "abc".into(),
        });
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&event).unwrap();
        let back = rkyv::from_bytes::<Event, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, event);
    }
}
