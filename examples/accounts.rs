//! A small but real service on ringport's command API: accounts with balances in PostgreSQL,
//! moved by transactions, plus one CPU-bound and one inline command.
//!
//! ```text
//! cargo run --release --example accounts -- --store postgres://localhost/bank --listen 127.0.0.1:6400
//! redis-cli -p 6400 --user admin --pass ... OPEN checking
//! ```
//!
//! Every account belongs to the authenticated user, so alice's `checking` is not bob's.
//!
//! | command                     | class   | reply                                           |
//! |-----------------------------|---------|-------------------------------------------------|
//! | `OPEN name`                 | store   | 1 if opened, 0 if it existed                    |
//! | `BALANCE name`              | store   | the balance, or null for no such account        |
//! | `DEPOSIT name amount`       | store   | the new balance                                 |
//! | `TRANSFER from to amount`   | store   | the new balance of `from`; all or nothing       |
//! | `SCORE text`                | compute | a map: words, distinct words, a readability score |
//! | `FEE amount`                | inline  | the fee a transfer of `amount` costs (1%, at least 1) |
//!
//! Each store command's reply leaves after its transaction committed: a `TRANSFER` that
//! answered survives `kill -9` of the server.

use ringport::api::{Argv, CommandDef, Reply, StoreCtx, StoreError};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ringport_example_accounts (
    owner text NOT NULL,
    name text NOT NULL,
    balance bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    PRIMARY KEY (owner, name))";

/// A positive amount, or the error the client gets.
fn amount(arg: Result<i64, Reply>) -> Result<i64, StoreError> {
    match arg {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(StoreError::Sql("amount must be a positive integer".into())),
    }
}

fn transfer(ctx: &mut StoreCtx<'_>) -> Result<Reply, StoreError> {
    let (owner, request) = (ctx.user(), ctx.request());
    let (from, to) = (request.arg(1), request.arg(2));
    let amount = amount(request.arg_i64(3))?;
    if from == to {
        return Err(StoreError::Sql(
            "cannot transfer to the same account".into(),
        ));
    }
    let amount_text = amount.to_string();
    ctx.transaction(|tx| {
        // Both rows locked in name order, so two opposite transfers cannot deadlock.
        let locked = tx.query(
            "SELECT name FROM ringport_example_accounts
             WHERE owner = $1 AND name IN ($2, $3) ORDER BY name FOR UPDATE",
            &[owner.as_bytes(), from, to],
        )?;
        if locked.rows.len() != 2 {
            return Err(StoreError::Sql("no such account".into()));
        }
        let debited = tx.query(
            "UPDATE ringport_example_accounts SET balance = balance - $3
             WHERE owner = $1 AND name = $2 AND balance >= $3 RETURNING balance",
            &[owner.as_bytes(), from, amount_text.as_bytes()],
        )?;
        let Some(balance) = debited.rows.into_iter().next() else {
            return Err(StoreError::Sql("insufficient funds".into()));
        };
        tx.query(
            "UPDATE ringport_example_accounts SET balance = balance + $3
             WHERE owner = $1 AND name = $2",
            &[owner.as_bytes(), to, amount_text.as_bytes()],
        )?;
        Ok(ringport::api::sql_value_reply(
            balance
                .into_iter()
                .next()
                .unwrap_or(ringport::api::SqlValue::Null),
        ))
    })
}

/// Words, distinct words, and a readability score (fewer letters per word and words per
/// sentence read easier): some honest CPU work per call.
fn score(text: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(text).to_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let distinct: std::collections::HashSet<&str> = words.iter().copied().collect();
    let sentences = text.matches(['.', '!', '?']).count().max(1);
    let letters: usize = words.iter().map(|w| w.chars().count()).sum();
    let per_word = letters as f64 / words.len().max(1) as f64;
    let per_sentence = words.len() as f64 / sentences as f64;
    let score = (206.835 - 1.015 * per_sentence - 84.6 * per_word / 3.0).clamp(0.0, 100.0);
    Reply::Map(vec![
        (Reply::bulk("words"), Reply::Integer(words.len() as i64)),
        (
            Reply::bulk("distinct"),
            Reply::Integer(distinct.len() as i64),
        ),
        (
            Reply::bulk("score"),
            Reply::Double((score * 10.0).round() / 10.0),
        ),
    ])
}

fn commands() -> Vec<CommandDef> {
    vec![
        CommandDef::store("open", 2, |ctx| {
            let (owner, name) = (ctx.user(), ctx.request().arg(1));
            let opened = ctx.query(
                "INSERT INTO ringport_example_accounts (owner, name) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
                &[owner.as_bytes(), name],
            )?;
            Ok(Reply::Integer(opened.affected as i64))
        })
        .write()
        .summary("Opens an account with balance 0; 1 if opened, 0 if it existed."),
        CommandDef::store("balance", 2, |ctx| {
            let (owner, name) = (ctx.user(), ctx.request().arg(1));
            let found = ctx.query(
                "SELECT balance FROM ringport_example_accounts WHERE owner = $1 AND name = $2",
                &[owner.as_bytes(), name],
            )?;
            Ok(found
                .rows
                .into_iter()
                .next()
                .and_then(|row| row.into_iter().next())
                .map_or(Reply::Null, ringport::api::sql_value_reply))
        })
        .readonly()
        .flag("fast")
        .summary("The balance of an account, or null."),
        CommandDef::store("deposit", 3, |ctx| {
            let (owner, request) = (ctx.user(), ctx.request());
            let amount = amount(request.arg_i64(2))?.to_string();
            let updated = ctx.query(
                "UPDATE ringport_example_accounts SET balance = balance + $3
                 WHERE owner = $1 AND name = $2 RETURNING balance",
                &[owner.as_bytes(), request.arg(1), amount.as_bytes()],
            )?;
            match updated
                .rows
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
            {
                Some(balance) => Ok(ringport::api::sql_value_reply(balance)),
                None => Err(StoreError::Sql("no such account".into())),
            }
        })
        .write()
        .summary("Adds to an account; the new balance."),
        CommandDef::store("transfer", 4, transfer)
            .write()
            .summary("Moves an amount between two of your accounts, all or nothing."),
        CommandDef::compute("score", 2, |req| score(req.arg(1)))
            .readonly()
            .summary("Scores a text: words, distinct words, readability."),
        CommandDef::inline("fee", 2, |cx| match cx.arg_i64(1) {
            Ok(n) if n > 0 => Reply::Integer((n / 100).max(1)),
            Ok(_) => Reply::err("amount must be a positive integer"),
            Err(not_integer) => not_integer,
        })
        .flag("fast")
        .summary("The fee a transfer of amount costs: 1%, at least 1."),
    ]
}

fn main() {
    let mut server = ringport::Server::from_env().unwrap_or_else(|e| {
        eprintln!("accounts: {e}");
        std::process::exit(2);
    });
    let url = match server.args_mut().store.store.clone() {
        Some(url) if url != "embedded" => url,
        _ => {
            eprintln!("accounts: needs PostgreSQL: --store postgres://... (or RINGPORT_STORE_URL)");
            std::process::exit(2);
        }
    };
    // The example's own table; ringport migrates only its own.
    if let Err(e) = postgres::Client::connect(&url, postgres::NoTls)
        .and_then(|mut client| client.batch_execute(SCHEMA))
    {
        eprintln!("accounts: cannot create the accounts table: {e}");
        std::process::exit(1);
    }
    let server = commands().into_iter().fold(server, |s, c| s.command(c));
    if let Err(e) = server.run() {
        eprintln!("accounts: {e}");
        std::process::exit(1);
    }
}
