//! Users managed while the server runs, in Redis's ACL words where they fit: the rules of
//! `ACL SETUSER` this server has, and what SETUSER, DELUSER, LIST, USERS and GETUSER do to the
//! store and to the in-memory user table. Used by the ACL command (`commands::acl`) and by the
//! admin socket (`adminsock`), so a change means the same through either.
//!
//! A user here is a name, one password (an argon2id hash), on or off, and admin or not. Every
//! user may run every command on its own keys; an admin may also manage users. Passwords are
//! never shown, not even hashed.

use crate::auth;
use crate::msg::KillFilter;
use crate::shared::Shared;
use crate::store::{Conn, StoreError, UserRecord, UserSink};
use crate::userdir::UserDirectory;

/// A user name `ringport user` and ACL SETUSER accept: 1-128 printable ASCII characters, no
/// spaces (so a name can never be mistaken for the next argument anywhere it is printed).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic())
}

/// One rule of `ACL SETUSER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `on`: may authenticate.
    On,
    /// `off`: may not.
    Off,
    /// `>password`: the password (it replaces the one before: a user has one).
    Password(Vec<u8>),
    /// `resetpass` (or `nopass`-less reset): no password, so no AUTH succeeds.
    ResetPass,
    /// `+@admin`, `+@all`, `allcommands`: may manage users. `-@admin`, `-@all`, `nocommands`:
    /// may not.
    Admin(bool),
    /// `reset`: off, no password, not an admin.
    Reset,
}

/// Parses SETUSER's rules, Redis's error for the first it does not know.
pub fn parse_rules(args: &[Vec<u8>]) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::with_capacity(args.len());
    for arg in args {
        let text = String::from_utf8_lossy(arg);
        rules.push(match text.to_ascii_lowercase().as_str() {
            "on" => Rule::On,
            "off" => Rule::Off,
            "resetpass" => Rule::ResetPass,
            "reset" => Rule::Reset,
            "+@admin" | "+@all" | "allcommands" => Rule::Admin(true),
            "-@admin" | "-@all" | "nocommands" => Rule::Admin(false),
            // Every user reaches all of its own keys: these change nothing here.
            "~*" | "allkeys" | "&*" | "allchannels" | "resetchannels" => continue,
            _ if arg.first() == Some(&b'>') => Rule::Password(arg[1..].to_vec()),
            _ => {
                return Err(format!(
                    "ERR Error in ACL SETUSER modifier '{text}': Syntax error"
                ))
            }
        });
    }
    Ok(rules)
}

/// Why a change was refused.
#[derive(Debug)]
pub enum AclError {
    /// The store failed; the reply is the store's usual error.
    Store(StoreError),
    /// The request makes no sense or would lock everyone out: the `-ERR` line to answer.
    Refused(String),
}

impl From<StoreError> for AclError {
    fn from(error: StoreError) -> AclError {
        AclError::Store(error)
    }
}

impl AclError {
    /// The error line for the reply, without `-` and CRLF.
    pub fn resp_message(&self) -> String {
        match self {
            AclError::Store(e) => e.resp_message().into_owned(),
            AclError::Refused(message) => message.clone(),
        }
    }
}

/// Whether some user other than `except` is an enabled admin.
fn another_admin(users: &UserDirectory, except: &str) -> bool {
    users
        .all()
        .iter()
        .any(|(name, user)| name != except && user.admin && !user.disabled)
}

/// ACL SETUSER: creates the user (off, without a password, not an admin, as Redis creates one)
/// or changes it, durably, and updates the user table at once so the next AUTH anywhere on
/// this instance sees it (other instances see it through the store within a second).
pub fn setuser(
    conn: &mut dyn Conn,
    users: &UserDirectory,
    name: &str,
    rules: &[Rule],
) -> Result<(), AclError> {
    if !valid_name(name) {
        return Err(AclError::Refused(
            "ERR invalid user name: use 1-128 printable characters without spaces".into(),
        ));
    }
    let mut record = conn.user(name)?.unwrap_or_else(|| UserRecord {
        name: name.to_string(),
        hash: String::new(),
        disabled: true,
        admin: false,
    });
    for rule in rules {
        match rule {
            Rule::On => record.disabled = false,
            Rule::Off => record.disabled = true,
            Rule::Password(password) => record.hash = auth::hash_password(password),
            Rule::ResetPass => record.hash = String::new(),
            Rule::Admin(admin) => record.admin = *admin,
            Rule::Reset => {
                record.disabled = true;
                record.hash = String::new();
                record.admin = false;
            }
        }
    }
    let was_admin = users.get(name).is_some_and(|u| u.admin && !u.disabled);
    if was_admin && (record.disabled || !record.admin) && !another_admin(users, name) {
        return Err(AclError::Refused(format!(
            "ERR '{name}' is the last enabled admin: make another user an admin first"
        )));
    }
    conn.put_user(&record)?;
    users.update(name, Some(record));
    Ok(())
}

/// ACL DELUSER: deletes the users named, durably, and closes their open sessions (as Redis
/// does). Returns how many existed.
pub fn deluser(conn: &mut dyn Conn, shared: &Shared, names: &[String]) -> Result<i64, AclError> {
    let users = &shared.users;
    let admins_left = users
        .all()
        .iter()
        .filter(|(name, user)| user.admin && !user.disabled && !names.contains(name))
        .count();
    if admins_left == 0
        && names
            .iter()
            .any(|n| users.get(n).is_some_and(|u| u.admin && !u.disabled))
    {
        return Err(AclError::Refused(
            "ERR that would delete the last enabled admin: make another user an admin first".into(),
        ));
    }
    let mut deleted = 0;
    for name in names {
        if conn.del_user(name)? {
            deleted += 1;
        }
        users.update(name, None);
        shared.kill_sessions(&KillFilter {
            user: Some(name.clone()),
            ..KillFilter::default()
        });
    }
    Ok(deleted)
}

/// ACL USERS: every name, sorted.
pub fn names(users: &UserDirectory) -> Vec<String> {
    users.all().into_iter().map(|(name, _)| name).collect()
}

/// The commands part of a user's description: all, or all but user management.
fn commands_of(admin: bool) -> &'static str {
    if admin {
        "+@all"
    } else {
        "+@all -@admin"
    }
}

/// ACL LIST: one line per user, in ACL SETUSER's words.
pub fn list(users: &UserDirectory) -> Vec<String> {
    users
        .all()
        .into_iter()
        .map(|(name, user)| {
            format!(
                "user {name} {} ~* resetchannels {}",
                if user.disabled { "off" } else { "on" },
                commands_of(user.admin)
            )
        })
        .collect()
}

/// ACL GETUSER's fields for `name` (flags, passwords, commands, keys, channels, selectors), or
/// `None` for no such user. `passwords` is always empty: they are never shown.
pub fn describe(users: &UserDirectory, name: &str) -> Option<UserDescription> {
    let user = users.get(name)?;
    Some(UserDescription {
        flags: vec![if user.disabled { "off" } else { "on" }],
        commands: commands_of(user.admin),
    })
}

/// What ACL GETUSER says of a user.
pub struct UserDescription {
    pub flags: Vec<&'static str>,
    pub commands: &'static str,
}

/// Whether `user` may manage users now (as the user table says: a change applies at once).
pub fn is_admin(users: &UserDirectory, user: &str) -> bool {
    users.get(user).is_some_and(|u| u.admin && !u.disabled)
}
