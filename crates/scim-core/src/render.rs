//! Resource JSON out: `schemas`, `id`, `meta`, attributes by `returned`, and
//! `attributes`/`excludedAttributes` projection (RFC 7644 section 3.9).

use serde::ser::{Error as _, SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::resource::Ctx;
use crate::schema::{Attribute, Returned, Schema};
use crate::store::{Document, Include, MemberRef, ResourceRecord};

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

impl Entry {
    // The entry's names are lower-cased once, when parsed; the schema's keep their case.
    fn is_schema(&self, schema: &Schema) -> bool {
        self.schema.eq_ignore_ascii_case(&schema.id)
    }

    fn is_attr(&self, attr: &Attribute) -> bool {
        self.attr
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(&attr.name))
    }

    fn is_sub(&self, sub: &Attribute) -> bool {
        self.sub
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(&sub.name))
    }
}

impl Projection {
    /// Parses the comma-separated query parameters. Names the schema does not know are ignored.
    pub fn parse(ctx: &Ctx<'_>, attributes: Option<&str>, excluded: Option<&str>) -> Self {
        // Each name once: every resource rendered is checked against the list, and a client
        // may repeat names (a 24,000-name list of three names cost 0.3 s per page of 100).
        // Names that resolve are the schemas' attributes, so the list stays short.
        let parse_list = |s: &str| -> Vec<Entry> {
            let mut entries: Vec<Entry> = Vec::new();
            for e in s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .filter_map(|p| resolve(ctx, p))
            {
                if !entries.contains(&e) {
                    entries.push(e);
                }
            }
            entries
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
        if let Some(list) = &self.attributes {
            return list
                .iter()
                .any(|e| e.is_schema(schema) && (e.attr.is_none() || e.is_attr(attr)));
        }
        if attr.returned == Returned::Request {
            return false;
        }
        !self.excluded.iter().any(|e| {
            e.is_schema(schema) && (e.attr.is_none() || (e.is_attr(attr) && e.sub.is_none()))
        })
    }

    /// Whether sub-attribute `sub` of an included attribute is returned.
    fn includes_sub(&self, schema: &Schema, attr: &Attribute, sub: &Attribute) -> bool {
        match sub.returned {
            Returned::Never => return false,
            Returned::Always => return true,
            _ => {}
        }
        let same_attr = |e: &&Entry| e.is_schema(schema) && e.is_attr(attr);
        if let Some(list) = &self.attributes {
            // `attributes=emails` returns all sub-attributes; `attributes=emails.value` only value.
            let mut named = list.iter().filter(same_attr).peekable();
            if named.peek().is_some() && list.iter().filter(same_attr).all(|e| e.sub.is_some()) {
                return named.any(|e| e.is_sub(sub));
            }
            return sub.returned != Returned::Request;
        }
        sub.returned != Returned::Request
            && !self
                .excluded
                .iter()
                .filter(same_attr)
                .any(|e| e.is_sub(sub))
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
/// Builds a [`Value`]; to write the JSON out, serialize a [`Rendered`] instead, which copies
/// nothing.
pub fn render(
    ctx: &Ctx<'_>,
    rec: &ResourceRecord,
    base_url: &str,
    projection: &Projection,
) -> Value {
    // A map of strings and JSON values always serializes.
    serde_json::to_value(Rendered::new(ctx, rec, base_url, projection)).unwrap_or(Value::Null)
}

/// A stored resource as SCIM JSON: `schemas`, `id`, `externalId`, the core attributes in
/// schema order, the extensions, `meta`, with `returned` and the projection applied. It
/// serializes straight from the record (attribute values are written, not copied).
pub struct Rendered<'a> {
    ctx: &'a Ctx<'a>,
    rec: &'a ResourceRecord,
    base_url: &'a str,
    projection: &'a Projection,
}

impl<'a> Rendered<'a> {
    /// The resource `rec` of type `ctx.rt` as it is returned under `base_url`.
    pub fn new(
        ctx: &'a Ctx<'a>,
        rec: &'a ResourceRecord,
        base_url: &'a str,
        projection: &'a Projection,
    ) -> Self {
        Rendered {
            ctx,
            rec,
            base_url,
            projection,
        }
    }
}

impl Serialize for Rendered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (ctx, rec, projection) = (self.ctx, self.rec, self.projection);
        let registry = ctx.registry;
        let attrs = Attrs::of(&rec.data);
        let extensions = || {
            registry
                .extensions(ctx.rt)
                .filter(|ext| attrs.contains(&ext.id))
        };
        let mut out = serializer.serialize_map(None)?;
        let schemas: Vec<&str> = std::iter::once(ctx.rt.schema.as_str())
            .chain(extensions().map(|e| e.id.as_str()))
            .collect();
        out.serialize_entry("schemas", &schemas)?;
        out.serialize_entry("id", &rec.id)?;
        let common = registry.common();
        if let (Some(ext_id), Some(attr)) = (&rec.external_id, common.attribute("externalId")) {
            if projection.includes(core_or(registry, ctx), attr) {
                out.serialize_entry("externalId", ext_id)?;
            }
        }
        let Some(core) = registry.core_schema(ctx.rt) else {
            return out.end();
        };
        for attr in &core.attributes {
            if !projection.includes(core, attr) {
                continue;
            }
            let links = match attr.name.as_str() {
                "members" if ctx.rt.schema == crate::urns::GROUP => {
                    Some((rec.members.as_deref(), RefType::ResourceType))
                }
                "groups" if ctx.rt.schema == crate::urns::USER => {
                    Some((rec.groups.as_deref(), RefType::Membership))
                }
                _ => None,
            };
            match links {
                Some((Some(list), ref_type)) => {
                    let refs = Refs {
                        base_url: self.base_url,
                        registry,
                        list,
                        keep: Keep::new(projection, core, attr),
                        ref_type,
                    };
                    if refs.shows_anything() {
                        out.serialize_entry(&attr.name, &refs)?;
                    }
                }
                Some((None, _)) => {}
                None => {
                    if let Some(v) = attrs.get(&attr.name) {
                        let keep = Keep::new(projection, core, attr);
                        if let Some(shown) = Out::of(keep, v).map_err(S::Error::custom)? {
                            out.serialize_entry(&attr.name, &shown)?;
                        }
                    }
                }
            }
        }
        for ext in extensions() {
            let owned;
            let data = match attrs.get(&ext.id) {
                Some(Attr::Parsed(Value::Object(o))) => Attrs::Parsed(o),
                Some(Attr::Stored(raw)) => match Attrs::split(raw.get()) {
                    Some(top) => top,
                    None => {
                        owned = parse_raw::<S>(raw)?;
                        match &owned {
                            Value::Object(o) => Attrs::Parsed(o),
                            _ => continue,
                        }
                    }
                },
                _ => continue,
            };
            let shown = Extension::new(projection, ext, &data).map_err(S::Error::custom)?;
            if !shown.0.is_empty() {
                out.serialize_entry(&ext.id, &shown)?;
            }
        }
        if let Some(meta_attr) = common.attribute("meta") {
            if projection.includes(core, meta_attr) {
                let keep = Keep::new(projection, core, meta_attr);
                let location = format!("{}{}/{}", self.base_url, ctx.rt.endpoint, rec.id);
                let version = etag(rec.version);
                let meta = Meta {
                    resource_type: &ctx.rt.name,
                    created: &rec.created,
                    last_modified: &rec.last_modified,
                    location: &location,
                    version: &version,
                };
                if keep.all_subs_shown() {
                    out.serialize_entry("meta", &meta)?;
                } else {
                    let meta = serde_json::to_value(&meta).map_err(S::Error::custom)?;
                    entry(&mut out, "meta", keep, &meta)?;
                }
            }
        }
        out.end()
    }
}

/// A document's top-level attributes: its parsed map, or slices of its stored text (read
/// without building values, and written out as they are where projection keeps all of them).
enum Attrs<'a> {
    Parsed(&'a Map<String, Value>),
    Stored(std::collections::BTreeMap<&'a str, &'a RawValue>),
}

/// One attribute value of [`Attrs`].
enum Attr<'a> {
    Parsed(&'a Value),
    Stored(&'a RawValue),
}

impl<'a> Attrs<'a> {
    fn of(doc: &'a Document) -> Self {
        doc.stored_text()
            .and_then(Attrs::split)
            .unwrap_or(Attrs::Parsed(doc))
    }

    /// The attributes of a stored JSON object, as slices of its text; `None` for text that is
    /// not an object, or has a key with escapes (which cannot be borrowed): read it parsed.
    fn split(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok().map(Attrs::Stored)
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Attrs::Parsed(m) => m.contains_key(name),
            Attrs::Stored(m) => m.contains_key(name),
        }
    }

    fn get(&self, name: &str) -> Option<Attr<'a>> {
        match self {
            Attrs::Parsed(m) => m.get(name).map(Attr::Parsed),
            Attrs::Stored(m) => m.get(name).map(|r| Attr::Stored(r)),
        }
    }
}

/// What is written of one shown attribute value: its stored text as it is, or the value with
/// sub-attribute projection applied.
enum Out<'a> {
    Stored(&'a RawValue),
    Projected(Keep<'a>, std::borrow::Cow<'a, Value>),
}

impl<'a> Out<'a> {
    /// What of `v` is written, `None` if nothing of it shows.
    fn of(keep: Keep<'a>, v: Attr<'a>) -> Result<Option<Self>, serde_json::Error> {
        use std::borrow::Cow;
        Ok(match v {
            Attr::Parsed(v) => keep
                .shows(v)
                .then_some(Out::Projected(keep, Cow::Borrowed(v))),
            Attr::Stored(raw) if keep.shows_all(raw) => Some(Out::Stored(raw)),
            Attr::Stored(raw) => {
                let v: Value = serde_json::from_str(raw.get())?;
                keep.shows(&v)
                    .then_some(Out::Projected(keep, Cow::Owned(v)))
            }
        })
    }
}

impl Serialize for Out<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Out::Stored(raw) => raw.serialize(serializer),
            Out::Projected(keep, value) => Projected { keep: *keep, value }.serialize(serializer),
        }
    }
}

/// `meta`, written without building a value.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta<'a> {
    resource_type: &'a str,
    created: &'a str,
    last_modified: &'a str,
    location: &'a str,
    version: &'a str,
}

/// The value of a slice of stored text (which was checked to be JSON when it was read).
fn parse_raw<S: Serializer>(raw: &RawValue) -> Result<Value, S::Error> {
    serde_json::from_str(raw.get()).map_err(S::Error::custom)
}

fn core_or<'a>(registry: &'a crate::schema::SchemaRegistry, ctx: &Ctx<'a>) -> &'a Schema {
    registry
        .core_schema(ctx.rt)
        .unwrap_or_else(|| registry.common())
}

/// Which sub-attributes of one included attribute are shown.
#[derive(Clone, Copy)]
struct Keep<'a> {
    projection: &'a Projection,
    schema: &'a Schema,
    attr: &'a Attribute,
}

impl<'a> Keep<'a> {
    fn new(projection: &'a Projection, schema: &'a Schema, attr: &'a Attribute) -> Self {
        Keep {
            projection,
            schema,
            attr,
        }
    }

    /// Whether the key `k` of a complex value is shown: unknown keys are, known ones by
    /// `returned` and the projection.
    fn key(&self, k: &str) -> bool {
        self.attr
            .sub(k)
            .is_none_or(|s| self.projection.includes_sub(self.schema, self.attr, s))
    }

    /// Whether a complex value (object) keeps any key.
    fn object_shows(&self, o: &Map<String, Value>) -> bool {
        o.keys().any(|k| self.key(k))
    }

    /// Whether an item of a multi-valued attribute is shown: an object that keeps a key, or a
    /// simple value.
    fn item_shows(&self, v: &Value) -> bool {
        match v {
            Value::Object(o) => self.object_shows(o),
            _ => true,
        }
    }

    /// Whether the stored text of a value is written out as it is: every sub-attribute is
    /// shown, and the text holds no empty object or array (which projection leaves out).
    fn shows_all(&self, raw: &RawValue) -> bool {
        if self.attr.subs().is_empty() {
            return true;
        }
        let text = raw.get();
        !text.contains("{}") && !text.contains("[]") && self.all_subs_shown()
    }

    /// Whether projection keeps every sub-attribute.
    fn all_subs_shown(&self) -> bool {
        self.attr
            .subs()
            .iter()
            .all(|s| self.projection.includes_sub(self.schema, self.attr, s))
    }

    /// Whether anything of `v` is shown (an object or array projected to nothing is left out).
    fn shows(&self, v: &Value) -> bool {
        if self.attr.subs().is_empty() {
            return true;
        }
        match v {
            Value::Object(o) => self.object_shows(o),
            Value::Array(items) => items.iter().any(|i| self.item_shows(i)),
            _ => true,
        }
    }
}

/// Writes `name: value` with sub-attribute projection, or nothing when nothing of it shows.
fn entry<M: SerializeMap>(
    out: &mut M,
    name: &str,
    keep: Keep<'_>,
    v: &Value,
) -> Result<(), M::Error> {
    if keep.shows(v) {
        out.serialize_entry(name, &Projected { keep, value: v })?;
    }
    Ok(())
}

/// One attribute value with sub-attribute projection applied (see [`Keep::shows`]).
struct Projected<'a> {
    keep: Keep<'a>,
    value: &'a Value,
}

impl Serialize for Projected<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let keep = self.keep;
        if keep.attr.subs().is_empty() {
            return self.value.serialize(serializer);
        }
        match self.value {
            Value::Object(o) => KeptKeys { keep, object: o }.serialize(serializer),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(None)?;
                for item in items.iter().filter(|i| keep.item_shows(i)) {
                    match item {
                        Value::Object(o) => seq.serialize_element(&KeptKeys { keep, object: o })?,
                        other => seq.serialize_element(other)?,
                    }
                }
                seq.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// The keys of one complex value that [`Keep::key`] shows.
struct KeptKeys<'a> {
    keep: Keep<'a>,
    object: &'a Map<String, Value>,
}

impl Serialize for KeptKeys<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(None)?;
        for (k, v) in self.object.iter().filter(|(k, _)| self.keep.key(k)) {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The shown attributes of one extension, in schema order.
struct Extension<'a>(Vec<(&'a str, Out<'a>)>);

impl<'a> Extension<'a> {
    fn new(
        projection: &'a Projection,
        schema: &'a Schema,
        data: &Attrs<'a>,
    ) -> Result<Self, serde_json::Error> {
        let mut shown = Vec::new();
        for attr in &schema.attributes {
            if !projection.includes(schema, attr) {
                continue;
            }
            let Some(v) = data.get(&attr.name) else {
                continue;
            };
            if let Some(out) = Out::of(Keep::new(projection, schema, attr), v)? {
                shown.push((attr.name.as_str(), out));
            }
        }
        Ok(Extension(shown))
    }
}

impl Serialize for Extension<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            m.serialize_entry(name, value)?;
        }
        m.end()
    }
}

/// `members` or `groups`: references to the resources at the other end of memberships.
struct Refs<'a> {
    base_url: &'a str,
    registry: &'a crate::schema::SchemaRegistry,
    list: &'a [MemberRef],
    keep: Keep<'a>,
    ref_type: RefType,
}

/// What a reference's `type` says.
#[derive(Clone, Copy)]
enum RefType {
    /// a group's `members`: the member's resource type (`User`, `Group`)
    ResourceType,
    /// a user's `groups`: how the membership comes about, of the canonical values `direct`
    /// and `indirect` (RFC 7643 section 4.1.2)
    Membership,
}

impl Refs<'_> {
    /// Which of `value`, `$ref`, `display`, `type` are shown.
    fn keys(&self) -> [bool; 4] {
        ["value", "$ref", "display", "type"].map(|k| self.keep.key(k))
    }

    /// Whether a reference shows anything (`display` only where it has one).
    fn item_shows(keys: [bool; 4], m: &MemberRef) -> bool {
        let [value, reference, display, kind] = keys;
        value || reference || kind || (display && m.display.is_some())
    }

    fn shows_anything(&self) -> bool {
        let keys = self.keys();
        self.list.iter().any(|m| Self::item_shows(keys, m))
    }
}

impl Serialize for Refs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let keys = self.keys();
        let mut seq = serializer.serialize_seq(None)?;
        for m in self.list.iter().filter(|m| Self::item_shows(keys, m)) {
            let item = RefItem::new(self.base_url, self.registry, keys, m, self.ref_type);
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

/// A group's `members` written out as a store reads them, page by page (see
/// [`ResourceStore::read_paged`](crate::store::ResourceStore::read_paged)), after the rest of
/// the group rendered without them: the JSON is what [`Rendered`] writes for the whole group,
/// with `members` moved to the end, and at most one page is held at a time.
pub struct MemberPages<'a> {
    base_url: &'a str,
    registry: &'a crate::schema::SchemaRegistry,
    keys: [bool; 4],
    /// whether `"members":[` is written for the current group
    open: bool,
}

impl<'a> MemberPages<'a> {
    /// The writer for groups of `ctx.rt` under `base_url` with `projection`; `None` when the
    /// projection shows no members (nothing to stream).
    pub fn new(ctx: &'a Ctx<'a>, base_url: &'a str, projection: &'a Projection) -> Option<Self> {
        if !projection.include(ctx).members {
            return None;
        }
        let core = ctx.registry.core_schema(ctx.rt)?;
        let attr = core.attribute("members")?;
        let keep = Keep::new(projection, core, attr);
        Some(MemberPages {
            base_url,
            registry: ctx.registry,
            keys: ["value", "$ref", "display", "type"].map(|k| keep.key(k)),
            open: false,
        })
    }

    /// Writes `rendered` (a group read without members) to `out`, open for its members.
    pub fn start(&mut self, out: &mut Vec<u8>, rendered: &Rendered<'_>) {
        self.open = false;
        let at = out.len();
        // A map of strings and JSON values always serializes.
        let _ = serde_json::to_writer(&mut *out, rendered);
        if out.len() > at && out.last() == Some(&b'}') {
            out.pop();
        } else {
            out.truncate(at);
            out.push(b'{');
        }
    }

    /// Writes the next members of the group last started.
    pub fn push(&mut self, out: &mut Vec<u8>, members: &[MemberRef]) {
        for m in members.iter().filter(|m| Refs::item_shows(self.keys, m)) {
            out.extend_from_slice(match self.open {
                false => b",\"members\":[",
                true => b",",
            });
            self.open = true;
            let item = RefItem::new(
                self.base_url,
                self.registry,
                self.keys,
                m,
                RefType::ResourceType,
            );
            let _ = serde_json::to_writer(&mut *out, &item);
        }
    }

    /// Closes the group last started.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.open) {
            out.push(b']');
        }
        out.push(b'}');
    }
}

struct RefItem<'a> {
    m: &'a MemberRef,
    reference: Option<String>,
    value: bool,
    display: bool,
    kind: Option<RefType>,
}

impl<'a> RefItem<'a> {
    fn new(
        base_url: &str,
        registry: &crate::schema::SchemaRegistry,
        keys: [bool; 4],
        m: &'a MemberRef,
        ref_type: RefType,
    ) -> Self {
        let [value, reference, display, kind] = keys;
        let reference = reference.then(|| {
            let endpoint = registry
                .resource_type(&m.resource_type)
                .map(|r| r.endpoint.as_str())
                .unwrap_or("");
            format!("{base_url}{endpoint}/{}", m.id)
        });
        RefItem {
            m,
            reference,
            value,
            display,
            kind: kind.then_some(ref_type),
        }
    }
}

impl Serialize for RefItem<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut o = serializer.serialize_map(None)?;
        if self.value {
            o.serialize_entry("value", &self.m.id)?;
        }
        if let Some(r) = &self.reference {
            o.serialize_entry("$ref", r)?;
        }
        if let (true, Some(d)) = (self.display, &self.m.display) {
            o.serialize_entry("display", d)?;
        }
        match self.kind {
            Some(RefType::ResourceType) => o.serialize_entry("type", &self.m.resource_type)?,
            Some(RefType::Membership) => o.serialize_entry(
                "type",
                if self.m.indirect {
                    "indirect"
                } else {
                    "direct"
                },
            )?,
            None => {}
        }
        o.end()
    }
}
