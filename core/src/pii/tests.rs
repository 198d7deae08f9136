use std::borrow::Cow;
use std::path::Path;

use arrow::array::{Array, AsArray};

use super::*;
use crate::JsonDecoder;
use crate::decode::{SourceDecoder, protected};

const KEY: &str = "a key of at least sixteen bytes";

fn job_with(fields: &str) -> Result<Job> {
    let toml = format!(
        r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [
  {{ name = "ts", type = "timestamp" }},
  {{ name = "amount", type = "float64" }},
  {fields}
]
[transform]
sql = "SELECT * FROM t"
"#
    );
    Job::from_toml(&toml, Path::new("t.toml"))
}

const TAGGED: &str = r#"
  { name = "email", type = "string", pii = "email", policy = "hash" },
  { name = "customer", type = "string", pii = "name" },
  { name = "phone", type = "string", pii = "phone", policy = "drop" },
  { name = "card", type = "string", pii = "id", policy = "mask", from = "card_no" },
"#;

fn job() -> Job {
    job_with(TAGGED).expect("job")
}

fn protection(job: &Job) -> PiiProtection {
    PiiProtection::with_key(job, Some(KEY))
        .expect("protection")
        .expect("tagged fields")
}

const RECORD: &str = r#"{"ts":1000,"amount":1.5,"email":"alice.liddell@example.com","customer":"Alice Liddell","phone":"+44 20 7946 0958","card_no":"4111111111111111"}"#;

#[test]
fn masks_keep_only_a_hint_of_the_value() {
    assert_eq!(
        mask(PiiKind::Email, "alice@example.com"),
        "a***@example.com"
    );
    assert_eq!(mask(PiiKind::Email, "not an address"), "***");
    assert_eq!(mask(PiiKind::Email, "@example.com"), "***");
    assert_eq!(
        mask(PiiKind::Name, "Alice  Pleasance Liddell"),
        "A*** P*** L***"
    );
    assert_eq!(mask(PiiKind::Name, "Élodie"), "É***");
    assert_eq!(mask(PiiKind::Phone, "+44 20 7946 0958"), "***58");
    assert_eq!(mask(PiiKind::Phone, "112"), "***");
    assert_eq!(mask(PiiKind::Id, "4111111111111111"), "***1111");
    assert_eq!(mask(PiiKind::Id, "12345678"), "***");
    assert_eq!(mask(PiiKind::Id, ""), "");
}

#[test]
fn hashes_are_keyed_and_deterministic() {
    let job = job();
    let a = protection(&job);
    let b = PiiProtection::with_key(&job, Some("another key, also long enough"))
        .unwrap()
        .unwrap();
    let hashed = a.hash("alice@example.com");
    assert_eq!(hashed.len(), 32);
    assert!(hashed.chars().all(|c| c.is_ascii_hexdigit()), "{hashed}");
    assert_eq!(hashed, protection(&job).hash("alice@example.com"));
    assert_ne!(hashed, a.hash("bob@example.com"));
    assert_ne!(
        hashed,
        b.hash("alice@example.com"),
        "the key changes every hash"
    );
    // Not the key in the debug output.
    assert!(!format!("{a:?}").contains(KEY));
}

#[test]
fn a_hashed_field_needs_a_long_enough_key() {
    let job = job();
    for key in [None, Some("short")] {
        let error = PiiProtection::with_key(&job, key).expect_err("no key, no job");
        let message = error.to_string();
        assert!(message.contains(KEY_ENV), "{message}");
        assert!(message.contains("`email`"), "{message}");
    }
    // No hashed field: no key needed.
    let masked = job_with(r#"{ name = "email", type = "string", pii = "email" },"#).unwrap();
    assert!(PiiProtection::with_key(&masked, None).unwrap().is_some());
    let untagged = job_with(r#"{ name = "email", type = "string" },"#).unwrap();
    assert!(PiiProtection::with_key(&untagged, None).unwrap().is_none());
}

#[test]
fn tags_that_cannot_be_honoured_are_refused_naming_the_field() {
    let cases = [
        (
            r#"{ name = "email", type = "string", policy = "hash" },"#,
            "source.fields[2].policy",
        ),
        (
            r#"{ name = "n", type = "int64", pii = "id", policy = "mask" },"#,
            "source.fields[2].policy",
        ),
        (
            r#"{ name = "n", type = "int64", pii = "id", policy = "hash" },"#,
            "source.fields[2].policy",
        ),
        (
            r#"{ name = "n", type = "string", pii = "id", policy = "drop", nullable = false },"#,
            "source.fields[2].policy",
        ),
        (r#"{ name = "n", type = "string", pii = "ssn" },"#, "ssn"),
        (
            r#"{ name = "n", type = "string", pii = "id", policy = "shred" },"#,
            "shred",
        ),
    ];
    for (field, expected) in cases {
        let message = job_with(field).expect_err(field).to_string();
        assert!(message.contains(expected), "{field}: {message}");
    }
    // A dropped number is fine.
    assert!(job_with(r#"{ name = "n", type = "int64", pii = "id", policy = "drop" },"#).is_ok());
    let on_time = r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [{ name = "ts", type = "timestamp", pii = "id", policy = "drop" }]
[transform]
sql = "SELECT * FROM t"
"#;
    let message = Job::from_toml(on_time, Path::new("t.toml"))
        .expect_err("the event time cannot be tagged")
        .to_string();
    assert!(message.contains("source.fields[0].pii"), "{message}");
}

#[test]
fn decoded_rows_never_hold_a_tagged_value() {
    let job = job();
    let decoder = protected_for(&job);
    let decoded = decoder
        .decode_records(&[RECORD.as_bytes()])
        .expect("decode");
    assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
    let batch = decoded.batch;
    let text = |name: &str| {
        let column = batch.column_by_name(name).expect(name);
        column
            .as_string::<i32>()
            .iter()
            .next()
            .flatten()
            .map(str::to_string)
    };
    assert_eq!(
        text("email"),
        Some(protection(&job).hash("alice.liddell@example.com"))
    );
    assert_eq!(text("customer").as_deref(), Some("A*** L***"));
    assert_eq!(text("card").as_deref(), Some("***1111"));
    let phone = batch.column_by_name("phone").expect("phone");
    assert_eq!(phone.null_count(), 1, "dropped: NULL, the column kept");
    assert_eq!(
        batch.schema(),
        job.source_schema(),
        "the schema is unchanged"
    );
    // Untagged fields untouched.
    let amount = batch.column_by_name("amount").unwrap();
    assert_eq!(
        amount
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(0),
        1.5
    );
}

fn redacted_value(
    pii: &PiiProtection,
    key: Option<&[u8]>,
    raw: &[u8],
) -> (Option<Vec<u8>>, String, Option<PiiMark>) {
    let redacted = pii.redact(key, Some(raw));
    (
        redacted.key.map(Cow::into_owned),
        String::from_utf8_lossy(&redacted.payload.unwrap_or_default()).into_owned(),
        redacted.mark,
    )
}

#[test]
fn diverted_records_carry_protected_values_or_nothing() {
    let job = job();
    let pii = protection(&job);
    let (_, redacted, mark) = redacted_value(&pii, None, RECORD.as_bytes());
    assert_eq!(mark, Some(PiiMark::Protected));
    let value: serde_json::Value = serde_json::from_str(&redacted).unwrap();
    assert_eq!(value["email"], pii.hash("alice.liddell@example.com"));
    assert_eq!(value["customer"], "A*** L***");
    assert_eq!(value["card_no"], "***1111");
    assert!(value.get("phone").is_none(), "dropped fields are removed");
    assert_eq!(value["amount"], 1.5);

    // A tagged field of the wrong type is protected as text; a copy of a tagged value in
    // another field, however deep, is replaced.
    let (_, text, _) = redacted_value(
        &pii,
        None,
        br#"{"ts":1,"customer":{"first":"Alice","last":"Liddell"},"note":{"by":["Alice wrote, ok"]},"email":"al@example.com","memo":"mail al@example.com"}"#,
    );
    assert!(
        !text.contains("Alice") && !text.contains("Liddell"),
        "{text}"
    );
    assert!(!text.contains("al@example.com"), "{text}");
    assert!(
        text.contains("<pii> wrote, ok") && text.contains("mail <pii>"),
        "{text}"
    );

    for unreadable in [
        &br#"{"ts":1,"email":"alice@example.com""#[..],
        b"alice@example.com",
        b"\xff\xfe alice@example.com",
        b"[\"alice@example.com\"]",
    ] {
        let (key, text, mark) = redacted_value(&pii, Some(b"alice@example.com"), unreadable);
        assert_eq!(mark, Some(PiiMark::Withheld));
        assert!(!text.contains("alice"), "{text}");
        assert!(text.contains("withheld"), "{text}");
        let key = String::from_utf8(key.unwrap()).unwrap();
        assert_eq!(key, pii.hash("alice@example.com"), "the key withheld too");
    }
    // A tombstone's key: nothing tells what it is, so it is hashed.
    let tombstone = pii.redact(Some(b"alice@example.com"), None);
    assert_eq!(tombstone.mark, Some(PiiMark::Withheld));
    assert!(tombstone.payload.is_none());
    // Nothing tagged in it: the bytes as they were.
    let plain = br#"{"ts":1,"amount":2}"#;
    assert_eq!(
        pii.redact(Some(b"k"), Some(plain)),
        Redacted::unchanged(Some(b"k"), Some(plain))
    );
    // Larger than any record the decoder takes: withheld, not parsed.
    let huge = format!(
        r#"{{"ts":1,"email":"alice@example.com","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    assert_eq!(
        pii.redact(None, Some(huge.as_bytes())).mark,
        Some(PiiMark::Withheld)
    );
}

#[test]
fn protection_is_idempotent() {
    let job = job();
    let pii = protection(&job);
    let (_, once, _) = redacted_value(&pii, None, RECORD.as_bytes());
    let (_, twice, _) = redacted_value(&pii, None, once.as_bytes());
    assert_eq!(
        once, twice,
        "a replayed dead letter decodes to the same values"
    );
    let decoder = protected_for(&job);
    let first = decoder.decode_records(&[RECORD.as_bytes()]).unwrap().batch;
    assert_eq!(pii.protect_batch(&first).unwrap(), first);
}

#[test]
fn keys_and_messages_lose_the_tagged_values() {
    let job = job();
    let pii = protection(&job);
    let (key, _, _) = redacted_value(&pii, Some(b"alice.liddell@example.com"), RECORD.as_bytes());
    assert_eq!(
        key.unwrap(),
        pii.hash("alice.liddell@example.com").into_bytes()
    );
    let (key, _, _) = redacted_value(
        &pii,
        Some(b"customer:alice.liddell@example.com"),
        RECORD.as_bytes(),
    );
    assert_eq!(
        key.unwrap(),
        pii.hash("customer:alice.liddell@example.com").into_bytes()
    );
    let (key, _, _) = redacted_value(&pii, Some(b"k-1"), RECORD.as_bytes());
    assert_eq!(key.unwrap(), b"k-1");
    let mut error = crate::decode::RecordError {
        index: 0,
        kind: crate::DivertReason::SchemaViolation,
        field: Some("amount".into()),
        reason: "expected a number, got +44 20 7946 0958 (Alice Liddell)".into(),
    };
    pii.scrub_error(&mut error, RECORD.as_bytes());
    assert_eq!(error.reason, "expected a number, got <pii> (<pii>)");
    // About a tagged field: only what was wrong, whatever the decoder quoted.
    let mut error = crate::decode::RecordError {
        field: Some("card_no".into()),
        reason: r#"expected string got {"first": "Alice" "last": "Liddell"}"#.into(),
        ..error
    };
    pii.scrub_error(&mut error, RECORD.as_bytes());
    assert!(!error.reason.contains("Liddell"), "{}", error.reason);
    assert!(error.reason.contains("`card_no`"), "{}", error.reason);
}

#[test]
fn decoder_errors_are_scrubbed() {
    let job = job_with(
        r#"{ name = "phone", type = "string", pii = "phone" }, { name = "n", type = "int64" },"#,
    )
    .unwrap();
    let decoder = protected_for(&job);
    // The phone is fine, `n` is not: whatever the message quotes, not the phone.
    let record = br#"{"ts":1000,"amount":1,"phone":"+44 20 7946 0958","n":"+44 20 7946 0958"}"#;
    let decoded = decoder.decode_records(&[&record[..]]).unwrap();
    assert_eq!(decoded.errors.len(), 1, "{:?}", decoded.errors);
    assert!(
        !decoded.errors[0].reason.contains("7946"),
        "{}",
        decoded.errors[0].reason
    );
}

#[test]
fn the_policy_is_part_of_the_plan() {
    let hashed = job();
    let masked = job_with(&TAGGED.replace(r#"policy = "hash""#, r#"policy = "mask""#)).unwrap();
    let untagged = job_with(
        r#"{ name = "email", type = "string" }, { name = "customer", type = "string" },
           { name = "phone", type = "string" }, { name = "card", type = "string", from = "card_no" },"#,
    )
    .unwrap();
    let prints = [&hashed, &masked, &untagged].map(|j| j.plan_fingerprint());
    assert_ne!(prints[0], prints[1]);
    assert_ne!(prints[1], prints[2]);
    assert_ne!(prints[0], prints[2]);
}

/// The JSON decoder behind [`protected`], with the test key instead of the environment's.
fn protected_for(job: &Job) -> Arc<dyn SourceDecoder> {
    crate::decode::protect_with(
        Arc::new(JsonDecoder::new(job)),
        PiiProtection::with_key(job, Some(KEY)).unwrap(),
    )
}

#[test]
fn without_tags_the_decoder_is_the_plain_one() {
    let job = job_with(r#"{ name = "email", type = "string" },"#).unwrap();
    let decoder = protected(&job, Arc::new(JsonDecoder::new(&job))).unwrap();
    assert!(
        format!("{decoder:?}").starts_with("JsonDecoder"),
        "{decoder:?}"
    );
}
