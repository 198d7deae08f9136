//! Writer schemas for `avro-confluent` decoders: fetched from the schema registry by id, each
//! once, with backoff while the registry cannot answer.
//!
//! A registry outage delays records and never dead-letters them: only the registry's own
//! answer "no such id" makes records `unknown_schema_id`. While [`SchemaFetcher::fetch_missing`]
//! says the registry is unavailable, callers pause their partitions (librdkafka stops
//! fetching, so memory stays bounded), keep polling (the group keeps them), and try again
//! after the backoff. The decoder keeps every answer, so a schema costs one request per
//! decoder (the speed layer and the raw-lake sink each hold one).

use std::time::{Duration, Instant};

use sluice_core::decode::SourceDecoder;
use sluice_core::spec::SourceFormat;
use sluice_core::{Job, WriterSchemaLookup};
use sluice_registry::RegistryClient;

use crate::error::{Result, StreamError};

/// The first retry after a failed fetch; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether the schemas a batch needs are all known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// Every id has an answer: decode.
    Ready,
    /// The registry did not answer: pause, and try again at `retry_at`.
    Unavailable { retry_at: Instant },
}

pub(crate) struct SchemaFetcher {
    job: String,
    client: RegistryClient,
    failures: u32,
}

impl SchemaFetcher {
    /// The fetcher of a job whose records name registry schemas; `None` for other formats.
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
        // The client's error names the registry URL (without credentials).
        let client = RegistryClient::new(&url).map_err(|e| config(e.to_string()))?;
        Ok(Some(SchemaFetcher {
            job: job.name().to_string(),
            client,
            failures: 0,
        }))
    }

    pub(crate) fn url(&self) -> &str {
        self.client.url()
    }

    /// Fetches the writer schemas `payloads` name that `decoder` lacks.
    pub(crate) fn fetch_missing(
        &mut self,
        decoder: &dyn SourceDecoder,
        payloads: &[&[u8]],
    ) -> Fetched {
        for id in decoder.missing_writer_schemas(payloads) {
            match self.client.schema_by_id(id) {
                Ok(Some(text)) => {
                    tracing::info!(job = %self.job, id, registry = self.url(), "writer schema fetched");
                    decoder.add_writer_schema(id, WriterSchemaLookup::Found(text));
                }
                Ok(None) => {
                    tracing::warn!(job = %self.job, id, registry = self.url(), "the registry has no schema with this id: its records go to the DLQ as unknown_schema_id");
                    decoder.add_writer_schema(id, WriterSchemaLookup::NotFound);
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    let backoff = FIRST_BACKOFF
                        .saturating_mul(1 << self.failures.min(6).saturating_sub(1))
                        .min(MAX_BACKOFF);
                    tracing::warn!(job = %self.job, id, registry = self.url(), error = %e, retry_in = ?backoff, "schema registry unavailable: records wait, partitions paused");
                    return Fetched::Unavailable {
                        retry_at: Instant::now() + backoff,
                    };
                }
            }
        }
        self.failures = 0;
        Fetched::Ready
    }
}
