//! Properties of the generated stream as a whole: determinism, resumption, the event mix, the
//! id references between events, timestamps and record sizes.

use proptest::prelude::*;

use super::config::{
    AUCTION_ID_LEAD, FIRST_AUCTION_ID, FIRST_CATEGORY_ID, FIRST_PERSON_ID, HOT_ID_STRIDE, NUM_CATEGORIES,
    PERSON_ID_LEAD,
};
use super::{Auction, Bid, Event, GeneratorConfig, NexmarkGenerator, Person};

const N: u64 = 100_000;

fn run(seed: u64, events: u64) -> Vec<Event> {
    NexmarkGenerator::new(GeneratorConfig { max_events: Some(events), ..GeneratorConfig::default() }, seed).collect()
}

struct Split {
    people: Vec<Person>,
    auctions: Vec<Auction>,
    bids: Vec<Bid>,
}

fn split(events: Vec<Event>) -> Split {
    let mut out = Split { people: vec![], auctions: vec![], bids: vec![] };
    for event in events {
        match event {
            Event::Person(p) => out.people.push(p),
            Event::Auction(a) => out.auctions.push(a),
            Event::Bid(b) => out.bids.push(b),
        }
    }
    out
}

fn fraction<T>(items: &[T], pred: impl Fn(&T) -> bool) -> f64 {
    items.iter().filter(|x| pred(x)).count() as f64 / items.len() as f64
}

#[test]
fn same_seed_gives_same_events_and_another_seed_others() {
    let a = run(42, 5_000);
    assert_eq!(a.len(), 5_000);
    assert_eq!(a, run(42, 5_000));
    let b = run(43, 5_000);
    assert_eq!(a.iter().map(Event::date_time).collect::<Vec<_>>(), b.iter().map(Event::date_time).collect::<Vec<_>>());
    assert!(a.iter().zip(&b).filter(|(x, y)| x != y).count() > 4_900);
}

#[test]
fn resuming_at_an_offset_yields_the_tail_of_a_full_run() {
    let config = GeneratorConfig { max_events: Some(3_000), ..GeneratorConfig::default() };
    let full: Vec<Event> = NexmarkGenerator::new(config.clone(), 9).collect();
    for offset in [0, 1, 49, 50, 1_234, 2_999, 3_000] {
        let resumed = NexmarkGenerator::at_offset(config.clone(), 9, offset);
        assert_eq!(resumed.size_hint(), (3_000 - offset as usize, Some(3_000 - offset as usize)));
        assert_eq!(resumed.collect::<Vec<_>>(), full[offset as usize..]);
    }
    let mut generator = NexmarkGenerator::new(config, 9);
    generator.by_ref().take(700).for_each(drop);
    assert_eq!(generator.offset(), 700);
    generator.seek(100);
    assert_eq!(generator.next().as_ref(), Some(&full[100]));
}

proptest! {
    #[test]
    fn any_offset_resumes_the_same_stream(seed in any::<u64>(), offset in 0u64..1_000_000_000, group in 1u64..20) {
        let config = GeneratorConfig { out_of_order_group_size: group, ..GeneratorConfig::default() };
        let generator = NexmarkGenerator::new(config.clone(), seed);
        let resumed: Vec<Event> = NexmarkGenerator::at_offset(config, seed, offset).take(60).collect();
        let direct: Vec<Event> = (offset..offset + 60).map(|n| generator.event(n)).collect();
        prop_assert_eq!(resumed, direct);
    }
}

#[test]
fn the_mix_is_2_6_92_percent() {
    let s = split(run(1, N));
    let share = |n: usize| n as f64 / N as f64;
    assert!((share(s.people.len()) - 0.02).abs() < 0.002, "{}", s.people.len());
    assert!((share(s.auctions.len()) - 0.06).abs() < 0.003, "{}", s.auctions.len());
    assert!((share(s.bids.len()) - 0.92).abs() < 0.005, "{}", s.bids.len());
}

#[test]
fn people_and_auctions_are_numbered_in_creation_order() {
    let s = split(run(2, N));
    assert!(s.people.iter().enumerate().all(|(i, p)| p.id == FIRST_PERSON_ID + i as u64));
    assert!(s.auctions.iter().enumerate().all(|(i, a)| a.id == FIRST_AUCTION_ID + i as u64));
}

#[test]
fn bids_and_auctions_refer_to_existing_or_imminent_ids_with_hot_ones_dominating() {
    let config = GeneratorConfig::default();
    let generator = NexmarkGenerator::new(config.clone(), 3);
    let (mut bids, mut auctions) = (vec![], vec![]);
    let (mut people_so_far, mut auctions_so_far) = (0u64, 0u64);
    for n in 0..N {
        match generator.event(n) {
            Event::Person(_) => people_so_far += 1,
            Event::Auction(a) => {
                auctions_so_far += 1;
                assert!(a.seller >= FIRST_PERSON_ID && a.seller < FIRST_PERSON_ID + people_so_far + PERSON_ID_LEAD);
                assert!((FIRST_CATEGORY_ID..FIRST_CATEGORY_ID + NUM_CATEGORIES).contains(&a.category));
                assert!(a.reserve >= a.initial_bid && a.expires > a.date_time);
                auctions.push(a);
            }
            Event::Bid(b) => {
                assert!(
                    b.auction >= FIRST_AUCTION_ID && b.auction < FIRST_AUCTION_ID + auctions_so_far + AUCTION_ID_LEAD
                );
                assert!(b.auction + config.num_in_flight_auctions + 1 >= FIRST_AUCTION_ID + auctions_so_far);
                assert!(b.bidder >= FIRST_PERSON_ID && b.bidder < FIRST_PERSON_ID + people_so_far + PERSON_ID_LEAD);
                bids.push(b);
            }
        }
    }
    let hot_auctions = fraction(&bids, |b| (b.auction - FIRST_AUCTION_ID).is_multiple_of(HOT_ID_STRIDE));
    assert!((0.47..0.56).contains(&hot_auctions), "{hot_auctions}");
    let hot_bidders = fraction(&bids, |b| (b.bidder - FIRST_PERSON_ID) % HOT_ID_STRIDE == 1);
    assert!((0.72..0.79).contains(&hot_bidders), "{hot_bidders}");
    let hot_sellers = fraction(&auctions, |a| (a.seller - FIRST_PERSON_ID).is_multiple_of(HOT_ID_STRIDE));
    assert!((0.72..0.80).contains(&hot_sellers), "{hot_sellers}");
    let hot_channels = fraction(&bids, |b| !b.channel.starts_with("channel-"));
    assert!((0.48..0.52).contains(&hot_channels), "{hot_channels}");
}

#[test]
fn timestamps_advance_at_the_configured_rate() {
    let config = GeneratorConfig { events_per_second: 1_000, max_events: Some(N), ..GeneratorConfig::default() };
    let events: Vec<Event> = NexmarkGenerator::new(config.clone(), 4).collect();
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event.date_time(), config.base_time_ms + n as i64);
    }
    let fast = GeneratorConfig { events_per_second: 3_000_000, ..config };
    let times: Vec<i64> = NexmarkGenerator::new(fast.clone(), 4).map(|e| e.date_time()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(times.last().copied(), Some(fast.base_time_ms + (N as i64 - 1) * 1000 / 3_000_000));
}

#[test]
fn out_of_order_groups_shuffle_ids_and_times_within_each_group() {
    let config = GeneratorConfig {
        out_of_order_group_size: 10,
        events_per_second: 1_000,
        max_events: Some(1_000),
        ..GeneratorConfig::default()
    };
    let events: Vec<Event> = NexmarkGenerator::new(config.clone(), 5).collect();
    let times: Vec<i64> = events.iter().map(Event::date_time).collect();
    assert!(times.windows(2).any(|w| w[0] > w[1]));
    for (group, chunk) in times.chunks(10).enumerate() {
        let mut sorted = chunk.to_vec();
        sorted.sort_unstable();
        let expected: Vec<i64> = (group as u64 * 10..group as u64 * 10 + 10).map(|n| config.timestamp_ms(n)).collect();
        assert_eq!(sorted, expected);
    }
}

#[test]
fn records_average_their_configured_sizes() {
    let s = split(run(6, N));
    let mean = |sizes: Vec<usize>| sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    let bid_bytes = mean(s.bids.iter().map(|b| 32 + b.extra.len()).collect());
    assert!((bid_bytes - 100.0).abs() < 2.0, "{bid_bytes}");
    let auction_bytes =
        mean(s.auctions.iter().map(|a| 48 + a.item_name.len() + a.description.len() + a.extra.len()).collect());
    assert!((auction_bytes - 500.0).abs() < 5.0, "{auction_bytes}");
    let person_bytes = mean(
        s.people
            .iter()
            .map(|p| {
                8 + p.name.len()
                    + p.email_address.len()
                    + p.credit_card.len()
                    + p.city.len()
                    + p.state.len()
                    + p.extra.len()
            })
            .collect(),
    );
    assert!((person_bytes - 200.0).abs() < 5.0, "{person_bytes}");
}

#[test]
fn invalid_config_is_refused() {
    let config = GeneratorConfig { hot_auction_ratio: 0, ..GeneratorConfig::default() };
    let err = NexmarkGenerator::try_new(config, 0, 0).unwrap_err();
    assert_eq!(err.field, "hot_auction_ratio");
}

/// Reads a Nexmark source subtask to its end (or `cap` events), `batch` at a time.
fn read_source(source: &mut super::NexmarkSource, batch: usize, cap: usize) -> Vec<Event> {
    use corestream::{SourceFunction, SourceStatus};
    let mut out = Vec::new();
    while out.len() < cap {
        let want = batch.min(cap - out.len());
        if source.next_batch(&mut out, want).unwrap() == SourceStatus::Finished {
            break;
        }
    }
    out
}

#[test]
fn the_nexmark_source_resumes_at_its_recorded_offset() {
    use corestream::SourceFunction;
    let generator = NexmarkGenerator::new(GeneratorConfig::default(), 11);
    let events = 2_000;
    for (subtask, parallelism) in [(0, 1), (0, 3), (2, 3)] {
        let make = || super::NexmarkSource::new(generator.clone(), events, subtask, parallelism);
        let all = read_source(&mut make(), 64, usize::MAX);
        let expected: Vec<Event> =
            (subtask as u64..events).step_by(parallelism as usize).map(|n| generator.event(n)).collect();
        assert_eq!(all, expected);
        for k in [0, 1, 63, 64, 65, all.len() / 2, all.len()] {
            let mut first = make();
            let mut got = read_source(&mut first, 64, k);
            let position = first.snapshot_state().unwrap();
            let mut second = make();
            second.restore_state(&position).unwrap();
            got.extend(read_source(&mut second, 64, usize::MAX));
            assert_eq!(got, all, "subtask {subtask}/{parallelism} restored after {k} events");
        }
    }
    let mut a = super::NexmarkSource::new(generator.clone(), events, 0, 3);
    read_source(&mut a, 10, 10);
    let position = a.snapshot_state().unwrap();
    let mut b = super::NexmarkSource::new(generator, events, 1, 3);
    let err = b.restore_state(&position).unwrap_err().to_string();
    assert!(err.contains("not in this subtask's share"), "{err}");
    assert!(b.restore_state(b"NXM1").is_err(), "truncated");
}
