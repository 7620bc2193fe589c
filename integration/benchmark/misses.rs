//! Section `misses`: narinfo misses with 2 and 8 peers of ours, and with
//! one silent peer.

use crate::harness::*;
use crate::report::*;
use crate::support::{generate_key, Net};

/// Narinfo misses with 2 and 8 peers of ours, and with one silent peer.
pub(crate) fn misses(m: Mode) -> Vec<Row> {
    let net = Net::new(9).expect("test hosts");
    let local = net.host(1);
    let key = generate_key(local, "bench-1");
    let n = m.pick(20, 1000);
    let mut rows = Vec::new();

    let mut peers: Vec<Node> = (2..=3).map(|i| node(net.host(i), &key, &[])).collect();
    let mut this = node(local, &key, &[]);
    wait_peers(local, 2);
    for count in [2, 8] {
        if count == 8 {
            peers.extend((4..=9).map(|i| node(net.host(i), &key, &[])));
            wait_peers(local, 8);
        }
        let lat = miss_latencies(local, n);
        rows.push(
            Row::new(
                &format!("miss_{count}_peers_p50_ms"),
                &format!("narinfo miss, {count} peers of ours: p50"),
                "ms",
                lat.clone(),
            )
            .target(Target::AtMost(2.0)),
        );
        rows.push(
            Row::new(
                &format!("miss_{count}_peers_p99_ms"),
                &format!("narinfo miss, {count} peers of ours: p99"),
                "ms",
                lat,
            )
            .stat(Stat::P99)
            .target(Target::AtMost(10.0)),
        );
    }

    // h9 goes quiet (its node stops) and becomes an --extra-host of a new
    // local node: a silent peer, as an original Peerix is on a miss.
    peers.truncate(2);
    this.kill();
    let timeout = 200.0;
    let silent = net.host(9).addr4.to_string();
    let _this = node(
        local,
        &key,
        &["--extra-host", &silent, "--timeout", &format!("{timeout}")],
    );
    wait_peers(local, 2);
    let lat = miss_latencies(local, m.pick(3, 25));
    rows.push(
        Row::new(
            "miss_silent_peer_ms",
            "narinfo miss with one silent peer (--timeout 200)",
            "ms",
            lat,
        )
        .baseline("the configured timeout", vec![timeout])
        .target(Target::BaselinePlus(5.0)),
    );
    rows
}
