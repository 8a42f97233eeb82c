//! Crashes and store outages lose nothing acknowledged (issue 8, items 6 and 7).
//!
//! # Crash safety: what "acknowledged" guarantees, and the rule the checker applies
//!
//! A checker drives SET and INCR at full speed over several connections, each pipelining up to
//! [`DEPTH`] commands, records every reply, SIGKILLs the server at a random moment, restarts it
//! on the same store and reads every key back. Each connection owns its keys (`s:<c>:<k>` for
//! SET, `n:<c>:<k>` for INCR); all of them also INCR one shared counter.
//!
//! What the server promises (DESIGN.md, "Ordering and durability"): a write's reply leaves only
//! after the store committed it, and a session executes its commands one after another, the
//! next one starting only after the previous one finished (was committed). So for one
//! connection whose commands were `op[0..S)` (S: every command at least partly written) and
//! whose first `A` replies arrived before the kill:
//!
//! - the durable effect of that connection is exactly a prefix `op[0..P)` with `A <= P <= S`:
//!   every acknowledged command is there (`P >= A`); some commands in flight may be there too
//!   (committed, reply lost with the process), but never a later command without every
//!   earlier one (`op[i]` committed before `op[i+1]` started);
//! - so for a SET key: its value is the one written by the last SET to it in `op[0..P)`: at
//!   least as new as the last acknowledged SET to it, possibly a newer one still in flight,
//!   never an older one and never one from beyond the prefix. With several SETs to one key in
//!   flight, any of them may be the survivor, but only together with everything before it;
//! - for a counter INCRed only by this connection, with `a` INCRs to it acknowledged and `s`
//!   sent: its value is `base + (INCRs to it in op[0..P))`, so within `[base + a, base + s]`,
//!   each in-flight INCR applied at most once (a value above `base + s` means one was applied
//!   twice). With one INCR in flight that is the familiar `{acked, acked + 1}`;
//! - for the shared counter, INCRed by every connection: `base + sum over connections of the
//!   shared INCRs in each one's prefix`, so within the sums of the per-connection bounds.
//!
//! The checker first applies the per-key bounds (each with its own message: "acknowledged SET
//! lost", "INCR applied twice"), then looks for a prefix `P` in `[A, S]` that explains every key
//! of the connection at once, then checks the shared counter. The state it read becomes the base
//! of the next round: rounds go on against the same store. Replies are checked as they arrive
//! too: every SET answers `+OK`, every INCR of an owned counter answers exactly the count so far.
//!
//! Each backend runs [`ITERATIONS_DEFAULT`] rounds in the normal suite (`RINGPORT_CRASH_ITERATIONS`
//! for more); `RINGPORT_CRASH_SEED` replays one run's kill moments and command mix (the seed is
//! printed). The server runs with `--store-timeout 30s`: on a loaded two-core box an fsync can
//! take longer than the 1 s default, and a command answered "store unavailable" while its write
//! may still land would make the model uncertain (item 7 checks that case).
//!
//! # Outage under load (item 7)
//!
//! PostgreSQL is stopped (`pg_ctl stop -m fast`) and started again, then crashed (`-m
//! immediate`) and started again, while sessions issue PING, ECHO, HASH, and SET/INCR/GET on
//! keys of their own. Inline and compute commands never fail and are served in every phase;
//! store commands fail with exactly `-ERR store unavailable`, each within a liveness bound (no
//! hang), and succeed again after each restart. A store command that failed may or may not have
//! taken effect (a commit whose reply was lost with the connection did happen), so:
//!
//! - an INCR reply exceeds the previous one by 1 plus at most the number of failed INCRs in
//!   between (more: one was applied twice; less: an acknowledged one was lost);
//! - a GET, and the final read of a key, shows the last acknowledged SET or a failed one sent
//!   after it, never an older value;
//! - the final counter lies within `[last INCR reply, last reply + failed INCRs after it]`.

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{encode, sha256_rounds, RawConn, ReadEnd, Reply, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Connections driving writes in each round.
const CONNECTIONS: usize = 4;
/// Commands each connection keeps in flight.
const DEPTH: usize = 16;
/// SET keys per connection.
const SET_KEYS: usize = 3;
/// INCR counters per connection.
const COUNTERS: usize = 2;
/// The counter every connection INCRs.
const SHARED: &str = "shared";
/// Rounds per backend in the normal suite.
const ITERATIONS_DEFAULT: u64 = 5;
/// The latest moment of the kill, after the load started.
const KILL_WITHIN: Duration = Duration::from_millis(1500);
/// Bounds on one connection's load, whatever happens to the kill.
const LOAD_LIMIT: Duration = Duration::from_secs(30);
const LOAD_MAX_COMMANDS: usize = 1_000_000;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

/// One write command.
#[derive(Clone, Debug)]
enum Op {
    Set { key: String, value: Vec<u8> },
    Incr { key: String },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Set { key, .. } | Op::Incr { key } => key,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Op::Set { key, value } => encode(&[b"SET", key.as_bytes(), value]),
            Op::Incr { key } => encode(&[b"INCR", key.as_bytes()]),
        }
    }

    /// Applies it to a model of the store.
    fn apply(&self, state: &mut HashMap<String, Vec<u8>>) {
        match self {
            Op::Set { key, value } => {
                state.insert(key.clone(), value.clone());
            }
            Op::Incr { key } => {
                let next = counter(state.get(key)) + 1;
                state.insert(key.clone(), next.to_string().into_bytes());
            }
        }
    }
}

/// A counter's value in the model (absent: 0).
fn counter(value: Option<&Vec<u8>>) -> i64 {
    value.map_or(0, |v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("counter holds {:?}", String::from_utf8_lossy(v)))
    })
}

fn set_key(connection: usize, k: usize) -> String {
    format!("s:{connection}:{k}")
}

fn counter_key(connection: usize, k: usize) -> String {
    format!("n:{connection}:{k}")
}

/// Every key of one connection.
fn own_keys(connection: usize) -> Vec<String> {
    (0..SET_KEYS)
        .map(|k| set_key(connection, k))
        .chain((0..COUNTERS).map(|k| counter_key(connection, k)))
        .collect()
}

/// What one connection did in one round.
struct Log {
    /// Every command at least partly written, in order.
    ops: Vec<Op>,
    /// Replies received: `ops[..acked]` are acknowledged.
    acked: usize,
}

/// One connection of the checker: pipelines random writes until the server dies (or the load
/// bounds are reached), checking each reply against the model.
fn drive(
    mut conn: RawConn,
    connection: usize,
    round: u64,
    seed: u64,
    base: HashMap<String, Vec<u8>>,
) -> Log {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = base;
    let mut log = Log {
        ops: Vec::new(),
        acked: 0,
    };
    let mut last_shared = counter(model.get(SHARED));
    let mut writable = true;
    let started = Instant::now();
    loop {
        // Fill the pipeline.
        if writable && log.ops.len() < LOAD_MAX_COMMANDS && started.elapsed() < LOAD_LIMIT {
            let mut batch = Vec::new();
            while log.ops.len() - log.acked < DEPTH {
                let i = log.ops.len();
                let op = match rng.gen_range(0..10) {
                    0..=4 => Op::Set {
                        key: set_key(connection, rng.gen_range(0..SET_KEYS)),
                        value: format!("r{round}:c{connection}:{i}").into_bytes(),
                    },
                    5..=8 => Op::Incr {
                        key: counter_key(connection, rng.gen_range(0..COUNTERS)),
                    },
                    _ => Op::Incr { key: SHARED.into() },
                };
                batch.extend(op.encode());
                log.ops.push(op);
            }
            if !batch.is_empty() && conn.stream.write_all(&batch).is_err() {
                writable = false;
            }
        }
        if log.acked == log.ops.len() {
            return log;
        }
        let reply = match conn.try_read_reply(common::REPLY_TIMEOUT) {
            Ok(reply) => reply,
            Err(ReadEnd::Closed) => return log,
            Err(ReadEnd::TimedOut) => panic!(
                "connection {connection}: no reply within {:?} with {} commands in flight",
                common::REPLY_TIMEOUT,
                log.ops.len() - log.acked
            ),
        };
        let op = &log.ops[log.acked];
        match op {
            Op::Set { .. } => assert_eq!(reply, Reply::ok(), "connection {connection}: {op:?}"),
            Op::Incr { key } if key == SHARED => match reply {
                Reply::Int(n) if n > last_shared => last_shared = n,
                other => panic!(
                    "connection {connection}: INCR {SHARED} answered {other:?} after {last_shared}"
                ),
            },
            Op::Incr { key } => {
                let want = counter(model.get(key)) + 1;
                assert_eq!(
                    reply,
                    Reply::Int(want),
                    "connection {connection}: INCR {key} (it alone writes that key)"
                );
            }
        }
        op.apply(&mut model);
        log.acked += 1;
    }
}

/// Checks what the store holds after a crash against what each connection did, as the module
/// doc explains; returns how many unacknowledged commands per connection turned out durable.
fn check_round(
    round: u64,
    base: &HashMap<String, Vec<u8>>,
    logs: &[Log],
    found: &HashMap<String, Vec<u8>>,
) -> Vec<usize> {
    let show = |v: Option<&Vec<u8>>| v.map(|v| String::from_utf8_lossy(v).into_owned());
    let mut beyond_acks = Vec::new();
    let (mut shared_low, mut shared_high) = (0i64, 0i64);
    for (c, log) in logs.iter().enumerate() {
        let (acked, sent) = (&log.ops[..log.acked], &log.ops[..]);
        for key in own_keys(c) {
            let now = found.get(&key);
            if key.starts_with("s:") {
                // The last acknowledged SET (or the base), or any SET to it still in flight.
                let last_acked = acked
                    .iter()
                    .rev()
                    .find_map(|op| match op {
                        Op::Set { key: k, value } if *k == key => Some(value),
                        _ => None,
                    })
                    .or(base.get(&key));
                let in_flight = log.ops[log.acked..].iter().any(
                    |op| matches!(op, Op::Set { key: k, value } if *k == key && Some(value) == now),
                );
                assert!(
                    now == last_acked || in_flight,
                    "round {round}, connection {c}: {key} holds {:?} after the crash; the last \
                     acknowledged SET wrote {:?} (acknowledged SET lost, or an older value back)",
                    show(now),
                    show(last_acked)
                );
            } else {
                let base_value = counter(base.get(&key));
                let count = |ops: &[Op]| {
                    ops.iter()
                        .filter(|op| matches!(op, Op::Incr { key: k } if *k == key))
                        .count() as i64
                };
                let (low, high) = (base_value + count(acked), base_value + count(sent));
                let value = counter(now);
                assert!(
                    value >= low,
                    "round {round}, connection {c}: {key} is {value} after the crash, but {low} \
                     was acknowledged (acknowledged INCR lost)"
                );
                assert!(
                    value <= high,
                    "round {round}, connection {c}: {key} is {value} after the crash, but only \
                     {high} INCRs were ever sent (an INCR applied twice)"
                );
            }
        }
        // One prefix op[..P), A <= P <= S, explains every key of this connection.
        let mut state: HashMap<String, Vec<u8>> = own_keys(c)
            .into_iter()
            .filter_map(|k| base.get(&k).map(|v| (k, v.clone())))
            .collect();
        let shared_in = |ops: &[Op]| ops.iter().filter(|op| op.key() == SHARED).count() as i64;
        let own_matches = |state: &HashMap<String, Vec<u8>>| {
            own_keys(c).iter().all(|k| state.get(k) == found.get(k))
        };
        let mut prefixes = Vec::new();
        for (i, op) in log.ops.iter().enumerate() {
            if i >= log.acked && own_matches(&state) {
                prefixes.push(i);
            }
            if op.key() != SHARED {
                op.apply(&mut state);
            }
        }
        if own_matches(&state) {
            prefixes.push(log.ops.len());
        }
        assert!(
            !prefixes.is_empty(),
            "round {round}, connection {c}: no prefix of its {} commands ({} acknowledged) \
             explains its keys after the crash: a later write is durable while an earlier one \
             of the same session is not; found {:?}",
            log.ops.len(),
            log.acked,
            own_keys(c)
                .iter()
                .map(|k| (k.clone(), show(found.get(k))))
                .collect::<Vec<_>>()
        );
        let first = *prefixes.first().unwrap();
        let last = *prefixes.last().unwrap();
        shared_low += shared_in(&log.ops[..first]);
        shared_high += shared_in(&log.ops[..last]);
        beyond_acks.push(last - log.acked);
    }
    let shared_base = counter(base.get(SHARED));
    let shared = counter(found.get(SHARED));
    assert!(
        (shared_base + shared_low..=shared_base + shared_high).contains(&shared),
        "round {round}: {SHARED} is {shared} after the crash; the connections' durable prefixes \
         hold between {shared_low} and {shared_high} INCRs of it on top of {shared_base}"
    );
    beyond_acks
}

/// Reads every key the checker writes.
fn read_all(conn: &mut RawConn) -> HashMap<String, Vec<u8>> {
    let keys: Vec<String> = (0..CONNECTIONS)
        .flat_map(own_keys)
        .chain([SHARED.to_string()])
        .collect();
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(keys.iter().map(|k| k.as_bytes()));
    let values = match conn.cmd(&args) {
        Reply::Array(values) => values,
        other => panic!("MGET answered {other:?}"),
    };
    assert_eq!(values.len(), keys.len());
    keys.into_iter()
        .zip(values)
        .filter_map(|(key, value)| match value {
            Reply::Bulk(bytes) => Some((key, bytes)),
            Reply::Nil => None,
            other => panic!("MGET {key}: {other:?}"),
        })
        .collect()
}

/// The crash checker on one server: rounds of load, SIGKILL at a random moment, restart, check.
fn crash_rounds(mut server: Server, backend: &str) {
    let rounds = env_number("RINGPORT_CRASH_ITERATIONS", ITERATIONS_DEFAULT);
    let seed = env_number(
        "RINGPORT_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!("{backend}: {rounds} crash rounds, RINGPORT_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut base = read_all(&mut server.raw_authed());
    for round in 0..rounds {
        // Authenticated first (AUTH's argon2id is not part of the load).
        let conns: Vec<RawConn> = (0..CONNECTIONS).map(|_| server.raw_authed()).collect();
        let threads: Vec<JoinHandle<Log>> = conns
            .into_iter()
            .enumerate()
            .map(|(c, conn)| {
                let (seed, base) = (rng.gen(), base.clone());
                std::thread::spawn(move || drive(conn, c, round, seed, base))
            })
            .collect();
        let kill_after = rng.gen_range(Duration::from_millis(20)..KILL_WITHIN);
        std::thread::sleep(kill_after);
        server.kill9();
        let logs: Vec<Log> = threads
            .into_iter()
            .map(|t| t.join().expect("a checker connection failed"))
            .collect();
        server.restart();
        let found = read_all(&mut server.raw_authed());
        let beyond = check_round(round, &base, &logs, &found);
        eprintln!(
            "{backend} round {round}: killed {kill_after:?} into the load; acknowledged {:?} of \
             {:?} commands sent per connection; durable beyond the acknowledgements: {beyond:?}",
            logs.iter().map(|l| l.acked).collect::<Vec<_>>(),
            logs.iter().map(|l| l.ops.len()).collect::<Vec<_>>(),
        );
        assert!(
            logs.iter().any(|l| l.acked > 0) || kill_after < Duration::from_millis(200),
            "round {round}: nothing was acknowledged in {kill_after:?}"
        );
        base = found;
    }
}

/// Issue 8, item 6, embedded store (redb): see the module doc for the rule.
#[test]
fn embedded_store_keeps_every_acknowledged_write_across_kill_9() {
    let server = Server::builder().flag("--store-timeout", "30s").start();
    crash_rounds(server, "embedded");
}

/// Issue 8, item 6, PostgreSQL: ringport is killed, PostgreSQL keeps running; see the module doc.
#[test]
fn postgres_store_keeps_every_acknowledged_write_across_kill_9() {
    let url = pg::PgCluster::shared().fresh_url("crash");
    let server = Server::builder()
        .store(&url)
        .flag("--store-timeout", "30s")
        .start();
    crash_rounds(server, "postgres");
}

// ---- outage under load ----

/// The phases of the outage test: before; PostgreSQL stopped (`pg_ctl stop -m fast`); after
/// it is back; PostgreSQL crashed (`-m immediate`: statements cut anywhere, commits included);
/// after it is back.
const PHASES: [&str; 5] = [
    "before",
    "stopped",
    "after the restart",
    "crashed",
    "after the crash",
];
const BEFORE: u8 = 0;

/// The longest a store command may take to answer during the outage: a liveness bound (the
/// store layer answers within about a second), far from any speed claim.
const FAIL_FAST_LIMIT: Duration = Duration::from_secs(10);

/// A session's counts per phase: replies that succeeded, replies that failed.
#[derive(Default)]
struct Tally {
    ok: [AtomicU64; PHASES.len()],
    unavailable: [AtomicU64; PHASES.len()],
}

/// A store session's history of one key.
#[derive(Default, Debug)]
struct KeyHistory {
    /// The value of the last SET answered `+OK`.
    last_acked: Option<Vec<u8>>,
    /// Values of SETs answered "store unavailable" after it (they may have taken effect).
    maybe: Vec<Vec<u8>>,
}

/// A store session's history of its counter.
#[derive(Default, Debug)]
struct CounterHistory {
    /// The last value an INCR answered.
    last_acked: i64,
    /// INCRs answered "store unavailable" since then.
    maybe: i64,
}

/// What one store session leaves for the final check.
struct StoreOutcome {
    keys: HashMap<String, KeyHistory>,
    counter_key: String,
    counter: CounterHistory,
    slowest_failure: Duration,
}

fn spawn_session<T: Send + 'static>(
    server: &Server,
    work: impl FnOnce(RawConn) -> T + Send + 'static,
) -> JoinHandle<T> {
    let conn = server.raw_authed();
    std::thread::spawn(move || work(conn))
}

/// An inline (PING/ECHO) or compute (HASH) session: every reply must be right, whatever the
/// store does.
fn light_session(
    mut conn: RawConn,
    name: &'static str,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let tag = format!("{name}-{i}");
        let at = phase.load(Ordering::Relaxed) as usize;
        match name {
            "ping" => assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into())),
            "echo" => assert_eq!(conn.cmd(&[b"ECHO", tag.as_bytes()]), Reply::bulk(&tag)),
            _ => assert_eq!(
                conn.cmd(&[b"HASH", b"200", tag.as_bytes()]),
                Reply::bulk(sha256_rounds(tag.as_bytes(), 200)),
                "HASH while {}",
                PHASES[at]
            ),
        }
        tally.ok[at].fetch_add(1, Ordering::Relaxed);
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A store session: SET, INCR, GET on keys of its own, through the outage.
fn store_session(
    mut conn: RawConn,
    session: usize,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> StoreOutcome {
    let unavailable = Reply::Error("ERR store unavailable".into());
    let counter_key = format!("outage:n:{session}");
    let mut keys: HashMap<String, KeyHistory> = HashMap::new();
    let mut count = CounterHistory::default();
    let mut slowest_failure = Duration::ZERO;
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("outage:s:{session}:{}", i % 3);
        let value = format!("v{session}-{i}").into_bytes();
        let at = phase.load(Ordering::Relaxed) as usize;
        let args: Vec<&[u8]> = match i % 3 {
            0 => vec![b"SET", key.as_bytes(), &value],
            1 => vec![b"INCR", counter_key.as_bytes()],
            _ => vec![b"GET", key.as_bytes()],
        };
        let sent = Instant::now();
        let reply = conn.cmd(&args);
        let took = sent.elapsed();
        assert!(
            took < FAIL_FAST_LIMIT,
            "session {session}: {} took {took:?} ({}): a store command hung",
            String::from_utf8_lossy(args[0]),
            PHASES[at]
        );
        if reply == unavailable {
            slowest_failure = slowest_failure.max(took);
            tally.unavailable[at].fetch_add(1, Ordering::Relaxed);
            match i % 3 {
                0 => keys.entry(key).or_default().maybe.push(value),
                1 => count.maybe += 1,
                _ => {}
            }
        } else {
            tally.ok[at].fetch_add(1, Ordering::Relaxed);
            match i % 3 {
                0 => {
                    assert_eq!(reply, Reply::ok(), "session {session}: SET {key}");
                    let history = keys.entry(key).or_default();
                    history.last_acked = Some(value);
                    history.maybe.clear();
                }
                1 => {
                    let Reply::Int(n) = reply else {
                        panic!("session {session}: INCR {counter_key} answered {reply:?}")
                    };
                    let step = n - count.last_acked;
                    assert!(
                        (1..=1 + count.maybe).contains(&step),
                        "session {session}: INCR {counter_key} answered {n} after {}, with {} \
                         failed INCRs in between (each may have applied once; more means one \
                         applied twice, less means one was lost)",
                        count.last_acked,
                        count.maybe
                    );
                    count.last_acked = n;
                    count.maybe = 0;
                }
                _ => {
                    let history = keys.entry(key.clone()).or_default();
                    let seen = match reply {
                        Reply::Bulk(bytes) => Some(bytes),
                        Reply::Nil => None,
                        other => panic!("session {session}: GET {key} answered {other:?}"),
                    };
                    assert!(
                        seen == history.last_acked || history.maybe.iter().any(|m| Some(m) == seen.as_ref()),
                        "session {session}: GET {key} saw {:?}; the last acknowledged SET wrote {:?}",
                        seen.map(|s| String::from_utf8_lossy(&s).into_owned()),
                        history.last_acked.as_ref().map(|s| String::from_utf8_lossy(s).into_owned())
                    );
                }
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    StoreOutcome {
        keys,
        counter_key,
        counter: count,
        slowest_failure,
    }
}

/// Waits until `done` holds, up to `limit`; panics with `what` otherwise.
fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 8, item 7: PostgreSQL stopped and started again under a mixed load; see the module
/// doc for what must hold.
#[test]
fn postgres_outage_under_load_fails_store_commands_fast_and_loses_nothing() {
    let outage = Duration::from_secs(env_number("RINGPORT_OUTAGE_SECONDS", 3));
    let cluster = pg::PgCluster::start_own();
    let server = Server::builder().store(&cluster.url()).start();
    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop = Arc::new(AtomicBool::new(false));
    let mut light = Vec::new();
    let mut light_tallies = Vec::new();
    for name in ["ping", "echo", "hash"] {
        let tally = Arc::new(Tally::default());
        light_tallies.push((name, tally.clone()));
        let (phase, stop) = (phase.clone(), stop.clone());
        light.push(spawn_session(&server, move |conn| {
            light_session(conn, name, phase, stop, tally)
        }));
    }
    let mut heavy = Vec::new();
    let mut store_tallies = Vec::new();
    for session in 0..3 {
        let tally = Arc::new(Tally::default());
        store_tallies.push(tally.clone());
        let (phase, stop) = (phase.clone(), stop.clone());
        heavy.push(spawn_session(&server, move |conn| {
            store_session(conn, session, phase, stop, tally)
        }));
    }
    let all_ok = |tallies: &[Arc<Tally>], at: u8, n: u64| {
        tallies
            .iter()
            .all(|t| t.ok[at as usize].load(Ordering::Relaxed) >= n)
    };
    wait_until(
        common::REPLY_TIMEOUT,
        "store sessions never got going",
        || all_ok(&store_tallies, BEFORE, 20),
    );

    for down in [1u8, 3] {
        if down == 1 {
            cluster.stop();
        } else {
            cluster.crash();
        }
        phase.store(down, Ordering::Relaxed);
        std::thread::sleep(outage);
        wait_until(
            common::REPLY_TIMEOUT,
            &format!(
                "a store session saw no 'store unavailable' while PostgreSQL was {}",
                PHASES[down as usize]
            ),
            || {
                store_tallies
                    .iter()
                    .all(|t| t.unavailable[down as usize].load(Ordering::Relaxed) > 0)
            },
        );
        cluster.start_again();
        phase.store(down + 1, Ordering::Relaxed);
        wait_until(
            Duration::from_secs(60),
            &format!(
                "store commands did not recover {}",
                PHASES[down as usize + 1]
            ),
            || all_ok(&store_tallies, down + 1, 20),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for thread in light {
        thread.join().expect("an inline or compute session failed");
    }
    let outcomes: Vec<StoreOutcome> = heavy
        .into_iter()
        .map(|t| t.join().expect("a store session failed"))
        .collect();

    // Inline and compute sessions were served in every phase, the outage included.
    for (name, tally) in &light_tallies {
        for (at, phase) in PHASES.iter().enumerate() {
            assert!(
                tally.ok[at].load(Ordering::Relaxed) > 0,
                "the {name} session got no reply while {phase}"
            );
        }
    }

    // Nothing acknowledged is lost: read everything back on a fresh session.
    let mut check = server.raw_authed();
    for (session, outcome) in outcomes.iter().enumerate() {
        for (key, history) in &outcome.keys {
            let now = match check.cmd(&[b"GET", key.as_bytes()]) {
                Reply::Bulk(bytes) => Some(bytes),
                Reply::Nil => None,
                other => panic!("GET {key}: {other:?}"),
            };
            assert!(
                now == history.last_acked || history.maybe.iter().any(|m| Some(m) == now.as_ref()),
                "session {session}: {key} holds {:?}; the last acknowledged SET wrote {:?}",
                now.map(|s| String::from_utf8_lossy(&s).into_owned()),
                history
                    .last_acked
                    .as_ref()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
            );
        }
        let value = match check.cmd(&[b"GET", outcome.counter_key.as_bytes()]) {
            Reply::Bulk(bytes) => counter(Some(&bytes)),
            Reply::Nil => 0,
            other => panic!("GET {}: {other:?}", outcome.counter_key),
        };
        let history = &outcome.counter;
        assert!(
            (history.last_acked..=history.last_acked + history.maybe).contains(&value),
            "session {session}: {} is {value}; the last INCR answered {} and {} failed after it",
            outcome.counter_key,
            history.last_acked,
            history.maybe
        );
    }
    let store = match check.cmd(&[b"INFO", b"store"]) {
        Reply::Bulk(text) => String::from_utf8(text).unwrap(),
        other => panic!("INFO store: {other:?}"),
    };
    let field = |name: &str| -> String {
        store
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    let per_phase = |tallies: &[Arc<Tally>], failed: bool| -> [u64; PHASES.len()] {
        let mut sums = [0; PHASES.len()];
        for t in tallies {
            for (at, sum) in sums.iter_mut().enumerate() {
                *sum += if failed {
                    &t.unavailable[at]
                } else {
                    &t.ok[at]
                }
                .load(Ordering::Relaxed);
            }
        }
        sums
    };
    let light_ok: Vec<Arc<Tally>> = light_tallies.iter().map(|(_, t)| t.clone()).collect();
    eprintln!(
        "two outages of {outage:?} under load: store commands ok per phase {PHASES:?}: \
         {:?}, unavailable {:?}, slowest failure {:?}; inline and compute ok {:?}, none failed; \
         INFO store: store_unavailable_errors={} store_reconnects={}",
        per_phase(&store_tallies, false),
        per_phase(&store_tallies, true),
        outcomes
            .iter()
            .map(|o| o.slowest_failure)
            .max()
            .unwrap_or_default(),
        per_phase(&light_ok, false),
        field("store_unavailable_errors"),
        field("store_reconnects"),
    );
}
