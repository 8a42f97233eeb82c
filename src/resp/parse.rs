//! Commands from clients: [`parse_command`] and the [`Args`] it fills.
//!
//! [`parse_command`] takes one command off the front of a session's unconsumed input, in either of
//! the two forms Redis accepts: a multibulk array (`*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n`, what programs
//! send) or an inline line (`PING hi\r\n`, what a person types into telnet). It follows Redis 7's
//! `processMultibulkBuffer`, `processInlineBuffer` and `sdssplitargs` closely, down to the wording of
//! every protocol error, so clients see the same answers from ringport as from Redis. A session
//! calls it again on the same, longer buffer after every receive; it copies nothing until the
//! whole command is there, so a 16 MiB bulk that arrives in a thousand pieces is copied once.
//! [`parse_command_resuming`] also remembers, in a [`Progress`], how many arguments of a partial
//! multibulk it already checked, so a million-argument command arriving in small pieces is
//! walked once rather than once per piece; [`parse_command`] starts from scratch every time.
//!
//! The arguments land in [`Args`]: one `Vec<u8>` holding every argument back to back plus one end
//! offset per argument, rather than a `Vec<Vec<u8>>`. A session keeps one `Args` and refills it for
//! every command, so once the two vectors have grown to the session's largest command, parsing
//! allocates nothing; a vector per argument would cost an allocation per argument per command.

use std::fmt;
use std::ops::{Index, Range};

use memchr::memchr;

/// Default [`Limits::max_bulk_len`]: 16 MiB.
pub const DEFAULT_MAX_BULK_LEN: usize = 16 * 1024 * 1024;
/// Default [`Limits::max_inline_len`]: 64 KiB, Redis's `PROTO_INLINE_MAX_SIZE`.
pub const DEFAULT_MAX_INLINE_LEN: usize = 64 * 1024;
/// Default [`Limits::max_multibulk_len`]: 1024 × 1024 arguments.
pub const DEFAULT_MAX_MULTIBULK_LEN: usize = 1024 * 1024;

const ERR_TOO_BIG_INLINE: &str = "Protocol error: too big inline request";
const ERR_UNBALANCED_QUOTES: &str = "Protocol error: unbalanced quotes in request";
const ERR_TOO_BIG_MBULK_COUNT: &str = "Protocol error: too big mbulk count string";
const ERR_INVALID_MBULK_LEN: &str = "Protocol error: invalid multibulk length";
const ERR_TOO_BIG_BULK_COUNT: &str = "Protocol error: too big bulk count string";
const ERR_INVALID_BULK_LEN: &str = "Protocol error: invalid bulk length";
/// Redis skips the two bytes after a bulk body unchecked; ringport refuses anything but CRLF there,
/// since anything else means the client and server disagree on where the argument ended.
const ERR_BULK_NOT_CRLF: &str = "Protocol error: bulk argument not followed by CRLF";
/// Redis 7's words for its limits before AUTH (CVE-2021-32675).
const ERR_UNAUTH_MBULK_LEN: &str = "Protocol error: unauthenticated multibulk length";
const ERR_UNAUTH_BULK_LEN: &str = "Protocol error: unauthenticated bulk length";
/// Redis limits only multibulk before AUTH; an inline line is held to the same count, in the
/// same words' style.
const ERR_UNAUTH_INLINE_ARGS: &str = "Protocol error: unauthenticated inline request";

/// Limits the parser enforces, each answered with Redis's error wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk argument in bytes (Redis `proto-max-bulk-len`); a longer one is
    /// "invalid bulk length", reported as soon as its header arrives.
    pub max_bulk_len: usize,
    /// Most bytes buffered without a line end: for an inline command ("too big inline request")
    /// and for a multibulk count or bulk length line ("too big mbulk count string",
    /// "too big bulk count string"), as Redis's `PROTO_INLINE_MAX_SIZE` does for all three.
    pub max_inline_len: usize,
    /// Most arguments in one command, multibulk or inline; more is "invalid multibulk length".
    pub max_multibulk_len: usize,
    /// These are the limits before AUTH: a bulk or count over them is worded as Redis words
    /// its unauthenticated limits, so the client can tell why it was refused.
    pub unauthenticated: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: DEFAULT_MAX_BULK_LEN,
            max_inline_len: DEFAULT_MAX_INLINE_LEN,
            max_multibulk_len: DEFAULT_MAX_MULTIBULK_LEN,
            unauthenticated: false,
        }
    }
}

/// A protocol error: the text the client gets after `-ERR `, e.g.
/// `Protocol error: invalid bulk length`. After one the session replies and closes, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    pub(super) fn new(message: &str) -> Self {
        ProtocolError(message.to_owned())
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// A parsed command's arguments, stored contiguously in one reusable buffer so that parsing
/// allocates nothing once warm.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// Every argument's bytes, back to back.
    data: Vec<u8>,
    /// `ends[i]` is the offset in `data` just past argument `i`, which starts at `ends[i - 1]`
    /// (at 0 for the first). While [`parse_command`] scans a multibulk command it holds the
    /// arguments' `start, end` offsets in the input instead; see `parse_multibulk`.
    ends: Vec<usize>,
}

impl Args {
    /// No arguments, no allocation.
    pub fn new() -> Self {
        Args::default()
    }

    /// Removes every argument, keeping the capacity.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// The number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no arguments (an empty inline line, `*0` or `*-1`).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The arguments' bytes together, what holding them costs (less a few words each).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Argument `i`, or `None` past the last.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1],
        };
        Some(&self.data[start..end])
    }

    /// The arguments in order.
    pub fn iter(&self) -> ArgsIter<'_> {
        ArgsIter {
            args: self,
            front: 0,
            back: self.len(),
        }
    }

    /// Appends one argument.
    pub fn push(&mut self, arg: &[u8]) {
        self.data.extend_from_slice(arg);
        self.end_arg();
    }

    /// Copies the arguments out, one vector each.
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    /// Ends the argument whose bytes were appended to `data` since the previous end.
    fn end_arg(&mut self) {
        self.ends.push(self.data.len());
    }
}

impl Index<usize> for Args {
    type Output = [u8];

    /// Argument `i`; panics past the last, like a slice.
    fn index(&self, i: usize) -> &[u8] {
        match self.get(i) {
            Some(arg) => arg,
            None => panic!(
                "argument index {i} out of range for a command of {} arguments",
                self.len()
            ),
        }
    }
}

impl fmt::Debug for Args {
    /// As a list of byte strings, escaped: `["SET", "k", "\x00\r\n"]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(EscapedBytes))
            .finish()
    }
}

impl<'a> IntoIterator for &'a Args {
    type Item = &'a [u8];
    type IntoIter = ArgsIter<'a>;

    fn into_iter(self) -> ArgsIter<'a> {
        self.iter()
    }
}

/// Iterator over a command's arguments, from [`Args::iter`].
#[derive(Debug, Clone)]
pub struct ArgsIter<'a> {
    args: &'a Args,
    front: usize,
    back: usize,
}

impl<'a> Iterator for ArgsIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.front == self.back {
            return None;
        }
        self.front += 1;
        self.args.get(self.front - 1)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.back - self.front;
        (remaining, Some(remaining))
    }
}

impl DoubleEndedIterator for ArgsIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front == self.back {
            return None;
        }
        self.back -= 1;
        self.args.get(self.back)
    }
}

impl ExactSizeIterator for ArgsIter<'_> {}

/// Bytes shown as an escaped string in `Debug` output.
struct EscapedBytes<'a>(&'a [u8]);

impl fmt::Debug for EscapedBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// Parses an integer exactly as Redis's `string2ll` does: an optional `-`, then digits with no
/// leading zero (`0` alone is fine), no `+`, no spaces, no `-0`, within `i64`. Redis parses
/// lengths and integer arguments (`INCRBY`, `EXPIRE`, ...) this way; `None` is Redis's
/// "value is not an integer or out of range".
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    // string2ll refuses 21 bytes or more (LONG_STR_SIZE); i64::MIN is 20.
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(c - b'0'))?;
    }
    if negative {
        // -(2^63) is i64::MIN; anything larger does not fit.
        if magnitude > i64::MAX as u64 + 1 {
            return None;
        }
        Some(0i64.wrapping_sub_unsigned(magnitude))
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Parses one command from the front of `buf`: a multibulk array when `buf` starts with `*`,
/// otherwise an inline line.
///
/// - `Ok(None)`: `buf` holds only part of a command; call again when more bytes have arrived
///   (with the same bytes still at the front). `args` is left empty.
/// - `Ok(Some(consumed))`: the first `consumed` bytes were one command, now in `args` (cleared
///   first). `args` may be empty (an empty inline line, `*0`, `*-1`): the caller skips the
///   command, as Redis does.
/// - `Err(error)`: the client broke the protocol; reply `-ERR {error}` and close the session.
///   `args` is left empty.
///
/// The answer depends only on the bytes, never on how they were split into receives: a limit
/// is checked against the bytes the limit covers, not against whatever happened to arrive.
pub fn parse_command(
    buf: &[u8],
    limits: &Limits,
    args: &mut Args,
) -> Result<Option<usize>, ProtocolError> {
    parse_command_resuming(buf, limits, args, &mut Progress::default())
}

/// How far [`parse_command_resuming`] got into a partial multibulk command: the arguments before
/// `pos` (there are `args` of them) are complete and valid. Every session keeps one, so it is
/// two `u32`s; a command past 4 GiB keeps no progress and is scanned from its start each time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    args: u32,
    pos: u32,
}

impl Progress {
    fn at(args: usize, pos: usize) -> Progress {
        match (u32::try_from(args), u32::try_from(pos)) {
            (Ok(args), Ok(pos)) => Progress { args, pos },
            _ => Progress::default(),
        }
    }
}

/// [`parse_command`], resuming a partial multibulk command where the previous call on the same
/// bytes stopped. `progress` must belong to the command at the front of `buf` (the same bytes as
/// when it was written, possibly more after them): start with `Progress::default()` and keep it
/// only while the caller keeps those bytes at the front. Any answer but `Ok(None)` resets it.
pub fn parse_command_resuming(
    buf: &[u8],
    limits: &Limits,
    args: &mut Args,
    progress: &mut Progress,
) -> Result<Option<usize>, ProtocolError> {
    debug_assert!(progress.pos as usize <= buf.len());
    args.clear();
    let parsed = match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf, limits, args, progress),
        Some(_) => parse_inline(buf, limits, args),
    };
    if !matches!(parsed, Ok(None)) {
        *progress = Progress::default();
    }
    if !matches!(parsed, Ok(Some(_))) {
        args.clear();
    }
    parsed
}

/// Where the next line ends, for a line that may be at most `limit` bytes before its `\r`.
enum LineEnd {
    /// The `\r` and at least one byte after it have not arrived yet.
    Incomplete,
    /// More than `limit` bytes without a `\r`: the line can never be valid.
    TooLong,
    /// The `\r` is at this offset of the buffer, and a byte follows it.
    At(usize),
}

/// Finds the `\r` that ends the line starting at `start`, as Redis finds a length line: by its
/// `\r`, which must be followed by one more byte before the line counts as complete.
fn find_line_end(buf: &[u8], start: usize, limit: usize) -> LineEnd {
    let rest = &buf[start..];
    let window = &rest[..rest.len().min(limit.saturating_add(1))];
    match memchr(b'\r', window) {
        Some(cr) if cr + 1 < rest.len() => LineEnd::At(start + cr),
        Some(_) => LineEnd::Incomplete,
        None if rest.len() > limit => LineEnd::TooLong,
        None => LineEnd::Incomplete,
    }
}

/// `*N\r\n` then N bulk arguments `$len\r\n<len bytes>\r\n` (Redis `processMultibulkBuffer`).
fn parse_multibulk(
    buf: &[u8],
    limits: &Limits,
    args: &mut Args,
    progress: &mut Progress,
) -> Result<Option<usize>, ProtocolError> {
    let cr = match find_line_end(buf, 0, limits.max_inline_len) {
        LineEnd::Incomplete => return Ok(None),
        LineEnd::TooLong => return Err(ProtocolError::new(ERR_TOO_BIG_MBULK_COUNT)),
        LineEnd::At(cr) => cr,
    };
    let count = match parse_i64(&buf[1..cr]) {
        Some(count) if buf[cr + 1] == b'\n' => count,
        _ => return Err(ProtocolError::new(ERR_INVALID_MBULK_LEN)),
    };
    let mut pos = cr + 2;
    // `*0` and any negative count are an empty command, which the caller skips.
    let Ok(count) = usize::try_from(count) else {
        return Ok(Some(pos));
    };
    if count > limits.max_multibulk_len {
        return Err(ProtocolError::new(if limits.unauthenticated {
            ERR_UNAUTH_MBULK_LEN
        } else {
            ERR_INVALID_MBULK_LEN
        }));
    }

    // Pass 1: find every argument without copying, from where an earlier call on these bytes
    // stopped. `args.ends` (empty, capacity kept) holds each argument's `start, end` offsets in
    // `buf` meanwhile, for the arguments found in this call.
    let first_arg = progress.args as usize;
    if first_arg > 0 {
        pos = progress.pos as usize;
    }
    let mut total_len = 0;
    for i in first_arg..count {
        match scan_bulk(buf, pos, limits)? {
            None => {
                *progress = Progress::at(i, pos);
                return Ok(None);
            }
            Some(body) => {
                total_len += body.len();
                pos = body.end + 2;
                args.ends.push(body.start);
                args.ends.push(body.end);
            }
        }
    }
    if first_arg > 0 {
        // Resumed: the offsets found by earlier calls were not kept, so walk the headers once
        // more now that the command is complete (once per command, not once per receive).
        args.ends.clear();
        total_len = 0;
        let mut at = cr + 2;
        for _ in 0..count {
            let body = scan_bulk(buf, at, limits)?.expect("checked complete above");
            total_len += body.len();
            at = body.end + 2;
            args.ends.push(body.start);
            args.ends.push(body.end);
        }
    }

    // Pass 2: the command is complete; copy the arguments and turn the offset pairs into ends.
    // Entry `i` is written after entries `2i` and `2i + 1` are read, and `i <= 2i`, so no pair is
    // overwritten before it is used.
    args.data.reserve(total_len);
    for i in 0..count {
        let (start, end) = (args.ends[2 * i], args.ends[2 * i + 1]);
        args.data.extend_from_slice(&buf[start..end]);
        args.ends[i] = args.data.len();
    }
    args.ends.truncate(count);
    Ok(Some(pos))
}

/// One bulk argument's header and body starting at `pos`: `Ok(Some(body))` once the body and its
/// `\r\n` are all in `buf`. A bad header is an error as soon as the header line is complete,
/// without waiting for the body.
fn scan_bulk(
    buf: &[u8],
    pos: usize,
    limits: &Limits,
) -> Result<Option<Range<usize>>, ProtocolError> {
    let cr = match find_line_end(buf, pos, limits.max_inline_len) {
        LineEnd::Incomplete => return Ok(None),
        LineEnd::TooLong => return Err(ProtocolError::new(ERR_TOO_BIG_BULK_COUNT)),
        LineEnd::At(cr) => cr,
    };
    if buf[pos] != b'$' {
        return Err(ProtocolError(format!(
            "Protocol error: expected '$', got '{}'",
            char::from(buf[pos])
        )));
    }
    let len = parse_i64(&buf[pos + 1..cr]).and_then(|len| usize::try_from(len).ok());
    let (Some(len), b'\n') = (len, buf[cr + 1]) else {
        return Err(ProtocolError::new(ERR_INVALID_BULK_LEN));
    };
    if len > limits.max_bulk_len {
        return Err(ProtocolError::new(if limits.unauthenticated {
            ERR_UNAUTH_BULK_LEN
        } else {
            ERR_INVALID_BULK_LEN
        }));
    }
    let start = cr + 2;
    let Some(end) = start.checked_add(len) else {
        return Err(ProtocolError::new(ERR_INVALID_BULK_LEN));
    };
    if buf.len() < end || buf.len() - end < 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ProtocolError::new(ERR_BULK_NOT_CRLF));
    }
    Ok(Some(start..end))
}

/// One line up to `\n`, one trailing `\r` dropped, split like `sdssplitargs`
/// (Redis `processInlineBuffer`).
fn parse_inline(
    buf: &[u8],
    limits: &Limits,
    args: &mut Args,
) -> Result<Option<usize>, ProtocolError> {
    // A line may hold `max_inline_len` bytes before its `\n`: look no further than that, so a
    // line that is too long is refused however it was split into receives.
    let window = &buf[..buf.len().min(limits.max_inline_len.saturating_add(1))];
    let Some(newline) = memchr(b'\n', window) else {
        return if buf.len() > limits.max_inline_len {
            Err(ProtocolError::new(ERR_TOO_BIG_INLINE))
        } else {
            Ok(None)
        };
    };
    let line = match buf[..newline].strip_suffix(b"\r") {
        Some(line) => line,
        None => &buf[..newline],
    };
    split_inline(line, args)?;
    if args.len() > limits.max_multibulk_len {
        return Err(ProtocolError::new(if limits.unauthenticated {
            ERR_UNAUTH_INLINE_ARGS
        } else {
            ERR_INVALID_MBULK_LEN
        }));
    }
    Ok(Some(newline + 1))
}

/// The quoting state while reading one inline argument.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

/// C's `isspace` in the C locale: space, `\t`, `\n`, `\v`, `\f`, `\r`.
fn is_c_space(b: u8) -> bool {
    b == b' ' || (b'\t'..=b'\r').contains(&b)
}

/// The byte two hex digits stand for, in either case.
fn hex_byte(high: u8, low: u8) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    Some(digit(high)? << 4 | digit(low)?)
}

/// Splits an inline line into `args` the way Redis's `sdssplitargs` does: arguments separated by
/// whitespace; `"double quotes"` with the escapes `\n \r \t \b \a \xHH` and `\` before any other
/// byte standing for that byte; `'single quotes'` where only `\'` is an escape. A closing quote
/// must be followed by whitespace or the end of the line, and every quote must close; otherwise
/// "unbalanced quotes". The line is read as a C string, so a NUL byte ends it, as in Redis.
fn split_inline(line: &[u8], args: &mut Args) -> Result<(), ProtocolError> {
    let line = match memchr(0, line) {
        Some(nul) => &line[..nul],
        None => line,
    };
    // Like the C code, read a 0 at and past the end of the line.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let unbalanced = || Err(ProtocolError::new(ERR_UNBALANCED_QUOTES));
    let mut i = 0;
    loop {
        while i < line.len() && is_c_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Ok(());
        }
        let mut quote = Quote::None;
        let mut done = false;
        while !done {
            let c = at(i);
            match quote {
                Quote::Double => {
                    let hex_escape = match (c, at(i + 1)) {
                        (b'\\', b'x') => hex_byte(at(i + 2), at(i + 3)),
                        _ => None,
                    };
                    if let Some(byte) = hex_escape {
                        args.data.push(byte);
                        i += 3;
                    } else if c == b'\\' && at(i + 1) != 0 {
                        i += 1;
                        args.data.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    } else if c == b'"' {
                        // A closing quote must be followed by whitespace or the end.
                        if at(i + 1) != 0 && !is_c_space(at(i + 1)) {
                            return unbalanced();
                        }
                        done = true;
                    } else if c == 0 {
                        return unbalanced();
                    } else {
                        args.data.push(c);
                    }
                }
                Quote::Single => match c {
                    b'\\' if at(i + 1) == b'\'' => {
                        i += 1;
                        args.data.push(b'\'');
                    }
                    b'\'' => {
                        if at(i + 1) != 0 && !is_c_space(at(i + 1)) {
                            return unbalanced();
                        }
                        done = true;
                    }
                    0 => return unbalanced(),
                    c => args.data.push(c),
                },
                Quote::None => match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => quote = Quote::Double,
                    b'\'' => quote = Quote::Single,
                    c => args.data.push(c),
                },
            }
            if at(i) != 0 {
                i += 1;
            }
        }
        args.end_arg();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::encode_command;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A parsed command's arguments and the bytes it took.
    type Parsed = Option<(Vec<Vec<u8>>, usize)>;

    fn parse(buf: &[u8]) -> Result<Parsed, ProtocolError> {
        parse_with(buf, &Limits::default())
    }

    fn parse_with(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
        let mut args = Args::new();
        let parsed = parse_command(buf, limits, &mut args)?;
        Ok(parsed.map(|consumed| (args.to_vecs(), consumed)))
    }

    fn vecs(args: &[&[u8]]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.to_vec()).collect()
    }

    fn complete(buf: &[u8], expected: &[&[u8]]) {
        assert_eq!(
            parse(buf),
            Ok(Some((vecs(expected), buf.len()))),
            "parsing {:?}",
            buf.escape_ascii().to_string()
        );
    }

    fn error_text(buf: &[u8]) -> String {
        error_text_with(buf, &Limits::default())
    }

    fn error_text_with(buf: &[u8], limits: &Limits) -> String {
        match parse_with(buf, limits) {
            Err(ProtocolError(text)) => text,
            other => panic!(
                "expected an error for {:?}, got {other:?}",
                buf.escape_ascii().to_string()
            ),
        }
    }

    /// Encodes a command as a client library does.
    fn multibulk(args: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        out
    }
    // --- Args -----------------------------------------------------------------------------------

    #[test]
    fn args_api() {
        let mut args = Args::new();
        assert!(args.is_empty());
        assert_eq!(args.get(0), None);
        args.push(b"SET");
        args.push(b"");
        args.push(b"v\r\n\x00");
        assert_eq!(args.len(), 3);
        assert!(!args.is_empty());
        assert_eq!(&args[0], b"SET");
        assert_eq!(&args[1], b"");
        assert_eq!(args.get(2), Some(&b"v\r\n\x00"[..]));
        assert_eq!(args.get(3), None);
        assert_eq!(
            args.iter().collect::<Vec<_>>(),
            [&b"SET"[..], b"", b"v\r\n\x00"]
        );
        assert_eq!(args.iter().next_back(), Some(&b"v\r\n\x00"[..]));
        assert_eq!(args.iter().len(), 3);
        assert_eq!((&args).into_iter().count(), 3);
        assert_eq!(args.to_vecs(), vecs(&[b"SET", b"", b"v\r\n\x00"]));
        assert_eq!(format!("{args:?}"), r#"["SET", "", "v\r\n\x00"]"#);
        let copy = args.clone();
        assert_eq!(copy, args);
        args.clear();
        assert!(args.is_empty());
        assert_eq!(args, Args::default());
    }

    #[test]
    #[should_panic(expected = "argument index 1 out of range")]
    fn args_index_out_of_range_panics() {
        let mut args = Args::new();
        args.push(b"PING");
        let _ = &args[1];
    }

    #[test]
    fn parse_i64_matches_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"123"), Some(123));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"01",
            b"-0",
            b"00",
            b" 1",
            b"1 ",
            b"1a",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999",
            b"000000000000000000001",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", bad.escape_ascii().to_string());
        }
    }

    // --- Multibulk ------------------------------------------------------------------------------

    #[test]
    fn multibulk_command() {
        complete(b"*1\r\n$4\r\nPING\r\n", &[b"PING"]);
        complete(
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n",
            &[b"SET", b"key", b"value"],
        );
        complete(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", &[b"ECHO", b""]);
    }

    #[test]
    fn multibulk_binary_data_with_crlf_inside() {
        let value = b"a\r\nb\r\n\x00\xff*1\r\n$3\r\n";
        let buf = multibulk(&[b"SET", b"k\r\n", value]);
        complete(&buf, &[b"SET", b"k\r\n", value]);
    }

    #[test]
    fn empty_multibulk_counts_are_empty_commands() {
        complete(b"*0\r\n", &[]);
        complete(b"*-1\r\n", &[]);
        complete(b"*-7\r\n", &[]);
    }

    #[test]
    fn multibulk_incomplete() {
        let buf = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for end in 0..buf.len() {
            assert_eq!(parse(&buf[..end]), Ok(None), "prefix of {end} bytes");
        }
    }

    #[test]
    fn invalid_multibulk_length() {
        for buf in [
            &b"*abc\r\n"[..],
            b"*\r\n",
            b"*+1\r\n",
            b"*01\r\n",
            b"*1x\r\n",
            b"* 1\r\n",
            b"*1048577\r\n",
            b"*99999999999999999999999\r\n",
            b"*1\rX",
        ] {
            assert_eq!(error_text(buf), "Protocol error: invalid multibulk length");
        }
        // At the limit is fine.
        assert_eq!(parse(b"*1048576\r\n$1\r\n"), Ok(None));
        let limits = Limits {
            max_multibulk_len: 2,
            ..Limits::default()
        };
        assert_eq!(
            error_text_with(b"*3\r\n", &limits),
            "Protocol error: invalid multibulk length"
        );
    }

    #[test]
    fn limits_before_auth_are_worded_as_redis_words_them() {
        let limits = Limits {
            max_bulk_len: 8,
            max_inline_len: 8,
            max_multibulk_len: 2,
            unauthenticated: true,
        };
        for (buf, text) in [
            (&b"*3\r\n"[..], "unauthenticated multibulk length"),
            (b"*1\r\n$9\r\n", "unauthenticated bulk length"),
            (b"a b c\r\n", "unauthenticated inline request"),
            (b"AUTH abcdefgh", "too big inline request"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
        ] {
            assert_eq!(
                error_text_with(buf, &limits),
                format!("Protocol error: {text}")
            );
        }
        assert_eq!(
            parse_with(b"*2\r\n$4\r\nAUTH\r\n$8\r\nsecret12\r\n", &limits),
            Ok(Some((vecs(&[b"AUTH", b"secret12"]), 28)))
        );
    }

    #[test]
    fn too_big_mbulk_count_string() {
        // Like Redis, count the buffered bytes from the `*` on.
        let mut buf = b"*".to_vec();
        buf.resize(DEFAULT_MAX_INLINE_LEN, b'1');
        assert_eq!(parse(&buf), Ok(None));
        buf.push(b'1');
        assert_eq!(
            error_text(&buf),
            "Protocol error: too big mbulk count string"
        );
    }

    #[test]
    fn expected_dollar() {
        assert_eq!(
            error_text(b"*1\r\nX3\r\nfoo\r\n"),
            "Protocol error: expected '$', got 'X'"
        );
        assert_eq!(
            error_text(b"*2\r\n$3\r\nGET\r\n:1\r\n"),
            "Protocol error: expected '$', got ':'"
        );
        // As in Redis, the header line must be complete before it is judged.
        assert_eq!(parse(b"*1\r\nX3"), Ok(None));
    }

    #[test]
    fn invalid_bulk_length_without_waiting_for_the_body() {
        for buf in [
            &b"*1\r\n$abc\r\n"[..],
            b"*1\r\n$-1\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$+3\r\n",
            b"*1\r\n$03\r\n",
            b"*1\r\n$16777217\r\n",
            b"*1\r\n$99999999999999999999\r\n",
            b"*2\r\n$3\r\nGET\r\n$99999999\r\n",
            b"*1\r\n$3\rX",
        ] {
            assert_eq!(error_text(buf), "Protocol error: invalid bulk length");
        }
        // Exactly the limit waits for the body.
        assert_eq!(parse(b"*1\r\n$16777216\r\n"), Ok(None));
        let limits = Limits {
            max_bulk_len: 3,
            ..Limits::default()
        };
        assert_eq!(
            error_text_with(b"*1\r\n$4\r\n", &limits),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            parse_with(b"*1\r\n$3\r\nabc\r\n", &limits),
            Ok(Some((vecs(&[b"abc"]), 13)))
        );
    }

    #[test]
    fn too_big_bulk_count_string() {
        let mut buf = b"*1\r\n$".to_vec();
        buf.resize(4 + DEFAULT_MAX_INLINE_LEN, b'1');
        assert_eq!(parse(&buf), Ok(None));
        buf.push(b'1');
        assert_eq!(
            error_text(&buf),
            "Protocol error: too big bulk count string"
        );
    }

    #[test]
    fn bulk_body_must_end_with_crlf() {
        for buf in [
            &b"*1\r\n$3\r\nfooXY"[..],
            b"*1\r\n$3\r\nfoo\n\r",
            b"*1\r\n$3\r\nfoo\rX",
        ] {
            assert_eq!(
                error_text(buf),
                "Protocol error: bulk argument not followed by CRLF"
            );
        }
        assert_eq!(parse(b"*1\r\n$3\r\nfoo\r"), Ok(None));
    }

    #[test]
    fn partial_big_bulk_is_not_copied() {
        let mut buf = b"*2\r\n$3\r\nSET\r\n$1000000\r\n".to_vec();
        buf.resize(buf.len() + 999_999, b'x');
        let mut args = Args::new();
        args.push(b"stale");
        let capacity = args.data.capacity();
        assert_eq!(parse_command(&buf, &Limits::default(), &mut args), Ok(None));
        assert!(args.is_empty());
        assert_eq!(
            args.data.capacity(),
            capacity,
            "nothing was copied into args"
        );
        buf.extend_from_slice(b"x\r\n");
        assert_eq!(
            parse_command(&buf, &Limits::default(), &mut args),
            Ok(Some(buf.len()))
        );
        assert_eq!(args.len(), 2);
        assert_eq!(args[1].len(), 1_000_000);
    }

    #[test]
    fn args_are_reused_without_allocating() {
        let buf = multibulk(&[b"SET", b"key", b"a value"]);
        let mut args = Args::new();
        parse_command(&buf, &Limits::default(), &mut args).unwrap();
        let (data_ptr, ends_ptr) = (args.data.as_ptr(), args.ends.as_ptr());
        for _ in 0..10 {
            parse_command(&buf, &Limits::default(), &mut args).unwrap();
            assert_eq!(args.data.as_ptr(), data_ptr);
            assert_eq!(args.ends.as_ptr(), ends_ptr);
        }
    }

    // --- Inline ---------------------------------------------------------------------------------

    #[test]
    fn inline_command() {
        complete(b"PING\r\n", &[b"PING"]);
        complete(b"PING\n", &[b"PING"]);
        complete(b"AUTH alice secret\r\n", &[b"AUTH", b"alice", b"secret"]);
        complete(b"  SET \t k   v  \r\n", &[b"SET", b"k", b"v"]);
        // Only one trailing \r goes; the other is whitespace.
        complete(b"GET k\r\r\n", &[b"GET", b"k"]);
        // \v and \f separate arguments only as leading blanks, as in sdssplitargs.
        complete(b"a\x0bb \x0cc\n", &[b"a\x0bb", b"c"]);
        assert_eq!(parse(b"PING"), Ok(None));
        assert_eq!(parse(b"PING\r"), Ok(None));
    }

    #[test]
    fn inline_empty_lines() {
        complete(b"\r\n", &[]);
        complete(b"\n", &[]);
        complete(b"   \t \r\n", &[]);
        complete(b"\r\r\n", &[]);
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn inline_double_quotes_and_escapes() {
        complete(b"SET \"a key\" \"\"\r\n", &[b"SET", b"a key", b""]);
        complete(
            b"ECHO \"\\n\\r\\t\\b\\a\\\\\\\"\"\n",
            &[b"ECHO", b"\n\r\t\x08\x07\\\""],
        );
        complete(b"ECHO \"\\x41\\xfF\\x00z\"\n", &[b"ECHO", b"A\xff\x00z"]);
        // \x without two hex digits, and any other escaped byte, stand for that byte.
        complete(b"ECHO \"\\xg1\\q\\x4\"\n", &[b"ECHO", b"xg1qx4"]);
        // A quote may open in the middle of an argument.
        complete(b"ECHO ab\"c d\"\n", &[b"ECHO", b"abc d"]);
        // A single quote inside double quotes is literal.
        complete(b"ECHO \"it's\"\n", &[b"ECHO", b"it's"]);
        // A closing quote followed by a tab or \r is fine.
        complete(b"ECHO \"a\"\tb\n", &[b"ECHO", b"a", b"b"]);
        complete(b"ECHO \"a\"\r\r\n", &[b"ECHO", b"a"]);
    }

    #[test]
    fn inline_single_quotes() {
        complete(b"SET 'a key' ''\n", &[b"SET", b"a key", b""]);
        complete(b"ECHO 'it\\'s'\n", &[b"ECHO", b"it's"]);
        // Only \' is an escape inside single quotes.
        complete(b"ECHO 'a\\nb\\\\ c'\n", &[b"ECHO", b"a\\nb\\\\ c"]);
        complete(b"ECHO 'say \"hi\"'\n", &[b"ECHO", b"say \"hi\""]);
    }

    #[test]
    fn inline_nul_ends_the_line_as_in_redis() {
        complete(b"SET a b\x00c d\r\n", &[b"SET", b"a", b"b"]);
        assert_eq!(
            error_text(b"SET \"a\x00\"\r\n"),
            "Protocol error: unbalanced quotes in request"
        );
    }

    #[test]
    fn unbalanced_quotes() {
        for buf in [
            &b"SET \"a\"b\r\n"[..],
            b"SET \"abc\r\n",
            b"SET 'a'b\n",
            b"SET 'abc\n",
            b"ECHO \"a\\\"\n",
            b"ECHO \"\\\n",
            b"ECHO 'a\\'\n",
            b"\"\n",
        ] {
            assert_eq!(
                error_text(buf),
                "Protocol error: unbalanced quotes in request"
            );
        }
    }

    #[test]
    fn too_big_inline_request() {
        let mut buf = vec![b'a'; DEFAULT_MAX_INLINE_LEN];
        assert_eq!(parse(&buf), Ok(None));
        let mut exactly_at_limit = buf.clone();
        exactly_at_limit.push(b'\n');
        assert_eq!(
            parse(&exactly_at_limit).map(|parsed| parsed.map(|(args, n)| (args.len(), n))),
            Ok(Some((1, DEFAULT_MAX_INLINE_LEN + 1)))
        );
        buf.push(b'a');
        assert_eq!(error_text(&buf), "Protocol error: too big inline request");
        // Refused as soon as the limit is passed, even if a newline would follow later...
        buf.extend_from_slice(b"\r\n");
        assert_eq!(error_text(&buf), "Protocol error: too big inline request");
        // ...and with a small limit.
        let limits = Limits {
            max_inline_len: 4,
            ..Limits::default()
        };
        assert_eq!(parse_with(b"PING", &limits), Ok(None));
        assert_eq!(
            parse_with(b"ECHO\n", &limits),
            Ok(Some((vecs(&[b"ECHO"]), 5)))
        );
        assert_eq!(
            error_text_with(b"PING\r\n", &limits),
            "Protocol error: too big inline request"
        );
    }

    // --- Streams --------------------------------------------------------------------------------

    /// Parses every command in `stream` from one buffer, as a session would with it all received.
    fn parse_all(stream: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut args = Args::new();
        let mut commands = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let consumed = parse_command(&stream[pos..], &Limits::default(), &mut args)
                .unwrap()
                .expect("the stream holds whole commands");
            commands.push(args.to_vecs());
            pos += consumed;
        }
        commands
    }

    /// Feeds `stream` in the given chunks as a session does: append, parse every whole command,
    /// drop the consumed bytes.
    fn parse_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<Vec<u8>>> {
        let mut args = Args::new();
        let mut commands = Vec::new();
        let mut buf = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            while let Some(consumed) =
                parse_command(&buf[pos..], &Limits::default(), &mut args).unwrap()
            {
                commands.push(args.to_vecs());
                pos += consumed;
            }
            assert!(args.is_empty());
            buf.drain(..pos);
        }
        assert!(buf.is_empty(), "bytes left over: {buf:?}");
        commands
    }

    fn sample_stream() -> (Vec<u8>, Vec<Vec<Vec<u8>>>) {
        let mut stream = Vec::new();
        stream.extend_from_slice(&multibulk(&[b"SET", b"k\r\n", b"\r\n*1\r\n$1\r\n"]));
        stream.extend_from_slice(b"PING\r\n");
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(b"*0\r\n");
        stream.extend_from_slice(b"ECHO \"a b\\r\\n\" 'c'\n");
        stream.extend_from_slice(&multibulk(&[b"GET", b""]));
        stream.extend_from_slice(b"*-1\r\n");
        stream.extend_from_slice(b"\n");
        stream.extend_from_slice(&multibulk(&[b"QUIT"]));
        let expected = vec![
            vecs(&[b"SET", b"k\r\n", b"\r\n*1\r\n$1\r\n"]),
            vecs(&[b"PING"]),
            vec![],
            vec![],
            vecs(&[b"ECHO", b"a b\r\n", b"c"]),
            vecs(&[b"GET", b""]),
            vec![],
            vec![],
            vecs(&[b"QUIT"]),
        ];
        (stream, expected)
    }

    #[test]
    fn pipelined_commands_back_to_back() {
        let (stream, expected) = sample_stream();
        assert_eq!(parse_all(&stream), expected);
        assert_eq!(parse_chunks([&stream[..]]), expected);
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        for command in [
            multibulk(&[b"SET", b"k\r\n", b"v\x00\r\n"]),
            b"ECHO \"a\\x41\" 'b'\r\n".to_vec(),
            b"*0\r\n".to_vec(),
        ] {
            let mut args = Args::new();
            for end in 0..command.len() {
                assert_eq!(
                    parse_command(&command[..end], &Limits::default(), &mut args),
                    Ok(None),
                    "prefix of {end} bytes"
                );
            }
            assert_eq!(
                parse_command(&command, &Limits::default(), &mut args),
                Ok(Some(command.len()))
            );
            assert_eq!(vec![args.to_vecs()], parse_all(&command));
        }
    }

    #[test]
    fn stream_split_at_every_point() {
        let (stream, expected) = sample_stream();
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(parse_chunks([a, b]), expected, "split at {split}");
        }
        let bytes = stream.chunks(1);
        assert_eq!(parse_chunks(bytes), expected, "one byte at a time");
    }

    /// A random command, as wire bytes and the arguments it must parse to.
    fn random_command(rng: &mut StdRng) -> (Vec<u8>, Vec<Vec<u8>>) {
        match rng.gen_range(0..10) {
            // Multibulk with arbitrary bytes, CR and LF included.
            0..=5 => {
                let args: Vec<Vec<u8>> = (0..rng.gen_range(1..5))
                    .map(|_| {
                        let len = rng.gen_range(0..20);
                        (0..len)
                            .map(|_| match rng.gen_range(0..4) {
                                0 => b'\r',
                                1 => b'\n',
                                _ => rng.gen(),
                            })
                            .collect()
                    })
                    .collect();
                let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                (multibulk(&refs), args)
            }
            // Inline, some arguments quoted.
            6..=8 => {
                let mut line = Vec::new();
                let mut args = Vec::new();
                for _ in 0..rng.gen_range(0..4) {
                    let word: Vec<u8> = (0..rng.gen_range(1..8))
                        .map(|_| rng.gen_range(b'a'..=b'z'))
                        .collect();
                    line.extend_from_slice(if rng.gen() { b" " } else { b" \t " });
                    match rng.gen_range(0..3) {
                        0 => {
                            line.extend_from_slice(b"\"\\x41");
                            line.extend_from_slice(&word);
                            line.extend_from_slice(b" \\n\"");
                            let mut arg = b"A".to_vec();
                            arg.extend_from_slice(&word);
                            arg.extend_from_slice(b" \n");
                            args.push(arg);
                        }
                        1 => {
                            line.push(b'\'');
                            line.extend_from_slice(&word);
                            line.extend_from_slice(b"\\''");
                            let mut arg = word.clone();
                            arg.push(b'\'');
                            args.push(arg);
                        }
                        _ => {
                            line.extend_from_slice(&word);
                            args.push(word);
                        }
                    }
                }
                line.extend_from_slice(if rng.gen() { b"\r\n" } else { b"\n" });
                (line, args)
            }
            _ => (b"*0\r\n".to_vec(), Vec::new()),
        }
    }

    #[test]
    fn random_streams_parse_the_same_however_split() {
        let mut rng = StdRng::seed_from_u64(0x5EED);
        for _ in 0..300 {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..rng.gen_range(1..12) {
                let (bytes, args) = random_command(&mut rng);
                stream.extend_from_slice(&bytes);
                expected.push(args);
            }
            assert_eq!(parse_all(&stream), expected);
            let mut chunks = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let len = rng.gen_range(0..=rest.len().min(24));
                let (chunk, tail) = rest.split_at(len);
                chunks.push(chunk);
                rest = tail;
            }
            assert_eq!(parse_chunks(chunks), expected);
        }
    }

    #[test]
    fn protocol_error_displays_its_text() {
        let err = ProtocolError::new(ERR_INVALID_BULK_LEN);
        assert_eq!(err.to_string(), "Protocol error: invalid bulk length");
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert_eq!(boxed.to_string(), "Protocol error: invalid bulk length");
    }
}
