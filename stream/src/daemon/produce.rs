//! What a micro-batch's transaction sends: every record of an [`Output`] to its topic, with
//! the headers of diverted records. Results routed to `[[outputs]]` go to their output's topic
//! in the same transaction as the `<job>.results` row they repeat, so a row reaches each
//! output it matches exactly once, whatever crashes and retries.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode;
use sluice_core::pii::PiiMark;
use sluice_core::time::format_time;
use sluice_core::topics::header;
use sluice_kafka::send_waiting;

use super::{Running, StreamDaemon};
use crate::processor::{Diverted, Output, RoutedRecord};

/// Dead letters and late records larger than this keep only their first bytes.
const MAX_DIVERTED_PAYLOAD: usize = 512 * 1024;

impl StreamDaemon {
    /// Sends every record of `output` to its topic (into the open transaction, when exactly
    /// once): the changelog, the results, the routed results, the dead letters and the late.
    pub(super) fn produce_all(
        &self,
        running: &Running,
        output: &Output,
    ) -> std::result::Result<(), KafkaError> {
        let producer = &running.producer;
        for (sent, record) in output.speed.iter().enumerate() {
            if sent % 1024 == 1023 {
                producer.poll(Duration::ZERO);
            }
            let mut base = BaseRecord::<[u8], [u8]>::to(&self.topics.speed)
                .partition(record.partition)
                .key(&record.key);
            if let Some(value) = &record.value {
                base = base.payload(value);
            }
            send_waiting(producer, base)?;
        }
        for record in &output.state {
            let mut base = BaseRecord::<[u8], [u8]>::to(&self.topics.state)
                .partition(record.partition)
                .key(&record.key);
            if let Some(value) = &record.value {
                base = base.payload(value);
            }
            send_waiting(producer, base)?;
        }
        for (key, value) in &output.results {
            let mut base = BaseRecord::<[u8], [u8]>::to(&self.topics.results).payload(value);
            if let Some(key) = key {
                base = base.key(key);
            }
            send_waiting(producer, base)?;
        }
        for record in &output.routed {
            send_waiting(producer, self.routed_record(record)?)?;
        }
        for diverted in &output.dlq {
            send_waiting(producer, self.diverted_record(&self.topics.dlq, diverted))?;
        }
        for diverted in &output.late {
            send_waiting(producer, self.diverted_record(&self.topics.late, diverted))?;
        }
        Ok(())
    }

    fn diverted_record<'a>(
        &self,
        topic: &'a str,
        diverted: &'a Diverted,
    ) -> BaseRecord<'a, [u8], [u8]> {
        let record = &diverted.record;
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: header::SOURCE_TOPIC,
                value: Some(&self.topics.source),
            })
            .insert(Header {
                key: header::SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: header::SOURCE_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: header::ERROR_TYPE,
                value: Some(diverted.error_type.as_str()),
            })
            .insert(Header {
                key: header::ERROR_MESSAGE,
                value: Some(&diverted.message),
            });
        let optional = [
            (
                header::SOURCE_TIMESTAMP,
                record.timestamp_ms.map(|t| t.to_string()),
            ),
            (header::ERROR_FIELD, diverted.field.clone()),
            (header::CHECK, diverted.check.clone()),
            (header::WATERMARK, diverted.watermark_us.map(format_time)),
            (header::EVENT_TIME, diverted.event_time_us.map(format_time)),
            (header::PII, diverted.pii.map(|m| m.as_str().to_string())),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                headers = headers.insert(Header {
                    key,
                    value: Some(&value),
                });
            }
        }
        let payload = record.payload.as_deref().unwrap_or_default();
        if diverted.pii == Some(PiiMark::Withheld) {
            headers = headers.insert(Header {
                key: header::TRUNCATED,
                value: Some("true"),
            });
        } else if payload.len() > MAX_DIVERTED_PAYLOAD {
            // Kafka's default record limit is about 1 MB: keep the record's head, say so.
            let size = payload.len().to_string();
            headers = headers
                .insert(Header {
                    key: header::TRUNCATED,
                    value: Some("true"),
                })
                .insert(Header {
                    key: header::ORIGINAL_SIZE,
                    value: Some(&size),
                });
        }
        let mut base = BaseRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(key) = &record.key {
            base = base.key(key);
        }
        if let Some(payload) = &record.payload {
            base = base.payload(&payload[..payload.len().min(MAX_DIVERTED_PAYLOAD)]);
        }
        base
    }

    /// A routed result row, to its output's topic, keyed like its `<job>.results` record.
    fn routed_record<'a>(
        &'a self,
        record: &'a RoutedRecord,
    ) -> std::result::Result<BaseRecord<'a, [u8], [u8]>, KafkaError> {
        let Some((_, topic)) = self.topics.outputs.get(record.output) else {
            // The processor routes by the job's own `[[outputs]]`: this is a bug, and the
            // batch must not commit without the row.
            tracing::error!(
                job = self.name(),
                output = record.output,
                outputs = self.topics.outputs.len(),
                "a routed row names no [[outputs]] entry; failing the micro-batch"
            );
            return Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopic,
            ));
        };
        let mut base = BaseRecord::<[u8], [u8]>::to(topic).payload(&record.value);
        if let Some(key) = &record.key {
            base = base.key(key);
        }
        Ok(base)
    }

    /// Routed records per output topic, for `records_out`: every output's topic, with 0 when
    /// it got none, so each has its series from the first micro-batch on.
    pub(super) fn routed_counts(&self, output: &Output) -> BTreeMap<&str, u64> {
        let mut counts: BTreeMap<&str, u64> = self
            .topics
            .outputs
            .iter()
            .map(|(_, topic)| (topic.as_str(), 0))
            .collect();
        for record in &output.routed {
            if let Some((_, topic)) = self.topics.outputs.get(record.output) {
                *counts.entry(topic.as_str()).or_default() += 1;
            }
        }
        counts
    }
}
