//! The user table, held in memory: AUTH reads a user's hash and `disabled` flag here, never from
//! the store, so a session can authenticate while the store is down.
//!
//! Filled at start-up from the store, then kept current by the store's backend
//! ([`crate::store::Backend::watch_users`]: LISTEN/NOTIFY on PostgreSQL, nothing to do on the
//! embedded store, whose users change only while the server is stopped). A change is seen here a
//! moment after its commit; a deleted or disabled user is refused from then on. While the
//! backend cannot watch (PostgreSQL down), the table stays as it was last seen: users known
//! before the outage keep authenticating, and a user deleted during it is refused only once the
//! backend is back and reads the table again (docs/security.md).
//!
//! Memory: the whole table, about 200 bytes per user plus the name (a name from `ringport user`
//! is at most 128 bytes); measured, 100,000 users with 13-byte names took 20 MiB.
//! Users are people and services, not sessions; a table of millions belongs in an identity
//! provider, not here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::store::{UserRecord, UserSink};

/// What AUTH needs of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// The argon2id hash, a PHC string.
    pub hash: Arc<str>,
    /// A disabled user cannot authenticate.
    pub disabled: bool,
    /// May manage users (ACL SETUSER ...).
    pub admin: bool,
}

impl From<UserRecord> for UserEntry {
    fn from(record: UserRecord) -> UserEntry {
        UserEntry {
            hash: Arc::from(record.hash),
            disabled: record.disabled,
            admin: record.admin,
        }
    }
}

/// Every user, by name. Read by AUTH jobs on the compute pool; written by the backend's watch
/// thread. A writer holds the lock only to insert, remove or swap in a table built beforehand.
#[derive(Default)]
pub struct UserDirectory {
    users: RwLock<HashMap<String, UserEntry>>,
}

impl UserDirectory {
    /// A table holding `users` (as read from the store at start-up).
    pub fn new(users: Vec<UserRecord>) -> UserDirectory {
        let directory = UserDirectory::default();
        directory.replace_all(users);
        directory
    }

    /// The user named `name`, as last seen.
    pub fn get(&self, name: &str) -> Option<UserEntry> {
        self.users
            .read()
            .expect("user table lock")
            .get(name)
            .cloned()
    }

    /// Every user held now, sorted by name (ACL LIST and USERS: a few, not millions).
    pub fn all(&self) -> Vec<(String, UserEntry)> {
        let mut all: Vec<(String, UserEntry)> = self
            .users
            .read()
            .expect("user table lock")
            .iter()
            .map(|(name, user)| (name.clone(), user.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Users held now.
    pub fn len(&self) -> usize {
        self.users.read().expect("user table lock").len()
    }

    /// True when no user is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl UserSink for UserDirectory {
    fn replace_all(&self, users: Vec<UserRecord>) {
        let table: HashMap<String, UserEntry> = users
            .into_iter()
            .map(|record| (record.name.clone(), UserEntry::from(record)))
            .collect();
        let previous = std::mem::replace(&mut *self.users.write().expect("user table lock"), table);
        // The old table is freed here, outside the lock.
        drop(previous);
    }

    fn update(&self, name: &str, user: Option<UserRecord>) {
        let entry = user.map(UserEntry::from);
        let mut users = self.users.write().expect("user table lock");
        match entry {
            Some(entry) => {
                users.insert(name.to_string(), entry);
            }
            None => {
                users.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, hash: &str, disabled: bool) -> UserRecord {
        UserRecord {
            name: name.into(),
            hash: hash.into(),
            disabled,
            admin: false,
        }
    }

    #[test]
    fn changes_replace_and_remove_single_users() {
        let directory = UserDirectory::new(vec![record("alice", "$h1", false)]);
        assert_eq!(directory.get("alice").unwrap().hash.as_ref(), "$h1");
        assert_eq!(directory.get("bob"), None);

        directory.update("bob", Some(record("bob", "$h2", false)));
        directory.update("alice", Some(record("alice", "$h3", true)));
        let alice = directory.get("alice").unwrap();
        assert_eq!((alice.hash.as_ref(), alice.disabled), ("$h3", true));
        assert_eq!(directory.len(), 2);

        directory.update("alice", None);
        assert_eq!(directory.get("alice"), None);
        directory.update("nobody", None);
        assert_eq!(directory.len(), 1);
    }

    #[test]
    fn a_full_read_replaces_everything() {
        let directory = UserDirectory::new(vec![record("alice", "$h1", false)]);
        directory.replace_all(vec![
            record("bob", "$h2", false),
            record("carol", "$h3", true),
        ]);
        assert_eq!(directory.get("alice"), None);
        assert!(directory.get("carol").unwrap().disabled);
        assert_eq!(directory.len(), 2);
    }
}
