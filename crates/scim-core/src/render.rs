//! Resource JSON out: `schemas`, `id`, `meta`, attributes by `returned`, and
//! `attributes`/`excludedAttributes` projection (RFC 7644 section 3.9).

use serde_json::{json, Map, Value};

use crate::resource::Ctx;
use crate::schema::{Attribute, Returned, Schema};
use crate::store::{Include, MemberRef, ResourceRecord};

/// A parsed `attributes` / `excludedAttributes` pair.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    attributes: Option<Vec<Entry>>,
    excluded: Vec<Entry>,
}

/// One resolved attribute reference: schema URN, attribute and sub-attribute (lower-cased).
/// `attr == None` names a whole extension.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    schema: String,
    attr: Option<String>,
    sub: Option<String>,
}

impl Projection {
    /// Parses the comma-separated query parameters. Names the schema does not know are ignored.
    pub fn parse(ctx: &Ctx<'_>, attributes: Option<&str>, excluded: Option<&str>) -> Self {
        let parse_list = |s: &str| -> Vec<Entry> {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .filter_map(|p| resolve(ctx, p))
                .collect()
        };
        Projection {
            attributes: attributes.filter(|s| !s.trim().is_empty()).map(parse_list),
            excluded: excluded.map(parse_list).unwrap_or_default(),
        }
    }

    /// Whether the top-level attribute `attr` of `schema` is returned.
    pub fn includes(&self, schema: &Schema, attr: &Attribute) -> bool {
        match attr.returned {
            Returned::Never => return false,
            Returned::Always => return true,
            _ => {}
        }
        let sid = schema.id.to_ascii_lowercase();
        let aname = attr.name.to_ascii_lowercase();
        if let Some(list) = &self.attributes {
            return list.iter().any(|e| {
                e.schema == sid && (e.attr.is_none() || e.attr.as_deref() == Some(&aname))
            });
        }
        if attr.returned == Returned::Request {
            return false;
        }
        !self.excluded.iter().any(|e| {
            e.schema == sid
                && (e.attr.is_none() || (e.attr.as_deref() == Some(&aname) && e.sub.is_none()))
        })
    }

    /// Whether sub-attribute `sub` of an included attribute is returned.
    fn includes_sub(&self, schema: &Schema, attr: &Attribute, sub: &Attribute) -> bool {
        match sub.returned {
            Returned::Never => return false,
            Returned::Always => return true,
            _ => {}
        }
        let sid = schema.id.to_ascii_lowercase();
        let aname = attr.name.to_ascii_lowercase();
        let sname = sub.name.to_ascii_lowercase();
        let same_attr = |e: &&Entry| e.schema == sid && e.attr.as_deref() == Some(&aname);
        if let Some(list) = &self.attributes {
            let named: Vec<&Entry> = list.iter().filter(same_attr).collect();
            // `attributes=emails` returns all sub-attributes; `attributes=emails.value` only value.
            if !named.is_empty() && named.iter().all(|e| e.sub.is_some()) {
                return named.iter().any(|e| e.sub.as_deref() == Some(&sname));
            }
            return sub.returned != Returned::Request;
        }
        sub.returned != Returned::Request
            && !self
                .excluded
                .iter()
                .filter(same_attr)
                .any(|e| e.sub.as_deref() == Some(&sname))
    }

    /// Which derived parts a store must read for this projection.
    pub fn include(&self, ctx: &Ctx<'_>) -> Include {
        let mut inc = Include::default();
        if let Some(core) = ctx.registry.core_schema(ctx.rt) {
            if ctx.is_group() {
                inc.members = core
                    .attribute("members")
                    .is_some_and(|a| self.includes(core, a));
            }
            if ctx.is_user() {
                inc.groups = core
                    .attribute("groups")
                    .is_some_and(|a| self.includes(core, a));
            }
        }
        inc
    }
}

fn resolve(ctx: &Ctx<'_>, raw: &str) -> Option<Entry> {
    // A whole extension?
    if let Some(ext) = ctx.registry.extension(ctx.rt, raw) {
        return Some(Entry {
            schema: ext.id.to_ascii_lowercase(),
            attr: None,
            sub: None,
        });
    }
    let p = scim_filter::AttrPath::parse_token(raw)?;
    let r = ctx
        .registry
        .resolve(ctx.rt, p.urn.as_deref(), &p.name, p.sub.as_deref())?;
    // Common attributes (`id`, `externalId`, `meta`) are filed under the core schema.
    Some(Entry {
        schema: r.schema.id.to_ascii_lowercase(),
        attr: Some(r.attr.name.to_ascii_lowercase()),
        sub: r.sub.map(|s| s.name.to_ascii_lowercase()),
    })
}

/// The weak entity tag of a version.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// Parses an entity tag (weak or strong) back into a version.
pub fn parse_etag(tag: &str) -> Option<i64> {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// Renders a stored resource as SCIM JSON. `base_url` is the SCIM base (`http://host/scim/v2`).
pub fn render(
    ctx: &Ctx<'_>,
    rec: &ResourceRecord,
    base_url: &str,
    projection: &Projection,
) -> Value {
    let registry = ctx.registry;
    let mut out = Map::new();
    let mut schemas = vec![Value::String(ctx.rt.schema.clone())];
    for ext in registry.extensions(ctx.rt) {
        if rec.data.contains_key(&ext.id) {
            schemas.push(Value::String(ext.id.clone()));
        }
    }
    out.insert("schemas".into(), Value::Array(schemas));
    out.insert("id".into(), Value::String(rec.id.clone()));
    let common = registry.common();
    if let (Some(ext_id), Some(attr)) = (&rec.external_id, common.attribute("externalId")) {
        if projection.includes(core_or(registry, ctx), attr) {
            out.insert("externalId".into(), Value::String(ext_id.clone()));
        }
    }
    let location = format!("{}{}/{}", base_url, ctx.rt.endpoint, rec.id);
    let Some(core) = registry.core_schema(ctx.rt) else {
        return Value::Object(out);
    };
    for attr in &core.attributes {
        if !projection.includes(core, attr) {
            continue;
        }
        let value = match attr.name.as_str() {
            "members" if ctx.rt.schema == crate::urns::GROUP => {
                rec.members.as_ref().map(|m| refs(base_url, registry, m))
            }
            "groups" if ctx.rt.schema == crate::urns::USER => {
                rec.groups.as_ref().map(|g| refs(base_url, registry, g))
            }
            _ => rec.data.get(&attr.name).cloned(),
        };
        if let Some(v) = value {
            if let Some(v) = project_value(projection, core, attr, v) {
                out.insert(attr.name.clone(), v);
            }
        }
    }
    for ext in registry.extensions(ctx.rt) {
        let Some(Value::Object(ext_data)) = rec.data.get(&ext.id) else {
            continue;
        };
        let mut ext_out = Map::new();
        for attr in &ext.attributes {
            if !projection.includes(ext, attr) {
                continue;
            }
            if let Some(v) = ext_data
                .get(&attr.name)
                .cloned()
                .and_then(|v| project_value(projection, ext, attr, v))
            {
                ext_out.insert(attr.name.clone(), v);
            }
        }
        if !ext_out.is_empty() {
            out.insert(ext.id.clone(), Value::Object(ext_out));
        }
    }
    if let Some(meta_attr) = common.attribute("meta") {
        if projection.includes(core, meta_attr) {
            let meta = json!({
                "resourceType": ctx.rt.name,
                "created": rec.created,
                "lastModified": rec.last_modified,
                "location": location,
                "version": etag(rec.version),
            });
            if let Some(meta) = project_value(projection, core, meta_attr, meta) {
                out.insert("meta".into(), meta);
            }
        }
    }
    Value::Object(out)
}

fn core_or<'a>(registry: &'a crate::schema::SchemaRegistry, ctx: &Ctx<'a>) -> &'a Schema {
    registry
        .core_schema(ctx.rt)
        .unwrap_or_else(|| registry.common())
}

fn refs(base_url: &str, registry: &crate::schema::SchemaRegistry, members: &[MemberRef]) -> Value {
    Value::Array(
        members
            .iter()
            .map(|m| {
                let endpoint = registry
                    .resource_type(&m.resource_type)
                    .map(|r| r.endpoint.as_str())
                    .unwrap_or("");
                let mut o = Map::new();
                o.insert("value".into(), Value::String(m.id.clone()));
                o.insert(
                    "$ref".into(),
                    Value::String(format!("{base_url}{endpoint}/{}", m.id)),
                );
                if let Some(d) = &m.display {
                    o.insert("display".into(), Value::String(d.clone()));
                }
                o.insert("type".into(), Value::String(m.resource_type.clone()));
                Value::Object(o)
            })
            .collect(),
    )
}

/// Applies sub-attribute projection to one attribute value.
fn project_value(p: &Projection, schema: &Schema, attr: &Attribute, value: Value) -> Option<Value> {
    if attr.subs().is_empty() {
        return Some(value);
    }
    let keep = |obj: Map<String, Value>| -> Option<Value> {
        let filtered: Map<String, Value> = obj
            .into_iter()
            .filter(|(k, _)| attr.sub(k).is_none_or(|s| p.includes_sub(schema, attr, s)))
            .collect();
        (!filtered.is_empty()).then_some(Value::Object(filtered))
    };
    match value {
        Value::Object(o) => keep(o),
        Value::Array(items) => {
            let items: Vec<Value> = items
                .into_iter()
                .filter_map(|i| match i {
                    Value::Object(o) => keep(o),
                    other => Some(other),
                })
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        other => Some(other),
    }
}
