//! The store suite: every test body runs on SQLite (a temporary file) and, when
//! `SCIM_TEST_POSTGRES_URL` is set, on PostgreSQL in a fresh schema of its own.
//! Under `CI`, a missing PostgreSQL URL is a failure, not a skip.

use std::sync::Arc;

use diesel::prelude::*;
use scim_core::resource::prepare_create;
use scim_core::store::{
    Column, CompareOp, Include, IndexedField, LinkSide, ListQuery, MemberOp, Page, PointKey,
    ResourceRecord, ResourceStore, ResourceWrite, SortKey, SortTarget, StoreFilter, TokenRead,
    UnknownMembers, ValueKind,
};
use scim_core::{Ctx, SchemaRegistry, StoreError};
use serde_json::json;

use crate::conn::{revert_all_migrations, run_migrations};
use crate::{AnyConnection, DieselStore, StoreConfig};

const T: &str = "tenant-1";
const NOW: &str = "2026-01-01T00:00:00.000000Z";

struct TestDb {
    store: DieselStore,
    /// for opening a second store on the same database
    url: String,
    _dir: Option<tempfile::TempDir>,
    name: &'static str,
}

fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("test.db").to_string_lossy().into_owned();
    let store = DieselStore::open(&StoreConfig::new(url.clone())).unwrap();
    TestDb {
        store,
        url,
        _dir: Some(dir),
        name: "sqlite",
    }
}

fn databases() -> Vec<TestDb> {
    let mut dbs = vec![sqlite()];
    if let Some(base) = crate::testing::postgres_test_url() {
        let url = crate::testing::fresh_postgres_schema(&base).unwrap();
        let store = DieselStore::open(&StoreConfig::new(url.clone())).unwrap();
        dbs.push(TestDb {
            store,
            url,
            _dir: None,
            name: "postgres",
        });
    }
    for db in &dbs {
        db.store.migrate().unwrap();
        use scim_core::store::CredentialStore;
        db.store.ensure_tenant(T, "test", NOW).unwrap();
    }
    dbs
}

/// A store on a fresh PostgreSQL schema; `None` when the tests have no PostgreSQL (which
/// `postgres_test_url` refuses under CI).
fn postgres_store() -> Option<DieselStore> {
    let base = crate::testing::postgres_test_url()?;
    let url = crate::testing::fresh_postgres_schema(&base).unwrap();
    Some(DieselStore::open(&StoreConfig::new(url)).unwrap())
}

fn registry() -> SchemaRegistry {
    SchemaRegistry::builtin().unwrap()
}

fn user(reg: &SchemaRegistry, name: &str) -> ResourceWrite {
    let ctx = Ctx::new(reg, "User").unwrap();
    prepare_create(&ctx, &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "externalId": format!("ext-{name}"), "title": "Engineer"})).unwrap()
}

fn group(reg: &SchemaRegistry, name: &str, members: &[&str]) -> ResourceWrite {
    let ctx = Ctx::new(reg, "Group").unwrap();
    let members: Vec<_> = members.iter().map(|m| json!({"value": m})).collect();
    prepare_create(&ctx, &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name, "members": members})).unwrap()
}

/// The first page of `count` resources that pass `filter`, in creation order.
fn first_page(filter: StoreFilter, count: u64) -> ListQuery {
    ListQuery {
        filter,
        start_index: 1,
        count,
        include: Include::default(),
        sort: None,
        after: None,
    }
}

fn member_ids(store: &DieselStore, id: &str) -> Vec<String> {
    let g = store
        .get(
            T,
            "Group",
            id,
            Include {
                members: true,
                groups: false,
                member_limit: None,
            },
        )
        .unwrap();
    g.members.unwrap().into_iter().map(|m| m.id).collect()
}

fn set_members(store: &DieselStore, id: &str, ops: Vec<MemberOp>) -> Result<(), StoreError> {
    let reg = registry();
    let ctx = Ctx::new(&reg, "Group").unwrap();
    store
        .update(T, "Group", id, NOW, None, Include::default(), &mut |cur| {
            Ok(ResourceWrite {
                data: (*cur.data).clone(),
                external_id: cur.external_id.clone(),
                keys: scim_core::resource::index_keys(&ctx, &cur.data),
                member_ops: ops.clone(),
                unknown_members: UnknownMembers::Reject,
                password: Default::default(),
                values: Vec::new(),
                previous_values: None,
            })
        })
        .map(|_| ())
}

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
            s.delete(T, "User", "u1", Some(1)),
            Err(StoreError::VersionMismatch)
        ));
        s.delete(T, "User", "u1", Some(2)).unwrap();
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
            s.delete(T, "User", "u1", None),
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
            s.delete(T, "User", bad, None),
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
        s.delete(T, "User", "b", None).unwrap();
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
fn concurrent_membership_updates_lose_nothing() {
    let reg = registry();
    for db in databases() {
        let s = Arc::new(db.store.clone());
        s.create(
            T,
            "Group",
            "g",
            NOW,
            group(&reg, "G", &[]),
            Include::default(),
        )
        .unwrap();
        for i in 0..40 {
            s.create(
                T,
                "User",
                &format!("u{i}"),
                NOW,
                user(&reg, &format!("u{i}")),
                Include::default(),
            )
            .unwrap();
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..10 {
                        set_members(
                            &s,
                            "g",
                            vec![MemberOp::Add(vec![format!("u{}", t * 10 + i)])],
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(member_ids(&s, "g").len(), 40, "{}", db.name);
        assert_eq!(
            s.get(T, "Group", "g", Include::default()).unwrap().version,
            41
        );
    }
}

#[test]
fn refused_writes_in_a_shared_commit_leave_nothing_and_cost_the_others_nothing() {
    let reg = registry();
    for db in databases() {
        let s = Arc::new(db.store.clone());
        s.create(
            T,
            "User",
            "taken",
            NOW,
            user(&reg, "taken"),
            Include::default(),
        )
        .unwrap();
        s.create(
            T,
            "Group",
            "g",
            NOW,
            group(&reg, "G", &["taken"]),
            Include::default(),
        )
        .unwrap();
        // Eight writers at once, so that on SQLite they share commits: each creates users,
        // retries a taken userName (409), creates a group naming an unknown member under the
        // strict policy (refused after its own checks), and adds itself to `g` along with an
        // unknown id (refused: no change), then properly.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (s, reg) = (Arc::clone(&s), registry());
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let name = format!("w{t}-{i}");
                        s.create(T, "User", &name, NOW, user(&reg, &name), Include::default())
                            .unwrap();
                        let dup = s.create(
                            T,
                            "User",
                            &format!("dup{t}-{i}"),
                            NOW,
                            user(&reg, "TAKEN"),
                            Include::default(),
                        );
                        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
                        let mut bad = group(&reg, &format!("bad{t}-{i}"), &["no-such-user"]);
                        bad.unknown_members = UnknownMembers::Reject;
                        let refused = s.create(
                            T,
                            "Group",
                            &format!("bad{t}-{i}"),
                            NOW,
                            bad,
                            Include::default(),
                        );
                        assert!(matches!(refused, Err(StoreError::Scim(_))), "{refused:?}");
                        let refused = set_members(
                            &s,
                            "g",
                            vec![MemberOp::Add(vec![name.clone(), "ghost".into()])],
                        );
                        assert!(matches!(refused, Err(StoreError::Scim(_))), "{refused:?}");
                        set_members(&s, "g", vec![MemberOp::Add(vec![name])]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut conn = s.connection().unwrap();
        let users: i64 = crate::schema::resources::table
            .filter(crate::schema::resources::resource_type.eq("User"))
            .count()
            .get_result(&mut *conn)
            .unwrap();
        assert_eq!(users, 81, "{}", db.name);
        let groups: Vec<String> = crate::schema::resources::table
            .filter(crate::schema::resources::resource_type.eq("Group"))
            .select(crate::schema::resources::id)
            .load(&mut *conn)
            .unwrap();
        assert_eq!(groups, vec!["g".to_string()], "{}", db.name);
        // No index rows of refused resources.
        let orphans: i64 = crate::schema::resource_values::table
            .filter(crate::schema::resource_values::resource_id.like("dup%"))
            .or_filter(crate::schema::resource_values::resource_id.like("bad%"))
            .count()
            .get_result(&mut *conn)
            .unwrap();
        assert_eq!(orphans, 0, "{}", db.name);
        drop(conn);
        assert_eq!(member_ids(&s, "g").len(), 81, "{}", db.name);
        // One version per accepted membership change; refused ones left it alone.
        assert_eq!(
            s.get(T, "Group", "g", Include::default()).unwrap().version,
            81,
            "{}",
            db.name
        );
    }
}

/// Concurrent updates of one user, each adding its own email (on PostgreSQL written
/// optimistically, by one statement that applies only to the version it was planned from;
/// on SQLite by the one writer): none is lost, the version counts every one, and the index
/// rows are those the final document derives.
#[test]
fn concurrent_updates_of_one_resource_lose_nothing() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 10;
    for db in databases() {
        let reg = registry();
        let s = Arc::new(db.store.clone());
        s.create(
            T,
            "User",
            "racer",
            NOW,
            user(&reg, "racer"),
            Include::default(),
        )
        .unwrap();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let reg = registry();
                    let ctx = Ctx::new(&reg, "User").unwrap();
                    for r in 0..ROUNDS {
                        let email = format!("t{t}-r{r}@example.com");
                        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "add", "path": "emails", "value": [{"value": email}]}]});
                        s.update(T, "User", "racer", NOW, None, Include::default(), &mut |cur| {
                            scim_core::patch::prepare_patch(
                                &ctx,
                                &body,
                                cur,
                                &scim_filter::Limits::default(),
                            )
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let rec = s.get(T, "User", "racer", Include::default()).unwrap();
        let mut emails: Vec<String> = rec.data["emails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["value"].as_str().unwrap().to_string())
            .collect();
        emails.sort();
        let mut expected: Vec<String> = (0..THREADS)
            .flat_map(|t| (0..ROUNDS).map(move |r| format!("t{t}-r{r}@example.com")))
            .collect();
        expected.sort();
        assert_eq!(emails, expected, "{}: every update kept", db.name);
        assert_eq!(rec.version, 1 + (THREADS * ROUNDS) as i64, "{}", db.name);
        assert_eq!(
            stored_rows(&s, "racer"),
            derived_rows(&s, &reg, "racer"),
            "{}: the index rows are the final document's",
            db.name
        );
    }
}

/// Concurrent creates (on PostgreSQL inserted by one statement when they meet, see
/// `combine.rs`): each request gets its own answer, each resource its own index rows, and a
/// `userName` raced for by every thread has exactly one winner.
#[test]
fn concurrent_creates_each_get_their_own_answer_and_index_rows() {
    const THREADS: usize = 12;
    const ROUNDS: usize = 15;
    for db in databases() {
        let s = Arc::new(db.store.clone());
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let reg = registry();
                    let ctx = Ctx::new(&reg, "User").unwrap();
                    let mut won = Vec::new();
                    for r in 0..ROUNDS {
                        let name = format!("t{t}-r{r}");
                        let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "emails": [{"value": format!("{name}@example.com")}]});
                        let rec = s
                            .create(T, "User", &name, NOW, prepare_create(&ctx, &body).unwrap(), Include::default())
                            .unwrap();
                        assert_eq!(rec.id, name);
                        let raced = s.create(
                            T,
                            "User",
                            &format!("race{r}-t{t}"),
                            NOW,
                            user(&reg, &format!("Race-{r}")),
                            Include::default(),
                        );
                        match raced {
                            Ok(rec) => won.push(rec.id),
                            Err(StoreError::Conflict(_)) => {}
                            Err(e) => panic!("race {r}: {e:?}"),
                        }
                    }
                    won
                })
            })
            .collect();
        let mut winners: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        winners.sort();
        let rounds: Vec<String> = winners
            .iter()
            .map(|w| w.split('-').next().unwrap().to_string())
            .collect();
        let want: Vec<String> = {
            let mut w: Vec<String> = (0..ROUNDS).map(|r| format!("race{r}")).collect();
            w.sort();
            w
        };
        assert_eq!(rounds, want, "{}: one winner per raced userName", db.name);
        let reg = registry();
        let ctx = Ctx::new(&reg, "User").unwrap();
        let find = |filter: &str| -> Vec<String> {
            let limits = scim_core::query::QueryLimits::default();
            let planned = scim_core::query::plan_filter(&ctx, Some(filter), &limits).unwrap();
            let q = first_page(planned, 10);
            s.list(T, "User", &q)
                .unwrap()
                .resources
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        for t in 0..THREADS {
            for r in 0..ROUNDS {
                let name = format!("t{t}-r{r}");
                assert_eq!(
                    find(&format!("emails.value eq \"{name}@example.com\"")),
                    vec![name.clone()],
                    "{}: the index rows of {name}",
                    db.name
                );
            }
        }
        let all = first_page(StoreFilter::All, 0);
        assert_eq!(
            s.list(T, "User", &all).unwrap().total as usize,
            THREADS * ROUNDS + ROUNDS,
            "{}: the kept count",
            db.name
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
        assert!(s.delete(T, "User", "nope", None).is_err());
        s.delete(T, "User", "c2", None).unwrap();
        s.delete(T, "User", "c3", Some(1)).unwrap();
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
fn migrations_go_down_and_up_again() {
    for db in databases() {
        let mut conn = db.store.connection().unwrap();
        let c: &mut AnyConnection = &mut conn;
        revert_all_migrations(c).unwrap();
        assert_eq!(run_migrations(c).unwrap(), 8, "{}", db.name);
    }
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Col {
    #[diesel(sql_type = diesel::sql_types::Text)]
    table_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    column_name: String,
}

#[test]
fn schema_rs_matches_migrated_columns_on_both_databases() {
    // Column names per table from diesel's table! definitions.
    let mut expected: Vec<(String, String)> = Vec::new();
    macro_rules! cols {
        ($t:ident, $($c:ident),*) => { $( let _ = crate::schema::$t::$c; expected.push((stringify!($t).to_string(), stringify!($c).to_string())); )* };
    }
    cols!(tenants, id, name, created);
    cols!(tokens, id, tenant_id, name, token_hash, created, revoked);
    cols!(
        resources,
        id,
        tenant_id,
        resource_type,
        version,
        created,
        last_modified,
        external_id,
        user_name_ci,
        display_name_ci,
        display,
        data,
        password_hash
    );
    cols!(group_members, group_id, member_id);
    cols!(
        resource_values,
        resource_id,
        tenant_id,
        resource_type,
        path,
        ordinal,
        str_value,
        num_value,
        bool_value
    );
    cols!(resource_counts, tenant_id, resource_type, slot, n);
    cols!(store_state, name, value);
    expected.sort();
    for db in databases() {
        let mut conn = db.store.connection().unwrap();
        let sql = match &mut *conn {
            AnyConnection::Sqlite(_) => "SELECT m.name AS table_name, p.name AS column_name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table' AND m.name NOT LIKE '\\_\\_%' ESCAPE '\\' AND m.name NOT LIKE 'sqlite%'",
            AnyConnection::Postgres(_) => "SELECT table_name::text AS table_name, column_name::text AS column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_\\_%'",
        };
        let mut got: Vec<(String, String)> = diesel::sql_query(sql)
            .load::<Col>(&mut *conn)
            .unwrap()
            .into_iter()
            .map(|c| (c.table_name, c.column_name))
            .collect();
        got.sort();
        assert_eq!(got, expected, "{}", db.name);
    }
}

/// Deterministic pseudo-random numbers (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const WORDS: &[&str] = &[
    "ann",
    "Anna",
    "bob",
    "BOB",
    "Émile",
    "émile",
    "zoë",
    "x_1",
    "a%b",
    "",
    // Written into PostgreSQL's SQL text as escaped literals by range and pattern tests.
    "o'neil",
    "O''Neil",
    "back\\slash\\",
    "\\'; --",
    "$1",
    "Tour Guide",
    "tour",
];

fn random_user(rng: &mut Rng, i: usize) -> serde_json::Value {
    let mut u = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("{}{i}", rng.pick(WORDS))});
    let o = u.as_object_mut().unwrap();
    for attr in ["displayName", "title", "nickName", "locale"] {
        if rng.chance(70) {
            o.insert(attr.into(), json!(rng.pick(WORDS)));
        }
    }
    if !o.contains_key("displayName") && rng.chance(15) {
        // Stored, but not a value: `displayName pr` is false for it.
        o.insert("displayName".into(), json!(""));
    }
    if rng.chance(70) {
        o.insert("active".into(), json!(rng.chance(50)));
    }
    if rng.chance(60) {
        o.insert(
            "name".into(),
            json!({"givenName": rng.pick(WORDS), "familyName": rng.pick(WORDS)}),
        );
    } else if rng.chance(20) {
        // A complex value whose only sub-attribute is empty still exists (`name pr`).
        o.insert("name".into(), json!({"formatted": ""}));
    }
    let n = rng.next() % 4;
    let emails: Vec<_> = (0..n)
        .map(|k| {
            // Some elements lack a value or hold only a flag or an empty string: an element
            // is its sub-attributes' rows, whichever they are.
            let mut e = match rng.next() % 8 {
                0 => json!({"type": rng.pick(&["work", "home", "other"])}),
                1 => json!({"primary": false}),
                2 => json!({"value": "", "display": rng.pick(WORDS)}),
                _ => json!({"value": format!("{}@{}.example", rng.pick(WORDS), rng.pick(&["work", "home"])), "type": rng.pick(&["work", "home", "other"])}),
            };
            if k == 0 && rng.chance(50) {
                e["primary"] = json!(true);
            }
            e
        })
        .collect();
    if !emails.is_empty() {
        o.insert("emails".into(), json!(emails));
    }
    u
}

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

/// A point read authorized by a token in its own statement answers for the token's tenant and
/// nobody else's: the same record as an ordinary read, nothing for a resource of another
/// tenant, and `NoToken` for a revoked or unknown token, whether or not anything matched.
#[test]
fn reads_by_token_answer_for_the_tokens_tenant_only() {
    use scim_core::store::{
        CredentialStore, PointKey, PointKeyBuf, PointRead, TokenRead, TokenRecord,
    };
    let reg = registry();
    let users_read = Include {
        members: false,
        groups: true,
        member_limit: None,
    };
    for db in databases() {
        let s = &db.store;
        let other = "tenant-2";
        s.ensure_tenant(other, "other", NOW).unwrap();
        for (tenant, id, token, hash) in [
            (T, "t1", "tok-1", "hash-1"),
            (other, "t2", "tok-2", "hash-2"),
        ] {
            let record = TokenRecord {
                id: id.into(),
                tenant_id: tenant.into(),
                name: token.into(),
                created: NOW.into(),
            };
            s.create_token(&record, hash).unwrap();
        }
        s.create(T, "User", "ua", NOW, user(&reg, "anna"), Include::default())
            .unwrap();
        s.create(
            other,
            "User",
            "ub",
            NOW,
            user(&reg, "bert"),
            Include::default(),
        )
        .unwrap();
        s.create(
            T,
            "Group",
            "g1",
            NOW,
            group(&reg, "One", &["ua"]),
            Include::default(),
        )
        .unwrap();
        let read = |hash: &str, key: PointKey<'_>, rt: &str, include: Include| match s
            .point_read_by_token(hash, rt, key, include)
            .unwrap()
        {
            TokenRead::Read(found) => Ok(found.map(|rec| *rec)),
            TokenRead::NoToken => Err("no token"),
            TokenRead::Unsupported => Err("unsupported"),
        };
        let anna = s.get(T, "User", "ua", users_read).unwrap();
        assert_eq!(anna.groups.as_ref().map(Vec::len), Some(1), "{}", db.name);
        for key in [PointKey::Id("ua"), PointKey::UserName("anna")] {
            let got = read("hash-1", key, "User", users_read);
            assert_eq!(got, Ok(Some(anna.clone())), "{} {key:?}", db.name);
            // Tenant 2's token does not see tenant 1's user, and a wrong type finds nothing.
            assert_eq!(
                read("hash-2", key, "User", users_read),
                Ok(None),
                "{}",
                db.name
            );
            assert_eq!(
                read("hash-1", key, "Group", users_read),
                Ok(None),
                "{}",
                db.name
            );
            assert_eq!(
                read("nope", key, "User", users_read),
                Err("no token"),
                "{}",
                db.name
            );
        }
        // Without groups: the row alone, as `get` gives it.
        let group = s.get(T, "Group", "g1", Include::default()).unwrap();
        let got = read("hash-1", PointKey::Id("g1"), "Group", Include::default());
        assert_eq!(got, Ok(Some(group)), "{}", db.name);
        assert_eq!(
            read(
                "hash-1",
                PointKey::Id("g1"),
                "Group",
                Include {
                    members: true,
                    groups: false,
                    member_limit: None,
                }
            ),
            Err("unsupported"),
            "{}: member lists are read the ordinary way",
            db.name
        );
        // Submitted reads (PostgreSQL answers all those waiting with one statement): the same
        // answers as one at a time, for repeated keys, misses, other tokens, types and kinds.
        let asks: Vec<(&str, PointKeyBuf, &str, Include)> = (0..40)
            .map(|i| match i % 8 {
                0 | 1 => ("hash-1", PointKeyBuf::Id("ua".into()), "User", users_read),
                2 => (
                    "hash-1",
                    PointKeyBuf::UserName("anna".into()),
                    "User",
                    users_read,
                ),
                3 => (
                    "hash-1",
                    PointKeyBuf::Id(format!("missing-{i}")),
                    "User",
                    users_read,
                ),
                4 => ("hash-2", PointKeyBuf::Id("ua".into()), "User", users_read),
                5 => (
                    "nope",
                    PointKeyBuf::UserName("anna".into()),
                    "User",
                    users_read,
                ),
                6 => (
                    "hash-1",
                    PointKeyBuf::Id("g1".into()),
                    "Group",
                    Include::default(),
                ),
                _ => (
                    "hash-2",
                    PointKeyBuf::UserName("bert".into()),
                    "User",
                    users_read,
                ),
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut taken = 0;
        for (n, (hash, key, rt, include)) in asks.iter().enumerate() {
            let tx = tx.clone();
            let submitted = s.submit_point_read(
                PointRead {
                    token_hash: (*hash).into(),
                    resource_type: (*rt).into(),
                    key: key.clone(),
                    include: *include,
                },
                Box::new(move |r| {
                    let _ = tx.send((n, r));
                }),
            );
            taken += usize::from(submitted.is_ok());
        }
        let expected = if db.name == "sqlite" { 0 } else { asks.len() };
        assert_eq!(
            taken, expected,
            "{}: which stores take submitted reads",
            db.name
        );
        for _ in 0..taken {
            let (n, r) = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("every submitted read is answered");
            let (hash, key, rt, include) = &asks[n];
            let got = match r.unwrap() {
                TokenRead::Read(found) => Ok(found.map(|rec| *rec)),
                TokenRead::NoToken => Err("no token"),
                TokenRead::Unsupported => Err("unsupported"),
            };
            assert_eq!(
                got,
                read(hash, key.as_key(), rt, *include),
                "{} {n}",
                db.name
            );
        }
        assert!(s.revoke_token("t1", NOW).unwrap());
        for key in [PointKey::Id("ua"), PointKey::Id("missing")] {
            assert_eq!(
                read("hash-1", key, "User", users_read),
                Err("no token"),
                "{}",
                db.name
            );
        }
        let bert = read("hash-2", PointKey::UserName("bert"), "User", users_read).unwrap();
        assert_eq!(bert.map(|r| r.id), Some("ub".to_string()), "{}", db.name);
    }
}

#[test]
fn a_filter_running_past_the_query_timeout_is_cancelled_as_too_many() {
    use scim_core::store::{CompareOp, ValueTest};
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    for db in databases() {
        for i in 0..500 {
            let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": format!("t{i}"),
                "emails": [{"value": format!("t{i}@example.com")}, {"value": format!("t{i}@example.org")}]});
            let write = prepare_create(&ctx, &body).unwrap();
            let id = format!("t{i}");
            db.store
                .create(T, "User", &id, NOW, write, Include::default())
                .unwrap();
        }
        // 200 `co` tests, each a scan of every email: seconds of work at this size on SQLite,
        // far more than a millisecond on either database.
        let hostile = ListQuery {
            filter: StoreFilter::Or(
                (0..200)
                    .map(|i| StoreFilter::Value {
                        path: "emails.value".into(),
                        test: ValueTest::Str(CompareOp::Co, format!("absent{i}")),
                    })
                    .collect(),
            ),
            start_index: 1,
            count: 10,
            include: Include::default(),
            sort: None,
            after: None,
        };
        let mut config = StoreConfig::new(db.url.clone());
        config.query_timeout = Some(std::time::Duration::from_millis(1));
        let hurried = DieselStore::open(&config).unwrap();
        match hurried.list(T, "User", &hostile) {
            Err(StoreError::Scim(e)) => {
                assert_eq!(
                    (e.status, e.scim_type),
                    (400, Some(scim_core::ScimType::TooMany)),
                    "{}",
                    db.name
                );
            }
            other => panic!("{}: expected tooMany, got {other:?}", db.name),
        }
        // Without the hurry the same filter runs to its (empty) end: the refusal above was the
        // deadline, not the query.
        let page = db.store.list(T, "User", &hostile).unwrap();
        assert_eq!(page.total, 0, "{}", db.name);
    }
}

#[test]
fn migrations_are_not_held_to_the_query_timeout() {
    let Some(base) = crate::testing::postgres_test_url() else {
        return; // SQLite has no statement timeout; `databases()` fails under CI without PG
    };
    let mut config = StoreConfig::new(crate::testing::fresh_postgres_schema(&base).unwrap());
    config.query_timeout = Some(std::time::Duration::from_millis(1));
    let store = DieselStore::open(&config).unwrap();
    // Building the schema takes far longer than a millisecond.
    assert!(store.migrate().unwrap() > 0);
    // The connection is back under the timeout afterwards.
    let mut conn = store.connection().unwrap();
    let shown = diesel::sql_query("SHOW statement_timeout")
        .get_result::<ShowRow>(&mut *conn)
        .unwrap();
    assert_eq!(shown.statement_timeout, "1ms");
}

#[test]
fn postgresql_connections_keep_generic_plans_for_prepared_statements() {
    let Some(store) = postgres_store() else {
        return; // a PostgreSQL setting; `postgres_test_url` fails under CI without PG
    };
    let mut conn = store.connection().unwrap();
    let shown = diesel::sql_query("SHOW plan_cache_mode")
        .get_result::<PlanCacheMode>(&mut *conn)
        .unwrap();
    assert_eq!(shown.plan_cache_mode, "force_generic_plan");
    #[derive(diesel::QueryableByName)]
    struct Jit {
        #[diesel(sql_type = diesel::sql_types::Text)]
        jit: String,
    }
    let shown = diesel::sql_query("SHOW jit")
        .get_result::<Jit>(&mut *conn)
        .unwrap();
    assert_eq!(shown.jit, "off", "no JIT compilation of short statements");
}

/// A PostgreSQL on loopback that accepts only TLS (as `hostssl` lines alone in `pg_hba.conf`
/// make it) still gets connections from a URL that names no `sslmode`: the plain attempt is
/// refused, and the URL as given (libpq's `prefer`) connects with TLS. The test's
/// PostgreSQL is put behind a relay that closes every connection not opened with a TLS
/// request.
#[cfg(feature = "postgres-tls")]
#[test]
fn a_loopback_postgresql_that_requires_tls_still_gets_connections() {
    use std::io::{Read, Write};
    let Some(base) = crate::testing::postgres_test_url() else {
        return; // `postgres_test_url` fails under CI without PG
    };
    if !crate::testing::postgres_offers_tls(&base).unwrap() {
        eprintln!("this PostgreSQL has no TLS: nothing to require");
        return;
    }
    let url = crate::testing::fresh_postgres_schema(&base).unwrap();
    // `postgres://user@host:port/db?…`: the authority's host and port.
    let rest = url.split_once("://").unwrap().1;
    let authority = &rest[..rest.find('/').unwrap()];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let upstream = match host_port.contains(':') {
        true => host_port.to_string(),
        false => format!("{host_port}:5432"),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relayed = url.replacen(host_port, &listener.local_addr().unwrap().to_string(), 1);
    std::thread::spawn(move || {
        const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
        const GSS_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 48];
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).is_err() {
                    return;
                }
                if first == GSS_REQUEST {
                    // no GSS encryption here; libpq goes on with its next request
                    if client.write_all(b"N").is_err() || client.read_exact(&mut first).is_err() {
                        return;
                    }
                }
                if first != SSL_REQUEST {
                    return; // a plain start-up: refused, the connection closed
                }
                let Ok(mut server) = std::net::TcpStream::connect(&upstream) else {
                    return;
                };
                if server.write_all(&first).is_err() {
                    return;
                }
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut s2, &mut c2));
                let _ = std::io::copy(&mut client, &mut server);
            });
        }
    });
    assert!(!relayed.contains("sslmode"), "{relayed}");
    let store = DieselStore::open(&StoreConfig::new(relayed)).unwrap();
    assert!(
        tls_version(&store).is_some(),
        "connected, with TLS, through the TLS-only relay"
    );
}

/// The TLS version of a connection of `store` to PostgreSQL (`pg_stat_ssl`); `None` when the
/// connection is plain.
fn tls_version(store: &DieselStore) -> Option<String> {
    #[derive(diesel::QueryableByName)]
    struct Encrypted {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ssl: bool,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        version: Option<String>,
    }
    let mut conn = store.connection().unwrap();
    let row =
        diesel::sql_query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .get_result::<Encrypted>(&mut *conn)
            .unwrap();
    row.ssl.then(|| row.version.unwrap_or_default())
}

/// A URL to PostgreSQL on this machine that names no `sslmode` connects without TLS (it
/// protects nothing on loopback and costs CPU on every message). One that asks for TLS gets
/// it: `postgresql_connections_use_tls_when_the_url_asks_for_it`.
#[test]
fn postgresql_on_loopback_is_reached_without_tls_unless_asked_for() {
    let Some(base) = crate::testing::postgres_test_url() else {
        return; // `postgres_test_url` fails under CI without PG
    };
    let url = crate::testing::fresh_postgres_schema(&base).unwrap();
    assert!(
        url.contains("127.0.0.1") || url.contains("localhost"),
        "the test database is on this machine: {url}"
    );
    assert!(!url.contains("sslmode"), "{url}");
    if std::env::var_os("PGSSLMODE").is_none() {
        let store = DieselStore::open(&StoreConfig::new(url)).unwrap();
        assert_eq!(tls_version(&store), None, "no TLS on loopback by default");
    }
}

/// The bundled SQLite is built the way the workspace's `.cargo/config.toml` asks
/// (`LIBSQLITE3_FLAGS`): multi-thread mode (no mutex around every call on a connection, which
/// the store never shares between threads at once), no process-wide page-cache mutex, no
/// allocation statistics. Without them the store is as correct, only slower.
#[test]
fn the_bundled_sqlite_is_built_for_one_thread_per_connection() {
    #[derive(diesel::QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }
    let db = sqlite();
    let mut conn = db.store.connection().unwrap();
    let options: Vec<String> = diesel::sql_query("PRAGMA compile_options")
        .load::<CompileOption>(&mut *conn)
        .unwrap()
        .into_iter()
        .map(|o| o.compile_options)
        .collect();
    assert!(options.iter().any(|o| o == "THREADSAFE=2"), "{options:?}");
    assert!(
        options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
        "{options:?}"
    );
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "{options:?}"
    );
}

/// With the `postgres-tls` feature libpq is built with OpenSSL: `sslmode=require` in the URL
/// gives an encrypted connection when the server offers TLS (this machine's PostgreSQL does,
/// as Debian's packages set it up), and a refusal naming the server otherwise; never libpq's
/// "SSL is not supported by this build".
#[cfg(feature = "postgres-tls")]
#[test]
fn postgresql_connections_use_tls_when_the_url_asks_for_it() {
    let Some(base) = crate::testing::postgres_test_url() else {
        return; // a PostgreSQL connection setting; `postgres_test_url` fails under CI without PG
    };
    let offered = crate::testing::postgres_offers_tls(&base).unwrap();
    let url = crate::testing::fresh_postgres_schema(&base).unwrap() + "&sslmode=require";
    match DieselStore::open(&StoreConfig::new(url)) {
        Ok(store) => {
            assert!(offered, "an encrypted connection to a server without TLS?");
            store.migrate().unwrap();
            let version = tls_version(&store).expect("sslmode=require gave a plain connection");
            assert!(version.starts_with("TLS"), "{version}");
        }
        Err(e) => {
            let e = e.to_string();
            assert!(!offered, "the server offers TLS, yet: {e}");
            assert!(
                !e.contains("not supported") && !e.contains("not compiled"),
                "{e}"
            );
        }
    }
}

#[derive(diesel::QueryableByName)]
struct PlanCacheMode {
    #[diesel(sql_type = diesel::sql_types::Text)]
    plan_cache_mode: String,
}

#[derive(diesel::QueryableByName)]
struct ShowRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    statement_timeout: String,
}

#[derive(QueryableByName, Debug)]
struct Collated {
    #[diesel(sql_type = diesel::sql_types::Text)]
    column: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    collation: Option<String>,
}

#[test]
fn every_text_column_compares_bytewise_on_postgresql() {
    let Some(store) = postgres_store() else {
        return; // SQLite's BINARY is bytewise; `databases()` fails under CI without PG
    };
    store.migrate().unwrap();
    let mut conn = store.connection().unwrap();
    let columns: Vec<Collated> = diesel::sql_query(
        "SELECT table_name || '.' || column_name AS column, collation_name::text AS collation \
         FROM information_schema.columns WHERE table_schema = current_schema() \
         AND data_type = 'text' AND table_name NOT LIKE '\\_\\_%'",
    )
    .load(&mut *conn)
    .unwrap();
    assert!(columns.len() > 20, "{columns:?}");
    let other: Vec<(&str, Option<&str>)> = columns
        .iter()
        .filter(|c| c.collation.as_deref() != Some("C"))
        .map(|c| (c.column.as_str(), c.collation.as_deref()))
        .collect();
    assert!(other.is_empty(), "not bytewise: {other:?}");
}

/// On a PostgreSQL database whose default collation is linguistic (ICU `en-US`, as production
/// databases created with `en_US.UTF-8` are), `userName` comparisons and sorting still follow
/// bytes, exactly as on SQLite: `"émile"` sorts after `"frank"` (0xC3 > 'f').
#[test]
fn comparisons_and_order_are_bytewise_on_a_linguistic_postgresql_database() {
    use scim_core::store::CompareOp;
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let mut dbs = vec![(sqlite(), None)];
    let icu_db = format!("scim_icu_{}", std::process::id());
    if let Some(base) = crate::testing::postgres_test_url() {
        let mut admin = diesel::PgConnection::establish(&base).unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS {icu_db}"),
            format!(
                "CREATE DATABASE {icu_db} TEMPLATE template0 LOCALE_PROVIDER icu \
                 ICU_LOCALE 'en-US' LC_COLLATE 'C' LC_CTYPE 'C'"
            ),
        ] {
            diesel::connection::SimpleConnection::batch_execute(&mut admin, &sql).unwrap();
        }
        let (head, _) = base.split_once('?').unwrap_or((&base, ""));
        let url = format!("{}/{icu_db}", &head[..head.rfind('/').unwrap()]);
        let store = DieselStore::open(&StoreConfig::new(url.clone())).unwrap();
        dbs.push((
            TestDb {
                store,
                url,
                _dir: None,
                name: "postgres (ICU en-US)",
            },
            Some((admin, icu_db.clone())),
        ));
    }
    for (db, admin) in dbs {
        {
            let store = &db.store;
            store.migrate().unwrap();
            use scim_core::store::CredentialStore;
            store.ensure_tenant(T, "test", NOW).unwrap();
            for name in ["émile", "frank", "eve"] {
                let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name});
                let write = prepare_create(&ctx, &body).unwrap();
                store
                    .create(T, "User", name, NOW, write, Include::default())
                    .unwrap();
            }
            let names = |filter: StoreFilter| -> Vec<String> {
                let page = store
                    .list(
                        T,
                        "User",
                        &ListQuery {
                            filter,
                            start_index: 1,
                            count: 10,
                            include: Include::default(),
                            sort: Some(SortKey {
                                target: SortTarget::Column(Column::UserName),
                                descending: false,
                            }),
                            after: None,
                        },
                    )
                    .unwrap();
                page.resources.into_iter().map(|r| r.id).collect()
            };
            assert_eq!(
                names(StoreFilter::All),
                ["eve", "frank", "émile"],
                "{}",
                db.name
            );
            assert_eq!(
                names(StoreFilter::Column(
                    Column::UserName,
                    CompareOp::Gt,
                    "f".into()
                )),
                ["frank", "émile"],
                "{}",
                db.name
            );
        }
        if let Some((mut admin, name)) = admin {
            drop(db);
            diesel::connection::SimpleConnection::batch_execute(
                &mut admin,
                &format!("DROP DATABASE {name} WITH (FORCE)"),
            )
            .unwrap();
        }
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

/// `update`'s write for `cur` with `attr` set to `value`, as a PATCH from a client makes it.
fn patched(reg: &SchemaRegistry, cur: &ResourceRecord, attr: &str, value: &str) -> ResourceWrite {
    let ctx = Ctx::new(reg, "User").unwrap();
    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": attr, "value": value}]});
    scim_core::patch::prepare_patch(&ctx, &body, cur, &scim_filter::Limits::default()).unwrap()
}

#[test]
fn other_writes_go_on_while_an_update_is_being_prepared() {
    // Preparing an update can be slow (an argon2 password hash for Okta's password sync): on
    // SQLite, whose one writer serves every write of the database, it is done before the
    // writer is taken; on PostgreSQL it holds only the updated row.
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        s.create(
            T,
            "User",
            "u1",
            NOW,
            user(&reg, "alice"),
            Include::default(),
        )
        .unwrap();
        let (go, started) = std::sync::mpsc::channel::<()>();
        let (done, created) = std::sync::mpsc::channel::<()>();
        let rec = std::thread::scope(|scope| {
            let (reg, done) = (&reg, done);
            scope.spawn(move || {
                started.recv().unwrap();
                s.create(T, "User", "u2", NOW, user(reg, "bob"), Include::default())
                    .unwrap();
                done.send(()).unwrap();
            });
            let mut first = true;
            s.update(T, "User", "u1", NOW, None, Include::default(), &mut |cur| {
                if std::mem::take(&mut first) {
                    go.send(()).unwrap();
                    let waited = created.recv_timeout(std::time::Duration::from_secs(30));
                    assert!(
                        waited.is_ok(),
                        "{}: a create waited for another write's preparation",
                        db.name
                    );
                }
                Ok(patched(reg, cur, "title", "Boss"))
            })
            .unwrap()
        });
        assert_eq!((rec.version, &rec.data["title"]), (2, &json!("Boss")));
        let stored = s.get(T, "User", "u1", Include::default()).unwrap();
        assert_eq!(stored.data["title"], json!("Boss"), "{}", db.name);
        assert!(s.get(T, "User", "u2", Include::default()).is_ok());
    }
}

#[test]
fn an_update_prepared_before_another_write_is_prepared_again_from_that_write() {
    // SQLite only: there the first preparation runs outside any transaction, so another
    // process's write can land in between (on PostgreSQL the row lock keeps it out; updates of
    // one resource by one store take turns, so the racing write comes from a second store on
    // the same file, as another process would make it).
    let reg = registry();
    for db in databases().into_iter().filter(|d| d.name == "sqlite") {
        let s = &db.store;
        let other = DieselStore::open(&StoreConfig::new(db.url.clone())).unwrap();
        s.create(
            T,
            "User",
            "u1",
            NOW,
            user(&reg, "alice"),
            Include::default(),
        )
        .unwrap();
        // Sets the title, while another client sets the displayName between the first
        // preparation and the write; returns the answer and how often `update` was called.
        let title_racing = |display_name: &str| {
            let mut calls = 0;
            let rec = s
                .update(T, "User", "u1", NOW, None, Include::default(), &mut |cur| {
                    calls += 1;
                    if calls == 1 {
                        std::thread::scope(|scope| {
                            scope.spawn(|| {
                                other
                                    .update(
                                        T,
                                        "User",
                                        "u1",
                                        NOW,
                                        None,
                                        Include::default(),
                                        &mut |c| Ok(patched(&reg, c, "displayName", display_name)),
                                    )
                                    .unwrap()
                            });
                        });
                    }
                    Ok(patched(&reg, cur, "title", "Boss"))
                })
                .unwrap();
            (rec, calls)
        };
        let (rec, calls) = title_racing("Alice Other");
        assert_eq!(calls, 2, "prepared again from the newer version");
        let stored = s.get(T, "User", "u1", Include::default()).unwrap();
        assert_eq!(
            (
                stored.version,
                &stored.data["title"],
                &stored.data["displayName"]
            ),
            (3, &json!("Boss"), &json!("Alice Other")),
            "both changes are kept"
        );
        assert_eq!(rec.version, 3);
        // The title is set already: nothing to write, and the answer is the resource as the
        // other client left it, not the older version it was prepared from.
        let (rec, _) = title_racing("Alice Third");
        assert_eq!(
            (rec.version, &rec.data["displayName"]),
            (4, &json!("Alice Third"))
        );
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

#[test]
fn a_detached_update_is_written_by_the_writer_or_handed_back_when_stale() {
    use scim_core::store::{Detached, WriteDone};
    let reg = registry();
    for db in databases() {
        let s = Arc::new(db.store.clone());
        s.create(T, "User", "u", NOW, user(&reg, "u"), Include::default())
            .unwrap();
        let renamed =
            |cur: &ResourceRecord, name: &str| Ok(patched(&reg, cur, "displayName", name));
        let detach = |update: &mut scim_core::store::UpdateFn<'_>| {
            let (tx, rx) = std::sync::mpsc::channel::<Detached>();
            let done: WriteDone = Box::new(move |outcome| tx.send(outcome).unwrap());
            let reserved = s.reserve_inline();
            let taken =
                s.update_detached(T, "User", "u", NOW, None, Include::default(), update, done);
            drop(reserved);
            taken.map(|()| rx.recv().unwrap().finish()).ok()
        };
        let outcome = detach(&mut |cur| renamed(cur, "A"));
        if db.name == "postgres" {
            // No writer thread: not taken; `update` is the way.
            assert!(outcome.is_none());
            continue;
        }
        let rec = outcome.unwrap().unwrap().unwrap();
        assert_eq!(
            (rec.version, rec.data["displayName"].clone()),
            (2, json!("A"))
        );
        // Another write lands while this one is being prepared: handed back, nothing written.
        let outcome = detach(&mut |cur| {
            let other = s.clone();
            std::thread::spawn(move || {
                let reg = registry();
                other
                    .update(T, "User", "u", NOW, None, Include::default(), &mut |cur| {
                        Ok(patched(&reg, cur, "displayName", "B"))
                    })
                    .unwrap()
            })
            .join()
            .unwrap();
            renamed(cur, "C")
        });
        assert!(matches!(outcome, Some(Ok(None))), "{outcome:?}");
        let now = s.get(T, "User", "u", Include::default()).unwrap();
        assert_eq!(
            (now.version, now.data["displayName"].clone()),
            (3, json!("B"))
        );
        // A refusal is the outcome, at once.
        let outcome = detach(&mut |_| Err(scim_core::ScimError::invalid_value("no")));
        assert!(
            matches!(outcome, Some(Err(StoreError::Scim(_)))),
            "{outcome:?}"
        );
        // Without a reservation on this thread: not taken.
        let done: WriteDone = Box::new(|_| {});
        assert!(s
            .update_detached(
                T,
                "User",
                "u",
                NOW,
                None,
                Include::default(),
                &mut |cur| renamed(cur, "D"),
                done
            )
            .is_err());
    }
}

#[test]
fn a_detached_create_is_inserted_by_the_writer() {
    use scim_core::store::{Detached, WriteDone};
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        let create = |id: &str, name: &str| {
            let (tx, rx) = std::sync::mpsc::channel::<Detached>();
            let done: WriteDone = Box::new(move |outcome| tx.send(outcome).unwrap());
            s.create_detached(
                T,
                "User",
                id,
                NOW,
                user(&reg, name),
                Include::default(),
                done,
            )
            .ok()
            .map(|()| rx.recv().unwrap().finish())
        };
        let Some(made) = create("d1", "dora") else {
            assert_eq!(db.name, "postgres", "SQLite takes detached creates");
            continue;
        };
        let rec = made.unwrap().unwrap();
        assert_eq!((rec.id.as_str(), rec.version), ("d1", 1));
        let stored = s.get(T, "User", "d1", Include::default()).unwrap();
        assert_eq!(stored.data["userName"], json!("dora"));
        // A duplicate userName is the outcome, and nothing is written.
        let dup = create("d2", "DORA").unwrap();
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        let err = s.get(T, "User", "d2", Include::default()).unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err:?}");
    }
}

/// What the server derives index rows with: `reg`'s schemas.
fn derive_with(reg: &SchemaRegistry) -> crate::DeriveRows {
    let reg = reg.clone();
    Arc::new(move |rt, doc| {
        Ctx::new(&reg, rt)
            .map(|ctx| scim_core::index::index_rows(&ctx, doc))
            .unwrap_or_default()
    })
}

/// Stores a `title` index row for `id` that its document does not hold (rows built by
/// other rules).
fn insert_title_row(s: &DieselStore, id: &str, value: &str) {
    use crate::schema::resource_values::dsl as v;
    let mut conn = s.connection().unwrap();
    diesel::insert_into(v::resource_values)
        .values((
            v::resource_id.eq(id),
            v::tenant_id.eq(T),
            v::resource_type.eq("User"),
            v::path.eq("title"),
            v::ordinal.eq(0i64),
            v::str_value.eq(Some(value)),
        ))
        .execute(&mut *conn)
        .unwrap();
}

/// The index rows stored for `id`, in a stable order.
fn stored_rows(s: &DieselStore, id: &str) -> Vec<scim_core::index::IndexRow> {
    let mut conn = s.connection().unwrap();
    let mut rows = crate::store::stored_values(&mut conn, id).unwrap();
    rows.sort_by(|a, b| (&a.path, a.ordinal).cmp(&(&b.path, b.ordinal)));
    rows
}

/// The index rows `reg` derives from `id`'s stored document, in the same order.
fn derived_rows(
    s: &DieselStore,
    reg: &SchemaRegistry,
    id: &str,
) -> Vec<scim_core::index::IndexRow> {
    let rec = s.get(T, "User", id, Include::default()).unwrap();
    let mut rows = derive_with(reg)("User", &rec.data);
    rows.sort_by(|a, b| (&a.path, a.ordinal).cmp(&(&b.path, b.ordinal)));
    rows
}

#[test]
fn the_attribute_index_is_rebuilt_when_its_fingerprint_differs() {
    use crate::IndexState;
    use scim_core::store::{CompareOp, ValueTest};
    let reg = registry();
    let fp = scim_core::index::fingerprint(&reg);
    for db in databases() {
        let s = &db.store;
        let open = |fp: &str, rebuild: bool| s.open_index(fp, rebuild, derive_with(&reg)).unwrap();
        // A database without resources records the fingerprint; then it matches.
        assert_eq!(open(&fp, false), IndexState::Recorded, "{}", db.name);
        assert_eq!(open(&fp, false), IndexState::Current, "{}", db.name);
        let ctx = Ctx::new(&reg, "User").unwrap();
        for (id, name) in [
            ("u1", "Ann"),
            ("u2", "Bob"),
            ("u3", "Cy"),
            ("u4", "Di"),
            ("u5", "Ed"),
        ] {
            let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": name, "emails": [{"value": format!("{name}@Example.com"), "type": "work"}],
                "name": {"givenName": name}});
            let write = prepare_create(&ctx, &body).unwrap();
            s.create(T, "User", id, NOW, write, Include::default())
                .unwrap();
        }
        // Updates now take the replaced rows from the write (the index matches): the stored
        // rows still are exactly the rows of the stored document.
        for (attr, value) in [
            ("emails[type eq \"work\"].value", "ann@other.org"),
            ("title", "Boss"),
            ("name.givenName", "Annie"),
        ] {
            let cur = s.get(T, "User", "u1", Include::default()).unwrap();
            let write = patched(&reg, &cur, attr, value);
            assert!(write.previous_values.is_some());
            s.update(T, "User", "u1", NOW, None, Include::default(), &mut |_| {
                Ok(write.clone())
            })
            .unwrap();
            assert_eq!(
                stored_rows(s, "u1"),
                derived_rows(s, &reg, "u1"),
                "{} {attr}",
                db.name
            );
        }
        // Rows built by other rules: u2's are gone and u3 has one its document does not hold.
        {
            use crate::schema::resource_values::dsl as v;
            let mut conn = s.connection().unwrap();
            let c: &mut AnyConnection = &mut conn;
            diesel::delete(v::resource_values.filter(v::resource_id.eq("u2")))
                .execute(c)
                .unwrap();
        }
        insert_title_row(s, "u3", "stale");
        // Another fingerprint: left alone unless asked, then rebuilt across batches.
        assert_eq!(
            open("other", false),
            IndexState::Stale {
                built_with: Some(fp.clone())
            },
            "{}",
            db.name
        );
        assert_eq!(s.index_fingerprint().unwrap().as_deref(), Some(fp.as_str()));
        assert_eq!(
            open("other", true),
            IndexState::Rebuilt {
                built_with: Some(fp.clone()),
                resources: 5
            },
            "{}",
            db.name
        );
        assert_eq!(s.index_fingerprint().unwrap().as_deref(), Some("other"));
        for id in ["u1", "u2", "u3", "u4", "u5"] {
            assert!(!stored_rows(s, id).is_empty(), "{} {id}", db.name);
            assert_eq!(
                stored_rows(s, id),
                derived_rows(s, &reg, id),
                "{} {id}",
                db.name
            );
        }
        // The rebuilt rows answer filters: u2 is found again, u3 no longer by the stale row.
        let find = |path: &str, v: &str| {
            let q = ListQuery {
                filter: StoreFilter::Value {
                    path: path.into(),
                    test: ValueTest::Str(CompareOp::Eq, v.into()),
                },
                start_index: 1,
                count: 10,
                include: Include::default(),
                sort: None,
                after: None,
            };
            let page = s.list(T, "User", &q).unwrap();
            page.resources.into_iter().map(|r| r.id).collect::<Vec<_>>()
        };
        assert_eq!(
            find("emails.value", "bob@example.com"),
            ["u2"],
            "{}",
            db.name
        );
        assert!(find("title", "stale").is_empty(), "{}", db.name);
        // A database whose fingerprint was never recorded (an earlier version) is rebuilt too.
        {
            use crate::schema::store_state::dsl as st;
            let mut conn = s.connection().unwrap();
            diesel::delete(st::store_state).execute(&mut *conn).unwrap();
        }
        assert_eq!(
            open(&fp, true),
            IndexState::Rebuilt {
                built_with: None,
                resources: 5
            },
            "{}",
            db.name
        );
    }
}

#[test]
fn an_instance_notices_another_rebuilding_the_index_for_other_schemas() {
    let reg = registry();
    let fp = scim_core::index::fingerprint(&reg);
    for db in databases() {
        let a = &db.store;
        a.open_index(&fp, true, derive_with(&reg)).unwrap();
        let ctx = Ctx::new(&reg, "User").unwrap();
        let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "ann", "emails": [{"value": "ann@example.com"}]});
        a.create(
            T,
            "User",
            "u1",
            NOW,
            prepare_create(&ctx, &body).unwrap(),
            Include::default(),
        )
        .unwrap();
        // Another instance, with other schemas, rebuilds the index for them.
        let b = DieselStore::open(&StoreConfig::new(db.url.clone())).unwrap();
        let rebuilt = b
            .open_index("other schemas", true, derive_with(&reg))
            .unwrap();
        assert!(
            matches!(rebuilt, crate::IndexState::Rebuilt { .. }),
            "{}",
            db.name
        );
        // The index now holds a row that A's schemas would not derive (as B's rebuild could
        // leave): A's next update must not trust its own derivation of the replaced rows.
        insert_title_row(a, "u1", "by b");
        let cur = a.get(T, "User", "u1", Include::default()).unwrap();
        let write = patched(&reg, &cur, "title", "Boss");
        // Trusting the write, the update would insert a second `title` row: refused by the
        // primary key. Having noticed, it reads the stored rows and replaces that one.
        a.update(T, "User", "u1", NOW, None, Include::default(), &mut |_| {
            Ok(write.clone())
        })
        .unwrap();
        assert!(
            !a.index_trusted.load(std::sync::atomic::Ordering::Relaxed),
            "{}",
            db.name
        );
        assert_eq!(
            stored_rows(a, "u1"),
            derived_rows(a, &reg, "u1"),
            "{}",
            db.name
        );
    }
}

/// `open_unique_display_names`, as a crate user calls it: without `apply` it only reports a
/// change; applied over groups that share a name it refuses and changes nothing; applied
/// over distinct names it makes their display names unique (a later create of a taken name is
/// a conflict, also in another case); named again with the same types it does nothing; and
/// named with no types it lets names repeat again.
#[test]
fn unique_display_names_are_opened_and_closed_by_the_store() {
    let plain = registry();
    let unique = registry().with_unique_display_names("Group").unwrap();
    let groups = vec!["Group".to_string()];
    for db in databases() {
        let s = &db.store;
        let name = db.name;
        let create = |reg: &SchemaRegistry, id: &str, display: &str| {
            s.create(
                T,
                "Group",
                id,
                NOW,
                group(reg, display, &[]),
                Include::default(),
            )
        };
        create(&plain, "g1", "Sales").unwrap();
        create(&plain, "g2", "SALES").unwrap();
        assert_eq!(
            s.open_unique_display_names(&[], false).unwrap(),
            Some(0),
            "{name}"
        );
        assert_eq!(
            s.open_unique_display_names(&groups, false).unwrap(),
            None,
            "{name}"
        );
        let refused = s.open_unique_display_names(&groups, true);
        assert!(
            matches!(&refused, Err(StoreError::Conflict(m)) if m.contains("\"sales\"")),
            "{name}: {refused:?}"
        );
        // Nothing was recorded: the store still reports the change.
        assert_eq!(
            s.open_unique_display_names(&groups, false).unwrap(),
            None,
            "{name}"
        );
        s.delete(T, "Group", "g2", None).unwrap();
        create(&plain, "g3", "Ops").unwrap();
        assert_eq!(
            s.open_unique_display_names(&groups, true).unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(
            s.open_unique_display_names(&groups, true).unwrap(),
            Some(0),
            "{name}"
        );
        let taken = create(&unique, "g4", "sAlEs");
        assert!(
            matches!(&taken, Err(StoreError::Conflict(m)) if m.contains("Group with this displayName")),
            "{name}: {taken:?}"
        );
        create(&unique, "g5", "Finance").unwrap();
        // A user's unique name is its userName, and the refusal says so.
        s.create(
            T,
            "User",
            "u1",
            NOW,
            user(&unique, "Sales"),
            Include::default(),
        )
        .unwrap();
        let taken = s.create(
            T,
            "User",
            "u2",
            NOW,
            user(&unique, "SALES"),
            Include::default(),
        );
        assert!(
            matches!(&taken, Err(StoreError::Conflict(m)) if m.contains("User with this userName")),
            "{name}: {taken:?}"
        );
        // Closed again: names may repeat, and the stored unique names are cleared.
        assert_eq!(
            s.open_unique_display_names(&[], true).unwrap(),
            Some(3),
            "{name}"
        );
        create(&plain, "g6", "Sales").unwrap();
    }
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

/// Concurrent token lookups (read together on PostgreSQL, see `find_token`) each get the
/// tenant of their own token, none for an unknown or revoked one, and a revocation is seen
/// by every lookup that starts after it.
#[test]
fn concurrent_token_lookups_each_get_their_own_tokens_tenant() {
    use scim_core::store::CredentialStore;
    for db in databases() {
        let s = Arc::new(db.store.clone());
        three_tokens(&s);
        let expect = |hash: &str| match hash {
            "hash-1" => Some(("t1", T)),
            "hash-2" => Some(("t2", "tenant-2")),
            _ => None,
        };
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..40)
                        .map(|n| {
                            let hash = ["hash-1", "hash-2", "hash-3", "unknown"][(i + n) % 4];
                            let found = s.find_token(hash).unwrap();
                            (hash, found.map(|t| (t.id, t.tenant_id)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            for (hash, found) in t.join().unwrap() {
                let want = expect(hash).map(|(id, tenant)| (id.to_string(), tenant.to_string()));
                assert_eq!(found, want, "{} {hash}", db.name);
            }
        }
        assert!(s.revoke_token("t1", NOW).unwrap());
        assert_eq!(s.find_token("hash-1").unwrap(), None, "{}", db.name);
    }
}

/// Tokens `t1` (hash `hash-1`, tenant `T`) and `t2` (`hash-2`, `tenant-2`), live, and `t3`
/// (`hash-3`, `T`), revoked.
fn three_tokens(s: &DieselStore) {
    use scim_core::store::{CredentialStore, TokenRecord};
    s.ensure_tenant("tenant-2", "other", NOW).unwrap();
    for (tenant, id, hash) in [
        (T, "t1", "hash-1"),
        ("tenant-2", "t2", "hash-2"),
        (T, "t3", "hash-3"),
    ] {
        let record = TokenRecord {
            id: id.into(),
            tenant_id: tenant.into(),
            name: id.into(),
            created: NOW.into(),
        };
        s.create_token(&record, hash).unwrap();
    }
    assert!(s.revoke_token("t3", NOW).unwrap());
}

/// Creates by token (on PostgreSQL the token is read by the create's own statement, and
/// concurrent creates share one) land in the tenant of their own token; one whose token is
/// unknown or revoked writes nothing; a taken `userName` is still a conflict, in the token's
/// tenant only. SQLite hands the write back.
#[test]
fn creates_by_token_land_in_their_tokens_tenant_and_nothing_else_is_written() {
    use scim_core::store::TokenCreate;
    let reg = Arc::new(registry());
    for db in databases() {
        let s = Arc::new(db.store.clone());
        three_tokens(&s);
        let write = user(&reg, "x");
        let took = s.create_by_token("hash-1", "User", "x", NOW, write, Include::default());
        if db.name == "sqlite" {
            assert!(matches!(took, Ok(TokenCreate::Unsupported(_))));
            continue;
        }
        assert!(matches!(took, Ok(TokenCreate::Created(_))), "{took:?}");
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (s, reg) = (s.clone(), reg.clone());
                std::thread::spawn(move || {
                    (0..20)
                        .map(|n| {
                            let hash = ["hash-1", "hash-2", "hash-3", "unknown"][(i + n) % 4];
                            let id = format!("u-{i}-{n}");
                            let write = user(&reg, &id);
                            let took = s.create_by_token(
                                hash,
                                "User",
                                &id,
                                NOW,
                                write,
                                Include::default(),
                            );
                            let took = match took.unwrap() {
                                TokenCreate::Created(rec) => Some(rec.id),
                                TokenCreate::NoToken => None,
                                TokenCreate::Unsupported(_) => panic!("PostgreSQL folds it"),
                            };
                            (hash, id, took)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut created = std::collections::HashMap::new();
        for t in threads {
            for (hash, id, took) in t.join().unwrap() {
                let tenant = match hash {
                    "hash-1" => Some(T),
                    "hash-2" => Some("tenant-2"),
                    _ => None,
                };
                assert_eq!(took.as_deref(), tenant.map(|_| id.as_str()), "{hash} {id}");
                for other in [T, "tenant-2"] {
                    let got = s.get(other, "User", &id, Include::default());
                    assert_eq!(got.is_ok(), tenant == Some(other), "{hash} {id} in {other}");
                }
                *created.entry(tenant).or_insert(0) += 1;
            }
        }
        for (tenant, n) in [
            (T, created[&Some(T)] + 1),
            ("tenant-2", created[&Some("tenant-2")]),
        ] {
            let page = s
                .list(tenant, "User", &first_page(StoreFilter::All, 1000))
                .unwrap();
            assert_eq!(page.resources.len(), n, "{tenant}");
            assert_eq!(page.total as usize, n, "{tenant}: the kept count");
        }
        let again = |hash: &str, id: &str| {
            let write = user(&reg, "u-0-0");
            s.create_by_token(hash, "User", id, NOW, write, Include::default())
        };
        assert!(matches!(again("hash-1", "y"), Err(StoreError::Conflict(_))));
        assert!(matches!(again("hash-3", "y"), Ok(TokenCreate::NoToken)));
        assert!(matches!(again("hash-2", "y"), Ok(TokenCreate::Created(_))));
        // Concurrent deletes keep the count too.
        let page = s
            .list(T, "User", &first_page(StoreFilter::All, 1000))
            .unwrap();
        let ids: Vec<String> = page.resources.into_iter().map(|r| r.id).collect();
        std::thread::scope(|scope| {
            for part in ids.chunks(ids.len().div_ceil(8)) {
                let s = &s;
                scope.spawn(move || {
                    for id in part {
                        s.delete(T, "User", id, None).unwrap();
                    }
                });
            }
        });
        let page = s
            .list(T, "User", &first_page(StoreFilter::All, 1000))
            .unwrap();
        assert_eq!((page.resources.len(), page.total), (0, 0));
    }
}

/// Updates by token (on PostgreSQL the token is checked by the update's read, which also
/// reads the groups of the answer) change only a resource of their own token's tenant; an
/// unknown or revoked token, another tenant's resource or a stale `If-Match` writes nothing
/// and never calls the update. Concurrent read-modify-writes through it lose nothing, and a
/// membership change (more than one statement) is applied. SQLite hands the update back.
#[test]
fn updates_by_token_change_only_their_tokens_tenant_and_lose_nothing() {
    use scim_core::store::TokenUpdate;
    let reg = Arc::new(registry());
    let with_groups = Include {
        groups: true,
        ..Include::default()
    };
    let count_of = |rec: &ResourceRecord| {
        rec.data
            .get("nickName")
            .map_or(0, |n| n.as_str().unwrap().parse::<u32>().unwrap())
    };
    let bump = |reg: &SchemaRegistry, cur: &ResourceRecord| {
        let mut w = user(reg, cur.data["userName"].as_str().unwrap());
        w.data
            .insert("nickName".into(), json!((count_of(cur) + 1).to_string()));
        Ok(w)
    };
    for db in databases() {
        let s = Arc::new(db.store.clone());
        three_tokens(&s);
        s.create(T, "User", "a", NOW, user(&reg, "a"), Include::default())
            .unwrap();
        s.create(
            "tenant-2",
            "User",
            "b",
            NOW,
            user(&reg, "b"),
            Include::default(),
        )
        .unwrap();
        s.create(
            T,
            "Group",
            "g",
            NOW,
            group(&reg, "g", &["a"]),
            Include::default(),
        )
        .unwrap();
        let by = |hash: &str,
                  id: &str,
                  if_match: Option<i64>,
                  f: &mut scim_core::store::UpdateFn<'_>| {
            s.update_by_token(hash, "User", id, NOW, if_match, with_groups, f)
        };
        let took = by("hash-1", "a", None, &mut |cur| bump(&reg, cur));
        if db.name == "sqlite" {
            assert!(matches!(took, Ok(TokenUpdate::Unsupported)), "{took:?}");
            continue;
        }
        let Ok(TokenUpdate::Updated(rec)) = took else {
            panic!("{took:?}")
        };
        assert_eq!((rec.version, count_of(&rec)), (2, 1));
        let groups: Vec<_> = rec.groups.unwrap().into_iter().map(|g| g.id).collect();
        assert_eq!(groups, ["g"], "the answer shows the user's groups");
        // Nothing written, and the update never called, for these.
        let never = &mut |_: &ResourceRecord| -> Result<ResourceWrite, scim_core::ScimError> {
            panic!("must not be called")
        };
        for (hash, id, if_match, expected) in [
            ("hash-3", "a", None, "no token"),
            ("unknown", "a", None, "no token"),
            ("hash-2", "a", None, "not found"),
            ("hash-1", "b", None, "not found"),
            ("hash-1", "a", Some(1), "version mismatch"),
        ] {
            let got = match by(hash, id, if_match, never) {
                Ok(TokenUpdate::NoToken) => "no token",
                Err(StoreError::NotFound) => "not found",
                Err(StoreError::VersionMismatch) => "version mismatch",
                other => panic!("{hash} {id}: {other:?}"),
            };
            assert_eq!(got, expected, "{hash} {id} {if_match:?}");
        }
        let a = s.get(T, "User", "a", Include::default()).unwrap();
        assert_eq!((a.version, count_of(&a)), (2, 1));
        // Concurrent read-modify-writes of one user, each adding one.
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let (s, reg) = (&s, &reg);
                scope.spawn(move || {
                    for _ in 0..10 {
                        let took = s.update_by_token(
                            "hash-1",
                            "User",
                            "a",
                            NOW,
                            None,
                            with_groups,
                            &mut |cur| bump(reg, cur),
                        );
                        assert!(matches!(took, Ok(TokenUpdate::Updated(_))), "{took:?}");
                    }
                });
            }
        });
        let a = s.get(T, "User", "a", Include::default()).unwrap();
        assert_eq!((a.version, count_of(&a)), (82, 81), "no update lost");
        // A membership change takes more than one statement.
        s.create(T, "User", "c", NOW, user(&reg, "c"), Include::default())
            .unwrap();
        let ctx = Ctx::new(&reg, "Group").unwrap();
        let took = s.update_by_token(
            "hash-1",
            "Group",
            "g",
            NOW,
            None,
            Include::default(),
            &mut |cur| {
                Ok(ResourceWrite {
                    data: (*cur.data).clone(),
                    external_id: cur.external_id.clone(),
                    keys: scim_core::resource::index_keys(&ctx, &cur.data),
                    member_ops: vec![MemberOp::Add(vec!["c".into()])],
                    unknown_members: UnknownMembers::Reject,
                    password: Default::default(),
                    values: Vec::new(),
                    previous_values: None,
                })
            },
        );
        assert!(matches!(took, Ok(TokenUpdate::Updated(_))), "{took:?}");
        assert_eq!(member_ids(&s, "g"), ["a", "c"]);
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
                    s.delete(T, "User", id, None).unwrap();
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
                            s.delete(tenant, rt, &id, None).unwrap();
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

/// A PATCH body of one to three operations as clients send them: on multi-valued complex
/// attributes (whole, by element filter, by sub-attribute), single-valued complex and simple
/// ones, the enterprise extension, and path-less values; some refused by core.
fn random_patch(rng: &mut Rng) -> serde_json::Value {
    const EXT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let word = |rng: &mut Rng| json!(rng.pick(WORDS));
    let email = |rng: &mut Rng| json!({"value": format!("{}@x.example", rng.pick(WORDS)), "type": rng.pick(&["work", "home"])});
    let ops: Vec<_> = (0..1 + rng.next() % 3)
        .map(|_| {
            let op = *rng.pick(&["add", "replace", "remove"]);
            let (path, value) = match rng.next() % 14 {
                0 => ("emails".to_string(), json!([email(rng), email(rng)])),
                1 => ("emails".to_string(), json!([email(rng)])),
                2 => (
                    format!("emails[type eq \"{}\"].value", rng.pick(&["work", "home"])),
                    json!(format!("{}@y.example", rng.pick(WORDS))),
                ),
                3 => ("emails[type eq \"home\"]".to_string(), email(rng)),
                4 => ("emails.primary".to_string(), json!(rng.chance(50))),
                5 => ("name.givenName".to_string(), word(rng)),
                6 => ("name".to_string(), json!({"familyName": rng.pick(WORDS)})),
                7 => ("title".to_string(), word(rng)),
                8 => ("active".to_string(), json!(rng.chance(50))),
                9 => (format!("{EXT}:department"), word(rng)),
                10 => (format!("{EXT}:manager.value"), word(rng)),
                11 => (
                    "phoneNumbers".to_string(),
                    json!([{"value": rng.pick(WORDS), "type": "work"}]),
                ),
                12 => (
                    "addresses[type eq \"work\"].postalCode".to_string(),
                    word(rng),
                ),
                _ => (
                    String::new(),
                    json!({"nickName": rng.pick(WORDS), "name.familyName": rng.pick(WORDS),
                        format!("{EXT}:costCenter"): rng.pick(WORDS)}),
                ),
            };
            match (op, path.is_empty()) {
                ("remove", true) => json!({"op": "remove", "path": "nickName"}),
                ("remove", false) => json!({"op": "remove", "path": path}),
                (_, true) => json!({"op": op, "value": value}),
                (_, false) => json!({"op": op, "path": path, "value": value}),
            }
        })
        .collect();
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops})
}

/// Updates keep the attribute index incrementally (only the rows that change are written,
/// derived from the document they replace when the index is opened with the server's schemas,
/// read from the database otherwise). After every one of a few hundred random PATCHes and
/// PUTs, each resource's stored index rows are exactly those its stored document derives: no
/// row of a removed value stays behind to match a filter, none of a new value is missing.
#[test]
fn random_updates_leave_every_resource_the_index_rows_of_its_document() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let limits = scim_filter::Limits::default();
    for opened in [false, true] {
        for db in databases() {
            let s = &db.store;
            if opened {
                let fp = scim_core::index::fingerprint(&reg);
                s.open_index(&fp, true, derive_with(&reg)).unwrap();
            }
            let mut rng = Rng(0x1dec_5eed_0000_0001 + u64::from(opened));
            let ids: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
            for (i, id) in ids.iter().enumerate() {
                let write = prepare_create(&ctx, &random_user(&mut rng, i)).unwrap();
                s.create(T, "User", id, NOW, write, Include::default())
                    .unwrap();
            }
            let (mut applied, mut refused) = (0, 0);
            for round in 0..150 {
                let id = rng.pick(&ids).clone();
                let body = if rng.chance(10) {
                    let mut u = random_user(&mut rng, round + 10);
                    u["userName"] = json!(format!("{id}-{round}"));
                    u
                } else {
                    random_patch(&mut rng)
                };
                let put = body.get("userName").is_some();
                let res = s.update(T, "User", &id, NOW, None, Include::default(), &mut |cur| {
                    if put {
                        scim_core::resource::prepare_replace(&ctx, &body, cur)
                    } else {
                        scim_core::patch::prepare_patch(&ctx, &body, cur, &limits)
                    }
                });
                match res {
                    Ok(_) => applied += 1,
                    Err(StoreError::Scim(_)) => refused += 1,
                    Err(e) => panic!("{} round {round}: {e:?} for {body}", db.name),
                }
                assert_eq!(
                    stored_rows(s, &id),
                    derived_rows(s, &reg, &id),
                    "{} (index opened: {opened}) round {round}, after {body}",
                    db.name
                );
            }
            assert!(
                applied > 100 && refused > 0,
                "{}: {applied} applied, {refused} refused",
                db.name
            );
        }
    }
}

/// The same under concurrency: four threads PATCH and PUT the same three users at random (on
/// PostgreSQL optimistic writes that plan again when another landed first, on SQLite plans
/// handed back by the writer when stale). Afterwards every user's index rows are exactly those
/// of its document, and its version counts every update that changed it (an update that
/// changes nothing keeps the version, and answers with it).
#[test]
fn concurrent_random_updates_leave_every_resource_the_index_rows_of_its_document() {
    const THREADS: u64 = 4;
    const ROUNDS: usize = 60;
    let reg = registry();
    for opened in [false, true] {
        for db in databases() {
            let s = &db.store;
            if opened {
                let fp = scim_core::index::fingerprint(&reg);
                s.open_index(&fp, true, derive_with(&reg)).unwrap();
            }
            let ctx = Ctx::new(&reg, "User").unwrap();
            let ids: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
            let mut rng = Rng(0x3dec_5eed_0000_0001 + u64::from(opened));
            for (i, id) in ids.iter().enumerate() {
                let write = prepare_create(&ctx, &random_user(&mut rng, i)).unwrap();
                s.create(T, "User", id, NOW, write, Include::default())
                    .unwrap();
            }
            let applied: Vec<std::sync::atomic::AtomicI64> =
                ids.iter().map(|_| Default::default()).collect();
            std::thread::scope(|scope| {
                for t in 0..THREADS {
                    let (reg, ids, applied) = (&reg, &ids, &applied);
                    scope.spawn(move || {
                        let ctx = Ctx::new(reg, "User").unwrap();
                        let limits = scim_filter::Limits::default();
                        let mut rng = Rng(0x4dec_5eed_0000_0001 + t * 7 + u64::from(opened));
                        for round in 0..ROUNDS {
                            let k = (rng.next() % ids.len() as u64) as usize;
                            let put = rng.chance(10);
                            let body = if put {
                                let mut u = random_user(&mut rng, round);
                                u["userName"] = json!(format!("{}-{t}-{round}", ids[k]));
                                u
                            } else {
                                random_patch(&mut rng)
                            };
                            let mut seen = 0;
                            let res = s.update(
                                T,
                                "User",
                                &ids[k],
                                NOW,
                                None,
                                Include::default(),
                                &mut |cur| {
                                    seen = cur.version;
                                    if put {
                                        scim_core::resource::prepare_replace(&ctx, &body, cur)
                                    } else {
                                        scim_core::patch::prepare_patch(&ctx, &body, cur, &limits)
                                    }
                                },
                            );
                            match res {
                                Ok(rec) if rec.version == seen + 1 => {
                                    applied[k].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Ok(rec) => assert_eq!(rec.version, seen, "{}: {body}", db.name),
                                Err(StoreError::Scim(_)) => {}
                                Err(e) => panic!("{}: {e:?} for {body}", db.name),
                            }
                        }
                    });
                }
            });
            for (k, id) in ids.iter().enumerate() {
                let rec = s.get(T, "User", id, Include::default()).unwrap();
                assert_eq!(
                    rec.version,
                    1 + applied[k].load(std::sync::atomic::Ordering::Relaxed),
                    "{} (index opened: {opened}): {id}'s version counts its changes",
                    db.name
                );
                assert_eq!(
                    stored_rows(s, id),
                    derived_rows(s, &reg, id),
                    "{} (index opened: {opened}): {id}",
                    db.name
                );
            }
        }
    }
}
