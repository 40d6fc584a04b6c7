//! Properties a client or operator can observe that are not request/response pairs:
//! secrets never stored in clear, hostile headers never echoed, races with one winner.

use reqwest::blocking::Client;
use serde_json::{json, Value};

use crate::server::{call, databases, Db, TestServer};

fn post_user(client: &Client, s: &TestServer, body: Value) -> reqwest::blocking::Response {
    client
        .post(format!("{}/Users", s.base))
        .bearer_auth(&s.token)
        .header("content-type", "application/scim+json")
        .body(body.to_string())
        .send()
        .unwrap()
}

/// Every byte of the SQLite database files.
fn database_bytes(s: &TestServer) -> Vec<u8> {
    let path = s.db_path.as_ref().unwrap();
    let mut all = Vec::new();
    for suffix in ["", "-wal"] {
        let p = format!("{}{suffix}", path.display());
        if let Ok(b) = std::fs::read(&p) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The stored password hash of a user, read through the store API reusers get.
fn stored_hash(s: &TestServer, id: &str) -> Option<String> {
    use scim_core::store::CredentialStore;
    let store = scim_diesel::DieselStore::open(&scim_diesel::StoreConfig::new(
        s.db_path.as_ref().unwrap().to_string_lossy(),
    ))
    .unwrap();
    let tenant = store.default_tenant().unwrap().unwrap();
    store.password_hash(&tenant, id).unwrap()
}

fn patch_user(
    client: &Client,
    s: &TestServer,
    id: &str,
    ops: Value,
) -> reqwest::blocking::Response {
    client
        .patch(format!("{}/Users/{id}", s.base))
        .bearer_auth(&s.token)
        .header("content-type", "application/scim+json")
        .body(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops}).to_string())
        .send()
        .unwrap()
}

#[test]
fn passwords_and_tokens_are_never_stored_in_clear() {
    let s = TestServer::start(&Db::Sqlite);
    let client = Client::new();
    let password = "Pa55-word-that-must-not-be-stored";
    let r = post_user(
        &client,
        &s,
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "p", "password": password}),
    );
    assert_eq!(r.status(), 201);
    let text = r.text().unwrap();
    assert!(
        !text.contains(password) && !text.contains("password"),
        "{text}"
    );
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = database_bytes(&s);
    assert!(
        contains(&bytes, "\"userName\":\"p\""),
        "the scan must see the stored document"
    );
    assert!(
        !contains(&bytes, password),
        "password found in the database file"
    );
    assert!(
        !contains(&bytes, &s.token),
        "bearer token found in clear in the database file"
    );
    assert!(
        contains(&bytes, &scim_auth::hash_token(&s.token)),
        "token hash should be stored"
    );
    // An argon2id hash that verifies, and only that.
    let hash = stored_hash(&s, &id).expect("a hash is stored");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(scim_auth::verify_password(password, &hash));
    // Okta password sync: a path-less replace changes it; GET never shows it.
    let r = patch_user(
        &client,
        &s,
        &id,
        json!([{"op": "replace", "value": {"password": "n3wS3cret!"}}]),
    );
    assert_eq!(r.status(), 200);
    assert!(!r.text().unwrap().contains("n3wS3cret"));
    let hash = stored_hash(&s, &id).unwrap();
    assert!(
        scim_auth::verify_password("n3wS3cret!", &hash)
            && !scim_auth::verify_password(password, &hash)
    );
    let got = client
        .get(format!("{}/Users/{id}?attributes=password", s.base))
        .bearer_auth(&s.token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!got.contains("password"), "{got}");
    // remove clears it.
    assert_eq!(
        patch_user(
            &client,
            &s,
            &id,
            json!([{"op": "remove", "path": "password"}])
        )
        .status(),
        200
    );
    assert_eq!(stored_hash(&s, &id), None);
}

#[test]
fn passwords_can_be_ignored_entirely() {
    let s = TestServer::start_with(&Db::Sqlite, |c| c.hash_passwords = false);
    let client = Client::new();
    let r = post_user(
        &client,
        &s,
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "p", "password": "whatever-1"}),
    );
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(stored_hash(&s, &id), None);
    assert!(!contains(&database_bytes(&s), "whatever-1"));
    let spc: Value = client
        .get(format!("{}/ServiceProviderConfig", s.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(spc["changePassword"]["supported"], json!(false));
}

#[test]
fn location_never_comes_from_the_request() {
    let s = TestServer::start(&Db::Sqlite);
    let r = Client::new()
        .post(format!("{}/Users", s.base))
        .bearer_auth(&s.token)
        .header("host", "evil.example")
        .header("x-forwarded-host", "evil.example")
        .header("content-type", "application/scim+json")
        .body(
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "h"})
                .to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with(&s.base), "{loc}");
    assert!(!r.text().unwrap().contains("evil.example"));
}

#[test]
fn racing_creates_of_one_user_name_have_exactly_one_winner() {
    for db in databases() {
        let s = TestServer::start(&db);
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..12)
                .map(|i| {
                    let s = &s;
                    scope.spawn(move || {
                        let name = if i % 2 == 0 { "Racer@Example.com" } else { "racer@example.COM" };
                        post_user(&Client::new(), s, json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name}))
                            .status()
                            .as_u16()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            statuses.iter().filter(|&&c| c == 201).count(),
            1,
            "{}: {statuses:?}",
            db.name()
        );
        assert_eq!(
            statuses.iter().filter(|&&c| c == 409).count(),
            11,
            "{}: {statuses:?}",
            db.name()
        );
        let list: Value = call(&s, reqwest::Method::GET, "/Users", None, &[]).1;
        assert_eq!(list["totalResults"], json!(1));
    }
}

#[test]
fn concurrent_membership_patches_through_http_lose_nothing() {
    for db in databases() {
        let s = TestServer::start(&db);
        let client = Client::new();
        let ids: Vec<String> = (0..24)
            .map(|i| {
                let r: Value = post_user(&client, &s, json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("m{i}")})).json().unwrap();
                r["id"].as_str().unwrap().to_string()
            })
            .collect();
        let g: Value = client
            .post(format!("{}/Groups", s.base))
            .bearer_auth(&s.token)
            .header("content-type", "application/scim+json")
            .body(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G"}).to_string())
            .send()
            .unwrap()
            .json()
            .unwrap();
        let gid = g["id"].as_str().unwrap().to_string();
        std::thread::scope(|scope| {
            for chunk in ids.chunks(3) {
                let (s, gid) = (&s, &gid);
                scope.spawn(move || {
                    let members: Vec<Value> = chunk.iter().map(|id| json!({"value": id})).collect();
                    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "add", "path": "members", "value": members}]});
                    let r = Client::new()
                        .patch(format!("{}/Groups/{gid}", s.base))
                        .bearer_auth(&s.token)
                        .header("content-type", "application/scim+json")
                        .body(body.to_string())
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 200);
                });
            }
        });
        let g: Value = call(
            &s,
            reqwest::Method::GET,
            &format!("/Groups/{gid}"),
            None,
            &[],
        )
        .1;
        assert_eq!(
            g["members"].as_array().map(Vec::len),
            Some(24),
            "{}",
            db.name()
        );
        assert_eq!(
            g["meta"]["version"],
            json!("W/\"9\""),
            "{}: one version per PATCH",
            db.name()
        );
    }
}

#[test]
fn strict_unknown_members_policy_names_the_ids() {
    let s = TestServer::start_with(&Db::Sqlite, |c| {
        c.unknown_members = scim_core::store::UnknownMembers::Reject
    });
    let r = Client::new()
        .post(format!("{}/Groups", s.base))
        .bearer_auth(&s.token)
        .header("content-type", "application/scim+json")
        .body(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G", "members": [{"value": "ghost-1"}, {"value": "ghost-\"2"}]}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().unwrap();
    assert_eq!(body["scimType"], json!("invalidValue"));
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("ghost-1") && detail.contains("ghost-\\\"2"),
        "{detail}"
    );
    let list: Value = call(&s, reqwest::Method::GET, "/Groups", None, &[]).1;
    assert_eq!(
        list["totalResults"],
        json!(0),
        "the failed create left nothing behind"
    );
}

/// `SCIM_BODY_TIMEOUT_MS`: a client that stops sending its body, or trickles it, gets 408
/// with a SCIM error and a closed connection instead of holding the request open; a body
/// that arrives in pieces within the time is read as usual.
#[test]
fn a_stalled_or_trickled_body_is_408_and_the_connection_closed() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let s = TestServer::start_with(&Db::Sqlite, |c| c.body_timeout = Duration::from_millis(400));
    let addr = s
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "slow@example.com"})
    .to_string();
    let head = format!(
        "POST /scim/v2/Users HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n",
        s.token,
        body.len()
    );
    // Sends the head, then the body's pieces with `pause` between them; returns everything
    // the server sent until it closed the connection (or 10 s passed).
    let send = |pieces: &[&str], pause: Duration| -> String {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(head.as_bytes()).unwrap();
        for piece in pieces {
            // The server may have answered and closed already: later writes can fail.
            let _ = conn.write_all(piece.as_bytes());
            std::thread::sleep(pause);
        }
        if pieces.concat() == body {
            // A complete request: read one answer, leaving the connection open.
            let mut buf = vec![0; 8192];
            let n = conn.read(&mut buf).unwrap();
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let (first, rest) = body.split_at(10);
    let stalled = send(&[first], Duration::ZERO);
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(stalled.contains("application/scim+json"), "{stalled}");
    assert!(stalled.contains("SCIM_BODY_TIMEOUT_MS"), "{stalled}");
    assert!(
        stalled.to_ascii_lowercase().contains("connection: close"),
        "{stalled}"
    );
    let bytes: Vec<String> = body.chars().map(String::from).collect();
    let pieces: Vec<&str> = bytes.iter().map(String::as_str).take(20).collect();
    let trickled = send(&pieces, Duration::from_millis(50));
    assert!(trickled.starts_with("HTTP/1.1 408"), "{trickled}");
    // Nothing was created by either.
    let (_, list, _) = call(&s, reqwest::Method::GET, "/Users", None, &[]);
    assert_eq!(list["totalResults"], json!(0));
    // In two pieces within the time: created.
    let ok = send(&[first, rest], Duration::from_millis(50));
    assert!(ok.starts_with("HTTP/1.1 201"), "{ok}");
}

/// `GET /healthz` answers without a token (a load balancer has none) and tells nothing but
/// that the database answers; other methods are 405. The PostgreSQL outage test checks the
/// 503 when the database is away.
#[test]
fn the_health_check_needs_no_token_and_tells_only_the_state() {
    for db in databases() {
        let s = TestServer::start(&db);
        let (status, body, headers) = crate::server::health(&s);
        assert_eq!(
            (status, body),
            (200, json!({"status": "ok"})),
            "{}",
            db.name()
        );
        assert_eq!(headers["cache-control"], "no-store");
        let root = s.base.trim_end_matches("/scim/v2");
        let r = Client::new()
            .post(format!("{root}/healthz"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 405);
        // Some load balancers probe with HEAD.
        let r = Client::new()
            .head(format!("{root}/healthz"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// What the server acknowledged survives a crash of its process: the binary is killed
/// (SIGKILL, no shutdown) while clients create users and add them to a group, and a server
/// started again on the same database finds every user answered 201 and every member whose
/// PATCH was answered 200 or 204. On SQLite this holds the group commit to its promise (no
/// writer is answered before the `COMMIT` of its batch has succeeded, with `synchronous =
/// NORMAL` in WAL mode); on PostgreSQL, to the commit of each write.
#[test]
fn acknowledged_writes_survive_a_kill_of_the_server_process() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    let bin = env!("CARGO_BIN_EXE_scim-server");
    let dir = tempfile::tempdir().unwrap();
    for db in databases() {
        let url = match &db {
            Db::Postgres(base) => scim_diesel::testing::fresh_postgres_schema(base).unwrap(),
            _ => dir.path().join("crash.db").to_string_lossy().into_owned(),
        };
        let name = db.name();
        let s = TestServer::spawn_binary(bin, &Db::Exact(url.clone()));
        let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "crash"});
        let (status, g, _) = call(&s, reqwest::Method::POST, "/Groups", Some(group), &[]);
        assert_eq!(status, 201, "{name}: {g}");
        let gid = g["id"].as_str().unwrap().to_string();
        let users: Mutex<Vec<String>> = Mutex::default();
        let members: Mutex<Vec<String>> = Mutex::default();
        let killed = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for t in 0..8 {
                let (s, gid, users, members, killed) = (&s, &gid, &users, &members, &killed);
                scope.spawn(move || {
                    let client = Client::new();
                    for i in 0..2_000 {
                        if killed.load(Ordering::Relaxed) {
                            break;
                        }
                        let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                            "userName": format!("crash-{t}-{i}@example.com")});
                        let Ok(r) = crate::server::request(&client, s, reqwest::Method::POST, "/Users", Some(&body), &[]).send() else {
                            break; // the server is gone
                        };
                        if r.status() != 201 {
                            break;
                        }
                        let Ok(u) = r.json::<Value>() else { break };
                        let id = u["id"].as_str().unwrap().to_string();
                        users.lock().unwrap().push(id.clone());
                        let add = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]});
                        let path = format!("/Groups/{gid}");
                        let Ok(r) = crate::server::request(&client, s, reqwest::Method::PATCH, &path, Some(&add), &[]).send() else {
                            break;
                        };
                        if matches!(r.status().as_u16(), 200 | 204) {
                            members.lock().unwrap().push(id);
                        }
                    }
                });
            }
            // Kill it in the middle of the load: once some writes were answered.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while members.lock().unwrap().len() < 150 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let pid = s.pid().unwrap().to_string();
            let status = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap();
            assert!(status.success());
            killed.store(true, Ordering::Relaxed);
        });
        drop(s);
        let users = users.into_inner().unwrap();
        let members = members.into_inner().unwrap();
        assert!(
            members.len() >= 150,
            "{name}: only {} members were added",
            members.len()
        );

        let again = TestServer::start(&Db::Exact(url.clone()));
        for id in &users {
            let (status, _, _) = call(
                &again,
                reqwest::Method::GET,
                &format!("/Users/{id}"),
                None,
                &[],
            );
            assert_eq!(
                status, 200,
                "{name}: user {id} was answered 201 and is gone"
            );
        }
        let (_, g, _) = call(
            &again,
            reqwest::Method::GET,
            &format!("/Groups/{gid}"),
            None,
            &[],
        );
        let stored: std::collections::HashSet<&str> = g["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap())
            .collect();
        for id in &members {
            assert!(
                stored.contains(id.as_str()),
                "{name}: member {id} was acknowledged and is gone"
            );
        }
        // Nothing more than was asked: every stored member is a user the clients created.
        let (_, list, _) = call(&again, reqwest::Method::GET, "/Users?count=0", None, &[]);
        let total = list["totalResults"].as_u64().unwrap() as usize;
        assert!(
            total >= users.len() && total <= users.len() + 8,
            "{name}: {total} users for {} answered",
            users.len()
        );
    }
}
