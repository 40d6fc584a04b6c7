//! List requests: filter planning (what the store can answer) and paging parameters.

use scim_filter::{AttrPath, CompValue, CompareOp, Filter, Limits};

use crate::error::{ScimError, ScimType};
use crate::index::{normalize_datetime, path_key};
use crate::resource::{fold, Ctx};
use crate::schema::{AttrType, Attribute, ResolvedAttr, Returned};
use crate::store::{
    Column, CursorKey, ElementFilter, IndexedField, LinkSide, SortKey, SortTarget, StoreFilter,
    ValueKind, ValueTest,
};

/// Paging and filter limits, advertised in `/ServiceProviderConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// page size when the client gives no `count`
    pub default_count: u64,
    /// largest page (`filter.maxResults`)
    pub max_count: u64,
    /// filter length and depth
    pub filter: Limits,
    /// most scans one filter may cost ([`StoreFilter::scans`]); more is 400 `tooMany`
    pub max_scans: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            default_count: 100,
            max_count: 1000,
            filter: Limits::default(),
            max_scans: 10,
        }
    }
}

/// Parses `startIndex`/`count` (RFC 7644 section 3.4.2.4): values below 1 mean 1, a negative
/// count means 0, a count above the maximum is clamped.
pub fn paging(start_index: Option<i64>, count: Option<i64>, limits: &QueryLimits) -> (u64, u64) {
    let start = start_index.unwrap_or(1).max(1) as u64;
    let count = match count {
        None => limits.default_count,
        Some(c) => (c.max(0) as u64).min(limits.max_count),
    };
    (start, count)
}

/// Cursor values are opaque to clients: hex of a direction (`n` next, `p` previous),
/// `created`, a separator and `id`, and for a walk sorted by `userName` another separator and
/// the folded `userName`.
pub fn encode_cursor(key: &CursorKey) -> String {
    let mut raw = format!(
        "{}{}\u{1f}{}",
        if key.backward { 'p' } else { 'n' },
        key.created,
        key.id
    );
    if let Some(k) = &key.key {
        raw.push('\u{1f}');
        raw.push_str(k);
    }
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Longest cursor accepted, in hex characters (a sort key is a `userName`).
const MAX_CURSOR_LEN: usize = 16 * 1024;

/// Reads a cursor made by [`encode_cursor`]; anything else is 400 `invalidCursor`
/// (RFC 9865).
pub fn decode_cursor(text: &str) -> Result<CursorKey, ScimError> {
    let bad = || {
        ScimError::bad_request(
            ScimType::InvalidCursor,
            "The cursor is not one this server issued",
        )
    };
    if text.len() % 2 != 0 || text.len() > MAX_CURSOR_LEN {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    let raw = String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    // Nothing this server issues holds U+0000 (no stored key can), and PostgreSQL would
    // refuse it as a statement parameter.
    if raw.contains('\0') {
        return Err(bad());
    }
    let backward = match raw.chars().next() {
        Some('n') => false,
        Some('p') => true,
        _ => return Err(bad()),
    };
    // The key comes last and may itself contain the separator.
    let mut parts = raw[1..].splitn(3, '\u{1f}');
    let (Some(created), Some(id)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    Ok(CursorKey {
        created: created.to_string(),
        id: id.to_string(),
        backward,
        key: parts.next().map(str::to_string),
    })
}

/// Plans `sortBy` / `sortOrder` (RFC 7644 section 3.4.2.3). `None` without `sortBy`.
pub fn plan_sort(
    ctx: &Ctx<'_>,
    sort_by: Option<&str>,
    sort_order: Option<&str>,
) -> Result<Option<SortKey>, ScimError> {
    let Some(sort_by) = sort_by.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let descending = match sort_order.map(|o| o.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("ascending") => false,
        Some("descending") => true,
        Some(other) => {
            return Err(ScimError::invalid_value(format!(
                "sortOrder must be ascending or descending, not '{other}'"
            )))
        }
    };
    let path = AttrPath::parse_token(sort_by)
        .ok_or_else(|| ScimError::invalid_value(format!("'{sort_by}' is not an attribute path")))?;
    let r = ctx
        .registry
        .resolve(ctx.rt, path.urn.as_deref(), &path.name, path.sub.as_deref())
        .ok_or_else(|| {
            ScimError::invalid_value(format!("Cannot sort by unknown attribute '{sort_by}'"))
        })?;
    let unsortable = || ScimError::invalid_value(format!("Cannot sort by '{sort_by}'"));
    let common = !r.is_extension
        && ctx
            .registry
            .common()
            .attribute(&r.attr.name)
            .is_some_and(|a| std::ptr::eq(a, r.attr));
    let target = if common {
        let column = match (r.attr.name.as_str(), r.sub.map(|s| s.name.as_str())) {
            ("id", None) => Column::Id,
            ("externalId", None) => Column::ExternalId,
            ("meta", Some("created")) => Column::Created,
            ("meta", Some("lastModified")) => Column::LastModified,
            _ => return Err(unsortable()),
        };
        SortTarget::Column(column)
    } else if !r.is_extension && ctx.is_user() && r.attr.name == "userName" && r.sub.is_none() {
        // Folded on its own indexed column, never missing: the index gives the order.
        SortTarget::Column(Column::UserName)
    } else if !r.is_extension && r.attr.name == "displayName" && r.sub.is_none() {
        // Folded on its own column (it has no attribute-index rows); may be missing.
        SortTarget::Column(Column::DisplayName)
    } else {
        if !r.is_extension && (r.attr.name == "members" || r.attr.name == "groups") {
            return Err(unsortable());
        }
        // A complex attribute sorts by its `value` (`emails` by `emails.value`); a
        // multi-valued one by the value of its primary element, if one is flagged, else its
        // first (RFC 7644 section 3.4.2.3).
        let sub = match (r.attr.attr_type, r.sub) {
            (AttrType::Complex, None) => Some(r.attr.sub("value").ok_or_else(unsortable)?),
            (_, s) => s,
        };
        let leaf = sub.unwrap_or(r.attr);
        if leaf.returned == Returned::Never {
            return Err(unsortable());
        }
        let kind = match leaf.attr_type {
            AttrType::Boolean => ValueKind::Bool,
            AttrType::Integer | AttrType::Decimal => ValueKind::Num,
            AttrType::Complex => return Err(unsortable()),
            _ => ValueKind::Str,
        };
        let primary = match (r.attr.multi_valued, r.attr.sub("primary")) {
            (true, Some(flag)) if flag.attr_type == AttrType::Boolean => {
                Some(path_key(r.schema, r.is_extension, r.attr, Some(flag)))
            }
            _ => None,
        };
        SortTarget::Value {
            path: path_key(r.schema, r.is_extension, r.attr, sub),
            kind,
            primary,
        }
    };
    Ok(Some(SortKey { target, descending }))
}

/// Parses a filter and plans it for the store.
pub fn plan_filter(
    ctx: &Ctx<'_>,
    text: Option<&str>,
    limits: &QueryLimits,
) -> Result<StoreFilter, ScimError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(StoreFilter::All);
    };
    let filter = scim_filter::parse_filter(text, &limits.filter)
        .map_err(|e| ScimError::invalid_filter(format!("Invalid filter: {e}")))?;
    let planned = plan(ctx, &filter)?;
    let scans = planned.scans();
    if scans > limits.max_scans {
        return Err(ScimError::bad_request(
            crate::ScimType::TooMany,
            format!(
                "The filter needs {scans} scans of every value of an attribute (each co, ew, \
                 not, and value filter without an eq, sw or range test is one); at most {} \
                 are allowed",
                limits.max_scans
            ),
        ));
    }
    Ok(planned)
}

fn plan(ctx: &Ctx<'_>, f: &Filter) -> Result<StoreFilter, ScimError> {
    Ok(match f {
        Filter::And(terms) => StoreFilter::And(
            terms
                .iter()
                .map(|t| plan(ctx, t))
                .collect::<Result<_, _>>()?,
        ),
        Filter::Or(terms) => StoreFilter::Or(
            terms
                .iter()
                .map(|t| plan(ctx, t))
                .collect::<Result<_, _>>()?,
        ),
        Filter::Not(inner) => StoreFilter::Not(Box::new(plan(ctx, inner)?)),
        Filter::Present(path) => plan_attr(ctx, path, None)?,
        Filter::Compare { path, op, value } => plan_attr(ctx, path, Some((*op, value)))?,
        Filter::ValuePath { path, filter } => plan_value_path(ctx, path, filter)?,
    })
}

fn resolve<'a>(ctx: &Ctx<'a>, path: &AttrPath) -> Result<ResolvedAttr<'a>, ScimError> {
    let r = ctx
        .registry
        .resolve(ctx.rt, path.urn.as_deref(), &path.name, path.sub.as_deref())
        .ok_or_else(|| {
            ScimError::invalid_filter(format!("Unknown attribute '{path}' in filter"))
        })?;
    let leaf = r.sub.unwrap_or(r.attr);
    if leaf.returned == Returned::Never {
        return Err(ScimError::invalid_filter(format!(
            "Attribute '{path}' cannot be filtered"
        )));
    }
    Ok(r)
}

/// The text of a comparison value, or an error naming what was expected.
fn text_of(
    ctx: &Ctx<'_>,
    path: &dyn std::fmt::Display,
    value: &CompValue,
) -> Result<String, ScimError> {
    match value {
        // Leniency: unquoted values (`externalId eq jyoung`, older Entra ID docs).
        CompValue::Bare(s) if ctx.strict => Err(ScimError::invalid_filter(format!(
            "The value '{s}' must be a quoted JSON string"
        ))),
        CompValue::Str(s) | CompValue::Bare(s) | CompValue::Number(s) => Ok(s.clone()),
        _ => Err(ScimError::invalid_filter(format!(
            "'{path}' must be compared with a string"
        ))),
    }
}

/// `x ne v` is "no value equals v" (so it also matches resources without the attribute).
fn negate_ne(op: CompareOp, f: StoreFilter) -> StoreFilter {
    if op == CompareOp::Ne {
        StoreFilter::Not(Box::new(f))
    } else {
        f
    }
}

fn positive(op: CompareOp) -> CompareOp {
    if op == CompareOp::Ne {
        CompareOp::Eq
    } else {
        op
    }
}

fn plan_attr(
    ctx: &Ctx<'_>,
    path: &AttrPath,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<StoreFilter, ScimError> {
    let r = resolve(ctx, path)?;
    let name = r.attr.name.as_str();
    let sub = r.sub.map(|s| s.name.as_str());
    let common = !r.is_extension
        && ctx
            .registry
            .common()
            .attribute(name)
            .is_some_and(|a| std::ptr::eq(a, r.attr));
    if common {
        return plan_common(ctx, path, name, sub, cmp);
    }
    if !r.is_extension {
        match (name, sub, cmp) {
            ("userName", None, _) if ctx.is_user() => {
                return plan_key_column(ctx, path, &r, IndexedField::UserName, cmp)
            }
            ("displayName", None, _) => {
                return plan_key_column(ctx, path, &r, IndexedField::DisplayName, cmp)
            }
            ("members", _, _) if ctx.is_group() => {
                return plan_linked(ctx, Link::new(path, LinkSide::Members, sub), cmp)
            }
            ("groups", _, _) if ctx.is_user() => {
                return plan_linked(ctx, Link::new(path, LinkSide::Groups, sub), cmp)
            }
            _ => {}
        }
    }
    // `emails co "x"` means `emails.value co "x"`; `manager eq "x"` means `manager.value eq "x"`
    // (RFC 7644 section 3.4.2.2). `emails pr` asks whether any element exists: some element
    // passes the empty element filter.
    let (leaf, sub_attr) = match (r.attr.attr_type, r.sub) {
        (AttrType::Complex, None) if cmp.is_none() => {
            return Ok(StoreFilter::Element {
                paths: sub_paths(&r),
                filter: ElementFilter::And(Vec::new()),
            });
        }
        (AttrType::Complex, None) => {
            let v = r.attr.sub("value").ok_or_else(|| {
                ScimError::invalid_filter(format!(
                    "Complex attribute '{path}' cannot be compared directly"
                ))
            })?;
            (v, Some(v))
        }
        (_, Some(s)) => (s, Some(s)),
        (_, None) => (r.attr, None),
    };
    let key = path_key(r.schema, r.is_extension, r.attr, sub_attr);
    let Some((op, value)) = cmp else {
        return Ok(StoreFilter::Value {
            path: key,
            test: ValueTest::Present(kind_of(leaf)),
        });
    };
    if let CompValue::Null = value {
        let present = StoreFilter::Value {
            path: key,
            test: ValueTest::Present(kind_of(leaf)),
        };
        return compared_with_null(op, present);
    }
    let test = value_test(ctx, path, leaf, positive(op), value)?;
    Ok(negate_ne(op, StoreFilter::Value { path: key, test }))
}

/// `x eq null`: x has no value; `x ne null`: it has one (`present` tests that it has).
fn compared_with_null(op: CompareOp, present: StoreFilter) -> Result<StoreFilter, ScimError> {
    match op {
        CompareOp::Eq => Ok(StoreFilter::Not(Box::new(present))),
        CompareOp::Ne => Ok(present),
        _ => Err(ScimError::invalid_filter(format!(
            "'{}' cannot be compared with null",
            op.as_str()
        ))),
    }
}

/// A filter on `userName` (Users) or `displayName`: answered from the resource's own folded
/// column, which has an index of its own (these two have no attribute-index rows). Equality
/// is the fast path; a missing value compares as nothing (see the store's `NOT`).
fn plan_key_column(
    ctx: &Ctx<'_>,
    path: &AttrPath,
    r: &ResolvedAttr<'_>,
    field: IndexedField,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<StoreFilter, ScimError> {
    let column = match field {
        IndexedField::UserName => Column::UserName,
        _ => Column::DisplayName,
    };
    // A stored empty string is not a value (`pr` is false for it, as in the evaluator).
    let present = StoreFilter::Column(column, CompareOp::Gt, String::new());
    let Some((op, value)) = cmp else {
        return Ok(present);
    };
    if let CompValue::Null = value {
        return compared_with_null(op, present);
    }
    let ValueTest::Str(op2, text) = value_test(ctx, path, r.attr, positive(op), value)? else {
        return Err(ScimError::invalid_filter(format!(
            "'{path}' is a string: compare it with a string"
        )));
    };
    let test = match op2 {
        CompareOp::Eq => StoreFilter::Eq(field, text),
        _ => StoreFilter::Column(column, op2, text),
    };
    Ok(negate_ne(op, test))
}

/// Which typed index column holds values of an attribute.
fn kind_of(attr: &Attribute) -> ValueKind {
    match attr.attr_type {
        AttrType::Boolean => ValueKind::Bool,
        AttrType::Integer | AttrType::Decimal => ValueKind::Num,
        _ => ValueKind::Str,
    }
}

/// A test on one value of attribute `leaf`, typed by the schema.
fn value_test(
    ctx: &Ctx<'_>,
    path: &dyn std::fmt::Display,
    leaf: &Attribute,
    op: CompareOp,
    value: &CompValue,
) -> Result<ValueTest, ScimError> {
    let wrong = |what: &str| ScimError::invalid_filter(format!("'{path}' {what}"));
    Ok(match leaf.attr_type {
        AttrType::Boolean => {
            let b = match value {
                CompValue::Bool(b) => *b,
                // Leniency: booleans as strings (`primary eq "True"`, Entra ID validator).
                CompValue::Str(s) | CompValue::Bare(s)
                    if !ctx.strict && s.eq_ignore_ascii_case("true") =>
                {
                    true
                }
                CompValue::Str(s) | CompValue::Bare(s)
                    if !ctx.strict && s.eq_ignore_ascii_case("false") =>
                {
                    false
                }
                _ => return Err(wrong("is a boolean: compare it with true or false")),
            };
            if op != CompareOp::Eq {
                return Err(wrong("is a boolean: only eq and ne apply"));
            }
            ValueTest::Bool(b)
        }
        AttrType::Integer | AttrType::Decimal => {
            let n: f64 = match value {
                CompValue::Number(n) => n.parse().map_err(|_| wrong("needs a number"))?,
                _ => return Err(wrong("is a number: compare it with a number")),
            };
            if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
                return Err(wrong("is a number: co, sw and ew do not apply"));
            }
            ValueTest::Num(op, n)
        }
        AttrType::DateTime => {
            let t = text_of(ctx, path, value)?;
            let t = normalize_datetime(&t).ok_or_else(|| wrong("needs an RFC 3339 dateTime"))?;
            if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
                return Err(wrong("is a dateTime: co, sw and ew do not apply"));
            }
            ValueTest::Str(op, t)
        }
        AttrType::Complex => return Err(wrong("is complex: compare one of its sub-attributes")),
        _ => {
            let t = text_of(ctx, path, value)?;
            ValueTest::Str(op, if leaf.is_case_exact() { t } else { fold(&t) })
        }
    })
}

fn plan_common(
    ctx: &Ctx<'_>,
    path: &AttrPath,
    name: &str,
    sub: Option<&str>,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<StoreFilter, ScimError> {
    let Some((op, value)) = cmp else {
        // id, meta and its sub-attributes are always present; externalId may be missing.
        return Ok(match name {
            // Empty externalIds are never stored, so ">= ''" is "set" (NULL never compares).
            "externalId" => StoreFilter::Column(Column::ExternalId, CompareOp::Ge, String::new()),
            _ => StoreFilter::All,
        });
    };
    let text = match value {
        CompValue::Null => {
            return Err(ScimError::invalid_filter(format!(
                "'{path}' cannot be compared with null"
            )))
        }
        v => text_of(ctx, path, v)?,
    };
    let (column, text) = match (name, sub) {
        ("id", None) if op == CompareOp::Eq => return Ok(StoreFilter::Eq(IndexedField::Id, text)),
        ("externalId", None) if op == CompareOp::Eq => {
            return Ok(StoreFilter::Eq(IndexedField::ExternalId, text))
        }
        ("id", None) => (Column::Id, text),
        ("externalId", None) => (Column::ExternalId, text),
        ("meta", Some(m @ ("created" | "lastModified"))) => {
            let t = normalize_datetime(&text).ok_or_else(|| {
                ScimError::invalid_filter(format!("'{path}' needs an RFC 3339 dateTime"))
            })?;
            if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
                return Err(ScimError::invalid_filter(format!(
                    "'{path}' is a dateTime: co, sw and ew do not apply"
                )));
            }
            (
                if m == "created" {
                    Column::Created
                } else {
                    Column::LastModified
                },
                t,
            )
        }
        ("meta", Some("resourceType")) => {
            let hit = text == ctx.rt.name;
            return Ok(match (op, hit) {
                (CompareOp::Eq, true) | (CompareOp::Ne, false) => StoreFilter::All,
                (CompareOp::Eq, false) | (CompareOp::Ne, true) => StoreFilter::Nothing,
                _ => {
                    return Err(ScimError::invalid_filter(
                        "'meta.resourceType' supports eq and ne",
                    ))
                }
            });
        }
        _ => {
            return Err(ScimError::invalid_filter(format!(
                "Filtering on '{path}' is not supported"
            )))
        }
    };
    Ok(negate_ne(
        op,
        StoreFilter::Column(column, positive(op), text),
    ))
}

/// The index paths of a complex attribute's sub-attributes: the rows its elements can have.
fn sub_paths(r: &ResolvedAttr<'_>) -> Vec<String> {
    r.attr
        .subs()
        .iter()
        .map(|s| path_key(r.schema, r.is_extension, r.attr, Some(s)))
        .collect()
}

fn plan_value_path(
    ctx: &Ctx<'_>,
    path: &AttrPath,
    inner: &Filter,
) -> Result<StoreFilter, ScimError> {
    let r = resolve(ctx, path)?;
    if r.attr.attr_type != AttrType::Complex || r.sub.is_some() {
        return Err(ScimError::invalid_filter(format!(
            "'{path}' has no sub-attributes to filter on"
        )));
    }
    if !r.is_extension && (r.attr.name == "members" || r.attr.name == "groups") {
        // Each element is one link: every test in the brackets is on the same linked resource.
        let side = if r.attr.name == "members" {
            LinkSide::Members
        } else {
            LinkSide::Groups
        };
        return Ok(linked(
            ctx,
            side,
            plan_linked_element(ctx, path, side, inner)?,
        ));
    }
    let filter = plan_element(ctx, &r, inner)?;
    Ok(StoreFilter::Element {
        paths: sub_paths(&r),
        filter,
    })
}

/// A sub-attribute (`None`: the attribute itself) of a membership attribute, as a filter
/// names it.
#[derive(Clone, Copy)]
struct Link<'a> {
    path: &'a AttrPath,
    side: LinkSide,
    sub: Option<&'a str>,
}

impl<'a> Link<'a> {
    fn new(path: &'a AttrPath, side: LinkSide, sub: Option<&'a str>) -> Self {
        Link { path, side, sub }
    }
}

/// A filter on a membership attribute (`members`, `groups`): what the linked resource must
/// pass (`members eq "id"` is a link to the resource `id`). `x ne v` is "no link with
/// `x eq v`", as for other attributes.
fn plan_linked(
    ctx: &Ctx<'_>,
    link: Link<'_>,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<StoreFilter, ScimError> {
    let positive_cmp = cmp.map(|(op, v)| (positive(op), v));
    let found = linked(ctx, link.side, linked_test(ctx, link, positive_cmp)?);
    Ok(match cmp {
        Some((op, _)) => negate_ne(op, found),
        None => found,
    })
}

/// Resources linked on `side` to one that passes `filter`; the linked resources' type is
/// named when it is one type (a user's groups are groups).
fn linked(ctx: &Ctx<'_>, side: LinkSide, filter: StoreFilter) -> StoreFilter {
    let linked_type = match side {
        LinkSide::Groups => ctx
            .registry
            .resource_types()
            .iter()
            .find(|t| t.schema == crate::urns::GROUP)
            .map(|t| t.name.clone()),
        LinkSide::Members => None,
    };
    StoreFilter::Linked {
        side,
        linked_type,
        filter: Box::new(filter),
    }
}

/// The element filter of `groups[...]` / `members[...]` as a filter on the linked resource:
/// each element is one link, so every test in it applies to the same linked resource.
fn plan_linked_element(
    ctx: &Ctx<'_>,
    outer: &AttrPath,
    side: LinkSide,
    f: &Filter,
) -> Result<StoreFilter, ScimError> {
    let each = |terms: &[Filter]| -> Result<Vec<StoreFilter>, ScimError> {
        terms
            .iter()
            .map(|t| plan_linked_element(ctx, outer, side, t))
            .collect()
    };
    let sub_of = |p: &AttrPath| -> Result<String, ScimError> {
        if p.urn.is_some() || p.sub.is_some() {
            return Err(ScimError::invalid_filter(format!(
                "'{p}' is not a sub-attribute of '{outer}'"
            )));
        }
        Ok(p.name.to_ascii_lowercase())
    };
    Ok(match f {
        Filter::And(t) => StoreFilter::And(each(t)?),
        Filter::Or(t) => StoreFilter::Or(each(t)?),
        Filter::Not(inner) => {
            StoreFilter::Not(Box::new(plan_linked_element(ctx, outer, side, inner)?))
        }
        Filter::Present(p) => linked_test(ctx, Link::new(p, side, Some(&sub_of(p)?)), None)?,
        Filter::Compare { path, op, value } => {
            let sub = sub_of(path)?;
            let link = Link::new(path, side, Some(&sub));
            let test = linked_test(ctx, link, Some((positive(*op), value)))?;
            negate_ne(*op, test)
        }
        Filter::ValuePath { path, .. } => {
            return Err(ScimError::invalid_filter(format!(
                "'{path}' cannot be nested in '{outer}[...]'"
            )))
        }
    })
}

/// What a linked resource must pass for `sub` (`value`, `display`, `type`; `None`: the
/// attribute itself) to test true. `op` is never `ne` here. `value` is the linked resource's
/// id; a group's `display` is its `displayName`, and its `type` that of the membership
/// (`direct`, or `indirect` through nested groups, as a user's `groups` lists them); a
/// member's `display` is its `displayName`, else its `userName`, and its `type` its resource
/// type.
fn linked_test(
    ctx: &Ctx<'_>,
    Link { path, side, sub }: Link<'_>,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<StoreFilter, ScimError> {
    let sub = sub.map(str::to_ascii_lowercase);
    Ok(match (sub.as_deref(), side, cmp) {
        // `groups pr`, `members.value pr`: any link at all
        (None | Some("value"), _, None) => StoreFilter::All,
        (None | Some("value"), _, Some((op, v))) => {
            StoreFilter::Column(Column::Id, op, text_of(ctx, path, v)?)
        }
        // A member shows its displayName, else its userName (`index_keys`).
        (Some("display"), LinkSide::Members, None) => {
            StoreFilter::Column(Column::Display, CompareOp::Gt, String::new())
        }
        (Some("display"), LinkSide::Members, Some((op, v))) => {
            StoreFilter::Column(Column::Display, op, fold(&text_of(ctx, path, v)?))
        }
        (Some("display"), LinkSide::Groups, None) => StoreFilter::All,
        (Some("display"), LinkSide::Groups, Some((op, v))) => {
            StoreFilter::Column(Column::DisplayName, op, fold(&text_of(ctx, path, v)?))
        }
        (Some("type"), LinkSide::Groups, None) => StoreFilter::All,
        // RFC 7643 section 4.1.2's canonical values, compared case-insensitively; a link has
        // no other type.
        (Some("type"), LinkSide::Groups, Some((CompareOp::Eq, v))) => {
            let t = text_of(ctx, path, v)?.to_ascii_lowercase();
            if t == "direct" || t == "indirect" {
                StoreFilter::Column(Column::MembershipType, CompareOp::Eq, t)
            } else {
                StoreFilter::Nothing
            }
        }
        // A member's type is its resource type's name, compared case-insensitively.
        (Some("type"), LinkSide::Members, None) => StoreFilter::All,
        (Some("type"), LinkSide::Members, Some((CompareOp::Eq, v))) => {
            let t = text_of(ctx, path, v)?;
            match ctx
                .registry
                .resource_types()
                .iter()
                .find(|rt| rt.name.eq_ignore_ascii_case(&t))
            {
                Some(rt) => {
                    StoreFilter::Column(Column::ResourceType, CompareOp::Eq, rt.name.clone())
                }
                None => StoreFilter::Nothing,
            }
        }
        (Some("type"), _, Some(_)) => {
            return Err(ScimError::invalid_filter(format!(
                "'{path}' supports eq, ne and pr"
            )))
        }
        _ => {
            return Err(ScimError::invalid_filter(format!(
                "'{path}' cannot be filtered; filter on its value (the id), display or type"
            )))
        }
    })
}

/// `value eq "id"` terms (joined with `or`) of a filter on `members` or `groups` → the ids.
pub(crate) fn member_filter_ids(f: &Filter) -> Option<Vec<String>> {
    match f {
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value: CompValue::Str(id) | CompValue::Bare(id),
        } if path.urn.is_none()
            && path.sub.is_none()
            && path.name.eq_ignore_ascii_case("value") =>
        {
            Some(vec![id.clone()])
        }
        Filter::Or(terms) => terms
            .iter()
            .map(member_filter_ids)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat()),
        _ => None,
    }
}

fn plan_element(
    ctx: &Ctx<'_>,
    r: &ResolvedAttr<'_>,
    f: &Filter,
) -> Result<ElementFilter, ScimError> {
    Ok(match f {
        Filter::And(t) => ElementFilter::And(
            t.iter()
                .map(|x| plan_element(ctx, r, x))
                .collect::<Result<_, _>>()?,
        ),
        Filter::Or(t) => ElementFilter::Or(
            t.iter()
                .map(|x| plan_element(ctx, r, x))
                .collect::<Result<_, _>>()?,
        ),
        Filter::Not(x) => ElementFilter::Not(Box::new(plan_element(ctx, r, x)?)),
        Filter::ValuePath { .. } => {
            return Err(ScimError::invalid_filter("Value filters do not nest"))
        }
        Filter::Present(p) | Filter::Compare { path: p, .. } => {
            if p.urn.is_some() || p.sub.is_some() {
                return Err(ScimError::invalid_filter(format!(
                    "'{p}' inside [...] must be a sub-attribute name"
                )));
            }
            let sub = r.attr.sub(&p.name).ok_or_else(|| {
                ScimError::invalid_filter(format!(
                    "Unknown attribute '{}.{}' in filter",
                    r.attr.name, p.name
                ))
            })?;
            let key = path_key(r.schema, r.is_extension, r.attr, Some(sub));
            match f {
                Filter::Compare {
                    op,
                    value: CompValue::Null,
                    ..
                } => {
                    let present = ElementFilter::Test {
                        path: key,
                        test: ValueTest::Present(kind_of(sub)),
                    };
                    match op {
                        CompareOp::Eq => ElementFilter::Not(Box::new(present)),
                        CompareOp::Ne => present,
                        _ => {
                            return Err(ScimError::invalid_filter(
                                "Only eq and ne compare with null",
                            ))
                        }
                    }
                }
                Filter::Compare { op, value, .. } => {
                    let test = ElementFilter::Test {
                        path: key,
                        test: value_test(ctx, p, sub, positive(*op), value)?,
                    };
                    if *op == CompareOp::Ne {
                        ElementFilter::Not(Box::new(test))
                    } else {
                        test
                    }
                }
                _ => ElementFilter::Test {
                    path: key,
                    test: ValueTest::Present(kind_of(sub)),
                },
            }
        }
    })
}
