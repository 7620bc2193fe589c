//! Section `upkeep`: what following the store costs the index.

use std::fmt::Write as _;
use std::fs;
use std::thread;
use std::time::Duration;
use std::time::Instant;

use crate::harness::*;
use crate::report::*;
use crate::support::{generate_key, wait_until, Host, Net, Xorshift};

/// The upkeep of the store index: the CPU of a node (with its Nix
/// children) while 1,000 paths are added to its store, for a store of N
/// paths and one of 10 × N. The paths are made as in `index` (empty
/// directories on a tmpfs registered with `nix-store --register-validity`),
/// in 10 batches of 100, as builds and substitutions add them; the node
/// sees each entry appear (inotify) and asks its `nix-store --serve` which
/// are valid once Nix's database changes.
pub(crate) fn upkeep(m: Mode) -> Vec<Row> {
    let net = Net::new(2).expect("test hosts");
    let key = generate_key(net.host(1), "bench-1");
    let small = m.pick(1000, 10_000);
    let sizes = [small, 10 * small];
    let _tmpfs: Vec<TmpfsStore> = (1..=2).map(|i| TmpfsStore::mount(net.host(i))).collect();
    for (i, &count) in sizes.iter().enumerate() {
        fake_store(net.host(i + 1), count);
    }
    let nodes: Vec<Node> = (1..=2).map(|i| node(net.host(i), &key, &[])).collect();
    let (added, batches) = (1000, 10);
    let mut cpu = [vec![], vec![]];
    let mut took = [vec![], vec![]];
    for round in 0..m.pick(1, 3) {
        for (i, &count) in sizes.iter().enumerate() {
            let host = net.host(i + 1);
            let before_count = count + round * added;
            wait_valid(host, before_count);
            thread::sleep(Duration::from_millis(500));
            let pid = nodes[i].pid();
            let (cpu0, t0) = (tree_cpu_secs(pid), Instant::now());
            for _ in 0..batches {
                fake_paths(host, added / batches);
            }
            wait_valid(host, before_count + added);
            thread::sleep(Duration::from_millis(300));
            cpu[i].push((tree_cpu_secs(pid) - cpu0) * 1000.0);
            took[i].push(t0.elapsed().as_secs_f64());
        }
    }
    let label = |n: usize| format!("{added} paths added to a store of {n}");
    let [cpu_small, cpu_large] = cpu;
    vec![
        Row::new(
            "upkeep_cpu_small_ms",
            &format!(
                "index upkeep: node CPU (with its Nix children), {}",
                label(sizes[0])
            ),
            "ms",
            cpu_small.clone(),
        )
        .note(&format!(
            "in {batches} batches; {} s from the first to all indexed",
            num(percentile(&took[0], 50.0))
        )),
        Row::new(
            "upkeep_cpu_large_ms",
            &format!(
                "index upkeep: node CPU (with its Nix children), {}",
                label(sizes[1])
            ),
            "ms",
            cpu_large,
        )
        .baseline(&format!("the same with a store of {}", sizes[0]), cpu_small)
        .target(Target::TimesBaseline(2.0))
        .note("a cost in proportion to the store would be 10 × the baseline"),
    ]
}

/// Adds `n` fake valid paths to `host`'s store: the directories first,
/// then their registration.
fn fake_paths(host: &Host, n: usize) {
    let store = host.nix_dir.join("store");
    let mut rng = Xorshift::new();
    let mut reg = String::new();
    for i in 0..n {
        let name = format!("{}-bench-added-{i}", rng.hash());
        fs::create_dir(store.join(&name)).expect("make a fake store entry");
        let _ = write!(
            reg,
            "/nix/store/{name}\nsha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n120\n\n0\n"
        );
    }
    let file = host.dir.join(format!("register-{}.txt", next_id()));
    fs::write(&file, reg).expect("write the registration");
    host.run(&format!(
        "nix-store --register-validity --hash-given < {}",
        file.display()
    ));
}

/// Waits (at most 60 s) until the node on `host` counts `n` valid paths.
fn wait_valid(host: &Host, n: usize) {
    let url = format!("http://{LOCAL}/status");
    let want = format!("store: {n} valid paths\n");
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(60), || {
        last = host.curl(&[&url]).text();
        last.contains(&want)
    });
    assert!(ok, "{} never counted {n} valid paths:\n{last}", host.name);
}
