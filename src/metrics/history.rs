//! The last hour of the node's counters, minute by minute, for the
//! dashboard's plots and "last hour" totals: a ring of at most 60 samples
//! of the cumulative counters, each taken at the first event of a minute
//! (lazily: no thread, and nothing at all while the node is idle).
//!
//! A sample is the counters as they were when a minute began: it is taken
//! before the event that triggers it is counted. A minute without a sample
//! had no event, so the counters at its start are those of the next sample
//! (or the current ones): the per-minute figures are exact however sparse
//! the samples are.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Minutes kept: the last hour.
pub const MINUTES: usize = 60;

/// The counters the history follows, cumulative since start (or, from
/// [`History::last_hour`], within one minute).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub hits: u64,
    pub misses: u64,
    /// NAR bytes from peers' stores to the local Nix.
    pub from_peers: u64,
    /// NAR bytes of upstream caches that a peer fetched for the LAN, from
    /// it to the local Nix (over the LAN).
    pub from_peer_pulls: u64,
    /// NAR bytes this node fetched from upstream caches itself, to the
    /// local Nix (over the internet).
    pub from_upstreams: u64,
    /// NAR bytes from this store and this node's spool to peers.
    pub to_peers: u64,
}

impl Sample {
    fn minus(self, earlier: Sample) -> Sample {
        Sample {
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
            from_peers: self.from_peers.saturating_sub(earlier.from_peers),
            from_peer_pulls: (self.from_peer_pulls).saturating_sub(earlier.from_peer_pulls),
            from_upstreams: (self.from_upstreams).saturating_sub(earlier.from_upstreams),
            to_peers: self.to_peers.saturating_sub(earlier.to_peers),
        }
    }

    pub fn plus(self, other: Sample) -> Sample {
        Sample {
            hits: self.hits + other.hits,
            misses: self.misses + other.misses,
            from_peers: self.from_peers + other.from_peers,
            from_peer_pulls: self.from_peer_pulls + other.from_peer_pulls,
            from_upstreams: self.from_upstreams + other.from_upstreams,
            to_peers: self.to_peers + other.to_peers,
        }
    }
}

pub struct History {
    start: Instant,
    /// The first minute not sampled yet: events before it cost one atomic
    /// load.
    next: AtomicU64,
    /// (minute since start, counters at its start), oldest first.
    samples: Mutex<VecDeque<(u64, Sample)>>,
}

impl History {
    pub fn new(start: Instant) -> History {
        History {
            start,
            next: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::with_capacity(MINUTES)),
        }
    }

    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / 60
    }

    /// Called before an event is counted: at the first event of a minute,
    /// keeps `counters()` as the counters at that minute's start.
    pub fn record(&self, now: Instant, counters: impl FnOnce() -> Sample) {
        let minute = self.minute(now);
        if minute < self.next.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        if samples.back().is_some_and(|(m, _)| *m >= minute) {
            return;
        }
        samples.push_back((minute, counters()));
        while samples
            .front()
            .is_some_and(|(m, _)| *m + MINUTES as u64 <= minute)
        {
            samples.pop_front();
        }
        self.next.store(minute + 1, Ordering::Relaxed);
    }

    /// What happened in each of the last 60 minutes, oldest first; the last
    /// one is the minute under way. `now` are the counters now, with
    /// [`History::record`] called before them. Minutes before the start
    /// are zero.
    pub fn last_hour(&self, at: Instant, now: Sample) -> Vec<Sample> {
        let minute = self.minute(at);
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        // The counters at the start of minute `m`: those of the first
        // sample at or after it, else the current ones.
        let at_start = |m: u64| {
            (samples.iter())
                .find(|(sampled, _)| *sampled >= m)
                .map_or(now, |(_, s)| *s)
        };
        let first = (minute + 1).saturating_sub(MINUTES as u64);
        let mut minutes = vec![Sample::default(); MINUTES - (minute + 1 - first) as usize];
        minutes.extend((first..=minute).map(|m| {
            let end = if m == minute { now } else { at_start(m + 1) };
            end.minus(at_start(m))
        }));
        minutes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hits(n: u64) -> Sample {
        Sample {
            hits: n,
            ..Sample::default()
        }
    }

    #[test]
    fn minutes_count_what_happened_in_them_however_sparse_the_samples() {
        let start = Instant::now();
        let history = History::new(start);
        let at = |min: u64, sec: u64| start + Duration::from_secs(min * 60 + sec);
        let mut count = 0;
        let mut event = |t: Instant| {
            history.record(t, || hits(count));
            count += 1;
        };
        // Three events in minute 0, none in 1 to 4, two in minute 5.
        event(at(0, 1));
        event(at(0, 30));
        event(at(0, 59));
        event(at(5, 0));
        event(at(5, 10));
        let hour = history.last_hour(at(6, 20), hits(count));
        assert_eq!(hour.len(), MINUTES);
        let per_minute: Vec<u64> = hour[MINUTES - 7..].iter().map(|s| s.hits).collect();
        assert_eq!(per_minute, [3, 0, 0, 0, 0, 2, 0]);
        assert!(hour[..MINUTES - 7].iter().all(|s| *s == Sample::default()));
    }

    #[test]
    fn keeps_one_hour_and_at_most_sixty_samples() {
        let start = Instant::now();
        let history = History::new(start);
        for minute in 0..200u64 {
            let t = start + Duration::from_secs(minute * 60 + 5);
            history.record(t, || hits(minute * 2));
            history.record(t, || unreachable!("one sample a minute"));
        }
        assert!(history.samples.lock().unwrap().len() <= MINUTES);
        // Two events a minute: 2 in each of the last 60.
        let hour = history.last_hour(start + Duration::from_secs(199 * 60 + 30), hits(400));
        let total: u64 = hour.iter().map(|s| s.hits).sum();
        assert_eq!(total, 400 - 140 * 2);
        assert!(hour.iter().all(|s| s.hits == 2));
    }
}
