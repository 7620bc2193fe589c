//! A per-source limit on the answers the UDP thread gives, so that a flood
//! of queries (or of spoofed ones) neither keeps the thread busy nor turns
//! this node into a stream of replies towards a victim.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Answers per second to one source, sustained.
pub const RATE: f64 = 200.0;
/// Answers one source may get at once (Nix asks for many paths together).
const BURST: f64 = 400.0;
/// Sources remembered at most; beyond, the table starts afresh.
const MAX_SOURCES: usize = 4096;

/// A token bucket per source address.
#[derive(Default)]
pub struct RateLimit {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimit {
    /// Takes one token of `ip`'s bucket; false when it is empty.
    pub fn allow(&mut self, ip: IpAddr) -> bool {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&ip) {
            self.forget_idle();
            if self.buckets.len() >= MAX_SOURCES {
                self.buckets.clear();
            }
        }
        let now = Instant::now();
        let (tokens, last) = self.buckets.entry(ip).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * RATE).min(BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops the buckets of sources quiet long enough to be full again.
    pub fn forget_idle(&mut self) {
        let full_after = Duration::from_secs_f64(BURST / RATE);
        self.buckets
            .retain(|_, (_, last)| last.elapsed() < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_others_are_not_affected() {
        let mut limit = RateLimit::default();
        let (flooder, other): (IpAddr, IpAddr) =
            ("10.0.0.66".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let allowed = (0..10_000).filter(|_| limit.allow(flooder)).count();
        assert!((400..=410).contains(&allowed), "{allowed}");
        assert!(limit.allow(other));
    }
}
