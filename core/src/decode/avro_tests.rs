//! The Avro decoder against records written by apache-avro (another implementation than the
//! one decoding them): the seed's `OrderEvent`, schema evolution, the promotions and logical
//! types, every bad-input error type, and a property test that any mix of good, truncated and
//! corrupted records gives every record exactly one outcome, the same in any micro-batch split.

use std::path::Path;

use apache_avro::Schema as AvroSchema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use proptest::prelude::*;

use super::{AvroDecoder, Decoded, SourceDecoder, WriterSchemaLookup};
use crate::spec::Job;
use crate::topics::DivertReason;

/// Resolution rule by rule (logical types, decimals, promotions, required nulls) and the
/// registry's unusable answers, kept apart so each file stays readable.
mod resolution;

/// The seed's producer schema, `logicalType` on the field (where Avro ignores it) and all.
const ORDER_EVENT_V1: &str = r#"{"type":"record","name":"OrderEvent","fields":[
  {"name":"order_id","type":"string"},
  {"name":"customer_id","type":"string"},
  {"name":"amount","type":"double"},
  {"name":"status","type":"string"},
  {"name":"timestamp","type":"long","logicalType":"timestamp-millis"}]}"#;

/// v1 plus a field with a default: BACKWARD compatible.
const ORDER_EVENT_V2: &str = r#"{"type":"record","name":"OrderEvent","fields":[
  {"name":"order_id","type":"string"},
  {"name":"customer_id","type":"string"},
  {"name":"amount","type":"double"},
  {"name":"status","type":"string"},
  {"name":"timestamp","type":"long","logicalType":"timestamp-millis"},
  {"name":"channel","type":["null","string"],"default":null}]}"#;

fn job(extra_fields: &str) -> Job {
    Job::from_toml(
        &format!(
            r#"
name = "orders"
[source]
topic = "orders.events"
table = "orders_kafka"
format = "avro-confluent"
registry = "http://127.0.0.1:1"
event_time = "event_time"
max_future_skew = "0s"
fields = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "customer_id", type = "string" }},
  {{ name = "amount", type = "float64" }},
  {{ name = "status", type = "string" }},
  {{ name = "event_time", type = "timestamp", from = "timestamp" }},
  {extra_fields}
]
[transform]
sql = "SELECT COUNT(*) AS n FROM orders_kafka"
"#
        ),
        Path::new("orders.toml"),
    )
    .unwrap()
}

fn confluent(id: u32, schema: &str, fields: Vec<(&str, Value)>) -> Vec<u8> {
    let schema = AvroSchema::parse_str(schema).unwrap();
    let record = Value::Record(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    );
    let mut framed = vec![0];
    framed.extend_from_slice(&id.to_be_bytes());
    let writer = GenericDatumWriter::builder(&schema).build().unwrap();
    framed.extend(writer.write_value_to_vec(record).unwrap());
    framed
}

fn order(id: u32, n: i64, schema: &str) -> Vec<u8> {
    let mut fields = vec![
        ("order_id", Value::String(format!("o{n}"))),
        ("customer_id", Value::String(format!("c{}", n % 3))),
        ("amount", Value::Double(n as f64 + 0.5)),
        ("status", Value::String("completed".into())),
        ("timestamp", Value::Long(1_714_557_600_000 + n)),
    ];
    if schema == ORDER_EVENT_V2 {
        fields.push((
            "channel",
            Value::Union(1, Box::new(Value::String("web".into()))),
        ));
    }
    confluent(id, schema, fields)
}

fn decoder(job: &Job) -> AvroDecoder {
    let decoder = AvroDecoder::confluent(job).unwrap();
    decoder.add_writer_schema(1, WriterSchemaLookup::Found(ORDER_EVENT_V1.into()));
    decoder.add_writer_schema(2, WriterSchemaLookup::Found(ORDER_EVENT_V2.into()));
    decoder
}

fn decode(decoder: &AvroDecoder, records: &[Vec<u8>]) -> Decoded {
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    decoder.decode_records(&refs).unwrap()
}

fn kinds(out: &Decoded) -> Vec<(usize, DivertReason)> {
    out.errors.iter().map(|e| (e.index, e.kind)).collect()
}

#[test]
fn the_seed_order_event_decodes_with_from_mapping_its_timestamp() {
    let job = job("");
    let out = decode(
        &decoder(&job),
        &[order(1, 0, ORDER_EVENT_V1), order(1, 1, ORDER_EVENT_V1)],
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.rows, vec![0, 1]);
    assert_eq!(out.batch.schema(), job.source_schema());
    let times = out
        .batch
        .column(4)
        .as_primitive::<TimestampMicrosecondType>();
    assert_eq!(
        times.values(),
        &[1_714_557_600_000_000, 1_714_557_600_001_000]
    );
    let amounts = out.batch.column(2).as_primitive::<Float64Type>();
    assert_eq!(amounts.values(), &[0.5, 1.5]);
    assert_eq!(out.batch.column(0).as_string::<i32>().value(1), "o1");
}

#[test]
fn v1_and_v2_records_in_one_batch_decode_and_the_added_field_is_null_for_v1() {
    let job = job(r#"{ name = "channel", type = "string" }"#);
    let records = [
        order(1, 0, ORDER_EVENT_V1),
        order(2, 1, ORDER_EVENT_V2),
        order(2, 2, ORDER_EVENT_V2),
        order(1, 3, ORDER_EVENT_V1),
    ];
    let out = decode(&decoder(&job), &records);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.rows, vec![0, 1, 2, 3]);
    let channel = out.batch.column(5).as_string::<i32>();
    assert!(channel.is_null(0) && channel.is_null(3));
    assert_eq!((channel.value(1), channel.value(2)), ("web", "web"));
    let ids = out.batch.column(0).as_string::<i32>();
    assert_eq!(
        (0..4).map(|i| ids.value(i)).collect::<Vec<_>>(),
        ["o0", "o1", "o2", "o3"]
    );
}

#[test]
fn promotions_enums_unions_and_logical_types_resolve_to_the_job_types() {
    let writer = r#"{"type":"record","name":"W","fields":[
      {"name":"order_id","type":{"type":"string","logicalType":"uuid"}},
      {"name":"customer_id","type":{"type":"enum","name":"Tier","symbols":["GOLD","SILVER"]}},
      {"name":"amount","type":"int"},
      {"name":"status","type":["null","bytes"]},
      {"name":"timestamp","type":{"type":"long","logicalType":"timestamp-micros"}},
      {"name":"qty","type":"int"},
      {"name":"day","type":{"type":"int","logicalType":"date"}},
      {"name":"ignored","type":{"type":"array","items":"long"}}]}"#;
    let job = job(
        r#"{ name = "qty", type = "int64" }, { name = "day", type = "date" }, { name = "absent", type = "float64" }"#,
    );
    let decoder = AvroDecoder::confluent(&job).unwrap();
    decoder.add_writer_schema(7, WriterSchemaLookup::Found(writer.into()));
    let record = |status: Value, micros: i64| {
        confluent(
            7,
            writer,
            vec![
                (
                    "order_id",
                    Value::Uuid("67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap()),
                ),
                ("customer_id", Value::Enum(1, "SILVER".into())),
                ("amount", Value::Int(42)),
                ("status", status),
                ("timestamp", Value::TimestampMicros(micros)),
                ("qty", Value::Int(3)),
                ("day", Value::Date(19_844)),
                (
                    "ignored",
                    Value::Array(vec![Value::Long(1), Value::Long(2)]),
                ),
            ],
        )
    };
    let records = [
        record(
            Value::Union(1, Box::new(Value::Bytes(b"paid".to_vec()))),
            1_714_557_600_123_456,
        ),
        record(Value::Union(0, Box::new(Value::Null)), 1),
        record(Value::Union(1, Box::new(Value::Bytes(vec![0xff, 0xfe]))), 2),
    ];
    let out = decode(&decoder, &records);
    assert_eq!(out.rows, vec![0, 1]);
    assert_eq!(kinds(&out), vec![(2, DivertReason::SchemaViolation)]);
    assert_eq!(out.errors[0].field.as_deref(), Some("status"));
    let b = &out.batch;
    assert_eq!(
        b.column(0).as_string::<i32>().value(0),
        "67e55044-10b1-426f-9247-bb680e5fe0c8"
    );
    assert_eq!(b.column(1).as_string::<i32>().value(0), "SILVER");
    assert_eq!(b.column(2).as_primitive::<Float64Type>().value(0), 42.0);
    assert_eq!(b.column(3).as_string::<i32>().value(0), "paid");
    assert!(b.column(3).is_null(1));
    // Microseconds survive: no trip through milliseconds.
    assert_eq!(
        b.column(4)
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_714_557_600_123_456
    );
    assert_eq!(b.column(5).as_primitive::<Int64Type>().value(0), 3);
    assert_eq!(
        b.column(6)
            .as_primitive::<arrow::datatypes::Date32Type>()
            .value(0),
        19_844
    );
    assert!(b.column(7).is_null(0), "a field the writer lacks is null");
}

#[test]
fn every_bad_input_has_its_own_error_type_and_the_rest_proceed() {
    let job = job("");
    let decoder = decoder(&job);
    decoder.add_writer_schema(9, WriterSchemaLookup::NotFound);
    let good = order(1, 1, ORDER_EVENT_V1);
    let mut truncated = order(1, 2, ORDER_EVENT_V1);
    truncated.truncate(truncated.len() - 3);
    let mut trailing = order(1, 3, ORDER_EVENT_V1);
    trailing.extend_from_slice(&[0x02, 0x02]);
    let records = vec![
        good.clone(),
        br#"{"order_id":"json on an avro topic"}"#.to_vec(),
        vec![0, 0, 1],
        order(9, 4, ORDER_EVENT_V1),
        truncated,
        order(1, 5, ORDER_EVENT_V1),
        trailing,
        Vec::new(),
        good,
    ];
    let out = decode(&decoder, &records);
    assert_eq!(out.rows, vec![0, 5, 8]);
    assert_eq!(
        kinds(&out),
        vec![
            (1, DivertReason::MissingMagicByte),
            (2, DivertReason::MissingMagicByte),
            (3, DivertReason::UnknownSchemaId),
            (4, DivertReason::MalformedAvro),
            (6, DivertReason::MalformedAvro),
            (7, DivertReason::MissingMagicByte),
        ]
    );
    assert!(
        out.errors[0].reason.contains("0x7b"),
        "{}",
        out.errors[0].reason
    );
    assert!(
        out.errors[2].reason.contains("schema id 9"),
        "{}",
        out.errors[2].reason
    );
    assert!(
        out.errors[3].reason.contains("writer schema id 1"),
        "{}",
        out.errors[3].reason
    );
    let ids = out.batch.column(0).as_string::<i32>();
    assert_eq!(
        (ids.value(0), ids.value(1), ids.value(2)),
        ("o1", "o5", "o1")
    );
}

#[test]
fn unresolvable_writer_schemas_dead_letter_their_records_naming_the_field() {
    let job = job("");
    let decoder = AvroDecoder::confluent(&job).unwrap();
    let no_order_id =
        r#"{"type":"record","name":"E","fields":[{"name":"timestamp","type":"long"}]}"#;
    let amount_string =
        ORDER_EVENT_V1.replace(r#""amount","type":"double""#, r#""amount","type":"string""#);
    decoder.add_writer_schema(3, WriterSchemaLookup::Found(no_order_id.into()));
    decoder.add_writer_schema(4, WriterSchemaLookup::Found(amount_string.clone()));
    decoder.add_writer_schema(5, WriterSchemaLookup::Found("{not json".into()));
    let records = [
        confluent(3, no_order_id, vec![("timestamp", Value::Long(1))]),
        confluent(
            4,
            &amount_string,
            vec![
                ("order_id", Value::String("a".into())),
                ("customer_id", Value::String("c".into())),
                ("amount", Value::String("12".into())),
                ("status", Value::String("s".into())),
                ("timestamp", Value::Long(1)),
            ],
        ),
        vec![0, 0, 0, 0, 5, 2, b'a'],
    ];
    let out = decode(&decoder, &records);
    assert!(out.rows.is_empty());
    let fields: Vec<_> = out
        .errors
        .iter()
        .map(|e| (e.kind, e.field.clone()))
        .collect();
    assert_eq!(
        fields,
        vec![
            (
                DivertReason::IncompatibleSchema,
                Some("order_id".to_string())
            ),
            (DivertReason::IncompatibleSchema, Some("amount".to_string())),
            (DivertReason::IncompatibleSchema, None),
        ]
    );
    assert!(
        out.errors[1].reason.contains("writer schema id 4"),
        "{}",
        out.errors[1].reason
    );
    assert!(decoder.writer_problem(5).is_some());
}

#[test]
fn the_decoder_names_the_ids_it_lacks_and_refuses_to_guess() {
    let job = job("");
    let decoder = AvroDecoder::confluent(&job).unwrap();
    let records = [
        order(1, 0, ORDER_EVENT_V1),
        order(2, 1, ORDER_EVENT_V2),
        order(1, 2, ORDER_EVENT_V1),
    ];
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    assert_eq!(decoder.missing_writer_schemas(&refs), vec![1, 2]);
    assert!(decoder.decode_records(&refs).is_err());
    decoder.add_writer_schema(1, WriterSchemaLookup::Found(ORDER_EVENT_V1.into()));
    assert_eq!(decoder.missing_writer_schemas(&refs), vec![2]);
}

#[test]
fn a_fixed_schema_file_decodes_bare_bodies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("order.avsc"), ORDER_EVENT_V1).unwrap();
    let toml = String::from(
        r#"
name = "orders"
[source]
topic = "orders.events"
format = "avro"
schema = "order.avsc"
event_time = "timestamp"
fields = [ { name = "order_id", type = "string" }, { name = "timestamp", type = "timestamp" } ]
[transform]
sql = "SELECT COUNT(*) AS n FROM orders_events"
"#,
    );
    let job = Job::from_toml(&toml, &dir.path().join("orders.toml")).unwrap();
    let decoder = AvroDecoder::with_schema_file(&job).unwrap();
    let bare: Vec<Vec<u8>> = (0..3)
        .map(|n| order(1, n, ORDER_EVENT_V1)[5..].to_vec())
        .collect();
    let out = decode(&decoder, &bare);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.batch.num_rows(), 3);
    let missing = Job::from_toml(
        &toml.replace("order.avsc", "nope.avsc"),
        &dir.path().join("orders.toml"),
    )
    .unwrap();
    let err = AvroDecoder::with_schema_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.avsc"), "{err}");
}

/// What a record becomes in the property test.
#[derive(Debug, Clone)]
enum Shape {
    Good(u32, i64),
    Truncated(u32, i64, usize),
    Flipped(u32, i64, usize, u8),
    Garbage(Vec<u8>),
    /// A valid header of a known schema over random bytes: arrow-avro fed noise.
    Noise(u32, Vec<u8>),
}

fn shape() -> impl Strategy<Value = Shape> {
    let id = prop_oneof![Just(1u32), Just(2u32)];
    prop_oneof![
        4 => (id.clone(), 0i64..1000).prop_map(|(i, n)| Shape::Good(i, n)),
        1 => (id.clone(), 0i64..1000, 0usize..64).prop_map(|(i, n, cut)| Shape::Truncated(i, n, cut)),
        1 => (id, 0i64..1000, 5usize..64, any::<u8>()).prop_map(|(i, n, at, b)| Shape::Flipped(i, n, at, b)),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Shape::Garbage),
        1 => (prop_oneof![Just(1u32), Just(2u32)], proptest::collection::vec(any::<u8>(), 0..80))
            .prop_map(|(i, body)| Shape::Noise(i, body)),
    ]
}

fn bytes(shape: &Shape) -> Vec<u8> {
    let schema = |id: u32| {
        if id == 1 {
            ORDER_EVENT_V1
        } else {
            ORDER_EVENT_V2
        }
    };
    match shape {
        Shape::Good(id, n) => order(*id, *n, schema(*id)),
        Shape::Truncated(id, n, cut) => {
            let mut r = order(*id, *n, schema(*id));
            r.truncate((*cut).min(r.len().saturating_sub(1)));
            r
        }
        Shape::Flipped(id, n, at, b) => {
            let mut r = order(*id, *n, schema(*id));
            let at = (*at).min(r.len() - 1);
            r[at] ^= b | 1;
            r
        }
        Shape::Garbage(g) => g.clone(),
        Shape::Noise(id, body) => {
            let mut r = vec![0];
            r.extend_from_slice(&id.to_be_bytes());
            r.extend_from_slice(body);
            r
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_mix_gives_each_record_one_outcome_the_same_in_any_split(
        shapes in proptest::collection::vec(shape(), 0..40),
        split in 1usize..8,
    ) {
        let job = job(r#"{ name = "channel", type = "string" }"#);
        let decoder = decoder(&job);
        decoder.add_writer_schema(0, WriterSchemaLookup::NotFound);
        let records: Vec<Vec<u8>> = shapes.iter().map(bytes).collect();
        // Garbage may name any id: the registry answers "not found" for the unknown ones.
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        for id in decoder.missing_writer_schemas(&refs) {
            decoder.add_writer_schema(id, WriterSchemaLookup::NotFound);
        }
        let whole = decoder.decode_records(&refs).unwrap();
        let mut seen: Vec<usize> = whole.rows.iter().copied().chain(whole.errors.iter().map(|e| e.index)).collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..records.len()).collect::<Vec<_>>());
        prop_assert_eq!(whole.batch.num_rows(), whole.rows.len());
        for (row, &index) in whole.rows.iter().enumerate() {
            if let Shape::Good(_, n) = shapes[index] {
                let id = whole.batch.column(0).as_string::<i32>().value(row);
                prop_assert_eq!(id, format!("o{n}"));
            }
        }
        for (index, shape) in shapes.iter().enumerate() {
            if matches!(shape, Shape::Good(..)) {
                prop_assert!(whole.rows.contains(&index), "good record {} lost: {:?}", index, whole.errors);
            }
        }
        // Split into micro-batches: the same rows, values and errors.
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        let mut batches = Vec::new();
        for (c, chunk) in refs.chunks(split).enumerate() {
            let part = decoder.decode_records(chunk).unwrap();
            rows.extend(part.rows.iter().map(|r| r + c * split));
            errors.extend(part.errors.iter().map(|e| (e.index + c * split, e.kind)));
            batches.push(part.batch);
        }
        prop_assert_eq!(&rows, &whole.rows);
        prop_assert_eq!(errors, whole.errors.iter().map(|e| (e.index, e.kind)).collect::<Vec<_>>());
        let joined = arrow::compute::concat_batches(&job.source_schema(), &batches).unwrap();
        prop_assert_eq!(joined, whole.batch);
    }
}
