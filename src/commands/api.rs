//! Commands as values: [`CommandDef`], what a handler gets ([`Inline`], [`Request`],
//! [`StoreCtx`]) and returns ([`Reply`]).
//!
//! Every command, built-in or not, is a `CommandDef`: a row of the command table (name, arity,
//! flags, class, COMMAND metadata) plus its handler. The three classes keep their rules by what
//! their handler is given:
//!
//! - *inline* handlers run on the ring and get an [`Inline`] view: the arguments and who is
//!   asking, nothing that can wait (no store, no pool, no lock of the server's);
//! - *compute* handlers run on the work-stealing pool and get an owned [`Request`];
//! - *store* handlers run on a store worker and get a [`StoreCtx`]: the request plus the store
//!   connection (key-value calls on either store, SQL on PostgreSQL). Their reply leaves after
//!   they return, so after anything they wrote has committed.
//!
//! A panic in any handler answers that one command `-ERR internal error` and the server goes on.

use std::fmt;
use std::sync::Arc;

use crate::resp::{parse_i64, Args, Proto, Value};
use crate::store::{Conn as StoreConn, Sql, SqlResult, SqlValue, StoreError};
use crate::table::{leak, Class, Spec};

use super::call::Call;

/// A reply: encoded as RESP2 or RESP3, whichever the session speaks (a map goes out as a flat
/// array in RESP2, a double as a bulk string, a boolean as 0 or 1).
pub type Reply = Value;

/// Redis's wording when an argument is not an integer.
pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

/// Read access to a command's arguments (argument 0 is the command name as sent).
pub trait Argv {
    /// Argument `i`; callers stay within the arity the definition declared.
    fn arg(&self, i: usize) -> &[u8];
    /// How many arguments, the name included.
    fn argc(&self) -> usize;

    /// Argument `i` as UTF-8, or an error reply saying which argument is not.
    fn arg_str(&self, i: usize) -> Result<&str, Reply> {
        std::str::from_utf8(self.arg(i))
            .map_err(|_| Reply::err(format_args!("argument {i} is not valid UTF-8")))
    }

    /// Argument `i` as an integer, or Redis's "not an integer" error.
    fn arg_i64(&self, i: usize) -> Result<i64, Reply> {
        parse_i64(self.arg(i)).ok_or_else(|| Reply::Error(NOT_INTEGER.as_bytes().to_vec()))
    }
}

/// What an inline handler sees: borrowed, on the ring.
pub struct Inline<'a> {
    args: &'a Args,
    user: Option<&'a str>,
    proto: Proto,
    client_id: u64,
}

impl Inline<'_> {
    /// The authenticated user (`None` only for commands allowed before AUTH).
    pub fn user(&self) -> Option<&str> {
        self.user
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The session's CLIENT ID.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }
}

impl Argv for Inline<'_> {
    fn arg(&self, i: usize) -> &[u8] {
        &self.args[i]
    }

    fn argc(&self) -> usize {
        self.args.len()
    }
}

/// Redis's default `proto-max-bulk-len`: a request made outside a session (a handler's test)
/// gets Redis's bound.
const REDIS_PROTO_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;

/// What a compute or store handler gets: the command, owned, off the ring.
#[derive(Debug, Clone)]
pub struct Request {
    user: Option<Arc<str>>,
    args: Vec<Vec<u8>>,
    proto: Proto,
    client_id: u64,
    max_string_len: u64,
}

impl Request {
    /// A request as a session would send it (for tests of handlers).
    pub fn new(user: Option<&str>, args: Vec<Vec<u8>>, proto: Proto) -> Request {
        Request {
            user: user.map(Arc::from),
            args,
            proto,
            client_id: 0,
            max_string_len: REDIS_PROTO_MAX_BULK_LEN,
        }
    }

    /// The longest string a command may make (APPEND, SETRANGE): `--proto-max-bulk-len`, as
    /// Redis bounds them by its `proto-max-bulk-len`, so no value grows past what a client may
    /// send or the server will read back.
    pub fn max_string_len(&self) -> u64 {
        self.max_string_len
    }

    /// The authenticated user (`None` only for commands allowed before AUTH).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }
}

impl Argv for Request {
    fn arg(&self, i: usize) -> &[u8] {
        &self.args[i]
    }

    fn argc(&self) -> usize {
        self.args.len()
    }
}

/// A store handler's view: the request and the store connection of the worker running it.
pub struct StoreCtx<'a> {
    request: &'a Request,
    conn: &'a mut dyn StoreConn,
}

impl<'a> StoreCtx<'a> {
    pub(crate) fn new(request: &'a Request, conn: &'a mut dyn StoreConn) -> StoreCtx<'a> {
        StoreCtx { request, conn }
    }

    pub fn request(&self) -> &'a Request {
        self.request
    }

    /// The authenticated user: pass it as `owner` to key-value calls, so each user has their
    /// own keys. Store commands run only after AUTH.
    pub fn user(&self) -> &'a str {
        self.request.user().unwrap_or("default")
    }

    /// The key-value calls (both stores), each committed before it returns.
    pub fn kv(&mut self) -> &mut dyn StoreConn {
        self.conn
    }

    /// Runs one SQL statement (PostgreSQL only), committed on its own before it returns.
    /// Parameters are text; PostgreSQL converts them to the statement's types.
    pub fn query(&mut self, statement: &str, params: &[&[u8]]) -> Result<SqlResult, StoreError> {
        self.sql()?.query(statement, params)
    }

    /// Runs `body` in one transaction (PostgreSQL only): committed when it returns `Ok`
    /// (the command's reply leaves after the commit), rolled back when it returns `Err`.
    pub fn transaction<T>(
        &mut self,
        body: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let sql = self.sql()?;
        sql.begin()?;
        let mut tx = Tx { sql };
        match body(&mut tx) {
            Ok(value) => {
                tx.sql.commit()?;
                Ok(value)
            }
            Err(error) => {
                tx.sql.rollback();
                Err(error)
            }
        }
    }

    fn sql(&mut self) -> Result<&mut dyn Sql, StoreError> {
        self.conn.sql().ok_or_else(|| {
            StoreError::Sql(
                "this command runs SQL: it needs the PostgreSQL store (--store postgres://...), outside MULTI".into(),
            )
        })
    }
}

/// An open transaction ([`StoreCtx::transaction`]).
pub struct Tx<'a> {
    sql: &'a mut dyn Sql,
}

impl Tx<'_> {
    /// Runs one statement inside the transaction.
    pub fn query(&mut self, statement: &str, params: &[&[u8]]) -> Result<SqlResult, StoreError> {
        self.sql.query(statement, params)
    }
}

/// A SQL value as a reply element: integers as integers, floats as doubles, booleans as
/// booleans (0/1 in RESP2), text and bytes as bulk strings, NULL as null.
pub fn sql_value_reply(value: SqlValue) -> Reply {
    match value {
        SqlValue::Null => Reply::Null,
        SqlValue::Bool(b) => Reply::Boolean(b),
        SqlValue::Int(n) => Reply::Integer(n),
        SqlValue::Float(f) => Reply::Double(f),
        SqlValue::Text(text) => Reply::Bulk(text.into_bytes()),
        SqlValue::Bytes(bytes) => Reply::Bulk(bytes),
    }
}

/// An inline handler: cheap, non-blocking, on the ring.
pub type InlineFn = dyn Fn(&Inline<'_>) -> Reply + Send + Sync;
/// A compute handler: on the compute pool.
pub type ComputeFn = dyn Fn(&Request) -> Reply + Send + Sync;
/// A store handler: on a store worker, with its connection.
pub type StoreFn = dyn Fn(&mut StoreCtx<'_>) -> Result<Reply, StoreError> + Send + Sync;
/// A built-in that changes its session (AUTH, HELLO, CLIENT, QUIT) or hands typed work to a
/// pool (GET and SET, which the store folds across sessions): it works on the session's
/// [`Call`] and chooses its pool itself.
pub(crate) type SessionFn = fn(&mut Call<'_, '_>, &Args);

/// How a command runs.
#[derive(Clone)]
pub(crate) enum Handler {
    Inline(Arc<InlineFn>),
    Compute(Arc<ComputeFn>),
    Store(Arc<StoreFn>),
    Session(SessionFn),
    /// Sent to a pool of worker processes (`crate::workers`).
    Worker(Arc<crate::workers::WorkerPool>),
}

/// One command: its table row and its handler. Built with [`CommandDef::inline`],
/// [`CommandDef::compute`] or [`CommandDef::store`], then refined:
///
/// ```
/// use ringport::api::{Argv, CommandDef, Reply};
/// let double = CommandDef::compute("double", 2, |req| match req.arg_i64(1) {
///     Ok(n) => Reply::Integer(n.saturating_mul(2)),
///     Err(e) => e,
/// })
/// .summary("Doubles an integer.");
/// assert_eq!(double.name(), "double");
/// ```
#[derive(Clone)]
pub struct CommandDef {
    pub(crate) spec: Spec,
    pub(crate) handler: Handler,
}

impl fmt::Debug for CommandDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandDef")
            .field("spec", &self.spec)
            .finish()
    }
}

impl CommandDef {
    fn with(name: &str, arity: i32, class: Class, handler: Handler) -> CommandDef {
        CommandDef {
            spec: Spec {
                name: leak(&name.to_ascii_lowercase()),
                arity,
                class,
                flags: Vec::new(),
                keys: (0, 0, 0),
                summary: "",
                group: "custom",
                before_auth: false,
                origin: "api",
            },
            handler,
        }
    }

    /// A command answered on the ring. `arity` is Redis's: the name counts, negative means
    /// "at least".
    pub fn inline(
        name: &str,
        arity: i32,
        handler: impl Fn(&Inline<'_>) -> Reply + Send + Sync + 'static,
    ) -> CommandDef {
        CommandDef::with(
            name,
            arity,
            Class::Inline,
            Handler::Inline(Arc::new(handler)),
        )
    }

    /// A command run on the compute pool.
    pub fn compute(
        name: &str,
        arity: i32,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> CommandDef {
        CommandDef::with(
            name,
            arity,
            Class::Compute,
            Handler::Compute(Arc::new(handler)),
        )
    }

    /// A command run on the store path. An `Err` answers `-ERR` with the error's client
    /// message (a SQL error's own text; "store unavailable" during an outage).
    pub fn store(
        name: &str,
        arity: i32,
        handler: impl Fn(&mut StoreCtx<'_>) -> Result<Reply, StoreError> + Send + Sync + 'static,
    ) -> CommandDef {
        CommandDef::with(name, arity, Class::Store, Handler::Store(Arc::new(handler)))
    }

    /// A command served by a pool of worker processes (a `[[worker]]` block).
    pub fn worker(
        pool: Arc<crate::workers::WorkerPool>,
        command: &crate::config::WorkerCommandConfig,
    ) -> CommandDef {
        let def = CommandDef::with(
            &command.name,
            command.arity,
            Class::Worker,
            Handler::Worker(pool.clone()),
        )
        .origin(&format!("worker pool '{}'", pool.name))
        .summary(&command.summary);
        let def = command
            .flags
            .iter()
            .fold(def, |def, flag| def.flag(leak(&flag.to_ascii_lowercase())));
        if command.write {
            def.write()
        } else {
            def.readonly()
        }
    }

    pub(crate) fn session(
        name: &'static str,
        arity: i32,
        class: Class,
        f: SessionFn,
    ) -> CommandDef {
        CommandDef::with(name, arity, class, Handler::Session(f))
    }

    /// Redis's `readonly` flag (COMMAND shows it).
    pub fn readonly(self) -> CommandDef {
        self.flag("readonly")
    }

    /// Redis's `write` flag: the command changes data. A store command's write is committed
    /// before its reply either way; the flag tells clients and operators, and the server
    /// closes a session whose write's fate it cannot know (a store timeout).
    pub fn write(self) -> CommandDef {
        self.flag("write")
    }

    /// Any other COMMAND flag (`fast`, `denyoom`, ...).
    pub fn flag(mut self, flag: &'static str) -> CommandDef {
        if !self.spec.flags.contains(&flag) {
            self.spec.flags.push(flag);
        }
        self
    }

    /// Allowed before AUTH (Redis's `no_auth`). Only for commands that reveal nothing.
    pub fn before_auth(mut self) -> CommandDef {
        self.spec.before_auth = true;
        self.flag("no_auth")
    }

    /// COMMAND DOCS's summary.
    pub fn summary(mut self, text: &str) -> CommandDef {
        self.spec.summary = leak(text);
        self
    }

    /// COMMAND DOCS's group (default `custom`).
    pub fn group(mut self, group: &str) -> CommandDef {
        self.spec.group = leak(group);
        self
    }

    /// First key, last key and step, for COMMAND (`1, 1, 1` for one key in argument 1).
    pub fn keys(mut self, first: i32, last: i32, step: i32) -> CommandDef {
        self.spec.keys = (first, last, step);
        self
    }

    /// Where the definition comes from, named in errors about it.
    pub fn origin(mut self, origin: &str) -> CommandDef {
        self.spec.origin = leak(origin);
        self
    }

    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    pub fn class(&self) -> Class {
        self.spec.class
    }

    /// The table row this definition makes.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }
}

/// The handlers of a table, row for row, held by each ring.
pub struct Handlers(pub(crate) Vec<Handler>);

/// Splits definitions into the table (shared by everything that lists commands) and the
/// handlers (held by the rings), refusing clashes and invalid rows.
pub fn build(defs: Vec<CommandDef>) -> Result<(crate::table::Table, Handlers), String> {
    let (specs, handlers): (Vec<Spec>, Vec<Handler>) =
        defs.into_iter().map(|d| (d.spec, d.handler)).unzip();
    Ok((crate::table::Table::new(specs)?, Handlers(handlers)))
}

impl Inline<'_> {
    pub(crate) fn of<'a>(call: &'a Call<'_, '_>, args: &'a Args) -> Inline<'a> {
        let conn = call.conn();
        Inline {
            args,
            user: conn.user.as_deref(),
            proto: conn.proto,
            client_id: conn.client_id,
        }
    }
}

impl Request {
    pub(crate) fn of(call: &Call<'_, '_>, args: &Args) -> Request {
        let conn = call.conn();
        Request {
            user: conn.user.clone(),
            args: args.to_vecs(),
            proto: conn.proto,
            client_id: conn.client_id,
            max_string_len: call.shared.config.proto_max_bulk_len as u64,
        }
    }
}
