//! The load loop: one thread drives many non-blocking connections through one epoll instance.
//!
//! The loop reads top to bottom: send what is due → wait (epoll, woken by the sockets or by a
//! timerfd armed for the next due request) → for each ready socket, read every reply it has,
//! record them, and send what that freed up. Requests are copied from pre-encoded templates
//! into each connection's output buffer; replies are counted by [`ReplyScanner`] straight out of
//! one shared read buffer. Nothing is allocated per request.
//!
//! Closed loop: each connection keeps `pipeline` requests in flight, sending one for each reply.
//! Open loop: each connection follows its [`OpenLoop`] schedule; a request due while the
//! connection already has `max_inflight` outstanding waits, and everything overdue leaves in one
//! pipelined write as soon as there is room. Either way its latency counts from its intended time.
//!
//! With `--tls` a connection also holds its rustls session (handshake done during set-up):
//! requests go through it on the way out ([`Loop::flush`]), replies on the way in
//! ([`Loop::on_readable`]); a plain connection takes the same paths less one branch.

use crate::record::{Recorder, Timeline};
use crate::resp::{Reply, ReplyScanner};
use crate::schedule::{Arrivals, InFlight, OpenLoop, Schedule, Window};
use crate::session::Session;
use crate::workload::{Mix, Rng};
use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::time::{
    timerfd_create, timerfd_settime, ClockId, Itimerspec, TimerfdClockId, TimerfdFlags,
    TimerfdTimerFlags, Timespec,
};
use rustls::ClientConnection;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Reads take up to this much at once; replies are scanned straight out of it.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// The loop wakes at least this often (to see [`Progress::stop`]).
const HEARTBEAT_NS: u64 = 100_000_000;
/// epoll data of the timer; connections use their index.
const TIMER_TOKEN: u64 = u64::MAX;

/// The clock every time in a run is on: CLOCK_MONOTONIC in nanoseconds, the clock the timerfd
/// uses too, so a due time can be armed as is.
pub fn now_ns() -> u64 {
    let now = rustix::time::clock_gettime(ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// Each connection keeps `pipeline` requests outstanding, as fast as the server answers.
    Closed { pipeline: usize },
    /// `rate` requests/s in total on a fixed schedule, at most `max_inflight` outstanding per
    /// connection.
    Open {
        rate: f64,
        arrivals: Arrivals,
        max_inflight: usize,
    },
}

/// One run's load, shared by its threads.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mix: Mix,
    pub model: Model,
    pub connections: usize,
    /// Start of the run (warm-up included) on [`now_ns`]'s clock.
    pub start_ns: u64,
    pub warmup_ns: u64,
    /// Measured time after warm-up; `None` with `--requests` alone.
    pub duration_ns: Option<u64>,
    /// `--requests`: recorded requests in total.
    pub requests: Option<u64>,
    /// After sending stops, how long to wait for outstanding replies.
    pub drain_ns: u64,
    /// Busy-poll instead of sleeping when the next due request is this close.
    pub spin_ns: u64,
    pub seed: u64,
}

impl Plan {
    /// The end of warm-up: recording starts here.
    pub fn measure_start_ns(&self) -> u64 {
        self.start_ns + self.warmup_ns
    }

    /// The measured window of connection `index`.
    fn window(&self, index: usize) -> Window {
        let warmup_end_ns = self.measure_start_ns();
        Window {
            warmup_end_ns,
            end_ns: self
                .duration_ns
                .map_or(u64::MAX, |duration| warmup_end_ns + duration),
            quota: Window::quota_for(self.requests, self.connections, index),
        }
    }
}

/// Counters the main thread reads for the progress line and the stall check.
#[derive(Debug)]
pub struct Progress {
    /// One slot per load thread, written only by that thread.
    pub threads: Vec<ThreadProgress>,
    /// Set by the main thread to stop sending (the server stopped answering).
    pub stop: AtomicBool,
}

/// One load thread's counters.
#[derive(Debug, Default)]
pub struct ThreadProgress {
    /// Replies received, warm-up included.
    pub replies: AtomicU64,
    pub errors: AtomicU64,
    /// Requests sent and not yet answered.
    pub outstanding: AtomicU64,
}

impl Progress {
    pub fn new(threads: usize) -> Progress {
        Progress {
            threads: (0..threads).map(|_| ThreadProgress::default()).collect(),
            stop: AtomicBool::new(false),
        }
    }

    /// (replies, errors, outstanding) over all threads.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.threads.iter().fold((0, 0, 0), |(r, e, o), t| {
            (
                r + t.replies.load(Ordering::Relaxed),
                e + t.errors.load(Ordering::Relaxed),
                o + t.outstanding.load(Ordering::Relaxed),
            )
        })
    }
}

/// What one thread brings back.
#[derive(Debug)]
pub struct ThreadOutput {
    pub recorder: Recorder,
    /// Recorded requests that never got a reply (connection lost, or drain time ran out).
    pub unanswered: u64,
    /// Connections the server closed or reset during the run.
    pub disconnects: u64,
    /// Replies that arrived with no request outstanding, and malformed replies.
    pub protocol_errors: Vec<String>,
    /// Out-of-band RESP3 pushes received.
    pub pushes: u64,
}

/// One connection of the load.
struct Connection {
    stream: TcpStream,
    /// With `--tls`, its session (boxed: a plain connection stays small).
    tls: Option<Box<ClientConnection>>,
    /// Position among all connections of the run (for its schedule and quota).
    index: usize,
    out: Vec<u8>,
    out_sent: usize,
    inflight: VecDeque<InFlight>,
    scanner: ReplyScanner,
    window: Window,
    /// Open loop pacing; `None` in closed loop.
    pacer: Option<OpenLoop>,
    /// Closed loop: recorded requests sent so far.
    recorded_sent: u64,
    /// Still sending (false once its share is sent, or it died).
    sending: bool,
    alive: bool,
    /// EPOLLOUT is armed because a write would have blocked.
    writable_armed: bool,
    /// Open loop: at `max_inflight`, so it has no entry in the due-time heap.
    blocked: bool,
}

/// Runs one thread's share of the load on `streams` (non-blocking, handshake done) until its
/// requests are sent and answered or the drain time runs out.
pub fn run_thread(
    plan: &Plan,
    streams: Vec<(usize, Session)>,
    thread_index: usize,
    progress: &Progress,
) -> io::Result<ThreadOutput> {
    // Wake-ups for due requests should be on time to the microsecond, not the default 50 us.
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1));
    let mut lp = Loop::new(plan, streams, thread_index, progress)?;
    lp.run()?;
    Ok(ThreadOutput {
        unanswered: lp.unanswered,
        disconnects: lp.disconnects,
        protocol_errors: lp.protocol_errors,
        pushes: lp.connections.iter().map(|c| c.scanner.pushes()).sum(),
        recorder: lp.recorder,
    })
}

struct Loop<'a> {
    plan: &'a Plan,
    progress: &'a ThreadProgress,
    stop: &'a AtomicBool,
    epoll: rustix::fd::OwnedFd,
    timer: rustix::fd::OwnedFd,
    timer_armed_ns: u64,
    connections: Vec<Connection>,
    /// Open loop: (next due time, connection) for every connection that is sending and not
    /// blocked; exactly one entry each.
    due: BinaryHeap<Reverse<(u64, usize)>>,
    read_buffer: Vec<u8>,
    /// TLS records as read from a socket, before rustls decrypts them into `read_buffer`;
    /// empty without TLS.
    tls_buffer: Vec<u8>,
    rng: Rng,
    recorder: Recorder,
    /// Connections still sending.
    sending: usize,
    /// Requests outstanding over all connections.
    outstanding: usize,
    replies: u64,
    unanswered: u64,
    disconnects: u64,
    protocol_errors: Vec<String>,
}

impl<'a> Loop<'a> {
    fn new(
        plan: &'a Plan,
        streams: Vec<(usize, Session)>,
        thread_index: usize,
        progress: &'a Progress,
    ) -> io::Result<Loop<'a>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        epoll::add(
            &epoll,
            &timer,
            epoll::EventData::new_u64(TIMER_TOKEN),
            epoll::EventFlags::IN,
        )?;
        let mut connections = Vec::with_capacity(streams.len());
        let tls = streams.iter().any(|(_, session)| session.tls.is_some());
        for (slot, (index, Session { stream, tls })) in streams.into_iter().enumerate() {
            epoll::add(
                &epoll,
                &stream,
                epoll::EventData::new_u64(slot as u64),
                epoll::EventFlags::IN,
            )?;
            let window = plan.window(index);
            let (pacer, inflight_capacity) = match plan.model {
                Model::Closed { pipeline } => (None, pipeline.min(1024)),
                Model::Open {
                    rate,
                    arrivals,
                    max_inflight,
                } => {
                    let schedule = Schedule::new(
                        arrivals,
                        rate,
                        plan.connections,
                        index,
                        plan.start_ns,
                        plan.seed,
                    );
                    // Room for a few outstanding; it grows (rarely) if the server falls behind.
                    (Some(OpenLoop::new(schedule, window)), max_inflight.min(16))
                }
            };
            connections.push(Connection {
                stream,
                tls,
                index,
                out: Vec::with_capacity(512),
                out_sent: 0,
                inflight: VecDeque::with_capacity(inflight_capacity),
                scanner: ReplyScanner::new(),
                window,
                pacer,
                recorded_sent: 0,
                sending: true,
                alive: true,
                writable_armed: false,
                blocked: false,
            });
        }
        let sending = connections.len();
        Ok(Loop {
            plan,
            progress: &progress.threads[thread_index],
            stop: &progress.stop,
            epoll,
            timer,
            timer_armed_ns: 0,
            due: BinaryHeap::with_capacity(connections.len()),
            connections,
            read_buffer: vec![0; READ_BUFFER_BYTES],
            tls_buffer: if tls {
                vec![0; READ_BUFFER_BYTES]
            } else {
                Vec::new()
            },
            rng: Rng::new(
                plan.seed ^ (thread_index as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f),
            ),
            recorder: Recorder::new(
                plan.mix.commands.len(),
                matches!(plan.model, Model::Closed { .. }),
                Timeline::new(plan.measure_start_ns(), plan.duration_ns),
            ),
            sending,
            outstanding: 0,
            replies: 0,
            unanswered: 0,
            disconnects: 0,
            protocol_errors: Vec::new(),
        })
    }

    fn run(&mut self) -> io::Result<()> {
        // Every thread starts at the same instant, so the first requests are on the clock too.
        let start_in = self.plan.start_ns.saturating_sub(now_ns());
        if start_in > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(start_in));
        }
        let now = now_ns();
        for slot in 0..self.connections.len() {
            match self.plan.model {
                Model::Closed { .. } => self.refill_closed(slot, now),
                Model::Open { .. } => self.release_open(slot, now),
            }
        }
        let send_end_ns = self.send_end_ns();
        let mut drain_deadline_ns = None;
        let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
        loop {
            let mut now = now_ns();
            if self.stop.load(Ordering::Relaxed) {
                self.stop_sending();
            }
            if matches!(self.plan.model, Model::Open { .. }) {
                self.release_due(now);
                now = now_ns();
            }
            if now >= send_end_ns {
                self.stop_sending();
            }
            if self.sending == 0 {
                if self.outstanding == 0 {
                    break;
                }
                let deadline = *drain_deadline_ns.get_or_insert(now + self.plan.drain_ns);
                if now >= deadline {
                    break;
                }
            }
            // Wake at least on a 100 ms grid, to notice `Progress::stop` even when nothing is
            // due and the server has gone quiet (a grid, so the timer is re-armed rarely).
            let heartbeat_ns = (now / HEARTBEAT_NS + 1) * HEARTBEAT_NS;
            let wake_ns = self
                .next_wake_ns(send_end_ns, drain_deadline_ns)
                .min(heartbeat_ns);
            // Close to the next due request, poll instead of sleeping (`--spin`): a wake-up
            // from sleep can be tens of microseconds late, and that lateness is latency.
            let spin = wake_ns.saturating_sub(now) <= self.plan.spin_ns;
            let timeout = if spin {
                Some(Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                })
            } else {
                // With spinning, wake early and poll the rest of the way.
                self.arm_timer(wake_ns - self.plan.spin_ns.min(wake_ns))?;
                None
            };
            events.clear();
            match epoll::wait(&self.epoll, spare_capacity(&mut events), timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(error) => return Err(error.into()),
            }
            for event in events.drain(..) {
                let token = event.data.u64();
                if token == TIMER_TOKEN {
                    let mut ticks = [0u8; 8];
                    let _ = rustix::io::read(&self.timer, &mut ticks);
                    self.timer_armed_ns = 0;
                    continue;
                }
                let slot = token as usize;
                if !self.connections[slot].alive {
                    continue;
                }
                let flags = event.flags;
                if flags.intersects(epoll::EventFlags::OUT) {
                    self.flush(slot);
                }
                if flags.intersects(
                    epoll::EventFlags::IN | epoll::EventFlags::ERR | epoll::EventFlags::HUP,
                ) {
                    self.on_readable(slot);
                }
            }
            self.publish_progress();
        }
        // Whatever is still outstanding was recorded work that never got its reply.
        for connection in &mut self.connections {
            self.unanswered += connection.inflight.iter().filter(|r| r.recorded).count() as u64;
            connection.inflight.clear();
        }
        self.outstanding = 0;
        self.publish_progress();
        Ok(())
    }

    fn publish_progress(&self) {
        let progress = self.progress;
        progress.replies.store(self.replies, Ordering::Relaxed);
        progress
            .errors
            .store(self.recorder.errors, Ordering::Relaxed);
        progress
            .outstanding
            .store(self.outstanding as u64, Ordering::Relaxed);
    }

    /// When sending stops for every connection (the latest window end).
    fn send_end_ns(&self) -> u64 {
        self.connections
            .iter()
            .map(|c| c.window.end_ns)
            .max()
            .unwrap_or(0)
    }

    /// The earliest time the loop must wake without socket activity.
    fn next_wake_ns(&self, send_end_ns: u64, drain_deadline_ns: Option<u64>) -> u64 {
        let mut wake = drain_deadline_ns.unwrap_or(u64::MAX);
        if self.sending > 0 {
            wake = wake.min(send_end_ns);
            if let Some(Reverse((due, _))) = self.due.peek() {
                wake = wake.min(*due);
            }
        }
        wake
    }

    /// Arms the timerfd for `wake_ns` (absolute), unless it already is.
    fn arm_timer(&mut self, wake_ns: u64) -> io::Result<()> {
        if wake_ns == u64::MAX || wake_ns == self.timer_armed_ns {
            return Ok(());
        }
        let value = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: (wake_ns / 1_000_000_000) as i64,
                tv_nsec: (wake_ns % 1_000_000_000) as _,
            },
        };
        timerfd_settime(&self.timer, TimerfdTimerFlags::ABSTIME, &value)?;
        self.timer_armed_ns = wake_ns;
        Ok(())
    }

    /// Stops every connection from sending more (end of the run, or asked to stop).
    fn stop_sending(&mut self) {
        for connection in &mut self.connections {
            if connection.sending {
                connection.sending = false;
                self.sending -= 1;
            }
        }
        self.due.clear();
    }

    /// Open loop: sends for every connection whose next request is due by `now`.
    fn release_due(&mut self, now: u64) {
        while let Some(&Reverse((due, slot))) = self.due.peek() {
            if due > now {
                break;
            }
            self.due.pop();
            self.release_open(slot, now);
        }
    }

    /// Open loop: writes every request of `slot` that is due by `now`, up to `max_inflight`
    /// outstanding, then files the connection under its next due time.
    fn release_open(&mut self, slot: usize, now: u64) {
        let Model::Open { max_inflight, .. } = self.plan.model else {
            unreachable!("release_open in closed loop");
        };
        let connection = &mut self.connections[slot];
        if !connection.sending {
            return;
        }
        let pacer = connection.pacer.as_mut().expect("open loop has a pacer");
        let mut sent = 0;
        while connection.inflight.len() < max_inflight {
            let Some((intended_ns, recorded)) = pacer.take_due(now) else {
                break;
            };
            let command = self.plan.mix.pick(&mut self.rng);
            self.plan
                .mix
                .write_request(command, &mut connection.out, &mut self.rng);
            connection.inflight.push_back(InFlight {
                intended_ns,
                sent_ns: now,
                command: command as u32,
                recorded,
            });
            if recorded {
                self.recorder.record_send_lag(now - intended_ns);
            }
            sent += 1;
        }
        let next_due = pacer.next_due();
        self.outstanding += sent;
        match next_due {
            None => {
                connection.sending = false;
                self.sending -= 1;
            }
            Some(_) if connection.inflight.len() >= max_inflight => connection.blocked = true,
            Some(due) => self.due.push(Reverse((due, slot))),
        }
        if sent > 0 {
            self.flush(slot);
        }
    }

    /// Closed loop: tops `slot` up to `pipeline` outstanding requests.
    fn refill_closed(&mut self, slot: usize, now: u64) {
        let Model::Closed { pipeline } = self.plan.model else {
            unreachable!("refill_closed in open loop");
        };
        let connection = &mut self.connections[slot];
        let mut sent = 0;
        while connection.sending && connection.inflight.len() < pipeline {
            let window = &connection.window;
            let quota_left = window.quota.is_none_or(|q| connection.recorded_sent < q);
            if now >= window.end_ns || !quota_left {
                connection.sending = false;
                self.sending -= 1;
                break;
            }
            let recorded = now >= window.warmup_end_ns;
            if recorded {
                connection.recorded_sent += 1;
            }
            let command = self.plan.mix.pick(&mut self.rng);
            self.plan
                .mix
                .write_request(command, &mut connection.out, &mut self.rng);
            connection.inflight.push_back(InFlight {
                intended_ns: now,
                sent_ns: now,
                command: command as u32,
                recorded,
            });
            sent += 1;
        }
        self.outstanding += sent;
        if sent > 0 {
            self.flush(slot);
        }
    }

    /// Writes as much of `slot`'s output as the socket takes; arms EPOLLOUT for the rest.
    fn flush(&mut self, slot: usize) {
        let connection = &mut self.connections[slot];
        let done = match &mut connection.tls {
            None => loop {
                if connection.out_sent == connection.out.len() {
                    break Ok(true);
                }
                match (&connection.stream).write(&connection.out[connection.out_sent..]) {
                    Ok(written) => connection.out_sent += written,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => break Err(error),
                }
            },
            Some(tls) => flush_tls(
                tls,
                &connection.stream,
                &connection.out,
                &mut connection.out_sent,
            ),
        };
        match done {
            Ok(true) => {}
            Ok(false) => {
                if !connection.writable_armed {
                    connection.writable_armed = true;
                    let _ = epoll::modify(
                        &self.epoll,
                        &connection.stream,
                        epoll::EventData::new_u64(slot as u64),
                        epoll::EventFlags::IN | epoll::EventFlags::OUT,
                    );
                }
                return;
            }
            Err(_) => {
                self.lose(slot);
                return;
            }
        }
        connection.out.clear();
        connection.out_sent = 0;
        if connection.writable_armed {
            connection.writable_armed = false;
            let _ = epoll::modify(
                &self.epoll,
                &connection.stream,
                epoll::EventData::new_u64(slot as u64),
                epoll::EventFlags::IN,
            );
        }
    }

    /// Reads and records every reply `slot` has, then sends what the replies made room for.
    fn on_readable(&mut self, slot: usize) {
        let read = if self.connections[slot].tls.is_some() {
            self.read_tls(slot)
        } else {
            self.read_plain(slot)
        };
        let Some((answered, reply_ns)) = read else {
            self.lose(slot);
            return;
        };
        if answered == 0 {
            return;
        }
        // What the replies made room for leaves now; the reply time is close enough to now.
        let now = reply_ns;
        match self.plan.model {
            Model::Closed { .. } => self.refill_closed(slot, now),
            Model::Open { .. } => {
                let connection = &mut self.connections[slot];
                if connection.blocked {
                    connection.blocked = false;
                    self.release_open(slot, now);
                }
            }
        }
    }

    /// Reads what a plain `slot` has and records its replies: (replies, time of the last
    /// read), or `None` when the connection is lost.
    fn read_plain(&mut self, slot: usize) -> Option<(u64, u64)> {
        let mut answered = 0;
        let mut reply_ns = 0;
        loop {
            let connection = &mut self.connections[slot];
            let read = match (&connection.stream).read(&mut self.read_buffer) {
                Ok(0) => return None,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            };
            reply_ns = now_ns();
            let matched = scan_replies(
                connection,
                &self.read_buffer[..read],
                reply_ns,
                &mut self.recorder,
                &mut self.protocol_errors,
            )?;
            answered += matched;
            self.replies += matched;
            self.outstanding -= matched as usize;
            if read < self.read_buffer.len() {
                break;
            }
        }
        Some((answered, reply_ns))
    }

    /// [`Loop::read_plain`] for a TLS `slot`: what one read from the socket brings goes
    /// through rustls (a record's worth at a time), and the plaintext into the reply scanner.
    fn read_tls(&mut self, slot: usize) -> Option<(u64, u64)> {
        let mut answered = 0;
        let mut reply_ns = 0;
        let connection = &mut self.connections[slot];
        loop {
            let read = match (&connection.stream).read(&mut self.tls_buffer) {
                Ok(0) => return None,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            };
            // Records that arrived in one read share one reply time, as plain replies do.
            reply_ns = now_ns();
            let mut records = &self.tls_buffer[..read];
            while !records.is_empty() {
                let tls = connection.tls.as_mut().expect("a TLS connection");
                if tls.read_tls(&mut records).is_err() {
                    return None;
                }
                let state = match tls.process_new_packets() {
                    Ok(state) => state,
                    Err(error) => {
                        // Send rustls's alert (best effort), then give the connection up.
                        let _ = tls.write_tls(&mut &connection.stream);
                        self.protocol_errors
                            .push(format!("connection {}: TLS: {error}", connection.index));
                        return None;
                    }
                };
                let mut pending = state.plaintext_bytes_to_read();
                while pending > 0 {
                    let tls = connection.tls.as_mut().expect("a TLS connection");
                    let plaintext = match tls.reader().read(&mut self.read_buffer) {
                        Ok(0) | Err(_) => return None,
                        Ok(plaintext) => plaintext,
                    };
                    pending = pending.saturating_sub(plaintext);
                    let matched = scan_replies(
                        connection,
                        &self.read_buffer[..plaintext],
                        reply_ns,
                        &mut self.recorder,
                        &mut self.protocol_errors,
                    )?;
                    answered += matched;
                    self.replies += matched;
                    self.outstanding -= matched as usize;
                }
                if state.peer_has_closed() {
                    return None;
                }
            }
            if read < self.tls_buffer.len() {
                break;
            }
        }
        // rustls may have something of its own to send (answering a key update): now.
        if connection.tls.as_ref().is_some_and(|tls| tls.wants_write()) {
            self.flush(slot);
        }
        Some((answered, reply_ns))
    }

    /// The server closed or reset `slot`: what it had outstanding is unanswered.
    fn lose(&mut self, slot: usize) {
        let connection = &mut self.connections[slot];
        if !connection.alive {
            return;
        }
        connection.alive = false;
        self.disconnects += 1;
        self.unanswered += connection.inflight.iter().filter(|r| r.recorded).count() as u64;
        self.outstanding -= connection.inflight.len();
        connection.inflight.clear();
        if connection.sending {
            connection.sending = false;
            self.sending -= 1;
        }
        connection.blocked = false;
        let _ = epoll::delete(&self.epoll, &connection.stream);
        let _ = connection.stream.shutdown(std::net::Shutdown::Both);
        // A heap entry for this slot may remain; release_open ignores connections not sending.
    }
}

/// Feeds `bytes` (plaintext from `connection`) to its reply scanner and records each reply
/// against the request it answers. The replies matched, or `None` when the stream is malformed
/// (the connection cannot be trusted after that).
fn scan_replies(
    connection: &mut Connection,
    bytes: &[u8],
    reply_ns: u64,
    recorder: &mut Recorder,
    protocol_errors: &mut Vec<String>,
) -> Option<u64> {
    let inflight = &mut connection.inflight;
    let mut unexpected = 0;
    let scanned = connection.scanner.feed(bytes, |reply| {
        let Some(request) = inflight.pop_front() else {
            unexpected += 1;
            return;
        };
        if request.recorded {
            let error = match reply {
                Reply::Value => None,
                Reply::Error(word) => Some(word),
            };
            recorder.record(&request, reply_ns, error);
        }
    });
    let scanned = match scanned {
        Ok(scanned) => scanned,
        Err(error) => {
            protocol_errors.push(format!("connection {}: {error}", connection.index));
            return None;
        }
    };
    if unexpected > 0 {
        protocol_errors.push(format!(
            "connection {}: {unexpected} replies with no request outstanding",
            connection.index
        ));
    }
    Some(scanned - unexpected)
}

/// [`Loop::flush`] for a TLS connection: the plaintext goes into rustls (as much as its
/// buffer takes), the records out to the socket, until both are empty (`Ok(true)`) or the
/// socket would block (`Ok(false)`: EPOLLOUT needed, rustls still wants to write).
fn flush_tls(
    tls: &mut ClientConnection,
    stream: &TcpStream,
    out: &[u8],
    out_sent: &mut usize,
) -> io::Result<bool> {
    loop {
        if *out_sent < out.len() {
            *out_sent += tls.writer().write(&out[*out_sent..])?;
        }
        while tls.wants_write() {
            match tls.write_tls(&mut &*stream) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        if *out_sent == out.len() {
            return Ok(true);
        }
    }
}
