//! A hashed timer wheel: one deadline per session (auth timeout, idle timeout, request timeout
//! all collapse into "the next moment this session must be looked at").
//!
//! Cancelling is lazy: an entry is only acted on if the session still exists with the same
//! generation and still holds the same deadline, so re-arming never searches the wheel.

/// One armed deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Slab slot of the session.
    pub slot: u32,
    /// Generation of the session when the deadline was armed.
    pub generation: u32,
    /// Absolute tick at which it fires.
    pub tick: u64,
}

/// The wheel. Ticks are counted by the caller (the ring converts its clock to ticks).
pub struct TimerWheel {
    buckets: Vec<Vec<Entry>>,
    mask: u64,
    /// The next tick not yet processed.
    next_tick: u64,
    armed: usize,
    /// The tick of the earliest entry, once known; `None` until [`TimerWheel::next_due`] looks
    /// it up again (after the entry it named fired), so a busy ring that never sleeps never
    /// scans the wheel.
    earliest: Option<u64>,
}

impl TimerWheel {
    /// A wheel with `buckets` buckets (rounded up to a power of two).
    pub fn new(buckets: usize, start_tick: u64) -> TimerWheel {
        let n = buckets.next_power_of_two().max(2);
        TimerWheel {
            buckets: (0..n).map(|_| Vec::new()).collect(),
            mask: n as u64 - 1,
            next_tick: start_tick,
            armed: 0,
            earliest: None,
        }
    }

    /// Arms an entry and returns the tick it will fire at: a tick in the past is moved to the
    /// next advance, and the caller must remember the returned tick, not the one it asked for.
    pub fn insert(&mut self, mut entry: Entry) -> u64 {
        if entry.tick < self.next_tick {
            entry.tick = self.next_tick;
        }
        self.buckets[(entry.tick & self.mask) as usize].push(entry);
        self.earliest = match self.earliest {
            Some(t) => Some(t.min(entry.tick)),
            None if self.armed == 0 => Some(entry.tick),
            None => None,
        };
        self.armed += 1;
        entry.tick
    }

    /// Entries (possibly stale) still in the wheel.
    pub fn len(&self) -> usize {
        self.armed
    }

    /// True when nothing is armed, so the ring may sleep without a timeout.
    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    /// The tick at which the earliest entry (stale or not) fires; `None` when the wheel is empty.
    /// The ring sleeps until then instead of waking every tick.
    pub fn next_due(&mut self) -> Option<u64> {
        if self.armed == 0 {
            return None;
        }
        if self.earliest.is_none() {
            self.earliest = Some(self.find_earliest());
        }
        self.earliest
    }

    fn find_earliest(&self) -> u64 {
        // Every entry's tick is at or after `next_tick`, so within one rotation the first bucket
        // holding an entry for that very tick holds the earliest; past it, any entry may be.
        for step in 0..=self.mask {
            let tick = self.next_tick + step;
            if self.buckets[(tick & self.mask) as usize]
                .iter()
                .any(|e| e.tick == tick)
            {
                return tick;
            }
        }
        self.buckets
            .iter()
            .flatten()
            .map(|e| e.tick)
            .min()
            .expect("an armed wheel holds entries")
    }

    /// Moves time forward to `now_tick` (inclusive) and appends every due entry to `due`.
    pub fn advance(&mut self, now_tick: u64, due: &mut Vec<Entry>) {
        if self.earliest.is_some_and(|t| t <= now_tick) {
            self.earliest = None;
        }
        if self.armed == 0 {
            self.next_tick = now_tick + 1;
            return;
        }
        // Past a full rotation every bucket is visited once; later rotations add nothing new.
        let span = (now_tick + 1).saturating_sub(self.next_tick);
        let visits = span.min(self.mask + 1);
        for step in 0..visits {
            let tick = self.next_tick + step;
            let bucket = &mut self.buckets[(tick & self.mask) as usize];
            let mut i = 0;
            while i < bucket.len() {
                if bucket[i].tick <= now_tick {
                    due.push(bucket.swap_remove(i));
                    self.armed -= 1;
                } else {
                    i += 1;
                }
            }
        }
        self.next_tick = now_tick + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: u32, tick: u64) -> Entry {
        Entry {
            slot,
            generation: 0,
            tick,
        }
    }

    #[test]
    fn fires_at_its_tick_and_not_before() {
        let mut wheel = TimerWheel::new(8, 0);
        wheel.insert(entry(1, 5));
        let mut due = Vec::new();
        wheel.advance(4, &mut due);
        assert!(due.is_empty());
        wheel.advance(5, &mut due);
        assert_eq!(due, vec![entry(1, 5)]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_rotation_wait_their_turn() {
        let mut wheel = TimerWheel::new(4, 0);
        wheel.insert(entry(1, 2));
        wheel.insert(entry(2, 6)); // same bucket, next rotation
        let mut due = Vec::new();
        wheel.advance(3, &mut due);
        assert_eq!(due, vec![entry(1, 2)]);
        due.clear();
        wheel.advance(6, &mut due);
        assert_eq!(due, vec![entry(2, 6)]);
    }

    #[test]
    fn a_long_jump_fires_everything_due() {
        let mut wheel = TimerWheel::new(4, 0);
        for i in 0..20 {
            wheel.insert(entry(i, i as u64));
        }
        let mut due = Vec::new();
        wheel.advance(100, &mut due);
        assert_eq!(due.len(), 20);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn next_due_names_the_earliest_entry_in_any_rotation() {
        let mut wheel = TimerWheel::new(4, 0);
        assert_eq!(wheel.next_due(), None);
        wheel.insert(entry(1, 9));
        assert_eq!(wheel.next_due(), Some(9));
        wheel.insert(entry(2, 3));
        wheel.insert(entry(3, 6));
        assert_eq!(wheel.next_due(), Some(3));
        let mut due = Vec::new();
        wheel.advance(3, &mut due);
        assert_eq!(
            wheel.next_due(),
            Some(6),
            "looked up again after the earliest fired"
        );
        wheel.advance(6, &mut due);
        assert_eq!(wheel.next_due(), Some(9), "found beyond one rotation");
        wheel.advance(9, &mut due);
        assert_eq!(wheel.next_due(), None);
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        let mut wheel = TimerWheel::new(4, 10);
        assert_eq!(
            wheel.insert(entry(1, 3)),
            10,
            "moved to the next tick, and says so"
        );
        let mut due = Vec::new();
        wheel.advance(10, &mut due);
        assert_eq!(due.len(), 1);
    }
}
