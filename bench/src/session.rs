//! Opening sessions: connect, authenticate, ask the server what it is, and hold idle sessions.
//!
//! Set-up is blocking and batched (connect a batch, write every handshake, then read every
//! reply), so thousands of sessions open quickly even when AUTH is slow (ringport verifies
//! argon2id hashes). With `--tls` each session's handshake is part of its set-up: the
//! ClientHello leaves with the batch, the AUTH waits in rustls until the handshake is done, and
//! reading the AUTH reply completes both. Errors say which target and what to do.

use crate::request::encode_command;
use crate::resp::{Reply, ReplyScanner};
use crate::tls::TlsTarget;
use rustls::ClientConnection;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// AUTH on a server that hashes passwords can take a while under a burst of them.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const BATCH: usize = 512;

/// A server to run against.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name used in tables, charts and file names.
    pub name: String,
    /// As given (`host:port`).
    pub address: String,
    pub socket_address: SocketAddr,
    pub user: Option<String>,
    pub password: Option<String>,
    /// With `--tls`: how to open TLS sessions to it.
    pub tls: Option<TlsTarget>,
}

impl Target {
    /// Parses `[NAME=][USER[:PASSWORD]@]HOST:PORT`. Credentials in the target override
    /// `--user`/`--password`.
    pub fn parse(spec: &str, user: Option<&str>, password: Option<&str>) -> Result<Target, String> {
        let (name, rest) = match spec.split_once('=') {
            Some((name, rest)) if !name.is_empty() => (Some(name.to_string()), rest),
            _ => (None, spec),
        };
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, rest),
        };
        let (mut user, mut password) = (user.map(str::to_string), password.map(str::to_string));
        if let Some(credentials) = credentials {
            match credentials.split_once(':') {
                Some((u, p)) => {
                    user = (!u.is_empty()).then(|| u.to_string());
                    password = Some(p.to_string());
                }
                None => password = Some(credentials.to_string()),
            }
        }
        let socket_address = address
            .to_socket_addrs()
            .map_err(|error| format!("target {address:?}: {error}"))?
            .next()
            .ok_or_else(|| format!("target {address:?} resolves to no address"))?;
        if user.is_some() && password.is_none() {
            return Err(format!(
                "target {address:?}: --user needs --password (or USER:PASSWORD@ in the target)"
            ));
        }
        Ok(Target {
            name: name.unwrap_or_else(|| address.to_string()),
            address: address.to_string(),
            socket_address,
            user,
            password,
            tls: None,
        })
    }
}

impl Target {
    /// `name (address)`, or the address alone when it is the name.
    pub fn describe(&self) -> String {
        if self.name == self.address {
            self.address.clone()
        } else {
            format!("{} ({})", self.name, self.address)
        }
    }
}

/// A set-up failure, worded for the person running the bench.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Picks source addresses: the default, then 127.0.0.2, .3, ... once a loopback target runs out
/// of ephemeral ports.
#[derive(Debug, Default)]
pub struct SourceAddresses {
    /// Last octet of the 127.0.0.x source in use; 0 means let the kernel choose.
    octet: u8,
}

/// One open session: its socket and, with `--tls`, the rustls state on top of it.
pub struct Session {
    pub stream: TcpStream,
    /// Boxed, so a plain session does not carry a TLS session's size.
    pub tls: Option<Box<ClientConnection>>,
}

/// rustls's verdict on a session, carried through `io::Error` to [`lost`].
#[derive(Debug)]
struct TlsFailure(rustls::Error);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.0, crate::tls::hint(&self.0))
    }
}

impl std::error::Error for TlsFailure {}

impl Session {
    /// Sends `bytes` (blocking). With TLS before the handshake is done, they wait in rustls
    /// and leave encrypted as soon as it is; what rustls has to send (the ClientHello first)
    /// leaves now.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => self.stream.write_all(bytes),
            Some(tls) => {
                tls.writer().write_all(bytes)?;
                send_tls(tls, &mut self.stream)
            }
        }
    }

    /// Reads exactly one reply (blocking), returning its raw bytes; with TLS, drives the
    /// handshake on the way.
    pub fn read_reply(&mut self) -> io::Result<Vec<u8>> {
        let mut scanner = ReplyScanner::new();
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            // Only one command is outstanding, so the server sends only its reply: read what
            // is there.
            let read = match &mut self.tls {
                None => self.stream.read(&mut chunk)?,
                Some(tls) => read_plaintext(tls, &mut self.stream, &mut chunk)?,
            };
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            bytes.extend_from_slice(&chunk[..read]);
            if self.tls.is_none()
                && bytes.len() >= 2
                && matches!(bytes[0], 0x15 | 0x16)
                && bytes[1] == 3
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server answered with a TLS record (is that a TLS port? add --tls)",
                ));
            }
            let done = scanner
                .feed(&chunk[..read], |_| {})
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
            if done > 0 {
                return Ok(bytes);
            }
        }
    }

    /// Sends one command and returns its raw reply.
    pub fn command(&mut self, args: &[&str]) -> io::Result<Vec<u8>> {
        let mut request = Vec::new();
        encode_command(&mut request, args);
        self.write_all(&request)?;
        self.read_reply()
    }

    /// With TLS, completes the handshake (blocking); nothing to do without.
    fn finish_handshake(&mut self) -> io::Result<()> {
        let Some(tls) = &mut self.tls else {
            return Ok(());
        };
        while tls.is_handshaking() {
            send_tls(tls, &mut self.stream)?;
            if tls.read_tls(&mut self.stream)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                ));
            }
            process_tls(tls, &mut self.stream)?;
        }
        send_tls(tls, &mut self.stream)
    }

    /// Whether the server has closed the session (non-blocking check; leaves the socket
    /// non-blocking).
    fn closed_by_server(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let Some(tls) = &mut self.tls else {
            let mut byte = [0u8; 1];
            return match (&self.stream).read(&mut byte) {
                Ok(0) => true,
                Ok(_) => false,
                Err(error) => error.kind() != io::ErrorKind::WouldBlock,
            };
        };
        // Whatever the server sent since (session tickets, a close_notify) goes through
        // rustls; a closed socket or a close_notify means closed.
        loop {
            match tls.read_tls(&mut self.stream) {
                Ok(0) => return true,
                Ok(_) => match tls.process_new_packets() {
                    Ok(state) if state.peer_has_closed() => return true,
                    Ok(_) => {
                        let mut plaintext = [0u8; 4096];
                        while matches!(tls.reader().read(&mut plaintext), Ok(n) if n > 0) {}
                    }
                    Err(_) => return true,
                },
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// Writes everything rustls has to send (blocking).
fn send_tls(tls: &mut ClientConnection, stream: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(stream)?;
    }
    Ok(())
}

/// Processes what `read_tls` brought in; on a TLS error, sends rustls's alert first.
fn process_tls(tls: &mut ClientConnection, stream: &mut TcpStream) -> io::Result<()> {
    if let Err(error) = tls.process_new_packets() {
        let _ = send_tls(tls, stream);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            TlsFailure(error),
        ));
    }
    Ok(())
}

/// Blocking read of plaintext from a TLS session, driving the handshake (and sending what it
/// answers) as needed. 0 when the server closed the session.
fn read_plaintext(
    tls: &mut ClientConnection,
    stream: &mut TcpStream,
    buffer: &mut [u8],
) -> io::Result<usize> {
    loop {
        send_tls(tls, stream)?;
        match tls.reader().read(buffer) {
            Ok(read) => return Ok(read),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(error) => return Err(error),
        }
        if tls.read_tls(stream)? == 0 {
            return Ok(0);
        }
        process_tls(tls, stream)?;
    }
}

/// Opens `count` sessions to `target`, each authenticated (and switched to RESP3 when asked),
/// with its TLS handshake done when the target has TLS.
pub fn open_sessions(
    target: &Target,
    count: usize,
    resp3: bool,
    sources: &mut SourceAddresses,
) -> Result<Vec<Session>, SetupError> {
    let handshake = handshake_bytes(target, resp3);
    let mut sessions = Vec::with_capacity(count);
    let mut batch = Vec::with_capacity(BATCH.min(count));
    while sessions.len() < count {
        let want = BATCH.min(count - sessions.len());
        for _ in 0..want {
            let stream = connect(target, sources)?;
            let tls = match &target.tls {
                None => None,
                Some(tls) => Some(Box::new(tls.connect().map_err(|error| {
                    SetupError(format!("TLS to {}: {error}", target.describe()))
                })?)),
            };
            let mut session = Session { stream, tls };
            // With TLS this sends the ClientHello even when there is nothing to say.
            session
                .write_all(&handshake)
                .map_err(|error| lost(target, error))?;
            batch.push(session);
        }
        for mut session in batch.drain(..) {
            if handshake.is_empty() {
                session
                    .finish_handshake()
                    .map_err(|error| lost(target, error))?;
            } else {
                let reply = session.read_reply().map_err(|error| lost(target, error))?;
                if reply.first() == Some(&b'-') || reply.first() == Some(&b'!') {
                    return Err(handshake_failed(target, resp3, &reply));
                }
            }
            sessions.push(session);
        }
    }
    Ok(sessions)
}

fn handshake_bytes(target: &Target, resp3: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    let password = target.password.as_deref();
    let user = target.user.as_deref().unwrap_or("default");
    match (resp3, password) {
        (true, Some(password)) => {
            encode_command(&mut bytes, &["HELLO", "3", "AUTH", user, password])
        }
        (true, None) => encode_command(&mut bytes, &["HELLO", "3"]),
        (false, Some(password)) => match &target.user {
            Some(user) => encode_command(&mut bytes, &["AUTH", user, password]),
            None => encode_command(&mut bytes, &["AUTH", password]),
        },
        (false, None) => {}
    }
    bytes
}

fn handshake_failed(target: &Target, resp3: bool, reply: &[u8]) -> SetupError {
    let line = first_line(reply);
    let what = if resp3 && target.password.is_none() {
        "HELLO 3"
    } else {
        "AUTH"
    };
    let user = target.user.as_deref().unwrap_or("default");
    SetupError(format!(
        "{what} failed on {} as user {user:?}: {line}",
        target.describe()
    ))
}

fn lost(target: &Target, error: io::Error) -> SetupError {
    if let Some(failure) = error.get_ref().and_then(|e| e.downcast_ref::<TlsFailure>()) {
        return SetupError(format!("TLS to {} failed: {failure}", target.describe()));
    }
    let hint = match (&target.tls, error.kind()) {
        // ringport's TLS port closes a plain-text client without a word.
        (None, io::ErrorKind::UnexpectedEof) => " (if that is a TLS port, add --tls)",
        (Some(_), io::ErrorKind::UnexpectedEof) => {
            " (is that port speaking TLS? does the server want a client certificate, \
             --tls-cert and --tls-key?)"
        }
        _ => "",
    };
    SetupError(format!(
        "lost the connection to {} during set-up: {error}{hint}",
        target.describe()
    ))
}

/// Connects one socket, moving to the next 127.0.0.x source when ports run out.
fn connect(target: &Target, sources: &mut SourceAddresses) -> Result<TcpStream, SetupError> {
    loop {
        let result = connect_from(target.socket_address, sources.source());
        match result {
            Ok(stream) => return Ok(stream),
            Err(error)
                if error.kind() == io::ErrorKind::AddrNotAvailable
                    || error.raw_os_error()
                        == Some(rustix::io::Errno::ADDRINUSE.raw_os_error()) =>
            {
                if !target.socket_address.ip().is_loopback() || !sources.advance() {
                    return Err(SetupError(format!(
                        "out of local ports connecting to {}: {error}; lower --idle or \
                         --connections, or widen net.ipv4.ip_local_port_range",
                        target.describe()
                    )));
                }
            }
            Err(error) => {
                let hint = if error.kind() == io::ErrorKind::ConnectionRefused {
                    " (is the server running and listening there?)"
                } else {
                    ""
                };
                return Err(SetupError(format!(
                    "cannot connect to {}: {error}{hint}",
                    target.describe()
                )));
            }
        }
    }
}

impl SourceAddresses {
    fn source(&self) -> Option<IpAddr> {
        (self.octet != 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, self.octet)))
    }

    /// Moves to the next loopback source; false when none is left.
    fn advance(&mut self) -> bool {
        match self.octet {
            0 => self.octet = 2,
            254 => return false,
            octet => self.octet = octet + 1,
        }
        true
    }
}

fn connect_from(address: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if let Some(source) = source {
        socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    }
    socket.connect_timeout(&SockAddr::from(address), CONNECT_TIMEOUT)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
    Ok(socket.into())
}

/// The first line of a reply, without its CRLF, for messages.
pub fn first_line(reply: &[u8]) -> String {
    let end = reply
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(reply.len());
    String::from_utf8_lossy(&reply[..end]).into_owned()
}

/// What the server says it is: selected `INFO server` fields (version, I/O backend), or the
/// reason there is none. Fails with advice when the server wants AUTH and none was given.
pub fn server_info(
    session: &mut Session,
    target: &Target,
) -> Result<Vec<(String, String)>, SetupError> {
    let reply = session
        .command(&["INFO", "server"])
        .map_err(|error| lost(target, error))?;
    let mut scanner = ReplyScanner::new();
    let mut error_word = None;
    let _ = scanner.feed(&reply, |r| {
        if let Reply::Error(word) = r {
            error_word = Some(String::from_utf8_lossy(word).into_owned());
        }
    });
    if let Some(word) = error_word {
        if word == "NOAUTH" {
            return Err(SetupError(format!(
                "{} requires authentication ({}): pass --password (and --user), or \
                 USER:PASSWORD@ in --target",
                target.describe(),
                first_line(&reply)
            )));
        }
        return Ok(vec![("info".into(), first_line(&reply))]);
    }
    let text = String::from_utf8_lossy(&reply);
    let mut fields = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let wanted = matches!(
            key,
            "redis_version"
                | "ringport_version"
                | "valkey_version"
                | "server_name"
                | "version"
                | "multiplexing_api"
                | "io_threads_active"
                | "os"
                | "process_id"
        ) || key.contains("backend");
        if wanted {
            fields.push((key.to_string(), value.trim().to_string()));
        }
    }
    Ok(fields)
}

/// Idle sessions held open for the whole run (`--idle`).
pub struct IdleSessions {
    sessions: Vec<Session>,
}

impl IdleSessions {
    pub fn open(
        target: &Target,
        count: usize,
        resp3: bool,
        sources: &mut SourceAddresses,
    ) -> Result<IdleSessions, SetupError> {
        let sessions = open_sessions(target, count, resp3, sources)?;
        Ok(IdleSessions { sessions })
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// How many of them the server has closed by now.
    pub fn closed_by_server(&mut self) -> usize {
        let mut closed = 0;
        for session in &mut self.sessions {
            if session.closed_by_server() {
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_from_the_next_loopback_source_when_asked() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut sources = SourceAddresses::default();
        assert_eq!(sources.source(), None);
        assert!(sources.advance());
        let _stream = connect_from(address, sources.source()).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        sources.octet = 254;
        assert!(!sources.advance());
    }

    #[test]
    fn parses_targets() {
        let t = Target::parse("redis=127.0.0.1:6379", None, None).unwrap();
        assert_eq!(
            (t.name.as_str(), t.address.as_str()),
            ("redis", "127.0.0.1:6379")
        );
        assert!(t.password.is_none());
        let t = Target::parse("127.0.0.1:6380", Some("bob"), Some("pw")).unwrap();
        assert_eq!(t.name, "127.0.0.1:6380");
        assert_eq!(t.user.as_deref(), Some("bob"));
        let t = Target::parse("r=alice:s3:cret@127.0.0.1:1", Some("bob"), None).unwrap();
        assert_eq!(t.user.as_deref(), Some("alice"));
        assert_eq!(t.password.as_deref(), Some("s3:cret"));
        let t = Target::parse("r=secret@127.0.0.1:1", None, None).unwrap();
        assert_eq!((t.user, t.password.as_deref()), (None, Some("secret")));
        assert!(Target::parse("x=127.0.0.1:1", Some("bob"), None).is_err());
        assert!(Target::parse("nowhere", None, None).is_err());
    }
}
