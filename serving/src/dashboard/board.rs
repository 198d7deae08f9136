//! What the sampler saw, per job, and the JSON the dashboard's endpoints answer from it.
//!
//! The sampler writes here once per sample and the endpoints read; both hold the lock only to
//! copy or render, never across a Kafka call.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use sluice_kafka::PartitionLag;

use super::history::{CAPACITY, History, Reading};
use super::probe::{Followed, Probed};
use crate::service::{BatchRun, JobService};

/// The sampler's findings for every job, shared with the routes.
pub(crate) struct Dashboard {
    boards: Mutex<BTreeMap<String, Board>>,
    /// Why Kafka is not read at all (no brokers configured).
    no_kafka: Option<String>,
    /// Milliseconds between two samples.
    every_ms: u64,
}

/// One job's findings.
struct Board {
    history: History,
    /// The newest read of the source topic's partitions.
    partitions: Vec<PartitionLag>,
    /// Why the newest read of the source topic failed.
    kafka_error: Option<String>,
    dlq: Option<Followed>,
    late: Option<Followed>,
}

impl Dashboard {
    pub fn new(no_kafka: Option<String>, every_ms: u64) -> Dashboard {
        Dashboard {
            boards: Mutex::new(BTreeMap::new()),
            no_kafka,
            every_ms,
        }
    }

    fn with<T>(&self, read: impl FnOnce(&mut BTreeMap<String, Board>) -> T) -> T {
        let mut boards = self
            .boards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&mut boards)
    }

    /// Adds one sample of `job` (and what Kafka said, when it was asked) to its history.
    pub fn record(
        &self,
        job: &str,
        mut reading: Reading,
        last_batch_run: Option<&BatchRun>,
        probed: Option<Probed>,
    ) {
        self.with(|boards| {
            let board = boards.entry(job.to_string()).or_insert_with(|| Board {
                history: History::new(CAPACITY),
                partitions: Vec::new(),
                kafka_error: None,
                dlq: None,
                late: None,
            });
            if let Some(probed) = probed {
                match probed.partitions {
                    Ok(partitions) => {
                        if !partitions.is_empty() {
                            reading.source_end = Some(partitions.iter().map(|p| p.high).sum());
                            reading.consumed = Some(
                                partitions
                                    .iter()
                                    .map(|p| p.done.unwrap_or(p.low).min(p.high))
                                    .sum(),
                            );
                            reading.source_lag_records = Some(sluice_kafka::total_lag(&partitions));
                        }
                        board.partitions = partitions;
                        board.kafka_error = None;
                    }
                    Err(e) => board.kafka_error = Some(e),
                }
                // Counts only once the whole topic was counted: a count still catching up
                // would show its reading speed as a rate.
                let count = |f: &Followed| f.complete.then_some(f.tally.records);
                reading.dlq_records = count(&probed.dlq);
                reading.late_records = count(&probed.late);
                board.dlq = Some(probed.dlq);
                board.late = Some(probed.late);
            }
            board.history.record(&reading);
            if let Some(run) = last_batch_run {
                board.history.note_batch_run(run);
            }
        });
    }

    /// `GET /v1/jobs/{job}/history`: the newest `limit` samples, oldest first, with the newest
    /// partition lags, diverted-record counts and batch runs.
    pub fn history(&self, service: &JobService, limit: usize) -> Value {
        let view = view_shape(service);
        self.with(|boards| {
            let board = boards.get(service.name());
            let samples: Vec<Value> = board.map_or_else(Vec::new, |b| {
                b.history.newest(limit).map(|s| json!(s)).collect()
            });
            let partitions: Vec<Value> =
                board.map_or_else(Vec::new, |b| b.partitions.iter().map(partition).collect());
            let backfills: Vec<Value> = board.map_or_else(Vec::new, |b| {
                b.history.backfills().map(|r| json!(r)).collect()
            });
            json!({
                "job": service.name(),
                "version": service.version(),
                "every_ms": self.every_ms,
                "capacity": CAPACITY,
                "view": view,
                "samples": samples,
                "partitions": partitions,
                "kafka": self.kafka_note(board.and_then(|b| b.kafka_error.as_deref())),
                "dlq": board
                    .and_then(|b| b.dlq.as_ref())
                    .map_or_else(|| self.not_read(&service.topics.dlq), counts),
                "late": board
                    .and_then(|b| b.late.as_ref())
                    .map_or_else(|| self.not_read(&service.topics.late), counts),
                "backfills": backfills,
            })
        })
    }

    /// `GET /v1/jobs/{job}/dlq`: the diverted topics' counts and newest `limit` records.
    pub fn dead_letters(&self, service: &JobService, limit: usize) -> Value {
        self.with(|boards| {
            let board = boards.get(service.name());
            let topic = |followed: Option<&Followed>, name: &str| match followed {
                Some(f) => {
                    let mut answer = counts(f);
                    answer["newest"] = json!(f.tally.newest(limit).collect::<Vec<_>>());
                    answer["kept"] = json!(f.tally.keep());
                    answer
                }
                None => {
                    let mut answer = self.not_read(name);
                    answer["newest"] = json!([]);
                    answer["kept"] = json!(0);
                    answer
                }
            };
            json!({
                "job": service.name(),
                "version": service.version(),
                "kafka": self.kafka_note(board.and_then(|b| b.kafka_error.as_deref())),
                "dlq": topic(board.and_then(|b| b.dlq.as_ref()), &service.topics.dlq),
                "late": topic(board.and_then(|b| b.late.as_ref()), &service.topics.late),
            })
        })
    }

    /// The counts of a diverted topic no sample has read.
    fn not_read(&self, topic: &str) -> Value {
        let why = self
            .no_kafka
            .clone()
            .unwrap_or_else(|| "not read yet: the first sample is under way".to_string());
        json!({
            "topic": topic,
            "available": false,
            "unavailable": why,
            "complete": false,
            "records": null,
            "by_error_type": {},
            "by_check": {},
        })
    }

    /// Whether the source topic could be read, and why not.
    fn kafka_note(&self, error: Option<&str>) -> Value {
        match (&self.no_kafka, error) {
            (Some(why), _) => json!({"available": false, "error": why}),
            (None, Some(e)) => json!({"available": false, "error": e}),
            (None, None) => json!({"available": true, "error": null}),
        }
    }
}

fn partition(p: &PartitionLag) -> Value {
    json!({
        "partition": p.partition,
        "low": p.low,
        "high": p.high,
        "committed": p.done,
        "lag_records": p.records(),
    })
}

fn counts(followed: &Followed) -> Value {
    json!({
        "topic": followed.topic,
        "available": followed.unavailable.is_none(),
        "unavailable": followed.unavailable,
        "complete": followed.complete,
        "records": followed.tally.records,
        "by_error_type": followed.tally.by_error_type,
        "by_check": followed.tally.by_check,
    })
}

/// What the pages need to chart the merged view: its key, whether it has a window, and its
/// columns with their Arrow types.
fn view_shape(service: &JobService) -> Value {
    let shape = service.shape();
    let columns: Vec<Value> = service
        .served
        .pipeline
        .plan()
        .aggregate()
        .map(|stage| {
            stage
                .output_schema()
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "key_columns": service.served.job.spec.view.key,
        "has_window": shape.has_window,
        "columns": columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::letters::{DeadLetter, RawRecord, Tally};

    fn reading(at_ms: i64) -> Reading {
        Reading {
            at_ms,
            version: 1,
            source_lag_records: Some(9),
            speed_lag_records: 3,
            ..Reading::default()
        }
    }

    fn followed(topic: &str, complete: bool, records: usize) -> Followed {
        let mut tally = Tally::new(2);
        for offset in 0..records {
            tally.add(DeadLetter::of(&RawRecord {
                partition: 0,
                offset: offset as i64,
                timestamp_ms: None,
                key: None,
                value: Some(&b"x"[..]),
                headers: Vec::new(),
            }));
        }
        Followed {
            topic: topic.to_string(),
            tally,
            complete,
            unavailable: None,
        }
    }

    fn lag(partition: i32, high: i64, done: Option<i64>) -> PartitionLag {
        PartitionLag {
            partition,
            low: 0,
            high,
            done,
        }
    }

    #[test]
    fn kafka_offsets_make_the_throughput_and_the_lag() {
        let board = Dashboard::new(None, 5_000);
        let probed = |highs: [i64; 2], done: [i64; 2], dlq: usize| Probed {
            partitions: Ok(vec![
                lag(0, highs[0], Some(done[0])),
                lag(1, highs[1], Some(done[1])),
            ]),
            dlq: followed("j.dlq", true, dlq),
            late: followed("j.late", false, 1),
        };
        let t0 = 1_700_000_000_000;
        board.record("j", reading(t0), None, Some(probed([100, 50], [90, 50], 1)));
        let later = reading(t0 + 2_000);
        board.record("j", later, None, Some(probed([200, 150], [180, 140], 4)));
        let samples: Vec<_> = board.with(|b| b["j"].history.newest(10).copied().collect());
        let newest = samples[1];
        let seconds = 2.0;
        assert_eq!(newest.events_in_per_s, Some((350 - 150) as f64 / seconds));
        assert_eq!(newest.consumed_per_s, Some((320 - 140) as f64 / seconds));
        assert_eq!(
            newest.source_lag_records,
            Some((200 - 180) + (150 - 140)),
            "the lag of the partitions read, not the status's"
        );
        assert_eq!(newest.dlq_per_s, Some(3.0 / seconds));
        assert_eq!(
            newest.late_records, None,
            "the late topic is not counted yet"
        );
    }

    #[test]
    fn without_kafka_the_status_alone_is_sampled() {
        let board = Dashboard::new(Some("no brokers".to_string()), 5_000);
        board.record("j", reading(1_000), None, None);
        let samples: Vec<_> = board.with(|b| b["j"].history.newest(10).copied().collect());
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].source_lag_records, Some(9));
        assert_eq!(samples[0].speed_lag_records, 3);
        assert_eq!(samples[0].events_in_per_s, None);
        assert_eq!(
            board.kafka_note(None),
            json!({"available": false, "error": "no brokers"})
        );
    }
}
