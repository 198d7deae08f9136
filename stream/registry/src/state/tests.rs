//! The state machine alone: "first in the log wins" on conflicting and repeated records, ids
//! reused across subjects by canonical form, version numbering, deletes and levels.

use super::*;
use crate::records::{SchemaValue, config_key, config_value, decode, schema_key, schema_value};
use crate::schema::parse_schema;

fn record(subject: &str, version: i32, id: u32, schema: &str, deleted: bool) -> Change {
    let value = SchemaValue {
        subject: subject.into(),
        version,
        id,
        schema: schema.into(),
        deleted,
        schema_type: None,
    };
    decode(&schema_key(subject, version), Some(&schema_value(&value))).expect("a schema record")
}

fn level(subject: Option<&str>, level: Option<Compatibility>) -> Change {
    let value = level.map(config_value);
    decode(&config_key(subject), value.as_deref()).expect("a config record")
}

fn parsed(text: &str) -> ParsedSchema {
    parse_schema(text).expect("an Avro schema")
}

const LONG: &str = r#""long""#;
const STRING: &str = r#""string""#;
const INT: &str = r#""int""#;

fn id_of(state: &State, subject: &str, version: i32) -> Option<u32> {
    state.version_of(subject, version).map(|v| v.id)
}

#[test]
fn a_record_reusing_an_id_for_another_schema_is_ignored() {
    let mut state = State::default();
    assert_eq!(
        state.apply(record("a", 1, 1, LONG, false)),
        Outcome::Applied
    );
    let outcome = state.apply(record("b", 1, 1, STRING, false));
    assert!(
        matches!(outcome, Outcome::Ignored(ref why) if why.contains("id 1")),
        "{outcome:?}"
    );
    assert_eq!(state.subjects(true), ["a"]);
    assert_eq!(state.schema(1).map(|s| s.text.as_str()), Some(LONG));
    // The loser tries again with the next id: applied.
    assert_eq!(
        state.apply(record("b", 1, 2, STRING, false)),
        Outcome::Applied
    );
    assert_eq!(id_of(&state, "b", 1), Some(2));
}

#[test]
fn a_record_taking_a_version_that_holds_another_id_is_ignored() {
    let mut state = State::default();
    state.apply(record("s", 1, 1, LONG, false));
    let outcome = state.apply(record("s", 1, 2, STRING, false));
    assert!(
        matches!(outcome, Outcome::Ignored(ref why) if why.contains("version 1")),
        "{outcome:?}"
    );
    assert_eq!(id_of(&state, "s", 1), Some(1));
    // The id of the ignored record was not taken.
    assert!(state.schema(2).is_none());
    assert_eq!(
        state.apply(record("s", 2, 2, STRING, false)),
        Outcome::Applied
    );
    assert_eq!(state.live_versions("s"), [(1, 1), (2, 2)]);
}

#[test]
fn replicas_applying_the_same_log_agree_whatever_raced() {
    // Two writers each computed id 1 / version 1 for their own schema; a third record agrees
    // with the winner. Every replica applies this order, so every replica keeps the winner.
    let log = [
        record("s", 1, 1, INT, false),
        record("s", 1, 1, LONG, false),
        record("t", 1, 1, LONG, false),
        record("s", 1, 1, INT, false),
        record("s", 2, 2, LONG, false),
        record("t", 1, 2, LONG, false),
    ];
    let replay = || {
        let mut state = State::default();
        let outcomes: Vec<Outcome> = log.iter().cloned().map(|c| state.apply(c)).collect();
        (state, outcomes)
    };
    let ((a, outcomes), (b, _)) = (replay(), replay());
    let applied: Vec<bool> = outcomes.iter().map(|o| *o == Outcome::Applied).collect();
    assert_eq!(applied, [true, false, false, true, true, true]);
    for state in [&a, &b] {
        assert_eq!(id_of(state, "s", 1), Some(1));
        assert_eq!(id_of(state, "s", 2), Some(2));
        assert_eq!(id_of(state, "t", 1), Some(2));
        assert_eq!(state.schema(1).map(|s| s.text.as_str()), Some(INT));
        assert_eq!(state.schema(2).map(|s| s.text.as_str()), Some(LONG));
    }
    // In another order, another winner: the order decides, not the content.
    let mut other = State::default();
    other.apply(record("s", 1, 1, LONG, false));
    other.apply(record("s", 1, 1, INT, false));
    assert_eq!(other.schema(1).map(|s| s.text.as_str()), Some(LONG));
}

#[test]
fn the_same_schema_gets_the_same_id_in_every_subject() {
    let mut state = State::default();
    state.apply(record("a", 1, 1, r#"{"type": "long"}"#, false));
    // Another text of the same canonical form, in another subject: the id is reused.
    assert_eq!(
        state.plan_register("b", &parsed(LONG)),
        Ok(Plan::Write { version: 1, id: 1 })
    );
    // A new schema: max id + 1.
    assert_eq!(
        state.plan_register("b", &parsed(STRING)),
        Ok(Plan::Write { version: 1, id: 2 })
    );
    // Already live under the subject: nothing to write.
    assert_eq!(
        state.plan_register("a", &parsed(LONG)),
        Ok(Plan::Existing(1))
    );
    let found = state.lookup("a", &parsed(LONG), false);
    assert_eq!(found, Ok((1, 1)));
}

#[test]
fn soft_deletes_flip_the_flag_and_versions_keep_counting() {
    let mut state = State::default();
    state.apply(record("s", 1, 1, LONG, false));
    state.apply(record("s", 2, 2, INT, false));
    assert_eq!(state.apply(record("s", 2, 2, INT, true)), Outcome::Applied);
    assert_eq!(state.versions("s", false).map(|v| v.len()), Ok(1));
    assert_eq!(state.versions("s", true).map(|v| v.len()), Ok(2));
    assert_eq!(
        state
            .version("s", VersionRef::Latest, false)
            .map(|(n, _)| n),
        Ok(1)
    );
    assert_eq!(
        state
            .version("s", VersionRef::Number(2), false)
            .map_err(|e| e.code),
        Err(40402)
    );
    // Registering the deleted schema again: a new version, with its old id (NONE: `int`
    // cannot read the live version's `long`).
    state.apply(level(Some("s"), Some(Compatibility::None)));
    assert_eq!(
        state.plan_register("s", &parsed(INT)),
        Ok(Plan::Write { version: 3, id: 2 })
    );
    state.apply(record("s", 1, 1, LONG, true));
    assert!(state.subjects(false).is_empty());
    assert_eq!(state.subjects(true), ["s"]);
    assert_eq!(state.versions("s", false).map_err(|e| e.code), Err(40401));
    assert_eq!(state.id_versions(2, true), Ok(vec![("s".to_string(), 2)]));
    assert_eq!(state.id_versions(2, false), Ok(vec![]));
    assert_eq!(state.id_versions(9, true).map_err(|e| e.code), Err(40403));
}

#[test]
fn a_tombstone_removes_the_version_but_never_frees_its_id() {
    let mut state = State::default();
    state.apply(record("s", 1, 1, LONG, true));
    state.apply(Change::SchemaRemoved {
        subject: "s".into(),
        version: 1,
    });
    assert!(state.subjects(true).is_empty());
    // The id stays bound: it is never given to another schema.
    assert_eq!(
        state.plan_register("s", &parsed(STRING)),
        Ok(Plan::Write { version: 1, id: 2 })
    );
    assert_eq!(state.schema(1).map(|s| s.text.as_str()), Some(LONG));
}

#[test]
fn registration_is_checked_at_the_subjects_level_else_the_global_one() {
    let mut state = State::default();
    let v1 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    let v2 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"int"}]}"#;
    state.apply(record("s", 1, 1, v1, false));
    let refused = state.plan_register("s", &parsed(v2)).unwrap_err();
    assert_eq!(refused.code, 409);
    assert!(
        refused.message.contains("BACKWARD") && refused.message.contains("'b'"),
        "{}",
        refused.message
    );
    state.apply(level(None, Some(Compatibility::Forward)));
    assert_eq!(state.effective_level("s"), Compatibility::Forward);
    assert!(state.plan_register("s", &parsed(v2)).is_ok());
    state.apply(level(Some("s"), Some(Compatibility::Full)));
    assert_eq!(state.effective_level("s"), Compatibility::Full);
    assert_eq!(state.effective_level("other"), Compatibility::Forward);
    assert!(state.plan_register("s", &parsed(v2)).is_err());
    state.apply(level(Some("s"), None));
    assert_eq!(state.subject_level("s"), None);
    state.apply(level(None, None));
    assert_eq!(state.global_level(), Compatibility::Backward);
    // Checking against one version or the latest.
    assert_eq!(
        state
            .check("s", VersionRef::Number(1), &parsed(v2))
            .map(|m| m.len()),
        Ok(1)
    );
    assert_eq!(
        state.check("s", VersionRef::Latest, &parsed(v1)),
        Ok(vec![])
    );
    assert_eq!(
        state
            .check("nope", VersionRef::Latest, &parsed(v1))
            .map_err(|e| e.code),
        Err(40401)
    );
}

#[test]
fn versions_parse_as_the_api_names_them() {
    assert_eq!(VersionRef::parse("latest"), Ok(VersionRef::Latest));
    assert_eq!(VersionRef::parse("-1"), Ok(VersionRef::Latest));
    assert_eq!(VersionRef::parse("7"), Ok(VersionRef::Number(7)));
    for bad in ["abc", "0", "-2", "", "1.5", "99999999999"] {
        assert_eq!(
            VersionRef::parse(bad).map_err(|e| e.code),
            Err(42202),
            "{bad}"
        );
    }
}

#[test]
fn unknown_key_types_are_skipped() {
    let mut state = State::default();
    assert_eq!(state.apply(Change::Other("NOOP".into())), Outcome::Skipped);
}
