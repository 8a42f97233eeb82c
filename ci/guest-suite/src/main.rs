//! `ringport-guest-suite`: the protocol suite that `ci/kernel-matrix` runs against `ringport
//! serve` inside each guest kernel, over loopback.
//!
//! Black-box and std only, so it links static and needs nothing in the guest but itself. It checks
//! the AUTH gate, pipelined PING/ECHO/HASH replies in order (HASH against its own SHA-256), a large
//! ECHO, GET/SET/INCR on the embedded store, one bad input of each kind (NOAUTH, WRONGPASS, unknown
//! command, malformed RESP), a few thousand sessions held open at once, and that an idle server
//! does not spin.
//!
//! Output, one line each, for the host to read off the serial console:
//! - `suite: ok NAME` or `suite: FAIL NAME: WHY` per check;
//! - `suite: info backend=B accept_path=A recv_path=R setup_flags=F incremental_buffers=I
//!   busy_tick=T`, from `INFO server`: the paths the running server says it took;
//! - `suite: idle enters_per_s=X sessions=N`: how often the idle server's rings entered the
//!   kernel while N authenticated sessions sat idle (a ring that spins shows here);
//! - `suite: PASS N/N` or `suite: FAIL K/N failed`. The exit status is 0 only on PASS.
//!
//! Every socket has a read and write timeout and every loop is bounded by `--sessions`, so the
//! suite ends by itself even when the server hangs.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

// The same request encoder as the server's and the bench's: a std-only file, so the suite
// stays std-only and links static.
#[path = "../../../src/resp/request.rs"]
mod request;

use request::encode_command;

const USAGE: &str =
    "usage: ringport-guest-suite [--addr 127.0.0.1:6380] --user USER --password PASS \
[--sessions 2000] [--timeout-s 30]";

/// What the suite runs against.
struct Options {
    addr: SocketAddr,
    user: String,
    password: String,
    /// Sessions held open at once by the `sessions` check.
    sessions: usize,
    /// Connect, read and write timeout of every socket.
    timeout: Duration,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        addr: "127.0.0.1:6380".parse().expect("literal address"),
        user: String::new(),
        password: String::new(),
        sessions: 2000,
        timeout: Duration::from_secs(30),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = args
            .next()
            .ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--addr" => options.addr = value.parse().map_err(|e| bad(&e))?,
            "--user" => options.user = value,
            "--password" => options.password = value,
            "--sessions" => options.sessions = value.parse().map_err(|e| bad(&e))?,
            "--timeout-s" => {
                options.timeout = Duration::from_secs(value.parse().map_err(|e| bad(&e))?)
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if options.user.is_empty() || options.password.is_empty() {
        return Err(format!("--user and --password are required\n{USAGE}"));
    }
    Ok(options)
}

/// One RESP2 reply as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array.
    Array(Option<Vec<Reply>>),
}

fn simple(text: &str) -> Reply {
    Reply::Simple(text.into())
}

fn bulk(bytes: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(Some(bytes.as_ref().to_vec()))
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one line without its CRLF.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed mid-reply after {line:?}"),
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|e| protocol_error(format!("line not UTF-8: {e}")))
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    let length = || -> io::Result<i64> {
        rest.parse()
            .map_err(|_| protocol_error(format!("bad length in {line:?}")))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Integer(length()?),
        "$" => match usize::try_from(length()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        "*" => match usize::try_from(length()?) {
            Err(_) => Reply::Array(None),
            Ok(count) => Reply::Array(Some(
                (0..count)
                    .map(|_| read_reply(reader))
                    .collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(protocol_error(format!("unknown reply type in {line:?}"))),
    })
}

/// One client connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(options: &Options) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&options.addr, options.timeout)?;
        stream.set_read_timeout(Some(options.timeout))?;
        stream.set_write_timeout(Some(options.timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::with_capacity(4096, stream.try_clone()?),
            writer: stream,
        })
    }

    /// A connection that has passed AUTH.
    fn authenticated(options: &Options) -> Result<Conn, String> {
        let mut conn = Conn::open(options).map_err(|e| format!("connect: {e}"))?;
        let reply = conn.call(&[
            b"AUTH",
            options.user.as_bytes(),
            options.password.as_bytes(),
        ]);
        expect("AUTH", reply, &simple("OK"))?;
        Ok(conn)
    }

    /// Sends every command in one write.
    fn send(&mut self, commands: &[Vec<&[u8]>]) -> io::Result<()> {
        let mut out = Vec::new();
        for command in commands {
            encode_command(&mut out, command);
        }
        self.writer.write_all(&out)
    }

    fn read(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader)
    }

    fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(&[args.to_vec()])?;
        self.read()
    }

    /// True once the server has closed the connection (a read returns 0 bytes).
    fn closed_by_server(&mut self) -> io::Result<bool> {
        let mut byte = [0u8; 1];
        Ok(self.reader.read(&mut byte)? == 0)
    }
}

/// `Ok` when the reply is the one wanted, else a message naming both.
fn expect(what: &str, got: io::Result<Reply>, want: &Reply) -> Result<(), String> {
    match got {
        Ok(reply) if reply == *want => Ok(()),
        Ok(reply) => Err(format!("{what}: got {}, want {}", show(&reply), show(want))),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// `Ok` when the reply is an error starting with `prefix`.
fn expect_error(what: &str, got: io::Result<Reply>, prefix: &str) -> Result<(), String> {
    match got {
        Ok(Reply::Error(text)) if text.starts_with(prefix) => Ok(()),
        Ok(reply) => Err(format!("{what}: got {}, want -{prefix}...", show(&reply))),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// A reply for a message, long bulks cut short.
fn show(reply: &Reply) -> String {
    match reply {
        Reply::Bulk(Some(data)) if data.len() > 80 => {
            format!(
                "${} {:?}...",
                data.len(),
                String::from_utf8_lossy(&data[..80])
            )
        }
        Reply::Bulk(Some(data)) => format!("${:?}", String::from_utf8_lossy(data)),
        other => format!("{other:?}"),
    }
}

/// Before AUTH every command but AUTH/HELLO/QUIT is refused, and the session stays open.
fn check_noauth(options: &Options) -> Result<(), String> {
    let mut conn = Conn::open(options).map_err(|e| format!("connect: {e}"))?;
    expect_error(
        "GET before AUTH",
        conn.call(&[b"GET", b"key"]),
        "NOAUTH Authentication required",
    )?;
    expect_error(
        "PING before AUTH",
        conn.call(&[b"PING"]),
        "NOAUTH Authentication required",
    )
}

/// A wrong password is refused; the right one on the same session is then accepted.
fn check_wrong_password(options: &Options) -> Result<(), String> {
    let mut conn = Conn::open(options).map_err(|e| format!("connect: {e}"))?;
    let user = options.user.as_bytes();
    expect_error(
        "AUTH with a wrong password",
        conn.call(&[b"AUTH", user, b"not-the-password"]),
        "WRONGPASS",
    )?;
    expect(
        "AUTH after WRONGPASS",
        conn.call(&[b"AUTH", user, options.password.as_bytes()]),
        &simple("OK"),
    )?;
    expect("PING", conn.call(&[b"PING"]), &simple("PONG"))
}

/// Pipelined PING, ECHO and HASH in one write: replies come back in request order, though HASH
/// runs on the compute pool and may finish out of order.
fn check_pipeline(options: &Options) -> Result<(), String> {
    let mut conn = Conn::authenticated(options)?;
    let texts: Vec<(String, String, String)> = (0..40)
        .map(|i| {
            (
                format!("echo-{i}"),
                (1 + i % 4).to_string(),
                format!("data-{i}"),
            )
        })
        .collect();
    let mut commands = Vec::new();
    let mut want = Vec::new();
    for (echo, rounds, data) in &texts {
        commands.push(vec![b"PING".as_slice()]);
        want.push(simple("PONG"));
        commands.push(vec![b"ECHO".as_slice(), echo.as_bytes()]);
        want.push(bulk(echo));
        commands.push(vec![b"HASH".as_slice(), rounds.as_bytes(), data.as_bytes()]);
        want.push(bulk(hash_rounds(data.as_bytes(), rounds.parse().unwrap())));
    }
    conn.send(&commands).map_err(|e| format!("send: {e}"))?;
    for (index, want) in want.iter().enumerate() {
        expect(&format!("reply {index}"), conn.read(), want)?;
    }
    Ok(())
}

/// A 300 KB argument and reply: spans many receive buffers and partial sends.
fn check_large_echo(options: &Options) -> Result<(), String> {
    let mut conn = Conn::authenticated(options)?;
    let payload: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    expect(
        "ECHO 300 KB",
        conn.call(&[b"ECHO", &payload]),
        &Reply::Bulk(Some(payload.clone())),
    )?;
    expect("PING after", conn.call(&[b"PING"]), &simple("PONG"))
}

/// The embedded store answers through the store pool.
fn check_get_set(options: &Options) -> Result<(), String> {
    let mut conn = Conn::authenticated(options)?;
    let key = b"guest-suite:key".as_slice();
    let counter = b"guest-suite:counter".as_slice();
    expect(
        "GET missing",
        conn.call(&[b"GET", b"guest-suite:missing"]),
        &Reply::Bulk(None),
    )?;
    expect("SET", conn.call(&[b"SET", key, b"value-1"]), &simple("OK"))?;
    expect("GET", conn.call(&[b"GET", key]), &bulk("value-1"))?;
    expect("DEL", conn.call(&[b"DEL", counter]), &Reply::Integer(0))?;
    expect("INCR", conn.call(&[b"INCR", counter]), &Reply::Integer(1))?;
    expect("INCR", conn.call(&[b"INCR", counter]), &Reply::Integer(2))?;
    // A fresh session sees what the first one wrote.
    let mut other = Conn::authenticated(options)?;
    expect(
        "GET from another session",
        other.call(&[b"GET", key]),
        &bulk("value-1"),
    )
}

/// An unknown command is refused and the session goes on.
fn check_unknown_command(options: &Options) -> Result<(), String> {
    let mut conn = Conn::authenticated(options)?;
    expect_error(
        "unknown command",
        conn.call(&[b"NOSUCHCOMMAND", b"arg"]),
        "ERR unknown command",
    )?;
    expect("PING after", conn.call(&[b"PING"]), &simple("PONG"))
}

/// A malformed multibulk gets a protocol error, then the server closes the session.
fn check_malformed_resp(options: &Options) -> Result<(), String> {
    let mut conn = Conn::authenticated(options)?;
    conn.writer
        .write_all(b"*abc\r\n")
        .map_err(|e| format!("send: {e}"))?;
    expect_error("malformed multibulk", conn.read(), "ERR Protocol error")?;
    match conn.closed_by_server() {
        Ok(true) => Ok(()),
        Ok(false) => Err("session still open after a protocol error".into()),
        Err(e) => Err(format!("waiting for the close after a protocol error: {e}")),
    }
}

/// `--sessions` sessions, opened in windows of 64 (AUTH + PING each) and all held open at once:
/// INFO counts them, each answers an ECHO, and the server still serves after they all close.
fn check_sessions(options: &Options) -> Result<(), String> {
    const WINDOW: usize = 64;
    let user = options.user.as_bytes();
    let password = options.password.as_bytes();
    let login = [vec![b"AUTH".as_slice(), user, password], vec![b"PING"]];
    let mut sessions: Vec<Conn> = Vec::with_capacity(options.sessions);
    while sessions.len() < options.sessions {
        let first = sessions.len();
        let last = (first + WINDOW).min(options.sessions);
        for index in first..last {
            let mut conn = Conn::open(options).map_err(|e| format!("session {index}: {e}"))?;
            conn.send(&login)
                .map_err(|e| format!("session {index}: send: {e}"))?;
            sessions.push(conn);
        }
        for (index, conn) in sessions.iter_mut().enumerate().skip(first) {
            expect(&format!("session {index} AUTH"), conn.read(), &simple("OK"))?;
            expect(
                &format!("session {index} PING"),
                conn.read(),
                &simple("PONG"),
            )?;
        }
    }
    let mut control = Conn::authenticated(options)?;
    let clients = info_field(&mut control, "clients", "connected_clients")?;
    match clients.parse::<usize>() {
        Ok(count) if count > options.sessions => {}
        _ => {
            return Err(format!(
                "INFO connected_clients is {clients} with {} sessions open",
                options.sessions + 1
            ))
        }
    }
    for (index, conn) in sessions.iter_mut().enumerate() {
        let text = format!("session-{index}");
        conn.send(&[vec![b"ECHO".as_slice(), text.as_bytes()]])
            .map_err(|e| format!("session {index}: send: {e}"))?;
    }
    for (index, conn) in sessions.iter_mut().enumerate() {
        let text = format!("session-{index}");
        expect(&format!("session {index} ECHO"), conn.read(), &bulk(text))?;
    }
    drop(sessions);
    expect(
        "PING after closing them",
        control.call(&[b"PING"]),
        &simple("PONG"),
    )
}

/// Authenticated sessions held idle by the `idle-wakeups` check.
const IDLE_SESSIONS: usize = 200;
/// How long the `idle-wakeups` check watches the idle server.
const IDLE_WATCH: Duration = Duration::from_secs(5);
/// How long the sessions sit before the watch starts: past the server's default
/// `--auth-timeout` (10 s; the matrix sets none). Each session's auth deadline outlives its AUTH
/// as a stale wheel entry that costs the ring one wake-up when its tick comes; 200 of them
/// coming due inside the watch read 14-19 wake-ups a second under QEMU.
const IDLE_SETTLE: Duration = Duration::from_secs(11);
/// More `io_uring_enter` calls per second than this on an idle server is a spinning ring (a
/// wake-up read that completes with `-EAGAIN` over and over, say), not deadlines coming due: an
/// idle ring with no deadline due sleeps.
const IDLE_ENTERS_PER_S_MAX: f64 = 10.0;

/// The rings' `enters` counters summed, from `INFO rings`.
fn ring_enters(conn: &mut Conn) -> Result<u64, String> {
    let text = match conn.call(&[b"INFO", b"rings"]) {
        Ok(Reply::Bulk(Some(text))) => String::from_utf8_lossy(&text).into_owned(),
        Ok(other) => return Err(format!("INFO rings: got {}", show(&other))),
        Err(e) => return Err(format!("INFO rings: {e}")),
    };
    let counts: Vec<u64> = text
        .lines()
        .filter(|line| line.starts_with("ring"))
        .filter_map(|line| {
            line.split(',')
                .find_map(|field| field.strip_prefix("enters="))
                .and_then(|n| n.trim().parse().ok())
        })
        .collect();
    if counts.is_empty() {
        return Err(format!("INFO rings has no enters= fields: {text:?}"));
    }
    Ok(counts.iter().sum())
}

/// An idle server with idle authenticated sessions wakes its rings only when a deadline is due.
/// Prints `suite: idle enters_per_s=X` (the kernel matrix puts it in its table) and fails when
/// the rings enter the kernel more than [`IDLE_ENTERS_PER_S_MAX`] times a second.
fn check_idle_wakeups(options: &Options) -> Result<(), String> {
    let mut sessions = Vec::with_capacity(IDLE_SESSIONS);
    for index in 0..IDLE_SESSIONS {
        let mut conn = Conn::authenticated(options).map_err(|e| format!("session {index}: {e}"))?;
        expect("PING", conn.call(&[b"PING"]), &simple("PONG"))?;
        sessions.push(conn);
    }
    let mut control = Conn::authenticated(options)?;
    std::thread::sleep(IDLE_SETTLE);
    let before = ring_enters(&mut control)?;
    let started = Instant::now();
    std::thread::sleep(IDLE_WATCH);
    let after = ring_enters(&mut control)?;
    let per_s = after.saturating_sub(before) as f64 / started.elapsed().as_secs_f64();
    println!("suite: idle enters_per_s={per_s:.1} sessions={IDLE_SESSIONS}");
    expect(
        "PING after idling",
        sessions[0].call(&[b"PING"]),
        &simple("PONG"),
    )?;
    if per_s > IDLE_ENTERS_PER_S_MAX {
        return Err(format!(
            "{per_s:.1} io_uring_enter calls per second with {IDLE_SESSIONS} idle sessions (at most {IDLE_ENTERS_PER_S_MAX}): a ring spins"
        ));
    }
    Ok(())
}

/// One `field:value` line of an INFO section.
fn info_field(conn: &mut Conn, section: &str, field: &str) -> Result<String, String> {
    let text = match conn.call(&[b"INFO", section.as_bytes()]) {
        Ok(Reply::Bulk(Some(text))) => String::from_utf8_lossy(&text).into_owned(),
        Ok(other) => return Err(format!("INFO {section}: got {}", show(&other))),
        Err(e) => return Err(format!("INFO {section}: {e}")),
    };
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().to_string())
        .ok_or(format!("INFO {section} has no {field} line"))
}

/// The `suite: info` line: the paths the running server says it took.
fn server_paths(options: &Options) -> Result<String, String> {
    let mut conn = Conn::authenticated(options)?;
    let fields = [
        "backend",
        "accept_path",
        "recv_path",
        "setup_flags",
        "incremental_buffers",
        "busy_tick",
    ];
    let mut parts = Vec::new();
    for field in fields {
        parts.push(format!(
            "{field}={}",
            info_field(&mut conn, "server", field)?
        ));
    }
    Ok(parts.join(" "))
}

/// `HASH rounds data`: SHA-256 over the data, then over the digest, `rounds` times in all.
fn hash_rounds(data: &[u8], rounds: u32) -> String {
    let mut digest = sha256(data);
    for _ in 1..rounds {
        digest = sha256(&digest);
    }
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// SHA-256 (FIPS 180-4), written out so the suite checks HASH against an implementation that
/// is not the server's.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut state: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_be_bytes(bytes.try_into().expect("4 bytes"));
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = state;
        for (k, w) in K.iter().zip(w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let choice = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(choice)
                .wrapping_add(*k)
                .wrapping_add(w);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let majority = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(majority);
            (h, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (word, add) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *word = word.wrapping_add(add);
        }
    }
    let mut digest = [0u8; 32];
    for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

type Check = fn(&Options) -> Result<(), String>;

/// Every check, in the order run. Each opens its own sessions.
const CHECKS: [(&str, Check); 9] = [
    ("noauth", check_noauth),
    ("wrong-password", check_wrong_password),
    ("pipeline-ping-echo-hash", check_pipeline),
    ("large-echo", check_large_echo),
    ("get-set", check_get_set),
    ("unknown-command", check_unknown_command),
    ("malformed-resp", check_malformed_resp),
    ("sessions", check_sessions),
    ("idle-wakeups", check_idle_wakeups),
];

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut failed = 0;
    let mut record = |name: &str, started: Instant, result: Result<(), String>| {
        let elapsed_ms = started.elapsed().as_millis();
        match result {
            Ok(()) => println!("suite: ok {name} ({elapsed_ms} ms)"),
            Err(why) => {
                failed += 1;
                println!("suite: FAIL {name}: {why} ({elapsed_ms} ms)");
            }
        }
    };
    let started = Instant::now();
    let auth = Conn::authenticated(&options).map(drop);
    record("auth", started, auth);
    let started = Instant::now();
    match server_paths(&options) {
        Ok(paths) => {
            println!("suite: info {paths}");
            record("info-server", started, Ok(()));
        }
        Err(why) => record("info-server", started, Err(why)),
    }
    for (name, check) in CHECKS {
        let started = Instant::now();
        record(name, started, check(&options));
    }
    let total = CHECKS.len() + 2;
    if failed == 0 {
        println!("suite: PASS {total}/{total}");
        ExitCode::SUCCESS
    } else {
        println!("suite: FAIL {failed}/{total} failed");
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(digest: [u8; 32]) -> String {
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn sha256_matches_the_fips_vectors() {
        assert_eq!(
            hex(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn hash_rounds_rehashes_the_raw_digest() {
        assert_eq!(hash_rounds(b"abc", 1), hex(sha256(b"abc")));
        assert_eq!(hash_rounds(b"abc", 2), hex(sha256(&sha256(b"abc"))));
    }

    #[test]
    fn reads_every_reply_kind() {
        let wire = b"+OK\r\n-ERR no\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n$0\r\n\r\n*-1\r\n";
        let mut reader = &wire[..];
        let replies: Vec<Reply> = (0..7).map(|_| read_reply(&mut reader).unwrap()).collect();
        assert_eq!(
            replies,
            vec![
                simple("OK"),
                Reply::Error("ERR no".into()),
                Reply::Integer(42),
                bulk("abc"),
                Reply::Bulk(None),
                Reply::Array(Some(vec![Reply::Integer(1), bulk("")])),
                Reply::Array(None),
            ]
        );
        assert!(read_reply(&mut &b"+trunc"[..]).is_err());
    }
}
