//! Discovery and the localhost substituter, end to end: real Nix on one test
//! host substitutes through its local node from peers on other hosts (all in
//! network namespaces this test makes), with signatures required.
//!
//! Covers: a closure split across two peers; fast misses when every peer is
//! ours; a peer killed between narinfo and NAR; garbage from a peer;
//! `--no-broadcast` with `--extra-host` by name and address, IPv4 and IPv6;
//! local routes refused to other hosts; a node never answering itself;
//! the v1 datagrams and routes against a peer that speaks only v1; many
//! concurrent narinfo requests not queueing behind one another.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::{
    build_chain, copy_to, generate_key, hash_of, local_node, nar_hash, nix_clients, node,
    three_nodes, Daemon, Host, Key, Net, LOCAL,
};

/// `nix-store -r paths` on `host` through its local node, trusting `keys`,
/// with Nix 2.8 from Debian; then, when the current Nix (2.34) is prepared,
/// the same again with it, after deleting what the first run brought (the
/// closures of `paths`). The output of the first failing run, or the last.
/// (`integration/clients.rs` runs every client version; here two suffice.)
fn substitute(host: &Host, paths: &[&str], keys: &[&Key]) -> Output {
    let args = support::realise_args(paths, keys);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let limit = Duration::from_secs(300);
    let out =
        support::output_within(host.cmd("nix-store", &args), limit).expect("nix-store -r finished");
    let Some(current) = nix_clients::current() else {
        eprintln!(
            "no current Nix client (integration/support/setup-nix-clients sid): Nix 2.8 only"
        );
        return out;
    };
    if !out.status.success() {
        return out;
    }
    let closure = host.run(&format!("nix-store -qR {}", paths.join(" ")));
    host.run(&format!(
        "nix-store --delete {}",
        closure.replace('\n', " ")
    ));
    let command = current.command(host, "nix-store", &args);
    let out = support::output_within(command, limit).expect("current nix-store -r finished");
    if !out.status.success() {
        eprintln!("{} failed where Nix 2.8 succeeded", current.label());
    }
    out
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The nix32 digest of a NAR hash as `nix-store -q --hash` prints it
/// (`sha256:<nix32>`), as NAR URLs carry it.
fn nar_digest(hash: &str) -> String {
    hash.strip_prefix("sha256:").unwrap_or(hash).to_string()
}

/// Seconds a `curl` of `url` on `host` took, with its status.
fn timed_get(host: &Host, url: &str) -> (u16, Duration) {
    let start = Instant::now();
    let response = host.curl(&[url]);
    (response.status, start.elapsed())
}

#[test]
fn a_closure_split_across_two_peers_is_substituted_on_a_third() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let keys = [generate_key(h1, "h1-1"), generate_key(h2, "h2-1")];
    let x = build_chain(h1, "x", 3);
    let y = build_chain(h2, "y", 2);
    let [_n1, _n2, n3] = three_nodes(&net, [&keys[0], &keys[1]], &[], &[]);

    let out = substitute(h3, &[&x[0], &y[0]], &[&keys[0], &keys[1]]);
    assert_ok("nix-store -r through the local node", &out);
    for (source, path) in x.iter().map(|p| (h1, p)).chain(y.iter().map(|p| (h2, p))) {
        assert_eq!(nar_hash(h3, path), nar_hash(source, path), "{path}");
    }
    let log = n3.log();
    assert!(
        log.contains(&format!("{}: NAR of", hash_of(&x[2]))),
        "{log}"
    );
    assert!(
        log.contains(&format!("{}: NAR of", hash_of(&y[1]))),
        "{log}"
    );

    // What the node counted, on /metrics and /status.
    let metrics = support::metrics(h3);
    let value = |name: &str| -> u64 {
        support::metric(&metrics, name).unwrap_or_else(|| panic!("no {name} in\n{metrics}")) as u64
    };
    // Five paths, asked by each Nix client that ran (a busy machine may
    // make a client ask one again, when its own narinfo cache is locked).
    let clients = 1 + u64::from(nix_clients::current().is_some());
    let hits = value("peerix_narinfo_hits_total");
    assert!((5 * clients..=5 * clients + 2).contains(&hits), "{metrics}");
    assert_eq!(value("peerix_peers"), 2);
    assert!(value("peerix_nar_bytes_total{source=\"peers\"}") > 0);
    assert!(value("peerix_http_requests_total{route=\"nar\",status=\"200\"}") >= 5);
    assert_eq!(
        value("peerix_discovery_seconds_count"),
        hits + value("peerix_narinfo_misses_total"),
        "{metrics}"
    );
    let status = h3.curl(&[&format!("{LOCAL}/status")]).text();
    assert!(status.contains("peers: 2"), "{status}");
    assert!(status.contains(&h1.addr4.to_string()), "{status}");
    assert!(status.contains(&h2.addr4.to_string()), "{status}");
    // Each peer was heard over IPv6 link-local multicast too.
    let peer_lines: Vec<&str> = status.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(peer_lines.len(), 2, "{status}");
    for line in peer_lines {
        assert!(line.contains("fd70:") || line.contains("fe80:"), "{status}");
    }
}

#[test]
fn a_miss_is_answered_well_before_the_timeout_when_all_peers_are_ours() {
    let Some(net) = Net::new(3) else { return };
    let key = generate_key(net.host(1), "k-1");
    let _nodes: Vec<Daemon> = net
        .hosts
        .iter()
        .map(|h| node(h, &key, &[], &["--timeout", "3000"]))
        .collect();
    let h3 = net.host(3);
    // Wait until h3 has heard both peers.
    assert!(support::wait_until(Duration::from_secs(5), || {
        h3.curl(&[&format!("{LOCAL}/status")])
            .text()
            .contains("peers: 2")
    }));
    let mut times = Vec::new();
    for i in 0..20 {
        let url = format!("{LOCAL}/{:032}.narinfo", i);
        let (status, took) = timed_get(h3, &url);
        assert_eq!(status, 404);
        times.push(took);
    }
    times.sort();
    eprintln!(
        "miss through curl, 2 peers: median {:?}, max {:?}",
        times[10], times[19]
    );
    // Timeout 3 s; every peer said "not here" long before.
    assert!(times[19] < Duration::from_millis(1000), "{times:?}");
}

#[test]
fn a_peer_killed_between_narinfo_and_nar_is_replaced_by_another() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "shared-1");
    let paths = build_chain(h1, "kill", 1);
    let path = &paths[0];
    copy_to(h1, h2, path);
    let [n1, n2, n3] = three_nodes(&net, [&key, &key], &[], &["--timeout", "1000"]);
    let hash = hash_of(path);

    let narinfo = h3.curl(&[&format!("{LOCAL}/{hash}.narinfo")]);
    assert_eq!(narinfo.status, 200, "{}", narinfo.text());
    let digest = nar_digest(&nar_hash(h1, path));
    assert!(
        narinfo
            .text()
            .contains(&format!("URL: nar/{digest}-{hash}.nar")),
        "{}",
        narinfo.text()
    );
    // Kill the peer that served the narinfo, hard, as a crash would.
    let served_by_h1 = n3
        .log()
        .contains(&format!("{hash}: found at http://{}:", h1.addr4));
    let (mut victim, mut survivor) = if served_by_h1 { (n1, n2) } else { (n2, n1) };
    std::process::Command::new("kill")
        .args(["-9", &victim.pid().to_string()])
        .status()
        .expect("kill -9");
    victim.kill();
    let nar = h3.curl(&[&format!("{LOCAL}/nar/{digest}-{hash}.nar")]);
    assert_eq!(nar.status, 200);
    let want = h1.run(&format!(
        "nix-store --dump {path} | sha256sum | cut -d' ' -f1"
    ));
    let got = {
        let file = h3.dir.join("got.nar");
        std::fs::write(&file, &nar.body).unwrap();
        h3.run(&format!("sha256sum < {} | cut -d' ' -f1", file.display()))
    };
    assert_eq!(got, want, "NAR from the surviving peer");

    // Nix itself, after the kill: gets the path.
    let out = substitute(h3, &[path], &[&key]);
    assert_ok("nix-store -r after a peer died", &out);

    // With no peer left, the NAR route says 404 (not an error) promptly.
    survivor.kill();
    let (status, took) = timed_get(h3, &format!("{LOCAL}/nar/{}.nar", "0".repeat(32)));
    assert_eq!(status, 404);
    assert!(took < Duration::from_secs(5), "{took:?}");
    let nar = h3.curl(&[&format!("{LOCAL}/nar/{digest}-{hash}.nar")]);
    assert_eq!(nar.status, 404);
}

/// The original Peerix stand-in, `support/v1_peer.py`.
fn v1_peer_script() -> String {
    support::stand_in("v1_peer.py")
}

#[test]
fn garbage_from_a_peer_is_refused_and_the_next_peer_used() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "h1-1");
    let paths = build_chain(h1, "garbage", 1);
    let _n1 = node(h1, &key, &[], &[]);
    // h2 claims every path and serves text that is no narinfo.
    let script = v1_peer_script();
    let cache = h2.dir.join("empty-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let cache = cache.to_str().unwrap();
    let _liar = h2.spawn_daemon(
        h2.cmd("python3", &[&script, "serve", cache, "12304", "--garbage"]),
        "v1-garbage",
    );
    let n3 = local_node(&net, &[&key], &["--timeout", "1000"]);
    std::thread::sleep(Duration::from_millis(500));

    let out = substitute(h3, &[&paths[0]], &[&key]);
    assert_ok("nix-store -r beside a lying peer", &out);
    // A miss: the liar says "have", serves garbage; the answer is a 404 in
    // bounded time (timeout + one narinfo fetch), never an error.
    let (status, took) = timed_get(h3, &format!("{LOCAL}/{}.narinfo", "1".repeat(32)));
    assert_eq!(status, 404);
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(n3.log().contains("invalid narinfo"), "{}", n3.log());
}

#[test]
fn no_broadcast_asks_only_the_extra_hosts_by_name_and_address() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "k-1");
    let on_h1 = build_chain(h1, "extra1", 1);
    let on_h2 = build_chain(h2, "extra2", 1);
    let _n1 = node(h1, &key, &[], &["--no-broadcast"]);
    let _n2 = node(h2, &key, &[], &["--no-broadcast"]);
    // Names for h1 in h3's /etc/hosts (bind-mounted in its mount namespace).
    let hosts = h3.dir.join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1 localhost\n{} peer-one\n{} peer-one-v6\n",
            h1.addr4, h1.addr6
        ),
    )
    .unwrap();
    let hosts = hosts.to_str().unwrap().to_owned();
    let wrapper = [
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        &hosts,
    ];
    let v6 = format!("[{}]:12304", h1.addr6);
    for extra in [
        "peer-one",
        "peer-one:12304",
        &h1.addr4.to_string(),
        &v6,
        "peer-one-v6",
    ] {
        let mut n3 = h3.spawn_peerix_with(
            &wrapper,
            &[],
            &[
                "--no-broadcast",
                "--extra-host",
                extra,
                "--trusted-key",
                &key.public,
            ],
        );
        let found = h3.curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(&on_h1[0]))]);
        assert_eq!(found.status, 200, "--extra-host {extra}: {}", n3.log());
        let nar = h3.curl(&[&format!("{LOCAL}/nar/{}.nar", hash_of(&on_h1[0]))]);
        assert_eq!(nar.status, 200, "--extra-host {extra}: {}", n3.log());
        // h2 is not an extra host and nothing is broadcast: not found.
        let missed = h3.curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(&on_h2[0]))]);
        assert_eq!(missed.status, 404, "--extra-host {extra}");
        n3.kill();
    }
}

#[test]
fn local_routes_answer_loopback_only_and_a_node_never_answers_itself() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "k-1");
    let paths = build_chain(h1, "self", 1);
    let hash = hash_of(&paths[0]);
    let _n1 = node(h1, &key, &[&key], &[]);
    let _n2 = node(h2, &key, &[&key], &[]);
    let remote = format!("http://{}:12304", h1.addr4);
    for route in [
        "/nix-cache-info".to_string(),
        format!("/{hash}.narinfo"),
        format!("/nar/{hash}.nar"),
        "/status".into(),
    ] {
        let response = h2.curl(&[&format!("{remote}{route}")]);
        assert_eq!(response.status, 403, "{route} from another host");
    }
    assert_eq!(h1.curl(&[&format!("{LOCAL}/nix-cache-info")]).status, 200);
    // h1 holds the path: its own peer route serves it, but its local route
    // does not find it, since it never answers its own query; h2 finds it.
    assert_eq!(
        h1.curl(&[&format!("{remote}/peer/{hash}.narinfo")]).status,
        200
    );
    assert_eq!(h1.curl(&[&format!("{LOCAL}/{hash}.narinfo")]).status, 404);
    assert_eq!(h2.curl(&[&format!("{LOCAL}/{hash}.narinfo")]).status, 200);
}

#[test]
fn v1_peers_and_ours_find_each_others_paths() {
    let Some(net) = Net::new(4) else { return };
    let (h1, h2, h3, h4) = (net.host(1), net.host(2), net.host(3), net.host(4));
    let upstream = generate_key(h2, "upstream-1");
    // h2 runs the original Peerix over a file cache of its paths.
    let theirs = build_chain(h2, "theirs", 2);
    for p in &theirs {
        support::sign(h2, &upstream, p);
    }
    let cache = h2.dir.join("v1-cache");
    h2.run(&format!(
        "nix copy --to 'file://{}?compression=none' {}",
        cache.display(),
        theirs[0]
    ));
    let script = v1_peer_script();
    let _v1 = h2.spawn_daemon(
        h2.cmd(
            "python3",
            &[&script, "serve", cache.to_str().unwrap(), "12304"],
        ),
        "v1-peer",
    );
    // h1 runs ours with its own paths.
    let key = generate_key(h1, "h1-1");
    let ours = build_chain(h1, "ours", 1);
    let _n1 = node(h1, &key, &[], &[]);
    let n3 = local_node(&net, &[&upstream], &["--timeout", "1000"]);
    std::thread::sleep(Duration::from_millis(300));

    // Ours finds theirs: v1 request, v1 reply, /local/ routes, chunked NAR.
    let out = substitute(h3, &[&theirs[0]], &[&upstream]);
    assert_ok("nix-store -r from an original Peerix", &out);
    assert_eq!(nar_hash(h3, &theirs[1]), nar_hash(h2, &theirs[1]));
    assert!(n3
        .log()
        .contains(&format!("{}: NAR of", hash_of(&theirs[0]))));

    // Theirs finds ours: a v1 request broadcast from h4 reaches h1's node.
    let broadcast = format!("{}", h1.addr4)
        .rsplit_once('.')
        .unwrap()
        .0
        .to_string()
        + ".255";
    let hash = hash_of(&ours[0]);
    // A v1 request of ours (its id's top bit set) from an address h1 never
    // heard in v2: no v1 answer, and h4 is not taken for an original node.
    let v1_line = format!("v1 {} ", h4.addr4);
    let ours_asks = h4.try_run(&format!(
        "python3 {script} query {hash} {broadcast} 12304 --id {}",
        0x8000_0007u32
    ));
    assert!(
        !ours_asks.status.success(),
        "a node of ours got a v1 answer"
    );
    let status = h1.curl(&["http://127.0.0.1:12304/status"]).text();
    assert!(!status.contains(&v1_line), "{status}");
    let out = h4.run(&format!("python3 {script} query {hash} {broadcast} 12304"));
    let status = h1.curl(&["http://127.0.0.1:12304/status"]).text();
    assert!(status.contains(&v1_line), "{status}");
    assert!(out.starts_with("narinfo 200"), "{out}");
    assert!(out.contains("URL: local/nar/"), "{out}");
    let want = h1.run(&format!(
        "nix-store --dump {} | sha256sum | cut -d' ' -f1",
        ours[0]
    ));
    assert!(out.contains(&format!("nar {want} ")), "{out}\nwant {want}");
}

#[test]
fn concurrent_narinfo_requests_do_not_queue_behind_one_another() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    // An extra host that never answers (nothing runs on h1), as an original
    // Peerix is on a miss: every miss costs the full timeout.
    let key = generate_key(h2, "k-1");
    let extra = h1.addr4.to_string();
    let _n2 = node(
        h2,
        &key,
        &[],
        &["--timeout", "1000", "--extra-host", &extra],
    );
    let start = Instant::now();
    let script = format!(
        "for i in $(seq 40); do curl -s -o /dev/null -w '%{{http_code}}\\n' {LOCAL}/$(printf '%032d' $i).narinfo & done; wait"
    );
    let statuses = h2.run(&script);
    let took = start.elapsed();
    assert_eq!(
        statuses.lines().filter(|s| *s == "404").count(),
        40,
        "{statuses}"
    );
    // 40 misses of 1 s each, side by side: far less than 40 s.
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn malformed_datagrams_are_dropped_and_the_node_carries_on() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "k-1");
    let paths = build_chain(h1, "dgram", 1);
    let n1 = node(h1, &key, &[], &[]);
    let _n2 = node(h2, &key, &[&key], &[]);
    // Random and truncated datagrams, v1 and v2 look-alikes, an empty one.
    let script = format!(
        r#"for i in $(seq 200); do
             head -c $((i % 70)) /dev/urandom > /dev/udp/{a}/12304
             printf 'PX\002\001%s' "$(head -c 20 /dev/urandom | tr -d '\000')" > /dev/udp/{a}/12304
             printf '\000\000\000\000\001short' > /dev/udp/{a}/12304
           done; printf '' > /dev/udp/{a}/12304"#,
        a = h1.addr4
    );
    h2.run(&format!("bash -c '{}'", script.replace('\'', "'\\''")));
    // Still answering, over UDP and HTTP.
    let found = h2.curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(&paths[0]))]);
    assert_eq!(found.status, 200, "{}", n1.log());
    assert!(n1.log().contains("dropped a malformed datagram"));
}

#[test]
fn an_unresolvable_extra_host_is_logged_and_skipped() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "k-1");
    let paths = build_chain(h1, "resolve", 1);
    let _n1 = node(h1, &key, &[], &["--no-broadcast"]);
    // DNS inside h2 goes to its own loopback, where nothing answers.
    let resolv = h2.dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let resolv = resolv.to_str().unwrap().to_owned();
    let wrapper = [
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#,
        &resolv,
    ];
    let a1 = h1.addr4.to_string();
    let n2 = h2.spawn_peerix_with(
        &wrapper,
        &[],
        &[
            "--no-broadcast",
            "--extra-host",
            "no-such-peer.invalid",
            "--extra-host",
            &a1,
            "--trusted-key",
            &key.public,
        ],
    );
    let found = h2.curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(&paths[0]))]);
    assert_eq!(found.status, 200, "{}", n2.log());
    assert!(
        support::wait_until(Duration::from_secs(5), || n2
            .log()
            .contains("extra host no-such-peer.invalid: cannot resolve")),
        "{}",
        n2.log()
    );
}

/// The server-side times of the misses in a node's log (`nobody has it
/// (…)`), in milliseconds, sorted.
fn miss_times(log: &str) -> Vec<f64> {
    let mut times: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("nobody has it (").nth(1)?.split(')').next())
        .filter_map(|t| {
            let ms = |unit: &str, k: f64| t.strip_suffix(unit)?.parse::<f64>().ok().map(|v| v * k);
            ms("ms", 1.0)
                .or_else(|| ms("µs", 0.001))
                .or_else(|| ms("s", 1000.0))
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// Beside an original Peerix node (silent on a miss), a miss waits for it
/// only as long as its answers to hits need, once it has answered a few:
/// with a node answering in 5 ms, misses take well under 60 ms (p50); with
/// one answering in 200 ms, none of its hits is lost. The node is known
/// from its first datagram (here a query of its own, as an original node
/// sends whenever its Nix wants a path); until then nothing tells it apart
/// from nobody.
#[test]
fn misses_wait_for_original_nodes_only_as_long_as_their_answers_need() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let upstream = generate_key(h1, "upstream-1");
    let paths = build_chain(h1, "v1-pace", 1)
        .into_iter()
        .chain((0..15).map(|i| build_chain(h1, &format!("v1-pace-{i}"), 1).remove(0)))
        .collect::<Vec<_>>();
    let cache = h1.dir.join("v1-cache");
    for p in &paths {
        support::sign(h1, &upstream, p);
    }
    h1.run(&format!(
        "nix copy --to 'file://{}?compression=none' {}",
        cache.display(),
        paths.join(" ")
    ));
    // A node of ours beside it, which answers misses at once.
    let _ours = node(h2, &generate_key(h2, "h2-1"), &[], &[]);
    let script = v1_peer_script();
    let cache = cache.to_str().unwrap();
    for (delay, hits) in [("5", &paths[..8]), ("200", &paths[8..])] {
        let mut v1 = h1.spawn_daemon(
            h1.cmd(
                "python3",
                &[&script, "serve", cache, "12304", "--delay", delay],
            ),
            "v1-peer",
        );
        let mut n3 = local_node(&net, &[&upstream], &[]);
        wait_until_peers(h3, 1);
        let broadcast = format!("{}.255", h1.addr4.to_string().rsplit_once('.').unwrap().0);
        let asked = h1.try_run(&format!(
            "python3 {script} query {} {broadcast} 12304",
            "2".repeat(32)
        ));
        assert!(!asked.status.success(), "nobody has that path");
        assert!(
            support::wait_until(Duration::from_secs(2), || h3
                .curl(&[&format!("{LOCAL}/status")])
                .text()
                .contains(&format!("v1 {}", h1.addr4))),
            "{}",
            n3.log()
        );
        // Its hits teach the node its pace; every one is found.
        for path in hits {
            let got = h3.curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(path))]);
            assert_eq!(
                got.status,
                200,
                "a hit of the {delay} ms node: {}",
                n3.log()
            );
        }
        let before = n3.log().len();
        for i in 0..20 {
            let url = format!("{LOCAL}/{:032}.narinfo", 7_000 + i);
            assert_eq!(h3.curl(&[&url]).status, 404);
        }
        let times = miss_times(&n3.log()[before..]);
        assert_eq!(times.len(), 20, "{}", n3.log());
        let (p50, max) = (times[10], times[19]);
        // What the node learnt: the slowest of the node's recent answers.
        let status = h3.curl(&[&format!("{LOCAL}/status")]).text();
        let slowest = status
            .lines()
            .find(|l| l.contains(&format!("v1 {}", h1.addr4)))
            .and_then(|l| l.split("slowest ").nth(1))
            .and_then(|t| miss_times(&format!("nobody has it ({t})")).first().copied())
            .unwrap_or_else(|| panic!("no answer time learnt: {status}"));
        eprintln!(
            "beside an original node answering in {delay} ms (slowest seen {slowest:.1} ms): \
             misses p50 {p50:.1} ms, max {max:.1} ms"
        );
        match delay {
            // A few times its answers (the benchmark holds p50 to 60 ms on a
            // quiet machine), far below the 500 ms timeout.
            "5" => assert!(
                p50 <= 4.0 * slowest + 15.0 && p50 < 250.0,
                "p50 {p50} ms for answers of {slowest} ms: {}",
                n3.log()
            ),
            _ => assert!(
                p50 >= 400.0,
                "p50 {p50} ms: a 200 ms node's hits would be lost"
            ),
        }
        n3.kill();
        v1.kill();
    }
}

/// Waits until the node on `host` has heard `n` peers of ours.
fn wait_until_peers(host: &Host, n: usize) {
    let heard = support::wait_until(Duration::from_secs(5), || {
        host.curl(&[&format!("{LOCAL}/status")])
            .text()
            .contains(&format!("peers: {n}"))
    });
    assert!(heard, "{} never heard {n} peers", host.name);
}
