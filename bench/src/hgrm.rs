//! The `.hgrm` percentile distribution text, byte for byte as HdrHistogram's Java
//! `AbstractHistogram.outputPercentileDistribution(stream, ticksPerHalfDistance, scale)` writes
//! it, so the public HdrHistogram plotter and wrk2-era tooling read it.
//!
//! The rows walk the percentile iterator with `ticks_per_half_distance` ticks in each half of
//! the remaining distance to 100% (Java's `PercentileIterator`, in percent, as Java computes it),
//! then one final row at 100%. Numbers are formatted as Java's `Formatter` does: `%f` rounds
//! the shortest decimal form of the double half-up, which differs from Rust's own rounding of
//! the exact binary value (`0.0625` is `0.063` in Java, `0.062` in Rust).

use hdrhistogram::Histogram;
use std::fmt::Write;

/// Scale from the bench's nanosecond values to milliseconds, the unit wrk2's `.hgrm` uses.
pub const NANOSECONDS_PER_MILLISECOND: f64 = 1_000_000.0;

/// One row of the distribution: the value reached, at which percentile, after how many.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub value: u64,
    /// In percent, 0..=100.
    pub percentile: f64,
    pub total_count: u64,
}

/// The rows Java's `PercentileIterator` yields, ending with the 100% row. Empty histogram: none.
pub fn percentile_rows(histogram: &Histogram<u64>, ticks_per_half_distance: u32) -> Vec<Row> {
    let total = histogram.len();
    let mut rows = Vec::new();
    if total == 0 {
        return rows;
    }
    let mut level = 0.0_f64;
    let mut running = 0_u64;
    let mut last_value = 0;
    'values: for value in histogram.iter_recorded() {
        running += value.count_at_value();
        last_value = value.value_iterated_to();
        loop {
            let current = (100.0 * running as f64) / total as f64;
            if current < level {
                break;
            }
            rows.push(Row {
                value: last_value,
                percentile: level,
                total_count: running,
            });
            level = next_level(level, ticks_per_half_distance);
            if running >= total {
                break 'values;
            }
        }
    }
    rows.push(Row {
        value: last_value,
        percentile: 100.0,
        total_count: total,
    });
    rows
}

/// Java's `PercentileIterator.incrementIterationLevel`.
fn next_level(level: f64, ticks_per_half_distance: u32) -> f64 {
    let halvings = ((100.0 / (100.0 - level)).ln() / 2.0_f64.ln()) as i64;
    let exponent = (halvings + 1).clamp(0, 62) as u32;
    let reporting_ticks = i64::from(ticks_per_half_distance) * 2_i64.pow(exponent);
    level + 100.0 / reporting_ticks as f64
}

/// The whole `.hgrm` text of `histogram` (values in ns), printed in `scale` units.
pub fn percentile_distribution(
    histogram: &Histogram<u64>,
    ticks_per_half_distance: u32,
    scale: f64,
) -> String {
    let digits = usize::from(histogram.sigfig());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for row in percentile_rows(histogram, ticks_per_half_distance) {
        let value = java_fixed(row.value as f64 / scale, digits);
        let percentile = java_fixed(row.percentile / 100.0, 12);
        if row.percentile != 100.0 {
            let inverse = java_fixed(1.0 / (1.0 - row.percentile / 100.0), 2);
            let _ = writeln!(
                out,
                "{value:>12} {percentile:>2} {:>10} {inverse:>14}",
                row.total_count
            );
        } else {
            let _ = writeln!(out, "{value:>12} {percentile:>2} {:>10}", row.total_count);
        }
    }
    let (mean, deviation, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (histogram.mean(), histogram.stdev(), histogram.max() as f64)
    };
    let _ = writeln!(
        out,
        "#[Mean    = {:>12}, StdDeviation   = {:>12}]",
        java_fixed(mean / scale, digits),
        java_fixed(deviation / scale, digits)
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12}, Total count    = {:>12}]",
        java_fixed(max / scale, digits),
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        sub_bucket_count(histogram.sigfig())
    );
    out
}

/// HdrHistogram's sub-bucket count for `significant_digits`: the power of two that holds
/// `2 * 10^digits` values at unit resolution.
fn sub_bucket_count(significant_digits: u8) -> u64 {
    (2 * 10_u64.pow(u32::from(significant_digits))).next_power_of_two()
}

/// Java's `String.format("%.{precision}f", value)`: the shortest decimal form of `value`,
/// rounded half-up to `precision` decimals.
pub fn java_fixed(value: f64, precision: usize) -> String {
    if !value.is_finite() {
        return if value.is_nan() {
            "NaN".into()
        } else if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let shortest = format!("{}", value.abs());
    let (whole, fraction) = shortest.split_once('.').unwrap_or((&shortest, ""));
    let mut digits: Vec<u8> = whole.bytes().chain(fraction.bytes()).collect();
    let whole_len = whole.len();
    let keep = whole_len + precision;
    let round_up = digits.get(keep).is_some_and(|&d| d >= b'5');
    digits.resize(keep, b'0');
    let mut whole_len = whole_len;
    if round_up {
        let mut i = keep;
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                whole_len += 1;
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let mut out = String::with_capacity(digits.len() + 2);
    let negative = value.is_sign_negative() && digits.iter().any(|&d| d != b'0');
    if negative {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&digits[..whole_len]).expect("ascii digits"));
    if precision > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[whole_len..]).expect("ascii digits"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::new_histogram;

    #[test]
    fn formats_like_java() {
        assert_eq!(java_fixed(0.0625, 3), "0.063");
        assert_eq!(java_fixed(0.15, 1), "0.2");
        assert_eq!(java_fixed(2.5, 0), "3");
        assert_eq!(java_fixed(9.9996, 3), "10.000");
        assert_eq!(java_fixed(0.0, 12), "0.000000000000");
        assert_eq!(java_fixed(0.5, 12), "0.500000000000");
        assert_eq!(java_fixed(1234.5678, 2), "1234.57");
        assert_eq!(java_fixed(1e-7, 3), "0.000");
        assert_eq!(java_fixed(-1.25, 1), "-1.3");
    }

    #[test]
    fn levels_follow_java_ticks() {
        let mut level = 0.0;
        let mut levels = Vec::new();
        for _ in 0..14 {
            levels.push(level);
            level = next_level(level, 5);
        }
        assert_eq!(
            levels,
            [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 55.0, 60.0, 65.0, 70.0, 75.0, 77.5, 80.0, 82.5]
        );
    }

    #[test]
    fn levels_are_reached_as_java_reaches_them() {
        // Java steps in percent (50 + 10 x 2.5 is exactly 75), so the value that brings the
        // count to exactly 75% is the 75% row. Stepping in quantiles (0.5 + 10 x 0.025 is a
        // hair above 0.75), as the hdrhistogram crate's iterator does, would report the next one.
        let mut histogram = new_histogram();
        for ms in 1..=4 {
            histogram.record(ms * 1_000_000).unwrap();
        }
        let row = percentile_rows(&histogram, 5)
            .into_iter()
            .find(|row| row.percentile == 75.0)
            .unwrap();
        assert!(histogram.equivalent(row.value, 3_000_000));
        assert_eq!(row.total_count, 3);
    }

    #[test]
    fn layout_matches_output_percentile_distribution() {
        // 1..=10 ms, one value each: small enough to check every line by hand.
        let mut histogram = new_histogram();
        for ms in 1..=10 {
            histogram.record(ms * 1_000_000).unwrap();
        }
        let text = percentile_distribution(&histogram, 5, NANOSECONDS_PER_MILLISECOND);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       1.000 0.000000000000          1           1.00"
        );
        assert_eq!(
            lines[3],
            "       1.000 0.100000000000          1           1.11"
        );
        assert_eq!(
            lines[4],
            // 2 ms lands in a 1,024 ns wide bucket: its highest equivalent value is 2.000895 ms.
            "       2.001 0.200000000000          2           1.25"
        );
        // After 90% the ticks are 1.25% apart; the last value gets one row at the first level
        // it passes, then the 100% row, which has no last column.
        let n = lines.len();
        assert_eq!(n, 2 + 20 + 3);
        assert_eq!(
            lines[n - 6],
            "       9.003 0.900000000000          9          10.00"
        );
        assert_eq!(
            lines[n - 5],
            "      10.002 0.912500000000         10          11.43"
        );
        assert_eq!(lines[n - 4], "      10.002 1.000000000000         10");
        assert_eq!(
            lines[n - 3],
            "#[Mean    =        5.500, StdDeviation   =        2.872]"
        );
        assert_eq!(
            lines[n - 2],
            "#[Max     =       10.002, Total count    =           10]"
        );
        // 1 ns to 1 hour at 3 digits: 32 buckets of 2,048 sub-buckets, as Java sizes them.
        assert_eq!(
            lines[n - 1],
            "#[Buckets =           32, SubBuckets     =         2048]"
        );
    }
}
