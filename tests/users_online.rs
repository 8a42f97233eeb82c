//! Users managed while the server runs (issue 18): ACL SETUSER, DELUSER, LIST, USERS, GETUSER
//! for admins, on both stores; NOPERM for everyone else; a changed password refuses the old one
//! at once; a deleted user's sessions close; the last admin cannot lock everyone out; and
//! `ringport user` against a running server (its admin socket) on the embedded store. The error
//! texts that carry Redis's words are checked against a real redis-server.

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Reply, Server};

const ADMIN_PW: &str = "admin-pw";

fn start(store: Option<&str>) -> Server {
    let mut builder = Server::builder()
        .no_users()
        .env("RINGPORT_ADMIN_PASSWORD", ADMIN_PW);
    if let Some(url) = store {
        builder = builder.store(url);
    }
    builder.start()
}

fn session(server: &Server, user: &str, password: &str) -> common::RawConn {
    let mut conn = server.raw();
    conn.auth(user, password);
    conn
}

fn auth(server: &Server, user: &str, password: &str) -> Reply {
    server
        .raw()
        .cmd(&[b"AUTH", user.as_bytes(), password.as_bytes()])
}

fn wrongpass() -> Reply {
    Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
}

fn cmd(conn: &mut common::RawConn, args: &[&str]) -> Reply {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    conn.cmd(&args)
}

fn bulks(items: &[&str]) -> Reply {
    Reply::Array(items.iter().map(Reply::bulk).collect())
}

/// Everything an admin does over the protocol, the same on either store.
fn admin_manages_users(server: &Server) {
    let mut admin = session(server, "admin", ADMIN_PW);
    assert_eq!(cmd(&mut admin, &["ACL", "WHOAMI"]), Reply::bulk("admin"));
    assert_eq!(
        cmd(&mut admin, &["ACL", "SETUSER", "bob", "on", ">pw1"]),
        Reply::ok()
    );
    assert_eq!(auth(server, "bob", "pw1"), Reply::ok());
    let mut bob = session(server, "bob", "pw1");

    // A new password refuses the old one at once; the open session goes on.
    assert_eq!(
        cmd(&mut admin, &["ACL", "SETUSER", "bob", ">pw2"]),
        Reply::ok()
    );
    assert_eq!(auth(server, "bob", "pw1"), wrongpass());
    assert_eq!(auth(server, "bob", "pw2"), Reply::ok());
    assert_eq!(cmd(&mut bob, &["PING"]), Reply::Simple("PONG".into()));

    // bob is not an admin.
    for sub in ["SETUSER", "USERS", "LIST", "DELUSER", "GETUSER"] {
        let mut args = vec!["ACL", sub];
        if sub != "USERS" && sub != "LIST" {
            args.push("x");
        }
        assert_eq!(
            cmd(&mut bob, &args),
            Reply::Error(format!(
                "NOPERM this user has no permissions to run the 'acl|{}' command",
                sub.to_lowercase()
            ))
        );
    }
    assert_eq!(cmd(&mut bob, &["ACL", "WHOAMI"]), Reply::bulk("bob"));

    // What an admin sees; a user made off cannot authenticate.
    assert_eq!(cmd(&mut admin, &["ACL", "SETUSER", "carol"]), Reply::ok());
    assert_eq!(auth(server, "carol", ""), wrongpass());
    assert_eq!(
        cmd(&mut admin, &["ACL", "USERS"]),
        bulks(&["admin", "bob", "carol"])
    );
    assert_eq!(
        cmd(&mut admin, &["ACL", "LIST"]),
        bulks(&[
            "user admin on ~* resetchannels +@all",
            "user bob on ~* resetchannels +@all -@admin",
            "user carol off ~* resetchannels +@all -@admin",
        ])
    );
    assert_eq!(
        cmd(&mut admin, &["ACL", "GETUSER", "bob"]),
        Reply::Array(vec![
            Reply::bulk("flags"),
            bulks(&["on"]),
            Reply::bulk("passwords"),
            Reply::Array(vec![]),
            Reply::bulk("commands"),
            Reply::bulk("+@all -@admin"),
            Reply::bulk("keys"),
            Reply::bulk("~*"),
            Reply::bulk("channels"),
            Reply::bulk(""),
            Reply::bulk("selectors"),
            Reply::Array(vec![]),
        ])
    );
    assert_eq!(cmd(&mut admin, &["ACL", "GETUSER", "nobody"]), Reply::Nil);

    // Made an admin, bob may manage users; the last admin cannot be switched off or deleted.
    assert_eq!(
        cmd(&mut admin, &["ACL", "SETUSER", "bob", "+@admin"]),
        Reply::ok()
    );
    assert_eq!(
        cmd(&mut bob, &["ACL", "USERS"]),
        bulks(&["admin", "bob", "carol"])
    );
    assert_eq!(
        cmd(&mut bob, &["ACL", "SETUSER", "bob", "-@admin"]),
        Reply::ok()
    );
    let refused = cmd(&mut admin, &["ACL", "SETUSER", "admin", "off"]);
    assert!(
        refused.expect_error().contains("last enabled admin"),
        "{refused:?}"
    );
    let refused = cmd(&mut admin, &["ACL", "DELUSER", "admin"]);
    assert!(
        refused.expect_error().contains("last enabled admin"),
        "{refused:?}"
    );

    // Deleting ends the user's sessions and its AUTH.
    assert_eq!(
        cmd(&mut admin, &["ACL", "DELUSER", "bob", "nobody"]),
        Reply::Int(1)
    );
    assert!(
        bob.replies_to_eof(Duration::from_secs(10)).is_empty(),
        "bob's session got replies after the delete"
    );
    assert_eq!(auth(server, "bob", "pw2"), wrongpass());
    assert_eq!(
        cmd(&mut admin, &["ACL", "USERS"]),
        bulks(&["admin", "carol"])
    );
}

#[test]
fn an_admin_manages_users_on_the_embedded_store() {
    admin_manages_users(&start(None));
}

#[test]
fn an_admin_manages_users_on_postgresql() {
    let url = pg::PgCluster::shared().fresh_url("acl");
    admin_manages_users(&start(Some(&url)));
}

/// `ringport user ACTION ... --data DIR`, with `stdin` as the password.
fn ringport_user(data: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_ringport"))
        .arg("user")
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("RINGPORT_STORE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn ringport_user_works_against_a_running_server_on_the_embedded_store() {
    let server = start(None);
    let data = server.data_path();
    let socket = data.join("admin.sock");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the admin socket is open to others");

    let (ok, text) = ringport_user(&data, &["add", "dave"], "dave-pw\n");
    assert!(ok, "{text}");
    assert_eq!(auth(&server, "dave", "dave-pw"), Reply::ok());
    let mut dave = session(&server, "dave", "dave-pw");

    let (ok, text) = ringport_user(&data, &["add", "dave"], "x\n");
    assert!(!ok && text.contains("already exists"), "{text}");

    let (ok, text) = ringport_user(&data, &["passwd", "dave"], "dave-pw2\n");
    assert!(ok, "{text}");
    assert_eq!(auth(&server, "dave", "dave-pw"), wrongpass());
    assert_eq!(auth(&server, "dave", "dave-pw2"), Reply::ok());

    let (ok, text) = ringport_user(&data, &["add", "erin", "--admin"], "erin-pw\n");
    assert!(ok, "{text}");
    let (ok, text) = ringport_user(&data, &["list"], "");
    assert!(ok, "{text}");
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["admin (admin)", "dave", "erin (admin)"]
    );

    let (ok, text) = ringport_user(&data, &["del", "dave"], "");
    assert!(ok, "{text}");
    assert!(dave.replies_to_eof(Duration::from_secs(10)).is_empty());
    assert_eq!(auth(&server, "dave", "dave-pw2"), wrongpass());
    let (ok, text) = ringport_user(&data, &["del", "dave"], "");
    assert!(!ok && text.contains("no user 'dave'"), "{text}");

    // The admin socket answers only what it is for, and no plain TCP client reaches it.
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    raw.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
    let mut reply = [0u8; 128];
    let n = std::io::Read::read(&mut raw, &mut reply).unwrap();
    assert!(reply[..n].starts_with(b"-ERR the admin socket answers ACL"));
}

#[test]
fn a_store_from_before_admins_gets_its_first_user_made_admin() {
    // `ringport user add admin` without --admin: the row an older version wrote.
    let server = Server::builder().no_users().user("admin", ADMIN_PW).start();
    let mut admin = session(&server, "admin", ADMIN_PW);
    assert_eq!(cmd(&mut admin, &["ACL", "USERS"]), bulks(&["admin"]));
}

/// Starts Debian's redis-server on a free loopback port; killed on drop.
struct RedisServer(Child, u16);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> RedisServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (ci/ensure-clients installs it)");
    common::eventually("redis-server listens", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    RedisServer(child, port)
}

#[test]
fn acl_errors_are_redis_s_words() {
    let redis = redis_server();
    let mut oracle = common::RawConn::connect(([127, 0, 0, 1], redis.1).into());
    let server = start(None);
    let mut ours = session(&server, "admin", ADMIN_PW);
    // A user who may not manage users, on both.
    assert_eq!(
        cmd(
            &mut oracle,
            &["ACL", "SETUSER", "bob", "on", ">pw", "~*", "+@all", "-@admin"]
        ),
        Reply::ok()
    );
    assert_eq!(
        cmd(
            &mut ours,
            &["ACL", "SETUSER", "bob", "on", ">pw", "~*", "+@all", "-@admin"]
        ),
        Reply::ok()
    );
    let cases: &[&[&str]] = &[
        &["ACL"],
        &["ACL", "SETUSER"],
        &["ACL", "WHOAMI", "x"],
        &["ACL", "USERS", "x"],
        &["ACL", "GETUSER"],
        &["ACL", "NOSUCH"],
        &["ACL", "SETUSER", "bob", "bogus"],
        &["ACL", "GETUSER", "nobody"],
        &["ACL", "DELUSER", "nobody"],
    ];
    for case in cases {
        assert_eq!(cmd(&mut ours, case), cmd(&mut oracle, case), "{case:?}");
    }
    oracle.auth("bob", "pw");
    let mut bob = session(&server, "bob", "pw");
    for case in [
        &["ACL", "SETUSER", "x"][..],
        &["ACL", "USERS"],
        &["ACL", "WHOAMI"],
    ] {
        assert_eq!(
            cmd(&mut bob, case),
            cmd(&mut oracle, case),
            "{case:?} as bob"
        );
    }
}
