//! The attribute index as a whole: rebuilt when its schemas change, noticed by other instances,
//! unique group names.

use super::*;

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
        s.delete(T, "Group", "g2", None, NOW).unwrap();
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
