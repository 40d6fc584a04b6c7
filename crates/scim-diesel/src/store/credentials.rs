//! `impl CredentialStore`: bearer tokens and tenants.

use super::*;

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
