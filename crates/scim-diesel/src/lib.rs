#![doc = include_str!("../README.md")]
//!
//! # Design
//!
//! * One query code base over [`AnyConnection`], a diesel `MultiConnection` of SQLite and
//!   PostgreSQL chosen at run time from the URL. Backend-specific SQL lives in `backend.rs`.
//! * Resources are stored generically: the document as JSON text plus derived index columns
//!   (`user_name_ci`, `display_name_ci`, `external_id`), maintained in the same transaction.
//!   Adding a SCIM attribute needs no migration.
//! * Group membership is its own table; membership changes are set operations in SQL.
//! * Uniqueness of `userName` is a unique index on the folded name, not a check-then-insert.
//! * Every write is one transaction; SQLite writes take the write lock up front.

mod backend;
mod batch;
mod combine;
pub mod conn;
mod group;
mod inline;
mod raw;
pub mod schema;
mod store;
pub mod testing;
mod turns;

pub use conn::{AnyConnection, Backend};
pub use store::{DeriveRows, DieselStore, IndexState, StoreConfig};

#[cfg(test)]
mod tests;
