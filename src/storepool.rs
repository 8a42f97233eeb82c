//! The store pool: store commands run here on blocking workers, one store connection each, so a
//! slow query or a store outage never blocks a ring. The queue is bounded; when it is full the
//! command gets `-BUSY` at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::pool::{Busy, PoolStats};
use crate::store::{Backend, Conn, StoreError};

/// A store job: it gets the worker's connection, or the reason there is none right now.
pub type StoreJob = Box<dyn FnOnce(Result<&mut dyn Conn, StoreError>) + Send + 'static>;

/// Store counters beyond the pool's.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Calls that failed with `Unavailable` (or found no connection).
    pub unavailable: AtomicU64,
    /// Other store errors.
    pub errors: AtomicU64,
    /// Connections (re)established by workers after a failure.
    pub reconnects: AtomicU64,
}

/// The pool handle; cheap to clone.
#[derive(Clone)]
pub struct StorePool {
    sender: Sender<StoreJob>,
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
    pub fn start(backend: Arc<dyn Backend>, threads: usize, capacity: usize) -> StorePool {
        let threads = threads.max(1);
        let (sender, receiver) = bounded::<StoreJob>(capacity.max(1));
        let pool = Arc::new(PoolStats::default());
        let store = Arc::new(StoreStats::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|index| {
                let receiver = receiver.clone();
                let backend = backend.clone();
                let pool = pool.clone();
                let store = store.clone();
                let shutdown = shutdown.clone();
                std::thread::Builder::new()
                    .name(format!("store-{index}"))
                    .spawn(move || {
                        run_worker(index, &*backend, &receiver, &pool, &store, &shutdown)
                    })
                    .expect("spawn store worker")
            })
            .collect();
        StorePool {
            sender,
            backend,
            pool,
            store,
            threads: Arc::new(Mutex::new(handles)),
            worker_count: threads,
            capacity: capacity.max(1),
            shutdown,
        }
    }

    /// Queues a job, or refuses it when the queue is full.
    pub fn submit(&self, job: StoreJob) -> Result<(), Busy> {
        if self.shutdown.load(Ordering::Acquire) {
            return Err(Busy);
        }
        self.pool.depth.fetch_add(1, Ordering::AcqRel);
        match self.sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pool.depth.fetch_sub(1, Ordering::AcqRel);
                self.pool.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Busy)
            }
        }
    }

    /// Records the outcome of a store call (jobs call this so INFO can show errors).
    pub fn note_error(&self, error: &StoreError) {
        match error {
            StoreError::Unavailable(_) => self.store.unavailable.fetch_add(1, Ordering::Relaxed),
            StoreError::Other(_) => self.store.errors.fetch_add(1, Ordering::Relaxed),
            StoreError::NotInteger | StoreError::Overflow => 0,
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

    /// Worker count.
    pub fn threads(&self) -> usize {
        self.worker_count
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

fn run_worker(
    index: usize,
    backend: &dyn Backend,
    receiver: &Receiver<StoreJob>,
    pool: &PoolStats,
    store: &StoreStats,
    shutdown: &AtomicBool,
) {
    let mut conn: Option<Box<dyn Conn>> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut last_error = StoreError::Unavailable("not connected yet".into());
    let mut failed_before = false;
    loop {
        // Queued jobs are finished before a shutdown takes effect.
        let job = match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(_) if shutdown.load(Ordering::Acquire) => return,
            Err(_) => continue,
        };
        // A worker without a connection retries at most every 250 ms, so during an outage jobs
        // fail fast instead of each waiting for a connect timeout.
        if conn.is_none() && last_attempt.is_none_or(|t| t.elapsed() >= Duration::from_millis(250))
        {
            last_attempt = Some(Instant::now());
            match backend.connect() {
                Ok(c) => {
                    if failed_before {
                        store.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(worker = index, "store connection re-established");
                    }
                    tracing::debug!(worker = index, "store connection established");
                    conn = Some(c);
                }
                Err(e) => {
                    if !failed_before {
                        tracing::warn!(worker = index, error = %e, "store connect failed; retrying every 250 ms");
                    }
                    failed_before = true;
                    last_error = e;
                }
            }
        }
        let started = Instant::now();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match conn.as_mut() {
                Some(c) => job(Ok(&mut **c)),
                None => job(Err(last_error.clone())),
            }));
        if result.is_err() {
            tracing::error!(
                worker = index,
                "a store job panicked; dropping its connection"
            );
            conn = None;
        }
        pool.busy_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        pool.completed.fetch_add(1, Ordering::Relaxed);
        pool.depth.fetch_sub(1, Ordering::AcqRel);
    }
}
