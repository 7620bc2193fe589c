//! Test harness for Peerix integration tests: throw-away hosts on one machine.
//!
//! A [`Net`] is a bridge with N [`Host`]s. Each host is a network namespace
//! (with a veth on the bridge, an IPv4 address with broadcast and an IPv6 ULA)
//! plus its own directory that every command run in it sees as `/nix`, so each
//! host has its own, real Nix store. Nothing leaves the bridge: traffic stays
//! between the hosts a test made. Dropping the `Net` (also while a failing test
//! unwinds) kills everything that runs in its hosts and removes namespaces,
//! bridge and directories; leftovers of killed test runs are removed by the
//! next run.
//!
//! Every Nix command run through [`Host::cmd`] reads the host's own
//! configuration ([`NIX_CONF`], in [`Host::nix_conf_dir`]) and never the
//! machine's `/etc/nix`: no sandbox, no build users, no substituters (Nix
//! never tries the internet), `nix-command` enabled. A new machine has no
//! nix.conf at all, and Nix's defaults (sandbox on, `nixbld` build users)
//! would fail every build.
//!
//! Needs root (and `ip`, `unshare`, `curl`, `bash`, the Nix 2.x CLIs); without
//! it [`Net::new`] prints why and returns `None`, and the test returns early.

#![allow(dead_code)]

pub mod nix_clients;
pub mod upstream_cache;

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Start of every name (namespace, link, directory) the harness creates.
const PREFIX: &str = "pxit";
/// The port peerix listens on when no `--port` is given.
pub const DEFAULT_PORT: u16 = 12304;
/// A host's local node as its Nix uses it: the substituter URL.
pub const LOCAL: &str = "http://127.0.0.1:12304";
/// The `nix.conf` of every host: every setting the tests rely on, so that
/// nothing comes from the machine's `/etc/nix`. Never substitute from the
/// internet; allow `nix store sign` / `nix path-info`; build without a
/// sandbox (the builders are the machine's `/bin/sh`) and as root, not as
/// `nixbld*` users: hosts share the machine's users, and Nix kills every
/// process of a build user when it starts a build, which would kill
/// concurrent builds in other hosts.
pub const NIX_CONF: &str = "substituters =\n\
                            experimental-features = nix-command\n\
                            build-users-group =\n\
                            sandbox = false\n\
                            require-sigs = true\n";
/// How long [`Host::run`] lets a command take before failing the test.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Counts the `Net`s made by this test process (part of their names).
static NETS: AtomicUsize = AtomicUsize::new(0);
/// Makes file names unique within one test process.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A bridge with hosts on it. Dropping it removes everything it made.
pub struct Net {
    /// Unique per `Net`, e.g. `pxit1a2b3n0`; used in every name below.
    pub prefix: String,
    /// Per-run directory holding each host's directory.
    pub dir: PathBuf,
    /// The hosts, `hosts[0]` is named `h1`.
    pub hosts: Vec<Host>,
    bridge: String,
    /// A second bridge and the router between them ([`Net::routed`]).
    routed: Option<(String, String)>,
    /// Room kept in the kernel's neighbour tables for this Net's hosts.
    _neighbours: NeighbourRoom,
}

/// One test host: a network namespace plus its own `/nix`.
pub struct Host {
    /// `h1`, `h2`, …
    pub name: String,
    /// The network namespace (`ip netns`) name.
    pub netns: String,
    /// IPv4 address on the bridge (a /24 with broadcast).
    pub addr4: Ipv4Addr,
    /// IPv6 ULA address on the bridge (a /64).
    pub addr6: Ipv6Addr,
    /// Host directory (outside `/nix`): logs, keys, scratch files. Visible at
    /// the same path inside the host and outside.
    pub dir: PathBuf,
    /// The directory the host sees as `/nix`.
    pub nix_dir: PathBuf,
}

/// A background process in a host (a peerix node, a nix-daemon). Dropping it
/// stops it.
pub struct Daemon {
    child: Child,
    log_path: PathBuf,
    /// `http://ADDR:PORT` for a peerix node, empty otherwise.
    base_url: String,
}

/// What [`Host::curl`] got.
#[derive(Debug)]
pub struct Response {
    /// curl's exit code (0 on a complete transfer, 18 partial, 28 timeout…).
    pub exit: i32,
    /// HTTP status, 0 if none was received.
    pub status: u16,
    /// Header lines of the last response, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as far as it was received.
    pub body: Vec<u8>,
    /// curl's error message, if any.
    pub stderr: String,
}

/// The test closure built by [`build_closure`] (full store paths).
#[derive(Debug, Clone)]
pub struct Closure {
    /// Directory with a subdirectory, a file, an executable, an empty file and
    /// symlinks; no references.
    pub dep: String,
    /// Directory with one random 100 MiB file.
    pub big: String,
    /// Refers to `dep` and `big`.
    pub top: String,
    /// A content-addressed file made with `nix-store --add`.
    pub ca: String,
}

/// A Nix signing key pair made by [`generate_key`].
#[derive(Debug, Clone)]
pub struct Key {
    /// Secret key file (readable from inside and outside the hosts).
    pub secret: PathBuf,
    /// Public key text, `NAME:base64`.
    pub public: String,
}

impl Net {
    /// Makes a bridge with `hosts` hosts, each with an initialised Nix store.
    /// Returns `None` (after saying so) when not root or when network
    /// namespaces cannot be made; panics on any later setup failure.
    pub fn new(hosts: usize) -> Option<Net> {
        assert!((1..=250).contains(&hosts), "1 to 250 hosts per Net");
        if !is_root() {
            eprintln!("skipping: needs root and ip netns (not running as root)");
            return None;
        }
        remove_leftovers();
        let n = NETS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = format!("{PREFIX}{pid:x}n{n:x}");
        assert!(
            prefix.len() + 2 <= 15,
            "prefix {prefix} too long for link names"
        );
        let mut net = Net {
            dir: base_dir().join(&prefix),
            bridge: format!("{prefix}b"),
            prefix,
            hosts: Vec::new(),
            routed: None,
            _neighbours: NeighbourRoom::reserve(hosts),
        };
        if let Err(e) = probe_netns(&format!("{}-probe", net.prefix)) {
            eprintln!("skipping: needs root and ip netns ({e})");
            return None;
        }
        // Subnet bytes only need to differ between concurrent Nets for
        // readability of logs; each bridge is its own broadcast domain anyway.
        let (x, y) = (100 + (n % 100) as u8, (pid % 251) as u8);
        fs::create_dir_all(&net.dir).expect("create the per-run directory");
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&["link", "set", &net.bridge, "up"]);
        for i in 0..hosts {
            let addr4 = Ipv4Addr::new(10, x, y, i as u8 + 1);
            let addr6 = Ipv6Addr::new(0xfd70, x as u16, y as u16, 0, 0, 0, 0, i as u16 + 1);
            net.add_host(i, (addr4, 24), addr6, &net.bridge.clone());
        }
        Some(net)
    }

    /// Two bridges, `first` hosts on one and `second` on the other, each
    /// its own IPv4 subnet (`10.x.y.0/25` and `10.x.y.128/25`) and IPv6
    /// /64, joined by a router (a namespace of its own that forwards IPv4
    /// between them): hosts on different bridges reach each other by
    /// unicast, never by broadcast or multicast. Hosts are numbered across
    /// both, `h1`… on the first bridge.
    pub fn routed(first: usize, second: usize) -> Option<Net> {
        assert!(first <= 100 && second <= 100, "at most 100 hosts a side");
        let mut net = Net::new(first)?;
        let bridge2 = format!("{}c", net.prefix);
        let router = format!("{}-r", net.prefix);
        ip(&["link", "add", &bridge2, "type", "bridge"]);
        ip(&["link", "set", &bridge2, "up"]);
        ip(&["netns", "add", &router]);
        net.routed = Some((bridge2.clone(), router.clone()));
        let base = net.host(1).addr4.octets();
        let at = |last: u8| Ipv4Addr::new(base[0], base[1], base[2], last);
        // The first side's hosts move into the lower /25.
        for host in &net.hosts {
            let ns = ["-n", host.netns.as_str()];
            let old = format!("{}/24", host.addr4);
            let new = format!("{}/25", host.addr4);
            ip(&[&ns[..], &["addr", "del", &old, "dev", "eth0"]].concat());
            ip(&[&ns[..], &["addr", "add", &new, "brd", "+", "dev", "eth0"]].concat());
            ip(&[
                &ns[..],
                &["route", "add", "default", "via", &at(126).to_string()],
            ]
            .concat());
        }
        for (side, bridge, addr) in [(1, &net.bridge, at(126)), (2, &bridge2, at(254))] {
            let veth = format!("{}r{side}", net.prefix);
            let inside = format!("r{side}");
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", &inside, "netns", &router,
            ]);
            ip(&["link", "set", &veth, "master", bridge]);
            ip(&["link", "set", &veth, "up"]);
            let a = format!("{addr}/25");
            ip(&["-n", &router, "addr", "add", &a, "brd", "+", "dev", &inside]);
            ip(&["-n", &router, "link", "set", &inside, "up"]);
        }
        let forward = Command::new("ip")
            .args([
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status();
        assert!(
            forward.is_ok_and(|s| s.success()),
            "enable forwarding in the router"
        );
        for j in 0..second {
            let i = first + j;
            let addr4 = at(129 + j as u8);
            let addr6 = Ipv6Addr::new(
                0xfd70,
                base[1].into(),
                base[2].into(),
                1,
                0,
                0,
                0,
                j as u16 + 1,
            );
            net.add_host(i, (addr4, 25), addr6, &bridge2);
            let ns = net.hosts[i].netns.clone();
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &at(254).to_string(),
            ]);
        }
        Some(net)
    }

    /// The `i`-th host, counting from 1 like the names (`host(1)` is `h1`).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }
}

/// The kernel's ARP and neighbour-discovery tables are one per machine,
/// shared by every namespace, and hold 1,024 entries by default
/// (`gc_thresh3`). On one bridge each host may keep an entry for every
/// other host's IPv4, link-local and ULA address: a hundred hosts
/// overflow them, and the kernel then drops datagrams (`neighbor table
/// overflow!`), which no LAN of separate machines does. A Net of many
/// hosts raises the thresholds for its lifetime; the machine's values
/// come back when the last such Net ends.
struct NeighbourRoom(usize);

/// Entries reserved by live Nets, and the machine's thresholds before
/// (file, value) once raised.
static NEIGHBOURS: std::sync::Mutex<(usize, Option<Thresholds>)> = std::sync::Mutex::new((0, None));
type Thresholds = Vec<(String, String)>;

const NEIGHBOUR_THRESHOLDS: [&str; 4] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
    "/proc/sys/net/ipv6/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv6/neigh/default/gc_thresh3",
];

impl NeighbourRoom {
    fn reserve(hosts: usize) -> NeighbourRoom {
        let entries = 2 * hosts * hosts;
        let Ok(mut state) = NEIGHBOURS.lock() else {
            return NeighbourRoom(0);
        };
        state.0 += entries;
        let need = 1024 + state.0;
        let read = |f: &str| fs::read_to_string(f).unwrap_or_default().trim().to_string();
        if state.1.is_none() {
            let current: Vec<(String, String)> = (NEIGHBOUR_THRESHOLDS.iter())
                .map(|f| (f.to_string(), read(f)))
                .collect();
            let low = (current.iter()).any(|(_, v)| v.parse::<usize>().is_ok_and(|v| v < need));
            if !low {
                return NeighbourRoom(entries);
            }
            state.1 = Some(current);
        }
        for f in NEIGHBOUR_THRESHOLDS {
            if read(f).parse::<usize>().is_ok_and(|v| v < need) {
                if let Err(e) = fs::write(f, need.to_string()) {
                    eprintln!("warning: cannot raise {f} for {hosts} hosts: {e}");
                }
            }
        }
        NeighbourRoom(entries)
    }
}

impl Drop for NeighbourRoom {
    fn drop(&mut self) {
        let Ok(mut state) = NEIGHBOURS.lock() else {
            return;
        };
        state.0 = state.0.saturating_sub(self.0);
        if state.0 == 0 {
            for (f, v) in state.1.take().into_iter().flatten() {
                let _ = fs::write(&f, v);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            kill_netns(&host.netns);
        }
        let _ = quiet_ip(&["link", "del", &self.bridge]);
        if let Some((bridge, router)) = &self.routed {
            kill_netns(router);
            let _ = quiet_ip(&["link", "del", bridge]);
        }
        if let Err(e) = fs::remove_dir_all(&self.dir).or_else(ignore_not_found) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl Host {
    /// A command running `program args…` inside this host: in its network
    /// namespace, in a private mount namespace with the host's directory on
    /// `/nix`. The environment points Nix at the host's own configuration
    /// ([`Host::nix_conf_dir`], never `/etc/nix` or a user's nix.conf), and
    /// has `NIX_REMOTE=local` and a per-host `HOME`, `XDG_CONFIG_HOME` and
    /// `XDG_CACHE_HOME` (so Nix's narinfo cache is per host); the caller may
    /// override any of them.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns])
            .args(["unshare", "-m", "--propagation", "private"])
            .args([
                "sh",
                "-c",
                r#"mount --bind "$1" /nix && shift && exec "$@""#,
            ])
            .arg("sh")
            .arg(&self.nix_dir)
            .arg(program)
            .args(args)
            .env_remove("NIX_CONFIG")
            .env("NIX_CONF_DIR", self.nix_conf_dir())
            .env("NIX_USER_CONF_FILES", self.nix_conf_dir().join("user.conf"))
            .env("NIX_REMOTE", "local")
            .env("HOME", self.dir.join("home"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_CONFIG_DIRS", self.dir.join("config"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .stdin(Stdio::null());
        c
    }

    /// The directory holding this host's `nix.conf` ([`NIX_CONF`] at first;
    /// a test may add settings with [`Host::add_nix_conf`]).
    pub fn nix_conf_dir(&self) -> PathBuf {
        self.dir.join("etc-nix")
    }

    /// Limits what this host sends on its link to `mbit` megabits a second
    /// (a token bucket filter on its side of the veth), so that a transfer
    /// takes long enough to be interrupted half way.
    pub fn limit_rate(&self, mbit: u32) {
        let rate = format!("{mbit}mbit");
        let ns = ["-n", self.netns.as_str()];
        let args = ["qdisc", "add", "dev", "eth0", "root", "tbf", "rate", &rate];
        let tail = ["burst", "256kb", "latency", "100ms"];
        let out = Command::new("tc")
            .args(ns)
            .args(args)
            .args(tail)
            .output()
            .expect("run tc");
        assert!(out.status.success(), "tc: {}", stderr_of(&out));
    }

    /// Appends `lines` to this host's `nix.conf`.
    pub fn add_nix_conf(&self, lines: &str) {
        use std::io::Write;
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(self.nix_conf_dir().join("nix.conf"))
            .expect("open the host's nix.conf");
        writeln!(conf, "{}", lines.trim_end()).expect("write the host's nix.conf");
    }

    /// Runs `sh -c script` in the host and returns its trimmed stdout; panics
    /// with stdout and stderr if it fails or takes longer than 3 minutes.
    pub fn run(&self, script: &str) -> String {
        let out = self.try_run(script);
        if !out.status.success() {
            panic!(
                "on {}: `{script}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `sh -c script` in the host and returns its output, whatever its
    /// exit status; panics only if it takes longer than 3 minutes.
    pub fn try_run(&self, script: &str) -> Output {
        output_within(self.cmd("sh", &["-c", script]), RUN_LIMIT)
            .unwrap_or_else(|| panic!("on {}: `{script}` timed out", self.name))
    }

    /// The host's IPv6 link-local address on the bridge (the kernel's, made
    /// from its MAC): peers hear IPv6 multicast from it.
    pub fn link_local(&self) -> Ipv6Addr {
        let out = self.run("ip -6 -o addr show dev eth0 scope link");
        (out.split_whitespace())
            .find_map(|w| w.split('/').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no link-local address on {}: {out}", self.name))
    }

    /// Where a path under `/nix` of this host is, seen from outside the host
    /// (e.g. to change a store file behind Nix's back).
    pub fn outside(&self, nix_path: &str) -> PathBuf {
        let rest = nix_path
            .strip_prefix("/nix/")
            .unwrap_or_else(|| panic!("{nix_path} is not under /nix"));
        self.nix_dir.join(rest)
    }

    /// Starts `peerix args…` in the host (`RUST_LOG=debug`, stdout and stderr
    /// to a log file) and waits up to 10 s until its `/peer/nix-cache-info`
    /// answers (whatever the status). Panics with the log if it exits or never answers.
    pub fn spawn_peerix(&self, args: &[&str]) -> Daemon {
        self.spawn_peerix_with(&[], &[], args)
    }

    /// Like [`Host::spawn_peerix`], with `wrapper` put before the peerix
    /// binary (e.g. `["setpriv", "--reuid=65534", …]`) and extra environment.
    pub fn spawn_peerix_with(
        &self,
        wrapper: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Daemon {
        let bin = env!("CARGO_BIN_EXE_peerix");
        let argv: Vec<&str> = wrapper
            .iter()
            .copied()
            .chain([bin])
            .chain(args.iter().copied())
            .collect();
        let mut cmd = self.cmd(argv[0], &argv[1..]);
        cmd.env("RUST_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut daemon = self.spawn_daemon(cmd, "peerix");
        let addr = match flag_value(args, "--bind") {
            Some(a) if a != "0.0.0.0" && a != "::" && a.contains(':') => format!("[{a}]"),
            Some(a) if a != "0.0.0.0" && a != "::" => a.to_string(),
            _ => self.addr4.to_string(),
        };
        let port =
            flag_value(args, "--port").map_or(DEFAULT_PORT, |p| p.parse().expect("--port N"));
        daemon.base_url = format!("http://{addr}:{port}");
        let probe = daemon.url("/peer/nix-cache-info");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = daemon.try_wait() {
                panic!(
                    "peerix on {} exited early ({status}); log:\n{}",
                    self.name,
                    daemon.log()
                );
            }
            // Any HTTP answer will do: with a network key it is 403.
            let ok = self
                .cmd(
                    "curl",
                    &["-s", "--max-time", "1", "-o", "/dev/null", &probe],
                )
                .status();
            if ok.is_ok_and(|s| s.success()) {
                return daemon;
            }
            if Instant::now() > deadline {
                panic!(
                    "peerix on {} does not answer {probe}; log:\n{}",
                    self.name,
                    daemon.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A multi-user Nix on this host and a node on it as an unprivileged
    /// user (`nobody`, `NIX_REMOTE=daemon`, `--no-broadcast`, signing with
    /// `key`): the nix-daemon, then the node, which reaches the store
    /// through it.
    pub fn spawn_peerix_through_nix_daemon(&self, key: &Key) -> (Daemon, Daemon) {
        let nix_daemon = self.spawn_daemon(self.cmd("nix-daemon", &[]), "nix-daemon");
        let socket = self.outside("/nix/var/nix/daemon-socket/socket");
        assert!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "no nix-daemon socket: {}",
            nix_daemon.log()
        );
        let home = self.dir.join("nobody");
        self.run(&format!(
            "chmod 755 /nix /nix/var /nix/var/nix /nix/var/nix/daemon-socket && \
             chmod 666 /nix/var/nix/daemon-socket/socket && chmod 644 {} && \
             mkdir -p {home} && chown 65534:65534 {home}",
            key.secret.display(),
            home = home.display()
        ));
        let home = home.to_str().unwrap();
        let nobody = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ];
        let env = [
            ("NIX_REMOTE", "daemon"),
            ("HOME", home),
            ("XDG_CACHE_HOME", home),
        ];
        let args = [
            "--no-broadcast",
            "--private-key",
            key.secret.to_str().unwrap(),
        ];
        let node = self.spawn_peerix_with(&nobody, &env, &args);
        (nix_daemon, node)
    }

    /// Spawns `cmd` (made with [`Host::cmd`]) in the background with stdout
    /// and stderr going to a new log file named after `label`.
    pub fn spawn_daemon(&self, mut cmd: Command, label: &str) -> Daemon {
        let log_path = self.dir.join(format!("{label}-{}.log", unique()));
        let log = fs::File::create(&log_path).expect("create a log file");
        cmd.stdout(log.try_clone().expect("dup the log file"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label} on {}: {e}", self.name));
        Daemon {
            child,
            log_path,
            base_url: String::new(),
        }
    }

    /// Runs `curl args…` in the host (silent, `--path-as-is`, 60 s limit
    /// unless `args` sets another) and returns what it got. The body is kept
    /// unless `args` has its own `-o FILE`. With `-I`/`--head` the headers
    /// also end up in `body`.
    pub fn curl(&self, args: &[&str]) -> Response {
        let id = unique();
        let body_file = self.dir.join(format!("curl-{id}.body"));
        let head_file = self.dir.join(format!("curl-{id}.head"));
        let mut base = vec!["-sS", "--path-as-is", "-w", "%{http_code}"];
        if !args.contains(&"--max-time") {
            base.extend(["--max-time", "60"]);
        }
        let (b, h) = (body_file.to_str().unwrap(), head_file.to_str().unwrap());
        if !args.contains(&"-o") {
            base.extend(["-o", b]);
        }
        base.extend(["-D", h]);
        let argv: Vec<&str> = base.into_iter().chain(args.iter().copied()).collect();
        let out = output_within(self.cmd("curl", &argv), Duration::from_secs(120))
            .unwrap_or_else(|| panic!("curl {args:?} on {} hung", self.name));
        let head = fs::read_to_string(&head_file).unwrap_or_default();
        let body = fs::read(&body_file).unwrap_or_default();
        let _ = fs::remove_file(&body_file);
        let _ = fs::remove_file(&head_file);
        Response {
            exit: out.status.code().unwrap_or(-1),
            status: String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            headers: parse_headers(&head),
            body,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Sends the raw bytes `request` to `addr:port` over TCP from inside the
    /// host and returns every byte the server sent until it closed (or until
    /// `limit`). Use `Connection: close` in the request.
    pub fn raw_http(&self, addr: &str, port: u16, request: &[u8], limit: Duration) -> Vec<u8> {
        let req_file = self.dir.join(format!("raw-{}.req", unique()));
        fs::write(&req_file, request).expect("write the request file");
        let script = r#"exec 3<>"/dev/tcp/$1/$2" && cat "$3" >&3 && cat <&3"#;
        let secs = limit.as_secs().max(1).to_string();
        let port = port.to_string();
        let cmd = self.cmd(
            "timeout",
            &[
                &secs,
                "bash",
                "-c",
                script,
                "bash",
                addr,
                &port,
                req_file.to_str().unwrap(),
            ],
        );
        let out = output_within(cmd, limit + Duration::from_secs(10)).expect("raw_http hung");
        let _ = fs::remove_file(&req_file);
        out.stdout
    }
}

impl Daemon {
    /// The process id (of peerix itself: the wrappers exec it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://ADDR:PORT` + `path` on this peerix node.
    pub fn url(&self, path: &str) -> String {
        assert!(!self.base_url.is_empty(), "not a peerix daemon");
        format!("{}{path}", self.base_url)
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// The lines of its log that mention `what`.
    pub fn log_lines(&self, what: &str) -> Vec<String> {
        (self.log().lines())
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect()
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for a daemon")
    }

    /// Stops it: SIGTERM, then SIGKILL after 5 s. Returns its exit status.
    /// Sends `signal` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return status;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().expect("wait for a killed daemon")
    }

    /// Pids of its child processes (all threads), each with its command name.
    pub fn children(&self) -> Vec<(u32, String)> {
        child_processes(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Response {
    /// The value of the first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Builds the test [`Closure`] in `host`'s store with `nix-build` (builder
/// `/bin/sh`, no sandbox) and `nix-store --add`. Names carry a per-call tag so
/// that paths differ between builds.
pub fn build_closure(host: &Host) -> Closure {
    let tag = format!("{}{}", host.netns, unique());
    let expr = format!(
        r#"
let
  mk = name: script: derivation {{
    name = "peerix-it-${{name}}-{tag}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/usr/bin:/bin; set -e; ${{script}}" ];
  }};
in rec {{
  dep = mk "dep" ''
    mkdir -p $out/sub/deeper
    echo 'hello from dep' > $out/sub/deeper/file.txt
    printf '#!/bin/sh\necho hi\n' > $out/run.sh
    chmod +x $out/run.sh
    : > $out/empty
    ln -s sub/deeper/file.txt $out/link
    ln -s /nonexistent/target $out/dangling
  '';
  big = mk "big" ''
    mkdir $out
    head -c 104857600 /dev/urandom > $out/random.bin
  '';
  top = mk "top" ''
    mkdir $out
    echo ${{dep}} > $out/dep-path
    echo ${{big}} > $out/big-path
    ln -s ${{dep}}/run.sh $out/run
  '';
}}
"#
    );
    let built = nix_build(
        host,
        &format!("closure-{tag}"),
        &expr,
        &["dep", "big", "top"],
    );
    let paths: Vec<&str> = built.lines().collect();
    assert_eq!(paths.len(), 3, "nix-build printed {built}");
    let ca_file = host.dir.join(format!("ca-{tag}.txt"));
    fs::write(&ca_file, format!("content-addressed {tag}\n")).expect("write the ca file");
    let ca = host.run(&format!("nix-store --add {}", ca_file.display()));
    Closure {
        dep: paths[0].into(),
        big: paths[1].into(),
        top: paths[2].into(),
        ca,
    }
}

/// Writes the Nix expression `expr` to `NAME.nix` in `host`'s directory and
/// builds its `attrs` (the whole of it when empty) in the host's store; the
/// output paths, one a line.
pub fn nix_build(host: &Host, name: &str, expr: &str, attrs: &[&str]) -> String {
    let file = host.dir.join(format!("{name}.nix"));
    fs::write(&file, expr).expect("write a Nix expression");
    let attrs: Vec<String> = attrs.iter().map(|a| format!("-A {a}")).collect();
    host.run(&format!(
        "nix-build --no-out-link {} {}",
        file.display(),
        attrs.join(" ")
    ))
}

/// Builds `count` small paths on `host`, each referring to the one before
/// (a closure that is a chain); their store paths, the top first.
pub fn build_chain(host: &Host, tag: &str, count: usize) -> Vec<String> {
    let expr = format!(
        r#"
let
  mk = n: prev: derivation {{
    name = "peerix-{tag}-${{toString n}}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/usr/bin:/bin; mkdir $out; echo {tag} ${{toString n}} > $out/data; echo ${{prev}} > $out/prev" ];
  }};
  chain = n: if n == 0 then "none" else mk n (chain (n - 1));
in chain {count}
"#
    );
    let top = nix_build(host, &format!("chain-{tag}"), &expr, &[]);
    let closure = host.run(&format!("nix-store -qR {top}"));
    let mut paths = vec![top.clone()];
    paths.extend(closure.lines().filter(|p| **p != top).map(str::to_owned));
    assert_eq!(paths.len(), count, "{closure}");
    paths
}

/// Builds on `host` a path of `bytes` random bytes: every host that builds
/// it gets the same store path with a different NAR (a build that is not
/// reproducible).
pub fn build_random(host: &Host, tag: &str, bytes: u64) -> String {
    let expr = format!(
        r#"derivation {{
  name = "peerix-random-{tag}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "export PATH=/usr/bin:/bin; head -c {bytes} /dev/urandom > $out" ];
}}"#
    );
    nix_build(host, &format!("random-{tag}"), &expr, &[])
}

/// Builds on `host` a path of real programs and libraries, at most `bytes`
/// of them: files of the machine's /usr/lib/x86_64-linux-gnu and /usr/bin,
/// in name order, copied into one directory. They compress as store paths
/// do (zstd -1: about 2.7x), unlike `build_random`'s.
pub fn build_programs(host: &Host, tag: &str, bytes: u64) -> String {
    let expr = format!(
        r#"derivation {{
  name = "peerix-programs-{tag}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "export PATH=/usr/bin:/bin; mkdir $out; find /usr/lib/x86_64-linux-gnu /usr/bin -maxdepth 1 -type f -printf '%s %p\\n' | sort -k2 | awk -v max={bytes} '{{ if (t + $1 <= max) {{ t += $1; print $2 }} }}' | xargs -d '\\n' cp -t $out" ];
}}"#
    );
    nix_build(host, &format!("programs-{tag}"), &expr, &[])
}

/// A small xorshift generator of test data: numbers and hash parts.
pub struct Xorshift(u64);

impl Xorshift {
    /// Seeded from the clock, the process and a counter: another sequence
    /// at every call.
    pub fn new() -> Xorshift {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Xorshift::seeded(nanos ^ (u64::from(std::process::id()) << 32) ^ unique() as u64)
    }

    /// The same sequence for the same `seed`.
    pub fn seeded(seed: u64) -> Xorshift {
        Xorshift(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// 32 random nix32 digits: a well-formed hash part.
    pub fn hash(&mut self) -> String {
        const DIGITS: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        (0..32)
            .map(|_| DIGITS[(self.next() % 32) as usize] as char)
            .collect()
    }
}

/// Registers `count` fake valid paths in `host`'s store: empty directories
/// named `<random hash>-<tag>-<i>`, made valid with `nix-store
/// --register-validity` (a store of thousands of paths in seconds). Their
/// full paths.
pub fn fake_paths(host: &Host, tag: &str, count: usize) -> Vec<String> {
    let mut rng = Xorshift::new();
    let store = host.nix_dir.join("store");
    let mut paths = Vec::with_capacity(count);
    let mut reg = String::new();
    for i in 0..count {
        let hash = rng.hash();
        let name = format!("{hash}-{tag}-{i}");
        fs::create_dir(store.join(&name)).expect("make a fake store entry");
        reg.push_str(&format!(
            "/nix/store/{name}\nsha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n120\n\n0\n"
        ));
        paths.push(format!("/nix/store/{name}"));
    }
    let file = host.dir.join(format!("register-{}.txt", unique()));
    fs::write(&file, reg).expect("write the registration");
    host.run(&format!(
        "nix-store --register-validity --hash-given < {}",
        file.display()
    ));
    paths
}

/// Makes a signing key named `name` with `nix-store
/// --generate-binary-cache-key` in `host`'s directory.
pub fn generate_key(host: &Host, name: &str) -> Key {
    let secret = host.dir.join(format!("{name}.sk"));
    let public = host.dir.join(format!("{name}.pk"));
    host.run(&format!(
        "nix-store --generate-binary-cache-key {name} {} {}",
        secret.display(),
        public.display()
    ));
    let public = fs::read_to_string(&public)
        .expect("read the public key")
        .trim()
        .to_string();
    Key { secret, public }
}

/// Adds a signature by `key` to `path` (not its closure) in `host`'s store.
pub fn sign(host: &Host, key: &Key, path: &str) {
    host.run(&format!(
        "nix store sign --key-file {} {path}",
        key.secret.display()
    ));
}

/// Arguments of `nix-store` realising `paths` by substitution through the
/// host's local node ([`LOCAL`]) only, accepting only signatures by `keys`,
/// and caching no miss (`narinfo-cache-negative-ttl 0`). Every Nix client
/// since 2.3 takes them.
pub fn realise_args(paths: &[&str], keys: &[&Key]) -> Vec<String> {
    let keys: Vec<&str> = keys.iter().map(|k| k.public.as_str()).collect();
    let mut args = vec!["-r".to_string()];
    args.extend(paths.iter().map(|p| p.to_string()));
    for (name, value) in [
        ("substituters", LOCAL),
        ("trusted-public-keys", &keys.join(" ")),
        ("narinfo-cache-negative-ttl", "0"),
    ] {
        args.extend(["--option".into(), name.into(), value.into()]);
    }
    args
}

/// Starts a node on `host` signing with `key`, accepting narinfo signed by
/// `trusted` (`--trusted-key`), plus `extra` flags.
pub fn node(host: &Host, key: &Key, trusted: &[&Key], extra: &[&str]) -> Daemon {
    node_with_env(host, key, trusted, extra, &[])
}

/// Like [`node`], with `env` added to its environment (e.g. another
/// `RUST_LOG`).
pub fn node_with_env(
    host: &Host,
    key: &Key,
    trusted: &[&Key],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let mut args: Vec<&str> = vec!["--private-key", key.secret.to_str().unwrap()];
    for k in trusted {
        args.extend(["--trusted-key", &k.public]);
    }
    args.extend(extra);
    host.spawn_peerix_with(&[], env, &args)
}

/// The three-node setup most tests start from. On hosts 1 and 2 of `net`,
/// nodes that serve their stores, signing with `keys[0]` and `keys[1]` (one
/// key twice where they share it), each given `peer_flags`; then, on host
/// 3, the [`local_node`], accepting the peers' keys and given
/// `local_flags`. Returns the nodes of hosts 1, 2 and 3.
pub fn three_nodes(
    net: &Net,
    keys: [&Key; 2],
    peer_flags: &[&str],
    local_flags: &[&str],
) -> [Daemon; 3] {
    let n1 = node(net.host(1), keys[0], &[], peer_flags);
    let n2 = node(net.host(2), keys[1], &[], peer_flags);
    let trusted = match keys[0].public == keys[1].public {
        true => &keys[..1],
        false => &keys[..],
    };
    [n1, n2, local_node(net, trusted, local_flags)]
}

/// The node on host 3 of `net` that the test's Nix substitutes through: it
/// signs with a key of its own (`h3-1`) and accepts narinfo signed by
/// `trusted`, given `flags`. [`three_nodes`] starts it after two peers;
/// tests whose peers are stand-ins, or start later, start it alone.
pub fn local_node(net: &Net, trusted: &[&Key], flags: &[&str]) -> Daemon {
    let h3 = net.host(3);
    node(h3, &generate_key(h3, "h3-1"), trusted, flags)
}

/// The path of a Python stand-in of this folder (`v1_peer.py`, the original
/// Peerix; `hostile.py`, hostile clients; `upstream_cache.py`, an upstream
/// binary cache), to run with `python3`.
pub fn stand_in(name: &str) -> String {
    format!("{}/integration/support/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `v1_peer.py serve CACHE 12304 extra…` (an original Peerix node serving
/// `cache`, a `nix copy --to file://…` cache) started on `host`, once it
/// listens (within 20 s: Python starts slowly on a busy machine, and a
/// query sent before it listens is lost).
pub fn v1_peer(host: &Host, cache: &Path, extra: &[&str]) -> Daemon {
    let script = stand_in("v1_peer.py");
    let mut args = vec![script.as_str(), "serve", cache.to_str().unwrap(), "12304"];
    args.extend(extra);
    let peer = host.spawn_daemon(host.cmd("python3", &args), "v1-peer");
    let listening = wait_until(Duration::from_secs(20), || peer.log().contains("serving"));
    assert!(listening, "v1_peer.py on {}: {}", host.name, peer.log());
    peer
}

/// The hash part of a store path.
pub fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// The NAR hash Nix recorded for `path` on `host`.
pub fn nar_hash(host: &Host, path: &str) -> String {
    host.run(&format!("nix-store -q --hash {path}"))
}

/// Copies `path` with its closure into `to`'s store (signatures travel).
pub fn copy_to(from: &Host, to: &Host, path: &str) {
    let root = to.nix_dir.parent().expect("a host's /nix has a parent");
    from.run(&format!(
        "nix copy --no-check-sigs --to {} {path}",
        root.display()
    ));
}

/// Waits up to 10 s until the node on `host` (at the default port) offers
/// `path` to peers: its `/peer/<hash>.narinfo` answers 200. A path made
/// after the node started is offered once the node's store index has seen
/// it (a fraction of a second). Panics if it never is.
pub fn wait_offered(host: &Host, path: &str) {
    let url = format!(
        "http://{}:{DEFAULT_PORT}/peer/{}.narinfo",
        host.addr4,
        hash_of(path)
    );
    let offered = wait_until(Duration::from_secs(10), || host.curl(&[&url]).status == 200);
    assert!(offered, "the node on {} never offered {path}", host.name);
}

/// A NAR on its way from two peers to Nix, made by [`nar_under_way`].
pub struct NarUnderWay {
    /// The nodes on hosts 1 and 2, which hold the path.
    pub peers: [Daemon; 2],
    /// Which of `peers` streams the NAR, as host 3's node first logged it
    /// (`HASH: NAR of N bytes from ADDR…`).
    pub streaming: usize,
    /// The node on host 3, which fetches the NAR for its Nix.
    pub n3: Daemon,
    /// `nix-store -r PATH` on host 3.
    pub nix: Daemon,
}

/// Starts nodes on hosts 1 and 2 of `net`, which both hold `path`, signing
/// with `key` and given `extra` flags, and a node on host 3 that trusts
/// `key`; then realises `path` on host 3 with `client` (`None`: the
/// machine's Nix). Returns once host 3's node streams the NAR, and 1.5 s
/// more: far enough into it for a test to take a peer away.
pub fn nar_under_way(
    net: &Net,
    key: &Key,
    path: &str,
    extra: &[&str],
    client: Option<&nix_clients::Client>,
) -> NarUnderWay {
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let [n1, n2, n3] = three_nodes(net, [key, key], extra, &[]);
    wait_offered(h1, path);
    wait_offered(h2, path);
    let args = realise_args(&[path], &[key]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let command = match client {
        None => h3.cmd("nix-store", &args),
        Some(client) => client.command(h3, "nix-store", &args),
    };
    let nix = h3.spawn_daemon(command, "nix-store");
    let label = client.map_or("nix-store".into(), |c| c.label());
    let streams = format!("{}: NAR of", hash_of(path));
    let started = wait_until(Duration::from_secs(30), || {
        !n3.log_lines(&streams).is_empty()
    });
    assert!(started, "{label}: no NAR stream: {}", n3.log());
    thread::sleep(Duration::from_millis(1500));
    let line = n3.log_lines(&streams).remove(0);
    let streaming = match line.contains(&h1.addr4.to_string()) {
        true => 0,
        false => 1,
    };
    NarUnderWay {
        peers: [n1, n2],
        streaming,
        n3,
        nix,
    }
}

/// After a peer streaming a NAR to `node` was taken away: waits up to
/// 2 min for `nix` to finish and asserts that it succeeded, and that
/// `node` logged one "broke at byte N" and one "going on from … at byte
/// N" line, for the same N. Returns those two lines and N.
pub fn nar_went_on(nix: &mut Daemon, node: &Daemon, label: &str) -> (String, String, u64) {
    let finished = wait_until(Duration::from_secs(120), || nix.try_wait().is_some());
    assert!(finished, "{label}: nix-store hangs");
    assert!(
        nix.try_wait().is_some_and(|s| s.success()),
        "{label}: {}\nnode:\n{}",
        nix.log(),
        node.log()
    );
    let mut broke = node.log_lines("broke at byte");
    let mut went_on = node.log_lines("going on from");
    assert_eq!(
        (broke.len(), went_on.len()),
        (1, 1),
        "{label}: {}",
        node.log()
    );
    let offset: u64 = went_on[0]
        .rsplit("at byte ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("an offset");
    assert!(
        broke[0].contains(&format!("at byte {offset} ")),
        "{label}: {broke:?} {went_on:?}"
    );
    (broke.remove(0), went_on.remove(0), offset)
}

/// The text of `/metrics` of the node on `host` (asked as its local Nix).
pub fn metrics(host: &Host) -> String {
    host.curl(&[&format!("{LOCAL}/metrics")]).text()
}

/// The value of `series` (its name and labels, as exported, e.g.
/// `peerix_nar_bytes_total{source="store"}`) in the `/metrics` text
/// `metrics`; `None` when it is not there.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    (metrics.lines()).find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Runs `cmd` to completion, collecting stdout and stderr; `None` if it took
/// longer than `limit` (it is then killed).
pub fn output_within(mut cmd: Command, limit: Duration) -> Option<Output> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn a command");
    let reader = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a command") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

/// Child processes of `pid` (of all its threads) with their command names.
pub fn child_processes(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let list = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            found.push((child, comm.trim().to_string()));
        }
    }
    found
}

/// The number of open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Polls `cond` every 50 ms for up to `limit`; true as soon as it holds.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Standard base64 (with padding) of `data`, for the v1 `/local/nar/` URLs.
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A number unique within this test process (for file names).
fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// The value following `flag` (`--flag V` or `--flag=V`) in `args`.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == flag {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(flag).and_then(|rest| rest.strip_prefix('='))
        }
    })
}

/// Header lines of the last response in a curl `-D` dump.
fn parse_headers(dump: &str) -> Vec<(String, String)> {
    let last = dump.trim_end().rsplit("\r\n\r\n").next().unwrap_or("");
    last.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// Whether we run as root (effective uid 0).
fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Checks that a network namespace can be made and entered.
fn probe_netns(name: &str) -> Result<(), String> {
    quiet_ip(&["netns", "add", name])?;
    let entered = Command::new("ip")
        .args(["netns", "exec", name, "unshare", "-m", "true"])
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(stderr_of(&o))
            }
        });
    let _ = quiet_ip(&["netns", "del", name]);
    entered
}

/// The per-user directory holding every run's directory.
fn base_dir() -> PathBuf {
    std::env::temp_dir().join("peerix-it")
}

/// Runs `ip args…`, panicking with its error output on failure.
fn ip(args: &[&str]) {
    if let Err(e) = quiet_ip(args) {
        panic!("ip {}: {e}", args.join(" "));
    }
}

/// Runs `ip args…`, returning its error output on failure.
fn quiet_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(stderr_of(&out))
    }
}

/// Turns "not found" into success, for removing what may not exist.
fn ignore_not_found(e: std::io::Error) -> std::io::Result<()> {
    match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(e),
    }
}

/// The trimmed stderr of a finished command.
fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// Kills every process in network namespace `ns` and deletes it.
fn kill_netns(ns: &str) {
    let pids = || -> Vec<String> {
        let out = Command::new("ip").args(["netns", "pids", ns]).output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
    };
    let gone = wait_until(Duration::from_secs(5), || {
        let left = pids();
        if !left.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&left).output();
        }
        left.is_empty()
    });
    if !gone {
        eprintln!("warning: processes left in {ns}: {:?}", pids());
    }
    let _ = quiet_ip(&["netns", "del", ns]);
}

/// The pid encoded in a name made by this harness (`pxit<hex pid>n…`).
fn pid_in_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (hex, _) = rest.split_once('n')?;
    u32::from_str_radix(hex, 16).ok()
}

/// Removes namespaces, bridges and directories of earlier runs whose test
/// process no longer exists (e.g. killed by a signal, so no `Drop` ran).
fn remove_leftovers() {
    let dead = |name: &str| {
        pid_in_name(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let list = Command::new("ip").args(["netns", "list"]).output();
    let list = list
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for ns in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| dead(n))
    {
        kill_netns(ns);
    }
    let links = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output();
    let links = links
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for link in links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(str::trim)
        .filter(|n| dead(n))
    {
        let _ = quiet_ip(&["link", "del", link]);
    }
    for entry in fs::read_dir(base_dir()).into_iter().flatten().flatten() {
        if dead(&entry.file_name().to_string_lossy()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Net {
    /// Adds host number `i + 1` (index `i`) to `bridge`: its namespace and
    /// veth, `addr4` (with its prefix length) and `addr6`/64, and an
    /// initialised store.
    fn add_host(&mut self, i: usize, (addr4, len4): (Ipv4Addr, u8), addr6: Ipv6Addr, bridge: &str) {
        let host = Host {
            name: format!("h{}", i + 1),
            netns: format!("{}-h{}", self.prefix, i + 1),
            addr4,
            addr6,
            dir: self.dir.join(format!("h{}", i + 1)),
            nix_dir: self.dir.join(format!("h{}", i + 1)).join("nix"),
        };
        let veth = format!("{}v{}", self.prefix, i + 1);
        assert!(veth.len() <= 15, "link name {veth} too long");
        ip(&["netns", "add", &host.netns]);
        self.hosts.push(host);
        let host = self.hosts.last().unwrap();
        let peer = ["peer", "name", "eth0", "netns", &host.netns];
        ip(&[&["link", "add", &veth, "type", "veth"][..], &peer].concat());
        ip(&["link", "set", &veth, "master", bridge]);
        ip(&["link", "set", &veth, "up"]);
        let ns = ["-n", host.netns.as_str()];
        let a4 = format!("{}/{len4}", host.addr4);
        let a6 = format!("{}/64", host.addr6);
        ip(&[&ns[..], &["addr", "add", &a4, "brd", "+", "dev", "eth0"]].concat());
        ip(&[&ns[..], &["-6", "addr", "add", &a6, "dev", "eth0", "nodad"]].concat());
        ip(&[&ns[..], &["link", "set", "eth0", "up"]].concat());
        ip(&[&ns[..], &["link", "set", "lo", "up"]].concat());
        for d in [
            &host.nix_dir,
            &host.dir.join("home"),
            &host.dir.join("cache"),
            &host.dir.join("config"),
            &host.nix_conf_dir(),
        ] {
            fs::create_dir_all(d).expect("create a host directory");
        }
        fs::write(host.nix_conf_dir().join("nix.conf"), NIX_CONF)
            .expect("write the host's nix.conf");
        host.run("nix-store --init");
    }
}
