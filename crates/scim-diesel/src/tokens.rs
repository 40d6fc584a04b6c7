//! Token lookups of concurrent requests answered by one statement (PostgreSQL).
//!
//! Every request that is not a point read resolves its bearer token to a tenant first
//! ([`scim_core::store::CredentialStore::find_token`]). On PostgreSQL that is a statement of
//! its own: a round trip, and the per-statement work of the database (parse of the bound
//! message, executor start-up, the commit of its implicit transaction), many times the index
//! probe it does. An identity provider sends its concurrent requests with one token, so the
//! lookups waiting at one moment ask the same question.
//!
//! Here at most one statement per token hash is in the database at a time. A caller that
//! finds none running runs its own at once. Callers that arrive while one runs join the
//! batch that runs next: the first of them runs it, once the running one is done, for all
//! of them. Each statement starts after every caller it answers arrived, so each sees every
//! revocation committed before its request came, as a lookup of its own would. With one
//! request at a time, every lookup is its own statement, as before.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use scim_core::store::TokenRecord;
use scim_core::StoreError;

/// What a lookup found: the live token with the hash, if any.
pub(crate) type Found = Result<Option<TokenRecord>, StoreError>;

/// Lookups in flight, by token hash (see the module documentation).
#[derive(Default)]
pub(crate) struct TokenLookups {
    hashes: Mutex<HashMap<String, Hash>>,
}

/// One token hash with a statement running.
#[derive(Default)]
struct Hash {
    /// callers waiting for the statement after the running one
    next: Option<Arc<Batch>>,
}

/// Callers answered by one statement.
#[derive(Default)]
struct Batch {
    state: Mutex<BatchState>,
    changed: Condvar,
}

#[derive(Default)]
struct BatchState {
    /// the statement before this batch's is done: its first caller runs it now
    go: bool,
    /// what it found, for the others (errors as copies)
    found: Option<Found>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An error told to every caller of a batch: its kind kept where the server tells kinds
/// apart (503 for an unavailable database), its text otherwise.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}

fn copy_found(found: &Found) -> Found {
    match found {
        Ok(t) => Ok(t.clone()),
        Err(e) => Err(copy_error(e)),
    }
}

impl Batch {
    fn wait_until(&self, ready: impl Fn(&BatchState) -> bool) -> MutexGuard<'_, BatchState> {
        let mut st = lock(&self.state);
        while !ready(&st) {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st
    }

    fn tell(&self, change: impl FnOnce(&mut BatchState)) {
        change(&mut lock(&self.state));
        self.changed.notify_all();
    }
}

/// Ends a statement's turn however its caller leaves (a panic too): the batch waiting behind
/// it may run, and the callers of the caller's own batch get an answer.
struct Turn<'a> {
    lookups: &'a TokenLookups,
    hash: &'a str,
    /// the batch this caller runs for, when it runs for others
    answering: Option<Arc<Batch>>,
    found: Option<Found>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.answering.take() {
            let found = match &self.found {
                Some(f) => copy_found(f),
                None => Err(StoreError::Backend("the token lookup failed".into())),
            };
            batch.tell(|st| st.found = Some(found));
        }
        let mut hashes = lock(&self.lookups.hashes);
        let next = hashes.get_mut(self.hash).and_then(|h| h.next.take());
        match next {
            // The hash stays busy: the next batch's first caller runs now.
            Some(batch) => {
                drop(hashes);
                batch.tell(|st| st.go = true);
            }
            None => {
                hashes.remove(self.hash);
            }
        }
    }
}

impl TokenLookups {
    /// The live token with `hash`, as `run` (one statement) finds it: run by this caller, or
    /// by another caller of the same batch, in a statement that starts after this call.
    pub(crate) fn find(&self, hash: &str, run: impl FnOnce() -> Found) -> Found {
        enum Role {
            /// no statement for this hash is running: run one now
            RunNow,
            /// run the next statement, for this batch, once told to go
            Lead(Arc<Batch>),
            /// another caller runs the next statement; its answer is this one's
            Follow(Arc<Batch>),
        }
        let role = {
            let mut hashes = lock(&self.hashes);
            match hashes.get_mut(hash) {
                None => {
                    hashes.insert(hash.to_string(), Hash::default());
                    Role::RunNow
                }
                Some(busy) => match &busy.next {
                    Some(batch) => Role::Follow(batch.clone()),
                    None => {
                        let batch = Arc::new(Batch::default());
                        busy.next = Some(batch.clone());
                        Role::Lead(batch)
                    }
                },
            }
        };
        let answering = match role {
            Role::RunNow => None,
            Role::Lead(batch) => {
                drop(batch.wait_until(|st| st.go));
                Some(batch)
            }
            Role::Follow(batch) => {
                let st = batch.wait_until(|st| st.found.is_some());
                return st.found.as_ref().map_or_else(
                    || Err(StoreError::Backend("the token lookup failed".into())),
                    copy_found,
                );
            }
        };
        let mut turn = Turn {
            lookups: self,
            hash,
            answering,
            found: None,
        };
        let found = run();
        turn.found = Some(copy_found(&found));
        drop(turn);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn token(tenant: &str) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            tenant_id: tenant.into(),
            name: "n".into(),
            created: "c".into(),
        }
    }

    /// Callers arriving while a lookup runs share the next statement; every caller gets the
    /// answer of a statement that started after it arrived.
    #[test]
    fn lookups_waiting_together_share_one_statement_started_after_them() {
        let lookups = Arc::new(TokenLookups::default());
        let statements = Arc::new(AtomicUsize::new(0));
        // The answer a statement gives: the number of statements started before it, so that
        // a caller can tell which statement answered it.
        let first = {
            let (lookups, statements) = (lookups.clone(), statements.clone());
            std::thread::spawn(move || {
                lookups.find("h", || {
                    let n = statements.fetch_add(1, Ordering::SeqCst);
                    // Long enough for the eight below to arrive meanwhile, even on a busy
                    // machine.
                    std::thread::sleep(Duration::from_millis(1_000));
                    Ok(Some(token(&n.to_string())))
                })
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let others: Vec<_> = (0..8)
            .map(|_| {
                let (lookups, statements) = (lookups.clone(), statements.clone());
                std::thread::spawn(move || {
                    let arrived_after = statements.load(Ordering::SeqCst);
                    let found = lookups.find("h", || {
                        let n = statements.fetch_add(1, Ordering::SeqCst);
                        Ok(Some(token(&n.to_string())))
                    });
                    (arrived_after, found)
                })
            })
            .collect();
        assert_eq!(first.join().unwrap().unwrap().unwrap().tenant_id, "0");
        for o in others {
            let (arrived_after, found) = o.join().unwrap();
            let answered_by: usize = found.unwrap().unwrap().tenant_id.parse().unwrap();
            assert!(
                answered_by >= arrived_after,
                "answered by statement {answered_by}, which started before the caller arrived"
            );
        }
        assert_eq!(
            statements.load(Ordering::SeqCst),
            2,
            "the eight callers that waited behind the first statement shared one"
        );
        assert!(lock(&lookups.hashes).is_empty(), "nothing left behind");
    }

    /// A failed statement fails every caller it answers (a lost database stays a 503), and
    /// a caller whose statement panicked leaves no one waiting.
    #[test]
    fn a_failed_or_panicking_statement_answers_everyone_waiting_for_it() {
        let lookups = Arc::new(TokenLookups::default());
        let slow = {
            let lookups = lookups.clone();
            std::thread::spawn(move || {
                lookups.find("h", || {
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(None)
                })
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let waiting: Vec<_> = (0..4)
            .map(|i| {
                let lookups = lookups.clone();
                std::thread::spawn(move || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        lookups.find("h", || {
                            if i % 2 == 0 {
                                panic!("statement panicked")
                            }
                            Err(StoreError::Unavailable("database down".into()))
                        })
                    }))
                })
            })
            .collect();
        assert!(slow.join().unwrap().unwrap().is_none());
        let mut answered = 0;
        for w in waiting {
            match w.join().unwrap() {
                Ok(Err(StoreError::Unavailable(m))) => {
                    assert_eq!(m, "database down");
                    answered += 1;
                }
                Ok(Err(StoreError::Backend(_))) | Err(_) => answered += 1,
                Ok(other) => panic!("unexpected answer {other:?}"),
            }
        }
        assert_eq!(answered, 4);
        assert!(lock(&lookups.hashes).is_empty(), "nothing left behind");
        // The hash is free again: the next lookup runs at once.
        assert!(lookups
            .find("h", || Ok(Some(token("x"))))
            .unwrap()
            .is_some());
    }
}
