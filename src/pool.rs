//! The compute pool: CPU-bound jobs (argon2id verification, `HASH`) run here, never on a ring.
//!
//! Work stealing with crossbeam-deque: rings push jobs into a global injector; each worker takes
//! a batch from it into its own deque and, when both are empty, steals from a sibling. The pool
//! is bounded: [`ComputePool::submit`] refuses a job when `capacity` jobs are already queued
//! (jobs a worker took no longer count), and the caller answers `-BUSY` at once instead of
//! queueing without limit.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Stealer, Worker};

/// One unit of work. It reports its own result (to a ring's mailbox).
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Counters of a pool, for INFO and metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Jobs queued now (taken jobs no longer count).
    pub depth: AtomicUsize,
    /// Jobs running now.
    pub running: AtomicUsize,
    /// Jobs finished.
    pub completed: AtomicU64,
    /// Jobs refused because the pool was full.
    pub rejected: AtomicU64,
    /// Total time jobs spent running, in microseconds.
    pub busy_us: AtomicU64,
}

struct Shared {
    injector: Injector<Job>,
    stealers: Vec<Stealer<Job>>,
    capacity: usize,
    stats: PoolStats,
    shutdown: AtomicBool,
    sleepers: Mutex<usize>,
    wake: Condvar,
}

/// The pool handle; cheap to clone.
#[derive(Clone)]
pub struct ComputePool {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Returned when the pool is full; the caller answers `-BUSY`.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

impl ComputePool {
    /// Starts `threads` workers named `NAME-i` at `priority`, accepting at most `capacity` jobs
    /// in the pool at once.
    pub fn start(
        name: &str,
        threads: usize,
        capacity: usize,
        priority: ringport_ring::ThreadPriority,
    ) -> ComputePool {
        let threads = threads.max(1);
        let workers: Vec<Worker<Job>> = (0..threads).map(|_| Worker::new_fifo()).collect();
        let shared = Arc::new(Shared {
            injector: Injector::new(),
            stealers: workers.iter().map(Worker::stealer).collect(),
            capacity: capacity.max(1),
            stats: PoolStats::default(),
            shutdown: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        });
        let handles = workers
            .into_iter()
            .enumerate()
            .map(|(index, local)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{index}"))
                    .spawn(move || {
                        lower_priority(priority);
                        run_worker(index, local, &shared)
                    })
                    .expect("spawn compute worker")
            })
            .collect();
        ComputePool {
            shared,
            threads: Arc::new(Mutex::new(handles)),
        }
    }

    /// Queues a job, or refuses it when the pool is at capacity.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        let shared = &self.shared;
        let depth = shared.stats.depth.fetch_add(1, Ordering::AcqRel);
        if depth >= shared.capacity || shared.shutdown.load(Ordering::Acquire) {
            shared.stats.depth.fetch_sub(1, Ordering::AcqRel);
            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Busy);
        }
        shared.injector.push(job);
        let sleepers = shared.sleepers.lock().expect("pool lock");
        if *sleepers > 0 {
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// Counters.
    pub fn stats(&self) -> &PoolStats {
        &self.shared.stats
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.shared.stealers.len()
    }

    /// The most jobs the pool holds at once.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Finishes queued jobs, then stops the workers.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        let handles = std::mem::take(&mut *self.threads.lock().expect("pool lock"));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

fn find_job(index: usize, local: &Worker<Job>, shared: &Shared) -> Option<Job> {
    if let Some(job) = local.pop() {
        return Some(job);
    }
    loop {
        let mut retry = false;
        match shared.injector.steal_batch_and_pop(local) {
            crossbeam_deque::Steal::Success(job) => return Some(job),
            crossbeam_deque::Steal::Retry => retry = true,
            crossbeam_deque::Steal::Empty => {}
        }
        for (i, stealer) in shared.stealers.iter().enumerate() {
            if i == index {
                continue;
            }
            match stealer.steal() {
                crossbeam_deque::Steal::Success(job) => return Some(job),
                crossbeam_deque::Steal::Retry => retry = true,
                crossbeam_deque::Steal::Empty => {}
            }
        }
        if !retry {
            return None;
        }
    }
}

fn run_worker(index: usize, local: Worker<Job>, shared: &Shared) {
    loop {
        if let Some(job) = find_job(index, &local, shared) {
            // The slot frees when a worker takes the job, not after it ran: a job's last act
            // is sending its reply, and a client that answers at once must not find the slot
            // still taken.
            shared.stats.depth.fetch_sub(1, Ordering::AcqRel);
            shared.stats.running.fetch_add(1, Ordering::AcqRel);
            let started = Instant::now();
            // A panicking job must not take the worker down with it: the panic is logged here,
            // and its dropped Replier answers the session `-ERR internal error`.
            if contain(job).is_err() {
                tracing::error!(worker = index, "a compute job panicked");
            }
            shared
                .stats
                .busy_us
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            shared.stats.completed.fetch_add(1, Ordering::Relaxed);
            shared.stats.running.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let mut sleepers = shared.sleepers.lock().expect("pool lock");
        // Re-check under the lock: a submit that pushed before we took it has either been
        // seen here or will see us counted as a sleeper and notify.
        if !shared.injector.is_empty() || shared.shutdown.load(Ordering::Acquire) {
            continue;
        }
        *sleepers += 1;
        let (mut guard, _) = shared
            .wake
            .wait_timeout(sleepers, Duration::from_millis(100))
            .expect("pool lock");
        *guard -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_every_job() {
        let pool = ComputePool::start("compute", 3, 10_000, ringport_ring::ThreadPriority::Normal);
        let (tx, rx) = mpsc::channel();
        for i in 0..1000 {
            let tx = tx.clone();
            pool.submit(Box::new(move || tx.send(i).unwrap())).unwrap();
        }
        let mut got: Vec<i32> = (0..1000).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        pool.shutdown();
        assert_eq!(pool.stats().completed.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn refuses_beyond_capacity() {
        let pool = ComputePool::start("compute", 1, 2, ringport_ring::ThreadPriority::Normal);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let blocker = |rx: Arc<Mutex<mpsc::Receiver<()>>>| -> Job {
            Box::new(move || {
                let _ = rx.lock().unwrap().recv();
            })
        };
        // The one worker takes the first job and blocks in it; its slot is free again.
        pool.submit(blocker(release_rx.clone())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.stats().depth.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Two more fill the queue; the next is refused.
        pool.submit(blocker(release_rx.clone())).unwrap();
        pool.submit(blocker(release_rx.clone())).unwrap();
        assert_eq!(pool.submit(Box::new(|| {})), Err(Busy));
        assert_eq!(pool.stats().rejected.load(Ordering::Relaxed), 1);
        for _ in 0..3 {
            release_tx.send(()).unwrap();
        }
        pool.shutdown();
    }

    #[test]
    fn survives_a_panicking_job() {
        let pool = ComputePool::start("compute", 1, 10, ringport_ring::ThreadPriority::Normal);
        pool.submit(Box::new(|| panic!("boom"))).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.submit(Box::new(move || tx.send(7).unwrap())).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
        pool.shutdown();
    }
}

/// Gives the calling pool thread `priority`; a refusal (a seccomp profile, an exotic kernel) is
/// logged and the thread runs as the rings do.
pub fn lower_priority(priority: ringport_ring::ThreadPriority) {
    if let Err(error) = ringport_ring::set_current_thread_priority(priority) {
        let thread = std::thread::current();
        tracing::warn!(thread = thread.name().unwrap_or("?"), ?priority, %error, "cannot lower a pool thread's CPU priority");
    }
}

thread_local! {
    /// Set while this thread runs code whose panic is caught and answered ([`contain`]).
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching its panic: for a job or a command handler, whose panic answers its one
/// command `-ERR internal error` while the thread goes on. Anywhere else a panic ends the
/// process ([`abort_on_uncontained_panics`]).
pub fn contain<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    let outer = CONTAINED.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    result
}

/// Makes every panic outside [`contain`] end the process, after the usual message: a ring, a
/// committer or a pool's own code that panicked would leave the process half alive and its
/// clients hanging; systemd restarts it instead (docs/deploy.md). Jobs and handlers keep
/// running after theirs, so one bad command cannot take the server down.
pub fn abort_on_uncontained_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if !CONTAINED.with(|c| c.get()) {
            tracing::error!("a panic outside any command; ending the process");
            std::process::abort();
        }
    }));
}
