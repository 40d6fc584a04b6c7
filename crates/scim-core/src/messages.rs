//! Protocol message bodies: ListResponse, Error, and the discovery documents
//! (`/ServiceProviderConfig`, `/Schemas`, `/ResourceTypes`).

use serde_json::{json, Map, Value};

use crate::error::ScimError;
use crate::query::QueryLimits;
use crate::schema::{Schema, SchemaRegistry};
use crate::urns;

/// A ListResponse (RFC 7644 section 3.4.2) as a [`Value`].
pub fn list_response(total: u64, start_index: u64, resources: Vec<Value>) -> Value {
    let list = ListResponse::new(total, Some(start_index), resources);
    // Strings, numbers and JSON values always serialize.
    serde_json::to_value(list).unwrap_or(Value::Null)
}

/// A ListResponse (RFC 7644 section 3.4.2) around resources of any serializable form
/// (rendered resources are written straight out, see [`crate::render::Rendered`]).
#[derive(Debug, Clone)]
pub struct ListResponse<R> {
    /// `totalResults`
    pub total: u64,
    /// `startIndex` (absent from a cursor-paged response, RFC 9865)
    pub start_index: Option<u64>,
    /// `Resources`; `itemsPerPage` is their number
    pub resources: Vec<R>,
    /// `nextCursor` (RFC 9865)
    pub next_cursor: Option<String>,
    /// `previousCursor` (RFC 9865)
    pub previous_cursor: Option<String>,
}

impl<R> ListResponse<R> {
    /// A page without cursors.
    pub fn new(total: u64, start_index: Option<u64>, resources: Vec<R>) -> Self {
        ListResponse {
            total,
            start_index,
            resources,
            next_cursor: None,
            previous_cursor: None,
        }
    }
}

impl<R> ListResponse<R> {
    /// The JSON around `Resources` when the resources are written out one by one between the
    /// two parts (items separated by commas): the same document the `Serialize` impl writes.
    pub fn envelope(&self) -> (Vec<u8>, Vec<u8>) {
        let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut head = format!(
            "{{\"schemas\":[{}],\"totalResults\":{}",
            text(urns::LIST_RESPONSE),
            self.total
        );
        if let Some(i) = self.start_index {
            head.push_str(&format!(",\"startIndex\":{i}"));
        }
        head.push_str(&format!(
            ",\"itemsPerPage\":{},\"Resources\":[",
            self.resources.len()
        ));
        let mut tail = String::from("]");
        if let Some(c) = &self.next_cursor {
            tail.push_str(&format!(",\"nextCursor\":{}", text(c)));
        }
        if let Some(c) = &self.previous_cursor {
            tail.push_str(&format!(",\"previousCursor\":{}", text(c)));
        }
        tail.push('}');
        (head.into_bytes(), tail.into_bytes())
    }
}

impl<R: serde::Serialize> serde::Serialize for ListResponse<R> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = serializer.serialize_map(None)?;
        m.serialize_entry("schemas", &[urns::LIST_RESPONSE])?;
        m.serialize_entry("totalResults", &self.total)?;
        if let Some(i) = self.start_index {
            m.serialize_entry("startIndex", &i)?;
        }
        m.serialize_entry("itemsPerPage", &self.resources.len())?;
        m.serialize_entry("Resources", &self.resources)?;
        if let Some(c) = &self.next_cursor {
            m.serialize_entry("nextCursor", c)?;
        }
        if let Some(c) = &self.previous_cursor {
            m.serialize_entry("previousCursor", c)?;
        }
        m.end()
    }
}

/// An Error body (RFC 7644 section 3.12); `status` is a string as the RFC's examples show.
pub fn error_body(err: &ScimError) -> Value {
    let mut body = Map::new();
    body.insert("schemas".into(), json!([urns::ERROR]));
    body.insert("status".into(), Value::String(err.status.to_string()));
    if let Some(t) = err.scim_type {
        body.insert("scimType".into(), Value::String(t.as_str().to_string()));
    }
    body.insert("detail".into(), Value::String(err.detail.clone()));
    Value::Object(body)
}

/// What the server supports, for `/ServiceProviderConfig`.
#[derive(Debug, Clone)]
pub struct ServerCapabilities {
    /// query limits
    pub query: QueryLimits,
    /// largest accepted request body, in bytes
    pub max_body_bytes: usize,
    /// link to the documentation
    pub documentation_uri: Option<String>,
    /// operations per bulk request; 0 means bulk is not supported
    pub bulk_max_operations: usize,
    /// whether passwords are stored (hashed), so that setting one means something
    pub change_password: bool,
}

/// The ServiceProviderConfig document.
pub fn service_provider_config(caps: &ServerCapabilities, base_url: &str) -> Value {
    json!({
        "schemas": [urns::SERVICE_PROVIDER_CONFIGURATION],
        "documentationUri": caps.documentation_uri,
        "patch": { "supported": true },
        "bulk": {
            "supported": caps.bulk_max_operations > 0,
            "maxOperations": caps.bulk_max_operations,
            "maxPayloadSize": caps.max_body_bytes
        },
        "filter": { "supported": true, "maxResults": caps.query.max_count },
        "changePassword": { "supported": caps.change_password },
        "sort": { "supported": true },
        "etag": { "supported": true },
        // RFC 9865. Cursors do not expire, so no cursorTimeout is given.
        "pagination": {
            "cursor": true,
            "index": true,
            "defaultPaginationMethod": "index",
            "defaultPageSize": caps.query.default_count,
            "maxPageSize": caps.query.max_count
        },
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer Token",
            "description": "Authentication with a bearer token issued by this server (scim-server token create).",
            "primary": true
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base_url}/ServiceProviderConfig")
        }
    })
}

/// A schema as served by `/Schemas/{id}`.
pub fn schema_document(schema: &Schema, base_url: &str) -> Value {
    let mut v = serde_json::to_value(schema).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.insert("schemas".into(), json!([urns::SCHEMA]));
        o.insert("meta".into(), json!({"resourceType": "Schema", "location": format!("{base_url}/Schemas/{}", schema.id)}));
    }
    v
}

/// A resource type as served by `/ResourceTypes/{id}`.
pub fn resource_type_document(
    registry: &SchemaRegistry,
    id: &str,
    base_url: &str,
) -> Option<Value> {
    let rt = registry.resource_type(id)?;
    let mut v = serde_json::to_value(rt).ok()?;
    if let Value::Object(o) = &mut v {
        o.insert("schemas".into(), json!([urns::RESOURCE_TYPE]));
        o.insert("meta".into(), json!({"resourceType": "ResourceType", "location": format!("{base_url}/ResourceTypes/{}", rt.id)}));
    }
    Some(v)
}
