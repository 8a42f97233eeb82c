//! The embedded store: redb, one file `DIR/ringport.redb`.
//!
//! Reads run on the calling worker's thread, each in its own read transaction (redb is MVCC, so
//! they never wait for a writer). Writes go to one committer thread that applies everything queued
//! since its last commit in one write transaction and commits it with `Durability::Immediate`
//! (group commit): one fsync covers every write of the batch, and each caller gets its answer
//! only after that commit returned. A write that fails (INCR of a non-integer) writes nothing and
//! does not disturb the others of its batch. [`Conn::transact`] opens its own write transaction
//! on the worker's thread: redb's write lock serialises it with the committer's batches, and it
//! is as durable as they are.
//!
//! Tables:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `kv` | [`kv_key`]: owner length (u16, big-endian), owner, key | the value |
//! | `kv_expires` | [`kv_key`] of a key that has an expiry time | the time, ms since the epoch |
//! | `kv_expiry_queue` | [`queue_key`]: the time (sortable), then the [`kv_key`] | nothing |
//! | `users` | name | [`encode_user`]: disabled flag (one byte), argon2id PHC hash |
//! | `meta` | `"schema_version"` | [`SCHEMA_VERSION`] |
//!
//! Expiry lives beside `kv`, not inside its values, so that rows written before schema version
//! 2 read as they are, and a key without an expiry (most) costs one lookup more on a read hit and
//! nothing else. `kv_expiry_queue` orders keys by expiry time for the sweep.
//!
//! Architecture invariant: write transactions are opened by the committer thread and by
//! `transact`, nothing else; every write transaction keeps `kv`, `kv_expires` and
//! `kv_expiry_queue` in step (through [`Tables`]).

use std::ops::Bound;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use super::{
    incremented, live, now_ms, values_within, Backend, Conn, Entry, StoreError, Txn, TxnBody,
    UserRecord,
};

/// The file inside the data directory.
pub const FILE_NAME: &str = "ringport.redb";

/// The layout this code reads and writes; stored in `meta` at creation.
/// Version 2 added `kv_expires` and `kv_expiry_queue` (created on open; version 1 files need no
/// rewrite).
pub const SCHEMA_VERSION: u64 = 2;

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const EXPIRES: TableDefinition<&[u8], i64> = TableDefinition::new("kv_expires");
const EXPIRY_QUEUE: TableDefinition<&[u8], ()> = TableDefinition::new("kv_expiry_queue");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most writes one commit covers, so that one batch cannot grow without bound.
const BATCH_JOBS_MAX: usize = 256;

/// The embedded backend: the open database plus its committer thread.
pub struct Embedded {
    shared: Arc<Shared>,
}

/// What the backend and every connection share. Dropping the last `Arc` stops the committer
/// thread and waits for it, so the file is closed (and may be reopened) once it is gone.
struct Shared {
    db: Arc<Database>,
    path: PathBuf,
    jobs: Option<Sender<Job>>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the channel ends the committer's loop.
        self.jobs = None;
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Embedded {
    /// Opens (creating if needed) `dir/ringport.redb` and its tables.
    /// The directory is created 0700 and the file 0600, whatever the umask: the file holds
    /// the password hashes. An existing directory or file that group or others may use is left
    /// as the operator made it, with a warning.
    pub fn open(dir: &Path, cache_size: usize) -> Result<Embedded, StoreError> {
        let existed = dir.exists();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| {
                StoreError::Other(format!(
                    "cannot create the data directory {}: {error}",
                    dir.display()
                ))
            })?;
        if existed {
            warn_if_shared(dir, "data directory");
        }
        let path = dir.join(FILE_NAME);
        if path.exists() {
            warn_if_shared(&path, "store file");
        } else {
            // redb would create it with the umask's mode; create it first, private (redb
            // initialises an empty file).
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|error| {
                    StoreError::Other(format!("cannot create {}: {error}", path.display()))
                })?;
        }
        let db = Database::builder()
            .set_cache_size(cache_size)
            .create(&path).map_err(|error| match error {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                StoreError::Other(format!(
                    "the data directory {} is in use by another ringport process (stop it, or pass another --data)",
                    dir.display()
                ))
            }
            other => StoreError::Other(format!("cannot open {}: {other}", path.display())),
        })?;
        create_tables(&db).map_err(|error| {
            StoreError::Other(format!("cannot prepare {}: {error}", path.display()))
        })??;
        let db = Arc::new(db);
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let committer_db = Arc::clone(&db);
        let committer = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || run_committer(&committer_db, &queue))
            .map_err(|error| {
                StoreError::Other(format!("cannot start the store committer thread: {error}"))
            })?;
        Ok(Embedded {
            shared: Arc::new(Shared {
                db,
                path,
                jobs: Some(jobs),
                committer: Mutex::new(Some(committer)),
            }),
        })
    }
}

/// Warns when group or others may read or write `path`.
fn warn_if_shared(path: &Path, what: &str) {
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "the {what} {} (mode {mode:o}) is readable or writable by group or others, and it holds the password hashes; chmod go-rwx it",
            path.display()
        );
    }
}

/// Creates the tables and the schema version on first open; refuses a file of a newer layout.
fn create_tables(db: &Database) -> Result<Result<(), StoreError>, redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let version = {
        txn.open_table(KV)?;
        txn.open_table(EXPIRES)?;
        txn.open_table(EXPIRY_QUEUE)?;
        txn.open_table(USERS)?;
        let mut meta = txn.open_table(META)?;
        let stored = meta.get("schema_version")?.map(|guard| guard.value());
        match stored {
            // Older layouts only lack tables, created above.
            Some(version) if version < SCHEMA_VERSION => {
                meta.insert("schema_version", SCHEMA_VERSION)?;
                SCHEMA_VERSION
            }
            Some(version) => version,
            None => {
                meta.insert("schema_version", SCHEMA_VERSION)?;
                SCHEMA_VERSION
            }
        }
    };
    if version > SCHEMA_VERSION {
        txn.abort()?;
        return Ok(Err(StoreError::Other(format!(
            "the embedded store has schema version {version}, newer than this ringport's {SCHEMA_VERSION}: upgrade ringport"
        ))));
    }
    txn.commit()?;
    Ok(Ok(()))
}

impl Backend for Embedded {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn describe(&self) -> String {
        format!("redb at {}", self.shared.path.display())
    }

    fn connect(&self) -> Result<Box<dyn Conn>, StoreError> {
        Ok(Box::new(EmbeddedConn {
            shared: Arc::clone(&self.shared),
        }))
    }
}

/// One worker's handle on the embedded store.
struct EmbeddedConn {
    shared: Arc<Shared>,
}

/// The key of `key` owned by `owner` in the `kv` table: the owner's length as a big-endian u16,
/// the owner, then the key. The length prefix makes the encoding injective: no (owner, key) pair
/// can produce another pair's bytes, whatever bytes either holds.
pub fn kv_key(owner: &str, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    let owner_length = u16::try_from(owner.len())
        .map_err(|_| StoreError::Other("user name longer than 65535 bytes".into()))?;
    let mut encoded = Vec::with_capacity(2 + owner.len() + key.len());
    encoded.extend_from_slice(&owner_length.to_be_bytes());
    encoded.extend_from_slice(owner.as_bytes());
    encoded.extend_from_slice(key);
    Ok(encoded)
}

/// The inverse of [`kv_key`]: `(owner, key)`, or `None` for bytes it cannot have produced.
pub fn split_kv_key(encoded: &[u8]) -> Option<(&str, &[u8])> {
    let (length, rest) = encoded.split_first_chunk::<2>()?;
    let owner_length = usize::from(u16::from_be_bytes(*length));
    if rest.len() < owner_length {
        return None;
    }
    let (owner, key) = rest.split_at(owner_length);
    Some((std::str::from_utf8(owner).ok()?, key))
}

/// A user's row in the `users` table: one byte of flags (bit 0: disabled, bit 1: admin), then
/// the hash. Rows written before admins existed have bit 1 clear.
pub fn encode_user(user: &UserRecord) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(1 + user.hash.len());
    encoded.push(u8::from(user.disabled) | (u8::from(user.admin) << 1));
    encoded.extend_from_slice(user.hash.as_bytes());
    encoded
}

/// The inverse of [`encode_user`].
pub fn decode_user(name: &str, encoded: &[u8]) -> Result<UserRecord, StoreError> {
    let corrupt = || StoreError::Other(format!("corrupt user record for '{name}'"));
    let (&flags, hash) = encoded.split_first().ok_or_else(corrupt)?;
    if flags > 0b11 {
        return Err(corrupt());
    }
    let hash = std::str::from_utf8(hash).map_err(|_| corrupt())?;
    Ok(UserRecord {
        name: name.to_string(),
        hash: hash.to_string(),
        disabled: flags & 1 != 0,
        admin: flags & 2 != 0,
    })
}

fn committer_stopped() -> StoreError {
    StoreError::Other("the embedded store's committer thread stopped".into())
}

fn storage_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Other(format!("embedded store: {}", error.into()))
}

impl EmbeddedConn {
    /// Queues `op` for the committer and waits until its batch is durably committed.
    fn write(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        self.queue_write(op)?
            .recv()
            .map_err(|_| committer_stopped())?
    }

    /// Queues `op` for the committer; its outcome arrives once its batch is committed.
    fn queue_write(
        &self,
        op: WriteOp,
    ) -> Result<Receiver<Result<Outcome, StoreError>>, StoreError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let jobs = self.shared.jobs.as_ref().ok_or_else(committer_stopped)?;
        jobs.send(Job { op, reply })
            .map_err(|_| committer_stopped())?;
        Ok(answer)
    }

    /// Runs `read` on the key-value tables in a fresh read transaction.
    fn read_kv<T>(
        &self,
        read: impl FnOnce(&Reader) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.shared.db.begin_read().map_err(storage_error)?;
        let reader = Reader {
            kv: txn.open_table(KV).map_err(storage_error)?,
            expires: txn.open_table(EXPIRES).map_err(storage_error)?,
            now_ms: now_ms(),
        };
        read(&reader)
    }
}

/// The key-value tables of one read transaction, and the time the read treats as now.
struct Reader {
    kv: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    expires: redb::ReadOnlyTable<&'static [u8], i64>,
    now_ms: i64,
}

impl Reader {
    /// The live value stored under an encoded key ([`kv_key`]), copied out of the transaction.
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(value) = self.kv.get(key).map_err(storage_error)? else {
            return Ok(None);
        };
        let expires = self.expires.get(key).map_err(storage_error)?;
        if live(expires.map(|guard| guard.value()), self.now_ms) {
            Ok(Some(value.value().to_vec()))
        } else {
            Ok(None)
        }
    }
}

impl Conn for EmbeddedConn {
    fn get(&mut self, owner: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = kv_key(owner, key)?;
        self.read_kv(|table| table.value(&key))
    }

    fn get_many(&mut self, keys: &[(&str, &[u8])]) -> Vec<Result<Option<Vec<u8>>, StoreError>> {
        // One read transaction for the lot: a snapshot, never waiting for the committer.
        let read = self.read_kv(|table| {
            Ok(keys
                .iter()
                .map(|(owner, key)| table.value(&kv_key(owner, key)?))
                .collect())
        });
        read.unwrap_or_else(|error| keys.iter().map(|_| Err(error.clone())).collect())
    }

    fn set_many(&mut self, triples: &[(&str, &[u8], &[u8])]) -> Vec<Result<(), StoreError>> {
        // Queue every write before waiting for any, so that the committer finds them all
        // queued at once and commits them together (one fsync), as it does for writes from
        // different workers.
        let answers: Vec<Result<Receiver<Result<Outcome, StoreError>>, StoreError>> = triples
            .iter()
            .map(|(owner, key, value)| {
                self.queue_write(WriteOp::Set {
                    key: kv_key(owner, key)?,
                    value: value.to_vec(),
                })
            })
            .collect();
        answers
            .into_iter()
            .map(|answer| {
                let outcome = answer?.recv().map_err(|_| committer_stopped())?;
                outcome.map(|_| ())
            })
            .collect()
    }

    fn mget_within(
        &mut self,
        owner: &str,
        keys: &[&[u8]],
        budget: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys = keys
            .iter()
            .map(|key| kv_key(owner, key))
            .collect::<Result<Vec<_>, _>>()?;
        self.read_kv(|table| values_within(&keys, budget, |key| table.value(key)))
    }

    fn set(&mut self, owner: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let op = WriteOp::Set {
            key: kv_key(owner, key)?,
            value: value.to_vec(),
        };
        self.write(op).map(|_| ())
    }

    fn mset(&mut self, owner: &str, pairs: &[(&[u8], &[u8])]) -> Result<(), StoreError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let pairs = pairs
            .iter()
            .map(|(key, value)| Ok((kv_key(owner, key)?, value.to_vec())))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write(WriteOp::Mset { pairs }).map(|_| ())
    }

    fn del(&mut self, owner: &str, keys: &[&[u8]]) -> Result<i64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let keys = keys
            .iter()
            .map(|key| kv_key(owner, key))
            .collect::<Result<Vec<_>, _>>()?;
        match self.write(WriteOp::Del { keys })? {
            Outcome::Count(removed) => Ok(removed),
            other => unreachable!("del answered {other:?}"),
        }
    }

    fn exists(&mut self, owner: &str, keys: &[&[u8]]) -> Result<i64, StoreError> {
        let keys = keys
            .iter()
            .map(|key| kv_key(owner, key))
            .collect::<Result<Vec<_>, _>>()?;
        self.read_kv(|table| {
            let mut count = 0;
            for key in &keys {
                if table.value(key)?.is_some() {
                    count += 1;
                }
            }
            Ok(count)
        })
    }

    fn incr_by(&mut self, owner: &str, key: &[u8], delta: i64) -> Result<i64, StoreError> {
        let op = WriteOp::IncrBy {
            key: kv_key(owner, key)?,
            delta,
        };
        match self.write(op)? {
            Outcome::Integer(value) => Ok(value),
            other => unreachable!("incr_by answered {other:?}"),
        }
    }

    fn transact(&mut self, owner: &str, body: &mut TxnBody<'_>) -> Result<(), StoreError> {
        let mut txn = self.shared.db.begin_write().map_err(storage_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(storage_error)?;
        let outcome = {
            let mut scope = EmbeddedTxn {
                tables: Tables::open(&txn).map_err(storage_error)?,
                owner,
                now_ms: now_ms(),
                wrote: false,
            };
            body(&mut scope).map(|()| scope.wrote)
        };
        match outcome {
            Ok(true) => txn.commit().map_err(storage_error),
            Ok(false) => txn.abort().map_err(storage_error),
            Err(error) => {
                let _ = txn.abort();
                Err(error)
            }
        }
    }

    fn sweep_expired(&mut self, now_ms: i64, limit: usize) -> Result<usize, StoreError> {
        match self.write(WriteOp::Sweep { now_ms, limit })? {
            Outcome::Count(removed) => Ok(usize::try_from(removed).unwrap_or(0)),
            other => unreachable!("sweep answered {other:?}"),
        }
    }

    fn sleep(&mut self, ms: u64) -> Result<(), StoreError> {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(())
    }

    fn user(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let txn = self.shared.db.begin_read().map_err(storage_error)?;
        let table = txn.open_table(USERS).map_err(storage_error)?;
        let row = table.get(name).map_err(storage_error)?;
        row.map(|guard| decode_user(name, guard.value()))
            .transpose()
    }

    fn put_user(&mut self, user: &UserRecord) -> Result<(), StoreError> {
        let op = WriteOp::PutUser {
            name: user.name.clone(),
            row: encode_user(user),
        };
        self.write(op).map(|_| ())
    }

    fn del_user(&mut self, name: &str) -> Result<bool, StoreError> {
        match self.write(WriteOp::DelUser {
            name: name.to_string(),
        })? {
            Outcome::Existed(existed) => Ok(existed),
            other => unreachable!("del_user answered {other:?}"),
        }
    }

    fn users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        let txn = self.shared.db.begin_read().map_err(storage_error)?;
        let table = txn.open_table(USERS).map_err(storage_error)?;
        let mut users = Vec::new();
        for row in table.iter().map_err(storage_error)? {
            let (name, encoded) = row.map_err(storage_error)?;
            users.push(decode_user(name.value(), encoded.value())?);
        }
        Ok(users)
    }
}

/// One write, with its keys already encoded by [`kv_key`].
#[derive(Debug)]
enum WriteOp {
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Mset {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Del {
        keys: Vec<Vec<u8>>,
    },
    IncrBy {
        key: Vec<u8>,
        delta: i64,
    },
    PutUser {
        name: String,
        row: Vec<u8>,
    },
    DelUser {
        name: String,
    },
    /// Remove up to `limit` keys whose expiry time is `now_ms` or earlier.
    Sweep {
        now_ms: i64,
        limit: usize,
    },
}

/// What a committed write answers.
#[derive(Debug)]
enum Outcome {
    Done,
    Count(i64),
    Integer(i64),
    Existed(bool),
}

/// A write queued for the committer, with where its answer goes.
struct Job {
    op: WriteOp,
    reply: Sender<Result<Outcome, StoreError>>,
}

/// The committer thread: takes everything queued (up to [`BATCH_JOBS_MAX`]), commits it as one
/// transaction, answers each job, repeats until every sender is gone.
fn run_committer(db: &Database, queue: &Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_JOBS_MAX {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(db, batch);
    }
}

/// Commits `batch` in one durable transaction and answers every job.
///
/// A job that fails with a storage error (a value too large for redb) is answered with its error
/// and the batch is retried without it, so one bad write never takes the others down. A job that
/// fails its own check (INCR of a non-integer) wrote nothing and is answered with its error.
fn commit_batch(db: &Database, mut batch: Vec<Job>) {
    loop {
        let attempt = apply_batch(db, &batch);
        match attempt {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
                return;
            }
            Err(BatchError::Job(index, error)) => {
                let job = batch.remove(index);
                let _ = job.reply.send(Err(error));
                if batch.is_empty() {
                    return;
                }
            }
            Err(BatchError::Commit(error)) => {
                tracing::error!(%error, jobs = batch.len(), "embedded store commit failed");
                for job in batch {
                    let _ = job.reply.send(Err(error.clone()));
                }
                return;
            }
        }
    }
}

enum BatchError {
    /// Job `index` failed inside the transaction; the transaction was abandoned.
    Job(usize, StoreError),
    /// The transaction as a whole could not begin or commit.
    Commit(StoreError),
}

fn apply_batch(
    db: &Database,
    batch: &[Job],
) -> Result<Vec<Result<Outcome, StoreError>>, BatchError> {
    let mut txn = db
        .begin_write()
        .map_err(|error| BatchError::Commit(storage_error(error)))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|error| BatchError::Commit(storage_error(error)))?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut tables =
            Tables::open(&txn).map_err(|error| BatchError::Commit(storage_error(error)))?;
        let now = now_ms();
        for (index, job) in batch.iter().enumerate() {
            match apply(&txn, &mut tables, now, &job.op) {
                Ok(outcome) => outcomes.push(outcome),
                Err(error) => return Err(BatchError::Job(index, storage_error(error))),
            }
        }
    }
    txn.commit()
        .map_err(|error| BatchError::Commit(storage_error(error)))?;
    Ok(outcomes)
}

/// Applies one write inside `txn`, whose key-value tables are `tables`, at time `now`. The
/// outer error is a storage error (abandon the transaction); the inner one is the job's own
/// answer (nothing written).
fn apply(
    txn: &WriteTransaction,
    tables: &mut Tables<'_>,
    now: i64,
    op: &WriteOp,
) -> Result<Result<Outcome, StoreError>, redb::Error> {
    match op {
        WriteOp::Set { key, value } => {
            tables.put(key, value, None)?;
            Ok(Ok(Outcome::Done))
        }
        WriteOp::Mset { pairs } => {
            for (key, value) in pairs {
                tables.put(key, value, None)?;
            }
            Ok(Ok(Outcome::Done))
        }
        WriteOp::Del { keys } => {
            let mut removed = 0;
            for key in keys {
                if tables.remove(key, now)? {
                    removed += 1;
                }
            }
            Ok(Ok(Outcome::Count(removed)))
        }
        WriteOp::IncrBy { key, delta } => {
            // INCR keeps a live key's expiry, as Redis does.
            let current = tables.entry(key, now)?;
            let next = incremented(current.as_ref().map(|entry| entry.value.as_slice()), *delta);
            match next {
                Ok(next) => {
                    let expiry = current.and_then(|entry| entry.expires_at_ms);
                    tables.put(key, next.to_string().as_bytes(), expiry)?;
                    Ok(Ok(Outcome::Integer(next)))
                }
                Err(error) => Ok(Err(error)),
            }
        }
        WriteOp::PutUser { name, row } => {
            txn.open_table(USERS)?
                .insert(name.as_str(), row.as_slice())?;
            Ok(Ok(Outcome::Done))
        }
        WriteOp::DelUser { name } => {
            let existed = txn.open_table(USERS)?.remove(name.as_str())?.is_some();
            Ok(Ok(Outcome::Existed(existed)))
        }
        WriteOp::Sweep { now_ms, limit } => {
            let removed = tables.sweep(*now_ms, *limit)?;
            Ok(Ok(Outcome::Count(
                i64::try_from(removed).unwrap_or(i64::MAX),
            )))
        }
    }
}

/// The `kv_expiry_queue` key of a key expiring at `expires_at_ms`: the time as 8 bytes that sort
/// as the numbers do (big-endian, sign bit flipped), then the [`kv_key`].
pub fn queue_key(expires_at_ms: i64, key: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(8 + key.len());
    encoded.extend_from_slice(&sortable(expires_at_ms));
    encoded.extend_from_slice(key);
    encoded
}

fn sortable(ms: i64) -> [u8; 8] {
    (u64::from_ne_bytes(ms.to_ne_bytes()) ^ (1 << 63)).to_be_bytes()
}

/// The key-value tables of one write transaction. Every write of a key goes through here, so
/// that `kv`, `kv_expires` and `kv_expiry_queue` always agree.
struct Tables<'t> {
    kv: redb::Table<'t, &'static [u8], &'static [u8]>,
    expires: redb::Table<'t, &'static [u8], i64>,
    queue: redb::Table<'t, &'static [u8], ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, redb::Error> {
        Ok(Tables {
            kv: txn.open_table(KV)?,
            expires: txn.open_table(EXPIRES)?,
            queue: txn.open_table(EXPIRY_QUEUE)?,
        })
    }

    /// The live entry under an encoded key at `now`.
    fn entry(&self, key: &[u8], now: i64) -> Result<Option<Entry>, redb::Error> {
        let Some(value) = self.kv.get(key)? else {
            return Ok(None);
        };
        let expires_at_ms = self.expires.get(key)?.map(|guard| guard.value());
        Ok(Entry::if_live(expires_at_ms, now, || {
            value.value().to_vec()
        }))
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<i64>,
    ) -> Result<(), redb::Error> {
        self.kv.insert(key, value)?;
        self.set_expiry(key, expires_at_ms)
    }

    /// Sets or clears the expiry of a stored key.
    fn set_expiry(&mut self, key: &[u8], expires_at_ms: Option<i64>) -> Result<(), redb::Error> {
        let old = match expires_at_ms {
            Some(at) => self.expires.insert(key, at)?.map(|guard| guard.value()),
            None => self.expires.remove(key)?.map(|guard| guard.value()),
        };
        if old == expires_at_ms {
            return Ok(());
        }
        if let Some(old) = old {
            self.queue.remove(queue_key(old, key).as_slice())?;
        }
        if let Some(at) = expires_at_ms {
            self.queue.insert(queue_key(at, key).as_slice(), ())?;
        }
        Ok(())
    }

    /// Removes a key; whether it was live at `now`.
    fn remove(&mut self, key: &[u8], now: i64) -> Result<bool, redb::Error> {
        if self.kv.remove(key)?.is_none() {
            return Ok(false);
        }
        let expires_at_ms = self.expires.get(key)?.map(|guard| guard.value());
        self.set_expiry(key, None)?;
        Ok(live(expires_at_ms, now))
    }

    /// Up to `limit` live keys (their encoded form) under `prefix` (an owner's [`kv_key`] of
    /// the empty key), from `start` on (excluded when `after`).
    fn live_keys(
        &self,
        prefix: &[u8],
        start: &[u8],
        after: bool,
        limit: usize,
        now: i64,
    ) -> Result<Vec<Vec<u8>>, redb::Error> {
        let lower = if after {
            Bound::Excluded(start)
        } else {
            Bound::Included(start)
        };
        let mut keys = Vec::new();
        for row in self.kv.range::<&[u8]>((lower, Bound::Unbounded))? {
            if keys.len() >= limit {
                break;
            }
            let (key, _) = row?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if live(self.expires.get(key)?.map(|guard| guard.value()), now) {
                keys.push(key.to_vec());
            }
        }
        Ok(keys)
    }

    /// Removes up to `limit` keys whose expiry time is `now` or earlier, oldest first.
    fn sweep(&mut self, now: i64, limit: usize) -> Result<usize, redb::Error> {
        let upper = sortable(now.saturating_add(1));
        let mut due = Vec::new();
        for row in self.queue.range::<&[u8]>(..&upper[..])?.take(limit) {
            due.push(row?.0.value().to_vec());
        }
        for queued in &due {
            let key = &queued[8..];
            self.kv.remove(key)?;
            self.expires.remove(key)?;
            self.queue.remove(queued.as_slice())?;
        }
        Ok(due.len())
    }
}

/// [`Txn`] on one redb write transaction, for one owner.
struct EmbeddedTxn<'t, 'o> {
    tables: Tables<'t>,
    owner: &'o str,
    now_ms: i64,
    /// Whether anything was written: a transaction that only read is not committed.
    wrote: bool,
}

impl Txn for EmbeddedTxn<'_, '_> {
    fn now_ms(&self) -> i64 {
        self.now_ms
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        let key = kv_key(self.owner, key)?;
        self.tables.entry(&key, self.now_ms).map_err(storage_error)
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let key = kv_key(self.owner, key)?;
        self.wrote = true;
        self.tables
            .put(&key, value, expires_at_ms)
            .map_err(storage_error)
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, StoreError> {
        let key = kv_key(self.owner, key)?;
        self.wrote = true;
        self.tables.remove(&key, self.now_ms).map_err(storage_error)
    }

    fn set_expiry(&mut self, key: &[u8], expires_at_ms: Option<i64>) -> Result<bool, StoreError> {
        let key = kv_key(self.owner, key)?;
        if self
            .tables
            .entry(&key, self.now_ms)
            .map_err(storage_error)?
            .is_none()
        {
            return Ok(false);
        }
        self.wrote = true;
        self.tables
            .set_expiry(&key, expires_at_ms)
            .map_err(storage_error)?;
        Ok(true)
    }

    fn scan(&mut self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = kv_key(self.owner, b"")?;
        let start = kv_key(self.owner, after.unwrap_or_default())?;
        let keys = self
            .tables
            .live_keys(&prefix, &start, after.is_some(), limit, self.now_ms)
            .map_err(storage_error)?;
        Ok(keys
            .into_iter()
            .map(|key| key[prefix.len()..].to_vec())
            .collect())
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let prefix = kv_key(self.owner, b"")?;
        let keys = self
            .tables
            .live_keys(&prefix, &prefix, false, usize::MAX, self.now_ms)
            .map_err(storage_error)?;
        Ok(keys.len() as u64)
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        let prefix = kv_key(self.owner, b"")?;
        // Expired keys go too: i64::MIN as now makes every stored key live.
        let keys = self
            .tables
            .live_keys(&prefix, &prefix, false, usize::MAX, i64::MIN)
            .map_err(storage_error)?;
        self.wrote = true;
        for key in keys {
            self.tables
                .remove(&key, self.now_ms)
                .map_err(storage_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_key_round_trips() {
        for (owner, key) in [
            ("alice", &b"k"[..]),
            ("", b""),
            ("bob", b"\0\r\n\xff"),
            ("\u{e9}t\u{e9}", b"x"),
        ] {
            let encoded = kv_key(owner, key).unwrap();
            assert_eq!(split_kv_key(&encoded), Some((owner, key)));
        }
    }

    #[test]
    fn kv_key_never_collides_across_owners() {
        // Without the length prefix "ab"+"c" and "a"+"bc" would both be "abc".
        let pairs: &[(&str, &[u8])] = &[
            ("ab", b"c"),
            ("a", b"bc"),
            ("abc", b""),
            ("", b"abc"),
            ("a\0", b"bc"),
            ("a", b"\0bc"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (owner, key) in pairs {
            assert!(
                seen.insert(kv_key(owner, key).unwrap()),
                "{owner:?} {key:?} collides"
            );
        }
    }

    #[test]
    fn kv_key_refuses_an_owner_too_long_to_prefix() {
        let owner = "x".repeat(65_536);
        assert!(kv_key(&owner, b"k").is_err());
        assert!(kv_key(&owner[..65_535], b"k").is_ok());
    }

    #[test]
    fn split_kv_key_rejects_what_kv_key_cannot_produce() {
        assert_eq!(split_kv_key(b""), None);
        assert_eq!(split_kv_key(b"\0"), None);
        assert_eq!(split_kv_key(b"\0\x05ab"), None);
        assert_eq!(split_kv_key(b"\0\x01\xff"), None);
    }

    #[test]
    fn queue_keys_sort_by_expiry_time_then_key() {
        let times = [i64::MIN, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(
                queue_key(pair[0], b"z") < queue_key(pair[1], b"a"),
                "{pair:?}"
            );
        }
        assert!(queue_key(5, b"a") < queue_key(5, b"b"));
    }

    #[test]
    fn user_rows_round_trip() {
        for (disabled, admin) in [(false, false), (true, false), (false, true), (true, true)] {
            let user = UserRecord {
                name: "alice".into(),
                hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                disabled,
                admin,
            };
            assert_eq!(decode_user("alice", &encode_user(&user)), Ok(user));
        }
        // A row from before admins existed.
        assert!(!decode_user("x", b"\x01h").unwrap().admin);
        assert!(decode_user("x", b"").is_err());
        assert!(decode_user("x", b"\x04h").is_err());
    }
}
