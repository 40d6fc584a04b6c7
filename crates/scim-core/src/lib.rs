#![doc = include_str!("../README.md")]
//!
//! # Design
//!
//! * **Data-driven schemas.** [`SchemaRegistry::builtin`] reads the RFC 7643 JSON definitions
//!   embedded from `schemas/`. Validation, projection, PATCH path resolution and filter
//!   planning all read attribute characteristics (`mutability`, `returned`, `caseExact`,
//!   `multiValued`, types) from the registry; there is no per-attribute code except for the
//!   two derived attributes that live outside the document (Group `members`, User `groups`).
//! * **No I/O, no clock.** Functions take the current time and ids as parameters; the
//!   [`store::ResourceStore`] trait is implemented elsewhere (`scim-diesel`).
//! * **Errors are protocol.** [`ScimError`] carries an HTTP status as a number and the RFC
//!   7644 `scimType`; turning it into a response is the server's job.

pub mod bulk;
pub mod error;
pub mod eval;
mod generated;
pub mod index;
pub mod messages;
pub mod patch;
pub mod query;
pub mod render;
pub mod resource;
pub mod schema;
pub mod store;
pub mod time_fmt;
pub mod urns;

pub use error::{ScimError, ScimType, StoreError};
pub use resource::Ctx;
pub use schema::SchemaRegistry;

#[cfg(test)]
mod tests;
