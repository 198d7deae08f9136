//! The three Nexmark event types as flat JSON objects. The spec has one stream of a union type
//! (Flink's `datagen` table, a row per event with one of three nested rows set); a Sluice job
//! reads one flat source, so each type is a stream of its own, with the fields and names of
//! Flink's `person`, `auction` and `bid` views. Times are epoch milliseconds, which a
//! `timestamp` field of a job reads as they are.

use serde::Serialize;

/// One of the three streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Person,
    Auction,
    Bid,
}

impl Stream {
    pub const ALL: [Stream; 3] = [Stream::Person, Stream::Auction, Stream::Bid];

    /// The file stem and topic suffix: `person`, `auction`, `bid`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Person => "person",
            Stream::Auction => "auction",
            Stream::Bid => "bid",
        }
    }

    /// The stream's position in [`Stream::ALL`].
    pub fn index(self) -> usize {
        match self {
            Stream::Person => 0,
            Stream::Auction => 1,
            Stream::Bid => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: &'static str,
    pub state: &'static str,
    pub date_time: i64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: i64,
    pub expires: i64,
    /// A person id.
    pub seller: u64,
    pub category: u64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bid {
    /// An auction id.
    pub auction: u64,
    /// A person id.
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    pub fn stream(&self) -> Stream {
        match self {
            Event::Person(_) => Stream::Person,
            Event::Auction(_) => Stream::Auction,
            Event::Bid(_) => Stream::Bid,
        }
    }

    /// Event time, epoch milliseconds.
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// The Kafka key: a person's or an auction's id, a bid's auction (so one partition holds
    /// an auction's bids in order).
    pub fn key(&self) -> u64 {
        match self {
            Event::Person(p) => p.id,
            Event::Auction(a) => a.id,
            Event::Bid(b) => b.auction,
        }
    }

    /// Appends the event as one flat JSON object (no newline).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Event::Person(p) => serde_json::to_writer(out, p),
            Event::Auction(a) => serde_json::to_writer(out, a),
            Event::Bid(b) => serde_json::to_writer(out, b),
        }
    }
}
