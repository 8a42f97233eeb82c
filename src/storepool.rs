//! The store pool: store commands run here on blocking workers, one store connection each, so a
//! slow query or a store outage never blocks a ring. The queue is bounded; when it is full the
//! command gets `-BUSY` at once.
//!
//! GETs have a lane of their own: with two workers or more, a quarter of them (at least one)
//! take only GETs, from their own queue, and the others take everything else. Fewer workers
//! reading means more GETs queued at the moment one is free, so bigger batches: one query for
//! all of them, cheaper for both sides (on 2 cores, a GET cost ringport and PostgreSQL
//! together 38-41 µs with one worker against 50-53 µs with four, `bench/store-threads.sh`).
//! And a GET never queues behind a slow write or an opaque job (SLEEP, a big MSET). While no
//! read worker has its connection, GETs take the general queue, and those already in the lane
//! are handed over to it.
//!
//! Beside the workers, one `store-sweep` thread with a connection of its own removes expired
//! keys ([`Conn::sweep_expired`]): a batch of at most [`SWEEP_BATCH`] keys per short
//! transaction, the next batch at once while batches come back full, else a pause of
//! [`SWEEP_INTERVAL`]. It never takes a worker's connection, so a backlog of expired keys
//! delays no command; reads never depend on it (an expired key is absent either way).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender, TrySendError};
use ringport_ring::mailbox::batch_wakes;

use crate::pool::{Busy, PoolStats};
use crate::store::{now_ms, Backend, Conn, StoreError, SWEEP_BATCH};

/// How long the sweep rests after a batch that was not full.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A store job: it gets the worker's connection, or the reason there is none right now.
pub type StoreJob = Box<dyn FnOnce(Result<&mut dyn Conn, StoreError>) + Send + 'static>;

/// Where a GET's value goes.
pub type GetDone = Box<dyn FnOnce(Vec<Result<Option<Vec<u8>>, StoreError>>) + Send + 'static>;
/// Where a SET's outcome goes, once committed.
pub type SetDone = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

/// What the store pool runs. GETs and SETs are typed so that a worker can fold every one queued
/// at the same moment, from any sessions, into one store call: one query for the GETs, one
/// commit for the SETs. Each session has at most one store job in flight, so folding never
/// reorders a session's own commands, and a SET is answered only after the commit that carries
/// it.
pub enum StoreWork {
    /// Any other store call, run alone.
    Job(StoreJob),
    Get(GetWork),
    Set(SetWork),
}

/// `GET key` of user `owner`, or several consecutive GETs of one session's pipeline: `done`
/// gets each key's value, in order.
pub struct GetWork {
    pub owner: Arc<str>,
    pub keys: Vec<Vec<u8>>,
    pub done: GetDone,
}

/// `SET key value` of user `owner`.
pub struct SetWork {
    pub owner: Arc<str>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub done: SetDone,
}

/// Most jobs one worker takes off the queue at once (one batch query, one commit).
pub const BATCH_MAX: usize = 128;

/// Most key and value bytes one batch takes on (a single larger job still runs, alone): the
/// batch's statement copies them all once more, so 128 SETs of 16 MiB must not make one 2 GiB
/// message.
pub const BATCH_BYTES_MAX: usize = 1 << 20;

impl StoreWork {
    /// The commands it answers: one, or a run of folded GETs.
    fn commands(&self) -> u64 {
        match self {
            StoreWork::Get(get) => get.keys.len() as u64,
            StoreWork::Job(_) | StoreWork::Set(_) => 1,
        }
    }

    /// The key and value bytes it carries.
    fn bytes(&self) -> usize {
        match self {
            StoreWork::Job(_) => 0,
            StoreWork::Get(get) => get.keys.iter().map(Vec::len).sum(),
            StoreWork::Set(set) => set.key.len() + set.value.len(),
        }
    }
}

/// What the ring knows about one store job it is waiting for, so that a store that stops
/// answering (a paused or wedged PostgreSQL keeps its connections open, so no timeout of the
/// client library fires) is noticed and the session answered without waiting for it.
#[derive(Debug)]
pub struct JobTicket {
    /// When a worker took the job, in µs since the pool started; 0 while queued, [`ABANDONED`]
    /// once the ring gave up on it before a worker took it. One word, so that a worker taking
    /// the job and the ring giving up on it agree on which came first.
    started_us: AtomicU64,
    /// How long the job may legitimately run beyond the store timeout (SLEEP's own duration).
    allowance: Duration,
    /// Set by the worker when the store call returned (the job may go on elsewhere, e.g. AUTH
    /// continues on the compute pool, which is not the store's doing).
    finished: AtomicBool,
}

/// `JobTicket::started_us` of a job given up before any worker took it.
const ABANDONED: u64 = u64::MAX;

impl JobTicket {
    /// Marks the job as given up: a worker that has not started it yet never will. Returns
    /// whether one had: then the store may still carry it out, and when is unknown.
    pub fn abandon(&self) -> bool {
        self.started_us
            .compare_exchange(0, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }
}

struct Queued {
    work: StoreWork,
    ticket: Arc<JobTicket>,
}

/// Store counters beyond the pool's.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Calls that failed with `Unavailable` (or found no connection).
    pub unavailable: AtomicU64,
    /// Other store errors.
    pub errors: AtomicU64,
    /// Connections re-established after a failure: by workers, and by rings for ring reads.
    pub reconnects: AtomicU64,
    /// Batches run (a batch: the jobs one worker took off the queue at once).
    pub batches: AtomicU64,
    /// Commands those batches carried (a run of folded GETs counts each GET);
    /// `batched_jobs / batches` is the mean batch size.
    pub batched_jobs: AtomicU64,
    /// The largest batch so far.
    pub batch_max: AtomicU64,
    /// Per worker, that is per store connection.
    pub workers: Vec<WorkerStats>,
    /// Expired keys the sweep removed.
    pub swept: AtomicU64,
    /// Ring reads (`storelink`): connections up now, one per ring at most.
    pub ring_links_up: AtomicU64,
    /// Ring reads: connections made, the first ones included.
    pub ring_links_made: AtomicU64,
    /// Ring reads: batches sent, and the GETs they carried.
    pub ring_batches: AtomicU64,
    pub ring_gets: AtomicU64,
    /// Ring reads: per ring, that is per ring's connection; set once at start-up when ring
    /// reads are on.
    pub links: OnceLock<Vec<LinkStats>>,
}

/// One ring's connection for GETs (ring reads), for INFO and /metrics; only its ring writes it.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Its connection is up.
    pub up: AtomicBool,
    /// GETs sent and not answered yet, and the batches carrying them (the pipeline's depth).
    pub in_flight: AtomicU64,
    pub batches_in_flight: AtomicU64,
    /// GETs waiting for a batch to be answered before they go.
    pub waiting: AtomicU64,
    /// Batches sent, and the GETs they carried.
    pub batches: AtomicU64,
    pub gets: AtomicU64,
}

/// One worker's connection, for INFO.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Its connection is up and taking jobs.
    pub up: AtomicBool,
    /// Jobs of the batch it is running now: the requests in flight on its connection.
    pub in_flight: AtomicU64,
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
}

/// The pool handle; cheap to clone.
#[derive(Clone)]
pub struct StorePool {
    sender: Sender<Queued>,
    /// The read lane's queue, with two workers or more.
    reads: Option<Sender<Queued>>,
    /// Read workers whose connection is up: GETs go to the lane only while one is.
    readers_up: Arc<AtomicUsize>,
    /// Last time a worker started or finished a job, in µs since `epoch`.
    progress_us: Arc<AtomicU64>,
    /// Workers running a job now.
    busy: Arc<AtomicU64>,
    epoch: Instant,
    backend: Arc<dyn Backend>,
    pool: Arc<PoolStats>,
    store: Arc<StoreStats>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    worker_count: usize,
    capacity: usize,
    shutdown: Arc<AtomicBool>,
}

impl StorePool {
    /// Starts `threads` workers over `backend` with a queue of `capacity` jobs.
    pub fn start(
        backend: Arc<dyn Backend>,
        threads: usize,
        capacity: usize,
        priority: ringport_ring::ThreadPriority,
    ) -> StorePool {
        let threads = threads.max(1);
        let (sender, receiver) = bounded::<Queued>(capacity.max(1));
        let readers = read_workers(threads);
        let reads = (readers > 0).then(|| bounded::<Queued>(capacity.max(1)));
        let readers_up = Arc::new(AtomicUsize::new(0));
        let epoch = Instant::now();
        let progress_us = Arc::new(AtomicU64::new(0));
        let busy = Arc::new(AtomicU64::new(0));
        let up = Arc::new(AtomicUsize::new(0));
        let pool = Arc::new(PoolStats::default());
        let store = Arc::new(StoreStats {
            workers: (0..threads).map(|_| WorkerStats::default()).collect(),
            ..StoreStats::default()
        });
        let shutdown = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|index| {
                // Workers 0..readers are the read lane: they take from its queue and hand what
                // they cannot serve to the general one.
                let lane = match &reads {
                    Some((_, lane)) if index < readers => Lane {
                        queue: lane.clone(),
                        overflow: Some(sender.clone()),
                        up: Some(readers_up.clone()),
                    },
                    _ => Lane {
                        queue: receiver.clone(),
                        overflow: None,
                        up: None,
                    },
                };
                let backend = backend.clone();
                let pool = pool.clone();
                let store = store.clone();
                let shutdown = shutdown.clone();
                let progress = Progress {
                    epoch,
                    progress_us: progress_us.clone(),
                    busy: busy.clone(),
                    up: up.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("store-{index}"))
                    .spawn(move || {
                        crate::pool::lower_priority(priority);
                        run_worker(index, &*backend, &lane, &pool, &store, &shutdown, &progress)
                    })
                    .expect("spawn store worker")
            })
            .collect::<Vec<_>>();
        let mut handles = handles;
        let sweeper = {
            let (backend, store, shutdown) = (backend.clone(), store.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("store-sweep".into())
                .spawn(move || {
                    crate::pool::lower_priority(priority);
                    run_sweep(&*backend, &store, &shutdown);
                })
                .expect("spawn the store sweep thread")
        };
        handles.push(sweeper);
        StorePool {
            sender,
            reads: reads.map(|(sender, _)| sender),
            readers_up,
            progress_us,
            busy,
            epoch,
            backend,
            pool,
            store,
            threads: Arc::new(Mutex::new(handles)),
            worker_count: threads,
            capacity: capacity.max(1),
            shutdown,
        }
    }

    /// Queues a job, or refuses it when the queue is full. `allowance` is how long the job may
    /// run by design (SLEEP's duration), on top of the store timeout.
    pub fn submit(&self, work: StoreWork, allowance: Duration) -> Result<Arc<JobTicket>, Busy> {
        self.try_submit(work, allowance).map_err(|_| Busy)
    }

    /// [`StorePool::submit`], handing a refused job back.
    pub fn try_submit(
        &self,
        work: StoreWork,
        allowance: Duration,
    ) -> Result<Arc<JobTicket>, StoreWork> {
        if self.shutdown.load(Ordering::Acquire) {
            return Err(work);
        }
        let ticket = Arc::new(JobTicket {
            started_us: AtomicU64::new(0),
            allowance,
            finished: AtomicBool::new(false),
        });
        self.pool.depth.fetch_add(1, Ordering::AcqRel);
        let queue = match (&work, &self.reads) {
            (StoreWork::Get(_), Some(reads)) if self.readers_up.load(Ordering::Acquire) > 0 => {
                reads
            }
            _ => &self.sender,
        };
        match queue.try_send(Queued {
            work,
            ticket: ticket.clone(),
        }) {
            Ok(()) => Ok(ticket),
            Err(TrySendError::Full(queued)) | Err(TrySendError::Disconnected(queued)) => {
                self.pool.depth.fetch_sub(1, Ordering::AcqRel);
                self.pool.rejected.fetch_add(1, Ordering::Relaxed);
                Err(queued.work)
            }
        }
    }

    /// A ticket for a job that runs from now on outside the pool (a ring's own store
    /// connection, `storelink`): `stuck` once it has run longer than the store timeout.
    pub fn started_ticket(&self) -> Arc<JobTicket> {
        Arc::new(JobTicket {
            started_us: AtomicU64::new((self.epoch.elapsed().as_micros() as u64).max(1)),
            allowance: Duration::ZERO,
            finished: AtomicBool::new(false),
        })
    }

    /// Whether the store has stopped answering for this job: it has run longer than `timeout`
    /// plus its allowance, or it is still queued while no worker has made progress for
    /// `timeout` although some are busy (every worker stuck on the store).
    pub fn stuck(&self, ticket: &JobTicket, timeout: Duration) -> bool {
        if ticket.finished.load(Ordering::Acquire) {
            return false;
        }
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let started = ticket.started_us.load(Ordering::Acquire);
        if started == ABANDONED {
            return false;
        }
        if started != 0 {
            return now_us.saturating_sub(started)
                > (timeout + ticket.allowance).as_micros() as u64;
        }
        let progress = self.progress_us.load(Ordering::Acquire);
        self.busy.load(Ordering::Acquire) > 0
            && now_us.saturating_sub(progress) > timeout.as_micros() as u64
    }

    /// Records the outcome of a store call (jobs call this so INFO can show errors).
    pub fn note_error(&self, error: &StoreError) {
        match error {
            StoreError::Unavailable(_) => self.store.unavailable.fetch_add(1, Ordering::Relaxed),
            StoreError::Other(_) | StoreError::Conflict => {
                self.store.errors.fetch_add(1, Ordering::Relaxed)
            }
            // The command's own error, as INCR on a string is: the store is fine.
            StoreError::NotInteger | StoreError::Overflow | StoreError::Sql(_) => 0,
        };
    }

    /// The backend's kind and description.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Pool counters.
    pub fn stats(&self) -> &PoolStats {
        &self.pool
    }

    /// Store counters.
    pub fn store_stats(&self) -> &StoreStats {
        &self.store
    }

    /// Store connections re-established after a loss: by the workers, and by the backend's
    /// connections themselves (PostgreSQL reconnects lazily on the next call).
    pub fn reconnects(&self) -> u64 {
        self.store.reconnects.load(Ordering::Relaxed) + self.backend.reconnects()
    }

    /// Worker count.
    pub fn threads(&self) -> usize {
        self.worker_count
    }

    /// The lane of worker `index`, as INFO and /metrics name it: `read` for the read lane's
    /// workers (the first ones; none with a single worker, which takes all), else `general`.
    pub fn lane(&self, index: usize) -> &'static str {
        if index < read_workers(self.worker_count) {
            "read"
        } else {
            "general"
        }
    }

    /// Queue capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Finishes queued jobs, then stops the workers.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        let handles = std::mem::take(&mut *self.threads.lock().expect("pool lock"));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

/// How many of `threads` workers take only GETs: a quarter, at least one, none with one worker.
fn read_workers(threads: usize) -> usize {
    if threads < 2 {
        0
    } else {
        (threads / 4).max(1)
    }
}

/// Where a worker takes its jobs from.
struct Lane {
    queue: Receiver<Queued>,
    /// For a read worker: the general queue, where GETs go while its connection is down.
    overflow: Option<Sender<Queued>>,
    /// For a read worker: the count of read workers up, which it keeps.
    up: Option<Arc<AtomicUsize>>,
}

impl Lane {
    /// The counts of workers up that this worker is part of.
    fn up_counters<'a>(&'a self, progress: &'a Progress) -> impl Iterator<Item = &'a AtomicUsize> {
        [Some(&*progress.up), self.up.as_deref()]
            .into_iter()
            .flatten()
    }
}

/// Where workers report progress, for `StorePool::stuck`.
struct Progress {
    epoch: Instant,
    progress_us: Arc<AtomicU64>,
    busy: Arc<AtomicU64>,
    /// Workers whose store connection is up.
    up: Arc<AtomicUsize>,
}

impl Progress {
    fn now_us(&self) -> u64 {
        // Never 0, which means "not started" in a ticket.
        (self.epoch.elapsed().as_micros() as u64).max(1)
    }
}

/// The sweep thread: removes expired keys in batches until shutdown. A store that is down is
/// retried at the next pause; the sweep's connection reconnects as any other.
fn run_sweep(backend: &dyn Backend, store: &StoreStats, shutdown: &AtomicBool) {
    let mut conn: Option<Box<dyn Conn>> = None;
    while !shutdown.load(Ordering::Acquire) {
        if conn.is_none() {
            conn = backend.connect().ok();
        }
        let removed = match conn
            .as_mut()
            .map(|conn| conn.sweep_expired(now_ms(), SWEEP_BATCH))
        {
            Some(Ok(removed)) => removed,
            Some(Err(error)) => {
                tracing::debug!(%error, "the expiry sweep failed; it tries again");
                0
            }
            None => 0,
        };
        store.swept.fetch_add(removed as u64, Ordering::Relaxed);
        if removed < SWEEP_BATCH {
            std::thread::sleep(SWEEP_INTERVAL);
        }
    }
}

fn run_worker(
    index: usize,
    backend: &dyn Backend,
    lane: &Lane,
    pool: &PoolStats,
    store: &StoreStats,
    shutdown: &AtomicBool,
    progress: &Progress,
) {
    let mut conn: Option<Box<dyn Conn>> = None;
    let mut reconnect = Reconnect {
        last_attempt: None,
        last_error: StoreError::Unavailable("not connected yet".into()),
        failed_before: false,
    };
    let mut counted_up = false;
    loop {
        connect_if_due(&mut conn, &mut reconnect, backend, index, store);
        // After an outage connections come back one by one; until this one is back, leave the
        // jobs to workers that can serve them rather than answer 'store unavailable'. With no
        // worker up, jobs are taken and fail fast, so an outage is reported at once.
        let ready = conn.as_mut().is_some_and(|c| c.ready());
        if ready != counted_up {
            counted_up = ready;
            store.workers[index].up.store(ready, Ordering::Relaxed);
            for up in lane.up_counters(progress) {
                if ready {
                    up.fetch_add(1, Ordering::AcqRel);
                } else {
                    up.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        if !ready && progress.up.load(Ordering::Acquire) > 0 {
            // New GETs already go to the general queue (no reader is up, or another reader
            // takes them); those queued before are handed over, not left waiting.
            if let Some(overflow) = &lane.overflow {
                hand_over(&lane.queue, overflow, &reconnect.last_error, pool);
            }
            if shutdown.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        // Queued jobs are finished before a shutdown takes effect.
        let first = match lane.queue.recv_timeout(Duration::from_millis(100)) {
            Ok(queued) => queued,
            Err(_) if shutdown.load(Ordering::Acquire) => break,
            Err(_) => continue,
        };
        // Whatever else is queued right now joins this batch: GETs and SETs fold into one call
        // each. Taking them adds no wait (nothing is awaited); an opaque job ends the taking, so
        // a slow one (SLEEP) holds back at most this one batch, and so does BATCH_BYTES_MAX.
        let mut bytes = first.work.bytes();
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX
            && bytes < BATCH_BYTES_MAX
            && !matches!(batch.last(), Some(q) if matches!(q.work, StoreWork::Job(_)))
        {
            match lane.queue.try_recv() {
                Ok(queued) => {
                    bytes += queued.work.bytes();
                    batch.push(queued);
                }
                Err(_) => break,
            }
        }
        connect_if_due(&mut conn, &mut reconnect, backend, index, store);
        pool.depth.fetch_sub(batch.len(), Ordering::AcqRel);
        let now = progress.now_us();
        // The session already answered "store unavailable" for an abandoned one, as for a job
        // that never ran.
        batch.retain(|q| {
            q.ticket
                .started_us
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if batch.is_empty() {
            continue;
        }
        progress.progress_us.store(now, Ordering::Release);
        progress.busy.fetch_add(1, Ordering::AcqRel);
        // Counted in commands: a run of folded GETs is one queued job but several commands, and
        // INFO and /metrics count every store command once.
        let jobs: u64 = batch.iter().map(|q| q.work.commands()).sum();
        pool.running.fetch_add(jobs as usize, Ordering::AcqRel);
        let started = Instant::now();
        store.batches.fetch_add(1, Ordering::Relaxed);
        store.batched_jobs.fetch_add(jobs, Ordering::Relaxed);
        store.batch_max.fetch_max(jobs, Ordering::Relaxed);
        let mine = &store.workers[index];
        mine.batches.fetch_add(1, Ordering::Relaxed);
        mine.jobs.fetch_add(jobs, Ordering::Relaxed);
        mine.in_flight.store(jobs, Ordering::Relaxed);
        let tickets: Vec<Arc<JobTicket>> = batch.iter().map(|q| q.ticket.clone()).collect();
        let works = batch.into_iter().map(|q| q.work).collect();
        let result =
            crate::pool::contain(|| run_batch(conn.as_deref_mut(), &reconnect.last_error, works));
        if result.is_err() {
            tracing::error!(
                worker = index,
                "a store job panicked; dropping its connection"
            );
            conn = None;
        }
        pool.busy_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        pool.completed.fetch_add(jobs, Ordering::Relaxed);
        mine.in_flight.store(0, Ordering::Relaxed);
        for ticket in &tickets {
            ticket.finished.store(true, Ordering::Release);
        }
        progress.busy.fetch_sub(1, Ordering::AcqRel);
        pool.running.fetch_sub(jobs as usize, Ordering::AcqRel);
        progress
            .progress_us
            .store(progress.now_us(), Ordering::Release);
    }
    if counted_up {
        for up in lane.up_counters(progress) {
            up.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// How long a job handed over from the read lane waits for room in the general queue.
const HAND_OVER_WAIT: Duration = Duration::from_millis(100);

/// Moves the jobs queued in a read lane whose worker has no connection to the general queue,
/// waiting a little for room there; a job that cannot move (the general queue stays full, or
/// its workers have stopped) is answered `down`.
fn hand_over(
    queue: &Receiver<Queued>,
    overflow: &Sender<Queued>,
    down: &StoreError,
    pool: &PoolStats,
) {
    while let Ok(queued) = queue.try_recv() {
        if let Err(SendTimeoutError::Timeout(queued) | SendTimeoutError::Disconnected(queued)) =
            overflow.send_timeout(queued, HAND_OVER_WAIT)
        {
            pool.depth.fetch_sub(1, Ordering::AcqRel);
            queued.ticket.finished.store(true, Ordering::Release);
            run_batch(None, down, vec![queued.work]);
        }
    }
}

/// Runs one batch: its GETs as one call, then its SETs as one commit (so a GET never waits
/// behind a commit), then its other job, if any. Without a connection each is answered with
/// `down`. The answers of the GETs, and then of the SETs, wake each ring once (`batch_wakes`).
fn run_batch(
    mut conn: Option<&mut (dyn Conn + 'static)>,
    down: &StoreError,
    works: Vec<StoreWork>,
) {
    let (mut gets, mut sets, mut jobs) = (Vec::new(), Vec::new(), Vec::new());
    for work in works {
        match work {
            StoreWork::Get(get) => gets.push(get),
            StoreWork::Set(set) => sets.push(set),
            StoreWork::Job(job) => jobs.push(job),
        }
    }
    if !gets.is_empty() {
        let keys: Vec<(&str, &[u8])> = gets
            .iter()
            .flat_map(|g| g.keys.iter().map(|k| (&*g.owner, &k[..])))
            .collect();
        let values = match conn.as_deref_mut() {
            Some(c) => c.get_many(&keys),
            None => keys.iter().map(|_| Err(down.clone())).collect(),
        };
        drop(keys);
        let mut values = values.into_iter();
        batch_wakes(|| {
            for get in gets {
                let mine = values.by_ref().take(get.keys.len()).collect();
                (get.done)(mine);
            }
        });
    }
    if !sets.is_empty() {
        let triples: Vec<(&str, &[u8], &[u8])> = sets
            .iter()
            .map(|s| (&*s.owner, &s.key[..], &s.value[..]))
            .collect();
        let outcomes = match conn.as_deref_mut() {
            Some(c) => c.set_many(&triples),
            None => triples.iter().map(|_| Err(down.clone())).collect(),
        };
        drop(triples);
        batch_wakes(|| {
            for (set, outcome) in sets.into_iter().zip(outcomes) {
                (set.done)(outcome);
            }
        });
    }
    for job in jobs {
        match conn.as_deref_mut() {
            Some(c) => job(Ok(c)),
            None => job(Err(down.clone())),
        }
    }
}

/// A worker's attempts to get a connection it does not have.
struct Reconnect {
    last_attempt: Option<Instant>,
    last_error: StoreError,
    failed_before: bool,
}

/// Connects a worker that has no connection, at most every 250 ms, so during an outage jobs fail
/// fast instead of each waiting for a connect timeout.
fn connect_if_due(
    conn: &mut Option<Box<dyn Conn>>,
    reconnect: &mut Reconnect,
    backend: &dyn Backend,
    index: usize,
    store: &StoreStats,
) {
    if conn.is_some()
        || reconnect
            .last_attempt
            .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
    {
        return;
    }
    reconnect.last_attempt = Some(Instant::now());
    match backend.connect() {
        Ok(c) => {
            if reconnect.failed_before {
                store.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(worker = index, "store connection re-established");
            }
            tracing::debug!(worker = index, "store connection established");
            *conn = Some(c);
        }
        Err(e) => {
            if !reconnect.failed_before {
                tracing::warn!(worker = index, error = %e, "store connect failed; retrying every 250 ms");
            }
            reconnect.failed_before = true;
            reconnect.last_error = e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, StoreSpec};

    /// One worker, held busy while four SETs of 600 KB queue up: they run as two batches of
    /// two, since a batch takes on at most `BATCH_BYTES_MAX` of keys and values; and every SET
    /// is answered `Ok`, after its commit.
    #[test]
    fn a_batch_stops_taking_jobs_past_its_byte_budget() {
        let (_dir, backend) = embedded();
        let pool = StorePool::start(backend, 1, 16, ringport_ring::ThreadPriority::Normal);
        let release = hold_a_worker(&pool);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for i in 0..4u8 {
            let done_tx = done_tx.clone();
            let set = SetWork {
                owner: Arc::from("alice"),
                key: vec![b'k', i],
                value: vec![i; 600 * 1024],
                done: Box::new(move |outcome| done_tx.send(outcome).unwrap()),
            };
            pool.submit(StoreWork::Set(set), Duration::ZERO).unwrap();
        }
        release.send(()).unwrap();
        for _ in 0..4 {
            assert_eq!(
                done_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
                Ok(())
            );
        }
        let stats = pool.store_stats();
        assert_eq!(stats.batch_max.load(Ordering::Relaxed), 2);
        assert_eq!(
            stats.batches.load(Ordering::Relaxed),
            3,
            "the blocker, then 2 + 2"
        );
        pool.shutdown();
    }

    /// Submits a job that holds its worker until the returned sender sends (or is dropped).
    fn hold_a_worker(pool: &StorePool) -> crossbeam_channel::Sender<()> {
        let (release, held) = crossbeam_channel::bounded::<()>(0);
        let blocker: StoreJob = Box::new(move |_| {
            let _ = held.recv();
        });
        pool.submit(StoreWork::Job(blocker), Duration::ZERO)
            .unwrap();
        release
    }

    fn embedded() -> (tempfile::TempDir, Arc<dyn Backend>) {
        let dir = tempfile::tempdir().unwrap();
        let backend = store::open(&StoreSpec::Embedded {
            dir: dir.path().to_path_buf(),
            cache_size: 1 << 20,
        })
        .unwrap();
        (dir, backend)
    }

    fn get(
        key: &[u8],
        done: crossbeam_channel::Sender<Vec<Result<Option<Vec<u8>>, StoreError>>>,
    ) -> StoreWork {
        StoreWork::Get(GetWork {
            owner: Arc::from("alice"),
            keys: vec![key.to_vec()],
            done: Box::new(move |values| done.send(values).unwrap()),
        })
    }

    /// With two workers, one is the read lane: a GET is answered while the other worker is held
    /// by a job that does not end until the GET's answer has come.
    #[test]
    fn a_get_never_waits_behind_a_held_general_worker() {
        let (_dir, backend) = embedded();
        let pool = StorePool::start(backend, 2, 16, ringport_ring::ThreadPriority::Normal);
        assert_eq!((pool.lane(0), pool.lane(1)), ("read", "general"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.readers_up.load(Ordering::Acquire) == 0 {
            assert!(Instant::now() < deadline, "the read worker never came up");
            std::thread::sleep(Duration::from_millis(5));
        }
        let release = hold_a_worker(&pool);
        let (done, answers) = crossbeam_channel::unbounded();
        pool.submit(get(b"absent", done), Duration::ZERO).unwrap();
        assert_eq!(
            answers.recv_timeout(Duration::from_secs(10)).unwrap(),
            vec![Ok(None)],
            "the GET, while the general worker is held"
        );
        let workers = &pool.store_stats().workers;
        assert_eq!(
            workers[0].jobs.load(Ordering::Relaxed),
            1,
            "the read worker ran the GET"
        );
        release.send(()).unwrap();
        pool.shutdown();
        assert_eq!(
            workers[1].jobs.load(Ordering::Relaxed),
            1,
            "the general worker ran the job"
        );
    }

    /// GETs left in the lane by a read worker that lost its connection move to the general
    /// queue; with no general worker left to take them, they are answered `down`.
    #[test]
    fn a_lane_without_its_connection_hands_its_gets_over() {
        let pool = PoolStats::default();
        let down = StoreError::Unavailable("gone".into());
        let (lane_in, lane) = bounded::<Queued>(4);
        let (general_in, general) = bounded::<Queued>(4);
        let (done, answers) = crossbeam_channel::unbounded();
        let queue = |work| Queued {
            work,
            ticket: Arc::new(JobTicket {
                started_us: AtomicU64::new(0),
                allowance: Duration::ZERO,
                finished: AtomicBool::new(false),
            }),
        };
        for key in [b"a", b"b"] {
            lane_in.send(queue(get(key, done.clone()))).unwrap();
        }
        pool.depth.store(2, Ordering::Relaxed);
        hand_over(&lane, &general_in, &down, &pool);
        assert_eq!(general.len(), 2, "both GETs moved");
        assert!(lane.is_empty());
        assert!(answers.is_empty(), "moved, not answered");
        assert_eq!(pool.depth.load(Ordering::Relaxed), 2, "still queued");

        lane_in.send(queue(get(b"c", done))).unwrap();
        drop(general);
        hand_over(&lane, &general_in, &down, &pool);
        assert_eq!(answers.try_recv().unwrap(), vec![Err(down)]);
        assert_eq!(pool.depth.load(Ordering::Relaxed), 1);
    }
}
