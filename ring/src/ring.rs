//! The proactor loop: one ring per core, owning its listener, its sessions and their I/O.
//!
//! Reading order: [`Ring::run`] reaps a batch of completions, then one `match` on the op kind sends
//! each to its handler (`on_accept`, `on_recv`, `on_poll`, `on_send`, `on_wake`), then results from
//! other threads are applied, timers fire, and queued output is submitted as one send per session.
//! The verbs pair up: `submit_recv` / `on_recv`, `submit_send` / `on_send`, `begin_close` /
//! `finish_close`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use crate::bufring::BufRing;
use crate::handler::{
    CloseReason, Closing, Context, Handler, LogLimiter, Sessions, Settled, Slot, SlotIo,
};
use crate::mailbox::{Envelope, Receiver};
use crate::probe::{AcceptPath, Features, RecvPath};
use crate::timer::{Entry, TimerWheel};
use crate::token::{self, Op};
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
    /// 1 when this ring fell back to poll-then-recv because the kernel refused the buffer ring.
    pub recv_fallback: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How one ring is set up.
pub struct RingConfig {
    /// This ring's index (0-based), for logs and stats.
    pub index: usize,
    /// The ring's own `SO_REUSEPORT` listener (see [`crate::listen`]).
    pub listener: OwnedFd,
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

/// Set-up failures a test can force, to prove each fast path falls back instead of aborting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Make buffer-ring registration fail with EINVAL, as some distribution kernels do for every
    /// valid registration (Ubuntu 24.04's 6.8.0-136 and later).
    pub bufring_register_einval: bool,
}

/// One completion, copied out of the completion queue so handlers run after the queue is
/// released (no recursion through submit/complete).
#[derive(Clone, Copy)]
struct Completion {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// A proactor ring. Create it on the thread that will run it (`SINGLE_ISSUER`).
pub struct Ring<H: Handler> {
    // Field order is drop order: the io_uring fd closes first, so the kernel has let go of every
    // buffer (buffer ring, eventfd word, send buffers in the slab) before they are freed.
    uring: IoUring,
    bufring: Option<BufRing>,
    wake_word: Box<u64>,
    timeout_spec: Box<types::Timespec>,
    slab: Slab<Slot<H::Conn>>,
    /// Generation per slab index, kept across reuse.
    generations: Vec<u32>,
    handler: H,
    mailbox: Receiver<H::Msg>,
    config: RingConfig,
    stats: Arc<RingStats>,
    wheel: TimerWheel,
    started: Instant,
    backlog: VecDeque<squeue::Entry>,
    batch: Vec<Completion>,
    dirty: Vec<u32>,
    rearm_recv: Vec<(u32, u32)>,
    scratch: Vec<u8>,
    accept_armed: bool,
    accept_paused_until: Option<Instant>,
    timeout_armed: bool,
    draining: bool,
    drain_deadline: Option<Instant>,
    reject_log: LogLimiter,
    cut: bool,
    now: Instant,
    due: Vec<Entry>,
}

fn errno_name(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

impl<H: Handler> Ring<H> {
    /// Sets up the io_uring instance with the setup flags the probe found, registers the buffer
    /// ring (falling back to poll-then-recv if the kernel refuses it), and arms accept and the
    /// wake-up read.
    pub fn new(mut config: RingConfig, handler: H, mailbox: Receiver<H::Msg>) -> io::Result<Self> {
        let f = &config.features;
        let mut builder = IoUring::builder();
        builder.setup_cqsize(config.sq_entries * 8);
        if f.single_issuer {
            builder.setup_single_issuer();
        }
        if f.defer_taskrun {
            builder.setup_defer_taskrun();
        }
        if f.coop_taskrun {
            builder.setup_coop_taskrun();
        }
        if f.defer_taskrun || f.coop_taskrun {
            // With deferred or cooperative task work the kernel raises IORING_SQ_TASKRUN when
            // work is pending, so even a non-waiting enter carries GETEVENTS and runs it; without
            // it a ring that never sleeps would never see its completions.
            builder.setup_taskrun_flag();
        }
        let uring = builder.build(config.sq_entries)?;
        let bufring = if config.features.recv == RecvPath::MultishotBufRing {
            let ring = BufRing::new(config.recv_buffers, config.recv_buffer_size, 0)?;
            let registered = if config.faults.bufring_register_einval {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                ring.register(&uring.submitter())
            };
            match registered {
                Ok(()) => Some(ring),
                Err(e) => {
                    tracing::warn!(
                        ring = config.index,
                        error = %e,
                        "the kernel refused the provided-buffer ring; falling back to poll-then-recv"
                    );
                    config.features.recv = RecvPath::PollThenRecv;
                    config.stats.recv_fallback.store(1, Ordering::Relaxed);
                    None
                }
            }
        } else {
            None
        };
        let stats = config.stats.clone();
        let now = Instant::now();
        let mut ring = Ring {
            uring,
            bufring,
            wake_word: Box::new(0),
            timeout_spec: Box::new(types::Timespec::from(config.tick)),
            slab: Slab::with_capacity(1024),
            generations: Vec::new(),
            handler,
            mailbox,
            stats,
            wheel: TimerWheel::new(1024, 0),
            started: now,
            backlog: VecDeque::new(),
            batch: Vec::with_capacity(config.sq_entries as usize * 8),
            dirty: Vec::new(),
            rearm_recv: Vec::new(),
            scratch: vec![0; config.recv_buffer_size.max(4096)],
            accept_armed: false,
            accept_paused_until: None,
            timeout_armed: false,
            draining: false,
            drain_deadline: None,
            reject_log: LogLimiter::new(),
            cut: false,
            now,
            due: Vec::new(),
            config,
        };
        ring.submit_accept();
        ring.submit_wake_read();
        Ok(ring)
    }

    /// The paths this ring actually took (after any run-time fallback).
    pub fn features(&self) -> &Features {
        &self.config.features
    }

    /// Access to the handler (tests, final stats).
    pub fn handler(&self) -> &H {
        &self.handler
    }

    fn context(&self) -> Context {
        Context {
            ring: self.config.index,
            draining: self.draining,
            now: self.now,
        }
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let tick_ns = self.config.tick.as_nanos().max(1);
        (at.saturating_duration_since(self.started).as_nanos() / tick_ns) as u64
    }

    // ---- submission plumbing ----

    /// Pushes one entry; a full submission queue is flushed to the kernel first, and if even that
    /// leaves no room the entry waits in a backlog that the loop drains. Never dropped.
    ///
    /// # Safety
    /// Every buffer and pointer named by `entry` must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            bump(&self.stats.sq_backlogged);
            return;
        }
        // SAFETY: the caller guarantees the entry's buffers outlive its completion.
        if unsafe { self.uring.submission().push(&entry) }.is_ok() {
            return;
        }
        let _ = self.uring.submit();
        bump(&self.stats.enters);
        // SAFETY: as above.
        if unsafe { self.uring.submission().push(&entry) }.is_err() {
            bump(&self.stats.sq_backlogged);
            self.backlog.push_back(entry);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            // SAFETY: entries in the backlog were pushed through `push`, whose callers guaranteed
            // their buffers live until completion; nothing has completed them yet.
            if unsafe { self.uring.submission().push(&entry) }.is_err() {
                self.backlog.push_front(entry);
                break;
            }
        }
    }

    fn submit_accept(&mut self) {
        if self.accept_armed || self.draining {
            return;
        }
        let fd = types::Fd(self.config.listener.as_raw_fd());
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let entry = match self.config.features.accept {
            AcceptPath::Multishot => opcode::AcceptMulti::new(fd).flags(flags).build(),
            AcceptPath::SingleShot => {
                opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(flags)
                    .build()
            }
        }
        .user_data(token::ACCEPT);
        // SAFETY: accept names no memory of ours (null address pointers); the listener fd stays
        // open until the accept is cancelled and its completion reaped (see `start_drain`).
        unsafe { self.push(entry) };
        self.accept_armed = true;
    }

    fn submit_wake_read(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.mailbox.eventfd()),
            (&mut *self.wake_word as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(token::WAKE);
        // SAFETY: `wake_word` is a Box owned by the ring, freed only after the io_uring fd closes
        // (field order), so the 8 bytes stay valid until this read completes.
        unsafe { self.push(entry) };
    }

    fn submit_recv(&mut self, slot: u32) {
        let group = self.bufring.as_ref().map(BufRing::group);
        let s = &mut self.slab[slot as usize];
        debug_assert!(!s.io.recv_armed && !s.io.closed);
        let fd = types::Fd(s.io.fd);
        let entry = match (self.config.features.recv, group) {
            (RecvPath::MultishotBufRing, Some(group)) => opcode::RecvMulti::new(fd, group)
                .build()
                .user_data(token::encode(Op::Recv, s.io.generation, slot)),
            _ => opcode::PollAdd::new(fd, libc::POLLIN as u32)
                .build()
                .user_data(token::encode(Op::Poll, s.io.generation, slot)),
        };
        s.io.recv_armed = true;
        s.io.ops_in_flight += 1;
        // SAFETY: a multishot recv names only the buffer group, whose memory lives as long as the
        // ring; a poll names no memory at all.
        unsafe { self.push(entry) };
    }

    fn submit_send(&mut self, slot: u32) {
        let s = &mut self.slab[slot as usize];
        debug_assert!(!s.io.send_inflight);
        if s.io.sent == s.io.sending.len() {
            s.io.sending.clear();
            s.io.sent = 0;
            std::mem::swap(&mut s.io.out, &mut s.io.sending);
        }
        if s.io.sending.is_empty() {
            return;
        }
        let remaining = &s.io.sending[s.io.sent..];
        let entry = opcode::Send::new(
            types::Fd(s.io.fd),
            remaining.as_ptr(),
            remaining.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(token::encode(Op::Send, s.io.generation, slot));
        s.io.send_inflight = true;
        s.io.ops_in_flight += 1;
        // SAFETY: the bytes live in this slot's `sending` Vec, which is not touched while
        // `send_inflight` is set, and the slot is not freed while ops_in_flight > 0; moving the
        // Slot inside the slab does not move the Vec's heap buffer.
        unsafe { self.push(entry) };
    }

    fn submit_close(&mut self, fd: RawFd) {
        let entry = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(token::encode(Op::Close, 0, 0));
        // SAFETY: close names no memory; the fd is ours and no other op on it remains in flight.
        unsafe { self.push(entry) };
    }

    // ---- the loop ----

    /// Runs until a drain completes. Returns the handler.
    pub fn run(mut self) -> io::Result<H> {
        loop {
            self.now = Instant::now();
            self.apply_messages();
            self.fire_timers();
            self.flush_output();
            self.rearm_receives();
            if let Some(ring) = self.bufring.as_mut() {
                ring.commit();
            }
            if self.mailbox.draining() && !self.draining {
                self.start_drain();
            }
            if self.draining {
                if self.slab.is_empty() {
                    break;
                }
                if self.drain_deadline.is_some_and(|d| self.now >= d) {
                    if self.cut {
                        tracing::warn!(ring = self.config.index, sessions = self.slab.len(),
                            "sessions still had operations in flight after the drain; exiting anyway");
                        break;
                    }
                    self.cut_all();
                }
            }
            self.flush_backlog();
            self.wait()?;
            self.reap();
            self.now = Instant::now();
            let batch = std::mem::take(&mut self.batch);
            for c in &batch {
                self.dispatch(*c);
            }
            self.batch = batch;
            self.batch.clear();
        }
        // Hand in-flight closes to the kernel before the ring goes away.
        let _ = self.uring.submit();
        Ok(self.handler)
    }

    fn needs_timeout(&self) -> bool {
        !self.wheel.is_empty() || self.accept_paused_until.is_some() || self.draining
    }

    fn wait(&mut self) -> io::Result<()> {
        let mut want = 1;
        if !self.backlog.is_empty() || !self.dirty.is_empty() || !self.rearm_recv.is_empty() {
            want = 0;
        }
        if self.mailbox.draining() && !self.draining {
            want = 0;
        }
        let sleeping = want == 1 && self.mailbox.prepare_sleep();
        if !sleeping {
            want = 0;
        }
        let timeout = self.needs_timeout();
        if want == 1 && timeout && !self.config.features.ext_arg && !self.timeout_armed {
            let entry = opcode::Timeout::new(&*self.timeout_spec as *const types::Timespec)
                .build()
                .user_data(token::TIMEOUT);
            // SAFETY: `timeout_spec` is a Box owned by the ring and outlives the io_uring fd.
            unsafe { self.push(entry) };
            self.timeout_armed = true;
        }
        self.stats
            .submissions
            .fetch_add(self.uring.submission().len() as u64, Ordering::Relaxed);
        bump(&self.stats.enters);
        let result = if self.config.features.poll_wait {
            self.submit_then_poll(want == 1, timeout)
        } else if want == 1 && timeout && self.config.features.ext_arg {
            let args = types::SubmitArgs::new().timespec(&self.timeout_spec);
            self.uring.submitter().submit_with_args(1, &args)
        } else {
            self.uring.submitter().submit_and_wait(want)
        };
        if sleeping {
            self.mailbox.woke();
        }
        match result {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // ETIME: the wait timed out; EINTR: a signal; EBUSY: the completion queue is
                // full and must be reaped first; EAGAIN: the kernel is short of memory for now.
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// The `enter-wait` fallback: submit without waiting, then block in `poll(2)` on the ring
    /// fd, which is readable once a completion is posted.
    fn submit_then_poll(&mut self, block: bool, timeout: bool) -> io::Result<usize> {
        let submitted = self.uring.submitter().submit()?;
        if !block || !self.uring.completion().is_empty() {
            return Ok(submitted);
        }
        let mut pollfd = libc::pollfd {
            fd: self.uring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = if timeout {
            self.config.tick.as_millis().max(1) as i32
        } else {
            -1
        };
        // SAFETY: poll reads and writes one pollfd we own for the duration of the call.
        if unsafe { libc::poll(&mut pollfd, 1, timeout_ms) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(submitted)
    }

    fn reap(&mut self) {
        let mut cq = self.uring.completion();
        let overflow = cq.overflow();
        for cqe in &mut cq {
            self.batch.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        drop(cq);
        if overflow > 0 {
            self.stats
                .cq_overflow
                .store(overflow as u64, Ordering::Relaxed);
        }
        if self.uring.submission().cq_overflow() {
            bump(&self.stats.cq_overflow);
        }
        self.stats
            .completions
            .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
    }

    fn dispatch(&mut self, c: Completion) {
        let Some((op, generation, slot)) = token::decode(c.user_data) else {
            panic!(
                "completion with a user_data we never submitted: {:#x}",
                c.user_data
            );
        };
        match op {
            Op::Accept => self.on_accept(c),
            Op::Recv => self.on_recv(slot, generation, c),
            Op::Poll => self.on_poll(slot, generation, c),
            Op::Send => self.on_send(slot, generation, c),
            Op::Wake => self.on_wake(c),
            Op::Timeout => self.timeout_armed = false,
            Op::Close | Op::Cancel => {}
        }
    }

    /// Looks up a live slot for a completion; `None` (and a stat) if its generation moved on.
    fn live_slot(&self, slot: u32, generation: u32) -> bool {
        match self.slab.get(slot as usize) {
            Some(s) => s.io.generation == generation,
            None => false,
        }
    }

    // ---- accept ----

    fn on_accept(&mut self, c: Completion) {
        let more = self.config.features.accept == AcceptPath::Multishot && cqueue::more(c.flags);
        if !more {
            self.accept_armed = false;
        }
        if c.result < 0 {
            let errno = -c.result;
            match errno {
                libc::ECANCELED => return,
                libc::EINTR | libc::EAGAIN | libc::ECONNABORTED | libc::EPROTO => {}
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    // Out of descriptors or memory: back off and keep serving the sessions we
                    // have; accept resumes when the pause ends.
                    bump(&self.stats.accept_errors);
                    tracing::warn!(ring = self.config.index, error = %errno_name(errno),
                        "accept failed; pausing accepts for 100 ms");
                    self.accept_paused_until = Some(self.now + Duration::from_millis(100));
                    if more {
                        self.cancel(token::ACCEPT);
                    }
                    return;
                }
                libc::EBADF | libc::EFAULT | libc::ENOTSOCK => {
                    panic!("accept on our own listener failed: {}", errno_name(errno))
                }
                _ => {
                    bump(&self.stats.accept_errors);
                    tracing::warn!(ring = self.config.index, error = %errno_name(errno), "accept failed");
                }
            }
            if !more && self.accept_paused_until.is_none() {
                self.submit_accept();
            }
            return;
        }
        let fd = c.result;
        if !more && self.accept_paused_until.is_none() {
            self.submit_accept();
        }
        if self.draining {
            self.submit_close(fd);
            return;
        }
        if self.config.global_sessions.fetch_add(1, Ordering::AcqRel) >= self.config.max_sessions {
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
            self.submit_close(fd);
            return;
        }
        bump(&self.stats.accepted);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        // SAFETY: fd was just returned by accept and is owned by this ring until closed.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        let _ = sock.set_tcp_nodelay(true);
        let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
        let cx = self.context();
        let entry = self.slab.vacant_entry();
        let slot = entry.key() as u32;
        if self.generations.len() <= slot as usize {
            self.generations.resize(slot as usize + 1, 0);
        }
        let generation = self.generations[slot as usize];
        let id = SessionId { slot, generation };
        let conn = self.handler.on_open(&cx, id, peer);
        let slot_ref = entry.insert(Slot {
            io: SlotIo::new(fd, generation, peer),
            conn: Some(conn),
        });
        let mut session = slot_ref.session(slot);
        self.handler.on_start(&cx, &mut session);
        self.submit_recv(slot);
        self.after_callback(slot);
    }

    fn cancel(&mut self, user_data: u64) {
        let entry = opcode::AsyncCancel::new(user_data)
            .build()
            .user_data(token::encode(Op::Cancel, 0, 0));
        // SAFETY: a cancel names no memory.
        unsafe { self.push(entry) };
    }

    // ---- receive ----

    fn on_recv(&mut self, slot: u32, generation: u32, c: Completion) {
        let more = cqueue::more(c.flags);
        let bid = cqueue::buffer_select(c.flags);
        if let (Some(bid), Some(ring)) = (bid, self.bufring.as_mut()) {
            ring.taken(bid);
        }
        if !self.live_slot(slot, generation) {
            // Cannot happen while ops_in_flight guards the slot; count it and give the buffer back.
            bump(&self.stats.stale_completions);
            if let (Some(bid), Some(ring)) = (bid, self.bufring.as_mut()) {
                ring.recycle(bid);
            }
            return;
        }
        if !more {
            let s = &mut self.slab[slot as usize];
            s.io.recv_armed = false;
            s.io.ops_in_flight -= 1;
        }
        if c.result > 0 {
            let len = c.result as usize;
            let bid = bid.expect("a multishot recv completion with data names its buffer");
            self.stats.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
            let ring = self.bufring.as_mut().expect("buffer ring present");
            let cx = Context {
                ring: self.config.index,
                draining: self.draining,
                now: self.now,
            };
            let s = &mut self.slab[slot as usize];
            if !s.io.closed {
                let data = ring.buffer(bid, len);
                let mut session = s.session(slot);
                self.handler.on_data(&cx, &mut session, data);
            }
            ring.recycle(bid);
            if !more && !self.slab[slot as usize].io.closed {
                self.submit_recv(slot);
            }
            self.after_callback(slot);
            return;
        }
        if c.result == 0 {
            self.peer_eof(slot);
            return;
        }
        let errno = -c.result;
        match errno {
            libc::ENOBUFS => {
                // Every provided buffer is in use; re-arm once this batch has recycled some.
                bump(&self.stats.bufring_exhausted);
                if !more && !self.slab[slot as usize].io.closed {
                    self.rearm_recv.push((slot, generation));
                }
            }
            libc::EINTR | libc::EAGAIN => {
                if !more && !self.slab[slot as usize].io.closed {
                    self.submit_recv(slot);
                }
            }
            libc::ECANCELED => {}
            libc::ECONNRESET
            | libc::ETIMEDOUT
            | libc::EPIPE
            | libc::ENOTCONN
            | libc::EHOSTUNREACH => {
                bump(&self.stats.peer_resets);
                self.begin_close(slot, CloseReason::PeerGone);
            }
            libc::EBADF | libc::EFAULT | libc::ENOTSOCK => {
                panic!(
                    "recv on our own session socket failed: {}",
                    errno_name(errno)
                )
            }
            _ => {
                tracing::warn!(ring = self.config.index, error = %errno_name(errno), "recv failed; closing the session");
                self.begin_close(slot, CloseReason::PeerGone);
            }
        }
        self.maybe_finish_close(slot);
    }

    /// The poll-then-recv fallback: readiness first, then a non-blocking recv into the ring's
    /// scratch buffer, so an idle session still holds no buffer.
    fn on_poll(&mut self, slot: u32, generation: u32, c: Completion) {
        if !self.live_slot(slot, generation) {
            bump(&self.stats.stale_completions);
            return;
        }
        {
            let s = &mut self.slab[slot as usize];
            s.io.recv_armed = false;
            s.io.ops_in_flight -= 1;
            if s.io.closed {
                self.maybe_finish_close(slot);
                return;
            }
        }
        if c.result < 0 {
            let errno = -c.result;
            match errno {
                libc::EINTR | libc::EAGAIN => self.submit_recv(slot),
                libc::ECANCELED => self.maybe_finish_close(slot),
                libc::EBADF | libc::EFAULT => {
                    panic!(
                        "poll on our own session socket failed: {}",
                        errno_name(errno)
                    )
                }
                _ => self.begin_close(slot, CloseReason::PeerGone),
            }
            return;
        }
        // Read what is there, a bounded number of times so one session cannot starve the ring.
        for _ in 0..4 {
            let fd = self.slab[slot as usize].io.fd;
            // SAFETY: reads into the ring's own scratch buffer, which lives as long as the ring;
            // MSG_DONTWAIT keeps the ring from blocking.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.scratch.as_mut_ptr().cast(),
                    self.scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                let len = n as usize;
                self.stats.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
                let cx = self.context();
                let s = &mut self.slab[slot as usize];
                let mut session = s.session(slot);
                self.handler
                    .on_data(&cx, &mut session, &self.scratch[..len]);
                if len < self.scratch.len() || self.slab[slot as usize].io.closing != Closing::No {
                    break;
                }
                continue;
            }
            if n == 0 {
                self.peer_eof(slot);
                return;
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            match errno {
                libc::EAGAIN | libc::EINTR => break,
                libc::EBADF | libc::EFAULT => {
                    panic!(
                        "recv on our own session socket failed: {}",
                        errno_name(errno)
                    )
                }
                _ => {
                    bump(&self.stats.peer_resets);
                    self.begin_close(slot, CloseReason::PeerGone);
                    return;
                }
            }
        }
        if self.slab[slot as usize].io.closing == Closing::No {
            self.submit_recv(slot);
        }
        self.after_callback(slot);
    }

    fn peer_eof(&mut self, slot: u32) {
        let cx = self.context();
        let s = &mut self.slab[slot as usize];
        if !s.io.closed {
            let mut session = s.session(slot);
            self.handler.on_eof(&cx, &mut session);
            self.slab[slot as usize].io.close_reason = CloseReason::PeerGone;
        }
        self.after_callback(slot);
        self.maybe_finish_close(slot);
    }

    fn rearm_receives(&mut self) {
        let pending = std::mem::take(&mut self.rearm_recv);
        for (slot, generation) in pending {
            if self.live_slot(slot, generation) {
                let io = &self.slab[slot as usize].io;
                if !io.closed && !io.recv_armed {
                    self.submit_recv(slot);
                }
            }
        }
    }

    // ---- send ----

    fn on_send(&mut self, slot: u32, generation: u32, c: Completion) {
        if !self.live_slot(slot, generation) {
            bump(&self.stats.stale_completions);
            return;
        }
        {
            let s = &mut self.slab[slot as usize];
            s.io.send_inflight = false;
            s.io.ops_in_flight -= 1;
        }
        if c.result < 0 {
            let errno = -c.result;
            match errno {
                libc::EINTR | libc::EAGAIN => {
                    if !self.slab[slot as usize].io.closed {
                        self.submit_send(slot);
                    }
                }
                libc::EPIPE | libc::ECONNRESET | libc::ETIMEDOUT | libc::ENOTCONN => {
                    bump(&self.stats.peer_resets);
                    self.begin_close(slot, CloseReason::PeerGone);
                }
                libc::ECANCELED => {}
                libc::EBADF | libc::EFAULT | libc::ENOTSOCK => {
                    panic!(
                        "send on our own session socket failed: {}",
                        errno_name(errno)
                    )
                }
                _ => {
                    tracing::warn!(ring = self.config.index, error = %errno_name(errno), "send failed; closing the session");
                    self.begin_close(slot, CloseReason::PeerGone);
                }
            }
            self.maybe_finish_close(slot);
            return;
        }
        self.stats
            .bytes_out
            .fetch_add(c.result as u64, Ordering::Relaxed);
        let s = &mut self.slab[slot as usize];
        s.io.sent += c.result as usize;
        if s.io.sent == s.io.sending.len() {
            s.io.sending.clear();
            s.io.sent = 0;
            // A burst may have grown the buffer; an idle session should not keep it.
            if s.io.sending.capacity() > 64 * 1024 {
                s.io.sending = Vec::new();
            }
        }
        if !s.io.closed && (s.io.sent < s.io.sending.len() || !s.io.out.is_empty()) {
            self.submit_send(slot);
        }
        self.after_callback(slot);
        self.maybe_finish_close(slot);
    }

    fn flush_output(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let Some(s) = self.slab.get_mut(slot as usize) else {
                continue;
            };
            s.io.in_dirty_list = false;
            if !s.io.closed && !s.io.send_inflight && !s.io.out.is_empty() {
                self.submit_send(slot);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    // ---- results from other threads ----

    fn on_wake(&mut self, c: Completion) {
        if c.result < 0 && -c.result != libc::EAGAIN && -c.result != libc::EINTR {
            panic!("read of our own eventfd failed: {}", errno_name(-c.result));
        }
        self.submit_wake_read();
    }

    fn apply_messages(&mut self) {
        let mut applied = 0u64;
        while let Some(envelope) = self.mailbox.pop() {
            applied += 1;
            match envelope {
                Envelope::Session(id, msg) => {
                    if !self.live_slot(id.slot, id.generation) {
                        continue; // the session left while its job ran
                    }
                    let cx = self.context();
                    let s = &mut self.slab[id.slot as usize];
                    if s.io.closed {
                        continue;
                    }
                    let mut session = s.session(id.slot);
                    self.handler.on_message(&cx, &mut session, msg);
                    self.after_callback(id.slot);
                }
                Envelope::Ring(msg) => {
                    let cx = self.context();
                    let mut sessions = Sessions {
                        slab: &mut self.slab,
                    };
                    self.handler.on_ring_message(&cx, msg, &mut sessions);
                    let slots: Vec<u32> = self.slab.iter().map(|(k, _)| k as u32).collect();
                    for slot in slots {
                        self.after_callback(slot);
                    }
                }
            }
        }
        if applied > 0 {
            self.stats.messages.fetch_add(applied, Ordering::Relaxed);
        }
    }

    // ---- timers ----

    fn fire_timers(&mut self) {
        if let Some(until) = self.accept_paused_until {
            if self.now >= until {
                self.accept_paused_until = None;
                self.submit_accept();
            }
        }
        let now_tick = self.tick_of(self.now);
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now_tick, &mut due);
        for entry in due.drain(..) {
            if !self.live_slot(entry.slot, entry.generation) {
                continue;
            }
            let cx = self.context();
            let s = &mut self.slab[entry.slot as usize];
            if !s.io.due(entry, self.now, now_tick, &mut self.wheel) {
                continue;
            }
            let mut session = s.session(entry.slot);
            self.handler.on_deadline(&cx, &mut session);
            self.after_callback(entry.slot);
        }
        self.due = due;
    }

    // ---- after every callback ----

    /// Applies what a callback asked for: close, deadline changes, queued output.
    fn after_callback(&mut self, slot: u32) {
        let Some(s) = self.slab.get_mut(slot as usize) else {
            return;
        };
        let started = self.started;
        let tick_ns = self.config.tick.as_nanos().max(1);
        let tick =
            |at: Instant| (at.saturating_duration_since(started).as_nanos() / tick_ns) as u64;
        match s.io.settle(slot, &mut self.wheel, tick) {
            Settled::Idle => {}
            Settled::Flush => self.dirty.push(slot),
            Settled::Close(reason) => self.begin_close(slot, reason),
        }
    }

    // ---- close ----

    /// Ends the session: hands its state to the handler, stops its I/O (shutdown wakes any
    /// pending recv or send), and frees the slot once no op remains in flight.
    fn begin_close(&mut self, slot: u32, reason: CloseReason) {
        let cx = self.context();
        let s = &mut self.slab[slot as usize];
        if s.io.closed {
            return;
        }
        s.io.closed = true;
        let id = SessionId {
            slot,
            generation: s.io.generation,
        };
        let conn = s.conn.take().expect("open session has state");
        // SAFETY: shutdown on a socket we own; it makes in-flight recv/send ops on it complete.
        unsafe { libc::shutdown(s.io.fd, libc::SHUT_RDWR) };
        self.handler.on_close(&cx, id, conn, reason);
        self.maybe_finish_close(slot);
    }

    fn maybe_finish_close(&mut self, slot: u32) {
        let Some(s) = self.slab.get(slot as usize) else {
            return;
        };
        if !s.io.closed || s.io.ops_in_flight > 0 {
            return;
        }
        let s = self.slab.remove(slot as usize);
        self.generations[slot as usize] =
            (self.generations[slot as usize] + 1) & token::GENERATION_MASK;
        self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        self.config.global_sessions.fetch_sub(1, Ordering::AcqRel);
        bump(&self.stats.closed);
        self.submit_close(s.io.fd);
    }

    // ---- drain ----

    fn start_drain(&mut self) {
        self.draining = true;
        self.drain_deadline = Some(self.now + self.config.drain_timeout);
        if self.accept_armed {
            self.cancel(token::ACCEPT);
        }
        // SAFETY: shutting down our own listening socket stops new connections from queueing on
        // it; the descriptor itself stays open (in `config`) until the ring is dropped.
        unsafe { libc::shutdown(self.config.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let slots: Vec<u32> = self.slab.iter().map(|(k, _)| k as u32).collect();
        for slot in slots {
            let cx = self.context();
            let s = &mut self.slab[slot as usize];
            if s.io.closed {
                continue;
            }
            let mut session = s.session(slot);
            self.handler.on_drain(&cx, &mut session);
            self.after_callback(slot);
        }
    }

    fn cut_all(&mut self) {
        let slots: Vec<u32> = self.slab.iter().map(|(k, _)| k as u32).collect();
        for slot in slots {
            self.begin_close(slot, CloseReason::Shutdown);
        }
        // Give in-flight ops a moment to complete; after that the loop stops waiting for them.
        self.cut = true;
        self.drain_deadline = Some(self.now + Duration::from_secs(1));
    }
}
