//! SQL-defined commands: `[[command]]` blocks of the config file, each one statement on the
//! PostgreSQL store with a reply shape, checked against PostgreSQL before the server serves.
//!
//! ```toml
//! [[command]]
//! name = "balance"
//! sql = "SELECT balance FROM accounts WHERE owner = $1 AND name = $2"
//! arity = 2          # Redis's: the name counts, so one argument ($2)
//! reply = "value"
//! ```
//!
//! `$1` is the session's user name (unless `user = false`); the command's arguments follow as
//! `$2`, `$3`, ... Each statement is one transaction, committed before the reply.

use std::path::Path;

use crate::config::SqlCommandConfig;
use crate::store::{Backend, SqlResult, SqlShape};

use super::api::{sql_value_reply, CommandDef, Reply};

/// What a SQL command answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `+OK`.
    Status,
    /// The number of rows inserted, updated, deleted or returned.
    Affected,
    /// The first column of the first row; null when there is no row.
    Value,
    /// The first row as an array; null when there is no row.
    Row,
    /// The first row as a map of column name to value; null when there is no row.
    Map,
    /// Every row, each an array.
    Rows,
    /// The first column of every row.
    Column,
}

impl Shape {
    pub const NAMES: &'static str = "status, affected, value, row, map, rows, column";

    pub fn parse(name: &str) -> Option<Shape> {
        Some(match name {
            "status" => Shape::Status,
            "affected" => Shape::Affected,
            "value" => Shape::Value,
            "row" => Shape::Row,
            "map" => Shape::Map,
            "rows" => Shape::Rows,
            "column" => Shape::Column,
            _ => return None,
        })
    }

    fn needs_columns(self) -> bool {
        !matches!(self, Shape::Status | Shape::Affected)
    }

    /// The reply for a statement's result.
    pub fn reply(self, result: SqlResult) -> Reply {
        let SqlResult {
            columns,
            rows,
            affected,
        } = result;
        let mut rows = rows.into_iter();
        let mut first_row = || rows.next();
        match self {
            Shape::Status => Reply::ok(),
            Shape::Affected => Reply::Integer(i64::try_from(affected).unwrap_or(i64::MAX)),
            Shape::Value => first_row()
                .and_then(|row| row.into_iter().next())
                .map_or(Reply::Null, sql_value_reply),
            Shape::Row => first_row().map_or(Reply::NullArray, |row| {
                Reply::Array(row.into_iter().map(sql_value_reply).collect())
            }),
            Shape::Map => first_row().map_or(Reply::NullArray, |row| {
                Reply::Map(
                    columns
                        .into_iter()
                        .zip(row)
                        .map(|(name, value)| (Reply::bulk(name), sql_value_reply(value)))
                        .collect(),
                )
            }),
            Shape::Rows => Reply::Array(
                rows.map(|row| Reply::Array(row.into_iter().map(sql_value_reply).collect()))
                    .collect(),
            ),
            Shape::Column => Reply::Array(
                rows.map(|row| row.into_iter().next().map_or(Reply::Null, sql_value_reply))
                    .collect(),
            ),
        }
    }
}

/// The commands of a config file's `[[command]]` blocks, each statement prepared on
/// `backend` and checked: a bad statement, a parameter count that does not match the arity,
/// an unknown reply shape or a column no reply can carry is an error naming the command, the
/// file and PostgreSQL's message. Name clashes are found when the table is built.
pub fn load(
    configs: &[SqlCommandConfig],
    file: &Path,
    backend: &dyn Backend,
) -> Result<Vec<CommandDef>, String> {
    if configs.is_empty() {
        return Ok(Vec::new());
    }
    let file = file.display().to_string();
    if backend.kind() != "postgres" {
        return Err(format!(
            "{file}: command '{}': SQL commands need the PostgreSQL store (--store postgres://...); the store is {}",
            configs[0].name,
            backend.kind()
        ));
    }
    let mut conn = backend
        .connect()
        .map_err(|e| format!("{file}: cannot check the SQL commands: {e}"))?;
    let sql = conn
        .sql()
        .ok_or_else(|| format!("{file}: the store has no SQL"))?;
    configs
        .iter()
        .map(|config| {
            let fail = |why: String| format!("{file}: command '{}': {why}", config.name);
            let shape = Shape::parse(&config.reply).ok_or_else(|| {
                fail(format!(
                    "unknown reply shape '{}' (one of: {})",
                    config.reply,
                    Shape::NAMES
                ))
            })?;
            if config.arity < 1 {
                return Err(fail(format!(
                    "arity {} is not valid for a SQL command: give the exact count, the name included (2 = one argument)",
                    config.arity
                )));
            }
            let described = sql.describe(&config.sql).map_err(|e| fail(e.to_string()))?;
            check_shape(config, shape, &described).map_err(fail)?;
            Ok(definition(config, shape, &file))
        })
        .collect()
}

fn check_shape(
    config: &SqlCommandConfig,
    shape: Shape,
    described: &SqlShape,
) -> Result<(), String> {
    let arguments = (config.arity - 1) as usize;
    let expected = arguments + usize::from(config.user);
    if described.params != expected {
        return Err(format!(
            "the statement takes {} parameter(s) but arity {} gives {expected} ({}{arguments} argument(s))",
            described.params,
            config.arity,
            if config.user { "$1 = the user, then " } else { "" },
        ));
    }
    if shape.needs_columns() && described.columns.is_empty() {
        return Err(format!(
            "reply '{}' needs a statement that returns rows (add RETURNING, or use 'status' or 'affected')",
            config.reply
        ));
    }
    if let Some((name, ty)) = described.unsupported.first() {
        return Err(format!(
            "column '{name}' has type {ty}, which a reply cannot carry: cast it in the statement (for example {name}::text)"
        ));
    }
    Ok(())
}

fn definition(config: &SqlCommandConfig, shape: Shape, file: &str) -> CommandDef {
    let statement = config.sql.clone();
    let pass_user = config.user;
    let def = CommandDef::store(&config.name, config.arity, move |ctx| {
        let request = ctx.request();
        let mut params: Vec<&[u8]> = Vec::with_capacity(request.args().len());
        if pass_user {
            params.push(ctx.user().as_bytes());
        }
        params.extend(request.args()[1..].iter().map(Vec::as_slice));
        Ok(shape.reply(ctx.query(&statement, &params)?))
    })
    .group("sql")
    .origin(file)
    .summary(if config.summary.is_empty() {
        &config.sql
    } else {
        &config.summary
    });
    if config.write {
        def.write()
    } else {
        def.readonly()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqlValue;

    fn result() -> SqlResult {
        SqlResult {
            columns: vec!["name".into(), "n".into()],
            rows: vec![
                vec![SqlValue::Text("a".into()), SqlValue::Int(1)],
                vec![SqlValue::Text("b".into()), SqlValue::Null],
            ],
            affected: 2,
        }
    }

    #[test]
    fn every_shape_replies_as_documented() {
        assert_eq!(Shape::Status.reply(result()), Reply::ok());
        assert_eq!(Shape::Affected.reply(result()), Reply::Integer(2));
        assert_eq!(Shape::Value.reply(result()), Reply::bulk("a"));
        assert_eq!(
            Shape::Row.reply(result()),
            Reply::Array(vec![Reply::bulk("a"), Reply::Integer(1)])
        );
        assert_eq!(
            Shape::Map.reply(result()),
            Reply::Map(vec![
                (Reply::bulk("name"), Reply::bulk("a")),
                (Reply::bulk("n"), Reply::Integer(1))
            ])
        );
        assert_eq!(
            Shape::Column.reply(result()),
            Reply::Array(vec![Reply::bulk("a"), Reply::bulk("b")])
        );
        let Reply::Array(rows) = Shape::Rows.reply(result()) else {
            panic!("rows is an array")
        };
        assert_eq!(rows[1], Reply::Array(vec![Reply::bulk("b"), Reply::Null]));
        let empty = SqlResult {
            columns: vec!["x".into()],
            ..SqlResult::default()
        };
        assert_eq!(Shape::Value.reply(empty.clone()), Reply::Null);
        assert_eq!(Shape::Row.reply(empty.clone()), Reply::NullArray);
        assert_eq!(Shape::Rows.reply(empty), Reply::Array(vec![]));
        assert!(Shape::parse("table").is_none());
    }
}
