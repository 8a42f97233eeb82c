//! The PostgreSQL store: tokio-postgres driven by a blocking `block_on` per call (what the
//! `postgres` crate does, plus a deadline on every call), one connection per [`Conn`].
//!
//! Schema (created and migrated by [`Postgres::open`], see [`MIGRATIONS`]):
//!
//! ```sql
//! ringport_schema_version(version integer primary key, applied_at timestamptz)
//! ringport_users(name text primary key, hash text not null, disabled boolean not null default false,
//!                admin boolean not null default false)  -- admin: migration 4
//! ringport_kv(owner text collate "C", key bytea, value bytea not null, primary key (owner, key),
//!             expires_at bigint)  -- ms since the Unix epoch, null: never (migration 5)
//! ```
//!
//! Every read treats a row whose `expires_at` has come as absent (the time is the client's clock,
//! passed as a parameter, the one [`super::Txn::now_ms`] uses); the sweep deletes such rows in
//! batches of at most [`super::SWEEP_BATCH`], one short statement each, through the partial
//! index on `expires_at`.
//!
//! Outage handling, per connection:
//!
//! - No call waits on PostgreSQL for long: each has a deadline ([`CALL_TIMEOUT`], plus the sleep
//!   for SLEEP), a connection attempt has one (the URL's `connect_timeout`, 1 s by default, plus
//!   [`CALL_TIMEOUT`] for the handshake and preparing statements), and the sockets have TCP
//!   keepalives (2 s idle, 1 s interval, 2 probes) and `tcp_user_timeout` 1.5 s unless the URL
//!   sets its own. A server that is down, unreachable, or hung (paused, stuck on I/O, behind a
//!   dead network path) answers [`StoreError::Unavailable`] within about a second.
//! - A call that fails on the connection itself, or misses its deadline, drops the connection and
//!   answers `Unavailable`. The next call reconnects, at most once per [`RECONNECT_INTERVAL`]
//!   after the last attempt ended (longer after an attempt that itself timed out), so a down
//!   store answers fast instead of waiting on a connect each time.
//! - A connection the server ended while we were idle (a restart) fails the next call in a way
//!   that proves the statement did not run (FATAL 57P01, or EPIPE on the write): the call is run
//!   once more on a fresh connection, so the first call after PostgreSQL is back succeeds.
//! - The loss and the recovery are logged once per transition, never per call.
//!
//! A call is retried only when the server said it did not run it: an INCR whose fate is unknown is
//! reported `Unavailable`, never applied twice.
//!
//! Users: a trigger (migration 2) notifies channel `ringport_users` on every committed change to
//! `ringport_users`; [`watch`] LISTENs on a connection of its own and keeps the server's
//! in-memory user table current, reading the whole table again after any lost connection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::{
    incremented, live, now_ms, redact_password, values_within, Backend, Conn, Entry, Sql,
    StoreError, Txn, TxnBody, UserRecord, UserSink, TRANSACT_ATTEMPTS,
};

mod sql;
pub mod watch;
pub mod wire;

/// How long after a failed connection attempt the next may start.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// The deadline of one call (SLEEP adds its own duration). A call that misses it answers
/// `Unavailable` and its connection is dropped.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// The deadline of [`Postgres::open`]'s migration, which may wait for another process's.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(30);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 2;
const TCP_USER_TIMEOUT: Duration = Duration::from_millis(1500);
/// libpq's and tokio-postgres's default keepalive idle time: "not set by the URL".
const KEEPALIVE_IDLE_DEFAULT: Duration = Duration::from_secs(2 * 60 * 60);

/// The advisory lock that serialises migrations across processes ("ringport" in ASCII).
const MIGRATION_LOCK: i64 = 0x7269_6e67_6c69_6e65;

/// Optimistic INCR attempts (read, then compare-and-set) before taking the row lock.
const INCR_OPTIMISTIC_ATTEMPTS: usize = 3;

/// The schema, one step per version. Each step runs once, in order, in the migrating transaction;
/// a database at version n runs the steps after n. Never edit a step that has shipped: add one.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS ringport_users (
         name text PRIMARY KEY,
         hash text NOT NULL,
         disabled boolean NOT NULL DEFAULT false
     );
     CREATE TABLE IF NOT EXISTS ringport_kv (
         owner text NOT NULL,
         key bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (owner, key)
     );",
    ),
    // Every change to ringport_users notifies channel `ringport_users` with
    // {"schema": the table's schema, "name": the user, or null for "read everything again"}
    // (TRUNCATE, or a name too long for a notification's 8000-byte payload). Sent at commit,
    // never for a rolled-back change; see `watch`.
    (
        2,
        "CREATE OR REPLACE FUNCTION ringport_users_notify() RETURNS trigger
         LANGUAGE plpgsql AS $body$
         BEGIN
             IF TG_OP = 'TRUNCATE' THEN
                 PERFORM pg_notify('ringport_users',
                     json_build_object('schema', TG_TABLE_SCHEMA, 'name', NULL)::text);
                 RETURN NULL;
             END IF;
             IF TG_OP IN ('UPDATE', 'DELETE') THEN
                 PERFORM pg_notify('ringport_users',
                     json_build_object('schema', TG_TABLE_SCHEMA, 'name',
                         CASE WHEN octet_length(OLD.name) <= 4000 THEN OLD.name END)::text);
             END IF;
             IF TG_OP IN ('INSERT', 'UPDATE') THEN
                 PERFORM pg_notify('ringport_users',
                     json_build_object('schema', TG_TABLE_SCHEMA, 'name',
                         CASE WHEN octet_length(NEW.name) <= 4000 THEN NEW.name END)::text);
             END IF;
             RETURN NULL;
         END
         $body$;
         CREATE TRIGGER ringport_users_notify
             AFTER INSERT OR UPDATE OR DELETE ON ringport_users
             FOR EACH ROW EXECUTE PROCEDURE ringport_users_notify();
         CREATE TRIGGER ringport_users_notify_truncate
             AFTER TRUNCATE ON ringport_users
             FOR EACH STATEMENT EXECUTE PROCEDURE ringport_users_notify();",
    ),
    // Every key-value lookup compares owners: under the database's collation (C.UTF-8,
    // en_US.UTF-8, ...) each comparison goes through strcoll; under "C" it is a memcmp. A point
    // read measured 10-20% faster in pgbench on C.UTF-8. The owner is a name, compared for
    // equality only, so no order a user sees changes. Rewrites the table and its index once.
    (
        3,
        "ALTER TABLE ringport_kv ALTER COLUMN owner TYPE text COLLATE \"C\";",
    ),
    // Admins may manage users over the protocol (ACL SETUSER ...). The first start's `admin`
    // user of an older store is made one by the server (`server::open_store`), not here.
    (
        4,
        "ALTER TABLE ringport_users ADD COLUMN IF NOT EXISTS admin boolean NOT NULL DEFAULT false;",
    ),
    // Expiry (EXPIRE, SET ... PX): a nullable column, so existing rows need no rewrite, and a
    // partial index that holds only the keys that expire, for the sweep.
    (
        5,
        "ALTER TABLE ringport_kv ADD COLUMN IF NOT EXISTS expires_at bigint;
         CREATE INDEX IF NOT EXISTS ringport_kv_expires_at ON ringport_kv (expires_at)
             WHERE expires_at IS NOT NULL;",
    ),
];

/// The PostgreSQL backend: a checked configuration. Holds no connection itself.
pub struct Postgres {
    config: Config,
    description: Arc<str>,
    call_timeout: Duration,
    next_connection_id: AtomicU64,
    /// Connections re-established after a loss, by any [`PostgresConn`].
    reconnects: Arc<AtomicU64>,
}

impl Postgres {
    /// Parses `url`, connects once, and creates or migrates the schema. Safe to run from several
    /// processes at once: the migration holds an advisory lock inside its transaction.
    pub fn open(url: &str) -> Result<Postgres, StoreError> {
        Postgres::open_with(url, CALL_TIMEOUT)
    }

    /// [`Postgres::open`] with another deadline for each call than [`CALL_TIMEOUT`].
    pub fn open_with(url: &str, call_timeout: Duration) -> Result<Postgres, StoreError> {
        let mut config: Config = url.parse().map_err(|error| {
            StoreError::Other(format!(
                "invalid PostgreSQL store '{}': {error}",
                redact_password(url)
            ))
        })?;
        apply_defaults(&mut config);
        let description: Arc<str> = describe(&config).into();
        let mut link = Link::connect(&config, connect_deadline(&config, call_timeout)).map_err(
            |failure| {
                StoreError::Unavailable(format!(
                    "cannot connect to {description}: {} (is PostgreSQL running, and is --store right?)",
                    failure.text()
                ))
            },
        )?;
        let version = link
            .run(MIGRATION_TIMEOUT, async |client| migrate(client).await)
            .map_err(|failure| match failure {
                Failure::Store(error) => error,
                other => StoreError::Other(format!(
                    "cannot create or migrate the ringport schema on {description}: {}",
                    other.text()
                )),
            })?;
        tracing::info!(store = %description, schema_version = version, "PostgreSQL store ready");
        Ok(Postgres {
            config,
            description,
            call_timeout,
            next_connection_id: AtomicU64::new(1),
            reconnects: Arc::default(),
        })
    }
}

/// How long a connection attempt may take: the socket's `connect_timeout`, then a call's
/// deadline for the handshake and preparing the statements.
fn connect_deadline(config: &Config, call_timeout: Duration) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT)
        + call_timeout
}

/// Bounds every socket operation, unless the URL chose its own values.
fn apply_defaults(config: &mut Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_keepalives() && config.get_keepalives_idle() == KEEPALIVE_IDLE_DEFAULT {
        config.keepalives_idle(KEEPALIVE_IDLE);
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("ringport");
    }
}

/// `postgres host=... port=... dbname=... user=...`: where, never the password.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut description = String::from("postgres");
    if !hosts.is_empty() {
        description += &format!(" host={}", hosts.join(","));
    }
    if !ports.is_empty() {
        description += &format!(" port={}", ports.join(","));
    }
    if let Some(dbname) = config.get_dbname() {
        description += &format!(" dbname={dbname}");
    }
    if let Some(user) = config.get_user() {
        description += &format!(" user={user}");
    }
    description
}

/// Brings the schema to the newest version in [`MIGRATIONS`]; returns that version.
async fn migrate(client: &mut Client) -> Result<i32, Failure> {
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    let transaction = client.transaction().await?;
    // Two processes starting at once: the second waits here until the first committed.
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS ringport_schema_version (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let current: i32 = transaction
        .query_one(
            "SELECT coalesce(max(version), 0) FROM ringport_schema_version",
            &[],
        )
        .await?
        .get(0);
    if current > latest {
        return Err(Failure::Store(StoreError::Other(format!(
            "the PostgreSQL schema is at version {current}, newer than this ringport's {latest}: upgrade ringport"
        ))));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO ringport_schema_version (version) VALUES ($1)",
                &[version],
            )
            .await?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    transaction.commit().await?;
    Ok(latest)
}

impl Backend for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn describe(&self) -> String {
        self.description.to_string()
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    fn connect_ring_reads(&self) -> Option<Result<std::os::fd::OwnedFd, StoreError>> {
        let deadline = connect_deadline(&self.config, self.call_timeout);
        Some(wire::connect(&self.config, deadline).map_err(|error| {
            StoreError::Unavailable(format!("cannot connect to {}: {error}", self.description))
        }))
    }

    fn connect(&self) -> Result<Box<dyn Conn>, StoreError> {
        let session = Session::connect(&self.config, self.call_timeout).map_err(|failure| {
            StoreError::Unavailable(format!(
                "cannot connect to {}: {}",
                self.description,
                failure.text()
            ))
        })?;
        Ok(Box::new(PostgresConn {
            config: self.config.clone(),
            description: Arc::clone(&self.description),
            call_timeout: self.call_timeout,
            reconnects: Arc::clone(&self.reconnects),
            id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
            session: Some(session),
            next_attempt: None,
            down: None,
            in_transaction: false,
            last_probe: Instant::now(),
        }))
    }

    /// Starts the `user-watch` thread: LISTEN/NOTIFY on a connection of its own ([`watch`]).
    fn watch_users(&self, sink: Weak<dyn UserSink>) -> Result<(), StoreError> {
        watch::start(
            self.config.clone(),
            Arc::clone(&self.description),
            self.call_timeout,
            sink,
        )
    }
}

/// The connection's background half: reads and writes the socket while a call is being driven.
type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// One connection: its own single-threaded runtime, the client, and the connection future,
/// which makes progress only inside [`Link::run`] (between calls nobody reads the socket, as
/// with the `postgres` crate).
struct Link {
    runtime: Runtime,
    client: Client,
    driver: Driver,
    /// The driver finished: the connection is closed.
    driver_done: bool,
}

impl Link {
    /// Connects within `deadline` (socket, startup, authentication).
    fn connect(config: &Config, deadline: Duration) -> Result<Link, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| {
                Failure::Store(StoreError::Other(format!(
                    "cannot start a runtime for a PostgreSQL connection: {error}"
                )))
            })?;
        let connected =
            runtime.block_on(async { tokio::time::timeout(deadline, config.connect(NoTls)).await });
        let (client, connection) = connected.map_err(|_| Failure::Timeout(deadline))??;
        Ok(Link {
            runtime,
            client,
            driver: Box::pin(connection),
            driver_done: false,
        })
    }

    /// Runs `call` to completion within `deadline`, driving the connection meanwhile. An error
    /// the connection itself ends with (a FATAL from the server, a closed socket) is the call's
    /// error: it says more than the "connection closed" the call would see.
    fn run<T>(
        &mut self,
        deadline: Duration,
        call: impl AsyncFnOnce(&mut Client) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let Link {
            runtime,
            client,
            driver,
            driver_done,
        } = self;
        runtime.block_on(async {
            let mut call = pin!(call(client));
            let driven = poll_fn(|context| {
                // The connection first, as the postgres crate does: a FATAL already waiting on
                // the socket surfaces before the call's request is written.
                if !*driver_done {
                    if let Poll::Ready(ended) = driver.as_mut().poll(context) {
                        *driver_done = true;
                        if let Err(error) = ended {
                            return Poll::Ready(Err(Failure::Postgres(error)));
                        }
                    }
                }
                call.as_mut().poll(context)
            });
            match tokio::time::timeout(deadline, driven).await {
                Ok(result) => result,
                Err(_) => Err(Failure::Timeout(deadline)),
            }
        })
    }

    /// Drives an idle connection without waiting, so that one the server closed meanwhile (a
    /// restart, an outage) is noticed now rather than by the next call's failure: only calls
    /// drive it otherwise. A poll, one zero-timeout turn of the runtime's I/O driver (what
    /// `yield_now` gets inside `block_on`), and a poll again: a few microseconds, one
    /// `epoll_wait`.
    fn notice_close(&mut self) {
        let Link {
            runtime,
            driver,
            driver_done,
            ..
        } = self;
        if *driver_done {
            return;
        }
        runtime.block_on(async {
            for turn in 0..2 {
                if turn > 0 {
                    tokio::task::yield_now().await;
                }
                if poll_fn(|context| Poll::Ready(driver.as_mut().poll(context).is_ready())).await {
                    *driver_done = true;
                    return;
                }
            }
        });
    }
}

/// One live connection and its prepared statements.
struct Session {
    link: Link,
    statements: Statements,
}

/// Prepared once per connection.
struct Statements {
    get: Statement,
    get_many: Statement,
    mget: Statement,
    set: Statement,
    set_many: Statement,
    mset: Statement,
    del: Statement,
    exists: Statement,
    insert_if_absent: Statement,
    compare_and_set: Statement,
    get_for_update: Statement,
    update: Statement,
    get_entry: Statement,
    put_entry: Statement,
    insert_entry: Statement,
    delete_entry: Statement,
    set_expiry: Statement,
    scan_first: Statement,
    scan_after: Statement,
    count: Statement,
    clear: Statement,
    sweep: Statement,
    sleep: Statement,
    user: Statement,
    put_user: Statement,
    del_user: Statement,
    users: Statement,
    /// User-defined commands' statements, prepared on first use (see [`sql`]).
    custom: std::cell::RefCell<HashMap<String, Statement>>,
}

impl Session {
    /// Whether the connection is still open.
    fn alive(&self) -> bool {
        !self.link.driver_done && !self.link.client.is_closed()
    }

    /// Connects and prepares every statement, within the connect deadline.
    fn connect(config: &Config, call_timeout: Duration) -> Result<Session, Failure> {
        let deadline = connect_deadline(config, call_timeout);
        let started = Instant::now();
        let mut link = Link::connect(config, deadline)?;
        let left = deadline.saturating_sub(started.elapsed());
        let statements = link.run(left, async |client| Ok(prepare(client).await?))?;
        Ok(Session { link, statements })
    }
}

/// Prepares every statement the calls use.
///
/// Each statement is planned once, for any parameters (`plan_cache_mode = force_generic_plan`,
/// PostgreSQL 12+; older servers keep their default): every one is an index lookup whatever the
/// parameters, and PostgreSQL otherwise re-plans the batched GET (`unnest ... JOIN`) on every
/// call, because its generic plan's estimated cost never beats a custom plan's. Under a GET load
/// that planning was most of the server's CPU.
async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
    if let Err(error) = client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
    {
        if error.code() != Some(&SqlState::UNDEFINED_OBJECT) {
            return Err(error);
        }
    }
    Ok(Statements {
            get: client.prepare(
                "SELECT value FROM ringport_kv WHERE owner = $1 AND key = $2
                 AND (expires_at IS NULL OR expires_at > $3)",
            ).await?,
            get_many: client.prepare(
                "SELECT wanted.ord, kv.value
                 FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS wanted(owner, key, ord)
                 JOIN ringport_kv kv ON kv.owner = wanted.owner AND kv.key = wanted.key
                 AND (kv.expires_at IS NULL OR kv.expires_at > $3)",
            ).await?,
            mget: client.prepare(
                "SELECT key, value FROM ringport_kv WHERE owner = $1 AND key = ANY($2::bytea[])
                 AND (expires_at IS NULL OR expires_at > $3)",
            ).await?,
            set_many: client.prepare(
                "INSERT INTO ringport_kv (owner, key, value)
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
                 ON CONFLICT (owner, key) DO UPDATE SET value = EXCLUDED.value, expires_at = NULL",
            ).await?,
            set: client.prepare(
                "INSERT INTO ringport_kv (owner, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (owner, key) DO UPDATE SET value = EXCLUDED.value, expires_at = NULL",
            ).await?,
            mset: client.prepare(
                "INSERT INTO ringport_kv (owner, key, value)
                 SELECT $1, pair.key, pair.value FROM unnest($2::bytea[], $3::bytea[]) AS pair(key, value)
                 ON CONFLICT (owner, key) DO UPDATE SET value = EXCLUDED.value, expires_at = NULL",
            ).await?,
            del: client.prepare(
                "WITH removed AS (
                     DELETE FROM ringport_kv WHERE owner = $1 AND key = ANY($2::bytea[])
                     RETURNING expires_at)
                 SELECT count(*) FROM removed WHERE expires_at IS NULL OR expires_at > $3",
            ).await?,
            exists: client.prepare(
                "SELECT key FROM ringport_kv WHERE owner = $1 AND key = ANY($2::bytea[])
                 AND (expires_at IS NULL OR expires_at > $3)",
            ).await?,
            insert_if_absent: client.prepare(
                "INSERT INTO ringport_kv (owner, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (owner, key) DO NOTHING",
            ).await?,
            compare_and_set: client.prepare(
                "UPDATE ringport_kv SET value = $4, expires_at = $6
                 WHERE owner = $1 AND key = $2 AND value = $3
                 AND expires_at IS NOT DISTINCT FROM $5",
            ).await?,
            get_for_update: client.prepare(
                "SELECT value, expires_at FROM ringport_kv WHERE owner = $1 AND key = $2 FOR UPDATE",
            ).await?,
            update: client.prepare(
                "UPDATE ringport_kv SET value = $3, expires_at = $4 WHERE owner = $1 AND key = $2",
            ).await?,
            get_entry: client.prepare(
                "SELECT value, expires_at FROM ringport_kv WHERE owner = $1 AND key = $2",
            ).await?,
            put_entry: client.prepare(
                "INSERT INTO ringport_kv (owner, key, value, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (owner, key)
                 DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
            ).await?,
            insert_entry: client.prepare(
                "INSERT INTO ringport_kv (owner, key, value, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (owner, key) DO NOTHING",
            ).await?,
            delete_entry: client.prepare(
                "DELETE FROM ringport_kv WHERE owner = $1 AND key = $2 RETURNING expires_at",
            ).await?,
            set_expiry: client.prepare(
                "UPDATE ringport_kv SET expires_at = $3 WHERE owner = $1 AND key = $2
                 AND (expires_at IS NULL OR expires_at > $4)",
            ).await?,
            scan_first: client.prepare(
                "SELECT key FROM ringport_kv WHERE owner = $1
                 AND (expires_at IS NULL OR expires_at > $2) ORDER BY key LIMIT $3",
            ).await?,
            scan_after: client.prepare(
                "SELECT key FROM ringport_kv WHERE owner = $1 AND key > $4
                 AND (expires_at IS NULL OR expires_at > $2) ORDER BY key LIMIT $3",
            ).await?,
            count: client.prepare(
                "SELECT count(*) FROM ringport_kv WHERE owner = $1
                 AND (expires_at IS NULL OR expires_at > $2)",
            ).await?,
            clear: client.prepare("DELETE FROM ringport_kv WHERE owner = $1").await?,
            // SKIP LOCKED: a row a transaction holds is left for the next sweep, so the sweep
            // never waits on a client's transaction (nor it on the sweep).
            sweep: client.prepare(
                "DELETE FROM ringport_kv WHERE (owner, key) IN (
                     SELECT owner, key FROM ringport_kv
                     WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2
                     FOR UPDATE SKIP LOCKED)
                 AND expires_at <= $1",
            ).await?,
            sleep: client.prepare("SELECT pg_sleep($1::float8)").await?,
            user: client
                .prepare("SELECT name, hash, disabled, admin FROM ringport_users WHERE name = $1").await?,
            put_user: client.prepare(
                "INSERT INTO ringport_users (name, hash, disabled, admin) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE
                 SET hash = EXCLUDED.hash, disabled = EXCLUDED.disabled, admin = EXCLUDED.admin",
            ).await?,
            del_user: client.prepare("DELETE FROM ringport_users WHERE name = $1").await?,
            users: client.prepare(
                "SELECT name, hash, disabled, admin FROM ringport_users ORDER BY name COLLATE \"C\"",
            ).await?,
            custom: Default::default(),
    })
}

/// Why a call failed, before it is turned into a [`StoreError`].
enum Failure {
    Postgres(tokio_postgres::Error),
    /// No answer within the deadline.
    Timeout(Duration),
    Store(StoreError),
}

impl Failure {
    /// For logs and `Unavailable`'s text: never a value.
    fn text(&self) -> String {
        match self {
            Failure::Postgres(error) => error_text(error),
            Failure::Timeout(deadline) => format!("no answer within {deadline:?}"),
            Failure::Store(error) => error.to_string(),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Failure {
        Failure::Postgres(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

/// Whether `error` means the connection itself is gone or unusable (as opposed to a statement
/// the server refused on a healthy connection).
fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    let io = std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>());
    match error.code() {
        // No SQLSTATE: an I/O error is the connection's; a parameter that would not encode is
        // the call's (a protocol error closes the client, which `run` checks too).
        None => io,
        Some(code) => {
            let code = code.code();
            // 08: connection exception; 57P0x: the server is shutting down or starting up;
            // 53300: too many connections; 58: system error (I/O on the server).
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("58")
                || code == SqlState::TOO_MANY_CONNECTIONS.code()
        }
    }
}

/// One store worker's PostgreSQL connection, reconnecting by itself.
struct PostgresConn {
    config: Config,
    description: Arc<str>,
    call_timeout: Duration,
    /// The backend's count of re-established connections.
    reconnects: Arc<AtomicU64>,
    /// Names this connection in logs.
    id: u64,
    /// `None` while disconnected.
    session: Option<Session>,
    /// While disconnected: no connection attempt before this instant.
    next_attempt: Option<Instant>,
    /// Why the store is unreachable, while it is; logged once when it becomes so.
    down: Option<String>,
    /// Inside a user-defined command's transaction ([`super::Sql::begin`]): a lost connection
    /// fails the calls instead of reconnecting, so nothing runs outside the transaction.
    in_transaction: bool,
    /// When `ready` last drove the idle connection (see [`Link::notice_close`]).
    last_probe: Instant,
}

/// How often `ready` drives an idle connection to notice a close: it runs before every batch,
/// and a busy worker learns of a close from its calls anyway.
const PROBE_EVERY: Duration = Duration::from_millis(100);

impl PostgresConn {
    /// Makes sure a live session exists, reconnecting if allowed.
    fn ensure_session(&mut self) -> Result<(), StoreError> {
        if let Some(session) = &self.session {
            if session.alive() {
                return Ok(());
            }
            self.session = None;
            self.mark_down("the connection closed".into());
        }
        if let Some(next_attempt) = self.next_attempt {
            if Instant::now() < next_attempt {
                return Err(self.unavailable());
            }
        }
        let started = Instant::now();
        match Session::connect(&self.config, self.call_timeout) {
            Ok(session) => {
                self.session = Some(session);
                self.next_attempt = None;
                // Every connection past a worker's first replaces a lost one.
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                if self.down.take().is_some() {
                    tracing::info!(
                        connection = self.id,
                        store = %self.description,
                        "store connection restored"
                    );
                }
                Ok(())
            }
            Err(failure) => {
                // An attempt that took long (a hung server) waits as long again before the next,
                // so a worker spends at most about half its time waiting on a dead store.
                let took = started.elapsed();
                self.next_attempt = Some(Instant::now() + took.max(RECONNECT_INTERVAL));
                self.mark_down(format!("cannot connect: {}", failure.text()));
                Err(self.unavailable())
            }
        }
    }

    fn mark_down(&mut self, reason: String) {
        if self.down.is_none() {
            tracing::warn!(
                connection = self.id,
                store = %self.description,
                %reason,
                "store connection lost; store calls answer 'store unavailable' until it is back"
            );
        }
        self.down = Some(reason);
    }

    fn unavailable(&self) -> StoreError {
        StoreError::Unavailable(
            self.down
                .clone()
                .unwrap_or_else(|| "not connected".to_string()),
        )
    }

    /// Runs `call` on a live session within the call deadline (plus `extra`), turning failures
    /// into [`StoreError`]s and dropping the session when the connection itself failed or the
    /// deadline passed.
    ///
    /// One retry, on a fresh connection, when the failure proves the call took no effect
    /// ([`ended_before_running`]): the server was stopped or restarted while this connection sat
    /// idle. Any other connection failure (a crash mid-call, a reset, a missed deadline) may have
    /// come after a commit, so it is answered `Unavailable`, never retried: an INCR is never
    /// applied twice.
    fn run<T>(
        &mut self,
        extra: Duration,
        mut call: impl AsyncFnMut(&mut Client, &Statements) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let deadline = self.call_timeout + extra;
        let mut retried = false;
        loop {
            if self.in_transaction && !self.session.as_ref().is_some_and(Session::alive) {
                return Err(StoreError::Unavailable(
                    "the connection was lost inside a transaction".into(),
                ));
            }
            self.ensure_session()?;
            let Session { link, statements } = self
                .session
                .as_mut()
                .expect("ensure_session left a session");
            let failure = match link.run(deadline, async |client| call(client, statements).await) {
                Ok(value) => return Ok(value),
                Err(Failure::Store(error)) => return Err(error),
                Err(failure) => failure,
            };
            if let Failure::Postgres(error) = &failure {
                if !is_connection_error(error) && !link.driver_done && !link.client.is_closed() {
                    return Err(statement_error(error));
                }
            }
            self.session = None;
            self.mark_down(failure.text());
            if !retried && !self.in_transaction && ended_before_running(&failure) {
                retried = true;
                self.next_attempt = None;
                continue;
            }
            self.next_attempt = Some(Instant::now() + RECONNECT_INTERVAL);
            return Err(self.unavailable());
        }
    }
}

/// Whether `error` proves the call took no effect, so that running it again on a fresh
/// connection cannot apply it twice (see [`PostgresConn::run`]):
///
/// - FATAL 57P01 (admin shutdown): the server acts on a shutdown request only at interrupt
///   checkpoints, never inside a commit, and rolls back the statement it interrupts;
/// - a write that failed with EPIPE: the server's end was already gone, so the request never
///   reached a server that could run it (PostgreSQL runs nothing of an incomplete request).
///
/// Not 57P02, an immediate shutdown, a reset or a timeout: those can come after a commit.
fn ended_before_running(failure: &Failure) -> bool {
    let Failure::Postgres(error) = failure else {
        return false;
    };
    if error.code() == Some(&SqlState::ADMIN_SHUTDOWN) {
        return true;
    }
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// An error for logs: the server's SQLSTATE and message (never its DETAIL, which can quote
/// values), or the client's error and its cause.
fn error_text(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// A statement the server refused on a healthy connection.
fn statement_error(error: &tokio_postgres::Error) -> StoreError {
    match error.code() {
        Some(code) if *code == SqlState::PROGRAM_LIMIT_EXCEEDED => StoreError::Other(format!(
            "key too large for PostgreSQL's index (keys up to about 2.7 kB): {}",
            error_text(error)
        )),
        _ => StoreError::Other(format!("postgres: {}", error_text(error))),
    }
}

/// [`Txn`] inside a `BEGIN` on one connection, for one owner. Rows it reads are locked
/// (`FOR UPDATE`) until the commit; a key it read as absent has no row to lock, so writing it
/// inserts only if still absent, and a concurrent insert is a [`StoreError::Conflict`] (the
/// transaction runs again).
struct PostgresTxn<'c, 'o> {
    conn: &'c mut PostgresConn,
    owner: &'o str,
    now_ms: i64,
    /// Keys read as having no row at all.
    absent: HashSet<Vec<u8>>,
}

/// A deadlock between two transactions (PostgreSQL aborted this one) is a conflict: running it
/// again succeeds once the other committed.
fn conflict_or(error: tokio_postgres::Error) -> Failure {
    if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
        || error.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    {
        Failure::Store(StoreError::Conflict)
    } else {
        Failure::Postgres(error)
    }
}

impl Txn for PostgresTxn<'_, '_> {
    fn now_ms(&self) -> i64 {
        self.now_ms
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        let owner = self.owner;
        let row = self.conn.run(Duration::ZERO, async |client, statements| {
            client
                .query_opt(&statements.get_for_update, &[&owner, &key])
                .await
                .map_err(conflict_or)
        })?;
        let Some(row) = row else {
            self.absent.insert(key.to_vec());
            return Ok(None);
        };
        Ok(Entry::if_live(row.get(1), self.now_ms, || row.get(0)))
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let (owner, was_absent) = (self.owner, self.absent.remove(key));
        let written = self.conn.run(Duration::ZERO, async |client, statements| {
            let statement = if was_absent {
                &statements.insert_entry
            } else {
                &statements.put_entry
            };
            client
                .execute(statement, &[&owner, &key, &value, &expires_at_ms])
                .await
                .map_err(conflict_or)
        })?;
        if written == 0 {
            return Err(StoreError::Conflict);
        }
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, StoreError> {
        let owner = self.owner;
        let removed = self.conn.run(Duration::ZERO, async |client, statements| {
            client
                .query_opt(&statements.delete_entry, &[&owner, &key])
                .await
                .map_err(conflict_or)
        })?;
        if removed.is_none() {
            self.absent.insert(key.to_vec());
        }
        Ok(removed.is_some_and(|row| live(row.get(0), self.now_ms)))
    }

    fn set_expiry(&mut self, key: &[u8], expires_at_ms: Option<i64>) -> Result<bool, StoreError> {
        let (owner, now) = (self.owner, self.now_ms);
        let changed = self.conn.run(Duration::ZERO, async |client, statements| {
            client
                .execute(
                    &statements.set_expiry,
                    &[&owner, &key, &expires_at_ms, &now],
                )
                .await
                .map_err(conflict_or)
        })?;
        Ok(changed > 0)
    }

    fn scan(&mut self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let (owner, now) = (self.owner, self.now_ms);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn.run(Duration::ZERO, async |client, statements| {
            let rows = match after {
                None => {
                    client
                        .query(&statements.scan_first, &[&owner, &now, &limit])
                        .await
                }
                Some(after) => {
                    client
                        .query(&statements.scan_after, &[&owner, &now, &limit, &after])
                        .await
                }
            };
            Ok(rows
                .map_err(conflict_or)?
                .into_iter()
                .map(|row| row.get(0))
                .collect())
        })
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let (owner, now) = (self.owner, self.now_ms);
        let count: i64 = self.conn.run(Duration::ZERO, async |client, statements| {
            let row = client
                .query_one(&statements.count, &[&owner, &now])
                .await
                .map_err(conflict_or)?;
            Ok(row.get(0))
        })?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        let owner = self.owner;
        self.conn.run(Duration::ZERO, async |client, statements| {
            client
                .execute(&statements.clear, &[&owner])
                .await
                .map_err(conflict_or)?;
            Ok(())
        })?;
        Ok(())
    }
}

impl Conn for PostgresConn {
    fn sql(&mut self) -> Option<&mut dyn super::Sql> {
        Some(self)
    }

    fn ready(&mut self) -> bool {
        if let Some(session) = &mut self.session {
            if self.last_probe.elapsed() >= PROBE_EVERY {
                self.last_probe = Instant::now();
                session.link.notice_close();
            }
        }
        self.ensure_session().is_ok()
    }

    fn get(&mut self, owner: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(Duration::ZERO, async |client, statements| {
            let row = client
                .query_opt(&statements.get, &[&owner, &key, &now_ms()])
                .await?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn mget_within(
        &mut self,
        owner: &str,
        keys: &[&[u8]],
        budget: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(Duration::ZERO, async |client, statements| {
            let rows = client
                .query(&statements.mget, &[&owner, &keys, &now_ms()])
                .await?;
            let mut found: HashMap<Vec<u8>, Vec<u8>> = rows
                .into_iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            // A key named twice gets its value twice: clone for all but the last mention.
            let mut remaining: HashMap<&[u8], usize> = HashMap::new();
            for key in keys {
                *remaining.entry(key).or_default() += 1;
            }
            Ok(values_within(keys, budget, |key| {
                let left = remaining.get_mut(key).expect("counted above");
                *left -= 1;
                Ok(if *left == 0 {
                    found.remove(*key)
                } else {
                    found.get(*key).cloned()
                })
            })?)
        })
    }

    fn set(&mut self, owner: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.run(Duration::ZERO, async |client, statements| {
            client
                .execute(&statements.set, &[&owner, &key, &value])
                .await?;
            Ok(())
        })
    }

    fn get_many(&mut self, keys: &[(&str, &[u8])]) -> Vec<Result<Option<Vec<u8>>, StoreError>> {
        if let [(owner, key)] = keys {
            return vec![self.get(owner, key)];
        }
        let owners: Vec<&str> = keys.iter().map(|(owner, _)| *owner).collect();
        let names: Vec<&[u8]> = keys.iter().map(|(_, key)| *key).collect();
        let values = self.run(Duration::ZERO, async |client, statements| {
            let rows = client
                .query(&statements.get_many, &[&owners, &names, &now_ms()])
                .await?;
            let mut values = vec![None; keys.len()];
            for row in rows {
                let ord: i64 = row.get(0);
                if let Some(slot) = usize::try_from(ord - 1)
                    .ok()
                    .and_then(|i| values.get_mut(i))
                {
                    *slot = Some(row.get(1));
                }
            }
            Ok(values)
        });
        match values {
            Ok(values) => values.into_iter().map(Ok).collect(),
            // Refused on a healthy connection: no GET of the batch may fail for another's sake
            // (see `set_many`); each alone says which.
            Err(StoreError::Other(_)) => keys
                .iter()
                .map(|(owner, key)| self.get(owner, key))
                .collect(),
            Err(error) => vec![Err(error); keys.len()],
        }
    }

    fn set_many(&mut self, triples: &[(&str, &[u8], &[u8])]) -> Vec<Result<(), StoreError>> {
        if let [(owner, key, value)] = triples {
            return vec![self.set(owner, key, value)];
        }
        // One INSERT may not touch a row twice: the later SET of a (user, key) wins, as if the
        // two had committed one after the other. Rows go in (owner, key) order, the order every
        // multi-row write takes its row locks in: two batches on two connections that share
        // keys then wait for each other instead of deadlocking.
        let mut latest: BTreeMap<(&str, &[u8]), &[u8]> = BTreeMap::new();
        for (owner, key, value) in triples {
            latest.insert((owner, key), value);
        }
        let (mut owners, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for ((owner, key), value) in latest {
            owners.push(owner);
            keys.push(key);
            values.push(value);
        }
        let outcome = self.run(Duration::ZERO, async |client, statements| {
            client
                .execute(&statements.set_many, &[&owners, &keys, &values])
                .await?;
            Ok(())
        });
        match outcome {
            // The server refused the statement on a healthy connection (one key too large for
            // the index, say) and wrote none of it: run each alone, so that one session's bad
            // SET fails only that SET, never the other sessions' that shared its batch.
            Err(StoreError::Other(_)) => triples
                .iter()
                .map(|(owner, key, value)| self.set(owner, key, value))
                .collect(),
            outcome => vec![outcome; triples.len()],
        }
    }

    fn mset(&mut self, owner: &str, pairs: &[(&[u8], &[u8])]) -> Result<(), StoreError> {
        if pairs.is_empty() {
            return Ok(());
        }
        // One INSERT may not touch a row twice: keep each key's last value. In key order, as
        // every multi-row write locks its rows (see `set_many`).
        let latest: BTreeMap<&[u8], &[u8]> = pairs.iter().copied().collect();
        let keys: Vec<&[u8]> = latest.keys().copied().collect();
        let values: Vec<&[u8]> = latest.values().copied().collect();
        self.run(Duration::ZERO, async |client, statements| {
            client
                .execute(&statements.mset, &[&owner, &keys, &values])
                .await?;
            Ok(())
        })
    }

    fn del(&mut self, owner: &str, keys: &[&[u8]]) -> Result<i64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(Duration::ZERO, async |client, statements| {
            let row = client
                .query_one(&statements.del, &[&owner, &keys, &now_ms()])
                .await?;
            Ok(row.get(0))
        })
    }

    fn exists(&mut self, owner: &str, keys: &[&[u8]]) -> Result<i64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(Duration::ZERO, async |client, statements| {
            let rows = client
                .query(&statements.exists, &[&owner, &keys, &now_ms()])
                .await?;
            let present: HashSet<Vec<u8>> = rows.into_iter().map(|row| row.get(0)).collect();
            let count = keys.iter().filter(|key| present.contains(**key)).count();
            Ok(i64::try_from(count).unwrap_or(i64::MAX))
        })
    }

    fn incr_by(&mut self, owner: &str, key: &[u8], delta: i64) -> Result<i64, StoreError> {
        self.run(Duration::ZERO, async |client, statements| {
            // Optimistic: read, then write only if the row is still what we read. Each
            // statement commits on its own; two round trips and one commit when uncontended.
            // A live key keeps its expiry (as Redis's INCR); an expired one starts from 0.
            for _ in 0..INCR_OPTIMISTIC_ATTEMPTS {
                let row = client
                    .query_opt(&statements.get_entry, &[&owner, &key])
                    .await?;
                let now = now_ms();
                let current: Option<(Vec<u8>, Option<i64>)> =
                    row.map(|row| (row.get(0), row.get(1)));
                let live_value = current
                    .as_ref()
                    .filter(|(_, expires_at)| live(*expires_at, now))
                    .map(|(value, _)| value.as_slice());
                let next = incremented(live_value, delta)?;
                let text = next.to_string().into_bytes();
                let written = match &current {
                    None => {
                        client
                            .execute(
                                &statements.insert_if_absent,
                                &[&owner, &key, &text.as_slice()],
                            )
                            .await?
                    }
                    Some((old, old_expiry)) => {
                        let new_expiry = old_expiry.filter(|_| live_value.is_some());
                        client
                            .execute(
                                &statements.compare_and_set,
                                &[
                                    &owner,
                                    &key,
                                    &old.as_slice(),
                                    &text.as_slice(),
                                    old_expiry,
                                    &new_expiry,
                                ],
                            )
                            .await?
                    }
                };
                if written == 1 {
                    return Ok(next);
                }
            }
            // Contended: lock the row and compute under the lock.
            let transaction = client.transaction().await?;
            transaction
                .execute(&statements.insert_if_absent, &[&owner, &key, &&b"0"[..]])
                .await?;
            let row = transaction
                .query_one(&statements.get_for_update, &[&owner, &key])
                .await?;
            let (stored, stored_expiry): (Vec<u8>, Option<i64>) = (row.get(0), row.get(1));
            let (current, expires_at) = if live(stored_expiry, now_ms()) {
                (stored, stored_expiry)
            } else {
                (b"0".to_vec(), None)
            };
            // An error here drops the transaction, which rolls back the '0' placeholder too.
            let next = incremented(Some(&current), delta)?;
            let text = next.to_string().into_bytes();
            transaction
                .execute(
                    &statements.update,
                    &[&owner, &key, &text.as_slice(), &expires_at],
                )
                .await?;
            transaction.commit().await?;
            Ok(next)
        })
    }

    fn transact(&mut self, owner: &str, body: &mut TxnBody<'_>) -> Result<(), StoreError> {
        for _ in 0..TRANSACT_ATTEMPTS {
            self.begin()?;
            let outcome = body(&mut PostgresTxn {
                conn: self,
                owner,
                now_ms: now_ms(),
                absent: HashSet::new(),
            });
            match outcome {
                Ok(()) => return self.commit(),
                Err(StoreError::Conflict) => self.rollback(),
                Err(error) => {
                    self.rollback();
                    return Err(error);
                }
            }
        }
        Err(StoreError::Conflict)
    }

    fn sweep_expired(&mut self, now_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(Duration::ZERO, async |client, statements| {
            let removed = client
                .execute(&statements.sweep, &[&now_ms, &limit])
                .await?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }

    fn sleep(&mut self, ms: u64) -> Result<(), StoreError> {
        // u64 milliseconds as float seconds: exact up to 2^53 ms, far past any sane SLEEP.
        #[allow(clippy::cast_precision_loss)]
        let seconds = ms as f64 / 1000.0;
        self.run(Duration::from_millis(ms), async |client, statements| {
            client.execute(&statements.sleep, &[&seconds]).await?;
            Ok(())
        })
    }

    fn user(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.run(Duration::ZERO, async |client, statements| {
            let row = client.query_opt(&statements.user, &[&name]).await?;
            Ok(row.map(watch::record))
        })
    }

    fn put_user(&mut self, user: &UserRecord) -> Result<(), StoreError> {
        self.run(Duration::ZERO, async |client, statements| {
            client
                .execute(
                    &statements.put_user,
                    &[&user.name, &user.hash, &user.disabled, &user.admin],
                )
                .await?;
            Ok(())
        })
    }

    fn del_user(&mut self, name: &str) -> Result<bool, StoreError> {
        self.run(Duration::ZERO, async |client, statements| {
            Ok(client.execute(&statements.del_user, &[&name]).await? > 0)
        })
    }

    fn users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        self.run(Duration::ZERO, async |client, statements| {
            let rows = client.query(&statements.users, &[]).await?;
            Ok(rows.into_iter().map(watch::record).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_where_but_never_the_password() {
        let mut config: Config = "postgresql://bob:hunter2@db.example:6543/ringport"
            .parse()
            .unwrap();
        apply_defaults(&mut config);
        assert_eq!(
            describe(&config),
            "postgres host=db.example port=6543 dbname=ringport user=bob"
        );
        let config: Config = "host=/tmp/pg port=5432 user=postgres dbname=x password=hunter2"
            .parse()
            .unwrap();
        assert_eq!(
            describe(&config),
            "postgres host=/tmp/pg port=5432 dbname=x user=postgres"
        );
    }

    #[test]
    fn defaults_bound_every_socket_unless_the_url_chose() {
        let mut config: Config = "host=db".parse().unwrap();
        apply_defaults(&mut config);
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));

        let mut config: Config = "host=db connect_timeout=7 keepalives_idle=30"
            .parse()
            .unwrap();
        apply_defaults(&mut config);
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|(version, _)| *version).collect();
        let expected: Vec<i32> = (1..=versions.len() as i32).collect();
        assert_eq!(versions, expected);
    }
}
