//! The `Tenant` extractor: a valid bearer token (an opaque token of this server, or a JWT
//! signed with the configured key), resolved to its tenant.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use scim_core::ScimError;

use crate::error::ApiError;
use crate::AppState;

/// The authenticated tenant of a request.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Tenant, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        Box::pin(async move {
            let unauthorized = || {
                ApiError(ScimError::new(
                    401,
                    None,
                    "A valid bearer token is required",
                ))
            };
            let state =
                state.ok_or_else(|| ApiError(ScimError::internal("application state missing")))?;
            let token = header
                .as_deref()
                .map(scim_auth::parse_bearer)
                .and_then(Result::ok)
                .ok_or_else(unauthorized)?;
            if let (Some(jwt), true) = (&state.jwt, scim_auth::jwt::looks_like_jwt(token)) {
                // A valid JWT from the configured issuer acts for the default tenant.
                jwt.verify(token).map_err(|_| unauthorized())?;
                let creds = state.creds.clone();
                let tenant = web::block(move || creds.default_tenant())
                    .await
                    .map_err(|e| ApiError(ScimError::internal(e.to_string())))??;
                return tenant.map(Tenant).ok_or_else(unauthorized);
            }
            let hash = scim_auth::hash_token(token);
            let creds = state.creds.clone();
            let found = web::block(move || creds.find_token(&hash))
                .await
                .map_err(|e| ApiError(ScimError::internal(e.to_string())))??;
            found.map(|t| Tenant(t.tenant_id)).ok_or_else(unauthorized)
        })
    }
}
