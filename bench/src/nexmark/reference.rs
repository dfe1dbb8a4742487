//! Straightforward single-threaded reference implementations of the Nexmark queries in
//! [`super::queries`]: loops and maps over the whole event list, with no event time, watermarks
//! or state. The end-to-end tests compare the DataStream jobs with these on small seeded runs
//! (golden results); each function returns its rows in the order `queries` documents, sorted.

use std::collections::{BTreeMap, HashMap};

use corestream::{TimeWindow, WindowAssigner};

use super::model::{Auction, Bid, Event, Person};
use super::queries::{self, Q11Out, Q12Out, Q2Out, Q3Out, Q4Out, Q5Out, Q7Out, Q8Out, Q3_CATEGORY, Q3_STATES};

fn bids(events: &[Event]) -> impl Iterator<Item = &Bid> {
    events.iter().filter_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

fn auctions(events: &[Event]) -> impl Iterator<Item = &Auction> {
    events.iter().filter_map(|e| match e {
        Event::Auction(a) => Some(a),
        _ => None,
    })
}

fn persons(events: &[Event]) -> impl Iterator<Item = &Person> {
    events.iter().filter_map(|e| match e {
        Event::Person(p) => Some(p),
        _ => None,
    })
}

fn windows_of(assigner: WindowAssigner, ts: i64) -> Vec<TimeWindow> {
    let mut out = Vec::new();
    assigner.assign(ts, &mut out);
    out
}

/// q0: every event, unchanged (in input order).
pub fn reference_q0(events: &[Event]) -> Vec<Event> {
    events.to_vec()
}

/// q1: every bid with its price converted by [`queries::dollars_to_euros`].
pub fn reference_q1(events: &[Event]) -> Vec<Bid> {
    bids(events).map(|b| Bid { price: queries::dollars_to_euros(b.price), ..b.clone() }).collect()
}

/// q2: (auction, price) of the bids on auctions that are multiples of
/// [`queries::Q2_AUCTION_MODULUS`], sorted.
pub fn reference_q2(events: &[Event]) -> Vec<Q2Out> {
    let mut out: Vec<Q2Out> =
        bids(events).filter(|b| b.auction % queries::Q2_AUCTION_MODULUS == 0).map(|b| (b.auction, b.price)).collect();
    out.sort_unstable();
    out
}

/// q3: (name, city, state, auction id) for every auction of category [`Q3_CATEGORY`] whose
/// seller is a person in one of [`Q3_STATES`] (an unwindowed inner join), sorted.
pub fn reference_q3(events: &[Event]) -> Vec<Q3Out> {
    let people: HashMap<u64, &Person> =
        persons(events).filter(|p| Q3_STATES.contains(&p.state.as_str())).map(|p| (p.id, p)).collect();
    let mut out: Vec<Q3Out> = auctions(events)
        .filter(|a| a.category == Q3_CATEGORY)
        .filter_map(|a| people.get(&a.seller).map(|p| (p.name.clone(), p.city.clone(), p.state.clone(), a.id)))
        .collect();
    out.sort_unstable();
    out
}

/// The winning price of each auction that has one: the highest bid with
/// `auction.date_time <= bid.date_time < auction.expires` and `price >= reserve` (Beam's
/// `WinningBids`), as (auction id, category, price).
pub fn winning_bids(events: &[Event]) -> Vec<(u64, u64, u64)> {
    let by_id: HashMap<u64, &Auction> = auctions(events).map(|a| (a.id, a)).collect();
    let mut best: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for b in bids(events) {
        let Some(a) = by_id.get(&b.auction) else {
            continue;
        };
        if queries::bid_wins_eligible(a.date_time, a.expires, a.reserve, b) {
            let e = best.entry(a.id).or_insert((a.category, b.price));
            e.1 = e.1.max(b.price);
        }
    }
    best.into_iter().map(|(id, (c, p))| (id, c, p)).collect()
}

/// q4: per category, the final (category, winning auctions, sum, average) of the winning
/// prices, sorted by category.
pub fn reference_q4(events: &[Event]) -> Vec<Q4Out> {
    let mut per: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (_, category, price) in winning_bids(events) {
        let e = per.entry(category).or_default();
        e.0 += 1;
        e.1 += price;
    }
    per.into_iter().map(|(c, (n, s))| (c, n, s, s / n)).collect()
}

/// q5: per sliding window, the auction(s) with the most bids (every auction tied at the
/// maximum), as (window start, window end, auction, bids), sorted.
pub fn reference_q5(events: &[Event]) -> Vec<Q5Out> {
    let assigner = queries::q5_windows();
    let mut counts: BTreeMap<(i64, i64), BTreeMap<u64, u64>> = BTreeMap::new();
    for b in bids(events) {
        for w in windows_of(assigner, b.date_time) {
            *counts.entry((w.start, w.end)).or_default().entry(b.auction).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for ((start, end), per_auction) in counts {
        let max = per_auction.values().copied().max().unwrap_or(0);
        out.extend(per_auction.into_iter().filter(|&(_, n)| n == max).map(|(a, n)| (start, end, a, n)));
    }
    out.sort_unstable();
    out
}

/// q7: per tumbling window, every bid with the window's highest price, as (window start,
/// window end, auction, bidder, price, bid time), sorted.
pub fn reference_q7(events: &[Event]) -> Vec<Q7Out> {
    let assigner = queries::q7_windows();
    let mut per: BTreeMap<(i64, i64), Vec<&Bid>> = BTreeMap::new();
    for b in bids(events) {
        for w in windows_of(assigner, b.date_time) {
            per.entry((w.start, w.end)).or_default().push(b);
        }
    }
    let mut out = Vec::new();
    for ((start, end), bs) in per {
        let max = bs.iter().map(|b| b.price).max().unwrap_or(0);
        out.extend(
            bs.iter().filter(|b| b.price == max).map(|b| (start, end, b.auction, b.bidder, b.price, b.date_time)),
        );
    }
    out.sort_unstable();
    out
}

/// q8: for every person and every auction they opened in the same tumbling window, (person
/// id, name, reserve, window start), sorted.
pub fn reference_q8(events: &[Event]) -> Vec<Q8Out> {
    let assigner = queries::q8_windows();
    let mut people: HashMap<(u64, i64), Vec<&Person>> = HashMap::new();
    for p in persons(events) {
        for w in windows_of(assigner, p.date_time) {
            people.entry((p.id, w.start)).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    for a in auctions(events) {
        for w in windows_of(assigner, a.date_time) {
            for p in people.get(&(a.seller, w.start)).into_iter().flatten() {
                out.push((p.id, p.name.clone(), a.reserve, w.start));
            }
        }
    }
    out.sort_unstable();
    out
}

/// q11: per bidder and session (bids at most the gap apart; a session ends `gap` after its
/// last bid), (bidder, bids, session start, session end), sorted.
pub fn reference_q11(events: &[Event]) -> Vec<Q11Out> {
    let gap = queries::Q11_SESSION_GAP_MS;
    let mut per: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for b in bids(events) {
        per.entry(b.bidder).or_default().push(b.date_time);
    }
    let mut out = Vec::new();
    for (bidder, mut ts) in per {
        ts.sort_unstable();
        let mut start = 0;
        for i in 1..=ts.len() {
            if i == ts.len() || ts[i] > ts[i - 1] + gap {
                out.push((bidder, (i - start) as u64, ts[start], ts[i - 1] + gap));
                start = i;
            }
        }
    }
    out.sort_unstable();
    out
}

/// q12: bids per bidder over the whole run, (bidder, bids), sorted. Processing-time windows
/// depend on the wall clock, so only these totals are comparable.
pub fn reference_q12(events: &[Event]) -> Vec<(u64, u64)> {
    let mut per: BTreeMap<u64, u64> = BTreeMap::new();
    for b in bids(events) {
        *per.entry(b.bidder).or_default() += 1;
    }
    per.into_iter().collect()
}

/// Sums q12's window counts per bidder, for comparison with [`reference_q12`].
pub fn q12_totals(rows: &[Q12Out]) -> Vec<(u64, u64)> {
    let mut per: BTreeMap<u64, u64> = BTreeMap::new();
    for r in rows {
        *per.entry(r.0).or_default() += r.1;
    }
    per.into_iter().collect()
}
