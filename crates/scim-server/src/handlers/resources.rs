//! `/Users`, `/Groups` (and any resource type in the registry): create, read, list, search,
//! replace, patch, delete. Each handler extracts, calls core and the store, and converts.

use actix_web::http::StatusCode;
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use scim_core::messages::list_response;
use scim_core::patch::prepare_patch;
use scim_core::query::{paging, plan_filter};
use scim_core::render::{render, Projection};
use scim_core::resource::{prepare_create, prepare_reactivation, prepare_replace};
use scim_core::store::{Include, IndexedField, ListQuery, ResourceRecord, StoreFilter};
use scim_core::{Ctx, ScimError, StoreError};
use serde_json::Value;

use crate::auth::Tenant;
use crate::error::{ApiError, ApiResult};
use crate::http::{if_match, if_none_match_hits, json_body, resource_response, scim_json, Params};
use crate::{now, AppState, ResourceTypeId};

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    web::block(f)
        .await
        .map_err(|e| ApiError(ScimError::internal(format!("worker pool: {e}"))))?
}

fn projection(ctx: &Ctx<'_>, params: &Params) -> Projection {
    Projection::parse(
        ctx,
        params.get("attributes"),
        params.get("excludedAttributes"),
    )
}

/// `POST /Users`
pub async fn create(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    tenant: Tenant,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = json_body(&req, payload, state.config.max_body_bytes).await?;
    let params = Params::from_request(&req)?;
    let st = state.clone();
    let rt_id = rt.0.clone();
    let (value, version, location) = blocking(move || {
        let ctx = Ctx::new(&st.registry, &rt_id)?;
        let mut write = prepare_create(&ctx, &body)?;
        write.unknown_members = st.config.unknown_members;
        let proj = projection(&ctx, &params);
        let id = uuid::Uuid::new_v4().to_string();
        let include = proj.include(&ctx);
        let rec = match st
            .store
            .create(&tenant.0, &ctx.rt.id, &id, &now(), write, include)
        {
            Err(StoreError::Conflict(_))
                if st.config.reactivate_on_conflict && ctx.rt.id == "User" =>
            {
                reactivate(&st, &ctx, &tenant.0, &body, include)?
            }
            other => other?,
        };
        let location = format!("{}{}/{}", st.config.public_url, ctx.rt.endpoint, rec.id);
        Ok((
            render(&ctx, &rec, &st.config.public_url, &proj),
            rec.version,
            location,
        ))
    })
    .await?;
    let mut resp = resource_response(StatusCode::CREATED, &value, version);
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /Users/{id}`
pub async fn get(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    tenant: Tenant,
    id: web::Path<String>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let params = Params::from_request(&req)?;
    let st = state.clone();
    let rt_id = rt.0.clone();
    let (value, version) = blocking(move || {
        let ctx = Ctx::new(&st.registry, &rt_id)?;
        let proj = projection(&ctx, &params);
        let rec = st
            .store
            .get(&tenant.0, &ctx.rt.id, &id, proj.include(&ctx))?;
        Ok((
            render(&ctx, &rec, &st.config.public_url, &proj),
            rec.version,
        ))
    })
    .await?;
    if if_none_match_hits(req.headers(), version) {
        let mut resp = HttpResponse::NotModified().finish();
        if let Ok(v) = header::HeaderValue::from_str(&scim_core::render::etag(version)) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        return Ok(resp);
    }
    Ok(resource_response(StatusCode::OK, &value, version))
}

async fn list_with(
    state: web::Data<AppState>,
    rt_id: String,
    tenant: Tenant,
    params: Params,
) -> ApiResult<HttpResponse> {
    let st = state.clone();
    let body = blocking(move || {
        let ctx = Ctx::new(&st.registry, &rt_id)?;
        let filter = plan_filter(&ctx, params.get("filter"), &st.config.query)?;
        if params.get("sortBy").is_some_and(|s| !s.trim().is_empty()) {
            return Err(ApiError(ScimError::new(
                400,
                Some(scim_core::ScimType::InvalidValue),
                "Sorting is not supported yet (see sort.supported in /ServiceProviderConfig)",
            )));
        }
        let (start_index, count) = paging(
            params.int("startIndex")?,
            params.int("count")?,
            &st.config.query,
        );
        let proj = projection(&ctx, &params);
        let page = st.store.list(
            &tenant.0,
            &ctx.rt.id,
            &ListQuery {
                filter,
                start_index,
                count,
                include: proj.include(&ctx),
            },
        )?;
        let resources: Vec<Value> = page
            .resources
            .iter()
            .map(|r| render(&ctx, r, &st.config.public_url, &proj))
            .collect();
        Ok(list_response(page.total, start_index, resources))
    })
    .await?;
    Ok(scim_json(StatusCode::OK, &body))
}

/// `GET /Users`
pub async fn list(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    tenant: Tenant,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let params = Params::from_request(&req)?;
    list_with(state, rt.0.clone(), tenant, params).await
}

/// `POST /Users/.search`
pub async fn search(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    tenant: Tenant,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = json_body(&req, payload, state.config.max_body_bytes).await?;
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
    let params = Params::from_json(&body)?;
    let resp = list_with(state, rt.0.clone(), tenant, params).await?;
    Ok(resp)
}

enum Update {
    Replace,
    Patch,
}

async fn update(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    tenant: Tenant,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
    kind: Update,
) -> ApiResult<HttpResponse> {
    let body = json_body(&req, payload, state.config.max_body_bytes).await?;
    let params = Params::from_request(&req)?;
    let expected = if_match(req.headers())?;
    let st = state.clone();
    let rt_id = rt.0.clone();
    let (value, version) = blocking(move || {
        let ctx = Ctx::new(&st.registry, &rt_id)?;
        let proj = projection(&ctx, &params);
        let limits = st.config.query.filter;
        let unknown_members = st.config.unknown_members;
        let rec = st.store.update(
            &tenant.0,
            &ctx.rt.id,
            &id,
            &now(),
            expected,
            proj.include(&ctx),
            &mut |cur| {
                let mut write = match kind {
                    Update::Replace => prepare_replace(&ctx, &body, cur)?,
                    Update::Patch => prepare_patch(&ctx, &body, cur, &limits)?,
                };
                write.unknown_members = unknown_members;
                Ok(write)
            },
        )?;
        Ok((
            render(&ctx, &rec, &st.config.public_url, &proj),
            rec.version,
        ))
    })
    .await?;
    if crate::http::prefers_minimal(req.headers()) {
        // RFC 7240 `Prefer: return=minimal`: the change is applied; no body, just the new ETag.
        let mut resp = HttpResponse::NoContent().finish();
        if let Ok(v) = header::HeaderValue::from_str(&scim_core::render::etag(version)) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        return Ok(resp);
    }
    Ok(resource_response(StatusCode::OK, &value, version))
}

/// `PUT /Users/{id}`
pub async fn replace(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    tenant: Tenant,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    update(state, rt, tenant, id, req, payload, Update::Replace).await
}

/// `PATCH /Users/{id}`
pub async fn patch(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    tenant: Tenant,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    update(state, rt, tenant, id, req, payload, Update::Patch).await
}

/// `DELETE /Users/{id}`
pub async fn delete(
    state: web::Data<AppState>,
    rt: web::Data<ResourceTypeId>,
    tenant: Tenant,
    id: web::Path<String>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let expected = if_match(req.headers())?;
    let st = state.clone();
    let rt_id = rt.0.clone();
    blocking(move || {
        let ctx = Ctx::new(&st.registry, &rt_id)?;
        st.store.delete(&tenant.0, &ctx.rt.id, &id, expected)?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `SCIM_REACTIVATE_ON_CONFLICT`: the POST collided with an existing userName; if that user is
/// inactive, it is updated from the body and re-activated (core decides, see
/// `prepare_reactivation`), otherwise the answer stays 409.
fn reactivate(
    st: &AppState,
    ctx: &Ctx<'_>,
    tenant: &str,
    body: &Value,
    include: Include,
) -> ApiResult<ResourceRecord> {
    let user_name = body
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("userName")))
        .and_then(|(_, v)| v.as_str())
        .ok_or_else(|| {
            ApiError(ScimError::uniqueness(
                "A User with this userName already exists",
            ))
        })?;
    let filter = StoreFilter::Eq(IndexedField::UserName, scim_core::resource::fold(user_name));
    let found = st.store.list(
        tenant,
        &ctx.rt.id,
        &ListQuery {
            filter,
            start_index: 1,
            count: 1,
            include: Include::default(),
        },
    )?;
    let existing = found.resources.first().ok_or_else(|| {
        ApiError(ScimError::uniqueness(
            "A User with this userName already exists",
        ))
    })?;
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
