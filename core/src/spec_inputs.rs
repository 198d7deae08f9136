//! Several inputs per job: `[[sources]]` (streams) and `[[tables]]` (reference data from a
//! compacted topic), beside the one-input `[source]` form.
//!
//! ```toml
//! [[sources]]                  # streams; `[source]` stays valid and means one entry here
//! table = "orders"
//! topic = "orders.events"
//! event_time = "event_time"
//! fields = [ ... ]
//! [[tables]]                   # a versioned table, read from a compacted topic
//! table = "customers"
//! topic = "customers"
//! key = ["customer_id"]        # its key fields
//! valid_from = "updated_at"    # a timestamp field; absent: the Kafka record timestamp,
//!                              # kept as the column `__valid_from`
//! fields = [ ... ]
//! [lake.raw]                   # optional: a raw table per input (default <lake>/raw/<topic>)
//! customers = "s3://bucket/raw/customers"
//! ```
//!
//! A job file is read as a [`JobFile`] and normalised into a [`JobSpec`] whose `source` is the
//! primary stream (`[source]`, or the first `[[sources]]` entry), so everything written for one
//! input keeps reading `spec.source`. Every input, the primary one included, is reached through
//! [`Job::inputs`] as an [`Input`] whose `job` is the job as that one input sees it: its
//! `spec.source` *is* the input (a table's `event_time` is its `valid_from`). The decoders, the
//! raw-lake sink, `lake load`, the raw table's schema and its completeness therefore serve every
//! input with the code that serves one; nothing is written twice per kind of input.
//!
//! Several inputs are landed, each in its own raw table, exactly once; the SQL reads the
//! primary stream (joins, docs/design/joins.md, are what will read the others).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::duration::serde_duration;
use crate::error::{Error, Result};
use crate::spec::{
    CheckSpec, FieldSpec, Job, JobSpec, LakeSpec, OutputSpec, SinkSpec, SourceFormat, SourceSpec,
    TransformSpec, ViewSpec,
};

/// The column a `[[tables]]` entry without `valid_from` gets: each record's Kafka timestamp.
pub const KAFKA_VALID_FROM: &str = "__valid_from";

/// What serde reads; [`JobFile::normalise`] turns it into the [`JobSpec`] the rest of Sluice
/// sees. Keys and defaults are documented on [`JobSpec`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobFile {
    name: String,
    source: Option<SourceSpec>,
    #[serde(default)]
    sources: Vec<SourceSpec>,
    #[serde(default)]
    tables: Vec<TableSpec>,
    transform: TransformSpec,
    #[serde(default)]
    view: ViewSpec,
    #[serde(default)]
    lake: LakeSpec,
    #[serde(default)]
    outputs: Vec<OutputSpec>,
    #[serde(default)]
    sinks: Vec<SinkSpec>,
    #[serde(default)]
    checks: Vec<CheckSpec>,
    #[serde(default)]
    anomalies: Option<crate::anomaly::AnomalySpec>,
}

impl JobFile {
    /// Exactly one of `[source]` and `[[sources]]`; the primary stream first.
    pub(crate) fn normalise(self, file: &std::path::Path) -> Result<(JobSpec, InputForm)> {
        let invalid = |field: &str, expected: &str, got: &str| Error::InvalidField {
            file: file.to_path_buf(),
            field: field.to_string(),
            expected: expected.to_string(),
            got: got.to_string(),
        };
        let (source, more_sources, form) = match (self.source, self.sources) {
            (Some(_), sources) if !sources.is_empty() => {
                return Err(invalid(
                    "sources",
                    "either one `[source]` or `[[sources]]` entries, not both",
                    "both",
                ));
            }
            (Some(source), _) => (source, Vec::new(), InputForm::Source),
            (None, sources) => {
                let mut sources = sources.into_iter();
                let Some(first) = sources.next() else {
                    let got = if self.tables.is_empty() {
                        "neither"
                    } else {
                        "only [[tables]] (a table is joined to a stream)"
                    };
                    return Err(invalid(
                        "source",
                        "a `[source]` table or at least one `[[sources]]` entry",
                        got,
                    ));
                };
                (first, sources.collect(), InputForm::Sources)
            }
        };
        let spec = JobSpec {
            name: self.name,
            source,
            more_sources,
            tables: self.tables,
            transform: self.transform,
            view: self.view,
            lake: self.lake,
            outputs: self.outputs,
            sinks: self.sinks,
            checks: self.checks,
            anomalies: self.anomalies,
        };
        Ok((spec, form))
    }
}

/// How the job file wrote its streams, so errors name keys as the file has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputForm {
    /// `[source]`: errors say `source.topic`.
    #[default]
    Source,
    /// `[[sources]]`: errors say `sources[0].topic`.
    Sources,
}

/// A `[[tables]]` entry: the keys of `[source]` but `event_time` and `allowed_lateness`, plus
/// `key` and `valid_from`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub topic: String,
    #[serde(default)]
    pub format: SourceFormat,
    /// The name the SQL joins it by. Default: the topic with `.` and `-` replaced by `_`.
    pub table: Option<String>,
    /// The fields that identify a row; the join's ON clause must cover them.
    pub key: Vec<String>,
    /// The `timestamp` field from which a row version is valid. Absent: the record's Kafka
    /// timestamp, landed as the column [`KAFKA_VALID_FROM`].
    pub valid_from: Option<String>,
    /// How far behind its newest `valid_from` a version may still arrive (default 5s).
    #[serde(
        default = "crate::spec::default_watermark_delay",
        with = "serde_duration"
    )]
    pub watermark_delay: Duration,
    /// As `[source] max_future_skew`, for `valid_from` (default 1h; `0s` disables it).
    #[serde(
        default = "crate::spec::default_max_future_skew",
        with = "serde_duration"
    )]
    pub max_future_skew: Duration,
    pub registry: Option<String>,
    pub registry_ca: Option<std::path::PathBuf>,
    pub schema: Option<std::path::PathBuf>,
    pub fields: Vec<FieldSpec>,
}

impl TableSpec {
    /// The table as the source spec of its own input job: `valid_from` (or the Kafka time
    /// column) in the role of the event time, nothing late (a version is never dropped).
    fn as_source(&self) -> SourceSpec {
        SourceSpec {
            topic: self.topic.clone(),
            format: self.format,
            table: Some(table_name(self.table.as_deref(), &self.topic)),
            event_time: self
                .valid_from
                .clone()
                .unwrap_or_else(|| KAFKA_VALID_FROM.to_string()),
            watermark_delay: self.watermark_delay,
            allowed_lateness: Duration::ZERO,
            max_future_skew: self.max_future_skew,
            registry: self.registry.clone(),
            registry_ca: self.registry_ca.clone(),
            schema: self.schema.clone(),
            fields: self.fields.clone(),
            kafka_time_field: self
                .valid_from
                .is_none()
                .then(|| KAFKA_VALID_FROM.to_string()),
        }
    }
}

/// `[lake] raw`: one URL (a one-input job), or a URL per input table name.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a raw table URL, or a table of input name = raw table URL"
)]
pub enum RawLocation {
    One(String),
    PerInput(BTreeMap<String, String>),
}

/// A stream or a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Stream,
    Table,
}

/// One input of a job.
#[derive(Debug, Clone)]
pub struct Input {
    /// Its place: the streams in file order (the primary one at 0), then the tables.
    pub index: usize,
    pub kind: InputKind,
    /// The name the SQL reads it by.
    pub table: String,
    pub topic: String,
    /// The table's key fields (empty for a stream).
    pub key: Vec<String>,
    /// The job as this input sees it: `spec.source` is the input, there are no other inputs,
    /// `[lake] raw` is this input's raw table. Build decoders, the raw-lake sink, `lake load`
    /// and the raw schema from it; never a plan (its SQL is the whole job's).
    pub job: Job,
}

impl Input {
    /// Whether this is the job's primary stream (the one the SQL reads).
    pub fn is_primary(&self) -> bool {
        self.index == 0
    }

    /// The consumer group of this input's raw-lake sink, for the speed layer's group `group`:
    /// `<group>.lake` for the primary stream (as before several inputs existed),
    /// `<group>.lake.<table>` for the others. (The sink's position is the lake itself; the
    /// group only spreads partitions over the processes running the sink.)
    pub fn lake_group(&self, group: &str) -> String {
        if self.is_primary() {
            format!("{group}.lake")
        } else {
            format!("{group}.lake.{}", self.table)
        }
    }

    /// Records of this input carry no time of their own in a file: its time is the Kafka
    /// timestamp, so it can only be landed from Kafka.
    pub fn timed_by_kafka(&self) -> bool {
        self.job.spec.source.kafka_time_field.is_some()
    }
}

/// The default name the SQL reads a topic by: `.` and `-` become `_`.
pub(crate) fn table_name(table: Option<&str>, topic: &str) -> String {
    table
        .map(str::to_string)
        .unwrap_or_else(|| topic.replace(['.', '-'], "_"))
}

impl Job {
    /// Every input: the streams in file order (the primary one first), then the tables.
    pub fn inputs(&self) -> Vec<Input> {
        let streams = std::iter::once(&self.spec.source)
            .chain(&self.spec.more_sources)
            .map(|s| (InputKind::Stream, s.clone(), Vec::new()));
        let tables = self
            .spec
            .tables
            .iter()
            .map(|t| (InputKind::Table, t.as_source(), t.key.clone()));
        streams
            .chain(tables)
            .enumerate()
            .map(|(index, (kind, source, key))| {
                let table = table_name(source.table.as_deref(), &source.topic);
                Input {
                    index,
                    kind,
                    topic: source.topic.clone(),
                    job: self.input_job(index, &table, source),
                    table,
                    key,
                }
            })
            .collect()
    }

    /// Every input's (name the SQL reads it by, topic), in [`Job::inputs`]' order, without
    /// building each input's job (what topic names and counts need).
    pub fn input_names(&self) -> Vec<(String, String)> {
        let streams = std::iter::once(&self.spec.source)
            .chain(&self.spec.more_sources)
            .map(|s| (s.table.as_deref(), s.topic.as_str()));
        let tables = self
            .spec
            .tables
            .iter()
            .map(|t| (t.table.as_deref(), t.topic.as_str()));
        streams
            .chain(tables)
            .map(|(table, topic)| (table_name(table, topic), topic.to_string()))
            .collect()
    }

    /// Every input's declared fields, in [`Job::inputs`]' order.
    pub(crate) fn input_fields(&self) -> impl Iterator<Item = &[FieldSpec]> {
        std::iter::once(&self.spec.source)
            .chain(&self.spec.more_sources)
            .map(|s| s.fields.as_slice())
            .chain(self.spec.tables.iter().map(|t| t.fields.as_slice()))
    }

    /// The primary stream as an input (the first of [`Job::inputs`]).
    pub fn primary_input(&self) -> Input {
        // `inputs` starts with the primary stream, whatever the job file says.
        self.inputs().swap_remove(0)
    }

    /// The input the SQL reads as `name` (case folded, as DataFusion folds it).
    pub fn input(&self, name: &str) -> Result<Input> {
        let inputs = self.inputs();
        let known: Vec<String> = inputs.iter().map(|i| i.table.clone()).collect();
        inputs
            .into_iter()
            .find(|i| i.table.eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::UnknownInput {
                job: self.name().to_string(),
                input: name.to_string(),
                known: known.join(", "),
            })
    }

    /// Whether the job has more inputs than its primary stream.
    pub fn has_several_inputs(&self) -> bool {
        !self.spec.more_sources.is_empty() || !self.spec.tables.is_empty()
    }

    fn input_job(&self, index: usize, table: &str, source: SourceSpec) -> Job {
        let mut spec = self.spec.clone();
        spec.lake.raw = self.raw_location_of(table).map(RawLocation::One);
        spec.more_sources = Vec::new();
        spec.tables = Vec::new();
        if index > 0 {
            // Checks and anomalies name the primary stream's fields.
            spec.checks = Vec::new();
            spec.anomalies = None;
        }
        spec.source = source;
        Job {
            spec,
            file: self.file.clone(),
            form: InputForm::Source,
        }
    }

    /// `[lake] raw` for input `table`, when the job file sets one.
    pub(crate) fn raw_location_of(&self, table: &str) -> Option<String> {
        match self.spec.lake.raw.as_ref()? {
            RawLocation::One(url) => Some(url.clone()),
            RawLocation::PerInput(urls) => urls
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(table))
                .map(|(_, url)| url.clone()),
        }
    }

    /// Where an error about input `index`'s key `key` points: `source.topic`,
    /// `sources[1].topic`, `tables[0].key`.
    fn input_key(&self, index: usize, key: &str) -> String {
        let streams = 1 + self.spec.more_sources.len();
        match (index, self.form) {
            (0, InputForm::Source) => format!("source.{key}"),
            (i, _) if i < streams => format!("sources[{i}].{key}"),
            (i, _) => format!("tables[{}].{key}", i - streams),
        }
    }

    /// Each input on its own (fields, time, format, PII: the rules of `[source]`), then the
    /// rules between inputs: unique names and topics, table keys, `[lake] raw`.
    pub(crate) fn validate_inputs(&self) -> Result<()> {
        let inputs = self.inputs();
        for input in &inputs {
            input.job.validate_source().map_err(|e| {
                relabel(e, |field| {
                    let rest = field.strip_prefix("source.").unwrap_or(field);
                    let rest = match (input.kind, rest) {
                        (InputKind::Table, "event_time") => "valid_from",
                        (_, rest) => rest,
                    };
                    self.input_key(input.index, rest)
                })
            })?;
            if input.kind == InputKind::Table {
                self.validate_table_key(input)?;
            }
        }
        let mut names = std::collections::HashMap::new();
        let mut topics = std::collections::HashMap::new();
        for input in &inputs {
            if let Some(first) = names.insert(input.table.to_ascii_lowercase(), input.index) {
                return Err(self.invalid(
                    &self.input_key(input.index, "table"),
                    &format!(
                        "a table name no other input has (`{}` has it; names are compared ignoring case)",
                        self.input_key(first, "table")
                    ),
                    format!("{:?}", input.table),
                ));
            }
            if let Some(first) = topics.insert(input.topic.clone(), input.index) {
                return Err(self.invalid(
                    &self.input_key(input.index, "topic"),
                    &format!(
                        "a topic no other input reads (`{}` does; one raw table per topic)",
                        self.input_key(first, "topic")
                    ),
                    format!("{:?}", input.topic),
                ));
            }
        }
        match &self.spec.lake.raw {
            Some(RawLocation::One(_)) if inputs.len() > 1 => Err(self.invalid(
                "lake.raw",
                "a table of input name = URL (`[lake.raw]`) for a job with several inputs",
                "one URL",
            )),
            Some(RawLocation::One(url)) if url.trim().is_empty() => {
                Err(self.invalid("lake.raw", "a raw table URL", "\"\""))
            }
            Some(RawLocation::PerInput(urls)) => {
                for (name, url) in urls {
                    if !inputs.iter().any(|i| i.table.eq_ignore_ascii_case(name)) {
                        let known: Vec<&str> = inputs.iter().map(|i| i.table.as_str()).collect();
                        return Err(self.invalid(
                            &format!("lake.raw.{name}"),
                            &format!("the name of an input ({})", known.join(", ")),
                            format!("{name:?}"),
                        ));
                    }
                    if url.trim().is_empty() {
                        return Err(self.invalid(
                            &format!("lake.raw.{name}"),
                            "a raw table URL",
                            "\"\"",
                        ));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn validate_table_key(&self, input: &Input) -> Result<()> {
        let at = self.input_key(input.index, "key");
        if input.key.is_empty() {
            return Err(self.invalid(&at, "the table's key fields (at least one)", "none"));
        }
        let fields = &input.job.spec.source.fields;
        let mut seen = std::collections::HashSet::new();
        for column in &input.key {
            if !seen.insert(column) {
                return Err(self.invalid(&at, "each key field once", format!("`{column}` twice")));
            }
            if !fields.iter().any(|f| &f.name == column) {
                let known: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(self.invalid(
                    &at,
                    &format!("fields of the table ({})", known.join(", ")),
                    format!("`{column}`"),
                ));
            }
        }
        Ok(())
    }

    /// The inputs other than the primary stream, as the plan fingerprint hashes them: what
    /// decides their rows (name, fields, time, key), not how they are read.
    pub(crate) fn other_inputs_fingerprint(&self) -> Option<String> {
        if !self.has_several_inputs() {
            return None;
        }
        let text: Vec<String> = self
            .inputs()
            .iter()
            .skip(1)
            .map(|i| {
                let source = &i.job.spec.source;
                format!(
                    "{:?}",
                    (i.kind, &i.table, &source.fields, &source.event_time, &i.key)
                )
            })
            .collect();
        Some(text.join("\0"))
    }
}

/// `error` with its field renamed by `rename` (an input's own rules say `source.…`).
fn relabel(error: Error, rename: impl Fn(&str) -> String) -> Error {
    match error {
        Error::InvalidField {
            file,
            field,
            expected,
            got,
        } => Error::InvalidField {
            file,
            field: rename(&field),
            expected,
            got,
        },
        other => other,
    }
}

#[cfg(test)]
#[path = "spec_inputs_tests.rs"]
mod tests;
