use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice_core::{Job, JsonDecoder, Pipeline};

use super::generator::{CATEGORIES, FIRST_AUCTION_ID, FIRST_CATEGORY_ID, FIRST_PERSON_ID, ID_LEAD};
use super::values::{CHANNELS, HOT_CHANNELS};
use super::*;

/// 2024-05-01T00:00:00Z, the default `--start`.
const START_MS: i64 = 1_714_521_600_000;

fn config(seed: u64) -> Config {
    Config {
        proportions: Proportions::default(),
        rate: 10_000.0,
        start_ms: START_MS,
        seed,
    }
}

fn events(config: Config, n: usize) -> Vec<Event> {
    let mut generator = Generator::new(config);
    (0..n).map(|_| generator.next_event()).collect()
}

fn json(event: &Event) -> Value {
    let mut out = Vec::new();
    event.write_json(&mut out).expect("encoding an event");
    serde_json::from_slice(&out).expect("an event is valid JSON")
}

fn counts(events: &[Event]) -> [usize; 3] {
    let mut counts = [0; 3];
    for event in events {
        counts[event.stream().index()] += 1;
    }
    counts
}

#[test]
fn the_mix_is_exactly_1_3_46_in_every_cycle() {
    let all = events(config(1), 10_000);
    assert_eq!(counts(&all), [200, 600, 9_200]);
    for cycle in all.chunks(50) {
        assert_eq!(counts(cycle), [1, 3, 46]);
    }
    let mut other = config(1);
    other.proportions = Proportions::parse("2:1:7").expect("a mix");
    assert_eq!(counts(&events(other, 1_000)), [200, 100, 700]);
}

#[test]
fn proportions_parse_and_refuse() {
    assert_eq!(
        Proportions::parse("1:3:46"),
        Ok(Proportions {
            person: 1,
            auction: 3,
            bid: 46
        })
    );
    assert!(Proportions::parse("1:1:0").is_ok(), "no bids is a mix");
    for bad in [
        "1:3",
        "1:3:46:1",
        "0:3:46",
        "1:0:46",
        "a:3:46",
        "1:3:-1",
        "1:3:9999999",
    ] {
        assert!(Proportions::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_seed_gives_the_same_events_and_a_shorter_run_a_prefix() {
    let first = events(config(7), 3_000);
    assert_eq!(first, events(config(7), 3_000));
    assert_eq!(events(config(7), 1_000)[..], first[..1_000]);
    assert_ne!(first, events(config(8), 3_000));
}

#[test]
fn ids_count_up_and_bids_name_recent_persons_and_auctions() {
    let (mut persons, mut auctions) = (0u64, 0u64);
    let (mut bids, mut named_existing, mut on_hot_auction) = (0u64, 0u64, 0u64);
    for event in events(config(3), 10_000) {
        match event {
            Event::Person(p) => {
                assert_eq!(p.id, FIRST_PERSON_ID + persons);
                persons += 1;
            }
            Event::Auction(a) => {
                assert_eq!(a.id, FIRST_AUCTION_ID + auctions);
                auctions += 1;
                assert!(
                    (FIRST_PERSON_ID..FIRST_PERSON_ID + persons + ID_LEAD).contains(&a.seller),
                    "seller {} with {persons} persons",
                    a.seller
                );
            }
            Event::Bid(b) => {
                bids += 1;
                let auction_ids = FIRST_AUCTION_ID..FIRST_AUCTION_ID + auctions;
                let person_ids = FIRST_PERSON_ID..FIRST_PERSON_ID + persons;
                assert!(
                    (FIRST_AUCTION_ID..FIRST_AUCTION_ID + auctions + ID_LEAD).contains(&b.auction),
                    "auction {} with {auctions} auctions",
                    b.auction
                );
                assert!(
                    (FIRST_PERSON_ID..FIRST_PERSON_ID + persons + ID_LEAD).contains(&b.bidder),
                    "bidder {} with {persons} persons",
                    b.bidder
                );
                if auction_ids.contains(&b.auction) && person_ids.contains(&b.bidder) {
                    named_existing += 1;
                }
                // The hot auction is the first of the newest batch of 100.
                if b.auction == FIRST_AUCTION_ID + (auctions - 1) / 100 * 100 {
                    on_hot_auction += 1;
                }
            }
        }
    }
    assert_eq!((persons, auctions, bids), (200, 600, 9_200));
    // The rest name an id within the lead, not generated yet when the bid is.
    assert!(
        named_existing * 100 >= bids * 85,
        "{named_existing} of {bids} bids name existing persons and auctions"
    );
    // Half the bids go to the hot auction, and some of the others too.
    assert!(
        (bids * 45..=bids * 65).contains(&(on_hot_auction * 100)),
        "{on_hot_auction} of {bids} bids on the hot auction"
    );
}

#[test]
fn event_times_start_at_start_and_never_decrease() {
    let all = events(config(2), 10_000);
    assert_eq!(all[0].date_time(), START_MS);
    // 10,000 events a second: ten a millisecond.
    for (n, event) in all.iter().enumerate() {
        assert_eq!(event.date_time(), START_MS + n as i64 / 10, "event {n}");
    }
    let mut slow = config(2);
    slow.rate = 0.1;
    let all = events(slow, 500);
    for (n, event) in all.iter().enumerate() {
        assert_eq!(event.date_time(), START_MS + 10_000 * n as i64, "event {n}");
    }
    let mut odd = config(2);
    odd.rate = 3.0;
    let times: Vec<i64> = events(odd, 2_000).iter().map(Event::date_time).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "times decrease");
    // A third of a second is not a whole number of microseconds: rounded down, never up.
    assert!(
        (999..=1_000).contains(&(times[3] - times[0])),
        "{:?}",
        &times[..4]
    );
    assert_eq!(times[1] - times[0], 333);
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn every_record_is_a_flat_object_with_the_documented_fields() {
    let person = set(&[
        "id",
        "name",
        "emailAddress",
        "creditCard",
        "city",
        "state",
        "dateTime",
        "extra",
    ]);
    let auction = set(&[
        "id",
        "itemName",
        "description",
        "initialBid",
        "reserve",
        "dateTime",
        "expires",
        "seller",
        "category",
        "extra",
    ]);
    let bid = set(&[
        "auction", "bidder", "price", "channel", "url", "dateTime", "extra",
    ]);
    let numbers = set(&[
        "id",
        "initialBid",
        "reserve",
        "dateTime",
        "expires",
        "seller",
        "category",
        "auction",
        "bidder",
        "price",
    ]);
    for event in events(config(4), 5_000) {
        let value = json(&event);
        let expected = match event.stream() {
            Stream::Person => &person,
            Stream::Auction => &auction,
            Stream::Bid => &bid,
        };
        assert_eq!(&keys(&value), expected, "{value}");
        for (name, field) in value.as_object().expect("an object") {
            if numbers.contains(name) {
                assert!(field.is_u64(), "{name} is not a whole number: {value}");
            } else {
                assert!(field.is_string(), "{name} is not text: {value}");
            }
        }
        assert_eq!(value["dateTime"].as_i64(), Some(event.date_time()));
    }
}

#[test]
fn values_have_the_spec_shapes() {
    let (mut hot_channel_bids, mut bids) = (0, 0);
    for event in events(config(6), 10_000) {
        match event {
            Event::Person(p) => {
                assert!(p.email_address.ends_with(".com") && p.email_address.contains('@'));
                assert_eq!(p.credit_card.len(), 19, "{}", p.credit_card);
                assert!(p.name.contains(' '), "{}", p.name);
            }
            Event::Auction(a) => {
                assert!(a.expires > a.date_time, "{a:?}");
                assert!(a.reserve >= a.initial_bid, "{a:?}");
                assert!((FIRST_CATEGORY_ID..FIRST_CATEGORY_ID + CATEGORIES).contains(&a.category));
                assert!(a.item_name.len() < 20, "{}", a.item_name);
            }
            Event::Bid(b) => {
                bids += 1;
                assert!((100..=100_000_000).contains(&b.price), "{}", b.price);
                assert!(b.url.starts_with("https://www.nexmark.com/"), "{}", b.url);
                // Three directories before the item, as q22 reads them.
                assert_eq!(b.url.split('/').count(), 7, "{}", b.url);
                if HOT_CHANNELS.contains(&b.channel.as_str()) {
                    hot_channel_bids += 1;
                    assert!(!b.url.contains("channel_id="), "{}", b.url);
                } else {
                    let i: usize = b
                        .channel
                        .strip_prefix("channel-")
                        .and_then(|i| i.parse().ok())
                        .unwrap_or_else(|| panic!("channel {}", b.channel));
                    assert!(i < CHANNELS);
                }
                // Padding brings a bid to about 100 bytes.
                assert!((40..=90).contains(&b.extra.len()), "{}", b.extra.len());
            }
        }
    }
    assert!(
        (bids * 45..=bids * 55).contains(&(hot_channel_bids * 100)),
        "{hot_channel_bids} of {bids}"
    );
}

fn example_jobs() -> Vec<(PathBuf, Job)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nexmark");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let job = Job::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, job)
        })
        .collect()
}

#[test]
fn every_example_query_compiles_and_runs_on_generated_bids() {
    let all = events(config(5), 10_000);
    let lines: Vec<Vec<u8>> = all
        .iter()
        .filter(|e| e.stream() == Stream::Bid)
        .map(|e| {
            let mut line = Vec::new();
            e.write_json(&mut line).expect("encoding a bid");
            line
        })
        .collect();
    let jobs = example_jobs();
    assert!(jobs.len() >= 10, "{} example jobs", jobs.len());
    for (path, job) in &jobs {
        let at = path.display();
        assert_eq!(job.spec.source.topic, "nexmark.bid", "{at}");
        let pipeline = Pipeline::compile(job, None).unwrap_or_else(|e| panic!("{at}: {e}"));
        let decoded = JsonDecoder::new(job)
            .decode(&lines)
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        assert!(decoded.errors.is_empty(), "{at}: {:?}", decoded.errors[0]);
        assert_eq!(decoded.batch.num_rows(), lines.len(), "{at}");
        let evaluated = pipeline
            .evaluate(&decoded.batch)
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        let rows = match pipeline.plan().aggregate() {
            Some(stage) => stage
                .finalize(&[evaluated.output])
                .unwrap_or_else(|e| panic!("{at}: {e}")),
            None => evaluated.output,
        };
        if job.name() == "nexmark_q2" {
            let expected = all
                .iter()
                .filter(|e| matches!(e, Event::Bid(b) if b.auction.is_multiple_of(123)))
                .count();
            assert_eq!(rows.num_rows(), expected, "{at}");
        }
        assert!(rows.num_rows() > 0, "{at}: no result rows");
    }
}
