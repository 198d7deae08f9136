//! `sluice-kafka`: the Kafka plumbing every layer needs and none owns.
//!
//! `serving` may not depend on `stream`, and the tools in `jobs` and the end-to-end harness
//! talk to the same broker, so the pieces they all repeated live here once: building a client
//! configuration (user `-X` overrides last), idempotent topic creation, partition counts and the
//! one wait-for-topic loop, consumer lag from committed offsets and watermarks, reading a
//! partition to its end, and producing while the local queue is full. It knows Kafka and
//! nothing of jobs, plans or state: callers add their own context to its [`Error`].

mod admin;
mod changelog;
mod client;
mod error;
mod headers;
mod lag;
mod metadata;
mod send;

pub use admin::{Created, create_topics, delete_topics_and_groups};
pub use changelog::{ReadError, ReaderContext, Record, read_partition, reader_config};
pub use client::client_config;
pub use error::{Error, Result};
pub use headers::{RawHeader, header_text, raw_headers};
pub use lag::{
    PartitionLag, committed, group_lag, offset_in, position_lag, records_behind, total_lag,
    watermarks,
};
pub use metadata::{TopicWait, partition_count, topic_names, wait_for_topic};
pub use send::send_waiting;
