//! Passwords: argon2id hashing and verification (on the compute pool, never on a ring), and the
//! verified-credential cache that makes a repeated correct AUTH cost one SHA-256 instead of an
//! argon2id run.
//!
//! The cache key is SHA-256 over (user, password, stored hash). It never holds a password, and a
//! changed password changes the stored hash, so old entries simply stop matching.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;

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

/// The result of one argon2id verification, shared by everyone who asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password matches.
    Valid,
    /// It does not.
    Invalid,
    /// The compute pool was full; nobody verified.
    Busy,
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

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Limits failed AUTH attempts per source address per minute, across connections. Memory is
/// bounded: at most `capacity` addresses are tracked; when full, windows that have ended are
/// dropped first, and if every tracked address is still in its window, a new address is not
/// tracked (it is limited only per connection, by `--max-auth-failures`).
pub struct FailureLimiter {
    per_minute: u32,
    capacity: usize,
    windows: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl FailureLimiter {
    /// `per_minute` failures allowed per address (0: no limit), tracking at most `capacity`.
    pub fn new(per_minute: u32, capacity: usize) -> FailureLimiter {
        FailureLimiter {
            per_minute,
            capacity: capacity.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// True if `addr` used up its failures in the current minute.
    pub fn blocked(&self, addr: IpAddr, minute: u64) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let windows = self.windows.lock().expect("limiter lock");
        matches!(windows.get(&addr), Some(&(m, n)) if m == minute && n >= self.per_minute)
    }

    /// Counts a failure; returns true when this failure used up the address's allowance (the
    /// moment to log it once).
    pub fn record_failure(&self, addr: IpAddr, minute: u64) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let mut windows = self.windows.lock().expect("limiter lock");
        if !windows.contains_key(&addr) && windows.len() >= self.capacity {
            windows.retain(|_, (m, _)| *m == minute);
            if windows.len() >= self.capacity {
                return false;
            }
        }
        let entry = windows.entry(addr).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 += 1;
        entry.1 == self.per_minute
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.windows.lock().expect("limiter lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_the_allowance_and_resets_each_minute() {
        let limiter = FailureLimiter::new(3, 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!limiter.record_failure(ip, 5));
        assert!(!limiter.record_failure(ip, 5));
        assert!(!limiter.blocked(ip, 5));
        assert!(
            limiter.record_failure(ip, 5),
            "the third failure uses up the allowance"
        );
        assert!(limiter.blocked(ip, 5));
        assert!(!limiter.blocked("10.0.0.2".parse().unwrap(), 5));
        assert!(!limiter.blocked(ip, 6), "a new minute starts afresh");
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let limiter = FailureLimiter::new(2, 100);
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            limiter.record_failure(ip, 1);
        }
        assert!(limiter.tracked() <= 100);
        // Ended windows make room for new addresses.
        limiter.record_failure("192.0.2.1".parse().unwrap(), 2);
        assert_eq!(limiter.tracked(), 1);
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
