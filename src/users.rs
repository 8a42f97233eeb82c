//! `ringport user add|del|list|passwd`: user management against the configured store.

use std::io::{BufRead, IsTerminal, Write};

use crate::auth;
use crate::config::{UserAction, UserArgs};
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

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic())
}

/// Runs one user action; the message on error says what went wrong.
pub fn run(args: UserArgs) -> Result<(), String> {
    let spec = StoreSpec::parse(args.store.store.as_deref(), &args.store.data)
        .map_err(|e| format!("--store: {e}"))?;
    let backend = store::open(&spec).map_err(|e| format!("cannot open the store: {e}"))?;
    let mut conn = backend
        .connect()
        .map_err(|e| format!("cannot connect to the store: {e}"))?;
    match args.action {
        UserAction::Add { name } => {
            if !valid_name(&name) {
                return Err(format!(
                    "invalid user name '{name}': use 1-128 printable characters without spaces"
                ));
            }
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
                if user.disabled {
                    println!("{} (disabled)", user.name);
                } else {
                    println!("{}", user.name);
                }
            }
        }
    }
    Ok(())
}
