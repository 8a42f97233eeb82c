//! Per-command statistics: calls, errors, and latency histograms, kept per ring (each ring
//! writes only its own cells) and merged on read, for `INFO commandstats`, `INFO latencystats`
//! and `/metrics`.
//!
//! A command's latency runs from its parse to its reply being queued, so compute and store
//! waits are included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::table::Table;

/// Latency histograms are kept in microseconds up to a minute, at 2 significant digits.
const HIGHEST_US: u64 = 60_000_000;

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 2).expect("valid histogram bounds")
}

/// A latency histogram that one ring records into with a plain load and store per command (no
/// lock, no locked instruction) and anyone may read: hdrhistogram's bucket layout at the
/// precision of [`new_histogram`], one counter per bucket, turned into a [`Histogram`] on read.
/// The counters (20 KiB) are allocated on the first record: most commands never run on most
/// rings.
struct Buckets {
    counts: OnceLock<Box<[AtomicU64]>>,
}

/// hdrhistogram at 2 significant digits counts with 256 sub-buckets (the power of two above
/// 2 x 10^2), each bucket past the first spanning twice the values of the one before.
const SUB_BUCKET_BITS: u32 = 8;
const SUB_BUCKET_HALF: u64 = 1 << (SUB_BUCKET_BITS - 1);

impl Buckets {
    const LEN: usize = Buckets::index(HIGHEST_US) + 1;

    fn new() -> Buckets {
        Buckets {
            counts: OnceLock::new(),
        }
    }

    /// Counts one `value` (1 ..= HIGHEST_US).
    fn record(&self, value: u64) {
        let counts = self
            .counts
            .get_or_init(|| (0..Buckets::LEN).map(|_| AtomicU64::new(0)).collect());
        add(&counts[Buckets::index(value)], 1);
    }

    /// The counter of `value` (1 ..= HIGHEST_US): hdrhistogram's `counts_index`.
    const fn index(value: u64) -> usize {
        let bucket =
            (u64::BITS - (value | (2 * SUB_BUCKET_HALF - 1)).leading_zeros()) - SUB_BUCKET_BITS;
        let sub = value >> bucket;
        (((bucket as u64 + 1) * SUB_BUCKET_HALF) + sub - SUB_BUCKET_HALF) as usize
    }

    /// Adds what was recorded to `histogram` (one made by [`new_histogram`]), each count at
    /// the lowest value of its bucket, which puts it in the same bucket there.
    fn add_to(&self, histogram: &mut Histogram<u64>) {
        let Some(counts) = self.counts.get() else {
            return;
        };
        for (index, count) in counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count > 0 {
                let _ = histogram.record_n(Buckets::value_at(index), count);
            }
        }
    }

    /// The lowest value counter `index` stands for: the inverse of [`Buckets::index`].
    fn value_at(index: usize) -> u64 {
        let index = index as u64;
        let bucket = (index / SUB_BUCKET_HALF).saturating_sub(1);
        let sub = index - bucket * SUB_BUCKET_HALF;
        sub << bucket
    }
}

/// Counters and a histogram for one command on one ring.
struct CommandCell {
    calls: AtomicU64,
    errors: AtomicU64,
    usec: AtomicU64,
    latency: Buckets,
}

impl CommandCell {
    fn new() -> CommandCell {
        CommandCell {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            usec: AtomicU64::new(0),
            latency: Buckets::new(),
        }
    }
}

/// Adds `n` to a counter only its ring writes.
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Per ring, per command statistics.
pub struct CommandBook {
    names: Vec<&'static str>,
    rings: Vec<Vec<CommandCell>>,
}

/// Merged statistics of one command.
pub struct CommandSummary {
    pub name: &'static str,
    pub calls: u64,
    pub errors: u64,
    pub usec: u64,
    pub latency: Histogram<u64>,
}

impl CommandBook {
    /// Cells for `rings` rings and every command of `table`.
    pub fn new(rings: usize, table: &Table) -> CommandBook {
        CommandBook {
            names: table.specs().iter().map(|s| s.name).collect(),
            rings: (0..rings)
                .map(|_| table.specs().iter().map(|_| CommandCell::new()).collect())
                .collect(),
        }
    }

    /// Records one command executed on `ring` (index into the command table).
    pub fn record(&self, ring: usize, command: usize, started: Instant, failed: bool) {
        let cell = &self.rings[ring % self.rings.len()][command];
        let us = (started.elapsed().as_micros() as u64).clamp(1, HIGHEST_US);
        // Each ring writes only its own cells, so a load and a store do, with no locked
        // instruction per command. (A test server may share ring 0 between threads: a lost
        // count there is a statistic, not a correctness matter.)
        add(&cell.calls, 1);
        if failed {
            add(&cell.errors, 1);
        }
        add(&cell.usec, us);
        cell.latency.record(us);
    }

    /// Every command's totals, merged over the rings.
    pub fn summaries(&self) -> Vec<CommandSummary> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, &name)| {
                let mut summary = CommandSummary {
                    name,
                    calls: 0,
                    errors: 0,
                    usec: 0,
                    latency: new_histogram(),
                };
                for ring in &self.rings {
                    let cell = &ring[i];
                    summary.calls += cell.calls.load(Ordering::Relaxed);
                    summary.errors += cell.errors.load(Ordering::Relaxed);
                    summary.usec += cell.usec.load(Ordering::Relaxed);
                    cell.latency.add_to(&mut summary.latency);
                }
                summary
            })
            .collect()
    }

    /// Commands executed so far.
    pub fn total_calls(&self) -> u64 {
        self.rings
            .iter()
            .flatten()
            .map(|c| c.calls.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_merges_rings() {
        let spec = crate::table::Spec {
            name: "ping",
            arity: -1,
            class: crate::table::Class::Inline,
            flags: vec![],
            keys: (0, 0, 0),
            summary: "",
            group: "connection",
            before_auth: false,
            origin: "test",
        };
        let book = CommandBook::new(2, &Table::new(vec![spec]).unwrap());
        let t = Instant::now();
        book.record(0, 0, t, false);
        book.record(1, 0, t, true);
        let s = &book.summaries()[0];
        assert_eq!((s.calls, s.errors, s.latency.len()), (2, 1, 2));
        assert_eq!(book.total_calls(), 2);
    }

    #[test]
    fn buckets_read_back_as_the_histogram_they_stand_for() {
        // Every bucket edge of the first few, then values spread over the whole range.
        let mut values: Vec<u64> = (1..2048).collect();
        let mut x = 1u64;
        while x < HIGHEST_US {
            values.extend(
                [x - 1, x, x + 1, x * 3 / 2]
                    .into_iter()
                    .filter(|v| (1..=HIGHEST_US).contains(v)),
            );
            x *= 2;
        }
        values.push(HIGHEST_US);
        let buckets = Buckets::new();
        let mut direct = new_histogram();
        for &v in &values {
            buckets.record(v);
            direct.record(v).unwrap();
        }
        let mut read = new_histogram();
        buckets.add_to(&mut read);
        assert_eq!(read.len(), direct.len());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                read.value_at_quantile(q),
                direct.value_at_quantile(q),
                "quantile {q}"
            );
        }
        for (a, b) in read.iter_recorded().zip(direct.iter_recorded()) {
            assert_eq!(
                (a.value_iterated_to(), a.count_at_value()),
                (b.value_iterated_to(), b.count_at_value())
            );
        }
        assert_eq!(read.iter_recorded().count(), direct.iter_recorded().count());
    }
}
