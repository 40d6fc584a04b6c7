//! Production behaviour on PostgreSQL: several server processes on one database, and a
//! database that goes away and comes back. Runs when `SCIM_TEST_POSTGRES_URL` is set
//! (always under CI).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};

use crate::hostile::Rng;
use crate::server::{Db, TestServer};

fn send(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    crate::server::call(s, method, path, body, &[])
}

fn pg() -> Option<String> {
    scim_diesel::testing::postgres_test_url()
}

/// Two server processes on a fresh schema of the test database, with the same token.
fn two_instances(base: &str) -> (TestServer, TestServer) {
    let url = scim_diesel::testing::fresh_postgres_schema(base).unwrap();
    let bin = env!("CARGO_BIN_EXE_scim-server");
    let a = TestServer::spawn_binary(bin, &Db::Exact(url.clone()));
    // The second instance finds a token in the database and creates none: use the first's.
    let mut b = TestServer::spawn_binary(bin, &Db::Exact(url));
    b.token = a.token.clone();
    (a, b)
}

#[test]
fn two_server_processes_on_one_database_agree() {
    let Some(base) = pg() else { return };
    let (a, b) = two_instances(&base);
    let servers = [&a, &b];
    let client = Client::new();

    // Racing creates of the same 10 userNames through both instances: exactly one winner each.
    let outcomes: Vec<(usize, u16)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let s = servers[i % 2];
                scope.spawn(move || {
                    let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("Shared{}", i % 10)});
                    (i % 10, send(s, reqwest::Method::POST, "/Users", Some(body)).0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for name in 0..10 {
        let codes: Vec<u16> = outcomes
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .collect();
        assert_eq!(
            codes.iter().filter(|&&c| c == 201).count(),
            1,
            "Shared{name}: {codes:?}"
        );
        assert!(
            codes.iter().all(|&c| c == 201 || c == 409),
            "Shared{name}: {codes:?}"
        );
    }
    let (_, list, _) = send(&b, reqwest::Method::GET, "/Users?count=100", None);
    assert_eq!(list["totalResults"], json!(10));
    let ids: Vec<String> = list["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();

    // Concurrent membership PATCHes to one group through both instances lose nothing.
    let (status, g, _) = send(
        &a,
        reqwest::Method::POST,
        "/Groups",
        Some(
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Shared"}),
        ),
    );
    assert_eq!(status, 201);
    let gid = g["id"].as_str().unwrap().to_string();
    std::thread::scope(|scope| {
        for (i, id) in ids.iter().enumerate() {
            let (s, gid) = (servers[i % 2], &gid);
            scope.spawn(move || {
                let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]});
                let (status, _, _) = send(s, reqwest::Method::PATCH, &format!("/Groups/{gid}"), Some(body));
                assert_eq!(status, 200);
            });
        }
    });
    // Both instances see the same, complete group at the same version; ETags agree.
    let (_, ga, ha) = send(&a, reqwest::Method::GET, &format!("/Groups/{gid}"), None);
    let (_, gb, hb) = send(&b, reqwest::Method::GET, &format!("/Groups/{gid}"), None);
    assert_eq!(ga["members"].as_array().map(Vec::len), Some(10));
    // Identical but for each instance's own base URL (behind a load balancer they share one).
    let gb = serde_json::from_str::<Value>(&gb.to_string().replace(&b.base, &a.base)).unwrap();
    assert_eq!(ga, gb);
    assert_eq!(ha["etag"], hb["etag"]);
    assert_eq!(ga["meta"]["version"], json!("W/\"11\""));
    // A stale If-Match through the other instance is refused.
    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "displayName", "value": "x"}]});
    let r = client
        .patch(format!("{}/Groups/{gid}", b.base))
        .bearer_auth(&b.token)
        .header("content-type", "application/scim+json")
        .header("if-match", "W/\"10\"")
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 412);
}

/// A TCP relay that can cut every connection and refuse new ones, standing in for a
/// database that goes down.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                conns2
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, up, conns }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `postgres://user@host:port/db?...` with host:port replaced.
fn via(url: &str, port: u16) -> (String, String) {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[after_scheme..];
    let host_start = after_scheme + rest.find('@').map(|i| i + 1).unwrap_or(0);
    let host_end = host_start
        + url[host_start..]
            .find(['/', '?'])
            .unwrap_or(url.len() - host_start);
    let upstream = url[host_start..host_end].to_string();
    let upstream = if upstream.contains(':') {
        upstream
    } else {
        format!("{upstream}:5432")
    };
    (
        format!("{}127.0.0.1:{port}{}", &url[..host_start], &url[host_end..]),
        upstream,
    )
}

/// How the outage tests reach PostgreSQL: plain TCP, and TLS when this PostgreSQL offers it
/// (a lost TLS connection fails with libpq's `SSL ...` messages instead of the plain ones).
fn ssl_modes(base: &str) -> Vec<&'static str> {
    if scim_diesel::testing::postgres_offers_tls(base).unwrap() {
        vec!["disable", "require"]
    } else {
        eprintln!("this PostgreSQL has no TLS: the outage tests run over plain TCP only");
        vec!["disable"]
    }
}

/// A server whose PostgreSQL connections go through a [`Relay`] with `sslmode`, with one user
/// created.
fn relayed(base: &str, sslmode: &str, pool_size: u32, user_name: &str) -> (Relay, TestServer) {
    let schema_url = scim_diesel::testing::fresh_postgres_schema(base).unwrap();
    let schema_url = format!("{schema_url}&sslmode={sslmode}");
    let (_, upstream) = via(&schema_url, 0);
    let relay = Relay::start(upstream);
    let (proxied, _) = via(&schema_url, relay.port);
    let s = TestServer::start_with(&Db::Exact(proxied), |c| {
        c.connect_timeout = Duration::from_millis(800);
        c.pool_size = pool_size;
    });
    let user =
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": user_name});
    assert_eq!(send(&s, reqwest::Method::POST, "/Users", Some(user)).0, 201);
    (relay, s)
}

/// Identity providers changing memberships through two instances while users are deleted
/// and created, over HTTP: group PATCHes (add, remove with a value list, replace), PUTs with
/// members, groups as members of groups, user PATCHes, deletes, and `/Bulk` requests that
/// create a user and add it by `bulkId`. No answer is a 5xx (a member deleted under a change,
/// and deadlocks, gave a few 500s in most runs before such transactions were run again), and
/// afterwards every member of every group is a stored resource and every user's `groups` are
/// the groups that list it.
#[test]
fn racing_membership_changes_and_deletes_through_two_instances_answer_no_5xx() {
    let Some(base) = pg() else { return };
    let (a, b) = two_instances(&base);
    let servers = [&a, &b];
    let (user, group, patch) = (
        "urn:ietf:params:scim:schemas:core:2.0:User",
        "urn:ietf:params:scim:schemas:core:2.0:Group",
        "urn:ietf:params:scim:api:messages:2.0:PatchOp",
    );
    let create = |rt: &str, body: Value| {
        let (status, created, _) = send(&a, reqwest::Method::POST, rt, Some(body));
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_string()
    };
    let users: Vec<String> = (0..24)
        .map(|i| {
            create(
                "/Users",
                json!({"schemas": [user], "userName": format!("race{i}")}),
            )
        })
        .collect();
    let groups: Vec<String> = (0..5)
        .map(|i| {
            create(
                "/Groups",
                json!({"schemas": [group], "displayName": format!("team{i}")}),
            )
        })
        .collect();
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let (users, groups, errors) = (&users, &groups, &errors);
            scope.spawn(move || {
                let mut rng = Rng(t + 1);
                for round in 0..200 {
                    let s = *rng.pick(&servers);
                    let g = rng.pick(groups);
                    let some = |rng: &mut Rng, n: usize| -> Vec<Value> {
                        (0..1 + rng.below(n))
                            .map(|_| {
                                let all = if rng.chance(25) { groups } else { users };
                                json!({"value": rng.pick(all)})
                            })
                            .collect()
                    };
                    let any_user = rng.pick(users).clone();
                    let kind = rng.below(10);
                    let ops = |op: &str, path: &str, value: Value| {
                        json!({"schemas": [patch], "Operations": [{"op": op, "path": path, "value": value}]})
                    };
                    let (method, path, body) = match kind {
                        0..=2 => ("PATCH", format!("/Groups/{g}"), ops("add", "members", json!(some(&mut rng, 5)))),
                        3 => ("PATCH", format!("/Groups/{g}"), ops("remove", "members", json!(some(&mut rng, 3)))),
                        4 => ("PATCH", format!("/Groups/{g}"), ops("replace", "members", json!(some(&mut rng, 4)))),
                        5 => (
                            "PUT",
                            format!("/Groups/{g}"),
                            json!({"schemas": [group], "displayName": format!("team-{t}-{round}"), "members": some(&mut rng, 4)}),
                        ),
                        6 => ("DELETE", format!("/Users/{any_user}"), Value::Null),
                        7 => (
                            "PATCH",
                            format!("/Users/{any_user}"),
                            ops("replace", "title", json!(format!("t{round}"))),
                        ),
                        _ => (
                            "POST",
                            "/Bulk".to_string(),
                            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": [
                                {"method": "POST", "path": "/Users", "bulkId": "n",
                                 "data": {"schemas": [user], "userName": format!("bulk-{t}-{round}")}},
                                {"method": "PATCH", "path": format!("/Groups/{g}"),
                                 "data": {"schemas": [patch], "Operations": [{"op": "add", "path": "members",
                                    "value": [{"value": "bulkId:n"}]}]}},
                                {"method": "PATCH", "path": format!("/Groups/{g}"),
                                 "data": ops("add", "members", json!(some(&mut rng, 3)))},
                            ]}),
                        ),
                    };
                    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                    let body = (!body.is_null()).then_some(body);
                    let (status, answer, _) = send(s, method.clone(), &path, body);
                    let failed_ops: Vec<&Value> = answer["Operations"]
                        .as_array()
                        .map(|ops| ops.iter().filter(|o| o["status"].as_str().is_some_and(|c| c.starts_with('5'))).collect())
                        .unwrap_or_default();
                    if status >= 500 || !failed_ops.is_empty() {
                        errors.lock().unwrap().push(format!("{method} {path}: {status} {answer}"));
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    assert!(
        errors.is_empty(),
        "{} answers were 5xx: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );

    // Afterwards: members are stored resources, and each user's groups are those listing it.
    let mut listed_in: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for g in &groups {
        let (status, rec, _) = send(&b, reqwest::Method::GET, &format!("/Groups/{g}"), None);
        assert_eq!(status, 200);
        for m in rec["members"].as_array().into_iter().flatten() {
            let id = m["value"].as_str().unwrap();
            let path = format!("/{}s/{id}", m["type"].as_str().unwrap());
            assert_eq!(
                send(&a, reqwest::Method::GET, &path, None).0,
                200,
                "{g} lists {id}"
            );
            listed_in
                .entry(id.to_string())
                .or_default()
                .insert(g.clone());
        }
    }
    let (_, page, _) = send(
        &a,
        reqwest::Method::GET,
        "/Users?count=1000&attributes=groups",
        None,
    );
    for u in page["Resources"].as_array().unwrap() {
        let id = u["id"].as_str().unwrap();
        let in_groups: std::collections::BTreeSet<String> = u["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["type"] == "direct")
            .map(|g| g["value"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            in_groups,
            listed_in.remove(id).unwrap_or_default(),
            "{id}'s groups"
        );
    }
}

#[test]
fn database_outage_gives_503_and_the_server_recovers_by_itself() {
    let Some(base) = pg() else { return };
    for sslmode in ssl_modes(&base) {
        outage_gives_503_and_recovers(&base, sslmode);
    }
}

fn outage_gives_503_and_recovers(base: &str, sslmode: &str) {
    let (relay, s) = relayed(base, sslmode, 2, "before");

    assert_eq!(crate::server::health(&s).0, 200);
    relay.down();
    // The health check says so, for a load balancer, and says nothing more.
    let (status, body, headers) = crate::server::health(&s);
    assert_eq!(
        (status, body),
        (503, json!({"status": "unavailable"})),
        "{sslmode}"
    );
    assert!(headers.contains_key("retry-after"));
    for path in ["/Users", "/Users?filter=userName%20eq%20%22before%22"] {
        let t = Instant::now();
        let (status, body, headers) = send(&s, reqwest::Method::GET, path, None);
        assert_eq!(status, 503, "{sslmode}: {body}");
        assert_eq!(body["status"], json!("503"));
        assert!(headers.contains_key("retry-after"));
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "answered in {:?}",
            t.elapsed()
        );
    }
    let write =
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "during"});
    assert_eq!(
        send(&s, reqwest::Method::POST, "/Users", Some(write)).0,
        503
    );

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut status = 0;
    while Instant::now() < deadline {
        status = send(&s, reqwest::Method::GET, "/Users", None).0;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        status, 200,
        "the server did not recover after the database came back"
    );
    assert_eq!(crate::server::health(&s).0, 200, "{sslmode}");
    let (_, list, _) = send(&s, reqwest::Method::GET, "/Users", None);
    assert_eq!(
        list["totalResults"],
        json!(1),
        "the write during the outage must not have happened"
    );
    // The point reads that failed during the outage work again too (on PostgreSQL they run on
    // the store's reader threads, not on the pool the list above used).
    let (status, found, _) = send(
        &s,
        reqwest::Method::GET,
        "/Users?filter=userName%20eq%20%22before%22",
        None,
    );
    assert_eq!(
        (status, &found["totalResults"]),
        (200, &json!(1)),
        "{found}"
    );
}

#[test]
fn after_the_database_restarts_a_point_read_is_read_again_and_at_most_one_list_fails() {
    let Some(base) = pg() else { return };
    for sslmode in ssl_modes(&base) {
        after_a_restart_reads_recover(&base, sslmode);
    }
}

fn after_a_restart_reads_recover(base: &str, sslmode: &str) {
    let (relay, s) = relayed(base, sslmode, 6, "idle");
    let open = || relay.conns.lock().unwrap().len() / 2;
    let fill = || {
        // Concurrent lists each hold a connection.
        for _ in 0..20 {
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    scope.spawn(|| send(&s, reqwest::Method::GET, "/Users?count=1", None));
                }
            });
            if open() >= 4 {
                break;
            }
        }
        open()
    };
    let list = "/Users?count=1";
    let point = "/Users?filter=userName%20eq%20%22idle%22";
    // Lists first, then point reads; then point reads first. Each time the database goes away
    // and comes back while nothing is asked of it (a restart at night): every pooled
    // connection is stale.
    for (first, then, allowed) in [(list, point, 1), (point, list, 0)] {
        let pooled = fill();
        // The first round shows the idle connections tested: it needs several of them (any
        // one stale connection is enough for the second).
        assert!(
            pooled >= 4 || first == point,
            "only {pooled} connections were opened"
        );
        relay.down();
        relay.restore();
        let mut failed = 0;
        for i in 0..24 {
            let path = if i < 12 { first } else { then };
            let (status, body, _) = send(&s, reqwest::Method::GET, path, None);
            match status {
                200 => assert_eq!(body["totalResults"], json!(1)),
                503 => failed += 1,
                other => panic!("{sslmode}: {other}: {body}"),
            }
        }
        // A point read that finds its connection lost is read again on a tested one; a list
        // answers 503 (the pool then tests the idle connections before the next request).
        assert!(
            failed <= allowed,
            "{sslmode}, {first} first: {failed} of 24 requests failed after the database came back ({pooled} connections were pooled)"
        );
        relay.conns.lock().unwrap().clear();
    }
}
