//! The Peerix benchmark (`integration/bench`, issues 5, 11 and 12): what a
//! cache costs a nixos-rebuild when peers do not have a path (beside nodes
//! of ours and beside original Peerix nodes), how fast it moves a NAR and a
//! whole closure when they do (beside harmonia, the fastest single-machine
//! binary cache, and a plain file server), and what it costs a small
//! machine to run (CPU per NAR, memory with its Nix children, the upkeep of
//! the store index).
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
//! SECTION[,SECTION…]` (misses, v1, nar, load, index, upkeep, closure,
//! realistic, lan20), `--out FILE` (where the JSON goes in full mode).

mod support;

use std::fmt::Write as _;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    build_chain, generate_key, nix_build, output_within, wait_until, Daemon, Host, Key, Net,
};

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
    ("v1", v1),
    ("nar", nar),
    ("load", load),
    ("index", index),
    ("upkeep", upkeep),
    ("closure", closure),
    ("realistic", realistic),
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
    /// value ≥ this (in the row's unit)
    AtLeast(f64),
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
            Target::AtLeast(t) => Some(v >= t),
            Target::TimesBaseline(k) => b.map(|b| v <= k * b),
            Target::AtLeastTimesBaseline(k) => b.map(|b| v >= k * b),
            Target::BaselinePlus(d) => b.map(|b| v <= b + d),
        }
    }
    fn target_text(&self) -> String {
        match self.target {
            Target::None => "—".into(),
            Target::AtMost(t) => format!("≤ {} {}", num(t), self.unit),
            Target::AtLeast(t) => format!("≥ {} {}", num(t), self.unit),
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
/// log level (`info`: debug logging would cost a line per request). With
/// `PEERIX_BENCH_LOGS=DIR` in the environment (for profiling, not for
/// numbers) nodes log at `debug` and their logs are kept in DIR.
fn node(host: &Host, key: &Key, extra: &[&str]) -> Node {
    let mut args = vec![
        "--private-key",
        key.secret.to_str().unwrap(),
        "--trusted-key",
        &key.public,
    ];
    args.extend(extra);
    let keep = std::env::var_os("PEERIX_BENCH_LOGS").map(PathBuf::from);
    let level = if keep.is_some() { "debug" } else { "info" };
    let daemon = host.spawn_peerix_with(&[], &[("RUST_LOG", level)], &args);
    let keep = keep.map(|dir| dir.join(format!("{}-{}-peerix.log", next_id(), host.name)));
    Node { daemon, keep }
}

/// A node started by [`node`]: a [`Daemon`] whose log is kept when asked.
struct Node {
    daemon: Daemon,
    keep: Option<PathBuf>,
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

/// The processes below `pid`: its children, theirs, and so on.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (child, _) in support::child_processes(p) {
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
fn process_cpu_secs(pid: u32) -> Option<f64> {
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

/// CPU seconds of a node and of every process below it (its Nix
/// children): each live process's own time and that of the children it
/// reaped, so a child that ended is counted once, in its parent's.
fn tree_cpu_secs(pid: u32) -> f64 {
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
fn pss_mib(pid: u32) -> Option<f64> {
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
struct TreeMem {
    node: f64,
    tree: f64,
    children: usize,
}

fn tree_mem(pid: u32) -> TreeMem {
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

/// Adds `n` small files (`bytes` each, all different) to `host`'s store
/// with one `nix-store --add`: paths without references, none in another's
/// closure. Their store paths.
fn small_paths(host: &Host, tag: &str, n: usize, bytes: usize) -> Vec<String> {
    let dir = host.dir.join(format!("small-{tag}"));
    fs::create_dir_all(&dir).expect("make a directory for small files");
    let mut rng = client::Rng::new();
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
fn narinfo_urls(paths: &[String]) -> Vec<String> {
    paths
        .iter()
        .map(|p| format!("/{}.narinfo", hash_of(p)))
        .collect()
}

/// The local node's NAR URL of each path (`/nar/<NarHash>-<hash>.nar`, as
/// its narinfo names it for Nix), from the NAR hashes `host` recorded.
fn nar_urls(host: &Host, paths: &[String]) -> Vec<String> {
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

    let mut peers: Vec<Node> = (2..=3).map(|i| node(net.host(i), &key, &[])).collect();
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

/// The original Peerix stand-in, `integration/v1_peer.py`, serving `cache`
/// on `host`, answering each request `delay_ms` late.
fn v1_peer(host: &Host, cache: &std::path::Path, delay_ms: u32) -> Daemon {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/v1_peer.py");
    let delay = delay_ms.to_string();
    let cmd = host.cmd(
        "/usr/bin/python3",
        &[
            script,
            "serve",
            cache.to_str().unwrap(),
            "12304",
            "--delay",
            &delay,
        ],
    );
    let peer = host.spawn_daemon(cmd, "v1-peer");
    let ready = wait_until(Duration::from_secs(10), || {
        peer.log().contains("v1 peer serving")
    });
    assert!(ready, "the v1 peer did not start:\n{}", peer.log());
    peer
}

/// `n` small paths of `host`'s own, signed by `key`, in a `nix copy --to
/// file://` cache for a v1 peer: the cache and the paths.
fn v1_cache(host: &Host, key: &Key, tag: &str, n: usize) -> (PathBuf, Vec<String>) {
    let paths = small_paths(host, tag, n, 200);
    let list = host.dir.join(format!("{tag}.txt"));
    fs::write(&list, paths.join("\n")).expect("write the paths file");
    host.run(&format!(
        "xargs nix store sign --key-file {} < {}",
        key.secret.display(),
        list.display()
    ));
    let cache = host.dir.join(format!("v1-cache-{tag}"));
    host.run(&format!(
        "xargs nix copy --to 'file://{}?compression=none' < {}",
        cache.display(),
        list.display()
    ));
    (cache, paths)
}

/// Issue 12: misses beside an original Peerix node (which is silent on a
/// miss), once the local node has learnt from its hits how fast it
/// answers; and no hit lost from one that answers in 200 ms. Nodes of
/// ours on h2 and h3, the v1 test peer on h4 (answering after 5 ms), then
/// on h5 (after 200 ms) with a new local node; `--timeout` is the default.
fn v1(m: Mode) -> Vec<Row> {
    let net = Net::new(5).expect("test hosts");
    let local = net.host(1);
    let key = generate_key(local, "bench-1");
    let timeout = DEFAULT_TIMEOUT_MS;
    // The daemon trusts a v1 peer's pace after this many of its hits.
    let learning = 5;
    let (fast_host, slow_host) = (net.host(4), net.host(5));
    let (fast_cache, fast_paths) = v1_cache(fast_host, &key, "fast", learning + m.pick(3, 27));
    let (slow_cache, slow_paths) = v1_cache(slow_host, &key, "slow", learning + m.pick(5, 40));
    let _ours: Vec<Node> = (2..=3).map(|i| node(net.host(i), &key, &[])).collect();

    // A v1 peer answering after 5 ms. Nothing tells of it before it
    // answers a query: its first hit comes after the nodes of ours said
    // "not here", and is learnt from (the query is kept for the whole
    // timeout) but lost to the request. Until it has answered `learning`
    // hits a miss waits the whole timeout.
    let fast = v1_peer(fast_host, &fast_cache, 5);
    let mut this = node(local, &key, &[]);
    wait_peers(local, 2);
    let hits = narinfo_urls(&fast_paths);
    let first_fast = http_load(local, &hits[..1], 1)[0].status == 200;
    thread::sleep(Duration::from_millis(timeout as u64));
    let unlearnt: Vec<f64> = http_load(local, &absent_narinfo(m.pick(2, 5)), 1)
        .iter()
        .map(|s| {
            assert_eq!(s.status, 404, "a miss: {s:?}");
            s.total_ms
        })
        .collect();
    let fast_hits: Vec<f64> = http_load(local, &hits[1..], 1)
        .iter()
        .map(|s| {
            assert_eq!(s.status, 200, "a hit of the v1 peer: {s:?}");
            s.total_ms
        })
        .collect();
    let learnt: Vec<f64> = http_load(local, &absent_narinfo(m.pick(20, 300)), 1)
        .iter()
        .map(|s| {
            assert_eq!(s.status, 404, "a miss: {s:?}");
            s.total_ms
        })
        .collect();
    // What the node learnt: its `/status` line for the v1 peer.
    let status = local.curl(&[&format!("http://{LOCAL}/status")]).text();
    let learnt_note = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("v1 "))
        .and_then(|l| l.split_once(", ").map(|(_, r)| r.to_string()))
        .unwrap_or_default();
    drop(fast);
    this.kill();

    // A v1 peer answering after 200 ms, to a new local node: every hit
    // must be found, while the node learns its pace and after.
    let _slow = v1_peer(slow_host, &slow_cache, 200);
    let _this = node(local, &key, &[]);
    wait_peers(local, 2);
    // Its first hit alone (nothing has told of the peer before it), then
    // the rest once its late answer was learnt.
    let urls = narinfo_urls(&slow_paths);
    let mut samples = http_load(local, &urls[..1], 1);
    thread::sleep(Duration::from_millis(timeout as u64));
    samples.extend(http_load(local, &urls[1..], 1));
    let found = |s: &[Sample]| s.iter().filter(|s| s.status == 200).count();
    let (first, rest) = samples.split_at(1);
    let (while_learning, after) = rest.split_at(learning - 1);
    let slow_hits: Vec<f64> = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.total_ms)
        .collect();
    let slow_misses: Vec<f64> = http_load(local, &absent_narinfo(m.pick(2, 10)), 1)
        .iter()
        .map(|s| s.total_ms)
        .collect();

    let old = "misses before its pace is learnt: the whole --timeout, the old cost";
    vec![
        Row::new(
            "v1_miss_p50_ms",
            "narinfo miss beside a v1 peer answering hits after 5 ms, its pace learnt: p50",
            "ms",
            learnt.clone(),
        )
        .baseline(old, unlearnt.clone())
        .target(Target::AtMost(60.0))
        .note(&format!(
            "2 nodes of ours too; --timeout 500; the node learnt: {learnt_note}; it waits 4 × the slowest"
        )),
        Row::new(
            "v1_miss_p99_ms",
            "narinfo miss beside a v1 peer answering after 5 ms, its pace learnt: p99",
            "ms",
            learnt,
        )
        .stat(Stat::P99)
        .baseline(old, unlearnt),
        Row::new(
            "v1_hit_fast_ms",
            "narinfo hit from a v1 peer answering after 5 ms, via the local node",
            "ms",
            fast_hits,
        ),
        Row::new(
            "v1_slow_hits_found",
            "hits found from a v1 peer answering after 200 ms, once its pace is learnt (fraction)",
            "",
            vec![found(after) as f64 / after.len() as f64],
        )
        .target(Target::AtLeast(1.0))
        .note(&format!(
            "{} of {} after learning; {} of {} while learning",
            found(after),
            after.len(),
            found(while_learning),
            while_learning.len()
        )),
        Row::new(
            "v1_first_hit_found",
            "the very first hit of a v1 peer never heard before, found (1) or lost (0)",
            "",
            vec![found(first) as f64],
        )
        .target(Target::AtLeast(1.0))
        .note(&format!(
            "after 200 ms; the same for the 5 ms peer: {}",
            if first_fast { "found" } else { "lost" }
        )),
        Row::new(
            "v1_hit_slow_ms",
            "narinfo hit from a v1 peer answering after 200 ms, via the local node",
            "ms",
            slow_hits,
        ),
        Row::new(
            "v1_slow_miss_ms",
            "narinfo miss beside a v1 peer answering after 200 ms (4 × 200 ms is beyond the timeout)",
            "ms",
            slow_misses,
        )
        .baseline("the configured timeout", vec![timeout])
        .target(Target::BaselinePlus(5.0)),
    ]
}

/// Hit latency (the serving peer's path info cached or not), time to first
/// byte of a tiny NAR, the serving peer's CPU per tiny NAR, NAR throughput
/// and CPU per GiB: peer h1 → local node h2 → load client in h2.
fn nar(m: Mode) -> Vec<Row> {
    let net = Net::new(2).expect("test hosts");
    let (peer, local) = (net.host(1), net.host(2));
    let key = generate_key(peer, "bench-1");
    let chain = build_chain(peer, "hit", m.pick(5, 60));
    // Paths without references, none in another's closure: the peer's
    // fetching ahead of a closure never caches the next one's info.
    let warmup = 2;
    let fresh = small_paths(peer, "fresh", m.pick(12, 200) + warmup, 100);
    let tinies = small_paths(peer, "tinycpu", m.pick(50, 300), 100);
    let tiny = random_path(peer, "tiny.bin", 100);
    let big_size = m.pick(8, 256) as f64 * MIB;
    let big = random_path(peer, "big.bin", big_size as u64);
    let peer_node = node(peer, &key, &[]);
    let local_node = node(local, &key, &[]);
    wait_peers(local, 1);
    let mut rows = Vec::new();

    // Hits whose path info the peer has not cached: a fresh path each
    // time; the local node asks the peer, the peer asks its `nix-store
    // --serve` (started when the node indexed its store). The first two
    // open the connections.
    let samples = http_load(local, &narinfo_urls(&fresh), 1);
    for s in &samples {
        assert_eq!(s.status, 200, "a hit answered {s:?}");
    }
    let uncached: Vec<f64> = samples[warmup..].iter().map(|s| s.total_ms).collect();
    let dump_db: Vec<f64> = (0..m.pick(2, 15))
        .map(|i| {
            let p = &fresh[i % fresh.len()];
            timed_in(peer, &format!("nix-store --dump-db {p}")).real * 1000.0
        })
        .collect();
    rows.push(
        Row::new(
            "hit_uncached_p50_ms",
            "narinfo hit via the local node, peer's path info not cached (a fresh path each time): p50",
            "ms",
            uncached.clone(),
        )
        .baseline("one `nix-store --dump-db PATH`", dump_db.clone())
        .target(Target::AtMost(3.0)),
    );
    rows.push(
        Row::new(
            "hit_uncached_p99_ms",
            "narinfo hit, peer's path info not cached: p99",
            "ms",
            uncached,
        )
        .stat(Stat::P99),
    );

    // Hits whose path info the peer has cached: every path of a chain
    // asked several times (the first request of the top path makes the
    // peer fetch the infos of its whole closure ahead).
    let repeat = m.pick(2, 6);
    let paths: Vec<String> = chain
        .iter()
        .flat_map(|p| vec![format!("/{}.narinfo", hash_of(p)); repeat])
        .collect();
    let samples = http_load(local, &paths, 1);
    let mut warm = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s.status, 200, "a hit answered {s:?}");
        if i % repeat != 0 {
            warm.push(s.total_ms);
        }
    }
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

    // Time to first byte of a tiny NAR (after its narinfo, as Nix does,
    // at the URL the narinfo names).
    let n = m.pick(3, 30);
    let tiny_nar = nar_urls(peer, std::slice::from_ref(&tiny)).remove(0);
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

    // CPU of the serving peer (the daemon and its Nix children) per tiny
    // NAR: the narinfo of each path first, as Nix asks, then the NARs,
    // each once, measured apart; against one `nix-store --dump` per NAR.
    let count = tinies.len() as f64;
    let urls = nar_urls(peer, &tinies);
    let settle = || thread::sleep(Duration::from_millis(300));
    settle();
    let before_infos = tree_cpu_secs(peer_node.pid());
    for s in http_load(local, &narinfo_urls(&tinies), 1) {
        assert_eq!(s.status, 200, "a tiny path's narinfo: {s:?}");
    }
    settle();
    let before_nars = tree_cpu_secs(peer_node.pid());
    for s in http_load(local, &urls, 1) {
        assert_eq!(s.status, 200, "a tiny NAR: {s:?}");
    }
    settle();
    let after = tree_cpu_secs(peer_node.pid());
    let per_nar = (after - before_nars) * 1000.0 / count;
    let per_path = (after - before_infos) * 1000.0 / count;
    let list = peer.dir.join("tinies.txt");
    let base_count = tinies.len().min(100);
    fs::write(&list, tinies[..base_count].join("\n")).expect("write the paths file");
    let base = timed_in(
        peer,
        &format!(
            "while read -r p; do nix-store --dump \"$p\"; done < {}",
            list.display()
        ),
    );
    let base_per_nar = base.cpu * 1000.0 / base_count as f64;
    let what = format!("{} tiny NARs", tinies.len());
    rows.push(
        Row::new(
            "peer_cpu_per_tiny_nar_ms",
            "CPU of the serving peer (daemon + its Nix children) per tiny NAR",
            "ms",
            vec![per_nar],
        )
        .baseline(
            "one `nix-store --dump` per NAR, its CPU",
            vec![base_per_nar],
        )
        .target(Target::AtMost(2.0))
        .note(&what),
    );
    rows.push(
        Row::new(
            "peer_cpu_per_tiny_path_ms",
            "CPU of the serving peer per tiny path, narinfo (path info not cached) and NAR",
            "ms",
            vec![per_path],
        )
        .baseline(
            "one `nix-store --dump` per NAR, its CPU",
            vec![base_per_nar],
        )
        .note(&what),
    );

    // Throughput and CPU of the big path, alternating with the baseline.
    let big_nar = nar_urls(peer, std::slice::from_ref(&big)).remove(0);
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
        let before: f64 = pids.iter().map(|&p| tree_cpu_secs(p)).sum();
        let s = &http_load(local, std::slice::from_ref(&big_nar), 1)[0];
        assert_eq!((s.status, s.bytes as f64), (200, nar_size), "{s:?}");
        // The serve child goes back to the pool once the stream is done.
        thread::sleep(Duration::from_millis(300));
        let after: f64 = pids.iter().map(|&p| tree_cpu_secs(p)).sum();
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
        .target(Target::AtLeastTimesBaseline(0.95))
        .note(&size_note),
    );
    rows.push(
        Row::new(
            "cpu_s_per_gib",
            "CPU per GiB served (peer + local node, with their Nix children)",
            "s/GiB",
            cpu,
        )
        .baseline("CPU of the baseline pipe", base_cpu)
        .target(Target::TimesBaseline(1.2)),
    );
    rows
}

/// 16 NAR downloads and 200 narinfo requests at once (hits and misses):
/// errors and the slowest answers; the memory (PSS) of both nodes with
/// and without their Nix children, idle and during the run; then how long
/// the children take to end once the nodes are idle.
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
    let mid_nar = nar_urls(peer, std::slice::from_ref(&mid)).remove(0);
    let peer_node = node(peer, &key, &[]);
    let local_node = node(local, &key, &[]);
    let pids = [local_node.pid(), peer_node.pid()];
    wait_peers(local, 1);
    thread::sleep(Duration::from_secs(1));
    let started = pids.map(tree_mem);

    let mut rows = Vec::new();
    let (mut errors, mut narinfo_max, mut ttfb_max, mut nar_total) =
        (vec![], vec![], vec![], vec![]);
    let (nars, infos) = (m.pick(16, 16), m.pick(200, 200));
    let mut during = [TreeMem::default(); 2];
    for _ in 0..m.pick(1, 3) {
        // The narinfo of the NAR first, as Nix asks: the local node then
        // knows where the NAR is.
        let info = http_load(local, &[format!("/{}.narinfo", hash_of(&mid))], 1);
        assert_eq!(info[0].status, 200, "{:?}", info[0]);
        let mut paths: Vec<String> = (0..nars).map(|_| mid_nar.clone()).collect();
        let absent = absent_narinfo(infos / 2);
        for i in 0..infos {
            paths.push(if i % 2 == 0 {
                format!("/{}.narinfo", hash_of(&chain[(i / 2) % chain.len()]))
            } else {
                absent[i / 2].clone()
            });
        }
        let (samples, peaks) = sampling_memory(&pids, || http_load(local, &paths, paths.len()));
        for (d, p) in during.iter_mut().zip(peaks) {
            d.node = d.node.max(p.node);
            d.tree = d.tree.max(p.tree);
            d.children = d.children.max(p.children);
        }
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

    // Idle again: the Nix children end 30 s after their last use.
    let children_after: usize = pids.iter().map(|&p| descendants(p).len()).sum();
    let idle_since = Instant::now();
    let limit = Duration::from_secs(m.pick(60, 90));
    wait_until(limit, || pids.iter().all(|&p| descendants(p).is_empty()));
    let gone_after = idle_since.elapsed().as_secs_f64();
    let left: usize = pids.iter().map(|&p| descendants(p).len()).sum();
    thread::sleep(Duration::from_millis(500));
    let idle = pids.map(tree_mem);

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
    let children = |n: usize| format!("{n} Nix children");
    for (i, who) in [(0, "local node"), (1, "peer node")] {
        let key = ["local", "peer"][i];
        rows.push(
            Row::new(
                &format!("pss_idle_{key}_mib"),
                &format!("{who} PSS, idle (its Nix children ended)"),
                "MiB",
                vec![idle[i].node],
            )
            .target(Target::AtMost(8.0)),
        );
        rows.push(
            Row::new(
                &format!("pss_start_{key}_tree_mib"),
                &format!(
                    "{who} + its Nix children PSS, just started (peers known, no request yet)"
                ),
                "MiB",
                vec![started[i].tree],
            )
            .note(&format!(
                "node alone {} MiB; {}",
                num(started[i].node),
                children(started[i].children)
            )),
        );
        rows.push(Row::new(
            &format!("pss_load_{key}_mib"),
            &format!("{who} PSS, highest during the concurrent runs"),
            "MiB",
            vec![during[i].node],
        ));
        rows.push(
            Row::new(
                &format!("pss_load_{key}_tree_mib"),
                &format!("{who} + its Nix children PSS, highest during the concurrent runs"),
                "MiB",
                vec![during[i].tree],
            )
            .note(&format!("up to {}", children(during[i].children))),
        );
    }
    rows.push(
        Row::new(
            "idle_children_left",
            "Nix children of both nodes left once idle",
            "",
            vec![left as f64],
        )
        .target(Target::AtMost(0.0))
        .note(&format!(
            "{} right after the concurrent runs",
            children(children_after)
        )),
    );
    rows.push(
        Row::new(
            "idle_children_gone_s",
            "time from the end of the concurrent runs until both nodes had no Nix child",
            "s",
            vec![gone_after],
        )
        .note("serve children end 30 s after their last use"),
    );
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

/// Runs `f` while sampling the memory of the nodes `pids` (with their Nix
/// children) every 100 ms; its result and the highest of each.
fn sampling_memory<T>(pids: &[u32; 2], f: impl FnOnce() -> T) -> (T, [TreeMem; 2]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peaks = [TreeMem::default(); 2];
            loop {
                for (peak, &pid) in peaks.iter_mut().zip(pids) {
                    let now = tree_mem(pid);
                    peak.node = peak.node.max(now.node);
                    peak.tree = peak.tree.max(now.tree);
                    peak.children = peak.children.max(now.children);
                }
                if done.load(Ordering::SeqCst) {
                    return peaks;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        let result = f();
        done.store(true, Ordering::SeqCst);
        (result, sampler.join().expect("the memory sampler"))
    })
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

/// The upkeep of the store index: the CPU of a node (with its Nix
/// children) while 1,000 paths are added to its store, for a store of N
/// paths and one of 10 × N. The paths are made as in `index` (empty
/// directories on a tmpfs registered with `nix-store --register-validity`),
/// in 10 batches of 100, as builds and substitutions add them; the node
/// sees each entry appear (inotify) and asks its `nix-store --serve` which
/// are valid once Nix's database changes.
fn upkeep(m: Mode) -> Vec<Row> {
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
    let mut rng = client::Rng::new();
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

/// Seconds Nix 2.8's `nix-store -r top` took on `client` from the binary
/// cache at `url` (trusting `key`), its store garbage-collected before and
/// its narinfo cache new (named by `tag`); checks that the `count` paths of
/// the closure arrived.
fn substitute_timed(
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
fn file_server(peer: &Host, top: &str) -> (Daemon, String) {
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
fn wait_answers(client: &Host, url: &str, what: &str) {
    let info_url = format!("{url}/nix-cache-info");
    assert!(
        wait_until(Duration::from_secs(10), || client
            .curl(&["-f", &info_url])
            .status
            == 200),
        "{what} on the peer does not answer"
    );
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
fn realistic(m: Mode) -> Vec<Row> {
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

/// 20 hosts, all running a node: miss latency and UDP datagrams per query.
fn lan20(m: Mode) -> Vec<Row> {
    let hosts = 20;
    let net = Net::new(hosts).expect("test hosts");
    let local = net.host(1);
    let key = generate_key(local, "bench-1");
    let mut nodes: Vec<Node> = (2..=hosts).map(|i| node(net.host(i), &key, &[])).collect();
    nodes.insert(0, node(local, &key, &[]));
    wait_peers(local, hosts - 1);
    let n = m.pick(20, 1000);
    let counts =
        |nodes: &[Node]| -> Vec<(f64, f64)> { nodes.iter().map(|d| udp_counts(d.pid())).collect() };
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
