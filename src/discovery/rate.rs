//! A per-source limit on the answers the UDP thread gives, so that a flood
//! of queries (or of spoofed ones) neither keeps the thread busy nor turns
//! this node into a stream of replies towards a victim.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::cache::Bounded;

/// Sources remembered per generation of the table.
const MAX_SOURCES: usize = 4096;

/// A token bucket per source address: `rate` answers a second, sustained,
/// and twice that at once (Nix asks for many paths together).
pub struct RateLimit {
    rate: f64,
    buckets: Bounded<IpAddr, (f64, Instant)>,
}

impl RateLimit {
    /// At most `rate` answers a second to each source; 0 for no limit.
    pub fn new(rate: u32) -> RateLimit {
        RateLimit {
            rate: f64::from(rate),
            buckets: Bounded::new(MAX_SOURCES),
        }
    }

    fn burst(&self) -> f64 {
        2.0 * self.rate
    }

    /// Takes one token of `ip`'s bucket; false when it is empty.
    pub fn allow(&mut self, ip: IpAddr) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let (rate, burst) = (self.rate, self.burst());
        let now = Instant::now();
        let (tokens, last) = self.buckets.entry_or_insert_with(ip, || (burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
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
        if self.rate == 0.0 {
            return;
        }
        let full_after = Duration::from_secs_f64(self.burst() / self.rate);
        self.buckets
            .retain(|_, (_, last)| last.elapsed() < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_others_are_not_affected() {
        let mut limit = RateLimit::new(200);
        let (flooder, other): (IpAddr, IpAddr) =
            ("10.0.0.66".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let allowed = (0..10_000).filter(|_| limit.allow(flooder)).count();
        assert!((400..=410).contains(&allowed), "{allowed}");
        assert!(limit.allow(other));
        let mut unlimited = RateLimit::new(0);
        assert!((0..10_000).all(|_| unlimited.allow(flooder)));
    }
}
