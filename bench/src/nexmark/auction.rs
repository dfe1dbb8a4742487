//! Auctions, as Beam's `AuctionGenerator`: an auction's id is the count of auctions before it;
//! its seller is the current hot seller (a multiple of [`HOT_ID_STRIDE`]) with probability
//! `1 - 1 / hot_seller_ratio`, else a recent person; it lasts up to twice the event time in
//! which `num_in_flight_auctions` auctions are created, so about that many are open at once.

use super::config::{
    GeneratorConfig, AUCTION_ID_LEAD, FIRST_AUCTION_ID, FIRST_CATEGORY_ID, FIRST_PERSON_ID, HOT_ID_STRIDE,
    NUM_CATEGORIES,
};
use super::model::Auction;
use super::person::next_base0_person_id;
use super::rng::SplitMix64;
use super::strings::{next_extra, next_price, next_string};

/// `event_number` is the (adjusted) event number whose timestamp is `date_time`.
pub(crate) fn next_auction(
    config: &GeneratorConfig,
    event_number: u64,
    event_id: u64,
    rng: &mut SplitMix64,
    date_time: i64,
) -> Auction {
    let id =
        config.last_base0_auction_id(event_id).expect("an auction event follows its own creation") + FIRST_AUCTION_ID;
    let seller = if rng.below(config.hot_seller_ratio) > 0 {
        config.last_base0_person_id(event_id) / HOT_ID_STRIDE * HOT_ID_STRIDE
    } else {
        next_base0_person_id(config, event_id, rng)
    } + FIRST_PERSON_ID;
    let category = FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES);
    let initial_bid = next_price(rng);
    let expires = date_time + next_auction_length_ms(config, event_number, rng, date_time);
    let item_name = next_string(rng, 20, ' ');
    let description = next_string(rng, 100, ' ');
    let reserve = initial_bid + next_price(rng);
    let size = 8 + item_name.len() + description.len() + 8 + 8 + 8 + 8 + 8;
    let extra = next_extra(rng, size, config.avg_auction_bytes);
    Auction { id, item_name, description, initial_bid, reserve, date_time, expires, seller, category, extra }
}

fn next_auction_length_ms(config: &GeneratorConfig, event_number: u64, rng: &mut SplitMix64, date_time: i64) -> i64 {
    let horizon_end = config.timestamp_ms(event_number + config.events_per_auction_horizon());
    let horizon_ms = horizon_end.saturating_sub(date_time);
    1 + rng.below(horizon_ms.saturating_mul(2).max(1) as u64) as i64
}

/// A base-0 auction id among the `num_in_flight_auctions` most recent at `event_id` of a bid,
/// or up to [`AUCTION_ID_LEAD`] auctions not yet created.
pub(crate) fn next_base0_auction_id(config: &GeneratorConfig, event_id: u64, rng: &mut SplitMix64) -> u64 {
    let max = config.last_base0_auction_id(event_id).expect("a bid follows at least one auction");
    let min = max.saturating_sub(config.num_in_flight_auctions);
    min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
}
