//! Request plumbing shared by the handlers: bounded body reading, query parameters,
//! conditional headers, and SCIM JSON responses.

use std::collections::HashMap;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use scim_core::render::{etag, parse_etag};
use scim_core::ScimError;
use serde_json::Value;

use crate::error::{ApiError, ApiResult, SCIM_JSON};
use crate::ops::Reply;

/// Reads a JSON request body of at most `SCIM_MAX_BODY_BYTES`. Over the limit: 413, never
/// buffered. A body that has not fully arrived `SCIM_BODY_TIMEOUT_MS` after its first byte was
/// awaited is 408 (the connection is then closed), so that a client that stalls or trickles
/// its body cannot hold a request open for longer.
pub async fn json_body(
    req: &HttpRequest,
    payload: web::Payload,
    config: &crate::Config,
) -> ApiResult<Value> {
    let (limit, timeout) = (config.max_body_bytes, config.body_timeout);
    match actix_web::rt::time::timeout(timeout, read_json_body(req, payload, limit)).await {
        Ok(read) => read,
        Err(_) => Err(ApiError(ScimError::new(
            408,
            None,
            format!(
                "The request body did not arrive within {} ms (SCIM_BODY_TIMEOUT_MS)",
                timeout.as_millis()
            ),
        ))),
    }
}

async fn read_json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> ApiResult<Value> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !ct.is_empty() && !ct.contains("json") {
            return Err(ApiError(ScimError::new(
                415,
                None,
                "Request bodies must be application/scim+json or application/json",
            )));
        }
    }
    let too_large = || {
        ApiError(ScimError::new(
            413,
            None,
            format!("The request body exceeds the limit of {limit} bytes"),
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError(ScimError::invalid_syntax(format!(
                "Could not read the request body: {e}"
            )))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        return Err(ApiError(ScimError::invalid_syntax(
            "The request body is empty",
        )));
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError(ScimError::invalid_syntax(format!(
            "The request body is not valid JSON: {e}"
        )))
    })
}

/// Query parameters, looked up case-insensitively (`startIndex` = `startindex`).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses the query string (`+` is a space, as in forms).
    pub fn from_request(req: &HttpRequest) -> ApiResult<Self> {
        let pairs =
            web::Query::<Vec<(String, String)>>::from_query(req.query_string()).map_err(|e| {
                ApiError(ScimError::invalid_syntax(format!(
                    "Malformed query string: {e}"
                )))
            })?;
        Params::merged(pairs.into_inner())
    }

    /// One value per parameter name (case-insensitive). A list parameter given more than
    /// once (`attributes`, `excludedAttributes`) holds all the values, comma-separated, as RFC
    /// 7644 writes them; another one given twice with the same value counts once, and with
    /// different values (`filter=a&filter=b`) is ambiguous: 400 `invalidSyntax`, instead of
    /// silently answering one of them.
    fn merged(pairs: Vec<(String, String)>) -> ApiResult<Self> {
        let mut at: HashMap<String, usize> = HashMap::with_capacity(pairs.len());
        let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let key = name.to_ascii_lowercase();
            let Some(&i) = at.get(&key) else {
                at.insert(key, out.len());
                out.push((name, value));
                continue;
            };
            let held = &mut out[i].1;
            if *held == value {
                continue;
            }
            if key == "attributes" || key == "excludedattributes" {
                held.push(',');
                held.push_str(&value);
                continue;
            }
            let shown: String = name.chars().take(64).collect();
            return Err(ApiError(ScimError::invalid_syntax(format!(
                "The parameter '{shown}' is given more than once, with different values"
            ))));
        }
        Ok(Params(out))
    }

    /// From a JSON object (a `.search` body).
    pub fn from_json(v: &Value) -> ApiResult<Self> {
        let obj = v.as_object().ok_or_else(|| {
            ApiError(ScimError::invalid_syntax(
                "The search request must be an object",
            ))
        })?;
        let mut out = Vec::new();
        for (k, v) in obj {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                Value::Null => continue,
                _ => {
                    return Err(ApiError(ScimError::invalid_value(format!(
                        "Search parameter '{k}' has the wrong type"
                    ))))
                }
            };
            out.push((k.clone(), s));
        }
        Params::merged(out)
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An integer parameter; malformed is a 400.
    pub fn int(&self, name: &str) -> ApiResult<Option<i64>> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError(ScimError::invalid_value(format!(
                    "'{name}' must be an integer"
                )))
            }),
        }
    }
}

/// The version named by `If-Match`, if any. `*` means "any version".
pub fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("").trim();
    if v == "*" {
        return Ok(None);
    }
    // Several tags may be listed; a resource has one version, so any of them may match.
    // We support a single tag, the common case.
    parse_etag(v).map(Some).ok_or_else(|| {
        ApiError(ScimError::precondition_failed(
            "If-Match does not name a version of this resource",
        ))
    })
}

/// Whether `If-None-Match` names `version` (or `*`).
pub fn if_none_match_hits(headers: &HeaderMap, version: i64) -> bool {
    let Some(v) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    v.split(',')
        .map(str::trim)
        .any(|t| t == "*" || parse_etag(t) == Some(version))
}

/// What a write should answer with, from `Prefer` (RFC 7240): `return=minimal` or
/// `return=representation`, else the default.
pub fn preferred_reply(headers: &HeaderMap) -> Reply {
    let mut prefs = headers
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    prefs
        .find_map(|p| {
            if p.eq_ignore_ascii_case("return=minimal") {
                Some(Reply::Minimal)
            } else if p.eq_ignore_ascii_case("return=representation") {
                Some(Reply::Representation)
            } else {
                None
            }
        })
        .unwrap_or(Reply::Resource)
}

/// A SCIM JSON response.
pub fn scim_json(status: StatusCode, body: &Value) -> HttpResponse {
    // Straight to bytes (a `Value` always serializes), not through `Display`'s formatter.
    scim_json_bytes(status, serde_json::to_vec(body).unwrap_or_default())
}

/// A response with a body already serialized as SCIM JSON.
pub fn scim_json_bytes(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, SCIM_JSON))
        .body(body)
}

/// A SCIM JSON response for one resource (serialized), with its `ETag`.
pub fn resource_response(status: StatusCode, body: Vec<u8>, version: i64) -> HttpResponse {
    let mut resp = scim_json_bytes(status, body);
    if let Ok(v) = header::HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}
