//! Drives a [`Handler`] for one session with no socket and no ring: bytes in, output bytes out,
//! pool results applied when they arrive. For unit tests and fuzzing of protocol code, with the
//! same `Session` semantics the event loops give (output accumulates until taken, closes are
//! requested, deadlines recorded).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::handler::{CloseReason, Closing, Context, Handler, Session, Slot, SlotIo};
use crate::mailbox::{Envelope, Receiver};
use crate::SessionId;

/// One session driven by hand.
pub struct Harness<H: Handler> {
    handler: H,
    slot: Slot<H::Conn>,
    mailbox: Receiver<H::Msg>,
    id: SessionId,
    closed: Option<CloseReason>,
}

impl<H: Handler> Harness<H> {
    /// Opens a session (`on_open`, then `on_start`). Results sent to `SessionId { slot: 0,
    /// generation: 0 }` through the sender paired with `mailbox` reach it.
    pub fn new(mut handler: H, mailbox: Receiver<H::Msg>, peer: Option<SocketAddr>) -> Self {
        let id = SessionId {
            slot: 0,
            generation: 0,
        };
        let cx = Self::cx(false);
        let conn = handler.on_open(&cx, id, peer);
        let mut harness = Harness {
            handler,
            slot: Slot {
                io: SlotIo::new(-1, 0),
                conn: Some(conn),
            },
            mailbox,
            id,
            closed: None,
        };
        harness.with_session(|h, cx, s| h.on_start(cx, s));
        harness
    }

    fn cx(draining: bool) -> Context {
        Context {
            ring: 0,
            draining,
            now: Instant::now(),
        }
    }

    fn with_session(&mut self, f: impl FnOnce(&mut H, &Context, &mut Session<'_, H::Conn>)) {
        if self.closed.is_some() {
            return;
        }
        let cx = Self::cx(false);
        let mut session = Session {
            id: self.id,
            conn: self.slot.conn.as_mut().expect("open session has state"),
            io: &mut self.slot.io,
        };
        f(&mut self.handler, &cx, &mut session);
        self.settle();
    }

    fn settle(&mut self) {
        let io = &mut self.slot.io;
        let close = match io.closing {
            Closing::Now => true,
            Closing::AfterFlush => io.out.is_empty(),
            Closing::No => false,
        };
        if close && self.closed.is_none() {
            let reason = io.close_reason;
            self.closed = Some(reason);
            let conn = self.slot.conn.take().expect("open session has state");
            let cx = Self::cx(false);
            self.handler.on_close(&cx, self.id, conn, reason);
        }
    }

    /// Bytes from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        if self.slot.io.closing != Closing::No {
            return;
        }
        self.with_session(|h, cx, s| h.on_data(cx, s, data));
    }

    /// The peer closed its side.
    pub fn eof(&mut self) {
        self.with_session(|h, cx, s| h.on_eof(cx, s));
    }

    /// Runs the session's deadline handler now, as if its deadline passed.
    pub fn fire_deadline(&mut self) {
        self.with_session(|h, cx, s| h.on_deadline(cx, s));
    }

    /// Applies results that arrive within `timeout`, returning as soon as `done` holds (checked
    /// after each) or the time is up. Returns how many were applied.
    pub fn pump_until(&mut self, timeout: Duration, mut done: impl FnMut(&Self) -> bool) -> usize {
        let until = Instant::now() + timeout;
        let mut applied = 0;
        loop {
            while let Some(envelope) = self.mailbox.pop() {
                if let Envelope::Session(id, msg) = envelope {
                    if id == self.id {
                        applied += 1;
                        self.with_session(|h, cx, s| h.on_message(cx, s, msg));
                    }
                }
            }
            if done(self) || Instant::now() >= until {
                return applied;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Takes everything queued for the peer, as if a send completed.
    pub fn take_output(&mut self) -> Vec<u8> {
        let out = std::mem::take(&mut self.slot.io.out);
        self.settle();
        out
    }

    /// Bytes queued for the peer.
    pub fn output(&self) -> &[u8] {
        &self.slot.io.out
    }

    /// Whether the session asked to close (or has closed).
    pub fn is_closing(&self) -> bool {
        self.slot.io.closing != Closing::No || self.closed.is_some()
    }

    /// Why the session closed, once it has.
    pub fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// The session's deadline, if armed.
    pub fn deadline(&self) -> Option<Instant> {
        self.slot.io.deadline
    }

    /// The handler's state for the session (`None` once closed).
    pub fn conn(&self) -> Option<&H::Conn> {
        self.slot.conn.as_ref()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }
}
