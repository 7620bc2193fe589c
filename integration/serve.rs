//! A node serves its own store to peers.
//!
//! Each test makes throw-away hosts (network namespaces, each with its own
//! `/nix`, see `support`), fills h1's store with real Nix, runs peerix there
//! with `--no-broadcast`, and talks to it from another host: with a real Nix
//! client substituting through `http://h1:12304/peer` with signatures
//! required, and with curl or raw HTTP for the routes, headers, the v1
//! (original Peerix) routes and hostile requests. It also checks what happens
//! to the `nix-store --dump` child when the client goes away or the dump comes
//! out short, that bad key files stop the daemon at start, and that the node
//! works as an unprivileged user through `nix-daemon`.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use support::{build_closure, generate_key, hash_of, sign, Daemon, Host, Key, Net};

/// Starts peerix on `host` with `--no-broadcast`, the default port and `key`.
fn node(host: &Host, key: &Key) -> Daemon {
    host.spawn_peerix(&[
        "--no-broadcast",
        "--private-key",
        key.secret.to_str().unwrap(),
    ])
}

/// The basename of a store path.
fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}

/// `nix-store --dump path` on `host`.
fn dump(host: &Host, path: &str) -> Vec<u8> {
    let out = host
        .cmd("nix-store", &["--dump", path])
        .output()
        .expect("run nix-store --dump");
    assert!(out.status.success(), "nix-store --dump {path} failed");
    out.stdout
}

/// sha256 (hex) of `nix-store --dump path` on `host`, for big paths.
fn dump_sha256(host: &Host, path: &str) -> String {
    host.run(&format!(
        "nix-store --dump {path} | sha256sum | cut -d' ' -f1"
    ))
}

/// The values of every `name: value` line of a narinfo.
fn fields<'a>(narinfo: &'a str, name: &str) -> Vec<&'a str> {
    narinfo
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .collect()
}

/// The value of the one `name: value` line of a narinfo.
fn field<'a>(narinfo: &'a str, name: &str) -> &'a str {
    match fields(narinfo, name)[..] {
        [v] => v,
        _ => panic!("expected one {name} line in narinfo:\n{narinfo}"),
    }
}

/// Checks the narinfo text form Nix parses: `Name: value` lines, `\n` line
/// ends, a final newline, no blank lines.
fn assert_narinfo_form(narinfo: &str) {
    assert!(narinfo.ends_with('\n'), "no final newline: {narinfo:?}");
    for line in narinfo.lines() {
        let name = line.split_once(": ").map(|(name, _)| name);
        let ok =
            name.is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(
            ok && !line.contains('\r'),
            "bad narinfo line {line:?} in {narinfo:?}"
        );
    }
}

/// Nix client options: substitute only from `url`, trust only `key`, and
/// remember no misses.
fn substitute_from(url: &str, key: &str) -> String {
    format!(
        "--option substituters {url} --option trusted-public-keys '{key}' \
         --option narinfo-cache-negative-ttl 0"
    )
}

/// The status code of a raw HTTP response.
fn raw_status(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    let line = text.lines().next().unwrap_or("");
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The bytes after the header block of a raw HTTP response.
fn raw_body(response: &[u8]) -> &[u8] {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    &response[end + 4..]
}

/// Sends `HEAD path` to the node and returns the raw response.
fn raw_head(client: &Host, node_host: &Host, path: &str) -> Vec<u8> {
    let request = format!("HEAD {path} HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n\r\n");
    client.raw_http(
        &node_host.addr4.to_string(),
        support::DEFAULT_PORT,
        request.as_bytes(),
        Duration::from_secs(10),
    )
}

/// The harness itself: hosts reach each other over IPv4 and IPv6 (a closed
/// port answers "connection refused", an unreachable one would not), and each
/// has its own store.
#[test]
fn harness_hosts_share_a_bridge_but_not_a_store() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    for addr in [h2.addr4.to_string(), h2.addr6.to_string()] {
        let out = h1.try_run(&format!(
            "timeout 5 bash -c 'exec 3<>/dev/tcp/{addr}/1' 2>&1"
        ));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Connection refused"),
            "h1 cannot reach {addr}: {text}"
        );
    }
    let path = h1.run(&format!(
        "echo hi > {0}/f && nix-store --add {0}/f",
        h1.dir.display()
    ));
    assert!(h1.outside(&path).exists());
    assert!(!h2.outside(&path).exists());
    assert!(!h2
        .try_run(&format!("nix-store --check-validity {path}"))
        .status
        .success());
}

/// A Nix client on h2, requiring signatures and trusting only the node's key,
/// substitutes a whole closure (symlinks, executables, empty files, a 100 MiB
/// file) from the node on h1 and gets identical contents.
#[test]
fn nix_substitutes_a_closure_signed_by_the_node() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let closure = build_closure(h1);
    let key = generate_key(h1, "node-h1");
    let daemon = node(h1, &key);
    let opts = substitute_from(&daemon.url("/peer"), &key.public);

    h2.run(&format!("nix-store -r {} {opts}", closure.top));

    for path in [&closure.dep, &closure.big, &closure.top] {
        assert_eq!(
            dump_sha256(h1, path),
            dump_sha256(h2, path),
            "{path} differs on h2"
        );
    }
    let dep = &closure.dep;
    h2.run(&format!(
        "test -x {dep}/run.sh && test -f {dep}/empty && ! test -s {dep}/empty \
         && test \"$(readlink {dep}/link)\" = sub/deeper/file.txt \
         && test -L {dep}/dangling && test -d {dep}/sub/deeper"
    ));
    let sigs = h2.run(&format!("nix path-info --sigs {}", closure.top));
    assert!(
        sigs.contains("node-h1:"),
        "h2 has no node signature: {sigs}"
    );
    assert!(h2
        .run(&format!("nix-store -q --references {}", closure.top))
        .contains(&closure.big));
}

/// The node passes on the signatures a path already has: a client trusting
/// only the "upstream" key gets the path upstream signed (dep), and refuses
/// one only the node signed (top).
#[test]
fn upstream_signatures_are_passed_on() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h3) = (net.host(1), net.host(2));
    let closure = build_closure(h1);
    let upstream = generate_key(h1, "upstream-1");
    sign(h1, &upstream, &closure.dep);
    let daemon = node(h1, &generate_key(h1, "node-h1"));
    let opts = substitute_from(&daemon.url("/peer"), &upstream.public);

    h3.run(&format!("nix-store -r {} {opts}", closure.dep));
    let sigs = h3.run(&format!("nix path-info --sigs {}", closure.dep));
    assert!(
        sigs.contains("upstream-1:"),
        "upstream signature lost: {sigs}"
    );

    let out = h3.try_run(&format!("nix-store -r {} {opts}", closure.top));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "top was accepted without a trusted signature"
    );
    assert!(
        stderr.contains("is not signed by any of the keys"),
        "top failed for another reason than its signature: {stderr}"
    );
    let valid = h3.try_run(&format!("nix-store --check-validity {}", closure.top));
    assert!(!valid.status.success(), "top became valid on h3");
}

/// `/peer/<hash>.narinfo` describes the path as the local store does, and
/// `/peer/nar/<hash>.nar` is exactly `nix-store --dump`, with Content-Length
/// and without Content-Encoding; HEAD answers like GET without a body.
#[test]
fn peer_routes_serve_narinfo_and_nar() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let closure = build_closure(h1);
    let key = generate_key(h1, "node-h1");
    let daemon = node(h1, &key);

    for path in [&closure.dep, &closure.top, &closure.ca] {
        let got = h2.curl(&[&daemon.url(&format!("/peer/{}.narinfo", hash_of(path)))]);
        assert_eq!(got.status, 200, "narinfo of {path}: {got:?}");
        let info = got.text();
        assert_narinfo_form(&info);
        assert_eq!(field(&info, "StorePath"), path.as_str());
        assert_eq!(field(&info, "URL"), format!("nar/{}.nar", hash_of(path)));
        assert_eq!(field(&info, "Compression"), "none");
        assert_eq!(
            field(&info, "NarHash"),
            h1.run(&format!("nix-store -q --hash {path}"))
        );
        assert_eq!(
            field(&info, "NarSize"),
            h1.run(&format!("nix-store -q --size {path}"))
        );
        let mut want: Vec<String> = h1
            .run(&format!("nix-store -q --references {path}"))
            .lines()
            .map(|p| basename(p).to_string())
            .collect();
        want.sort();
        let mut refs: Vec<String> = fields(&info, "References")
            .first()
            .map_or(vec![], |r| r.split_whitespace().map(String::from).collect());
        refs.sort();
        assert_eq!(refs, want, "References of {path}");
        let deriver = h1.run(&format!("nix-store -q --deriver {path}"));
        if deriver != "unknown-deriver" {
            assert_eq!(field(&info, "Deriver"), basename(&deriver));
        }
        let sigs = fields(&info, "Sig");
        assert!(
            sigs.iter().any(|s| s.starts_with("node-h1:")),
            "no node Sig: {info}"
        );
        let path_info = h1.run(&format!("nix path-info --sigs {path}"));
        match path_info
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ca:"))
        {
            Some(ca) => assert_eq!(field(&info, "CA"), ca),
            None => assert!(
                fields(&info, "CA").is_empty(),
                "CA on an input-addressed path"
            ),
        }
    }

    let over_ipv6 = format!("http://[{}]:12304/peer/nix-cache-info", h1.addr6);
    assert_eq!(h2.curl(&[&over_ipv6]).status, 200, "no answer over IPv6");

    let nar_url = |path: &str| daemon.url(&format!("/peer/nar/{}.nar", hash_of(path)));
    let got = h2.curl(&[&nar_url(&closure.dep)]);
    assert_eq!(got.status, 200);
    let want = dump(h1, &closure.dep);
    assert!(got.body == want, "NAR of dep differs from nix-store --dump");
    assert_eq!(
        got.header("content-length"),
        Some(want.len().to_string().as_str())
    );
    assert_eq!(got.header("content-encoding"), None);

    let big_nar = h2.dir.join("big.nar");
    let got = h2.curl(&[&nar_url(&closure.big), "-o", big_nar.to_str().unwrap()]);
    assert_eq!((got.exit, got.status), (0, 200), "{got:?}");
    let size = h1.run(&format!("nix-store -q --size {}", closure.big));
    assert_eq!(got.header("content-length"), Some(size.as_str()));
    assert_eq!(got.header("content-encoding"), None);
    let got_sha = h2.run(&format!("sha256sum {} | cut -d' ' -f1", big_nar.display()));
    assert_eq!(got_sha, dump_sha256(h1, &closure.big), "NAR of big differs");
    fs::remove_file(&big_nar).expect("remove big.nar");

    let unknown = "0123456789abcdfghijklmnpqrsvwxyz";
    for (path, status) in [
        (format!("/peer/{}.narinfo", hash_of(&closure.dep)), 200),
        (format!("/peer/nar/{}.nar", hash_of(&closure.dep)), 200),
        (format!("/peer/{unknown}.narinfo"), 404),
        (format!("/peer/nar/{unknown}.nar"), 404),
    ] {
        let started = Instant::now();
        let head = raw_head(h2, h1, &path);
        assert_eq!(
            raw_status(&head),
            status,
            "HEAD {path} after {:?}: {}\nlog:\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&head),
            daemon.log()
        );
        assert!(raw_body(&head).is_empty(), "HEAD {path} has a body");
    }
}

/// Unknown hashes are 404, malformed ones 400, and hostile paths get a 4xx,
/// never a 5xx and never a file from outside the store.
#[test]
fn peer_routes_refuse_bad_requests() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let path = h1.run(&format!(
        "echo hi > {0}/f && nix-store --add {0}/f",
        h1.dir.display()
    ));
    let daemon = node(h1, &generate_key(h1, "node-h1"));
    let unknown = "0123456789abcdfghijklmnpqrsvwxyz";
    let long = "a".repeat(20_000);
    let cases: Vec<(String, Option<u16>)> = vec![
        (format!("/peer/{unknown}.narinfo"), Some(404)),
        (format!("/peer/nar/{unknown}.nar"), Some(404)),
        ("/peer/abc.narinfo".into(), Some(400)),
        (format!("/peer/{}.narinfo", "e".repeat(32)), Some(400)),
        (
            format!("/peer/{}.narinfo", unknown.to_uppercase()),
            Some(400),
        ),
        (format!("/peer/{unknown}0.narinfo"), Some(400)),
        (format!("/peer/nar/{}.nar", "e".repeat(32)), Some(400)),
        (format!("/peer/{}.narinfo", basename(&path)), None),
        ("/peer/nar/xyz.nar".into(), None),
        ("/peer/../etc/passwd".into(), None),
        ("/peer/%2e%2e/%2e%2e/etc/passwd".into(), None),
        ("/peer/nar/../../etc/passwd".into(), None),
        ("/etc/passwd".into(), None),
        ("/peer/nar/".into(), None),
        (format!("/peer/{long}.narinfo"), None),
        (format!("/peer/nar/{long}"), None),
    ];
    for (url_path, want) in cases {
        let got = h2.curl(&[&daemon.url(&url_path)]);
        let shown = &url_path[..url_path.len().min(60)];
        match want {
            Some(status) => assert_eq!(got.status, status, "GET {shown}: {got:?}"),
            None => assert!(
                (400..500).contains(&got.status),
                "GET {shown}: {}",
                got.status
            ),
        }
        assert!(
            !got.text().contains("root:x:0"),
            "GET {shown} leaked /etc/passwd"
        );
    }
    let got = h2.curl(&[&daemon.url("/peer/nix-cache-info")]);
    assert_eq!(got.status, 200, "the node no longer answers");
    assert_eq!(
        got.text(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 20\n"
    );
}

/// The v1 routes of the original Peerix: `/local/<hash>.narinfo` points at
/// `local/nar/<base64 of the path, / as _>.nar`, which is the NAR; hostile
/// base64 gets 400 or 404.
#[test]
fn v1_routes_serve_narinfo_and_nar() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let closure = build_closure(h1);
    let daemon = node(h1, &generate_key(h1, "node-h1"));
    let b64 = |text: &str| support::base64(text.as_bytes()).replace('/', "_");

    for path in [&closure.dep, &closure.top] {
        let v1 = h2.curl(&[&daemon.url(&format!("/local/{}.narinfo", hash_of(path)))]);
        assert_eq!(v1.status, 200, "v1 narinfo of {path}: {v1:?}");
        let v1 = v1.text();
        let url = format!("local/nar/{}.nar", b64(path));
        assert_eq!(field(&v1, "URL"), url);
        let v2 = h2
            .curl(&[&daemon.url(&format!("/peer/{}.narinfo", hash_of(path)))])
            .text();
        let without_url = |t: &str| -> Vec<String> {
            let mut lines: Vec<String> = t
                .lines()
                .filter(|l| !l.starts_with("URL:"))
                .map(String::from)
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(
            without_url(&v1),
            without_url(&v2),
            "v1 and v2 narinfo differ"
        );
        let nar = h2.curl(&[&daemon.url(&format!("/{url}"))]);
        assert_eq!(nar.status, 200);
        assert!(
            nar.body == dump(h1, path),
            "v1 NAR of {path} differs from nix-store --dump"
        );
    }

    let unknown = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-gone";
    let cases = [
        (b64("/etc/passwd"), 404),
        (b64("/nix/store/../etc/passwd"), 404),
        (b64(&format!("{}/../../../etc/passwd", closure.dep)), 404),
        (b64(&format!("{}/sub/deeper/file.txt", closure.dep)), 404),
        (b64("/nix/store"), 404),
        (b64("/nix/store/.links"), 404),
        (b64(unknown), 404),
        ("!!!not-base64!!!".to_string(), 400),
        ("AAAA".to_string(), 404),
    ];
    for (bad, want) in cases {
        let got = h2.curl(&[&daemon.url(&format!("/local/nar/{bad}.nar"))]);
        assert!(
            got.status == want || (want == 404 && got.status == 400),
            "GET /local/nar/{bad}.nar: {} (want {want})",
            got.status
        );
        assert!(
            !got.text().contains("root:x:0"),
            "/local/nar/{bad}.nar leaked /etc/passwd"
        );
    }
    let got = h2.curl(&[&daemon.url(&format!("/local/{}.narinfo", hash_of(unknown)))]);
    assert_eq!(got.status, 404);
}

/// Pids of the node's `nix-store` children (the metadata `nix-store
/// --serve`, those streaming NARs, idle ones kept for the next NAR).
fn nix_children(daemon: &Daemon) -> Vec<u32> {
    let mut pids: Vec<u32> = (daemon.children().into_iter())
        .filter(|(_, name)| name == "nix-store")
        .map(|(pid, _)| pid)
        .collect();
    pids.sort();
    pids
}

/// Waits until every `nix-store` child of the node is one of `before`
/// (the child that streamed a NAR is gone); panics if it does not happen.
fn assert_back_to(daemon: &Daemon, before: &[u32], what: &str) {
    let back = support::wait_until(Duration::from_secs(5), || {
        nix_children(daemon).iter().all(|p| before.contains(p))
    });
    assert!(
        back,
        "{what}: nix-store left: {:?} (before: {before:?})\nlog:\n{}",
        daemon.children(),
        daemon.log()
    );
}

/// A client that goes away in the middle of a NAR leaves no `nix-store`
/// child behind: the one streaming is killed and reaped (its protocol
/// stream is out of step), and the node keeps serving.
#[test]
fn client_leaving_mid_nar_kills_the_dump() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let closure = build_closure(h1);
    let daemon = node(h1, &generate_key(h1, "node-h1"));
    let url = daemon.url(&format!("/peer/nar/{}.nar", hash_of(&closure.big)));
    let narinfo = daemon.url(&format!("/peer/{}.narinfo", hash_of(&closure.big)));
    assert_eq!(h2.curl(&[&narinfo]).status, 200);
    let before = nix_children(&daemon);

    // A slow reader, killed mid-NAR: the node is blocked writing when it goes.
    let slow_curl = ["-sS", "--limit-rate", "200k", "-o", "/dev/null", &url];
    let mut slow = h2.spawn_daemon(h2.cmd("curl", &slow_curl), "curl");
    std::thread::sleep(Duration::from_secs(2));
    if let Some(status) = slow.try_wait() {
        panic!(
            "slow reader ended ({status}): {}\nlog:\n{}",
            slow.log(),
            daemon.log()
        );
    }
    let during = nix_children(&daemon);
    eprintln!("nix-store children of the node: {before:?} before, {during:?} while serving");
    assert!(
        during.iter().any(|p| !before.contains(p)),
        "no child streams the NAR"
    );
    slow.kill();
    assert_back_to(&daemon, &before, "a slow reader killed");

    // A reader that closes after 1 MB.
    let err = h2.dir.join("curl.err");
    let got = h2.run(&format!(
        "curl -sS {url} 2>{} | head -c 1000000 | wc -c",
        err.display()
    ));
    let curl_err = fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(got, "1000000", "curl: {curl_err}\nlog:\n{}", daemon.log());
    assert_back_to(&daemon, &before, "a reader gone after 1 MB");

    let got = h2.curl(&[&daemon.url(&format!("/peer/{}.narinfo", hash_of(&closure.dep)))]);
    assert_eq!(
        got.status,
        200,
        "the node stopped serving: {}",
        daemon.log()
    );
}

/// SIGTERM while a 100 MiB NAR streams: the daemon exits 0 within seconds,
/// its `nix-store --dump` child killed and reaped (none is left over, not
/// even as an orphan), and its memory stayed flat while streaming.
#[test]
fn sigterm_mid_nar_stops_cleanly_with_flat_memory() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let closure = build_closure(h1);
    let mut daemon = node(h1, &generate_key(h1, "node-h1"));
    // A whole 100 MiB NAR first, to see the resident memory it took.
    let url = daemon.url(&format!("/peer/nar/{}.nar", hash_of(&closure.big)));
    let got = h2.run(&format!("curl -sS {url} | wc -c"));
    assert!(got.parse::<u64>().unwrap() > 100 << 20, "{got}");
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmHWM in /proc/PID/status");
    eprintln!("peak resident memory after a 100 MiB NAR: {peak_kib} KiB");
    assert!(peak_kib < 32 * 1024, "peak RSS {peak_kib} KiB");

    let slow_curl = ["-sS", "--limit-rate", "200k", "-o", "/dev/null", &url];
    let _slow = h2.spawn_daemon(h2.cmd("curl", &slow_curl), "curl");
    let dump_pid = support::wait_until(Duration::from_secs(5), || {
        daemon.children().iter().any(|(_, n)| n == "nix-store")
    });
    assert!(dump_pid, "no dump running: {}", daemon.log());
    let dumps: Vec<u32> = daemon
        .children()
        .into_iter()
        .filter(|(_, n)| n == "nix-store")
        .map(|(p, _)| p)
        .collect();
    let started = std::time::Instant::now();
    let exit = daemon.kill();
    assert!(exit.success(), "exit {exit:?}: {}", daemon.log());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    for pid in dumps {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "nix-store {pid} outlived the daemon"
        );
    }
    assert!(
        daemon.log().contains("SIGTERM: shutting down"),
        "{}",
        daemon.log()
    );
}

/// When the NAR comes out shorter than the NarSize announced (the store file
/// was truncated behind Nix's back), the node cuts the connection: the client
/// sees an error quickly, neither a complete 200 nor a hang.
#[test]
fn short_dump_cuts_the_connection() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let closure = build_closure(h1);
    let daemon = node(h1, &generate_key(h1, "node-h1"));
    let narinfo = h2.curl(&[&daemon.url(&format!("/peer/{}.narinfo", hash_of(&closure.big)))]);
    assert_eq!(narinfo.status, 200);
    let before = nix_children(&daemon);

    let file = h1.outside(&format!("{}/random.bin", closure.big));
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open the big file for writing");
    f.set_len(50 * 1024 * 1024).expect("truncate the big file");
    drop(f);

    let started = Instant::now();
    let url = daemon.url(&format!("/peer/nar/{}.nar", hash_of(&closure.big)));
    let got = h2.curl(&["--max-time", "30", "-o", "/dev/null", &url]);
    let took = started.elapsed();
    eprintln!(
        "curl exit {} after {took:?}: {}",
        got.exit,
        got.stderr.trim()
    );
    assert_ne!(
        got.exit, 0,
        "a short NAR was served as a complete {}",
        got.status
    );
    assert_ne!(got.exit, 28, "the client hung until its timeout");
    assert!(
        took < Duration::from_secs(15),
        "the client waited {took:?} for the cut"
    );
    assert_back_to(&daemon, &before, "a short NAR");
}

/// A missing, unreadable or malformed `--private-key` file (or a public key
/// given as the private one) makes the daemon exit non-zero at start, naming
/// the file.
#[test]
fn bad_key_files_stop_the_daemon() {
    let Some(net) = Net::new(1) else { return };
    let h1 = net.host(1);
    let key = generate_key(h1, "node-h1");
    let public = h1.dir.join("node-h1.pk");
    let garbage = h1.dir.join("garbage.sk");
    fs::write(&garbage, "this is not a key\n").expect("write garbage.sk");
    let empty = h1.dir.join("empty.sk");
    fs::write(&empty, "").expect("write empty.sk");
    let truncated = h1.dir.join("truncated.sk");
    let secret = fs::read_to_string(&key.secret).expect("read the secret key");
    fs::write(&truncated, &secret[..secret.len() - 8]).expect("write truncated.sk");
    let missing = h1.dir.join("missing.sk");
    let directory = h1.dir.join("home");

    for file in [&missing, &garbage, &empty, &truncated, &public, &directory] {
        let file = file.to_str().unwrap();
        let bin = env!("CARGO_BIN_EXE_peerix");
        let cmd = h1.cmd(bin, &["--no-broadcast", "--private-key", file]);
        let out = support::output_within(cmd, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("peerix kept running with --private-key {file}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "peerix accepted --private-key {file}"
        );
        assert!(
            stderr.contains(file),
            "stderr does not name {file}: {stderr}"
        );
    }
}

/// On a multi-user install, the node runs as an unprivileged user
/// (`nobody`) with `NIX_REMOTE=daemon` and serves narinfo and NAR through
/// the nix-daemon.
#[test]
fn serves_as_unprivileged_user_through_nix_daemon() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let closure = build_closure(h1);
    let key = generate_key(h1, "node-h1");
    let (nix_daemon, daemon) = h1.spawn_peerix_through_nix_daemon(&key);
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("read the node's status");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid line in /proc/PID/status");
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "node runs as {uid}"
    );

    let info = h2.curl(&[&daemon.url(&format!("/peer/{}.narinfo", hash_of(&closure.dep)))]);
    assert_eq!(
        info.status,
        200,
        "narinfo through nix-daemon: {info:?}\n{}",
        daemon.log()
    );
    let info = info.text();
    assert_eq!(field(&info, "StorePath"), closure.dep);
    assert_eq!(
        field(&info, "NarHash"),
        h1.run(&format!("nix-store -q --hash {}", closure.dep))
    );
    assert!(
        fields(&info, "Sig")
            .iter()
            .any(|s| s.starts_with("node-h1:")),
        "{info}"
    );
    let nar = h2.curl(&[&daemon.url(&format!("/peer/nar/{}.nar", hash_of(&closure.dep)))]);
    assert_eq!(nar.status, 200, "NAR through nix-daemon: {}", daemon.log());
    assert!(
        nar.body == dump(h1, &closure.dep),
        "NAR through nix-daemon differs"
    );
    let unknown = "0123456789abcdfghijklmnpqrsvwxyz";
    let got = h2.curl(&[&daemon.url(&format!("/peer/{unknown}.narinfo"))]);
    assert_eq!(got.status, 404);
    assert!(
        nix_daemon.log().contains("user nobody"),
        "the node did not go through nix-daemon: {}",
        nix_daemon.log()
    );
}

/// The node follows its store: a path added after it started is served, a
/// deleted one is no longer offered (narinfo and NAR 404, not a stale 200),
/// and a directory in the store that Nix never registered is not a path.
#[test]
fn store_changes_are_followed() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let old = h1.run(&format!(
        "echo old > {0}/old && nix-store --add {0}/old",
        h1.dir.display()
    ));
    let daemon = node(h1, &generate_key(h1, "node-h1"));
    let status = |path: &str| h2.curl(&[&daemon.url(path)]).status;
    let narinfo = |path: &str| format!("/peer/{}.narinfo", hash_of(path));
    let nar = |path: &str| format!("/peer/nar/{}.nar", hash_of(path));
    assert_eq!(status(&narinfo(&old)), 200);

    let new = h1.run(&format!(
        "echo new > {0}/new && nix-store --add {0}/new",
        h1.dir.display()
    ));
    let seen = support::wait_until(Duration::from_secs(10), || status(&narinfo(&new)) == 200);
    assert!(seen, "a path added after start is not served");
    assert_eq!(status(&nar(&new)), 200);

    h1.run(&format!("nix-store --delete {old}"));
    let gone = support::wait_until(Duration::from_secs(10), || status(&narinfo(&old)) == 404);
    assert!(gone, "a deleted path is still offered");
    assert_eq!(status(&nar(&old)), 404);
    assert_eq!(status(&format!("/local/{}.narinfo", hash_of(&old))), 404);

    let unregistered = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-unregistered";
    fs::create_dir_all(h1.outside(unregistered)).expect("make an unregistered store entry");
    fs::write(h1.outside(unregistered).join("file"), "x").expect("write into it");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(status(&narinfo(unregistered)), 404);
    assert_eq!(status(&nar(unregistered)), 404);
}

/// Path infos and NARs come from long-lived `nix-store --serve` children,
/// reused from request to request: thirty paths' narinfo and NAR cost no
/// process start each. Idle for 30 s, the children end.
#[test]
fn nars_and_infos_come_from_long_lived_serve_children() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let chain = support::build_chain(h1, "serve", 30);
    let daemon = node(h1, &generate_key(h1, "node-h1"));
    let mut seen = std::collections::BTreeSet::new();
    for path in &chain {
        let info = h2.curl(&[&daemon.url(&format!("/peer/{}.narinfo", hash_of(path)))]);
        assert_eq!(info.status, 200);
        let nar = h2.curl(&[&daemon.url(&format!("/peer/nar/{}.nar", hash_of(path)))]);
        assert_eq!(nar.status, 200);
        assert!(nar.body == dump(h1, path), "NAR of {path}");
        seen.extend(nix_children(&daemon));
    }
    eprintln!("nix-store children over 30 narinfos and NARs: {seen:?}");
    // One for metadata, one for NARs (read one after the other).
    assert!(seen.len() <= 2, "{seen:?}");
    let local = h1.curl(&[&format!("{}/status", support::LOCAL)]).text();
    assert!(local.contains("nix-store --serve for NARs: 1"), "{local}");
    let idle = Instant::now();
    let gone = support::wait_until(Duration::from_secs(45), || nix_children(&daemon).is_empty());
    eprintln!("children gone {:?} after the last request", idle.elapsed());
    assert!(gone, "children left: {:?}", daemon.children());
}

/// When no `nix-store --serve` can be had for a NAR, one `nix-store
/// --dump` per path serves it. (A `nix-store` on the node's PATH refuses
/// `--serve` once a file exists.)
#[test]
fn a_nar_comes_from_nix_store_dump_when_no_serve_child_can_be_had() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let closure = build_closure(h1);
    let key = generate_key(h1, "node-h1");
    let wrapped = h1.dir.join("wrapped");
    let refuse = h1.dir.join("refuse-serve");
    fs::create_dir_all(&wrapped).unwrap();
    let real = h1.run("command -v nix-store");
    fs::write(
        wrapped.join("nix-store"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = --serve ] && [ -e {} ]; then\n  echo 'no --serve here' >&2; exit 1\nfi\nexec {real} \"$@\"\n",
            refuse.display()
        ),
    )
    .unwrap();
    h1.run(&format!("chmod +x {}/nix-store", wrapped.display()));
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", wrapped.display());
    let args = [
        "--no-broadcast",
        "--private-key",
        key.secret.to_str().unwrap(),
    ];
    let daemon = h1.spawn_peerix_with(&[], &[("PATH", &path)], &args);
    for p in [&closure.dep, &closure.big] {
        let url = daemon.url(&format!("/peer/{}.narinfo", hash_of(p)));
        assert_eq!(h2.curl(&[&url]).status, 200);
    }
    fs::write(&refuse, "").unwrap();
    let got = h2.curl(&[&daemon.url(&format!("/peer/nar/{}.nar", hash_of(&closure.dep)))]);
    assert_eq!(got.status, 200, "{}", daemon.log());
    assert!(got.body == dump(h1, &closure.dep), "the dumped NAR differs");
    assert!(
        daemon.log().contains("using nix-store --dump"),
        "{}",
        daemon.log()
    );
    // The dump is the process streaming (seen while a slow reader reads).
    let url = daemon.url(&format!("/peer/nar/{}.nar", hash_of(&closure.big)));
    let slow = ["-sS", "--limit-rate", "500k", "-o", "/dev/null", &url];
    let _slow = h2.spawn_daemon(h2.cmd("curl", &slow), "curl");
    let dumping = support::wait_until(Duration::from_secs(5), || {
        nix_children(&daemon).iter().any(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--dump"))
        })
    });
    assert!(dumping, "no nix-store --dump: {:?}", daemon.children());
}
