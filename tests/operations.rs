//! Operating ringport (issue 7), black-box over real TCP: the Prometheus endpoint scraped during
//! a mixed load and parsed as OpenMetrics, `INFO latencystats` / `INFO commandstats` after known
//! traffic, the TOML config file (round trip, flags win, every kind of bad file), idle sessions,
//! `CLIENT LIST` / `CLIENT KILL` across rings, systemd readiness (`READY=1` before the first
//! connection, `STOPPING=1` on SIGTERM) and socket activation through `systemd-socket-activate`,
//! and store passwords kept out of logs and `config check`.

mod common;

#[path = "common/pg.rs"]
mod pg;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    add_user, eventually, http_get, info, profile_flags, sha256_rounds, RawConn, Reply, Server,
    PASSWORD, REPLY_TIMEOUT, USER,
};

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_ringport")
}

// ---------------------------------------------------------------------------------------------
// Helpers: INFO, HTTP, OpenMetrics.
// ---------------------------------------------------------------------------------------------

/// The `field:value` lines of an INFO reply.
fn info_fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// `a=1,b=2` as a map.
fn comma_fields(value: &str) -> HashMap<String, String> {
    value
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Open sessions per ring, from `INFO rings`.
fn ring_sessions(conn: &mut RawConn) -> Vec<u64> {
    let text = info(conn, "rings");
    let fields = info_fields(&text);
    let mut rings: Vec<(usize, u64)> = fields
        .iter()
        .filter_map(|(k, v)| {
            let index = k.strip_prefix("ring")?.parse().ok()?;
            let sessions = comma_fields(v).get("sessions")?.parse().ok()?;
            Some((index, sessions))
        })
        .collect();
    rings.sort();
    assert!(!rings.is_empty(), "INFO rings names no ring: {text}");
    rings.into_iter().map(|(_, n)| n).collect()
}

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the samples, and each family's declared type.
#[derive(Debug, Default)]
struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// The value of the sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], panicking with the sample names when it is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let names: BTreeSet<&str> = self.samples.iter().map(|s| s.name.as_str()).collect();
            panic!("no sample {name}{labels:?}; names: {names:?}")
        })
    }

    /// Every sample of this name.
    fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The sum over every sample of this name.
    fn sum(&self, name: &str) -> f64 {
        self.all(name).iter().map(|s| s.value).sum()
    }

    /// `label` values of every sample of this name.
    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.all(name)
            .iter()
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `{a="x",b="y"}` (escapes `\"`, `\\`, `\n`); returns the labels and the rest.
fn parse_labels(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let Some(rest) = text.strip_prefix('{') else {
        return (labels, text);
    };
    let mut rest = rest;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let eq = rest
            .find('=')
            .unwrap_or_else(|| panic!("label without '=' in {text:?}"));
        let name = &rest[..eq];
        assert!(is_metric_name(name), "bad label name {name:?} in {text:?}");
        let body = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted label value in {text:?}"));
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('"' | '\\'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {text:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {text:?}"),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "label {name} twice in {text:?}"
        );
        rest = &body[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_number(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        // Rust would also read `inf` or `nan`; OpenMetrics spells them only as above.
        _ if text
            .chars()
            .all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) =>
        {
            text.parse()
                .unwrap_or_else(|_| panic!("bad number {text:?}"))
        }
        _ => panic!("not an OpenMetrics number: {text:?}"),
    }
}

/// Parses an OpenMetrics text exposition strictly enough to catch a broken one: it ends with
/// `# EOF`; comment lines are `# HELP|TYPE|UNIT name ...`; every sample is `name{labels} value`
/// and belongs to a declared family (`_total` for counters; `_bucket`, `_sum`, `_count` for
/// histograms); histogram buckets are cumulative, ascending, and end with `le="+Inf"` equal to
/// `_count`.
fn parse_openmetrics(text: &str) -> Scrape {
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with '# EOF': {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    let body = &text[..text.len() - "# EOF\n".len()];
    let mut scrape = Scrape::default();
    let mut family: Option<(String, String)> = None;
    for line in body.lines() {
        assert!(!line.is_empty(), "an empty line in the exposition");
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or_default();
            assert!(is_metric_name(name), "bad family name in {line:?}");
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let kind = parts.next().unwrap_or_default().to_string();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "gaugehistogram",
                            "summary",
                            "info",
                            "stateset",
                            "unknown"
                        ]
                        .contains(&kind.as_str()),
                        "unknown type in {line:?}"
                    );
                    assert!(
                        scrape
                            .types
                            .insert(name.to_string(), kind.clone())
                            .is_none(),
                        "family {name} declared twice"
                    );
                    family = Some((name.to_string(), kind));
                }
                other => panic!("unknown comment {other:?} in {line:?}"),
            }
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "a comment without a space: {line:?}"
        );
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("a sample without a value: {line:?}"));
        let name = &line[..name_end];
        assert!(is_metric_name(name), "bad sample name in {line:?}");
        let (labels, rest) = parse_labels(&line[name_end..]);
        let value_text = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        assert!(
            !value_text.contains(' '),
            "more than a value after the labels (exemplar or timestamp) in {line:?}"
        );
        let value = parse_number(value_text);
        let (family_name, kind) = family
            .as_ref()
            .unwrap_or_else(|| panic!("a sample before any # TYPE: {line:?}"));
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "gauge" | "unknown" => &[""],
            _ => &["", "_total", "_bucket", "_sum", "_count", "_created"],
        };
        assert!(
            allowed
                .iter()
                .any(|suffix| name == format!("{family_name}{suffix}")),
            "sample {name} does not belong to the {kind} family {family_name}"
        );
        if kind == "counter" || name.ends_with("_bucket") || name.ends_with("_count") {
            assert!(
                value >= 0.0 && value.fract() == 0.0,
                "a counter must be a non-negative integer here: {line:?}"
            );
        }
        scrape.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&scrape);
    scrape
}

/// Every histogram series: ascending `le`, cumulative counts, `+Inf` last and equal to `_count`.
fn check_histograms(scrape: &Scrape) {
    for (family, kind) in &scrape.types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for sample in scrape.all(&format!("{family}_bucket")) {
            let mut labels = sample.labels.clone();
            let le = labels
                .remove("le")
                .unwrap_or_else(|| panic!("a bucket without le: {sample:?}"));
            series
                .entry(labels)
                .or_default()
                .push((parse_number(&le), sample.value));
        }
        for (labels, buckets) in series {
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            for window in buckets.windows(2) {
                assert!(
                    window[0].0 < window[1].0 && window[0].1 <= window[1].1,
                    "{family}{labels:?}: buckets not ascending and cumulative: {buckets:?}"
                );
            }
            let last = buckets.last().unwrap();
            assert!(
                last.0.is_infinite() && last.0 > 0.0,
                "{family}{labels:?}: the last bucket must be le=\"+Inf\": {buckets:?}"
            );
            let count = scrape.value(&format!("{family}_count"), &pairs);
            assert_eq!(last.1, count, "{family}{labels:?}: +Inf bucket != _count");
            let sum = scrape.value(&format!("{family}_sum"), &pairs);
            assert!(sum >= 0.0, "{family}{labels:?}: negative _sum");
        }
    }
}

/// Scrapes `/metrics` and parses it, checking the HTTP side on the way.
fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = http_get(addr, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "GET /metrics: {status}");
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "Content-Type {content_type:?}"
    );
    parse_openmetrics(&body)
}

// ---------------------------------------------------------------------------------------------
// Helpers: processes.
// ---------------------------------------------------------------------------------------------

/// Runs a command to its end, killing it (and failing) if it runs past `timeout`.
fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "{command:?} still ran after {timeout:?}; stdout {:?}; stderr {:?}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process of ours with its stdout and stderr collected by threads; SIGTERM, then SIGKILL on
/// drop.
struct Proc {
    child: Option<Child>,
    output: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn Read + Send>,
            Box::new(stderr) as Box<dyn Read + Send>,
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut output = output.lock().unwrap_or_else(|p| p.into_inner());
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        Proc {
            child: Some(child),
            output,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the output holds `needle` (true) or the process exits first (false).
    fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return true;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // Let the reader threads catch up with what it printed last.
                std::thread::sleep(Duration::from_millis(100));
                if self.output().contains(needle) {
                    return true;
                }
                self.child = None;
                eprintln!("exited ({status}) before printing {needle:?}");
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {timeout:?} later; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            eprintln!("---- process output ----\n{}\n----", self.output());
        }
    }
}

/// A port that was free a moment ago (for tools that cannot listen on port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The next datagram on a notify socket, as text; panics if none arrives within `timeout`.
fn recv_notify(socket: &UnixDatagram, timeout: Duration) -> String {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {timeout:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The `STATUS=listening on ADDR, N rings` address of a READY notification.
fn notified_addr(message: &str) -> SocketAddr {
    message
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=listening on "))
        .and_then(|rest| rest.split(',').next())
        .and_then(|addr| addr.trim().parse().ok())
        .unwrap_or_else(|| panic!("no listening address in {message:?}"))
}

// ---------------------------------------------------------------------------------------------
// Metrics and per-command statistics.
// ---------------------------------------------------------------------------------------------

/// What each session of the mixed load sends per round, and the expected counts.
const PINGS: usize = 30;
const SETS: usize = 12;
const GETS: usize = 8;
const HASHES: usize = 3;
const HASH_ROUNDS: u32 = 200;

/// One round of the mixed load on one session, pipelined, with every reply checked.
/// Per round: ping PINGS+1 (1 error), set SETS, get GETS+1 (1 error), hash HASHES+1 (1 error),
/// incr 2 (1 error).
fn mixed_round(conn: &mut RawConn, session: usize, round: usize) {
    let key = |i: usize| format!("s{session}:r{round}:k{i}");
    let mut expected = Vec::new();
    let mut batch = Vec::new();
    let mut push = |args: Vec<Vec<u8>>, want: Option<Reply>| {
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        batch.extend(common::encode(&refs));
        expected.push(want);
    };
    for _ in 0..PINGS {
        push(vec![b"PING".to_vec()], Some(Reply::Simple("PONG".into())));
    }
    for i in 0..SETS {
        push(
            vec![
                b"SET".to_vec(),
                key(i).into_bytes(),
                format!("v{i}").into_bytes(),
            ],
            Some(Reply::ok()),
        );
    }
    for i in 0..GETS {
        push(
            vec![b"GET".to_vec(), key(i).into_bytes()],
            Some(Reply::bulk(format!("v{i}"))),
        );
    }
    for i in 0..HASHES {
        let data = format!("data{session}-{round}-{i}");
        push(
            vec![
                b"HASH".to_vec(),
                HASH_ROUNDS.to_string().into_bytes(),
                data.clone().into_bytes(),
            ],
            Some(Reply::bulk(sha256_rounds(data.as_bytes(), HASH_ROUNDS))),
        );
    }
    push(
        vec![b"INCR".to_vec(), key(1000).into_bytes()],
        Some(Reply::Int(1)),
    );
    // The errors: wrong arity, a bad argument, a store-side error, an inline error.
    push(vec![b"GET".to_vec()], None);
    push(vec![b"HASH".to_vec(), b"0".to_vec(), b"x".to_vec()], None);
    push(vec![b"INCR".to_vec(), key(0).into_bytes()], None);
    push(vec![b"PING".to_vec(), b"a".to_vec(), b"b".to_vec()], None);
    conn.send(&batch);
    for (i, want) in expected.into_iter().enumerate() {
        let got = conn.read_reply();
        match want {
            Some(want) => assert_eq!(got, want, "session {session} round {round} reply {i}"),
            None => {
                got.expect_error();
            }
        }
    }
}

/// The (calls, errors) the mixed load leaves per command after `rounds` rounds on `sessions`
/// sessions (each authenticated once).
fn mixed_expected(sessions: usize, rounds: usize) -> BTreeMap<&'static str, (u64, u64)> {
    let per = |calls: usize, errors: usize| {
        (
            (calls * sessions * rounds) as u64,
            (errors * sessions * rounds) as u64,
        )
    };
    BTreeMap::from([
        ("auth", (sessions as u64, 0)),
        ("ping", per(PINGS + 1, 1)),
        ("set", per(SETS, 0)),
        ("get", per(GETS + 1, 1)),
        ("hash", per(HASHES + 1, 1)),
        ("incr", per(2, 1)),
    ])
}

/// The command families of a scrape match `expected` exactly: counts, errors, and latency
/// histogram counts; no other command appears.
fn assert_command_metrics(scrape: &Scrape, expected: &BTreeMap<&'static str, (u64, u64)>) {
    let names: BTreeSet<String> = expected.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        scrape.label_values("ringport_commands_total", "command"),
        names,
        "commands with samples"
    );
    for (command, (calls, errors)) in expected {
        let labels = [("command", *command)];
        assert_eq!(
            scrape.value("ringport_commands_total", &labels),
            *calls as f64,
            "ringport_commands_total{{command={command}}}"
        );
        assert_eq!(
            scrape.value("ringport_command_errors_total", &labels),
            *errors as f64,
            "ringport_command_errors_total{{command={command}}}"
        );
        assert_eq!(
            scrape.value("ringport_command_latency_seconds_count", &labels),
            *calls as f64,
            "latency histogram count of {command}"
        );
        assert_eq!(
            scrape.value(
                "ringport_command_latency_seconds_bucket",
                &[("command", command), ("le", "+Inf")]
            ),
            *calls as f64,
            "+Inf bucket of {command}"
        );
        let sum = scrape.value("ringport_command_latency_seconds_sum", &labels);
        assert!(
            sum > 0.0,
            "{command}: {calls} calls take more than no time (sum {sum})"
        );
    }
}

/// The status line of a `GET /health` on the metrics port, or `None` when the connection was
/// closed unanswered.
fn health_status(addr: SocketAddr) -> Option<String> {
    http_reply(addr, "GET /health HTTP/1.0\r\n\r\n")
        .and_then(|reply| reply.lines().next().map(str::to_string))
}

/// The whole answer to `request`, or `None` when the connection failed or was closed empty.
fn http_reply(addr: SocketAddr, request: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    (!reply.is_empty()).then_some(reply)
}

/// The metrics port is often open to a whole network: a peer that stays silent, sends a
/// request head with no end or opens many connections holds a bounded share of the server
/// (`HEAD_MAX` bytes per connection, `CONNECTIONS_MAX` connections, the oldest cut off for a new
/// one) and never delays or keeps out the probes of the others (before, one thread read each
/// request in turn, with a 5 s timeout per read and no bound on a line's length: three silent
/// peers delayed `/health` by 15 s).
#[test]
fn the_metrics_port_bounds_what_a_peer_can_hold() {
    use ringport::metrics::{CONNECTIONS_MAX, HEAD_MAX};
    let server = Server::builder()
        .flag("--metrics-addr", "127.0.0.1:0")
        .start();
    let addr = server.metrics_addr();

    let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let started = Instant::now();
    let (status, _, body) = http_get(addr, "/health");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "/health waited {:?} behind silent peers",
        started.elapsed()
    );
    drop(silent);

    let mut endless = TcpStream::connect(addr).unwrap();
    endless.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut head = b"GET /".to_vec();
    head.resize(HEAD_MAX, b'a');
    endless.write_all(&head).unwrap();
    let mut reply = String::new();
    endless.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{reply:?}"
    );

    // The port full of silent peers (each would hold its thread for the 5 s head deadline): a
    // probe still gets in, cutting off the oldest. Before, the 33rd connection was closed
    // unanswered, so silent peers renewed every 5 s kept /health and /ready failing.
    let mut held: Vec<TcpStream> = (0..CONNECTIONS_MAX)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let started = Instant::now();
    assert_eq!(
        health_status(addr).as_deref(),
        Some("HTTP/1.1 200 OK"),
        "/health behind {CONNECTIONS_MAX} silent peers"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "/health waited {:?} behind {CONNECTIONS_MAX} silent peers",
        started.elapsed()
    );
    // The oldest was cut off, long before its head deadline.
    let oldest = &mut held[0];
    oldest
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut byte = [0u8; 1];
    match oldest.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the oldest silent peer was not cut off: {other:?}"),
    }
    drop(held);
    eventually("the metrics port answers once its peers left", || {
        health_status(addr).as_deref() == Some("HTTP/1.1 200 OK")
    });
}

#[test]
fn metrics_scraped_during_a_mixed_load_count_the_commands_sent() {
    const SESSIONS: usize = 4;
    let server = Server::builder()
        .flag("--rings", "2")
        .flag("--metrics-addr", "127.0.0.1:0")
        .start();
    let metrics = server.metrics_addr();

    // Before any session: every family is there, counts are zero, and unknown paths are 404.
    let empty = scrape(metrics);
    assert_eq!(empty.sum("ringport_sessions"), 0.0);
    assert_eq!(
        empty.label_values("ringport_sessions", "ring"),
        BTreeSet::from(["0".to_string(), "1".to_string()])
    );
    assert_eq!(empty.sum("ringport_sessions_accepted_total"), 0.0);
    assert!(empty.all("ringport_commands_total").is_empty());
    for family in [
        "ringport_sessions",
        "ringport_sessions_accepted",
        "ringport_sessions_rejected",
        "ringport_commands",
        "ringport_command_errors",
        "ringport_command_latency_seconds",
        "ringport_ring_completions",
        "ringport_ring_submissions",
        "ringport_ring_enters",
        "ringport_ring_bufring_exhausted",
        "ringport_ring_cq_overflow",
        "ringport_pool_queue_depth",
        "ringport_pool_busy_rejections",
        "ringport_pool_jobs",
        "ringport_store_errors",
        "ringport_store_reconnects",
    ] {
        assert!(empty.types.contains_key(family), "no family {family}");
    }
    let (status, _, _) = http_get(metrics, "/nothing-here");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    for request in [
        "POST /metrics HTTP/1.1\r\n\r\n",
        "HEAD /ready HTTP/1.0\r\n\r\n",
    ] {
        let reply = http_reply(metrics, request).expect("an answer");
        assert!(
            reply.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")
                && reply.contains("\r\nAllow: GET\r\n"),
            "{request:?}: {reply:?}"
        );
    }

    // Two rounds of mixed load from every session; between them (every reply read) the counts
    // are exact; during the second a scraper runs freely and every scrape must parse and its
    // counts only grow.
    let (round_done, rounds_done) = mpsc::channel::<usize>();
    let mut go = Vec::new();
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|session| {
            let round_done = round_done.clone();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            go.push(go_tx);
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut conn = RawConn::connect(addr);
                conn.auth(USER, PASSWORD);
                mixed_round(&mut conn, session, 0);
                round_done.send(session).unwrap();
                go_rx.recv().expect("the test went on to round 2");
                mixed_round(&mut conn, session, 1);
                conn
            })
        })
        .collect();
    drop(round_done);
    for _ in 0..SESSIONS {
        rounds_done
            .recv_timeout(REPLY_TIMEOUT)
            .expect("every session finishes round 1 (a load session failed?)");
    }
    let middle = scrape(metrics);
    assert_command_metrics(&middle, &mixed_expected(SESSIONS, 1));
    assert_eq!(middle.sum("ringport_sessions"), SESSIONS as f64);
    assert_eq!(
        middle.sum("ringport_sessions_accepted_total"),
        SESSIONS as f64
    );

    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut scrapes = 0;
            let mut last: HashMap<String, f64> = HashMap::new();
            while !done.load(Ordering::Relaxed) || scrapes == 0 {
                let now = scrape(metrics);
                for sample in now.all("ringport_commands_total") {
                    let command = sample.labels["command"].clone();
                    let before = last.insert(command.clone(), sample.value).unwrap_or(0.0);
                    assert!(sample.value >= before, "{command} went down");
                }
                let open = now.sum("ringport_sessions");
                assert!(
                    (0.0..=SESSIONS as f64).contains(&open),
                    "sessions gauge {open} with {SESSIONS} sessions"
                );
                scrapes += 1;
            }
            scrapes
        })
    };
    for go in go {
        go.send(()).unwrap();
    }
    let conns: Vec<RawConn> = sessions
        .into_iter()
        .map(|t| t.join().expect("a load session failed"))
        .collect();
    done.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("a scrape during the load failed");
    assert!(scrapes >= 1);

    let after = scrape(metrics);
    let expected = mixed_expected(SESSIONS, 2);
    assert_command_metrics(&after, &expected);
    assert_eq!(after.sum("ringport_sessions"), SESSIONS as f64);
    assert_eq!(
        after.sum("ringport_sessions_accepted_total"),
        SESSIONS as f64
    );
    assert_eq!(after.sum("ringport_sessions_rejected_total"), 0.0);
    assert_eq!(
        after.label_values("ringport_ring_completions_total", "ring"),
        BTreeSet::from(["0".to_string(), "1".to_string()])
    );
    // Every HASH with valid rounds is a compute job; every SET, GET and INCR is a store job (a
    // worker counts its job just after sending the reply, so the last ones may lag a moment).
    let (hash_calls, hash_errors) = expected["hash"];
    let store_jobs =
        expected["set"].0 + (expected["get"].0 - expected["get"].1) + expected["incr"].0;
    eventually("the pools count every job", || {
        let now = scrape(metrics);
        now.value("ringport_pool_jobs_total", &[("pool", "compute")])
            >= (hash_calls - hash_errors) as f64
            && now.value("ringport_pool_jobs_total", &[("pool", "store")]) >= store_jobs as f64
    });
    assert_eq!(
        after.value(
            "ringport_pool_busy_rejections_total",
            &[("pool", "compute")]
        ),
        0.0
    );

    // The sessions gauge follows the sessions down.
    drop(conns);
    eventually(
        "the sessions gauge drops to 0 once every client closed",
        || scrape(metrics).sum("ringport_sessions") == 0.0,
    );
}

#[test]
fn info_commandstats_and_latencystats_after_known_traffic() {
    let server = Server::start();

    // Before AUTH: a NOAUTH-refused GET and a wrong password both count as failed calls.
    let mut stranger = server.raw();
    stranger.cmd(&[b"GET", b"k"]).expect_error();
    stranger
        .cmd(&[b"AUTH", USER.as_bytes(), b"wrong"])
        .expect_error();
    drop(stranger);

    let mut conn = server.raw_authed();
    for _ in 0..7 {
        assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    }
    for _ in 0..3 {
        assert_eq!(conn.cmd(&[b"ECHO", b"x"]), Reply::bulk("x"));
    }
    for i in 0..4 {
        assert_eq!(
            conn.cmd(&[b"SET", format!("k{i}").as_bytes(), b"v"]),
            Reply::ok()
        );
    }
    assert_eq!(conn.cmd(&[b"GET", b"k0"]), Reply::bulk("v"));
    assert_eq!(conn.cmd(&[b"GET", b"missing"]), Reply::Nil);
    conn.cmd(&[b"GET"]).expect_error();
    conn.cmd(&[b"INCR", b"k0"]).expect_error();
    assert_eq!(
        conn.cmd(&[b"HASH", b"1000", b"x"]),
        Reply::bulk(sha256_rounds(b"x", 1000))
    );
    assert_eq!(
        conn.cmd(&[b"HASH", b"10", b"y"]),
        Reply::bulk(sha256_rounds(b"y", 10))
    );
    // A store command that waits 200 ms: its latency includes the wait.
    assert_eq!(conn.cmd(&[b"SLEEP", b"200"]), Reply::ok());

    // (calls, errors); the INFO that reads them is not counted in its own answer.
    let mut expected: BTreeMap<&str, (u64, u64)> = BTreeMap::from([
        ("auth", (2, 1)),
        ("ping", (7, 0)),
        ("echo", (3, 0)),
        ("set", (4, 0)),
        ("get", (4, 2)),
        ("incr", (1, 1)),
        ("hash", (2, 0)),
        ("sleep", (1, 0)),
    ]);
    let text = info(&mut conn, "commandstats");
    assert!(text.starts_with("# Commandstats\r\n"), "{text:?}");
    let stats = info_fields(&text);
    let seen: BTreeSet<&str> = stats
        .keys()
        .map(|k| {
            k.strip_prefix("cmdstat_")
                .unwrap_or_else(|| panic!("not a cmdstat line: {k}"))
        })
        .collect();
    assert_eq!(seen, expected.keys().copied().collect(), "{text}");
    for (command, (calls, errors)) in &expected {
        let fields = comma_fields(&stats[&format!("cmdstat_{command}")]);
        let number = |name: &str| -> f64 {
            fields
                .get(name)
                .unwrap_or_else(|| panic!("cmdstat_{command} lacks {name}: {fields:?}"))
                .parse()
                .unwrap_or_else(|_| panic!("cmdstat_{command} {name} is not a number"))
        };
        assert_eq!(number("calls"), *calls as f64, "cmdstat_{command} calls");
        assert_eq!(
            number("failed_calls") + number("rejected_calls"),
            *errors as f64,
            "cmdstat_{command} failed_calls + rejected_calls"
        );
        let usec = number("usec");
        assert!(usec >= *calls as f64, "cmdstat_{command}: usec {usec}");
        assert_eq!(
            fields["usec_per_call"],
            format!("{:.2}", usec / *calls as f64),
            "cmdstat_{command} usec_per_call"
        );
    }
    let sleep_usec: f64 = comma_fields(&stats["cmdstat_sleep"])["usec"]
        .parse()
        .unwrap();
    assert!(
        sleep_usec >= 200_000.0,
        "SLEEP 200's time includes its store wait: usec={sleep_usec}"
    );

    expected.insert("info", (1, 0));
    let text = info(&mut conn, "latencystats");
    assert!(text.starts_with("# Latencystats\r\n"), "{text:?}");
    let latency = info_fields(&text);
    let seen: BTreeSet<&str> = latency
        .keys()
        .map(|k| {
            k.strip_prefix("latency_percentiles_usec_")
                .unwrap_or_else(|| panic!("not a latency line: {k}"))
        })
        .collect();
    assert_eq!(seen, expected.keys().copied().collect(), "{text}");
    for command in expected.keys() {
        let fields = comma_fields(&latency[&format!("latency_percentiles_usec_{command}")]);
        let keys: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["p50", "p99", "p99.9"]), "{command}");
        let p = |name: &str| -> f64 { fields[name].parse().expect("a percentile is a number") };
        assert!(
            p("p50") >= 1.0 && p("p50") <= p("p99") && p("p99") <= p("p99.9"),
            "{command}: {fields:?}"
        );
    }
    let sleep = comma_fields(&latency["latency_percentiles_usec_sleep"]);
    let p50: f64 = sleep["p50"].parse().unwrap();
    assert!(
        p50 >= 200_000.0,
        "SLEEP 200's latency includes the wait: {sleep:?}"
    );

    // Both INFO calls now show up, and the default INFO has both sections.
    let all = info(&mut conn, "everything");
    assert!(all.contains("# Commandstats\r\n") && all.contains("# Latencystats\r\n"));
    let stats = info_fields(&info(&mut conn, "commandstats"));
    assert_eq!(comma_fields(&stats["cmdstat_info"])["calls"], "3");
}

// ---------------------------------------------------------------------------------------------
// The config file.
// ---------------------------------------------------------------------------------------------

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the config file");
    path
}

#[test]
fn config_file_settings_take_effect_and_flags_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "ringport.toml",
        "# a config file as an operator writes it\n\
         rings = 3\n\
         max-sessions = 3\n\
         log_format = \"json\"\n\
         metrics-addr = \"127.0.0.1:0\"\n\
         auth-timeout = \"7s\"\n\
         idle_timeout = 120\n\
         proto-max-bulk-len = \"1mb\"\n\
         listen = \"127.0.0.1:1\"\n",
    );

    // `config check` prints the file's effective settings.
    let check = run_with_timeout(
        Command::new(binary()).arg("config").arg("check").arg(&file),
        REPLY_TIMEOUT,
    );
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "config check: {printed}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for line in [
        "rings = 3",
        "max-sessions = 3",
        "log-format = \"json\"",
        "metrics-addr = \"127.0.0.1:0\"",
        "auth-timeout = \"7s\"",
        "idle-timeout = \"120s\"",
        "proto-max-bulk-len = 1048576",
        "listen = \"127.0.0.1:1\"",
        "store = \"embedded\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "config check lacks {line:?}:\n{printed}"
        );
    }

    // serve --config: the file's settings hold unless a flag names them (the harness's
    // --listen 127.0.0.1:0 beats the file's port 1; --rings 2 beats rings = 3).
    let server = Server::builder()
        .flag("--config", file.to_str().unwrap())
        .flag("--rings", "2")
        .start();
    let mut conn = server.raw_authed();
    let fields = info_fields(&info(&mut conn, "server"));
    assert_eq!(fields["rings"], "2", "the --rings flag overrides the file");
    assert_eq!(fields["tcp_port"], server.port().to_string());
    let fields = info_fields(&info(&mut conn, "clients"));
    assert_eq!(fields["maxclients"], "3", "max-sessions from the file");
    // metrics-addr from the file.
    let metrics = scrape(server.metrics_addr());
    assert_eq!(metrics.label_values("ringport_sessions", "ring").len(), 2);
    // proto-max-bulk-len from the file: a 2 MB bulk is refused.
    let mut big = server.raw_authed();
    big.send(b"*2\r\n$4\r\nECHO\r\n$2097152\r\n");
    let refused = big.read_reply();
    assert!(
        refused.expect_error().contains("bulk"),
        "a bulk past proto-max-bulk-len = 1mb: {refused:?}"
    );
    drop(big);
    // max-sessions = 3 from the file: with three open, the fourth is refused.
    eventually("the session refused for its bulk is closed", || {
        ring_sessions(&mut conn).iter().sum::<u64>() == 1
    });
    let _second = server.raw_authed();
    let _third = server.raw_authed();
    let mut fourth = server.raw();
    let replies = fourth.replies_to_eof(REPLY_TIMEOUT);
    assert_eq!(
        replies,
        vec![Reply::Error("ERR max number of clients reached".into())]
    );
    assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));

    // log-format = "json" from the file: every log line is a JSON object.
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the server logged nothing");
    for line in lines {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON log line: {line:?}"
        );
    }
}

#[test]
fn bad_config_files_fail_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // (file name, contents, what the error must name besides the file)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown-key.toml",
            "rings = 2\nlistne = \"127.0.0.1:1\"\n",
            &["listne"],
        ),
        (
            "unknown-underscore.toml",
            "idle_timeot = \"1s\"\n",
            &["idle_timeot"],
        ),
        (
            "not-a-serve-key.toml",
            "config = \"other.toml\"\n",
            &["'config'"],
        ),
        (
            "bad-duration.toml",
            "auth-timeout = \"soon\"\n",
            &["auth-timeout", "soon"],
        ),
        ("bad-number.toml", "max-sessions = -1\n", &["max-sessions"]),
        ("bad-address.toml", "listen = \"localhost\"\n", &["listen"]),
        (
            "bad-choice.toml",
            "log-format = \"xml\"\n",
            &["log-format", "xml"],
        ),
        (
            "wrong-type-array.toml",
            "listen = [1, 2]\n",
            &["listen", "array"],
        ),
        ("wrong-type-table.toml", "[rings]\ncount = 2\n", &["rings"]),
        ("wrong-type-bool.toml", "rings = true\n", &["rings"]),
        (
            "not-toml.toml",
            "rings = 2\nlisten = 127.0.0.1:6380\n",
            &["not valid TOML", "line 2"],
        ),
    ];
    let mut checked = Vec::new();
    for (name, text, needles) in cases {
        let path = write_file(dir.path(), name, text);
        checked.push((path, *needles, *name));
    }
    checked.push((
        dir.path().join("missing.toml"),
        &["cannot read"][..],
        "missing file",
    ));

    for (path, needles, case) in &checked {
        let check = run_with_timeout(
            Command::new(binary()).arg("config").arg("check").arg(path),
            REPLY_TIMEOUT,
        );
        let serve = run_with_timeout(
            Command::new(binary())
                .args(["serve", "--listen", "127.0.0.1:0", "--data"])
                .arg(&data)
                .arg("--config")
                .arg(path)
                .env_remove("RINGPORT_STORE_URL"),
            REPLY_TIMEOUT,
        );
        for (what, output) in [("config check", &check), ("serve --config", &serve)] {
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success(),
                "{case}: {what} succeeded; stdout {stdout:?}"
            );
            assert!(
                !stdout.contains("valid; effective settings") && !stdout.contains("listening"),
                "{case}: {what} went on: {stdout:?}"
            );
            assert!(
                stderr.contains(&path.display().to_string()),
                "{case}: {what} does not name the file: {stderr:?}"
            );
            for needle in *needles {
                assert!(
                    stderr.contains(needle),
                    "{case}: {what} does not say {needle:?}: {stderr:?}"
                );
            }
        }
    }
    assert!(
        !data.exists(),
        "serve with a bad config file must stop before opening the store"
    );
}

// ---------------------------------------------------------------------------------------------
// Idle sessions, CLIENT LIST, CLIENT KILL.
// ---------------------------------------------------------------------------------------------

#[test]
fn idle_timeout_closes_an_idle_session_but_not_a_busy_one() {
    let server = Server::builder().flag("--idle-timeout", "1s").start();

    let idle_since = Instant::now();
    let mut idle = server.raw_authed();
    let pinger = {
        let mut conn = server.raw_authed();
        std::thread::spawn(move || {
            // Busy with a PING every 300 ms for 3 s, three times the idle timeout.
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(300));
                assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
            }
            conn
        })
    };

    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !idle.has_data_now(),
        "an idle session was closed well before --idle-timeout"
    );
    assert!(
        idle.closes_within(Duration::from_secs(10)),
        "an idle session stayed open"
    );
    assert!(
        idle_since.elapsed() >= Duration::from_millis(950),
        "closed {:?} after its AUTH was sent, before its 1 s idle timeout",
        idle_since.elapsed()
    );

    let mut pinger = pinger.join().expect("the busy session was closed");
    assert_eq!(pinger.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    let stats = info_fields(&info(&mut server.raw_authed(), "stats"));
    assert_eq!(
        stats["idle_timeouts"], "1",
        "only the idle session timed out"
    );

    // Once quiet, the busy one goes the same way.
    let quiet_since = Instant::now();
    assert!(pinger.closes_within(Duration::from_secs(10)));
    assert!(quiet_since.elapsed() >= Duration::from_millis(950));
    let stats = info_fields(&info(&mut server.raw_authed(), "stats"));
    assert_eq!(stats["idle_timeouts"], "2");
}

/// A session whose one command runs longer than `--idle-timeout` is busy, not idle: it must
/// survive the command, its idle clock must restart when the reply goes out, and once it is
/// quiet the idle timeout must still close it.
///
/// Found by this test: the session's deadline, re-armed after the reply at `last_active +
/// idle_timeout` (already in the past, since `last_active` is the command's parse time), went
/// into the ring's timer wheel clamped to the wheel's next tick while the session kept the
/// unclamped tick, so the entry was dropped as stale when it came due and the session was never
/// closed for idleness again.
#[test]
fn a_command_longer_than_the_idle_timeout_keeps_its_session_until_it_is_quiet() {
    let server = Server::builder().flag("--idle-timeout", "1s").start();
    let mut busy = server.raw_authed();
    // Twice the idle timeout on the store pool.
    assert_eq!(busy.cmd(&[b"SLEEP", b"2000"]), Reply::ok());
    // Well inside the idle timeout counted from the reply.
    std::thread::sleep(Duration::from_millis(300));
    busy.send_cmd(&[b"PING"]);
    assert_eq!(
        busy.try_read_reply(REPLY_TIMEOUT),
        Ok(Reply::Simple("PONG".into())),
        "a session was closed 300 ms after the reply to its long command"
    );

    let quiet_since = Instant::now();
    assert!(
        busy.closes_within(Duration::from_secs(10)),
        "a session quiet for 10 s after a command longer than --idle-timeout was never closed"
    );
    assert!(quiet_since.elapsed() >= Duration::from_millis(950));
    let mut control = server.raw_authed();
    let stats = info_fields(&info(&mut control, "stats"));
    assert_eq!(stats["idle_timeouts"], "1");
}

/// Authenticated raw sessions with their `CLIENT ID` and ring, opened one at a time (INFO rings
/// from `control` tells which ring each landed on) until every ring holds at least `per_ring`.
fn sessions_on_every_ring(
    server: &Server,
    control: &mut RawConn,
    per_ring: usize,
) -> Vec<(RawConn, u64, usize)> {
    let mut sessions = Vec::new();
    let mut before = ring_sessions(control);
    let rings = before.len();
    for _ in 0..200 {
        let mut conn = server.raw_authed();
        let Reply::Int(id) = conn.cmd(&[b"CLIENT", b"ID"]) else {
            panic!("CLIENT ID is an integer")
        };
        let after = ring_sessions(control);
        let grew: Vec<usize> = (0..rings).filter(|&r| after[r] > before[r]).collect();
        assert_eq!(grew.len(), 1, "one new session: {before:?} -> {after:?}");
        before = after;
        sessions.push((conn, id as u64, grew[0]));
        let full = (0..rings).all(|r| sessions.iter().filter(|s| s.2 == r).count() >= per_ring);
        if full {
            return sessions;
        }
    }
    panic!("200 connections never reached every ring: {before:?}");
}

/// `CLIENT LIST` lines as maps of their fields.
fn client_list(conn: &mut RawConn) -> Vec<HashMap<String, String>> {
    client_list_of(conn, &[])
}

/// `CLIENT LIST options...` lines as maps of their fields.
fn client_list_of(conn: &mut RawConn, options: &[&[u8]]) -> Vec<HashMap<String, String>> {
    let mut args: Vec<&[u8]> = vec![b"CLIENT", b"LIST"];
    args.extend_from_slice(options);
    let Reply::Bulk(text) = conn.cmd(&args) else {
        panic!("CLIENT LIST is a bulk string")
    };
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|line| {
            line.split(' ')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn client_list_shows_the_sessions_of_every_ring() {
    let server = Server::builder().flag("--rings", "2").start();
    let mut control = server.raw_authed();
    let mut sessions = sessions_on_every_ring(&server, &mut control, 2);
    for (conn, id, _) in &mut sessions {
        assert_eq!(
            conn.cmd(&[b"CLIENT", b"SETNAME", format!("s{id}").as_bytes()]),
            Reply::ok()
        );
    }
    let Reply::Int(control_id) = control.cmd(&[b"CLIENT", b"ID"]) else {
        panic!()
    };

    let list = client_list(&mut control);
    let ids: BTreeSet<u64> = list.iter().map(|l| l["id"].parse().unwrap()).collect();
    let mut want: BTreeSet<u64> = sessions.iter().map(|s| s.1).collect();
    want.insert(control_id as u64);
    assert_eq!(ids, want, "CLIENT LIST holds every session of both rings");
    for (conn, id, ring) in &sessions {
        let line = list
            .iter()
            .find(|l| l["id"] == id.to_string())
            .expect("listed");
        assert_eq!(
            line["addr"],
            conn.stream.local_addr().unwrap().to_string(),
            "session {id} on ring {ring}"
        );
        assert_eq!(line["name"], format!("s{id}"));
        assert_eq!(line["user"], USER);
        assert_eq!(line["cmd"], "client");
    }

    // `cmd=` follows each session's last command, a folded GET's too; `age=` counts whole
    // seconds from the session's start.
    let opened = Instant::now();
    assert_eq!(sessions[1].0.cmd(&[b"GET", b"nothing"]), Reply::Nil);
    assert_eq!(sessions[0].0.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    std::thread::sleep(Duration::from_millis(1100));
    let list = client_list(&mut control);
    let line = |id: u64| list.iter().find(|l| l["id"] == id.to_string()).unwrap();
    assert_eq!(line(sessions[1].1)["cmd"], "get");
    assert_eq!(line(sessions[0].1)["cmd"], "ping");
    for (_, id, _) in &sessions {
        let age: u64 = line(*id)["age"].parse().unwrap();
        assert!(
            (1..=opened.elapsed().as_secs() + 2).contains(&age),
            "age={age} after {:?}",
            opened.elapsed()
        );
    }

    // CLIENT INFO: the asking session's own line.
    let (conn, id, _) = &mut sessions[0];
    let Reply::Bulk(own) = conn.cmd(&[b"CLIENT", b"INFO"]) else {
        panic!("CLIENT INFO is a bulk string")
    };
    let own = String::from_utf8(own).unwrap();
    assert!(own.starts_with(&format!("id={id} ")), "{own}");
    assert!(own.contains(&format!(" name=s{id} ")), "{own}");
    assert_eq!(own.lines().count(), 1);
}

#[test]
fn client_kill_closes_exactly_the_chosen_session_on_either_ring() {
    let server = Server::builder()
        .flag("--rings", "2")
        .user("bob", "bobpass")
        .admin("root", "rootpass")
        .start();
    // An admin: only admins may close other users' sessions.
    let mut control = server.raw();
    control.auth("root", "rootpass");
    let sessions = sessions_on_every_ring(&server, &mut control, 3);
    let mut alive: Vec<(RawConn, u64, usize)> = sessions;

    // CLIENT KILL ID: one victim on each ring, from the same control session.
    for ring in 0..2 {
        let at = alive.iter().position(|s| s.2 == ring).unwrap();
        let (mut victim, id, _) = alive.remove(at);
        assert_eq!(
            control.cmd(&[b"CLIENT", b"KILL", b"ID", id.to_string().as_bytes()]),
            Reply::Int(1),
            "kill session {id} on ring {ring}"
        );
        assert!(
            victim.closes_within(REPLY_TIMEOUT),
            "session {id} stayed open"
        );
        for (conn, other, _) in &mut alive {
            assert_eq!(
                conn.cmd(&[b"PING"]),
                Reply::Simple("PONG".into()),
                "session {other} survived killing {id}"
            );
        }
        let listed: BTreeSet<u64> = client_list(&mut control)
            .iter()
            .map(|l| l["id"].parse().unwrap())
            .collect();
        assert!(!listed.contains(&id), "killed session {id} still listed");
    }
    // An id that does not exist kills nothing; the asking session is never its own victim.
    assert_eq!(
        control.cmd(&[b"CLIENT", b"KILL", b"ID", b"999999"]),
        Reply::Int(0)
    );
    let Reply::Int(control_id) = control.cmd(&[b"CLIENT", b"ID"]) else {
        panic!()
    };
    assert_eq!(
        control.cmd(&[b"CLIENT", b"KILL", b"ID", control_id.to_string().as_bytes()]),
        Reply::Int(0)
    );

    // The old form, by address: +OK and that session closes; an unknown address is an error.
    let (mut victim, id, _) = alive.remove(0);
    let addr = victim.stream.local_addr().unwrap().to_string();
    assert_eq!(
        control.cmd(&[b"CLIENT", b"KILL", addr.as_bytes()]),
        Reply::ok()
    );
    assert!(
        victim.closes_within(REPLY_TIMEOUT),
        "session {id} stayed open"
    );
    assert_eq!(
        control
            .cmd(&[b"CLIENT", b"KILL", addr.as_bytes()])
            .expect_error(),
        "ERR No such client"
    );

    // By user: bob's sessions go, alice's stay.
    let mut bobs: Vec<RawConn> = (0..3)
        .map(|_| {
            let mut conn = server.raw();
            conn.auth("bob", "bobpass");
            conn
        })
        .collect();
    assert_eq!(
        control.cmd(&[b"CLIENT", b"KILL", b"USER", b"bob"]),
        Reply::Int(3)
    );
    for bob in &mut bobs {
        assert!(
            bob.closes_within(REPLY_TIMEOUT),
            "a session of bob stayed open"
        );
    }
    for (conn, _, _) in &mut alive {
        assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    }
    // Exactly the killed sessions are gone (a closed session is counted out when its close
    // completes, a moment after the client sees it).
    let want = (alive.len() + 1).to_string();
    eventually("connected_clients counts the sessions left", || {
        info_fields(&info(&mut control, "clients"))["connected_clients"] == want
    });
}

/// The ids of `CLIENT LIST options...`'s sessions, with the user each is authenticated as.
fn listed_users(conn: &mut RawConn, options: &[&[u8]]) -> BTreeMap<u64, String> {
    client_list_of(conn, options)
        .iter()
        .map(|l| (l["id"].parse().unwrap(), l["user"].clone()))
        .collect()
}

/// A session, its `CLIENT ID` and its address as `CLIENT LIST` shows it.
fn login(server: &Server, user: &str, password: &str) -> (RawConn, u64, String) {
    let mut conn = server.raw();
    conn.auth(user, password);
    let Reply::Int(id) = conn.cmd(&[b"CLIENT", b"ID"]) else {
        panic!("CLIENT ID is an integer")
    };
    let addr = conn.stream.local_addr().unwrap().to_string();
    (conn, id as u64, addr)
}

/// A user that is no admin lists and closes only its own user's sessions; an admin, every one.
///
/// The bug: CLIENT LIST and CLIENT KILL looked at every session of every user whoever asked, so
/// any authenticated user could read every other session's address, name and user, and close
/// them all (`CLIENT KILL USER alice` answered `:1` and alice's session got EOF), admins'
/// sessions included: a denial of service docs/security.md rules out.
#[test]
fn a_user_lists_and_kills_only_its_own_sessions_and_an_admin_every_one() {
    let server = Server::builder()
        .flag("--rings", "2")
        .user("bob", "bobpass")
        .admin("root", "rootpass")
        .start();
    let (mut alice, alice_id, alice_addr) = login(&server, USER, PASSWORD);
    let (mut bob, bob_id, bob_addr) = login(&server, "bob", "bobpass");
    let (mut bob2, bob2_id, bob2_addr) = login(&server, "bob", "bobpass");
    let (mut root, root_id, root_addr) = login(&server, "root", "rootpass");
    let bobs = BTreeMap::from([(bob_id, "bob".to_string()), (bob2_id, "bob".to_string())]);

    // bob sees his own two sessions, in every form of CLIENT LIST.
    assert_eq!(listed_users(&mut bob, &[]), bobs);
    assert_eq!(listed_users(&mut bob, &[b"TYPE", b"normal"]), bobs);
    let ids = [alice_id, bob2_id, root_id].map(|id| id.to_string());
    let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
    let mut by_id: Vec<&[u8]> = vec![b"ID"];
    by_id.extend(&ids);
    assert_eq!(
        listed_users(&mut bob, &by_id),
        BTreeMap::from([(bob2_id, "bob".to_string())])
    );

    // Other users' sessions do not match bob's CLIENT KILL, whichever way he names them.
    for (victim, id, addr) in [(USER, alice_id, &alice_addr), ("root", root_id, &root_addr)] {
        let id = id.to_string();
        for filter in [
            [&b"USER"[..], victim.as_bytes()],
            [b"ID", id.as_bytes()],
            [b"ADDR", addr.as_bytes()],
        ] {
            let mut args: Vec<&[u8]> = vec![b"CLIENT", b"KILL"];
            args.extend(filter);
            assert_eq!(
                bob.cmd(&args),
                Reply::Int(0),
                "bob's CLIENT KILL of {victim}"
            );
        }
        assert_eq!(
            bob.cmd(&[b"CLIENT", b"KILL", addr.as_bytes()])
                .expect_error(),
            "ERR No such client",
            "bob's CLIENT KILL {addr} ({victim})"
        );
    }
    // A user he may not see is not told whether it exists.
    assert_eq!(
        bob.cmd(&[b"CLIENT", b"KILL", b"USER", b"nobody"]),
        Reply::Int(0)
    );
    assert_eq!(alice.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(root.cmd(&[b"PING"]), Reply::Simple("PONG".into()));

    // His own other session he may close; with every other session of his gone, SKIPME yes
    // alone (every session but his own) matches nothing more.
    assert_eq!(
        bob.cmd(&[b"CLIENT", b"KILL", b"ADDR", bob2_addr.as_bytes()]),
        Reply::Int(1)
    );
    assert!(
        bob2.closes_within(REPLY_TIMEOUT),
        "bob's second session stayed open"
    );
    assert_eq!(
        bob.cmd(&[b"CLIENT", b"KILL", b"SKIPME", b"yes"]),
        Reply::Int(0)
    );
    assert_eq!(alice.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(root.cmd(&[b"PING"]), Reply::Simple("PONG".into()));

    // alice, no admin either, sees only herself.
    assert_eq!(
        listed_users(&mut alice, &[]),
        BTreeMap::from([(alice_id, USER.to_string())])
    );

    // The admin sees every session and closes any.
    let everyone = listed_users(&mut root, &[]);
    assert_eq!(
        everyone.keys().copied().collect::<BTreeSet<u64>>(),
        BTreeSet::from([alice_id, bob_id, root_id]),
        "{everyone:?}"
    );
    assert_eq!(
        root.cmd(&[b"CLIENT", b"KILL", b"USER", USER.as_bytes()]),
        Reply::Int(1)
    );
    assert!(
        alice.closes_within(REPLY_TIMEOUT),
        "alice's session stayed open"
    );
    assert_eq!(
        root.cmd(&[b"CLIENT", b"KILL", bob_addr.as_bytes()]),
        Reply::ok()
    );
    assert!(
        bob.closes_within(REPLY_TIMEOUT),
        "bob's session stayed open"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd: readiness and socket activation.
// ---------------------------------------------------------------------------------------------

#[test]
fn ready_is_notified_before_the_first_connection_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).expect("bind the notify socket");

    let mut server = Server::builder()
        .flag("--rings", "2")
        .env("NOTIFY_SOCKET", socket_path.to_str().unwrap())
        .start();
    // Nothing has connected yet: READY=1 must come first, naming where it listens.
    let ready = recv_notify(&notify, REPLY_TIMEOUT);
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "first notification: {ready:?}"
    );
    let addr = notified_addr(&ready);
    assert_eq!(addr, server.addr);
    assert!(ready.contains("2 rings"), "{ready:?}");

    // Only now connect: every session is served at once, on every ring.
    let mut conns: Vec<RawConn> = (0..8).map(|_| RawConn::connect(addr)).collect();
    for conn in &mut conns {
        conn.auth(USER, PASSWORD);
        assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    }
    notify.set_nonblocking(true).unwrap();
    let mut extra = [0u8; 512];
    assert!(
        notify.recv(&mut extra).is_err(),
        "nothing else is notified while serving"
    );
    notify.set_nonblocking(false).unwrap();
    drop(conns);

    let status = server.terminate();
    assert!(status.success(), "SIGTERM: exit {status}");
    let stopping = recv_notify(&notify, REPLY_TIMEOUT);
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "after SIGTERM: {stopping:?}"
    );
}

#[test]
fn socket_activation_serves_on_the_passed_listener() {
    use std::os::linux::net::SocketAddrExt;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_user(&data, None, USER, PASSWORD);
    // An abstract notify socket (systemd's own form, '@name').
    let name = format!("ringport-test-notify-{}", std::process::id());
    let notify = UnixDatagram::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
    )
    .expect("bind the abstract notify socket");

    // systemd-socket-activate cannot listen on port 0: try free ports until one binds.
    let mut attempt = 0;
    let (mut activate, port) = loop {
        attempt += 1;
        let port = free_port();
        let mut proc = Proc::spawn(
            Command::new("systemd-socket-activate")
                .arg("-l")
                .arg(format!("127.0.0.1:{port}"))
                .arg(format!("--setenv=NOTIFY_SOCKET=@{name}"))
                .arg(binary())
                .args(["serve", "--rings", "2", "--listen", "127.0.0.1:1", "--data"])
                .arg(&data)
                .args(profile_flags())
                .env_remove("RINGPORT_STORE_URL"),
        );
        if proc.wait_for_output("Listening on", REPLY_TIMEOUT) {
            break (proc, port);
        }
        assert!(
            attempt < 5,
            "systemd-socket-activate never listened:\n{}",
            proc.output()
        );
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // The first connection starts the server, which serves it from the passed listener.
    let mut first = RawConn::connect(addr);
    first.auth(USER, PASSWORD);
    assert_eq!(first.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    let ready = recv_notify(&notify, REPLY_TIMEOUT);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert_eq!(notified_addr(&ready), addr);

    let fields = info_fields(&info(&mut first, "server"));
    assert_eq!(
        fields["tcp_port"],
        port.to_string(),
        "INFO names the passed port"
    );
    assert_eq!(fields["rings"], "2");
    assert_eq!(
        fields["process_id"],
        activate.pid().to_string(),
        "systemd-socket-activate execs the server in its own process"
    );
    assert!(
        activate
            .output()
            .contains("using the listener passed by the service manager"),
        "{}",
        activate.output()
    );

    // More sessions, all through the one passed socket.
    let mut conns: Vec<RawConn> = (0..8).map(|_| RawConn::connect(addr)).collect();
    for conn in &mut conns {
        conn.auth(USER, PASSWORD);
        assert_eq!(conn.cmd(&[b"ECHO", b"hi"]), Reply::bulk("hi"));
    }
    let sessions = ring_sessions(&mut first);
    assert_eq!(sessions.iter().sum::<u64>(), 9, "{sessions:?}");
    // --listen 127.0.0.1:1 was not opened: the passed listener replaced it.
    assert!(TcpStream::connect("127.0.0.1:1").is_err());

    drop(conns);
    drop(first);
    activate.signal("TERM");
    let status = activate.wait_exit(REPLY_TIMEOUT);
    assert!(status.success(), "SIGTERM: {status}");
    let stopping = recv_notify(&notify, REPLY_TIMEOUT);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
}

// ---------------------------------------------------------------------------------------------
// Secrets.
// ---------------------------------------------------------------------------------------------

/// The key=value URL of the test cluster with a password added (the cluster trusts local
/// connections, so the password is carried but never checked).
fn with_password(url: &str, password: &str) -> String {
    format!("{url} password={password}")
}

#[test]
fn store_passwords_never_reach_logs_or_config_check() {
    const SECRET: &str = "hunter2-sekrit";
    let dir = tempfile::tempdir().unwrap();

    // config check: from the file and from RINGPORT_STORE_URL, in each way a URL carries one.
    for url in [
        format!("postgres://ringport:{SECRET}@db.example:5432/ringport"),
        format!("postgresql://ringport@db.example/ringport?sslmode=disable&password={SECRET}"),
        format!("host=/run/postgresql dbname=ringport password={SECRET}"),
    ] {
        let file = write_file(
            dir.path(),
            "store.toml",
            &format!("store = {}\n", toml_string(&url)),
        );
        let output = run_with_timeout(
            Command::new(binary())
                .arg("config")
                .arg("check")
                .arg(&file)
                .env_remove("RINGPORT_STORE_URL"),
            REPLY_TIMEOUT,
        );
        assert_no_secret(&output, SECRET, &url);
        let empty = write_file(dir.path(), "empty.toml", "");
        let output = run_with_timeout(
            Command::new(binary())
                .arg("config")
                .arg("check")
                .arg(&empty)
                .env("RINGPORT_STORE_URL", &url),
            REPLY_TIMEOUT,
        );
        assert_no_secret(&output, SECRET, &url);
    }

    // A store that cannot be reached: the start-up error names it without the password.
    let unreachable = format!("postgres://ringport:{SECRET}@127.0.0.1:1/ringport");
    let output = run_with_timeout(
        Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .env("RINGPORT_STORE_URL", &unreachable),
        Duration::from_secs(60),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
    assert!(!stderr.contains(SECRET), "the password leaked: {stderr}");

    // A running server on PostgreSQL, the URL with its password in RINGPORT_STORE_URL, then
    // in --store, logging at debug level.
    let cluster = pg::PgCluster::shared();
    for via_env in [true, false] {
        let url = with_password(&cluster.fresh_url("redaction"), SECRET);
        let data = tempfile::tempdir().unwrap();
        add_user(&data.path().join("data"), Some(&url), USER, PASSWORD);
        let builder = Server::builder()
            .data_dir(Arc::new(data))
            .flag("--log-level", "debug");
        let mut server = if via_env {
            builder.env("RINGPORT_STORE_URL", &url).start()
        } else {
            builder.store(&url).start()
        };
        let mut conn = server.raw_authed();
        let store = info_fields(&info(&mut conn, "store"));
        assert_eq!(store["store_backend"], "postgres", "{store:?}");
        assert!(!store["store_location"].contains(SECRET));
        assert_eq!(conn.cmd(&[b"SET", b"k", b"v"]), Reply::ok());
        assert_eq!(conn.cmd(&[b"GET", b"k"]), Reply::bulk("v"));
        let all = info(&mut conn, "everything");
        assert!(!all.contains(SECRET), "INFO shows the password");
        drop(conn);
        assert!(server.terminate().success());
        let log = server.log();
        assert!(log.contains("store opened"), "{log}");
        assert!(
            !log.contains(SECRET),
            "the password leaked into the log:\n{log}"
        );
        let stdout = server.stdout().join("\n");
        assert!(
            !stdout.contains(SECRET),
            "the password leaked to stdout:\n{stdout}"
        );
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `config check` succeeded, printed the store with its password masked, and never the password.
fn assert_no_secret(output: &Output, secret: &str, url: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "config check with store {url:?}: {stdout}{stderr}"
    );
    let store_line = stdout
        .lines()
        .find(|l| l.starts_with("store = "))
        .unwrap_or_else(|| panic!("no store line: {stdout}"));
    assert!(store_line.contains("***"), "not masked: {store_line}");
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "config check shows the password of {url:?}: {stdout}{stderr}"
    );
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Issue 12, item 4: the embedded store holds the password hashes. A data directory ringport
/// creates is 0700 and its files 0600, whatever the umask.
#[test]
fn a_new_data_directory_and_its_files_are_private() {
    let server = Server::start();
    let data = server.data_path();
    assert_eq!(mode_of(&data), 0o700, "{}", data.display());
    let files: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "no store file in {}", data.display());
    for file in files {
        assert_eq!(mode_of(&file), 0o600, "{}", file.display());
    }
}

/// ... and an existing one that group or others may read is left as the operator made it, with
/// a warning at start.
#[test]
fn an_existing_data_directory_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::builder().data_dir(dir).start();
    let mut conn = server.raw_authed();
    assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    let log = server.log();
    assert!(
        log.contains("readable or writable by group or others"),
        "{log}"
    );
    assert_eq!(mode_of(&data), 0o755, "left as the operator made it");
}

/// Each thread of `pid` by kind (`ring`, `compute`, `auth`, `store` for `KIND-N`): its scheduling
/// policy and nice value, from `/proc/PID/task/TID/stat` (fields 41 and 19).
fn thread_priorities(pid: u32) -> Vec<(String, u32, i32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's tasks") {
        let task = task.expect("a task").path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let after_name = &stat[stat.rfind(')').expect("stat has the name in parentheses") + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // `fields[0]` is field 3 (state).
        let nice: i32 = fields[19 - 3].parse().expect("nice");
        let policy: u32 = fields[41 - 3].parse().expect("policy");
        // Pool and ring threads are `KIND-N`; others (`store-committer`, `user-watch`) keep
        // their whole name.
        let comm = comm.trim();
        let kind = match comm.rsplit_once('-') {
            Some((kind, n)) if n.chars().all(|c| c.is_ascii_digit()) => kind.to_string(),
            _ => comm.to_string(),
        };
        found.push((kind, policy, nice));
    }
    found
}

#[test]
fn compute_threads_run_below_the_rings_at_the_configured_priority() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    const SCHED_IDLE: u32 = 5;
    for (flag, pool_policy, pool_nice) in [
        (None, SCHED_BATCH, 19),
        (Some("idle"), SCHED_IDLE, 0),
        (Some("normal"), SCHED_OTHER, 0),
    ] {
        let mut builder = Server::builder();
        if let Some(priority) = flag {
            builder = builder.flag("--pool-priority", priority);
        }
        let server = builder.start();
        let threads = thread_priorities(server.pid());
        let expected = [
            ("compute", (pool_policy, pool_nice)),
            ("auth", (SCHED_OTHER, 0)),
            ("store", (SCHED_OTHER, 0)),
            ("ring", (SCHED_OTHER, 0)),
        ];
        for (kind, priority) in expected {
            let these: Vec<_> = threads.iter().filter(|t| t.0 == kind).collect();
            assert!(!these.is_empty(), "no {kind} thread in {threads:?}");
            for thread in these {
                assert_eq!(
                    (thread.1, thread.2),
                    priority,
                    "{kind} with --pool-priority {flag:?}: {threads:?}"
                );
            }
        }
        // Logins and heavy commands still work at every priority.
        let mut conn = server.raw_authed();
        assert!(matches!(conn.cmd(&[b"HASH", b"10", b"x"]), Reply::Bulk(_)));
    }
}
