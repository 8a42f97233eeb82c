//! What every ring and pool job shares, read-mostly: the run-time settings, the pools, the user
//! table and the auth caches, the rings' mailboxes and statistics, the server-wide counters.
//!
//! Kept apart from start-up so that sessions, commands, INFO and `/metrics` can all read it
//! without importing the module that starts them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringport_ring::{Features, RingStats};

use crate::auth::{AuthLanes, Delayer, FailureLimiter, VerifiedCache, VerifyTime};
use crate::cmdstats::CommandBook;
use crate::config::ServeArgs;
use crate::msg::Msg;
use crate::pool::ComputePool;
use crate::storepool::StorePool;
use crate::table::{CommandIndex, Table, NO_COMMAND};
use crate::userdir::UserDirectory;

/// Settings the sessions consult at run time.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub auth_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub store_timeout: Duration,
    pub max_sessions: usize,
    pub proto_max_bulk_len: usize,
    pub max_output_buffer: usize,
    pub max_query_buffer: usize,
    /// Before AUTH: arguments per command, bytes per bulk (and per inline line), bytes of
    /// unprocessed input.
    pub preauth_max_args: usize,
    pub preauth_max_bulk_len: usize,
    pub preauth_max_query_buffer: usize,
    pub max_auth_failures: u32,
    pub auth_failure_delay: Duration,
    /// For INFO memory: the embedded store's page cache, and each ring's receive buffers.
    pub embedded_cache_size: usize,
    pub recv_buffer_bytes: usize,
    pub enable_debug_command: bool,
}

/// Server-wide counters that are not per ring.
#[derive(Debug, Default)]
pub struct Counters {
    pub auth_failures: AtomicU64,
    pub auth_timeouts: AtomicU64,
    pub request_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub output_limit_closes: AtomicU64,
    pub query_limit_closes: AtomicU64,
    pub auth_failure_closes: AtomicU64,
    pub auth_rate_limited: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub killed: AtomicU64,
    pub unknown_commands: AtomicU64,
}

/// Where the server is in its life, as a load balancer or an orchestrator asks (`/ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Rings are being set up: nothing listens yet, or not every ring does.
    Starting = 0,
    /// Every ring listens.
    Serving = 1,
    /// SIGTERM or SIGINT arrived: new sessions belong elsewhere, even while the rings still
    /// accept during `--drain-grace`.
    Draining = 2,
}

/// The [`Phase`], set by start-up and the signal handler, read by the metrics thread.
#[derive(Debug, Default)]
pub struct Lifecycle(AtomicU8);

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }
}

/// What every ring and pool job shares, read-mostly.
pub struct Shared {
    pub config: RuntimeConfig,
    pub compute: ComputePool,
    /// AUTH's argon2id verifications, apart from `compute` so heavy commands cannot delay them.
    pub auth: ComputePool,
    /// The verifications waiting for `auth`, logins nobody guesses at first.
    pub auth_lanes: AuthLanes,
    pub store: StorePool,
    /// Every user, held in memory and kept current by the store's backend: AUTH reads it here,
    /// so it works while the store is down.
    pub users: Arc<UserDirectory>,
    /// The `[[worker]]` pools (INFO reports them; the server stops them after the drain).
    pub workers: Vec<Arc<crate::workers::WorkerPool>>,
    pub auth_cache: VerifiedCache,
    /// Failed AUTH attempts per (address, user) and per user per minute.
    pub auth_limiter: FailureLimiter,
    /// Answers slowed AUTH failures late.
    pub auth_delayer: Delayer,
    /// How long an argon2id verification takes: an unknown user's WRONGPASS waits as long.
    pub auth_verify_time: VerifyTime,
    pub rings: Vec<Arc<RingStats>>,
    /// The probed io_uring features; `None` on the epoll backend.
    pub features: Option<Features>,
    pub backend_name: &'static str,
    pub cores: usize,
    pub listen_addr: SocketAddr,
    pub started: Instant,
    pub next_client_id: AtomicU64,
    pub counters: Counters,
    pub version_line: String,
    /// Every ring's mailbox, for ring-wide queries (CLIENT LIST, CLIENT KILL).
    pub ring_senders: Vec<ringport_ring::Sender<Msg>>,
    /// Rate limits for log lines about refused or closed sessions, per reason.
    log_limiters:
        std::sync::Mutex<std::collections::HashMap<&'static str, ringport_ring::LogLimiter>>,
    /// Every command this server knows (built-in, from the config file, from the program).
    pub table: Arc<Table>,
    /// GET's row, for the runs of GETs sessions fold into one store job.
    pub get_command: CommandIndex,
    /// Per ring, per command calls, errors and latency.
    pub commands: CommandBook,
    /// Starting, serving or draining: what `/ready` reports.
    pub lifecycle: Lifecycle,
}

impl Shared {
    /// Closes the sessions `filter` selects on every ring; returns how many closed. Blocks until
    /// every ring answered, at most 2 s: call it from a pool thread, never from a ring.
    pub fn kill_sessions(&self, filter: &crate::msg::KillFilter) -> u64 {
        let (tx, rx) = crossbeam_channel::unbounded();
        for ring in &self.ring_senders {
            ring.send_ring(Msg::Kill(filter.clone(), tx.clone()));
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut killed = 0u64;
        for _ in 0..self.ring_senders.len() {
            match rx.recv_deadline(deadline) {
                Ok(n) => killed += n,
                Err(_) => break,
            }
        }
        killed
    }

    /// Everything the rings and jobs share, from the `serve` settings. One ring per sender.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &ServeArgs,
        compute: ComputePool,
        auth: ComputePool,
        store: StorePool,
        users: Arc<UserDirectory>,
        ring_senders: Vec<ringport_ring::Sender<Msg>>,
        features: Option<Features>,
        cores: usize,
        listen_addr: SocketAddr,
        table: Arc<Table>,
    ) -> Shared {
        // A test server may have no ring at all; statistics still need a slot.
        let ring_count = ring_senders.len().max(1);
        Shared {
            ring_senders,
            config: RuntimeConfig {
                auth_timeout: args.auth_timeout,
                idle_timeout: args.idle_timeout,
                request_timeout: args.request_timeout,
                store_timeout: args.store_timeout,
                max_sessions: args.max_sessions,
                proto_max_bulk_len: args.proto_max_bulk_len,
                max_output_buffer: args.max_output_buffer,
                max_query_buffer: args.max_query_buffer.max(args.proto_max_bulk_len + 65536),
                // AUTH user password must fit, and a bulk length line must fit the line limit.
                preauth_max_args: args.preauth_max_args.max(3),
                preauth_max_bulk_len: args
                    .preauth_max_bulk_len
                    .min(args.proto_max_bulk_len)
                    .max(64),
                preauth_max_query_buffer: args.preauth_max_query_buffer.max(64 * 1024),
                max_auth_failures: args.max_auth_failures.max(1),
                auth_failure_delay: args.auth_failure_delay,
                embedded_cache_size: args.embedded_cache_size,
                recv_buffer_bytes: {
                    let incremental = features.as_ref().is_some_and(|f| f.incremental_buffers);
                    let (count, size) = args.recv_buffer_shape(incremental);
                    usize::from(count) * size
                },
                enable_debug_command: args.enable_debug_command,
            },
            compute,
            auth,
            auth_lanes: AuthLanes::default(),
            store,
            users,
            workers: Vec::new(),
            auth_cache: VerifiedCache::new(100_000),
            auth_limiter: FailureLimiter::new(
                args.auth_failures_per_minute,
                args.auth_user_failures_per_minute,
                100_000,
            ),
            auth_delayer: Delayer::default(),
            auth_verify_time: VerifyTime::measure(),
            rings: (0..ring_count).map(|_| Arc::default()).collect(),
            backend_name: if features.is_some() {
                "io_uring"
            } else {
                "epoll"
            },
            features,
            cores,
            listen_addr,
            started: Instant::now(),
            next_client_id: AtomicU64::new(1),
            counters: Counters::default(),
            version_line: format!("ringport {}", env!("CARGO_PKG_VERSION")),
            commands: CommandBook::new(ring_count, &table),
            get_command: table.index_of("get").map_or(NO_COMMAND, Table::compact),
            table,
            log_limiters: Default::default(),
            lifecycle: Lifecycle::default(),
        }
    }

    /// Counts one executed command, as a session keeps it (its latency runs from parse to
    /// reply queued); [`NO_COMMAND`] counts nothing.
    pub fn record_command(
        &self,
        ring: usize,
        command: CommandIndex,
        started: Instant,
        failed: bool,
    ) {
        if command != NO_COMMAND {
            self.commands
                .record(ring, usize::from(command), started, failed);
        }
    }

    /// [`Shared::record_command`] for the command at row `index` of the table.
    pub fn record_command_at(&self, ring: usize, index: usize, started: Instant, failed: bool) {
        self.commands.record(ring, index, started, failed);
    }

    /// Counts a command name that is not in the table.
    pub fn record_unknown(&self, _ring: usize) {
        self.counters
            .unknown_commands
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a line about `reason` may be logged now (at most one per second per reason);
    /// `Some(n)`: log it, mentioning the `n` suppressed since the last one.
    pub fn log_allowed(&self, reason: &'static str) -> Option<u64> {
        let mut limiters = self.log_limiters.lock().ok()?;
        limiters.entry(reason).or_default().allow(Instant::now())
    }

    /// The current minute since start, for per-minute limits.
    pub fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs() / 60
    }

    /// Commands executed so far.
    pub fn total_commands(&self) -> u64 {
        self.commands.total_calls() + self.counters.unknown_commands.load(Ordering::Relaxed)
    }

    /// Whether new sessions should be sent here: every ring listens, no drain has begun, and at
    /// least one store connection is up (a session on an instance without one could
    /// authenticate, users being in memory, but every store command would fail). `Err` says
    /// why not, for the operator reading `/ready`.
    pub fn readiness(&self) -> Result<(), &'static str> {
        match self.lifecycle.phase() {
            Phase::Starting => Err("starting: not every ring listens yet"),
            Phase::Draining => Err("draining: shutting down, send new sessions elsewhere"),
            Phase::Serving => {
                let workers = &self.store.store_stats().workers;
                if workers.iter().any(|w| w.up.load(Ordering::Relaxed)) {
                    Ok(())
                } else {
                    Err("no store connection is up")
                }
            }
        }
    }
}
