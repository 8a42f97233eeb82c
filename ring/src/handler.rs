//! What the two event loops (io_uring and epoll) share: the [`Handler`] trait the server
//! implements, the [`Session`] view a callback gets, and the per-slot I/O state behind it.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use crate::timer::{Entry, TimerWheel};
use crate::tls::Tls;
use crate::SessionId;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The handler asked for it (QUIT, protocol error, limits, timeouts).
    Requested,
    /// The peer closed or reset the connection.
    PeerGone,
    /// The ring is shutting down.
    Shutdown,
}

/// The server plugs in here: the ring knows bytes and sessions, the handler knows the protocol.
/// Every callback runs on the ring thread and must not block.
pub trait Handler {
    /// Per-session state, stored in the session's slab slot.
    type Conn;
    /// Results other threads send back to a session.
    type Msg: Send + 'static;

    /// A connection was accepted; returns its state.
    fn on_open(&mut self, cx: &Context, id: SessionId, peer: Option<SocketAddr>) -> Self::Conn;
    /// The session was set up (after `on_open`): arm its first deadline, queue a greeting.
    /// By default nothing.
    fn on_start(&mut self, _cx: &Context, _session: &mut Session<'_, Self::Conn>) {}
    /// Bytes arrived. They are only valid during the call.
    fn on_data(&mut self, cx: &Context, session: &mut Session<'_, Self::Conn>, data: &[u8]);
    /// A result another thread sent for this session.
    fn on_message(&mut self, cx: &Context, session: &mut Session<'_, Self::Conn>, msg: Self::Msg);
    /// The session's deadline passed.
    fn on_deadline(&mut self, cx: &Context, session: &mut Session<'_, Self::Conn>);
    /// The peer will send nothing more. By default: flush, then close.
    fn on_eof(&mut self, _cx: &Context, session: &mut Session<'_, Self::Conn>) {
        session.close_after_flush();
    }
    /// The ring started draining; the session should finish its work and close.
    fn on_drain(&mut self, cx: &Context, session: &mut Session<'_, Self::Conn>);
    /// A message for the ring as a whole (sent with `Sender::send_ring`): `sessions` visits every
    /// open session of this ring. By default ignored.
    fn on_ring_message(
        &mut self,
        _cx: &Context,
        _msg: Self::Msg,
        _sessions: &mut Sessions<'_, Self::Conn>,
    ) {
    }
    /// A socket handed over with `Sender::attach` got a slot: returns its state, or `None` to
    /// close it. Such a session is the handler's own connection to a backend, not a client's: it
    /// does not count against `max_sessions` or in the session counts, and gets no `on_start`;
    /// otherwise it is driven like any session (`on_data`, `on_message`, `on_close`...). By
    /// default refused.
    fn on_attach(&mut self, _cx: &Context, _id: SessionId, _msg: Self::Msg) -> Option<Self::Conn> {
        None
    }
    /// The session is gone; its state is handed back for the last time.
    fn on_close(&mut self, cx: &Context, id: SessionId, conn: Self::Conn, reason: CloseReason);
}

/// Ring-wide facts a callback may need.
pub struct Context {
    /// This ring's index.
    pub ring: usize,
    /// True once a drain started.
    pub draining: bool,
    /// The time at the start of this batch of completions.
    pub now: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    No,
    AfterFlush,
    Now,
}

/// The I/O half of a slot: what the ring needs, apart from the handler's state.
pub(crate) struct SlotIo {
    /// The peer sent EOF (epoll stops watching for input).
    pub(crate) peer_eof: bool,
    /// A socket handed over by `Sender::attach`, not a client's: not counted as a session.
    pub(crate) attached: bool,
    pub(crate) fd: RawFd,
    pub(crate) generation: u32,
    /// Replies queued by the handler, not yet handed to the kernel.
    pub(crate) out: Vec<u8>,
    /// Bytes the kernel owns while `send_inflight`; never touched then.
    pub(crate) sending: Vec<u8>,
    pub(crate) sent: usize,
    pub(crate) send_inflight: bool,
    /// The last send did not go out whole (the socket was full): the ring's wait does not count
    /// this session's sends until one does (io_uring, see `uring.rs`'s `wait`).
    pub(crate) send_parks: bool,
    pub(crate) recv_armed: bool,
    /// The handler asked to take no input for now (`Session::pause_input`).
    pub(crate) input_paused: bool,
    /// `input_paused` changed in this callback: the backend applies it once the callback returns.
    pub(crate) input_changed: bool,
    /// Receive one completion at a time (`Session::receive_singly`), not multishot.
    pub(crate) recv_singly: bool,
    /// Submissions not yet completed; the slot is freed only at zero.
    pub(crate) ops_in_flight: u32,
    pub(crate) closing: Closing,
    /// Set once `begin_close` ran: the handler state is gone, only completions remain.
    pub(crate) closed: bool,
    pub(crate) close_reason: CloseReason,
    pub(crate) in_dirty_list: bool,
    pub(crate) deadline: Option<Instant>,
    pub(crate) deadline_dirty: bool,
    pub(crate) deadline_tick: u64,
    /// A TLS session's state (boxed: most sessions are plain, and a plain one pays a pointer).
    pub(crate) tls: Option<Box<Tls>>,
}

pub(crate) struct Slot<C> {
    pub(crate) io: SlotIo,
    pub(crate) conn: Option<C>,
}

/// Output buffers larger than this are given back once a session's output is all sent: a burst
/// (a large value, a deep pipeline) must not stay with a session that then sits idle for hours.
pub(crate) const IDLE_BUFFER_KEEP: usize = 4 * 1024;

impl SlotIo {
    /// Once everything queued is sent: frees output buffers a burst grew past
    /// [`IDLE_BUFFER_KEEP`]; the next burst allocates again. Returns whether it freed one.
    pub(crate) fn release_idle_buffers(&mut self) -> bool {
        if self.send_inflight || self.sent < self.sending.len() || self.has_output() {
            return false;
        }
        let mut released = false;
        for buffer in [&mut self.out, &mut self.sending] {
            if buffer.capacity() > IDLE_BUFFER_KEEP {
                *buffer = Vec::new();
                released = true;
            }
        }
        // An idle plain session keeps one small buffer, not two: the next replies go into `out`,
        // which the next send swaps with `sending`, so nothing is allocated per reply either.
        // TLS seals records into the spare buffer, so a TLS session keeps both.
        if self.tls.is_none() && self.sending.is_empty() {
            if self.out.capacity() == 0 {
                std::mem::swap(&mut self.out, &mut self.sending);
            }
            self.sending = Vec::new();
        }
        released
    }
}

impl<C> Slot<C> {
    /// The callback view of this open session, which lives at `slot`.
    pub(crate) fn session(&mut self, slot: u32) -> Session<'_, C> {
        Session {
            id: SessionId {
                slot,
                generation: self.io.generation,
            },
            conn: self.conn.as_mut().expect("open session has state"),
            io: &mut self.io,
        }
    }
}

/// A session as a callback sees it: its state, its output buffer and its controls.
pub struct Session<'a, C> {
    pub(crate) id: SessionId,
    /// The handler's state for this session.
    pub conn: &'a mut C,
    pub(crate) io: &'a mut SlotIo,
}

impl<C> Session<'_, C> {
    /// This session's id (slot + generation).
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The output buffer: append replies; the ring sends them after the callback returns, one
    /// send for everything queued in this batch.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.io.out
    }

    /// Bytes queued or in flight towards the peer.
    pub fn pending_output(&self) -> usize {
        self.io.out.len() + self.io.sending.len() - self.io.sent
    }

    /// Closes at once; queued output is discarded.
    pub fn close(&mut self) {
        self.io.closing = Closing::Now;
    }

    /// Closes once everything queued so far has been sent.
    pub fn close_after_flush(&mut self) {
        if self.io.closing == Closing::No {
            self.io.closing = Closing::AfterFlush;
        }
    }

    /// True once a close was requested.
    pub fn is_closing(&self) -> bool {
        self.io.closing != Closing::No
    }

    /// Stops taking this session's input (`true`) or takes it again (`false`). While paused the
    /// ring reads nothing from the socket: what the peer sends waits in the kernel, whose full
    /// socket buffers then hold the peer back (TCP flow control). Bytes the kernel handed over
    /// before the pause took effect (receives already completed in this batch) still arrive
    /// through `on_data`.
    pub fn pause_input(&mut self, paused: bool) {
        if self.io.input_paused != paused {
            self.io.input_paused = paused;
            self.io.input_changed = !self.io.input_changed;
        }
    }

    /// Takes input one receive at a time (`true`), so that a pause holds from the receive
    /// whose bytes asked for it: a multishot receive (io_uring) may have taken megabytes more
    /// from the socket in the same batch, which then arrive after the pause. Costs a submission
    /// per receive; for a session that sends little until it may pause (before AUTH). Takes
    /// effect from the next receive armed. The other receive paths read only while not paused.
    pub fn receive_singly(&mut self, singly: bool) {
        self.io.recv_singly = singly;
    }

    /// Sets (or clears) the one deadline this session has; `on_deadline` runs when it passes.
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        if self.io.deadline != at {
            self.io.deadline = at;
            self.io.deadline_dirty = true;
        }
    }

    /// The current deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.io.deadline
    }
}

/// Every open session of one ring, for `Handler::on_ring_message`.
pub struct Sessions<'a, C> {
    pub(crate) slab: &'a mut slab::Slab<Slot<C>>,
}

impl<C> Sessions<'_, C> {
    /// Calls `f` on each open session. Closes and output it asks for are applied afterwards.
    pub fn for_each(&mut self, mut f: impl FnMut(&mut Session<'_, C>)) {
        for (slot, s) in self.slab.iter_mut() {
            if s.io.closed {
                continue;
            }
            let mut session = s.session(slot as u32);
            f(&mut session);
        }
    }
}

/// What an event loop must do for a slot after a callback ran.
pub(crate) enum Settled {
    /// Nothing more.
    Idle,
    /// Output is queued: send it at the end of this batch.
    Flush,
    /// Close the session now.
    Close(CloseReason),
}

impl SlotIo {
    /// The I/O state of a freshly accepted session.
    pub(crate) fn new(fd: RawFd, generation: u32) -> SlotIo {
        SlotIo {
            fd,
            generation,
            out: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            send_inflight: false,
            send_parks: false,
            recv_armed: false,
            input_paused: false,
            input_changed: false,
            recv_singly: false,
            ops_in_flight: 0,
            closing: Closing::No,
            closed: false,
            close_reason: CloseReason::Requested,
            in_dirty_list: false,
            deadline: None,
            deadline_dirty: false,
            deadline_tick: 0,
            peer_eof: false,
            attached: false,
            tls: None,
        }
    }

    /// Whether anything waits to be sent: replies, or TLS records of the ring's own (the
    /// handshake, an alert).
    pub(crate) fn has_output(&self) -> bool {
        match self.tls.as_ref() {
            None => !self.out.is_empty(),
            // Replies to a TLS session that cannot carry them (its handshake never finished, it
            // failed) are not output: they would never reach the wire.
            Some(tls) => tls.wants_write() || (!self.out.is_empty() && tls.can_send_data()),
        }
    }

    /// Makes `out` ready for the wire, right before it goes to the kernel: a TLS session's
    /// plaintext becomes records here, so everything queued since the last send is one write.
    pub(crate) fn seal(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            // The session's last words end with close_notify, so the peer can tell our close
            // from a cut connection.
            tls.seal(
                &mut self.out,
                &mut self.sending,
                self.closing == Closing::AfterFlush,
            );
        }
    }

    /// Applies what a callback asked for, the same way on both event loops: a changed deadline
    /// goes into the wheel (`tick` converts an instant to a wheel tick), a close request becomes
    /// `Close` once its condition holds, and new output becomes `Flush` once per batch.
    pub(crate) fn settle(
        &mut self,
        slot: u32,
        wheel: &mut TimerWheel,
        tick: impl Fn(Instant) -> u64,
    ) -> Settled {
        if self.closed {
            return Settled::Idle;
        }
        if self.deadline_dirty {
            self.deadline_dirty = false;
            match self.deadline {
                Some(at) => {
                    // The wheel may move a deadline already in the past to its next tick; the
                    // entry is recognised later by the tick it really has.
                    self.deadline_tick = wheel.insert(Entry {
                        slot,
                        generation: self.generation,
                        tick: tick(at) + 1,
                    });
                }
                None => self.deadline_tick = 0,
            }
        }
        match self.closing {
            Closing::Now => return Settled::Close(CloseReason::Requested),
            Closing::AfterFlush if !self.has_output() && !self.send_inflight => {
                return Settled::Close(self.close_reason)
            }
            _ => {}
        }
        if self.has_output() && !self.send_inflight && !self.in_dirty_list {
            self.in_dirty_list = true;
            return Settled::Flush;
        }
        Settled::Idle
    }

    /// Whether a due wheel entry should fire now; if the entry is still wanted but early (tick
    /// rounding), it is re-armed for the next tick instead.
    pub(crate) fn due(
        &mut self,
        entry: Entry,
        now: Instant,
        now_tick: u64,
        wheel: &mut TimerWheel,
    ) -> bool {
        if self.closed || self.deadline_tick != entry.tick {
            return false;
        }
        match self.deadline {
            Some(at) if at <= now => {
                self.deadline = None;
                true
            }
            Some(_) => {
                self.deadline_tick = wheel.insert(Entry {
                    tick: now_tick + 1,
                    ..entry
                });
                false
            }
            None => false,
        }
    }
}

/// Logs an event at most once per second, with how many were suppressed in between, so a flood
/// of refusals leaves a readable log.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter that allows the first line at once.
    pub fn new() -> LogLimiter {
        LogLimiter {
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < std::time::Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
