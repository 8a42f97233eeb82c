//! A session on a ring: the per-connection state machine and the path of bytes through it.
//!
//! The request path, in the order a reader meets it: `on_open` (state `Unauthenticated`, auth
//! deadline armed) → `on_data` → [`RingHandler::process_input`] parses as many complete commands
//! as the bytes hold → [`crate::commands::execute`] answers inline commands at once and sends
//! offloaded ones to a pool (state `Waiting`) → the pool's result comes back as `on_message` →
//! the reply is appended to the session's output → the ring sends everything queued in one send.
//!
//! A session executes one command at a time: while an offloaded command is pending, later input
//! stays unparsed in `inbuf`, so replies leave in request order however commands were served.
//! While an AUTH is verified the session reads nothing more at all ([`hold_input`]): before
//! AUTH, input waits in the kernel, not in our memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ringport_ring::{CloseReason, Context, Handler, Sender, Session, SessionId, Sessions};

use crate::commands::api::Handlers;
use crate::commands::{self, Call};
use crate::conn::{Conn, State};
use crate::msg::{AuthOutcome, Msg};
use crate::resp::{self, Args, Limits, Proto};
use crate::shared::Shared;
use crate::storelink::ReadLink;
use crate::storepool::JobTicket;
use crate::table::NO_COMMAND;

/// How often a store job that outlived its deadline without the pool calling it stuck is looked
/// at again.
fn store_recheck(store_timeout: std::time::Duration) -> std::time::Duration {
    (store_timeout / 20).max(std::time::Duration::from_millis(10))
}

/// One ring's protocol handler. Owns nothing shared but the `Arc<Shared>` and the handlers.
pub struct RingHandler {
    pub(crate) shared: Arc<Shared>,
    /// Every command's handler, row for row with `shared.table`.
    handlers: Arc<Handlers>,
    /// This ring's own mailbox, cloned into every job so results come back here.
    pub(crate) sender: Sender<Msg>,
    pub(crate) limits: Limits,
    /// The parser's limits before AUTH: a few arguments of a few KiB, as Redis 7 has them, so
    /// that an unauthenticated peer costs almost nothing.
    preauth_limits: Limits,
    args: Args,
    /// Parses ahead for [`fold_gets`].
    probe: Args,
    /// This ring's own store connection for GETs, when ring reads are on.
    link: ReadLink,
}

impl RingHandler {
    /// A handler for one ring.
    pub fn new(shared: Arc<Shared>, handlers: Arc<Handlers>, sender: Sender<Msg>) -> RingHandler {
        let limits = Limits {
            max_bulk_len: shared.config.proto_max_bulk_len,
            ..Limits::default()
        };
        let preauth_limits = Limits {
            max_bulk_len: shared.config.preauth_max_bulk_len,
            max_inline_len: shared.config.preauth_max_bulk_len,
            max_multibulk_len: shared.config.preauth_max_args,
            unauthenticated: true,
        };
        RingHandler {
            shared,
            handlers,
            sender,
            limits,
            preauth_limits,
            args: Args::new(),
            probe: Args::new(),
            link: ReadLink::new(None),
        }
    }

    /// Ring reads on: this ring asks `want` for a store connection of its own (`storelink`).
    pub fn with_ring_reads(mut self, want: crossbeam_channel::Sender<usize>) -> RingHandler {
        self.link = ReadLink::new(Some(want));
        self
    }

    /// A session's state, fresh.
    fn new_conn(&self, cx: &Context, peer: Option<SocketAddr>) -> Conn {
        let client_id = self
            .shared
            .next_client_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Conn {
            client_id,
            state: State::Unauthenticated,
            user: None,
            proto: Proto::Resp2,
            rare: None,

            authenticated: false,
            inbuf: Default::default(),
            parse_progress: Default::default(),
            auth_failures: 0,
            peer_eof: false,
            pending: None,
            peer: peer.map(|p| (p.ip(), p.port())),
            created: u32::try_from(
                cx.now
                    .saturating_duration_since(self.shared.started)
                    .as_secs(),
            )
            .unwrap_or(u32::MAX),
            last_active: cx.now,
            last_command: NO_COMMAND,
            partial_since: None,
            job_seq: 0,
            auth_deadline: Some(cx.now + self.shared.config.auth_timeout),
        }
    }

    fn on_client_data(&mut self, cx: &Context, s: &mut Session<'_, Conn>, data: &[u8]) {
        if s.is_closing() {
            return;
        }
        if s.conn.state == State::Waiting || !s.conn.inbuf.is_empty() {
            let config = &self.shared.config;
            let max_query = if s.conn.authenticated {
                config.max_query_buffer
            } else {
                config.preauth_max_query_buffer
            };
            if s.conn.inbuf.len() + data.len() > max_query {
                let held = hold_input(s.conn);
                match s.conn.pending.as_mut() {
                    // Bytes the kernel handed over before the pause took hold: the refusal
                    // waits for AUTH's own reply, so replies stay in request order.
                    Some(pending) if held => pending.over_query_limit = true,
                    _ => self.refuse_over_query_limit(s),
                }
                return;
            }
            s.conn.inbuf.extend_from_slice(data);
            if s.conn.state != State::Waiting {
                self.process_inbuf(cx, s);
            }
        } else {
            let consumed = self.process_input(cx, s, data);
            if consumed < data.len() && !s.is_closing() {
                s.conn.inbuf.extend_from_slice(&data[consumed..]);
            }
        }
        self.hold_input(s);
        self.arm_deadline(cx, s);
        self.close_if_done(cx, s);
    }

    /// Applies [`hold_input`] to the ring; once authenticated, the session receives multishot.
    fn hold_input(&self, s: &mut Session<'_, Conn>) {
        s.pause_input(hold_input(s.conn));
        if s.conn.authenticated {
            s.receive_singly(false);
        }
    }

    /// Answers input past the query buffer limit: Redis's error, then close.
    fn refuse_over_query_limit(&self, s: &mut Session<'_, Conn>) {
        if let Some(suppressed) = self.shared.log_allowed("query_buffer") {
            tracing::warn!(
                client = s.conn.client_id,
                suppressed,
                "closing a session whose unprocessed input passed --max-query-buffer"
            );
        }
        self.shared
            .counters
            .query_limit_closes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        resp::error(
            s.out(),
            b"ERR Protocol error: client query buffer limit exceeded",
        );
        s.close_after_flush();
    }

    /// After the link's connection moved: send what waits, close once a drain left it nothing,
    /// and watch the oldest batch out.
    fn settle_link(&mut self, cx: &Context, s: &mut Session<'_, Conn>) {
        let store = &self.shared.store;
        if self.link.has_waiting() {
            self.link.flush(s.out(), cx.now, store);
        }
        if self.link.done() {
            s.close_after_flush();
        }
        s.set_deadline(self.link.deadline(self.shared.config.store_timeout));
    }

    /// The link's connection failed: closing it answers its GETs and asks for another.
    fn link_failed(&self, s: &mut Session<'_, Conn>, why: &str) {
        if let Some(suppressed) = self.shared.log_allowed("ring_reads") {
            tracing::warn!(reason = why, suppressed, "ring reads: closing the store connection; GETs go through the store workers until another is up");
        }
        s.close();
    }

    /// Parses and executes complete commands from `buf` until it runs out, a command goes to a
    /// pool, or the session is closing. Returns how many bytes were consumed.
    fn process_input(&mut self, cx: &Context, s: &mut Session<'_, Conn>, buf: &[u8]) -> usize {
        let mut pos = 0;
        let mut args = std::mem::take(&mut self.args);
        while pos < buf.len() && s.conn.state != State::Waiting && !s.is_closing() {
            // Only a pool's answer authenticates, and it is applied between calls: the limits
            // cannot change in the middle of a command.
            let limits = if s.conn.authenticated {
                &self.limits
            } else {
                &self.preauth_limits
            };
            // `parse_progress` belongs to the command starting at `pos`: it is kept only when
            // the loop stops there, and the caller keeps `buf[pos..]` as the front of `inbuf`.
            match resp::parse_command_resuming(
                &buf[pos..],
                limits,
                &mut args,
                &mut s.conn.parse_progress,
            ) {
                Ok(None) => break,
                Ok(Some(consumed)) => {
                    pos += consumed;
                    if args.is_empty() {
                        continue;
                    }
                    s.conn.last_active = cx.now;
                    // Inside MULTI a GET is queued like any command, never folded.
                    let folded = if s.conn.authenticated && !s.conn.in_multi() && is_get(&args) {
                        fold_gets(&mut self.probe, &buf[pos..], limits, &args[1])
                    } else {
                        None
                    };
                    let mut call = Call::new(
                        cx,
                        &self.shared,
                        &self.handlers,
                        &self.sender,
                        &mut self.link,
                        s,
                    );
                    match folded {
                        Some((keys, used)) => {
                            pos += used;
                            commands::execute_gets(&mut call, keys);
                        }
                        None => commands::execute(&mut call, &args),
                    }
                    self.enforce_output_limit(s);
                }
                Err(error) => {
                    // As Redis does: say what was wrong, then close; the stream cannot be resynced.
                    self.shared
                        .counters
                        .protocol_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let message = format!("ERR {error}");
                    resp::error(s.out(), message.as_bytes());
                    s.close_after_flush();
                    pos = buf.len();
                }
            }
        }
        self.args = args;
        pos
    }

    /// Runs what waits in `inbuf` (after a pending command finished).
    fn process_inbuf(&mut self, cx: &Context, s: &mut Session<'_, Conn>) {
        if s.conn.inbuf.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut s.conn.inbuf);
        let consumed = self.process_input(cx, s, buf.unparsed());
        buf.consume(consumed);
        s.conn.inbuf = buf;
    }

    fn enforce_output_limit(&self, s: &mut Session<'_, Conn>) {
        if s.pending_output() > self.shared.config.max_output_buffer {
            self.close_over_output_limit(s, "replies it is not reading");
        }
    }

    fn close_over_output_limit(&self, s: &mut Session<'_, Conn>, why: &'static str) {
        if let Some(suppressed) = self.shared.log_allowed("output_buffer") {
            tracing::warn!(
                client = s.conn.client_id,
                pending_bytes = s.pending_output(),
                why,
                suppressed,
                "closing a session whose output passed --max-output-buffer"
            );
        }
        self.shared
            .counters
            .output_limit_closes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.close();
    }

    /// The next moment this session must be looked at: the earliest of its deadlines. Before
    /// AUTH the auth deadline covers idleness and partial commands; after it, the idle and
    /// partial-command deadlines apply (each when enabled). A pending store job's liveness
    /// deadline applies either way.
    fn next_deadline(&self, conn: &Conn) -> Option<Instant> {
        let config = &self.shared.config;
        let (idle, partial) = if conn.authenticated {
            (
                (!config.idle_timeout.is_zero()).then(|| conn.last_active + config.idle_timeout),
                conn.partial_since
                    .filter(|_| !config.request_timeout.is_zero())
                    .map(|since| since + config.request_timeout),
            )
        } else {
            (None, None)
        };
        let store = conn
            .pending
            .as_ref()
            .and_then(|pending| Some(pending.store.as_ref()?.1));
        [conn.auth_deadline, store, idle, partial]
            .into_iter()
            .flatten()
            .min()
    }

    /// Notes whether a partial command waits, and arms the deadline if it must come earlier.
    /// A later deadline is not re-armed here: the timer re-checks when it fires, which keeps
    /// the wheel out of the per-command path.
    fn arm_deadline(&self, cx: &Context, s: &mut Session<'_, Conn>) {
        let partial = s.conn.state != State::Waiting && !s.conn.inbuf.is_empty();
        match (partial, s.conn.partial_since) {
            (true, None) => s.conn.partial_since = Some(cx.now),
            (false, Some(_)) => s.conn.partial_since = None,
            _ => {}
        }
        let want = self.next_deadline(s.conn);
        match (want, s.deadline()) {
            (Some(want), Some(armed)) if want < armed => s.set_deadline(Some(want)),
            (Some(want), None) => s.set_deadline(Some(want)),
            _ => {}
        }
    }

    /// The store stopped answering for the pending job: answer `store unavailable` now, let the
    /// job be skipped (or its late result dropped), and go on with the session's input; or, for
    /// a write the store had started, close the session once that answer is sent.
    fn give_up_on_store(&mut self, cx: &Context, s: &mut Session<'_, Conn>, ticket: &JobTicket) {
        let started = ticket.abandon();
        // A reply is activity too: a command that ran longer than the idle timeout must not
        // leave its session looking idle the moment it answers.
        s.conn.last_active = cx.now;
        let (command, started_at, calls) = s
            .conn
            .pending
            .take()
            .map_or((NO_COMMAND, cx.now, 1), |p| (p.command, p.started, p.calls));
        s.conn.state = if s.conn.authenticated {
            State::Ready
        } else {
            State::Unauthenticated
        };
        // One answer per command the job stood for (a run of folded GETs has several).
        for _ in 0..calls {
            resp::error(s.out(), b"ERR store unavailable");
        }
        self.shared
            .store
            .note_error(&crate::store::StoreError::Unavailable(
                "no answer within --store-timeout".into(),
            ));
        let name = self.shared.table.name_of(command);
        if let Some(suppressed) = self.shared.log_allowed("store_timeout") {
            tracing::warn!(
                command = name,
                suppressed,
                "the store did not answer within --store-timeout; replied store unavailable"
            );
        }
        for _ in 0..calls {
            self.shared
                .record_command(cx.ring, command, started_at, true);
        }
        let unknown_write = started
            && self
                .shared
                .table
                .specs()
                .get(usize::from(command))
                .is_some_and(|c| c.writes());
        if unknown_write {
            // The write may still commit, at a moment nobody knows: a later write of this client
            // could land before it (SET k 1 stuck, SET k 2, k ends 1). Only a closed session
            // keeps the client's writes in order; input it pipelined behind is dropped unrun.
            if let Some(suppressed) = self.shared.log_allowed("store_timeout_write") {
                tracing::warn!(
                    command = name,
                    suppressed,
                    "a write passed --store-timeout after the store started it; closing its session"
                );
            }
            s.close_after_flush();
            return;
        }
        self.process_inbuf(cx, s);
        self.hold_input(s);
        self.arm_deadline(cx, s);
        self.close_if_done(cx, s);
    }

    /// After anything that may have left the session idle: close it if the peer is done or the
    /// server is draining.
    fn close_if_done(&self, cx: &Context, s: &mut Session<'_, Conn>) {
        // After the peer's EOF, input left unparsed once nothing runs is a command that can
        // never complete: close at once rather than hold the descriptor until a timeout.
        let peer_done = s.conn.peer_eof && s.conn.state != State::Waiting;
        if peer_done || (cx.draining && s.conn.idle()) {
            s.close_after_flush();
        }
    }
}

impl Handler for RingHandler {
    type Conn = Conn;
    type Msg = Msg;

    fn on_open(&mut self, cx: &Context, _id: SessionId, peer: Option<SocketAddr>) -> Conn {
        self.new_conn(cx, peer)
    }

    fn on_attach(&mut self, cx: &Context, id: SessionId, _msg: Msg) -> Option<Conn> {
        // Its state is never read: every callback for the link is answered before it.
        self.link
            .attached(id, cx.ring, &self.shared.store)
            .then(|| self.new_conn(cx, None))
    }

    fn on_data(&mut self, cx: &Context, s: &mut Session<'_, Conn>, data: &[u8]) {
        if self.link.is(s.id()) {
            match self.link.receive(data, &self.shared.store) {
                Ok(()) => self.settle_link(cx, s),
                Err(why) => self.link_failed(s, &why),
            }
            return;
        }
        self.on_client_data(cx, s, data);
    }

    fn on_message(&mut self, cx: &Context, s: &mut Session<'_, Conn>, msg: Msg) {
        if self.link.is(s.id()) {
            self.settle_link(cx, s);
            return;
        }
        let seq = match &msg {
            Msg::Reply(seq, _)
            | Msg::ReplyThenClose(seq, _)
            | Msg::Auth(seq, _)
            | Msg::OverOutputLimit(seq) => *seq,
            Msg::ListClients(..) | Msg::Kill(..) | Msg::LinkUp | Msg::LinkFlush => return,
        };
        if s.conn.state != State::Waiting || seq != s.conn.job_seq {
            // The session gave up on this job (the store stopped answering) and moved on.
            return;
        }
        // A reply is activity too: a command that ran longer than the idle timeout must not
        // leave its session looking idle the moment it answers.
        s.conn.last_active = cx.now;
        let (command, started, calls, over_query_limit) = s
            .conn
            .pending
            .take()
            .map_or((NO_COMMAND, cx.now, 1, false), |p| {
                (p.command, p.started, p.calls, p.over_query_limit)
            });
        s.conn.state = if s.conn.authenticated {
            State::Ready
        } else {
            State::Unauthenticated
        };
        let failed = match msg {
            Msg::Reply(_, bytes) => {
                s.out().extend_from_slice(&bytes);
                bytes.first() == Some(&b'-')
            }
            Msg::ReplyThenClose(_, bytes) => {
                s.out().extend_from_slice(&bytes);
                // Input pipelined behind is not run: Redis drops it with the client too.
                s.close_after_flush();
                bytes.first() == Some(&b'-')
            }
            Msg::Auth(_, outcome) => {
                let failed = !matches!(outcome, AuthOutcome::Verified { .. });
                commands::finish_auth(
                    &mut Call::new(
                        cx,
                        &self.shared,
                        &self.handlers,
                        &self.sender,
                        &mut self.link,
                        s,
                    ),
                    outcome,
                );
                failed
            }
            Msg::OverOutputLimit(_) => {
                self.close_over_output_limit(s, "a reply that alone passed --max-output-buffer");
                true
            }
            Msg::ListClients(..) | Msg::Kill(..) | Msg::LinkUp | Msg::LinkFlush => {
                unreachable!("returned above")
            }
        };
        for _ in 0..calls {
            self.shared
                .record_command(cx.ring, command, started, failed);
        }
        self.enforce_output_limit(s);
        if over_query_limit && !s.is_closing() {
            self.refuse_over_query_limit(s);
        }
        if !s.is_closing() {
            self.process_inbuf(cx, s);
        }
        self.hold_input(s);
        self.arm_deadline(cx, s);
        self.close_if_done(cx, s);
    }

    fn on_start(&mut self, cx: &Context, s: &mut Session<'_, Conn>) {
        // Until AUTH, so that the receive holding an AUTH is the last before its pause.
        s.receive_singly(true);
        self.arm_deadline(cx, s);
    }

    fn on_deadline(&mut self, cx: &Context, s: &mut Session<'_, Conn>) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.link.is(s.id()) {
            let timeout = self.shared.config.store_timeout;
            if self.link.deadline(timeout).is_some_and(|at| at <= cx.now) {
                self.link_failed(s, "no answer within --store-timeout");
            } else {
                s.set_deadline(self.link.deadline(timeout));
            }
            return;
        }
        let config = &self.shared.config;
        let counters = &self.shared.counters;
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= cx.now);
        let store = s.conn.pending.as_mut().and_then(|p| p.store.as_mut());
        if let Some((ticket, at)) = store.filter(|(_, at)| due(Some(*at))) {
            if self.shared.store.stuck(ticket, config.store_timeout) {
                let ticket = ticket.clone();
                self.give_up_on_store(cx, s, &ticket);
                return;
            }
            // The job runs, or waits behind jobs that run: look again soon.
            *at = cx.now + store_recheck(config.store_timeout);
        }
        if due(s.conn.auth_deadline) {
            if s.conn.state == State::Waiting {
                // AUTH is being verified: let it finish, then look again.
                s.conn.auth_deadline = Some(cx.now + config.auth_timeout / 10);
            } else {
                resp::error(
                    s.out(),
                    b"ERR authentication timeout, closing the connection",
                );
                s.close_after_flush();
                counters.auth_timeouts.fetch_add(1, Relaxed);
                return;
            }
        }
        if s.conn.authenticated {
            if let Some(since) = s.conn.partial_since {
                if !config.request_timeout.is_zero() && since + config.request_timeout <= cx.now {
                    resp::error(s.out(), b"ERR request timeout: an incomplete command waited too long, closing the connection");
                    s.close_after_flush();
                    counters.request_timeouts.fetch_add(1, Relaxed);
                    if let Some(suppressed) = self.shared.log_allowed("request_timeout") {
                        tracing::info!(
                            client = s.conn.client_id,
                            suppressed,
                            "closing a session whose partial command passed --request-timeout"
                        );
                    }
                    return;
                }
            }
            if !config.idle_timeout.is_zero()
                && s.conn.state == State::Ready
                && s.conn.inbuf.is_empty()
                && s.conn.last_active + config.idle_timeout <= cx.now
            {
                counters.idle_timeouts.fetch_add(1, Relaxed);
                s.close();
                return;
            }
        }
        // Whatever is not due yet (activity moved it, or a command is running): look again then.
        let next = self
            .next_deadline(s.conn)
            .map(|at| at.max(cx.now + std::time::Duration::from_millis(10)));
        s.set_deadline(next);
    }

    fn on_eof(&mut self, cx: &Context, s: &mut Session<'_, Conn>) {
        if self.link.is(s.id()) {
            return self.link_failed(s, "PostgreSQL closed the connection");
        }
        s.conn.peer_eof = true;
        self.close_if_done(cx, s);
    }

    fn on_drain(&mut self, cx: &Context, s: &mut Session<'_, Conn>) {
        if self.link.is(s.id()) {
            if self.link.drain() {
                s.close();
            }
            return;
        }
        self.close_if_done(cx, s);
    }

    fn on_ring_message(&mut self, _cx: &Context, msg: Msg, sessions: &mut Sessions<'_, Conn>) {
        match msg {
            Msg::ListClients(filter, reply) => {
                let mut lines = Vec::new();
                let link = &self.link;
                sessions.for_each(|s| {
                    if link.is(s.id()) || !filter.matches(s.conn) {
                        return;
                    }
                    lines.push((
                        s.conn.client_id,
                        s.conn.info_line(
                            self.shared.listen_addr,
                            s.pending_output(),
                            &self.shared.table,
                            self.shared.started,
                        ),
                    ))
                });
                let _ = reply.send(lines);
            }
            Msg::Kill(filter, reply) => {
                let mut killed = 0;
                let link = &self.link;
                sessions.for_each(|s| {
                    if !link.is(s.id()) && filter.matches(s.conn, self.shared.listen_addr) {
                        killed += 1;
                        s.close();
                    }
                });
                self.shared
                    .counters
                    .killed
                    .fetch_add(killed, std::sync::atomic::Ordering::Relaxed);
                let _ = reply.send(killed);
            }
            Msg::Reply(..)
            | Msg::ReplyThenClose(..)
            | Msg::Auth(..)
            | Msg::OverOutputLimit(_)
            | Msg::LinkUp
            | Msg::LinkFlush => {
                debug_assert!(false, "a session's message was sent to a whole ring");
            }
        }
    }

    fn on_close(&mut self, cx: &Context, id: SessionId, _conn: Conn, _reason: CloseReason) {
        self.link.closed(id, cx.ring, &self.shared.store);
    }
}

/// Whether the session must take no more input: while an AUTH (or HELLO AUTH) of an
/// unauthenticated session is verified. What the peer pipelined behind it then waits in the
/// kernel's socket buffer, and TCP holds the peer back, instead of the session holding up to
/// `--preauth-max-query-buffer` for a peer nobody knows yet; the ring reads again once AUTH's
/// outcome is applied. Authenticated sessions keep reading behind a pending command, up to
/// `--max-query-buffer`, so pipelines stay deep.
fn hold_input(conn: &Conn) -> bool {
    conn.state == State::Waiting && !conn.authenticated
}

/// Most GETs of one pipeline answered by one store job.
const FOLD_GETS_MAX: usize = 64;

/// `GET key`, in any letter case.
fn is_get(args: &Args) -> bool {
    args.len() == 2 && args[0].eq_ignore_ascii_case(b"get")
}

/// A GET followed, in the bytes already here, by more complete GETs: their keys, the first one's
/// included, and how many bytes of `rest` the others took; `None` when no GET follows. One store
/// job then answers the whole run, and it folds with other sessions' GETs: a pipeline of reads
/// costs one trip to the store, not one per command. Stops at anything else (a partial command,
/// another command, an error), which the normal path then parses; nothing here is kept across
/// receives, so the session's own parse progress is untouched.
fn fold_gets(
    probe: &mut Args,
    rest: &[u8],
    limits: &Limits,
    first: &[u8],
) -> Option<(Vec<Vec<u8>>, usize)> {
    let mut keys = Vec::new();
    let mut used = 0;
    while keys.len() + 1 < FOLD_GETS_MAX {
        let mut progress = resp::Progress::default();
        match resp::parse_command_resuming(&rest[used..], limits, probe, &mut progress) {
            Ok(Some(consumed)) if is_get(probe) => {
                used += consumed;
                keys.push(probe[1].to_vec());
            }
            _ => break,
        }
    }
    if keys.is_empty() {
        return None;
    }
    keys.insert(0, first.to_vec());
    Some((keys, used))
}
