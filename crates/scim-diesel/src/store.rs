//! `impl ResourceStore` and `impl CredentialStore` over the pooled connections.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use scim_core::index::IndexRow;
use scim_core::store::{
    Column, CompareOp, CredentialStore, CursorKey, Detached, Document, ElementFilter, Include,
    IndexKeys, IndexedField, LinkSide, ListQuery, MemberOp, MemberRef, Page, PagedRead, PointKey,
    PointKeyBuf, ReadPart, ResourceRecord, ResourceStore, ResourceWrite, SecretChange, SortKey,
    SortTarget, StoreFilter, TokenCreate, TokenRead, TokenRecord, TokenUpdate, UnknownMembers,
    UpdateFn, ValueKind, ValueTest, Visit, WriteDone,
};
use scim_core::{ScimError, StoreError};

use crate::backend;
use crate::batch::{self, ReadBatcher};
use crate::combine;
use crate::conn::{run_migrations, AnyConnection, Backend, ConnectionManager};
use crate::group::{Checkpointer, GroupWriter};
use crate::inline::{self, Conn};
use crate::raw::{IsNested, RawCond};
use crate::schema::{group_members, resource_counts, resource_values, resources, tenants, tokens};
use crate::turns::Turns;

/// Largest number of ids bound in one statement (well under SQLite's and PostgreSQL's limits).
const CHUNK: usize = 500;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// database URL: `postgres://…`, or a SQLite file path (optionally `sqlite://path`)
    pub url: String,
    /// maximum pooled connections
    pub pool_size: u32,
    /// how long a request waits for a free connection
    pub connection_timeout: Duration,
    /// SQLite: how long a writer waits for the write lock
    pub busy_timeout: Duration,
    /// how long a filtered list may run in the database before it is cancelled and answered
    /// 400 `tooMany` (`None`: no limit). PostgreSQL: `statement_timeout` on every statement;
    /// SQLite: a per-row deadline check in the scans a filter can cause (see `conn::deadline`).
    pub query_timeout: Option<Duration>,
}

impl StoreConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            pool_size: 8,
            connection_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            query_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// The diesel-backed store.
#[derive(Clone)]
pub struct DieselStore {
    pool: r2d2::Pool<ConnectionManager>,
    backend: Backend,
    /// SQLite only: the one connection this process writes through, with group commit
    /// (see `group.rs`). Writers queue on it instead of sleep-polling SQLite's busy handler
    /// and share commits. SQLite's own lock still guarantees correctness across processes.
    writer: Option<Arc<GroupWriter>>,
    /// SQLite only: checkpoints the WAL in the background (see `group.rs`).
    _checkpointer: Option<Arc<Checkpointer>>,
    /// PostgreSQL only: refreshes planner statistics after bulk changes (see `note_writes`).
    analyze: Arc<AnalyzeState>,
    /// identity of the pool, for connections reserved on a thread (see `inline.rs`)
    id: u64,
    /// see [`StoreConfig::query_timeout`]
    query_timeout: Option<Duration>,
    /// PostgreSQL only: point reads of concurrent requests, read together (see `batch.rs`)
    reads: Option<Arc<ReadBatcher>>,
    /// PostgreSQL: creates of concurrent requests, inserted together (see `combine.rs`;
    /// unused on SQLite, whose writer thread shares commits instead)
    creates: Arc<combine::Combiner<CreateJob, TxError>>,
    /// SQLite only: updates of one resource take turns (see `turns.rs`)
    update_turns: Arc<Turns>,
    /// a pooled connection was found unusable: test the idle ones (see `conn::checkout`)
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// the attribute-value index was built with the fingerprint of the schemas that derive
    /// the writes' rows (see [`DieselStore::open_index`]): an update may take the rows of the
    /// document it replaces from [`ResourceWrite::previous_values`] instead of reading them
    pub(crate) index_trusted: Arc<std::sync::atomic::AtomicBool>,
    /// the fingerprint `open_index` matched, and when it was last compared with the
    /// database's (see `trusts_index`)
    index_watch: Arc<IndexWatch>,
    /// PostgreSQL: token lookups of concurrent requests, read together (see `find_token`)
    token_lookups: Arc<combine::Combiner<TokenJob, StoreError>>,
}

/// What a store checks, now and then, to notice another instance rebuilding the index with
/// other schemas (see `DieselStore::trusts_index`).
#[derive(Debug, Default)]
struct IndexWatch {
    fingerprint: std::sync::OnceLock<String>,
    /// milliseconds after `since` of the last comparison
    checked: std::sync::atomic::AtomicU64,
    since: std::sync::OnceLock<std::time::Instant>,
}

/// How often a store compares its index fingerprint with the database's (never in tests).
const INDEX_WATCH_INTERVAL: Duration = if cfg!(test) {
    Duration::ZERO
} else {
    Duration::from_secs(10)
};

/// What [`DieselStore::open_index`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexState {
    /// the index was built with this fingerprint
    Current,
    /// a database without resources: the fingerprint is recorded
    Recorded,
    /// the index was built with another fingerprint (`built_with`, `None` by a version that
    /// did not record it) and has been rebuilt for this one
    Rebuilt {
        /// the fingerprint it was built with
        built_with: Option<String>,
        /// resources whose rows were rebuilt
        resources: u64,
    },
    /// the index was built with another fingerprint and was left alone (`rebuild` was
    /// false): filters would search rows derived by other schemas until it is rebuilt
    Stale {
        /// the fingerprint it was built with
        built_with: Option<String>,
    },
}

/// The index rows of a stored document of a resource type (none for an unknown type).
pub type DeriveRows = Arc<
    dyn Fn(&str, &serde_json::Map<String, serde_json::Value>) -> Vec<scim_core::index::IndexRow>
        + Send
        + Sync,
>;

/// Resources whose index rows one transaction of [`DieselStore::open_index`] rebuilds (a
/// few in tests, so that they cross batches).
const REBUILD_BATCH: i64 = if cfg!(test) { 2 } else { 500 };

/// The `store_state` entry holding the index fingerprint.
const INDEX_FINGERPRINT: &str = "index_fingerprint";

/// The `store_state` entry naming (comma-separated) the resource types whose display names
/// are their unique names (see [`DieselStore::open_unique_display_names`]).
const UNIQUE_DISPLAY_NAMES: &str = "unique_display_names";

/// Keeps PostgreSQL's planner statistics fresh when autovacuum is off or lags behind a bulk
/// import: without statistics the planner can walk the order index instead of probing the
/// `userName` index, and a lookup becomes a scan. Mirrors autovacuum's rule (analyze after
/// changes to 10% of the rows, at least 500); also run when the index opens, for tables that
/// never had statistics, and after a rebuild of the index. Performance only; nothing depends
/// on it.
#[derive(Debug)]
struct AnalyzeState {
    since: std::sync::atomic::AtomicU64,
    threshold: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for DieselStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Errors worth a retry: lost connections, a database shutting down, SQLite lock timeouts.
fn is_transient(message: &str) -> bool {
    const MARKERS: &[&str] = &[
        "database is locked",
        "database is busy",
        "server closed the connection",
        "terminating connection",
        "connection to server",
        "could not connect",
        "no connection to the server",
        "the database system is shutting down",
        "the database system is starting up",
        "could not receive data",
        "could not send data",
        // the same over TLS (libpq's OpenSSL layer)
        "SSL SYSCALL error",
        "SSL connection has been closed unexpectedly",
    ];
    MARKERS.iter().any(|m| message.contains(m))
}

/// Whether a statement was cancelled for running past the query timeout.
fn timed_out(e: &DieselError) -> bool {
    match e {
        DieselError::DatabaseError(_, info) => {
            let m = info.message();
            m.contains(crate::conn::deadline::EXPIRED)
                || m.contains("canceling statement due to statement timeout")
        }
        _ => false,
    }
}

fn map_err(e: DieselError) -> StoreError {
    if timed_out(&e) {
        // The statement was cancelled; the connection is fine.
        return StoreError::Scim(ScimError::bad_request(
            scim_core::ScimType::TooMany,
            "The request took longer than the server's query timeout in the database and was \
             cancelled; narrow the filter (co and ew scan every value of their attribute)",
        ));
    }
    // Refusals of a statement leave the connection fine; anything else may not have.
    let statement_refused = matches!(
        &e,
        DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation
                | DatabaseErrorKind::RestrictViolation
                | DatabaseErrorKind::ExclusionViolation
                | DatabaseErrorKind::SerializationFailure
                | DatabaseErrorKind::ReadOnlyTransaction,
            _
        )
    );
    if !statement_refused
        && matches!(
            e,
            DieselError::DatabaseError(..) | DieselError::BrokenTransactionManager
        )
    {
        crate::conn::connection_failed();
    }
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            let what = if is_unique_name(info.as_ref()) {
                NAME_TAKEN.to_string()
            } else {
                "A resource with this value already exists".to_string()
            };
            StoreError::Conflict(what)
        }
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
            StoreError::Unavailable("the database connection was lost".into())
        }
        DieselError::DatabaseError(_, info) if is_transient(info.message()) => {
            StoreError::Unavailable("the database is unavailable or busy".into())
        }
        DieselError::BrokenTransactionManager => {
            StoreError::Unavailable("the database connection was lost".into())
        }
        other => StoreError::Backend(other.to_string()),
    }
}

/// A refusal of the unique-name index by a statement that did not say whose name it wrote
/// (the writes that do say: [`unique_name_refused`]).
const NAME_TAKEN: &str = "Another resource of this type already has this name";

/// Whether a unique violation is the unique-name index's (`resources_user_name`: SQLite names
/// its columns, PostgreSQL the constraint).
fn is_unique_name(info: &dyn diesel::result::DatabaseErrorInformation) -> bool {
    info.message().contains("user_name") || info.constraint_name() == Some("resources_user_name")
}

/// For the statement that writes a resource's key columns: the unique-name index refusing
/// `keys.unique_name` becomes a conflict naming the attribute it came from.
fn unique_name_refused<'a>(
    rt: &'a str,
    keys: &'a IndexKeys,
) -> impl Fn(DieselError) -> TxError + 'a {
    move |e| match &e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if is_unique_name(info.as_ref()) =>
        {
            TxError::Store(StoreError::Conflict(format!(
                "A {rt} with this {} already exists (names are compared case-insensitively)",
                keys.unique_attribute.unwrap_or("name")
            )))
        }
        _ => TxError::Db(e),
    }
}

/// Errors inside a transaction: database errors or SCIM refusals from callbacks.
#[derive(Debug)]
enum TxError {
    Db(DieselError),
    Store(StoreError),
}

impl From<DieselError> for TxError {
    fn from(e: DieselError) -> Self {
        TxError::Db(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<ScimError> for TxError {
    fn from(e: ScimError) -> Self {
        TxError::Store(StoreError::Scim(e))
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Db(e) => map_err(e),
            TxError::Store(e) => e,
        }
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = resources)]
struct Row {
    id: String,
    resource_type: String,
    version: i64,
    created: String,
    last_modified: String,
    external_id: Option<String>,
    data: String,
}

/// The columns of a [`Row`] as the plain tuple its `Selectable` derive builds (same fields,
/// same order), which `.nullable()` can wrap for the side of an outer join that may be
/// missing; `Row::as_select()` cannot be wrapped.
fn row_columns() -> <Row as Selectable<crate::conn::AnyBackend>>::SelectExpression {
    <Row as Selectable<crate::conn::AnyBackend>>::construct_selection()
}

impl Row {
    fn into_record(self) -> Result<ResourceRecord, StoreError> {
        let data = Document::from_stored(self.data)
            .map_err(|e| StoreError::Backend(format!("corrupt document of {}: {e}", self.id)))?;
        Ok(ResourceRecord {
            id: self.id,
            resource_type: self.resource_type,
            version: self.version,
            created: self.created,
            last_modified: self.last_modified,
            external_id: self.external_id,
            data,
            members: None,
            groups: None,
        })
    }
}

type BoxedCond<'a> = Box<
    dyn BoxableExpression<
            resources::table,
            crate::conn::AnyBackend,
            SqlType = diesel::sql_types::Bool,
        > + 'a,
>;

/// `NOT` in two-valued logic: `NOT COALESCE((c), FALSE)`. SQL compares a NULL column as
/// unknown and `NOT` keeps it unknown, so `not (externalId eq "x")` would leave out the
/// resources without an `externalId`; a filter compares as the in-memory evaluator does, where
/// a missing value equals nothing (RFC 7644 section 3.4.2.2: `ne` and `not` match it).
struct Negated<'a>(BoxedCond<'a>);

impl Expression for Negated<'_> {
    type SqlType = diesel::sql_types::Bool;
}

impl<QS> diesel::AppearsOnTable<QS> for Negated<'_> {}

impl<QS> diesel::SelectableExpression<QS> for Negated<'_> {}

impl<GB> diesel::expression::ValidGrouping<GB> for Negated<'_> {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl diesel::query_builder::QueryId for Negated<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::QueryFragment<crate::conn::AnyBackend> for Negated<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, crate::conn::AnyBackend>,
    ) -> QueryResult<()> {
        out.push_sql("NOT COALESCE((");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql("), FALSE)");
        Ok(())
    }
}

/// `SELECT <a>.resource_id FROM resource_values <a> WHERE …`: the ids of the resources with a
/// value at `path` that passes `test`, read from the `(tenant, type, path, value)` index;
/// `a` is the alias of the index row (`v`, or `e` for a row of an element).
fn value_ids(a: &'static str, tenant: &str, rt: &str, path: &str, test: &ValueTest) -> RawCond {
    let ordinal = if a == "e" { "e.ordinal" } else { "v.ordinal" };
    RawCond::sql(&format!(
        "SELECT {a}.resource_id FROM resource_values {a} WHERE "
    ))
    .alive(ordinal)
    .push(&format!("{a}.tenant_id = "))
    .text(tenant)
    .push(&format!(" AND {a}.resource_type = "))
    .text(rt)
    .push(&format!(" AND {a}.path = "))
    .planned_text(path)
    .push(" AND ")
    .append(value_test(a, test))
}

/// `resources.id IN (<ids>)`, or, for ids of a term known to be rare (see [`probe_terms`]),
/// `resources.id = ANY(ARRAY(<ids>))`: computed once (an init plan) and then looked up by id,
/// which the planner takes for a few rows, as they are, and starts from.
fn id_in(ids: RawCond, rare: bool) -> RawCond {
    match rare {
        true => RawCond::sql("resources.id = ANY(ARRAY(")
            .append(ids)
            .push("))"),
        false => RawCond::sql("resources.id IN (").append(ids).push(")"),
    }
}

/// What the store learned about a filter's terms before compiling it, on PostgreSQL (see
/// [`probe_terms`]); nothing on SQLite, whose planner keeps statistics per attribute.
#[derive(Default)]
struct Probed<'f> {
    /// value terms with at most [`RARE_MATCHES`] matches
    rare: Vec<&'f StoreFilter>,
    /// element filters whose anchor was chosen by counting what each candidate matches: the
    /// filter, its anchor, and whether that anchor has at most [`RARE_MATCHES`] matches
    anchors: Vec<(&'f StoreFilter, (&'f str, &'f ValueTest), bool)>,
}

impl<'f> Probed<'f> {
    /// Whether `f` is one of the rare value terms.
    fn is_rare(&self, f: &StoreFilter) -> bool {
        self.rare.iter().any(|t| std::ptr::eq(*t, f))
    }

    /// [`value_ids`] of `f` when it is a rare value term.
    fn rare_ids(&self, f: &StoreFilter, tenant: &str, rt: &str) -> Option<RawCond> {
        match f {
            StoreFilter::Value { path, test } if self.is_rare(f) => {
                Some(value_ids("v", tenant, rt, path, test))
            }
            _ => None,
        }
    }

    /// The anchor of the element filter `f` (`filter`), and whether it is rare.
    fn anchor<'a>(
        &'a self,
        f: &StoreFilter,
        filter: &'a ElementFilter,
    ) -> Option<((&'a str, &'a ValueTest), bool)> {
        match self.anchors.iter().find(|(e, _, _)| std::ptr::eq(*e, f)) {
            Some((_, anchor, rare)) => Some((*anchor, *rare)),
            None => filter.anchor().map(|a| (a, false)),
        }
    }
}

/// Most matches a term may have to be rare (see [`probe_terms`]).
const RARE_MATCHES: i64 = 1_000;

/// Most index probes [`probe_terms`] makes for one filter.
const MOST_PROBES: usize = 4;

/// PostgreSQL: counts, by reading at most [`RARE_MATCHES`] + 1 entries of the index for each,
/// what some terms of `f` (outside any `not`; at most [`MOST_PROBES`] of them) match:
///
/// - a value term with a range, `sw` or presence test: one with at most [`RARE_MATCHES`]
///   matches is compiled as the array of its ids (`= ANY(ARRAY(…))`), which the planner starts
///   from, and an `or` of such terms as one array;
/// - the candidate anchors of an element filter with more than one (see
///   [`ElementFilter::anchors`]), or a single one with such a test, in rank order: the first
///   rare one becomes the anchor, as an array, or, when none is, the one that matches least.
///   An equality on a `value` sub-attribute, ranked first, is taken without counting.
///
/// Equalities alone are not probed: their estimates come from the value's own statistics.
/// `ne`, `co` and `ew` read every value at the path whatever they match, and are never probed.
///
/// PostgreSQL keeps one histogram for the values of every attribute, so it cannot tell how
/// much of one attribute's values a range holds: it guessed `name.givenName lt "Given1"` (one
/// match among 20,000 users) at 8,000, and so walked the creation order for the first page,
/// probing every user (136 ms; 2.6 ms now). An element filter's anchor is chosen by rank,
/// equality first, so `addresses[locality eq "Springfield" and postalCode lt "1"]` read the
/// elements of everyone in Springfield. A term with many matches stays as it was: its first
/// page is found early in the walk.
fn probe_terms<'f>(
    conn: &mut AnyConnection,
    f: &'f StoreFilter,
    tenant: &str,
    rt: &str,
) -> QueryResult<Probed<'f>> {
    /// Whether PostgreSQL may misjudge what the test matches (and the index can count it).
    fn guessed(test: &ValueTest) -> bool {
        match test {
            ValueTest::Str(op, _) | ValueTest::Num(op, _) => !matches!(
                op,
                CompareOp::Eq | CompareOp::Ne | CompareOp::Co | CompareOp::Ew
            ),
            ValueTest::Present(_) => true,
            ValueTest::Bool(_) => false,
        }
    }
    fn visit<'f>(
        f: &'f StoreFilter,
        probe: &mut dyn FnMut(&str, &ValueTest) -> QueryResult<Option<i64>>,
        out: &mut Probed<'f>,
    ) -> QueryResult<()> {
        match f {
            StoreFilter::Value { path, test } if guessed(test) => {
                let matches = probe(path, test)?;
                if matches.is_some_and(|n| n <= RARE_MATCHES) {
                    out.rare.push(f);
                }
            }
            StoreFilter::Element { filter, .. } => {
                let candidates = filter.anchors();
                // An equality on a `value` (Entra ID's `emails[type eq "work"].value eq "x"`)
                // is taken without counting, as `anchor` ranks it: one value, one element.
                let value_eq = matches!(
                    candidates.first(),
                    Some((p, ValueTest::Str(CompareOp::Eq, _))) if p.ends_with(".value")
                );
                let worth =
                    candidates.len() > 1 || candidates.first().is_some_and(|(_, t)| guessed(t));
                if worth && !value_eq {
                    // In rank order, up to the first rare one; otherwise the least common.
                    let mut best: Option<((&'f str, &'f ValueTest), i64)> = None;
                    for (path, test) in candidates {
                        let Some(n) = probe(path, test)? else { break };
                        if best.is_none_or(|(_, m)| n < m) {
                            best = Some(((path, test), n));
                        }
                        if n <= RARE_MATCHES {
                            break;
                        }
                    }
                    if let Some((anchor, n)) = best {
                        out.anchors.push((f, anchor, n <= RARE_MATCHES));
                    }
                }
            }
            StoreFilter::And(terms) | StoreFilter::Or(terms) => {
                for t in terms {
                    visit(t, probe, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut probed = Probed::default();
    if !matches!(conn, AnyConnection::Postgres(_)) {
        return Ok(probed);
    }
    let mut left = MOST_PROBES;
    let mut probe = |path: &str, test: &ValueTest| -> QueryResult<Option<i64>> {
        if left == 0 {
            return Ok(None);
        }
        left -= 1;
        let count = RawCond::sql("(SELECT count(*) FROM (")
            .append(value_ids("v", tenant, rt, path, test))
            .push(&format!(" LIMIT {}) p)", RARE_MATCHES + 1));
        let query = diesel::select(crate::raw::RawCount(count));
        Ok(Some(query.get_result::<i64>(conn)?))
    };
    visit(f, &mut probe, &mut probed)?;
    Ok(probed)
}

/// Compiles a filter to a condition on `resources`, scoped to one tenant and resource type
/// (the index sub-queries name them so that they use the `(tenant, type, path, value)` index).
/// `probed` says which terms are matched as the array of their resources' ids, and which
/// anchor an element filter takes (see [`probe_terms`]).
fn condition<'a>(
    f: &'a StoreFilter,
    tenant: &'a str,
    rt: &'a str,
    probed: &Probed<'_>,
) -> BoxedCond<'a> {
    match f {
        StoreFilter::All => Box::new(diesel::dsl::sql::<diesel::sql_types::Bool>("1 = 1")),
        StoreFilter::Nothing => Box::new(diesel::dsl::sql::<diesel::sql_types::Bool>("1 = 0")),
        StoreFilter::Eq(IndexedField::Id, v) => Box::new(resources::id.eq(v.as_str())),
        StoreFilter::Eq(IndexedField::ExternalId, v) => {
            Box::new(resources::external_id.eq(v.as_str()).assume_not_null())
        }
        StoreFilter::Eq(IndexedField::UserName, v) => {
            Box::new(resources::user_name_ci.eq(v.as_str()).assume_not_null())
        }
        StoreFilter::Eq(IndexedField::DisplayName, v) => {
            Box::new(resources::display_name_ci.eq(v.as_str()).assume_not_null())
        }
        StoreFilter::Eq(_, _) => Box::new(diesel::dsl::sql::<diesel::sql_types::Bool>("1 = 0")),
        StoreFilter::Column(
            column @ (Column::UserName | Column::DisplayName),
            op @ (CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le),
            v,
        ) if !v.is_empty() => {
            // A one-sided range on a key column, as the set of ids its index range holds: so
            // written, both databases read the range and then the rows it names, as they do for
            // the attribute-value index. Written as a plain condition, they walked the whole
            // creation-order index instead (`userName gt "user99998"` at 100,000 users: 47 ms
            // on SQLite and 79 ms on PostgreSQL, against 1-2 ms). `pr` (`> ''`) matches most
            // resources and stays a plain condition.
            let col = match column {
                Column::UserName => "k.user_name_ci",
                _ => "k.display_name_ci",
            };
            Box::new(
                RawCond::sql("resources.id IN (SELECT k.id FROM resources k WHERE k.tenant_id = ")
                    .text(tenant)
                    .push(" AND k.resource_type = ")
                    .text(rt)
                    .push(" AND ")
                    .append(str_test(RawCond::sql(col), *op, v))
                    .push(")"),
            )
        }
        StoreFilter::Column(column, op, v) => Box::new(
            str_test(
                RawCond::sql("(")
                    .alive("resources.version")
                    .push(column_sql(*column)),
                *op,
                v,
            )
            .push(")"),
        ),
        StoreFilter::Value { path, test } => Box::new(id_in(
            value_ids("v", tenant, rt, path, test),
            probed.is_rare(f),
        )),
        StoreFilter::Element { paths, filter } => {
            // `e` is a row of the element, and the whole filter is checked on that element.
            // With an anchor test the elements are found from the index rows that pass it (an
            // index probe); without one, every resource's own rows at the attribute's paths
            // are visited (its primary key; a scan of the tenant's resources).
            let tested = |c: RawCond| c.push(" AND ").append(element_test(filter));
            match probed.anchor(f, filter) {
                Some(((p, t), rare)) => {
                    Box::new(id_in(tested(value_ids("e", tenant, rt, p, t)), rare))
                }
                None => Box::new(
                    tested(
                        RawCond::sql("EXISTS (SELECT 1 FROM resource_values e WHERE ")
                            .alive("e.ordinal")
                            .push("e.resource_id = resources.id AND e.path IN ")
                            .append(RawCond::joined(paths, ", ", "(NULL)", |p| {
                                RawCond::default().text(p)
                            })),
                    )
                    .push(")"),
                ),
            }
        }
        StoreFilter::Linked {
            side: LinkSide::Groups,
            linked_type,
            filter,
        } if !matches!(filter.as_ref(), StoreFilter::All) => Box::new(nested_groups_condition(
            filter,
            tenant,
            linked_type.as_deref(),
        )),
        StoreFilter::Linked {
            side,
            linked_type,
            filter,
        } => {
            // By id (`members eq "x"`, the IdPs' query): the membership table's own index
            // answers, without the linked resource's row.
            if let (LinkSide::Members, StoreFilter::Column(Column::Id, CompareOp::Eq, v)) =
                (side, filter.as_ref())
            {
                return Box::new(
                    resources::id.eq_any(
                        group_members::table
                            .select(group_members::group_id)
                            .filter(group_members::member_id.eq(v.as_str())),
                    ),
                );
            }
            // `l` is the linked resource: a member, or (`groups pr`: a resource in any group
            // is directly in one) a group.
            let (this_col, other_col) = match side {
                LinkSide::Groups => ("gm.member_id", "gm.group_id"),
                LinkSide::Members => ("gm.group_id", "gm.member_id"),
            };
            let mut cond = RawCond::sql(&format!(
                "resources.id IN (SELECT {this_col} FROM group_members gm JOIN resources l ON l.id = {other_col} WHERE "
            ))
            .alive("l.version")
            .push("l.tenant_id = ")
            .text(tenant);
            if let Some(t) = linked_type {
                cond = cond.push(" AND l.resource_type = ").text(t);
            }
            Box::new(
                cond.push(" AND ")
                    .append(linked_condition(filter, Kind::None))
                    .push(")"),
            )
        }
        StoreFilter::And(terms) => terms
            .iter()
            .map(|t| condition(t, tenant, rt, probed))
            .reduce(|a, b| Box::new(a.and(b)))
            .unwrap_or_else(|| condition(&StoreFilter::All, tenant, rt, probed)),
        StoreFilter::Or(terms) => {
            let all_rare: Option<Vec<RawCond>> = terms
                .iter()
                .map(|t| probed.rare_ids(t, tenant, rt))
                .collect();
            match all_rare {
                // Rare terms in one array: as an array each, the planner walked the order.
                Some(ids) if !ids.is_empty() => Box::new(id_in(
                    RawCond::joined(&ids, " UNION ALL ", "", Clone::clone),
                    true,
                )),
                _ => terms
                    .iter()
                    .map(|t| condition(t, tenant, rt, probed))
                    .reduce(|a, b| Box::new(a.or(b)))
                    .unwrap_or_else(|| condition(&StoreFilter::Nothing, tenant, rt, probed)),
            }
        }
        StoreFilter::Not(inner) => Box::new(Negated(condition(inner, tenant, rt, probed))),
    }
}

/// The resources in a group that passes `filter` (a [`StoreFilter::Linked`] on
/// [`LinkSide::Groups`]), directly or through groups nested in it, at any depth (RFC 7643
/// section 4.1.2: a User's `groups` lists both, typed `direct` and `indirect`).
///
/// `down(top, g)` pairs each group `top` that may pass with itself and every group reached
/// from it through nested groups; `UNION` keeps each pair once, so a cycle of groups ends. A
/// step follows only members that have members of their own (the rest cannot lead further),
/// so its cost is the reached groups' members, whatever else the tenant holds. Where `filter`
/// tests the membership's type, the seed tests everything else (each type test counts as
/// passed, or failed under a `not`: a superset), and the exact test runs on each link, whose
/// type is `direct` when the resource is a member of `top` itself.
fn nested_groups_condition(
    filter: &StoreFilter,
    tenant: &str,
    group_type: Option<&str>,
) -> RawCond {
    // PostgreSQL cannot estimate a recursive statement's rows and guesses thousands: it would
    // scan `resources` whole against them, or join with hashes built from whole tables. An
    // array is read once and probed by primary key, and `LATERAL (… OFFSET 0)` keeps each step
    // an index probe. SQLite probes in the order the tables are written with `CROSS JOIN`.
    let mut seed = RawCond::default()
        .per_backend("resources.id IN (", "resources.id = ANY(ARRAY(")
        .push("WITH RECURSIVE down(top, g) AS (SELECT l.id, l.id FROM resources l WHERE ")
        .alive("l.version")
        .push("l.tenant_id = ")
        .text(tenant);
    if let Some(t) = group_type {
        seed = seed.push(" AND l.resource_type = ").text(t);
    }
    let links = seed
        .push(" AND ")
        .append(linked_condition(filter, Kind::Relaxed { positive: true }))
        .push(" UNION SELECT down.top, n.member_id FROM down")
        .per_backend(
            " JOIN group_members n ON n.group_id = down.g WHERE ",
            " CROSS JOIN LATERAL (SELECT n.member_id FROM group_members n WHERE n.group_id = \
             down.g AND ",
        )
        .alive("0")
        .push("EXISTS (SELECT 1 FROM group_members x WHERE x.group_id = n.member_id)")
        .per_backend(")", " OFFSET 0) n)")
        .push(" SELECT gm.member_id FROM down")
        .per_backend(
            " CROSS JOIN group_members gm ON gm.group_id = down.g",
            " CROSS JOIN LATERAL (SELECT gm.member_id FROM group_members gm WHERE gm.group_id = \
             down.g OFFSET 0) gm",
        );
    let links = if tests_membership_type(filter) {
        links
            .push(" JOIN resources l ON l.id = down.top WHERE ")
            .append(linked_condition(filter, Kind::Exact(MEMBERSHIP_TYPE)))
    } else {
        // The seed's test was the exact one.
        links
    };
    links.per_backend(")", "))")
}

/// Whether a filter on a linked resource tests the membership's type.
fn tests_membership_type(f: &StoreFilter) -> bool {
    match f {
        StoreFilter::Column(Column::MembershipType, ..) => true,
        StoreFilter::And(t) | StoreFilter::Or(t) => t.iter().any(tests_membership_type),
        StoreFilter::Not(inner) => tests_membership_type(inner),
        _ => false,
    }
}

/// The type of the link from `gm.member_id` to `down.top` in [`nested_groups_condition`].
const MEMBERSHIP_TYPE: &str = "CASE WHEN EXISTS (SELECT 1 FROM group_members d WHERE d.group_id = down.top AND d.member_id = gm.member_id) THEN 'direct' ELSE 'indirect' END";

/// How [`linked_condition`] treats a test of the membership's type
/// ([`Column::MembershipType`]).
#[derive(Clone, Copy)]
enum Kind {
    /// it cannot occur (a filter on a group's members): no link passes it
    None,
    /// the SQL expression of the type
    Exact(&'static str),
    /// unknown yet: the test passes where it stands under an even number of `not`s
    /// (`positive`) and fails under an odd one, so the condition is a superset of the exact one
    Relaxed { positive: bool },
}

/// A filter on the linked resource `l` of a [`StoreFilter::Linked`]: the planner builds it
/// from `Column` tests on `id`, `displayName`, the display, the resource type and the
/// membership's type (`kind`), `All`, `Nothing`, `And`, `Or`, `Not`.
fn linked_condition(f: &StoreFilter, kind: Kind) -> RawCond {
    let join = |terms: &[StoreFilter], sep: &str, empty: &str| {
        RawCond::joined(terms, sep, empty, |t| linked_condition(t, kind))
    };
    let column = |c: Column| match c {
        Column::Id => Some("l.id"),
        Column::DisplayName => Some("l.display_name_ci"),
        Column::ResourceType => Some("l.resource_type"),
        // `display` is `displayName`, else `userName` (`index_keys`), both kept folded.
        Column::Display => Some("COALESCE(l.display_name_ci, l.user_name_ci)"),
        _ => None,
    };
    match f {
        StoreFilter::All => RawCond::sql("1 = 1"),
        StoreFilter::Nothing => RawCond::sql("1 = 0"),
        StoreFilter::Column(Column::MembershipType, op, v) => match kind {
            Kind::Exact(sql) => str_test(RawCond::sql("(").push(sql), *op, v).push(")"),
            Kind::Relaxed { positive: true } => RawCond::sql("1 = 1"),
            Kind::Relaxed { positive: false } | Kind::None => RawCond::sql("1 = 0"),
        },
        StoreFilter::Column(c, op, v) => match column(*c) {
            Some(col) => str_test(RawCond::sql("(").push(col), *op, v).push(")"),
            None => RawCond::sql("1 = 0"),
        },
        StoreFilter::And(t) => join(t, " AND ", "1 = 1"),
        StoreFilter::Or(t) => join(t, " OR ", "1 = 0"),
        StoreFilter::Not(inner) => {
            let flipped = match kind {
                Kind::Relaxed { positive } => Kind::Relaxed {
                    positive: !positive,
                },
                other => other,
            };
            RawCond::sql("NOT COALESCE((")
                .append(linked_condition(inner, flipped))
                .push("), FALSE)")
        }
        // Nothing else comes from the planner.
        _ => RawCond::sql("1 = 0"),
    }
}

/// The SQL name of a filterable column.
fn column_sql(c: Column) -> &'static str {
    match c {
        Column::Id => "resources.id",
        Column::ExternalId => "resources.external_id",
        Column::UserName => "resources.user_name_ci",
        Column::DisplayName => "resources.display_name_ci",
        Column::Created => "resources.created",
        Column::LastModified => "resources.last_modified",
        Column::ResourceType => "resources.resource_type",
        Column::Display => "COALESCE(resources.display_name_ci, resources.user_name_ci)",
        // Only inside a filter on a resource's groups (`linked_condition`).
        Column::MembershipType => "NULL",
    }
}

/// `LIKE` pattern of a literal: `%` `_` and `\` are escaped (with `ESCAPE '\'`).
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `<lhs> <op> ?` for text: bytewise comparison on both databases (SQLite BINARY, PostgreSQL
/// `COLLATE "C"`), and case-sensitive LIKE (SQLite runs with `case_sensitive_like`), since
/// values are already folded where the schema says caseExact is false.
fn str_test(lhs: RawCond, op: CompareOp, v: &str) -> RawCond {
    let (sql, arg) = match op {
        CompareOp::Eq => (" = ", v.to_string()),
        CompareOp::Ne => (" <> ", v.to_string()),
        CompareOp::Gt => (" > ", v.to_string()),
        CompareOp::Ge => (" >= ", v.to_string()),
        CompareOp::Lt => (" < ", v.to_string()),
        CompareOp::Le => (" <= ", v.to_string()),
        CompareOp::Sw => (" LIKE ", format!("{}%", like_literal(v))),
        CompareOp::Ew => (" LIKE ", format!("%{}", like_literal(v))),
        CompareOp::Co => (" LIKE ", format!("%{}%", like_literal(v))),
    };
    // Every operand is one the planner sees: a range's or a pattern's plan depends on it, and
    // so does an equality's once it is one of several terms (see `planned_text`).
    let cond = lhs.push(sql).planned_text(&arg);
    if matches!(op, CompareOp::Sw | CompareOp::Ew | CompareOp::Co) {
        cond.push(" ESCAPE '\\'")
    } else {
        cond
    }
}

/// A test on the index row aliased `alias`.
fn value_test(alias: &str, test: &ValueTest) -> RawCond {
    let col = |c: &str| RawCond::sql(&format!("{alias}.{c}"));
    match test {
        ValueTest::Str(op, v) => str_test(col("str_value"), *op, v),
        ValueTest::Num(op, n) => {
            let sql = match op {
                CompareOp::Gt => " > ",
                CompareOp::Ge => " >= ",
                CompareOp::Lt => " < ",
                CompareOp::Le => " <= ",
                CompareOp::Ne => " <> ",
                _ => " = ",
            };
            // As for text (see `str_test`).
            col("num_value").push(sql).planned_double(*n)
        }
        ValueTest::Bool(b) => col("bool_value").push(" = ").boolean(*b),
        // Each form implies its column is not NULL, so the partial indexes apply.
        ValueTest::Present(ValueKind::Str) => col("str_value").push(" > ''"),
        ValueTest::Present(ValueKind::Num) => col("num_value").push(" IS NOT NULL"),
        ValueTest::Present(ValueKind::Bool) => col("bool_value").push(" IS NOT NULL"),
    }
}

/// Tests on the element a row of which is aliased `e`: each test looks for a row of the same
/// resource and ordinal.
fn element_test(f: &ElementFilter) -> RawCond {
    let join = |terms: &[ElementFilter], sep: &str, empty: &str| {
        RawCond::joined(terms, sep, empty, element_test)
    };
    match f {
        ElementFilter::Test { path, test } => {
            RawCond::sql("EXISTS (SELECT 1 FROM resource_values v WHERE ")
                .alive("v.ordinal")
                .push("v.resource_id = e.resource_id AND v.ordinal = e.ordinal AND v.path = ")
                .text(path)
                .push(" AND ")
                .append(value_test("v", test))
                .push(")")
        }
        ElementFilter::And(t) => join(t, " AND ", "1 = 1"),
        ElementFilter::Or(t) => join(t, " OR ", "1 = 0"),
        ElementFilter::Not(inner) => RawCond::sql("NOT (").append(element_test(inner)).push(")"),
    }
}

/// Runs a statically typed query on the concrete connection instead of through
/// `AnyConnection`: diesel's multi-backend wrapper writes out the SQL text of every query to
/// find its prepared statement (a tenth of a point read's time), while on the concrete
/// connection a static query finds its statement by its type alone. The body is compiled once
/// per backend.
macro_rules! native {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            AnyConnection::Sqlite($c) => $body,
            AnyConnection::Postgres($c) => $body,
        }
    };
}

/// `column = value` within a tenant and type, as queries of a fixed shape (they stay prepared).
/// A unique column answers with one query: the page is every match.
macro_rules! lookup {
    ($conn:expr, $tenant:expr, $rt:expr, $col:expr, $value:expr, $query:expr, $unique:expr) => {{
        (|| -> QueryResult<(u64, Vec<Row>)> {
            let skip = $query.start_index.saturating_sub(1).min(i64::MAX as u64) as i64;
            let limit = $query.count.min(i64::MAX as u64) as i64;
            let filtered = resources::table
                .filter(resources::tenant_id.eq($tenant))
                .filter(resources::resource_type.eq($rt))
                .filter($col.eq($value));
            if $unique && skip == 0 && limit > 0 {
                // No LIMIT: the key is unique, and a bound LIMIT would make SQLite re-prepare
                // the statement on every call (see `load_row`).
                let rows: Vec<Row> =
                    native!(&mut *$conn, |c| filtered.select(Row::as_select()).load(c))?;
                Ok((rows.len() as u64, rows))
            } else if skip == 0 && limit > 0 {
                // The first page first (see `first_page_total`): the common lookup
                // (`externalId eq`, a group's `displayName eq`) is one statement.
                let rows: Vec<Row> = filtered
                    .select(Row::as_select())
                    .order((resources::created.asc(), resources::id.asc()))
                    .limit(limit)
                    .offset(skip)
                    .load($conn)?;
                let total = first_page_total(rows.len(), $query.count, || {
                    let n: i64 = filtered.select(count_star()).get_result($conn)?;
                    Ok(n.max(0) as u64)
                })?;
                Ok((total, rows))
            } else {
                let total: i64 = filtered.select(count_star()).get_result($conn)?;
                let rows: Vec<Row> = if limit > 0 && skip < total {
                    filtered
                        .select(Row::as_select())
                        .order((resources::created.asc(), resources::id.asc()))
                        .limit(limit)
                        .offset(skip)
                        .load($conn)?
                } else {
                    Vec::new()
                };
                Ok((total.max(0) as u64, rows))
            }
        })()
    }};
}

/// `totalResults` of a list whose first page (of at most `count` resources) holds `shown`:
/// a page that is not full holds every match, so its length is the total and `count_all` is
/// not run; a full one is counted after it, and the total is never less than what the page
/// shows, whatever was deleted in between.
fn first_page_total(
    shown: usize,
    count: u64,
    count_all: impl FnOnce() -> QueryResult<u64>,
) -> QueryResult<u64> {
    let shown = shown as u64;
    if shown < count {
        return Ok(shown);
    }
    Ok(count_all()?.max(shown))
}

diesel::alias!(resources as linked: Linked);

/// A resource pinned by a unique column, and with `$groups` the groups it is a direct member
/// of, in one statement whatever the outcome: the owner's row (a tenant, or a live token; the
/// one `$owner_filter` picks) left-joined to the resource in the owner's tenant
/// (`$owner_tenant`), then to its groups, one row per group in id order, each saying whether
/// it is nested in another group (see [`pinned_record`]). On PostgreSQL each statement is a
/// round trip, and a User read returns its `groups` by default.
/// `None`: no such owner; `Some((tenant, None))`: the owner, of that tenant, exists and
/// nothing matched.
macro_rules! one_pinned {
    ($conn:expr, $owner:expr, $owner_tenant:expr, $owner_filter:expr,
     $rt:expr, $col:expr, $value:expr, $groups:expr) => {{
        (|| -> QueryResult<Option<(String, Option<PinnedParts>)>> {
            let owned = $owner.left_join(
                resources::table.on(resources::tenant_id
                    .eq($owner_tenant)
                    // Owned: a bound value in the ON clause of a join that is joined again
                    // must be 'static to diesel.
                    .and(resources::resource_type.eq($rt.to_string()))
                    .and($col.eq($value.to_string()))),
            );
            if !$groups {
                // `get_result`, not `first`: see `load_row`.
                let row: Option<(String, Option<Row>)> = native!(&mut *$conn, |c| owned
                    .filter($owner_filter)
                    .select(($owner_tenant, row_columns().nullable()))
                    .get_result(c))
                .optional()?;
                return Ok(row.map(|(t, r)| (t, r.map(|r| (r, None, Vec::new())))));
            }
            let joined = owned
                .left_join(group_members::table.on(group_members::member_id.eq(resources::id)))
                .left_join(linked.on(linked.field(resources::id).eq(group_members::group_id)))
                .filter($owner_filter)
                .order(linked.field(resources::id).asc());
            let group = (
                linked.field(resources::id),
                linked.field(resources::resource_type),
                linked.field(resources::display),
            );
            let nested = IsNested(linked.field(resources::id));
            let rows: Vec<(
                String,
                Option<Row>,
                Option<(String, String, Option<String>)>,
                bool,
            )> = native!(&mut *$conn, |c| joined
                .select((
                    $owner_tenant,
                    row_columns().nullable(),
                    group.nullable(),
                    nested,
                ))
                .load(c))?;
            let mut rows = rows.into_iter();
            let Some((tenant, row, first, first_nested)) = rows.next() else {
                return Ok(None);
            };
            let found = row.map(|row| {
                let mut nested = Vec::new();
                let groups = std::iter::once((first, first_nested))
                    .chain(rows.map(|(_, _, g, n)| (g, n)))
                    .filter_map(|(g, n)| {
                        let g = g?;
                        if n {
                            nested.push(g.0.clone());
                        }
                        Some(g)
                    });
                (row, Some(member_refs(groups)), nested)
            });
            Ok(Some((tenant, found)))
        })()
    }};
}

/// Rows of [`many_by_token!`]: the key, the resource it matched, one of its groups and
/// whether that group is nested in another.
type ManyRow = (
    Option<String>,
    Option<Row>,
    Option<(String, String, Option<String>)>,
    bool,
);

/// PostgreSQL: the resources of one resource type whose `$col` is any of `$keys`, in the tenant
/// of the live token with hash `$hash`, with their groups when `$groups`, as one statement
/// (the point reads of many requests at once, see `batch.rs`). No row: no such token; one row
/// of `NULL`s: the token is live and nothing matched.
macro_rules! many_by_token {
    ($c:expr, $hash:expr, $rt:expr, $col:expr, $keys:expr, $groups:expr) => {{
        (|| -> QueryResult<Vec<ManyRow>> {
            let live = tokens::token_hash.eq($hash).and(tokens::revoked.is_null());
            let owned = tokens::table.left_join(
                resources::table.on(resources::tenant_id
                    .eq(tokens::tenant_id)
                    .and(resources::resource_type.eq($rt.to_string()))
                    .and($col.eq_any($keys))),
            );
            let columns = <Row as Selectable<diesel::pg::Pg>>::construct_selection().nullable();
            if !$groups {
                let rows: Vec<(Option<String>, Option<Row>)> = owned
                    .filter(live)
                    .select(($col.nullable(), columns))
                    .load($c)?;
                return Ok(rows.into_iter().map(|(k, r)| (k, r, None, false)).collect());
            }
            let group = (
                linked.field(resources::id),
                linked.field(resources::resource_type),
                linked.field(resources::display),
            );
            owned
                .left_join(group_members::table.on(group_members::member_id.eq(resources::id)))
                .left_join(linked.on(linked.field(resources::id).eq(group_members::group_id)))
                .filter(live)
                .order(($col.asc(), linked.field(resources::id).asc()))
                .select((
                    $col.nullable(),
                    columns,
                    group.nullable(),
                    IsNested(linked.field(resources::id)),
                ))
                .load($c)
        })()
    }};
}

/// The statement of a batch of point reads (see `batch.rs`).
fn read_many(
    conn: &mut AnyConnection,
    kind: &batch::Kind,
    keys: Vec<String>,
) -> Result<batch::Found, StoreError> {
    let AnyConnection::Postgres(c) = conn else {
        return Err(StoreError::Backend(
            "batched point reads are for PostgreSQL".into(),
        ));
    };
    let (hash, rt) = (kind.token_hash.as_str(), kind.resource_type.as_str());
    let rows = match kind.by_user_name {
        true => many_by_token!(c, hash, rt, resources::user_name_ci, keys, kind.groups),
        false => many_by_token!(c, hash, rt, resources::id, keys, kind.groups),
    }
    .map_err(map_err)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut found: HashMap<String, Box<ResourceRecord>> = HashMap::new();
    let mut nested: HashMap<String, Vec<String>> = HashMap::new();
    for (key, row, group, is_nested) in rows {
        let (Some(key), Some(row)) = (key, row) else {
            continue;
        };
        if let (true, Some(g)) = (is_nested, &group) {
            nested.entry(key.clone()).or_default().push(g.0.clone());
        }
        let rec = match found.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut rec = row.into_record()?;
                if kind.groups {
                    rec.groups = Some(Vec::new());
                }
                e.insert(Box::new(rec))
            }
        };
        if let (Some(groups), Some(g)) = (rec.groups.as_mut(), group) {
            groups.extend(member_refs(std::iter::once(g)));
        }
    }
    if !nested.is_empty() {
        let lists = found
            .iter_mut()
            .filter_map(|(key, rec)| Some((rec.groups.as_mut()?, nested.remove(key.as_str())?)));
        add_indirect_groups(conn, lists.collect()).map_err(map_err)?;
    }
    Ok(Some(found))
}

/// [`one_pinned!`] for a known tenant.
macro_rules! one_in_tenant {
    ($conn:expr, $tenant:expr, $rt:expr, $col:expr, $value:expr, $groups:expr) => {
        one_pinned!(
            $conn,
            tenants::table,
            tenants::id,
            tenants::id.eq($tenant),
            $rt,
            $col,
            $value,
            $groups
        )
    };
}

/// Member references from (id, type, display) rows.
fn member_refs(rows: impl Iterator<Item = (String, String, Option<String>)>) -> Vec<MemberRef> {
    rows.map(|(id, resource_type, display)| MemberRef {
        id,
        resource_type,
        display,
        indirect: false,
    })
    .collect()
}

/// A row and, when they were asked for, its direct groups and which of those are nested in
/// other groups, read by [`one_pinned!`].
type PinnedParts = (Row, Option<Vec<MemberRef>>, Vec<String>);

/// The record of what [`one_pinned!`] found; its groups completed with the ones it reaches
/// through nested groups (a second statement, only when a group of it is nested).
fn pinned_record(
    conn: &mut AnyConnection,
    parts: Option<PinnedParts>,
) -> Result<Option<ResourceRecord>, StoreError> {
    let Some((row, groups, nested)) = parts else {
        return Ok(None);
    };
    let mut rec = row.into_record()?;
    rec.groups = groups;
    if let Some(groups) = rec.groups.as_mut() {
        add_indirect_groups(conn, vec![(groups, nested)]).map_err(map_err)?;
    }
    Ok(Some(rec))
}

/// Adds to each list of a resource's groups, as `indirect`, the groups the resource belongs to
/// only through nesting: every group that holds, at any depth, one of the list's `nested`
/// groups (its direct groups that are members of a group themselves), unless the list has it
/// already ([`backend::ancestors`]: one statement on PostgreSQL, one per level of nesting on
/// SQLite); nothing runs when no group is nested.
fn add_indirect_groups(
    conn: &mut AnyConnection,
    lists: Vec<(&mut Vec<MemberRef>, Vec<String>)>,
) -> QueryResult<()> {
    let origins: BTreeSet<&str> = lists
        .iter()
        .flat_map(|(_, nested)| nested.iter().map(String::as_str))
        .collect();
    if origins.is_empty() {
        return Ok(());
    }
    let origins: Vec<&str> = origins.into_iter().collect();
    let mut above: HashMap<String, Vec<MemberRef>> = HashMap::new();
    for (origin, id, resource_type, display) in backend::ancestors(conn, &origins)? {
        above.entry(origin).or_default().push(MemberRef {
            id,
            resource_type,
            display,
            indirect: true,
        });
    }
    for (list, nested) in lists {
        let mut listed: HashSet<String> = list.iter().map(|m| m.id.clone()).collect();
        let mut indirect: Vec<MemberRef> = nested
            .iter()
            .filter_map(|n| above.get(n))
            .flatten()
            .filter(|m| listed.insert(m.id.clone()))
            .cloned()
            .collect();
        indirect.sort_by(|a, b| a.id.cmp(&b.id));
        list.extend(indirect);
    }
    Ok(())
}

/// Whether a read wants exactly the groups of what it reads (a User by default).
fn groups_only(include: Include) -> bool {
    include.groups && !include.members
}

/// Rows a list of membership operations may touch
fn ops_rows(ops: &[MemberOp]) -> u64 {
    ops.iter()
        .map(|op| match op {
            MemberOp::Add(ids) | MemberOp::Remove(ids) => ids.len() as u64,
            MemberOp::RemoveAll => 1,
        })
        .sum()
}

/// Settings of the one SQLite writer connection: a page cache of 8 MiB (the readers keep
/// SQLite's small default), statement journals in memory instead of a file, and a checkpoint
/// of its own only once the WAL holds 64,000 frames (256 MiB at 4 KiB pages).
///
/// The background [`Checkpointer`] copies WAL frames into the database while the writer
/// goes on, but SQLite starts the WAL over only when a write begins after everything in it
/// was copied, which a writer that never pauses never sees. Under sustained writes the WAL
/// therefore grows until this threshold, where the writer checkpoints (and `fsync`s the WAL
/// and the database) inside a commit, holding up every write queued behind it. At 16,000
/// frames that came every 1,100 creates or so, often enough to set the p99 of creates (24-28
/// ms against 7-8 ms at 64,000) and cost 7 % of their rate (docs/BENCHMARKS.md, a twentieth
/// machine). Readers are not slowed by the longer WAL: they skip the frames already copied.
///
/// The cache is no larger because a commit can cost a walk over all of it: when a B-tree
/// page splits, SQLite swaps page numbers through the number of the page that holds the lock
/// byte (page 262,145 at 4 KiB pages), far above the file's end, and the commit that follows
/// trims the cache above the file's end by visiting every cached page. With 32 MiB (8,192
/// pages) that walk was 18 % of the writer's time under PATCH load; with 8 MiB, PATCHes went
/// from 7,153 to 8,412/s and creates from 2,919 to 3,128/s at 20,000 users, with no loss at
/// 100,000 (docs/BENCHMARKS.md, a fourteenth machine).
const WRITER_PRAGMAS: &str =
    "PRAGMA cache_size = -8192; PRAGMA wal_autocheckpoint = 64000; PRAGMA temp_store = MEMORY;";

/// SQLite's planner statistics, written by the store instead of measured by `ANALYZE`.
///
/// Without statistics SQLite takes `tenant_id = ? AND resource_type = ?` for a selective
/// index and answers `emails.value eq "x"` by walking every resource of the tenant and probing
/// the sub-query's result for each (a scan, however rare the value); `ANALYZE` fixes that but
/// reads the whole database, and a sampled one (`analysis_limit`) misjudges the tenant columns
/// badly. The shape of the data is known, so the figures are written as ratios at the scale of
/// a million resources: one tenant holds everything, a path narrows an attribute to a
/// thirtieth of the index, a value to about three rows; `id` and `userName` are unique. The
/// planner compares plans by these ratios, so they serve a database of any size. Written on
/// every open, before any other connection reads the schema (a manual `ANALYZE` lasts until
/// the next start).
const SQLITE_PLANNER_STATS: &str = "BEGIN IMMEDIATE;
ANALYZE sqlite_schema;
DELETE FROM sqlite_stat1 WHERE tbl IN ('resources', 'resource_values', 'group_members');
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
 ('resources', 'sqlite_autoindex_resources_1', '1000000 1'),
 ('resources', 'resources_user_name', '1000000 1000000 500000 1'),
 ('resources', 'resources_external_id', '1000000 1000000 500000 1 1 1'),
 ('resources', 'resources_display_name', '1000000 1000000 500000 2 1 1'),
 ('resources', 'resources_order', '1000000 1000000 500000 1 1'),
 ('resource_values', 'resource_values', '30000000 30 2 1'),
 ('resource_values', 'resource_values_str', '28000000 28000000 14000000 1000000 3'),
 ('resource_values', 'resource_values_num', '1000000 1000000 500000 100000 2'),
 ('resource_values', 'resource_values_bool', '3000000 3000000 3000000 1000000 500000'),
 ('group_members', 'sqlite_autoindex_group_members_1', '10000000 1000 1'),
 ('group_members', 'group_members_member', '10000000 10 1');
COMMIT;";

/// Writes [`SQLITE_PLANNER_STATS`]; a failure only costs plans (another process may hold the
/// write lock), so it is logged, not returned.
fn write_planner_stats(conn: &mut AnyConnection) {
    if let Err(e) = conn.batch_execute(SQLITE_PLANNER_STATS) {
        log::warn!("could not write SQLite planner statistics: {e}");
        let _ = conn.batch_execute("ROLLBACK");
    }
}

impl DieselStore {
    /// Opens the pool. Does not run migrations (see [`DieselStore::migrate`]).
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let manager =
            ConnectionManager::new(&config.url, config.busy_timeout, config.query_timeout);
        let manager_for_writer = manager.clone();
        let lost = manager.lost_flag();
        let backend = manager.backend();
        if backend == Backend::Sqlite {
            // Before the pool opens a connection, so that every connection plans with them.
            let mut c = manager
                .establish()
                .map_err(|e| StoreError::Unavailable(format!("cannot open the database: {e}")))?;
            write_planner_stats(&mut c);
        }
        let pool = r2d2::Pool::builder()
            .max_size(config.pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(config.connection_timeout)
            .test_on_check_out(false)
            .build(manager)
            .map_err(|e| StoreError::Unavailable(format!("cannot open the database: {e}")))?;
        let writer = match backend {
            Backend::Sqlite => {
                let mut conn = manager_for_writer.establish().map_err(|e| {
                    StoreError::Unavailable(format!("cannot open the database: {e}"))
                })?;
                conn.batch_execute(WRITER_PRAGMAS).map_err(|e| {
                    StoreError::Unavailable(format!("cannot configure the writer: {e}"))
                })?;
                Some(Arc::new(GroupWriter::new(conn).map_err(|e| {
                    StoreError::Unavailable(format!("cannot start the writer thread: {e}"))
                })?))
            }
            Backend::Postgres => None,
        };
        let checkpointer = match backend {
            Backend::Sqlite => Some(Arc::new(Checkpointer::start(
                manager_for_writer.establish().map_err(|e| {
                    StoreError::Unavailable(format!("cannot open the database: {e}"))
                })?,
                Duration::from_millis(100),
            ))),
            Backend::Postgres => None,
        };
        let analyze = Arc::new(AnalyzeState {
            since: 0.into(),
            threshold: 500.into(),
            running: false.into(),
        });
        let reads = (backend == Backend::Postgres)
            .then(|| Arc::new(ReadBatcher::new(pool.clone(), lost.clone())));
        Ok(DieselStore {
            pool,
            backend,
            writer,
            _checkpointer: checkpointer,
            analyze,
            id: inline::next_store_id(),
            query_timeout: config.query_timeout,
            reads,
            creates: Arc::default(),
            update_turns: Arc::default(),
            lost,
            index_trusted: Arc::default(),
            index_watch: Arc::default(),
            // One lookup statement at a time: what queues behind it shares the next (two, as
            // for creates, shared half as much: 1.02 statements per create against 0.85).
            token_lookups: Arc::new(combine::Combiner::with_leaders(1)),
        })
    }

    /// Which database this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations; returns how many ran.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        // A migration may rebuild an index over every row: the query timeout is for requests.
        let timeout = |ms: u128| format!("SET statement_timeout = {ms}");
        let pg = self.backend == Backend::Postgres && self.query_timeout.is_some();
        if pg {
            conn.batch_execute(&timeout(0)).map_err(map_err)?;
        }
        let ran = run_migrations(&mut conn).map_err(StoreError::Backend);
        if let (true, Some(t)) = (pg, self.query_timeout) {
            conn.batch_execute(&timeout(t.as_millis()))
                .map_err(map_err)?;
        }
        if self.backend == Backend::Sqlite && ran.as_ref().is_ok_and(|n| *n > 0) {
            // A migration that rebuilt a table dropped its statistics; the other connections
            // reload them with the changed schema.
            write_planner_stats(&mut conn);
        }
        ran
    }

    /// Checks that the attribute-value index was built with `fingerprint`
    /// ([`scim_core::index::fingerprint`] of the schemas the caller derives rows with), and
    /// rebuilds it from the stored documents with `derive` when it was not and `rebuild` is
    /// set. Filters search these rows, so rows built by other schemas (an extension added,
    /// removed or edited, an attribute's `caseExact` flipped) or by an older version of the
    /// derivation would miss or find the wrong resources.
    ///
    /// The rebuild runs in transactions of `REBUILD_BATCH` resources in id order, each
    /// replacing the rows of the resources it reads (locked on PostgreSQL, so a write by
    /// another instance waits or comes after); the fingerprint is recorded after the last
    /// one, so an interrupted rebuild starts again. Other instances writing meanwhile with
    /// other schemas write rows by those: every instance on one database must run with the
    /// same schemas.
    ///
    /// Once the index matches (`Current`, `Recorded`, `Rebuilt`), updates take the rows of
    /// the document they replace from [`ResourceWrite::previous_values`] when the caller
    /// derived them, instead of reading them.
    pub fn open_index(
        &self,
        fingerprint: &str,
        rebuild: bool,
        derive: DeriveRows,
    ) -> Result<IndexState, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let built_with = self.index_fingerprint()?;
        let state = if built_with.as_deref() == Some(fingerprint) {
            IndexState::Current
        } else if built_with.is_none() && !self.has_resources()? {
            self.record_fingerprint(fingerprint)?;
            IndexState::Recorded
        } else if rebuild {
            let resources = self.rebuild_index(derive)?;
            self.record_fingerprint(fingerprint)?;
            IndexState::Rebuilt {
                built_with,
                resources,
            }
        } else {
            return Ok(IndexState::Stale { built_with });
        };
        let _ = self.index_watch.fingerprint.set(fingerprint.to_string());
        let _ = self.index_watch.since.set(std::time::Instant::now());
        self.index_trusted.store(true, Relaxed);
        // Statistics for tables that never had any; after a rebuild, for all of them (every
        // index row was written anew).
        self.start_analyze(!matches!(state, IndexState::Rebuilt { .. }));
        Ok(state)
    }

    /// The fingerprint the attribute-value index was built with (`None`: not recorded).
    pub fn index_fingerprint(&self) -> Result<Option<String>, StoreError> {
        recorded_fingerprint(&mut *self.conn()?).map_err(map_err)
    }

    fn record_fingerprint(&self, fingerprint: &str) -> Result<(), StoreError> {
        let value = fingerprint.to_string();
        self.write(move |c| Ok(set_state(c, INDEX_FINGERPRINT, &value)?))
            .map_err(StoreError::from)
    }

    /// Makes the stored unique names match `resource_types`, the types whose schema declares
    /// `displayName` unique (`SchemaRegistry::with_unique_display_names`): the unique name of
    /// a resource is kept in the column that holds a user's folded `userName`, under the
    /// same unique index, so that the database refuses a second resource of one name
    /// whichever instance writes it. A type newly named gets its resources' folded display
    /// names as their unique names, in one transaction, refused (with
    /// [`StoreError::Conflict`] naming a few) when resources of one tenant already share
    /// one; a type no longer named loses them. What was done is recorded in `store_state`,
    /// so a start with the same types changes nothing. Returns how many resources changed.
    ///
    /// Without `apply` nothing is written: `Ok(None)` when the recorded types differ (the
    /// caller stops, as a start without migrations does for a stale attribute index).
    ///
    /// Instances that write with other settings write names by theirs: every instance on one
    /// database must run with the same types.
    pub fn open_unique_display_names(
        &self,
        resource_types: &[String],
        apply: bool,
    ) -> Result<Option<u64>, StoreError> {
        let wanted: BTreeSet<String> = resource_types.iter().cloned().collect();
        self.write(move |c| {
            let recorded: BTreeSet<String> = state(c, UNIQUE_DISPLAY_NAMES)?
                .iter()
                .flat_map(|v| v.split(','))
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
            if recorded == wanted {
                return Ok(Some(0));
            }
            if !apply {
                return Ok(None);
            }
            let added: Vec<&String> = wanted.difference(&recorded).collect();
            let dropped: Vec<&String> = recorded.difference(&wanted).collect();
            // Every refusal comes before the first write (see `GroupWriter`).
            if !added.is_empty() {
                let query = resources::table
                    .filter(resources::resource_type.eq_any(&added))
                    .filter(resources::display_name_ci.is_not_null())
                    .group_by((
                        resources::tenant_id,
                        resources::resource_type,
                        resources::display_name_ci,
                    ))
                    .having(count_star().gt(1))
                    .select((
                        resources::resource_type,
                        resources::display_name_ci,
                        count_star(),
                    ))
                    .limit(5);
                let shared: Vec<(String, Option<String>, i64)> =
                    native!(&mut *c, |c| query.load(c))?;
                if !shared.is_empty() {
                    let names: Vec<String> = shared
                        .iter()
                        .map(|(rt, name, n)| {
                            format!(
                                "{n} {rt} resources named {:?}",
                                name.as_deref().unwrap_or("")
                            )
                        })
                        .collect();
                    return Err(StoreError::Conflict(format!(
                        "display names are not unique yet (case-insensitively, in one tenant): \
                         {}{}",
                        names.join(", "),
                        if shared.len() == 5 { ", …" } else { "" }
                    ))
                    .into());
                }
            }
            let mut changed = 0;
            if !dropped.is_empty() {
                let rows = resources::table
                    .filter(resources::resource_type.eq_any(&dropped))
                    .filter(resources::user_name_ci.is_not_null());
                let update = diesel::update(rows).set(resources::user_name_ci.eq(None::<String>));
                changed += native!(&mut *c, |c| update.execute(c))?;
            }
            if !added.is_empty() {
                let rows = resources::table
                    .filter(resources::resource_type.eq_any(&added))
                    .filter(resources::user_name_ci.is_null())
                    .filter(resources::display_name_ci.is_not_null());
                let update = diesel::update(rows)
                    .set(resources::user_name_ci.eq(resources::display_name_ci));
                changed += native!(&mut *c, |c| update.execute(c))?;
            }
            let value = wanted.iter().cloned().collect::<Vec<_>>().join(",");
            set_state(c, UNIQUE_DISPLAY_NAMES, &value)?;
            Ok(Some(changed as u64))
        })
        .map_err(StoreError::from)
    }

    fn has_resources(&self) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let query = resources::table.select(resources::id).limit(1);
        let any: Vec<String> = native!(&mut *conn, |c| query.load(c)).map_err(map_err)?;
        Ok(!any.is_empty())
    }

    /// Replaces the index rows of every resource by the rows `derive` makes of its document;
    /// returns how many resources it read.
    fn rebuild_index(&self, derive: DeriveRows) -> Result<u64, StoreError> {
        let mut after = String::new();
        let mut done = 0u64;
        loop {
            let (from, derive) = (after.clone(), derive.clone());
            let batch = self
                .write(move |c| rebuild_batch(c, &from, &derive))
                .map_err(StoreError::from)?;
            let Some((last, n)) = batch else {
                return Ok(done);
            };
            done += n;
            after = last;
            if done % 50_000 < n {
                log::info!("rebuilding the attribute index: {done} resources so far");
            }
        }
    }

    /// Counts row changes and, on PostgreSQL, starts a background `ANALYZE` when enough
    /// accumulated (see [`AnalyzeState`]).
    fn note_writes(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.backend != Backend::Postgres {
            return;
        }
        let since = self.analyze.since.fetch_add(n, Relaxed) + n;
        if since >= self.analyze.threshold.load(Relaxed) {
            self.start_analyze(false);
        }
    }

    /// PostgreSQL: starts a background `ANALYZE` of the tables filters and lookups are planned
    /// on, unless one is running; with `unanalyzed_only`, of those that never had statistics
    /// (a database from before this table was analyzed, with autovacuum off). Then sets the
    /// next threshold from the row count.
    fn start_analyze(&self, unanalyzed_only: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.backend != Backend::Postgres || self.analyze.running.swap(true, Relaxed) {
            return;
        }
        self.analyze.since.store(0, Relaxed);
        let (pool, state) = (self.pool.clone(), self.analyze.clone());
        std::thread::spawn(move || {
            if let Ok(mut conn) = pool.get() {
                match analyze_tables(&mut conn, unanalyzed_only) {
                    Ok(rows) => {
                        let next = (rows * 0.1) as u64;
                        state.threshold.store(next.max(500), Relaxed);
                    }
                    Err(e) => log::warn!("background ANALYZE failed: {e}"),
                }
            }
            state.running.store(false, Relaxed);
        });
    }

    /// Runs a write transaction: through the group writer on SQLite, on a pooled connection
    /// in its own transaction on PostgreSQL.
    fn write<T: Send + 'static>(
        &self,
        body: impl FnOnce(&mut AnyConnection) -> Result<T, TxError> + Send + 'static,
    ) -> Result<T, TxError> {
        match &self.writer {
            Some(w) => w.run(body),
            None => {
                let mut conn = self.conn()?;
                // Rows are locked as they are read (`load_row_for_update`);
                // versions are checked by conditional updates.
                (*conn).transaction(body)
            }
        }
    }

    /// SQLite: prepares an update before it takes the writer, from the last committed row read
    /// on a reader connection, so that parsing the document, applying the change, computing
    /// its index rows and hashing a password run beside other writes instead of inside the one
    /// writer every write of the database waits for. The writer then only compares versions
    /// (see `update`): if another write got there first, the plan is handed back and made
    /// again here. Errors are the update's own (no such row, an `If-Match` that differs,
    /// `update` refused) or no reader connection within the pool's timeout.
    ///
    /// The resource's attribute-index rows are known here too, so that the writer only writes
    /// the ones that changed: derived by the caller from the document read when the index
    /// matches its schemas (see [`DieselStore::open_index`]), else read after the row. They
    /// belong to the version read: every change to them bumps the version in the same
    /// transaction, so if the writer still finds that version, nothing was committed to them
    /// since (rows read later than the row are never older).
    fn prepare_outside_writer(
        &self,
        tenant: &str,
        rt: &str,
        id: &str,
        if_match: Option<i64>,
        update: &mut UpdateFn<'_>,
    ) -> Result<UpdatePlan, TxError> {
        let mut conn = self.conn()?;
        self.plan_update(&mut conn, (tenant, rt, id), false, if_match, update)
    }

    /// An update's plan from the row as `conn` reads it now; `lock`: the row is locked as it
    /// is read (`FOR UPDATE`, inside the caller's transaction).
    fn plan_update(
        &self,
        conn: &mut AnyConnection,
        (tenant, rt, id): (&str, &str, &str),
        lock: bool,
        if_match: Option<i64>,
        update: &mut UpdateFn<'_>,
    ) -> Result<UpdatePlan, TxError> {
        let (current, write) = prepare_update(conn, (tenant, rt, id), lock, if_match, update)?;
        self.plan(conn, current, write)
    }

    /// The plan of writing `write` over `current`.
    fn plan(
        &self,
        conn: &mut AnyConnection,
        current: ResourceRecord,
        mut write: ResourceWrite,
    ) -> Result<UpdatePlan, TxError> {
        let trusted = self.trusts_index(conn);
        let stored = old_values(conn, &current.id, &mut write, trusted)?;
        Ok(UpdatePlan::new(current, write, stored)?)
    }

    /// Whether updates may take the replaced document's rows from the write. Every
    /// [`INDEX_WATCH_INTERVAL`] one caller compares the fingerprint `open_index` matched with
    /// the database's, on its own connection: when another instance has rebuilt the index
    /// for other schemas since, this one reads the stored rows from then on (its diffs stay
    /// right) and says, once, that its schemas differ.
    fn trusts_index(&self, conn: &mut AnyConnection) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.index_trusted.load(Relaxed) {
            return false;
        }
        let watch = &self.index_watch;
        let (Some(expected), Some(since)) = (watch.fingerprint.get(), watch.since.get()) else {
            return true;
        };
        let now = since.elapsed().as_millis() as u64;
        let last = watch.checked.load(Relaxed);
        let due = now.saturating_sub(last) >= INDEX_WATCH_INTERVAL.as_millis() as u64;
        if !due
            || watch
                .checked
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            return true;
        }
        match recorded_fingerprint(conn) {
            Ok(Some(found)) if found == *expected => true,
            Ok(found) => {
                let found = found.as_deref().unwrap_or("not recorded");
                if self.index_trusted.swap(false, Relaxed) {
                    log::error!(
                        "another instance rebuilt the attribute index for other schemas \
                         (index {found}, this instance {expected}): restart this instance \
                         with the same SCIM_SCHEMA_EXTENSIONS as the others"
                    );
                }
                false
            }
            // not readable now (the statement failed): the next caller tries again
            Err(_) => true,
        }
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(reserved) = inline::take_reserved(self.id) {
            return Ok(reserved);
        }
        crate::conn::checkout(&self.pool, &self.lost)
            .map(Conn::Pooled)
            .map_err(|e| StoreError::Unavailable(format!("no database connection available: {e}")))
    }

    /// A raw connection, for tests and administration.
    pub fn connection(
        &self,
    ) -> Result<impl std::ops::DerefMut<Target = AnyConnection>, StoreError> {
        self.conn()
    }
}

/// One resource by id.
///
/// Single-row reads use `get_result`, never `first`: `first` adds a bound `LIMIT 1`, and SQLite
/// (3.47 and later) plans a bound `LIMIT` by its value, so re-binding it expires the statement and
/// every call pays a full re-prepare (a quarter of the server's time under lookups).
fn load_row(
    conn: &mut AnyConnection,
    tenant: &str,
    rt: &str,
    id: &str,
) -> QueryResult<Option<Row>> {
    let query = resources::table
        .filter(resources::tenant_id.eq(tenant))
        .filter(resources::resource_type.eq(rt))
        .filter(resources::id.eq(id));
    native!(conn, |c| query.select(Row::as_select()).get_result(c)).optional()
}

/// [`load_row`] for an update, in its transaction. On PostgreSQL the row is locked by the
/// statement that reads it (`FOR UPDATE`): the read-modify-write holds the row from the moment
/// it has read it, and reads the newest committed version once a concurrent writer lets go,
/// in one statement instead of a lock and a read. SQLite's one writer serialises updates.
fn load_row_for_update(
    conn: &mut AnyConnection,
    tenant: &str,
    rt: &str,
    id: &str,
) -> QueryResult<Option<Row>> {
    match conn {
        AnyConnection::Sqlite(_) => load_row(conn, tenant, rt, id),
        AnyConnection::Postgres(c) => resources::table
            .filter(resources::tenant_id.eq(tenant))
            .filter(resources::resource_type.eq(rt))
            .filter(resources::id.eq(id))
            .select(Row::as_select())
            .for_update()
            .get_result(c)
            .optional(),
    }
}

/// An update's write computed from the resource as `conn` sees it now, with `If-Match` checked.
fn prepare_update(
    conn: &mut AnyConnection,
    (tenant, rt, id): (&str, &str, &str),
    lock: bool,
    if_match: Option<i64>,
    update: &mut UpdateFn<'_>,
) -> Result<(ResourceRecord, ResourceWrite), TxError> {
    let row = match lock {
        true => load_row_for_update(conn, tenant, rt, id)?,
        false => load_row(conn, tenant, rt, id)?,
    };
    let row = row.ok_or(StoreError::NotFound)?;
    update_from(row.into_record()?, if_match, update)
}

/// An update's write computed from `current`, with `If-Match` checked first.
fn update_from(
    current: ResourceRecord,
    if_match: Option<i64>,
    update: &mut UpdateFn<'_>,
) -> Result<(ResourceRecord, ResourceWrite), TxError> {
    if if_match.is_some_and(|v| v != current.version) {
        return Err(StoreError::VersionMismatch.into());
    }
    let write = update(&current)?;
    Ok((current, write))
}

/// The stored version of one resource (`None`: no such resource).
fn version_of(
    conn: &mut AnyConnection,
    tenant: &str,
    rt: &str,
    id: &str,
) -> QueryResult<Option<i64>> {
    let query = resources::table
        .filter(resources::tenant_id.eq(tenant))
        .filter(resources::resource_type.eq(rt))
        .filter(resources::id.eq(id));
    // `get_result`, not `first`: see `load_row`.
    native!(conn, |c| query.select(resources::version).get_result(c)).optional()
}

/// Which end of `group_members` a read starts from.
#[derive(Clone, Copy)]
enum Side {
    /// the ids are groups; read their direct members
    Members,
    /// the ids are any resources; read the groups they are direct members of
    Groups,
}

/// For each id, the resources at the other end of its memberships, with display names, in
/// id order. One query per chunk of ids; a single id (a GET) uses a fixed-shape query that
/// stays prepared. [`Side::Groups`]: then the groups reached through nested groups, as
/// `indirect`, after the direct ones (see [`add_indirect_groups`]).
fn read_links(
    conn: &mut AnyConnection,
    ids: &[&str],
    side: Side,
) -> QueryResult<HashMap<String, Vec<MemberRef>>> {
    macro_rules! links {
        ($chunk:expr, $key:expr, $other:expr, $nested:expr) => {{
            let joined =
                group_members::table.inner_join(resources::table.on(resources::id.eq($other)));
            let columns = (
                $key,
                resources::id,
                resources::resource_type,
                resources::display,
                $nested,
            );
            let order = ($key, resources::id);
            match $chunk {
                [one] => {
                    let query = joined.filter($key.eq(*one)).select(columns).order(order);
                    native!(&mut *conn, |c| query.load(c))?
                }
                many => joined
                    .filter($key.eq_any(many))
                    .select(columns)
                    .order(order)
                    .load(conn)?,
            }
        }};
    }
    let mut out: HashMap<String, Vec<MemberRef>> = HashMap::new();
    let mut nested: HashMap<String, Vec<String>> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<(String, String, String, Option<String>, bool)> = match side {
            Side::Members => links!(
                chunk,
                group_members::group_id,
                group_members::member_id,
                // a group's members are never asked about nesting
                false.into_sql::<diesel::sql_types::Bool>()
            ),
            Side::Groups => links!(
                chunk,
                group_members::member_id,
                group_members::group_id,
                IsNested(resources::id)
            ),
        };
        for (key, id, resource_type, display, is_nested) in rows {
            if is_nested {
                nested.entry(key.clone()).or_default().push(id.clone());
            }
            out.entry(key).or_default().push(MemberRef {
                id,
                resource_type,
                display,
                indirect: false,
            });
        }
    }
    if !nested.is_empty() {
        let lists = out
            .iter_mut()
            .filter_map(|(key, list)| Some((list, nested.remove(key.as_str())?)));
        add_indirect_groups(conn, lists.collect())?;
    }
    Ok(out)
}

/// The direct members of one group in id order, if it has at most `limit`; reads at most
/// `limit + 1` rows whatever the group's size.
fn members_up_to(
    conn: &mut AnyConnection,
    group: &str,
    limit: u32,
) -> QueryResult<Option<Vec<MemberRef>>> {
    let rows: Vec<(String, String, Option<String>)> = group_members::table
        .inner_join(resources::table.on(resources::id.eq(group_members::member_id)))
        .filter(group_members::group_id.eq(group))
        .select((resources::id, resources::resource_type, resources::display))
        .order(resources::id)
        .limit(i64::from(limit) + 1)
        .load(conn)?;
    Ok((rows.len() <= limit as usize).then(|| member_refs(rows.into_iter())))
}

/// [`ResourceStore::list`] on `conn`; `in_snapshot`: the caller's transaction already reads
/// one snapshot (see [`backend::consistent_reads`]), so no transaction of its own is begun.
pub(crate) fn list_on(
    conn: &mut AnyConnection,
    tenant: &str,
    rt: &str,
    query: &ListQuery,
    in_snapshot: bool,
) -> Result<Page, StoreError> {
    if let (StoreFilter::Eq(field, value), None, None) = (&query.filter, &query.sort, &query.after)
    {
        // The lookups identity providers send all the time, as statically typed queries
        // that the statement cache keeps prepared (built-up queries are prepared per call).
        let c: &mut AnyConnection = &mut *conn;
        let v = value.as_str();
        // A unique key pins at most one resource: its first page is all of it.
        let first_page = query.start_index <= 1 && query.count > 0;
        let one = match field {
            _ if !(first_page && groups_only(query.include)) => None,
            IndexedField::Id => Some(one_in_tenant!(c, tenant, rt, resources::id, v, true)),
            IndexedField::UserName => Some(one_in_tenant!(
                c,
                tenant,
                rt,
                resources::user_name_ci,
                v,
                true
            )),
            _ => None,
        };
        if let Some(one) = one {
            let found = pinned_record(c, one.map_err(map_err)?.and_then(|(_, f)| f))?;
            let resources: Vec<ResourceRecord> = found.into_iter().collect();
            return Ok(Page {
                total: resources.len() as u64,
                resources,
            });
        }
        let found = match field {
            IndexedField::Id => Some(lookup!(c, tenant, rt, resources::id, v, query, true)),
            IndexedField::UserName => Some(lookup!(
                c,
                tenant,
                rt,
                resources::user_name_ci,
                v,
                query,
                true
            )),
            IndexedField::ExternalId => Some(lookup!(
                c,
                tenant,
                rt,
                resources::external_id,
                v,
                query,
                false
            )),
            IndexedField::DisplayName => Some(lookup!(
                c,
                tenant,
                rt,
                resources::display_name_ci,
                v,
                query,
                false
            )),
            _ => None, // a field added later takes the general path below
        };
        if let Some(found) = found {
            let (total, rows) = found.map_err(map_err)?;
            let mut records: Vec<ResourceRecord> = rows
                .into_iter()
                .map(Row::into_record)
                .collect::<Result<_, _>>()?;
            fill_includes(conn, &mut records, query.include).map_err(map_err)?;
            return Ok(Page {
                total,
                resources: records,
            });
        }
    }
    let probed = probe_terms(conn, &query.filter, tenant, rt).map_err(map_err)?;
    let base = || {
        resources::table
            .filter(resources::tenant_id.eq(tenant))
            .filter(resources::resource_type.eq(rt))
            .filter(condition(&query.filter, tenant, rt, &probed))
            .into_boxed::<crate::conn::AnyBackend>()
    };
    let unique = query.filter.pins_one_row();
    // `far_end`: read the order reversed from its last row (`offset` then counts from the
    // end); the caller puts the rows back in order.
    let load_page = |conn: &mut AnyConnection,
                     offset: u64,
                     limit: u64,
                     far_end: bool|
     -> QueryResult<Vec<Row>> {
        let mut page = base().select(Row::as_select());
        let backward = query.after.as_ref().is_some_and(|a| a.backward);
        let user_name_position = match (&query.after, &query.sort) {
            (
                Some(CursorKey { key: Some(k), .. }),
                Some(SortKey {
                    target: SortTarget::Column(Column::UserName),
                    descending,
                }),
            ) => Some((k, *descending)),
            _ => None,
        };
        if let Some((k, descending)) = user_name_position {
            // A walk in userName order: strictly past the last userName seen, in the
            // direction of reading; one seek into the unique userName index.
            let cmp = if descending != backward { " < " } else { " > " };
            page = page.filter(RawCond::sql("resources.user_name_ci").push(cmp).text(k));
        } else if let Some(after) = &query.after {
            // Cursor paging: strictly after (or, for previousCursor, before) a resource in
            // (created, id) order, so concurrent creates and deletes never shift a page.
            // A row-value comparison, which both databases answer with one seek into the
            // (tenant, type, created, id) index; the equivalent OR form made SQLite scan from
            // the start of the index, so late pages were slower than early ones.
            let cmp = if after.backward { ") < (" } else { ") > (" };
            page = page.filter(
                RawCond::sql("(resources.created, resources.id")
                    .push(cmp)
                    .text(&after.created)
                    .push(", ")
                    .text(&after.id)
                    .push(")"),
            );
        }
        if let Some(sort) = &query.sort {
            // Missing values sort last in both directions; ties keep the creation order.
            let key = match &sort.target {
                SortTarget::Column(c) => RawCond::sql(column_sql(*c)),
                SortTarget::Value {
                    path,
                    kind,
                    primary,
                } => {
                    let col = match kind {
                        ValueKind::Str => "str_value",
                        ValueKind::Num => "num_value",
                        ValueKind::Bool => "bool_value",
                    };
                    let key = RawCond::sql(&format!(
                        "(SELECT v.{col} FROM resource_values v WHERE v.resource_id = resources.id AND v.path = "
                    ))
                    .text(path)
                    .push(&format!(" AND v.{col} IS NOT NULL ORDER BY "));
                    // The primary element's value first (`NOT EXISTS` is false for it).
                    let key = match primary {
                        Some(flag) => key
                            .push("NOT EXISTS (SELECT 1 FROM resource_values p WHERE p.resource_id = v.resource_id AND p.path = ")
                            .text(flag)
                            .push(" AND p.ordinal = v.ordinal AND p.bool_value), "),
                        None => key,
                    };
                    key.push("v.ordinal LIMIT 1)")
                }
            };
            // Columns that always hold a value need no "missing last" term, which keeps
            // their index usable for the order (userName is also unique: no tie-break).
            let never_missing = matches!(
                sort.target,
                SortTarget::Column(
                    Column::Id | Column::UserName | Column::Created | Column::LastModified
                )
            );
            if !never_missing {
                let missing = RawCond::sql("(").append(key.clone()).push(" IS NULL)");
                page = if far_end {
                    page.then_order_by(missing.desc())
                } else {
                    page.then_order_by(missing.asc())
                };
            }
            // Reading backward (previousCursor) reads the order reversed, nearest first.
            page = if (sort.descending != backward) != far_end {
                page.then_order_by(key.desc())
            } else {
                page.then_order_by(key.asc())
            };
            // A unique key has no ties to break; leaving the tie-break out lets SQLite read
            // the order straight from the key's index in either direction (with it, a page
            // read from the far end sorted the whole tenant).
            let unique_key = matches!(
                sort.target,
                SortTarget::Column(Column::Id | Column::UserName)
            );
            if !unique_key {
                page = if far_end {
                    page.then_order_by((resources::created.desc(), resources::id.desc()))
                } else {
                    page.then_order_by((resources::created.asc(), resources::id.asc()))
                };
            }
        } else if backward || far_end {
            // The page before a position (or a page read from the far end): the nearest
            // rows first, put back in order below.
            page = page.order((resources::created.desc(), resources::id.desc()));
        } else if !unique {
            // At most one row can match a unique key: ordering it is pointless, and leaving
            // the ORDER BY out keeps planners without statistics off the order index.
            page = page.order((resources::created.asc(), resources::id.asc()));
        }
        page.offset(offset.min(i64::MAX as u64) as i64)
            .limit(limit.min(i64::MAX as u64) as i64)
            .load(conn)
    };
    let start0 = query.start_index.saturating_sub(1);
    let (total, rows) =
        if unique && query.start_index == 1 && query.count > 0 && query.after.is_none() {
            // The page holds every match, so its length is the total: one query, not two.
            let rows = load_page(conn, 0, query.count, false).map_err(map_err)?;
            (rows.len() as u64, rows)
        } else {
            let count_all = |c: &mut AnyConnection| -> QueryResult<u64> {
                let total: i64 = if query.filter == StoreFilter::All {
                    // Kept by triggers in every write transaction: no rows to count.
                    resource_counts::table
                        .filter(resource_counts::tenant_id.eq(tenant))
                        .filter(resource_counts::resource_type.eq(rt))
                        .select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                            "CAST(COALESCE(SUM(resource_counts.n), 0) AS BIGINT)",
                        ))
                        .get_result::<i64>(c)?
                } else {
                    base().select(count_star()).get_result(c)?
                };
                Ok(total.max(0) as u64)
            };
            // Count, then read the page: forward, or, for a page nearer the end than the
            // start, in the reversed order from the last row, so the database steps over
            // `tail` rows instead of `startIndex - 1` and the last page of a million costs
            // what the first does.
            let count_and_read = |c: &mut AnyConnection| -> QueryResult<(u64, Vec<Row>)> {
                let total = count_all(c)?;
                let rest = total.saturating_sub(start0);
                let tail = rest.saturating_sub(query.count);
                if query.count == 0 || rest == 0 {
                    Ok((total, Vec::new()))
                } else if query.after.is_none() && tail < start0 {
                    let mut rows = load_page(c, tail, rest.min(query.count), true)?;
                    rows.reverse();
                    Ok((total, rows))
                } else {
                    Ok((total, load_page(c, start0, query.count, false)?))
                }
            };
            if start0 == 0 && query.count > 0 && query.after.is_none() {
                // The first page: read it first (see `first_page_total`).
                let rows = load_page(conn, 0, query.count, false).map_err(map_err)?;
                let total = first_page_total(rows.len(), query.count, || count_all(conn))
                    .map_err(map_err)?;
                (total, rows)
            } else if start0 > 0 && query.after.is_none() && !in_snapshot {
                // A page past the first may be read from the end, where its position
                // depends on the count: both come from one snapshot.
                conn.transaction(|c| {
                    backend::consistent_reads(c)?;
                    count_and_read(c)
                })
                .map_err(map_err)?
            } else {
                count_and_read(conn).map_err(map_err)?
            }
        };
    let mut rows = rows;
    if query.after.as_ref().is_some_and(|a| a.backward) {
        rows.reverse(); // read nearest-first; pages are always in creation order
    }
    let mut records: Vec<ResourceRecord> = rows
        .into_iter()
        .map(Row::into_record)
        .collect::<Result<_, _>>()?;
    fill_includes(conn, &mut records, query.include).map_err(map_err)?;
    Ok(Page {
        total,
        resources: records,
    })
}

/// The next `limit` direct members of `group` in id order, after the member `after`: one
/// seek into the membership key, whatever the group's size.
fn members_after(
    conn: &mut AnyConnection,
    group: &str,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<MemberRef>> {
    // Two statically typed statements (not one built up), which the statement cache keeps
    // prepared.
    let page = group_members::table
        .inner_join(resources::table.on(resources::id.eq(group_members::member_id)))
        .filter(group_members::group_id.eq(group))
        .select((resources::id, resources::resource_type, resources::display))
        .order(group_members::member_id)
        .limit(limit);
    let rows: Vec<(String, String, Option<String>)> = match after {
        None => page.load(conn)?,
        Some(after) => page.filter(group_members::member_id.gt(after)).load(conn)?,
    };
    Ok(member_refs(rows.into_iter()))
}

fn fill_includes(
    conn: &mut AnyConnection,
    records: &mut [ResourceRecord],
    include: Include,
) -> QueryResult<()> {
    let owned: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let ids: Vec<&str> = owned.iter().map(String::as_str).collect();
    for (wanted, side) in [
        (include.members, Side::Members),
        (include.groups, Side::Groups),
    ] {
        if !wanted {
            continue;
        }
        if let (Side::Members, Some(limit)) = (side, include.member_limit) {
            for r in records.iter_mut() {
                r.members = members_up_to(conn, &r.id, limit)?;
            }
            continue;
        }
        let mut links = read_links(conn, &ids, side)?;
        for r in records.iter_mut() {
            let found = Some(links.remove(&r.id).unwrap_or_default());
            match side {
                Side::Members => r.members = found,
                Side::Groups => r.groups = found,
            }
        }
    }
    Ok(())
}

/// The index rows of one resource, borrowed for an insert.
fn value_rows<'a>(
    tenant: &'a str,
    rt: &'a str,
    id: &'a str,
    values: impl IntoIterator<Item = &'a scim_core::index::IndexRow>,
) -> Vec<backend::ValueRow<'a>> {
    values
        .into_iter()
        .map(|v| backend::ValueRow {
            resource_id: id,
            tenant_id: tenant,
            resource_type: rt,
            path: &v.path,
            ordinal: v.ordinal,
            str_value: v.str_value.as_deref(),
            num_value: v.num_value,
            bool_value: v.bool_value,
        })
        .collect()
}

/// PostgreSQL: `ANALYZE` of the tables filters and lookups are planned on, in the
/// connection's schema; with `unanalyzed_only`, of those whose row count the catalog does not
/// know (`reltuples` is -1 before the first `ANALYZE` since PostgreSQL 14, 0 before that, when
/// analyzing costs nothing). Returns the resources' estimated row count afterwards.
fn analyze_tables(conn: &mut AnyConnection, unanalyzed_only: bool) -> QueryResult<f64> {
    #[derive(diesel::QueryableByName)]
    struct Table {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Double)]
        rows: f64,
    }
    let tables = |conn: &mut AnyConnection| {
        diesel::sql_query(
            "SELECT relname::text AS name, reltuples::float8 AS rows FROM pg_class \
             WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r' \
             AND relname IN ('resources', 'group_members', 'resource_values')",
        )
        .load::<Table>(conn)
    };
    for t in tables(conn)? {
        // A name from the fixed list in the query, never from a client.
        if !unanalyzed_only || t.rows <= 0.0 {
            conn.batch_execute(&format!("ANALYZE {}", t.name))?;
        }
    }
    Ok(tables(conn)?
        .into_iter()
        .find(|t| t.name == "resources")
        .map_or(0.0, |t| t.rows.max(0.0)))
}

/// For a branch that one backend never takes.
fn unreachable_backend() -> Result<(), TxError> {
    Err(TxError::Store(StoreError::Backend(
        "operation not available on this database".into(),
    )))
}

/// An attribute-value index row as stored: path, ordinal and the typed value.
type StoredValue = (String, i64, Option<String>, Option<f64>, Option<bool>);

/// The fingerprint recorded for the attribute-value index (see [`DieselStore::open_index`]).
fn recorded_fingerprint(conn: &mut AnyConnection) -> QueryResult<Option<String>> {
    state(conn, INDEX_FINGERPRINT)
}

/// The `store_state` entry `name`.
fn state(conn: &mut AnyConnection, name: &str) -> QueryResult<Option<String>> {
    use crate::schema::store_state as st;
    let query = st::table.filter(st::name.eq(name)).select(st::value);
    native!(conn, |c| query.get_result(c)).optional()
}

/// Sets the `store_state` entry `name` to `value`.
fn set_state(conn: &mut AnyConnection, name: &str, value: &str) -> QueryResult<()> {
    use crate::schema::store_state as st;
    let row = (st::name.eq(name), st::value.eq(value));
    native!(conn, |c| diesel::insert_into(st::table)
        .values(row)
        .on_conflict(st::name)
        .do_update()
        .set(st::value.eq(value))
        .execute(c))?;
    Ok(())
}

/// The columns of a [`StoredValue`].
const STORED_VALUE: (
    resource_values::path,
    resource_values::ordinal,
    resource_values::str_value,
    resource_values::num_value,
    resource_values::bool_value,
) = (
    resource_values::path,
    resource_values::ordinal,
    resource_values::str_value,
    resource_values::num_value,
    resource_values::bool_value,
);

fn index_row((path, ordinal, str_value, num_value, bool_value): StoredValue) -> IndexRow {
    IndexRow {
        path,
        ordinal,
        str_value,
        num_value,
        bool_value,
    }
}

/// The attribute-value index rows stored for one resource.
pub(crate) fn stored_values(conn: &mut AnyConnection, id: &str) -> QueryResult<Vec<IndexRow>> {
    let query = resource_values::table
        .filter(resource_values::resource_id.eq(id))
        .select(STORED_VALUE);
    let rows: Vec<StoredValue> = native!(&mut *conn, |c| query.load(c))?;
    Ok(rows.into_iter().map(index_row).collect())
}

/// The rows of the document an update replaces: derived by the caller when the index was
/// built by the same schemas (see [`DieselStore::open_index`]), else read.
fn old_values(
    conn: &mut AnyConnection,
    id: &str,
    write: &mut ResourceWrite,
    trusted: bool,
) -> QueryResult<Vec<IndexRow>> {
    match write.previous_values.take() {
        Some(rows) if trusted => Ok(rows),
        _ => stored_values(conn, id),
    }
}

/// One transaction of [`DieselStore::open_index`]'s rebuild: the index rows of the first
/// [`REBUILD_BATCH`] resources after `after` in id order (locked on PostgreSQL), replaced by
/// the rows `derive` makes of their documents. `None` when no resource is left.
fn rebuild_batch(
    conn: &mut AnyConnection,
    after: &str,
    derive: &DeriveRows,
) -> Result<Option<(String, u64)>, TxError> {
    let query = resources::table
        .filter(resources::id.gt(after))
        .order(resources::id)
        .limit(REBUILD_BATCH)
        .select((
            resources::id,
            resources::tenant_id,
            resources::resource_type,
            resources::data,
        ));
    let batch: Vec<(String, String, String, String)> = match conn {
        AnyConnection::Sqlite(c) => query.load(c)?,
        AnyConnection::Postgres(c) => query.for_update().load(c)?,
    };
    let Some(last) = batch.last().map(|r| r.0.clone()) else {
        return Ok(None);
    };
    // Only the rows that differ are written: a schema change touches the rows of a few
    // attributes, and rewriting all of them took about 4 times as long.
    let ids: Vec<&str> = batch.iter().map(|r| r.0.as_str()).collect();
    let query = resource_values::table
        .filter(resource_values::resource_id.eq_any(&ids))
        .select((resource_values::resource_id, STORED_VALUE));
    let stored: Vec<(String, StoredValue)> = native!(&mut *conn, |c| query.load(c))?;
    let mut old: HashMap<String, Vec<IndexRow>> = HashMap::new();
    for (id, value) in stored {
        old.entry(id).or_default().push(index_row(value));
    }
    for (id, tenant, rt, data) in &batch {
        let rows = match serde_json::from_str(data) {
            Ok(doc) => derive(rt, &doc),
            Err(e) => {
                log::error!("resource {id} holds a document that is not JSON ({e}); its attribute-index rows are left as they were");
                continue;
            }
        };
        let old = old.remove(id.as_str()).unwrap_or_default();
        ValueDiff::new(&rows, &old).write(conn, tenant, rt, id, &rows, &old)?;
    }
    Ok(Some((last, batch.len() as u64)))
}

/// Which of a resource's attribute-value index rows a write changes, as positions: stored
/// rows to delete (in the stored list) and new rows to insert (in the new list). Rows equal in
/// both are left alone: a PATCH of two attributes touches a few index entries instead of
/// deleting and re-inserting all of them (each a scattered index page).
struct ValueDiff {
    stale: Vec<usize>,
    insert: Vec<usize>,
}

impl ValueDiff {
    fn new(values: &[IndexRow], old: &[IndexRow]) -> Self {
        let mut keep = vec![false; values.len()];
        let position: HashMap<(&str, i64), usize> = values
            .iter()
            .enumerate()
            .map(|(i, v)| ((v.path.as_str(), v.ordinal), i))
            .collect();
        let mut stale = Vec::new();
        for (at, o) in old.iter().enumerate() {
            let same = position.get(&(o.path.as_str(), o.ordinal)).filter(|&&i| {
                let v = &values[i];
                v.str_value == o.str_value
                    && v.num_value == o.num_value
                    && v.bool_value == o.bool_value
            });
            match same {
                Some(&i) => keep[i] = true,
                None => stale.push(at),
            }
        }
        let insert = (0..values.len()).filter(|&i| !keep[i]).collect();
        ValueDiff { stale, insert }
    }

    /// The diff as an upsert (PostgreSQL, see `backend::pg_update_with_values`): the keys of
    /// stale rows that no new row takes the place of, and the new rows, each replacing any
    /// stored row of its key.
    fn as_upsert<'a>(
        &self,
        tenant: &'a str,
        rt: &'a str,
        id: &'a str,
        values: &'a [IndexRow],
        old: &'a [IndexRow],
    ) -> (Vec<(&'a str, i64)>, Vec<backend::ValueRow<'a>>) {
        let replaced: HashSet<(&str, i64)> = self
            .insert
            .iter()
            .map(|&i| (values[i].path.as_str(), values[i].ordinal))
            .collect();
        let stale = self
            .stale
            .iter()
            .map(|&i| (old[i].path.as_str(), old[i].ordinal))
            .filter(|key| !replaced.contains(key))
            .collect();
        let rows = value_rows(tenant, rt, id, self.insert.iter().map(|&i| &values[i]));
        (stale, rows)
    }

    /// Deletes the stale rows and inserts the new ones.
    fn write(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        rt: &str,
        id: &str,
        values: &[IndexRow],
        old: &[IndexRow],
    ) -> QueryResult<()> {
        let stale: Vec<(&str, i64)> = self
            .stale
            .iter()
            .map(|&i| (old[i].path.as_str(), old[i].ordinal))
            .collect();
        backend::delete_values(conn, id, &stale)?;
        let rows = value_rows(tenant, rt, id, self.insert.iter().map(|&i| &values[i]));
        backend::insert_values(conn, &rows)?;
        Ok(())
    }
}

/// An update worked out in full from the resource as read: everything but the statements
/// themselves, so that on SQLite it can be made before the update takes the one writer, which
/// then only compares the version and runs the statements (the document's serialization, the
/// comparisons with the stored document and index rows, and freeing the old document stay
/// off the writer).
struct UpdatePlan {
    current: ResourceRecord,
    write: ResourceWrite,
    /// the new document as stored text; `None`: the update changes nothing
    data: Option<String>,
    /// `externalId`, `userName` and `displayName` are unchanged, so their columns (and their
    /// index entries) are left alone
    keys_unchanged: bool,
    /// the resource's index rows as stored for `current`
    old_values: Vec<IndexRow>,
    diff: ValueDiff,
}

impl UpdatePlan {
    fn new(
        current: ResourceRecord,
        write: ResourceWrite,
        old_values: Vec<IndexRow>,
    ) -> Result<Self, StoreError> {
        let unchanged = write.member_ops.is_empty()
            && write.data == *current.data
            && write.external_id == current.external_id
            && write.password == SecretChange::Keep;
        let data = match unchanged {
            true => None,
            false => Some(
                serde_json::to_string(&write.data)
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            ),
        };
        let keys_unchanged = write.external_id == current.external_id
            && scim_core::resource::same_index_keys(&write.data, &current.data);
        let diff = ValueDiff::new(&write.values, &old_values);
        Ok(UpdatePlan {
            current,
            write,
            data,
            keys_unchanged,
            old_values,
            diff,
        })
    }

    /// Whether [`Self::run`] writes with one statement at most on PostgreSQL (so that it needs
    /// no transaction around it): no membership change and no password change.
    fn is_one_statement(&self) -> bool {
        self.data.is_none()
            || (self.write.member_ops.is_empty() && self.write.password == SecretChange::Keep)
    }

    /// Runs the update's statements in the caller's transaction. `Ok(None)`: the stored version
    /// is no longer the one planned from (a lost race; nothing was written). `Ok(Some(n))`:
    /// written, with `n` membership rows named.
    fn run(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        rt: &str,
        id: &str,
        now: &str,
    ) -> Result<Option<u64>, TxError> {
        let Some(data) = &self.data else {
            return Ok(Some(0));
        };
        let (current, write) = (&self.current, &self.write);
        // Every refusal comes before the first write (see `GroupWriter`).
        let member_ops =
            check_member_ops(conn, tenant, id, &write.member_ops, write.unknown_members)?;
        let doc = backend::UpdateDocument {
            id,
            version: current.version,
            new_version: current.version + 1,
            last_modified: now,
            data,
        };
        let keys = (!self.keys_unchanged).then_some(backend::KeyColumns {
            external_id: write.external_id.as_deref(),
            user_name_ci: write.keys.unique_name.as_deref(),
            display_name_ci: write.keys.display_name.as_deref(),
            display: write.keys.display.as_deref(),
        });
        let refused = unique_name_refused(rt, &write.keys);
        let (n, values_written) = match (&mut *conn, keys) {
            // PostgreSQL: the row and its index rows in one statement (one round trip).
            (AnyConnection::Postgres(c), keys) => {
                let (stale, rows) =
                    self.diff
                        .as_upsert(tenant, rt, id, &write.values, &self.old_values);
                let n = backend::pg_update_with_values(c, doc, keys, (tenant, rt), &stale, &rows)
                    .map_err(refused)?;
                (n as usize, true)
            }
            (c, None) => (native!(c, |c| doc.execute(c))?, false),
            (c, Some(keys)) => {
                let update = backend::UpdateResource { doc, keys };
                (native!(c, |c| update.execute(c)).map_err(refused)?, false)
            }
        };
        if n == 0 {
            return Ok(None);
        }
        apply_member_ops(conn, id, &member_ops)?;
        if !values_written {
            self.diff
                .write(conn, tenant, rt, id, &write.values, &self.old_values)?;
        }
        let hash = match &write.password {
            SecretChange::Keep => None,
            SecretChange::Set(h) => Some(Some(h.as_str())),
            SecretChange::Clear => Some(None),
        };
        if let Some(hash) = hash {
            diesel::update(resources::table.filter(resources::id.eq(id)))
                .set(resources::password_hash.eq(hash))
                .execute(conn)?;
        }
        Ok(Some(ops_rows(&write.member_ops)))
    }

    /// On SQLite's writer: runs the plan while the stored version is still the one it was
    /// made from, and reads what the answer shows in the same transaction. `Ok(None)`:
    /// another write landed since the row was read (nothing was written); plan again.
    fn run_if_current(
        self,
        c: &mut AnyConnection,
        (tenant, rt, id, now): (&str, &str, &str, &str),
        include: Include,
    ) -> Result<Option<(Self, u64, Links)>, TxError> {
        if version_of(c, tenant, rt, id)? != Some(self.current.version) {
            return Ok(None);
        }
        let Some(touched) = self.run(c, tenant, rt, id, now)? else {
            return Ok(None);
        };
        let links = links_of(c, id, rt, include)?;
        Ok(Some((self, touched, links)))
    }

    /// The resource as the update left it.
    fn into_record(self, now: &str) -> ResourceRecord {
        if self.data.is_none() {
            return self.current;
        }
        ResourceRecord {
            version: self.current.version + 1,
            last_modified: now.to_string(),
            external_id: self.write.external_id,
            data: self.write.data.into(),
            ..self.current
        }
    }
}

/// The memberships `include` asks for of one resource, read in the caller's transaction:
/// `(members, groups)`, each `None` where [`fill_includes`] would leave it unset.
type Links = (Option<Vec<MemberRef>>, Option<Vec<MemberRef>>);

fn links_of(conn: &mut AnyConnection, id: &str, rt: &str, include: Include) -> QueryResult<Links> {
    if !include.members && !include.groups {
        return Ok((None, None));
    }
    let mut one = [ResourceRecord {
        id: id.to_string(),
        resource_type: rt.to_string(),
        version: 0,
        created: String::new(),
        last_modified: String::new(),
        external_id: None,
        data: serde_json::Map::new().into(),
        members: None,
        groups: None,
    }];
    fill_includes(conn, &mut one, include)?;
    let [one] = one;
    Ok((one.members, one.groups))
}

/// Checks a write's membership operations before anything is written (a refusal then leaves
/// nothing to undo): a group is never its own member, and unknown member ids are refused or
/// left out as `unknown` says. Returns the operations to apply.
fn check_member_ops(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    ops: &[MemberOp],
    unknown: UnknownMembers,
) -> Result<Vec<MemberOp>, TxError> {
    let mut checked = Vec::with_capacity(ops.len());
    for op in ops {
        let MemberOp::Add(ids) = op else {
            checked.push(op.clone());
            continue;
        };
        let unique: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        if unique.contains(group) {
            return Err(ScimError::invalid_value("A group cannot be a member of itself").into());
        }
        let mut wanted: Vec<&str> = unique.into_iter().collect();
        let mut missing = Vec::new();
        for chunk in wanted.chunks(CHUNK) {
            // By primary key only, tenant checked here: with `tenant_id = ?` in the
            // query, SQLite walks the tenant's order index instead (a scan of the tenant).
            let found: BTreeSet<String> = resources::table
                .select((resources::id, resources::tenant_id))
                .filter(resources::id.eq_any(chunk))
                .load::<(String, String)>(conn)?
                .into_iter()
                .filter(|(_, t)| t == tenant)
                .map(|(id, _)| id)
                .collect();
            missing.extend(
                chunk
                    .iter()
                    .filter(|id| !found.contains(**id))
                    .map(|s| s.to_string()),
            );
        }
        if !missing.is_empty() && unknown == UnknownMembers::Ignore {
            let shown: Vec<String> = missing.iter().take(20).map(|m| format!("{m:?}")).collect();
            log::warn!(
                "group {group}: ignored {} unknown member id(s): {}",
                missing.len(),
                shown.join(", ")
            );
            wanted.retain(|w| !missing.iter().any(|m| m == w));
        } else if !missing.is_empty() {
            let shown: Vec<String> = missing
                .iter()
                .take(20)
                .map(|m| format!("\"{}\"", m.escape_debug()))
                .collect();
            let more = if missing.len() > 20 {
                format!(" and {} more", missing.len() - 20)
            } else {
                String::new()
            };
            return Err(ScimError::invalid_value(format!(
                "Unknown member id(s): {}{more}; no change was made",
                shown.join(", ")
            ))
            .into());
        }
        checked.push(MemberOp::Add(
            wanted.into_iter().map(str::to_string).collect(),
        ));
    }
    Ok(checked)
}

/// Applies membership operations checked by [`check_member_ops`], as set operations.
fn apply_member_ops(conn: &mut AnyConnection, group: &str, ops: &[MemberOp]) -> QueryResult<()> {
    for op in ops {
        match op {
            MemberOp::RemoveAll => {
                diesel::delete(group_members::table.filter(group_members::group_id.eq(group)))
                    .execute(conn)?;
            }
            MemberOp::Remove(ids) => {
                for chunk in ids.chunks(CHUNK) {
                    diesel::delete(
                        group_members::table
                            .filter(group_members::group_id.eq(group))
                            .filter(group_members::member_id.eq_any(chunk)),
                    )
                    .execute(conn)?;
                }
            }
            MemberOp::Add(ids) => {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                for chunk in ids.chunks(CHUNK) {
                    backend::insert_members_ignoring_existing(conn, group, chunk)?;
                }
            }
        }
    }
    Ok(())
}

/// The record an update left, with the memberships read in its transaction.
fn finish_update(plan: UpdatePlan, now: &str, include: Include, links: Links) -> ResourceRecord {
    let (members, groups) = links;
    let mut rec = plan.into_record(now);
    if include.members {
        rec.members = members;
    }
    if include.groups {
        rec.groups = groups;
    }
    rec
}

impl DieselStore {
    /// PostgreSQL: the row read without a lock, the update planned from it, and written by one
    /// statement that applies only while the row still has the version planned from (a
    /// transaction of its own): a read, the write and the answer's groups are three round
    /// trips, where [`Self::update_in_transaction`] takes five (and writes a row lock).
    /// Updates of more than one statement (membership changes, a password) and updates that
    /// lost two races to other writers of the resource take the transaction, whose row lock
    /// queues them.
    fn update_in_one_statement(
        &self,
        (tenant, rt, id, now): (&str, &str, &str, &str),
        if_match: Option<i64>,
        include: Include,
        update: &mut UpdateFn<'_>,
    ) -> Result<ResourceRecord, StoreError> {
        for _attempt in 0..2 {
            let mut conn = self.conn()?;
            let plan = self
                .plan_update(&mut conn, (tenant, rt, id), false, if_match, update)
                .map_err(StoreError::from)?;
            if !plan.is_one_statement() {
                break;
            }
            let outcome = match plan.run(&mut conn, tenant, rt, id, now) {
                Ok(Some(touched)) => links_of(&mut conn, id, rt, include)
                    .map(|links| Some((plan, touched, links)))
                    .map_err(TxError::from),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            if let Some(answer) = self.settle(outcome, now, include, if_match) {
                return answer;
            }
        }
        self.update_in_transaction((tenant, rt, id, now), if_match, include, update)
    }

    /// PostgreSQL: [`Self::update_in_one_statement`] for the tenant of a live token, whose
    /// first read checks the token and reads the groups the answer shows with the resource
    /// (one statement, [`one_pinned!`]), so that an update of one statement is two round
    /// trips instead of four (token, read, write, groups). The groups are as of that read:
    /// an update never changes the groups of the resource it writes. For the token's tenant,
    /// an update that needs more than one statement goes on as
    /// [`Self::update_in_transaction`], and one that lost a race to another writer as
    /// [`Self::update_in_one_statement`]. `Ok(None)`: no live token.
    fn update_for_token(
        &self,
        (token_hash, rt, id, now): (&str, &str, &str, &str),
        if_match: Option<i64>,
        include: Include,
        update: &mut UpdateFn<'_>,
    ) -> Result<Option<ResourceRecord>, StoreError> {
        let mut conn = self.conn()?;
        let c: &mut AnyConnection = &mut conn;
        let live = tokens::token_hash
            .eq(token_hash)
            .and(tokens::revoked.is_null());
        let read = one_pinned!(
            c,
            tokens::table,
            tokens::tenant_id,
            live,
            rt,
            resources::id,
            id,
            include.groups
        );
        let Some((tenant, found)) = read.map_err(map_err)? else {
            return Ok(None);
        };
        let mut current = pinned_record(c, found)?.ok_or(StoreError::NotFound)?;
        let groups = current.groups.take();
        let plan = update_from(current, if_match, update)
            .and_then(|(current, write)| self.plan(c, current, write))
            .map_err(StoreError::from)?;
        let key = (tenant.as_str(), rt, id, now);
        if !plan.is_one_statement() {
            drop(conn);
            return self
                .update_in_transaction(key, if_match, include, update)
                .map(Some);
        }
        let outcome = plan
            .run(c, &tenant, rt, id, now)
            .map(|written| written.map(|touched| (plan, touched, (None, groups))));
        if let Some(answer) = self.settle(outcome, now, include, if_match) {
            return answer.map(Some);
        }
        drop(conn);
        self.update_in_one_statement(key, if_match, include, update)
            .map(Some)
    }

    /// What one attempt of an update comes to: `Some`, the answer; `None`, plan again (another
    /// write landed since the row was read, and nothing was written).
    fn settle(
        &self,
        outcome: Result<Option<(UpdatePlan, u64, Links)>, TxError>,
        now: &str,
        include: Include,
        if_match: Option<i64>,
    ) -> Option<Result<ResourceRecord, StoreError>> {
        match outcome {
            Ok(Some((plan, touched, links))) => {
                self.note_writes(1 + touched);
                Some(Ok(finish_update(plan, now, include, links)))
            }
            Ok(None) if if_match.is_some() => Some(Err(StoreError::VersionMismatch)),
            Ok(None) => None,
            Err(e) => Some(Err(e.into())),
        }
    }

    /// PostgreSQL: an update as one transaction on a pooled connection. The row is locked
    /// before it is read (so concurrent writers of the resource queue); the conditional UPDATE
    /// is a second line of defence, and a lost race retries the whole read-modify-write on the
    /// fresh row.
    fn update_in_transaction(
        &self,
        (tenant, rt, id, now): (&str, &str, &str, &str),
        if_match: Option<i64>,
        include: Include,
        update: &mut UpdateFn<'_>,
    ) -> Result<ResourceRecord, StoreError> {
        for _attempt in 0..8 {
            let mut conn = self.conn()?;
            let result = (*conn).transaction(|c| {
                // The row is locked as it is read (`FOR UPDATE`).
                let plan = self.plan_update(c, (tenant, rt, id), true, if_match, update)?;
                let Some(touched) = plan.run(c, tenant, rt, id, now)? else {
                    return Ok::<_, TxError>(None); // lost a race: retry
                };
                let links = links_of(c, id, rt, include)?;
                Ok(Some((plan, touched, links)))
            });
            if let Some(answer) = self.settle(result, now, include, if_match) {
                return answer;
            }
        }
        Err(StoreError::Unavailable(
            "too much contention on this resource; retry".into(),
        ))
    }
}

/// What the client gets back from a create: the document as written.
fn created_record(
    (id, rt, now): (&str, &str, &str),
    write: ResourceWrite,
    include: Include,
    members: Option<Vec<MemberRef>>,
) -> ResourceRecord {
    ResourceRecord {
        id: id.to_string(),
        resource_type: rt.to_string(),
        version: 1,
        created: now.to_string(),
        last_modified: now.to_string(),
        external_id: write.external_id,
        data: write.data.into(),
        members,
        groups: include.groups.then(Vec::new),
    }
}

/// A token lookup queued with others (see `DieselStore::find_token`): the batch that reads it
/// sets `found` when a live token has the hash.
struct TokenJob {
    hash: String,
    found: std::sync::OnceLock<TokenRecord>,
}

/// A create as the writer runs it: everything it writes, owned, so that it can be queued.
struct CreateJob {
    id: String,
    tenant: String,
    rt: String,
    now: String,
    external_id: Option<String>,
    keys: IndexKeys,
    /// the document as stored text
    data: String,
    password_hash: Option<String>,
    values: Vec<scim_core::index::IndexRow>,
    member_ops: Vec<MemberOp>,
    unknown_members: UnknownMembers,
    /// what to read back in the same transaction (a new group's members)
    read: Include,
    /// PostgreSQL: the hash of the caller's token, when the create is for that token's tenant
    /// (`tenant` is then unused; see `ResourceStore::create_by_token`)
    token: Option<String>,
}

impl CreateJob {
    /// The job that creates `write`, with what is left of `write` for the record.
    fn new(
        (tenant, rt, id, now): (&str, &str, &str, &str),
        mut write: ResourceWrite,
        include: Include,
    ) -> Result<(Self, ResourceWrite), StoreError> {
        let data =
            serde_json::to_string(&write.data).map_err(|e| StoreError::Backend(e.to_string()))?;
        // The members of a new group are read back inside the write; anything else is built
        // after it (outside the SQLite writer): a resource created a moment ago is in no group.
        let job = CreateJob {
            id: id.to_string(),
            tenant: tenant.to_string(),
            rt: rt.to_string(),
            now: now.to_string(),
            external_id: write.external_id.clone(),
            keys: write.keys.clone(),
            data,
            password_hash: match &write.password {
                SecretChange::Set(h) => Some(h.clone()),
                _ => None,
            },
            values: std::mem::take(&mut write.values),
            member_ops: std::mem::take(&mut write.member_ops),
            unknown_members: write.unknown_members,
            read: Include {
                groups: false,
                ..include
            },
            token: None,
        };
        Ok((job, write))
    }

    fn new_resource(&self) -> backend::NewResource<'_> {
        backend::NewResource {
            id: &self.id,
            tenant_id: &self.tenant,
            resource_type: &self.rt,
            created: &self.now,
            external_id: self.external_id.as_deref(),
            user_name_ci: self.keys.unique_name.as_deref(),
            display_name_ci: self.keys.display_name.as_deref(),
            display: self.keys.display.as_deref(),
            data: &self.data,
            password_hash: self.password_hash.as_deref(),
        }
    }

    /// Inserts the resource, its memberships and its index rows in the caller's transaction.
    fn run(&self, c: &mut AnyConnection) -> Result<Links, TxError> {
        let (tenant, rt, id) = (self.tenant.as_str(), self.rt.as_str(), self.id.as_str());
        // Every refusal comes before the first write (see `GroupWriter`).
        let member_ops = check_member_ops(c, tenant, id, &self.member_ops, self.unknown_members)?;
        let new = self.new_resource();
        native!(&mut *c, |c| diesel::insert_into(resources::table)
            .values((
                resources::id.eq(new.id),
                resources::tenant_id.eq(new.tenant_id),
                resources::resource_type.eq(new.resource_type),
                resources::version.eq(1i64),
                resources::created.eq(new.created),
                resources::last_modified.eq(new.created),
                resources::external_id.eq(new.external_id),
                resources::user_name_ci.eq(new.user_name_ci),
                resources::display_name_ci.eq(new.display_name_ci),
                resources::display.eq(new.display),
                resources::data.eq(new.data),
                resources::password_hash.eq(new.password_hash),
            ))
            .execute(c))
        .map_err(unique_name_refused(rt, &self.keys))?;
        apply_member_ops(c, id, &member_ops)?;
        backend::insert_values(c, &value_rows(tenant, rt, id, &self.values))?;
        Ok(links_of(c, id, rt, self.read)?)
    }
}

/// No stored id or key holds U+0000 (PostgreSQL text cannot, and writes refuse it on both
/// databases), so a key that does names nothing: it is answered without a statement, which
/// PostgreSQL would refuse as an encoding error.
fn names_nothing(key: &str) -> bool {
    key.contains('\0')
}

impl DieselStore {
    /// PostgreSQL: a create without membership changes, as one statement of its own. What it
    /// created has no links to read back (a group with no members, in no group).
    fn pg_create_alone(&self, job: &CreateJob) -> Result<Links, TxError> {
        let (tenant, rt, id) = (job.tenant.as_str(), job.rt.as_str(), job.id.as_str());
        let mut conn = self.conn()?;
        match &mut *conn {
            AnyConnection::Postgres(c) => {
                let rows = value_rows(tenant, rt, id, &job.values);
                backend::pg_insert_resource_with_values(c, &job.new_resource(), &rows)
                    .map_err(unique_name_refused(rt, &job.keys))?;
            }
            AnyConnection::Sqlite(_) => unreachable_backend()?,
        }
        Ok(new_links(job.read))
    }

    /// PostgreSQL: the creates of one batch (see `combine.rs`). One job without a token runs
    /// as it would alone; otherwise one statement inserts them all, and any it leaves out (a
    /// unique key taken, a token not live) or that it could not write (the statement failed)
    /// run alone afterwards, each for its own answer; when the database cannot be reached,
    /// each gets that 503 at once.
    fn pg_create_batch(&self, jobs: &[CreateJob]) -> Vec<combine::Outcome<TxError>> {
        if let [job @ CreateJob { token: None, .. }] = jobs {
            return vec![match self.pg_create_alone(job) {
                Ok(_) => combine::Outcome::Done,
                Err(e) => combine::Outcome::Failed(e),
            }];
        }
        let inserted = (|| -> Result<HashSet<String>, TxError> {
            let mut conn = self.conn()?;
            let AnyConnection::Postgres(c) = &mut *conn else {
                unreachable_backend()?;
                return Ok(HashSet::new());
            };
            let resources: Vec<backend::NewResource<'_>> =
                jobs.iter().map(CreateJob::new_resource).collect();
            let rows: Vec<backend::ValueRow<'_>> = jobs
                .iter()
                .flat_map(|j| value_rows(&j.tenant, &j.rt, &j.id, &j.values))
                .collect();
            let tokens: Vec<Option<&str>> = jobs.iter().map(|j| j.token.as_deref()).collect();
            Ok(backend::pg_insert_many(c, &resources, &tokens, &rows)?
                .into_iter()
                .collect())
        })();
        match inserted {
            Ok(ids) => jobs
                .iter()
                .map(|j| match ids.contains(&j.id) {
                    true => combine::Outcome::Done,
                    false => combine::Outcome::Alone,
                })
                .collect(),
            Err(e) => match StoreError::from(e) {
                // No database to write to: every job would wait for a connection again.
                StoreError::Unavailable(why) => jobs
                    .iter()
                    .map(|_| {
                        combine::Outcome::Failed(TxError::Store(StoreError::Unavailable(
                            why.clone(),
                        )))
                    })
                    .collect(),
                e => {
                    log::debug!(
                        "a batch of {} creates failed ({e}); each runs alone",
                        jobs.len()
                    );
                    jobs.iter().map(|_| combine::Outcome::Alone).collect()
                }
            },
        }
    }
}

/// The row `PRAGMA wal_checkpoint` answers.
#[derive(QueryableByName)]
struct WalCheckpoint {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    busy: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    log: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    checkpointed: i32,
}

/// The links of a resource just created without membership changes: a group with no
/// members, in no group (what `links_of` would read for it; the corpus checks a new group's
/// `members` on both databases).
fn new_links(read: Include) -> Links {
    (read.members.then(Vec::new), read.groups.then(Vec::new))
}

impl ResourceStore for DieselStore {
    /// `SELECT 1` on a pooled connection (a reader, on SQLite).
    fn check(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        (*conn).batch_execute("SELECT 1").map_err(map_err)
    }

    /// SQLite: a `TRUNCATE` checkpoint, which copies the whole write-ahead log into the
    /// database file and empties the log (waiting, within the busy timeout, for a write still
    /// running). PostgreSQL keeps nothing in the server's files.
    fn flush(&self) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        let mut conn = self.conn()?;
        let done: WalCheckpoint = diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)")
            .get_result(&mut *conn)
            .map_err(map_err)?;
        if done.busy != 0 {
            return Err(StoreError::Unavailable(format!(
                "the write-ahead log could not be emptied: a connection still uses it \
                 ({} of {} frames copied into the database file)",
                done.checkpointed, done.log
            )));
        }
        Ok(())
    }

    fn create(
        &self,
        tenant: &str,
        rt: &str,
        id: &str,
        now: &str,
        write: ResourceWrite,
        include: Include,
    ) -> Result<ResourceRecord, StoreError> {
        let (job, write) = CreateJob::new((tenant, rt, id, now), write, include)?;
        let touched = 1 + ops_rows(&job.member_ops);
        let single_statement = self.backend == Backend::Postgres && job.member_ops.is_empty();
        let result: Result<Links, TxError> = if single_statement {
            let (job, outcome) = self.creates.run(job, &|jobs| self.pg_create_batch(jobs));
            match outcome {
                combine::Outcome::Done => Ok(new_links(job.read)),
                combine::Outcome::Failed(e) => Err(e),
                combine::Outcome::Alone => self.pg_create_alone(&job),
            }
        } else {
            // The job goes back with the answer, so that its index rows are freed here, not
            // on the writer thread every write waits for.
            self.write(move |c| job.run(c).map(|links| (links, job)))
                .map(|(links, _job)| links)
        };
        let (members, _) = result?;
        self.note_writes(touched);
        Ok(created_record((id, rt, now), write, include, members))
    }

    /// PostgreSQL, a create without membership changes: queued with the concurrent creates
    /// (see `create`), whose one statement reads the token's tenant as it inserts. A job it
    /// leaves out runs alone after a lookup of the token, which tells a token that is not
    /// live from a unique key that is taken.
    fn create_by_token(
        &self,
        token_hash: &str,
        rt: &str,
        id: &str,
        now: &str,
        write: ResourceWrite,
        include: Include,
    ) -> Result<TokenCreate, StoreError> {
        if self.backend != Backend::Postgres || !write.member_ops.is_empty() {
            return Ok(TokenCreate::Unsupported(Box::new(write)));
        }
        let (mut job, write) = CreateJob::new(("", rt, id, now), write, include)?;
        job.token = Some(token_hash.to_string());
        let (mut job, outcome) = self.creates.run(job, &|jobs| self.pg_create_batch(jobs));
        match outcome {
            combine::Outcome::Done => {}
            combine::Outcome::Failed(e) => return Err(e.into()),
            combine::Outcome::Alone => {
                let Some(token) = self.find_token(token_hash)? else {
                    return Ok(TokenCreate::NoToken);
                };
                job.tenant = token.tenant_id;
                job.token = None;
                self.pg_create_alone(&job)?;
            }
        }
        self.note_writes(1);
        let links = new_links(job.read);
        let rec = created_record((id, rt, now), write, include, links.0);
        Ok(TokenCreate::Created(Box::new(rec)))
    }

    /// SQLite: the job goes to the writer thread as `create` sends it, and the record is
    /// built on the caller's thread from the outcome.
    fn create_detached(
        &self,
        tenant: &str,
        rt: &str,
        id: &str,
        now: &str,
        write: ResourceWrite,
        include: Include,
        done: WriteDone,
    ) -> Result<(), Box<(ResourceWrite, WriteDone)>> {
        let Some(writer) = &self.writer else {
            return Err(Box::new((write, done)));
        };
        let (job, write) = match CreateJob::new((tenant, rt, id, now), write, include) {
            Ok(made) => made,
            Err(e) => {
                done(Detached::new(move || Err(e)));
                return Ok(());
            }
        };
        let (id, rt, now) = (id.to_string(), rt.to_string(), now.to_string());
        writer.submit(
            move |c| job.run(c).map(|links| (links, job)),
            move |result: Result<(Links, CreateJob), TxError>| {
                done(Detached::new(move || {
                    let ((members, _), _job) = result?;
                    let rec = created_record((&id, &rt, &now), write, include, members);
                    Ok(Some(rec))
                }))
            },
        );
        Ok(())
    }

    fn get(
        &self,
        tenant: &str,
        rt: &str,
        id: &str,
        include: Include,
    ) -> Result<ResourceRecord, StoreError> {
        if names_nothing(id) {
            return Err(StoreError::NotFound);
        }
        let mut conn = self.conn()?;
        if groups_only(include) {
            let c: &mut AnyConnection = &mut conn;
            let found = one_in_tenant!(c, tenant, rt, resources::id, id, true).map_err(map_err)?;
            return pinned_record(c, found.and_then(|(_, f)| f))?.ok_or(StoreError::NotFound);
        }
        let row = load_row(&mut conn, tenant, rt, id)
            .map_err(map_err)?
            .ok_or(StoreError::NotFound)?;
        let mut recs = vec![row.into_record()?];
        fill_includes(&mut conn, &mut recs, include).map_err(map_err)?;
        recs.pop().ok_or(StoreError::NotFound)
    }

    fn read_paged(
        &self,
        tenant: &str,
        rt: &str,
        what: PagedRead<'_>,
        include: Include,
        page_size: usize,
        visit: &mut dyn FnMut(ReadPart<'_>) -> Visit,
    ) -> Result<(), StoreError> {
        if matches!(what, PagedRead::One(id) if names_nothing(id)) {
            return Err(StoreError::NotFound);
        }
        let _deadline = crate::conn::deadline::Guard::start(self.query_timeout);
        let mut conn = self.conn()?;
        let page_size = page_size.clamp(1, i64::MAX as usize) as i64;
        // One read transaction: the page, its versions and every member come from one
        // snapshot (SQLite's, PostgreSQL's `REPEATABLE READ`), however long the visits take;
        // writes go on meanwhile and are not seen.
        let result = (*conn).transaction(|c| -> Result<(), TxError> {
            backend::consistent_reads(c)?;
            let without_members = Include {
                members: false,
                member_limit: None,
                ..include
            };
            let page = match what {
                PagedRead::One(id) => {
                    let row = load_row(c, tenant, rt, id)?.ok_or(StoreError::NotFound)?;
                    let mut resources = vec![row.into_record()?];
                    fill_includes(c, &mut resources, without_members)?;
                    Page {
                        total: 1,
                        resources,
                    }
                }
                PagedRead::List(query) => {
                    let query = ListQuery {
                        include: without_members,
                        ..query.clone()
                    };
                    list_on(c, tenant, rt, &query, true)?
                }
            };
            if visit(ReadPart::Page(&page)) != Visit::Continue || !include.members {
                return Ok(());
            }
            for (of, group) in page.resources.iter().enumerate() {
                match visit(ReadPart::Resource(of, group)) {
                    Visit::Stop => return Ok(()),
                    Visit::Skip => continue,
                    Visit::Continue => {}
                }
                let mut after: Option<String> = None;
                loop {
                    let members = members_after(c, &group.id, after.as_deref(), page_size)?;
                    if members.is_empty() {
                        break;
                    }
                    match visit(ReadPart::Members(&members)) {
                        Visit::Stop => return Ok(()),
                        Visit::Skip => break,
                        Visit::Continue => {}
                    }
                    if (members.len() as i64) < page_size {
                        break;
                    }
                    after = members.last().map(|m| m.id.clone());
                }
            }
            Ok(())
        });
        Ok(result?)
    }

    fn list(&self, tenant: &str, rt: &str, query: &ListQuery) -> Result<Page, StoreError> {
        let _deadline = crate::conn::deadline::Guard::start(self.query_timeout);
        let mut conn = self.conn()?;
        list_on(&mut conn, tenant, rt, query, false)
    }

    fn update(
        &self,
        tenant: &str,
        rt: &str,
        id: &str,
        now: &str,
        if_match: Option<i64>,
        include: Include,
        update: &mut UpdateFn<'_>,
    ) -> Result<ResourceRecord, StoreError> {
        if names_nothing(id) {
            return Err(StoreError::NotFound);
        }
        if self.writer.is_none() {
            return self.update_in_one_statement((tenant, rt, id, now), if_match, include, update);
        }
        // SQLite: the plan is made outside the writer, which runs it while the version it was
        // made from is still the stored one; otherwise it is handed back and made again from
        // the row as it is then (a write landed in between: nothing is lost, and no write waits
        // for another's preparation). Updates of this resource by this process wait their
        // turn, so only another process can make a plan stale. The record is built after the
        // writer.
        let _turn = self.update_turns.take(id);
        for _attempt in 0..8 {
            let plan = self
                .prepare_outside_writer(tenant, rt, id, if_match, update)
                .map_err(StoreError::from)?;
            let (tenant_owned, rt_owned, id_owned, now_owned) = (
                tenant.to_string(),
                rt.to_string(),
                id.to_string(),
                now.to_string(),
            );
            let result = self.write(move |c| {
                plan.run_if_current(
                    c,
                    (&tenant_owned, &rt_owned, &id_owned, &now_owned),
                    include,
                )
            });
            match result.map_err(StoreError::from)? {
                Some((plan, touched, links)) => {
                    self.note_writes(1 + touched);
                    return Ok(finish_update(plan, now, include, links));
                }
                // another write landed since the row was read: plan again from it
                None => continue,
            }
        }
        Err(StoreError::Unavailable(
            "too much contention on this resource; retry".into(),
        ))
    }

    /// PostgreSQL, for an update whose answer needs no members (those are read after the
    /// write): see `DieselStore::update_for_token`.
    fn update_by_token(
        &self,
        token_hash: &str,
        rt: &str,
        id: &str,
        now: &str,
        if_match: Option<i64>,
        include: Include,
        update: &mut UpdateFn<'_>,
    ) -> Result<TokenUpdate, StoreError> {
        if self.backend != Backend::Postgres || include.members || names_nothing(id) {
            return Ok(TokenUpdate::Unsupported);
        }
        let key = (token_hash, rt, id, now);
        Ok(
            match self.update_for_token(key, if_match, include, update)? {
                Some(rec) => TokenUpdate::Updated(Box::new(rec)),
                None => TokenUpdate::NoToken,
            },
        )
    }

    /// SQLite, on a thread holding a reservation: the plan is made here as `update` makes it,
    /// and the writer runs it and hands the outcome on. A resource whose update is waiting
    /// its turn in `update` is left to `update` (this one would only make a stale plan), and
    /// a stale plan is answered `Ok(None)`: the caller runs `update`, which plans again.
    fn update_detached(
        &self,
        tenant: &str,
        rt: &str,
        id: &str,
        now: &str,
        if_match: Option<i64>,
        include: Include,
        update: &mut UpdateFn<'_>,
        done: WriteDone,
    ) -> Result<(), WriteDone> {
        if names_nothing(id) {
            return Err(done);
        }
        let Some(writer) = &self.writer else {
            return Err(done);
        };
        if !inline::has_reserved(self.id) || self.update_turns.is_held(id) {
            return Err(done);
        }
        let plan = match self.prepare_outside_writer(tenant, rt, id, if_match, update) {
            Ok(plan) => plan,
            Err(e) => {
                let e = StoreError::from(e);
                done(Detached::new(move || Err(e)));
                return Ok(());
            }
        };
        let (tenant, rt, id, now) = (
            tenant.to_string(),
            rt.to_string(),
            id.to_string(),
            now.to_string(),
        );
        let finish_now = now.clone();
        writer.submit(
            move |c| plan.run_if_current(c, (&tenant, &rt, &id, &now), include),
            move |result| {
                // The record is built on the caller's thread, not on the writer's.
                done(Detached::new(move || match result {
                    Ok(Some((plan, _, links))) => {
                        Ok(Some(finish_update(plan, &finish_now, include, links)))
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(e.into()),
                }))
            },
        );
        Ok(())
    }

    fn delete(
        &self,
        tenant: &str,
        rt: &str,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<(), StoreError> {
        if names_nothing(id) {
            return Err(StoreError::NotFound);
        }
        let (tenant, rt, id) = (tenant.to_string(), rt.to_string(), id.to_string());
        let result: Result<(), TxError> = self.write(move |c| {
            let (tenant, rt, id) = (tenant.as_str(), rt.as_str(), id.as_str());
            // Locked as it is read (one statement on PostgreSQL), so that a PATCH of this
            // resource that is in flight commits its index rows before they are deleted below
            // (none is left behind).
            let row = load_row_for_update(c, tenant, rt, id)?.ok_or(StoreError::NotFound)?;
            if if_match.is_some_and(|v| v != row.version) {
                return Err(StoreError::VersionMismatch.into());
            }
            // The attribute-value index has no foreign key (it cost a check per row on every
            // write); its rows go with their resource here, in the same transaction.
            diesel::delete(resource_values::table.filter(resource_values::resource_id.eq(id)))
                .execute(c)?;
            diesel::delete(
                resources::table
                    .filter(resources::id.eq(id))
                    .filter(resources::tenant_id.eq(tenant)),
            )
            .execute(c)?;
            Ok(())
        });
        if result.is_ok() {
            self.note_writes(1);
        }
        result.map_err(Into::into)
    }

    /// SQLite only, and only with a connection idle in the pool right now: a point read there
    /// is a few B-tree probes in the process, cheaper than handing it to another thread. On
    /// PostgreSQL every read is a network round trip and stays off the caller's thread.
    fn reserve_inline(&self) -> Option<scim_core::store::InlineReads> {
        if self.backend != Backend::Sqlite {
            return None;
        }
        inline::reserve(self.id, self.pool.try_get()?)
    }

    /// The users' point reads (with their groups, as identity providers read them) and reads
    /// of one row without memberships, as one statement whatever the outcome (`one_pinned!`):
    /// hit, miss and dead token are each one round trip.
    fn point_read_by_token(
        &self,
        token_hash: &str,
        rt: &str,
        key: PointKey<'_>,
        include: Include,
    ) -> Result<TokenRead, StoreError> {
        let (PointKey::Id(v) | PointKey::UserName(v)) = key;
        if include.members || names_nothing(v) {
            return Ok(TokenRead::Unsupported);
        }
        let mut conn = self.conn()?;
        let c: &mut AnyConnection = &mut conn;
        let live = || {
            tokens::token_hash
                .eq(token_hash)
                .and(tokens::revoked.is_null())
        };
        let read = match key {
            PointKey::Id(v) => one_pinned!(
                c,
                tokens::table,
                tokens::tenant_id,
                live(),
                rt,
                resources::id,
                v,
                include.groups
            ),
            PointKey::UserName(v) => one_pinned!(
                c,
                tokens::table,
                tokens::tenant_id,
                live(),
                rt,
                resources::user_name_ci,
                v,
                include.groups
            ),
        };
        Ok(match read.map_err(map_err)? {
            None => TokenRead::NoToken,
            Some((_, found)) => TokenRead::Read(pinned_record(c, found)?.map(Box::new)),
        })
    }

    /// PostgreSQL: queued for the store's reader threads, which answer every read waiting
    /// with one statement (see `batch.rs`). Reads with members stay with the caller.
    fn submit_point_read(
        &self,
        read: scim_core::store::PointRead,
        done: scim_core::store::PointReadDone,
    ) -> Result<(), scim_core::store::PointReadDone> {
        match &self.reads {
            Some(reads)
                if !read.include.members
                    && !matches!(&read.key, PointKeyBuf::Id(v) | PointKeyBuf::UserName(v) if names_nothing(v)) =>
            {
                reads.submit(read, done, read_many);
                Ok(())
            }
            _ => Err(done),
        }
    }
}

impl CredentialStore for DieselStore {
    fn find_token(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        if self.backend == Backend::Sqlite {
            return self.find_token_now(token_hash);
        }
        // PostgreSQL: every request that is not a point read resolves its token first, and a
        // statement of its own costs a round trip and the database's per-statement work, many
        // times the probe. Lookups queued at one moment are read by one statement (see
        // `combine.rs`: each is taken from the queue after it was queued, so it sees every
        // revocation committed before its request arrived).
        let job = TokenJob {
            hash: token_hash.to_string(),
            found: std::sync::OnceLock::new(),
        };
        match self
            .token_lookups
            .run(job, &|jobs| self.pg_find_tokens(jobs))
        {
            (job, combine::Outcome::Done) => Ok(job.found.into_inner()),
            (_, combine::Outcome::Failed(e)) => Err(e),
            (_, combine::Outcome::Alone) => self.find_token_now(token_hash),
        }
    }

    fn has_tokens(&self) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let n: i64 = tokens::table
            .select(count_star())
            .get_result(&mut *conn)
            .map_err(map_err)?;
        Ok(n > 0)
    }

    fn ensure_tenant(&self, tenant_id: &str, name: &str, now: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let exists: i64 = tenants::table
            .filter(tenants::id.eq(tenant_id))
            .select(count_star())
            .get_result(&mut *conn)
            .map_err(map_err)?;
        if exists == 0 {
            diesel::insert_into(tenants::table)
                .values((
                    tenants::id.eq(tenant_id),
                    tenants::name.eq(name),
                    tenants::created.eq(now),
                ))
                .execute(&mut *conn)
                .map_err(map_err)?;
        }
        Ok(())
    }

    fn create_token(&self, record: &TokenRecord, token_hash: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        diesel::insert_into(tokens::table)
            .values((
                tokens::id.eq(&record.id),
                tokens::tenant_id.eq(&record.tenant_id),
                tokens::name.eq(&record.name),
                tokens::token_hash.eq(token_hash),
                tokens::created.eq(&record.created),
            ))
            .execute(&mut *conn)
            .map_err(map_err)?;
        Ok(())
    }

    fn revoke_token(&self, token_id: &str, now: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let n = diesel::update(
            tokens::table
                .filter(tokens::id.eq(token_id))
                .filter(tokens::revoked.is_null()),
        )
        .set(tokens::revoked.eq(now))
        .execute(&mut *conn)
        .map_err(map_err)?;
        Ok(n > 0)
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut conn = self.conn()?;
        let rows: Vec<TokenRow> = tokens::table
            .filter(tokens::revoked.is_null())
            .select(TOKEN_COLUMNS)
            .order(tokens::created)
            .load(&mut *conn)
            .map_err(map_err)?;
        Ok(rows.into_iter().map(token_record).collect())
    }

    fn default_tenant(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn()?;
        tenants::table
            .select(tenants::id)
            .order(tenants::created)
            .first::<String>(&mut *conn)
            .optional()
            .map_err(map_err)
    }
}

impl DieselStore {
    /// The stored password hash of a resource (for applications that reuse this store to
    /// check a user's password with `scim_auth::verify_password`).
    pub fn password_hash(&self, tenant: &str, id: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn()?;
        resources::table
            .filter(resources::tenant_id.eq(tenant))
            .filter(resources::id.eq(id))
            .select(resources::password_hash)
            .first::<Option<String>>(&mut *conn)
            .optional()
            .map_err(map_err)
            .map(Option::flatten)
    }

    /// PostgreSQL: the live tokens of one batch of lookups (see `find_token`), by one
    /// statement; when the database cannot be reached each lookup gets that 503 at once, and
    /// after any other failure each runs alone for its own answer.
    fn pg_find_tokens(&self, jobs: &[TokenJob]) -> Vec<combine::Outcome<StoreError>> {
        let hashes: Vec<&str> = jobs.iter().map(|j| j.hash.as_str()).collect();
        let read = self.conn().and_then(|mut conn| {
            let query = tokens::table
                .filter(tokens::token_hash.eq_any(&hashes))
                .filter(tokens::revoked.is_null())
                .select((tokens::token_hash, TOKEN_COLUMNS));
            let rows: Vec<(String, TokenRow)> =
                native!(&mut *conn, |c| query.load(c)).map_err(map_err)?;
            Ok(rows)
        });
        match read {
            Ok(rows) => {
                let live: HashMap<String, TokenRecord> = rows
                    .into_iter()
                    .map(|(hash, row)| (hash, token_record(row)))
                    .collect();
                jobs.iter()
                    .map(|j| {
                        if let Some(t) = live.get(&j.hash) {
                            let _ = j.found.set(t.clone());
                        }
                        combine::Outcome::Done
                    })
                    .collect()
            }
            Err(StoreError::Unavailable(why)) => jobs
                .iter()
                .map(|_| combine::Outcome::Failed(StoreError::Unavailable(why.clone())))
                .collect(),
            Err(_) => jobs.iter().map(|_| combine::Outcome::Alone).collect(),
        }
    }

    /// The live token with `token_hash`, read now by a statement of its own.
    fn find_token_now(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let mut conn = self.conn()?;
        let query = tokens::table
            .filter(tokens::token_hash.eq(token_hash))
            .filter(tokens::revoked.is_null())
            .select(TOKEN_COLUMNS);
        let row: Option<TokenRow> = native!(&mut *conn, |c| query.get_result(c))
            .optional()
            .map_err(map_err)?;
        Ok(row.map(token_record))
    }
}

/// What is read of a token ([`TOKEN_COLUMNS`]), for [`token_record`].
type TokenRow = (String, String, String, String);

/// The columns of a token that make its [`TokenRecord`] (its hash is never returned).
const TOKEN_COLUMNS: (tokens::id, tokens::tenant_id, tokens::name, tokens::created) =
    (tokens::id, tokens::tenant_id, tokens::name, tokens::created);

fn token_record((id, tenant_id, name, created): TokenRow) -> TokenRecord {
    TokenRecord {
        id,
        tenant_id,
        name,
        created,
    }
}
