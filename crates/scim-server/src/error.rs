//! The one place where SCIM errors become HTTP responses.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use scim_core::messages::error_body;
use scim_core::{ScimError, StoreError};

/// Media type of every SCIM body we send.
pub const SCIM_JSON: &str = "application/scim+json";

/// `Retry-After` (seconds) of every 503: the database is away or every connection is busy,
/// which a few seconds usually mend.
pub const UNAVAILABLE_RETRY_AFTER: &str = "5";

/// A SCIM error on its way out.
#[derive(Debug)]
pub struct ApiError(pub ScimError);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<ScimError> for ApiError {
    fn from(e: ScimError) -> Self {
        ApiError(e)
    }
}

impl From<ApiError> for ScimError {
    fn from(e: ApiError) -> Self {
        e.0
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(e.into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut err = self.0.clone();
        if err.status == 500 {
            // Internals go to the log once, never to the client.
            log::error!("internal error: {}", err.detail.escape_debug());
            err.detail = "Internal server error".into();
        }
        let mut resp = HttpResponse::build(self.status_code());
        resp.insert_header((header::CONTENT_TYPE, SCIM_JSON));
        if err.status == 401 {
            resp.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"scim\""),
            ));
        }
        if err.status == 503 {
            resp.insert_header((
                header::RETRY_AFTER,
                HeaderValue::from_static(UNAVAILABLE_RETRY_AFTER),
            ));
        }
        if err.status == 408 {
            // The rest of the body may still come: the connection cannot be reused.
            resp.force_close();
        }
        resp.body(error_body(&err).to_string())
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;
