//! Counters of a running node, rendered in the Prometheus text format on
//! `/metrics`: requests by route and status, narinfo hits and misses with
//! the time discovery took, NAR bytes served from the store and fetched from
//! peers, NAR replies aborted by their clients. Counters only ever grow; they are plain atomics and one small map.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the discovery latency histogram.
const BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Discovery latency: count per bucket (the last one is +Inf), and the
    /// sum in microseconds.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    nar_bytes_store: AtomicU64,
    nar_bytes_peers: AtomicU64,
    nar_aborted: AtomicU64,
}

/// Where the bytes of a NAR reply come from.
#[derive(Clone, Copy, Debug)]
pub enum NarSource {
    /// This node's store, served to a peer.
    Store,
    /// A peer, passed on to the local Nix.
    Peer,
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((route, status)).or_default() += 1;
        }
    }

    /// A narinfo request of the local Nix, answered after `took`.
    pub fn lookup(&self, hit: bool, took: Duration) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn nar_bytes(&self, source: NarSource, bytes: u64) {
        let counter = match source {
            NarSource::Store => &self.nar_bytes_store,
            NarSource::Peer => &self.nar_bytes_peers,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A NAR reply whose client went away (or stopped reading) before its
    /// end.
    pub fn nar_aborted(&self) {
        self.nar_aborted.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the number of known peers and
    /// of valid store paths.
    pub fn render(&self, peers: usize, store_paths: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(
                out,
                "# HELP peerix_{name} {help}\n# TYPE peerix_{name} {kind}"
            );
        };
        head(
            &mut out,
            "http_requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        let requests = self.requests.lock().map(|r| r.clone()).unwrap_or_default();
        for ((route, status), n) in requests {
            let _ = writeln!(
                out,
                "peerix_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        for (name, kind, help, value) in [
            (
                "narinfo_hits_total",
                "counter",
                "Narinfo requests of the local Nix found on a peer.",
                get(&self.hits),
            ),
            (
                "narinfo_misses_total",
                "counter",
                "Narinfo requests of the local Nix that no peer answered.",
                get(&self.misses),
            ),
            (
                "nar_aborted_total",
                "counter",
                "NAR replies whose client went away or stopped reading before the end.",
                get(&self.nar_aborted),
            ),
            ("peers", "gauge", "Peers heard from lately.", peers as u64),
            (
                "store_paths",
                "gauge",
                "Valid paths in the local store.",
                store_paths as u64,
            ),
        ] {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "peerix_{name} {value}");
        }
        head(
            &mut out,
            "nar_bytes_total",
            "counter",
            "NAR bytes sent, by where they came from.",
        );
        let _ = writeln!(
            out,
            "peerix_nar_bytes_total{{source=\"store\"}} {}\npeerix_nar_bytes_total{{source=\"peers\"}} {}",
            get(&self.nar_bytes_store),
            get(&self.nar_bytes_peers)
        );
        head(
            &mut out,
            "discovery_seconds",
            "histogram",
            "Time to answer a narinfo request of the local Nix.",
        );
        let mut cumulative = 0;
        for (i, count) in self.latency.iter().enumerate() {
            cumulative += get(count);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "peerix_discovery_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "peerix_discovery_seconds_sum {}\npeerix_discovery_seconds_count {cumulative}",
            get(&self.latency_sum_us) as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("narinfo", 200);
        m.request("narinfo", 200);
        m.request("nar", 404);
        m.lookup(true, Duration::from_micros(1500));
        m.lookup(false, Duration::from_secs(2));
        m.nar_bytes(NarSource::Store, 10);
        m.nar_aborted();
        let text = m.render(3, 7);
        for line in [
            "peerix_http_requests_total{route=\"narinfo\",status=\"200\"} 2",
            "peerix_http_requests_total{route=\"nar\",status=\"404\"} 1",
            "peerix_narinfo_hits_total 1",
            "peerix_narinfo_misses_total 1",
            "peerix_nar_aborted_total 1",
            "peerix_peers 3",
            "peerix_store_paths 7",
            "peerix_nar_bytes_total{source=\"store\"} 10",
            "peerix_discovery_seconds_bucket{le=\"0.001\"} 0",
            "peerix_discovery_seconds_bucket{le=\"0.002\"} 1",
            "peerix_discovery_seconds_bucket{le=\"1\"} 1",
            "peerix_discovery_seconds_bucket{le=\"+Inf\"} 2",
            "peerix_discovery_seconds_count 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with('\n'));
    }
}
