//! The error type of the PostgreSQL sink's building blocks.
//!
//! Every variant names what it is about (the redacted target, the table, the column) and says
//! what to do, because these errors surface at a daemon's start, where the operator has to fix a
//! URL, a grant or a table. [`PgError::is_unavailable`] splits them into "PostgreSQL is down or
//! busy, retry later" (the sink pauses and backs off) and "this will never work" (it stops).

use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Opening a connection failed (refused, authentication, unknown database…).
    #[error("connecting to PostgreSQL at {target}: {}{}", describe(.source), connect_hint(.source))]
    Connect {
        /// The URL without its password.
        target: String,
        source: tokio_postgres::Error,
    },
    /// The connection attempt did not finish in time.
    #[error(
        "connecting to PostgreSQL at {target}: no answer within {seconds} s (is the server up and reachable? raise connect_timeout in the URL if it is slow)"
    )]
    ConnectTimeout { target: String, seconds: u64 },
    /// A call (a whole commit transaction) did not finish in time: a frozen server or a
    /// half-open connection.
    #[error("PostgreSQL{}: no answer within {seconds} s; the connection is dropped and the call retried", at(.target))]
    CallTimeout { target: String, seconds: u64 },
    /// A statement failed; `what` says which one, in words.
    #[error("PostgreSQL{}: {what}: {}", at(.target), describe(.source))]
    Query {
        /// The URL without its password; empty when the caller does not know it.
        target: String,
        what: String,
        source: tokio_postgres::Error,
    },
    /// The URL (or key/value connection string) is not one Sluice can use.
    #[error("PostgreSQL URL {target}: {message}")]
    InvalidUrl { target: String, message: String },
    /// The `password_file` could not be read.
    #[error(
        "reading the PostgreSQL password file {}: {source} (it must hold the password on its first line)",
        .path.display()
    )]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A table name, key or column list that cannot be used as given.
    #[error("table `{table}`: {message}")]
    InvalidTable { table: String, message: String },
    /// The server is older than a feature the table needs.
    #[error(
        "PostgreSQL at {target} is version {found}; {needed} needs PostgreSQL 15 or later (upgrade the server)"
    )]
    ServerVersion {
        target: String,
        /// `server_version_num`, e.g. 140011.
        found: i32,
        needed: String,
    },
    /// The connected role may not do what the sink needs.
    #[error(
        "table `{table}`: role `{role}` lacks the {privilege} privilege on {on} (as its owner or a superuser: GRANT {privilege} ON {on} TO {role})"
    )]
    MissingPrivilege {
        table: String,
        role: String,
        privilege: String,
        /// What the privilege is on: `TABLE "t"` or `SCHEMA "public"`.
        on: String,
    },
    /// A result column has an Arrow type the binary COPY encoder cannot write.
    #[error(
        "table `{table}`: column `{column}` has Arrow type {data_type}, which Sluice cannot write to PostgreSQL (cast it in the job's SQL, e.g. to BIGINT, DOUBLE, VARCHAR or a microsecond TIMESTAMP)"
    )]
    UnsupportedType {
        table: String,
        column: String,
        data_type: String,
    },
    /// The existing table's column has another type than the result column maps to.
    #[error(
        "table `{table}`: column `{column}` is {found} but Sluice writes {expected}; Sluice never casts silently: alter the column (ALTER TABLE {table} ALTER COLUMN {column} TYPE {expected}), or drop the table to let Sluice create it, or point the sink at another table"
    )]
    ColumnMismatch {
        table: String,
        column: String,
        expected: String,
        found: String,
    },
    /// The existing table lacks a result column.
    #[error(
        "table `{table}` has no column `{column}`, which the job's results carry (add it, or drop the table to let Sluice create it)"
    )]
    MissingColumn { table: String, column: String },
    /// An upsert table without a unique index on exactly its key columns.
    #[error(
        "table `{table}` has no unique index on exactly ({}) with NULLS NOT DISTINCT, which the upsert needs to replace a key's row (ALTER TABLE {table} ADD UNIQUE NULLS NOT DISTINCT ({}), or use mode = \"append\")",
        .columns.join(", "),
        .columns.join(", ")
    )]
    MissingUniqueKey { table: String, columns: Vec<String> },
    /// A NOT NULL column without a default that Sluice does not write: every insert would fail.
    #[error(
        "table `{table}`: column `{column}` is NOT NULL without a default, and the job's results do not carry it (give it a DEFAULT, make it nullable, or drop it)"
    )]
    RequiredColumn { table: String, column: String },
    /// Encoding a batch into binary COPY failed.
    #[error("table `{table}`: encoding rows for COPY: {message}")]
    Encode { table: String, message: String },
}

impl PgError {
    /// True when trying again later can succeed: the server is unreachable, restarting,
    /// overloaded, or the transaction lost a serialization race. False for what only a fix of
    /// the configuration or the table can cure.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Connect { source, .. } | PgError::Query { source, .. } => transient(source),
            PgError::ConnectTimeout { .. } | PgError::CallTimeout { .. } => true,
            PgError::InvalidUrl { .. }
            | PgError::PasswordFile { .. }
            | PgError::InvalidTable { .. }
            | PgError::ServerVersion { .. }
            | PgError::MissingPrivilege { .. }
            | PgError::UnsupportedType { .. }
            | PgError::ColumnMismatch { .. }
            | PgError::MissingColumn { .. }
            | PgError::MissingUniqueKey { .. }
            | PgError::RequiredColumn { .. }
            | PgError::Encode { .. } => false,
        }
    }

    /// The SQLSTATE the server answered with, if the error came from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Connect { source, .. } | PgError::Query { source, .. } => {
                source.code().map(|code| code.code())
            }
            _ => None,
        }
    }

    /// Wraps a failed statement: `.map_err(PgError::query(target, "reading the checkpoints"))`.
    pub fn query(
        target: &str,
        what: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let target = target.to_string();
        let what = what.into();
        move |source| PgError::Query {
            target,
            what,
            source,
        }
    }
}

/// SQLSTATEs after which the same work can succeed on a retry.
fn transient_sqlstate(code: &str) -> bool {
    // Class 08: connection exceptions; 53: insufficient resources (too many connections, out of
    // memory, disk full); 57P01-03/05: the server is shutting down, crashed, starting up, or
    // closed an idle session; 57014: a statement timeout; 55P03: a lock timeout; 40001/40P01:
    // serialization failure and deadlock, which PostgreSQL asks the client to retry.
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57P05" | "57014" | "55P03" | "40001" | "40P01"
        )
}

fn transient(error: &tokio_postgres::Error) -> bool {
    if let Some(code) = error.code() {
        return transient_sqlstate(code.code());
    }
    if error.is_closed() {
        return true;
    }
    // Refused, reset, broken pipe, timed out: all arrive as an io::Error somewhere in the chain.
    // Configuration errors ("invalid connection string", "password missing") carry none.
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if inner.is::<std::io::Error>() {
            return true;
        }
        cause = inner.source();
    }
    false
}

/// tokio-postgres's own text is terse ("db error"); this spells out the server's message, its
/// SQLSTATE, detail and hint, or the io error underneath.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            let _ = write!(text, " (detail: {detail})");
        }
        if let Some(hint) = db.hint() {
            let _ = write!(text, " (hint: {hint})");
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        let _ = write!(text, ": {inner}");
        cause = inner.source();
    }
    text
}

/// ` at <target>`, or nothing for an unknown target.
fn at(target: &str) -> String {
    if target.is_empty() {
        String::new()
    } else {
        format!(" at {target}")
    }
}

/// What an operator should check after a failed connection attempt.
fn connect_hint(error: &tokio_postgres::Error) -> &'static str {
    match error.code().map(|code| code.code()) {
        Some("28P01") => {
            " (check the password: the URL's, the sink's password_file, or PGPASSWORD, in that order)"
        }
        Some("28000") => " (the server's pg_hba.conf refuses this user, database or host)",
        Some("3D000") => " (create the database, or fix the database name in the URL)",
        Some("53300") => " (the server is at max_connections; Sluice retries)",
        Some(_) => "",
        None if transient(error) => {
            " (is PostgreSQL running and listening on that host and port? Sluice retries)"
        }
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::transient_sqlstate;

    #[test]
    fn retryable_sqlstates_are_told_from_configuration_errors() {
        for code in [
            "08006", "08001", "57P01", "57P03", "53300", "40001", "40P01",
        ] {
            assert!(transient_sqlstate(code), "{code} should be retryable");
        }
        for code in [
            "28P01", "28000", "3D000", "42501", "42P01", "42804", "23505",
        ] {
            assert!(!transient_sqlstate(code), "{code} should not be retryable");
        }
    }
}
