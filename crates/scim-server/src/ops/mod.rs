//! Resource operations as plain (blocking) functions: the HTTP handlers and `/Bulk` both call
//! these, so a bulk operation behaves exactly like the same request sent alone.

use scim_core::messages::ListResponse;
use scim_core::patch::prepare_patch;
use scim_core::query::{decode_cursor, encode_cursor, paging, plan_filter, plan_sort};
use scim_core::render::{parse_etag, Projection, Rendered};
use scim_core::resource::{prepare_create, prepare_reactivation, prepare_replace};
use scim_core::store::{
    Include, IndexedField, ListQuery, Page, PointKeyBuf, PointRead, ResourceRecord, SecretChange,
    StoreFilter, TokenCreate, TokenRead, TokenUpdate,
};
use scim_core::{Ctx, ScimError, StoreError};
use serde_json::Value;

use crate::http::Params;
use crate::{now, AppState};

mod stream;

pub use stream::{reads_members, search_all, stream_get, stream_list, Piece};

/// What an operation produced.
#[derive(Debug)]
pub struct Outcome {
    /// the resource as SCIM JSON (absent for DELETE)
    pub body: Option<Vec<u8>>,
    /// its id
    pub id: Option<String>,
    /// version of the resource afterwards
    pub version: Option<i64>,
    /// URL of the resource
    pub location: Option<String>,
    /// the answer is the resource read afresh at `version`, page by page ([`stream_get`]): a
    /// write of a group whose members were asked for without a limit does not read them back
    pub read_after: bool,
}

/// What a successful write answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// the resource, as the request's `attributes` / `excludedAttributes` show it. When the
    /// client named neither, a PUT or PATCH of a group with more members than
    /// `SCIM_WRITE_RESPONSE_MAX_MEMBERS` answers without a body instead (204, which RFC 7644
    /// section 3.5.2 allows), so that a membership change never reads the whole group back.
    Resource,
    /// the resource with every member, however many (`Prefer: return=representation`)
    Representation,
    /// no body, only the version and location (`Prefer: return=minimal`; `/Bulk`, whose
    /// results carry no resources)
    Minimal,
}

/// What a write reads back for `reply`, given the request's projection.
fn write_include(
    st: &AppState,
    ctx: &Ctx<'_>,
    params: &Params,
    proj: &Projection,
    reply: Reply,
) -> Include {
    let chosen = params.get("attributes").is_some() || params.get("excludedAttributes").is_some();
    match reply {
        Reply::Minimal => Include::default(),
        Reply::Resource if !chosen => Include {
            member_limit: Some(st.config.write_response_max_members),
            ..proj.include(ctx)
        },
        _ => proj.include(ctx),
    }
}

/// The answer to a write of `rec`: the resource, or no body when `reply` is minimal or the
/// group had too many members to list (`include.member_limit`).
fn written(
    st: &AppState,
    ctx: &Ctx<'_>,
    rec: &ResourceRecord,
    proj: &Projection,
    include: Include,
    reply: Reply,
) -> Outcome {
    let unlisted = include.members && include.member_limit.is_some() && rec.members.is_none();
    if reply == Reply::Minimal || unlisted {
        return Outcome {
            body: None,
            id: Some(rec.id.clone()),
            version: Some(rec.version),
            location: Some(location(st, ctx, &rec.id)),
            read_after: false,
        };
    }
    done(st, ctx, rec, proj)
}

fn location(st: &AppState, ctx: &Ctx<'_>, id: &str) -> String {
    format!("{}{}/{}", st.config.public_url, ctx.rt.endpoint, id)
}

/// Applies the password policy: a clear-text password becomes an argon2id hash, or nothing at
/// all under `SCIM_PASSWORDS=ignore`. The clear text goes no further than this.
fn protect(st: &AppState, change: SecretChange) -> Result<SecretChange, ScimError> {
    match change {
        _ if !st.config.hash_passwords => Ok(SecretChange::Keep),
        SecretChange::Set(clear) => scim_auth::hash_password(&clear)
            .map(SecretChange::Set)
            .map_err(|e| ScimError::internal(format!("hashing a password: {e}"))),
        other => Ok(other),
    }
}

/// [`protect`], once per clear text (`memo` keeps the last one and its hash): an update's
/// callback may run more than once.
fn protect_once(
    st: &AppState,
    change: SecretChange,
    memo: &mut Option<(String, String)>,
) -> Result<SecretChange, ScimError> {
    if let (SecretChange::Set(clear), Some((seen, hash))) = (&change, memo.as_ref()) {
        if clear == seen {
            return Ok(SecretChange::Set(hash.clone()));
        }
    }
    let clear = match &change {
        SecretChange::Set(c) => Some(c.clone()),
        _ => None,
    };
    let protected = protect(st, change)?;
    if let (Some(clear), SecretChange::Set(hash)) = (clear, &protected) {
        *memo = Some((clear, hash.clone()));
    }
    Ok(protected)
}

/// The context of an operation on resource type `rt`, with the server's strictness.
fn ctx<'a>(st: &'a AppState, rt: &str) -> Result<Ctx<'a>, ScimError> {
    Ok(Ctx::new(&st.registry, rt)?
        .with_strict(st.config.strict)
        .with_max_values(st.config.max_values))
}

fn projection(ctx: &Ctx<'_>, params: &Params) -> Projection {
    Projection::parse(
        ctx,
        params.get("attributes"),
        params.get("excludedAttributes"),
    )
}

fn done(st: &AppState, ctx: &Ctx<'_>, rec: &ResourceRecord, proj: &Projection) -> Outcome {
    Outcome {
        body: Some(to_json(&Rendered::new(
            ctx,
            rec,
            &st.config.public_url,
            proj,
        ))),
        id: Some(rec.id.clone()),
        version: Some(rec.version),
        location: Some(location(st, ctx, &rec.id)),
        read_after: false,
    }
}

/// Parses an `If-Match` / bulk `version` value.
pub fn expected_version(tag: Option<&str>) -> Result<Option<i64>, ScimError> {
    match tag.map(str::trim) {
        None | Some("*") | Some("") => Ok(None),
        Some(t) => parse_etag(t).map(Some).ok_or_else(|| {
            ScimError::precondition_failed("The version does not name a version of this resource")
        }),
    }
}

/// POST
pub fn create(
    st: &AppState,
    tenant: &str,
    rt: &str,
    body: &Value,
    params: &Params,
    reply: Reply,
) -> Result<Outcome, ScimError> {
    create_for(
        st,
        None,
        &|| Ok(tenant.to_string()),
        rt,
        body,
        params,
        reply,
    )
}

/// [`create`] for a caller: with `token` (the hash of a bearer token of this server), in that
/// token's tenant, the token checked by the store in the create's own statement where it can
/// (PostgreSQL, [`ResourceStore::create_by_token`](scim_core::store::ResourceStore::create_by_token):
/// one round trip instead of two); otherwise in the tenant `tenant` gives. A body that does
/// not validate is reported only once `tenant` has said the caller is good, and a password
/// is hashed (slow by design) only for a caller known to be one.
pub fn create_for(
    st: &AppState,
    token: Option<&str>,
    tenant: &dyn Fn() -> Result<String, ScimError>,
    rt: &str,
    body: &Value,
    params: &Params,
    reply: Reply,
) -> Result<Outcome, ScimError> {
    let (call, mut write) = match CreateCall::new(st, rt, body, params, reply) {
        Ok(prepared) => prepared,
        Err(e) => {
            tenant()?;
            return Err(e);
        }
    };
    let hashes = st.config.hash_passwords && matches!(write.password, SecretChange::Set(_));
    // The tenant, looked up now unless the store checks the token with the create.
    let known = match token {
        Some(_) if !hashes => None,
        _ => Some(tenant()?),
    };
    let resolved = || known.clone().map_or_else(tenant, Ok);
    // Hashing is slow by design: done here, before the transaction (without hashing a
    // password is not kept at all).
    write.password = protect(st, std::mem::take(&mut write.password))?;
    let (rt, id, time) = (call.ctx.rt.id.as_str(), call.id.as_str(), now());
    let created = match token.filter(|_| known.is_none()) {
        Some(hash) => match st
            .store
            .create_by_token(hash, rt, id, &time, write, call.include)
        {
            Ok(TokenCreate::Created(rec)) => Ok(*rec),
            Ok(TokenCreate::NoToken) => return Err(crate::auth::unauthorized()),
            Ok(TokenCreate::Unsupported(write)) => {
                st.store
                    .create(&resolved()?, rt, id, &time, *write, call.include)
            }
            Err(e) => Err(e),
        },
        None => st
            .store
            .create(&resolved()?, rt, id, &time, write, call.include),
    };
    finish_create(st, &call, body, reply, created, &resolved)
}

/// The answer to a create once the store has run it: a collision that
/// `SCIM_REACTIVATE_ON_CONFLICT` resolves is resolved here, in the tenant `tenant` gives.
fn finish_create(
    st: &AppState,
    call: &CreateCall<'_>,
    body: &Value,
    reply: Reply,
    created: Result<ResourceRecord, StoreError>,
    tenant: &dyn Fn() -> Result<String, ScimError>,
) -> Result<Outcome, ScimError> {
    let rec = match created {
        Err(StoreError::Conflict(_)) if reactivates(st, &call.ctx) => {
            reactivate(st, &call.ctx, &tenant()?, body, call.include)?
        }
        other => other?,
    };
    Ok(written(
        st,
        &call.ctx,
        &rec,
        &call.proj,
        call.include,
        reply,
    ))
}

/// A POST as the store sees it, with what its answer needs.
struct CreateCall<'a> {
    ctx: Ctx<'a>,
    proj: Projection,
    include: Include,
    id: String,
}

impl<'a> CreateCall<'a> {
    fn new(
        st: &'a AppState,
        rt: &str,
        body: &Value,
        params: &Params,
        reply: Reply,
    ) -> Result<(Self, scim_core::store::ResourceWrite), ScimError> {
        let ctx = ctx(st, rt)?;
        let mut write = prepare_create(&ctx, body)?;
        write.unknown_members = st.config.unknown_members;
        let proj = projection(&ctx, params);
        let include = create_include(&ctx, &proj, reply);
        // Time-ordered (UUIDv7): a new resource's rows land at the end of the primary-key and
        // low-cardinality index ranges, on pages already in cache, instead of on a random page
        // each; still opaque and unguessable enough (74 random bits) for an id that is not a
        // secret.
        let id = uuid::Uuid::now_v7().to_string();
        let call = CreateCall {
            ctx,
            proj,
            include,
            id,
        };
        Ok((call, write))
    }
}

/// Whether a create that collides with an existing `userName` re-activates that user.
fn reactivates(st: &AppState, ctx: &Ctx<'_>) -> bool {
    st.config.reactivate_on_conflict && ctx.rt.id == "User"
}

/// [`create`] detached from this thread while the write waits for the database (see
/// [`ResourceStore::create_detached`](scim_core::store::ResourceStore::create_detached)):
/// `done` is called with the outcome by the store; finish it with [`create_answer`].
/// `Ok(Err(done))`: not taken; call [`create`]. For a body that does not set a password
/// ([`may_set_password`]).
pub fn create_detached(
    st: &AppState,
    tenant: &str,
    rt: &str,
    body: &Value,
    params: &Params,
    reply: Reply,
    done: scim_core::store::WriteDone,
) -> Result<Result<(), scim_core::store::WriteDone>, ScimError> {
    let (call, mut write) = CreateCall::new(st, rt, body, params, reply)?;
    if st.config.hash_passwords && matches!(write.password, SecretChange::Set(_)) {
        // Hashing is slow by design: not on this thread.
        return Ok(Err(done));
    }
    // Without hashing a password is not kept at all (nothing slow here either way).
    write.password = protect(st, std::mem::take(&mut write.password))?;
    let taken = st.store.create_detached(
        tenant,
        &call.ctx.rt.id,
        &call.id,
        &now(),
        write,
        call.include,
        done,
    );
    Ok(taken.map_err(|back| back.1))
}

/// The answer to a detached create ([`create_detached`]): `Ok(None)` when it collided with a
/// user that `SCIM_REACTIVATE_ON_CONFLICT` re-activates (call [`create`]).
pub fn create_answer(
    st: &AppState,
    rt: &str,
    params: &Params,
    reply: Reply,
    created: Result<ResourceRecord, StoreError>,
) -> Result<Option<Outcome>, ScimError> {
    let ctx = ctx(st, rt)?;
    let rec = match created {
        Err(StoreError::Conflict(_)) if reactivates(st, &ctx) => return Ok(None),
        other => other?,
    };
    let proj = projection(&ctx, params);
    let include = create_include(&ctx, &proj, reply);
    Ok(Some(written(st, &ctx, &rec, &proj, include, reply)))
}

/// What a create reads back: a new group lists what the request sent (bounded by the body
/// size), so no member limit.
fn create_include(ctx: &Ctx<'_>, proj: &Projection, reply: Reply) -> Include {
    match reply {
        Reply::Minimal => Include::default(),
        _ => proj.include(ctx),
    }
}

/// `SCIM_REACTIVATE_ON_CONFLICT`: the POST collided with an existing userName; if that user is
/// inactive it is updated from the body and re-activated (core decides, see
/// `prepare_reactivation`), otherwise the answer stays 409.
fn reactivate(
    st: &AppState,
    ctx: &Ctx<'_>,
    tenant: &str,
    body: &Value,
    include: Include,
) -> Result<ResourceRecord, ScimError> {
    let duplicate = || ScimError::uniqueness("A User with this userName already exists");
    let user_name = body
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("userName")))
        .and_then(|(_, v)| v.as_str())
        .ok_or_else(duplicate)?;
    let filter = StoreFilter::Eq(IndexedField::UserName, scim_core::resource::fold(user_name));
    let found = st.store.list(
        tenant,
        &ctx.rt.id,
        &ListQuery {
            filter,
            start_index: 1,
            count: 1,
            include: Include::default(),
            sort: None,
            after: None,
        },
    )?;
    let existing = found.resources.first().ok_or_else(duplicate)?;
    let unknown_members = st.config.unknown_members;
    let rec = st.store.update(
        tenant,
        &ctx.rt.id,
        &existing.id,
        &now(),
        None,
        include,
        &mut |cur| {
            let mut write = prepare_reactivation(ctx, body, cur)?;
            write.unknown_members = unknown_members;
            Ok(write)
        },
    )?;
    log::info!("re-activated user {} on a conflicting create", rec.id);
    Ok(rec)
}

/// GET one
pub fn get(
    st: &AppState,
    tenant: &str,
    rt: &str,
    id: &str,
    params: &Params,
) -> Result<Outcome, ScimError> {
    let ctx = ctx(st, rt)?;
    let proj = projection(&ctx, params);
    let rec = st.store.get(tenant, &ctx.rt.id, id, proj.include(&ctx))?;
    Ok(done(st, &ctx, &rec, &proj))
}

/// The point read that answers GET one for the caller holding the token with this hash, the
/// token checked in the read's own statement (see [`ResourceStore::point_read_by_token`]).
///
/// [`ResourceStore::point_read_by_token`]: scim_core::store::ResourceStore::point_read_by_token
pub fn get_point(
    st: &AppState,
    token_hash: &str,
    rt: &str,
    id: &str,
    params: &Params,
) -> Result<PointRead, ScimError> {
    let ctx = ctx(st, rt)?;
    let proj = projection(&ctx, params);
    Ok(PointRead {
        token_hash: token_hash.to_owned(),
        resource_type: ctx.rt.id.clone(),
        key: PointKeyBuf::Id(id.to_owned()),
        include: proj.include(&ctx),
    })
}

/// GET one from what the read of [`get_point`] found. `None`: the store could not fold the
/// token check into the read; resolve the token and call [`get`].
pub fn get_answer(
    st: &AppState,
    rt: &str,
    params: &Params,
    read: TokenRead,
) -> Result<Option<Outcome>, ScimError> {
    let ctx = ctx(st, rt)?;
    let proj = projection(&ctx, params);
    match read {
        TokenRead::Unsupported => Ok(None),
        TokenRead::NoToken => Err(crate::auth::unauthorized()),
        TokenRead::Read(None) => Err(StoreError::NotFound.into()),
        TokenRead::Read(Some(rec)) => Ok(Some(done(st, &ctx, &rec, &proj))),
    }
}

/// Runs a point read on this thread.
pub fn read_point(st: &AppState, read: &PointRead) -> Result<TokenRead, ScimError> {
    Ok(st.store.point_read_by_token(
        &read.token_hash,
        &read.resource_type,
        read.key.as_key(),
        read.include,
    )?)
}

/// A list request, checked and planned; nothing read yet.
#[derive(Debug)]
pub struct ListPlan {
    rt: String,
    query: ListQuery,
    proj: Projection,
    start_index: u64,
    count: u64,
    cursor: bool,
    sorted_walk: bool,
    backward: bool,
    has_position: bool,
}

impl ListPlan {
    /// Whether answering it costs a few index probes however much is stored: the filter pins
    /// one resource (`userName eq`, `id eq`) and no member list is read.
    pub fn is_point_read(&self) -> bool {
        self.query.filter.pins_one_row() && !self.query.include.members
    }
}

/// Checks and plans a list or `.search` request (parameters, filter, sort, paging,
/// projection) without reading the store.
pub fn plan_list(st: &AppState, rt: &str, params: &Params) -> Result<ListPlan, ScimError> {
    let ctx = ctx(st, rt)?;
    let filter = plan_filter(&ctx, params.get("filter"), &st.config.query)?;
    let sort = plan_sort(&ctx, params.get("sortBy"), params.get("sortOrder"))?;
    let (start_index, count) = paging(
        params.int("startIndex")?,
        params.int("count")?,
        &st.config.query,
    );
    let proj = projection(&ctx, params);
    // RFC 9865 cursor paging: `cursor` present (empty for the first page).
    let cursor = params.get("cursor");
    let after = match cursor.map(str::trim) {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c)?),
    };
    if cursor.is_some() {
        if params.get("startIndex").is_some() {
            return Err(ScimError::invalid_value(
                "Use either cursor or startIndex, not both",
            ));
        }
        if sort.as_ref().is_some_and(|s| !sorts_by_user_name(s)) {
            return Err(ScimError::invalid_value(
                "Cursor paging follows creation order, or userName order with sortBy=userName; \
                 it cannot be combined with another sortBy",
            ));
        }
        // A position in one order means nothing in another.
        if after
            .as_ref()
            .is_some_and(|a| a.key.is_some() != sort.is_some())
        {
            return Err(ScimError::bad_request(
                scim_core::ScimType::InvalidCursor,
                "The cursor belongs to a walk in another order (sortBy changed)",
            ));
        }
    }
    let sorted_walk = cursor.is_some() && sort.is_some();
    let backward = after.as_ref().is_some_and(|a| a.backward);
    let has_position = after.is_some();
    // One extra row tells whether another page exists.
    let fetch = if cursor.is_some() && count > 0 {
        count + 1
    } else {
        count
    };
    let query = ListQuery {
        filter,
        start_index,
        count: fetch,
        include: proj.include(&ctx),
        sort,
        after,
    };
    Ok(ListPlan {
        rt: ctx.rt.id.clone(),
        query,
        proj,
        start_index,
        count,
        cursor: cursor.is_some(),
        sorted_walk,
        backward,
        has_position,
    })
}

/// Whether `GET /{rt}/{id}` with these parameters is a point read: always, unless it reads a
/// group's member list.
pub fn get_is_point_read(st: &AppState, rt: &str, params: &Params) -> bool {
    ctx(st, rt).is_ok_and(|ctx| !projection(&ctx, params).include(&ctx).members)
}

/// Answers a planned list request (`GET` list and `.search`) with the ListResponse as SCIM JSON.
pub fn run_list(st: &AppState, tenant: &str, plan: &ListPlan) -> Result<Vec<u8>, ScimError> {
    let ctx = ctx(st, &plan.rt)?;
    let page = st.store.list(tenant, &ctx.rt.id, &plan.query)?;
    Ok(list_body(st, &ctx, plan, page))
}

/// The point read that answers a planned list for the caller holding the token with this hash
/// (see [`get_point`]), when the plan pins one resource by `id` or `userName` on its first
/// page; `None`: run it with [`run_list`].
pub fn list_point(token_hash: &str, plan: &ListPlan) -> Option<PointRead> {
    let q = &plan.query;
    let key = match &q.filter {
        _ if q.sort.is_some() || q.after.is_some() || q.start_index > 1 || q.count == 0 => {
            return None
        }
        StoreFilter::Eq(IndexedField::Id, v) => PointKeyBuf::Id(v.clone()),
        StoreFilter::Eq(IndexedField::UserName, v) => PointKeyBuf::UserName(v.clone()),
        _ => return None,
    };
    Some(PointRead {
        token_hash: token_hash.to_owned(),
        resource_type: plan.rt.clone(),
        key,
        include: q.include,
    })
}

/// The ListResponse from what the read of [`list_point`] found. `None`: the store could not
/// fold the token check into the read; resolve the token and call [`run_list`].
pub fn list_answer(
    st: &AppState,
    plan: &ListPlan,
    read: TokenRead,
) -> Result<Option<Vec<u8>>, ScimError> {
    let found = match read {
        TokenRead::Unsupported => return Ok(None),
        TokenRead::NoToken => return Err(crate::auth::unauthorized()),
        TokenRead::Read(found) => found,
    };
    let ctx = ctx(st, &plan.rt)?;
    let resources: Vec<ResourceRecord> = found.into_iter().map(|rec| *rec).collect();
    let page = Page {
        total: resources.len() as u64,
        resources,
    };
    Ok(Some(list_body(st, &ctx, plan, page)))
}

/// The ListResponse of a page read for a plan.
fn list_body(st: &AppState, ctx: &Ctx<'_>, plan: &ListPlan, page: Page) -> Vec<u8> {
    let (frame, shown) = list_frame(plan, &page);
    let resources: Vec<Rendered> = page.resources[shown]
        .iter()
        .map(|r| Rendered::new(ctx, r, &st.config.public_url, &plan.proj))
        .collect();
    to_json(&ListResponse {
        total: frame.total,
        start_index: frame.start_index,
        resources,
        next_cursor: frame.next_cursor,
        previous_cursor: frame.previous_cursor,
    })
}

/// The ListResponse of a page read for a plan without its resources (one `()` for each), and
/// which of the page's resources it shows: the page may hold a probe row past the end.
fn list_frame(plan: &ListPlan, page: &Page) -> (ListResponse<()>, std::ops::Range<usize>) {
    let &ListPlan {
        start_index,
        count,
        cursor,
        sorted_walk,
        backward,
        has_position,
        ..
    } = plan;
    let n = page.resources.len();
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    // `more`: the probe row exists, so another page lies in the reading direction.
    let more = cursor && n > count;
    let shown = if backward {
        n.saturating_sub(count)..n // the probe row is the earliest one
    } else {
        0..n.min(count)
    };
    let resources = &page.resources[shown.clone()];
    // A cursor-paged response carries no `startIndex` (RFC 9865).
    let mut list = ListResponse::new(
        page.total,
        (!cursor).then_some(start_index),
        vec![(); resources.len()],
    );
    if cursor {
        let key = |r: &ResourceRecord, backward: bool| {
            encode_cursor(&scim_core::store::CursorKey {
                created: r.created.clone(),
                id: r.id.clone(),
                backward,
                key: sorted_walk.then(|| {
                    scim_core::resource::fold(
                        r.data.get("userName").and_then(Value::as_str).unwrap_or(""),
                    )
                }),
            })
        };
        // Forward: a next page if the probe found one; a previous page unless this is the first.
        // Backward: a previous page if the probe found one; a next page always (we came from it).
        let (has_next, has_previous) = if backward {
            (true, more)
        } else {
            (more, has_position)
        };
        if let (true, Some(last)) = (has_next, resources.last()) {
            list.next_cursor = Some(key(last, false));
        }
        if let (true, Some(first)) = (has_previous, resources.first()) {
            list.previous_cursor = Some(key(first, true));
        }
    }
    (list, shown)
}

/// SCIM JSON of a rendered resource or a list of them (maps of strings and JSON values, which
/// always serialize).
fn to_json(body: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_default()
}

/// Whether a sort is by `userName` on its own column: the one order cursor paging supports
/// besides creation order (it is unique, so a position in it is exact).
fn sorts_by_user_name(sort: &scim_core::store::SortKey) -> bool {
    matches!(
        sort.target,
        scim_core::store::SortTarget::Column(scim_core::store::Column::UserName)
    )
}

/// PUT or PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// PUT
    Replace,
    /// PATCH
    Patch,
}

/// A PUT or PATCH as the store sees it, with what its answer needs.
struct UpdateCall<'a> {
    ctx: Ctx<'a>,
    proj: Projection,
    /// what the store reads back
    include: Include,
    /// every member asked for: read after the write ([`Outcome::read_after`])
    read_after: bool,
    reply: Reply,
}

impl<'a> UpdateCall<'a> {
    fn new(st: &'a AppState, rt: &str, params: &Params, reply: Reply) -> Result<Self, ScimError> {
        let ctx = ctx(st, rt)?;
        let proj = projection(&ctx, params);
        let include = write_include(st, &ctx, params, &proj, reply);
        // Every member asked for: read afresh after the write, page by page, not inside it.
        let read_after = include.members && include.member_limit.is_none();
        let include = Include {
            members: include.members && !read_after,
            ..include
        };
        Ok(UpdateCall {
            ctx,
            proj,
            include,
            read_after,
            reply,
        })
    }

    /// The answer to the update that wrote `rec`.
    fn answer(&self, st: &AppState, rec: &ResourceRecord) -> Outcome {
        if self.read_after {
            return Outcome {
                body: None,
                id: Some(rec.id.clone()),
                version: Some(rec.version),
                location: Some(location(st, &self.ctx, &rec.id)),
                read_after: true,
            };
        }
        written(st, &self.ctx, rec, &self.proj, self.include, self.reply)
    }
}

/// The write of a PUT or PATCH computed from the stored resource `cur`; a password is hashed
/// once per request (the store may call this more than once), through `hashed`.
fn update_write(
    st: &AppState,
    ctx: &Ctx<'_>,
    body: &Value,
    change: Change,
    cur: &ResourceRecord,
    hashed: &mut Option<(String, String)>,
) -> Result<scim_core::store::ResourceWrite, ScimError> {
    let mut write = match change {
        Change::Replace => prepare_replace(ctx, body, cur)?,
        Change::Patch => prepare_patch(ctx, body, cur, &st.config.query.filter)?,
    };
    write.unknown_members = st.config.unknown_members;
    write.password = protect_once(st, std::mem::take(&mut write.password), hashed)?;
    Ok(write)
}

/// A PUT or PATCH: what the request names and sends.
#[derive(Debug, Clone, Copy)]
pub struct UpdateRequest<'a> {
    /// resource type id
    pub rt: &'a str,
    /// resource id
    pub id: &'a str,
    /// the request body
    pub body: &'a Value,
    /// its query parameters (`attributes`, `excludedAttributes`)
    pub params: &'a Params,
    /// `If-Match`
    pub expected: Option<i64>,
    /// PUT or PATCH
    pub change: Change,
    /// what to answer with
    pub reply: Reply,
}

/// `SCIM_PATCH_MAX_OPERATIONS`: a PATCH with more operations is refused before any work (413,
/// as `/Bulk` answers more than `maxOperations`).
fn check_operations(st: &AppState, req: &UpdateRequest<'_>) -> Result<(), ScimError> {
    match req.change {
        Change::Patch => {
            scim_core::patch::check_operation_count(req.body, st.config.patch_max_operations)
                .map_err(|mut e| {
                    e.detail.push_str(" (SCIM_PATCH_MAX_OPERATIONS)");
                    e
                })
        }
        Change::Replace => Ok(()),
    }
}

/// PUT / PATCH
pub fn update(st: &AppState, tenant: &str, req: &UpdateRequest<'_>) -> Result<Outcome, ScimError> {
    update_for(st, None, &|| Ok(tenant.to_string()), req)
}

/// [`update`] for a caller: with `token` (the hash of a bearer token of this server), in that
/// token's tenant, the token checked by the store's read of the resource where the store can
/// (PostgreSQL, [`ResourceStore::update_by_token`](scim_core::store::ResourceStore::update_by_token));
/// otherwise in the tenant `tenant` gives. An error of the request's own (too many
/// operations, bad parameters) is reported only once `tenant` has said the caller is good.
pub fn update_for(
    st: &AppState,
    token: Option<&str>,
    tenant: &dyn Fn() -> Result<String, ScimError>,
    req: &UpdateRequest<'_>,
) -> Result<Outcome, ScimError> {
    let checked =
        check_operations(st, req).and_then(|()| UpdateCall::new(st, req.rt, req.params, req.reply));
    let call = match checked {
        Ok(call) => call,
        Err(e) => {
            tenant()?;
            return Err(e);
        }
    };
    // The store may call this more than once (it prepares the write before taking the writer
    // and again if the resource changed meanwhile); a password (Okta's password sync) is hashed
    // once per request, and only the first time, which the store runs outside its writer.
    let mut hashed: Option<(String, String)> = None;
    let mut write =
        |cur: &ResourceRecord| update_write(st, &call.ctx, req.body, req.change, cur, &mut hashed);
    let (rt, time) = (call.ctx.rt.id.as_str(), now());
    if let Some(hash) = token {
        let folded = st.store.update_by_token(
            hash,
            rt,
            req.id,
            &time,
            req.expected,
            call.include,
            &mut write,
        )?;
        match folded {
            TokenUpdate::Updated(rec) => return Ok(call.answer(st, &rec)),
            TokenUpdate::NoToken => return Err(crate::auth::unauthorized()),
            TokenUpdate::Unsupported => {}
        }
    }
    let rec = st.store.update(
        &tenant()?,
        rt,
        req.id,
        &time,
        req.expected,
        call.include,
        &mut write,
    )?;
    Ok(call.answer(st, &rec))
}

/// Whether a PUT or PATCH body may set a password (any key or PATCH path that names one):
/// such an update hashes it, which is slow, so it is never run detached.
pub fn may_set_password(body: &Value) -> bool {
    fn names_password(s: &str) -> bool {
        s.as_bytes()
            .windows(8)
            .any(|w| w.eq_ignore_ascii_case(b"password"))
    }
    match body {
        Value::Object(o) => o.iter().any(|(k, v)| {
            names_password(k)
                || (k.eq_ignore_ascii_case("path") && v.as_str().is_some_and(names_password))
                || may_set_password(v)
        }),
        Value::Array(items) => items.iter().any(may_set_password),
        _ => false,
    }
}

/// [`update`] detached from this thread while the write waits for the database (see
/// [`ResourceStore::update_detached`](scim_core::store::ResourceStore::update_detached)):
/// prepared here, `done` called with the outcome by the store; finish it with
/// [`update_answer`]. `Ok(Err(done))`: not taken; call [`update`]. For a body that does not
/// set a password ([`may_set_password`]).
pub fn update_detached(
    st: &AppState,
    tenant: &str,
    req: &UpdateRequest<'_>,
    done: scim_core::store::WriteDone,
) -> Result<Result<(), scim_core::store::WriteDone>, ScimError> {
    check_operations(st, req)?;
    let call = UpdateCall::new(st, req.rt, req.params, req.reply)?;
    let mut hashed: Option<(String, String)> = None;
    Ok(st.store.update_detached(
        tenant,
        &call.ctx.rt.id,
        req.id,
        &now(),
        req.expected,
        call.include,
        &mut |cur| update_write(st, &call.ctx, req.body, req.change, cur, &mut hashed),
        done,
    ))
}

/// The answer to a detached update ([`update_detached`]) that wrote `rec`.
pub fn update_answer(
    st: &AppState,
    req: &UpdateRequest<'_>,
    rec: &ResourceRecord,
) -> Result<Outcome, ScimError> {
    Ok(UpdateCall::new(st, req.rt, req.params, req.reply)?.answer(st, rec))
}

/// DELETE
pub fn delete(
    st: &AppState,
    tenant: &str,
    rt: &str,
    id: &str,
    expected: Option<i64>,
) -> Result<Outcome, ScimError> {
    let ctx = ctx(st, rt)?;
    if ctx.rt.id == "User" && st.config.user_delete == crate::config::UserDelete::Deactivate {
        // `SCIM_USER_DELETE=deactivate`: the user is kept, as a PATCH of `active` would keep
        // it (same transaction, version check and index rows as any update).
        let body = serde_json::json!({
            "schemas": [scim_core::urns::PATCH_OP],
            "Operations": [{"op": "replace", "path": "active", "value": false}],
        });
        let req = UpdateRequest {
            rt,
            id,
            body: &body,
            params: &Params::default(),
            expected,
            change: Change::Patch,
            reply: Reply::Minimal,
        };
        update(st, tenant, &req)?;
        log::info!("deactivated user {id} on DELETE (SCIM_USER_DELETE=deactivate)");
    } else {
        st.store.delete(tenant, &ctx.rt.id, id, expected, &now())?;
    }
    Ok(Outcome {
        body: None,
        id: None,
        version: None,
        location: Some(location(st, &ctx, id)),
        read_after: false,
    })
}

/// Runs a bulk request (RFC 7644 section 3.7). Each operation is its own transaction, run in
/// dependency order; results are reported in request order. Stops after `failOnErrors` errors.
pub fn bulk(st: &AppState, tenant: &str, request: &scim_core::bulk::BulkRequest) -> Value {
    use scim_core::bulk::{execution_order, BULK_RESPONSE};
    use std::collections::HashMap;
    let (order, cyclic) = execution_order(&request.ops);
    let mut results: Vec<Option<Value>> = vec![None; request.ops.len()];
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut errors = 0usize;
    let failed = |op: &scim_core::bulk::BulkOp, e: &ScimError| {
        let mut r = serde_json::json!({"method": op.method.as_str(), "status": e.status.to_string(), "response": scim_core::messages::error_body(e)});
        if let Some(b) = &op.bulk_id {
            r["bulkId"] = Value::String(b.clone());
        }
        r
    };
    for &i in &cyclic {
        let e = ScimError::new(
            409,
            None,
            "This operation is part of a circular bulkId reference",
        );
        results[i] = Some(failed(&request.ops[i], &e));
        errors += 1;
    }
    for i in order {
        if request.fail_on_errors.is_some_and(|limit| errors >= limit) {
            break;
        }
        let op = &request.ops[i];
        match run_bulk_op(st, tenant, op, &ids) {
            Ok((status, out)) => {
                let mut r =
                    serde_json::json!({"method": op.method.as_str(), "status": status.to_string()});
                if let Some(b) = &op.bulk_id {
                    r["bulkId"] = Value::String(b.clone());
                    if let Some(id) = out.id {
                        ids.insert(b.clone(), id);
                    }
                }
                if let Some(l) = out.location {
                    r["location"] = Value::String(l);
                }
                if let Some(v) = out.version {
                    r["version"] = Value::String(scim_core::render::etag(v));
                }
                results[i] = Some(r);
            }
            Err(e) => {
                errors += 1;
                if e.status >= 500 {
                    log::error!(
                        "bulk operation {} failed: {}",
                        i + 1,
                        e.detail.escape_debug()
                    );
                }
                let shown = if e.status == 500 {
                    ScimError::internal("Internal server error")
                } else {
                    e
                };
                results[i] = Some(failed(op, &shown));
            }
        }
    }
    // Built by hand: `json!` would serialize the results into a copy of themselves.
    let mut body = serde_json::Map::new();
    body.insert("schemas".into(), serde_json::json!([BULK_RESPONSE]));
    body.insert(
        "Operations".into(),
        Value::Array(results.into_iter().flatten().collect()),
    );
    Value::Object(body)
}

fn run_bulk_op(
    st: &AppState,
    tenant: &str,
    op: &scim_core::bulk::BulkOp,
    ids: &std::collections::HashMap<String, String>,
) -> Result<(u16, Outcome), ScimError> {
    use scim_core::bulk::{substitute, substitute_path, BulkMethod};
    let unresolved = |b: String| {
        ScimError::new(
            409,
            None,
            format!("bulkId '{b}' does not name a resource created in this request"),
        )
    };
    let path = substitute_path(&op.path, ids).map_err(unresolved)?;
    let mut data = op.data.clone().unwrap_or(Value::Null);
    substitute(&mut data, ids).map_err(unresolved)?;
    let mut segs = path.trim_matches('/').split('/');
    let endpoint = format!("/{}", segs.next().unwrap_or(""));
    let id = segs.next().filter(|s| !s.is_empty());
    if segs.next().is_some() {
        return Err(ScimError::invalid_value(format!(
            "Unsupported bulk path '{path}'"
        )));
    }
    let rt = st
        .registry
        .resource_types()
        .iter()
        .find(|r| r.endpoint.eq_ignore_ascii_case(&endpoint))
        .ok_or_else(|| ScimError::invalid_value(format!("Unknown endpoint in bulk path '{path}'")))?
        .id
        .clone();
    let expected = expected_version(op.version.as_deref())?;
    let params = Params::default();
    // Bulk results carry no resources: nothing is read back (`Reply::Minimal`).
    let change = |id: &str, change: Change| {
        let req = UpdateRequest {
            rt: &rt,
            id,
            body: &data,
            params: &params,
            expected,
            change,
            reply: Reply::Minimal,
        };
        update(st, tenant, &req)
    };
    match (op.method, id) {
        (BulkMethod::Post, None) => Ok((
            201,
            create(st, tenant, &rt, &data, &params, Reply::Minimal)?,
        )),
        (BulkMethod::Put, Some(id)) => Ok((200, change(id, Change::Replace)?)),
        (BulkMethod::Patch, Some(id)) => Ok((200, change(id, Change::Patch)?)),
        (BulkMethod::Delete, Some(id)) => Ok((204, delete(st, tenant, &rt, id, expected)?)),
        (BulkMethod::Post, Some(_)) => Err(ScimError::invalid_value(
            "A bulk POST path names an endpoint, not a resource",
        )),
        (_, None) => Err(ScimError::invalid_value(format!(
            "A bulk {} path must name a resource",
            op.method.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::may_set_password;

    /// Every shape that can carry a password keeps the update off the detached path (where
    /// hashing would run on the request's thread); ordinary bodies do not.
    #[test]
    fn bodies_that_may_set_a_password_are_recognised() {
        for body in [
            json!({"userName": "a", "password": "x"}),
            json!({"Operations": [{"op": "replace", "value": {"PassWord": "x"}}]}),
            json!({"Operations": [{"op": "replace", "path": "password", "value": "x"}]}),
            json!({"Operations": [{"op": "remove", "PATH": "urn:ietf:params:scim:schemas:core:2.0:User:password"}]}),
            json!({"urn:ietf:params:scim:schemas:core:2.0:User:password": "x"}),
            json!({"Operations": [{"op": "add", "value": [{"nested": {"password": "x"}}]}]}),
        ] {
            assert!(may_set_password(&body), "{body}");
        }
        for body in [
            json!({"userName": "password@example.com", "displayName": "Password Reset Team"}),
            json!({"Operations": [{"op": "replace", "path": "title", "value": "password"}]}),
            json!({"Operations": [{"op": "replace", "path": "active", "value": false}]}),
        ] {
            assert!(!may_set_password(&body), "{body}");
        }
    }
}
