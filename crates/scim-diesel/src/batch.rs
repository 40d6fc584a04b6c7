//! Point reads of concurrent requests answered together (PostgreSQL; see
//! [`scim_core::store::ResourceStore::submit_point_read`]).
//!
//! On a networked database a point read costs a round trip and, in the database, the work of
//! one statement (parse of the bound message, executor start-up, commit of its implicit
//! transaction), which is many times the index probe it does. Handed to a thread pool, it also
//! costs the request two thread hand-offs. Here requests queue their reads and return; a few
//! reader threads of the store each take everything queued at that moment, read it with one
//! statement per kind of read (`key = ANY($keys)`), and answer each request through its
//! callback. Under load a statement carries many reads; with one request at a time it carries
//! one, and costs what a single read costs.
//!
//! Each read is taken from the queue after it was queued, so its statement starts after the
//! request arrived: it sees every write committed before that, as a read of its own would.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use scim_core::store::{PointKeyBuf, PointRead, PointReadDone, ResourceRecord, TokenRead};
use scim_core::StoreError;

use crate::conn::ConnectionManager;

/// Reader threads: statements that may be in the database at once. Two keep the database
/// busy while a thread hands answers back; more would only split the queue into smaller
/// statements.
const READERS: usize = 2;

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
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(PointRead, PointReadDone)>,
    /// reader threads running
    readers: usize,
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
    pub(crate) fn new(pool: r2d2::Pool<ConnectionManager>) -> Self {
        ReadBatcher {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                ready: Condvar::new(),
                pool,
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
        drop(q);
        self.shared.ready.notify_one();
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

fn reader(shared: &Shared, run: ReadMany) {
    loop {
        let taken = {
            let mut q = lock(&shared.queue);
            while q.waiting.is_empty() && !q.closed {
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.waiting.is_empty() {
                q.readers -= 1;
                return;
            }
            let n = q.waiting.len().min(MAX_TAKE);
            // The oldest first: what is left is what came last.
            q.waiting.drain(..n).collect::<Vec<_>>()
        };
        // A panic in a statement or a callback drops the callbacks of this batch (their
        // requests answer 500) and leaves the thread serving the queue.
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer(shared, taken, run)));
    }
}

fn answer(shared: &Shared, taken: Vec<(PointRead, PointReadDone)>, run: ReadMany) {
    let mut conn = match shared.pool.get() {
        Ok(c) => c,
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
        match run(&mut conn, &kind, keys) {
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
