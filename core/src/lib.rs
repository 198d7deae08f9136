//! `sluice-core`: everything the layers share, so none of them re-implements the plan.
//!
//! It owns the job file ([`spec`]), the source decoders behind one trait ([`decode`]: JSON, Avro), the plan compiler
//! ([`JobPlan`]) with its windows ([`window`]) and partial-state aggregation
//! ([`AggregateStage`]) and the layout of its partial rows ([`partial_layout`]), the stable
//! partial-state codec ([`state_codec`]), Rust UDFs ([`udf`]), the record-transform contract
//! ([`transform`]), the lake's Delta table layouts with their read/write helpers ([`lake`]),
//! and the Kafka formats between the layers: topic names and diverted-record headers
//! ([`topics`]) and the speed changelog records ([`speed`]). It has no Kafka client,
//! RocksDB, HTTP or daemon. [`fixture`] is the orders job and order generator the tests,
//! benches and demo of every layer share.

pub mod aggregate;
pub mod anomaly;
pub mod checks;
pub mod control;
pub mod decode;
#[cfg(test)]
mod decode_props;
pub mod dedup;
mod dedup_sql;
pub mod duration;
pub mod error;
pub mod fixture;
pub mod fixture_avro;
mod flat_json;
mod flink_sql;
pub mod join;
mod json_escapes;
pub mod lake;
pub mod lake_progress;
pub mod lake_writer;
pub mod operator_state;
pub mod outputs;
pub mod partial_layout;
pub mod pii;
pub mod pipeline;
pub mod plan;
pub mod plan_version;
mod predicate;
pub mod rows;
pub mod spec;
mod spec_checks;
pub mod spec_inputs;
#[cfg(test)]
mod spec_props;
mod spec_sinks;
pub mod speed;
pub mod state_codec;
pub mod stateful;
pub mod time;
pub mod topics;
pub mod transform;
pub mod udf;
pub mod view_coverage;
pub mod window;

pub use aggregate::AggregateStage;
pub use decode::{
    AvroDecoder, Decoded, JsonDecoder, RecordError, SourceDecoder, WriterSchemaLookup,
};
pub use error::{Error, Result};
pub use partial_layout::{KeyPrefix, Origin, PartialLayout};
pub use pipeline::{CheckViolations, Checked, Evaluated, FailedRow, Isolated, Pipeline};
pub use plan::JobPlan;
pub use plan_version::PlanMismatch;
pub use spec::{Job, Lake};
pub use topics::DivertReason;
pub use transform::{BatchTransform, TransformRegistry};
pub use view_coverage::ViewCoverage;
