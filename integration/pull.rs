//! Pulling through upstream caches (`src/pull/`), with real Nix in network
//! namespaces and a stand-in for cache.nixos.org on a test host
//! (`support::upstream_cache`: `nix copy --to file://…` caches over HTTPS
//! with a test CA, its answers logged with the bytes sent).
//!
//! Covers: every Nix client (2.3.7 to current) getting xz, zstd and
//! uncompressed upstream paths through its node, as raw NARs that verify;
//! a narinfo signed by a key nobody trusts never handed on; four nodes
//! substituting one closure at the same moment over a slow uplink, each
//! NAR crossing it once; the node fetching a path killed half way, the
//! other clients complete all the same.

mod support;

use std::thread;
use std::time::Duration;

use support::upstream_cache::UpstreamCache;
use support::{
    build_chain, generate_key, hash_of, nar_hash, nix_clients, realise_args, Daemon, Host, Key,
    Net, LOCAL,
};

/// How long one `nix-store -r` may take.
const LIMIT: Duration = Duration::from_secs(180);

/// A node on `host` pulling through `urls`, trusting `upstream`'s key,
/// with the test CA in `ca_variable` (`SSL_CERT_FILE` or
/// `NIX_SSL_CERT_FILE`).
fn pulling_node(
    host: &Host,
    cache: &UpstreamCache,
    ca_variable: &str,
    urls: &[&str],
    upstream: &Key,
) -> Daemon {
    let key = generate_key(host, &format!("{}-1", host.name));
    let state = host.dir.join("state");
    let mut args = vec![
        "--private-key",
        key.secret.to_str().unwrap(),
        "--trusted-key",
        &upstream.public,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    for url in urls {
        args.extend(["--upstream", url]);
    }
    // NIX_SSL_CERT_FILE comes first, as for Nix: empty, SSL_CERT_FILE counts.
    let env = [
        ("NIX_SSL_CERT_FILE", ""),
        ("SSL_CERT_FILE", ""),
        (ca_variable, cache.ca.to_str().unwrap()),
    ];
    host.spawn_peerix_with(&[], &env, &args)
}

/// Waits until the node of each of `hosts` knows the others as peers that
/// pull (a node says so with every hello, every 30 s, and to each new
/// peer); on failure, what each node's discovery logged.
fn wait_pullers(hosts: &[&Host], nodes: &[Daemon]) {
    for host in hosts {
        let mut status = String::new();
        let known = support::wait_until(Duration::from_secs(70), || {
            status = host.curl(&[&format!("{LOCAL}/status")]).text();
            status.matches("pulls from upstreams").count() == hosts.len() - 1
        });
        if !known {
            let logs: Vec<String> = (hosts.iter().zip(nodes))
                .map(|(h, n)| {
                    let log = n.log();
                    let lines: Vec<&str> = (log.lines())
                        .filter(|l| {
                            l.contains("peer") || l.contains("discovery") || l.contains("panic")
                        })
                        .take(40)
                        .collect();
                    format!("--- {}:\n{}", h.name, lines.join("\n"))
                })
                .collect();
            panic!(
                "{} never heard the other pulling nodes:\n{status}\n{}",
                host.name,
                logs.join("\n")
            );
        }
    }
}

/// Every path of `paths`' closures on `to` verifies and has the NAR hash it
/// has on `from`.
fn verified(from: &Host, to: &Host, paths: &[&str]) -> Result<(), String> {
    for top in paths {
        let closure = from.run(&format!("nix-store -qR {top}"));
        for path in closure.lines() {
            let out = to.try_run(&format!("nix-store --verify-path {path}"));
            if !out.status.success() {
                return Err(format!("{path} does not verify on {}", to.name));
            }
            if nar_hash(from, path) != nar_hash(to, path) {
                return Err(format!("{path}: another NAR on {}", to.name));
            }
        }
    }
    Ok(())
}

#[test]
fn every_nix_gets_xz_zstd_and_uncompressed_upstream_paths() {
    let Some(net) = Net::new(2) else { return };
    let (up, h2) = (net.host(1), net.host(2));
    let ukey = generate_key(up, "upstream-1");
    let stranger = generate_key(up, "stranger-1");
    let cache = UpstreamCache::start(up);
    let clients = nix_clients::all(h2);
    let compressions = ["xz", "zstd", "none"];
    // Per client and compression a chain of two paths (a reference to
    // follow), published in that compression.
    let mut tops: Vec<Vec<String>> = Vec::new();
    for client in &clients {
        tops.push(
            compressions
                .iter()
                .map(|c| build_chain(up, &format!("{c}-{}", client.name), 2).remove(0))
                .collect(),
        );
    }
    let mut urls = Vec::new();
    for (i, c) in compressions.iter().enumerate() {
        let paths: Vec<&str> = tops.iter().map(|t| t[i].as_str()).collect();
        urls.push(cache.publish(up, c, c, &ukey, &paths));
    }
    let untrusted = build_chain(up, "untrusted", 1).remove(0);
    urls.push(cache.publish(up, "untrusted", "xz", &stranger, &[&untrusted]));
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let n2 = pulling_node(h2, &cache, "NIX_SSL_CERT_FILE", &urls, &ukey);

    // The narinfo is the upstream's, raw, its NAR on the node.
    let hash = hash_of(&tops[0][0]);
    let narinfo = h2.curl(&[&format!("{LOCAL}/{hash}.narinfo")]);
    assert_eq!(narinfo.status, 200, "{}", n2.log());
    let text = narinfo.text();
    assert!(text.contains("Compression: none\n"), "{text}");
    assert!(text.contains(&format!("-{hash}.nar\n")), "{text}");
    assert!(text.contains("Sig: upstream-1:"), "{text}");
    assert!(!text.contains("FileHash"), "{text}");
    // Signed by a key nobody trusts: not handed on.
    let refused = h2.curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(&untrusted))]);
    assert_eq!(refused.status, 404);

    let mut failures = Vec::new();
    for (client, tops) in clients.iter().zip(&tops) {
        let paths: Vec<&str> = tops.iter().map(String::as_str).collect();
        let args = realise_args(&paths, &[&ukey]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = support::output_within(client.command(h2, "nix-store", &args), LIMIT)
            .unwrap_or_else(|| panic!("{} hung", client.label()));
        let result = match out.status.success() {
            true => verified(up, h2, &paths),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        };
        eprintln!(
            "{}: xz, zstd, none: {}",
            client.label(),
            result.as_ref().map_or("FAILED", |_| "ok")
        );
        if let Err(e) = result {
            failures.push(format!("{}: {e}", client.label()));
        }
    }
    assert!(
        failures.is_empty(),
        "{failures:#?}\nnode log:\n{}",
        n2.log()
    );
}

#[test]
fn four_nodes_at_once_fetch_each_upstream_nar_once() {
    let Some(net) = Net::new(5) else { return };
    let up = net.host(1);
    let ukey = generate_key(up, "upstream-1");
    let cache = UpstreamCache::start(up);
    // 20 small paths in a chain and a 4 MiB one beside them.
    let chain = build_chain(up, "once", 20);
    let big = support::build_random(up, "once-big", 4 << 20);
    let url = cache.publish(up, "xz", "xz", &ukey, &[&chain[0], &big]);
    up.limit_rate(50);
    let hosts: Vec<&Host> = (2..=5).map(|i| net.host(i)).collect();
    let nodes: Vec<Daemon> = (hosts.iter())
        .map(|h| pulling_node(h, &cache, "SSL_CERT_FILE", &[&url], &ukey))
        .collect();
    wait_pullers(&hosts, &nodes);
    let tops = [chain[0].as_str(), big.as_str()];
    let results: Vec<(String, bool, String)> = thread::scope(|s| {
        let runs: Vec<_> = (hosts.iter())
            .map(|h| {
                let args = realise_args(&tops, &[&ukey]);
                s.spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let out = support::output_within(h.cmd("nix-store", &args), LIMIT)
                        .expect("nix-store -r hung");
                    let err = String::from_utf8_lossy(&out.stderr).into_owned();
                    (h.name.clone(), out.status.success(), err)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for ((name, ok, err), node) in results.iter().zip(&nodes) {
        assert!(
            ok,
            "{name}: {err}\nupstream:\n{}\nnode log:\n{}",
            cache.log(),
            node.log()
        );
    }
    for h in &hosts {
        verified(up, h, &tops).unwrap();
    }
    let sends = cache.nar_sends();
    assert_eq!(sends.len(), 21, "every NAR was asked for: {sends:#?}");
    let total = cache.nar_bytes("xz");
    let sent: u64 = sends.values().map(|(_, bytes)| bytes).sum();
    eprintln!(
        "upstream sent {sent} bytes for {total} bytes of NARs ({:.2} x)",
        sent as f64 / total as f64
    );
    for (file, (whole, _)) in &sends {
        if *whole != 1 {
            for node in &nodes {
                let log = node.log();
                let lines: Vec<&str> = (log.lines())
                    .filter(|l| {
                        ["pull", "spool", "LAN", "going on", "broke"]
                            .iter()
                            .any(|w| l.contains(w))
                    })
                    .collect();
                eprintln!("--- node:\n{}", lines.join("\n"));
            }
        }
        assert_eq!(*whole, 1, "{file} was sent {whole} times:\n{}", cache.log());
    }
    assert!(sent <= total + total / 10, "{sent} bytes for {total}");
    // Every path is in every store and nobody reads the spool files: they go.
    let spooled = |h: &Host| {
        std::fs::read_dir(h.dir.join("state/spool"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let emptied = support::wait_until(Duration::from_secs(20), || {
        hosts.iter().all(|h| spooled(h) == 0)
    });
    let left: Vec<usize> = hosts.iter().map(|h| spooled(h)).collect();
    assert!(emptied, "spool files left: {left:?}");
}

#[test]
fn the_fetching_node_killed_half_way_leaves_every_other_client_complete() {
    let Some(net) = Net::new(4) else { return };
    let up = net.host(1);
    let ukey = generate_key(up, "upstream-1");
    let cache = UpstreamCache::start(up);
    let big = support::build_random(up, "killed", 24 << 20);
    let url = cache.publish(up, "xz", "xz", &ukey, &[&big]);
    // About 5 s for the whole NAR.
    up.limit_rate(40);
    let hosts: Vec<&Host> = (2..=4).map(|i| net.host(i)).collect();
    let mut nodes: Vec<Daemon> = (hosts.iter())
        .map(|h| pulling_node(h, &cache, "SSL_CERT_FILE", &[&url], &ukey))
        .collect();
    wait_pullers(&hosts, &nodes);
    let spooling = |h: &Host| {
        std::fs::read_dir(h.dir.join("state/spool"))
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    };
    let (killed, results): (usize, Vec<(usize, bool, String)>) = thread::scope(|s| {
        let runs: Vec<_> = (hosts.iter().enumerate())
            .map(|(i, h)| {
                let args = realise_args(&[&big], &[&ukey]);
                s.spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let out = support::output_within(h.cmd("nix-store", &args), LIMIT)
                        .expect("nix-store -r hung");
                    (
                        i,
                        out.status.success(),
                        String::from_utf8_lossy(&out.stderr).into_owned(),
                    )
                })
            })
            .collect();
        // The fetcher is the one node whose spool has a file; kill it half way.
        let mut fetcher = None;
        assert!(
            support::wait_until(Duration::from_secs(20), || {
                fetcher = hosts.iter().position(|h| spooling(h));
                fetcher.is_some()
            }),
            "no node spooled the NAR"
        );
        let fetcher = fetcher.unwrap();
        thread::sleep(Duration::from_millis(1500));
        let spooled: Vec<usize> = (0..hosts.len()).filter(|&i| spooling(hosts[i])).collect();
        assert_eq!(spooled, [fetcher], "one node fetches for all");
        nodes[fetcher].kill();
        eprintln!("killed the fetcher on {}", hosts[fetcher].name);
        let results = runs.into_iter().map(|r| r.join().unwrap()).collect();
        (fetcher, results)
    });
    let mut completed = 0;
    for (i, ok, err) in results {
        if i == killed {
            continue;
        }
        assert!(
            ok,
            "{}: {err}\nnode log:\n{}",
            hosts[i].name,
            nodes[i].log()
        );
        verified(up, hosts[i], &[&big]).unwrap();
        completed += 1;
    }
    assert_eq!(completed, 2);
    // The killed fetcher's download broke off; one other node fetched the
    // NAR again for both survivors.
    let sends = cache.nar_sends();
    eprintln!("upstream sends: {sends:?}");
    let (whole, bytes) = sends.values().next().copied().unwrap_or_default();
    assert_eq!(whole, 1, "{}", cache.log());
    assert!(bytes < 2 * cache.nar_bytes("xz"), "{}", cache.log());
}
