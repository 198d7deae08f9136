//! Rows through `RowWriter` and back: every supported Arrow type, upsert replacing a key's
//! row (NULL keys included), append keeping every row of batches spanning many COPY chunks.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, DurationMicrosecondArray,
    FixedSizeBinaryArray, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, LargeBinaryArray, LargeStringArray, StringArray, StringViewArray,
    Time32MillisecondArray, Time64MicrosecondArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampSecondArray, UInt8Array, UInt16Array, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use sluice_core::spec::SinkMode;
use tokio_postgres::Client;

use super::super::copy::RowWriter;
use super::super::table::{ResultTable, pg_type};
use super::{Cleanup, T_2024_05_01_10H_S, TEST_URL, client, drop_table, keyed_schema, unique};

fn col(
    name: &'static str,
    array: ArrayRef,
    text: &'static str,
) -> (&'static str, ArrayRef, &'static str) {
    (name, array, text)
}

/// One column of each supported Arrow type: a value in row 0 and a NULL in row 1, with the
/// value's text as PostgreSQL prints it.
fn every_type() -> (RecordBatch, Vec<&'static str>) {
    let utc = || Some(Arc::<str>::from("UTC"));
    let micros = T_2024_05_01_10H_S * 1_000_000 + 123_456;
    let float16 = arrow::compute::cast(
        &Float32Array::from(vec![Some(1.5), None]),
        &DataType::Float16,
    )
    .expect("casting to Float16");
    let columns: Vec<(&str, ArrayRef, &'static str)> = vec![
        col(
            "c_bool",
            Arc::new(BooleanArray::from(vec![Some(true), None])),
            "true",
        ),
        col(
            "c_i8",
            Arc::new(Int8Array::from(vec![Some(-5), None])),
            "-5",
        ),
        col(
            "c_i16",
            Arc::new(Int16Array::from(vec![Some(-300), None])),
            "-300",
        ),
        col(
            "c_i32",
            Arc::new(Int32Array::from(vec![Some(70_000), None])),
            "70000",
        ),
        col(
            "c_i64",
            Arc::new(Int64Array::from(vec![Some(-9_000_000_000), None])),
            "-9000000000",
        ),
        col(
            "c_u8",
            Arc::new(UInt8Array::from(vec![Some(200), None])),
            "200",
        ),
        col(
            "c_u16",
            Arc::new(UInt16Array::from(vec![Some(60_000), None])),
            "60000",
        ),
        col(
            "c_u32",
            Arc::new(UInt32Array::from(vec![Some(4_000_000_000), None])),
            "4000000000",
        ),
        col(
            "c_u64",
            Arc::new(UInt64Array::from(vec![Some(u64::MAX), None])),
            "18446744073709551615",
        ),
        col("c_f16", float16, "1.5"),
        col(
            "c_f32",
            Arc::new(Float32Array::from(vec![Some(2.25), None])),
            "2.25",
        ),
        col(
            "c_f64",
            Arc::new(Float64Array::from(vec![Some(0.1), None])),
            "0.1",
        ),
        col(
            "c_decimal",
            Arc::new(
                Decimal128Array::from(vec![Some(12_345), None])
                    .with_precision_and_scale(12, 2)
                    .expect("a valid decimal type"),
            ),
            "123.45",
        ),
        col(
            "c_utf8",
            Arc::new(StringArray::from(vec![Some("héllo 'q' \"d\" \\"), None])),
            "héllo 'q' \"d\" \\",
        ),
        col(
            "c_large_utf8",
            Arc::new(LargeStringArray::from(vec![Some("large"), None])),
            "large",
        ),
        col(
            "c_utf8_view",
            Arc::new(StringViewArray::from(vec![Some("view"), None])),
            "view",
        ),
        col(
            "c_binary",
            Arc::new(BinaryArray::from(vec![Some(&[0u8, 1, 255][..]), None])),
            "\\x0001ff",
        ),
        col(
            "c_large_binary",
            Arc::new(LargeBinaryArray::from(vec![Some(&b"ab"[..]), None])),
            "\\x6162",
        ),
        col(
            "c_fixed_binary",
            Arc::new(
                FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                    vec![Some(b"abc".as_slice()), None].into_iter(),
                    3,
                )
                .expect("a fixed-size binary array"),
            ),
            "\\x616263",
        ),
        col(
            "c_date",
            Arc::new(Date32Array::from(vec![Some(19_844), None])),
            "2024-05-01",
        ),
        col(
            "c_ts_s",
            Arc::new(
                TimestampSecondArray::from(vec![Some(T_2024_05_01_10H_S), None])
                    .with_timezone_opt(utc()),
            ),
            "2024-05-01 10:00:00+00",
        ),
        col(
            "c_ts_ms",
            Arc::new(
                TimestampMillisecondArray::from(vec![Some(T_2024_05_01_10H_S * 1000 + 123), None])
                    .with_timezone_opt(utc()),
            ),
            "2024-05-01 10:00:00.123+00",
        ),
        col(
            "c_ts_us",
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(micros), None]).with_timezone_opt(utc()),
            ),
            "2024-05-01 10:00:00.123456+00",
        ),
        col(
            "c_ts_naive",
            Arc::new(TimestampMicrosecondArray::from(vec![Some(micros), None])),
            "2024-05-01 10:00:00.123456",
        ),
        col(
            "c_time_ms",
            Arc::new(Time32MillisecondArray::from(vec![Some(3_723_004), None])),
            "01:02:03.004",
        ),
        col(
            "c_time_us",
            Arc::new(Time64MicrosecondArray::from(vec![
                Some(3_723_000_005),
                None,
            ])),
            "01:02:03.000005",
        ),
        col(
            "c_duration",
            Arc::new(DurationMicrosecondArray::from(vec![
                Some(90_061_000_001),
                None,
            ])),
            "25:01:01.000001",
        ),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array, _)| Field::new(*name, array.data_type().clone(), true))
        .collect();
    let expected = columns.iter().map(|(_, _, text)| *text).collect();
    let arrays = columns.into_iter().map(|(_, array, _)| array).collect();
    let batch =
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("a batch of every type");
    (batch, expected)
}

#[tokio::test]
async fn every_supported_type_round_trips() {
    let Some(mut client) = client().await else {
        return;
    };
    let name = unique("sluice_types");
    let _cleanup = Cleanup(vec![drop_table(&name)]);
    let (batch, expected) = every_type();
    let table = ResultTable::new(&name, batch.schema(), &[]).expect("every type is supported");
    assert!(
        table
            .ensure(&client, TEST_URL)
            .await
            .expect("creating the table")
    );

    let types = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 ORDER BY attnum",
            &[&table.qualified()],
        )
        .await
        .expect("reading the column types");
    assert_eq!(types.len(), batch.num_columns());
    for (row, field) in types.iter().zip(batch.schema().fields()) {
        let column: String = row.get(0);
        let found: String = row.get(1);
        assert_eq!(column, *field.name());
        assert_eq!(Some(found.as_str()), pg_type(field.data_type()), "{column}");
    }

    let writer = RowWriter::new(table.clone()).expect("a writer");
    let tx = client.transaction().await.expect("a transaction");
    let written = writer
        .write(&tx, &batch, SinkMode::Append)
        .await
        .expect("writing");
    tx.commit().await.expect("committing");
    assert_eq!(written, 2);

    let texts: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|field| format!("\"{}\"::text", field.name()))
        .collect();
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM {} ORDER BY c_i64 NULLS LAST",
                texts.join(", "),
                table.qualified()
            ),
            &[],
        )
        .await
        .expect("reading the rows back");
    assert_eq!(rows.len(), 2);
    for (index, want) in expected.iter().enumerate() {
        let column = batch.schema().field(index).name().clone();
        let value: Option<String> = rows[0].get(index);
        assert_eq!(value.as_deref(), Some(*want), "{column}");
        let null: Option<String> = rows[1].get(index);
        assert!(null.is_none(), "{column} should be NULL, not {null:?}");
    }
}

fn keyed_batch(schema: &Arc<Schema>, rows: &[(Option<&str>, Option<i64>, i64)]) -> RecordBatch {
    let keys: Vec<Option<&str>> = rows.iter().map(|row| row.0).collect();
    let windows: Vec<Option<i64>> = rows.iter().map(|row| row.1).collect();
    let values: Vec<i64> = rows.iter().map(|row| row.2).collect();
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(keys)),
            Arc::new(TimestampMicrosecondArray::from(windows).with_timezone("UTC")),
            Arc::new(Int64Array::from(values)),
        ],
    )
    .expect("a keyed batch")
}

async fn table_rows(
    client: &Client,
    table: &ResultTable,
) -> Vec<(Option<String>, Option<i64>, i64)> {
    client
        .query(
            &format!(
                "SELECT k, (extract(epoch FROM w) * 1000000)::int8, v FROM {} ORDER BY k NULLS FIRST, w, v",
                table.qualified()
            ),
            &[],
        )
        .await
        .expect("reading the table")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

#[tokio::test]
async fn upsert_replaces_a_keys_row_and_null_keys_conflict() {
    let Some(mut client) = client().await else {
        return;
    };
    let name = unique("sluice_upsert");
    let _cleanup = Cleanup(vec![drop_table(&name)]);
    let schema = keyed_schema();
    let key = ["k".to_string(), "w".to_string()];
    let table = ResultTable::new(&name, schema.clone(), &key).expect("a keyed table");
    assert!(table.ensure(&client, TEST_URL).await.expect("creating"));
    assert!(
        !table
            .ensure(&client, TEST_URL)
            .await
            .expect("checking again")
    );
    let writer = RowWriter::new(table.clone()).expect("a writer");
    writer
        .prepare(&client)
        .await
        .expect("preparing the connection");
    writer
        .prepare(&client)
        .await
        .expect("preparing twice is harmless");

    let tx = client.transaction().await.expect("a transaction");
    let first = keyed_batch(&schema, &[(Some("a"), Some(60), 1), (None, None, 2)]);
    writer
        .write(&tx, &first, SinkMode::Upsert)
        .await
        .expect("first write");
    tx.commit().await.expect("commit");

    let tx = client.transaction().await.expect("a transaction");
    let second = keyed_batch(
        &schema,
        &[
            (Some("a"), Some(60), 10),
            (None, None, 20),
            (Some("b"), Some(60), 3),
        ],
    );
    assert_eq!(
        writer
            .write(&tx, &second, SinkMode::Upsert)
            .await
            .expect("second"),
        3
    );
    // Two writes in one transaction: each moves only its own rows out of the staging table.
    let third = keyed_batch(&schema, &[(Some("a"), Some(60), 100)]);
    writer
        .write(&tx, &third, SinkMode::Upsert)
        .await
        .expect("third");
    let fourth = keyed_batch(&schema, &[(Some("a"), Some(60), 200), (Some("a"), None, 7)]);
    writer
        .write(&tx, &fourth, SinkMode::Upsert)
        .await
        .expect("fourth");
    tx.commit().await.expect("commit");

    assert_eq!(
        table_rows(&client, &table).await,
        vec![
            (None, None, 20),
            (Some("a".to_string()), Some(60), 200),
            (Some("a".to_string()), None, 7),
            (Some("b".to_string()), Some(60), 3),
        ]
    );

    // A rolled-back write leaves neither the table nor the staging table changed.
    let tx = client.transaction().await.expect("a transaction");
    let rolled_back = keyed_batch(&schema, &[(Some("z"), Some(1), 1)]);
    writer
        .write(&tx, &rolled_back, SinkMode::Upsert)
        .await
        .expect("write");
    tx.rollback().await.expect("rollback");
    assert_eq!(table_rows(&client, &table).await.len(), 4);
}

#[tokio::test]
async fn append_keeps_every_row_of_big_batches() {
    let Some(mut client) = client().await else {
        return;
    };
    let name = unique("sluice_append");
    let _cleanup = Cleanup(vec![drop_table(&name)]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let table = ResultTable::new(&name, schema.clone(), &[]).expect("an append table");
    table.ensure(&client, TEST_URL).await.expect("creating");
    let writer = RowWriter::new(table.clone()).expect("a writer");
    writer.prepare(&client).await.expect("a no-op for append");
    // ~6 MB of COPY data: several chunks.
    let rows = 100_000_i64;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows)),
            Arc::new(StringArray::from_iter_values((0..rows).map(|n| {
                format!("row {n:>8} padded to be a few dozen bytes long")
            }))),
        ],
    )
    .expect("a big batch");
    for _ in 0..2 {
        let tx = client.transaction().await.expect("a transaction");
        let written = writer
            .write(&tx, &batch, SinkMode::Append)
            .await
            .expect("writing");
        assert_eq!(written, rows as u64);
        tx.commit().await.expect("commit");
    }
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT n), sum(n)::int8, max(label) FROM {}",
                table.qualified()
            ),
            &[],
        )
        .await
        .expect("counting");
    assert_eq!(row.get::<_, i64>(0), 2 * rows);
    assert_eq!(row.get::<_, i64>(1), rows);
    assert_eq!(row.get::<_, i64>(2), 2 * (rows * (rows - 1) / 2));
    assert_eq!(
        row.get::<_, String>(3),
        format!("row {:>8} padded to be a few dozen bytes long", rows - 1)
    );
}
