//! SIGTERM drains (issue 2): commands in flight finish, every reply is flushed, sessions close,
//! and the process exits 0. With `--drain-grace` (issue 16) `/ready` turns 503 first, while the
//! server still accepts and serves for the grace, so a load balancer moves new sessions away
//! before anything is refused.

mod common;

use std::time::{Duration, Instant};

use common::{encode, http_status, sha256_rounds, Reply, Server};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn sigterm_with_a_pipelined_batch_in_flight_delivers_every_reply() {
    let mut server = Server::start();
    let mut idle = server.raw_authed();
    let mut busy = server.raw_authed();
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend(encode(&[b"HASH", b"2000", format!("x{i}").as_bytes()]));
    }
    busy.send(&batch);
    let first = busy.read_reply();
    assert_eq!(first, Reply::bulk(sha256_rounds(b"x0", 2_000)));

    server.signal("TERM");
    // A connection made during the drain is never served (refused, or closed unanswered).
    std::thread::sleep(Duration::from_millis(100));
    let late = std::net::TcpStream::connect(server.addr)
        .ok()
        .map(|stream| {
            let mut late = common::RawConn::from_stream(stream);
            // The server may already have closed it; a failed write is fine.
            let _ = std::io::Write::write_all(
                &mut late.stream,
                &encode(&[
                    b"AUTH",
                    common::USER.as_bytes(),
                    common::PASSWORD.as_bytes(),
                ]),
            );
            late
        });
    let rest = busy.replies_to_eof(DRAIN_TIMEOUT);
    assert_eq!(
        rest.len(),
        199,
        "every reply of the batch arrives before the close"
    );
    for (i, reply) in rest.iter().enumerate() {
        let data = format!("x{}", i + 1);
        assert_eq!(
            reply,
            &Reply::bulk(sha256_rounds(data.as_bytes(), 2_000)),
            "reply {}",
            i + 1
        );
    }
    // An idle session is simply closed.
    assert_eq!(idle.replies_to_eof(DRAIN_TIMEOUT), Vec::<Reply>::new());
    let status = server
        .wait_exit(DRAIN_TIMEOUT)
        .expect("ringport exits after draining");
    assert!(status.success(), "drained server exited with {status}");
    if let Some(mut late) = late {
        assert_eq!(
            late.replies_to_eof(DRAIN_TIMEOUT),
            Vec::<Reply>::new(),
            "a connection made during the drain was served"
        );
    }
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "nothing listens after the drain"
    );
}

#[test]
fn sigterm_finishes_store_writes_in_flight() {
    let mut server = Server::start();
    let mut raw = server.raw_authed();
    // A slow store command, then writes queued behind it on the same session.
    let mut batch = encode(&[b"SLEEP", b"300"]);
    batch.extend(encode(&[b"SET", b"drained", b"yes"]));
    batch.extend(encode(&[b"INCR", b"counter"]));
    raw.send(&batch);
    // Let the SLEEP reach the store pool, then stop the server.
    std::thread::sleep(Duration::from_millis(100));
    server.signal("TERM");
    assert_eq!(
        raw.replies_to_eof(DRAIN_TIMEOUT),
        vec![Reply::ok(), Reply::ok(), Reply::Int(1)]
    );
    let status = server
        .wait_exit(DRAIN_TIMEOUT)
        .expect("exits after draining");
    assert!(status.success(), "exit status {status}");

    server.restart();
    let mut raw = server.raw_authed();
    assert_eq!(raw.cmd(&[b"GET", b"drained"]), Reply::bulk("yes"));
    assert_eq!(raw.cmd(&[b"GET", b"counter"]), Reply::bulk("1"));
}

#[test]
fn sigterm_turns_unready_first_and_stops_accepting_after_the_grace() {
    const GRACE: Duration = Duration::from_millis(1500);
    let mut server = Server::builder()
        .flag("--drain-grace", "1500ms")
        .flag("--metrics-addr", "127.0.0.1:0")
        .start();
    let metrics = server.metrics_addr();
    // Ready once the store's connections are up, which may trail the listening line a little.
    common::eventually("/ready answers 200", || {
        http_status(metrics, "/ready") == 200
    });
    let mut before = server.raw_authed();

    // Timed from before the signal: the server's grace cannot start earlier than that.
    let signalled = Instant::now();
    server.signal("TERM");
    while http_status(metrics, "/ready") != 503 {
        assert!(
            signalled.elapsed() < GRACE,
            "/ready still 200 after {:?} of the grace",
            signalled.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(http_status(metrics, "/health"), 200, "alive while draining");
    // Within the grace nothing changes for clients: old sessions are served, new ones accepted.
    assert_eq!(before.cmd(&[b"SET", b"k", b"v"]), Reply::ok());
    let mut during = server.raw_authed();
    assert_eq!(during.cmd(&[b"GET", b"k"]), Reply::bulk("v"));
    assert!(
        signalled.elapsed() < GRACE,
        "the checks above outlasted the grace ({:?}); the test proves nothing",
        signalled.elapsed()
    );

    // Then the drain as before: idle sessions are closed with nothing more sent, and the
    // process exits 0, not before the grace is over.
    assert_eq!(before.replies_to_eof(DRAIN_TIMEOUT), Vec::<Reply>::new());
    assert_eq!(during.replies_to_eof(DRAIN_TIMEOUT), Vec::<Reply>::new());
    assert!(signalled.elapsed() >= GRACE, "closed within the grace");
    let status = server
        .wait_exit(DRAIN_TIMEOUT)
        .expect("ringport exits after draining");
    assert!(status.success(), "drained server exited with {status}");
}

#[test]
fn a_second_signal_ends_the_grace() {
    let mut server = Server::builder().flag("--drain-grace", "60s").start();
    let mut idle = server.raw_authed();
    server.signal("TERM");
    // The grace is under way when the session is still served.
    assert_eq!(idle.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    server.signal("INT");
    let started = Instant::now();
    assert_eq!(idle.replies_to_eof(DRAIN_TIMEOUT), Vec::<Reply>::new());
    let status = server
        .wait_exit(DRAIN_TIMEOUT)
        .expect("ringport exits after draining");
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the second signal did not end the 60 s grace ({:?})",
        started.elapsed()
    );
}
