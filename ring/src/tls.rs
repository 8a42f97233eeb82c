//! TLS on the completion model: rustls runs sans-I/O inside the ring. Each receive is decrypted
//! before the handler sees it, and a session's queued replies are encrypted in place right
//! before they go to the kernel, so the handler, the send path and both backends stay the same
//! for plain and TLS sessions. No thread, no blocking handshake: the handshake is just bytes
//! that go out with the next send.

use std::io::{self, Read, Write};
use std::sync::{Arc, RwLock};

use rustls::{ServerConfig, ServerConnection};

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
        let mut conn = ServerConnection::new(config)?;
        // What a session may queue is bounded by the server's own output limits, and a short
        // write here would drop reply bytes.
        conn.set_buffer_limit(None);
        Ok(Tls {
            conn,
            received: false,
            failed: false,
            close_notified: false,
        })
    }
}

/// One session's TLS state.
pub(crate) struct Tls {
    conn: ServerConnection,
    /// Some bytes came in (the first is checked, see `receive`).
    received: bool,
    /// `receive` failed (and said so in the log).
    pub(crate) failed: bool,
    close_notified: bool,
}

/// The content type of a TLS handshake record, the first byte of every TLS connection.
const HANDSHAKE_RECORD: u8 = 0x16;

impl Tls {
    /// Takes bytes from the wire and appends the plaintext they carry to `plain`. On an error
    /// (not TLS at all, a bad certificate, a protocol violation) the alert rustls queued for
    /// the peer is still sent by [`Tls::seal`]; the session must then close.
    pub(crate) fn receive(&mut self, mut wire: &[u8], plain: &mut Vec<u8>) -> Result<(), Error> {
        if !self.received && !wire.is_empty() {
            self.received = true;
            // Every TLS connection opens with a handshake record; anything else is a client
            // speaking plain text to the TLS port, which a TLS alert would only confuse.
            if wire[0] != HANDSHAKE_RECORD {
                return Err(Error::NotTls);
            }
        }
        while !wire.is_empty() {
            let taken = self.conn.read_tls(&mut wire).map_err(Error::Io)?;
            let state = self.conn.process_new_packets().map_err(Error::Tls)?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let start = plain.len();
                plain.resize(start + ready, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plain[start..])
                    .map_err(Error::Io)?;
            }
            if taken == 0 {
                // rustls took nothing although we drained its plaintext: its record buffer is
                // full of a record it cannot finish, which only a broken peer sends.
                return Err(Error::Io(io::Error::other("TLS record buffer full")));
            }
        }
        Ok(())
    }

    /// Whether TLS records (handshake, alerts, close_notify) wait to be sent.
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Turns the plaintext in `out` into TLS records, in place, behind any records already
    /// waiting (handshake, alert); with `last`, close_notify follows them.
    pub(crate) fn seal(&mut self, out: &mut Vec<u8>, last: bool) {
        if !out.is_empty() {
            // Unlimited buffers (see `accept`): the write takes everything.
            let _ = self.conn.writer().write_all(out);
            out.clear();
        }
        if last && !self.close_notified {
            self.close_notified = true;
            self.conn.send_close_notify();
        }
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Whether the handshake is still going on.
    pub(crate) fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

/// Why a TLS session must close.
#[derive(Debug)]
pub(crate) enum Error {
    /// The first bytes are not TLS: close without a word.
    NotTls,
    Tls(rustls::Error),
    Io(io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotTls => write!(f, "not TLS (a plain-text client on the TLS port?)"),
            Error::Tls(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}
