//! ACL: WHOAMI for every user; SETUSER, DELUSER, LIST, USERS and GETUSER for admins
//! ([`crate::acl`] says what they do). Reads answer from the user table on the ring; changes run
//! on a store worker (a password is hashed there) and answer after the store committed. The
//! admin socket (`adminsock`) answers through [`read_reply`] and [`change_reply`] too.

use std::time::Duration;

use crate::acl::{self, AclError};
use crate::resp::{self, Args, Proto};
use crate::shared::Shared;
use crate::store::{Conn as StoreConn, StoreError};
use crate::storepool::StoreWork;

use super::{err, lower, truncate, Call};

/// The error for a subcommand ACL does not have, or a wrong count of arguments; `None` when
/// `args` (ACL included) is a well-formed ACL request.
pub fn check(args: &[Vec<u8>]) -> Option<String> {
    let sub = lower(&args[1]);
    let argc = args.len();
    let arity_ok = match sub.as_str() {
        "whoami" | "users" | "list" => argc == 2,
        "getuser" => argc == 3,
        "setuser" | "deluser" => argc >= 3,
        _ => {
            return Some(format!(
                "ERR unknown subcommand '{}'. Try ACL HELP.",
                String::from_utf8_lossy(&truncate(&args[1], 128))
            ))
        }
    };
    (!arity_ok).then(|| format!("ERR wrong number of arguments for 'acl|{sub}' command"))
}

pub(super) fn acl(call: &mut Call<'_, '_>, args: &Args) {
    let argv = args.to_vecs();
    if let Some(message) = check(&argv) {
        return err(call.out(), &message);
    }
    let sub = lower(&args[1]);
    let owner = call.owner();
    if sub == "whoami" {
        return resp::bulk(call.out(), owner.as_bytes());
    }
    let shared = call.shared.clone();
    if !acl::is_admin(&shared.users, &owner) {
        return err(
            call.out(),
            &format!("NOPERM this user has no permissions to run the 'acl|{sub}' command"),
        );
    }
    let proto = call.proto();
    if let Some(reply) = read_reply(&shared, &argv, proto) {
        return call.out().extend_from_slice(&reply);
    }
    let replier = call.replier();
    let job = Box::new(move |conn: Result<&mut dyn StoreConn, StoreError>| {
        replier.reply(change_reply(&shared, conn, &argv));
    });
    call.offload_store(StoreWork::Job(job), Duration::ZERO);
}

/// The encoded reply to a well-formed ACL request ([`check`]) from an admin that only reads the
/// user table (USERS, LIST, GETUSER, WHOAMI): cheap, fit for a ring. `None` for a change.
pub fn read_reply(shared: &Shared, args: &[Vec<u8>], proto: Proto) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match lower(&args[1]).as_str() {
        "users" => strings(&mut out, acl::names(&shared.users)),
        "list" => strings(&mut out, acl::list(&shared.users)),
        "getuser" => getuser(&mut out, &shared.users, &text(&args[2]), proto),
        "whoami" => resp::bulk(&mut out, b"admin-socket"),
        _ => return None,
    }
    Some(out)
}

/// The encoded reply to an admin's SETUSER or DELUSER. Blocks on the store (and on argon2id):
/// never call it on a ring.
pub fn change_reply(
    shared: &Shared,
    conn: Result<&mut dyn StoreConn, StoreError>,
    args: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = Vec::new();
    let done = conn.map_err(AclError::Store).and_then(|conn| {
        if lower(&args[1]) == "setuser" {
            let rules = acl::parse_rules(&args[3..]).map_err(AclError::Refused)?;
            acl::setuser(conn, &shared.users, &text(&args[2]), &rules)
                .map(|()| resp::simple(&mut out, b"OK"))
        } else {
            let names: Vec<String> = args[2..].iter().map(|a| text(a)).collect();
            acl::deluser(conn, shared, &names).map(|n| resp::integer(&mut out, n))
        }
    });
    if let Err(error) = done {
        if let AclError::Store(e) = &error {
            shared.store.note_error(e);
        }
        resp::error(&mut out, error.resp_message().as_bytes());
    }
    out
}

fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

fn strings(out: &mut Vec<u8>, items: Vec<String>) {
    resp::array_len(out, items.len());
    for item in items {
        resp::bulk(out, item.as_bytes());
    }
}

/// ACL GETUSER's reply, shaped as Redis 7's (a map in RESP3, a flat array in RESP2).
fn getuser(out: &mut Vec<u8>, users: &crate::userdir::UserDirectory, name: &str, proto: Proto) {
    let Some(user) = acl::describe(users, name) else {
        return resp::null(out, proto);
    };
    resp::map_len(out, 6, proto);
    resp::bulk(out, b"flags");
    strings(out, user.flags.iter().map(|f| f.to_string()).collect());
    resp::bulk(out, b"passwords");
    resp::array_len(out, 0);
    // Every user reaches all of its own keys and no channels exist: fixed answers.
    for (field, value) in [
        (&b"commands"[..], user.commands.as_bytes()),
        (b"keys", b"~*"),
        (b"channels", b""),
    ] {
        resp::bulk(out, field);
        resp::bulk(out, value);
    }
    resp::bulk(out, b"selectors");
    resp::array_len(out, 0);
}
