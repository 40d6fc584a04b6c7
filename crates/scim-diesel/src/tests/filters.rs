//! Filters in SQL: agreement with the in-memory evaluator, point reads, literals, and PostgreSQL's
//! plans for rare terms.

use super::*;

fn lit(rng: &mut Rng) -> String {
    serde_json::to_string(rng.pick(WORDS)).unwrap()
}

fn random_filter(rng: &mut Rng, depth: u32) -> String {
    let ops = ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"];
    match if depth == 0 {
        rng.next() % 6
    } else {
        rng.next() % 10
    } {
        0 => format!(
            "{} {} {}",
            rng.pick(&[
                "displayName",
                "title",
                "nickName",
                "name.givenName",
                "name.familyName",
                "userName",
                "locale",
                "emails.value",
                "emails.type",
                "emails"
            ]),
            rng.pick(&ops),
            lit(rng)
        ),
        1 => format!(
            "{} pr",
            rng.pick(&[
                "displayName",
                "title",
                "name",
                "name.givenName",
                "emails",
                "emails.value",
                "active",
                "emails.primary"
            ])
        ),
        2 => format!(
            "active {} {}",
            rng.pick(&["eq", "ne"]),
            rng.pick(&["true", "false"])
        ),
        3 => format!(
            "emails[type eq \"{}\" and value {} {}]",
            rng.pick(&["work", "home", "other"]),
            rng.pick(&ops),
            lit(rng)
        ),
        4 => match rng.next() % 5 {
            0 => format!(
                "emails[{} or primary eq true]",
                format_args!("value sw {}", lit(rng))
            ),
            // Element filters the index can anchor on (see `anchor` in store/filter.rs).
            1 => format!(
                "emails[type eq \"{}\"].value eq {}",
                rng.pick(&["work", "home"]),
                lit(rng)
            ),
            2 => format!(
                "emails[primary eq {} and not (type eq \"work\")]",
                rng.pick(&["true", "false"])
            ),
            3 => format!(
                "emails[value pr and type ne \"{}\"]",
                rng.pick(&["work", "home"])
            ),
            // Without an indexable test: every element is visited.
            4 if rng.chance(50) => format!(
                "emails[not (type eq \"{}\") or display pr]",
                rng.pick(&["work", "home"])
            ),
            _ => format!(
                "emails[value {} {}]",
                rng.pick(&["eq", "sw", "ge"]),
                lit(rng)
            ),
        },
        5 => format!("{} eq null", rng.pick(&["title", "name.givenName"])),
        6 => format!(
            "({} and {})",
            random_filter(rng, depth - 1),
            random_filter(rng, depth - 1)
        ),
        7 => format!(
            "({} or {})",
            random_filter(rng, depth - 1),
            random_filter(rng, depth - 1)
        ),
        // `displayName eq` is a column test: under `not`, users without one must match.
        8 if rng.chance(30) => format!(
            "not ({} eq {})",
            rng.pick(&["displayName", "userName", "title"]),
            lit(rng)
        ),
        8 => format!("not ({})", random_filter(rng, depth - 1)),
        _ => format!(
            "{} and {}",
            random_filter(rng, depth - 1),
            random_filter(rng, depth - 1)
        ),
    }
}

/// Random filters over random users: the database (through the index) and the in-memory
/// evaluator must select exactly the same users, on both databases.
#[test]
fn filters_in_sql_agree_with_the_in_memory_evaluator() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let core = reg.core_schema(ctx.rt).unwrap();
    for db in databases() {
        let s = &db.store;
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut docs = Vec::new();
        for i in 0..150 {
            let body = random_user(&mut rng, i);
            let w = prepare_create(&ctx, &body).unwrap();
            let rec = s
                .create(T, "User", &format!("u{i:03}"), NOW, w, Include::default())
                .unwrap();
            docs.push(rec);
        }
        // Replace every third user with new random attributes: a replace rewrites only the
        // index rows that changed, and the filters below must see exactly the new values.
        for i in (0..docs.len()).step_by(3) {
            let body = random_user(&mut rng, i);
            let id = docs[i].id.clone();
            docs[i] = s
                .update(T, "User", &id, NOW, None, Include::default(), &mut |cur| {
                    scim_core::resource::prepare_replace(&ctx, &body, cur)
                })
                .unwrap();
        }
        let mut checked = 0;
        let mut nonempty = 0;
        for _ in 0..400 {
            let text = random_filter(&mut rng, 3);
            let limits = scim_core::query::QueryLimits {
                filter: scim_filter::Limits {
                    max_length: 4096,
                    max_depth: 32,
                },
                max_scans: usize::MAX,
                ..Default::default()
            };
            let planned = match scim_core::query::plan_filter(&ctx, Some(&text), &limits) {
                Ok(p) => p,
                Err(e) => panic!("{}: planner refused {text:?}: {e}", db.name),
            };
            let ast = scim_filter::parse_filter(&text, &limits.filter).unwrap();
            let mut want: Vec<&str> = docs
                .iter()
                .filter(|d| {
                    scim_core::eval::matches(&ast, &d.data, &core.attributes)
                        .unwrap_or_else(|e| panic!("eval {text}: {e}"))
                })
                .map(|d| d.id.as_str())
                .collect();
            want.sort();
            let page = s
                .list(
                    T,
                    "User",
                    &ListQuery {
                        filter: planned,
                        start_index: 1,
                        count: 1000,
                        include: Include::default(),
                        sort: None,
                        after: None,
                    },
                )
                .unwrap();
            let mut got: Vec<&str> = page.resources.iter().map(|r| r.id.as_str()).collect();
            got.sort();
            assert_eq!(got, want, "{}: filter {text}", db.name);
            assert_eq!(page.total as usize, want.len());
            checked += 1;
            nonempty += usize::from(!want.is_empty() && want.len() < docs.len());
        }
        assert!(
            nonempty > 100,
            "{}: only {nonempty} of {checked} filters were selective",
            db.name
        );
    }
}

/// A user read by id or `userName` comes with its groups from one joined statement; the
/// groups must be exactly those the general read path gives: every direct group, in id order,
/// with display names, then the groups reached through nested groups (`indirect`), and an
/// empty list for a user in none.
#[test]
fn point_reads_return_the_same_groups_as_the_general_path() {
    let reg = registry();
    let groups_too = Include {
        members: false,
        groups: true,
        member_limit: None,
    };
    for db in databases() {
        let s = &db.store;
        for (id, name) in [("ua", "anna"), ("ub", "bert")] {
            s.create(T, "User", id, NOW, user(&reg, name), Include::default())
                .unwrap();
        }
        for (id, name, member) in [
            ("g3", "Three", "ua"),
            ("g1", "One", "ua"),
            ("g2", "Two", "ua"),
            // g3 is in g0, and g0 in g4: ua is in both through g3.
            ("g0", "Zero", "g3"),
            ("g4", "Four", "g0"),
        ] {
            s.create(
                T,
                "Group",
                id,
                NOW,
                group(&reg, name, &[member]),
                Include::default(),
            )
            .unwrap();
        }
        let list = |filter: StoreFilter, start_index: u64| {
            s.list(
                T,
                "User",
                &ListQuery {
                    filter,
                    start_index,
                    count: 10,
                    include: groups_too,
                    sort: None,
                    after: None,
                },
            )
            .unwrap()
        };
        let general = list(StoreFilter::All, 1);
        assert_eq!(general.total, 2, "{}", db.name);
        type Listed = Vec<(String, Option<String>, bool)>;
        let names = |r: &scim_core::store::ResourceRecord| -> Listed {
            r.groups
                .as_ref()
                .expect("groups were asked for")
                .iter()
                .map(|g| (g.id.clone(), g.display.clone(), g.indirect))
                .collect()
        };
        let expected: Listed = [
            ("g1", "One", false),
            ("g2", "Two", false),
            ("g3", "Three", false),
            ("g0", "Zero", true),
            ("g4", "Four", true),
        ]
        .iter()
        .map(|(i, d, indirect)| (i.to_string(), Some(d.to_string()), *indirect))
        .collect();
        assert_eq!(names(&general.resources[0]), expected, "{}", db.name);
        assert_eq!(names(&general.resources[1]), [], "{}", db.name);
        for (id, name) in [("ua", "anna"), ("ub", "bert")] {
            let from_general = general.resources.iter().find(|r| r.id == id).unwrap();
            let by_id = s.get(T, "User", id, groups_too).unwrap();
            let by_name = list(StoreFilter::Eq(IndexedField::UserName, name.into()), 1);
            let by_id_filter = list(StoreFilter::Eq(IndexedField::Id, id.into()), 1);
            for (how, got) in [
                ("get", &by_id),
                ("userName eq", &by_name.resources[0]),
                ("id eq", &by_id_filter.resources[0]),
            ] {
                assert_eq!(got, from_general, "{} {how} {id}", db.name);
            }
            assert_eq!((by_name.total, by_id_filter.total), (1, 1));
            // A second page of a unique match is empty but still counts it.
            let second = list(StoreFilter::Eq(IndexedField::UserName, name.into()), 2);
            assert_eq!(
                (second.total, second.resources.len()),
                (1, 0),
                "{}",
                db.name
            );
        }
        assert_eq!(
            list(StoreFilter::Eq(IndexedField::UserName, "nobody".into()), 1).total,
            0
        );
        assert!(matches!(
            s.get(T, "User", "nobody", groups_too),
            Err(StoreError::NotFound)
        ));
    }
}

#[derive(QueryableByName, Debug)]
struct PlanRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    detail: String,
}

/// SQLite plans a lookup on any attribute from the attribute-value index (then the resource by
/// primary key), not by walking the tenant's resources and probing the sub-query for each:
/// the planner statistics the store writes make `tenant_id`/`resource_type` unselective. The
/// query has the shape `condition` compiles `emails.value eq "x"` to (migrations run, so the
/// statistics dropped by a table rebuild are back).
#[test]
fn sqlite_finds_a_value_through_the_index_not_by_walking_the_tenant() {
    let db = sqlite();
    db.store.migrate().unwrap();
    // A second store on the file: its connections read the statistics at open.
    let store = DieselStore::open(&StoreConfig::new(db.url.clone())).unwrap();
    let mut conn = store.connection().unwrap();
    let plan: Vec<String> = diesel::sql_query(
        "EXPLAIN QUERY PLAN SELECT resources.id FROM resources \
         WHERE resources.tenant_id = 't' AND resources.resource_type = 'User' AND \
         (resources.id IN (SELECT v.resource_id FROM resource_values v WHERE \
         scim_alive(v.ordinal) AND v.tenant_id = 't' AND v.resource_type = 'User' AND \
         v.path = 'emails.value' AND v.str_value = 'x')) \
         ORDER BY resources.created, resources.id LIMIT 100",
    )
    .load::<PlanRow>(&mut *conn)
    .unwrap()
    .into_iter()
    .map(|r| r.detail)
    .collect();
    let text = plan.join(" | ");
    assert!(
        text.contains("sqlite_autoindex_resources_1 (id=?)"),
        "{text}"
    );
    assert!(text.contains("resource_values_str"), "{text}");
    assert!(!text.contains("resources_order"), "{text}");
}

/// Values that range and pattern filters write into PostgreSQL's SQL text
/// ([`crate::raw::RawCond::planned_text`], [`crate::raw::RawCond::planned_double`]) come back
/// from PostgreSQL exactly as given, however many quotes, backslashes, placeholders and comment
/// markers they hold, and numbers to the last bit: each is compared with the same value bound
/// as a parameter. Under `standard_conforming_strings = off` too.
#[test]
fn values_written_as_postgresql_literals_are_read_back_exactly() {
    let Some(store) = postgres_store() else {
        return; // a PostgreSQL matter; `postgres_test_url` fails under CI without PG
    };
    let mut conn = store.connection().unwrap();
    #[derive(diesel::QueryableByName)]
    struct Same {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        same: bool,
    }
    let values = [
        "plain",
        "o'neil",
        "''",
        "\\",
        "back\\slash\\",
        "\\'; DROP TABLE resources; --",
        "E'x'",
        "$1 $$ $tag$",
        "/* not a comment */",
        "émile \u{1F600} \t\n",
        "",
    ];
    for conforming in ["on", "off"] {
        diesel::sql_query(format!("SET standard_conforming_strings = {conforming}"))
            .execute(&mut *conn)
            .unwrap();
        for v in values {
            let sql = format!(
                "SELECT {} = $1 AS same",
                crate::raw::escape_string_literal(v)
            );
            let row = diesel::sql_query(sql)
                .bind::<diesel::sql_types::Text, _>(v)
                .get_result::<Same>(&mut *conn)
                .unwrap_or_else(|e| {
                    panic!("{v:?} (standard_conforming_strings {conforming}): {e}")
                });
            assert!(row.same, "{v:?} (standard_conforming_strings {conforming})");
        }
    }
    diesel::sql_query("SET standard_conforming_strings = on")
        .execute(&mut *conn)
        .unwrap();
    for d in [
        0.0,
        -0.0,
        0.1,
        -1.5,
        1e300,
        -2.5e-300,
        5e-324,
        123_456_789.125,
        f64::MAX,
    ] {
        let sql = format!("SELECT {} = $1 AS same", crate::raw::double_literal(d));
        let row = diesel::sql_query(sql)
            .bind::<diesel::sql_types::Double, _>(d)
            .get_result::<Same>(&mut *conn)
            .unwrap_or_else(|e| panic!("{d:e}: {e}"));
        assert!(row.same, "{d:e}");
    }
}

/// PostgreSQL answers a conjunction of an equality every user passes and one that one user
/// passes from the rare one, and keeps the statistics that tell them apart itself (with
/// autovacuum off, as on the machines measured). Before, the attribute-value table was never
/// analyzed and equalities were bound, so both terms looked alike and the common one could
/// drive the plan, probing the other once per user (230 ms at 20,000 users). Counted as index
/// scans of that table in the reading transaction, which do not depend on timing.
#[test]
fn postgresql_answers_a_conjunction_from_its_rarest_equality() {
    let Some(store) = postgres_store() else {
        return; // a PostgreSQL plan; `postgres_test_url` fails under CI without PG
    };
    let mut conn = unanalyzed_postgres_store(&store);
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    const USERS: usize = 1_200;
    create_analyzed_users(&store, &mut conn, &ctx, USERS, |i| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": format!("u{i}"),
            "addresses": [{"postalCode": "62701", "locality": "Springfield"}],
            "phoneNumbers": [{"value": format!("+1 555 {i:04}")}]
        })
    });
    for filter in [
        r#"addresses.postalCode eq "62701" and phoneNumbers.value eq "+1 555 0042""#,
        r#"phoneNumbers.value eq "+1 555 0042" and addresses.locality eq "Springfield""#,
    ] {
        let (page, scans) = list_with_stat(
            &mut conn,
            &ctx,
            filter,
            "SUM(idx_scan) FROM pg_stat_xact_user_tables WHERE relname = 'resource_values'",
        );
        let ids: Vec<&str> = page.resources.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["id00042"], "{filter}");
        assert!(
            scans < 50,
            "{filter}: {scans} index scans of the attribute-value table for one match among {USERS}"
        );
    }
}

/// A range that one user of many passes is answered from that user on PostgreSQL, alone,
/// beside a term every user passes, in an `or`, and as the anchor of an element filter next
/// to an equality every element passes. PostgreSQL's one histogram for the values of all
/// attributes took `name.givenName lt "Given0001"` for half the users, and walked the creation
/// order for the first page, probing every user (136 ms at 20,000 users); an element filter
/// took its equality as the anchor, and read every element. The store now probes such terms
/// first (`probe_terms`). Counted as rows of `resources` read and probes of the
/// attribute-value index in the reading transaction, which do not depend on timing.
#[test]
fn postgresql_answers_a_rare_range_from_its_matches() {
    let Some(store) = postgres_store() else {
        return; // a PostgreSQL plan; `postgres_test_url` fails under CI without PG
    };
    let mut conn = unanalyzed_postgres_store(&store);
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    const USERS: usize = 2_500;
    create_analyzed_users(&store, &mut conn, &ctx, USERS, |i| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": format!("u{i}"),
            "title": "Engineer",
            "name": {"givenName": format!("Given{i:04}"), "familyName": "Family"},
            "addresses": [{"locality": "Springfield", "postalCode": format!("{i:05}")}]
        })
    });
    for filter in [
        r#"name.givenName lt "Given0001""#,
        r#"title eq "Engineer" and name.givenName lt "Given0001""#,
        r#"name.givenName le "Given0000" or name.givenName gt "Given9""#,
    ] {
        // Rows of `resources` read, and probes of the attribute-value index.
        let (page, work) = list_with_stat(
            &mut conn,
            &ctx,
            filter,
            "SUM(CASE WHEN relname = 'resources' THEN seq_tup_read + idx_tup_fetch \
             ELSE idx_scan END) FROM pg_stat_xact_user_tables \
             WHERE relname IN ('resources', 'resource_values')",
        );
        let ids: Vec<&str> = page.resources.iter().map(|r| r.id.as_str()).collect();
        assert_eq!((ids, page.total), (vec!["id00000"], 1), "{filter}");
        assert!(
            work < 50,
            "{filter}: {work} rows and index probes for one match among {USERS}"
        );
    }
    // An element filter whose equality every element passes, beside a rare range: found from
    // the range, after counting at most RARE_MATCHES + 1 elements of the equality (1,029 rows
    // read); before, from the equality, its anchor by rank (5,027 rows).
    let filter = r#"addresses[locality eq "Springfield" and postalCode gt "02498"]"#;
    let (page, read) = list_with_stat(
        &mut conn,
        &ctx,
        filter,
        "SUM(idx_tup_fetch) FROM pg_stat_xact_user_tables WHERE relname = 'resource_values'",
    );
    let ids: Vec<&str> = page.resources.iter().map(|r| r.id.as_str()).collect();
    assert_eq!((ids, page.total), (vec!["id02499"], 1), "{filter}");
    assert!(
        read < 1_500,
        "{filter}: {read} index rows read for one match among {USERS}"
    );
    // A range most users pass still gives its first page and its total.
    let planned = scim_core::query::plan_filter(
        &ctx,
        Some(r#"name.givenName gt "Given0001""#),
        &Default::default(),
    )
    .unwrap();
    let page = crate::store::list_on(&mut conn, T, "User", &first_page(planned, 3), false).unwrap();
    let ids: Vec<&str> = page.resources.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        (ids, page.total),
        (vec!["id00002", "id00003", "id00004"], USERS as u64 - 2)
    );
}

/// Creates `n` users (ids `id00000`, …) from `body` and waits until the store has analyzed
/// the attribute-value table (in the background, once enough rows changed).
fn create_analyzed_users(
    store: &DieselStore,
    conn: &mut AnyConnection,
    ctx: &Ctx<'_>,
    n: usize,
    body: impl Fn(usize) -> serde_json::Value,
) {
    for i in 0..n {
        let write = prepare_create(ctx, &body(i)).unwrap();
        let id = format!("id{i:05}");
        store
            .create(T, "User", &id, NOW, write, Include::default())
            .unwrap();
    }
    wait_until_analyzed(conn, "resource_values");
}

/// The first page of 10 Users passing `filter`, and a statistic of the transaction that read
/// it (`stat`: `<aggregate> FROM pg_stat_xact_user_tables …`, 0 when `NULL`).
fn list_with_stat(
    conn: &mut AnyConnection,
    ctx: &Ctx<'_>,
    filter: &str,
    stat: &str,
) -> (Page, i64) {
    #[derive(diesel::QueryableByName)]
    struct Stat {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let limits = scim_core::query::QueryLimits::default();
    let planned = scim_core::query::plan_filter(ctx, Some(filter), &limits).unwrap();
    conn.transaction::<_, diesel::result::Error, _>(|c| {
        let page = crate::store::list_on(c, T, "User", &first_page(planned, 10), true).unwrap();
        let sql = format!("SELECT COALESCE((SELECT {stat}), 0)::int8 AS n");
        Ok((page, diesel::sql_query(sql).get_result::<Stat>(c)?.n))
    })
    .unwrap()
}

/// Migrates `store`'s fresh PostgreSQL schema, adds the tenant and turns autovacuum off for
/// the attribute-value table (as on a server where it is off), so that only the store
/// analyzes it; returns a connection of the store.
fn unanalyzed_postgres_store(
    store: &DieselStore,
) -> impl std::ops::DerefMut<Target = AnyConnection> + '_ {
    store.migrate().unwrap();
    use scim_core::store::CredentialStore;
    store.ensure_tenant(T, "test", NOW).unwrap();
    let mut conn = store.connection().unwrap();
    diesel::sql_query("ALTER TABLE resource_values SET (autovacuum_enabled = off)")
        .execute(&mut *conn)
        .unwrap();
    conn
}

#[derive(diesel::QueryableByName)]
struct Analyzed {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    analyzed: bool,
}

/// Whether PostgreSQL's catalog knows the row count of `table` (it is -1 until an
/// `ANALYZE`).
fn is_analyzed(conn: &mut AnyConnection, table: &str) -> bool {
    diesel::sql_query(
        "SELECT reltuples > 0 AS analyzed FROM pg_class \
         WHERE relname = $1 AND relnamespace = current_schema()::regnamespace",
    )
    .bind::<diesel::sql_types::Text, _>(table)
    .get_result::<Analyzed>(conn)
    .unwrap()
    .analyzed
}

/// Waits up to a minute for the store's background `ANALYZE` of `table`.
fn wait_until_analyzed(conn: &mut AnyConnection, table: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !is_analyzed(conn, table) {
        assert!(
            std::time::Instant::now() < deadline,
            "{table} was never analyzed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A PostgreSQL database whose attribute-value table never had statistics (written by a
/// version that did not analyze it, autovacuum off) gets them when a store opens its index,
/// without waiting for a tenth of the rows to change.
#[test]
fn postgresql_tables_without_statistics_are_analyzed_when_the_index_opens() {
    let Some(store) = postgres_store() else {
        return; // a PostgreSQL matter; `postgres_test_url` fails under CI without PG
    };
    let mut conn = unanalyzed_postgres_store(&store);
    let reg = registry();
    for i in 0..20 {
        store
            .create(
                T,
                "User",
                &format!("id{i}"),
                NOW,
                user(&reg, &format!("u{i}")),
                Include::default(),
            )
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !is_analyzed(&mut conn, "resource_values"),
        "20 creates are far below the store's threshold: nothing analyzed the table yet"
    );
    let fp = scim_core::index::fingerprint(&reg);
    store.open_index(&fp, true, derive_with(&reg)).unwrap();
    wait_until_analyzed(&mut conn, "resource_values");
}
