//! Section `index`: building the store index of a large store at start.

use std::thread;
use std::time::Duration;
use std::time::Instant;

use crate::harness::*;
use crate::report::*;
use crate::support::{generate_key, Daemon, Host, Key, Net};

/// The store index with many entries: start-up time and memory of a node
/// whose store holds them (against a node with an empty store), and the
/// cost of a query answered from the index, seen through UDP.
pub(crate) fn index(m: Mode) -> Vec<Row> {
    let net = Net::new(3).expect("test hosts");
    let (full, client_host, empty) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(full, "bench-1");
    let count = m.pick(2000, 100_000);
    let _tmpfs = TmpfsStore::mount(full);
    let t = Instant::now();
    fake_store(full, count);
    eprintln!(
        "bench: {count} fake valid paths registered in {:.1?}",
        t.elapsed()
    );

    let (mut start_full, mut start_empty, mut rss_full, mut rss_empty, mut hwm_full) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..m.pick(1, 3) {
        let (t, rss, _, d) = start_timed(empty, &key);
        drop(d);
        start_empty.push(t);
        rss_empty.push(rss);
        let (t, rss, hwm, d) = start_timed(full, &key);
        drop(d);
        start_full.push(t);
        rss_full.push(rss);
        hwm_full.push(hwm);
    }
    let base_start = percentile(&start_empty, 50.0);
    let base_rss = percentile(&rss_empty, 50.0);
    let label = format!("{count} store entries");
    let mut rows = vec![
        Row::new(
            "index_start_s",
            &format!("node start-up (to serving), {label}"),
            "s",
            start_full.clone(),
        )
        .baseline("start-up with an empty store", start_empty),
        Row::new(
            "index_build_s",
            &format!("index build ({label}): start-up minus empty-store start-up"),
            "s",
            start_full.iter().map(|t| t - base_start).collect(),
        )
        .target(Target::AtMost(1.0)),
        Row::new(
            "index_rss_mib",
            &format!("index memory ({label}): RSS minus empty-store RSS"),
            "MiB",
            rss_full.iter().map(|r| r - base_rss).collect(),
        ),
        Row::new(
            "index_start_peak_mib",
            &format!("node peak memory (VmHWM) after start-up, {label}"),
            "MiB",
            hwm_full,
        )
        .baseline("RSS after start-up with an empty store", rss_empty),
    ];

    // Lookups: queries for absent hashes (answered "not here" from the
    // index) against both nodes, one at a time and as a flood.
    // No answer-rate limit: one client asks back to back.
    let _full_node = node(full, &key, &["--answer-rate", "0"]);
    let _empty_node = node(empty, &key, &["--answer-rate", "0"]);
    let rtt = |h: &Host| -> Vec<f64> {
        let out = run_client(
            client_host,
            &[
                "udp",
                &format!("{}:12304", h.addr4),
                &m.pick(100, 3000).to_string(),
                "1",
            ],
        );
        out.lines().filter_map(|l| l.parse::<f64>().ok()).collect()
    };
    let flood = |h: &Host| -> f64 {
        let out = run_client(
            client_host,
            &[
                "udp",
                &format!("{}:12304", h.addr4),
                &m.pick(2000, 200_000).to_string(),
                "32",
            ],
        );
        let f: Vec<f64> = out
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let (answered, secs) = (f[1], f[2]);
        assert!(answered > 0.0, "no answers to the flood: {out}");
        secs * 1e6 / answered
    };
    let (mut fl_full, mut fl_empty) = (vec![], vec![]);
    for _ in 0..m.pick(1, 3) {
        fl_empty.push(flood(empty));
        fl_full.push(flood(full));
    }
    let base_flood = percentile(&fl_empty, 50.0);
    rows.push(
        Row::new(
            "index_query_rtt_us",
            &format!("UDP query round trip (not here), {label}"),
            "µs",
            rtt(full),
        )
        .baseline("same against an empty store", rtt(empty)),
    );
    rows.push(
        Row::new(
            "index_query_cost_us",
            &format!("UDP queries answered back to back: µs per query, {label}"),
            "µs",
            fl_full.clone(),
        )
        .baseline("same against an empty store", fl_empty)
        .note("upper bound of a lookup: includes receiving and sending the datagrams"),
    );
    rows.push(
        Row::new(
            "index_lookup_us",
            &format!("lookup cost ({label}): per-query cost minus empty-store per-query cost"),
            "µs",
            fl_full.iter().map(|c| c - base_flood).collect(),
        )
        .target(Target::AtMost(2.0))
        .note("a difference of noisy numbers; the lookup itself is not observable from outside"),
    );
    rows
}

/// Starts a node on `host` and times it until it logs that it serves;
/// seconds, RSS and VmHWM (MiB) then, and the node.
fn start_timed(host: &Host, key: &Key) -> (f64, f64, f64, Daemon) {
    // No answer-rate limit: the UDP client measures the node, back to back.
    let mut cmd = host.cmd(
        env!("CARGO_BIN_EXE_peerix"),
        &[
            "--private-key",
            key.secret.to_str().unwrap(),
            "--answer-rate",
            "0",
        ],
    );
    cmd.env("RUST_LOG", "info");
    let start = Instant::now();
    let mut d = host.spawn_daemon(cmd, "peerix-start");
    loop {
        if d.log().contains("serving on") {
            break;
        }
        if let Some(status) = d.try_wait() {
            panic!("peerix exited ({status}):\n{}", d.log());
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "peerix never served"
        );
        thread::sleep(Duration::from_millis(2));
    }
    let took = start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(300));
    let (rss, hwm) = (mem_mib(d.pid(), "VmRSS"), mem_mib(d.pid(), "VmHWM"));
    (took, rss, hwm, d)
}
