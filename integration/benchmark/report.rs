//! The report: rows of samples, what each is held to, the Markdown table
//! and the JSON copy, and the machine they were measured on.

use std::fmt::Write as _;
use std::fs;
use std::thread;
use std::time::Duration;

use crate::harness::Mode;

/// How a row's samples become its value.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Stat {
    Median,
    P99,
    Max,
}

/// What a row is held to.
#[derive(Clone, Copy)]
pub(crate) enum Target {
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
pub(crate) struct Row {
    pub(crate) key: String,
    pub(crate) measure: String,
    pub(crate) unit: &'static str,
    pub(crate) stat: Stat,
    pub(crate) samples: Vec<f64>,
    /// What the baseline is, and its samples (summarised by their median).
    pub(crate) baseline: Option<(String, Vec<f64>)>,
    pub(crate) target: Target,
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn new(key: &str, measure: &str, unit: &'static str, samples: Vec<f64>) -> Row {
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
    pub(crate) fn stat(mut self, stat: Stat) -> Row {
        self.stat = stat;
        self
    }
    pub(crate) fn baseline(mut self, what: &str, samples: Vec<f64>) -> Row {
        self.baseline = Some((what.into(), samples));
        self
    }
    pub(crate) fn target(mut self, target: Target) -> Row {
        self.target = target;
        self
    }
    pub(crate) fn note(mut self, note: &str) -> Row {
        self.note = note.into();
        self
    }

    pub(crate) fn value(&self) -> f64 {
        match self.stat {
            Stat::Median => percentile(&self.samples, 50.0),
            Stat::P99 => percentile(&self.samples, 99.0),
            Stat::Max => self.samples.iter().copied().fold(f64::NAN, f64::max),
        }
    }
    pub(crate) fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::min)
    }
    pub(crate) fn max(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::max)
    }
    pub(crate) fn base(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, s)| percentile(s, 50.0))
    }
    pub(crate) fn ratio(&self) -> Option<f64> {
        self.base().map(|b| self.value() / b)
    }
    pub(crate) fn met(&self) -> Option<bool> {
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
    pub(crate) fn target_text(&self) -> String {
        match self.target {
            Target::None => "—".into(),
            Target::AtMost(t) => format!("≤ {} {}", num(t), self.unit),
            Target::AtLeast(t) => format!("≥ {} {}", num(t), self.unit),
            Target::TimesBaseline(k) => format!("≤ {k} × baseline"),
            Target::AtLeastTimesBaseline(k) => format!("≥ {k} × baseline"),
            Target::BaselinePlus(d) => format!("≤ baseline + {} {}", num(d), self.unit),
        }
    }
    pub(crate) fn stat_name(&self) -> &'static str {
        match self.stat {
            Stat::Median => "median",
            Stat::P99 => "p99",
            Stat::Max => "max",
        }
    }
}

/// Nearest-rank percentile `p` of `samples` (NaN when empty).
pub(crate) fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// A number with about three significant digits.
pub(crate) fn num(x: f64) -> String {
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
pub(crate) fn table(rows: &[Row], machine: &[(String, String)]) -> String {
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
pub(crate) fn js(s: &str) -> String {
    peerix::base::json::Json::str(s).render()
}

/// A JSON number (null when not finite).
pub(crate) fn jn(x: f64) -> String {
    if x.is_finite() {
        format!("{}", (x * 1e6).round() / 1e6)
    } else {
        "null".into()
    }
}

/// The machine-readable copy of the report.
pub(crate) fn json(rows: &[Row], machine: &[(String, String)], failed: &[String]) -> String {
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
pub(crate) fn machine_info(mode: Mode, took: Duration) -> Vec<(String, String)> {
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
