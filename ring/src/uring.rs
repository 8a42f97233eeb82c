//! The io_uring backend of the event loop: every socket operation is a submission, every result a
//! completion whose `user_data` names the op, the session's generation and its slot.
//!
//! Reading order: [`Ring::new`] (setup flags, buffer ring or its fallback), then the
//! [`Backend`] impl (what the shared loop asks of io_uring), then `dispatch`, one `match` on the
//! op kind that sends each completion to `on_accept`, `on_recv`, `on_poll`, `on_send` or
//! `on_wake`. The verbs pair up: `submit_recv` / `on_recv`, `submit_send` / `on_send`,
//! `release` / `maybe_finish_close`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::bufring::BufRing;
use crate::event_loop::{
    add, bump, errno_name, timeout_ms, Backend, Core, Drained, EventLoop, RingConfig,
};
use crate::handler::{Closing, Handler};
use crate::mailbox::Receiver;
use crate::probe::{AcceptPath, Features, RecvPath};
use crate::token::{self, Op};

/// One completion, copied out of the completion queue so handlers run after the queue is
/// released (no recursion through submit/complete).
#[derive(Clone, Copy)]
struct Completion {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// How long a wait under load may collect completions before it returns on the first one
/// (`min_wait_usec`, 6.12+): tens of microseconds, well under a request's round trip.
const MIN_WAIT: Duration = Duration::from_micros(20);
/// The most completions such a wait asks for.
const MIN_WAIT_MAX_WANT: usize = 64;
/// The largest send a wait counts (see `wait`): a reply this small finds the socket full only
/// when the peer has stopped reading.
const COUNTED_SEND_MAX: usize = 4096;
/// The busy tick's period: the longest a wait that counted a send which then found the socket
/// full may sleep past a completion it should have returned on (see `wait`). Each tick wakes a
/// sleeping ring; at 1 ms those wakes cost more CPU per request than the enters the count saved
/// (bench/results/2026-12-03/busy-tick.txt), at 10 ms they are lost in the noise.
const TICK: Duration = Duration::from_millis(10);

/// A session on a direct descriptor keeps `-1 - entry` in `SlotIo::fd`, its entry in the ring's
/// table of registered files; a plain descriptor is never negative.
fn direct_entry(fd: RawFd) -> Option<u32> {
    (fd < 0).then(|| (-1 - fd) as u32)
}

/// Builds `$build` with `$target` naming a session's socket: its entry in the ring's table of
/// registered files when it has one (a direct descriptor), else its plain descriptor. The opcode
/// builders take either type, not one of both.
macro_rules! with_target {
    ($io:expr, |$target:ident| $build:expr) => {
        if let Some(entry) = direct_entry($io.fd) {
            let $target = types::Fixed(entry);
            $build
        } else {
            let $target = types::Fd($io.fd);
            $build
        }
    };
}

/// What the io_uring backend keeps besides the shared core.
pub(crate) struct Uring {
    // Field order is drop order: the io_uring fd closes first, so the kernel has let go of the
    // buffer ring and the eventfd word before they are freed.
    uring: IoUring,
    bufring: Option<BufRing>,
    wake_word: Box<u64>,
    timeout_spec: Box<types::Timespec>,
    backlog: VecDeque<squeue::Entry>,
    batch: Vec<Completion>,
    rearm_recv: Vec<(u32, u32)>,
    /// Per listener: an accept is armed on it.
    accept_armed: Vec<bool>,
    /// Kernels without EXT_ARG wait with a timeout op: when the armed one expires, if any.
    timeout_armed: Option<Instant>,
    /// A remove of the armed timeout op is in flight (a nearer deadline came up).
    timeout_removing: bool,
    /// Completions the last reap took: past one, the load is on and a wait may collect more
    /// before returning (min-wait).
    last_reaped: usize,
    /// Counted sends in the submission queue since the last enter: each one's completion is
    /// posted while that enter submits it when the socket has room, so the enter's wait counts
    /// them on top of what it waits for (see `wait`).
    sends_queued: usize,
    /// The live busy tick's generation, while one runs (see `wait`).
    tick: Option<u32>,
    tick_generation: u32,
    /// The tick's period; never written after start, so a tick's entry may be submitted late.
    tick_spec: Box<types::Timespec>,
    /// Sends counted since the last tick: none in a whole tick and the tick is removed, so an
    /// idle ring sleeps.
    counted_since_tick: usize,
    /// Submitted (or backlogged) operations whose final completion has not been reaped: the
    /// kernel may still write into the buffer ring and `wake_word` or read slot buffers.
    outstanding: usize,
    /// Fault injection: [`crate::Faults::final_recv_completions`].
    single_shot_recv: bool,
    /// The free entries of the ring's sparse table of registered files, lowest last (empty when
    /// sessions keep plain descriptors). Not the slab's slot numbers: the slab hands out the
    /// slot freed last, and sessions must fill the table before any takes a plain descriptor,
    /// since every accept needs one for a moment.
    direct_free: Vec<u32>,
}

/// A proactor ring. Create it on the thread that will run it (`SINGLE_ISSUER`).
pub struct Ring<H: Handler>(EventLoop<H, Uring>);

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
            let mut ring = BufRing::new(
                config.recv_buffers,
                config.recv_buffer_size,
                0,
                config.features.incremental_buffers,
            )?;
            let registered = if config.faults.bufring_register_einval {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                // SAFETY: the ring keeps the BufRing in `Uring::bufring` until every recv has
                // completed (`quiesce` on the way out) or leaks it (`Drop for Uring`).
                unsafe { ring.register(&uring.submitter()) }
            };
            match registered {
                Ok(()) => {
                    if config.features.incremental_buffers && !ring.incremental() {
                        tracing::warn!(
                            ring = config.index,
                            "the kernel refused incremental consumption of receive buffers; each receive takes a whole buffer"
                        );
                        config.features.incremental_buffers = false;
                    }
                    config
                        .stats
                        .incremental_buffers
                        .store(u64::from(ring.incremental()), Ordering::Relaxed);
                    Some(ring)
                }
                Err(e) => {
                    tracing::warn!(
                        ring = config.index,
                        error = %e,
                        "the kernel refused the provided-buffer ring; falling back to poll-then-recv"
                    );
                    config.features.recv = RecvPath::PollThenRecv;
                    config.features.direct = false;
                    config.features.incremental_buffers = false;
                    config.stats.recv_fallback.store(1, Ordering::Relaxed);
                    None
                }
            }
        } else {
            None
        };
        let direct_table = if config.features.direct {
            direct_table_size(&uring, &config)
        } else {
            0
        };
        config.features.direct = direct_table > 0;
        let direct_free = (0..direct_table).rev().collect();
        let io = Uring {
            uring,
            bufring,
            wake_word: Box::new(0),
            timeout_spec: Box::new(types::Timespec::new()),
            last_reaped: 0,
            sends_queued: 0,
            tick: None,
            tick_generation: 0,
            tick_spec: Box::new(types::Timespec::from(TICK)),
            counted_since_tick: 0,
            backlog: VecDeque::new(),
            batch: Vec::with_capacity(config.sq_entries as usize * 8),
            rearm_recv: Vec::new(),
            accept_armed: vec![false; config.listeners.len()],
            timeout_armed: None,
            timeout_removing: false,
            single_shot_recv: config.faults.final_recv_completions,
            outstanding: 0,
            direct_free,
        };
        let mut lp = EventLoop {
            io,
            core: Core::new(config, handler, mailbox),
        };
        lp.submit_accepts();
        lp.submit_wake_read();
        Ok(Ring(lp))
    }

    /// The paths this ring actually took (after any run-time fallback).
    pub fn features(&self) -> &Features {
        &self.0.core.config.features
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

/// Registers the ring's sparse file table, as large as the kernel allows one process's table
/// to be (RLIMIT_NOFILE) and no larger than the server's session cap; 0 (plain descriptors)
/// when the kernel refuses.
fn direct_table_size(uring: &IoUring, config: &RingConfig) -> u32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    // The kernel's own ceiling on a table (IORING_MAX_FIXED_FILES).
    let size = (limit.rlim_cur.min(config.max_sessions as u64).min(1 << 20) as u32).max(1);
    match uring.submitter().register_files_sparse(size) {
        Ok(()) => size,
        Err(e) => {
            tracing::warn!(ring = config.index, size, error = %e,
                "the kernel refused a table of registered files; sessions keep plain descriptors");
            0
        }
    }
}

impl<H: Handler> Backend<H> for Uring {
    fn watch(lp: &mut EventLoop<H, Self>, slot: u32) -> io::Result<()> {
        lp.install_direct(slot);
        lp.submit_recv(slot);
        Ok(())
    }

    fn send(lp: &mut EventLoop<H, Self>, slot: u32) {
        lp.submit_send(slot);
    }

    /// Shutdown makes any recv or send still in flight on the socket complete; the slot is freed
    /// when the last of them has.
    ///
    /// A direct descriptor has no number for `shutdown(2)`, and an async shutdown could still be
    /// waiting in the kernel when the entry is reused, so its ops are cancelled by `user_data`
    /// instead; the socket closes when its entry is cleared (`remove_direct`).
    fn release(lp: &mut EventLoop<H, Self>, slot: u32) {
        let io = &lp.core.slab[slot as usize].io;
        let (fd, generation, recv_armed) = (io.fd, io.generation, io.recv_armed);
        if fd < 0 {
            let send_inflight = io.send_inflight;
            if recv_armed {
                lp.cancel(token::encode(Op::Recv, generation, slot));
            }
            if send_inflight {
                lp.cancel(token::encode(Op::Send, generation, slot));
            }
            lp.maybe_finish_close(slot);
            return;
        }
        // SAFETY: shutdown on a socket we own.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        if recv_armed && lp.core.config.features.recv == RecvPath::MultishotBufRing {
            // Shutdown does not end a multishot recv while the peer keeps sending: the kernel
            // goes on delivering its bytes, and the slot would stay taken for as long as the
            // peer cares to send. Its cancelled completion finishes the close.
            lp.cancel(token::encode(Op::Recv, generation, slot));
        }
        lp.maybe_finish_close(slot);
    }

    fn discard(lp: &mut EventLoop<H, Self>, fd: RawFd) {
        lp.submit_close(fd);
    }

    /// Pausing cancels the armed receive (multishot or poll); its completion then leaves it
    /// unarmed. Resuming arms one unless a cancelled one has yet to complete, which re-arms
    /// itself once it does (`recv_failed`, `on_poll`).
    fn input_changed(lp: &mut EventLoop<H, Self>, slot: u32) {
        let io = &lp.core.slab[slot as usize].io;
        if io.input_paused {
            if io.recv_armed {
                let op = match (lp.core.config.features.recv, lp.io.bufring.is_some()) {
                    (RecvPath::MultishotBufRing, true) => Op::Recv,
                    _ => Op::Poll,
                };
                lp.cancel(token::encode(op, io.generation, slot));
            }
        } else if !io.recv_armed && !io.peer_eof {
            lp.submit_recv(slot);
        }
    }

    fn stop_accepting(lp: &mut EventLoop<H, Self>) {
        for index in 0..lp.io.accept_armed.len() {
            if lp.io.accept_armed[index] {
                lp.cancel(token::accept(index as u32));
            }
        }
    }

    fn resume_accepting(lp: &mut EventLoop<H, Self>) {
        lp.submit_accepts();
    }

    fn prepare(lp: &mut EventLoop<H, Self>) {
        lp.rearm_receives();
        if let Some(ring) = lp.io.bufring.as_mut() {
            ring.commit();
        }
        lp.flush_backlog();
    }

    fn may_sleep(lp: &EventLoop<H, Self>) -> bool {
        lp.io.backlog.is_empty() && lp.io.rearm_recv.is_empty()
    }

    fn wait(lp: &mut EventLoop<H, Self>, block: bool, timeout: Option<Duration>) -> io::Result<()> {
        let features = &lp.core.config.features;
        let (ext_arg, poll_wait, min_wait) =
            (features.ext_arg, features.poll_wait, features.min_wait);
        // Completions already posted (without DEFER_TASKRUN the kernel posts them at any time)
        // are reaped at once: no waiting for more.
        let block = block && lp.io.uring.completion().is_empty();
        let to_submit = lp.io.uring.submission().len();
        if !block && to_submit == 0 && !lp.io.uring.submission().cq_overflow() {
            // Nothing to submit and nothing to wait for: an enter would do nothing.
            return Ok(());
        }
        if let (true, Some(timeout), false, false) = (block, timeout, ext_arg, poll_wait) {
            lp.arm_timeout(timeout);
        }
        let stats = &lp.core.stats;
        add(&stats.submissions, to_submit as u64);
        bump(&stats.enters);
        // Under load (the last reap took several completions) a wait collects up to twice as
        // many for at most MIN_WAIT, then returns on the first: fewer enters per request, at the
        // price of at most MIN_WAIT of added latency while the server is busy. An idle or
        // lightly loaded ring waits as before.
        //
        // The replies this enter submits complete during it, and a wait for one completion would
        // return on them at once, to reap nothing but sends and enter again to wait: up to half
        // the enters of a busy ring. So the wait counts them on top and sleeps until something
        // else comes. A counted send that finds the socket full completes only once the peer
        // reads, and the wait would then sleep through one completion it should have returned
        // on (another session's request, say); so sends are counted only while the busy tick
        // runs, whose completions end such a wait within TICK, and only small sends of sessions
        // whose last send went out whole, which find the socket full only when the peer has
        // stopped reading. A timeout on each wait would bound it too, but arming a timer for
        // every sleep cost more CPU than the enters it saved (README).
        let sends = std::mem::take(&mut lp.io.sends_queued);
        let (want, min_wait_for) = match (block, min_wait, lp.io.last_reaped) {
            (false, ..) => (0, None),
            (true, true, reaped) if reaped > 1 => {
                ((reaped * 2).min(MIN_WAIT_MAX_WANT) + sends, Some(MIN_WAIT))
            }
            (true, ..) => (1 + sends, None),
        };
        let result = if poll_wait {
            lp.submit_then_poll(block, timeout)
        } else if block && ext_arg && (timeout.is_some() || min_wait_for.is_some()) {
            let args = types::SubmitArgs::new();
            let args = match min_wait_for {
                Some(wait) => args.min_wait_usec(wait.as_micros() as u32),
                None => args,
            };
            match timeout {
                Some(timeout) => {
                    // The kernel reads the timespec during this call only.
                    *lp.io.timeout_spec = types::Timespec::from(timeout);
                    let args = args.timespec(&lp.io.timeout_spec);
                    lp.io.uring.submitter().submit_with_args(want, &args)
                }
                None => lp.io.uring.submitter().submit_with_args(want, &args),
            }
        } else {
            lp.io.uring.submitter().submit_and_wait(want)
        };
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

    fn dispatch(lp: &mut EventLoop<H, Self>) {
        lp.reap();
        let batch = std::mem::take(&mut lp.io.batch);
        for c in &batch {
            lp.dispatch_completion(*c);
        }
        lp.io.batch = batch;
        lp.io.batch.clear();
    }

    /// Runs on every way out of `run`, a panic in a callback included: nothing the kernel may
    /// still write or read (receive buffers, `wake_word`, slot send buffers) is freed before the
    /// kernel is done with it, and no session's descriptor is left open.
    fn finish(lp: &mut EventLoop<H, Self>) {
        let sessions: Vec<(u32, RawFd, u32, bool, bool)> = lp
            .core
            .slab
            .iter()
            .map(|(slot, s)| {
                let io = &s.io;
                (
                    slot as u32,
                    io.fd,
                    io.generation,
                    io.recv_armed,
                    io.send_inflight,
                )
            })
            .collect();
        for (slot, fd, generation, recv_armed, send_inflight) in sessions {
            if fd >= 0 {
                // SAFETY: shutdown on a session socket we own; it makes its recv, poll and send
                // complete.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                continue;
            }
            if recv_armed {
                lp.cancel(token::encode(Op::Recv, generation, slot));
            }
            if send_inflight {
                lp.cancel(token::encode(Op::Send, generation, slot));
            }
        }
        lp.io.quiesce();
        if lp.io.outstanding > 0 {
            // The kernel still holds some of them: their send buffers must outlive it.
            std::mem::forget(std::mem::take(&mut lp.core.slab));
        } else {
            lp.core.abandon_sessions();
        }
    }
}

impl Uring {
    /// Cancels what this backend armed for itself and waits, a bounded time, until the kernel
    /// has completed every operation; the callers shut down session sockets first.
    fn quiesce(&mut self) {
        self.outstanding -= self.backlog.len();
        self.backlog.clear();
        let accepts = (0..self.accept_armed.len() as u32).map(token::accept);
        let tick = self
            .tick
            .map(|generation| token::encode(Op::Tick, generation, 0));
        for user_data in accepts.chain([token::WAKE, token::TIMEOUT]).chain(tick) {
            let entry = opcode::AsyncCancel::new(user_data)
                .build()
                .user_data(token::encode(Op::Cancel, 0, 0));
            // SAFETY: a cancel names no memory.
            if unsafe { self.uring.submission().push(&entry) }.is_ok() {
                self.outstanding += 1;
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.outstanding > 0 && std::time::Instant::now() < deadline {
            // With DEFER_TASKRUN completions are posted only by an enter with GETEVENTS, which
            // the taskrun flag makes a plain submit do.
            let _ = self.uring.submit();
            for cqe in self.uring.completion() {
                if !cqueue::more(cqe.flags()) {
                    self.outstanding -= 1;
                }
                if let (Some(bid), Some(ring)) =
                    (cqueue::buffer_select(cqe.flags()), self.bufring.as_mut())
                {
                    let len = usize::try_from(cqe.result()).unwrap_or(0);
                    ring.received(bid, len, cqueue::buffer_more(cqe.flags()));
                }
            }
            if self.outstanding > 0 {
                let mut pollfd = libc::pollfd {
                    fd: self.uring.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll reads and writes one pollfd we own for the duration of the call.
                unsafe { libc::poll(&mut pollfd, 1, 10) };
            }
        }
    }
}

impl Drop for Uring {
    /// A ring dropped without running (or after `finish`) may still have its accept and wake-up
    /// read in flight; closing the io_uring fd does not wait for them. If the kernel will not
    /// let go in time, the memory it may write is leaked rather than freed.
    fn drop(&mut self) {
        if self.outstanding > 0 {
            self.quiesce();
        }
        if self.outstanding > 0 {
            tracing::warn!(
                operations = self.outstanding,
                "io_uring operations still in flight as the ring goes away; leaking their buffers"
            );
            std::mem::forget(self.bufring.take());
            std::mem::forget(std::mem::replace(&mut self.wake_word, Box::new(0)));
            std::mem::forget(std::mem::replace(
                &mut self.timeout_spec,
                Box::new(types::Timespec::new()),
            ));
        }
    }
}

impl<H: Handler> EventLoop<H, Uring> {
    // ---- submission plumbing ----

    /// Pushes one entry; a full submission queue is flushed to the kernel first, and if even that
    /// leaves no room the entry waits in a backlog that the loop drains. Never dropped.
    ///
    /// # Safety
    /// Every buffer and pointer named by `entry` must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        let io = &mut self.io;
        if !io.backlog.is_empty() {
            io.backlog.push_back(entry);
            bump(&self.core.stats.sq_backlogged);
            return;
        }
        io.outstanding += 1;
        // SAFETY: the caller guarantees the entry's buffers outlive its completion.
        if unsafe { io.uring.submission().push(&entry) }.is_ok() {
            return;
        }
        let _ = io.uring.submit();
        // The counted sends it took have their completions posted now (or will complete
        // later): the wait must not count them.
        io.sends_queued = 0;
        bump(&self.core.stats.enters);
        // SAFETY: as above.
        if unsafe { io.uring.submission().push(&entry) }.is_err() {
            bump(&self.core.stats.sq_backlogged);
            io.backlog.push_back(entry);
        }
    }

    fn flush_backlog(&mut self) {
        let io = &mut self.io;
        while let Some(entry) = io.backlog.pop_front() {
            // SAFETY: entries in the backlog were pushed through `push`, whose callers guaranteed
            // their buffers live until completion; nothing has completed them yet.
            if unsafe { io.uring.submission().push(&entry) }.is_err() {
                io.backlog.push_front(entry);
                break;
            }
        }
    }

    fn submit_accepts(&mut self) {
        for index in 0..self.core.config.listeners.len() {
            self.submit_accept(index);
        }
    }

    fn submit_accept(&mut self, index: usize) {
        if self.io.accept_armed[index] || self.core.draining {
            return;
        }
        let fd = types::Fd(self.core.config.listeners[index].fd.as_raw_fd());
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let entry = match self.core.config.features.accept {
            AcceptPath::Multishot => opcode::AcceptMulti::new(fd).flags(flags).build(),
            AcceptPath::SingleShot => {
                opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                    .flags(flags)
                    .build()
            }
        }
        .user_data(token::accept(index as u32));
        // SAFETY: accept names no memory of ours (null address pointers); the listener fd stays
        // open until the accept is cancelled and its completion reaped (see `stop_accepting`).
        unsafe { self.push(entry) };
        self.io.accept_armed[index] = true;
    }

    fn submit_wake_read(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.core.mailbox.eventfd()),
            (&mut *self.io.wake_word as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(token::WAKE);
        // SAFETY: `wake_word` is a Box owned by the ring, freed only after the io_uring fd closes
        // (field order), so the 8 bytes stay valid until this read completes.
        unsafe { self.push(entry) };
    }

    fn submit_recv(&mut self, slot: u32) {
        let group = self.io.bufring.as_ref().map(BufRing::group);
        let recv_path = self.core.config.features.recv;
        let s = &mut self.core.slab[slot as usize];
        debug_assert!(!s.io.recv_armed && !s.io.closed);
        let entry = match (recv_path, group) {
            (RecvPath::MultishotBufRing, Some(group))
                if self.io.single_shot_recv || s.io.recv_singly =>
            {
                let len = self.io.bufring.as_ref().map_or(0, BufRing::buf_size) as u32;
                with_target!(s.io, |fd| opcode::Recv::new(fd, std::ptr::null_mut(), len)
                    .buf_group(group)
                    .build())
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(token::encode(Op::Recv, s.io.generation, slot))
            }
            (RecvPath::MultishotBufRing, Some(group)) => {
                with_target!(s.io, |fd| opcode::RecvMulti::new(fd, group).build())
                    .user_data(token::encode(Op::Recv, s.io.generation, slot))
            }
            _ => with_target!(s.io, |fd| opcode::PollAdd::new(fd, libc::POLLIN as u32)
                .build())
            .user_data(token::encode(Op::Poll, s.io.generation, slot)),
        };
        s.io.recv_armed = true;
        s.io.ops_in_flight += 1;
        // SAFETY: a multishot recv names only the buffer group, whose memory lives as long as the
        // ring; a poll names no memory at all.
        unsafe { self.push(entry) };
    }

    fn submit_send(&mut self, slot: u32) {
        let s = &mut self.core.slab[slot as usize];
        debug_assert!(!s.io.send_inflight);
        if s.io.sent == s.io.sending.len() {
            s.io.sending.clear();
            s.io.sent = 0;
            s.io.seal();
            std::mem::swap(&mut s.io.out, &mut s.io.sending);
        }
        if s.io.sending.is_empty() {
            return;
        }
        // Counted by the next wait (see `wait`).
        let count = self.core.config.features.busy_tick
            && !s.io.send_parks
            && s.io.sending.len() - s.io.sent <= COUNTED_SEND_MAX;
        if count {
            self.start_tick();
        }
        let s = &mut self.core.slab[slot as usize];
        let remaining = &s.io.sending[s.io.sent..];
        let entry = with_target!(s.io, |fd| opcode::Send::new(
            fd,
            remaining.as_ptr(),
            remaining.len() as u32
        )
        .flags(libc::MSG_NOSIGNAL)
        .build())
        .user_data(token::encode(Op::Send, s.io.generation, slot));
        s.io.send_inflight = true;
        s.io.ops_in_flight += 1;
        // SAFETY: the bytes live in this slot's `sending` Vec, which is not touched while
        // `send_inflight` is set, and the slot is not freed while ops_in_flight > 0; moving the
        // Slot inside the slab does not move the Vec's heap buffer.
        unsafe { self.push(entry) };
        // One left in the backlog is not in the queue the next enter submits (and with an
        // empty backlog, the tick pushed before it is in the queue too).
        if count && self.io.backlog.is_empty() {
            self.io.sends_queued += 1;
            self.io.counted_since_tick += 1;
        }
    }

    /// Starts the busy tick unless it runs.
    fn start_tick(&mut self) {
        if self.io.tick.is_some() {
            return;
        }
        let generation = self.io.tick_generation.wrapping_add(1) & token::GENERATION_MASK;
        self.io.tick_generation = generation;
        let entry = opcode::Timeout::new(&*self.io.tick_spec as *const types::Timespec)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(token::encode(Op::Tick, generation, 0));
        // SAFETY: `tick_spec` is a Box owned by the ring that outlives the io_uring fd and is
        // never written after start; the kernel reads it while submitting the entry.
        unsafe { self.push(entry) };
        self.io.tick = Some(generation);
        self.io.counted_since_tick = 0;
    }

    /// A tick of the busy tick: removed after a whole tick without a counted send.
    fn on_tick(&mut self, generation: u32, c: Completion) {
        if self.io.tick != Some(generation) {
            // A removed tick's last completions.
            return;
        }
        if !cqueue::more(c.flags) {
            self.io.tick = None;
            return;
        }
        if self.io.counted_since_tick == 0 {
            let entry = opcode::TimeoutRemove::new(token::encode(Op::Tick, generation, 0))
                .build()
                .user_data(token::encode(Op::Cancel, 0, 0));
            // SAFETY: a timeout remove names no memory.
            unsafe { self.push(entry) };
            self.io.tick = None;
        }
        self.io.counted_since_tick = 0;
    }

    fn submit_close(&mut self, fd: RawFd) {
        let entry = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(token::encode(Op::Close, 0, 0));
        // SAFETY: close names no memory; the fd is ours and no other op on it remains in flight.
        unsafe { self.push(entry) };
    }

    fn cancel(&mut self, user_data: u64) {
        let entry = opcode::AsyncCancel::new(user_data)
            .build()
            .user_data(token::encode(Op::Cancel, 0, 0));
        // SAFETY: a cancel names no memory.
        unsafe { self.push(entry) };
    }

    // ---- waiting and reaping ----

    /// Kernels without EXT_ARG: arms a timeout op that ends the wait after `timeout`. One is
    /// armed at a time, since its timespec must not change before the kernel has read it; a
    /// nearer deadline removes the armed op, and the next turn arms the new one.
    fn arm_timeout(&mut self, timeout: Duration) {
        let at = self.core.now + timeout;
        match self.io.timeout_armed {
            None => {
                *self.io.timeout_spec = types::Timespec::from(timeout);
                let entry = opcode::Timeout::new(&*self.io.timeout_spec as *const types::Timespec)
                    .build()
                    .user_data(token::TIMEOUT);
                // SAFETY: `timeout_spec` is a Box owned by the ring that outlives the io_uring
                // fd, and it is not written again until this op's completion is reaped.
                unsafe { self.push(entry) };
                self.io.timeout_armed = Some(at);
            }
            Some(armed) if armed > at + self.core.config.tick && !self.io.timeout_removing => {
                let entry = opcode::TimeoutRemove::new(token::TIMEOUT)
                    .build()
                    .user_data(token::encode(Op::Cancel, 0, 0));
                // SAFETY: a timeout remove names no memory.
                unsafe { self.push(entry) };
                self.io.timeout_removing = true;
            }
            Some(_) => {}
        }
    }

    /// The `enter-wait` fallback: submit without waiting, then block in `poll(2)` on the ring
    /// fd, which is readable once a completion is posted.
    fn submit_then_poll(&mut self, block: bool, timeout: Option<Duration>) -> io::Result<usize> {
        let submitted = self.io.uring.submitter().submit()?;
        if !block || !self.io.uring.completion().is_empty() {
            return Ok(submitted);
        }
        let mut pollfd = libc::pollfd {
            fd: self.io.uring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd we own for the duration of the call.
        if unsafe { libc::poll(&mut pollfd, 1, timeout_ms(timeout)) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(submitted)
    }

    fn reap(&mut self) {
        let io = &mut self.io;
        let stats = &self.core.stats;
        let mut cq = io.uring.completion();
        let overflow = cq.overflow();
        for cqe in &mut cq {
            if !cqueue::more(cqe.flags()) {
                io.outstanding -= 1;
            }
            io.batch.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        drop(cq);
        io.last_reaped = io.batch.len();
        if overflow > 0 {
            stats.cq_overflow.store(overflow as u64, Ordering::Relaxed);
        }
        if io.uring.submission().cq_overflow() {
            bump(&stats.cq_overflow);
        }
        add(&stats.completions, io.batch.len() as u64);
    }

    fn dispatch_completion(&mut self, c: Completion) {
        let Some((op, generation, slot)) = token::decode(c.user_data) else {
            panic!(
                "completion with a user_data we never submitted: {:#x}",
                c.user_data
            );
        };
        match op {
            Op::Accept => self.on_accept(slot as usize, c),
            Op::Recv => self.on_recv(slot, generation, c),
            Op::Poll => self.on_poll(slot, generation, c),
            Op::Send => self.on_send(slot, generation, c),
            Op::Wake => self.on_wake(c),
            Op::Timeout => {
                self.io.timeout_armed = None;
                self.io.timeout_removing = false;
            }
            Op::Tick => self.on_tick(generation, c),
            Op::Close | Op::Cancel => {}
        }
    }

    // ---- accept ----

    fn on_accept(&mut self, index: usize, c: Completion) {
        let more =
            self.core.config.features.accept == AcceptPath::Multishot && cqueue::more(c.flags);
        if !more {
            self.io.accept_armed[index] = false;
        }
        if c.result < 0 {
            let errno = -c.result;
            if errno == libc::ECANCELED {
                return;
            }
            if self.core.accept_failed(errno) {
                if more {
                    self.cancel(token::accept(index as u32));
                }
                return;
            }
            if !more && self.core.accept_paused_until.is_none() {
                self.submit_accept(index);
            }
            return;
        }
        if !more && self.core.accept_paused_until.is_none() {
            self.submit_accept(index);
        }
        self.admit(c.result, index);
    }

    // ---- receive ----

    fn on_recv(&mut self, slot: u32, generation: u32, c: Completion) {
        let more = cqueue::more(c.flags);
        // Where the bytes lie in which buffer, and whether that buffer is ours to give back once
        // they are read (with incremental consumption the kernel may keep filling it).
        let buffer = match (cqueue::buffer_select(c.flags), self.io.bufring.as_mut()) {
            (Some(bid), Some(ring)) => {
                let len = usize::try_from(c.result).unwrap_or(0);
                let (start, ours) = ring.received(bid, len, cqueue::buffer_more(c.flags));
                Some((bid, start, ours))
            }
            _ => None,
        };
        let give_back = |ring: Option<&mut BufRing>| {
            if let (Some((bid, _, true)), Some(ring)) = (buffer, ring) {
                ring.recycle(bid);
            }
        };
        if !self.core.holds(slot, generation) {
            // Cannot happen while ops_in_flight guards the slot; count it and give the buffer back.
            bump(&self.core.stats.stale_completions);
            give_back(self.io.bufring.as_mut());
            return;
        }
        if !more {
            let s = &mut self.core.slab[slot as usize];
            s.io.recv_armed = false;
            s.io.ops_in_flight -= 1;
        }
        if c.result > 0 {
            let (bid, start, _) =
                buffer.expect("a multishot recv completion with data names its buffer");
            let ring = self.io.bufring.as_mut().expect("buffer ring present");
            self.core
                .deliver(slot, ring.data(bid, start, c.result as usize));
            give_back(Some(ring));
            if !more && self.may_receive(slot) {
                self.submit_recv(slot);
            }
            self.after_callback(slot);
        } else {
            // No bytes: a buffer it names (none is expected) goes straight back.
            give_back(self.io.bufring.as_mut());
            if c.result == 0 {
                self.core.deliver_eof(slot);
                self.after_callback(slot);
            } else {
                self.recv_failed(slot, generation, more, -c.result);
            }
        }
        // Every path that lowered ops_in_flight ends here: a final data completion (a multishot
        // recv ends with one when the completion queue was full) can land on a slot that is
        // already closing, and its close must finish now, as no other completion will come.
        self.maybe_finish_close(slot);
    }

    /// Whether an open session's ended receive should be armed again: not once it is closed,
    /// nor while its handler pauses its input (resuming arms it then).
    fn may_receive(&self, slot: u32) -> bool {
        let io = &self.core.slab[slot as usize].io;
        !io.closed && !io.input_paused
    }

    fn recv_failed(&mut self, slot: u32, generation: u32, more: bool, errno: i32) {
        let receive = !more && self.may_receive(slot);
        match errno {
            libc::ENOBUFS => {
                // Every provided buffer is in use; re-arm once this batch has recycled some.
                bump(&self.core.stats.bufring_exhausted);
                if receive {
                    self.io.rearm_recv.push((slot, generation));
                }
            }
            libc::EINTR | libc::EAGAIN => {
                if receive {
                    self.submit_recv(slot);
                }
            }
            // Cancelled by a pause, and resumed before the cancel completed.
            libc::ECANCELED if receive => self.submit_recv(slot),
            libc::ECANCELED => {}
            errno => self.io_failed(slot, errno, "recv"),
        }
    }

    /// The poll-then-recv fallback: readiness first, then non-blocking reads into the ring's
    /// scratch buffer, so an idle session still holds no buffer.
    fn on_poll(&mut self, slot: u32, generation: u32, c: Completion) {
        if !self.core.holds(slot, generation) {
            bump(&self.core.stats.stale_completions);
            return;
        }
        let s = &mut self.core.slab[slot as usize];
        s.io.recv_armed = false;
        s.io.ops_in_flight -= 1;
        if s.io.closed {
            self.maybe_finish_close(slot);
            return;
        }
        if c.result < 0 {
            match -c.result {
                libc::EINTR | libc::EAGAIN | libc::ECANCELED if self.may_receive(slot) => {
                    self.submit_recv(slot)
                }
                libc::EINTR | libc::EAGAIN | libc::ECANCELED => {}
                errno => self.io_failed(slot, errno, "poll"),
            }
            return;
        }
        match self.drain_socket(slot, false) {
            Drained::Eof => return self.peer_eof(slot),
            Drained::Closed => return,
            Drained::Open => {}
        }
        let io = &self.core.slab[slot as usize].io;
        if io.closing == Closing::No && !io.input_paused {
            self.submit_recv(slot);
        }
        self.after_callback(slot);
    }

    fn peer_eof(&mut self, slot: u32) {
        self.core.deliver_eof(slot);
        self.after_callback(slot);
        self.maybe_finish_close(slot);
    }

    fn rearm_receives(&mut self) {
        let pending = std::mem::take(&mut self.io.rearm_recv);
        for &(slot, generation) in &pending {
            if self.core.is_open(slot, generation)
                && !self.core.slab[slot as usize].io.recv_armed
                && self.may_receive(slot)
            {
                self.submit_recv(slot);
            }
        }
        self.io.rearm_recv = pending;
        self.io.rearm_recv.clear();
    }

    // ---- send ----

    fn on_send(&mut self, slot: u32, generation: u32, c: Completion) {
        if !self.core.holds(slot, generation) {
            bump(&self.core.stats.stale_completions);
            return;
        }
        let s = &mut self.core.slab[slot as usize];
        s.io.send_inflight = false;
        s.io.ops_in_flight -= 1;
        // Not sent whole: the socket was full, and this session's sends are not counted by the
        // ring's wait until one goes out whole.
        let parks = c.result >= 0 && (c.result as usize) < s.io.sending.len() - s.io.sent;
        if parks && !s.io.send_parks {
            bump(&self.core.stats.sends_parked);
        }
        s.io.send_parks = parks;
        if c.result < 0 {
            match -c.result {
                libc::EINTR | libc::EAGAIN => {
                    if !s.io.closed {
                        self.submit_send(slot);
                    }
                }
                libc::ECANCELED => {}
                errno => self.io_failed(slot, errno, "send"),
            }
            self.maybe_finish_close(slot);
            return;
        }
        add(&self.core.stats.bytes_out, c.result as u64);
        let s = &mut self.core.slab[slot as usize];
        s.io.sent += c.result as usize;
        if s.io.sent == s.io.sending.len() {
            s.io.sending.clear();
            s.io.sent = 0;
        }
        if !s.io.closed && (s.io.sent < s.io.sending.len() || s.io.has_output()) {
            self.submit_send(slot);
        } else if s.io.release_idle_buffers() {
            bump(&self.core.stats.buffers_released);
        }
        self.after_callback(slot);
        self.maybe_finish_close(slot);
    }

    // ---- results from other threads ----

    fn on_wake(&mut self, c: Completion) {
        if c.result < 0 && -c.result != libc::EAGAIN && -c.result != libc::EINTR {
            panic!("read of our own eventfd failed: {}", errno_name(-c.result));
        }
        self.submit_wake_read();
    }

    // ---- close ----

    fn maybe_finish_close(&mut self, slot: u32) {
        let Some(s) = self.core.slab.get(slot as usize) else {
            return;
        };
        if !s.io.closed || s.io.ops_in_flight > 0 {
            return;
        }
        let fd = self.core.free_slot(slot);
        match direct_entry(fd) {
            Some(entry) => self.remove_direct(entry),
            None => self.submit_close(fd),
        }
    }

    // ---- direct descriptors ----

    /// Moves a new session's socket into a free entry of the ring's table of registered files
    /// and closes its plain descriptor: the session then holds no entry of the process's
    /// descriptor table. Done after `open_session`, which needed the descriptor for the peer
    /// address and TCP_NODELAY. When the table is full, or the kernel refuses, the session keeps
    /// its plain descriptor.
    fn install_direct(&mut self, slot: u32) {
        let Some(entry) = self.io.direct_free.pop() else {
            return;
        };
        let io = &mut self.core.slab[slot as usize].io;
        match self
            .io
            .uring
            .submitter()
            .register_files_update(entry, &[io.fd])
        {
            Ok(_) => {
                // SAFETY: the table holds its own reference to the socket; this closes only our
                // descriptor, which nothing else names.
                unsafe { libc::close(io.fd) };
                io.fd = -1 - entry as RawFd;
                let direct = &self.core.stats.direct_sessions;
                direct.store(direct.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            Err(e) => {
                self.io.direct_free.push(entry);
                if let Some(suppressed) = self.core.direct_log.allow(self.core.now) {
                    tracing::warn!(ring = self.core.config.index, entry, error = %e, suppressed,
                        "cannot register a session's socket; it keeps a plain descriptor");
                }
            }
        }
    }

    /// Clears a closed session's entry, which closes its socket. At once, not by an async op: the
    /// entry may be given to the next connection in this same turn.
    fn remove_direct(&mut self, entry: u32) {
        if let Err(e) = self
            .io
            .uring
            .submitter()
            .register_files_update(entry, &[-1])
        {
            // Only a bug of ours (a bad index) gets here; the entry is replaced at its next use.
            tracing::error!(ring = self.core.config.index, entry, error = %e,
                "cannot clear a session's registered file");
        }
        self.io.direct_free.push(entry);
        let direct = &self.core.stats.direct_sessions;
        direct.store(
            direct.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }
}
