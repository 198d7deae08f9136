//! What a record the job diverts (`<job>.dlq`, `<job>.late`, a rejects file) may carry out of
//! it when the job has PII fields. Such a record goes out with its own bytes, not decoded
//! rows, so the protection of [`super`] has to be applied to the bytes:
//!
//! - a JSON object has its tagged fields replaced by their protected values (`drop` removes
//!   them), and every other string in it loses the tagged values it repeats (`<pii>`): a
//!   producer may copy an email into a free-text field;
//! - its key, when it holds one of the record's tagged values, becomes that value protected;
//! - bytes that cannot be read as a JSON object (malformed, Avro, larger than
//!   [`MAX_REDACTED_BYTES`]) are withheld whole, and so is the key, since nothing can tell
//!   where the PII in them is (the headers still name the source partition and offset);
//! - error messages lose the record's tagged values, and a message about a tagged field says
//!   only what was wrong with it.
//!
//! Protection is idempotent ([`PiiProtection::apply`]), so a protected dead letter that is
//! replayed decodes to the same values the first pass gave.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{PiiPolicy, PiiProtection, Tagged};
use crate::decode::RecordError;

/// Records larger than this are withheld rather than parsed to find their PII (the default
/// record limit: anything larger was refused as oversized anyway).
pub const MAX_REDACTED_BYTES: usize = crate::decode::DEFAULT_MAX_RECORD_BYTES;

/// Tagged values shorter than this are not searched for in other text: replacing every `a` of
/// a message would destroy it, and a one-letter value identifies no one.
const MIN_SEARCHED_CHARS: usize = 3;

/// What replaces a tagged value found in free text.
const PLACEHOLDER: &str = "<pii>";

/// How a diverted record was changed; the `sluice.pii` header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiiMark {
    /// Tagged values replaced by their protected forms.
    Protected,
    /// The bytes (and key) replaced whole: the record could not be read to protect it.
    Withheld,
}

impl PiiMark {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiMark::Protected => "protected",
            PiiMark::Withheld => "withheld",
        }
    }
}

/// A diverted record's key and value as they may leave the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted<'a> {
    pub key: Option<Cow<'a, [u8]>>,
    pub payload: Option<Cow<'a, [u8]>>,
    /// `None`: nothing in the record needed protecting; the bytes are the record's own.
    pub mark: Option<PiiMark>,
}

impl<'a> Redacted<'a> {
    /// The record unchanged.
    pub fn unchanged(key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> Redacted<'a> {
        Redacted {
            key: key.map(Cow::Borrowed),
            payload: payload.map(Cow::Borrowed),
            mark: None,
        }
    }
}

impl PiiProtection {
    /// `key` and `payload` of a diverted record as they may leave the job (module docs).
    pub fn redact<'a>(&self, key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> Redacted<'a> {
        let Some(mut object) = payload.and_then(|p| self.object(p)) else {
            return Redacted {
                key: key.map(|k| Cow::Owned(self.hash_bytes(k).into_bytes())),
                payload: payload.map(|p| Cow::Owned(withheld(p.len()))),
                mark: Some(PiiMark::Withheld),
            };
        };
        let found = self.tagged_values(&object);
        if found.is_empty() {
            return Redacted::unchanged(key, payload);
        }
        for field in self.fields.iter() {
            match (field.policy, object.get_mut(&field.source_name)) {
                (_, None) => {}
                (PiiPolicy::Drop, Some(_)) => {
                    object.remove(&field.source_name);
                }
                (_, Some(value)) => {
                    let text = value_text(value);
                    if let Some(text) = text {
                        *value = Value::String(self.apply(field, &text));
                    }
                }
            }
        }
        let tagged: Vec<&str> = self.fields.iter().map(|f| f.source_name.as_str()).collect();
        for (name, value) in object.iter_mut() {
            if !tagged.contains(&name.as_str()) {
                scrub_strings(value, &found);
            }
        }
        let payload = match serde_json::to_vec(&Value::Object(object)) {
            Ok(bytes) => bytes,
            Err(_) => withheld(payload.map_or(0, <[u8]>::len)),
        };
        Redacted {
            key: key.map(|k| self.redact_key(k, &found)),
            payload: Some(Cow::Owned(payload)),
            mark: Some(PiiMark::Protected),
        }
    }

    /// `error` (about the record `raw`) without the record's tagged values; about a tagged
    /// field, only what was wrong (decoders quote the value they could not read, in their own
    /// formatting, which no search for the value would recognise).
    pub fn scrub_error(&self, error: &mut RecordError, raw: &[u8]) {
        if let Some(field) = error.field.as_deref()
            && let Some(tagged) = self
                .fields
                .iter()
                .find(|f| f.source_name == field || f.name == field)
        {
            error.reason = format!(
                "the value of PII field `{}` ({:?}) is not one the field's type takes",
                tagged.source_name, tagged.kind
            );
            return;
        }
        let found = self
            .object(raw)
            .map(|object| self.tagged_values(&object))
            .unwrap_or_default();
        error.reason = scrub_text(&error.reason, &found);
    }

    /// `payload` as a JSON object, when this job's records are JSON and it is one.
    fn object(&self, payload: &[u8]) -> Option<Map<String, Value>> {
        if !self.json || payload.len() > MAX_REDACTED_BYTES {
            return None;
        }
        match serde_json::from_slice(payload) {
            Ok(Value::Object(object)) => Some(object),
            _ => None,
        }
    }

    /// Every tagged field present in `object` with the texts it holds: the whole value and
    /// each string and number inside it, those long enough to search for.
    fn tagged_values(&self, object: &Map<String, Value>) -> Vec<(&Tagged, Vec<String>)> {
        self.fields
            .iter()
            .filter_map(|field| {
                let value = object.get(&field.source_name)?;
                let mut texts = Vec::new();
                if let Some(whole) = value_text(value) {
                    texts.push(whole);
                }
                leaves(value, &mut texts);
                texts.retain(|t| t.chars().count() >= MIN_SEARCHED_CHARS);
                texts.dedup();
                (!texts.is_empty()).then_some((field, texts))
            })
            .collect()
    }

    /// A diverted key holding a tagged value: the value protected when the key is exactly
    /// it, the key hashed otherwise.
    fn redact_key<'a>(&self, key: &'a [u8], found: &[(&Tagged, Vec<String>)]) -> Cow<'a, [u8]> {
        for (field, texts) in found {
            for text in texts {
                if key == text.as_bytes() {
                    return Cow::Owned(self.apply(field, text).into_bytes());
                }
                if contains(key, text.as_bytes()) {
                    return Cow::Owned(self.hash_bytes(key).into_bytes());
                }
            }
        }
        Cow::Borrowed(key)
    }
}

/// A JSON value as the text a decoder would quote: strings bare, the rest as JSON.
fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The strings and numbers inside `value`, as text.
fn leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
        Value::Object(fields) => fields.values().for_each(|v| leaves(v, out)),
        Value::Null | Value::Bool(_) => {}
    }
}

/// Every string inside `value` with the tagged texts replaced.
fn scrub_strings(value: &mut Value, found: &[(&Tagged, Vec<String>)]) {
    match value {
        Value::String(s) => {
            let scrubbed = scrub_text(s, found);
            if scrubbed != *s {
                *s = scrubbed;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_strings(v, found)),
        Value::Object(fields) => fields.values_mut().for_each(|v| scrub_strings(v, found)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn scrub_text(text: &str, found: &[(&Tagged, Vec<String>)]) -> String {
    let mut scrubbed = text.to_string();
    for (_, texts) in found {
        for value in texts {
            scrubbed = scrubbed.replace(value.as_str(), PLACEHOLDER);
        }
    }
    scrubbed
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a diverted record whose PII cannot be located carries instead of its bytes.
fn withheld(bytes: usize) -> Vec<u8> {
    serde_json::json!({
        "sluice_withheld": format!(
            "{bytes} bytes withheld: the job has PII fields and this record could not be read \
             to protect them; the source partition and offset are in the headers"
        )
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::MASK;
    use super::*;

    #[test]
    fn the_placeholder_is_not_a_mask() {
        // A scrubbed text must not pass for a masked value on a second pass.
        assert!(!PLACEHOLDER.contains(MASK));
    }
}
