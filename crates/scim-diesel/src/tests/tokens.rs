//! Reads, creates and updates checked against a bearer token in their own statements.

use super::*;

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
                        s.delete(T, "User", id, None, NOW).unwrap();
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
