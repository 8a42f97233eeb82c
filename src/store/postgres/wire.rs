//! A PostgreSQL connection for a ring to drive itself: GETs only, no thread and no client
//! library between the ring and the socket.
//!
//! [`connect`] does the blocking part on the caller's thread (the socket, the startup message,
//! authentication: trust, password, md5 or SCRAM-SHA-256, `plan_cache_mode`, and preparing the one
//! statement), then hands back a non-blocking socket. From then on the ring writes each batch of
//! GETs as Bind + Execute + Sync of that statement ([`encode_gets`]), the same `unnest ... WITH
//! ORDINALITY` query the store workers run, and reads the replies with [`Replies`], one
//! [`Reply`] at a time. The protocol's messages come from `postgres-protocol`, the codec
//! tokio-postgres itself uses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use postgres_protocol::types::{self, ArrayDimension};
use postgres_protocol::IsNull;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

/// The statements' names on the connection: a batch of GETs, and a single one.
const STATEMENT: &str = "ringport_ring_get";
const STATEMENT_ONE: &str = "ringport_ring_get1";

/// A lone GET: a plain index lookup costs PostgreSQL about half the batch query's plan for one
/// key, and a quiet server sends many lone GETs. Its row has the batch's shape.
const GET_ONE: &str = "SELECT 1::int8, value FROM ringport_kv WHERE owner = $1 AND key = $2
     AND (expires_at IS NULL OR expires_at > $3)";

/// The batched GET: the store workers' `get_many`, so both paths answer alike.
const GET_MANY: &str = "SELECT wanted.ord, kv.value
     FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS wanted(owner, key, ord)
     JOIN ringport_kv kv ON kv.owner = wanted.owner AND kv.key = wanted.key
     AND (kv.expires_at IS NULL OR kv.expires_at > $3)";

/// Type OIDs of the statement's parameters: `text[]`, `bytea[]`, `int8`.
const TEXT_ARRAY: u32 = 1009;
const BYTEA_ARRAY: u32 = 1001;
const INT8: u32 = 20;
const TEXT: u32 = 25;
const BYTEA: u32 = 17;

/// Opens a connection for ring reads within `deadline`: connected, authenticated, the statement
/// prepared, the socket non-blocking. Refused for a URL that asks for TLS (`sslmode=require`):
/// the ring speaks plain PostgreSQL only, as the store workers do.
pub fn connect(config: &Config, deadline: Duration) -> Result<OwnedFd, String> {
    if config.get_ssl_mode() == SslMode::Require {
        return Err("sslmode=require: ring reads speak plain PostgreSQL only".into());
    }
    let until = Instant::now() + deadline;
    let mut failures = Vec::new();
    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        match open_socket(config, host, port, until).and_then(|mut stream| {
            start(config, &mut stream, until)?;
            stream.into_owned()
        }) {
            Ok(socket) => return Ok(socket),
            Err(error) => failures.push(error),
        }
    }
    Err(failures.join("; "))
}

/// A blocking socket while the connection starts.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_deadline(&self, until: Instant) -> Result<(), String> {
        let left = until
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or("timed out")?;
        let set = match self {
            Stream::Tcp(s) => s
                .set_read_timeout(Some(left))
                .and_then(|()| s.set_write_timeout(Some(left))),
            Stream::Unix(s) => s
                .set_read_timeout(Some(left))
                .and_then(|()| s.set_write_timeout(Some(left))),
        };
        set.map_err(|e| e.to_string())
    }

    fn into_owned(self) -> Result<OwnedFd, String> {
        let nonblocking = match &self {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
        };
        nonblocking.map_err(|e| e.to_string())?;
        Ok(match self {
            Stream::Tcp(s) => s.into(),
            Stream::Unix(s) => s.into(),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_socket(config: &Config, host: &Host, port: u16, until: Instant) -> Result<Stream, String> {
    match host {
        Host::Tcp(name) => {
            use std::net::ToSocketAddrs;
            let mut last = format!("{name}:{port}: no address");
            for addr in (name.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("{name}: {e}"))?
            {
                let left = until.saturating_duration_since(Instant::now());
                let timeout = config
                    .get_connect_timeout()
                    .map_or(left, |t| (*t).min(left));
                if timeout.is_zero() {
                    break;
                }
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(stream) => {
                        keepalives(config, &stream);
                        return Ok(Stream::Tcp(stream));
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            Err(last)
        }
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            UnixStream::connect(&path)
                .map(Stream::Unix)
                .map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

/// The URL's keepalives and user timeout, as the store workers' connections have them, so a
/// dead path is noticed on this socket too.
fn keepalives(config: &Config, stream: &TcpStream) {
    let socket = socket2::SockRef::from(stream);
    if config.get_keepalives() {
        let mut keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        let _ = socket.set_tcp_keepalive(&keepalive);
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        let _ = socket.set_tcp_user_timeout(Some(*timeout));
    }
}

/// Startup, authentication, session settings and the statement, blocking until `until`.
fn start(config: &Config, stream: &mut Stream, until: Instant) -> Result<(), String> {
    let user = config.get_user().ok_or("no user in the store URL")?;
    let mut params = vec![("user", user), ("client_encoding", "UTF8")];
    if let Some(db) = config.get_dbname() {
        params.push(("database", db));
    }
    params.push((
        "application_name",
        config.get_application_name().unwrap_or("ringport"),
    ));
    if let Some(options) = config.get_options() {
        params.push(("options", options));
    }
    let mut out = BytesMut::new();
    frontend::startup_message(params, &mut out).map_err(|e| e.to_string())?;
    let mut conn = Blocking {
        stream,
        inbuf: BytesMut::new(),
        until,
    };
    conn.send(&mut out)?;
    authenticate(config, user, &mut conn)?;
    // The server's parameters and key, up to its first ReadyForQuery.
    conn.until_ready(false)?;
    // Planned once for any parameters, as the workers' statements are (see `prepare`); an old
    // server without the setting refuses it, which is harmless.
    frontend::query("SET plan_cache_mode = force_generic_plan", &mut out)
        .map_err(|e| e.to_string())?;
    conn.send(&mut out)?;
    conn.until_ready(true)?;
    frontend::parse(
        STATEMENT,
        GET_MANY,
        [TEXT_ARRAY, BYTEA_ARRAY, INT8],
        &mut out,
    )
    .map_err(|e| e.to_string())?;
    frontend::parse(STATEMENT_ONE, GET_ONE, [TEXT, BYTEA, INT8], &mut out)
        .map_err(|e| e.to_string())?;
    frontend::sync(&mut out);
    conn.send(&mut out)?;
    conn.until_ready(false)
}

fn authenticate(config: &Config, user: &str, conn: &mut Blocking<'_>) -> Result<(), String> {
    let password = config.get_password().unwrap_or_default();
    let mut out = BytesMut::new();
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        match conn.next()? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password, &mut out).map_err(|e| e.to_string())?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hashed = md5_hash(user.as_bytes(), password, body.salt());
                frontend::password_message(hashed.as_bytes(), &mut out)
                    .map_err(|e| e.to_string())?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut offered = false;
                while let Some(mechanism) = mechanisms.next().map_err(|e| e.to_string())? {
                    offered |= mechanism == sasl::SCRAM_SHA_256;
                }
                if !offered {
                    return Err("the server offers no SASL mechanism ringport speaks".into());
                }
                let client = sasl::ScramSha256::new(password, sasl::ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, client.message(), &mut out)
                    .map_err(|e| e.to_string())?;
                scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) => {
                let client = scram.as_mut().ok_or("SASL continue without a start")?;
                client.update(body.data()).map_err(|e| e.to_string())?;
                frontend::sasl_response(client.message(), &mut out).map_err(|e| e.to_string())?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let client = scram.as_mut().ok_or("SASL final without a start")?;
                client.finish(body.data()).map_err(|e| e.to_string())?;
                continue;
            }
            Message::ErrorResponse(body) => return Err(error_text(&body)),
            _ => return Err("unsupported authentication request".into()),
        }
        conn.send(&mut out)?;
    }
}

/// Blocking message I/O during start-up.
struct Blocking<'a> {
    stream: &'a mut Stream,
    inbuf: BytesMut,
    until: Instant,
}

impl Blocking<'_> {
    fn send(&mut self, out: &mut BytesMut) -> Result<(), String> {
        self.stream.set_deadline(self.until)?;
        self.stream.write_all(out).map_err(|e| e.to_string())?;
        out.clear();
        Ok(())
    }

    fn next(&mut self) -> Result<Message, String> {
        loop {
            if let Some(message) = Message::parse(&mut self.inbuf).map_err(|e| e.to_string())? {
                return Ok(message);
            }
            self.stream.set_deadline(self.until)?;
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.inbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads up to ReadyForQuery; an error the server sent fails unless `tolerate_error`.
    fn until_ready(&mut self, tolerate_error: bool) -> Result<(), String> {
        let mut failed = None;
        loop {
            match self.next()? {
                Message::ReadyForQuery(_) => {
                    return match failed {
                        Some(error) if !tolerate_error => Err(error),
                        _ => Ok(()),
                    }
                }
                Message::ErrorResponse(body) => failed = Some(error_text(&body)),
                _ => {}
            }
        }
    }
}

fn error_text(body: &ErrorResponseBody) -> String {
    let mut fields = body.fields();
    let mut message = String::from("error from PostgreSQL");
    while let Ok(Some(field)) = fields.next() {
        if field.type_() == b'M' {
            message = String::from_utf8_lossy(field.value_bytes()).into_owned();
        }
    }
    message
}

/// Appends one batch of GETs (owner and key of each, in order) to `out`: Bind, Execute, Sync.
/// Rows come back as (position from 1, value) for the keys present and live at `now_ms`. A lone
/// GET binds the single-key statement, more bind arrays to the batched one.
pub fn encode_gets<'a>(
    gets: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    count: usize,
    now_ms: i64,
    out: &mut BytesMut,
) {
    let single = gets.clone().next().filter(|_| count == 1);
    let statement = if single.is_some() {
        STATEMENT_ONE
    } else {
        STATEMENT
    };
    let dims = [ArrayDimension {
        len: i32::try_from(count).unwrap_or(i32::MAX),
        lower_bound: 1,
    }];
    // Parameters $1 (owners), $2 (keys), $3 (the time), in binary: no text escaping of keys or
    // values either way.
    let param = |index: usize, buf: &mut BytesMut| -> Result<IsNull, BoxError> {
        match (index, single) {
            (0, Some((owner, _))) => types::text_to_sql(owner, buf),
            (1, Some((_, key))) => types::bytea_to_sql(key, buf),
            (0, None) => types::array_to_sql(
                dims,
                TEXT,
                gets.clone(),
                |(owner, _), buf| {
                    types::text_to_sql(owner, buf);
                    Ok(IsNull::No)
                },
                buf,
            )?,
            (1, None) => types::array_to_sql(
                dims,
                BYTEA,
                gets.clone(),
                |(_, key), buf| {
                    types::bytea_to_sql(key, buf);
                    Ok(IsNull::No)
                },
                buf,
            )?,
            _ => types::int8_to_sql(now_ms, buf),
        }
        Ok(IsNull::No)
    };
    if frontend::bind("", statement, [1, 1, 1], 0..3, param, [1], out).is_err() {
        unreachable!("a batch of GETs is far under the protocol's limits (storelink keeps it so)");
    }
    frontend::execute("", 0, out).expect("an unnamed portal");
    frontend::sync(out);
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// What the server answered, message by message, for the batches the ring sent.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// A key of the current batch is present: its position (from 0) and value.
    Row(usize, Vec<u8>),
    /// The current batch failed with this message; its Sync still follows.
    Failed(String),
    /// The current batch is over (ReadyForQuery): the next reply belongs to the next one.
    Done,
}

/// Reads replies from what the socket delivered.
#[derive(Default)]
pub struct Replies {
    inbuf: BytesMut,
}

impl Replies {
    /// Takes bytes the socket delivered.
    pub fn feed(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
    }

    /// The next whole reply, `None` until more bytes come, or an error that ends the
    /// connection (a message that makes no sense here).
    pub fn next_reply(&mut self) -> Result<Option<Reply>, String> {
        loop {
            let Some(message) = Message::parse(&mut self.inbuf).map_err(|e| e.to_string())? else {
                // A buffer a large value grew is not kept once drained.
                if self.inbuf.is_empty() && self.inbuf.capacity() > 64 * 1024 {
                    self.inbuf = BytesMut::new();
                }
                return Ok(None);
            };
            match message {
                Message::DataRow(row) => return row_of(row.buffer()).map(Some),
                Message::ErrorResponse(body) => return Ok(Some(Reply::Failed(error_text(&body)))),
                Message::ReadyForQuery(_) => return Ok(Some(Reply::Done)),
                Message::BindComplete
                | Message::CommandComplete(_)
                | Message::NoticeResponse(_)
                | Message::ParameterStatus(_)
                | Message::NotificationResponse(_) => {}
                other => {
                    return Err(format!(
                        "unexpected message from PostgreSQL: {}",
                        message_name(&other)
                    ))
                }
            }
        }
    }
}

/// A message's name, for the log.
fn message_name(message: &Message) -> &'static str {
    match message {
        Message::ParseComplete => "ParseComplete",
        Message::RowDescription(_) => "RowDescription",
        Message::NoData => "NoData",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::PortalSuspended => "PortalSuspended",
        Message::CopyInResponse(_) | Message::CopyOutResponse(_) => "Copy",
        _ => "an authentication or start-up message",
    }
}

/// A DataRow's two columns: `ord` (binary int8, from 1) and `value` (binary bytea).
fn row_of(mut body: &[u8]) -> Result<Reply, String> {
    let bad = || "malformed row from PostgreSQL".to_string();
    // DataRowBody's buffer starts after the column count.
    let mut column = || -> Result<Option<Vec<u8>>, String> {
        if body.len() < 4 {
            return Err(bad());
        }
        let len = body.get_i32();
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        if body.len() < len {
            return Err(bad());
        }
        let value = body[..len].to_vec();
        body.advance(len);
        Ok(Some(value))
    };
    let ord = column()?.ok_or_else(bad)?;
    let value = column()?.ok_or_else(bad)?;
    let ord = types::int8_from_sql(&ord).map_err(|_| bad())?;
    let index = usize::try_from(ord - 1).map_err(|_| bad())?;
    Ok(Reply::Row(index, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn data_row(ord: i64, value: &[u8]) -> Vec<u8> {
        let mut body = 2i16.to_be_bytes().to_vec();
        body.extend_from_slice(&8i32.to_be_bytes());
        body.extend_from_slice(&ord.to_be_bytes());
        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
        body.extend_from_slice(value);
        message(b'D', &body)
    }

    #[test]
    fn replies_come_out_whole_whatever_the_cuts() {
        let mut wire = message(b'2', b"");
        wire.extend(data_row(2, b"two"));
        wire.extend(data_row(1, b""));
        wire.extend(message(b'C', b"SELECT 2\0"));
        wire.extend(message(b'Z', b"I"));
        let mut error = b"SERROR\0C42P01\0Mno such table\0".to_vec();
        error.push(0);
        wire.extend(message(b'E', &error));
        wire.extend(message(b'Z', b"I"));
        let want = vec![
            Reply::Row(1, b"two".to_vec()),
            Reply::Row(0, Vec::new()),
            Reply::Done,
            Reply::Failed("no such table".into()),
            Reply::Done,
        ];
        for cut in 1..wire.len() {
            let mut replies = Replies::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                replies.feed(chunk);
                while let Some(reply) = replies.next_reply().unwrap() {
                    got.push(reply);
                }
            }
            assert_eq!(got, want, "cut every {cut} bytes");
        }
    }

    #[test]
    fn a_message_out_of_place_ends_the_connection() {
        let mut replies = Replies::default();
        replies.feed(&message(b'T', &0i16.to_be_bytes()));
        assert!(replies.next_reply().is_err());
    }

    #[test]
    fn a_batch_is_bind_execute_sync_of_the_prepared_statement() {
        let mut out = BytesMut::new();
        let gets = [("alice", &b"k1"[..]), ("bob", &b"k2"[..])];
        encode_gets(gets.iter().copied(), 2, 7, &mut out);
        assert_eq!(out[0], b'B');
        let bind_len = i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        let rest = &out[1 + bind_len..];
        assert_eq!(rest[0], b'E');
        assert_eq!(&rest[rest.len() - 5..], &[b'S', 0, 0, 0, 4]);
        let bind = &out[5..1 + bind_len];
        assert!(bind.starts_with(b"\0ringport_ring_get\0"));
        let text = String::from_utf8_lossy(bind);
        assert!(text.contains("alice") && text.contains("bob"));
        out.clear();
        encode_gets([("alice", &b"k1"[..])].into_iter(), 1, 7, &mut out);
        assert!(out[5..].starts_with(b"\0ringport_ring_get1\0"));
    }
}
