//! Group commit for SQLite: concurrent writers share one transaction and one `COMMIT`.
//!
//! Every SQLite commit writes each page it dirtied to the WAL, and a resource dirties one
//! index page per indexed attribute. Sharing a commit between the writers that are queued at
//! that moment pays for those pages (and for checkpoints) once per batch instead of once per
//! write.
//!
//! Each writer still runs its own transaction body, on its own thread, one at a time on the
//! one writer connection, inside a `SAVEPOINT`: a failing body rolls back only its own
//! changes. A writer that finishes while others are queued leaves the transaction open for
//! them; the last one commits and wakes the rest. Nobody returns before the `COMMIT` that
//! holds its changes has succeeded, so an acknowledged write is as durable as with one
//! transaction per write; if that `COMMIT` fails, every write of the batch fails.

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
        // Each writer's body runs in a savepoint: a failure undoes only its own changes. If a
        // savepoint cannot be opened or closed, the batch's state is unknown: it is abandoned
        // (rolled back and reported failed to every writer in it) rather than committed.
        let (result, savepoint_ok) =
            match <Tm as TransactionManager<SqliteConnection>>::begin_transaction(sqlite(
                &mut st.conn,
            )?) {
                Err(e) => (Err(e.into()), false),
                Ok(()) => {
                    let result = body(&mut st.conn);
                    let inner = sqlite(&mut st.conn)?;
                    let closed = if result.is_ok() {
                        <Tm as TransactionManager<SqliteConnection>>::commit_transaction(inner)
                    } else {
                        <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(inner)
                    };
                    (result, closed.is_ok())
                }
            };
        st.size += 1;
        let more_coming =
            self.queued.load(Ordering::SeqCst) > 0 && st.size < MAX_BATCH && savepoint_ok;
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
        // abandon the batch after a savepoint failure.
        let inner = sqlite(&mut st.conn)?;
        let outcome = if savepoint_ok {
            <Tm as TransactionManager<SqliteConnection>>::commit_transaction(inner).map_err(|e| {
                let _ = <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(inner);
                e.to_string()
            })
        } else {
            // Unwind every level (savepoint, then the batch); diesel errs once none is left.
            for _ in 0..4 {
                if <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(inner)
                    .is_err()
                {
                    break;
                }
            }
            Err("a savepoint failed; the batch was rolled back".to_string())
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
