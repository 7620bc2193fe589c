//! One stranger cannot stall the local Nix, close the port or grow the
//! daemon: real Nix, hosts in network namespaces, nodes under a low limit
//! on open files.
//!
//! Covers: four connections pipelining 1,500 requests each behind a NAR
//! request and never reading, while Nix substitutes a closure through the
//! node; a node at 64 open files under 200 connections that ask for NARs
//! and never read (out of descriptors, it waits and serves again); a
//! stopped nix-daemon, which costs a request a 404 in bounded time and
//! leaves no `nix-store` behind.

mod support;

use std::time::{Duration, Instant};

use support::{
    build_chain, generate_key, hash_of, node, realise_args, Daemon, Host, Key, Net, LOCAL,
};

/// The stand-ins for hostile clients.
fn hostile() -> String {
    format!("{}/integration/hostile.py", env!("CARGO_MANIFEST_DIR"))
}

/// A node on `host` whose soft and hard limits on open files are `files`.
fn node_with_files(host: &Host, key: &Key, files: u32, extra: &[&str]) -> Daemon {
    let script = format!("ulimit -n {files} && exec \"$@\"");
    let wrapper = ["sh", "-c", script.as_str(), "sh"];
    let mut args = vec!["--private-key", key.secret.to_str().unwrap()];
    args.extend(extra);
    host.spawn_peerix_with(&wrapper, &[], &args)
}

/// How long a `curl` of the local node's `/nix-cache-info` on `host`
/// takes, and its status (0 when it got none within 5 s).
fn local_request(host: &Host) -> (u16, Duration) {
    let start = Instant::now();
    let got = host.curl(&["--max-time", "5", &format!("{LOCAL}/nix-cache-info")]);
    (got.status, start.elapsed())
}

#[test]
fn a_stranger_pipelining_without_reading_cannot_stall_the_local_nix() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let (k1, k2) = (generate_key(h1, "h1-1"), generate_key(h2, "h2-1"));
    // h1's node is flooded from h3 while its Nix substitutes from h2.
    let big = support::build_random(h1, &net.prefix, 32 << 20);
    let closure = build_chain(h2, "flooded", 20);
    let n1 = node_with_files(h1, &k1, 1024, &["--trusted-key", &k2.public]);
    let _n2 = node(h2, &k2, &[], &[]);
    let nar = format!("/peer/nar/{}.nar", hash_of(&big));
    let target = h1.addr4.to_string();
    let mut flood = h3.spawn_daemon(
        h3.cmd(
            "python3",
            &[
                &hostile(),
                "pipeline",
                &target,
                "12304",
                "4",
                "1500",
                &nar,
                "15",
            ],
        ),
        "flood",
    );
    assert!(
        support::wait_until(Duration::from_secs(10), || flood.log().contains("opened 4")),
        "{}",
        flood.log()
    );
    let args = realise_args(&[&closure[0]], &[&k2]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut nix = h1.spawn_daemon(h1.cmd("nix-store", &args), "nix-store");
    let (mut slowest, mut most_fds) = (Duration::ZERO, 0);
    for _ in 0..20 {
        let (status, took) = local_request(h1);
        assert_eq!(
            status,
            200,
            "a local request during the flood: {}",
            n1.log()
        );
        slowest = slowest.max(took);
        most_fds = most_fds.max(support::fd_count(n1.pid()));
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("during the flood: slowest local request {slowest:?}, at most {most_fds} open files");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert!(most_fds < 200, "{most_fds} open files");
    let done = support::wait_until(Duration::from_secs(120), || nix.try_wait().is_some());
    assert!(
        done && nix.try_wait().is_some_and(|s| s.success()),
        "{}",
        nix.log()
    );
    assert!(support::wait_until(Duration::from_secs(30), || flood
        .try_wait()
        .is_some()));
    // Afterwards the peer port answers.
    let after = h3.curl(&[&format!("http://{target}:12304/peer/nix-cache-info")]);
    assert_eq!(after.status, 200, "{}", n1.log());
    assert!(!n1.log().contains("panicked"), "{}", n1.log());
}

#[test]
fn out_of_file_descriptors_the_node_waits_and_serves_again() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "h1-1");
    let big = support::build_random(h1, &net.prefix, 16 << 20);
    let mut n1 = node_with_files(h1, &key, 64, &[]);
    let target = h1.addr4.to_string();
    let nar = format!("/peer/nar/{}.nar", hash_of(&big));
    // 200 connections that each ask for a NAR and never read: connections
    // and the NARs' pipes to Nix take every descriptor there is.
    let mut stranger = h2.spawn_daemon(
        h2.cmd(
            "python3",
            &[
                &hostile(),
                "pipeline",
                &target,
                "12304",
                "200",
                "0",
                &nar,
                "8",
            ],
        ),
        "stranger",
    );
    assert!(
        support::wait_until(Duration::from_secs(20), || stranger
            .log()
            .contains("opened")),
        "{}",
        stranger.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "the stranger: {}; the node: {} open files",
        stranger.log().trim(),
        support::fd_count(n1.pid())
    );
    assert!(n1.try_wait().is_none(), "the node died: {}", n1.log());
    assert!(support::wait_until(Duration::from_secs(30), || stranger
        .try_wait()
        .is_some()));
    let left = Instant::now();
    let back = support::wait_until(Duration::from_secs(5), || local_request(h1).0 == 200);
    let took = left.elapsed();
    eprintln!("local requests answered again {took:?} after the stranger left");
    assert!(
        back && took < Duration::from_secs(1),
        "{took:?}: {}",
        n1.log()
    );
    assert_eq!(
        h3.curl(&[&format!("http://{target}:12304/peer/nix-cache-info")])
            .status,
        200,
        "the port is closed"
    );
    let log = n1.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("refused") || log.contains("cannot accept"),
        "{log}"
    );
}

/// Multi-user Nix: the node reaches the store through a nix-daemon, which
/// is stopped (SIGSTOP). Requests get 404 within their deadlines; after
/// SIGCONT the node serves as before, and the `nix-store` children that
/// hung were killed and reaped.
#[test]
fn a_stopped_nix_daemon_costs_a_404_in_bounded_time() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    // Unrelated paths: the info of one is not fetched ahead with the other's.
    let paths = [
        build_chain(h1, "hung-known", 1).remove(0),
        build_chain(h1, "hung-nar", 1).remove(0),
        build_chain(h1, "hung-unknown", 1).remove(0),
    ];
    let key = generate_key(h1, "h1-1");
    let (_nix_daemon, n1) = h1.spawn_peerix_through_nix_daemon(&key);
    let peer = |path: &str| format!("http://{}:12304/peer/{}.narinfo", h1.addr4, hash_of(path));
    // The first paths' infos are known before the daemon stops.
    assert_eq!(h2.curl(&[&peer(&paths[0])]).status, 200);
    assert_eq!(h2.curl(&[&peer(&paths[1])]).status, 200);

    let daemons = || -> Vec<String> {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &h1.netns])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "nix-daemon")
            })
            .map(str::to_owned)
            .collect()
    };
    let signal = |sig: &str| {
        let pids = daemons();
        assert!(!pids.is_empty(), "no nix-daemon");
        std::process::Command::new("kill")
            .arg(sig)
            .args(&pids)
            .status()
            .expect("kill");
    };
    signal("-STOP");
    let stopped = Instant::now();
    let timed = |url: &str| {
        let start = Instant::now();
        let got = h2.curl(&["--max-time", "30", url]);
        (got.status, start.elapsed())
    };
    // A path whose info must be asked of Nix: 404 within the deadline.
    let (status, took) = timed(&peer(&paths[2]));
    eprintln!("a narinfo with the nix-daemon stopped: {status} after {took:?}");
    assert_eq!(status, 404, "{}", n1.log());
    assert!(took < Duration::from_secs(8), "{took:?}");
    // The local Nix asking its node: answered, and promptly.
    let start = Instant::now();
    let local = h1.curl(&[
        "--max-time",
        "10",
        &format!("{LOCAL}/{}.narinfo", "1".repeat(32)),
    ]);
    assert_eq!(local.status, 404);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // The `nix-store --serve` waiting on the stopped daemon is killed and
    // reaped at its deadline (10 s), before the daemon comes back.
    let hung: Vec<u32> = n1.children().into_iter().map(|(p, _)| p).collect();
    assert!(!hung.is_empty(), "no nix-store waits on the daemon");
    std::thread::sleep(Duration::from_secs(12).saturating_sub(stopped.elapsed()));
    let gone = support::wait_until(Duration::from_secs(5), || {
        let now: Vec<u32> = n1.children().into_iter().map(|(p, _)| p).collect();
        hung.iter().all(|p| !now.contains(p))
    });
    assert!(
        gone,
        "hung: {hung:?}, now: {:?}\n{}",
        n1.children(),
        n1.log()
    );
    signal("-CONT");
    // Serving as before, with no zombie among the children.
    assert!(
        support::wait_until(Duration::from_secs(20), || h2
            .curl(&[&peer(&paths[2])])
            .status
            == 200),
        "{}",
        n1.log()
    );
    let nar = h2.curl(&[&format!(
        "http://{}:12304/peer/nar/{}.nar",
        h1.addr4,
        hash_of(&paths[1])
    )]);
    assert_eq!(nar.status, 200);
    for (pid, _) in n1.children() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.contains(") Z "), "zombie {pid}: {stat}");
    }
}
