//! The attribute-value index as a whole: planner statistics, the recorded fingerprint and
//! settings (`store_state`), the stored index rows of a resource, and the rebuild.

use super::*;

/// PostgreSQL: `ANALYZE` of the tables filters and lookups are planned on, in the
/// connection's schema; with `unanalyzed_only`, of those whose row count the catalog does not
/// know (`reltuples` is -1 before the first `ANALYZE` since PostgreSQL 14, 0 before that, when
/// analyzing costs nothing). Returns the resources' estimated row count afterwards.
pub(super) fn analyze_tables(conn: &mut AnyConnection, unanalyzed_only: bool) -> QueryResult<f64> {
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
pub(super) fn unreachable_backend() -> Result<(), TxError> {
    Err(TxError::Store(StoreError::Backend(
        "operation not available on this database".into(),
    )))
}

/// An attribute-value index row as stored: path, ordinal and the typed value.
type StoredValue = (String, i64, Option<String>, Option<f64>, Option<bool>);

/// The fingerprint recorded for the attribute-value index (see [`DieselStore::open_index`]).
pub(super) fn recorded_fingerprint(conn: &mut AnyConnection) -> QueryResult<Option<String>> {
    state(conn, INDEX_FINGERPRINT)
}

/// The `store_state` entry `name`.
pub(super) fn state(conn: &mut AnyConnection, name: &str) -> QueryResult<Option<String>> {
    use crate::schema::store_state as st;
    let query = st::table.filter(st::name.eq(name)).select(st::value);
    native!(conn, |c| query.get_result(c)).optional()
}

/// Sets the `store_state` entry `name` to `value`.
pub(super) fn set_state(conn: &mut AnyConnection, name: &str, value: &str) -> QueryResult<()> {
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
pub(super) fn old_values(
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
pub(super) fn rebuild_batch(
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
