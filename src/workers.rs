//! External commands: supervised pools of worker processes, for command logic written in any
//! language (docs/workers.md has the protocol). The rings keep every session and answer their
//! own commands; a command a pool serves is sent to one of its processes as a RESP array
//! `[id, user, command, args...]` on the process's stdin, and the process answers
//! `[id, reply]` on its stdout, in any order, with many requests in flight.
//!
//! Per process: a writer thread (a ring never blocks on a pipe) and a reader thread (matches
//! replies to requests by id and sends each to its session's ring). Per pool: a supervisor
//! thread that answers requests past their timeout, restarts a process that died, wrote
//! something that is not a reply, or hung (no reply for a whole timeout while requests waited),
//! with back-off, and stops the processes on drain.
//!
//! What a client sees: the worker's reply, re-encoded for its protocol (RESP2 or RESP3); or, for
//! that command only, `-BUSY` when every process has `in-flight` requests, or an error when the
//! request timed out or its process failed. The session, its ring and every other command go on.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::{parse_duration, WorkerConfig};
use crate::msg::Replier;
use crate::resp::{self, Proto, Value};

/// How often the supervisor looks at timeouts and processes to restart.
const TICK: Duration = Duration::from_millis(10);
/// The first restart comes this long after a failure; each failure in a row doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// On drain, how long processes get to exit after their stdin closes before they are killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A pool's counters, for INFO and /metrics.
#[derive(Default)]
pub struct WorkerStats {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    /// Commands answered an error because their process failed.
    pub failed: AtomicU64,
    pub timeouts: AtomicU64,
    pub busy: AtomicU64,
    pub restarts: AtomicU64,
}

/// One pool of worker processes.
pub struct WorkerPool {
    pub name: String,
    run: Vec<String>,
    in_flight_limit: usize,
    timeout: Duration,
    procs: Vec<Proc>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    pub stats: WorkerStats,
}

struct Proc {
    in_flight: AtomicUsize,
    inner: Mutex<ProcInner>,
}

#[derive(Default)]
struct ProcInner {
    /// Counts starts, so a reader of an old process cannot touch the new one.
    generation: u64,
    /// To the writer thread; `None` while the process is down.
    requests: Option<Sender<Vec<u8>>>,
    child: Option<Child>,
    pending: HashMap<u64, Pending>,
    last_reply: Option<Instant>,
    restart_at: Option<Instant>,
    backoff: Duration,
}

struct Pending {
    replier: Replier,
    proto: Proto,
    deadline: Instant,
}

impl WorkerPool {
    /// Starts the pool's processes and its supervisor. A program that cannot be started at all
    /// is an error here, at start-up, rather than a pool that never answers.
    pub fn start(config: &WorkerConfig) -> Result<Arc<WorkerPool>, String> {
        let timeout = parse_duration(&config.timeout)?;
        let pool = Arc::new(WorkerPool {
            name: config.name.clone(),
            run: config.run.clone(),
            in_flight_limit: config.in_flight,
            timeout,
            procs: (0..config.processes)
                .map(|_| Proc {
                    in_flight: AtomicUsize::new(0),
                    inner: Mutex::new(ProcInner {
                        backoff: FIRST_BACKOFF,
                        ..ProcInner::default()
                    }),
                })
                .collect(),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            stats: WorkerStats::default(),
        });
        for index in 0..pool.procs.len() {
            pool.spawn(index).map_err(|e| {
                format!(
                    "worker pool '{}': cannot run {:?}: {e}",
                    pool.name, pool.run
                )
            })?;
        }
        let supervised = pool.clone();
        std::thread::Builder::new()
            .name(format!("workers-{}", pool.name))
            .spawn(move || supervised.supervise())
            .map_err(|e| format!("cannot start a supervisor thread: {e}"))?;
        Ok(pool)
    }

    /// Processes running now.
    pub fn up(&self) -> usize {
        self.procs
            .iter()
            .filter(|p| lock(&p.inner).requests.is_some())
            .count()
    }

    /// Requests in flight now, over all processes.
    pub fn in_flight(&self) -> usize {
        self.procs.iter().map(|p| p.in_flight.load(Relaxed)).sum()
    }

    pub fn processes(&self) -> usize {
        self.procs.len()
    }

    /// Sends a command to the least busy process. `Err` gives the replier back when every
    /// process is full or down: the caller answers `-BUSY`.
    pub fn submit(
        &self,
        user: &str,
        command: &str,
        args: &[Vec<u8>],
        proto: Proto,
        replier: Replier,
    ) -> Result<(), Replier> {
        self.stats.requests.fetch_add(1, Relaxed);
        let mut order: Vec<usize> = (0..self.procs.len()).collect();
        order.sort_by_key(|&i| self.procs[i].in_flight.load(Relaxed));
        let id = self.next_id.fetch_add(1, Relaxed);
        let mut request = Vec::with_capacity(64);
        resp::array_len(&mut request, args.len() + 2);
        resp::bulk(&mut request, id.to_string().as_bytes());
        resp::bulk(&mut request, user.as_bytes());
        resp::bulk(&mut request, command.as_bytes());
        for arg in &args[1..] {
            resp::bulk(&mut request, arg);
        }
        for index in order {
            let proc = &self.procs[index];
            if proc.in_flight.load(Relaxed) >= self.in_flight_limit {
                continue;
            }
            let mut inner = lock(&proc.inner);
            let Some(requests) = inner.requests.clone() else {
                continue;
            };
            if requests.send(request.clone()).is_err() {
                continue;
            }
            proc.in_flight.fetch_add(1, Relaxed);
            inner.pending.insert(
                id,
                Pending {
                    replier,
                    proto,
                    deadline: Instant::now() + self.timeout,
                },
            );
            return Ok(());
        }
        self.stats.busy.fetch_add(1, Relaxed);
        Err(replier)
    }

    /// Closes every process's stdin (a worker exits at EOF), waits a little, kills the rest.
    /// Called after the rings drained, so nothing waits on a reply.
    pub fn shutdown(&self) {
        self.stopping.store(true, Relaxed);
        let mut children = Vec::new();
        for proc in &self.procs {
            let mut inner = lock(&proc.inner);
            inner.requests = None;
            inner.generation += 1;
            fail_pending(
                &mut inner,
                &proc.in_flight,
                &self.stats,
                "the server is stopping",
            );
            children.extend(inner.child.take());
        }
        let deadline = Instant::now() + EXIT_GRACE;
        for mut child in children {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(TICK);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(self: &Arc<Self>, index: usize) -> std::io::Result<()> {
        let mut child = Command::new(&self.run[0])
            .args(&self.run[1..])
            // The first admin's password is the server's, not a worker's business.
            .env_remove("RINGPORT_ADMIN_PASSWORD")
            .env("RINGPORT_WORKER_POOL", &self.name)
            .env("RINGPORT_WORKER_INDEX", index.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let generation = {
            let mut inner = lock(&self.procs[index].inner);
            inner.generation += 1;
            inner.requests = Some(tx);
            inner.child = Some(child);
            inner.restart_at = None;
            inner.last_reply = Some(Instant::now());
            inner.generation
        };
        std::thread::Builder::new()
            .name(format!("worker-{}-{index}-w", self.name))
            .spawn(move || {
                let mut stdin = BufWriter::new(stdin);
                while let Ok(request) = rx.recv() {
                    let mut ok = stdin.write_all(&request).is_ok();
                    // Everything queued meanwhile goes in the same write.
                    while let (true, Ok(more)) = (ok, rx.try_recv()) {
                        ok = stdin.write_all(&more).is_ok();
                    }
                    if !ok || stdin.flush().is_err() {
                        // The reader sees the process go and fails its requests.
                        return;
                    }
                }
            })?;
        let pool = self.clone();
        std::thread::Builder::new()
            .name(format!("worker-{}-{index}-r", self.name))
            .spawn(move || {
                let why = pool.read_replies(index, generation, stdout);
                pool.process_failed(index, generation, &why);
            })?;
        Ok(())
    }

    /// Hands each reply to its session until the process ends or breaks the protocol; returns
    /// why it stopped.
    fn read_replies(&self, index: usize, generation: u64, mut stdout: ChildStdout) -> String {
        let proc = &self.procs[index];
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            loop {
                let (value, used) = match resp::parse_value(&buf) {
                    Ok(Some(parsed)) => parsed,
                    Ok(None) => break,
                    Err(e) => return format!("it wrote something that is not RESP ({e})"),
                };
                buf.drain(..used);
                let (id, reply) = match value {
                    Value::Array(mut items) if items.len() == 2 => {
                        let reply = items.pop().expect("two items");
                        match items.pop().expect("one item") {
                            Value::Integer(id) if id > 0 => (id as u64, reply),
                            Value::Bulk(id) => {
                                match std::str::from_utf8(&id).ok().and_then(|t| t.parse().ok()) {
                                    Some(id) => (id, reply),
                                    None => {
                                        return "it answered with an id that is not a number".into()
                                    }
                                }
                            }
                            _ => return "it answered with an id that is not a number".into(),
                        }
                    }
                    _ => return "it wrote something that is not [id, reply]".into(),
                };
                let mut inner = lock(&proc.inner);
                if inner.generation != generation {
                    return "replaced".into();
                }
                inner.last_reply = Some(Instant::now());
                inner.backoff = FIRST_BACKOFF;
                // A request that timed out is gone: its late reply is dropped.
                if let Some(pending) = inner.pending.remove(&id) {
                    drop(inner);
                    proc.in_flight.fetch_sub(1, Relaxed);
                    self.stats.replies.fetch_add(1, Relaxed);
                    let mut bytes = Vec::new();
                    resp::encode_value(&mut bytes, &reply, pending.proto);
                    pending.replier.reply(bytes);
                }
            }
            match stdout.read(&mut chunk) {
                Ok(0) => return "it exited".into(),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return format!("reading its output failed: {e}"),
            }
        }
    }

    /// Takes a failed process down: its requests get an error, and the supervisor restarts it
    /// after the back-off.
    fn process_failed(&self, index: usize, generation: u64, why: &str) {
        let proc = &self.procs[index];
        let mut inner = lock(&proc.inner);
        if inner.generation != generation || self.stopping.load(Relaxed) {
            return;
        }
        inner.generation += 1;
        inner.requests = None;
        if let Some(mut child) = inner.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let message = format!("worker '{}' failed: {why}", self.name);
        fail_pending(&mut inner, &proc.in_flight, &self.stats, &message);
        inner.restart_at = Some(Instant::now() + inner.backoff);
        tracing::warn!(pool = %self.name, process = index, reason = why, backoff = ?inner.backoff,
            "worker process failed; its requests got an error; restarting it after the back-off");
        inner.backoff = (inner.backoff * 2).min(MAX_BACKOFF);
    }

    fn supervise(self: Arc<Self>) {
        while !self.stopping.load(Relaxed) {
            std::thread::sleep(TICK);
            let now = Instant::now();
            for index in 0..self.procs.len() {
                let proc = &self.procs[index];
                let mut inner = lock(&proc.inner);
                let expired: Vec<u64> = inner
                    .pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                // Hung: not one reply since a request that timed out was sent. A process that
                // goes on answering others while one request takes too long is not.
                let first_sent = expired
                    .iter()
                    .map(|id| inner.pending[id].deadline - self.timeout)
                    .min();
                let hung = first_sent.is_some_and(|sent| {
                    inner.requests.is_some() && inner.last_reply.is_none_or(|t| t < sent)
                });
                for id in &expired {
                    let pending = inner.pending.remove(id).expect("listed above");
                    proc.in_flight.fetch_sub(1, Relaxed);
                    self.stats.timeouts.fetch_add(1, Relaxed);
                    pending.replier.reply(error_reply(&format!(
                        "worker '{}' timed out after {:?}",
                        self.name, self.timeout
                    )));
                }
                let generation = inner.generation;
                let restart =
                    inner.requests.is_none() && inner.restart_at.is_some_and(|at| at <= now);
                drop(inner);
                if hung {
                    self.process_failed(
                        index,
                        generation,
                        "it answered nothing for a whole timeout",
                    );
                } else if restart {
                    self.stats.restarts.fetch_add(1, Relaxed);
                    if let Err(e) = self.spawn(index) {
                        let mut inner = lock(&proc.inner);
                        inner.restart_at = Some(now + inner.backoff);
                        tracing::error!(pool = %self.name, process = index, error = %e, "cannot restart a worker process");
                        inner.backoff = (inner.backoff * 2).min(MAX_BACKOFF);
                    } else {
                        tracing::info!(pool = %self.name, process = index, "worker process restarted");
                    }
                }
            }
        }
    }
}

fn lock(inner: &Mutex<ProcInner>) -> MutexGuard<'_, ProcInner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn error_reply(message: &str) -> Vec<u8> {
    let mut reply = Vec::new();
    resp::error(&mut reply, format!("ERR {message}").as_bytes());
    reply
}

fn fail_pending(inner: &mut ProcInner, in_flight: &AtomicUsize, stats: &WorkerStats, why: &str) {
    for (_, pending) in inner.pending.drain() {
        in_flight.fetch_sub(1, Relaxed);
        stats.failed.fetch_add(1, Relaxed);
        pending.replier.reply(error_reply(why));
    }
}
