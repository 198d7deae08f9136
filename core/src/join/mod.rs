//! Joins in the one shared plan (docs/design/joins.md): stages written once against
//! [`crate::operator_state::OperatorState`], which the speed layer keeps in RocksDB and the
//! batch layer in a [`crate::operator_state::MemState`], so both give the same joined rows.
//!
//! - [`temporal`]: a stream joined with the version of a table valid at each row's event time.

mod compile;
pub(crate) mod sql;
pub mod temporal;

#[cfg(test)]
mod plan_tests;
