//! TLS on `--tls-listen`, with real clients (the redis crate over rustls, redis-cli, redis-py),
//! side by side with the plain port, and every way a TLS connection goes wrong: a plain-text
//! client, an untrusted certificate, a handshake that never finishes, a missing client
//! certificate. Certificates are made by each test. `ci/test` runs this file under every kernel
//! profile and on the epoll backend too (`RINGPORT_TEST_FLAGS`).

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, ServerBuilder, PASSWORD, USER};
use tls::Pki;

/// A server with a plain port and a TLS port using `pki`'s certificates.
fn tls_server(pki: &Pki, extra: &[(&str, &str)]) -> Server {
    tls_builder(pki, extra).start()
}

fn tls_builder(pki: &Pki, extra: &[(&str, &str)]) -> ServerBuilder {
    let mut builder = Server::builder().flag("--tls-listen", "127.0.0.1:0");
    for (name, value) in pki.server_flags() {
        builder = builder.flag(&name, &value);
    }
    for (name, value) in extra {
        builder = builder.flag(name, value);
    }
    builder
}

/// An authenticated redis-crate connection over TLS.
fn tls_client(server: &Server, pki: &Pki, with_client_cert: bool) -> redis::Connection {
    let addr = server.tls_addr();
    let info = redis::ConnectionAddr::TcpTls {
        host: "localhost".into(),
        port: addr.port(),
        insecure: false,
        tls_params: None,
    };
    let info = redis::IntoConnectionInfo::into_connection_info(info)
        .unwrap()
        .set_redis_settings(
            redis::RedisConnectionInfo::default()
                .set_username(USER)
                .set_password(PASSWORD),
        );
    let client =
        redis::Client::build_with_tls(info, pki.redis_certificates(with_client_cert)).unwrap();
    client
        .get_connection_with_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("TLS connect: {e}; log:\n{}", server.log()))
}

/// What the server sent before it closed `stream` (EOF or reset); panics if it is still open
/// after `timeout`.
fn bytes_until_closed(stream: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the server kept the connection open past {timeout:?}"
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("the server kept the connection open past {timeout:?}: {e}"),
        }
    }
}

#[test]
fn the_redis_crate_speaks_tls_next_to_the_plain_port() {
    let pki = Pki::new("main");
    let server = tls_server(&pki, &[]);
    let mut tls = tls_client(&server, &pki, false);
    let pong: String = redis::cmd("PING").query(&mut tls).unwrap();
    assert_eq!(pong, "PONG");
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("over tls")
        .query(&mut tls)
        .unwrap();
    // The plain port serves the same data, side by side.
    let mut plain = server.client();
    let read: String = redis::cmd("GET").arg("greeting").query(&mut plain).unwrap();
    assert_eq!(read, "over tls");

    // A value far larger than one TLS record (16 KiB), both ways.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query(&mut tls)
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET").arg("big").query(&mut tls).unwrap();
    assert!(back == big, "3 MB value changed on its way through TLS");

    // A deep pipeline: many commands in few records, many replies in one send.
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("ECHO").arg(format!("message {i}"));
    }
    let echoed: Vec<String> = pipe.query(&mut tls).unwrap();
    assert_eq!(echoed.len(), 2000);
    assert_eq!(echoed[1999], "message 1999");
}

#[test]
fn redis_cli_and_redis_py_speak_tls() {
    let pki = Pki::new("clients");
    let server = tls_server(&pki, &[]);
    let port = server.tls_addr().port().to_string();
    let ca = tls::path_str(&pki.ca_path());
    let cli = Command::new("redis-cli")
        .args(["--tls", "--cacert", &ca, "-h", "localhost", "-p", &port])
        .args(["--user", USER, "--pass", PASSWORD, "--no-auth-warning"])
        .args(["SET", "from-cli", "42"])
        .output()
        .expect("run redis-cli (ci/test installs redis-tools; apt-get install redis-tools)");
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout).trim(),
        "OK",
        "redis-cli stderr: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='localhost', port={port}, username='{USER}', password='{PASSWORD}', \
         ssl=True, ssl_ca_certs='{ca}', socket_timeout=30)\n\
         assert r.get('from-cli') == b'42', r.get('from-cli')\n\
         p = r.pipeline(transaction=False)\n\
         for i in range(100): p.incr('py-counter')\n\
         print(p.execute()[-1])\n"
    );
    let py = common::python_with_redis()
        .args(["-c", &script])
        .output()
        .expect("run the py-clients Python (ci/ensure-clients)");
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        "100",
        "redis-py stderr: {}",
        String::from_utf8_lossy(&py.stderr)
    );
}

#[test]
fn a_plain_text_client_on_the_tls_port_is_closed_and_logged() {
    let pki = Pki::new("plain");
    let server = tls_server(&pki, &[]);
    let mut tls = tls_client(&server, &pki, false);
    let mut stream = TcpStream::connect(server.tls_addr()).unwrap();
    stream
        .write_all(b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$6\r\nsecret\r\n")
        .unwrap();
    // Closed without a word: a TLS alert would only confuse a plain-text client.
    assert_eq!(
        bytes_until_closed(&mut stream, Duration::from_secs(10)),
        b""
    );
    wait_for_log(&server, "not TLS");
    let info: String = redis::cmd("INFO").arg("rings").query(&mut tls).unwrap();
    let errors = common::ring_field_sum(&info, "tls_errors");
    assert_eq!(errors, 1, "{info}");
    // Nothing else noticed.
    let pong: String = redis::cmd("PING").query(&mut tls).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn an_untrusted_server_certificate_fails_the_handshake_and_is_logged() {
    let pki = Pki::new("real");
    let stranger = Pki::new("stranger");
    let server = tls_server(&pki, &[]);
    let mut stream = tls::connect(server.tls_addr(), stranger.client_config(false));
    let error = tls::handshake(&mut stream).expect_err("a client that trusts another CA");
    assert!(
        error.to_string().contains("UnknownIssuer") || error.to_string().contains("issuer"),
        "{error}"
    );
    wait_for_log(&server, "TLS failed");
    let mut tls = tls_client(&server, &pki, false);
    let pong: String = redis::cmd("PING").query(&mut tls).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn a_handshake_that_never_finishes_is_closed_at_the_auth_timeout() {
    let pki = Pki::new("slow");
    let server = tls_server(&pki, &[("--auth-timeout", "1s")]);
    let mut stream = TcpStream::connect(server.tls_addr()).unwrap();
    // The start of a ClientHello record, then silence.
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    let said = bytes_until_closed(&mut stream, Duration::from_secs(20));
    let waited = started.elapsed();
    // At most a TLS alert record (close_notify), never a reply in clear.
    assert!(said.is_empty() || said[0] == 21, "{said:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the auth timeout"
    );
    wait_for_log(&server, "TLS handshake never finished");
}

#[test]
fn with_tls_ca_a_client_certificate_is_required() {
    let pki = Pki::new("mutual");
    let ca = tls::path_str(&pki.ca_path());
    let server = tls_server(&pki, &[("--tls-ca", &ca)]);
    let mut stream = tls::connect(server.tls_addr(), pki.client_config(false));
    // TLS 1.3: the client finishes its side first; the refusal arrives as an alert.
    let refused = tls::handshake(&mut stream).is_err() || {
        let _ = stream.write_all(b"PING\r\n");
        let mut buf = [0u8; 16];
        !matches!(stream.read(&mut buf), Ok(n) if n > 0)
    };
    assert!(refused, "a client without a certificate was served");
    wait_for_log(&server, "TLS failed");

    let mut with_cert = tls_client(&server, &pki, true);
    let pong: String = redis::cmd("PING").query(&mut with_cert).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn sighup_reloads_certificates_and_open_sessions_go_on() {
    let first = Pki::new("first");
    let second = Pki::new("second");
    let server = tls_server(&first, &[]);
    let mut open = tls_client(&server, &first, false);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut open)
        .unwrap();

    second.install_server_files_into(&first);
    server.signal("HUP");
    wait_for_log(&server, "TLS certificates reloaded");

    // The session opened before the reload goes on.
    let v: String = redis::cmd("GET").arg("k").query(&mut open).unwrap();
    assert_eq!(v, "v");
    // New sessions get the new certificate: a client trusting only the old CA is refused, one
    // trusting the new CA is served.
    let mut old_trust = tls::connect(server.tls_addr(), first.client_config(false));
    assert!(tls::handshake(&mut old_trust).is_err());
    let mut renewed = tls_client(&server, &second, false);
    let v: String = redis::cmd("GET").arg("k").query(&mut renewed).unwrap();
    assert_eq!(v, "v");

    // A broken file is not loaded, and the server keeps the certificate in use.
    std::fs::write(first.key_path(), "not a key").unwrap();
    server.signal("HUP");
    wait_for_log(&server, "not reloaded");
    let mut still = tls_client(&server, &second, false);
    let pong: String = redis::cmd("PING").query(&mut still).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn no_plain_serves_tls_only() {
    let pki = Pki::new("only");
    let server = tls_builder(&pki, &[]).switch("--no-plain").start();
    let mut tls = tls_client(&server, &pki, false);
    let pong: String = redis::cmd("PING").query(&mut tls).unwrap();
    assert_eq!(pong, "PONG");
    assert!(
        !server
            .stdout()
            .iter()
            .any(|l| l.starts_with("ringport listening on")),
        "{:?}",
        server.stdout()
    );
}

#[test]
fn tls_flags_that_do_not_go_together_stop_the_start_with_a_reason() {
    let pki = Pki::new("flags");
    let cert = tls::path_str(&pki.cert_path());
    for (args, reason) in [
        (vec!["--tls-listen", "127.0.0.1:0"], "needs --tls-cert"),
        (vec!["--tls-cert", cert.as_str()], "need --tls-listen"),
        (vec!["--no-plain"], "--no-plain needs --tls-listen"),
        (
            vec![
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert.as_str(),
                "--tls-key",
                cert.as_str(),
            ],
            "--tls-key",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ringport"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

/// Waits (bounded) for `needle` in the server's log.
fn wait_for_log(server: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn config_check_loads_the_tls_files() {
    let pki = Pki::new("check");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ringport.toml");
    let check = |key_path: &str| {
        std::fs::write(
            &file,
            format!(
                "tls-listen = \"127.0.0.1:0\"\ntls-cert = \"{}\"\ntls-key = \"{key_path}\"\n",
                tls::path_str(&pki.cert_path())
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_ringport"))
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let good = check(&tls::path_str(&pki.key_path()));
    assert!(good.status.success(), "{good:?}");
    assert!(String::from_utf8_lossy(&good.stdout).contains("TLS certificate"));
    // The certificate given as the key: refused, naming the flag and the file.
    let bad = check(&tls::path_str(&pki.cert_path()));
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

/// Sends what `conn` has to say a few bytes per write, so that records, and the handshake
/// messages inside them, reach the server cut at every kind of place.
fn dribble(conn: &mut rustls::ClientConnection, stream: &mut TcpStream) {
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    let mut rest = &wire[..];
    let mut size = 1;
    while !rest.is_empty() {
        let (piece, after) = rest.split_at(size.min(rest.len()));
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_micros(300));
        rest = after;
        size = size % 97 + 6;
    }
}

#[test]
fn records_cut_anywhere_by_the_network_are_put_back_together() {
    let pki = Pki::new("dribble");
    let server = tls_server(&pki, &[]);
    let mut stream = TcpStream::connect(server.tls_addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(pki.client_config(false), name).unwrap();
    while conn.is_handshaking() {
        dribble(&mut conn, &mut stream);
        if conn.is_handshaking() && conn.wants_read() {
            conn.read_tls(&mut stream).unwrap();
            conn.process_new_packets().unwrap();
        }
    }
    // A request in two records, each cut in pieces; the replies come back in order.
    let request = format!(
        "AUTH {USER} {PASSWORD}\r\nSET cut {}\r\n",
        "v".repeat(40_000)
    );
    conn.writer().write_all(request.as_bytes()).unwrap();
    dribble(&mut conn, &mut stream);
    conn.writer().write_all(b"GET cut\r\nPING\r\n").unwrap();
    dribble(&mut conn, &mut stream);
    let want = format!(
        "+OK\r\n+OK\r\n$40000\r\n{}\r\n+PONG\r\n",
        "v".repeat(40_000)
    );
    let mut got = Vec::new();
    while got.len() < want.len() {
        conn.read_tls(&mut stream).unwrap();
        conn.process_new_packets().unwrap();
        let mut buf = [0u8; 65536];
        while let Ok(n) = conn.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got == want.as_bytes(), "replies changed on the way");
}

#[test]
fn garbage_in_the_middle_of_a_handshake_closes_only_that_session() {
    let pki = Pki::new("garbage");
    // One ring, so the broken session and the next one share it.
    let server = tls_server(&pki, &[("--rings", "1")]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(pki.client_config(false), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    let mut stream = TcpStream::connect(server.tls_addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    // Half a ClientHello (rustls holds its place in it), then a record no client sends.
    stream.write_all(&hello[..hello.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(&hello[hello.len() / 2..]).unwrap();
    stream
        .write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    bytes_until_closed(&mut stream, Duration::from_secs(10));
    wait_for_log(&server, "TLS failed");

    // After the handshake: a record that does not decrypt.
    let mut forged = tls::connect(server.tls_addr(), pki.client_config(false));
    tls::handshake(&mut forged).unwrap();
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    forged.sock.write_all(&record).unwrap();
    bytes_until_closed(&mut forged.sock, Duration::from_secs(10));

    let mut fine = tls_client(&server, &pki, false);
    let pong: String = redis::cmd("PING").query(&mut fine).unwrap();
    assert_eq!(pong, "PONG");
}
