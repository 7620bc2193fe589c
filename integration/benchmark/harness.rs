//! What the sections share: sizes per mode, nodes on test hosts, the load
//! client run inside a host, processes (CPU, memory), fake stores, timed
//! substitution.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::{node_with_env, output_within, wait_until, Daemon, Host, Key, Xorshift};

/// The local node's address inside a host, as the local Nix reaches it.
pub(crate) const LOCAL: &str = "127.0.0.1:12304";
/// The daemon's default discovery timeout (ms), used where none is given.
pub(crate) const DEFAULT_TIMEOUT_MS: f64 = 500.0;

/// Sizes and repetitions: small in quick mode, the in full mode.
#[derive(Clone, Copy)]
pub(crate) struct Mode {
    pub(crate) quick: bool,
}

impl Mode {
    /// `quick` in quick mode, else `full`.
    pub(crate) fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Starts a node on `host` signing with `key` and accepting narinfo signed
/// by it (every node of a benchmark shares one key), at the daemon's default
/// log level (`info`: debug logging would cost a line per request). With
/// `PEERIX_BENCH_LOGS=DIR` in the environment (for profiling, not for
/// numbers) nodes log at `debug` and their logs are kept in DIR.
pub(crate) fn node(host: &Host, key: &Key, extra: &[&str]) -> Node {
    let keep = std::env::var_os("PEERIX_BENCH_LOGS").map(PathBuf::from);
    let level = if keep.is_some() { "debug" } else { "info" };
    let daemon = node_with_env(host, key, &[key], extra, &[("RUST_LOG", level)]);
    let keep = keep.map(|dir| dir.join(format!("{}-{}-peerix.log", next_id(), host.name)));
    Node { daemon, keep }
}

/// A node started by [`node`]: a [`Daemon`] whose log is kept when asked.
pub(crate) struct Node {
    pub(crate) daemon: Daemon,
    pub(crate) keep: Option<PathBuf>,
}

impl std::ops::Deref for Node {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(file) = &self.keep {
            self.daemon.kill();
            let _ = fs::create_dir_all(file.parent().unwrap_or(file));
            if let Err(e) = fs::write(file, self.daemon.log()) {
                eprintln!("bench: cannot keep a node's log in {}: {e}", file.display());
            }
        }
    }
}

/// Waits (at most 20 s) until the local node of `host` knows `n` peers.
pub(crate) fn wait_peers(host: &Host, n: usize) {
    let url = format!("http://{LOCAL}/status");
    let want = format!("peers: {n}\n");
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(20), || {
        last = host.curl(&[&url]).text();
        last.contains(&want)
    });
    assert!(ok, "{} never knew {n} peers:\n{last}", host.name);
}

/// The hash part of a store path.
pub(crate) fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// One request made by the load client.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// HTTP status; 0 on a transport error.
    pub(crate) status: u16,
    pub(crate) ttfb_ms: f64,
    pub(crate) total_ms: f64,
    pub(crate) bytes: u64,
    pub(crate) error: String,
}

/// Runs the load client in `host`: GETs `paths` from the local node over
/// `threads` keep-alive connections (opened before the first request; with
/// as many threads as paths, every request starts at once). One sample per
/// path, in order.
pub(crate) fn http_load(host: &Host, paths: &[String], threads: usize) -> Vec<Sample> {
    http_load_on(host, paths, threads, None)
}

/// `http_load` with the client on `cpu` (as `pin` puts a node), when given.
pub(crate) fn http_load_on(
    host: &Host,
    paths: &[String],
    threads: usize,
    cpu: Option<usize>,
) -> Vec<Sample> {
    let file = host.dir.join(format!("paths-{}.txt", next_id()));
    fs::write(&file, paths.join("\n")).expect("write the paths file");
    let threads = threads.to_string();
    let args = ["http", LOCAL, file.to_str().unwrap(), &threads];
    let out = run_client_on(host, &args, cpu);
    let samples: Vec<Sample> = out.lines().map(parse_sample).collect();
    assert_eq!(samples.len(), paths.len(), "client output:\n{out}");
    samples
}

pub(crate) fn parse_sample(line: &str) -> Sample {
    let f: Vec<&str> = line.splitn(5, ' ').collect();
    let us = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN) / 1000.0;
    if f[1] == "ERR" {
        return Sample {
            status: 0,
            ttfb_ms: f64::NAN,
            total_ms: us(f[2]),
            bytes: 0,
            error: f[3..].join(" "),
        };
    }
    Sample {
        status: f[1].parse().unwrap_or(0),
        ttfb_ms: us(f[2]),
        total_ms: us(f[3]),
        bytes: f[4].parse().unwrap_or(0),
        error: String::new(),
    }
}

/// Runs this binary as the load client inside `host`; its stdout.
pub(crate) fn run_client(host: &Host, args: &[&str]) -> String {
    run_client_on(host, args, None)
}

/// `run_client` on `cpu` only, when given (and the machine has it).
fn run_client_on(host: &Host, args: &[&str], cpu: Option<usize>) -> String {
    let exe = std::env::current_exe().expect("own executable");
    let exe = exe.to_str().expect("a UTF-8 path");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpu.filter(|&c| c < cpus).map(|c| c.to_string());
    let mut argv = Vec::new();
    if let Some(cpu) = &cpu {
        argv.extend(["-c", cpu.as_str(), exe]);
    }
    argv.push("--client");
    argv.extend(args);
    let program = if cpu.is_some() { "taskset" } else { exe };
    let out = output_within(host.cmd(program, &argv), Duration::from_secs(900))
        .expect("the load client finished within 15 minutes");
    assert!(
        out.status.success(),
        "load client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `/HASH.narinfo` for `n` random hashes no store has.
pub(crate) fn absent_narinfo(n: usize) -> Vec<String> {
    let mut rng = Xorshift::new();
    (0..n).map(|_| format!("/{}.narinfo", rng.hash())).collect()
}

/// Sequential narinfo requests for absent paths; their latencies (ms),
/// after a few unmeasured warm-up requests. Panics on anything but 404.
pub(crate) fn miss_latencies(host: &Host, n: usize) -> Vec<f64> {
    let samples = http_load(host, &absent_narinfo(n + 5), 1);
    for s in &samples {
        assert_eq!(s.status, 404, "a miss answered {s:?} {}", s.error);
    }
    samples[5..].iter().map(|s| s.total_ms).collect()
}

/// The processes below `pid`: its children, theirs, and so on.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (child, _) in crate::support::child_processes(p) {
            found.push(child);
            todo.push(child);
        }
    }
    found
}

/// CPU seconds of process `pid` (every thread, those that ended too) to
/// the nanosecond, from its CPU-time clock, plus those of the children it
/// reaped (in clock ticks: they end rarely while a node is measured, its
/// Nix children being long-lived); `None` once it is gone.
pub(crate) fn process_cpu_secs(pid: u32) -> Option<f64> {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both write only into the variables they are given.
    let own = unsafe {
        if libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) != 0
            || libc::clock_gettime(clock, &mut ts) != 0
        {
            return None;
        }
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 16 and 17 of proc(5): cutime, cstime.
    let reaped = f.get(13)? + f.get(14)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(own + reaped / if hz > 0.0 { hz } else { 100.0 })
}

/// Pins process `pid` (all its threads, and the children they start from
/// now on) to CPU `cpu`, so that two nodes on one machine compete for the
/// CPU no more than two machines would. Nothing on a machine of one CPU.
pub(crate) fn pin(pid: u32, cpu: usize) {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) <= cpu {
        return;
    }
    let ok = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset -a -p -c {cpu} {pid}");
}

/// CPU seconds of a node and of every process below it (its Nix
/// children): each live process's own time and that of the children it
/// reaped, so a child that ended is counted once, in its parent's.
pub(crate) fn tree_cpu_secs(pid: u32) -> f64 {
    let children: f64 = descendants(pid)
        .into_iter()
        .filter_map(process_cpu_secs)
        .sum();
    process_cpu_secs(pid).expect("the CPU time of a node") + children
}

/// Proportional set size of `pid` in MiB (`Pss` of
/// `/proc/PID/smaps_rollup`): pages shared with other processes, such as
/// the Nix libraries of several `nix-store` children, are counted as a
/// share. `None` once it is gone.
pub(crate) fn pss_mib(pid: u32) -> Option<f64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kib: f64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Memory of a node: its own PSS, the PSS of it with every process below
/// it (MiB), and how many processes are below it.
#[derive(Clone, Copy, Default)]
pub(crate) struct TreeMem {
    pub(crate) node: f64,
    pub(crate) tree: f64,
    pub(crate) children: usize,
}

pub(crate) fn tree_mem(pid: u32) -> TreeMem {
    let node = pss_mib(pid).expect("read /proc/PID/smaps_rollup");
    let below = descendants(pid);
    let children: f64 = below.iter().filter_map(|&p| pss_mib(p)).sum();
    TreeMem {
        node,
        tree: node + children,
        children: below.len(),
    }
}

/// A `/proc/PID/status` field in MiB (`VmRSS`, `VmHWM`).
pub(crate) fn mem_mib(pid: u32, field: &str) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} for {pid}"));
    kib / 1024.0
}

/// Wall and CPU (user + system) seconds of running `script` (bash) in
/// `host`, measured there by the load client; its stdout is discarded.
pub(crate) struct Times {
    pub(crate) real: f64,
    pub(crate) cpu: f64,
}

pub(crate) fn timed_in(host: &Host, script: &str) -> Times {
    let out = run_client(host, &["time", script]);
    let f: Vec<f64> = out
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN))
        .collect();
    Times {
        real: f[0],
        cpu: f[1],
    }
}

/// Unique numbers for file names.
pub(crate) fn next_id() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Adds a file of `bytes` random bytes to `host`'s store; its path.
pub(crate) fn random_path(host: &Host, name: &str, bytes: u64) -> String {
    let f = host.dir.join(name);
    host.run(&format!(
        "head -c {bytes} /dev/urandom > {0} && nix-store --add {0}",
        f.display()
    ))
}

/// Adds `n` small files (`bytes` each, all different) to `host`'s store
/// with one `nix-store --add`: paths without references, none in another's
/// closure. Their store paths.
pub(crate) fn small_paths(host: &Host, tag: &str, n: usize, bytes: usize) -> Vec<String> {
    let dir = host.dir.join(format!("small-{tag}"));
    fs::create_dir_all(&dir).expect("make a directory for small files");
    let mut rng = Xorshift::new();
    for i in 0..n {
        let mut data = format!("{tag} {i}\n").into_bytes();
        while data.len() < bytes {
            data.extend_from_slice(&rng.next().to_le_bytes());
        }
        data.truncate(bytes.max(8));
        fs::write(dir.join(format!("{tag}-{i:05}")), data).expect("write a small file");
    }
    let out = host.run(&format!("cd {} && nix-store --add {tag}-*", dir.display()));
    let paths: Vec<String> = out.lines().map(String::from).collect();
    assert_eq!(paths.len(), n, "nix-store --add printed {out}");
    paths
}

/// `/<hash>.narinfo` of each path.
pub(crate) fn narinfo_urls(paths: &[String]) -> Vec<String> {
    paths
        .iter()
        .map(|p| format!("/{}.narinfo", hash_of(p)))
        .collect()
}

/// The local node's NAR URL of each path (`/nar/<NarHash>-<hash>.nar`, as
/// its narinfo names it for Nix), from the NAR hashes `host` recorded.
pub(crate) fn nar_urls(host: &Host, paths: &[String]) -> Vec<String> {
    let file = host.dir.join(format!("paths-{}.txt", next_id()));
    fs::write(&file, paths.join("\n")).expect("write the paths file");
    let out = host.run(&format!(
        "xargs nix-store -q --hash < {} | sed 's/^sha256://'",
        file.display()
    ));
    let hashes: Vec<&str> = out.lines().collect();
    assert_eq!(hashes.len(), paths.len(), "NAR hashes: {out}");
    paths
        .iter()
        .zip(hashes)
        .map(|(p, h)| format!("/nar/{h}-{}.nar", hash_of(p)))
        .collect()
}

pub(crate) const MIB: f64 = 1024.0 * 1024.0;
pub(crate) const GIB: f64 = 1024.0 * MIB;

/// A tmpfs on a host's `/nix` for as long as it lives: 100 000 store
/// entries are made and removed in seconds there, where a VM's disk takes
/// many minutes to remove them.
pub(crate) struct TmpfsStore(PathBuf);

impl TmpfsStore {
    pub(crate) fn mount(host: &Host) -> TmpfsStore {
        let dir = host.nix_dir.clone();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4g", "peerix-bench"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount a tmpfs on {}", dir.display());
        host.run("nix-store --init");
        TmpfsStore(dir)
    }
}

impl Drop for TmpfsStore {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills `host`'s store with `count` empty directories registered as valid
/// paths (fake NAR hash and size; nothing reads them).
pub(crate) fn fake_store(host: &Host, count: usize) -> Vec<String> {
    crate::support::fake_paths(host, "bench-fake", count)
}

/// Seconds Nix 2.8's `nix-store -r top` took on `client` from the binary
/// cache at `url` (trusting `key`), its store garbage-collected before and
/// its narinfo cache new (named by `tag`); checks that the `count` paths of
/// the closure arrived.
pub(crate) fn substitute_timed(
    client: &Host,
    top: &str,
    url: &str,
    key: &Key,
    count: usize,
    tag: &str,
) -> f64 {
    client.run("nix-store --gc > /dev/null 2>&1");
    let left = client.try_run(&format!("nix-store --check-validity {top}"));
    assert!(!left.status.success(), "{top} survived the GC");
    let xdg = client.dir.join(format!("xdg-{tag}"));
    let t = timed_in(
        client,
        &format!(
            "XDG_CACHE_HOME={} nix-store -r {top} --option substituters {url} \
             --option trusted-public-keys '{}' --option narinfo-cache-negative-ttl 0",
            xdg.display(),
            key.public
        ),
    );
    let got = client.run(&format!("nix-store -qR {top} | wc -l"));
    assert_eq!(got, count.to_string(), "the closure from {url}");
    t.real
}

/// A plain HTTP server (`python3 -m http.server`) on `peer` of a `nix copy
/// --to file://` cache of `top`'s closure: the server and its URL.
pub(crate) fn file_server(peer: &Host, top: &str) -> (Daemon, String) {
    let cache = peer.dir.join("file-cache");
    peer.run(&format!(
        "nix copy --to 'file://{}?compression=none' {top}",
        cache.display()
    ));
    let addr = peer.addr4.to_string();
    let args = [
        "-m",
        "http.server",
        "--bind",
        &addr,
        "--directory",
        cache.to_str().unwrap(),
        "8080",
    ];
    let server = peer.spawn_daemon(peer.cmd("/usr/bin/python3", &args), "http-server");
    (server, format!("http://{addr}:8080"))
}

/// Waits up to 10 s until the binary cache at `url` answers `client`'s
/// `/nix-cache-info`; panics naming `what` if it never does.
pub(crate) fn wait_answers(client: &Host, url: &str, what: &str) {
    let info_url = format!("{url}/nix-cache-info");
    assert!(
        wait_until(Duration::from_secs(10), || client
            .curl(&["-f", &info_url])
            .status
            == 200),
        "{what} on the peer does not answer"
    );
}

/// UDP InDatagrams and OutDatagrams of the network namespace of `pid`.
pub(crate) fn udp_counts(pid: u32) -> (f64, f64) {
    let snmp = fs::read_to_string(format!("/proc/{pid}/net/snmp")).expect("read net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
    let field = |name: &str| -> f64 {
        let i = names.split_whitespace().position(|n| n == name);
        i.and_then(|i| values.split_whitespace().nth(i)?.parse().ok())
            .unwrap_or_else(|| panic!("no Udp {name} in net/snmp"))
    };
    (field("InDatagrams"), field("OutDatagrams"))
}

/// A counter of `/proc/PID/net/snmp6` (IPv6) of the namespace of `pid`.
fn snmp6(pid: u32, name: &str) -> f64 {
    let text = fs::read_to_string(format!("/proc/{pid}/net/snmp6")).expect("read net/snmp6");
    (text.lines())
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in net/snmp6"))
}

/// UDP datagrams received and sent by the namespace of `pid`, over IPv4
/// and IPv6 (unicast to peers goes to whichever address they spoke from).
pub(crate) fn udp_counts_all(pid: u32) -> (f64, f64) {
    let (in4, out4) = udp_counts(pid);
    let in6 = snmp6(pid, "Udp6InDatagrams");
    let out6 = snmp6(pid, "Udp6OutDatagrams");
    (in4 + in6, out4 + out6)
}

/// IP bytes (v4 and v6) received and sent by the namespace of `pid`.
pub(crate) fn ip_octets(pid: u32) -> (f64, f64) {
    let netstat = fs::read_to_string(format!("/proc/{pid}/net/netstat")).expect("read net/netstat");
    let mut ip = netstat.lines().filter(|l| l.starts_with("IpExt:"));
    let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
    let field = |name: &str| -> f64 {
        let i = names.split_whitespace().position(|n| n == name);
        i.and_then(|i| values.split_whitespace().nth(i)?.parse().ok())
            .unwrap_or_else(|| panic!("no IpExt {name} in net/netstat"))
    };
    (
        field("InOctets") + snmp6(pid, "Ip6InOctets"),
        field("OutOctets") + snmp6(pid, "Ip6OutOctets"),
    )
}
