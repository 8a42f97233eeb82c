//! When requests are due: the open-loop schedule, and the bookkeeping that corrects for
//! coordinated omission.
//!
//! Open loop means each request has an *intended* send time fixed in advance, whatever the server
//! does. The total rate is spread over the connections: with even arrivals the run's requests are
//! `1/rate` apart and dealt round-robin to the connections; with Poisson arrivals each connection
//! draws exponential gaps at `rate / connections`. A request's latency is measured from its
//! intended time, so when the server stalls and requests pile up, each of them carries the time
//! it waited, not only the one that was in flight (wrk2's correction). Its service time is
//! measured from when it actually left.

use crate::workload::Rng;

/// How open-loop requests are spaced in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Exactly `1/rate` apart over the whole run (round-robin over connections).
    Even,
    /// A Poisson process: exponential gaps, as independent users would produce.
    Poisson,
}

/// The intended send times of one connection, in nanoseconds on the run's clock.
#[derive(Debug, Clone)]
pub struct Schedule {
    arrivals: Arrivals,
    start_ns: u64,
    /// Even: nanoseconds between two requests of the whole run. Poisson: mean gap of this
    /// connection.
    period_ns: f64,
    /// Even: this connection's position in the round-robin, and the connection count.
    offset: u64,
    stride: u64,
    /// Even: how many requests this connection has taken so far.
    taken: u64,
    /// Poisson: the next arrival, kept in floating point so gaps do not round away.
    next_ns: f64,
    rng: Rng,
}

impl Schedule {
    /// The schedule of connection `index` of `connections`, for `rate` requests/s in total,
    /// starting at `start_ns`.
    pub fn new(
        arrivals: Arrivals,
        rate: f64,
        connections: usize,
        index: usize,
        start_ns: u64,
        seed: u64,
    ) -> Schedule {
        assert!(rate > 0.0 && connections > 0 && index < connections);
        let mut rng = Rng::new(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (period_ns, next_ns) = match arrivals {
            Arrivals::Even => (1e9 / rate, 0.0),
            Arrivals::Poisson => {
                let mean_gap = 1e9 * connections as f64 / rate;
                let first = start_ns as f64 + exponential(&mut rng, mean_gap);
                (mean_gap, first)
            }
        };
        Schedule {
            arrivals,
            start_ns,
            period_ns,
            offset: index as u64,
            stride: connections as u64,
            taken: 0,
            next_ns,
            rng,
        }
    }

    /// The intended send time of this connection's next request.
    pub fn peek(&self) -> u64 {
        match self.arrivals {
            Arrivals::Even => {
                let sequence = self.offset + self.taken * self.stride;
                self.start_ns + (sequence as f64 * self.period_ns) as u64
            }
            Arrivals::Poisson => self.next_ns as u64,
        }
    }

    /// Moves past the next request.
    pub fn advance(&mut self) {
        match self.arrivals {
            Arrivals::Even => self.taken += 1,
            Arrivals::Poisson => self.next_ns += exponential(&mut self.rng, self.period_ns),
        }
    }
}

fn exponential(rng: &mut Rng, mean: f64) -> f64 {
    -rng.unit_open_closed().ln() * mean
}

/// The part of a run that is measured: requests intended (open loop) or sent (closed loop) in
/// `[warmup_end_ns, end_ns)` are recorded; earlier ones are warm-up.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup_end_ns: u64,
    /// No request is started at or after this time.
    pub end_ns: u64,
    /// At most this many recorded requests per connection (`--requests`, split).
    pub quota: Option<u64>,
}

impl Window {
    /// This connection's share of `--requests`: an even split, the first ones taking the rest.
    pub fn quota_for(requests: Option<u64>, connections: usize, index: usize) -> Option<u64> {
        requests.map(|total| {
            let connections = connections as u64;
            total / connections + u64::from((index as u64) < total % connections)
        })
    }
}

/// One request on the wire, waiting for its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// When it should have been sent (open loop) or was sent (closed loop).
    pub intended_ns: u64,
    /// When it was written to the socket.
    pub sent_ns: u64,
    /// Index of its command in the mix.
    pub command: u32,
    /// Part of the measured window (not warm-up).
    pub recorded: bool,
}

impl InFlight {
    /// Latency corrected for coordinated omission: from intended send to reply.
    pub fn latency_ns(&self, reply_ns: u64) -> u64 {
        reply_ns.saturating_sub(self.intended_ns)
    }

    /// Service time: from actual send to reply.
    pub fn service_ns(&self, reply_ns: u64) -> u64 {
        reply_ns.saturating_sub(self.sent_ns)
    }
}

/// The open-loop pacing of one connection: its schedule cut to the measured window and quota.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    schedule: Schedule,
    window: Window,
    recorded_taken: u64,
}

impl OpenLoop {
    pub fn new(schedule: Schedule, window: Window) -> OpenLoop {
        OpenLoop {
            schedule,
            window,
            recorded_taken: 0,
        }
    }

    /// The intended time of the next request, or `None` when this connection has sent all of
    /// its share.
    pub fn next_due(&self) -> Option<u64> {
        let due = self.schedule.peek();
        if due >= self.window.end_ns {
            return None;
        }
        if let Some(quota) = self.window.quota {
            if self.recorded_taken >= quota {
                return None;
            }
        }
        Some(due)
    }

    /// Takes the next request if it is due at `now_ns`: its intended time and whether it is
    /// recorded.
    pub fn take_due(&mut self, now_ns: u64) -> Option<(u64, bool)> {
        let due = self.next_due()?;
        if due > now_ns {
            return None;
        }
        self.schedule.advance();
        let recorded = due >= self.window.warmup_end_ns;
        if recorded {
            self.recorded_taken += 1;
        }
        Some((due, recorded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Recorder;
    use std::collections::VecDeque;

    const SECOND: u64 = 1_000_000_000;
    const MILLISECOND: u64 = 1_000_000;

    fn pacers(
        arrivals: Arrivals,
        rate: f64,
        connections: usize,
        window: Window,
        requests: Option<u64>,
    ) -> Vec<OpenLoop> {
        (0..connections)
            .map(|index| {
                let schedule = Schedule::new(arrivals, rate, connections, index, 0, 42);
                let window = Window {
                    quota: Window::quota_for(requests, connections, index),
                    ..window
                };
                OpenLoop::new(schedule, window)
            })
            .collect()
    }

    /// Drives every connection's pacer to the end, as if the client were never late, and
    /// returns the recorded intended times, sorted.
    fn recorded_times(pacers: &mut [OpenLoop]) -> Vec<u64> {
        let mut times = Vec::new();
        for pacer in pacers {
            while let Some(due) = pacer.next_due() {
                let (intended, recorded) = pacer.take_due(due).expect("due now");
                assert_eq!(intended, due);
                if recorded {
                    times.push(intended);
                }
            }
        }
        times.sort_unstable();
        times
    }

    #[test]
    fn even_schedule_sends_rate_times_duration_on_time() {
        // 1,000 req/s for 3 s after 0.5 s of warm-up, over 7 connections.
        let window = Window {
            warmup_end_ns: SECOND / 2,
            end_ns: SECOND / 2 + 3 * SECOND,
            quota: None,
        };
        let mut pacers = pacers(Arrivals::Even, 1000.0, 7, window, None);
        let times = recorded_times(&mut pacers);
        assert_eq!(times.len(), 3000);
        for (k, &t) in times.iter().enumerate() {
            let expected = SECOND / 2 + k as u64 * MILLISECOND;
            assert!(
                t.abs_diff(expected) <= 1,
                "request {k} at {t}, expected {expected}"
            );
        }
    }

    #[test]
    fn poisson_schedule_sends_about_rate_times_duration() {
        let window = Window {
            warmup_end_ns: 0,
            end_ns: 10 * SECOND,
            quota: None,
        };
        let mut pacers = pacers(Arrivals::Poisson, 2000.0, 10, window, None);
        let times = recorded_times(&mut pacers);
        // 20,000 expected; a Poisson count's standard deviation is sqrt(20,000) ~ 141.
        assert!(times.len().abs_diff(20_000) < 700, "{}", times.len());
        assert!(*times.last().unwrap() < 10 * SECOND);
    }

    #[test]
    fn request_limit_is_split_over_connections() {
        let window = Window {
            warmup_end_ns: SECOND,
            end_ns: u64::MAX,
            quota: None,
        };
        let mut pacers = pacers(Arrivals::Even, 500.0, 3, window, Some(1000));
        let times = recorded_times(&mut pacers);
        assert_eq!(times.len(), 1000);
        assert_eq!(times[0], SECOND);
    }

    /// What a simulated run measured.
    struct Simulated {
        latency_at_least_half_second: u64,
        service_at_least_half_second: u64,
        latency_at_least_ten_ms: u64,
        requests: u64,
        /// Replies in each second of the run, and the longest latency among them.
        replies_per_second: Vec<u64>,
        max_per_second: Vec<u64>,
    }

    /// One connection at 1,000 req/s for 4 s against a server that answers in 100 us, except
    /// that it stalls from 1 s to 2 s (it starts nothing in that second). The client keeps at
    /// most `max_inflight` requests outstanding, exactly as the load loop does.
    fn simulate_stall(max_inflight: usize) -> Simulated {
        let service = 100_000;
        let (stall_start, stall_end) = (SECOND, 2 * SECOND);
        let window = Window {
            warmup_end_ns: 0,
            end_ns: 4 * SECOND,
            quota: None,
        };
        let mut pacer = OpenLoop::new(Schedule::new(Arrivals::Even, 1000.0, 1, 0, 0, 1), window);
        let mut recorder = Recorder::new(1, false, crate::record::Timeline::default());
        let mut inflight: VecDeque<(InFlight, u64)> = VecDeque::new();
        let mut server_free_ns = 0;
        let mut clock = 0;
        loop {
            let next_reply = inflight.front().map(|&(_, reply)| reply);
            let next_send = if inflight.len() < max_inflight {
                pacer.next_due()
            } else {
                None
            };
            // The clock never goes back: an overdue request is sent now, not when it was due.
            let event = match (next_send, next_reply) {
                (None, None) => break,
                (Some(send), Some(reply)) => send.min(reply),
                (send, reply) => send.or(reply).unwrap(),
            };
            let now = clock.max(event);
            clock = now;
            if next_reply == Some(event) {
                let (request, reply) = inflight.pop_front().unwrap();
                recorder.record(&request, reply, None);
                continue;
            }
            // Send whatever is due, up to the cap, as the load loop does.
            while inflight.len() < max_inflight {
                let Some((intended, recorded)) = pacer.take_due(now) else {
                    break;
                };
                let mut start = now.max(server_free_ns);
                if (stall_start..stall_end).contains(&start) {
                    start = stall_end;
                }
                server_free_ns = start + service;
                let request = InFlight {
                    intended_ns: intended,
                    sent_ns: now,
                    command: 0,
                    recorded,
                };
                inflight.push_back((request, server_free_ns));
            }
        }
        let count_from = |histogram: &hdrhistogram::Histogram<u64>, from: u64| {
            histogram
                .iter_recorded()
                .filter(|v| v.value_iterated_to() >= from)
                .map(|v| v.count_at_value())
                .sum::<u64>()
        };
        Simulated {
            latency_at_least_half_second: count_from(&recorder.latency, SECOND / 2),
            service_at_least_half_second: count_from(&recorder.service, SECOND / 2),
            latency_at_least_ten_ms: count_from(&recorder.latency, 10 * MILLISECOND),
            requests: recorder.latency.len(),
            replies_per_second: recorder
                .timeline
                .seconds()
                .map(|s| s.map_or(0, |h| h.len()))
                .collect(),
            max_per_second: recorder
                .timeline
                .seconds()
                .map(|s| s.map_or(0, |h| h.max()))
                .collect(),
        }
    }

    #[test]
    fn stall_shows_in_corrected_latency_not_in_service_time() {
        // One request outstanding per connection (wrk2's model): during the stall the client
        // cannot send, so the requests due in that second leave late, after it. Their service
        // time is short; their corrected latency carries the wait.
        let run = simulate_stall(1);
        assert_eq!(run.requests, 4000);
        // About the 1,000 requests due during the stall are delayed (plus the ~100 that come
        // due while the backlog drains at 100 us each) ...
        assert!(
            (1000..=1150).contains(&run.latency_at_least_ten_ms),
            "{}",
            run.latency_at_least_ten_ms
        );
        // ... by 1 s down to 0 s, so about half of them by 0.5 s or more ...
        assert!(
            (500..=600).contains(&run.latency_at_least_half_second),
            "{}",
            run.latency_at_least_half_second
        );
        // ... while service time sees only the one request that was in flight when it began.
        assert_eq!(run.service_at_least_half_second, 1);
        // The timeline puts the stall where it was: no reply in second 1, then the backlog and
        // its second-long wait in second 2.
        assert_eq!(run.replies_per_second[1], 0, "{:?}", run.replies_per_second);
        assert!(
            run.replies_per_second[2] > 1500,
            "{:?}",
            run.replies_per_second
        );
        assert!(run.max_per_second[2] > 900 * MILLISECOND);
        assert!(run.max_per_second[0] < MILLISECOND && run.max_per_second[3] < MILLISECOND);
        assert_eq!(run.replies_per_second.iter().sum::<u64>(), run.requests);
    }

    #[test]
    fn pipelined_open_loop_keeps_sending_through_a_stall() {
        // With pipelining the client keeps sending on schedule during the stall, so the wait
        // is on the wire and service time sees it exactly as corrected latency does.
        let run = simulate_stall(1000);
        assert_eq!(run.requests, 4000);
        assert!(
            (500..=600).contains(&run.latency_at_least_half_second),
            "{}",
            run.latency_at_least_half_second
        );
        assert_eq!(
            run.service_at_least_half_second,
            run.latency_at_least_half_second
        );
    }
}
