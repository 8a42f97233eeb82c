//! Scale-out behind HAProxy, run for real on loopback (issue 16).
//!
//! "Several instances behind a load balancer on one PostgreSQL" was a paragraph in the docs that
//! nothing had ever run. Here Debian's HAProxy runs `deploy/haproxy.cfg` (its `defaults`,
//! `frontend` and `backend`, with this test's addresses and short check timings put in) in front
//! of three ringport instances on one throwaway PostgreSQL, and what an operator relies on is
//! checked from the client side:
//!
//! - 3,000 sessions opened through HAProxy spread over the three instances (each session asks
//!   `CLIENT INFO` which instance holds it; each instance's `/metrics` agrees);
//! - a write through one instance is read through the others;
//! - one instance drained with SIGTERM while load runs: HAProxy's `/ready` check takes it out
//!   within `--drain-grace`, before it stops accepting, so a session opened through HAProxy is
//!   neither closed before its first reply nor cut short (those that landed on the draining
//!   instance finish within the grace); sessions held there from before are closed after their
//!   last reply; no client sees an error reply or a partial reply; and every SET answered `+OK`
//!   is readable afterwards through another instance;
//! - an instance killed with SIGKILL is taken out by the health check within a few check
//!   intervals, and then every new session through HAProxy succeeds.
//!
//! HAProxy missing is a loud failure, never a skip: run `ci/test` as root (it installs the
//! package) or `apt-get install haproxy`.

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    eventually, http_body, http_status, RawConn, ReadEnd, Reply, Server, PASSWORD, REPLY_TIMEOUT,
    USER,
};

const INSTANCES: usize = 3;
const SESSIONS: usize = 3_000;
/// ringport's default: comfortably more than HAProxy needs to see two failed checks.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// The check timings put in place of the shipped `default-server` line (every 500 ms, and two
/// good checks to come back): a failed instance is out after two checks 200 ms apart.
const DEFAULT_SERVER: &str = "default-server check inter 200ms fall 2 rise 1";
/// How long HAProxy may take to mark an instance down: two check intervals plus the check
/// itself, with room for a busy two-core box (liveness, not speed).
const MARKED_DOWN_WITHIN: Duration = Duration::from_millis(1_800);
/// Concurrent clients during the drain: some hold one session, some open one after another.
const STEADY_CLIENTS: usize = 6;
const CHURN_CLIENTS: usize = 4;
/// Commands per churning session before it closes and opens the next: long enough that one is
/// usually open on the instance to drain when SIGTERM comes, short enough to end well within
/// the grace.
const CHURN_COMMANDS: usize = 50;
/// Bounds on each load client, whichever comes first: SETs, and time.
const LOAD_SETS_PER_CLIENT: usize = 20_000;
const LOAD_SECONDS_MAX: Duration = Duration::from_secs(20);

#[test]
fn the_shipped_haproxy_config_is_valid() {
    let output = Command::new(haproxy_binary())
        .args(["-c", "-f"])
        .arg(shipped_config())
        .output()
        .expect("run haproxy -c");
    assert!(
        output.status.success(),
        "haproxy -c -f deploy/haproxy.cfg: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn three_instances_behind_haproxy_share_load_drain_and_fail_over() {
    let started = Instant::now();
    let cluster = pg::PgCluster::start();
    let url = cluster.fresh_url("scaleout");
    let mut instances: Vec<Server> = (0..INSTANCES)
        .map(|_| {
            Server::builder()
                .store(&url)
                .flag("--metrics-addr", "127.0.0.1:0")
                .flag("--drain-grace", &format!("{}ms", DRAIN_GRACE.as_millis()))
                .start()
        })
        .collect();
    for server in &instances {
        let metrics = server.metrics_addr();
        eventually("every instance ready", || {
            http_status(metrics, "/ready") == 200
        });
    }
    let haproxy = Haproxy::start(&instances);
    let ports: Vec<u16> = instances.iter().map(Server::port).collect();
    let instance_of = |port: u16| {
        ports
            .iter()
            .position(|&p| p == port)
            .unwrap_or_else(|| panic!("no instance listens on {port}"))
    };
    eprintln!("set up in {:?}", started.elapsed());

    // 3,000 sessions through HAProxy, each told by CLIENT INFO where it landed.
    let phase = Instant::now();
    let mut sessions: Vec<Vec<RawConn>> = (0..INSTANCES).map(|_| Vec::new()).collect();
    for (conn, port) in open_sessions(haproxy.addr, SESSIONS) {
        sessions[instance_of(port)].push(conn);
    }
    let spread: Vec<usize> = sessions.iter().map(Vec::len).collect();
    eprintln!(
        "{SESSIONS} sessions through HAProxy in {:?}: {spread:?} per instance",
        phase.elapsed()
    );
    for (i, server) in instances.iter().enumerate() {
        assert_eq!(
            open_sessions_metric(server),
            spread[i] as u64,
            "instance {i}'s /metrics counts the sessions its clients see"
        );
        // leastconn: within a few of an even share.
        assert!(
            spread[i].abs_diff(SESSIONS / INSTANCES) <= 10,
            "uneven spread over the instances: {spread:?}"
        );
    }

    // A write through one instance is read through the others.
    let (first, rest) = sessions.split_at_mut(1);
    assert_eq!(
        first[0][0].cmd(&[b"SET", b"shared-key", b"written-on-0"]),
        Reply::ok()
    );
    for other in rest.iter_mut() {
        assert_eq!(
            other[0].cmd(&[b"GET", b"shared-key"]),
            Reply::bulk("written-on-0")
        );
    }
    assert_eq!(
        instances[2].raw_authed().cmd(&[b"GET", b"shared-key"]),
        Reply::bulk("written-on-0"),
        "and by a direct connection to another instance"
    );

    // Drain instance 0 under load.
    let phase = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let drained_exited = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    // Steady clients hold sessions already open: half on the instance to drain (the drain
    // closes them between commands), half on the others (never disturbed).
    for i in 0..STEADY_CLIENTS {
        let instance = if i % 2 == 0 { 0 } else { 1 + (i / 2) % 2 };
        let conn = sessions[instance]
            .pop()
            .expect("a session on that instance");
        let (stop, exited) = (stop.clone(), drained_exited.clone());
        clients.push(std::thread::spawn(move || {
            steady_client(format!("steady{i}"), instance, conn, &stop, &exited)
        }));
    }
    for i in 0..CHURN_CLIENTS {
        let (stop, exited, addr) = (stop.clone(), drained_exited.clone(), haproxy.addr);
        clients.push(std::thread::spawn(move || {
            churn_client(format!("churn{i}"), addr, &stop, &exited)
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Timed from before the signal: the instance's grace cannot start earlier than that.
    let signalled = Instant::now();
    instances[0].signal("TERM");
    let marked_down = haproxy.until_down("ringport-0", signalled);
    eprintln!("instance 0: SIGTERM; HAProxy marked it down after {marked_down:?}");
    assert!(
        marked_down < DRAIN_GRACE,
        "HAProxy took {marked_down:?} to mark the draining instance down, more than the \
         {DRAIN_GRACE:?} grace: it would still send it sessions after it stops accepting"
    );
    let status = instances[0]
        .wait_exit(Duration::from_secs(60))
        .expect("the drained instance exits");
    assert!(status.success(), "drained instance exited with {status}");
    drained_exited.store(true, Ordering::Release);
    eprintln!("instance 0 exited {:?} after SIGTERM", signalled.elapsed());
    // Load goes on through the other two for a moment, then stops.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let reports: Vec<ClientReport> = clients
        .into_iter()
        .map(|c| c.join().expect("a load client panicked"))
        .collect();
    let failures: Vec<&String> = reports.iter().flat_map(|r| &r.failures).collect();
    assert!(
        failures.is_empty(),
        "clients saw more than a closed connection after their last reply:\n{failures:#?}"
    );
    for report in &reports {
        if report.name.starts_with("steady") {
            assert!(report.acknowledged.len() > 10, "{report:?}");
            assert_eq!(
                report.closed_after_reply,
                usize::from(report.instance == Some(0)),
                "a steady session is closed if and only if its instance drained: {report:?}"
            );
        } else {
            assert_eq!(
                report.closed_before_first_reply, 0,
                "a new session through HAProxy reached an instance that no longer \
                 accepted: {report:?}"
            );
            // The sessions that landed on the draining instance before HAProxy took it out
            // finished within the grace: none was cut short by the drain.
            assert_eq!(
                report.closed_after_reply, 0,
                "a session opened through HAProxy was closed by the drain: {report:?}"
            );
        }
    }
    let acknowledged: Vec<&(String, String)> =
        reports.iter().flat_map(|r| &r.acknowledged).collect();
    let after_exit: usize = reports.iter().map(|r| r.acknowledged_after_exit).sum();
    assert!(
        after_exit > 0,
        "the load went on through the other instances after the drain: {reports:?}"
    );
    let churned: usize = reports.iter().map(|r| r.sessions).sum();
    eprintln!(
        "drain under load: {} SETs acknowledged ({after_exit} after instance 0 exited), \
         {churned} sessions, {} closed after their last reply, in {:?}",
        acknowledged.len(),
        reports.iter().map(|r| r.closed_after_reply).sum::<usize>(),
        phase.elapsed()
    );
    // Every acknowledged write is there, read through another instance.
    let mut reader = instances[2].raw_authed();
    for chunk in acknowledged.chunks(1_000) {
        let mut batch = Vec::new();
        for (key, _) in chunk {
            batch.extend(common::encode(&[b"GET", key.as_bytes()]));
        }
        reader.send(&batch);
        for (key, value) in chunk {
            assert_eq!(
                reader.read_reply(),
                Reply::bulk(value),
                "acknowledged SET {key} lost"
            );
        }
    }
    // The drained instance's idle sessions were closed with nothing sent; the others' are
    // untouched.
    for conn in &mut sessions[0] {
        assert_eq!(conn.replies_to_eof(REPLY_TIMEOUT), Vec::<Reply>::new());
    }
    for conns in &mut sessions[1..] {
        assert_all_answer_ping(conns);
    }

    // Kill instance 1: the health check takes it out, then every new session succeeds.
    let phase = Instant::now();
    instances[1].kill9();
    let marked_down = haproxy.until_down("ringport-1", phase);
    eprintln!("instance 1: SIGKILL; HAProxy marked it down after {marked_down:?}");
    for conn in &mut sessions[1] {
        assert!(
            conn.closes_within(REPLY_TIMEOUT),
            "a session on the killed instance stays open"
        );
    }
    let fresh = open_sessions(haproxy.addr, 300);
    assert!(
        fresh.iter().all(|(_, port)| instance_of(*port) == 2),
        "new sessions go to the one instance left"
    );
    let mut fresh: Vec<RawConn> = fresh.into_iter().map(|(conn, _)| conn).collect();
    assert_eq!(
        fresh[0].cmd(&[b"GET", b"shared-key"]),
        Reply::bulk("written-on-0")
    );
    assert_all_answer_ping(&mut fresh);
    assert_all_answer_ping(&mut sessions[2]);
    eprintln!("kill -9 and fail-over checked in {:?}", phase.elapsed());

    // A second signal ends the last instance's grace: the test need not wait it out.
    drop(haproxy);
    instances[2].signal("TERM");
    instances[2].signal("INT");
    eprintln!("whole test: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Clients.
// ---------------------------------------------------------------------------------------------

/// `n` sessions through `addr`, each authenticated, with the port of the instance that holds it
/// (`laddr` of `CLIENT INFO`). Every AUTH and CLIENT INFO is sent before any reply is read.
fn open_sessions(addr: SocketAddr, n: usize) -> Vec<(RawConn, u16)> {
    let mut request = common::encode(&[b"AUTH", USER.as_bytes(), PASSWORD.as_bytes()]);
    request.extend(common::encode(&[b"CLIENT", b"INFO"]));
    let conns: Vec<RawConn> = (0..n)
        .map(|_| {
            let mut conn = RawConn::connect(addr);
            conn.send(&request);
            conn
        })
        .collect();
    conns
        .into_iter()
        .map(|mut conn| {
            assert_eq!(conn.read_reply(), Reply::ok(), "AUTH through HAProxy");
            let Reply::Bulk(info) = conn.read_reply() else {
                panic!("CLIENT INFO is a bulk string")
            };
            let info = String::from_utf8(info).expect("CLIENT INFO is text");
            let port = info
                .split_whitespace()
                .find_map(|field| field.strip_prefix("laddr="))
                .and_then(|laddr| laddr.parse::<SocketAddr>().ok())
                .unwrap_or_else(|| panic!("no laddr in {info:?}"))
                .port();
            (conn, port)
        })
        .collect()
}

/// PING on every session (all sent, then all read).
fn assert_all_answer_ping(conns: &mut [RawConn]) {
    for conn in conns.iter_mut() {
        conn.send_cmd(&[b"PING"]);
    }
    for conn in conns.iter_mut() {
        assert_eq!(conn.read_reply(), Reply::Simple("PONG".into()));
    }
}

/// Open sessions on one instance: the sum of its `ringport_sessions` gauge over rings.
fn open_sessions_metric(server: &Server) -> u64 {
    http_body(server.metrics_addr(), "/metrics")
        .lines()
        .filter(|line| line.starts_with("ringport_sessions{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// What one load client saw.
#[derive(Default)]
struct ClientReport {
    name: String,
    /// The instance its session is on, when it holds one session.
    instance: Option<usize>,
    /// Every (key, value) whose SET was answered `+OK`.
    acknowledged: Vec<(String, String)>,
    /// Of those, how many came after the drained instance had exited.
    acknowledged_after_exit: usize,
    sessions: usize,
    /// Sessions that ended in a close after at least one reply: what a drain may do.
    closed_after_reply: usize,
    /// Sessions that ended in a close before any reply.
    closed_before_first_reply: usize,
    /// Anything else: error replies, partial replies, no reply in time, refused connections.
    failures: Vec<String>,
}

impl std::fmt::Debug for ClientReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The acknowledged writes run to thousands: their count says enough in a failure.
        f.debug_struct("ClientReport")
            .field("name", &self.name)
            .field("instance", &self.instance)
            .field("acknowledged", &self.acknowledged.len())
            .field("acknowledged_after_exit", &self.acknowledged_after_exit)
            .field("sessions", &self.sessions)
            .field("closed_after_reply", &self.closed_after_reply)
            .field("closed_before_first_reply", &self.closed_before_first_reply)
            .field("failures", &self.failures)
            .finish()
    }
}

/// One command's outcome as a client sees it.
enum Outcome {
    Reply(Reply),
    /// The connection closed (EOF or reset) with no partial reply pending.
    Closed,
}

/// Sends one command and reads its reply. `Err` is anything a client must never see: a partial
/// reply before the close, or no reply at all in time.
fn exchange(conn: &mut RawConn, args: &[&[u8]]) -> Result<Outcome, String> {
    // A failed write means the server closed first; whatever it sent before still counts.
    if conn.stream.write_all(&common::encode(args)).is_err() {
        return closed(conn);
    }
    match conn.try_read_reply(REPLY_TIMEOUT) {
        Ok(reply) => Ok(Outcome::Reply(reply)),
        Err(ReadEnd::Closed) => closed(conn),
        Err(ReadEnd::TimedOut) => Err(format!("no reply within {REPLY_TIMEOUT:?}")),
    }
}

/// A connection the server closed: clean if nothing of a reply is left unread.
fn closed(conn: &mut RawConn) -> Result<Outcome, String> {
    match conn.read_to_eof(REPLY_TIMEOUT) {
        bytes if bytes.is_empty() => Ok(Outcome::Closed),
        bytes => Err(format!(
            "a partial reply before the close: {:?}",
            String::from_utf8_lossy(&bytes)
        )),
    }
}

/// SETs a key of its own; `Ok(true)` once acknowledged, `Ok(false)` if the connection closed.
fn set_once(
    report: &mut ClientReport,
    conn: &mut RawConn,
    seq: usize,
    exited: &AtomicBool,
) -> Result<bool, String> {
    let key = format!("{}:{seq}", report.name);
    let value = format!("v{seq}");
    match exchange(conn, &[b"SET", key.as_bytes(), value.as_bytes()])? {
        Outcome::Reply(reply) if reply == Reply::ok() => {
            report.acknowledged.push((key, value));
            if exited.load(Ordering::Acquire) {
                report.acknowledged_after_exit += 1;
            }
            Ok(true)
        }
        Outcome::Reply(other) => Err(format!("SET {key}: {other:?}")),
        Outcome::Closed => Ok(false),
    }
}

fn load_over(stop: &AtomicBool, started: Instant, sets: usize) -> bool {
    stop.load(Ordering::Acquire)
        || sets >= LOAD_SETS_PER_CLIENT
        || started.elapsed() >= LOAD_SECONDS_MAX
}

/// SETs on one session already open on `instance`, until the load ends or the server closes it.
fn steady_client(
    name: String,
    instance: usize,
    mut conn: RawConn,
    stop: &AtomicBool,
    exited: &AtomicBool,
) -> ClientReport {
    let mut report = ClientReport {
        name,
        instance: Some(instance),
        sessions: 1,
        ..ClientReport::default()
    };
    let started = Instant::now();
    let mut seq = 0;
    while !load_over(stop, started, seq) {
        match set_once(&mut report, &mut conn, seq, exited) {
            Ok(true) => seq += 1,
            Ok(false) => {
                report.closed_after_reply += 1;
                break;
            }
            Err(failure) => {
                report.failures.push(format!("{}: {failure}", report.name));
                break;
            }
        }
    }
    report
}

/// Opens session after session through HAProxy (AUTH, then [`CHURN_COMMANDS`] SETs), so new
/// sessions keep arriving while an instance drains.
fn churn_client(
    name: String,
    addr: SocketAddr,
    stop: &AtomicBool,
    exited: &AtomicBool,
) -> ClientReport {
    let mut report = ClientReport {
        name,
        ..ClientReport::default()
    };
    let started = Instant::now();
    let mut seq = 0;
    'sessions: while !load_over(stop, started, seq) {
        let stream = match TcpStream::connect_timeout(&addr, REPLY_TIMEOUT) {
            Ok(stream) => stream,
            Err(e) => {
                report
                    .failures
                    .push(format!("{}: connect: {e}", report.name));
                break;
            }
        };
        let mut conn = RawConn::from_stream(stream);
        report.sessions += 1;
        match exchange(&mut conn, &[b"AUTH", USER.as_bytes(), PASSWORD.as_bytes()]) {
            Ok(Outcome::Reply(reply)) if reply == Reply::ok() => {}
            Ok(Outcome::Reply(other)) => {
                report
                    .failures
                    .push(format!("{}: AUTH: {other:?}", report.name));
                break;
            }
            Ok(Outcome::Closed) => {
                report.closed_before_first_reply += 1;
                continue;
            }
            Err(failure) => {
                report
                    .failures
                    .push(format!("{}: AUTH: {failure}", report.name));
                break;
            }
        }
        for _ in 0..CHURN_COMMANDS {
            match set_once(&mut report, &mut conn, seq, exited) {
                Ok(true) => seq += 1,
                Ok(false) => {
                    report.closed_after_reply += 1;
                    continue 'sessions;
                }
                Err(failure) => {
                    report.failures.push(format!("{}: {failure}", report.name));
                    break 'sessions;
                }
            }
        }
    }
    report
}

// ---------------------------------------------------------------------------------------------
// HAProxy.
// ---------------------------------------------------------------------------------------------

fn haproxy_binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("haproxy"))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!("haproxy not found: run ci/test as root or apt-get install haproxy")
    })
}

fn shipped_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy.cfg")
}

/// The shipped config with this test's own `global` section, its frontend bound to `bind`, its
/// `default-server` line replaced by [`DEFAULT_SERVER`] and its `server` lines by one per
/// instance (checked on the instance's metrics port). Panics if the shipped file no longer has
/// the lines this replaces, so the test never runs something else than what is shipped.
fn test_config(global: &str, bind: SocketAddr, instances: &[&Server]) -> String {
    let shipped = std::fs::read_to_string(shipped_config()).expect("read deploy/haproxy.cfg");
    let mut out = String::from(global);
    let mut section = String::new();
    let (mut binds, mut default_servers, mut servers) = (0, 0, 0);
    for line in shipped.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            if section != "global" {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            section = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match (section.as_str(), words.first().copied()) {
            ("global", _) => continue,
            (_, Some("bind")) => {
                binds += 1;
                out.push_str(&format!("    bind {bind}\n"));
            }
            (_, Some("default-server")) => {
                default_servers += 1;
                out.push_str(&format!("    {DEFAULT_SERVER}\n"));
            }
            (_, Some("server")) => {
                // Every shipped server checks its /ready on the metrics port; so do ours.
                assert!(
                    line.contains(" check port "),
                    "a shipped server line without `check port`: {line}"
                );
                if servers == 0 {
                    for (i, server) in instances.iter().enumerate() {
                        out.push_str(&format!(
                            "    server ringport-{i} {} check port {}\n",
                            server.addr,
                            server.metrics_addr().port()
                        ));
                    }
                }
                servers += 1;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert_eq!(
        (binds, default_servers),
        (1, 1),
        "deploy/haproxy.cfg: expected one bind and one default-server line"
    );
    assert!(servers > 0, "deploy/haproxy.cfg has no server lines");
    for needed in [
        "mode tcp",
        "option httpchk GET /ready",
        "http-check expect status 200",
    ] {
        assert!(
            shipped.contains(needed),
            "deploy/haproxy.cfg lacks `{needed}`"
        );
    }
    out
}

/// A running HAProxy, killed (by its pid) when dropped, also on panic.
struct Haproxy {
    child: Child,
    /// Kills HAProxy if this test process dies without dropping it (kill -9, abort).
    watchdog: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Haproxy {
    /// Starts HAProxy on a free port below the ephemeral range and waits until its stats name
    /// every instance UP.
    fn start(instances: &[Server]) -> Haproxy {
        let instances: Vec<&Server> = instances.iter().collect();
        for attempt in 0..10 {
            let addr = SocketAddr::from(([127, 0, 0, 1], port_below_ephemeral_range(attempt)));
            if let Some(haproxy) = Haproxy::try_start(addr, &instances) {
                return haproxy;
            }
        }
        panic!("no free port below the ephemeral range for HAProxy after 10 tries");
    }

    /// `None` if HAProxy could not bind `addr` (taken between our check and its bind).
    fn try_start(addr: SocketAddr, instances: &[&Server]) -> Option<Haproxy> {
        let dir = tempfile::tempdir().expect("temp dir for HAProxy");
        // Its own global section: no chroot, user or daemon mode; a descriptor budget inside
        // this box's 20,000 (HAProxy needs two per session); a stats socket to ask for server
        // states; notices only (server state changes, not one line per session).
        let global = format!(
            "global\n    maxconn 8000\n    stats socket {} mode 600 level admin\n    log stderr format short local0 notice\n\n",
            dir.path().join("admin.sock").display()
        );
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, test_config(&global, addr, instances)).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(haproxy_binary())
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let watchdog = pg::after_test_process(&format!("kill -9 {} 2>/dev/null", child.id()));
        let mut haproxy = Haproxy {
            child,
            watchdog,
            dir,
            addr,
        };
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Ok(Some(_)) = haproxy.child.try_wait() {
                let log = haproxy.log();
                assert!(
                    log.contains("cannot bind") || log.contains("Address already in use"),
                    "haproxy exited at start:\n{log}"
                );
                return None;
            }
            let states = haproxy.server_states();
            if states.len() == instances.len() && states.values().all(|s| s == "UP") {
                return Some(haproxy);
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy never saw every instance UP: {states:?}\n{}",
                haproxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What HAProxy logged.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Each server's status as HAProxy's `show stat` has it (`UP`, `UP 1/2`, `DOWN`, ...);
    /// empty while the stats socket does not answer yet.
    fn server_states(&self) -> HashMap<String, String> {
        let Ok(mut stream) = UnixStream::connect(self.dir.path().join("admin.sock")) else {
            return HashMap::new();
        };
        let mut text = String::new();
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        if stream.write_all(b"show stat\n").is_err() || stream.read_to_string(&mut text).is_err() {
            return HashMap::new();
        }
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|&c| c == name);
        let (Some(sv), Some(status)) = (column("svname"), column("status")) else {
            return HashMap::new();
        };
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > status && f[sv].starts_with("ringport-"))
            .map(|f| (f[sv].to_string(), f[status].to_string()))
            .collect()
    }

    /// Polls until HAProxy marks `server` DOWN; returns how long that took since `started`,
    /// failing past [`MARKED_DOWN_WITHIN`].
    fn until_down(&self, server: &str, started: Instant) -> Duration {
        loop {
            let states = self.server_states();
            if states.get(server).is_some_and(|s| s.starts_with("DOWN")) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < MARKED_DOWN_WITHIN,
                "HAProxy has not marked {server} down after {:?}: {states:?}\n{}",
                started.elapsed(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        if std::thread::panicking() {
            let log = self.log();
            eprintln!(
                "---- haproxy log (tail) ----\n{}\n----",
                &log[log.len().saturating_sub(8192)..]
            );
        }
    }
}

/// A port nothing listens on now, below the kernel's ephemeral range (where the OS picks ports
/// for outgoing connections, and for our instances' `:0` listeners), spread by process id and
/// attempt so that concurrent test runs rarely try the same one.
fn port_below_ephemeral_range(attempt: u32) -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let low: u32 = range
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 11_000 {
        (10_000, low)
    } else {
        (1_025, low.max(1_100))
    };
    let span = to - from;
    let start = (std::process::id().wrapping_mul(7_919) + attempt * 104_729) % span;
    (0..span)
        .map(|i| (from + (start + i) % span) as u16)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .unwrap_or_else(|| panic!("every port from {from} to {to} is taken"))
}
