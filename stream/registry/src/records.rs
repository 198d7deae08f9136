//! The records of the schemas topic, in Confluent Schema Registry's own format so its tooling
//! (and a Confluent registry pointed at the topic) could read them:
//!
//! - a schema version: key `{"keytype":"SCHEMA","subject":S,"version":V,"magic":1}`, value
//!   `{"subject":S,"version":V,"id":ID,"schema":TEXT,"deleted":false}`; a soft delete writes it
//!   again with `"deleted":true`, a hard delete (by another registry) is a tombstone;
//! - a compatibility level: key `{"keytype":"CONFIG","subject":S_or_null,"magic":0}`, value
//!   `{"compatibilityLevel":"FULL"}`, a tombstone when it is removed.
//!
//! Other key types (`NOOP`, `MODE`, `DELETE_SUBJECT`, ...) are read and skipped.

use serde::{Deserialize, Serialize};

use crate::compat::Compatibility;
use crate::schema::{foreign_identity, parse_schema};

/// A change to the registry's state, decoded from one record.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Schema(Box<SchemaRecord>),
    /// A hard delete: the version is gone (its id stays taken).
    SchemaRemoved {
        subject: String,
        version: i32,
    },
    /// A level set (`Some`) or removed (`None`) for a subject, or globally (`subject: None`).
    Config {
        subject: Option<String>,
        level: Option<Compatibility>,
    },
    /// A record of a key type this registry does not use.
    Other(String),
}

/// One schema version as a record holds it, with the schema already parsed.
#[derive(Debug, Clone)]
pub(crate) struct SchemaRecord {
    pub subject: String,
    pub version: i32,
    pub id: u32,
    pub text: String,
    pub deleted: bool,
    /// `None` for Avro; another type (`PROTOBUF`) a foreign registry wrote.
    pub schema_type: Option<String>,
    /// The schema's identity: its canonical form, or [`foreign_identity`].
    pub canonical: String,
    /// `None` when it is not Avro, or not a schema Avro can parse.
    pub avro: Option<apache_avro::Schema>,
}

#[derive(Serialize)]
struct SchemaKey<'a> {
    keytype: &'static str,
    subject: &'a str,
    version: i32,
    magic: u8,
}

#[derive(Serialize)]
struct ConfigKey<'a> {
    keytype: &'static str,
    subject: Option<&'a str>,
    magic: u8,
}

/// Any key: what decides what the record is.
#[derive(Deserialize)]
struct AnyKey {
    keytype: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    version: Option<i64>,
}

/// The value of a `SCHEMA` record (unknown fields, such as `references`, are ignored).
#[derive(Serialize, Deserialize)]
pub(crate) struct SchemaValue {
    pub subject: String,
    pub version: i32,
    pub id: u32,
    pub schema: String,
    #[serde(default)]
    pub deleted: bool,
    #[serde(
        default,
        rename = "schemaType",
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_type: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ConfigValue {
    #[serde(default, rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

/// The key of version `version` of `subject`.
pub(crate) fn schema_key(subject: &str, version: i32) -> Vec<u8> {
    json(&SchemaKey {
        keytype: "SCHEMA",
        subject,
        version,
        magic: 1,
    })
}

pub(crate) fn schema_value(value: &SchemaValue) -> Vec<u8> {
    json(value)
}

/// The key of `subject`'s compatibility level, or the global one.
pub(crate) fn config_key(subject: Option<&str>) -> Vec<u8> {
    json(&ConfigKey {
        keytype: "CONFIG",
        subject,
        magic: 0,
    })
}

pub(crate) fn config_value(level: Compatibility) -> Vec<u8> {
    json(&ConfigValue {
        compatibility_level: Some(level.as_str().to_string()),
    })
}

fn json(value: &impl Serialize) -> Vec<u8> {
    // Structs of strings and numbers always serialize; the fallback is never reached.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The change a record makes; an error (the record is skipped) when it is not one of the
/// registry's records or contradicts itself.
pub(crate) fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Change, String> {
    let key: AnyKey =
        serde_json::from_slice(key).map_err(|e| format!("the key is not a registry key: {e}"))?;
    match key.keytype.as_str() {
        "SCHEMA" => {
            let subject = key.subject.ok_or("a SCHEMA key without a subject")?;
            let version = key
                .version
                .and_then(|v| i32::try_from(v).ok())
                .filter(|v| *v >= 1)
                .ok_or("a SCHEMA key without a valid version")?;
            let Some(value) = value else {
                return Ok(Change::SchemaRemoved { subject, version });
            };
            let value: SchemaValue = serde_json::from_slice(value)
                .map_err(|e| format!("a SCHEMA value that cannot be read: {e}"))?;
            if value.subject != subject || value.version != version {
                return Err(format!(
                    "a SCHEMA record whose key names version {version} of `{subject}` and whose value version {} of `{}`",
                    value.version, value.subject
                ));
            }
            Ok(Change::Schema(Box::new(schema_record(value))))
        }
        "CONFIG" => {
            let level = match value {
                None => None,
                Some(value) => {
                    let value: ConfigValue = serde_json::from_slice(value)
                        .map_err(|e| format!("a CONFIG value that cannot be read: {e}"))?;
                    match value.compatibility_level {
                        None => None,
                        Some(text) => Some(Compatibility::parse(&text).ok_or_else(|| {
                            format!("a CONFIG value with an unknown level `{text}`")
                        })?),
                    }
                }
            };
            Ok(Change::Config {
                subject: key.subject,
                level,
            })
        }
        other => Ok(Change::Other(other.to_string())),
    }
}

fn schema_record(value: SchemaValue) -> SchemaRecord {
    let avro_type = value
        .schema_type
        .as_deref()
        .is_none_or(|kind| kind.eq_ignore_ascii_case("AVRO"));
    let parsed = if avro_type {
        parse_schema(&value.schema).ok()
    } else {
        None
    };
    let (canonical, avro) = match parsed {
        Some(parsed) => (parsed.canonical, Some(parsed.avro)),
        None => (
            foreign_identity(
                value.schema_type.as_deref().unwrap_or("AVRO"),
                &value.schema,
            ),
            None,
        ),
    };
    SchemaRecord {
        subject: value.subject,
        version: value.version,
        id: value.id,
        text: value.schema,
        deleted: value.deleted,
        schema_type: value.schema_type.filter(|_| !avro_type),
        canonical,
        avro,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn keys_and_values_are_confluents() {
        assert_eq!(
            text(schema_key("orders-value", 3)),
            r#"{"keytype":"SCHEMA","subject":"orders-value","version":3,"magic":1}"#
        );
        assert_eq!(
            text(schema_value(&SchemaValue {
                subject: "orders-value".into(),
                version: 3,
                id: 7,
                schema: "\"string\"".into(),
                deleted: false,
                schema_type: None,
            })),
            r#"{"subject":"orders-value","version":3,"id":7,"schema":"\"string\"","deleted":false}"#
        );
        assert_eq!(
            text(config_key(None)),
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
        assert_eq!(
            text(config_key(Some("s"))),
            r#"{"keytype":"CONFIG","subject":"s","magic":0}"#
        );
        assert_eq!(
            text(config_value(Compatibility::FullTransitive)),
            r#"{"compatibilityLevel":"FULL_TRANSITIVE"}"#
        );
    }

    #[test]
    fn records_written_by_confluent_decode() {
        let key = br#"{"keytype":"SCHEMA","subject":"s","version":2,"magic":1}"#;
        let value = br#"{"subject":"s","version":2,"id":5,"schema":"\"long\"","deleted":true,"references":[],"metadata":null}"#;
        let Ok(Change::Schema(record)) = decode(key, Some(value)) else {
            panic!("not a schema record");
        };
        assert_eq!(
            (record.subject.as_str(), record.version, record.id),
            ("s", 2, 5)
        );
        assert!(record.deleted && record.avro.is_some() && record.schema_type.is_none());
        assert_eq!(record.canonical, r#""long""#);
        assert!(matches!(
            decode(key, None),
            Ok(Change::SchemaRemoved { version: 2, .. })
        ));
        let config = decode(
            br#"{"keytype":"CONFIG","subject":null,"magic":0}"#,
            Some(br#"{"compatibilityLevel":"FULL"}"#),
        );
        assert!(matches!(
            config,
            Ok(Change::Config {
                subject: None,
                level: Some(Compatibility::Full)
            })
        ));
        let removed = decode(br#"{"keytype":"CONFIG","subject":"s","magic":0}"#, None);
        assert!(matches!(removed, Ok(Change::Config { level: None, .. })));
        let noop = decode(br#"{"keytype":"NOOP","magic":0}"#, None);
        assert!(matches!(noop, Ok(Change::Other(kind)) if kind == "NOOP"));
    }

    #[test]
    fn foreign_schema_types_keep_their_identity() {
        let key = br#"{"keytype":"SCHEMA","subject":"p","version":1,"magic":1}"#;
        let value = br#"{"subject":"p","version":1,"id":3,"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF"}"#;
        let Ok(Change::Schema(record)) = decode(key, Some(value)) else {
            panic!("not a schema record");
        };
        assert!(record.avro.is_none());
        assert_eq!(record.schema_type.as_deref(), Some("PROTOBUF"));
        assert!(record.canonical.starts_with('\u{0}'));
    }

    #[test]
    fn what_is_not_a_registry_record_is_an_error() {
        let schema_key = br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#;
        for (key, value) in [
            (&b"not json"[..], None),
            (&br#"{"subject":"s"}"#[..], None),
            (&br#"{"keytype":"SCHEMA","version":1}"#[..], None),
            (
                &br#"{"keytype":"SCHEMA","subject":"s","version":0}"#[..],
                None,
            ),
            (&schema_key[..], Some(&b"{}"[..])),
            (
                &schema_key[..],
                Some(&br#"{"subject":"t","version":1,"id":1,"schema":"\"int\""}"#[..]),
            ),
            (
                &br#"{"keytype":"CONFIG","subject":null}"#[..],
                Some(&br#"{"compatibilityLevel":"SIDEWAYS"}"#[..]),
            ),
        ] {
            assert!(
                decode(key, value).is_err(),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }
}
