//! The Nix client matrix: every Nix client the tests have substitutes
//! through its host's local node. The clients are the machine's own Nix
//! (2.8) and, when `integration/support/setup-nix-clients` prepared them,
//! Debian's 2.3.7 (bullseye), 2.26.3 (trixie) and the current one (sid); see
//! `support::nix_clients`. Each in turn, on one set of hosts and nodes:
//!
//! - closure: a chain of three paths from a peer, signatures required, the
//!   client trusting only that peer's node key;
//! - miss: a path no peer has: the narinfo is a 404 and `nix-store -r` fails
//!   saying that no substituter has it, not with an error;
//! - hit: the same path once a peer has it (the miss left nothing behind);
//! - upstream: a path whose only signature is an upstream key's (a stand-in
//!   for cache.nixos.org's), the client trusting that key alone;
//! - non-reproducible: two peers hold different builds of one path (same
//!   store path, different NarHash); substituted ten times in a row, the
//!   path and the client's narinfo cache deleted in between, it must succeed
//!   every time.
//!
//! One line per client says how each case went; the test fails if any case
//! failed, after all clients ran.

mod support;

use std::io::Write;
use std::process::Output;
use std::time::{Duration, Instant};

use support::nix_clients::{self, Client};
use support::{
    build_chain, copy_to, generate_key, hash_of, nar_hash, realise_args, sign, three_nodes,
    wait_offered, Daemon, Host, Key, Net, LOCAL,
};

/// How long one `nix-store -r` may take.
const LIMIT: Duration = Duration::from_secs(120);
/// Substitutions of the non-reproducible path per client.
const ROUNDS: usize = 10;

/// The hosts, keys and nodes every client's cases share.
struct Lan<'a> {
    /// A peer: closures and hit paths, one build of `random`.
    h1: &'a Host,
    /// A peer: upstream-signed paths, the other build of `random`.
    h2: &'a Host,
    /// Where the clients run, through its node `n3`.
    h3: &'a Host,
    /// Runs no node: builds the paths that no peer has.
    h4: &'a Host,
    k1: Key,
    k2: Key,
    upstream: Key,
    n3: Daemon,
    /// The non-reproducible path, valid on h1 and h2 with different NAR hashes.
    random: String,
}

#[test]
fn every_nix_client_substitutes_through_its_local_node() {
    let Some(net) = Net::new(4) else { return };
    let start = Instant::now();
    let (h1, h2, h3, h4) = (net.host(1), net.host(2), net.host(3), net.host(4));
    let (k1, k2) = (generate_key(h1, "h1-1"), generate_key(h2, "h2-1"));
    let upstream = generate_key(h2, "upstream-1");
    let random = support::build_random(h1, &net.prefix, 4096);
    assert_eq!(
        support::build_random(h2, &net.prefix, 4096),
        random,
        "one derivation"
    );
    assert_ne!(nar_hash(h1, &random), nar_hash(h2, &random), "two outputs");
    let trust_upstream = ["--trusted-key", upstream.public.as_str()];
    let [_n1, _n2, n3] = three_nodes(&net, [&k1, &k2], &[], &trust_upstream);
    let lan = Lan {
        h1,
        h2,
        h3,
        h4,
        k1,
        k2,
        upstream,
        n3,
        random,
    };
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            h3.curl(&[&format!("{LOCAL}/status")])
                .text()
                .contains("peers: 2")
        }),
        "h3's node never heard both peers"
    );

    let mut failures = Vec::new();
    for client in nix_clients::all(h3) {
        let client_start = Instant::now();
        let lone = build_chain(h4, &format!("lone-{}", client.name), 1).remove(0);
        let cases = [
            ("closure", closure(&lan, &client)),
            ("miss", miss(&lan, &client, &lone)),
            ("hit", hit(&lan, &client, &lone)),
            ("upstream signature", upstream_only(&lan, &client)),
            ("non-reproducible", non_reproducible(&lan, &client)),
        ];
        let verdicts: Vec<String> = cases
            .iter()
            .map(|(case, result)| match result {
                Ok(()) => format!("{case} ok"),
                Err(e) => format!("{case} FAILED ({})", e.lines().next().unwrap_or("")),
            })
            .collect();
        report(&format!(
            "{}: {} [{:.0?}]",
            client.label(),
            verdicts.join(", "),
            client_start.elapsed()
        ));
        for (case, result) in cases {
            if let Err(e) = result {
                report(&format!("  {} {case}: {e}", client.label()));
                failures.push(format!("{} {case}", client.label()));
            }
        }
    }
    report(&format!("client matrix: {:.0?} in all", start.elapsed()));
    assert!(failures.is_empty(), "failed: {}", failures.join(", "));
}

/// A chain of three paths built on h1, trusting only h1's node key.
fn closure(lan: &Lan, client: &Client) -> Result<(), String> {
    let chain = build_chain(lan.h1, &format!("closure-{}", client.name), 3);
    for path in &chain {
        wait_offered(lan.h1, path);
    }
    realise(lan, client, &chain[0], &[&lan.k1])?;
    same_nar(lan.h1, lan.h3, &chain)
}

/// `path` is on h4 only, which runs no node: a 404 for the narinfo, and a
/// clean "no substituter" failure of `nix-store -r`.
fn miss(lan: &Lan, client: &Client, path: &str) -> Result<(), String> {
    let narinfo = lan
        .h3
        .curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(path))]);
    if narinfo.status != 404 {
        return Err(format!("narinfo answered {}, not 404", narinfo.status));
    }
    let out = nix_store(client, lan.h3, &realise_args(&[path], &[&lan.k1]));
    if out.status.success() {
        return Err("nix-store -r of a path no peer has succeeded".into());
    }
    // Every version says this when no substituter has the path; an error
    // from the substituter (Nix 2.8 aborts on it, 2.32 and later warn and
    // go on) says "unable to download" or "HTTP error".
    let stderr = String::from_utf8_lossy(&out.stderr);
    let clean = stderr.contains("don't know how to build these paths")
        && !stderr.contains("unable to download")
        && !stderr.contains("HTTP error");
    if !clean {
        return Err(format!("nix-store -r failed otherwise: {}", errors(&out)));
    }
    Ok(())
}

/// `path`, the miss, once h1 has it.
fn hit(lan: &Lan, client: &Client, path: &str) -> Result<(), String> {
    copy_to(lan.h4, lan.h1, path);
    let peer_url = format!(
        "http://{}:12304/peer/{}.narinfo",
        lan.h1.addr4,
        hash_of(path)
    );
    let indexed = support::wait_until(Duration::from_secs(10), || {
        lan.h1.curl(&[&peer_url]).status == 200
    });
    assert!(indexed, "h1's node never served {path}");
    realise(lan, client, path, &[&lan.k1])?;
    same_nar(lan.h4, lan.h3, &[path.to_string()])
}

/// A path on h2 signed by the upstream key, trusting only that key (not
/// h2's node key).
fn upstream_only(lan: &Lan, client: &Client) -> Result<(), String> {
    let path = build_chain(lan.h2, &format!("upstream-{}", client.name), 1).remove(0);
    sign(lan.h2, &lan.upstream, &path);
    wait_offered(lan.h2, &path);
    realise(lan, client, &path, &[&lan.upstream])?;
    same_nar(lan.h2, lan.h3, &[path])
}

/// The non-reproducible path, [`ROUNDS`] times from scratch (deleted, and
/// the client's narinfo cache with it), trusting both peers' keys.
fn non_reproducible(lan: &Lan, client: &Client) -> Result<(), String> {
    let mut failed = Vec::new();
    for round in 1..=ROUNDS {
        let valid = lan
            .h3
            .try_run(&format!("nix-store --check-validity {}", lan.random));
        if valid.status.success() {
            lan.h3.run(&format!("nix-store --delete {}", lan.random));
        }
        let cache = client.cache_dir(lan.h3);
        if cache.exists() {
            std::fs::remove_dir_all(&cache).expect("remove the client's cache");
        }
        if let Err(e) = realise(lan, client, &lan.random, &[&lan.k1, &lan.k2]) {
            failed.push(format!("round {round}: {e}"));
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} of {ROUNDS} failed\n    {}",
        failed.len(),
        failed.join("\n    ")
    ))
}

/// Substitutes `path` on h3 with `client`, trusting `keys`; on failure, the
/// client's errors and what h3's node logged about the path meanwhile.
fn realise(lan: &Lan, client: &Client, path: &str, keys: &[&Key]) -> Result<(), String> {
    let log_before = lan.n3.log().len();
    let out = nix_store(client, lan.h3, &realise_args(&[path], keys));
    if out.status.success() {
        return Ok(());
    }
    let log = lan.n3.log();
    let events = ["found at", "bytes from", "NAR from", "no peer", "next peer"];
    let node: Vec<&str> = log[log_before.min(log.len())..]
        .lines()
        .filter(|l| l.contains(hash_of(path)) && events.iter().any(|e| l.contains(e)))
        .collect();
    Err(format!(
        "nix-store -r {path} failed: {}\n      node: {}",
        errors(&out),
        node.join("\n      node: ")
    ))
}

/// Runs `client`'s `nix-store args…` on `host`.
fn nix_store(client: &Client, host: &Host, args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    support::output_within(client.command(host, "nix-store", &args), LIMIT)
        .unwrap_or_else(|| panic!("{} nix-store {args:?} hung", client.label()))
}

/// Every path of `paths` has the same NAR hash on `to` as on `from`.
fn same_nar(from: &Host, to: &Host, paths: &[String]) -> Result<(), String> {
    for path in paths {
        let (want, got) = (nar_hash(from, path), nar_hash(to, path));
        if want != got {
            return Err(format!("{path}: NAR hash {got}, the peer has {want}"));
        }
    }
    Ok(())
}

/// What a failed Nix command said, without its plan ("these paths will be
/// fetched", the paths, "copying path") and without Nix 2.3's warning about
/// `experimental-features` (see `support::nix_clients`), one line after the
/// other.
fn errors(out: &Output) -> String {
    let noise = |l: &str| {
        l.is_empty()
            || l.starts_with("/nix/store/")
            || l.starts_with("copying path")
            || l.contains("will be fetched")
            || l.contains("unknown setting 'experimental-features'")
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !noise(l))
        .collect();
    lines.join(" / ")
}

/// Writes `line` to stderr past the test harness's output capture, so that
/// CI's log shows each client's result also when the test passes.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The node's own Nix children (`nix-store --serve` for path infos,
/// validity, closures and NARs; `nix config show` or `nix show-config`)
/// work with every Nix: a node on each client's Nix serves its store, its
/// narinfo as Nix records the path, its NAR byte for byte, from byte 0 and
/// from the middle. One line per version says which serve protocol it
/// spoke.
#[test]
fn a_node_serves_its_store_with_every_nix() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "h1-1");
    let paths = build_chain(h1, "own-nix", 3);
    let mut failures = Vec::new();
    for client in nix_clients::all(h1) {
        let args = [
            "--no-broadcast",
            "--private-key",
            key.secret.to_str().unwrap(),
        ];
        let mut daemon = client.spawn_peerix(h1, &args);
        let result = serves(h1, h2, &daemon, &paths);
        let protocol = daemon
            .log()
            .lines()
            .find_map(|l| l.split("speaks protocol ").nth(1).map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        report(&format!(
            "node on {}: serve protocol {protocol}, {}",
            client.label(),
            match &result {
                Ok(()) => "narinfo ok, NAR ok".to_string(),
                Err(e) => format!("FAILED ({e})"),
            }
        ));
        if let Err(e) = result {
            failures.push(format!("{}: {e}\n{}", client.label(), daemon.log()));
        }
        daemon.kill();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `h1`'s node (`daemon`) serves `paths` to `h2` as `h1`'s Nix knows them.
fn serves(h1: &Host, h2: &Host, daemon: &Daemon, paths: &[String]) -> Result<(), String> {
    for path in paths {
        let hash = hash_of(path);
        let info = h2.curl(&[&daemon.url(&format!("/peer/{hash}.narinfo"))]);
        if info.status != 200 {
            return Err(format!("narinfo of {path}: {}", info.status));
        }
        let want = nar_hash(h1, path);
        if !info.text().contains(&format!("NarHash: {want}\n")) {
            return Err(format!("narinfo of {path} says {}", info.text()));
        }
        let nar = h2.curl(&[&daemon.url(&format!("/peer/nar/{hash}.nar"))]);
        let dump = h1
            .cmd("nix-store", &["--dump", path])
            .output()
            .map_err(|e| e.to_string())?
            .stdout;
        if nar.status != 200 || nar.body != dump {
            return Err(format!(
                "NAR of {path}: {} ({} bytes)",
                nar.status,
                nar.body.len()
            ));
        }
        let half = dump.len() / 2;
        let tail = h2.curl(&[
            "-r",
            &format!("{half}-"),
            &daemon.url(&format!("/peer/nar/{hash}.nar")),
        ]);
        if tail.status != 206 || tail.body != dump[half..] {
            return Err(format!("NAR of {path} from byte {half}: {}", tail.status));
        }
    }
    Ok(())
}
