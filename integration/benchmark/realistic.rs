//! Section `realistic`: a layered, realistic closure, beside harmonia.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use crate::harness::*;
use crate::report::*;
use crate::support::{generate_key, nix_build, Host, Net};

/// harmonia 3.2.0, the baseline of the realistic closure: beside the
/// checkout, in `../shared/anchors/` (never part of this repository).
fn harmonia_binary() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/anchors/harmonia-cache");
    path.is_file().then_some(path)
}

/// Builds on `host` a closure shaped like a real one: `layers` layers of
/// `width` paths, each path of a layer referring to 3 paths of the layer
/// below (its own index and two others), each holding 4 to 64 KiB of
/// random bytes, and a top path referring to the whole top layer. Its top
/// path.
fn build_layers(host: &Host, layers: usize, width: usize) -> String {
    let mut rng = Lcg(0x5eed_1234_abcd_0001);
    let mut expr = String::from(
        "let\n  mk = name: size: deps: derivation {\n    inherit name;\n    \
         system = builtins.currentSystem;\n    builder = \"/bin/sh\";\n    \
         args = [ \"-c\" \"export PATH=/usr/bin:/bin; mkdir $out; \
         head -c ${toString size} /dev/urandom > $out/data; echo ${toString deps} > $out/deps\" ];\n  \
         };\nin rec {\n",
    );
    for l in 0..layers {
        for i in 0..width {
            let size = 4096 + rng.below(65536 - 4096 + 1);
            let mut deps = Vec::new();
            if l > 0 {
                let mut picked = vec![i];
                while picked.len() < 3.min(width) {
                    let j = rng.below(width);
                    if !picked.contains(&j) {
                        picked.push(j);
                    }
                }
                deps = picked.iter().map(|j| format!("l{}_{j}", l - 1)).collect();
            }
            let _ = writeln!(
                expr,
                "  l{l}_{i} = mk \"peerix-real-{l}-{i}\" {size} [ {} ];",
                deps.join(" ")
            );
        }
    }
    let top: Vec<String> = (0..width).map(|i| format!("l{}_{i}", layers - 1)).collect();
    let _ = writeln!(
        expr,
        "  top = mk \"peerix-real-top\" 4096 [ {} ];\n}}",
        top.join(" ")
    );
    nix_build(host, "realistic", &expr, &["top"])
}

/// A deterministic generator for the closure's shape.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Issue 11's realistic closure: Nix 2.8 on one host substitutes a
/// 301-path closure (10 layers of 30 paths, 3 references each into the
/// layer below, 4–64 KiB each) from another host: from harmonia on the
/// peer directly (one hop), from a plain HTTP server of a `nix copy --to
/// file://` cache, and through two peerix nodes; the median of 3 runs,
/// the client's store garbage-collected and its narinfo cache new each run.
pub(crate) fn realistic(m: Mode) -> Vec<Row> {
    let net = Net::new(2).expect("test hosts");
    let (peer, client_host) = (net.host(1), net.host(2));
    let key = generate_key(peer, "bench-1");
    let (layers, width) = (m.pick(3, 10), m.pick(5, 30));
    let count = layers * width + 1;
    peer.add_nix_conf("max-jobs = 4");
    let t = Instant::now();
    let top = build_layers(peer, layers, width);
    eprintln!("bench: {count}-path closure built in {:.1?}", t.elapsed());
    peer.run(&format!(
        "nix store sign --key-file {} -r {top}",
        key.secret.display()
    ));
    let got = peer.run(&format!("nix-store -qR {top} | wc -l"));
    assert_eq!(got, count.to_string(), "the closure built");

    let mut ways: Vec<(&str, String)> = Vec::new();
    let mut _servers = Vec::new();
    let harmonia = harmonia_binary();
    match &harmonia {
        Some(bin) => {
            let config = peer.dir.join("harmonia.toml");
            fs::write(
                &config,
                format!(
                    "bind = \"{}:5000\"\nenable_compression = false\nsign_key_paths = [\"{}\"]\n",
                    peer.addr4,
                    key.secret.display()
                ),
            )
            .expect("write harmonia's configuration");
            let mut cmd = peer.cmd(bin.to_str().unwrap(), &[]);
            cmd.env("CONFIG_FILE", &config);
            _servers.push(peer.spawn_daemon(cmd, "harmonia"));
            ways.push(("harmonia", format!("http://{}:5000", peer.addr4)));
        }
        None => eprintln!(
            "bench: realistic: harmonia baseline skipped: ../shared/anchors/harmonia-cache \
             (beside the checkout) is absent"
        ),
    }
    eprintln!(
        "bench: realistic: the original Python Peerix (two hops) is not available here: skipped"
    );
    let (server, file_url) = file_server(peer, &top);
    _servers.push(server);
    ways.push(("file", file_url));
    for (name, url) in &ways {
        wait_answers(client_host, url, name);
    }
    let _peer_node = node(peer, &key, &[]);
    let _local_node = node(client_host, &key, &[]);
    wait_peers(client_host, 1);
    ways.push(("peerix", format!("http://{LOCAL}")));

    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for run in 0..m.pick(1, 3) {
        // Each way goes first once in a while: no way always gets the
        // machine fresh.
        for k in 0..ways.len() {
            let w = (k + run) % ways.len();
            let (name, url) = &ways[w];
            let tag = format!("real-{run}-{name}");
            times[w].push(substitute_timed(client_host, &top, url, &key, count, &tag));
        }
    }
    let of = |name: &str| -> Vec<f64> {
        let i = ways.iter().position(|(n, _)| *n == name).unwrap();
        times[i].clone()
    };
    let label = format!("{count}-path realistic closure ({layers} layers of {width})");
    let mut rows = Vec::new();
    let peerix_row = Row::new(
        "realistic_peerix_s",
        &format!("`nix-store -r` of a {label} through peerix, two hops"),
        "s",
        of("peerix"),
    );
    let file_row = Row::new(
        "realistic_file_server_s",
        &format!("`nix-store -r` of a {label} from a plain HTTP server of a `nix copy --to file://` cache"),
        "s",
        of("file"),
    );
    match harmonia {
        Some(_) => {
            let what = "harmonia 3.2.0 on the peer, directly (one hop)";
            rows.push(
                peerix_row
                    .baseline(what, of("harmonia"))
                    .target(Target::TimesBaseline(1.5)),
            );
            rows.push(file_row.baseline(what, of("harmonia")));
            rows.push(
                Row::new(
                    "realistic_peerix_vs_file_s",
                    &format!("`nix-store -r` of a {label} through peerix, beside the file server"),
                    "s",
                    of("peerix"),
                )
                .baseline(
                    "plain HTTP server of a `nix copy --to file://` cache",
                    of("file"),
                ),
            );
        }
        None => {
            rows.push(
                peerix_row
                    .baseline(
                        "plain HTTP server of a `nix copy --to file://` cache",
                        of("file"),
                    )
                    .note("harmonia absent: its baseline was skipped"),
            );
        }
    }
    rows
}
