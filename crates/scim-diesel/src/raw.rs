//! `RawCond`: a boolean SQL condition assembled at run time from fixed SQL text and bound
//! parameters. Filter sub-queries on the attribute-value index need correlated `EXISTS` and
//! `IN` forms that the typed DSL cannot express dynamically. Values are bound parameters,
//! except [`RawCond::planned_text`] and [`RawCond::planned_double`] on PostgreSQL: literals
//! (escaped), so that the planner sees the value.

use diesel::backend::Backend;
use diesel::expression::{
    is_aggregate, AppearsOnTable, Expression, SelectableExpression, ValidGrouping,
};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{Bool, Double, Text};
use diesel::QueryResult;

use crate::conn::AnyBackend;

#[derive(Debug, Clone)]
enum Part {
    Sql(String),
    Text(String),
    Bool(bool),
    /// SQLite only: `scim_alive(<column>) AND ` (see `conn::deadline`)
    Alive(&'static str),
    /// SQL text that differs by database: (SQLite, PostgreSQL)
    PerBackend(&'static str, &'static str),
    /// a text value PostgreSQL plans for: an escaped literal there, bound on SQLite
    PlannedText(String),
    /// a number PostgreSQL plans for: a literal there, bound on SQLite
    PlannedDouble(f64),
}

/// A boolean condition: SQL text with bound parameters (and escaped literals, see
/// [`RawCond::planned_text`]).
#[derive(Debug, Clone, Default)]
pub struct RawCond {
    parts: Vec<Part>,
}

impl RawCond {
    /// Starts with SQL text.
    pub fn sql(text: &str) -> Self {
        RawCond {
            parts: vec![Part::Sql(text.to_string())],
        }
    }
    /// Appends SQL text (trusted: written in this crate, never from input).
    pub fn push(mut self, text: &str) -> Self {
        self.parts.push(Part::Sql(text.to_string()));
        self
    }
    /// Appends a bound text parameter.
    pub fn text(mut self, v: &str) -> Self {
        self.parts.push(Part::Text(v.to_string()));
        self
    }
    /// Appends a text value that PostgreSQL's planner should see, for comparisons whose best
    /// plan depends on it: its connections plan bound parameters generically
    /// (`plan_cache_mode = force_generic_plan`, for the statements kept prepared). A bound
    /// range is guessed to hold a third of the rows, so the creation order was walked instead
    /// of the range's index; every bound equality on the attribute-value index is guessed at
    /// the same few rows, so in `postalCode eq "<everyone's>" and phoneNumbers.value eq
    /// "<one>"` the common one could drive, probing the other once per resource. With the
    /// attribute path and the value written out, the statistics tell them apart. On
    /// PostgreSQL the value is written as an escape string (`E'…'`, quotes and backslashes
    /// doubled, the same whatever `standard_conforming_strings` says); on SQLite, and for a
    /// value holding U+0000 (which no PostgreSQL text holds), it is bound.
    pub fn planned_text(mut self, v: &str) -> Self {
        self.parts.push(Part::PlannedText(v.to_string()));
        self
    }
    /// Appends a number that PostgreSQL's planner should see, as [`Self::planned_text`]: a
    /// literal there (the shortest digits that read back as the same number), bound on SQLite.
    pub fn planned_double(mut self, v: f64) -> Self {
        self.parts.push(Part::PlannedDouble(v));
        self
    }
    /// Appends a bound boolean parameter.
    pub fn boolean(mut self, v: bool) -> Self {
        self.parts.push(Part::Bool(v));
        self
    }
    /// Appends a per-row check of the query deadline on `column` (an integer column of a table
    /// the scan visits), followed by `AND`: a scan this condition causes stops at the
    /// deadline. SQLite only; nothing on PostgreSQL, whose `statement_timeout` bounds every
    /// statement.
    pub fn alive(mut self, column: &'static str) -> Self {
        self.parts.push(Part::Alive(column));
        self
    }
    /// Appends SQL text that differs by database (trusted, as for [`Self::push`]).
    pub fn per_backend(mut self, sqlite: &'static str, postgres: &'static str) -> Self {
        self.parts.push(Part::PerBackend(sqlite, postgres));
        self
    }
    /// `(a SEP b SEP …)` of the conditions `each` makes of `terms`; `empty` when there are
    /// none (the neutral element of `SEP`).
    pub fn joined<T>(terms: &[T], sep: &str, empty: &str, each: impl Fn(&T) -> RawCond) -> Self {
        if terms.is_empty() {
            return RawCond::sql(empty);
        }
        let mut out = RawCond::sql("(");
        for (i, t) in terms.iter().enumerate() {
            if i > 0 {
                out = out.push(sep);
            }
            out = out.append(each(t));
        }
        out.push(")")
    }
    /// Appends another condition.
    pub fn append(mut self, other: RawCond) -> Self {
        self.parts.extend(other.parts);
        self
    }
}

/// The expression traits of a raw SQL expression (`$t`, of SQL type `$st`), selectable
/// anywhere; its SQL is its `QueryFragment`.
macro_rules! raw_expression {
    ($t:ty, $st:ty) => {
        impl Expression for $t {
            type SqlType = $st;
        }

        impl<QS> AppearsOnTable<QS> for $t {}

        impl<QS> SelectableExpression<QS> for $t {}

        impl<GB> ValidGrouping<GB> for $t {
            type IsAggregate = is_aggregate::Never;
        }

        impl QueryId for $t {
            type QueryId = ();
            const HAS_STATIC_QUERY_ID: bool = false;
        }
    };
}

raw_expression!(RawCond, Bool);

impl QueryFragment<AnyBackend> for RawCond {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, AnyBackend>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        for p in &self.parts {
            match p {
                Part::Sql(s) => out.push_sql(s),
                Part::Text(t) => out.push_bind_param::<Text, String>(t)?,
                Part::Bool(b) => out.push_bind_param::<Bool, bool>(b)?,
                Part::PlannedText(t) => match out.backend() {
                    AnyBackend::Postgres(_) if !t.contains('\0') => {
                        out.push_sql(&escape_string_literal(t))
                    }
                    _ => out.push_bind_param::<Text, String>(t)?,
                },
                Part::PlannedDouble(d) => match out.backend() {
                    AnyBackend::Postgres(_) if d.is_finite() => out.push_sql(&double_literal(*d)),
                    _ => out.push_bind_param::<Double, f64>(d)?,
                },
                Part::PerBackend(sqlite, pg) => match out.backend() {
                    AnyBackend::Sqlite(_) => out.push_sql(sqlite),
                    AnyBackend::Postgres(_) => out.push_sql(pg),
                },
                Part::Alive(column) => {
                    if matches!(out.backend(), AnyBackend::Sqlite(_)) {
                        out.push_sql("scim_alive(");
                        out.push_sql(column);
                        out.push_sql(") AND ");
                    }
                }
            }
        }
        Ok(())
    }
}

/// A [`RawCond`] that is a `BIGINT` instead of a condition (a count read on its own).
#[derive(Debug, Clone)]
pub struct RawCount(pub RawCond);

raw_expression!(RawCount, diesel::sql_types::BigInt);

impl QueryFragment<AnyBackend> for RawCount {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, AnyBackend>) -> QueryResult<()> {
        self.0.walk_ast(out)
    }
}

/// A PostgreSQL escape string literal (`E'…'`) holding `s`: inside one, a quote and a
/// backslash are the only characters with a meaning, and each is doubled. `s` holds no U+0000.
pub fn escape_string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A PostgreSQL `DOUBLE PRECISION` literal of the finite number `d`: the shortest digits that
/// read back as `d`, in Rust's exponent form (`{:e}`: `1.5e-7`, `-0e0`; no other characters).
pub fn double_literal(d: f64) -> String {
    format!("CAST('{d:e}' AS DOUBLE PRECISION)")
}

/// `EXISTS (SELECT 1 FROM group_members … WHERE member_id = <group>)`: whether the group whose
/// id is the column `C` is itself a member of a group (a nested group). Fixed SQL text, so a
/// statement selecting it stays prepared. Never `NULL`, also where `C` is (an outer join's
/// missing side): it is selectable wherever `C` appears.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
pub struct IsNested<C>(pub C);

impl<C> Expression for IsNested<C> {
    type SqlType = Bool;
}

impl<QS, C: AppearsOnTable<QS>> AppearsOnTable<QS> for IsNested<C> {}

impl<QS, C: AppearsOnTable<QS>> SelectableExpression<QS> for IsNested<C> {}

impl<GB, C> ValidGrouping<GB> for IsNested<C> {
    type IsAggregate = is_aggregate::Never;
}

impl<DB: Backend, C: QueryFragment<DB>> QueryFragment<DB> for IsNested<C> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("EXISTS (SELECT 1 FROM group_members nesting WHERE nesting.member_id = ");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(")");
        Ok(())
    }
}
