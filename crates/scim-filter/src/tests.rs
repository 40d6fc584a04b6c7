//! Data-driven parser tests: add a line to a file under `test_data/`, not a new function.

use crate::{parse_filter, parse_patch_path, Filter, Limits, ParseErrorKind};

fn cases(data: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    data.lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#'))
        .filter_map(|(n, l)| {
            let (input, expected) = l.split_once(" ==> ")?;
            Some((n + 1, input, expected))
        })
}

fn kind_at(kind: ParseErrorKind, pos: usize) -> String {
    format!("{kind:?}@{pos}")
}

#[test]
fn filters_that_parse() {
    let data = include_str!("../test_data/filter_ok.txt");
    let mut count = 0;
    for (line, input, expected) in cases(data) {
        let parsed = parse_filter(input, &Limits::default())
            .unwrap_or_else(|e| panic!("line {line}: {input:?} failed: {e}"));
        assert_eq!(parsed.to_string(), expected, "line {line}: {input:?}");
        // The canonical form is a fixed point (unquoted values print quoted).
        let again = parse_filter(&parsed.to_string(), &Limits::default()).unwrap();
        assert_eq!(
            again.to_string(),
            expected,
            "line {line}: round trip of {input:?}"
        );
        count += 1;
    }
    assert!(count > 30, "only {count} cases found");
}

#[test]
fn filters_that_fail() {
    let data = include_str!("../test_data/filter_err.txt");
    for (line, input, expected) in cases(data) {
        let err = parse_filter(input, &Limits::default())
            .err()
            .unwrap_or_else(|| panic!("line {line}: {input:?} parsed but should not"));
        assert_eq!(
            kind_at(err.kind, err.position),
            expected,
            "line {line}: {input:?}: {err}"
        );
    }
}

#[test]
fn patch_paths_that_parse() {
    for (line, input, expected) in cases(include_str!("../test_data/path_ok.txt")) {
        let parsed = parse_patch_path(input, &Limits::default())
            .unwrap_or_else(|e| panic!("line {line}: {input:?} failed: {e}"));
        assert_eq!(parsed.to_string(), expected, "line {line}");
    }
}

#[test]
fn patch_paths_that_fail() {
    for (line, input, expected) in cases(include_str!("../test_data/path_err.txt")) {
        let err = parse_patch_path(input, &Limits::default())
            .err()
            .unwrap_or_else(|| panic!("line {line}: {input:?} parsed but should not"));
        assert_eq!(
            kind_at(err.kind, err.position),
            expected,
            "line {line}: {input:?}: {err}"
        );
    }
}

#[test]
fn urn_path_splits_at_last_colon() {
    let p = parse_patch_path(
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        p.attr.urn.as_deref(),
        Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
    );
    assert_eq!(p.attr.name, "manager");
    assert_eq!(p.attr.sub.as_deref(), Some("value"));
}

#[test]
fn hostile_inputs_are_bounded() {
    let limits = Limits::default();
    let deep = format!("{}a pr{}", "(".repeat(100_000), ")".repeat(100_000));
    assert_eq!(
        parse_filter(&deep, &limits).unwrap_err().kind,
        ParseErrorKind::TooLong
    );
    let deep = format!("{}a pr{}", "(".repeat(1000), ")".repeat(1000));
    let big = Limits {
        max_length: 1 << 20,
        max_depth: 16,
    };
    assert_eq!(
        parse_filter(&deep, &big).unwrap_err().kind,
        ParseErrorKind::TooDeep
    );
    // A long flat chain is fine and stays flat.
    let chain = vec!["a eq 1"; 2000].join(" and ");
    match parse_filter(
        &chain,
        &Limits {
            max_length: 1 << 20,
            max_depth: 16,
        },
    )
    .unwrap()
    {
        Filter::And(terms) => assert_eq!(terms.len(), 2000),
        other => panic!("unexpected {other:?}"),
    }
    // Brackets inside strings do not count towards depth.
    let quoted = format!("a eq \"{}\"", "(".repeat(100));
    assert!(parse_filter(&quoted, &limits).is_ok());
}

/// The short cut for `attr op "text"` must give exactly the grammar's tree, and only where the
/// grammar parses the input at all.
#[test]
fn the_simple_comparison_short_cut_agrees_with_the_grammar() {
    use crate::parse::{parse_with_grammar, simple_comparison};
    let check = |input: &str| -> bool {
        match simple_comparison(input) {
            Some(fast) => {
                assert_eq!(parse_with_grammar(input), Ok(fast), "{input:?}");
                true
            }
            None => false,
        }
    };
    // Every input of the corpus.
    let mut taken = 0;
    for data in [
        include_str!("../test_data/filter_ok.txt"),
        include_str!("../test_data/filter_err.txt"),
    ] {
        for (_, input, _) in cases(data) {
            taken += usize::from(check(input));
        }
    }
    assert!(
        taken >= 5,
        "the corpus has simple comparisons ({taken} taken)"
    );
    // Generated inputs around the shape: pieces that are, or nearly are, its tokens.
    let pieces = [
        "userName",
        "name.familyName",
        "urn:ietf:params:scim:schemas:core:2.0:User:userName",
        "emails",
        "$ref",
        "a-b_c",
        "9x",
        "x.",
        ".x",
        "a.b.c",
        "not",
        "and",
        "or",
        "pr",
        "eq",
        "EQ",
        "Sw",
        "co",
        "ge",
        "xx",
        "eqx",
        " ",
        "  ",
        "\t",
        "\n",
        "\"",
        "\"bjensen\"",
        "\"a b\"",
        "\"\"",
        "\"x\\\"y\"",
        "\\",
        "\"é\"",
        "é",
        "(",
        ")",
        "[",
        "]",
        "true",
        "12",
        "null",
        "\"unterminated",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut generated_taken = 0;
    for _ in 0..50_000 {
        let input: String = (0..1 + next(6))
            .map(|_| pieces[next(pieces.len())])
            .collect();
        generated_taken += usize::from(check(&input));
        // and the well-formed shape with random spacing and case
        let shaped = format!(
            "{}{}{}{}{}{}",
            pieces[next(4)],
            [" ", "  ", "\t", ""][next(4)],
            ["eq", "EQ", "sw", "Pr", "gt"][next(5)],
            [" ", "", "\n "][next(3)],
            ["\"bjensen\"", "\"\"", "\"a\\\"b\"", "bare", "\"é x\""][next(5)],
            ["", " ", " )", " and x pr"][next(4)],
        );
        generated_taken += usize::from(check(&shaped));
    }
    assert!(
        generated_taken > 1_000,
        "{generated_taken} generated inputs were taken"
    );
}

/// Paths that are one attribute token skip the grammar; they must come out exactly as the
/// grammar makes them, errors included.
#[test]
fn patch_paths_of_one_token_parse_as_the_grammar_parses_them() {
    let inputs = [
        "title",
        "name.givenName",
        "$ref",
        "members",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
        "URN:IETF:params:scim:schemas:core:2.0:User:userName",
        "emails.value.extra",
        "name..givenName",
        "name.",
        "a-b_c",
        "x:",
        "urn:",
        "urn:x:1bad",
        "name.1bad",
    ];
    for input in inputs {
        let fast = parse_patch_path(input, &Limits::default());
        let grammar = crate::parse::parse_patch_path_by_grammar(input);
        assert_eq!(fast, grammar, "{input}");
    }
    // what the short cut does not take still goes through the grammar
    for input in [
        "emails[type eq \"work\"].value",
        " title",
        "title ",
        "1title",
        "",
    ] {
        assert_eq!(
            parse_patch_path(input, &Limits::default()),
            crate::parse::parse_patch_path_by_grammar(input),
            "{input}"
        );
    }
}
