//! Passwords: argon2id hashing and verification (on the compute pool, never on a ring), and the
//! verified-credential cache that makes a repeated correct AUTH cost one SHA-256 instead of an
//! argon2id run. Also the limits on failed AUTH attempts, and the delayer that answers a slowed
//! failure late without holding a ring or a pool worker.
//!
//! The cache key is SHA-256 over (user, password, stored hash). It never holds a password, and a
//! changed password changes the stored hash, so old entries simply stop matching.

use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use sha2::{Digest, Sha256};

/// Hashes a password with argon2id and a random salt, as a PHC string.
pub fn hash_password(password: &[u8]) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .expect("argon2id hashing with default parameters cannot fail")
        .to_string()
}

/// Verifies a password against a PHC string; a malformed stored hash verifies nothing.
pub fn verify_password(password: &[u8], phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A random password for the first `admin` user: 24 characters from a URL-safe alphabet.
pub fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// How long one argon2id verification takes here, lately: an unknown or disabled user's
/// WRONGPASS waits this long on the [`Delayer`], so that its timing looks like a real check's
/// without the CPU of one. Measured once when made, then moved by every real verification
/// (an exponential average, an eighth per sample), so it follows the machine's load.
pub struct VerifyTime {
    nanos: AtomicU64,
}

impl VerifyTime {
    /// Times one hashing of an empty password (tens of milliseconds, once at start-up): the
    /// same argon2id work as a verification, without a hash made first only to verify it.
    pub fn measure() -> VerifyTime {
        let started = Instant::now();
        let _ = hash_password(b"");
        VerifyTime {
            nanos: AtomicU64::new(Self::nanos(started.elapsed())),
        }
    }

    fn nanos(took: Duration) -> u64 {
        u64::try_from(took.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts one real verification that took `took`.
    pub fn record(&self, took: Duration) {
        let sample = Self::nanos(took);
        let _ = self
            .nanos
            .fetch_update(AtomicOrdering::Relaxed, AtomicOrdering::Relaxed, |old| {
                Some(old - old / 8 + sample / 8)
            });
    }

    /// What a verification takes now.
    pub fn typical(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(AtomicOrdering::Relaxed))
    }
}

/// The result of one argon2id verification, shared by everyone who asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password matches.
    Valid,
    /// It does not.
    Invalid,
}

/// Called with the verdict of a verification this caller joined.
pub type Waiter = Box<dyn FnOnce(Verdict) + Send>;

/// Whether a caller must run the verification itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// Nobody was verifying this triple: the caller runs argon2id, then calls `finish`.
    Leader,
    /// Someone already is: the caller's waiter gets their verdict.
    Follower,
}

/// Remembers credentials that verified, so repeats skip argon2id, and coalesces concurrent
/// verifications of the same credentials into one (a reconnect storm of one user costs one
/// argon2id run, not one per connection). Bounded: when full it is cleared, which costs a few
/// extra verifications and never correctness.
pub struct VerifiedCache {
    entries: Mutex<HashSet<[u8; 32]>>,
    in_flight: Mutex<HashMap<[u8; 32], Vec<Waiter>>>,
    capacity: usize,
}

impl VerifiedCache {
    /// A cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache {
            entries: Mutex::new(HashSet::new()),
            in_flight: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn key(user: &str, password: &[u8], phc: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update((password.len() as u64).to_le_bytes());
        h.update(password);
        h.update(phc.as_bytes());
        h.finalize().into()
    }

    /// True if this exact (user, password, stored hash) verified before.
    pub fn contains(&self, user: &str, password: &[u8], phc: &str) -> bool {
        let key = Self::key(user, password, phc);
        self.entries.lock().expect("cache lock").contains(&key)
    }

    /// Records a successful verification.
    pub fn insert(&self, user: &str, password: &[u8], phc: &str) {
        let key = Self::key(user, password, phc);
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key);
    }

    /// Joins the verification of (user, password, stored hash): `waiter` gets the verdict once
    /// it is known. The first caller is the `Leader` and must verify and call [`Self::finish`].
    pub fn join(&self, user: &str, password: &[u8], phc: &str, waiter: Waiter) -> Joined {
        let key = Self::key(user, password, phc);
        let mut in_flight = self.in_flight.lock().expect("cache lock");
        match in_flight.get_mut(&key) {
            Some(waiters) => {
                waiters.push(waiter);
                Joined::Follower
            }
            None => {
                in_flight.insert(key, vec![waiter]);
                Joined::Leader
            }
        }
    }

    /// Ends a verification started by a `Leader`: remembers a valid one, and hands the verdict
    /// to every waiter that joined it.
    pub fn finish(&self, user: &str, password: &[u8], phc: &str, verdict: Verdict) {
        if verdict == Verdict::Valid {
            self.insert(user, password, phc);
        }
        let key = Self::key(user, password, phc);
        let waiters = self
            .in_flight
            .lock()
            .expect("cache lock")
            .remove(&key)
            .unwrap_or_default();
        for waiter in waiters {
            waiter(verdict);
        }
    }

    /// Most entries held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-minute failure counts under keyed hashes, so an entry costs the same whatever the user
/// name's length and a name chosen by an attacker cannot aim at another's counter. Bounded: when
/// full, windows that have ended are dropped first, and if every tracked key is still in its
/// window, a new key is not tracked.
struct Windows {
    capacity: usize,
    counts: Mutex<HashMap<u64, (u64, u32)>>,
}

impl Windows {
    fn new(capacity: usize) -> Windows {
        Windows {
            capacity: capacity.max(1),
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: u64, minute: u64) -> u32 {
        let counts = self.counts.lock().expect("limiter lock");
        match counts.get(&key) {
            Some(&(m, n)) if m == minute => n,
            _ => 0,
        }
    }

    /// Counts one more; returns the count in this minute (0 when the key could not be tracked).
    fn bump(&self, key: u64, minute: u64) -> u32 {
        let mut counts = self.counts.lock().expect("limiter lock");
        if !counts.contains_key(&key) && counts.len() >= self.capacity {
            counts.retain(|_, (m, _)| *m == minute);
            if counts.len() >= self.capacity {
                return 0;
            }
        }
        let entry = counts.entry(key).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }

    fn len(&self) -> usize {
        self.counts.lock().expect("limiter lock").len()
    }
}

/// What one recorded AUTH failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failure {
    /// The (address, user) pair is past its allowance: answer this failure late.
    pub slow: bool,
    /// This failure put the account under attack (the moment to log it once).
    pub attack_began: bool,
}

/// Failed AUTH attempts per minute, counted per (source address, user) and per user, across
/// connections. A pair past its allowance has its failures answered late; a user past its
/// allowance is *under attack*, and AUTH for it is refused unchecked unless the credentials
/// verified before. Nothing is keyed by address alone, so one client's stale password at a NAT
/// or load balancer costs its neighbours nothing.
pub struct FailureLimiter {
    pair_per_minute: u32,
    user_per_minute: u32,
    keys: RandomState,
    pairs: Windows,
    users: Windows,
}

impl FailureLimiter {
    /// `pair_per_minute` failures per (address, user) before they are slowed, `user_per_minute`
    /// per user before the account is under attack (0: no limit), tracking at most `capacity`
    /// of each.
    pub fn new(pair_per_minute: u32, user_per_minute: u32, capacity: usize) -> FailureLimiter {
        FailureLimiter {
            pair_per_minute,
            user_per_minute,
            keys: RandomState::new(),
            pairs: Windows::new(capacity),
            users: Windows::new(capacity),
        }
    }

    fn user_key(&self, user: &str) -> u64 {
        self.keys.hash_one(user)
    }

    fn pair_key(&self, addr: IpAddr, user: &str) -> u64 {
        self.keys.hash_one((addr, user))
    }

    /// True if `user` had a failure in the current minute.
    pub fn failed_lately(&self, user: &str, minute: u64) -> bool {
        self.users.get(self.user_key(user), minute) > 0
    }

    /// True if `user` used up its failures in the current minute.
    pub fn under_attack(&self, user: &str, minute: u64) -> bool {
        self.user_per_minute != 0
            && self.users.get(self.user_key(user), minute) >= self.user_per_minute
    }

    /// Counts a failure of `user` from `addr` (if known).
    pub fn record_failure(&self, addr: Option<IpAddr>, user: &str, minute: u64) -> Failure {
        let mut failure = Failure::default();
        if self.user_per_minute != 0 {
            failure.attack_began =
                self.users.bump(self.user_key(user), minute) == self.user_per_minute;
        }
        if let (Some(addr), true) = (addr, self.pair_per_minute != 0) {
            failure.slow =
                self.pairs.bump(self.pair_key(addr, user), minute) > self.pair_per_minute;
        }
        failure
    }

    /// (address, user) pairs and users tracked now.
    pub fn tracked(&self) -> usize {
        self.pairs.len() + self.users.len()
    }
}

/// One verification, waiting for an auth pool worker.
pub type Verification = Box<dyn FnOnce() + Send>;

/// The verifications waiting for the auth pool, in two lanes, so that a login nobody is
/// guessing at is not queued behind guesses. A user with a failure in the current minute, or
/// with a verification already waiting, goes to the *suspect* lane; any other to the *clean*
/// one, which is always served first. Guesses at an account reach the clean lane at most once
/// per user and minute (the first one's failure makes the rest suspect), so a correct password
/// of a user nobody guesses at waits behind at most one guess per user under attack. The pool
/// keeps its own FIFO queue and bound: each verification submits one pool job, which runs
/// whichever verification is first in the lanes when it starts.
#[derive(Default)]
pub struct AuthLanes {
    lanes: Mutex<Lanes>,
}

#[derive(Default)]
struct Lanes {
    clean: VecDeque<(String, Verification)>,
    suspect: VecDeque<(String, Verification)>,
    /// Verifications waiting, per user (bounded by the pool's queue).
    waiting: HashMap<String, u32>,
}

impl AuthLanes {
    /// Queues `verification` for `user` (`suspect` if it failed lately), when `submit` gets a
    /// pool job in to run it ([`Self::run_next`]); false when the pool is full. `submit` runs
    /// under the lanes' lock, so the pool job cannot start before its verification is queued.
    pub fn submit(
        &self,
        user: &str,
        suspect: bool,
        verification: Verification,
        submit: impl FnOnce() -> bool,
    ) -> bool {
        let mut lanes = self.lanes.lock().expect("auth lanes lock");
        if !submit() {
            return false;
        }
        let suspect = suspect || lanes.waiting.contains_key(user);
        *lanes.waiting.entry(user.to_string()).or_default() += 1;
        let lane = if suspect {
            &mut lanes.suspect
        } else {
            &mut lanes.clean
        };
        lane.push_back((user.to_string(), verification));
        true
    }

    /// Runs the first waiting verification, clean lane first (a pool job).
    pub fn run_next(&self) {
        let next = {
            let mut lanes = self.lanes.lock().expect("auth lanes lock");
            let next = match lanes.clean.pop_front() {
                Some(next) => Some(next),
                None => lanes.suspect.pop_front(),
            };
            if let Some((user, _)) = &next {
                if let Some(waiting) = lanes.waiting.get_mut(user) {
                    *waiting -= 1;
                    if *waiting == 0 {
                        lanes.waiting.remove(user);
                    }
                }
            }
            next
        };
        if let Some((_, verification)) = next {
            verification();
        }
    }
}

/// Runs closures after a delay on one thread of its own, so that a slowed reply holds neither a
/// ring nor a pool worker. Each pending closure is one session's AUTH reply, and a session has
/// at most one AUTH in flight, so what it holds is bounded by `--max-sessions`.
#[derive(Default)]
pub struct Delayer {
    queue: Arc<(Mutex<BinaryHeap<Delayed>>, Condvar)>,
    started: OnceLock<()>,
    next: AtomicU64,
}

struct Delayed {
    due: Instant,
    seq: u64,
    run: Box<dyn FnOnce() + Send>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    // Reversed: BinaryHeap is a max-heap and the earliest must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

impl Delayer {
    /// Runs `run` once `delay` has passed (at once for a zero delay, on the caller's thread).
    pub fn after(&self, delay: Duration, run: Box<dyn FnOnce() + Send>) {
        if delay.is_zero() {
            return run();
        }
        self.started.get_or_init(|| {
            let queue = self.queue.clone();
            std::thread::Builder::new()
                .name("auth-delay".into())
                .spawn(move || Self::serve(&queue))
                .expect("spawning the auth-delay thread");
        });
        let seq = self.next.fetch_add(1, AtomicOrdering::Relaxed);
        let (heap, wake) = &*self.queue;
        heap.lock().expect("delayer lock").push(Delayed {
            due: Instant::now() + delay,
            seq,
            run,
        });
        wake.notify_one();
    }

    fn serve(queue: &(Mutex<BinaryHeap<Delayed>>, Condvar)) {
        let (heap, wake) = queue;
        let mut pending = heap.lock().expect("delayer lock");
        loop {
            let now = Instant::now();
            let next = pending.peek().map(|d| d.due);
            match next {
                Some(due) if due <= now => {
                    let item = pending.pop().expect("peeked");
                    drop(pending);
                    (item.run)();
                    pending = heap.lock().expect("delayer lock");
                }
                Some(due) => {
                    pending = wake
                        .wait_timeout(pending, due - now)
                        .expect("delayer lock")
                        .0;
                }
                None => pending = wake.wait(pending).expect("delayer lock"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_a_pair_and_put_only_that_user_under_attack() {
        let limiter = FailureLimiter::new(2, 5, 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(!limiter.record_failure(Some(ip), "bob", 5).slow);
        assert!(!limiter.record_failure(Some(ip), "bob", 5).slow);
        assert!(
            limiter.record_failure(Some(ip), "bob", 5).slow,
            "the third failure of the pair is past the allowance"
        );
        assert!(!limiter.record_failure(Some(ip), "carol", 5).slow);
        assert!(!limiter.record_failure(Some(other), "bob", 5).slow);
        assert!(!limiter.under_attack("bob", 5));
        let fifth = limiter.record_failure(None, "bob", 5);
        assert!(fifth.attack_began && !fifth.slow);
        assert!(limiter.under_attack("bob", 5));
        assert!(!limiter.under_attack("carol", 5));
        assert!(
            !limiter.under_attack("bob", 6),
            "a new minute starts afresh"
        );
        assert!(!limiter.record_failure(Some(ip), "bob", 6).slow);
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let limiter = FailureLimiter::new(2, 2, 100);
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            limiter.record_failure(Some(ip), &i.to_string(), 1);
        }
        assert!(limiter.tracked() <= 200);
        // Ended windows make room for new keys.
        limiter.record_failure(Some("192.0.2.1".parse().unwrap()), "x", 2);
        assert_eq!(limiter.tracked(), 2);
    }

    #[test]
    fn clean_logins_run_before_guesses_and_each_user_waits_its_turn() {
        let lanes = AuthLanes::default();
        let (tx, rx) = std::sync::mpsc::channel();
        for (user, suspect) in [
            ("bob", true),    // failed lately
            ("carol", false), // the first for carol
            ("carol", false), // carol already waiting: suspect
            ("dave", false),
        ] {
            let tx = tx.clone();
            let verification: Verification = Box::new(move || tx.send(user).unwrap());
            assert!(lanes.submit(user, suspect, verification, || true));
        }
        assert!(!lanes.submit("erin", false, Box::new(|| {}), || false));
        for _ in 0..5 {
            lanes.run_next(); // the fifth finds nothing: erin's pool job was refused
        }
        let order: Vec<&str> = rx.try_iter().collect();
        assert_eq!(order, ["carol", "dave", "bob", "carol"]);
    }

    #[test]
    fn delayed_closures_run_in_due_order_after_their_delay() {
        let delayer = Delayer::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let started = Instant::now();
        for (name, ms) in [("late", 200u64), ("early", 50), ("now", 0)] {
            let tx = tx.clone();
            delayer.after(
                Duration::from_millis(ms),
                Box::new(move || tx.send((name, started.elapsed())).unwrap()),
            );
        }
        let got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            ["now", "early", "late"]
        );
        assert!(got[2].1 >= Duration::from_millis(200));
    }

    #[test]
    fn verify_time_starts_measured_and_follows_samples() {
        let time = VerifyTime::measure();
        assert!(time.typical() > Duration::ZERO);
        for _ in 0..100 {
            time.record(Duration::from_millis(40));
        }
        let typical = time.typical().as_secs_f64();
        assert!((0.039..=0.041).contains(&typical), "{typical}");
    }

    #[test]
    fn hash_then_verify() {
        let phc = hash_password(b"secret");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password(b"secret", &phc));
        assert!(!verify_password(b"Secret", &phc));
        assert!(!verify_password(b"secret", "not a hash"));
    }

    #[test]
    fn cache_matches_only_the_same_triple() {
        let cache = VerifiedCache::new(2);
        cache.insert("alice", b"pw", "$h1");
        assert!(cache.contains("alice", b"pw", "$h1"));
        assert!(!cache.contains("alice", b"pw", "$h2"));
        assert!(!cache.contains("alice", b"px", "$h1"));
        assert!(!cache.contains("bob", b"pw", "$h1"));
        cache.insert("b", b"1", "x");
        cache.insert("c", b"1", "x"); // over capacity: cleared, then inserted
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn concurrent_verifications_of_one_triple_are_coalesced() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let cache = VerifiedCache::new(10);
        let got = Arc::new(AtomicUsize::new(0));
        let waiter = |got: &Arc<AtomicUsize>| -> Waiter {
            let got = got.clone();
            Box::new(move |v| {
                assert_eq!(v, Verdict::Valid);
                got.fetch_add(1, Ordering::SeqCst);
            })
        };
        assert_eq!(cache.join("a", b"pw", "$h", waiter(&got)), Joined::Leader);
        assert_eq!(cache.join("a", b"pw", "$h", waiter(&got)), Joined::Follower);
        assert_eq!(cache.join("a", b"pw", "$h", waiter(&got)), Joined::Follower);
        assert_eq!(
            cache.join("a", b"other", "$h", Box::new(|_| {})),
            Joined::Leader,
            "another password is another verification"
        );
        cache.finish("a", b"pw", "$h", Verdict::Valid);
        assert_eq!(got.load(Ordering::SeqCst), 3);
        assert!(cache.contains("a", b"pw", "$h"));
        assert_eq!(
            cache.join("a", b"pw", "$h", Box::new(|_| {})),
            Joined::Leader
        );
    }

    #[test]
    fn random_passwords_differ() {
        let a = random_password();
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_password());
    }
}
