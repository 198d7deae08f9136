//! Telling an outage from a misconfiguration, and keeping the password out of every `Debug`,
//! `Display` and error.

use super::super::connect::PgTarget;
use super::super::error::PgError;
use super::skipped;

#[tokio::test]
async fn unavailable_is_told_from_misconfiguration() {
    if skipped() {
        return;
    }
    let closed = PgTarget::from_url("postgres://root@127.0.0.1:1/test", None).expect("valid");
    let error = closed
        .connect()
        .await
        .expect_err("nothing listens on port 1");
    assert!(error.is_unavailable(), "{error}");

    let unknown = PgTarget::from_url(
        "postgres://root@127.0.0.1:5432/sluice_no_such_database",
        None,
    )
    .expect("valid");
    let error = unknown.connect().await.expect_err("no such database");
    assert!(!error.is_unavailable(), "{error}");
    assert_eq!(error.sqlstate(), Some("3D000"), "{error}");
    assert!(
        error.to_string().contains("sluice_no_such_database"),
        "{error}"
    );
}

#[tokio::test]
async fn passwords_never_show() {
    let secret = "s3cr3t-Pa55";
    let target = PgTarget::from_url(&format!("postgres://root:{secret}@127.0.0.1:1/test"), None)
        .expect("valid");
    assert!(!format!("{target:?}").contains(secret));
    assert!(!target.to_string().contains(secret));
    assert!(
        target.redacted().contains("root:***@127.0.0.1:1"),
        "{}",
        target.redacted()
    );
    let error = target
        .connect()
        .await
        .expect_err("nothing listens on port 1");
    assert!(!error.to_string().contains(secret), "{error}");
    assert!(!format!("{error:?}").contains(secret), "{error:?}");

    let query = PgTarget::from_url(
        &format!("postgres://root@127.0.0.1:1/test?password={secret}"),
        None,
    )
    .expect("valid");
    assert!(!format!("{query:?}").contains(secret), "{query:?}");

    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{secret}\n")).expect("writing the password file");
    let from_file =
        PgTarget::from_url("postgres://root@127.0.0.1:1/test", Some(&file)).expect("valid");
    assert_eq!(from_file.config().get_password(), Some(secret.as_bytes()));
    assert!(!format!("{from_file:?}").contains(secret));
    let error = from_file
        .connect()
        .await
        .expect_err("nothing listens on port 1");
    assert!(!format!("{error} {error:?}").contains(secret));

    let missing = PgTarget::from_url(
        "postgres://root@127.0.0.1/test",
        Some(&dir.path().join("nope")),
    )
    .expect_err("a missing password file");
    assert!(
        matches!(missing, PgError::PasswordFile { .. }),
        "{missing:?}"
    );
}
