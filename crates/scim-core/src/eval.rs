//! In-memory evaluation of a filter against one JSON object, with comparison rules taken
//! from the schema (`caseExact`, types). Used for PATCH value paths (`emails[type eq "work"]`),
//! and by crates that use scim-core without a database.

use std::cmp::Ordering;

use scim_filter::{AttrPath, CompValue, CompareOp, Filter};
use serde_json::{Map, Value};

use crate::error::ScimError;
use crate::resource::fold;
use crate::schema::{AttrType, Attribute};

/// Evaluates `filter` against `obj`, whose attributes are described by `attrs`.
/// Attribute paths in the filter are relative to `obj` (`type`, `value`, `name.givenName`).
pub fn matches(
    filter: &Filter,
    obj: &Map<String, Value>,
    attrs: &[Attribute],
) -> Result<bool, ScimError> {
    Ok(match filter {
        Filter::And(terms) => {
            for t in terms {
                if !matches(t, obj, attrs)? {
                    return Ok(false);
                }
            }
            true
        }
        Filter::Or(terms) => {
            for t in terms {
                if matches(t, obj, attrs)? {
                    return Ok(true);
                }
            }
            false
        }
        Filter::Not(inner) => !matches(inner, obj, attrs)?,
        Filter::Present(path) => {
            let attr = find(attrs, &path.name)?;
            if attr.attr_type == AttrType::Complex && path.sub.is_none() {
                // `emails pr`: some element exists.
                values_of(obj.get(&attr.name)).iter().any(|v| !is_empty(v))
            } else {
                let (_, values) = lookup(path, obj, attrs)?;
                values.iter().any(|v| !is_empty(v))
            }
        }
        Filter::Compare { path, op, value } => {
            let (attr, values) = lookup(path, obj, attrs)?;
            match (op, value) {
                // `x eq null`: no value; `x ne null`: some value.
                (CompareOp::Eq, CompValue::Null) => !values.iter().any(|v| !is_empty(v)),
                (CompareOp::Ne, CompValue::Null) => values.iter().any(|v| !is_empty(v)),
                // `x ne v`: no value equals v (so a missing attribute matches), the same
                // reading the database index uses.
                (CompareOp::Ne, _) => {
                    let mut any_eq = false;
                    for v in &values {
                        if compare(attr, v, CompareOp::Eq, value)? {
                            any_eq = true;
                            break;
                        }
                    }
                    !any_eq
                }
                _ => {
                    let mut any = false;
                    for v in &values {
                        if compare(attr, v, *op, value)? {
                            any = true;
                            break;
                        }
                    }
                    any
                }
            }
        }
        Filter::ValuePath { path, filter } => {
            let attr = find(attrs, &path.name)?;
            let items = values_of(obj.get(&attr.name));
            let mut any = false;
            for item in items {
                if let Value::Object(o) = item {
                    if matches(filter, o, attr.subs())? {
                        any = true;
                        break;
                    }
                }
            }
            any
        }
    })
}

fn find<'a>(attrs: &'a [Attribute], name: &str) -> Result<&'a Attribute, ScimError> {
    attrs
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| ScimError::invalid_filter(format!("Unknown attribute '{name}' in filter")))
}

fn values_of(v: Option<&Value>) -> Vec<&Value> {
    match v {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items.iter().collect(),
        Some(other) => vec![other],
    }
}

/// Resolves a (relative) path to the attribute definition and the values found.
fn lookup<'a>(
    path: &AttrPath,
    obj: &'a Map<String, Value>,
    attrs: &'a [Attribute],
) -> Result<(&'a Attribute, Vec<&'a Value>), ScimError> {
    let attr = find(attrs, &path.name)?;
    let values = values_of(obj.get(&attr.name));
    match &path.sub {
        None if attr.attr_type == AttrType::Complex => {
            // `emails co "x"` means `emails.value co "x"` (RFC 7644 section 3.4.2.2).
            let sub = attr.sub("value").ok_or_else(|| {
                ScimError::invalid_filter(format!(
                    "Complex attribute '{}' cannot be compared directly",
                    attr.name
                ))
            })?;
            let vals = values
                .into_iter()
                .filter_map(|v| v.get(&sub.name))
                .collect();
            Ok((sub, vals))
        }
        None => Ok((attr, values)),
        Some(s) => {
            let sub = attr.sub(s).ok_or_else(|| {
                ScimError::invalid_filter(format!(
                    "Unknown attribute '{}.{s}' in filter",
                    attr.name
                ))
            })?;
            let vals = values
                .into_iter()
                .filter_map(|v| v.get(&sub.name))
                .collect();
            Ok((sub, vals))
        }
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Compares one stored value against a filter literal under the attribute's rules.
pub fn compare(
    attr: &Attribute,
    stored: &Value,
    op: CompareOp,
    literal: &CompValue,
) -> Result<bool, ScimError> {
    let lit_str = match literal {
        CompValue::Str(s) | CompValue::Bare(s) | CompValue::Number(s) => Some(s.as_str()),
        _ => None,
    };
    match attr.attr_type {
        AttrType::Boolean => {
            let want = match literal {
                CompValue::Bool(b) => *b,
                CompValue::Str(s) | CompValue::Bare(s) if s.eq_ignore_ascii_case("true") => true,
                CompValue::Str(s) | CompValue::Bare(s) if s.eq_ignore_ascii_case("false") => false,
                CompValue::Null => return Ok(matches!(op, CompareOp::Ne)),
                _ => {
                    return Err(ScimError::invalid_filter(format!(
                        "'{}' is a boolean",
                        attr.name
                    )))
                }
            };
            let have = stored.as_bool();
            match op {
                CompareOp::Eq => Ok(have == Some(want)),
                CompareOp::Ne => Ok(have != Some(want)),
                _ => Err(ScimError::invalid_filter(format!(
                    "Operator '{}' does not apply to booleans",
                    op.as_str()
                ))),
            }
        }
        AttrType::Integer | AttrType::Decimal => {
            let want: f64 = lit_str
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ScimError::invalid_filter(format!("'{}' is a number", attr.name)))?;
            let Some(have) = stored.as_f64() else {
                return Ok(false);
            };
            ordered(op, have.partial_cmp(&want))
        }
        AttrType::DateTime => {
            let parse = |s: &str| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            };
            let want = lit_str.and_then(parse).ok_or_else(|| {
                ScimError::invalid_filter(format!("'{}' is a date-time", attr.name))
            })?;
            let Some(have) = stored.as_str().and_then(parse) else {
                return Ok(false);
            };
            ordered(op, Some(have.cmp(&want)))
        }
        _ => {
            let Some(want) = lit_str else {
                return Ok(match literal {
                    CompValue::Null => op == CompareOp::Ne,
                    _ => false,
                });
            };
            let Some(have) = stored.as_str() else {
                return Ok(false);
            };
            let (have, want) = if attr.is_case_exact() {
                (have.to_string(), want.to_string())
            } else {
                (fold(have), fold(want))
            };
            Ok(match op {
                CompareOp::Co => have.contains(&want),
                CompareOp::Sw => have.starts_with(&want),
                CompareOp::Ew => have.ends_with(&want),
                _ => return ordered(op, Some(have.cmp(&want))),
            })
        }
    }
}

fn ordered(op: CompareOp, ord: Option<Ordering>) -> Result<bool, ScimError> {
    let Some(ord) = ord else { return Ok(false) };
    Ok(match op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => {
            return Err(ScimError::invalid_filter(format!(
                "Operator '{}' applies to strings only",
                op.as_str()
            )))
        }
    })
}
