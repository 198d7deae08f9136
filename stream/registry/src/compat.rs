//! Compatibility levels and the check behind them, in Confluent's terms over Avro's own
//! resolution rules (`apache_avro::schema_compatibility`): BACKWARD means consumers on the new
//! schema can read what producers wrote with the old one, FORWARD the other way round, FULL
//! both; the `_TRANSITIVE` levels hold against every live version, not just the latest.
//! A "partial" match (a union branch or an enum symbol the reader lacks, so some data would
//! fail to resolve) counts as incompatible, as it does for Confluent.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility as Resolution, SchemaCompatibility};

use crate::encoding::truncate;
use crate::error::RegistryError;

/// A subject's (or the registry's) compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compatibility {
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

impl Compatibility {
    pub const ALL: [Compatibility; 7] = [
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
        Compatibility::None,
    ];

    /// The level as the API spells it (`BACKWARD_TRANSITIVE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
            Compatibility::None => "NONE",
        }
    }

    /// A level from its name, in any case (`full_transitive` too).
    pub fn parse(text: &str) -> Option<Compatibility> {
        let text = text.trim();
        Compatibility::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(text))
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    /// Whether the new schema must read data written with the old ones.
    fn backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    /// Whether the old schemas must read data written with the new one.
    fn forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compatibility {
    type Err = RegistryError;

    fn from_str(text: &str) -> Result<Compatibility, RegistryError> {
        Compatibility::parse(text).ok_or_else(|| RegistryError::InvalidLevel(text.to_string()))
    }
}

/// Why `new` may not follow `existing` (live versions, oldest first) at `level`: one message
/// per failed direction and version, newest version first; empty when it may. Against the
/// latest version only unless the level is transitive.
pub(crate) fn incompatibilities(
    level: Compatibility,
    new: &Schema,
    existing: &[(i32, &Schema)],
) -> Vec<String> {
    let against: Vec<&(i32, &Schema)> = if level.transitive() {
        existing.iter().rev().collect()
    } else {
        existing.last().into_iter().collect()
    };
    let mut messages = Vec::new();
    for (version, old) in against {
        if level.backward()
            && let Some(reason) = cannot_read(old, new)
        {
            messages.push(format!(
                "the new schema cannot read data written with version {version} ({level}): {reason}"
            ));
        }
        if level.forward()
            && let Some(reason) = cannot_read(new, old)
        {
            messages.push(format!(
                "version {version} cannot read data written with the new schema ({level}): {reason}"
            ));
        }
    }
    messages
}

/// Why a reader on `reader` cannot read every datum written with `writer`; `None` when it can.
fn cannot_read(writer: &Schema, reader: &Schema) -> Option<String> {
    // The checker is third-party code walking user input: a panic in it is a refusal, not a
    // dead request.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        SchemaCompatibility::can_read(writer, reader)
    }));
    match outcome {
        Ok(Ok(Resolution::Full)) => None,
        Ok(Ok(Resolution::Partial)) => Some(
            "only some of the data can be read: union branches or enum symbols are missing from the reader"
                .to_string(),
        ),
        Ok(Err(error)) => Some(truncate(&chain(&error), 2000)),
        Err(_) => Some("the Avro compatibility check failed on these schemas".to_string()),
    }
}

/// An error and its sources, `outer: inner: innermost`.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests;
