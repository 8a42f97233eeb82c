//! The black-box harness: a real `ringport serve` process on a temp data dir, clients over real
//! TCP.
//!
//! - [`Server::start`] / [`Server::builder`]: users are created first (`ringport user add`), then
//!   the server starts on `127.0.0.1:0`; its port comes from the `ringport listening on ADDR`
//!   line on stdout. Extra flags and a store URL go through [`ServerBuilder`].
//! - Servers start with `--drain-grace 0` (a test may give its own). Dropping a [`Server`] sends
//!   SIGTERM, waits, then SIGKILLs; a failing test gets the tail of the server's log on stderr.
//! - [`RawConn`]: a plain `TcpStream` for bytes no client library would send, with a small RESP
//!   reader ([`Reply`]) and a read-until-EOF that tells a closed connection from a silent one.
//! - [`Server::client`]: an authenticated `redis::Connection` (RESP2 unless asked otherwise).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo;
use sha2::{Digest, Sha256};

/// The user every server gets unless told otherwise.
pub const USER: &str = "alice";
/// Alice's password.
pub const PASSWORD: &str = "secret";

/// How long a reply may take before a test gives up on the server (liveness, not speed).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long SIGTERM may take before the harness SIGKILLs.
const TERM_TIMEOUT: Duration = Duration::from_secs(15);

/// Extra `serve` flags for every server of the run, from `RINGPORT_TEST_FLAGS` (split on
/// whitespace): `ci/test` runs the suite again under each kernel profile and on epoll this way.
/// A test's own flags come after, so they win.
pub fn profile_flags() -> Vec<String> {
    std::env::var("RINGPORT_TEST_FLAGS")
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_ringport")
}

/// The binary of `examples/NAME.rs`, next to `ringport`'s. `cargo test` builds the examples
/// with the tests; a run filtered to one test target does not, so then it is built here.
pub fn example_binary(name: &str) -> PathBuf {
    let path = std::path::Path::new(binary())
        .parent()
        .expect("the binary's directory")
        .join("examples")
        .join(name);
    static BUILT: Mutex<()> = Mutex::new(());
    let _one_build_at_a_time = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !path.exists() {
        let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["build", "--example", name])
            .status()
            .expect("run cargo build --example");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

/// Where `ci/ensure-clients` installs the clients that do not come from Debian:
/// `$CARGO_TARGET_DIR/NAME`, `target/NAME` by default (a relative target folder is taken from
/// the repository root, as cargo does).
pub fn installed_clients(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(target)
        .join(name)
}

/// The Python of the virtual environment `ci/ensure-clients` puts redis-py in
/// (`py-clients`, the version pinned in tests/fixtures/python/requirements.txt). Missing is a
/// failure that says how to install it, never a skip.
pub fn python_with_redis() -> Command {
    let python = installed_clients("py-clients").join("bin").join("python3");
    assert!(
        python.is_file(),
        "redis-py is not installed in {}: run ci/ensure-clients (it makes that virtual environment \
         and installs tests/fixtures/python/requirements.txt there; needs PyPI)",
        python.display()
    );
    Command::new(python)
}

/// What to start: flags, store, users. Kept by the [`Server`] so it can start again.
#[derive(Clone)]
pub struct ServerBuilder {
    flags: Vec<String>,
    store: Option<String>,
    users: Vec<(String, String)>,
    /// Users created with `--admin`.
    admins: Vec<(String, String)>,
    data: Option<Arc<tempfile::TempDir>>,
    nofile: Option<u64>,
    deny_io_uring: bool,
    envs: Vec<(String, String)>,
    /// The server program: `ringport`, or an example built on the library.
    program: Option<PathBuf>,
}

impl ServerBuilder {
    /// Runs this program instead of `ringport` (it takes `serve`'s flags: [`example_binary`]).
    pub fn program(mut self, path: PathBuf) -> Self {
        self.program = Some(path);
        self
    }

    /// Sets an environment variable for `ringport serve` (after the harness clears
    /// `RINGPORT_STORE_URL`, so this can set it).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.to_string(), value.to_string()));
        self
    }

    /// Starts the server with this RLIMIT_NOFILE (soft and hard), through `prlimit(1)`, which
    /// execs it (the pid stays the server's).
    pub fn nofile_limit(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Starts the server under a seccomp filter that makes io_uring_setup fail with EPERM, as
    /// Docker's default profile does (`ringport deny-io-uring -- ringport serve ...`).
    pub fn deny_io_uring(mut self) -> Self {
        self.deny_io_uring = true;
        self
    }

    /// Adds a switch (a flag without a value) to `ringport serve`.
    pub fn switch(mut self, name: &str) -> Self {
        self.flags.push(name.to_string());
        self
    }

    /// Adds `--name value` to `ringport serve`.
    pub fn flag(mut self, name: &str, value: &str) -> Self {
        self.flags.push(name.to_string());
        self.flags.push(value.to_string());
        self
    }

    /// Runs on this store (`--store URL`) instead of the embedded one.
    pub fn store(mut self, url: &str) -> Self {
        self.store = Some(url.to_string());
        self
    }

    /// Also creates this user before starting (alice is always created).
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_string(), password.to_string()));
        self
    }

    /// Also creates this user, as an admin (`ringport user add --admin`), before starting.
    pub fn admin(mut self, name: &str, password: &str) -> Self {
        self.admins.push((name.to_string(), password.to_string()));
        self
    }

    /// Creates no user at all (not even alice): the server's first start makes `admin`.
    pub fn no_users(mut self) -> Self {
        self.users.clear();
        self
    }

    /// Uses this data dir (shared with another server) instead of a fresh one.
    pub fn data_dir(mut self, dir: Arc<tempfile::TempDir>) -> Self {
        self.data = Some(dir);
        self
    }

    /// Creates the users (an existing user is fine: a second server on one store), then starts
    /// the server and waits for its listening line.
    pub fn start(mut self) -> Server {
        let data = self
            .data
            .get_or_insert_with(|| Arc::new(tempfile::tempdir().expect("temp data dir")))
            .clone();
        let users = self.users.iter().map(|user| (user, false));
        for ((name, password), admin) in users.chain(self.admins.iter().map(|user| (user, true))) {
            add_user_as(
                &data.path().join("data"),
                self.store.as_deref(),
                name,
                password,
                admin,
            );
        }
        let mut server = Server {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            builder: self,
            log: Arc::new(Mutex::new(Vec::new())),
            stdout: Arc::new(Mutex::new(Vec::new())),
            data,
        };
        server.spawn();
        server
    }
}

/// `echo PASSWORD | ringport user add NAME --data DIR [--store URL]`; "already exists" is fine.
pub fn add_user(data: &std::path::Path, store: Option<&str>, name: &str, password: &str) {
    add_user_as(data, store, name, password, false);
}

/// `add_user`, with `--admin` when `admin`.
pub fn add_user_as(
    data: &std::path::Path,
    store: Option<&str>,
    name: &str,
    password: &str,
    admin: bool,
) {
    let mut command = Command::new(binary());
    command.args(["user", "add", name, "--data"]).arg(data);
    if admin {
        command.arg("--admin");
    }
    if let Some(url) = store {
        command.args(["--store", url]);
    }
    let mut child = command
        .env_remove("RINGPORT_STORE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringport user add");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() || stderr.contains("already exists"),
        "ringport user add {name} failed ({}): {}{stderr}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A running `ringport serve`, stopped on drop.
pub struct Server {
    child: Option<Child>,
    /// Where it listens (changes on [`Server::restart`]).
    pub addr: SocketAddr,
    builder: ServerBuilder,
    log: Arc<Mutex<Vec<u8>>>,
    /// Every line the server printed on stdout.
    stdout: Arc<Mutex<Vec<String>>>,
    data: Arc<tempfile::TempDir>,
}

impl Server {
    /// The defaults: embedded store, user alice, no extra flags.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            flags: Vec::new(),
            store: None,
            users: vec![(USER.to_string(), PASSWORD.to_string())],
            admins: Vec::new(),
            data: None,
            nofile: None,
            deny_io_uring: false,
            envs: Vec::new(),
            program: None,
        }
    }

    /// A server with the defaults.
    pub fn start() -> Server {
        Server::builder().start()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let mut command = match self.builder.nofile {
            Some(limit) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(binary());
                command
            }
            None if self.builder.deny_io_uring => {
                let mut command = Command::new(binary());
                command.args(["deny-io-uring", "--", binary()]);
                command
            }
            None => match &self.builder.program {
                Some(program) => Command::new(program),
                None => Command::new(binary()),
            },
        };
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(self.data_path())
            // No load balancer watches a test's server, so a drain needs no grace before it
            // stops accepting (and each test's SIGTERM at the end would wait it out); a test's
            // own `--drain-grace` comes later and wins.
            .args(["--drain-grace", "0"])
            .args(profile_flags())
            .args(&self.builder.flags)
            .env_remove("RINGPORT_STORE_URL")
            .envs(self.builder.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = &self.builder.store {
            command.args(["--store", url]);
        }
        let mut child = command.spawn().expect("start ringport serve");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut chunk = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                log.extend_from_slice(&chunk[..n]);
                // Keep the tail only: a chatty server must not grow the test's memory.
                if log.len() > 1 << 20 {
                    let cut = log.len() - (512 << 10);
                    log.drain(..cut);
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        let printed = self.stdout.clone();
        // A TLS-only server prints no plain line; its TLS port is the one.
        let prefix = if self.builder.flags.iter().any(|f| f == "--no-plain") {
            "ringport TLS listening on "
        } else {
            "ringport listening on "
        };
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                printed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                if let Some(addr) = line.strip_prefix(prefix) {
                    if !sent {
                        let _ = tx.send(addr.trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        self.child = Some(child);
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let status = self.child.as_mut().unwrap().try_wait().ok().flatten();
                panic!(
                    "ringport serve printed no listening line (exit status {status:?}); log:\n{}",
                    self.log()
                );
            }
        };
        self.addr = addr.parse().expect("the listening line names an address");
    }

    /// The data dir given to `--data` (the embedded store lives there).
    pub fn data_path(&self) -> PathBuf {
        self.data.path().join("data")
    }

    /// The shared temp dir, to start another server on the same data.
    pub fn data_dir(&self) -> Arc<tempfile::TempDir> {
        self.data.clone()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything the server logged so far (its tail, for a chatty one).
    pub fn log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&log).into_owned()
    }

    /// Every line the server printed on stdout so far (lines printed before the listening line
    /// are all there once [`ServerBuilder::start`] returns).
    pub fn stdout(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where `--metrics-addr` serves, from the latest `metrics on http://ADDR/metrics` line
    /// (printed before the listening line); panics if the server printed none.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.stdout()
            .iter()
            .rev()
            .find_map(|line| {
                line.strip_prefix("metrics on http://")?
                    .strip_suffix("/metrics")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no 'metrics on' line; stdout: {:?}", self.stdout()))
    }

    /// The TLS port (`--tls-listen`), from its listening line, printed before the plain one.
    pub fn tls_addr(&self) -> SocketAddr {
        self.stdout()
            .iter()
            .rev()
            .find_map(|line| {
                line.strip_prefix("ringport TLS listening on ")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no 'TLS listening on' line; stdout: {:?}", self.stdout()))
    }

    /// The server's resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).expect("read the server's VmRSS")
    }

    /// Sends a signal by name (`TERM`, `KILL`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to `timeout`; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (panics if it does not exit within the drain allowance).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        match self.wait_exit(TERM_TIMEOUT) {
            Some(status) => status,
            None => panic!(
                "ringport did not exit within {TERM_TIMEOUT:?} of SIGTERM; log:\n{}",
                self.log()
            ),
        }
    }

    /// `kill -9`: no drain, no flush, as a crash.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server running");
        child.kill().expect("SIGKILL the server");
        child.wait().expect("reap the server");
    }

    /// Starts the server again with the same flags, data dir and store (after `kill9` or
    /// `terminate`). The port changes.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// An authenticated RESP2 connection as alice.
    pub fn client(&self) -> redis::Connection {
        self.client_as(USER, PASSWORD, redis::ProtocolVersion::RESP2)
    }

    /// An authenticated connection as `user`, speaking `protocol` (RESP3 sends `HELLO 3 AUTH`).
    pub fn client_as(
        &self,
        user: &str,
        password: &str,
        protocol: redis::ProtocolVersion,
    ) -> redis::Connection {
        let info = self.connection_info(user, password, protocol);
        let client = redis::Client::open(info).expect("redis client");
        // A blocking socket call with a timeout fails with EINTR when this process is stopped
        // and continued, or a handled signal arrives (signal(7)), and the redis crate does not
        // retry: a connection attempt cut that way is made again, as RawConn's reads retry.
        let mut attempts = 0;
        let conn = loop {
            match client.get_connection_with_timeout(REPLY_TIMEOUT) {
                Ok(conn) => break conn,
                Err(e) if attempts < 3 && interrupted(&e) => attempts += 1,
                Err(e) => panic!("connect as {user}: {e}; log:\n{}", self.log()),
            }
        };
        conn.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        conn.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        conn
    }

    /// Connection info for the redis crate.
    pub fn connection_info(
        &self,
        user: &str,
        password: &str,
        protocol: redis::ProtocolVersion,
    ) -> redis::ConnectionInfo {
        redis::ConnectionAddr::Tcp(self.addr.ip().to_string(), self.addr.port())
            .into_connection_info()
            .expect("connection info")
            .set_redis_settings(
                redis::RedisConnectionInfo::default()
                    .set_username(user)
                    .set_password(password)
                    .set_protocol(protocol),
            )
    }

    /// A raw, unauthenticated TCP connection.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(self.addr)
    }

    /// A raw connection that has sent `AUTH alice secret` and seen `+OK`.
    pub fn raw_authed(&self) -> RawConn {
        let mut conn = self.raw();
        conn.auth(USER, PASSWORD);
        conn
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + TERM_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail = &log[log.len().saturating_sub(8192)..];
            eprintln!(
                "---- ringport log (tail) for {} ----\n{tail}\n----",
                self.addr
            );
        }
    }
}

/// `GET path` over HTTP/1.1 (the metrics port: `/metrics`, `/health`, `/ready`); returns (status
/// line, headers lowercased, body), checking that `Content-Length` matches the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (String, HashMap<String, String>, String) {
    let mut stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the HTTP response to its end");
    let response = String::from_utf8(response).expect("the response is UTF-8");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<HashMap<_, _>>();
    if let Some(length) = headers.get("content-length") {
        assert_eq!(
            length.parse::<usize>().unwrap(),
            body.len(),
            "Content-Length must match the body"
        );
    }
    (status, headers, body.to_string())
}

/// The body of `GET path` (the metrics endpoint).
pub fn http_body(addr: SocketAddr, path: &str) -> String {
    http_get(addr, path).2
}

/// The HTTP status code of `GET path` (`/ready`: 200 or 503).
pub fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let (status, _, _) = http_get(addr, path);
    status
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status code in {status:?}"))
}

/// Polls `condition` until it holds, failing after [`REPLY_TIMEOUT`] (liveness, not speed).
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `d = data; rounds times: d = sha256(d)`, as lowercase hex: what `HASH rounds data` replies.
pub fn sha256_rounds(data: &[u8], rounds: u32) -> String {
    assert!(rounds >= 1);
    let mut digest: Vec<u8> = Sha256::digest(data).to_vec();
    for _ in 1..rounds {
        digest = Sha256::digest(&digest).to_vec();
    }
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A multibulk command: `*N\r\n$len\r\narg\r\n...`.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    ringport::resp::encode_command(&mut out, args);
    out
}

/// One reply as the wire carried it (RESP2, plus the RESP3 types a test may meet).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+text`
    Simple(String),
    /// `-text` (the whole line, code included)
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` with its bytes
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or RESP3 `_`
    Nil,
    /// `*n`, `~n` or `>n`
    Array(Vec<Reply>),
    /// RESP3 `%n`
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `=n` (format, text), `,`, `#`, `(` as their text
    Other(char, Vec<u8>),
}

impl Reply {
    /// `+OK`
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// A bulk string of these bytes.
    pub fn bulk(bytes: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(bytes.as_ref().to_vec())
    }

    /// The error line, panicking with the reply if it is not an error.
    pub fn expect_error(&self) -> &str {
        match self {
            Reply::Error(e) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }
}

/// Whether a redis-crate call failed only because a system call was interrupted (EINTR).
fn interrupted(error: &redis::RedisError) -> bool {
    let io_kind = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    io_kind == Some(ErrorKind::Interrupted) || error.to_string().contains("os error 4")
}

/// Parses one reply from the front of `buf`: `Some((reply, consumed))` once it is complete.
pub fn parse_reply(buf: &[u8]) -> Option<(Reply, usize)> {
    let cr = buf.windows(2).position(|w| w == b"\r\n")?;
    let kind = *buf.first()?;
    let line = &buf[1..cr];
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> i64 {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad length line {:?}", text()))
    };
    let after = cr + 2;
    match kind {
        b'+' => Some((Reply::Simple(text()), after)),
        b'-' => Some((Reply::Error(text()), after)),
        b':' => Some((Reply::Int(number()), after)),
        b'_' => Some((Reply::Nil, after)),
        b',' | b'#' | b'(' => Some((Reply::Other(kind as char, line.to_vec()), after)),
        b'$' | b'=' => {
            let n = number();
            if n < 0 {
                return Some((Reply::Nil, after));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return None;
            }
            let body = buf[after..after + n].to_vec();
            let reply = if kind == b'$' {
                Reply::Bulk(body)
            } else {
                Reply::Other('=', body)
            };
            Some((reply, after + n + 2))
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = number();
            if n < 0 {
                return Some((Reply::Nil, after));
            }
            let items = if kind == b'%' { 2 * n } else { n } as usize;
            let mut pos = after;
            let mut values = Vec::with_capacity(items);
            for _ in 0..items {
                let (value, used) = parse_reply(&buf[pos..])?;
                values.push(value);
                pos += used;
            }
            let reply = if kind == b'%' {
                let mut pairs = Vec::new();
                let mut it = values.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Reply::Map(pairs)
            } else {
                Reply::Array(values)
            };
            Some((reply, pos))
        }
        other => panic!(
            "unexpected reply type byte {:?} in {:?}",
            other as char,
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        ),
    }
}

/// Why a read stopped without a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing complete arrived in time.
    TimedOut,
}

/// A raw TCP connection with a reply reader.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects (panics on failure).
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Wraps a stream connected elsewhere.
    pub fn from_stream(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all of `bytes` (panics on failure).
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send {} bytes: {e}", bytes.len()));
    }

    /// Sends one multibulk command.
    pub fn send_cmd(&mut self, args: &[&[u8]]) {
        self.send(&encode(args));
    }

    /// Sends one multibulk command and reads its reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        self.send_cmd(args);
        self.read_reply()
    }

    /// `AUTH user password`, expecting `+OK`.
    pub fn auth(&mut self, user: &str, password: &str) {
        let reply = self.cmd(&[b"AUTH", user.as_bytes(), password.as_bytes()]);
        assert_eq!(reply, Reply::ok(), "AUTH {user}");
    }

    /// The next reply; panics if the connection closes or nothing arrives within
    /// [`REPLY_TIMEOUT`].
    pub fn read_reply(&mut self) -> Reply {
        self.read_frame().0
    }

    /// The next reply as the wire carried it, every byte (differential tests compare these);
    /// panics as [`RawConn::read_reply`] does.
    pub fn read_raw_reply(&mut self) -> Vec<u8> {
        self.read_frame().1
    }

    fn read_frame(&mut self) -> (Reply, Vec<u8>) {
        match self.try_read_frame(REPLY_TIMEOUT) {
            Ok(frame) => frame,
            Err(end) => panic!(
                "no reply ({end:?}); {} bytes buffered: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
            ),
        }
    }

    /// Sends one command and returns its reply's bytes as they came, for byte-exact checks.
    pub fn cmd_bytes(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send_cmd(args);
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some((_, used)) = parse_reply(&self.buf) {
                return self.buf.drain(..used).collect();
            }
            match self.fill(deadline) {
                Ok(n) if n > 0 => {}
                other => panic!("no reply: {other:?}"),
            }
        }
    }

    /// The next reply, or why none came within `timeout`.
    pub fn try_read_reply(&mut self, timeout: Duration) -> Result<Reply, ReadEnd> {
        self.try_read_frame(timeout).map(|(reply, _)| reply)
    }

    /// The next reply, parsed and as its bytes, or why none came within `timeout`.
    fn try_read_frame(&mut self, timeout: Duration) -> Result<(Reply, Vec<u8>), ReadEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf) {
                return Ok((reply, self.buf.drain(..used).collect()));
            }
            match self.fill(deadline) {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(_) => {}
                Err(end) => return Err(end),
            }
        }
    }

    /// Reads once into the buffer, waiting until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ReadEnd> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::TimedOut);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Ok(0)
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Every remaining byte until the server closes the connection; panics if it is still open
    /// after `timeout`.
    pub fn read_to_eof(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(0) => return std::mem::take(&mut self.buf),
                Ok(_) => {}
                Err(_) => panic!(
                    "the server did not close the connection within {timeout:?}; got {:?}",
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(300)])
                ),
            }
        }
    }

    /// Reads the remaining replies until the server closes the connection.
    pub fn replies_to_eof(&mut self, timeout: Duration) -> Vec<Reply> {
        let mut bytes = self.read_to_eof(timeout);
        let mut replies = Vec::new();
        while let Some((reply, used)) = parse_reply(&bytes) {
            replies.push(reply);
            bytes.drain(..used);
        }
        assert!(
            bytes.is_empty(),
            "a partial reply before EOF: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        replies
    }

    /// True if anything (a byte, or EOF) has arrived that was not read yet; does not wait.
    pub fn has_data_now(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.stream.set_nonblocking(true).unwrap();
        let arrived = match self.stream.peek(&mut [0u8; 1]) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(_) => true,
        };
        self.stream.set_nonblocking(false).unwrap();
        arrived
    }

    /// True if the server closes the connection within `timeout` (bytes received meanwhile are
    /// kept for the next read).
    pub fn closes_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Asserts that an already authenticated session still answers PING and ECHO (the "another
/// session is unaffected" check of every bad-input test).
pub fn assert_alive(conn: &mut redis::Connection) {
    let pong: String = redis::cmd("PING")
        .query(conn)
        .expect("the other session still answers PING");
    assert_eq!(pong, "PONG");
    let echo: Vec<u8> = redis::cmd("ECHO")
        .arg(&b"still here\0"[..])
        .query(conn)
        .expect("the other session still answers ECHO");
    assert_eq!(echo, b"still here\0");
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (children inherit it); returns
/// the new soft limit. The `unsafe` syscall lives in the ring crate, with the rest.
pub fn raise_nofile_limit() -> u64 {
    ringport_ring::raise_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE")
}

/// `INFO section` on an authenticated raw connection, as text.
pub fn info(conn: &mut RawConn, section: &str) -> String {
    match conn.cmd(&[b"INFO", section.as_bytes()]) {
        Reply::Bulk(bytes) => String::from_utf8(bytes).expect("INFO is text"),
        other => panic!("INFO {section}: {other:?}"),
    }
}

/// A `name=value` field of `INFO rings`, summed over the rings.
pub fn ring_field_sum(info: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    info.split([',', ':', '\r', '\n'])
        .filter_map(|field| field.strip_prefix(key.as_str()))
        .map(|n| n.parse::<u64>().expect("a number"))
        .sum()
}

/// The descriptors a process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

/// The server's TCP connections on `port` in CLOSE-WAIT (the peer closed, the server has not),
/// from /proc/net/tcp: what a descriptor count that does not come back is made of.
pub fn close_wait(port: u16) -> usize {
    const CLOSE_WAIT: &str = "08";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&CLOSE_WAIT)
        })
        .count()
}
