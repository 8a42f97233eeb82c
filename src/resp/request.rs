//! A request as a client sends it: a multibulk array of bulk strings.
//!
//! Standard library only, and no paths into the crate, on purpose: `bench/` compiles this very
//! file (`#[path]`) so the load generator, the test clients and the parser's tests encode
//! requests with one piece of code, without the bench depending on the server crate.

use std::io::Write;

/// Appends `args` as one multibulk command: `*N\r\n`, then `$len\r\narg\r\n` per argument.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let arg = arg.as_ref();
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_multibulk() {
        let mut out = Vec::new();
        encode_command(&mut out, &["SET", "k", "hello"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n");
    }
}
