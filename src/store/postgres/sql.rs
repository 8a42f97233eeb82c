//! SQL for user-defined store commands ([`super::super::Sql`] on a [`PostgresConn`]).
//!
//! Parameters go to PostgreSQL as text (bytea as its raw bytes), so the server's own input
//! functions turn `"10"` into whatever the statement needs and word the error when they cannot.
//! Results come back in binary and are decoded here for the types a reply can carry; any other
//! type is refused when the statement is described, with the cast to add.

use std::error::Error;
use std::time::Duration;

use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

use super::{is_connection_error, Failure, PostgresConn, Statements};
use crate::store::{Sql, SqlResult, SqlShape, SqlValue, StoreError};

/// A connection keeps at most this many user statements prepared; past it the cache starts
/// over (a program building statements from input would otherwise grow it without end).
const MAX_PREPARED: usize = 1024;

/// One parameter, sent in text format so that PostgreSQL parses it for the parameter's type.
#[derive(Debug)]
struct TextParam<'a>(&'a [u8]);

impl ToSql for TextParam<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    // bytea's binary form is the bytes themselves; its text form would need hex escapes.
    fn encode_format(&self, ty: &Type) -> tokio_postgres::types::Format {
        if *ty == Type::BYTEA {
            tokio_postgres::types::Format::Binary
        } else {
            tokio_postgres::types::Format::Text
        }
    }

    to_sql_checked!();
}

/// A column's bytes as the server sent them (binary format), decoded by [`decode`].
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Whether [`decode`] knows `ty`.
fn supported(ty: &Type) -> bool {
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
        Type::JSON,
        Type::JSONB,
        Type::UUID,
        Type::BYTEA,
    ]
    .contains(ty)
}

fn malformed(ty: &Type) -> StoreError {
    StoreError::Sql(format!("malformed {} value from the server", ty.name()))
}

/// One binary-format column value as a [`SqlValue`].
fn decode(ty: &Type, raw: Option<&[u8]>) -> Result<SqlValue, StoreError> {
    let Some(raw) = raw else {
        return Ok(SqlValue::Null);
    };
    let int = |bytes: &[u8]| -> Result<i64, StoreError> {
        Ok(match bytes.len() {
            2 => i64::from(i16::from_be_bytes([bytes[0], bytes[1]])),
            4 => i64::from(i32::from_be_bytes(bytes.try_into().expect("4 bytes"))),
            8 => i64::from_be_bytes(bytes.try_into().expect("8 bytes")),
            _ => return Err(malformed(ty)),
        })
    };
    let text = |bytes: &[u8]| -> Result<SqlValue, StoreError> {
        String::from_utf8(bytes.to_vec())
            .map(SqlValue::Text)
            .map_err(|_| malformed(ty))
    };
    match *ty {
        Type::BOOL => Ok(SqlValue::Bool(raw.first().is_some_and(|b| *b != 0))),
        Type::INT2 | Type::INT4 | Type::INT8 => int(raw).map(SqlValue::Int),
        Type::OID => match <[u8; 4]>::try_from(raw) {
            Ok(bytes) => Ok(SqlValue::Int(i64::from(u32::from_be_bytes(bytes)))),
            Err(_) => Err(malformed(ty)),
        },
        Type::FLOAT4 => match <[u8; 4]>::try_from(raw) {
            Ok(bytes) => Ok(SqlValue::Float(f64::from(f32::from_be_bytes(bytes)))),
            Err(_) => Err(malformed(ty)),
        },
        Type::FLOAT8 => match <[u8; 8]>::try_from(raw) {
            Ok(bytes) => Ok(SqlValue::Float(f64::from_be_bytes(bytes))),
            Err(_) => Err(malformed(ty)),
        },
        Type::NUMERIC => numeric_text(raw)
            .map(SqlValue::Text)
            .ok_or_else(|| malformed(ty)),
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => text(json),
            _ => Err(malformed(ty)),
        },
        Type::UUID => match <[u8; 16]>::try_from(raw) {
            Ok(bytes) => {
                let hex = hex::encode(bytes);
                Ok(SqlValue::Text(format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                )))
            }
            Err(_) => Err(malformed(ty)),
        },
        Type::BYTEA => Ok(SqlValue::Bytes(raw.to_vec())),
        _ if supported(ty) => text(raw),
        _ => Err(StoreError::Sql(unsupported_message(ty))),
    }
}

fn unsupported_message(ty: &Type) -> String {
    format!(
        "a column of type {} cannot be returned as is: cast it in the statement (for example ::text)",
        ty.name()
    )
}

/// PostgreSQL's binary `numeric` as the text it would print: base-10000 digits, a weight (the
/// power of 10000 of the first digit), a sign and a display scale (digits after the point).
fn numeric_text(raw: &[u8]) -> Option<String> {
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*raw.get(i)?, *raw.get(i + 1)?])) };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = usize::from(word(6)?);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    let digit = |index: i32| -> u16 {
        usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for index in 0..=weight {
            if index == 0 {
                out.push_str(&digit(index).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(index)));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let start = out.len();
        let mut index = weight + 1;
        while out.len() - start < dscale {
            out.push_str(&format!("{:04}", digit(index)));
            index += 1;
        }
        out.truncate(start + dscale);
    }
    Some(out)
}

/// A statement error as the client's answer: the server's message for a statement it refused,
/// the client library's for a call it could not make (a parameter count that does not match).
/// A failure of the connection itself goes back to [`PostgresConn::run`], which drops it.
fn sql_failure(error: tokio_postgres::Error) -> Failure {
    if is_connection_error(&error) {
        return Failure::Postgres(error);
    }
    let message = match error.as_db_error() {
        Some(db) => db.message().to_string(),
        None => error.to_string(),
    };
    Failure::Store(StoreError::Sql(message))
}

/// The connection's prepared statement for `text`, preparing it on first use.
async fn prepared(
    client: &Client,
    statements: &Statements,
    text: &str,
) -> Result<Statement, Failure> {
    if let Some(statement) = statements.custom.borrow().get(text) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(text).await.map_err(sql_failure)?;
    let mut cache = statements.custom.borrow_mut();
    if cache.len() >= MAX_PREPARED {
        cache.clear();
    }
    cache.insert(text.to_string(), statement.clone());
    Ok(statement)
}

impl Sql for PostgresConn {
    fn query(&mut self, text: &str, params: &[&[u8]]) -> Result<SqlResult, StoreError> {
        self.run(Duration::ZERO, async |client, statements| {
            let statement = prepared(client, statements, text).await?;
            let params: Vec<TextParam<'_>> = params.iter().map(|p| TextParam(p)).collect();
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            let columns: Vec<String> = statement
                .columns()
                .iter()
                .map(|c| c.name().to_string())
                .collect();
            if columns.is_empty() {
                let affected = client
                    .execute(&statement, &refs)
                    .await
                    .map_err(sql_failure)?;
                return Ok(SqlResult {
                    columns,
                    rows: Vec::new(),
                    affected,
                });
            }
            let rows = client.query(&statement, &refs).await.map_err(sql_failure)?;
            let mut decoded = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut values = Vec::with_capacity(columns.len());
                for (index, column) in row.columns().iter().enumerate() {
                    let raw: Raw<'_> = row.try_get(index).map_err(sql_failure)?;
                    values.push(decode(column.type_(), raw.0)?);
                }
                decoded.push(values);
            }
            Ok(SqlResult {
                columns,
                affected: decoded.len() as u64,
                rows: decoded,
            })
        })
    }

    fn describe(&mut self, text: &str) -> Result<SqlShape, StoreError> {
        self.run(Duration::ZERO, async |client, statements| {
            let statement = prepared(client, statements, text).await?;
            let columns: Vec<(String, String)> = statement
                .columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_().name().to_string()))
                .collect();
            let unsupported = statement
                .columns()
                .iter()
                .filter(|c| !supported(c.type_()))
                .map(|c| (c.name().to_string(), c.type_().name().to_string()))
                .collect();
            Ok(SqlShape {
                params: statement.params().len(),
                columns,
                unsupported,
            })
        })
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.run(Duration::ZERO, async |client, _| {
            client.batch_execute("BEGIN").await.map_err(sql_failure)
        })?;
        self.in_transaction = true;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let committed = self.run(Duration::ZERO, async |client, _| {
            client.batch_execute("COMMIT").await.map_err(sql_failure)
        });
        self.in_transaction = false;
        committed
    }

    fn rollback(&mut self) {
        if self.session.is_some() {
            // A failure here leaves the connection dropped by `run`, which rolls back too.
            let _ = self.run(Duration::ZERO, async |client, _| {
                client.batch_execute("ROLLBACK").await.map_err(sql_failure)
            });
        }
        self.in_transaction = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(ndigits.len() as u16).to_be_bytes());
        raw.extend_from_slice(&weight.to_be_bytes());
        raw.extend_from_slice(&sign.to_be_bytes());
        raw.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            raw.extend_from_slice(&d.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numeric_prints_as_postgres_does() {
        // 12345.678 = [1, 2345, 6780] weight 1, scale 3
        assert_eq!(
            numeric_text(&numeric(&[1, 2345, 6780], 1, 0, 3)).unwrap(),
            "12345.678"
        );
        assert_eq!(numeric_text(&numeric(&[], 0, 0, 2)).unwrap(), "0.00");
        assert_eq!(
            numeric_text(&numeric(&[5], -1, 0x4000, 4)).unwrap(),
            "-0.0005"
        );
        assert_eq!(numeric_text(&numeric(&[100], 0, 0, 0)).unwrap(), "100");
        assert_eq!(numeric_text(&numeric(&[1], 2, 0, 0)).unwrap(), "100000000");
        assert_eq!(numeric_text(&numeric(&[], 0, 0xC000, 0)).unwrap(), "NaN");
        assert!(numeric_text(&[0, 1]).is_none());
    }

    #[test]
    fn decodes_the_types_a_reply_carries() {
        assert_eq!(
            decode(&Type::INT4, Some(&7i32.to_be_bytes())).unwrap(),
            SqlValue::Int(7)
        );
        assert_eq!(decode(&Type::INT8, None).unwrap(), SqlValue::Null);
        assert_eq!(
            decode(&Type::BOOL, Some(&[1])).unwrap(),
            SqlValue::Bool(true)
        );
        assert_eq!(
            decode(&Type::TEXT, Some(b"hi")).unwrap(),
            SqlValue::Text("hi".into())
        );
        assert_eq!(
            decode(&Type::JSONB, Some(b"\x01{}")).unwrap(),
            SqlValue::Text("{}".into())
        );
        assert!(decode(&Type::INT4, Some(&[1, 2, 3])).is_err());
        let e = decode(&Type::TIMESTAMPTZ, Some(&[0; 8])).unwrap_err();
        assert!(e.to_string().contains("timestamptz"), "{e}");
    }
}
