//! Section `nar`: moving one NAR, beside harmonia and a plain file server.

use std::fs;
use std::thread;
use std::time::Duration;

use crate::harness::*;
use crate::report::*;
use crate::support::{build_chain, generate_key, Net};

/// Hit latency (the serving peer's path info cached or not), time to first
/// byte of a tiny NAR, the serving peer's CPU per tiny NAR, NAR throughput
/// and CPU per GiB: peer h1 → local node h2 → load client in h2.
pub(crate) fn nar(m: Mode) -> Vec<Row> {
    let net = Net::new(2).expect("test hosts");
    let (peer, local) = (net.host(1), net.host(2));
    let key = generate_key(peer, "bench-1");
    let chain = build_chain(peer, "hit", m.pick(5, 60));
    // Paths without references, none in another's closure: the peer's
    // fetching ahead of a closure never caches the next one's info.
    let warmup = 2;
    let fresh = small_paths(peer, "fresh", m.pick(12, 200) + warmup, 100);
    let tinies = small_paths(peer, "tinycpu", m.pick(50, 300), 100);
    let tiny = random_path(peer, "tiny.bin", 100);
    let big_size = m.pick(8, 256) as f64 * MIB;
    let big = random_path(peer, "big.bin", big_size as u64);
    let peer_node = node(peer, &key, &[]);
    let local_node = node(local, &key, &[]);
    wait_peers(local, 1);
    let mut rows = Vec::new();

    // Hits whose path info the peer has not cached: a fresh path each
    // time; the local node asks the peer, the peer asks its `nix-store
    // --serve` (started when the node indexed its store). The first two
    // open the connections.
    let samples = http_load(local, &narinfo_urls(&fresh), 1);
    for s in &samples {
        assert_eq!(s.status, 200, "a hit answered {s:?}");
    }
    let uncached: Vec<f64> = samples[warmup..].iter().map(|s| s.total_ms).collect();
    let dump_db: Vec<f64> = (0..m.pick(2, 15))
        .map(|i| {
            let p = &fresh[i % fresh.len()];
            timed_in(peer, &format!("nix-store --dump-db {p}")).real * 1000.0
        })
        .collect();
    rows.push(
        Row::new(
            "hit_uncached_p50_ms",
            "narinfo hit via the local node, peer's path info not cached (a fresh path each time): p50",
            "ms",
            uncached.clone(),
        )
        .baseline("one `nix-store --dump-db PATH`", dump_db.clone())
        .target(Target::AtMost(3.0)),
    );
    rows.push(
        Row::new(
            "hit_uncached_p99_ms",
            "narinfo hit, peer's path info not cached: p99",
            "ms",
            uncached,
        )
        .stat(Stat::P99),
    );

    // Hits whose path info the peer has cached: every path of a chain
    // asked several times (the first request of the top path makes the
    // peer fetch the infos of its whole closure ahead).
    let repeat = m.pick(2, 6);
    let paths: Vec<String> = chain
        .iter()
        .flat_map(|p| vec![format!("/{}.narinfo", hash_of(p)); repeat])
        .collect();
    let samples = http_load(local, &paths, 1);
    let mut warm = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s.status, 200, "a hit answered {s:?}");
        if i % repeat != 0 {
            warm.push(s.total_ms);
        }
    }
    rows.push(
        Row::new(
            "hit_cached_ms",
            "narinfo hit via the local node, peer's path info cached",
            "ms",
            warm,
        )
        .baseline("one `nix-store --dump-db PATH`", dump_db)
        .target(Target::AtMost(3.0)),
    );

    // Time to first byte of a tiny NAR (after its narinfo, as Nix does,
    // at the URL the narinfo names).
    let n = m.pick(3, 30);
    let tiny_nar = nar_urls(peer, std::slice::from_ref(&tiny)).remove(0);
    let mut paths = vec![format!("/{}.narinfo", hash_of(&tiny))];
    paths.extend(std::iter::repeat_n(tiny_nar, n + 1));
    let samples = http_load(local, &paths, 1);
    for s in &samples {
        assert_eq!(s.status, 200, "the tiny NAR: {s:?}");
    }
    let ttfb: Vec<f64> = samples[2..].iter().map(|s| s.ttfb_ms).collect();
    let dumps: Vec<f64> = (0..n)
        .map(|_| timed_in(peer, &format!("nix-store --dump {tiny}")).real * 1000.0)
        .collect();
    rows.push(
        Row::new(
            "tiny_nar_ttfb_ms",
            "time to first byte of a tiny NAR via the local node",
            "ms",
            ttfb,
        )
        .baseline("one `nix-store --dump` of it", dumps)
        .target(Target::BaselinePlus(5.0)),
    );

    // CPU of the serving peer (the daemon and its Nix children) per tiny
    // NAR: the narinfo of each path first, as Nix asks, then the NARs,
    // each once, measured apart; against one `nix-store --dump` per NAR.
    let count = tinies.len() as f64;
    let urls = nar_urls(peer, &tinies);
    let settle = || thread::sleep(Duration::from_millis(300));
    settle();
    let before_infos = tree_cpu_secs(peer_node.pid());
    for s in http_load(local, &narinfo_urls(&tinies), 1) {
        assert_eq!(s.status, 200, "a tiny path's narinfo: {s:?}");
    }
    settle();
    let before_nars = tree_cpu_secs(peer_node.pid());
    for s in http_load(local, &urls, 1) {
        assert_eq!(s.status, 200, "a tiny NAR: {s:?}");
    }
    settle();
    let after = tree_cpu_secs(peer_node.pid());
    let per_nar = (after - before_nars) * 1000.0 / count;
    let per_path = (after - before_infos) * 1000.0 / count;
    let list = peer.dir.join("tinies.txt");
    let base_count = tinies.len().min(100);
    fs::write(&list, tinies[..base_count].join("\n")).expect("write the paths file");
    let base = timed_in(
        peer,
        &format!(
            "while read -r p; do nix-store --dump \"$p\"; done < {}",
            list.display()
        ),
    );
    let base_per_nar = base.cpu * 1000.0 / base_count as f64;
    let what = format!("{} tiny NARs", tinies.len());
    rows.push(
        Row::new(
            "peer_cpu_per_tiny_nar_ms",
            "CPU of the serving peer (daemon + its Nix children) per tiny NAR",
            "ms",
            vec![per_nar],
        )
        .baseline(
            "one `nix-store --dump` per NAR, its CPU",
            vec![base_per_nar],
        )
        .target(Target::AtMost(2.0))
        .note(&what),
    );
    rows.push(
        Row::new(
            "peer_cpu_per_tiny_path_ms",
            "CPU of the serving peer per tiny path, narinfo (path info not cached) and NAR",
            "ms",
            vec![per_path],
        )
        .baseline(
            "one `nix-store --dump` per NAR, its CPU",
            vec![base_per_nar],
        )
        .note(&what),
    );

    // Throughput and CPU of the big path, alternating with the baseline.
    let big_nar = nar_urls(peer, std::slice::from_ref(&big)).remove(0);
    let nar_size: f64 = peer
        .run(&format!("nix-store -q --size {big}"))
        .parse()
        .expect("a NAR size");
    timed_in(peer, &format!("nix-store --dump {big} | cat > /dev/null"));
    http_load(local, std::slice::from_ref(&big_nar), 1);
    let (mut tput, mut base_tput, mut cpu, mut base_cpu) = (vec![], vec![], vec![], vec![]);
    for _ in 0..m.pick(1, 5) {
        let t = timed_in(peer, &format!("nix-store --dump {big} | cat > /dev/null"));
        base_tput.push(nar_size / MIB / t.real);
        base_cpu.push(t.cpu / (nar_size / GIB));
        let pids = [peer_node.pid(), local_node.pid()];
        let before: f64 = pids.iter().map(|&p| tree_cpu_secs(p)).sum();
        let s = &http_load(local, std::slice::from_ref(&big_nar), 1)[0];
        assert_eq!((s.status, s.bytes as f64), (200, nar_size), "{s:?}");
        // The serve child goes back to the pool once the stream is done.
        thread::sleep(Duration::from_millis(300));
        let after: f64 = pids.iter().map(|&p| tree_cpu_secs(p)).sum();
        tput.push(nar_size / MIB / (s.total_ms / 1000.0));
        cpu.push((after - before) / (nar_size / GIB));
    }
    let size_note = format!("{:.0} MiB path", big_size / MIB);
    rows.push(
        Row::new(
            "nar_throughput_mib_s",
            "NAR throughput, peer → local node → client",
            "MiB/s",
            tput,
        )
        .baseline("`nix-store --dump PATH | cat > /dev/null`", base_tput)
        .target(Target::AtLeastTimesBaseline(0.95))
        .note(&size_note),
    );
    rows.push(
        Row::new(
            "cpu_s_per_gib",
            "CPU per GiB served (peer + local node, with their Nix children)",
            "s/GiB",
            cpu,
        )
        .baseline("CPU of the baseline pipe", base_cpu)
        .target(Target::TimesBaseline(1.2)),
    );

    // What the local node's NarHash check adds (inside the row above):
    // SHA-256 with ring over the same number of bytes, in this process,
    // beside `sha256sum` of the NAR.
    let buf = vec![0x5au8; 1 << 20];
    let mut check = Vec::new();
    let mut base_sum = Vec::new();
    for _ in 0..m.pick(1, 5) {
        let start = thread_cpu_secs();
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        for _ in 0..(nar_size / MIB) as usize {
            hash.update(&buf);
        }
        std::hint::black_box(hash.finish());
        check.push((thread_cpu_secs() - start) / (nar_size / GIB));
        let dump = timed_in(peer, &format!("nix-store --dump {big} > /dev/null")).cpu;
        let summed = timed_in(peer, &format!("nix-store --dump {big} | sha256sum")).cpu;
        base_sum.push((summed - dump).max(0.0) / (nar_size / GIB));
    }
    rows.push(
        Row::new(
            "nar_check_cpu_s_per_gib",
            "CPU the local node's NarHash check adds per GiB (SHA-256, ring)",
            "s/GiB",
            check,
        )
        .baseline("`sha256sum` of the NAR, its CPU", base_sum)
        .note("included in cpu_s_per_gib above"),
    );
    rows
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}
