//! The epoll backend of the event loop: the same sessions, handler and mailbox as the io_uring
//! ring, driven by readiness instead of completions. Taken when io_uring cannot be set up
//! (Docker's default seccomp profile, `kernel.io_uring_disabled`, old kernels) or forced with
//! `--backend epoll`.
//!
//! Differences from io_uring, on purpose: reads go into the ring's scratch buffer (an idle session
//! still holds no receive buffer), sends are direct non-blocking `send(2)` calls with `EPOLLOUT`
//! armed only while a session's output does not fit the socket, and a close is immediate because
//! no operation is ever in flight in the kernel.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use std::time::Duration;

use crate::event_loop::{add, bump, timeout_ms, Backend, Core, Drained, EventLoop, RingConfig};
use crate::handler::Handler;
use crate::mailbox::Receiver;
use crate::token::{self, Op};

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// What the epoll backend keeps besides the shared core.
pub(crate) struct Epoll {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
    /// Events the last wait returned.
    ready: usize,
    accepting: bool,
}

/// One epoll event loop; the epoll twin of [`crate::Ring`].
pub struct EpollLoop<H: Handler>(EventLoop<H, Epoll>);

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
        let io = Epoll {
            epoll,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
            ready: 0,
            accepting: false,
        };
        let mut lp = EventLoop {
            io,
            core: Core::new(config, handler, mailbox),
        };
        lp.io.ctl(
            libc::EPOLL_CTL_ADD,
            lp.core.mailbox.eventfd(),
            libc::EPOLLIN as u32,
            token::WAKE,
        )?;
        lp.set_accepting(true);
        Ok(EpollLoop(lp))
    }

    /// Access to the handler (tests, final stats).
    pub fn handler(&self) -> &H {
        &self.0.core.handler
    }

    /// Runs until a drain completes. Returns the handler.
    pub fn run(self) -> io::Result<H> {
        self.0.run()
    }
}

impl Epoll {
    fn ctl(&self, op: i32, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: data };
        // SAFETY: `event` is a live local for the duration of the call; fds are ours.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl<H: Handler> Backend<H> for Epoll {
    fn watch(lp: &mut EventLoop<H, Self>, slot: u32) -> io::Result<()> {
        let io = &lp.core.slab[slot as usize].io;
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        let token = token::encode(Op::Recv, io.generation, slot);
        lp.io.ctl(libc::EPOLL_CTL_ADD, io.fd, events, token)
    }

    /// Sends at once; a send that completed lets the session settle (a close after flush, say)
    /// in this same turn, as a send completion does on io_uring.
    fn send(lp: &mut EventLoop<H, Self>, slot: u32) {
        lp.try_send(slot);
        if let Some(s) = lp.core.slab.get(slot as usize) {
            if !s.io.send_inflight && !s.io.closed {
                lp.after_callback(slot);
            }
        }
    }

    /// Nothing is in flight in the kernel, so the socket closes and the slot frees at once.
    fn release(lp: &mut EventLoop<H, Self>, slot: u32) {
        let fd = lp.core.slab[slot as usize].io.fd;
        let _ = lp.io.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
        lp.core.free_slot(slot);
        // SAFETY: our own socket, closed exactly once: its slot is gone.
        unsafe { libc::close(fd) };
    }

    fn discard(_lp: &mut EventLoop<H, Self>, fd: RawFd) {
        // SAFETY: a socket we just accepted and own; nothing else refers to it.
        unsafe { libc::close(fd) };
    }

    fn input_changed(lp: &mut EventLoop<H, Self>, slot: u32) {
        lp.rewatch(slot);
    }

    fn stop_accepting(lp: &mut EventLoop<H, Self>) {
        lp.set_accepting(false);
    }

    fn resume_accepting(lp: &mut EventLoop<H, Self>) {
        lp.set_accepting(true);
    }

    fn may_sleep(_lp: &EventLoop<H, Self>) -> bool {
        true
    }

    fn wait(lp: &mut EventLoop<H, Self>, block: bool, timeout: Option<Duration>) -> io::Result<()> {
        let timeout_ms = if block { timeout_ms(timeout) } else { 0 };
        bump(&lp.core.stats.enters);
        let io = &mut lp.io;
        // SAFETY: `events` is a live buffer of `len` entries that the kernel fills.
        let n = unsafe {
            libc::epoll_wait(
                io.epoll.as_raw_fd(),
                io.events.as_mut_ptr(),
                io.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            io.ready = 0;
            return match errno() {
                libc::EINTR => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        io.ready = n as usize;
        add(&lp.core.stats.completions, n as u64);
        Ok(())
    }

    /// Nothing is in flight in the kernel; only descriptors of sessions left by a loop that ended
    /// without a drain need closing.
    fn finish(lp: &mut EventLoop<H, Self>) {
        lp.core.abandon_sessions();
    }

    fn dispatch(lp: &mut EventLoop<H, Self>) {
        for i in 0..std::mem::take(&mut lp.io.ready) {
            let libc::epoll_event { events, u64: data } = lp.io.events[i];
            let Some((op, generation, slot)) = token::decode(data) else {
                panic!("epoll event with a token we never registered: {data:#x}");
            };
            match op {
                Op::Accept => lp.on_acceptable(slot as usize),
                Op::Wake => lp.on_wake(),
                Op::Recv => lp.on_ready(slot, generation, events),
                other => panic!("epoll event for op {other:?}, which epoll never registers"),
            }
        }
    }
}

impl<H: Handler> EventLoop<H, Epoll> {
    fn set_accepting(&mut self, on: bool) {
        if on == self.io.accepting {
            return;
        }
        for (index, listener) in self.core.config.listeners.iter().enumerate() {
            let fd = listener.fd.as_raw_fd();
            let result = if on {
                let token = token::accept(index as u32);
                self.io
                    .ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, token)
            } else {
                self.io.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
            };
            if let Err(e) = result {
                panic!("epoll_ctl on our own listener failed: {e}");
            }
        }
        self.io.accepting = on;
    }

    fn on_wake(&mut self) {
        let mut word = 0u64;
        // SAFETY: reads 8 bytes into a live local from our own non-blocking eventfd.
        unsafe {
            libc::read(
                self.core.mailbox.eventfd(),
                (&mut word as *mut u64).cast(),
                8,
            )
        };
    }

    fn on_acceptable(&mut self, index: usize) {
        // Bounded, so a connection flood cannot starve established sessions.
        for _ in 0..64 {
            if self.core.draining {
                return;
            }
            // SAFETY: null address pointers are allowed; the listener is ours.
            let fd = unsafe {
                libc::accept4(
                    self.core.config.listeners[index].fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                if self.core.accept_failed(errno()) {
                    self.set_accepting(false);
                }
                return;
            }
            self.admit(fd, index);
        }
    }

    fn on_ready(&mut self, slot: u32, generation: u32, events: u32) {
        if !self.core.is_open(slot, generation) {
            bump(&self.core.stats.stale_completions);
            return;
        }
        if events & libc::EPOLLOUT as u32 != 0 {
            self.core.slab[slot as usize].io.send_inflight = false;
            self.try_send(slot);
            if !self.core.is_open(slot, generation) {
                return;
            }
            if !self.core.slab[slot as usize].io.send_inflight {
                // Everything went out: stop watching for writability, which is level-triggered
                // and would wake the loop on every turn.
                self.rewatch(slot);
            }
        }
        // A hang-up or error is reported even while input is paused (it cannot be unwatched),
        // and level-triggered: read to the end or the error, or it would fire on every turn.
        let hung_up = events & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        if events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
            && matches!(self.drain_socket(slot, hung_up), Drained::Eof)
        {
            self.core.deliver_eof(slot);
            // Level-triggered EOF would fire forever: stop watching for input.
            self.rewatch(slot);
        }
        if self.core.is_open(slot, generation) {
            self.after_callback(slot);
        }
    }

    /// Sends as much queued output as the socket takes; arms EPOLLOUT for the rest.
    fn try_send(&mut self, slot: u32) {
        let s = &mut self.core.slab[slot as usize];
        if s.io.closed || s.io.send_inflight {
            return;
        }
        loop {
            if s.io.sent == s.io.sending.len() {
                s.io.sending.clear();
                s.io.sent = 0;
                s.io.seal();
                std::mem::swap(&mut s.io.out, &mut s.io.sending);
                if s.io.sending.is_empty() {
                    if s.io.release_idle_buffers() {
                        bump(&self.core.stats.buffers_released);
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
                add(&self.core.stats.bytes_out, n as u64);
                continue;
            }
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    s.io.send_inflight = true;
                    self.rewatch(slot);
                    return;
                }
                e => {
                    self.io_failed(slot, e, "send");
                    return;
                }
            }
        }
    }

    /// Sets the events a session is watched for from its state: input until EOF unless paused,
    /// writability only while output waits for room in the socket.
    fn rewatch(&self, slot: u32) {
        let io = &self.core.slab[slot as usize].io;
        let mut events = 0u32;
        if !io.peer_eof && !io.input_paused {
            events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if io.send_inflight {
            events |= libc::EPOLLOUT as u32;
        }
        let token = token::encode(Op::Recv, io.generation, slot);
        if let Err(e) = self.io.ctl(libc::EPOLL_CTL_MOD, io.fd, events, token) {
            panic!("epoll_ctl on our own session socket failed: {e}");
        }
    }
}
