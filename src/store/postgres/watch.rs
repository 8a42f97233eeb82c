//! Keeps the server's in-memory user table current ([`Backend::watch_users`] on PostgreSQL).
//!
//! One thread (`user-watch`) with a connection of its own:
//!
//! 1. connect, `LISTEN ringport_users` (migration 2's trigger notifies that channel on every
//!    committed change to `ringport_users`, naming the schema and the user), then read the
//!    whole table and hand it to the sink. LISTEN comes first, so a change committed while the
//!    table is read is in the read or in a notification, never in neither;
//! 2. wait for notifications and, for each changed name of our schema, read that user again
//!    (present: replaced; gone: removed). A notification without a name (TRUNCATE, a very long
//!    name), one that does not parse, or a burst of many names reads the whole table again;
//! 3. when the connection is lost (PostgreSQL stopped, crashed or unreachable: its FATAL, the
//!    closed socket, or the keepalives `apply_defaults` sets tell), reconnect with a
//!    back-off from [`RETRY_FIRST`] to [`RETRY_MAX`] and start again at 1, so that what changed
//!    while nobody listened is read in the full read. The loss and the return are logged once
//!    each, never per attempt.
//!
//! While the thread cannot listen, the sink keeps the users as last seen. It ends once nobody
//! else holds the sink (checked at least every `TICK`).
//!
//! Notifications are delivered per database, so several ringport schemas in one database
//! (tests do this) see each other's; a notification for another schema is ignored.
//!
//! [`Backend::watch_users`]: crate::store::Backend::watch_users

use std::collections::BTreeSet;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls, Socket, Statement};

use super::{connect_deadline, Failure};
use crate::store::{StoreError, UserRecord, UserSink};

/// The channel migration 2's trigger notifies.
pub const CHANNEL: &str = "ringport_users";
/// Appended to the connection's `application_name` (`ringport user-watch` by default), so that
/// pg_stat_activity tells it from the store workers' connections.
pub const APPLICATION_SUFFIX: &str = " user-watch";

/// The first wait before reconnecting after the connection was lost; doubled per failed attempt.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts: once PostgreSQL is back, the table is read again within
/// about this long (plus the attempt).
pub const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long the thread waits for a notification before it looks whether its sink still exists.
const TICK: Duration = Duration::from_secs(1);
/// Distinct names in one batch of notifications past which one full read is cheaper.
const READ_ALL_PAST: usize = 64;

/// Starts the `user-watch` thread for `sink`.
pub(super) fn start(
    mut config: Config,
    description: Arc<str>,
    call_timeout: Duration,
    sink: Weak<dyn UserSink>,
) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            StoreError::Other(format!(
                "cannot start a runtime for the user-watch connection: {error}"
            ))
        })?;
    // Named apart from the store workers' connections in pg_stat_activity.
    let name = format!(
        "{}{APPLICATION_SUFFIX}",
        config.get_application_name().unwrap_or("ringport")
    );
    config.application_name(&name);
    let mut watcher = Watcher {
        config,
        description,
        call_timeout,
        sink,
        down: None,
        watching: false,
    };
    std::thread::Builder::new()
        .name("user-watch".into())
        .spawn(move || watcher.run(&runtime))
        .map_err(|error| {
            StoreError::Other(format!("cannot start the user-watch thread: {error}"))
        })?;
    Ok(())
}

/// The thread's state between connections.
struct Watcher {
    config: Config,
    description: Arc<str>,
    call_timeout: Duration,
    sink: Weak<dyn UserSink>,
    /// Why the connection is down, while it is (logged once, when it went down).
    down: Option<String>,
    /// A connection has read the whole table at least once.
    watching: bool,
}

/// How one connection ended.
enum Ended {
    /// Nobody holds the sink any more: the thread ends.
    SinkGone,
    /// The connection failed (or never came up): reconnect.
    Lost(Failure),
}

impl Watcher {
    fn run(&mut self, runtime: &Runtime) {
        let mut retry = RETRY_FIRST;
        loop {
            if self.sink.strong_count() == 0 {
                return;
            }
            let started = Instant::now();
            match runtime.block_on(self.watch()) {
                Ended::SinkGone => return,
                Ended::Lost(failure) => self.lost(&failure),
            }
            // A connection that served a while starts the back-off afresh.
            if started.elapsed() > RETRY_MAX {
                retry = RETRY_FIRST;
            }
            std::thread::sleep(retry);
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// One connection's life: connect, LISTEN, read everything, then follow notifications.
    async fn watch(&mut self) -> Ended {
        let deadline = connect_deadline(&self.config, self.call_timeout);
        let mut link = match tokio::time::timeout(deadline, self.config.connect(NoTls)).await {
            Ok(Ok((client, connection))) => Link {
                client,
                connection,
                payloads: Vec::new(),
            },
            Ok(Err(error)) => return Ended::Lost(Failure::Postgres(error)),
            Err(_) => return Ended::Lost(Failure::Timeout(deadline)),
        };
        let call = self.call_timeout;
        let prepared = link
            .run(call, async |client| {
                client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                let schema: String = client
                    .query_one(
                        "SELECT n.nspname FROM pg_catalog.pg_class c \
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                         WHERE c.oid = 'ringport_users'::regclass",
                        &[],
                    )
                    .await?
                    .get(0);
                let one = client
                    .prepare(
                        "SELECT name, hash, disabled, admin FROM ringport_users WHERE name = $1",
                    )
                    .await?;
                let all = client
                    .prepare("SELECT name, hash, disabled, admin FROM ringport_users")
                    .await?;
                Ok((schema, one, all))
            })
            .await;
        let (schema, one, all) = match prepared {
            Ok(prepared) => prepared,
            Err(failure) => return Ended::Lost(failure),
        };
        let count = match self.read_all(&mut link, &all).await {
            Ok(Some(count)) => count,
            Ok(None) => return Ended::SinkGone,
            Err(failure) => return Ended::Lost(failure),
        };
        self.live(count);
        loop {
            if let Err(failure) = link.wait(TICK).await {
                return Ended::Lost(failure);
            }
            let Some(sink) = self.sink.upgrade() else {
                return Ended::SinkGone;
            };
            let payloads = std::mem::take(&mut link.payloads);
            let mut names = BTreeSet::new();
            let mut everything = false;
            for payload in &payloads {
                match parse(payload, &schema) {
                    Change::One(name) => {
                        names.insert(name);
                    }
                    Change::All => everything = true,
                    Change::Elsewhere => {}
                }
            }
            drop(sink);
            if everything || names.len() > READ_ALL_PAST {
                match self.read_all(&mut link, &all).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ended::SinkGone,
                    Err(failure) => return Ended::Lost(failure),
                }
                continue;
            }
            for name in names {
                let read = link
                    .run(call, async |client| {
                        Ok(client.query_opt(&one, &[&name]).await?.map(record))
                    })
                    .await;
                let user = match read {
                    Ok(user) => user,
                    Err(failure) => return Ended::Lost(failure),
                };
                let Some(sink) = self.sink.upgrade() else {
                    return Ended::SinkGone;
                };
                sink.update(&name, user);
            }
        }
    }

    /// Reads every user into the sink; `None` if nobody holds the sink any more.
    async fn read_all(&self, link: &mut Link, all: &Statement) -> Result<Option<usize>, Failure> {
        let users: Vec<UserRecord> = link
            .run(self.call_timeout, async |client| {
                Ok(client
                    .query(all, &[])
                    .await?
                    .into_iter()
                    .map(record)
                    .collect())
            })
            .await?;
        let count = users.len();
        match self.sink.upgrade() {
            Some(sink) => {
                sink.replace_all(users);
                Ok(Some(count))
            }
            None => Ok(None),
        }
    }

    /// The table was read in full on a new connection.
    fn live(&mut self, users: usize) {
        let store = &*self.description;
        if let Some(reason) = self.down.take() {
            tracing::info!(%store, users, %reason, "user table current again: every user read after reconnecting, changes followed with LISTEN/NOTIFY");
        } else if !self.watching {
            tracing::info!(%store, users, "following user changes with LISTEN/NOTIFY");
        }
        self.watching = true;
    }

    /// The connection failed or could not be made.
    fn lost(&mut self, failure: &Failure) {
        if self.down.is_none() {
            tracing::warn!(
                store = %self.description,
                reason = %failure.text(),
                "lost the connection that keeps the user table current; AUTH goes on with the users as last seen, and changes are read once it is back"
            );
        }
        self.down = Some(failure.text());
    }
}

/// A user from a row of (name, hash, disabled, admin).
pub(super) fn record(row: tokio_postgres::Row) -> UserRecord {
    UserRecord {
        name: row.get(0),
        hash: row.get(1),
        disabled: row.get(2),
        admin: row.get(3),
    }
}

/// What one notification asks for.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Read this user again.
    One(String),
    /// Read every user again.
    All,
    /// A change in another schema's table.
    Elsewhere,
}

#[derive(serde::Deserialize)]
struct Payload {
    schema: String,
    name: Option<String>,
}

/// Reads a notification's payload (see migration 2). Anything unexpected on the channel reads
/// everything again: never wrong, only slower.
fn parse(payload: &str, schema: &str) -> Change {
    match serde_json::from_str::<Payload>(payload) {
        Ok(payload) if payload.schema != schema => Change::Elsewhere,
        Ok(Payload {
            name: Some(name), ..
        }) => Change::One(name),
        Ok(_) | Err(_) => Change::All,
    }
}

/// The watch connection: its client, the connection it drives by hand (to see notifications),
/// and the payloads of notifications not yet applied.
struct Link {
    client: Client,
    connection: Connection<Socket, NoTlsStream>,
    payloads: Vec<String>,
}

impl Link {
    /// Reads what the server sent, keeping notifications on [`CHANNEL`]: `Ready` with an error
    /// once the connection ended (it must not be polled again), else `Pending`.
    fn pump(
        connection: &mut Connection<Socket, NoTlsStream>,
        payloads: &mut Vec<String>,
        context: &mut std::task::Context<'_>,
    ) -> Poll<Failure> {
        loop {
            match connection.poll_message(context) {
                Poll::Ready(Some(Ok(AsyncMessage::Notification(notification)))) => {
                    if notification.channel() == CHANNEL {
                        payloads.push(notification.payload().to_string());
                    }
                }
                Poll::Ready(Some(Ok(_notice))) => {}
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Failure::Postgres(error)),
                Poll::Ready(None) => {
                    return Poll::Ready(Failure::Store(StoreError::Unavailable(
                        "the connection closed".into(),
                    )))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Runs `call` within `deadline` while driving the connection.
    async fn run<T>(
        &mut self,
        deadline: Duration,
        call: impl AsyncFnOnce(&Client) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let Link {
            client,
            connection,
            payloads,
        } = self;
        let mut call = pin!(call(client));
        let driven = poll_fn(|context| {
            if let Poll::Ready(failure) = Self::pump(connection, payloads, context) {
                return Poll::Ready(Err(failure));
            }
            call.as_mut().poll(context)
        });
        match tokio::time::timeout(deadline, driven).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout(deadline)),
        }
    }

    /// Waits until a notification is pending or `tick` passed; an error if the connection ended.
    async fn wait(&mut self, tick: Duration) -> Result<(), Failure> {
        let Link {
            connection,
            payloads,
            ..
        } = self;
        let notified = poll_fn(|context| {
            if let Poll::Ready(failure) = Self::pump(connection, payloads, context) {
                return Poll::Ready(Err(failure));
            }
            if payloads.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        });
        tokio::time::timeout(tick, notified).await.unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_one_user_everyone_or_another_schema() {
        assert_eq!(
            parse(r#"{"schema":"public","name":"alice"}"#, "public"),
            Change::One("alice".into())
        );
        assert_eq!(
            parse(r#"{"schema":"public","name":null}"#, "public"),
            Change::All
        );
        assert_eq!(
            parse(r#"{"schema":"other","name":"alice"}"#, "public"),
            Change::Elsewhere
        );
        assert_eq!(parse("not json", "public"), Change::All);
        assert_eq!(
            parse(
                r#"{"schema":"a \"quoted\" schema","name":"b\u00e9"}"#,
                "a \"quoted\" schema"
            ),
            Change::One("bé".into())
        );
    }
}
