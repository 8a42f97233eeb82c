//! Per-command statistics: calls, errors, and latency histograms, kept per ring (each ring
//! writes only its own cells) and merged on read, for `INFO commandstats`, `INFO latencystats`
//! and `/metrics`.
//!
//! A command's latency runs from its parse to its reply being queued, so compute and store
//! waits are included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::table::Table;

/// Latency histograms are kept in microseconds up to a minute, at 2 significant digits.
const HIGHEST_US: u64 = 60_000_000;

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 2).expect("valid histogram bounds")
}

/// Counters and a histogram for one command on one ring.
struct CommandCell {
    calls: AtomicU64,
    errors: AtomicU64,
    usec: AtomicU64,
    /// Only the owning ring records; readers lock briefly to merge. Uncontended in practice.
    latency: Mutex<Histogram<u64>>,
}

impl CommandCell {
    fn new() -> CommandCell {
        CommandCell {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            usec: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
        }
    }
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
        let add = |counter: &AtomicU64, n: u64| {
            counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed)
        };
        add(&cell.calls, 1);
        if failed {
            add(&cell.errors, 1);
        }
        add(&cell.usec, us);
        if let Ok(mut h) = cell.latency.lock() {
            let _ = h.record(us);
        }
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
                    if let Ok(h) = cell.latency.lock() {
                        let _ = summary.latency.add(&*h);
                    }
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
}
