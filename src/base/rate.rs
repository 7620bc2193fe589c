//! Per-source limits: on the answers the UDP thread gives, so that a flood
//! of queries (or of spoofed ones) neither keeps the thread busy nor turns
//! this node into a stream of replies towards a victim; and on the bytes
//! a peer's `Range` and stripe requests make this node read and drop. A
//! source is an IPv4 address, an IPv6 link-local address, or the /64 of
//! another IPv6 one (what one host can pick its addresses in): see
//! [`source_of`].

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::base::bounded::Bounded;

/// Sources remembered per generation of the table.
const MAX_SOURCES: usize = 4096;

/// A token bucket per source: `rate` tokens a second, sustained, and up
/// to `burst` at once.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: Bounded<IpAddr, (f64, Instant)>,
}

impl RateLimit {
    /// At most `rate` answers a second to each source, twice that at once
    /// (Nix asks for many paths together); 0 for no limit.
    pub fn new(rate: u32) -> RateLimit {
        RateLimit::with_burst(f64::from(rate), 2.0 * f64::from(rate))
    }

    /// `rate` tokens a second for each source, `burst` at once.
    pub fn with_burst(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst,
            buckets: Bounded::new(MAX_SOURCES),
        }
    }

    fn burst(&self) -> f64 {
        self.burst
    }

    /// Takes one token of `ip`'s bucket; false when it is empty.
    pub fn allow(&mut self, ip: IpAddr) -> bool {
        self.allow_cost(ip, 1.0)
    }

    /// Takes `cost` tokens of the bucket of `ip`'s source; false (and
    /// none taken) when it has fewer. A cost above the burst is allowed
    /// once the bucket is full, and leaves it in debt: it is paid back at
    /// `rate` before anything else is allowed.
    pub fn allow_cost(&mut self, ip: IpAddr, cost: f64) -> bool {
        self.allow_cost_at(ip, cost, Instant::now())
    }

    /// [`RateLimit::allow_cost`] at the time `now`.
    fn allow_cost_at(&mut self, ip: IpAddr, cost: f64, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let (rate, burst) = (self.rate, self.burst());
        let (tokens, last) = (self.buckets).entry_or_insert_with(source_of(ip), || (burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= cost.min(burst) {
            *tokens -= cost;
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

/// The source an address belongs to: an IPv4 address (IPv4-mapped IPv6
/// ones included), an IPv6 link-local address itself (every host of a
/// link has its link-local address in the same `fe80::/64`, so that /64 is
/// the whole LAN, not one host), or the /64 of any other IPv6 address.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => IpAddr::V6(v6),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_addresses_and_ipv6_networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(source_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(source_of(ip("fd70:1:2:3:4:5:6:7")), ip("fd70:1:2:3::"));
        assert_eq!(
            source_of(ip("fd70:1:2:3::9")),
            source_of(ip("fd70:1:2:3:ffff::1"))
        );
        assert_ne!(
            source_of(ip("fd70:1:2:3::1")),
            source_of(ip("fd70:1:2:4::1"))
        );
        // Link-local: each host is its own source (the 50-host benchmark
        // saw every peer refused as one source past 32 connections).
        assert_ne!(
            source_of(ip("fe80::98e7:efff:fea1:1ebb")),
            source_of(ip("fe80::14fd:aeff:fec3:f441"))
        );
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_and_others_are_not_affected() {
        let mut limit = RateLimit::new(200);
        let (flooder, other): (IpAddr, IpAddr) =
            ("10.0.0.66".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // At one instant: the burst, and not a token more however long the
        // loop takes on a busy machine.
        let now = Instant::now();
        let allowed = (0..10_000)
            .filter(|_| limit.allow_cost_at(flooder, 1.0, now))
            .count();
        assert_eq!(allowed, 400);
        assert!(limit.allow_cost_at(other, 1.0, now));
        // A second later, the flooder has its rate again.
        let later = now + Duration::from_secs(1);
        let allowed = (0..10_000)
            .filter(|_| limit.allow_cost_at(flooder, 1.0, later))
            .count();
        assert_eq!(allowed, 200);
        let mut unlimited = RateLimit::new(0);
        assert!((0..10_000).all(|_| unlimited.allow(flooder)));
    }

    #[test]
    fn a_cost_above_the_burst_passes_once_and_leaves_a_debt() {
        let mut limit = RateLimit::with_burst(1.0, 100.0);
        let ip: IpAddr = "10.0.0.66".parse().unwrap();
        let now = Instant::now();
        assert!(
            limit.allow_cost_at(ip, 250.0, now),
            "a full bucket allows it"
        );
        assert!(!limit.allow_cost_at(ip, 1.0, now), "then it is in debt");
        // 150 s later the debt is paid and the bucket is back at 100.
        let later = now + Duration::from_secs(149);
        assert!(!limit.allow_cost_at(ip, 1.0, later));
        let later = now + Duration::from_secs(250);
        assert!(limit.allow_cost_at(ip, 250.0, later));
    }
}
