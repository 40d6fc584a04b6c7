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
    conn.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    let sep = if base_url.contains('?') { '&' } else { '?' };
    Ok(format!("{base_url}{sep}options=-csearch_path%3D{schema}"))
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
