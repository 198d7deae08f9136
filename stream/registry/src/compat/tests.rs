//! The levels against Avro's own resolution rules, on the evolutions people actually make.

use super::*;

fn schema(fields: &str) -> Schema {
    let text = format!(r#"{{"type":"record","name":"Order","namespace":"t","fields":[{fields}]}}"#);
    Schema::parse_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

const ID: &str = r#"{"name":"id","type":"long"}"#;
const REGION_DEFAULT: &str = r#"{"name":"region","type":"string","default":"eu"}"#;
const REGION: &str = r#"{"name":"region","type":"string"}"#;

/// Whether `new` may follow `old` (one version) at `level`.
fn ok(level: Compatibility, old: &Schema, new: &Schema) -> bool {
    incompatibilities(level, new, &[(1, old)]).is_empty()
}

#[test]
fn adding_a_field_with_a_default_is_backward_and_forward() {
    let (v1, v2) = (schema(ID), schema(&format!("{ID},{REGION_DEFAULT}")));
    for level in Compatibility::ALL {
        assert!(ok(level, &v1, &v2), "{level}");
    }
}

#[test]
fn adding_a_field_without_a_default_is_forward_only() {
    let (v1, v2) = (schema(ID), schema(&format!("{ID},{REGION}")));
    assert!(!ok(Compatibility::Backward, &v1, &v2));
    assert!(ok(Compatibility::Forward, &v1, &v2));
    assert!(!ok(Compatibility::Full, &v1, &v2));
    assert!(ok(Compatibility::None, &v1, &v2));
    let messages = incompatibilities(Compatibility::Backward, &v2, &[(1, &v1)]);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains("version 1"), "{messages:?}");
    assert!(
        messages[0].contains("region"),
        "Avro's reason names the field: {messages:?}"
    );
}

#[test]
fn removing_a_field_without_a_default_is_backward_only() {
    let (v1, v2) = (schema(&format!("{ID},{REGION}")), schema(ID));
    assert!(ok(Compatibility::Backward, &v1, &v2));
    assert!(!ok(Compatibility::Forward, &v1, &v2));
    assert!(!ok(Compatibility::FullTransitive, &v1, &v2));
    // With a default in the old schema, old readers fill it in: forward too.
    let v1 = schema(&format!("{ID},{REGION_DEFAULT}"));
    assert!(ok(Compatibility::Full, &v1, &v2));
}

#[test]
fn int_promotes_to_long_but_not_back() {
    let narrow = schema(r#"{"name":"n","type":"int"}"#);
    let wide = schema(r#"{"name":"n","type":"long"}"#);
    assert!(ok(Compatibility::Backward, &narrow, &wide));
    assert!(!ok(Compatibility::Forward, &narrow, &wide));
    assert!(!ok(Compatibility::Backward, &wide, &narrow));
    assert!(ok(Compatibility::Forward, &wide, &narrow));
}

#[test]
fn none_accepts_anything() {
    let record = schema(ID);
    let string = Schema::parse_str(r#""string""#).unwrap();
    assert!(!ok(Compatibility::Backward, &record, &string));
    assert!(ok(Compatibility::None, &record, &string));
}

#[test]
fn a_reader_missing_enum_symbols_is_incompatible() {
    let abc = Schema::parse_str(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#).unwrap();
    let ab = Schema::parse_str(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#).unwrap();
    // Avro says "partial": some data (C) would not resolve. Confluent refuses it.
    let messages = incompatibilities(Compatibility::Backward, &ab, &[(1, &abc)]);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(ok(Compatibility::Backward, &ab, &abc));
}

#[test]
fn transitive_levels_check_every_version_plain_ones_the_latest() {
    // v2 adds `region` with a default, v3 drops the default: v3 reads v2's data (which has
    // `region`) but not v1's (which has not).
    let v1 = schema(ID);
    let v2 = schema(&format!("{ID},{REGION_DEFAULT}"));
    let v3 = schema(&format!("{ID},{REGION}"));
    let history = [(1, &v1), (2, &v2)];
    assert!(incompatibilities(Compatibility::Backward, &v3, &history).is_empty());
    let transitive = incompatibilities(Compatibility::BackwardTransitive, &v3, &history);
    assert_eq!(transitive.len(), 1, "{transitive:?}");
    assert!(transitive[0].contains("version 1"), "{transitive:?}");
    // FULL_TRANSITIVE also fails version 1 in the forward direction? No: v1 reads v3's data
    // (it ignores `region`), so only the backward message.
    let full = incompatibilities(Compatibility::FullTransitive, &v3, &history);
    assert_eq!(full.len(), 1, "{full:?}");
    // Nothing to be compatible with: anything goes.
    assert!(incompatibilities(Compatibility::FullTransitive, &v3, &[]).is_empty());
}

#[test]
fn levels_parse_in_any_case_and_print_as_the_api_spells_them() {
    for level in Compatibility::ALL {
        assert_eq!(Compatibility::parse(level.as_str()), Some(level));
        assert_eq!(
            level.as_str().to_lowercase().parse::<Compatibility>().ok(),
            Some(level)
        );
        assert_eq!(level.to_string(), level.as_str());
    }
    assert_eq!(Compatibility::default(), Compatibility::Backward);
    assert!(Compatibility::parse("SIDEWAYS").is_none());
    let error = "SIDEWAYS".parse::<Compatibility>().unwrap_err();
    assert!(error.to_string().contains("SIDEWAYS"), "{error}");
}
