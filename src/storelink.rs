//! Ring reads (on PostgreSQL by default; `--no-ring-reads` turns them off): each ring drives a
//! PostgreSQL connection of its own for GETs, so a GET crosses no thread: the ring writes the
//! query, PostgreSQL's reply wakes the ring, the ring answers. Through the store pool the same
//! GET takes four wake-ups more (the worker's, twice, and the ring's mailbox), and the lane's one
//! worker waits for each query before it sends the next, so under a closed-loop load the CPUs sit
//! idle between them. The price is paid by PostgreSQL: each ring's queries carry only that ring's
//! GETs, where the read lane gathers every ring's into one query, and a query costs PostgreSQL
//! far more than a key in it. On 2 cores, GET at `-c 16` reached 1.07x pgbench -S's rate with
//! ring reads and 0.59x through the lane, for about the same CPU per GET of ringport and
//! PostgreSQL together (`bench/results/2026-12-03/store-compare-ring-reads.txt`).
//!
//! - [`ReadLink`] is one ring's side: the GETs its sessions handed over and not sent yet, and the
//!   batches in flight. GETs that arrive while a batch is out wait and go together in the next
//!   one (up to [`BATCH_MAX`] keys), so an idle server adds no wait and a busy one sends fewer,
//!   larger queries. At most [`DEPTH`] batches are in flight; each session has at most one store
//!   job out, so a session's own commands stay in order, and a GET sees every write that was
//!   acknowledged before it (a SET is answered after its commit).
//! - [`Connector`] is one thread for all rings: it opens a connection for each ring that has none
//!   (`Backend::connect_ring_reads`), at start and after a loss, at most once per
//!   [`RECONNECT_INTERVAL`] per ring, and hands it over with the ring's `Sender::attach`.
//! - While a ring has no connection, its GETs go to the store pool as every other store command
//!   does. GETs not sent yet when the connection is lost go there too; GETs in flight are
//!   answered `store unavailable`, as a worker's would be. A batch PostgreSQL refuses goes to the
//!   pool, which runs it again one GET at a time, so one bad GET fails only its own session, and
//!   the connection is replaced (its prepared statements may no longer fit the schema).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ringport_ring::SessionId;

use crate::pool::Busy;
use crate::store::postgres::wire::{self, Replies, Reply};
use crate::store::{now_ms, Backend, StoreError};
use crate::storepool::{
    GetWork, JobTicket, LinkStats, StorePool, StoreWork, BATCH_BYTES_MAX, BATCH_MAX,
};

/// Most batches a ring keeps in flight on its connection.
pub const DEPTH: usize = 1;

/// Most GETs (keys) waiting to be sent before further ones go to the store pool.
pub const WAITING_MAX: usize = 4096;

/// The least time between two connection attempts for one ring.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// One batch on the wire: its GETs, in order, and what came back so far.
struct Batch {
    works: Vec<GetWork>,
    values: Vec<Option<Vec<u8>>>,
    failed: Option<String>,
    sent: Instant,
}

/// One ring's connection for reads, and the GETs it carries.
#[derive(Default)]
pub struct ReadLink {
    /// The connection's session on this ring, while there is one.
    id: Option<SessionId>,
    waiting: VecDeque<GetWork>,
    waiting_keys: usize,
    in_flight: VecDeque<Batch>,
    /// The GETs the batches in flight carry.
    in_flight_keys: usize,
    /// This link's ring, known once a connection arrived (`LinkStats` are per ring).
    ring: Option<usize>,
    replies: Replies,
    /// A flush was asked for (the session's `LinkFlush` message is on its way).
    flush_asked: bool,
    /// The ring drains: new GETs go to the pool, the connection closes once its batches are
    /// answered.
    closing: bool,
    /// Where to ask for a connection after a loss; `None`: ring reads are off.
    want: Option<Sender<usize>>,
    /// This ring has had a connection: the next one is a reconnect (`store_reconnects`).
    linked_before: bool,
    scratch: BytesMut,
}

/// What the ring must do after a GET was handed over.
pub enum Handed {
    /// The link took it; poke the link's session (`Some`) so that it sends, or do nothing (a
    /// batch is out: the GET goes with the next one).
    Link(Arc<JobTicket>, Option<SessionId>),
    /// The store pool took it.
    Pool(Arc<JobTicket>),
}

impl ReadLink {
    /// A link that asks `want` for its connection; `None`: ring reads off, every GET goes to the
    /// pool.
    pub fn new(want: Option<Sender<usize>>) -> ReadLink {
        ReadLink {
            want,
            ..ReadLink::default()
        }
    }

    /// Whether `id` is this link's connection.
    pub fn is(&self, id: SessionId) -> bool {
        self.id == Some(id)
    }

    /// Takes a session's GETs, or hands them to `pool` when the link cannot (no connection, the
    /// ring drains, too many waiting).
    pub fn submit(&mut self, work: GetWork, pool: &StorePool) -> Result<Handed, Busy> {
        let keys = work.keys.len();
        // Large keys go the pool's way, so a batch here stays far below the protocol's limits.
        let large = work.keys.iter().map(Vec::len).sum::<usize>() > BATCH_BYTES_MAX;
        if self.id.is_none() || self.closing || large || self.waiting_keys + keys > WAITING_MAX {
            return pool
                .submit(StoreWork::Get(work), Duration::ZERO)
                .map(Handed::Pool);
        }
        self.waiting.push_back(work);
        self.waiting_keys += keys;
        self.publish(pool);
        let poke = (!self.flush_asked && self.in_flight.len() < DEPTH).then(|| {
            self.flush_asked = true;
            self.id
        });
        Ok(Handed::Link(pool.started_ticket(), poke.flatten()))
    }

    /// The connection arrived on ring `ring` as session `id`; false when the ring has one
    /// already (the new one is closed).
    pub fn attached(&mut self, id: SessionId, ring: usize, pool: &StorePool) -> bool {
        if self.id.is_some() || self.want.is_none() || self.closing {
            return false;
        }
        self.id = Some(id);
        self.ring = Some(ring);
        self.publish(pool);
        self.replies = Replies::default();
        let stats = pool.store_stats();
        stats.ring_links_up.fetch_add(1, Relaxed);
        stats.ring_links_made.fetch_add(1, Relaxed);
        if std::mem::replace(&mut self.linked_before, true) {
            stats.reconnects.fetch_add(1, Relaxed);
        }
        true
    }

    /// Sends what waits, as batches, while fewer than [`DEPTH`] are out: `out` is the link
    /// session's output.
    pub fn flush(&mut self, out: &mut Vec<u8>, now: Instant, pool: &StorePool) {
        self.flush_asked = false;
        while self.in_flight.len() < DEPTH && !self.waiting.is_empty() {
            let mut works = Vec::new();
            let (mut keys, mut bytes) = (0, 0);
            while let Some(next) = self.waiting.front() {
                let size: usize = next.keys.iter().map(Vec::len).sum();
                if !works.is_empty()
                    && (keys + next.keys.len() > BATCH_MAX || bytes + size > BATCH_BYTES_MAX)
                {
                    break;
                }
                keys += next.keys.len();
                bytes += size;
                works.extend(self.waiting.pop_front());
            }
            self.waiting_keys -= keys;
            let gets = works
                .iter()
                .flat_map(|work| work.keys.iter().map(|key| (&*work.owner, key.as_slice())));
            self.scratch.clear();
            wire::encode_gets(gets, keys, now_ms(), &mut self.scratch);
            out.extend_from_slice(&self.scratch);
            let stats = pool.store_stats();
            stats.ring_batches.fetch_add(1, Relaxed);
            stats.ring_gets.fetch_add(keys as u64, Relaxed);
            if let Some(link) = self.stats(pool) {
                link.batches.fetch_add(1, Relaxed);
                link.gets.fetch_add(keys as u64, Relaxed);
            }
            self.in_flight_keys += keys;
            self.in_flight.push_back(Batch {
                works,
                values: vec![None; keys],
                failed: None,
                sent: now,
            });
        }
        if self.scratch.capacity() > 64 * 1024 {
            self.scratch = BytesMut::new();
        }
        self.publish(pool);
    }

    /// This ring's `LinkStats`, when ring reads keep them.
    fn stats<'a>(&self, pool: &'a StorePool) -> Option<&'a LinkStats> {
        pool.store_stats().links.get()?.get(self.ring?)
    }

    /// Shows the link's state now in its `LinkStats`.
    fn publish(&self, pool: &StorePool) {
        if let Some(link) = self.stats(pool) {
            link.up.store(self.id.is_some(), Relaxed);
            link.in_flight.store(self.in_flight_keys as u64, Relaxed);
            link.batches_in_flight
                .store(self.in_flight.len() as u64, Relaxed);
            link.waiting.store(self.waiting_keys as u64, Relaxed);
        }
    }

    /// Bytes from the connection: answers every batch they complete. An error means the
    /// connection cannot go on (the caller closes it).
    pub fn receive(&mut self, data: &[u8], pool: &StorePool) -> Result<(), String> {
        self.replies.feed(data);
        while let Some(reply) = self.replies.next_reply()? {
            let Some(batch) = self.in_flight.front_mut() else {
                // Between batches the server speaks only to end the connection (a shutdown).
                return Err(match reply {
                    Reply::Failed(message) => format!("PostgreSQL: {message}"),
                    _ => "a reply for no batch".into(),
                });
            };
            match reply {
                Reply::Row(index, value) => {
                    *batch.values.get_mut(index).ok_or("a row out of range")? = Some(value);
                }
                Reply::Failed(message) => batch.failed = Some(message),
                Reply::Done => {
                    let batch = self.in_flight.pop_front().expect("the front batch");
                    self.in_flight_keys -= batch.values.len();
                    self.publish(pool);
                    if let Some(message) = answer(batch, pool) {
                        // A GET that fails is a statement that no longer fits the server (a
                        // schema changed under it): a new connection prepares it again.
                        return Err(format!("PostgreSQL refused a batch: {message}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether there is anything to send.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty() && self.in_flight.len() < DEPTH
    }

    /// When the oldest batch out has waited past `timeout`: the connection is then given up.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.in_flight.front().map(|batch| batch.sent + timeout)
    }

    /// The ring drains: take no more GETs; true when the connection can close now.
    pub fn drain(&mut self) -> bool {
        self.closing = true;
        self.done()
    }

    /// Whether the ring drains and nothing is left for the connection to carry.
    pub fn done(&self) -> bool {
        self.closing && self.in_flight.is_empty() && self.waiting.is_empty()
    }

    /// The connection `id` closed: GETs in flight are answered `store unavailable` (they may or
    /// may not have run; a read, so either is harmless, but the answer is lost), the waiting ones
    /// go to the pool, and a new connection is asked for unless the ring drains.
    pub fn closed(&mut self, id: SessionId, ring: usize, pool: &StorePool) {
        if self.id != Some(id) {
            return;
        }
        self.id = None;
        self.flush_asked = false;
        pool.store_stats().ring_links_up.fetch_sub(1, Relaxed);
        self.in_flight_keys = 0;
        for batch in std::mem::take(&mut self.in_flight) {
            let lost = StoreError::Unavailable("the ring's store connection was lost".into());
            for work in batch.works {
                let n = work.keys.len();
                (work.done)(vec![Err(lost.clone()); n]);
            }
        }
        self.waiting_keys = 0;
        for work in std::mem::take(&mut self.waiting) {
            to_pool(work, pool);
        }
        self.publish(pool);
        if !self.closing {
            if let Some(want) = &self.want {
                let _ = want.send(ring);
            }
        }
    }
}

/// Answers each GET of a finished batch, or hands the batch to the pool when PostgreSQL refused
/// it (the pool reruns a refused batch one GET at a time) and returns why.
fn answer(batch: Batch, pool: &StorePool) -> Option<String> {
    if let Some(message) = batch.failed {
        for work in batch.works {
            to_pool(work, pool);
        }
        return Some(message);
    }
    let mut values = batch.values.into_iter();
    for work in batch.works {
        let mine = values.by_ref().take(work.keys.len()).map(Ok).collect();
        (work.done)(mine);
    }
    None
}

/// Hands GETs to the store pool; a full pool answers them `store unavailable` at once.
fn to_pool(work: GetWork, pool: &StorePool) {
    if let Err(StoreWork::Get(work)) = pool.try_submit(StoreWork::Get(work), Duration::ZERO) {
        let full = StoreError::Unavailable("the store queue is full".into());
        let n = work.keys.len();
        (work.done)(vec![Err(full); n]);
    }
}

/// The thread that opens ring reads' connections.
pub struct Connector;

impl Connector {
    /// Starts the thread: one connection for each of `rings` rings now, and one again for any
    /// ring that sends its index on the returned channel. `attach` hands a connection to its
    /// ring. The thread ends once every clone of the returned sender is gone.
    pub fn start(
        backend: Arc<dyn Backend>,
        rings: usize,
        attach: impl Fn(usize, OwnedFd) + Send + 'static,
    ) -> Sender<usize> {
        let (want, wanted) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("store-links".into())
            .spawn(move || run_connector(&*backend, rings, &wanted, &attach))
            .expect("spawn the store-links thread");
        want
    }
}

fn run_connector(
    backend: &dyn Backend,
    rings: usize,
    wanted: &Receiver<usize>,
    attach: &dyn Fn(usize, OwnedFd),
) {
    // Rings without a connection, and when each may try again.
    let mut missing: Vec<(usize, Instant)> = (0..rings).map(|r| (r, Instant::now())).collect();
    let mut failing = false;
    loop {
        let now = Instant::now();
        let mut still = Vec::new();
        for (ring, at) in missing.drain(..) {
            if at > now {
                still.push((ring, at));
                continue;
            }
            match backend.connect_ring_reads() {
                Some(Ok(socket)) => {
                    if failing {
                        tracing::info!("ring reads: connected to the store again");
                        failing = false;
                    }
                    attach(ring, socket);
                }
                Some(Err(error)) => {
                    if !failing {
                        tracing::warn!(%error, "ring reads: cannot connect to the store; GETs go through the store workers meanwhile");
                        failing = true;
                    }
                    still.push((ring, Instant::now() + RECONNECT_INTERVAL));
                }
                None => return,
            }
        }
        missing = still;
        let wait = missing
            .iter()
            .map(|(_, at)| at.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        match wanted.recv_timeout(wait) {
            Ok(ring) => {
                if !missing.iter().any(|(r, _)| *r == ring) {
                    // After a loss, not at once: the store that just dropped it is likely down.
                    missing.push((ring, Instant::now() + RECONNECT_INTERVAL));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
