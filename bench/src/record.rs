//! Recording replies into HDR histograms: overall and per command, corrected latency and
//! service time, plus error replies counted by their first word, and per second of the measured
//! window (the timeline).

use crate::schedule::InFlight;
use hdrhistogram::{Counter, Histogram};

/// Lowest value a histogram tells apart: 1 ns.
pub const LOWEST_NS: u64 = 1;
/// Highest value tracked: one hour; longer values are clamped to it.
pub const HIGHEST_NS: u64 = 3_600_000_000_000;
/// Significant decimal digits kept (relative error below 0.1%).
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Significant digits of the per-second histograms. At 2 digits (under 1% error, plenty for a
/// p99 per second) and `u32` counts, a second takes about 18 KiB where the overall histograms'
/// precision would take 264 KiB, and a long run has many seconds in every load thread.
pub const TIMELINE_SIGNIFICANT_DIGITS: u8 = 2;

const NS_PER_SECOND: u64 = 1_000_000_000;

/// An empty histogram of nanosecond values with the bench's bounds.
pub fn new_histogram() -> Histogram<u64> {
    histogram_with_digits(SIGNIFICANT_DIGITS)
}

/// An empty histogram with the bench's bounds and `digits` significant digits.
pub fn histogram_with_digits<C: Counter>(digits: u8) -> Histogram<C> {
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, digits)
        .expect("constant histogram bounds are valid")
}

/// Latency per second of the measured window, by reply time, so a stall shows where it happened
/// and not only in the tail of the overall distribution.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Second 0 starts here (the end of warm-up), on the engine's clock.
    start_ns: u64,
    /// The window's last second, when the window has an end (`--duration`). Replies during the
    /// drain after it count there: they answer that second's requests, and a second of their
    /// own would show a few stragglers as a collapse of throughput at the end of every run.
    last_second: Option<usize>,
    /// A second with no reply has no histogram: a stall costs nothing. `u32` counts still hold
    /// four billion replies a second.
    seconds: Vec<Option<Histogram<u32>>>,
}

impl Timeline {
    /// Seconds from `start_ns`; with `duration_ns`, the seconds of that window only.
    pub fn new(start_ns: u64, duration_ns: Option<u64>) -> Timeline {
        Timeline {
            start_ns,
            last_second: duration_ns
                .map(|d| (d.div_ceil(NS_PER_SECOND) as usize).saturating_sub(1)),
            seconds: Vec::new(),
        }
    }

    #[inline]
    pub fn record(&mut self, reply_ns: u64, latency_ns: u64) {
        let second = (reply_ns.saturating_sub(self.start_ns) / NS_PER_SECOND) as usize;
        let second = self.last_second.map_or(second, |last| second.min(last));
        if second >= self.seconds.len() {
            self.seconds.resize_with(second + 1, || None);
        }
        self.seconds[second]
            .get_or_insert_with(|| histogram_with_digits(TIMELINE_SIGNIFICANT_DIGITS))
            .saturating_record(latency_ns);
    }

    /// Adds another thread's timeline of the same run (same start).
    pub fn merge(&mut self, other: &Timeline) {
        if other.seconds.is_empty() {
            return;
        }
        debug_assert!(
            self.seconds.is_empty() || self.start_ns == other.start_ns,
            "timelines of different runs do not merge"
        );
        self.start_ns = other.start_ns;
        self.last_second = other.last_second;
        if other.seconds.len() > self.seconds.len() {
            self.seconds.resize_with(other.seconds.len(), || None);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            match (mine.as_mut(), theirs) {
                (_, None) => {}
                (None, Some(theirs)) => *mine = Some(theirs.clone()),
                (Some(mine), Some(theirs)) => mine
                    .add(theirs)
                    .expect("histograms with the same bounds always add"),
            }
        }
    }

    /// Every second from 0 to the last one with a reply; `None` where none came.
    pub fn seconds(&self) -> impl Iterator<Item = Option<&Histogram<u32>>> {
        self.seconds.iter().map(Option::as_ref)
    }
}

/// Counts and histograms of one command of the mix.
#[derive(Debug, Clone)]
pub struct CommandRecord {
    pub latency: Histogram<u64>,
    pub service: Histogram<u64>,
    pub errors: u64,
}

/// Everything one load thread (or, merged, one run) measured.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// From intended send to reply (coordinated omission corrected).
    pub latency: Histogram<u64>,
    /// From actual send to reply.
    pub service: Histogram<u64>,
    /// From intended send to actual send: how late the client itself was (open loop).
    pub send_lag: Histogram<u64>,
    pub commands: Vec<CommandRecord>,
    /// Error replies by first word (`ERR`, `BUSY`, ...), in order of first appearance.
    pub errors_by_kind: Vec<(String, u64)>,
    pub errors: u64,
    /// The latest reply time of a recorded request.
    pub last_reply_ns: u64,
    /// Latency per second of the measured window.
    pub timeline: Timeline,
    /// Closed loop: service time is latency, so only `latency` is recorded until [`finish`].
    ///
    /// [`finish`]: Recorder::finish
    service_is_latency: bool,
}

impl Recorder {
    /// A recorder for a mix of `commands` commands. With `service_is_latency` (closed loop,
    /// where a request is sent when it is meant to be) only latency is recorded; with one
    /// command, only the overall histograms. [`Recorder::finish`] fills in the rest.
    pub fn new(commands: usize, service_is_latency: bool, timeline: Timeline) -> Recorder {
        Recorder {
            latency: new_histogram(),
            service: new_histogram(),
            send_lag: new_histogram(),
            commands: (0..commands)
                .map(|_| CommandRecord {
                    latency: new_histogram(),
                    service: new_histogram(),
                    errors: 0,
                })
                .collect(),
            errors_by_kind: Vec::new(),
            errors: 0,
            last_reply_ns: 0,
            timeline,
            service_is_latency,
        }
    }

    /// Records the reply to `request`, received at `reply_ns`; `error` is the first word of an
    /// error reply.
    #[inline]
    pub fn record(&mut self, request: &InFlight, reply_ns: u64, error: Option<&[u8]>) {
        let latency = request.latency_ns(reply_ns).max(LOWEST_NS);
        self.latency.saturating_record(latency);
        let service = request.service_ns(reply_ns).max(LOWEST_NS);
        if !self.service_is_latency {
            self.service.saturating_record(service);
        }
        let several_commands = self.commands.len() > 1;
        let command = &mut self.commands[request.command as usize];
        if several_commands {
            command.latency.saturating_record(latency);
            if !self.service_is_latency {
                command.service.saturating_record(service);
            }
        }
        self.last_reply_ns = self.last_reply_ns.max(reply_ns);
        self.timeline.record(reply_ns, latency);
        if let Some(word) = error {
            self.errors += 1;
            command.errors += 1;
            self.count_error(word);
        }
    }

    /// Records how late a request left compared with its intended time.
    #[inline]
    pub fn record_send_lag(&mut self, lag_ns: u64) {
        self.send_lag.saturating_record(lag_ns.max(LOWEST_NS));
    }

    #[cold]
    fn count_error(&mut self, word: &[u8]) {
        let word = String::from_utf8_lossy(word);
        let word = if word.is_empty() { "(empty)" } else { &word };
        match self
            .errors_by_kind
            .iter_mut()
            .find(|(kind, _)| kind == word)
        {
            Some((_, count)) => *count += 1,
            None => self.errors_by_kind.push((word.to_string(), 1)),
        }
    }

    /// Adds `other` (another thread's recorder for the same mix) into this one. Timelines add
    /// second by second, so they must be of the same run: take a repetition's timeline out
    /// before adding its totals to another repetition's.
    pub fn merge(&mut self, other: &Recorder) {
        add(&mut self.latency, &other.latency);
        add(&mut self.service, &other.service);
        add(&mut self.send_lag, &other.send_lag);
        for (mine, theirs) in self.commands.iter_mut().zip(&other.commands) {
            add(&mut mine.latency, &theirs.latency);
            add(&mut mine.service, &theirs.service);
            mine.errors += theirs.errors;
        }
        for (kind, count) in &other.errors_by_kind {
            match self.errors_by_kind.iter_mut().find(|(k, _)| k == kind) {
                Some((_, c)) => *c += count,
                None => self.errors_by_kind.push((kind.clone(), *count)),
            }
        }
        self.errors += other.errors;
        self.last_reply_ns = self.last_reply_ns.max(other.last_reply_ns);
        self.timeline.merge(&other.timeline);
    }

    /// Completes the histograms that recording skipped: service time where it is latency, and
    /// the one command's where it is the overall one. Call once, after merging.
    pub fn finish(&mut self) {
        if self.commands.len() == 1 {
            self.commands[0].latency = self.latency.clone();
            if !self.service_is_latency {
                self.commands[0].service = self.service.clone();
            }
        }
        if self.service_is_latency {
            self.service = self.latency.clone();
            for command in &mut self.commands {
                command.service = command.latency.clone();
            }
        }
    }

    /// Requests recorded.
    pub fn requests(&self) -> u64 {
        self.latency.len()
    }
}

fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from)
        .expect("histograms with the same bounds always add");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let mut a = Recorder::new(2, false, Timeline::default());
        let request = InFlight {
            intended_ns: 1_000,
            sent_ns: 3_000,
            command: 1,
            recorded: true,
        };
        a.record(&request, 10_000, None);
        a.record(&request, 10_000, Some(b"ERR"));
        let mut b = Recorder::new(2, false, Timeline::default());
        b.record(&request, 20_000, Some(b"BUSY"));
        b.record(&request, 20_000, Some(b"ERR"));
        a.merge(&b);
        assert_eq!(a.requests(), 4);
        assert_eq!(a.errors, 3);
        assert_eq!(
            a.errors_by_kind,
            vec![("ERR".to_string(), 2), ("BUSY".to_string(), 1)]
        );
        assert_eq!(a.commands[1].latency.len(), 4);
        assert_eq!(a.commands[0].latency.len(), 0);
        assert_eq!(a.last_reply_ns, 20_000);
        assert!(a.latency.equivalent(a.latency.max(), 19_000));
        assert!(a.service.equivalent(a.service.max(), 17_000));
    }

    #[test]
    fn finish_fills_in_what_was_skipped() {
        let request = InFlight {
            intended_ns: 1_000,
            sent_ns: 1_000,
            command: 0,
            recorded: true,
        };
        let mut closed = Recorder::new(1, true, Timeline::default());
        closed.record(&request, 5_000, None);
        closed.record(&request, 9_000, Some(b"ERR"));
        assert_eq!(closed.service.len(), 0);
        closed.finish();
        assert_eq!(closed.service, closed.latency);
        assert_eq!(closed.commands[0].latency, closed.latency);
        assert_eq!(closed.commands[0].service, closed.latency);
        assert_eq!(closed.commands[0].errors, 1);
    }

    #[test]
    fn timeline_buckets_replies_by_second_and_merges() {
        const S: u64 = 1_000_000_000;
        let start = 50 * S;
        let request = |intended_ns| InFlight {
            intended_ns,
            sent_ns: intended_ns,
            command: 0,
            recorded: true,
        };
        // Thread a: two replies in second 0, one at the very start of second 1; nothing in 2
        // (a stall); one in 3 that waited 2.5 s.
        let mut a = Recorder::new(1, true, Timeline::new(start, None));
        a.record(&request(start), start + 100_000, None);
        a.record(&request(start), start + S - 1, None);
        a.record(&request(start + S - 10), start + S, None);
        a.record(&request(start + S / 2), start + 3 * S, None);
        // Thread b: one reply in second 1 and one in second 4.
        let mut b = Recorder::new(1, true, Timeline::new(start, None));
        b.record(&request(start + S), start + S + 5_000, None);
        b.record(&request(start + 4 * S), start + 4 * S + 7_000, Some(b"ERR"));
        a.merge(&b);
        let counts: Vec<u64> = a
            .timeline
            .seconds()
            .map(|s| s.map_or(0, |h| h.len()))
            .collect();
        assert_eq!(counts, vec![2, 2, 0, 1, 1]);
        assert!(a.timeline.seconds().nth(2).unwrap().is_none());
        let third = a.timeline.seconds().nth(3).unwrap().unwrap();
        assert!(third.equivalent(third.max(), 5 * S / 2));
        assert_eq!(counts.iter().sum::<u64>(), a.requests());
        // Merging into an empty recorder (the run's total) keeps the seconds.
        let mut total = Recorder::new(1, true, Timeline::default());
        total.merge(&a);
        assert_eq!(total.timeline.seconds().count(), 5);
    }

    #[test]
    fn drain_replies_count_in_the_last_second_of_the_window() {
        const S: u64 = 1_000_000_000;
        let mut timeline = Timeline::new(S, Some(3 * S / 2));
        for reply_ns in [S + 10, 2 * S + 10, 3 * S - 1, 3 * S + 10, 9 * S] {
            timeline.record(reply_ns, 1_000);
        }
        let counts: Vec<u64> = timeline
            .seconds()
            .map(|s| s.map_or(0, |h| h.len()))
            .collect();
        assert_eq!(counts, vec![1, 4]);
    }

    #[test]
    fn timeline_seconds_are_small() {
        let histogram: Histogram<u32> = histogram_with_digits(TIMELINE_SIGNIFICANT_DIGITS);
        assert!(histogram.distinct_values() * 4 < 20 * 1024);
    }
}
