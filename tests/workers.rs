//! Commands served by a pool of worker processes (docs/workers.md), over TCP with real clients:
//! replies of every RESP type in RESP2 and RESP3, out-of-order replies, a worker that crashes,
//! hangs or writes garbage (the command gets an error, the worker is restarted, later commands
//! work), a full pool (`-BUSY`), a drain with a request in flight, and the pool in INFO,
//! /metrics and COMMAND. The worker is tests/fixtures/test_worker.py, on the standard library.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Reply, Server};

fn config(dir: &std::path::Path, processes: usize, in_flight: usize, timeout: &str) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/test_worker.py");
    let commands = [
        ("wecho", -1),
        ("types", 1),
        ("fail", 1),
        ("slow", 3),
        ("crash", 1),
        ("hang", 1),
        ("freeze", 1),
        ("garbage", 1),
        ("whoami", 1),
    ]
    .iter()
    .map(|(name, arity)| {
        let flags = if *name == "wecho" { "[\"fast\"]" } else { "[]" };
        format!("  {{ name = \"{name}\", arity = {arity}, flags = {flags}, summary = \"test {name}\" }},\n")
    })
    .collect::<String>();
    let text = format!(
        "[[worker]]\nname = \"test\"\nrun = [\"python3\", \"{script}\"]\nprocesses = {processes}\nin-flight = {in_flight}\ntimeout = \"{timeout}\"\ncommands = [\n{commands}]\n"
    );
    let path = dir.join("workers.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Setup {
    server: Server,
    _dir: tempfile::TempDir,
}

fn start(processes: usize, in_flight: usize, timeout: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), processes, in_flight, timeout);
    let server = Server::builder()
        .flag("--config", path.to_str().unwrap())
        .flag("--metrics-addr", "127.0.0.1:0")
        .start();
    Setup { server, _dir: dir }
}

fn cmd(conn: &mut common::RawConn, args: &[&str]) -> Reply {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    conn.cmd(&args)
}

fn raw_reply(conn: &mut common::RawConn, args: &[&str]) -> String {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    String::from_utf8(conn.cmd_bytes(&args)).unwrap()
}

#[test]
fn replies_of_every_type_in_both_protocols() {
    let setup = start(1, 8, "5s");
    let mut conn = setup.server.raw_authed();
    assert_eq!(
        cmd(&mut conn, &["WECHO", "a", "b c"]),
        Reply::Array(vec![Reply::bulk("a"), Reply::bulk("b c")])
    );
    assert_eq!(
        cmd(&mut conn, &["WHOAMI"]),
        Reply::Simple(common::USER.into())
    );
    assert_eq!(
        raw_reply(&mut conn, &["TYPES"]),
        // RESP2 has no null, map, double or boolean: Redis's own RESP2 forms.
        "*8\r\n+simple\r\n$4\r\nbulk\r\n:42\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$6\r\nnested\r\n*2\r\n+k\r\n$1\r\nv\r\n$3\r\n1.5\r\n:1\r\n"
    );
    assert!(!matches!(cmd(&mut conn, &["HELLO", "3"]), Reply::Error(_)));
    assert_eq!(
        raw_reply(&mut conn, &["TYPES"]),
        "*8\r\n+simple\r\n$4\r\nbulk\r\n:42\r\n_\r\n*2\r\n:1\r\n*1\r\n$6\r\nnested\r\n%1\r\n+k\r\n$1\r\nv\r\n,1.5\r\n#t\r\n"
    );
    assert_eq!(
        cmd(&mut conn, &["FAIL"]),
        Reply::Error("ERR told to fail".into())
    );
    assert_eq!(
        cmd(&mut conn, &["SLOW"]).expect_error(),
        "ERR wrong number of arguments for 'slow' command"
    );
}

#[test]
fn replies_leave_in_the_order_the_worker_finishes() {
    let setup = start(1, 8, "5s");
    let mut first = setup.server.raw_authed();
    let mut second = setup.server.raw_authed();
    first.send_cmd(&[b"SLOW", b"800", b"late"]);
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(
        cmd(&mut second, &["SLOW", "0", "early"]),
        Reply::bulk("early")
    );
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "the fast request waited for the slow one"
    );
    assert_eq!(first.read_reply(), Reply::bulk("late"));
}

fn info_workers(server: &Server) -> String {
    let mut conn = server.raw_authed();
    let Reply::Bulk(text) = cmd(&mut conn, &["INFO", "workers"]) else {
        panic!("INFO is a bulk string")
    };
    String::from_utf8(text).unwrap()
}

fn field(info: &str, name: &str) -> u64 {
    let line = info
        .lines()
        .find(|l| l.starts_with("worker_test:"))
        .unwrap_or_else(|| panic!("no worker_test line in {info}"));
    line.split([':', ','])
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .parse()
        .unwrap()
}

/// Waits until the pool serves again.
fn serves_again(server: &Server) {
    common::eventually("the worker was restarted", || {
        let mut conn = server.raw_authed();
        cmd(&mut conn, &["WECHO", "back"]) == Reply::Array(vec![Reply::bulk("back")])
    });
}

#[test]
fn a_worker_that_crashes_fails_its_command_and_is_restarted() {
    let setup = start(1, 8, "5s");
    let mut conn = setup.server.raw_authed();
    assert_eq!(
        cmd(&mut conn, &["CRASH"]),
        Reply::Error("ERR worker 'test' failed: it exited".into())
    );
    // The session goes on at once.
    assert_eq!(cmd(&mut conn, &["PING"]), Reply::Simple("PONG".into()));
    serves_again(&setup.server);
    assert!(field(&info_workers(&setup.server), "restarts") >= 1);
    assert!(setup.server.log().contains("worker process failed"));
}

#[test]
fn a_worker_that_writes_garbage_is_restarted() {
    let setup = start(1, 8, "5s");
    let mut conn = setup.server.raw_authed();
    let reply = cmd(&mut conn, &["GARBAGE"]);
    assert!(
        reply
            .expect_error()
            .starts_with("ERR worker 'test' failed: it wrote something that is not RESP"),
        "{reply:?}"
    );
    serves_again(&setup.server);
}

#[test]
fn a_request_that_takes_too_long_times_out_alone() {
    let setup = start(1, 8, "1s");
    // Python has started and answers, so only HANG can take the whole timeout.
    serves_again(&setup.server);
    let mut hung = setup.server.raw_authed();
    hung.send_cmd(&[b"HANG"]);
    // The same process keeps answering others meanwhile.
    let mut other = setup.server.raw_authed();
    assert_eq!(cmd(&mut other, &["SLOW", "0", "x"]), Reply::bulk("x"));
    assert_eq!(
        hung.read_reply(),
        Reply::Error("ERR worker 'test' timed out after 1s".into())
    );
    assert_eq!(cmd(&mut other, &["SLOW", "0", "y"]), Reply::bulk("y"));
    let info = info_workers(&setup.server);
    assert_eq!(field(&info, "timeouts"), 1);
    assert_eq!(field(&info, "restarts"), 0, "{info}");
}

#[test]
fn a_worker_that_stops_answering_is_restarted() {
    let setup = start(1, 8, "1s");
    serves_again(&setup.server);
    let mut conn = setup.server.raw_authed();
    assert_eq!(
        cmd(&mut conn, &["FREEZE"]),
        Reply::Error("ERR worker 'test' timed out after 1s".into())
    );
    serves_again(&setup.server);
    assert!(field(&info_workers(&setup.server), "restarts") >= 1);
}

#[test]
fn a_full_pool_answers_busy() {
    let setup = start(1, 1, "5s");
    let mut first = setup.server.raw_authed();
    first.send_cmd(&[b"SLOW", b"1000", b"x"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut second = setup.server.raw_authed();
    assert_eq!(
        cmd(&mut second, &["WECHO", "y"]),
        Reply::Error("BUSY server overloaded, try again".into())
    );
    assert_eq!(first.read_reply(), Reply::bulk("x"));
    assert_eq!(field(&info_workers(&setup.server), "busy"), 1);
}

#[test]
fn a_drain_waits_for_requests_in_flight() {
    let mut setup = start(1, 8, "5s");
    let mut conn = setup.server.raw_authed();
    conn.send_cmd(&[b"SLOW", b"500", b"finished"]);
    std::thread::sleep(Duration::from_millis(100));
    setup.server.signal("TERM");
    assert_eq!(conn.read_reply(), Reply::bulk("finished"));
    let status = setup
        .server
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits");
    assert!(status.success());
}

#[test]
fn worker_commands_show_in_command_info_and_metrics() {
    let setup = start(2, 8, "5s");
    let mut conn = setup.server.raw_authed();
    assert_eq!(
        cmd(&mut conn, &["WECHO", "m"]),
        Reply::Array(vec![Reply::bulk("m")])
    );
    let Reply::Array(info) = cmd(&mut conn, &["COMMAND", "INFO", "slow"]) else {
        panic!("COMMAND INFO is an array")
    };
    let Reply::Array(row) = &info[0] else {
        panic!("one row per command")
    };
    assert_eq!(row[0], Reply::bulk("slow"));
    assert_eq!(row[1], Reply::Int(3));
    let Reply::Array(info) = cmd(&mut conn, &["COMMAND", "INFO", "wecho"]) else {
        panic!("COMMAND INFO is an array")
    };
    let Reply::Array(row) = &info[0] else {
        panic!("one row per command")
    };
    assert_eq!(
        row[2],
        Reply::Array(vec![
            Reply::Simple("fast".into()),
            Reply::Simple("readonly".into())
        ])
    );
    let info = info_workers(&setup.server);
    assert_eq!(field(&info, "processes"), 2);
    assert_eq!(field(&info, "up"), 2);
    assert!(field(&info, "requests") >= 1);
    let metrics = common::http_body(setup.server.metrics_addr(), "/metrics");
    assert!(
        metrics.contains("ringport_worker_requests_total{pool=\"test\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("ringport_worker_processes_up{pool=\"test\"} 2"));
}

#[test]
fn a_worker_program_that_cannot_run_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[worker]]\nname = \"bad\"\nrun = [\"/nonexistent/worker\"]\ncommands = [{ name = \"x\", arity = 1 }]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringport"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("worker pool 'bad': cannot run"), "{stderr}");
}

#[test]
fn config_check_names_what_is_wrong_with_a_worker_block() {
    let dir = tempfile::tempdir().unwrap();
    for (block, reason) in [
        (
            "run = []\ncommands = [{ name = \"x\", arity = 1 }]",
            "'run' names no program",
        ),
        ("run = [\"w\"]\ncommands = []", "serves no 'commands'"),
        (
            "run = [\"w\"]\ntimeout = \"soon\"\ncommands = [{ name = \"x\", arity = 1 }]",
            "timeout",
        ),
        (
            "run = [\"w\"]\ncommands = [{ name = \"Bad Name\", arity = 1 }]",
            "command 'Bad Name'",
        ),
        (
            "run = [\"w\"]\nprocesses = 0\ncommands = [{ name = \"x\", arity = 1 }]",
            "at least 1",
        ),
    ] {
        let path = dir.path().join("w.toml");
        std::fs::write(&path, format!("[[worker]]\nname = \"w\"\n{block}\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringport"))
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{block} passed");
        assert!(
            stderr.contains("worker 'w'") && stderr.contains(reason),
            "{block}: {stderr}"
        );
    }
}

#[test]
fn redis_py_calls_worker_commands() {
    let setup = start(2, 8, "5s");
    let script = format!(
        "import redis\n\
         r = redis.Redis(port={}, username='{}', password='{}', protocol=3)\n\
         print(r.execute_command('WECHO', 'from', 'python'))\n\
         print(r.execute_command('WHOAMI'))\n\
         p = r.pipeline(transaction=False)\n\
         for i in range(50):\n    p.execute_command('SLOW', str(50 - i), str(i))\n\
         print(p.execute() == [str(i).encode() for i in range(50)])\n",
        setup.server.port(),
        common::USER,
        common::PASSWORD
    );
    let out = common::python_with_redis()
        .args(["-c", &script])
        .output()
        .expect("run the py-clients Python (ci/ensure-clients)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["[b'from', b'python']", "b'alice'", "True"],
        "a pipeline's replies come back in the order it sent them"
    );
}

#[test]
fn a_worker_in_node_serves_its_commands() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/workers/worker.js");
    let path = dir.path().join("js.toml");
    std::fs::write(
        &path,
        format!(
            "[[worker]]\nname = \"js\"\nrun = [\"node\", \"{script}\"]\nprocesses = 1\n\
             commands = [{{ name = \"shout\", arity = 2 }}, {{ name = \"sum\", arity = -1 }}]\n"
        ),
    )
    .unwrap();
    let server = Server::builder()
        .flag("--config", path.to_str().unwrap())
        .start();
    let mut conn = server.raw_authed();
    assert_eq!(
        cmd(&mut conn, &["SHOUT", "hello"]),
        Reply::Simple("HELLO!".into())
    );
    assert_eq!(cmd(&mut conn, &["SUM", "1", "2", "39"]), Reply::Int(42));
    // A pipeline: many requests in one write, answered in order.
    let mut pipeline = Vec::new();
    for i in 0..100 {
        pipeline.extend(common::encode(&[b"SUM", i.to_string().as_bytes(), b"1"]));
    }
    conn.send(&pipeline);
    for i in 0..100 {
        assert_eq!(conn.read_reply(), Reply::Int(i + 1));
    }
}
