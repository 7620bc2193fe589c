//! One secret and one trust line for the whole LAN, with real Nix in
//! network namespaces: nodes given only a network key (no `--private-key`,
//! no `--trusted-key`) sign what they serve with the LAN key derived from
//! it, and every Nix trusting only the line `peerix lan-key` prints
//! substitutes from every machine, with each Nix client; a stranger with
//! another secret can neither fetch nor inject, even trusting the LAN's
//! (public) line; a member serving wrong bytes is still caught by the
//! NarHash check; and a LAN moves to a new secret machine by machine,
//! substituting across every step.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::nix_clients::{self, Client};
use support::{build_chain, hash_of, nar_hash, Daemon, Host, Net, LOCAL};

/// How long one `nix-store -r` may take.
const LIMIT: Duration = Duration::from_secs(120);

/// `peerix lan-key ARGS…` run in `host`: its output.
fn lan_key(host: &Host, args: &str) -> Output {
    host.try_run(&format!("{} lan-key {args}", env!("CARGO_BIN_EXE_peerix")))
}

/// The one line `peerix lan-key --network-key-file FILE` prints in `host`.
fn lan_line(host: &Host, file: &Path) -> String {
    let out = lan_key(host, &format!("--network-key-file {}", file.display()));
    one_line(host, &out)
}

/// The single line `out` printed, checked: the command succeeded and
/// printed exactly one line, `NAME:BASE64`.
fn one_line(host: &Host, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "peerix lan-key on {}: {}",
        host.name,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let line = stdout.trim_end().to_string();
    assert!(
        line.starts_with("peerix-lan-") && line.contains(':'),
        "{line}"
    );
    line
}

/// A new secret made on `host` with `peerix lan-key --new`, then given to
/// each of `others` as `scp` would (a copy, mode 0600): its file on each
/// host, in `[host, others…]` order, and its line, which every host prints
/// alike.
fn new_secret(host: &Host, others: &[&Host], name: &str) -> (Vec<PathBuf>, String) {
    let file = host.dir.join(name);
    let out = lan_key(host, &format!("--new {}", file.display()));
    let line = one_line(host, &out);
    let mut files = vec![file.clone()];
    for other in others {
        let copy = other.dir.join(name);
        std::fs::copy(&file, &copy).expect("copy the secret");
        host.run(&format!("chmod 600 {}", copy.display()));
        assert_eq!(
            lan_line(other, &copy),
            line,
            "{} prints another line",
            other.name
        );
        files.push(copy);
    }
    (files, line)
}

/// `--network-key-file` for each of `files`, in order.
fn key_args(files: &[&PathBuf]) -> Vec<String> {
    (files.iter())
        .flat_map(|f| ["--network-key-file".to_string(), f.display().to_string()])
        .collect()
}

/// A node on `host` with only these network keys (run with `client`'s Nix).
fn lan_node(host: &Host, client: Option<&Client>, files: &[&PathBuf]) -> Daemon {
    let args = key_args(files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match client {
        Some(client) => client.spawn_peerix(host, &args),
        None => host.spawn_peerix(&args),
    }
}

/// Makes `lines` the only keys `host`'s Nix trusts (a later line in
/// nix.conf replaces an earlier one).
fn trust_only(host: &Host, lines: &[&str]) {
    host.add_nix_conf(&format!("trusted-public-keys = {}", lines.join(" ")));
}

/// The node's status on `host`.
fn status(host: &Host) -> String {
    host.curl(&[&format!("{LOCAL}/status")]).text()
}

/// Waits until the node of each of `hosts` knows the others' (their
/// nodes' current ids among its peers; a node restarted has a new one).
fn wait_heard(hosts: &[&Host]) {
    let ids: Vec<String> = (hosts.iter())
        .map(|host| {
            let text = status(host);
            let id = text.lines().find_map(|l| l.strip_prefix("node "));
            id.unwrap_or_else(|| panic!("no node id in {text}"))
                .to_string()
        })
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        let mut text = String::new();
        let heard = support::wait_until(Duration::from_secs(20), || {
            text = status(host);
            (ids.iter().enumerate()).all(|(j, id)| i == j || text.contains(&format!("  {id} ")))
        });
        assert!(
            heard,
            "{}'s node never heard all of {ids:?}:\n{text}",
            host.name
        );
    }
}

/// `path`, built on `from`, substituted on `to` through `to`'s node by
/// `client`'s `nix-store -r` (the machine's Nix when `None`), with only
/// `to`'s nix.conf for trust. The narinfo `to`'s node hands its Nix must
/// carry the signature of the LAN key named `signer`, and the path must
/// arrive with `from`'s NAR.
fn substitute(
    from: &Host,
    to: &Host,
    client: Option<&Client>,
    path: &str,
    signer: &str,
) -> Result<(), String> {
    let url = format!("{LOCAL}/{}.narinfo", hash_of(path));
    let found = support::wait_until(Duration::from_secs(20), || to.curl(&[&url]).status == 200);
    if !found {
        return Err(format!(
            "{}'s node never had a narinfo for {path} from {}",
            to.name, from.name
        ));
    }
    let narinfo = to.curl(&[&url]).text();
    if !narinfo.contains(&format!("\nSig: {signer}:")) {
        return Err(format!("not signed by {signer}: {narinfo}"));
    }
    let args = [
        "-r",
        path,
        "--option",
        "substituters",
        LOCAL,
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
    ];
    let command = match client {
        Some(client) => client.command(to, "nix-store", &args),
        None => to.cmd("nix-store", &args),
    };
    let out = support::output_within(command, LIMIT).expect("nix-store -r finished");
    if !out.status.success() {
        return Err(format!(
            "nix-store -r {path} on {} failed: {}",
            to.name,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (want, got) = (nar_hash(from, path), nar_hash(to, path));
    match want == got {
        true => Ok(()),
        false => Err(format!(
            "{path}: NAR hash {got} on {}, {want} on {}",
            to.name, from.name
        )),
    }
}

/// The name of a LAN key line.
fn name_of(line: &str) -> &str {
    line.split_once(':').expect("NAME:BASE64").0
}

#[test]
fn one_secret_and_one_line_let_every_nix_substitute_across_the_lan() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let (files, line) = new_secret(h1, &[h2, h3], "lan.key");
    for host in [h1, h2, h3] {
        trust_only(host, &[&line]);
    }
    // Nodes with nothing but the secret.
    let _n1 = lan_node(h1, None, &[&files[0]]);
    let _n2 = lan_node(h2, None, &[&files[1]]);

    let mut failures = Vec::new();
    for client in nix_clients::all(h3) {
        // h3's node runs on this client's Nix too: it reads that Nix's
        // configuration to learn that the LAN key is trusted.
        let mut n3 = lan_node(h3, Some(&client), &[&files[2]]);
        wait_heard(&[h1, h2, h3]);
        let learnt = n3.log_lines("must be signed by one of");
        let mut result = match learnt.iter().any(|l| l.contains(name_of(&line))) {
            _ if n3.log().contains("cannot read the Nix configuration") => {
                Err("the node could not read its Nix's configuration".into())
            }
            true => Ok(()),
            false => Err(format!("the node did not trust the LAN key: {learnt:?}")),
        };
        let tag = format!("lan-{}", client.name);
        let from_h1 = build_chain(h1, &format!("{tag}-h1"), 2);
        let from_h2 = build_chain(h2, &format!("{tag}-h2"), 1);
        for (from, path) in [(h1, &from_h1[0]), (h2, &from_h2[0])] {
            if result.is_ok() {
                result = substitute(from, h3, Some(&client), path, name_of(&line));
            }
        }
        eprintln!(
            "{}: {}",
            client.label(),
            match &result {
                Ok(()) => "substituted from h1 and h2".to_string(),
                Err(e) => format!("FAILED: {e}"),
            }
        );
        if let Err(e) = result {
            failures.push(format!("{}: {e}\n{}", client.label(), n3.log()));
        }
        n3.kill();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A member of the LAN serving bytes that do not match its NarHash is
    // caught all the same: Nix never gets the path.
    let n3 = lan_node(h3, None, &[&files[2]]);
    wait_heard(&[h1, h2, h3]);
    let path = support::build_random(h2, &format!("{}-wrong", net.prefix), 64 << 10);
    let file = h2.outside(&path);
    let mut bytes = std::fs::read(&file).unwrap();
    for b in &mut bytes[1000..1100] {
        *b = !*b;
    }
    std::fs::write(&file, &bytes).unwrap();
    assert!(
        substitute(h2, h3, None, &path, name_of(&line)).is_err(),
        "Nix took a wrong NAR"
    );
    let valid = h3.try_run(&format!("nix-store --check-validity {path}"));
    assert!(!valid.status.success(), "the wrong NAR is in h3's store");
    assert!(
        n3.log().contains("does not match its NarHash"),
        "{}",
        n3.log()
    );
}

#[test]
fn a_stranger_with_another_secret_can_neither_fetch_nor_inject() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let (files, line) = new_secret(h1, &[h2], "lan.key");
    let (stranger_files, stranger_line) = new_secret(h3, &[], "stranger.key");
    assert_ne!(line, stranger_line);
    assert_ne!(name_of(&line), name_of(&stranger_line));
    trust_only(h1, &[&line]);
    trust_only(h2, &[&line]);
    // The LAN's line is public: the stranger's Nix may trust it too.
    trust_only(h3, &[&line, &stranger_line]);
    let n1 = lan_node(h1, None, &[&files[0]]);
    let _n2 = lan_node(h2, None, &[&files[1]]);
    // The stranger asks the LAN's nodes by unicast too.
    let mut args = key_args(&[&stranger_files[0]]);
    for host in [h1, h2] {
        args.extend(["--extra-host".into(), host.addr4.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let n3 = h3.spawn_peerix(&args);
    wait_heard(&[h1, h2]);

    // The LAN works; the stranger gets nothing from it.
    let lan_path = build_chain(h1, "lan-only", 1).remove(0);
    substitute(h1, h2, None, &lan_path, name_of(&line)).unwrap();
    let hash = hash_of(&lan_path);
    assert_eq!(h3.curl(&[&format!("{LOCAL}/{hash}.narinfo")]).status, 404);
    let out = h3.try_run(&format!(
        "nix-store -r {lan_path} --option substituters {LOCAL}"
    ));
    assert!(!out.status.success(), "the stranger got {lan_path}");
    let direct = format!("http://{}:12304/peer", h1.addr4);
    for url in [
        format!("{direct}/{hash}.narinfo"),
        format!("{direct}/nar/{hash}.nar"),
    ] {
        assert_eq!(h3.curl(&[&url]).status, 403, "{url}");
    }
    assert!(status(h3).contains("peers: 0\n"), "{}", status(h3));

    // What the stranger has (signed with its own LAN key) never reaches
    // the LAN's Nix.
    let injected = build_chain(h3, "stranger", 1).remove(0);
    let url = format!("{LOCAL}/{}.narinfo", hash_of(&injected));
    for host in [h1, h2] {
        assert_eq!(host.curl(&[&url]).status, 404, "on {}", host.name);
        let out = host.try_run(&format!(
            "nix-store -r {injected} --option substituters {LOCAL} --option narinfo-cache-negative-ttl 0"
        ));
        assert!(!out.status.success(), "{} got {injected}", host.name);
    }
    assert!(
        n1.log().contains("wrong authentication tag"),
        "{}",
        n1.log()
    );
    assert!(
        n3.log().contains("wrong authentication tag") || n3.log().contains("status 403"),
        "{}",
        n3.log()
    );
}

#[test]
fn a_lan_moves_to_a_new_secret_machine_by_machine_without_a_failed_substitution() {
    let Some(net) = Net::new(3) else { return };
    let hosts = [net.host(1), net.host(2), net.host(3)];
    let (old, old_line) = new_secret(hosts[0], &hosts[1..], "old.key");
    let (new, new_line) = new_secret(hosts[0], &hosts[1..], "new.key");
    let (old_name, new_name) = (name_of(&old_line), name_of(&new_line));
    let mut nodes: Vec<Daemon> = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        trust_only(host, &[&old_line]);
        nodes.push(lan_node(host, None, &[&old[i]]));
    }
    wait_heard(&hosts);

    // Every machine in turn: first trusting and accepting the new secret,
    // then sending with it, then forgetting the old one. After each change
    // of one machine, paths go between it and both others.
    let phases: [(&str, &[&str]); 3] = [
        ("accepts the new secret", &[&old_line, &new_line]),
        ("sends with the new secret", &[&old_line, &new_line]),
        ("has forgotten the old secret", &[&new_line]),
    ];
    let mut signer = [old_name; 3];
    for (phase, (what, trusted)) in phases.iter().enumerate() {
        for i in 0..3 {
            let host = hosts[i];
            let keys = match phase {
                0 => vec![&old[i], &new[i]],
                1 => vec![&new[i], &old[i]],
                _ => vec![&new[i]],
            };
            trust_only(host, trusted);
            nodes[i].kill();
            nodes[i] = lan_node(host, None, &keys);
            if phase > 0 {
                signer[i] = new_name;
            }
            wait_heard(&hosts);
            let step = format!("{}-{phase}-{i}", host.name);
            let (next, last) = (hosts[(i + 1) % 3], hosts[(i + 2) % 3]);
            let mine = build_chain(host, &format!("{step}-mine"), 1).remove(0);
            let theirs = build_chain(next, &format!("{step}-theirs"), 1).remove(0);
            let moves = [
                (host, next, &mine, signer[i]),
                (host, last, &mine, signer[i]),
                (next, host, &theirs, signer[(i + 1) % 3]),
            ];
            for (from, to, path, signed) in moves {
                if let Err(e) = substitute(from, to, None, path, signed) {
                    panic!(
                        "after {} {what}: {} -> {}: {e}\nlogs:\n{}",
                        host.name,
                        from.name,
                        to.name,
                        nodes
                            .iter()
                            .map(Daemon::log)
                            .collect::<Vec<_>>()
                            .join("\n---\n")
                    );
                }
            }
            eprintln!("{} {what}: paths went both ways", host.name);
        }
    }
}
