//! `TestServer`: the real application on 127.0.0.1:<free port>, with a fresh database.

use std::net::TcpListener;
use std::thread::JoinHandle;

use scim_server::{AppState, Config};

/// Which database a test server uses.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite,
    Postgres(String),
}

impl Db {
    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres(_) => "postgres",
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
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

pub const TEST_MAX_BODY: usize = 64 * 1024;

impl TestServer {
    pub fn start(db: &Db) -> TestServer {
        Self::start_with(db, |_| {})
    }

    pub fn start_with(db: &Db, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let (url, dir, db_path) = match db {
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
        };
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
        let token = state
            .bootstrap()
            .unwrap()
            .expect("fresh database gets a token");
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
            handle,
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let _ =
            std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(false)))
                .join();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
