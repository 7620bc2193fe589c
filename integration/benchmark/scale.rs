//! Section `scale` (issue 18): 20, 50 and 100 hosts all running a node
//! (`--no-v1`: a LAN of this version only), each store 1,000 fake paths
//! and three of them 20,000: narinfo misses and hits at one node, UDP
//! datagrams per query at that node and over the whole LAN, the memory of
//! the peers' summaries it keeps, and what 1 % of a store changing costs
//! in summary traffic. `integration/benchmark/sim.rs` prints the same rows
//! for 1,000 and 10,000 nodes, simulated.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::report::*;
use crate::support::{fake_paths, generate_key, wait_until, Host, Net, Xorshift};

pub(crate) fn scale(m: Mode) -> Vec<Row> {
    // PEERIX_BENCH_SCALE=20,50 runs those sizes instead.
    let sizes = std::env::var("PEERIX_BENCH_SCALE")
        .ok()
        .and_then(|s| {
            s.split(',')
                .map(|n| n.parse().ok())
                .collect::<Option<Vec<usize>>>()
        })
        .unwrap_or_else(|| m.pick(vec![10], vec![20, 50, 100]));
    // A size that cannot be measured leaves the others' rows, and a row
    // that says so.
    let mut rows = Vec::new();
    for n in sizes {
        match catch_unwind(AssertUnwindSafe(|| scale_at(m, n))) {
            Ok(r) => rows.extend(r),
            Err(_) => rows.push(
                Row::new(
                    &format!("scale{n}_failed"),
                    &format!("scale at {n} hosts could not be measured (see the panic above)"),
                    "",
                    vec![1.0],
                )
                .target(Target::AtMost(0.0)),
            ),
        }
    }
    rows
}

/// The peers' summaries the node on `host` holds: how many, and their bytes.
fn summaries(host: &Host) -> (usize, f64) {
    let status = host.curl(&[&format!("http://{LOCAL}/status")]).text();
    let bytes: Vec<f64> = (status.lines())
        .filter_map(|l| l.split(", summary v").nth(1))
        .filter_map(|s| s.strip_suffix(" bytes"))
        .filter_map(|s| s.split(' ').nth(1)?.parse().ok())
        .collect();
    (bytes.len(), bytes.iter().sum())
}

fn scale_at(m: Mode, hosts: usize) -> Vec<Row> {
    let net = Net::new(hosts).expect("test hosts");
    let _tmpfs: Vec<TmpfsStore> = net.hosts.iter().map(TmpfsStore::mount).collect();
    let big = m.pick(5_000, 20_000);
    let stores: Vec<Vec<String>> = (net.hosts.iter().enumerate())
        .map(|(i, h)| fake_store(h, if (1..=3).contains(&i) { big } else { 1_000 }))
        .collect();
    let key = generate_key(net.host(1), "bench-1");
    let nodes: Vec<Node> = (net.hosts.iter())
        .map(|h| node(h, &key, &["--no-v1"]))
        .collect();
    let local = net.host(1);
    // Nodes index their stores while the others start: on a small machine
    // a hundred take a while.
    let all = wait_until(Duration::from_secs(30 + 2 * hosts as u64), || {
        summaries(local).0 == hosts - 1
    });
    if !all {
        eprintln!(
            "bench: scale: {hosts} hosts: the asking node holds {} of {} summaries:\n{}",
            summaries(local).0,
            hosts - 1,
            local.curl(&[&format!("http://{LOCAL}/status")]).text()
        );
    }
    wait_peers(local, hosts - 1);
    let counts = || -> Vec<(f64, f64)> { nodes.iter().map(|d| udp_counts_all(d.pid())).collect() };
    let n = m.pick(20, 500);
    let queries = (n + 5) as f64;
    // Per query: at the asking node (sent, and sent + received) and over
    // the LAN (every datagram once: those sent by every node; unicast,
    // each is received once).
    let per_query = |before: &[(f64, f64)], after: &[(f64, f64)]| {
        let d = |i: usize| (after[i].0 - before[i].0, after[i].1 - before[i].1);
        let local = d(0);
        let lan: f64 = (0..hosts).map(|i| d(i).1).sum();
        (
            local.1 / queries,
            (local.0 + local.1) / queries,
            lan / queries,
        )
    };

    let before = counts();
    let miss = miss_latencies(local, n);
    let (miss_sent, miss_local, miss_lan) = per_query(&before, &counts());

    let mut rng = Xorshift::new();
    let hits: Vec<String> = (0..n + 5)
        .map(|i| {
            let store = &stores[1 + i % (hosts - 1)];
            store[rng.next() as usize % store.len()].clone()
        })
        .collect();
    let before = counts();
    let samples = http_load(local, &narinfo_urls(&hits), 1);
    let (_, hit_local, hit_lan) = per_query(&before, &counts());
    // A hit not found is counted (and the first one described), not fatal:
    // on a loaded machine a datagram can be late past the timeout.
    let lost: Vec<(&Sample, &String)> = (samples.iter().zip(&hits))
        .filter(|(s, _)| s.status != 200)
        .collect();
    if let Some((s, path)) = lost.first() {
        let owner = stores.iter().position(|st| st.contains(path)).unwrap_or(0);
        let url = format!(
            "http://{}:12304/peer/{}.narinfo",
            net.hosts[owner].addr4,
            hash_of(path)
        );
        eprintln!(
            "bench: scale: a hit answered {s:?}: {path} on h{}, whose route says {}",
            owner + 1,
            local.curl(&[&url]).status,
        );
    }
    let hit: Vec<f64> = samples[5..].iter().map(|s| s.total_ms).collect();

    let (held, bytes) = summaries(local);
    let peer_paths: usize = stores[1..].iter().map(Vec::len).sum();
    let per_path = bytes / peer_paths as f64;

    // 1 % of a 20,000-path store changes (added at once, as a rebuild
    // does): what the changed node sends and the asking node receives,
    // until every peer holds the new version, counted as an hour's worth.
    let changed = net.host(2);
    let (changed_pid, local_pid) = (nodes[1].pid(), nodes[0].pid());
    let (_, out0) = ip_octets(changed_pid);
    let (in0, _) = ip_octets(local_pid);
    let version = |host: &Host| -> String {
        let status = host.curl(&[&format!("http://{LOCAL}/status")]).text();
        status
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before_status = version(local);
    let started = Instant::now();
    fake_paths(changed, "changed", big / 100);
    let seen = wait_until(Duration::from_secs(10), || {
        let now = version(local);
        now != before_status && !now.contains("told)") && !now.contains("not fetched")
    });
    let spread = started.elapsed().as_secs_f64();
    // Every other peer fetched too; let their fetches end.
    std::thread::sleep(Duration::from_secs(1));
    let (_, out1) = ip_octets(changed_pid);
    let (in1, _) = ip_octets(local_pid);
    assert!(seen, "the change never reached the asking node");

    let label = format!("{hosts} hosts");
    let k = |s: &str| format!("scale{hosts}_{s}");
    vec![
        Row::new(
            &k("miss_p50_ms"),
            &format!("narinfo miss, {label} with summaries: p50"),
            "ms",
            miss.clone(),
        )
        .target(Target::AtMost(0.3)),
        Row::new(&k("miss_p99_ms"), &format!("narinfo miss, {label}: p99"), "ms", miss)
            .stat(Stat::P99),
        Row::new(
            &k("miss_udp_sent"),
            &format!("UDP datagrams sent per miss at the asking node, {label}"),
            "",
            vec![miss_sent],
        )
        .target(Target::AtMost(0.0))
        .note("hellos and notices in the window count too"),
        Row::new(
            &k("miss_udp_lan"),
            &format!("UDP datagrams per miss over the whole LAN, {label} (sent by all nodes)"),
            "",
            vec![miss_lan],
        )
        .note(&format!("at the asking node {miss_local:.2}")),
        Row::new(
            &k("hit_p50_ms"),
            &format!("narinfo hit, {label} (one peer has it; narinfo over HTTP): p50"),
            "ms",
            hit.clone(),
        )
        .target(Target::AtMost(2.0)),
        Row::new(&k("hit_p99_ms"), &format!("narinfo hit, {label}: p99"), "ms", hit)
            .stat(Stat::P99),
        Row::new(
            &k("hits_lost"),
            &format!("narinfo hits not found, {label} (of {})", samples.len()),
            "",
            vec![lost.len() as f64],
        )
        .target(Target::AtMost(0.0)),
        Row::new(
            &k("hit_udp_local"),
            &format!("UDP datagrams per hit at the asking node, {label} (sent + received)"),
            "",
            vec![hit_local],
        )
        .target(Target::AtMost(2.0))
        .note("today about N; a false positive of a summary adds 2"),
        Row::new(
            &k("hit_udp_lan"),
            &format!("UDP datagrams per hit over the whole LAN, {label} (sent by all nodes)"),
            "",
            vec![hit_lan],
        )
        .target(Target::AtMost(3.0))
        .note("today about 2N"),
        Row::new(
            &k("summary_bytes_per_path"),
            &format!("peers' summary memory per path, {label} ({held} summaries, {peer_paths} paths)"),
            "B",
            vec![per_path],
        )
        .target(Target::AtMost(1.5)),
        Row::new(
            &k("summary_traffic_sent_per_hour"),
            &format!(
                "summary traffic per hour, 1 % of a {big}-path store changing, sent by that node to {} peers (IP bytes; reached the asking node in {spread:.2} s)",
                hosts - 1
            ),
            "KiB",
            vec![(out1 - out0) / 1024.0],
        )
        .note("one notice broadcast and one delta fetch per peer; hellos in the window too"),
        Row::new(
            &k("summary_traffic_received_per_hour"),
            &format!("summary traffic per hour received by one peer, {label} (IP bytes)"),
            "KiB",
            vec![(in1 - in0) / 1024.0],
        ),
    ]
}
