//! The commands over a user's whole keyspace: SCAN, KEYS, DBSIZE, FLUSHDB, RANDOMKEY. Each user
//! is one Redis database: these see and change the session user's keys only.
//!
//! SCAN resumes after the last key the previous call examined, so a key present from the first
//! call to the last is returned exactly once whatever is written meanwhile (Redis promises "at
//! least once"). That key stays here, in [`Cursors`]; the client holds a number for it below
//! 2^53, because clients keep cursors as numbers: node-redis as a JavaScript number (exact only
//! below 2^53), redis-rs and go-redis as a u64.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use crate::resp::parse_i64;

use super::api::{Reply, StoreCtx, NOT_INTEGER};
use super::glob::glob_match;
use super::strings::{in_txn, syntax_error, Outcome};

/// SCAN's COUNT when none is given, as Redis.
const SCAN_COUNT_DEFAULT: i64 = 10;

/// A user's newest cursors kept; an older one is refused (`ERR invalid cursor`). A scan uses
/// only its latest, so this bounds the memory of many scans at once, not the length of one.
const CURSORS_PER_USER: usize = 1024;
/// And the bytes of their keys, since a key can be long.
const CURSOR_BYTES_PER_USER: usize = 4 << 20;
/// Cursor numbers stay below this: a JavaScript number holds every integer up to it exactly.
const CURSOR_LIMIT: u64 = 1 << 53;

/// The resume points SCAN handed out, per user, in memory: a cursor lives as long as the process
/// (a client that reconnects to another instance, or after a restart, gets `ERR invalid cursor`
/// and starts again). Numbers start at a random point, so a cursor from before a restart is
/// unlikely to name one issued after it.
struct Cursors {
    next: u64,
    users: HashMap<String, UserCursors>,
}

#[derive(Default)]
struct UserCursors {
    /// By number, so the oldest go first.
    keys: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

static CURSORS: LazyLock<Mutex<Cursors>> = LazyLock::new(|| {
    Mutex::new(Cursors {
        next: (rand::random::<u64>() % (CURSOR_LIMIT / 2)).max(1),
        users: HashMap::new(),
    })
});

impl Cursors {
    /// A new cursor for `user` that resumes after `key`.
    fn issue(&mut self, user: &str, key: Vec<u8>) -> u64 {
        let id = self.next;
        self.next = if id + 1 >= CURSOR_LIMIT { 1 } else { id + 1 };
        let cursors = self.users.entry(user.to_string()).or_default();
        cursors.bytes += key.len();
        cursors.keys.insert(id, key);
        while cursors.keys.len() > CURSORS_PER_USER
            || (cursors.bytes > CURSOR_BYTES_PER_USER && cursors.keys.len() > 1)
        {
            if let Some((_, old)) = cursors.keys.pop_first() {
                cursors.bytes -= old.len();
            }
        }
        id
    }

    /// The key `user`'s cursor `id` resumes after, if it is theirs and still kept.
    fn resume(&self, user: &str, id: u64) -> Option<Vec<u8>> {
        self.users.get(user)?.keys.get(&id).cloned()
    }
}

fn cursors() -> std::sync::MutexGuard<'static, Cursors> {
    CURSORS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `Some(None)`: start; `Some(Some(key))`: resume after `key`; `None`: not a cursor this user
/// was given (or no longer kept), or not a number at all.
fn decode_cursor(user: &str, cursor: &[u8]) -> Option<Option<Vec<u8>>> {
    let id: u64 = std::str::from_utf8(cursor).ok()?.parse().ok()?;
    if id == 0 {
        return Some(None);
    }
    cursors().resume(user, id).map(Some)
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`: COUNT keys examined per call (a
/// page may hold fewer, or none, after MATCH), as Redis's `scanGenericCommand` parses them.
pub fn scan(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    let user = ctx.user();
    let Some(after) = decode_cursor(user, &args[1]) else {
        return Ok(Reply::err("invalid cursor"));
    };
    let (mut count, mut pattern, mut type_name) = (SCAN_COUNT_DEFAULT, None, None);
    let mut i = 2;
    while i < args.len() {
        let has_value = args.len() - i >= 2;
        match args[i].to_ascii_lowercase().as_slice() {
            b"count" if has_value => {
                count = match parse_i64(&args[i + 1]) {
                    Some(count) if count >= 1 => count,
                    Some(_) => return Ok(syntax_error()),
                    None => return Ok(Reply::Error(NOT_INTEGER.as_bytes().to_vec())),
                };
            }
            // A lone `*` matches everything, the empty key too: Redis skips matching for it.
            b"match" if has_value => {
                pattern = Some(&args[i + 1]).filter(|pattern| pattern.as_slice() != b"*");
            }
            b"type" if has_value => type_name = Some(&args[i + 1]),
            _ => return Ok(syntax_error()),
        }
        i += 2;
    }
    // Every key is a string: TYPE keeps all of them or none.
    let types_match = type_name.is_none_or(|name| name.eq_ignore_ascii_case(b"string"));
    let limit = usize::try_from(count).unwrap_or(usize::MAX);
    in_txn(ctx, |txn| {
        let keys = txn.scan(after.as_deref(), limit)?;
        let next = match keys.last() {
            Some(last) if keys.len() >= limit => {
                cursors().issue(user, last.clone()).to_string().into_bytes()
            }
            _ => b"0".to_vec(),
        };
        let page = keys
            .into_iter()
            .filter(|key| types_match && pattern.is_none_or(|pattern| glob_match(pattern, key)))
            .map(Reply::Bulk)
            .collect();
        Ok(Reply::Array(vec![Reply::Bulk(next), Reply::Array(page)]))
    })
}

pub fn keys(ctx: &mut StoreCtx<'_>) -> Outcome {
    let pattern = &ctx.request().args()[1];
    let everything = pattern.as_slice() == b"*";
    in_txn(ctx, |txn| {
        let keys = txn.scan(None, usize::MAX)?;
        Ok(Reply::Array(
            keys.into_iter()
                .filter(|key| everything || glob_match(pattern, key))
                .map(Reply::Bulk)
                .collect(),
        ))
    })
}

pub fn dbsize(ctx: &mut StoreCtx<'_>) -> Outcome {
    in_txn(ctx, |txn| {
        Ok(Reply::Integer(
            i64::try_from(txn.count()?).unwrap_or(i64::MAX),
        ))
    })
}

/// `FLUSHDB [ASYNC|SYNC]`: the user's keys only; both modes commit before the reply.
pub fn flushdb(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    let mode_ok = match args.len() {
        1 => true,
        2 => args[1].eq_ignore_ascii_case(b"sync") || args[1].eq_ignore_ascii_case(b"async"),
        _ => false,
    };
    if !mode_ok {
        return Ok(syntax_error());
    }
    in_txn(ctx, |txn| {
        txn.clear()?;
        Ok(Reply::ok())
    })
}

/// A key after a random point of the key space (the first key when none is after it): every
/// key can come out, though not all equally often.
pub fn randomkey(ctx: &mut StoreCtx<'_>) -> Outcome {
    let start: [u8; 8] = rand::random();
    in_txn(ctx, |txn| {
        let mut picked = txn.scan(Some(&start), 1)?;
        if picked.is_empty() {
            picked = txn.scan(None, 1)?;
        }
        Ok(picked.pop().map_or(Reply::Null, Reply::Bulk))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_numbers_below_2_pow_53_kept_per_user() {
        for key in [
            &b"a"[..],
            b"",
            b"\0\xff",
            b"a key much longer than six bytes",
        ] {
            let id = cursors().issue("alice", key.to_vec());
            assert!(id > 0 && id < CURSOR_LIMIT, "{id}");
            let text = id.to_string();
            assert_eq!(
                decode_cursor("alice", text.as_bytes()),
                Some(Some(key.to_vec()))
            );
            // Another user cannot resume it.
            assert_eq!(decode_cursor("bob", text.as_bytes()), None);
        }
        assert_eq!(decode_cursor("alice", b"0"), Some(None));
        for bad in [&b""[..], b"-1", b"1abc", b"1e5", b"18446744073709551616"] {
            assert_eq!(decode_cursor("alice", bad), None, "{bad:?}");
        }
        // The oldest are dropped past the bound; the newest stay.
        for i in 0..CURSORS_PER_USER {
            cursors().issue("carol", format!("key{i}").into_bytes());
        }
        let newest = cursors().issue("carol", b"last".to_vec());
        assert_eq!(
            decode_cursor("carol", newest.to_string().as_bytes()),
            Some(Some(b"last".to_vec()))
        );
        assert_eq!(cursors().users["carol"].keys.len(), CURSORS_PER_USER);
        let big = vec![b'k'; CURSOR_BYTES_PER_USER / 2 + 1];
        cursors().issue("dave", big.clone());
        let second = cursors().issue("dave", big);
        assert_eq!(cursors().users["dave"].keys.len(), 1);
        assert!(decode_cursor("dave", second.to_string().as_bytes()).is_some());
    }
}
