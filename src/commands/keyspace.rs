//! The commands over a user's whole keyspace: SCAN, KEYS, DBSIZE, FLUSHDB, RANDOMKEY. Each user
//! is one Redis database: these see and change the session user's keys only.
//!
//! SCAN's cursor is the last key the previous call examined, so a key present from the first
//! call to the last is returned exactly once whatever is written meanwhile (Redis promises
//! "at least once"). redis-py turns a cursor into an integer, so the key travels as decimal
//! digits: a `1`, then each byte as three digits (`ab` is `1097098`); `0` starts and ends.

use crate::resp::parse_i64;

use super::api::{Reply, StoreCtx, NOT_INTEGER};
use super::glob::glob_match;
use super::strings::{in_txn, syntax_error, Outcome};

/// SCAN's COUNT when none is given, as Redis.
const SCAN_COUNT_DEFAULT: i64 = 10;

/// The cursor that resumes after `key`.
fn encode_cursor(key: &[u8]) -> Vec<u8> {
    let mut cursor = Vec::with_capacity(1 + 3 * key.len());
    cursor.push(b'1');
    for byte in key {
        cursor.extend_from_slice(format!("{byte:03}").as_bytes());
    }
    cursor
}

/// `Some(None)`: start; `Some(Some(key))`: resume after `key`; `None`: not a cursor of ours.
fn decode_cursor(cursor: &[u8]) -> Option<Option<Vec<u8>>> {
    if cursor == b"0" {
        return Some(None);
    }
    let digits = cursor.strip_prefix(b"1")?;
    if digits.len() % 3 != 0 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits
        .chunks(3)
        .map(|triple| std::str::from_utf8(triple).ok()?.parse::<u8>().ok())
        .collect::<Option<Vec<u8>>>()
        .map(Some)
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`: COUNT keys examined per call (a
/// page may hold fewer, or none, after MATCH), as Redis's `scanGenericCommand` parses them.
pub fn scan(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    let Some(after) = decode_cursor(&args[1]) else {
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
            Some(last) if keys.len() >= limit => encode_cursor(last),
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
    fn cursors_round_trip_and_refuse_what_they_cannot_be() {
        for key in [&b"a"[..], b"", b"\0\xff", b"key:123"] {
            let cursor = encode_cursor(key);
            assert!(cursor.iter().all(u8::is_ascii_digit));
            assert_eq!(decode_cursor(&cursor), Some(Some(key.to_vec())));
        }
        assert_eq!(decode_cursor(b"0"), Some(None));
        for bad in [&b""[..], b"2", b"10", b"1256", b"1abc", b"-1", b"00"] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }
}
