//! pest pairs to syntax tree, with limits checked before parsing.

use pest::iterators::Pair;
use pest::Parser;

use crate::ast::{AttrPath, CompValue, CompareOp, Filter, PatchPath};

#[derive(pest_derive::Parser)]
#[grammar = "grammar.pest"]
struct ScimParser;

/// Bounds on what the parser accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum input length in bytes.
    pub max_length: usize,
    /// Maximum nesting of `(`/`[` brackets.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_length: 4096,
            max_depth: 16,
        }
    }
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The input is longer than [`Limits::max_length`].
    TooLong,
    /// Brackets nest deeper than [`Limits::max_depth`].
    TooDeep,
    /// The input does not match the grammar.
    Syntax,
}

/// A parse failure with the byte offset where it was detected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at position {position})")]
pub struct ParseError {
    /// What kind of failure.
    pub kind: ParseErrorKind,
    /// Byte offset in the input.
    pub position: usize,
    /// Human readable explanation.
    pub message: String,
}

impl ParseError {
    fn syntax(position: usize, message: impl Into<String>) -> Self {
        ParseError {
            kind: ParseErrorKind::Syntax,
            position,
            message: message.into(),
        }
    }
}

const NUL_MESSAGE: &str = "a filter cannot contain the character U+0000";

fn check_limits(input: &str, limits: &Limits) -> Result<(), ParseError> {
    if input.len() > limits.max_length {
        return Err(ParseError {
            kind: ParseErrorKind::TooLong,
            position: limits.max_length,
            message: format!("expression is longer than {} bytes", limits.max_length),
        });
    }
    // No value can hold U+0000 (PostgreSQL text cannot store it, so neither database
    // accepts it), so a filter or path naming it is refused rather than sent to the database.
    if let Some(pos) = input.find('\0') {
        return Err(ParseError::syntax(pos, NUL_MESSAGE));
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (pos, c) in input.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '[' => {
                depth += 1;
                if depth > limits.max_depth {
                    return Err(ParseError {
                        kind: ParseErrorKind::TooDeep,
                        position: pos,
                        message: format!(
                            "expression nests deeper than {} levels",
                            limits.max_depth
                        ),
                    });
                }
            }
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn pest_error(input: &str, err: pest::error::Error<Rule>) -> ParseError {
    let position = match err.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let found = input
        .get(position..)
        .and_then(|rest| rest.split_whitespace().next());
    let message = match found {
        Some(tok) => format!("unexpected '{}'", tok.chars().take(32).collect::<String>()),
        None => "unexpected end of expression".to_string(),
    };
    ParseError::syntax(position, message)
}

/// Parses a filter expression (`filter=` query parameter or `.search` body).
pub fn parse_filter(input: &str, limits: &Limits) -> Result<Filter, ParseError> {
    check_limits(input, limits)?;
    if let Some(f) = simple_comparison(input) {
        return Ok(f);
    }
    parse_with_grammar(input)
}

/// The grammar's own parse, for any input (see [`simple_comparison`]).
pub(crate) fn parse_with_grammar(input: &str) -> Result<Filter, ParseError> {
    let mut pairs = ScimParser::parse(Rule::filter, input).map_err(|e| pest_error(input, e))?;
    let top = pairs.next().and_then(|p| p.into_inner().next());
    match top {
        Some(or) => build_or(or),
        None => Err(ParseError::syntax(0, "empty filter")),
    }
}

/// The grammar's whitespace.
const SPACE: [char; 4] = [' ', '\t', '\r', '\n'];

/// The one shape most filters have, `attr op "text"` (identity providers look users up by
/// `userName eq "..."` before every create), read without the grammar machinery, which costs
/// more than the database lookup it precedes. It answers only inputs that the grammar parses
/// to exactly the same tree (a test compares the two on generated inputs) and leaves every
/// other input, including every malformed one, to the grammar and its error messages.
pub(crate) fn simple_comparison(input: &str) -> Option<Filter> {
    let rest = input.trim_matches(SPACE);
    // The attribute path token: a letter or `$`, then path characters.
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_:.$".contains(c)))
        .unwrap_or(rest.len());
    let (path, rest) = rest.split_at(end);
    if !path.starts_with(|c: char| c.is_ascii_alphabetic() || c == '$') {
        return None;
    }
    // Whitespace, a comparison operator (not `pr`), then the quoted value.
    let rest = rest.strip_prefix(SPACE)?.trim_start_matches(SPACE);
    let op = CompareOp::from_keyword(rest.get(..2)?)?;
    let value = rest[2..].trim_start_matches(SPACE).strip_prefix('"')?;
    // Only text without escapes, and nothing after the closing quote.
    let (text, tail) = value.split_once('"')?;
    if text.contains('\\') || !tail.trim_start_matches(SPACE).is_empty() {
        return None;
    }
    Some(Filter::Compare {
        path: AttrPath::parse_token(path)?,
        op,
        value: CompValue::Str(text.to_string()),
    })
}

/// Parses a PATCH operation `path`.
pub fn parse_patch_path(input: &str, limits: &Limits) -> Result<PatchPath, ParseError> {
    check_limits(input, limits)?;
    if is_attr_path_token(input) {
        // The whole path is one `attr_path` token, as most paths are (`title`, `name.givenName`,
        // URN-qualified ones): what the grammar would make of it, without running it.
        return attr_path_at(input, 0).map(|attr| PatchPath {
            attr,
            filter: None,
            sub_after_filter: None,
        });
    }
    parse_patch_path_by_grammar(input)
}

/// Whether `input` is exactly one token of the grammar's `attr_path` rule.
fn is_attr_path_token(input: &str) -> bool {
    let mut chars = input.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.' | '$'))
}

/// [`parse_patch_path`] through the grammar, whatever the input (limits not checked).
pub(crate) fn parse_patch_path_by_grammar(input: &str) -> Result<PatchPath, ParseError> {
    let mut pairs = ScimParser::parse(Rule::patch_path, input).map_err(|e| pest_error(input, e))?;
    let Some(top) = pairs.next() else {
        return Err(ParseError::syntax(0, "empty path"));
    };
    let mut inner = top.into_inner();
    let Some(path_pair) = inner.next() else {
        return Err(ParseError::syntax(0, "empty path"));
    };
    let attr = attr_path(&path_pair)?;
    let mut filter = None;
    let mut sub_after_filter = None;
    for pair in inner {
        match pair.as_rule() {
            Rule::or_expr => filter = Some(build_or(pair)?),
            Rule::sub_attr => sub_after_filter = Some(pair.as_str()[1..].to_string()),
            _ => {}
        }
    }
    if filter.is_some() && attr.sub.is_some() {
        return Err(ParseError::syntax(
            0,
            "a value filter must follow an attribute, not a sub-attribute",
        ));
    }
    Ok(PatchPath {
        attr,
        filter,
        sub_after_filter,
    })
}

fn attr_path(pair: &Pair<'_, Rule>) -> Result<AttrPath, ParseError> {
    attr_path_at(pair.as_str(), pair.as_span().start())
}

/// The attribute path of one `attr_path` token found at byte `at` of the input.
fn attr_path_at(token: &str, at: usize) -> Result<AttrPath, ParseError> {
    AttrPath::parse_token(token)
        .ok_or_else(|| ParseError::syntax(at, format!("invalid attribute path '{token}'")))
}

fn build_or(pair: Pair<'_, Rule>) -> Result<Filter, ParseError> {
    let mut terms = Vec::new();
    for p in pair.into_inner() {
        if p.as_rule() == Rule::and_expr {
            terms.push(build_and(p)?);
        }
    }
    Ok(flatten(terms, Filter::Or))
}

fn build_and(pair: Pair<'_, Rule>) -> Result<Filter, ParseError> {
    let mut terms = Vec::new();
    for p in pair.into_inner() {
        if p.as_rule() != Rule::and_kw {
            terms.push(build_unary(p)?);
        }
    }
    Ok(flatten(terms, Filter::And))
}

fn flatten(mut terms: Vec<Filter>, make: fn(Vec<Filter>) -> Filter) -> Filter {
    if terms.len() == 1 {
        if let Some(only) = terms.pop() {
            return only;
        }
    }
    make(terms)
}

fn build_unary(pair: Pair<'_, Rule>) -> Result<Filter, ParseError> {
    let start = pair.as_span().start();
    match pair.as_rule() {
        Rule::not_expr => {
            let inner = pair.into_inner().find(|p| p.as_rule() == Rule::or_expr);
            let inner = inner.ok_or_else(|| ParseError::syntax(start, "empty not()"))?;
            Ok(Filter::Not(Box::new(build_or(inner)?)))
        }
        Rule::group => {
            let inner = pair
                .into_inner()
                .next()
                .ok_or_else(|| ParseError::syntax(start, "empty group"))?;
            build_or(inner)
        }
        Rule::attr_expr => {
            let mut it = pair.into_inner();
            let path = match it.next() {
                Some(p) => attr_path(&p)?,
                None => return Err(ParseError::syntax(start, "missing attribute")),
            };
            comparison(path, &mut it, start)
        }
        Rule::value_path => {
            let mut it = pair.into_inner();
            let path = match it.next() {
                Some(p) => attr_path(&p)?,
                None => return Err(ParseError::syntax(start, "missing attribute")),
            };
            if path.sub.is_some() {
                return Err(ParseError::syntax(
                    start,
                    "a value filter must follow an attribute, not a sub-attribute",
                ));
            }
            let inner = it
                .next()
                .ok_or_else(|| ParseError::syntax(start, "empty value filter"))?;
            let mut filter = build_or(inner)?;
            if let Some(sub) = it.next() {
                // `emails[type eq "work"].value eq "x"`: the trailing comparison applies to the
                // same element, so it joins the element filter.
                let sub_path = AttrPath::simple(&sub.as_str()[1..]);
                let extra = comparison(sub_path, &mut it, start)?;
                filter = match filter {
                    Filter::And(mut terms) => {
                        terms.push(extra);
                        Filter::And(terms)
                    }
                    other => Filter::And(vec![other, extra]),
                };
            }
            Ok(Filter::ValuePath {
                path,
                filter: Box::new(filter),
            })
        }
        _ => Err(ParseError::syntax(start, "unexpected token")),
    }
}

fn comparison<'a>(
    path: AttrPath,
    it: &mut impl Iterator<Item = Pair<'a, Rule>>,
    start: usize,
) -> Result<Filter, ParseError> {
    let op = it
        .next()
        .ok_or_else(|| ParseError::syntax(start, "missing operator"))?;
    if op.as_rule() == Rule::pr_kw {
        return Ok(Filter::Present(path));
    }
    let op_pos = op.as_span().start();
    let op = CompareOp::from_keyword(op.as_str())
        .ok_or_else(|| ParseError::syntax(op_pos, format!("unknown operator '{}'", op.as_str())))?;
    let value = it
        .next()
        .ok_or_else(|| ParseError::syntax(start, "missing comparison value"))?;
    Ok(Filter::Compare {
        path,
        op,
        value: comp_value(value)?,
    })
}

fn comp_value(pair: Pair<'_, Rule>) -> Result<CompValue, ParseError> {
    Ok(match pair.as_rule() {
        Rule::string => {
            let start = pair.as_span().start();
            let raw = pair.into_inner().next().map(|p| p.as_str()).unwrap_or("");
            let text = unescape(raw)
                .ok_or_else(|| ParseError::syntax(start, "invalid escape in string"))?;
            if text.contains('\0') {
                return Err(ParseError::syntax(start, NUL_MESSAGE));
            }
            CompValue::Str(text)
        }
        Rule::number => CompValue::Number(pair.as_str().to_string()),
        Rule::true_kw => CompValue::Bool(true),
        Rule::false_kw => CompValue::Bool(false),
        Rule::null_kw => CompValue::Null,
        _ => CompValue::Bare(pair.as_str().to_string()),
    })
}

/// JSON string unescape (RFC 8259 section 7), including surrogate pairs.
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hi = hex4(&mut chars)?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let lo = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                out.push(char::from_u32(code)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut v = 0;
    for _ in 0..4 {
        v = v * 16 + chars.next()?.to_digit(16)?;
    }
    Some(v)
}
