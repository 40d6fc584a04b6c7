//! URNs of the protocol messages, plus the schema URNs generated from `schemas/*.json`
//! (`USER`, `GROUP`, `ENTERPRISE_USER`, `SERVICE_PROVIDER_CONFIGURATION`, `RESOURCE_TYPE`,
//! `SCHEMA`).

pub use crate::generated::schema_urns::*;

/// ListResponse message.
pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// Error message.
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
/// PatchOp message.
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// SearchRequest message.
pub const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
