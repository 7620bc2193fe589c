//! Section `sim` (issue 18): the scale section's rows at 1,000 and 10,000
//! nodes, past what one machine can host, simulated in this process with
//! the daemon's own summary and wire code: every peer's store (1,000
//! random paths; three of 20,000) is summarised by `summary::Published`,
//! sent through its encoding, and kept by the asking node as
//! `summary::PeerSummary`; each query picks its recipients as the UDP
//! thread's routes do (the peers whose summary may hold the path), and
//! every datagram it costs is encoded and parsed with `discovery::wire`.
//! The network itself is simulated: datagrams are counted, not sent, and
//! latencies are those of the routing decision (what grows with N), not
//! of a round trip. Traffic per hour is computed from the encoded sizes
//! and the HTTP overhead seen in the scale section.

use std::time::{Duration, Instant};

use peerix::discovery::wire::{Datagram, Message};
use peerix::nix::narinfo::HashPart;
use peerix::store::summary::{PeerSummary, Published, Update};

use crate::harness::*;
use crate::report::*;
use crate::support::Xorshift;

/// IPv4 and UDP headers of a datagram.
const UDP_OVERHEAD: f64 = 28.0;
/// Bytes a summary fetch costs beyond its body (request and response
/// heads, TCP segments on a kept-alive connection): about what the scale
/// section measures.
const FETCH_OVERHEAD: f64 = 400.0;
/// Hellos and notices each node sends every hello period.
const BACKGROUND_PER_HELLO: f64 = 2.0;

pub(crate) fn sim(m: Mode) -> Vec<Row> {
    let sizes = m.pick(vec![1_000], vec![1_000, 10_000]);
    sizes.into_iter().flat_map(|n| sim_at(m, n)).collect()
}

/// A random hash part.
fn hash(rng: &mut Xorshift) -> HashPart {
    HashPart::parse(&rng.hash()).expect("nix32")
}

/// One datagram through the real wire code: its bytes on the network.
fn datagram(message: Message) -> f64 {
    let bytes = Datagram::V2 {
        node: 1,
        id: 1,
        message,
    }
    .encode();
    assert!(Datagram::parse(&bytes).is_some());
    bytes.len() as f64 + UDP_OVERHEAD
}

/// A query's cost: the routing decision's time (µs), datagrams at the
/// asking node (sent + received) and over the network (each once).
fn query(summaries: &[PeerSummary], hash: &HashPart, owner: Option<usize>) -> (f64, f64, f64) {
    let start = Instant::now();
    let recipients: Vec<usize> = (summaries.iter().enumerate())
        .filter(|(_, s)| s.may_hold(hash))
        .map(|(i, _)| i)
        .collect();
    let us = start.elapsed().as_secs_f64() * 1e6;
    if let Some(owner) = owner {
        assert!(recipients.contains(&owner), "no false negatives");
    }
    // Each recipient gets one query and answers once (have, or not here).
    for i in &recipients {
        let _ = datagram(Message::Query { hash: *hash });
        let _ = match Some(*i) == owner {
            true => datagram(Message::Have {
                hash: *hash,
                port: 12304,
            }),
            false => datagram(Message::NotHere { hash: *hash }),
        };
    }
    let n = recipients.len() as f64;
    (us, 2.0 * n, 2.0 * n)
}

fn sim_at(m: Mode, nodes: usize) -> Vec<Row> {
    let mut rng = Xorshift::seeded(0x9e37_79b9_7f4a_7c15 ^ nodes as u64);
    let started = Instant::now();
    let peers = nodes - 1;
    let mut summaries = Vec::with_capacity(peers);
    let mut samples = Vec::with_capacity(peers);
    let mut paths = 0usize;
    for i in 0..peers {
        let size = if i < 3 { 20_000 } else { 1_000 };
        let store: Vec<HashPart> = (0..size).map(|_| hash(&mut rng)).collect();
        let published = Published::build(store.iter(), 0);
        let update = Update::parse(&published.since(0).encode()).expect("a summary");
        summaries.push(PeerSummary::update(None, update).expect("a whole summary"));
        samples.push([store[0], store[size / 2]]);
        paths += size;
    }
    let build = started.elapsed().as_secs_f64();
    let bytes: usize = summaries.iter().map(PeerSummary::bytes).sum();

    let n = m.pick(200, 2_000);
    let (mut miss_us, mut miss_local, mut miss_lan) = (Vec::new(), 0.0, 0.0);
    for _ in 0..n {
        let (us, local, lan) = query(&summaries, &hash(&mut rng), None);
        miss_us.push(us);
        miss_local += local;
        miss_lan += lan;
    }
    let (mut hit_us, mut hit_local, mut hit_lan) = (Vec::new(), 0.0, 0.0);
    for _ in 0..n {
        let owner = rng.next() as usize % peers;
        let hash = samples[owner][rng.next() as usize % 2];
        let (us, local, lan) = query(&summaries, &hash, Some(owner));
        hit_us.push(us);
        hit_local += local;
        hit_lan += lan;
    }
    let q = n as f64;

    // 1 % of a 1,000-path store changing in an hour (as one rebuild): one
    // notice to every peer, one delta fetched by each.
    let store: Vec<HashPart> = (0..1_000).map(|_| hash(&mut rng)).collect();
    let mut published = Published::build(store.iter(), 0);
    let from = published.version();
    let added: Vec<HashPart> = (0..10).map(|_| hash(&mut rng)).collect();
    published.apply(&added, &[]);
    let delta = published.since(from).encode().len() as f64;
    let notice = datagram(Message::Notice {
        port: 12304,
        version: published.version(),
    });
    let per_peer = delta + FETCH_OVERHEAD;
    let sent_per_hour = notice + peers as f64 * per_peer;
    let received_per_hour = peers as f64 * (notice + per_peer);
    // The period a node settles at with this many peers (it grows by
    // doubling to it).
    let mut period = Duration::from_secs(30);
    for _ in 0..16 {
        period = peerix::discovery::hello_period(peers, period);
    }
    let background = peers as f64 * BACKGROUND_PER_HELLO / period.as_secs_f64();

    let label = format!("{nodes} nodes, simulated");
    let k = |s: &str| format!("sim{nodes}_{s}");
    vec![
        Row::new(
            &k("miss_routing_us"),
            &format!("narinfo miss, {label}: choosing recipients from {peers} summaries, p50"),
            "µs",
            miss_us.clone(),
        )
        .note(&format!("built the {peers} summaries in {build:.1} s")),
        Row::new(&k("miss_routing_p99_us"), &format!("narinfo miss, {label}: p99"), "µs", miss_us)
            .stat(Stat::P99),
        Row::new(
            &k("miss_udp_local"),
            &format!("UDP datagrams per miss at the asking node, {label} (sent + received)"),
            "",
            vec![miss_local / q],
        )
        .note("false positives of the summaries only"),
        Row::new(
            &k("summary_false_positives"),
            &format!("summaries claiming a path none holds, {label}"),
            "%",
            vec![100.0 * miss_local / q / 2.0 / peers as f64],
        )
        .note("each costs a query and its answer"),
        Row::new(
            &k("miss_udp_lan"),
            &format!("UDP datagrams per miss over the network, {label}"),
            "",
            vec![miss_lan / q],
        ),
        Row::new(
            &k("hit_routing_us"),
            &format!("narinfo hit, {label}: choosing recipients, p50 (a round trip to one peer and the narinfo fetch come on top)"),
            "µs",
            hit_us,
        ),
        Row::new(
            &k("hit_udp_local"),
            &format!("UDP datagrams per hit at the asking node, {label} (sent + received)"),
            "",
            vec![hit_local / q],
        )
        .target(Target::AtMost(2.0)),
        Row::new(
            &k("hit_udp_lan"),
            &format!("UDP datagrams per hit over the network, {label}"),
            "",
            vec![hit_lan / q],
        )
        .target(Target::AtMost(3.0)),
        Row::new(
            &k("summary_bytes_per_path"),
            &format!("peers' summary memory per path, {label} ({paths} paths, {:.1} MiB in all)", bytes as f64 / MIB),
            "B",
            vec![bytes as f64 / paths as f64],
        )
        .target(Target::AtMost(1.5)),
        Row::new(
            &k("summary_traffic_sent_per_hour"),
            &format!("summary traffic per hour, 1 % of a 1,000-path store changing, sent by that node to {peers} peers (computed)"),
            "KiB",
            vec![sent_per_hour / 1024.0],
        )
        .note(&format!("a delta of {delta} bytes and {FETCH_OVERHEAD} bytes of HTTP per peer")),
        Row::new(
            &k("summary_traffic_received_per_hour"),
            &format!("summary traffic per hour received by one node when every node changes so, {label} (computed)"),
            "KiB",
            vec![received_per_hour / 1024.0],
        ),
        Row::new(
            &k("background_udp_per_s"),
            &format!("hello and notice datagrams received per node per second, {label}"),
            "",
            vec![background],
        )
        .note(&format!(
            "each node says hello every {:.0} s with {peers} peers (30 s up to 100, then 0.3 s a peer, at most 600 s)",
            period.as_secs_f64()
        )),
    ]
}
