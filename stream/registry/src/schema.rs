//! A schema as the registry keeps it: the text as registered (what clients get back), its
//! Avro Parsing Canonical Form (its identity: two texts with the same form get the same id, in
//! any subject) and the parsed schema the compatibility checks walk.

use std::panic::{AssertUnwindSafe, catch_unwind};

use apache_avro::Schema;

use crate::compat::chain;
use crate::encoding::truncate;

/// A parsed Avro schema.
#[derive(Debug, Clone)]
pub(crate) struct ParsedSchema {
    pub text: String,
    pub canonical: String,
    pub avro: Schema,
}

/// Parses `text` as an Avro schema; the error is the parser's message (with its causes),
/// cut to a length an error body can carry.
pub(crate) fn parse_schema(text: &str) -> Result<ParsedSchema, String> {
    // A parser walking arbitrary input may panic on a case it did not foresee: that is an
    // invalid schema for the client, not a dead request.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        Schema::parse_str(text).map(|avro| {
            let canonical = avro.canonical_form();
            (avro, canonical)
        })
    }));
    match outcome {
        Ok(Ok((avro, canonical))) => Ok(ParsedSchema {
            text: text.to_string(),
            canonical,
            avro,
        }),
        Ok(Err(error)) => Err(truncate(&chain(&error), 2000)),
        Err(_) => Err("the Avro parser failed on this schema".to_string()),
    }
}

/// The identity of a schema the registry cannot parse (another type, or text a foreign
/// registry accepted): its type and text, marked so it never equals a canonical form.
pub(crate) fn foreign_identity(schema_type: &str, text: &str) -> String {
    format!("\u{0}{schema_type}\u{0}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_ignores_formatting_docs_and_defaults() {
        let a = parse_schema(
            r#"{"type": "record", "name": "Order", "namespace": "t", "doc": "an order",
                "fields": [{"name": "id", "type": "long", "default": 0}]}"#,
        )
        .unwrap();
        let b = parse_schema(
            r#"{"name":"t.Order","type":"record","fields":[{"type":"long","name":"id"}]}"#,
        )
        .unwrap();
        assert_eq!(a.canonical, b.canonical);
        assert_eq!(
            a.canonical,
            r#"{"name":"t.Order","type":"record","fields":[{"name":"id","type":"long"}]}"#
        );
        assert_ne!(a.text, b.text);
    }

    #[test]
    fn garbage_is_an_error_with_the_parsers_reason() {
        for text in [
            "",
            "not json",
            "{",
            r#"{"type":"record"}"#,
            r#"{"type":"nope"}"#,
        ] {
            let error = parse_schema(text).unwrap_err();
            assert!(!error.is_empty(), "{text}");
        }
        let error = parse_schema("not json").unwrap_err();
        assert!(error.contains("JSON"), "{error}");
        // Deep nesting stops at serde_json's recursion limit instead of the stack.
        let deep = format!("{}\"int\"{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_schema(&deep).is_err());
    }

    #[test]
    fn primitive_schemas_are_schemas() {
        assert_eq!(
            parse_schema(r#""string""#).unwrap().canonical,
            r#""string""#
        );
        assert_eq!(
            parse_schema(r#"{"type":"long"}"#).unwrap().canonical,
            r#""long""#
        );
    }

    #[test]
    fn foreign_schemas_never_collide_with_avro_ones() {
        let avro = parse_schema(r#""string""#).unwrap();
        assert_ne!(foreign_identity("PROTOBUF", &avro.text), avro.canonical);
    }
}
