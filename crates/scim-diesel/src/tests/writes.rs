//! Concurrent and detached writes: shared commits, optimistic updates planned again, and the
//! attribute index kept row by row under random updates.

use super::*;

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

/// Users `ids` created from [`random_user`] on `s`, whose attribute index is first opened with
/// `reg`'s schemas when `opened` (as the server opens it: updates then derive the rows they
/// replace from the document instead of reading them).
fn random_users(
    s: &DieselStore,
    reg: &SchemaRegistry,
    ids: &[String],
    opened: bool,
    rng: &mut Rng,
) {
    if opened {
        let fp = scim_core::index::fingerprint(reg);
        s.open_index(&fp, true, derive_with(reg)).unwrap();
    }
    let ctx = Ctx::new(reg, "User").unwrap();
    for (i, id) in ids.iter().enumerate() {
        let write = prepare_create(&ctx, &random_user(rng, i)).unwrap();
        s.create(T, "User", id, NOW, write, Include::default())
            .unwrap();
    }
}

/// A random update of user `id` as clients send them: one time in ten a PUT of a
/// [`random_user`] named `name`, else a [`random_patch`]. Returns the answer and the version
/// the update was planned from (the last one, if it was planned again).
fn random_update(
    s: &DieselStore,
    reg: &SchemaRegistry,
    id: &str,
    name: String,
    rng: &mut Rng,
) -> (Result<ResourceRecord, StoreError>, i64, serde_json::Value) {
    let ctx = Ctx::new(reg, "User").unwrap();
    let limits = scim_filter::Limits::default();
    let put = rng.chance(10);
    let body = if put {
        let mut u = random_user(rng, 0);
        u["userName"] = json!(name);
        u
    } else {
        random_patch(rng)
    };
    let mut seen = 0;
    let res = s.update(T, "User", id, NOW, None, Include::default(), &mut |cur| {
        seen = cur.version;
        if put {
            scim_core::resource::prepare_replace(&ctx, &body, cur)
        } else {
            scim_core::patch::prepare_patch(&ctx, &body, cur, &limits)
        }
    });
    (res, seen, body)
}

/// Updates keep the attribute index incrementally (only the rows that change are written,
/// derived from the document they replace when the index is opened with the server's schemas,
/// read from the database otherwise). After every one of a few hundred random PATCHes and
/// PUTs, each resource's stored index rows are exactly those its stored document derives: no
/// row of a removed value stays behind to match a filter, none of a new value is missing.
#[test]
fn random_updates_leave_every_resource_the_index_rows_of_its_document() {
    let reg = registry();
    for opened in [false, true] {
        for db in databases() {
            let s = &db.store;
            let mut rng = Rng(0x1dec_5eed_0000_0001 + u64::from(opened));
            let ids: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
            random_users(s, &reg, &ids, opened, &mut rng);
            let (mut applied, mut refused) = (0, 0);
            for round in 0..150 {
                let id = rng.pick(&ids).clone();
                let (res, _, body) = random_update(s, &reg, &id, format!("{id}-{round}"), &mut rng);
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
    use std::sync::atomic::{AtomicI64, Ordering};
    const THREADS: u64 = 4;
    const ROUNDS: usize = 60;
    let reg = registry();
    for opened in [false, true] {
        for db in databases() {
            let s = &db.store;
            let ids: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
            random_users(s, &reg, &ids, opened, &mut Rng(0x3dec_5eed_0000_0001));
            let changes: Vec<AtomicI64> = ids.iter().map(|_| Default::default()).collect();
            std::thread::scope(|scope| {
                for t in 0..THREADS {
                    let (reg, ids, changes) = (&reg, &ids, &changes);
                    scope.spawn(move || {
                        let mut rng = Rng(0x4dec_5eed_0000_0001 + t * 7 + u64::from(opened));
                        for round in 0..ROUNDS {
                            let k = (rng.next() % ids.len() as u64) as usize;
                            let name = format!("{}-{t}-{round}", ids[k]);
                            match random_update(s, reg, &ids[k], name, &mut rng) {
                                (Ok(rec), seen, _) if rec.version == seen + 1 => {
                                    changes[k].fetch_add(1, Ordering::Relaxed);
                                }
                                (Ok(rec), seen, body) => {
                                    assert_eq!(rec.version, seen, "{}: {body}", db.name)
                                }
                                (Err(StoreError::Scim(_)), ..) => {}
                                (Err(e), _, body) => panic!("{}: {e:?} for {body}", db.name),
                            }
                        }
                    });
                }
            });
            for (k, id) in ids.iter().enumerate() {
                let rec = s.get(T, "User", id, Include::default()).unwrap();
                assert_eq!(
                    rec.version,
                    1 + changes[k].load(Ordering::Relaxed),
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

/// Users and groups (the groups without members) created with these ids.
fn users_and_groups(s: &DieselStore, reg: &SchemaRegistry, users: &[String], groups: &[String]) {
    for u in users {
        s.create(T, "User", u, NOW, user(reg, u), Include::default())
            .unwrap();
    }
    for g in groups {
        s.create(T, "Group", g, NOW, group(reg, g, &[]), Include::default())
            .unwrap();
    }
}

/// After racing writes: every member of every stored group is stored, every stored resource's
/// direct `groups` are exactly the groups that list it, and the kept totals are the rows there
/// are. Returns the stored groups.
fn assert_memberships_consistent(s: &DieselStore, db: &str) -> Vec<ResourceRecord> {
    use std::collections::{BTreeMap, BTreeSet};
    let all = |rt| {
        s.list(T, rt, &first_page(StoreFilter::All, 1000))
            .unwrap()
            .resources
    };
    let (users, groups) = (all("User"), all("Group"));
    let stored: BTreeSet<&str> = users.iter().chain(&groups).map(|r| r.id.as_str()).collect();
    let with = |members, groups| Include {
        members,
        groups,
        member_limit: None,
    };
    let mut listed_in: BTreeMap<String, BTreeSet<String>> = Default::default();
    for g in &groups {
        let rec = s.get(T, "Group", &g.id, with(true, false)).unwrap();
        for m in rec.members.unwrap() {
            assert!(
                stored.contains(m.id.as_str()),
                "{db}: {} lists {}, which is not stored",
                g.id,
                m.id
            );
            listed_in.entry(m.id).or_default().insert(g.id.clone());
        }
    }
    let typed = users.iter().map(|r| ("User", r));
    for (rt, r) in typed.chain(groups.iter().map(|r| ("Group", r))) {
        let rec = s.get(T, rt, &r.id, with(false, true)).unwrap();
        let direct: BTreeSet<String> = rec
            .groups
            .unwrap()
            .into_iter()
            .filter(|m| !m.indirect)
            .map(|m| m.id)
            .collect();
        assert_eq!(
            direct,
            listed_in.remove(&r.id).unwrap_or_default(),
            "{db}: {}'s groups are the groups that list it",
            r.id
        );
    }
    let total = |rt| {
        s.list(T, rt, &first_page(StoreFilter::All, 0))
            .unwrap()
            .total
    };
    assert_eq!(total("User"), users.len() as u64, "{db}");
    assert_eq!(total("Group"), groups.len() as u64, "{db}");
    groups
}

/// Random membership changes (adds, removes, replacements of the whole list) from eight threads
/// on four groups, racing creates and deletes of the users they name. No change fails for
/// another reason than a member it names being gone (on PostgreSQL a member deleted between a
/// change's check and its insert made the foreign key refuse the insert, an error 500 until the
/// change was planned again). Afterwards every member of a group is a stored user, every
/// user's `groups` are exactly the groups that list it, and the kept totals are the rows there
/// are.
#[test]
fn concurrent_random_membership_changes_and_deletes_leave_members_and_groups_consistent() {
    const THREADS: u64 = 8;
    const ROUNDS: usize = 300;
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        let users: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let groups: Vec<String> = (0..4).map(|i| format!("g{i}")).collect();
        users_and_groups(s, &reg, &users, &groups);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (reg, users, groups) = (&reg, &users, &groups);
                scope.spawn(move || {
                    let mut rng = Rng(0x6dec_5eed_0000_0001 + t * 11);
                    let some = |rng: &mut Rng, n: u64| -> Vec<String> {
                        (0..1 + rng.next() % n)
                            .map(|_| rng.pick(users).clone())
                            .collect()
                    };
                    for round in 0..ROUNDS {
                        let g = rng.pick(groups).clone();
                        let result = match rng.next() % 10 {
                            0..=3 => set_members(s, &g, vec![MemberOp::Add(some(&mut rng, 5))]),
                            4..=5 => set_members(s, &g, vec![MemberOp::Remove(some(&mut rng, 3))]),
                            6 => set_members(
                                s,
                                &g,
                                vec![MemberOp::RemoveAll, MemberOp::Add(some(&mut rng, 4))],
                            ),
                            7 => s.delete(T, "User", rng.pick(users).as_str(), None, NOW),
                            _ => {
                                // A user deleted earlier comes back under a new id.
                                let name = format!("n{t}-{round}");
                                s.create(
                                    T,
                                    "User",
                                    &name,
                                    NOW,
                                    user(reg, &name),
                                    Include::default(),
                                )
                                .map(|_| ())
                            }
                        };
                        match result {
                            Ok(()) | Err(StoreError::NotFound) | Err(StoreError::Scim(_)) => {}
                            Err(e) => panic!("{}: {e:?}", db.name),
                        }
                    }
                });
            }
        });
        assert_memberships_consistent(s, db.name);
    }
}

/// Groups changing under each other: eight threads add users and groups as members (nested
/// groups), remove them, rename groups (with unique group names on and off), replace a group
/// with PUT, delete groups and users and create new ones. No write fails for another reason
/// than what it names being gone or a name being taken; afterwards every member is stored,
/// every resource's `groups` are the groups that list it directly, every index row is its
/// document's, and the kept totals are the rows there are.
#[test]
fn concurrent_random_group_changes_leave_members_groups_and_names_consistent() {
    const THREADS: u64 = 8;
    const ROUNDS: usize = 200;
    for unique in [false, true] {
        let reg = match unique {
            false => registry(),
            true => registry().with_unique_display_names("Group").unwrap(),
        };
        for db in databases() {
            let s = &db.store;
            let types: Vec<String> = if unique { vec!["Group".into()] } else { vec![] };
            s.open_unique_display_names(&types, true).unwrap();
            let users: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
            let groups: Vec<String> = (0..6).map(|i| format!("g{i}")).collect();
            users_and_groups(s, &reg, &users, &groups);
            let names = ["Sales", "sales", "Eng", "Ops", "OPS", "Legal"];
            std::thread::scope(|scope| {
                for t in 0..THREADS {
                    let (reg, users, groups) = (&reg, &users, &groups);
                    scope.spawn(move || {
                        let ctx = Ctx::new(reg, "Group").unwrap();
                        let limits = scim_filter::Limits::default();
                        let mut rng = Rng(0x8dec_5eed_0000_0001 + t * 19 + u64::from(unique));
                        let some = |rng: &mut Rng, n: u64| -> Vec<String> {
                            (0..1 + rng.next() % n)
                                .map(|_| {
                                    if rng.chance(25) {
                                        rng.pick(groups).clone()
                                    } else {
                                        rng.pick(users).clone()
                                    }
                                })
                                .collect()
                        };
                        for round in 0..ROUNDS {
                            let g = rng.pick(groups).clone();
                            let kind = rng.next() % 12;
                            let result = match kind {
                                0..=3 => set_members(s, &g, vec![MemberOp::Add(some(&mut rng, 4))]),
                                4 => set_members(s, &g, vec![MemberOp::Remove(some(&mut rng, 3))]),
                                5 => {
                                    let name = *rng.pick(&names);
                                    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                        "Operations": [{"op": "replace", "path": "displayName", "value": name}]});
                                    s.update(T, "Group", &g, NOW, None, Include::default(), &mut |cur| {
                                        scim_core::patch::prepare_patch(&ctx, &body, cur, &limits)
                                    })
                                    .map(|_| ())
                                }
                                6 => {
                                    let members: Vec<_> = some(&mut rng, 4)
                                        .into_iter()
                                        .map(|m| json!({"value": m}))
                                        .collect();
                                    let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                        "displayName": format!("{g}-put-{t}-{round}"), "members": members});
                                    s.update(T, "Group", &g, NOW, None, Include::default(), &mut |cur| {
                                        scim_core::resource::prepare_replace(&ctx, &body, cur)
                                    })
                                    .map(|_| ())
                                }
                                7 => s.delete(T, "Group", &g, None, NOW),
                                8 => s.delete(T, "User", rng.pick(users).as_str(), None, NOW),
                                9 => {
                                    // A deleted group comes back under its id (ids are the
                                    // caller's here), with members.
                                    let members = some(&mut rng, 3);
                                    let members: Vec<&str> = members.iter().map(String::as_str).collect();
                                    s.create(T, "Group", &g, NOW, group(reg, &format!("{g}-{t}-{round}"), &members), Include::default())
                                        .map(|_| ())
                                }
                                _ => {
                                    let name = format!("n{t}-{round}");
                                    s.create(T, "User", &name, NOW, user(reg, &name), Include::default())
                                        .map(|_| ())
                                }
                            };
                            match result {
                                Ok(())
                                | Err(StoreError::NotFound)
                                | Err(StoreError::Conflict(_))
                                | Err(StoreError::Scim(_)) => {}
                                Err(e) => panic!("{} (unique names: {unique}), operation {kind}: {e:?}", db.name),
                            }
                        }
                    });
                }
            });
            let stored_groups = assert_memberships_consistent(s, db.name);
            if unique {
                let names: std::collections::BTreeSet<String> = stored_groups
                    .iter()
                    .map(|g| g.data["displayName"].as_str().unwrap().to_lowercase())
                    .collect();
                assert_eq!(
                    names.len(),
                    stored_groups.len(),
                    "{}: a group name twice",
                    db.name
                );
            }
        }
    }
}

/// Users trading names: eight threads rename eight users at random among eight names (one
/// user's new name is often another's current one, being renamed at the same moment). Every
/// rename lands or is a 409 for a name still taken; none fails otherwise (on PostgreSQL two
/// renames swapping names wait for each other's unique-index entry: a deadlock PostgreSQL
/// breaks, and the failed rename is run again). Afterwards the names are unique and each
/// user's index rows are its document's.
#[test]
fn concurrent_renames_among_few_names_land_or_conflict() {
    const THREADS: u64 = 8;
    const ROUNDS: usize = 400;
    let reg = registry();
    let names: Vec<String> = (0..8).map(|i| format!("name{i}")).collect();
    for db in databases() {
        let s = &db.store;
        let ids: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        for (id, name) in ids.iter().zip(&names) {
            s.create(T, "User", id, NOW, user(&reg, name), Include::default())
                .unwrap();
        }
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (reg, ids, names) = (&reg, &ids, &names);
                scope.spawn(move || {
                    let ctx = Ctx::new(reg, "User").unwrap();
                    let limits = scim_filter::Limits::default();
                    let mut rng = Rng(0xaded_5eed_0000_0001 + t * 23);
                    for _ in 0..ROUNDS {
                        let id = rng.pick(ids);
                        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "userName", "value": rng.pick(names)}]});
                        let res = s.update(T, "User", id, NOW, None, Include::default(), &mut |cur| {
                            scim_core::patch::prepare_patch(&ctx, &body, cur, &limits)
                        });
                        match res {
                            Ok(_) | Err(StoreError::Conflict(_)) => {}
                            Err(e) => panic!("{}: {e:?}", db.name),
                        }
                    }
                });
            }
        });
        let mut held: Vec<String> = ids
            .iter()
            .map(|id| {
                let rec = s.get(T, "User", id, Include::default()).unwrap();
                assert_eq!(stored_rows(s, id), derived_rows(s, &reg, id), "{}", db.name);
                rec.data["userName"].as_str().unwrap().to_string()
            })
            .collect();
        held.sort();
        held.dedup();
        assert_eq!(held.len(), ids.len(), "{}: a userName held twice", db.name);
    }
}

/// Optimistic concurrency as clients use it: eight threads each read a user and write it back
/// with `If-Match` of the version they read, again and again. A write lands only on the
/// version it names (exactly one of the writers holding a version wins it, the others get a
/// version mismatch, read again and retry), so the final version counts the writes that
/// landed and the last title is the one written for that version, on both databases. Half
/// the threads also add the user to a group between their writes (a transaction naming it).
#[test]
fn if_match_writes_from_racing_clients_land_once_per_version() {
    use std::sync::atomic::{AtomicI64, Ordering};
    const THREADS: u64 = 8;
    const WRITES: usize = 25;
    let reg = registry();
    for db in databases() {
        let s = &db.store;
        users_and_groups(s, &reg, &["target".to_string()], &["g".to_string()]);
        let landed = AtomicI64::new(0);
        let mismatches = AtomicI64::new(0);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (reg, landed, mismatches) = (&reg, &landed, &mismatches);
                scope.spawn(move || {
                    let ctx = Ctx::new(reg, "User").unwrap();
                    let limits = scim_filter::Limits::default();
                    let mut done = 0;
                    while done < WRITES {
                        let read = s.get(T, "User", "target", Include::default()).unwrap();
                        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "title", "value": format!("v{}", read.version + 1)}]});
                        let res = s.update(T, "User", "target", NOW, Some(read.version), Include::default(), &mut |cur| {
                            scim_core::patch::prepare_patch(&ctx, &body, cur, &limits)
                        });
                        match res {
                            Ok(rec) => {
                                assert_eq!(rec.version, read.version + 1, "{}", db.name);
                                landed.fetch_add(1, Ordering::Relaxed);
                                done += 1;
                                if t % 2 == 0 {
                                    // A membership change of another resource in between.
                                    let _ = set_members(s, "g", vec![MemberOp::Add(vec!["target".into()])]);
                                }
                            }
                            Err(StoreError::VersionMismatch) => {
                                mismatches.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("{}: {e:?}", db.name),
                        }
                    }
                });
            }
        });
        let rec = s.get(T, "User", "target", Include::default()).unwrap();
        let landed = landed.load(Ordering::Relaxed);
        assert_eq!(landed, (THREADS as i64) * WRITES as i64, "{}", db.name);
        assert_eq!(
            rec.version,
            1 + landed,
            "{}: one version per landed write",
            db.name
        );
        assert_eq!(
            rec.data["title"],
            json!(format!("v{}", rec.version)),
            "{}: the last write's title, named for its version",
            db.name
        );
        assert!(
            mismatches.load(Ordering::Relaxed) > 0,
            "{}: the writers raced",
            db.name
        );
    }
}
