//! The Nexmark event mix, ids and event times, as the spec assigns them (the generator of
//! Beam's and Flink's Nexmark suites: `GeneratorConfig`, `NexmarkGenerator` and the person,
//! auction and bid generators):
//!
//! - event `n` is a person, an auction or a bid by its place in a cycle of
//!   `person + auction + bid` events (1:3:46 by default), so the mix is exact, not sampled;
//! - persons and auctions are numbered from 1000 in the order they are generated;
//! - an auction's seller and a bid's bidder and auction are recent ones: most of them "hot"
//!   (the first person, the second person and the first auction of the newest batch of 100),
//!   the others drawn from the 1000 newest persons or the 100 newest auctions, plus a lead of
//!   up to 10 ids not generated yet (the spec's way of letting a person or an auction appear a
//!   little after the first event naming it);
//! - event `n` happens `n / rate` seconds after the start, in whole milliseconds, so event
//!   times never decrease and do not depend on how fast the events are written.
//!
//! Everything random comes from one seeded [`Values`]: a seed, a start, a rate and a mix give
//! the same events, and a shorter run is a prefix of a longer one.

use super::model::{Auction, Bid, Event, Person, Stream};
use super::values::Values;

pub const FIRST_PERSON_ID: u64 = 1000;
pub const FIRST_AUCTION_ID: u64 = 1000;
pub const FIRST_CATEGORY_ID: u64 = 10;
pub const CATEGORIES: u64 = 5;
/// How far past the newest person or auction a randomly chosen one may be.
pub const ID_LEAD: u64 = 10;
/// Randomly chosen sellers and bidders are among this many newest persons...
const ACTIVE_PEOPLE: u64 = 1000;
/// ...and randomly chosen auctions among this many newest auctions.
const IN_FLIGHT_AUCTIONS: u64 = 100;
/// An auction's seller is hot unless a draw below this is 0 (3 in 4), likewise a bid's bidder
/// (3 in 4) and a bid's auction (1 in 2).
const HOT_SELLERS_RATIO: u64 = 4;
const HOT_BIDDERS_RATIO: u64 = 4;
const HOT_AUCTIONS_RATIO: u64 = 2;
/// Hot persons and auctions are picked from batches of this many ids.
const HOT_BATCH: u64 = 100;
/// The average event sizes the `extra` padding aims at, in bytes (the spec's defaults).
const AVERAGE_PERSON_BYTES: usize = 200;
const AVERAGE_AUCTION_BYTES: usize = 500;
const AVERAGE_BID_BYTES: usize = 100;
/// A share larger than this is refused, so cycle arithmetic cannot overflow.
const MAX_PROPORTION: u64 = 1_000_000;

/// The shares of persons, auctions and bids in the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proportions {
    pub person: u64,
    pub auction: u64,
    pub bid: u64,
}

impl Default for Proportions {
    fn default() -> Proportions {
        Proportions {
            person: 1,
            auction: 3,
            bid: 46,
        }
    }
}

impl Proportions {
    /// `PERSON:AUCTION:BID`, such as `1:3:46`. Persons and auctions need a share of at least
    /// one, since auctions and bids name them.
    pub fn parse(text: &str) -> Result<Proportions, String> {
        let expected = || format!("expected PERSON:AUCTION:BID such as 1:3:46, got `{text}`");
        let parts: Vec<&str> = text.split(':').collect();
        let [person, auction, bid] = parts.as_slice() else {
            return Err(expected());
        };
        let share = |part: &str| {
            part.trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n <= MAX_PROPORTION)
                .ok_or_else(|| format!("{} (whole numbers up to {MAX_PROPORTION})", expected()))
        };
        let proportions = Proportions {
            person: share(person)?,
            auction: share(auction)?,
            bid: share(bid)?,
        };
        if proportions.person == 0 || proportions.auction == 0 {
            return Err(format!(
                "persons and auctions need a share of at least 1 (auctions and bids name them), got `{text}`"
            ));
        }
        Ok(proportions)
    }

    pub fn total(&self) -> u64 {
        self.person + self.auction + self.bid
    }

    /// Which stream event `n` belongs to.
    pub fn kind(&self, n: u64) -> Stream {
        let offset = n % self.total();
        if offset < self.person {
            Stream::Person
        } else if offset < self.person + self.auction {
            Stream::Auction
        } else {
            Stream::Bid
        }
    }

    /// The newest person (counted from 0) at event `n`: the person of `n` when `n` is one.
    pub fn last_person(&self, n: u64) -> u64 {
        let (cycle, offset) = (n / self.total(), n % self.total());
        cycle * self.person + offset.min(self.person - 1)
    }

    /// The newest auction (counted from 0) at event `n`, the auction of `n` when `n` is one;
    /// `None` before the first auction.
    pub fn last_auction(&self, n: u64) -> Option<u64> {
        let (cycle, offset) = (n / self.total(), n % self.total());
        if offset < self.person {
            (cycle * self.auction).checked_sub(1)
        } else {
            Some(cycle * self.auction + (offset - self.person).min(self.auction - 1))
        }
    }
}

/// What a run generates; equal configurations give equal events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub proportions: Proportions,
    /// Events per second of event time (positive, finite).
    pub rate: f64,
    /// Event time of the first event, epoch milliseconds.
    pub start_ms: i64,
    pub seed: u64,
}

impl Config {
    /// The event time of event `n`: `n / rate` seconds after the start, in whole milliseconds
    /// (rounded down), never decreasing with `n`.
    pub fn time_of(&self, n: u64) -> i64 {
        let micros = n as f64 * (1_000_000.0 / self.rate);
        // `as` saturates, so an absurd run ends at the largest time rather than wrapping.
        self.start_ms.saturating_add(micros as i64 / 1000)
    }
}

/// Nexmark events, one after another, without end.
pub struct Generator {
    config: Config,
    values: Values,
    /// The number of the next event.
    number: u64,
}

impl Generator {
    pub fn new(config: Config) -> Generator {
        Generator {
            config,
            values: Values::new(config.seed),
            number: 0,
        }
    }

    pub fn next_event(&mut self) -> Event {
        let n = self.number;
        self.number += 1;
        let time = self.config.time_of(n);
        match self.config.proportions.kind(n) {
            Stream::Person => Event::Person(self.person(n, time)),
            Stream::Auction => Event::Auction(self.auction(n, time)),
            Stream::Bid => Event::Bid(self.bid(n, time)),
        }
    }

    fn person(&mut self, n: u64, time: i64) -> Person {
        let values = &mut self.values;
        let name = values.person_name();
        let email_address = values.email();
        let credit_card = values.credit_card();
        let city = values.city();
        let state = values.state();
        let size =
            8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
        Person {
            id: FIRST_PERSON_ID + self.config.proportions.last_person(n),
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: time,
            extra: values.extra(size, AVERAGE_PERSON_BYTES),
        }
    }

    fn auction(&mut self, n: u64, time: i64) -> Auction {
        let seller = if self.values.below(HOT_SELLERS_RATIO) > 0 {
            self.config.proportions.last_person(n) / HOT_BATCH * HOT_BATCH
        } else {
            self.random_person(n)
        };
        let category = FIRST_CATEGORY_ID + self.values.below(CATEGORIES);
        let initial_bid = self.values.price();
        let expires = time.saturating_add(self.auction_length(n, time));
        let item_name = self.values.string(20, ' ');
        let description = self.values.string(100, ' ');
        let reserve = initial_bid + self.values.price();
        let size = 8 + item_name.len() + description.len() + 5 * 8;
        Auction {
            id: FIRST_AUCTION_ID + self.newest_auction(n),
            item_name,
            description,
            initial_bid,
            reserve,
            date_time: time,
            expires,
            seller: FIRST_PERSON_ID + seller,
            category,
            extra: self.values.extra(size, AVERAGE_AUCTION_BYTES),
        }
    }

    fn bid(&mut self, n: u64, time: i64) -> Bid {
        let auction = if self.values.below(HOT_AUCTIONS_RATIO) > 0 {
            self.newest_auction(n) / HOT_BATCH * HOT_BATCH
        } else {
            self.random_auction(n)
        };
        // The batch's second person, so that hot bidders are not also hot sellers.
        let bidder = if self.values.below(HOT_BIDDERS_RATIO) > 0 {
            self.config.proportions.last_person(n) / HOT_BATCH * HOT_BATCH + 1
        } else {
            self.random_person(n)
        };
        let price = self.values.price();
        let (channel, url) = self.values.channel_and_url();
        Bid {
            auction: FIRST_AUCTION_ID + auction,
            bidder: FIRST_PERSON_ID + bidder,
            price,
            channel,
            url,
            date_time: time,
            extra: self.values.extra(4 * 8, AVERAGE_BID_BYTES),
        }
    }

    /// The newest auction at an auction or a bid event (there always is one by then).
    fn newest_auction(&self, n: u64) -> u64 {
        self.config.proportions.last_auction(n).unwrap_or(0)
    }

    /// One of the [`ACTIVE_PEOPLE`] newest persons, or up to [`ID_LEAD`] past the newest.
    fn random_person(&mut self, n: u64) -> u64 {
        let people = self.config.proportions.last_person(n) + 1;
        let active = people.min(ACTIVE_PEOPLE);
        people - active + self.values.below(active + ID_LEAD)
    }

    /// One of the [`IN_FLIGHT_AUCTIONS`] newest auctions, or up to [`ID_LEAD`] past the newest.
    fn random_auction(&mut self, n: u64) -> u64 {
        let newest = self.newest_auction(n);
        let oldest = newest.saturating_sub(IN_FLIGHT_AUCTIONS);
        oldest + self.values.below(newest - oldest + 1 + ID_LEAD)
    }

    /// How long an auction runs, in milliseconds: uniform up to twice the event time it takes
    /// to generate [`IN_FLIGHT_AUCTIONS`] more auctions, so about that many are open at once.
    fn auction_length(&mut self, n: u64, time: i64) -> i64 {
        let proportions = self.config.proportions;
        let events_ahead = IN_FLIGHT_AUCTIONS * proportions.total() / proportions.auction;
        let horizon = self.config.time_of(n + events_ahead) - time;
        let longest = horizon.saturating_mul(2).max(1) as u64;
        1 + self.values.below(longest) as i64
    }
}
