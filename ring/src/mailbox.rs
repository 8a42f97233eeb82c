//! Cross-thread completions: pools finish a job on their own thread and hand the result to the
//! ring that owns the session through this queue. The ring keeps a read armed on an eventfd; a
//! sender writes the eventfd only when the ring may be asleep, so a busy ring is never woken by
//! a syscall per result.
//!
//! The sleep handshake is Dekker-style: the ring stores `sleeping = true` and then checks the
//! queue before it blocks; a sender pushes and then checks `sleeping`. With sequentially
//! consistent ordering on both sides, at least one of them sees the other's write, so a result
//! is never stranded while the ring sleeps.
//!
//! A thread that answers many sessions at once (a store worker finishing a batch of GETs) wraps
//! the answers in [`batch_wakes`]: each ring is then woken once, after the last answer is
//! queued. Woken at the first answer, a ring preempts the worker on its core, takes that one
//! answer, and sleeps again before the next is queued, a wake-up and two context switches per
//! answer instead of per batch.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;

use crate::SessionId;

/// A message for a ring.
pub(crate) enum Envelope<M> {
    /// A result for one session; dropped if the session has gone.
    Session(SessionId, M),
    /// A message for the ring as a whole (a query or an action over all its sessions).
    Ring(M),
    /// A socket another thread connected, for the ring to drive as a session of its own.
    Attach(OwnedFd, M),
}

struct Shared<M> {
    queue: SegQueue<Envelope<M>>,
    sleeping: AtomicBool,
    draining: AtomicBool,
    eventfd: OwnedFd,
    wakeups: AtomicU64,
}

/// The sending half: cheap to clone, `Send + Sync`, held by pools and the main thread.
pub struct Sender<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for Sender<M> {
    fn clone(&self) -> Self {
        Sender {
            shared: self.shared.clone(),
        }
    }
}

/// The receiving half, owned by exactly one ring.
pub struct Receiver<M> {
    shared: Arc<Shared<M>>,
}

/// Creates a ring's mailbox.
pub fn mailbox<M>() -> io::Result<(Sender<M>, Receiver<M>)> {
    // SAFETY: eventfd has no memory preconditions; the result is checked before use and the fd
    // is owned from here on by OwnedFd.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by no one else.
    let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let shared = Arc::new(Shared {
        queue: SegQueue::new(),
        sleeping: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        eventfd,
        wakeups: AtomicU64::new(0),
    });
    Ok((
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    ))
}

/// A ring's wake-up, whatever its message type, for [`batch_wakes`] to give later.
trait Wake {
    fn wake(&self);
}

impl<M> Wake for Shared<M> {
    fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.write_eventfd();
        }
    }
}

impl<M> Shared<M> {
    fn write_eventfd(&self) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd we own; the only possible
        // failure is EAGAIN when the counter is saturated, which still leaves the ring woken.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

thread_local! {
    /// The rings this thread has queued for inside [`batch_wakes`], each once.
    static HELD: RefCell<Option<Vec<Arc<dyn Wake>>>> = const { RefCell::new(None) };
}

/// Runs `f`, holding back the wake-ups of the messages it sends until it returns (or unwinds):
/// then each ring it sent to is woken once. Nested calls hold until the outermost returns.
pub fn batch_wakes<R>(f: impl FnOnce() -> R) -> R {
    struct Release(bool);
    impl Drop for Release {
        fn drop(&mut self) {
            if self.0 {
                if let Some(held) = HELD.with(|h| h.borrow_mut().take()) {
                    for ring in held {
                        ring.wake();
                    }
                }
            }
        }
    }
    let outermost = HELD.with(|h| {
        let mut h = h.borrow_mut();
        let outermost = h.is_none();
        if outermost {
            *h = Some(Vec::new());
        }
        outermost
    });
    let _release = Release(outermost);
    f()
}

impl<M: Send + 'static> Sender<M> {
    /// Queues a result for `session` and wakes the ring if it may be asleep.
    pub fn send(&self, session: SessionId, msg: M) {
        self.shared.queue.push(Envelope::Session(session, msg));
        self.wake();
    }

    /// Queues a message for the ring as a whole; see `Handler::on_ring_message`.
    pub fn send_ring(&self, msg: M) {
        self.shared.queue.push(Envelope::Ring(msg));
        self.wake();
    }

    /// Hands the ring a connected socket to drive as a session that is not a client's (a
    /// connection to a backend the handler speaks to itself); see `Handler::on_attach`. Dropped,
    /// and so closed, if the ring is draining.
    pub fn attach(&self, socket: OwnedFd, msg: M) {
        self.shared.queue.push(Envelope::Attach(socket, msg));
        self.wake();
    }

    /// Asks the ring to drain: stop accepting, let sessions finish, then return from `run`.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.sleeping.store(false, Ordering::SeqCst);
        self.shared.write_eventfd();
    }

    fn wake(&self) {
        let held = HELD.with(|h| match h.borrow_mut().as_mut() {
            Some(held) => {
                // Compared by address alone: the same ring's vtable pointer may differ.
                let mine = Arc::as_ptr(&self.shared).cast::<()>();
                if !held.iter().any(|r| Arc::as_ptr(r).cast::<()>() == mine) {
                    held.push(self.shared.clone());
                }
                true
            }
            None => false,
        });
        if !held {
            self.shared.wake();
        }
    }
}

impl<M> Receiver<M> {
    pub(crate) fn eventfd(&self) -> RawFd {
        self.shared.eventfd.as_raw_fd()
    }

    pub(crate) fn pop(&self) -> Option<Envelope<M>> {
        self.shared.queue.pop()
    }

    pub(crate) fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Announces that the ring is about to block; returns false if work arrived meanwhile, in
    /// which case the ring must not block.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        if !self.shared.queue.is_empty() {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(crate) fn woke(&self) {
        self.shared.sleeping.store(false, Ordering::SeqCst);
    }

    /// Eventfd writes so far (a stat: how often a sender had to wake this ring).
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: u32) -> SessionId {
        SessionId {
            slot,
            generation: 1,
        }
    }

    fn asleep() -> (Sender<u32>, Receiver<u32>) {
        let (tx, rx) = mailbox().unwrap();
        assert!(rx.prepare_sleep());
        (tx, rx)
    }

    #[test]
    fn a_sleeping_ring_is_woken_by_each_send_outside_a_batch() {
        let (tx, rx) = asleep();
        tx.send(id(1), 1);
        assert_eq!(rx.wakeups(), 1);
        assert_eq!(rx.pop().map(|_| ()), Some(()));
        assert!(rx.prepare_sleep());
        tx.send(id(2), 2);
        assert_eq!(rx.wakeups(), 2);
    }

    #[test]
    fn a_batch_wakes_each_ring_once_after_its_last_message() {
        let (a, ra) = asleep();
        let (b, rb) = asleep();
        batch_wakes(|| {
            for i in 0..5 {
                a.send(id(i), i);
                b.send_ring(i);
                // Nested batches hold too, until the outermost ends.
                batch_wakes(|| a.send(id(i), i));
            }
            assert_eq!((ra.wakeups(), rb.wakeups()), (0, 0));
        });
        assert_eq!((ra.wakeups(), rb.wakeups()), (1, 1));
        assert_eq!(std::iter::from_fn(|| ra.pop()).count(), 10);
        assert_eq!(std::iter::from_fn(|| rb.pop()).count(), 5);
        // The scope is over: the next message wakes the ring at once.
        assert!(ra.prepare_sleep());
        a.send(id(9), 9);
        assert_eq!(ra.wakeups(), 2);
    }

    #[test]
    fn a_batch_that_unwinds_still_wakes_its_rings() {
        let (a, ra) = asleep();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch_wakes(|| {
                a.send(id(1), 1);
                panic!("a job failed mid-batch");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(ra.wakeups(), 1);
        assert!(ra.pop().is_some());
    }
}
