//! The job file: what a user writes once and every layer reads.
//!
//! ```toml
//! name = "orders_per_minute"
//! [source]
//! topic = "orders.events"
//! table = "orders_kafka"          # the name the SQL reads from (default: topic, `.`/`-` → `_`)
//! event_time = "event_time"       # a `timestamp` field: epoch milliseconds or RFC 3339 text
//! watermark_delay = "5s"          # default 5s
//! allowed_lateness = "1m"         # default 0s
//! max_future_skew = "1h"          # default 1h; event times further ahead of the record's
//!                                 # timestamp are dead-lettered as clock_skew; "0s" disables
//! format = "json"                 # default; or "avro-confluent" (registry) or "avro" (schema file)
//! registry = "http://registry:8081" # avro-confluent only; SLUICE_REGISTRY_URL overrides it
//! registry_ca = "ca.pem"          # https registries with a private CA; SLUICE_REGISTRY_CA overrides it
//! schema = "order_event.avsc"     # avro only: the writer schema, relative to the job file
//! fields = [
//!   { name = "order_id", type = "string", nullable = false },
//!   { name = "amount", type = "float64" },
//!   { name = "event_time", type = "timestamp", from = "timestamp" }, # read from field `timestamp`
//! ]
//! [transform]
//! sql = "SELECT ... FROM orders_kafka ..."
//! polars = "normalize_orders"     # optional: a registered Polars transform applied before the SQL
//! [view]
//! key = []                        # the GROUP BY columns that identify a view row
//! bucket = "1h"                   # default 1h; at least the window size
//! [lake]                          # optional; defaults derive from `--lake` / SLUICE_LAKE / ./lake
//! raw = "s3://bucket/raw/orders.events"
//! view = "s3://bucket/views/orders_per_minute"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::duration::serde_duration;
use crate::error::{Error, Result};
pub use crate::spec_checks::{CheckKind, CheckSpec, CheckValue, Severity};
pub use crate::spec_inputs::{Input, InputKind, RawLocation, TableSpec};
use crate::spec_inputs::{InputForm, JobFile};
pub use crate::spec_sinks::{
    OutputSpec, POSTGRES_URL_ENV, SinkKind, SinkMode, SinkSpec, redact_url,
};

/// The time zone every Sluice timestamp carries.
pub const UTC: &str = "UTC";

/// The Arrow type of event time and window bounds everywhere after decoding. Delta Lake stores
/// timestamps in microseconds, so this is the type that survives a lake round trip unchanged.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// A job file, normalised (see [`crate::spec_inputs`]): read from TOML through
/// `spec_inputs::JobFile`, which has the same keys with `[source]` or `[[sources]]`.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    /// The primary stream: `[source]`, or the first `[[sources]]` entry. The SQL reads it.
    pub source: SourceSpec,
    /// The other `[[sources]]` entries, in file order.
    pub more_sources: Vec<SourceSpec>,
    /// `[[tables]]`: versioned reference data from compacted topics.
    pub tables: Vec<TableSpec>,
    pub transform: TransformSpec,
    pub view: ViewSpec,
    pub lake: LakeSpec,
    /// Branching: result rows routed to further topics by predicate.
    pub outputs: Vec<OutputSpec>,
    /// External stores the results are written to, exactly once.
    pub sinks: Vec<SinkSpec>,
    /// Data-quality checks on the primary stream's rows (see [`crate::checks`]).
    pub checks: Vec<CheckSpec>,
    /// Row-count anomaly detection on the primary stream's rows per window (see
    /// [`crate::anomaly`]).
    pub anomalies: Option<crate::anomaly::AnomalySpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub topic: String,
    #[serde(default)]
    pub format: SourceFormat,
    /// The table name the SQL selects from. Default: the topic with `.` and `-` replaced by `_`.
    pub table: Option<String>,
    pub event_time: String,
    #[serde(default = "default_watermark_delay", with = "serde_duration")]
    pub watermark_delay: Duration,
    #[serde(default, with = "serde_duration")]
    pub allowed_lateness: Duration,
    /// How far an event time may be ahead of its record's timestamp (the Kafka timestamp; the
    /// wall clock for files) before the record is dead-lettered as `clock_skew`: one record
    /// from a producer with a wrong clock or unit must not move the watermark into the future
    /// and turn every later record late. `0s` disables the guard.
    #[serde(default = "default_max_future_skew", with = "serde_duration")]
    pub max_future_skew: Duration,
    /// `format = "avro-confluent"`: the schema registry writer schemas are fetched from by id
    /// (`SLUICE_REGISTRY_URL` overrides it; credentials come from the URL or the environment,
    /// never from the job file).
    pub registry: Option<String>,
    /// An `https://` registry with a private CA: a PEM file of the CA certificates its
    /// certificate is checked against instead of the public roots, relative to the job file
    /// (`SLUICE_REGISTRY_CA` overrides it).
    pub registry_ca: Option<PathBuf>,
    /// `format = "avro"`: the file holding the writer schema every record is written with,
    /// relative to the job file.
    pub schema: Option<PathBuf>,
    pub fields: Vec<FieldSpec>,
    /// A non-null `timestamp` column filled from each record's Kafka timestamp instead of read
    /// from the record, after the fields: a `[[tables]]` entry without `valid_from` gets
    /// [`crate::spec_inputs::KAFKA_VALID_FROM`]. Never set from a job file.
    #[serde(skip)]
    pub kafka_time_field: Option<String>,
}

/// The environment variable that overrides `[source] registry`.
pub const REGISTRY_ENV: &str = "SLUICE_REGISTRY_URL";
/// The environment variable that overrides `[source] registry_ca`.
pub const REGISTRY_CA_ENV: &str = "SLUICE_REGISTRY_CA";

pub(crate) fn default_watermark_delay() -> Duration {
    Duration::from_secs(5)
}

pub(crate) fn default_max_future_skew() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// One JSON object per record (per Kafka message value, per line of a JSONL file).
    #[default]
    Json,
    /// Confluent's wire format (Flink's name for it): magic byte 0, the writer schema's
    /// registry id (4 bytes, big-endian), then the Avro binary body.
    AvroConfluent,
    /// Plain Avro binary bodies, all written with the schema in `[source] schema`.
    Avro,
}

impl SourceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Json => "json",
            SourceFormat::AvroConfluent => "avro-confluent",
            SourceFormat::Avro => "avro",
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: FieldType,
    #[serde(default = "default_true")]
    pub nullable: bool,
    /// The field of the source record this one is read from, when its name differs (the
    /// seed's Avro `timestamp` feeding the SQL's `event_time`). Default: `name`.
    #[serde(default)]
    pub from: Option<String>,
    /// The field holds personal data of this kind; it is protected by `policy` as it is
    /// decoded (see [`crate::pii`]).
    #[serde(default)]
    pub pii: Option<crate::pii::PiiKind>,
    /// `mask` (default), `hash` or `drop`; only with `pii`.
    #[serde(default)]
    pub policy: Option<crate::pii::PiiPolicy>,
}

impl FieldSpec {
    /// The name of the field in the source record.
    pub fn source_name(&self) -> &str {
        self.from.as_deref().unwrap_or(&self.name)
    }
}

/// The plan fingerprint hashes this text, so it stays what it was before `from` existed for
/// fields without one: a job's fingerprint must not change when Sluice grows a field.
impl std::fmt::Debug for FieldSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("FieldSpec");
        out.field("name", &self.name)
            .field("data_type", &self.data_type)
            .field("nullable", &self.nullable);
        if let Some(from) = &self.from {
            out.field("from", from);
        }
        // The stored values depend on the policy: changing it is a new plan.
        if let Some(pii) = &self.pii {
            out.field("pii", pii)
                .field("policy", &self.policy.unwrap_or_default());
        }
        out.finish()
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Boolean,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Epoch milliseconds (a JSON number) or RFC 3339 text; stored as UTC microseconds.
    Timestamp,
    /// `YYYY-MM-DD`.
    Date,
}

impl FieldType {
    /// The Arrow type a record is decoded into (timestamps arrive as epoch milliseconds).
    pub(crate) fn decode_type(self) -> DataType {
        match self {
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            other => other.arrow_type(),
        }
    }

    /// The Arrow type the field has in every batch after decoding.
    pub fn arrow_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Boolean => DataType::Boolean,
            FieldType::Int32 => DataType::Int32,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float32 => DataType::Float32,
            FieldType::Float64 => DataType::Float64,
            FieldType::Timestamp => timestamp_type(),
            FieldType::Date => DataType::Date32,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    pub sql: String,
    /// Name of a Polars transform registered in the `sluice` binary, applied before the SQL.
    pub polars: Option<String>,
    /// How far apart in event time two rows with the same key may be for the later one to be
    /// a duplicate, when the SQL deduplicates (`ROW_NUMBER() … WHERE rn = 1`, see
    /// [`crate::dedup`]). Default 1h ([`TransformSpec::DEFAULT_DEDUP_WITHIN`]).
    #[serde(default, deserialize_with = "optional_duration")]
    pub dedup_within: Option<Duration>,
}

impl TransformSpec {
    pub const DEFAULT_DEDUP_WITHIN: Duration = Duration::from_secs(3600);

    /// `dedup_within`, or its default.
    pub fn dedup_within(&self) -> Duration {
        self.dedup_within.unwrap_or(Self::DEFAULT_DEDUP_WITHIN)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    /// The GROUP BY output columns that identify a view row (empty for a global aggregate).
    #[serde(default)]
    pub key: Vec<String>,
    /// Partial states are kept per bucket of event time; the batch/speed cutoff is a bucket
    /// boundary. Default 1h.
    #[serde(default = "default_bucket", with = "serde_duration")]
    pub bucket: Duration,
    /// The view version (default 1): raise it when the plan changes, and the new plan writes
    /// its state under names of its own (see [`crate::plan_version`]) while the old version
    /// keeps serving.
    #[serde(default = "default_version")]
    pub version: u32,
    /// How far behind the wall clock the merged view may be complete to (the newer of the
    /// batch cutoff and the speed watermark) before the serving layer calls the job stale:
    /// `fresh: false` in `/v1/jobs`, `degraded` in `/health`, and
    /// `sluice_view_freshness_sla_seconds` beside `sluice_view_freshness_seconds` for the
    /// alert. Default: none (freshness is reported, never judged). Not part of the plan.
    #[serde(default, deserialize_with = "optional_duration")]
    pub freshness_sla: Option<Duration>,
}

impl Default for ViewSpec {
    fn default() -> Self {
        ViewSpec {
            key: Vec::new(),
            bucket: default_bucket(),
            version: default_version(),
            freshness_sla: None,
        }
    }
}

/// `serde_duration` for an optional field (absent: `None`, through `#[serde(default)]`).
pub(crate) fn optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    serde_duration::deserialize(d).map(Some)
}

fn default_version() -> u32 {
    1
}

fn default_bucket() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeSpec {
    /// The raw (master dataset) Delta table. Default `<lake>/raw/<topic>`. A job with several
    /// inputs names one per input table (`[lake.raw]`, `customers = "s3://…"`), each optional.
    pub raw: Option<RawLocation>,
    /// The batch view Delta table. Default `<lake>/views/<job>`.
    pub view: Option<String>,
}

/// A parsed and validated job file.
#[derive(Debug, Clone)]
pub struct Job {
    pub spec: JobSpec,
    pub file: PathBuf,
    /// How the file wrote its streams, so errors name keys as the file has them.
    pub(crate) form: InputForm,
}

impl Job {
    pub fn from_file(path: &Path) -> Result<Job> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadJob {
            file: path.to_path_buf(),
            source,
        })?;
        Job::from_toml(&text, path)
    }

    /// Parses job TOML; `file` only names the origin in errors.
    pub fn from_toml(text: &str, file: &Path) -> Result<Job> {
        let parsed: JobFile = toml::from_str(text).map_err(|e| Error::ParseJob {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let (spec, form) = parsed.normalise(file)?;
        let job = Job {
            spec,
            file: file.to_path_buf(),
            form,
        };
        job.validate()?;
        Ok(job)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The table name the SQL reads from.
    pub fn table_name(&self) -> String {
        crate::spec_inputs::table_name(self.spec.source.table.as_deref(), &self.spec.source.topic)
    }

    /// The schema of decoded source records (event time as UTC microseconds, non-null).
    pub fn source_schema(&self) -> SchemaRef {
        Arc::new(self.schema_with(FieldType::arrow_type))
    }

    /// The schema the JSON decoder fills: source field names (`from`), timestamps as epoch
    /// milliseconds.
    pub(crate) fn decode_schema(&self) -> SchemaRef {
        let source = &self.spec.source;
        Arc::new(Schema::new(
            source
                .fields
                .iter()
                .map(|f| {
                    let nullable = f.nullable && f.name != source.event_time;
                    Field::new(f.source_name(), f.data_type.decode_type(), nullable)
                })
                .collect::<Vec<_>>(),
        ))
    }

    fn schema_with(&self, data_type: impl Fn(FieldType) -> DataType) -> Schema {
        let source = &self.spec.source;
        let kafka_time = source
            .kafka_time_field
            .iter()
            .map(|name| Field::new(name, data_type(FieldType::Timestamp), false));
        Schema::new(
            source
                .fields
                .iter()
                .map(|f| {
                    let nullable = f.nullable && f.name != source.event_time;
                    Field::new(&f.name, data_type(f.data_type), nullable)
                })
                .chain(kafka_time)
                .collect::<Vec<_>>(),
        )
    }

    /// The registry `format = "avro-confluent"` fetches writer schemas from:
    /// `SLUICE_REGISTRY_URL`, else `[source] registry`.
    pub fn registry_url(&self) -> Option<String> {
        std::env::var(REGISTRY_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| self.spec.source.registry.clone())
    }

    /// The PEM file of CA certificates an `https://` registry's certificate is checked
    /// against: `SLUICE_REGISTRY_CA` (as given), else `[source] registry_ca` resolved against
    /// the job file's directory; `None`: the public roots.
    pub fn registry_ca(&self) -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(REGISTRY_CA_ENV).filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let ca = self.spec.source.registry_ca.as_ref()?;
        Some(match self.file.parent() {
            Some(dir) if ca.is_relative() => dir.join(ca),
            _ => ca.clone(),
        })
    }

    /// `[source] schema`, resolved against the job file's directory.
    pub fn schema_file(&self) -> Option<PathBuf> {
        let schema = self.spec.source.schema.as_ref()?;
        Some(match self.file.parent() {
            Some(dir) if schema.is_relative() => dir.join(schema),
            _ => schema.clone(),
        })
    }

    pub fn bucket_micros(&self) -> i64 {
        self.spec.view.bucket.as_micros() as i64
    }

    pub(crate) fn invalid(&self, field: &str, expected: &str, got: impl Into<String>) -> Error {
        Error::InvalidField {
            file: self.file.clone(),
            field: field.to_string(),
            expected: expected.to_string(),
            got: got.into(),
        }
    }

    fn validate(&self) -> Result<()> {
        let spec = &self.spec;
        let name_ok = !spec.name.is_empty()
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(self.invalid(
                "name",
                "a non-empty name of letters, digits, `_` and `-`",
                format!("{:?}", spec.name),
            ));
        }
        self.validate_inputs()?;
        if spec.view.version == 0 {
            return Err(self.invalid("view.version", "a version number from 1", "0"));
        }
        if spec.view.bucket.as_millis() == 0 {
            return Err(self.invalid("view.bucket", "a positive duration", "0"));
        }
        if spec.view.freshness_sla.is_some_and(|sla| sla.is_zero()) {
            return Err(self.invalid("view.freshness_sla", "a positive duration", "0"));
        }
        if spec.transform.sql.trim().is_empty() {
            return Err(self.invalid("transform.sql", "a SELECT statement", "empty text"));
        }
        self.validate_outputs()?;
        self.validate_sinks()?;
        self.validate_checks()?;
        if let Some(anomalies) = &spec.anomalies {
            anomalies.validate(&self.file)?;
        }
        Ok(())
    }

    /// The rules of one input (`spec.source`): fields, event time, format, PII. Errors say
    /// `source.…`; [`Job::validate_inputs`] renames them for `[[sources]]` and `[[tables]]`.
    pub(crate) fn validate_source(&self) -> Result<()> {
        let spec = &self.spec;
        if spec.source.topic.is_empty() {
            return Err(self.invalid("source.topic", "a Kafka topic name", "\"\""));
        }
        if spec.source.fields.is_empty() {
            return Err(self.invalid("source.fields", "at least one field", "none"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut sources = std::collections::HashSet::new();
        for (i, field) in spec.source.fields.iter().enumerate() {
            if field.source_name().is_empty() || !sources.insert(field.source_name()) {
                return Err(self.invalid(
                    &format!("source.fields[{i}].from"),
                    "a non-empty source field no other field reads",
                    format!("{:?}", field.source_name()),
                ));
            }
            if field.name.is_empty() || field.name.starts_with("__") {
                return Err(self.invalid(
                    &format!("source.fields[{i}].name"),
                    "a non-empty name not starting with `__` (reserved for Sluice)",
                    format!("{:?}", field.name),
                ));
            }
            if !seen.insert(field.name.as_str()) {
                return Err(self.invalid(
                    &format!("source.fields[{i}].name"),
                    "a unique field name",
                    format!("a second `{}`", field.name),
                ));
            }
        }
        let event_time = spec
            .source
            .fields
            .iter()
            .find(|f| f.name == spec.source.event_time);
        match event_time {
            None if spec.source.kafka_time_field.as_ref() == Some(&spec.source.event_time) => {}
            None => {
                return Err(self.invalid(
                    "source.event_time",
                    "the name of one of its fields",
                    format!("`{}`", spec.source.event_time),
                ));
            }
            Some(f) if f.data_type != FieldType::Timestamp => {
                return Err(self.invalid(
                    "source.event_time",
                    "a field of type \"timestamp\"",
                    format!("`{}` of type {:?}", f.name, f.data_type),
                ));
            }
            Some(_) => {}
        }
        self.validate_format()?;
        crate::pii::validate(self)
    }

    /// Each check has the keys its kind needs and no others, a unique name, and a column
    /// that is a source field; patterns compile. (Types and `expect` predicates are checked
    /// when the checks compile with the plan.)
    fn validate_checks(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for (i, check) in self.spec.checks.iter().enumerate() {
            let at = |key: &str| format!("checks[{i}].{key}");
            let kind = check.check;
            let name = check.display_name();
            if kind == CheckKind::Expect && check.name.is_none() {
                return Err(self.invalid(&at("name"), "a name for an `expect` check", "none"));
            }
            if !crate::spec_sinks::valid_route_name(&name) || !names.insert(name.clone()) {
                return Err(self.invalid(
                    &at("name"),
                    "a unique name of letters, digits, `_` and `-`",
                    format!("{name:?}"),
                ));
            }
            if check.columns.is_some() && (kind != CheckKind::Unique || check.column.is_some()) {
                return Err(self.invalid(
                    &at("columns"),
                    "`columns` only on a `unique` check, instead of `column`",
                    "both or another check",
                ));
            }
            if check.within.is_some() && kind != CheckKind::Unique {
                return Err(self.invalid(
                    &at("within"),
                    "no `within` but on a `unique` check",
                    "a value",
                ));
            }
            let columns = check.key_columns();
            match (columns.is_empty(), kind) {
                (true, CheckKind::Expect) => {}
                (true, _) => {
                    return Err(self.invalid(&at("column"), "the source field checked", "none"));
                }
                (false, _) => {
                    let key = if check.columns.is_some() {
                        "columns"
                    } else {
                        "column"
                    };
                    for column in &columns {
                        if !self.spec.source.fields.iter().any(|f| &f.name == column) {
                            let known: Vec<&str> = self
                                .spec
                                .source
                                .fields
                                .iter()
                                .map(|f| f.name.as_str())
                                .collect();
                            return Err(self.invalid(
                                &at(key),
                                &format!("a source field ({})", known.join(", ")),
                                format!("`{column}`"),
                            ));
                        }
                    }
                }
            }
            let given = [
                ("values", check.values.is_some(), CheckKind::AcceptedValues),
                ("min", check.min.is_some(), CheckKind::Range),
                ("max", check.max.is_some(), CheckKind::Range),
                ("inclusive", check.inclusive.is_some(), CheckKind::Range),
                ("pattern", check.pattern.is_some(), CheckKind::Regex),
                ("predicate", check.predicate.is_some(), CheckKind::Expect),
            ];
            if let Some((key, _, owner)) =
                given.iter().find(|(_, set, owner)| *set && *owner != kind)
            {
                return Err(self.invalid(
                    &at(key),
                    &format!(
                        "no `{key}` on a `{}` check (it belongs to `{}`)",
                        kind.as_str(),
                        owner.as_str()
                    ),
                    "a value",
                ));
            }
            match kind {
                CheckKind::AcceptedValues if check.values.as_ref().is_none_or(Vec::is_empty) => {
                    return Err(self.invalid(&at("values"), "at least one accepted value", "none"));
                }
                CheckKind::Range if check.min.is_none() && check.max.is_none() => {
                    return Err(self.invalid(&at("min"), "a `min`, a `max` or both", "neither"));
                }
                CheckKind::Regex => {
                    let pattern = check.pattern.as_deref().unwrap_or_default();
                    if let Err(e) = regex::Regex::new(pattern) {
                        return Err(self.invalid(
                            &at("pattern"),
                            "a regular expression",
                            format!("{pattern:?}: {e}"),
                        ));
                    }
                    if check.pattern.is_none() {
                        return Err(self.invalid(&at("pattern"), "a regular expression", "none"));
                    }
                }
                CheckKind::Expect
                    if check
                        .predicate
                        .as_deref()
                        .is_none_or(|p| p.trim().is_empty()) =>
                {
                    return Err(self.invalid(&at("predicate"), "an SQL predicate", "none"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn validate_outputs(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        let mut catch_all = false;
        for (i, output) in self.spec.outputs.iter().enumerate() {
            if !crate::spec_sinks::valid_route_name(&output.name) || !names.insert(&output.name) {
                return Err(self.invalid(
                    &format!("outputs[{i}].name"),
                    "a unique name of letters, digits, `_` and `-`",
                    format!("{:?}", output.name),
                ));
            }
            match (&output.predicate, output.otherwise) {
                (Some(_), true) => {
                    return Err(self.invalid(
                        &format!("outputs[{i}].where"),
                        "no predicate on the `else = true` output",
                        "both",
                    ));
                }
                (None, false) => {
                    return Err(self.invalid(
                        &format!("outputs[{i}].where"),
                        "an SQL predicate, or `else = true`",
                        "neither",
                    ));
                }
                (Some(p), false) if p.trim().is_empty() => {
                    return Err(self.invalid(
                        &format!("outputs[{i}].where"),
                        "an SQL predicate",
                        "\"\"",
                    ));
                }
                (None, true) if catch_all => {
                    return Err(self.invalid(
                        &format!("outputs[{i}].else"),
                        "at most one `else = true` output",
                        "a second one",
                    ));
                }
                (None, true) => catch_all = true,
                (Some(_), false) => {}
            }
            if output.topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(self.invalid(
                    &format!("outputs[{i}].topic"),
                    "a Kafka topic name",
                    "\"\"",
                ));
            }
        }
        Ok(())
    }

    fn validate_sinks(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.spec.sinks.iter().enumerate() {
            let name = sink.sink_name();
            if !crate::spec_sinks::valid_route_name(name) || !names.insert(name.to_string()) {
                return Err(self.invalid(
                    &format!("sinks[{i}].name"),
                    "a unique name of letters, digits, `_` and `-` (two sinks of one kind need names)",
                    format!("{name:?}"),
                ));
            }
            if sink.url.trim().is_empty() {
                return Err(self.invalid(&format!("sinks[{i}].url"), "a postgres:// URL", "\"\""));
            }
            if let Some(output) = &sink.output
                && !self.spec.outputs.iter().any(|o| &o.name == output)
            {
                return Err(self.invalid(
                    &format!("sinks[{i}].output"),
                    "the name of an [[outputs]] entry",
                    format!("{output:?}"),
                ));
            }
            if let Some(table) = &sink.table
                && table.trim().is_empty()
            {
                return Err(self.invalid(&format!("sinks[{i}].table"), "a table name", "\"\""));
            }
        }
        Ok(())
    }
}

impl Job {
    fn validate_format(&self) -> Result<()> {
        let source = &self.spec.source;
        let format = source.format.as_str();
        match source.format {
            SourceFormat::AvroConfluent => {
                if source.schema.is_some() {
                    return Err(self.invalid(
                        "source.schema",
                        "no schema file with format \"avro-confluent\" (writer schemas come from the registry)",
                        "a schema file",
                    ));
                }
                if let Some(url) = &source.registry
                    && url.trim().is_empty()
                {
                    return Err(self.invalid("source.registry", "a registry URL", "\"\""));
                }
            }
            SourceFormat::Avro => {
                if source.schema.is_none() {
                    return Err(self.invalid(
                        "source.schema",
                        "the writer schema file (format \"avro\" has no registry)",
                        "none",
                    ));
                }
                if source.registry.is_some() {
                    return Err(self.invalid(
                        "source.registry",
                        "no registry with format \"avro\" (use \"avro-confluent\")",
                        "a registry URL",
                    ));
                }
            }
            SourceFormat::Json => {
                for (key, set) in [
                    ("source.registry", source.registry.is_some()),
                    ("source.schema", source.schema.is_some()),
                ] {
                    if set {
                        return Err(self.invalid(
                            key,
                            &format!("nothing with format \"{format}\" (it is for Avro formats)"),
                            "a value",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where the lake lives: `--lake URL`, else `SLUICE_LAKE`, else `./lake`.
#[derive(Debug, Clone)]
pub struct Lake {
    pub root: String,
}

/// The environment variable that names the lake when `--lake` is absent.
pub const LAKE_ENV: &str = "SLUICE_LAKE";

impl Lake {
    pub fn resolve(flag: Option<&str>) -> Lake {
        let root = flag
            .map(str::to_string)
            .or_else(|| std::env::var(LAKE_ENV).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "./lake".to_string());
        Lake {
            root: root.trim_end_matches('/').to_string(),
        }
    }

    /// The raw table of `job`'s primary stream (of the input itself for an [`Input`]'s job).
    pub fn raw_table(&self, job: &Job) -> String {
        job.raw_location_of(&job.table_name())
            .unwrap_or_else(|| format!("{}/raw/{}", self.root, job.spec.source.topic))
    }

    pub fn view_table(&self, job: &Job) -> String {
        job.spec
            .lake
            .view
            .clone()
            .unwrap_or_else(|| format!("{}/views/{}", self.root, job.versioned_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
[source]
topic = "orders.events"
event_time = "ts"
fields = [ { name = "ts", type = "timestamp" }, { name = "x", type = "int64" } ]
[transform]
sql = "SELECT x FROM orders_events"
"#;

    fn parse(text: &str) -> Result<Job> {
        Job::from_toml(text, Path::new("job.toml"))
    }

    #[test]
    fn defaults_apply() {
        let job = parse(GOOD).unwrap();
        assert_eq!(job.table_name(), "orders_events");
        assert_eq!(job.spec.view.bucket, Duration::from_secs(3600));
        assert_eq!(job.spec.source.watermark_delay, Duration::from_secs(5));
        let lake = Lake {
            root: "/l".to_string(),
        };
        assert_eq!(lake.raw_table(&job), "/l/raw/orders.events");
        assert_eq!(lake.view_table(&job), "/l/views/t");
        assert!(!job.source_schema().field(0).is_nullable());
    }

    #[test]
    fn unknown_key_names_file_and_field() {
        let err = parse(&GOOD.replace("[transform]", "colour = 1\n[transform]"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("job.toml:"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn bad_duration_is_explained() {
        let err = parse(&GOOD.replace(
            "event_time = \"ts\"",
            "event_time = \"ts\"\nwatermark_delay = \"5 parsecs\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("invalid duration `5 parsecs`"), "{err}");
    }

    #[test]
    fn freshness_sla_is_an_optional_positive_duration() {
        assert_eq!(parse(GOOD).unwrap().spec.view.freshness_sla, None);
        let with = |sla: &str| parse(&format!("{GOOD}[view]\nfreshness_sla = \"{sla}\"\n"));
        assert_eq!(
            with("1m 30s").unwrap().spec.view.freshness_sla,
            Some(Duration::from_secs(90))
        );
        let zero = with("0s").unwrap_err().to_string();
        assert!(zero.contains("view.freshness_sla"), "{zero}");
        let bad = with("soon").unwrap_err().to_string();
        assert!(bad.contains("invalid duration `soon`"), "{bad}");
    }

    #[test]
    fn event_time_must_be_a_timestamp_field() {
        let err = parse(&GOOD.replace("event_time = \"ts\"", "event_time = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `source.event_time`"), "{err}");
        assert!(err.contains("timestamp"), "{err}");
    }

    #[test]
    fn a_field_without_from_prints_as_before_so_fingerprints_stay() {
        let job = parse(GOOD).unwrap();
        assert_eq!(
            format!("{:?}", job.spec.source.fields[0]),
            r#"FieldSpec { name: "ts", data_type: Timestamp, nullable: true }"#
        );
        let renamed = parse(&GOOD.replace(
            r#"{ name = "x", type = "int64" }"#,
            r#"{ name = "x", type = "int64", from = "y" }"#,
        ))
        .unwrap();
        assert_ne!(job.plan_fingerprint(), renamed.plan_fingerprint());
        assert_eq!(renamed.spec.source.fields[1].source_name(), "y");
        assert_eq!(renamed.decode_schema().field(1).name(), "y");
        assert_eq!(renamed.source_schema().field(1).name(), "x");
    }

    #[test]
    fn two_fields_may_not_read_one_source_field() {
        let err = parse(&GOOD.replace(
            r#"{ name = "x", type = "int64" }"#,
            r#"{ name = "x", type = "int64", from = "ts" }"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("source.fields[1].from"), "{err}");
    }

    #[test]
    fn formats_take_only_their_own_settings() {
        let with = |lines: &str| {
            parse(&GOOD.replace(
                "event_time = \"ts\"",
                &format!("event_time = \"ts\"\n{lines}"),
            ))
        };
        let confluent = with("format = \"avro-confluent\"\nregistry = \"http://r:8081\"").unwrap();
        assert_eq!(confluent.spec.source.format, SourceFormat::AvroConfluent);
        assert_eq!(
            confluent.spec.source.registry.as_deref(),
            Some("http://r:8081")
        );
        let avro = with("format = \"avro\"\nschema = \"s.avsc\"").unwrap();
        assert_eq!(avro.schema_file(), Some(PathBuf::from("s.avsc")));
        for (lines, field) in [
            ("format = \"avro\"", "source.schema"),
            (
                "format = \"avro\"\nschema = \"s.avsc\"\nregistry = \"http://r\"",
                "source.registry",
            ),
            (
                "format = \"avro-confluent\"\nschema = \"s.avsc\"",
                "source.schema",
            ),
            ("registry = \"http://r\"", "source.registry"),
        ] {
            let err = with(lines).unwrap_err().to_string();
            assert!(err.contains(&format!("field `{field}`")), "{lines}: {err}");
        }
        let err = with("format = \"protobuf\"").unwrap_err().to_string();
        assert!(err.contains("avro-confluent"), "{err}");
    }
}
