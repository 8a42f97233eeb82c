//! TLS on the completion model: rustls runs sans-I/O inside the ring. Each receive is decrypted
//! before the handler sees it, and a session's queued replies are encrypted right before they
//! go to the kernel, so the handler, the send path and both backends stay the same for plain
//! and TLS sessions. No thread, no blocking handshake: the handshake is just bytes that go out
//! with the next send.
//!
//! rustls's unbuffered API, not its buffered `ServerConnection`: the buffered one keeps a 4 KiB
//! receive buffer per connection for as long as the connection lives, which an idle session
//! does not need. Here the ring owns the bytes: a receive is decrypted from a buffer of the
//! ring's, and a session keeps incoming bytes of its own only while a record is cut in half.

use std::sync::{Arc, RwLock};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
};
use rustls::ServerConfig;

/// A listener's TLS set-up, shared by its rings. New sessions take the configuration current
/// at their accept, so a reload (new certificates) never touches a session already open.
pub struct TlsAcceptor {
    config: RwLock<Arc<ServerConfig>>,
}

impl TlsAcceptor {
    pub fn new(config: Arc<ServerConfig>) -> Arc<TlsAcceptor> {
        Arc::new(TlsAcceptor {
            config: RwLock::new(config),
        })
    }

    /// Sessions accepted from now on use `config`.
    pub fn reload(&self, config: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    pub(crate) fn accept(&self) -> Result<Tls, rustls::Error> {
        let config = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(Tls {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            records: Vec::new(),
            received: false,
            failed: false,
            close_notified: false,
            peer: None,
        })
    }
}

/// One session's TLS state.
pub(crate) struct Tls {
    conn: UnbufferedServerConnection,
    /// Received bytes rustls could not use yet: a record cut by the end of a receive (or a
    /// handshake message spread over records). Empty, without capacity, between requests.
    incoming: Vec<u8>,
    /// Records rustls made on its own (the handshake, session tickets, alerts), sent ahead of
    /// the next replies. Empty, without capacity, once sent.
    records: Vec<u8>,
    /// Some bytes came in (the first is checked, see `receive`).
    received: bool,
    /// `receive` failed (and said so in the log).
    pub(crate) failed: bool,
    close_notified: bool,
    /// For the log line of a failure: a session on a direct descriptor has no descriptor to ask.
    pub(crate) peer: Option<std::net::SocketAddr>,
}

/// The content type of a TLS handshake record, the first byte of every TLS connection.
const HANDSHAKE_RECORD: u8 = 0x16;

impl Tls {
    /// Takes bytes from the wire and appends the plaintext they carry to `plain`; `wire_buf` is
    /// the ring's buffer to decrypt in. On an error (not TLS at all, a bad certificate, a
    /// protocol violation) the alert rustls made for the peer is queued for [`Tls::seal`]; the
    /// session must then close.
    pub(crate) fn receive(
        &mut self,
        wire: &[u8],
        wire_buf: &mut Vec<u8>,
        plain: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if self.failed {
            // The session is closing. rustls would read on from a buffer it no longer has.
            return Ok(());
        }
        if !self.received && !wire.is_empty() {
            self.received = true;
            // Every TLS connection opens with a handshake record; anything else is a client
            // speaking plain text to the TLS port, which a TLS alert would only confuse.
            if wire[0] != HANDSHAKE_RECORD {
                return Err(Error::NotTls);
            }
        }
        // The usual receive holds whole records: decrypt it in the ring's buffer and keep
        // nothing. Only the bytes of a cut record stay with the session until the rest comes.
        let result = if self.incoming.is_empty() {
            wire_buf.clear();
            wire_buf.extend_from_slice(wire);
            let result = drive(&mut self.conn, wire_buf, &mut self.records, plain);
            let used = consumed(&result);
            if used < wire_buf.len() {
                self.incoming = wire_buf[used..].to_vec();
            }
            result
        } else {
            self.incoming.extend_from_slice(wire);
            let result = drive(&mut self.conn, &mut self.incoming, &mut self.records, plain);
            self.incoming.drain(..consumed(&result));
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            result
        };
        if let Err((_, error)) = result {
            self.fail();
            return Err(Error::Tls(error));
        }
        Ok(())
    }

    /// Queues the alert rustls made for an error, if any, so the peer learns why we close.
    fn fail(&mut self) {
        self.failed = true;
        // rustls hands out the alert it queued before it looks at input again, so one call
        // takes it; a second would meet the bad input again and make a second alert. It must
        // see the same unused bytes as before: it may hold places in them.
        if let Ok(ConnectionState::EncodeTlsData(mut data)) =
            self.conn.process_tls_records(&mut self.incoming).state
        {
            encode(&mut data, &mut self.records);
        }
        self.incoming = Vec::new();
    }

    /// Whether TLS records (handshake, alerts) wait to be sent.
    pub(crate) fn wants_write(&self) -> bool {
        !self.records.is_empty()
    }

    /// Turns the plaintext in `out` into TLS records, behind any records already waiting
    /// (handshake, alert); with `last`, close_notify follows them. `spare` is an empty buffer
    /// to build the records in; the two swap, so `out` ends up holding what goes to the wire
    /// and `spare` the emptied plaintext buffer.
    pub(crate) fn seal(&mut self, out: &mut Vec<u8>, spare: &mut Vec<u8>, last: bool) {
        let closing = last && !self.close_notified;
        if out.is_empty() && self.records.is_empty() && !closing {
            return;
        }
        spare.clear();
        spare.append(&mut self.records);
        self.records = Vec::new();
        if (!out.is_empty() || closing) && !self.failed {
            self.encrypt(out, spare, closing);
        }
        // Plaintext that could not be encrypted (the session failed, or it is closing before
        // its handshake finished) must never reach the wire.
        out.clear();
        std::mem::swap(out, spare);
    }

    fn encrypt(&mut self, plain: &[u8], records: &mut Vec<u8>, closing: bool) {
        loop {
            // `receive` used every whole record, so with what is left in `incoming` rustls has
            // nothing to read and says what it wants to send.
            let status = self.conn.process_tls_records(&mut self.incoming);
            let discard = status.discard;
            let more = match status.state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    if !plain.is_empty() {
                        grow_into(records, plain.len() + overhead(plain.len()), |buf| {
                            traffic.encrypt(plain, buf).map_err(too_small)
                        });
                    }
                    if closing {
                        self.close_notified = true;
                        grow_into(records, 64, |buf| {
                            traffic.queue_close_notify(buf).map_err(too_small)
                        });
                    }
                    false
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut data, records);
                    true
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    true
                }
                Ok(ConnectionState::PeerClosed) => true,
                // Nothing to encrypt with: still handshaking, closed, or failed.
                _ => false,
            };
            self.incoming.drain(..discard);
            if !more {
                return;
            }
        }
    }

    /// Whether replies can be encrypted: the handshake finished and nothing failed.
    pub(crate) fn can_send_data(&self) -> bool {
        !self.failed && !self.conn.is_handshaking()
    }

    /// Whether the handshake is still going on.
    pub(crate) fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

/// Runs rustls over `buf` until it needs more bytes: plaintext goes to `plain`, records rustls
/// makes (handshake, tickets) to `records`. Returns how many bytes of `buf` were used up; the
/// rest is the start of a record to finish with the next receive.
fn drive(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    records: &mut Vec<u8>,
    plain: &mut Vec<u8>,
) -> Result<usize, (usize, rustls::Error)> {
    let mut used = 0;
    loop {
        let status = conn.process_tls_records(&mut buf[used..]);
        let discard = status.discard;
        let state = match status.state {
            Ok(state) => state,
            Err(error) => return Err((used + discard, error)),
        };
        let more = match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                let mut extra = 0;
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            plain.extend_from_slice(record.payload);
                            extra += record.discard;
                        }
                        Err(error) => return Err((used + discard + extra, error)),
                    }
                }
                used += extra;
                true
            }
            ConnectionState::EncodeTlsData(mut data) => {
                encode(&mut data, records);
                true
            }
            // The records go out with the session's next send, in the order they were made.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                true
            }
            // Seen once; what comes next says what to do.
            ConnectionState::PeerClosed => true,
            // WriteTraffic (nothing left to read), BlockedHandshake (more bytes needed), Closed,
            // and early data, which the configuration never accepts.
            _ => false,
        };
        used += discard;
        if !more {
            return Ok(used);
        }
    }
}

/// How many bytes of its buffer `drive` used up.
fn consumed<T>(result: &Result<usize, (usize, T)>) -> usize {
    match result {
        Ok(used) | Err((used, _)) => *used,
    }
}

fn too_small(error: EncryptError) -> Option<InsufficientSizeError> {
    match error {
        EncryptError::InsufficientSize(size) => Some(size),
        EncryptError::EncryptExhausted => None,
    }
}

/// Appends a handshake record rustls made to `records`.
fn encode(data: &mut EncodeTlsData<'_, ServerConnectionData>, records: &mut Vec<u8>) {
    grow_into(records, 0, |buf| {
        data.encode(buf).map_err(|e| match e {
            EncodeError::InsufficientSize(size) => Some(size),
            EncodeError::AlreadyEncoded => None,
        })
    });
}

/// Runs `write` on free space at the end of `out`, first `guess` bytes, then as much as it asks
/// for, and keeps what it wrote. A write that fails for another reason writes nothing.
fn grow_into(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<InsufficientSizeError>>,
) {
    let start = out.len();
    let mut room = guess;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return;
            }
            Err(Some(InsufficientSizeError { required_size })) if required_size > room => {
                room = required_size;
            }
            Err(_) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// An upper bound on what TLS adds to `len` bytes of plaintext: each record of at most 16 KiB
/// gets a header, a nonce, a tag and (TLS 1.3) the content type.
fn overhead(len: usize) -> usize {
    (len / 16384 + 1) * 64
}

/// Why a TLS session must close.
#[derive(Debug)]
pub(crate) enum Error {
    /// The first bytes are not TLS: close without a word.
    NotTls,
    Tls(rustls::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotTls => write!(f, "not TLS (a plain-text client on the TLS port?)"),
            Error::Tls(e) => write!(f, "{e}"),
        }
    }
}
