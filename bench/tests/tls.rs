//! `ringport-bench --tls` against a tiny TLS RESP server run in this test process: a thread per
//! session, rustls's `ServerConnection` over a std `TcpStream`, answering PING with `+PONG`,
//! AUTH with `+OK` (for the password `secret`), ECHO with its argument and INFO with a line
//! about itself. Certificates come from rcgen; the bench runs as a child process with every
//! run bounded by a request count.

use rcgen::{BasicConstraints, CertificateParams, CertifiedKey, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The test server: accepts until dropped; its sessions end when the bench closes them.
struct TlsServer {
    address: String,
    stop: Arc<AtomicBool>,
    /// TLS sessions that completed a handshake.
    handshakes: Arc<AtomicU64>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    fn start(config: ServerConfig) -> TlsServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
        let address = listener.local_addr().unwrap().to_string();
        let config = Arc::new(config);
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicU64::new(0));
        let accept = {
            let (stop, handshakes) = (stop.clone(), handshakes.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (config, handshakes) = (config.clone(), handshakes.clone());
                    std::thread::spawn(move || serve(config, stream, &handshakes));
                }
            })
        };
        TlsServer {
            address,
            stop,
            handshakes,
            accept: Some(accept),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.address);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// One session: decrypt, answer every complete command, until the client goes.
fn serve(config: Arc<ServerConfig>, stream: TcpStream, handshakes: &AtomicU64) {
    let _ = stream.set_nodelay(true);
    let Ok(connection) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(connection, stream);
    let mut input = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut counted = false;
    loop {
        let read = match tls.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if !counted && !tls.conn.is_handshaking() {
            counted = true;
            handshakes.fetch_add(1, Ordering::Relaxed);
        }
        input.extend_from_slice(&chunk[..read]);
        let mut output = Vec::new();
        let mut used = 0;
        while let Some((args, length)) = parse_command(&input[used..]) {
            used += length;
            answer(&args, &mut output);
        }
        input.drain(..used);
        if !output.is_empty() && tls.write_all(&output).and_then(|()| tls.flush()).is_err() {
            return;
        }
    }
}

fn answer(args: &[&[u8]], output: &mut Vec<u8>) {
    let name = args
        .first()
        .map(|n| n.to_ascii_uppercase())
        .unwrap_or_default();
    match (name.as_slice(), args.len()) {
        (b"PING", 1) => output.extend_from_slice(b"+PONG\r\n"),
        (b"AUTH", 2 | 3) if args[args.len() - 1] == b"secret" => {
            output.extend_from_slice(b"+OK\r\n")
        }
        (b"AUTH", _) => output.extend_from_slice(b"-WRONGPASS invalid password\r\n"),
        (b"ECHO", 2) => bulk(output, args[1]),
        (b"INFO", _) => bulk(output, b"# Server\r\nserver_name:tls-test\r\n"),
        _ => output.extend_from_slice(b"-ERR unknown command\r\n"),
    }
}

fn bulk(output: &mut Vec<u8>, value: &[u8]) {
    output.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
    output.extend_from_slice(value);
    output.extend_from_slice(b"\r\n");
}

/// One complete RESP array of bulk strings at the start of `input`: (arguments, bytes used).
fn parse_command(input: &[u8]) -> Option<(Vec<&[u8]>, usize)> {
    fn line(input: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = at + input[at..].windows(2).position(|w| w == b"\r\n")?;
        Some((&input[at..end], end + 2))
    }
    let number = |text: &[u8]| -> usize { std::str::from_utf8(text).unwrap().parse().unwrap() };
    assert_eq!(input.first().copied().unwrap_or(b'*'), b'*', "not an array");
    let (count, mut at) = line(input, 0)?;
    let count = number(&count[1..]);
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let (header, data) = line(input, at)?;
        assert_eq!(header[0], b'$', "not a bulk string");
        let length = number(&header[1..]);
        if input.len() < data + length + 2 {
            return None;
        }
        args.push(&input[data..data + length]);
        at = data + length + 2;
    }
    Some((args, at))
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path =
            std::env::temp_dir().join(format!("ringport-bench-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration with a certificate for `localhost` only, self-signed; its PEM.
fn self_signed_server() -> (ServerConfig, String) {
    let CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pair.serialize_pem().as_bytes()).unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    (config, cert.pem())
}

fn bench(args: &[&str], paths: &[&Path]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringport-bench"));
    command.args(args).args(paths).arg("--quiet");
    command.output().expect("run ringport-bench")
}

fn bench_json(args: &[&str], scratch: &Scratch) -> Value {
    let json = scratch.0.join("out.json");
    let mut with_json: Vec<&str> = args.to_vec();
    with_json.push("--json");
    let output = bench(&with_json, &[&json]);
    assert!(
        output.status.success(),
        "ringport-bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let summary: Value = serde_json::from_str(&text).unwrap();
    summary["targets"][0].clone()
}

fn assert_clean(run: &Value, requests: u64) {
    assert_eq!(run["requests"], requests, "{run}");
    for field in ["errors", "unanswered", "disconnects"] {
        assert_eq!(run[field], 0, "{field}: {run}");
    }
    assert_eq!(
        run["protocol_errors"].as_array().map_or(0, Vec::len),
        0,
        "{run}"
    );
    assert_eq!(run["load"]["tls"], true, "{run}");
}

#[test]
fn a_tls_run_completes_with_idle_sessions_and_no_errors() {
    let scratch = Scratch::new("run");
    let (config, cert) = self_signed_server();
    let server = TlsServer::start(config);
    let ca = scratch.write("cert.pem", &cert);
    // The target is an IP address: the certificate is checked against `localhost`.
    let target = format!("bench:secret@{}", server.address);
    let ca = ca.to_str().unwrap();
    let args = [
        "-t",
        &target,
        "--tls",
        "--tls-ca",
        ca,
        "--mix",
        "PING",
        "-c",
        "4",
        "--threads",
        "2",
        "-n",
        "3000",
        "--idle",
        "20",
    ];
    let run = bench_json(&args, &scratch);
    assert_clean(&run, 3000);
    assert_eq!(run["server"]["server_name"], "tls-test", "{run}");
    assert_eq!(run["idle"]["opened"], 20, "{run}");
    assert_eq!(run["idle"]["closed_by_server"], 0, "{run}");
    assert_eq!(server.handshakes.load(Ordering::Relaxed), 24);

    // Open loop and RESP3-less pipelining go through the same paths.
    let args = [
        "-t", &target, "--tls", "--tls-ca", ca, "-c", "3", "-P", "8", "-n", "2000",
    ];
    assert_clean(&bench_json(&args, &scratch), 2000);
    let args = [
        "-t", &target, "--tls", "--tls-ca", ca, "-c", "2", "--rate", "4000", "-n", "800",
    ];
    assert_clean(&bench_json(&args, &scratch), 800);
}

#[test]
fn a_self_signed_ca_certificate_given_as_the_ca_is_trusted_for_its_names() {
    // What `openssl req -x509` makes: self-signed, marked as a CA, with the server's names.
    let scratch = Scratch::new("openssl-like");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let server = TlsServer::start(config);
    let ca = scratch.write("cert.pem", &cert.pem());
    let target = format!("bench:secret@{}", server.address);
    let args = ["-t", &target, "--tls", "-c", "2", "-n", "500", "--tls-ca"];
    let mut with_ca: Vec<&str> = args.to_vec();
    with_ca.push(ca.to_str().unwrap());
    assert_clean(&bench_json(&with_ca, &scratch), 500);
    // Its name is still checked.
    with_ca.extend_from_slice(&["--tls-server-name", "elsewhere.test"]);
    let output = bench(&with_ca, &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not valid for name"), "{stderr}");
    assert!(stderr.contains("--tls-server-name"), "{stderr}");
}

#[test]
fn large_requests_and_replies_cross_many_records() {
    let scratch = Scratch::new("large");
    let (config, _) = self_signed_server();
    let server = TlsServer::start(config);
    let target = format!("bench:secret@{}", server.address);
    // 200 kB each way per request, 4 outstanding: many records, writes larger than rustls
    // buffers at once (64 kB), and replies that span reads.
    let args = [
        "-t",
        &target,
        "--tls",
        "--tls-insecure",
        "--mix",
        "ECHO __value__",
        "--value-size",
        "200000",
        "-c",
        "2",
        "-P",
        "4",
        "-n",
        "200",
    ];
    assert_clean(&bench_json(&args, &scratch), 200);
}

#[test]
fn client_certificates_and_failures_are_explained() {
    let scratch = Scratch::new("mtls");
    // A CA that signs the client certificate; the server asks for one signed by it.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca_cert, &ca_key)
        .unwrap();
    let CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["ringport.test".to_string()]).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key_pair.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let server = TlsServer::start(config);
    let server_ca = scratch.write("server.pem", &cert.pem());
    let client_pem = scratch.write("client.pem", &client_cert.pem());
    let client_key_pem = scratch.write("client.key", &client_key.serialize_pem());
    let target = format!("bench:secret@{}", server.address);
    let base = ["-t", &target, "--tls", "-c", "2", "-n", "200"];
    let with = |extra: &[&str], paths: &[&Path]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        bench(&args, paths)
    };
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    // The certificate is for ringport.test, not localhost.
    let output = with(&["--tls-ca"], &[&server_ca]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("invalid peer certificate"),
        "{}",
        stderr(&output)
    );

    // Right name, no client certificate: the server's alert, with advice.
    let output = with(
        &["--tls-server-name", "ringport.test", "--tls-ca"],
        &[&server_ca],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--tls-cert"),
        "{}",
        stderr(&output)
    );

    // With one, it runs.
    let mut args: Vec<&str> = base.to_vec();
    args.extend_from_slice(&["--tls-server-name", "ringport.test", "--tls-ca"]);
    args.push(server_ca.to_str().unwrap());
    args.extend_from_slice(&["--tls-cert", client_pem.to_str().unwrap()]);
    args.extend_from_slice(&["--tls-key", client_key_pem.to_str().unwrap()]);
    assert_clean(&bench_json(&args, &scratch), 200);

    // Without --tls: exit 2, with a hint.
    let output = bench(&["-t", &target, "-c", "1", "-n", "10"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("add --tls"), "{}", stderr(&output));

    // --tls alone: verification has to be chosen.
    let output = bench(&["-t", &target, "--tls", "-n", "10"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--tls-insecure"),
        "{}",
        stderr(&output)
    );
    let output = bench(&["-t", &target, "--tls-insecure", "-n", "10"], &[]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "--tls-insecure without --tls"
    );
}
