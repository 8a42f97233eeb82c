//! Results: the JSON summary, the table, and what every result records about where it ran.

use crate::record::Timeline;
use hdrhistogram::{Counter, Histogram};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// The JSON summary (`--json`): the machine, then one entry per run.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub tool: &'static str,
    pub version: &'static str,
    /// UTC, ISO 8601.
    pub date: String,
    pub kernel: String,
    pub host: Host,
    /// `--sweep`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSpec>,
    /// One entry per run: each target, and each sweep value.
    pub targets: Vec<TargetResult>,
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub name: String,
    pub cpus: usize,
}

#[derive(Debug, Serialize, Clone)]
pub struct SweepSpec {
    pub parameter: String,
    pub values: Vec<f64>,
}

/// The load one run applied.
#[derive(Debug, Serialize, Clone)]
pub struct LoadSettings {
    /// `closed` or `open`.
    pub model: &'static str,
    pub connections: usize,
    /// Closed loop: requests kept outstanding per connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<usize>,
    /// Open loop: requests/s in total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrivals: Option<crate::schedule::Arrivals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<usize>,
    pub threads: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    pub warmup_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_limit: Option<u64>,
    pub mix: String,
    pub keyspace: u64,
    pub value_size: usize,
    pub idle: usize,
    pub resp3: bool,
    /// Written only when true, so summaries from before `--tls` compare without a difference.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    pub authenticated: bool,
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    #[serde(rename = "p99.99")]
    pub p99_99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nanoseconds to microseconds, rounded to 0.1 µs.
fn us(ns: f64) -> f64 {
    (ns / 100.0).round() / 10.0
}

impl Percentiles {
    /// From a histogram of nanoseconds.
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                p99_99: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        let at = |q: f64| us(histogram.value_at_quantile(q) as f64);
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p99_9: at(0.999),
            p99_99: at(0.9999),
            max: us(histogram.max() as f64),
            mean: us(histogram.mean()),
        }
    }
}

/// One repetition of a run (`--repeat`), so a comparison can tell change from noise.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct RepetitionResult {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub errors: u64,
    pub throughput_rps: f64,
    #[serde(default)]
    pub duration_s: f64,
    pub latency_us: Percentiles,
}

/// One second of a run's measured time.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct TimelineSecond {
    /// With `--repeat`, which repetition (from 1); each has its own seconds from 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition: Option<usize>,
    /// Whole seconds since the end of warm-up, by reply time.
    pub second: usize,
    pub requests: u64,
    pub throughput_rps: f64,
    /// `None` (null) in a second without replies.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
}

/// The JSON entries of a timeline: one per second up to the last reply, empty seconds included
/// (they are what a stall looks like).
pub fn timeline(timeline: &Timeline, repetition: Option<usize>) -> Vec<TimelineSecond> {
    fn at<C: Counter>(histogram: Option<&Histogram<C>>, q: f64) -> Option<f64> {
        histogram.map(|h| us(h.value_at_quantile(q) as f64))
    }
    timeline
        .seconds()
        .enumerate()
        .map(|(second, histogram)| {
            let requests = histogram.map_or(0, |h| h.len());
            TimelineSecond {
                repetition,
                second,
                requests,
                // Each entry spans one second (the last one may be partial: see the README).
                throughput_rps: requests as f64 / 1.0,
                p50_us: at(histogram, 0.5),
                p99_us: at(histogram, 0.99),
                max_us: histogram.map(|h| us(h.max() as f64)),
            }
        })
        .collect()
}

#[derive(Debug, Serialize, Clone)]
pub struct CommandResult {
    pub requests: u64,
    pub errors: u64,
    pub latency_us: Percentiles,
    pub service_time_us: Percentiles,
}

#[derive(Debug, Serialize, Clone)]
pub struct IdleResult {
    pub requested: usize,
    pub opened: usize,
    /// Idle sessions the server had closed by the end of the run.
    pub closed_by_server: usize,
}

/// One run against one target.
#[derive(Debug, Serialize, Clone)]
pub struct TargetResult {
    pub name: String,
    pub address: String,
    /// When this run started (UTC, ISO 8601).
    pub started: String,
    /// What the server said about itself (`INFO server`: version, I/O backend).
    pub server: BTreeMap<String, String>,
    pub load: LoadSettings,
    /// The sweep parameter's value for this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<BTreeMap<String, f64>>,
    /// Replies recorded (measured window, warm-up excluded), errors included.
    pub requests: u64,
    /// Error replies among them.
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Recorded requests that never got a reply.
    pub unanswered: u64,
    pub disconnects: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protocol_errors: Vec<String>,
    pub throughput_rps: f64,
    /// Measured time the throughput is over.
    pub duration_s: f64,
    /// From intended send time: corrected for coordinated omission in open loop; the same as
    /// `service_time_us` in closed loop.
    pub latency_us: Percentiles,
    /// From actual send time.
    pub service_time_us: Percentiles,
    /// Open loop: how late the client itself sent, from intended time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<Percentiles>,
    pub commands: BTreeMap<String, CommandResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleResult>,
    /// The bench's own cost, to tell when the client is the bottleneck.
    pub client: ClientResult,
    /// Each repetition on its own (one without `--repeat`); the fields above merge them all.
    pub repetitions: Vec<RepetitionResult>,
    /// Per second of measured time, each repetition in turn.
    pub timeline: Vec<TimelineSecond>,
}

#[derive(Debug, Serialize, Clone)]
pub struct ClientResult {
    /// User plus system CPU the bench used during the run (all threads).
    pub cpu_seconds: f64,
    /// That CPU as a share of the run's wall time, warm-up and drain included (100 = one core).
    pub cpu_percent: f64,
    /// RESP3 out-of-band pushes received (not counted as replies).
    pub pushes: u64,
}

/// Now, as `2025-01-31T12:34:56Z`.
pub fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The kernel release and host name.
pub fn machine() -> (String, Host) {
    let uname = rustix::system::uname();
    let kernel = uname.release().to_string_lossy().into_owned();
    let host = Host {
        name: uname.nodename().to_string_lossy().into_owned(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    (kernel, host)
}

/// A latency cell: one decimal below 100 us, whole microseconds above.
pub fn micros(value: f64) -> String {
    if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// One line describing a run's load.
pub fn describe_load(load: &LoadSettings) -> String {
    let mut parts = Vec::new();
    match load.model {
        "open" => parts.push(format!(
            "open loop {} req/s ({} arrivals, ≤{} in flight per connection)",
            trim_float(load.rate.unwrap_or(0.0)),
            match load.arrivals {
                Some(crate::schedule::Arrivals::Poisson) => "poisson",
                _ => "even",
            },
            load.max_inflight.unwrap_or(0)
        )),
        _ => parts.push(format!(
            "closed loop, pipeline {}",
            load.pipeline.unwrap_or(1)
        )),
    }
    parts.push(format!("{} connections", load.connections));
    if load.idle > 0 {
        parts.push(format!("{} idle sessions", load.idle));
    }
    parts.push(format!("mix {}", load.mix));
    match (load.duration_s, load.requests_limit) {
        (Some(d), Some(n)) => parts.push(format!("{} s or {n} requests", trim_float(d))),
        (Some(d), None) => parts.push(format!("{} s", trim_float(d))),
        (None, Some(n)) => parts.push(format!("{n} requests")),
        (None, None) => {}
    }
    if load.warmup_s > 0.0 {
        parts.push(format!("after {} s warm-up", trim_float(load.warmup_s)));
    }
    parts.push(format!(
        "{} client thread{}",
        load.threads,
        if load.threads == 1 { "" } else { "s" }
    ));
    if load.resp3 {
        parts.push("RESP3".into());
    }
    if load.tls {
        parts.push("TLS".into());
    }
    parts.join(", ")
}

pub fn trim_float(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The Markdown table of all runs, with a header saying where and what it ran.
pub fn table(summary: &Summary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "ringport-bench {} · {} · kernel {} · {} ({} CPUs)\n\n",
        summary.version, summary.date, summary.kernel, summary.host.name, summary.host.cpus
    ));
    let mut loads: Vec<String> = Vec::new();
    for run in &summary.targets {
        let line = describe_load(&run.load);
        if !loads.contains(&line) && summary.sweep.is_none() {
            loads.push(line);
        }
    }
    if let Some(sweep) = &summary.sweep {
        if let Some(first) = summary.targets.first() {
            loads.push(format!(
                "sweep of {} over {}; otherwise {}",
                sweep.parameter,
                sweep
                    .values
                    .iter()
                    .map(|v| trim_float(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
                describe_load(&first.load)
            ));
        }
    }
    for load in loads {
        out.push_str(&format!("Load: {load}.\n\n"));
    }
    let mut seen = Vec::new();
    for run in &summary.targets {
        if seen.contains(&run.name) {
            continue;
        }
        seen.push(run.name.clone());
        let server: Vec<String> = run
            .server
            .iter()
            .filter(|(key, _)| key.as_str() != "process_id")
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        out.push_str(&format!(
            "- {} ({}): {}\n",
            run.name,
            run.address,
            if server.is_empty() {
                "no INFO".to_string()
            } else {
                server.join(" ")
            }
        ));
    }
    out.push('\n');
    let sweep_column = summary.sweep.as_ref().map(|s| s.parameter.clone());
    let mut header = vec!["target".to_string()];
    if let Some(parameter) = &sweep_column {
        header.push(parameter.clone());
    }
    header.extend(
        [
            "load",
            "requests",
            "errors",
            "req/s",
            "p50 µs",
            "p90",
            "p99",
            "p99.9",
            "p99.99",
            "max",
            "service p50 µs",
            "p99",
            "p99.9",
            "max",
        ]
        .map(String::from),
    );
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!(
        "|{}\n",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    ));
    for run in &summary.targets {
        let mut row = vec![run.name.clone()];
        if let Some(parameter) = &sweep_column {
            let value = run
                .sweep
                .as_ref()
                .and_then(|s| s.get(parameter))
                .map_or(String::new(), |v| trim_float(*v));
            row.push(value);
        }
        let load = match run.load.model {
            "open" => format!(
                "open {}/s c={}",
                trim_float(run.load.rate.unwrap_or(0.0)),
                run.load.connections
            ),
            _ => format!(
                "closed c={} P={}",
                run.load.connections,
                run.load.pipeline.unwrap_or(1)
            ),
        };
        row.push(load);
        row.push(run.requests.to_string());
        row.push(run.errors.to_string());
        row.push(format!("{:.0}", run.throughput_rps));
        let l = &run.latency_us;
        let s = &run.service_time_us;
        row.extend([l.p50, l.p90, l.p99, l.p99_9, l.p99_99, l.max].map(micros));
        row.extend([s.p50, s.p99, s.p99_9, s.max].map(micros));
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    for run in &summary.targets {
        let mut notes = Vec::new();
        if !run.errors_by_kind.is_empty() {
            let kinds: Vec<String> = run
                .errors_by_kind
                .iter()
                .map(|(kind, count)| format!("{kind} ×{count}"))
                .collect();
            notes.push(format!("error replies {}", kinds.join(", ")));
        }
        if run.unanswered > 0 {
            notes.push(format!("{} requests unanswered", run.unanswered));
        }
        if run.disconnects > 0 {
            notes.push(format!("{} connections lost", run.disconnects));
        }
        if let Some(idle) = &run.idle {
            notes.push(format!(
                "{} of {} idle sessions open, {} closed by the server",
                idle.opened, idle.requested, idle.closed_by_server
            ));
        }
        if run.repetitions.len() > 1 {
            let range = |pick: fn(&RepetitionResult) -> f64, format: fn(f64) -> String| {
                let values = run.repetitions.iter().map(pick);
                let min = values.clone().fold(f64::INFINITY, f64::min);
                let max = values.fold(f64::NEG_INFINITY, f64::max);
                format!("{}–{}", format(min), format(max))
            };
            notes.push(format!(
                "{} repetitions, req/s {}, p50 {} µs, p99 {} µs",
                run.repetitions.len(),
                range(|r| r.throughput_rps, |v| format!("{v:.0}")),
                range(|r| r.latency_us.p50, micros),
                range(|r| r.latency_us.p99, micros)
            ));
        }
        if let Some(lag) = &run.send_lag_us {
            if lag.p99 > 1000.0 {
                notes.push(format!(
                    "client sent late (send lag p99 {} µs): the client may be the bottleneck",
                    micros(lag.p99)
                ));
            }
        }
        if !notes.is_empty() {
            let sweep = run
                .sweep
                .as_ref()
                .map(|s| {
                    s.iter()
                        .map(|(k, v)| format!(" {k}={}", trim_float(*v)))
                        .collect::<String>()
                })
                .unwrap_or_default();
            out.push_str(&format!("\n{}{sweep}: {}.", run.name, notes.join("; ")));
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn percentiles_in_microseconds() {
        let mut histogram = crate::record::new_histogram();
        for us in 1..=1000 {
            histogram.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&histogram);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        let json = serde_json::to_value(&p).unwrap();
        assert!(json.get("p99.9").is_some() && json.get("p99.99").is_some());
    }

    #[test]
    fn timeline_has_one_entry_per_second() {
        const S: u64 = 1_000_000_000;
        let mut timeline = Timeline::new(10 * S, None);
        for k in 0..300 {
            timeline.record(10 * S + k * 1_000_000, 50_000);
        }
        timeline.record(13 * S + 5, 2_000_000_000);
        let entries = super::timeline(&timeline, None);
        let counts: Vec<u64> = entries.iter().map(|e| e.requests).collect();
        assert_eq!(counts, vec![300, 0, 0, 1]);
        assert_eq!(
            entries.iter().map(|e| e.second).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(entries[0].throughput_rps, 300.0);
        assert!((entries[0].p50_us.unwrap() - 50.0).abs() < 0.5);
        assert_eq!(entries[1].p99_us, None);
        assert!((entries[3].max_us.unwrap() - 2_000_000.0).abs() < 20_000.0);

        let json = serde_json::to_value(&entries).unwrap();
        let array = json.as_array().unwrap();
        assert_eq!(array.len(), 4);
        assert_eq!(array[0]["requests"], 300);
        assert_eq!(array[0]["throughput_rps"], 300.0);
        assert!(array[0].get("repetition").is_none());
        assert!(array[2]["p50_us"].is_null());
        for key in [
            "second",
            "requests",
            "throughput_rps",
            "p50_us",
            "p99_us",
            "max_us",
        ] {
            assert!(array[3].get(key).is_some(), "{key}");
        }
        let repeated = serde_json::to_value(super::timeline(&timeline, Some(2))).unwrap();
        assert_eq!(repeated[0]["repetition"], 2);
    }
}
