//! `/ServiceProviderConfig`, `/Schemas`, `/ResourceTypes` (RFC 7644 section 4), plus the
//! 404 and 405 fallbacks.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use scim_core::messages::{
    list_response, resource_type_document, schema_document, service_provider_config,
};
use scim_core::ScimError;

use crate::error::{ApiError, ApiResult, UNAVAILABLE_RETRY_AFTER};
use crate::http::scim_json;
use crate::AppState;

/// `GET /healthz` (outside the SCIM base, without a token): 200 when the database answers,
/// 503 with `Retry-After` when it does not, for load balancers and orchestrators. The body
/// says only that; never why (the reason goes to the log).
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.clone();
    let checked = web::block(move || store.check()).await;
    match checked {
        Ok(Ok(())) => HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(serde_json::json!({"status": "ok"})),
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "the check could not run".to_string(),
            };
            log::warn!(
                "health check: the database does not answer: {}",
                why.escape_debug()
            );
            HttpResponse::ServiceUnavailable()
                .insert_header(("cache-control", "no-store"))
                .insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER))
                .json(serde_json::json!({"status": "unavailable"}))
        }
    }
}

/// `GET /ServiceProviderConfig`
pub async fn service_provider(state: web::Data<AppState>) -> HttpResponse {
    scim_json(
        StatusCode::OK,
        &service_provider_config(&state.capabilities, &state.config.public_url),
    )
}

/// `GET /Schemas`
pub async fn schemas(state: web::Data<AppState>) -> HttpResponse {
    let docs: Vec<_> = state
        .registry
        .schemas()
        .iter()
        .map(|s| schema_document(s, &state.config.public_url))
        .collect();
    scim_json(StatusCode::OK, &list_response(docs.len() as u64, 1, docs))
}

/// `GET /Schemas/{id}`
pub async fn schema(state: web::Data<AppState>, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let schema = state
        .registry
        .schema(&id)
        .ok_or_else(|| ApiError(ScimError::not_found("Unknown schema")))?;
    Ok(scim_json(
        StatusCode::OK,
        &schema_document(schema, &state.config.public_url),
    ))
}

/// `GET /ResourceTypes`
pub async fn resource_types(state: web::Data<AppState>) -> HttpResponse {
    let docs: Vec<_> = state
        .registry
        .resource_types()
        .iter()
        .filter_map(|rt| resource_type_document(&state.registry, &rt.id, &state.config.public_url))
        .collect();
    scim_json(StatusCode::OK, &list_response(docs.len() as u64, 1, docs))
}

/// `GET /ResourceTypes/{id}`
pub async fn resource_type(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let doc = resource_type_document(&state.registry, &id, &state.config.public_url)
        .ok_or_else(|| ApiError(ScimError::not_found("Unknown resource type")))?;
    Ok(scim_json(StatusCode::OK, &doc))
}

/// Any method a route does not support.
pub async fn method_not_allowed() -> ApiResult<HttpResponse> {
    Err(ApiError(ScimError::new(
        405,
        None,
        "This method is not supported on this endpoint",
    )))
}

/// `/Me` (RFC 7644 section 3.11): a bearer token here names a client (an identity provider),
/// not a user, so there is no "me"; the RFC asks such a server for 501.
pub async fn me_not_implemented() -> ApiResult<HttpResponse> {
    Err(ApiError(ScimError::new(
        501,
        None,
        "/Me is not supported: this server's tokens belong to provisioning clients, not to users",
    )))
}

/// Any unknown path.
pub async fn not_found() -> ApiResult<HttpResponse> {
    Err(ApiError(ScimError::not_found("No such endpoint")))
}
