//! List requests: filter planning (what the store can answer) and paging parameters.

use scim_filter::{AttrPath, CompValue, CompareOp, Filter, Limits};

use crate::error::ScimError;
use crate::resource::{fold, Ctx};
use crate::store::{IndexedField, StoreFilter};

/// Paging and filter limits, advertised in `/ServiceProviderConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// page size when the client gives no `count`
    pub default_count: u64,
    /// largest page (`filter.maxResults`)
    pub max_count: u64,
    /// filter length and depth
    pub filter: Limits,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            default_count: 100,
            max_count: 1000,
            filter: Limits::default(),
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
    plan(ctx, &filter)
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
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value,
        } => plan_eq(ctx, path, value)?,
        other => {
            check_known(ctx, other)?;
            return Err(ScimError::invalid_filter(format!(
                "Filter '{other}' is not supported yet: this server answers 'eq' on id, externalId, userName, displayName and members"
            )));
        }
    })
}

fn check_known(ctx: &Ctx<'_>, f: &Filter) -> Result<(), ScimError> {
    let path = match f {
        Filter::Compare { path, .. } | Filter::Present(path) | Filter::ValuePath { path, .. } => {
            path
        }
        _ => return Ok(()),
    };
    resolve(ctx, path).map(|_| ())
}

fn resolve<'a>(
    ctx: &Ctx<'a>,
    path: &AttrPath,
) -> Result<crate::schema::ResolvedAttr<'a>, ScimError> {
    let r = ctx
        .registry
        .resolve(ctx.rt, path.urn.as_deref(), &path.name, path.sub.as_deref())
        .ok_or_else(|| {
            ScimError::invalid_filter(format!("Unknown attribute '{path}' in filter"))
        })?;
    let leaf = r.sub.unwrap_or(r.attr);
    if leaf.returned == crate::schema::Returned::Never {
        return Err(ScimError::invalid_filter(format!(
            "Attribute '{path}' cannot be filtered"
        )));
    }
    Ok(r)
}

fn plan_eq(ctx: &Ctx<'_>, path: &AttrPath, value: &CompValue) -> Result<StoreFilter, ScimError> {
    let r = resolve(ctx, path)?;
    let text = match value {
        // Leniency: unquoted values (`externalId eq jyoung`, older Entra ID docs).
        CompValue::Bare(s) if ctx.strict => {
            return Err(ScimError::invalid_filter(format!(
                "The value '{s}' must be a quoted JSON string"
            )))
        }
        CompValue::Str(s) | CompValue::Bare(s) | CompValue::Number(s) => s.clone(),
        _ => {
            return Err(ScimError::invalid_filter(format!(
                "'{path}' must be compared with a string"
            )))
        }
    };
    let name = r.attr.name.as_str();
    let sub = r.sub.map(|s| s.name.as_str());
    Ok(match (r.is_extension, name, sub) {
        (false, "id", None) => StoreFilter::Eq(IndexedField::Id, text),
        (false, "externalId", None) => StoreFilter::Eq(IndexedField::ExternalId, text),
        (false, "userName", None) if ctx.is_user() => StoreFilter::Eq(IndexedField::UserName, fold(&text)),
        (false, "displayName", None) => StoreFilter::Eq(IndexedField::DisplayName, fold(&text)),
        (false, "members", None | Some("value")) if ctx.is_group() => StoreFilter::HasMember(text),
        _ => {
            return Err(ScimError::invalid_filter(format!(
                "Filtering on '{path}' is not supported yet: this server answers 'eq' on id, externalId, userName, displayName and members"
            )))
        }
    })
}
