//! Store commands over real TCP (issue 3), one suite run against both backends: `embedded::*`
//! on redb in a temp dir, `postgres::*` on a throwaway PostgreSQL cluster (one per test binary,
//! a schema per test; `DATABASE_URL` when set). Then what only PostgreSQL has: an outage and
//! its recovery, and two ringport processes sharing one database.

#[path = "common/pg.rs"]
mod pg;

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{encode, sha256_rounds, RawConn, Reply, Server, PASSWORD, USER};
use pg::PgCluster;

const BOB: &str = "bob";
const BOB_PASSWORD: &str = "hunter2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Postgres,
}

/// A server on `backend` with users alice and bob and these extra flags.
fn start(backend: Backend, label: &str, flags: &[(&str, &str)]) -> Server {
    let mut builder = Server::builder().user(BOB, BOB_PASSWORD);
    for (name, value) in flags {
        builder = if value.is_empty() {
            builder.switch(name)
        } else {
            builder.flag(name, value)
        };
    }
    if backend == Backend::Postgres {
        builder = builder.store(&PgCluster::shared().fresh_url(label));
        // Tests share one cluster (max_connections 500): on a many-core box the default of
        // 2 x cores connections per server would add up (ring reads add one per ring).
        if !flags.iter().any(|(name, _)| *name == "--store-threads") {
            builder = builder.flag("--store-threads", "4");
        }
    }
    let server = builder.start();
    let mut conn = server.client();
    let info: String = redis::cmd("INFO").arg("store").query(&mut conn).unwrap();
    let want = match backend {
        Backend::Embedded => "store_backend:embedded",
        Backend::Postgres => "store_backend:postgres",
    };
    assert!(
        info.contains(want),
        "INFO store of a {backend:?} server:\n{info}"
    );
    server
}

/// Every case below, once per backend: `embedded::case` and `postgres::case`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $case() { super::$case(super::Backend::Embedded) } )*
        }
        mod postgres {
            $( #[test] fn $case() { super::$case(super::Backend::Postgres) } )*
        }
    };
}

on_both_backends!(
    get_set_del_exists,
    incr_and_incrby,
    mget_and_mset,
    arity_and_argument_errors,
    binary_keys_and_values,
    users_are_isolated,
    pipelined_writes_are_seen_by_later_reads,
    sleep_takes_a_store_call,
    acknowledged_writes_survive_kill_9,
    slow_store_commands_never_stall_other_sessions,
    batched_gets_and_sets_keep_each_sessions_order,
    a_pipeline_of_gets_is_answered_in_order_and_counted,
    gets_take_the_read_lane_and_the_rest_the_general_one,
    users_never_see_each_others_keys,
    scan_returns_each_key_present_throughout_exactly_once,
    redis_py_default_pipeline_is_a_transaction,
    kill_9_during_exec_leaves_all_or_nothing,
);

fn ok() -> Reply {
    Reply::ok()
}

fn get_set_del_exists(backend: Backend) {
    let server = start(backend, "get_set_del_exists", &[]);
    let mut raw = server.raw_authed();
    assert_eq!(raw.cmd(&[b"GET", b"k"]), Reply::Nil);
    assert_eq!(raw.cmd(&[b"SET", b"k", b"v1"]), ok());
    assert_eq!(raw.cmd(&[b"GET", b"k"]), Reply::bulk("v1"));
    assert_eq!(raw.cmd(&[b"SET", b"k", b"v2"]), ok());
    assert_eq!(raw.cmd(&[b"GET", b"k"]), Reply::bulk("v2"));
    assert_eq!(raw.cmd(&[b"SET", b"empty", b""]), ok());
    assert_eq!(raw.cmd(&[b"GET", b"empty"]), Reply::bulk(""));
    assert_eq!(
        raw.cmd(&[b"EXISTS", b"k", b"missing", b"k", b"empty"]),
        Reply::Int(3),
        "EXISTS counts repeats"
    );
    assert_eq!(raw.cmd(&[b"EXISTS", b"missing"]), Reply::Int(0));
    assert_eq!(
        raw.cmd(&[b"DEL", b"k", b"missing", b"k"]),
        Reply::Int(1),
        "DEL counts each key once"
    );
    assert_eq!(raw.cmd(&[b"GET", b"k"]), Reply::Nil);
    assert_eq!(raw.cmd(&[b"DEL", b"k"]), Reply::Int(0));
    assert_eq!(raw.cmd(&[b"EXISTS", b"k", b"empty"]), Reply::Int(1));
    // Inline form reaches the store too.
    raw.send(b"SET inline \"a b\"\r\nGET inline\r\n");
    assert_eq!(raw.read_reply(), ok());
    assert_eq!(raw.read_reply(), Reply::bulk("a b"));

    // Through the redis crate, and RESP3's null.
    let mut conn = server.client();
    let value: Option<String> = redis::cmd("GET").arg("inline").query(&mut conn).unwrap();
    assert_eq!(value.as_deref(), Some("a b"));
    let missing: Option<Vec<u8>> = redis::cmd("GET").arg("nope").query(&mut conn).unwrap();
    assert_eq!(missing, None);
    let mut resp3 = server.raw();
    let hello = resp3.cmd(&[
        b"HELLO",
        b"3",
        b"AUTH",
        USER.as_bytes(),
        PASSWORD.as_bytes(),
    ]);
    assert!(matches!(hello, Reply::Map(_)), "{hello:?}");
    resp3.send(&encode(&[b"GET", b"nope"]));
    let mut wire = Vec::new();
    resp3
        .stream
        .set_read_timeout(Some(common::REPLY_TIMEOUT))
        .unwrap();
    while !wire.ends_with(b"\r\n") {
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut resp3.stream, &mut byte).unwrap();
        wire.push(byte[0]);
    }
    assert_eq!(wire, b"_\r\n", "GET of a missing key under RESP3");
}

fn incr_and_incrby(backend: Backend) {
    let server = start(backend, "incr_and_incrby", &[]);
    let mut raw = server.raw_authed();
    let not_integer = Reply::Error("ERR value is not an integer or out of range".into());
    assert_eq!(raw.cmd(&[b"INCR", b"n"]), Reply::Int(1));
    assert_eq!(raw.cmd(&[b"INCR", b"n"]), Reply::Int(2));
    assert_eq!(raw.cmd(&[b"INCRBY", b"n", b"40"]), Reply::Int(42));
    assert_eq!(raw.cmd(&[b"INCRBY", b"n", b"-50"]), Reply::Int(-8));
    assert_eq!(raw.cmd(&[b"GET", b"n"]), Reply::bulk("-8"));
    assert_eq!(raw.cmd(&[b"INCRBY", b"fresh", b"-3"]), Reply::Int(-3));
    assert_eq!(raw.cmd(&[b"SET", b"s", b"12"]), ok());
    assert_eq!(raw.cmd(&[b"INCR", b"s"]), Reply::Int(13));

    for bad in [&b"abc"[..], b"1.5", b" 1", b"01", b""] {
        assert_eq!(raw.cmd(&[b"SET", b"bad", bad]), ok());
        assert_eq!(raw.cmd(&[b"INCR", b"bad"]), not_integer, "INCR of {bad:?}");
        assert_eq!(
            raw.cmd(&[b"GET", b"bad"]),
            Reply::bulk(bad),
            "left as it was"
        );
    }
    assert_eq!(raw.cmd(&[b"INCRBY", b"n", b"x"]), not_integer);
    assert_eq!(raw.cmd(&[b"INCRBY", b"n", b"1e3"]), not_integer);
    assert_eq!(
        raw.cmd(&[b"SET", b"max", i64::MAX.to_string().as_bytes()]),
        ok()
    );
    assert_eq!(
        raw.cmd(&[b"INCR", b"max"]),
        Reply::Error("ERR increment or decrement would overflow".into())
    );
    assert_eq!(
        raw.cmd(&[b"GET", b"max"]),
        Reply::bulk(i64::MAX.to_string())
    );
    assert_eq!(raw.cmd(&[b"GET", b"n"]), Reply::bulk("-8"));

    // Atomic across sessions: 4 sessions x 50 INCRs, pipelined.
    let mut sessions: Vec<RawConn> = (0..4).map(|_| server.raw_authed()).collect();
    let mut batch = Vec::new();
    for _ in 0..50 {
        batch.extend(encode(&[b"INCR", b"shared"]));
    }
    for s in &mut sessions {
        s.send(&batch);
    }
    for s in &mut sessions {
        for _ in 0..50 {
            assert!(matches!(s.read_reply(), Reply::Int(_)));
        }
    }
    assert_eq!(raw.cmd(&[b"GET", b"shared"]), Reply::bulk("200"));
}

fn mget_and_mset(backend: Backend) {
    let server = start(backend, "mget_and_mset", &[]);
    let mut raw = server.raw_authed();
    assert_eq!(
        raw.cmd(&[b"MSET", b"a", b"1", b"b", b"2", b"a", b"3"]),
        ok()
    );
    assert_eq!(
        raw.cmd(&[b"MGET", b"a", b"missing", b"b", b"a"]),
        Reply::Array(vec![
            Reply::bulk("3"),
            Reply::Nil,
            Reply::bulk("2"),
            Reply::bulk("3")
        ])
    );
    let arity = Reply::Error("ERR wrong number of arguments for 'mset' command".into());
    assert_eq!(raw.cmd(&[b"MSET", b"a"]), arity);
    assert_eq!(raw.cmd(&[b"MSET", b"a", b"9", b"b"]), arity);
    assert_eq!(
        raw.cmd(&[b"GET", b"a"]),
        Reply::bulk("3"),
        "a refused MSET wrote nothing"
    );

    let mut conn = server.client();
    let () = redis::cmd("MSET")
        .arg("x")
        .arg(b"\x00".as_slice())
        .arg("y")
        .arg("why")
        .query(&mut conn)
        .unwrap();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg("x")
        .arg("nope")
        .arg("y")
        .query(&mut conn)
        .unwrap();
    assert_eq!(values, vec![Some(vec![0]), None, Some(b"why".to_vec())]);
}

fn arity_and_argument_errors(backend: Backend) {
    let server = start(backend, "arity_and_argument_errors", &[]);
    let mut other = server.client();
    let mut raw = server.raw_authed();
    for (args, name) in [
        (&[&b"GET"[..]][..], "get"),
        (&[b"GET", b"a", b"b"], "get"),
        (&[b"SET", b"k"], "set"),
        (&[b"DEL"], "del"),
        (&[b"EXISTS"], "exists"),
        (&[b"INCR"], "incr"),
        (&[b"INCR", b"a", b"b"], "incr"),
        (&[b"INCRBY", b"a"], "incrby"),
        (&[b"MGET"], "mget"),
        (&[b"MSET"], "mset"),
        (&[b"SLEEP"], "sleep"),
    ] {
        assert_eq!(
            raw.cmd(args),
            Reply::Error(format!(
                "ERR wrong number of arguments for '{name}' command"
            )),
            "{args:?}"
        );
    }
    assert_eq!(
        raw.cmd(&[b"SLEEP", b"soon"]),
        Reply::Error("ERR value is not an integer or out of range".into())
    );
    let reply = raw.cmd(&[b"SLEEP", b"-1"]);
    assert!(reply.expect_error().starts_with("ERR "), "{reply:?}");
    assert_eq!(raw.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    common::assert_alive(&mut other);
}

fn binary_keys_and_values(backend: Backend) {
    let server = start(backend, "binary_keys_and_values", &[]);
    let mut raw = server.raw_authed();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let keys: [&[u8]; 5] = [b"k\0\r\n\xff", b"k\0\r\n\xfe", b"", b"\xff\xff", &all_bytes];
    for (i, key) in keys.iter().enumerate() {
        let mut value = all_bytes.clone();
        value.extend_from_slice(format!("\r\n{i}\0").as_bytes());
        assert_eq!(raw.cmd(&[b"SET", key, &value]), ok(), "SET key {i}");
    }
    for (i, key) in keys.iter().enumerate() {
        let mut value = all_bytes.clone();
        value.extend_from_slice(format!("\r\n{i}\0").as_bytes());
        assert_eq!(raw.cmd(&[b"GET", key]), Reply::Bulk(value), "GET key {i}");
    }
    assert_eq!(
        raw.cmd(&[b"GET", b"k\0\r\n"]),
        Reply::Nil,
        "a prefix is another key"
    );
    assert_eq!(
        raw.cmd(&[b"GET", b"K\0\r\n\xff"]),
        Reply::Nil,
        "keys are case-sensitive"
    );
    assert_eq!(
        raw.cmd(&[b"EXISTS", keys[0], keys[1], keys[2]]),
        Reply::Int(3)
    );
    assert_eq!(raw.cmd(&[b"INCR", b"\0num\xff"]), Reply::Int(1));
    assert_eq!(raw.cmd(&[b"DEL", keys[0], keys[3]]), Reply::Int(2));
    assert_eq!(
        raw.cmd(&[b"MGET", keys[0], keys[1], b"\0num\xff"]),
        Reply::Array(vec![
            Reply::Nil,
            Reply::Bulk({
                let mut v = all_bytes.clone();
                v.extend_from_slice(b"\r\n1\0");
                v
            }),
            Reply::bulk("1"),
        ])
    );
    // A value of a megabyte, through the redis crate.
    let mut conn = server.client();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let () = redis::cmd("SET")
        .arg(b"big\0".as_slice())
        .arg(&big)
        .query(&mut conn)
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET")
        .arg(b"big\0".as_slice())
        .query(&mut conn)
        .unwrap();
    assert!(back == big, "a 1 MB binary value came back different");
}

fn users_are_isolated(backend: Backend) {
    let server = start(backend, "users_are_isolated", &[]);
    let mut alice = server.raw_authed();
    let mut bob = server.raw();
    bob.auth(BOB, BOB_PASSWORD);
    assert_eq!(alice.cmd(&[b"SET", b"k", b"alice's"]), ok());
    assert_eq!(bob.cmd(&[b"GET", b"k"]), Reply::Nil);
    assert_eq!(bob.cmd(&[b"EXISTS", b"k"]), Reply::Int(0));
    assert_eq!(bob.cmd(&[b"SET", b"k", b"bob's"]), ok());
    assert_eq!(alice.cmd(&[b"GET", b"k"]), Reply::bulk("alice's"));
    assert_eq!(bob.cmd(&[b"GET", b"k"]), Reply::bulk("bob's"));
    assert_eq!(bob.cmd(&[b"INCR", b"n"]), Reply::Int(1));
    assert_eq!(alice.cmd(&[b"INCR", b"n"]), Reply::Int(1));
    assert_eq!(bob.cmd(&[b"MSET", b"m", b"1", b"k", b"bob2"]), ok());
    assert_eq!(
        alice.cmd(&[b"MGET", b"m", b"k"]),
        Reply::Array(vec![Reply::Nil, Reply::bulk("alice's")])
    );
    assert_eq!(bob.cmd(&[b"DEL", b"k", b"n"]), Reply::Int(2));
    assert_eq!(alice.cmd(&[b"EXISTS", b"k", b"n"]), Reply::Int(2));
    // A user name that is a prefix of the other's key does not leak either.
    assert_eq!(alice.cmd(&[b"GET", b"bob"]), Reply::Nil);
    assert_eq!(alice.cmd(&[b"ACL", b"WHOAMI"]), Reply::bulk(USER));
    assert_eq!(bob.cmd(&[b"ACL", b"WHOAMI"]), Reply::bulk(BOB));
}

fn pipelined_writes_are_seen_by_later_reads(backend: Backend) {
    let server = start(backend, "pipelined_writes", &[]);
    let mut raw = server.raw_authed();
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for round in 0..50 {
        let value = format!("v{round}");
        batch.extend(encode(&[b"SET", b"k", value.as_bytes()]));
        expected.push(ok());
        batch.extend(encode(&[b"GET", b"k"]));
        expected.push(Reply::bulk(&value));
        batch.extend(encode(&[b"INCR", b"n"]));
        expected.push(Reply::Int(round + 1));
        batch.extend(encode(&[b"GET", b"n"]));
        expected.push(Reply::bulk((round + 1).to_string()));
        // An inline command between store commands keeps its place.
        batch.extend(encode(&[b"PING", value.as_bytes()]));
        expected.push(Reply::bulk(&value));
    }
    batch.extend(encode(&[b"DEL", b"k"]));
    expected.push(Reply::Int(1));
    batch.extend(encode(&[b"EXISTS", b"k"]));
    expected.push(Reply::Int(0));
    raw.send(&batch);
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&raw.read_reply(), want, "reply {i}");
    }

    // The same batch shape through the redis crate's pipeline.
    let mut conn = server.client();
    let (set, get, incr, got): (String, String, i64, String) = redis::pipe()
        .cmd("SET")
        .arg("p")
        .arg("q")
        .cmd("GET")
        .arg("p")
        .cmd("INCR")
        .arg("n")
        .cmd("GET")
        .arg("n")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        (set.as_str(), get.as_str(), incr, got.as_str()),
        ("OK", "q", 51, "51")
    );
}

/// Issue 13: a store worker folds the GETs queued at the same moment into one store call and
/// the SETs into one commit, from any sessions. 2000 sessions (alice's and bob's, so one batch
/// mixes users) each send 10 rounds of `SET own-key`, `GET own-key`, `SET shared` in one
/// write, all at once: every session sees its own writes in its own order, a key
/// of the same name of the other user is never mixed up with its own, the SETs of one key by
/// many sessions in one batch leave one of their values, and INFO shows that batches of more
/// than one job ran.
fn batched_gets_and_sets_keep_each_sessions_order(backend: Backend) {
    const SESSIONS: usize = 2000;
    const ROUNDS: usize = 10;
    let server = start(backend, "batched_gets_and_sets", &[]);
    let mut sessions: Vec<(usize, RawConn)> = (0..SESSIONS)
        .map(|i| {
            let mut conn = server.raw();
            let (user, password) = if i % 2 == 0 {
                (USER, PASSWORD)
            } else {
                (BOB, BOB_PASSWORD)
            };
            conn.auth(user, password);
            (i, conn)
        })
        .collect();
    for (i, conn) in &mut sessions {
        let mut batch = Vec::new();
        for round in 0..ROUNDS {
            let own = format!("own:{}", *i / 2);
            let value = format!("{i}:{round}");
            batch.extend(encode(&[b"SET", own.as_bytes(), value.as_bytes()]));
            batch.extend(encode(&[b"GET", own.as_bytes()]));
            batch.extend(encode(&[b"SET", b"shared", value.as_bytes()]));
        }
        conn.send(&batch);
    }
    for (i, conn) in &mut sessions {
        for round in 0..ROUNDS {
            let value = format!("{i}:{round}");
            assert_eq!(conn.read_reply(), ok(), "session {i} round {round}: SET");
            assert_eq!(
                conn.read_reply(),
                Reply::bulk(&value),
                "session {i} round {round}: GET after its own SET"
            );
            assert_eq!(
                conn.read_reply(),
                ok(),
                "session {i} round {round}: SET shared"
            );
        }
    }
    // alice's own:n and bob's own:n are different keys: each holds its own session's last value.
    for (i, conn) in sessions.iter_mut().take(4) {
        let own = format!("own:{}", *i / 2);
        assert_eq!(
            conn.cmd(&[b"GET", own.as_bytes()]),
            Reply::bulk(format!("{i}:{}", ROUNDS - 1))
        );
    }
    let (_, alice) = &mut sessions[0];
    match alice.cmd(&[b"GET", b"shared"]) {
        Reply::Bulk(value) => {
            let value = String::from_utf8(value).unwrap();
            let (session, round) = value.split_once(':').unwrap();
            let (session, round): (usize, usize) =
                (session.parse().unwrap(), round.parse().unwrap());
            assert!(
                session % 2 == 0 && round < ROUNDS,
                "alice's shared holds {value}, which no alice session wrote"
            );
        }
        other => panic!("GET shared: {other:?}"),
    }
    let [batches, jobs, largest] = store_fields(
        alice,
        ["store_batches", "store_batched_jobs", "store_batch_max"],
    );
    eprintln!("{backend:?}: {jobs} jobs in {batches} batches, the largest {largest}");
    assert!(
        largest > 1 && jobs > batches,
        "no batch carried more than one job: {jobs} jobs in {batches} batches"
    );
}

/// A session's consecutive pipelined GETs are folded into one store job (up to 64 at a time):
/// 1,000 GETs of present and missing keys, with a SET and an INCR in the middle of the run, are
/// answered one reply each, in order, each seeing the writes before it; INFO commandstats counts
/// every GET; and far fewer store calls (batches) than GETs ran.
fn a_pipeline_of_gets_is_answered_in_order_and_counted(backend: Backend) {
    const GETS: usize = 1000;
    let server = start(backend, "pipeline_of_gets", &[]);
    let mut raw = server.raw_authed();
    for k in 0..10 {
        assert_eq!(
            raw.cmd(&[
                b"SET",
                format!("k{k}").as_bytes(),
                format!("v{k}").as_bytes()
            ]),
            ok()
        );
    }
    // Store calls: the pool's batches, and on PostgreSQL the rings' own (ring reads).
    let calls = |raw: &mut RawConn| -> u64 {
        store_fields(raw, ["store_batches", "store_ring_batches"])
            .iter()
            .sum()
    };
    let batches_before = calls(&mut raw);
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..GETS {
        if i == GETS / 2 {
            batch.extend(encode(&[b"SET", b"k3", b"changed"]));
            expected.push(ok());
            batch.extend(encode(&[b"INCR", b"k20"]));
            expected.push(Reply::Int(1));
        }
        let k = i % 21;
        batch.extend(encode(&[b"GET", format!("k{k}").as_bytes()]));
        expected.push(match k {
            3 if i >= GETS / 2 => Reply::bulk("changed"),
            20 if i >= GETS / 2 => Reply::bulk("1"),
            0..=9 => Reply::bulk(format!("v{k}")),
            _ => Reply::Nil,
        });
    }
    raw.send(&batch);
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&raw.read_reply(), want, "reply {i}");
    }
    let batches_after = calls(&mut raw);
    let batches = batches_after - batches_before;
    eprintln!("{backend:?}: {GETS} pipelined GETs (and a SET, an INCR) took {batches} store calls");
    assert!(
        batches < GETS as u64 / 10,
        "{batches} store calls for {GETS} pipelined GETs"
    );
    let Reply::Bulk(stats) = raw.cmd(&[b"INFO", b"commandstats"]) else {
        panic!("INFO commandstats is a bulk string")
    };
    let stats = String::from_utf8(stats).unwrap();
    let calls = format!("cmdstat_get:calls={GETS},");
    assert!(stats.contains(&calls), "{calls} in\n{stats}");
}

fn sleep_takes_a_store_call(backend: Backend) {
    let server = start(backend, "sleep_takes_a_store_call", &[]);
    let mut raw = server.raw_authed();
    assert_eq!(raw.cmd(&[b"SLEEP", b"0"]), ok());
    let started = Instant::now();
    assert_eq!(raw.cmd(&[b"SLEEP", b"200"]), ok());
    let took = started.elapsed();
    // A lower bound only: SLEEP must not answer before it slept.
    assert!(
        took >= Duration::from_millis(190),
        "SLEEP 200 took {took:?}"
    );
}

fn acknowledged_writes_survive_kill_9(backend: Backend) {
    let mut server = start(backend, "acknowledged_writes", &[]);
    let mut raw = server.raw_authed();
    let mut batch = Vec::new();
    for i in 0..100 {
        batch.extend(encode(&[
            b"SET",
            format!("key{i}").as_bytes(),
            format!("value{i}\0").as_bytes(),
        ]));
        batch.extend(encode(&[b"INCR", b"counter"]));
    }
    batch.extend(encode(&[b"MSET", b"m1", b"one", b"m2", b"two"]));
    batch.extend(encode(&[b"SET", b"gone", b"x"]));
    batch.extend(encode(&[b"DEL", b"gone"]));
    raw.send(&batch);
    for i in 0..100 {
        assert_eq!(raw.read_reply(), ok(), "SET key{i}");
        assert_eq!(raw.read_reply(), Reply::Int(i + 1), "INCR {i}");
    }
    assert_eq!(raw.read_reply(), ok());
    assert_eq!(raw.read_reply(), ok());
    // The last reply seen, and at once: no drain, no flush, no goodbye.
    assert_eq!(raw.read_reply(), Reply::Int(1));
    server.kill9();

    server.restart();
    let mut raw = server.raw_authed();
    for i in 0..100 {
        assert_eq!(
            raw.cmd(&[b"GET", format!("key{i}").as_bytes()]),
            Reply::bulk(format!("value{i}\0")),
            "key{i} after kill -9"
        );
    }
    assert_eq!(raw.cmd(&[b"GET", b"counter"]), Reply::bulk("100"));
    assert_eq!(
        raw.cmd(&[b"MGET", b"m1", b"m2"]),
        Reply::Array(vec![Reply::bulk("one"), Reply::bulk("two")])
    );
    assert_eq!(raw.cmd(&[b"EXISTS", b"gone"]), Reply::Int(0));

    // Once more, a single SET right before the kill.
    assert_eq!(raw.cmd(&[b"SET", b"last", b"word"]), ok());
    server.kill9();
    server.restart();
    assert_eq!(
        server.raw_authed().cmd(&[b"GET", b"last"]),
        Reply::bulk("word")
    );
}

/// The numeric fields `names` of `INFO store`, in that order.
fn store_fields<const N: usize>(conn: &mut RawConn, names: [&str; N]) -> [u64; N] {
    let Reply::Bulk(info) = conn.cmd(&[b"INFO", b"store"]) else {
        panic!("INFO store is a bulk string")
    };
    let info = String::from_utf8(info).unwrap();
    names.map(|name| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in\n{info}"))
            .trim()
            .parse()
            .unwrap()
    })
}

/// The fields of each `store_linkN` line of `INFO store` (ring reads), in ring order.
fn link_fields(conn: &mut RawConn) -> Vec<HashMap<String, u64>> {
    let Reply::Bulk(info) = conn.cmd(&[b"INFO", b"store"]) else {
        panic!("INFO store is a bulk string")
    };
    let info = String::from_utf8(info).unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("store_link"))
        .enumerate()
        .map(|(ring, l)| {
            let (index, fields) = l.split_once(':').unwrap();
            assert_eq!(index, ring.to_string(), "store_link lines in ring order");
            fields
                .split(',')
                .map(|f| {
                    let (name, value) = f.split_once('=').unwrap();
                    (name.to_string(), value.trim().parse().unwrap())
                })
                .collect()
        })
        .collect()
}

/// With 4 store workers, the first is the read lane: once it is up, every GET runs there and
/// every SET on the other three, as `INFO store` and `/metrics` show per connection (on
/// PostgreSQL with ring reads off, which would take the GETs).
fn gets_take_the_read_lane_and_the_rest_the_general_one(backend: Backend) {
    const GETS: usize = 20;
    const SETS: usize = 10;
    let server = start(
        backend,
        "read_lane",
        &[
            ("--store-threads", "4"),
            ("--metrics-addr", "127.0.0.1:0"),
            ("--no-ring-reads", ""),
        ],
    );
    let mut raw = server.raw_authed();
    let conns = |raw: &mut RawConn| -> Vec<(bool, String, u64)> {
        let Reply::Bulk(info) = raw.cmd(&[b"INFO", b"store"]) else {
            panic!("INFO store is a bulk string")
        };
        String::from_utf8(info)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("store_conn"))
            .map(|l| {
                let field = |name: &str| {
                    l.split([':', ','])
                        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                        .unwrap_or_else(|| panic!("no {name} in {l}"))
                        .to_string()
                };
                (
                    field("up") == "1",
                    field("lane"),
                    field("jobs").parse().unwrap(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + common::REPLY_TIMEOUT;
    while !conns(&mut raw)[0].0 {
        assert!(Instant::now() < deadline, "the read worker never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..SETS {
        assert_eq!(raw.cmd(&[b"SET", format!("k{i}").as_bytes(), b"v"]), ok());
    }
    for i in 0..GETS {
        let want = if i < SETS {
            Reply::bulk("v")
        } else {
            Reply::Nil
        };
        assert_eq!(raw.cmd(&[b"GET", format!("k{i}").as_bytes()]), want);
    }
    let conns = conns(&mut raw);
    let lanes: Vec<&str> = conns.iter().map(|(_, lane, _)| lane.as_str()).collect();
    assert_eq!(lanes, ["read", "general", "general", "general"]);
    assert_eq!(conns[0].2, GETS as u64, "jobs of the read lane: {conns:?}");
    let general: u64 = conns[1..].iter().map(|(_, _, jobs)| jobs).sum();
    assert_eq!(
        general, SETS as u64,
        "jobs of the general workers: {conns:?}"
    );
    // A worker clears its in-flight count just after the batch's replies leave: its value may
    // still be 1 here, so only the line is looked for.
    let metrics = common::http_body(server.metrics_addr(), "/metrics");
    assert!(
        metrics.contains(&format!(
            "ringport_store_conn_jobs_total{{conn=\"0\",lane=\"read\"}} {GETS}"
        )) && metrics.contains("ringport_store_in_flight{conn=\"3\",lane=\"general\"} "),
        "{metrics}"
    );
}

/// Store jobs queued or running, from `INFO store` (`store_queue_depth` + `store_jobs_running`).
fn store_depth(conn: &mut RawConn) -> u64 {
    let [queued, running] = store_fields(conn, ["store_queue_depth", "store_jobs_running"]);
    queued + running
}

/// Polls until the store pool holds `wanted(depth)` jobs.
fn wait_for_store_depth(conn: &mut RawConn, what: &str, wanted: impl Fn(u64) -> bool) {
    let deadline = Instant::now() + common::REPLY_TIMEOUT;
    loop {
        let depth = store_depth(conn);
        if wanted(depth) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "store depth stayed at {depth}, never {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn slow_store_commands_never_stall_other_sessions(backend: Backend) {
    let server = start(backend, "slow_store_commands", &[("--store-threads", "16")]);
    let mut other = server.raw_authed();
    let mut sleepers: Vec<RawConn> = (0..50).map(|_| server.raw_authed()).collect();
    // A job's place is freed just after its reply: let the AUTHs' places go first.
    wait_for_store_depth(&mut other, "0", |depth| depth == 0);
    for s in &mut sleepers {
        s.send_cmd(&[b"SLEEP", b"500"]);
    }
    // Every SLEEP is on the store pool (running or queued) before we look.
    wait_for_store_depth(&mut other, "50", |depth| depth >= 50);

    assert_eq!(other.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(
        other.cmd(&[b"HASH", b"1000", b"isolated"]),
        Reply::bulk(sha256_rounds(b"isolated", 1000))
    );
    assert_eq!(other.cmd(&[b"ECHO", b"x"]), Reply::bulk("x"));
    let already_answered = sleepers.iter().filter(|s| s.has_data_now()).count();
    assert_eq!(
        already_answered, 0,
        "PING and HASH must finish before the first SLEEP 500 replies"
    );
    for (i, s) in sleepers.iter_mut().enumerate() {
        assert_eq!(s.read_reply(), ok(), "SLEEP of session {i}");
    }
}

// ---- PostgreSQL only ----

#[test]
fn postgres_outage_answers_store_unavailable_then_recovers_without_restart() {
    let cluster = PgCluster::start();
    let server = Server::builder()
        .store(&cluster.url())
        .flag("--store-threads", "4")
        .start();
    let mut store_session = server.raw_authed();
    let mut other = server.raw_authed();
    let mut client = server.client();
    assert_eq!(store_session.cmd(&[b"SET", b"k", b"before"]), ok());
    // A store command in flight when PostgreSQL goes away.
    let mut in_flight = server.raw_authed();
    wait_for_store_depth(&mut other, "0", |depth| depth == 0);
    in_flight.send_cmd(&[b"SLEEP", b"5000"]);
    wait_for_store_depth(&mut other, "1", |depth| depth >= 1);

    cluster.stop();

    let reply = in_flight.try_read_reply(Duration::from_secs(10));
    assert_eq!(
        reply,
        Ok(Reply::Error("ERR store unavailable".into())),
        "SLEEP in flight when PostgreSQL stopped"
    );

    let unavailable = Reply::Error("ERR store unavailable".into());
    for args in [
        &[&b"GET"[..], b"k"][..],
        &[b"SET", b"k", b"during"],
        &[b"INCR", b"n"],
        &[b"MGET", b"k", b"n"],
        &[b"SLEEP", b"10"],
    ] {
        let started = Instant::now();
        store_session.send_cmd(args);
        // A liveness bound, not a speed check: the answer must come instead of a hang.
        let reply = store_session.try_read_reply(Duration::from_secs(10));
        let shown: Vec<_> = args.iter().map(|a| String::from_utf8_lossy(a)).collect();
        let shown = shown.join(" ");
        eprintln!(
            "{shown} during the outage: {reply:?} after {:?}",
            started.elapsed()
        );
        assert_eq!(reply, Ok(unavailable.clone()), "{shown} during the outage");
        // Everything else keeps working, for every session.
        assert_eq!(other.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
        assert_eq!(
            other.cmd(&[b"HASH", b"3", b"x"]),
            Reply::bulk(sha256_rounds(b"x", 3))
        );
        common::assert_alive(&mut client);
    }
    // A pipeline during the outage: store errors and inline replies in order.
    store_session.send(
        &[
            encode(&[b"GET", b"k"]),
            encode(&[b"PING"]),
            encode(&[b"GET", b"k"]),
        ]
        .concat(),
    );
    assert_eq!(store_session.read_reply(), unavailable);
    assert_eq!(store_session.read_reply(), Reply::Simple("PONG".into()));
    assert_eq!(store_session.read_reply(), unavailable);

    cluster.start_again();

    // The server reconnects by itself: no restart of ringport.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store_session.cmd(&[b"GET", b"k"]) {
            Reply::Bulk(v) => {
                assert_eq!(v, b"before");
                break;
            }
            reply if reply == unavailable && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            reply => panic!("GET after PostgreSQL came back: {reply:?}"),
        }
    }
    // Workers that failed just before may wait out their reconnect interval (250 ms) once; a
    // second later every store call must succeed, on every worker.
    std::thread::sleep(Duration::from_secs(1));
    let mut sessions = vec![store_session, other];
    sessions.extend((0..2).map(|_| server.raw_authed()));
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend(encode(&[b"SET", format!("after{i}").as_bytes(), b"v"]));
        batch.extend(encode(&[b"GET", b"k"]));
    }
    for s in &mut sessions {
        s.send(&batch);
    }
    for s in &mut sessions {
        for _ in 0..10 {
            assert_eq!(
                s.read_reply(),
                ok(),
                "SET a second after PostgreSQL came back"
            );
            assert_eq!(s.read_reply(), Reply::bulk("before"));
        }
    }
    assert_eq!(sessions[0].cmd(&[b"SET", b"k", b"after"]), ok());
    assert_eq!(sessions[1].cmd(&[b"GET", b"k"]), Reply::bulk("after"));
    // New sessions authenticate again (users live in PostgreSQL).
    let mut fresh = server.raw_authed();
    assert_eq!(fresh.cmd(&[b"INCR", b"n"]), Reply::Int(1));
    let value: String = redis::cmd("GET").arg("k").query(&mut client).unwrap();
    assert_eq!(value, "after");
    // Issue 13, item 4: every connection re-established after the outage is counted (the
    // PostgreSQL connections reconnect by themselves, on their next call, so the count used to
    // stay 0), and each store connection has its INFO line, up again.
    let [reconnects] = store_fields(&mut fresh, ["store_reconnects"]);
    assert!(
        reconnects >= 1,
        "store_reconnects {reconnects} after an outage"
    );
    let Reply::Bulk(info) = fresh.cmd(&[b"INFO", b"store"]) else {
        panic!("INFO store is a bulk string")
    };
    let info = String::from_utf8(info).unwrap();
    let conns: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("store_conn"))
        .collect();
    assert_eq!(conns.len(), 4, "one line per store connection:\n{info}");
    assert!(
        conns.iter().all(|l| l.contains(":up=1,")),
        "every store connection is up again:\n{info}"
    );
}

/// Ring links up now, and made so far (`INFO store`), once `links_up` of them are up.
fn wait_for_ring_links(conn: &mut RawConn, links_up: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let [up, made] = store_fields(conn, ["store_ring_links_up", "store_ring_links_made"]);
        if up == links_up {
            return made;
        }
        assert!(
            Instant::now() < deadline,
            "{up} ring links up, never {links_up}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Issue 13, ring reads: on PostgreSQL each ring drives a connection of its own for GETs. GETs
/// are answered there and none reaches a store worker; a session's SET then GET in one write sees
/// its write; while PostgreSQL is down GETs answer `store unavailable`, and once it is back each
/// ring connects again by itself and its GETs return to its own connection.
#[test]
fn gets_run_on_each_rings_own_connection_and_come_back_after_a_restart() {
    const SESSIONS: usize = 40;
    let cluster = PgCluster::start();
    let server = Server::builder()
        .store(&cluster.url())
        .flag("--store-threads", "2")
        .flag("--rings", "2")
        .flag("--metrics-addr", "127.0.0.1:0")
        .start();
    let mut watcher = server.raw_authed();
    let made = wait_for_ring_links(&mut watcher, 2, common::REPLY_TIMEOUT);
    assert_eq!(made, 2, "one connection per ring at start");

    let mut sessions: Vec<RawConn> = (0..SESSIONS).map(|_| server.raw_authed()).collect();
    for (i, s) in sessions.iter_mut().enumerate() {
        let key = format!("k{i}");
        s.send(
            &[
                encode(&[b"SET", key.as_bytes(), format!("v{i}").as_bytes()]),
                encode(&[b"GET", key.as_bytes()]),
                encode(&[b"GET", b"missing"]),
            ]
            .concat(),
        );
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(s.read_reply(), ok(), "SET of session {i}");
        assert_eq!(
            s.read_reply(),
            Reply::bulk(format!("v{i}")),
            "GET of session {i}"
        );
        assert_eq!(s.read_reply(), Reply::Nil, "GET missing of session {i}");
    }
    let [ring_gets, batches] =
        store_fields(&mut watcher, ["store_ring_gets", "store_ring_batches"]);
    assert_eq!(
        ring_gets,
        2 * SESSIONS as u64,
        "GETs sent on the rings' connections"
    );
    assert!((1..=ring_gets).contains(&batches), "{batches} batches");
    // Only the SETs reached the store workers.
    let Reply::Bulk(info) = watcher.cmd(&[b"INFO", b"store"]) else {
        panic!("INFO store is a bulk string")
    };
    let worker_jobs: u64 = String::from_utf8(info)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("store_conn"))
        .map(|l| {
            l.split([':', ','])
                .find_map(|f| f.strip_prefix("jobs="))
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(worker_jobs, SESSIONS as u64, "jobs the store workers ran");
    // Per ring's connection: up, nothing in flight or waiting once every GET is answered, and
    // its batches and GETs adding up to the totals, in INFO and /metrics alike.
    let links = link_fields(&mut watcher);
    assert_eq!(links.len(), 2, "one store_link line per ring: {links:?}");
    for (ring, link) in links.iter().enumerate() {
        assert_eq!(
            [
                link["up"],
                link["in_flight"],
                link["batches_in_flight"],
                link["waiting"]
            ],
            [1, 0, 0, 0],
            "store_link{ring}: {link:?}"
        );
    }
    let sum = |name: &str| links.iter().map(|l| l[name]).sum::<u64>();
    assert_eq!((sum("gets"), sum("batches")), (ring_gets, batches));
    let metrics = common::http_body(server.metrics_addr(), "/metrics");
    assert!(
        metrics.contains("ringport_store_ring_links_up{} 2\n")
            && metrics.contains(&format!("ringport_store_ring_gets_total{{}} {ring_gets}\n")),
        "{metrics}"
    );
    for (ring, link) in links.iter().enumerate() {
        for line in [
            format!("ringport_store_link_up{{ring=\"{ring}\"}} 1\n"),
            format!("ringport_store_link_in_flight{{ring=\"{ring}\"}} 0\n"),
            format!("ringport_store_link_batches_in_flight{{ring=\"{ring}\"}} 0\n"),
            format!("ringport_store_link_waiting{{ring=\"{ring}\"}} 0\n"),
            format!(
                "ringport_store_link_batches_total{{ring=\"{ring}\"}} {}\n",
                link["batches"]
            ),
            format!(
                "ringport_store_link_gets_total{{ring=\"{ring}\"}} {}\n",
                link["gets"]
            ),
        ] {
            assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
        }
    }

    cluster.stop();
    let unavailable = Reply::Error("ERR store unavailable".into());
    // A liveness bound, not a speed check.
    watcher.send_cmd(&[b"GET", b"k0"]);
    assert_eq!(
        watcher.try_read_reply(Duration::from_secs(10)),
        Ok(unavailable.clone()),
        "GET while PostgreSQL is down"
    );
    wait_for_ring_links(&mut watcher, 0, Duration::from_secs(10));
    let down: Vec<u64> = link_fields(&mut watcher).iter().map(|l| l["up"]).collect();
    assert_eq!(down, [0, 0], "store_link up= while PostgreSQL is down");

    cluster.start_again();
    let made = wait_for_ring_links(&mut watcher, 2, Duration::from_secs(30));
    assert!(
        made >= 4,
        "{made} ring connections made, the first two included"
    );
    // Every connection a ring made after its first is a reconnect; the store workers' own
    // reconnects count there too.
    let [reconnects] = store_fields(&mut watcher, ["store_reconnects"]);
    assert!(
        reconnects >= made - 2,
        "store_reconnects {reconnects} after {} ring reconnects",
        made - 2
    );
    let [before] = store_fields(&mut watcher, ["store_ring_gets"]);
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(
            s.cmd(&[b"GET", format!("k{i}").as_bytes()]),
            Reply::bulk(format!("v{i}")),
            "GET of session {i} after the restart"
        );
    }
    let [after] = store_fields(&mut watcher, ["store_ring_gets"]);
    assert_eq!(
        after - before,
        SESSIONS as u64,
        "GETs on the rings' connections again"
    );
}

/// Ring reads log in as the store workers do, whatever the server asks: SCRAM-SHA-256 (the
/// default of PostgreSQL 14 and later) and md5, with the password from the URL.
#[test]
fn ring_reads_log_in_with_scram_and_md5_passwords() {
    for method in ["scram-sha-256", "md5"] {
        let cluster = PgCluster::start_own();
        let url = cluster.login_with_password("ringreader", "s3cret-pass", method);
        let server = Server::builder()
            .store(&url)
            .flag("--store-threads", "2")
            .flag("--rings", "2")
            .start();
        let mut session = server.raw_authed();
        wait_for_ring_links(&mut session, 2, common::REPLY_TIMEOUT);
        assert_eq!(session.cmd(&[b"SET", b"k", b"v"]), ok(), "{method}");
        let [before] = store_fields(&mut session, ["store_ring_gets"]);
        assert_eq!(session.cmd(&[b"GET", b"k"]), Reply::bulk("v"), "{method}");
        let [after] = store_fields(&mut session, ["store_ring_gets"]);
        assert_eq!(
            after,
            before + 1,
            "the GET ran on its ring's connection ({method})"
        );
    }
}

/// A SET PostgreSQL refuses (a key too large for the primary key's index, about 2.7 kB) must
/// fail only that SET, never the other sessions' SETs and GETs folded into the same batch: an
/// authenticated user must not be able to make other users' writes fail. 50 sessions write
/// while one sends the oversized key, over and over, all at once.
#[test]
fn a_refused_set_fails_only_itself_in_a_batch() {
    const SESSIONS: usize = 50;
    const ROUNDS: usize = 20;
    let server = start(Backend::Postgres, "refused_set_in_batch", &[]);
    let mut bad = server.raw_authed();
    let mut good: Vec<RawConn> = (0..SESSIONS).map(|_| server.raw_authed()).collect();
    // Incompressible: PostgreSQL compresses index entries, so a run of one byte would fit.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let huge_key: Vec<u8> = (0..8000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let mut bad_batch = Vec::new();
    for _ in 0..ROUNDS {
        bad_batch.extend(encode(&[b"SET", &huge_key, b"v"]));
        bad_batch.extend(encode(&[b"GET", &huge_key]));
    }
    for (i, conn) in good.iter_mut().enumerate() {
        let mut batch = Vec::new();
        for round in 0..ROUNDS {
            let value = format!("{i}:{round}");
            batch.extend(encode(&[
                b"SET",
                format!("g{i}").as_bytes(),
                value.as_bytes(),
            ]));
            batch.extend(encode(&[b"GET", format!("g{i}").as_bytes()]));
        }
        conn.send(&batch);
        if i == SESSIONS / 2 {
            bad.send(&bad_batch);
        }
    }
    for (i, conn) in good.iter_mut().enumerate() {
        for round in 0..ROUNDS {
            assert_eq!(conn.read_reply(), ok(), "session {i} round {round}: SET");
            assert_eq!(
                conn.read_reply(),
                Reply::bulk(format!("{i}:{round}")),
                "session {i} round {round}: GET"
            );
        }
    }
    for round in 0..ROUNDS {
        assert_eq!(
            bad.read_reply(),
            Reply::Error("ERR store error".into()),
            "the oversized key's SET, round {round}"
        );
        assert_eq!(bad.read_reply(), Reply::Nil, "its GET, round {round}");
    }
    assert_eq!(bad.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
}

#[test]
fn two_servers_on_one_postgres_share_users_and_keys() {
    let url = PgCluster::shared().fresh_url("scale_out");
    let builder = Server::builder()
        .store(&url)
        .user(BOB, BOB_PASSWORD)
        .flag("--store-threads", "4");
    let first = builder.clone().start();
    // The second finds the users already there.
    let second = builder.start();
    assert_ne!(first.port(), second.port());

    let mut a = first.raw_authed();
    let mut b = second.raw_authed();
    assert_eq!(a.cmd(&[b"SET", b"shared", b"from first"]), ok());
    assert_eq!(b.cmd(&[b"GET", b"shared"]), Reply::bulk("from first"));
    assert_eq!(b.cmd(&[b"SET", b"shared", b"from second"]), ok());
    assert_eq!(a.cmd(&[b"GET", b"shared"]), Reply::bulk("from second"));

    // Increments through both land on one counter.
    let mut batch = Vec::new();
    for _ in 0..25 {
        batch.extend(encode(&[b"INCR", b"hits"]));
    }
    a.send(&batch);
    b.send(&batch);
    for _ in 0..25 {
        assert!(matches!(a.read_reply(), Reply::Int(_)));
        assert!(matches!(b.read_reply(), Reply::Int(_)));
    }
    assert_eq!(a.cmd(&[b"GET", b"hits"]), Reply::bulk("50"));
    assert_eq!(b.cmd(&[b"DEL", b"shared"]), Reply::Int(1));
    assert_eq!(a.cmd(&[b"EXISTS", b"shared"]), Reply::Int(0));

    // Bob's keys are his on both servers.
    let mut bob = second.raw();
    bob.auth(BOB, BOB_PASSWORD);
    assert_eq!(bob.cmd(&[b"GET", b"hits"]), Reply::Nil);
    assert_eq!(bob.cmd(&[b"SET", b"hits", b"bob"]), ok());
    assert_eq!(a.cmd(&[b"GET", b"hits"]), Reply::bulk("50"));
}

/// The processes of a throwaway cluster (postmaster and its children), found from its URL's
/// socket dir (`<base>/sock`, data in `<base>/data`), paused with SIGSTOP until dropped.
struct Paused {
    pids: Vec<String>,
}

impl Paused {
    fn cluster(url: &str) -> Paused {
        let socket_dir = url
            .split_whitespace()
            .find_map(|part| part.strip_prefix("host="))
            .expect("the cluster URL names its socket dir");
        let data = std::path::Path::new(socket_dir)
            .parent()
            .unwrap()
            .join("data");
        let postmaster = std::fs::read_to_string(data.join("postmaster.pid"))
            .expect("read postmaster.pid")
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_string();
        let mut pids = vec![postmaster.clone()];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid == Some(postmaster.as_str()) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let paused = Paused { pids };
        paused.signal("STOP");
        paused
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .args(&self.pids)
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {:?}", self.pids);
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.signal("CONT");
    }
}

/// A PostgreSQL that stops answering without closing its connections (hung on I/O, paused,
/// or behind a dead network path) is as unreachable as a stopped one: store commands must
/// answer `-ERR store unavailable` within about a second, not wait for it.
#[test]
fn a_hung_postgres_answers_store_unavailable_instead_of_hanging() {
    let cluster = PgCluster::start();
    let server = Server::builder()
        .store(&cluster.url())
        .flag("--store-threads", "2")
        .start();
    let mut store_session = server.raw_authed();
    let mut other = server.raw_authed();
    assert_eq!(store_session.cmd(&[b"SET", b"k", b"v"]), ok());

    let paused = Paused::cluster(&cluster.url());
    let started = Instant::now();
    store_session.send_cmd(&[b"GET", b"k"]);
    // A liveness bound, well above the "about a second" asked for.
    let reply = store_session.try_read_reply(Duration::from_secs(5));
    eprintln!(
        "GET with PostgreSQL paused: {reply:?} after {:?}",
        started.elapsed()
    );
    // Inline and compute commands do not wait for the store.
    assert_alive_raw(&mut other);
    assert_eq!(
        reply,
        Ok(Reply::Error("ERR store unavailable".into())),
        "GET while PostgreSQL hangs"
    );
    drop(paused);

    // Once it answers again, so does the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store_session.cmd(&[b"GET", b"k"]) {
            Reply::Bulk(v) if v == b"v" => break,
            Reply::Error(e) if e == "ERR store unavailable" && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            reply => panic!("GET after PostgreSQL resumed: {reply:?}"),
        }
    }
}

/// Well inside the PostgreSQL backend's own deadline on a call (1 s), so that on a paused
/// PostgreSQL the session gives up on the store call before the worker does.
const SHORT_STORE_TIMEOUT: &str = "150ms";

/// A server on its own cluster that gives up on a store call after `SHORT_STORE_TIMEOUT`, with
/// two workers so a second command can reach the store while the first one hangs; with ring
/// reads, on one ring, and without, every GET through the store workers.
fn server_with_a_short_store_timeout(ring_reads: bool) -> (PgCluster, Server) {
    let cluster = PgCluster::start_own();
    let mut builder = Server::builder()
        .store(&cluster.url())
        .flag("--store-threads", "2")
        .flag("--store-timeout", SHORT_STORE_TIMEOUT);
    builder = if ring_reads {
        builder.flag("--rings", "1")
    } else {
        builder.switch("--no-ring-reads")
    };
    (cluster, builder.start())
}

/// Sends `command` on a fresh session of `server` while `cluster` is paused, once a store worker
/// has started its call (so the store may already be running it), and returns its reply.
fn answer_while_paused(
    cluster: &PgCluster,
    server: &Server,
    command: &[&[u8]],
) -> (RawConn, pg::Paused, Result<Reply, common::ReadEnd>) {
    let mut session = server.raw_authed();
    let mut watcher = server.raw_authed();
    wait_for_store_depth(&mut watcher, "0", |depth| depth == 0);
    let [ring_gets] = store_fields(&mut watcher, ["store_ring_gets"]);
    let paused = cluster.pause();
    session.send_cmd(command);
    let deadline = Instant::now() + common::REPLY_TIMEOUT;
    // Started: on a store worker, or (a GET) sent on its ring's own connection.
    while store_fields(&mut watcher, ["store_jobs_running", "store_ring_gets"]) == [0, ring_gets] {
        assert!(
            Instant::now() < deadline,
            "no store worker started {command:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // A liveness bound, far above the store timeout.
    let reply = session.try_read_reply(Duration::from_secs(5));
    (session, paused, reply)
}

/// Issue 12, item 7: a write whose store call passed `--store-timeout` after it started may
/// still commit later. Its session is told `store unavailable` and closed, so that no later write
/// of that client can be overtaken by it (`SET k 1` stuck, then `SET k 2`, ending with k = 1).
#[test]
fn a_write_stuck_in_the_store_closes_its_session() {
    let (cluster, server) = server_with_a_short_store_timeout(false);
    let (mut session, paused, reply) =
        answer_while_paused(&cluster, &server, &[b"SET", b"k", b"1"]);
    assert_eq!(
        reply,
        Ok(Reply::Error("ERR store unavailable".into())),
        "SET while PostgreSQL hangs"
    );
    // Anything the client pipelined behind it must not run: it could land before the SET.
    session.send_cmd(&[b"SET", b"k", b"2"]);
    assert!(
        session.closes_within(Duration::from_secs(5)),
        "the session stayed open after a write of unknown outcome"
    );
    assert!(
        session.try_read_reply(Duration::ZERO).is_err(),
        "a command after the stuck write was answered"
    );
    drop(paused);

    // Once PostgreSQL answers again, a new session is served as usual.
    let mut fresh = server.raw_authed();
    set_when_the_store_is_back(&mut fresh, b"after", b"v");
    assert_eq!(fresh.cmd(&[b"GET", b"after"]), Reply::bulk("v"));
}

/// A read whose store call passed `--store-timeout` changed nothing: its session is told
/// `store unavailable` and goes on.
#[test]
fn a_read_stuck_in_the_store_keeps_its_session() {
    a_read_stuck_keeps_its_session(false);
}

/// The same with ring reads: a GET stuck on its ring's own connection answers `store
/// unavailable` after the store timeout, its session goes on, the connection is given up, and
/// once PostgreSQL answers again the ring connects anew and its GETs run there again.
#[test]
fn a_read_stuck_on_a_rings_connection_keeps_its_session() {
    a_read_stuck_keeps_its_session(true);
}

fn a_read_stuck_keeps_its_session(ring_reads: bool) {
    let (cluster, server) = server_with_a_short_store_timeout(ring_reads);
    let mut watcher = server.raw_authed();
    let links = u64::from(ring_reads);
    wait_for_ring_links(&mut watcher, links, common::REPLY_TIMEOUT);
    let (mut session, paused, reply) = answer_while_paused(&cluster, &server, &[b"GET", b"k"]);
    assert_eq!(
        reply,
        Ok(Reply::Error("ERR store unavailable".into())),
        "GET while PostgreSQL hangs"
    );
    assert_alive_raw(&mut session);
    // The ring gave its connection up: a hung store may never answer on it.
    wait_for_ring_links(&mut watcher, 0, Duration::from_secs(5));
    drop(paused);

    set_when_the_store_is_back(&mut session, b"k", b"v");
    wait_for_ring_links(&mut watcher, links, Duration::from_secs(30));
    let [before] = store_fields(&mut watcher, ["store_ring_gets"]);
    assert_eq!(session.cmd(&[b"GET", b"k"]), Reply::bulk("v"));
    let [after] = store_fields(&mut watcher, ["store_ring_gets"]);
    assert_eq!(after - before, links, "GETs on the ring's new connection");
}

/// A pipeline's run of GETs is one store job (the session folds it): when the store stops
/// answering, each GET of the run still gets its own `store unavailable`, in order, and the
/// command behind them runs.
#[test]
fn folded_gets_stuck_in_the_store_each_get_an_answer() {
    let (cluster, server) = server_with_a_short_store_timeout(false);
    let mut session = server.raw_authed();
    let mut watcher = server.raw_authed();
    wait_for_store_depth(&mut watcher, "0", |depth| depth == 0);
    let paused = cluster.pause();
    session.send(
        &[
            encode(&[b"GET", b"a"]),
            encode(&[b"get", b"b"]),
            encode(&[b"GET", b"c"]),
            encode(&[b"PING"]),
        ]
        .concat(),
    );
    for key in ["a", "b", "c"] {
        assert_eq!(
            session.try_read_reply(Duration::from_secs(5)),
            Ok(Reply::Error("ERR store unavailable".into())),
            "GET {key} while PostgreSQL hangs"
        );
    }
    assert_eq!(session.read_reply(), Reply::Simple("PONG".into()));
    drop(paused);
    set_when_the_store_is_back(&mut session, b"b", b"v");
    session.send(
        &[
            encode(&[b"GET", b"a"]),
            encode(&[b"GET", b"b"]),
            encode(&[b"GET", b"b"]),
        ]
        .concat(),
    );
    assert_eq!(session.read_reply(), Reply::Nil);
    assert_eq!(session.read_reply(), Reply::bulk("v"));
    assert_eq!(session.read_reply(), Reply::bulk("v"));
}

/// `SET key value` until the store takes it: after PostgreSQL resumes, the workers whose calls
/// timed out reconnect one by one.
fn set_when_the_store_is_back(conn: &mut RawConn, key: &[u8], value: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match conn.cmd(&[b"SET", key, value]) {
            Reply::Simple(s) if s == "OK" => return,
            Reply::Error(e) if e == "ERR store unavailable" && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            reply => panic!("SET after PostgreSQL resumed: {reply:?}"),
        }
    }
}

fn assert_alive_raw(conn: &mut RawConn) {
    assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(
        conn.cmd(&[b"HASH", b"2", b"x"]),
        Reply::bulk(sha256_rounds(b"x", 2))
    );
}

/// Issue 17: the sweep thread removes expired keys by itself, on both stores: INFO counts what
/// it removed, and on PostgreSQL the rows themselves are gone.
#[test]
fn the_sweep_removes_expired_keys_of_a_running_server() {
    for backend in [Backend::Embedded, Backend::Postgres] {
        let url = PgCluster::shared().fresh_url("sweep_thread");
        let mut builder = Server::builder();
        if backend == Backend::Postgres {
            builder = builder.store(&url).flag("--store-threads", "2");
        }
        let server = builder.start();
        let mut conn = server.raw_authed();
        for i in 0..50 {
            let key = format!("k{i}");
            assert_eq!(
                conn.cmd(&[b"SET", key.as_bytes(), b"v", b"PX", b"100"]),
                ok()
            );
        }
        assert_eq!(conn.cmd(&[b"SET", b"kept", b"v"]), ok());
        common::eventually("INFO store counts 50 swept keys", || {
            let Reply::Bulk(info) = conn.cmd(&[b"INFO", b"store"]) else {
                panic!("INFO is a bulk string")
            };
            String::from_utf8_lossy(&info).contains("\r\nstore_expired_swept:50\r\n")
        });
        if backend == Backend::Postgres {
            let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
            let rows: i64 = client
                .query_one("SELECT count(*) FROM ringport_kv", &[])
                .unwrap()
                .get(0);
            assert_eq!(rows, 1, "only the key without an expiry is stored");
        }
        assert_eq!(conn.cmd(&[b"GET", b"kept"]), Reply::bulk("v"));
    }
}

/// The items of an array reply.
fn array(reply: Reply) -> Vec<Reply> {
    match reply {
        Reply::Array(items) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

/// Issue 17: SCAN, KEYS, DBSIZE, RANDOMKEY and FLUSHDB see and change the session user's keys
/// only, also where one user's name is a prefix of the other's.
fn users_never_see_each_others_keys(backend: Backend) {
    let server = start(backend, "users_never_see_each_others_keys", &[]);
    let mut alice = server.raw_authed();
    let mut bob = server.raw();
    bob.auth(BOB, BOB_PASSWORD);
    for key in [&b"a1"[..], b"a2", b"shared"] {
        assert_eq!(alice.cmd(&[b"SET", key, b"v"]), ok());
    }
    assert_eq!(bob.cmd(&[b"SET", b"shared", b"v"]), ok());
    assert_eq!(bob.cmd(&[b"SET", b"b1", b"v", b"PX", b"100000"]), ok());
    let sorted = |reply: Reply| {
        let mut keys = array(reply);
        keys.sort_by_key(|key| match key {
            Reply::Bulk(bytes) => bytes.clone(),
            other => panic!("{other:?}"),
        });
        keys
    };
    assert_eq!(
        sorted(alice.cmd(&[b"KEYS", b"*"])),
        vec![Reply::bulk("a1"), Reply::bulk("a2"), Reply::bulk("shared")]
    );
    assert_eq!(
        sorted(bob.cmd(&[b"KEYS", b"*"])),
        vec![Reply::bulk("b1"), Reply::bulk("shared")]
    );
    assert_eq!(alice.cmd(&[b"DBSIZE"]), Reply::Int(3));
    assert_eq!(bob.cmd(&[b"DBSIZE"]), Reply::Int(2));
    let scanned = array(bob.cmd(&[b"SCAN", b"0", b"COUNT", b"100"]));
    assert_eq!(scanned[0], Reply::bulk("0"));
    assert_eq!(
        sorted(scanned[1].clone()),
        vec![Reply::bulk("b1"), Reply::bulk("shared")]
    );
    for _ in 0..20 {
        let key = bob.cmd(&[b"RANDOMKEY"]);
        assert!(
            key == Reply::bulk("b1") || key == Reply::bulk("shared"),
            "{key:?}"
        );
    }
    assert_eq!(bob.cmd(&[b"FLUSHDB"]), ok());
    assert_eq!(bob.cmd(&[b"DBSIZE"]), Reply::Int(0));
    assert_eq!(bob.cmd(&[b"RANDOMKEY"]), Reply::Nil);
    assert_eq!(
        alice.cmd(&[b"DBSIZE"]),
        Reply::Int(3),
        "bob's FLUSHDB left alice's keys"
    );
    assert_eq!(alice.cmd(&[b"GET", b"shared"]), Reply::bulk("v"));
}

/// Issue 17: SCAN's cursor is a position in the key order, so keys written and deleted between
/// pages never make a key present throughout come twice or not at all.
fn scan_returns_each_key_present_throughout_exactly_once(backend: Backend) {
    let server = start(backend, "scan_exactly_once", &[]);
    let mut conn = server.raw_authed();
    let mut writer = server.raw_authed();
    let steady: Vec<String> = (0..60).map(|i| format!("steady:{i:02}")).collect();
    for key in &steady {
        assert_eq!(conn.cmd(&[b"SET", key.as_bytes(), b"v"]), ok());
    }
    let mut cursor = b"0".to_vec();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for page in 0.. {
        // Between pages: new keys before, among and after the steady ones, and some removed.
        for key in [
            format!("a:{page}"),
            format!("steady:{page:02}x"),
            format!("z:{page}"),
        ] {
            assert_eq!(writer.cmd(&[b"SET", key.as_bytes(), b"v"]), ok());
        }
        let doomed = format!("steady:{:02}x", page.max(1) - 1);
        writer.cmd(&[b"DEL", doomed.as_bytes()]);
        let mut reply =
            array(conn.cmd(&[b"SCAN", &cursor, b"COUNT", b"7", b"MATCH", b"steady:??"]));
        for key in array(reply.pop().unwrap()) {
            let Reply::Bulk(key) = key else {
                panic!("{key:?}")
            };
            seen.push(key);
        }
        let Some(Reply::Bulk(next)) = reply.pop() else {
            panic!("a cursor")
        };
        if next == b"0" {
            break;
        }
        cursor = next;
        assert!(page < 1_000, "SCAN never ended");
    }
    let want: Vec<Vec<u8>> = steady.iter().map(|key| key.as_bytes().to_vec()).collect();
    seen.sort();
    assert_eq!(seen, want, "each steady key exactly once");
}

/// Issue 17: redis-py's default `pipeline()` wraps its commands in MULTI/EXEC. Its replies, a
/// run-time error inside, a queue-time error (nothing applied) and WATCH with another client's
/// write in between (WatchError), as redis-py reports them.
fn redis_py_default_pipeline_is_a_transaction(backend: Backend) {
    let server = start(backend, "redis_py_pipeline", &[]);
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, username='{USER}', password='{PASSWORD}')\n\
         other = redis.Redis(host='127.0.0.1', port={port}, username='{USER}', password='{PASSWORD}')\n\
         p = r.pipeline()\n\
         for _ in range(10): p.incr('n')\n\
         p.set('k', 'v', px=100000)\n\
         p.get('k')\n\
         p.incr('k')\n\
         out = p.execute(raise_on_error=False)\n\
         print(out[:12], type(out[12]).__name__, r.get('n'), r.ttl('k') > 0)\n\
         p = r.pipeline()\n\
         p.set('x', 1)\n\
         p.execute_command('NOSUCHCOMMAND')\n\
         try:\n    p.execute()\n    print('committed')\n\
         except redis.exceptions.ResponseError as e:\n    print('aborted', r.get('x'))\n\
         with r.pipeline() as p:\n\
         \x20   p.watch('w')\n\
         \x20   other.set('w', 'theirs')\n\
         \x20   p.multi()\n\
         \x20   p.set('w', 'mine')\n\
         \x20   try:\n        p.execute()\n        print('committed')\n\
         \x20   except redis.WatchError:\n        print('watch error', r.get('w'))\n\
         def add(pipe):\n\
         \x20   value = int(pipe.get('n'))\n\
         \x20   pipe.multi()\n\
         \x20   pipe.set('n', value + 5)\n\
         print(r.transaction(add, 'n'), r.get('n'))\n",
        port = server.addr.port()
    );
    let py = common::python_with_redis()
        .args(["-c", &script])
        .output()
        .expect("run the py-clients Python (ci/ensure-clients)");
    let stdout = String::from_utf8_lossy(&py.stdout);
    let stderr = String::from_utf8_lossy(&py.stderr);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, True, b'v'] ResponseError b'10' True",
            "aborted None",
            "watch error b'theirs'",
            "[True] b'15'",
        ],
        "redis-py stderr: {stderr}"
    );
}

/// Issue 17: EXEC is one store transaction, so `kill -9` while it runs leaves all of it or
/// none. Each round sends a transaction of 2,000 SETs and kills the server a different while
/// after the EXEC went out (before, during or after the commit); the last round waits for
/// EXEC's reply first, so its transaction must be there after the restart.
fn kill_9_during_exec_leaves_all_or_nothing(backend: Backend) {
    let mut server = start(backend, "kill_9_during_exec", &[]);
    let value = vec![b'v'; 512];
    let mut outcomes = Vec::new();
    for (round, delay_ms) in [Some(1u64), Some(20), Some(60), Some(200), None]
        .into_iter()
        .enumerate()
    {
        let mut raw = server.raw_authed();
        let keys: Vec<String> = (0..2_000).map(|i| format!("round{round}:{i}")).collect();
        let mut batch = encode(&[b"MULTI"]);
        for key in &keys {
            batch.extend(encode(&[b"SET", key.as_bytes(), &value]));
        }
        batch.extend(encode(&[b"EXEC"]));
        raw.send(&batch);
        match delay_ms {
            Some(delay_ms) => std::thread::sleep(Duration::from_millis(delay_ms)),
            None => {
                assert_eq!(raw.read_reply(), ok(), "MULTI");
                for _ in &keys {
                    assert_eq!(raw.read_reply(), Reply::Simple("QUEUED".into()));
                }
                assert_eq!(raw.read_reply(), Reply::Array(vec![ok(); 2_000]), "EXEC");
            }
        }
        server.kill9();
        server.restart();
        let mut check = server.raw_authed();
        let mut args: Vec<&[u8]> = vec![b"EXISTS"];
        args.extend(keys.iter().map(|key| key.as_bytes()));
        let Reply::Int(present) = check.cmd(&args) else {
            panic!("EXISTS answers an integer")
        };
        assert!(
            present == 0 || present == 2_000,
            "round {round}: {present} of 2000 keys after kill -9 mid-EXEC"
        );
        outcomes.push(present);
    }
    assert_eq!(
        outcomes.last(),
        Some(&2_000),
        "an acknowledged EXEC survives kill -9"
    );
    eprintln!("keys present after each kill: {outcomes:?}");
}

/// A MULTI's queue is bounded in bytes as well as in commands: by `--max-query-buffer` (here its
/// floor, `--proto-max-bulk-len` + 64 KiB = 1,114,112 bytes), as input held for later. The
/// command that would pass it is refused, EXEC aborts and writes nothing, and the session goes
/// on; before, one session could queue 10,000 values of 16 MiB.
#[test]
fn a_multi_queue_is_bounded_in_bytes() {
    let server = start(
        Backend::Embedded,
        "multi_bytes",
        &[
            ("--proto-max-bulk-len", "1048576"),
            ("--max-query-buffer", "1"),
        ],
    );
    let mut raw = server.raw_authed();
    let value = vec![b'v'; 300_000];
    assert_eq!(raw.cmd(&[b"MULTI"]), ok());
    for key in [b"q1", b"q2", b"q3"] {
        assert_eq!(
            raw.cmd(&[b"SET", key, &value]),
            Reply::Simple("QUEUED".into())
        );
    }
    let Reply::Error(refusal) = raw.cmd(&[b"SET", b"q4", &value]) else {
        panic!("the fourth 300 KB SET passes 1,114,112 bytes and is refused")
    };
    assert_eq!(
        refusal,
        "ERR MULTI queue is full: at most 1114112 bytes of queued commands per transaction (--max-query-buffer)"
    );
    assert_eq!(
        raw.cmd(&[b"EXEC"]),
        Reply::Error("EXECABORT Transaction discarded because of previous errors.".into())
    );
    assert_eq!(
        raw.cmd(&[b"EXISTS", b"q1", b"q2", b"q3", b"q4"]),
        Reply::Int(0)
    );
    // The bound is per transaction: the next one starts from nothing.
    assert_eq!(raw.cmd(&[b"MULTI"]), ok());
    for key in [b"q1", b"q2", b"q3"] {
        assert_eq!(
            raw.cmd(&[b"SET", key, &value]),
            Reply::Simple("QUEUED".into())
        );
    }
    assert_eq!(raw.cmd(&[b"EXEC"]), Reply::Array(vec![ok(); 3]));
    assert_eq!(raw.cmd(&[b"EXISTS", b"q1", b"q2", b"q3"]), Reply::Int(3));
}
