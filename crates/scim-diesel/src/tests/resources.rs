//! Creates, reads, lists and deletes: versions, uniqueness, membership as set operations, paging,
//! kept totals.

use super::*;

#[test]
fn crud_and_versions() {
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        let rec = s
            .create(
                T,
                "User",
                "u1",
                NOW,
                user(&reg, "Alice"),
                Include::default(),
            )
            .unwrap();
        assert_eq!(rec.version, 1, "{}", db.name);
        let got = s
            .get(
                T,
                "User",
                "u1",
                Include {
                    members: false,
                    groups: true,
                    member_limit: None,
                },
            )
            .unwrap();
        assert_eq!(got.data["userName"], json!("Alice"));
        assert_eq!(got.groups, Some(vec![]));
        // Other tenant and other type see nothing.
        assert!(matches!(
            s.get("other", "User", "u1", Include::default()),
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            s.get(T, "Group", "u1", Include::default()),
            Err(StoreError::NotFound)
        ));
        let updated = s
            .update(
                T,
                "User",
                "u1",
                "2026-01-02T00:00:00.000000Z",
                Some(1),
                Include::default(),
                &mut |cur| {
                    let mut w = user(&reg, "alice2");
                    w.data.insert("title".into(), json!("Boss"));
                    assert_eq!(cur.version, 1);
                    Ok(w)
                },
            )
            .unwrap();
        assert_eq!(
            (updated.version, updated.last_modified.as_str()),
            (2, "2026-01-02T00:00:00.000000Z")
        );
        // Stale If-Match.
        let stale = s.update(
            T,
            "User",
            "u1",
            NOW,
            Some(1),
            Include::default(),
            &mut |_| panic!("must not be called"),
        );
        assert!(
            matches!(stale, Err(StoreError::VersionMismatch)),
            "{}",
            db.name
        );
        assert!(matches!(
            s.delete(T, "User", "u1", Some(1), NOW),
            Err(StoreError::VersionMismatch)
        ));
        s.delete(T, "User", "u1", Some(2), NOW).unwrap();
        let left: i64 = {
            use crate::schema::resource_values::dsl as v;
            let mut conn = s.connection().unwrap();
            v::resource_values
                .filter(v::resource_id.eq("u1"))
                .count()
                .get_result(&mut *conn)
                .unwrap()
        };
        assert_eq!(left, 0, "{}: a deleted user's index rows are gone", db.name);
        assert!(matches!(
            s.delete(T, "User", "u1", None, NOW),
            Err(StoreError::NotFound)
        ));
    }
}

/// Creates the user "Alice" with id `u1`.
fn create_alice(s: &DieselStore, reg: &SchemaRegistry) {
    s.create(T, "User", "u1", NOW, user(reg, "Alice"), Include::default())
        .unwrap();
}

#[test]
fn a_key_holding_nul_names_nothing_on_either_database() {
    // PostgreSQL refuses U+0000 in text; such an id must be "not found", not a failure.
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        create_alice(s, &reg);
        let bad = "u1\0";
        assert!(
            matches!(
                s.get(T, "User", bad, Include::default()),
                Err(StoreError::NotFound)
            ),
            "{}",
            db.name
        );
        let updated = s.update(T, "User", bad, NOW, None, Include::default(), &mut |_| {
            panic!("must not be called")
        });
        assert!(matches!(updated, Err(StoreError::NotFound)), "{}", db.name);
        assert!(matches!(
            s.delete(T, "User", bad, None, NOW),
            Err(StoreError::NotFound)
        ));
        let read = s
            .point_read_by_token("hash", "User", PointKey::Id(bad), Include::default())
            .unwrap();
        assert!(matches!(read, TokenRead::Unsupported), "{}", db.name);
        assert_eq!(
            s.get(T, "User", "u1", Include::default()).unwrap().version,
            1,
            "{}",
            db.name
        );
    }
}

#[test]
fn pages_near_the_end_are_the_same_when_read_from_the_end() {
    // Pages past the middle are read in reverse from the last row; every page must hold
    // exactly what reading from the start gives, in every order (missing values last, ties
    // in creation order).
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        let ctx = Ctx::new(&reg, "User").unwrap();
        for i in 0..23 {
            let mut body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": format!("p{:02}", (i * 7) % 23)});
            if i % 3 != 0 {
                body["title"] = json!(format!("t{}", i % 4)); // ties, and some missing
            }
            if i % 4 != 1 {
                body["displayName"] = json!(format!("D{}", i % 5)); // a column that may be missing
            }
            s.create(
                T,
                "User",
                &format!("p{i:02}"),
                &format!("2026-01-01T00:00:{i:02}.000000Z"),
                prepare_create(&ctx, &body).unwrap(),
                Include::default(),
            )
            .unwrap();
        }
        let sorts = [
            None,
            Some((SortTarget::Column(Column::UserName), false)),
            Some((SortTarget::Column(Column::UserName), true)),
            Some((
                SortTarget::Value {
                    path: "title".into(),
                    kind: ValueKind::Str,
                    primary: None,
                },
                false,
            )),
            Some((
                SortTarget::Value {
                    path: "title".into(),
                    kind: ValueKind::Str,
                    primary: None,
                },
                true,
            )),
            Some((SortTarget::Column(Column::DisplayName), false)),
            Some((SortTarget::Column(Column::DisplayName), true)),
        ];
        for sort in sorts {
            let sort = sort.map(|(target, descending)| SortKey { target, descending });
            for filter in [
                StoreFilter::All,
                StoreFilter::Not(Box::new(StoreFilter::Eq(
                    IndexedField::UserName,
                    "p05".into(),
                ))),
            ] {
                let page = |start: u64, count: u64| -> (u64, Vec<String>) {
                    let p = s
                        .list(
                            T,
                            "User",
                            &ListQuery {
                                filter: filter.clone(),
                                start_index: start,
                                count,
                                include: Include::default(),
                                sort: sort.clone(),
                                after: None,
                            },
                        )
                        .unwrap();
                    (p.total, p.resources.into_iter().map(|r| r.id).collect())
                };
                let (total, all) = page(1, 100);
                assert_eq!(total as usize, all.len(), "{}", db.name);
                for count in [1, 4, 7] {
                    for start in 1..=total + 1 {
                        let (t, got) = page(start, count);
                        let from = (start - 1) as usize;
                        let want: Vec<String> = all
                            .iter()
                            .skip(from)
                            .take(count as usize)
                            .cloned()
                            .collect();
                        assert_eq!(
                            (t, &got),
                            (total, &want),
                            "{}: sort {sort:?}, startIndex {start}, count {count}",
                            db.name
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn inline_reads_use_their_own_store_and_never_wait_for_a_connection() {
    let reg = registry();
    for db in databases() {
        if db.name == "postgres" {
            // Every PostgreSQL read is a round trip: never offered on the caller's thread.
            assert!(db.store.reserve_inline().is_none());
            continue;
        }
        // Two stores on two files, used from one thread.
        let other = sqlite();
        other.store.migrate().unwrap();
        let (a, b) = (&db.store, &other.store);
        a.create(
            T,
            "User",
            "ua",
            NOW,
            user(&reg, "only-in-a"),
            Include::default(),
        )
        .unwrap();
        let reserved = a.reserve_inline().expect("a connection is idle");
        assert!(
            a.reserve_inline().is_none(),
            "reservations do not nest on one thread"
        );
        assert_eq!(a.get(T, "User", "ua", Include::default()).unwrap().id, "ua");
        // The connection reserved for `a` is never used for `b`.
        assert!(matches!(
            b.get(T, "User", "ua", Include::default()),
            Err(StoreError::NotFound)
        ));
        // Writes still go through the writer while a read connection is reserved.
        a.create(
            T,
            "User",
            "ub",
            NOW,
            user(&reg, "second"),
            Include::default(),
        )
        .unwrap();
        assert_eq!(a.get(T, "User", "ub", Include::default()).unwrap().id, "ub");
        drop(reserved);
        assert!(a.reserve_inline().is_some(), "the connection went back");

        // With every pooled connection out, there is nothing to reserve and no waiting for one.
        let small = {
            let dir = tempfile::tempdir().unwrap();
            let mut config = StoreConfig::new(dir.path().join("s.db").to_string_lossy());
            config.pool_size = 2;
            config.connection_timeout = std::time::Duration::from_secs(30);
            (DieselStore::open(&config).unwrap(), dir)
        };
        let held: Vec<_> = (0..2).map(|_| small.0.connection().unwrap()).collect();
        let started = std::time::Instant::now();
        assert!(small.0.reserve_inline().is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        drop(held);
        assert!(small.0.reserve_inline().is_some());
    }
}

#[test]
fn user_name_is_unique_case_insensitively_per_tenant() {
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        s.create(
            T,
            "User",
            "u1",
            NOW,
            user(&reg, "Bob@Example.com"),
            Include::default(),
        )
        .unwrap();
        let dup = s.create(
            T,
            "User",
            "u2",
            NOW,
            user(&reg, "bob@example.COM"),
            Include::default(),
        );
        assert!(
            matches!(dup, Err(StoreError::Conflict(_))),
            "{}: {dup:?}",
            db.name
        );
        // Non-ASCII folding happens in Rust, identically on both databases.
        s.create(T, "User", "u3", NOW, user(&reg, "ÅSA"), Include::default())
            .unwrap();
        assert!(matches!(
            s.create(T, "User", "u4", NOW, user(&reg, "åsa"), Include::default()),
            Err(StoreError::Conflict(_))
        ));
        // Rename into a taken name is a conflict too, and changes nothing.
        let r = s.update(T, "User", "u3", NOW, None, Include::default(), &mut |_| {
            Ok(user(&reg, "BOB@example.com"))
        });
        assert!(matches!(r, Err(StoreError::Conflict(_))), "{}", db.name);
        assert_eq!(
            s.get(T, "User", "u3", Include::default()).unwrap().data["userName"],
            json!("ÅSA")
        );
        // Whether creating `name` (as a new resource `id`) is refused as taken.
        let taken = |id: &str, name: &str| {
            matches!(
                s.create(T, "User", id, NOW, user(&reg, name), Include::default()),
                Err(StoreError::Conflict(_))
            )
        };
        let patch = |id: &str, attr: &str, value: &str| {
            let cur = s.get(T, "User", id, Include::default()).unwrap();
            s.update(T, "User", id, NOW, None, Include::default(), &mut |_| {
                Ok(patched(&reg, &cur, attr, value))
            })
            .unwrap();
        };
        // An update that leaves the keys alone (written without the key columns) keeps them.
        patch("u1", "title", "Boss");
        assert!(
            taken("u5", "BOB@example.com"),
            "{}: a title change must keep userName taken",
            db.name
        );
        // A rename moves the key: the old name is free, the new one taken.
        patch("u3", "userName", "Carol");
        s.create(T, "User", "u6", NOW, user(&reg, "åsa"), Include::default())
            .unwrap();
        assert!(
            taken("u7", "CAROL"),
            "{}: a renamed user must hold its new name",
            db.name
        );
    }
}

#[test]
fn membership_is_set_operations_and_atomic() {
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        for u in ["a", "b", "c"] {
            s.create(T, "User", u, NOW, user(&reg, u), Include::default())
                .unwrap();
        }
        let g = s
            .create(
                T,
                "Group",
                "g",
                NOW,
                group(&reg, "G", &["a", "b"]),
                Include {
                    members: true,
                    groups: false,
                    member_limit: None,
                },
            )
            .unwrap();
        assert_eq!(g.members.unwrap().len(), 2);
        set_members(
            s,
            "g",
            vec![MemberOp::Add(vec!["b".into(), "c".into(), "c".into()])],
        )
        .unwrap();
        assert_eq!(member_ids(s, "g"), ["a", "b", "c"]);
        set_members(
            s,
            "g",
            vec![MemberOp::Remove(vec!["a".into(), "zzz".into()])],
        )
        .unwrap();
        assert_eq!(member_ids(s, "g"), ["b", "c"]);
        // Unknown id: error naming it, and nothing changes (not even the earlier op).
        let err = set_members(
            s,
            "g",
            vec![
                MemberOp::RemoveAll,
                MemberOp::Add(vec!["a".into(), "ghost".into()]),
            ],
        )
        .unwrap_err();
        let msg = scim_core::ScimError::from(err).detail;
        assert!(msg.contains("\"ghost\"") && !msg.contains("\"a\""), "{msg}");
        assert_eq!(member_ids(s, "g"), ["b", "c"], "{}", db.name);
        // The tolerant policy adds the known ids and skips the unknown one.
        s.update(T, "Group", "g", NOW, None, Include::default(), &mut |cur| {
            let ctx = Ctx::new(&reg, "Group").unwrap();
            Ok(ResourceWrite {
                data: (*cur.data).clone(),
                external_id: None,
                keys: scim_core::resource::index_keys(&ctx, &cur.data),
                member_ops: vec![MemberOp::Add(vec!["a".into(), "ghost".into()])],
                unknown_members: UnknownMembers::Ignore,
                password: Default::default(),
                values: Vec::new(),
                previous_values: None,
            })
        })
        .unwrap();
        assert_eq!(member_ids(s, "g"), ["a", "b", "c"], "{}", db.name);
        set_members(s, "g", vec![MemberOp::Remove(vec!["a".into()])]).unwrap();
        // Version bumps on every membership change (and not on the failed one).
        assert_eq!(
            s.get(T, "Group", "g", Include::default()).unwrap().version,
            5
        );
        // Groups attribute of a user, and cascade on delete.
        let b = s
            .get(
                T,
                "User",
                "b",
                Include {
                    members: false,
                    groups: true,
                    member_limit: None,
                },
            )
            .unwrap();
        assert_eq!(b.groups.unwrap()[0].display.as_deref(), Some("G"));
        s.delete(T, "User", "b", None, NOW).unwrap();
        assert_eq!(member_ids(s, "g"), ["c"]);
        // Filter by member.
        let page = s
            .list(
                T,
                "Group",
                &first_page(
                    StoreFilter::Linked {
                        side: LinkSide::Members,
                        linked_type: None,
                        filter: Box::new(StoreFilter::Column(
                            Column::Id,
                            CompareOp::Eq,
                            "c".into(),
                        )),
                    },
                    10,
                ),
            )
            .unwrap();
        assert_eq!(page.total, 1);
        set_members(s, "g", vec![MemberOp::RemoveAll]).unwrap();
        assert!(member_ids(s, "g").is_empty());
    }
}

#[test]
fn listing_pages_filters_and_counts() {
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        for i in 0..25 {
            let now = format!("2026-01-01T00:00:{i:02}.000000Z");
            s.create(
                T,
                "User",
                &format!("u{i:02}"),
                &now,
                user(&reg, &format!("user{i:02}")),
                Include::default(),
            )
            .unwrap();
        }
        let q = |filter: StoreFilter, start: u64, count: u64| {
            s.list(
                T,
                "User",
                &ListQuery {
                    filter,
                    start_index: start,
                    count,
                    include: Include::default(),
                    sort: None,
                    after: None,
                },
            )
            .unwrap()
        };
        let p = q(StoreFilter::All, 1, 10);
        assert_eq!((p.total, p.resources.len()), (25, 10));
        assert_eq!(p.resources[0].id, "u00");
        let p = q(StoreFilter::All, 21, 10);
        assert_eq!(
            p.resources
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["u20", "u21", "u22", "u23", "u24"]
        );
        assert_eq!(q(StoreFilter::All, 30, 10).resources.len(), 0);
        assert_eq!(q(StoreFilter::All, 1, 0).total, 25);
        let p = q(
            StoreFilter::Eq(IndexedField::UserName, "user07".into()),
            1,
            10,
        );
        assert_eq!((p.total, p.resources[0].id.as_str()), (1, "u07"));
        let p = q(
            StoreFilter::Or(vec![
                StoreFilter::Eq(IndexedField::ExternalId, "ext-user01".into()),
                StoreFilter::Eq(IndexedField::Id, "u02".into()),
            ]),
            1,
            10,
        );
        assert_eq!(p.total, 2);
        let p = q(
            StoreFilter::And(vec![
                StoreFilter::All,
                StoreFilter::Not(Box::new(StoreFilter::Eq(IndexedField::Id, "u02".into()))),
            ]),
            1,
            100,
        );
        assert_eq!(p.total, 24);
        // A value with SQL metacharacters is data, not SQL.
        assert_eq!(
            q(
                StoreFilter::Eq(IndexedField::UserName, "x' OR '1'='1".into()),
                1,
                10
            )
            .total,
            0
        );
    }
}

#[test]
fn unfiltered_totals_follow_every_write() {
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        let total = |rt: &str| {
            s.list(T, rt, &first_page(StoreFilter::All, 0))
                .unwrap()
                .total
        };
        // What the rows say, counted the slow way.
        let counted = |rt: &str| {
            let rows = StoreFilter::Not(Box::new(StoreFilter::Nothing));
            s.list(T, rt, &first_page(rows, 0)).unwrap().total
        };
        for i in 0..6 {
            s.create(
                T,
                "User",
                &format!("c{i}"),
                NOW,
                user(&reg, &format!("c{i}")),
                Include::default(),
            )
            .unwrap();
        }
        s.create(
            T,
            "Group",
            "cg",
            NOW,
            group(&reg, "cg", &["c1"]),
            Include::default(),
        )
        .unwrap();
        // A create that fails (duplicate userName) and a delete that fails count nothing.
        assert!(s
            .create(T, "User", "dup", NOW, user(&reg, "C1"), Include::default())
            .is_err());
        assert!(s.delete(T, "User", "nope", None, NOW).is_err());
        s.delete(T, "User", "c2", None, NOW).unwrap();
        s.delete(T, "User", "c3", Some(1), NOW).unwrap();
        assert_eq!((total("User"), total("Group")), (4, 1), "{}", db.name);
        assert_eq!((counted("User"), counted("Group")), (4, 1), "{}", db.name);
        assert_eq!(
            s.list(
                "other-tenant",
                "User",
                &ListQuery {
                    filter: StoreFilter::All,
                    start_index: 1,
                    count: 0,
                    include: Include::default(),
                    sort: None,
                    after: None,
                }
            )
            .unwrap()
            .total,
            0
        );
        // The migration that adds the counts fills them from the rows already there, and the
        // ones after it (which rebuild the attribute-value index on SQLite, change the
        // collation of every text column on PostgreSQL, add `store_state`, and count once per
        // statement on PostgreSQL) keep every row and the counts.
        {
            let mut conn = s.connection().unwrap();
            let c: &mut AnyConnection = &mut conn;
            let index_rows = |c: &mut AnyConnection| -> i64 {
                use crate::schema::resource_values::dsl as v;
                v::resource_values.count().get_result(c).unwrap()
            };
            let before = index_rows(c);
            assert!(before > 0, "{}", db.name);
            for _ in 0..5 {
                crate::conn::revert_last_migration(c).unwrap();
            }
            assert_eq!(run_migrations(c).unwrap(), 5, "{}", db.name);
            assert_eq!(index_rows(c), before, "{}", db.name);
        }
        assert_eq!((total("User"), total("Group")), (4, 1), "{}", db.name);
    }
}

#[test]
fn a_corrupt_stored_document_is_a_backend_error_not_an_empty_resource() {
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        create_alice(s, &reg);
        for broken in ["{\"userName\": ", "[\"not an object\"]"] {
            diesel::sql_query("UPDATE resources SET data = $1 WHERE id = 'u1'")
                .bind::<diesel::sql_types::Text, _>(broken)
                .execute(&mut *s.connection().unwrap())
                .unwrap();
            for read in [
                s.get(T, "User", "u1", Include::default()),
                s.list(
                    T,
                    "User",
                    &ListQuery {
                        filter: scim_core::store::StoreFilter::All,
                        start_index: 1,
                        count: 10,
                        include: Include::default(),
                        sort: None,
                        after: None,
                    },
                )
                .map(|p| p.resources.into_iter().next().unwrap()),
            ] {
                match read {
                    Err(StoreError::Backend(m)) => {
                        assert!(m.contains("corrupt document of u1"), "{}: {m}", db.name)
                    }
                    other => panic!("{}: expected a backend error, got {other:?}", db.name),
                }
            }
        }
    }
}

/// What a paged read handed over, as (kind, ids) lines.
fn paged_parts(
    s: &DieselStore,
    what: scim_core::store::PagedRead<'_>,
    page_size: usize,
    mut answer: impl FnMut(&scim_core::store::ReadPart<'_>) -> scim_core::store::Visit,
) -> Result<Vec<(String, Vec<String>)>, StoreError> {
    use scim_core::store::ReadPart;
    let mut parts = Vec::new();
    let include = Include {
        members: true,
        groups: false,
        member_limit: Some(1),
    };
    s.read_paged(T, "Group", what, include, page_size, &mut |part| {
        let line = match &part {
            ReadPart::Page(p) => (
                format!("page {}", p.total),
                p.resources
                    .iter()
                    .map(|r| {
                        assert!(r.members.is_none(), "a page comes without members");
                        format!("{}@{}", r.id, r.version)
                    })
                    .collect(),
            ),
            ReadPart::Resource(of, rec) => (format!("resource {of}"), vec![rec.id.clone()]),
            ReadPart::Members(m) => ("members".into(), m.iter().map(|m| m.id.clone()).collect()),
        };
        parts.push(line);
        answer(&part)
    })?;
    Ok(parts)
}

#[test]
fn members_are_read_page_by_page_from_one_snapshot() {
    use scim_core::store::{PagedRead, ReadPart, Visit};
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        let ids: Vec<String> = (0..25).map(|i| format!("u{i:03}")).collect();
        for id in ids.iter().chain(["late".to_string()].iter()) {
            s.create(T, "User", id, NOW, user(&reg, id), Include::default())
                .unwrap();
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        s.create(
            T,
            "Group",
            "g",
            NOW,
            group(&reg, "G", &refs),
            Include::default(),
        )
        .unwrap();
        s.create(
            T,
            "Group",
            "h",
            NOW,
            group(&reg, "H", &[]),
            Include::default(),
        )
        .unwrap();
        s.create(
            T,
            "Group",
            "k",
            NOW,
            group(&reg, "K", &refs[..3]),
            Include::default(),
        )
        .unwrap();

        // Pages of 10 in id order; the whole group, every member once, ignoring member_limit.
        // A membership change made while the read runs is not seen by it: the members shown
        // are those of the version shown.
        let mut changed = false;
        let parts = paged_parts(s, PagedRead::One("g"), 10, |part| {
            if matches!(part, ReadPart::Members(_)) && !changed {
                changed = true;
                set_members(
                    s,
                    "g",
                    vec![
                        MemberOp::Remove(vec!["u020".into()]),
                        MemberOp::Add(vec!["late".into()]),
                    ],
                )
                .unwrap();
            }
            Visit::Continue
        })
        .unwrap();
        let line = |kind: &str, ids: &[String]| (kind.to_string(), ids.to_vec());
        assert_eq!(
            parts,
            vec![
                line("page 1", &["g@1".into()]),
                line("resource 0", &["g".into()]),
                line("members", &ids[..10]),
                line("members", &ids[10..20]),
                line("members", &ids[20..]),
            ],
            "{}",
            db.name
        );
        // The next read sees the change, with its version.
        let parts = paged_parts(s, PagedRead::One("g"), 100, |_| Visit::Continue).unwrap();
        assert_eq!(parts[0], line("page 1", &["g@2".into()]), "{}", db.name);
        let mut now: Vec<String> = ids.iter().filter(|i| *i != "u020").cloned().collect();
        now.push("late".into());
        now.sort();
        assert_eq!(parts[2], line("members", &now), "{}", db.name);

        // A list: each group of the page, members after it; a group without members has
        // none; Skip passes over one group's members, Stop ends the read.
        let query = ListQuery {
            filter: StoreFilter::All,
            start_index: 1,
            count: 10,
            include: Include::default(),
            sort: None,
            after: None,
        };
        let parts = paged_parts(s, PagedRead::List(&query), 2, |part| match part {
            ReadPart::Resource(_, rec) if rec.id == "g" => Visit::Skip,
            _ => Visit::Continue,
        })
        .unwrap();
        assert_eq!(
            parts,
            vec![
                line("page 3", &["g@2".into(), "h@1".into(), "k@1".into()]),
                line("resource 0", &["g".into()]),
                line("resource 1", &["h".into()]),
                line("resource 2", &["k".into()]),
                line("members", &ids[..2]),
                line("members", &ids[2..3]),
            ],
            "{}",
            db.name
        );
        let parts = paged_parts(s, PagedRead::List(&query), 2, |part| match part {
            ReadPart::Members(_) => Visit::Stop,
            _ => Visit::Continue,
        })
        .unwrap();
        assert_eq!(parts.len(), 3, "{}: {parts:?}", db.name);
        // Nothing is handed over for a resource that is not there.
        let mut visited = false;
        let err = s
            .read_paged(
                T,
                "Group",
                PagedRead::One("nope"),
                Include::default(),
                10,
                &mut |_| {
                    visited = true;
                    Visit::Continue
                },
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{}: {err:?}", db.name);
        assert!(!visited);
    }
}

/// PATCHes racing the deletes of the resources they write (as an identity provider's retry
/// can race its own deprovisioning) either land before the delete or find nothing: no
/// resource comes back, no index row outlives its resource, and the kept count ends at zero.
/// On PostgreSQL half of the writers check their token in the update's read.
#[test]
fn updates_racing_deletes_leave_no_resource_and_no_index_rows() {
    use scim_core::store::TokenUpdate;
    let reg = Arc::new(registry());
    for db in databases() {
        let s = Arc::new(db.store.clone());
        three_tokens(&s);
        let ids: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
        for id in &ids {
            s.create(T, "User", id, NOW, user(&reg, id), Include::default())
                .unwrap();
        }
        std::thread::scope(|scope| {
            for w in 0..4 {
                let (s, reg, ids) = (&s, &reg, &ids);
                scope.spawn(move || {
                    for round in 0..5 {
                        for id in ids {
                            let f = &mut |cur: &ResourceRecord| {
                                let mut w = user(reg, cur.data["userName"].as_str().unwrap());
                                w.data.insert("title".into(), json!(format!("t{round}")));
                                Ok(w)
                            };
                            let took = match w % 2 {
                                0 => s.update(T, "User", id, NOW, None, Include::default(), f),
                                _ => match s.update_by_token(
                                    "hash-1",
                                    "User",
                                    id,
                                    NOW,
                                    None,
                                    Include::default(),
                                    f,
                                ) {
                                    Ok(TokenUpdate::Updated(rec)) => Ok(*rec),
                                    Ok(TokenUpdate::Unsupported) => {
                                        s.update(T, "User", id, NOW, None, Include::default(), f)
                                    }
                                    Ok(TokenUpdate::NoToken) => panic!("hash-1 is live"),
                                    Err(e) => Err(e),
                                },
                            };
                            assert!(
                                matches!(took, Ok(_) | Err(StoreError::NotFound)),
                                "{id}: {took:?}"
                            );
                        }
                    }
                });
            }
            let (s, ids) = (&s, &ids);
            scope.spawn(move || {
                for id in ids {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    s.delete(T, "User", id, None, NOW).unwrap();
                }
            });
        });
        for id in &ids {
            assert!(matches!(
                s.get(T, "User", id, Include::default()),
                Err(StoreError::NotFound)
            ));
        }
        let left: i64 = {
            use crate::schema::resource_values::dsl as v;
            let mut conn = s.connection().unwrap();
            v::resource_values
                .filter(v::resource_id.eq_any(&ids))
                .count()
                .get_result(&mut *conn)
                .unwrap()
        };
        assert_eq!(left, 0, "{}: index rows outlived their resources", db.name);
        let page = s
            .list(T, "User", &first_page(StoreFilter::All, 100))
            .unwrap();
        assert_eq!((page.resources.len(), page.total), (0, 0), "{}", db.name);
    }
}

/// The kept counts follow concurrent creates of users and groups in two tenants (on
/// PostgreSQL several of them are written by one statement, whose trigger counts each
/// tenant's types once) and concurrent deletes, and a statement that deletes resources of
/// several types at once: every unfiltered total equals the resources counted one by one.
#[test]
fn kept_counts_follow_concurrent_creates_and_deletes_of_several_types() {
    use scim_core::store::CredentialStore;
    let reg = Arc::new(registry());
    for db in databases() {
        let s = Arc::new(db.store.clone());
        s.ensure_tenant("tenant-2", "other", NOW).unwrap();
        let totals = |tenant: &str, rt: &str| {
            let total = |filter| s.list(tenant, rt, &first_page(filter, 0)).unwrap().total;
            // `not (nothing)` is counted from the rows, not from the kept count.
            let rows = StoreFilter::Not(Box::new(StoreFilter::Nothing));
            (total(StoreFilter::All), total(rows))
        };
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (s, reg) = (s.clone(), reg.clone());
                std::thread::spawn(move || {
                    for n in 0..15 {
                        let tenant = [T, "tenant-2"][(i + n) % 2];
                        let id = format!("k-{i}-{n}");
                        let made = match n % 3 {
                            2 => s.create(
                                tenant,
                                "Group",
                                &id,
                                NOW,
                                group(&reg, &id, &[]),
                                Include::default(),
                            ),
                            _ => s.create(
                                tenant,
                                "User",
                                &id,
                                NOW,
                                user(&reg, &id),
                                Include::default(),
                            ),
                        };
                        made.unwrap();
                        if n % 4 == 1 {
                            let rt = if n % 3 == 2 { "Group" } else { "User" };
                            s.delete(tenant, rt, &id, None, NOW).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for tenant in [T, "tenant-2"] {
            for rt in ["User", "Group"] {
                let (kept, rows) = totals(tenant, rt);
                assert!(rows > 0, "{} {tenant} {rt}", db.name);
                assert_eq!(kept, rows, "{} {tenant} {rt}: the kept count", db.name);
            }
        }
        // One statement deleting users and groups of both tenants.
        {
            let mut conn = s.connection().unwrap();
            let c: &mut AnyConnection = &mut conn;
            diesel::sql_query("DELETE FROM resources WHERE id LIKE 'k-0-%' OR id LIKE 'k-1-%'")
                .execute(c)
                .unwrap();
        }
        for tenant in [T, "tenant-2"] {
            for rt in ["User", "Group"] {
                let (kept, rows) = totals(tenant, rt);
                assert_eq!(
                    kept, rows,
                    "{} {tenant} {rt}: after one delete of many",
                    db.name
                );
            }
        }
        // Each thread kept 11 of its 15; threads 0 and 1 were deleted by the one statement.
        let all: u64 = [T, "tenant-2"]
            .iter()
            .flat_map(|t| ["User", "Group"].map(|rt| totals(t, rt).0))
            .sum();
        assert_eq!(all, 6 * 11, "{}", db.name);
    }
}

/// A delete changes the member lists of the groups that listed it, so their versions (the
/// `ETag`) and `meta.lastModified` move on with it; groups that did not list it stay as they
/// were. Nested: deleting a group moves on the groups it was a member of.
#[test]
fn deleting_a_member_moves_its_groups_versions_on() {
    const LATER: &str = "2026-01-02T00:00:00.000000Z";
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        for u in ["u1", "u2"] {
            s.create(T, "User", u, NOW, user(&reg, u), Include::default())
                .unwrap();
        }
        for (g, members) in [("g1", &["u1", "u2"][..]), ("g2", &["u2"]), ("parent", &[])] {
            s.create(
                T,
                "Group",
                g,
                NOW,
                group(&reg, g, members),
                Include::default(),
            )
            .unwrap();
        }
        set_members(s, "parent", vec![MemberOp::Add(vec!["g1".into()])]).unwrap();
        let state = |id: &str| {
            let rec = s.get(T, "Group", id, Include::default()).unwrap();
            (rec.version, rec.last_modified)
        };
        assert_eq!(state("parent").0, 2, "{}", db.name);

        s.delete(T, "User", "u1", None, LATER).unwrap();
        assert_eq!(
            state("g1"),
            (2, LATER.to_string()),
            "{}: g1 lost u1",
            db.name
        );
        assert_eq!(
            state("g2"),
            (1, NOW.to_string()),
            "{}: g2 did not list u1",
            db.name
        );
        assert_eq!(member_ids(s, "g1"), ["u2"], "{}", db.name);

        s.delete(T, "Group", "g1", None, LATER).unwrap();
        assert_eq!(state("parent").0, 3, "{}: parent lost g1", db.name);
        assert_eq!(member_ids(s, "parent"), Vec::<String>::new(), "{}", db.name);

        s.delete(T, "User", "u2", Some(1), LATER).unwrap();
        assert_eq!(state("g2"), (2, LATER.to_string()), "{}", db.name);
    }
}

/// A cursor walk (keyset on creation order) while other writers create and delete users: no
/// resource is seen twice, and every user that existed for the whole walk is seen (a walk by
/// `startIndex` loses users when earlier ones are deleted under it). Each page is read on its
/// own, as a client reads them, with writes landing between and during the reads.
#[test]
fn cursor_walks_neither_skip_nor_repeat_while_others_create_and_delete() {
    use scim_core::store::CursorKey;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        // Stable users (never deleted) interleaved with doomed ones (deleted during the walk).
        let ids: Vec<String> = (0..240).map(|i| format!("w{i:03}")).collect();
        for id in &ids {
            s.create(T, "User", id, NOW, user(&reg, id), Include::default())
                .unwrap();
        }
        let stable: BTreeSet<&str> = ids.iter().step_by(2).map(String::as_str).collect();
        let walking = AtomicBool::new(true);
        let seen = std::thread::scope(|scope| {
            let (reg, ids, walking) = (&reg, &ids, &walking);
            scope.spawn(move || {
                let mut rng = Rng(0x5eed_c0de_0000_0001);
                let mut n = 0;
                while walking.load(Ordering::Relaxed) && n < 2_000 {
                    n += 1;
                    if rng.chance(50) {
                        // One of the doomed: odd positions.
                        let k = 1 + 2 * (rng.next() % (ids.len() as u64 / 2)) as usize;
                        let _ = s.delete(T, "User", &ids[k], None, NOW);
                    } else {
                        let id = format!("z{n:04}");
                        let later = "2026-01-01T00:00:01.000000Z";
                        s.create(T, "User", &id, later, user(reg, &id), Include::default())
                            .unwrap();
                    }
                }
            });
            let mut seen: Vec<String> = Vec::new();
            let mut after = None;
            loop {
                let query = ListQuery {
                    after: after.take(),
                    ..first_page(StoreFilter::All, 7)
                };
                let page = s.list(T, "User", &query).unwrap();
                let Some(last) = page.resources.last() else {
                    break;
                };
                after = Some(CursorKey {
                    created: last.created.clone(),
                    id: last.id.clone(),
                    backward: false,
                    key: None,
                });
                seen.extend(page.resources.iter().map(|r| r.id.clone()));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            walking.store(false, Ordering::Relaxed);
            seen
        });
        let distinct: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
        assert_eq!(
            distinct.len(),
            seen.len(),
            "{}: a resource seen twice",
            db.name
        );
        let missed: Vec<_> = stable.difference(&distinct).collect();
        assert!(
            missed.is_empty(),
            "{}: the walk skipped {missed:?}",
            db.name
        );
    }
}
