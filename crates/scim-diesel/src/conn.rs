//! Connections: one enum over SQLite and PostgreSQL, chosen by URL, pooled with r2d2.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

mod any {
    //! The derive below generates items without docs; they are documented here instead.
    #![allow(missing_docs)]
    use diesel::pg::PgConnection;
    use diesel::sqlite::SqliteConnection;

    /// A connection to either database; queries are written once against it.
    #[derive(diesel::MultiConnection)]
    pub enum AnyConnection {
        /// PostgreSQL
        Postgres(PgConnection),
        /// SQLite
        Sqlite(SqliteConnection),
    }
}

pub use any::AnyConnection;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`
    Postgres,
    /// anything else: a file path, `sqlite://path` or `:memory:`
    Sqlite,
}

impl Backend {
    /// Chooses the backend from the URL scheme (never by trial, since SQLite accepts any path).
    pub fn from_url(url: &str) -> Backend {
        let lower = url.trim().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// `url` with `sslmode=disable` added when it connects over TCP to this machine only: every
/// host it names is a loopback address (`localhost`, `127.x.x.x`, `::1`), and neither the URL
/// (`sslmode`, or `host`, `hostaddr`, `service`, which may lead elsewhere) nor `PGSSLMODE`
/// (`env_sslmode`) says otherwise. libpq's default (`prefer`) negotiates TLS whenever the
/// server offers it, and TLS on a loopback connection protects nothing while costing both
/// ends CPU on every message: 8-22 % of the server's CPU in benchmark runs with PostgreSQL
/// on the same machine. Plain TCP is one of the outcomes `prefer` allows; a server that refuses
/// it gets the URL as given (see [`ConnectionManager::establish`]). Any other URL is
/// returned as it is.
pub(crate) fn plain_on_loopback(url: &str, env_sslmode: bool) -> String {
    let unchanged = url.to_string();
    let Some((_, rest)) = url.split_once("://") else {
        return unchanged;
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let mut keys = query.split('&').filter_map(|kv| kv.split('=').next());
    let named = |k: &str| {
        ["sslmode", "host", "hostaddr", "service"].contains(&k.to_ascii_lowercase().as_str())
    };
    if env_sslmode || url.contains('#') || keys.any(named) || hosts.is_empty() {
        return unchanged;
    }
    let loopback = |host: &str| {
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.split(':').next().unwrap_or(""),
        };
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    if !hosts.split(',').all(loopback) {
        return unchanged;
    }
    let separator = match url.contains('?') {
        false => "?",
        true if url.ends_with(['?', '&']) => "",
        true => "&",
    };
    format!("{url}{separator}sslmode=disable")
}

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// r2d2 manager that picks the connection type from the URL and prepares each connection.
#[derive(Debug, Clone)]
pub struct ConnectionManager {
    url: String,
    /// PostgreSQL: the URL as given, where `url` adds `sslmode=disable` (see
    /// [`plain_on_loopback`]); `None` when they are the same
    given_url: Option<String>,
    backend: Backend,
    busy_timeout: Duration,
    query_timeout: Option<Duration>,
    /// set when a connection of this manager's pool was found unusable (see [`checkout`])
    lost: Arc<AtomicBool>,
}

impl ConnectionManager {
    /// A manager for `url`.
    pub fn new(url: &str, busy_timeout: Duration, query_timeout: Option<Duration>) -> Self {
        let backend = Backend::from_url(url);
        let (url, given_url) = match backend {
            Backend::Sqlite => (
                url.strip_prefix("sqlite://").unwrap_or(url).to_string(),
                None,
            ),
            Backend::Postgres => {
                let plain = plain_on_loopback(url, std::env::var_os("PGSSLMODE").is_some());
                let given = (plain != url).then(|| url.to_string());
                (plain, given)
            }
        };
        ConnectionManager {
            url,
            given_url,
            backend,
            busy_timeout,
            query_timeout,
            lost: Arc::default(),
        }
    }

    /// Which backend this manager connects to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Opens and prepares one connection.
    pub fn establish(&self) -> Result<AnyConnection, diesel::ConnectionError> {
        match self.backend {
            Backend::Postgres => {
                // A server that accepts only TLS, even on loopback (`hostssl` lines alone in
                // `pg_hba.conf`), refuses the plain connection: the URL as given then decides.
                let mut c = match (PgConnection::establish(&self.url), &self.given_url) {
                    (Ok(c), _) => c,
                    (Err(_), Some(given)) => PgConnection::establish(given)?,
                    (Err(e), None) => return Err(e),
                };
                // The statements this crate keeps prepared are lookups by key, whose plan does
                // not depend on the values bound: with PostgreSQL's default (`auto`) it still
                // planned some of them anew on every execution (14 % of PostgreSQL's CPU in a
                // benchmark run). Filters built per request are not kept prepared and are
                // planned with their values either way. PostgreSQL before 12 has no such
                // setting; the connection is used as it is there.
                if let Err(e) = c.batch_execute("SET plan_cache_mode = force_generic_plan") {
                    log::debug!("PostgreSQL keeps its own plan cache mode: {e}");
                }
                // No JIT compilation: every statement here is short, and a generic plan's
                // guessed cost can pass `jit_above_cost` (the walk up nested groups did), which
                // then compiles the statement on every execution: 20 ms for a read of 0.1 ms.
                // PostgreSQL before 11 has no JIT and no such setting.
                if let Err(e) = c.batch_execute("SET jit = off") {
                    log::debug!("PostgreSQL keeps its own JIT setting: {e}");
                }
                if let Some(t) = self.query_timeout {
                    c.batch_execute(&format!("SET statement_timeout = {}", t.as_millis()))
                        .map_err(|e| {
                            diesel::ConnectionError::BadConnection(format!(
                                "configuring PostgreSQL: {e}"
                            ))
                        })?;
                }
                Ok(AnyConnection::Postgres(c))
            }
            Backend::Sqlite => {
                let mut c = SqliteConnection::establish(&self.url)?;
                // WAL: readers never block the writer; synchronous=NORMAL in WAL mode keeps every
                // commit durable across a crash of this process (not of the OS).
                let pragmas = format!(
                    "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA case_sensitive_like = ON;",
                    self.busy_timeout.as_millis()
                );
                c.batch_execute(&pragmas).map_err(|e| {
                    diesel::ConnectionError::BadConnection(format!("configuring SQLite: {e}"))
                })?;
                deadline::register(&mut c).map_err(|e| {
                    diesel::ConnectionError::BadConnection(format!("configuring SQLite: {e}"))
                })?;
                Ok(AnyConnection::Sqlite(c))
            }
        }
    }
}

/// The query timeout on SQLite, which has no statement timeout of its own.
///
/// A query that may scan (filter sub-queries on the attribute-value index, `co`/`ew` tests on
/// columns) carries `scim_alive(<column>)` in its `WHERE` clauses (`RawCond::alive`): a
/// function of this crate, evaluated for each row the scan visits, that fails the statement
/// once the deadline of the running read has passed. The deadline is per thread, set by
/// [`deadline::Guard`] around a read; SQLite calls the function on the thread running the
/// statement. On PostgreSQL `statement_timeout` does the same for every statement.
pub(crate) mod deadline {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use diesel::serialize::{self, Output, ToSql};
    use diesel::sql_types::{BigInt, Bool};
    use diesel::sqlite::{Sqlite, SqliteConnection};

    /// The message of the error that ends a statement past its deadline.
    pub const EXPIRED: &str = "the query ran past its deadline (SCIM_QUERY_TIMEOUT_MS)";

    thread_local! {
        static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
        static CALLS: Cell<u32> = const { Cell::new(0) };
    }

    diesel::define_sql_function! {
        /// true while the running read is within its deadline; fails the statement after it
        fn scim_alive(x: BigInt) -> Bool;
    }

    /// The function's answer: a serialization error ends the statement.
    #[derive(Debug)]
    struct Alive(bool);

    impl ToSql<Bool, Sqlite> for Alive {
        fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
            if self.0 {
                <bool as ToSql<Bool, Sqlite>>::to_sql(&true, out)
            } else {
                Err(EXPIRED.into())
            }
        }
    }

    fn alive() -> bool {
        let Some(deadline) = DEADLINE.with(Cell::get) else {
            return true;
        };
        // The clock is read every 256 rows: a row costs far less than a clock read.
        let n = CALLS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        n % 256 != 0 || Instant::now() < deadline
    }

    /// Registers `scim_alive` on a SQLite connection.
    pub fn register(conn: &mut SqliteConnection) -> diesel::QueryResult<()> {
        scim_alive_utils::register_nondeterministic_impl(conn, |_: i64| Alive(alive()))
    }

    /// Sets this thread's deadline for as long as it lives.
    pub struct Guard(Option<Instant>);

    impl Guard {
        /// `timeout` from now (`None`: no deadline).
        pub fn start(timeout: Option<Duration>) -> Guard {
            let previous = DEADLINE.with(Cell::get);
            DEADLINE.with(|d| d.set(timeout.map(|t| Instant::now() + t)));
            Guard(previous)
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
}

thread_local! {
    /// Set when a database error on this thread may have left its connection unusable.
    static CONNECTION_FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the pooled connection this thread is using as unusable, so that the pool closes it
/// instead of taking it back. Connections are not tested on checkout (that would be one more
/// round trip per request); after the database restarts, the first stale connection fails
/// once, and [`checkout`] then tests the idle ones before the next request takes one.
pub(crate) fn connection_failed() {
    CONNECTION_FAILED.with(|f| f.set(true));
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = AnyConnection;
    type Error = diesel::ConnectionError;

    fn connect(&self) -> Result<AnyConnection, Self::Error> {
        self.establish()
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), Self::Error> {
        conn.batch_execute("SELECT 1")
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))
    }

    fn has_broken(&self, _conn: &mut AnyConnection) -> bool {
        let broken = CONNECTION_FAILED.with(|f| f.replace(false));
        if broken {
            self.lost.store(true, Ordering::Release);
        }
        broken
    }
}

impl ConnectionManager {
    /// The flag [`checkout`] reads: shared by every clone of this manager.
    pub(crate) fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }
}

/// A connection from `pool`. Connections are not tested on checkout; but once one was found
/// unusable (`lost`, set when the pool closed it), the others that sat idle meanwhile are
/// likely stale too (the database restarted, or a network path was cut): the next checkout
/// first tests every idle connection with one round trip and closes those that fail, so
/// that after a database restart one request fails, not one per pooled connection.
pub(crate) fn checkout(
    pool: &r2d2::Pool<ConnectionManager>,
    lost: &AtomicBool,
) -> Result<r2d2::PooledConnection<ConnectionManager>, r2d2::Error> {
    if lost.load(Ordering::Acquire) && lost.swap(false, Ordering::AcqRel) {
        let mut tested = Vec::new();
        while let Some(mut conn) = pool.try_get() {
            if conn.batch_execute("SELECT 1").is_ok() {
                tested.push(conn);
            } else {
                // Closed by the pool when dropped here, instead of taken back.
                connection_failed();
                drop(conn);
            }
            if tested.len() >= pool.max_size() as usize {
                break;
            }
        }
        // Test failures above set the flag again; those connections are gone already.
        lost.store(false, Ordering::Release);
        if let Some(conn) = tested.pop() {
            return Ok(conn);
        }
    }
    pool.get()
}

/// Applies pending migrations for the connection's backend; returns how many ran.
pub fn run_migrations(conn: &mut AnyConnection) -> Result<usize, String> {
    let applied = match conn {
        AnyConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
        AnyConnection::Postgres(c) => c
            .run_pending_migrations(POSTGRES_MIGRATIONS)
            .map(|v| v.len()),
    };
    applied.map_err(|e| format!("migration failed: {e}"))
}

/// Reverts the latest migration (for tests of `down.sql` and of backfills).
pub fn revert_last_migration(conn: &mut AnyConnection) -> Result<(), String> {
    let r = match conn {
        AnyConnection::Sqlite(c) => c.revert_last_migration(SQLITE_MIGRATIONS).map(|_| ()),
        AnyConnection::Postgres(c) => c.revert_last_migration(POSTGRES_MIGRATIONS).map(|_| ()),
    };
    r.map_err(|e| format!("revert failed: {e}"))
}

/// Reverts every migration (for tests of `down.sql`).
pub fn revert_all_migrations(conn: &mut AnyConnection) -> Result<(), String> {
    let r = match conn {
        AnyConnection::Sqlite(c) => c.revert_all_migrations(SQLITE_MIGRATIONS).map(|_| ()),
        AnyConnection::Postgres(c) => c.revert_all_migrations(POSTGRES_MIGRATIONS).map(|_| ()),
    };
    r.map_err(|e| format!("revert failed: {e}"))
}

/// The diesel backend type of [`AnyConnection`] (dispatches to SQLite or PostgreSQL).
pub type AnyBackend = <AnyConnection as Connection>::Backend;

#[cfg(test)]
mod tests {
    use super::plain_on_loopback;

    #[test]
    fn loopback_postgres_urls_without_an_ssl_mode_connect_in_plain() {
        for (url, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
            ),
            (
                "postgresql://u:p%40ss@localhost/db?connect_timeout=3",
                "postgresql://u:p%40ss@localhost/db?connect_timeout=3&sslmode=disable",
            ),
            (
                "postgres://[::1]:5433/db?",
                "postgres://[::1]:5433/db?sslmode=disable",
            ),
            (
                "postgres://127.0.0.2,localhost:5433/db",
                "postgres://127.0.0.2,localhost:5433/db?sslmode=disable",
            ),
            (
                "postgres://127.0.0.1",
                "postgres://127.0.0.1?sslmode=disable",
            ),
        ] {
            assert_eq!(plain_on_loopback(url, false), expected, "{url}");
            assert_eq!(
                plain_on_loopback(url, true),
                url,
                "PGSSLMODE decides: {url}"
            );
        }
    }

    #[test]
    fn other_postgres_urls_are_left_as_they_are() {
        for url in [
            "postgres://db.example.com/scim",
            "postgres://10.0.0.5:5432/scim",
            "postgres://127.0.0.1,db.example.com/scim",
            "postgres://127.0.0.1/scim?sslmode=require",
            "postgres://127.0.0.1/scim?SSLMODE=verify-full",
            "postgres://127.0.0.1/scim?hostaddr=10.0.0.5",
            "postgres://localhost/scim?host=/var/run/postgresql",
            "postgres://localhost/scim?service=prod",
            "postgres:///scim",
            "postgres://user@/scim",
            "postgres://127.evil.example.com/scim",
            "postgres://localhost.example.com/scim",
        ] {
            assert_eq!(plain_on_loopback(url, false), url);
        }
    }
}
