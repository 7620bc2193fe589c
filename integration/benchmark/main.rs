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
//! with min–max, and a JSON copy (written to `results.json` beside this
//! file in full mode, printed in `--quick` mode). Numbers never fail the run; a
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
//! realistic, lan20, scale, sim, pull, compress, fastest, stripe), `--out FILE` (where the JSON goes in full mode).

//!
//! Layout (`integration/benchmark/`): this file reads the flags and runs the
//! sections in order; `report.rs` holds the rows, the table and the JSON;
//! `harness.rs` what the sections share (nodes, the load client's calls,
//! processes, fake stores); `client.rs` the load client itself; and each
//! section is a file of its name. A new section is a file with a
//! `pub(crate) fn NAME(m: Mode) -> Vec<Row>`, a `mod` line and a line in
//! [`SECTIONS`].

mod client;
mod harness;
mod report;
#[path = "../support/mod.rs"]
mod support;

mod closure;
mod index;
mod lan20;
mod links;
mod load;
mod misses;
mod nar;
mod pull;
mod realistic;
mod scale;
mod sim;
mod upkeep;
mod v1;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::Instant;

use harness::{is_root, Mode};
use report::{json, machine_info, table, Row};

/// Where the full run's JSON goes unless `--out` says otherwise.
const RESULTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/integration/benchmark/results.json"
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

type Section = fn(Mode) -> Vec<Row>;

/// The sections in the order they run.
const SECTIONS: &[(&str, Section)] = &[
    ("misses", misses::misses),
    ("v1", v1::v1),
    ("nar", nar::nar),
    ("load", load::load),
    ("index", index::index),
    ("upkeep", upkeep::upkeep),
    ("closure", closure::closure),
    ("realistic", realistic::realistic),
    ("lan20", lan20::lan20),
    ("scale", scale::scale),
    ("sim", sim::sim),
    ("pull", pull::pull),
    ("compress", links::compress),
    ("fastest", links::fastest),
    ("stripe", links::stripe),
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
