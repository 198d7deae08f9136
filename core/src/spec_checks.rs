//! Data-quality checks (`[[checks]]`): what a job declares about its source rows, in dbt's
//! vocabulary where it fits.
//!
//! ```toml
//! [[checks]]
//! check = "not_null"              # not_null | accepted_values | range | regex | expect | unique
//! column = "order_id"             # a source field (by its job name)
//! severity = "quarantine"         # warn (default): count violations; quarantine: dead-letter
//!                                 # the record as `check_failed`
//! [[checks]]
//! check = "accepted_values"
//! column = "status"
//! values = ["completed", "pending", "cancelled"]
//! [[checks]]
//! check = "range"
//! column = "amount"
//! min = 0                         # either bound may be left out
//! max = 100000
//! inclusive = true                # default true: min <= amount <= max
//! [[checks]]
//! check = "regex"
//! column = "order_id"
//! pattern = "^o-[0-9]+$"          # Rust regex syntax, matched anywhere unless anchored
//! [[checks]]
//! check = "expect"
//! name = "completed_have_amount"  # required for expect; default `<check>_<column>` otherwise
//! predicate = "status <> 'completed' OR amount > 0"
//! [[checks]]
//! check = "unique"
//! column = "order_id"             # or columns = ["customer_id", "order_id"]
//! within = "1h"                   # default: [transform] dedup_within (1h)
//! ```
//!
//! `unique` is the one check that is not about a row alone: a row violates it exactly when the
//! SQL's first-row dedup with the same key and horizon would drop it (another row of the same
//! Kafka partition with the same key came at most `within` before it, [`crate::dedup`]). It
//! runs on the same stage: warn counts duplicates once the watermark has passed them (the rows
//! go on at once); quarantine holds rows until then and dead-letters the duplicates.
//!
//! As in dbt, a check is violated by a row whose value is present and fails it: NULL passes
//! every check but `not_null` (and an `expect` predicate that is NULL passes). The checks run
//! on the decoded source rows, before the transform and the SQL, through one implementation
//! ([`crate::checks`]) that both layers call, so both quarantine the same records.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Names the check in metrics, the API and the `sluice.check` header of quarantined
    /// records. Default: `<check>_<column>`; `expect` needs one.
    pub name: Option<String>,
    pub check: CheckKind,
    /// The source field the check is about (all but `expect`).
    pub column: Option<String>,
    #[serde(default)]
    pub severity: Severity,
    /// `accepted_values`: the values the column may take.
    pub values: Option<Vec<CheckValue>>,
    /// `range`: the bounds (at least one).
    pub min: Option<CheckValue>,
    pub max: Option<CheckValue>,
    /// `range`: whether the bounds themselves pass (default true).
    pub inclusive: Option<bool>,
    /// `regex`: the pattern the column's text must match.
    pub pattern: Option<String>,
    /// `expect`: an SQL predicate over the source fields that every row must satisfy.
    pub predicate: Option<String>,
    /// `unique`: the key columns, when more than `column`.
    pub columns: Option<Vec<String>>,
    /// `unique`: how far apart two rows of a key may be for the later to violate it.
    #[serde(default, deserialize_with = "crate::spec::optional_duration")]
    pub within: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    NotNull,
    AcceptedValues,
    Range,
    Regex,
    Expect,
    Unique,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::NotNull => "not_null",
            CheckKind::AcceptedValues => "accepted_values",
            CheckKind::Range => "range",
            CheckKind::Regex => "regex",
            CheckKind::Expect => "expect",
            CheckKind::Unique => "unique",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Violations are counted (metric, API), the row goes on.
    #[default]
    Warn,
    /// The record goes to the DLQ as `check_failed`; the batch layer skips the same rows.
    Quarantine,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warn => "warn",
            Severity::Quarantine => "quarantine",
        }
    }
}

/// A literal in a check: TOML's text, integers, floats and booleans.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CheckValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl CheckValue {
    /// The value as an SQL literal (text quoted, quotes doubled).
    pub fn sql(&self) -> String {
        match self {
            CheckValue::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
            CheckValue::Int(i) => i.to_string(),
            CheckValue::Float(f) => format!("{f:?}"),
            CheckValue::Text(t) => sql_text(t),
        }
    }
}

/// `text` as an SQL string literal.
pub fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl CheckSpec {
    /// The check's name: its own, or `<check>_<column>`.
    pub fn display_name(&self) -> String {
        match (&self.name, &self.column, &self.columns) {
            (Some(name), _, _) => name.clone(),
            (None, Some(column), _) => format!("{}_{column}", self.check.as_str()),
            (None, None, Some(columns)) => format!("{}_{}", self.check.as_str(), columns.join("_")),
            (None, None, None) => self.check.as_str().to_string(),
        }
    }

    /// The columns a check is about: `column`, or `unique`'s `columns`.
    pub fn key_columns(&self) -> Vec<String> {
        match (&self.column, &self.columns) {
            (Some(column), _) => vec![column.clone()],
            (None, Some(columns)) => columns.clone(),
            (None, None) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        checks: Vec<CheckSpec>,
    }

    #[test]
    fn checks_parse_in_the_documented_form() {
        let file: File = toml::from_str(
            r#"
[[checks]]
check = "not_null"
column = "order_id"
severity = "quarantine"
[[checks]]
check = "accepted_values"
column = "status"
values = ["completed", 3, 2.5, true]
[[checks]]
check = "range"
column = "amount"
min = 0
"#,
        )
        .expect("parses");
        assert_eq!(file.checks[0].display_name(), "not_null_order_id");
        assert_eq!(file.checks[0].severity, Severity::Quarantine);
        assert_eq!(file.checks[1].severity, Severity::Warn);
        let values: Vec<String> = file.checks[1]
            .values
            .iter()
            .flatten()
            .map(CheckValue::sql)
            .collect();
        assert_eq!(values, ["'completed'", "3", "2.5", "TRUE"]);
        assert_eq!(file.checks[2].min, Some(CheckValue::Int(0)));
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let typo = toml::from_str::<File>("[[checks]]\ncheck = \"not_null\"\ncolum = \"a\"\n");
        assert!(typo.is_err());
        let kind = toml::from_str::<File>("[[checks]]\ncheck = \"is_nice\"\ncolumn = \"a\"\n");
        let message = kind.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("not_null"), "{message}");
    }

    #[test]
    fn text_literals_cannot_escape_their_quotes() {
        assert_eq!(sql_text("it's"), "'it''s'");
    }
}
