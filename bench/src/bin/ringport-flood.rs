//! `ringport-flood`: opens TCP connections to a RESP server as fast as it can, for hostile-load
//! tests (issue 8, floods). Not a benchmark: it measures nothing but what happened to its own
//! connections.
//!
//! Each of `--threads` workers claims connection numbers from one shared counter until
//! `--connections` are used up or `--duration` has passed (both bound every run), and for each:
//!
//! 1. binds a socket to the next `--sources` address (port 0, `SO_REUSEADDR`), so one run can
//!    spread over 127.0.0.2, 127.0.0.3, ... and not run out of loopback ports (about 28,000 per
//!    source address), then connects with `--connect-timeout`;
//! 2. sends its payload (`--payload`): nothing; a partial inline AUTH line (no newline, so the
//!    server waits for the rest); a full AUTH that is not waited for; or `--auths` AUTH
//!    commands whose replies are read and counted (`+OK`, `-WRONGPASS`, the per-address limit's
//!    `-ERR too many failed authentication attempts for this user`, anything else);
//! 3. closes it with a FIN or with a reset (`SO_LINGER` 0, which leaves no TIME_WAIT behind),
//!    at once or, with `--hold N`, once the worker holds more than N open connections.
//!
//! Failures are counted, never fatal: refused and timed-out connects (a full listen backlog),
//! exhausted local ports, descriptors the tool itself ran out of. It raises its own
//! RLIMIT_NOFILE to the hard limit first.
//!
//! At the end it prints one line on stdout, `ringport-flood key=value ...` (fields in
//! [`Totals::line`]), for people and for tests to parse. Exit status: 0 when any connection was
//! made, 1 when none was (the server is not there), 2 for a usage error.
//!
//! ```sh
//! ringport-flood --target 127.0.0.1:6380 --threads 4 --connections 20000 --duration 10s \
//!     --sources 127.0.0.2-9 --payload mix --user alice --password secret --hold 200
//! ```

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[path = "../../../src/resp/request.rs"]
mod request;

const USAGE: &str = "\
usage: ringport-flood --target HOST:PORT [options]

  --target HOST:PORT     server to flood (required)
  --threads N            worker threads (default 4)
  --connections N        connections to open in all, over every thread (default 10000)
  --duration D           stop after this long, connections left or not (default 10s; 500ms, 2m)
  --sources LIST         bind each connection to these source addresses in turn before
                         connecting: A.B.C.D, A.B.C.D-E (last octet range), comma-separated
                         (default: the kernel picks)
  --payload KIND         what each connection sends before it closes (default none):
                           none          nothing
                           partial-auth  an AUTH line without its newline
                           auth-noread   a full AUTH, closed without reading the reply
                           auth          --auths full AUTHs, replies read and counted
                           mix           the four in turn
  --user U               user for AUTH (default alice)
  --password P           password for AUTH (default: a wrong one, \"flood\")
  --auths N              AUTH commands per connection for `auth` (default 1)
  --hold N               open connections each thread keeps before closing the oldest (default 0)
  --close fin|rst|mix    close with a FIN, a reset (SO_LINGER 0), or each in turn (default mix)
  --connect-timeout D    per connect (default 2s)
  --reply-timeout D      per AUTH reply (default 5s)

Prints one line at the end: ringport-flood attempted=N connected=N ... elapsed_ms=N.
Exit status 0 when any connection was made, 1 when none was, 2 for a usage error.";

/// What a connection sends before it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// Connect and close.
    Nothing,
    /// `AUTH user <half the password>` with no newline: the server waits for the rest.
    PartialAuth,
    /// A full AUTH, then close without reading the reply (the reply meets a closed socket).
    AuthNoRead,
    /// `--auths` AUTH commands, pipelined; every reply is read and classified.
    Auth,
    /// The four above in turn, by connection number.
    Mix,
}

impl Payload {
    fn parse(text: &str) -> Option<Payload> {
        Some(match text {
            "none" => Payload::Nothing,
            "partial-auth" => Payload::PartialAuth,
            "auth-noread" => Payload::AuthNoRead,
            "auth" => Payload::Auth,
            "mix" => Payload::Mix,
            _ => return None,
        })
    }

    /// The concrete payload of connection number `index`.
    fn for_connection(self, index: u64) -> Payload {
        match self {
            Payload::Mix => [
                Payload::Nothing,
                Payload::PartialAuth,
                Payload::AuthNoRead,
                Payload::Auth,
            ][(index % 4) as usize],
            other => other,
        }
    }
}

/// How a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// An orderly close (FIN); this side keeps the port in TIME_WAIT.
    Fin,
    /// `SO_LINGER` 0: the close sends a reset and leaves no TIME_WAIT.
    Reset,
    /// FIN and reset in turn, by connection number.
    Mix,
}

impl Close {
    fn parse(text: &str) -> Option<Close> {
        Some(match text {
            "fin" => Close::Fin,
            "rst" => Close::Reset,
            "mix" => Close::Mix,
            _ => return None,
        })
    }

    fn resets(self, index: u64) -> bool {
        match self {
            Close::Fin => false,
            Close::Reset => true,
            Close::Mix => index % 2 == 1,
        }
    }
}

/// The run, as asked for on the command line.
#[derive(Debug)]
struct Options {
    target: SocketAddr,
    threads: usize,
    connections: u64,
    duration: Duration,
    sources: Vec<Ipv4Addr>,
    payload: Payload,
    user: String,
    password: String,
    auths: usize,
    hold: usize,
    close: Close,
    connect_timeout: Duration,
    reply_timeout: Duration,
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// `A.B.C.D`, `A.B.C.D-E` (last octet from D to E), comma-separated.
fn parse_sources(text: &str) -> Option<Vec<Ipv4Addr>> {
    let mut sources = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            None => sources.push(part.parse().ok()?),
            Some((first, last)) => {
                let first: Ipv4Addr = first.parse().ok()?;
                let last: u8 = last.parse().ok()?;
                let [a, b, c, d] = first.octets();
                if last < d {
                    return None;
                }
                sources.extend((d..=last).map(|octet| Ipv4Addr::new(a, b, c, octet)));
            }
        }
    }
    (!sources.is_empty()).then_some(sources)
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut target = None;
    let mut options = Options {
        target: SocketAddr::from(([127, 0, 0, 1], 6380)),
        threads: 4,
        connections: 10_000,
        duration: Duration::from_secs(10),
        sources: Vec::new(),
        payload: Payload::Nothing,
        user: "alice".into(),
        password: "flood".into(),
        auths: 1,
        hold: 0,
        close: Close::Mix,
        connect_timeout: Duration::from_secs(2),
        reply_timeout: Duration::from_secs(5),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value for {flag}: {value:?}");
        match flag.as_str() {
            "--target" => {
                let address = value
                    .to_socket_addrs()
                    .map_err(|e| format!("--target {value}: {e}"))?
                    .find(SocketAddr::is_ipv4)
                    .ok_or_else(|| format!("--target {value}: no IPv4 address"))?;
                target = Some(address);
            }
            "--threads" => options.threads = value.parse().map_err(|_| bad())?,
            "--connections" => options.connections = value.parse().map_err(|_| bad())?,
            "--duration" => options.duration = parse_duration(value).ok_or_else(bad)?,
            "--sources" => options.sources = parse_sources(value).ok_or_else(bad)?,
            "--payload" => options.payload = Payload::parse(value).ok_or_else(bad)?,
            "--user" => options.user = value.clone(),
            "--password" => options.password = value.clone(),
            "--auths" => options.auths = value.parse().map_err(|_| bad())?,
            "--hold" => options.hold = value.parse().map_err(|_| bad())?,
            "--close" => options.close = Close::parse(value).ok_or_else(bad)?,
            "--connect-timeout" => {
                options.connect_timeout = parse_duration(value).ok_or_else(bad)?
            }
            "--reply-timeout" => options.reply_timeout = parse_duration(value).ok_or_else(bad)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    options.target = target.ok_or("--target is required")?;
    if options.threads == 0 || options.auths == 0 {
        return Err("--threads and --auths must be at least 1".into());
    }
    if options.connect_timeout.is_zero() || options.reply_timeout.is_zero() {
        return Err("--connect-timeout and --reply-timeout must be more than zero".into());
    }
    Ok(options)
}

/// Counters shared by the workers; one field per outcome.
#[derive(Default)]
struct Totals {
    /// Connection numbers claimed (a connect was tried).
    attempted: AtomicU64,
    /// Connects that succeeded.
    connected: AtomicU64,
    /// Connects refused (nothing listening, or a listen backlog the kernel refused).
    refused: AtomicU64,
    /// Connects that took longer than `--connect-timeout` (a full backlog drops SYNs).
    connect_timeouts: AtomicU64,
    /// No local port left for this source address (EADDRNOTAVAIL, EADDRINUSE).
    ports_exhausted: AtomicU64,
    /// Sockets this tool could not create (its own descriptor limit).
    local_errors: AtomicU64,
    /// Any other connect failure.
    connect_errors: AtomicU64,
    /// Writes of a payload that failed (the server had already closed or reset).
    send_errors: AtomicU64,
    /// `+OK` to an AUTH.
    auth_ok: AtomicU64,
    /// `-WRONGPASS ...`.
    auth_wrongpass: AtomicU64,
    /// `-ERR too many failed authentication attempts for this user; ...`.
    auth_limited: AtomicU64,
    /// Any other reply to an AUTH (errors included).
    auth_other: AtomicU64,
    /// AUTHs with no reply: the server closed first, or `--reply-timeout` passed.
    auth_unanswered: AtomicU64,
    /// Connections the server closed while this tool was reading from them.
    closed_by_server: AtomicU64,
    /// Connections open now, over every thread.
    open: AtomicU64,
    /// The most connections open at once.
    peak_open: AtomicU64,
}

impl Totals {
    /// The summary line: `ringport-flood key=value ...`.
    fn line(&self, elapsed: Duration) -> String {
        let fields: [(&str, &AtomicU64); 15] = [
            ("attempted", &self.attempted),
            ("connected", &self.connected),
            ("refused", &self.refused),
            ("connect_timeouts", &self.connect_timeouts),
            ("ports_exhausted", &self.ports_exhausted),
            ("local_errors", &self.local_errors),
            ("connect_errors", &self.connect_errors),
            ("send_errors", &self.send_errors),
            ("auth_ok", &self.auth_ok),
            ("auth_wrongpass", &self.auth_wrongpass),
            ("auth_limited", &self.auth_limited),
            ("auth_other", &self.auth_other),
            ("auth_unanswered", &self.auth_unanswered),
            ("closed_by_server", &self.closed_by_server),
            ("peak_open", &self.peak_open),
        ];
        let mut line = String::from("ringport-flood");
        for (name, value) in fields {
            line.push_str(&format!(" {name}={}", value.load(Ordering::Relaxed)));
        }
        line.push_str(&format!(" elapsed_ms={}", elapsed.as_millis()));
        line
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A multibulk command.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    request::encode_command(&mut out, args);
    out
}

/// The bytes each payload sends.
struct Messages {
    partial_auth: Vec<u8>,
    auth: Vec<u8>,
    auth_batch: Vec<u8>,
}

impl Messages {
    fn new(options: &Options) -> Messages {
        let password = options.password.as_bytes();
        let mut partial_auth = format!("AUTH {} ", options.user).into_bytes();
        partial_auth.extend_from_slice(&password[..password.len() / 2]);
        let auth = encode(&[b"AUTH", options.user.as_bytes(), password]);
        Messages {
            partial_auth,
            auth_batch: auth.repeat(options.auths),
            auth,
        }
    }
}

/// A socket bound to `source` (port 0) and connected to `target`.
fn open(
    source: Option<Ipv4Addr>,
    target: SocketAddr,
    timeout: Duration,
) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(source) = source {
        // TIME_WAIT left by earlier FIN closes must not block the port: SO_REUSEADDR lets bind
        // share it, and connect still refuses a 4-tuple that is in use.
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(SocketAddrV4::new(source, 0)))?;
    }
    socket.connect_timeout(&SockAddr::from(target), timeout)?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

/// One RESP reply line from `buffer`, if complete: its first byte and text. AUTH replies are
/// simple strings and errors; anything else is only counted, so a bulk's body is not parsed.
fn take_line(buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buffer.windows(2).position(|w| w == b"\r\n")?;
    let line = buffer[..end].to_vec();
    buffer.drain(..end + 2);
    Some(line)
}

fn classify_auth_reply(totals: &Totals, line: &[u8]) {
    let counter = if line == b"+OK" {
        &totals.auth_ok
    } else if line.starts_with(b"-WRONGPASS") {
        &totals.auth_wrongpass
    } else if line.starts_with(b"-ERR too many failed authentication attempts for this user") {
        &totals.auth_limited
    } else {
        &totals.auth_other
    };
    bump(counter);
}

/// Sends `--auths` AUTHs and reads (and counts) their replies.
fn auth_and_read(options: &Options, messages: &Messages, totals: &Totals, stream: &mut TcpStream) {
    if stream.write_all(&messages.auth_batch).is_err() {
        bump(&totals.send_errors);
        totals
            .auth_unanswered
            .fetch_add(options.auths as u64, Ordering::Relaxed);
        return;
    }
    let deadline = Instant::now() + options.reply_timeout;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut answered = 0;
    while answered < options.auths {
        if let Some(line) = take_line(&mut buffer) {
            classify_auth_reply(totals, &line);
            answered += 1;
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                bump(&totals.closed_by_server);
                break;
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                bump(&totals.closed_by_server);
                break;
            }
        }
    }
    totals
        .auth_unanswered
        .fetch_add((options.auths - answered) as u64, Ordering::Relaxed);
}

/// Closes one connection the way `--close` says.
fn close(totals: &Totals, stream: TcpStream, reset: bool) {
    if reset {
        let _ = Socket::from(stream).set_linger(Some(Duration::ZERO));
    }
    totals.open.fetch_sub(1, Ordering::Relaxed);
}

/// One worker: claims connection numbers until the count or the time is spent.
fn worker(
    options: &Options,
    messages: &Messages,
    totals: &Totals,
    next: &AtomicU64,
    deadline: Instant,
) {
    let mut held: VecDeque<(TcpStream, bool)> = VecDeque::with_capacity(options.hold + 1);
    while Instant::now() < deadline {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= options.connections {
            break;
        }
        bump(&totals.attempted);
        let source = match options.sources.len() {
            0 => None,
            n => Some(options.sources[(index % n as u64) as usize]),
        };
        let timeout = options
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let socket = match open(source, options.target, timeout) {
            Ok(socket) => socket,
            Err(error) => {
                // Out of ports or descriptors: give the kernel a moment to free some. A refused
                // or timed-out connect already took its time.
                const EMFILE: i32 = 24;
                const ENFILE: i32 = 23;
                let (counter, pause) = match error.kind() {
                    ErrorKind::ConnectionRefused => (&totals.refused, false),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                        (&totals.connect_timeouts, false)
                    }
                    ErrorKind::AddrNotAvailable | ErrorKind::AddrInUse => {
                        (&totals.ports_exhausted, true)
                    }
                    _ if matches!(error.raw_os_error(), Some(EMFILE | ENFILE)) => {
                        (&totals.local_errors, true)
                    }
                    _ => (&totals.connect_errors, true),
                };
                bump(counter);
                if pause {
                    std::thread::sleep(Duration::from_millis(5));
                }
                continue;
            }
        };
        bump(&totals.connected);
        let open_now = totals.open.fetch_add(1, Ordering::Relaxed) + 1;
        totals.peak_open.fetch_max(open_now, Ordering::Relaxed);
        let mut stream = TcpStream::from(socket);
        let sent = match options.payload.for_connection(index) {
            Payload::Nothing => Ok(()),
            Payload::PartialAuth => stream.write_all(&messages.partial_auth),
            Payload::AuthNoRead => stream.write_all(&messages.auth),
            Payload::Auth => {
                auth_and_read(options, messages, totals, &mut stream);
                Ok(())
            }
            Payload::Mix => unreachable!("for_connection resolves mix"),
        };
        if sent.is_err() {
            bump(&totals.send_errors);
        }
        held.push_back((stream, options.close.resets(index)));
        while held.len() > options.hold {
            let (stream, reset) = held.pop_front().expect("held is not empty");
            close(totals, stream, reset);
        }
    }
    for (stream, reset) in held {
        close(totals, stream, reset);
    }
}

/// Raises the soft descriptor limit to the hard one: `--hold` over many threads needs them.
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("ringport-flood: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    raise_nofile_limit();
    let messages = Messages::new(&options);
    let totals = Arc::new(Totals::default());
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + options.duration;
    std::thread::scope(|scope| {
        for _ in 0..options.threads {
            scope.spawn(|| worker(&options, &messages, &totals, &next, deadline));
        }
    });
    println!("{}", totals.line(started.elapsed()));
    if totals.connected.load(Ordering::Relaxed) == 0 && totals.attempted.load(Ordering::Relaxed) > 0
    {
        eprintln!(
            "ringport-flood: no connection to {} succeeded (is the server running?)",
            options.target
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sources_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2x"), None);
        assert_eq!(
            parse_sources("127.0.0.2-4,10.0.0.1"),
            Some(vec![
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
                Ipv4Addr::new(127, 0, 0, 4),
                Ipv4Addr::new(10, 0, 0, 1),
            ])
        );
        assert_eq!(parse_sources("127.0.0.9-3"), None);
    }

    #[test]
    fn mix_cycles_through_every_payload() {
        let kinds: Vec<Payload> = (0..4).map(|i| Payload::Mix.for_connection(i)).collect();
        assert_eq!(
            kinds,
            [
                Payload::Nothing,
                Payload::PartialAuth,
                Payload::AuthNoRead,
                Payload::Auth
            ]
        );
        assert_eq!(Payload::Auth.for_connection(7), Payload::Auth);
    }

    #[test]
    fn partial_auth_never_ends_its_line() {
        let options = parse_options(&[
            "--target".into(),
            "127.0.0.1:1".into(),
            "--password".into(),
            "secret".into(),
        ])
        .unwrap();
        let messages = Messages::new(&options);
        assert_eq!(messages.partial_auth, b"AUTH alice sec");
        assert_eq!(
            messages.auth,
            b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$6\r\nsecret\r\n"
        );
    }

    #[test]
    fn auth_replies_are_told_apart() {
        let totals = Totals::default();
        let mut buffer = b"+OK\r\n-WRONGPASS invalid\r\n-ERR too many failed authentication attempts for this user; try again later\r\n-ERR other\r\n+O".to_vec();
        while let Some(line) = take_line(&mut buffer) {
            classify_auth_reply(&totals, &line);
        }
        assert_eq!(buffer, b"+O");
        for (counter, want) in [
            (&totals.auth_ok, 1),
            (&totals.auth_wrongpass, 1),
            (&totals.auth_limited, 1),
            (&totals.auth_other, 1),
        ] {
            assert_eq!(counter.load(Ordering::Relaxed), want);
        }
    }
}
