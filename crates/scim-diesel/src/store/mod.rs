//! `impl ResourceStore` and `impl CredentialStore` over the pooled connections: the store
//! itself, its errors and point reads here, the rest in the modules below by topic.

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

/// PostgreSQL: a member a membership change names was deleted by another transaction between
/// the check that it exists (`check_member_ops`) and the insert of its row, and the foreign key
/// refused the row. Such a change is planned again; the check then finds the member gone and
/// skips or refuses it as `SCIM_UNKNOWN_MEMBERS` says. (SQLite's one writer runs the check and
/// the insert with no other write in between.)
fn member_vanished(e: &TxError) -> bool {
    matches!(
        e,
        TxError::Db(DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info))
            if info.constraint_name() == Some("group_members_member_id_fkey")
    )
}

/// PostgreSQL failed the transaction to break a deadlock (two writers each waiting for a row
/// the other holds: a membership change of a group waiting to name a member that is being
/// deleted, while the delete waits to move that group's version on) or a serialization
/// conflict. The others went on; running it again is correct. Told by the message, as
/// [`is_transient`] tells its errors (diesel passes on no SQLSTATE; see DEPLOYMENT.md on
/// `lc_messages`).
fn deadlocked(e: &TxError) -> bool {
    matches!(
        e,
        TxError::Db(DieselError::DatabaseError(kind, info))
            if matches!(kind, DatabaseErrorKind::SerializationFailure)
                || info.message().contains("deadlock detected")
    )
}

/// Whether a PostgreSQL transaction that failed so is run again: a member vanished meanwhile
/// ([`member_vanished`]) or PostgreSQL broke a deadlock ([`deadlocked`]).
fn run_again(e: &TxError) -> bool {
    member_vanished(e) || deadlocked(e)
}

/// How often a PostgreSQL transaction is run again after [`run_again`] (a bound, not an
/// expected count: each time means another writer got in between).
const RUNS_AGAIN: usize = 8;

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

// The store's parts by topic. Declared below the macros above, which they use (a
// `macro_rules!` is in scope only after its definition).
mod create;
mod credentials;
mod filter;
mod index;
mod read;
mod update;

use create::*;
use filter::*;
use index::*;
use read::*;
use update::*;

// The `crate::store::…` paths the crate's tests name.
#[cfg(test)]
pub(crate) use index::stored_values;
pub(crate) use read::list_on;

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

    /// PostgreSQL: `body` in a transaction of its own on a pooled connection, run again (up to
    /// [`RUNS_AGAIN`] times) when it failed for a reason another writer caused ([`run_again`]).
    fn pg_transaction<T>(
        &self,
        mut body: impl FnMut(&mut AnyConnection) -> Result<T, TxError>,
    ) -> Result<T, TxError> {
        let mut runs = 0;
        loop {
            let mut conn = self.conn()?;
            match (*conn).transaction(&mut body) {
                Err(e) if run_again(&e) && runs < RUNS_AGAIN => runs += 1,
                done => return done,
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
    /// is read (`FOR NO KEY UPDATE`, inside the caller's transaction).
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

/// Deletes one resource in the caller's transaction, with its attribute-index rows (they have
/// no foreign key: it cost a check per row on every write). Its memberships go by the foreign
/// keys' cascade; the groups that listed it as a member change with it, so their versions move
/// on and `now` becomes their last change (their `ETag` and `meta.lastModified` then tell a
/// client that the member list it holds is stale).
fn delete_resource(
    c: &mut AnyConnection,
    (tenant, rt, id, now): (&str, &str, &str, &str),
    if_match: Option<i64>,
) -> Result<(), TxError> {
    // Locked as it is read (one statement on PostgreSQL), so that a PATCH of this resource
    // that is in flight commits its index rows before they are deleted below (none is left
    // behind).
    let row = load_row_for_update(c, tenant, rt, id, Lock::Delete)?.ok_or(StoreError::NotFound)?;
    if if_match.is_some_and(|v| v != row.version) {
        return Err(StoreError::VersionMismatch.into());
    }
    let listing = group_members::table
        .filter(group_members::member_id.eq(id))
        .select(group_members::group_id);
    diesel::update(resources::table.filter(resources::id.eq_any(listing)))
        .set((
            resources::version.eq(resources::version + 1),
            resources::last_modified.eq(now),
        ))
        .execute(c)?;
    diesel::delete(resource_values::table.filter(resource_values::resource_id.eq(id)))
        .execute(c)?;
    diesel::delete(
        resources::table
            .filter(resources::id.eq(id))
            .filter(resources::tenant_id.eq(tenant)),
    )
    .execute(c)?;
    Ok(())
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
        } else if self.writer.is_none() {
            // PostgreSQL, a group created with members: in a transaction of its own, planned
            // again if a member it names is deleted meanwhile.
            self.pg_transaction(|c| job.run(c))
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
        now: &str,
    ) -> Result<(), StoreError> {
        if names_nothing(id) {
            return Err(StoreError::NotFound);
        }
        let result = match self.writer {
            Some(_) => {
                let key = [tenant, rt, id, now].map(str::to_string);
                self.write(move |c| {
                    let [tenant, rt, id, now] = key.each_ref().map(String::as_str);
                    delete_resource(c, (tenant, rt, id, now), if_match)
                })
            }
            None => self.pg_transaction(|c| delete_resource(c, (tenant, rt, id, now), if_match)),
        };
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
