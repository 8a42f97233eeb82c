//! Commands of one's own, over real TCP: through the Rust API (`examples/minimal.rs`,
//! `examples/accounts.rs`, built on the library) and as SQL in the config file, with the same
//! gate, errors, statistics and durability as the built-ins.

#[path = "common/pg.rs"]
mod pg;

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{example_binary, http_body, RawConn, Reply, Server, PASSWORD, USER};
use pg::PgCluster;

fn hello3(conn: &mut RawConn) {
    match conn.cmd(&[
        b"HELLO",
        b"3",
        b"AUTH",
        USER.as_bytes(),
        PASSWORD.as_bytes(),
    ]) {
        Reply::Map(_) => {}
        other => panic!("HELLO 3 answered {other:?}"),
    }
}

/// Every string of a reply, in order, each followed by `|`, for finding words in it.
fn text_of(reply: &Reply) -> String {
    match reply {
        Reply::Simple(s) => format!("{s}|"),
        Reply::Bulk(b) => format!("{}|", String::from_utf8_lossy(b)),
        Reply::Array(items) => format!("|{}", items.iter().map(text_of).collect::<String>()),
        Reply::Map(pairs) => format!(
            "|{}",
            pairs
                .iter()
                .map(|(k, v)| text_of(k) + &text_of(v))
                .collect::<String>()
        ),
        other => format!("{other:?}|"),
    }
}

fn minimal(flags: &[(&str, &str)]) -> Server {
    let mut builder = Server::builder().program(example_binary("minimal"));
    for (name, value) in flags {
        builder = builder.flag(name, value);
    }
    builder.flag("--metrics-addr", "127.0.0.1:0").start()
}

#[test]
fn a_program_s_own_commands_of_each_class_answer_as_the_built_ins_do() {
    let server = minimal(&[]);
    let mut anonymous = server.raw();
    assert_eq!(
        anonymous.cmd(&[b"GREET"]).expect_error(),
        "NOAUTH Authentication required."
    );
    let mut conn = server.raw_authed();
    // inline
    assert_eq!(conn.cmd(&[b"greet"]), Reply::Simple("hello, alice".into()));
    assert_eq!(conn.cmd(&[b"GREET", b"bob"]), Reply::bulk("hello, bob"));
    assert_eq!(
        conn.cmd(&[b"GREET", b"a", b"b"]).expect_error(),
        "ERR GREET takes at most one name"
    );
    // compute
    assert_eq!(
        conn.cmd(&[b"FACTOR", b"360"]),
        Reply::Array([2, 2, 2, 3, 3, 5].map(Reply::Int).to_vec())
    );
    assert_eq!(
        conn.cmd(&[b"FACTOR", b"x"]).expect_error(),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        conn.cmd(&[b"FACTOR"]).expect_error(),
        "ERR wrong number of arguments for 'factor' command"
    );
    // store: each user has their own count, committed before the reply
    assert_eq!(conn.cmd(&[b"VISITS"]), Reply::Int(1));
    assert_eq!(conn.cmd(&[b"VISITS"]), Reply::Int(2));
    // Pipelined across classes, replies stay in order.
    conn.send(&common::encode(&[b"FACTOR", b"12"]));
    conn.send(&common::encode(&[b"GREET"]));
    conn.send(&common::encode(&[b"VISITS"]));
    conn.send(&common::encode(&[b"PING"]));
    assert_eq!(
        conn.read_reply(),
        Reply::Array(vec![Reply::Int(2), Reply::Int(2), Reply::Int(3)])
    );
    assert_eq!(conn.read_reply(), Reply::Simple("hello, alice".into()));
    assert_eq!(conn.read_reply(), Reply::Int(3));
    assert_eq!(conn.read_reply(), Reply::Simple("PONG".into()));
    // RESP3: the same commands, RESP3 types where the reply has them.
    let mut resp3 = server.raw();
    hello3(&mut resp3);
    assert_eq!(resp3.cmd(&[b"VISITS"]), Reply::Int(4));
}

#[test]
fn a_custom_command_gets_busy_when_its_pool_is_full() {
    // One compute thread, one queued job: of twelve sessions asking at once for work that takes
    // milliseconds, the ones past the queue are refused at once, the others answered.
    let server = minimal(&[("--compute-threads", "1"), ("--compute-queue", "1")]);
    let mut conns: Vec<RawConn> = (0..12).map(|_| server.raw_authed()).collect();
    for conn in &mut conns {
        conn.send(&common::encode(&[b"FACTOR", b"999999999989"]));
    }
    let replies: Vec<Reply> = conns.iter_mut().map(|c| c.read_reply()).collect();
    let busy = replies
        .iter()
        .filter(|r| matches!(r, Reply::Error(e) if e == "BUSY server overloaded, try again"))
        .count();
    let answered = replies
        .iter()
        .filter(|r| **r == Reply::Array(vec![Reply::Int(999_999_999_989)]))
        .count();
    assert_eq!(busy + answered, 12, "{replies:?}");
    assert!(busy >= 1 && answered >= 1, "{replies:?}");
    // Refused commands count as calls with errors, as the built-ins' do.
    let Reply::Bulk(stats) = conns[0].cmd(&[b"INFO", b"commandstats"]) else {
        panic!("INFO is a bulk string")
    };
    let stats = String::from_utf8_lossy(&stats);
    assert!(stats.contains("cmdstat_factor:calls=12,"), "{stats}");
}

#[test]
fn a_panicking_handler_of_any_class_fails_only_its_own_command() {
    let server = minimal(&[]);
    let mut conn = server.raw_authed();
    let mut other = server.raw_authed();
    for (round, class) in ["inline", "compute", "store"].into_iter().enumerate() {
        let name = format!("OOPS-{class}");
        assert_eq!(
            conn.cmd(&[name.as_bytes()]).expect_error(),
            "ERR internal error",
            "{class}"
        );
        assert_eq!(conn.cmd(&[b"GREET"]), Reply::Simple("hello, alice".into()));
        assert_eq!(
            conn.cmd(&[b"FACTOR", b"6"]),
            Reply::Array(vec![Reply::Int(2), Reply::Int(3)])
        );
        // The store path, and another session, go on too.
        assert_eq!(other.cmd(&[b"VISITS"]), Reply::Int(round as i64 + 1));
    }
    assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert!(
        server.log().contains("this handler panics on purpose"),
        "the panic is in the log"
    );
}

#[test]
fn custom_commands_show_in_command_info_and_metrics() {
    let server = minimal(&[]);
    let mut conn = server.raw_authed();
    for _ in 0..3 {
        conn.cmd(&[b"FACTOR", b"97"]);
    }
    conn.cmd(&[b"FACTOR", b"nope"]);
    let Reply::Array(info) = conn.cmd(&[b"COMMAND", b"INFO", b"factor", b"greet"]) else {
        panic!("COMMAND INFO is an array")
    };
    let Reply::Array(factor) = &info[0] else {
        panic!("an entry is an array")
    };
    assert_eq!(factor[0], Reply::bulk("factor"));
    assert_eq!(factor[1], Reply::Int(2));
    assert_eq!(
        factor[2],
        Reply::Array(vec![Reply::Simple("readonly".into())])
    );
    let docs = text_of(&conn.cmd(&[b"COMMAND", b"DOCS", b"factor"]));
    assert!(docs.contains("|summary|The prime factors of n.|"), "{docs}");
    assert!(docs.contains("|group|custom|"), "{docs}");
    let Reply::Bulk(stats) = conn.cmd(&[b"INFO", b"commandstats"]) else {
        panic!("INFO is a bulk string")
    };
    let stats = String::from_utf8_lossy(&stats);
    assert!(
        stats.contains("cmdstat_factor:calls=4,") && stats.contains("failed_calls=1"),
        "{stats}"
    );
    let Reply::Bulk(latency) = conn.cmd(&[b"INFO", b"latencystats"]) else {
        panic!("INFO is a bulk string")
    };
    assert!(String::from_utf8_lossy(&latency).contains("latency_percentiles_usec_factor:"));
    let metrics = http_body(server.metrics_addr(), "/metrics");
    assert!(
        metrics.contains("ringport_commands_total{command=\"factor\"} 4"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("factor"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metrics.lines().any(
            |l| l.starts_with("ringport_command_latency_seconds_bucket{")
                && l.contains("command=\"factor\"")
        ),
        "no latency histogram for factor"
    );
}

// ---- SQL-defined commands ----

const NOTES_SCHEMA: &str = "CREATE TABLE notes (
    id bigserial PRIMARY KEY, owner text NOT NULL, body text NOT NULL,
    created timestamptz NOT NULL DEFAULT now())";

/// A fresh schema with the notes table, and a config file with `commands` appended.
fn notes_setup(label: &str, commands: &str) -> (String, tempfile::TempDir, std::path::PathBuf) {
    let url = PgCluster::shared().fresh_url(label);
    postgres::Client::connect(&url, postgres::NoTls)
        .and_then(|mut c| c.batch_execute(NOTES_SCHEMA))
        .expect("create the notes table");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ringport.toml");
    std::fs::write(&file, commands).expect("write the config");
    (url, dir, file)
}

fn shipped_sample() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/sql-commands.toml");
    let text = std::fs::read_to_string(path).expect("deploy/sql-commands.toml");
    // The test picks its own address.
    text.replace("listen = \"127.0.0.1:6379\"\n", "")
}

#[test]
fn sql_commands_answer_every_reply_shape_in_resp2_and_resp3() {
    let (url, _dir, file) = notes_setup("sql_shapes", &shipped_sample());
    let server = Server::builder()
        .store(&url)
        .flag("--config", file.to_str().unwrap())
        .start();
    let mut conn = server.raw_authed();
    assert_eq!(conn.cmd(&[b"NOTE.COUNT"]), Reply::Int(0));
    assert_eq!(conn.cmd(&[b"NOTE.LAST"]), Reply::Nil);
    assert_eq!(conn.cmd(&[b"NOTE.GET", b"1"]), Reply::Nil);
    assert_eq!(conn.cmd(&[b"NOTE.ADD", b"first"]), Reply::Int(1));
    assert_eq!(conn.cmd(&[b"NOTE.ADD", b"second\r\nline"]), Reply::Int(2));
    assert_eq!(conn.cmd(&[b"NOTE.COUNT"]), Reply::Int(2));
    assert_eq!(
        conn.cmd(&[b"NOTE.LAST"]),
        Reply::Array(vec![Reply::Int(2), Reply::bulk("second\r\nline")])
    );
    assert_eq!(
        conn.cmd(&[b"NOTE.LIST"]),
        Reply::Array(vec![
            Reply::Array(vec![Reply::Int(1), Reply::bulk("first")]),
            Reply::Array(vec![Reply::Int(2), Reply::bulk("second\r\nline")]),
        ])
    );
    assert_eq!(
        conn.cmd(&[b"NOTE.IDS"]),
        Reply::Array(vec![Reply::Int(1), Reply::Int(2)])
    );
    // A map is a flat array in RESP2 and a map in RESP3.
    let Reply::Array(flat) = conn.cmd(&[b"NOTE.GET", b"1"]) else {
        panic!("RESP2 map is an array")
    };
    assert_eq!(
        flat[..4],
        [
            Reply::bulk("id"),
            Reply::Int(1),
            Reply::bulk("body"),
            Reply::bulk("first")
        ]
    );
    assert_eq!(flat[4], Reply::bulk("created"));
    let mut resp3 = server.raw();
    hello3(&mut resp3);
    let Reply::Map(pairs) = resp3.cmd(&[b"NOTE.GET", b"2"]) else {
        panic!("RESP3 map")
    };
    assert_eq!(pairs[0], (Reply::bulk("id"), Reply::Int(2)));
    assert_eq!(
        resp3.cmd(&[b"NOTE.LAST"]),
        Reply::Array(vec![Reply::Int(2), Reply::bulk("second\r\nline")])
    );
    assert_eq!(resp3.cmd(&[b"NOTE.GET", b"99"]), Reply::Nil);
    // Another user sees none of alice's notes ($1 is the session's user).
    // affected and status
    assert_eq!(conn.cmd(&[b"NOTE.DEL", b"1"]), Reply::Int(1));
    assert_eq!(conn.cmd(&[b"NOTE.DEL", b"1"]), Reply::Int(0));
    assert_eq!(conn.cmd(&[b"NOTE.CLEAR"]), Reply::ok());
    assert_eq!(resp3.cmd(&[b"NOTE.COUNT"]), Reply::Int(0));
    // Errors: PostgreSQL's message, and the session goes on.
    assert_eq!(
        conn.cmd(&[b"NOTE.GET", b"abc"]).expect_error(),
        "ERR invalid input syntax for type bigint: \"abc\""
    );
    assert_eq!(
        conn.cmd(&[b"NOTE.GET"]).expect_error(),
        "ERR wrong number of arguments for 'note.get' command"
    );
    assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    // COMMAND DOCS shows the summary; INFO counts the calls.
    let docs = text_of(&conn.cmd(&[b"COMMAND", b"DOCS", b"note.add"]));
    assert!(
        docs.contains("|summary|Adds a note; replies with its id.|"),
        "{docs}"
    );
    let Reply::Bulk(stats) = conn.cmd(&[b"INFO", b"commandstats"]) else {
        panic!("INFO is a bulk string")
    };
    let stats = String::from_utf8_lossy(&stats);
    assert!(stats.contains("cmdstat_note.get:calls=6,"), "{stats}");
}

#[test]
fn sql_commands_scope_by_user_and_a_bad_value_fails_only_its_command() {
    let (url, _dir, file) = notes_setup("sql_users", &shipped_sample());
    let server = Server::builder()
        .store(&url)
        .user("bob", "hunter2")
        .flag("--config", file.to_str().unwrap())
        .start();
    let mut alice = server.raw_authed();
    let mut bob = server.raw();
    bob.auth("bob", "hunter2");
    assert_eq!(alice.cmd(&[b"NOTE.ADD", b"mine"]), Reply::Int(1));
    assert_eq!(bob.cmd(&[b"NOTE.COUNT"]), Reply::Int(0));
    assert_eq!(bob.cmd(&[b"NOTE.GET", b"1"]), Reply::Nil);
    assert_eq!(bob.cmd(&[b"NOTE.DEL", b"1"]), Reply::Int(0));
    assert_eq!(alice.cmd(&[b"NOTE.COUNT"]), Reply::Int(1));
    // Text that PostgreSQL cannot hold (a NUL byte) is its error, for this command only.
    let error = alice
        .cmd(&[b"NOTE.ADD", b"a\x00b"])
        .expect_error()
        .to_string();
    assert!(error.starts_with("ERR "), "{error}");
    assert_eq!(alice.cmd(&[b"NOTE.COUNT"]), Reply::Int(1));
}

#[test]
fn a_sql_write_acknowledged_survives_kill_9() {
    let (url, _dir, file) = notes_setup("sql_kill9", &shipped_sample());
    let mut server = Server::builder()
        .store(&url)
        .flag("--config", file.to_str().unwrap())
        .start();
    let mut conn = server.raw_authed();
    let mut acknowledged = 0;
    for i in 0..200 {
        conn.send(&common::encode(&[b"NOTE.ADD", format!("n{i}").as_bytes()]));
    }
    for _ in 0..100 {
        if let Reply::Int(_) = conn.read_reply() {
            acknowledged += 1;
        }
    }
    server.kill9();
    server.restart();
    let mut conn = server.raw_authed();
    let Reply::Int(count) = conn.cmd(&[b"NOTE.COUNT"]) else {
        panic!("NOTE.COUNT is an integer")
    };
    assert!(
        (acknowledged..=200).contains(&count),
        "{count} notes after kill -9, {acknowledged} acknowledged"
    );
}

/// `ringport serve` and `ringport config check` with `file`: both fail, naming `expected`.
fn assert_refused(url: &str, file: &Path, expected: &[&str]) {
    let data = tempfile::tempdir().expect("temp dir");
    let serve = Command::new(env!("CARGO_BIN_EXE_ringport"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .args(["--store", url, "--config"])
        .arg(file)
        .env_remove("RINGPORT_STORE_URL")
        .output()
        .expect("run ringport serve");
    let check = Command::new(env!("CARGO_BIN_EXE_ringport"))
        .args(["config", "check"])
        .arg(file)
        .env("RINGPORT_STORE_URL", url)
        .output()
        .expect("run ringport config check");
    for (what, output) in [("serve", serve), ("config check", check)] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what} started anyway: {stderr}");
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("listening"),
            "{what} served"
        );
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "{what}: {needle:?} not in {stderr}"
            );
        }
    }
}

fn block(name: &str, sql: &str, arity: i32, reply: &str) -> String {
    format!(
        "[[command]]\nname = \"{name}\"\nsql = \"{sql}\"\narity = {arity}\nreply = \"{reply}\"\n"
    )
}

#[test]
fn a_bad_sql_command_stops_the_start_naming_the_command_the_file_and_the_reason() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            block("bad.syntax", "SELEC body FROM notes WHERE owner = $1", 1, "value"),
            vec!["command 'bad.syntax'", "syntax error at or near \\\"SELEC\\\""],
        ),
        (
            block("bad.table", "SELECT x FROM nosuch WHERE owner = $1", 1, "value"),
            vec!["command 'bad.table'", "relation \\\"nosuch\\\" does not exist"],
        ),
        (
            block("bad.params", "SELECT body FROM notes WHERE owner = $1 AND id = $2", 3, "value"),
            vec!["command 'bad.params'", "takes 2 parameter(s) but arity 3 gives 3"],
        ),
        (
            block("bad.shape", "SELECT body FROM notes WHERE owner = $1", 1, "table"),
            vec!["command 'bad.shape'", "unknown reply shape 'table'"],
        ),
        (
            block("bad.rows", "DELETE FROM notes WHERE owner = $1", 1, "rows"),
            vec!["command 'bad.rows'", "needs a statement that returns rows"],
        ),
        (
            block("bad.type", "SELECT created FROM notes WHERE owner = $1", 1, "value"),
            vec!["command 'bad.type'", "type timestamptz", "created::text"],
        ),
        (
            block("get", "SELECT body FROM notes WHERE owner = $1 AND id = $2", 2, "value"),
            vec!["command 'get'", "clashes with the command of the same name (built-in)"],
        ),
        (
            format!(
                "{}{}",
                block("twice", "SELECT 1 WHERE $1 <> ''", 1, "value"),
                block("twice", "SELECT 2 WHERE $1 <> ''", 1, "value")
            ),
            vec!["command 'twice'", "clashes"],
        ),
        (
            "[[command]]\nname = \"typo\"\nsql = \"SELECT 1\"\narity = 1\nreply = \"value\"\nuserr = false\n".into(),
            vec!["command 'typo'", "unknown field `userr`"],
        ),
    ];
    for (text, expected) in cases {
        let (url, dir, file) = notes_setup("sql_refused", &text);
        let mut expected = expected;
        let file_name = file.display().to_string();
        expected.push(&file_name);
        // The file's TOML escapes: what the server prints has plain quotes.
        let expected: Vec<String> = expected.iter().map(|e| e.replace("\\\"", "\"")).collect();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_refused(&url, &file, &expected);
        drop(dir);
    }
}

#[test]
fn sql_commands_on_the_embedded_store_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ringport.toml");
    std::fs::write(&file, block("n", "SELECT 1 WHERE $1 <> ''", 1, "value")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringport"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&file)
        .env_remove("RINGPORT_STORE_URL")
        .output()
        .expect("run ringport serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "command 'n': SQL commands need the PostgreSQL store (--store postgres://...)"
        ),
        "{stderr}"
    );
}

#[test]
fn config_check_prepares_the_shipped_sample() {
    let (url, _dir, file) = notes_setup("sql_check", &shipped_sample());
    let output = Command::new(env!("CARGO_BIN_EXE_ringport"))
        .args(["config", "check"])
        .arg(&file)
        .env("RINGPORT_STORE_URL", &url)
        .output()
        .expect("run ringport config check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("8 SQL command(s) prepared and checked"),
        "{stdout}"
    );
}

// ---- the accounts example: transactions in PostgreSQL ----

fn accounts(url: &str, data: Option<Arc<tempfile::TempDir>>) -> Server {
    let mut builder = Server::builder()
        .program(example_binary("accounts"))
        .store(url);
    if let Some(data) = data {
        builder = builder.data_dir(data);
    }
    builder.start()
}

#[test]
fn accounts_open_deposit_transfer_and_refuse_what_they_must() {
    let url = PgCluster::shared().fresh_url("accounts");
    let server = accounts(&url, None);
    let mut conn = server.raw_authed();
    assert_eq!(conn.cmd(&[b"OPEN", b"checking"]), Reply::Int(1));
    assert_eq!(conn.cmd(&[b"OPEN", b"checking"]), Reply::Int(0));
    assert_eq!(conn.cmd(&[b"OPEN", b"savings"]), Reply::Int(1));
    assert_eq!(conn.cmd(&[b"BALANCE", b"nosuch"]), Reply::Nil);
    assert_eq!(
        conn.cmd(&[b"DEPOSIT", b"checking", b"100"]),
        Reply::Int(100)
    );
    assert_eq!(
        conn.cmd(&[b"DEPOSIT", b"checking", b"-5"]).expect_error(),
        "ERR amount must be a positive integer"
    );
    assert_eq!(
        conn.cmd(&[b"TRANSFER", b"checking", b"savings", b"30"]),
        Reply::Int(70)
    );
    assert_eq!(
        conn.cmd(&[b"TRANSFER", b"checking", b"savings", b"71"])
            .expect_error(),
        "ERR insufficient funds"
    );
    assert_eq!(
        conn.cmd(&[b"TRANSFER", b"checking", b"nosuch", b"1"])
            .expect_error(),
        "ERR no such account"
    );
    // Nothing of a refused transfer applied.
    assert_eq!(conn.cmd(&[b"BALANCE", b"checking"]), Reply::Int(70));
    assert_eq!(conn.cmd(&[b"BALANCE", b"savings"]), Reply::Int(30));
    assert_eq!(conn.cmd(&[b"FEE", b"250"]), Reply::Int(2));
    let mut resp3 = server.raw();
    hello3(&mut resp3);
    let Reply::Map(score) = resp3.cmd(&[b"SCORE", b"The cat sat. The cat ran."]) else {
        panic!("SCORE is a map in RESP3")
    };
    assert_eq!(score[0], (Reply::bulk("words"), Reply::Int(6)));
    assert_eq!(score[1], (Reply::bulk("distinct"), Reply::Int(4)));
    assert!(matches!(score[2].1, Reply::Other(',', _)), "{score:?}");
}

#[test]
fn transfers_from_50_sessions_at_once_keep_the_total() {
    let url = PgCluster::shared().fresh_url("accounts_race");
    let server = accounts(&url, None);
    let mut setup = server.raw_authed();
    let names: Vec<String> = (0..5).map(|i| format!("acct{i}")).collect();
    for name in &names {
        setup.cmd(&[b"OPEN", name.as_bytes()]);
        setup.cmd(&[b"DEPOSIT", name.as_bytes(), b"1000"]);
    }
    let server = Arc::new(server);
    let threads: Vec<_> = (0..50)
        .map(|t| {
            let server = server.clone();
            let names = names.clone();
            std::thread::spawn(move || {
                let mut conn = server.raw_authed();
                let mut moved = 0;
                for i in 0..40 {
                    let from = &names[(t + i) % names.len()];
                    let to = &names[(t * 7 + i * 3 + 1) % names.len()];
                    if from == to {
                        continue;
                    }
                    let amount = ((t + i) % 90 + 1).to_string();
                    match conn.cmd(&[
                        b"TRANSFER",
                        from.as_bytes(),
                        to.as_bytes(),
                        amount.as_bytes(),
                    ]) {
                        Reply::Int(_) => moved += 1,
                        Reply::Error(e) if e == "ERR insufficient funds" => {}
                        other => panic!("TRANSFER answered {other:?}"),
                    }
                }
                moved
            })
        })
        .collect();
    let moved: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(moved > 500, "only {moved} transfers went through");
    let total: i64 = names
        .iter()
        .map(|n| match setup.cmd(&[b"BALANCE", n.as_bytes()]) {
            Reply::Int(b) => b,
            other => panic!("BALANCE answered {other:?}"),
        })
        .sum();
    assert_eq!(total, 5000, "money was made or lost");
}

#[test]
fn an_acknowledged_deposit_survives_kill_9() {
    let url = PgCluster::shared().fresh_url("accounts_kill9");
    let mut server = accounts(&url, None);
    let mut conn = server.raw_authed();
    conn.cmd(&[b"OPEN", b"a"]);
    for _ in 0..300 {
        conn.send(&common::encode(&[b"DEPOSIT", b"a", b"1"]));
    }
    let mut acknowledged = 0;
    for _ in 0..150 {
        if let Reply::Int(_) = conn.read_reply() {
            acknowledged += 1;
        }
    }
    server.kill9();
    server.restart();
    let mut conn = server.raw_authed();
    let Reply::Int(balance) = conn.cmd(&[b"BALANCE", b"a"]) else {
        panic!("BALANCE is an integer")
    };
    assert!(
        (acknowledged..=300).contains(&balance),
        "balance {balance} after kill -9 with {acknowledged} deposits acknowledged"
    );
    // kill -9 mid-transfer never applies half of one.
    conn.cmd(&[b"OPEN", b"b"]);
    for _ in 0..100 {
        conn.send(&common::encode(&[b"TRANSFER", b"a", b"b", b"1"]));
    }
    std::thread::sleep(Duration::from_millis(20));
    server.kill9();
    server.restart();
    let mut conn = server.raw_authed();
    let total_before = balance;
    assert_eq!(
        balance_of(&mut conn, b"a") + balance_of(&mut conn, b"b"),
        total_before,
        "a transfer applied in part"
    );
}

fn balance_of(conn: &mut RawConn, name: &[u8]) -> i64 {
    match conn.cmd(&[b"BALANCE", name]) {
        Reply::Int(b) => b,
        other => panic!("BALANCE answered {other:?}"),
    }
}
