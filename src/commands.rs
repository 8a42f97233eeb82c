//! The command table and every command's execution.
//!
//! [`execute`] runs on the ring: it checks the AUTH gate and the arity, then either answers at
//! once (inline commands) or sends a job to the compute or store pool and marks the session
//! `Waiting`. Pool jobs build the whole encoded reply off the ring and send it back as a
//! [`Msg`]. Error wording follows Redis 7.

use std::sync::Arc;

use ringport_ring::{Context, Session};
use sha2::{Digest, Sha256};

use crate::auth;
use crate::resp::{self, parse_i64, Args, Proto};
use crate::session::{AfterAuth, AuthOutcome, Conn, KillFilter, Msg, RingHandler, State};
use crate::store::{Conn as StoreConn, StoreError};
use std::time::Duration;

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// On the ring, answered at once.
    Inline,
    /// On the compute pool.
    Compute,
    /// On the store pool.
    Store,
}

/// One row of the command table.
#[derive(Debug)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: positive = exactly that many args (name included), negative = at least.
    pub arity: i32,
    /// Where it runs.
    pub class: Class,
    /// Redis command flags, for COMMAND.
    pub flags: &'static [&'static str],
    /// First key, last key, step (0 0 0 for none), for COMMAND.
    pub keys: (i32, i32, i32),
    /// One line of help, for COMMAND DOCS.
    pub summary: &'static str,
    /// Allowed before AUTH.
    pub before_auth: bool,
}

const fn spec(
    name: &'static str,
    arity: i32,
    class: Class,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
    summary: &'static str,
) -> Spec {
    Spec {
        name,
        arity,
        class,
        flags,
        keys,
        summary,
        before_auth: false,
    }
}

/// Every command ringport knows.
pub static COMMANDS: &[Spec] = &[
    Spec {
        before_auth: true,
        ..spec(
            "auth",
            -2,
            Class::Compute,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            (0, 0, 0),
            "Authenticates the connection.",
        )
    },
    Spec {
        before_auth: true,
        ..spec(
            "hello",
            -1,
            Class::Inline,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            (0, 0, 0),
            "Handshakes with the server: protocol version, authentication, client name.",
        )
    },
    Spec {
        before_auth: true,
        ..spec(
            "quit",
            -1,
            Class::Inline,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            (0, 0, 0),
            "Closes the connection.",
        )
    },
    spec(
        "ping",
        -1,
        Class::Inline,
        &["fast"],
        (0, 0, 0),
        "Returns PONG, or the message given.",
    ),
    spec(
        "echo",
        2,
        Class::Inline,
        &["fast"],
        (0, 0, 0),
        "Returns the message given.",
    ),
    spec(
        "client",
        -2,
        Class::Inline,
        &["noscript", "loading", "stale"],
        (0, 0, 0),
        "Connection commands: ID, SETNAME, GETNAME, SETINFO, INFO, LIST, KILL.",
    ),
    spec(
        "select",
        2,
        Class::Inline,
        &["loading", "stale", "fast"],
        (0, 0, 0),
        "Selects database 0 (the only one).",
    ),
    spec(
        "command",
        -1,
        Class::Inline,
        &["loading", "stale"],
        (0, 0, 0),
        "Describes the commands: COUNT, DOCS, INFO, LIST.",
    ),
    spec(
        "info",
        -1,
        Class::Inline,
        &["loading", "stale"],
        (0, 0, 0),
        "Server information and statistics.",
    ),
    spec(
        "acl",
        -2,
        Class::Inline,
        &["noscript", "loading", "stale"],
        (0, 0, 0),
        "ACL WHOAMI.",
    ),
    spec(
        "hash",
        3,
        Class::Compute,
        &[],
        (0, 0, 0),
        "HASH rounds data: sha256 applied rounds times, as lowercase hex.",
    ),
    spec(
        "get",
        2,
        Class::Store,
        &["readonly", "fast"],
        (1, 1, 1),
        "Gets the value of a key.",
    ),
    spec(
        "set",
        3,
        Class::Store,
        &["write", "denyoom"],
        (1, 1, 1),
        "Sets the value of a key.",
    ),
    spec(
        "del",
        -2,
        Class::Store,
        &["write"],
        (1, -1, 1),
        "Deletes keys; replies with how many existed.",
    ),
    spec(
        "exists",
        -2,
        Class::Store,
        &["readonly", "fast"],
        (1, -1, 1),
        "Counts the keys that exist.",
    ),
    spec(
        "incr",
        2,
        Class::Store,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "Increments the integer value of a key by one.",
    ),
    spec(
        "incrby",
        3,
        Class::Store,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "Increments the integer value of a key.",
    ),
    spec(
        "mget",
        -2,
        Class::Store,
        &["readonly", "fast"],
        (1, -1, 1),
        "Gets the values of keys.",
    ),
    spec(
        "mset",
        -3,
        Class::Store,
        &["write", "denyoom"],
        (1, -1, 2),
        "Sets several keys at once.",
    ),
    spec(
        "sleep",
        2,
        Class::Store,
        &[],
        (0, 0, 0),
        "SLEEP ms: a store call that takes ms milliseconds.",
    ),
];

/// Looks a command up by name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > 16 {
        return None;
    }
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

fn arity_ok(spec: &Spec, argc: usize) -> bool {
    if spec.arity >= 0 {
        argc == spec.arity as usize
    } else {
        argc >= (-spec.arity) as usize
    }
}

fn err(out: &mut Vec<u8>, msg: &str) {
    resp::error(out, msg.as_bytes());
}

fn lower(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

/// Redis 7's reply for an unknown command, with the first args quoted.
fn unknown_command(out: &mut Vec<u8>, args: &Args) {
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&truncate(&args[0], 128))
    );
    for arg in args.iter().skip(1).take(8) {
        msg.push_str(&format!(
            "'{}' ",
            String::from_utf8_lossy(&truncate(arg, 128))
        ));
    }
    resp::error(out, msg.as_bytes());
}

fn truncate(arg: &[u8], n: usize) -> Vec<u8> {
    arg.iter().take(n).copied().collect()
}

pub(crate) const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const BUSY: &[u8] = b"-BUSY server overloaded, try again\r\n";

/// Executes one parsed command on the ring.
pub fn execute(h: &mut RingHandler, cx: &Context, s: &mut Session<'_, Conn>, args: &Args) {
    debug_assert_ne!(
        s.conn.state,
        State::Waiting,
        "a command ran while another was pending"
    );
    let Some(spec) = lookup(&args[0]) else {
        if !s.conn.authenticated {
            err(s.out(), "NOAUTH Authentication required.");
        } else {
            unknown_command(s.out(), args);
        }
        h.shared.record_unknown(cx.ring);
        return;
    };
    if !s.conn.authenticated && !spec.before_auth {
        err(s.out(), "NOAUTH Authentication required.");
        h.shared.record_command(cx.ring, spec.name, cx.now, true);
        return;
    }
    if !arity_ok(spec, args.len()) {
        err(
            s.out(),
            &format!("ERR wrong number of arguments for '{}' command", spec.name),
        );
        h.shared.record_command(cx.ring, spec.name, cx.now, true);
        return;
    }
    s.conn.last_command = spec.name;
    let before = s.out().len();
    match spec.name {
        "ping" => ping(s, args),
        "echo" => resp::bulk(s.out(), &args[1]),
        "quit" => {
            resp::simple(s.out(), b"OK");
            s.close_after_flush();
        }
        "select" => match parse_i64(&args[1]) {
            Some(0) => resp::simple(s.out(), b"OK"),
            Some(_) => err(s.out(), "ERR DB index is out of range"),
            None => err(s.out(), NOT_INTEGER),
        },
        "client" => client(h, cx, s, args),
        "command" => command(s, args),
        "info" => {
            let text = crate::info::render(&h.shared, args.iter().skip(1));
            let proto = s.conn.proto;
            resp::verbatim(s.out(), b"txt", text.as_bytes(), proto);
        }
        "acl" => acl(s, args),
        "hello" => hello(h, cx, s, args),
        "auth" => auth_command(h, cx, s, args),
        "hash" => hash(h, cx, s, args),
        _ => store_command(h, cx, s, spec, args),
    }
    if s.conn.state != State::Waiting {
        let failed = s.out().get(before) == Some(&b'-');
        h.shared.record_command(cx.ring, spec.name, cx.now, failed);
    }
}

fn ping(s: &mut Session<'_, Conn>, args: &Args) {
    match args.len() {
        1 => resp::simple(s.out(), b"PONG"),
        2 => resp::bulk(s.out(), &args[1]),
        _ => err(s.out(), "ERR wrong number of arguments for 'ping' command"),
    }
}

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn client(h: &mut RingHandler, cx: &Context, s: &mut Session<'_, Conn>, args: &Args) {
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("id", 2) => {
            let id = s.conn.client_id as i64;
            resp::integer(s.out(), id)
        }
        ("getname", 2) => match s.conn.name.clone() {
            Some(name) => resp::bulk(s.out(), &name),
            None => {
                let proto = s.conn.proto;
                resp::null(s.out(), proto)
            }
        },
        ("setname", 3) => {
            if valid_client_name(&args[2]) {
                s.conn.name = if args[2].is_empty() {
                    None
                } else {
                    Some(args[2].to_vec())
                };
                resp::simple(s.out(), b"OK");
            } else {
                err(
                    s.out(),
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
        }
        ("setinfo", 4) => {
            let attr = lower(&args[2]);
            let value = args[3].to_vec();
            if !valid_client_name(&value) && !value.is_empty() {
                err(
                    s.out(),
                    &format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        attr
                    ),
                );
                return;
            }
            match attr.as_str() {
                "lib-name" => {
                    s.conn.lib_name = Some(value);
                    resp::simple(s.out(), b"OK");
                }
                "lib-ver" => {
                    s.conn.lib_ver = Some(value);
                    resp::simple(s.out(), b"OK");
                }
                _ => err(
                    s.out(),
                    &format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(&args[2])
                    ),
                ),
            }
        }
        ("info", 2) => {
            let line = client_info_line(h, s);
            let proto = s.conn.proto;
            resp::verbatim(s.out(), b"txt", line.as_bytes(), proto);
        }
        ("list", _) => client_list(h, cx, s, args),
        ("kill", n) if n >= 3 => client_kill(h, cx, s, args),
        ("id" | "getname" | "setname" | "setinfo" | "info" | "kill", _) => err(
            s.out(),
            &format!("ERR wrong number of arguments for 'client|{sub}' command"),
        ),
        _ => err(
            s.out(),
            &format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&truncate(&args[1], 128))
            ),
        ),
    }
}

/// Asks every ring for its sessions on the compute pool (the job waits for the rings; the
/// rings never wait for each other).
fn client_list(h: &mut RingHandler, cx: &Context, s: &mut Session<'_, Conn>, args: &Args) {
    if args.len() != 2 {
        return err(s.out(), "ERR syntax error");
    }
    let shared = h.shared.clone();
    let replier = h.replier(s);
    let proto = s.conn.proto;
    let job = Box::new(move || {
        let (tx, rx) = crossbeam_channel::unbounded();
        for ring in &shared.ring_senders {
            ring.send_ring(Msg::ListClients(tx.clone()));
        }
        drop(tx);
        let mut text = String::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for _ in 0..shared.ring_senders.len() {
            match rx.recv_deadline(deadline) {
                Ok(lines) => text.push_str(&lines),
                Err(_) => break,
            }
        }
        let mut reply = Vec::with_capacity(text.len() + 16);
        resp::verbatim(&mut reply, b"txt", text.as_bytes(), proto);
        replier.reply(reply);
    });
    offload_compute(h, cx, s, "client", job);
}

/// `CLIENT KILL addr` (old form: +OK or an error) or `CLIENT KILL ID n | ADDR a | USER u |
/// SKIPME yes|no ...` (new form: the number killed), across every ring.
fn client_kill(h: &mut RingHandler, cx: &Context, s: &mut Session<'_, Conn>, args: &Args) {
    let mut filter = KillFilter {
        skip: Some(s.conn.client_id),
        ..KillFilter::default()
    };
    let old_form = args.len() == 3;
    if old_form {
        filter.addr = Some(String::from_utf8_lossy(&args[2]).into_owned());
        filter.skip = None;
    } else {
        if args.len() % 2 != 0 {
            return err(s.out(), "ERR syntax error");
        }
        for pair in (2..args.len()).step_by(2) {
            let value = String::from_utf8_lossy(&args[pair + 1]).into_owned();
            match lower(&args[pair]).as_str() {
                "id" => match parse_i64(&args[pair + 1]) {
                    Some(n) if n > 0 => filter.id = Some(n as u64),
                    _ => return err(s.out(), "ERR client-id should be greater than 0"),
                },
                "addr" => filter.addr = Some(value),
                "user" => filter.user = Some(value),
                "skipme" => match value.to_ascii_lowercase().as_str() {
                    "yes" => filter.skip = Some(s.conn.client_id),
                    "no" => filter.skip = None,
                    _ => return err(s.out(), "ERR syntax error"),
                },
                _ => return err(s.out(), "ERR syntax error"),
            }
        }
    }
    let shared = h.shared.clone();
    let replier = h.replier(s);
    let job = Box::new(move || {
        let (tx, rx) = crossbeam_channel::unbounded();
        for ring in &shared.ring_senders {
            ring.send_ring(Msg::Kill(filter.clone(), tx.clone()));
        }
        drop(tx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut killed = 0u64;
        for _ in 0..shared.ring_senders.len() {
            match rx.recv_deadline(deadline) {
                Ok(n) => killed += n,
                Err(_) => break,
            }
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
        replier.reply(reply);
    });
    offload_compute(h, cx, s, "client", job);
}

fn offload_compute(
    h: &mut RingHandler,
    cx: &Context,
    s: &mut Session<'_, Conn>,
    name: &'static str,
    job: crate::pool::Job,
) {
    match h.shared.compute.submit(job) {
        Ok(()) => {
            s.conn.state = State::Waiting;
            s.conn.pending = Some((name, cx.now));
        }
        Err(_) => s.out().extend_from_slice(BUSY),
    }
}

/// One `CLIENT INFO` / `CLIENT LIST` line in Redis's field layout.
pub fn client_info_line(h: &RingHandler, s: &Session<'_, Conn>) -> String {
    let c = &*s.conn;
    let now = std::time::Instant::now();
    let name = c
        .name
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    format!(
        "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem=0 events=r cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}\n",
        c.client_id,
        c.peer.map(|p| p.to_string()).unwrap_or_default(),
        h.shared.listen_addr,
        name,
        now.duration_since(c.created).as_secs(),
        now.duration_since(c.last_active).as_secs(),
        c.inbuf.len(),
        s.pending_output(),
        c.last_command,
        c.user.as_deref().unwrap_or(""),
        if c.proto == Proto::Resp3 { 3 } else { 2 },
        c.lib_name.as_deref().map(String::from_utf8_lossy).unwrap_or_default(),
        c.lib_ver.as_deref().map(String::from_utf8_lossy).unwrap_or_default(),
    )
}

fn command_info(out: &mut Vec<u8>, spec: &Spec, proto: Proto) {
    resp::array_len(out, 10);
    resp::bulk(out, spec.name.as_bytes());
    resp::integer(out, spec.arity as i64);
    resp::set_len(out, spec.flags.len(), proto);
    for flag in spec.flags {
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

fn command(s: &mut Session<'_, Conn>, args: &Args) {
    let proto = s.conn.proto;
    if args.len() == 1 {
        resp::array_len(s.out(), COMMANDS.len());
        for spec in COMMANDS {
            command_info(s.out(), spec, proto);
        }
        return;
    }
    let sub = lower(&args[1]);
    match sub.as_str() {
        "count" if args.len() == 2 => resp::integer(s.out(), COMMANDS.len() as i64),
        "list" if args.len() == 2 => {
            resp::array_len(s.out(), COMMANDS.len());
            for spec in COMMANDS {
                resp::bulk(s.out(), spec.name.as_bytes());
            }
        }
        "info" => {
            let names: Vec<&[u8]> = args.iter().skip(2).collect();
            let selected: Vec<Option<&Spec>> = if names.is_empty() {
                COMMANDS.iter().map(Some).collect()
            } else {
                names.iter().map(|n| lookup(n)).collect()
            };
            resp::array_len(s.out(), selected.len());
            for spec in selected {
                match spec {
                    Some(spec) => command_info(s.out(), spec, proto),
                    None => resp::null_array(s.out(), proto),
                }
            }
        }
        "docs" => {
            let names: Vec<&[u8]> = args.iter().skip(2).collect();
            let selected: Vec<&Spec> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|n| lookup(n)).collect()
            };
            resp::map_len(s.out(), selected.len(), proto);
            for spec in selected {
                resp::bulk(s.out(), spec.name.as_bytes());
                resp::map_len(s.out(), 3, proto);
                resp::bulk(s.out(), b"summary");
                resp::bulk(s.out(), spec.summary.as_bytes());
                resp::bulk(s.out(), b"since");
                resp::bulk(s.out(), b"1.0.0");
                resp::bulk(s.out(), b"group");
                let group = match spec.class {
                    Class::Store => "string",
                    _ => "connection",
                };
                resp::bulk(s.out(), group.as_bytes());
            }
        }
        "count" | "list" => err(
            s.out(),
            &format!("ERR wrong number of arguments for 'command|{sub}' command"),
        ),
        _ => err(
            s.out(),
            &format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(&truncate(&args[1], 128))
            ),
        ),
    }
}

fn acl(s: &mut Session<'_, Conn>, args: &Args) {
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("whoami", 2) => {
            let user = s.conn.user.clone().unwrap_or_else(|| Arc::from("default"));
            resp::bulk(s.out(), user.as_bytes());
        }
        ("whoami", _) => err(
            s.out(),
            "ERR wrong number of arguments for 'acl|whoami' command",
        ),
        _ => err(
            s.out(),
            &format!(
                "ERR unknown subcommand '{}'. Try ACL HELP.",
                String::from_utf8_lossy(&truncate(&args[1], 128))
            ),
        ),
    }
}

/// Writes HELLO's reply map.
pub fn hello_reply(h: &RingHandler, s: &mut Session<'_, Conn>) {
    let proto = s.conn.proto;
    let id = s.conn.client_id as i64;
    let out = s.out();
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
    resp::bulk(out, h.shared.version_line.as_bytes());
}

fn hello(h: &mut RingHandler, cx: &Context, s: &mut Session<'_, Conn>, args: &Args) {
    let mut proto = s.conn.proto;
    let mut i = 1;
    if args.len() >= 2 {
        match parse_i64(&args[1]) {
            Some(2) => proto = Proto::Resp2,
            Some(3) => proto = Proto::Resp3,
            Some(_) => return err(s.out(), "NOPROTO unsupported protocol version"),
            None => {
                return err(
                    s.out(),
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
                        s.out(),
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                setname = Some(args[i + 1].to_vec());
                i += 2;
            }
            _ => {
                return err(
                    s.out(),
                    &format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&truncate(&args[i], 128))
                    ),
                )
            }
        }
    }
    if let Some((user, password)) = credentials {
        start_auth(
            h,
            cx,
            s,
            user,
            password,
            AfterAuth::Hello { proto, setname },
        );
        return;
    }
    if !s.conn.authenticated {
        return err(s.out(), "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    s.conn.proto = proto;
    if let Some(name) = setname {
        s.conn.name = Some(name);
    }
    hello_reply(h, s);
}

fn auth_command(h: &mut RingHandler, cx: &Context, s: &mut Session<'_, Conn>, args: &Args) {
    let (user, password) = match args.len() {
        2 => ("default".to_string(), args[1].to_vec()),
        3 => (
            String::from_utf8_lossy(&args[1]).into_owned(),
            args[2].to_vec(),
        ),
        _ => return err(s.out(), "ERR syntax error"),
    };
    start_auth(h, cx, s, user, password, AfterAuth::Ok);
}

/// AUTH's path: the store pool looks the user up; a cached verification answers at once, else
/// the compute pool runs argon2id. Unknown users verify against a dummy hash so that timing
/// does not tell which names exist.
fn start_auth(
    h: &mut RingHandler,
    cx: &Context,
    s: &mut Session<'_, Conn>,
    user: String,
    password: Vec<u8>,
    then: AfterAuth,
) {
    if let Some(ip) = s.conn.peer.map(|p| p.ip()) {
        if h.shared.auth_limiter.blocked(ip, h.shared.minute(cx.now)) {
            h.shared
                .counters
                .auth_rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            err(
                s.out(),
                "ERR too many failed authentication attempts from your address; try again later",
            );
            return;
        }
    }
    let shared = h.shared.clone();
    let replier = h.replier(s);
    let job = Box::new(move |conn: Result<&mut dyn StoreConn, StoreError>| {
        let record = match conn.and_then(|c| c.user(&user)) {
            Ok(record) => record,
            Err(e) => {
                shared.store.note_error(&e);
                let mut reply = Vec::new();
                resp::error(&mut reply, e.resp_message().as_bytes());
                replier.auth(AuthOutcome::Failed(reply));
                return;
            }
        };
        let (hash, usable) = match &record {
            Some(r) => (r.hash.clone(), !r.disabled),
            None => (shared.dummy_hash.clone(), false),
        };
        if usable && shared.auth_cache.contains(&user, &password, &hash) {
            replier.auth(AuthOutcome::Verified { user, then });
            return;
        }
        if !usable {
            // Unknown or disabled: the same argon2id cost as a real check, then no.
            let verify_replier = replier.clone();
            let verify = Box::new(move || {
                let _ = auth::verify_password(&password, &hash);
                verify_replier.auth(AuthOutcome::WrongPass);
            });
            if shared.compute.submit(verify).is_err() {
                replier.auth(AuthOutcome::Failed(BUSY.to_vec()));
            }
            return;
        }
        // Every session asking with the same credentials at once shares one verification.
        let waiter_user = user.clone();
        let waiter: auth::Waiter = Box::new(move |verdict| {
            replier.auth(match verdict {
                auth::Verdict::Valid => AuthOutcome::Verified {
                    user: waiter_user,
                    then,
                },
                auth::Verdict::Invalid => AuthOutcome::WrongPass,
                auth::Verdict::Busy => AuthOutcome::Failed(BUSY.to_vec()),
            })
        });
        if shared.auth_cache.join(&user, &password, &hash, waiter) == auth::Joined::Follower {
            return;
        }
        let verify_shared = shared.clone();
        let (verify_user, verify_password, verify_hash) =
            (user.clone(), password.clone(), hash.clone());
        let verify = Box::new(move || {
            let verdict = if auth::verify_password(&verify_password, &verify_hash) {
                auth::Verdict::Valid
            } else {
                auth::Verdict::Invalid
            };
            verify_shared
                .auth_cache
                .finish(&verify_user, &verify_password, &verify_hash, verdict);
        });
        if shared.compute.submit(verify).is_err() {
            shared
                .auth_cache
                .finish(&user, &password, &hash, auth::Verdict::Busy);
        }
    });
    offload_store(h, cx, s, "auth", job, Duration::ZERO);
}

/// Applies an authentication outcome on the ring.
pub fn finish_auth(
    h: &mut RingHandler,
    cx: &Context,
    s: &mut Session<'_, Conn>,
    outcome: AuthOutcome,
) {
    match outcome {
        AuthOutcome::Verified { user, then } => {
            s.conn.user = Some(Arc::from(user));
            s.conn.authenticated = true;
            s.conn.state = State::Ready;
            // The auth deadline no longer applies; the session re-arms for idle and
            // partial-command deadlines as it goes.
            s.set_deadline(None);
            match then {
                AfterAuth::Ok => resp::simple(s.out(), b"OK"),
                AfterAuth::Hello { proto, setname } => {
                    s.conn.proto = proto;
                    if let Some(name) = setname {
                        s.conn.name = Some(name);
                    }
                    hello_reply(h, s);
                }
            }
        }
        AuthOutcome::WrongPass => {
            s.conn.auth_failures += 1;
            if let Some(ip) = s.conn.peer.map(|p| p.ip()) {
                if h.shared
                    .auth_limiter
                    .record_failure(ip, h.shared.minute(cx.now))
                {
                    tracing::warn!(%ip, "AUTH failures from this address reached --auth-failures-per-minute; refusing its AUTH attempts for the rest of the minute");
                }
            }
            h.shared
                .counters
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            err(
                s.out(),
                "WRONGPASS invalid username-password pair or user is disabled.",
            );
            if s.conn.auth_failures >= h.shared.config.max_auth_failures {
                if let Some(suppressed) = h.shared.log_allowed("auth_failures") {
                    tracing::info!(client = s.conn.client_id, peer = ?s.conn.peer, suppressed, "closing a connection after too many failed AUTH attempts");
                }
                h.shared
                    .counters
                    .auth_failure_closes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                err(
                    s.out(),
                    "ERR too many failed authentication attempts, closing the connection",
                );
                s.close_after_flush();
            }
        }
        AuthOutcome::Failed(reply) => s.out().extend_from_slice(&reply),
    }
}

fn hash(h: &mut RingHandler, cx: &Context, s: &mut Session<'_, Conn>, args: &Args) {
    let rounds = match parse_i64(&args[1]) {
        Some(r) if (1..=10_000_000).contains(&r) => r as u64,
        Some(_) => return err(s.out(), "ERR rounds must be between 1 and 10000000"),
        None => return err(s.out(), NOT_INTEGER),
    };
    let data = args[2].to_vec();
    let replier = h.replier(s);
    let job = Box::new(move || {
        let mut reply = Vec::with_capacity(72);
        resp::bulk(&mut reply, hash_rounds(&data, rounds).as_bytes());
        replier.reply(reply);
    });
    offload_compute(h, cx, s, "hash", job);
}

type StoreJob = Box<dyn FnOnce(Result<&mut dyn StoreConn, StoreError>) + Send + 'static>;

fn offload_store(
    h: &mut RingHandler,
    cx: &Context,
    s: &mut Session<'_, Conn>,
    name: &'static str,
    job: StoreJob,
    allowance: Duration,
) {
    match h.shared.store.submit(job, allowance) {
        Ok(ticket) => {
            s.conn.state = State::Waiting;
            s.conn.pending = Some((name, cx.now));
            // Watch for a store that stops answering: the first look comes after the store
            // timeout plus the job's own allowance.
            s.conn.store_ticket = Some(ticket);
            let at = cx.now + h.shared.config.store_timeout + allowance;
            if s.deadline().is_none_or(|d| at < d) {
                s.set_deadline(Some(at));
            }
        }
        Err(_) => s.out().extend_from_slice(BUSY),
    }
}

/// Runs a key-value command on the store pool; `f` encodes the reply from the store's answer.
fn store_command(
    h: &mut RingHandler,
    cx: &Context,
    s: &mut Session<'_, Conn>,
    spec: &'static Spec,
    args: &Args,
) {
    let owner = s
        .conn
        .user
        .clone()
        .expect("store commands run only after AUTH");
    let proto = s.conn.proto;
    let argv = args.to_vecs();
    match spec.name {
        "incrby" if parse_i64(&argv[2]).is_none() => return err(s.out(), NOT_INTEGER),
        "mset" if argv.len() % 2 == 0 => {
            return err(s.out(), "ERR wrong number of arguments for 'mset' command")
        }
        "sleep" => match parse_i64(&argv[1]) {
            Some(ms) if (0..=3_600_000).contains(&ms) => {}
            Some(_) => return err(s.out(), "ERR sleep must be between 0 and 3600000 ms"),
            None => return err(s.out(), NOT_INTEGER),
        },
        _ => {}
    }
    let shared = h.shared.clone();
    let replier = h.replier(s);
    let name = spec.name;
    let allowance = if name == "sleep" {
        Duration::from_millis(parse_i64(&argv[1]).unwrap_or(0).max(0) as u64)
    } else {
        Duration::ZERO
    };
    let job = Box::new(move |conn: Result<&mut dyn StoreConn, StoreError>| {
        let mut reply = Vec::with_capacity(64);
        let result = conn.and_then(|c| run_store(c, name, &owner, &argv, proto, &mut reply));
        if let Err(e) = result {
            shared.store.note_error(&e);
            reply.clear();
            resp::error(&mut reply, e.resp_message().as_bytes());
        }
        replier.reply(reply);
    });
    offload_store(h, cx, s, spec.name, job, allowance);
}

fn run_store(
    c: &mut dyn StoreConn,
    name: &str,
    owner: &str,
    argv: &[Vec<u8>],
    proto: Proto,
    out: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let keys = |from: usize| -> Vec<&[u8]> { argv[from..].iter().map(Vec::as_slice).collect() };
    match name {
        "get" => match c.get(owner, &argv[1])? {
            Some(v) => resp::bulk(out, &v),
            None => resp::null(out, proto),
        },
        "set" => {
            c.set(owner, &argv[1], &argv[2])?;
            resp::simple(out, b"OK");
        }
        "del" => resp::integer(out, c.del(owner, &keys(1))?),
        "exists" => resp::integer(out, c.exists(owner, &keys(1))?),
        "incr" => resp::integer(out, c.incr_by(owner, &argv[1], 1)?),
        "incrby" => {
            let delta = parse_i64(&argv[2]).ok_or(StoreError::NotInteger)?;
            resp::integer(out, c.incr_by(owner, &argv[1], delta)?)
        }
        "mget" => {
            let values = c.mget(owner, &keys(1))?;
            resp::array_len(out, values.len());
            for v in values {
                match v {
                    Some(v) => resp::bulk(out, &v),
                    None => resp::null(out, proto),
                }
            }
        }
        "mset" => {
            let pairs: Vec<(&[u8], &[u8])> = argv[1..]
                .chunks(2)
                .map(|p| (p[0].as_slice(), p[1].as_slice()))
                .collect();
            c.mset(owner, &pairs)?;
            resp::simple(out, b"OK");
        }
        "sleep" => {
            let ms = parse_i64(&argv[1]).unwrap_or(0).max(0) as u64;
            c.sleep(ms)?;
            resp::simple(out, b"OK");
        }
        other => unreachable!("store command {other} has no implementation"),
    }
    Ok(())
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
    fn lookup_is_case_insensitive() {
        assert_eq!(lookup(b"GeT").unwrap().name, "get");
        assert!(lookup(b"nosuch").is_none());
        assert!(lookup(b"averyveryverylongcommandname").is_none());
    }

    #[test]
    fn arity_rules() {
        let get = lookup(b"get").unwrap();
        assert!(arity_ok(get, 2) && !arity_ok(get, 1) && !arity_ok(get, 3));
        let del = lookup(b"del").unwrap();
        assert!(!arity_ok(del, 1) && arity_ok(del, 2) && arity_ok(del, 9));
    }

    #[test]
    fn hash_reference_matches_repeated_sha256() {
        let once = hex::encode(Sha256::digest(b"x"));
        assert_eq!(hash_rounds(b"x", 1), once);
        let twice = hex::encode(Sha256::digest(Sha256::digest(b"x")));
        assert_eq!(hash_rounds(b"x", 2), twice);
    }

    #[test]
    fn table_names_are_lowercase_and_unique() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase())));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
    }
}
