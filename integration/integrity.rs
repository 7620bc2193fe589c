//! Nothing a peer or a disk does puts a wrong byte into Nix or holds a
//! node (issue 16), with real Nix and nodes in network namespaces.
//!
//! Covers: a peer frozen between a NAR request and its reply head (the
//! NAR comes from another peer within the stall deadline); a store file
//! that grew after Nix registered its path (its NAR is cut, and the serve
//! children go on serving exact NARs); a store file overwritten in place
//! with as many bytes (Nix never gets the whole wrong NAR, and its next try
//! gets the path from a good peer); a metadata child that died (replaced
//! before a narinfo is answered 404); `Range` requests that each make the
//! node read and drop most of a NAR, and stripe requests whose sender
//! drops the other stripes' bytes (both refused past one budget per
//! source); a NAR that failed its NarHash right after a segment shorter
//! than tiny_http's buffer, resumed by Nix (refused, never completed from
//! another peer with the wrong prefix); a peer trickling a NAR a byte at a
//! time (passed over, another goes on).

mod support;

use std::time::{Duration, Instant};

use support::{
    build_chain, copy_to, generate_key, hash_of, local_node, nar_hash, node, realise_args,
    three_nodes, v1_peer, wait_offered, Host, Net, DEFAULT_PORT, LOCAL,
};

/// `sha256sum` of `nix-store --dump path` on `host`.
fn dump_sha256(host: &Host, path: &str) -> String {
    host.run(&format!(
        "nix-store --dump {path} | sha256sum | cut -d' ' -f1"
    ))
}

/// `sha256sum` of bytes, computed in `host`.
fn sha256(host: &Host, body: &[u8]) -> String {
    let file = host
        .dir
        .join(format!("body-{}-{}", body.len(), std::process::id()));
    std::fs::write(&file, body).unwrap();
    let sum = host.run(&format!("sha256sum < {} | cut -d' ' -f1", file.display()));
    let _ = std::fs::remove_file(&file);
    sum
}

/// The NAR URL of the narinfo `host`'s node hands its Nix for `path`.
fn local_nar_url(host: &Host, path: &str) -> String {
    let narinfo = host
        .curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(path))])
        .text();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap_or_else(|| panic!("no URL in {narinfo:?}"));
    format!("{LOCAL}/{url}")
}

#[test]
fn a_peer_frozen_before_its_reply_head_loses_the_nar_to_another() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "frozen-1");
    let path = support::build_random(h1, &net.prefix, 2 << 20);
    copy_to(h1, h2, &path);
    let [n1, n2, n3] = three_nodes(&net, [&key, &key], &[], &[]);
    wait_offered(h1, &path);
    wait_offered(h2, &path);

    // The narinfo comes from one peer, over a connection the node keeps;
    // then that peer freezes (a laptop's lid closes) before the NAR.
    let url = local_nar_url(h3, &path);
    let hash = hash_of(&path);
    let line = (n3.log().lines())
        .find(|l| l.contains(&format!("{hash}: found at http://")))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no 'found at' line:\n{}", n3.log()));
    let frozen = match line.contains(&h1.addr4.to_string()) {
        true => &n1,
        false => &n2,
    };
    frozen.signal("STOP");
    let start = Instant::now();
    let nar = h3.curl(&["--max-time", "30", &url]);
    let took = start.elapsed();
    frozen.signal("CONT");
    eprintln!("the NAR came in {took:.1?} with a frozen peer");
    assert_eq!((nar.exit, nar.status), (0, 200), "{}", n3.log());
    assert_eq!(sha256(h3, &nar.body), dump_sha256(h1, &path));
    // Within the stall deadline (10 s), not the 30 s curl allowed.
    assert!(took < Duration::from_secs(10), "{took:?}\n{}", n3.log());
}

#[test]
fn a_store_file_that_grew_never_shifts_the_serve_pool() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "grown-1");
    let grown = support::build_random(h1, &format!("{}g", net.prefix), 300_000);
    let others: Vec<String> = (0..3)
        .map(|i| support::build_random(h1, &format!("{}o{i}", net.prefix), 200_000 + i))
        .collect();
    let n1 = node(h1, &key, &[], &[]);
    let nar_of = |path: &str| {
        h2.curl(&[&format!(
            "http://{}:{DEFAULT_PORT}/peer/nar/{}.nar",
            h1.addr4,
            hash_of(path)
        )])
    };
    // Warm: the serve child that will stream the grown file's NAR.
    assert_eq!(nar_of(&others[0]).status, 200);

    // The file grows after Nix registered its path.
    let file = h1.outside(&grown);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&[b'x'; 5000]);
    std::fs::write(&file, &bytes).unwrap();
    let cut = nar_of(&grown);
    assert_ne!(cut.exit, 0, "a NAR longer than its NarSize is cut");
    assert!(
        n1.log().contains("did not end at its recorded size"),
        "{}",
        n1.log()
    );

    // Every NAR after it, from the same pool, is exact.
    for path in &others {
        let nar = nar_of(path);
        assert_eq!((nar.exit, nar.status), (0, 200), "{}", n1.log());
        assert_eq!(sha256(h2, &nar.body), dump_sha256(h1, path), "{path}");
    }
}

#[test]
fn a_nar_that_does_not_match_its_nar_hash_never_reaches_nix_whole() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "overwritten-1");
    let path = support::build_random(h1, &net.prefix, 3 << 20);
    copy_to(h1, h2, &path);
    support::sign(h1, &key, &path);
    support::sign(h2, &key, &path);
    // h1's copy is overwritten in place, as many bytes, after Nix
    // registered it: its NAR no longer matches its NarHash.
    let file = h1.outside(&path);
    let mut bytes = std::fs::read(&file).unwrap();
    for b in &mut bytes[1000..1100] {
        *b = !*b;
    }
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(nar_hash(h1, &path), nar_hash(h2, &path));

    let n1 = node(h1, &key, &[], &[]);
    let n3 = local_node(&net, &[&key], &[]);
    wait_offered(h1, &path);
    let args = realise_args(&[&path], &[&key]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = support::output_within(h3.cmd("nix-store", &args), Duration::from_secs(120))
        .expect("nix-store -r finished");
    assert!(!first.status.success(), "Nix took a wrong NAR");
    let valid = h3.try_run(&format!("nix-store --check-validity {path}"));
    assert!(!valid.status.success(), "the wrong NAR is in h3's store");
    let log = n3.log();
    assert!(log.contains("does not match its NarHash"), "{log}");
    assert!(log.contains(&h1.addr4.to_string()), "{log}");

    // A good peer comes; Nix's next try gets the path from it.
    let n2 = node(h2, &key, &[], &[]);
    wait_offered(h2, &path);
    let second = support::output_within(h3.cmd("nix-store", &args), Duration::from_secs(120))
        .expect("nix-store -r finished");
    assert!(
        second.status.success(),
        "{}\n{}\nh2:\n{}\nh1:\n{}",
        String::from_utf8_lossy(&second.stderr),
        n3.log(),
        n2.log(),
        n1.log()
    );
    h3.run(&format!("nix-store --verify-path {path}"));
}

#[test]
fn a_dead_metadata_child_is_replaced_before_a_narinfo_is_refused() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "meta-1");
    let first = build_chain(h1, "meta-a", 1).remove(0);
    let second = build_chain(h1, "meta-b", 1).remove(0);
    let n1 = node(h1, &key, &[], &[]);
    let narinfo = |path: &str| {
        h2.curl(&[&format!(
            "http://{}:{DEFAULT_PORT}/peer/{}.narinfo",
            h1.addr4,
            hash_of(path)
        )])
        .status
    };
    assert_eq!(narinfo(&first), 200);
    // The metadata child dies (OOM killer, a Nix upgrade, …).
    let children = n1.children();
    let meta: Vec<u32> = (children.iter())
        .filter(|(_, cmd)| cmd == "nix-store")
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(meta.len(), 1, "{children:?}");
    std::process::Command::new("kill")
        .args(["-KILL", &meta[0].to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(narinfo(&second), 200, "{}", n1.log());
}

/// `Range` requests, and stripe requests (`X-Peerix-Stripe`, whose sender
/// serializes the whole NAR and drops the other stripes' bytes), each make
/// the node read and drop most of a NAR: every byte skipped is charged to
/// the source, whatever the header (issue 24, item 9: stripes were never
/// charged, and a stranger had a node drop 4 GiB).
#[test]
fn range_and_stripe_requests_skip_bytes_within_a_budget_per_source() {
    let Some(net) = Net::new(4) else { return };
    let (h1, h2, h3, h4) = (net.host(1), net.host(2), net.host(3), net.host(4));
    let key = generate_key(h1, "range-1");
    let size: u64 = 256 << 20;
    let path = support::build_random(h1, &net.prefix, size);
    let n1 = node(h1, &key, &[], &[]);
    let nar_size: u64 = h1
        .run(&format!("nix-store -q --size {path}"))
        .parse()
        .unwrap();
    let url = format!(
        "http://{}:{DEFAULT_PORT}/peer/nar/{}.nar",
        h1.addr4,
        hash_of(&path)
    );
    let last_byte = format!("-r {}-", nar_size - 1);
    // Stripe 15 of 16 in blocks of 64 MiB: none of a 256 MiB NAR's bytes,
    // every one of them read and dropped.
    let empty_stripe =
        "-H 'Accept-Encoding: x-peerix-zblocks' -H 'X-Peerix-Stripe: 67108864/16/15'".to_string();
    // The statuses of `n` requests from `host` at once, with curl `args`.
    let at_once = |host: &Host, n: usize, args: &str| -> Vec<u16> {
        let out = host.run(&format!(
            "for i in $(seq {n}); do curl -s -o /dev/null --max-time 120 -w '%{{http_code}}\\n' \
             {args} {url} & done; wait"
        ));
        out.lines().map(|l| l.trim().parse().unwrap_or(0)).collect()
    };
    // 2 GiB at once per source, charged when a request comes: of 16 at
    // once for the last byte of 256 MiB, or for the empty stripe, eight
    // are served and the others refused (however fast the node reads,
    // which refills the budget at 256 MiB a second).
    for (label, host, ok, args) in [
        ("Range", h2, 206, &last_byte),
        ("stripe", h3, 200, &empty_stripe),
    ] {
        let statuses = at_once(host, 16, args);
        eprintln!("{label}: {statuses:?}");
        let served = statuses.iter().filter(|&&s| s == ok).count();
        let refused = statuses.iter().filter(|&&s| s == 503).count();
        assert_eq!(served + refused, 16, "{label}: {statuses:?}");
        assert!(
            (8..16).contains(&served),
            "{label}: {statuses:?}\n{}",
            n1.log()
        );
    }
    // Another source is not affected.
    assert_eq!(at_once(h4, 1, &last_byte), [206]);
    assert_eq!(at_once(h4, 1, &empty_stripe), [200]);
}

/// Issue 24, item 1. A peer sends a wrong NAR whose last 1,200 bytes come
/// as two segments of 600: the first is handed on (into tiny_http's 1 KiB
/// buffer), the second fails the NarHash, and the connection is cut. Nix
/// holds what left the buffer and resumes from there; another peer has
/// the right NAR. The resume must continue exactly the bytes Nix holds
/// (it cannot: they are wrong) or be refused, so that Nix never assembles
/// a whole NAR with the wrong prefix; its next try gets the path.
#[test]
fn a_resume_after_a_wrong_nar_is_refused_not_completed_from_another_peer() {
    let Some(net) = Net::new(4) else { return };
    let (h1, h2, h3, h4) = (net.host(1), net.host(2), net.host(3), net.host(4));
    let key = generate_key(h1, "resume-1");
    let path = support::build_random(h1, &net.prefix, 1 << 20);
    let good = file_cache(h1, &key, &path, "good-cache");
    // The same cache with a NAR wrong early on (its narinfo, NarHash and
    // signature unchanged).
    let bad = h1.dir.join("bad-cache");
    h1.run(&format!("cp -r {} {}", good.display(), bad.display()));
    let nar = std::fs::read_dir(bad.join("nar"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&nar).unwrap();
    for b in &mut bytes[1000..1100] {
        *b = !*b;
    }
    std::fs::write(&nar, &bytes).unwrap();
    // The liar answers first; the honest peer 200 ms late.
    let _liar = v1_peer(h2, &bad, &["--tail", "600,600"]);
    let _honest = v1_peer(h4, &good, &["--delay", "200"]);
    let flags = v1_flags(h2, h4);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let n3 = local_node(&net, &[&key], &flags);

    let args = realise_args(&[&path], &[&key]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = support::output_within(h3.cmd("nix-store", &args), Duration::from_secs(120))
        .expect("nix-store -r finished");
    let stderr = String::from_utf8_lossy(&first.stderr);
    let log = n3.log();
    assert!(
        log.contains(&format!("{}: NAR of", hash_of(&path)))
            && log.contains(&format!("from {}:12304", h2.addr4))
            && log.contains("does not match its NarHash"),
        "the liar's NAR was not the first:\n{log}"
    );
    assert!(
        !stderr.contains("hash mismatch"),
        "Nix completed a NAR with the wrong prefix:\n{stderr}\n{log}"
    );
    eprintln!(
        "first try {}:\n{stderr}\n{}",
        first.status,
        log.lines()
            .filter(|l| l.contains("refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    if !first.status.success() {
        assert!(log.contains("refused (404)"), "{stderr}\n{log}");
        let second = support::output_within(h3.cmd("nix-store", &args), Duration::from_secs(120))
            .expect("nix-store -r finished");
        assert!(
            second.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&second.stderr),
            n3.log()
        );
    }
    h3.run(&format!("nix-store --verify-path {path}"));
}

/// The local node's flags for original Peerix stand-ins on `a` and `b`:
/// as extra hosts, which may be original nodes (silent on a miss), every
/// query waits the whole timeout for their answers, the first one too,
/// however long after the node's start it comes (a busy machine).
fn v1_flags(a: &Host, b: &Host) -> Vec<String> {
    let mut flags = vec!["--timeout".to_string(), "2000".to_string()];
    for host in [a, b] {
        flags.extend(["--extra-host".to_string(), host.addr4.to_string()]);
    }
    flags
}

/// A `nix copy` cache of `path` (signed by `key`) in `host`'s directory,
/// for the original Peerix stand-ins.
fn file_cache(host: &Host, key: &support::Key, path: &str, name: &str) -> std::path::PathBuf {
    support::sign(host, key, path);
    let cache = host.dir.join(name);
    host.run(&format!(
        "nix copy --to 'file://{}?compression=none' {path}",
        cache.display()
    ));
    cache
}

/// Issue 24, item 3. A peer sends a NAR's first 64 KiB, then a byte every
/// 0.4 s: above curl's low-speed limit (1 byte a second), so Nix would
/// wait for days. It is under the floor: it loses the NAR to another peer
/// from the byte it stopped at, Nix gets the path, and the peer is counted
/// as passed over, too slow.
#[test]
fn a_trickling_peer_loses_the_nar_to_another() {
    let Some(net) = Net::new(4) else { return };
    let (h1, h2, h3, h4) = (net.host(1), net.host(2), net.host(3), net.host(4));
    let key = generate_key(h1, "trickle-1");
    let path = support::build_random(h1, &net.prefix, 1 << 20);
    let cache = file_cache(h1, &key, &path, "cache");
    // The trickler answers first; the other peer 200 ms late.
    let _trickler = v1_peer(h2, &cache, &["--trickle", "65536", "0.4"]);
    let _other = v1_peer(h4, &cache, &["--delay", "200"]);
    let flags = v1_flags(h2, h4);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let n3 = local_node(&net, &[&key], &flags);

    let args = realise_args(&[&path], &[&key]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let out = support::output_within(h3.cmd("nix-store", &args), Duration::from_secs(120));
    let log = n3.log();
    let out = out.unwrap_or_else(|| panic!("Nix still waits for the trickling peer:\n{log}"));
    assert!(
        out.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("the path came in {:.1?}", start.elapsed());
    h3.run(&format!("nix-store --verify-path {path}"));
    let hash = hash_of(&path);
    assert!(
        log.contains(&format!("{hash}: NAR of"))
            && log.contains(&format!("from {}:12304", h2.addr4)),
        "the trickler was not the first:\n{log}"
    );
    assert!(log.contains("too slow"), "{log}");
    assert!(
        log.contains(&format!("going on from {}:12304 at byte", h4.addr4)),
        "{log}"
    );
    let metrics = support::metrics(h3);
    let passed = "peerix_passed_over_total{source=\"peer\",reason=\"too_slow\"}";
    assert_eq!(support::metric(&metrics, passed), Some(1.0), "{metrics}");
}
