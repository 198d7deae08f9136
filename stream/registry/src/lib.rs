//! Schema registry: the client the speed layer fetches writer schemas with, and a built-in
//! Confluent-compatible registry server.
//!
//! Avro records on Kafka carry a schema id, not their schema; whoever reads them needs a
//! registry to turn the id back into the writer's schema. Sluice works with any registry that
//! speaks Confluent's REST API ([`RegistryClient`]), and ships one (`sluice registry`,
//! [`RegistryServer`]) so a deployment that has Kafka needs nothing else: it keeps its state in
//! a compacted Kafka topic in Confluent's own record format, every replica reads that topic
//! from the beginning and follows it, and writes go through the topic first, so replicas agree
//! by construction ("first in the log wins", see `state`). `docs/registry.md` describes the
//! API, the storage format and how to point Sluice at another registry.

mod api;
mod api_error;
mod api_subjects;
mod auth;
mod client;
mod compat;
mod encoding;
mod error;
mod kafka_log;
mod records;
mod replica;
mod schema;
mod server;
mod state;
#[cfg(test)]
mod testing;

pub use auth::{BEARER_TOKEN_ENV, RegistryAuth, USER_INFO_ENV};
pub use client::{RegistryClient, SchemaLookup};
pub use compat::Compatibility;
pub use error::{RegistryError, Result};
pub use server::{RegistryConfig, RegistryServer, serve};
