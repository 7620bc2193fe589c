//! Past one broadcast domain and past a hundred nodes (issue 18): peer
//! exchange and store summaries, end to end, on test hosts in network
//! namespaces.
//!
//! Covers: hosts on two bridges routed to each other (no broadcast between
//! them) finding each other through one `--extra-host`, and a peer that
//! leaves being forgotten and not learnt again; a node with the network key
//! learning nothing from nodes without it; a path added on one node found
//! by another within a second, a removed one no longer claimed after a
//! second, a miss sending nothing, and a false positive of a summary
//! costing one datagram to one peer and no wait; a stranger's peer list
//! naming a bystander's other port and broadcast addresses, none of which
//! is probed.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use peerix::nix::narinfo::HashPart;
use peerix::store::summary::{PeerSummary, Update};
use support::{
    build_random, generate_key, hash_of, node, wait_offered, wait_until, Host, Net, Xorshift, LOCAL,
};

fn status(host: &Host) -> String {
    host.curl(&[&format!("{LOCAL}/status")]).text()
}

/// Waits up to `limit` until the node on `host` knows `n` peers of ours.
fn knows_peers(host: &Host, n: usize, limit: Duration) -> bool {
    wait_until(limit, || status(host).contains(&format!("peers: {n}\n")))
}

/// The status of the narinfo of `hash` through the node on `host`, and how
/// long it took.
fn narinfo(host: &Host, hash: &str) -> (u16, Duration) {
    let start = Instant::now();
    let status = host.curl(&[&format!("{LOCAL}/{hash}.narinfo")]).status;
    (status, start.elapsed())
}

#[test]
fn one_extra_host_joins_hosts_on_two_routed_bridges_and_a_peer_that_leaves_is_forgotten() {
    let Some(net) = Net::routed(2, 1) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h3, "mesh-1");
    // h3 is on the other bridge: no broadcast reaches it from h1 or h2.
    let path = build_random(h3, "far", 2048);
    let _n1 = node(h1, &key, &[&key], &[]);
    let _n2 = node(h2, &key, &[&key], &[]);
    let h1_addr = h1.addr4.to_string();
    let mut n3 = node(h3, &key, &[&key], &["--extra-host", &h1_addr]);
    for host in [h1, h2, h3] {
        assert!(
            knows_peers(host, 2, Duration::from_secs(15)),
            "{} does not know both others:\n{}",
            host.name,
            status(host)
        );
    }
    assert!(
        status(h2).contains(&h3.addr4.to_string()),
        "h2 heard h3 from its own address"
    );
    // h2, which was told of no host, substitutes from h3 on the other bridge.
    wait_offered(h3, &path);
    let found = wait_until(Duration::from_secs(5), || {
        narinfo(h2, hash_of(&path)).0 == 200
    });
    assert!(found, "h2 never found h3's path");

    // h3 leaves: both forget it, and neither learns it again from the other.
    n3.kill();
    for host in [h1, h2] {
        assert!(
            knows_peers(host, 1, Duration::from_secs(5)),
            "{} still knows h3:\n{}",
            host.name,
            status(host)
        );
    }
    std::thread::sleep(Duration::from_secs(6));
    for host in [h1, h2] {
        let now = status(host);
        assert!(
            now.contains("peers: 1\n") && !now.contains(&h3.addr4.to_string()),
            "{} learnt the gone h3 again:\n{now}",
            host.name
        );
    }
}

#[test]
fn a_node_with_the_network_key_learns_nothing_from_nodes_without_it() {
    let Some(net) = Net::routed(2, 2) else { return };
    let (h1, h2, h3, h4) = (net.host(1), net.host(2), net.host(3), net.host(4));
    let key = generate_key(h1, "mesh-1");
    let key_file = net.dir.join("network.key");
    fs::write(&key_file, "a secret shared by h1 and h2 only").unwrap();
    let key_arg = key_file.to_str().unwrap();
    let _n1 = node(h1, &key, &[&key], &["--network-key-file", key_arg]);
    let _n2 = node(h2, &key, &[&key], &["--network-key-file", key_arg]);
    // h3 and h4, without the key, know each other; h3 talks to h1 and
    // tells it of h4.
    let h1_addr = h1.addr4.to_string();
    let _n3 = node(h3, &key, &[&key], &["--extra-host", &h1_addr]);
    let _n4 = node(h4, &key, &[&key], &[]);
    for host in [h1, h2, h3, h4] {
        assert!(
            knows_peers(host, 1, Duration::from_secs(10)),
            "{}: {}",
            host.name,
            status(host)
        );
    }
    // Hellos, lists and probes have had their time.
    std::thread::sleep(Duration::from_secs(6));
    for host in [h1, h2] {
        let now = status(host);
        assert!(now.contains("peers: 1\n"), "{}: {now}", host.name);
        for stranger in [h3, h4] {
            assert!(
                !now.contains(&stranger.addr4.to_string()),
                "{} learnt {} without the key:\n{now}",
                host.name,
                stranger.name
            );
        }
    }
}

#[test]
fn summaries_follow_the_store_within_a_second_and_misses_send_nothing() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "mesh-1");
    let old = build_random(h2, "old", 1024);
    // Enough paths on h2 for a summary of some size (it claims about
    // 0.1 % of other paths).
    support::fake_paths(h2, "many", 5000);
    // Its discovery decisions are read from its log (at debug, as every node's).
    let n1 = node(h1, &key, &[&key], &["--timeout", "2000"]);
    let _n2 = node(h2, &key, &[&key], &[]);
    let _n3 = node(h3, &key, &[&key], &[]);
    assert!(
        knows_peers(h1, 2, Duration::from_secs(10)),
        "{}",
        status(h1)
    );
    let fetched = wait_until(Duration::from_secs(10), || {
        status(h1).matches(" bytes").count() == 2
    });
    assert!(fetched, "h1 never had both summaries:\n{}", status(h1));
    assert_eq!(narinfo(h1, hash_of(&old)).0, 200, "a path held before");

    // Misses: nothing is sent, nobody is waited for.
    let mut rng = Xorshift::seeded(0x2545_f491_4f6c_dd1d);
    let misses: Vec<String> = (0..20).map(|_| rng.hash()).collect();
    for hash in &misses {
        let (code, took) = narinfo(h1, hash);
        assert_eq!(code, 404);
        assert!(
            took < Duration::from_millis(1000),
            "a miss took {took:?}:\n{}\n{}",
            n1.log()
                .lines()
                .filter(|l| l.contains(hash.as_str()) || l.contains("query"))
                .collect::<Vec<_>>()
                .join("\n"),
            status(h1)
        );
    }
    assert!(
        !status(h1).contains("\n  v1 "),
        "the node took its own v1 broadcast for an original Peerix:\n{}",
        status(h1)
    );
    let log = n1.log();
    let unasked = (misses.iter())
        .filter(|h| log.contains(&format!("no peer may have {h}")))
        .count();
    // A summary may claim one of them falsely (about 0.1 % each).
    assert!(unasked >= 18, "only {unasked} of 20 misses asked nobody");

    // A path added on h2 is found from h1 within a second.
    let new = build_random(h2, "new", 1024);
    let added = Instant::now();
    let mut found = None;
    while added.elapsed() < Duration::from_secs(3) {
        if narinfo(h1, hash_of(&new)).0 == 200 {
            found = Some(added.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let found = found.expect("h1 never found the new path");
    assert!(found <= Duration::from_secs(1), "found after {found:?}");

    // Removed from h2: after a second, h1 asks nobody about it.
    h2.run(&format!("nix-store --delete {new}"));
    std::thread::sleep(Duration::from_secs(1));
    let (code, _) = narinfo(h1, hash_of(&new));
    assert_eq!(code, 404);
    let log = n1.log();
    assert!(
        log.contains(&format!("no peer may have {}", hash_of(&new))),
        "the removed path is still claimed:\n{}",
        status(h1)
    );

    // A false positive of h2's summary: one datagram to h2 alone, its
    // "not here", and no wait.
    let summary_of = |host: &Host| {
        let url = format!("http://{}:12304/peer/summary/0", host.addr4);
        let update = Update::parse(&h1.curl(&[&url]).body).expect("a summary");
        PeerSummary::update(None, update).expect("a whole summary")
    };
    let (s2, s3) = (summary_of(h2), summary_of(h3));
    let claimed = (0..100_000)
        .map(|_| rng.hash())
        .find(|h| {
            let h = HashPart::parse(h).unwrap();
            s2.may_hold(&h) && !s3.may_hold(&h)
        })
        .expect("about 0.1 % of random hashes are claimed");
    let (code, took) = narinfo(h1, &claimed);
    assert_eq!(code, 404);
    assert!(
        took < Duration::from_millis(1000),
        "a false positive waited {took:?} (timeout 2 s)"
    );
    let log = n1.log();
    assert!(
        log.contains(&format!("asked 1 peers that may have {claimed}")),
        "the false positive was not asked of h2 alone"
    );
}

/// A stranger's peer list (no network key) names a bystander's other
/// port, the LAN's broadcast addresses and a cloud's metadata service:
/// the node probes none of them, only the address on its own network at
/// the LAN's port (issue 24, item 10: a bystander got probes on port 9999).
#[test]
fn a_strangers_list_aims_probes_only_at_the_lans_port_on_this_hosts_networks() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "probe-1");
    let n1 = node(h1, &key, &[&key], &[]);
    let record = net.dir.join("udp.log");
    let script = support::stand_in("hostile.py");
    let args = ["udp-listen", "12304,9999", record.to_str().unwrap(), "10"];
    let mut argv = vec![script.as_str()];
    argv.extend(args);
    let bystander = h2.spawn_daemon(h2.cmd("python3", &argv), "bystander");
    assert!(wait_until(Duration::from_secs(10), || bystander
        .log()
        .contains("listening")));
    let octets = h2.addr4.octets();
    let broadcast = format!("{}.{}.{}.255", octets[0], octets[1], octets[2]);
    let entries = [
        format!("{}:9999", h2.addr4),
        format!("{broadcast}:12304"),
        "255.255.255.255:12304".to_string(),
        "169.254.169.254:12304".to_string(),
        format!("{}:12304", h2.addr4),
    ];
    h3.run(&format!(
        "python3 {script} peers {} 12304 {}",
        h1.addr4,
        entries.join(" ")
    ));
    // A candidate is probed at once and twice more, 2 s apart.
    std::thread::sleep(Duration::from_secs(5));
    let seen = fs::read_to_string(&record).unwrap_or_default();
    // "PORT DEST SOURCE KIND": the lists the node sent (kind 8).
    let probes: Vec<&str> = (seen.lines())
        .filter(|l| l.split(' ').nth(2) == Some(&*h1.addr4.to_string()))
        .filter(|l| l.ends_with(" 8") || l.starts_with("9999 "))
        .collect();
    eprintln!("probes seen: {probes:?}");
    let h2_addr = h2.addr4.to_string();
    assert!(
        probes.contains(&format!("12304 {h2_addr} {} 8", h1.addr4).as_str()),
        "the address on the node's network was not probed: {seen}\n{}",
        n1.log()
    );
    for probe in &probes {
        let dest = probe.split(' ').nth(1).unwrap_or_default();
        assert!(
            probe.starts_with("12304 ") && dest == h2_addr,
            "probed {probe}: {seen}"
        );
    }
}
