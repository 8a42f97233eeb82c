//! Black-box tests of the `ringport-bench` binary against real RESP servers.
//!
//! Each test runs against every server it can find:
//! - the one named by `RINGPORT_BENCH_TEST_TARGET=HOST:PORT` (with
//!   `RINGPORT_BENCH_TEST_USER`/`RINGPORT_BENCH_TEST_PASSWORD` when it wants AUTH);
//! - ringport, when a `ringport` binary is built (`RINGPORT_BIN`, or next to this test's
//!   `ringport-bench`, or in `target/release`): started on a free loopback port with a fresh
//!   data directory and a `bench` user;
//! - `redis-server` (`REDIS_SERVER`, or on PATH), started with a password.
//!
//! The servers the tests start are stopped (by their PID) when the test ends. With none found
//! the tests say so and pass without checking anything.

use serde_json::Value;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A server to run against, stopped on drop when the test started it.
struct Server {
    kind: &'static str,
    address: String,
    user: Option<String>,
    password: Option<String>,
    child: Option<Child>,
    data: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(data) = &self.data {
            let _ = std::fs::remove_dir_all(data);
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

fn ringport_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("RINGPORT_BIN") {
        return Some(PathBuf::from(path));
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ringport-bench"));
    let profile_dir = bench.parent()?;
    [
        profile_dir.join("ringport"),
        profile_dir.parent()?.join("release").join("ringport"),
    ]
    .into_iter()
    .find(|path| path.is_file())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

fn wait_for(address: &str, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(address).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_ringport(binary: &Path) -> Server {
    let data = std::env::temp_dir().join(format!(
        "ringport-bench-test-data-{}-{}",
        std::process::id(),
        free_port()
    ));
    let mut add = Command::new(binary)
        .args(["user", "add", "bench", "--data"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ringport user add");
    use std::io::Write;
    add.stdin.take().unwrap().write_all(b"benchpw\n").unwrap();
    assert!(add.wait().unwrap().success(), "ringport user add failed");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut child = Command::new(binary)
        .args(["serve", "--listen", &address, "--data"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringport");
    wait_for(&address, &mut child, "ringport");
    Server {
        kind: "ringport",
        address,
        user: Some("bench".into()),
        password: Some("benchpw".into()),
        child: Some(child),
        data: Some(data),
    }
}

fn start_redis(binary: &Path) -> Server {
    let port = free_port();
    let mut child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "benchpw",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let address = format!("127.0.0.1:{port}");
    wait_for(&address, &mut child, "redis-server");
    Server {
        kind: "redis",
        address,
        user: None,
        password: Some("benchpw".into()),
        child: Some(child),
        data: None,
    }
}

/// Every server these tests can run against here.
fn servers() -> Vec<Server> {
    let mut servers = Vec::new();
    if let Ok(address) = std::env::var("RINGPORT_BENCH_TEST_TARGET") {
        servers.push(Server {
            kind: "given",
            address,
            user: std::env::var("RINGPORT_BENCH_TEST_USER").ok(),
            password: std::env::var("RINGPORT_BENCH_TEST_PASSWORD").ok(),
            child: None,
            data: None,
        });
    }
    if let Some(binary) = ringport_binary() {
        servers.push(start_ringport(&binary));
    }
    let redis = std::env::var("REDIS_SERVER")
        .ok()
        .map(PathBuf::from)
        .or_else(|| on_path("redis-server"));
    if let Some(binary) = redis {
        servers.push(start_redis(&binary));
    }
    if servers.is_empty() {
        eprintln!("no server to test against (no ringport build, no redis-server): skipping");
    }
    servers
}

fn scratch(server: &Server, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringport-bench-test-{}-{}-{name}",
        std::process::id(),
        server.kind
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the bench against `server` with `args`; returns its output.
fn bench(server: &Server, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringport-bench"));
    command.args(["--target", &format!("test={}", server.address), "--quiet"]);
    if let Some(user) = &server.user {
        command.args(["--user", user]);
    }
    if let Some(password) = &server.password {
        command.args(["--password", password]);
    }
    command.args(args);
    command.env_remove("RINGPORT_BENCH_USER");
    command.env_remove("RINGPORT_BENCH_PASSWORD");
    command.output().expect("run ringport-bench")
}

fn bench_json(server: &Server, dir: &Path, args: &[&str]) -> Value {
    let json = dir.join("summary.json");
    let mut all = args.to_vec();
    let json_arg = json.to_str().unwrap().to_string();
    all.extend(["--json", &json_arg]);
    let output = bench(server, &all);
    assert!(
        output.status.success(),
        "ringport-bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn count(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

#[test]
fn closed_loop_counts_every_request() {
    for server in servers() {
        eprintln!(
            "closed_loop_counts_every_request: {} at {}",
            server.kind, server.address
        );
        check_closed_loop_counts_every_request(&server);
    }
}

fn check_closed_loop_counts_every_request(server: &Server) {
    let dir = scratch(server, "closed");
    let summary = bench_json(
        server,
        &dir,
        &[
            "-c",
            "8",
            "-P",
            "4",
            "--requests",
            "5000",
            "--mix",
            "PING=3,ECHO=1",
        ],
    );
    let run = &summary["targets"][0];
    assert_eq!(run["name"], "test");
    assert_eq!(count(&run["requests"]), 5000);
    assert_eq!(count(&run["errors"]), 0);
    assert_eq!(count(&run["unanswered"]), 0);
    let commands = run["commands"].as_object().unwrap();
    let per_command: u64 = commands.values().map(|c| count(&c["requests"])).sum();
    assert_eq!(per_command, 5000);
    assert!(count(&commands["PING"]["requests"]) > count(&commands["ECHO"]["requests"]));
    // Closed loop: latency is service time.
    assert_eq!(run["latency_us"], run["service_time_us"]);
    assert!(run["throughput_rps"].as_f64().unwrap() > 0.0);
    assert_eq!(run["load"]["model"], "closed");
    assert!(!summary["kernel"].as_str().unwrap().is_empty());
    assert!(!summary["date"].as_str().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn open_loop_sends_rate_times_duration() {
    for server in servers() {
        eprintln!(
            "open_loop_sends_rate_times_duration: {} at {}",
            server.kind, server.address
        );
        check_open_loop_sends_rate_times_duration(&server);
    }
}

fn check_open_loop_sends_rate_times_duration(server: &Server) {
    let dir = scratch(server, "open");
    let hgrm = dir.join("run.hgrm");
    let summary = bench_json(
        server,
        &dir,
        &[
            "-c",
            "10",
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--mix",
            "SET=1,GET=1",
            "--hgrm",
            hgrm.to_str().unwrap(),
        ],
    );
    let run = &summary["targets"][0];
    // Even arrivals: exactly rate x duration requests are intended in the measured second.
    assert_eq!(count(&run["requests"]), 2000);
    assert_eq!(count(&run["errors"]), 0);
    let commands = run["commands"].as_object().unwrap();
    assert_eq!(
        count(&commands["GET"]["requests"]) + count(&commands["SET"]["requests"]),
        2000
    );
    // Throughput runs to the last reply, so a slow last write (ringport commits durably) may
    // pull it below the offered rate, never above.
    let rps = run["throughput_rps"].as_f64().unwrap();
    assert!((1000.0..2050.0).contains(&rps), "{rps}");
    // Latency counts from the intended send time, so it is never below service time.
    assert!(run["latency_us"]["p50"].as_f64() >= run["service_time_us"]["p50"].as_f64());
    assert!(run["send_lag_us"].is_object());
    let text = std::fs::read_to_string(&hgrm).unwrap();
    assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    assert!(text.contains("Total count    =         2000]"), "{text}");
    assert!(dir.join("run.service.hgrm").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn error_replies_are_counted_by_kind() {
    for server in servers() {
        eprintln!(
            "error_replies_are_counted_by_kind: {} at {}",
            server.kind, server.address
        );
        check_error_replies_are_counted_by_kind(&server);
    }
}

fn check_error_replies_are_counted_by_kind(server: &Server) {
    let dir = scratch(server, "errors");
    let summary = bench_json(
        server,
        &dir,
        &[
            "-c",
            "2",
            "--requests",
            "1000",
            "--mix",
            "PING=1,NOSUCHCOMMAND=1",
        ],
    );
    let run = &summary["targets"][0];
    assert_eq!(count(&run["requests"]), 1000);
    let failing = count(&run["commands"]["NOSUCHCOMMAND"]["requests"]);
    assert!(failing > 0);
    assert_eq!(count(&run["errors"]), failing);
    assert_eq!(count(&run["errors_by_kind"]["ERR"]), failing);
    assert_eq!(count(&run["commands"]["NOSUCHCOMMAND"]["errors"]), failing);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn idle_sessions_and_sweeps_and_charts() {
    for server in servers() {
        eprintln!(
            "idle_sessions_and_sweeps_and_charts: {} at {}",
            server.kind, server.address
        );
        check_idle_sessions_and_sweeps_and_charts(&server);
    }
}

fn check_idle_sessions_and_sweeps_and_charts(server: &Server) {
    let dir = scratch(server, "sweep");
    let chart = dir.join("sweep.png");
    let svg = dir.join("latency.svg");
    let summary = bench_json(
        server,
        &dir,
        &[
            "--sweep",
            "connections=1,4",
            "--requests",
            "400",
            "--idle",
            "50",
            "--plot",
            chart.to_str().unwrap(),
        ],
    );
    let runs = summary["targets"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, connections) in runs.iter().zip([1, 4]) {
        assert_eq!(count(&run["requests"]), 400);
        assert_eq!(count(&run["load"]["connections"]), connections);
        assert_eq!(
            run["sweep"]["connections"].as_f64(),
            Some(connections as f64)
        );
        assert_eq!(count(&run["idle"]["opened"]), 50);
        assert_eq!(count(&run["idle"]["closed_by_server"]), 0);
    }
    assert!(std::fs::metadata(&chart).unwrap().len() > 1000);
    assert!(dir.join("sweep.percentiles.png").is_file());
    let output = bench(
        server,
        &["--requests", "200", "--plot", svg.to_str().unwrap()],
    );
    assert!(output.status.success());
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("Latency by percentile"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn repetitions_timeline_and_diff() {
    for server in servers() {
        eprintln!(
            "repetitions_timeline_and_diff: {} at {}",
            server.kind, server.address
        );
        check_repetitions_timeline_and_diff(&server);
    }
}

fn check_repetitions_timeline_and_diff(server: &Server) {
    let dir = scratch(server, "repeat");
    let chart = dir.join("timeline.svg");
    let summary = bench_json(
        server,
        &dir,
        &[
            "-c",
            "2",
            "--requests",
            "300",
            "--repeat",
            "3",
            "--timeline-plot",
            chart.to_str().unwrap(),
        ],
    );
    let run = &summary["targets"][0];
    let repetitions = run["repetitions"].as_array().unwrap();
    assert_eq!(repetitions.len(), 3);
    for repetition in repetitions {
        assert_eq!(count(&repetition["requests"]), 300);
        assert!(repetition["throughput_rps"].as_f64().unwrap() > 0.0);
        assert!(repetition["latency_us"]["p99.9"].as_f64().unwrap() > 0.0);
    }
    // The overall fields merge the repetitions.
    assert_eq!(count(&run["requests"]), 900);
    let timeline = run["timeline"].as_array().unwrap();
    let per_second: u64 = timeline.iter().map(|s| count(&s["requests"])).sum();
    assert_eq!(per_second, 900);
    for repetition in 1..=3 {
        let seconds: Vec<u64> = timeline
            .iter()
            .filter(|s| count(&s["repetition"]) == repetition)
            .map(|s| count(&s["second"]))
            .collect();
        assert_eq!(seconds, (0..seconds.len() as u64).collect::<Vec<_>>());
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.contains("Latency and throughput per second"));

    // A run compared with itself changes nothing.
    let json = dir.join("summary.json");
    let output = Command::new(env!("CARGO_BIN_EXE_ringport-bench"))
        .arg("diff")
        .args([&json, &json])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("| req/s |") && stdout.contains("| p99.9 µs |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Overall: no change beyond noise"),
        "{stdout}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_ringport-bench"))
        .arg("diff")
        .arg(&json)
        .arg(dir.join("missing.json"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.json"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_password_and_unreachable_targets_fail_clearly() {
    for server in servers() {
        eprintln!(
            "wrong_password_and_unreachable_targets_fail_clearly: {} at {}",
            server.kind, server.address
        );
        check_wrong_password_and_unreachable_targets_fail_clearly(&server);
    }
}

fn check_wrong_password_and_unreachable_targets_fail_clearly(server: &Server) {
    if server.password.is_some() {
        let mut wrong = Command::new(env!("CARGO_BIN_EXE_ringport-bench"));
        wrong.args([
            "--target",
            &server.address,
            "--password",
            "not-the-password",
        ]);
        if let Some(user) = &server.user {
            wrong.args(["--user", user]);
        }
        let output = wrong
            .args(["--requests", "10", "--quiet"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("AUTH failed") && stderr.contains("WRONGPASS"),
            "{stderr}"
        );

        let output = Command::new(env!("CARGO_BIN_EXE_ringport-bench"))
            .args(["--target", &server.address, "--requests", "10", "--quiet"])
            .env_remove("RINGPORT_BENCH_PASSWORD")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("requires authentication"), "{stderr}");
    }
    let closed = format!("127.0.0.1:{}", free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_ringport-bench"))
        .args(["--target", &closed, "--requests", "10", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

/// A server that answers `INFO` and then never answers again: the run must still end, after
/// `--stall-timeout` and `--drain`, and report what went unanswered.
#[test]
fn a_silent_server_ends_the_run_with_unanswered_requests() {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(read) = stream.read(&mut buffer) {
                    if read == 0 {
                        return;
                    }
                    if buffer[..read].windows(4).any(|w| w == b"INFO") {
                        let _ = stream.write_all(b"$0\r\n\r\n");
                    }
                }
            });
        }
    });
    let dir =
        std::env::temp_dir().join(format!("ringport-bench-test-{}-silent", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("summary.json");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_ringport-bench"))
        .args([
            "--target",
            &address,
            "-c",
            "2",
            "--requests",
            "100",
            "--quiet",
        ])
        .args(["--stall-timeout", "500ms", "--drain", "300ms", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = &summary["targets"][0];
    assert_eq!(count(&run["requests"]), 0);
    assert_eq!(count(&run["unanswered"]), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ringport-wake-cost` prints each of its figures as a wall and a CPU time per operation, the
/// timed sleep lasting at least the 20 µs it asks for, and refuses a count it cannot use.
#[test]
fn wake_cost_prints_each_figure_and_refuses_a_bad_count() {
    let tool = env!("CARGO_BIN_EXE_ringport-wake-cost");
    let output = Command::new(tool).arg("200").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let figures: Vec<(&str, f64, f64)> = text
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(" wall ")?;
            let mut numbers = rest
                .split_whitespace()
                .filter_map(|word| word.parse::<f64>().ok());
            Some((name.trim(), numbers.next()?, numbers.next()?))
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let names: Vec<&str> = figures.iter().map(|(name, ..)| *name).collect();
    let mut expected = vec![
        "system call (getppid)",
        "timed sleep of 20 µs (nanosleep)",
        "wake-up round trip, cores 0 and 0",
    ];
    if cores > 1 {
        expected.push("wake-up round trip, cores 0 and 1");
    }
    assert_eq!(names, expected, "{text}");
    for (name, wall, cpu) in &figures {
        assert!(*wall > 0.0 && *cpu >= 0.0, "{name}: {text}");
    }
    assert!(figures[1].1 >= 20.0, "a 20 µs sleep took less: {text}");
    for bad in ["0", "many"] {
        let output = Command::new(tool).arg(bad).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("usage"),
            "{bad}"
        );
    }
}
