//! Turns by key: in this process, one holder per key at a time.
//!
//! SQLite updates are planned outside the writer and run by it only while the version they
//! were planned from is still the stored one (see `store/mod.rs`). Two updates of one resource
//! planned at once would have the second one planned again after the first commits, and
//! again while more keep coming; taking turns per resource makes the second wait for the
//! first instead, so a hot resource (a group many clients change at once) costs one plan per
//! update. Correctness does not depend on it: the version check still decides.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

#[derive(Default)]
struct State {
    held: HashSet<String>,
    /// callers waiting for some key
    waiting: usize,
}

/// Keys currently held, and a way to wait for one.
#[derive(Default)]
pub(crate) struct Turns {
    state: Mutex<State>,
    freed: Condvar,
}

/// Holds `key` until dropped.
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    key: String,
}

impl Turns {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether somebody holds `key` now.
    pub(crate) fn is_held(&self, key: &str) -> bool {
        self.lock().held.contains(key)
    }

    /// Waits until nobody holds `key`, then holds it.
    pub(crate) fn take(&self, key: &str) -> Turn<'_> {
        let mut st = self.lock();
        while st.held.contains(key) {
            st.waiting += 1;
            st = self.freed.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.waiting -= 1;
        }
        st.held.insert(key.to_string());
        Turn {
            turns: self,
            key: key.to_string(),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut st = self.turns.lock();
        st.held.remove(&self.key);
        let wake = st.waiting > 0;
        drop(st);
        if wake {
            self.turns.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Holders of one key never overlap; holders of different keys do not wait for each other.
    #[test]
    fn one_holder_per_key() {
        let turns = Arc::new(Turns::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (turns, inside) = (turns.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _turn = turns.take("hot");
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let _a = turns.take("a");
        let _b = turns.take("b");
        assert!(turns.lock().held.contains("a") && turns.lock().held.contains("b"));
    }
}
