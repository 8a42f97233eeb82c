//! Recording replies into HDR histograms: overall and per command, corrected latency and
//! service time, plus error replies counted by their first word.

use crate::schedule::InFlight;
use hdrhistogram::Histogram;

/// Lowest value a histogram tells apart: 1 ns.
pub const LOWEST_NS: u64 = 1;
/// Highest value tracked: one hour; longer values are clamped to it.
pub const HIGHEST_NS: u64 = 3_600_000_000_000;
/// Significant decimal digits kept (relative error below 0.1%).
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty histogram of nanosecond values with the bench's bounds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
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
    /// Closed loop: service time is latency, so only `latency` is recorded until [`finish`].
    ///
    /// [`finish`]: Recorder::finish
    service_is_latency: bool,
}

impl Recorder {
    /// A recorder for a mix of `commands` commands. With `service_is_latency` (closed loop,
    /// where a request is sent when it is meant to be) only latency is recorded; with one
    /// command, only the overall histograms. [`Recorder::finish`] fills in the rest.
    pub fn new(commands: usize, service_is_latency: bool) -> Recorder {
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

    /// Adds `other` (another thread's recorder for the same mix) into this one.
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
        let mut a = Recorder::new(2, false);
        let request = InFlight {
            intended_ns: 1_000,
            sent_ns: 3_000,
            command: 1,
            recorded: true,
        };
        a.record(&request, 10_000, None);
        a.record(&request, 10_000, Some(b"ERR"));
        let mut b = Recorder::new(2, false);
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
        let mut closed = Recorder::new(1, true);
        closed.record(&request, 5_000, None);
        closed.record(&request, 9_000, Some(b"ERR"));
        assert_eq!(closed.service.len(), 0);
        closed.finish();
        assert_eq!(closed.service, closed.latency);
        assert_eq!(closed.commands[0].latency, closed.latency);
        assert_eq!(closed.commands[0].service, closed.latency);
        assert_eq!(closed.commands[0].errors, 1);
    }
}
