//! Existing tables that cannot take the results, and roles that may not write them: each
//! refused at start with an error naming the column or the privilege.

use tokio_postgres::Client;

use super::super::connect::PgTarget;
use super::super::error::PgError;
use super::super::table::ResultTable;
use super::{Cleanup, TEST_URL, client, drop_table, keyed_schema, unique};

/// `ensure` on a table created by `ddl` fails, and its message names `column`.
async fn refused(client: &Client, ddl: &str, key: &[&str], column: &str) -> PgError {
    let name = unique("sluice_bad");
    let _cleanup = Cleanup(vec![drop_table(&name)]);
    client
        .batch_execute(&ddl.replace("{t}", &format!("\"{name}\"")))
        .await
        .expect("creating the mismatching table");
    let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
    let table = ResultTable::new(&name, keyed_schema(), &key).expect("a valid table");
    let error = table
        .ensure(client, TEST_URL)
        .await
        .expect_err("the mismatching table must be refused");
    assert!(error.to_string().contains(column), "{error}");
    assert!(!error.is_unavailable(), "{error}");
    error
}

#[tokio::test]
async fn mismatching_tables_are_refused_naming_the_column() {
    let Some(client) = client().await else {
        return;
    };
    let error = refused(
        &client,
        "CREATE TABLE {t} (k text, w timestamptz, v integer)",
        &[],
        "`v`",
    )
    .await;
    assert!(
        matches!(&error, PgError::ColumnMismatch { column, expected, found, .. }
                 if column == "v" && expected == "bigint" && found == "integer"),
        "{error:?}"
    );
    // timestamp and timestamptz share a wire format: exactly what a silent cast would hide.
    let error = refused(
        &client,
        "CREATE TABLE {t} (k text, w timestamp, v bigint)",
        &[],
        "`w`",
    )
    .await;
    assert!(matches!(error, PgError::ColumnMismatch { .. }), "{error:?}");
    let error = refused(
        &client,
        "CREATE TABLE {t} (k text, w timestamptz)",
        &[],
        "`v`",
    )
    .await;
    assert!(
        matches!(&error, PgError::MissingColumn { column, .. } if column == "v"),
        "{error:?}"
    );
    let error = refused(
        &client,
        "CREATE TABLE {t} (k text, w timestamptz, v bigint, extra int NOT NULL)",
        &[],
        "`extra`",
    )
    .await;
    assert!(
        matches!(&error, PgError::RequiredColumn { column, .. } if column == "extra"),
        "{error:?}"
    );
    let error = refused(
        &client,
        "CREATE TABLE {t} (k text, w timestamptz, v bigint)",
        &["k", "w"],
        "k, w",
    )
    .await;
    assert!(
        matches!(error, PgError::MissingUniqueKey { .. }),
        "{error:?}"
    );
    // NULLs distinct: a NULL key would never conflict, so this index cannot serve the upsert.
    let error = refused(
        &client,
        "CREATE TABLE {t} (k text, w timestamptz, v bigint, UNIQUE (k, w))",
        &["k", "w"],
        "k, w",
    )
    .await;
    assert!(
        matches!(error, PgError::MissingUniqueKey { .. }),
        "{error:?}"
    );
    let error = refused(
        &client,
        "CREATE TABLE {t} (k text, w timestamptz, v bigint, UNIQUE NULLS NOT DISTINCT (k))",
        &["k", "w"],
        "k, w",
    )
    .await;
    assert!(
        matches!(error, PgError::MissingUniqueKey { .. }),
        "{error:?}"
    );

    // What a user may create by hand is accepted: a primary key (all NOT NULL, so NULLs
    // distinct is harmless), its columns in another order, extra columns with defaults.
    let name = unique("sluice_ok");
    let _cleanup = Cleanup(vec![drop_table(&name)]);
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{name}\" (id bigserial, k text, w timestamptz, v bigint, \
             loaded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (k, w))"
        ))
        .await
        .expect("creating a hand-made table");
    let key = ["w".to_string(), "k".to_string()];
    let table = ResultTable::new(&name, keyed_schema(), &key).expect("a valid table");
    assert!(
        !table
            .ensure(&client, TEST_URL)
            .await
            .expect("a usable table")
    );
}

#[tokio::test]
async fn missing_privileges_are_named_at_start() {
    let Some(admin) = client().await else {
        return;
    };
    let role = unique("sluice_role");
    let name = unique("sluice_priv");
    let missing = unique("sluice_nocreate");
    let serial = unique("sluice_serial");
    // Tables first: the role cannot be dropped while it holds grants on them.
    let _cleanup = Cleanup(vec![
        drop_table(&name),
        drop_table(&missing),
        drop_table(&serial),
        format!("DROP ROLE IF EXISTS \"{role}\""),
    ]);
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN; \
             CREATE TABLE \"{name}\" (k text, w timestamptz, v bigint, UNIQUE NULLS NOT DISTINCT (k, w)); \
             GRANT SELECT ON \"{name}\" TO \"{role}\""
        ))
        .await
        .expect("creating the role and its table");
    let url = format!("postgres://{role}@127.0.0.1:5432/test");
    let client = PgTarget::from_url(&url, None)
        .expect("a valid URL")
        .connect()
        .await
        .expect("connecting as the restricted role");
    let key = ["k".to_string(), "w".to_string()];
    let table = ResultTable::new(&name, keyed_schema(), &key).expect("a valid table");
    let error = table.ensure(&client, &url).await.expect_err("no INSERT");
    assert!(
        matches!(&error, PgError::MissingPrivilege { privilege, .. } if privilege == "INSERT"),
        "{error:?}"
    );
    assert!(error.to_string().contains(&name), "{error}");
    admin
        .batch_execute(&format!("GRANT INSERT ON \"{name}\" TO \"{role}\""))
        .await
        .expect("granting INSERT");
    let error = table.ensure(&client, &url).await.expect_err("no UPDATE");
    assert!(
        matches!(&error, PgError::MissingPrivilege { privilege, .. } if privilege == "UPDATE"),
        "{error:?}"
    );
    // Append needs INSERT only.
    let append = ResultTable::new(&name, keyed_schema(), &[]).expect("a valid table");
    append
        .ensure(&client, &url)
        .await
        .expect("INSERT is enough to append");
    // A serial column left to its default needs USAGE on its sequence too.
    admin
        .batch_execute(&format!(
            "CREATE TABLE \"{serial}\" (id bigserial, k text, w timestamptz, v bigint); \
             GRANT INSERT ON \"{serial}\" TO \"{role}\""
        ))
        .await
        .expect("creating the serial table");
    let with_serial = ResultTable::new(&serial, keyed_schema(), &[]).expect("a valid table");
    let error = with_serial
        .ensure(&client, &url)
        .await
        .expect_err("no USAGE on the sequence");
    assert!(
        matches!(&error, PgError::MissingPrivilege { privilege, on, .. }
                 if privilege == "USAGE" && on.contains("_id_seq")),
        "{error:?}"
    );
    // PostgreSQL 15 grants no CREATE on schema public: creating a table is refused clearly.
    let absent = ResultTable::new(&missing, keyed_schema(), &[]).expect("a valid table");
    let error = absent.ensure(&client, &url).await.expect_err("no CREATE");
    assert!(
        matches!(&error, PgError::MissingPrivilege { privilege, .. } if privilege == "CREATE"),
        "{error:?}"
    );
    drop(client);
}
