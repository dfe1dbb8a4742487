//! Bids, as Beam's `BidGenerator` with the channel and url of Flink's port: a bid goes to the
//! current hot auction (a multiple of [`HOT_ID_STRIDE`]) with probability
//! `1 - 1 / hot_auction_ratio`, else to an in-flight auction; its bidder is the current hot
//! bidder (one past a multiple of the stride) with probability `1 - 1 / hot_bidder_ratio`,
//! else a recent person. Half the bids come through one of four hot channels, the rest through
//! one of [`CHANNELS_NUMBER`] channels whose url derives from the channel number and seed.

use super::auction::next_base0_auction_id;
use super::config::{GeneratorConfig, FIRST_AUCTION_ID, FIRST_PERSON_ID, HOT_ID_STRIDE};
use super::model::Bid;
use super::person::next_base0_person_id;
use super::rng::SplitMix64;
use super::strings::{next_extra, next_price, next_string};

/// Number of cold channels.
pub const CHANNELS_NUMBER: u64 = 10_000;
const HOT_CHANNELS_RATIO: u64 = 2;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/goog/item/a/item.htm?query=1",
    "https://www.nexmark.com/face/item/b/item.htm?query=1",
    "https://www.nexmark.com/baid/item/c/item.htm?query=1",
    "https://www.nexmark.com/appl/item/d/item.htm?query=1",
];
/// Keeps the channels' random streams apart from the events' (event ids stay far below).
const CHANNEL_STREAM_BASE: u64 = 1 << 63;

pub(crate) fn next_bid(
    config: &GeneratorConfig,
    seed: u64,
    event_id: u64,
    rng: &mut SplitMix64,
    date_time: i64,
) -> Bid {
    let auction = if rng.below(config.hot_auction_ratio) > 0 {
        config.last_base0_auction_id(event_id).expect("a bid follows at least one auction") / HOT_ID_STRIDE
            * HOT_ID_STRIDE
    } else {
        next_base0_auction_id(config, event_id, rng)
    } + FIRST_AUCTION_ID;
    let bidder = if rng.below(config.hot_bidder_ratio) > 0 {
        config.last_base0_person_id(event_id) / HOT_ID_STRIDE * HOT_ID_STRIDE + 1
    } else {
        next_base0_person_id(config, event_id, rng)
    } + FIRST_PERSON_ID;
    let price = next_price(rng);
    let (channel, url) = if rng.below(HOT_CHANNELS_RATIO) > 0 {
        let i = rng.index(HOT_CHANNELS.len());
        (HOT_CHANNELS[i].to_owned(), HOT_URLS[i].to_owned())
    } else {
        channel_and_url(seed, rng.below(CHANNELS_NUMBER))
    };
    let extra = next_extra(rng, 8 + 8 + 8 + 8, config.avg_bid_bytes);
    Bid { auction, bidder, price, channel, url, date_time, extra }
}

/// Flink's channel cache entry: `channel-N` and a random item url, which nine channels in ten
/// tag with a `channel_id`.
fn channel_and_url(seed: u64, channel: u64) -> (String, String) {
    let mut rng = SplitMix64::new(seed, CHANNEL_STREAM_BASE | channel);
    let mut url = format!(
        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
        next_string(&mut rng, 5, '_'),
        next_string(&mut rng, 5, '_'),
        next_string(&mut rng, 5, '_'),
    );
    if rng.below(10) > 0 {
        let channel_id = (channel as i32).reverse_bits().unsigned_abs();
        url.push_str(&format!("&channel_id={channel_id}"));
    }
    (format!("channel-{channel}"), url)
}
