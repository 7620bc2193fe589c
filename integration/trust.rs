//! Trust on a shared LAN, with real Nix in network namespaces: the share
//! policy hides paths on every route, the network key keeps out nodes
//! without it (and forged and replayed datagrams), the local NAR route is no
//! proxy, and a node under hostile input goes on serving the local Nix
//! without crashing, leaking or amplifying.

mod support;

use std::fs;
use std::process::Output;
use std::time::{Duration, Instant};

use peerix::discovery::wire::{Datagram, Message};
use peerix::nix::narinfo::HashPart;
use peerix::peer::network_key::NetworkKey;
use support::{generate_key, hash_of, Daemon, Host, Key, Net, LOCAL};

/// Builds, on `host`, the paths named `names` (in order; each refers to the
/// one before it when `chain`), returning their store paths.
fn build(host: &Host, names: &[&str], chain: bool) -> Vec<String> {
    let mut bindings = String::new();
    let mut prev = "\"none\"".to_string();
    for (i, name) in names.iter().enumerate() {
        bindings.push_str(&format!("  p{i} = mk \"{name}\" {prev};\n"));
        if chain {
            prev = format!("p{i}");
        }
    }
    let attrs: Vec<String> = (0..names.len()).map(|i| format!("p{i}")).collect();
    let expr = format!(
        "let\n  mk = name: prev: derivation {{ inherit name; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${{name}} ${{prev}} > $out\" ]; }};\n\
         {bindings}in {{ inherit {}; }}\n",
        attrs.join(" ")
    );
    let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
    let name = format!("trust-{}", names.join("-"));
    let out = support::nix_build(host, &name, &expr, &attrs);
    out.lines().map(str::to_owned).collect()
}

fn node(host: &Host, key: &Key, extra: &[&str]) -> Daemon {
    let mut args = vec!["--private-key", key.secret.to_str().unwrap()];
    args.extend(extra);
    host.spawn_peerix(&args)
}

fn status(host: &Host, url: &str) -> u16 {
    host.curl(&[url]).status
}

fn v1_b64(path: &str) -> String {
    support::base64(path.as_bytes()).replace('/', "_")
}

/// Every route by which a peer could get `path` from `owner`'s node.
fn peer_routes(owner: &Host, path: &str) -> Vec<String> {
    let base = format!("http://{}:12304", owner.addr4);
    let hash = hash_of(path);
    vec![
        format!("{base}/peer/{hash}.narinfo"),
        format!("{base}/peer/nar/{hash}.nar"),
        format!("{base}/local/{hash}.narinfo"),
        format!("{base}/local/nar/{}.nar", v1_b64(path)),
    ]
}

/// A v1 query for `hash` broadcast from `host`: its output, and whether
/// anybody answered.
fn v1_query(host: &Host, hash: &str) -> (bool, String) {
    let broadcast = host
        .addr4
        .to_string()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_string()
        + ".255";
    let out: Output = host.try_run(&format!(
        "python3 {} query {hash} {broadcast} 12304",
        support::stand_in("v1_peer.py")
    ));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_share_policy_hides_paths_and_what_depends_on_them_on_every_route() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "h1-1");
    let upstream = generate_key(h1, "upstream-1");
    // uses-it refers to the secret; plain stands alone.
    let chain = build(h1, &["db-secret-token", "uses-it"], true);
    let (secret, uses) = (&chain[0], &chain[1]);
    let plain = &build(h1, &["plain"], false)[0];
    let signed = &build(h1, &["signed-upstream"], false)[0];
    support::sign(h1, &upstream, signed);

    let mut n1 = node(h1, &key, &["--never-share", "*-secret*"]);
    let _n2 = h2.spawn_peerix(&["--trusted-key", &key.public]);
    for hidden in [secret, uses] {
        for url in peer_routes(h1, hidden) {
            assert_eq!(status(h2, &url), 404, "{url}");
            assert_eq!(h2.curl(&["-I", &url]).status, 404, "HEAD {url}");
        }
        let local = format!("{LOCAL}/{}.narinfo", hash_of(hidden));
        assert_eq!(status(h2, &local), 404, "{hidden} through h2's node");
        assert!(!v1_query(h3, hash_of(hidden)).0, "a v1 answer for {hidden}");
    }
    for url in &peer_routes(h1, plain)[..2] {
        assert_eq!(status(h2, url), 200, "{url}");
    }
    assert_eq!(
        status(h2, &format!("{LOCAL}/{}.narinfo", hash_of(plain))),
        200
    );
    let (answered, out) = v1_query(h3, hash_of(plain));
    assert!(answered && out.starts_with("narinfo 200"), "{out}");
    n1.kill();

    // Only what the upstream key signed.
    let _n1 = node(h1, &key, &["--share-signed-by", &upstream.public]);
    assert_eq!(status(h2, &peer_routes(h1, signed)[0]), 200);
    assert_eq!(status(h2, &peer_routes(h1, plain)[0]), 404);
    assert_eq!(status(h2, &peer_routes(h1, plain)[1]), 404);
    assert!(!v1_query(h3, hash_of(plain)).0);
}

/// The bytes of a v2 query for `hash`, sealed with `key`.
fn sealed_query(key: &NetworkKey, hash: &str, id: u32) -> Vec<u8> {
    let mut bytes = Datagram::V2 {
        node: 0x5eed,
        id,
        message: Message::Query {
            hash: HashPart::parse(hash).expect("a hash part"),
        },
    }
    .encode();
    key.seal(&mut bytes);
    bytes
}

/// Sends `bytes` as one datagram from `from` to `to`'s port 12304.
fn send_datagram(from: &Host, to: &Host, bytes: &[u8]) {
    let file = from.dir.join(format!("dgram-{}", bytes.len()));
    fs::write(&file, bytes).unwrap();
    from.run(&format!(
        "bash -c 'cat {} > /dev/udp/{}/12304'",
        file.display(),
        to.addr4
    ));
}

#[test]
fn with_a_network_key_nodes_without_it_get_nothing() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let secret = "correct horse battery staple, shared by h1 and h2";
    let key_file = net.dir.join("network.key");
    fs::write(&key_file, secret).unwrap();
    std::process::Command::new("chmod")
        .arg("600")
        .arg(&key_file)
        .status()
        .unwrap();
    let other_file = net.dir.join("other.key");
    fs::write(&other_file, "a different secret, which h3 has").unwrap();
    let (key_arg, other_arg) = (key_file.to_str().unwrap(), other_file.to_str().unwrap());

    let signing = generate_key(h1, "h1-1");
    let path = &build(h1, &["keyed"], false)[0];
    let hash = hash_of(path);
    let n1 = node(h1, &signing, &["--network-key-file", key_arg]);
    let _n2 = h2.spawn_peerix(&[
        "--network-key-file",
        key_arg,
        "--trusted-key",
        &signing.public,
    ]);
    let n3 = h3.spawn_peerix(&[
        "--network-key-file",
        other_arg,
        "--trusted-key",
        &signing.public,
    ]);

    // With the key: end to end, Nix substituting through the local node.
    let out = h2.try_run(&format!(
        "nix-store -r {path} --option substituters {LOCAL} --option trusted-public-keys '{}'",
        signing.public
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without it: no answer to its queries, nothing from the peer routes.
    assert_eq!(status(h3, &format!("{LOCAL}/{hash}.narinfo")), 404);
    assert!(h3
        .curl(&[&format!("{LOCAL}/status")])
        .text()
        .contains("peers: 0"));
    let direct = format!("http://{}:12304", h1.addr4);
    assert_eq!(status(h3, &format!("{direct}/peer/{hash}.narinfo")), 403);
    assert_eq!(status(h3, &format!("{direct}/peer/nar/{hash}.nar")), 403);
    assert_eq!(status(h3, &format!("{direct}/local/{hash}.narinfo")), 404);
    assert!(!v1_query(h3, hash).0, "v1 is not spoken with a network key");
    assert!(
        n3.log().contains("wrong authentication tag"),
        "{}",
        n3.log()
    );

    // A forged datagram (another key) and a replayed one (the right key,
    // sent twice) get one answer between them: the first of the replay.
    let right = NetworkKey::new(secret.as_bytes()).unwrap();
    let wrong = NetworkKey::new(b"a different secret, which h3 has").unwrap();
    send_datagram(h3, h1, &sealed_query(&wrong, hash, 7));
    let replayed = sealed_query(&right, hash, 8);
    send_datagram(h3, h1, &replayed);
    send_datagram(h3, h1, &replayed);
    std::thread::sleep(Duration::from_millis(300));
    let log = n1.log();
    let from_h3 = format!("{}:", h3.addr4);
    let answered = log
        .lines()
        .filter(|l| l.contains(&from_h3) && l.contains(&format!("asks for {hash}")))
        .count();
    assert_eq!(answered, 1, "{log}");
    assert!(log.contains("replayed"), "{log}");
    assert!(log.contains("wrong authentication tag"), "{log}");
}

#[test]
fn the_local_nar_route_reaches_nobody_a_request_names() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "h1-1");
    let path = &build(h1, &["ssrf"], false)[0];
    let hash = hash_of(path);
    let _n1 = node(h1, &key, &[]);
    let _n2 = h2.spawn_peerix(&["--trusted-key", &key.public]);
    let hits = h3.dir.join("connections");
    let mut listener = h3.spawn_daemon(
        h3.cmd(
            "python3",
            &[
                &support::stand_in("hostile.py"),
                "listen",
                "9999",
                hits.to_str().unwrap(),
                "60",
            ],
        ),
        "listener",
    );
    assert!(support::wait_until(Duration::from_secs(5), || listener
        .log()
        .contains("listening")));
    let target = format!("{}:9999", h3.addr4);
    for url in [
        format!("/nar/{hash}.nar?peer={target}"),
        format!("/nar/{hash}.nar?url=http://{target}/x.nar"),
        format!("/v2/remote/{}/9999/{hash}/local/nar/x.nar", h3.addr4),
        format!("/nar/http://{target}/x.nar"),
        format!("/nar/..%2F..%2F{target}.nar"),
        format!("/{hash}.narinfo?peer={target}"),
        format!("/http://{target}/{hash}.narinfo"),
        "/nar/00000000000000000000000000000000.nar".into(),
    ] {
        let code = status(h2, &format!("{LOCAL}{url}"));
        assert!(code < 500, "{url}: {code}");
    }
    // The path itself comes from h1, the peer discovery found.
    assert_eq!(status(h2, &format!("{LOCAL}/nar/{hash}.nar")), 200);
    assert!(
        !hits.exists() || fs::read_to_string(&hits).unwrap().is_empty(),
        "something reached {target}: {}",
        fs::read_to_string(&hits).unwrap_or_default()
    );
    listener.kill();
}

#[test]
fn under_hostile_input_the_node_serves_on_without_leaks_or_amplification() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "h1-1");
    let paths = build(h1, &["victim-dep", "victim"], true);
    let later = build(h1, &["after-spoofing"], false).remove(0);
    let _n1 = node(h1, &key, &[]);
    // h2 is attacked from h3, while Nix on h2 substitutes through it. Its
    // answer rate is lowered to 200 a second so the bound below is sharp;
    // it logs at info, as it would in the field, to count its lines.
    let h2_key = generate_key(h2, "h2-1");
    let mut n2 = h2.spawn_peerix_with(
        &[],
        &[("RUST_LOG", "info")],
        &[
            "--private-key",
            h2_key.secret.to_str().unwrap(),
            "--trusted-key",
            &key.public,
            "--answer-rate",
            "200",
        ],
    );
    let pid = n2.pid();
    std::thread::sleep(Duration::from_millis(500));
    let (fds_before, rss_before) = (support::fd_count(pid), support::rss_kib(pid));
    let hostile = support::stand_in("hostile.py");
    let target = h2.addr4.to_string();

    // Oversized and malformed requests: 4xx or a closed connection, no 5xx.
    let statuses = h3.run(&format!("python3 {hostile} http-junk {target} 12304"));
    let lines: Vec<&str> = statuses.lines().collect();
    assert_eq!(lines.len(), 8, "{statuses}");
    assert!(!statuses.contains(" 5"), "a 5xx for bad input:\n{statuses}");
    for oversized in &lines[..3] {
        assert!(
            oversized.contains("431") || oversized.starts_with('('),
            "{statuses}"
        );
    }
    assert!(
        lines[6].contains("404") && lines[7].contains("404"),
        "{statuses}"
    );

    let flood = h3.spawn_daemon(
        h3.cmd("python3", &[&hostile, "query-flood", &target, "12304", "6"]),
        "flood",
    );
    let slow = h3.spawn_daemon(
        h3.cmd(
            "python3",
            &[&hostile, "slowloris", &target, "12304", "300", "14"],
        ),
        "slowloris",
    );
    let junk = h3.run(&format!(
        "python3 {hostile} udp-garbage {target} 12304 20000"
    ));
    assert!(junk.contains("sent 20000"), "{junk}");

    // Meanwhile Nix on h2 substitutes through its node, from h1.
    let out = h2.try_run(&format!(
        "nix-store -r {} --option substituters {LOCAL} --option trusted-public-keys '{}'",
        paths[1], key.public
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The attackers end by themselves.
    let mut attackers = [flood, slow];
    assert!(support::wait_until(Duration::from_secs(30), || attackers
        .iter_mut()
        .all(|a| a.try_wait().is_some())));
    let (flood_out, slow_out) = (attackers[0].log(), attackers[1].log());
    eprintln!("{flood_out}{slow_out}");
    let numbers: Vec<u64> = flood_out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (sent, answers) = (numbers[0], numbers[1]);
    // At most a burst of 400 and 200 a second over the 6 s, whatever was sent.
    assert!(
        answers <= 400 + 200 * 8,
        "{answers} answers to {sent} queries"
    );
    let closed: u64 = slow_out
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    assert!(
        closed > 0,
        "the server closed no slow connection: {slow_out}"
    );
    let log = n2.log();
    assert!(
        log.contains("refused"),
        "no connection refused over the cap"
    );

    // Alive, still serving, and back to where it was.
    assert!(n2.try_wait().is_none(), "the node died: {log}");
    assert_eq!(
        status(h1, &format!("http://{target}:12304/peer/nix-cache-info")),
        200
    );
    assert!(support::wait_until(
        Duration::from_secs(15),
        || support::fd_count(pid) <= fds_before + 8
    ));
    let rss_after = support::rss_kib(pid);
    eprintln!(
        "fds {fds_before} -> {}, RSS {rss_before} KiB -> {rss_after} KiB",
        support::fd_count(pid)
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );

    // 100 000 datagrams from made-up nodes (hellos, "have" answers and
    // queries, each from a node id of its own): the tables stay bounded,
    // the log says a handful of lines, and Nix still substitutes.
    let lines_before = n2.log().lines().count();
    let flood = Instant::now();
    let spoofed = h3.run(&format!("python3 {hostile} spoof {target} 12304 100000"));
    assert!(spoofed.contains("sent 100000"), "{spoofed}");
    std::thread::sleep(Duration::from_secs(1));
    // Each kind of line strangers cause goes out at most once a second (a
    // few kinds here), however long the flood took on a busy machine.
    let flood_secs = flood.elapsed().as_secs() as usize + 2;
    let log = n2.log();
    let new_lines: Vec<&str> = log.lines().skip(lines_before).collect();
    let rss_spoofed = support::rss_kib(pid);
    eprintln!(
        "after 100 000 spoofed datagrams: RSS {rss_spoofed} KiB, {} log lines:\n{}",
        new_lines.len(),
        new_lines.join("\n")
    );
    assert!(
        new_lines.len() <= 3 * flood_secs,
        "{} lines in {flood_secs} s:\n{}",
        new_lines.len(),
        new_lines.join("\n")
    );
    assert!(rss_spoofed < 32 * 1024, "RSS {rss_spoofed} KiB");
    let out = h2.try_run(&format!(
        "nix-store -r {later} --option substituters {LOCAL} --option trusted-public-keys '{}'",
        key.public
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n2.kill();
}

/// With `require-sigs = false` in the local Nix's configuration, a peer's
/// narinfo without a signature by a trusted key is still not handed on.
#[test]
fn peer_data_needs_a_trusted_signature_even_without_require_sigs() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let unsigned = build(h2, &["unsigned"], false).remove(0);
    // h2 signs with no key: its narinfo carries no signature at all.
    let _n2 = h2.spawn_peerix(&[]);
    h1.add_nix_conf("require-sigs = false");
    let n1 = h1.spawn_peerix(&[]);
    assert!(n1.log().contains("require-sigs = false"), "{}", n1.log());
    let peer_narinfo = h1.curl(&[&format!(
        "http://{}:12304/peer/{}.narinfo",
        h2.addr4,
        hash_of(&unsigned)
    )]);
    assert_eq!(peer_narinfo.status, 200);
    assert!(
        !peer_narinfo.text().contains("Sig:"),
        "{}",
        peer_narinfo.text()
    );
    assert_eq!(
        status(h1, &format!("{LOCAL}/{}.narinfo", hash_of(&unsigned))),
        404
    );
    assert!(
        n1.log()
            .contains("not signed by a key the local Nix trusts"),
        "{}",
        n1.log()
    );
    let out = h1.try_run(&format!(
        "nix-store -r {unsigned} --option substituters {LOCAL}"
    ));
    assert!(
        !out.status.success(),
        "Nix got a path no trusted key signed"
    );
}

#[test]
fn a_key_others_can_read_is_warned_about_and_never_logged() {
    let Some(net) = Net::new(1) else { return };
    let h1 = net.host(1);
    let key = generate_key(h1, "h1-1");
    let network = net.dir.join("network.key");
    fs::write(&network, "a network secret of some length").unwrap();
    for file in [&key.secret, &network] {
        std::process::Command::new("chmod")
            .arg("644")
            .arg(file)
            .status()
            .unwrap();
    }
    let mut daemon = h1.spawn_peerix(&[
        "--private-key",
        key.secret.to_str().unwrap(),
        "--network-key-file",
        network.to_str().unwrap(),
    ]);
    daemon.kill();
    let log = daemon.log();
    assert!(
        log.contains("private key") && log.contains("can be read by others"),
        "{log}"
    );
    assert!(
        log.contains("network key") && log.contains("chmod 600"),
        "{log}"
    );
    let secret = fs::read_to_string(&key.secret).unwrap();
    let secret_b64 = secret.trim().split_once(':').unwrap().1;
    assert!(!log.contains(secret_b64), "the secret key is in the log");
    assert!(
        !log.contains("a network secret"),
        "the network key is in the log"
    );
}

/// The routes for the local Nix answer a `Host` that names loopback (or
/// none, as HTTP/1.0 clients may send), never another name: a web page in
/// a browser on the machine, its name rebound to 127.0.0.1 (DNS
/// rebinding), cannot read `/`, `/status.json`, `/metrics` or narinfos
/// (issue 24, item 11).
#[test]
fn loopback_routes_refuse_a_host_that_is_not_loopback() {
    let Some(net) = Net::new(1) else { return };
    let h1 = net.host(1);
    let key = generate_key(h1, "host-1");
    let n1 = node(h1, &key, &[]);
    let hostname = h1.run("hostname");
    let get = |host: Option<&str>, path: &str, extra: &[&str]| {
        let header = host.map(|h| format!("Host: {h}"));
        let mut args: Vec<&str> = extra.to_vec();
        if let Some(header) = &header {
            args.extend(["-H", header]);
        }
        let url = format!("{LOCAL}{path}");
        args.push(&url);
        h1.curl(&args).status
    };
    let hash = "00000000000000000000000000000000";
    let narinfo = format!("/{hash}.narinfo");
    for path in ["/", "/status.json", "/metrics", "/nix-cache-info", &narinfo] {
        for host in [
            "attacker.example",
            "attacker.example:12304",
            "127.0.0.1.nip.io",
        ] {
            assert_eq!(get(Some(host), path, &[]), 403, "{host} {path}");
        }
    }
    let ok = |path: &str| if path == narinfo { 404 } else { 200 };
    for path in ["/", "/status.json", "/metrics", &narinfo] {
        for host in [
            "127.0.0.1:12304",
            "127.0.0.1",
            "127.0.0.2:12304",
            "localhost:12304",
            "LOCALHOST",
            "localhost.",
            "[::1]:12304",
            "[::1]",
            &hostname,
        ] {
            assert_eq!(get(Some(host), path, &[]), ok(path), "{host} {path}");
        }
        // curl sends no Host with `-H 'Host:'`; nor may an HTTP/1.0 client.
        assert_eq!(get(None, path, &["-H", "Host:"]), ok(path), "{path}");
        assert_eq!(get(None, path, &["-0", "-H", "Host:"]), ok(path), "{path}");
    }
    assert!(
        n1.log().contains("not a name of this machine's loopback"),
        "{}",
        n1.log()
    );
}
