//! The few operations that differ between SQLite and PostgreSQL. Every branch here is
//! exercised by the store tests on both databases.

use diesel::prelude::*;

use crate::conn::AnyConnection;
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
    let rows: Vec<MemberRow<'_>> = members
        .iter()
        .map(|m| MemberRow {
            group_id: group,
            member_id: m,
        })
        .collect();
    match conn {
        AnyConnection::Sqlite(c) => diesel::insert_or_ignore_into(group_members::table)
            .values(&rows)
            .execute(c),
        AnyConnection::Postgres(c) => diesel::insert_into(group_members::table)
            .values(&rows)
            .on_conflict_do_nothing()
            .execute(c),
    }
}

/// Locks a resource row for the rest of the write transaction, so concurrent
/// read-modify-write cycles on one resource queue instead of racing.
/// PostgreSQL: `SELECT … FOR UPDATE`. SQLite: nothing to do, `BEGIN IMMEDIATE` already holds
/// the database write lock.
pub fn lock_resource(conn: &mut AnyConnection, id: &str) -> QueryResult<()> {
    use crate::schema::resources;
    match conn {
        AnyConnection::Sqlite(_) => Ok(()),
        AnyConnection::Postgres(c) => resources::table
            .filter(resources::id.eq(id))
            .select(resources::id)
            .for_update()
            .load::<String>(c)
            .map(|_| ()),
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

/// Inserts index rows with one multi-row `INSERT` (placeholders differ per backend).
pub fn insert_values(conn: &mut AnyConnection, rows: &[ValueRow<'_>]) -> QueryResult<usize> {
    use diesel::sql_types::{BigInt, Bool, Double, Nullable, Text};
    if rows.is_empty() {
        return Ok(0);
    }
    let head = "INSERT INTO resource_values (resource_id, tenant_id, resource_type, path, ordinal, str_value, num_value, bool_value) VALUES ";
    let mut sql = String::with_capacity(head.len() + rows.len() * 48);
    sql.push_str(head);
    let pg = matches!(conn, AnyConnection::Postgres(_));
    for i in 0..rows.len() {
        if i > 0 {
            sql.push(',');
        }
        if pg {
            let b = i * 8;
            sql.push_str(&format!(
                "(${},${},${},${},${},${},${},${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8
            ));
        } else {
            sql.push_str("(?,?,?,?,?,?,?,?)");
        }
    }
    macro_rules! run {
        ($c:expr, $db:ty) => {{
            let mut q = diesel::sql_query(sql).into_boxed::<$db>();
            for r in rows {
                q = q
                    .bind::<Text, _>(r.resource_id)
                    .bind::<Text, _>(r.tenant_id)
                    .bind::<Text, _>(r.resource_type)
                    .bind::<Text, _>(r.path)
                    .bind::<BigInt, _>(r.ordinal)
                    .bind::<Nullable<Text>, _>(r.str_value)
                    .bind::<Nullable<Double>, _>(r.num_value)
                    .bind::<Nullable<Bool>, _>(r.bool_value);
            }
            q.execute($c)
        }};
    }
    match conn {
        AnyConnection::Sqlite(c) => run!(c, diesel::sqlite::Sqlite),
        AnyConnection::Postgres(c) => run!(c, diesel::pg::Pg),
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
/// data-modifying `WITH`, the rows selected against it). One statement is atomic on its own,
/// so a create is one round trip instead of four (`BEGIN`, two inserts, `COMMIT`). The
/// uniqueness of `userName` is enforced exactly as for a separate insert.
pub fn pg_insert_resource_with_values(
    c: &mut diesel::PgConnection,
    r: &NewResource<'_>,
    rows: &[ValueRow<'_>],
) -> QueryResult<usize> {
    use diesel::sql_types::{BigInt, Bool, Double, Nullable, Text};
    let insert = "INSERT INTO resources (id, tenant_id, resource_type, version, created, last_modified, external_id, user_name_ci, display_name_ci, display, data, password_hash) VALUES ($1, $2, $3, 1, $4, $4, $5, $6, $7, $8, $9, $10)";
    let mut sql = String::with_capacity(insert.len() + 200 + rows.len() * 40);
    if rows.is_empty() {
        sql.push_str(insert);
    } else {
        sql.push_str("WITH r AS (");
        sql.push_str(insert);
        sql.push_str(" RETURNING id) INSERT INTO resource_values (resource_id, tenant_id, resource_type, path, ordinal, str_value, num_value, bool_value) SELECT r.id, $2, $3, v.p, v.o, v.s, v.n, v.b FROM r, (VALUES ");
        for i in 0..rows.len() {
            let b = 11 + i * 5;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${},${},${},${},${})",
                b,
                b + 1,
                b + 2,
                b + 3,
                b + 4
            ));
        }
        sql.push_str(") AS v (p, o, s, n, b)");
    }
    let mut q = diesel::sql_query(sql)
        .into_boxed::<diesel::pg::Pg>()
        .bind::<Text, _>(r.id)
        .bind::<Text, _>(r.tenant_id)
        .bind::<Text, _>(r.resource_type)
        .bind::<Text, _>(r.created)
        .bind::<Nullable<Text>, _>(r.external_id)
        .bind::<Nullable<Text>, _>(r.user_name_ci)
        .bind::<Nullable<Text>, _>(r.display_name_ci)
        .bind::<Nullable<Text>, _>(r.display)
        .bind::<Text, _>(r.data)
        .bind::<Nullable<Text>, _>(r.password_hash);
    for row in rows {
        q = q
            .bind::<Text, _>(row.path)
            .bind::<BigInt, _>(row.ordinal)
            .bind::<Nullable<Text>, _>(row.str_value)
            .bind::<Nullable<Double>, _>(row.num_value)
            .bind::<Nullable<Bool>, _>(row.bool_value);
    }
    q.execute(c)
}
