//! The one event loop both I/O backends run. Everything that does not depend on how bytes reach
//! the kernel lives here, once: the slab and its generations, admission, the mailbox, the timer
//! wheel, settling what a callback asked for, closing, drain and cut. A [`Backend`] supplies the
//! rest: arm a session's input, hand its output to the kernel, release its socket, wait for
//! events and dispatch them.
//!
//! Reading order: [`EventLoop::run`] (one turn: messages, timers, output, drain, wait, dispatch),
//! then [`EventLoop::admit`], [`EventLoop::after_callback`] and [`EventLoop::begin_close`], which
//! every backend event funnels into. The io_uring backend is `uring.rs`, the epoll one
//! `epoll.rs`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::handler::{
    CloseReason, Closing, Context, Handler, LogLimiter, Sessions, Settled, Slot, SlotIo,
};
use crate::mailbox::{Envelope, Receiver};
use crate::probe::Features;
use crate::timer::{Entry, TimerWheel};
use crate::tls::{Tls, TlsAcceptor};
use crate::token;
use crate::SessionId;

/// Counters of one ring, readable from any thread (INFO, metrics). Relaxed: they are statistics.
#[derive(Debug, Default)]
pub struct RingStats {
    pub sessions: AtomicU64,
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub rejected_max_sessions: AtomicU64,
    pub accept_errors: AtomicU64,
    pub peer_resets: AtomicU64,
    pub completions: AtomicU64,
    pub submissions: AtomicU64,
    pub enters: AtomicU64,
    pub bufring_exhausted: AtomicU64,
    pub cq_overflow: AtomicU64,
    pub sq_backlogged: AtomicU64,
    pub stale_completions: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub messages: AtomicU64,
    /// Output buffers given back after a burst, once a session's output was all sent.
    pub buffers_released: AtomicU64,
    /// TLS sessions closed because TLS failed (not TLS at all, a bad or missing certificate).
    pub tls_errors: AtomicU64,
    /// 1 when this ring fell back to poll-then-recv because the kernel refused the buffer ring.
    pub recv_fallback: AtomicU64,
    /// Sessions now held in the ring's table of registered files rather than by a descriptor
    /// (io_uring with direct descriptors; see `uring.rs`).
    pub direct_sessions: AtomicU64,
    /// 1 when the ring's receive buffers are consumed incrementally (`bufring.rs`).
    pub incremental_buffers: AtomicU64,
    /// Sends that did not go out whole (the socket was full) after one that did (io_uring):
    /// that session's sends are then not counted by the ring's wait (see `uring.rs`'s `wait`).
    pub sends_parked: AtomicU64,
}

/// Adds one to a ring's own counter. Each `RingStats` is written by its ring thread alone (others
/// only read), so a plain load and store do: no locked instruction on the per-request path.
pub(crate) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Adds `n` to a ring's own counter (see [`bump`]).
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A wait timeout in whole milliseconds for `poll(2)` and `epoll_wait(2)`, rounded up so the loop
/// never wakes just before the moment it waits for; -1 (forever) without one.
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(d) => i32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
    }
}

pub(crate) fn errno_name(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

/// How one ring is set up.
pub struct RingConfig {
    /// This ring's index (0-based), for logs and stats.
    pub index: usize,
    /// The ring's own `SO_REUSEPORT` listeners (see [`crate::listen`]): one per port the server
    /// serves (plain, TLS).
    pub listeners: Vec<Listener>,
    /// Submission queue entries; the completion queue gets 8x as many.
    pub sq_entries: u32,
    /// Provided buffers in the buffer ring (power of two) and their size.
    pub recv_buffers: u16,
    pub recv_buffer_size: usize,
    /// Sessions above this, counted over every ring sharing `global_sessions`, are refused with
    /// `reject_message`.
    pub max_sessions: usize,
    /// The session count shared by all rings of the server.
    pub global_sessions: Arc<AtomicUsize>,
    /// Sent (best effort) to a connection refused because of `max_sessions`.
    pub reject_message: Vec<u8>,
    /// Timer resolution.
    pub tick: Duration,
    /// How long a drain may take before remaining sessions are cut.
    pub drain_timeout: Duration,
    /// The probed features and chosen paths.
    pub features: Features,
    /// This ring's counters.
    pub stats: Arc<RingStats>,
    /// Faults to inject, for tests of the fallbacks.
    pub faults: Faults,
}

/// The most a ring's buffer of decrypted input keeps between receives.
const PLAIN_KEEP: usize = 1 << 20;

/// A listening socket and what its sessions speak.
pub struct Listener {
    pub fd: OwnedFd,
    /// TLS for every session accepted here; `None`: plain TCP.
    pub tls: Option<Arc<TlsAcceptor>>,
}

impl Listener {
    pub fn plain(fd: OwnedFd) -> Listener {
        Listener { fd, tls: None }
    }
}

/// Faults a test can force: set-up failures, to prove each fast path falls back instead of
/// aborting, and kernel behaviour that is hard to provoke on purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Make buffer-ring registration fail with EINVAL, as some distribution kernels do for every
    /// valid registration (Ubuntu 24.04's 6.8.0-136 and later).
    pub bufring_register_einval: bool,
    /// Receive with single-shot recvs from the buffer ring, so every data completion is final
    /// (no `IORING_CQE_F_MORE`), as the last one of a multishot recv is when the completion
    /// queue was full.
    pub final_recv_completions: bool,
}

/// What a backend does for the shared loop. Each function gets the whole loop, so a backend can
/// reach both its own state (`lp.io`) and the sessions (`lp.core`).
pub(crate) trait Backend<H: Handler>: Sized {
    /// Starts watching a freshly admitted session's input.
    fn watch(lp: &mut EventLoop<H, Self>, slot: u32) -> io::Result<()>;
    /// Hands a session's queued output to the kernel. Called only when output is queued and no
    /// send is outstanding.
    fn send(lp: &mut EventLoop<H, Self>, slot: u32);
    /// The handler has let go of a closed session: stop its I/O, and free the slot (with
    /// [`Core::free_slot`]) once the kernel holds nothing of it.
    fn release(lp: &mut EventLoop<H, Self>, slot: u32);
    /// Closes a descriptor that never became a session.
    fn discard(lp: &mut EventLoop<H, Self>, fd: RawFd);
    /// Applies a change of `SlotIo::input_paused` to an open session: stops receiving on it, or
    /// receives again.
    fn input_changed(lp: &mut EventLoop<H, Self>, slot: u32);
    /// Stops taking connections from the listener (drain, or a pause after EMFILE).
    fn stop_accepting(lp: &mut EventLoop<H, Self>);
    /// Takes connections again after a pause.
    fn resume_accepting(lp: &mut EventLoop<H, Self>);
    /// Last work before the loop may sleep (re-armed receives, recycled buffers).
    fn prepare(_lp: &mut EventLoop<H, Self>) {}
    /// False while the backend has queued work that must not wait for an event.
    fn may_sleep(lp: &EventLoop<H, Self>) -> bool;
    /// Hands queued work to the kernel and waits for events: blocking only when `block`, and then
    /// for at most `timeout` when there is one.
    fn wait(lp: &mut EventLoop<H, Self>, block: bool, timeout: Option<Duration>) -> io::Result<()>;
    /// Handles every event the last wait returned.
    fn dispatch(lp: &mut EventLoop<H, Self>);
    /// The loop is exiting.
    fn finish(_lp: &mut EventLoop<H, Self>) {}
}

/// What both backends keep per ring: sessions, handler, mailbox, timers and drain state.
pub(crate) struct Core<H: Handler> {
    pub(crate) slab: Slab<Slot<H::Conn>>,
    /// Generation per slab index, kept across reuse.
    generations: Vec<u32>,
    pub(crate) handler: H,
    pub(crate) mailbox: Receiver<H::Msg>,
    pub(crate) config: RingConfig,
    pub(crate) stats: Arc<RingStats>,
    wheel: TimerWheel,
    started: Instant,
    pub(crate) now: Instant,
    /// Sessions with output queued in this batch, sent once at the end of it.
    dirty: Vec<u32>,
    due: Vec<Entry>,
    /// Readiness-driven reads (epoll, poll-then-recv) land here: one buffer per ring, so an idle
    /// session holds none.
    scratch: Vec<u8>,
    pub(crate) accept_paused_until: Option<Instant>,
    pub(crate) draining: bool,
    drain_deadline: Option<Instant>,
    reject_log: LogLimiter,
    tls_log: LogLimiter,
    pub(crate) direct_log: LogLimiter,
    /// Decrypted input of TLS sessions, on its way to the handler: one buffer per ring.
    plain: Vec<u8>,
    /// TLS input being decrypted (rustls works in place): one buffer per ring, so a session
    /// keeps none of its own between receives.
    wire: Vec<u8>,
    cut: bool,
}

/// One ring's event loop over backend `B`.
pub(crate) struct EventLoop<H: Handler, B> {
    // Field order is drop order: the backend (the io_uring fd) goes first, so the kernel has let
    // go of every buffer before the slab that holds the send buffers is freed.
    pub(crate) io: B,
    pub(crate) core: Core<H>,
}

/// What reading a readable socket until it would block ended with.
pub(crate) enum Drained {
    /// The session is still open (it may have asked to close).
    Open,
    /// The peer sent EOF.
    Eof,
    /// A read failed and the session was closed.
    Closed,
}

impl<H: Handler> Core<H> {
    pub(crate) fn new(config: RingConfig, handler: H, mailbox: Receiver<H::Msg>) -> Core<H> {
        let now = Instant::now();
        Core {
            slab: Slab::with_capacity(1024),
            generations: Vec::new(),
            handler,
            mailbox,
            stats: config.stats.clone(),
            wheel: TimerWheel::new(1024, 0),
            started: now,
            now,
            dirty: Vec::new(),
            due: Vec::new(),
            scratch: vec![0; config.recv_buffer_size.max(4096)],
            accept_paused_until: None,
            draining: false,
            drain_deadline: None,
            reject_log: LogLimiter::new(),
            tls_log: LogLimiter::new(),
            direct_log: LogLimiter::new(),
            plain: Vec::new(),
            wire: Vec::new(),
            cut: false,
            config,
        }
    }

    pub(crate) fn context(&self) -> Context {
        Context {
            ring: self.config.index,
            draining: self.draining,
            now: self.now,
        }
    }

    /// Whether `slot` still holds the session of `generation` (closed or not): a completion for
    /// a slot that moved on is dropped.
    pub(crate) fn holds(&self, slot: u32, generation: u32) -> bool {
        self.slab
            .get(slot as usize)
            .is_some_and(|s| s.io.generation == generation)
    }

    /// Whether the session of `generation` at `slot` is open: callbacks run only for those.
    pub(crate) fn is_open(&self, slot: u32, generation: u32) -> bool {
        self.slab
            .get(slot as usize)
            .is_some_and(|s| s.io.generation == generation && !s.io.closed)
    }

    /// Hands bytes to the handler for an open session, decrypted first on a TLS one.
    pub(crate) fn deliver(&mut self, slot: u32, data: &[u8]) {
        add(&self.stats.bytes_in, data.len() as u64);
        let cx = self.context();
        let s = &mut self.slab[slot as usize];
        if s.io.closed {
            return;
        }
        let Some(tls) = s.io.tls.as_mut() else {
            let mut session = s.session(slot);
            self.handler.on_data(&cx, &mut session, data);
            return;
        };
        let mut plain = std::mem::take(&mut self.plain);
        if let Err(error) = tls.receive(data, &mut self.wire, &mut plain) {
            tls.failed = true;
            let handshaking = tls.handshaking();
            s.io.closing = match error {
                crate::tls::Error::NotTls => Closing::Now,
                // The alert rustls queued goes out before the close.
                _ => Closing::AfterFlush,
            };
            bump(&self.stats.tls_errors);
            if let Some(suppressed) = self.tls_log.allow(self.now) {
                tracing::info!(ring = self.config.index, peer = ?tls.peer, %error, handshaking, suppressed,
                    "TLS failed; closing the session");
            }
        }
        if !plain.is_empty() && s.io.closing != Closing::Now {
            let mut session = s.session(slot);
            self.handler.on_data(&cx, &mut session, &plain);
        }
        plain.clear();
        // One buffer per ring, not per session: it may keep what a large receive needed, up to
        // a bound, so TLS bulk traffic does not reallocate on every receive.
        if plain.capacity() > PLAIN_KEEP {
            plain = Vec::new();
        }
        self.plain = plain;
        if self.wire.capacity() > PLAIN_KEEP {
            self.wire = Vec::new();
        }
    }

    /// Tells the handler the peer will send nothing more.
    pub(crate) fn deliver_eof(&mut self, slot: u32) {
        let cx = self.context();
        let s = &mut self.slab[slot as usize];
        if !s.io.closed {
            let mut session = s.session(slot);
            self.handler.on_eof(&cx, &mut session);
            s.io.close_reason = CloseReason::PeerGone;
            s.io.peer_eof = true;
        }
    }

    /// Counts a failed accept and decides what happens next; true when accepts are paused (out
    /// of descriptors or memory: keep serving the sessions we have, resume after 100 ms).
    pub(crate) fn accept_failed(&mut self, errno: i32) -> bool {
        match errno {
            libc::EINTR | libc::EAGAIN | libc::ECONNABORTED | libc::EPROTO => false,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                bump(&self.stats.accept_errors);
                tracing::warn!(ring = self.config.index, error = %errno_name(errno),
                    "accept failed; pausing accepts for 100 ms");
                self.accept_paused_until = Some(self.now + Duration::from_millis(100));
                true
            }
            libc::EBADF | libc::EFAULT | libc::ENOTSOCK => {
                panic!("accept on our own listener failed: {}", errno_name(errno))
            }
            _ => {
                bump(&self.stats.accept_errors);
                tracing::warn!(ring = self.config.index, error = %errno_name(errno), "accept failed");
                false
            }
        }
    }

    /// Counts a new connection against `max_sessions`; false (after a best-effort refusal
    /// message) when the server is full.
    fn claim_session(&mut self, fd: RawFd) -> bool {
        if self.config.global_sessions.fetch_add(1, Ordering::AcqRel) < self.config.max_sessions {
            return true;
        }
        self.config.global_sessions.fetch_sub(1, Ordering::AcqRel);
        bump(&self.stats.rejected_max_sessions);
        if let Some(suppressed) = self.reject_log.allow(self.now) {
            tracing::warn!(
                ring = self.config.index,
                max_sessions = self.config.max_sessions,
                suppressed,
                "refusing a connection: --max-sessions reached"
            );
        }
        // SAFETY: a non-blocking best-effort send of a message we own to a socket we just
        // accepted and still own.
        unsafe {
            libc::send(
                fd,
                self.config.reject_message.as_ptr().cast(),
                self.config.reject_message.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        false
    }

    /// Gives an accepted socket a slot and a generation, then lets the handler open and start
    /// the session.
    fn open_session(&mut self, fd: RawFd, tls: Option<Box<Tls>>) -> u32 {
        bump(&self.stats.accepted);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        // SAFETY: fd was just accepted and is owned by this ring until closed.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        let _ = sock.set_tcp_nodelay(true);
        let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
        let cx = self.context();
        let slot = self
            .open_slot(fd, |handler, id| Some(handler.on_open(&cx, id, peer)))
            .expect("on_open always gives a state");
        let s = &mut self.slab[slot as usize];
        s.io.tls = tls.map(|mut tls| {
            tls.peer = peer;
            tls
        });
        let mut session = s.session(slot);
        self.handler.on_start(&cx, &mut session);
        slot
    }

    /// Gives `fd` a slot and a generation, if `open` (a handler callback, given the session's
    /// id) returns its state; a refusal leaves no trace.
    fn open_slot(
        &mut self,
        fd: RawFd,
        open: impl FnOnce(&mut H, SessionId) -> Option<H::Conn>,
    ) -> Option<u32> {
        let entry = self.slab.vacant_entry();
        let slot = entry.key() as u32;
        if self.generations.len() <= slot as usize {
            self.generations.resize(slot as usize + 1, 0);
        }
        let generation = self.generations[slot as usize];
        let conn = open(&mut self.handler, SessionId { slot, generation })?;
        entry.insert(Slot {
            io: SlotIo::new(fd, generation),
            conn: Some(conn),
        });
        Some(slot)
    }

    /// Gives an attached socket a slot if the handler takes it (`on_attach`); the handler's
    /// refusal leaves no trace.
    fn open_attached(&mut self, fd: RawFd, msg: H::Msg) -> Option<u32> {
        // SAFETY: fd was handed over to this ring, which owns it until closed.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        // A Unix socket has no Nagle to turn off: the error is expected there.
        let _ = socket2::SockRef::from(&borrowed).set_tcp_nodelay(true);
        let cx = self.context();
        let slot = self.open_slot(fd, |handler, id| handler.on_attach(&cx, id, msg))?;
        self.slab[slot as usize].io.attached = true;
        Some(slot)
    }

    /// Frees every slot left when the loop ends without a drain (an error, a panic in a callback)
    /// and closes its descriptor, without calling the handler, whose state may be inconsistent.
    /// The backend has made sure the kernel holds nothing of them.
    pub(crate) fn abandon_sessions(&mut self) {
        let slots: Vec<u32> = self.slab.iter().map(|(k, _)| k as u32).collect();
        for slot in slots {
            let fd = self.free_slot(slot);
            // A direct descriptor (negative: its table entry) closes with the ring's file table.
            if fd >= 0 {
                // SAFETY: the session's own socket, closed once: its slot is gone.
                unsafe { libc::close(fd) };
            }
        }
    }

    /// Frees a closed slot whose I/O is over; returns the descriptor for the backend to close
    /// (negative for a session on a direct descriptor: see `uring.rs`'s `direct_entry`).
    pub(crate) fn free_slot(&mut self, slot: u32) -> RawFd {
        let s = self.slab.remove(slot as usize);
        self.generations[slot as usize] =
            (self.generations[slot as usize] + 1) & token::GENERATION_MASK;
        if !s.io.attached {
            self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
            self.config.global_sessions.fetch_sub(1, Ordering::AcqRel);
            bump(&self.stats.closed);
        }
        s.io.fd
    }
}

impl<H: Handler, B: Backend<H>> EventLoop<H, B> {
    /// Runs until a drain completes. Returns the handler.
    pub(crate) fn run(mut self) -> io::Result<H> {
        /// Lets the backend finish on every way out of the loop, an error or a panic in a
        /// callback included, while the loop's memory is still there.
        struct Finish<'a, H: Handler, B: Backend<H>>(&'a mut EventLoop<H, B>);
        impl<H: Handler, B: Backend<H>> Drop for Finish<'_, H, B> {
            fn drop(&mut self) {
                B::finish(self.0);
            }
        }
        Finish(&mut self).0.turn_until_drained()?;
        Ok(self.core.handler)
    }

    fn turn_until_drained(&mut self) -> io::Result<()> {
        loop {
            self.core.now = Instant::now();
            self.apply_messages();
            self.fire_timers();
            self.flush_output();
            B::prepare(self);
            let core = &self.core;
            if core.mailbox.draining() && !core.draining {
                self.start_drain();
            }
            let core = &self.core;
            if core.draining {
                if core.slab.is_empty() {
                    break;
                }
                if core.drain_deadline.is_some_and(|d| core.now >= d) {
                    if core.cut {
                        tracing::warn!(ring = core.config.index, sessions = core.slab.len(),
                            "sessions still had operations in flight after the drain; exiting anyway");
                        break;
                    }
                    self.cut_all();
                    continue;
                }
            }
            let timeout = self
                .next_wake_up()
                .map(|at| at.saturating_duration_since(self.core.now));
            let core = &self.core;
            // A drain asked for but not started yet must be started on the next turn, not after
            // the next event.
            let drain_pending = core.mailbox.draining() && !core.draining;
            let may_sleep = core.dirty.is_empty() && !drain_pending && B::may_sleep(self);
            let sleeping = may_sleep && self.core.mailbox.prepare_sleep();
            let waited = B::wait(self, sleeping, timeout);
            if sleeping {
                self.core.mailbox.woke();
            }
            waited?;
            self.core.now = Instant::now();
            B::dispatch(self);
        }
        Ok(())
    }

    /// A connection was accepted on `listener`: refuse it (draining, or `max_sessions` reached)
    /// or open a session for it and start watching its input.
    pub(crate) fn admit(&mut self, fd: RawFd, listener: usize) {
        if self.core.draining || !self.core.claim_session(fd) {
            B::discard(self, fd);
            return;
        }
        let tls = match self
            .core
            .config
            .listeners
            .get(listener)
            .and_then(|l| l.tls.as_ref())
        {
            None => None,
            Some(acceptor) => match acceptor.accept() {
                Ok(tls) => Some(Box::new(tls)),
                Err(e) => {
                    tracing::warn!(ring = self.core.config.index, error = %e, "cannot start TLS for a new connection; closing it");
                    self.core
                        .config
                        .global_sessions
                        .fetch_sub(1, Ordering::AcqRel);
                    B::discard(self, fd);
                    return;
                }
            },
        };
        let slot = self.core.open_session(fd, tls);
        if let Err(e) = B::watch(self, slot) {
            tracing::warn!(ring = self.core.config.index, error = %e, "cannot watch a new session; closing it");
            self.begin_close(slot, CloseReason::PeerGone);
            return;
        }
        self.after_callback(slot);
    }

    /// A socket handed over by `Sender::attach`: a session of the handler's own, unless the ring
    /// drains or the handler refuses it (then it is closed).
    fn attach(&mut self, socket: OwnedFd, msg: H::Msg) {
        if self.core.draining {
            return;
        }
        let fd = socket.into_raw_fd();
        let Some(slot) = self.core.open_attached(fd, msg) else {
            // SAFETY: the descriptor handed over, which no slot took: closed once, here.
            unsafe { libc::close(fd) };
            return;
        };
        if let Err(e) = B::watch(self, slot) {
            tracing::warn!(ring = self.core.config.index, error = %e, "cannot watch an attached socket; closing it");
            self.begin_close(slot, CloseReason::PeerGone);
            return;
        }
        self.after_callback(slot);
    }

    /// Reads a readable socket into the scratch buffer until it would block, a bounded number of
    /// times so one session cannot starve the ring. Stops once the handler pauses the session's
    /// input, unless `even_paused` (a hung-up socket must be read to its end or error).
    pub(crate) fn drain_socket(&mut self, slot: u32, even_paused: bool) -> Drained {
        for _ in 0..4 {
            let io = &self.core.slab[slot as usize].io;
            if io.closed || io.closing != Closing::No || (io.input_paused && !even_paused) {
                return Drained::Open;
            }
            let fd = io.fd;
            let scratch = &mut self.core.scratch;
            // SAFETY: reads into the ring's own scratch buffer, which lives as long as the ring;
            // MSG_DONTWAIT keeps the ring from blocking.
            let n = unsafe {
                libc::recv(
                    fd,
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                return Drained::Eof;
            }
            if n < 0 {
                let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if errno == libc::EAGAIN || errno == libc::EINTR {
                    return Drained::Open;
                }
                self.io_failed(slot, errno, "recv");
                return Drained::Closed;
            }
            let len = n as usize;
            let scratch = std::mem::take(&mut self.core.scratch);
            self.core.deliver(slot, &scratch[..len]);
            self.core.scratch = scratch;
            if len < self.core.scratch.len() {
                return Drained::Open;
            }
        }
        Drained::Open
    }

    /// A receive or send on a session's socket failed: crash on our own bug, otherwise close.
    pub(crate) fn io_failed(&mut self, slot: u32, errno: i32, op: &str) {
        match errno {
            libc::EBADF | libc::EFAULT | libc::ENOTSOCK => {
                panic!(
                    "{op} on our own session socket failed: {}",
                    errno_name(errno)
                )
            }
            libc::ECONNRESET
            | libc::ETIMEDOUT
            | libc::EPIPE
            | libc::ENOTCONN
            | libc::EHOSTUNREACH => bump(&self.core.stats.peer_resets),
            _ => {
                tracing::warn!(ring = self.core.config.index, error = %errno_name(errno), "{op} failed; closing the session")
            }
        }
        self.begin_close(slot, CloseReason::PeerGone);
    }

    fn flush_output(&mut self) {
        let dirty = std::mem::take(&mut self.core.dirty);
        for &slot in &dirty {
            let Some(s) = self.core.slab.get_mut(slot as usize) else {
                continue;
            };
            s.io.in_dirty_list = false;
            if !s.io.closed && !s.io.send_inflight && s.io.has_output() {
                B::send(self, slot);
            }
        }
        self.core.dirty = dirty;
        self.core.dirty.clear();
    }

    fn apply_messages(&mut self) {
        let mut applied = 0u64;
        while let Some(envelope) = self.core.mailbox.pop() {
            applied += 1;
            match envelope {
                Envelope::Session(id, msg) => {
                    if !self.core.is_open(id.slot, id.generation) {
                        continue; // the session left while its job ran
                    }
                    let core = &mut self.core;
                    let cx = core.context();
                    let mut session = core.slab[id.slot as usize].session(id.slot);
                    core.handler.on_message(&cx, &mut session, msg);
                    self.after_callback(id.slot);
                }
                Envelope::Ring(msg) => {
                    let core = &mut self.core;
                    let cx = core.context();
                    let mut sessions = Sessions {
                        slab: &mut core.slab,
                    };
                    core.handler.on_ring_message(&cx, msg, &mut sessions);
                    let slots: Vec<u32> = core.slab.iter().map(|(k, _)| k as u32).collect();
                    for slot in slots {
                        self.after_callback(slot);
                    }
                }
                Envelope::Attach(socket, msg) => self.attach(socket, msg),
            }
        }
        if applied > 0 {
            add(&self.core.stats.messages, applied);
        }
    }

    /// When the loop must look at the clock again even if no event comes: the earliest wheel
    /// entry, the end of an accept pause, the drain deadline. Sleeping until then, rather than
    /// one tick, lets a ring of idle sessions with deadlines far ahead stay asleep; a stale entry
    /// costs at most the one wake-up at its tick.
    fn next_wake_up(&mut self) -> Option<Instant> {
        let core = &mut self.core;
        let tick = core.config.tick;
        let started = core.started;
        let wheel = core
            .wheel
            .next_due()
            .map(|t| started + tick.saturating_mul(u32::try_from(t).unwrap_or(u32::MAX)));
        let drain = core.drain_deadline.filter(|_| core.draining);
        [wheel, core.accept_paused_until, drain]
            .into_iter()
            .flatten()
            .min()
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let tick_ns = self.core.config.tick.as_nanos().max(1);
        (at.saturating_duration_since(self.core.started).as_nanos() / tick_ns) as u64
    }

    fn fire_timers(&mut self) {
        if let Some(until) = self.core.accept_paused_until {
            if self.core.now >= until {
                self.core.accept_paused_until = None;
                if !self.core.draining {
                    B::resume_accepting(self);
                }
            }
        }
        let now_tick = self.tick_of(self.core.now);
        let mut due = std::mem::take(&mut self.core.due);
        self.core.wheel.advance(now_tick, &mut due);
        for entry in due.drain(..) {
            if !self.core.is_open(entry.slot, entry.generation) {
                continue;
            }
            let core = &mut self.core;
            let cx = core.context();
            let s = &mut core.slab[entry.slot as usize];
            if !s.io.due(entry, core.now, now_tick, &mut core.wheel) {
                continue;
            }
            let mut session = s.session(entry.slot);
            core.handler.on_deadline(&cx, &mut session);
            self.after_callback(entry.slot);
        }
        self.core.due = due;
    }

    /// Applies what a callback asked for: close, deadline changes, queued output.
    pub(crate) fn after_callback(&mut self, slot: u32) {
        let core = &mut self.core;
        let Some(s) = core.slab.get_mut(slot as usize) else {
            return;
        };
        let started = core.started;
        let tick_ns = core.config.tick.as_nanos().max(1);
        let tick =
            |at: Instant| (at.saturating_duration_since(started).as_nanos() / tick_ns) as u64;
        let input_changed = std::mem::take(&mut s.io.input_changed);
        match s.io.settle(slot, &mut core.wheel, tick) {
            Settled::Idle => {}
            Settled::Flush => core.dirty.push(slot),
            // Closing stops every receive anyway.
            Settled::Close(reason) => return self.begin_close(slot, reason),
        }
        if input_changed && !self.core.slab[slot as usize].io.closed {
            B::input_changed(self, slot);
        }
    }

    /// Ends the session: hands its state to the handler for the last time, then lets the backend
    /// stop its I/O and free the slot.
    pub(crate) fn begin_close(&mut self, slot: u32, reason: CloseReason) {
        let core = &mut self.core;
        let cx = core.context();
        let Some(s) = core.slab.get_mut(slot as usize) else {
            return;
        };
        if s.io.closed {
            return;
        }
        s.io.closed = true;
        if let Some(tls) = s.io.tls.as_ref() {
            // The server ended a session whose handshake never finished (the auth timeout, a
            // limit): a TLS problem the peer may not report, so say it here.
            if tls.handshaking() && !tls.failed && reason != CloseReason::PeerGone {
                bump(&core.stats.tls_errors);
                if let Some(suppressed) = core.tls_log.allow(core.now) {
                    tracing::info!(
                        ring = core.config.index,
                        ?reason,
                        suppressed,
                        "TLS handshake never finished; session closed"
                    );
                }
            }
        }
        let id = SessionId {
            slot,
            generation: s.io.generation,
        };
        let conn = s.conn.take().expect("open session has state");
        core.handler.on_close(&cx, id, conn, reason);
        B::release(self, slot);
    }

    fn start_drain(&mut self) {
        self.core.draining = true;
        self.core.drain_deadline = Some(self.core.now + self.core.config.drain_timeout);
        B::stop_accepting(self);
        for listener in &self.core.config.listeners {
            // SAFETY: shutting down our own listening socket stops new connections from queueing
            // on it; the descriptor itself stays open (in `config`) until the ring is dropped.
            unsafe { libc::shutdown(listener.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let slots: Vec<u32> = self.core.slab.iter().map(|(k, _)| k as u32).collect();
        for slot in slots {
            let core = &mut self.core;
            let cx = core.context();
            let s = &mut core.slab[slot as usize];
            if s.io.closed {
                continue;
            }
            let mut session = s.session(slot);
            core.handler.on_drain(&cx, &mut session);
            self.after_callback(slot);
        }
    }

    fn cut_all(&mut self) {
        let slots: Vec<u32> = self.core.slab.iter().map(|(k, _)| k as u32).collect();
        for slot in slots {
            self.begin_close(slot, CloseReason::Shutdown);
        }
        // Give operations still in flight a moment to complete; after that the loop stops
        // waiting for them.
        self.core.cut = true;
        self.core.drain_deadline = Some(self.core.now + Duration::from_secs(1));
    }
}
