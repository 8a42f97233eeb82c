//! Redis as the oracle: a real `redis-server` next to a ringport server, the same commands sent
//! to both, the raw reply bytes compared.
//!
//! Include it with `#[path = "common/oracle.rs"] mod oracle;` (after `mod common;`).
//!
//! - [`RedisServer::start`]: Debian's `redis-server` (`REDIS_SERVER` to use another) on a free
//!   loopback port, no persistence (`--save '' --appendonly no`), its working directory a temp
//!   dir; killed (by its PID) and waited for on drop. Missing is a loud failure ("run
//!   ci/ensure-clients"), never a skip.
//! - [`Diff`]: one connection to each, in lockstep. [`Diff::same`] sends one command to both and
//!   panics, naming the command and both replies, unless the bytes are identical; RESP3 is a
//!   `HELLO 3` on both sides first (their HELLO maps differ by design: server version, id).
//!
//! Each test starts its own redis-server and its own ringport server, so tests never share keys.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{RawConn, Reply, Server, PASSWORD, USER};

/// How long redis-server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A throwaway redis-server, killed on drop.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
    /// Its `--dir`; removed after the server is gone (field order: `child` is killed in `drop`
    /// before the fields drop).
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts redis-server and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A redis-server with more configuration on its command line (`["--name", "value"]`).
    pub fn start_with(config: &[&str]) -> RedisServer {
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        // The port is free when chosen and redis-server binds it a moment later; another
        // process may take it meanwhile, so a start that fails tries a new port.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for redis-server");
            let port = free_port();
            let child = Command::new(&program)
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "no", "--daemonize", "no"])
                // For DEBUG SET-ACTIVE-EXPIRE: a test that depends on when a key expires turns
                // redis-server's background expiry off.
                .args(["--enable-debug-command", "yes"])
                .args(config)
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|error| {
                    panic!("start {program}: {error} (run ci/ensure-clients to install it)")
                });
            let mut server = RedisServer {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _dir: dir,
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("{program} did not start on any of five free ports");
    }

    /// True once our redis-server answers on its port; false if it exited (the port was taken).
    /// Another process may hold the port for a while (it was free when chosen), so only an
    /// answer naming our process counts.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        let ours = format!("process_id:{}\r\n", self.child.id());
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(stream) = TcpStream::connect(self.addr) {
                let mut conn = RawConn::from_stream(stream);
                conn.send_cmd(&[b"INFO", b"server"]);
                if let Ok(Reply::Bulk(info)) = conn.try_read_reply(Duration::from_secs(2)) {
                    if String::from_utf8_lossy(&info).contains(&ours) {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on {} did not answer within {START_TIMEOUT:?}",
            self.addr
        );
    }

    /// A raw connection (no AUTH: the test server has no password).
    pub fn raw(&self) -> RawConn {
        RawConn::connect(self.addr)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Bytes as a test log shows them: printable ASCII as is, the rest escaped (`\r\n` included).
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// One connection to redis-server and one, authenticated, to ringport, driven in lockstep.
pub struct Diff {
    pub redis: RawConn,
    pub ringport: RawConn,
}

impl Diff {
    /// RESP2 connections: redis-server as is, ringport after `AUTH alice secret`.
    pub fn new(redis: &RedisServer, ringport: &Server) -> Diff {
        Diff::as_user(redis, ringport, USER, PASSWORD)
    }

    /// RESP2 connections, ringport's as `user`.
    pub fn as_user(redis: &RedisServer, ringport: &Server, user: &str, password: &str) -> Diff {
        let mut ours = ringport.raw();
        ours.auth(user, password);
        Diff {
            redis: redis.raw(),
            ringport: ours,
        }
    }

    /// RESP3 connections: `HELLO 3` to redis-server, `HELLO 3 AUTH alice secret` to ringport.
    /// Only the protocol each HELLO chose is compared: the rest of the map differs by design.
    pub fn resp3(redis: &RedisServer, ringport: &Server) -> Diff {
        let mut diff = Diff {
            redis: redis.raw(),
            ringport: ringport.raw(),
        };
        let theirs = diff.redis.cmd(&[b"HELLO", b"3"]);
        let ours = diff.ringport.cmd(&[
            b"HELLO",
            b"3",
            b"AUTH",
            USER.as_bytes(),
            PASSWORD.as_bytes(),
        ]);
        for (side, reply) in [("redis-server", theirs), ("ringport", ours)] {
            let Reply::Map(fields) = reply else {
                panic!("{side} answered HELLO 3 with {reply:?}")
            };
            assert!(
                fields.contains(&(Reply::bulk("proto"), Reply::Int(3))),
                "{side}'s HELLO 3 map: {fields:?}"
            );
        }
        diff
    }

    /// Sends `args` to both and returns the reply, panicking unless both sent the same bytes.
    pub fn same(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.redis.send_cmd(args);
        let theirs = self.redis.read_raw_reply();
        self.ringport.send_cmd(args);
        let ours = self.ringport.read_raw_reply();
        assert!(
            theirs == ours,
            "replies differ for {}\n  redis-server: {}\n  ringport:     {}",
            show_command(args),
            show(&theirs),
            show(&ours)
        );
        ours
    }

    /// [`Diff::same`] for a command written as space-separated words (no spaces inside an
    /// argument): `diff.cmd("SET k v PX 100")`.
    pub fn cmd(&mut self, line: &str) -> Vec<u8> {
        let words: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        self.same(&words)
    }

    /// [`Diff::cmd`] for each line, in order.
    pub fn all(&mut self, lines: &[&str]) {
        for line in lines {
            self.cmd(line);
        }
    }

    /// Sends `args` to both and returns both replies, parsed, without comparing them: for
    /// replies whose order or cursor values legitimately differ (the caller compares what
    /// must agree).
    pub fn both(&mut self, args: &[&[u8]]) -> (Reply, Reply) {
        (self.redis.cmd(args), self.ringport.cmd(args))
    }
}

/// A command as a test log shows it: its arguments, escaped, space-separated.
pub fn show_command(args: &[&[u8]]) -> String {
    args.iter()
        .map(|arg| show(arg))
        .collect::<Vec<_>>()
        .join(" ")
}
