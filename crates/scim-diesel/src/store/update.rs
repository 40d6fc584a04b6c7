//! Updates: the plan of an update (which index rows change), membership changes, and the
//! update paths of both databases.

use super::*;

/// Which of a resource's attribute-value index rows a write changes, as positions: stored
/// rows to delete (in the stored list) and new rows to insert (in the new list). Rows equal in
/// both are left alone: a PATCH of two attributes touches a few index entries instead of
/// deleting and re-inserting all of them (each a scattered index page).
pub(super) struct ValueDiff {
    stale: Vec<usize>,
    insert: Vec<usize>,
}

impl ValueDiff {
    pub(super) fn new(values: &[IndexRow], old: &[IndexRow]) -> Self {
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
    pub(super) fn write(
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
pub(super) struct UpdatePlan {
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
    pub(super) fn new(
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
    pub(super) fn run(
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
    pub(super) fn run_if_current(
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
    pub(super) fn into_record(self, now: &str) -> ResourceRecord {
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
pub(super) type Links = (Option<Vec<MemberRef>>, Option<Vec<MemberRef>>);

pub(super) fn links_of(
    conn: &mut AnyConnection,
    id: &str,
    rt: &str,
    include: Include,
) -> QueryResult<Links> {
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
pub(super) fn check_member_ops(
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
            let gone: HashSet<&str> = missing.iter().map(String::as_str).collect();
            wanted.retain(|w| !gone.contains(w));
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
pub(super) fn apply_member_ops(
    conn: &mut AnyConnection,
    group: &str,
    ops: &[MemberOp],
) -> QueryResult<()> {
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
pub(super) fn finish_update(
    plan: UpdatePlan,
    now: &str,
    include: Include,
    links: Links,
) -> ResourceRecord {
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
    pub(super) fn update_in_one_statement(
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
    pub(super) fn update_for_token(
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
    /// write landed since the row was read, or got in the way as [`run_again`] tells, and
    /// nothing was written).
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
            // Another writer got in between (a deadlock PostgreSQL broke, a member deleted
            // meanwhile): nothing was written.
            Err(e) if run_again(&e) => None,
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
                // The row is locked as it is read (`FOR NO KEY UPDATE`, see `Lock`).
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
