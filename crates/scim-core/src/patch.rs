//! PATCH (RFC 7644 section 3.5.2) applied to a stored document.
//!
//! Operations run in order on a copy of the document; the result is validated as a whole
//! (types, required, single `primary`, immutables), so a request applies completely or not at
//! all. Group `members` never pass through the document: they become [`MemberOp`] set
//! operations that the store applies in SQL.
//!
//! Leniencies for identity providers (each is RFC-compatible for RFC clients):
//! * `op` is case-insensitive (`Replace`, Entra ID).
//! * An empty `Operations` array is a no-op (Entra ID validator).
//! * Path-less `add`/`replace` values may use dotted (`name.givenName`) and URN-qualified keys.
//! * A path-less value carrying the resource's own `id` is accepted (Okta group rename); a
//!   different `id` is a `mutability` error. `meta`, `groups` and `schemas` in it are ignored.
//! * `remove` on `members` with a `value` list removes exactly those members, never all.
//! * `add`/`replace` on a value path that matches nothing creates the element from the
//!   filter's `eq` terms (Entra ID `emails[type eq "work"].value`).

use scim_filter::{AttrPath, CompValue, CompareOp, Filter, Limits, PatchPath};
use serde_json::{Map, Value};

use crate::error::ScimError;
use crate::eval;
use crate::resource::{
    coerce, coerce_scalar, into_write, is_members, member_ids, validate, Ctx, Normalized,
};
use crate::schema::{AttrType, Attribute, Mutability};
use crate::store::{MemberOp, ResourceRecord, ResourceWrite, SecretChange};
use crate::urns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Remove,
    Replace,
}

/// What an operation targets inside the document.
struct Target<'a> {
    /// extension URN key, when the attribute lives in an extension
    ext: Option<&'a str>,
    attr: &'a Attribute,
    sub: Option<&'a Attribute>,
}

/// Applies a PatchOp body to `current` and returns the validated write.
pub fn prepare_patch(
    ctx: &Ctx<'_>,
    body: &Value,
    current: &ResourceRecord,
    limits: &Limits,
) -> Result<ResourceWrite, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("The request body must be a JSON object"))?;
    let schemas = get_ci(obj, "schemas").and_then(Value::as_array);
    if !schemas.is_some_and(|s| {
        s.iter().any(|v| {
            v.as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case(urns::PATCH_OP))
        })
    }) {
        return Err(ScimError::invalid_syntax(format!(
            "The 'schemas' attribute must contain \"{}\"",
            urns::PATCH_OP
        )));
    }
    let ops = match get_ci(obj, "Operations") {
        Some(Value::Array(ops)) => ops,
        Some(Value::Null) | None => {
            return Err(ScimError::invalid_syntax("'Operations' must be an array"))
        }
        Some(_) => return Err(ScimError::invalid_syntax("'Operations' must be an array")),
    };
    // Leniency: an empty Operations array is a no-op (Entra ID validator); RFC 7644 wants one.
    if ops.is_empty() && ctx.strict {
        return Err(ScimError::invalid_value(
            "'Operations' must contain at least one operation",
        ));
    }
    // Parsed in place and then copied, not copied as text and parsed: validation and the
    // store read `current.data` again (immutable attributes, whether anything changed), and
    // this way the stored text is parsed once per PATCH instead of twice.
    let previous_values = crate::index::index_rows(ctx, &current.data);
    let mut doc = (*current.data).clone();
    // Extension attributes are edited in their own maps and folded back at the end.
    let mut exts = std::collections::BTreeMap::new();
    for ext in ctx.registry.extensions(ctx.rt) {
        if let Some(Value::Object(o)) = doc.remove(&ext.id) {
            exts.insert(ext.id.clone(), o);
        }
    }
    let mut p = Patcher {
        ctx: *ctx,
        doc,
        exts,
        current,
        password_removed: false,
        member_ops: Vec::new(),
    };
    if let Some(ext) = &current.external_id {
        p.doc
            .insert("externalId".into(), Value::String(ext.clone()));
    }
    for (i, op) in ops.iter().enumerate() {
        p.apply(op, limits).map_err(|mut e| {
            e.detail = format!("Operation {}: {}", i + 1, e.detail);
            e
        })?;
    }
    let external_id = match p.doc.remove("externalId") {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    for (urn, ext) in std::mem::take(&mut p.exts) {
        if !ext.is_empty() {
            p.doc.insert(urn, Value::Object(ext));
        }
    }
    p.doc.retain(|_, v| {
        !matches!(v, Value::Object(o) if o.is_empty())
            && !matches!(v, Value::Array(a) if a.is_empty())
    });
    // The write-only password went through the document only to reuse the PATCH machinery.
    let password = match p.doc.remove("password") {
        Some(Value::String(secret)) => SecretChange::Set(secret),
        _ if p.password_removed => SecretChange::Clear,
        _ => SecretChange::Keep,
    };
    let n = Normalized {
        data: p.doc,
        external_id,
        members: None,
        password: None,
    };
    validate(ctx, &n, Some(current))?;
    let mut write = into_write(ctx, n, false);
    write.member_ops = p.member_ops;
    write.password = password;
    write.previous_values = Some(previous_values);
    Ok(write)
}

/// Refuses a PatchOp body with more than `max` operations (413, as `/Bulk` refuses more than
/// `maxOperations`), before anything is read: each operation on a multi-valued attribute
/// visits its values, so the count bounds the work of one PATCH. A body without an
/// `Operations` array passes; [`prepare_patch`] refuses it.
pub fn check_operation_count(body: &Value, max: usize) -> Result<(), ScimError> {
    let ops = body
        .as_object()
        .and_then(|o| get_ci(o, "Operations"))
        .and_then(Value::as_array);
    match ops {
        Some(ops) if ops.len() > max => Err(ScimError::new(
            413,
            None,
            format!(
                "A PATCH may carry at most {max} operations; this one has {}",
                ops.len()
            ),
        )),
        _ => Ok(()),
    }
}

fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

struct Patcher<'a> {
    ctx: Ctx<'a>,
    doc: Map<String, Value>,
    exts: std::collections::BTreeMap<String, Map<String, Value>>,
    current: &'a ResourceRecord,
    password_removed: bool,
    member_ops: Vec<MemberOp>,
}

impl<'a> Patcher<'a> {
    fn apply(&mut self, op: &Value, limits: &Limits) -> Result<(), ScimError> {
        let op_obj = op
            .as_object()
            .ok_or_else(|| ScimError::invalid_syntax("Each operation must be an object"))?;
        // Leniency: `op` is case-insensitive (Entra ID sends `Replace`).
        let strict = self.ctx.strict;
        let kind = match get_ci(op_obj, "op")
            .and_then(Value::as_str)
            .map(|o| {
                if strict {
                    o.to_string()
                } else {
                    o.to_ascii_lowercase()
                }
            })
            .as_deref()
        {
            Some("add") => Op::Add,
            Some("remove") => Op::Remove,
            Some("replace") => Op::Replace,
            Some(other) => return Err(ScimError::invalid_syntax(format!("Unknown op '{other}'"))),
            None => return Err(ScimError::invalid_syntax("Each operation needs an 'op'")),
        };
        let value = get_ci(op_obj, "value");
        let path = match get_ci(op_obj, "path") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.trim()),
            Some(_) => return Err(ScimError::invalid_path("'path' must be a string")),
        };
        let Some(path) = path else {
            if kind == Op::Remove {
                return Err(ScimError::no_target("'remove' requires a path"));
            }
            let Some(Value::Object(values)) = value else {
                return Err(ScimError::invalid_value(
                    "A path-less operation needs an object 'value'",
                ));
            };
            return self.apply_pathless(kind, values);
        };
        // A path that is a whole extension URN.
        if let Some(ext) = self.ctx.registry.extension(self.ctx.rt, path) {
            let ext_id = ext.id.clone();
            return match (kind, value) {
                (Op::Remove, _) => {
                    self.exts.remove(&ext_id);
                    Ok(())
                }
                (_, Some(Value::Object(values))) => {
                    for (k, v) in values {
                        if let Some(attr) = ext.attribute(k) {
                            if attr.mutability != Mutability::ReadOnly {
                                let t = Target {
                                    ext: Some(&ext.id),
                                    attr,
                                    sub: None,
                                };
                                self.set(kind, &t, None, None, v)?;
                            }
                        }
                    }
                    Ok(())
                }
                _ => Err(ScimError::invalid_value(format!(
                    "The value for '{path}' must be an object"
                ))),
            };
        }
        let parsed = scim_filter::parse_patch_path(path, limits)
            .map_err(|e| ScimError::invalid_path(format!("Invalid path '{path}': {e}")))?;
        let target = self.resolve(&parsed.attr)?;
        if target.attr.mutability == Mutability::ReadOnly
            || target
                .sub
                .is_some_and(|s| s.mutability == Mutability::ReadOnly)
        {
            return Err(ScimError::mutability(format!(
                "Attribute '{path}' is readOnly"
            )));
        }
        if is_members(&self.ctx, target.attr) && target.ext.is_none() {
            return self.members(kind, &parsed, value);
        }
        let sub_after = match &parsed.sub_after_filter {
            Some(s) => Some(target.attr.sub(s).ok_or_else(|| {
                ScimError::invalid_path(format!("Unknown attribute in path '{path}'"))
            })?),
            None => None,
        };
        if let (Some(filter), Op::Remove) = (&parsed.filter, kind) {
            return self.remove_matching(&target, filter, sub_after);
        }
        match kind {
            Op::Remove => {
                self.remove(&target, value);
                Ok(())
            }
            _ => {
                let value = value
                    .ok_or_else(|| ScimError::invalid_value(format!("'{path}' needs a value")))?;
                self.set(kind, &target, parsed.filter.as_ref(), sub_after, value)
            }
        }
    }

    fn resolve(&self, path: &AttrPath) -> Result<Target<'a>, ScimError> {
        let r = self
            .ctx
            .registry
            .resolve(
                self.ctx.rt,
                path.urn.as_deref(),
                &path.name,
                path.sub.as_deref(),
            )
            .ok_or_else(|| ScimError::invalid_path(format!("Unknown attribute '{path}'")))?;
        Ok(Target {
            ext: r.is_extension.then_some(r.schema.id.as_str()),
            attr: r.attr,
            sub: r.sub,
        })
    }

    fn apply_pathless(&mut self, kind: Op, values: &Map<String, Value>) -> Result<(), ScimError> {
        for (key, v) in values {
            if let Some(ext) = self.ctx.registry.extension(self.ctx.rt, key) {
                let Value::Object(inner) = v else {
                    return Err(ScimError::invalid_value(format!(
                        "The value for '{key}' must be an object"
                    )));
                };
                for (k, v2) in inner {
                    if let Some(attr) = ext.attribute(k) {
                        if attr.mutability != Mutability::ReadOnly {
                            self.set(
                                kind,
                                &Target {
                                    ext: Some(&ext.id),
                                    attr,
                                    sub: None,
                                },
                                None,
                                None,
                                v2,
                            )?;
                        }
                    }
                }
                continue;
            }
            // Leniency: the resource's own `id` in a path-less value (Okta group rename).
            if key.eq_ignore_ascii_case("id") {
                if self.ctx.strict || v.as_str() != Some(self.current.id.as_str()) {
                    return Err(ScimError::mutability("Attribute 'id' is readOnly"));
                }
                continue;
            }
            let Some(path) = AttrPath::parse_token(key) else {
                continue;
            };
            // Leniency: dotted (`name.givenName`) and URN-qualified keys (Entra ID with
            // aadOptscim062020); RFC values hold attribute names only.
            if self.ctx.strict && (path.sub.is_some() || path.urn.is_some()) {
                return Err(ScimError::invalid_path(format!(
                    "'{key}' is not an attribute name"
                )));
            }
            let Ok(target) = self.resolve(&path) else {
                continue;
            }; // unknown: ignored
            if target.attr.mutability == Mutability::ReadOnly
                || target
                    .sub
                    .is_some_and(|s| s.mutability == Mutability::ReadOnly)
            {
                // Leniency: `meta`, `groups` echoed by clients are ignored as on PUT.
                if self.ctx.strict {
                    return Err(ScimError::mutability(format!(
                        "Attribute '{key}' is readOnly"
                    )));
                }
                continue;
            }
            if is_members(&self.ctx, target.attr) && target.ext.is_none() {
                let pp = PatchPath {
                    attr: path,
                    filter: None,
                    sub_after_filter: None,
                };
                self.members(kind, &pp, Some(v))?;
                continue;
            }
            self.set(kind, &target, None, None, v)?;
        }
        Ok(())
    }

    fn container(&mut self, ext: Option<&str>) -> &mut Map<String, Value> {
        match ext {
            None => &mut self.doc,
            Some(urn) => self.exts.entry(urn.to_string()).or_default(),
        }
    }

    /// add / replace
    fn set(
        &mut self,
        kind: Op,
        t: &Target<'_>,
        filter: Option<&Filter>,
        sub_after: Option<&Attribute>,
        value: &Value,
    ) -> Result<(), ScimError> {
        let attr = t.attr;
        let lenient = !self.ctx.strict;
        let ctx = self.ctx;
        if let Some(filter) = filter {
            return self.set_matching(kind, t, filter, sub_after, value);
        }
        let c = self.container(t.ext);
        if let Some(sub) = t.sub {
            let sv = coerce_scalar(sub, value, lenient)?;
            if attr.multi_valued {
                let arr = c
                    .entry(attr.name.clone())
                    .or_insert_with(|| Value::Array(vec![]));
                let Value::Array(items) = arr else {
                    return Ok(());
                };
                if items.is_empty() {
                    items.push(Value::Object(Map::new()));
                }
                for item in items.iter_mut() {
                    if let Value::Object(o) = item {
                        put(o, &sub.name, sv.clone());
                    }
                }
            } else {
                let slot = c
                    .entry(attr.name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(o) = slot {
                    put(o, &sub.name, sv);
                }
            }
            return Ok(());
        }
        let Some(v) = coerce(attr, value, lenient)? else {
            if kind == Op::Replace {
                c.remove(&attr.name);
            }
            return Ok(());
        };
        match (attr.multi_valued, attr.attr_type, kind) {
            (true, _, Op::Add) => {
                let existing = c
                    .entry(attr.name.clone())
                    .or_insert_with(|| Value::Array(vec![]));
                if let (Value::Array(items), Value::Array(new)) = (existing, v) {
                    let had = primaries(items);
                    add_distinct(items, new);
                    ctx.check_values(attr, items)?;
                    settle_primary(&had, items);
                }
            }
            (false, AttrType::Complex, _) => {
                let slot = c
                    .entry(attr.name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                match (slot, v) {
                    (Value::Object(o), Value::Object(new)) => o.extend(new),
                    (slot, v) => *slot = v,
                }
            }
            _ => {
                c.insert(attr.name.clone(), v);
            }
        }
        Ok(())
    }

    fn set_matching(
        &mut self,
        kind: Op,
        t: &Target<'_>,
        filter: &Filter,
        sub_after: Option<&Attribute>,
        value: &Value,
    ) -> Result<(), ScimError> {
        let attr = t.attr;
        let lenient = !self.ctx.strict;
        let ctx = self.ctx;
        // Leniency: a value filter on a single-valued complex attribute (Entra `manager`).
        if attr.attr_type != AttrType::Complex || (!attr.multi_valued && !lenient) {
            return Err(ScimError::invalid_path(format!(
                "'{}' has no sub-attributes to filter on",
                attr.name
            )));
        }
        let new_part = match sub_after {
            Some(sub) => coerce_scalar(sub, value, lenient)?.map(|v| (Some(sub.name.clone()), v)),
            None => coerce(&single(attr), value, lenient)?.map(|v| (None, v)),
        };
        let c = self.container(t.ext);
        let mut items = take_items(c, attr);
        let had = primaries(&items);
        let mut matched = false;
        for item in items.iter_mut() {
            let Value::Object(o) = item else { continue };
            if !eval::matches(filter, o, attr.subs())? {
                continue;
            }
            matched = true;
            match (&new_part, kind) {
                (None, _) => {
                    if let Some(s) = sub_after {
                        o.remove(&s.name);
                    }
                }
                (Some((Some(sub), v)), _) => {
                    o.insert(sub.clone(), v.clone());
                }
                (Some((None, Value::Object(new))), Op::Add) => o.extend(new.clone()),
                (Some((None, v)), _) => *item = v.clone(),
            }
        }
        if !matched {
            // Leniency: upsert (Entra ID) builds the element from the filter's equality terms;
            // RFC 7644 answers `noTarget`.
            if !lenient {
                return Err(ScimError::no_target(format!(
                    "No value of '{}' matches the filter",
                    attr.name
                )));
            }
            let mut elem = Map::new();
            eq_terms(filter, attr, &mut elem)?;
            match new_part {
                Some((Some(sub), v)) => {
                    elem.insert(sub, v);
                }
                Some((None, Value::Object(new))) => elem.extend(new),
                _ => {}
            }
            items.push(Value::Object(elem));
            ctx.check_values(attr, &items)?;
        }
        settle_primary(&had, &mut items);
        store_items(c, attr, items);
        Ok(())
    }

    fn remove(&mut self, t: &Target<'_>, value: Option<&Value>) {
        let attr = t.attr;
        if attr.mutability == Mutability::WriteOnly {
            self.password_removed = true;
        }
        let c = self.container(t.ext);
        match (t.sub, c.get_mut(&attr.name)) {
            (Some(sub), Some(Value::Array(items))) => {
                for i in items.iter_mut() {
                    if let Value::Object(o) = i {
                        o.remove(&sub.name);
                    }
                }
                items.retain(|i| !matches!(i, Value::Object(o) if o.is_empty()));
            }
            (Some(sub), Some(Value::Object(o))) => {
                o.remove(&sub.name);
            }
            (None, Some(Value::Array(items))) if value.is_some_and(|v| !v.is_null()) => {
                // Remove the given values only (Entra style), matched on `value`.
                let given: Vec<Value> = match value {
                    Some(Value::Array(a)) => a.clone(),
                    Some(v) => vec![v.clone()],
                    None => vec![],
                };
                let key = |v: &Value| v.get("value").cloned().unwrap_or_else(|| v.clone());
                if items.len().saturating_mul(given.len()) <= PAIRWISE_AT_MOST {
                    let drop: Vec<Value> = given.iter().map(key).collect();
                    items.retain(|i| !drop.contains(&key(i)));
                } else {
                    // Many against many: compared by canonical text in a set, as `add` does,
                    // so that the work is their number, not its square.
                    let drop: std::collections::HashSet<String> =
                        given.iter().map(|v| canonical(&key(v))).collect();
                    items.retain(|i| !drop.contains(&canonical(&key(i))));
                }
            }
            _ => {
                c.remove(&attr.name);
            }
        }
        if matches!(c.get(&attr.name), Some(Value::Array(a)) if a.is_empty())
            || matches!(c.get(&attr.name), Some(Value::Object(o)) if o.is_empty())
        {
            c.remove(&attr.name);
        }
    }

    fn remove_matching(
        &mut self,
        t: &Target<'_>,
        filter: &Filter,
        sub_after: Option<&Attribute>,
    ) -> Result<(), ScimError> {
        let attr = t.attr;
        if attr.attr_type != AttrType::Complex || (!attr.multi_valued && self.ctx.strict) {
            return Err(ScimError::invalid_path(format!(
                "'{}' has no sub-attributes to filter on",
                attr.name
            )));
        }
        let c = self.container(t.ext);
        let mut items = take_items(c, attr);
        let mut kept = Vec::with_capacity(items.len());
        for mut item in items.drain(..) {
            let hit = match &item {
                Value::Object(o) => eval::matches(filter, o, attr.subs())?,
                _ => false,
            };
            match (hit, sub_after, &mut item) {
                (false, _, _) => kept.push(item),
                (true, Some(sub), Value::Object(o)) => {
                    o.remove(&sub.name);
                    if !o.is_empty() {
                        kept.push(item);
                    }
                }
                (true, _, _) => {}
            }
        }
        store_items(c, attr, kept);
        Ok(())
    }

    fn members(
        &mut self,
        kind: Op,
        path: &PatchPath,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        if path.attr.sub.is_some() || path.sub_after_filter.is_some() {
            return Err(ScimError::mutability(
                "Sub-attributes of 'members' are immutable",
            ));
        }
        if let Some(filter) = &path.filter {
            let ids = crate::query::member_filter_ids(filter).ok_or_else(|| {
                ScimError::invalid_filter(
                    "Only 'value eq \"id\"' filters (joined with 'or') select members",
                )
            })?;
            return match kind {
                Op::Remove => {
                    self.member_ops.push(MemberOp::Remove(ids));
                    Ok(())
                }
                _ => Err(ScimError::invalid_path(
                    "'members' values can be added or removed, not modified",
                )),
            };
        }
        let ids = match value {
            Some(v) => member_ids(v)?,
            None => Vec::new(),
        };
        match kind {
            Op::Add if !ids.is_empty() => self.member_ops.push(MemberOp::Add(ids)),
            Op::Add => {}
            Op::Replace => {
                self.member_ops.push(MemberOp::RemoveAll);
                if !ids.is_empty() {
                    self.member_ops.push(MemberOp::Add(ids));
                }
            }
            // Leniency: `remove` with a value list removes those members (Entra ID, JumpCloud).
            // RFC 7644 defines no value for remove; strict mode refuses rather than remove all.
            Op::Remove if value.is_some_and(|v| !v.is_null()) => {
                if self.ctx.strict {
                    return Err(ScimError::invalid_value(
                        "'remove' takes no value: select members with a filter path",
                    ));
                }
                self.member_ops.push(MemberOp::Remove(ids))
            }
            Op::Remove => self.member_ops.push(MemberOp::RemoveAll),
        }
        Ok(())
    }
}

fn put(o: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    match v {
        Some(v) => {
            o.insert(key.to_string(), v);
        }
        None => {
            o.remove(key);
        }
    }
}

/// The attribute as if it were single-valued (for coercing one element).
fn single(attr: &Attribute) -> Attribute {
    Attribute {
        multi_valued: false,
        ..attr.clone()
    }
}

fn take_items(c: &mut Map<String, Value>, attr: &Attribute) -> Vec<Value> {
    match c.remove(&attr.name) {
        Some(Value::Array(a)) => a,
        Some(Value::Null) | None => vec![],
        Some(other) => vec![other],
    }
}

fn store_items(c: &mut Map<String, Value>, attr: &Attribute, mut items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if attr.multi_valued {
        c.insert(attr.name.clone(), Value::Array(items));
    } else if let Some(one) = items.pop() {
        c.insert(attr.name.clone(), one);
    }
}

fn is_primary(v: &Value) -> bool {
    v.get("primary") == Some(&Value::Bool(true))
}

/// The elements that are `primary` (at most a few: only these are copied before an edit).
fn primaries(items: &[Value]) -> Vec<Value> {
    items.iter().filter(|v| is_primary(v)).cloned().collect()
}

/// Up to this many pairs, values are compared pair by pair; beyond it through a set of their
/// canonical texts (`add_distinct`, `remove` with a value list), so that long lists cost their
/// length, not its square.
const PAIRWISE_AT_MOST: usize = 256;

/// Appends the values of `new` that `items` does not hold yet (RFC 7644 section 3.5.2.1:
/// `add` merges). Many values are compared by a canonical text in a set, so an `add` of
/// thousands of values to thousands costs their number, not its square.
fn add_distinct(items: &mut Vec<Value>, new: Vec<Value>) {
    if items.len().saturating_mul(new.len()) <= PAIRWISE_AT_MOST {
        for n in new {
            if !items.contains(&n) {
                items.push(n);
            }
        }
        return;
    }
    let mut seen: std::collections::HashSet<String> = items.iter().map(canonical).collect();
    for n in new {
        if seen.insert(canonical(&n)) {
            items.push(n);
        }
    }
}

/// JSON text with object keys in sorted order: equal for values `==` calls equal (object
/// equality ignores key order). Numbers are written as serde_json writes them, so `1` and
/// `1.0` stay apart, as `==` keeps them.
fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                    out.push(':');
                    write(&o[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// RFC 7644 section 3.5.2: setting `primary` on one value clears it on the others (those
/// that were primary before, `had`, unchanged).
fn settle_primary(had_primary: &[Value], after: &mut [Value]) {
    if after.iter().filter(|v| is_primary(v)).count() <= 1 {
        return;
    }
    for v in after.iter_mut() {
        if is_primary(v) && had_primary.contains(v) {
            if let Value::Object(o) = v {
                o.insert("primary".into(), Value::Bool(false));
            }
        }
    }
}

/// Collects `sub eq value` terms of a filter into a new element (for upserts).
fn eq_terms(
    filter: &Filter,
    attr: &Attribute,
    elem: &mut Map<String, Value>,
) -> Result<(), ScimError> {
    match filter {
        Filter::And(terms) => terms.iter().try_for_each(|t| eq_terms(t, attr, elem)),
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value,
        } if path.sub.is_none() && path.urn.is_none() => {
            let sub = attr.sub(&path.name).ok_or_else(|| {
                ScimError::invalid_path(format!("Unknown attribute '{}.{}'", attr.name, path.name))
            })?;
            let json = match value {
                CompValue::Str(s) | CompValue::Bare(s) => Value::String(s.clone()),
                CompValue::Bool(b) => Value::Bool(*b),
                CompValue::Number(n) => serde_json::from_str(n).unwrap_or(Value::Null),
                CompValue::Null => Value::Null,
            };
            if let Some(v) = coerce_scalar(sub, &json, true)? {
                elem.insert(sub.name.clone(), v);
            }
            Ok(())
        }
        _ => Err(ScimError::no_target(format!(
            "No value of '{}' matches the filter",
            attr.name
        ))),
    }
}
