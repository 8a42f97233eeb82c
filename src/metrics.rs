//! The Prometheus `/metrics` endpoint, served off the rings by a small thread that accepts and
//! one short-lived thread per connection: the server's counters, the rings' statistics and the
//! per-command book ([`crate::cmdstats`]) in the OpenMetrics text format. The same port answers
//! the probes of load balancers and orchestrators: `/health` (the process is alive) and `/ready`
//! (send it new sessions: [`Shared::readiness`]).
//!
//! The port is often open to a whole network, so a peer gets little: a request head of at most
//! [`HEAD_MAX`] bytes, read within [`HEAD_DEADLINE`], an answer that must leave within
//! [`WRITE_DEADLINE`], and at most [`CONNECTIONS_MAX`] connections served at once (a new one
//! cuts off the oldest). A peer that stalls holds one connection's thread, never the probes of
//! the others.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cmdstats::CommandSummary;
use crate::shared::Shared;

/// Prometheus histogram bucket bounds, in seconds.
const BUCKETS_S: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Non-cumulative bucket counts of an HDR histogram (µs) at `BUCKETS_S`, plus +Inf (`f64::MAX`).
fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(BUCKETS_S.len() + 1);
    let mut below = 0u64;
    for bound in BUCKETS_S {
        let us = (bound * 1e6) as u64;
        let cumulative = h
            .iter_recorded()
            .filter(|v| v.value_iterated_to() <= us)
            .map(|v| v.count_at_value())
            .sum::<u64>();
        out.push((bound, cumulative - below));
        below = cumulative;
    }
    // prometheus-client writes the last bucket as `le="+Inf"` only for f64::MAX (INFINITY would
    // come out as `le="inf"`, which OpenMetrics does not allow).
    out.push((f64::MAX, h.len() - below));
    out
}

/// Renders every metric in the Prometheus (OpenMetrics) text format.
pub fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector(shared.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

struct ServerCollector(Arc<Shared>);

impl std::fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        metric
            .encode_family(labels)?
            .encode_counter::<NoLabelSet, u64, u64>(value, None)?;
    }
    Ok(())
}

/// Counts read as gauge values (gauges are signed in the encoder).
fn gauge_rows(rows: Vec<(Labels, u64)>) -> Vec<(Labels, i64)> {
    rows.into_iter()
        .map(|(labels, n)| (labels, n as i64))
        .collect()
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

impl Collector for ServerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ring_rows = |f: &dyn Fn(&ringport_ring::RingStats) -> u64| -> Vec<(Labels, u64)> {
            s.rings
                .iter()
                .enumerate()
                .map(|(i, r)| (vec![("ring", i.to_string())], f(r)))
                .collect()
        };
        let ring_gauge = |f: &dyn Fn(&ringport_ring::RingStats) -> u64| gauge_rows(ring_rows(f));
        gauge_family(
            &mut e,
            "ringport_sessions",
            "Open sessions, per ring",
            &ring_gauge(&|r| load(&r.sessions)),
        )?;
        gauge_family(
            &mut e,
            "ringport_sessions_direct",
            "Sockets held in the ring's table of registered files instead of by a descriptor (its sessions, and its own store connection for ring reads), per ring",
            &ring_gauge(&|r| load(&r.direct_sessions)),
        )?;
        counter_family(
            &mut e,
            "ringport_sessions_accepted",
            "Connections accepted, per ring",
            &ring_rows(&|r| load(&r.accepted)),
        )?;
        let c = &s.counters;
        let rejected = |f: &dyn Fn(&ringport_ring::RingStats) -> u64| {
            s.rings.iter().map(|r| f(r)).sum::<u64>()
        };
        counter_family(
            &mut e,
            "ringport_sessions_rejected",
            "Connections refused or closed by the server, by reason",
            &[
                (
                    vec![("reason", "max_sessions".into())],
                    rejected(&|r| load(&r.rejected_max_sessions)),
                ),
                (
                    vec![("reason", "auth_timeout".into())],
                    load(&c.auth_timeouts),
                ),
                (
                    vec![("reason", "request_timeout".into())],
                    load(&c.request_timeouts),
                ),
                (
                    vec![("reason", "auth_failures".into())],
                    load(&c.auth_failure_closes),
                ),
                (
                    vec![("reason", "idle_timeout".into())],
                    load(&c.idle_timeouts),
                ),
                (
                    vec![("reason", "output_buffer".into())],
                    load(&c.output_limit_closes),
                ),
                (
                    vec![("reason", "query_buffer".into())],
                    load(&c.query_limit_closes),
                ),
                (
                    vec![("reason", "protocol_error".into())],
                    load(&c.protocol_errors),
                ),
                (vec![("reason", "killed".into())], load(&c.killed)),
            ],
        )?;
        counter_family(
            &mut e,
            "ringport_accept_errors",
            "Failed accepts (EMFILE, ENFILE, ENOMEM...), per ring",
            &ring_rows(&|r| load(&r.accept_errors)),
        )?;
        counter_family(
            &mut e,
            "ringport_auth_failures",
            "Wrong passwords",
            &[(vec![], load(&c.auth_failures))],
        )?;
        counter_family(
            &mut e,
            "ringport_auth_rate_limited",
            "AUTH attempts refused unchecked by --auth-user-failures-per-minute",
            &[(vec![], load(&c.auth_rate_limited))],
        )?;

        // Worker pools: one row per pool and outcome.
        let pool_rows = |f: &dyn Fn(&crate::workers::WorkerStats) -> u64| -> Vec<(Labels, u64)> {
            s.workers
                .iter()
                .map(|p| (vec![("pool", p.name.clone())], f(&p.stats)))
                .collect()
        };
        for (name, help, value) in [
            (
                "ringport_worker_requests",
                "Commands sent to a worker pool",
                &(|w: &crate::workers::WorkerStats| load(&w.requests))
                    as &dyn Fn(&crate::workers::WorkerStats) -> u64,
            ),
            (
                "ringport_worker_timeouts",
                "Worker commands answered an error after the pool's timeout",
                &|w| load(&w.timeouts),
            ),
            (
                "ringport_worker_failed",
                "Worker commands answered an error because their process failed",
                &|w| load(&w.failed),
            ),
            (
                "ringport_worker_busy",
                "Worker commands answered -BUSY (every process full or down)",
                &|w| load(&w.busy),
            ),
            (
                "ringport_worker_restarts",
                "Worker processes restarted",
                &|w| load(&w.restarts),
            ),
        ] {
            counter_family(&mut e, name, help, &pool_rows(value))?;
        }
        gauge_family(
            &mut e,
            "ringport_worker_processes_up",
            "Worker processes running, per pool",
            &s.workers
                .iter()
                .map(|p| (vec![("pool", p.name.clone())], p.up() as i64))
                .collect::<Vec<_>>(),
        )?;

        let summaries = s.commands.summaries();
        let used: Vec<&CommandSummary> = summaries.iter().filter(|c| c.calls > 0).collect();
        counter_family(
            &mut e,
            "ringport_commands",
            "Commands executed, per command",
            &used
                .iter()
                .map(|c| (vec![("command", c.name.to_string())], c.calls))
                .collect::<Vec<_>>(),
        )?;
        counter_family(
            &mut e,
            "ringport_command_errors",
            "Commands answered with an error, per command",
            &used
                .iter()
                .map(|c| (vec![("command", c.name.to_string())], c.errors))
                .collect::<Vec<_>>(),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "ringport_command_latency_seconds",
                "Time from a command's parse to its reply being queued, per command",
                None,
                MetricType::Histogram,
            )?;
            for c in &used {
                let labels: Labels = vec![("command", c.name.to_string())];
                let sum = c.usec as f64 / 1e6;
                // The histogram's own count, not `calls`: the rings go on recording while the
                // summary is read, and a command recorded between the read of `calls` and that of
                // the buckets made `_count` and the `+Inf` bucket disagree.
                let count = c.latency.len();
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets(&c.latency), None)?;
            }
        }

        counter_family(
            &mut e,
            "ringport_ring_completions",
            "Completions reaped, per ring",
            &ring_rows(&|r| load(&r.completions)),
        )?;
        counter_family(
            &mut e,
            "ringport_ring_submissions",
            "Submissions made, per ring",
            &ring_rows(&|r| load(&r.submissions)),
        )?;
        counter_family(
            &mut e,
            "ringport_ring_enters",
            "io_uring_enter (or epoll_wait) calls, per ring",
            &ring_rows(&|r| load(&r.enters)),
        )?;
        counter_family(
            &mut e,
            "ringport_ring_buffers_released",
            "Output buffers a burst grew, given back once the session's output was sent, per ring",
            &ring_rows(&|r| load(&r.buffers_released)),
        )?;
        counter_family(
            &mut e,
            "ringport_ring_tls_errors",
            "TLS sessions closed because TLS failed (plain text on the TLS port, a bad or missing certificate), per ring",
            &ring_rows(&|r| load(&r.tls_errors)),
        )?;
        counter_family(
            &mut e,
            "ringport_ring_bufring_exhausted",
            "Receives that found the buffer ring empty (ENOBUFS), per ring",
            &ring_rows(&|r| load(&r.bufring_exhausted)),
        )?;
        counter_family(
            &mut e,
            "ringport_ring_cq_overflow",
            "Completion queue overflows seen, per ring",
            &ring_rows(&|r| load(&r.cq_overflow)),
        )?;
        counter_family(
            &mut e,
            "ringport_ring_messages",
            "Pool results delivered, per ring",
            &ring_rows(&|r| load(&r.messages)),
        )?;

        let pools = [
            ("compute", s.compute.stats()),
            ("auth", s.auth.stats()),
            ("store", s.store.stats()),
        ];
        gauge_family(
            &mut e,
            "ringport_pool_queue_depth",
            "Jobs queued or running, per pool",
            &pools
                .iter()
                .map(|(n, p)| {
                    (
                        vec![("pool", n.to_string())],
                        p.depth.load(Ordering::Relaxed) as i64,
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        gauge_family(
            &mut e,
            "ringport_pool_jobs_running",
            "Jobs running now, per pool",
            &pools
                .iter()
                .map(|(n, p)| {
                    (
                        vec![("pool", n.to_string())],
                        p.running.load(Ordering::Relaxed) as i64,
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        counter_family(
            &mut e,
            "ringport_pool_busy_rejections",
            "Jobs refused with -BUSY because the pool was full, per pool",
            &pools
                .iter()
                .map(|(n, p)| (vec![("pool", n.to_string())], load(&p.rejected)))
                .collect::<Vec<_>>(),
        )?;
        counter_family(
            &mut e,
            "ringport_pool_jobs",
            "Jobs finished, per pool",
            &pools
                .iter()
                .map(|(n, p)| (vec![("pool", n.to_string())], load(&p.completed)))
                .collect::<Vec<_>>(),
        )?;
        counter_family(
            &mut e,
            "ringport_pool_job_microseconds",
            "Time jobs spent running, per pool",
            &pools
                .iter()
                .map(|(n, p)| (vec![("pool", n.to_string())], load(&p.busy_us)))
                .collect::<Vec<_>>(),
        )?;
        let st = s.store.store_stats();
        counter_family(
            &mut e,
            "ringport_store_errors",
            "Store calls that failed, by kind",
            &[
                (vec![("kind", "unavailable".into())], load(&st.unavailable)),
                (vec![("kind", "other".into())], load(&st.errors)),
            ],
        )?;
        counter_family(
            &mut e,
            "ringport_store_reconnects",
            "Store connections re-established after a failure",
            &[(vec![], s.store.reconnects())],
        )?;
        // Per store connection: its number, and its lane (the read lane takes only GETs).
        let conns = |value: &dyn Fn(&crate::storepool::WorkerStats) -> u64| {
            st.workers
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let labels = vec![("conn", i.to_string()), ("lane", s.store.lane(i).into())];
                    (labels, value(w))
                })
                .collect::<Vec<_>>()
        };
        gauge_family(
            &mut e,
            "ringport_store_in_flight",
            "Store requests in flight, per store connection (the batch its worker is running)",
            &gauge_rows(conns(&|w| load(&w.in_flight))),
        )?;
        counter_family(
            &mut e,
            "ringport_store_conn_batches",
            "Batches run, per store connection",
            &conns(&|w| load(&w.batches)),
        )?;
        counter_family(
            &mut e,
            "ringport_store_conn_jobs",
            "Store commands run in those batches, per store connection (divided by its batches: \
             its mean batch size)",
            &conns(&|w| load(&w.jobs)),
        )?;
        counter_family(
            &mut e,
            "ringport_store_batches",
            "Batches of store jobs run (the jobs one worker took off the queue at once)",
            &[(vec![], load(&st.batches))],
        )?;
        counter_family(
            &mut e,
            "ringport_store_batched_jobs",
            "Store jobs run in those batches (divided by batches: the mean batch size)",
            &[(vec![], load(&st.batched_jobs))],
        )?;
        gauge_family(
            &mut e,
            "ringport_store_ring_links_up",
            "Rings whose own store connection for GETs is up (ring reads)",
            &[(vec![], load(&st.ring_links_up) as i64)],
        )?;
        counter_family(
            &mut e,
            "ringport_store_ring_batches",
            "Batches of GETs the rings sent on their own store connections",
            &[(vec![], load(&st.ring_batches))],
        )?;
        counter_family(
            &mut e,
            "ringport_store_ring_gets",
            "GETs those batches carried (divided by batches: the mean batch size)",
            &[(vec![], load(&st.ring_gets))],
        )?;
        // Per ring's own connection (ring reads), labelled by its ring.
        let links = |value: &dyn Fn(&crate::storepool::LinkStats) -> u64| {
            st.links
                .get()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(ring, l)| (vec![("ring", ring.to_string())], value(l)))
                .collect::<Vec<_>>()
        };
        let link_gauge =
            |value: &dyn Fn(&crate::storepool::LinkStats) -> u64| gauge_rows(links(value));
        gauge_family(
            &mut e,
            "ringport_store_link_up",
            "Whether the ring's own store connection for GETs is up (ring reads)",
            &link_gauge(&|l| u64::from(l.up.load(Ordering::Relaxed))),
        )?;
        gauge_family(
            &mut e,
            "ringport_store_link_in_flight",
            "GETs sent on the ring's own store connection and not answered yet",
            &link_gauge(&|l| load(&l.in_flight)),
        )?;
        gauge_family(
            &mut e,
            "ringport_store_link_batches_in_flight",
            "Batches in flight on the ring's own store connection (its pipeline depth)",
            &link_gauge(&|l| load(&l.batches_in_flight)),
        )?;
        gauge_family(
            &mut e,
            "ringport_store_link_waiting",
            "GETs waiting on the ring for the batch out to be answered",
            &link_gauge(&|l| load(&l.waiting)),
        )?;
        counter_family(
            &mut e,
            "ringport_store_link_batches",
            "Batches the ring sent on its own store connection",
            &links(&|l| load(&l.batches)),
        )?;
        counter_family(
            &mut e,
            "ringport_store_link_gets",
            "GETs those batches carried, per ring (divided by its batches: its mean batch size)",
            &links(&|l| load(&l.gets)),
        )?;
        Ok(())
    }
}

/// One HTTP/1.1 response that closes the connection.
fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The content type of the probes' and the errors' plain answers.
const TEXT: &str = "text/plain; charset=utf-8";

const METHOD_NOT_ALLOWED: &str = "method not allowed: use GET\n";

/// The answer to one request line's method and path.
fn route(method: &str, path: &str, shared: &Arc<Shared>) -> String {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    match (method, path) {
        ("GET", "/metrics") => response(
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &render(shared),
        ),
        // Liveness: this thread answers, so the process is not wedged as a whole. Kubernetes
        // restarts a pod whose liveness probe fails, so it stays 200 through a drain.
        ("GET", "/health") => response("200 OK", TEXT, "ok\n"),
        // Readiness: whether a load balancer should send new sessions here.
        ("GET", "/ready") => match shared.readiness() {
            Ok(()) => response("200 OK", TEXT, "ready\n"),
            Err(why) => response(
                "503 Service Unavailable",
                TEXT,
                &format!("not ready: {why}\n"),
            ),
        },
        // A known path asked with another method (POST, HEAD, ...): 405 says what would work,
        // where 404 would send an operator looking for a wrong path.
        (_, "/metrics" | "/health" | "/ready") => format!(
            "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Type: {TEXT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{METHOD_NOT_ALLOWED}",
            METHOD_NOT_ALLOWED.len()
        ),
        _ => response(
            "404 Not Found",
            TEXT,
            "not found: try /metrics, /health or /ready\n",
        ),
    }
}

/// Connections answered at once; a newer one cuts off the oldest, so a flood holds a bounded
/// number of threads and buffers and cannot keep a probe out.
pub const CONNECTIONS_MAX: usize = 32;
/// A request's head (its request line and headers) must arrive within this long.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// The largest request head read; a longer one is answered 431.
pub const HEAD_MAX: usize = 8 * 1024;
/// The whole answer must leave within this long, however slowly the peer reads.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `GET /metrics`, `/health` and `/ready` on `addr`; returns the bound address.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let live = Arc::new(Live::default());
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Some(id) = live.admit(&stream) else {
                    continue;
                };
                let (shared, live_too) = (shared.clone(), live.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        answer(stream, &shared);
                        live_too.leave(id);
                    });
                if spawned.is_err() {
                    live.leave(id);
                }
            }
        })?;
    Ok(local)
}

/// The connections being answered, oldest first, each with a handle on its socket.
#[derive(Default)]
struct Live(Mutex<(u64, VecDeque<(u64, TcpStream)>)>);

impl Live {
    /// Takes in a new connection; at [`CONNECTIONS_MAX`] the oldest is cut off to make room.
    /// Refusing the new one instead let 32 silent peers, renewed every 5 s, keep `/health`
    /// and `/ready` unanswered for good (an instance out of its load balancer); a probe is
    /// answered within milliseconds, so it is never the oldest unless 32 connections arrived
    /// while it was being answered. `None` when the socket cannot be shared with the list.
    fn admit(&self, stream: &TcpStream) -> Option<u64> {
        let handle = stream.try_clone().ok()?;
        let mut guard = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        let (next_id, conns) = &mut *guard;
        if conns.len() >= CONNECTIONS_MAX {
            if let Some((_, oldest)) = conns.pop_front() {
                // Its thread's read or write fails at once, and it leaves.
                let _ = oldest.shutdown(Shutdown::Both);
            }
        }
        let id = *next_id;
        *next_id += 1;
        conns.push_back((id, handle));
        Some(id)
    }

    /// Forgets a connection that was answered, or cut off.
    fn leave(&self, id: u64) {
        let mut guard = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        guard.1.retain(|(live, _)| *live != id);
    }
}

/// Reads one request and answers it, within the deadlines.
fn answer(mut stream: TcpStream, shared: &Arc<Shared>) {
    let reply = match read_head(&mut stream) {
        Head::Complete(head) => {
            let head = String::from_utf8_lossy(&head);
            let mut parts = head.lines().next().unwrap_or("").split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            route(method, path, shared)
        }
        Head::TooLarge => response(
            "431 Request Header Fields Too Large",
            TEXT,
            "request head too large\n",
        ),
        Head::Gone => return,
    };
    write_within(
        &mut stream,
        reply.as_bytes(),
        Instant::now() + WRITE_DEADLINE,
    );
}

/// What came of reading a request head.
enum Head {
    /// The request line and headers, up to the blank line (or the peer's end of input).
    Complete(Vec<u8>),
    /// No blank line in the first `HEAD_MAX` bytes.
    TooLarge,
    /// Nothing to answer: the deadline passed, the connection failed, or it closed empty.
    Gone,
}

fn read_head(stream: &mut TcpStream) -> Head {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Head::Complete(head);
        }
        if head.len() >= HEAD_MAX {
            return Head::TooLarge;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Head::Gone;
        }
        let room = (HEAD_MAX - head.len()).min(buf.len());
        match stream.read(&mut buf[..room]) {
            // A peer that ends its input after the request line has said all it will.
            Ok(0) if head.is_empty() => return Head::Gone,
            Ok(0) => return Head::Complete(head),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Head::Gone,
        }
    }
}

/// Where a request head ends: at its first empty line (CRLF or bare LF line ends).
fn head_end(head: &[u8]) -> Option<usize> {
    head.windows(2)
        .position(|w| w == b"\n\n")
        .into_iter()
        .chain(head.windows(4).position(|w| w == b"\r\n\r\n"))
        .min()
}

/// Writes `bytes` unless `deadline` passes first (then the connection is dropped).
fn write_within(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_write_timeout(Some(left)).is_err() {
            return;
        }
        match stream.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdstats::new_histogram;

    #[test]
    fn buckets_split_an_hdr_histogram() {
        let mut h = new_histogram();
        h.record(5).unwrap(); // 5 µs: first bucket (10 µs)
        h.record(300).unwrap(); // 0.3 ms: the 0.5 ms bucket
        h.record(20_000_000).unwrap(); // 20 s: +Inf
        let b = buckets(&h);
        assert_eq!(b[0], (0.00001, 1));
        let half_ms = b.iter().position(|(bound, _)| *bound == 0.0005).unwrap();
        assert_eq!(b[half_ms].1, 1);
        // The last bucket is the one prometheus-client writes as le="+Inf".
        assert_eq!(*b.last().unwrap(), (f64::MAX, 1));
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 3);
    }

    /// `/ready` follows the lifecycle, `/health` does not: a load balancer stops sending new
    /// sessions when a drain begins, while an orchestrator's liveness probe must not restart
    /// the draining process.
    #[test]
    fn ready_follows_start_and_drain_and_health_stays_up() {
        use crate::shared::Phase;
        let data = tempfile::tempdir().unwrap();
        let server = crate::testkit::TestServer::start(data.path(), &[]);
        let shared = &server.shared;
        let status = |path: &str| {
            let text = route("GET", path, shared);
            text.lines().next().unwrap_or_default().to_string()
        };
        assert_eq!(status("/ready"), "HTTP/1.1 503 Service Unavailable");
        assert!(route("GET", "/ready", shared)
            .ends_with("not ready: starting: not every ring listens yet\n"));
        assert_eq!(status("/health"), "HTTP/1.1 200 OK");

        shared.lifecycle.set(Phase::Serving);
        // The store workers mark their connections up as they start.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while status("/ready") != "HTTP/1.1 200 OK" {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                route("GET", "/ready", shared)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(status("/ready?verbose"), "HTTP/1.1 200 OK");

        shared.lifecycle.set(Phase::Draining);
        assert_eq!(status("/ready"), "HTTP/1.1 503 Service Unavailable");
        assert!(route("GET", "/ready", shared).contains("not ready: draining"));
        assert_eq!(status("/health"), "HTTP/1.1 200 OK");
        assert_eq!(status("/nothing"), "HTTP/1.1 404 Not Found");
        assert_eq!(
            route("POST", "/ready", shared).lines().next(),
            Some("HTTP/1.1 405 Method Not Allowed")
        );
    }
}
