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
//!
//! And what a stranger on the LAN can do (`support/puller.py` poses as
//! pullers, `support/hostile.py` as clients): a puller whose bytes fail
//! the NarHash is asked once, then passed over, and Nix gets the path from
//! the upstream; made-up pullers at one address cost one timeout; a bad
//! upstream answer is never served whole nor again; strangers' requests
//! for random paths cost no upstream request, and a download nobody reads
//! stops. And the spool never takes the disk's margin, downloads under way
//! counted.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use support::upstream_cache::{wait_pullers, UpstreamCache};
use support::{
    build_chain, generate_key, hash_of, metric, metrics, nar_hash, nix_clients, realise_args,
    Daemon, Host, Net, DEFAULT_PORT, LOCAL,
};

/// How long one `nix-store -r` may take.
const LIMIT: Duration = Duration::from_secs(180);

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
    let n2 = cache.node(h2, "NIX_SSL_CERT_FILE", &urls, &ukey, &[]);

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
        .map(|h| cache.node(h, "SSL_CERT_FILE", &[&url], &ukey, &[]))
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
    // zstd: xz of 24 MiB of random bytes took `nix copy` over 3 minutes
    // beside two busy loops.
    let url = cache.publish(up, "zstd", "zstd", &ukey, &[&big]);
    // About 5 s for the whole NAR.
    up.limit_rate(40);
    let hosts: Vec<&Host> = (2..=4).map(|i| net.host(i)).collect();
    let mut nodes: Vec<Daemon> = (hosts.iter())
        .map(|h| cache.node(h, "SSL_CERT_FILE", &[&url], &ukey, &[]))
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
    assert!(bytes < 2 * cache.nar_bytes("zstd"), "{}", cache.log());
}

/// The id of the node on `host`, as its `/status` says it.
fn node_id(host: &Host) -> String {
    let status = host.curl(&[&format!("{LOCAL}/status")]).text();
    (status.lines())
        .find_map(|l| l.strip_prefix("node "))
        .unwrap_or_else(|| panic!("no node id in {status}"))
        .to_string()
}

/// `support/puller.py MODE` on `on`: `count` made-up pullers that rank
/// before the node on `node` for every one of `paths`, answering on port
/// 8080 (`nars`: `HASH=FILE` for `lie`); with its log of connections and
/// requests. Returns once the node lists them as peers that pull.
fn made_up_pullers(
    on: &Host,
    mode: &str,
    node: &Host,
    paths: &[&str],
    count: usize,
    nars: &[String],
) -> (Daemon, PathBuf) {
    let log = on.dir.join(format!("puller-{mode}.log"));
    let hashes: Vec<&str> = paths.iter().map(|p| hash_of(p)).collect();
    let (id, hashes, count) = (node_id(node), hashes.join(","), count.to_string());
    let (addr, log_arg) = (node.addr4.to_string(), log.to_str().unwrap());
    let script = support::stand_in("puller.py");
    let mut args = vec![
        script.as_str(),
        mode,
        &addr,
        &id,
        &hashes,
        &count,
        "8080",
        log_arg,
    ];
    args.extend(nars.iter().map(String::as_str));
    let puller = on.spawn_daemon(on.cmd("/usr/bin/python3", &args), "puller");
    let mut status = String::new();
    let known = support::wait_until(Duration::from_secs(20), || {
        status = node.curl(&[&format!("{LOCAL}/status")]).text();
        status.matches("pulls from upstreams").count() >= count.parse().unwrap()
    });
    assert!(
        known,
        "the made-up pullers are not known:\n{status}\n{}",
        puller.log()
    );
    (puller, log)
}

/// The lines of `log` that contain `what`.
fn lines_with(log: &PathBuf, what: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter(|l| l.contains(what)).count()
}

/// `nix-store -r paths` on `host` through its node; panics with the
/// node's log when it fails.
fn realise(host: &Host, node: &Daemon, paths: &[&str], key: &support::Key) {
    let args = realise_args(paths, &[key]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = support::output_within(host.cmd("nix-store", &args), LIMIT).expect("nix-store hung");
    assert!(
        out.status.success(),
        "nix-store -r {paths:?}: {}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
}

/// What [`pulling`] sets up.
struct Pulling {
    cache: UpstreamCache,
    key: support::Key,
    /// The one path published.
    path: String,
    /// The node on host 2, pulling through the upstream.
    node: Daemon,
}

/// On `net`'s host 1 an upstream stand-in publishing one random path of
/// `bytes` (tagged `tag`, uncompressed, signed by its key), and on host 2
/// a node pulling through it.
fn pulling(net: &Net, tag: &str, bytes: u64) -> Pulling {
    let (up, h2) = (net.host(1), net.host(2));
    let key = generate_key(up, "upstream-1");
    let cache = UpstreamCache::start(up);
    let path = support::build_random(up, tag, bytes);
    let url = cache.publish(up, "none", "none", &key, &[&path]);
    let node = cache.node(h2, "SSL_CERT_FILE", &[&url], &key, &[]);
    Pulling {
        cache,
        key,
        path,
        node,
    }
}

/// The value of `field` in narinfo `text`.
fn field<'a>(text: &'a str, field: &str) -> &'a str {
    (text.lines())
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {field} in {text}"))
}

/// The `/peer/pull/…` route of `path` (by its upstream narinfo `text`).
fn pull_route(text: &str, path: &str) -> String {
    let nar_hash = field(text, "NarHash").trim_start_matches("sha256:");
    format!("/peer/pull/{nar_hash}-{}.nar", hash_of(path))
}

/// A stranger picks node ids that rank before the node for two paths and
/// sends, for the first, its NAR with the last byte flipped (the hostile
/// review: 5 of 5 Nix tries went to it, and the node blamed its upstream).
/// The stranger is asked once; Nix gets the path from the upstream through
/// the node, in the same `nix-store -r`. Its address ranks after the node
/// from then on: the second path never goes to it.
#[test]
fn a_lying_puller_is_asked_once_and_the_node_fetches_the_nar_itself() {
    let Some(net) = Net::new(3) else { return };
    let (up, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let ukey = generate_key(up, "upstream-1");
    let cache = UpstreamCache::start(up);
    let lied = support::build_random(up, "lied", 1 << 20);
    let next = support::build_random(up, "next", 1 << 20);
    let url = cache.publish(up, "none", "none", &ukey, &[&lied, &next]);
    let nar = up.dir.join("lied.nar");
    up.run(&format!("nix-store --dump {lied} > {}", nar.display()));
    let n2 = cache.node(h2, "SSL_CERT_FILE", &[&url], &ukey, &[]);
    let nars = [format!("{}={}", hash_of(&lied), nar.display())];
    let (_liar, log) = made_up_pullers(h3, "lie", h2, &[&lied, &next], 1, &nars);

    realise(h2, &n2, &[&lied], &ukey);
    verified(up, h2, &[&lied]).unwrap();
    let asked = lines_with(&log, hash_of(&lied));
    assert_eq!(asked, 1, "the liar was asked {asked} times:\n{}", n2.log());
    let m = metrics(h2);
    let wrong = r#"peerix_passed_over_total{source="puller",reason="wrong_bytes"}"#;
    assert_eq!(metric(&m, wrong), Some(1.0), "{m}");

    realise(h2, &n2, &[&next], &ukey);
    verified(up, h2, &[&next]).unwrap();
    let asked = lines_with(&log, hash_of(&next));
    assert_eq!(
        asked,
        0,
        "the liar was asked for the next path:\n{}",
        n2.log()
    );
}

/// Ten made-up pullers at one address accept connections and never answer
/// (the hostile review: 3 s each). One is tried; the others at its address
/// are skipped, and the node fetches the path itself.
#[test]
fn made_up_pullers_at_one_address_cost_one_try() {
    let Some(net) = Net::new(3) else { return };
    let (up, h2, h3) = (net.host(1), net.host(2), net.host(3));
    // The upstream stand-in lives as long as `_cache`.
    let Pulling {
        cache: _cache,
        key: ukey,
        path,
        node: n2,
    } = pulling(&net, "silent", 256 << 10);
    let (_silent, log) = made_up_pullers(h3, "silent", h2, &[&path], 10, &[]);

    realise(h2, &n2, &[&path], &ukey);
    verified(up, h2, &[&path]).unwrap();
    let tried = lines_with(&log, "connection");
    assert_eq!(
        tried,
        1,
        "{tried} of the made-up pullers were tried:\n{}",
        n2.log()
    );
    let m = metrics(h2);
    let failed = r#"peerix_passed_over_total{source="puller",reason="failed"}"#;
    assert_eq!(metric(&m, failed), Some(1.0), "{m}");
}

/// Two NARs of 30 MiB at once into a spool on a file system with 104 MiB
/// (the hostile review: two of 100 MiB on 200 MiB filled it, "No space
/// left on device"). The first download's bytes are reserved as it starts:
/// the second streams without sharing, and the 64 MiB the spool leaves
/// free stay free throughout.
#[test]
fn the_spool_keeps_the_disk_margin_with_downloads_under_way() {
    let Some(net) = Net::new(2) else { return };
    let (up, h2) = (net.host(1), net.host(2));
    let ukey = generate_key(up, "upstream-1");
    let cache = UpstreamCache::start(up);
    let paths = [
        support::build_random(up, "room-1", 30 << 20),
        support::build_random(up, "room-2", 30 << 20),
    ];
    let url = cache.publish(up, "none", "none", &ukey, &[&paths[0], &paths[1]]);
    // About 5 s for both.
    up.limit_rate(100);
    // The node's state directory is a file system of its own, in the
    // node's mount namespace alone (gone with it).
    let state = h2.dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mount = format!(
        "mount -t tmpfs -o size=104m peerix-state {} && exec \"$@\"",
        state.display()
    );
    let wrapper = ["sh", "-c", mount.as_str(), "sh"];
    let node = cache.node_wrapped(h2, &wrapper, "SSL_CERT_FILE", &[&url], &ukey, &[]);
    let pid = node.pid().to_string();
    let free = || {
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-m", "stat", "-f", "-c", "%a %S"])
            .arg(&state)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (blocks, size) = text.trim().split_once(' ')?;
        Some(blocks.parse::<u64>().ok()? * size.parse::<u64>().ok()?)
    };
    assert!(
        free().is_some_and(|f| f > 100 << 20),
        "no tmpfs: {:?}",
        free()
    );
    let urls: Vec<(String, u64)> = (paths.iter())
        .map(|p| {
            let text = h2
                .curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(p))])
                .text();
            (
                field(&text, "URL").to_string(),
                field(&text, "NarSize").parse().unwrap(),
            )
        })
        .collect();
    let mut lowest = u64::MAX;
    let results: Vec<(i32, u16, u64, u64)> = thread::scope(|s| {
        let fetches: Vec<_> = (urls.iter().enumerate())
            .map(|(i, (url, size))| {
                let file = h2.dir.join(format!("room-{i}.nar"));
                s.spawn(move || {
                    let out = file.to_str().unwrap();
                    let got = h2.curl(&["-o", out, &format!("{LOCAL}/{url}")]);
                    let len = std::fs::metadata(&file).map_or(0, |m| m.len());
                    (got.exit, got.status, len, *size)
                })
            })
            .collect();
        while fetches.iter().any(|f| !f.is_finished()) {
            if let Some(f) = free() {
                lowest = lowest.min(f);
            }
            thread::sleep(Duration::from_millis(50));
        }
        fetches.into_iter().map(|f| f.join().unwrap()).collect()
    });
    for (exit, status, len, size) in &results {
        assert_eq!((*exit, *status, *len), (0, 200, *size), "{}", node.log());
    }
    eprintln!(
        "lowest free space while both downloads ran: {} MiB",
        lowest >> 20
    );
    assert!(
        lowest >= 64 << 20,
        "the spool left {} MiB free\n{}",
        lowest >> 20,
        node.log()
    );
    assert!(
        !node.log_lines("streamed without sharing").is_empty(),
        "{}",
        node.log()
    );
}

/// The upstream sends a NAR once with a byte flipped (the hostile review:
/// the spool then served it to every peer for ten minutes). The peer that
/// asked never gets it whole; the next request fetches it anew, right.
#[test]
fn a_nar_the_upstream_sent_wrong_is_never_served_whole_nor_again() {
    let Some(net) = Net::new(3) else { return };
    let (up, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let Pulling {
        cache,
        path,
        node,
        key: _,
    } = pulling(&net, "wrong-once", 4 << 20);
    let want = up.run(&format!(
        "nix-store --dump {path} | sha256sum | cut -d' ' -f1"
    ));
    // The node's Nix asked for it: the node remembers the upstream's narinfo.
    let text = h2
        .curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(&path))])
        .text();
    let size: u64 = field(&text, "NarSize").parse().unwrap();
    let route = pull_route(&cache.narinfo("none", &path), &path);
    cache.corrupt_once("none", &path);
    let fetch = |name: &str| {
        let file = h3.dir.join(name);
        let url = format!("http://{}:{DEFAULT_PORT}{route}", h2.addr4);
        let got = h3.curl(&["-o", file.to_str().unwrap(), &url]);
        let sha = h3.run(&format!("sha256sum {} | cut -d' ' -f1", file.display()));
        let len = std::fs::metadata(&file).map_or(0, |m| m.len());
        (got.exit, got.status, len, sha)
    };
    let (exit, status, len, sha) = fetch("first.nar");
    eprintln!("the bad answer: curl exit {exit}, status {status}, {len} of {size} bytes");
    assert!(
        len < size && exit != 0,
        "a NAR with the wrong bytes went out whole (curl exit {exit}, {len} bytes, right: {})\n{}",
        sha == want,
        node.log()
    );
    let (exit, status, len, sha) = fetch("second.nar");
    assert_eq!((exit, status, len), (0, 200, size), "{}", node.log());
    assert_eq!(sha, want, "the wrong bytes again\n{}", node.log());
    let sends = cache.nar_sends();
    let whole: usize = sends.values().map(|(whole, _)| whole).sum();
    assert_eq!(whole, 2, "fetched anew: {sends:?}\n{}", cache.log());
}

/// 200 `/peer/pull/` requests for random paths from one address (the
/// hostile review: 200 upstream narinfo requests in 0.1 s) cost no
/// upstream request, and the address is held to a rate. A path an upstream
/// has, asked of two pullers with its signed narinfo as proof, costs one:
/// the node that is not its fetcher does not ask.
#[test]
fn strangers_cannot_make_a_node_ask_its_upstream() {
    let Some(net) = Net::new(4) else { return };
    let (up, h2, h3, h4) = (net.host(1), net.host(2), net.host(3), net.host(4));
    let ukey = generate_key(up, "upstream-1");
    let cache = UpstreamCache::start(up);
    let path = support::build_random(up, "proven", 256 << 10);
    let url = cache.publish(up, "none", "none", &ukey, &[&path]);
    let hosts = [h2, h3];
    let nodes: Vec<Daemon> = (hosts.iter())
        .map(|h| cache.node(h, "SSL_CERT_FILE", &[&url], &ukey, &[]))
        .collect();
    wait_pullers(&hosts, &nodes);

    let script = support::stand_in("hostile.py");
    let flood = h4.run(&format!(
        "/usr/bin/python3 {script} pull-flood {} {DEFAULT_PORT} 200",
        h2.addr4
    ));
    eprintln!("200 requests for random paths: {flood}");
    let count = |status: &str| -> usize {
        let words: Vec<&str> = flood.split(' ').collect();
        (words.chunks(2))
            .find(|w| w[0] == status)
            .map_or(0, |w| w[1].parse().unwrap())
    };
    assert_eq!(count("404") + count("503"), 200, "{flood}");
    assert_eq!(cache.narinfo_requests(), 0, "{}", cache.log());
    assert!(count("503") > 0, "no rate: {flood}");

    let narinfo = cache.narinfo("none", &path);
    let proof = support::base64(narinfo.as_bytes());
    let route = pull_route(&narinfo, &path);
    let statuses: Vec<u16> = (hosts.iter())
        .map(|h| {
            let url = format!("http://{}:{DEFAULT_PORT}{route}", h.addr4);
            let header = format!("X-Peerix-Narinfo: {proof}");
            up.curl(&["-H", &header, "-o", "/dev/null", &url]).status
        })
        .collect();
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 404], "{statuses:?}\n{}", cache.log());
    assert_eq!(cache.narinfo_requests(), 1, "{}", cache.log());
}

/// A stranger asks for a pulled NAR, reads 4 KiB and leaves (the hostile
/// review: the upstream sent 52 MB for 4 KiB read). Nobody else reads it
/// and the local Nix never asked for the NAR: the download stops.
#[test]
fn a_download_nobody_reads_stops() {
    let Some(net) = Net::new(3) else { return };
    let (up, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let Pulling {
        cache,
        path,
        node,
        key: _,
    } = pulling(&net, "unread", 48 << 20);
    // About 10 s for the whole NAR.
    up.limit_rate(40);
    // The node's Nix asked for the narinfo: the node remembers it.
    let hash = hash_of(&path);
    assert_eq!(h2.curl(&[&format!("{LOCAL}/{hash}.narinfo")]).status, 200);
    let route = pull_route(&cache.narinfo("none", &path), &path);
    let script = support::stand_in("hostile.py");
    let read = h3.run(&format!(
        "/usr/bin/python3 {script} leave {} {DEFAULT_PORT} {route} 4096",
        h2.addr4
    ));
    assert_eq!(read, "read 4096");
    // The upstream logs a NAR once its sending ended, whole or not.
    let ended = support::wait_until(Duration::from_secs(60), || !cache.nar_sends().is_empty());
    assert!(ended, "{}\n{}", cache.log(), node.log());
    let total = cache.nar_bytes("none");
    let sent = cache.nar_sends_total();
    eprintln!("the upstream sent {} of {} MiB", sent >> 20, total >> 20);
    assert!(sent < total, "the whole NAR was fetched\n{}", node.log());
}
