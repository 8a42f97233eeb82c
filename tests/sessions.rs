//! Authenticated sessions over real TCP (issue 2): AUTH, PING/ECHO with binary data, HASH against
//! SHA-256 computed here, a 10,000-command pipeline, INFO's rings, and the handshake modern
//! clients send (HELLO 3, CLIENT SETINFO, SELECT).

mod common;

use common::{encode, sha256_rounds, Reply, Server, PASSWORD, USER};
use redis::{ProtocolVersion, Value};

/// Bytes a text protocol would choke on: NUL, CR LF, 0xff, and every other byte value.
fn awkward_bytes() -> Vec<u8> {
    let mut bytes = b"a\0b\r\nc\xff\xfe\r\n\r\n$3\r\n*1\r\n".to_vec();
    bytes.extend(0..=255u8);
    bytes
}

#[test]
fn auth_then_ping_and_echo_carry_binary_data() {
    let server = Server::start();
    let mut conn = server.client();

    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
    let data = awkward_bytes();
    let echoed: Vec<u8> = redis::cmd("ECHO").arg(&data).query(&mut conn).unwrap();
    assert_eq!(echoed, data);
    let pinged: Vec<u8> = redis::cmd("PING").arg(&data).query(&mut conn).unwrap();
    assert_eq!(pinged, data);
    let empty: Vec<u8> = redis::cmd("ECHO").arg(&b""[..]).query(&mut conn).unwrap();
    assert!(empty.is_empty());

    // A large value spans many receive buffers (16 KiB each by default).
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let echoed: Vec<u8> = redis::cmd("ECHO").arg(&large).query(&mut conn).unwrap();
    assert!(echoed == large, "a 3 MB ECHO came back different");

    // The same over a raw socket, in inline and multibulk form, byte by byte.
    let mut raw = server.raw();
    raw.send(format!("AUTH {USER} {PASSWORD}\r\n").as_bytes());
    assert_eq!(raw.read_reply(), Reply::ok());
    raw.send(b"PING\r\n");
    assert_eq!(raw.read_reply(), Reply::Simple("PONG".into()));
    raw.send(b"ECHO \"quoted \\x00\\xff\\r\\n\"\r\n");
    assert_eq!(raw.read_reply(), Reply::bulk(b"quoted \0\xff\r\n"));
    for byte in encode(&[b"ECHO", &data]) {
        raw.send(&[byte]);
    }
    assert_eq!(raw.read_reply(), Reply::bulk(&data));
    assert_eq!(raw.cmd(&[b"ACL", b"WHOAMI"]), Reply::bulk(USER));
}

#[test]
fn hash_equals_sha256_applied_rounds_times() {
    let server = Server::start();
    let mut conn = server.client();
    let data = awkward_bytes();
    for (rounds, input) in [
        (1u32, &b"x"[..]),
        (2, &b"x"[..]),
        (1, &b""[..]),
        (7, &data[..]),
        (1000, &b"ringport"[..]),
        (100_000, &b"a longer run"[..]),
    ] {
        let reply: String = redis::cmd("HASH")
            .arg(rounds)
            .arg(input)
            .query(&mut conn)
            .unwrap();
        assert_eq!(reply, sha256_rounds(input, rounds), "HASH {rounds}");
    }
    // The known answer for one round, so the helper itself is checked too.
    assert_eq!(
        sha256_rounds(b"abc", 1),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    let mut raw = server.raw_authed();
    for bad in [&b"0"[..], b"-1", b"10000001"] {
        let reply = raw.cmd(&[b"HASH", bad, b"x"]);
        assert!(
            reply.expect_error().starts_with("ERR "),
            "HASH {bad:?}: {reply:?}"
        );
    }
    assert_eq!(
        raw.cmd(&[b"HASH", b"many", b"x"]),
        Reply::Error("ERR value is not an integer or out of range".into())
    );
    assert_eq!(raw.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
}

#[test]
fn ten_thousand_pipelined_commands_come_back_complete_and_in_order() {
    let server = Server::start();
    let mut raw = server.raw_authed();
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..10_000u32 {
        match i % 3 {
            0 => {
                batch.extend(encode(&[b"PING"]));
                expected.push(Reply::Simple("PONG".into()));
            }
            1 => {
                let message = format!("message {i} \0\r\n");
                batch.extend(encode(&[b"ECHO", message.as_bytes()]));
                expected.push(Reply::bulk(message));
            }
            _ => {
                let rounds = 1 + i % 17;
                let data = format!("data-{i}");
                batch.extend(encode(&[
                    b"HASH",
                    rounds.to_string().as_bytes(),
                    data.as_bytes(),
                ]));
                expected.push(Reply::bulk(sha256_rounds(data.as_bytes(), rounds)));
            }
        }
    }
    // Write from another thread while this one reads, so neither side's buffers decide.
    let mut writer = raw.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&batch).expect("send the pipeline");
    });
    for (i, want) in expected.iter().enumerate() {
        let got = raw.read_reply();
        assert_eq!(&got, want, "reply {i} of 10000");
    }
    sender.join().unwrap();
    assert_eq!(raw.cmd(&[b"PING"]), Reply::Simple("PONG".into()));

    // The same through the redis crate's pipeline.
    let mut conn = server.client();
    let mut pipe = redis::pipe();
    for i in 0..2_000u32 {
        match i % 3 {
            0 => pipe.cmd("PING"),
            1 => pipe.cmd("ECHO").arg(i),
            _ => pipe.cmd("HASH").arg(3).arg(i),
        };
    }
    let replies: Vec<String> = pipe.query(&mut conn).unwrap();
    assert_eq!(replies.len(), 2_000);
    for (i, reply) in replies.iter().enumerate() {
        let i = i as u32;
        let want = match i % 3 {
            0 => "PONG".to_string(),
            1 => i.to_string(),
            _ => sha256_rounds(i.to_string().as_bytes(), 3),
        };
        assert_eq!(reply, &want, "pipelined reply {i}");
    }
}

/// The CPUs this process may run on, from `Cpus_allowed_list` ("0-3,6"): what
/// `sched_getaffinity` reports, and what the server inherits.
fn cpus_in_affinity_mask() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status")
        .trim();
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

fn info_field(info: &str, field: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("INFO has no {field}:\n{info}"))
        .trim()
        .to_string()
}

#[test]
fn info_reports_one_ring_per_core() {
    let cpus = cpus_in_affinity_mask();
    let server = Server::start();
    let mut conn = server.client();
    let info: String = redis::cmd("INFO").query(&mut conn).unwrap();
    assert_eq!(info_field(&info, "rings"), cpus.to_string());
    assert_eq!(info_field(&info, "cores"), cpus.to_string());
    let rings = info
        .lines()
        .filter(|l| l.starts_with("ring") && l.contains(":sessions="))
        .count();
    assert_eq!(rings, cpus, "one ringN: line per ring:\n{info}");
    let server_section: String = redis::cmd("INFO").arg("server").query(&mut conn).unwrap();
    assert_eq!(info_field(&server_section, "rings"), cpus.to_string());
    drop(conn);
    drop(server);

    // --rings overrides the count.
    let server = Server::builder().flag("--rings", "3").start();
    let mut conn = server.client();
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).unwrap();
    assert_eq!(info_field(&info, "rings"), "3");
}

fn map_get<'a>(map: &'a [(Value, Value)], key: &str) -> &'a Value {
    map.iter()
        .find(|(k, _)| matches!(k, Value::BulkString(b) if b == key.as_bytes()))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in HELLO's map {map:?}"))
}

#[test]
fn resp3_through_the_redis_crate() {
    let server = Server::start();
    // The crate opens with `HELLO 3 AUTH alice secret` and `CLIENT SETINFO LIB-NAME/LIB-VER`.
    let info = server.connection_info(USER, PASSWORD, ProtocolVersion::RESP3);
    let client = redis::Client::open(info).unwrap();
    assert_eq!(
        client.get_connection_info().redis_settings().protocol(),
        ProtocolVersion::RESP3
    );
    let mut conn = client
        .get_connection_with_timeout(common::REPLY_TIMEOUT)
        .expect("HELLO 3 AUTH through the redis crate");

    let hello: Value = redis::cmd("HELLO").arg(3).query(&mut conn).unwrap();
    let Value::Map(map) = hello else {
        panic!("HELLO 3 replies with a RESP3 map, got {hello:?}")
    };
    assert_eq!(map_get(&map, "proto"), &Value::Int(3));
    assert_eq!(
        map_get(&map, "server"),
        &Value::BulkString(b"redis".to_vec())
    );

    let info: Value = redis::cmd("INFO").query(&mut conn).unwrap();
    assert!(
        matches!(&info, Value::VerbatimString { text, .. } if text.contains("rings:")),
        "INFO under RESP3 is a verbatim string: {info:?}"
    );
    let name: Value = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut conn)
        .unwrap();
    assert_eq!(name, Value::Nil);
    let client_info: Value = redis::cmd("CLIENT").arg("INFO").query(&mut conn).unwrap();
    let Value::VerbatimString { text, .. } = client_info else {
        panic!("CLIENT INFO under RESP3: {client_info:?}")
    };
    assert!(text.contains("resp=3"), "{text}");
    assert!(text.contains("user=alice"), "{text}");
    assert!(
        text.contains("lib-name=redis-rs"),
        "SETINFO was kept: {text}"
    );
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
    let who: String = redis::cmd("ACL").arg("WHOAMI").query(&mut conn).unwrap();
    assert_eq!(who, USER);

    // On the wire: HELLO 3 AUTH answers a `%` map; the session then speaks RESP3.
    let mut raw = server.raw();
    let reply = raw.cmd(&[
        b"HELLO",
        b"3",
        b"AUTH",
        USER.as_bytes(),
        PASSWORD.as_bytes(),
    ]);
    let Reply::Map(pairs) = reply else {
        panic!("HELLO 3 AUTH: {reply:?}")
    };
    assert!(pairs.contains(&(Reply::bulk("proto"), Reply::Int(3))));
    assert_eq!(raw.cmd(&[b"CLIENT", b"GETNAME"]), Reply::Nil);
    raw.send(b"CLIENT GETNAME\r\n");
    assert_eq!(raw.try_read_reply(common::REPLY_TIMEOUT), Ok(Reply::Nil));

    // HELLO 2 AUTH keeps RESP2: the same facts as a flat array.
    let mut raw = server.raw();
    let reply = raw.cmd(&[
        b"HELLO",
        b"2",
        b"AUTH",
        USER.as_bytes(),
        PASSWORD.as_bytes(),
    ]);
    let Reply::Array(items) = reply else {
        panic!("HELLO 2 AUTH: {reply:?}")
    };
    assert!(items
        .windows(2)
        .any(|w| w == [Reply::bulk("proto"), Reply::Int(2)]));
    // A wrong password in HELLO is refused like AUTH's.
    let mut raw = server.raw();
    let reply = raw.cmd(&[b"HELLO", b"3", b"AUTH", USER.as_bytes(), b"wrong"]);
    assert!(reply.expect_error().starts_with("WRONGPASS"), "{reply:?}");
    assert_eq!(
        raw.cmd(&[b"PING"]),
        Reply::Error("NOAUTH Authentication required.".into())
    );
}

#[test]
fn client_setinfo_select_and_unknown_subcommands() {
    let server = Server::start();
    let mut raw = server.raw_authed();
    assert_eq!(
        raw.cmd(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-py"]),
        Reply::ok()
    );
    assert_eq!(
        raw.cmd(&[b"CLIENT", b"SETINFO", b"LIB-VER", b"8.0.0"]),
        Reply::ok()
    );
    assert_eq!(raw.cmd(&[b"SELECT", b"0"]), Reply::ok());
    let reply = raw.cmd(&[b"SELECT", b"1"]);
    assert!(reply.expect_error().starts_with("ERR "), "{reply:?}");
    let reply = raw.cmd(&[b"CLIENT", b"NOSUCHTHING", b"x"]);
    assert!(
        reply
            .expect_error()
            .starts_with("ERR unknown subcommand 'NOSUCHTHING'"),
        "{reply:?}"
    );
    // Subcommands redis-py sends and ignores the errors of: any answer, never a closed session.
    for args in [
        &[&b"CLIENT"[..], b"TRACKING", b"ON"][..],
        &[b"CLIENT", b"NO-EVICT", b"on"],
        &[b"CLIENT", b"NO-TOUCH", b"on"],
    ] {
        let _ = raw.cmd(args);
    }
    assert_eq!(raw.cmd(&[b"CLIENT", b"SETNAME", b"worker-1"]), Reply::ok());
    assert_eq!(raw.cmd(&[b"CLIENT", b"GETNAME"]), Reply::bulk("worker-1"));
    let Reply::Int(id) = raw.cmd(&[b"CLIENT", b"ID"]) else {
        panic!("CLIENT ID is an integer")
    };
    assert!(id > 0);
    let Reply::Int(count) = raw.cmd(&[b"COMMAND", b"COUNT"]) else {
        panic!("COMMAND COUNT is an integer")
    };
    assert!(count >= 20, "COMMAND COUNT {count}");
    assert_eq!(raw.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(raw.cmd(&[b"QUIT"]), Reply::ok());
    assert!(raw.closes_within(common::REPLY_TIMEOUT), "QUIT closes");

    // QUIT in a pipeline: what came before it is answered, what follows it is not.
    let mut raw = server.raw_authed();
    raw.send(b"PING\r\nECHO a\r\nQUIT\r\nPING\r\nECHO b\r\n");
    assert_eq!(
        raw.replies_to_eof(common::REPLY_TIMEOUT),
        vec![Reply::Simple("PONG".into()), Reply::bulk("a"), Reply::ok()]
    );
}

/// Issue 12, item 2: after a wrong password the AUTH's store deadline (`--store-timeout`) used to
/// close the session as if the auth timeout had passed, a second after the typo, so a person
/// never got to retry. Each deadline now stands for itself: the session stays open past the
/// store timeout and a correct AUTH then works, while a session that never authenticates is
/// still closed by the auth timeout.
#[test]
fn a_wrong_password_does_not_close_the_session_at_the_store_timeout() {
    let server = Server::builder()
        .flag("--store-timeout", "300ms")
        .flag("--auth-timeout", "5s")
        .start();
    let mut typo = server.raw();
    let mut silent = server.raw();
    for conn in [&mut typo, &mut silent] {
        let reply = conn.cmd(&[b"AUTH", USER.as_bytes(), b"not-the-password"]);
        assert!(reply.expect_error().starts_with("WRONGPASS"), "{reply:?}");
    }
    // Well past the store timeout (and the tick that rounds it), well before the auth timeout.
    std::thread::sleep(std::time::Duration::from_secs(1));
    typo.auth(USER, PASSWORD);
    assert_eq!(typo.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(
        silent.replies_to_eof(std::time::Duration::from_secs(30)),
        vec![Reply::Error(
            "ERR authentication timeout, closing the connection".into()
        )]
    );
}

/// Issue 12, item 3: a job that panics used to leave its session waiting forever. Its reply
/// handle, dropped unanswered, now answers `-ERR internal error`, and the session goes on.
/// (DEBUG PANIC-JOB exists only with debug assertions: release builds abort on a panic.)
#[cfg(debug_assertions)]
#[test]
fn a_job_that_panics_answers_internal_error_and_the_session_goes_on() {
    let server = Server::builder().switch("--enable-debug-command").start();
    let mut conn = server.raw_authed();
    for pool in ["compute", "store"] {
        conn.send_cmd(&[b"DEBUG", b"PANIC-JOB", pool.as_bytes()]);
        let reply = conn.try_read_reply(std::time::Duration::from_secs(10));
        assert_eq!(
            reply,
            Ok(Reply::Error("ERR internal error".into())),
            "{pool} job"
        );
        assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    }
    // The pool logs the panic after the unwinding answered the session: wait for the line.
    let logged =
        |log: &str| log.contains("a compute job panicked") && log.contains("a store job panicked");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !logged(&server.log()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log();
    assert!(logged(&log), "{log}");
}

/// DEBUG is refused unless the server was started with `--enable-debug-command`.
#[test]
fn debug_is_refused_without_its_flag() {
    let server = Server::start();
    let mut conn = server.raw_authed();
    let reply = conn.cmd(&[b"DEBUG", b"PANIC-JOB", b"compute"]);
    assert!(
        reply
            .expect_error()
            .starts_with("ERR DEBUG command not allowed."),
        "{reply:?}"
    );
    assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
}

/// 200,000 GETs in one write: each is a store job, so the rest of the pipeline waits in the
/// session's input buffer behind it. Shifting that rest to the front after every command made
/// this quadratic (hundreds of GB moved on the ring thread, minutes of CPU); it must take
/// seconds. The 120 s allowance is for liveness on a loaded machine, not a speed bar.
#[test]
fn a_deep_pipeline_of_store_commands_is_answered_in_order() {
    const N: usize = 200_000;
    const KEYS: usize = 10;
    let server = Server::start();
    let mut conn = server.raw_authed();
    for k in 0..KEYS {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        assert_eq!(
            conn.cmd(&[b"SET", key.as_bytes(), value.as_bytes()]),
            Reply::ok()
        );
    }
    let mut pipeline = Vec::new();
    for i in 0..N {
        pipeline.extend_from_slice(&encode(&[b"GET", format!("k{}", i % KEYS).as_bytes()]));
    }
    let started = std::time::Instant::now();
    let mut writer = conn.stream.try_clone().expect("clone the stream");
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&pipeline).expect("send the pipeline");
    });
    for i in 0..N {
        let reply = conn
            .try_read_reply(std::time::Duration::from_secs(120))
            .unwrap_or_else(|end| {
                panic!(
                    "reply {i} of {N} missing after {:?}: {end:?}",
                    started.elapsed()
                )
            });
        assert_eq!(reply, Reply::bulk(format!("v{}", i % KEYS)), "reply {i}");
    }
    sender.join().expect("sender");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "{N} pipelined GETs took {:?}",
        started.elapsed()
    );
}

/// Peak resident memory (`VmHWM`) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("a VmHWM line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `MGET big big ...` over one 1 MiB value asks for a 256 MiB reply. The store worker used to
/// build all of it (and a copy of the value per key) before the ring saw it pass
/// `--max-output-buffer`: the server's peak memory rose by over 512 MiB. Now the reply stops
/// being built at the limit and the session is closed as any session over it is; another
/// session goes on.
#[test]
fn a_reply_past_the_output_limit_is_not_built() {
    const VALUE: usize = 1024 * 1024;
    const KEYS: usize = 256;
    let server = Server::builder().flag("--max-output-buffer", "4mb").start();
    let mut other = server.raw_authed();
    let mut conn = server.raw_authed();
    assert_eq!(conn.cmd(&[b"SET", b"big", &vec![b'x'; VALUE]]), Reply::ok());
    assert_eq!(other.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    let peak_before = peak_rss_kib(server.pid());
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(std::iter::repeat_n(&b"big"[..], KEYS));
    conn.send_cmd(&mget);
    assert!(
        conn.closes_within(common::REPLY_TIMEOUT),
        "the session over the output limit stays open"
    );
    let grown_kib = peak_rss_kib(server.pid()).saturating_sub(peak_before);
    assert!(
        grown_kib < 64 * 1024,
        "peak memory grew by {grown_kib} KiB for a reply of {} MiB that could never be sent",
        (KEYS * VALUE) >> 20
    );
    assert_eq!(other.cmd(&[b"GET", b"missing"]), Reply::Nil);
    let mut fresh = server.raw_authed();
    assert_eq!(
        fresh.cmd(&[b"MGET", b"big", b"missing"]),
        Reply::Array(vec![Reply::Bulk(vec![b'x'; VALUE]), Reply::Nil])
    );
}

/// `buffers_released` summed over the rings of `INFO rings`.
fn buffers_released(conn: &mut common::RawConn) -> u64 {
    let common::Reply::Bulk(text) = conn.cmd(&[b"INFO", b"rings"]) else {
        panic!("INFO is a bulk string")
    };
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|line| line.split("buffers_released=").nth(1))
        .map(|n| {
            let n = n.split(',').next().unwrap_or_default();
            n.trim().parse::<u64>().expect("a count")
        })
        .sum()
}

#[test]
fn a_burst_s_output_buffer_is_given_back_and_grown_again_by_the_next() {
    let server = Server::start();
    let mut conn = server.raw_authed();
    let big = vec![b'v'; 300 * 1024];
    assert_eq!(conn.cmd(&[b"SET", b"big", &big]), common::Reply::ok());
    let before = buffers_released(&mut conn);
    for round in 1..=3u64 {
        assert_eq!(conn.cmd(&[b"GET", b"big"]), common::Reply::bulk(&big));
        // The reply is all sent once the client has read it; the ring then frees the buffer,
        // and the next burst (the next round) allocates one again.
        let deadline = std::time::Instant::now() + common::REPLY_TIMEOUT;
        while buffers_released(&mut conn) < before + round {
            assert!(
                std::time::Instant::now() < deadline,
                "no output buffer released after burst {round}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    assert_eq!(conn.cmd(&[b"PING"]), common::Reply::Simple("PONG".into()));
}
