//! The admin socket, `DATA/admin.sock`: a Unix socket only the server's own user (and root)
//! can open (mode 0600, in the data directory), so the file's permissions are the credential:
//! whoever connects is an admin, without a password. It speaks RESP and answers `ACL SETUSER`,
//! `DELUSER`, `LIST`, `USERS`, `GETUSER` (as [`crate::commands::acl`] does for an admin) and
//! `PING`. `ringport user` goes through it when the embedded store is locked by the running
//! server, so users change without downtime.
//!
//! One thread, one connection at a time (user changes are rare and each takes an argon2id
//! hash), each with a read timeout so a client that stalls cannot keep the socket.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::commands::acl::{change_reply, check, read_reply};
use crate::resp::{self, parse_command, Args, Limits, Proto};
use crate::shared::Shared;
use crate::store::{Backend, Conn};

/// The socket's file name in the data directory.
pub const FILE: &str = "admin.sock";

/// How long a connection may stay silent before it is closed.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket, removed from the file system when dropped (at the end of a drain).
pub struct AdminSocket {
    path: PathBuf,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `dir/admin.sock` and serves it on a thread of its own. A socket file left by a
/// server that is gone is replaced; one a running server answers on is an error.
pub fn start(
    dir: &Path,
    shared: Arc<Shared>,
    backend: Arc<dyn Backend>,
) -> Result<AdminSocket, String> {
    let path = dir.join(FILE);
    if UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "{} is served by another running server (same --data)",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("admin-socket".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => serve(stream, &shared, &*backend),
                    Err(e) => tracing::warn!(error = %e, "admin socket: accept failed"),
                }
            }
        })
        .map_err(|e| format!("cannot start the admin socket thread: {e}"))?;
    Ok(AdminSocket { path })
}

fn serve(mut stream: UnixStream, shared: &Shared, backend: &dyn Backend) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let limits = Limits::default();
    let mut conn: Option<Box<dyn Conn>> = None;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut args = Args::new();
    loop {
        let consumed = match parse_command(&buf, &limits, &mut args) {
            Ok(Some(consumed)) => consumed,
            Ok(None) => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            },
            Err(error) => {
                let mut reply = Vec::new();
                resp::error(&mut reply, format!("ERR {error}").as_bytes());
                let _ = stream.write_all(&reply);
                return;
            }
        };
        buf.drain(..consumed);
        let argv = args.to_vecs();
        let reply = answer(&argv, shared, backend, &mut conn);
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}

fn answer(
    argv: &[Vec<u8>],
    shared: &Shared,
    backend: &dyn Backend,
    conn: &mut Option<Box<dyn Conn>>,
) -> Vec<u8> {
    let mut reply = Vec::new();
    let name = argv.first().map(|a| a.to_ascii_lowercase());
    match name.as_deref() {
        Some(b"ping") => resp::simple(&mut reply, b"PONG"),
        Some(b"acl") if argv.len() >= 2 => match check(argv) {
            Some(message) => resp::error(&mut reply, message.as_bytes()),
            None => match read_reply(shared, argv, Proto::Resp2) {
                Some(read) => reply = read,
                None => {
                    // Only a change needs the store: connect then, once per connection.
                    if conn.is_none() {
                        *conn = backend.connect().ok();
                    }
                    let store: Result<&mut dyn Conn, _> = match conn.as_mut() {
                        Some(conn) => Ok(conn.as_mut()),
                        None => Err(crate::store::StoreError::Unavailable(
                            "no connection".into(),
                        )),
                    };
                    reply = change_reply(shared, store, argv);
                }
            },
        },
        _ => resp::error(
            &mut reply,
            b"ERR the admin socket answers ACL SETUSER, DELUSER, LIST, USERS, GETUSER and PING",
        ),
    }
    reply
}
