//! Reads on the caller's own thread (see [`scim_core::store::ResourceStore::reserve_inline`]).
//!
//! A server hands store calls to a thread pool so that a slow query never stalls the thread
//! that drives its connections. For a SQLite point read (a few B-tree probes, microseconds)
//! that hand-off costs more than the read: two thread wake-ups and the scheduler in between.
//! A reservation takes a connection that is idle right now (never waiting for one) and parks
//! it in a thread-local slot, tagged with the store it belongs to; while the reservation
//! lives, [`DieselStore`](crate::DieselStore) calls on that thread use it. Dropping the
//! reservation returns the connection to its pool.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::conn::{AnyConnection, ConnectionManager};

type Pooled = r2d2::PooledConnection<ConnectionManager>;

/// The reserved connection of this thread, if any.
struct Slot {
    /// which store's pool it came from
    store: u64,
    /// `None` while a [`Conn`] has it out
    conn: Option<Pooled>,
}

thread_local! {
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

/// A fresh identity for a store's pool (clones of a store share it).
pub(crate) fn next_store_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A connection for one store call: from the pool, or this thread's reservation.
pub(crate) enum Conn {
    Pooled(Pooled),
    Reserved(Option<Pooled>, u64),
}

impl Deref for Conn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            Conn::Pooled(c) | Conn::Reserved(Some(c), _) => c,
            Conn::Reserved(None, _) => unreachable!("a reserved connection is present until drop"),
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Conn::Pooled(c) | Conn::Reserved(Some(c), _) => c,
            Conn::Reserved(None, _) => unreachable!("a reserved connection is present until drop"),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Conn::Reserved(conn, store) = self {
            let conn = conn.take();
            // Back into the slot if the reservation still stands; otherwise (it ended while
            // this was out) the connection drops here and goes back to its pool.
            SLOT.with(|s| {
                if let Some(slot) = s.borrow_mut().as_mut() {
                    if slot.store == *store && slot.conn.is_none() {
                        slot.conn = conn;
                    }
                }
            });
        }
    }
}

/// Takes this thread's reserved connection for `store`, if it has one and nobody has it out.
pub(crate) fn take_reserved(store: u64) -> Option<Conn> {
    SLOT.with(|s| {
        let mut s = s.borrow_mut();
        let slot = s.as_mut().filter(|slot| slot.store == store)?;
        slot.conn.take().map(|c| Conn::Reserved(Some(c), store))
    })
}

/// Whether this thread holds a reservation for `store` with its connection in the slot.
pub(crate) fn has_reserved(store: u64) -> bool {
    SLOT.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|slot| slot.store == store && slot.conn.is_some())
    })
}

/// Ends the reservation when dropped.
struct Reservation;

impl Drop for Reservation {
    fn drop(&mut self) {
        // Taken out first, dropped after the borrow ends: returning a connection runs the
        // pool's code, which must not find the slot borrowed.
        let slot = SLOT.with(|s| s.borrow_mut().take());
        drop(slot);
    }
}

/// Parks `conn` in this thread's slot for `store`; `None` when the thread already holds a
/// reservation (they do not nest).
pub(crate) fn reserve(store: u64, conn: Pooled) -> Option<scim_core::store::InlineReads> {
    let placed = SLOT.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_some() {
            return false;
        }
        *s = Some(Slot {
            store,
            conn: Some(conn),
        });
        true
    });
    placed.then(|| scim_core::store::InlineReads::new(Box::new(Reservation)))
}
