//! Group commit for SQLite: concurrent writers share one transaction and one `COMMIT`.
//!
//! Every SQLite commit writes each page it dirtied to the WAL, and a resource dirties one
//! index page per indexed attribute. Sharing a commit between the writers that are queued at
//! that moment pays for those pages (and for checkpoints) once per batch instead of once per
//! write.
//!
//! Each writer still runs its own transaction body, on its own thread, one at a time on the
//! one writer connection. A failing body must leave nothing behind: the store's bodies make
//! every refusal (a version mismatch, unknown members) before their first write, and a failed
//! statement (a duplicate `userName`) is undone by SQLite. That is checked for every failure
//! (`total_changes()` before and after); a body that failed after changing rows abandons its
//! batch, which is rolled back and fails for every writer in it. A writer that finishes while
//! others are queued leaves the transaction open for them; the last one commits and wakes the
//! rest. Nobody returns before the `COMMIT` that holds its changes has succeeded, so an
//! acknowledged write is as durable as with one transaction per write; if that `COMMIT`
//! fails, every write of the batch fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::result::Error as DieselError;
use diesel::SqliteConnection;

use crate::conn::AnyConnection;

/// Most writes one commit may carry (bounds the wait of the first writer of a batch).
const MAX_BATCH: usize = 64;

type Tm = AnsiTransactionManager;

struct State {
    conn: AnyConnection,
    /// a batch transaction is open
    open: bool,
    /// number of the current (or last) batch
    batch: u64,
    /// writes in the open batch
    size: usize,
    /// for batches with waiting writers: how many wait, and the commit outcome once known
    waiters: HashMap<u64, (usize, Option<Result<(), String>>)>,
}

/// The writer connection with group commit.
pub struct GroupWriter {
    state: Mutex<State>,
    committed: Condvar,
    queued: AtomicUsize,
}

fn sqlite(conn: &mut AnyConnection) -> Result<&mut SqliteConnection, DieselError> {
    match conn {
        AnyConnection::Sqlite(c) => Ok(c),
        AnyConnection::Postgres(_) => Err(DieselError::QueryBuilderError(
            "group commit is for SQLite".into(),
        )),
    }
}

/// Rows changed by every completed statement of this connection so far (a statement that
/// failed and was undone adds nothing).
fn total_changes(conn: &mut AnyConnection) -> Result<i64, DieselError> {
    use diesel::RunQueryDsl;
    TotalChanges.get_result(sqlite(conn)?)
}

/// `SELECT total_changes()`, as a query of fixed shape that stays prepared (built from
/// `dsl::sql` it was prepared anew on every write).
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
struct TotalChanges;

impl diesel::query_builder::Query for TotalChanges {
    type SqlType = diesel::sql_types::BigInt;
}

impl diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite> for TotalChanges {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
    ) -> diesel::QueryResult<()> {
        out.push_sql("SELECT total_changes()");
        Ok(())
    }
}

impl diesel::RunQueryDsl<SqliteConnection> for TotalChanges {}

/// Whether the batch transaction survived a failed statement. Some errors (disk full, I/O)
/// make SQLite roll the whole transaction back by itself; `BEGIN` then succeeds where inside a
/// transaction it fails. If it succeeded, the new transaction stands in for the lost one
/// (diesel still counts one level), so that abandoning the batch rolls back cleanly.
fn still_in_transaction(conn: &mut AnyConnection) -> bool {
    use diesel::connection::SimpleConnection;
    match sqlite(conn) {
        Ok(c) => c.batch_execute("BEGIN").is_err(),
        Err(_) => false,
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> DieselError {
    DieselError::QueryBuilderError(format!("{what}: {e}").into())
}

impl GroupWriter {
    /// Takes over `conn` as the one writer connection.
    pub fn new(conn: AnyConnection) -> Self {
        GroupWriter {
            state: Mutex::new(State {
                conn,
                open: false,
                batch: 0,
                size: 0,
                waiters: HashMap::new(),
            }),
            committed: Condvar::new(),
            queued: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `body` as part of a group transaction; returns once its changes are committed
    /// (or have failed).
    pub fn run<T, E>(&self, body: impl FnOnce(&mut AnyConnection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DieselError>,
    {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut st = self.lock();
        self.queued.fetch_sub(1, Ordering::SeqCst);
        // Transactions go through diesel's transaction manager, so that diesel's own nested
        // transactions (multi-row SQLite inserts use one) become savepoints.
        if !st.open {
            Tm::begin_transaction_sql(sqlite(&mut st.conn)?, "BEGIN IMMEDIATE")?;
            st.open = true;
            st.batch += 1;
            st.size = 0;
        }
        let batch = st.batch;
        // Bodies run without a savepoint of their own (one cost a copy of every page the body
        // touched, a third of the writer's time): the store's bodies refuse before their first
        // write, and a failed statement is undone by SQLite itself. Whether a failing body
        // left changes behind is checked, not assumed: if it did, or the check fails, the
        // batch is abandoned (rolled back and reported failed to every writer in it).
        let before = total_changes(&mut st.conn);
        let result = body(&mut st.conn);
        let batch_ok = match (&result, before) {
            (Ok(_), Ok(_)) => true,
            (Err(_), Ok(before)) => {
                total_changes(&mut st.conn).is_ok_and(|now| now == before)
                    && still_in_transaction(&mut st.conn)
            }
            (_, Err(_)) => false,
        };
        st.size += 1;
        let more_coming = self.queued.load(Ordering::SeqCst) > 0 && st.size < MAX_BATCH && batch_ok;
        if more_coming {
            // On error there is nothing of ours to commit; the next writer carries the batch on.
            let value = result?;
            st.waiters.entry(batch).or_insert((0, None)).0 += 1;
            loop {
                st = self
                    .committed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                let Some(entry) = st.waiters.get_mut(&batch) else {
                    continue;
                };
                let Some(outcome) = entry.1.clone() else {
                    continue;
                };
                entry.0 -= 1;
                if entry.0 == 0 {
                    st.waiters.remove(&batch);
                }
                return match outcome {
                    Ok(()) => Ok(value),
                    Err(e) => Err(failed("group commit failed", e).into()),
                };
            }
        }
        // Last writer of the batch: commit for everyone (rolling back if that fails), or
        // abandon the batch after a body left changes behind.
        let inner = sqlite(&mut st.conn)?;
        let outcome = if batch_ok {
            <Tm as TransactionManager<SqliteConnection>>::commit_transaction(inner).map_err(|e| {
                let _ = <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(inner);
                e.to_string()
            })
        } else {
            // Unwind every level diesel knows of (a nested transaction the body left open,
            // then the batch); diesel errs once none is left.
            for _ in 0..4 {
                if <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(inner)
                    .is_err()
                {
                    break;
                }
            }
            Err("a write failed after changing rows; its batch was rolled back".to_string())
        };
        st.open = false;
        if let Some(entry) = st.waiters.get_mut(&batch) {
            entry.1 = Some(outcome.clone());
        }
        self.committed.notify_all();
        drop(st);
        match (outcome, result) {
            (Ok(()), r) => r,
            (Err(_), Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(failed("commit failed", e).into()),
        }
    }
}

/// Checkpoints the WAL of a SQLite database from a background thread, so that copying WAL
/// pages back into the database file (and its `fsync`) is off the writer's path: the writer's
/// own automatic checkpoint only triggers if this one falls far behind. `PASSIVE` checkpoints
/// never block readers or the writer. The thread stops when the last handle is dropped.
pub struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing through `conn` every `every`.
    pub fn start(mut conn: AnyConnection, every: std::time::Duration) -> Self {
        use diesel::connection::SimpleConnection;
        use std::sync::mpsc::RecvTimeoutError;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                if let Err(e) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE);") {
                    log::debug!("background checkpoint: {e}");
                }
            }
        });
        Checkpointer { _stop: stop }
    }
}
