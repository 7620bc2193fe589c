//! Section `v1`: beside original Peerix nodes (the stand-in
//! `integration/support/v1_peer.py`).

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use crate::harness::*;
use crate::report::*;
use crate::support::{generate_key, wait_until, Daemon, Host, Key, Net};

/// The original Peerix stand-in, `support/v1_peer.py`, serving `cache`
/// on `host`, answering each request `delay_ms` late.
fn v1_peer(host: &Host, cache: &std::path::Path, delay_ms: u32) -> Daemon {
    let script = crate::support::stand_in("v1_peer.py");
    let delay = delay_ms.to_string();
    let cmd = host.cmd(
        "/usr/bin/python3",
        &[
            &script,
            "serve",
            cache.to_str().unwrap(),
            "12304",
            "--delay",
            &delay,
        ],
    );
    let peer = host.spawn_daemon(cmd, "v1-peer");
    let ready = wait_until(Duration::from_secs(10), || {
        peer.log().contains("v1 peer serving")
    });
    assert!(ready, "the v1 peer did not start:\n{}", peer.log());
    peer
}

/// `n` small paths of `host`'s own, signed by `key`, in a `nix copy --to
/// file://` cache for a v1 peer: the cache and the paths.
fn v1_cache(host: &Host, key: &Key, tag: &str, n: usize) -> (PathBuf, Vec<String>) {
    let paths = small_paths(host, tag, n, 200);
    let list = host.dir.join(format!("{tag}.txt"));
    fs::write(&list, paths.join("\n")).expect("write the paths file");
    host.run(&format!(
        "xargs nix store sign --key-file {} < {}",
        key.secret.display(),
        list.display()
    ));
    let cache = host.dir.join(format!("v1-cache-{tag}"));
    host.run(&format!(
        "xargs nix copy --to 'file://{}?compression=none' < {}",
        cache.display(),
        list.display()
    ));
    (cache, paths)
}

/// Issue 12: misses beside an original Peerix node (which is silent on a
/// miss), once the local node has learnt from its hits how fast it
/// answers; and no hit lost from one that answers in 200 ms. Nodes of
/// ours on h2 and h3, the v1 test peer on h4 (answering after 5 ms), then
/// on h5 (after 200 ms) with a new local node; `--timeout` is the default.
pub(crate) fn v1(m: Mode) -> Vec<Row> {
    let net = Net::new(5).expect("test hosts");
    let local = net.host(1);
    let key = generate_key(local, "bench-1");
    let timeout = DEFAULT_TIMEOUT_MS;
    // The daemon trusts a v1 peer's pace after this many of its hits.
    let learning = 5;
    let (fast_host, slow_host) = (net.host(4), net.host(5));
    let (fast_cache, fast_paths) = v1_cache(fast_host, &key, "fast", learning + m.pick(3, 27));
    let (slow_cache, slow_paths) = v1_cache(slow_host, &key, "slow", learning + m.pick(5, 40));
    let _ours: Vec<Node> = (2..=3).map(|i| node(net.host(i), &key, &[])).collect();

    // A v1 peer answering after 5 ms. Nothing tells of it before it
    // answers a query: its first hit comes after the nodes of ours said
    // "not here", and is learnt from (the query is kept for the whole
    // timeout) but lost to the request. Until it has answered `learning`
    // hits a miss waits the whole timeout.
    let fast = v1_peer(fast_host, &fast_cache, 5);
    let mut this = node(local, &key, &[]);
    wait_peers(local, 2);
    let hits = narinfo_urls(&fast_paths);
    let first_fast = http_load(local, &hits[..1], 1)[0].status == 200;
    thread::sleep(Duration::from_millis(timeout as u64));
    let unlearnt: Vec<f64> = http_load(local, &absent_narinfo(m.pick(2, 5)), 1)
        .iter()
        .map(|s| {
            assert_eq!(s.status, 404, "a miss: {s:?}");
            s.total_ms
        })
        .collect();
    let fast_hits: Vec<f64> = http_load(local, &hits[1..], 1)
        .iter()
        .map(|s| {
            assert_eq!(s.status, 200, "a hit of the v1 peer: {s:?}");
            s.total_ms
        })
        .collect();
    let learnt: Vec<f64> = http_load(local, &absent_narinfo(m.pick(20, 300)), 1)
        .iter()
        .map(|s| {
            assert_eq!(s.status, 404, "a miss: {s:?}");
            s.total_ms
        })
        .collect();
    // What the node learnt: its `/status` line for the v1 peer.
    let status = local.curl(&[&format!("http://{LOCAL}/status")]).text();
    let learnt_note = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("v1 "))
        .and_then(|l| l.split_once(", ").map(|(_, r)| r.to_string()))
        .unwrap_or_default();
    drop(fast);
    this.kill();

    // A v1 peer answering after 200 ms, to a new local node: every hit
    // must be found, while the node learns its pace and after.
    let _slow = v1_peer(slow_host, &slow_cache, 200);
    let _this = node(local, &key, &[]);
    wait_peers(local, 2);
    // Its first hit alone (nothing has told of the peer before it), then
    // the rest once its late answer was learnt.
    let urls = narinfo_urls(&slow_paths);
    let mut samples = http_load(local, &urls[..1], 1);
    thread::sleep(Duration::from_millis(timeout as u64));
    samples.extend(http_load(local, &urls[1..], 1));
    let found = |s: &[Sample]| s.iter().filter(|s| s.status == 200).count();
    let (first, rest) = samples.split_at(1);
    let (while_learning, after) = rest.split_at(learning - 1);
    let slow_hits: Vec<f64> = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.total_ms)
        .collect();
    let slow_misses: Vec<f64> = http_load(local, &absent_narinfo(m.pick(2, 10)), 1)
        .iter()
        .map(|s| s.total_ms)
        .collect();

    let old = "misses before its pace is learnt: the whole --timeout, the old cost";
    vec![
        Row::new(
            "v1_miss_p50_ms",
            "narinfo miss beside a v1 peer answering hits after 5 ms, its pace learnt: p50",
            "ms",
            learnt.clone(),
        )
        .baseline(old, unlearnt.clone())
        .target(Target::AtMost(60.0))
        .note(&format!(
            "2 nodes of ours too; --timeout 500; the node learnt: {learnt_note}; it waits 4 × the slowest"
        )),
        Row::new(
            "v1_miss_p99_ms",
            "narinfo miss beside a v1 peer answering after 5 ms, its pace learnt: p99",
            "ms",
            learnt,
        )
        .stat(Stat::P99)
        .baseline(old, unlearnt),
        Row::new(
            "v1_hit_fast_ms",
            "narinfo hit from a v1 peer answering after 5 ms, via the local node",
            "ms",
            fast_hits,
        ),
        Row::new(
            "v1_slow_hits_found",
            "hits found from a v1 peer answering after 200 ms, once its pace is learnt (fraction)",
            "",
            vec![found(after) as f64 / after.len() as f64],
        )
        .target(Target::AtLeast(1.0))
        .note(&format!(
            "{} of {} after learning; {} of {} while learning",
            found(after),
            after.len(),
            found(while_learning),
            while_learning.len()
        )),
        Row::new(
            "v1_first_hit_found",
            "the very first hit of a v1 peer never heard before, found (1) or lost (0)",
            "",
            vec![found(first) as f64],
        )
        .target(Target::AtLeast(1.0))
        .note(&format!(
            "after 200 ms; the same for the 5 ms peer: {}",
            if first_fast { "found" } else { "lost" }
        )),
        Row::new(
            "v1_hit_slow_ms",
            "narinfo hit from a v1 peer answering after 200 ms, via the local node",
            "ms",
            slow_hits,
        ),
        Row::new(
            "v1_slow_miss_ms",
            "narinfo miss beside a v1 peer answering after 200 ms (4 × 200 ms is beyond the timeout)",
            "ms",
            slow_misses,
        )
        .baseline("the configured timeout", vec![timeout])
        .target(Target::BaselinePlus(5.0)),
    ]
}
