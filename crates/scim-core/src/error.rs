//! `ScimError` (RFC 7644 section 3.12) and the store's `StoreError`.
//!
//! The HTTP status is a plain number here; only the server crate turns it into a response.

use serde::Serialize;

/// The `scimType` detail error keywords of RFC 7644 section 3.12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ScimType {
    /// bad filter syntax or unsupported filter
    InvalidFilter,
    /// too many results
    TooMany,
    /// uniqueness constraint violated
    Uniqueness,
    /// attempt to change a readOnly/immutable attribute
    Mutability,
    /// malformed request body
    InvalidSyntax,
    /// malformed PATCH path
    InvalidPath,
    /// PATCH path matched nothing
    NoTarget,
    /// a value of the wrong type or form
    InvalidValue,
    /// wrong protocol version
    InvalidVers,
    /// sensitive information in the request URI
    Sensitive,
    /// a cursor the server did not issue (RFC 9865)
    InvalidCursor,
}

impl ScimType {
    /// The keyword as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::TooMany => "tooMany",
            ScimType::Uniqueness => "uniqueness",
            ScimType::Mutability => "mutability",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
            ScimType::InvalidVers => "invalidVers",
            ScimType::Sensitive => "sensitive",
            ScimType::InvalidCursor => "invalidCursor",
        }
    }
}

/// An error a SCIM client can be told about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {}: {detail}", scim_type.map(ScimType::as_str).unwrap_or("-"))]
pub struct ScimError {
    /// HTTP status code
    pub status: u16,
    /// RFC 7644 `scimType`, where one applies
    pub scim_type: Option<ScimType>,
    /// human-readable detail, safe to show to the client
    pub detail: String,
}

impl ScimError {
    /// A new error.
    pub fn new(status: u16, scim_type: Option<ScimType>, detail: impl Into<String>) -> Self {
        ScimError {
            status,
            scim_type,
            detail: detail.into(),
        }
    }
    /// 400 with a scimType.
    pub fn bad_request(scim_type: ScimType, detail: impl Into<String>) -> Self {
        Self::new(400, Some(scim_type), detail)
    }
    /// 400 invalidValue.
    pub fn invalid_value(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::InvalidValue, detail)
    }
    /// 400 invalidSyntax.
    pub fn invalid_syntax(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::InvalidSyntax, detail)
    }
    /// 400 invalidFilter.
    pub fn invalid_filter(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::InvalidFilter, detail)
    }
    /// 400 invalidPath.
    pub fn invalid_path(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::InvalidPath, detail)
    }
    /// 400 mutability.
    pub fn mutability(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::Mutability, detail)
    }
    /// 400 noTarget.
    pub fn no_target(detail: impl Into<String>) -> Self {
        Self::bad_request(ScimType::NoTarget, detail)
    }
    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, None, detail)
    }
    /// 409 uniqueness.
    pub fn uniqueness(detail: impl Into<String>) -> Self {
        Self::new(409, Some(ScimType::Uniqueness), detail)
    }
    /// 412 precondition failed.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(412, None, detail)
    }
    /// 500; the detail is for logs, the server shows clients a generic text.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, None, detail)
    }
}

/// Failures of a [`ResourceStore`](crate::store::ResourceStore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// no such resource
    #[error("resource not found")]
    NotFound,
    /// a unique constraint rejected the write
    #[error("conflict: {0}")]
    Conflict(String),
    /// the resource changed since the version the client named
    #[error("version mismatch")]
    VersionMismatch,
    /// the database cannot be reached or the pool is exhausted; worth retrying
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// the operation was refused by SCIM rules (raised by a callback inside a transaction)
    #[error(transparent)]
    Scim(#[from] ScimError),
    /// anything else
    #[error("store failure: {0}")]
    Backend(String),
}

impl From<StoreError> for ScimError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ScimError::not_found("Resource not found"),
            StoreError::Conflict(what) => ScimError::uniqueness(what),
            StoreError::VersionMismatch => ScimError::precondition_failed(
                "The resource has changed since the version given in If-Match",
            ),
            StoreError::Unavailable(what) => ScimError::new(503, None, what),
            StoreError::Scim(e) => e,
            StoreError::Backend(what) => ScimError::internal(what),
        }
    }
}
