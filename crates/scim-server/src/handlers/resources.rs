//! `/Users`, `/Groups` (and any resource type in the registry): extract, run the operation
//! from `ops` off the async workers, convert to a response.

use actix_web::http::StatusCode;
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use scim_core::store::{PointRead, PointReadDone, TokenRead};
use scim_core::ScimError;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::{
    if_match, if_none_match_hits, json_body, preferred_reply, resource_response, scim_json,
    scim_json_bytes, Params,
};
use crate::ops::{self, Change, Outcome, Piece};
use crate::{AppState, ResourceTypeId};

use super::stream::{respond_streamed, streamed, streamed_ok};

/// Runs blocking work (the store) on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ScimError> + Send + 'static,
) -> ApiResult<T> {
    web::block(f)
        .await
        .map_err(|e| ApiError(ScimError::internal(format!("worker pool: {e}"))))?
        .map_err(ApiError)
}

/// How an operation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// a few index probes however much is stored: may run on this thread (see below)
    Point,
    /// anything else: always on the blocking pool
    Any,
}

/// Runs `op` for the caller's tenant: the token is looked up and the operation run in one
/// trip, on the blocking pool, or right here for a point read when the store offers
/// ([`ResourceStore::reserve_inline`](scim_core::store::ResourceStore::reserve_inline):
/// embedded SQLite with a connection free, where handing a read of microseconds to another
/// thread costs more than the read). `input` is what the handler read from the request; an
/// error in it is reported only once the token is known to be good, so a wrong token is a 401
/// whatever else is wrong with the request.
async fn for_caller<I: Send + 'static, T: Send + 'static>(
    state: web::Data<AppState>,
    caller: Caller,
    input: ApiResult<I>,
    reads: Reads,
    op: impl FnOnce(&AppState, &str, I) -> Result<T, ScimError> + Send + 'static,
) -> ApiResult<T> {
    let by_token = ByToken {
        point: |_: &AppState, _: &str, _: &I| Ok(None),
        answer: |_: &AppState, _: &I, _| Ok(None),
    };
    for_caller_folding(state, caller, input, reads, by_token, op).await
}

/// A read that checks the caller's token in its own statement: `point` says what to read for
/// the token with a hash (`None`: nothing of the kind answers this input), `answer` makes the outcome from what the
/// store found (`None`: the store could not fold the token check into the read).
struct ByToken<P, A> {
    point: P,
    answer: A,
}

/// [`for_caller`], trying the read of `by_token` first for a caller with a token of this
/// server; if it does not apply, the token is looked up and `op` run as usual. A point read
/// the store takes to run with other reads waiting at the time
/// ([`ResourceStore::submit_point_read`](scim_core::store::ResourceStore::submit_point_read):
/// PostgreSQL, one statement for all of them) is awaited here, holding no thread.
async fn for_caller_folding<I, T, P, A>(
    state: web::Data<AppState>,
    caller: Caller,
    input: ApiResult<I>,
    reads: Reads,
    by_token: ByToken<P, A>,
    op: impl FnOnce(&AppState, &str, I) -> Result<T, ScimError> + Send + 'static,
) -> ApiResult<T>
where
    I: Send + 'static,
    T: Send + 'static,
    P: FnOnce(&AppState, &str, &I) -> Result<Option<PointRead>, ScimError> + Send + 'static,
    A: FnOnce(&AppState, &I, TokenRead) -> Result<Option<T>, ScimError> + Send + 'static,
{
    let ByToken { point, answer } = by_token;
    let inline = match reads {
        Reads::Point => state.store.reserve_inline(),
        Reads::Any => None,
    };
    let point = match (&caller, &input) {
        // An error here (there is none for a routed resource type) is left to `op` to report,
        // after the token is checked.
        (Caller::Token(hash), Ok(i)) => point(&state, hash, i).ok().flatten(),
        _ => None,
    };
    let mut answer = Some(answer);
    if let (None, Some(read), Ok(i)) = (&inline, &point, &input) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: PointReadDone = Box::new(move |read| {
            // The request may have gone (client disconnected): nothing to answer then.
            let _ = tx.send(read);
        });
        if state.store.submit_point_read(read.clone(), done).is_ok() {
            let read = rx
                .await
                .map_err(|_| ApiError(ScimError::internal("a point read was dropped unanswered")))?
                .map_err(|e| ApiError(e.into()))?;
            if let Some(out) = answer
                .take()
                .map(|f| f(&state, i, read))
                .transpose()?
                .flatten()
            {
                return Ok(out);
            }
        }
    }
    let run = move |state: &AppState| -> Result<T, ScimError> {
        let input = input.map_err(|e| e.0);
        if let (Ok(i), Some(point), Some(answer)) = (&input, &point, answer) {
            let read = ops::read_point(state, point)?;
            if let Some(out) = answer(state, i, read)? {
                return Ok(out);
            }
        }
        let tenant = caller.tenant(state)?;
        op(state, &tenant, input?)
    };
    if let Some(_reserved) = inline {
        return run(&state).map_err(ApiError);
    }
    blocking(move || run(&state)).await
}

pub(super) fn with_etag(mut resp: HttpResponse, version: Option<i64>) -> HttpResponse {
    if let Some(v) =
        version.and_then(|v| header::HeaderValue::from_str(&scim_core::render::etag(v)).ok())
    {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn respond(status: StatusCode, out: Outcome) -> HttpResponse {
    let body = out.body.unwrap_or_else(|| b"null".to_vec());
    match out.version {
        Some(v) => resource_response(status, body, v),
        None => scim_json_bytes(status, body),
    }
}

/// `POST /Users`
pub async fn create(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = json_body(&req, payload, &state.config).await;
    let input = body.and_then(|b| Ok((b, Params::from_request(&req)?)));
    let rt = rt.0.clone();
    let detached = match &input {
        Ok((body, params)) => create_detached(&state, &caller, &rt, body, params).await?,
        Err(_) => None,
    };
    let reply = ops::Reply::Resource;
    let out = match (detached, input) {
        (Some(out), _) => out,
        // The token checked inside the create where the store can (PostgreSQL).
        (None, Ok((body, params))) => {
            blocking(move || {
                let tenant = || caller.tenant(&state);
                let token = caller.token_hash();
                ops::create_for(&state, token, &tenant, &rt, &body, &params, reply)
            })
            .await?
        }
        (None, Err(e)) => input_refused(state, caller, e).await?,
    };
    let location = out
        .location
        .as_deref()
        .and_then(|l| header::HeaderValue::from_str(l).ok());
    let mut resp = respond(StatusCode::CREATED, out);
    if let Some(v) = location {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /Users/{id}`
pub async fn get(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let rt = rt.0.clone();
    let params = Params::from_request(&req);
    // Point reads are the hot path: the projection is looked at once for them.
    let reads = match &params {
        Ok(p) if ops::get_is_point_read(&state, &rt, p) => Reads::Point,
        _ => Reads::Any,
    };
    if let (Reads::Any, Ok(p)) = (reads, &params) {
        if ops::reads_members(&state, &rt, p) {
            let input = params.map(|p| (rt, id.into_inner(), p));
            let (first, body) = streamed(state, caller, input, |st, tenant, input, send| {
                let (rt, id, params) = input;
                ops::stream_get(st, tenant, &rt, &id, &params, None, send)
            })
            .await?;
            return Ok(respond_streamed(&req, first, body));
        }
    }
    let input = params.map(|p| (rt, id.into_inner(), p));
    let by_token = ByToken {
        point: |state: &AppState,
                hash: &str,
                (rt, id, params): &(String, String, crate::http::Params)| {
            ops::get_point(state, hash, rt, id, params).map(Some)
        },
        answer: |state: &AppState,
                 (rt, _, params): &(String, String, crate::http::Params),
                 read| { ops::get_answer(state, rt, params, read) },
    };
    let out = for_caller_folding(
        state,
        caller,
        input,
        reads,
        by_token,
        |state, tenant, (rt, id, params)| ops::get(state, tenant, &rt, &id, &params),
    )
    .await?;
    if out
        .version
        .is_some_and(|v| if_none_match_hits(req.headers(), v))
    {
        return Ok(with_etag(HttpResponse::NotModified().finish(), out.version));
    }
    Ok(respond(StatusCode::OK, out))
}

/// `GET /Users`
pub async fn list(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    caller: Caller,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let plan = Params::from_request(&req)
        .and_then(|p| ops::plan_list(&state, &rt.0, &p).map_err(ApiError));
    list_planned(state, caller, &req, plan).await
}

/// Reads a SearchRequest body (RFC 7644 section 3.4.3) into query parameters.
async fn search_request(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> ApiResult<Params> {
    let body = json_body(req, payload, &state.config).await?;
    let schemas = body.get("schemas").and_then(Value::as_array);
    if !schemas.is_some_and(|s| {
        s.iter()
            .any(|v| v.as_str() == Some(scim_core::urns::SEARCH_REQUEST))
    }) {
        return Err(ApiError(ScimError::invalid_syntax(format!(
            "'schemas' must contain \"{}\"",
            scim_core::urns::SEARCH_REQUEST
        ))));
    }
    Params::from_json(&body)
}

/// `POST /Users/.search`
pub async fn search(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let plan = search_request(&state, &req, payload)
        .await
        .and_then(|p| ops::plan_list(&state, &rt.0, &p).map_err(ApiError));
    list_planned(state, caller, &req, plan).await
}

/// Answers a planned list (`GET /Users`, `POST /Users/.search`).
async fn list_planned(
    state: web::Data<AppState>,
    caller: Caller,
    req: &HttpRequest,
    plan: ApiResult<ops::ListPlan>,
) -> ApiResult<HttpResponse> {
    if plan.as_ref().is_ok_and(ops::ListPlan::reads_members) {
        let (first, body) = streamed(state, caller, plan, |st, tenant, plan, send| {
            ops::stream_list(st, tenant, &plan, send)
        })
        .await?;
        return Ok(respond_streamed(req, first, body));
    }
    let reads = match &plan {
        Ok(p) if p.is_point_read() => Reads::Point,
        _ => Reads::Any,
    };
    let body = for_caller_folding(
        state,
        caller,
        plan,
        reads,
        ByToken {
            point: |_: &AppState, hash: &str, plan: &ops::ListPlan| Ok(ops::list_point(hash, plan)),
            answer: ops::list_answer,
        },
        |state, tenant, plan| ops::run_list(state, tenant, &plan),
    )
    .await?;
    Ok(scim_json_bytes(StatusCode::OK, body))
}

async fn update(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
    change: Change,
) -> ApiResult<HttpResponse> {
    let body = json_body(&req, payload, &state.config).await;
    let input = body.and_then(|b| Ok((b, Params::from_request(&req)?, if_match(req.headers())?)));
    let rt = rt.0.clone();
    let id = id.into_inner();
    let reply = preferred_reply(req.headers());
    let (st, who, resource) = (state.clone(), caller.clone(), (rt.clone(), id.clone()));
    let detached = match &input {
        Ok((body, params, expected)) => {
            let request = ops::UpdateRequest {
                rt: &rt,
                id: &id,
                body,
                params,
                expected: *expected,
                change,
                reply,
            };
            update_detached(&state, &caller, &request).await?
        }
        Err(_) => None,
    };
    let out = match (detached, input) {
        (Some(out), _) => out,
        // The token checked by the update's read where the store can (PostgreSQL).
        (None, Ok((body, params, expected))) => {
            blocking(move || {
                let request = ops::UpdateRequest {
                    rt: &rt,
                    id: &id,
                    body: &body,
                    params: &params,
                    expected,
                    change,
                    reply,
                };
                let tenant = || caller.tenant(&state);
                ops::update_for(&state, caller.token_hash(), &tenant, &request)
            })
            .await?
        }
        (None, Err(e)) => input_refused(state, caller, e).await?,
    };
    if out.read_after {
        // Every member asked for: the group as it is now, page by page, if it is still the
        // version written; if another write came first, the new ETag alone (RFC 7644 section
        // 3.5.2 allows 204).
        let written = out.version;
        let input = Params::from_request(&req).map(|p| (resource, p));
        let (first, body) = streamed(st, who, input, move |st, tenant, ((rt, id), p), send| {
            ops::stream_get(st, tenant, &rt, &id, &p, written, send)
        })
        .await?;
        return Ok(match first {
            Piece::Head(version) => streamed_ok(version, body),
            _ => with_etag(HttpResponse::NoContent().finish(), written),
        });
    }
    if out.body.is_none() {
        // Applied; no body (`Prefer: return=minimal`, or a group too large to list), just the
        // new ETag.
        return Ok(with_etag(HttpResponse::NoContent().finish(), out.version));
    }
    Ok(respond(StatusCode::OK, out))
}

/// A request whose body or headers cannot be read: its error, once the caller is known to
/// be good (a wrong token is a 401 whatever else is wrong with the request).
async fn input_refused(
    state: web::Data<AppState>,
    caller: Caller,
    e: ApiError,
) -> ApiResult<ops::Outcome> {
    blocking(move || {
        caller.tenant(&state)?;
        Err(e.0)
    })
    .await
}

/// A POST validated right here and inserted by the store's writer while this thread serves
/// other requests (see [`update_detached`]). `None`: run it the usual way (another store, no
/// connection free for the token check, a body that may set a password, or a collision with
/// a user that `SCIM_REACTIVATE_ON_CONFLICT` re-activates).
async fn create_detached(
    state: &AppState,
    caller: &Caller,
    rt: &str,
    body: &Value,
    params: &Params,
) -> ApiResult<Option<Outcome>> {
    if ops::may_set_password(body) {
        return Ok(None);
    }
    let Some(reserved) = state.store.reserve_inline() else {
        return Ok(None);
    };
    let tenant = caller.tenant(state)?;
    drop(reserved);
    let (done, outcome) = detached_outcome();
    let reply = ops::Reply::Resource;
    if ops::create_detached(state, &tenant, rt, body, params, reply, done)?.is_err() {
        return Ok(None);
    }
    let created = outcome.await?.finish().and_then(|rec| {
        rec.ok_or_else(|| scim_core::StoreError::Backend("a create wrote nothing".into()))
    });
    Ok(ops::create_answer(state, rt, params, reply, created)?)
}

/// Where a detached write's outcome is handed over, and where it is awaited.
fn detached_outcome() -> (
    scim_core::store::WriteDone,
    impl std::future::Future<Output = ApiResult<scim_core::store::Detached>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done: scim_core::store::WriteDone = Box::new(move |outcome| {
        // The request may have gone (client disconnected): nothing to answer then.
        let _ = tx.send(outcome);
    });
    let outcome = async move {
        rx.await
            .map_err(|_| ApiError(ScimError::internal("a write was dropped unanswered")))
    };
    (done, outcome)
}

/// A PUT or PATCH prepared right here and written by the store's writer while this thread
/// serves other requests, when the store offers (SQLite with a reader connection free now:
/// the token check and the preparation take microseconds; handing them to the blocking pool
/// and back cost more). `None`: run it the usual way (another store, no connection free, a
/// body that may set a password, which is hashed on the blocking pool, or another write of
/// the resource came first).
async fn update_detached(
    state: &AppState,
    caller: &Caller,
    req: &ops::UpdateRequest<'_>,
) -> ApiResult<Option<Outcome>> {
    if ops::may_set_password(req.body) {
        return Ok(None);
    }
    let Some(reserved) = state.store.reserve_inline() else {
        return Ok(None);
    };
    let tenant = caller.tenant(state)?;
    let (done, outcome) = detached_outcome();
    let taken = ops::update_detached(state, &tenant, req, done)?;
    drop(reserved);
    if taken.is_err() {
        return Ok(None);
    }
    match outcome.await?.finish().map_err(|e| ApiError(e.into()))? {
        Some(rec) => Ok(Some(ops::update_answer(state, req, &rec)?)),
        None => Ok(None),
    }
}

/// `PUT /Users/{id}`
pub async fn replace(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    update(state, rt, caller, id, req, payload, Change::Replace).await
}

/// `PATCH /Users/{id}`
pub async fn patch(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    update(state, rt, caller, id, req, payload, Change::Patch).await
}

/// `DELETE /Users/{id}`
pub async fn delete(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let rt = rt.0.clone();
    for_caller(
        state,
        caller,
        if_match(req.headers()),
        Reads::Any,
        move |state, tenant, expected| ops::delete(state, tenant, &rt, &id, expected),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /Bulk`
pub async fn bulk(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    // maxPayloadSize: the body limit applies, and an oversized bulk request is a 413.
    let body = json_body(&req, payload, &state.config).await;
    let max = state.config.bulk_max_operations;
    let request = body.and_then(|b| scim_core::bulk::parse_bulk(&b, max).map_err(ApiError));
    let out = for_caller(
        state,
        caller,
        request,
        Reads::Any,
        |state, tenant, request| Ok(ops::bulk(state, tenant, &request)),
    )
    .await?;
    Ok(scim_json(StatusCode::OK, &out))
}

/// `POST /.search` at the root, across resource types.
pub async fn search_all(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let params = search_request(&state, &req, payload).await;
    let (_, body) = streamed(state, caller, params, |state, tenant, params, send| {
        ops::search_all(state, tenant, &params, send)
    })
    .await?;
    Ok(streamed_ok(None, body))
}
