//! The RESP parser on any byte stream, cut into reads at any points: parsing incrementally (as a
//! session does, resuming a partial command across reads) must give exactly what parsing the
//! whole stream gives, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringport::resp::{parse_command, parse_command_resuming, Args, Limits, Progress};

/// Parses a complete buffer into commands until it is exhausted, incomplete or invalid.
fn parse_all(buf: &[u8], limits: &Limits) -> (Vec<Vec<Vec<u8>>>, Option<String>, usize) {
    let mut args = Args::new();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        match parse_command(&buf[pos..], limits, &mut args) {
            Ok(None) => return (out, None, pos),
            Ok(Some(n)) => {
                assert!(
                    n > 0 && pos + n <= buf.len(),
                    "consumed {n} at {pos} of {}",
                    buf.len()
                );
                pos += n;
                out.push(args.to_vecs());
            }
            Err(e) => return (out, Some(e.0), pos),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // Small limits so the limit paths are reachable from small inputs.
    let limits = Limits {
        max_bulk_len: 64 + data[0] as usize,
        max_inline_len: 32 + data[1] as usize,
        max_multibulk_len: 16,
        // Both wordings of the limits (before and after AUTH) are reachable.
        unauthenticated: data[1] & 1 == 1,
    };
    let stream = &data[2..];
    let whole = parse_all(stream, &limits);

    // Feed the stream in reads whose sizes come from the stream itself.
    let mut buf: Vec<u8> = Vec::new();
    let mut args = Args::new();
    let mut progress = Progress::default();
    let mut commands = Vec::new();
    let mut error = None;
    let mut fed = 0;
    let mut step = 1 + (data[0] as usize % 7);
    while fed < stream.len() && error.is_none() {
        let take = step.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + take]);
        fed += take;
        step = 1 + (stream[fed - 1] as usize % 13);
        loop {
            match parse_command_resuming(&buf, &limits, &mut args, &mut progress) {
                Ok(None) => break,
                Ok(Some(n)) => {
                    assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
                    commands.push(args.to_vecs());
                    buf.drain(..n);
                }
                Err(e) => {
                    error = Some(e.0);
                    break;
                }
            }
        }
    }
    assert_eq!(
        commands, whole.0,
        "incremental commands differ from whole-stream commands"
    );
    assert_eq!(
        error, whole.1,
        "incremental error differs from whole-stream error"
    );
});
