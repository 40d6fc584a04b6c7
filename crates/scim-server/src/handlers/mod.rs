//! HTTP handlers.

pub mod discovery;
pub mod resources;
mod stream;
