//! Section `closure`: `nix-store -r` of a chain closure through peerix,
//! beside a plain file server.

use crate::harness::*;
use crate::report::*;
use crate::support::{build_chain, generate_key, Net};

/// `nix-store -r` of a chain closure through peerix, against the same
/// closure from a plain HTTP server of a `nix copy --to file://` cache.
pub(crate) fn closure(m: Mode) -> Vec<Row> {
    let net = Net::new(2).expect("test hosts");
    let (peer, client_host) = (net.host(1), net.host(2));
    let key = generate_key(peer, "bench-1");
    let count = m.pick(10, 200);
    let chain = build_chain(peer, "closure", count);
    let top = &chain[0];
    peer.run(&format!(
        "nix store sign --key-file {} -r {top}",
        key.secret.display()
    ));
    let (_server, file_url) = file_server(peer, top);
    wait_answers(client_host, &file_url, "the file cache's HTTP server");
    let _peer_node = node(peer, &key, &[]);
    let _local_node = node(client_host, &key, &[]);
    wait_peers(client_host, 1);

    // Run 0 is the first use of the paths (the peer asks Nix for each
    // path's info); the later runs are what a second machine would see.
    let (mut cold, mut warm) = (vec![(0.0, 0.0)], vec![]);
    cold.clear();
    for run in 0..=m.pick(1, 5) {
        let mut pair = (0.0, 0.0);
        for (i, url) in [&file_url, &format!("http://{LOCAL}")].iter().enumerate() {
            let took = substitute_timed(client_host, top, url, &key, count, &format!("{run}-{i}"));
            if i == 0 {
                pair.0 = took;
            } else {
                pair.1 = took;
            }
        }
        if run == 0 {
            cold.push(pair);
        } else {
            warm.push(pair);
        }
    }
    let label = format!("{count}-path closure");
    let row = |key: &str, what: &str, runs: &[(f64, f64)]| {
        Row::new(
            key,
            &format!("`nix-store -r` of a {label} through peerix, {what}"),
            "s",
            runs.iter().map(|r| r.1).collect(),
        )
        .baseline(
            "plain HTTP server of a `nix copy --to file://` cache",
            runs.iter().map(|r| r.0).collect(),
        )
        .target(Target::TimesBaseline(1.5))
    };
    vec![
        row("closure_warm_s", "peer's path info cached", &warm),
        row(
            "closure_cold_s",
            "first run (peer's path info not cached)",
            &cold,
        ),
    ]
}
