//! MULTI, EXEC, DISCARD, WATCH, UNWATCH, with Redis's replies, and one thing stronger than
//! Redis: EXEC runs the queued store commands as one store transaction ([`transact`]), so all of
//! them commit or none does, and EXEC's reply leaves after the commit.
//!
//! - Queueing ([`queue`]): between MULTI and EXEC a command that passed the name and arity
//!   checks answers `+QUEUED`; one refused there (unknown, wrong arity, not allowed inside a
//!   transaction, past [`MULTI_MAX_QUEUED`] or past `--max-query-buffer` bytes of queued
//!   commands) answers its error and makes EXEC answer
//!   `-EXECABORT`.
//! - EXEC: inline commands (and the few ring commands allowed: PING, INFO, COMMAND, UNWATCH)
//!   run on the ring at EXEC, their replies kept; then one store job runs, in one transaction,
//!   the WATCH check and every store and compute command in queue order, each through a
//!   [`TxnConn`]: the store API bound to the open transaction, so a store command runs inside
//!   it unchanged. A command's own error (INCR of a string) is its reply, as in Redis; a store
//!   failure rolls everything back and EXEC answers the store's error.
//! - WATCH reads each key's value and expiry on the store pool and keeps them on the session;
//!   EXEC reads them again inside its transaction (rows locked on PostgreSQL) and aborts, with
//!   a null reply, if any differs. A write that leaves a key as it was (same value, same
//!   expiry) is not seen: Redis would abort there, ringport commits.
//! - Bounds: at most [`MULTI_MAX_QUEUED`] commands, and `--max-query-buffer` bytes of them, per
//!   transaction; each statement inside it
//!   has the store's call deadline, and the whole job the ring's `--store-timeout` (plus 1 ms
//!   per queued command), after which the client gets `-ERR store unavailable` and, the
//!   transaction being a write, its session is closed.

use std::sync::Arc;
use std::time::Duration;

use crate::conn::{Transaction, Watched};
use crate::resp::{self, encode_value, Args, Proto};
use crate::store::{
    incremented, transact, values_within, Conn as StoreConn, Entry, StoreError, Txn, TxnBody,
    UserRecord,
};
use crate::storepool::StoreWork;
use crate::table::Spec;

use super::api::{ComputeFn, Handler, Reply, Request, StoreCtx, StoreFn};
use super::{err, run_inline, store_failed, strings, Call};

/// Most commands one MULTI may queue: the transaction holds its store connection (and, on the
/// embedded store, the write lock) while it runs.
pub const MULTI_MAX_QUEUED: usize = 10_000;

/// Redis's reply to EXEC after a refused command.
const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

/// Commands that act at once even inside MULTI.
pub fn runs_inside_multi(name: &str) -> bool {
    matches!(name, "exec" | "discard" | "multi" | "watch" | "quit")
}

/// A refused command inside MULTI dooms the transaction (Redis's `flagTransaction`).
pub fn refused_while_queueing(call: &mut Call<'_, '_>) {
    if let Some(transaction) = call.conn_mut().transaction_mut() {
        if transaction.queued.is_some() {
            transaction.dirty = true;
        }
    }
}

/// An EXEC refused before it ran (Redis's `execCommandAbort`): the transaction, if any, is
/// discarded, and the refusal says why.
pub fn abort_exec(call: &mut Call<'_, '_>, why: &str) {
    call.conn_mut().take_transaction();
    err(
        call.out(),
        &format!("EXECABORT Transaction discarded because of: {why}"),
    );
}

/// The store handler EXEC runs for a command the session normally hands to the folding path.
fn store_equivalent(name: &str) -> Option<Arc<StoreFn>> {
    let f: Arc<StoreFn> = match name {
        "get" => Arc::new(strings::get),
        "set" => Arc::new(strings::set),
        "mget" => Arc::new(strings::mget),
        _ => return None,
    };
    Some(f)
}

/// Whether EXEC can run this command: anything but session commands that wait on a pool or
/// change the session (AUTH, HELLO, CLIENT, SLEEP, ...).
fn can_queue(spec: &Spec, handler: &Handler) -> bool {
    match handler {
        Handler::Store(_) | Handler::Compute(_) | Handler::Inline(_) => true,
        Handler::Session(_) => {
            store_equivalent(spec.name).is_some()
                || matches!(spec.name, "ping" | "info" | "command" | "unwatch")
        }
        // A worker answers later, from another process: it cannot run inside the transaction.
        Handler::Worker(_) => false,
    }
}

/// Queues a command that passed the checks, inside MULTI.
pub fn queue(call: &mut Call<'_, '_>, spec: &Spec, handler: &Handler, args: &Args) {
    let max_bytes = call.shared.config.max_query_buffer;
    let (count, bytes) = call.conn().transaction().map_or((0, 0), |transaction| {
        let count = transaction.queued.as_ref().map_or(0, Vec::len);
        (count, transaction.queued_bytes)
    });
    let refusal = if !can_queue(spec, handler) {
        Some("ERR Command not allowed inside a transaction".to_string())
    } else if count >= MULTI_MAX_QUEUED {
        Some(format!(
            "ERR MULTI queue is full: at most {MULTI_MAX_QUEUED} commands per transaction"
        ))
    } else if bytes.saturating_add(args.bytes()) > max_bytes {
        // Queued commands are input held for later: the same bound as input not yet run.
        Some(format!(
            "ERR MULTI queue is full: at most {max_bytes} bytes of queued commands per transaction (--max-query-buffer)"
        ))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        err(call.out(), &refusal);
        refused_while_queueing(call);
        return;
    }
    if let Some(transaction) = call.conn_mut().transaction_mut() {
        if let Some(queued) = transaction.queued.as_mut() {
            queued.push(args.clone());
            transaction.queued_bytes += args.bytes();
        }
    }
    resp::simple(call.out(), b"QUEUED");
}

pub(super) fn multi(call: &mut Call<'_, '_>, _args: &Args) {
    if call.conn().in_multi() {
        return err(call.out(), "ERR MULTI calls can not be nested");
    }
    let transaction = call.conn_mut().transaction_entry();
    transaction.queued = Some(Vec::new());
    transaction.queued_bytes = 0;
    resp::simple(call.out(), b"OK");
}

pub(super) fn discard(call: &mut Call<'_, '_>, _args: &Args) {
    if !call.conn().in_multi() {
        return err(call.out(), "ERR DISCARD without MULTI");
    }
    // DISCARD forgets the WATCHed keys too.
    call.conn_mut().take_transaction();
    resp::simple(call.out(), b"OK");
}

pub(super) fn unwatch(call: &mut Call<'_, '_>, _args: &Args) {
    if !call.conn().in_multi() {
        call.conn_mut().take_transaction();
    }
    resp::simple(call.out(), b"OK");
}

/// WATCH reads the keys on the store pool and keeps what they held on the session.
pub(super) fn watch(call: &mut Call<'_, '_>, args: &Args) {
    if call.conn().in_multi() {
        return err(call.out(), "ERR WATCH inside MULTI is not allowed");
    }
    let watched = Arc::clone(&call.conn_mut().transaction_entry().watched);
    let (owner, keys) = (call.owner(), args.to_vecs().split_off(1));
    let (shared, replier) = (call.shared.clone(), call.replier());
    let job = Box::new(move |conn: Result<&mut dyn StoreConn, StoreError>| {
        let read = conn.and_then(|conn| {
            transact(conn, &owner, |txn| {
                keys.iter()
                    .map(|key| Ok((key.clone(), txn.get(key)?)))
                    .collect::<Result<Vec<_>, StoreError>>()
            })
        });
        let mut watched = watched.lock().unwrap_or_else(|poison| poison.into_inner());
        match read {
            Ok(entries) => {
                watched.keys.extend(entries);
                drop(watched);
                replier.reply(b"+OK\r\n".to_vec());
            }
            Err(error) => {
                watched.failed = true;
                drop(watched);
                store_failed(&shared, replier, &error);
            }
        }
    });
    call.offload_store(StoreWork::Job(job), Duration::ZERO);
}

/// What EXEC does with one queued command.
enum Step {
    /// Run on the ring at EXEC: its encoded reply.
    Answered(Vec<u8>),
    /// Run inside the store transaction.
    Store(Arc<StoreFn>, Request),
    /// Run on the store worker, beside the transaction (it touches no key).
    Compute(Arc<ComputeFn>, Request),
}

pub(super) fn exec(call: &mut Call<'_, '_>, _args: &Args) {
    if !call.conn().in_multi() {
        return err(call.out(), "ERR EXEC without MULTI");
    }
    // EXEC ends MULTI and forgets the WATCHed keys, whatever happens next.
    let Some(transaction) = call.conn_mut().take_transaction() else {
        return err(call.out(), "ERR EXEC without MULTI");
    };
    let Transaction {
        queued,
        dirty,
        watched,
        ..
    } = transaction;
    if dirty {
        return err(call.out(), EXECABORT);
    }
    let watched = std::mem::take(&mut *watched.lock().unwrap_or_else(|poison| poison.into_inner()));
    let proto = call.proto();
    if watched.failed {
        return resp::null_array(call.out(), proto);
    }
    let steps = plan(call, queued.unwrap_or_default());
    let needs_store =
        !watched.keys.is_empty() || steps.iter().any(|step| !matches!(step, Step::Answered(_)));
    if !needs_store {
        resp::array_len(call.out(), steps.len());
        for step in steps {
            if let Step::Answered(bytes) = step {
                call.out().extend_from_slice(&bytes);
            }
        }
        return;
    }
    let (owner, shared, replier) = (call.owner(), call.shared.clone(), call.replier());
    let allowance = Duration::from_millis(steps.len() as u64);
    let job = Box::new(move |conn: Result<&mut dyn StoreConn, StoreError>| {
        let outcome = conn.and_then(|conn| {
            transact(conn, &owner, |txn| {
                run(txn, &owner, &watched, &steps, proto)
            })
        });
        match outcome {
            Ok(Some(replies)) => {
                let limit = shared.config.max_output_buffer;
                let mut out = Vec::with_capacity(replies.iter().map(Vec::len).sum::<usize>() + 16);
                resp::array_len(&mut out, replies.len());
                replies
                    .iter()
                    .for_each(|reply| out.extend_from_slice(reply));
                if out.len() > limit {
                    replier.over_output_limit();
                } else {
                    replier.reply(out);
                }
            }
            Ok(None) => {
                let mut out = Vec::new();
                resp::null_array(&mut out, proto);
                replier.reply(out);
            }
            Err(error) => store_failed(&shared, replier, &error),
        }
    });
    call.offload_store(StoreWork::Job(job), allowance);
}

/// Turns the queue into steps, running on the ring now what belongs there.
fn plan(call: &mut Call<'_, '_>, queued: Vec<Args>) -> Vec<Step> {
    let (shared, handlers) = (Arc::clone(call.shared), call.handlers);
    let mut steps = Vec::with_capacity(queued.len());
    for args in &queued {
        let Some((index, spec)) = shared.table.lookup(&args[0]) else {
            // Queued only after the lookup succeeded; the table never changes.
            continue;
        };
        let step = match (&handlers.0[index], store_equivalent(spec.name)) {
            (Handler::Store(f), _) => Step::Store(Arc::clone(f), Request::of(call, args)),
            (Handler::Session(_), Some(f)) => Step::Store(f, Request::of(call, args)),
            (Handler::Compute(f), _) => Step::Compute(Arc::clone(f), Request::of(call, args)),
            (handler, _) => {
                let before = call.out().len();
                match handler {
                    Handler::Inline(f) => run_inline(call, spec, f.as_ref(), args),
                    Handler::Session(f) => f(call, args),
                    Handler::Store(_) | Handler::Compute(_) | Handler::Worker(_) => {}
                }
                Step::Answered(call.out().split_off(before))
            }
        };
        steps.push(step);
    }
    steps
}

/// EXEC's store part, inside the transaction: `None` when a WATCHed key changed.
fn run(
    txn: &mut dyn Txn,
    owner: &str,
    watched: &Watched,
    steps: &[Step],
    proto: Proto,
) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
    for (key, seen) in &watched.keys {
        if txn.get(key)? != *seen {
            return Ok(None);
        }
    }
    let mut conn = TxnConn { txn, owner };
    let mut replies = Vec::with_capacity(steps.len());
    for step in steps {
        let reply = match step {
            Step::Answered(bytes) => bytes.clone(),
            Step::Store(f, request) => match f(&mut StoreCtx::new(request, &mut conn)) {
                Ok(reply) => encoded(&reply, proto),
                // The command's own error is its reply; the others go on, as in Redis.
                Err(
                    error @ (StoreError::NotInteger | StoreError::Overflow | StoreError::Sql(_)),
                ) => {
                    let mut out = Vec::new();
                    resp::error(&mut out, error.resp_message().as_bytes());
                    out
                }
                Err(error) => return Err(error),
            },
            Step::Compute(f, request) => encoded(&f(request), proto),
        };
        replies.push(reply);
    }
    Ok(Some(replies))
}

fn encoded(reply: &Reply, proto: Proto) -> Vec<u8> {
    let mut out = Vec::new();
    encode_value(&mut out, reply, proto);
    out
}

/// The store API of one open transaction, for one owner: what a store command gets inside
/// EXEC. Every key-value call runs inside the transaction; `transact` runs its body in it too
/// (no transaction of its own). What has no meaning inside (users, the sweep, SLEEP) is
/// refused.
struct TxnConn<'t, 'o> {
    txn: &'t mut dyn Txn,
    owner: &'o str,
}

impl TxnConn<'_, '_> {
    fn check(&self, owner: &str) -> Result<(), StoreError> {
        if owner == self.owner {
            Ok(())
        } else {
            Err(StoreError::Other(
                "a transaction reads and writes its session user's keys only".into(),
            ))
        }
    }

    fn refused(what: &str) -> StoreError {
        StoreError::Other(format!("{what} is not available inside a transaction"))
    }
}

impl StoreConn for TxnConn<'_, '_> {
    fn get(&mut self, owner: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check(owner)?;
        Ok(self.txn.get(key)?.map(|entry| entry.value))
    }

    fn mget_within(
        &mut self,
        owner: &str,
        keys: &[&[u8]],
        budget: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        values_within(keys, budget, |key| self.get(owner, key))
    }

    fn set(&mut self, owner: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.check(owner)?;
        self.txn.put(key, value, None)
    }

    fn get_many(&mut self, keys: &[(&str, &[u8])]) -> Vec<Result<Option<Vec<u8>>, StoreError>> {
        keys.iter()
            .map(|(owner, key)| self.get(owner, key))
            .collect()
    }

    fn set_many(&mut self, triples: &[(&str, &[u8], &[u8])]) -> Vec<Result<(), StoreError>> {
        triples
            .iter()
            .map(|(owner, key, value)| self.set(owner, key, value))
            .collect()
    }

    fn mset(&mut self, owner: &str, pairs: &[(&[u8], &[u8])]) -> Result<(), StoreError> {
        pairs
            .iter()
            .try_for_each(|(key, value)| self.set(owner, key, value))
    }

    fn del(&mut self, owner: &str, keys: &[&[u8]]) -> Result<i64, StoreError> {
        self.check(owner)?;
        let mut removed = 0;
        for key in keys {
            if self.txn.delete(key)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn exists(&mut self, owner: &str, keys: &[&[u8]]) -> Result<i64, StoreError> {
        self.check(owner)?;
        let mut count = 0;
        for key in keys {
            if self.txn.get(key)?.is_some() {
                count += 1;
            }
        }
        Ok(count)
    }

    fn incr_by(&mut self, owner: &str, key: &[u8], delta: i64) -> Result<i64, StoreError> {
        self.check(owner)?;
        let current = self.txn.get(key)?;
        let next = incremented(current.as_ref().map(|entry| entry.value.as_slice()), delta)?;
        let expiry = current.and_then(|entry: Entry| entry.expires_at_ms);
        self.txn.put(key, next.to_string().as_bytes(), expiry)?;
        Ok(next)
    }

    fn transact(&mut self, owner: &str, body: &mut TxnBody<'_>) -> Result<(), StoreError> {
        self.check(owner)?;
        body(&mut *self.txn)
    }

    fn sweep_expired(&mut self, _now_ms: i64, _limit: usize) -> Result<usize, StoreError> {
        Err(Self::refused("the expiry sweep"))
    }

    fn sleep(&mut self, _ms: u64) -> Result<(), StoreError> {
        Err(Self::refused("SLEEP"))
    }

    fn user(&mut self, _name: &str) -> Result<Option<UserRecord>, StoreError> {
        Err(Self::refused("the user table"))
    }

    fn put_user(&mut self, _user: &UserRecord) -> Result<(), StoreError> {
        Err(Self::refused("the user table"))
    }

    fn del_user(&mut self, _name: &str) -> Result<bool, StoreError> {
        Err(Self::refused("the user table"))
    }

    fn users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        Err(Self::refused("the user table"))
    }
}
