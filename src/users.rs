//! `ringport user add|del|list|passwd`: user management against the configured store, offline
//! or while a server runs. PostgreSQL is shared: changes go to the store, and running servers
//! see them within a second (LISTEN/NOTIFY). The embedded store is locked by a running server:
//! then the change goes through that server's admin socket ([`crate::adminsock`]), in ACL words,
//! and takes effect at once.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::acl::valid_name;
use crate::auth;
use crate::config::{UserAction, UserArgs};
use crate::resp::{self, Value};
use crate::store::{self, StoreSpec, UserRecord};

fn read_password(prompt: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(
            "empty password: give one on stdin (echo secret | ringport user add NAME)".into(),
        );
    }
    Ok(password)
}

fn check_name(name: &str) -> Result<(), String> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid user name '{name}': use 1-128 printable characters without spaces"
        ))
    }
}

/// Runs one user action; the message on error says what went wrong.
pub fn run(args: UserArgs) -> Result<(), String> {
    let spec = StoreSpec::parse(args.store.store.as_deref(), &args.store.data)
        .map_err(|e| format!("--store: {e}"))?;
    let backend = match store::open(&spec) {
        Ok(backend) => backend,
        Err(error) => {
            // The embedded store is held by a running server: ask that server instead.
            let socket = args.store.data.join(crate::adminsock::FILE);
            if matches!(spec, StoreSpec::Embedded { .. }) && socket.exists() {
                return run_through(&socket, args.action);
            }
            return Err(format!("cannot open the store: {error}"));
        }
    };
    let mut conn = backend
        .connect()
        .map_err(|e| format!("cannot connect to the store: {e}"))?;
    match args.action {
        UserAction::Add { name, admin } => {
            check_name(&name)?;
            if conn.user(&name).map_err(|e| e.to_string())?.is_some() {
                return Err(format!(
                    "user '{name}' already exists (use `ringport user passwd {name}`)"
                ));
            }
            let password = read_password("password: ")?;
            conn.put_user(&UserRecord {
                name: name.clone(),
                hash: auth::hash_password(password.as_bytes()),
                disabled: false,
                admin,
            })
            .map_err(|e| e.to_string())?;
            println!("added user '{name}'");
        }
        UserAction::Passwd { name } => {
            let Some(mut record) = conn.user(&name).map_err(|e| e.to_string())? else {
                return Err(format!("no user '{name}'"));
            };
            let password = read_password("new password: ")?;
            record.hash = auth::hash_password(password.as_bytes());
            conn.put_user(&record).map_err(|e| e.to_string())?;
            println!("changed the password of '{name}'");
        }
        UserAction::Del { name } => {
            if conn.del_user(&name).map_err(|e| e.to_string())? {
                println!("deleted user '{name}'");
            } else {
                return Err(format!("no user '{name}'"));
            }
        }
        UserAction::List => {
            for user in conn.users().map_err(|e| e.to_string())? {
                println!("{}", describe(&user.name, user.disabled, user.admin));
            }
        }
    }
    Ok(())
}

/// `user list`'s line for one user.
fn describe(name: &str, disabled: bool, admin: bool) -> String {
    match (disabled, admin) {
        (false, false) => name.to_string(),
        (true, false) => format!("{name} (disabled)"),
        (false, true) => format!("{name} (admin)"),
        (true, true) => format!("{name} (admin, disabled)"),
    }
}

/// The same actions through a running server's admin socket.
fn run_through(socket: &Path, action: UserAction) -> Result<(), String> {
    let mut server = AdminClient::connect(socket)?;
    match action {
        UserAction::Add { name, admin } => {
            check_name(&name)?;
            if server.call(&["ACL", "GETUSER", &name])? != Value::Null {
                return Err(format!(
                    "user '{name}' already exists (use `ringport user passwd {name}`)"
                ));
            }
            let password = format!(">{}", read_password("password: ")?);
            let role = if admin { "+@admin" } else { "-@admin" };
            server.expect_ok(&["ACL", "SETUSER", &name, "on", &password, role])?;
            println!("added user '{name}' (through the running server)");
        }
        UserAction::Passwd { name } => {
            if server.call(&["ACL", "GETUSER", &name])? == Value::Null {
                return Err(format!("no user '{name}'"));
            }
            let password = format!(">{}", read_password("new password: ")?);
            server.expect_ok(&["ACL", "SETUSER", &name, &password])?;
            println!("changed the password of '{name}' (through the running server)");
        }
        UserAction::Del { name } => match server.call(&["ACL", "DELUSER", &name])? {
            Value::Integer(1) => println!("deleted user '{name}' (through the running server)"),
            _ => return Err(format!("no user '{name}'")),
        },
        UserAction::List => {
            let Value::Array(lines) = server.call(&["ACL", "LIST"])? else {
                return Err("the server's ACL LIST is not a list".into());
            };
            for line in lines {
                let Value::Bulk(line) = line else { continue };
                let line = String::from_utf8_lossy(&line);
                let words: Vec<&str> = line.split(' ').collect();
                if let [_, name, state, ..] = words[..] {
                    let admin = !line.contains("-@admin");
                    println!("{}", describe(name, state == "off", admin));
                }
            }
        }
    }
    Ok(())
}

/// A RESP client of the admin socket.
struct AdminClient {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl AdminClient {
    fn connect(socket: &Path) -> Result<AdminClient, String> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            format!(
                "the store is in use by a running server, and its admin socket {} does not answer: {e}",
                socket.display()
            )
        })?;
        // A password change takes one argon2id hash on the server: seconds at most.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        Ok(AdminClient {
            stream,
            buf: Vec::new(),
        })
    }

    fn call(&mut self, args: &[&str]) -> Result<Value, String> {
        let mut request = Vec::new();
        resp::encode_command(&mut request, args);
        self.stream
            .write_all(&request)
            .map_err(|e| format!("admin socket: {e}"))?;
        loop {
            if let Some((value, used)) =
                resp::parse_value(&self.buf).map_err(|e| format!("admin socket: {e}"))?
            {
                self.buf.drain(..used);
                if let Value::Error(message) = value {
                    return Err(String::from_utf8_lossy(&message).into_owned());
                }
                return Ok(value);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("admin socket: the server closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("admin socket: {e}")),
            }
        }
    }

    fn expect_ok(&mut self, args: &[&str]) -> Result<(), String> {
        match self.call(args)? {
            Value::Simple(ok) if ok == b"OK" => Ok(()),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }
}
