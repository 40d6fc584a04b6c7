#![doc = include_str!("../README.md")]
//!
//! # Design
//!
//! * The grammar lives in `grammar.pest`; this crate turns pest pairs into the [`Filter`] and
//!   [`PatchPath`] trees of its `ast` module.
//! * Limits are checked on the raw text first (length, bracket depth), so the recursive
//!   descent of the generated parser and of every consumer of the tree is bounded.
//! * `and`/`or` chains are flattened into n-ary nodes.
//! * Lenient forms real identity providers send are accepted by the grammar and marked in the
//!   tree (upper-case operators are simply case-insensitive; unquoted values become
//!   [`CompValue::Bare`]) so that a strict consumer can still reject them.

mod ast;
mod parse;

pub use ast::{AttrPath, CompValue, CompareOp, Filter, PatchPath};
pub use parse::{parse_filter, parse_patch_path, Limits, ParseError, ParseErrorKind};

#[cfg(test)]
mod tests;
