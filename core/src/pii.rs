//! PII policies: source fields tagged `pii = "email" | "name" | "phone" | "id"` are masked,
//! hashed or dropped as they are decoded, before anything else sees them.
//!
//! ```toml
//! fields = [
//!   { name = "email", type = "string", pii = "email", policy = "hash" },
//!   { name = "customer", type = "string", pii = "name" },            # policy = "mask" (default)
//!   { name = "phone", type = "string", pii = "phone", policy = "drop" },
//! ]
//! ```
//!
//! Why at decode time: every layer reads source records through one decoder
//! ([`crate::decode::for_job`]), and everything a job writes (the raw table in the lake, the
//! partial states, `<job>.speed`, the results, its topics and sinks, the serving API, the logs)
//! is made from the decoded rows. Protecting the rows there is the one place that covers every
//! output, and both layers see the same protected values, so they still agree. The batch
//! layer applies the policies again to the raw rows it reads: the raw table is the topic's,
//! shared by every job and version on it, and rows an untagged one landed hold clear values.
//!
//! The policies:
//! - `mask` keeps a hint of the value's shape: `a***@example.com`, `J*** S***`, `***67`
//!   (the last two digits of a phone), `***5678` (the last four characters of an id longer
//!   than 8); anything else becomes `***`.
//! - `hash` replaces the value by a keyed BLAKE3 hash (32 hex digits) whose key comes from
//!   [`KEY_ENV`], never from the job file: the same value gives the same hash in every
//!   process that has the key, so hashed ids still join and group, and without the key a
//!   hash cannot be reversed by trying likely values. The key's id (never the key) is part
//!   of the plan fingerprint, so processes with different keys do not pass for one plan.
//! - `drop` keeps the column (so the schema is the same everywhere) with every value NULL.
//!
//! Protection is idempotent: a value already in its protected form (32 lowercase hex digits
//! for `hash`, holding `***` for `mask`) is kept as it is, so rows protected twice (raw rows
//! read by the batch layer, a replayed dead letter) come out the same as once.
//!
//! Records that go out with their own bytes (`<job>.dlq`, `<job>.late`, rejected lines) are
//! protected by [`PiiProtection::redact`] ([`redact`]).
//!
//! Checks (`[[checks]]`) and the SQL see the protected values: `not_null` works on a hashed
//! email, a regex written for the clear value does not.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow::datatypes::DataType;
use serde::Deserialize;

use crate::error::{Error, Result, arrow_err};
use crate::spec::{FieldSpec, FieldType, Job, SourceFormat};

/// The environment variable holding the key of `policy = "hash"`.
pub const KEY_ENV: &str = "SLUICE_PII_KEY";

/// The shortest key accepted, in bytes: a short key can be guessed and the hashes reversed.
const MIN_KEY_BYTES: usize = 16;

/// Domain separation for the hash key: the same secret used elsewhere gives other hashes.
const KEY_CONTEXT: &str = "sluice 2026 pii field hash v1";

/// What `mask` leaves in place of what it hides; a value holding it is already masked.
const MASK: &str = "***";

/// The hex digits of a hashed value (128 bits).
const HASH_HEX: usize = 32;

/// What kind of personal data a field holds; it decides how `mask` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiKind {
    Email,
    Name,
    Phone,
    Id,
}

/// What happens to a tagged field's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiPolicy {
    #[default]
    Mask,
    Hash,
    Drop,
}

impl PiiPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiPolicy::Mask => "mask",
            PiiPolicy::Hash => "hash",
            PiiPolicy::Drop => "drop",
        }
    }
}

/// One tagged field: where it is in the decoded rows and in the source record.
#[derive(Debug, Clone)]
struct Tagged {
    /// The field's name in the job (the decoded column).
    name: String,
    /// The field's name in the source record (`from`).
    source_name: String,
    kind: PiiKind,
    policy: PiiPolicy,
}

/// A job's PII policies, ready to apply (see the module docs).
#[derive(Clone)]
pub struct PiiProtection {
    fields: Arc<[Tagged]>,
    /// The derived hash key, when a field is hashed.
    key: Option<[u8; 32]>,
    /// Diverted records can be redacted field by field (JSON); otherwise they are withheld.
    json: bool,
}

impl std::fmt::Debug for PiiProtection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("PiiProtection")
            .field("fields", &self.fields)
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

/// Refuses tags that cannot be honoured: a policy without a tag, `mask`/`hash` on a field that
/// is not text, `drop` on a required field or the event time.
pub(crate) fn validate(job: &Job) -> Result<()> {
    let source = &job.spec.source;
    for (i, field) in source.fields.iter().enumerate() {
        let at = |key: &str| format!("source.fields[{i}].{key}");
        let invalid = |key: &str, expected: &str, got: String| Error::InvalidField {
            file: job.file.clone(),
            field: at(key),
            expected: expected.to_string(),
            got,
        };
        let Some(kind) = field.pii else {
            if let Some(policy) = field.policy {
                return Err(invalid(
                    "policy",
                    "a `pii` tag beside it (`email`, `name`, `phone` or `id`)",
                    format!("policy {:?} on an untagged field", policy.as_str()),
                ));
            }
            continue;
        };
        let policy = field.policy.unwrap_or_default();
        if field.name == source.event_time {
            return Err(invalid(
                "pii",
                "no PII tag on the event time (windows and watermarks need its value)",
                format!("{kind:?}"),
            ));
        }
        match policy {
            PiiPolicy::Mask | PiiPolicy::Hash if field.data_type != FieldType::String => {
                return Err(invalid(
                    "policy",
                    "`drop` for a field that is not a string (mask and hash give text)",
                    format!("{:?} on a {:?} field", policy.as_str(), field.data_type),
                ));
            }
            PiiPolicy::Drop if !field.nullable => {
                return Err(invalid(
                    "policy",
                    "a nullable field for `drop` (its values become NULL)",
                    "`nullable = false`".to_string(),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

impl PiiProtection {
    /// `job`'s policies (`None` when no field is tagged). A hashed field needs [`KEY_ENV`]
    /// set to at least 16 bytes: without it the job does not start, rather than write clear
    /// values or hashes anyone could recompute.
    pub fn for_job(job: &Job) -> Result<Option<PiiProtection>> {
        Self::with_key(job, std::env::var(KEY_ENV).ok().as_deref())
    }

    /// [`PiiProtection::for_job`] with the key given (tests).
    pub fn with_key(job: &Job, key: Option<&str>) -> Result<Option<PiiProtection>> {
        let fields: Vec<Tagged> = job.spec.source.fields.iter().filter_map(tagged).collect();
        if fields.is_empty() {
            return Ok(None);
        }
        let hashed = fields.iter().find(|f| f.policy == PiiPolicy::Hash);
        let key = match (hashed, key) {
            (None, _) => None,
            (Some(_), Some(key)) if key.len() >= MIN_KEY_BYTES => {
                Some(blake3::derive_key(KEY_CONTEXT, key.as_bytes()))
            }
            (Some(field), key) => {
                return Err(Error::MissingSecret {
                    job: job.name().to_string(),
                    variable: KEY_ENV,
                    why: format!(
                        "field `{}` has policy \"hash\", whose key must be at least \
                         {MIN_KEY_BYTES} bytes; {}",
                        field.name,
                        if key.is_some() {
                            "it is shorter"
                        } else {
                            "it is not set"
                        }
                    ),
                });
            }
        };
        Ok(Some(PiiProtection {
            fields: fields.into(),
            key,
            json: job.spec.source.format == SourceFormat::Json,
        }))
    }

    /// `batch` (decoded rows of the job's source schema) with every tagged column protected.
    pub fn protect_batch(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let mut columns = batch.columns().to_vec();
        for field in self.fields.iter() {
            let Some((index, _)) = batch.schema().column_with_name(&field.name) else {
                // Never pass a batch on unprotected because it is not the shape expected.
                return Err(arrow_err("protecting PII fields")(
                    arrow::error::ArrowError::SchemaError(format!(
                        "the rows have no column `{}`",
                        field.name
                    )),
                ));
            };
            let column = &batch.columns()[index];
            columns[index] = match field.policy {
                PiiPolicy::Drop => new_null_array(column.data_type(), column.len()),
                PiiPolicy::Mask | PiiPolicy::Hash => self.protect_text(field, column)?,
            };
        }
        RecordBatch::try_new(batch.schema(), columns).map_err(arrow_err("protecting PII fields"))
    }

    fn protect_text(&self, field: &Tagged, column: &ArrayRef) -> Result<ArrayRef> {
        let text = arrow::compute::cast(column, &DataType::Utf8)
            .map_err(arrow_err("reading a PII field as text"))?;
        let text = text.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
            arrow_err("protecting PII fields")(arrow::error::ArrowError::CastError(format!(
                "field `{}` is not text",
                field.name
            )))
        })?;
        let protected: StringArray = text
            .iter()
            .map(|v| v.map(|v| self.apply(field, v)))
            .collect();
        arrow::compute::cast(&protected, column.data_type())
            .map_err(arrow_err("writing a PII field back"))
    }

    /// `value` of the job field `field` as every output holds it: `None` when the field is
    /// dropped or not tagged (tests and tools compare outputs with it).
    pub fn protect(&self, field: &str, value: &str) -> Option<String> {
        let field = self.fields.iter().find(|f| f.name == field)?;
        (field.policy != PiiPolicy::Drop).then(|| self.apply(field, value))
    }

    /// One value under `field`'s policy (`drop` gives no value).
    /// Idempotent: a value already in its protected form is kept (see the module docs).
    fn apply(&self, field: &Tagged, value: &str) -> String {
        match field.policy {
            PiiPolicy::Mask if value.contains(MASK) => value.to_string(),
            PiiPolicy::Mask => mask(field.kind, value),
            PiiPolicy::Hash if is_hash(value) => value.to_string(),
            PiiPolicy::Hash => self.hash(value),
            PiiPolicy::Drop => String::new(),
        }
    }

    fn hash(&self, value: &str) -> String {
        self.hash_bytes(value.as_bytes())
    }

    fn hash_bytes(&self, value: &[u8]) -> String {
        match &self.key {
            Some(key) => blake3::keyed_hash(key, value).to_hex()[..HASH_HEX].to_string(),
            // `with_key` refuses a hashed field without a key; never give the value back.
            None => MASK.to_string(),
        }
    }

    /// Names the hash key without revealing it: in the plan fingerprint, so that processes
    /// with different keys (which would hash differently) never pass for the same plan.
    pub fn key_id(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|key| blake3::keyed_hash(key, b"sluice pii key id").to_hex()[..16].to_string())
    }

    /// The same policies for records that are JSON lines whatever the topic's format
    /// (`sluice lake load`), so their rejects are protected field by field, not withheld.
    pub fn reading_json(mut self) -> PiiProtection {
        self.json = true;
        self
    }
}

fn tagged(field: &FieldSpec) -> Option<Tagged> {
    Some(Tagged {
        name: field.name.clone(),
        source_name: field.source_name().to_string(),
        kind: field.pii?,
        policy: field.policy.unwrap_or_default(),
    })
}

/// Whether `value` has the form `hash` gives (and so is kept by it).
fn is_hash(value: &str) -> bool {
    value.len() == HASH_HEX
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `value` masked for its kind (see the module docs). Works on characters, so any UTF-8 is
/// cut at character boundaries.
pub fn mask(kind: PiiKind, value: &str) -> String {
    if value.is_empty() {
        return String::new();
    }
    let initial = |word: &str| {
        word.chars()
            .next()
            .map(|c| format!("{c}***"))
            .unwrap_or_default()
    };
    let last = |n: usize, chars: Vec<char>| -> String {
        chars[chars.len().saturating_sub(n)..].iter().collect()
    };
    match kind {
        PiiKind::Email => match value.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                format!("{}@{domain}", initial(local))
            }
            _ => "***".to_string(),
        },
        PiiKind::Name => value
            .split_whitespace()
            .map(initial)
            .collect::<Vec<_>>()
            .join(" "),
        PiiKind::Phone => {
            let digits: Vec<char> = value.chars().filter(char::is_ascii_digit).collect();
            if digits.len() > 4 {
                format!("***{}", last(2, digits))
            } else {
                "***".to_string()
            }
        }
        PiiKind::Id => {
            let chars: Vec<char> = value.chars().collect();
            if chars.len() > 8 {
                format!("***{}", last(4, chars))
            } else {
                "***".to_string()
            }
        }
    }
}

mod redact;
#[cfg(test)]
mod tests;

pub use redact::{PiiMark, Redacted};
