//! Holding a micro-batch while a writer schema it names has no final answer (`avro-confluent`
//! jobs): the schema registry cannot answer, or has not found the id yet (a replica lagging
//! behind a registration). The daemon pauses its partitions and keeps polling, so the group
//! keeps them, rebalances still apply and librdkafka stops fetching (memory stays bounded),
//! until every writer schema the batch names is known or settled. See [`crate::schemas`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;

use super::{Running, StreamDaemon, source_record};
use crate::error::{Result, kafka};
use crate::processor::SourceRecord;
use crate::schemas::{Fetched, SchemaFetcher};

impl StreamDaemon {
    /// Holds the batch until the registry has answered for good for every writer schema it
    /// names (see [`crate::schemas`]): its partitions are paused meanwhile and the consumer keeps
    /// polling, so the group keeps them and rebalances still apply. `false` when `stop` was
    /// set while waiting: the batch is dropped uncommitted and read again on the next start.
    pub(super) fn wait_for_schemas(
        &self,
        running: &mut Running,
        records: &mut Vec<SourceRecord>,
        stop: &AtomicBool,
    ) -> Result<bool> {
        let Some(mut fetcher) = running.schemas.take() else {
            return Ok(true);
        };
        let waited = self.wait_with(&mut fetcher, running, records, stop);
        running.schemas = Some(fetcher);
        waited
    }

    fn wait_with(
        &self,
        fetcher: &mut SchemaFetcher,
        running: &mut Running,
        records: &mut Vec<SourceRecord>,
        stop: &AtomicBool,
    ) -> Result<bool> {
        let job = self.name();
        let mut paused = false;
        loop {
            let payloads: Vec<&[u8]> = records
                .iter()
                .filter_map(|r| r.payload.as_deref())
                .collect();
            let retry_at = match fetcher.fetch_missing(running.processor.decoder(), &payloads) {
                Fetched::Ready => break,
                // The fetcher has logged why (the registry down, an id not found yet).
                Fetched::Wait { retry_at, .. } => retry_at,
            };
            self.metrics.registry_waits.with_label_values(&[job]).inc();
            while Instant::now() < retry_at {
                if stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                // Paused again each round: a rebalance may have assigned new partitions.
                self.pause_assigned(running, true)?;
                paused = true;
                let timeout = retry_at
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100));
                let polled = match running.consumer.poll(timeout) {
                    Some(Ok(message)) => Some(source_record(&message)),
                    _ => None,
                };
                self.apply_changes(running, records)?;
                // Fetched before the pause took effect: it belongs to this batch.
                if let Some(record) = polled
                    && running.assigned.contains(&record.partition)
                {
                    records.push(record);
                }
            }
        }
        if paused {
            self.pause_assigned(running, false)?;
            tracing::info!(
                job,
                registry = fetcher.url(),
                "every writer schema of the batch is settled: partitions resumed"
            );
        }
        Ok(true)
    }

    fn pause_assigned(&self, running: &Running, pause: bool) -> Result<()> {
        let job = self.name();
        let mut list = TopicPartitionList::new();
        for &partition in &running.assigned {
            list.add_partition(&self.topics.source, partition);
        }
        if list.count() == 0 {
            return Ok(());
        }
        if pause {
            running.consumer.pause(&list).map_err(kafka(
                job,
                "pausing while writer schemas are awaited from the schema registry",
            ))
        } else {
            running
                .consumer
                .resume(&list)
                .map_err(kafka(job, "resuming once the writer schemas were settled"))
        }
    }
}
