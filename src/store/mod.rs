//! The store: where users and their key-values live.
//!
//! Two backends sit behind one pair of traits:
//!
//! - [`Backend`]: opened once at start-up by [`open`], shared by every store worker through an
//!   `Arc`. It knows where the store is and hands out connections.
//! - [`Conn`]: one store worker's connection. Every key-value call is scoped by `owner`, the
//!   authenticated user name, so alice's `k` is not bob's `k`. Keys and values are arbitrary bytes.
//!
//! The backends:
//!
//! - embedded ([`embedded`]): redb, one file `DIR/ringport.redb`, the default so that
//!   `ringport serve` works with nothing installed;
//! - PostgreSQL ([`postgres`]): tokio-postgres behind blocking calls, each with a deadline; one
//!   connection per [`Conn`], prepared statements, schema created and migrated by [`open`].
//!
//! Contract of every write (`set`, `mset`, `del`, `incr_by`, `transact`, `sweep_expired`,
//! `put_user`, `del_user`): it returns
//! `Ok` only after the store committed it durably (redb: a `Durability::Immediate` commit;
//! PostgreSQL: a committed transaction under the server's default `synchronous_commit`), so a
//! `+OK` the client saw survives `kill -9` of the server.
//!
//! Contract of an outage: when the store cannot be reached or does not answer (down, unreachable,
//! hung), every call returns [`StoreError::Unavailable`] within about a second, and the same
//! [`Conn`] works again by itself once the store is back (see [`postgres`] for how).
//!
//! Expiry: every key may carry an expiry time (ms since the Unix epoch). Every read treats a key
//! whose time has come as absent, whether or not it is still stored; a plain write (`set`,
//! `mset`, `set_many`) clears the expiry, as Redis's SET does; [`Conn::sweep_expired`], called
//! by the server's sweep thread, removes expired keys in batches of at most [`SWEEP_BATCH`].
//!
//! Users are read once at start-up and then kept current through [`Backend::watch_users`], so
//! that AUTH asks memory, not the store, and works through an outage (the server holds the
//! table; the store feeds it through a [`UserSink`]).

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

pub mod embedded;
pub mod postgres;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The backend cannot be reached (PostgreSQL down, connection lost, reconnect refused).
    /// The client's reply is `-ERR store unavailable`; the text says why, for logs.
    Unavailable(String),
    /// INCR/INCRBY on a value that is not a canonical decimal i64, as Redis words it.
    NotInteger,
    /// INCR/INCRBY whose result does not fit an i64, as Redis words it.
    Overflow,
    /// Anything else: a configuration error, a file that cannot be opened, a limit of the backend.
    Other(String),
    /// A [`Conn::transact`] body met a concurrent writer (PostgreSQL: a key it read as absent
    /// was created meanwhile); the transaction was rolled back and `transact` runs it again.
    /// A client sees it only when every attempt conflicted, as a store error.
    Conflict,
    /// A statement of a user-defined command that PostgreSQL refused (bad input, a constraint):
    /// its message is the client's answer, `-ERR message`.
    Sql(String),
}

impl StoreError {
    /// The error line for a RESP reply, without the leading `-` and the trailing CRLF.
    ///
    /// Internals (the text of `Unavailable` and `Other`) stay in the logs, not on the wire.
    pub fn resp_message(&self) -> Cow<'static, str> {
        match self {
            StoreError::Unavailable(_) => Cow::Borrowed("ERR store unavailable"),
            StoreError::NotInteger => Cow::Borrowed("ERR value is not an integer or out of range"),
            StoreError::Overflow => Cow::Borrowed("ERR increment or decrement would overflow"),
            StoreError::Other(_) | StoreError::Conflict => Cow::Borrowed("ERR store error"),
            StoreError::Sql(message) => Cow::Owned(format!("ERR {message}")),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "store unavailable: {why}"),
            StoreError::NotInteger => f.write_str("value is not an integer or out of range"),
            StoreError::Overflow => f.write_str("increment or decrement would overflow"),
            StoreError::Other(why) => f.write_str(why),
            StoreError::Conflict => f.write_str("the transaction kept meeting concurrent writers"),
            StoreError::Sql(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for StoreError {}

/// One user as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user name, the `owner` of that user's keys.
    pub name: String,
    /// The argon2id password hash, a PHC string (`$argon2id$v=19$...`).
    pub hash: String,
    /// A disabled user cannot authenticate.
    pub disabled: bool,
    /// May manage users over the protocol (ACL SETUSER, DELUSER, LIST, USERS, GETUSER).
    pub admin: bool,
}

/// `--embedded-cache-size`'s default, for stores opened without the serve flags (`ringport user`).
pub const DEFAULT_EMBEDDED_CACHE_SIZE: usize = 64 << 20;

/// Where the store lives.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    /// redb at `dir/ringport.redb`, with a page cache of at most `cache_size` bytes.
    Embedded { dir: PathBuf, cache_size: usize },
    /// PostgreSQL, as a `postgres://` URL or a libpq `key=value` string. May hold a password:
    /// never log it; log [`Backend::describe`] instead.
    Postgres { url: String },
}

impl StoreSpec {
    /// Reads `--store`: absent or `embedded` means redb under `data_dir`; a `postgres://` or
    /// `postgresql://` URL, or a libpq `key=value` string with `host=`, means PostgreSQL.
    /// Anything else is an error naming the value (with any password masked).
    pub fn parse(store: Option<&str>, data_dir: &Path) -> Result<StoreSpec, StoreError> {
        let value = match store {
            None => {
                return Ok(StoreSpec::Embedded {
                    dir: data_dir.to_path_buf(),
                    cache_size: DEFAULT_EMBEDDED_CACHE_SIZE,
                })
            }
            Some(value) => value.trim(),
        };
        if value == "embedded" {
            return Ok(StoreSpec::Embedded {
                dir: data_dir.to_path_buf(),
                cache_size: DEFAULT_EMBEDDED_CACHE_SIZE,
            });
        }
        let is_url = value.starts_with("postgres://") || value.starts_with("postgresql://");
        let is_key_value = value
            .split_whitespace()
            .any(|word| word.starts_with("host="));
        if !is_url && !is_key_value {
            return Err(StoreError::Other(format!(
                "unknown store '{}': expected 'embedded', a postgres:// URL, or a libpq string such as 'host=/run/postgresql dbname=ringport'",
                redact_password(value)
            )));
        }
        if let Err(error) = value.parse::<tokio_postgres::Config>() {
            return Err(StoreError::Other(format!(
                "invalid PostgreSQL store '{}': {error}",
                redact_password(value)
            )));
        }
        Ok(StoreSpec::Postgres {
            url: value.to_string(),
        })
    }
}

/// Opens the store once at start-up: creates the directory or the schema and migrates it.
/// Running it twice changes nothing. The errors say what to do.
pub fn open(spec: &StoreSpec) -> Result<Arc<dyn Backend>, StoreError> {
    match spec {
        StoreSpec::Embedded { dir, cache_size } => {
            Ok(Arc::new(embedded::Embedded::open(dir, *cache_size)?))
        }
        StoreSpec::Postgres { url } => Ok(Arc::new(postgres::Postgres::open(url)?)),
    }
}

/// An opened store, shared by every store worker.
pub trait Backend: Send + Sync + 'static {
    /// `"embedded"` or `"postgres"`.
    fn kind(&self) -> &'static str;
    /// Where the store is, for logs and INFO; never contains a password.
    fn describe(&self) -> String;
    /// A new connection, one per store worker thread. Fails within about a second with
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    fn connect(&self) -> Result<Box<dyn Conn>, StoreError>;
    /// Connections the backend re-established by itself after losing them (a [`Conn`] that
    /// reconnects lazily); the store pool counts the ones it makes.
    fn reconnects(&self) -> u64 {
        0
    }
    /// A connection a ring drives itself for batches of GETs (`storelink`, `postgres::wire`):
    /// non-blocking, authenticated, its statement prepared. `None` where the backend has none:
    /// the embedded store is read in-process, not over a socket.
    fn connect_ring_reads(&self) -> Option<Result<std::os::fd::OwnedFd, StoreError>> {
        None
    }
    /// Keeps `sink` current with the stored users from now on, for as long as someone else
    /// holds it, reporting each change a moment after its commit. The backend reads the whole
    /// table again whenever it may have missed a change (after a lost connection), so a change
    /// made while it could not watch is seen once it can again.
    ///
    /// The default does nothing: right for the embedded store, whose users change only while
    /// the server is stopped (`ringport user` cannot open a data directory a server holds), so
    /// the table read at start-up stays current. PostgreSQL's users change under a running
    /// server (`ringport user`, another instance, SQL): see [`postgres`]'s `watch_users`.
    fn watch_users(&self, sink: Weak<dyn UserSink>) -> Result<(), StoreError> {
        let _ = sink;
        Ok(())
    }
}

/// What [`Backend::watch_users`] reports to: the server's in-memory user table. Called from the
/// backend's own thread.
pub trait UserSink: Send + Sync {
    /// The whole table, read after watching began: replaces everything held.
    fn replace_all(&self, users: Vec<UserRecord>);
    /// One user changed: `Some` is what the store holds now, `None` that the user is gone.
    fn update(&self, name: &str, user: Option<UserRecord>);
}

/// One column value of a SQL result, decoded from PostgreSQL's types.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Text, and types given as text (`numeric`, `uuid`, `json`).
    Text(String),
    Bytes(Vec<u8>),
}

/// What a statement returned: its columns, its rows, and the rows it changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    /// Rows inserted, updated, deleted or returned, as the command tag says.
    pub affected: u64,
}

/// A statement as PostgreSQL prepared it: how many parameters it takes and its columns (name and
/// type name), for checks at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlShape {
    pub params: usize,
    pub columns: Vec<(String, String)>,
    /// Columns of a type [`SqlValue`] cannot carry: `(name, type name)`.
    pub unsupported: Vec<(String, String)>,
}

/// SQL on a store connection (PostgreSQL only): what a user-defined store command runs.
///
/// Parameters travel as text (bytea as raw bytes), so PostgreSQL's own input functions convert
/// them to whatever type the statement needs, and a bad value is the statement's error
/// ([`StoreError::Sql`]), never a panic. Statements are prepared once per connection and kept.
pub trait Sql {
    /// Runs one statement (its own transaction unless inside [`Sql::begin`]).
    fn query(&mut self, statement: &str, params: &[&[u8]]) -> Result<SqlResult, StoreError>;
    /// Prepares a statement and reports its shape, without running it.
    fn describe(&mut self, statement: &str) -> Result<SqlShape, StoreError>;
    /// Starts a transaction. Until [`Sql::commit`] or [`Sql::rollback`], a lost connection fails
    /// every statement instead of reconnecting, so no statement runs outside it.
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Commits: `Ok` means durable.
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Rolls back (a failed transaction, a handler error).
    fn rollback(&mut self);
}

/// A key as a [`Txn`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    /// When the key expires, in ms since the Unix epoch; `None`: never.
    pub expires_at_ms: Option<i64>,
}

impl Entry {
    /// The entry of a stored key, or `None` when its expiry time has come by `now_ms`; the
    /// value is fetched only for a live key.
    pub fn if_live(
        expires_at_ms: Option<i64>,
        now_ms: i64,
        value: impl FnOnce() -> Vec<u8>,
    ) -> Option<Entry> {
        live(expires_at_ms, now_ms).then(|| Entry {
            value: value(),
            expires_at_ms,
        })
    }
}

/// The values of `keys`, each fetched with `value`, in order, stopping once they pass `budget`
/// bytes in all (the one that passes it included): what [`Conn::mget_within`] returns.
pub fn values_within<K>(
    keys: impl IntoIterator<Item = K>,
    budget: usize,
    mut value: impl FnMut(K) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    let (mut values, mut total) = (Vec::new(), 0usize);
    for key in keys {
        let found = value(key)?;
        total = total.saturating_add(found.as_ref().map_or(0, Vec::len));
        values.push(found);
        if total > budget {
            break;
        }
    }
    Ok(values)
}

/// One user's keys inside one store transaction ([`Conn::transact`]). A key whose expiry time
/// has come ([`Txn::now_ms`] or later) is absent, whether or not the sweep removed it yet.
pub trait Txn: Send {
    /// The transaction's clock (ms since the Unix epoch), read once when it began, so that every
    /// expiry decision inside it agrees.
    fn now_ms(&self) -> i64;
    /// The live entry of `key`, or `None`.
    fn get(&mut self, key: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// Sets `key` to `value` with this expiry (`None`: none), whatever it held.
    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Removes `key`; whether it was live.
    fn delete(&mut self, key: &[u8]) -> Result<bool, StoreError>;
    /// Changes the expiry of a live `key`; `false` (nothing changed) when it is absent.
    fn set_expiry(&mut self, key: &[u8], expires_at_ms: Option<i64>) -> Result<bool, StoreError>;
    /// Up to `limit` live keys in byte order, from the first (`after` = `None`) or from the
    /// first one past `after`.
    fn scan(&mut self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError>;
    /// How many live keys the owner has.
    fn count(&mut self) -> Result<u64, StoreError>;
    /// Removes every key of the owner, live or expired.
    fn clear(&mut self) -> Result<(), StoreError>;
}

/// What [`Conn::transact`] runs: it may run more than once (see [`StoreError::Conflict`]).
pub type TxnBody<'a> = dyn FnMut(&mut dyn Txn) -> Result<(), StoreError> + 'a;

/// How many times [`Conn::transact`] runs a body that met a concurrent writer.
pub const TRANSACT_ATTEMPTS: usize = 8;

/// Most expired keys one sweep call removes, in one short transaction.
pub const SWEEP_BATCH: usize = 500;

/// Runs `body` in one store transaction of `owner`'s keys ([`Conn::transact`]) and returns what
/// it returned. `body` runs again, from the start, only if the transaction met a concurrent
/// writer, so it must compute its result from what it reads.
pub fn transact<T>(
    conn: &mut dyn Conn,
    owner: &str,
    mut body: impl FnMut(&mut dyn Txn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut result = None;
    conn.transact(owner, &mut |txn| {
        result = Some(body(txn)?);
        Ok(())
    })?;
    Ok(result.expect("a committed transaction ran its body"))
}

/// Now, in ms since the Unix epoch: the clock every expiry is measured on.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Whether an entry expiring at `expires_at_ms` is live at `now_ms`.
pub fn live(expires_at_ms: Option<i64>, now_ms: i64) -> bool {
    expires_at_ms.is_none_or(|at| at > now_ms)
}

/// One store worker's connection. Key-value calls are scoped by `owner`.
pub trait Conn: Send {
    /// SQL on this connection; `None` on a store that has none (embedded).
    fn sql(&mut self) -> Option<&mut dyn Sql> {
        None
    }
    /// Whether the connection can serve a call now; a lost one is re-established first, no
    /// more often than the backend's reconnect interval allows. A worker whose connection is
    /// down stays off the queue while another worker's is up.
    fn ready(&mut self) -> bool {
        true
    }
    /// The value of `key`, or `None`.
    fn get(&mut self, owner: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The values of `keys`, in order, `None` for each missing one.
    fn mget(&mut self, owner: &str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.mget_within(owner, keys, usize::MAX)
    }
    /// [`mget`](Conn::mget), but it stops once the values fetched pass `budget` bytes in all,
    /// returning those of a prefix of `keys`: a reply that could never be sent (one big value
    /// named a thousand times) is not built in full first.
    fn mget_within(
        &mut self,
        owner: &str,
        keys: &[&[u8]],
        budget: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Sets `key` to `value`, committed durably.
    fn set(&mut self, owner: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// The values of several (owner, key) pairs, each one's outcome in order: the GETs of many
    /// sessions queued at the same moment, fetched with one store call.
    fn get_many(&mut self, keys: &[(&str, &[u8])]) -> Vec<Result<Option<Vec<u8>>, StoreError>>;
    /// Sets several (owner, key, value) triples, the SETs of many sessions queued at the same
    /// moment, in as few durable commits as the backend allows (one, unless one of them fails on
    /// its own); returns each one's outcome, in order. Of two triples with the same owner and
    /// key, the later wins. Each `Ok` means that triple is committed.
    fn set_many(&mut self, triples: &[(&str, &[u8], &[u8])]) -> Vec<Result<(), StoreError>>;
    /// Sets every pair in one transaction; of duplicate keys the later pair wins.
    fn mset(&mut self, owner: &str, pairs: &[(&[u8], &[u8])]) -> Result<(), StoreError>;
    /// Removes `keys`; returns how many existed (a key named twice counts once), as Redis.
    fn del(&mut self, owner: &str, keys: &[&[u8]]) -> Result<i64, StoreError>;
    /// How many of `keys` exist, counting repeats, as Redis.
    fn exists(&mut self, owner: &str, keys: &[&[u8]]) -> Result<i64, StoreError>;
    /// Adds `delta` to the integer at `key` (missing = 0) and returns the result, stored as its
    /// decimal text. The value must be a canonical decimal i64 as Redis parses it
    /// ([`parse_redis_i64`]) else [`StoreError::NotInteger`]; a result outside i64 is
    /// [`StoreError::Overflow`]. Atomic under concurrent calls from other connections and processes.
    fn incr_by(&mut self, owner: &str, key: &[u8], delta: i64) -> Result<i64, StoreError>;
    /// Runs `body` against `owner`'s keys in one store transaction: committed durably before
    /// this returns `Ok` when `body` returns `Ok` (nothing is written when it wrote nothing),
    /// rolled back when it returns `Err`, which this returns. A body that met a concurrent
    /// writer ([`StoreError::Conflict`]) is run again, up to [`TRANSACT_ATTEMPTS`] times.
    ///
    /// Embedded: one redb write transaction, serialised with the committer's batches by redb's
    /// write lock. PostgreSQL: `BEGIN`, row locks on what it reads, `COMMIT`, on this
    /// connection; each statement has the call deadline.
    fn transact(&mut self, owner: &str, body: &mut TxnBody<'_>) -> Result<(), StoreError>;
    /// Removes at most `limit` keys (of any owner) whose expiry time is `now_ms` or earlier,
    /// in one short transaction; returns how many it removed.
    fn sweep_expired(&mut self, now_ms: i64, limit: usize) -> Result<usize, StoreError>;
    /// A store call that takes `ms` (PostgreSQL: `pg_sleep`; embedded: a timed wait).
    fn sleep(&mut self, ms: u64) -> Result<(), StoreError>;
    /// The user named `name`, or `None`.
    fn user(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Inserts or replaces a user.
    fn put_user(&mut self, user: &UserRecord) -> Result<(), StoreError>;
    /// Removes a user; `true` if it existed. The user's keys stay.
    fn del_user(&mut self, name: &str) -> Result<bool, StoreError>;
    /// Every user, sorted by name (byte order).
    fn users(&mut self) -> Result<Vec<UserRecord>, StoreError>;
}

/// Parses an integer the way Redis's `string2ll` does for INCR: canonical decimal only.
///
/// Accepted: `0`, or an optional `-` then a digit 1-9 then digits, fitting i64. Rejected: empty,
/// spaces anywhere, a leading `+`, leading zeros (`01`, `-0`), anything longer than 20 bytes.
/// Checked against redis-server 7: `"01"`, `"+1"`, `" 1"`, `"-0"`, `"9223372036854775808"` all
/// answer "value is not an integer or out of range".
pub fn parse_redis_i64(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes {
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    if digits.len() > 19 {
        return None;
    }
    // Accumulate as a negative number so that i64::MIN parses.
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_sub(i64::from(digit - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// The INCRBY arithmetic shared by both backends: `current` is the stored value or `None`.
pub(crate) fn incremented(current: Option<&[u8]>, delta: i64) -> Result<i64, StoreError> {
    let base = match current {
        None => 0,
        Some(bytes) => parse_redis_i64(bytes).ok_or(StoreError::NotInteger)?,
    };
    base.checked_add(delta).ok_or(StoreError::Overflow)
}

/// Masks the password of a PostgreSQL URL (`user:secret@`) or libpq string (`password=secret`),
/// for error messages and logs.
pub fn redact_password(value: &str) -> String {
    if let Some(scheme_end) = value.find("://") {
        let rest = &value[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &value[..scheme_end + 3],
                    &userinfo[..colon],
                    &value[scheme_end + 3 + at..]
                );
            }
        }
        // A password can also ride in the query string.
        if let Some(position) = value.find("password=") {
            let end = value[position..]
                .find('&')
                .map_or(value.len(), |offset| position + offset);
            return format!("{}password=***{}", &value[..position], &value[end..]);
        }
        return value.to_string();
    }
    redact_keyword_value(value)
}

/// Masks the value of `password` in a libpq key/value string, in every form libpq accepts:
/// `password=x`, `password = x`, `password='a b'` (with `\'` escapes).
fn redact_keyword_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || bytes[i - 1].is_ascii_whitespace();
        if at_word_start && value[i..].starts_with("password") {
            let mut j = i + "password".len();
            while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == b'=' {
                j += 1;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                // Skip the value: quoted (with backslash escapes) or up to whitespace.
                if j < bytes.len() && bytes[j] == b'\'' {
                    j += 1;
                    while j < bytes.len() && bytes[j] != b'\'' {
                        j += if bytes[j] == b'\\' { 2 } else { 1 };
                    }
                    j = (j + 1).min(bytes.len());
                } else {
                    while j < bytes.len() && !bytes[j].is_ascii_whitespace() {
                        j += 1;
                    }
                }
                out.push_str("password=***");
                i = j;
                continue;
            }
        }
        let ch = value[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_libpq_password_form_is_masked() {
        for (given, want) in [
            (
                "host=/tmp password=secret dbname=x",
                "host=/tmp password=*** dbname=x",
            ),
            (
                "host=/tmp password = secret dbname=x",
                "host=/tmp password=*** dbname=x",
            ),
            ("password='a b' host=h", "password=*** host=h"),
            ("password='it\\'s secret' host=h", "password=*** host=h"),
            ("host=h user=passwordless", "host=h user=passwordless"),
        ] {
            assert_eq!(redact_password(given), want, "{given}");
        }
    }

    #[test]
    fn parse_defaults_to_embedded_in_the_data_dir() {
        let dir = Path::new("some/dir");
        for store in [None, Some("embedded"), Some(" embedded ")] {
            match StoreSpec::parse(store, dir).unwrap() {
                StoreSpec::Embedded { dir, .. } => assert_eq!(dir, Path::new("some/dir")),
                other => panic!("{store:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn parse_recognises_postgres_urls_and_libpq_strings() {
        for value in [
            "postgres://user@localhost:5432/ringport",
            "postgresql://user:secret@db.example/ringport",
            "host=/tmp/sock port=5432 user=postgres dbname=ringport",
            "dbname=ringport host=localhost",
        ] {
            match StoreSpec::parse(Some(value), Path::new("d")).unwrap() {
                StoreSpec::Postgres { url } => assert_eq!(url, value),
                other => panic!("{value} gave {other:?}"),
            }
        }
    }

    #[test]
    fn parse_rejects_anything_else_naming_the_value() {
        for value in ["", "redis://localhost", "mysql://x", "sqlite", "dbname=x"] {
            let error = StoreSpec::parse(Some(value), Path::new("d")).unwrap_err();
            let StoreError::Other(message) = error else {
                panic!("{value}: {error:?}")
            };
            assert!(message.contains(&format!("'{value}'")), "{message}");
        }
    }

    #[test]
    fn parse_errors_never_show_a_password() {
        let error = StoreSpec::parse(
            Some("host=x port=notaport password=hunter2"),
            Path::new("d"),
        )
        .unwrap_err()
        .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("password=***"), "{error}");
    }

    #[test]
    fn redact_password_masks_every_form() {
        assert_eq!(
            redact_password("postgres://bob:hunter2@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(
            redact_password("postgres://bob@db/x?password=hunter2&sslmode=disable"),
            "postgres://bob@db/x?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_password("host=db password=hunter2 user=bob"),
            "host=db password=*** user=bob"
        );
        assert_eq!(redact_password("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn parse_redis_i64_accepts_what_redis_accepts() {
        let cases: &[(&[u8], Option<i64>)] = &[
            (b"0", Some(0)),
            (b"1", Some(1)),
            (b"-1", Some(-1)),
            (b"10", Some(10)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-9223372036854775809", None),
            (b"99999999999999999999", None),
            (b"", None),
            (b"-", None),
            (b"+1", None),
            (b" 1", None),
            (b"1 ", None),
            (b"01", None),
            (b"00", None),
            (b"-0", None),
            (b"-01", None),
            (b"1.0", None),
            (b"1e3", None),
            (b"0x10", None),
            (b"1\n", None),
            (b"\x001", None),
            (b"000000000000000000001", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_redis_i64(input),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn incremented_follows_redis() {
        assert_eq!(incremented(None, 5), Ok(5));
        assert_eq!(incremented(None, i64::MIN), Ok(i64::MIN));
        assert_eq!(incremented(Some(b"41"), 1), Ok(42));
        assert_eq!(incremented(Some(b"x"), 1), Err(StoreError::NotInteger));
        assert_eq!(
            incremented(Some(b"9223372036854775807"), 1),
            Err(StoreError::Overflow)
        );
        assert_eq!(
            incremented(Some(b"-9223372036854775808"), -1),
            Err(StoreError::Overflow)
        );
    }

    #[test]
    fn resp_messages_match_redis_wording() {
        assert_eq!(
            StoreError::Unavailable("connection refused".into()).resp_message(),
            "ERR store unavailable"
        );
        assert_eq!(
            StoreError::NotInteger.resp_message(),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            StoreError::Overflow.resp_message(),
            "ERR increment or decrement would overflow"
        );
    }
}
