//! What a node shows about itself: `/status.json` (and `/status` with
//! `Accept: application/json`), the dashboard at `/` as headless Chromium
//! renders it, the Grafana dashboard's queries against `/metrics`, and
//! `peerix --version`.
//!
//! The scene: a node on h3 with two peers (h1, h2); its Nix substitutes a
//! closure from each, then a larger path from h1 slowed down by a rate
//! limit, which is looked at while it is in flight. Chromium is Debian's
//! `chromium` package; without it the browser part is skipped with a
//! message.
//!
//! Then a node whose Nix got a closure through upstream caches, part from
//! its own downloads and part from a peer's pulls.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::upstream_cache::{wait_pullers, UpstreamCache};
use support::{
    build_chain, build_random, generate_key, node, output_within, three_nodes, Host, Net, LOCAL,
};

/// The Grafana dashboard shipped in integration/dist/.
const GRAFANA: &str = include_str!("dist/grafana-dashboard.json");

/// Where the test leaves its screenshot of the dashboard.
fn screenshot_path() -> PathBuf {
    std::env::temp_dir().join("peerix-dashboard.png")
}

/// Evaluates each Python expression in `exprs` on the JSON `body` (as `f`)
/// and returns each result as JSON text. A body that is not JSON fails.
fn eval_json(body: &str, exprs: &[&str]) -> Vec<String> {
    let program = format!(
        "import json, sys\nf = json.load(sys.stdin)\nfor e in {exprs:?}:\n    print(json.dumps(eval(e)))\n"
    );
    // Through a pipe: a file named by the process would be shared by the
    // tests running at once.
    let mut child = Command::new("python3")
        .args(["-c", &program])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(body.as_bytes())
            .expect("write the status body");
    }
    let out = child.wait_with_output().expect("run python3");
    assert!(
        out.status.success(),
        "python3 on\n{body}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `/status.json` of the node on `host`.
fn status_json(host: &Host) -> String {
    let response = host.curl(&[&format!("{LOCAL}/status.json")]);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    response.text()
}

/// The node id `/status` of the node on `host` shows.
fn node_id(host: &Host) -> String {
    let status = host.curl(&[&format!("{LOCAL}/status")]).text();
    (status.lines())
        .find_map(|l| l.strip_prefix("node "))
        .unwrap_or_else(|| panic!("no node line in {status}"))
        .to_string()
}

/// The sum of the NarSizes of the closure of `path` on `host`.
fn closure_nar_size(host: &Host, path: &str) -> u64 {
    let sizes = host.run(&format!("nix-store -q --size $(nix-store -qR {path})"));
    sizes
        .lines()
        .map(|s| s.trim().parse::<u64>().unwrap())
        .sum()
}

/// `nix-store -r paths` on `host` through its local node, trusting `keys`.
fn substitute(host: &Host, paths: &[&str], keys: &[&support::Key]) {
    let args = support::realise_args(paths, keys);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = output_within(host.cmd("nix-store", &args), Duration::from_secs(300))
        .expect("nix-store -r finished");
    assert!(
        out.status.success(),
        "nix-store -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_dashboard_and_grafana_show_two_peers_and_what_came_from_them() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let keys = [generate_key(h1, "h1-1"), generate_key(h2, "h2-1")];
    let x = build_chain(h1, "dash-x", 2);
    let y = build_chain(h2, "dash-y", 3);
    let big = build_random(h1, "dash-big", 24 << 20);
    let [_n1, _n2, n3] = three_nodes(&net, [&keys[0], &keys[1]], &[], &[]);
    let ids = [node_id(h1), node_id(h2)];

    substitute(h3, &[&x[0], &y[0]], &[&keys[0], &keys[1]]);

    // A slow NAR from h1 (24 MiB at 8 Mbit/s: about 25 s), looked at in flight.
    h1.limit_rate(8);
    let slow = std::thread::spawn({
        let args = support::realise_args(&[&big], &[&keys[0]]);
        let cmd = {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            h3.cmd("nix-store", &args)
        };
        move || output_within(cmd, Duration::from_secs(300))
    });
    let big_name = big.trim_start_matches("/nix/store/").to_string();
    let mut in_flight = String::new();
    // In flight and its peer chosen (a large NAR first asks every peer).
    let seen = support::wait_until(Duration::from_secs(30), || {
        in_flight = status_json(h3);
        in_flight.contains(&big_name) && !in_flight.contains("\"peer\":null")
    });
    assert!(
        seen,
        "the NAR of {big} never showed in flight:\n{in_flight}"
    );
    let transfer = eval_json(
        &in_flight,
        &[
            "[t['path'] for t in f['transfers']]",
            "f['transfers'][0]['peer']",
            "f['transfers'][0]['nar_size']",
            "0 < f['transfers'][0]['bytes'] < f['transfers'][0]['nar_size']",
            "f['transfers_running']",
        ],
    );
    assert_eq!(transfer[0], format!("[\"{big_name}\"]"), "{in_flight}");
    // h1 by any of its addresses: IPv4, its ULA, or the link-local one
    // its multicast hellos come from.
    let peer = &transfer[1];
    let h1_addrs = [
        h1.addr4.to_string(),
        h1.addr6.to_string(),
        h1.link_local().to_string(),
    ];
    assert!(
        h1_addrs.iter().any(|a| peer.contains(a)),
        "{peer} is not one of {h1_addrs:?}"
    );
    assert_eq!(transfer[2], closure_nar_size(h1, &big).to_string());
    assert_eq!(transfer[3], "true", "{in_flight}");
    assert_eq!(transfer[4], "1");

    // The page in a browser, with the transfer in flight.
    let browser = chromium(h3, &["--dump-dom"]);
    let png = screenshot(h3);
    let still_in_flight = status_json(h3).contains(&big_name);
    if let Some(dom) = &browser {
        for id in &ids {
            assert!(
                dom.contains(&format!("data-node=\"{id}\"")),
                "{id} in\n{dom}"
            );
        }
        if still_in_flight {
            assert!(dom.contains(&big_name), "the transfer in\n{dom}");
        } else {
            eprintln!("the transfer ended before the browser was done: not looked for in the page");
        }
    }

    let out = slow
        .join()
        .unwrap()
        .expect("nix-store -r of the slow NAR finished");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Exact bytes per peer: every NAR Nix got, as each side counted it.
    let from_h1 = closure_nar_size(h1, &x[0]) + closure_nar_size(h1, &big);
    let from_h2 = closure_nar_size(h2, &y[0]);
    let by_node = |id: &str, field: &str| {
        format!("[p['{field}'] for p in f['peers'] if p['node'] == '{id}']")
    };
    // A reply's last bytes are counted as its stream is dropped, right
    // after the client got them.
    let counted = |host: &Host, id: &str, field: &str, want: u64| {
        let mut last = String::new();
        let done = support::wait_until(Duration::from_secs(5), || {
            last = status_json(host);
            eval_json(&last, &[&by_node(id, field)])[0] == format!("[{want}]")
        });
        (done, last)
    };
    counted(h3, &ids[1], "bytes_received", from_h2);
    let (_, status) = counted(h3, &ids[0], "bytes_received", from_h1);
    let got = eval_json(
        &status,
        &[
            "len(f['peers'])",
            "sorted(p['kind'] for p in f['peers'])",
            &by_node(&ids[0], "bytes_received"),
            &by_node(&ids[1], "bytes_received"),
            "f['totals']['since_start']",
            "f['totals']['last_hour'] == f['totals']['since_start']",
            "[len(v) for v in f['last_hour'].values()]",
            "sum(f['last_hour']['bytes_from_peers'])",
            "f['transfers']",
            "f['transfers_running']",
            "f['node']",
            "f['version']",
            "f['share']",
            "sorted(k for k in f['trust']['trusted_keys'] if k.startswith('h'))",
            "f['trust']['signing_key']",
        ],
    );
    assert_eq!(got[0], "2", "{status}");
    assert_eq!(got[1], r#"["peerix", "peerix"]"#);
    assert_eq!(got[2], format!("[{from_h1}]"), "{status}");
    assert_eq!(got[3], format!("[{from_h2}]"), "{status}");
    let paths = x.len() + y.len() + 1;
    assert_eq!(
        got[4],
        format!(
            r#"{{"hits": {paths}, "misses": 0, "bytes_from_peers": {}, "bytes_from_peer_pulls": 0, "bytes_from_upstreams": 0, "bytes_to_peers": 0}}"#,
            from_h1 + from_h2
        ),
        "{status}"
    );
    assert_eq!(got[5], "true");
    assert_eq!(got[6], "[60, 60, 60, 60, 60, 60]");
    assert_eq!(got[7], (from_h1 + from_h2).to_string());
    assert_eq!((got[8].as_str(), got[9].as_str()), ("[]", "0"));
    assert_eq!(got[10], format!("\"{}\"", node_id(h3)));
    assert_eq!(got[11], format!("\"{}\"", env!("CARGO_PKG_VERSION")));
    assert_eq!(got[12], "\"every path\"");
    assert_eq!(got[13], r#"["h1-1", "h2-1"]"#);
    assert_eq!(got[14], "\"h3-1\"");

    // Compression and paces: the status says what /metrics counts. The
    // large NAR taught h3 h1's pace; h2's NARs were too small to.
    let compression = [
        "sent_nar_bytes",
        "zstd_in_bytes",
        "zstd_out_bytes",
        "received_bytes",
        "decoded_bytes",
    ];
    let exprs: Vec<String> = (compression.iter())
        .map(|c| format!("f['compression']['{c}']"))
        .chain([
            by_node(&ids[0], "pace_bytes_per_second"),
            by_node(&ids[1], "pace_bytes_per_second"),
        ])
        .collect();
    let status = status_json(h3);
    let metrics = h3.curl(&[&format!("{LOCAL}/metrics")]).text();
    let shown = eval_json(
        &status,
        &exprs.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for (c, got) in compression.iter().zip(&shown) {
        let series = format!("peerix_compress_{c}_total");
        let counted = support::metric(&metrics, &series).unwrap_or_else(|| panic!("{series}"));
        assert_eq!(
            got.parse::<f64>().ok(),
            Some(counted),
            "{c}: {status}\n{metrics}"
        );
    }
    let decoded: u64 = shown[4].parse().unwrap_or(0);
    assert!(
        decoded >= from_h1,
        "h3 got its NARs from h1 framed: {status}"
    );
    let pace_h1 = format!("peerix_peer_pace_bytes_per_second{{node=\"{}\"}}", ids[0]);
    let learnt = support::metric(&metrics, &pace_h1).unwrap_or_else(|| panic!("{metrics}"));
    let pace = shown[5]
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<f64>();
    assert_eq!(pace.ok(), Some(learnt), "{status}");
    assert_eq!(shown[6], "[null]", "{status}");

    // Each peer counted what it sent to h3, as h3 counted what it received.
    let h3_id = node_id(h3);
    for (host, sent) in [(h1, from_h1), (h2, from_h2)] {
        let (done, theirs) = counted(host, &h3_id, "bytes_sent", sent);
        assert!(done, "{} sent {sent} bytes to h3: {theirs}", host.name);
    }

    // /status answers JSON when asked, text otherwise; neither leaves the host.
    let asked = h3.curl(&["-H", "Accept: application/json", &format!("{LOCAL}/status")]);
    assert_eq!(asked.header("content-type"), Some("application/json"));
    assert_eq!(eval_json(&asked.text(), &["len(f['peers'])"]), ["2"]);
    let text = h3.curl(&[&format!("{LOCAL}/status")]).text();
    assert!(
        text.starts_with("peerix ") && text.contains("peers: 2"),
        "{text}"
    );
    for path in ["/", "/status.json"] {
        let remote = h1.curl(&[&format!("http://{}:12304{path}", h3.addr4)]);
        assert_eq!(remote.status, 403, "{path} from another host");
    }
    let page = h3.curl(&[&format!("{LOCAL}/")]);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.len() < 16 * 1024, "the page is {} bytes", html.len());
    for external in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(external), "the page loads {external}");
    }

    grafana_queries_only_exported_series(&h3.curl(&[&format!("{LOCAL}/metrics")]).text());

    // The page once every NAR is in shows the numbers of /status.json.
    if let Some(dom) = chromium(h3, &["--dump-dom"]) {
        let total = (from_h1 + from_h2).to_string();
        for id in ["saved-total", "saved-hour"] {
            assert_eq!(data_value(&dom, id), Some(total.as_str()), "{id}: {dom}");
        }
        let hits = format!("{paths}/0");
        assert_eq!(data_value(&dom, "hits"), Some(hits.as_str()), "{dom}");
        assert_eq!(data_value(&dom, "peer-count"), Some("2"), "{dom}");
        let z: Vec<u64> = (shown[..5].iter())
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let spared = z[1].saturating_sub(z[2]) + z[4].saturating_sub(z[3]);
        assert_eq!(
            data_value(&dom, "zstd-saved"),
            Some(spared.to_string().as_str()),
            "{dom}"
        );
        let pace = format!("<td class=\"n pace\" data-value=\"{learnt}\">");
        assert!(dom.contains(&pace), "{pace} in {dom}");
        for bytes in [from_h1, from_h2] {
            let cell = format!("<td class=\"n\" data-value=\"{bytes}\">");
            assert!(dom.contains(&cell), "{cell} in {dom}");
        }
        assert!(!dom.contains(&big_name), "a transfer left in {dom}");
    }
    drop(n3);
    if let Some(png) = png {
        eprintln!("dashboard screenshot: {}", png.display());
    }
}

/// A node whose Nix got a closure through the upstream caches shows its
/// NarSizes, exactly, split between what it downloaded itself ("from
/// upstreams") and what a peer pulled for the LAN ("over the LAN"); the
/// peer counts what it served from its pulls, in its totals and for that
/// peer; a spool directory it cannot use is a warning.
#[test]
fn status_shows_bytes_from_upstreams_and_from_peers_pulls() {
    let Some(net) = Net::new(3) else { return };
    let (up, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let ukey = generate_key(up, "upstream-1");
    let cache = UpstreamCache::start(up);
    // 16 paths, each fetched by h2 or h3 by rendezvous order: that one of
    // them fetches none is a chance of 2^-15.
    let chain = build_chain(up, "status-pull", 16);
    let url = cache.publish(up, "xz", "xz", &ukey, &[&chain[0]]);
    // h2's state directory is a file: its spool cannot be made, and it
    // streams its pulls without sharing them.
    fs::write(h2.dir.join("state"), "not a directory").unwrap();
    let nodes = [
        cache.node(h2, "SSL_CERT_FILE", &[&url], &ukey, &[]),
        cache.node(h3, "SSL_CERT_FILE", &[&url], &ukey, &[]),
    ];
    wait_pullers(&[h2, h3], &nodes);
    substitute(h3, &[&chain[0]], &[&ukey]);
    let total = closure_nar_size(up, &chain[0]);

    let figures = [
        "f['totals']['since_start']['bytes_from_upstreams']",
        "f['totals']['since_start']['bytes_from_peer_pulls']",
    ];
    // A reply's last bytes are counted as its stream is dropped.
    let mut status = String::new();
    let counted = support::wait_until(Duration::from_secs(5), || {
        status = status_json(h3);
        let got = eval_json(&status, &figures);
        got.iter().map(|n| n.parse::<u64>().unwrap()).sum::<u64>() == total
    });
    assert!(counted, "{total} bytes in all on h3: {status}");
    let got = eval_json(
        &status,
        &[
            figures[0],
            figures[1],
            "f['totals']['since_start']['bytes_from_peers']",
            "f['totals']['last_hour'] == f['totals']['since_start']",
            "sum(f['last_hour']['bytes_from_upstreams'])",
            "sum(f['last_hour']['bytes_from_peer_pulls'])",
            "[w for w in f['warnings'] if 'spool' in w]",
        ],
    );
    let (own, lan): (u64, u64) = (got[0].parse().unwrap(), got[1].parse().unwrap());
    eprintln!("h3: {own} bytes from its own downloads, {lan} from h2's pulls, {total} in all");
    assert!(own > 0 && lan > 0, "both nodes fetched some: {status}");
    assert_eq!(got[2], "0", "no peer had them in its store");
    assert_eq!(got[3], "true");
    assert_eq!(
        (got[4].as_str(), got[5].as_str()),
        (got[0].as_str(), got[1].as_str())
    );
    assert_eq!(got[6], "[]", "h3's spool is fine");

    // h2 counted what it served h3 from its pulls as h3 counted it.
    let h3_id = node_id(h3);
    let mut theirs = String::new();
    let served = support::wait_until(Duration::from_secs(5), || {
        theirs = status_json(h2);
        let got = eval_json(
            &theirs,
            &[
                "f['totals']['since_start']['bytes_to_peers']",
                &format!("[p['bytes_sent'] for p in f['peers'] if p['node'] == '{h3_id}']"),
            ],
        );
        got == [lan.to_string(), format!("[{lan}]")]
    });
    assert!(served, "h2 served {lan} bytes of its pulls to h3: {theirs}");
    let warnings = eval_json(&theirs, &["f['warnings']"]).remove(0);
    assert!(
        warnings.contains("the spool cannot use") && warnings.contains("streamed without sharing"),
        "{warnings}"
    );

    // The page shows the same figures.
    if let Some(dom) = chromium(h3, &["--dump-dom"]) {
        assert_eq!(
            data_value(&dom, "upstream-hour"),
            Some(own.to_string().as_str()),
            "{dom}"
        );
        assert_eq!(
            data_value(&dom, "upstream-total"),
            Some(own.to_string().as_str()),
            "{dom}"
        );
        assert_eq!(
            data_value(&dom, "saved-hour"),
            Some(lan.to_string().as_str()),
            "{dom}"
        );
        assert!(dom.contains("of it peers' pulls"), "{dom}");
    }
}

/// Runs headless Chromium in `host` on its node's dashboard with `extra`
/// arguments (`--dump-dom`, `--screenshot=…`): what it printed (the DOM
/// after the page's script ran). `None`, with a message, where there is no
/// Chromium.
fn chromium(host: &Host, extra: &[&str]) -> Option<String> {
    let Some(bin) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("skipping the browser part: no chromium (apt-get install chromium)");
        return None;
    };
    let profile = format!("--user-data-dir={}", host.dir.join("chromium").display());
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=2000",
        &profile,
    ];
    args.extend(extra);
    args.push("http://127.0.0.1:12304/");
    let out = output_within(host.cmd(bin, &args), Duration::from_secs(120))
        .expect("chromium finished within 2 minutes");
    assert!(
        out.status.success(),
        "chromium {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A screenshot of the dashboard on `host`'s node, copied out of the host
/// to [`screenshot_path`]; `None` where there is no Chromium.
fn screenshot(host: &Host) -> Option<PathBuf> {
    let png = host.dir.join("dashboard.png");
    let shot = format!("--screenshot={}", png.display());
    chromium(host, &[&shot, "--window-size=1200,880"])?;
    assert!(
        fs::metadata(&png).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        png.display()
    );
    let out = screenshot_path();
    fs::copy(&png, &out).expect("copy the screenshot out of the host");
    Some(out)
}

/// The value of `data-value` on the element with `id` in `dom`.
fn data_value<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let tag = &dom[dom.find(&format!("id=\"{id}\""))?..];
    let tag = &tag[..tag.find('>')?];
    let value = &tag[tag.find("data-value=\"")? + "data-value=\"".len()..];
    Some(&value[..value.find('"')?])
}

/// Every `peerix_…` series the Grafana dashboard queries is one `/metrics`
/// exports, and every label value it selects (`label="value"`) is one the
/// series has.
fn grafana_queries_only_exported_series(metrics: &str) {
    // The file is JSON.
    eval_json(GRAFANA, &["len(f['panels'])"]);
    let exported = |name: &str| -> Vec<&str> {
        (metrics.lines())
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(['{', ' ']))
            })
            .collect()
    };
    let text = GRAFANA.replace("\\\"", "\"");
    let mut checked = 0;
    let mut rest = text.as_str();
    while let Some(at) = rest.find("peerix_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let lines = exported(name);
        assert!(
            !lines.is_empty(),
            "the Grafana dashboard queries {name}, which /metrics lacks:\n{metrics}"
        );
        if let Some(selector) = tail[end..].strip_prefix('{') {
            let selector = &selector[..selector.find('}').expect("a closed selector")];
            for matcher in selector.split(',').filter(|m| !m.contains("=~")) {
                let label = matcher.trim();
                assert!(
                    lines.iter().any(|l| l.contains(label)),
                    "{name}{{{label}}} is not exported:\n{metrics}"
                );
            }
        }
        checked += 1;
        rest = &tail[end..];
    }
    assert!(
        checked >= 20,
        "only {checked} series names in the Grafana dashboard"
    );
}

#[test]
fn status_warns_of_what_is_unwise() {
    let Some(net) = Net::new(1) else { return };
    let h1 = net.host(1);
    // Nix trusting no key, a key others can read, no peer to ask.
    h1.add_nix_conf("trusted-public-keys =");
    let key = generate_key(h1, "h1-1");
    h1.run(&format!("chmod 640 {}", key.secret.display()));
    let n1 = node(h1, &key, &[], &["--no-broadcast"]);
    let warnings = eval_json(&status_json(h1), &["f['warnings']"]).remove(0);
    for expected in [
        "can be read by others (mode 640): chmod 600 it",
        "--no-broadcast and no --extra-host: no peer is ever asked",
        "no trusted keys",
    ] {
        assert!(warnings.contains(expected), "{expected:?} in {warnings}");
    }
    // Set up well, it warns of nothing.
    drop(n1);
    h1.run(&format!("chmod 600 {}", key.secret.display()));
    let extra = ["--no-broadcast", "--extra-host", "127.0.0.1"];
    let _n1 = node(h1, &key, &[&key], &extra);
    assert_eq!(eval_json(&status_json(h1), &["f['warnings']"]), ["[]"]);
}

#[test]
fn version_prints_the_version_and_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_peerix"))
        .arg("--version")
        .output()
        .expect("run peerix --version");
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        line.starts_with(&format!("peerix {}", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output();
    match head {
        Ok(head) if head.status.success() => {
            let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
            assert_eq!(
                line,
                format!("peerix {} (commit {head})", env!("CARGO_PKG_VERSION"))
            );
        }
        _ => eprintln!("not in a git checkout: the commit is not checked"),
    }
}
