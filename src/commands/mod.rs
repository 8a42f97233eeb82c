//! Every command's execution.
//!
//! [`execute`] runs on the ring: it checks the AUTH gate and the arity against the command
//! table ([`crate::table`]), then either answers at once (inline commands) or sends a job to the
//! compute or store pool and marks the session `Waiting`. Pool jobs build the whole encoded reply
//! off the ring and send it back as a [`Msg`]. Error wording follows Redis 7.
//!
//! Handlers work through [`Call`] alone; the session calls down into [`execute`] and
//! [`finish_auth`], never the other way.

pub mod acl;
pub mod api;
mod call;
mod glob;
mod keyspace;
mod long_double;
mod multi;
pub mod sql;
mod strings;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::auth;
use crate::conn::State;
use crate::msg::{
    AfterAuth, AuthOutcome, ClientType, KillFilter, ListFilter, Msg, Replier, INTERNAL_ERROR,
};
use crate::resp::{self, encode_value, parse_i64, Args, Proto};
use crate::shared::Shared;
use crate::store::{Conn as StoreConn, StoreError};
use crate::storepool::{GetWork, SetWork, StoreWork};
use crate::table::{arity_ok, Class, Spec, Table};

use api::{Argv, CommandDef, Handler, Inline, Reply, Request, StoreCtx};
pub use call::Call;
use call::BUSY;

fn err(out: &mut Vec<u8>, msg: &str) {
    resp::error(out, msg.as_bytes());
}

fn lower(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

/// Redis 7's reply for an unknown command: the name (up to 128 bytes), then the arguments,
/// each quoted, while the list is shorter than 128 bytes, each cut to what is left of the 128
/// and at its first NUL (`processCommand`'s loop, byte for byte).
fn unknown_command(out: &mut Vec<u8>, args: &Args) {
    let mut message = b"ERR unknown command '".to_vec();
    message.extend(c_str(&args[0]).iter().take(128));
    message.extend_from_slice(b"', with args beginning with: ");
    let mut quoted: Vec<u8> = Vec::new();
    for arg in args.iter().skip(1) {
        if quoted.len() >= 128 {
            break;
        }
        let room = 128 - quoted.len();
        quoted.push(b'\'');
        quoted.extend(c_str(arg).iter().take(room));
        quoted.extend_from_slice(b"' ");
    }
    message.extend_from_slice(&quoted);
    resp::error(out, &message);
}

fn truncate(arg: &[u8], n: usize) -> Vec<u8> {
    c_str(arg).iter().take(n).copied().collect()
}

/// An argument as C's `%s` prints it, up to its first NUL byte: Redis formats the arguments it
/// quotes in error replies that way.
fn c_str(arg: &[u8]) -> &[u8] {
    arg.split(|&byte| byte == 0).next().unwrap_or(arg)
}

pub(crate) use api::NOT_INTEGER;

/// Flags shared by the connection commands that work before AUTH.
const NO_AUTH_FLAGS: [&str; 4] = ["noscript", "loading", "stale", "fast"];

fn with_flags(mut def: CommandDef, flags: &[&'static str]) -> CommandDef {
    for flag in flags {
        def = def.flag(flag);
    }
    def
}

/// Every built-in command, defined as any other command is.
pub fn builtins() -> Vec<CommandDef> {
    use Class::{Compute, Inline as OnRing, Store};
    let connection = |def: CommandDef, flags: &[&'static str]| {
        with_flags(def, flags)
            .group("connection")
            .origin("built-in")
    };
    let keyspace = |def: CommandDef, flags: &[&'static str]| {
        with_flags(def, flags).group("generic").origin("built-in")
    };
    let transactions = |def: CommandDef, flags: &[&'static str]| {
        with_flags(def, flags)
            .group("transactions")
            .origin("built-in")
    };
    let string = |def: CommandDef, flags: &[&'static str], keys: (i32, i32, i32)| {
        with_flags(def, flags)
            .keys(keys.0, keys.1, keys.2)
            .group("string")
            .origin("built-in")
    };
    vec![
        connection(
            CommandDef::session("auth", -2, Compute, auth_command),
            &NO_AUTH_FLAGS,
        )
        .before_auth()
        .summary("Authenticates the connection."),
        connection(
            CommandDef::session("hello", -1, OnRing, hello),
            &NO_AUTH_FLAGS,
        )
        .before_auth()
        .summary("Handshakes with the server: protocol version, authentication, client name."),
        connection(
            CommandDef::session("quit", -1, OnRing, quit),
            &NO_AUTH_FLAGS,
        )
        .before_auth()
        .summary("Closes the connection."),
        connection(CommandDef::session("ping", -1, OnRing, ping), &["fast"])
            .summary("Returns PONG, or the message given."),
        connection(
            CommandDef::inline("echo", 2, |cx| Reply::bulk(cx.arg(1))),
            &["fast"],
        )
        .summary("Returns the message given."),
        connection(
            CommandDef::session("client", -2, OnRing, client),
            &["noscript", "loading", "stale"],
        )
        .summary("Connection commands: ID, SETNAME, GETNAME, SETINFO, INFO, LIST, KILL."),
        connection(
            CommandDef::session("debug", -2, OnRing, debug),
            &["admin", "noscript", "loading", "stale"],
        )
        .summary("A container for debugging commands (only with --enable-debug-command)."),
        connection(
            CommandDef::inline("select", 2, |cx| match cx.arg_i64(1) {
                Ok(0) => Reply::ok(),
                Ok(_) => Reply::err("DB index is out of range"),
                Err(not_integer) => not_integer,
            }),
            &["loading", "stale", "fast"],
        )
        .summary("Selects database 0 (the only one)."),
        connection(
            CommandDef::session("command", -1, OnRing, command),
            &["loading", "stale"],
        )
        .summary("Describes the commands: COUNT, DOCS, INFO, LIST."),
        connection(
            CommandDef::session("info", -1, OnRing, info),
            &["loading", "stale"],
        )
        .summary("Server information and statistics."),
        connection(
            CommandDef::session("acl", -2, OnRing, acl::acl),
            &["noscript", "loading", "stale"],
        )
        .summary("Users: WHOAMI; for admins SETUSER, DELUSER, LIST, USERS, GETUSER."),
        connection(CommandDef::compute("hash", 3, hash), &[])
            .summary("HASH rounds data: sha256 applied rounds times, as lowercase hex."),
        string(
            CommandDef::session("get", 2, Store, get),
            &["readonly", "fast"],
            (1, 1, 1),
        )
        .summary("Gets the value of a key."),
        string(
            CommandDef::session("set", -3, Store, set),
            &["write", "denyoom"],
            (1, 1, 1),
        )
        .summary("Sets the value of a key: NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL."),
        string(CommandDef::store("del", -2, del), &["write"], (1, -1, 1))
            .summary("Deletes keys; replies with how many existed."),
        string(
            CommandDef::store("exists", -2, exists),
            &["readonly", "fast"],
            (1, -1, 1),
        )
        .summary("Counts the keys that exist."),
        string(
            CommandDef::store("incr", 2, |ctx| incr_by(ctx, 1)),
            &["write", "denyoom", "fast"],
            (1, 1, 1),
        )
        .summary("Increments the integer value of a key by one."),
        string(
            CommandDef::store("incrby", 3, |ctx| {
                let delta = parse_i64(ctx.request().arg(2)).ok_or(StoreError::NotInteger)?;
                incr_by(ctx, delta)
            }),
            &["write", "denyoom", "fast"],
            (1, 1, 1),
        )
        .summary("Increments the integer value of a key."),
        string(
            CommandDef::session("mget", -2, Store, mget),
            &["readonly", "fast"],
            (1, -1, 1),
        )
        .summary("Gets the values of keys."),
        string(
            CommandDef::store("mset", -3, mset),
            &["write", "denyoom"],
            (1, -1, 2),
        )
        .summary("Sets several keys at once."),
        string(
            CommandDef::store("decr", 2, |ctx| incr_by(ctx, -1)),
            &["write", "denyoom", "fast"],
            (1, 1, 1),
        )
        .summary("Decrements the integer value of a key by one."),
        string(
            CommandDef::store("decrby", 3, strings::decrby),
            &["write", "denyoom", "fast"],
            (1, 1, 1),
        )
        .summary("Decrements the integer value of a key."),
        string(
            CommandDef::store("incrbyfloat", 3, strings::incrbyfloat),
            &["write", "denyoom", "fast"],
            (1, 1, 1),
        )
        .summary("Increments the floating point value of a key."),
        string(
            CommandDef::store("unlink", -2, del),
            &["write", "fast"],
            (1, -1, 1),
        )
        .summary("Deletes keys; replies with how many existed."),
        string(
            CommandDef::store("setex", 4, strings::setex),
            &["write", "denyoom"],
            (1, 1, 1),
        )
        .summary("Sets the value and the expiry (seconds) of a key."),
        string(
            CommandDef::store("psetex", 4, strings::psetex),
            &["write", "denyoom"],
            (1, 1, 1),
        )
        .summary("Sets the value and the expiry (milliseconds) of a key."),
        string(
            CommandDef::store("setnx", 3, strings::setnx),
            &["write", "denyoom", "fast"],
            (1, 1, 1),
        )
        .summary("Sets a key only if it does not exist."),
        string(
            CommandDef::store("getex", -2, strings::getex),
            &["write", "fast"],
            (1, 1, 1),
        )
        .summary("Gets a value and sets or removes its expiry."),
        string(
            CommandDef::store("getdel", 2, strings::getdel),
            &["write", "fast"],
            (1, 1, 1),
        )
        .summary("Gets a value and deletes its key."),
        string(
            CommandDef::store("expire", -3, strings::expire),
            &["write", "fast"],
            (1, 1, 1),
        )
        .summary("Sets a key's expiry in seconds: NX, XX, GT, LT."),
        string(
            CommandDef::store("pexpire", -3, strings::pexpire),
            &["write", "fast"],
            (1, 1, 1),
        )
        .summary("Sets a key's expiry in milliseconds: NX, XX, GT, LT."),
        string(
            CommandDef::store("expireat", -3, strings::expireat),
            &["write", "fast"],
            (1, 1, 1),
        )
        .summary("Sets a key's expiry as a Unix time in seconds: NX, XX, GT, LT."),
        string(
            CommandDef::store("pexpireat", -3, strings::pexpireat),
            &["write", "fast"],
            (1, 1, 1),
        )
        .summary("Sets a key's expiry as a Unix time in milliseconds: NX, XX, GT, LT."),
        string(
            CommandDef::store("ttl", 2, strings::ttl),
            &["readonly", "fast"],
            (1, 1, 1),
        )
        .summary("A key's time to live in seconds."),
        string(
            CommandDef::store("pttl", 2, strings::pttl),
            &["readonly", "fast"],
            (1, 1, 1),
        )
        .summary("A key's time to live in milliseconds."),
        string(
            CommandDef::store("persist", 2, strings::persist),
            &["write", "fast"],
            (1, 1, 1),
        )
        .summary("Removes a key's expiry."),
        string(
            CommandDef::store("append", 3, strings::append),
            &["write", "denyoom", "fast"],
            (1, 1, 1),
        )
        .summary("Appends to a key's value; replies with the new length."),
        string(
            CommandDef::store("strlen", 2, strings::strlen),
            &["readonly", "fast"],
            (1, 1, 1),
        )
        .summary("The length of a key's value."),
        string(
            CommandDef::store("getrange", 4, strings::getrange),
            &["readonly"],
            (1, 1, 1),
        )
        .summary("A substring of a key's value."),
        string(
            CommandDef::store("setrange", 4, strings::setrange),
            &["write", "denyoom"],
            (1, 1, 1),
        )
        .summary("Overwrites part of a key's value at an offset."),
        string(
            CommandDef::store("msetnx", -3, strings::msetnx),
            &["write", "denyoom"],
            (1, -1, 2),
        )
        .summary("Sets several keys, only if none of them exists."),
        string(
            CommandDef::store("type", 2, strings::type_of),
            &["readonly", "fast"],
            (1, 1, 1),
        )
        .summary("The type of a key's value: string, or none."),
        string(
            CommandDef::store("rename", 3, strings::rename),
            &["write"],
            (1, 2, 1),
        )
        .summary("Renames a key, replacing any key of the new name."),
        string(
            CommandDef::store("renamenx", 3, strings::renamenx),
            &["write", "fast"],
            (1, 2, 1),
        )
        .summary("Renames a key, only if the new name is free."),
        keyspace(CommandDef::store("scan", -2, keyspace::scan), &["readonly"])
            .summary("Iterates over your keys: MATCH, COUNT, TYPE."),
        keyspace(CommandDef::store("keys", 2, keyspace::keys), &["readonly"])
            .summary("Your keys that match a glob pattern."),
        keyspace(
            CommandDef::store("dbsize", 1, keyspace::dbsize),
            &["readonly", "fast"],
        )
        .summary("How many keys you have."),
        keyspace(
            CommandDef::store("flushdb", -1, keyspace::flushdb),
            &["write"],
        )
        .summary("Deletes all your keys (ASYNC and SYNC both commit before the reply)."),
        keyspace(
            CommandDef::store("randomkey", 1, keyspace::randomkey),
            &["readonly"],
        )
        .summary("One of your keys, at random."),
        transactions(
            CommandDef::session("multi", 1, OnRing, multi::multi),
            &["noscript", "loading", "stale", "fast"],
        )
        .summary("Starts a transaction: commands are queued until EXEC."),
        transactions(
            CommandDef::session("exec", 1, Store, multi::exec),
            &["noscript", "loading", "stale"],
        )
        .summary("Runs the queued commands, the store ones as one store transaction."),
        transactions(
            CommandDef::session("discard", 1, OnRing, multi::discard),
            &["noscript", "loading", "stale", "fast"],
        )
        .summary("Discards the queued commands."),
        transactions(
            CommandDef::session("watch", -2, Store, multi::watch),
            &["noscript", "loading", "stale", "fast"],
        )
        .keys(1, -1, 1)
        .summary("EXEC aborts if any of these keys changes before it."),
        transactions(
            CommandDef::session("unwatch", 1, OnRing, multi::unwatch),
            &["noscript", "loading", "stale", "fast"],
        )
        .summary("Forgets the WATCHed keys."),
        connection(CommandDef::session("sleep", 2, Store, sleep), &[])
            .summary("SLEEP ms: a store call that takes ms milliseconds."),
    ]
}

/// Executes one parsed command on the ring (inside MULTI: queues it).
pub fn execute(call: &mut Call<'_, '_>, args: &Args) {
    debug_assert_ne!(
        call.conn().state,
        State::Waiting,
        "a command ran while another was pending"
    );
    // The reference, not the Arc: `spec` borrows the table for the whole call, and a clone here
    // would cost two locked instructions per command.
    let shared: &Arc<Shared> = call.shared;
    let handlers = call.handlers;
    let hint = call.conn().last_command;
    let Some((index, spec)) = shared.table.lookup_hinted(hint, &args[0]) else {
        if !call.conn().authenticated {
            err(call.out(), "NOAUTH Authentication required.");
        } else {
            unknown_command(call.out(), args);
            multi::refused_while_queueing(call);
        }
        call.shared.record_unknown(call.cx.ring);
        return;
    };
    if !call.conn().authenticated && !spec.before_auth {
        err(call.out(), "NOAUTH Authentication required.");
        call.shared
            .record_command_at(call.cx.ring, index, call.cx.now, true);
        return;
    }
    if !arity_ok(spec, args.len()) {
        let message = format!("wrong number of arguments for '{}' command", spec.name);
        if spec.name == "exec" {
            multi::abort_exec(call, &message);
        } else {
            err(call.out(), &format!("ERR {message}"));
            multi::refused_while_queueing(call);
        }
        call.shared
            .record_command_at(call.cx.ring, index, call.cx.now, true);
        return;
    }
    if call.conn().in_multi() && !multi::runs_inside_multi(spec.name) {
        multi::queue(call, spec, &handlers.0[index], args);
        return;
    }
    call.conn_mut().last_command = Table::compact(index);
    let before = call.out().len();
    match &handlers.0[index] {
        Handler::Session(f) => f(call, args),
        Handler::Inline(f) => run_inline(call, spec, f.as_ref(), args),
        Handler::Compute(f) => {
            let (f, request, replier) = (f.clone(), Request::of(call, args), call.replier());
            let limit = call.shared.config.max_output_buffer;
            call.offload_compute(Box::new(move || {
                send_reply(&replier, &f(&request), request.proto(), limit)
            }));
        }
        Handler::Worker(pool) => {
            let (owner, proto, replier) = (call.owner(), call.proto(), call.replier());
            let argv = args.to_vecs();
            let submitted = pool.submit(&owner, spec.name, &argv, proto, replier);
            call.waiting_unless_busy(submitted.is_ok());
        }
        Handler::Store(f) => {
            let f = f.clone();
            offload_store_handler(call, args, move |ctx| f(ctx));
        }
    }
    if call.conn().state != State::Waiting {
        let failed = call.out().get(before) == Some(&b'-');
        call.shared
            .record_command_at(call.cx.ring, index, call.cx.now, failed);
    }
}

/// Runs a store handler for this command on the store pool; its reply leaves once it returned,
/// so after anything it wrote has committed.
fn offload_store_handler(
    call: &mut Call<'_, '_>,
    args: &Args,
    f: impl FnOnce(&mut StoreCtx<'_>) -> Result<Reply, StoreError> + Send + 'static,
) {
    let (request, replier) = (Request::of(call, args), call.replier());
    let shared = call.shared.clone();
    let job = Box::new(move |conn: Result<&mut dyn StoreConn, StoreError>| {
        match conn.and_then(|c| f(&mut StoreCtx::new(&request, c))) {
            Ok(reply) => send_reply(
                &replier,
                &reply,
                request.proto(),
                shared.config.max_output_buffer,
            ),
            Err(e) => store_failed(&shared, replier, &e),
        }
    });
    call.offload_store(StoreWork::Job(job), Duration::ZERO);
}

/// Runs an inline handler; a panic answers this command alone (the handler holds nothing of
/// the ring's, so the ring's state is whole).
fn run_inline(call: &mut Call<'_, '_>, spec: &Spec, f: &api::InlineFn, args: &Args) {
    let reply = crate::pool::contain(|| f(&Inline::of(call, args)));
    match reply {
        Ok(reply) => {
            let proto = call.proto();
            encode_value(call.out(), &reply, proto);
        }
        Err(_) => {
            tracing::error!(command = spec.name, "an inline command panicked");
            call.out().extend_from_slice(INTERNAL_ERROR);
        }
    }
}

/// Encodes a pool job's reply and sends it, unless it alone would pass the output limit (the
/// ring would close the session for it).
fn send_reply(replier: &Replier, reply: &Reply, proto: Proto, limit: usize) {
    let mut out = Vec::new();
    encode_value(&mut out, reply, proto);
    if out.len() > limit {
        replier.over_output_limit();
    } else {
        replier.reply(out);
    }
}

fn quit(call: &mut Call<'_, '_>, _args: &Args) {
    resp::simple(call.out(), b"OK");
    call.close_after_flush();
}

fn info(call: &mut Call<'_, '_>, args: &Args) {
    let text = crate::info::render(call.shared, args.iter().skip(1));
    let proto = call.proto();
    resp::verbatim(call.out(), b"txt", text.as_bytes(), proto);
}

fn ping(call: &mut Call<'_, '_>, args: &Args) {
    match args.len() {
        1 => resp::simple(call.out(), b"PONG"),
        2 => resp::bulk(call.out(), &args[1]),
        _ => err(
            call.out(),
            "ERR wrong number of arguments for 'ping' command",
        ),
    }
}

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn client(call: &mut Call<'_, '_>, args: &Args) {
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("id", 2) => {
            let id = call.conn().client_id as i64;
            resp::integer(call.out(), id)
        }
        ("getname", 2) => match call.conn().name().map(<[u8]>::to_vec) {
            Some(name) => resp::bulk(call.out(), &name),
            None => {
                let proto = call.proto();
                resp::null(call.out(), proto)
            }
        },
        ("setname", 3) => {
            if valid_client_name(&args[2]) {
                call.conn_mut().names_mut().name = if args[2].is_empty() {
                    None
                } else {
                    Some(args[2].to_vec())
                };
                resp::simple(call.out(), b"OK");
            } else {
                err(
                    call.out(),
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
        }
        ("setinfo", 4) => {
            let attr = lower(&args[2]);
            let value = args[3].to_vec();
            if !valid_client_name(&value) && !value.is_empty() {
                err(
                    call.out(),
                    &format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        attr
                    ),
                );
                return;
            }
            match attr.as_str() {
                "lib-name" => {
                    call.conn_mut().names_mut().lib_name = Some(value);
                    resp::simple(call.out(), b"OK");
                }
                "lib-ver" => {
                    call.conn_mut().names_mut().lib_ver = Some(value);
                    resp::simple(call.out(), b"OK");
                }
                _ => err(
                    call.out(),
                    &format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(&args[2])
                    ),
                ),
            }
        }
        ("info", 2) => {
            let line = call.client_info_line();
            let proto = call.proto();
            resp::verbatim(call.out(), b"txt", line.as_bytes(), proto);
        }
        ("list", _) => client_list(call, args),
        ("kill", n) if n >= 3 => client_kill(call, args),
        ("id" | "getname" | "setname" | "setinfo" | "info" | "kill", _) => err(
            call.out(),
            &format!("ERR wrong number of arguments for 'client|{sub}' command"),
        ),
        _ => err(
            call.out(),
            &format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&truncate(&args[1], 128))
            ),
        ),
    }
}

/// The user whose sessions alone a session may see and close in CLIENT LIST / KILL: its own,
/// unless it is an admin (`None`: every session). docs/security.md: an authenticated user must
/// not deny service to other sessions, and does not learn who else is connected.
fn client_owner(call: &Call<'_, '_>) -> Option<Arc<str>> {
    // CLIENT needs AUTH, so a session always has a user here; were one ever to lack it, the
    // empty name (no user's, never an admin's) keeps it from seeing or closing any session.
    let user = call.conn().user.clone().unwrap_or_else(|| Arc::from(""));
    if crate::acl::is_admin(&call.shared.users, &user) {
        None
    } else {
        Some(user)
    }
}

/// `CLIENT LIST [TYPE type | ID id ...]`, Redis 7.0's forms. Asks every ring for its sessions
/// on the compute pool (the job waits for the rings; the rings never wait for each other).
fn client_list(call: &mut Call<'_, '_>, args: &Args) {
    let mut filter = ListFilter {
        owner: client_owner(call),
        ..ListFilter::default()
    };
    // `ID` lists in the order asked, repeats included, as Redis does.
    let mut asked: Option<Vec<i64>> = None;
    if args.len() == 4 && args[2].eq_ignore_ascii_case(b"type") {
        match ClientType::parse(&args[3]) {
            Some(kind) => filter.client_type = Some(kind),
            None => {
                return err(
                    call.out(),
                    &format!(
                        "ERR Unknown client type '{}'",
                        String::from_utf8_lossy(&args[3])
                    ),
                )
            }
        }
    } else if args.len() > 3 && args[2].eq_ignore_ascii_case(b"id") {
        let mut ids = Vec::with_capacity(args.len() - 3);
        for arg in args.iter().skip(3) {
            match parse_i64(arg) {
                Some(id) => ids.push(id),
                None => return err(call.out(), "ERR Invalid client ID"),
            }
        }
        let mut wanted: Vec<u64> = ids
            .iter()
            .filter_map(|&id| u64::try_from(id).ok())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        filter.ids = Some(wanted);
        asked = Some(ids);
    } else if args.len() != 2 {
        return err(call.out(), "ERR syntax error");
    }
    let shared = call.shared.clone();
    let replier = call.replier();
    let proto = call.proto();
    let job = Box::new(move || {
        let (tx, rx) = crossbeam_channel::unbounded();
        for ring in &shared.ring_senders {
            ring.send_ring(Msg::ListClients(filter.clone(), tx.clone()));
        }
        drop(tx);
        let mut found = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for _ in 0..shared.ring_senders.len() {
            match rx.recv_deadline(deadline) {
                Ok(lines) => found.extend(lines),
                Err(_) => break,
            }
        }
        let text: String = match asked {
            None => found.into_iter().map(|(_, line)| line).collect(),
            Some(ids) => {
                let lines: HashMap<u64, String> = found.into_iter().collect();
                ids.iter()
                    .filter_map(|&id| lines.get(&u64::try_from(id).ok()?))
                    .map(String::as_str)
                    .collect()
            }
        };
        let mut reply = Vec::with_capacity(text.len() + 16);
        resp::verbatim(&mut reply, b"txt", text.as_bytes(), proto);
        replier.reply(reply);
    });
    call.offload_compute(job);
}

/// `CLIENT KILL addr` (old form: +OK or an error) or `CLIENT KILL ID n | TYPE t | ADDR a |
/// LADDR a | USER u | SKIPME yes|no ...` (new form: the number killed), across every ring. A
/// non-admin's kill only ever matches sessions of its own user.
fn client_kill(call: &mut Call<'_, '_>, args: &Args) {
    let owner = client_owner(call);
    let mut filter = KillFilter {
        owner: owner.clone(),
        ..KillFilter::default()
    };
    let old_form = args.len() == 3;
    // With the old form, as with SKIPME no, a session may name itself.
    let mut skip_self = !old_form;
    if old_form {
        filter.addr = Some(String::from_utf8_lossy(&args[2]).into_owned());
    } else {
        // Options are checked in order, so the first bad one decides the error, as in Redis.
        for at in (2..args.len()).step_by(2) {
            let Some(arg) = args.get(at + 1) else {
                return err(call.out(), "ERR syntax error");
            };
            let value = String::from_utf8_lossy(arg).into_owned();
            match lower(&args[at]).as_str() {
                "id" => match parse_i64(arg) {
                    Some(n) if n > 0 => filter.id = Some(n as u64),
                    _ => return err(call.out(), "ERR client-id should be greater than 0"),
                },
                "type" => match ClientType::parse(arg) {
                    Some(kind) => filter.client_type = Some(kind),
                    None => return err(call.out(), &format!("ERR Unknown client type '{value}'")),
                },
                "addr" => filter.addr = Some(value),
                "laddr" => filter.laddr = Some(value),
                "user" => {
                    // A non-admin naming someone else matches nothing whether that user
                    // exists or not: CLIENT KILL must not tell it which users exist.
                    let may_know = owner.as_deref().is_none_or(|own| own == value);
                    if may_know && call.shared.users.get(&value).is_none() {
                        return err(call.out(), &format!("ERR No such user '{value}'"));
                    }
                    filter.user = Some(value);
                }
                "skipme" => match value.to_ascii_lowercase().as_str() {
                    "yes" => skip_self = true,
                    "no" => skip_self = false,
                    _ => return err(call.out(), "ERR syntax error"),
                },
                _ => return err(call.out(), "ERR syntax error"),
            }
        }
    }
    // The asking session is matched here and never closed by its ring: it is waiting for this
    // very reply, which it must get before it closes (Redis's CLIENT_CLOSE_AFTER_REPLY).
    let kills_self = !skip_self && filter.matches(call.conn(), call.shared.listen_addr);
    filter.skip = Some(call.conn().client_id);
    let shared = call.shared.clone();
    let replier = call.replier();
    let job = Box::new(move || {
        let mut killed = shared.kill_sessions(&filter);
        if kills_self {
            killed += 1;
            shared
                .counters
                .killed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut reply = Vec::new();
        if old_form {
            if killed > 0 {
                resp::simple(&mut reply, b"OK");
            } else {
                resp::error(&mut reply, b"ERR No such client");
            }
        } else {
            resp::integer(&mut reply, killed as i64);
        }
        if kills_self {
            replier.reply_then_close(reply);
        } else {
            replier.reply(reply);
        }
    });
    call.offload_compute(job);
}

fn command_info(out: &mut Vec<u8>, spec: &Spec, proto: Proto) {
    resp::array_len(out, 10);
    resp::bulk(out, spec.name.as_bytes());
    resp::integer(out, spec.arity as i64);
    resp::set_len(out, spec.flags.len(), proto);
    for flag in &spec.flags {
        resp::simple(out, flag.as_bytes());
    }
    resp::integer(out, spec.keys.0 as i64);
    resp::integer(out, spec.keys.1 as i64);
    resp::integer(out, spec.keys.2 as i64);
    resp::set_len(out, 0, proto); // ACL categories
    resp::set_len(out, 0, proto); // tips
    resp::array_len(out, 0); // key specs
    resp::array_len(out, 0); // subcommands
}

fn command(call: &mut Call<'_, '_>, args: &Args) {
    let proto = call.proto();
    let table = &call.shared.table;
    let specs = table.specs();
    let lookup = |name: &[u8]| table.lookup(name).map(|(_, spec)| spec);
    if args.len() == 1 {
        resp::array_len(call.out(), specs.len());
        for spec in specs {
            command_info(call.out(), spec, proto);
        }
        return;
    }
    let sub = lower(&args[1]);
    match sub.as_str() {
        "count" if args.len() == 2 => resp::integer(call.out(), specs.len() as i64),
        "list" if args.len() == 2 => {
            resp::array_len(call.out(), specs.len());
            for spec in specs {
                resp::bulk(call.out(), spec.name.as_bytes());
            }
        }
        "info" => {
            let names: Vec<&[u8]> = args.iter().skip(2).collect();
            let selected: Vec<Option<&Spec>> = if names.is_empty() {
                specs.iter().map(Some).collect()
            } else {
                names.iter().map(|n| lookup(n)).collect()
            };
            resp::array_len(call.out(), selected.len());
            for spec in selected {
                match spec {
                    Some(spec) => command_info(call.out(), spec, proto),
                    None => resp::null_array(call.out(), proto),
                }
            }
        }
        "docs" => {
            let names: Vec<&[u8]> = args.iter().skip(2).collect();
            let selected: Vec<&Spec> = if names.is_empty() {
                specs.iter().collect()
            } else {
                names.iter().filter_map(|n| lookup(n)).collect()
            };
            resp::map_len(call.out(), selected.len(), proto);
            for spec in selected {
                resp::bulk(call.out(), spec.name.as_bytes());
                resp::map_len(call.out(), 3, proto);
                resp::bulk(call.out(), b"summary");
                resp::bulk(call.out(), spec.summary.as_bytes());
                resp::bulk(call.out(), b"since");
                resp::bulk(call.out(), b"1.0.0");
                resp::bulk(call.out(), b"group");
                resp::bulk(call.out(), spec.group.as_bytes());
            }
        }
        "count" | "list" => err(
            call.out(),
            &format!("ERR wrong number of arguments for 'command|{sub}' command"),
        ),
        _ => err(
            call.out(),
            &format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(&truncate(&args[1], 128))
            ),
        ),
    }
}

/// Writes HELLO's reply map.
fn hello_reply(call: &mut Call<'_, '_>) {
    let proto = call.proto();
    let id = call.conn().client_id as i64;
    let shared = call.shared;
    let out = call.out();
    resp::map_len(out, 8, proto);
    resp::bulk(out, b"server");
    resp::bulk(out, b"redis");
    resp::bulk(out, b"version");
    resp::bulk(out, crate::info::REDIS_COMPAT_VERSION.as_bytes());
    resp::bulk(out, b"proto");
    resp::integer(out, if proto == Proto::Resp3 { 3 } else { 2 });
    resp::bulk(out, b"id");
    resp::integer(out, id);
    resp::bulk(out, b"mode");
    resp::bulk(out, b"standalone");
    resp::bulk(out, b"role");
    resp::bulk(out, b"master");
    resp::bulk(out, b"modules");
    resp::array_len(out, 0);
    resp::bulk(out, b"ringport");
    resp::bulk(out, shared.version_line.as_bytes());
}

fn hello(call: &mut Call<'_, '_>, args: &Args) {
    let mut proto = call.conn().proto;
    let mut i = 1;
    if args.len() >= 2 {
        match parse_i64(&args[1]) {
            Some(2) => proto = Proto::Resp2,
            Some(3) => proto = Proto::Resp3,
            Some(_) => return err(call.out(), "NOPROTO unsupported protocol version"),
            None => {
                return err(
                    call.out(),
                    "ERR Protocol version is not an integer or out of range",
                )
            }
        }
        i = 2;
    }
    let mut credentials: Option<(String, Vec<u8>)> = None;
    let mut setname: Option<Vec<u8>> = None;
    while i < args.len() {
        let option = lower(&args[i]);
        let remaining = args.len() - i - 1;
        match option.as_str() {
            "auth" if remaining >= 2 => {
                credentials = Some((
                    String::from_utf8_lossy(&args[i + 1]).into_owned(),
                    args[i + 2].to_vec(),
                ));
                i += 3;
            }
            "setname" if remaining >= 1 => {
                if !valid_client_name(&args[i + 1]) {
                    return err(
                        call.out(),
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                setname = Some(args[i + 1].to_vec());
                i += 2;
            }
            _ => {
                return err(
                    call.out(),
                    &format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&truncate(&args[i], 128))
                    ),
                )
            }
        }
    }
    if let Some((user, password)) = credentials {
        start_auth(call, user, password, AfterAuth::Hello { proto, setname });
        return;
    }
    if !call.conn().authenticated {
        return err(call.out(), "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    call.conn_mut().proto = proto;
    if let Some(name) = setname {
        call.conn_mut().names_mut().name = Some(name);
    }
    hello_reply(call);
}

fn auth_command(call: &mut Call<'_, '_>, args: &Args) {
    let (user, password) = match args.len() {
        2 => ("default".to_string(), args[1].to_vec()),
        3 => (
            String::from_utf8_lossy(&args[1]).into_owned(),
            args[2].to_vec(),
        ),
        _ => return err(call.out(), "ERR syntax error"),
    };
    start_auth(call, user, password, AfterAuth::Ok);
}

/// AUTH's path. The user comes from the in-memory user table (`Shared::users`), never from the
/// store, so AUTH works while the store is down. On the ring, what costs a hash lookup at most:
/// credentials that verified before are accepted, an account under attack refuses the rest, and
/// an unknown or disabled user is refused after about one verification's time (on the
/// delayer), so neither timing nor CPU tells which names exist and a flood of made-up names
/// costs no argon2id. Only a known user's unverified credentials go to the auth pool, where
/// concurrent verifications of the same credentials share one argon2id run. Nothing answered
/// on the ring waits behind that pool's queue.
fn start_auth(call: &mut Call<'_, '_>, user: String, password: Vec<u8>, then: AfterAuth) {
    let ip = call.conn().peer.map(|(ip, _)| ip);
    let shared = call.shared.clone();
    let known = shared
        .users
        .get(&user)
        .filter(|entry| !entry.disabled)
        .map(|entry| entry.hash);
    if let Some(hash) = &known {
        if shared.auth_cache.contains(&user, &password, hash) {
            return finish_auth(call, AuthOutcome::Verified { user, then });
        }
    }
    // Checked after the cache, so that clients whose credentials verified before keep getting
    // in while strangers guess at the account.
    if shared
        .auth_limiter
        .under_attack(&user, shared.minute(Instant::now()))
    {
        shared
            .counters
            .auth_rate_limited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return err(
            call.out(),
            "ERR too many failed authentication attempts for this user; try again later",
        );
    }
    let replier = call.replier();
    let Some(hash) = known else {
        call.waiting_unless_busy(true);
        let looks_verified = shared.auth_verify_time.typical();
        return answer_wrongpass(&shared, replier, ip, &user, looks_verified);
    };
    let suspect = shared
        .auth_limiter
        .failed_lately(&user, shared.minute(Instant::now()));
    let lane_user = user.clone();
    let job = Box::new(move || {
        // Again, now that the job runs: a reconnect storm's first job may have verified these
        // credentials while the others queued behind it.
        if shared.auth_cache.contains(&user, &password, &hash) {
            return replier.auth(AuthOutcome::Verified { user, then });
        }
        // Every session asking with the same credentials at once shares one verification.
        let (waiter_user, waiter_shared) = (user.clone(), shared.clone());
        let waiter: auth::Waiter = Box::new(move |verdict| match verdict {
            auth::Verdict::Valid => replier.auth(AuthOutcome::Verified {
                user: waiter_user,
                then,
            }),
            auth::Verdict::Invalid => {
                answer_wrongpass(&waiter_shared, replier, ip, &waiter_user, Duration::ZERO)
            }
        });
        if shared.auth_cache.join(&user, &password, &hash, waiter) == auth::Joined::Follower {
            return;
        }
        let started = Instant::now();
        let verdict = if auth::verify_password(&password, &hash) {
            auth::Verdict::Valid
        } else {
            auth::Verdict::Invalid
        };
        shared.auth_verify_time.record(started.elapsed());
        shared.auth_cache.finish(&user, &password, &hash, verdict);
    });
    call.offload_auth(&lane_user, suspect, job);
}

/// Counts a wrong password for (address, user) and answers it after `delay`, or later when that
/// pair is past its allowance: on the delayer's thread, never a ring's or a pool worker's.
fn answer_wrongpass(
    shared: &Shared,
    replier: Replier,
    ip: Option<IpAddr>,
    user: &str,
    delay: Duration,
) {
    let failure = shared
        .auth_limiter
        .record_failure(ip, user, shared.minute(Instant::now()));
    if failure.attack_began {
        tracing::warn!(?user, "AUTH failures for this user reached --auth-user-failures-per-minute; refusing AUTH for it, except with credentials that verified before, for the rest of the minute");
    }
    let delay = if failure.slow {
        delay.max(shared.config.auth_failure_delay)
    } else {
        delay
    };
    shared.auth_delayer.after(
        delay,
        Box::new(move || replier.auth(AuthOutcome::WrongPass)),
    );
}

/// Applies an authentication outcome on the ring.
pub fn finish_auth(call: &mut Call<'_, '_>, outcome: AuthOutcome) {
    match outcome {
        AuthOutcome::Verified { user, then } => {
            call.authenticate(user);
            match then {
                AfterAuth::Ok => resp::simple(call.out(), b"OK"),
                AfterAuth::Hello { proto, setname } => {
                    call.conn_mut().proto = proto;
                    if let Some(name) = setname {
                        call.conn_mut().names_mut().name = Some(name);
                    }
                    hello_reply(call);
                }
            }
        }
        AuthOutcome::WrongPass => {
            call.conn_mut().auth_failures += 1;
            call.shared
                .counters
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            err(
                call.out(),
                "WRONGPASS invalid username-password pair or user is disabled.",
            );
            if call.conn().auth_failures >= call.shared.config.max_auth_failures {
                if let Some(suppressed) = call.shared.log_allowed("auth_failures") {
                    tracing::info!(client = call.conn().client_id, peer = ?call.conn().peer_addr(), suppressed, "closing a connection after too many failed AUTH attempts");
                }
                call.shared
                    .counters
                    .auth_failure_closes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                err(
                    call.out(),
                    "ERR too many failed authentication attempts, closing the connection",
                );
                call.close_after_flush();
            }
        }
    }
}

fn hash(request: &Request) -> Reply {
    let rounds = match request.arg_i64(1) {
        Ok(r) if (1..=10_000_000).contains(&r) => r as u64,
        Ok(_) => return Reply::err("rounds must be between 1 and 10000000"),
        Err(not_integer) => return not_integer,
    };
    Reply::bulk(hash_rounds(request.arg(2), rounds))
}

/// `DEBUG PANIC-JOB COMPUTE|STORE`: a pool job that panics, so tests can see its session still
/// answered (a job's panic is contained in every build). Refused unless
/// `--enable-debug-command`, as Redis refuses DEBUG.
fn debug(call: &mut Call<'_, '_>, args: &Args) {
    if !call.shared.config.enable_debug_command {
        return err(
            call.out(),
            "ERR DEBUG command not allowed. If the enable-debug-command option is set to \"local\", \
             you can run it from a local connection, otherwise you need to set this option in the \
             configuration file, and then restart the server.",
        );
    }
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("panic-job", 3) => {
            let replier = call.replier();
            match lower(&args[2]).as_str() {
                "compute" => call.offload_compute(Box::new(move || {
                    let _unanswered = &replier;
                    panic!("DEBUG PANIC-JOB compute");
                })),
                "store" => call.offload_store(
                    StoreWork::Job(Box::new(move |_| {
                        let _unanswered = &replier;
                        panic!("DEBUG PANIC-JOB store");
                    })),
                    Duration::ZERO,
                ),
                _ => err(call.out(), "ERR syntax error"),
            }
        }
        _ => err(
            call.out(),
            &format!(
                "ERR unknown subcommand '{}'. Try DEBUG HELP.",
                String::from_utf8_lossy(&truncate(&args[1], 128))
            ),
        ),
    }
}

fn get(call: &mut Call<'_, '_>, args: &Args) {
    // GET and SET travel typed, so that a store worker folds those of many sessions into one
    // query or one commit.
    offload_gets(call, vec![args[1].to_vec()]);
}

fn set(call: &mut Call<'_, '_>, args: &Args) {
    if args.len() == 3 {
        offload_set(call, args[1].to_vec(), args[2].to_vec());
    } else {
        // Options read the key before writing it: one transaction, not the folded fast path.
        offload_store_handler(call, args, strings::set_with_options);
    }
}

fn keys_from(request: &Request, from: usize) -> Vec<&[u8]> {
    request.args()[from..].iter().map(Vec::as_slice).collect()
}

fn del(ctx: &mut StoreCtx<'_>) -> Result<Reply, StoreError> {
    let (owner, request) = (ctx.user(), ctx.request());
    Ok(Reply::Integer(ctx.kv().del(owner, &keys_from(request, 1))?))
}

fn exists(ctx: &mut StoreCtx<'_>) -> Result<Reply, StoreError> {
    let (owner, request) = (ctx.user(), ctx.request());
    Ok(Reply::Integer(
        ctx.kv().exists(owner, &keys_from(request, 1))?,
    ))
}

fn incr_by(ctx: &mut StoreCtx<'_>, delta: i64) -> Result<Reply, StoreError> {
    let (owner, request) = (ctx.user(), ctx.request());
    Ok(Reply::Integer(ctx.kv().incr_by(
        owner,
        request.arg(1),
        delta,
    )?))
}

fn mset(ctx: &mut StoreCtx<'_>) -> Result<Reply, StoreError> {
    let (owner, request) = (ctx.user(), ctx.request());
    if request.argc() % 2 == 0 {
        return Ok(Reply::err("wrong number of arguments for 'mset' command"));
    }
    let pairs: Vec<(&[u8], &[u8])> = request.args()[1..]
        .chunks(2)
        .map(|p| (p[0].as_slice(), p[1].as_slice()))
        .collect();
    ctx.kv().mset(owner, &pairs)?;
    Ok(Reply::ok())
}

/// MGET stops fetching once the values pass the output limit, so a reply that could never be
/// sent (one big value named a thousand times) is never built: it needs the limit, which a
/// store handler does not see, so it is a session command with a job of its own.
fn mget(call: &mut Call<'_, '_>, args: &Args) {
    let owner = call.owner();
    let proto = call.proto();
    let argv = args.to_vecs();
    let shared = call.shared.clone();
    let replier = call.replier();
    let job = Box::new(move |conn: Result<&mut dyn StoreConn, StoreError>| {
        let limit = shared.config.max_output_buffer;
        let keys: Vec<&[u8]> = argv[1..].iter().map(Vec::as_slice).collect();
        let values = match conn.and_then(|c| c.mget_within(&owner, &keys, limit)) {
            Ok(values) => values,
            Err(e) => return store_failed(&shared, replier, &e),
        };
        if values.len() < keys.len() {
            return replier.over_output_limit();
        }
        let mut reply = Vec::with_capacity(64);
        resp::array_len(&mut reply, values.len());
        for v in values {
            match v {
                Some(v) => resp::bulk(&mut reply, &v),
                None => resp::null(&mut reply, proto),
            }
        }
        if reply.len() > limit {
            return replier.over_output_limit();
        }
        replier.reply(reply);
    });
    call.offload_store(StoreWork::Job(job), Duration::ZERO);
}

/// SLEEP checks its argument on the ring: the job's allowance (how long the ring waits before
/// calling the store stuck) is the sleep itself.
fn sleep(call: &mut Call<'_, '_>, args: &Args) {
    let ms = match parse_i64(&args[1]) {
        Some(ms) if (0..=3_600_000).contains(&ms) => ms as u64,
        Some(_) => return err(call.out(), "ERR sleep must be between 0 and 3600000 ms"),
        None => return err(call.out(), NOT_INTEGER),
    };
    let shared = call.shared.clone();
    let replier = call.replier();
    let job = Box::new(move |conn: Result<&mut dyn StoreConn, StoreError>| {
        match conn.and_then(|c| c.sleep(ms)) {
            Ok(()) => replier.reply(b"+OK\r\n".to_vec()),
            Err(e) => store_failed(&shared, replier, &e),
        }
    });
    call.offload_store(StoreWork::Job(job), Duration::from_millis(ms));
}

/// Runs consecutive GETs of one session (`keys`, in order; the session's parser folds a
/// pipeline's run of GETs into one call) as one store job whose reply holds every GET's reply.
/// The session is authenticated and each GET had its one key.
pub fn execute_gets(call: &mut Call<'_, '_>, keys: Vec<Vec<u8>>) {
    call.conn_mut().last_command = call.shared.get_command;
    let calls = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    offload_gets(call, keys);
    if call.conn().state == State::Waiting {
        if let Some(pending) = call.conn_mut().pending.as_mut() {
            pending.calls = calls;
        }
    } else {
        // Refused (-BUSY): one error answers the first GET; the rest answer BUSY too.
        for _ in 1..calls {
            call.out().extend_from_slice(BUSY);
        }
    }
}

fn offload_gets(call: &mut Call<'_, '_>, keys: Vec<Vec<u8>>) {
    let owner = call.owner();
    let proto = call.proto();
    let shared = call.shared.clone();
    let replier = call.replier();
    let done = Box::new(move |values: Vec<Result<Option<Vec<u8>>, StoreError>>| {
        let mut reply = Vec::new();
        for value in values {
            match value {
                Ok(Some(value)) => resp::bulk(&mut reply, &value),
                Ok(None) => resp::null(&mut reply, proto),
                Err(e) => {
                    shared.store.note_error(&e);
                    resp::error(&mut reply, e.resp_message().as_bytes());
                }
            }
            // The ring would close the session for these replies alone.
            if reply.len() > shared.config.max_output_buffer {
                return replier.over_output_limit();
            }
        }
        replier.reply(reply);
    });
    let work = StoreWork::Get(GetWork { owner, keys, done });
    call.offload_store(work, Duration::ZERO);
}

fn offload_set(call: &mut Call<'_, '_>, key: Vec<u8>, value: Vec<u8>) {
    let owner = call.owner();
    let shared = call.shared.clone();
    let replier = call.replier();
    let done = Box::new(move |outcome: Result<(), StoreError>| match outcome {
        Ok(()) => replier.reply(b"+OK\r\n".to_vec()),
        Err(e) => store_failed(&shared, replier, &e),
    });
    let work = StoreWork::Set(SetWork {
        owner,
        key,
        value,
        done,
    });
    call.offload_store(work, Duration::ZERO);
}

/// Answers a store command whose call failed, and counts the failure.
fn store_failed(shared: &Shared, replier: Replier, error: &StoreError) {
    shared.store.note_error(error);
    let mut reply = Vec::new();
    resp::error(&mut reply, error.resp_message().as_bytes());
    replier.reply(reply);
}

/// `HASH`'s work: sha256 over the data, then over the digest, `rounds` times in all.
pub fn hash_rounds(data: &[u8], rounds: u64) -> String {
    let mut digest: [u8; 32] = Sha256::digest(data).into();
    for _ in 1..rounds {
        digest = Sha256::digest(digest).into();
    }
    hex::encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_reference_matches_repeated_sha256() {
        let once = hex::encode(Sha256::digest(b"x"));
        assert_eq!(hash_rounds(b"x", 1), once);
        let twice = hex::encode(Sha256::digest(Sha256::digest(b"x")));
        assert_eq!(hash_rounds(b"x", 2), twice);
    }
}
