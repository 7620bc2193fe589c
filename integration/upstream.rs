//! The local node as the local Nix's upstream (`src/upstream.rs`), with
//! real Nix in network namespaces: the NAR that Nix gets is always the one
//! its narinfo names, whatever the peers hold.
//!
//! Covers: NAR URLs that name the NarHash, and a peer with another NAR for
//! the same path never serving it (404, and Nix moves on); the old URL form
//! served only when the peers agree; a peer killed -9 half way through a
//! 256 MiB NAR, another going on from the same byte while Nix receives
//! one transfer; `Range` on the peer and local NAR routes; HEAD answered
//! without a stream; narinfos that Nix would choke on (a garbage CA, a
//! compressed NAR) skipped for the next peer.

mod support;

use std::time::{Duration, Instant};

use support::{
    build_chain, copy_to, generate_key, hash_of, local_node, metric, metrics, nar_hash,
    nar_under_way, nar_went_on, nix_clients, node, realise_args, three_nodes, wait_offered, Daemon,
    Host, Net, LOCAL,
};

/// The nix32 digest of a NAR hash as `nix-store -q --hash` prints it.
fn digest(hash: &str) -> &str {
    hash.strip_prefix("sha256:").unwrap_or(hash)
}

/// `sha256sum` of `nix-store --dump path` on `host`, skipping `skip` bytes.
fn dump_sha256(host: &Host, path: &str, skip: u64) -> String {
    host.run(&format!(
        "nix-store --dump {path} | tail -c +{} | sha256sum | cut -d' ' -f1",
        skip + 1
    ))
}

/// `sha256sum` of a body curl got.
fn body_sha256(host: &Host, body: &[u8]) -> String {
    let file = host.dir.join(format!("body-{}", body.len()));
    std::fs::write(&file, body).unwrap();
    host.run(&format!("sha256sum < {} | cut -d' ' -f1", file.display()))
}

#[test]
fn a_nar_is_served_only_by_peers_with_the_nar_hash_its_narinfo_names() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "shared-1");
    // One derivation built on h1 and on h2: one store path, two NARs.
    let path = support::build_random(h1, &net.prefix, 4096);
    assert_eq!(support::build_random(h2, &net.prefix, 4096), path);
    let (nar1, nar2) = (nar_hash(h1, &path), nar_hash(h2, &path));
    assert_ne!(nar1, nar2, "the builds differ");
    let [n1, n2, n3] = three_nodes(&net, [&key, &key], &[], &["--timeout", "1000"]);
    let hash = hash_of(&path);

    // The narinfo names its NAR by NarHash; that URL is the same NAR.
    let narinfo = h3.curl(&[&format!("{LOCAL}/{hash}.narinfo")]).text();
    let served = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("NarHash: "))
        .expect("a NarHash")
        .to_string();
    let url = format!("nar/{}-{hash}.nar", digest(&served));
    assert!(narinfo.contains(&format!("URL: {url}\n")), "{narinfo}");
    let nar = h3.curl(&[&format!("{LOCAL}/{url}")]);
    assert_eq!(nar.status, 200);
    let owner = if served == nar1 { h1 } else { h2 };
    assert_eq!(body_sha256(h3, &nar.body), dump_sha256(owner, &path, 0));

    // The old URL form: the peers disagree, so it is not served.
    assert_eq!(h3.curl(&[&format!("{LOCAL}/nar/{hash}.nar")]).status, 404);
    // Agreeing peers: a path copied from h1 to h2 is served in the old form.
    let same = build_chain(h1, "agree", 1).remove(0);
    copy_to(h1, h2, &same);
    wait_offered(h1, &same);
    wait_offered(h2, &same);
    let old_form = h3.curl(&[&format!("{LOCAL}/nar/{}.nar", hash_of(&same))]);
    assert_eq!(old_form.status, 200, "{}", n3.log());

    // Nix on h3 keeps the narinfo (as it does for 30 days), then the peer
    // that served it goes away; the other one has another NAR: 404, never
    // the other NAR.
    let info = h3.run(&format!(
        "nix path-info --json --store {LOCAL} --option trusted-public-keys '{}' {path}",
        key.public
    ));
    // The NAR URL of the narinfo Nix keeps names the NarHash of one build.
    let url = info
        .split("\"url\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no url in {info}"))
        .to_string();
    let cached_h1 = url.contains(digest(&nar1));
    assert!(cached_h1 || url.contains(digest(&nar2)), "{info}");
    let (mut victim, survivor) = match cached_h1 {
        true => (n1, (h2, n2)),
        false => (n2, (h1, n1)),
    };
    victim.kill();
    let log_before = n3.log().len();
    assert_eq!(h3.curl(&[&format!("{LOCAL}/{url}")]).status, 404);
    let out = h3.try_run(&format!(
        "nix-store -r {path} --option substituters {LOCAL} \
         --option trusted-public-keys '{}' --option narinfo-cache-positive-ttl 3600",
        key.public
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("hash mismatch"), "{stderr}");
    assert!(!out.status.success(), "no peer has the NAR it was promised");
    let log = n3.log();
    let asked: Vec<&str> = (log[log_before..].lines())
        .filter(|l| l.contains(&format!("GET /{url}")))
        .collect();
    assert!(
        !asked.is_empty() && asked.iter().all(|l| l.ends_with(": 404")),
        "{log}"
    );
    // With the surviving peer as a second substituter, Nix moves on to it.
    let (other, _other_node) = survivor;
    let out = h3.try_run(&format!(
        "nix-store -r {path} --option substituters '{LOCAL} http://{}:12304/peer' \
         --option trusted-public-keys '{}' --option narinfo-cache-positive-ttl 3600",
        other.addr4, key.public
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(nar_hash(h3, &path), nar_hash(other, &path));
}

/// A 256 MiB NAR held by two peers; the one streaming it to the local node
/// is killed -9 part way: the other goes on from the same byte, and Nix
/// (2.8, then the current one) gets the path from its one request.
#[test]
fn a_peer_killed_mid_nar_is_replaced_at_the_same_byte() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "shared-1");
    let path = support::build_random(h1, &format!("{}-big", net.prefix), 256 << 20);
    copy_to(h1, h2, &path);
    let want = dump_sha256(h1, &path, 0);
    // 256 MiB at 400 Mbit/s take 5 s: time to kill the peer half way.
    h1.limit_rate(400);
    h2.limit_rate(400);
    let mut clients = vec![None];
    clients.extend(nix_clients::current().map(Some));
    for client in clients {
        let label = client.as_ref().map_or("nix 2.8".into(), |c| c.label());
        // Kill the peer that streams the NAR, once well under way.
        let mut way = nar_under_way(&net, &key, &path, &[], client.as_ref());
        std::process::Command::new("kill")
            .args(["-9", &way.peers[way.streaming].pid().to_string()])
            .status()
            .expect("kill -9");
        let (broke, resumed, offset) = nar_went_on(&mut way.nix, &way.n3, &label);
        // One transfer: Nix asked for the NAR once; the node switched peers.
        let n3 = &way.n3;
        assert_eq!(n3.log_lines("GET /nar/").len(), 1, "{label}: {}", n3.log());
        eprintln!("{label}: {broke}\n{resumed}");
        assert!(offset > 0 && offset < 256 << 20, "{resumed}");
        assert_eq!(dump_sha256(h3, &path, 0), want, "{label}");
        drop(way);
        h3.run(&format!("nix-store --delete {path}"));
    }
}

#[test]
fn ranges_are_the_tail_of_the_nar_and_head_opens_no_stream() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "h1-1");
    let path = support::build_random(h1, &net.prefix, 1 << 20);
    let n1 = node(h1, &key, &[], &[]);
    let n2 = node(h2, &generate_key(h2, "h2-1"), &[&key], &[]);
    let hash = hash_of(&path);
    let size: u64 = h1
        .run(&format!("nix-store -q --size {path}"))
        .parse()
        .unwrap();
    let local_url = format!("{LOCAL}/nar/{}-{hash}.nar", digest(&nar_hash(h1, &path)));
    let peer_url = format!("http://{}:12304/peer/nar/{hash}.nar", h1.addr4);

    // HEAD on the local route: the length, from the narinfo; no stream.
    let head = h2.curl(&["-I", &local_url]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    assert!(n1.log_lines("GET /peer/nar/").is_empty(), "{}", n1.log());

    for url in [&peer_url, &local_url] {
        for offset in [1, 4096, size / 2, size - 1] {
            let got = h2.curl(&["-r", &format!("{offset}-"), url]);
            assert_eq!(got.status, 206, "{url} from {offset}: {}", n2.log());
            assert_eq!(
                got.header("content-range"),
                Some(format!("bytes {offset}-{}/{size}", size - 1).as_str())
            );
            assert_eq!(got.body.len() as u64, size - offset);
            assert_eq!(body_sha256(h2, &got.body), dump_sha256(h1, &path, offset));
        }
        assert_eq!(h2.curl(&["-r", &format!("{size}-"), url]).status, 416);
    }
}

/// Narinfos validly signed but that Nix would choke on: a garbage CA, a
/// compressed NAR. The peers serving them answer first; they are skipped,
/// and Nix gets the path from the next peer.
#[test]
fn narinfos_nix_would_choke_on_are_skipped_for_the_next_peer() {
    let Some(net) = Net::new(4) else { return };
    let (h1, h2, h3, h4) = (net.host(1), net.host(2), net.host(3), net.host(4));
    let upstream = generate_key(h1, "upstream-1");
    let path = build_chain(h1, "choke", 1).remove(0);
    support::sign(h1, &upstream, &path);
    let cache = h1.dir.join("cache");
    h1.run(&format!(
        "nix copy --to 'file://{}?compression=none' {path}",
        cache.display()
    ));
    let v1 = |host: &Host, extra: &[&str]| support::v1_peer(host, &cache, extra);
    // Quick liars, and an honest peer that answers late. As extra hosts
    // (which may be original nodes, silent on a miss) they are waited for
    // the whole timeout, however long after the node's start Nix asks.
    let _ca = v1(h1, &["--set", "CA: garbage:xyz"]);
    let _xz = v1(h2, &["--set", "Compression: xz"]);
    let _honest = v1(h4, &["--delay", "200"]);
    let mut flags = vec!["--timeout".to_string(), "2000".to_string()];
    for host in [h1, h2, h4] {
        flags.extend(["--extra-host".to_string(), host.addr4.to_string()]);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let n3 = local_node(&net, &[&upstream], &flags);
    std::thread::sleep(Duration::from_millis(300));

    let start = Instant::now();
    let out = h3.try_run(&format!(
        "nix-store -r {path} --option substituters {LOCAL} --option trusted-public-keys '{}'",
        upstream.public
    ));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        n3.log()
    );
    eprintln!(
        "substituted past two bad narinfos in {:.1?}",
        start.elapsed()
    );
    let log = n3.log();
    assert!(
        log.contains("garbage") && log.contains("trying the next peer"),
        "{log}"
    );
    assert!(log.contains("compressed (xz)"), "{log}");
    assert!(
        log.contains(&format!("{}: NAR of", hash_of(&path))),
        "{log}"
    );
    assert!(log.contains(&format!("from {}:12304", h4.addr4)), "{log}");
}

/// Nix asks for a path's narinfo and then its NAR: the node asks the peers
/// once (one query, one narinfo fetch), and reuses its connections to a
/// peer from request to request.
#[test]
fn each_path_costs_one_query_and_one_narinfo_fetch_over_reused_connections() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "h1-1");
    let chain = build_chain(h1, "once", 10);
    let n1 = node(h1, &key, &[], &[]);
    let n2 = node(h2, &generate_key(h2, "h2-1"), &[&key], &[]);
    let args = realise_args(&[&chain[0]], &[&key]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = support::output_within(h2.cmd("nix-store", &args), Duration::from_secs(120))
        .expect("nix-store -r finished");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &chain {
        let hash = hash_of(path);
        // "asked for H" (to everyone) or "asked N peers that may have H".
        let asked: Vec<String> = n2
            .log_lines("discovery: asked ")
            .into_iter()
            .filter(|l| l.contains(&format!(" {hash} ")))
            .collect();
        let fetched = n1.log_lines(&format!("GET /peer/{hash}.narinfo"));
        let nars = n1.log_lines(&format!("GET /peer/nar/{hash}.nar"));
        assert_eq!(
            (asked.len(), fetched.len(), nars.len()),
            (1, 1, 1),
            "{path}:\n{}",
            n2.log()
        );
    }
    // The peer saw every request come from a few connections of the node.
    let requests = n1.log_lines("GET /peer/");
    // h2's connections, over IPv4 or IPv6 (the only client of h1's node).
    let ports: std::collections::BTreeSet<String> = requests
        .iter()
        .filter_map(|l| l.split(" from Some(").nth(1))
        .filter_map(|rest| rest.split(')').next().map(str::to_owned))
        .collect();
    eprintln!(
        "{} requests of the node reached the peer over {} connections",
        requests.len(),
        ports.len()
    );
    assert!(
        !ports.is_empty() && ports.len() <= 8,
        "{ports:?}\n{}",
        n1.log()
    );
}

/// Two peers have the same large NARs: one behind 20 Mbit/s, one
/// unlimited. Once the node has seen the slow one's pace, the next NARs
/// come from the fast one, though the slow one answers discovery first
/// every time: the fast one is frozen (SIGSTOP) while the narinfo is asked
/// for and until that query is over, so only the slow one's "have" is
/// remembered, and that is offered first in the NAR's own discovery round
/// (the fast one's comes a moment later).
#[test]
fn the_fastest_peer_serves_a_nar_once_paces_are_learnt() {
    let Some(net) = Net::new(3) else { return };
    let (slow, fast, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(slow, "shared-1");
    let paths: Vec<String> = (0..5)
        .map(|i| support::build_random(slow, &format!("{}-pace{i}", net.prefix), 12 << 20))
        .collect();
    for p in &paths {
        copy_to(slow, fast, p);
    }
    slow.limit_rate(20);
    let _slow_node = node(slow, &key, &[], &[]);
    let n3 = local_node(&net, &[&key], &[]);
    // The narinfo and the NAR, `frozen` (if any) answering second.
    let fetch = |path: &str, frozen: Option<&Daemon>| -> String {
        frozen.inspect(|d| d.signal("STOP"));
        let info = h3
            .curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(path))])
            .text();
        let url = info
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .unwrap_or_else(|| panic!("no URL: {info}"))
            .to_string();
        if let Some(frozen) = frozen {
            // The narinfo's query ends (--timeout 500) unanswered by it.
            std::thread::sleep(Duration::from_millis(700));
            frozen.signal("CONT");
        }
        let before = n3.log().len();
        let nar = h3.curl(&[&format!("{LOCAL}/{url}")]);
        assert_eq!(nar.status, 200);
        assert_eq!(body_sha256(h3, &nar.body), dump_sha256(slow, path, 0));
        let log = n3.log();
        let line = (log[before..].lines())
            .find(|l| l.contains(": NAR of"))
            .unwrap_or_else(|| panic!("{log}"))
            .to_string();
        line
    };
    // Where a line says the NAR came from: the address a peer answered
    // discovery from, IPv4, IPv6 or link-local IPv6.
    let from = |line: &str, host: &Host| {
        let ll =
            host.run("ip -o -6 addr show dev eth0 scope link | awk '{print $4}' | cut -d/ -f1");
        let tail = line.rsplit(" from ").next().unwrap_or("");
        tail.contains(&host.addr4.to_string())
            || tail.contains(&format!("[{}]", host.addr6))
            || tail.contains(&format!("[{ll}%"))
    };
    // The slow peer alone: its pace is learnt.
    wait_offered(slow, &paths[0]);
    let line = fetch(&paths[0], None);
    assert!(from(&line, slow), "{line}");
    let fast_node = node(fast, &key, &[], &[]);
    wait_offered(fast, &paths[1]);
    for p in &paths[1..] {
        let line = fetch(p, Some(&fast_node));
        assert!(from(&line, fast), "{line}\n{}", n3.log());
    }
}

/// A large NAR that two peers hold comes from both at once, in stripes;
/// one of them freezes (SIGSTOP) half way: after the stall limit its
/// stripe is taken over by the other, and Nix gets the NAR its narinfo
/// names (Nix checks the NarHash too).
#[test]
fn a_stalled_striping_peer_loses_its_stripe_and_the_nar_still_matches() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "shared-1");
    let path = support::build_random(h1, &format!("{}-stripe", net.prefix), 96 << 20);
    copy_to(h1, h2, &path);
    let want = dump_sha256(h1, &path, 0);
    // 96 MiB over two 100 Mbit/s links: about 4 s.
    h1.limit_rate(100);
    h2.limit_rate(100);
    let mut way = nar_under_way(&net, &key, &path, &[], None);
    let ([n1, n2], n3) = (&way.peers, &way.n3);
    assert!(
        n3.log_lines("from 2 peers at once").len() == 1,
        "{}",
        n3.log()
    );
    n2.signal("STOP");
    // Until Nix is done (the check below then waits no more), n2 is frozen.
    support::wait_until(Duration::from_secs(120), || way.nix.try_wait().is_some());
    n2.signal("CONT");
    let (broke, taken, _) = nar_went_on(&mut way.nix, n3, "nix-store");
    // The stripe went on from the other peer (at the byte it broke at).
    let stalled = broke
        .split(" from ")
        .nth(1)
        .and_then(|r| r.split(' ').next());
    let next = taken
        .split(" from ")
        .nth(1)
        .and_then(|r| r.split(' ').next());
    assert!(stalled.is_some() && stalled != next, "{broke:?} {taken:?}");
    assert_eq!(dump_sha256(h3, &path, 0), want);
    // The NAR came in once: Nix asked once, both peers served a stripe.
    assert_eq!(n3.log_lines("GET /nar/").len(), 1, "{}", n3.log());
    assert!(n1.log().contains("sent the NAR"), "{}", n1.log());
    // On /metrics: one striped NAR, and h1's pace learnt (once the stripe
    // is dropped, just after its last byte), by its node id.
    let striped = metric(&metrics(h3), "peerix_nar_striped_total");
    assert_eq!(striped, Some(1.0), "{}", metrics(h3));
    let status = h1.curl(&[&format!("{LOCAL}/status")]).text();
    let id = (status.lines())
        .find_map(|l| l.strip_prefix("node "))
        .unwrap_or_else(|| panic!("no node id in {status}"));
    let pace = format!("peerix_peer_pace_bytes_per_second{{node=\"{id}\"}}");
    let learnt = support::wait_until(Duration::from_secs(10), || {
        metric(&metrics(h3), &pace).is_some_and(|p| p > 0.0)
    });
    assert!(learnt, "no {pace} in\n{}", metrics(h3));
}
