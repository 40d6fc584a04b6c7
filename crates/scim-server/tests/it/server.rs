//! `TestServer`: the real application on 127.0.0.1:<free port>, with a fresh database.

use std::net::TcpListener;
use std::thread::JoinHandle;

use reqwest::blocking::Client;
use scim_server::{AppState, Config};
use serde_json::Value;

/// Which database a test server uses.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite,
    /// a fresh schema on this PostgreSQL
    Postgres(String),
    /// exactly this database URL (shared by several servers)
    Exact(String),
}

impl Db {
    /// The database URL to use, with the temporary directory that must outlive the server
    /// and the SQLite file path (for tests that inspect the file).
    fn open(
        &self,
    ) -> (
        String,
        Option<tempfile::TempDir>,
        Option<std::path::PathBuf>,
    ) {
        match self {
            Db::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("scim.db");
                (path.to_string_lossy().into_owned(), Some(dir), Some(path))
            }
            Db::Postgres(base) => (
                scim_diesel::testing::fresh_postgres_schema(base).unwrap(),
                None,
                None,
            ),
            Db::Exact(url) => (url.clone(), None, None),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres(_) | Db::Exact(_) => "postgres",
        }
    }
}

/// SQLite always; PostgreSQL when configured (required under CI).
pub fn databases() -> Vec<Db> {
    let mut dbs = vec![Db::Sqlite];
    if let Some(url) = scim_diesel::testing::postgres_test_url() {
        dbs.push(Db::Postgres(url));
    }
    dbs
}

pub struct TestServer {
    pub base: String,
    pub token: String,
    pub db_path: Option<std::path::PathBuf>,
    kind: Kind,
    _dir: Option<tempfile::TempDir>,
}

enum Kind {
    InProcess {
        handle: actix_web::dev::ServerHandle,
        thread: Option<JoinHandle<()>>,
    },
    Child(std::process::Child),
    External,
}

pub const TEST_MAX_BODY: usize = 64 * 1024;

impl TestServer {
    /// The process id of a server started with [`TestServer::spawn_binary`].
    pub fn pid(&self) -> Option<u32> {
        match &self.kind {
            Kind::Child(child) => Some(child.id()),
            _ => None,
        }
    }

    /// Waits up to `within` for a server started with [`TestServer::spawn_binary`] to exit;
    /// its exit status, or `None` if it is still running.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let Kind::Child(child) = &mut self.kind else {
            return None;
        };
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn start(db: &Db) -> TestServer {
        Self::start_with(db, |_| {})
    }

    pub fn start_with(db: &Db, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let (url, dir, db_path) = db.open();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::with_database(url);
        config.listen = addr.to_string();
        config.public_url = format!("http://{addr}/scim/v2");
        config.workers = 2;
        config.max_body_bytes = TEST_MAX_BODY;
        config.bootstrap_token = Some(scim_auth::generate_token().unwrap());
        adjust(&mut config);
        let state = AppState::open(config).unwrap();
        // A database a server used before has its tokens: this one gets one of its own.
        let token = match state.bootstrap().unwrap() {
            Some(token) => token,
            None => {
                let tenant = state.creds.default_tenant().unwrap().unwrap();
                let token = scim_auth::generate_token().unwrap();
                state.create_token(&tenant, "test", &token).unwrap();
                token
            }
        };
        let base = state.config.public_url.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = scim_server::server_on(state, listener).unwrap();
                tx.send(server.handle()).unwrap();
                server.await.unwrap();
            })
        });
        let handle = rx.recv().unwrap();
        TestServer {
            base,
            token,
            db_path,
            kind: Kind::InProcess {
                handle,
                thread: Some(thread),
            },
            _dir: dir,
        }
    }

    /// Starts the `scim-server` binary at `bin` as a child process on a free port.
    pub fn spawn_binary(bin: &str, db: &Db) -> TestServer {
        Self::spawn_binary_with(bin, db, &[])
    }

    /// [`TestServer::spawn_binary`] with more environment variables for the server.
    pub fn spawn_binary_with(bin: &str, db: &Db, env: &[(&str, &str)]) -> TestServer {
        let (url, dir, db_path) = db.open();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let base = format!("http://{listen}/scim/v2");
        let token = scim_auth::generate_token().unwrap();
        let child = std::process::Command::new(bin)
            .env("SCIM_DATABASE_URL", &url)
            .env("SCIM_LISTEN", &listen)
            .env("SCIM_PUBLIC_URL", &base)
            .env("SCIM_BOOTSTRAP_TOKEN", &token)
            .env("SCIM_MAX_BODY_BYTES", TEST_MAX_BODY.to_string())
            .env("SCIM_WORKERS", "2")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let server = TestServer {
            base,
            token,
            db_path,
            kind: Kind::Child(child),
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let client = reqwest::blocking::Client::new();
        while std::time::Instant::now() < deadline {
            if client
                .get(format!("{}/ServiceProviderConfig", server.base))
                .send()
                .is_ok_and(|r| r.status() == 200)
            {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{bin} did not answer on {} within 30 s", server.base);
    }

    /// A server someone else runs (must be empty, and is emptied between cases).
    pub fn external(base: &str, token: &str) -> TestServer {
        TestServer {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            db_path: None,
            kind: Kind::External,
            _dir: None,
        }
    }

    pub fn is_external(&self) -> bool {
        matches!(self.kind, Kind::External)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::InProcess { handle, thread } => {
                let handle = handle.clone();
                let _ = std::thread::spawn(move || {
                    actix_web::rt::System::new().block_on(handle.stop(false))
                })
                .join();
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            Kind::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Kind::External => {}
        }
    }
}

/// Sends one request to `s` with its token; returns status, JSON body (or null) and headers.
/// A request to `s` with its bearer token, these headers and, if given, a SCIM JSON body.
pub fn request(
    client: &Client,
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> reqwest::blocking::RequestBuilder {
    let mut rb = client
        .request(method, format!("{}{path}", s.base))
        .bearer_auth(&s.token);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/scim+json")
            .body(b.to_string());
    }
    rb
}

pub fn call(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = request(&Client::new(), s, method, path, body.as_ref(), headers)
        .send()
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.json().unwrap_or(Value::Null), headers)
}

/// `GET /healthz` on `s` (outside the SCIM base, without a token): status, JSON body, headers.
pub fn health(s: &TestServer) -> (u16, Value, reqwest::header::HeaderMap) {
    let root = s.base.trim_end_matches("/scim/v2");
    let r = Client::new().get(format!("{root}/healthz")).send().unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.json().unwrap_or(Value::Null), headers)
}
