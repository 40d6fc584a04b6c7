//! The filter and PATCH-path syntax tree, with a `Display` that prints a form the parser reads back.

use std::fmt;

/// An attribute reference such as `userName`, `name.givenName` or
/// `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`.
///
/// `urn` is the text before the last `:` when the path starts with `urn:`. Whether that URN is
/// a schema, and whether a path that is *only* a schema URN names the extension itself, is left
/// to the schema layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    /// Schema URN prefix, if the path was fully qualified.
    pub urn: Option<String>,
    /// Attribute name, as written.
    pub name: String,
    /// Sub-attribute name, as written.
    pub sub: Option<String>,
}

impl AttrPath {
    /// A path with no URN and no sub-attribute.
    pub fn simple(name: impl Into<String>) -> Self {
        AttrPath {
            urn: None,
            name: name.into(),
            sub: None,
        }
    }

    /// Splits a raw path token. Returns `None` when the token is not a valid attribute path.
    pub fn parse_token(token: &str) -> Option<Self> {
        let (urn, rest) = if token.len() > 4 && token[..4].eq_ignore_ascii_case("urn:") {
            let idx = token.rfind(':')?;
            (Some(token[..idx].to_string()), &token[idx + 1..])
        } else {
            (None, token)
        };
        let mut parts = rest.split('.');
        let name = parts.next()?.to_string();
        let sub = parts.next().map(str::to_string);
        if parts.next().is_some()
            || !valid_name(&name)
            || sub.as_deref().is_some_and(|s| !valid_name(s))
        {
            return None;
        }
        Some(AttrPath { urn, name, sub })
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '$')
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{urn}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

/// Binary comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// equal
    Eq,
    /// not equal
    Ne,
    /// contains
    Co,
    /// starts with
    Sw,
    /// ends with
    Ew,
    /// greater than
    Gt,
    /// greater than or equal
    Ge,
    /// less than
    Lt,
    /// less than or equal
    Le,
}

impl CompareOp {
    /// The lower-case operator keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }

    pub(crate) fn from_keyword(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }
}

/// A comparison value.
#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A JSON number, kept as its lexeme so no precision is lost.
    Number(String),
    /// A quoted JSON string, unescaped.
    Str(String),
    /// An unquoted token (lenient; not RFC syntax).
    Bare(String),
}

impl fmt::Display for CompValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompValue::Null => f.write_str("null"),
            CompValue::Bool(b) => write!(f, "{b}"),
            CompValue::Number(n) => f.write_str(n),
            CompValue::Str(s) | CompValue::Bare(s) => write_json_string(f, s),
        }
    }
}

fn write_json_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

/// A filter expression.
///
/// `And` and `Or` are n-ary so that a long chain stays flat: evaluating, printing or dropping a
/// filter recurses only as deep as its parentheses, which the parser bounds.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `attr op value`
    Compare {
        /// the attribute
        path: AttrPath,
        /// the operator
        op: CompareOp,
        /// the value
        value: CompValue,
    },
    /// `attr pr`
    Present(AttrPath),
    /// all of the terms
    And(Vec<Filter>),
    /// any of the terms
    Or(Vec<Filter>),
    /// `not (..)`
    Not(Box<Filter>),
    /// `attr[filter]`: some element of the multi-valued (or complex) `path` matches `filter`,
    /// whose attribute paths are relative to that element.
    ValuePath {
        /// the multi-valued attribute (never has `sub`)
        path: AttrPath,
        /// filter applied to each element
        filter: Box<Filter>,
    },
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Compare { path, op, value } => write!(f, "{path} {} {value}", op.as_str()),
            Filter::Present(path) => write!(f, "{path} pr"),
            Filter::And(terms) | Filter::Or(terms) => {
                let kw = if matches!(self, Filter::And(_)) {
                    " and "
                } else {
                    " or "
                };
                f.write_str("(")?;
                for (i, t) in terms.iter().enumerate() {
                    if i > 0 {
                        f.write_str(kw)?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str(")")
            }
            Filter::Not(inner) => write!(f, "not ({inner})"),
            Filter::ValuePath { path, filter } => write!(f, "{path}[{filter}]"),
        }
    }
}

/// A PATCH operation path (RFC 7644 section 3.5.2).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    /// The attribute the operation targets (may carry a sub-attribute when there is no filter).
    pub attr: AttrPath,
    /// A value filter selecting elements of a multi-valued attribute.
    pub filter: Option<Filter>,
    /// Sub-attribute after the value filter (`emails[type eq "work"].value`).
    pub sub_after_filter: Option<String>,
}

impl fmt::Display for PatchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.attr)?;
        if let Some(filter) = &self.filter {
            write!(f, "[{filter}]")?;
        }
        if let Some(sub) = &self.sub_after_filter {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}
