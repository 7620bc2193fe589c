//! How often a node says hello: every 30 s on a LAN of up to a hundred
//! nodes, thinning out past that so that each node hears about a few
//! hellos a second however large the LAN. The peer table forgets a node
//! after a few of its gaps (`peer_table.rs`).

use std::time::Duration;

/// How often a node says hello to the LAN, so that peers know it is there
/// (with its summary's version, and its peer list to the peers it reaches
/// by unicast), on a LAN of up to a hundred nodes.
pub const HELLO_EVERY: Duration = Duration::from_secs(30);

/// Past a hundred nodes the hellos thin out, so that each node hears
/// about `1 / HELLO_SPACING` of them a second however large the LAN.
pub const HELLO_SPACING: Duration = Duration::from_millis(300);

/// The longest time between hellos: how long a node that vanished without
/// a goodbye may still be thought about, a few times over.
pub const HELLO_MAX: Duration = Duration::from_secs(600);

/// The time until the next hello for a node that knows `peers` live peers
/// and said its last one `previous` ago: `HELLO_SPACING` per peer within
/// `HELLO_EVERY..=HELLO_MAX`, at most twice the previous one, so that
/// peers (which forget a node after a few of its recent gaps, see
/// `PeerTable::expire`) follow it as the LAN grows.
pub fn hello_period(peers: usize, previous: Duration) -> Duration {
    let wanted = HELLO_SPACING.saturating_mul(peers.try_into().unwrap_or(u32::MAX));
    wanted.clamp(HELLO_EVERY, HELLO_MAX).min(previous * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_thin_out_past_a_hundred_peers_at_most_doubling_each_time() {
        let secs = Duration::from_secs;
        assert_eq!(hello_period(0, secs(30)), HELLO_EVERY);
        assert_eq!(hello_period(100, secs(30)), HELLO_EVERY);
        assert_eq!(hello_period(200, secs(30)), secs(60));
        // A thousand peers at once: 300 s, reached by doubling.
        let mut period = HELLO_EVERY;
        let mut steps = Vec::new();
        for _ in 0..6 {
            period = hello_period(1000, period);
            steps.push(period.as_secs());
        }
        assert_eq!(steps, [60, 120, 240, 300, 300, 300]);
        assert_eq!(hello_period(10_000, secs(600)), HELLO_MAX);
        assert_eq!(hello_period(usize::MAX, secs(600)), HELLO_MAX);
        // Peers leave: back to 30 s at once.
        assert_eq!(hello_period(10, HELLO_MAX), HELLO_EVERY);
    }
}
