//! Golden results of the Nexmark queries: each DataStream job of `corestream_bench::nexmark::
//! queries` on a small seeded run, at parallelism 1 and 2, equals the single-threaded
//! reference of `nexmark::reference` exactly (rows sorted). Events run at 500 per second of
//! event time, so 40 000 events span 80 s: several windows of every kind.

use std::fmt::Debug;

use corestream::{CollectStream, StreamEnvironment};
use corestream_bench::nexmark::model::Event;
use corestream_bench::nexmark::{queries as q, reference as r, GeneratorConfig};
use corestream_tests::cluster;

const EVENTS: u64 = 40_000;
const SEED: u64 = 42;

fn config() -> GeneratorConfig {
    GeneratorConfig { events_per_second: 500, ..GeneratorConfig::default() }
}

/// Runs the job `build` declares at parallelism `p` and returns its rows.
fn run<T, F>(p: u32, build: F) -> Vec<T>
where
    F: Fn(&StreamEnvironment, &GeneratorConfig, u64, u64) -> CollectStream<T>,
{
    let cluster = cluster(p);
    let mut env = cluster.environment();
    env.set_parallelism(p);
    let out = build(&env, &config(), EVENTS, SEED);
    let job = env.execute_async("nexmark").unwrap();
    let rows: Vec<T> = out.collect();
    job.join().unwrap();
    rows
}

fn events() -> Vec<Event> {
    q::events(&config(), EVENTS, SEED)
}

/// The job's sorted rows equal `want` at parallelism 1 and 2; `want` must not be trivial.
fn golden<T, F>(name: &str, want: Vec<T>, min_rows: usize, build: F)
where
    T: Ord + Debug,
    F: Fn(&StreamEnvironment, &GeneratorConfig, u64, u64) -> CollectStream<T>,
{
    assert!(want.len() >= min_rows, "{name}: the reference has only {} rows", want.len());
    for p in [1, 2] {
        let mut got = run(p, &build);
        got.sort_unstable();
        assert_eq!(got.len(), want.len(), "{name} at parallelism {p}: row count");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!("{name} at parallelism {p}: row {i} is {:?}, the reference says {:?}", got[i], want[i]);
        }
    }
}

#[test]
fn q0_passes_every_event_through() {
    let key = |e: &Event| format!("{e:?}");
    let mut want = r::reference_q0(&events());
    want.sort_by_cached_key(key);
    for p in [1, 2] {
        let mut got = run(p, q::q0);
        got.sort_by_cached_key(key);
        assert!(got == want, "q0 at parallelism {p}: {} events, {} expected", got.len(), want.len());
    }
}

#[test]
fn q1_converts_every_bid_price() {
    let key = |b: &corestream_bench::nexmark::Bid| format!("{b:?}");
    let mut want = r::reference_q1(&events());
    assert!(want.len() > 30_000);
    want.sort_by_cached_key(key);
    for p in [1, 2] {
        let mut got = run(p, q::q1);
        got.sort_by_cached_key(key);
        assert!(got == want, "q1 at parallelism {p}: {} bids, {} expected", got.len(), want.len());
    }
}

#[test]
fn q2_selects_the_bids_on_every_123rd_auction() {
    golden("q2", r::reference_q2(&events()), 10, q::q2);
}

#[test]
fn q3_joins_local_sellers_with_their_auctions() {
    golden("q3", r::reference_q3(&events()), 10, q::q3);
}

#[test]
fn q4_averages_winning_prices_per_category() {
    let want = r::reference_q4(&events());
    assert!(want.len() >= 3, "q4: {want:?}");
    for p in [1, 2] {
        let rows = run(p, q::q4);
        // The running averages end, per category, at the row that counts every winner.
        let mut last: std::collections::BTreeMap<u64, q::Q4Out> = std::collections::BTreeMap::new();
        for row in rows {
            let e = last.entry(row.0).or_insert(row);
            if row.1 > e.1 {
                *e = row;
            }
        }
        let got: Vec<q::Q4Out> = last.into_values().collect();
        assert_eq!(got, want, "q4 at parallelism {p}");
    }
}

#[test]
fn q5_reports_the_hottest_auctions_per_sliding_window() {
    golden("q5", r::reference_q5(&events()), 40, q::q5);
}

#[test]
fn q7_reports_the_highest_bids_per_window() {
    golden("q7", r::reference_q7(&events()), 8, q::q7);
}

#[test]
fn q8_joins_new_people_with_their_auctions_per_window() {
    golden("q8", r::reference_q8(&events()), 10, q::q8);
}

#[test]
fn q11_counts_bids_per_user_session() {
    golden("q11", r::reference_q11(&events()), 100, q::q11);
}

#[test]
fn q12_counts_every_bid_in_processing_time_windows() {
    let want = r::reference_q12(&events());
    for p in [1, 2] {
        let rows = run(p, q::q12);
        assert!(rows.iter().all(|w| w.3 - w.2 == q::Q12_WINDOW_MS as i64), "q12 window sizes");
        assert_eq!(r::q12_totals(&rows), want, "q12 at parallelism {p}: bids per bidder");
    }
}
