//! The fixture's orders in Avro, as the seed 000 producer writes them: its `OrderEvent`
//! schema (plus the fixture's `region`), `timestamp` a long of epoch milliseconds with the
//! seed's field-level `logicalType`, and a v2 that adds `channel` with a default (BACKWARD
//! compatible), for the tests, benches and the demo's schema evolution.
//!
//! Encoded with apache-avro, another implementation than arrow-avro, which decodes them.

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;

use crate::fixture::Order;

/// Seed 000's `OrderEvent` with the fixture's `region`.
pub const ORDER_EVENT_V1: &str = r#"{"type":"record","name":"OrderEvent","fields":[{"name":"order_id","type":"string"},{"name":"customer_id","type":"string"},{"name":"region","type":"string"},{"name":"amount","type":"double"},{"name":"status","type":"string"},{"name":"timestamp","type":"long","logicalType":"timestamp-millis"}]}"#;

/// v1 and `channel`, nullable with a default: readers of v1 can read it and it can read v1.
pub const ORDER_EVENT_V2: &str = r#"{"type":"record","name":"OrderEvent","fields":[{"name":"order_id","type":"string"},{"name":"customer_id","type":"string"},{"name":"region","type":"string"},{"name":"amount","type":"double"},{"name":"status","type":"string"},{"name":"timestamp","type":"long","logicalType":"timestamp-millis"},{"name":"channel","type":["null","string"],"default":null}]}"#;

/// The job `fields` of orders read from these records: `event_time` from `timestamp`.
pub const ORDER_AVRO_FIELDS: &str = r#"  { name = "order_id", type = "string", nullable = false },
  { name = "customer_id", type = "string" },
  { name = "region", type = "string" },
  { name = "amount", type = "float64" },
  { name = "status", type = "string" },
  { name = "event_time", type = "timestamp", from = "timestamp" },
"#;

/// Writes orders in one of the two schemas, framed the Confluent way under a registry id.
pub struct OrderAvro {
    schema: Schema,
    version: u32,
    id: u32,
}

impl OrderAvro {
    /// `version` 1 or 2 ([`ORDER_EVENT_V1`], [`ORDER_EVENT_V2`]), registered under `id`.
    pub fn new(version: u32, id: u32) -> OrderAvro {
        let text = if version >= 2 {
            ORDER_EVENT_V2
        } else {
            ORDER_EVENT_V1
        };
        OrderAvro {
            schema: Schema::parse_str(text).expect("the fixture's Avro schemas parse"),
            version,
            id,
        }
    }

    /// The Avro binary body of `order` (a v2 order's channel is `web` or `app`).
    pub fn body(&self, order: &Order) -> Vec<u8> {
        let mut fields = vec![
            (
                "order_id".to_string(),
                Value::String(order.order_id.clone()),
            ),
            (
                "customer_id".to_string(),
                Value::String(order.customer_id.clone()),
            ),
            (
                "region".to_string(),
                Value::String(order.region.to_string()),
            ),
            ("amount".to_string(), Value::Double(order.amount)),
            (
                "status".to_string(),
                Value::String(order.status.to_string()),
            ),
            ("timestamp".to_string(), Value::Long(order.event_time)),
        ];
        if self.version >= 2 {
            let channel = if order.event_time % 2 == 0 {
                "web"
            } else {
                "app"
            };
            fields.push((
                "channel".to_string(),
                Value::Union(1, Box::new(Value::String(channel.to_string()))),
            ));
        }
        GenericDatumWriter::builder(&self.schema)
            .build()
            .and_then(|writer| writer.write_value_to_vec(Value::Record(fields)))
            .unwrap_or_default()
    }

    /// `order` in the Confluent wire format: magic byte 0, the schema id, the body.
    pub fn confluent(&self, order: &Order) -> Vec<u8> {
        let body = self.body(order);
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&self.id.to_be_bytes());
        framed.extend(body);
        framed
    }
}
