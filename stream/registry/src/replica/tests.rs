//! Replicas over a log in memory: writes answer from the applied log, a lost race is retried
//! and repaired, and replicas (or a restart) read back the same state.

use crate::records::{SchemaValue, schema_key, schema_value};
use crate::schema::parse_schema;
use crate::testing::MemoryLog;

use super::*;

fn parsed(text: &str) -> ParsedSchema {
    parse_schema(text).expect("an Avro schema")
}

fn record(subject: &str, version: i32, id: u32, schema: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let value = SchemaValue {
        subject: subject.into(),
        version,
        id,
        schema: schema.into(),
        deleted: false,
        schema_type: None,
    };
    (schema_key(subject, version), Some(schema_value(&value)))
}

const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"int","default":0}]}"#;
const OTHER: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"c","type":"string","default":""}]}"#;

#[test]
fn registering_writes_once_and_answers_from_the_log() {
    let log = MemoryLog::new();
    let replica = log.replica();
    assert_eq!(replica.register("s", &parsed(V1)), Ok(1));
    assert_eq!(replica.register("s", &parsed(V2)), Ok(2));
    assert_eq!(replica.register("s", &parsed(V1)), Ok(1));
    assert_eq!(replica.register("t", &parsed(V2)), Ok(2));
    // The repeated registration wrote nothing.
    assert_eq!(log.records().len(), 3);
    let other = log.replica();
    assert_eq!(other.read(|s| s.live_versions("s")), [(1, 1), (2, 2)]);
    assert_eq!(other.read(|s| s.live_versions("t")), [(1, 2)]);
}

#[test]
fn a_version_lost_to_another_writer_is_repaired_and_retried() {
    let log = MemoryLog::new();
    let replica = log.replica();
    replica.register("s", &parsed(V1)).unwrap();
    // Another replica registers OTHER as version 2 with id 2 just before this one writes V2
    // as version 2 with id 2 (both computed max + 1): the other record wins both.
    log.slip_in(record("s", 2, 2, OTHER));
    let id = replica.register("s", &parsed(V2)).unwrap();
    assert_eq!(id, 3, "id 2 went to OTHER, so V2 gets the next one");
    assert_eq!(
        replica.read(|s| s.live_versions("s")),
        [(1, 1), (2, 2), (3, 3)]
    );
    let keys: Vec<Vec<u8>> = log.records().into_iter().map(|(key, _)| key).collect();
    // v1, OTHER's v2, the lost write of v2, its repair (OTHER again, so a compacted topic
    // keeps the winner), then v3.
    let v2 = schema_key("s", 2);
    assert_eq!(keys.iter().filter(|k| **k == v2).count(), 3);
    let last_v2 = log
        .records()
        .into_iter()
        .rev()
        .find(|(key, _)| *key == v2)
        .and_then(|(_, value)| value)
        .unwrap();
    assert_eq!(last_v2, record("s", 2, 2, OTHER).1.unwrap());
}

#[test]
fn an_id_lost_to_another_writer_is_retried_with_the_next_one() {
    let log = MemoryLog::new();
    let replica = log.replica();
    // Another replica took id 1 for another schema in another subject.
    log.slip_in(record("elsewhere", 1, 1, OTHER));
    assert_eq!(replica.register("s", &parsed(V1)), Ok(2));
    assert_eq!(replica.read(|s| s.live_versions("s")), [(1, 2)]);
    assert_eq!(replica.read(|s| s.live_versions("elsewhere")), [(1, 1)]);
}

#[test]
fn deletes_and_levels_go_through_the_log() {
    let log = MemoryLog::new();
    let replica = log.replica();
    replica.register("s", &parsed(V1)).unwrap();
    replica.register("s", &parsed(V2)).unwrap();
    assert_eq!(replica.delete_version("s", VersionRef::Number(1)), Ok(1));
    assert_eq!(
        replica
            .delete_version("s", VersionRef::Number(1))
            .map_err(|e| e.code),
        Err(40406)
    );
    assert_eq!(
        replica
            .delete_version("s", VersionRef::Number(9))
            .map_err(|e| e.code),
        Err(40402)
    );
    assert_eq!(replica.delete_subject("s"), Ok(vec![2]));
    assert_eq!(replica.delete_subject("s").map_err(|e| e.code), Err(40401));
    assert_eq!(
        replica.set_level(Some("s"), Compatibility::None),
        Ok(Compatibility::None)
    );
    assert_eq!(replica.delete_level(Some("s")), Ok(Compatibility::None));
    assert_eq!(
        replica.delete_level(Some("s")).map_err(|e| e.code),
        Err(40408)
    );
    replica.set_level(None, Compatibility::Full).unwrap();
    // A restarted replica reads back exactly this.
    let restarted = log.replica();
    assert!(restarted.read(|s| s.subjects(false)).is_empty());
    assert_eq!(
        restarted.read(|s| s.versions("s", true).map(|v| v.len())),
        Ok(2)
    );
    assert_eq!(restarted.read(|s| s.global_level()), Compatibility::Full);
    assert_eq!(restarted.read(|s| s.subject_level("s")), None);
    assert_eq!(replica.delete_level(None), Ok(Compatibility::Full));
    assert_eq!(
        restarted.read(|s| s.global_level()),
        Compatibility::Backward
    );
}

#[test]
fn a_log_that_is_down_is_a_50001_and_changes_nothing() {
    let log = MemoryLog::new();
    let replica = log.replica();
    log.set_down(true);
    let error = replica.register("s", &parsed(V1)).unwrap_err();
    assert_eq!(error.code, 50001);
    assert!(replica.read(|s| s.subjects(true)).is_empty());
    log.set_down(false);
    assert_eq!(replica.register("s", &parsed(V1)), Ok(1));
}

#[test]
fn concurrent_replicas_never_give_one_id_to_two_schemas() {
    let log = MemoryLog::new();
    let replicas: Vec<Replica> = (0..3).map(|_| log.replica()).collect();
    std::thread::scope(|scope| {
        for (r, replica) in replicas.iter().enumerate() {
            scope.spawn(move || {
                for i in 0..5 {
                    let schema = format!(
                        r#"{{"type":"record","name":"R","fields":[{{"name":"f{r}_{i}","type":"int","default":0}}]}}"#
                    );
                    let subject = if i % 2 == 0 { "shared" } else { "own" };
                    replica
                        .register(&format!("{subject}{}", if i % 2 == 0 { 0 } else { r }), &parsed(&schema))
                        .unwrap();
                }
            });
        }
    });
    let reference = log.replica();
    let ids: Vec<(String, u32)> = reference.read(|s| {
        s.subjects(true)
            .into_iter()
            .flat_map(|subject| {
                s.live_versions(&subject)
                    .into_iter()
                    .map(|(_, id)| {
                        (
                            s.schema(id)
                                .map(|x| x.canonical.clone())
                                .unwrap_or_default(),
                            id,
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    assert_eq!(ids.len(), 15, "{ids:?}");
    let distinct_ids: std::collections::BTreeSet<u32> = ids.iter().map(|(_, id)| *id).collect();
    let distinct_schemas: std::collections::BTreeSet<&String> =
        ids.iter().map(|(s, _)| s).collect();
    assert_eq!(distinct_ids.len(), 15);
    assert_eq!(distinct_schemas.len(), 15);
    for replica in &replicas {
        for subject in reference.read(|s| s.subjects(true)) {
            assert_eq!(
                replica.read(|s| s.live_versions(&subject)),
                reference.read(|s| s.live_versions(&subject))
            );
        }
    }
}
