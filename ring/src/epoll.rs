//! The epoll backend: the same sessions, handler and mailbox as the io_uring ring, driven by
//! readiness instead of completions. Taken when io_uring cannot be set up (Docker's default
//! seccomp profile, `kernel.io_uring_disabled`, old kernels) or forced with `--backend epoll`.
//!
//! Differences from the ring, on purpose: reads go into one loop-wide scratch buffer (an idle
//! session still holds no receive buffer), sends are direct non-blocking `send(2)` calls with
//! `EPOLLOUT` armed only while a session's output does not fit the socket, and a close is
//! immediate because no operation is ever in flight in the kernel.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::handler::{
    CloseReason, Closing, Context, Handler, LogLimiter, Sessions, Settled, Slot, SlotIo,
};
use crate::mailbox::{Envelope, Receiver};
use crate::ring::{RingConfig, RingStats};
use crate::timer::TimerWheel;
use crate::token::{self, Op};
use crate::SessionId;

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// One epoll event loop; the epoll twin of [`crate::Ring`].
pub struct EpollLoop<H: Handler> {
    epoll: OwnedFd,
    slab: Slab<Slot<H::Conn>>,
    generations: Vec<u32>,
    handler: H,
    mailbox: Receiver<H::Msg>,
    config: RingConfig,
    stats: Arc<RingStats>,
    wheel: TimerWheel,
    started: Instant,
    now: Instant,
    events: Vec<libc::epoll_event>,
    dirty: Vec<u32>,
    scratch: Vec<u8>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    draining: bool,
    drain_deadline: Option<Instant>,
    reject_log: LogLimiter,
    cut: bool,
}

impl<H: Handler> EpollLoop<H> {
    /// Creates the epoll instance and registers the listener and the mailbox's eventfd.
    pub fn new(config: RingConfig, handler: H, mailbox: Receiver<H::Msg>) -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory preconditions; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by no one else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let stats = config.stats.clone();
        let now = Instant::now();
        let mut this = EpollLoop {
            epoll,
            slab: Slab::with_capacity(1024),
            generations: Vec::new(),
            handler,
            mailbox,
            stats,
            wheel: TimerWheel::new(1024, 0),
            started: now,
            now,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
            dirty: Vec::new(),
            scratch: vec![0; config.recv_buffer_size.max(4096)],
            accepting: false,
            accept_paused_until: None,
            draining: false,
            drain_deadline: None,
            reject_log: LogLimiter::new(),
            cut: false,
            config,
        };
        this.ctl(
            libc::EPOLL_CTL_ADD,
            this.mailbox.eventfd(),
            libc::EPOLLIN as u32,
            token::WAKE,
        )?;
        this.set_accepting(true);
        Ok(this)
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: data };
        // SAFETY: `event` is a live local for the duration of the call; fds are ours.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_accepting(&mut self, on: bool) {
        if on == self.accepting {
            return;
        }
        let fd = self.config.listener.as_raw_fd();
        let result = if on {
            self.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, token::ACCEPT)
        } else {
            self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
        };
        match result {
            Ok(()) => self.accepting = on,
            Err(e) => panic!("epoll_ctl on our own listener failed: {e}"),
        }
    }

    fn context(&self) -> Context {
        Context {
            ring: self.config.index,
            draining: self.draining,
            now: self.now,
        }
    }

    fn live_slot(&self, slot: u32, generation: u32) -> bool {
        self.slab
            .get(slot as usize)
            .is_some_and(|s| s.io.generation == generation && !s.io.closed)
    }

    /// Runs until a drain completes. Returns the handler.
    pub fn run(mut self) -> io::Result<H> {
        loop {
            self.now = Instant::now();
            self.apply_messages();
            self.fire_timers();
            self.flush_output();
            if self.mailbox.draining() && !self.draining {
                self.start_drain();
            }
            if self.draining {
                if self.slab.is_empty() {
                    break;
                }
                if self.drain_deadline.is_some_and(|d| self.now >= d) {
                    if self.cut {
                        break;
                    }
                    self.cut_all();
                    continue;
                }
            }
            let n = self.wait()?;
            self.now = Instant::now();
            for i in 0..n {
                let event = self.events[i];
                self.dispatch(event.u64, event.events);
            }
        }
        Ok(self.handler)
    }

    fn wait(&mut self) -> io::Result<usize> {
        let timed = !self.wheel.is_empty() || self.accept_paused_until.is_some() || self.draining;
        let mut timeout_ms = if timed {
            self.config.tick.as_millis().max(1) as i32
        } else {
            -1
        };
        let sleeping = self.mailbox.prepare_sleep();
        if !sleeping || !self.dirty.is_empty() || (self.mailbox.draining() && !self.draining) {
            timeout_ms = 0;
        }
        bump(&self.stats.enters);
        // SAFETY: `events` is a live buffer of `len` entries that the kernel fills.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if sleeping {
            self.mailbox.woke();
        }
        if n < 0 {
            return match errno() {
                libc::EINTR => Ok(0),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        self.stats
            .completions
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n as usize)
    }

    fn dispatch(&mut self, data: u64, events: u32) {
        let Some((op, generation, slot)) = token::decode(data) else {
            panic!("epoll event with a token we never registered: {data:#x}");
        };
        match op {
            Op::Accept => self.on_acceptable(),
            Op::Wake => self.on_wake(),
            Op::Recv => self.on_ready(slot, generation, events),
            other => panic!("epoll event for op {other:?}, which epoll never registers"),
        }
    }

    fn on_wake(&mut self) {
        let mut word = 0u64;
        // SAFETY: reads 8 bytes into a live local from our own non-blocking eventfd.
        unsafe { libc::read(self.mailbox.eventfd(), (&mut word as *mut u64).cast(), 8) };
    }

    fn on_acceptable(&mut self) {
        // Bounded, so a connection flood cannot starve established sessions.
        for _ in 0..64 {
            if self.draining {
                return;
            }
            // SAFETY: null address pointers are allowed; the listener is ours.
            let fd = unsafe {
                libc::accept4(
                    self.config.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                match errno() {
                    libc::EAGAIN | libc::EINTR | libc::ECONNABORTED | libc::EPROTO => return,
                    e @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        bump(&self.stats.accept_errors);
                        tracing::warn!(ring = self.config.index, error = %io::Error::from_raw_os_error(e),
                            "accept failed; pausing accepts for 100 ms");
                        self.accept_paused_until = Some(self.now + Duration::from_millis(100));
                        self.set_accepting(false);
                        return;
                    }
                    e @ (libc::EBADF | libc::EFAULT | libc::ENOTSOCK) => {
                        panic!(
                            "accept on our own listener failed: {}",
                            io::Error::from_raw_os_error(e)
                        )
                    }
                    e => {
                        bump(&self.stats.accept_errors);
                        tracing::warn!(ring = self.config.index, error = %io::Error::from_raw_os_error(e), "accept failed");
                        return;
                    }
                }
            }
            self.on_accept(fd);
        }
    }

    fn on_accept(&mut self, fd: RawFd) {
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
            // SAFETY: a best-effort non-blocking send of our own bytes, then close, on a socket
            // we just accepted and own.
            unsafe {
                libc::send(
                    fd,
                    self.config.reject_message.as_ptr().cast(),
                    self.config.reject_message.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                );
                libc::close(fd);
            }
            return;
        }
        bump(&self.stats.accepted);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        // SAFETY: fd was just returned by accept4 and is owned by this loop until closed.
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
        let conn = self
            .handler
            .on_open(&cx, SessionId { slot, generation }, peer);
        let slot_ref = entry.insert(Slot {
            io: SlotIo::new(fd, generation, peer),
            conn: Some(conn),
        });
        let mut session = slot_ref.session(slot);
        self.handler.on_start(&cx, &mut session);
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if let Err(e) = self.ctl(
            libc::EPOLL_CTL_ADD,
            fd,
            events,
            token::encode(Op::Recv, generation, slot),
        ) {
            tracing::warn!(error = %e, "cannot watch a new session; closing it");
            self.begin_close(slot, CloseReason::PeerGone);
            return;
        }
        self.after_callback(slot);
    }

    fn on_ready(&mut self, slot: u32, generation: u32, events: u32) {
        if !self.live_slot(slot, generation) {
            bump(&self.stats.stale_completions);
            return;
        }
        if events & libc::EPOLLOUT as u32 != 0 {
            self.slab[slot as usize].io.send_inflight = false;
            self.try_send(slot);
            if !self.live_slot(slot, generation) {
                return;
            }
        }
        if events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
        {
            self.read(slot, generation);
        }
        if self.live_slot(slot, generation) {
            self.after_callback(slot);
        }
    }

    fn read(&mut self, slot: u32, generation: u32) {
        for _ in 0..4 {
            if !self.live_slot(slot, generation)
                || self.slab[slot as usize].io.closing != Closing::No
            {
                return;
            }
            let fd = self.slab[slot as usize].io.fd;
            // SAFETY: reads into the loop's own scratch buffer; MSG_DONTWAIT never blocks.
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
                if len < self.scratch.len() {
                    return;
                }
                continue;
            }
            if n == 0 {
                let cx = self.context();
                let s = &mut self.slab[slot as usize];
                let mut session = s.session(slot);
                self.handler.on_eof(&cx, &mut session);
                s.io.close_reason = CloseReason::PeerGone;
                // Level-triggered EOF would fire forever: stop watching for input.
                s.io.peer_eof = true;
                self.rewatch(slot);
                return;
            }
            match errno() {
                libc::EAGAIN | libc::EINTR => return,
                e @ (libc::EBADF | libc::EFAULT | libc::ENOTSOCK) => {
                    panic!(
                        "recv on our own session socket failed: {}",
                        io::Error::from_raw_os_error(e)
                    )
                }
                _ => {
                    bump(&self.stats.peer_resets);
                    self.begin_close(slot, CloseReason::PeerGone);
                    return;
                }
            }
        }
    }

    /// Sends as much queued output as the socket takes; arms EPOLLOUT for the rest.
    fn try_send(&mut self, slot: u32) {
        let s = &mut self.slab[slot as usize];
        if s.io.closed || s.io.send_inflight {
            return;
        }
        loop {
            if s.io.sent == s.io.sending.len() {
                s.io.sending.clear();
                s.io.sent = 0;
                std::mem::swap(&mut s.io.out, &mut s.io.sending);
                if s.io.sending.is_empty() {
                    if s.io.sending.capacity() > 64 * 1024 {
                        s.io.sending = Vec::new();
                    }
                    return;
                }
            }
            let remaining = &s.io.sending[s.io.sent..];
            // SAFETY: sends from a live slice we own on a socket we own; never blocks.
            let n = unsafe {
                libc::send(
                    s.io.fd,
                    remaining.as_ptr().cast(),
                    remaining.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                s.io.sent += n as usize;
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    s.io.send_inflight = true;
                    self.rewatch(slot);
                    return;
                }
                e @ (libc::EBADF | libc::EFAULT | libc::ENOTSOCK) => {
                    panic!(
                        "send on our own session socket failed: {}",
                        io::Error::from_raw_os_error(e)
                    )
                }
                _ => {
                    bump(&self.stats.peer_resets);
                    self.begin_close(slot, CloseReason::PeerGone);
                    return;
                }
            }
        }
    }

    fn flush_output(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let Some(s) = self.slab.get_mut(slot as usize) else {
                continue;
            };
            s.io.in_dirty_list = false;
            let was_waiting = s.io.send_inflight;
            self.try_send(slot);
            if let Some(s) = self.slab.get_mut(slot as usize) {
                if !was_waiting && !s.io.send_inflight && !s.io.closed {
                    self.after_callback(slot);
                }
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn after_callback(&mut self, slot: u32) {
        let Some(s) = self.slab.get_mut(slot as usize) else {
            return;
        };
        let started = self.started;
        let tick_ns = self.config.tick.as_nanos().max(1);
        let tick =
            |at: Instant| (at.saturating_duration_since(started).as_nanos() / tick_ns) as u64;
        let was_waiting_for_writable = s.io.send_inflight;
        match s.io.settle(slot, &mut self.wheel, tick) {
            Settled::Idle => {}
            Settled::Flush => self.dirty.push(slot),
            Settled::Close(reason) => self.begin_close(slot, reason),
        }
        // Output drained after a wait for EPOLLOUT: stop watching for writability.
        if let Some(s) = self.slab.get(slot as usize) {
            if was_waiting_for_writable && !s.io.send_inflight && !s.io.closed {
                self.rewatch(slot);
            }
        }
    }

    /// Sets the events a session is watched for from its state: input until EOF, writability
    /// only while output waits for room in the socket.
    fn rewatch(&self, slot: u32) {
        let io = &self.slab[slot as usize].io;
        let mut events = 0u32;
        if !io.peer_eof {
            events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if io.send_inflight {
            events |= libc::EPOLLOUT as u32;
        }
        let token = token::encode(Op::Recv, io.generation, slot);
        if let Err(e) = self.ctl(libc::EPOLL_CTL_MOD, io.fd, events, token) {
            panic!("epoll_ctl on our own session socket failed: {e}");
        }
    }

    fn apply_messages(&mut self) {
        while let Some(envelope) = self.mailbox.pop() {
            bump(&self.stats.messages);
            let (id, msg) = match envelope {
                Envelope::Session(id, msg) => (id, msg),
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
                    continue;
                }
            };
            if !self.live_slot(id.slot, id.generation) {
                continue;
            }
            let cx = self.context();
            let s = &mut self.slab[id.slot as usize];
            let mut session = s.session(id.slot);
            self.handler.on_message(&cx, &mut session, msg);
            self.after_callback(id.slot);
        }
    }

    fn fire_timers(&mut self) {
        if let Some(until) = self.accept_paused_until {
            if self.now >= until {
                self.accept_paused_until = None;
                if !self.draining {
                    self.set_accepting(true);
                }
            }
        }
        let tick_ns = self.config.tick.as_nanos().max(1);
        let now_tick =
            (self.now.saturating_duration_since(self.started).as_nanos() / tick_ns) as u64;
        let mut due = Vec::new();
        self.wheel.advance(now_tick, &mut due);
        for entry in due {
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
    }

    /// Ends a session at once: nothing is in flight in the kernel on this backend.
    fn begin_close(&mut self, slot: u32, reason: CloseReason) {
        let cx = self.context();
        let Some(s) = self.slab.get_mut(slot as usize) else {
            return;
        };
        if s.io.closed {
            return;
        }
        s.io.closed = true;
        let id = SessionId {
            slot,
            generation: s.io.generation,
        };
        let fd = s.io.fd;
        let conn = s.conn.take().expect("open session has state");
        self.handler.on_close(&cx, id, conn, reason);
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
        // SAFETY: our own socket, closed exactly once: the slot is removed right after.
        unsafe { libc::close(fd) };
        self.slab.remove(slot as usize);
        self.generations[slot as usize] =
            (self.generations[slot as usize] + 1) & token::GENERATION_MASK;
        self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        self.config.global_sessions.fetch_sub(1, Ordering::AcqRel);
        bump(&self.stats.closed);
    }

    fn start_drain(&mut self) {
        self.draining = true;
        self.drain_deadline = Some(self.now + self.config.drain_timeout);
        self.set_accepting(false);
        // SAFETY: shutting down our own listening socket stops new connections queueing on it.
        unsafe { libc::shutdown(self.config.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let slots: Vec<u32> = self.slab.iter().map(|(k, _)| k as u32).collect();
        for slot in slots {
            let cx = self.context();
            let s = &mut self.slab[slot as usize];
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
        self.cut = true;
    }
}
