//! Orders to a worker from the handoff thread (issue 17), taken at a turn
//! of its loop: in the old process, freeze the connections that can move
//! and wait for the verdict; in the new one, take frozen connections in.
//! The worker is woken through its inbox's waker, and reads its desk only
//! when an order is posted (one atomic load a turn otherwise).

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

/// One connection frozen by the old process: its state, and its socket,
/// which stays open (and untouched) in the worker until the verdict.
#[derive(Debug)]
pub(crate) struct Frozen {
    pub state: Vec<u8>,
    pub fd: RawFd,
}

/// What becomes of the frozen connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The new process took them: forget them without a byte or a
    /// shutdown to their sockets.
    Commit,
    /// The handoff failed: serve them on, as if nothing happened.
    Resume,
}

/// An order to a worker.
#[derive(Debug)]
pub(crate) enum Order {
    /// Quiesce, freeze what can move, send it on `frozen`, then wait for
    /// the verdict (a closed channel is `Resume`).
    Freeze {
        frozen: mpsc::Sender<Vec<Frozen>>,
        verdict: mpsc::Receiver<Verdict>,
    },
    /// Take these connections in (their state checked already); say on
    /// `done` how many were registered.
    Thaw {
        conns: Vec<(Vec<u8>, OwnedFd)>,
        done: mpsc::Sender<usize>,
    },
}

/// A worker's desk.
#[derive(Debug, Default)]
pub(crate) struct Desk {
    posted: AtomicBool,
    orders: Mutex<Vec<Order>>,
}

impl Desk {
    /// Post an order (the caller then wakes the worker).
    pub fn post(&self, order: Order) {
        self.orders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(order);
        self.posted.store(true, Ordering::Release);
    }

    /// The orders posted since the last call.
    pub fn take(&self) -> Vec<Order> {
        if !self.posted.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.orders.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
