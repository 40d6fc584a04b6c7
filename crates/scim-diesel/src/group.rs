//! Group commit for SQLite: concurrent writers share one transaction and one `COMMIT`.
//!
//! Every SQLite commit writes each page it dirtied to the WAL, and a resource dirties one
//! index page per indexed attribute. Sharing a commit between the writers that are queued at
//! that moment pays for those pages (and for checkpoints) once per batch instead of once per
//! write.
//!
//! The one writer connection lives on a thread of its own. Writers queue their transaction
//! bodies and wait (or, [`GroupWriter::submit`], are called back); the writer thread takes the first, opens a transaction, runs the bodies
//! queued behind it one after the other, and commits once the queue is empty (or
//! [`MAX_BATCH`] ran). Nothing passes from thread to thread between two bodies: the next one
//! is queued already. (Before, each writer ran its body on its own thread under a lock, and
//! each hand-over of the lock was a thread wake-up during which the connection stood idle:
//! 19 % more creates per second this way, see docs/BENCHMARKS.md.) Bodies are therefore
//! `'static`: they own what they write.
//!
//! A failing body must leave nothing behind: the store's bodies make every refusal (a version
//! mismatch, unknown members) before their first write, and a failed statement (a duplicate
//! `userName`) is undone by SQLite. That is checked for every failure (`total_changes()`
//! before and after); a body that failed after changing rows (or panicked) abandons its batch,
//! which is rolled back and fails for every writer in it. A body that failed cleanly is
//! answered at once. Nobody else is answered before the `COMMIT` that holds their changes has
//! succeeded, so an acknowledged write is as durable as with one transaction per write; if
//! that `COMMIT` fails, every write of the batch fails.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::SqliteConnection;

use crate::conn::AnyConnection;

/// Most writes one commit may carry (bounds the wait of the first writer of a batch).
const MAX_BATCH: usize = 64;

type Tm = AnsiTransactionManager;

/// How a body ended, as the writer thread needs to know it.
enum Ran {
    /// succeeded: its caller waits for the commit
    Ok,
    /// failed without changing anything: its caller has its error and need not wait
    FailedClean,
    /// failed after changing rows (or could not be checked): the batch must be abandoned
    FailedDirty,
}

/// How a job's caller learns the job's fate, once it is known (`Ok`: committed, or the body's
/// own error stands): it waits for it ([`GroupWriter::run`]), or is called with it on the
/// writer thread ([`GroupWriter::submit`]).
enum Slot {
    Wait(Waited),
    Call(Mutex<Option<Told>>),
}

/// Where a caller of [`GroupWriter::run`] waits for its job's fate.
type Waited = Arc<(Mutex<Option<Result<(), Failure>>>, Condvar)>;

/// What a submitted job's caller is called with.
type Told = Box<dyn FnOnce(Result<(), Failure>) + Send>;

/// Why a batch failed, told to each of its writers: a database error keeps its kind and
/// message, so that the store still tells a busy or lost database (503) from other failures.
#[derive(Clone, Debug)]
struct Failure {
    kind: Option<DatabaseErrorKind>,
    message: String,
}

impl Failure {
    fn new(what: &str, e: &DieselError) -> Self {
        let kind = match e {
            DieselError::DatabaseError(kind, _) => Some(*kind),
            _ => None,
        };
        Failure {
            kind,
            message: format!("{what}: {e}"),
        }
    }

    fn other(message: &str) -> Self {
        Failure {
            kind: None,
            message: message.to_string(),
        }
    }

    fn into_diesel(self) -> DieselError {
        match self.kind {
            Some(kind) => DieselError::DatabaseError(kind, Box::new(self.message)),
            None => DieselError::QueryBuilderError(self.message.into()),
        }
    }
}

/// One queued write: its body (which keeps its own result for the caller) and where the
/// caller waits.
struct Job {
    body: Box<dyn FnOnce(&mut AnyConnection) -> Ran + Send>,
    slot: Slot,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The writer connection with group commit, on a thread of its own (see the module docs).
pub struct GroupWriter {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

fn tell(slot: &Slot, outcome: Result<(), Failure>) {
    match slot {
        Slot::Wait(w) => {
            *lock(&w.0) = Some(outcome);
            w.1.notify_one();
        }
        Slot::Call(f) => {
            let f = lock(f).take();
            if let Some(f) = f {
                f(outcome);
            }
        }
    }
}

/// A body as the writer runs it: it keeps its own result in `kept`, and says how it ended.
fn checked_body<T, E>(
    body: impl FnOnce(&mut AnyConnection) -> Result<T, E> + Send + 'static,
    kept: Arc<Mutex<Option<Result<T, E>>>>,
) -> Box<dyn FnOnce(&mut AnyConnection) -> Ran + Send>
where
    T: Send + 'static,
    E: Send + 'static,
{
    Box::new(move |conn| {
        // Bodies run without a savepoint of their own (one cost a copy of every page the
        // body touched, a third of the writer's time); whether a failing body left changes
        // behind is checked, not assumed.
        let before = total_changes(conn);
        let out = body(conn);
        let ran = match (&out, before) {
            (Ok(_), Ok(_)) => Ran::Ok,
            (Err(_), Ok(before))
                if total_changes(conn).is_ok_and(|now| now == before)
                    && still_in_transaction(conn) =>
            {
                Ran::FailedClean
            }
            _ => Ran::FailedDirty,
        };
        *lock(&kept) = Some(out);
        ran
    })
}

/// A body's answer from its fate and its own result.
fn answer<T, E: From<DieselError>>(
    outcome: Result<(), Failure>,
    body_result: Option<Result<T, E>>,
) -> Result<T, E> {
    match (outcome, body_result) {
        (_, Some(Err(e))) => Err(e),
        (Ok(()), Some(Ok(v))) => Ok(v),
        (Err(failure), _) => Err(failure.into_diesel().into()),
        (Ok(()), None) => Err(failed("group commit", "a write was lost").into()),
    }
}

impl GroupWriter {
    /// Takes over `conn` as the one writer connection, on a thread that stops when the
    /// writer is dropped (after the writes queued by then).
    pub fn new(conn: AnyConnection) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("scim-writer".into())
            .spawn(move || writer(&for_thread, conn))?;
        Ok(GroupWriter { shared })
    }

    /// Runs `body` as part of a group transaction on the writer thread; returns once its
    /// changes are committed (or have failed). A failing body must leave nothing behind (see
    /// the module docs for how that is checked).
    pub fn run<T, E>(
        &self,
        body: impl FnOnce(&mut AnyConnection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DieselError> + Send + 'static,
    {
        let wait: Waited = Arc::new((Mutex::new(None), Condvar::new()));
        let result: Arc<Mutex<Option<Result<T, E>>>> = Arc::new(Mutex::new(None));
        let job = Job {
            body: checked_body(body, result.clone()),
            slot: Slot::Wait(wait.clone()),
        };
        if let Err(job) = self.queue(job) {
            drop(job);
            return Err(failed("the writer has stopped", "store closed").into());
        }
        let mut told = lock(&wait.0);
        let outcome = loop {
            match told.take() {
                Some(outcome) => break outcome,
                None => told = wait.1.wait(told).unwrap_or_else(PoisonError::into_inner),
            }
        };
        drop(told);
        let body_result = lock(&result).take();
        answer(outcome, body_result)
    }

    /// [`run`](Self::run) without waiting: `done` is called with the answer on the writer
    /// thread (so it must be quick: hand the answer on), after the commit that holds the
    /// body's changes, or with the failure.
    pub fn submit<T, E>(
        &self,
        body: impl FnOnce(&mut AnyConnection) -> Result<T, E> + Send + 'static,
        done: impl FnOnce(Result<T, E>) + Send + 'static,
    ) where
        T: Send + 'static,
        E: From<DieselError> + Send + 'static,
    {
        let result: Arc<Mutex<Option<Result<T, E>>>> = Arc::new(Mutex::new(None));
        let kept = result.clone();
        let told: Told = Box::new(move |outcome| done(answer(outcome, lock(&kept).take())));
        let job = Job {
            body: checked_body(body, result),
            slot: Slot::Call(Mutex::new(Some(told))),
        };
        if let Err(job) = self.queue(job) {
            tell(&job.slot, Err(Failure::other("the writer has stopped")));
        }
    }

    /// Queues `job` for the writer thread; `Err(job)` when the writer has stopped.
    fn queue(&self, job: Job) -> Result<(), Job> {
        {
            let mut q = lock(&self.shared.queue);
            if q.closed {
                return Err(job);
            }
            q.jobs.push_back(job);
        }
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
    }
}

/// The writer thread: one batch after another until the writer is dropped.
fn writer(shared: &Shared, mut conn: AnyConnection) {
    loop {
        let first = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = shared.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch(shared, &mut conn, first)
        }));
        if ran.is_err() {
            // Its callers were told it failed; whatever it left open is undone.
            if let Ok(c) = sqlite(&mut conn) {
                let _ = <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(c);
            }
        }
    }
}

/// Runs `first` and whatever queues behind it (up to [`MAX_BATCH`]) in one transaction.
fn batch(shared: &Shared, conn: &mut AnyConnection, first: Job) {
    // Transactions go through diesel's transaction manager, so that diesel's own nested
    // transactions (multi-row SQLite inserts use one) become savepoints.
    if let Err(e) = sqlite(conn).and_then(|c| Tm::begin_transaction_sql(c, "BEGIN IMMEDIATE")) {
        // Without a transaction this job does not run; the next one tries again.
        tell(&first.slot, Err(Failure::new("cannot begin a write", &e)));
        return;
    }
    // Told when the batch ends, however it ends (a panic below tells them it failed).
    let mut waiting = Waiting {
        slots: Vec::new(),
        outcome: Err(Failure::other("the writer failed")),
    };
    let mut abandoned = false;
    let mut next = Some(first);
    let mut ran = 0;
    while let Some(Job { body, slot }) = next.take() {
        // A panicking body is a failure that may have left changes: the batch is abandoned.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(conn)))
            .unwrap_or(Ran::FailedDirty);
        match outcome {
            Ran::Ok => waiting.slots.push(slot),
            Ran::FailedClean => tell(&slot, Ok(())),
            Ran::FailedDirty => {
                abandoned = true;
                waiting.slots.push(slot);
            }
        }
        ran += 1;
        if abandoned || ran >= MAX_BATCH {
            break;
        }
        next = lock(&shared.queue).jobs.pop_front();
    }
    waiting.outcome = match sqlite(conn) {
        Err(e) => Err(Failure::new("group commit", &e)),
        Ok(inner) if !abandoned => {
            <Tm as TransactionManager<SqliteConnection>>::commit_transaction(inner).map_err(|e| {
                let _ = <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(inner);
                Failure::new("group commit failed", &e)
            })
        }
        Ok(inner) => {
            // Unwind every level diesel knows of (a nested transaction a body left open, then
            // the batch); diesel errs once none is left.
            for _ in 0..4 {
                if <Tm as TransactionManager<SqliteConnection>>::rollback_transaction(inner)
                    .is_err()
                {
                    break;
                }
            }
            Err(Failure::other(
                "a write failed after changing rows; its batch was rolled back",
            ))
        }
    };
}

/// The callers of a batch that wait for its end, and what they are told then.
struct Waiting {
    slots: Vec<Slot>,
    outcome: Result<(), Failure>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        for slot in &self.slots {
            tell(slot, self.outcome.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::ConnectionManager;
    use diesel::connection::SimpleConnection;
    use std::time::Duration;

    fn writer_on(dir: &tempfile::TempDir) -> (GroupWriter, AnyConnection) {
        writer_waiting(dir, Duration::from_secs(5))
    }

    /// A writer whose connection waits `busy` for another process's write lock.
    fn writer_waiting(dir: &tempfile::TempDir, busy: Duration) -> (GroupWriter, AnyConnection) {
        let url = dir.path().join("w.db").to_string_lossy().into_owned();
        let manager = ConnectionManager::new(&url, busy, None);
        let mut setup = manager.establish().unwrap();
        setup
            .batch_execute("CREATE TABLE t (v INTEGER NOT NULL)")
            .unwrap();
        (
            GroupWriter::new(manager.establish().unwrap()).unwrap(),
            setup,
        )
    }

    fn rows(conn: &mut AnyConnection) -> Vec<i64> {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct V {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            v: i64,
        }
        let AnyConnection::Sqlite(c) = conn else {
            unreachable!()
        };
        diesel::sql_query("SELECT v FROM t ORDER BY v")
            .load::<V>(c)
            .unwrap()
            .into_iter()
            .map(|r| r.v)
            .collect()
    }

    fn insert(v: i64) -> impl FnOnce(&mut AnyConnection) -> Result<i64, DieselError> + Send {
        move |c| {
            c.batch_execute(&format!("INSERT INTO t (v) VALUES ({v})"))?;
            Ok(v)
        }
    }

    /// A body that panics on the writer thread fails its caller (with the writes of its batch
    /// undone) instead of taking the writer down: later writes commit as before.
    #[test]
    fn a_panicking_body_fails_its_batch_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut reader) = writer_on(&dir);
        assert_eq!(writer.run(insert(1)).unwrap(), 1);
        let panicked = writer.run(|c: &mut AnyConnection| -> Result<(), DieselError> {
            c.batch_execute("INSERT INTO t (v) VALUES (2)")?;
            panic!("a bug in a body");
        });
        assert!(panicked.is_err());
        assert_eq!(writer.run(insert(3)).unwrap(), 3);
        assert_eq!(rows(&mut reader), [1, 3]);
    }

    /// Writes from many threads share commits and each is answered with its own result once
    /// committed; a clean failure is answered with its own error and costs the others nothing.
    #[test]
    fn concurrent_writers_are_each_answered_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut reader) = writer_on(&dir);
        let writer = Arc::new(writer);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            let v = t * 100 + i;
                            if i == 7 {
                                // refused before writing anything
                                writer
                                    .run(|_: &mut AnyConnection| -> Result<i64, DieselError> {
                                        Err(DieselError::NotFound)
                                    })
                                    .unwrap_err();
                                return None;
                            }
                            Some(writer.run(insert(v)).unwrap())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut answered: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .flatten()
            .collect();
        answered.sort_unstable();
        assert_eq!(answered.len(), 8 * 24);
        assert_eq!(rows(&mut reader), answered);
    }

    /// A submitted write's caller is called after the commit that holds it (its row is
    /// visible to another connection by then), with its own result; a refusal, a panic and a
    /// stopped writer are each the failure it is called with.
    #[test]
    fn submitted_writes_are_answered_through_their_callback_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut reader) = writer_on(&dir);
        let (tx, rx) = std::sync::mpsc::channel();
        let url = dir.path().join("w.db").to_string_lossy().into_owned();
        for v in [1, 2] {
            let (tx, url) = (tx.clone(), url.clone());
            writer.submit(insert(v), move |result| {
                // Seen from another connection, on the writer thread, before answering.
                let manager = ConnectionManager::new(&url, Duration::from_secs(5), None);
                let seen = rows(&mut manager.establish().unwrap());
                tx.send((result.ok(), seen.contains(&v))).unwrap();
            });
        }
        let mut answers = [rx.recv().unwrap(), rx.recv().unwrap()];
        answers.sort_unstable();
        assert_eq!(answers, [(Some(1), true), (Some(2), true)]);
        let refused = std::sync::mpsc::channel();
        let tx = refused.0;
        writer.submit(
            |_: &mut AnyConnection| -> Result<i64, DieselError> { Err(DieselError::NotFound) },
            move |r| tx.send(r.is_err()).unwrap(),
        );
        assert!(refused.1.recv().unwrap());
        let panicked = std::sync::mpsc::channel();
        let tx = panicked.0;
        writer.submit(
            |c: &mut AnyConnection| -> Result<(), DieselError> {
                c.batch_execute("INSERT INTO t (v) VALUES (3)")?;
                panic!("a bug in a body");
            },
            move |r| tx.send(r.is_err()).unwrap(),
        );
        assert!(panicked.1.recv().unwrap());
        assert_eq!(rows(&mut reader), [1, 2]);
        let shared = writer.shared.clone();
        drop(writer);
        let stopped = std::sync::mpsc::channel();
        let tx = stopped.0;
        GroupWriter { shared }.submit(insert(4), move |r| tx.send(r.is_err()).unwrap());
        assert!(stopped.1.recv().unwrap());
    }

    /// When another process holds the write lock past the busy timeout, the writer's error is
    /// still SQLite's own ("database is locked"), which the store answers with 503; once the
    /// lock is gone, writes go on.
    #[test]
    fn a_database_locked_by_another_process_is_reported_as_sqlite_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut other) = writer_waiting(&dir, Duration::from_millis(50));
        other.batch_execute("BEGIN IMMEDIATE").unwrap();
        match writer.run(insert(1)) {
            Err(DieselError::DatabaseError(_, info)) => {
                assert!(
                    info.message().contains("database is locked"),
                    "{}",
                    info.message()
                )
            }
            other => panic!("expected the lock error, got {other:?}"),
        }
        other.batch_execute("COMMIT").unwrap();
        assert_eq!(writer.run(insert(2)).unwrap(), 2);
        assert_eq!(rows(&mut other), [2]);
    }
}
