//! The registry's state: what the schemas topic says, applied record by record in log order.
//! Every replica applies the same log with the same rule, so they all hold the same state.
//!
//! The rule that makes concurrent writers agree is "first in the log wins": a record that
//! binds an id already bound to a different schema, or takes a (subject, version) that already
//! holds a different id, is ignored. A writer whose record was ignored sees it once its replica
//! has applied the log that far, and tries again with the next id or version. Records that
//! agree with the state (the same schema under the same id and version, written twice, or
//! written again to flip `deleted`) apply.
//!
//! Queries answer in the Confluent API's terms, refusing with its error codes.

use std::collections::{BTreeMap, HashMap};

use apache_avro::Schema;

use crate::api_error::ApiError;
use crate::compat::{Compatibility, incompatibilities};
use crate::records::{Change, SchemaRecord};
use crate::schema::ParsedSchema;

/// A schema bound to an id (by the first record that used the id).
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub text: String,
    pub canonical: String,
    /// A type other than Avro (written by a foreign registry), kept when it is rewritten.
    pub schema_type: Option<String>,
    pub avro: Option<Schema>,
}

/// One version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    pub id: u32,
    pub deleted: bool,
}

/// What applying a record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Applied,
    /// Ignored by "first in the log wins"; the reason names what it collided with.
    Ignored(String),
    /// A key type the registry does not use.
    Skipped,
}

/// How a version is named in a path: a number, or the latest live one (`latest`, `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionRef {
    Latest,
    Number(i32),
}

impl VersionRef {
    /// `latest`, `-1` or an integer from 1 to 2^31-1; anything else is a 42202.
    pub fn parse(text: &str) -> Result<VersionRef, ApiError> {
        if text.eq_ignore_ascii_case("latest") || text == "-1" {
            return Ok(VersionRef::Latest);
        }
        match text.parse::<i32>() {
            Ok(number) if number >= 1 => Ok(VersionRef::Number(number)),
            _ => Err(ApiError::invalid_version(text)),
        }
    }
}

/// What a registration has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The subject already has the schema (a live version): nothing to write.
    Existing(u32),
    /// Write this version with this id.
    Write { version: i32, id: u32 },
}

#[derive(Debug, Default)]
pub(crate) struct State {
    schemas: BTreeMap<u32, Stored>,
    /// The first id bound to each schema identity: the id a new registration reuses.
    by_canonical: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<i32, Version>>,
    levels: BTreeMap<String, Compatibility>,
    global: Option<Compatibility>,
}

impl State {
    pub fn apply(&mut self, change: Change) -> Outcome {
        match change {
            Change::Schema(record) => self.apply_schema(*record),
            Change::SchemaRemoved { subject, version } => {
                if let Some(versions) = self.subjects.get_mut(&subject) {
                    versions.remove(&version);
                    if versions.is_empty() {
                        self.subjects.remove(&subject);
                    }
                }
                Outcome::Applied
            }
            Change::Config { subject, level } => {
                match (subject, level) {
                    (None, level) => self.global = level,
                    (Some(subject), Some(level)) => {
                        self.levels.insert(subject, level);
                    }
                    (Some(subject), None) => {
                        self.levels.remove(&subject);
                    }
                }
                Outcome::Applied
            }
            Change::Other(kind) => {
                tracing::debug!(%kind, "skipped a record of a key type this registry does not use");
                Outcome::Skipped
            }
        }
    }

    fn apply_schema(&mut self, record: SchemaRecord) -> Outcome {
        if let Some(bound) = self.schemas.get(&record.id)
            && bound.canonical != record.canonical
        {
            return Outcome::Ignored(format!(
                "id {} is already bound to another schema (version {} of `{}` wanted it)",
                record.id, record.version, record.subject
            ));
        }
        if let Some(taken) = self.version_of(&record.subject, record.version)
            && taken.id != record.id
        {
            return Outcome::Ignored(format!(
                "version {} of `{}` already holds schema id {} (a record wanted id {})",
                record.version, record.subject, taken.id, record.id
            ));
        }
        let SchemaRecord {
            subject,
            version,
            id,
            text,
            deleted,
            schema_type,
            canonical,
            avro,
        } = record;
        self.by_canonical.entry(canonical.clone()).or_insert(id);
        self.schemas.entry(id).or_insert(Stored {
            text,
            canonical,
            schema_type,
            avro,
        });
        self.subjects
            .entry(subject)
            .or_default()
            .insert(version, Version { id, deleted });
        Outcome::Applied
    }

    // -----------------------------------------------------------------------------------------
    // Reads

    pub fn version_of(&self, subject: &str, version: i32) -> Option<Version> {
        self.subjects.get(subject)?.get(&version).copied()
    }

    pub fn schema(&self, id: u32) -> Option<&Stored> {
        self.schemas.get(&id)
    }

    /// Subjects with a live version (or any version, with `deleted`), sorted.
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, versions)| versions.values().any(|v| deleted || !v.deleted))
            .map(|(subject, _)| subject.clone())
            .collect()
    }

    /// The subject's versions, oldest first (40401 when it has none to show).
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<(i32, Version)>, ApiError> {
        let versions: Vec<(i32, Version)> = self
            .subjects
            .get(subject)
            .map(|versions| {
                versions
                    .iter()
                    .filter(|(_, v)| deleted || !v.deleted)
                    .map(|(number, v)| (*number, *v))
                    .collect()
            })
            .unwrap_or_default();
        if versions.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        Ok(versions)
    }

    /// One version (40401 when the subject has none to show, 40402 when it lacks this one).
    pub fn version(
        &self,
        subject: &str,
        version: VersionRef,
        deleted: bool,
    ) -> Result<(i32, Version), ApiError> {
        let versions = self.versions(subject, deleted)?;
        let found = match version {
            VersionRef::Latest => versions.last(),
            VersionRef::Number(number) => versions.iter().find(|(n, _)| *n == number),
        };
        match (found, version) {
            (Some(found), _) => Ok(*found),
            (None, VersionRef::Number(number)) => Err(ApiError::version_not_found(subject, number)),
            (None, VersionRef::Latest) => Err(ApiError::subject_not_found(subject)),
        }
    }

    /// Every (subject, version) holding `id`, sorted (40403 when the id is unknown).
    pub fn id_versions(&self, id: u32, deleted: bool) -> Result<Vec<(String, i32)>, ApiError> {
        if !self.schemas.contains_key(&id) {
            return Err(ApiError::id_not_found(id));
        }
        Ok(self
            .subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .iter()
                    .filter(move |(_, v)| v.id == id && (deleted || !v.deleted))
                    .map(move |(number, _)| (subject.clone(), *number))
            })
            .collect())
    }

    /// The version of `subject` that holds `schema` (the newest, if several do).
    pub fn lookup(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        deleted: bool,
    ) -> Result<(i32, u32), ApiError> {
        self.versions(subject, deleted)?
            .into_iter()
            .rev()
            .find(|(_, v)| self.holds(v.id, &schema.canonical))
            .map(|(number, v)| (number, v.id))
            .ok_or_else(ApiError::schema_not_found)
    }

    /// Whether `id` is bound to the schema with this canonical form.
    pub fn holds(&self, id: u32, canonical: &str) -> bool {
        self.schemas
            .get(&id)
            .is_some_and(|stored| stored.canonical == canonical)
    }

    /// The level set for `subject` itself.
    pub fn subject_level(&self, subject: &str) -> Option<Compatibility> {
        self.levels.get(subject).copied()
    }

    /// The global level (BACKWARD unless set).
    pub fn global_level(&self) -> Compatibility {
        self.global.unwrap_or_default()
    }

    /// The level registrations under `subject` are checked at.
    pub fn effective_level(&self, subject: &str) -> Compatibility {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    /// The subject's live versions that are Avro, oldest first (what compatibility is
    /// checked against).
    fn live_schemas(&self, subject: &str) -> Vec<(i32, &Schema)> {
        let Some(versions) = self.subjects.get(subject) else {
            return Vec::new();
        };
        versions
            .iter()
            .filter(|(_, v)| !v.deleted)
            .filter_map(|(number, v)| {
                let avro = self.schemas.get(&v.id)?.avro.as_ref()?;
                Some((*number, avro))
            })
            .collect()
    }

    /// The subject's live versions and their ids, oldest first.
    pub fn live_versions(&self, subject: &str) -> Vec<(i32, u32)> {
        self.subjects
            .get(subject)
            .map(|versions| {
                versions
                    .iter()
                    .filter(|(_, v)| !v.deleted)
                    .map(|(number, v)| (*number, v.id))
                    .collect()
            })
            .unwrap_or_default()
    }

    // -----------------------------------------------------------------------------------------
    // Planning writes

    /// What registering `schema` under `subject` must write: nothing when a live version
    /// holds it; else the next version, with the id the schema already has anywhere or the
    /// next free one. 409 when it is incompatible at the subject's level.
    pub fn plan_register(&self, subject: &str, schema: &ParsedSchema) -> Result<Plan, ApiError> {
        let existing = self
            .live_versions(subject)
            .into_iter()
            .rev()
            .find(|(_, id)| self.holds(*id, &schema.canonical));
        if let Some((_, id)) = existing {
            return Ok(Plan::Existing(id));
        }
        let level = self.effective_level(subject);
        let messages = incompatibilities(level, &schema.avro, &self.live_schemas(subject));
        if !messages.is_empty() {
            return Err(ApiError::incompatible(subject, level, &messages));
        }
        let id = match self.by_canonical.get(&schema.canonical) {
            Some(id) => *id,
            None => self.next_id()?,
        };
        let version = self
            .subjects
            .get(subject)
            .and_then(|versions| versions.keys().next_back().copied())
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| {
                ApiError::store(format!("subject `{subject}` has no version numbers left"))
            })?;
        Ok(Plan::Write { version, id })
    }

    /// Max id + 1, from 1; ids stay within a Java `int`, as Confluent's clients expect.
    fn next_id(&self) -> Result<u32, ApiError> {
        let next = match self.schemas.keys().next_back() {
            None => 1,
            Some(max) => max.saturating_add(1),
        };
        if next > i32::MAX as u32 {
            return Err(ApiError::store("no schema ids left"));
        }
        Ok(next)
    }

    /// The messages of a compatibility check of `schema` against `version` of `subject`
    /// (against what a registration would be checked against, for `latest`); empty when
    /// compatible.
    pub fn check(
        &self,
        subject: &str,
        version: VersionRef,
        schema: &ParsedSchema,
    ) -> Result<Vec<String>, ApiError> {
        let (number, found) = self.version(subject, version, false)?;
        let level = self.effective_level(subject);
        let live = self.live_schemas(subject);
        let against: Vec<(i32, &Schema)> = match version {
            VersionRef::Latest => live,
            VersionRef::Number(_) => {
                match self.schemas.get(&found.id).and_then(|s| s.avro.as_ref()) {
                    Some(avro) => vec![(number, avro)],
                    None => Vec::new(),
                }
            }
        };
        Ok(incompatibilities(level, &schema.avro, &against))
    }
}

#[cfg(test)]
mod tests;
