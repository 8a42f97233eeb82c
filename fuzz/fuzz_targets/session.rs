//! Command dispatch on a real session state machine: any bytes, in any reads, before and after
//! AUTH, against the real pools and an embedded store. The session must never panic, and what it
//! sends back must always be a well-formed stream of RESP replies.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringport::resp::parse_value;
use ringport::testkit::{exchange, TestServer};

fn server() -> &'static TestServer {
    static SERVER: OnceLock<(tempfile::TempDir, TestServer)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temp dir");
            // Every fuzzed session comes from one address: no per-address AUTH limit here. The
            // limits before AUTH are set below the ones after it, so that inputs reach both.
            let server = TestServer::start(
                dir.path(),
                &[
                    "--proto-max-bulk-len",
                    "4096",
                    "--auth-failures-per-minute",
                    "0",
                    "--preauth-max-args",
                    "5",
                    "--preauth-max-bulk-len",
                    "256",
                    "--preauth-max-query-buffer",
                    "64kb",
                ],
            );
            (dir, server)
        })
        .1
}

fn assert_well_formed(mut out: &[u8]) {
    while !out.is_empty() {
        match parse_value(out) {
            Ok(Some((_, n))) => out = &out[n..],
            other => panic!(
                "malformed reply stream: {other:?} at {:?}",
                String::from_utf8_lossy(out)
            ),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    // SLEEP would hold a store worker for as long as the input asks; it adds nothing here.
    if input.windows(5).any(|w| w.eq_ignore_ascii_case(b"sleep")) {
        return;
    }
    let mut session = server().session();
    let t = Duration::from_secs(5);
    if mode & 1 == 1 {
        let out = exchange(&mut session, b"AUTH alice secret\r\n", t);
        assert_eq!(out, b"+OK\r\n");
    }
    let mut rest = input;
    let mut step = 1 + (mode as usize >> 1) % 64;
    while !rest.is_empty() && !session.is_closing() {
        let (chunk, tail) = rest.split_at(step.min(rest.len()));
        let out = exchange(&mut session, chunk, t);
        assert_well_formed(&out);
        rest = tail;
        step = 1 + (chunk[chunk.len() - 1] as usize % 97);
    }
    session.eof();
    let out = session.take_output();
    assert_well_formed(&out);
});
