//! A server without sockets, for tests and fuzzing: the real `Shared` (pools, embedded store,
//! limits) and the real session handler, driven one session at a time through
//! [`ringport_ring::harness::Harness`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ringport_ring::harness::Harness;

use crate::commands::{self, api::Handlers};
use crate::config::{Cli, Command, ServeArgs};
use crate::msg::Msg;
use crate::pool::ComputePool;
use crate::session::RingHandler;
use crate::shared::Shared;
use crate::store::{self, StoreSpec, UserRecord};
use crate::storepool::StorePool;
use crate::userdir::UserDirectory;

/// One server's shared state; each session gets a mailbox of its own (there is no ring, so
/// ring-wide queries such as CLIENT LIST see no sessions).
pub struct TestServer {
    /// The shared state, as a ring would see it.
    pub shared: Arc<Shared>,
    handlers: Arc<Handlers>,
}

impl TestServer {
    /// A server on an embedded store in `data` with user `alice` (password `secret`) and the
    /// given extra `serve` flags (e.g. `["--auth-timeout", "1s"]`).
    pub fn start(data: &Path, flags: &[&str]) -> TestServer {
        let argv = ["ringport", "serve"]
            .into_iter()
            .chain(flags.iter().copied());
        let Command::Serve(args) = Cli::parse_from(argv).command else {
            unreachable!("parsed as serve")
        };
        let args: ServeArgs = *args;
        let spec = StoreSpec::Embedded {
            dir: data.to_path_buf(),
            cache_size: args.embedded_cache_size,
        };
        let backend = store::open(&spec).expect("open the embedded store");
        let users = backend
            .connect()
            .and_then(|mut c| {
                c.put_user(&UserRecord {
                    name: "alice".into(),
                    hash: crate::auth::hash_password(b"secret"),
                    disabled: false,
                    admin: false,
                })?;
                c.users()
            })
            .expect("create alice");
        let users = Arc::new(UserDirectory::new(users));
        let compute = ComputePool::start(
            "compute",
            1,
            args.compute_queue,
            ringport_ring::ThreadPriority::Normal,
        );
        let auth = ComputePool::start(
            "auth",
            1,
            args.compute_queue,
            ringport_ring::ThreadPriority::Normal,
        );
        let store_pool = StorePool::start(
            backend,
            2,
            args.store_queue,
            ringport_ring::ThreadPriority::Normal,
        );
        let (table, handlers) = commands::api::build(commands::builtins()).expect("the built-ins");
        let shared = Arc::new(Shared::new(
            &args,
            compute,
            auth,
            store_pool,
            users,
            Vec::new(),
            None,
            1,
            "127.0.0.1:6380".parse().expect("an address"),
            Arc::new(table),
        ));
        TestServer {
            shared,
            handlers: Arc::new(handlers),
        }
    }

    /// Opens a new session.
    pub fn session(&self) -> Harness<RingHandler> {
        let (sender, receiver) = ringport_ring::mailbox::<Msg>().expect("mailbox");
        let handler = RingHandler::new(self.shared.clone(), self.handlers.clone(), sender);
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        Harness::new(handler, receiver, Some(peer))
    }
}

/// Feeds `input`, waits up to `timeout` for the session to stop waiting on pools, and returns
/// everything it replied.
pub fn exchange(session: &mut Harness<RingHandler>, input: &[u8], timeout: Duration) -> Vec<u8> {
    session.feed(input);
    // Done once nothing waits on a pool: input left in `inbuf` then is a partial command
    // waiting for more bytes, which no amount of waiting here completes.
    session.pump_until(timeout, |h| {
        h.conn()
            .is_none_or(|c| c.state != crate::conn::State::Waiting)
    });
    session.take_output()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{parse_value, Value};

    fn replies(mut bytes: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some((v, n)) = parse_value(bytes).expect("valid RESP") {
            out.push(v);
            bytes = &bytes[n..];
        }
        assert!(bytes.is_empty(), "trailing partial reply");
        out
    }

    #[test]
    fn pipelined_commands_behind_offloaded_ones_reply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path(), &[]);
        let mut s = server.session();
        let t = Duration::from_secs(10);
        let out = exchange(
            &mut s,
            b"PING\r\nAUTH alice secret\r\nPING\r\nHASH 2 x\r\nECHO after\r\nSET k v\r\nGET k\r\nPING\r\n",
            t,
        );
        let r = replies(&out);
        assert_eq!(
            r[0],
            Value::Error(b"NOAUTH Authentication required.".to_vec())
        );
        assert_eq!(r[1], Value::Simple(b"OK".to_vec()));
        assert_eq!(r[2], Value::Simple(b"PONG".to_vec()));
        assert_eq!(
            r[3],
            Value::Bulk(crate::commands::hash_rounds(b"x", 2).into_bytes())
        );
        assert_eq!(r[4], Value::Bulk(b"after".to_vec()));
        assert_eq!(r[5], Value::Simple(b"OK".to_vec()));
        assert_eq!(r[6], Value::Bulk(b"v".to_vec()));
        assert_eq!(r[7], Value::Simple(b"PONG".to_vec()));
        assert_eq!(r.len(), 8);
    }

    #[test]
    fn the_auth_deadline_closes_an_unauthenticated_session() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path(), &["--auth-timeout", "100ms"]);
        let mut s = server.session();
        let deadline = s.deadline().expect("armed at open");
        // Fired early, it only looks again later.
        s.fire_deadline();
        assert!(s.closed().is_none() && !s.is_closing());
        std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
        s.fire_deadline();
        let out = s.take_output();
        assert!(String::from_utf8_lossy(&out).contains("authentication timeout"));
        assert!(s.closed().is_some());
    }

    /// The fuzz target's settings: limits before AUTH below those after it.
    const FUZZ_FLAGS: &[&str] = &[
        "--proto-max-bulk-len",
        "4096",
        "--preauth-max-args",
        "5",
        "--preauth-max-bulk-len",
        "256",
    ];

    #[test]
    fn the_limits_before_auth_are_in_effect_until_auth() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path(), FUZZ_FLAGS);
        let t = Duration::from_secs(10);
        let big = format!("*2\r\n$4\r\nECHO\r\n$300\r\n{}\r\n", "x".repeat(300));

        let mut s = server.session();
        let out = exchange(&mut s, big.as_bytes(), t);
        assert_eq!(out, b"-ERR Protocol error: unauthenticated bulk length\r\n");
        assert!(s.is_closing());

        let mut s = server.session();
        let out = exchange(&mut s, b"HELLO 3 AUTH alice secret SETNAME\r\n", t);
        assert_eq!(
            out,
            b"-ERR Protocol error: unauthenticated inline request\r\n"
        );

        let mut s = server.session();
        let out = exchange(&mut s, b"HELLO 2 AUTH alice secret\r\n", t);
        assert!(out.starts_with(b"*"), "{}", String::from_utf8_lossy(&out));
        let out = exchange(&mut s, big.as_bytes(), t);
        assert_eq!(out, format!("$300\r\n{}\r\n", "x".repeat(300)).into_bytes());
    }

    #[test]
    fn a_protocol_error_replies_then_closes() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path(), &[]);
        let mut s = server.session();
        let out = exchange(&mut s, b"*1\r\n$x\r\n", Duration::from_secs(1));
        assert!(String::from_utf8_lossy(&out).starts_with("-ERR Protocol error"));
        assert!(s.closed().is_some());
    }
}
