//! SIGTERM drains (issue 2): commands in flight finish, every reply is flushed, sessions close,
//! and the process exits 0.

mod common;

use std::time::Duration;

use common::{encode, sha256_rounds, Reply, Server};

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
