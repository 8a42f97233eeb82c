//! `ringport-bench diff A.json B.json`: did B change from A by more than run-to-run noise?
//!
//! A single run says little: on a shared machine throughput and tail latency swing by tens of
//! percent between identical runs. So each metric is taken as the median over a run's
//! repetitions (`--repeat`), and its noise as their spread, `(max - min) / median`. A change
//! counts only when it is larger than the larger of the two runs' spreads. A run with a single
//! repetition has no measured spread; then a 5% band is assumed (or the other run's spread, when
//! that is larger, since the noise is at least what was seen there).

use crate::report::{micros, Percentiles, RepetitionResult};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The noise band, in percent, assumed for a run with a single repetition.
pub const ASSUMED_BAND_PCT: f64 = 5.0;

/// The parts of a JSON summary a comparison reads. Summaries written before `--repeat` have
/// no `repetitions`: they count as one repetition.
#[derive(Debug, Deserialize)]
pub struct SummaryFile {
    #[serde(default)]
    pub date: String,
    pub targets: Vec<Run>,
}

/// One run of a summary (a target, at one sweep value).
#[derive(Debug, Deserialize)]
pub struct Run {
    pub name: String,
    #[serde(default)]
    pub sweep: Option<BTreeMap<String, f64>>,
    /// Kept as JSON: only compared, to warn when A and B did not apply the same load.
    #[serde(default)]
    pub load: serde_json::Value,
    pub throughput_rps: f64,
    pub latency_us: Percentiles,
    #[serde(default)]
    pub repetitions: Vec<RepetitionResult>,
}

impl Run {
    /// (throughput, latency) of each repetition; a run without a list is its own only one.
    fn samples(&self) -> Vec<(f64, &Percentiles)> {
        if self.repetitions.is_empty() {
            vec![(self.throughput_rps, &self.latency_us)]
        } else {
            self.repetitions
                .iter()
                .map(|r| (r.throughput_rps, &r.latency_us))
                .collect()
        }
    }

    /// `redis` or `redis connections=10`: what runs are matched by.
    fn label(&self) -> String {
        let mut label = self.name.clone();
        for (key, value) in self.sweep.iter().flatten() {
            label.push_str(&format!(" {key}={}", crate::report::trim_float(*value)));
        }
        label
    }
}

/// A row of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Throughput,
    P50,
    P90,
    P99,
    P99_9,
    Max,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::Throughput,
        Metric::P50,
        Metric::P90,
        Metric::P99,
        Metric::P99_9,
        Metric::Max,
    ];

    fn name(self) -> &'static str {
        match self {
            Metric::Throughput => "req/s",
            Metric::P50 => "p50 µs",
            Metric::P90 => "p90 µs",
            Metric::P99 => "p99 µs",
            Metric::P99_9 => "p99.9 µs",
            Metric::Max => "max µs",
        }
    }

    fn of(self, (throughput, latency): (f64, &Percentiles)) -> f64 {
        match self {
            Metric::Throughput => throughput,
            Metric::P50 => latency.p50,
            Metric::P90 => latency.p90,
            Metric::P99 => latency.p99,
            Metric::P99_9 => latency.p99_9,
            Metric::Max => latency.max,
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Metric::Throughput => format!("{value:.0}"),
            _ => micros(value),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Better,
    Worse,
    WithinNoise,
    /// A's value is 0 (no replies), so there is no relative change.
    NoData,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::WithinNoise => "within noise",
            Verdict::NoData => "no data",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub metric: Metric,
    /// Medians over the repetitions.
    pub a: f64,
    pub b: f64,
    /// `(b - a) / a`, in percent.
    pub change_pct: Option<f64>,
    pub band_pct: f64,
    pub verdict: Verdict,
}

/// A run of A compared with its counterpart in B.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub a: String,
    pub b: String,
    pub repetitions_a: usize,
    pub repetitions_b: usize,
    /// A run had a single repetition, so the band includes [`ASSUMED_BAND_PCT`].
    pub band_assumed: bool,
    pub rows: Vec<Row>,
    /// `connections 50 → 100`, for each load setting that differs.
    pub load_differences: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub pairs: Vec<Pair>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
}

impl Comparison {
    /// (better, worse, within noise, no data) rows over all pairs.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let count = |verdict| {
            self.pairs
                .iter()
                .flat_map(|p| &p.rows)
                .filter(|r| r.verdict == verdict)
                .count()
        };
        (
            count(Verdict::Better),
            count(Verdict::Worse),
            count(Verdict::WithinNoise),
            count(Verdict::NoData),
        )
    }

    /// The last line: better, worse, mixed or no change, with the counts behind it.
    pub fn overall(&self) -> String {
        let (better, worse, noise, no_data) = self.counts();
        let mut line = match (better, worse) {
            (0, 0) => format!("Overall: no change beyond noise ({noise} rows within noise"),
            (_, 0) => format!(
                "Overall: B is better than A ({better} rows better, none worse, {noise} within noise"
            ),
            (0, _) => format!(
                "Overall: B is worse than A ({worse} rows worse, none better, {noise} within noise"
            ),
            _ => format!(
                "Overall: mixed ({better} rows better, {worse} worse, {noise} within noise"
            ),
        };
        if no_data > 0 {
            line.push_str(&format!(", {no_data} without data"));
        }
        line.push_str(").");
        line
    }
}

/// Pairs the runs of A and B (by name and sweep value, or the only run of each when each has
/// one) and compares each pair.
pub fn compare(a: &[Run], b: &[Run]) -> Comparison {
    if let ([a], [b]) = (a, b) {
        return Comparison {
            pairs: vec![compare_runs(a, b)],
            only_in_a: Vec::new(),
            only_in_b: Vec::new(),
        };
    }
    let labels_b: Vec<String> = b.iter().map(Run::label).collect();
    let mut pairs = Vec::new();
    let mut only_in_a = Vec::new();
    let mut matched_b = vec![false; b.len()];
    for run in a {
        let label = run.label();
        match labels_b.iter().position(|l| *l == label) {
            Some(index) => {
                matched_b[index] = true;
                pairs.push(compare_runs(run, &b[index]));
            }
            None => only_in_a.push(label),
        }
    }
    let only_in_b = labels_b
        .into_iter()
        .zip(matched_b)
        .filter(|(_, matched)| !matched)
        .map(|(label, _)| label)
        .collect();
    Comparison {
        pairs,
        only_in_a,
        only_in_b,
    }
}

/// Compares one run of A with one of B, metric by metric.
pub fn compare_runs(a: &Run, b: &Run) -> Pair {
    let (samples_a, samples_b) = (a.samples(), b.samples());
    let band_assumed = samples_a.len() < 2 || samples_b.len() < 2;
    let rows = Metric::ALL
        .into_iter()
        .map(|metric| {
            let values_a: Vec<f64> = samples_a.iter().map(|&s| metric.of(s)).collect();
            let values_b: Vec<f64> = samples_b.iter().map(|&s| metric.of(s)).collect();
            let (median_a, median_b) = (median(&values_a), median(&values_b));
            let measured = [&values_a, &values_b]
                .into_iter()
                .filter(|values| values.len() > 1)
                .map(|values| spread(values) * 100.0)
                .fold(0.0, f64::max);
            let band_pct = if band_assumed {
                measured.max(ASSUMED_BAND_PCT)
            } else {
                measured
            };
            let change_pct = match (median_a, median_b) {
                (a, b) if a == b => Some(0.0),
                (0.0, _) => None,
                (a, b) => Some((b - a) / a * 100.0),
            };
            let verdict = match change_pct {
                None => Verdict::NoData,
                Some(change) if change.abs() <= band_pct => Verdict::WithinNoise,
                // Lower latency is better; higher throughput is.
                Some(change) if (change > 0.0) == (metric == Metric::Throughput) => Verdict::Better,
                Some(_) => Verdict::Worse,
            };
            Row {
                metric,
                a: median_a,
                b: median_b,
                change_pct,
                band_pct,
                verdict,
            }
        })
        .collect();
    Pair {
        a: a.label(),
        b: b.label(),
        repetitions_a: samples_a.len(),
        repetitions_b: samples_b.len(),
        band_assumed,
        rows,
        load_differences: load_differences(&a.load, &b.load),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `(max - min) / median`: how far apart the repetitions were, relative to their middle.
fn spread(values: &[f64]) -> f64 {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let median = median(values);
    if max == min {
        0.0
    } else if median == 0.0 {
        f64::INFINITY
    } else {
        (max - min) / median
    }
}

fn load_differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    let show = |value: Option<&serde_json::Value>| match value {
        None => "-".to_string(),
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| a.get(*key) != b.get(*key))
        .map(|key| format!("{key} {} → {}", show(a.get(key)), show(b.get(key))))
        .collect()
}

/// The comparison as Markdown: per pair a table, notes on assumptions, then the overall line.
pub fn render(comparison: &Comparison, header: &str) -> String {
    let mut out = String::from(header);
    for pair in &comparison.pairs {
        let title = if pair.a == pair.b {
            pair.a.clone()
        } else {
            format!("{} (A) vs {} (B)", pair.a, pair.b)
        };
        out.push_str(&format!(
            "\n{title}: {} in A, {} in B\n\n",
            repetitions(pair.repetitions_a),
            repetitions(pair.repetitions_b)
        ));
        out.push_str("| metric | A median | B median | change | noise band | verdict |\n");
        out.push_str("|---|---:|---:|---:|---:|---|\n");
        for row in &pair.rows {
            let change = row
                .change_pct
                .map_or("-".to_string(), |c| format!("{c:+.1}%"));
            let band = if row.band_pct.is_finite() {
                format!("±{:.1}%", row.band_pct)
            } else {
                "unbounded".to_string()
            };
            out.push_str(&format!(
                "| {} | {} | {} | {change} | {band} | {} |\n",
                row.metric.name(),
                row.metric.format(row.a),
                row.metric.format(row.b),
                row.verdict.text()
            ));
        }
        if pair.band_assumed {
            let single = match (pair.repetitions_a < 2, pair.repetitions_b < 2) {
                (true, true) => "A and B have a single repetition each",
                (true, false) => "A has a single repetition",
                _ => "B has a single repetition",
            };
            out.push_str(&format!(
                "\n{single}, so the noise is unknown: assuming a band of ±{ASSUMED_BAND_PCT}% \
                 (or the other run's spread, where larger). Run with --repeat 3 or more to \
                 measure it.\n"
            ));
        }
        if !pair.load_differences.is_empty() {
            out.push_str(&format!(
                "\nThe loads differ: {}.\n",
                pair.load_differences.join(", ")
            ));
        }
    }
    if !comparison.only_in_a.is_empty() {
        out.push_str(&format!(
            "\nOnly in A (not compared): {}.\n",
            comparison.only_in_a.join(", ")
        ));
    }
    if !comparison.only_in_b.is_empty() {
        out.push_str(&format!(
            "\nOnly in B (not compared): {}.\n",
            comparison.only_in_b.join(", ")
        ));
    }
    out.push_str(&format!("\n{}\n", comparison.overall()));
    out
}

fn repetitions(count: usize) -> String {
    match count {
        1 => "1 repetition".into(),
        n => format!("{n} repetitions"),
    }
}

/// Reads one summary; the error says which file and what is wrong with it.
pub fn read(path: &Path) -> Result<SummaryFile, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(text: &str) -> Result<SummaryFile, String> {
    let file: SummaryFile = serde_json::from_str(text)
        .map_err(|e| format!("not a ringport-bench JSON summary (--json): {e}"))?;
    if file.targets.is_empty() {
        return Err("the summary has no runs (\"targets\" is empty)".into());
    }
    Ok(file)
}

/// `ringport-bench diff A B`: the rendered comparison, or why there is none.
pub fn run(path_a: &Path, path_b: &Path) -> Result<String, String> {
    let (a, b) = (read(path_a)?, read(path_b)?);
    let comparison = compare(&a.targets, &b.targets);
    if comparison.pairs.is_empty() {
        let names = |file: &SummaryFile| {
            file.targets
                .iter()
                .map(Run::label)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "no run is in both files (A: {}; B: {}); runs are matched by target name and sweep \
             value, or taken as they are when each file has one",
            names(&a),
            names(&b)
        ));
    }
    let describe = |path: &Path, file: &SummaryFile| {
        if file.date.is_empty() {
            path.display().to_string()
        } else {
            format!("{} ({})", path.display(), file.date)
        }
    };
    let header = format!(
        "ringport-bench diff\nA: {}\nB: {}\n",
        describe(path_a, &a),
        describe(path_b, &b)
    );
    Ok(render(&comparison, &header))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run whose repetitions had these throughputs and p50s (the other percentiles scale
    /// with the p50).
    fn run(name: &str, repetitions: &[(f64, f64)]) -> Run {
        let repetitions: Vec<RepetitionResult> = repetitions
            .iter()
            .map(|&(throughput_rps, p50)| RepetitionResult {
                requests: throughput_rps as u64,
                errors: 0,
                throughput_rps,
                duration_s: 1.0,
                latency_us: latency(p50),
            })
            .collect();
        Run {
            name: name.into(),
            sweep: None,
            load: serde_json::json!({"connections": 50}),
            throughput_rps: repetitions[0].throughput_rps,
            latency_us: repetitions[0].latency_us.clone(),
            repetitions,
        }
    }

    fn latency(p50: f64) -> Percentiles {
        Percentiles {
            p50,
            p90: p50 * 2.0,
            p99: p50 * 4.0,
            p99_9: p50 * 8.0,
            p99_99: p50 * 16.0,
            max: p50 * 32.0,
            mean: p50 * 1.1,
        }
    }

    fn verdicts(pair: &Pair) -> Vec<Verdict> {
        pair.rows.iter().map(|r| r.verdict).collect()
    }

    #[test]
    fn a_clear_improvement_is_better() {
        let a = run(
            "ringport",
            &[(1000.0, 100.0), (1020.0, 102.0), (980.0, 98.0)],
        );
        let b = run(
            "ringport",
            &[(1300.0, 70.0), (1310.0, 71.0), (1290.0, 69.0)],
        );
        let comparison = compare(&[a], &[b]);
        let pair = &comparison.pairs[0];
        assert_eq!(verdicts(pair), vec![Verdict::Better; 6]);
        assert!(!pair.band_assumed);
        let throughput = &pair.rows[0];
        assert_eq!((throughput.a, throughput.b), (1000.0, 1300.0));
        assert!((throughput.change_pct.unwrap() - 30.0).abs() < 1e-9);
        // A's spread: (1020 - 980) / 1000 = 4%; B's: 20 / 1300 = 1.5%.
        assert!((throughput.band_pct - 4.0).abs() < 1e-9);
        assert!((pair.rows[1].change_pct.unwrap() + 30.0).abs() < 1e-9);
        assert!(comparison
            .overall()
            .starts_with("Overall: B is better than A"));
    }

    #[test]
    fn a_clear_regression_is_worse() {
        let a = run(
            "ringport",
            &[(1000.0, 100.0), (1010.0, 101.0), (990.0, 99.0)],
        );
        let b = run(
            "ringport",
            &[(800.0, 150.0), (790.0, 148.0), (810.0, 152.0)],
        );
        let comparison = compare(&[a], &[b]);
        assert_eq!(verdicts(&comparison.pairs[0]), vec![Verdict::Worse; 6]);
        assert!(comparison
            .overall()
            .starts_with("Overall: B is worse than A"));
    }

    #[test]
    fn a_change_inside_the_spread_is_noise() {
        // A swings by 20% between repetitions; B is 6% faster and 6% quicker at the median:
        // inside the band, though above the 5% a single repetition would assume.
        let a = run(
            "ringport",
            &[(1000.0, 100.0), (1100.0, 110.0), (900.0, 90.0)],
        );
        let b = run(
            "ringport",
            &[(1060.0, 94.0), (1070.0, 95.0), (1050.0, 93.0)],
        );
        let comparison = compare(&[a], &[b]);
        let pair = &comparison.pairs[0];
        assert_eq!(verdicts(pair), vec![Verdict::WithinNoise; 6]);
        assert!((pair.rows[0].band_pct - 20.0).abs() < 1e-9);
        assert!(comparison
            .overall()
            .starts_with("Overall: no change beyond noise"));
        // One metric beyond the band and one inside: mixed.
        let a = run("r", &[(1000.0, 100.0), (1010.0, 101.0)]);
        let mut b = run("r", &[(1200.0, 100.5), (1210.0, 100.6)]);
        for repetition in &mut b.repetitions {
            repetition.latency_us.max = 10_000.0;
        }
        let comparison = compare(&[a], &[b]);
        let pair = &comparison.pairs[0];
        assert_eq!(pair.rows[0].verdict, Verdict::Better);
        assert_eq!(pair.rows[1].verdict, Verdict::WithinNoise);
        assert_eq!(pair.rows[5].verdict, Verdict::Worse);
        assert!(comparison.overall().starts_with("Overall: mixed"));
    }

    #[test]
    fn a_single_repetition_assumes_a_five_percent_band() {
        let a = run("ringport", &[(1000.0, 100.0)]);
        let small = run("ringport", &[(1030.0, 97.0)]);
        let large = run("ringport", &[(1100.0, 90.0)]);
        let comparison = compare(&[a], &[small]);
        let pair = &comparison.pairs[0];
        assert!(pair.band_assumed);
        assert_eq!(pair.rows[0].band_pct, ASSUMED_BAND_PCT);
        assert_eq!(verdicts(pair), vec![Verdict::WithinNoise; 6]);
        let text = render(&comparison, "");
        assert!(
            text.contains(
                "A and B have a single repetition each, so the noise is unknown: \
                           assuming a band of ±5%"
            ),
            "{text}"
        );
        let a = run("ringport", &[(1000.0, 100.0)]);
        assert_eq!(
            verdicts(&compare(&[a], &[large]).pairs[0]),
            vec![Verdict::Better; 6]
        );
        // B's measured spread (20%) is wider than the assumption, so it is the band.
        let a = run("ringport", &[(1000.0, 100.0)]);
        let noisy = run(
            "ringport",
            &[(1100.0, 90.0), (1200.0, 80.0), (1000.0, 100.0)],
        );
        let pair = &compare(&[a], &[noisy]).pairs[0];
        assert!(pair.band_assumed);
        assert!((pair.rows[0].band_pct - 200.0 / 11.0).abs() < 1e-9);
        assert_eq!(pair.rows[0].verdict, Verdict::WithinNoise);
    }

    #[test]
    fn runs_are_matched_by_name() {
        let a = [run("redis", &[(1.0, 1.0)]), run("ringport", &[(1.0, 1.0)])];
        let b = [run("ringport", &[(2.0, 1.0)]), run("valkey", &[(1.0, 1.0)])];
        let comparison = compare(&a, &b);
        assert_eq!(comparison.pairs.len(), 1);
        assert_eq!(comparison.pairs[0].a, "ringport");
        assert_eq!(comparison.only_in_a, vec!["redis"]);
        assert_eq!(comparison.only_in_b, vec!["valkey"]);
        // One run each: compared whatever their names.
        let comparison = compare(&a[..1], &b[..1]);
        assert_eq!(comparison.pairs.len(), 1);
        assert!(render(&comparison, "").contains("redis (A) vs ringport (B)"));
    }

    /// A JSON summary as the bench writes it, with these repetitions.
    fn summary_json(repetitions: &[(f64, f64)]) -> String {
        use crate::report::*;
        let repetitions: Vec<RepetitionResult> = run("x", repetitions).repetitions;
        let load = LoadSettings {
            model: "closed",
            connections: 50,
            pipeline: Some(1),
            rate: None,
            arrivals: None,
            max_inflight: None,
            threads: 1,
            duration_s: Some(1.0),
            warmup_s: 0.0,
            requests_limit: None,
            mix: "PING".into(),
            keyspace: 100_000,
            value_size: 32,
            idle: 0,
            resp3: false,
            tls: false,
            authenticated: true,
        };
        let target = TargetResult {
            name: "ringport".into(),
            address: "127.0.0.1:6380".into(),
            started: "2025-01-31T12:00:00Z".into(),
            server: BTreeMap::new(),
            load,
            sweep: None,
            requests: repetitions.iter().map(|r| r.requests).sum(),
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            unanswered: 0,
            disconnects: 0,
            protocol_errors: Vec::new(),
            throughput_rps: repetitions[0].throughput_rps,
            duration_s: repetitions.len() as f64,
            latency_us: repetitions[0].latency_us.clone(),
            service_time_us: repetitions[0].latency_us.clone(),
            send_lag_us: None,
            commands: BTreeMap::new(),
            idle: None,
            client: ClientResult {
                cpu_seconds: 0.1,
                cpu_percent: 10.0,
                pushes: 0,
            },
            repetitions,
            timeline: Vec::new(),
        };
        let summary = Summary {
            tool: "ringport-bench",
            version: "0.1.0",
            date: "2025-01-31T12:00:00Z".into(),
            kernel: "6.8.0".into(),
            host: Host {
                name: "box".into(),
                cpus: 2,
            },
            sweep: None,
            targets: vec![target],
        };
        serde_json::to_string_pretty(&summary).unwrap()
    }

    #[test]
    fn diffs_summaries_through_their_json() {
        let a = parse(&summary_json(&[
            (1000.0, 100.0),
            (1010.0, 101.0),
            (990.0, 99.0),
        ]))
        .unwrap();
        let b = parse(&summary_json(&[
            (700.0, 140.0),
            (705.0, 141.0),
            (695.0, 139.0),
        ]))
        .unwrap();
        assert_eq!(a.targets[0].repetitions.len(), 3);
        let comparison = compare(&a.targets, &b.targets);
        assert_eq!(verdicts(&comparison.pairs[0]), vec![Verdict::Worse; 6]);
        assert!(comparison.pairs[0].load_differences.is_empty());
        let text = render(&comparison, "");
        assert!(
            text.contains("| req/s | 1000 | 700 | -30.0% | ±2.0% | worse |"),
            "{text}"
        );
        assert!(
            text.contains("| p50 µs | 100 | 140 | +40.0% | ±2.0% | worse |"),
            "{text}"
        );
        assert!(text.ends_with(
            "Overall: B is worse than A (6 rows worse, none better, 0 within noise).\n"
        ));
        assert!(parse("{\"targets\": []}").is_err());
        assert!(parse("not json")
            .unwrap_err()
            .contains("not a ringport-bench JSON summary"));
    }
}
