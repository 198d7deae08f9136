//! The seed 003 tables: created exactly as the seed defines them, idempotently, and the
//! checkpoint, dead-letter and metric statements on them.

use chrono::{DateTime, Utc};

use super::super::seed_tables::{
    DeadLetterRow, JobMetricSample, SEED_TABLES, check_seed_tables, init_seed_tables,
    insert_dead_letters, insert_job_metric, read_checkpoints, write_checkpoints,
};
use super::{Cleanup, T_2024_05_01_10H_S, TEST_URL, client, unique};

#[tokio::test]
async fn seed_tables_init_is_idempotent_and_matches_the_seed() {
    let Some(client) = client().await else {
        return;
    };
    let first = init_seed_tables(&client, TEST_URL).await.expect("init");
    let names: Vec<&str> = first.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, SEED_TABLES);
    let again = init_seed_tables(&client, TEST_URL)
        .await
        .expect("init again");
    assert!(again.iter().all(|(_, created)| !created), "{again:?}");
    check_seed_tables(&client, TEST_URL)
        .await
        .expect("a superuser may use the seed tables");

    let rows = client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
             coalesce(column_default::text, '') \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() \
             AND table_name IN ('etlcheckpoint', 'etldeadletter', 'etljobmetric') \
             ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .expect("reading information_schema");
    let found: Vec<String> = rows
        .iter()
        .map(|row| {
            let default: String = row.get(4);
            let default = if default.starts_with("nextval(") {
                "nextval"
            } else {
                default.as_str()
            };
            format!(
                "{}.{} {} {} {}",
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2),
                row.get::<_, String>(3),
                default
            )
            .trim_end()
            .to_string()
        })
        .collect();
    let expected = [
        "etlcheckpoint.id bigint NO nextval",
        "etlcheckpoint.consumer_group text NO",
        "etlcheckpoint.topic text NO",
        "etlcheckpoint.partition integer NO",
        "etlcheckpoint.offset bigint NO",
        "etlcheckpoint.committed_at timestamp with time zone NO now()",
        "etldeadletter.id bigint NO nextval",
        "etldeadletter.topic text NO",
        "etldeadletter.partition integer NO",
        "etldeadletter.original_offset bigint NO",
        "etldeadletter.error_type text NO",
        "etldeadletter.raw_message bytea NO",
        "etldeadletter.created_at timestamp with time zone NO now()",
        "etljobmetric.id bigint NO nextval",
        "etljobmetric.job_name text NO",
        "etljobmetric.processed_count bigint NO 0",
        "etljobmetric.error_count bigint NO 0",
        "etljobmetric.lag_seconds numeric YES",
        "etljobmetric.sampled_at timestamp with time zone NO now()",
    ];
    assert_eq!(found, expected);

    let indexes = client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() \
             AND tablename IN ('etlcheckpoint', 'etldeadletter', 'etljobmetric') ORDER BY indexname",
            &[],
        )
        .await
        .expect("reading the indexes");
    let indexes: Vec<String> = indexes.iter().map(|row| row.get(0)).collect();
    let has = |fragment: &str| indexes.iter().any(|index| index.contains(fragment));
    assert!(
        has("UNIQUE INDEX") && has("(consumer_group, topic, partition)"),
        "{indexes:?}"
    );
    assert!(
        has("etldeadletter_topic_created_at_idx") && has("(topic, created_at DESC)"),
        "{indexes:?}"
    );
    assert!(
        has("etljobmetric_job_name_sampled_at_idx") && has("(job_name, sampled_at DESC)"),
        "{indexes:?}"
    );
}

#[tokio::test]
async fn checkpoints_upsert_and_read_back() {
    let Some(mut client) = client().await else {
        return;
    };
    init_seed_tables(&client, TEST_URL).await.expect("init");
    let group = unique("group");
    let topic = unique("topic");
    let _cleanup = Cleanup(vec![format!(
        "DELETE FROM ETLCheckpoint WHERE consumer_group = '{group}'"
    )]);
    assert!(
        read_checkpoints(&client, &group, &topic, false)
            .await
            .expect("read")
            .is_empty()
    );

    let tx = client.transaction().await.expect("a transaction");
    write_checkpoints(&tx, &group, &topic, &[(0, 5), (1, 7)])
        .await
        .expect("write");
    tx.commit().await.expect("commit");
    let read = read_checkpoints(&client, &group, &topic, false)
        .await
        .expect("read");
    assert_eq!(read.into_iter().collect::<Vec<_>>(), vec![(0, 5), (1, 7)]);

    let tx = client.transaction().await.expect("a transaction");
    let locked = read_checkpoints(&tx, &group, &topic, true)
        .await
        .expect("read for update");
    assert_eq!(locked.len(), 2);
    write_checkpoints(&tx, &group, &topic, &[(1, 9), (2, 1), (1, 10)])
        .await
        .expect("write");
    tx.commit().await.expect("commit");
    let read = read_checkpoints(&client, &group, &topic, false)
        .await
        .expect("read");
    assert_eq!(
        read.into_iter().collect::<Vec<_>>(),
        vec![(0, 5), (1, 10), (2, 1)]
    );

    let tx = client.transaction().await.expect("a transaction");
    write_checkpoints(&tx, &group, &topic, &[(0, 500)])
        .await
        .expect("write");
    tx.rollback().await.expect("rollback");
    let read = read_checkpoints(&client, &group, &topic, false)
        .await
        .expect("read");
    assert_eq!(
        read.get(&0),
        Some(&5),
        "a rolled-back checkpoint must not stick"
    );
    let other_topic = read_checkpoints(&client, &group, &unique("topic"), false)
        .await
        .expect("read");
    assert!(other_topic.is_empty());
}

#[tokio::test]
async fn dead_letters_keep_arbitrary_bytes() {
    let Some(mut client) = client().await else {
        return;
    };
    init_seed_tables(&client, TEST_URL).await.expect("init");
    let topic = unique("dlq_topic");
    let _cleanup = Cleanup(vec![format!(
        "DELETE FROM ETLDeadLetter WHERE topic = '{topic}'"
    )]);
    let at: DateTime<Utc> = DateTime::from_timestamp(T_2024_05_01_10H_S, 0).expect("a valid time");
    let rows = vec![
        DeadLetterRow {
            topic: topic.clone(),
            partition: 3,
            original_offset: 41,
            error_type: "decode".to_string(),
            raw_message: vec![0x00, 0xff, 0xfe, b'{', 0x00, 0xc3],
            created_at: Some(at),
        },
        DeadLetterRow {
            topic: topic.clone(),
            partition: 0,
            original_offset: 42,
            error_type: "schema".to_string(),
            raw_message: Vec::new(),
            created_at: None,
        },
    ];
    let tx = client.transaction().await.expect("a transaction");
    assert_eq!(insert_dead_letters(&tx, &rows).await.expect("insert"), 2);
    assert_eq!(insert_dead_letters(&tx, &[]).await.expect("nothing"), 0);
    tx.commit().await.expect("commit");
    let found = client
        .query(
            "SELECT partition, original_offset, error_type, raw_message, created_at, \
             created_at > now() - interval '1 hour' FROM ETLDeadLetter WHERE topic = $1 ORDER BY original_offset",
            &[&topic],
        )
        .await
        .expect("reading the dead letters");
    assert_eq!(found.len(), 2);
    for (row, want) in found.iter().zip(&rows) {
        assert_eq!(row.get::<_, i32>(0), want.partition);
        assert_eq!(row.get::<_, i64>(1), want.original_offset);
        assert_eq!(row.get::<_, String>(2), want.error_type);
        assert_eq!(row.get::<_, Vec<u8>>(3), want.raw_message);
    }
    assert_eq!(found[0].get::<_, DateTime<Utc>>(4), at);
    assert!(found[1].get::<_, bool>(5), "a missing created_at is now");
}

#[tokio::test]
async fn job_metric_samples_are_inserted() {
    let Some(client) = client().await else {
        return;
    };
    init_seed_tables(&client, TEST_URL).await.expect("init");
    let job = unique("job");
    let _cleanup = Cleanup(vec![format!(
        "DELETE FROM ETLJobMetric WHERE job_name = '{job}'"
    )]);
    for (processed, lag) in [(10, Some(1.5)), (20, None)] {
        let sample = JobMetricSample {
            job_name: job.clone(),
            processed_count: processed,
            error_count: 1,
            lag_seconds: lag,
            sampled_at: None,
        };
        insert_job_metric(&client, &sample).await.expect("insert");
    }
    let rows = client
        .query(
            "SELECT processed_count, error_count, lag_seconds::text FROM ETLJobMetric \
             WHERE job_name = $1 ORDER BY processed_count",
            &[&job],
        )
        .await
        .expect("reading the samples");
    let found: Vec<(i64, i64, Option<String>)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(found, vec![(10, 1, Some("1.5".to_string())), (20, 1, None)]);
}
