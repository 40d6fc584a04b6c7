//! Creates: the create job, the batched PostgreSQL create and the SQLite one.

use super::*;

/// What the client gets back from a create: the document as written.
pub(super) fn created_record(
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
pub(super) struct TokenJob {
    pub(super) hash: String,
    pub(super) found: std::sync::OnceLock<TokenRecord>,
}

/// A create as the writer runs it: everything it writes, owned, so that it can be queued.
pub(super) struct CreateJob {
    id: String,
    pub(super) tenant: String,
    rt: String,
    now: String,
    external_id: Option<String>,
    keys: IndexKeys,
    /// the document as stored text
    data: String,
    password_hash: Option<String>,
    values: Vec<scim_core::index::IndexRow>,
    pub(super) member_ops: Vec<MemberOp>,
    unknown_members: UnknownMembers,
    /// what to read back in the same transaction (a new group's members)
    pub(super) read: Include,
    /// PostgreSQL: the hash of the caller's token, when the create is for that token's tenant
    /// (`tenant` is then unused; see `ResourceStore::create_by_token`)
    pub(super) token: Option<String>,
}

impl CreateJob {
    /// The job that creates `write`, with what is left of `write` for the record.
    pub(super) fn new(
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
    pub(super) fn run(&self, c: &mut AnyConnection) -> Result<Links, TxError> {
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
pub(super) fn names_nothing(key: &str) -> bool {
    key.contains('\0')
}

impl DieselStore {
    /// PostgreSQL: a create without membership changes, as one statement of its own. What it
    /// created has no links to read back (a group with no members, in no group).
    pub(super) fn pg_create_alone(&self, job: &CreateJob) -> Result<Links, TxError> {
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
    pub(super) fn pg_create_batch(&self, jobs: &[CreateJob]) -> Vec<combine::Outcome<TxError>> {
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
