//! The RESP wire protocol: commands in, replies out. Pure code, no I/O.
//!
//! - [`parse`](parse_command): one command off the front of a session's unconsumed input, into a
//!   reusable [`Args`], with Redis 7's limits and error wording.
//! - encoding: the reply writers ([`simple`], [`bulk`], [`map_len`], ...) that append to a
//!   session's output in RESP2 or RESP3 ([`Proto`]), and [`encode_command`], a request as a client
//!   sends it.
//! - [`Value`]: a whole reply as a tree, with [`encode_value`] and [`parse_value`], for tests,
//!   fuzzing and tools; the server itself streams replies with the encoders.
//!
//! The submodules are private; everything public is re-exported here, so callers name
//! `resp::parse_command`, `resp::bulk`, `resp::Value`.

mod encode;
mod parse;
mod request;
mod value;

pub use encode::{
    array_len, boolean, bulk, double, error, integer, map_len, null, null_array, set_len, simple,
    verbatim, Proto,
};
pub use parse::{
    parse_command, parse_command_resuming, parse_i64, Args, ArgsIter, Limits, Progress,
    ProtocolError, DEFAULT_MAX_BULK_LEN, DEFAULT_MAX_INLINE_LEN, DEFAULT_MAX_MULTIBULK_LEN,
};
pub use request::encode_command;
pub use value::{encode_value, parse_value, Value};
