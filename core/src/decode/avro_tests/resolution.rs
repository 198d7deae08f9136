//! One resolution rule per test, each with the exact values it must give: a real
//! `timestamp-millis` (the logical type on the type, not the seed's field), `decimal` bytes
//! into float64, the numeric promotions into float32 and float64, a null in a required field,
//! and a registry answer that is no Avro schema.

use apache_avro::Decimal;
use apache_avro::types::Value;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Float64Type, TimestampMicrosecondType};

use super::{confluent, decode, job, kinds};
use crate::decode::{AvroDecoder, SourceDecoder, WriterSchemaLookup};
use crate::topics::DivertReason;

/// The job's base fields (see `job`), typed as the writer likes; `{extra}` adds more.
fn writer(amount: &str, timestamp: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"record","name":"W","fields":[
          {{"name":"order_id","type":"string"}},
          {{"name":"customer_id","type":"string"}},
          {{"name":"amount","type":{amount}}},
          {{"name":"status","type":"string"}},
          {{"name":"timestamp","type":{timestamp}}}{extra}]}}"#
    )
}

/// The base fields' values with `amount` and `timestamp` as given, then `extra`.
fn values(
    amount: Value,
    timestamp: Value,
    extra: Vec<(&'static str, Value)>,
) -> Vec<(&'static str, Value)> {
    let mut fields = vec![
        ("order_id", Value::String("o1".into())),
        ("customer_id", Value::String("c1".into())),
        ("amount", amount),
        ("status", Value::String("completed".into())),
        ("timestamp", timestamp),
    ];
    fields.extend(extra);
    fields
}

#[test]
fn a_timestamp_millis_logical_type_keeps_its_instant() {
    let schema = writer(
        r#""double""#,
        r#"{"type":"long","logicalType":"timestamp-millis"}"#,
        "",
    );
    let job = job("");
    let decoder = AvroDecoder::confluent(&job).unwrap();
    decoder.add_writer_schema(11, WriterSchemaLookup::Found(schema.clone()));
    let records = [
        confluent(
            11,
            &schema,
            values(
                Value::Double(1.0),
                Value::TimestampMillis(1_714_557_600_123),
                vec![],
            ),
        ),
        confluent(
            11,
            &schema,
            values(Value::Double(2.0), Value::TimestampMillis(0), vec![]),
        ),
    ];
    let out = decode(&decoder, &records);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let times = out
        .batch
        .column(4)
        .as_primitive::<TimestampMicrosecondType>();
    assert_eq!(times.values(), &[1_714_557_600_123_000, 0]);
}

#[test]
fn a_bytes_decimal_becomes_the_float64_it_denotes() {
    let schema = writer(
        r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#,
        r#""long""#,
        "",
    );
    let job = job("");
    let decoder = AvroDecoder::confluent(&job).unwrap();
    decoder.add_writer_schema(12, WriterSchemaLookup::Found(schema.clone()));
    // Two's-complement big-endian unscaled values: 12345 and -5, at scale 2.
    let records = [
        confluent(
            12,
            &schema,
            values(
                Value::Decimal(Decimal::from(vec![0x30, 0x39])),
                Value::Long(1),
                vec![],
            ),
        ),
        confluent(
            12,
            &schema,
            values(
                Value::Decimal(Decimal::from(vec![0xfb])),
                Value::Long(2),
                vec![],
            ),
        ),
    ];
    let out = decode(&decoder, &records);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let amounts = out.batch.column(2).as_primitive::<Float64Type>();
    assert_eq!(amounts.values(), &[123.45, -0.05]);
}

#[test]
fn a_decimal_for_a_float32_field_does_not_resolve() {
    // float64 is the one decimal target: float32 would silently round most decimals.
    let schema = writer(
        r#""double""#,
        r#""long""#,
        r#",{"name":"rate","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":1}}"#,
    );
    let job = job(r#"{ name = "rate", type = "float32" }"#);
    let decoder = AvroDecoder::confluent(&job).unwrap();
    decoder.add_writer_schema(13, WriterSchemaLookup::Found(schema));
    let problem = decoder
        .writer_problem(13)
        .expect("a decimal does not resolve to float32");
    assert!(
        problem.contains("`rate`") && problem.contains("float32"),
        "{problem}"
    );
}

#[test]
fn long_int_and_float_promote_to_the_jobs_floats() {
    let schema = writer(
        r#""long""#,
        r#""long""#,
        r#",{"name":"ratio","type":"int"},{"name":"score","type":"float"},{"name":"big","type":"long"}"#,
    );
    let job = job(
        r#"{ name = "ratio", type = "float32" }, { name = "score", type = "float64" }, { name = "big", type = "float32" }"#,
    );
    let decoder = AvroDecoder::confluent(&job).unwrap();
    decoder.add_writer_schema(14, WriterSchemaLookup::Found(schema.clone()));
    let record = confluent(
        14,
        &schema,
        values(
            Value::Long(1_234_567_890_123),
            Value::Long(1),
            vec![
                ("ratio", Value::Int(7)),
                ("score", Value::Float(0.1)),
                ("big", Value::Long(16_777_217)),
            ],
        ),
    );
    let out = decode(&decoder, &[record]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let b = &out.batch;
    // long → double (exact below 2^53).
    assert_eq!(
        b.column(2).as_primitive::<Float64Type>().value(0),
        1_234_567_890_123.0
    );
    // int → float.
    assert_eq!(b.column(5).as_primitive::<Float32Type>().value(0), 7.0);
    // float → double: the float's own value, widened (not the decimal 0.1).
    assert_eq!(
        b.column(6).as_primitive::<Float64Type>().value(0),
        f64::from(0.1f32)
    );
    // long → float rounds as Avro's promotion does: 2^24 + 1 has no float.
    assert_eq!(
        b.column(7).as_primitive::<Float32Type>().value(0),
        16_777_216.0
    );
}

#[test]
fn a_null_in_a_required_field_is_missing_field_and_the_rest_decode() {
    // `order_id` is `nullable = false` in the job; the event time is always required.
    let schema = writer(r#""double""#, r#"["null","long"]"#, "").replace(
        r#"{"name":"order_id","type":"string"}"#,
        r#"{"name":"order_id","type":["null","string"]}"#,
    );
    let job = job("");
    let decoder = AvroDecoder::confluent(&job).unwrap();
    decoder.add_writer_schema(15, WriterSchemaLookup::Found(schema.clone()));
    let record = |order_id: Value, timestamp: Value| {
        let mut fields = values(Value::Double(1.0), timestamp, vec![]);
        fields[0] = ("order_id", order_id);
        confluent(15, &schema, fields)
    };
    let some = |v: Value| Value::Union(1, Box::new(v));
    let null = || Value::Union(0, Box::new(Value::Null));
    let records = [
        record(null(), some(Value::Long(1))),
        record(some(Value::String("o2".into())), some(Value::Long(2))),
        record(some(Value::String("o3".into())), null()),
    ];
    let out = decode(&decoder, &records);
    assert_eq!(out.rows, vec![1]);
    assert_eq!(
        kinds(&out),
        vec![
            (0, DivertReason::MissingField),
            (2, DivertReason::MissingField)
        ]
    );
    let fields: Vec<_> = out.errors.iter().map(|e| e.field.as_deref()).collect();
    assert_eq!(fields, [Some("order_id"), Some("timestamp")]);
    let ids = out.batch.column(0).as_string::<i32>();
    assert_eq!((ids.len(), ids.null_count(), ids.value(0)), (1, 0, "o2"));
}

#[test]
fn an_answer_that_is_no_avro_schema_dead_letters_its_records_naming_the_id() {
    let job = job("");
    let decoder = AvroDecoder::confluent(&job).unwrap();
    decoder.add_writer_schema(
        16,
        WriterSchemaLookup::Unusable(
            "the registry holds a PROTOBUF schema under this id; Sluice decodes Avro only".into(),
        ),
    );
    let out = decode(&decoder, &[vec![0, 0, 0, 0, 16, 2, b'a']]);
    assert_eq!(kinds(&out), vec![(0, DivertReason::IncompatibleSchema)]);
    let reason = &out.errors[0].reason;
    assert!(
        reason.contains("schema id 16") && reason.contains("PROTOBUF"),
        "{reason}"
    );
    // The answer is final: the id is not asked for again.
    let header: &[u8] = &[0, 0, 0, 0, 16];
    assert!(decoder.missing_writer_schemas(&[header]).is_empty());
}
