//! The random field values of Nexmark events, shaped as the spec's generators shape them: short
//! lower-case strings with a sprinkling of a special character, prices spread log-uniformly
//! from $1 to $1M (in cents), a few US cities and states so that queries filtering on them
//! find rows, channels of which four are "hot", and `extra` padding that brings each event to
//! the spec's average size. All of it comes from one seeded generator, so a seed gives the same
//! values every run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Strings are at least this long before trimming.
const MIN_STRING_LENGTH: usize = 3;
/// One character in this many of a random string is the special character.
const SPECIAL_ONE_IN: u64 = 13;

const US_STATES: &[&str] = &["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: &[&str] = &[
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: &[&str] = &[
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: &[&str] = &[
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// Half the bids come through one of these channels, each with its own fixed URL.
pub const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// A bid comes through a hot channel unless a draw below this is 0: half of them.
const HOT_CHANNELS_RATIO: u64 = 2;
/// The other bids come through `channel-<i>`, `i` below this.
pub const CHANNELS: usize = 10_000;
/// One channel URL in this many has no `channel_id` parameter.
const NO_CHANNEL_ID_ONE_IN: u64 = 10;

/// `extra` padding is cut from one random text of this size (cheaper than drawing each
/// character; the spec's generators do the same with a 1 MiB text).
const EXTRA_POOL_BYTES: usize = 64 * 1024;

pub(super) struct Values {
    rng: StdRng,
    extra_pool: String,
    hot_urls: [String; 4],
    /// `(channel-<i>, its URL)`.
    channels: Vec<(String, String)>,
}

impl Values {
    pub(super) fn new(seed: u64) -> Values {
        let mut values = Values {
            rng: StdRng::seed_from_u64(seed),
            extra_pool: String::new(),
            hot_urls: Default::default(),
            channels: Vec::with_capacity(CHANNELS),
        };
        values.extra_pool = values.exact_string(EXTRA_POOL_BYTES);
        let hot_urls: [String; 4] = std::array::from_fn(|_| values.base_url());
        values.hot_urls = hot_urls;
        for i in 0..CHANNELS {
            let mut url = values.base_url();
            if values.below(NO_CHANNEL_ID_ONE_IN) > 0 {
                url.push_str(&format!("&channel_id={}", channel_id(i)));
            }
            values.channels.push((format!("channel-{i}"), url));
        }
        values
    }

    /// Uniform in `[0, n)` (0 for `n = 0`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.rng.random_range(0..n.max(1))
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    /// A string of 3 to `max_length - 1` characters, `a`–`z` and now and then `special`,
    /// trimmed (so a space never starts or ends it).
    pub(super) fn string(&mut self, max_length: usize, special: char) -> String {
        let span = max_length.saturating_sub(MIN_STRING_LENGTH) as u64;
        let length = MIN_STRING_LENGTH + self.below(span) as usize;
        let text: String = (0..length)
            .map(|_| {
                if self.below(SPECIAL_ONE_IN) == 0 {
                    special
                } else {
                    self.letter()
                }
            })
            .collect();
        text.trim().to_string()
    }

    fn letter(&mut self) -> char {
        char::from(b'a' + self.below(26) as u8)
    }

    fn exact_string(&mut self, length: usize) -> String {
        (0..length).map(|_| self.letter()).collect()
    }

    pub(super) fn person_name(&mut self) -> String {
        let first = self.pick(FIRST_NAMES);
        let last = self.pick(LAST_NAMES);
        format!("{first} {last}")
    }

    pub(super) fn email(&mut self) -> String {
        let user = self.string(7, ' ');
        let domain = self.string(5, ' ');
        format!("{user}@{domain}.com")
    }

    /// Four groups of four digits.
    pub(super) fn credit_card(&mut self) -> String {
        let groups: Vec<String> = (0..4)
            .map(|_| format!("{:04}", self.below(10_000)))
            .collect();
        groups.join(" ")
    }

    pub(super) fn city(&mut self) -> &'static str {
        self.pick(US_CITIES)
    }

    pub(super) fn state(&mut self) -> &'static str {
        self.pick(US_STATES)
    }

    /// Cents: `10^(6u) * 100` rounded, `u` uniform in `[0, 1)`, so from 100 to 10^8.
    pub(super) fn price(&mut self) -> u64 {
        let exponent = self.rng.random::<f64>() * 6.0;
        (10f64.powf(exponent) * 100.0).round() as u64
    }

    /// A bid's channel and URL: half the time a hot channel, otherwise one of [`CHANNELS`].
    pub(super) fn channel_and_url(&mut self) -> (String, String) {
        if self.below(HOT_CHANNELS_RATIO) > 0 {
            let i = self.below(HOT_CHANNELS.len() as u64) as usize;
            return (HOT_CHANNELS[i].to_string(), self.hot_urls[i].clone());
        }
        let i = self.below(CHANNELS as u64) as usize;
        self.channels[i].clone()
    }

    /// Padding such that `current_size` plus its length is `average_size` on average (±20%);
    /// empty when the event is already that large.
    pub(super) fn extra(&mut self, current_size: usize, average_size: usize) -> String {
        let Some(wanted) = average_size.checked_sub(current_size) else {
            return String::new();
        };
        let delta = (wanted as f64 * 0.2).round() as usize;
        let jitter = if delta == 0 {
            0
        } else {
            self.below(2 * delta as u64) as usize
        };
        let size = wanted - delta + jitter;
        if size >= self.extra_pool.len() {
            return self.exact_string(size);
        }
        let offset = self.below((self.extra_pool.len() - size) as u64) as usize;
        // The pool is ASCII, so any byte offset is a character boundary.
        self.extra_pool[offset..offset + size].to_string()
    }

    /// `https://www.nexmark.com/<a>/<b>/<c>/item.htm?query=1`, the three directories random.
    fn base_url(&mut self) -> String {
        let dirs: Vec<String> = (0..3).map(|_| self.string(5, '_')).collect();
        format!(
            "https://www.nexmark.com/{}/item.htm?query=1",
            dirs.join("/")
        )
    }
}

/// The `channel_id` of `channel-<i>`: the bits of `i` reversed, as a signed 32-bit number's
/// absolute value (wrapping, so `i = 1` gives -2147483648), as the spec's generators write it.
fn channel_id(i: usize) -> i32 {
    (i as i32).reverse_bits().wrapping_abs()
}
