//! Redis is the oracle (issue 17): the same commands go to a real redis-server and to ringport,
//! and the raw reply bytes must be identical, error texts and RESP3 types included. Every case
//! runs on both stores: `embedded::*` on redb in a temp dir, `postgres::*` on the throwaway
//! PostgreSQL cluster of this test binary (a schema per test).
//!
//! Each case starts its own redis-server and ringport server, so cases share no keys.

#[path = "common/pg.rs"]
mod pg;

mod common;

#[path = "common/oracle.rs"]
mod oracle;

use std::time::Duration;

use std::collections::BTreeSet;

use common::{RawConn, Reply, Server};
use oracle::{show_command, Diff, RedisServer};
use pg::PgCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Embedded,
    Postgres,
}

/// A redis-server and a ringport server on `store`.
fn servers(store: Store, label: &str) -> (RedisServer, Server) {
    servers_from(Server::builder(), store, label)
}

/// [`servers`], ringport's from `builder`.
fn servers_from(
    mut builder: common::ServerBuilder,
    store: Store,
    label: &str,
) -> (RedisServer, Server) {
    if store == Store::Postgres {
        // The cases share one cluster: keep each server's connections few.
        builder = builder
            .store(&PgCluster::shared().fresh_url(label))
            .flag("--store-threads", "2");
    }
    (RedisServer::start(), builder.start())
}

/// Each case once per store, as `embedded::case` and `postgres::case`.
macro_rules! diff_cases {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $case() { super::$case(super::Store::Embedded, stringify!($case)) } )*
        }
        mod postgres {
            $( #[test] fn $case() { super::$case(super::Store::Postgres, stringify!($case)) } )*
        }
    };
}

diff_cases!(
    get_set_del_exists,
    incr_and_incrby,
    mget_and_mset,
    wrong_arity,
    unknown_commands,
    binary_keys_and_values,
    resp3_replies,
    set_options,
    set_option_errors,
    short_ttls_expire,
    expire_family,
    expire_conditions,
    ttl_survives_what_redis_keeps,
    setex_setnx_getex_getdel,
    decr_and_decrby,
    append_strlen_getrange_setrange,
    append_and_setrange_stop_at_proto_max_bulk_len,
    msetnx_type_rename_unlink,
    new_commands_arity,
    resp3_nulls_of_the_new_commands,
    pttl_counts_milliseconds,
    incrbyfloat,
    keys_glob_patterns,
    scan_returns_every_key,
    scan_errors,
    dbsize_flushdb_randomkey,
    multi_exec_runs_the_queue,
    multi_queue_time_errors_abort,
    multi_run_time_errors_are_per_command,
    multi_misuse,
    watch_aborts_on_a_change,
    watch_then_unwatch_or_discard,
    watched_key_that_expires_aborts,
    resp3_transactions,
    client_list_and_kill_options,
    client_kill_naming_itself_answers_then_closes,
);

fn get_set_del_exists(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "GET k",
        "SET k v",
        "GET k",
        "SET k w",
        "GET k",
        "EXISTS k",
        "EXISTS k k nope k",
        "EXISTS nope",
        "SET empty ",
        "GET empty",
        "EXISTS empty",
        "DEL k k nope",
        "DEL k",
        "GET k",
        "DEL empty nope",
    ]);
}

fn incr_and_incrby(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "INCR n",
        "INCR n",
        "INCRBY n 40",
        "INCRBY n -50",
        "GET n",
        "INCRBY n x",
        "INCRBY n 1.5",
        "INCRBY n 9223372036854775808",
        "SET big 9223372036854775807",
        "INCR big",
        "INCRBY big -1",
        "SET small -9223372036854775808",
        "INCRBY small -1",
        "SET s hello",
        "INCR s",
        "SET lead 01",
        "INCR lead",
        "SET plus +1",
        "INCR plus",
        "SET space 1 ",
        "INCR space",
    ]);
}

fn mget_and_mset(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "MGET a b",
        "MSET a 1 b 2 a 3",
        "MGET a b c a",
        "MSET a",
        "MSET a 1 b",
        "MGET a",
    ]);
}

fn wrong_arity(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "GET",
        "GET a b",
        "SET a",
        "DEL",
        "EXISTS",
        "INCR",
        "INCR a b",
        "INCRBY a",
        "INCRBY a 1 2",
        "MGET",
        "MSET",
        "ECHO",
        "ECHO a b",
    ]);
}

fn unknown_commands(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&["NOSUCH", "NOSUCH a b c", "nosuch 'quoted' x"]);
    let long = "x".repeat(300);
    diff.same(&[b"NOSUCHCOMMAND", long.as_bytes(), b"a"]);
    diff.same(&[long.as_bytes()]);
    let many: Vec<&[u8]> = std::iter::once(&b"NOSUCH"[..])
        .chain((0..12).map(|_| &b"arg"[..]))
        .collect();
    diff.same(&many);
    // Redis prints names and arguments with C's %s: each ends at its first NUL.
    diff.same(&[b"GET\0", b"k"]);
    diff.same(&[b"NOSUCH", b"a\0b", b"\0", b"c"]);
    diff.same(&[b"COMMAND", b"NO\0SUCH"]);
}

fn binary_keys_and_values(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    let key: &[u8] = b"\0k\r\n\xff";
    let value: &[u8] = b"\xfe\0v\r\n";
    diff.same(&[b"SET", key, value]);
    diff.same(&[b"GET", key]);
    diff.same(&[b"MGET", key, b"\0"]);
    diff.same(&[b"EXISTS", key]);
    diff.same(&[b"DEL", key]);
    diff.same(&[b"GET", key]);
}

fn resp3_replies(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::resp3(&redis, &ringport);
    diff.all(&[
        "GET missing",
        "SET k v",
        "GET k",
        "MGET k missing",
        "INCR n",
        "EXISTS k n missing",
        "DEL k",
        "INCR k2 extra",
        "NOSUCH a",
    ]);
}

fn set_options(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SET k v1 NX",
        "SET k v2 NX",
        "GET k",
        "SET k v3 XX",
        "SET nope v XX",
        "EXISTS nope",
        "SET k v4 GET",
        "SET fresh v GET",
        "SET k v5 NX GET",
        "SET absent v XX GET",
        "SET k v6 nx nx",
        "SET k v7 EX 100 EX 200",
        "TTL k",
        "SET k v8 KEEPTTL",
        "TTL k",
        "SET k v9",
        "TTL k",
        "SET k v10 px 100000 xx get",
        "TTL k",
        "SET k v11 EXAT 99999999999",
        "TTL k",
        "SET k v12 PXAT 99999999999999",
        "TTL k",
        "SET k v13 PXAT 1",
        "GET k",
        "SET k v14 EXAT 1 GET",
        "EXISTS k",
    ]);
}

fn set_option_errors(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SET k v NX XX",
        "SET k v XX NX",
        "SET k v EX",
        "SET k v EX 10 PX 100",
        "SET k v KEEPTTL EX 10",
        "SET k v EX 10 KEEPTTL",
        "SET k v PERSIST",
        "SET k v BOGUS",
        "SET k v EX 0",
        "SET k v EX -1",
        "SET k v PX 0",
        "SET k v EXAT 0",
        "SET k v EX x",
        "SET k v EX 1.5",
        "SET k v EX 9223372036854775807",
        "SET k v EX 9223372036854775",
        "SET k v PX 9223372036854775807",
        "SET k v PXAT 9223372036854775807",
        "SET k v EX 99999999999999999999",
        "GET k",
        "SETEX k 0 v",
        "SETEX k x v",
        "PSETEX k -5 v",
        "SETEX k 9223372036854775807 v",
        "GETEX k EX 0",
        "GET k",
    ]);
}

fn short_ttls_expire(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SET a 1 PX 200",
        "PSETEX b 200 2",
        "SET c 3",
        "PEXPIRE c 200",
        "SET d 4 PX 200",
        "GET a",
        "MGET a b c d",
        "EXISTS a b c",
    ]);
    // Long enough past the 200 ms on both sides, whenever each side's SET ran.
    std::thread::sleep(Duration::from_millis(300));
    diff.all(&[
        "GET a",
        "MGET a b c d",
        "EXISTS a b c d",
        "TTL a",
        "PTTL b",
        "TYPE c",
        "STRLEN a",
        "DEL b",
        "INCR d",
        "TTL d",
        "APPEND a x",
        "GET a",
        "SET c v NX",
        "RENAME b x",
        "GETDEL a",
        "PERSIST c",
    ]);
}

fn expire_family(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "EXPIRE missing 100",
        "TTL missing",
        "PTTL missing",
        "SET k v",
        "TTL k",
        "PTTL k",
        "PERSIST k",
        "EXPIRE k 100",
        "TTL k",
        "PERSIST k",
        "TTL k",
        "PEXPIRE k 100000",
        "TTL k",
        "EXPIREAT k 99999999999",
        "TTL k",
        "PEXPIREAT k 99999999999999",
        "TTL k",
        "EXPIRE k x",
        "EXPIRE k 9223372036854775807",
        "EXPIRE k -9223372036854775808",
        "PEXPIRE k 9223372036854775807",
        "EXPIREAT k 9223372036854775807",
        "PEXPIREAT k 9223372036854775807",
        "TTL k",
        "EXPIRE k 0",
        "EXISTS k",
        "SET k v",
        "EXPIRE k -10",
        "GET k",
        "SET k v",
        "EXPIREAT k 1",
        "GET k",
        "SET k v",
        "PEXPIREAT k 1000",
        "GET k",
    ]);
}

fn expire_conditions(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SET k v",
        "EXPIRE k 100 XX",
        "EXPIRE k 100 GT",
        "EXPIRE k 100 LT",
        "TTL k",
        "PERSIST k",
        "EXPIRE k 100 NX",
        "EXPIRE k 200 NX",
        "TTL k",
        "EXPIRE k 50 GT",
        "EXPIRE k 300 GT",
        "TTL k",
        "EXPIRE k 400 LT",
        "EXPIRE k 150 lt",
        "TTL k",
        "EXPIRE k 160 XX",
        "TTL k",
        "EXPIRE k 10 NX XX",
        "EXPIRE k 10 NX GT",
        "EXPIRE k 10 NX LT",
        "EXPIRE k 10 GT LT",
        "EXPIRE k 10 XX GT",
        "TTL k",
        "EXPIRE k 10 FOO",
        "PEXPIRE k 10 xx bar",
        "EXPIRE missing 10 BOGUS",
        "EXPIRE missing x BOGUS",
        "EXPIRE missing 10 NX",
    ]);
}

fn ttl_survives_what_redis_keeps(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SET n 1 EX 100",
        "INCR n",
        "TTL n",
        "INCRBY n 5",
        "DECR n",
        "TTL n",
        "APPEND n 0",
        "TTL n",
        "SETRANGE n 0 9",
        "TTL n",
        "GET n",
        "RENAME n m",
        "TTL m",
        "TTL n",
        "MSET m 1",
        "TTL m",
        "SET m 1 EX 100",
        "SET m 2 GET",
        "TTL m",
        "SET m 1 EX 100",
        "GETEX m PERSIST",
        "TTL m",
        "GETEX m EX 100",
        "TTL m",
        "GETEX m",
        "TTL m",
        "GETEX m PX 100000",
        "TTL m",
        "GETEX m EXAT 99999999999",
        "TTL m",
        "GETEX m PXAT 1",
        "EXISTS m",
    ]);
}

fn setex_setnx_getex_getdel(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SETEX k 100 v",
        "TTL k",
        "GET k",
        "PSETEX k 100000 w",
        "TTL k",
        "GET k",
        "SETNX k x",
        "SETNX other x",
        "GET other",
        "GETEX missing",
        "GETEX missing EX 0",
        "GETEX missing BOGUS",
        "GETEX k BOGUS",
        "GETEX k EX",
        "GETEX k EX 10 PX 10",
        "GETEX k PERSIST EX 10",
        "GETEX k GET",
        "GETEX k KEEPTTL",
        "GETEX k NX",
        "GETEX k EX x",
        "GETEX k PERSIST PERSIST",
        "GETDEL k",
        "GETDEL k",
        "EXISTS k",
    ]);
}

fn decr_and_decrby(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "DECR n",
        "DECRBY n 10",
        "DECRBY n -100",
        "DECRBY n x",
        "DECRBY n -9223372036854775808",
        "DECRBY n 9223372036854775807",
        "DECRBY n 9223372036854775807",
        "GET n",
        "SET s abc",
        "DECR s",
        "DECRBY s 1",
        "SET min -9223372036854775808",
        "DECR min",
    ]);
}

fn append_strlen_getrange_setrange(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "STRLEN k",
        "APPEND k Hello",
        "APPEND k World",
        "STRLEN k",
        "GETRANGE k 0 4",
        "GETRANGE k -3 -1",
        "GETRANGE k 0 -1",
        "GETRANGE k 5 3",
        "GETRANGE k -1 -5",
        "GETRANGE k 100 200",
        "GETRANGE k -100 2",
        "GETRANGE k -9223372036854775808 9223372036854775807",
        "GETRANGE k x 1",
        "GETRANGE k 1 x",
        "GETRANGE missing 0 -1",
        "SETRANGE k 5 _",
        "GET k",
        "SETRANGE k 12 far",
        "GET k",
        "STRLEN k",
        "SETRANGE k -1 x",
        "SETRANGE k x y",
        "SETRANGE k 1 ",
        "SETRANGE missing 3 ",
        "EXISTS missing",
        "SETRANGE missing 3 abc",
        "GET missing",
        "SETRANGE k 536870912 x",
        "SETRANGE k 536870911 xy",
        "SETRANGE k 9223372036854775807 x",
        "GET k",
    ]);
    diff.same(&[b"SET", b"bin", b"\x00\xff"]);
    diff.same(&[b"GETRANGE", b"bin", b"1", b"1"]);
}

/// APPEND and SETRANGE grow a string no further than proto-max-bulk-len (1 MiB on both servers
/// here), at its edge and one byte past it, on a new key and an existing one.
fn append_and_setrange_stop_at_proto_max_bulk_len(store: Store, label: &str) {
    const LIMIT: &str = "1048576";
    let redis = RedisServer::start_with(&["--proto-max-bulk-len", LIMIT]);
    let mut builder = Server::builder().flag("--proto-max-bulk-len", LIMIT);
    if store == Store::Postgres {
        builder = builder
            .store(&PgCluster::shared().fresh_url(label))
            .flag("--store-threads", "2");
    }
    let ringport = builder.start();
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SETRANGE new 1048576 x",
        "SETRANGE new 1048570 abcdefg",
        "EXISTS new",
        "SETRANGE new 1048569 abcdefg",
        "STRLEN new",
        "APPEND new y",
        "SETRANGE new 1048576 x",
        "SETRANGE new 1048575 z",
        "SETRANGE new 9223372036854775807 x",
        "STRLEN new",
        "GETRANGE new -2 -1",
        "SETRANGE half 524288 x",
        "STRLEN half",
    ]);
    diff.same(&[b"APPEND", b"half", b""]);
    let tail = vec![b'y'; 524_287];
    diff.same(&[b"APPEND", b"half", &tail]);
    diff.same(&[b"APPEND", b"half", b"y"]);
    diff.same(&[b"STRLEN", b"half"]);
}

fn msetnx_type_rename_unlink(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "MSETNX a 1 b 2",
        "MGET a b",
        "MSETNX b 3 c 4",
        "MGET a b c",
        "MSETNX c 1 c 2",
        "GET c",
        "MSETNX d",
        "MSETNX d 1 e",
        "TYPE a",
        "TYPE missing",
        "RENAME missing x",
        "RENAMENX missing x",
        "RENAME a a",
        "RENAMENX a a",
        "RENAME a z",
        "MGET a z",
        "RENAMENX z b",
        "RENAMENX z y",
        "MGET z y",
        "RENAME y b",
        "MGET y b",
        "UNLINK b c missing b",
        "UNLINK b",
        "EXISTS b c",
    ]);
}

fn new_commands_arity(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SET",
        "SETEX k 1",
        "SETEX k 1 v x",
        "PSETEX k",
        "SETNX k",
        "SETNX k v x",
        "GETEX",
        "GETDEL",
        "GETDEL a b",
        "EXPIRE k",
        "PEXPIRE k",
        "EXPIREAT k",
        "PEXPIREAT k",
        "TTL",
        "TTL a b",
        "PTTL",
        "PERSIST",
        "PERSIST a b",
        "DECR",
        "DECR a b",
        "DECRBY a",
        "APPEND a",
        "STRLEN",
        "GETRANGE a 1",
        "SETRANGE a 1",
        "MSETNX",
        "MSETNX a",
        "TYPE",
        "TYPE a b",
        "RENAME a",
        "RENAME a b c",
        "RENAMENX a",
        "UNLINK",
    ]);
}

fn resp3_nulls_of_the_new_commands(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::resp3(&redis, &ringport);
    diff.all(&[
        "SET k v GET",
        "SET k w GET",
        "SET k x NX",
        "SET nope x XX",
        "GETEX missing",
        "GETDEL missing",
        "GETEX k",
        "TYPE k",
        "TTL k",
        "SET k v BOGUS",
    ]);
}

/// Sends `line` to both and asserts integer replies within `tolerance` of each other: for
/// PTTL, whose milliseconds move between the two sends.
fn close_integers(diff: &mut Diff, line: &str, tolerance: i64) {
    let words: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    match diff.both(&words) {
        (Reply::Int(theirs), Reply::Int(ours)) if (theirs - ours).abs() <= tolerance => {}
        (theirs, ours) => panic!(
            "{}: redis-server {theirs:?}, ringport {ours:?}",
            show_command(&words)
        ),
    }
}

fn pttl_counts_milliseconds(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&["SET k v PX 100000", "PSETEX p 50000 v"]);
    close_integers(&mut diff, "PTTL k", 1_000);
    close_integers(&mut diff, "PTTL p", 1_000);
}

fn incrbyfloat(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "INCRBYFLOAT f 0.1",
        "INCRBYFLOAT f 0.2",
        "INCRBYFLOAT f 10.5",
        "INCRBYFLOAT f -10.8",
        "INCRBYFLOAT f 5.0e3",
        "INCRBYFLOAT f -2.0e2",
        "INCRBYFLOAT f 1e-18",
        "INCRBYFLOAT f 0x10",
        "INCRBYFLOAT f 0x1.8p1",
        "INCRBYFLOAT f .5",
        "INCRBYFLOAT f 5.",
        "INCRBYFLOAT f +3",
        "INCRBYFLOAT f -4799.9",
        "GET f",
        "INCRBYFLOAT f 1e4000",
        "INCRBYFLOAT f 1e5000",
        "INCRBYFLOAT f -1e4000",
        "INCRBYFLOAT g 1.1e-4940",
        "INCRBYFLOAT g 1e-5000",
        "INCRBYFLOAT f abc",
        "INCRBYFLOAT f 1e",
        "INCRBYFLOAT f nan",
        "INCRBYFLOAT f inf",
        "INCRBYFLOAT f -infinity",
        "INCRBYFLOAT f  1",
        "INCRBYFLOAT f 1 ",
        "INCRBYFLOAT f ",
        "SET s hello",
        "INCRBYFLOAT s 1",
        "SET i 12345678901234567890",
        "INCRBYFLOAT i 1",
        "SET j 3.0000000000000000001",
        "INCRBYFLOAT j 0",
        "SET inf inf",
        "INCRBYFLOAT inf 1",
        "SET t 1 EX 100",
        "INCRBYFLOAT t 0.5",
        "TTL t",
        "INCRBYFLOAT",
        "INCRBYFLOAT f",
        "INCRBYFLOAT f 1 2",
    ]);
    diff.same(&[b"INCRBYFLOAT", b"z", b"1\x00junk"]);
    diff.same(&[b"INCRBYFLOAT", b"z", b"\x00"]);
    let long = format!("1{}", "0".repeat(5200));
    diff.same(&[b"INCRBYFLOAT", b"z", long.as_bytes()]);
    let tiny = format!("0.{}1", "0".repeat(300));
    diff.same(&[b"INCRBYFLOAT", b"z", tiny.as_bytes()]);
}

/// The bulk strings of an array reply, as a set: where Redis's order (its hash table's) and
/// ours (byte order) legitimately differ.
fn key_set(reply: Reply) -> BTreeSet<Vec<u8>> {
    key_list(reply).into_iter().collect()
}

/// Sends `args` to both; the replies must be arrays of the same keys, in any order.
fn same_keys(diff: &mut Diff, args: &[&[u8]]) -> BTreeSet<Vec<u8>> {
    let (theirs, ours) = diff.both(args);
    let (theirs, ours) = (key_set(theirs), key_set(ours));
    assert_eq!(theirs, ours, "{}", show_command(args));
    ours
}

const GLOB_KEYS: &[&[u8]] = &[
    b"hello",
    b"hallo",
    b"hxllo",
    b"hllo",
    b"heeeello",
    b"h*llo",
    b"h[llo",
    b"h\\llo",
    b"a",
    b"ab",
    b"abc",
    b"key:1",
    b"key:2",
    b"key:10",
    b"",
    b"-",
    b"]",
    b"^",
    b"\xff",
    b"\x7f",
    b"A",
];

fn keys_glob_patterns(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    for key in GLOB_KEYS {
        diff.same(&[b"SET", key, b"v"]);
    }
    let patterns: &[&[u8]] = &[
        b"*",
        b"h?llo",
        b"h*llo",
        b"h[ae]llo",
        b"h[^e]llo",
        b"h[a-b]llo",
        b"h[b-a]llo",
        b"h\\*llo",
        b"h\\[llo",
        b"h[",
        b"[",
        b"a*",
        b"*b*",
        b"?",
        b"??",
        b"\\",
        b"key:[12]",
        b"key:?0",
        b"*[",
        b"[^",
        b"[a-",
        b"[\\]]",
        b"",
        b"**",
        b"*?",
        b"[]]",
        b"[^]]",
        b"[-]",
        b"[a-]",
        b"[!a]",
        b"[\\x00-\\x7f]",
        b"[\x00-\xff]",
        b"[\x80-\x7f]",
        b"*\\",
        b"h\\",
        b"[\\",
        b"[^\\^]",
        b"*l*l*o",
        b"*x*y*z*",
    ];
    for pattern in patterns {
        same_keys(&mut diff, &[b"KEYS", pattern]);
    }
    diff.same(&[b"KEYS", b"nothing*matches"]);
}

/// The keys of an array reply, in order.
fn key_list(reply: Reply) -> Vec<Vec<u8>> {
    let Reply::Array(items) = reply else {
        panic!("expected an array, got {reply:?}")
    };
    items
        .into_iter()
        .map(|item| match item {
            Reply::Bulk(key) => key,
            other => panic!("expected a bulk string, got {other:?}"),
        })
        .collect()
}

/// Every key a full SCAN with `options` returns on `conn`, page after page, in order.
fn scan_side(conn: &mut RawConn, options: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut cursor = b"0".to_vec();
    let mut keys = Vec::new();
    loop {
        let mut args: Vec<&[u8]> = vec![b"SCAN", &cursor];
        args.extend_from_slice(options);
        let Reply::Array(mut reply) = conn.cmd(&args) else {
            panic!("SCAN answers an array")
        };
        keys.extend(key_list(reply.pop().expect("the keys")));
        let Some(Reply::Bulk(next)) = reply.pop() else {
            panic!("SCAN answers a cursor first")
        };
        assert!(next.iter().all(u8::is_ascii_digit), "{next:?}");
        if next == b"0" {
            return keys;
        }
        cursor = next;
    }
}

/// A full SCAN on both sides returns the same keys (Redis's cursors and order differ by
/// design: they walk its hash table), and ours never repeats one.
fn scan_all(diff: &mut Diff, options: &[&[u8]]) {
    let theirs: BTreeSet<Vec<u8>> = scan_side(&mut diff.redis, options).into_iter().collect();
    let ours = scan_side(&mut diff.ringport, options);
    let unique: BTreeSet<Vec<u8>> = ours.iter().cloned().collect();
    assert_eq!(unique.len(), ours.len(), "a key came twice: {ours:?}");
    assert_eq!(theirs, unique, "SCAN {}", show_command(options));
}

fn scan_returns_every_key(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    for i in 0..40 {
        diff.same(&[b"SET", format!("key:{i}").as_bytes(), b"v"]);
    }
    diff.all(&["SET other 1", "SET gone 1 PX 1", "SET  empty-key"]);
    std::thread::sleep(Duration::from_millis(20));
    scan_all(&mut diff, &[]);
    scan_all(&mut diff, &[b"COUNT", b"3"]);
    scan_all(&mut diff, &[b"COUNT", b"1000"]);
    scan_all(&mut diff, &[b"MATCH", b"key:1*", b"COUNT", b"7"]);
    scan_all(&mut diff, &[b"match", b"*", b"type", b"STRING"]);
    scan_all(&mut diff, &[b"TYPE", b"list"]);
    scan_all(&mut diff, &[b"TYPE", b"nosuchtype"]);
    diff.all(&["FLUSHDB"]);
    diff.same(&[b"SCAN", b"0"]);
}

fn scan_errors(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SET k v",
        "SCAN abc",
        "SCAN 0 COUNT 0",
        "SCAN 0 COUNT -1",
        "SCAN 0 COUNT x",
        "SCAN 0 COUNT",
        "SCAN 0 MATCH",
        "SCAN 0 TYPE",
        "SCAN 0 FOO bar",
        "SCAN 0 COUNT 10 BOGUS",
        "SCAN abc COUNT 0",
        "SCAN",
        "KEYS",
        "KEYS a b",
    ]);
}

fn dbsize_flushdb_randomkey(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "DBSIZE",
        "RANDOMKEY",
        "SET only v",
        "RANDOMKEY",
        "DBSIZE",
        "MSET a 1 b 2 c 3",
        "DBSIZE",
        "FLUSHDB",
        "DBSIZE",
        "KEYS *",
        "SET a 1",
        "FLUSHDB ASYNC",
        "SET a 1",
        "FLUSHDB sync",
        "EXISTS a",
        "FLUSHDB FOO",
        "FLUSHDB ASYNC SYNC",
        "DBSIZE x",
        "RANDOMKEY x",
        "SET e v PX 1",
    ]);
    std::thread::sleep(Duration::from_millis(20));
    diff.all(&["KEYS *", "RANDOMKEY", "SCAN 0"]);
}

fn multi_exec_runs_the_queue(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "MULTI",
        "SET a 1",
        "INCR a",
        "GET a",
        "MGET a missing",
        "PING",
        "ECHO hi",
        "SET b x EX 100 GET",
        "EXPIRE a 100",
        "TTL a",
        "RENAME a c",
        "KEYS c",
        "DBSIZE",
        "EXEC",
        "MGET a b c",
        "MULTI",
        "EXEC",
        "MULTI",
        "PING",
        "ECHO only-on-the-ring",
        "EXEC",
    ]);
}

fn multi_queue_time_errors_abort(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "MULTI", "SET a 1", "NOSUCH x", "SET b 2", "EXEC", "MGET a b", "MULTI", "GET", "SET a 1",
        "EXEC", "EXISTS a", "MULTI", "SET a 1", "EXPIRE a", "DISCARD", "EXISTS a", "EXEC",
    ]);
}

fn multi_run_time_errors_are_per_command(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "SET s hello",
        "MULTI",
        "INCR s",
        "SET b 2",
        "INCRBY b x",
        "SET c 3 EX 0",
        "SET d 4 BOGUS",
        "RENAME missing x",
        "INCRBYFLOAT s 1",
        "APPEND b 0",
        "EXEC",
        "MGET s b c d",
    ]);
}

fn multi_misuse(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "EXEC",
        "DISCARD",
        "MULTI",
        "MULTI",
        "WATCH k",
        "SET k 1",
        "EXEC",
        "GET k",
        "MULTI",
        "MULTI",
        "DISCARD",
        "MULTI x",
        "EXEC x",
        "DISCARD x",
        "WATCH",
        "UNWATCH x",
        "UNWATCH",
    ]);
}

fn watch_aborts_on_a_change(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    let mut other = Diff::new(&redis, &ringport);
    diff.all(&[
        "SET k 1",
        "WATCH k missing",
        "MULTI",
        "INCR k",
        "EXEC",
        "GET k",
    ]);
    diff.all(&["WATCH k"]);
    other.all(&["SET k changed"]);
    diff.all(&["MULTI", "SET k mine", "EXEC", "GET k"]);
    // A key absent at WATCH that another session creates.
    diff.all(&["WATCH fresh"]);
    other.all(&["SET fresh 1"]);
    diff.all(&["MULTI", "SET fresh 2", "EXEC", "GET fresh"]);
    // A change of expiry only.
    diff.all(&["WATCH k"]);
    other.all(&["EXPIRE k 100"]);
    diff.all(&["MULTI", "PERSIST k", "EXEC", "TTL k"]);
    // The watch ended with the EXEC above: this one commits.
    other.all(&["SET k again"]);
    diff.all(&["MULTI", "GET k", "EXEC"]);
}

fn watch_then_unwatch_or_discard(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    let mut other = Diff::new(&redis, &ringport);
    diff.all(&["WATCH k"]);
    other.all(&["SET k 1"]);
    diff.all(&["UNWATCH", "MULTI", "SET k 2", "EXEC", "GET k"]);
    diff.all(&["WATCH k", "MULTI", "SET k 3", "DISCARD"]);
    other.all(&["SET k 4"]);
    diff.all(&["MULTI", "SET k 5", "EXEC", "GET k"]);
    diff.all(&["WATCH k", "MULTI", "UNWATCH", "SET k 6", "EXEC", "GET k"]);
}

fn watched_key_that_expires_aborts(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::new(&redis, &ringport);
    // Redis aborts an EXEC whose WATCHed key expired, unless its background expiry removed the
    // key first: then it commits. Ours always aborts; with redis-server's background expiry
    // off, so does it, every time.
    assert_eq!(
        diff.redis.cmd(&[b"DEBUG", b"SET-ACTIVE-EXPIRE", b"0"]),
        Reply::Simple("OK".into())
    );
    diff.all(&["SET w v PX 200", "WATCH w"]);
    std::thread::sleep(Duration::from_millis(300));
    diff.all(&["MULTI", "SET w x", "EXEC", "EXISTS w"]);
}

fn resp3_transactions(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    let mut diff = Diff::resp3(&redis, &ringport);
    let mut other = Diff::new(&redis, &ringport);
    diff.all(&[
        "MULTI",
        "SET a 1",
        "GET missing",
        "GETEX missing",
        "INCR a",
        "EXEC",
    ]);
    diff.all(&["WATCH a"]);
    other.all(&["SET a 9"]);
    diff.all(&["MULTI", "SET a 2", "EXEC", "MULTI", "NOSUCH", "EXEC"]);
}

/// CLIENT LIST's and CLIENT KILL's options as Redis 7.0 reads them, in the forms whose replies
/// hold no client id or address (those differ between the two servers).
fn client_list_and_kill_options(store: Store, label: &str) {
    let builder = Server::builder().admin("root", "rootpass");
    let (redis, ringport) = servers_from(builder, store, label);
    // As an admin: redis-server's default user may see and close every client too.
    let mut diff = Diff::as_user(&redis, &ringport, "root", "rootpass");
    diff.all(&[
        "CLIENT LIST TYPE foo",
        "CLIENT LIST TYPE master",
        "CLIENT LIST TYPE PubSub",
        "CLIENT LIST TYPE replica",
        "CLIENT LIST TYPE normal x",
        "CLIENT LIST ID x",
        "CLIENT LIST ID 1 x",
        "CLIENT LIST ID",
        "CLIENT LIST ID -5",
        "CLIENT LIST ID 0 999999 999999",
        "CLIENT LIST USER root",
        "CLIENT LIST foo",
        "CLIENT KILL USER nobody",
        "CLIENT KILL USER nobody ID 0",
        "CLIENT KILL ID 0 USER nobody",
        "CLIENT KILL ID 0 USER",
        "CLIENT KILL ID 999999 USER",
        "CLIENT KILL ID x",
        "CLIENT KILL ID -1",
        "CLIENT KILL LADDR 1.2.3.4:5",
        "CLIENT KILL ADDR 1.2.3.4:5",
        "CLIENT KILL TYPE foo",
        "CLIENT KILL TYPE master",
        "CLIENT KILL TYPE pubsub SKIPME no",
        "CLIENT KILL MAXAGE 5",
        "CLIENT KILL SKIPME maybe",
        "CLIENT KILL ID 999999 SKIPME no",
        "CLIENT KILL 1.2.3.4:5",
        "PING",
    ]);
    // Errors that do not depend on who asks, as a user that is no admin.
    let mut diff = Diff::new(&redis, &ringport);
    diff.all(&[
        "CLIENT LIST TYPE foo",
        "CLIENT LIST ID x",
        "CLIENT KILL TYPE foo",
        "CLIENT KILL LADDR 1.2.3.4:5",
        "CLIENT KILL 1.2.3.4:5",
    ]);
}

/// A session that names itself in CLIENT KILL gets its reply, then is closed; a command it
/// pipelined behind is not run.
fn client_kill_naming_itself_answers_then_closes(store: Store, label: &str) {
    let (redis, ringport) = servers(store, label);
    for old_form in [false, true] {
        let mut diff = Diff::new(&redis, &ringport);
        let mut replies = Vec::new();
        for conn in [&mut diff.redis, &mut diff.ringport] {
            let Reply::Int(id) = conn.cmd(&[b"CLIENT", b"ID"]) else {
                panic!("CLIENT ID is an integer")
            };
            let id = id.to_string();
            let addr = conn.stream.local_addr().unwrap().to_string();
            let kill: Vec<&[u8]> = if old_form {
                vec![b"CLIENT", b"KILL", addr.as_bytes()]
            } else {
                vec![b"CLIENT", b"KILL", b"ID", id.as_bytes(), b"SKIPME", b"no"]
            };
            conn.send_cmd(&kill);
            conn.send_cmd(&[b"PING"]);
            // Everything up to the close: the reply alone, no PONG.
            replies.push(conn.read_to_eof(Duration::from_secs(5)));
        }
        assert_eq!(
            oracle::show(&replies[0]),
            oracle::show(&replies[1]),
            "redis-server, then ringport (old form: {old_form})"
        );
    }
}
