//! Bulk requests (RFC 7644 section 3.7): parsing, `bulkId` references, and the order in which
//! operations can run.
//!
//! Operations may reference resources created earlier in the same request with
//! `"bulkId:<id>"` strings, in `path` or anywhere in `data`, and may do so in any order: the
//! operations are sorted so that each runs after the POSTs it references. Operations caught
//! in a reference cycle cannot run and are reported as failed (409), as are references to a
//! `bulkId` that no POST declares or whose POST failed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::error::ScimError;

/// URN of the BulkRequest message.
pub const BULK_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
/// URN of the BulkResponse message.
pub const BULK_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";

/// HTTP methods a bulk operation may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkMethod {
    /// create
    Post,
    /// replace
    Put,
    /// modify
    Patch,
    /// delete
    Delete,
}

impl BulkMethod {
    /// As written in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            BulkMethod::Post => "POST",
            BulkMethod::Put => "PUT",
            BulkMethod::Patch => "PATCH",
            BulkMethod::Delete => "DELETE",
        }
    }
}

/// One operation of a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkOp {
    /// position in the request
    pub index: usize,
    /// method
    pub method: BulkMethod,
    /// `/Users`, `/Groups/{id}`, possibly with `bulkId:` references
    pub path: String,
    /// the client's label for a POST
    pub bulk_id: Option<String>,
    /// `If-Match` for this operation
    pub version: Option<String>,
    /// body (POST, PUT, PATCH)
    pub data: Option<Value>,
}

/// A parsed bulk request.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkRequest {
    /// stop after this many errors (`None`: never stop)
    pub fail_on_errors: Option<usize>,
    /// operations, in request order
    pub ops: Vec<BulkOp>,
}

fn get_ci<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Parses and validates a BulkRequest. More than `max_operations` operations is a 413.
pub fn parse_bulk(body: &Value, max_operations: usize) -> Result<BulkRequest, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("The bulk request must be a JSON object"))?;
    let schemas = get_ci(obj, "schemas").and_then(Value::as_array);
    if !schemas.is_some_and(|s| {
        s.iter().any(|v| {
            v.as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case(BULK_REQUEST))
        })
    }) {
        return Err(ScimError::invalid_syntax(format!(
            "'schemas' must contain \"{BULK_REQUEST}\""
        )));
    }
    let fail_on_errors = match get_ci(obj, "failOnErrors") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= 1 => Some(v as usize),
            _ => {
                return Err(ScimError::invalid_value(
                    "'failOnErrors' must be a positive integer",
                ))
            }
        },
        Some(_) => {
            return Err(ScimError::invalid_value(
                "'failOnErrors' must be a positive integer",
            ))
        }
    };
    let list = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::invalid_syntax("'Operations' must be an array"))?;
    if list.len() > max_operations {
        return Err(ScimError::new(
            413,
            None,
            format!(
                "The bulk request has {} operations; the maximum is {max_operations}",
                list.len()
            ),
        ));
    }
    let mut ops = Vec::with_capacity(list.len());
    let mut seen = BTreeSet::new();
    for (index, op) in list.iter().enumerate() {
        let o = op.as_object().ok_or_else(|| {
            ScimError::invalid_syntax(format!("Operation {}: must be an object", index + 1))
        })?;
        let method = match get_ci(o, "method")
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("POST") => BulkMethod::Post,
            Some("PUT") => BulkMethod::Put,
            Some("PATCH") => BulkMethod::Patch,
            Some("DELETE") => BulkMethod::Delete,
            other => {
                return Err(ScimError::invalid_value(format!(
                    "Operation {}: unsupported method {}",
                    index + 1,
                    other.unwrap_or("(missing)")
                )))
            }
        };
        let path = get_ci(o, "path")
            .and_then(Value::as_str)
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| {
                ScimError::invalid_value(format!(
                    "Operation {}: 'path' must start with '/'",
                    index + 1
                ))
            })?
            .to_string();
        let bulk_id = get_ci(o, "bulkId")
            .and_then(Value::as_str)
            .map(str::to_string);
        if method == BulkMethod::Post && bulk_id.as_deref().is_none_or(str::is_empty) {
            return Err(ScimError::invalid_value(format!(
                "Operation {}: a POST needs a 'bulkId'",
                index + 1
            )));
        }
        if let Some(b) = &bulk_id {
            if !seen.insert(b.clone()) {
                return Err(ScimError::invalid_value(format!(
                    "Operation {}: bulkId '{b}' is used twice",
                    index + 1
                )));
            }
        }
        let version = get_ci(o, "version")
            .and_then(Value::as_str)
            .map(str::to_string);
        let data = get_ci(o, "data").filter(|d| !d.is_null()).cloned();
        if method != BulkMethod::Delete && data.is_none() {
            return Err(ScimError::invalid_value(format!(
                "Operation {}: 'data' is required for {}",
                index + 1,
                method.as_str()
            )));
        }
        ops.push(BulkOp {
            index,
            method,
            path,
            bulk_id,
            version,
            data,
        });
    }
    Ok(BulkRequest {
        fail_on_errors,
        ops,
    })
}

const PREFIX: &str = "bulkId:";

/// The bulkIds an operation refers to (in its path and anywhere in its data).
pub fn references(op: &BulkOp) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) => {
                if let Some(id) = s.strip_prefix(PREFIX) {
                    out.insert(id.to_string());
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for seg in op.path.split('/') {
        if let Some(id) = seg.strip_prefix(PREFIX) {
            out.insert(id.to_string());
        }
    }
    if let Some(d) = &op.data {
        walk(d, &mut out);
    }
    out
}

/// Order in which operations can run (indexes into `ops`), plus the operations that sit in a
/// reference cycle and cannot run. Independent operations keep their request order.
pub fn execution_order(ops: &[BulkOp]) -> (Vec<usize>, Vec<usize>) {
    let producer: HashMap<&str, usize> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.bulk_id.as_deref().map(|b| (b, i)))
        .collect();
    // deps[i]: operations i waits for
    let mut deps: Vec<BTreeSet<usize>> = ops
        .iter()
        .enumerate()
        .map(|(i, o)| {
            references(o)
                .iter()
                .filter_map(|b| producer.get(b.as_str()).copied())
                .filter(|&p| p != i)
                .collect()
        })
        .collect();
    let self_ref: BTreeSet<usize> = ops
        .iter()
        .enumerate()
        .filter(|(i, o)| {
            o.bulk_id
                .as_ref()
                .is_some_and(|b| references(o).contains(b))
                && producer.get(o.bulk_id.as_deref().unwrap_or("")) == Some(i)
        })
        .map(|(i, _)| i)
        .collect();
    let mut order = Vec::with_capacity(ops.len());
    let mut done = vec![false; ops.len()];
    // Repeatedly take the first operation (in request order) whose dependencies are done.
    let mut ready: BTreeMap<usize, ()> = BTreeMap::new();
    for (i, d) in deps.iter().enumerate() {
        if d.is_empty() && !self_ref.contains(&i) {
            ready.insert(i, ());
        }
    }
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); ops.len()];
    for (i, d) in deps.iter().enumerate() {
        for &p in d {
            dependents[p].push(i);
        }
    }
    while let Some((&i, _)) = ready.iter().next() {
        ready.remove(&i);
        done[i] = true;
        order.push(i);
        for &j in &dependents[i] {
            deps[j].remove(&i);
            if deps[j].is_empty() && !done[j] && !self_ref.contains(&j) {
                ready.insert(j, ());
            }
        }
    }
    let cyclic = (0..ops.len()).filter(|&i| !done[i]).collect();
    (order, cyclic)
}

/// Replaces `bulkId:<id>` strings with the ids of created resources. Returns the first bulkId
/// that has no id (never declared, or its POST failed).
pub fn substitute(value: &mut Value, ids: &HashMap<String, String>) -> Result<(), String> {
    match value {
        Value::String(s) => {
            if let Some(b) = s.strip_prefix(PREFIX) {
                *s = ids.get(b).cloned().ok_or_else(|| b.to_string())?;
            }
            Ok(())
        }
        Value::Array(a) => a.iter_mut().try_for_each(|x| substitute(x, ids)),
        Value::Object(o) => o.values_mut().try_for_each(|x| substitute(x, ids)),
        _ => Ok(()),
    }
}

/// Replaces `bulkId:<id>` path segments.
pub fn substitute_path(path: &str, ids: &HashMap<String, String>) -> Result<String, String> {
    path.split('/')
        .map(|seg| match seg.strip_prefix(PREFIX) {
            Some(b) => ids.get(b).cloned().ok_or_else(|| b.to_string()),
            None => Ok(seg.to_string()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|segs| segs.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(ops: Value) -> BulkRequest {
        parse_bulk(&json!({"schemas": [BULK_REQUEST], "Operations": ops}), 100).unwrap()
    }

    #[test]
    fn references_are_resolved_in_any_order() {
        // The group (first) references a user created later.
        let r = req(json!([
            {"method": "POST", "path": "/Groups", "bulkId": "g", "data": {"members": [{"value": "bulkId:u"}]}},
            {"method": "POST", "path": "/Users", "bulkId": "u", "data": {"userName": "a"}},
            {"method": "PATCH", "path": "/Groups/bulkId:g", "data": {}},
        ]));
        let (order, cyclic) = execution_order(&r.ops);
        assert_eq!(order, vec![1, 0, 2]);
        assert!(cyclic.is_empty());
    }

    #[test]
    fn cycles_are_detected() {
        let r = req(json!([
            {"method": "POST", "path": "/Groups", "bulkId": "a", "data": {"members": [{"value": "bulkId:b"}]}},
            {"method": "POST", "path": "/Groups", "bulkId": "b", "data": {"members": [{"value": "bulkId:a"}]}},
            {"method": "POST", "path": "/Groups", "bulkId": "self", "data": {"members": [{"value": "bulkId:self"}]}},
            {"method": "POST", "path": "/Users", "bulkId": "free", "data": {}},
        ]));
        let (order, cyclic) = execution_order(&r.ops);
        assert_eq!(order, vec![3]);
        assert_eq!(cyclic, vec![0, 1, 2]);
    }

    #[test]
    fn substitution_and_errors() {
        let ids = HashMap::from([("u".to_string(), "123".to_string())]);
        let mut v = json!({"members": [{"value": "bulkId:u"}, {"value": "plain"}]});
        substitute(&mut v, &ids).unwrap();
        assert_eq!(
            v,
            json!({"members": [{"value": "123"}, {"value": "plain"}]})
        );
        assert_eq!(
            substitute(&mut json!(["bulkId:nope"]), &ids),
            Err("nope".to_string())
        );
        assert_eq!(
            substitute_path("/Users/bulkId:u", &ids).unwrap(),
            "/Users/123"
        );
        let too_many = json!({"schemas": [BULK_REQUEST], "Operations": [{"method": "DELETE", "path": "/Users/1"}, {"method": "DELETE", "path": "/Users/2"}]});
        assert_eq!(parse_bulk(&too_many, 1).unwrap_err().status, 413);
        let dup = json!({"schemas": [BULK_REQUEST], "Operations": [{"method": "POST", "path": "/Users", "bulkId": "x", "data": {}}, {"method": "POST", "path": "/Users", "bulkId": "x", "data": {}}]});
        assert_eq!(parse_bulk(&dup, 10).unwrap_err().status, 400);
    }
}
