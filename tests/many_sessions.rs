//! 10,000 concurrent authenticated sessions each get PONG (issue 2).
//!
//! Raw sockets, connected in batches, each pipelining `AUTH` + `PING` in one write: a redis
//! `Connection` per session would cost far more time than the server does. The test raises its
//! own RLIMIT_NOFILE to the hard limit first; the server, a child process, inherits it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{encode, info, RawConn, Reply, Server, PASSWORD, USER};

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
    let started = Instant::now();
    let mut sessions = open_authed(&server, SESSIONS);

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

/// AUTH + PING in one write on `count` new sessions, `BATCH` at a time; every reply checked.
fn open_authed(server: &Server, count: usize) -> Vec<RawConn> {
    let mut hello = encode(&[b"AUTH", USER.as_bytes(), PASSWORD.as_bytes()]);
    hello.extend(encode(&[b"PING"]));
    let mut sessions: Vec<RawConn> = Vec::with_capacity(count);
    while sessions.len() < count {
        let start = sessions.len();
        for _ in 0..BATCH.min(count - start) {
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
    sessions
}

/// Closes half the sessions from the server's side (QUIT: each must see its end, which on a
/// direct descriptor comes only when the ring clears its table entry) and the rest from the
/// client's, then waits until the server holds only `admin`'s session, with no socket left in
/// CLOSE-WAIT.
fn close_all(server: &Server, admin: &mut RawConn, mut sessions: Vec<RawConn>) {
    let quit = encode(&[b"QUIT"]);
    let half = sessions.len() / 2;
    for conn in &mut sessions[..half] {
        conn.send(&quit);
    }
    for (i, conn) in sessions[..half].iter_mut().enumerate() {
        assert_eq!(conn.read_reply(), Reply::ok(), "QUIT of session {i}");
        assert!(
            conn.closes_within(Duration::from_secs(10)),
            "session {i} was not closed after QUIT"
        );
    }
    drop(sessions);
    common::eventually("every closed session gone from the server", || {
        common::ring_field_sum(&info(admin, "rings"), "sessions") == 1
            && common::close_wait(server.port()) == 0
    });
}

/// Issue 15: on io_uring each ring moves a session's socket into its own table of registered
/// files (direct descriptors), so sessions do not hold entries of the process's descriptor
/// table, whose limit no longer caps them. A server whose RLIMIT_NOFILE is 256 serves 600
/// sessions at once, closes them (a server-side close must reach the peer), and serves 600 new
/// ones on the cleared entries.
#[test]
fn sessions_past_the_servers_descriptor_limit_live_in_the_rings_file_tables() {
    const LIMIT: u64 = 256;
    const MANY: usize = 600;
    common::raise_nofile_limit();
    let server = Server::builder()
        .nofile_limit(LIMIT)
        .flag("--rings", "2")
        .start();
    let mut admin = server.raw_authed();
    if !info(&mut admin, "server").contains("direct_descriptors:yes") {
        // The epoll backend and the older kernel profiles keep plain descriptors; the test
        // below covers that path on every run.
        assert_eq!(
            common::ring_field_sum(&info(&mut admin, "rings"), "direct"),
            0
        );
        eprintln!("no direct descriptors under {:?}", common::profile_flags());
        return;
    }
    for round in 0..2 {
        let mut sessions = open_authed(&server, MANY);
        let rings = info(&mut admin, "rings");
        let direct = common::ring_field_sum(&rings, "direct");
        assert_eq!(
            common::ring_field_sum(&rings, "sessions"),
            MANY as u64 + 1,
            "round {round}: {rings}"
        );
        assert!(
            direct > MANY as u64 + 1 - LIMIT,
            "round {round}: {direct} sessions on direct descriptors of {MANY}, with a limit of \
             {LIMIT} descriptors:\n{rings}"
        );
        let ping = encode(&[b"PING", b"again"]);
        for conn in &mut sessions {
            conn.send(&ping);
        }
        for (i, conn) in sessions.iter_mut().enumerate() {
            assert_eq!(conn.read_reply(), Reply::bulk("again"), "session {i}");
        }
        eprintln!(
            "round {round}: {MANY} sessions, {direct} on direct descriptors, the server holds {} \
             descriptors (limit {LIMIT})",
            common::open_fds(server.pid())
        );
        close_all(&server, &mut admin, sessions);
    }
}

/// The fallback: with direct descriptors switched off, each session holds a descriptor, given
/// back when it closes.
#[test]
fn with_direct_descriptors_off_each_session_holds_a_descriptor() {
    const COUNT: usize = 200;
    let server = Server::builder()
        .flag("--uring-disable", "direct-descriptors")
        .start();
    let mut admin = server.raw_authed();
    assert!(info(&mut admin, "server").contains("direct_descriptors:no"));
    let before = common::open_fds(server.pid());
    let sessions = open_authed(&server, COUNT);
    let during = common::open_fds(server.pid());
    assert!(
        during >= before + COUNT,
        "{COUNT} sessions but the server's descriptors went from {before} to {during}"
    );
    assert_eq!(
        common::ring_field_sum(&info(&mut admin, "rings"), "direct"),
        0
    );
    close_all(&server, &mut admin, sessions);
    common::eventually("the sessions' descriptors given back", || {
        common::open_fds(server.pid()) <= before
    });
}

/// Value `j` of session `i`: letters shifted by both, so a byte out of place shows.
fn value_of(i: usize, j: usize, size: usize) -> Vec<u8> {
    (0..size).map(|n| b'a' + ((n + i + j) % 26) as u8).collect()
}

/// Issue 15: where the kernel consumes receive buffers incrementally (6.12+), each receive takes
/// only the bytes it brings, at the point in the current buffer where the previous one stopped.
/// With four buffers of 4 KiB per ring, 200 sessions at once each send values that cross buffer
/// ends at every offset and read them back, pipelined; every byte must come back in place, with
/// incremental consumption (where the kernel has it) and without.
#[test]
fn values_cross_small_receive_buffers_intact_with_and_without_incremental_consumption() {
    const SESSIONS: usize = 200;
    for disable in ["", "incremental-buffers"] {
        let server = Server::builder()
            .flag("--rings", "2")
            .flag("--recv-buffers", "4")
            .flag("--recv-buffer-size", "4kb")
            .flag("--uring-disable", disable)
            .start();
        let mut admin = server.raw_authed();
        let server_info = info(&mut admin, "server");
        let release = server_info
            .lines()
            .find_map(|l| l.strip_prefix("os:Linux "))
            .unwrap_or_default()
            .to_string();
        let incremental = server_info.contains("incremental_buffers:yes");
        let memory = info(&mut admin, "memory");
        assert!(
            memory.contains("recv_buffer_bytes_per_ring:16384\r\n"),
            "{memory}"
        );
        // On by default from 6.12 on; the older kernel profiles and epoll go without.
        let flags = common::profile_flags();
        let older_profile = flags
            .windows(2)
            .any(|pair| pair[0] == "--kernel-profile" && pair[1] != "newest");
        let expected = disable.is_empty()
            && !older_profile
            && server_info.contains("recv_path:MultishotBufRing")
            && ringport_ring::probe::parse_version(&release) >= (6, 12);
        assert_eq!(
            incremental, expected,
            "{disable:?}, kernel {release}, {flags:?}"
        );
        let mut sessions = open_authed(&server, SESSIONS);
        // Sizes around the buffer size and its multiples, so that values and the commands
        // around them start and end at every kind of place in a buffer.
        let sizes = [1usize, 17, 4093, 4096, 4099, 9000, 20_000];
        for (i, conn) in sessions.iter_mut().enumerate() {
            let mut batch = Vec::new();
            for (j, size) in sizes.iter().enumerate() {
                let key = format!("s{i}:{j}");
                batch.extend(encode(&[b"SET", key.as_bytes(), &value_of(i, j, *size)]));
                batch.extend(encode(&[b"PING", format!("{i}.{j}").as_bytes()]));
            }
            conn.send(&batch);
        }
        for (i, conn) in sessions.iter_mut().enumerate() {
            for j in 0..sizes.len() {
                assert_eq!(conn.read_reply(), Reply::ok(), "session {i} SET {j}");
                assert_eq!(
                    conn.read_reply(),
                    Reply::bulk(format!("{i}.{j}")),
                    "session {i} PING {j}"
                );
            }
        }
        for (i, conn) in sessions.iter_mut().enumerate() {
            let mut batch = Vec::new();
            for j in 0..sizes.len() {
                batch.extend(encode(&[b"GET", format!("s{i}:{j}").as_bytes()]));
            }
            conn.send(&batch);
        }
        for (i, conn) in sessions.iter_mut().enumerate() {
            for (j, size) in sizes.iter().enumerate() {
                assert_eq!(
                    conn.read_reply(),
                    Reply::Bulk(value_of(i, j, *size)),
                    "session {i} GET {j} ({size} bytes)"
                );
            }
        }
        eprintln!(
            "{disable:?}: incremental={incremental}, rings: {}",
            info(&mut admin, "rings").trim()
        );
        close_all(&server, &mut admin, sessions);
    }
}
