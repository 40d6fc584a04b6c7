//! The one integration-test binary of the server: real HTTP against a real server on a
//! loopback port, on SQLite and (when `SCIM_TEST_POSTGRES_URL` is set) PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod conformance;
mod groups;
mod hostile;
mod options;
mod postgres;
mod security;
mod server;
