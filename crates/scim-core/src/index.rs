//! The attribute-value index: every attribute value of a resource as a typed row, so that a
//! store can answer any filter on any published attribute inside the database.
//!
//! Path keys are lower case: `name.familyname`, `emails.value`, and for extensions
//! `urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:department`. Strings are
//! folded where `caseExact` is false, with the same [`fold`] used for filter values;
//! dateTimes become fixed-width UTC text so that text order is time order. The rows of one
//! element of a complex attribute share an ordinal, which is what keeps
//! `emails[type eq "work" and value co "x"]` on one element. An element is its rows: a
//! complex attribute has no row of its own (every stored element has a sub-attribute, since
//! empty objects are not kept), so `emails pr` asks whether any sub-attribute of `emails` has
//! a row.

use serde_json::{Map, Value};

use crate::resource::{fold, is_members, Ctx};
use crate::schema::{AttrType, Attribute, Mutability, Schema, SchemaRegistry};

/// The version of the rules in this module that turn a document into rows. Raise it whenever
/// a change to them would derive other rows from the same document and schemas: stores keep
/// the [`fingerprint`] the rows were built with and rebuild them when it differs.
///
/// Format 2: complex elements no longer get a marker row at the attribute's own path (six
/// of the 31 rows of a typical user; +12 % creates per second on SQLite). Format 3:
/// `userName` and `displayName` get no rows (their columns answer for them; PostgreSQL
/// creates +6 %).
pub const INDEX_FORMAT: u32 = 3;

/// What the index rows of every document depend on, as a short text: [`INDEX_FORMAT`] and,
/// per resource type, each indexed attribute's name, type, plurality, `caseExact` and
/// sub-attributes, in the core schema and every extension. Two registries with the same
/// fingerprint derive the same rows from the same document.
///
/// A store keeps the fingerprint its rows were built with. While it matches, a write may
/// compute the rows of the document it replaces instead of reading them (see
/// [`crate::store::ResourceWrite::previous_values`]); when the schemas change (an extension
/// added, removed or edited, an attribute's `caseExact` flipped), the rows are rebuilt from
/// the stored documents, since filters would otherwise search rows built by other rules.
pub fn fingerprint(registry: &SchemaRegistry) -> String {
    fn attr(sig: &mut String, a: &Attribute) {
        use std::fmt::Write;
        let _ = write!(
            sig,
            "({}:{:?}:{}:{}:{}",
            a.name,
            a.attr_type,
            a.multi_valued,
            a.is_case_exact(),
            a.mutability == Mutability::WriteOnly
        );
        for s in a.subs() {
            attr(sig, s);
        }
        sig.push(')');
    }
    let mut sig = format!("format {INDEX_FORMAT}");
    for rt in registry.resource_types() {
        sig.push_str("\nresource type ");
        sig.push_str(&rt.id);
        let schemas = registry.core_schema(rt).into_iter();
        for (n, schema) in schemas.chain(registry.extensions(rt)).enumerate() {
            sig.push_str(if n == 0 { "\ncore " } else { "\nextension " });
            sig.push_str(&schema.id);
            for a in &schema.attributes {
                attr(&mut sig, a);
            }
        }
    }
    // FNV-1a, 64 bits: stable across builds and platforms (std's hashers promise neither).
    let hash = sig.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{INDEX_FORMAT}:{hash:016x}")
}

/// The [`INDEX_FORMAT`] a [`fingerprint`] was made with (`None`: not a fingerprint).
pub fn fingerprint_format(fingerprint: &str) -> Option<u32> {
    fingerprint.split_once(':')?.0.parse().ok()
}

/// One indexed value.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    /// lower-case attribute path
    pub path: String,
    /// element index within a multi-valued attribute (0 otherwise)
    pub ordinal: i64,
    /// strings (folded unless caseExact), references, binary, dateTimes
    pub str_value: Option<String>,
    /// integers and decimals
    pub num_value: Option<f64>,
    /// booleans
    pub bool_value: Option<bool>,
}

/// The index key of an attribute path.
pub fn path_key(
    schema: &Schema,
    is_extension: bool,
    attr: &Attribute,
    sub: Option<&Attribute>,
) -> String {
    // One allocation: this runs for every value of every resource written.
    let urn = if is_extension { schema.id.as_str() } else { "" };
    let sub = sub.map_or("", |s| s.name.as_str());
    let mut key = String::with_capacity(urn.len() + attr.name.len() + sub.len() + 2);
    let mut lower = |part: &str| key.extend(part.chars().map(|c| c.to_ascii_lowercase()));
    if is_extension {
        lower(urn);
        lower(":");
    }
    lower(&attr.name);
    if !sub.is_empty() {
        lower(".");
        lower(sub);
    }
    key
}

/// Normalizes an RFC 3339 dateTime to fixed-width UTC text (`None` if it does not parse).
pub fn normalize_datetime(s: &str) -> Option<String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(crate::time_fmt::format_timestamp(t))
}

/// The typed columns of one scalar value.
pub fn scalar(attr: &Attribute, v: &Value) -> Option<(Option<String>, Option<f64>, Option<bool>)> {
    Some(match (attr.attr_type, v) {
        (AttrType::Boolean, Value::Bool(b)) => (None, None, Some(*b)),
        (AttrType::Integer | AttrType::Decimal, Value::Number(n)) => (None, n.as_f64(), None),
        (AttrType::DateTime, Value::String(s)) => (normalize_datetime(s), None, None),
        (_, Value::String(s)) if attr.is_case_exact() => (Some(s.clone()), None, None),
        (_, Value::String(s)) => (Some(fold(s)), None, None),
        _ => return None,
    })
}

/// Every index row of a document.
pub fn index_rows(ctx: &Ctx<'_>, data: &Map<String, Value>) -> Vec<IndexRow> {
    let mut rows = Vec::new();
    let Some(core) = ctx.registry.core_schema(ctx.rt) else {
        return rows;
    };
    for attr in &core.attributes {
        if is_members(ctx, attr)
            || attr.mutability == Mutability::WriteOnly
            || attr.name == "groups"
            || is_key_attribute(ctx, attr)
        {
            continue;
        }
        if let Some(v) = data.get(&attr.name) {
            push_attr(&mut rows, core, false, attr, v);
        }
    }
    for ext in ctx.registry.extensions(ctx.rt) {
        let Some(Value::Object(ext_data)) = data.get(&ext.id) else {
            continue;
        };
        for attr in &ext.attributes {
            if let Some(v) = ext_data.get(&attr.name) {
                push_attr(&mut rows, ext, true, attr, v);
            }
        }
    }
    rows
}

/// `userName` (Users) and `displayName`: each is a folded column of the resource row with an
/// index of its own (see [`crate::resource::index_keys`]), which answers every filter and sort
/// on it, so they have no rows here.
fn is_key_attribute(ctx: &Ctx<'_>, attr: &Attribute) -> bool {
    (attr.name == "userName" && ctx.is_user()) || attr.name == "displayName"
}

fn push_attr(rows: &mut Vec<IndexRow>, schema: &Schema, ext: bool, attr: &Attribute, v: &Value) {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    for (i, item) in items.into_iter().enumerate() {
        let ordinal = i as i64;
        if attr.attr_type == AttrType::Complex {
            let Value::Object(o) = item else { continue };
            for sub in attr.subs() {
                if let Some((s, n, b)) = o.get(&sub.name).and_then(|sv| scalar(sub, sv)) {
                    rows.push(IndexRow {
                        path: path_key(schema, ext, attr, Some(sub)),
                        ordinal,
                        str_value: s,
                        num_value: n,
                        bool_value: b,
                    });
                }
            }
        } else if let Some((s, n, b)) = scalar(attr, item) {
            rows.push(IndexRow {
                path: path_key(schema, ext, attr, None),
                ordinal,
                str_value: s,
                num_value: n,
                bool_value: b,
            });
        }
    }
}
