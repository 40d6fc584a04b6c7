//! Helpers for test suites that run against a real PostgreSQL: each test gets a schema of
//! its own, so tests run in parallel without seeing each other's rows.

use diesel::connection::SimpleConnection;
use diesel::Connection;
use scim_core::StoreError;

/// Creates a new, empty schema on the PostgreSQL at `base_url` and returns a URL whose
/// connections use it (`options=-csearch_path=...`).
pub fn fresh_postgres_schema(base_url: &str) -> Result<String, StoreError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let schema = format!("t_{nanos:x}_{}_{n}", std::process::id());
    let mut conn = diesel::PgConnection::establish(base_url)
        .map_err(|e| StoreError::Unavailable(format!("cannot reach PostgreSQL: {e}")))?;
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| drop_stale_schemas(&mut conn, nanos));
    conn.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    let sep = if base_url.contains('?') { '&' } else { '?' };
    Ok(format!("{base_url}{sep}options=-csearch_path%3D{schema}"))
}

/// Drops the schemas of test runs that started more than an hour before `now_nanos` (their
/// names carry their creation time), so that a database shared by many runs does not fill
/// up; a run in progress is never older than that. Failures are ignored: this is tidying.
fn drop_stale_schemas(conn: &mut diesel::PgConnection, now_nanos: u128) {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let Ok(names) = diesel::sql_query(
        "SELECT schema_name::text AS name FROM information_schema.schemata \
         WHERE schema_name LIKE 't\\_%'",
    )
    .load::<Name>(conn) else {
        return;
    };
    const HOUR: u128 = 3_600_000_000_000;
    for Name { name } in names {
        let created = name
            .split('_')
            .nth(1)
            .and_then(|hex| u128::from_str_radix(hex, 16).ok());
        if created.is_some_and(|c| c + HOUR < now_nanos) {
            let quoted = name.replace('"', "\"\"");
            let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{quoted}\" CASCADE"));
        }
    }
}

/// Whether the PostgreSQL at `base_url` accepts TLS connections (`SHOW ssl`).
pub fn postgres_offers_tls(base_url: &str) -> Result<bool, StoreError> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        ssl: String,
    }
    let mut conn = diesel::PgConnection::establish(base_url)
        .map_err(|e| StoreError::Unavailable(format!("cannot reach PostgreSQL: {e}")))?;
    let shown = diesel::sql_query("SHOW ssl")
        .get_result::<Setting>(&mut conn)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(shown.ssl == "on")
}

/// The PostgreSQL URL for tests from `SCIM_TEST_POSTGRES_URL`. `None` when unset, except
/// under CI (`CI` set), where a missing URL panics: PostgreSQL tests must not be skipped there.
#[allow(clippy::panic)]
pub fn postgres_test_url() -> Option<String> {
    match std::env::var("SCIM_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
            panic!(
                "SCIM_TEST_POSTGRES_URL must be set under CI: PostgreSQL tests may not be skipped"
            )
        }
        _ => {
            eprintln!(
                "SCIM_TEST_POSTGRES_URL is not set: skipping the PostgreSQL half of this test"
            );
            None
        }
    }
}
