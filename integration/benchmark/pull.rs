//! Section `pull` (issue 17): four clients substituting one closure at the
//! same moment from an upstream cache (a stand-in for cache.nixos.org:
//! `support::upstream_cache`, HTTPS, xz, its uplink limited with `tc`),
//! through their nodes, which fetch each path once for the LAN, beside
//! plain Nix pointed straight at the same upstream.

use std::thread;

use crate::harness::*;
use crate::report::*;
use crate::support::upstream_cache::UpstreamCache;
use crate::support::{generate_key, nix_build, wait_until, Daemon, Host, Key, Net};

/// The upstream's uplink, Mbit/s.
const UPLINK_MBIT: u32 = 50;

/// Upstream bytes, times and misses with and without the nodes.
pub(crate) fn pull(m: Mode) -> Vec<Row> {
    let net = Net::new(5).expect("test hosts");
    let up = net.host(1);
    let clients: Vec<&Host> = (2..=5).map(|i| net.host(i)).collect();
    let ukey = generate_key(up, "upstream-1");
    let cache = UpstreamCache::start(up);
    let (leaves, bytes) = m.pick((19, 50_000), (99, 400_000));
    let top = closure(up, leaves, bytes);
    let count = leaves + 1;
    let url = cache.publish(up, "xz", "xz", &ukey, &[&top]);
    let compressed = cache.nar_bytes("xz") as f64;
    up.limit_rate(UPLINK_MBIT);
    let ca = cache.ca.to_str().unwrap().to_string();

    let (mut plain_ratio, mut ratio) = (Vec::new(), Vec::new());
    let (mut plain_one, mut one, mut last_of_four) = (Vec::new(), Vec::new(), Vec::new());
    let mut plain_four = Vec::new();
    for round in 0..m.pick(1, 3) {
        // Plain Nix, straight at the upstream: one alone, then four at once.
        let t = |h: &Host, tag: &str| substitute(h, &top, &url, &ca, &ukey, count, tag);
        gc(&clients);
        plain_one.push(t(clients[0], &format!("plain1-{round}")));
        let sent = cache.nar_sends_total();
        let times = at_once(&clients, |h| t(h, &format!("plain4-{round}")));
        plain_four.push(max(&times));
        plain_ratio.push((cache.nar_sends_total() - sent) as f64 / compressed);

        // Through the nodes, new each time (nothing cached, nothing spooled).
        let nodes = pulling_nodes(&clients, &url, &ca, &ukey);
        let local = "http://127.0.0.1:12304";
        let t = |h: &Host, tag: &str| substitute(h, &top, local, &ca, &ukey, count, tag);
        // Every store collected: the closure is on no peer.
        gc(&clients);
        one.push(t(clients[0], &format!("one-{round}")));
        drop(nodes);
        let nodes = pulling_nodes(&clients, &url, &ca, &ukey);
        let sent = cache.nar_sends_total();
        let times = at_once(&clients, |h| t(h, &format!("four-{round}")));
        last_of_four.push(max(&times));
        ratio.push((cache.nar_sends_total() - sent) as f64 / compressed);
        drop(nodes);
    }

    // Misses: the node asks its peers, then the upstream; beside the
    // upstream's own answer time to a client on a kept connection.
    let _nodes = pulling_nodes(&clients, &url, &ca, &ukey);
    let misses = miss_latencies(clients[0], m.pick(20, 200));
    let upstream_rtt = upstream_answer_ms(clients[0], &url, &ca, m.pick(20, 200));

    let label = format!("{count}-path closure, {:.0} MB xz", compressed / 1e6);
    vec![
        Row::new(
            "pull_upstream_bytes_x",
            &format!("upstream bytes sent for 4 clients at once, × the {label}"),
            "x",
            ratio,
        )
        .baseline("plain Nix, 4 clients straight at the upstream", plain_ratio)
        .target(Target::AtMost(1.1)),
        Row::new(
            "pull_four_last_s",
            &format!("the last of 4 clients at once done, through their nodes ({UPLINK_MBIT} Mbit/s upstream)"),
            "s",
            last_of_four,
        )
        .baseline("one client alone through its node", one.clone())
        .target(Target::TimesBaseline(1.3))
        .note(&format!("plain Nix, 4 at once: {:.1} s", median(&plain_four))),
        Row::new(
            "pull_one_s",
            "one client alone through its node",
            "s",
            one,
        )
        .baseline("plain Nix straight at the upstream", plain_one)
        .target(Target::TimesBaseline(1.1)),
        Row::new(
            "pull_miss_ms",
            "narinfo miss at peers and upstream (3 pulling peers)",
            "ms",
            misses,
        )
        .baseline("the upstream's answer to a narinfo (request to first byte)", upstream_rtt)
        .target(Target::BaselinePlus(2.0)),
    ]
}

/// A closure of `leaves` paths of `bytes` random bytes each and a top path
/// referring to them all, built on `host`; the top path.
fn closure(host: &Host, leaves: usize, bytes: usize) -> String {
    let tag = format!("{}{}", host.netns, next_id());
    let expr = format!(
        r#"
let
  mk = i: derivation {{
    name = "pull-bench-${{toString i}}-{tag}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/usr/bin:/bin; head -c {bytes} /dev/urandom > $out" ];
  }};
  leaves = builtins.genList mk {leaves};
in derivation {{
  name = "pull-bench-top-{tag}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "export PATH=/usr/bin:/bin; echo ${{toString leaves}} > $out" ];
}}
"#
    );
    nix_build(host, &format!("pull-bench-{tag}"), &expr, &[])
}

/// A node on each host pulling through `url`, trusting `key`, the test CA
/// in `NIX_SSL_CERT_FILE`; once each knows the others.
fn pulling_nodes(hosts: &[&Host], url: &str, ca: &str, key: &Key) -> Vec<Daemon> {
    let nodes: Vec<Daemon> = hosts
        .iter()
        .map(|h| {
            let state = h.dir.join(format!("state-{}", next_id()));
            let args = [
                "--trusted-key",
                &key.public,
                "--upstream",
                url,
                "--state-dir",
                state.to_str().unwrap(),
            ];
            let env = [("RUST_LOG", "info"), ("NIX_SSL_CERT_FILE", ca)];
            h.spawn_peerix_with(&[], &env, &args)
        })
        .collect();
    for h in hosts {
        let mut status = String::new();
        let known = wait_until(std::time::Duration::from_secs(40), || {
            status = h.curl(&[&format!("http://{LOCAL}/status")]).text();
            status.matches("pulls from upstreams").count() >= hosts.len() - 1
        });
        assert!(
            known,
            "{} never heard the other pulling nodes:\n{status}",
            h.name
        );
    }
    nodes
}

/// Seconds Nix 2.8's `nix-store -r top` took on `host` from `url` (its
/// store garbage-collected, see [`gc`]), its narinfo cache new; checks
/// that the `count` paths arrived.
fn substitute(
    host: &Host,
    top: &str,
    url: &str,
    ca: &str,
    key: &Key,
    count: usize,
    tag: &str,
) -> f64 {
    host.run("nix-store --gc > /dev/null 2>&1");
    let xdg = host.dir.join(format!("xdg-{tag}"));
    let t = timed_in(
        host,
        &format!(
            "NIX_SSL_CERT_FILE={ca} XDG_CACHE_HOME={} nix-store -r {top} --option substituters {url} \
             --option trusted-public-keys '{}' --option narinfo-cache-negative-ttl 0",
            xdg.display(),
            key.public
        ),
    );
    let got = host.run(&format!("nix-store -qR {top} | wc -l"));
    assert_eq!(got, count.to_string(), "the closure from {url}");
    t.real
}

/// Garbage-collects the stores of `hosts`.
fn gc(hosts: &[&Host]) {
    for h in hosts {
        h.run("nix-store --gc > /dev/null 2>&1");
    }
}

/// `f` on every host at the same moment (their stores collected first);
/// what each returned.
fn at_once(hosts: &[&Host], f: impl Fn(&Host) -> f64 + Sync) -> Vec<f64> {
    gc(hosts);
    thread::scope(|s| {
        let runs: Vec<_> = hosts.iter().map(|h| s.spawn(|| f(h))).collect();
        runs.into_iter()
            .map(|r| r.join().expect("a client"))
            .collect()
    })
}

/// The upstream's time from request to first byte for absent narinfo,
/// `n` requests on one kept connection (curl's `time_starttransfer -
/// time_pretransfer` of each), in ms.
fn upstream_answer_ms(host: &Host, url: &str, ca: &str, n: usize) -> Vec<f64> {
    let mut rng = crate::support::Xorshift::new();
    let urls: Vec<String> = (0..n)
        .map(|_| format!("{url}/{}.narinfo", rng.hash()))
        .collect();
    let mut args = vec!["-s".to_string(), "--cacert".into(), ca.into()];
    for u in &urls {
        args.extend([
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{time_pretransfer} %{time_starttransfer}\\n".into(),
            u.clone(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = host.cmd("curl", &args).output().expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((b.parse::<f64>().ok()? - a.parse::<f64>().ok()?) * 1000.0)
        })
        .collect()
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::MIN, f64::max)
}

fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}
