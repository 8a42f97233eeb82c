//! The string and key commands that read and then write (SET's options, expiry, APPEND,
//! RENAME, ...). Each is written once, against [`Txn`], and runs as one store transaction on
//! either store ([`transact`]), so what it read is what it changes. Replies and error texts are
//! Redis 7's, byte for byte (`tests/redis_diff.rs` compares them with a real redis-server).
//!
//! GET, plain SET, MGET, MSET, DEL, EXISTS and INCR keep their own store calls (folded across
//! sessions, one statement each): a transaction would cost them round trips for nothing.

use crate::resp::parse_i64;
use crate::store::{now_ms, transact, Entry, StoreError, Txn};

use super::api::{Argv, Reply, StoreCtx, NOT_INTEGER};
use super::long_double::LongDouble;

pub(super) type Outcome = Result<Reply, StoreError>;

/// Runs `body` as one transaction on the session user's keys.
pub(super) fn in_txn(ctx: &mut StoreCtx<'_>, body: impl FnMut(&mut dyn Txn) -> Outcome) -> Outcome {
    let owner = ctx.user();
    transact(ctx.kv(), owner, body)
}

fn not_integer() -> Reply {
    Reply::Error(NOT_INTEGER.as_bytes().to_vec())
}

pub(super) fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

fn invalid_expire_time(command: &str) -> Reply {
    Reply::err(format_args!("invalid expire time in '{command}' command"))
}

fn value_or_null(entry: Option<Entry>) -> Reply {
    entry.map_or(Reply::Null, |entry| Reply::Bulk(entry.value))
}

/// An expiry argument: EX (seconds from now), PX (ms from now), EXAT (a Unix time in seconds)
/// or PXAT (in ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExpireKind {
    seconds: bool,
    absolute: bool,
}

impl ExpireKind {
    const EX: ExpireKind = ExpireKind {
        seconds: true,
        absolute: false,
    };
    const PX: ExpireKind = ExpireKind {
        seconds: false,
        absolute: false,
    };

    fn named(option: &[u8]) -> Option<ExpireKind> {
        let (seconds, absolute) = match option {
            b"ex" => (true, false),
            b"px" => (false, false),
            b"exat" => (true, true),
            b"pxat" => (false, true),
            _ => return None,
        };
        Some(ExpireKind { seconds, absolute })
    }

    /// The expiry time `text` names at `now`, in ms since the epoch, checked as Redis's
    /// `getExpireMillisecondsOrReply`: a positive integer whose time fits an i64.
    fn at(self, text: &[u8], now: i64, command: &str) -> Result<i64, Reply> {
        let given = parse_i64(text).ok_or_else(not_integer)?;
        if given <= 0 || (self.seconds && given > i64::MAX / 1000) {
            return Err(invalid_expire_time(command));
        }
        let ms = if self.seconds { given * 1000 } else { given };
        let at = if self.absolute {
            Some(ms)
        } else {
            ms.checked_add(now)
        };
        at.filter(|at| *at > 0)
            .ok_or_else(|| invalid_expire_time(command))
    }
}

/// SET's and GETEX's options, parsed as Redis's `parseExtendedStringArgumentsOrReply` does:
/// an option may repeat (the last expiry wins) but never contradict another (NX with XX, two
/// kinds of expiry, KEEPTTL or PERSIST with an expiry); anything else is a syntax error.
#[derive(Debug, Default)]
struct StringOptions<'a> {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    persist: bool,
    expire: Option<(ExpireKind, &'a [u8])>,
}

impl<'a> StringOptions<'a> {
    /// `args[from..]` of SET (`for_set`) or GETEX.
    fn parse(args: &'a [Vec<u8>], from: usize, for_set: bool) -> Result<Self, Reply> {
        let mut options = StringOptions::default();
        let mut i = from;
        while i < args.len() {
            let option = args[i].to_ascii_lowercase();
            let next = args.get(i + 1).map(Vec::as_slice);
            let expire_kind = options.expire.map(|(kind, _)| kind);
            match (option.as_slice(), ExpireKind::named(&option), next) {
                (b"nx", ..) if for_set && !options.xx => options.nx = true,
                (b"xx", ..) if for_set && !options.nx => options.xx = true,
                (b"get", ..) if for_set => options.get = true,
                (b"keepttl", ..) if for_set && expire_kind.is_none() => options.keepttl = true,
                (b"persist", ..) if !for_set && expire_kind.is_none() => options.persist = true,
                (_, Some(kind), Some(value))
                    if !options.keepttl
                        && !options.persist
                        && expire_kind.is_none_or(|previous| previous == kind) =>
                {
                    options.expire = Some((kind, value));
                    i += 1;
                }
                _ => return Err(syntax_error()),
            }
            i += 1;
        }
        Ok(options)
    }

    /// The expiry time asked for, if any, at `now`.
    fn expire_at(&self, now: i64, command: &str) -> Result<Option<i64>, Reply> {
        self.expire
            .map(|(kind, text)| kind.at(text, now, command))
            .transpose()
    }
}

/// GET as a store handler: what EXEC runs for a queued GET (outside a transaction GETs travel
/// typed, folded across sessions).
pub fn get(ctx: &mut StoreCtx<'_>) -> Outcome {
    let (owner, request) = (ctx.user(), ctx.request());
    Ok(ctx
        .kv()
        .get(owner, request.arg(1))?
        .map_or(Reply::Null, Reply::Bulk))
}

/// SET as a store handler, with or without options (see [`get`]).
pub fn set(ctx: &mut StoreCtx<'_>) -> Outcome {
    let (owner, request) = (ctx.user(), ctx.request());
    if request.argc() > 3 {
        return set_with_options(ctx);
    }
    ctx.kv().set(owner, request.arg(1), request.arg(2))?;
    Ok(Reply::ok())
}

/// MGET as a store handler (see [`get`]).
pub fn mget(ctx: &mut StoreCtx<'_>) -> Outcome {
    let (owner, request) = (ctx.user(), ctx.request());
    let keys: Vec<&[u8]> = request.args()[1..].iter().map(Vec::as_slice).collect();
    let values = ctx.kv().mget(owner, &keys)?;
    Ok(Reply::Array(
        values
            .into_iter()
            .map(|value| value.map_or(Reply::Null, Reply::Bulk))
            .collect(),
    ))
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]` with at least one option
/// (a plain SET takes the folded fast path).
pub fn set_with_options(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    let options = match StringOptions::parse(args, 3, true) {
        Ok(options) => options,
        Err(reply) => return Ok(reply),
    };
    // Redis checks the expiry before it looks at the key.
    if let Err(reply) = options.expire_at(now_ms(), "set") {
        return Ok(reply);
    }
    let (key, value) = (&args[1], &args[2]);
    in_txn(ctx, |txn| {
        let expire_at = match options.expire_at(txn.now_ms(), "set") {
            Ok(at) => at,
            Err(reply) => return Ok(reply),
        };
        let old = txn.get(key)?;
        if (options.nx && old.is_some()) || (options.xx && old.is_none()) {
            return Ok(if options.get {
                value_or_null(old)
            } else {
                Reply::Null
            });
        }
        let expiry = if options.keepttl {
            old.as_ref().and_then(|entry| entry.expires_at_ms)
        } else {
            expire_at
        };
        txn.put(key, value, expiry)?;
        Ok(if options.get {
            value_or_null(old)
        } else {
            Reply::ok()
        })
    })
}

/// SETEX (`seconds`) and PSETEX: `key time value`.
fn set_expiring(ctx: &mut StoreCtx<'_>, kind: ExpireKind, command: &str) -> Outcome {
    let args = ctx.request().args();
    let (key, time, value) = (&args[1], &args[2], &args[3]);
    in_txn(ctx, |txn| match kind.at(time, txn.now_ms(), command) {
        Ok(at) => {
            txn.put(key, value, Some(at))?;
            Ok(Reply::ok())
        }
        Err(reply) => Ok(reply),
    })
}

pub fn setex(ctx: &mut StoreCtx<'_>) -> Outcome {
    set_expiring(ctx, ExpireKind::EX, "setex")
}

pub fn psetex(ctx: &mut StoreCtx<'_>) -> Outcome {
    set_expiring(ctx, ExpireKind::PX, "psetex")
}

pub fn setnx(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    in_txn(ctx, |txn| {
        if txn.get(&args[1])?.is_some() {
            return Ok(Reply::Integer(0));
        }
        txn.put(&args[1], &args[2], None)?;
        Ok(Reply::Integer(1))
    })
}

/// `GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]`.
pub fn getex(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    let options = match StringOptions::parse(args, 2, false) {
        Ok(options) => options,
        Err(reply) => return Ok(reply),
    };
    let key = &args[1];
    in_txn(ctx, |txn| {
        // A missing key answers null before its expiry argument is looked at, as in Redis.
        let Some(entry) = txn.get(key)? else {
            return Ok(Reply::Null);
        };
        match options.expire_at(txn.now_ms(), "getex") {
            Err(reply) => return Ok(reply),
            Ok(Some(at)) if at <= txn.now_ms() => {
                txn.delete(key)?;
            }
            Ok(Some(at)) => {
                txn.set_expiry(key, Some(at))?;
            }
            Ok(None) if options.persist && entry.expires_at_ms.is_some() => {
                txn.set_expiry(key, None)?;
            }
            Ok(None) => {}
        }
        Ok(Reply::Bulk(entry.value))
    })
}

pub fn getdel(ctx: &mut StoreCtx<'_>) -> Outcome {
    let key = &ctx.request().args()[1];
    in_txn(ctx, |txn| {
        let entry = txn.get(key)?;
        if entry.is_some() {
            txn.delete(key)?;
        }
        Ok(value_or_null(entry))
    })
}

/// EXPIRE's conditions.
#[derive(Debug, Default)]
struct ExpireIf {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

impl ExpireIf {
    /// As Redis's `parseExtendedExpireArgumentsOrReply`.
    fn parse(args: &[Vec<u8>]) -> Result<ExpireIf, Reply> {
        let mut conditions = ExpireIf::default();
        for arg in args {
            match arg.to_ascii_lowercase().as_slice() {
                b"nx" => conditions.nx = true,
                b"xx" => conditions.xx = true,
                b"gt" => conditions.gt = true,
                b"lt" => conditions.lt = true,
                _ => {
                    return Err(Reply::err(format_args!(
                        "Unsupported option {}",
                        String::from_utf8_lossy(arg)
                    )))
                }
            }
        }
        if conditions.nx && (conditions.xx || conditions.gt || conditions.lt) {
            return Err(Reply::err(
                "NX and XX, GT or LT options at the same time are not compatible",
            ));
        }
        if conditions.gt && conditions.lt {
            return Err(Reply::err(
                "GT and LT options at the same time are not compatible",
            ));
        }
        Ok(conditions)
    }

    /// Whether an expiry at `at` may replace `current` (`None`: the key never expires, which
    /// GT takes as infinitely far and LT as beyond any time).
    fn allows(&self, current: Option<i64>, at: i64) -> bool {
        !((self.nx && current.is_some())
            || (self.xx && current.is_none())
            || (self.gt && current.is_none_or(|current| at <= current))
            || (self.lt && current.is_some_and(|current| at >= current)))
    }
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT: `key time [NX|XX|GT|LT]...`, as Redis's
/// `expireGenericCommand` (negative and past times are allowed: they delete the key).
fn expire_generic(ctx: &mut StoreCtx<'_>, kind: ExpireKind, command: &str) -> Outcome {
    let args = ctx.request().args();
    let conditions = match ExpireIf::parse(&args[3..]) {
        Ok(conditions) => conditions,
        Err(reply) => return Ok(reply),
    };
    let Some(given) = parse_i64(&args[2]) else {
        return Ok(not_integer());
    };
    let when = if kind.seconds {
        match given.checked_mul(1000) {
            Some(ms) => ms,
            None => return Ok(invalid_expire_time(command)),
        }
    } else {
        given
    };
    let key = &args[1];
    in_txn(ctx, |txn| {
        let now = txn.now_ms();
        let base = if kind.absolute { 0 } else { now };
        let Some(at) = when.checked_add(base) else {
            return Ok(invalid_expire_time(command));
        };
        let Some(entry) = txn.get(key)? else {
            return Ok(Reply::Integer(0));
        };
        if !conditions.allows(entry.expires_at_ms, at) {
            return Ok(Reply::Integer(0));
        }
        if at <= now {
            txn.delete(key)?;
        } else {
            txn.set_expiry(key, Some(at))?;
        }
        Ok(Reply::Integer(1))
    })
}

pub fn expire(ctx: &mut StoreCtx<'_>) -> Outcome {
    expire_generic(ctx, ExpireKind::EX, "expire")
}

pub fn pexpire(ctx: &mut StoreCtx<'_>) -> Outcome {
    expire_generic(ctx, ExpireKind::PX, "pexpire")
}

pub fn expireat(ctx: &mut StoreCtx<'_>) -> Outcome {
    let kind = ExpireKind {
        seconds: true,
        absolute: true,
    };
    expire_generic(ctx, kind, "expireat")
}

pub fn pexpireat(ctx: &mut StoreCtx<'_>) -> Outcome {
    let kind = ExpireKind {
        seconds: false,
        absolute: true,
    };
    expire_generic(ctx, kind, "pexpireat")
}

/// TTL (`in_ms` false: seconds, rounded) and PTTL: -2 for a missing key, -1 for one that never
/// expires.
fn time_to_live(ctx: &mut StoreCtx<'_>, in_ms: bool) -> Outcome {
    let key = &ctx.request().args()[1];
    in_txn(ctx, |txn| {
        let ttl = match txn.get(key)? {
            None => -2,
            Some(Entry {
                expires_at_ms: None,
                ..
            }) => -1,
            Some(Entry {
                expires_at_ms: Some(at),
                ..
            }) => {
                let left = at.saturating_sub(txn.now_ms()).max(0);
                if in_ms {
                    left
                } else {
                    (left + 500) / 1000
                }
            }
        };
        Ok(Reply::Integer(ttl))
    })
}

pub fn ttl(ctx: &mut StoreCtx<'_>) -> Outcome {
    time_to_live(ctx, false)
}

pub fn pttl(ctx: &mut StoreCtx<'_>) -> Outcome {
    time_to_live(ctx, true)
}

pub fn persist(ctx: &mut StoreCtx<'_>) -> Outcome {
    let key = &ctx.request().args()[1];
    in_txn(ctx, |txn| {
        let expires = txn.get(key)?.and_then(|entry| entry.expires_at_ms);
        if expires.is_none() {
            return Ok(Reply::Integer(0));
        }
        txn.set_expiry(key, None)?;
        Ok(Reply::Integer(1))
    })
}

/// Redis's refusal to grow a string of `len` bytes by `more` past `max` (`--proto-max-bulk-len`).
fn too_long(len: usize, more: u64, max: u64) -> Option<Reply> {
    (len as u64)
        .saturating_add(more)
        .gt(&max)
        .then(|| Reply::err("string exceeds maximum allowed size (proto-max-bulk-len)"))
}

pub fn append(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    let max = ctx.request().max_string_len();
    let (key, tail) = (&args[1], &args[2]);
    in_txn(ctx, |txn| {
        let (mut value, expiry) = match txn.get(key)? {
            Some(entry) => {
                if let Some(refusal) = too_long(entry.value.len(), tail.len() as u64, max) {
                    return Ok(refusal);
                }
                (entry.value, entry.expires_at_ms)
            }
            None => (Vec::new(), None),
        };
        value.extend_from_slice(tail);
        txn.put(key, &value, expiry)?;
        Ok(Reply::Integer(value.len() as i64))
    })
}

pub fn strlen(ctx: &mut StoreCtx<'_>) -> Outcome {
    let key = &ctx.request().args()[1];
    in_txn(ctx, |txn| {
        let len = txn.get(key)?.map_or(0, |entry| entry.value.len());
        Ok(Reply::Integer(len as i64))
    })
}

/// The bytes GETRANGE answers for `start..=end` (negative counts from the end), as Redis's
/// `getrangeCommand`.
fn range_of(value: &[u8], start: i64, end: i64) -> &[u8] {
    let len = value.len() as i64;
    if (start < 0 && end < 0 && start > end) || len == 0 {
        return &[];
    }
    let start = if start < 0 { len + start } else { start }.max(0);
    let end = if end < 0 { len + end } else { end }.clamp(0, len - 1);
    if start > end {
        return &[];
    }
    &value[start as usize..=end as usize]
}

pub fn getrange(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    let (Some(start), Some(end)) = (parse_i64(&args[2]), parse_i64(&args[3])) else {
        return Ok(not_integer());
    };
    let key = &args[1];
    in_txn(ctx, |txn| {
        let entry = txn.get(key)?;
        let value = entry.as_ref().map_or(&[][..], |entry| &entry.value);
        Ok(Reply::bulk(range_of(value, start, end)))
    })
}

pub fn setrange(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    let Some(offset) = parse_i64(&args[2]) else {
        return Ok(not_integer());
    };
    if offset < 0 {
        return Ok(Reply::err("offset is out of range"));
    }
    let (key, patch) = (&args[1], &args[3]);
    let max = ctx.request().max_string_len();
    in_txn(ctx, |txn| {
        let entry = txn.get(key)?;
        if patch.is_empty() {
            let len = entry.map_or(0, |entry| entry.value.len());
            return Ok(Reply::Integer(len as i64));
        }
        if let Some(refusal) = too_long(patch.len(), offset as u64, max) {
            return Ok(refusal);
        }
        let (mut value, expiry) = entry.map_or((Vec::new(), None), |entry| {
            (entry.value, entry.expires_at_ms)
        });
        let (start, end) = (offset as usize, offset as usize + patch.len());
        if value.len() < end {
            value.resize(end, 0);
        }
        value[start..end].copy_from_slice(patch);
        txn.put(key, &value, expiry)?;
        Ok(Reply::Integer(value.len() as i64))
    })
}

pub fn msetnx(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    if args.len() % 2 == 0 {
        return Ok(Reply::err("wrong number of arguments for 'msetnx' command"));
    }
    in_txn(ctx, |txn| {
        for pair in args[1..].chunks(2) {
            if txn.get(&pair[0])?.is_some() {
                return Ok(Reply::Integer(0));
            }
        }
        for pair in args[1..].chunks(2) {
            txn.put(&pair[0], &pair[1], None)?;
        }
        Ok(Reply::Integer(1))
    })
}

pub fn type_of(ctx: &mut StoreCtx<'_>) -> Outcome {
    let key = &ctx.request().args()[1];
    in_txn(ctx, |txn| {
        Ok(Reply::status(if txn.get(key)?.is_some() {
            "string"
        } else {
            "none"
        }))
    })
}

/// RENAME (`only_if_new` false) and RENAMENX, as Redis's `renameGenericCommand`: the expiry
/// moves with the value.
fn rename_generic(ctx: &mut StoreCtx<'_>, only_if_new: bool) -> Outcome {
    let args = ctx.request().args();
    let (from, to) = (&args[1], &args[2]);
    let done = if only_if_new {
        Reply::Integer(1)
    } else {
        Reply::ok()
    };
    let unchanged = if only_if_new {
        Reply::Integer(0)
    } else {
        Reply::ok()
    };
    in_txn(ctx, |txn| {
        let Some(entry) = txn.get(from)? else {
            return Ok(Reply::err("no such key"));
        };
        if from == to {
            return Ok(unchanged.clone());
        }
        if only_if_new && txn.get(to)?.is_some() {
            return Ok(Reply::Integer(0));
        }
        txn.put(to, &entry.value, entry.expires_at_ms)?;
        txn.delete(from)?;
        Ok(done.clone())
    })
}

pub fn rename(ctx: &mut StoreCtx<'_>) -> Outcome {
    rename_generic(ctx, false)
}

pub fn renamenx(ctx: &mut StoreCtx<'_>) -> Outcome {
    rename_generic(ctx, true)
}

/// INCRBYFLOAT in `long double`, as Redis computes and prints it; a live key keeps its
/// expiry.
pub fn incrbyfloat(ctx: &mut StoreCtx<'_>) -> Outcome {
    let args = ctx.request().args();
    let not_a_float = || Reply::err("value is not a valid float");
    let Some(increment) = LongDouble::parse(&args[2]) else {
        return Ok(not_a_float());
    };
    let key = &args[1];
    in_txn(ctx, |txn| {
        let entry = txn.get(key)?;
        let current = match &entry {
            Some(entry) => match LongDouble::parse(&entry.value) {
                Some(current) => current,
                None => return Ok(not_a_float()),
            },
            None => LongDouble::parse(b"0").expect("0 is a float"),
        };
        let sum = match current.add(&increment) {
            Some(sum) if sum.is_finite() => sum,
            _ => return Ok(Reply::err("increment would produce NaN or Infinity")),
        };
        let text = sum.to_human();
        txn.put(
            key,
            text.as_bytes(),
            entry.and_then(|entry| entry.expires_at_ms),
        )?;
        Ok(Reply::bulk(text))
    })
}

/// DECRBY: Redis refuses to negate i64::MIN before it looks at the key.
pub fn decrby(ctx: &mut StoreCtx<'_>) -> Outcome {
    let request = ctx.request();
    let Some(decrement) = parse_i64(request.arg(2)) else {
        return Ok(not_integer());
    };
    if decrement == i64::MIN {
        return Ok(Reply::err("decrement would overflow"));
    }
    let owner = ctx.user();
    Ok(Reply::Integer(ctx.kv().incr_by(
        owner,
        request.arg(1),
        -decrement,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|word| word.as_bytes().to_vec()).collect()
    }

    #[test]
    fn getrange_follows_redis_indexes() {
        let value = b"Hello World";
        for (start, end, want) in [
            (0, 4, &b"Hello"[..]),
            (-3, -1, b"rld"),
            (0, -1, b"Hello World"),
            (10, 100, b"d"),
            (-100, 2, b"Hel"),
            (5, 3, b""),
            (-1, -5, b""),
            (20, 30, b""),
            (i64::MIN, i64::MAX, b"Hello World"),
        ] {
            assert_eq!(range_of(value, start, end), want, "{start} {end}");
        }
        assert_eq!(range_of(b"", 0, -1), b"");
    }

    #[test]
    fn string_options_refuse_contradictions_but_allow_repeats() {
        for ok in [
            &["nx", "get", "ex", "10"][..],
            &["EX", "1", "ex", "2"],
            &["nx", "nx"],
            &["keepttl", "xx", "get"],
        ] {
            assert!(StringOptions::parse(&args(ok), 0, true).is_ok(), "{ok:?}");
        }
        for bad in [
            &["nx", "xx"][..],
            &["ex", "1", "px", "1"],
            &["keepttl", "ex", "1"],
            &["ex"],
            &["persist"],
            &["bogus"],
        ] {
            assert_eq!(
                StringOptions::parse(&args(bad), 0, true).unwrap_err(),
                syntax_error(),
                "{bad:?}"
            );
        }
        assert!(StringOptions::parse(&args(&["persist"]), 0, false).is_ok());
        assert!(StringOptions::parse(&args(&["get"]), 0, false).is_err());
    }

    #[test]
    fn expiry_times_are_checked_as_redis_does() {
        let now = 1_000;
        assert_eq!(ExpireKind::EX.at(b"2", now, "set"), Ok(3_000));
        assert_eq!(ExpireKind::PX.at(b"2", now, "set"), Ok(1_002));
        assert_eq!(
            ExpireKind::EX.at(b"0", now, "set"),
            Err(invalid_expire_time("set"))
        );
        assert_eq!(
            ExpireKind::PX.at(b"-1", now, "set"),
            Err(invalid_expire_time("set"))
        );
        assert_eq!(ExpireKind::PX.at(b"x", now, "set"), Err(not_integer()));
        assert_eq!(
            ExpireKind::EX.at(b"9223372036854775", now, "setex"),
            Err(invalid_expire_time("setex"))
        );
        assert_eq!(
            ExpireKind::PX.at(b"9223372036854775807", now, "set"),
            Err(invalid_expire_time("set"))
        );
    }
}
