//! AUTH through a PostgreSQL outage, and user changes seen by every instance (issue 13, item 3).
//!
//! Before, AUTH asked a store worker for the user, so while PostgreSQL was down no new connection
//! could authenticate (`-ERR store unavailable`) and every client that reconnected lost PING and
//! HASH too. Now the server holds the user table in memory, read at start and kept current with
//! LISTEN/NOTIFY on a connection of its own. What must hold:
//!
//! - while PostgreSQL is stopped, a user known before the outage authenticates (AUTH and HELLO
//!   AUTH), and then inline and compute commands work while store commands answer
//!   `store unavailable`; a user deleted or disabled before the outage (the change seen before it)
//!   is refused with the usual WRONGPASS, as is an unknown user or a wrong password;
//! - after PostgreSQL is back, changes are followed again without a restart of ringport;
//! - a user added, given a new password, disabled or deleted with `ringport user` (or SQL) while
//!   two instances run on one PostgreSQL is seen by both "within a second": each is polled up
//!   to a liveness bound of [`SEEN_WITHIN`], and the time it took is printed, not asserted;
//! - a change made while the watch connection is gone is seen once it is back (it reads the
//!   whole table again);
//! - `/ready` answers 503 while no store connection is up, and 200 again once one is (issue 16).
//!
//! The servers run with the AUTH failure limits off (`0`): the polls below fail on purpose many
//! times a second, and the limiter is not what these tests are about.

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{add_user, http_get, sha256_rounds, Reply, Server, ServerBuilder, PASSWORD, USER};

/// The liveness bound on "seen within a second".
const SEEN_WITHIN: Duration = Duration::from_secs(5);

fn wrongpass() -> Reply {
    Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
}

/// A server on `url` with the AUTH failure limits off and `users` created first (alice too).
fn server_on(url: &str, users: &[(&str, &str)]) -> Server {
    let mut builder: ServerBuilder = Server::builder()
        .store(url)
        .flag("--metrics-addr", "127.0.0.1:0")
        .flag("--auth-failures-per-minute", "0")
        .flag("--auth-user-failures-per-minute", "0")
        .flag("--max-auth-failures", "1000");
    for (name, password) in users {
        builder = builder.user(name, password);
    }
    builder.start()
}

/// `ringport user ACTION NAME --store URL`, with `stdin` as the password if given.
fn ringport_user(url: &str, action: &str, name: &str, stdin: Option<&str>) {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringport"))
        .args(["user", action, name, "--store", url, "--data"])
        .arg(data.path())
        .env_remove("RINGPORT_STORE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringport user");
    let mut input = child.stdin.take().unwrap();
    if let Some(password) = stdin {
        input.write_all(format!("{password}\n").as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "ringport user {action} {name}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs one SQL statement on `url`; returns the rows it touched.
fn sql(url: &str, statement: &str) -> u64 {
    let mut client =
        postgres::Client::connect(url, postgres::NoTls).expect("connect to PostgreSQL");
    client
        .execute(statement, &[])
        .unwrap_or_else(|error| panic!("{statement}: {error}"))
}

/// `AUTH user password` on a new connection.
fn auth(server: &Server, user: &str, password: &str) -> Reply {
    server
        .raw()
        .cmd(&[b"AUTH", user.as_bytes(), password.as_bytes()])
}

/// Polls AUTH on `server` until it answers `want`, up to [`SEEN_WITHIN`]; returns how long it
/// took (printed by the caller).
fn until_auth(server: &Server, user: &str, password: &str, want: &Reply, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let got = auth(server, user, password);
        if &got == want {
            let took = started.elapsed();
            eprintln!("{what}: seen after {took:?}");
            return took;
        }
        assert!(
            started.elapsed() < SEEN_WITHIN,
            "{what}: AUTH {user} still answers {got:?} after {SEEN_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `/ready` until it answers `status`, up to [`SEEN_WITHIN`]; returns the body.
fn until_ready_is(server: &Server, status: u16, what: &str) -> String {
    let deadline = Instant::now() + SEEN_WITHIN;
    loop {
        let (line, _, body) = http_get(server.metrics_addr(), "/ready");
        if line.split_whitespace().nth(1) == Some(&status.to_string()) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /ready still answers {line:?} {body:?} after {SEEN_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the server's log until `line` appears, up to [`SEEN_WITHIN`].
fn until_logged(server: &Server, line: &str) {
    let deadline = Instant::now() + SEEN_WITHIN;
    while !server.log().contains(line) {
        assert!(
            Instant::now() < deadline,
            "the server never logged {line:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LOST: &str = "lost the connection that keeps the user table current";
const BACK: &str = "user table current again";

#[test]
fn users_known_before_a_postgres_outage_authenticate_during_it() {
    let cluster = pg::PgCluster::start_own();
    let url = cluster.url();
    let server = server_on(
        &url,
        &[
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
            ("dave", "dave-pw"),
        ],
    );
    // Alice authenticates before the outage (her credentials are in the verified cache); bob,
    // never before it, so his AUTH during it runs argon2id against the hash held in memory.
    assert_eq!(auth(&server, USER, PASSWORD), Reply::ok());
    // Deleted and disabled while the server runs, before the outage: refused once seen.
    ringport_user(&url, "del", "carol", None);
    until_auth(&server, "carol", "carol-pw", &wrongpass(), "carol deleted");
    assert_eq!(
        sql(
            &url,
            "UPDATE ringport_users SET disabled = true WHERE name = 'dave'"
        ),
        1
    );
    until_auth(&server, "dave", "dave-pw", &wrongpass(), "dave disabled");

    until_ready_is(&server, 200, "before the outage");
    cluster.stop();
    until_logged(&server, LOST);
    // A load balancer sends new sessions to an instance whose store answers, if there is one.
    let body = until_ready_is(&server, 503, "during the outage");
    assert_eq!(body, "not ready: no store connection is up\n");

    let mut bob = server.raw();
    let started = Instant::now();
    assert_eq!(
        bob.cmd(&[b"AUTH", b"bob", b"bob-pw"]),
        Reply::ok(),
        "a user known before the outage, never authenticated before it"
    );
    eprintln!("AUTH bob during the outage took {:?}", started.elapsed());
    assert_eq!(bob.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    // alice, bob and dave (disabled) are held; carol was deleted.
    let Reply::Bulk(stats) = bob.cmd(&[b"INFO", b"stats"]) else {
        panic!("INFO is a bulk string")
    };
    let stats = String::from_utf8(stats).unwrap();
    assert!(stats.contains("\r\nusers_known:3\r\n"), "{stats}");
    assert_eq!(
        bob.cmd(&[b"HASH", b"3", b"x"]),
        Reply::bulk(sha256_rounds(b"x", 3))
    );
    assert_eq!(
        bob.cmd(&[b"GET", b"k"]),
        Reply::Error("ERR store unavailable".into()),
        "the store itself is down"
    );
    assert_eq!(auth(&server, USER, PASSWORD), Reply::ok(), "alice, cached");
    assert_eq!(auth(&server, "bob", "bob-pw"), Reply::ok(), "bob again");
    let mut hello = server.raw();
    match hello.cmd(&[b"HELLO", b"3", b"AUTH", b"bob", b"bob-pw"]) {
        Reply::Map(fields) => assert!(!fields.is_empty()),
        other => panic!("HELLO 3 AUTH bob during the outage: {other:?}"),
    }
    assert_eq!(hello.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    for (user, password, why) in [
        ("carol", "carol-pw", "deleted before the outage"),
        ("dave", "dave-pw", "disabled before the outage"),
        ("bob", "not-bobs", "a wrong password"),
        ("mallory", "anything", "an unknown user"),
    ] {
        assert_eq!(auth(&server, user, password), wrongpass(), "{user}: {why}");
    }

    cluster.start_again();
    until_logged(&server, BACK);
    until_ready_is(&server, 200, "after the outage");
    // Followed again without a restart of ringport.
    add_user(&server.data_path(), Some(&url), "erin", "erin-pw");
    until_auth(
        &server,
        "erin",
        "erin-pw",
        &Reply::ok(),
        "erin added after the outage",
    );
    ringport_user(&url, "del", "bob", None);
    until_auth(
        &server,
        "bob",
        "bob-pw",
        &wrongpass(),
        "bob deleted after the outage",
    );
    let log = server.log();
    assert_eq!(
        log.matches(LOST).count(),
        1,
        "one line per transition:\n{log}"
    );
    assert_eq!(
        log.matches(BACK).count(),
        1,
        "one line per transition:\n{log}"
    );
}

#[test]
fn user_changes_are_seen_by_every_instance_within_a_second() {
    let url = pg::PgCluster::shared().fresh_url("two_instances");
    let first = server_on(&url, &[]);
    let second = server_on(&url, &[]);
    assert_eq!(
        auth(&second, "erin", "erin-pw"),
        wrongpass(),
        "not there yet"
    );

    // `ringport user add` while both run (as an operator would next to the first instance).
    add_user(&first.data_path(), Some(&url), "erin", "erin-pw");
    let mut took = Vec::new();
    for (name, server) in [("second", &second), ("first", &first)] {
        took.push(until_auth(
            server,
            "erin",
            "erin-pw",
            &Reply::ok(),
            &format!("erin added, on the {name} instance"),
        ));
    }

    ringport_user(&url, "passwd", "erin", Some("erin-new"));
    for (name, server) in [("second", &second), ("first", &first)] {
        took.push(until_auth(
            server,
            "erin",
            "erin-new",
            &Reply::ok(),
            &format!("erin's new password, on the {name} instance"),
        ));
        assert_eq!(
            auth(server, "erin", "erin-pw"),
            wrongpass(),
            "erin's old password, on the {name} instance"
        );
    }

    assert_eq!(
        sql(
            &url,
            "UPDATE ringport_users SET disabled = true WHERE name = 'erin'"
        ),
        1
    );
    for (name, server) in [("second", &second), ("first", &first)] {
        took.push(until_auth(
            server,
            "erin",
            "erin-new",
            &wrongpass(),
            &format!("erin disabled, on the {name} instance"),
        ));
    }
    sql(
        &url,
        "UPDATE ringport_users SET disabled = false WHERE name = 'erin'",
    );
    until_auth(
        &second,
        "erin",
        "erin-new",
        &Reply::ok(),
        "erin enabled again",
    );

    ringport_user(&url, "del", "erin", None);
    for (name, server) in [("second", &second), ("first", &first)] {
        took.push(until_auth(
            server,
            "erin",
            "erin-new",
            &wrongpass(),
            &format!("erin deleted, on the {name} instance"),
        ));
    }
    eprintln!(
        "changes seen after (each poll includes an argon2id AUTH): {took:?}, slowest {:?}",
        took.iter().max().unwrap()
    );
}

#[test]
fn a_change_made_while_the_watch_connection_was_gone_is_seen_once_it_is_back() {
    // Our own application_name, so that terminating our watch connection touches no other
    // test's server on the shared cluster.
    let base = pg::PgCluster::shared().fresh_url("watch_gap");
    let url = format!("{base} application_name=watch_gap_{}", std::process::id());
    let server = server_on(&url, &[("bob", "bob-pw")]);
    assert_eq!(auth(&server, "bob", "bob-pw"), Reply::ok());
    until_logged(&server, "following user changes with LISTEN/NOTIFY");

    // End the watch connection, then delete bob at once: the watch reconnects after a back-off,
    // so the delete most likely lands while nobody listens, and only the full read after the
    // reconnect can show it.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let watch_name = format!("watch_gap_{} user-watch", std::process::id());
    let ended = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&watch_name],
        )
        .unwrap();
    assert_eq!(ended.len(), 1, "one watch connection named {watch_name:?}");
    assert_eq!(
        client
            .execute("DELETE FROM ringport_users WHERE name = 'bob'", &[])
            .unwrap(),
        1
    );
    until_auth(
        &server,
        "bob",
        "bob-pw",
        &wrongpass(),
        "bob deleted while unwatched",
    );
    until_logged(&server, BACK);
    let log = server.log();
    assert_eq!(log.matches(LOST).count(), 1, "{log}");
}
