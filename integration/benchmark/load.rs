//! Section `load`: many clients at once, and the memory of the nodes meanwhile.

use std::thread;
use std::time::Duration;
use std::time::Instant;

use crate::harness::*;
use crate::report::*;
use crate::support::{build_chain, generate_key, wait_until, Net};

/// 16 NAR downloads and 200 narinfo requests at once (hits and misses):
/// errors and the slowest answers; the memory (PSS) of both nodes with
/// and without their Nix children, idle and during the run; then how long
/// the children take to end once the nodes are idle.
pub(crate) fn load(m: Mode) -> Vec<Row> {
    let net = Net::new(2).expect("test hosts");
    let (peer, local) = (net.host(1), net.host(2));
    let key = generate_key(peer, "bench-1");
    let chain = build_chain(peer, "load", m.pick(5, 100));
    let file_size = m.pick(1, 64) as f64 * MIB;
    let mid = random_path(peer, "mid.bin", file_size as u64);
    let nar_size: f64 = peer
        .run(&format!("nix-store -q --size {mid}"))
        .parse()
        .expect("a NAR size");
    let mid_nar = nar_urls(peer, std::slice::from_ref(&mid)).remove(0);
    let peer_node = node(peer, &key, &[]);
    let local_node = node(local, &key, &[]);
    let pids = [local_node.pid(), peer_node.pid()];
    wait_peers(local, 1);
    thread::sleep(Duration::from_secs(1));
    let started = pids.map(tree_mem);

    let mut rows = Vec::new();
    let (mut errors, mut narinfo_max, mut ttfb_max, mut nar_total) =
        (vec![], vec![], vec![], vec![]);
    let (nars, infos) = (m.pick(16, 16), m.pick(200, 200));
    let mut during = [TreeMem::default(); 2];
    for _ in 0..m.pick(1, 3) {
        // The narinfo of the NAR first, as Nix asks: the local node then
        // knows where the NAR is.
        let info = http_load(local, &[format!("/{}.narinfo", hash_of(&mid))], 1);
        assert_eq!(info[0].status, 200, "{:?}", info[0]);
        let mut paths: Vec<String> = (0..nars).map(|_| mid_nar.clone()).collect();
        let absent = absent_narinfo(infos / 2);
        for i in 0..infos {
            paths.push(if i % 2 == 0 {
                format!("/{}.narinfo", hash_of(&chain[(i / 2) % chain.len()]))
            } else {
                absent[i / 2].clone()
            });
        }
        let (samples, peaks) = sampling_memory(&pids, || http_load(local, &paths, paths.len()));
        for (d, p) in during.iter_mut().zip(peaks) {
            d.node = d.node.max(p.node);
            d.tree = d.tree.max(p.tree);
            d.children = d.children.max(p.children);
        }
        let mut bad = 0;
        for (i, s) in samples.iter().enumerate() {
            let ok = if i < nars {
                s.status == 200 && s.bytes as f64 == nar_size
            } else if (i - nars) % 2 == 0 {
                s.status == 200
            } else {
                s.status == 404
            };
            if !ok {
                bad += 1;
                eprintln!("bench: load: {} → {s:?}", paths[i]);
            }
        }
        errors.push(bad as f64);
        let max = |it: &mut dyn Iterator<Item = f64>| it.fold(0.0, f64::max);
        narinfo_max.push(max(&mut samples[nars..].iter().map(|s| s.total_ms)));
        ttfb_max.push(max(&mut samples[..nars].iter().map(|s| s.ttfb_ms)));
        nar_total.push(max(&mut samples[..nars].iter().map(|s| s.total_ms)));
    }
    let peak = mem_mib(local_node.pid(), "VmHWM");

    // Idle again: the Nix children end 30 s after their last use.
    let children_after: usize = pids.iter().map(|&p| descendants(p).len()).sum();
    let idle_since = Instant::now();
    let limit = Duration::from_secs(m.pick(60, 90));
    wait_until(limit, || pids.iter().all(|&p| descendants(p).is_empty()));
    let gone_after = idle_since.elapsed().as_secs_f64();
    let left: usize = pids.iter().map(|&p| descendants(p).len()).sum();
    thread::sleep(Duration::from_millis(500));
    let idle = pids.map(tree_mem);

    let limit = DEFAULT_TIMEOUT_MS + 1000.0;
    let what = format!(
        "{nars} NARs of {:.0} MiB + {infos} narinfo",
        file_size / MIB
    );
    rows.push(
        Row::new("load_errors", "concurrent run: failed requests", "", errors)
            .stat(Stat::Max)
            .target(Target::AtMost(0.0))
            .note(&what),
    );
    rows.push(
        Row::new(
            "load_narinfo_max_ms",
            "concurrent run: slowest narinfo request",
            "ms",
            narinfo_max,
        )
        .stat(Stat::Max)
        .target(Target::AtMost(limit)),
    );
    rows.push(
        Row::new(
            "load_nar_ttfb_max_ms",
            "concurrent run: slowest NAR's time to first byte",
            "ms",
            ttfb_max,
        )
        .stat(Stat::Max)
        .target(Target::AtMost(limit)),
    );
    rows.push(
        Row::new(
            "load_nar_total_max_ms",
            "concurrent run: slowest whole NAR download",
            "ms",
            nar_total,
        )
        .stat(Stat::Max)
        .note("bounded by bandwidth, not by the daemon's timeouts"),
    );
    let children = |n: usize| format!("{n} Nix children");
    for (i, who) in [(0, "local node"), (1, "peer node")] {
        let key = ["local", "peer"][i];
        rows.push(
            Row::new(
                &format!("pss_idle_{key}_mib"),
                &format!("{who} PSS, idle (its Nix children ended)"),
                "MiB",
                vec![idle[i].node],
            )
            .target(Target::AtMost(8.0)),
        );
        rows.push(
            Row::new(
                &format!("pss_start_{key}_tree_mib"),
                &format!(
                    "{who} + its Nix children PSS, just started (peers known, no request yet)"
                ),
                "MiB",
                vec![started[i].tree],
            )
            .note(&format!(
                "node alone {} MiB; {}",
                num(started[i].node),
                children(started[i].children)
            )),
        );
        rows.push(Row::new(
            &format!("pss_load_{key}_mib"),
            &format!("{who} PSS, highest during the concurrent runs"),
            "MiB",
            vec![during[i].node],
        ));
        rows.push(
            Row::new(
                &format!("pss_load_{key}_tree_mib"),
                &format!("{who} + its Nix children PSS, highest during the concurrent runs"),
                "MiB",
                vec![during[i].tree],
            )
            .note(&format!("up to {}", children(during[i].children))),
        );
    }
    rows.push(
        Row::new(
            "idle_children_left",
            "Nix children of both nodes left once idle",
            "",
            vec![left as f64],
        )
        .target(Target::AtMost(0.0))
        .note(&format!(
            "{} right after the concurrent runs",
            children(children_after)
        )),
    );
    rows.push(
        Row::new(
            "idle_children_gone_s",
            "time from the end of the concurrent runs until both nodes had no Nix child",
            "s",
            vec![gone_after],
        )
        .note("serve children end 30 s after their last use"),
    );
    rows.push(
        Row::new(
            "rss_peak_mib",
            "local node peak resident memory (VmHWM) over the concurrent runs",
            "MiB",
            vec![peak],
        )
        .target(Target::AtMost(32.0)),
    );
    rows
}

/// Runs `f` while sampling the memory of the nodes `pids` (with their Nix
/// children) every 100 ms; its result and the highest of each.
fn sampling_memory<T>(pids: &[u32; 2], f: impl FnOnce() -> T) -> (T, [TreeMem; 2]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peaks = [TreeMem::default(); 2];
            loop {
                for (peak, &pid) in peaks.iter_mut().zip(pids) {
                    let now = tree_mem(pid);
                    peak.node = peak.node.max(now.node);
                    peak.tree = peak.tree.max(now.tree);
                    peak.children = peak.children.max(now.children);
                }
                if done.load(Ordering::SeqCst) {
                    return peaks;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        let result = f();
        done.store(true, Ordering::SeqCst);
        (result, sampler.join().expect("the memory sampler"))
    })
}
