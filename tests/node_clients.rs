//! Node's Redis clients against ringport (issue 17): `tests/fixtures/node_clients.js` drives
//! ioredis and node-redis through AUTH with a username, their default pipelines, MULTI/EXEC
//! (a run-time error inside, a queue-time error, WATCH with another connection's write, ten
//! INCRs applied once), SET with EX and TTL, and SCAN over 200 keys, and prints one line per
//! check. [`EXPECTED`] is what it prints against Debian's redis-server (`redis_server_prints_
//! the_expected_lines` keeps it honest); ringport must print the same, byte for byte, on both
//! stores.
//!
//! The clients: ioredis from npm, the exact versions in `tests/fixtures/node/package-lock.json`,
//! which `ci/ensure-clients` installs with `npm ci` into `$CARGO_TARGET_DIR/node-clients`
//! (`target/node-clients` by default); node-redis from Debian's `node-redis` package
//! (`/usr/share/nodejs/redis`). Missing either is a failure that says how to install it, never a
//! skip.

#[path = "common/pg.rs"]
mod pg;

mod common;

#[path = "common/oracle.rs"]
mod oracle;

use std::path::Path;
use std::process::Command;

use common::{Reply, Server, PASSWORD, USER};
use oracle::RedisServer;
use pg::PgCluster;

/// What the script prints against redis-server 7.0 (and must print against ringport).
const EXPECTED: &[&str] = &[
    r#"node versions {"ioredis":"6.0.0","node-redis":"4.5.1"}"#,
    r#"ioredis ping "PONG""#,
    r#"ioredis wrong-password {"error":"WRONGPASS invalid username-password pair or user is disabled."}"#,
    r#"ioredis still-authenticated "PONG""#,
    r#"ioredis pipeline ["OK",1,"v",{"error":"ERR value is not an integer or out of range"},2]"#,
    r#"ioredis multi ["OK",1,"v"]"#,
    r#"ioredis multi-applied ["v","1"]"#,
    r#"ioredis multi-runtime-error ["OK",{"error":"ERR value is not an integer or out of range"},"OK"]"#,
    r#"ioredis multi-runtime-error-applied ["text","after"]"#,
    r#"ioredis multi-queue-error {"error":"EXECABORT Transaction discarded because of previous errors."}"#,
    r#"ioredis multi-queue-error-previous [{"error":"ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'x' "}]"#,
    r#"ioredis multi-queue-error-applied 0"#,
    r#"ioredis watch-conflict null"#,
    r#"ioredis watch-conflict-value "theirs""#,
    r#"ioredis watch-no-conflict ["OK"]"#,
    r#"ioredis watch-no-conflict-value "mine""#,
    r#"ioredis set-ex "OK""#,
    r#"ioredis ttl true"#,
    r#"ioredis set-px "OK""#,
    r#"ioredis expired null"#,
    r#"ioredis scan-load true"#,
    r#"ioredis scan-stream {"distinct":200,"all":true}"#,
    r#"ioredis multi-ten-incr [1,2,3,4,5,6,7,8,9,10]"#,
    r#"ioredis multi-ten-incr-applied "10""#,
    r#"node-redis ping "PONG""#,
    r#"node-redis wrong-password {"error":"WRONGPASS invalid username-password pair or user is disabled."}"#,
    r#"node-redis still-authenticated "PONG""#,
    r#"node-redis pipeline ["OK",1,"v",{"error":"ERR value is not an integer or out of range"},2]"#,
    r#"node-redis exec-as-pipeline ["OK",1,"v"]"#,
    r#"node-redis multi ["OK",1,"v"]"#,
    r#"node-redis multi-applied ["v","1"]"#,
    r#"node-redis multi-runtime-error {"resolved":["OK",{"error":"ERR value is not an integer or out of range"},"OK"]}"#,
    r#"node-redis multi-runtime-error-applied ["text","after"]"#,
    r#"node-redis multi-queue-error {"error":"ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'x' "}"#,
    r#"node-redis multi-queue-error-applied 0"#,
    r#"node-redis watch-conflict "WatchError""#,
    r#"node-redis watch-conflict-value "theirs""#,
    r#"node-redis watch-no-conflict ["OK"]"#,
    r#"node-redis watch-no-conflict-value "mine""#,
    r#"node-redis set-ex "OK""#,
    r#"node-redis ttl true"#,
    r#"node-redis set-px "OK""#,
    r#"node-redis expired null"#,
    r#"node-redis scan-load true"#,
    r#"node-redis scan-iterator {"resolved":{"distinct":200,"all":true}}"#,
    r#"node-redis multi-ten-incr [1,2,3,4,5,6,7,8,9,10]"#,
    r#"node-redis multi-ten-incr-applied "10""#,
    r#"node-redis dbsize 420"#,
];

/// Where Debian's node-redis lives.
const DEBIAN_NODE_MODULES: &str = "/usr/share/nodejs";

/// `NODE_PATH` for the script: ci/ensure-clients' npm directory, then Debian's modules. Panics,
/// saying how to install them, when a client is missing.
fn node_path() -> String {
    let npm_modules = common::installed_clients("node-clients").join("node_modules");
    assert!(
        npm_modules.join("ioredis").join("package.json").is_file(),
        "ioredis is not installed in {}: run ci/ensure-clients (it runs `npm ci` there from \
         tests/fixtures/node/package-lock.json; needs npm and the npm registry)",
        npm_modules.display()
    );
    assert!(
        Path::new(DEBIAN_NODE_MODULES)
            .join("redis")
            .join("package.json")
            .is_file(),
        "node-redis is not installed in {DEBIAN_NODE_MODULES}: run ci/ensure-clients as root \
         (or apt-get install node-redis)"
    );
    format!("{}:{DEBIAN_NODE_MODULES}", npm_modules.display())
}

/// Runs the script against `port` as alice and returns the lines it printed.
fn run_script(port: u16) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node_clients.js");
    let node_path = node_path();
    // The script gives up on its own after 60 s; `timeout` bounds it should node itself hang.
    let output = Command::new("timeout")
        .args(["-k", "5", "90", "node"])
        .arg(&script)
        .args(["127.0.0.1", &port.to_string(), USER, PASSWORD])
        .env("NODE_PATH", node_path)
        // A newer Node's deprecation warnings are not the clients' errors (stderr must be empty).
        .env("NODE_NO_WARNINGS", "1")
        .output()
        .expect("run timeout(1)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.code() != Some(127),
        "node not found: run ci/ensure-clients (it installs nodejs){stderr}"
    );
    assert!(
        output.status.success(),
        "node {} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        script.display(),
        output.status
    );
    assert!(
        stderr.trim().is_empty(),
        "node_clients.js wrote to stderr:\n{stderr}"
    );
    stdout.lines().map(str::to_string).collect()
}

/// Asserts `lines == expected` line by line, naming the first line that differs.
fn assert_lines(server: &str, lines: &[String], expected: &[&str]) {
    for (i, (got, want)) in lines.iter().zip(expected).enumerate() {
        assert_eq!(
            got,
            want,
            "{server}: line {} of node_clients.js's output differs",
            i + 1
        );
    }
    assert_eq!(
        lines.len(),
        expected.len(),
        "{server}: node_clients.js printed {} lines, expected {}:\n{}",
        lines.len(),
        expected.len(),
        lines.join("\n")
    );
}

/// The oracle: [`EXPECTED`] is what Redis itself answers (with a user alice, as ringport has).
#[test]
fn redis_server_prints_the_expected_lines() {
    let redis = RedisServer::start();
    let mut admin = redis.raw();
    let reply = admin.cmd(&[
        b"ACL",
        b"SETUSER",
        USER.as_bytes(),
        b"on",
        format!(">{PASSWORD}").as_bytes(),
        b"~*",
        b"&*",
        b"+@all",
    ]);
    assert_eq!(reply, Reply::ok(), "ACL SETUSER on redis-server");
    assert_lines("redis-server", &run_script(redis.addr.port()), EXPECTED);
}

#[test]
fn embedded_store() {
    let server = Server::start();
    assert_lines(
        "ringport (embedded store)",
        &run_script(server.port()),
        EXPECTED,
    );
}

#[test]
fn postgres_store() {
    let server = Server::builder()
        .store(&PgCluster::shared().fresh_url("node_clients"))
        .flag("--store-threads", "2")
        .start();
    assert_lines(
        "ringport (PostgreSQL)",
        &run_script(server.port()),
        EXPECTED,
    );
}
