//! Sections `compress` and `fastest` (issue 20): NARs over the links
//! people have, limited by `tc` on the serving peer's side, beside today's
//! behaviour in the same run.
//!
//! `compress`: one peer → local node → load client, real programs and
//! libraries (files of the machine's /usr) and random bytes of the same
//! size, once the local node knows the peer's pace (from a first NAR),
//! behind 100 Mbit/s, 1 Gbit/s and an unlimited veth, the peer's node
//! (with its Nix children) on one CPU and the local node and the client on
//! another (as on two machines, where the sender's zstd takes no CPU from
//! the receiver); the peer runs
//! `--compress auto` and, for the baseline, `--compress never` (raw, as
//! before). Throughput, and the CPU per GiB of the sender and of the
//! receiver (each node with its Nix children).
//!
//! `fastest`: two peers with the same NARs, one behind 20 Mbit/s and one
//! unlimited; once the local node has seen both, the time of a NAR beside
//! the fast peer alone.
//!
//! `stripe`: three peers each behind 100 Mbit/s, compression off on every
//! node (to see the effect alone): a large NAR from all three at once
//! beside one peer alone.

use std::thread;
use std::time::Duration;

use crate::harness::*;
use crate::report::*;
use crate::support::{
    build_programs, copy_to, generate_key, wait_offered, wait_until, Host, Key, Net,
};

/// Limits what `host` sends to `mbit` megabits a second (a token bucket on
/// its side of the veth), or lifts the limit.
fn set_rate(host: &Host, mbit: Option<u32>) {
    match mbit {
        Some(mbit) => {
            // A bucket of 10 ms worth of bytes (at least 256 KiB): smaller
            // ones keep a gigabit bucket under its rate.
            let burst_kb = (mbit as u64 * 1000 / 8 / 100).max(256);
            host.run(&format!(
                "tc qdisc replace dev eth0 root tbf rate {mbit}mbit burst {burst_kb}kb latency 100ms"
            ));
        }
        None => {
            host.run("tc qdisc del dev eth0 root 2>/dev/null || true");
        }
    }
}

/// One NAR through the local node: its time, and the CPU seconds the
/// senders and the receiver (each node with its Nix children) spent on it.
#[derive(Clone, Copy)]
struct Fetched {
    secs: f64,
    senders_cpu: f64,
    receiver_cpu: f64,
}

/// Fetches one NAR through the local node, after its narinfo as Nix asks
/// (not timed; asked again for up to 10 s, the first query of a path a
/// peer has not answered before may be missed). The client runs on CPU 1,
/// where `compress` puts the local node: Nix reads on the receiving
/// machine.
fn fetch(local: &Host, url: &str, senders: &[u32], receiver: u32, size: f64) -> Fetched {
    let hash = url
        .trim_end_matches(".nar")
        .rsplit('-')
        .next()
        .unwrap_or("");
    let narinfo = [format!("/{hash}.narinfo")];
    let found = wait_until(Duration::from_secs(10), || {
        http_load(local, &narinfo, 1)[0].status == 200
    });
    assert!(found, "no peer answers for {hash}");
    let settle = || thread::sleep(Duration::from_millis(300));
    settle();
    let sent = || senders.iter().map(|&s| tree_cpu_secs(s)).sum::<f64>();
    let (s0, r0) = (sent(), tree_cpu_secs(receiver));
    let s = &http_load_on(local, &[url.to_string()], 1, Some(1))[0];
    assert_eq!((s.status, s.bytes as f64), (200, size), "{s:?}");
    settle();
    let (s1, r1) = (sent(), tree_cpu_secs(receiver));
    Fetched {
        secs: s.total_ms / 1000.0,
        senders_cpu: s1 - s0,
        receiver_cpu: r1 - r0,
    }
}

/// The rows `{key}_sender_cpu_s_gib` and `{key}_receiver_cpu_s_gib`: the
/// senders' and the receiver's CPU per GiB of NAR (`gib` a NAR) in `got`,
/// beside `baseline` (what, samples), for `what` was measured.
fn cpu_rows(
    key: &str,
    what: &str,
    gib: f64,
    got: &[Fetched],
    baseline: (&str, &[Fetched]),
    sender_target: Target,
) -> [Row; 2] {
    let per_gib = |samples: &[Fetched], f: fn(&Fetched) -> f64| -> Vec<f64> {
        samples.iter().map(|s| f(s) / gib).collect()
    };
    let (base, base_got) = baseline;
    [
        Row::new(
            &format!("{key}_sender_cpu_s_gib"),
            &format!("sender CPU per GiB (the sending nodes + Nix children), {what}"),
            "s/GiB",
            per_gib(got, |s| s.senders_cpu),
        )
        .baseline(base, per_gib(base_got, |s| s.senders_cpu))
        .target(sender_target),
        Row::new(
            &format!("{key}_receiver_cpu_s_gib"),
            &format!("receiver CPU per GiB (local node, NarHash check included), {what}"),
            "s/GiB",
            per_gib(got, |s| s.receiver_cpu),
        )
        .baseline(base, per_gib(base_got, |s| s.receiver_cpu)),
    ]
}

/// The NAR size of `path` on `host`.
fn nar_size(host: &Host, path: &str) -> f64 {
    (host.run(&format!("nix-store -q --size {path}")).parse()).expect("a NAR size")
}

/// A peer node serving with `--compress mode`, once it offers `paths`.
fn peer_node(host: &Host, key: &Key, mode: &str, paths: &[&String]) -> Node {
    let n = node(host, key, &["--compress", mode]);
    for p in paths {
        wait_offered(host, p);
    }
    n
}

pub(crate) fn compress(m: Mode) -> Vec<Row> {
    let net = Net::new(2).expect("test hosts");
    let (peer, local) = (net.host(1), net.host(2));
    let key = generate_key(peer, "bench-1");
    let size = m.pick(32u64, 256) << 20;
    let programs = build_programs(peer, "bench", size);
    let programs_size = nar_size(peer, &programs);
    // Random bytes of about the same size.
    let random = random_path(peer, "links.bin", programs_size as u64);
    let data = [("programs", &programs), ("random", &random)];
    let sizes = [programs_size, nar_size(peer, &random)];
    let urls: Vec<String> = nar_urls(peer, &[programs.clone(), random.clone()]);
    // A NAR to fetch first from each sender started (node ids are new at
    // each start): the local node then knows the peer's pace, as it knows
    // a LAN's long-lived peers, and asks a fast one for plain NARs.
    let warm = random_path(peer, "warm.bin", 16 << 20);
    let warm_url = nar_urls(peer, std::slice::from_ref(&warm)).remove(0);
    let warm_size = nar_size(peer, &warm);
    // The sender on one CPU, the receiver on the other: as on two
    // machines, the sender's zstd does not take the receiver's CPU.
    let local_node = node(local, &key, &[]);
    pin(local_node.pid(), 1);
    let mut rows = Vec::new();
    // More samples where one takes less time and says less: a veth's
    // vary by a third from one to the next on two shared cores.
    for (rate, rate_name, reps) in [
        (Some(100), "100mbit", m.pick(1, 3)),
        (Some(1000), "1gbit", m.pick(1, 5)),
        (None, "veth", m.pick(1, 9)),
    ] {
        set_rate(peer, rate);
        // [data][mode: never, auto] -> samples
        let mut got: [[Vec<Fetched>; 2]; 2] = Default::default();
        for rep in 0..reps {
            // Alternate which mode goes first, against drift.
            let modes = match rep % 2 {
                0 => [(0, "never"), (1, "auto")],
                _ => [(1, "auto"), (0, "never")],
            };
            for (which, mode) in modes {
                let sender = peer_node(peer, &key, mode, &[&programs, &random, &warm]);
                pin(sender.pid(), 0);
                fetch(
                    local,
                    &warm_url,
                    &[sender.pid()],
                    local_node.pid(),
                    warm_size,
                );
                for (d, url) in urls.iter().enumerate() {
                    let s = fetch(local, url, &[sender.pid()], local_node.pid(), sizes[d]);
                    got[d][which].push(s);
                }
            }
        }
        for (d, (name, _)) in data.iter().enumerate() {
            let [never, auto] = [&got[d][0], &got[d][1]];
            let tput = |samples: &[Fetched]| -> Vec<f64> {
                samples.iter().map(|s| sizes[d] / MIB / s.secs).collect()
            };
            let speed_target = match (*name, rate) {
                ("programs", Some(100)) => 2.2,
                ("programs", Some(1000)) => 1.5,
                _ => 0.95,
            };
            let what = match rate {
                Some(r) => format!("one peer behind {r} Mbit/s"),
                None => "one peer, unlimited veth".into(),
            };
            let note = format!("{:.0} MiB NAR of {name}", sizes[d] / MIB);
            let key = format!("compress_{name}_{rate_name}");
            rows.push(
                Row::new(
                    &format!("{key}_mib_s"),
                    &format!("NAR throughput, {name}, {what}, --compress auto"),
                    "MiB/s",
                    tput(auto),
                )
                .baseline("--compress never (raw, as before), same run", tput(never))
                .target(Target::AtLeastTimesBaseline(speed_target))
                .note(&note),
            );
            let sender_target = match *name {
                "random" => Target::TimesBaseline(1.2),
                _ => Target::None,
            };
            rows.extend(cpu_rows(
                &key,
                &format!("{name}, {what}"),
                sizes[d] / GIB,
                auto,
                ("--compress never", never),
                sender_target,
            ));
        }
    }
    rows
}

pub(crate) fn fastest(m: Mode) -> Vec<Row> {
    let net = Net::new(3).expect("test hosts");
    let (slow, fast, local) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(slow, "bench-1");
    let size = m.pick(12u64, 64) << 20;
    let paths: Vec<String> = (0..3)
        .map(|i| random_path(slow, &format!("pace{i}.bin"), size))
        .collect();
    for p in &paths {
        copy_to(slow, fast, p);
    }
    let nar = nar_size(slow, &paths[0]);
    let urls = nar_urls(slow, &paths);
    set_rate(slow, Some(20));
    let local_node = node(local, &key, &[]);
    // A sample is a tenth of a second: many of them.
    let reps = m.pick(1, 9);
    // The fast peer alone: the baseline (and its pace learnt).
    let fast_node = peer_node(fast, &key, "auto", &paths.iter().collect::<Vec<_>>());
    let alone: Vec<Fetched> = (0..reps)
        .map(|_| fetch(local, &urls[2], &[fast_node.pid()], local_node.pid(), nar))
        .collect();
    // The slow peer joins; the next NARs teach the node its pace (a peer
    // not measured yet is tried before one as fast as the median).
    let slow_node = peer_node(slow, &key, "auto", &paths.iter().collect::<Vec<_>>());
    wait_peers(local, 2);
    let learning: Vec<f64> = urls[..2]
        .iter()
        .map(|u| fetch(local, u, &[slow_node.pid()], local_node.pid(), nar).secs)
        .collect();
    let senders = [fast_node.pid(), slow_node.pid()];
    let both: Vec<Fetched> = (0..reps)
        .map(|_| fetch(local, &urls[2], &senders, local_node.pid(), nar))
        .collect();
    let note = format!(
        "{:.0} MiB NAR; the two NARs that taught the node the slow peer's pace took {}",
        nar / MIB,
        (learning.iter())
            .map(|t| format!("{t:.1} s"))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let secs = |samples: &[Fetched]| samples.iter().map(|s| s.secs).collect();
    let mut rows = vec![Row::new(
        "fastest_of_two_s",
        "a NAR with two peers holding it, one behind 20 Mbit/s, one unlimited, paces learnt",
        "s",
        secs(&both),
    )
    .baseline("the unlimited peer alone", secs(&alone))
    .target(Target::TimesBaseline(1.2))
    .note(&note)];
    rows.extend(cpu_rows(
        "fastest_of_two",
        "two peers, one behind 20 Mbit/s",
        nar / GIB,
        &both,
        ("the unlimited peer alone", &alone),
        Target::None,
    ));
    rows
}

pub(crate) fn stripe(m: Mode) -> Vec<Row> {
    let net = Net::new(4).expect("test hosts");
    let local = net.host(4);
    let peers = [net.host(1), net.host(2), net.host(3)];
    let key = generate_key(peers[0], "bench-1");
    let size = m.pick(48u64, 192) << 20;
    let path = random_path(peers[0], "stripe.bin", size);
    for p in &peers[1..] {
        copy_to(peers[0], p, &path);
    }
    for p in &peers {
        set_rate(p, Some(100));
    }
    let nar = nar_size(peers[0], &path);
    let url = nar_urls(peers[0], std::slice::from_ref(&path)).remove(0);
    let local_node = node(local, &key, &["--compress", "never"]);
    let reps = m.pick(1, 3);
    let first = peer_node(peers[0], &key, "never", &[&path]);
    let one: Vec<Fetched> = (0..reps)
        .map(|_| fetch(local, &url, &[first.pid()], local_node.pid(), nar))
        .collect();
    let others: Vec<Node> = (peers[1..].iter())
        .map(|p| peer_node(p, &key, "never", &[&path]))
        .collect();
    wait_peers(local, 3);
    let senders = [first.pid(), others[0].pid(), others[1].pid()];
    let three: Vec<Fetched> = (0..reps)
        .map(|_| fetch(local, &url, &senders, local_node.pid(), nar))
        .collect();
    let tput = |samples: &[Fetched]| samples.iter().map(|s| nar / MIB / s.secs).collect();
    let mut rows = vec![Row::new(
        "stripe_three_peers_mib_s",
        "NAR throughput from three peers each behind 100 Mbit/s, client unlimited, --compress never",
        "MiB/s",
        tput(&three),
    )
    .baseline("one of them alone", tput(&one))
    .target(Target::AtLeastTimesBaseline(2.5))
    .note(&format!("{:.0} MiB NAR of random bytes", nar / MIB))];
    rows.extend(cpu_rows(
        "stripe_three_peers",
        "three peers at once",
        nar / GIB,
        &three,
        ("one of them alone", &one),
        Target::None,
    ));
    rows
}
