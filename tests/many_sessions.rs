//! 10,000 concurrent authenticated sessions each get PONG (issue 2).
//!
//! Raw sockets, connected in batches, each pipelining `AUTH` + `PING` in one write: a redis
//! `Connection` per session would cost far more time than the server does. The test raises its
//! own RLIMIT_NOFILE to the hard limit first; the server, a child process, inherits it.

mod common;

use std::io::Write;
use std::time::Instant;

use common::{encode, RawConn, Reply, Server, PASSWORD, USER};

const SESSIONS: usize = 10_000;
const BATCH: usize = 500;

#[test]
fn ten_thousand_concurrent_authenticated_sessions_each_get_pong() {
    let limit = common::raise_nofile_limit();
    assert!(
        limit >= SESSIONS as u64 + 500,
        "RLIMIT_NOFILE hard limit {limit} is too low for {SESSIONS} sessions in this process \
         (and as many in the server): raise it (ulimit -Hn) to at least {}",
        SESSIONS + 500
    );
    let server = Server::start();
    // One AUTH first, so the rest hit the verified-credential cache instead of each running
    // argon2id (500 concurrent first AUTHs would all miss it).
    let mut conn = server.client();
    let mut hello = encode(&[b"AUTH", USER.as_bytes(), PASSWORD.as_bytes()]);
    hello.extend(encode(&[b"PING"]));

    let started = Instant::now();
    let mut sessions: Vec<RawConn> = Vec::with_capacity(SESSIONS);
    while sessions.len() < SESSIONS {
        let start = sessions.len();
        for _ in 0..BATCH.min(SESSIONS - start) {
            let mut conn = server.raw();
            conn.send(&hello);
            sessions.push(conn);
        }
        for (i, conn) in sessions[start..].iter_mut().enumerate() {
            assert_eq!(
                conn.read_reply(),
                Reply::ok(),
                "AUTH of session {}",
                start + i
            );
            assert_eq!(
                conn.read_reply(),
                Reply::Simple("PONG".into()),
                "PING of session {}",
                start + i
            );
        }
    }

    let connected_after = started.elapsed();

    // All of them at once, still open: one more PING each, every write before any read.
    let ping = encode(&[b"PING", b"again"]);
    for conn in &mut sessions {
        conn.stream.write_all(&ping).unwrap();
    }
    for (i, conn) in sessions.iter_mut().enumerate() {
        assert_eq!(conn.read_reply(), Reply::bulk("again"), "session {i}");
    }

    let info: String = redis::cmd("INFO").arg("clients").query(&mut conn).unwrap();
    let connected: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .expect("connected_clients in INFO")
        .trim()
        .parse()
        .unwrap();
    assert!(connected > SESSIONS, "connected_clients:{connected}");
    eprintln!(
        "{SESSIONS} sessions connected and authenticated in {connected_after:?}, pinged again \
         by {:?}; server RSS {} MiB",
        started.elapsed(),
        server.rss_kib() >> 10
    );
}
