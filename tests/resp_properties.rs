//! Properties of the RESP parser and encoder, over generated inputs:
//! - parsing a stream in any split into reads gives exactly what parsing it whole gives, also
//!   when the parser resumes a partial command where it stopped (as sessions parse);
//! - encoding a command then parsing it returns the same arguments;
//! - encoding a reply value then parsing it returns the same value, in RESP2 and RESP3.

use proptest::prelude::*;
use ringport::resp::{
    encode_command, encode_value, parse_command_resuming, parse_value, Args, Limits, Progress,
    Proto, Value,
};

fn encoded_command(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_command(&mut out, args);
    out
}

/// Parses every complete command of `buf`; the error, if the stream turned invalid.
/// `progress` is for the partial command at the front of `buf` and is left for the one at the
/// returned offset.
fn parse_all(
    buf: &[u8],
    limits: &Limits,
    progress: &mut Progress,
) -> (Vec<Vec<Vec<u8>>>, Option<String>, usize) {
    let mut args = Args::new();
    let (mut pos, mut out) = (0, Vec::new());
    loop {
        match parse_command_resuming(&buf[pos..], limits, &mut args, progress) {
            Ok(None) => return (out, None, pos),
            Ok(Some(n)) => {
                pos += n;
                out.push(args.to_vecs());
            }
            Err(e) => return (out, Some(e.0), pos),
        }
    }
}

fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(arg(), 1..6)
}

/// Streams of valid multibulk commands, inline commands and noise.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => command().prop_map(|c| encoded_command(&c)),
        2 => "[A-Za-z0-9 \"']{0,20}".prop_map(|s| format!("{s}\r\n").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,16}".prop_map(|s| Value::Simple(s.into_bytes())),
        "[a-zA-Z0-9 ]{0,16}".prop_map(|s| Value::Error(format!("ERR {s}").into_bytes())),
        any::<i64>().prop_map(Value::Integer),
        arg().prop_map(Value::Bulk),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Boolean),
        (-1e12f64..1e12).prop_map(|d| Value::Double((d * 1000.0).round() / 1000.0)),
        arg().prop_map(|t| Value::Verbatim(*b"txt", t)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
            prop::collection::vec((inner.clone(), inner), 0..3).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_split_parses_like_the_whole(stream in stream(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8), resume in any::<bool>()) {
        let limits = Limits::default();
        let whole = parse_all(&stream, &limits, &mut Progress::default());
        let mut progress = Progress::default();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let (mut buf, mut commands, mut error, mut fed) = (Vec::new(), Vec::new(), None, 0);
        for point in points {
            if error.is_some() {
                break;
            }
            buf.extend_from_slice(&stream[fed..point]);
            fed = point;
            if !resume {
                progress = Progress::default();
            }
            let (cmds, err, consumed) = parse_all(&buf, &limits, &mut progress);
            commands.extend(cmds);
            error = err;
            buf.drain(..consumed);
        }
        prop_assert_eq!(commands, whole.0);
        prop_assert_eq!(error, whole.1);
    }

    #[test]
    fn an_encoded_command_parses_back(cmd in command()) {
        let bytes = encoded_command(&cmd);
        let mut args = Args::new();
        let consumed = ringport::resp::parse_command(&bytes, &Limits::default(), &mut args).unwrap();
        prop_assert_eq!(consumed, Some(bytes.len()));
        prop_assert_eq!(args.to_vecs(), cmd);
    }

    #[test]
    fn an_encoded_value_parses_back_in_resp3(v in value()) {
        let mut bytes = Vec::new();
        encode_value(&mut bytes, &v, Proto::Resp3);
        let (parsed, n) = parse_value(&bytes).unwrap().unwrap();
        prop_assert_eq!(n, bytes.len());
        prop_assert_eq!(parsed, v);
    }

    #[test]
    fn resp2_encoding_is_always_well_formed(v in value()) {
        let mut bytes = Vec::new();
        encode_value(&mut bytes, &v, Proto::Resp2);
        let (_, n) = parse_value(&bytes).unwrap().unwrap();
        prop_assert_eq!(n, bytes.len());
    }
}
