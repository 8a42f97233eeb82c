//! The smallest server with commands of its own: one of each execution class.
//!
//! ```text
//! cargo run --example minimal -- --listen 127.0.0.1:6400
//! redis-cli -p 6400 --user admin --pass ... GREET
//! ```
//!
//! - `GREET [name]` (inline, on the ring): cheap, answers at once.
//! - `FACTOR n` (compute, on the pool): prime factors of n, CPU-bound for large n.
//! - `VISITS` (store): counts this user's calls in the store, committed before the reply;
//!   works on the embedded store and on PostgreSQL.
//! - `OOPS inline|compute|store`: a handler that panics, to show what a client then sees
//!   (`-ERR internal error`) while the server and every other session go on.

use ringport::api::{Argv, CommandDef, Reply};

fn factors(mut n: u64) -> Vec<Reply> {
    let mut found = Vec::new();
    let mut d = 2;
    while d * d <= n {
        while n % d == 0 {
            found.push(Reply::Integer(d as i64));
            n /= d;
        }
        d += 1;
    }
    if n > 1 {
        found.push(Reply::Integer(n as i64));
    }
    found
}

fn oops(which: &str) -> CommandDef {
    let name = format!("oops-{which}");
    let message = format!("OOPS {which}: this handler panics on purpose");
    match which {
        "inline" => CommandDef::inline(&name, 1, move |_| panic!("{message}")),
        "compute" => CommandDef::compute(&name, 1, move |_| panic!("{message}")),
        _ => CommandDef::store(&name, 1, move |_| panic!("{message}")),
    }
    .summary("Panics on purpose: the client gets -ERR internal error, nothing else is disturbed.")
}

fn main() {
    let server = ringport::Server::from_env().unwrap_or_else(|e| {
        eprintln!("minimal: {e}");
        std::process::exit(2);
    });
    let result = server
        .command(
            CommandDef::inline("greet", -1, |cx| match cx.argc() {
                1 => Reply::status(format!("hello, {}", cx.user().unwrap_or("stranger"))),
                2 => Reply::bulk([b"hello, ".as_slice(), cx.arg(1)].concat()),
                _ => Reply::err("GREET takes at most one name"),
            })
            .flag("fast")
            .summary("Greets you, or the name given."),
        )
        .command(
            CommandDef::compute("factor", 2, |req| match req.arg_i64(1) {
                Ok(n) if n >= 1 => Reply::Array(factors(n as u64)),
                Ok(_) => Reply::err("FACTOR takes a positive integer"),
                Err(not_integer) => not_integer,
            })
            .readonly()
            .summary("The prime factors of n."),
        )
        .command(
            CommandDef::store("visits", 1, |ctx| {
                let user = ctx.user();
                Ok(Reply::Integer(ctx.kv().incr_by(
                    user,
                    b"minimal:visits",
                    1,
                )?))
            })
            .write()
            .summary("Counts your calls, durably."),
        )
        .command(oops("inline"))
        .command(oops("compute"))
        .command(oops("store"))
        .run();
    if let Err(e) = result {
        eprintln!("minimal: {e}");
        std::process::exit(1);
    }
}
