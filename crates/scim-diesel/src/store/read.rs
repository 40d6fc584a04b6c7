//! Reads: a row by id (also the row an update is planned from), a resource's links (members
//! and groups), member pages, the list query (`list_on`) and the index rows a read needs.

use super::*;

/// One resource by id.
///
/// Single-row reads use `get_result`, never `first`: `first` adds a bound `LIMIT 1`, and SQLite
/// (3.47 and later) plans a bound `LIMIT` by its value, so re-binding it expires the statement and
/// every call pays a full re-prepare (a quarter of the server's time under lookups).
pub(super) fn load_row(
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

/// How a PostgreSQL read-modify-write locks the row it reads (SQLite's one writer serialises
/// writes).
#[derive(Clone, Copy)]
pub(super) enum Lock {
    /// an update (`FOR NO KEY UPDATE`): it never changes the row's id, so a membership change
    /// elsewhere naming this resource (whose foreign key check takes `FOR KEY SHARE`) does
    /// not wait for it, nor deadlock with it
    Update,
    /// a delete (`FOR UPDATE`): foreign key checks of rows that would name it wait for it
    Delete,
}

/// [`load_row`] for a write, in its transaction. On PostgreSQL the row is locked by the
/// statement that reads it (see [`Lock`]): the read-modify-write holds the row from the moment
/// it has read it, and reads the newest committed version once a concurrent writer lets go,
/// in one statement instead of a lock and a read.
pub(super) fn load_row_for_update(
    conn: &mut AnyConnection,
    tenant: &str,
    rt: &str,
    id: &str,
    lock: Lock,
) -> QueryResult<Option<Row>> {
    let AnyConnection::Postgres(c) = conn else {
        return load_row(conn, tenant, rt, id);
    };
    let query = resources::table
        .filter(resources::tenant_id.eq(tenant))
        .filter(resources::resource_type.eq(rt))
        .filter(resources::id.eq(id))
        .select(Row::as_select());
    match lock {
        Lock::Update => query.for_no_key_update().get_result(c).optional(),
        Lock::Delete => query.for_update().get_result(c).optional(),
    }
}

/// An update's write computed from the resource as `conn` sees it now, with `If-Match` checked.
pub(super) fn prepare_update(
    conn: &mut AnyConnection,
    (tenant, rt, id): (&str, &str, &str),
    lock: bool,
    if_match: Option<i64>,
    update: &mut UpdateFn<'_>,
) -> Result<(ResourceRecord, ResourceWrite), TxError> {
    let row = match lock {
        true => load_row_for_update(conn, tenant, rt, id, Lock::Update)?,
        false => load_row(conn, tenant, rt, id)?,
    };
    let row = row.ok_or(StoreError::NotFound)?;
    update_from(row.into_record()?, if_match, update)
}

/// An update's write computed from `current`, with `If-Match` checked first.
pub(super) fn update_from(
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
pub(super) fn version_of(
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
pub(super) fn members_after(
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

pub(super) fn fill_includes(
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
pub(super) fn value_rows<'a>(
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
