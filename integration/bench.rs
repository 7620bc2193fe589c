//! The Peerix benchmark (`integration/bench`, issue 5): what a cache costs a
//! nixos-rebuild when peers do not have a path, how fast it moves a NAR when
//! they do, and what it costs a small machine to run.
//!
//! Every measurement runs on throw-away test hosts (network namespaces, each
//! with its own `/nix` and real Nix; see `support`), several times, and is
//! printed beside a baseline measured in the same run: a table of medians
//! with min–max, and a JSON copy (written to `integration/bench-results.json`
//! in full mode, printed in `--quick` mode). Numbers never fail the run; a
//! measurement that cannot be made (a panic in its section) does.
//!
//! Latencies are measured by a load client that runs inside the test host:
//! this very binary, re-executed there with `--client …` (see [`client`]),
//! so no process start is ever inside a measured interval. Baselines of Nix
//! commands are timed inside the host by the same client (wall clock and
//! `getrusage` of its children).
//!
//! Flags: `--quick` (one small iteration of everything, for CI), `--only
//! SECTION[,SECTION…]` (misses, nar, load, index, closure, lan20), `--out
//! FILE` (where the JSON goes in full mode).

mod support;

use std::fmt::Write as _;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::thread;
use std::time::{Duration, Instant};

use support::{build_chain, generate_key, output_within, wait_until, Daemon, Host, Key, Net};

/// The local node's address inside a host, as the local Nix reaches it.
const LOCAL: &str = "127.0.0.1:12304";
/// The daemon's default discovery timeout (ms), used where none is given.
const DEFAULT_TIMEOUT_MS: f64 = 500.0;
/// Where the full run's JSON goes unless `--out` says otherwise.
const RESULTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/integration/bench-results.json"
);

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` to every bench target.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--client") {
        return client::main(&args[1..]);
    }
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "bench: {e}\nusage: integration/bench [--quick] [--only SECTIONS] [--out FILE]"
            );
            return ExitCode::from(2);
        }
    };
    if !is_root() {
        eprintln!("bench: skipped: needs root (network namespaces and test stores)");
        return ExitCode::SUCCESS;
    }
    run(&options)
}

// ---------------------------------------------------------------------------
// Options, sections, the report

/// What the command line asked for.
struct Options {
    quick: bool,
    only: Option<Vec<String>>,
    out: String,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            quick: false,
            only: None,
            out: RESULTS.to_string(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--only" => {
                    let list = it.next().ok_or("--only needs a list")?;
                    o.only = Some(list.split(',').map(String::from).collect());
                }
                "--out" => o.out = it.next().ok_or("--out needs a file")?.clone(),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(o)
    }
}

/// Sizes and repetitions: small in quick mode, the in full mode.
#[derive(Clone, Copy)]
struct Mode {
    quick: bool,
}

impl Mode {
    /// `quick` in quick mode, else `full`.
    fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

type Section = fn(Mode) -> Vec<Row>;

/// The sections in the order they run.
const SECTIONS: &[(&str, Section)] = &[
    ("misses", misses),
    ("nar", nar),
    ("load", load),
    ("index", index),
    ("closure", closure),
    ("lan20", lan20),
];

/// Runs the sections, prints the table and writes or prints the JSON.
/// Fails only when a section could not be measured.
fn run(options: &Options) -> ExitCode {
    let mode = Mode {
        quick: options.quick,
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (name, section) in SECTIONS {
        if options
            .only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|s| s == name))
        {
            continue;
        }
        eprintln!("bench: {name}…");
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| section(mode))) {
            Ok(r) => rows.extend(r),
            Err(_) => failed.push(name.to_string()),
        }
        eprintln!("bench: {name} took {:.0?}", t.elapsed());
    }
    let machine = machine_info(mode, started.elapsed());
    println!("{}", table(&rows, &machine));
    let json = json(&rows, &machine, &failed);
    if options.quick {
        println!("{json}");
    } else if let Err(e) = fs::write(&options.out, json + "\n") {
        eprintln!("bench: cannot write {}: {e}", options.out);
        return ExitCode::FAILURE;
    } else {
        eprintln!("bench: results written to {}", options.out);
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("bench: sections that failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

/// How a row's samples become its value.
#[derive(Clone, Copy, PartialEq)]
enum Stat {
    Median,
    P99,
    Max,
}

/// What a row is held to.
#[derive(Clone, Copy)]
enum Target {
    None,
    /// value ≤ this (in the row's unit)
    AtMost(f64),
    /// value ≤ k × baseline
    TimesBaseline(f64),
    /// value ≥ k × baseline
    AtLeastTimesBaseline(f64),
    /// value ≤ baseline + this
    BaselinePlus(f64),
}

/// One line of the report.
struct Row {
    key: String,
    measure: String,
    unit: &'static str,
    stat: Stat,
    samples: Vec<f64>,
    /// What the baseline is, and its samples (summarised by their median).
    baseline: Option<(String, Vec<f64>)>,
    target: Target,
    note: String,
}

impl Row {
    fn new(key: &str, measure: &str, unit: &'static str, samples: Vec<f64>) -> Row {
        Row {
            key: key.into(),
            measure: measure.into(),
            unit,
            stat: Stat::Median,
            samples,
            baseline: None,
            target: Target::None,
            note: String::new(),
        }
    }
    fn stat(mut self, stat: Stat) -> Row {
        self.stat = stat;
        self
    }
    fn baseline(mut self, what: &str, samples: Vec<f64>) -> Row {
        self.baseline = Some((what.into(), samples));
        self
    }
    fn target(mut self, target: Target) -> Row {
        self.target = target;
        self
    }
    fn note(mut self, note: &str) -> Row {
        self.note = note.into();
        self
    }

    fn value(&self) -> f64 {
        match self.stat {
            Stat::Median => percentile(&self.samples, 50.0),
            Stat::P99 => percentile(&self.samples, 99.0),
            Stat::Max => self.samples.iter().copied().fold(f64::NAN, f64::max),
        }
    }
    fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::min)
    }
    fn max(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::max)
    }
    fn base(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, s)| percentile(s, 50.0))
    }
    fn ratio(&self) -> Option<f64> {
        self.base().map(|b| self.value() / b)
    }
    fn met(&self) -> Option<bool> {
        let v = self.value();
        let b = self.base();
        match self.target {
            Target::None => None,
            Target::AtMost(t) => Some(v <= t),
            Target::TimesBaseline(k) => b.map(|b| v <= k * b),
            Target::AtLeastTimesBaseline(k) => b.map(|b| v >= k * b),
            Target::BaselinePlus(d) => b.map(|b| v <= b + d),
        }
    }
    fn target_text(&self) -> String {
        match self.target {
            Target::None => "—".into(),
            Target::AtMost(t) => format!("≤ {} {}", num(t), self.unit),
            Target::TimesBaseline(k) => format!("≤ {k} × baseline"),
            Target::AtLeastTimesBaseline(k) => format!("≥ {k} × baseline"),
            Target::BaselinePlus(d) => format!("≤ baseline + {} {}", num(d), self.unit),
        }
    }
    fn stat_name(&self) -> &'static str {
        match self.stat {
            Stat::Median => "median",
            Stat::P99 => "p99",
            Stat::Max => "max",
        }
    }
}

/// Nearest-rank percentile `p` of `samples` (NaN when empty).
fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// A number with about three significant digits.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The report as a Markdown table (for the README), with the machine.
fn table(rows: &[Row], machine: &[(String, String)]) -> String {
    let mut out = String::from(
        "| measure | value (min–max) | baseline in the same run | ratio | target | met? |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let value = format!(
            "{}{} {} ({}–{}, n={})",
            if r.stat == Stat::Median {
                String::new()
            } else {
                format!("{} ", r.stat_name())
            },
            num(r.value()),
            r.unit,
            num(r.min()),
            num(r.max()),
            r.samples.len()
        );
        let base = match &r.baseline {
            Some((what, s)) => format!(
                "{} {} ({}–{}): {what}",
                num(percentile(s, 50.0)),
                r.unit,
                num(s.iter().copied().fold(f64::NAN, f64::min)),
                num(s.iter().copied().fold(f64::NAN, f64::max))
            ),
            None => "—".into(),
        };
        let ratio = r.ratio().map_or("—".into(), |x| format!("{x:.2}"));
        let met = match r.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let note = if r.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.note)
        };
        let _ = writeln!(
            out,
            "| {}{note} | {value} | {base} | {ratio} | {} | {met} |",
            r.measure,
            r.target_text()
        );
    }
    out.push_str("\nMachine: ");
    let m: Vec<String> = machine.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    out.push_str(&m.join("; "));
    out
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (null when not finite).
fn jn(x: f64) -> String {
    if x.is_finite() {
        format!("{}", (x * 1e6).round() / 1e6)
    } else {
        "null".into()
    }
}

/// The machine-readable copy of the report.
fn json(rows: &[Row], machine: &[(String, String)], failed: &[String]) -> String {
    let mut out = String::from("{\n  \"machine\": {");
    let m: Vec<String> = machine
        .iter()
        .map(|(k, v)| format!("{}: {}", js(k), js(v)))
        .collect();
    out.push_str(&m.join(", "));
    out.push_str("},\n  \"failed_sections\": [");
    let f: Vec<String> = failed.iter().map(|s| js(s)).collect();
    out.push_str(&f.join(", "));
    out.push_str("],\n  \"results\": [\n");
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let base = match &r.baseline {
                Some((what, s)) => format!(
                    "{{\"what\": {}, \"median\": {}, \"min\": {}, \"max\": {}, \"n\": {}}}",
                    js(what),
                    jn(percentile(s, 50.0)),
                    jn(s.iter().copied().fold(f64::NAN, f64::min)),
                    jn(s.iter().copied().fold(f64::NAN, f64::max)),
                    s.len()
                ),
                None => "null".into(),
            };
            format!(
                "    {{\"key\": {}, \"measure\": {}, \"unit\": {}, \"stat\": {}, \"value\": {}, \"min\": {}, \"max\": {}, \"n\": {}, \"baseline\": {base}, \"ratio\": {}, \"target\": {}, \"met\": {}, \"note\": {}}}",
                js(&r.key),
                js(&r.measure),
                js(r.unit),
                js(r.stat_name()),
                jn(r.value()),
                jn(r.min()),
                jn(r.max()),
                r.samples.len(),
                r.ratio().map_or("null".into(), jn),
                js(&r.target_text()),
                r.met().map_or("null".into(), |b| b.to_string()),
                js(&r.note)
            )
        })
        .collect();
    out.push_str(&items.join(",\n"));
    out.push_str("\n  ]\n}");
    out
}

/// What machine and build the numbers come from.
fn machine_info(mode: Mode, took: Duration) -> Vec<(String, String)> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_string());
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let sh = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        ("date".into(), sh("date -u +%Y-%m-%dT%H:%M:%SZ")),
        ("mode".into(), mode.pick("quick", "full").into()),
        (
            "commit".into(),
            sh("git describe --always --dirty 2>/dev/null"),
        ),
        ("cpus".into(), cpus.to_string()),
        ("cpu".into(), model),
        ("memory".into(), format!("{:.1} GiB", mem_kib / 1048576.0)),
        (
            "kernel".into(),
            read("/proc/sys/kernel/osrelease").trim().into(),
        ),
        ("nix".into(), sh("nix-store --version")),
        ("duration".into(), format!("{:.0} s", took.as_secs_f64())),
    ]
}

// ---------------------------------------------------------------------------
// Helpers: nodes, the load client, processes, timing in a host

/// Starts a node on `host` signing with `key` and accepting narinfo signed
/// by it (every node of a benchmark shares one key), at the daemon's default
/// log level (`info`: debug logging would cost a line per request).
fn node(host: &Host, key: &Key, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--private-key",
        key.secret.to_str().unwrap(),
        "--trusted-key",
        &key.public,
    ];
    args.extend(extra);
    host.spawn_peerix_with(&[], &[("RUST_LOG", "info")], &args)
}

/// Waits (at most 20 s) until the local node of `host` knows `n` peers.
fn wait_peers(host: &Host, n: usize) {
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
fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// One request made by the load client.
#[derive(Debug, Clone)]
struct Sample {
    /// HTTP status; 0 on a transport error.
    status: u16,
    ttfb_ms: f64,
    total_ms: f64,
    bytes: u64,
    error: String,
}

/// Runs the load client in `host`: GETs `paths` from the local node over
/// `threads` keep-alive connections (opened before the first request; with
/// as many threads as paths, every request starts at once). One sample per
/// path, in order.
fn http_load(host: &Host, paths: &[String], threads: usize) -> Vec<Sample> {
    let file = host.dir.join(format!("paths-{}.txt", next_id()));
    fs::write(&file, paths.join("\n")).expect("write the paths file");
    let out = run_client(
        host,
        &["http", LOCAL, file.to_str().unwrap(), &threads.to_string()],
    );
    let samples: Vec<Sample> = out.lines().map(parse_sample).collect();
    assert_eq!(samples.len(), paths.len(), "client output:\n{out}");
    samples
}

fn parse_sample(line: &str) -> Sample {
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
fn run_client(host: &Host, args: &[&str]) -> String {
    let exe = std::env::current_exe().expect("own executable");
    let mut argv = vec!["--client"];
    argv.extend(args);
    let out = output_within(
        host.cmd(exe.to_str().unwrap(), &argv),
        Duration::from_secs(900),
    )
    .expect("the load client finished within 15 minutes");
    assert!(
        out.status.success(),
        "load client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `/HASH.narinfo` for `n` random hashes no store has.
fn absent_narinfo(n: usize) -> Vec<String> {
    let mut rng = client::Rng::new();
    (0..n).map(|_| format!("/{}.narinfo", rng.hash())).collect()
}

/// Sequential narinfo requests for absent paths; their latencies (ms),
/// after a few unmeasured warm-up requests. Panics on anything but 404.
fn miss_latencies(host: &Host, n: usize) -> Vec<f64> {
    let samples = http_load(host, &absent_narinfo(n + 5), 1);
    for s in &samples {
        assert_eq!(s.status, 404, "a miss answered {s:?} {}", s.error);
    }
    samples[5..].iter().map(|s| s.total_ms).collect()
}

/// CPU seconds of process `pid` and of its reaped children.
fn cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14–17 of proc(5): utime, stime, cutime, cstime; `rest` starts at field 3.
    let ticks = f[11] + f[12] + f[13] + f[14];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / if hz > 0.0 { hz } else { 100.0 }
}

/// A `/proc/PID/status` field in MiB (`VmRSS`, `VmHWM`).
fn mem_mib(pid: u32, field: &str) -> f64 {
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
struct Times {
    real: f64,
    cpu: f64,
}

fn timed_in(host: &Host, script: &str) -> Times {
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
fn next_id() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Adds a file of `bytes` random bytes to `host`'s store; its path.
fn random_path(host: &Host, name: &str, bytes: u64) -> String {
    let f = host.dir.join(name);
    host.run(&format!(
        "head -c {bytes} /dev/urandom > {0} && nix-store --add {0}",
        f.display()
    ))
}

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

// ---------------------------------------------------------------------------
// Sections

/// Narinfo misses with 2 and 8 peers of ours, and with one silent peer.
fn misses(m: Mode) -> Vec<Row> {
    let net = Net::new(9).expect("test hosts");
    let local = net.host(1);
    let key = generate_key(local, "bench-1");
    let n = m.pick(20, 1000);
    let mut rows = Vec::new();

    let mut peers: Vec<Daemon> = (2..=3).map(|i| node(net.host(i), &key, &[])).collect();
    let mut this = node(local, &key, &[]);
    wait_peers(local, 2);
    for count in [2, 8] {
        if count == 8 {
            peers.extend((4..=9).map(|i| node(net.host(i), &key, &[])));
            wait_peers(local, 8);
        }
        let lat = miss_latencies(local, n);
        rows.push(
            Row::new(
                &format!("miss_{count}_peers_p50_ms"),
                &format!("narinfo miss, {count} peers of ours: p50"),
                "ms",
                lat.clone(),
            )
            .target(Target::AtMost(2.0)),
        );
        rows.push(
            Row::new(
                &format!("miss_{count}_peers_p99_ms"),
                &format!("narinfo miss, {count} peers of ours: p99"),
                "ms",
                lat,
            )
            .stat(Stat::P99)
            .target(Target::AtMost(10.0)),
        );
    }

    // h9 goes quiet (its node stops) and becomes an --extra-host of a new
    // local node: a silent peer, as an original Peerix is on a miss.
    peers.truncate(2);
    this.kill();
    let timeout = 200.0;
    let silent = net.host(9).addr4.to_string();
    let _this = node(
        local,
        &key,
        &["--extra-host", &silent, "--timeout", &format!("{timeout}")],
    );
    wait_peers(local, 2);
    let lat = miss_latencies(local, m.pick(3, 25));
    rows.push(
        Row::new(
            "miss_silent_peer_ms",
            "narinfo miss with one silent peer (--timeout 200)",
            "ms",
            lat,
        )
        .baseline("the configured timeout", vec![timeout])
        .target(Target::BaselinePlus(5.0)),
    );
    rows
}

/// Hit latency, time to first byte of a tiny NAR, NAR throughput and CPU
/// per GiB: peer h1 → local node h2 → load client in h2.
fn nar(m: Mode) -> Vec<Row> {
    let net = Net::new(2).expect("test hosts");
    let (peer, local) = (net.host(1), net.host(2));
    let key = generate_key(peer, "bench-1");
    let chain = build_chain(peer, "hit", m.pick(5, 60));
    let tiny = random_path(peer, "tiny.bin", 100);
    let big_size = m.pick(8, 256) as f64 * MIB;
    let big = random_path(peer, "big.bin", big_size as u64);
    let peer_node = node(peer, &key, &[]);
    let local_node = node(local, &key, &[]);
    wait_peers(local, 1);
    let mut rows = Vec::new();

    // Hit latency: the first request of a path makes the peer ask Nix for
    // its path info; later ones are answered from the peer's cache.
    let repeat = m.pick(2, 6);
    let paths: Vec<String> = chain
        .iter()
        .flat_map(|p| vec![format!("/{}.narinfo", hash_of(p)); repeat])
        .collect();
    let samples = http_load(local, &paths, 1);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s.status, 200, "a hit answered {s:?}");
        if i % repeat == 0 {
            cold.push(s.total_ms);
        } else {
            warm.push(s.total_ms);
        }
    }
    let dump_db: Vec<f64> = (0..m.pick(2, 15))
        .map(|i| {
            let p = &chain[i % chain.len()];
            timed_in(peer, &format!("nix-store --dump-db {p}")).real * 1000.0
        })
        .collect();
    rows.push(
        Row::new(
            "hit_uncached_ms",
            "narinfo hit via the local node, peer's path info not cached",
            "ms",
            cold,
        )
        .baseline("one `nix-store --dump-db PATH`", dump_db.clone()),
    );
    rows.push(
        Row::new(
            "hit_cached_ms",
            "narinfo hit via the local node, peer's path info cached",
            "ms",
            warm,
        )
        .baseline("one `nix-store --dump-db PATH`", dump_db)
        .target(Target::AtMost(3.0)),
    );

    // Time to first byte of a tiny NAR (after its narinfo, as Nix does).
    let n = m.pick(3, 30);
    let tiny_nar = format!("/nar/{}.nar", hash_of(&tiny));
    let mut paths = vec![format!("/{}.narinfo", hash_of(&tiny))];
    paths.extend(std::iter::repeat_n(tiny_nar, n + 1));
    let samples = http_load(local, &paths, 1);
    for s in &samples {
        assert_eq!(s.status, 200, "the tiny NAR: {s:?}");
    }
    let ttfb: Vec<f64> = samples[2..].iter().map(|s| s.ttfb_ms).collect();
    let dumps: Vec<f64> = (0..n)
        .map(|_| timed_in(peer, &format!("nix-store --dump {tiny}")).real * 1000.0)
        .collect();
    rows.push(
        Row::new(
            "tiny_nar_ttfb_ms",
            "time to first byte of a tiny NAR via the local node",
            "ms",
            ttfb,
        )
        .baseline("one `nix-store --dump` of it", dumps)
        .target(Target::BaselinePlus(5.0)),
    );

    // Throughput and CPU of the big path, alternating with the baseline.
    let big_nar = format!("/nar/{}.nar", hash_of(&big));
    let nar_size: f64 = peer
        .run(&format!("nix-store -q --size {big}"))
        .parse()
        .expect("a NAR size");
    timed_in(peer, &format!("nix-store --dump {big} | cat > /dev/null"));
    http_load(local, std::slice::from_ref(&big_nar), 1);
    let (mut tput, mut base_tput, mut cpu, mut base_cpu) = (vec![], vec![], vec![], vec![]);
    for _ in 0..m.pick(1, 5) {
        let t = timed_in(peer, &format!("nix-store --dump {big} | cat > /dev/null"));
        base_tput.push(nar_size / MIB / t.real);
        base_cpu.push(t.cpu / (nar_size / GIB));
        let pids = [peer_node.pid(), local_node.pid()];
        let before: f64 = pids.iter().map(|&p| cpu_secs(p)).sum();
        let s = &http_load(local, std::slice::from_ref(&big_nar), 1)[0];
        assert_eq!((s.status, s.bytes as f64), (200, nar_size), "{s:?}");
        // The peer reaps its `nix-store --dump` once the stream is done.
        thread::sleep(Duration::from_millis(300));
        let after: f64 = pids.iter().map(|&p| cpu_secs(p)).sum();
        tput.push(nar_size / MIB / (s.total_ms / 1000.0));
        cpu.push((after - before) / (nar_size / GIB));
    }
    let size_note = format!("{:.0} MiB path", big_size / MIB);
    rows.push(
        Row::new(
            "nar_throughput_mib_s",
            "NAR throughput, peer → local node → client",
            "MiB/s",
            tput,
        )
        .baseline("`nix-store --dump PATH | cat > /dev/null`", base_tput)
        .target(Target::AtLeastTimesBaseline(0.9))
        .note(&size_note),
    );
    rows.push(
        Row::new(
            "cpu_s_per_gib",
            "CPU per GiB served (peer + local node, with their nix-store children)",
            "s/GiB",
            cpu,
        )
        .baseline("CPU of the baseline pipe", base_cpu)
        .target(Target::TimesBaseline(1.2)),
    );
    rows
}

/// Resident memory idle, then 16 NAR downloads and 200 narinfo requests at
/// once (hits and misses), with the peak memory after.
fn load(m: Mode) -> Vec<Row> {
    let net = Net::new(2).expect("test hosts");
    let (peer, local) = (net.host(1), net.host(2));
    let key = generate_key(peer, "bench-1");
    let chain = build_chain(peer, "load", m.pick(5, 100));
    let file_size = m.pick(1, 64) as f64 * MIB;
    let mid = random_path(peer, "mid.bin", file_size as u64);
    let nar_size: f64 = peer
        .run(&format!("nix-store -q --size {mid}"))
        .parse()
        .expect("a NAR size");
    let _peer_node = node(peer, &key, &[]);
    let local_node = node(local, &key, &[]);
    wait_peers(local, 1);
    thread::sleep(Duration::from_secs(1));
    let idle = mem_mib(local_node.pid(), "VmRSS");
    let peer_idle = mem_mib(_peer_node.pid(), "VmRSS");

    let mut rows = Vec::new();
    let (mut errors, mut narinfo_max, mut ttfb_max, mut nar_total) =
        (vec![], vec![], vec![], vec![]);
    let (nars, infos) = (m.pick(16, 16), m.pick(200, 200));
    for _ in 0..m.pick(1, 3) {
        let mut paths: Vec<String> = (0..nars)
            .map(|_| format!("/nar/{}.nar", hash_of(&mid)))
            .collect();
        let absent = absent_narinfo(infos / 2);
        for i in 0..infos {
            paths.push(if i % 2 == 0 {
                format!("/{}.narinfo", hash_of(&chain[(i / 2) % chain.len()]))
            } else {
                absent[i / 2].clone()
            });
        }
        let samples = http_load(local, &paths, paths.len());
        let mut bad = 0;
        for (i, s) in samples.iter().enumerate() {
            let ok = if i < nars {
                s.status == 200 && s.bytes as f64 == nar_size
            } else if (i - nars) % 2 == 0 {
                s.status == 200
            } else {
                s.status == 404
            };
            if !ok {
                bad += 1;
                eprintln!("bench: load: {} → {s:?}", paths[i]);
            }
        }
        errors.push(bad as f64);
        let max = |it: &mut dyn Iterator<Item = f64>| it.fold(0.0, f64::max);
        narinfo_max.push(max(&mut samples[nars..].iter().map(|s| s.total_ms)));
        ttfb_max.push(max(&mut samples[..nars].iter().map(|s| s.ttfb_ms)));
        nar_total.push(max(&mut samples[..nars].iter().map(|s| s.total_ms)));
    }
    let peak = mem_mib(local_node.pid(), "VmHWM");
    let limit = DEFAULT_TIMEOUT_MS + 1000.0;
    let what = format!(
        "{nars} NARs of {:.0} MiB + {infos} narinfo",
        file_size / MIB
    );
    rows.push(
        Row::new("load_errors", "concurrent run: failed requests", "", errors)
            .stat(Stat::Max)
            .target(Target::AtMost(0.0))
            .note(&what),
    );
    rows.push(
        Row::new(
            "load_narinfo_max_ms",
            "concurrent run: slowest narinfo request",
            "ms",
            narinfo_max,
        )
        .stat(Stat::Max)
        .target(Target::AtMost(limit)),
    );
    rows.push(
        Row::new(
            "load_nar_ttfb_max_ms",
            "concurrent run: slowest NAR's time to first byte",
            "ms",
            ttfb_max,
        )
        .stat(Stat::Max)
        .target(Target::AtMost(limit)),
    );
    rows.push(
        Row::new(
            "load_nar_total_max_ms",
            "concurrent run: slowest whole NAR download",
            "ms",
            nar_total,
        )
        .stat(Stat::Max)
        .note("bounded by bandwidth, not by the daemon's timeouts"),
    );
    rows.push(
        Row::new(
            "rss_idle_mib",
            "local node resident memory, idle",
            "MiB",
            vec![idle],
        )
        .target(Target::AtMost(8.0))
        .note("peers known, no request yet"),
    );
    rows.push(Row::new(
        "rss_idle_peer_mib",
        "peer node resident memory, idle",
        "MiB",
        vec![peer_idle],
    ));
    rows.push(
        Row::new(
            "rss_peak_mib",
            "local node peak resident memory (VmHWM) over the concurrent runs",
            "MiB",
            vec![peak],
        )
        .target(Target::AtMost(32.0)),
    );
    rows
}

/// The store index with many entries: start-up time and memory of a node
/// whose store holds them (against a node with an empty store), and the
/// cost of a query answered from the index, seen through UDP.
fn index(m: Mode) -> Vec<Row> {
    let net = Net::new(3).expect("test hosts");
    let (full, client_host, empty) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(full, "bench-1");
    let count = m.pick(2000, 100_000);
    let _tmpfs = TmpfsStore::mount(full);
    let t = Instant::now();
    fake_store(full, count);
    eprintln!(
        "bench: {count} fake valid paths registered in {:.1?}",
        t.elapsed()
    );

    let (mut start_full, mut start_empty, mut rss_full, mut rss_empty, mut hwm_full) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..m.pick(1, 3) {
        let (t, rss, _, d) = start_timed(empty, &key);
        drop(d);
        start_empty.push(t);
        rss_empty.push(rss);
        let (t, rss, hwm, d) = start_timed(full, &key);
        drop(d);
        start_full.push(t);
        rss_full.push(rss);
        hwm_full.push(hwm);
    }
    let base_start = percentile(&start_empty, 50.0);
    let base_rss = percentile(&rss_empty, 50.0);
    let label = format!("{count} store entries");
    let mut rows = vec![
        Row::new(
            "index_start_s",
            &format!("node start-up (to serving), {label}"),
            "s",
            start_full.clone(),
        )
        .baseline("start-up with an empty store", start_empty),
        Row::new(
            "index_build_s",
            &format!("index build ({label}): start-up minus empty-store start-up"),
            "s",
            start_full.iter().map(|t| t - base_start).collect(),
        )
        .target(Target::AtMost(1.0)),
        Row::new(
            "index_rss_mib",
            &format!("index memory ({label}): RSS minus empty-store RSS"),
            "MiB",
            rss_full.iter().map(|r| r - base_rss).collect(),
        ),
        Row::new(
            "index_start_peak_mib",
            &format!("node peak memory (VmHWM) after start-up, {label}"),
            "MiB",
            hwm_full,
        )
        .baseline("RSS after start-up with an empty store", rss_empty),
    ];

    // Lookups: queries for absent hashes (answered "not here" from the
    // index) against both nodes, one at a time and as a flood.
    // No answer-rate limit: one client asks back to back.
    let _full_node = node(full, &key, &["--answer-rate", "0"]);
    let _empty_node = node(empty, &key, &["--answer-rate", "0"]);
    let rtt = |h: &Host| -> Vec<f64> {
        let out = run_client(
            client_host,
            &[
                "udp",
                &format!("{}:12304", h.addr4),
                &m.pick(100, 3000).to_string(),
                "1",
            ],
        );
        out.lines().filter_map(|l| l.parse::<f64>().ok()).collect()
    };
    let flood = |h: &Host| -> f64 {
        let out = run_client(
            client_host,
            &[
                "udp",
                &format!("{}:12304", h.addr4),
                &m.pick(2000, 200_000).to_string(),
                "32",
            ],
        );
        let f: Vec<f64> = out
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let (answered, secs) = (f[1], f[2]);
        assert!(answered > 0.0, "no answers to the flood: {out}");
        secs * 1e6 / answered
    };
    let (mut fl_full, mut fl_empty) = (vec![], vec![]);
    for _ in 0..m.pick(1, 3) {
        fl_empty.push(flood(empty));
        fl_full.push(flood(full));
    }
    let base_flood = percentile(&fl_empty, 50.0);
    rows.push(
        Row::new(
            "index_query_rtt_us",
            &format!("UDP query round trip (not here), {label}"),
            "µs",
            rtt(full),
        )
        .baseline("same against an empty store", rtt(empty)),
    );
    rows.push(
        Row::new(
            "index_query_cost_us",
            &format!("UDP queries answered back to back: µs per query, {label}"),
            "µs",
            fl_full.clone(),
        )
        .baseline("same against an empty store", fl_empty)
        .note("upper bound of a lookup: includes receiving and sending the datagrams"),
    );
    rows.push(
        Row::new(
            "index_lookup_us",
            &format!("lookup cost ({label}): per-query cost minus empty-store per-query cost"),
            "µs",
            fl_full.iter().map(|c| c - base_flood).collect(),
        )
        .target(Target::AtMost(2.0))
        .note("a difference of noisy numbers; the lookup itself is not observable from outside"),
    );
    rows
}

/// A tmpfs on a host's `/nix` for as long as it lives: 100 000 store
/// entries are made and removed in seconds there, where a VM's disk takes
/// many minutes to remove them.
struct TmpfsStore(PathBuf);

impl TmpfsStore {
    fn mount(host: &Host) -> TmpfsStore {
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
fn fake_store(host: &Host, count: usize) {
    let store = host.nix_dir.join("store");
    let mut rng = client::Rng::new();
    let mut reg = String::new();
    for i in 0..count {
        let name = format!("{}-bench-fake-{i}", rng.hash());
        fs::create_dir(store.join(&name)).expect("make a fake store entry");
        let _ = write!(
            reg,
            "/nix/store/{name}\nsha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n120\n\n0\n"
        );
    }
    let file = host.dir.join("register.txt");
    fs::write(&file, reg).expect("write the registration");
    host.run(&format!(
        "nix-store --register-validity --hash-given < {}",
        file.display()
    ));
}

/// Starts a node on `host` and times it until it logs that it serves;
/// seconds, RSS and VmHWM (MiB) then, and the node.
fn start_timed(host: &Host, key: &Key) -> (f64, f64, f64, Daemon) {
    // No answer-rate limit: the UDP client measures the node, back to back.
    let mut cmd = host.cmd(
        env!("CARGO_BIN_EXE_peerix"),
        &[
            "--private-key",
            key.secret.to_str().unwrap(),
            "--answer-rate",
            "0",
        ],
    );
    cmd.env("RUST_LOG", "info");
    let start = Instant::now();
    let mut d = host.spawn_daemon(cmd, "peerix-start");
    loop {
        if d.log().contains("serving on") {
            break;
        }
        if let Some(status) = d.try_wait() {
            panic!("peerix exited ({status}):\n{}", d.log());
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "peerix never served"
        );
        thread::sleep(Duration::from_millis(2));
    }
    let took = start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(300));
    let (rss, hwm) = (mem_mib(d.pid(), "VmRSS"), mem_mib(d.pid(), "VmHWM"));
    (took, rss, hwm, d)
}

/// `nix-store -r` of a chain closure through peerix, against the same
/// closure from a plain HTTP server of a `nix copy --to file://` cache.
fn closure(m: Mode) -> Vec<Row> {
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
    let cache = peer.dir.join("file-cache");
    peer.run(&format!(
        "nix copy --to 'file://{}?compression=none' {top}",
        cache.display()
    ));
    let server_cmd = peer.cmd(
        "/usr/bin/python3",
        &[
            "-m",
            "http.server",
            "--bind",
            &peer.addr4.to_string(),
            "--directory",
            cache.to_str().unwrap(),
            "8080",
        ],
    );
    let _server = peer.spawn_daemon(server_cmd, "http-server");
    let file_url = format!("http://{}:8080", peer.addr4);
    let info_url = format!("{file_url}/nix-cache-info");
    assert!(
        wait_until(Duration::from_secs(10), || client_host
            .curl(&["-f", &info_url])
            .status
            == 200),
        "the file cache's HTTP server does not answer"
    );
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
            client_host.run("nix-store --gc > /dev/null 2>&1");
            let left = client_host.try_run(&format!("nix-store --check-validity {top}"));
            assert!(!left.status.success(), "{top} survived the GC");
            let xdg = client_host.dir.join(format!("xdg-{run}-{i}"));
            let t = timed_in(
                client_host,
                &format!(
                    "XDG_CACHE_HOME={} nix-store -r {top} --option substituters {url} \
                     --option trusted-public-keys '{}' --option narinfo-cache-negative-ttl 0",
                    xdg.display(),
                    key.public
                ),
            );
            let got = client_host.run(&format!("nix-store -qR {top} | wc -l"));
            assert_eq!(got, count.to_string(), "the closure from {url}");
            if i == 0 {
                pair.0 = t.real;
            } else {
                pair.1 = t.real;
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

/// 20 hosts, all running a node: miss latency and UDP datagrams per query.
fn lan20(m: Mode) -> Vec<Row> {
    let hosts = 20;
    let net = Net::new(hosts).expect("test hosts");
    let local = net.host(1);
    let key = generate_key(local, "bench-1");
    let mut nodes: Vec<Daemon> = (2..=hosts).map(|i| node(net.host(i), &key, &[])).collect();
    nodes.insert(0, node(local, &key, &[]));
    wait_peers(local, hosts - 1);
    let n = m.pick(20, 1000);
    let counts = |nodes: &[Daemon]| -> Vec<(f64, f64)> {
        nodes.iter().map(|d| udp_counts(d.pid())).collect()
    };
    let before = counts(&nodes);
    let lat = miss_latencies(local, n);
    let after = counts(&nodes);
    let queries = (n + 5) as f64;
    let delta = |f: fn(&(f64, f64)) -> f64, which: std::ops::Range<usize>| -> f64 {
        which.map(|i| f(&after[i]) - f(&before[i])).sum::<f64>() / queries
    };
    let sent_all = delta(|c| c.1, 0..hosts);
    let recv_all = delta(|c| c.0, 0..hosts);
    let sent_local = delta(|c| c.1, 0..1);
    let recv_local = delta(|c| c.0, 0..1);
    let label = format!("{hosts} hosts");
    vec![
        Row::new(
            "lan20_miss_p50_ms",
            &format!("narinfo miss, {label} (19 peers of ours): p50"),
            "ms",
            lat.clone(),
        )
        .target(Target::AtMost(5.0)),
        Row::new(
            "lan20_miss_p99_ms",
            &format!("narinfo miss, {label}: p99"),
            "ms",
            lat,
        )
        .stat(Stat::P99),
        Row::new(
            "lan20_udp_sent_per_query",
            &format!("UDP datagrams sent per query, all {label}"),
            "",
            vec![sent_all],
        )
        .note("a v2 and a v1 query, one answer per peer, the wake-up datagram; hellos in the window too"),
        Row::new(
            "lan20_udp_received_per_query",
            &format!("UDP datagrams received per query, all {label}"),
            "",
            vec![recv_all],
        ),
        Row::new(
            "lan20_udp_local_per_query",
            "UDP datagrams per query at the asking node (sent + received)",
            "",
            vec![sent_local + recv_local],
        ),
    ]
}

/// UDP InDatagrams and OutDatagrams of the network namespace of `pid`.
fn udp_counts(pid: u32) -> (f64, f64) {
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

// ---------------------------------------------------------------------------
// The load client, run inside a test host

/// `bench --client http ADDR PATHS_FILE THREADS`: GETs each path of the file
/// from `ADDR` over `THREADS` keep-alive connections, all opened before the
/// first request. Prints one line per path, in order: `i status ttfb_us
/// total_us bytes`, or `i ERR total_us message`.
///
/// `bench --client udp ADDR COUNT WINDOW`: sends COUNT v2 queries for random
/// hashes to a node. WINDOW 1: one at a time, printing each round trip in
/// µs (`lost` when none came within 1 s). Otherwise up to WINDOW queries in
/// flight; prints `sent N answered M seconds S`.
mod client {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream, UdpSocket};
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Barrier, Mutex};
    use std::time::{Duration, Instant};

    pub fn main(args: &[String]) -> ExitCode {
        let result = match args.first().map(String::as_str) {
            Some("http") if args.len() == 4 => http(&args[1], &args[2], &args[3]),
            Some("udp") if args.len() == 4 => udp(&args[1], &args[2], &args[3]),
            Some("time") if args.len() == 2 => time(&args[1]),
            _ => Err(
                "usage: --client http ADDR FILE THREADS | udp ADDR COUNT WINDOW | time SCRIPT"
                    .into(),
            ),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("client: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// A small xorshift generator: random hashes and node ids.
    pub struct Rng(u64);

    impl Rng {
        pub fn new() -> Rng {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            Rng(t ^ (u64::from(std::process::id()) << 32) | 1)
        }
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// 32 random nix32 characters: a hash part.
        pub fn hash(&mut self) -> String {
            const ABC: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
            (0..32)
                .map(|_| ABC[(self.next() >> 40) as usize % 32] as char)
                .collect()
        }
    }

    fn http(addr: &str, file: &str, threads: &str) -> Result<(), String> {
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let paths: Vec<&str> = text.lines().collect();
        let threads: usize = threads.parse().map_err(|_| "THREADS is a number")?;
        let next = AtomicUsize::new(0);
        let barrier = Barrier::new(threads);
        let results = Mutex::new(vec![String::new(); paths.len()]);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut conn = Conn {
                        addr,
                        stream: None,
                        buf: vec![0; 1 << 16],
                    };
                    let _ = conn.connect();
                    barrier.wait();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(path) = paths.get(i) else { break };
                        let start = Instant::now();
                        let line = match conn.get(path) {
                            Ok(r) => format!("{i} {} {} {} {}", r.0, r.1, r.2, r.3),
                            Err(e) => format!("{i} ERR {} {e}", start.elapsed().as_micros()),
                        };
                        results.lock().unwrap()[i] = line;
                    }
                });
            }
        });
        for line in results.into_inner().unwrap() {
            println!("{line}");
        }
        Ok(())
    }

    /// One keep-alive HTTP/1.1 connection.
    struct Conn {
        addr: SocketAddr,
        stream: Option<TcpStream>,
        buf: Vec<u8>,
    }

    impl Conn {
        fn connect(&mut self) -> Result<(), String> {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(60))).ok();
            s.set_write_timeout(Some(Duration::from_secs(60))).ok();
            s.set_nodelay(true).ok();
            self.stream = Some(s);
            Ok(())
        }

        /// GETs `path`: (status, ttfb µs, total µs, body bytes). Retries once
        /// on a fresh connection when a kept-alive one was closed meanwhile.
        fn get(&mut self, path: &str) -> Result<(u16, u128, u128, u64), String> {
            let reused = self.stream.is_some();
            match self.try_get(path) {
                Err((false, _)) if reused => {
                    self.stream = None;
                    self.try_get(path).map_err(|e| e.1)
                }
                r => r.map_err(|e| e.1),
            }
        }

        /// Errors say whether any byte of the response came.
        fn try_get(&mut self, path: &str) -> Result<(u16, u128, u128, u64), (bool, String)> {
            let start = Instant::now();
            if self.stream.is_none() {
                self.connect().map_err(|e| (true, e))?;
            }
            let stream = self.stream.as_mut().unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
            stream
                .write_all(request.as_bytes())
                .map_err(|e| (false, format!("write: {e}")))?;
            let mut head: Vec<u8> = Vec::new();
            let mut ttfb = None;
            let end = loop {
                let n = stream
                    .read(&mut self.buf)
                    .map_err(|e| (!head.is_empty(), format!("read: {e}")))?;
                if n == 0 {
                    return Err((!head.is_empty(), "closed before the headers".into()));
                }
                ttfb.get_or_insert_with(|| start.elapsed().as_micros());
                head.extend_from_slice(&self.buf[..n]);
                if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                if head.len() > 1 << 16 {
                    return Err((true, "headers too long".into()));
                }
            };
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            let status: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or((true, "no status".to_string()))?;
            let header = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            };
            let close = header("connection").is_some_and(|v| v == "close");
            let mut got = (head.len() - end) as u64;
            match header("content-length").and_then(|v| v.parse::<u64>().ok()) {
                Some(len) => {
                    while got < len {
                        let n = stream
                            .read(&mut self.buf)
                            .map_err(|e| (true, format!("body: {e}")))?;
                        if n == 0 {
                            return Err((true, format!("short body: {got} of {len}")));
                        }
                        got += n as u64;
                    }
                    if got > len {
                        return Err((true, "more bytes than Content-Length".into()));
                    }
                }
                None if header("transfer-encoding").is_some() => {
                    return Err((true, "chunked replies are not expected".into()))
                }
                None => loop {
                    let n = stream
                        .read(&mut self.buf)
                        .map_err(|e| (true, format!("body: {e}")))?;
                    if n == 0 {
                        self.stream = None;
                        break;
                    }
                    got += n as u64;
                },
            }
            let total = start.elapsed().as_micros();
            if close {
                self.stream = None;
            }
            Ok((status, ttfb.unwrap_or(total), total, got))
        }
    }

    /// Runs `bash -c SCRIPT` (with pipefail, stdout discarded) and prints
    /// its wall and CPU seconds (user + system of it and its children).
    fn time(script: &str) -> Result<(), String> {
        let start = Instant::now();
        let out = std::process::Command::new("bash")
            .args(["-c", &format!("set -o pipefail; {script}")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| format!("bash: {e}"))?;
        let real = start.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!(
                "`{script}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // SAFETY: getrusage writes into the struct it is given.
        let usage = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
            u
        };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        println!(
            "{real:.6} {:.6}",
            secs(usage.ru_utime) + secs(usage.ru_stime)
        );
        Ok(())
    }

    /// A v2 query datagram (see src/discovery/wire.rs).
    fn query(node: u64, id: u32, hash: &str) -> Vec<u8> {
        let mut d = Vec::with_capacity(48);
        d.extend_from_slice(b"PX");
        d.extend_from_slice(&[2, 1]);
        d.extend_from_slice(&node.to_be_bytes());
        d.extend_from_slice(&id.to_be_bytes());
        d.extend_from_slice(hash.as_bytes());
        d
    }

    /// The request id of a v2 answer (have or not here).
    fn answer_id(d: &[u8]) -> Option<u32> {
        (d.len() >= 48 && &d[..3] == b"PX\x02" && matches!(d[3], 2 | 3))
            .then(|| u32::from_be_bytes(d[12..16].try_into().unwrap()))
    }

    fn udp(addr: &str, count: &str, window: &str) -> Result<(), String> {
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let count: u32 = count.parse().map_err(|_| "COUNT is a number")?;
        let window: u32 = window.parse().map_err(|_| "WINDOW is a number")?;
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        socket.connect(addr).map_err(|e| e.to_string())?;
        let mut rng = Rng::new();
        let node = rng.next();
        let hashes: Vec<String> = (0..count.min(4096)).map(|_| rng.hash()).collect();
        let hash = |i: u32| &hashes[i as usize % hashes.len()];
        let mut buf = [0u8; 2048];
        if window <= 1 {
            socket.set_read_timeout(Some(Duration::from_secs(1))).ok();
            for id in 0..count {
                let start = Instant::now();
                socket
                    .send(&query(node, id, hash(id)))
                    .map_err(|e| e.to_string())?;
                loop {
                    match socket.recv(&mut buf) {
                        Ok(n) if answer_id(&buf[..n]) == Some(id) => {
                            println!("{:.1}", start.elapsed().as_secs_f64() * 1e6);
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            println!("lost");
                            break;
                        }
                    }
                }
            }
            return Ok(());
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .ok();
        let deadline = Instant::now() + Duration::from_secs(120);
        let start = Instant::now();
        let (mut sent, mut answered, mut in_flight) = (0u32, 0u32, 0u32);
        let mut last = Duration::ZERO;
        while (sent < count || in_flight > 0) && Instant::now() < deadline {
            while sent < count && in_flight < window {
                socket
                    .send(&query(node, sent, hash(sent)))
                    .map_err(|e| e.to_string())?;
                sent += 1;
                in_flight += 1;
            }
            match socket.recv(&mut buf) {
                Ok(n) if answer_id(&buf[..n]).is_some() => {
                    answered += 1;
                    in_flight -= 1;
                    last = start.elapsed();
                }
                Ok(_) => {}
                Err(_) => in_flight = 0, // the rest are lost
            }
        }
        let secs = last.as_secs_f64();
        println!("sent {sent} answered {answered} seconds {secs:.6}");
        Ok(())
    }
}
