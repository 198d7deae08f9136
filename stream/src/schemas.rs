//! Writer schemas for `avro-confluent` decoders: fetched from the schema registry by id, each
//! once, with backoff while the registry cannot answer.
//!
//! What the registry answers for an id decides what its records become, and a record is
//! dead-lettered only on an answer that settles the id:
//! - an Avro schema: they decode (the decoder resolves it to the job, or makes them
//!   `incompatible_schema` when it does not parse or resolve);
//! - something that is no Avro schema (another `schemaType`, a body that is not the API's
//!   answer): `incompatible_schema` at once, the message naming the id and the answer;
//! - "no such id" (HTTP 404, with or without Confluent's 40403): the records wait while the id
//!   is asked again with backoff, and become `unknown_schema_id` only once it has been not
//!   found for [`NOT_FOUND_GRACE`] (`SLUICE_REGISTRY_NOT_FOUND_GRACE`). A registry replica that
//!   lags behind the one the producer registered with says "not found" for a moment; a record
//!   written a moment after its schema was registered must not be lost to that;
//! - no answer, or one that says nothing about the id (connection refused, TLS, timeouts, 5xx,
//!   408, 429, 401/403 whose credentials may be fixed, a request the registry or a proxy
//!   rejects): the registry is unavailable, and the records wait as long as it takes.
//!
//! While [`SchemaFetcher::fetch_missing`] says to wait, callers pause their partitions
//! (librdkafka stops fetching, so memory stays bounded), keep polling (the group keeps them),
//! and try again at the time it gives. The decoder keeps every final answer, so a schema costs
//! one request per decoder (the speed layer and the raw-lake sink each hold one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_core::decode::SourceDecoder;
use sluice_core::spec::SourceFormat;
use sluice_core::{Job, WriterSchemaLookup};
use sluice_registry::{RegistryClient, RegistryError, SchemaLookup};

use crate::error::{Result, StreamError};

/// The first retry after a failed fetch; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long an id may be "not found" before its records are `unknown_schema_id`: long enough
/// for a registry replica to read the schemas topic up to a registration it lags behind.
pub(crate) const NOT_FOUND_GRACE: Duration = Duration::from_secs(30);
/// Overrides [`NOT_FOUND_GRACE`]: a duration (`30s`, `500ms`); `0s` believes the first answer.
pub(crate) const NOT_FOUND_GRACE_ENV: &str = "SLUICE_REGISTRY_NOT_FOUND_GRACE";
/// The first re-ask of an id not found; doubled per answer up to [`MAX_BACKOFF`], so an id is
/// asked about ten times within the default grace.
const NOT_FOUND_FIRST_RETRY: Duration = Duration::from_millis(500);

/// Whether the schemas a batch needs are all known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// Every id has a final answer: decode.
    Ready,
    /// Some id has none yet (the registry did not answer, or has not found it yet): pause,
    /// and try again at `retry_at`. `reason` says why, for the sink's health and logs.
    Wait { retry_at: Instant, reason: String },
}

/// An id the registry said it lacks, not believed yet.
#[derive(Debug, Clone, Copy)]
struct NotFoundYet {
    /// When the registry first said so.
    since: Instant,
    /// How many times it has said so.
    answers: u32,
    /// When to ask again.
    next_ask: Instant,
}

pub(crate) struct SchemaFetcher {
    job: String,
    client: RegistryClient,
    /// Consecutive rounds the registry did not answer, for the backoff.
    failures: u32,
    /// How long an id stays "not found yet" ([`NOT_FOUND_GRACE`]).
    grace: Duration,
    not_found: HashMap<u32, NotFoundYet>,
}

impl SchemaFetcher {
    /// The fetcher of a job whose records name registry schemas; `None` for other formats.
    /// A registry URL, CA file or grace that cannot be used is a configuration error.
    pub(crate) fn for_job(job: &Job) -> Result<Option<SchemaFetcher>> {
        if job.spec.source.format != SourceFormat::AvroConfluent {
            return Ok(None);
        }
        let config = |message: String| StreamError::Config {
            job: job.name().to_string(),
            message,
        };
        let url = job.registry_url().ok_or_else(|| {
            config(format!(
                "format \"avro-confluent\" needs a schema registry: set `[source] registry` or {}",
                sluice_core::spec::REGISTRY_ENV
            ))
        })?;
        // The client's errors name the registry URL (without credentials).
        let mut client = RegistryClient::new(&url).map_err(|e| config(e.to_string()))?;
        if let Some(ca) = job.registry_ca() {
            client = client
                .with_ca_file(&ca)
                .map_err(|e| config(e.to_string()))?;
        }
        let grace = not_found_grace().map_err(config)?;
        Ok(Some(SchemaFetcher::new(job.name(), client, grace)))
    }

    fn new(job: &str, client: RegistryClient, grace: Duration) -> SchemaFetcher {
        SchemaFetcher {
            job: job.to_string(),
            client,
            failures: 0,
            grace,
            not_found: HashMap::new(),
        }
    }

    pub(crate) fn url(&self) -> &str {
        self.client.url()
    }

    /// Asks the registry for the writer schemas `payloads` name that `decoder` has no final
    /// answer for, and hands every final answer over (see the module docs for which are).
    pub(crate) fn fetch_missing(
        &mut self,
        decoder: &dyn SourceDecoder,
        payloads: &[&[u8]],
    ) -> Fetched {
        let mut wait: Option<(Instant, String)> = None;
        for id in decoder.missing_writer_schemas(payloads) {
            // An id not found yet is asked again at its own time, not each time another id's
            // wait ends.
            if let Some(&pending) = self.not_found.get(&id)
                && Instant::now() < pending.next_ask
            {
                sooner(&mut wait, pending.next_ask, || self.not_found_reason(id));
                continue;
            }
            match self.client.schema_by_id(id) {
                Ok(SchemaLookup::Avro(text)) => {
                    match self.not_found.remove(&id) {
                        Some(pending) => {
                            tracing::info!(job = %self.job, id, registry = self.url(), not_found_answers = pending.answers, waited = ?pending.since.elapsed(), "writer schema found after the registry had not found it: its records decode")
                        }
                        None => {
                            tracing::info!(job = %self.job, id, registry = self.url(), "writer schema fetched")
                        }
                    }
                    decoder.add_writer_schema(id, WriterSchemaLookup::Found(text));
                }
                Ok(SchemaLookup::NotAvro(why)) => {
                    self.not_found.remove(&id);
                    tracing::warn!(job = %self.job, id, registry = self.url(), reason = %why, "the registry's answer for this id is no Avro schema: its records go to the DLQ as incompatible_schema");
                    decoder.add_writer_schema(id, WriterSchemaLookup::Unusable(why));
                }
                Ok(SchemaLookup::NotFound(why)) => match self.not_found_again(id, &why) {
                    Some(next_ask) => {
                        sooner(&mut wait, next_ask, || self.not_found_reason(id));
                    }
                    None => decoder.add_writer_schema(id, WriterSchemaLookup::NotFound),
                },
                Err(e) => return self.unavailable(id, &e),
            }
        }
        // The registry answered every id it was asked about this round.
        self.failures = 0;
        match wait {
            Some((retry_at, reason)) => Fetched::Wait { retry_at, reason },
            None => Fetched::Ready,
        }
    }

    /// Notes one more "not found" for `id`: when to ask again, or `None` once the id has been
    /// not found for the whole grace (the verdict is final, and logged).
    fn not_found_again(&mut self, id: u32, why: &str) -> Option<Instant> {
        let now = Instant::now();
        let pending = self.not_found.entry(id).or_insert(NotFoundYet {
            since: now,
            answers: 0,
            next_ask: now,
        });
        pending.answers = pending.answers.saturating_add(1);
        // No deadline when the grace is too large to add (it then never ends).
        let deadline = pending.since.checked_add(self.grace);
        let snapshot = *pending;
        if deadline.is_none_or(|deadline| now < deadline) {
            let backoff = NOT_FOUND_FIRST_RETRY
                .saturating_mul(1 << snapshot.answers.min(6).saturating_sub(1))
                .min(MAX_BACKOFF);
            let next_ask = deadline.map_or(now + backoff, |deadline| (now + backoff).min(deadline));
            pending.next_ask = next_ask;
            if snapshot.answers == 1 {
                tracing::warn!(job = %self.job, id, registry = self.url(), reason = why, grace = ?self.grace, "the registry has no schema with this id (yet?): its records wait while it is asked again, then go to the DLQ as unknown_schema_id");
            } else {
                tracing::debug!(job = %self.job, id, registry = self.url(), reason = why, answers = snapshot.answers, "schema id still not found");
            }
            return Some(next_ask);
        }
        self.not_found.remove(&id);
        tracing::warn!(job = %self.job, id, registry = self.url(), reason = why, answers = snapshot.answers, waited = ?now.duration_since(snapshot.since), "the registry has no schema with this id: its records go to the DLQ as unknown_schema_id");
        None
    }

    /// Why records of `id` wait while it is not found yet.
    fn not_found_reason(&self, id: u32) -> String {
        format!(
            "schema id {id} is not in the schema registry (yet?): asking again for up to {:?} before its records are unknown_schema_id",
            self.grace
        )
    }

    /// The registry gave no answer about `id`: wait, with backoff.
    fn unavailable(&mut self, id: u32, error: &RegistryError) -> Fetched {
        self.failures = self.failures.saturating_add(1);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.min(6).saturating_sub(1))
            .min(MAX_BACKOFF);
        if error.is_transient() {
            tracing::warn!(job = %self.job, id, registry = self.url(), error = %error, retry_in = ?backoff, "schema registry unavailable: records wait, partitions paused");
        } else {
            // 401/403 or a refused request: waiting is right (nothing is the records' fault),
            // but only a change of credentials or URL ends it.
            tracing::warn!(job = %self.job, id, registry = self.url(), error = %error, retry_in = ?backoff, "the schema registry refused the request (check its URL and the credentials): records wait, partitions paused");
        }
        Fetched::Wait {
            retry_at: Instant::now() + backoff,
            reason: format!("the schema registry is unavailable: {error}"),
        }
    }
}

/// Keeps the earlier of `wait` and (`at`, `reason()`).
fn sooner(wait: &mut Option<(Instant, String)>, at: Instant, reason: impl FnOnce() -> String) {
    if wait.as_ref().is_none_or(|(current, _)| at < *current) {
        *wait = Some((at, reason()));
    }
}

/// [`NOT_FOUND_GRACE`], or `SLUICE_REGISTRY_NOT_FOUND_GRACE` when set.
fn not_found_grace() -> std::result::Result<Duration, String> {
    match std::env::var(NOT_FOUND_GRACE_ENV) {
        Ok(text) if !text.trim().is_empty() => sluice_core::duration::parse_duration(&text)
            .ok_or_else(|| {
                format!(
                    "{NOT_FOUND_GRACE_ENV}=`{text}` is not a duration (e.g. `30s`, `500ms`, `0s`)"
                )
            }),
        _ => Ok(NOT_FOUND_GRACE),
    }
}

#[cfg(test)]
mod tests;
