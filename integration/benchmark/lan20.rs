//! Section `lan20`: 20 hosts all running a node: miss latency and UDP
//! datagrams per query.

use crate::harness::*;
use crate::report::*;
use crate::support::{generate_key, Net};

/// 20 hosts, all running a node: miss latency and UDP datagrams per query.
pub(crate) fn lan20(m: Mode) -> Vec<Row> {
    let hosts = 20;
    let net = Net::new(hosts).expect("test hosts");
    let local = net.host(1);
    let key = generate_key(local, "bench-1");
    let mut nodes: Vec<Node> = (2..=hosts).map(|i| node(net.host(i), &key, &[])).collect();
    nodes.insert(0, node(local, &key, &[]));
    wait_peers(local, hosts - 1);
    let n = m.pick(20, 1000);
    let counts =
        |nodes: &[Node]| -> Vec<(f64, f64)> { nodes.iter().map(|d| udp_counts(d.pid())).collect() };
    let before = counts(&nodes);
    let lat = miss_latencies(local, n);
    let after = counts(&nodes);
    let queries = (n + 5) as f64;
    let delta = |f: fn(&(f64, f64)) -> f64, which: std::ops::Range<usize>| -> f64 {
        which.map(|i| f(&after[i]) - f(&before[i])).sum::<f64>() / queries
    };
    let sent_all = delta(|c| c.1, 0..hosts);
    let recv_all = delta(|c| c.0, 0..hosts);
    let sent_local = delta(|c| c.1, 0..1);
    let recv_local = delta(|c| c.0, 0..1);
    let label = format!("{hosts} hosts");
    vec![
        Row::new(
            "lan20_miss_p50_ms",
            &format!("narinfo miss, {label} (19 peers of ours): p50"),
            "ms",
            lat.clone(),
        )
        .target(Target::AtMost(5.0)),
        Row::new(
            "lan20_miss_p99_ms",
            &format!("narinfo miss, {label}: p99"),
            "ms",
            lat,
        )
        .stat(Stat::P99),
        Row::new(
            "lan20_udp_sent_per_query",
            &format!("UDP datagrams sent per query, all {label}"),
            "",
            vec![sent_all],
        )
        .note("a v2 and a v1 query, one answer per peer, the wake-up datagram; hellos in the window too"),
        Row::new(
            "lan20_udp_received_per_query",
            &format!("UDP datagrams received per query, all {label}"),
            "",
            vec![recv_all],
        ),
        Row::new(
            "lan20_udp_local_per_query",
            "UDP datagrams per query at the asking node (sent + received)",
            "",
            vec![sent_local + recv_local],
        ),
    ]
}
