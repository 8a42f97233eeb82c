//! `INFO`: the server's state as Redis-style `field:value` lines, by section.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::shared::Shared;

/// The Redis version ringport answers as in HELLO and INFO, for clients that gate features on it.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

const SECTIONS: [&str; 11] = [
    "server",
    "clients",
    "memory",
    "rings",
    "stats",
    "compute",
    "store",
    "workers",
    "commandstats",
    "latencystats",
    "keyspace",
];

/// Renders the sections asked for (none, `all`, `default` or `everything`: all of them).
pub fn render<'a>(shared: &Shared, asked: impl Iterator<Item = &'a [u8]>) -> String {
    let asked: Vec<String> = asked
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = asked.is_empty()
        || asked
            .iter()
            .any(|a| a == "all" || a == "default" || a == "everything");
    let mut out = String::with_capacity(2048);
    for section in SECTIONS {
        if all || asked.iter().any(|a| a == section) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            write_section(shared, section, &mut out);
        }
    }
    out
}

fn write_section(shared: &Shared, section: &str, out: &mut String) {
    let mut title = section.to_string();
    title[..1].make_ascii_uppercase();
    let _ = write!(out, "# {title}\r\n");
    match section {
        "server" => {
            let uptime = shared.started.elapsed().as_secs();
            let fell_back = shared
                .rings
                .iter()
                .any(|r| r.recv_fallback.load(Ordering::Relaxed) != 0);
            let direct = shared.features.as_ref().is_some_and(|f| f.direct) && !fell_back;
            let incremental = shared.features.is_some()
                && shared
                    .rings
                    .iter()
                    .all(|r| r.incremental_buffers.load(Ordering::Relaxed) != 0);
            let busy_tick = shared.features.as_ref().is_some_and(|f| f.busy_tick);
            let (kernel, accept, recv, flags) = match &shared.features {
                Some(f) => (
                    f.kernel_release.clone(),
                    format!("{:?}", f.accept),
                    if fell_back {
                        "PollThenRecv (the kernel refused the buffer ring)".to_string()
                    } else {
                        format!("{:?}", f.recv)
                    },
                    setup_flags(f),
                ),
                None => (
                    ringport_ring::probe::kernel_release(),
                    "epoll".into(),
                    "epoll".into(),
                    "none".into(),
                ),
            };
            let _ = write!(
                out,
                "redis_version:{REDIS_COMPAT_VERSION}\r\nringport_version:{}\r\nringport_git_commit:{}\r\nredis_mode:standalone\r\nos:Linux {}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nlisten:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\ncores:{}\r\nrings:{}\r\nbackend:{}\r\naccept_path:{}\r\nrecv_path:{}\r\nsetup_flags:{}\r\ndirect_descriptors:{}\r\nincremental_buffers:{}\r\nbusy_tick:{}\r\n",
                crate::version::VERSION,
                crate::version::COMMIT,
                kernel,
                std::process::id(),
                shared.listen_addr.port(),
                shared.listen_addr,
                uptime / 86400,
                shared.cores,
                shared.rings.len(),
                shared.backend_name,
                accept,
                recv,
                flags,
                if direct { "yes" } else { "no" },
                if incremental { "yes" } else { "no" },
                if busy_tick { "yes" } else { "no" },
            );
        }
        "clients" => {
            let connected: u64 = shared
                .rings
                .iter()
                .map(|r| r.sessions.load(Ordering::Relaxed))
                .sum();
            let _ = write!(
                out,
                "connected_clients:{connected}\r\nmaxclients:{}\r\n",
                shared.config.max_sessions
            );
        }
        "rings" => {
            for (i, r) in shared.rings.iter().enumerate() {
                let _ = write!(
                    out,
                    "ring{i}:sessions={},accepted={},closed={},rejected={},accept_errors={},completions={},submissions={},enters={},bufring_exhausted={},cq_overflow={},sq_backlogged={},messages={},bytes_in={},bytes_out={},buffers_released={},tls_errors={},direct={},sends_parked={}\r\n",
                    r.sessions.load(Ordering::Relaxed),
                    r.accepted.load(Ordering::Relaxed),
                    r.closed.load(Ordering::Relaxed),
                    r.rejected_max_sessions.load(Ordering::Relaxed),
                    r.accept_errors.load(Ordering::Relaxed),
                    r.completions.load(Ordering::Relaxed),
                    r.submissions.load(Ordering::Relaxed),
                    r.enters.load(Ordering::Relaxed),
                    r.bufring_exhausted.load(Ordering::Relaxed),
                    r.cq_overflow.load(Ordering::Relaxed),
                    r.sq_backlogged.load(Ordering::Relaxed),
                    r.messages.load(Ordering::Relaxed),
                    r.bytes_in.load(Ordering::Relaxed),
                    r.bytes_out.load(Ordering::Relaxed),
                    r.buffers_released.load(Ordering::Relaxed),
                    r.tls_errors.load(Ordering::Relaxed),
                    r.direct_sessions.load(Ordering::Relaxed),
                    r.sends_parked.load(Ordering::Relaxed),
                );
            }
        }
        "stats" => {
            let sum = |f: fn(&ringport_ring::RingStats) -> u64| -> u64 {
                shared.rings.iter().map(|r| f(r)).sum()
            };
            let c = &shared.counters;
            let _ = write!(
                out,
                "total_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\nauth_failures:{}\r\nauth_rate_limited:{}\r\nauth_timeouts:{}\r\nrequest_timeouts:{}\r\nidle_timeouts:{}\r\noutput_buffer_limit_closes:{}\r\nauth_cache_entries:{}\r\nusers_known:{}\r\n",
                sum(|r| r.accepted.load(Ordering::Relaxed)),
                shared.total_commands(),
                sum(|r| r.rejected_max_sessions.load(Ordering::Relaxed)),
                c.auth_failures.load(Ordering::Relaxed),
                c.auth_rate_limited.load(Ordering::Relaxed),
                c.auth_timeouts.load(Ordering::Relaxed),
                c.request_timeouts.load(Ordering::Relaxed),
                c.idle_timeouts.load(Ordering::Relaxed),
                c.output_limit_closes.load(Ordering::Relaxed),
                shared.auth_cache.len(),
                shared.users.len(),
            );
        }
        "memory" => {
            let rss = rss_bytes().unwrap_or(0);
            let embedded = if shared.store.backend().kind() == "embedded" {
                shared.config.embedded_cache_size
            } else {
                0
            };
            let _ = write!(
                out,
                "used_memory_rss:{rss}\r\nused_memory_rss_human:{}\r\nmem_allocator:libc\r\nembedded_cache_size:{embedded}\r\nauth_cache_max_entries:{}\r\nrecv_buffer_bytes_per_ring:{}\r\nrecv_buffer_bytes:{}\r\n",
                human_bytes(rss),
                shared.auth_cache.capacity(),
                shared.config.recv_buffer_bytes,
                shared.config.recv_buffer_bytes * shared.rings.len(),
            );
        }
        "compute" => {
            for (name, pool) in [("compute", &shared.compute), ("auth", &shared.auth)] {
                let p = pool.stats();
                let _ = write!(
                    out,
                    "{name}_threads:{}\r\n{name}_queue_capacity:{}\r\n{name}_queue_depth:{}\r\n{name}_jobs_running:{}\r\n{name}_jobs_completed:{}\r\n{name}_jobs_rejected:{}\r\n{name}_busy_us:{}\r\n",
                    pool.threads(),
                    pool.capacity(),
                    p.depth.load(Ordering::Relaxed),
                    p.running.load(Ordering::Relaxed),
                    p.completed.load(Ordering::Relaxed),
                    p.rejected.load(Ordering::Relaxed),
                    p.busy_us.load(Ordering::Relaxed),
                );
            }
        }
        "workers" => {
            // One line per `[[worker]]` pool, in the style of Redis's keyspace lines.
            for pool in &shared.workers {
                let s = &pool.stats;
                let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                let fields = [
                    ("processes", pool.processes() as u64),
                    ("up", pool.up() as u64),
                    ("in_flight", pool.in_flight() as u64),
                    ("requests", load(&s.requests)),
                    ("replies", load(&s.replies)),
                    ("timeouts", load(&s.timeouts)),
                    ("failed", load(&s.failed)),
                    ("busy", load(&s.busy)),
                    ("restarts", load(&s.restarts)),
                ];
                write_fields(out, &format!("worker_{}", pool.name), &fields);
            }
        }
        "store" => {
            let p = shared.store.stats();
            let st = shared.store.store_stats();
            let backend = shared.store.backend();
            let _ = write!(
                out,
                "store_backend:{}\r\nstore_location:{}\r\nstore_threads:{}\r\nstore_queue_capacity:{}\r\nstore_queue_depth:{}\r\nstore_jobs_running:{}\r\nstore_jobs_completed:{}\r\nstore_jobs_rejected:{}\r\nstore_unavailable_errors:{}\r\nstore_other_errors:{}\r\nstore_reconnects:{}\r\nstore_batches:{}\r\nstore_batched_jobs:{}\r\nstore_batch_max:{}\r\nstore_expired_swept:{}\r\nstore_ring_links_up:{}\r\nstore_ring_links_made:{}\r\nstore_ring_batches:{}\r\nstore_ring_gets:{}\r\n",
                backend.kind(),
                backend.describe(),
                shared.store.threads(),
                shared.store.capacity(),
                p.depth.load(Ordering::Relaxed),
                p.running.load(Ordering::Relaxed),
                p.completed.load(Ordering::Relaxed),
                p.rejected.load(Ordering::Relaxed),
                st.unavailable.load(Ordering::Relaxed),
                st.errors.load(Ordering::Relaxed),
                shared.store.reconnects(),
                st.batches.load(Ordering::Relaxed),
                st.batched_jobs.load(Ordering::Relaxed),
                st.batch_max.load(Ordering::Relaxed),
                st.swept.load(Ordering::Relaxed),
                // Ring reads (`storelink`): each ring's own connection for GETs.
                st.ring_links_up.load(Ordering::Relaxed),
                st.ring_links_made.load(Ordering::Relaxed),
                st.ring_batches.load(Ordering::Relaxed),
                st.ring_gets.load(Ordering::Relaxed),
            );
            for (i, w) in st.workers.iter().enumerate() {
                let _ = write!(
                    out,
                    "store_conn{i}:up={},in_flight={},batches={},jobs={},lane={}\r\n",
                    u8::from(w.up.load(Ordering::Relaxed)),
                    w.in_flight.load(Ordering::Relaxed),
                    w.batches.load(Ordering::Relaxed),
                    w.jobs.load(Ordering::Relaxed),
                    shared.store.lane(i),
                );
            }
            for (ring, l) in st.links.get().into_iter().flatten().enumerate() {
                let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                let fields = [
                    ("up", u64::from(l.up.load(Ordering::Relaxed))),
                    ("in_flight", load(&l.in_flight)),
                    ("batches_in_flight", load(&l.batches_in_flight)),
                    ("waiting", load(&l.waiting)),
                    ("batches", load(&l.batches)),
                    ("gets", load(&l.gets)),
                ];
                write_fields(out, &format!("store_link{ring}"), &fields);
            }
        }
        "commandstats" => {
            for c in shared.commands.summaries() {
                if c.calls == 0 {
                    continue;
                }
                let _ = write!(
                    out,
                    "cmdstat_{}:calls={},usec={},usec_per_call={:.2},rejected_calls=0,failed_calls={}\r\n",
                    c.name,
                    c.calls,
                    c.usec,
                    c.usec as f64 / c.calls as f64,
                    c.errors
                );
            }
        }
        "latencystats" => {
            for c in shared.commands.summaries() {
                if c.calls == 0 {
                    continue;
                }
                let h = &c.latency;
                let _ = write!(
                    out,
                    "latency_percentiles_usec_{}:p50={:.3},p99={:.3},p99.9={:.3}\r\n",
                    c.name,
                    h.value_at_quantile(0.5) as f64,
                    h.value_at_quantile(0.99) as f64,
                    h.value_at_quantile(0.999) as f64,
                );
            }
        }
        "keyspace" => {}
        _ => {}
    }
}

/// One `name:field=value,...` line, in the style of Redis's keyspace lines.
fn write_fields(out: &mut String, name: &str, fields: &[(&str, u64)]) {
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = write!(out, "{name}:{}\r\n", fields.join(","));
}

/// This process's resident set (VmRSS), as Redis's `used_memory_rss` reports it.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Redis's `_human` form: two decimals and a B/K/M/G suffix.
fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    match UNITS.iter().find(|(size, _)| n >= *size) {
        Some((size, unit)) => format!("{:.2}{unit}", n as f64 / *size as f64),
        None => format!("{n}B"),
    }
}

fn setup_flags(f: &ringport_ring::Features) -> String {
    let mut flags = Vec::new();
    if f.single_issuer {
        flags.push("single_issuer");
    }
    if f.defer_taskrun {
        flags.push("defer_taskrun");
    }
    if f.coop_taskrun {
        flags.push("coop_taskrun");
    }
    if flags.is_empty() {
        "none".into()
    } else {
        flags.join(",")
    }
}
