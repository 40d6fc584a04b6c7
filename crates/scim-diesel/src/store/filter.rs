//! Filters as SQL: the conditions a `StoreFilter` becomes, over the resources table and the
//! attribute-value index.

use super::*;

pub(super) type BoxedCond<'a> = Box<
    dyn BoxableExpression<
            resources::table,
            crate::conn::AnyBackend,
            SqlType = diesel::sql_types::Bool,
        > + 'a,
>;

/// `NOT` in two-valued logic: `NOT COALESCE((c), FALSE)`. SQL compares a NULL column as
/// unknown and `NOT` keeps it unknown, so `not (externalId eq "x")` would leave out the
/// resources without an `externalId`; a filter compares as the in-memory evaluator does, where
/// a missing value equals nothing (RFC 7644 section 3.4.2.2: `ne` and `not` match it).
struct Negated<'a>(BoxedCond<'a>);

impl Expression for Negated<'_> {
    type SqlType = diesel::sql_types::Bool;
}

impl<QS> diesel::AppearsOnTable<QS> for Negated<'_> {}

impl<QS> diesel::SelectableExpression<QS> for Negated<'_> {}

impl<GB> diesel::expression::ValidGrouping<GB> for Negated<'_> {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl diesel::query_builder::QueryId for Negated<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::QueryFragment<crate::conn::AnyBackend> for Negated<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, crate::conn::AnyBackend>,
    ) -> QueryResult<()> {
        out.push_sql("NOT COALESCE((");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql("), FALSE)");
        Ok(())
    }
}

/// `SELECT <a>.resource_id FROM resource_values <a> WHERE …`: the ids of the resources with a
/// value at `path` that passes `test`, read from the `(tenant, type, path, value)` index;
/// `a` is the alias of the index row (`v`, or `e` for a row of an element).
fn value_ids(a: &'static str, tenant: &str, rt: &str, path: &str, test: &ValueTest) -> RawCond {
    let ordinal = if a == "e" { "e.ordinal" } else { "v.ordinal" };
    RawCond::sql(&format!(
        "SELECT {a}.resource_id FROM resource_values {a} WHERE "
    ))
    .alive(ordinal)
    .push(&format!("{a}.tenant_id = "))
    .text(tenant)
    .push(&format!(" AND {a}.resource_type = "))
    .text(rt)
    .push(&format!(" AND {a}.path = "))
    .planned_text(path)
    .push(" AND ")
    .append(value_test(a, test))
}

/// `resources.id IN (<ids>)`, or, for ids of a term known to be rare (see [`probe_terms`]),
/// `resources.id = ANY(ARRAY(<ids>))`: computed once (an init plan) and then looked up by id,
/// which the planner takes for a few rows, as they are, and starts from.
fn id_in(ids: RawCond, rare: bool) -> RawCond {
    match rare {
        true => RawCond::sql("resources.id = ANY(ARRAY(")
            .append(ids)
            .push("))"),
        false => RawCond::sql("resources.id IN (").append(ids).push(")"),
    }
}

/// What the store learned about a filter's terms before compiling it, on PostgreSQL (see
/// [`probe_terms`]); nothing on SQLite, whose planner keeps statistics per attribute.
#[derive(Default)]
pub(super) struct Probed<'f> {
    /// value terms with at most [`RARE_MATCHES`] matches
    rare: Vec<&'f StoreFilter>,
    /// element filters whose anchor was chosen by counting what each candidate matches: the
    /// filter, its anchor, and whether that anchor has at most [`RARE_MATCHES`] matches
    anchors: Vec<(&'f StoreFilter, (&'f str, &'f ValueTest), bool)>,
}

impl<'f> Probed<'f> {
    /// Whether `f` is one of the rare value terms.
    fn is_rare(&self, f: &StoreFilter) -> bool {
        self.rare.iter().any(|t| std::ptr::eq(*t, f))
    }

    /// [`value_ids`] of `f` when it is a rare value term.
    fn rare_ids(&self, f: &StoreFilter, tenant: &str, rt: &str) -> Option<RawCond> {
        match f {
            StoreFilter::Value { path, test } if self.is_rare(f) => {
                Some(value_ids("v", tenant, rt, path, test))
            }
            _ => None,
        }
    }

    /// The anchor of the element filter `f` (`filter`), and whether it is rare.
    fn anchor<'a>(
        &'a self,
        f: &StoreFilter,
        filter: &'a ElementFilter,
    ) -> Option<((&'a str, &'a ValueTest), bool)> {
        match self.anchors.iter().find(|(e, _, _)| std::ptr::eq(*e, f)) {
            Some((_, anchor, rare)) => Some((*anchor, *rare)),
            None => filter.anchor().map(|a| (a, false)),
        }
    }
}

/// Most matches a term may have to be rare (see [`probe_terms`]).
const RARE_MATCHES: i64 = 1_000;

/// Most index probes [`probe_terms`] makes for one filter.
const MOST_PROBES: usize = 4;

/// PostgreSQL: counts, by reading at most [`RARE_MATCHES`] + 1 entries of the index for each,
/// what some terms of `f` (outside any `not`; at most [`MOST_PROBES`] of them) match:
///
/// - a value term with a range, `sw` or presence test: one with at most [`RARE_MATCHES`]
///   matches is compiled as the array of its ids (`= ANY(ARRAY(…))`), which the planner starts
///   from, and an `or` of such terms as one array;
/// - the candidate anchors of an element filter with more than one (see
///   [`ElementFilter::anchors`]), or a single one with such a test, in rank order: the first
///   rare one becomes the anchor, as an array, or, when none is, the one that matches least.
///   An equality on a `value` sub-attribute, ranked first, is taken without counting.
///
/// Equalities alone are not probed: their estimates come from the value's own statistics.
/// `ne`, `co` and `ew` read every value at the path whatever they match, and are never probed.
///
/// PostgreSQL keeps one histogram for the values of every attribute, so it cannot tell how
/// much of one attribute's values a range holds: it guessed `name.givenName lt "Given1"` (one
/// match among 20,000 users) at 8,000, and so walked the creation order for the first page,
/// probing every user (136 ms; 2.6 ms now). An element filter's anchor is chosen by rank,
/// equality first, so `addresses[locality eq "Springfield" and postalCode lt "1"]` read the
/// elements of everyone in Springfield. A term with many matches stays as it was: its first
/// page is found early in the walk.
pub(super) fn probe_terms<'f>(
    conn: &mut AnyConnection,
    f: &'f StoreFilter,
    tenant: &str,
    rt: &str,
) -> QueryResult<Probed<'f>> {
    /// Whether PostgreSQL may misjudge what the test matches (and the index can count it).
    fn guessed(test: &ValueTest) -> bool {
        match test {
            ValueTest::Str(op, _) | ValueTest::Num(op, _) => !matches!(
                op,
                CompareOp::Eq | CompareOp::Ne | CompareOp::Co | CompareOp::Ew
            ),
            ValueTest::Present(_) => true,
            ValueTest::Bool(_) => false,
        }
    }
    fn visit<'f>(
        f: &'f StoreFilter,
        probe: &mut dyn FnMut(&str, &ValueTest) -> QueryResult<Option<i64>>,
        out: &mut Probed<'f>,
    ) -> QueryResult<()> {
        match f {
            StoreFilter::Value { path, test } if guessed(test) => {
                let matches = probe(path, test)?;
                if matches.is_some_and(|n| n <= RARE_MATCHES) {
                    out.rare.push(f);
                }
            }
            StoreFilter::Element { filter, .. } => {
                let candidates = filter.anchors();
                // An equality on a `value` (Entra ID's `emails[type eq "work"].value eq "x"`)
                // is taken without counting, as `anchor` ranks it: one value, one element.
                let value_eq = matches!(
                    candidates.first(),
                    Some((p, ValueTest::Str(CompareOp::Eq, _))) if p.ends_with(".value")
                );
                let worth =
                    candidates.len() > 1 || candidates.first().is_some_and(|(_, t)| guessed(t));
                if worth && !value_eq {
                    // In rank order, up to the first rare one; otherwise the least common.
                    let mut best: Option<((&'f str, &'f ValueTest), i64)> = None;
                    for (path, test) in candidates {
                        let Some(n) = probe(path, test)? else { break };
                        if best.is_none_or(|(_, m)| n < m) {
                            best = Some(((path, test), n));
                        }
                        if n <= RARE_MATCHES {
                            break;
                        }
                    }
                    if let Some((anchor, n)) = best {
                        out.anchors.push((f, anchor, n <= RARE_MATCHES));
                    }
                }
            }
            StoreFilter::And(terms) | StoreFilter::Or(terms) => {
                for t in terms {
                    visit(t, probe, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut probed = Probed::default();
    if !matches!(conn, AnyConnection::Postgres(_)) {
        return Ok(probed);
    }
    let mut left = MOST_PROBES;
    let mut probe = |path: &str, test: &ValueTest| -> QueryResult<Option<i64>> {
        if left == 0 {
            return Ok(None);
        }
        left -= 1;
        let count = RawCond::sql("(SELECT count(*) FROM (")
            .append(value_ids("v", tenant, rt, path, test))
            .push(&format!(" LIMIT {}) p)", RARE_MATCHES + 1));
        let query = diesel::select(crate::raw::RawCount(count));
        Ok(Some(query.get_result::<i64>(conn)?))
    };
    visit(f, &mut probe, &mut probed)?;
    Ok(probed)
}

/// Compiles a filter to a condition on `resources`, scoped to one tenant and resource type
/// (the index sub-queries name them so that they use the `(tenant, type, path, value)` index).
/// `probed` says which terms are matched as the array of their resources' ids, and which
/// anchor an element filter takes (see [`probe_terms`]).
pub(super) fn condition<'a>(
    f: &'a StoreFilter,
    tenant: &'a str,
    rt: &'a str,
    probed: &Probed<'_>,
) -> BoxedCond<'a> {
    match f {
        StoreFilter::All => Box::new(diesel::dsl::sql::<diesel::sql_types::Bool>("1 = 1")),
        StoreFilter::Nothing => Box::new(diesel::dsl::sql::<diesel::sql_types::Bool>("1 = 0")),
        StoreFilter::Eq(IndexedField::Id, v) => Box::new(resources::id.eq(v.as_str())),
        StoreFilter::Eq(IndexedField::ExternalId, v) => {
            Box::new(resources::external_id.eq(v.as_str()).assume_not_null())
        }
        StoreFilter::Eq(IndexedField::UserName, v) => {
            Box::new(resources::user_name_ci.eq(v.as_str()).assume_not_null())
        }
        StoreFilter::Eq(IndexedField::DisplayName, v) => {
            Box::new(resources::display_name_ci.eq(v.as_str()).assume_not_null())
        }
        StoreFilter::Eq(_, _) => Box::new(diesel::dsl::sql::<diesel::sql_types::Bool>("1 = 0")),
        StoreFilter::Column(
            column @ (Column::UserName | Column::DisplayName),
            op @ (CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le),
            v,
        ) if !v.is_empty() => {
            // A one-sided range on a key column, as the set of ids its index range holds: so
            // written, both databases read the range and then the rows it names, as they do for
            // the attribute-value index. Written as a plain condition, they walked the whole
            // creation-order index instead (`userName gt "user99998"` at 100,000 users: 47 ms
            // on SQLite and 79 ms on PostgreSQL, against 1-2 ms). `pr` (`> ''`) matches most
            // resources and stays a plain condition.
            let col = match column {
                Column::UserName => "k.user_name_ci",
                _ => "k.display_name_ci",
            };
            Box::new(
                RawCond::sql("resources.id IN (SELECT k.id FROM resources k WHERE k.tenant_id = ")
                    .text(tenant)
                    .push(" AND k.resource_type = ")
                    .text(rt)
                    .push(" AND ")
                    .append(str_test(RawCond::sql(col), *op, v))
                    .push(")"),
            )
        }
        StoreFilter::Column(column, op, v) => Box::new(
            str_test(
                RawCond::sql("(")
                    .alive("resources.version")
                    .push(column_sql(*column)),
                *op,
                v,
            )
            .push(")"),
        ),
        StoreFilter::Value { path, test } => Box::new(id_in(
            value_ids("v", tenant, rt, path, test),
            probed.is_rare(f),
        )),
        StoreFilter::Element { paths, filter } => {
            // `e` is a row of the element, and the whole filter is checked on that element.
            // With an anchor test the elements are found from the index rows that pass it (an
            // index probe); without one, every resource's own rows at the attribute's paths
            // are visited (its primary key; a scan of the tenant's resources).
            let tested = |c: RawCond| c.push(" AND ").append(element_test(filter));
            match probed.anchor(f, filter) {
                Some(((p, t), rare)) => {
                    Box::new(id_in(tested(value_ids("e", tenant, rt, p, t)), rare))
                }
                None => Box::new(
                    tested(
                        RawCond::sql("EXISTS (SELECT 1 FROM resource_values e WHERE ")
                            .alive("e.ordinal")
                            .push("e.resource_id = resources.id AND e.path IN ")
                            .append(RawCond::joined(paths, ", ", "(NULL)", |p| {
                                RawCond::default().text(p)
                            })),
                    )
                    .push(")"),
                ),
            }
        }
        StoreFilter::Linked {
            side: LinkSide::Groups,
            linked_type,
            filter,
        } if !matches!(filter.as_ref(), StoreFilter::All) => Box::new(nested_groups_condition(
            filter,
            tenant,
            linked_type.as_deref(),
        )),
        StoreFilter::Linked {
            side,
            linked_type,
            filter,
        } => {
            // By id (`members eq "x"`, the IdPs' query): the membership table's own index
            // answers, without the linked resource's row.
            if let (LinkSide::Members, StoreFilter::Column(Column::Id, CompareOp::Eq, v)) =
                (side, filter.as_ref())
            {
                return Box::new(
                    resources::id.eq_any(
                        group_members::table
                            .select(group_members::group_id)
                            .filter(group_members::member_id.eq(v.as_str())),
                    ),
                );
            }
            // `l` is the linked resource: a member, or (`groups pr`: a resource in any group
            // is directly in one) a group.
            let (this_col, other_col) = match side {
                LinkSide::Groups => ("gm.member_id", "gm.group_id"),
                LinkSide::Members => ("gm.group_id", "gm.member_id"),
            };
            let mut cond = RawCond::sql(&format!(
                "resources.id IN (SELECT {this_col} FROM group_members gm JOIN resources l ON l.id = {other_col} WHERE "
            ))
            .alive("l.version")
            .push("l.tenant_id = ")
            .text(tenant);
            if let Some(t) = linked_type {
                cond = cond.push(" AND l.resource_type = ").text(t);
            }
            Box::new(
                cond.push(" AND ")
                    .append(linked_condition(filter, Kind::None))
                    .push(")"),
            )
        }
        StoreFilter::And(terms) => terms
            .iter()
            .map(|t| condition(t, tenant, rt, probed))
            .reduce(|a, b| Box::new(a.and(b)))
            .unwrap_or_else(|| condition(&StoreFilter::All, tenant, rt, probed)),
        StoreFilter::Or(terms) => {
            let all_rare: Option<Vec<RawCond>> = terms
                .iter()
                .map(|t| probed.rare_ids(t, tenant, rt))
                .collect();
            match all_rare {
                // Rare terms in one array: as an array each, the planner walked the order.
                Some(ids) if !ids.is_empty() => Box::new(id_in(
                    RawCond::joined(&ids, " UNION ALL ", "", Clone::clone),
                    true,
                )),
                _ => terms
                    .iter()
                    .map(|t| condition(t, tenant, rt, probed))
                    .reduce(|a, b| Box::new(a.or(b)))
                    .unwrap_or_else(|| condition(&StoreFilter::Nothing, tenant, rt, probed)),
            }
        }
        StoreFilter::Not(inner) => Box::new(Negated(condition(inner, tenant, rt, probed))),
    }
}

/// The resources in a group that passes `filter` (a [`StoreFilter::Linked`] on
/// [`LinkSide::Groups`]), directly or through groups nested in it, at any depth (RFC 7643
/// section 4.1.2: a User's `groups` lists both, typed `direct` and `indirect`).
///
/// `down(top, g)` pairs each group `top` that may pass with itself and every group reached
/// from it through nested groups; `UNION` keeps each pair once, so a cycle of groups ends. A
/// step follows only members that have members of their own (the rest cannot lead further),
/// so its cost is the reached groups' members, whatever else the tenant holds. Where `filter`
/// tests the membership's type, the seed tests everything else (each type test counts as
/// passed, or failed under a `not`: a superset), and the exact test runs on each link, whose
/// type is `direct` when the resource is a member of `top` itself.
fn nested_groups_condition(
    filter: &StoreFilter,
    tenant: &str,
    group_type: Option<&str>,
) -> RawCond {
    // PostgreSQL cannot estimate a recursive statement's rows and guesses thousands: it would
    // scan `resources` whole against them, or join with hashes built from whole tables. An
    // array is read once and probed by primary key, and `LATERAL (… OFFSET 0)` keeps each step
    // an index probe. SQLite probes in the order the tables are written with `CROSS JOIN`.
    let mut seed = RawCond::default()
        .per_backend("resources.id IN (", "resources.id = ANY(ARRAY(")
        .push("WITH RECURSIVE down(top, g) AS (SELECT l.id, l.id FROM resources l WHERE ")
        .alive("l.version")
        .push("l.tenant_id = ")
        .text(tenant);
    if let Some(t) = group_type {
        seed = seed.push(" AND l.resource_type = ").text(t);
    }
    let links = seed
        .push(" AND ")
        .append(linked_condition(filter, Kind::Relaxed { positive: true }))
        .push(" UNION SELECT down.top, n.member_id FROM down")
        .per_backend(
            " JOIN group_members n ON n.group_id = down.g WHERE ",
            " CROSS JOIN LATERAL (SELECT n.member_id FROM group_members n WHERE n.group_id = \
             down.g AND ",
        )
        .alive("0")
        .push("EXISTS (SELECT 1 FROM group_members x WHERE x.group_id = n.member_id)")
        .per_backend(")", " OFFSET 0) n)")
        .push(" SELECT gm.member_id FROM down")
        .per_backend(
            " CROSS JOIN group_members gm ON gm.group_id = down.g",
            " CROSS JOIN LATERAL (SELECT gm.member_id FROM group_members gm WHERE gm.group_id = \
             down.g OFFSET 0) gm",
        );
    let links = if tests_membership_type(filter) {
        links
            .push(" JOIN resources l ON l.id = down.top WHERE ")
            .append(linked_condition(filter, Kind::Exact(MEMBERSHIP_TYPE)))
    } else {
        // The seed's test was the exact one.
        links
    };
    links.per_backend(")", "))")
}

/// Whether a filter on a linked resource tests the membership's type.
fn tests_membership_type(f: &StoreFilter) -> bool {
    match f {
        StoreFilter::Column(Column::MembershipType, ..) => true,
        StoreFilter::And(t) | StoreFilter::Or(t) => t.iter().any(tests_membership_type),
        StoreFilter::Not(inner) => tests_membership_type(inner),
        _ => false,
    }
}

/// The type of the link from `gm.member_id` to `down.top` in [`nested_groups_condition`].
const MEMBERSHIP_TYPE: &str = "CASE WHEN EXISTS (SELECT 1 FROM group_members d WHERE d.group_id = down.top AND d.member_id = gm.member_id) THEN 'direct' ELSE 'indirect' END";

/// How [`linked_condition`] treats a test of the membership's type
/// ([`Column::MembershipType`]).
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// it cannot occur (a filter on a group's members): no link passes it
    None,
    /// the SQL expression of the type
    Exact(&'static str),
    /// unknown yet: the test passes where it stands under an even number of `not`s
    /// (`positive`) and fails under an odd one, so the condition is a superset of the exact one
    Relaxed { positive: bool },
}

/// A filter on the linked resource `l` of a [`StoreFilter::Linked`]: the planner builds it
/// from `Column` tests on `id`, `displayName`, the display, the resource type and the
/// membership's type (`kind`), `All`, `Nothing`, `And`, `Or`, `Not`.
fn linked_condition(f: &StoreFilter, kind: Kind) -> RawCond {
    let join = |terms: &[StoreFilter], sep: &str, empty: &str| {
        RawCond::joined(terms, sep, empty, |t| linked_condition(t, kind))
    };
    let column = |c: Column| match c {
        Column::Id => Some("l.id"),
        Column::DisplayName => Some("l.display_name_ci"),
        Column::ResourceType => Some("l.resource_type"),
        // `display` is `displayName`, else `userName` (`index_keys`), both kept folded.
        Column::Display => Some("COALESCE(l.display_name_ci, l.user_name_ci)"),
        _ => None,
    };
    match f {
        StoreFilter::All => RawCond::sql("1 = 1"),
        StoreFilter::Nothing => RawCond::sql("1 = 0"),
        StoreFilter::Column(Column::MembershipType, op, v) => match kind {
            Kind::Exact(sql) => str_test(RawCond::sql("(").push(sql), *op, v).push(")"),
            Kind::Relaxed { positive: true } => RawCond::sql("1 = 1"),
            Kind::Relaxed { positive: false } | Kind::None => RawCond::sql("1 = 0"),
        },
        StoreFilter::Column(c, op, v) => match column(*c) {
            Some(col) => str_test(RawCond::sql("(").push(col), *op, v).push(")"),
            None => RawCond::sql("1 = 0"),
        },
        StoreFilter::And(t) => join(t, " AND ", "1 = 1"),
        StoreFilter::Or(t) => join(t, " OR ", "1 = 0"),
        StoreFilter::Not(inner) => {
            let flipped = match kind {
                Kind::Relaxed { positive } => Kind::Relaxed {
                    positive: !positive,
                },
                other => other,
            };
            RawCond::sql("NOT COALESCE((")
                .append(linked_condition(inner, flipped))
                .push("), FALSE)")
        }
        // Nothing else comes from the planner.
        _ => RawCond::sql("1 = 0"),
    }
}

/// The SQL name of a filterable column.
pub(super) fn column_sql(c: Column) -> &'static str {
    match c {
        Column::Id => "resources.id",
        Column::ExternalId => "resources.external_id",
        Column::UserName => "resources.user_name_ci",
        Column::DisplayName => "resources.display_name_ci",
        Column::Created => "resources.created",
        Column::LastModified => "resources.last_modified",
        Column::ResourceType => "resources.resource_type",
        Column::Display => "COALESCE(resources.display_name_ci, resources.user_name_ci)",
        // Only inside a filter on a resource's groups (`linked_condition`).
        Column::MembershipType => "NULL",
    }
}

/// `LIKE` pattern of a literal: `%` `_` and `\` are escaped (with `ESCAPE '\'`).
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `<lhs> <op> ?` for text: bytewise comparison on both databases (SQLite BINARY, PostgreSQL
/// `COLLATE "C"`), and case-sensitive LIKE (SQLite runs with `case_sensitive_like`), since
/// values are already folded where the schema says caseExact is false.
fn str_test(lhs: RawCond, op: CompareOp, v: &str) -> RawCond {
    let (sql, arg) = match op {
        CompareOp::Eq => (" = ", v.to_string()),
        CompareOp::Ne => (" <> ", v.to_string()),
        CompareOp::Gt => (" > ", v.to_string()),
        CompareOp::Ge => (" >= ", v.to_string()),
        CompareOp::Lt => (" < ", v.to_string()),
        CompareOp::Le => (" <= ", v.to_string()),
        CompareOp::Sw => (" LIKE ", format!("{}%", like_literal(v))),
        CompareOp::Ew => (" LIKE ", format!("%{}", like_literal(v))),
        CompareOp::Co => (" LIKE ", format!("%{}%", like_literal(v))),
    };
    // Every operand is one the planner sees: a range's or a pattern's plan depends on it, and
    // so does an equality's once it is one of several terms (see `planned_text`).
    let cond = lhs.push(sql).planned_text(&arg);
    if matches!(op, CompareOp::Sw | CompareOp::Ew | CompareOp::Co) {
        cond.push(" ESCAPE '\\'")
    } else {
        cond
    }
}

/// A test on the index row aliased `alias`.
fn value_test(alias: &str, test: &ValueTest) -> RawCond {
    let col = |c: &str| RawCond::sql(&format!("{alias}.{c}"));
    match test {
        ValueTest::Str(op, v) => str_test(col("str_value"), *op, v),
        ValueTest::Num(op, n) => {
            let sql = match op {
                CompareOp::Gt => " > ",
                CompareOp::Ge => " >= ",
                CompareOp::Lt => " < ",
                CompareOp::Le => " <= ",
                CompareOp::Ne => " <> ",
                _ => " = ",
            };
            // As for text (see `str_test`).
            col("num_value").push(sql).planned_double(*n)
        }
        ValueTest::Bool(b) => col("bool_value").push(" = ").boolean(*b),
        // Each form implies its column is not NULL, so the partial indexes apply.
        ValueTest::Present(ValueKind::Str) => col("str_value").push(" > ''"),
        ValueTest::Present(ValueKind::Num) => col("num_value").push(" IS NOT NULL"),
        ValueTest::Present(ValueKind::Bool) => col("bool_value").push(" IS NOT NULL"),
    }
}

/// Tests on the element a row of which is aliased `e`: each test looks for a row of the same
/// resource and ordinal.
fn element_test(f: &ElementFilter) -> RawCond {
    let join = |terms: &[ElementFilter], sep: &str, empty: &str| {
        RawCond::joined(terms, sep, empty, element_test)
    };
    match f {
        ElementFilter::Test { path, test } => {
            RawCond::sql("EXISTS (SELECT 1 FROM resource_values v WHERE ")
                .alive("v.ordinal")
                .push("v.resource_id = e.resource_id AND v.ordinal = e.ordinal AND v.path = ")
                .text(path)
                .push(" AND ")
                .append(value_test("v", test))
                .push(")")
        }
        ElementFilter::And(t) => join(t, " AND ", "1 = 1"),
        ElementFilter::Or(t) => join(t, " OR ", "1 = 0"),
        ElementFilter::Not(inner) => RawCond::sql("NOT (").append(element_test(inner)).push(")"),
    }
}
