//! A whole reply as a tree: [`Value`], written by [`encode_value`] and read by [`parse_value`].
//!
//! The server streams its replies with the encoders and never builds a `Value`; this is for
//! tests, fuzzing and tools that need to read a reply back. (The load generator in `bench/`
//! counts replies with its own incremental scanner instead: it never builds a tree, and keeps
//! its place across reads where `parse_value` starts again on the longer buffer.)

use memchr::memchr;

use super::encode::{
    array_len, boolean, bulk, double, error, integer, map_len, null, null_array, set_len, simple,
    verbatim, Proto, CRLF,
};
use super::parse::{parse_i64, ProtocolError};

/// One whole reply, RESP2 or RESP3, for tests, fuzzing and tools.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+OK`
    Simple(Vec<u8>),
    /// `-ERR ...`, the bytes after `-`; also RESP3's blob error `!`.
    Error(Vec<u8>),
    /// `:n`
    Integer(i64),
    /// `$len` and its bytes.
    Bulk(Vec<u8>),
    /// `$-1` in RESP2, `_` in RESP3.
    Null,
    /// `*-1` in RESP2 (RESP3 has one null, which parses as [`Value::Null`]).
    NullArray,
    /// `*n` and its elements.
    Array(Vec<Value>),
    /// RESP3 `%n` and its key-value pairs.
    Map(Vec<(Value, Value)>),
    /// RESP3 `~n` and its elements.
    Set(Vec<Value>),
    /// RESP3 `,d`
    Double(f64),
    /// RESP3 `#t` / `#f`
    Boolean(bool),
    /// RESP3 `=len` with its three-byte format (`txt`, `mkd`) and text.
    Verbatim([u8; 3], Vec<u8>),
}

impl Value {
    /// `+OK`.
    pub fn ok() -> Value {
        Value::Simple(b"OK".to_vec())
    }

    /// A status reply, `+text` (a CR or LF in `text` goes out as a space).
    pub fn status(text: impl Into<Vec<u8>>) -> Value {
        Value::Simple(text.into())
    }

    /// An error reply carrying Redis's generic code: `-ERR message`.
    pub fn err(message: impl std::fmt::Display) -> Value {
        Value::Error(format!("ERR {message}").into_bytes())
    }

    /// A bulk string.
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Value {
        Value::Bulk(bytes.into())
    }
}

/// Appends `v` as protocol `p` would carry it, RESP3 types downgraded for RESP2 as the encoders
/// do (so RESP2 output parses back as arrays, bulk strings and integers).
pub fn encode_value(out: &mut Vec<u8>, v: &Value, p: Proto) {
    match v {
        Value::Simple(s) => simple(out, s),
        Value::Error(msg) => error(out, msg),
        Value::Integer(n) => integer(out, *n),
        Value::Bulk(b) => bulk(out, b),
        Value::Null => null(out, p),
        Value::NullArray => null_array(out, p),
        Value::Array(items) => {
            array_len(out, items.len());
            for item in items {
                encode_value(out, item, p);
            }
        }
        Value::Map(pairs) => {
            map_len(out, pairs.len(), p);
            for (key, value) in pairs {
                encode_value(out, key, p);
                encode_value(out, value, p);
            }
        }
        Value::Set(items) => {
            set_len(out, items.len(), p);
            for item in items {
                encode_value(out, item, p);
            }
        }
        Value::Double(d) => double(out, *d, p),
        Value::Boolean(b) => boolean(out, *b, p),
        Value::Verbatim(format, text) => verbatim(out, format, text, p),
    }
}

/// Aggregates nested deeper than this are refused, so hostile input cannot exhaust the stack.
const MAX_REPLY_DEPTH: usize = 128;

fn reply_error(what: &str) -> ProtocolError {
    ProtocolError(format!("Protocol error: {what}"))
}

/// Parses one reply (RESP2 or RESP3) from the front of `buf`: `Ok(None)` while incomplete,
/// `Ok(Some((value, consumed)))` once whole. RESP3's blob error `!` parses as [`Value::Error`];
/// big numbers `(`, attributes `|` and pushes `>` have no [`Value`] and are errors.
pub fn parse_value(buf: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    parse_value_at(buf, 0, 0)
}

/// The line starting at `pos` up to its `\r\n`, and the offset after it.
fn reply_line(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = &buf[pos.min(buf.len())..];
    let Some(cr) = memchr(b'\r', rest) else {
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((&rest[..cr], pos + cr + 2))),
        Some(_) => Err(reply_error("expected CRLF at the end of a reply line")),
    }
}

fn parse_value_at(
    buf: &[u8],
    pos: usize,
    depth: usize,
) -> Result<Option<(Value, usize)>, ProtocolError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((line, next)) = reply_line(buf, pos + 1)? else {
        return Ok(None);
    };
    let length = || parse_i64(line).ok_or_else(|| reply_error("invalid length"));
    let value = match kind {
        b'+' => Value::Simple(line.to_vec()),
        b'-' => Value::Error(line.to_vec()),
        b':' => Value::Integer(parse_i64(line).ok_or_else(|| reply_error("invalid integer"))?),
        b'_' if line.is_empty() => Value::Null,
        b'_' => return Err(reply_error("invalid null")),
        b'#' => match line {
            b"t" => Value::Boolean(true),
            b"f" => Value::Boolean(false),
            _ => return Err(reply_error("invalid boolean")),
        },
        b',' => Value::Double(
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| reply_error("invalid double"))?,
        ),
        b'$' | b'!' | b'=' => {
            let len = length()?;
            if len == -1 && kind == b'$' {
                return Ok(Some((Value::Null, next)));
            }
            let len = usize::try_from(len).map_err(|_| reply_error("invalid length"))?;
            let end = next.saturating_add(len);
            if buf.len() < end || buf.len() - end < 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != CRLF {
                return Err(reply_error("bulk string not followed by CRLF"));
            }
            let body = &buf[next..end];
            let value = match kind {
                b'$' => Value::Bulk(body.to_vec()),
                b'!' => Value::Error(body.to_vec()),
                _ => match body {
                    [a, b, c, b':', text @ ..] => Value::Verbatim([*a, *b, *c], text.to_vec()),
                    _ => return Err(reply_error("invalid verbatim string")),
                },
            };
            return Ok(Some((value, end + 2)));
        }
        b'*' | b'~' | b'%' => {
            let len = length()?;
            if len == -1 && kind == b'*' {
                return Ok(Some((Value::NullArray, next)));
            }
            let len = usize::try_from(len).map_err(|_| reply_error("invalid length"))?;
            if depth >= MAX_REPLY_DEPTH {
                return Err(reply_error("reply nested too deeply"));
            }
            let count = if kind == b'%' {
                len.checked_mul(2)
                    .ok_or_else(|| reply_error("invalid length"))?
            } else {
                len
            };
            // Every element takes at least three bytes ("_\r\n"): fewer left means incomplete,
            // and this bounds the allocation below by the input's size.
            if (buf.len() - next) / 3 < count {
                return Ok(None);
            }
            let mut items = Vec::with_capacity(count);
            let mut at = next;
            for _ in 0..count {
                let Some((item, after)) = parse_value_at(buf, at, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at = after;
            }
            let value = match kind {
                b'*' => Value::Array(items),
                b'~' => Value::Set(items),
                _ => {
                    let mut pairs = Vec::with_capacity(len);
                    let mut items = items.into_iter();
                    while let (Some(key), Some(value)) = (items.next(), items.next()) {
                        pairs.push((key, value));
                    }
                    Value::Map(pairs)
                }
            };
            return Ok(Some((value, at)));
        }
        other => {
            return Err(ProtocolError(format!(
                "Protocol error: unsupported reply type '{}'",
                char::from(other)
            )))
        }
    };
    Ok(Some((value, next)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::encode::double_text;

    fn every_variant() -> Vec<Value> {
        vec![
            Value::Simple(b"OK".to_vec()),
            Value::Error(b"ERR wrong".to_vec()),
            Value::Integer(-42),
            Value::Bulk(b"bin\r\n\x00ary".to_vec()),
            Value::Bulk(Vec::new()),
            Value::Null,
            Value::NullArray,
            Value::Array(vec![]),
            Value::Array(vec![Value::Integer(1), Value::Array(vec![Value::Null])]),
            Value::Map(vec![
                (
                    Value::Bulk(b"server".to_vec()),
                    Value::Bulk(b"ringport".to_vec()),
                ),
                (Value::Simple(b"proto".to_vec()), Value::Integer(3)),
            ]),
            Value::Set(vec![Value::Bulk(b"a".to_vec()), Value::Double(2.5)]),
            Value::Double(-1.25e-10),
            Value::Double(3.0),
            Value::Double(f64::INFINITY),
            Value::Double(f64::NEG_INFINITY),
            Value::Boolean(true),
            Value::Boolean(false),
            Value::Verbatim(*b"txt", b"# Server\r\nx:1\r\n".to_vec()),
        ]
    }

    /// What a RESP2 client reads back for a value.
    fn as_resp2(v: &Value) -> Value {
        match v {
            Value::Array(items) | Value::Set(items) => {
                Value::Array(items.iter().map(as_resp2).collect())
            }
            Value::Map(pairs) => Value::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [as_resp2(k), as_resp2(v)])
                    .collect(),
            ),
            Value::Double(d) => Value::Bulk(double_text(*d).into_bytes()),
            Value::Boolean(b) => Value::Integer(i64::from(*b)),
            Value::Verbatim(_, text) => Value::Bulk(text.clone()),
            other => other.clone(),
        }
    }

    /// What a RESP3 client reads back for a value: one null.
    fn as_resp3(v: &Value) -> Value {
        match v {
            Value::NullArray => Value::Null,
            Value::Array(items) => Value::Array(items.iter().map(as_resp3).collect()),
            Value::Set(items) => Value::Set(items.iter().map(as_resp3).collect()),
            Value::Map(pairs) => Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (as_resp3(k), as_resp3(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    #[test]
    fn values_round_trip_in_both_protocols() {
        for (proto, expect) in [
            (Proto::Resp2, as_resp2 as fn(&Value) -> Value),
            (Proto::Resp3, as_resp3),
        ] {
            let mut stream = Vec::new();
            for v in every_variant() {
                let mut out = Vec::new();
                encode_value(&mut out, &v, proto);
                assert_eq!(
                    parse_value(&out),
                    Ok(Some((expect(&v), out.len()))),
                    "{v:?} in {proto:?}"
                );
                for end in 0..out.len() {
                    assert_eq!(parse_value(&out[..end]), Ok(None), "{v:?} cut at {end}");
                }
                stream.extend_from_slice(&out);
            }
            // Back to back.
            let mut pos = 0;
            for v in every_variant() {
                let (parsed, consumed) = parse_value(&stream[pos..]).unwrap().unwrap();
                assert_eq!(parsed, expect(&v));
                pos += consumed;
            }
            assert_eq!(pos, stream.len());
        }
    }

    #[test]
    fn nan_round_trips() {
        let mut out = Vec::new();
        encode_value(&mut out, &Value::Double(f64::NAN), Proto::Resp3);
        match parse_value(&out) {
            Ok(Some((Value::Double(d), 6))) => assert!(d.is_nan()),
            other => panic!("{other:?}"),
        }
        out.clear();
        encode_value(&mut out, &Value::Double(f64::NAN), Proto::Resp2);
        assert_eq!(
            parse_value(&out),
            Ok(Some((Value::Bulk(b"nan".to_vec()), 9)))
        );
    }

    #[test]
    fn parse_value_reads_redis_replies() {
        assert_eq!(
            parse_value(b"!21\r\nSYNTAX invalid syntax\r\n"),
            Ok(Some((Value::Error(b"SYNTAX invalid syntax".to_vec()), 28)))
        );
        assert_eq!(
            parse_value(b",1e+20\r\n"),
            Ok(Some((Value::Double(1e20), 8)))
        );
        assert_eq!(
            parse_value(b"*2\r\n$-1\r\n*-1\r\n"),
            Ok(Some((
                Value::Array(vec![Value::Null, Value::NullArray]),
                14
            )))
        );
    }

    #[test]
    fn parse_value_errors() {
        for bad in [
            &b"?x\r\n"[..],
            b"(12345678901234567890\r\n",
            b">1\r\n:1\r\n",
            b":1x\r\n",
            b"$-2\r\n",
            b"*-2\r\n",
            b"%-1\r\n",
            b"$3\r\nabcde\r\n",
            b"=3\r\ntxt\r\n",
            b"=5\r\ntxt-x\r\n",
            b"#x\r\n",
            b",one\r\n",
            b"_x\r\n",
            b"+OK\rX",
        ] {
            assert!(
                parse_value(bad).is_err(),
                "{:?} parsed",
                bad.escape_ascii().to_string()
            );
        }
        let deep = b"*1\r\n".repeat(MAX_REPLY_DEPTH + 1);
        assert_eq!(
            parse_value(&deep),
            Err(ProtocolError::new(
                "Protocol error: reply nested too deeply"
            ))
        );
    }
}
