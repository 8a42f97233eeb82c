//! Replies out: the writers that append one RESP2 or RESP3 element to a session's output.
//!
//! The RESP3 types fall back to their RESP2 forms as Redis does, so a handler writes one reply
//! whatever the session's [`Proto`].

use std::fmt;

use memchr::memchr2;

/// The protocol version a session speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// RESP2: maps and sets are arrays, nulls are `$-1` / `*-1`, doubles are bulk strings,
    /// booleans are integers.
    Resp2,
    /// RESP3: typed maps, sets, nulls, doubles, booleans and verbatim strings.
    Resp3,
}

pub(super) const CRLF: &[u8] = b"\r\n";

/// Appends `prefix`, `n` in decimal, and `\r\n`.
#[inline]
fn header<I: itoa::Integer>(out: &mut Vec<u8>, prefix: u8, n: I) {
    let mut digits = itoa::Buffer::new();
    out.push(prefix);
    out.extend_from_slice(digits.format(n).as_bytes());
    out.extend_from_slice(CRLF);
}

/// Appends `line` with every `\r` and `\n` turned into a space, so a reply line cannot end early
/// and desynchronise the client.
#[inline]
fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    let start = out.len();
    out.extend_from_slice(line);
    if memchr2(b'\r', b'\n', line).is_some() {
        for b in &mut out[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
    }
    out.extend_from_slice(CRLF);
}

/// A simple string: `+s\r\n`. A `\r` or `\n` in `s` becomes a space.
pub fn simple(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'+');
    push_line(out, s);
}

/// An error: `-msg\r\n`, where `msg` starts with its code, e.g. `b"ERR unknown command 'x'"`.
/// A `\r` or `\n` in `msg` becomes a space, as Redis does.
pub fn error(out: &mut Vec<u8>, msg: &[u8]) {
    out.push(b'-');
    push_line(out, msg);
}

/// An integer: `:n\r\n`.
pub fn integer(out: &mut Vec<u8>, n: i64) {
    header(out, b':', n);
}

/// A bulk string: `$len\r\nb\r\n`; `b` may hold any bytes.
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(b.len() + 24);
    header(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(CRLF);
}

/// A null (a missing key's value): `$-1\r\n` in RESP2, `_\r\n` in RESP3.
pub fn null(out: &mut Vec<u8>, p: Proto) {
    out.extend_from_slice(match p {
        Proto::Resp2 => b"$-1\r\n",
        Proto::Resp3 => b"_\r\n",
    });
}

/// A null array: `*-1\r\n` in RESP2, `_\r\n` in RESP3.
pub fn null_array(out: &mut Vec<u8>, p: Proto) {
    out.extend_from_slice(match p {
        Proto::Resp2 => b"*-1\r\n",
        Proto::Resp3 => b"_\r\n",
    });
}

/// The header of an array of `n` elements: `*n\r\n`; the elements follow.
pub fn array_len(out: &mut Vec<u8>, n: usize) {
    header(out, b'*', n);
}

/// The header of a map of `n` key-value pairs, keys and values following alternately:
/// `%n\r\n` in RESP3, an array of `2n` elements in RESP2.
pub fn map_len(out: &mut Vec<u8>, n: usize, p: Proto) {
    match p {
        Proto::Resp2 => header(out, b'*', n.saturating_mul(2)),
        Proto::Resp3 => header(out, b'%', n),
    }
}

/// The header of a set of `n` elements: `~n\r\n` in RESP3, an array in RESP2.
pub fn set_len(out: &mut Vec<u8>, n: usize, p: Proto) {
    match p {
        Proto::Resp2 => header(out, b'*', n),
        Proto::Resp3 => header(out, b'~', n),
    }
}

/// A double: `,d\r\n` in RESP3, a bulk string in RESP2, written as Redis 7.2's `d2string` does
/// (`inf`, `-inf`, `nan`, `-0`; integral values as integers; otherwise the shortest digits that
/// read back as `d`, in exponent form `1.5e+20` only when very large or small).
pub fn double(out: &mut Vec<u8>, d: f64, p: Proto) {
    let mut text = StackText::new();
    format_double(d, &mut text);
    match p {
        Proto::Resp2 => bulk(out, text.as_bytes()),
        Proto::Resp3 => {
            out.push(b',');
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(CRLF);
        }
    }
}

/// A boolean: `#t\r\n` / `#f\r\n` in RESP3, `:1\r\n` / `:0\r\n` in RESP2.
pub fn boolean(out: &mut Vec<u8>, b: bool, p: Proto) {
    out.extend_from_slice(match (p, b) {
        (Proto::Resp2, true) => b":1\r\n",
        (Proto::Resp2, false) => b":0\r\n",
        (Proto::Resp3, true) => b"#t\r\n",
        (Proto::Resp3, false) => b"#f\r\n",
    });
}

/// A verbatim string (INFO's reply), `format` being e.g. `b"txt"`:
/// `=len\r\ntxt:text\r\n` in RESP3, a bulk string of `text` alone in RESP2.
pub fn verbatim(out: &mut Vec<u8>, format: &[u8; 3], text: &[u8], p: Proto) {
    match p {
        Proto::Resp2 => bulk(out, text),
        Proto::Resp3 => {
            out.reserve(text.len() + 28);
            header(out, b'=', text.len() + 4);
            out.extend_from_slice(format);
            out.push(b':');
            out.extend_from_slice(text);
            out.extend_from_slice(CRLF);
        }
    }
}

/// Room for any double `format_double` writes (at most 26 bytes) and `{:e}`'s output (24).
const DOUBLE_TEXT_CAPACITY: usize = 32;

/// A small text buffer on the stack, so formatting a double allocates nothing.
struct StackText {
    bytes: [u8; DOUBLE_TEXT_CAPACITY],
    len: usize,
}

impl StackText {
    fn new() -> Self {
        StackText {
            bytes: [0; DOUBLE_TEXT_CAPACITY],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.len + s.len() > self.bytes.len() {
            return Err(fmt::Error);
        }
        self.extend(s.as_bytes());
        Ok(())
    }
}

/// `d` as an integer when that loses nothing, as Redis's `double2ll`: integral and within
/// ±`i64::MAX / 2`.
fn double_to_i64(d: f64) -> Option<i64> {
    let limit = (i64::MAX / 2) as f64;
    if !(-limit..=limit).contains(&d) {
        return None;
    }
    let n = d as i64;
    (n as f64 == d).then_some(n)
}

/// Writes `d` as Redis 7.2's `d2string`, whose general case is `fpconv_dtoa`: the shortest
/// digits that read back as `d` (Rust's `{:e}` finds them), laid out the way `fpconv`'s
/// `emit_digits` lays them out.
fn format_double(d: f64, text: &mut StackText) {
    if d.is_nan() {
        return text.extend(b"nan");
    }
    if d.is_infinite() {
        return text.extend(if d < 0.0 { b"-inf" } else { b"inf" });
    }
    if d == 0.0 {
        return text.extend(if d.is_sign_negative() { b"-0" } else { b"0" });
    }
    if let Some(n) = double_to_i64(d) {
        return text.extend(itoa::Buffer::new().format(n).as_bytes());
    }

    // Shortest round-trip digits and the decimal exponent of the first: "1.2345e-7".
    let mut scientific = StackText::new();
    let written = fmt::Write::write_fmt(&mut scientific, format_args!("{:e}", d.abs()));
    debug_assert!(written.is_ok(), "an f64 in {{:e}} fits in 32 bytes");
    let scientific = scientific.as_bytes();
    let e = scientific
        .iter()
        .position(|&b| b == b'e')
        .unwrap_or(scientific.len());
    let mut digits = [0u8; 20];
    let mut ndigits = 0usize;
    for &b in scientific[..e].iter().filter(|b| b.is_ascii_digit()) {
        if ndigits < digits.len() {
            digits[ndigits] = b;
            ndigits += 1;
        }
    }
    let digits = &digits[..ndigits];
    let exponent = scientific
        .get(e + 1..)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<i32>().ok())
        .unwrap_or(0);

    // fpconv's terms: value = digits × 10^k, and `exp` is the magnitude of the exponent of the
    // first digit.
    let ndigits = ndigits as i32;
    let k = exponent - (ndigits - 1);
    let exp = exponent.abs();
    if d < 0.0 {
        text.push(b'-');
    }
    if k >= 0 && exp < ndigits + 7 {
        // A plain integer: the digits, then k zeros.
        text.extend(digits);
        for _ in 0..k {
            text.push(b'0');
        }
    } else if k < 0 && (k > -7 || exp < 4) {
        // A decimal fraction without an exponent.
        let point = ndigits + k;
        if point <= 0 {
            text.extend(b"0.");
            for _ in 0..-point {
                text.push(b'0');
            }
            text.extend(digits);
        } else {
            let (whole, fraction) = digits.split_at(point as usize);
            text.extend(whole);
            text.push(b'.');
            text.extend(fraction);
        }
    } else {
        // Exponent form: d[.ddd]e±x, the exponent without leading zeros.
        text.push(digits[0]);
        if digits.len() > 1 {
            text.push(b'.');
            text.extend(&digits[1..]);
        }
        text.push(b'e');
        text.push(if exponent < 0 { b'-' } else { b'+' });
        text.extend(itoa::Buffer::new().format(exp).as_bytes());
    }
}

/// `d` as [`double`] writes it in RESP2, for tests that predict replies.
#[cfg(test)]
pub(super) fn double_text(d: f64) -> String {
    let mut text = StackText::new();
    format_double(d, &mut text);
    String::from_utf8(text.as_bytes().to_vec()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn encoders_write_resp2_and_resp3() {
        use Proto::{Resp2, Resp3};
        assert_eq!(encoded(|o| simple(o, b"OK")), b"+OK\r\n");
        assert_eq!(encoded(|o| simple(o, b"a\r\nb")), b"+a  b\r\n");
        assert_eq!(
            encoded(|o| error(o, b"ERR unknown command 'x'")),
            b"-ERR unknown command 'x'\r\n"
        );
        assert_eq!(
            encoded(|o| error(o, b"ERR a\r\nb\nc\r")),
            b"-ERR a  b c \r\n"
        );
        assert_eq!(encoded(|o| integer(o, 0)), b":0\r\n");
        assert_eq!(
            encoded(|o| integer(o, i64::MIN)),
            b":-9223372036854775808\r\n"
        );
        assert_eq!(encoded(|o| bulk(o, b"")), b"$0\r\n\r\n");
        assert_eq!(encoded(|o| bulk(o, b"a\r\nb")), b"$4\r\na\r\nb\r\n");
        assert_eq!(encoded(|o| null(o, Resp2)), b"$-1\r\n");
        assert_eq!(encoded(|o| null(o, Resp3)), b"_\r\n");
        assert_eq!(encoded(|o| null_array(o, Resp2)), b"*-1\r\n");
        assert_eq!(encoded(|o| null_array(o, Resp3)), b"_\r\n");
        assert_eq!(encoded(|o| array_len(o, 3)), b"*3\r\n");
        assert_eq!(encoded(|o| map_len(o, 3, Resp2)), b"*6\r\n");
        assert_eq!(encoded(|o| map_len(o, 3, Resp3)), b"%3\r\n");
        assert_eq!(encoded(|o| set_len(o, 2, Resp2)), b"*2\r\n");
        assert_eq!(encoded(|o| set_len(o, 2, Resp3)), b"~2\r\n");
        assert_eq!(encoded(|o| double(o, 1.5, Resp2)), b"$3\r\n1.5\r\n");
        assert_eq!(encoded(|o| double(o, 1.5, Resp3)), b",1.5\r\n");
        assert_eq!(
            encoded(|o| double(o, f64::INFINITY, Resp2)),
            b"$3\r\ninf\r\n"
        );
        assert_eq!(
            encoded(|o| double(o, f64::NEG_INFINITY, Resp3)),
            b",-inf\r\n"
        );
        assert_eq!(encoded(|o| double(o, f64::NAN, Resp3)), b",nan\r\n");
        assert_eq!(encoded(|o| boolean(o, true, Resp2)), b":1\r\n");
        assert_eq!(encoded(|o| boolean(o, false, Resp2)), b":0\r\n");
        assert_eq!(encoded(|o| boolean(o, true, Resp3)), b"#t\r\n");
        assert_eq!(encoded(|o| boolean(o, false, Resp3)), b"#f\r\n");
        assert_eq!(
            encoded(|o| verbatim(o, b"txt", b"# Server\r\n", Resp2)),
            b"$10\r\n# Server\r\n\r\n"
        );
        assert_eq!(
            encoded(|o| verbatim(o, b"txt", b"# Server\r\n", Resp3)),
            b"=14\r\ntxt:# Server\r\n\r\n"
        );
    }

    #[test]
    fn doubles_are_written_as_redis_d2string() {
        for (d, expected) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-3.0, "-3"),
            (1.5, "1.5"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (2.71, "2.71"),
            (0.0001, "0.0001"),
            (1.5e-5, "0.000015"),
            (1e-7, "1e-7"),
            (1.25e-10, "1.25e-10"),
            (1e18, "1000000000000000000"),
            (1e20, "1e+20"),
            (1.2345678901234568e20, "123456789012345680000"),
            (1.2345678901234568e25, "1.2345678901234568e+25"),
            (1e300, "1e+300"),
            (-1e-300, "-1e-300"),
            (123456.789, "123456.789"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(double_text(d), expected, "{d:e}");
        }
    }

    #[test]
    fn doubles_read_back_exactly() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let d = f64::from_bits(rng.gen());
            if d.is_nan() {
                continue;
            }
            let text = double_text(d);
            assert!(text.len() <= 26, "{text}");
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                d.to_bits(),
                "{text}"
            );
        }
    }
}
