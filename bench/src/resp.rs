//! RESP on the client side: counting replies. (Requests are encoded by the server crate's own
//! `src/resp/request.rs`, compiled into this crate as `crate::request`.)
//!
//! The load loop never builds a reply value. [`ReplyScanner`] walks reply bytes as they arrive,
//! in any split across reads, and reports only what the benchmark needs: one event per complete
//! top-level reply, and for an error reply its first word (`ERR`, `WRONGPASS`, `BUSY`, ...).
//! It understands RESP2 and RESP3 (maps, sets, attributes, pushes, verbatim strings, doubles,
//! big numbers, nulls, bulk errors).
//!
//! The server's `resp::parse_value` reads replies too, but it is a different tool: it builds a
//! whole `Value` tree and, like the command parser, starts again on the longer buffer after each
//! read. Here the load loop wants no allocation per reply and no re-scan of a reply split over
//! reads, so this scanner keeps its place in its own state and only counts; the two share no
//! code beyond the protocol they read.

/// The longest error word kept; longer words are cut (never seen from Redis or ringport).
pub const ERROR_WORD_MAX: usize = 32;

/// What one complete top-level reply was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Any reply that is not an error.
    Value,
    /// A simple (`-`) or bulk (`!`) error, with its first word (`ERR`, `NOAUTH`, ...).
    Error(&'a [u8]),
}

/// A malformed reply stream. The connection cannot be trusted after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// The byte that could not start or continue a reply.
    pub byte: u8,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed RESP reply: unexpected byte {:?}",
            char::from(self.byte)
        )
    }
}

/// Where the scanner is inside the current reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the type byte of the next element.
    Type,
    /// Inside a `+` simple string or another one-line value whose content does not matter.
    SkipLine,
    /// Inside a `-` error line, collecting its first word.
    ErrorLine,
    /// Inside the length line of a bulk string (`$`, `=`, `!`).
    BulkLength,
    /// Inside the count line of an aggregate (`*`, `%`, `~`, `>`, `|`).
    AggregateCount,
    /// Skipping a bulk payload and its trailing CRLF.
    BulkBody,
    /// Inside a `!` bulk error payload, collecting its first word, then skipping the rest.
    BulkErrorBody,
}

/// What an open aggregate is, so that its completion is counted right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// An array, map or set: a value of its parent (or a reply at top level).
    Value,
    /// An attribute (`|`): metadata before the next value, not a value itself.
    Attribute,
    /// A push (`>`) at top level: out-of-band, not the reply to a request.
    Push,
}

/// Incremental reply counter. Feed it bytes with [`ReplyScanner::feed`]; state carries over
/// between calls, so a reply may be split anywhere.
#[derive(Debug, Clone)]
pub struct ReplyScanner {
    state: State,
    /// Open aggregates: (elements still expected, kind).
    stack: Vec<(u64, Frame)>,
    /// Number being parsed on a length or count line.
    number: u64,
    negative: bool,
    /// True when the CR of the current line has been seen (LF expected next).
    saw_cr: bool,
    /// Bulk bytes still to skip, including the trailing CRLF.
    bulk_remaining: u64,
    /// Bulk kind of the length line being parsed: `$`, `=` or `!`.
    bulk_kind: u8,
    /// First word of the current error, and whether it is finished (space seen).
    error_word: [u8; ERROR_WORD_MAX],
    error_len: usize,
    error_word_done: bool,
    /// The current top-level reply is an error.
    top_error: bool,
    /// Out-of-band pushes seen (RESP3), not counted as replies.
    pushes: u64,
}

impl Default for ReplyScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyScanner {
    /// A scanner expecting the start of a reply.
    pub fn new() -> Self {
        Self {
            state: State::Type,
            stack: Vec::with_capacity(8),
            number: 0,
            negative: false,
            saw_cr: false,
            bulk_remaining: 0,
            bulk_kind: b'$',
            error_word: [0; ERROR_WORD_MAX],
            error_len: 0,
            error_word_done: false,
            top_error: false,
            pushes: 0,
        }
    }

    /// Out-of-band RESP3 pushes seen so far.
    pub fn pushes(&self) -> u64 {
        self.pushes
    }

    /// True when the scanner is between replies (no partial reply buffered in its state).
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.state == State::Type && self.stack.is_empty()
    }

    /// Scans `data`, calling `on_reply` once per complete top-level reply, in order.
    /// Returns the number of replies completed.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on_reply: impl FnMut(Reply<'_>),
    ) -> Result<u64, ProtocolError> {
        let mut replies = 0;
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Type => {
                    // Fast path: a whole `+...\r\n` or `:...\r\n` line at top level.
                    let byte = data[i];
                    if self.stack.is_empty() && (byte == b'+' || byte == b':') {
                        if let Some(end) = find_lf(&data[i + 1..]) {
                            i += end + 2;
                            replies += 1;
                            on_reply(Reply::Value);
                            continue;
                        }
                    }
                    i += 1;
                    self.start_element(byte)?;
                }
                State::SkipLine => match find_lf(&data[i..]) {
                    Some(end) => {
                        i += end + 1;
                        self.state = State::Type;
                        self.element_done(&mut replies, &mut on_reply);
                    }
                    None => i = data.len(),
                },
                State::ErrorLine => {
                    let byte = data[i];
                    i += 1;
                    if byte == b'\n' {
                        self.state = State::Type;
                        self.element_done(&mut replies, &mut on_reply);
                    } else {
                        self.push_error_byte(byte);
                    }
                }
                State::BulkLength | State::AggregateCount => {
                    let byte = data[i];
                    i += 1;
                    self.number_byte(byte)?;
                    if self.saw_cr && byte == b'\n' {
                        self.saw_cr = false;
                        self.number_line_done(&mut replies, &mut on_reply);
                    }
                }
                State::BulkBody => {
                    let available = (data.len() - i) as u64;
                    if available >= self.bulk_remaining {
                        i += self.bulk_remaining as usize;
                        self.bulk_remaining = 0;
                        self.state = State::Type;
                        self.element_done(&mut replies, &mut on_reply);
                    } else {
                        self.bulk_remaining -= available;
                        i = data.len();
                    }
                }
                State::BulkErrorBody => {
                    let byte = data[i];
                    i += 1;
                    self.bulk_remaining -= 1;
                    // The last two bytes are the CRLF after the payload.
                    if self.bulk_remaining >= 2 {
                        self.push_error_byte(byte);
                    }
                    if self.bulk_remaining == 0 {
                        self.state = State::Type;
                        self.element_done(&mut replies, &mut on_reply);
                    }
                }
            }
        }
        Ok(replies)
    }

    fn start_element(&mut self, byte: u8) -> Result<(), ProtocolError> {
        match byte {
            b'+' | b':' | b'_' | b',' | b'#' | b'(' => self.state = State::SkipLine,
            b'-' => {
                self.begin_error();
                self.state = State::ErrorLine;
            }
            b'$' | b'=' | b'!' => {
                self.bulk_kind = byte;
                self.begin_number();
                self.state = State::BulkLength;
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                self.bulk_kind = byte;
                self.begin_number();
                self.state = State::AggregateCount;
            }
            _ => return Err(ProtocolError { byte }),
        }
        Ok(())
    }

    fn begin_number(&mut self) {
        self.number = 0;
        self.negative = false;
        self.saw_cr = false;
    }

    fn number_byte(&mut self, byte: u8) -> Result<(), ProtocolError> {
        match byte {
            b'0'..=b'9' if !self.saw_cr => {
                self.number = self
                    .number
                    .saturating_mul(10)
                    .saturating_add(u64::from(byte - b'0'));
            }
            b'-' if !self.saw_cr && self.number == 0 => self.negative = true,
            // RESP3 `?` marks streamed aggregates; not produced by the servers we target.
            b'\r' if !self.saw_cr => self.saw_cr = true,
            b'\n' if self.saw_cr => {}
            _ => return Err(ProtocolError { byte }),
        }
        Ok(())
    }

    fn begin_error(&mut self) {
        self.error_len = 0;
        self.error_word_done = false;
        if self.stack.is_empty() {
            self.top_error = true;
        }
    }

    fn push_error_byte(&mut self, byte: u8) {
        if self.error_word_done {
            return;
        }
        if byte == b' ' || byte == b'\r' || byte == b'\n' {
            self.error_word_done = true;
        } else if self.error_len < ERROR_WORD_MAX {
            self.error_word[self.error_len] = byte;
            self.error_len += 1;
        }
    }

    fn number_line_done(&mut self, replies: &mut u64, on_reply: &mut impl FnMut(Reply<'_>)) {
        let null = self.negative;
        let count = self.number;
        if self.state == State::BulkLength {
            if null {
                self.state = State::Type;
                self.element_done(replies, on_reply);
            } else if self.bulk_kind == b'!' {
                self.begin_error();
                self.bulk_remaining = count + 2;
                self.state = State::BulkErrorBody;
            } else {
                self.bulk_remaining = count + 2;
                self.state = State::BulkBody;
            }
            return;
        }
        // Aggregate header.
        self.state = State::Type;
        let frame = match self.bulk_kind {
            b'|' => Frame::Attribute,
            b'>' if self.stack.is_empty() => Frame::Push,
            _ => Frame::Value,
        };
        let elements = match self.bulk_kind {
            b'%' | b'|' => count.saturating_mul(2),
            _ => count,
        };
        if null || elements == 0 {
            self.aggregate_done(frame, replies, on_reply);
        } else {
            self.stack.push((elements, frame));
        }
    }

    /// A non-aggregate element finished.
    fn element_done(&mut self, replies: &mut u64, on_reply: &mut impl FnMut(Reply<'_>)) {
        self.value_done(replies, on_reply);
    }

    /// An aggregate finished: attributes are not values; a top-level push is not a reply.
    fn aggregate_done(
        &mut self,
        frame: Frame,
        replies: &mut u64,
        on_reply: &mut impl FnMut(Reply<'_>),
    ) {
        match frame {
            Frame::Value => self.value_done(replies, on_reply),
            Frame::Attribute => {}
            Frame::Push => {
                self.pushes += 1;
                self.top_error = false;
            }
        }
    }

    /// One value finished: count it against its parent, closing parents that are complete.
    fn value_done(&mut self, replies: &mut u64, on_reply: &mut impl FnMut(Reply<'_>)) {
        match self.stack.last_mut() {
            None => {
                *replies += 1;
                if self.top_error {
                    self.top_error = false;
                    on_reply(Reply::Error(&self.error_word[..self.error_len]));
                } else {
                    on_reply(Reply::Value);
                }
            }
            Some((remaining, _)) => {
                *remaining -= 1;
                if *remaining == 0 {
                    let (_, frame) = self.stack.pop().expect("stack is not empty");
                    self.aggregate_done(frame, replies, on_reply);
                }
            }
        }
    }
}

fn find_lf(data: &[u8]) -> Option<usize> {
    data.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut scanner = ReplyScanner::new();
        let mut seen = Vec::new();
        for chunk in chunks {
            scanner
                .feed(chunk, |reply| {
                    seen.push(match reply {
                        Reply::Value => "value".to_string(),
                        Reply::Error(word) => format!("error {}", String::from_utf8_lossy(word)),
                    })
                })
                .unwrap();
        }
        seen
    }

    /// Feeds `data` split at every possible pair of points and checks the result never changes.
    fn check_all_splits(data: &[u8], expected: &[&str]) {
        for a in 0..=data.len() {
            for b in a..=data.len() {
                let seen = scan_all(&[&data[..a], &data[a..b], &data[b..]]);
                assert_eq!(seen, expected, "split at {a},{b}");
            }
        }
    }

    #[test]
    fn counts_resp2_replies_across_any_split() {
        let data = b"+PONG\r\n$5\r\nhello\r\n$-1\r\n:42\r\n*2\r\n$1\r\na\r\n*-1\r\n-ERR unknown command 'x'\r\n*0\r\n-WRONGPASS invalid\r\n";
        check_all_splits(
            data,
            &[
                "value",
                "value",
                "value",
                "value",
                "value",
                "error ERR",
                "value",
                "error WRONGPASS",
            ],
        );
    }

    #[test]
    fn counts_resp3_replies_across_any_split() {
        let data = b"%2\r\n+server\r\n$5\r\nredis\r\n+proto\r\n:3\r\n_\r\n,3.14\r\n#t\r\n(123\r\n=15\r\ntxt:Some string\r\n~2\r\n+a\r\n+b\r\n>3\r\n+message\r\n+ch\r\n+hi\r\n|1\r\n+key\r\n+val\r\n+OK\r\n!9\r\nBUSY slow\r\n";
        check_all_splits(
            data,
            &[
                "value",
                "value",
                "value",
                "value",
                "value",
                "value",
                "value",
                "value",
                "error BUSY",
            ],
        );
        let mut scanner = ReplyScanner::new();
        scanner.feed(data, |_| {}).unwrap();
        assert_eq!(scanner.pushes(), 1);
        assert!(scanner.is_idle());
    }

    #[test]
    fn nested_errors_do_not_make_the_reply_an_error() {
        check_all_splits(b"*2\r\n-ERR inner\r\n+OK\r\n+PONG\r\n", &["value", "value"]);
    }

    #[test]
    fn rejects_garbage() {
        let mut scanner = ReplyScanner::new();
        assert!(scanner.feed(b"hello\r\n", |_| {}).is_err());
    }
}
