//! The Nexmark queries as DataStream jobs, following Apache Beam's Nexmark suite (and Flink's
//! SQL port where Beam leaves a choice open). Every query is a function from the event stream
//! ([`source`]) to its result stream (`qN_stream`), so the tests, the throughput command and the
//! latency harness attach whichever sink they need; `qN` attaches a collect sink. Their
//! single-threaded twins are in [`super::reference`].
//!
//! The source ([`NexmarkSource`]) reads event numbers interleaved over its subtasks (so all of
//! them advance through event time together; a checkpoint records each subtask's offset), and
//! assigns event time from `Event::date_time` with a bound on
//! disorder derived from the generator's out-of-order group size. Derived streams (bids,
//! people, auctions) declare their timestamps again with `with_timestamps`.
//!
//! q3 and q4 keep their join state in keyed state (value and list state declared in `open`),
//! so it lives in the operator's keyed state backend, scoped to the record's key.

use std::time::Duration;

use corestream::rkyv::{Archive, Deserialize, Serialize};
use corestream::{
    CollectStream, DataStream, KeyedCoProcessFunction, KeyedContext, KeyedRuntimeContext, ListState,
    ListStateDescriptor, StreamEnvironment, ValueState, ValueStateDescriptor, WatermarkStrategy, WindowAssigner,
    WindowContext,
};

use super::config::GeneratorConfig;
use super::generator::{NexmarkGenerator, NexmarkSource};
use super::model::{Auction, Bid, Event, Person};
use crate::throughput::CountAgg;

/// q2: (auction, price).
pub type Q2Out = (u64, u64);
/// q3: (seller name, city, state, auction id).
pub type Q3Out = (String, String, String, u64);
/// q4: (category, winning auctions so far, sum of their winning prices, integer average).
pub type Q4Out = (u64, u64, u64, u64);
/// q5: (window start, window end, auction, bids in the window).
pub type Q5Out = (i64, i64, u64, u64);
/// q7: (window start, window end, auction, bidder, price, bid time).
pub type Q7Out = (i64, i64, u64, u64, u64, i64);
/// q8: (person id, name, auction reserve, window start).
pub type Q8Out = (u64, String, u64, i64);
/// q11: (bidder, bids, session start, session end).
pub type Q11Out = (u64, u64, i64, i64);
/// q12: (bidder, bids, window start, window end).
pub type Q12Out = (u64, u64, i64, i64);

/// q2 keeps the bids on auctions that are multiples of this (Beam's `auctionSkip`).
pub const Q2_AUCTION_MODULUS: u64 = 123;
/// q3's states of sellers and category of auctions.
pub const Q3_STATES: [&str; 3] = ["OR", "ID", "CA"];
pub const Q3_CATEGORY: u64 = 10;
/// q5's sliding windows.
pub const Q5_WINDOW_MS: u64 = 10_000;
pub const Q5_SLIDE_MS: u64 = 2_000;
/// q7's and q8's tumbling windows.
pub const Q7_WINDOW_MS: u64 = 10_000;
pub const Q8_WINDOW_MS: u64 = 10_000;
/// q11's session gap.
pub const Q11_SESSION_GAP_MS: i64 = 10_000;
/// q12's processing-time windows.
pub const Q12_WINDOW_MS: u64 = 10_000;

pub fn q5_windows() -> WindowAssigner {
    WindowAssigner::sliding_event_time(Duration::from_millis(Q5_WINDOW_MS), Duration::from_millis(Q5_SLIDE_MS))
}

pub fn q7_windows() -> WindowAssigner {
    WindowAssigner::tumbling_event_time(Duration::from_millis(Q7_WINDOW_MS))
}

pub fn q8_windows() -> WindowAssigner {
    WindowAssigner::tumbling_event_time(Duration::from_millis(Q8_WINDOW_MS))
}

/// q1's conversion, as Beam's `Query1`: `price * 89 / 100` in integer arithmetic.
pub fn dollars_to_euros(price: u64) -> u64 {
    price * 89 / 100
}

/// Whether `bid` can win the auction open over `[date_time, expires)` with `reserve` (Beam's
/// `WinningBids`: in the auction's lifetime and at least the reserve price).
pub fn bid_wins_eligible(date_time: i64, expires: i64, reserve: u64, bid: &Bid) -> bool {
    bid.date_time >= date_time && bid.date_time < expires && bid.price >= reserve
}

/// The largest disorder of event times the generator produces with `config`: a shuffled group
/// spans `out_of_order_group_size` event numbers.
pub fn max_disorder(config: &GeneratorConfig) -> Duration {
    let ms = config.out_of_order_group_size.saturating_mul(1000) / config.events_per_second.max(1);
    Duration::from_millis(ms + 1)
}

/// The first `events` events of the stream of `(config, seed)`, with event time and
/// watermarks.
pub fn source(env: &StreamEnvironment, config: &GeneratorConfig, events: u64, seed: u64) -> DataStream<Event> {
    let generator = NexmarkGenerator::new(config.clone(), seed);
    env.from_source("Source: Nexmark", None, move |ctx| {
        Ok(NexmarkSource::new(generator.clone(), events, ctx.subtask, ctx.parallelism))
    })
    .assign_timestamps_and_watermarks(
        WatermarkStrategy::for_bounded_out_of_orderness(max_disorder(config))
            .with_timestamp_assigner(|e: &Event| e.date_time()),
    )
}

/// The first `events` events, for the references.
pub fn events(config: &GeneratorConfig, events: u64, seed: u64) -> Vec<Event> {
    let generator = NexmarkGenerator::new(config.clone(), seed);
    (0..events).map(|n| generator.event(n)).collect()
}

pub fn bids(events: DataStream<Event>) -> DataStream<Bid> {
    events
        .flat_map(|e| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        })
        .name("Bids")
        .with_timestamps(|b: &Bid| b.date_time)
}

pub fn auctions(events: DataStream<Event>) -> DataStream<Auction> {
    events
        .flat_map(|e| match e {
            Event::Auction(a) => Some(a),
            _ => None,
        })
        .name("Auctions")
        .with_timestamps(|a: &Auction| a.date_time)
}

pub fn persons(events: DataStream<Event>) -> DataStream<Person> {
    events
        .flat_map(|e| match e {
            Event::Person(p) => Some(p),
            _ => None,
        })
        .name("Persons")
        .with_timestamps(|p: &Person| p.date_time)
}

/// q0, pass-through: every event through one map (the cost of the source and the sink).
pub fn q0_stream(events: DataStream<Event>) -> DataStream<Event> {
    events.map(|e| e).name("q0: pass-through")
}

/// q1, currency conversion: every bid with its price in euros.
pub fn q1_stream(events: DataStream<Event>) -> DataStream<Bid> {
    bids(events).map(|b| Bid { price: dollars_to_euros(b.price), ..b }).name("q1: to euros")
}

/// q2, selection: (auction, price) of the bids on every 123rd auction.
pub fn q2_stream(events: DataStream<Event>) -> DataStream<Q2Out> {
    bids(events).filter(|b| b.auction % Q2_AUCTION_MODULUS == 0).map(|b| (b.auction, b.price)).name("q2: selection")
}

/// q3, local item suggestion: sellers in OR, ID or CA joined with their category-10 auctions,
/// without a window (Beam's `Query3`: people are kept for good, auctions wait for their
/// seller).
pub fn q3_stream(events: DataStream<Event>) -> DataStream<Q3Out> {
    let people = persons(events.clone()).filter(|p| Q3_STATES.contains(&p.state.as_str()));
    let items = auctions(events).filter(|a| a.category == Q3_CATEGORY);
    people.connect(items).key_by(|p: &Person| p.id, |a: &Auction| a.seller).process(Q3Join::default).name("q3: join")
}

/// q3's join: per seller, the person once seen, and the auctions seen before them. The
/// handles are declared in `open`; `None` before it.
#[derive(Default)]
pub struct Q3Join {
    /// (name, city, state) of the seller.
    person: Option<ValueState<u64, (), (String, String, String)>>,
    /// Ids of the seller's auctions that came before the seller.
    waiting: Option<ListState<u64, (), u64>>,
}

impl std::fmt::Debug for Q3Join {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q3Join").field("open", &self.person.is_some()).finish()
    }
}

impl KeyedCoProcessFunction<u64, Person, Auction, Q3Out> for Q3Join {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.person = Some(
            ctx.state()
                .value_state(&ValueStateDescriptor::new("q3 person"))
                .expect("q3: cannot declare the person state"),
        );
        self.waiting = Some(
            ctx.state()
                .list_state(&ListStateDescriptor::new("q3 waiting auctions"))
                .expect("q3: cannot declare the waiting-auctions state"),
        );
    }

    fn process_element1(&mut self, p: Person, ctx: &mut KeyedContext<'_, u64, Q3Out>) {
        let waiting = self.waiting.as_mut().expect("opened");
        if !waiting.is_empty() {
            for auction in waiting.get() {
                ctx.collect((p.name.clone(), p.city.clone(), p.state.clone(), auction));
            }
            waiting.clear();
        }
        self.person.as_mut().expect("opened").update((p.name, p.city, p.state));
    }

    fn process_element2(&mut self, a: Auction, ctx: &mut KeyedContext<'_, u64, Q3Out>) {
        match self.person.as_ref().expect("opened").value() {
            Some((name, city, state)) => ctx.collect((name, city, state, a.id)),
            None => {
                self.waiting.as_mut().expect("opened").add(a.id);
            }
        }
    }
}

/// q4, average price per category: each auction's winning bid (see [`bid_wins_eligible`]),
/// decided when the watermark passes its expiry, then a running average per category; the
/// last row of a category is its result.
pub fn q4_stream(events: DataStream<Event>) -> DataStream<Q4Out> {
    winning_bids_stream(events)
        .map(|(_, category, price)| (category, 1, price, price))
        .key_by(|r: &Q4Out| r.0)
        .reduce(|a, b| {
            let (n, sum) = (a.1 + b.1, a.2 + b.2);
            (a.0, n, sum, sum / n)
        })
        .name("q4: average per category")
}

/// (auction id, category, winning price) of every auction that has a winning bid, emitted
/// when the auction closes.
pub fn winning_bids_stream(events: DataStream<Event>) -> DataStream<(u64, u64, u64)> {
    auctions(events.clone())
        .connect(bids(events))
        .key_by(|a: &Auction| a.id, |b: &Bid| b.auction)
        .process(WinningBids::default)
        .name("Winning bids")
}

/// Per auction: the auction's terms once seen, its best eligible price, and the bids that came
/// before the auction (they can still be in its lifetime when their times are equal). The
/// handles are declared in `open`; `None` before it.
#[derive(Default)]
pub struct WinningBids {
    open: Option<ValueState<u64, (), OpenAuction>>,
    /// (date_time, price) of the bids that came before their auction.
    early: Option<ListState<u64, (), (i64, u64)>>,
}

impl std::fmt::Debug for WinningBids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WinningBids").field("open", &self.open.is_some()).finish()
    }
}

#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
#[rkyv(crate = corestream::rkyv)]
struct OpenAuction {
    date_time: i64,
    expires: i64,
    reserve: u64,
    category: u64,
    best: Option<u64>,
}

impl OpenAuction {
    fn offer(&mut self, bid: &Bid) {
        if bid_wins_eligible(self.date_time, self.expires, self.reserve, bid) {
            self.best = Some(self.best.map_or(bid.price, |b| b.max(bid.price)));
        }
    }
}

impl KeyedCoProcessFunction<u64, Auction, Bid, (u64, u64, u64)> for WinningBids {
    fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
        self.open = Some(
            ctx.state()
                .value_state(&ValueStateDescriptor::new("winning bids: open auction"))
                .expect("winning bids: cannot declare the open-auction state"),
        );
        self.early = Some(
            ctx.state()
                .list_state(&ListStateDescriptor::new("winning bids: early bids"))
                .expect("winning bids: cannot declare the early-bids state"),
        );
    }

    fn process_element1(&mut self, a: Auction, ctx: &mut KeyedContext<'_, u64, (u64, u64, u64)>) {
        let mut open = OpenAuction {
            date_time: a.date_time,
            expires: a.expires,
            reserve: a.reserve,
            category: a.category,
            best: None,
        };
        let early = self.early.as_mut().expect("opened");
        if !early.is_empty() {
            for (date_time, price) in early.get() {
                open.offer(&Bid { auction: a.id, price, date_time, ..empty_bid() });
            }
            early.clear();
        }
        ctx.register_event_time_timer(a.expires);
        self.open.as_mut().expect("opened").update(open);
    }

    fn process_element2(&mut self, b: Bid, ctx: &mut KeyedContext<'_, u64, (u64, u64, u64)>) {
        let offered =
            self.open.as_mut().expect("opened").update_with(|open| open.as_mut().map(|o| o.offer(&b)).is_some());
        if !offered {
            // Dropped when the watermark passes it: an auction seen later starts later.
            ctx.register_event_time_timer(b.date_time);
            self.early.as_mut().expect("opened").add((b.date_time, b.price));
        }
    }

    fn on_timer(&mut self, timestamp: i64, ctx: &mut KeyedContext<'_, u64, (u64, u64, u64)>) {
        let id = *ctx.key();
        let early = self.early.as_mut().expect("opened");
        if !early.is_empty() {
            let mut bids = early.get();
            let before = bids.len();
            bids.retain(|&(t, _)| t > timestamp);
            if bids.is_empty() {
                early.clear();
            } else if bids.len() != before {
                early.update(bids);
            }
        }
        let open = self.open.as_mut().expect("opened");
        if let Some(closed) = open.value().filter(|o| timestamp >= o.expires) {
            open.clear();
            if let Some(price) = closed.best {
                ctx.collect((id, closed.category, price));
            }
        }
    }
}

fn empty_bid() -> Bid {
    Bid {
        auction: 0,
        bidder: 0,
        price: 0,
        channel: String::new(),
        url: String::new(),
        date_time: 0,
        extra: String::new(),
    }
}

/// q5, hot items: bids per auction in sliding 10 s windows every 2 s, then per window every
/// auction with the highest count (ties all reported, as Beam's and Flink's q5 do).
pub fn q5_stream(events: DataStream<Event>) -> DataStream<Q5Out> {
    bids(events)
        .key_by(|b: &Bid| b.auction)
        .window(q5_windows())
        .aggregate_process(CountAgg, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<Q5Out>| {
            out.push((ctx.window.start, ctx.window.end, *ctx.key, n))
        })
        .name("q5: bids per auction")
        .with_timestamps(|r: &Q5Out| r.1 - 1)
        .key_by(|r: &Q5Out| r.1)
        .window(WindowAssigner::tumbling_event_time(Duration::from_millis(Q5_SLIDE_MS)))
        .process(|_: &WindowContext<'_, i64>, rows: Vec<Q5Out>, out: &mut Vec<Q5Out>| {
            let max = rows.iter().map(|r| r.3).max().unwrap_or(0);
            out.extend(rows.into_iter().filter(|r| r.3 == max));
        })
        .name("q5: hottest per window")
}

/// The bids with the highest price (all of them on a tie).
#[derive(Debug, Clone, Copy)]
pub struct MaxBids;

impl corestream::AggregateFunction<Bid, Vec<Bid>, Vec<Bid>> for MaxBids {
    fn create_accumulator(&self) -> Vec<Bid> {
        Vec::new()
    }

    fn add(&self, bid: &Bid, acc: &mut Vec<Bid>) {
        match acc.first().map(|b| b.price) {
            Some(max) if bid.price < max => {}
            Some(max) if bid.price == max => acc.push(bid.clone()),
            _ => *acc = vec![bid.clone()],
        }
    }

    fn get_result(&self, acc: &Vec<Bid>) -> Vec<Bid> {
        acc.clone()
    }

    fn merge(&self, a: &mut Vec<Bid>, b: Vec<Bid>) {
        for bid in &b {
            self.add(bid, a);
        }
    }
}

/// q7, highest bid: per tumbling 10 s window, every bid at the window's highest price. The
/// maximum is taken per auction first, then over those per window (keyed by the window's
/// number), so the first stage runs in parallel.
pub fn q7_stream(events: DataStream<Event>) -> DataStream<Q7Out> {
    let size = Q7_WINDOW_MS as i64;
    bids(events)
        .key_by(|b: &Bid| b.auction)
        .window(q7_windows())
        .aggregate_process(MaxBids, |_: &WindowContext<'_, u64>, bids: Vec<Bid>, out: &mut Vec<Bid>| out.extend(bids))
        .name("q7: highest bid per auction")
        .with_timestamps(|b: &Bid| b.date_time)
        .key_by(move |b: &Bid| b.date_time.div_euclid(size))
        .window(q7_windows())
        .aggregate_process(MaxBids, |ctx: &WindowContext<'_, i64>, bids: Vec<Bid>, out: &mut Vec<Q7Out>| {
            let (start, end) = (ctx.window.start, ctx.window.end);
            out.extend(bids.into_iter().map(|b| (start, end, b.auction, b.bidder, b.price, b.date_time)))
        })
        .name("q7: highest bid")
}

/// q8, new users: people joined with the auctions they opened in the same tumbling 10 s
/// window (Beam's `Query8`: one row per person and auction).
pub fn q8_stream(events: DataStream<Event>) -> DataStream<Q8Out> {
    persons(events.clone())
        .join(auctions(events))
        .where_key(|p: &Person| p.id)
        .equal_to(|a: &Auction| a.seller)
        .window(q8_windows())
        .co_group(|ctx: &WindowContext<'_, u64>, people: Vec<Person>, items: Vec<Auction>, out: &mut Vec<Q8Out>| {
            for p in &people {
                out.extend(items.iter().map(|a| (p.id, p.name.clone(), a.reserve, ctx.window.start)));
            }
        })
        .name("q8: new users")
}

/// q11, user sessions: bids per bidder in event-time sessions with a 10 s gap.
pub fn q11_stream(events: DataStream<Event>) -> DataStream<Q11Out> {
    bids(events)
        .key_by(|b: &Bid| b.bidder)
        .window(WindowAssigner::event_time_session(Duration::from_millis(Q11_SESSION_GAP_MS as u64)))
        .aggregate_process(CountAgg, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<Q11Out>| {
            out.push((*ctx.key, n, ctx.window.start, ctx.window.end))
        })
        .name("q11: user sessions")
}

/// q12, processing-time windows: bids per bidder in tumbling 10 s processing-time windows.
pub fn q12_stream(events: DataStream<Event>) -> DataStream<Q12Out> {
    bids(events)
        .key_by(|b: &Bid| b.bidder)
        .window(WindowAssigner::tumbling_processing_time(Duration::from_millis(Q12_WINDOW_MS)))
        .aggregate_process(CountAgg, |ctx: &WindowContext<'_, u64>, n: u64, out: &mut Vec<Q12Out>| {
            out.push((*ctx.key, n, ctx.window.start, ctx.window.end))
        })
        .name("q12: processing-time windows")
}

macro_rules! collecting {
    ($($(#[$doc:meta])* $name:ident = $stream:ident -> $out:ty;)*) => {$(
        $(#[$doc])*
        pub fn $name(env: &StreamEnvironment, config: &GeneratorConfig, events: u64, seed: u64) -> CollectStream<$out> {
            $stream(source(env, config, events, seed)).collect()
        }
    )*};
}

collecting! {
    /// q0 on the first `events` events, into a collect sink.
    q0 = q0_stream -> Event;
    /// q1 on the first `events` events, into a collect sink.
    q1 = q1_stream -> Bid;
    /// q2 on the first `events` events, into a collect sink.
    q2 = q2_stream -> Q2Out;
    /// q3 on the first `events` events, into a collect sink.
    q3 = q3_stream -> Q3Out;
    /// q4 on the first `events` events, into a collect sink.
    q4 = q4_stream -> Q4Out;
    /// q5 on the first `events` events, into a collect sink.
    q5 = q5_stream -> Q5Out;
    /// q7 on the first `events` events, into a collect sink.
    q7 = q7_stream -> Q7Out;
    /// q8 on the first `events` events, into a collect sink.
    q8 = q8_stream -> Q8Out;
    /// q11 on the first `events` events, into a collect sink.
    q11 = q11_stream -> Q11Out;
    /// q12 on the first `events` events, into a collect sink.
    q12 = q12_stream -> Q12Out;
}
