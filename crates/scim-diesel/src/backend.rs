//! The few operations that differ between SQLite and PostgreSQL. Every branch here is
//! exercised by the store tests on both databases.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sqlite::Sqlite;

use crate::conn::AnyConnection;

/// Marks statements of a fixed shape (SQL text that does not depend on the data) and the
/// connections they run on: a static query id lets the connection's statement cache keep them
/// prepared.
macro_rules! fixed_shape_statements {
    ($($t:ident: $($conn:ty),+;)*) => {$(
        impl QueryId for $t<'_> {
            type QueryId = $t<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }
        $(impl RunQueryDsl<$conn> for $t<'_> {})+
    )*};
}

fixed_shape_statements!(
    PgMembers: diesel::PgConnection;
    PgValues: diesel::PgConnection;
    PgCreate: diesel::PgConnection;
    PgCreateMany: diesel::PgConnection;
    PgUpdateDocumentValues: diesel::PgConnection;
    PgUpdateResourceValues: diesel::PgConnection;
    PgDeleteValues: diesel::PgConnection;
    SqliteValue: diesel::SqliteConnection;
    PgAncestors: diesel::PgConnection;
    SqliteParents: diesel::SqliteConnection;
    SqliteRows: diesel::SqliteConnection;
    UpdateResource: diesel::PgConnection, diesel::SqliteConnection;
    UpdateDocument: diesel::PgConnection, diesel::SqliteConnection;
);
use crate::schema::group_members;

#[derive(Insertable)]
#[diesel(table_name = group_members)]
struct MemberRow<'a> {
    group_id: &'a str,
    member_id: &'a str,
}

/// Inserts membership rows, ignoring ones that already exist. Returns rows inserted.
pub fn insert_members_ignoring_existing(
    conn: &mut AnyConnection,
    group: &str,
    members: &[&str],
) -> QueryResult<usize> {
    match conn {
        AnyConnection::Sqlite(c) => {
            let rows: Vec<MemberRow<'_>> = members
                .iter()
                .map(|m| MemberRow {
                    group_id: group,
                    member_id: m,
                })
                .collect();
            diesel::insert_or_ignore_into(group_members::table)
                .values(&rows)
                .execute(c)
        }
        AnyConnection::Postgres(c) => PgMembers { group, members }.execute(c),
    }
}

/// PostgreSQL: membership rows from one bound array, in a statement of fixed shape that stays
/// prepared (a multi-row `VALUES` list is parsed and planned anew on every call).
struct PgMembers<'a> {
    group: &'a str,
    members: &'a [&'a str],
}

impl QueryFragment<Pg> for PgMembers<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Array, Text};
        out.push_sql("INSERT INTO group_members (group_id, member_id) SELECT ");
        out.push_bind_param::<Text, _>(&self.group)?;
        out.push_sql(", m FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.members)?;
        out.push_sql(") AS m ON CONFLICT DO NOTHING");
        Ok(())
    }
}

/// Makes the rest of a read transaction see one snapshot. PostgreSQL's default isolation gives
/// every statement its own snapshot, so it asks for `REPEATABLE READ`; a SQLite transaction
/// reads one snapshot already.
pub fn consistent_reads(conn: &mut AnyConnection) -> QueryResult<()> {
    use diesel::connection::SimpleConnection;
    match conn {
        AnyConnection::Sqlite(_) => Ok(()),
        AnyConnection::Postgres(c) => {
            c.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        }
    }
}

/// One attribute-value index row.
#[derive(Insertable)]
#[diesel(table_name = crate::schema::resource_values)]
#[allow(missing_docs)]
pub struct ValueRow<'a> {
    pub resource_id: &'a str,
    pub tenant_id: &'a str,
    pub resource_type: &'a str,
    pub path: &'a str,
    pub ordinal: i64,
    pub str_value: Option<&'a str>,
    pub num_value: Option<f64>,
    pub bool_value: Option<bool>,
}

/// Inserts the index rows of one resource (as [`crate::store`] builds them: every row carries
/// the same resource, tenant and type) as statements of a fixed shape, which the connection's statement cache
/// keeps prepared: a statement built per call (a multi-row `VALUES` list) is parsed and planned
/// on every write, which cost PostgreSQL more than the insert itself.
///
/// SQLite: one cached single-row `INSERT` per row (SQLite's per-statement cost is a VM step,
/// not a round trip). PostgreSQL: one statement for all rows, the columns bound as arrays and
/// expanded by `unnest`, one round trip whatever the number of rows.
pub fn insert_values(conn: &mut AnyConnection, rows: &[ValueRow<'_>]) -> QueryResult<usize> {
    let Some(first) = rows.first() else {
        return Ok(0);
    };
    match conn {
        AnyConnection::Sqlite(c) => {
            for row in rows {
                SqliteValue(row).execute(c)?;
            }
            Ok(rows.len())
        }
        AnyConnection::Postgres(c) => PgValues::new(first, rows).execute(c),
    }
}

/// SQLite: one index row in a statement of fixed shape, every column bound (`NULL`s too).
/// diesel's `Insertable` leaves out the columns whose value is `None`, so its SQL depends on
/// the row and had to be written out on every insert to find the prepared statement.
struct SqliteValue<'a>(&'a ValueRow<'a>);

impl QueryFragment<Sqlite> for SqliteValue<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Bool, Double, Nullable, Text};
        let r = self.0;
        out.push_sql(
            "INSERT INTO resource_values (resource_id, tenant_id, resource_type, path, ordinal, \
             str_value, num_value, bool_value) VALUES (",
        );
        out.push_bind_param::<Text, _>(&r.resource_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&r.tenant_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&r.resource_type)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&r.path)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&r.ordinal)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&r.str_value)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Double>, _>(&r.num_value)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Bool>, _>(&r.bool_value)?;
        out.push_sql(")");
        Ok(())
    }
}

/// Deletes the index rows of one resource at the given `(path, ordinal)` keys. SQLite: one
/// cached single-row `DELETE` per key. PostgreSQL: one fixed-shape statement for all of them.
pub fn delete_values(
    conn: &mut AnyConnection,
    resource_id: &str,
    keys: &[(&str, i64)],
) -> QueryResult<usize> {
    use crate::schema::resource_values as v;
    if keys.is_empty() {
        return Ok(0);
    }
    match conn {
        AnyConnection::Sqlite(c) => {
            let mut deleted = 0;
            for (path, ordinal) in keys {
                deleted += diesel::delete(
                    v::table
                        .filter(v::resource_id.eq(resource_id))
                        .filter(v::path.eq(*path))
                        .filter(v::ordinal.eq(*ordinal)),
                )
                .execute(c)?;
            }
            Ok(deleted)
        }
        AnyConnection::Postgres(c) => PgDeleteValues {
            resource_id,
            paths: keys.iter().map(|k| k.0).collect(),
            ordinals: keys.iter().map(|k| k.1).collect(),
        }
        .execute(c),
    }
}

struct PgDeleteValues<'a> {
    resource_id: &'a str,
    paths: Vec<&'a str>,
    ordinals: Vec<i64>,
}

impl QueryFragment<Pg> for PgDeleteValues<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Text};
        out.push_sql("DELETE FROM resource_values WHERE resource_id = ");
        out.push_bind_param::<Text, _>(&self.resource_id)?;
        out.push_sql(" AND (path, ordinal) IN (SELECT * FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.paths)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&self.ordinals)?;
        out.push_sql("))");
        Ok(())
    }
}

/// The index rows of one resource as column arrays, for `unnest` on PostgreSQL.
struct PgArrays<'a> {
    paths: Vec<&'a str>,
    ordinals: Vec<i64>,
    strs: Vec<Option<&'a str>>,
    nums: Vec<Option<f64>>,
    bools: Vec<Option<bool>>,
}

impl<'a> PgArrays<'a> {
    fn new(rows: &[ValueRow<'a>]) -> Self {
        PgArrays {
            paths: rows.iter().map(|r| r.path).collect(),
            ordinals: rows.iter().map(|r| r.ordinal).collect(),
            strs: rows.iter().map(|r| r.str_value).collect(),
            nums: rows.iter().map(|r| r.num_value).collect(),
            bools: rows.iter().map(|r| r.bool_value).collect(),
        }
    }

    /// `unnest($p, $o, $s, $n, $b) AS v (p, o, s, n, b)`
    fn push_unnest<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(" unnest(");
        self.push_columns(out)?;
        out.push_sql(") AS v (p, o, s, n, b)");
        Ok(())
    }

    /// `$p, $o, $s, $n, $b`
    fn push_columns<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Bool, Double, Nullable, Text};
        out.push_bind_param::<Array<Text>, _>(&self.paths)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&self.ordinals)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.strs)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Double>>, _>(&self.nums)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Bool>>, _>(&self.bools)?;
        Ok(())
    }
}

const VALUE_COLUMNS: &str = "INSERT INTO resource_values (resource_id, tenant_id, resource_type, path, ordinal, str_value, num_value, bool_value) SELECT ";

/// PostgreSQL: the index rows of one resource in one fixed-shape `INSERT … SELECT … unnest`.
struct PgValues<'a> {
    resource_id: &'a str,
    tenant_id: &'a str,
    resource_type: &'a str,
    arrays: PgArrays<'a>,
}

impl<'a> PgValues<'a> {
    fn new(first: &ValueRow<'a>, rows: &[ValueRow<'a>]) -> Self {
        PgValues {
            resource_id: first.resource_id,
            tenant_id: first.tenant_id,
            resource_type: first.resource_type,
            arrays: PgArrays::new(rows),
        }
    }
}

impl QueryFragment<Pg> for PgValues<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::Text;
        out.push_sql(VALUE_COLUMNS);
        out.push_bind_param::<Text, _>(&self.resource_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.tenant_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.resource_type)?;
        out.push_sql(", v.p, v.o, v.s, v.n, v.b FROM");
        self.arrays.push_unnest(&mut out)
    }
}

/// The columns a create writes to `resources`.
#[allow(missing_docs)]
pub struct NewResource<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub resource_type: &'a str,
    pub created: &'a str,
    pub external_id: Option<&'a str>,
    pub user_name_ci: Option<&'a str>,
    pub display_name_ci: Option<&'a str>,
    pub display: Option<&'a str>,
    pub data: &'a str,
    pub password_hash: Option<&'a str>,
}

/// PostgreSQL: inserts a resource and its index rows in one statement (the resource in a
/// data-modifying `WITH`, the rows from `unnest` of bound arrays). One statement is atomic on
/// its own, so a create is one round trip instead of four (`BEGIN`, two inserts, `COMMIT`),
/// and its shape is fixed, so it stays prepared. The uniqueness of `userName` is enforced
/// exactly as for a separate insert.
pub fn pg_insert_resource_with_values(
    c: &mut diesel::PgConnection,
    r: &NewResource<'_>,
    rows: &[ValueRow<'_>],
) -> QueryResult<usize> {
    PgCreate {
        r,
        arrays: PgArrays::new(rows),
    }
    .execute(c)
}

/// PostgreSQL: inserts the resources of several creates, and their index rows, in one
/// statement; returns the ids of the resources it inserted. A resource that collides with a
/// stored one on a unique key (`userName`, a unique group name) is left out with its rows
/// (`ON CONFLICT DO NOTHING`), for its caller to create on its own and get its error. The
/// resources are inserted in the order of their unique keys (`userName`, then group names),
/// so that two batches holding the same names (an identity provider's retries) wait for one
/// another in one order and cannot deadlock on them. The counts are kept once per statement
/// (`resources_count_added`).
/// `tokens` pairs each resource with the hash of its caller's token, or with `None`: a
/// resource with a token is created in the tenant of that token, read by the same statement,
/// and left out when no live token has the hash (its `tenant_id` is not used).
pub fn pg_insert_many(
    c: &mut diesel::PgConnection,
    resources: &[NewResource<'_>],
    tokens: &[Option<&str>],
    rows: &[ValueRow<'_>],
) -> QueryResult<Vec<String>> {
    PgCreateMany {
        ids: resources.iter().map(|r| r.id).collect(),
        tenants: resources
            .iter()
            .zip(tokens)
            .map(|(r, token)| token.is_none().then_some(r.tenant_id))
            .collect(),
        tokens: tokens.to_vec(),
        types: resources.iter().map(|r| r.resource_type).collect(),
        created: resources.iter().map(|r| r.created).collect(),
        external_ids: resources.iter().map(|r| r.external_id).collect(),
        user_names: resources.iter().map(|r| r.user_name_ci).collect(),
        display_names: resources.iter().map(|r| r.display_name_ci).collect(),
        displays: resources.iter().map(|r| r.display).collect(),
        data: resources.iter().map(|r| r.data).collect(),
        password_hashes: resources.iter().map(|r| r.password_hash).collect(),
        row_ids: rows.iter().map(|r| r.resource_id).collect(),
        arrays: PgArrays::new(rows),
    }
    .load(c)
}

struct PgCreateMany<'a> {
    ids: Vec<&'a str>,
    /// `None` for a resource whose tenant is that of its token
    tenants: Vec<Option<&'a str>>,
    /// the hash of the caller's token, for a resource created in the token's tenant
    tokens: Vec<Option<&'a str>>,
    types: Vec<&'a str>,
    created: Vec<&'a str>,
    external_ids: Vec<Option<&'a str>>,
    user_names: Vec<Option<&'a str>>,
    display_names: Vec<Option<&'a str>>,
    displays: Vec<Option<&'a str>>,
    data: Vec<&'a str>,
    password_hashes: Vec<Option<&'a str>>,
    row_ids: Vec<&'a str>,
    arrays: PgArrays<'a>,
}

impl diesel::query_builder::Query for PgCreateMany<'_> {
    type SqlType = diesel::sql_types::Text;
}

impl QueryFragment<Pg> for PgCreateMany<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Array, Nullable, Text};
        out.push_sql(
            "WITH n AS (SELECT x.id, COALESCE(x.t, k.tenant_id) AS t, x.rt, x.c, x.e, x.u, \
             x.d, x.s, x.data, x.pw FROM unnest(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.tenants)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.types)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.created)?;
        for v in [
            &self.external_ids,
            &self.user_names,
            &self.display_names,
            &self.displays,
        ] {
            out.push_sql(", ");
            out.push_bind_param::<Array<Nullable<Text>>, _>(v)?;
        }
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.data)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.password_hashes)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.tokens)?;
        // A resource whose token is not live (unknown or revoked) gets no tenant, and is not
        // inserted.
        out.push_sql(
            ") AS x (id, t, rt, c, e, u, d, s, data, pw, h) LEFT JOIN tokens k \
             ON k.token_hash = x.h AND k.revoked IS NULL), \
             r AS (INSERT INTO resources (id, tenant_id, resource_type, version, created, \
             last_modified, external_id, user_name_ci, display_name_ci, display, data, \
             password_hash) SELECT id, t, rt, 1, c, c, e, u, d, s, data, pw FROM n \
             WHERE t IS NOT NULL ORDER BY u COLLATE \"C\", d COLLATE \"C\" ON CONFLICT DO NOTHING \
             RETURNING id, tenant_id, resource_type), w AS (",
        );
        out.push_sql(VALUE_COLUMNS);
        out.push_sql(
            "r.id, r.tenant_id, r.resource_type, v.p, v.o, v.s, v.n, v.b FROM r JOIN unnest(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.row_ids)?;
        out.push_sql(", ");
        self.arrays.push_columns(&mut out)?;
        out.push_sql(") AS v (id, p, o, s, n, b) ON v.id = r.id COLLATE \"C\") SELECT id FROM r");
        Ok(())
    }
}

struct PgCreate<'a> {
    r: &'a NewResource<'a>,
    arrays: PgArrays<'a>,
}

impl QueryFragment<Pg> for PgCreate<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Nullable, Text};
        let r = self.r;
        out.push_sql("WITH r AS (INSERT INTO resources (id, tenant_id, resource_type, version, created, last_modified, external_id, user_name_ci, display_name_ci, display, data, password_hash) VALUES (");
        out.push_bind_param::<Text, _>(&r.id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&r.tenant_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&r.resource_type)?;
        out.push_sql(", 1, ");
        out.push_bind_param::<Text, _>(&r.created)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&r.created)?;
        for v in [
            &r.external_id,
            &r.user_name_ci,
            &r.display_name_ci,
            &r.display,
        ] {
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(v)?;
        }
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&r.data)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&r.password_hash)?;
        out.push_sql(") RETURNING id, tenant_id, resource_type) ");
        out.push_sql(VALUE_COLUMNS);
        out.push_sql("r.id, r.tenant_id, r.resource_type, v.p, v.o, v.s, v.n, v.b FROM r,");
        self.arrays.push_unnest(&mut out)
    }
}

/// The versioned update of a resource's document, as a statement of fixed shape on both
/// databases (diesel's `UPDATE … SET` is not kept prepared: it was parsed and planned anew on
/// every PATCH). Changes nothing when the stored version is no longer `version`; then the
/// caller lost a race.
///
/// This one leaves the key columns alone, for updates whose `externalId`, `userName` and
/// `displayName` are unchanged (most PATCHes): SQLite rewrites the index entries of every
/// column a `SET` names, even to the same value, so naming the three indexed key columns
/// costs three index deletes and inserts (one a uniqueness check) that change nothing; in a
/// micro-benchmark an update naming them took three times as long. [`UpdateResource`] sets
/// them too.
#[allow(missing_docs)]
pub struct UpdateDocument<'a> {
    pub id: &'a str,
    /// the version read
    pub version: i64,
    /// `version + 1`
    pub new_version: i64,
    pub last_modified: &'a str,
    pub data: &'a str,
}

/// The key columns derived from a document (see `scim_core::resource::index_keys`).
#[allow(missing_docs)]
pub struct KeyColumns<'a> {
    pub external_id: Option<&'a str>,
    pub user_name_ci: Option<&'a str>,
    pub display_name_ci: Option<&'a str>,
    pub display: Option<&'a str>,
}

/// [`UpdateDocument`] that also sets the key columns.
pub struct UpdateResource<'a> {
    /// the document and version
    pub doc: UpdateDocument<'a>,
    /// the new key columns
    pub keys: KeyColumns<'a>,
}

/// `UPDATE resources SET …` for `$doc` (an `UpdateDocument`) and, if `$keys` is `Some`, the
/// key columns.
macro_rules! push_update {
    ($out:ident, $doc:expr, $keys:expr) => {{
        use diesel::sql_types::{BigInt, Nullable, Text};
        let doc = $doc;
        $out.push_sql("UPDATE resources SET version = ");
        $out.push_bind_param::<BigInt, _>(&doc.new_version)?;
        $out.push_sql(", last_modified = ");
        $out.push_bind_param::<Text, _>(&doc.last_modified)?;
        if let Some(k) = $keys {
            $out.push_sql(", external_id = ");
            $out.push_bind_param::<Nullable<Text>, _>(&k.external_id)?;
            $out.push_sql(", user_name_ci = ");
            $out.push_bind_param::<Nullable<Text>, _>(&k.user_name_ci)?;
            $out.push_sql(", display_name_ci = ");
            $out.push_bind_param::<Nullable<Text>, _>(&k.display_name_ci)?;
            $out.push_sql(", display = ");
            $out.push_bind_param::<Nullable<Text>, _>(&k.display)?;
        }
        $out.push_sql(", data = ");
        $out.push_bind_param::<Text, _>(&doc.data)?;
        $out.push_sql(" WHERE id = ");
        $out.push_bind_param::<Text, _>(&doc.id)?;
        $out.push_sql(" AND version = ");
        $out.push_bind_param::<BigInt, _>(&doc.version)?;
        Ok(())
    }};
}

macro_rules! update_sql {
    ($($db:ty),*) => {$(
        impl QueryFragment<$db> for UpdateDocument<'_> {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, $db>) -> QueryResult<()> {
                push_update!(out, self, None::<&KeyColumns<'_>>)
            }
        }
        impl QueryFragment<$db> for UpdateResource<'_> {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, $db>) -> QueryResult<()> {
                push_update!(out, &self.doc, Some(&self.keys))
            }
        }
    )*};
}

update_sql!(Sqlite, Pg);

/// PostgreSQL: an update's statements in one (one round trip instead of three): the
/// resource row, conditional on the version read (`UPDATE … RETURNING`), the index rows of
/// `stale` keys deleted, and `rows` inserted, replacing the stored row of the same key
/// (`ON CONFLICT … DO UPDATE`). The keys deleted must not be among those inserted, so the
/// two never meet whatever order PostgreSQL runs them in. Returns how many resource rows were
/// updated (0: the version was no longer the one read, and nothing was written).
pub fn pg_update_with_values(
    c: &mut diesel::PgConnection,
    doc: UpdateDocument<'_>,
    keys: Option<KeyColumns<'_>>,
    (tenant_id, resource_type): (&str, &str),
    stale: &[(&str, i64)],
    rows: &[ValueRow<'_>],
) -> QueryResult<i64> {
    let values = PgUpdateValues {
        tenant_id,
        resource_type,
        stale_paths: stale.iter().map(|k| k.0).collect(),
        stale_ordinals: stale.iter().map(|k| k.1).collect(),
        arrays: PgArrays::new(rows),
    };
    match keys {
        None => PgUpdateDocumentValues { doc, values }.get_result(c),
        Some(keys) => PgUpdateResourceValues {
            update: UpdateResource { doc, keys },
            values,
        }
        .get_result(c),
    }
}

/// The index-row part of [`pg_update_with_values`].
struct PgUpdateValues<'a> {
    tenant_id: &'a str,
    resource_type: &'a str,
    stale_paths: Vec<&'a str>,
    stale_ordinals: Vec<i64>,
    arrays: PgArrays<'a>,
}

impl PgUpdateValues<'_> {
    /// `WITH u AS (<update> RETURNING id), d AS (DELETE …), i AS (INSERT …) SELECT count(*)`
    fn walk<'b>(
        &'b self,
        mut out: AstPass<'_, 'b, Pg>,
        update: &'b dyn QueryFragment<Pg>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Text};
        out.push_sql("WITH u AS (");
        update.walk_ast(out.reborrow())?;
        out.push_sql(
            " RETURNING id), d AS (DELETE FROM resource_values WHERE resource_id IN \
             (SELECT id FROM u) AND (path, ordinal) IN (SELECT * FROM unnest(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.stale_paths)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&self.stale_ordinals)?;
        out.push_sql("))), i AS (");
        out.push_sql(VALUE_COLUMNS);
        out.push_sql("u.id, ");
        out.push_bind_param::<Text, _>(&self.tenant_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.resource_type)?;
        out.push_sql(", v.p, v.o, v.s, v.n, v.b FROM u,");
        self.arrays.push_unnest(&mut out)?;
        out.push_sql(
            " ON CONFLICT (resource_id, path, ordinal) DO UPDATE SET \
             str_value = EXCLUDED.str_value, num_value = EXCLUDED.num_value, \
             bool_value = EXCLUDED.bool_value) SELECT count(*) FROM u",
        );
        Ok(())
    }
}

/// [`pg_update_with_values`] when the key columns stay as they are.
struct PgUpdateDocumentValues<'a> {
    doc: UpdateDocument<'a>,
    values: PgUpdateValues<'a>,
}

/// [`pg_update_with_values`] with the key columns.
struct PgUpdateResourceValues<'a> {
    update: UpdateResource<'a>,
    values: PgUpdateValues<'a>,
}

impl diesel::query_builder::Query for PgUpdateDocumentValues<'_> {
    type SqlType = diesel::sql_types::BigInt;
}

impl diesel::query_builder::Query for PgUpdateResourceValues<'_> {
    type SqlType = diesel::sql_types::BigInt;
}

impl QueryFragment<Pg> for PgUpdateDocumentValues<'_> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.values.walk(out, &self.doc)
    }
}

impl QueryFragment<Pg> for PgUpdateResourceValues<'_> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.values.walk(out, &self.update)
    }
}

/// A group nested in others (`origin`) and one group above it (`id`, its resource type and
/// display name).
pub type Ancestor = (String, String, String, Option<String>);

/// Every group that holds, at any depth, one of the groups `origins`: one row per (origin,
/// group above it), in no particular order. Each group is visited once, so a cycle of groups
/// ends. PostgreSQL: one statement, a recursive walk up `group_members` (each statement is a
/// round trip). SQLite: a statement per level of nesting, then one for the groups' rows, each
/// of a fixed shape; a recursive statement cost more there, for the temporary tables it builds
/// on every execution.
pub fn ancestors(conn: &mut AnyConnection, origins: &[&str]) -> QueryResult<Vec<Ancestor>> {
    if origins.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        AnyConnection::Sqlite(c) => sqlite_ancestors(c, origins),
        AnyConnection::Postgres(c) => PgAncestors {
            origins: origins.to_vec(),
        }
        .load(c),
    }
}

/// The columns of an [`Ancestor`].
type AncestorColumns = (
    diesel::sql_types::Text,
    diesel::sql_types::Text,
    diesel::sql_types::Text,
    diesel::sql_types::Nullable<diesel::sql_types::Text>,
);

fn sqlite_ancestors(
    c: &mut diesel::SqliteConnection,
    origins: &[&str],
) -> QueryResult<Vec<Ancestor>> {
    use std::collections::{HashMap, HashSet};
    let json = |ids: &[&str]| serde_json::Value::from(ids).to_string();
    // The groups each group reached is a direct member of, a level at a time.
    let mut parents: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen: HashSet<String> = origins.iter().map(|o| o.to_string()).collect();
    let mut level: Vec<String> = seen.iter().cloned().collect();
    while !level.is_empty() {
        let ids: Vec<&str> = level.iter().map(String::as_str).collect();
        let rows: Vec<(String, String)> = SqliteParents { ids: &json(&ids) }.load(c)?;
        level.clear();
        for (member, group) in rows {
            if seen.insert(group.clone()) {
                level.push(group.clone());
            }
            parents.entry(member).or_default().push(group);
        }
    }
    // Each origin's ancestors: a walk of `parents` from it.
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for origin in origins {
        let mut reached: HashSet<&str> = HashSet::new();
        let mut todo: Vec<&str> = vec![origin];
        while let Some(g) = todo.pop() {
            for p in parents.get(g).into_iter().flatten() {
                if reached.insert(p) {
                    pairs.push((origin, p));
                    todo.push(p);
                }
            }
        }
    }
    let above: HashSet<&str> = pairs.iter().map(|(_, g)| *g).collect();
    if above.is_empty() {
        return Ok(Vec::new());
    }
    let above: Vec<&str> = above.into_iter().collect();
    let rows: Vec<(String, String, Option<String>)> = SqliteRows { ids: &json(&above) }.load(c)?;
    let rows: HashMap<String, (String, Option<String>)> = rows
        .into_iter()
        .map(|(id, rt, display)| (id, (rt, display)))
        .collect();
    Ok(pairs
        .into_iter()
        .filter_map(|(origin, g)| {
            let (rt, display) = rows.get(g)?;
            Some((
                origin.to_string(),
                g.to_string(),
                rt.clone(),
                display.clone(),
            ))
        })
        .collect())
}

/// SQLite: the `(member, group)` memberships of the resources whose ids are bound as one JSON
/// array. `json_each` drives the join (`CROSS JOIN` keeps it the outer loop): an index probe
/// per id, and no temporary table.
struct SqliteParents<'a> {
    ids: &'a str,
}

impl diesel::query_builder::Query for SqliteParents<'_> {
    type SqlType = (diesel::sql_types::Text, diesel::sql_types::Text);
}

impl QueryFragment<Sqlite> for SqliteParents<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("SELECT gm.member_id, gm.group_id FROM json_each(");
        out.push_bind_param::<diesel::sql_types::Text, _>(self.ids)?;
        out.push_sql(") j CROSS JOIN group_members gm ON gm.member_id = j.value");
        Ok(())
    }
}

/// SQLite: `(id, resource type, display)` of the resources whose ids are bound as one JSON
/// array, as [`SqliteParents`] reads.
struct SqliteRows<'a> {
    ids: &'a str,
}

impl diesel::query_builder::Query for SqliteRows<'_> {
    type SqlType = (
        diesel::sql_types::Text,
        diesel::sql_types::Text,
        diesel::sql_types::Nullable<diesel::sql_types::Text>,
    );
}

impl QueryFragment<Sqlite> for SqliteRows<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("SELECT r.id, r.resource_type, r.display FROM json_each(");
        out.push_bind_param::<diesel::sql_types::Text, _>(self.ids)?;
        out.push_sql(") j CROSS JOIN resources r ON r.id = j.value");
        Ok(())
    }
}

/// PostgreSQL: the origins as an array. PostgreSQL guesses the size of the walk and would
/// plan its step and the final join as hash joins over whole tables; `LATERAL (… OFFSET 0)`
/// keeps each an index probe per row.
struct PgAncestors<'a> {
    origins: Vec<&'a str>,
}

impl diesel::query_builder::Query for PgAncestors<'_> {
    type SqlType = AncestorColumns;
}

impl QueryFragment<Pg> for PgAncestors<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Array, Text};
        out.push_sql(
            "WITH RECURSIVE up (origin, id) AS (SELECT member_id, group_id FROM group_members \
             WHERE member_id = ANY(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.origins)?;
        out.push_sql(
            ") UNION SELECT up.origin, p.group_id FROM up CROSS JOIN LATERAL \
             (SELECT gm.group_id FROM group_members gm WHERE gm.member_id = up.id OFFSET 0) p) \
             SELECT up.origin, r.id, r.resource_type, r.display FROM up CROSS JOIN LATERAL \
             (SELECT r.id, r.resource_type, r.display FROM resources r \
             WHERE r.id = up.id OFFSET 0) r",
        );
        Ok(())
    }
}
