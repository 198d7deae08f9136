//! Where a job's results go besides `<job>.results`: `[[outputs]]` (branching to topics by
//! predicate) and `[[sinks]]` (external stores such as PostgreSQL).
//!
//! ```toml
//! [[outputs]]
//! name = "big"                    # unique; names the output in metrics and in sinks
//! where = "amount >= 100"         # an SQL predicate over the job's result columns
//! topic = "orders.big"            # default: <job>.out.<name>
//! [[outputs]]
//! name = "rest"
//! else = true                     # rows no `where` output matched (no `where` then)
//!
//! [[sinks]]
//! name = "pg"                     # default: the kind
//! kind = "postgres"
//! url = "postgres://sluice@127.0.0.1:5432/analytics"  # SLUICE_POSTGRES_URL overrides it
//! table = "orders_per_minute"     # default: the job's versioned name
//! mode = "upsert"                 # default: upsert for aggregates (by view key and window),
//!                                 # append for stateless jobs
//! output = "big"                  # optional: write this output's rows instead of all results
//! password_file = "/run/secrets/pg" # optional; else the URL's or PGPASSWORD
//! dead_letters = true             # default true: mirror <job>.dlq into ETLDeadLetter
//! ```
//!
//! A row may match several outputs; outputs are routed in the same Kafka transaction as the
//! rest of a micro-batch, so each row reaches each matching output exactly once.

use std::path::PathBuf;

use serde::Deserialize;

/// The environment variable that overrides every postgres sink's `url`.
pub const POSTGRES_URL_ENV: &str = "SLUICE_POSTGRES_URL";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    /// An SQL predicate over the result columns; absent exactly when `else` is set.
    #[serde(rename = "where")]
    pub predicate: Option<String>,
    /// The topic the output's rows go to. Default: `<job>.out.<name>` (see
    /// [`crate::topics::Topics`]).
    pub topic: Option<String>,
    /// Catches the rows that no `where` output matched.
    #[serde(rename = "else", default)]
    pub otherwise: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    Postgres,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkMode {
    /// One row per result key (view key and window): a re-emitted window replaces its row.
    Upsert,
    /// Every result row is inserted as it comes.
    Append,
}

impl SinkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkMode::Upsert => "upsert",
            SinkMode::Append => "append",
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    pub name: Option<String>,
    pub kind: SinkKind,
    /// `postgres://user[:password]@host:port/database`. Never logged with its password.
    pub url: String,
    pub table: Option<String>,
    pub mode: Option<SinkMode>,
    /// The `[[outputs]]` entry whose rows this sink writes; all results when absent.
    pub output: Option<String>,
    /// A file holding the password (its first line), for secrets mounted as files.
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub dead_letters: bool,
}

fn default_true() -> bool {
    true
}

impl SinkSpec {
    /// The sink's name: `name`, or its kind.
    pub fn sink_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.as_str())
    }
}

/// Hand-written so that a URL's password never reaches a log or an error.
impl std::fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &redact_url(&self.url))
            .field("table", &self.table)
            .field("mode", &self.mode)
            .field("output", &self.output)
            .field("password_file", &self.password_file)
            .field("dead_letters", &self.dead_letters)
            .finish()
    }
}

/// `url` with its password, if any, replaced by `***` (and unchanged when it does not parse).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => url.split('@').next_back().unwrap_or(url).to_string(),
    }
}

/// Whether `name` may name an output or a sink (it becomes part of topic and group names).
pub(crate) fn valid_route_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("postgres://u:secret@127.0.0.1:5432/db"),
            "postgres://u:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u@127.0.0.1/db"),
            "postgres://u@127.0.0.1/db"
        );
        assert!(!redact_url("not a url:secret@host").contains("secret"));
    }
}
