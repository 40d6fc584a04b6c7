//! The operator commands of the `scim-server` binary, as README.md documents them.

use std::process::Command;

use reqwest::blocking::Client;

use crate::server::{Db, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_scim-server");

/// Runs the binary on `db`; returns (success, stdout, stderr).
fn cli(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("SCIM_DATABASE_URL", db)
        .env_remove("SCIM_BOOTSTRAP_TOKEN")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn migrate_and_token_commands_work_and_never_show_tokens_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scim.db").to_string_lossy().into_owned();

    let (ok, out, _) = cli(&db, &["migrate"]);
    assert!(ok && out.contains("migrations applied"), "{out}");

    // On an empty database the first `token create` makes the tenant and its first token.
    let (ok, first, _) = cli(&db, &["token", "create", "okta"]);
    let first = first.trim().to_string();
    assert!(
        ok && first.starts_with("scim_") && !first.contains(' '),
        "{first}"
    );
    let (ok, second, err) = cli(&db, &["token", "create", "entra"]);
    let second = second.trim().to_string();
    assert!(
        ok && second.starts_with("scim_") && second != first,
        "{second}"
    );
    let id = err.split_whitespace().nth(2).unwrap().to_string(); // "token id <id> (use it to revoke)"

    let (ok, list, _) = cli(&db, &["token", "list"]);
    assert!(
        ok && list.lines().count() == 2 && list.contains("entra") && list.contains(&id),
        "{list}"
    );
    assert!(
        !list.contains(&first) && !list.contains(&second),
        "token list must not print tokens"
    );

    let server = TestServer::spawn_binary(BIN, &Db::Exact(db.clone()));
    let get_path = |token: &str, path: &str| {
        Client::new()
            .get(format!("{}{path}", server.base))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let get = |token: &str| get_path(token, "/Users");
    assert_eq!((get(&first), get(&second)), (200, 200));
    let created = Client::new()
        .post(format!("{}/Users", server.base))
        .bearer_auth(&first)
        .json(&serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "pat"
        }))
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let user_id = created.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Point reads check the token in the read's own statement: hits and misses alike.
    let point_reads = [
        format!("/Users/{user_id}"),
        "/Users/no-such-id".to_string(),
        "/Users?filter=userName%20eq%20%22pat%22".to_string(),
        "/Users?filter=userName%20eq%20%22nobody%22".to_string(),
    ];
    let statuses =
        |token: &str| -> Vec<u16> { point_reads.iter().map(|p| get_path(token, p)).collect() };
    assert_eq!(statuses(&second), [200, 404, 200, 200]);
    // The served process runs with two malloc arenas (it re-executes itself to set them),
    // unless the operator chose a value.
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        let pid = server.pid().unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let wanted = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into());
        assert!(
            environ
                .split(|b| *b == 0)
                .any(|kv| kv == format!("MALLOC_ARENA_MAX={wanted}").as_bytes()),
            "the server runs with MALLOC_ARENA_MAX={wanted}"
        );
    }

    let (ok, out, _) = cli(&db, &["token", "revoke", &id]);
    assert!(ok && out.contains("revoked"), "{out}");
    assert_eq!(
        get(&second),
        401,
        "a revoked token stops working on the next request"
    );
    assert_eq!(statuses(&second), [401; 4], "point reads refuse it too");
    assert_eq!(get(&first), 200);
    assert_eq!(statuses(&first), [200, 404, 200, 200]);

    let (ok, _, err) = cli(&db, &["token", "revoke", &id]);
    assert!(!ok && err.contains("no live token"), "{err}");
    let (ok, _, err) = cli(&db, &["frobnicate"]);
    assert!(!ok && err.contains("usage:"), "{err}");
}

/// The token commands leave the attribute index alone: run from a shell without the
/// service's `SCIM_SCHEMA_EXTENSIONS`, they must not rebuild it for other schemas under the
/// running servers. `migrate` makes the database match the schemas it is given.
#[test]
fn token_commands_leave_the_attribute_index_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scim.db").to_string_lossy().into_owned();
    let ext = dir.path().join("badge.json");
    std::fs::write(
        &ext,
        r#"{"id": "urn:example:badge:1.0:User", "name": "Badge", "attributes": [{"name": "code",
            "type": "string", "multiValued": false, "mutability": "readWrite", "returned": "default"}]}"#,
    )
    .unwrap();
    let with_ext = format!("User={}", ext.display());
    let migrate = |extensions: &str| {
        let out = Command::new(BIN)
            .arg("migrate")
            .env("SCIM_DATABASE_URL", &db)
            .env("SCIM_SCHEMA_EXTENSIONS", extensions)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let recorded = || {
        let store = scim_diesel::DieselStore::open(&scim_diesel::StoreConfig::new(db.clone()));
        store.unwrap().index_fingerprint().unwrap()
    };
    migrate(&with_ext);
    let served = recorded();
    assert!(served.is_some());
    for args in [&["token", "create", "okta"][..], &["token", "list"][..]] {
        let (ok, _, err) = cli(&db, args);
        assert!(ok, "{args:?}: {err}");
        assert_eq!(recorded(), served, "{args:?}");
    }
    migrate("");
    assert_ne!(recorded(), served);
}

/// An index built by the rules of an earlier version (an older `INDEX_FORMAT`) is an upgrade,
/// not a change of schemas: a start without migrations refuses, saying so, and `migrate`
/// rebuilds it, saying so.
#[test]
fn an_index_built_by_earlier_rules_is_rebuilt_as_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scim.db").to_string_lossy().into_owned();
    let (ok, _, err) = cli(&db, &["migrate"]);
    assert!(ok, "{err}");
    let store = || scim_diesel::DieselStore::open(&scim_diesel::StoreConfig::new(db.clone()));
    let earlier = "1:0000000000000000";
    let derive: scim_diesel::DeriveRows = std::sync::Arc::new(|_, _| Vec::new());
    store().unwrap().open_index(earlier, true, derive).unwrap();
    assert_eq!(
        store().unwrap().index_fingerprint().unwrap().as_deref(),
        Some(earlier)
    );

    let out = Command::new(BIN)
        .env("SCIM_DATABASE_URL", &db)
        .env("SCIM_LISTEN", "127.0.0.1:0")
        .env("SCIM_MIGRATE_ON_START", "false")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("by the rules of an earlier version")
            && err.contains("scim-server migrate"),
        "{err}"
    );

    let out = Command::new(BIN)
        .arg("migrate")
        .env("SCIM_DATABASE_URL", &db)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("derives the attribute index by other rules"),
        "{err}"
    );
    let now = store().unwrap().index_fingerprint().unwrap().unwrap();
    assert_eq!(
        scim_core::index::fingerprint_format(&now),
        Some(scim_core::index::INDEX_FORMAT)
    );
}

#[test]
fn help_prints_the_usage_and_an_unknown_command_fails_naming_it() {
    for arg in ["--help", "-h", "help"] {
        // An invalid setting does not stand in the way of help.
        let out = Command::new(BIN)
            .arg(arg)
            .env("SCIM_MAX_PAGE_SIZE", "lots")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{arg}: {out:?}");
        assert!(text.contains("scim-server migrate"), "{arg}: {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scim.db").to_string_lossy().into_owned();
    let (ok, _, err) = cli(&db, &["frobnicate"]);
    assert!(
        !ok && err.contains("unknown command: frobnicate") && err.contains("usage:"),
        "{err}"
    );
}

#[test]
fn an_invalid_setting_stops_the_server_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("SCIM_STRICT", "maybe"),
        ("SCIM_MAX_PAGE_SIZE", "lots"),
        ("SCIM_PASSWORDS", "plain"),
        ("SCIM_USER_DELETE", "archive"),
        ("SCIM_JWT_HS256_SECRET", "short"),
        ("SCIM_RATE_LIMIT", "-5"),
        ("SCIM_RATE_LIMIT_BURST", "many"),
        ("SCIM_BODY_TIMEOUT_MS", "0"),
        ("SCIM_UNIQUE_GROUP_NAMES", "sometimes"),
        ("SCIM_SHUTDOWN_TIMEOUT_S", "-1"),
    ] {
        let out = Command::new(BIN)
            .arg("migrate")
            .env("SCIM_DATABASE_URL", dir.path().join("scim.db"))
            .env(var, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(var),
            "{var}={value}: {err}"
        );
    }
}

#[test]
fn an_extension_schema_the_server_cannot_honour_stops_it_naming_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("secret.json");
    std::fs::write(
        &bad,
        r#"{"id": "urn:example:ext", "name": "X", "attributes": [{"name": "pin", "type": "string",
            "multiValued": false, "mutability": "writeOnly", "returned": "never"}]}"#,
    )
    .unwrap();
    let missing = dir.path().join("missing.json");
    let garbled = dir.path().join("garbled.json");
    std::fs::write(&garbled, "{not json").unwrap();
    for (value, reason) in [
        (format!("User={}", bad.display()), "writeOnly"),
        (format!("Device={}", bad.display()), "no resource type"),
        (
            format!("User={}", missing.display()),
            "reading the extension schema",
        ),
        (
            format!("User={}", garbled.display()),
            "is not a SCIM schema",
        ),
        ("User".to_string(), "SCIM_SCHEMA_EXTENSIONS"),
    ] {
        let mut child = Command::new(BIN)
            .arg("serve")
            .env("SCIM_DATABASE_URL", dir.path().join("scim.db"))
            .env("SCIM_LISTEN", "127.0.0.1:0")
            .env("SCIM_SCHEMA_EXTENSIONS", &value)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{value}: the server started");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success() && err.contains(reason), "{value}: {err}");
    }
}

/// Runs the server binary with `RUST_LOG=level`, sends a token-authorized filtered lookup
/// that carries personal data in its query, and returns what the server logged.
fn access_log_under(level: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}/scim/v2");
    let token = scim_auth::generate_token().unwrap();
    let log_path = dir.path().join("stderr.log");
    let out_path = dir.path().join("stdout.log");
    let mut child = Command::new(BIN)
        .env("SCIM_DATABASE_URL", dir.path().join("scim.db"))
        .env("SCIM_LISTEN", format!("127.0.0.1:{port}"))
        .env("SCIM_PUBLIC_URL", &base)
        .env("SCIM_BOOTSTRAP_TOKEN", &token)
        .env("SCIM_WORKERS", "1")
        .env("RUST_LOG", level)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let client = Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client
        .get(format!("{base}/ServiceProviderConfig"))
        .send()
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = client
        .get(format!("{base}/Users"))
        .query(&[("filter", "userName eq \"pii.alice@example.com\"")])
        .bearer_auth(&token)
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 200);
    // The access line is written once the response has gone out; give it a moment.
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains(&token), "the token was logged: {log}");
    // The operator chose the first token (SCIM_BOOTSTRAP_TOKEN): the start-up message says
    // where it is instead of echoing it into whatever collects the output.
    let out = std::fs::read_to_string(&out_path).unwrap();
    assert!(!out.contains(&token), "the token was printed: {out}");
    assert!(out.contains("SCIM_BOOTSTRAP_TOKEN"), "{out}");
    assert!(!log.contains("pii.alice"), "the query was logged: {log}");
    log
}

#[test]
fn the_access_log_records_method_and_path_only_and_only_when_enabled() {
    let info = access_log_under("info");
    assert!(
        info.lines()
            .any(|l| l.contains("200") && l.contains("\"GET /scim/v2/Users\"")),
        "no access line at info: {info}"
    );
    let warn = access_log_under("warn");
    assert!(
        !warn.contains("GET /scim/v2/Users"),
        "access lines at warn: {warn}"
    );
}

/// A `POST /Users` creating `name`, on a connection of its own, sent up to half its body
/// and held there: the server has answered `100 Continue`, so the request is in its hands.
/// Returns the connection and the rest of the body.
fn post_held_halfway(server: &TestServer, name: &str) -> (std::net::TcpStream, Vec<u8>) {
    use std::io::{BufRead, Write};
    let body = serde_json::json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": name,
    })
    .to_string()
    .into_bytes();
    let addr = server_addr(server);
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let half = body.len() / 2;
    write!(
        conn,
        "POST /scim/v2/Users HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/scim+json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        server.token,
        body.len()
    )
    .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&conn).read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    conn.write_all(&body[..half]).unwrap();
    (conn, body[half..].to_vec())
}

fn server_addr(server: &TestServer) -> String {
    let rest = server.base.strip_prefix("http://").unwrap();
    rest.split('/').next().unwrap().to_string()
}

/// Sends `signal` (`"TERM"`, `"INT"`) to a server started with `spawn_binary`.
fn send_signal(server: &TestServer, signal: &str) {
    let pid = server.pid().unwrap().to_string();
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The server closed `conn` without answering the request on it.
fn assert_no_answer(conn: &mut std::net::TcpStream) {
    use std::io::Read;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&answer)
    );
}

/// Waits (up to 10 s) until the server's port refuses connections.
fn wait_until_refused(addr: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_err() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// How many users named `name` a fresh server on `db` finds, asked with `token` (a token
/// the database holds).
fn users_named(db: &str, token: &str, name: &str) -> u64 {
    let server = TestServer::spawn_binary(BIN, &Db::Exact(db.to_string()));
    let r = Client::new()
        .get(format!(
            "{}/Users?filter=userName%20eq%20%22{name}%22",
            server.base
        ))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<serde_json::Value>().unwrap()["totalResults"]
        .as_u64()
        .unwrap()
}

/// A rolling restart: `SIGTERM` (or Ctrl-C's `SIGINT`) closes the listener at once (a load
/// balancer sends new connections elsewhere), the request in flight still gets its answer,
/// and the process then exits with success, leaving a database file that holds every
/// answered write on its own (the write-ahead log moved into it), as a backup by copying
/// the stopped server's file expects.
#[test]
fn sigterm_lets_the_requests_in_flight_finish_then_stops() {
    use std::io::{Read, Write};
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("scim.db").to_string_lossy().into_owned();
        let mut server = TestServer::spawn_binary(BIN, &Db::Exact(db.clone()));
        let addr = server_addr(&server);
        let (mut conn, rest) = post_held_halfway(&server, "drained");

        send_signal(&server, signal);
        assert!(
            wait_until_refused(&addr),
            "SIG{signal}: the listener closes"
        );
        assert!(
            server
                .wait_exit(std::time::Duration::from_millis(300))
                .is_none(),
            "SIG{signal}: the server waits for the request in flight"
        );
        conn.write_all(&rest).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "SIG{signal}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "SIG{signal}: {answer}"
        );
        assert!(answer.contains("\"drained\""), "SIG{signal}: {answer}");

        let status = server.wait_exit(std::time::Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "SIG{signal}: exits with success once the answer is sent: {status:?}"
        );
        let token = server.token.clone();
        drop(server);
        let wal = std::fs::metadata(format!("{db}-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "SIG{signal}: the write-ahead log is emptied");
        let copy = tempfile::tempdir().unwrap();
        let copied = copy.path().join("scim.db");
        std::fs::copy(&db, &copied).unwrap();
        assert_eq!(
            users_named(&copied.to_string_lossy(), &token, "drained"),
            1,
            "SIG{signal}: the answered create is in the database file alone"
        );
    }
}

/// `SCIM_SHUTDOWN_TIMEOUT_S` bounds the wait: a request still in flight when it runs out is
/// dropped without an answer and writes nothing.
#[test]
fn the_shutdown_timeout_bounds_how_long_a_request_in_flight_holds_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scim.db").to_string_lossy().into_owned();
    let mut server = TestServer::spawn_binary_with(
        BIN,
        &Db::Exact(db.clone()),
        &[
            ("SCIM_SHUTDOWN_TIMEOUT_S", "1"),
            ("SCIM_BODY_TIMEOUT_MS", "60000"),
        ],
    );
    let (mut conn, _rest) = post_held_halfway(&server, "abandoned");

    let sent = std::time::Instant::now();
    send_signal(&server, "TERM");
    let status = server.wait_exit(std::time::Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "stops once the timeout has run out: {status:?}"
    );
    assert!(
        sent.elapsed() >= std::time::Duration::from_millis(900),
        "not before the timeout: {:?}",
        sent.elapsed()
    );
    assert_no_answer(&mut conn);
    let token = server.token.clone();
    drop(server);
    assert_eq!(users_named(&db, &token, "abandoned"), 0);
}

/// A second signal while the server waits for a request in flight (an operator pressing
/// Ctrl-C again) ends the process at once, without waiting out the shutdown timeout.
#[test]
fn a_second_signal_while_stopping_ends_the_process_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scim.db").to_string_lossy().into_owned();
    let mut server =
        TestServer::spawn_binary_with(BIN, &Db::Exact(db), &[("SCIM_BODY_TIMEOUT_MS", "60000")]);
    let addr = server_addr(&server);
    let (mut conn, _rest) = post_held_halfway(&server, "interrupted");
    send_signal(&server, "INT");
    assert!(wait_until_refused(&addr), "the listener closes");
    assert!(
        server
            .wait_exit(std::time::Duration::from_millis(300))
            .is_none(),
        "the first signal waits for the request in flight"
    );
    send_signal(&server, "INT");
    let status = server.wait_exit(std::time::Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the second ends the process at once, with a failure status: {status:?}"
    );
    assert_no_answer(&mut conn);
}

/// `SIGQUIT` stops at once: the request in flight is dropped without an answer (it wrote
/// nothing), the process exits with success without waiting out the shutdown timeout, and the
/// database file is left complete in itself, as after any stop by a signal.
#[test]
fn sigquit_stops_at_once_and_leaves_the_files_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scim.db").to_string_lossy().into_owned();
    let mut server = TestServer::spawn_binary_with(
        BIN,
        &Db::Exact(db.clone()),
        &[("SCIM_BODY_TIMEOUT_MS", "60000")],
    );
    let (mut conn, _rest) = post_held_halfway(&server, "quitter");
    send_signal(&server, "QUIT");
    let status = server.wait_exit(std::time::Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "stops at once, with success: {status:?}"
    );
    assert_no_answer(&mut conn);
    let wal = std::fs::metadata(format!("{db}-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the write-ahead log is emptied");
    let token = server.token.clone();
    drop(server);
    assert_eq!(users_named(&db, &token, "quitter"), 0);
}
