//! Turning client JSON into a validated document, and documents back into SCIM JSON.
//!
//! # How client input is treated (documented leniencies)
//!
//! * Attribute names match case-insensitively and are stored under the schema's spelling.
//! * Attributes and extension URNs the schema does not know are **ignored** (not stored):
//!   identity providers send extra fields, and a create must not fail because of them.
//! * `readOnly` attributes (`id`, `meta`, `groups`, `members.display`) are ignored on input.
//! * `null` and empty arrays mean "no value".
//! * A boolean may arrive as the string `"True"`/`"false"` (Entra ID).
//! * A multi-valued attribute may arrive as a single object (OneLogin `emails`).
//! * `roles` may arrive as one comma-joined string (OneLogin), split into one role each.
//! * `schemas` may name only a SCIM 1.x core URN (OneLogin templates); the endpoint decides.
//! * A complex attribute with a `value` sub-attribute may arrive as a bare string
//!   (Entra ID `manager`).
//! * An element's `value` may be a string holding a JSON object of its sub-attributes
//!   (Entra ID app role assignments in PATCH).
//!
//! Strict mode (`Ctx::with_strict`) turns off every leniency marked "Leniency:" in this crate,
//! here and in `patch.rs` and `query.rs`: those inputs then get the RFC's error instead.
//! Unknown attributes stay ignored in both modes.
//!
//! * `password` is write-only: it never enters the document and is never returned; it is
//!   reported as a [`SecretChange`] so the caller can hash it or drop it.

use serde_json::{Map, Value};

use crate::error::ScimError;
use crate::schema::{AttrType, Attribute, Mutability, ResourceType, SchemaRegistry, Uniqueness};
use crate::store::{IndexKeys, MemberOp, ResourceRecord, ResourceWrite, SecretChange};
use crate::urns;

/// Unicode case folding used for every case-insensitive comparison and index.
pub fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// A resource type together with the registry, the context of most operations.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// the registry
    pub registry: &'a SchemaRegistry,
    /// the resource type
    pub rt: &'a ResourceType,
    /// RFC behaviour only: every identity-provider leniency is off
    pub strict: bool,
    /// most values one multi-valued attribute of a resource may hold (group members, kept
    /// apart from the document, excepted); bounds the work of every later PATCH of it
    pub max_values: usize,
}

/// The default of [`Ctx::max_values`].
pub const DEFAULT_MAX_VALUES: usize = 10_000;

/// Longest string value a resource may hold, in UTF-8 bytes. Every string value is a key of
/// an index, and a PostgreSQL B-tree entry holds at most 2,704 bytes with the tenant, type
/// and attribute path beside the value; a longer value would fail the write there while SQLite
/// took it. Both databases refuse it alike, with 400 `invalidValue`.
pub const MAX_STRING_BYTES: usize = 2_048;

impl<'a> Ctx<'a> {
    /// Looks up a resource type.
    pub fn new(registry: &'a SchemaRegistry, resource_type: &str) -> Result<Self, ScimError> {
        let rt = registry.resource_type(resource_type).ok_or_else(|| {
            ScimError::not_found(format!("Unknown resource type {resource_type}"))
        })?;
        Ok(Ctx {
            registry,
            rt,
            strict: false,
            max_values: DEFAULT_MAX_VALUES,
        })
    }

    /// Sets [`Ctx::max_values`].
    pub fn with_max_values(mut self, max_values: usize) -> Self {
        self.max_values = max_values;
        self
    }

    /// Refuses `items` as the values of `attr` when there are more than [`Ctx::max_values`].
    pub(crate) fn check_values(&self, attr: &Attribute, items: &[Value]) -> Result<(), ScimError> {
        if items.len() > self.max_values {
            return Err(ScimError::invalid_value(format!(
                "Attribute '{}' may hold at most {} values",
                attr.name, self.max_values
            )));
        }
        Ok(())
    }

    /// Turns strict mode on or off (see the module docs for what it turns off).
    pub fn with_strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    pub(crate) fn is_group(&self) -> bool {
        self.rt.schema == urns::GROUP
    }

    pub(crate) fn is_user(&self) -> bool {
        self.rt.schema == urns::USER
    }
}

/// Whether this attribute (top-level, core schema) is Group `members`, which lives in its own table.
pub(crate) fn is_members(ctx: &Ctx<'_>, attr: &Attribute) -> bool {
    ctx.is_group() && attr.name == "members"
}

/// Coerces one client value to the attribute's type. `Ok(None)` means "no value".
/// `lenient` accepts the shapes identity providers send (see the module docs).
pub fn coerce(attr: &Attribute, value: &Value, lenient: bool) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    if attr.multi_valued {
        let split;
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            // Leniency: `roles` joined into one string (`"admin, billing"`): OneLogin
            // collapses a role list that is not flagged multi-valued into one value. Only a
            // bare string is split; an array (or objects) keeps a role name with a comma.
            Value::String(joined) if lenient && attr.name == "roles" => {
                split = split_roles(joined);
                split.iter().collect()
            }
            // Leniency: one object for a multi-valued attribute (OneLogin `emails`).
            other if lenient => vec![other],
            _ => {
                return Err(ScimError::invalid_value(format!(
                    "Attribute '{}' is multi-valued: send an array",
                    attr.name
                )))
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(v) = coerce_single(attr, item, lenient)? {
                out.push(v);
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Value::Array(out)));
    }
    if value.is_array() && lenient {
        // Leniency: a single-valued attribute sent as a one-element array (Entra `manager`).
        return match value.as_array().map(Vec::as_slice) {
            Some([]) => Ok(None),
            Some([one]) => coerce_single(attr, one, lenient),
            _ => Err(ScimError::invalid_value(format!(
                "Attribute '{}' is single-valued",
                attr.name
            ))),
        };
    }
    coerce_single(attr, value, lenient)
}

/// The role names of a comma-joined `roles` string, trimmed, without empty ones.
fn split_roles(joined: &str) -> Vec<Value> {
    joined
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| Value::String(r.to_string()))
        .collect()
}

fn coerce_single(
    attr: &Attribute,
    value: &Value,
    lenient: bool,
) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    if attr.attr_type != AttrType::Complex {
        return coerce_scalar(attr, value, lenient);
    }
    let obj = match value {
        Value::Object(obj) => obj,
        // Leniency: a bare string for a complex attribute with `value` (Entra `manager`).
        Value::String(_) if lenient && attr.sub("value").is_some() => {
            let sub = attr
                .sub("value")
                .filter(|s| s.attr_type != AttrType::Complex);
            let Some(v) = sub.map(|s| coerce_scalar(s, value, lenient)).transpose()? else {
                return Ok(None);
            };
            let mut m = Map::new();
            m.extend(v.map(|v| ("value".to_string(), v)));
            return Ok((!m.is_empty()).then_some(Value::Object(m)));
        }
        _ => {
            return Err(ScimError::invalid_value(format!(
                "Attribute '{}' must be an object",
                attr.name
            )))
        }
    };
    let unwrapped = if lenient {
        unwrap_json_value(attr, obj)
    } else {
        None
    };
    let obj = unwrapped.as_ref().unwrap_or(obj);
    let mut out = Map::new();
    for (key, v) in obj {
        let Some(sub) = attr.sub(key) else { continue };
        if sub.mutability == Mutability::ReadOnly {
            continue;
        }
        if let Some(v) = coerce_scalar(sub, v, lenient)? {
            out.insert(sub.name.clone(), v);
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some(Value::Object(out)))
}

/// Leniency: an element whose `value` is a string holding a JSON object (Entra ID sends app
/// role assignments in PATCH as `{"value": "{\"id\":…,\"value\":\"25\",\"displayName\":\"Role\"}"}`,
/// and in POST as plain sub-attributes). The object's members become the element's
/// sub-attributes where the element has none of its own (`displayName` fills `display`);
/// members the schema lacks are dropped as usual. `None`: nothing to unwrap.
fn unwrap_json_value(attr: &Attribute, obj: &Map<String, Value>) -> Option<Map<String, Value>> {
    let (key, Value::String(text)) = obj.iter().find(|(k, _)| k.eq_ignore_ascii_case("value"))?
    else {
        return None;
    };
    attr.sub("value")
        .filter(|s| s.attr_type == AttrType::String)?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let Ok(Value::Object(inner)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    if !inner
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("value") && v.is_string())
    {
        return None;
    }
    let mut out: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| *k != key)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let has = |m: &Map<String, Value>, name: &str| m.keys().any(|k| k.eq_ignore_ascii_case(name));
    for (k, v) in inner {
        let name = if k.eq_ignore_ascii_case("displayName") && attr.sub("displayName").is_none() {
            "display".to_string()
        } else {
            k
        };
        if !has(&out, &name) {
            out.insert(name, v);
        }
    }
    Some(out)
}

/// Coerces a scalar value (a simple attribute or a sub-attribute).
pub fn coerce_scalar(
    attr: &Attribute,
    value: &Value,
    lenient: bool,
) -> Result<Option<Value>, ScimError> {
    let bad =
        |what: &str| ScimError::invalid_value(format!("Attribute '{}' must be {what}", attr.name));
    Ok(Some(match (attr.attr_type, value) {
        (_, Value::Null) => return Ok(None),
        // U+0000 is refused on both databases alike: PostgreSQL text cannot hold it.
        (AttrType::String | AttrType::Reference | AttrType::Binary, Value::String(s))
            if s.contains('\0') =>
        {
            return Err(bad("a string without the character U+0000"))
        }
        (AttrType::String | AttrType::Reference | AttrType::Binary, Value::String(s))
            if s.len() > MAX_STRING_BYTES =>
        {
            return Err(bad(&format!(
                "a string of at most {MAX_STRING_BYTES} bytes"
            )))
        }
        (AttrType::String | AttrType::Reference | AttrType::Binary, Value::String(_)) => {
            value.clone()
        }
        (AttrType::String | AttrType::Reference | AttrType::Binary, _) => {
            return Err(bad("a string"))
        }
        (AttrType::Boolean, Value::Bool(_)) => value.clone(),
        // Leniency: booleans as strings (Entra ID).
        (AttrType::Boolean, Value::String(s)) if lenient && s.eq_ignore_ascii_case("true") => {
            Value::Bool(true)
        }
        (AttrType::Boolean, Value::String(s)) if lenient && s.eq_ignore_ascii_case("false") => {
            Value::Bool(false)
        }
        (AttrType::Boolean, _) => return Err(bad("a boolean")),
        (AttrType::Integer, Value::Number(n)) if n.is_i64() => value.clone(),
        (AttrType::Integer, _) => return Err(bad("an integer")),
        (AttrType::Decimal, Value::Number(_)) => value.clone(),
        (AttrType::Decimal, _) => return Err(bad("a number")),
        (AttrType::DateTime, Value::String(s)) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad("an RFC 3339 date-time"))?;
            value.clone()
        }
        (AttrType::DateTime, _) => return Err(bad("an RFC 3339 date-time")),
        (AttrType::Complex, _) => return Err(bad("a simple value")),
    }))
}

/// A client document after normalization, before it becomes a [`ResourceWrite`].
#[derive(Debug, Default)]
pub(crate) struct Normalized {
    pub data: Map<String, Value>,
    pub external_id: Option<String>,
    /// Group members given in the body, if the body had the attribute
    pub members: Option<Vec<String>>,
    /// the write-only `password`, in clear, if the body set it
    pub password: Option<String>,
}

/// The prefix of the SCIM 1.x core schema URNs.
const LEGACY_CORE: &str = "urn:scim:schemas:core:";

/// Checks the `schemas` attribute of a resource body.
pub(crate) fn check_schemas(ctx: &Ctx<'_>, body: &Map<String, Value>) -> Result<(), ScimError> {
    let schemas = body
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("schemas"))
        .map(|(_, v)| v);
    let Some(Value::Array(list)) = schemas else {
        return Err(ScimError::invalid_syntax(format!(
            "The 'schemas' attribute must be an array containing \"{}\"",
            ctx.rt.schema
        )));
    };
    let has_core = list.iter().any(|v| {
        v.as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case(&ctx.rt.schema))
    });
    // Leniency: SCIM 1.x core URNs only (`urn:scim:schemas:core:1.0`, OneLogin's templates):
    // the endpoint names the resource type, so the body is read as that type.
    let legacy_core = !ctx.strict
        && list.iter().any(|v| {
            v.as_str().is_some_and(|s| {
                s.len() > LEGACY_CORE.len()
                    && s.get(..LEGACY_CORE.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(LEGACY_CORE))
            })
        });
    if !has_core && !legacy_core {
        return Err(ScimError::invalid_syntax(format!(
            "The 'schemas' attribute must contain \"{}\"",
            ctx.rt.schema
        )));
    }
    Ok(())
}

/// Normalizes a full resource body (POST / PUT).
pub(crate) fn normalize(ctx: &Ctx<'_>, body: &Map<String, Value>) -> Result<Normalized, ScimError> {
    let core = ctx
        .registry
        .core_schema(ctx.rt)
        .ok_or_else(|| ScimError::internal("resource type without core schema"))?;
    let mut out = Normalized::default();
    for (key, value) in body {
        if key.len() > 4 && key[..4].eq_ignore_ascii_case("urn:") {
            if let Some(ext) = ctx.registry.extension(ctx.rt, key) {
                let ext_obj = match value {
                    Value::Null => continue,
                    Value::Object(o) => o,
                    _ => {
                        return Err(ScimError::invalid_value(format!(
                            "Extension '{}' must be an object",
                            ext.id
                        )))
                    }
                };
                let mut ext_data = Map::new();
                for (k, v) in ext_obj {
                    let Some(attr) = ext.attribute(k) else {
                        continue;
                    };
                    if attr.mutability == Mutability::ReadOnly {
                        continue;
                    }
                    if let Some(v) = coerce(attr, v, !ctx.strict)? {
                        ext_data.insert(attr.name.clone(), v);
                    }
                }
                if !ext_data.is_empty() {
                    out.data.insert(ext.id.clone(), Value::Object(ext_data));
                }
            }
            continue;
        }
        if key.eq_ignore_ascii_case("externalId") {
            // Checked as any other string attribute (`coerce_scalar`: a string, without
            // U+0000, at most `MAX_STRING_BYTES`); kept apart from the document.
            let attr = ctx
                .registry
                .common()
                .attribute("externalId")
                .ok_or_else(|| ScimError::internal("the common schema defines no externalId"))?;
            out.external_id = match coerce_scalar(attr, value, false)? {
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                _ => None,
            };
            continue;
        }
        let Some(attr) = core.attribute(key) else {
            continue;
        };
        if is_members(ctx, attr) {
            out.members = Some(member_ids(value)?);
            continue;
        }
        if attr.mutability == Mutability::ReadOnly {
            continue; // ignored on input
        }
        if attr.mutability == Mutability::WriteOnly {
            // password: never part of the document; reported separately so it can be hashed.
            if let Some(Value::String(secret)) = coerce(attr, value, !ctx.strict)? {
                out.password = Some(secret);
            }
            continue;
        }
        if let Some(v) = coerce(attr, value, !ctx.strict)? {
            out.data.insert(attr.name.clone(), v);
        }
    }
    Ok(out)
}

/// Extracts member ids from a `members` value (array of `{"value": id}`, or one object).
pub(crate) fn member_ids(value: &Value) -> Result<Vec<String>, ScimError> {
    let items: Vec<&Value> = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let id = item
            .as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("value"))
                    .map(|(_, v)| v)
            })
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ScimError::invalid_value("Each member must be an object with a string 'value'")
            })?;
        // No resource id holds U+0000; PostgreSQL would refuse it as a parameter.
        if id.contains('\0') {
            return Err(ScimError::invalid_value(
                "A member 'value' cannot contain the character U+0000",
            ));
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

/// Validates a complete document: required attributes, single `primary`, immutables.
pub(crate) fn validate(
    ctx: &Ctx<'_>,
    n: &Normalized,
    previous: Option<&ResourceRecord>,
) -> Result<(), ScimError> {
    let core = ctx
        .registry
        .core_schema(ctx.rt)
        .ok_or_else(|| ScimError::internal("resource type without core schema"))?;
    let schemas = std::iter::once((core, None))
        .chain(ctx.registry.extensions(ctx.rt).map(|s| (s, Some(&s.id))));
    for (schema, ext_key) in schemas {
        let container = match ext_key {
            None => Some(&n.data),
            Some(k) => n.data.get(k.as_str()).and_then(Value::as_object),
        };
        let prev_container = previous.and_then(|p| match ext_key {
            None => Some(&*p.data),
            Some(k) => p.data.get(k.as_str()).and_then(Value::as_object),
        });
        for attr in &schema.attributes {
            let value = container.and_then(|c| c.get(&attr.name));
            let required =
                attr.required && attr.mutability != Mutability::ReadOnly && !is_members(ctx, attr);
            let empty = match value {
                None => true,
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if required && empty {
                return Err(ScimError::invalid_value(format!(
                    "Attribute '{}' is required",
                    attr.name
                )));
            }
            if let Some(Value::Array(items)) = value {
                if !is_members(ctx, attr) {
                    ctx.check_values(attr, items)?;
                }
                let primaries = items
                    .iter()
                    .filter(|i| i.get("primary") == Some(&Value::Bool(true)))
                    .count();
                if primaries > 1 {
                    return Err(ScimError::invalid_value(format!(
                        "At most one value of '{}' may have primary set to true",
                        attr.name
                    )));
                }
            }
            if attr.mutability == Mutability::Immutable {
                if let Some(old) = prev_container.and_then(|c| c.get(&attr.name)) {
                    if value != Some(old) {
                        return Err(ScimError::mutability(format!(
                            "Attribute '{}' is immutable",
                            attr.name
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The attributes [`index_keys`] reads: the user name and the display name.
const KEY_ATTRIBUTES: [&str; 2] = ["userName", "displayName"];

/// Computes the index keys of a document (from `KEY_ATTRIBUTES` only); the unique name is
/// the value of [`unique_attribute`].
pub fn index_keys(ctx: &Ctx<'_>, data: &Map<String, Value>) -> IndexKeys {
    let [user_name_attr, display_name_attr] = KEY_ATTRIBUTES;
    let s = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
    let user_name = if ctx.is_user() {
        s(user_name_attr)
    } else {
        None
    };
    let display_name = s(display_name_attr);
    let unique = unique_attribute(ctx.registry, ctx.rt);
    let unique_name = match unique {
        Some(k) if k == user_name_attr => user_name.as_deref().map(fold),
        Some(_) => display_name.as_deref().map(fold),
        None => None,
    };
    IndexKeys {
        unique_attribute: unique.filter(|_| unique_name.is_some()),
        unique_name,
        display_name: display_name.as_deref().map(fold),
        display: display_name.or(user_name),
    }
}

/// The attribute whose value is the unique name of `rt`'s resources ([`IndexKeys::unique_name`]):
/// the first key attribute whose core-schema definition has a `uniqueness` other than `none`
/// (`userName` for Users; `displayName` for a type declared with
/// [`SchemaRegistry::with_unique_display_names`]), or none.
pub fn unique_attribute(registry: &SchemaRegistry, rt: &ResourceType) -> Option<&'static str> {
    let core = registry.core_schema(rt)?;
    KEY_ATTRIBUTES.into_iter().find(|k| {
        core.attribute(k)
            .is_some_and(|a| a.uniqueness.is_some_and(|u| u != Uniqueness::None))
    })
}

/// Whether two documents of one resource have the same [`index_keys`], without computing
/// them: the attributes the keys are read from are equal. A store can then leave its key
/// columns (and their indexes) as they are.
pub fn same_index_keys(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    KEY_ATTRIBUTES.iter().all(|k| a.get(*k) == b.get(*k))
}

/// Validates a POST body and turns it into a write.
pub fn prepare_create(ctx: &Ctx<'_>, body: &Value) -> Result<ResourceWrite, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("The request body must be a JSON object"))?;
    check_schemas(ctx, obj)?;
    let n = normalize(ctx, obj)?;
    validate(ctx, &n, None)?;
    Ok(into_write(ctx, n, false))
}

/// Validates a PUT body against the current resource (RFC 7644 section 3.5.1) and turns it
/// into a write that replaces the resource.
pub fn prepare_replace(
    ctx: &Ctx<'_>,
    body: &Value,
    current: &ResourceRecord,
) -> Result<ResourceWrite, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("The request body must be a JSON object"))?;
    check_schemas(ctx, obj)?;
    if let Some(id) = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("id"))
        .and_then(|(_, v)| v.as_str())
    {
        if id != current.id {
            return Err(ScimError::mutability(
                "Attribute 'id' is readOnly and does not match the resource",
            ));
        }
    }
    let n = normalize(ctx, obj)?;
    validate(ctx, &n, Some(current))?;
    let mut write = into_write(ctx, n, true);
    write.previous_values = Some(crate::index::index_rows(ctx, &current.data));
    Ok(write)
}

pub(crate) fn into_write(ctx: &Ctx<'_>, n: Normalized, replace_members: bool) -> ResourceWrite {
    let keys = index_keys(ctx, &n.data);
    let values = crate::index::index_rows(ctx, &n.data);
    let mut member_ops = Vec::new();
    if ctx.is_group() {
        if replace_members {
            member_ops.push(MemberOp::RemoveAll);
        }
        if let Some(ids) = n.members {
            if !ids.is_empty() {
                member_ops.push(MemberOp::Add(ids));
            }
        }
    }
    ResourceWrite {
        data: n.data,
        external_id: n.external_id,
        keys,
        member_ops,
        unknown_members: Default::default(),
        password: n.password.map_or(SecretChange::Keep, SecretChange::Set),
        values,
        previous_values: None,
    }
}

/// Re-provisioning of a deactivated user (Okta re-assigns a user it deactivated earlier by
/// POSTing it again). When `current` is inactive, the POST body replaces it and the user is
/// active again; an active user is a genuine duplicate (409 `uniqueness`).
pub fn prepare_reactivation(
    ctx: &Ctx<'_>,
    body: &Value,
    current: &ResourceRecord,
) -> Result<ResourceWrite, ScimError> {
    if current.data.get("active") != Some(&Value::Bool(false)) {
        return Err(ScimError::uniqueness(
            "A User with this userName already exists",
        ));
    }
    let mut write = prepare_replace(ctx, body, current)?;
    if !write.data.contains_key("active") {
        write.data.insert("active".into(), Value::Bool(true));
    }
    Ok(write)
}
