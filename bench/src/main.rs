//! `ringport-bench`: open- and closed-loop load and latency measurement for any RESP server.
//!
//! A run: open the sessions (authenticated, plus `--idle` ones held open), ask the server what it
//! is, then split the connections over `--threads` load threads ([`engine`]), each driving its
//! share through one epoll loop until the run's time or request count is spent. Their
//! histograms merge into one result per target (with `--repeat`, over all repetitions, each of
//! which is also listed); results go to a table on stdout and, when asked, `.hgrm` files, a JSON
//! summary and charts. `ringport-bench diff A.json B.json` compares two JSON summaries ([`diff`]).

mod diff;
mod engine;
mod hgrm;
mod plot;
mod record;
mod report;
#[path = "../../src/resp/request.rs"]
mod request;
mod resp;
mod schedule;
mod session;
mod tls;
mod workload;

use clap::Parser;
use engine::{Model, Plan, Progress, ThreadOutput};
use hdrhistogram::Histogram;
use record::{Recorder, Timeline};
use report::{
    ClientResult, CommandResult, IdleResult, LoadSettings, Percentiles, RepetitionResult, Summary,
    SweepSpec, TargetResult,
};
use schedule::Arrivals;
use session::{IdleSessions, SetupError, SourceAddresses, Target};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use workload::Mix;

/// Load and latency benchmarking for RESP servers (ringport, Redis, ...): closed loop or open
/// loop with coordinated-omission-corrected latency, HDR histograms, .hgrm / JSON / charts.
#[derive(Debug, Parser)]
#[command(
    name = "ringport-bench",
    version,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    group(clap::ArgGroup::new("tls_verify").args(["tls_ca", "tls_insecure"]))
)]
struct Cli {
    /// Without a command, runs the load the options describe.
    #[command(subcommand)]
    command: Option<Command>,

    /// Server to load, as [NAME=][USER[:PASSWORD]@]HOST:PORT. Give it several times to run the
    /// same load against each in turn and compare them in one table and chart.
    #[arg(short = 't', long = "target", default_value = "127.0.0.1:6380")]
    targets: Vec<String>,

    /// User to AUTH as on every connection (needs --password).
    #[arg(long, env = "RINGPORT_BENCH_USER")]
    user: Option<String>,

    /// Password to AUTH with on every connection (alone: AUTH password, user "default").
    #[arg(long, env = "RINGPORT_BENCH_PASSWORD", hide_env_values = true)]
    password: Option<String>,

    /// Open every connection with HELLO 3 (RESP3 replies); AUTH goes in the HELLO.
    #[arg(long)]
    resp3: bool,

    /// Connect to every target with TLS (needs --tls-ca or --tls-insecure). Every session is
    /// TLS, --idle ones included; handshakes are done before the measured phase.
    #[arg(long, requires = "tls_verify")]
    tls: bool,

    /// With --tls: PEM file of the CA certificate(s) the server's certificate must chain to
    /// (for a self-signed certificate, the certificate itself).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls",
        conflicts_with = "tls_insecure"
    )]
    tls_ca: Option<PathBuf>,

    /// With --tls: accept any server certificate, unverified (self-signed test servers). The
    /// handshake costs the same.
    #[arg(long, requires = "tls")]
    tls_insecure: bool,

    /// With --tls: client certificate chain (PEM) for servers that require one; with --tls-key.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "tls_key"])]
    tls_cert: Option<PathBuf>,

    /// With --tls: the client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "tls_cert"])]
    tls_key: Option<PathBuf>,

    /// With --tls: the name the server's certificate must be issued for, also sent as SNI
    /// (default: the target's host; localhost when that is an IP address).
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,

    /// Load connections, spread over the threads.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,

    /// Closed loop: requests kept outstanding per connection.
    #[arg(short = 'P', long, default_value_t = 1)]
    pipeline: usize,

    /// Open loop: requests per second in total, spread over the connections. Without it the
    /// load is closed loop (as fast as the server answers).
    #[arg(short = 'r', long)]
    rate: Option<f64>,

    /// Open loop: how requests are spaced.
    #[arg(long, value_enum, default_value_t = Arrivals::Even)]
    arrivals: Arrivals,

    /// Open loop: most requests outstanding per connection; requests due beyond it wait (and
    /// their wait counts in their latency). 1 behaves like wrk2.
    #[arg(long, default_value_t = 1000)]
    max_inflight: usize,

    /// Measured time (e.g. 10s, 500ms, 2m). Default 10s unless --requests is given.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Time before the measured part: load applied, nothing recorded.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,

    /// Stop after this many recorded requests (in total; with --duration, whichever is first).
    #[arg(short = 'n', long)]
    requests: Option<u64>,

    /// Command mix: weighted commands, e.g. 'GET=90,SET=9,HASH 100 x=1'. Bare GET/SET/INCR/...
    /// get a random key (and value); write __key__ and __value__ to place them yourself.
    #[arg(long, default_value = "PING")]
    mix: String,

    /// Keys are key:0 .. key:<keyspace-1>, picked uniformly.
    #[arg(long, default_value_t = 100_000)]
    keyspace: u64,

    /// Bytes in each value (SET and __value__).
    #[arg(long, default_value_t = 32)]
    value_size: usize,

    /// Extra authenticated sessions held open and idle for the whole run.
    #[arg(long, default_value_t = 0)]
    idle: usize,

    /// Load threads. Default: half the CPUs (at least 1, at most 8), never more than connections.
    #[arg(long)]
    threads: Option<usize>,

    /// Run the same load this many times against each target, one after the other. The JSON
    /// lists each repetition (for `diff` to tell change from noise); the totals merge them.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,

    /// Run once per value and chart throughput and p99 against it:
    /// connections=1,10,100 or rate=1000,5000 or pipeline=1,16.
    #[arg(long)]
    sweep: Option<String>,

    /// Write the latency distribution in HdrHistogram's .hgrm text (values in ms); with several
    /// runs, one file per run (FILE's stem + .<target>[.<sweep value>]); open loop adds
    /// .service.hgrm files for service time.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,

    /// Write the JSON summary.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Write a chart (.svg or .png): latency by percentile; with --sweep, throughput and p99
    /// by the swept value (and the percentile chart next to it, as <stem>.percentiles.<ext>).
    /// May be given more than once (e.g. one .svg and one .png).
    #[arg(long, value_name = "FILE")]
    plot: Vec<PathBuf>,

    /// Write a chart (.svg or .png) of latency (p50, p99, max) and throughput per second of
    /// measured time, to see when a stall happened. May be given more than once.
    #[arg(long, value_name = "FILE")]
    timeline_plot: Vec<PathBuf>,

    /// Also write the result table (Markdown) to this file.
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,

    /// After sending stops, how long to wait for outstanding replies.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    drain: Duration,

    /// Open loop: busy-poll instead of sleeping when the next request is due within this many
    /// microseconds. Sends leave closer to their intended time (a wake-up from sleep is often
    /// 10-50 us late, and that counts as latency) at the cost of a busy client core.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0)]
    spin: u64,

    /// Stop sending when no reply at all has arrived for this long (then drain and report).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    stall_timeout: Duration,

    /// Seed for keys, command picks and Poisson arrivals (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,

    /// No progress line.
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Compare two JSON summaries (--json): per target, median throughput and latency
    /// percentiles of A and B, the change, the noise band from the spread of their
    /// repetitions (--repeat), and whether B is better, worse or within noise.
    Diff {
        /// The baseline summary.
        a: PathBuf,
        /// The summary to compare with it.
        b: PathBuf,
    },
}

const AFTER_HELP: &str = "\
Examples:
  ringport-bench -t 127.0.0.1:6379 -c 50 -P 16 -d 10s
  ringport-bench -t ringport=127.0.0.1:6380 --user bench --password pw --rate 20000 \\
      --mix 'GET=90,SET=10' --hgrm out.hgrm --json out.json --plot out.svg
  ringport-bench -t redis=127.0.0.1:6379 -t ringport=bench:pw@127.0.0.1:6380 \\
      --sweep connections=1,10,100,1000 --plot sweep.png
  ringport-bench -t 127.0.0.1:6380 --repeat 5 --json before.json --timeline-plot before.svg
  ringport-bench -t bench:pw@127.0.0.1:6381 --tls --tls-ca cert.pem --idle 10000
  ringport-bench diff before.json after.json";

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (like 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1e3,
        "us" | "µs" => number / 1e6,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} (use ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

/// What `--sweep` varies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SweepParameter {
    Connections,
    Rate,
    Pipeline,
}

impl SweepParameter {
    fn name(self) -> &'static str {
        match self {
            SweepParameter::Connections => "connections",
            SweepParameter::Rate => "rate",
            SweepParameter::Pipeline => "pipeline",
        }
    }
}

fn parse_sweep(spec: &str) -> Result<(SweepParameter, Vec<f64>), String> {
    let (name, values) = spec
        .split_once('=')
        .ok_or_else(|| format!("--sweep {spec:?}: expected PARAMETER=V1,V2,..."))?;
    let parameter = match name.trim() {
        "connections" | "c" => SweepParameter::Connections,
        "rate" | "r" => SweepParameter::Rate,
        "pipeline" | "P" => SweepParameter::Pipeline,
        other => {
            return Err(format!(
                "--sweep: unknown parameter {other:?} (connections, rate or pipeline)"
            ))
        }
    };
    let values = values
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0)
                .ok_or_else(|| format!("--sweep: {v:?} is not a positive number"))
        })
        .collect::<Result<Vec<f64>, String>>()?;
    if values.is_empty() {
        return Err("--sweep needs at least one value".into());
    }
    Ok((parameter, values))
}

/// The load of one run (the CLI's, with the sweep value applied).
#[derive(Debug, Clone, Copy)]
struct RunLoad {
    connections: usize,
    model: Model,
    threads: usize,
}

/// A finished run: its JSON entry and the histograms behind it.
struct Outcome {
    result: TargetResult,
    latency: Histogram<u64>,
    service: Histogram<u64>,
    open_loop: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Diff { a, b }) = &cli.command {
        return match diff::run(a, b) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("ringport-bench diff: error: {message}");
                ExitCode::from(2)
            }
        };
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Setup(message)) => {
            eprintln!("ringport-bench: error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Other(message)) => {
            eprintln!("ringport-bench: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Why a whole invocation failed: 2 for the target (unreachable, AUTH), 1 for the rest.
enum Failure {
    Setup(String),
    Other(String),
}

impl From<SetupError> for Failure {
    fn from(error: SetupError) -> Failure {
        Failure::Setup(error.0)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Other(message)
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    raise_open_file_limit();
    let mix = Mix::parse(&cli.mix, cli.keyspace, cli.value_size)?;
    let mut targets = cli
        .targets
        .iter()
        .map(|spec| Target::parse(spec, cli.user.as_deref(), cli.password.as_deref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Setup)?;
    if cli.tls {
        let config = tls::client_config(&tls::TlsFlags {
            ca: cli.tls_ca.clone(),
            insecure: cli.tls_insecure,
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
        })
        .map_err(Failure::Setup)?;
        for target in &mut targets {
            target.tls = Some(tls::TlsTarget {
                config: config.clone(),
                server_name: tls::server_name(&target.address, cli.tls_server_name.as_deref())
                    .map_err(Failure::Setup)?,
            });
        }
    }
    let mut names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != targets.len() {
        return Err("two targets have the same name; name them NAME=HOST:PORT"
            .to_string()
            .into());
    }
    if cli.connections == 0 || cli.pipeline == 0 || cli.max_inflight == 0 {
        return Err(
            "--connections, --pipeline and --max-inflight must be at least 1"
                .to_string()
                .into(),
        );
    }
    if let Some(rate) = cli.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err("--rate must be a positive number of requests/s"
                .to_string()
                .into());
        }
    }
    let sweep = cli.sweep.as_deref().map(parse_sweep).transpose()?;
    for path in cli.plot.iter().chain(&cli.timeline_plot) {
        plot::check_extension(path)?;
    }
    let (kernel, host) = report::machine();
    let date = report::utc_now();
    let seed = cli
        .seed
        .unwrap_or_else(|| engine::now_ns() ^ 0x5eed_0fb3_c4d5);

    let values: Vec<Option<f64>> = match &sweep {
        Some((_, values)) => values.iter().copied().map(Some).collect(),
        None => vec![None],
    };
    let mut outcomes = Vec::new();
    for value in &values {
        let load = run_load(cli, sweep.as_ref().map(|s| s.0), *value);
        for target in &targets {
            let outcome = run_target(
                cli,
                target,
                &mix,
                load,
                seed,
                sweep.as_ref().map(|s| s.0),
                *value,
            )?;
            outcomes.push(outcome);
        }
    }

    let summary = Summary {
        tool: "ringport-bench",
        version: env!("CARGO_PKG_VERSION"),
        date,
        kernel,
        host,
        sweep: sweep.as_ref().map(|(parameter, values)| SweepSpec {
            parameter: parameter.name().to_string(),
            values: values.clone(),
        }),
        targets: outcomes.iter().map(|o| o.result.clone()).collect(),
    };
    let table = report::table(&summary);
    print!("{table}");
    let _ = std::io::stdout().flush();
    write_outputs(cli, &summary, &outcomes, &table)?;
    Ok(())
}

/// The load of one run: the CLI's, with the sweep value applied.
fn run_load(cli: &Cli, parameter: Option<SweepParameter>, value: Option<f64>) -> RunLoad {
    let mut connections = cli.connections;
    let mut pipeline = cli.pipeline;
    let mut rate = cli.rate;
    if let (Some(parameter), Some(value)) = (parameter, value) {
        match parameter {
            SweepParameter::Connections => connections = (value as usize).max(1),
            SweepParameter::Pipeline => pipeline = (value as usize).max(1),
            SweepParameter::Rate => rate = Some(value),
        }
    }
    let model = match rate {
        Some(rate) => Model::Open {
            rate,
            arrivals: cli.arrivals,
            max_inflight: cli.max_inflight,
        },
        None => Model::Closed { pipeline },
    };
    let default_threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .clamp(1, 8);
    let threads = cli.threads.unwrap_or(default_threads).clamp(1, connections);
    RunLoad {
        connections,
        model,
        threads,
    }
}

fn load_settings(cli: &Cli, target: &Target, load: RunLoad) -> LoadSettings {
    let (model, pipeline, rate, arrivals, max_inflight) = match load.model {
        Model::Closed { pipeline } => ("closed", Some(pipeline), None, None, None),
        Model::Open {
            rate,
            arrivals,
            max_inflight,
        } => ("open", None, Some(rate), Some(arrivals), Some(max_inflight)),
    };
    LoadSettings {
        model,
        connections: load.connections,
        pipeline,
        rate,
        arrivals,
        max_inflight,
        threads: load.threads,
        duration_s: effective_duration(cli).map(|d| d.as_secs_f64()),
        warmup_s: cli.warmup.as_secs_f64(),
        requests_limit: cli.requests,
        mix: cli.mix.clone(),
        keyspace: cli.keyspace,
        value_size: cli.value_size,
        idle: cli.idle,
        resp3: cli.resp3,
        tls: target.tls.is_some(),
        authenticated: target.password.is_some(),
    }
}

/// `--duration`, or 10 s when neither it nor `--requests` is given.
fn effective_duration(cli: &Cli) -> Option<Duration> {
    match (cli.duration, cli.requests) {
        (Some(duration), _) => Some(duration),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    }
}

/// Runs the load against `target` `--repeat` times, one after the other, and merges the
/// repetitions into one result.
fn run_target(
    cli: &Cli,
    target: &Target,
    mix: &Mix,
    load: RunLoad,
    seed: u64,
    parameter: Option<SweepParameter>,
    value: Option<f64>,
) -> Result<Outcome, Failure> {
    let label = match (parameter, value) {
        (Some(p), Some(v)) => format!("{} {}={}", target.name, p.name(), report::trim_float(v)),
        _ => target.name.clone(),
    };
    let repeat = cli.repeat as usize;
    let mut measurements = Vec::with_capacity(repeat);
    for repetition in 0..repeat {
        let label = if repeat > 1 {
            format!("{label} #{}/{repeat}", repetition + 1)
        } else {
            label.clone()
        };
        // Each repetition draws its own keys and arrivals (the first the same as without
        // --repeat), so the spread over repetitions is run-to-run noise, not one sequence
        // replayed.
        let seed =
            seed ^ fnv(&target.name) ^ (repetition as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let measurement = measure(cli, target, mix, load, seed, &label)?;
        if !cli.quiet && repeat > 1 {
            let repetition = measurement.repetition();
            announce(
                &label,
                &repetition,
                measurement.cpu_percent(),
                &measurement.protocol_errors,
            );
        }
        measurements.push(measurement);
    }
    let sweep = match (parameter, value) {
        (Some(p), Some(v)) => Some(BTreeMap::from([(p.name().to_string(), v)])),
        _ => None,
    };
    let outcome = merge_repetitions(cli, target, mix, load, sweep, measurements);
    if !cli.quiet {
        let result = &outcome.result;
        let label = if repeat > 1 {
            format!("{label} all {repeat}")
        } else {
            label
        };
        let total = RepetitionResult {
            requests: result.requests,
            errors: result.errors,
            throughput_rps: result.throughput_rps,
            duration_s: result.duration_s,
            latency_us: result.latency_us.clone(),
        };
        // With repetitions each one's protocol errors were shown already.
        let protocol_errors: &[String] = if repeat > 1 {
            &[]
        } else {
            &result.protocol_errors
        };
        announce(&label, &total, result.client.cpu_percent, protocol_errors);
    }
    Ok(outcome)
}

/// The one-line result on stderr.
fn announce(label: &str, run: &RepetitionResult, cpu_percent: f64, protocol_errors: &[String]) {
    eprintln!(
        "[{label}] {} requests in {:.2} s: {:.0} req/s, p50 {} µs, p99 {} µs, {} errors (client CPU {:.0}%)",
        run.requests,
        run.duration_s,
        run.throughput_rps,
        run.latency_us.p50,
        run.latency_us.p99,
        run.errors,
        cpu_percent,
    );
    for error in protocol_errors {
        eprintln!("[{label}] protocol error: {error}");
    }
}

/// What one repetition measured, before the repetitions are merged.
struct Measurement {
    started: String,
    server: BTreeMap<String, String>,
    /// The threads' recorders merged, not yet [`Recorder::finish`]ed.
    recorder: Recorder,
    /// From the end of warm-up to the last reply.
    duration_s: f64,
    unanswered: u64,
    disconnects: u64,
    pushes: u64,
    protocol_errors: Vec<String>,
    idle: Option<IdleResult>,
    cpu_seconds: f64,
    wall_seconds: f64,
}

impl Measurement {
    fn repetition(&self) -> RepetitionResult {
        RepetitionResult {
            requests: self.recorder.requests(),
            errors: self.recorder.errors,
            throughput_rps: throughput(self.recorder.requests(), self.duration_s),
            duration_s: round_to(self.duration_s, 1000.0),
            latency_us: Percentiles::of(&self.recorder.latency),
        }
    }

    fn cpu_percent(&self) -> f64 {
        cpu_percent(self.cpu_seconds, self.wall_seconds)
    }
}

/// Requests per second, to 0.1.
fn throughput(requests: u64, duration_s: f64) -> f64 {
    if duration_s > 0.0 {
        round_to(requests as f64 / duration_s, 10.0)
    } else {
        0.0
    }
}

fn cpu_percent(cpu_seconds: f64, wall_seconds: f64) -> f64 {
    if wall_seconds > 0.0 {
        (100.0 * cpu_seconds / wall_seconds).round()
    } else {
        0.0
    }
}

/// `value` rounded to `1/per` (`per` = 10: one decimal).
fn round_to(value: f64, per: f64) -> f64 {
    (value * per).round() / per
}

/// One repetition: opens the sessions, runs the load threads, and merges what they recorded.
fn measure(
    cli: &Cli,
    target: &Target,
    mix: &Mix,
    load: RunLoad,
    seed: u64,
    label: &str,
) -> Result<Measurement, Failure> {
    let started = report::utc_now();
    let mut sources = SourceAddresses::default();
    // Sessions first, so a wrong address or password fails before anything else happens.
    let mut sessions = session::open_sessions(target, load.connections, cli.resp3, &mut sources)?;
    let server = session::server_info(&mut sessions[0], target)?;
    let idle = if cli.idle > 0 {
        if !cli.quiet {
            eprintln!("[{label}] opening {} idle sessions", cli.idle);
        }
        Some(IdleSessions::open(
            target,
            cli.idle,
            cli.resp3,
            &mut sources,
        )?)
    } else {
        None
    };
    for session in &sessions {
        session
            .stream
            .set_nonblocking(true)
            .map_err(|e| format!("set_nonblocking: {e}"))?;
    }
    let mut per_thread: Vec<Vec<(usize, session::Session)>> =
        (0..load.threads).map(|_| Vec::new()).collect();
    for (index, session) in sessions.into_iter().enumerate() {
        per_thread[index % load.threads].push((index, session));
    }
    let duration = effective_duration(cli);
    let plan = Plan {
        mix: mix.clone(),
        model: load.model,
        connections: load.connections,
        start_ns: engine::now_ns() + 5_000_000,
        warmup_ns: cli.warmup.as_nanos() as u64,
        duration_ns: duration.map(|d| d.as_nanos() as u64),
        requests: cli.requests,
        drain_ns: cli.drain.as_nanos() as u64,
        spin_ns: cli.spin.saturating_mul(1000),
        seed,
    };
    let progress = Progress::new(load.threads);
    let cpu_before = process_cpu_seconds();
    let wall = Instant::now();
    let outputs: Vec<std::io::Result<ThreadOutput>> = std::thread::scope(|scope| {
        let handles: Vec<_> = per_thread
            .into_iter()
            .enumerate()
            .map(|(thread_index, streams)| {
                let plan = &plan;
                let progress = &progress;
                std::thread::Builder::new()
                    .name(format!("load-{thread_index}"))
                    .spawn_scoped(scope, move || {
                        engine::run_thread(plan, streams, thread_index, progress)
                    })
                    .expect("spawning a load thread")
            })
            .collect();
        watch(cli, label, &plan, &progress, || {
            handles.iter().all(|h| h.is_finished())
        });
        handles
            .into_iter()
            .map(|h| h.join().expect("load thread panicked"))
            .collect()
    });
    let cpu_seconds = process_cpu_seconds() - cpu_before;
    let wall_seconds = wall.elapsed().as_secs_f64();

    let mut recorder = Recorder::new(
        mix.commands.len(),
        matches!(load.model, Model::Closed { .. }),
        Timeline::new(plan.measure_start_ns(), plan.duration_ns),
    );
    let (mut unanswered, mut disconnects, mut pushes) = (0, 0, 0);
    let mut protocol_errors = Vec::new();
    for output in outputs {
        let output = output.map_err(|e| format!("load thread failed: {e}"))?;
        recorder.merge(&output.recorder);
        unanswered += output.unanswered;
        disconnects += output.disconnects;
        pushes += output.pushes;
        protocol_errors.extend(output.protocol_errors);
    }
    protocol_errors.truncate(20);
    let idle = idle.map(|mut idle| IdleResult {
        requested: cli.idle,
        opened: idle.len(),
        closed_by_server: idle.closed_by_server(),
    });
    let elapsed_ns = recorder
        .last_reply_ns
        .saturating_sub(plan.measure_start_ns());
    Ok(Measurement {
        started,
        server: server.into_iter().collect(),
        recorder,
        duration_s: elapsed_ns as f64 / 1e9,
        unanswered,
        disconnects,
        pushes,
        protocol_errors,
        idle,
        cpu_seconds,
        wall_seconds,
    })
}

/// The run's result: the repetitions' histograms and counts merged into the overall fields, as
/// if they were one longer run, with each repetition and each of its seconds listed too.
fn merge_repetitions(
    cli: &Cli,
    target: &Target,
    mix: &Mix,
    load: RunLoad,
    sweep: Option<BTreeMap<String, f64>>,
    measurements: Vec<Measurement>,
) -> Outcome {
    let open_loop = matches!(load.model, Model::Open { .. });
    let several = measurements.len() > 1;
    let (started, server) = measurements
        .first()
        .map(|m| (m.started.clone(), m.server.clone()))
        .unwrap_or_default();
    let mut recorder = Recorder::new(mix.commands.len(), !open_loop, Timeline::default());
    let mut repetitions = Vec::with_capacity(measurements.len());
    let mut timeline = Vec::new();
    let mut idle: Option<IdleResult> = None;
    let (mut duration_s, mut cpu_seconds, mut wall_seconds) = (0.0, 0.0, 0.0);
    let (mut unanswered, mut disconnects, mut pushes) = (0, 0, 0);
    let mut protocol_errors = Vec::new();
    for (index, mut measurement) in measurements.into_iter().enumerate() {
        repetitions.push(measurement.repetition());
        // Each repetition's seconds count from its own start; only the totals add up.
        let seconds = std::mem::take(&mut measurement.recorder.timeline);
        timeline.extend(report::timeline(&seconds, several.then_some(index + 1)));
        recorder.merge(&measurement.recorder);
        duration_s += measurement.duration_s;
        cpu_seconds += measurement.cpu_seconds;
        wall_seconds += measurement.wall_seconds;
        unanswered += measurement.unanswered;
        disconnects += measurement.disconnects;
        pushes += measurement.pushes;
        protocol_errors.extend(measurement.protocol_errors);
        // The worst repetition speaks for all: fewest sessions opened, most closed.
        idle = match (idle, measurement.idle) {
            (Some(a), Some(b)) => Some(IdleResult {
                requested: a.requested,
                opened: a.opened.min(b.opened),
                closed_by_server: a.closed_by_server.max(b.closed_by_server),
            }),
            (a, b) => a.or(b),
        };
    }
    recorder.finish();
    protocol_errors.truncate(20);
    let requests = recorder.requests();
    let mut commands = BTreeMap::new();
    for (command, record) in mix.commands.iter().zip(&recorder.commands) {
        commands.insert(
            command.name.clone(),
            CommandResult {
                requests: record.latency.len(),
                errors: record.errors,
                latency_us: Percentiles::of(&record.latency),
                service_time_us: Percentiles::of(&record.service),
            },
        );
    }
    let result = TargetResult {
        name: target.name.clone(),
        address: target.address.clone(),
        started,
        server,
        load: load_settings(cli, target, load),
        sweep,
        requests,
        errors: recorder.errors,
        errors_by_kind: recorder.errors_by_kind.iter().cloned().collect(),
        unanswered,
        disconnects,
        protocol_errors,
        throughput_rps: throughput(requests, duration_s),
        duration_s: round_to(duration_s, 1000.0),
        latency_us: Percentiles::of(&recorder.latency),
        service_time_us: Percentiles::of(&recorder.service),
        send_lag_us: open_loop.then(|| Percentiles::of(&recorder.send_lag)),
        commands,
        idle,
        client: ClientResult {
            cpu_seconds: round_to(cpu_seconds, 100.0),
            cpu_percent: cpu_percent(cpu_seconds, wall_seconds),
            pushes,
        },
        repetitions,
        timeline,
    };
    Outcome {
        result,
        latency: recorder.latency,
        service: recorder.service,
        open_loop,
    }
}

/// Shows progress while the load threads run, and stops them if the server stops answering.
fn watch(cli: &Cli, label: &str, plan: &Plan, progress: &Progress, finished: impl Fn() -> bool) {
    let expected_s = (plan.warmup_ns + plan.duration_ns.unwrap_or(u64::MAX / 4)) as f64 / 1e9;
    let show = !cli.quiet && expected_s > 3.0;
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let started = Instant::now();
    let (mut last_print, mut last_replies) = (Instant::now(), 0);
    let (mut last_change, mut change_replies) = (Instant::now(), 0);
    while !finished() {
        std::thread::sleep(Duration::from_millis(50));
        let (replies, errors, outstanding) = progress.totals();
        // Stalled: requests wait and nothing comes back (a slow open loop may idle legitimately).
        if replies != change_replies || outstanding == 0 {
            (last_change, change_replies) = (Instant::now(), replies);
        } else if last_change.elapsed() > cli.stall_timeout
            && !progress.stop.load(Ordering::Relaxed)
        {
            eprintln!(
                "[{label}] no reply for {:.1} s: stopping this run",
                cli.stall_timeout.as_secs_f64()
            );
            progress.stop.store(true, Ordering::Relaxed);
        }
        if show && last_print.elapsed() >= every {
            let interval = last_print.elapsed().as_secs_f64();
            let rate = (replies - last_replies) as f64 / interval;
            let line = format!(
                "[{label}] {:.0} s  {replies} replies  {rate:.0} req/s  {} errors",
                started.elapsed().as_secs_f64(),
                errors
            );
            if terminal {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
            (last_print, last_replies) = (Instant::now(), replies);
        }
    }
    if show && terminal {
        eprint!("\r\x1b[K");
    }
}

/// Writes the .hgrm files, the JSON summary, the chart(s) and the table file that were asked for.
fn write_outputs(
    cli: &Cli,
    summary: &Summary,
    outcomes: &[Outcome],
    table: &str,
) -> Result<(), Failure> {
    let several = outcomes.len() > 1;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    if let Some(path) = &cli.hgrm {
        for outcome in outcomes {
            let label = several.then(|| run_file_label(&outcome.result));
            let latency = hgrm::percentile_distribution(
                &outcome.latency,
                5,
                hgrm::NANOSECONDS_PER_MILLISECOND,
            );
            write(&sibling(path, label.as_deref(), None), &latency)?;
            if outcome.open_loop {
                let service = hgrm::percentile_distribution(
                    &outcome.service,
                    5,
                    hgrm::NANOSECONDS_PER_MILLISECOND,
                );
                write(&sibling(path, label.as_deref(), Some("service")), &service)?;
            }
        }
    }
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?;
        write(path, &(json + "\n"))?;
    }
    if let Some(path) = &cli.table {
        write(path, table)?;
    }
    let subtitle = match summary.targets.first() {
        Some(first) if summary.sweep.is_none() => format!(
            "{} · {} · kernel {}",
            report::describe_load(&first.load),
            summary.date,
            summary.kernel
        ),
        _ => format!("{} · kernel {}", summary.date, summary.kernel),
    };
    for path in &cli.plot {
        let percentile_path = match &summary.sweep {
            Some(sweep) => {
                let series = sweep_series(summary, &sweep.parameter);
                plot::sweep_chart(
                    path,
                    &format!("Throughput and p99 latency by {}", sweep.parameter),
                    &sweep.parameter,
                    &series,
                )
                .map_err(|e| format!("drawing {}: {e}", path.display()))?;
                sibling(path, None, Some("percentiles"))
            }
            None => path.clone(),
        };
        let series = percentile_series(outcomes);
        plot::percentile_chart(
            &percentile_path,
            "Latency by percentile",
            &subtitle,
            &series,
        )
        .map_err(|e| format!("drawing {}: {e}", percentile_path.display()))?;
    }
    if !cli.timeline_plot.is_empty() {
        let series = timeline_series(outcomes);
        for path in &cli.timeline_plot {
            plot::timeline_chart(
                path,
                "Latency and throughput per second",
                &subtitle,
                &series,
            )
            .map_err(|e| format!("drawing {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// One line per run; its repetitions follow each other on the x axis.
fn timeline_series(outcomes: &[Outcome]) -> Vec<plot::TimelineSeries> {
    outcomes
        .iter()
        .map(|outcome| {
            let mut repetitions: Vec<Vec<plot::TimelinePoint>> = Vec::new();
            // Each repetition's seconds run from 0 and follow the previous repetition's, so
            // an entry's place in the list is its place on the axis.
            for (index, second) in outcome.result.timeline.iter().enumerate() {
                if second.second == 0 || repetitions.is_empty() {
                    repetitions.push(Vec::new());
                }
                repetitions
                    .last_mut()
                    .expect("a repetition was started")
                    .push(plot::TimelinePoint {
                        x: index as f64 + 0.5,
                        throughput: second.throughput_rps,
                        p50: second.p50_us,
                        p99: second.p99_us,
                        max: second.max_us,
                    });
            }
            plot::TimelineSeries {
                label: run_display_label(&outcome.result),
                repetitions,
            }
        })
        .collect()
}

fn percentile_series(outcomes: &[Outcome]) -> Vec<plot::PercentileSeries> {
    let mut series = Vec::new();
    for (index, outcome) in outcomes.iter().enumerate() {
        let name = run_display_label(&outcome.result);
        let points = |histogram: &Histogram<u64>| -> Vec<(f64, f64)> {
            hgrm::percentile_rows(histogram, 5)
                .into_iter()
                .filter(|row| row.percentile < 100.0)
                .map(|row| (row.percentile, row.value as f64 / 1000.0))
                .collect()
        };
        if outcome.open_loop {
            series.push(plot::PercentileSeries {
                label: format!("{name} latency (from intended send)"),
                points: points(&outcome.latency),
                dashed: false,
                color: index,
            });
            series.push(plot::PercentileSeries {
                label: format!("{name} service time"),
                points: points(&outcome.service),
                dashed: true,
                color: index,
            });
        } else {
            series.push(plot::PercentileSeries {
                label: name,
                points: points(&outcome.latency),
                dashed: false,
                color: index,
            });
        }
    }
    series
}

fn sweep_series(summary: &Summary, parameter: &str) -> Vec<plot::SweepSeries> {
    let mut series: Vec<plot::SweepSeries> = Vec::new();
    for run in &summary.targets {
        let value = run
            .sweep
            .as_ref()
            .and_then(|s| s.get(parameter))
            .copied()
            .unwrap_or(0.0);
        let point = (value, run.throughput_rps, run.latency_us.p99);
        match series.iter_mut().find(|s| s.label == run.name) {
            Some(line) => line.points.push(point),
            None => series.push(plot::SweepSeries {
                label: run.name.clone(),
                points: vec![point],
            }),
        }
    }
    series
}

/// `redis` or `redis connections=10`, for legends.
fn run_display_label(result: &TargetResult) -> String {
    let mut label = result.name.clone();
    for (key, value) in result.sweep.iter().flatten() {
        label.push_str(&format!(" {key}={}", report::trim_float(*value)));
    }
    label
}

/// `redis` or `redis.connections10`, for file names.
fn run_file_label(result: &TargetResult) -> String {
    let mut label = safe_file_part(&result.name);
    for (key, value) in result.sweep.iter().flatten() {
        label.push_str(&format!(
            ".{key}{}",
            safe_file_part(&report::trim_float(*value))
        ));
    }
    label
}

fn safe_file_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `dir/out.hgrm` → `dir/out.<label>.<kind>.hgrm`, leaving out the parts not given.
fn sibling(path: &Path, label: Option<&str>, kind: Option<&str>) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let extension = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let mut name = stem;
    for part in [label, kind].into_iter().flatten() {
        name.push('.');
        name.push_str(part);
    }
    name.push_str(&extension);
    path.with_file_name(name)
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Lets many sessions open: raises the soft open-file limit to the hard one.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

/// User plus system CPU time of this process so far (from /proc/self/stat), in seconds.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let per_second = rustix::param::clock_ticks_per_second() as f64;
    (ticks(11) + ticks(12)) / per_second
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn sweeps() {
        let (p, v) = parse_sweep("connections=1,10,100").unwrap();
        assert_eq!(
            (p, v),
            (SweepParameter::Connections, vec![1.0, 10.0, 100.0])
        );
        assert!(parse_sweep("threads=1").is_err());
        assert!(parse_sweep("rate=0").is_err());
    }

    #[test]
    fn sibling_names() {
        let p = Path::new("out/run.hgrm");
        assert_eq!(sibling(p, None, None), Path::new("out/run.hgrm"));
        assert_eq!(
            sibling(p, Some("redis"), Some("service")),
            Path::new("out/run.redis.service.hgrm")
        );
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn diff_is_a_command_and_flags_still_run_a_load() {
        let cli = Cli::try_parse_from(["ringport-bench", "-t", "h:1", "--mix", "PING"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(
            (cli.targets.as_slice(), cli.repeat),
            (&["h:1".to_string()][..], 1)
        );
        let cli = Cli::try_parse_from(["ringport-bench", "diff", "a.json", "b.json"]).unwrap();
        match cli.command {
            Some(Command::Diff { a, b }) => {
                assert_eq!((a, b), (PathBuf::from("a.json"), PathBuf::from("b.json")));
            }
            None => panic!("diff not parsed"),
        }
        assert!(Cli::try_parse_from(["ringport-bench", "diff", "a.json"]).is_err());
        assert!(Cli::try_parse_from(["ringport-bench", "--repeat", "0"]).is_err());
    }

    /// A repetition of a closed-loop PING run that got `replies` replies of `latency_ns` each,
    /// spread over its seconds.
    fn measurement(replies: u64, latency_ns: u64, seconds: u64) -> Measurement {
        const S: u64 = 1_000_000_000;
        let start = 7 * S;
        let mut recorder = Recorder::new(1, true, Timeline::new(start, Some(seconds * S)));
        for k in 0..replies {
            let reply_ns = start + latency_ns + k * (seconds * S - latency_ns) / replies;
            let request = schedule::InFlight {
                intended_ns: reply_ns - latency_ns,
                sent_ns: reply_ns - latency_ns,
                command: 0,
                recorded: true,
            };
            recorder.record(&request, reply_ns, None);
        }
        Measurement {
            started: "2025-01-31T12:00:00Z".into(),
            server: BTreeMap::new(),
            recorder,
            duration_s: seconds as f64,
            unanswered: 1,
            disconnects: 0,
            pushes: 0,
            protocol_errors: Vec::new(),
            idle: None,
            cpu_seconds: 0.5,
            wall_seconds: 1.0,
        }
    }

    #[test]
    fn repetitions_merge_into_the_totals() {
        let cli = Cli::try_parse_from(["ringport-bench", "--repeat", "2"]).unwrap();
        let target = Target::parse("ringport=127.0.0.1:6380", None, None).unwrap();
        let mix = Mix::parse("PING", 10, 1).unwrap();
        let load = run_load(&cli, None, None);
        let measurements = vec![
            measurement(3000, 100_000, 3),
            measurement(1000, 1_000_000, 2),
        ];
        let outcome = merge_repetitions(&cli, &target, &mix, load, None, measurements);
        let result = &outcome.result;
        assert_eq!(result.requests, 4000);
        assert_eq!(result.unanswered, 2);
        assert_eq!(result.duration_s, 5.0);
        assert_eq!(result.throughput_rps, 800.0);
        assert_eq!(result.client.cpu_percent, 50.0);
        // The overall percentiles are those of all replies together.
        assert!((result.latency_us.p50 - 100.0).abs() < 0.5);
        assert!((result.latency_us.p90 - 1000.0).abs() < 1.0);
        assert_eq!(result.latency_us, result.service_time_us);
        assert_eq!(result.commands["PING"].requests, 4000);
        let throughputs: Vec<f64> = result
            .repetitions
            .iter()
            .map(|r| r.throughput_rps)
            .collect();
        assert_eq!(throughputs, vec![1000.0, 500.0]);
        assert!((result.repetitions[1].latency_us.p50 - 1000.0).abs() < 1.0);
        // Each repetition keeps its own seconds, numbered from 0.
        let seconds: Vec<(Option<usize>, usize, u64)> = result
            .timeline
            .iter()
            .map(|s| (s.repetition, s.second, s.requests))
            .collect();
        assert_eq!(
            seconds,
            vec![
                (Some(1), 0, 1000),
                (Some(1), 1, 1000),
                (Some(1), 2, 1000),
                (Some(2), 0, 500),
                (Some(2), 1, 500),
            ]
        );
        let series = timeline_series(std::slice::from_ref(&outcome));
        assert_eq!(series[0].repetitions.len(), 2);
        assert_eq!(series[0].repetitions[1][0].x, 3.5);
        let json = serde_json::to_value(result).unwrap();
        assert_eq!(json["repetitions"].as_array().unwrap().len(), 2);
        assert_eq!(json["timeline"].as_array().unwrap().len(), 5);
    }
}
