//! People, as Beam's `PersonGenerator`: a person's id is the count of people before it, its
//! name, city and state come from small fixed lists (so queries q3 and q8 find matches), and
//! `next_base0_person_id` picks a recently created person for a cold seller or bidder.

use super::config::{GeneratorConfig, FIRST_PERSON_ID, PERSON_ID_LEAD};
use super::model::Person;
use super::rng::SplitMix64;
use super::strings::{next_extra, next_string};

const FIRST_NAMES: [&str; 11] =
    ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
pub(crate) const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] =
    ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];

pub(crate) fn next_person(config: &GeneratorConfig, event_id: u64, rng: &mut SplitMix64, date_time: i64) -> Person {
    let id = config.last_base0_person_id(event_id) + FIRST_PERSON_ID;
    let name = format!("{} {}", rng.pick(&FIRST_NAMES), rng.pick(&LAST_NAMES));
    let email_address = format!("{}@{}.com", next_string(rng, 7, ' '), next_string(rng, 5, ' '));
    let credit_card = (0..4).map(|_| format!("{:04}", rng.below(10_000))).collect::<Vec<_>>().join(" ");
    let city = rng.pick(&US_CITIES).to_string();
    let state = rng.pick(&US_STATES).to_string();
    let size = 8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
    let extra = next_extra(rng, size, config.avg_person_bytes);
    Person { id, name, email_address, credit_card, city, state, date_time, extra }
}

/// A base-0 person id among the `num_active_people` most recent at `event_id`, or up to
/// [`PERSON_ID_LEAD`] people not yet created.
pub(crate) fn next_base0_person_id(config: &GeneratorConfig, event_id: u64, rng: &mut SplitMix64) -> u64 {
    let num_people = config.last_base0_person_id(event_id) + 1;
    let active = num_people.min(config.num_active_people);
    num_people - active + rng.below(active + PERSON_ID_LEAD)
}
