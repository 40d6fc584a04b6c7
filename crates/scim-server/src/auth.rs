//! Bearer tokens (an opaque token of this server, or a JWT signed with the configured key),
//! resolved to a tenant.
//!
//! The [`Caller`] extractor only checks the credential's form (and a JWT's signature, which
//! needs no database), so a request without a well-formed credential is a 401 before its body
//! is read. The token itself is looked up by [`Caller::tenant`] on the blocking pool, in the
//! same trip as the operation it authorizes (one hand-off per request instead of two).
//! A point read checks the token inside its own statement instead (see
//! `ResourceStore::point_read_by_token`), so that it is one database round trip.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use scim_core::ScimError;

use crate::error::ApiError;
use crate::AppState;

/// A well-formed credential, not yet looked up.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An opaque token of this server (its SHA-256 hash).
    Token(String),
    /// A JWT with a valid signature and claims; it acts for the default tenant.
    Jwt,
}

/// The 401 for a missing, malformed, unknown or revoked credential.
pub(crate) fn unauthorized() -> ScimError {
    ScimError::new(401, None, "A valid bearer token is required")
}

impl Caller {
    fn from_request(req: &HttpRequest) -> Result<Caller, ScimError> {
        let state = req
            .app_data::<web::Data<AppState>>()
            .ok_or_else(|| ScimError::internal("application state missing"))?;
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .map(scim_auth::parse_bearer)
            .and_then(Result::ok)
            .ok_or_else(unauthorized)?;
        if let (Some(jwt), true) = (&state.jwt, scim_auth::jwt::looks_like_jwt(token)) {
            jwt.verify(token).map_err(|_| unauthorized())?;
            return Ok(Caller::Jwt);
        }
        Ok(Caller::Token(scim_auth::hash_token(token)))
    }

    /// The hash of the caller's token, for a token of this server (a store may check it in
    /// the statement of the request's own read or write).
    pub fn token_hash(&self) -> Option<&str> {
        match self {
            Caller::Token(hash) => Some(hash),
            Caller::Jwt => None,
        }
    }

    /// The caller's tenant (blocking: reads the store). A revoked or unknown token is a 401.
    pub fn tenant(&self, state: &AppState) -> Result<String, ScimError> {
        match self {
            Caller::Jwt => state.creds.default_tenant()?.ok_or_else(unauthorized),
            Caller::Token(hash) => token_tenant(state, hash),
        }
    }
}

/// The tenant of the live token with this hash (blocking: reads the store); a 401 when there
/// is none.
fn token_tenant(state: &AppState, hash: &str) -> Result<String, ScimError> {
    state
        .creds
        .find_token(hash)?
        .map(|t| t.tenant_id)
        .ok_or_else(unauthorized)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Caller::from_request(req).map_err(ApiError))
    }
}
