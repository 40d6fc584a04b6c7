//! Point reads of concurrent requests answered together (PostgreSQL; see
//! [`scim_core::store::ResourceStore::submit_point_read`]).
//!
//! On a networked database a point read costs a round trip and, in the database, the work of
//! one statement (parse of the bound message, executor start-up, commit of its implicit
//! transaction), which is many times the index probe it does. Handed to a thread pool, it also
//! costs the request two thread hand-offs. Here requests queue their reads and return; a
//! reader thread of the store takes everything queued at that moment, reads it with one
//! statement per kind of read (`key = ANY($keys)`), and answers each request through its
//! callback. Under load a statement carries many reads; with one request at a time it carries
//! one, and costs what a single read costs. A second reader takes over the queue only while
//! the first one's statement is late (see [`LATE`]).
//!
//! Each read is taken from the queue after it was queued, so its statement starts after the
//! request arrived: it sees every write committed before that, as a read of its own would.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use scim_core::store::{PointKeyBuf, PointRead, PointReadDone, ResourceRecord, TokenRead};
use scim_core::StoreError;

use crate::conn::ConnectionManager;

/// Reader threads: statements that may be in the database at once.
const READERS: usize = 2;

/// How long a statement may run before the reads queued behind it go to another reader.
/// Until then they wait for the running reader, which takes them all when it is done: under
/// load one reader carries the queue, in statements as large as the load makes them. A
/// second one steps in only behind a late statement (a slow or lost connection). Letting
/// every idle reader take what is queued split the queue into smaller statements and cost a
/// thread wake-up per read: 10-20 % fewer reads per second (see docs/BENCHMARKS.md).
const LATE: Duration = Duration::from_millis(50);

/// Most reads one reader takes at once (bounds the size of a statement and of its answer).
const MAX_TAKE: usize = 128;

/// The queue of a store's point reads (dropping the last handle stops its readers).
pub(crate) struct ReadBatcher {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    pool: r2d2::Pool<ConnectionManager>,
    /// see `conn::checkout`
    lost: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(PointRead, PointReadDone)>,
    /// reader threads running
    readers: usize,
    /// readers asleep, waiting for reads
    idle: usize,
    /// when each reader now in a statement started it
    busy: Vec<Instant>,
    /// the store is gone: readers finish what is queued and stop
    closed: bool,
}

/// Reads of one statement: the same token, resource type, kind of key and includes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Kind {
    pub token_hash: String,
    pub resource_type: String,
    /// `userName` keys (else `id`)
    pub by_user_name: bool,
    /// read the groups of each resource
    pub groups: bool,
}

/// What one statement found: `None` when no live token has the hash, else the resource (with
/// its groups, when asked for) of each key that matched.
pub(crate) type Found = Option<HashMap<String, Box<ResourceRecord>>>;

/// Runs one statement for `keys` (distinct) on `conn`.
pub(crate) type ReadMany =
    fn(&mut crate::conn::AnyConnection, &Kind, Vec<String>) -> Result<Found, StoreError>;

impl ReadBatcher {
    pub(crate) fn new(
        pool: r2d2::Pool<ConnectionManager>,
        lost: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        ReadBatcher {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                ready: Condvar::new(),
                pool,
                lost,
            }),
        }
    }

    /// Queues a read; its readers start with the first one.
    pub(crate) fn submit(&self, read: PointRead, done: PointReadDone, run: ReadMany) {
        let mut q = lock(&self.shared.queue);
        while q.readers < READERS {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("scim-point-reads".into())
                .spawn(move || reader(&shared, run));
            match spawned {
                Ok(_) => q.readers += 1,
                Err(e) => {
                    log::error!("cannot start a point-read thread: {e}");
                    break;
                }
            }
        }
        if q.readers == 0 {
            drop(q);
            done(Err(StoreError::Unavailable(
                "no thread to run the read on".into(),
            )));
            return;
        }
        q.waiting.push((read, done));
        let wake = q.idle > 0 && may_take(&q);
        drop(q);
        if wake {
            self.shared.ready.notify_one();
        }
    }
}

impl Drop for ReadBatcher {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
    }
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // The queue is consistent between statements (a panicking callback runs outside the lock).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether an idle reader should take the queued reads: no statement is running, or every
/// running one is late (or the store is closing).
fn may_take(q: &Queue) -> bool {
    q.closed || q.busy.iter().all(|started| started.elapsed() >= LATE)
}

fn reader(shared: &Shared, run: ReadMany) {
    let mut q = lock(&shared.queue);
    loop {
        if q.waiting.is_empty() && q.closed {
            q.readers -= 1;
            return;
        }
        // A reader that just finished a statement is no longer busy, so it takes what queued
        // meanwhile itself; an idle one only what waits behind late statements.
        if q.waiting.is_empty() || !may_take(&q) {
            q.idle += 1;
            q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            q.idle -= 1;
            continue;
        }
        let n = q.waiting.len().min(MAX_TAKE);
        // The oldest first: what is left is what came last.
        let taken = q.waiting.drain(..n).collect::<Vec<_>>();
        let started = Instant::now();
        q.busy.push(started);
        drop(q);
        // A panic in a statement or a callback drops the callbacks of this batch (their
        // requests answer 500) and leaves the thread serving the queue.
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer(shared, taken, run)));
        q = lock(&shared.queue);
        if let Some(i) = q.busy.iter().position(|t| *t == started) {
            q.busy.swap_remove(i);
        }
    }
}

fn answer(shared: &Shared, taken: Vec<(PointRead, PointReadDone)>, run: ReadMany) {
    let mut conn = match crate::conn::checkout(&shared.pool, &shared.lost) {
        Ok(c) => Some(c),
        Err(e) => {
            // The database is unreachable or every connection is busy past the pool's
            // timeout: what queued meanwhile would wait as long to fail the same way.
            let mut all = taken;
            all.append(&mut lock(&shared.queue).waiting);
            let why = format!("no database connection available: {e}");
            for (_, done) in all {
                done(Err(StoreError::Unavailable(why.clone())));
            }
            return;
        }
    };
    let mut kinds: HashMap<Kind, Vec<(String, PointReadDone)>> = HashMap::new();
    let mut retried = false;
    for (read, done) in taken {
        let (by_user_name, key) = match read.key {
            PointKeyBuf::Id(v) => (false, v),
            PointKeyBuf::UserName(v) => (true, v),
        };
        let kind = Kind {
            token_hash: read.token_hash,
            resource_type: read.resource_type,
            by_user_name,
            groups: read.include.groups,
        };
        kinds.entry(kind).or_default().push((key, done));
    }
    for (kind, reads) in kinds {
        let mut keys: Vec<String> = reads.iter().map(|(k, _)| k.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut found = match conn.as_mut() {
            Some(c) => run(c, &kind, keys.clone()),
            None => Err(StoreError::Unavailable(
                "no database connection available".into(),
            )),
        };
        if matches!(found, Err(StoreError::Unavailable(_))) && !retried {
            // The connection was lost (the database restarted, say). Reads can be asked again:
            // once, on a connection the pool has just tested. The lost one is closed first
            // (which has the pool test the idle ones).
            retried = true;
            drop(conn.take());
            match crate::conn::checkout(&shared.pool, &shared.lost) {
                Ok(fresh) => found = run(conn.insert(fresh), &kind, keys),
                Err(e) => {
                    found = Err(StoreError::Unavailable(format!(
                        "no database connection available: {e}"
                    )))
                }
            }
        }
        match found {
            Err(e) => {
                for (_, done) in reads {
                    done(Err(copy_error(&e)));
                }
            }
            Ok(None) => {
                for (_, done) in reads {
                    done(Ok(TokenRead::NoToken));
                }
            }
            Ok(Some(mut found)) => {
                // Requests for the same key are next to each other; all but the last get a
                // copy of the record.
                let mut reads = reads;
                reads.sort_by(|a, b| a.0.cmp(&b.0));
                let mut reads = reads.into_iter().peekable();
                while let Some((key, done)) = reads.next() {
                    let again = reads.peek().is_some_and(|(next, _)| *next == key);
                    let rec = match again {
                        true => found.get(&key).cloned(),
                        false => found.remove(&key),
                    };
                    done(Ok(TokenRead::Read(rec)));
                }
            }
        }
    }
}

/// The same failure for another read of the statement.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Keys of each statement the test reader ran, in order; the first one waits for `GATE`.
    static STATEMENTS: Mutex<Vec<Vec<String>>> = Mutex::new(Vec::new());
    static GATE: Mutex<Option<mpsc::Receiver<()>>> = Mutex::new(None);

    fn recording(
        _: &mut crate::conn::AnyConnection,
        _: &Kind,
        keys: Vec<String>,
    ) -> Result<Found, StoreError> {
        let first = {
            let mut s = STATEMENTS.lock().unwrap();
            s.push(keys.clone());
            s.len() == 1
        };
        if first {
            let gate = GATE.lock().unwrap().take().unwrap();
            gate.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        Ok(Some(HashMap::new()))
    }

    fn read(key: &str) -> PointRead {
        PointRead {
            token_hash: "hash".into(),
            resource_type: "User".into(),
            key: PointKeyBuf::Id(key.into()),
            include: Default::default(),
        }
    }

    fn submit(batcher: &ReadBatcher, key: &str, answered: &mpsc::Sender<String>) {
        let answered = answered.clone();
        let key_owned = key.to_string();
        batcher.submit(
            read(key),
            Box::new(move |r| {
                assert!(matches!(r, Ok(TokenRead::Read(None))));
                answered.send(key_owned).unwrap();
            }),
            recording,
        );
    }

    /// Reads queued behind a running statement wait for it and then go together in one
    /// statement; reads queued behind a late statement are answered by the other reader
    /// without waiting for it.
    #[test]
    fn reads_wait_for_a_running_statement_but_not_for_a_late_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("batch.db").to_string_lossy().into_owned();
        let manager = ConnectionManager::new(&url, Duration::from_secs(1), None);
        let pool = r2d2::Pool::builder().max_size(4).build(manager).unwrap();
        let (open_gate, gate) = mpsc::channel();
        *GATE.lock().unwrap() = Some(gate);
        let batcher = ReadBatcher::new(pool, Arc::default());
        let (answered, answers) = mpsc::channel();

        // The first statement runs and blocks; three reads queue behind it while it is not
        // late yet.
        submit(&batcher, "first", &answered);
        while STATEMENTS.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        for key in ["a", "b", "c"] {
            submit(&batcher, key, &answered);
        }
        assert!(
            answers.recv_timeout(LATE / 5).is_err(),
            "nothing answered yet"
        );
        // Once it is late, the next read wakes the other reader, which takes the whole queue.
        std::thread::sleep(LATE);
        submit(&batcher, "d", &answered);
        let mut got: Vec<String> = (0..4)
            .map(|_| answers.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, ["a", "b", "c", "d"]);
        // The late statement finishes last.
        open_gate.send(()).unwrap();
        assert_eq!(
            answers.recv_timeout(Duration::from_secs(10)).unwrap(),
            "first"
        );
        let statements = STATEMENTS.lock().unwrap().clone();
        assert_eq!(statements, [vec!["first"], vec!["a", "b", "c", "d"]]);
    }
}
