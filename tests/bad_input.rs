//! Bad input over real TCP (issue 2): each case gets its error (and, where Redis closes, a
//! closed connection), and each checks that another, already authenticated session on the same
//! server keeps working.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_alive, encode, Reply, Server, PASSWORD, USER};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The last reply before EOF must be this protocol error.
fn assert_protocol_error_then_close(server: &Server, input: &[u8], want: &str) {
    let mut raw = server.raw_authed();
    raw.send(input);
    let replies = raw.replies_to_eof(CLOSE_TIMEOUT);
    assert_eq!(
        replies.last(),
        Some(&Reply::Error(want.to_string())),
        "input {:?} gave {replies:?}",
        String::from_utf8_lossy(&input[..input.len().min(80)])
    );
}

#[test]
fn malformed_resp_gets_a_protocol_error_and_the_connection_closes() {
    let server = Server::start();
    let mut other = server.client();
    for (input, want) in [
        (
            &b"*abc\r\n"[..],
            "ERR Protocol error: invalid multibulk length",
        ),
        (
            b"*1x\r\n$4\r\nPING\r\n",
            "ERR Protocol error: invalid multibulk length",
        ),
        (
            b"*1\r\n+PING\r\n",
            "ERR Protocol error: expected '$', got '+'",
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n:12\r\n",
            "ERR Protocol error: expected '$', got ':'",
        ),
        (
            b"*1\r\n$x\r\nPING\r\n",
            "ERR Protocol error: invalid bulk length",
        ),
        (b"*1\r\n$-5\r\n", "ERR Protocol error: invalid bulk length"),
        (
            b"*99999999999\r\n",
            "ERR Protocol error: invalid multibulk length",
        ),
        (
            b"ECHO \"unterminated\r\n",
            "ERR Protocol error: unbalanced quotes in request",
        ),
        (
            b"ECHO 'abc'def\r\n",
            "ERR Protocol error: unbalanced quotes in request",
        ),
        // Good commands first: they are answered, then the error, then the close.
        (
            b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n&4\r\n",
            "ERR Protocol error: expected '$', got '&'",
        ),
    ] {
        assert_protocol_error_then_close(&server, input, want);
        assert_alive(&mut other);
    }

    // The good commands before the bad one were answered in order.
    let mut raw = server.raw_authed();
    raw.send(b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n*x\r\n");
    let replies = raw.replies_to_eof(CLOSE_TIMEOUT);
    assert_eq!(
        replies,
        vec![
            Reply::Simple("PONG".into()),
            Reply::bulk("hi"),
            Reply::Error("ERR Protocol error: invalid multibulk length".into()),
        ]
    );
    // Before AUTH too: the parser answers first.
    let mut raw = server.raw();
    raw.send(b"*1\r\n$q\r\n");
    assert_eq!(
        raw.replies_to_eof(CLOSE_TIMEOUT).last(),
        Some(&Reply::Error(
            "ERR Protocol error: invalid bulk length".into()
        ))
    );
    assert_alive(&mut other);
}

#[test]
fn an_inline_line_over_64_kib_is_refused_and_closed() {
    let server = Server::start();
    let mut other = server.client();

    // A line that never ends: refused once 64 KiB arrived without a newline.
    let mut raw = server.raw_authed();
    let mut line = b"ECHO ".to_vec();
    line.resize(70 * 1024, b'a');
    raw.send(&line);
    assert_eq!(
        raw.replies_to_eof(CLOSE_TIMEOUT),
        vec![Reply::Error(
            "ERR Protocol error: too big inline request".into()
        )]
    );
    assert_alive(&mut other);

    // The same with its newline.
    let mut raw = server.raw_authed();
    line.extend_from_slice(b"\r\n");
    raw.send(&line);
    assert_eq!(
        raw.replies_to_eof(CLOSE_TIMEOUT).last(),
        Some(&Reply::Error(
            "ERR Protocol error: too big inline request".into()
        ))
    );
    assert_alive(&mut other);

    // Just under the limit is a command like any other.
    let mut raw = server.raw_authed();
    let mut line = b"ECHO ".to_vec();
    line.resize(60 * 1024, b'b');
    line.extend_from_slice(b"\r\n");
    raw.send(&line);
    assert_eq!(raw.read_reply(), Reply::Bulk(vec![b'b'; 60 * 1024 - 5]));
    assert_alive(&mut other);
}

#[test]
fn a_bulk_over_proto_max_bulk_len_is_refused_and_closed() {
    let limit = 1024 * 1024;
    let server = Server::builder()
        .flag("--proto-max-bulk-len", "1mb")
        .start();
    let mut other = server.client();

    // Refused from the header alone: the body is never awaited.
    let mut raw = server.raw_authed();
    raw.send(format!("*2\r\n$4\r\nECHO\r\n${}\r\n", limit + 1).as_bytes());
    assert_eq!(
        raw.replies_to_eof(CLOSE_TIMEOUT),
        vec![Reply::Error(
            "ERR Protocol error: invalid bulk length".into()
        )]
    );
    assert_alive(&mut other);

    // With its body sent too (the server may close while we still write).
    let mut raw = server.raw_authed();
    let big = vec![b'z'; 4 * limit];
    let mut writer = raw.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&encode(&[b"ECHO", &big]));
    });
    let replies = raw.replies_to_eof(CLOSE_TIMEOUT);
    assert_eq!(
        replies,
        vec![Reply::Error(
            "ERR Protocol error: invalid bulk length".into()
        )]
    );
    sender.join().unwrap();
    assert_alive(&mut other);

    // At the limit it is served.
    let mut raw = server.raw_authed();
    let at_limit = vec![b'y'; limit];
    assert_eq!(raw.cmd(&[b"ECHO", &at_limit]), Reply::Bulk(at_limit));
    assert_alive(&mut other);
}

#[test]
fn unknown_commands_and_wrong_arity_keep_the_session() {
    let server = Server::start();
    let mut other = server.client();
    let mut raw = server.raw_authed();
    assert_eq!(
        raw.cmd(&[b"NOSUCHCMD", b"a", b"b"]),
        Reply::Error("ERR unknown command 'NOSUCHCMD', with args beginning with: 'a' 'b' ".into())
    );
    assert_eq!(
        raw.cmd(&[b"FLUSHALL"]),
        Reply::Error("ERR unknown command 'FLUSHALL', with args beginning with: ".into())
    );
    for (args, name) in [
        (&[&b"GET"[..]][..], "get"),
        (&[b"ECHO"], "echo"),
        (&[b"ECHO", b"a", b"b"], "echo"),
        (&[b"HASH", b"1"], "hash"),
        (&[b"SET", b"k"], "set"),
        (&[b"INCR"], "incr"),
        (&[b"MSET", b"a"], "mset"),
        (&[b"SELECT"], "select"),
    ] {
        assert_eq!(
            raw.cmd(args),
            Reply::Error(format!(
                "ERR wrong number of arguments for '{name}' command"
            )),
            "{args:?}"
        );
    }
    // Inline form, mixed case, and the session is still there.
    raw.send(b"nosuch thing\r\n");
    assert!(raw
        .read_reply()
        .expect_error()
        .starts_with("ERR unknown command 'nosuch'"));
    raw.send(b"eChO\r\n");
    assert_eq!(
        raw.read_reply(),
        Reply::Error("ERR wrong number of arguments for 'echo' command".into())
    );
    assert_eq!(raw.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_alive(&mut other);
}

#[test]
fn commands_before_auth_get_noauth() {
    let server = Server::start();
    let mut other = server.client();
    let mut raw = server.raw();
    let noauth = Reply::Error("NOAUTH Authentication required.".into());
    for args in [
        &[&b"PING"[..]][..],
        &[b"ECHO", b"x"],
        &[b"GET", b"k"],
        &[b"SET", b"k", b"v"],
        &[b"HASH", b"1", b"x"],
        &[b"INFO"],
        &[b"CLIENT", b"ID"],
        &[b"SELECT", b"0"],
        &[b"NOSUCHCMD"],
    ] {
        assert_eq!(raw.cmd(args), noauth, "{args:?} before AUTH");
    }
    raw.send(b"PING\r\n");
    assert_eq!(raw.read_reply(), noauth);
    // HELLO without AUTH is refused in Redis's words, still without closing.
    let reply = raw.cmd(&[b"HELLO", b"3"]);
    assert!(reply.expect_error().starts_with("NOAUTH"), "{reply:?}");
    assert_alive(&mut other);

    // AUTH still works on the same connection, and then everything does.
    raw.auth(USER, PASSWORD);
    assert_eq!(raw.cmd(&[b"PING"]), Reply::Simple("PONG".into()));

    // QUIT works before AUTH.
    let mut raw = server.raw();
    assert_eq!(raw.cmd(&[b"QUIT"]), Reply::ok());
    assert!(raw.closes_within(CLOSE_TIMEOUT));
    assert_alive(&mut other);
}

#[test]
fn wrong_passwords_get_wrongpass_and_ten_close_the_connection() {
    let server = Server::start();
    let mut other = server.client();
    let wrongpass =
        Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into());

    // Nine failures (wrong password, unknown user, `AUTH password` for `default`) leave the
    // connection open, and the right password still works.
    let mut raw = server.raw();
    for i in 0..9 {
        let reply = match i % 3 {
            0 => raw.cmd(&[b"AUTH", USER.as_bytes(), b"wrong"]),
            1 => raw.cmd(&[b"AUTH", b"nobody", PASSWORD.as_bytes()]),
            _ => raw.cmd(&[b"AUTH", b"wrong"]),
        };
        assert_eq!(reply, wrongpass, "attempt {i}");
    }
    raw.auth(USER, PASSWORD);
    assert_eq!(raw.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_alive(&mut other);

    // The tenth failure closes it (pipelined: every attempt is still answered first).
    let mut raw = server.raw();
    let mut batch = Vec::new();
    for _ in 0..10 {
        batch.extend(encode(&[b"AUTH", USER.as_bytes(), b"wrong"]));
    }
    raw.send(&batch);
    let replies = raw.replies_to_eof(CLOSE_TIMEOUT);
    assert_eq!(
        replies.iter().filter(|r| **r == wrongpass).count(),
        10,
        "{replies:?}"
    );
    assert_eq!(replies[..10], vec![wrongpass.clone(); 10][..]);
    assert_alive(&mut other);

    // One at a time, the same.
    let mut raw = server.raw();
    for i in 0..10 {
        raw.send(&encode(&[b"AUTH", USER.as_bytes(), b"nope"]));
        assert_eq!(raw.read_reply(), wrongpass, "attempt {i}");
    }
    assert!(
        raw.closes_within(CLOSE_TIMEOUT),
        "open after ten failed AUTHs"
    );
    assert_alive(&mut other);
}

#[test]
fn a_connection_that_never_authenticates_is_closed_after_auth_timeout() {
    let server = Server::builder().flag("--auth-timeout", "1s").start();
    let mut other = server.client();

    // Sends one command (refused), then nothing.
    let mut chatty = server.raw();
    assert_eq!(
        chatty.cmd(&[b"PING"]),
        Reply::Error("NOAUTH Authentication required.".into())
    );
    let replies = chatty.replies_to_eof(CLOSE_TIMEOUT);
    assert!(
        replies.iter().all(|r| matches!(r, Reply::Error(_))),
        "{replies:?}"
    );
    assert_alive(&mut other);

    // Sends nothing at all.
    let mut silent = server.raw();
    let replies = silent.replies_to_eof(CLOSE_TIMEOUT);
    assert!(
        replies.iter().all(|r| matches!(r, Reply::Error(_))),
        "{replies:?}"
    );

    // The authenticated sessions outlived the timeout.
    std::thread::sleep(Duration::from_millis(1500));
    assert_alive(&mut other);
    let mut late = server.raw_authed();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(late.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
}

/// Polls the server's VmRSS until told to stop; keeps the maximum (KiB).
fn watch_rss(pid: u32) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let (s, m) = (stop.clone(), max.clone());
    let handle = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            if let Some(rss) = common::rss_kib(pid) {
                m.fetch_max(rss, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (stop, max, handle)
}

#[test]
fn a_client_that_never_reads_is_closed_at_max_output_buffer() {
    let server = Server::builder().flag("--max-output-buffer", "1mb").start();
    let mut other = server.client();
    let baseline_kib = server.rss_kib();
    let (stop, max_rss, watcher) = watch_rss(server.pid());

    // 64 KiB ECHOs, pipelined, replies never read: up to 512 MiB of replies if nothing stops it.
    let greedy = server.raw_authed();
    let mut stream = greedy.stream.try_clone().unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let command = encode(&[b"ECHO", &vec![b'e'; 64 * 1024]]);
    let mut batch = Vec::new();
    for _ in 0..64 {
        batch.extend_from_slice(&command);
    }
    let mut sent: u64 = 0;
    let mut refused = None;
    while sent < 512 << 20 {
        match stream.write_all(&batch) {
            Ok(()) => sent += batch.len() as u64,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let max_kib = max_rss.load(Ordering::Relaxed);
    eprintln!(
        "sent {} MiB before the server closed the connection ({refused:?}); server RSS {} MiB \
         at start, {} MiB at most",
        sent >> 20,
        baseline_kib >> 10,
        max_kib >> 10
    );
    let error = refused
        .unwrap_or_else(|| panic!("512 MiB of unread replies and the connection is still open"));
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "the write failed because the server closed the connection, not {error:?}"
    );
    assert!(
        max_kib < baseline_kib + 256 * 1024,
        "server RSS grew from {baseline_kib} KiB to {max_kib} KiB"
    );
    assert_alive(&mut other);

    // A client that does read its replies is not cut, however long its pipeline of HASH and
    // PING.
    let mut raw = server.raw_authed();
    let mut batch = Vec::new();
    for i in 0..2000 {
        if i % 2 == 0 {
            batch.extend(encode(&[b"HASH", b"10", b"x"]));
        } else {
            batch.extend(encode(&[b"PING"]));
        }
    }
    raw.send(&batch);
    assert_alive(&mut other);
    for i in 0..2000 {
        let reply = raw.read_reply();
        if i % 2 == 1 {
            assert_eq!(reply, Reply::Simple("PONG".into()));
        }
    }
    assert!(server.rss_kib() < baseline_kib + 256 * 1024);
}

fn accept_errors(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("rings").query(conn).unwrap();
    info.split([',', '\r', '\n'])
        .filter_map(|f| f.strip_prefix("accept_errors="))
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn running_out_of_descriptors_on_accept_is_survived() {
    // One ring whatever the core count: about 12 descriptors go to start-up (listeners, the
    // ring, eventfds, the store), leaving room for a dozen or so sessions.
    let server = Server::builder()
        .nofile_limit(32)
        .flag("--rings", "1")
        .start();
    let mut other = server.client();
    // With direct descriptors the ring also holds up to 32 sessions in its table of registered
    // files, and every accept still needs a descriptor for a moment: more connections reach
    // the limit. Fewer than the server holds at once, so the waiting ones fit once the served
    // ones close.
    let info: String = redis::cmd("INFO").arg("server").query(&mut other).unwrap();
    let count = if info.contains("direct_descriptors:yes") {
        80
    } else {
        30
    };
    let mut hello = encode(&[b"AUTH", USER.as_bytes(), PASSWORD.as_bytes()]);
    hello.extend(encode(&[b"PING"]));
    let mut conns: Vec<common::RawConn> = (0..count)
        .map(|_| {
            let mut conn = server.raw();
            conn.send(&hello);
            conn
        })
        .collect();
    let deadline = std::time::Instant::now() + CLOSE_TIMEOUT;
    while accept_errors(&mut other) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never hit its descriptor limit on accept"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_alive(&mut other);

    // Those accepted are served; the rest wait in the listen backlog.
    std::thread::sleep(Duration::from_millis(500));
    let (mut served, mut waiting): (Vec<_>, Vec<_>) =
        conns.drain(..).partition(|conn| conn.has_data_now());
    assert!(!waiting.is_empty(), "every connection was accepted");
    for conn in &mut served {
        assert_eq!(conn.read_reply(), Reply::ok());
        assert_eq!(conn.read_reply(), Reply::Simple("PONG".into()));
    }
    eprintln!(
        "{} connections served, {} waiting for a descriptor",
        served.len(),
        waiting.len()
    );

    // Descriptors come back as sessions close: the waiting ones are accepted and served.
    drop(served);
    for (i, conn) in waiting.iter_mut().enumerate() {
        assert_eq!(
            conn.read_reply(),
            Reply::ok(),
            "AUTH of waiting connection {i}"
        );
        assert_eq!(conn.read_reply(), Reply::Simple("PONG".into()));
    }
    assert_alive(&mut other);
}

/// A field of `INFO <pool>` (`store` or `compute`), e.g. `queue_depth` or `jobs_running`.
fn pool_field(conn: &mut redis::Connection, pool: &str, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(pool).query(conn).unwrap();
    let field = format!("{pool}_{name}:");
    info.lines()
        .find_map(|l| l.strip_prefix(field.as_str()))
        .unwrap_or_else(|| panic!("{field} in INFO {pool}"))
        .trim()
        .parse()
        .unwrap()
}

fn wait_for_field(conn: &mut redis::Connection, pool: &str, name: &str, value: u64) {
    let deadline = std::time::Instant::now() + CLOSE_TIMEOUT;
    while pool_field(conn, pool, name) != value {
        assert!(
            std::time::Instant::now() < deadline,
            "INFO {pool} never showed {name} = {value}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `pool` runs `n` jobs.
fn wait_for_running(conn: &mut redis::Connection, pool: &str, n: u64) {
    wait_for_field(conn, pool, "jobs_running", n);
}

/// Waits until `n` jobs wait in `pool`'s queue.
fn wait_for_depth(conn: &mut redis::Connection, pool: &str, n: u64) {
    wait_for_field(conn, pool, "queue_depth", n);
}

#[test]
fn full_pools_answer_busy_at_once() {
    let server = Server::builder()
        .flag("--store-threads", "1")
        .flag("--store-queue", "1")
        .flag("--compute-threads", "1")
        .flag("--compute-queue", "1")
        .start();
    let mut other = server.client();
    let mut first = server.raw_authed();
    let mut second = server.raw_authed();
    let mut third = server.raw_authed();
    let busy = Reply::Error("BUSY server overloaded, try again".into());

    // One store worker and room for one queued job: a SLEEP runs, a GET waits in the queue,
    // the next store command is refused at once. A job's reply can reach the client before its
    // worker counts it finished (AUTH's user lookup replies from inside its store job), so wait
    // for an idle pool first: then `jobs_running = 1` can only be the SLEEP.
    wait_for_running(&mut other, "store", 0);
    // Well under --store-timeout (1 s): a job queued behind a worker that has made no progress
    // for that long is answered 'store unavailable' (the stuck-store check), and a SLEEP of
    // exactly the timeout raced it on a loaded machine.
    first.send_cmd(&[b"SLEEP", b"500"]);
    wait_for_running(&mut other, "store", 1);
    second.send_cmd(&[b"GET", b"k"]);
    wait_for_depth(&mut other, "store", 1);
    assert_eq!(third.cmd(&[b"GET", b"k"]), busy);
    assert_eq!(third.cmd(&[b"SET", b"k", b"v"]), busy);
    // Other pools and inline commands are unaffected.
    assert_eq!(third.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(
        third.cmd(&[b"HASH", b"1", b"x"]),
        Reply::bulk(common::sha256_rounds(b"x", 1))
    );
    assert_alive(&mut other);
    assert_eq!(first.read_reply(), Reply::ok());
    assert_eq!(second.read_reply(), Reply::Nil);
    assert_eq!(third.cmd(&[b"GET", b"k"]), Reply::Nil, "room again");

    // The same for the compute pool: a long HASH runs, a second one waits, a third is refused.
    wait_for_running(&mut other, "compute", 0);
    first.send_cmd(&[b"HASH", b"300000", b"slow"]);
    wait_for_running(&mut other, "compute", 1);
    second.send_cmd(&[b"HASH", b"1", b"x"]);
    wait_for_depth(&mut other, "compute", 1);
    assert_eq!(third.cmd(&[b"HASH", b"1", b"x"]), busy);
    assert_eq!(third.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_alive(&mut other);
    assert_eq!(
        first.read_reply(),
        Reply::bulk(common::sha256_rounds(b"slow", 300_000))
    );
    assert_eq!(
        second.read_reply(),
        Reply::bulk(common::sha256_rounds(b"x", 1))
    );
    assert_eq!(
        third.cmd(&[b"HASH", b"1", b"x"]),
        Reply::bulk(common::sha256_rounds(b"x", 1)),
        "room again"
    );
}

#[test]
fn sessions_over_max_sessions_are_refused_with_an_error() {
    let server = Server::builder().flag("--max-sessions", "3").start();
    let mut other = server.client();
    let mut second = server.raw_authed();
    let mut third = server.raw_authed();

    for _ in 0..3 {
        let mut refused = server.raw();
        assert_eq!(
            refused.replies_to_eof(CLOSE_TIMEOUT),
            vec![Reply::Error("ERR max number of clients reached".into())]
        );
    }
    assert_alive(&mut other);
    assert_eq!(second.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(third.cmd(&[b"PING"]), Reply::Simple("PONG".into()));

    // A closed session frees its place (the count drops once the server saw the close).
    assert_eq!(third.cmd(&[b"QUIT"]), Reply::ok());
    assert!(third.closes_within(CLOSE_TIMEOUT));
    let deadline = std::time::Instant::now() + CLOSE_TIMEOUT;
    loop {
        let mut next = server.raw();
        next.send(&encode(&[b"AUTH", USER.as_bytes(), PASSWORD.as_bytes()]));
        // A refused connection may be reset before its error is read.
        match next.try_read_reply(CLOSE_TIMEOUT) {
            Ok(Reply::Simple(ok)) if ok == "OK" => {
                assert_eq!(next.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
                break;
            }
            Ok(Reply::Error(e)) if e == "ERR max number of clients reached" => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the freed place never came back"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(common::ReadEnd::Closed) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the freed place never came back"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_alive(&mut other);
}
