//! Counters of a running node, rendered in the Prometheus text format on
//! `/metrics`: requests by route and status, narinfo hits and misses with
//! the time discovery took, NAR bytes served from the store and the spool
//! and fetched from peers and upstream caches, NAR bytes per peer, NAR
//! replies aborted by their clients, the framed (compressed) streams sent
//! and received (`peer/framed.rs`), the NARs fetched from several peers at
//! once, the build and the start time. The gauges of other layers (peers,
//! store paths, streams in flight, each peer's pace) come as plain values
//! when rendered. Counters only ever grow; they are plain atomics and
//! small maps. The last hour of them, minute by minute, is kept in
//! `history.rs`; `/status.json` and the dashboard read them here.

pub mod history;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::base::bounded::Bounded;
use crate::base::version::{COMMIT, VERSION};
use history::{History, Sample};

/// Upper bounds (seconds) of the discovery latency histogram.
const BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Peers whose NAR bytes are counted, per generation of the map.
const PEERS_COUNTED: usize = 256;

pub struct Metrics {
    started: Instant,
    /// The start as a Unix time, in seconds.
    started_unix: f64,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Sources of NAR bytes passed over, by kind and reason.
    passed_over: Mutex<BTreeMap<(PassedOver, &'static str), u64>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Discovery latency: count per bucket (the last one is +Inf), and the
    /// sum in microseconds.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    nar_bytes_store: AtomicU64,
    nar_bytes_peers: AtomicU64,
    nar_bytes_upstream: AtomicU64,
    nar_bytes_peer_pull: AtomicU64,
    nar_bytes_spool: AtomicU64,
    nar_aborted: AtomicU64,
    /// NAR bytes per peer address: sent to it, received from it.
    peer_bytes: Mutex<Bounded<IpAddr, [u64; 2]>>,
    /// NARs fetched from several peers at once.
    nar_striped: AtomicU64,
    /// Framed streams sent and received.
    pub framed: Arc<Framed>,
    history: History,
}

/// The framed streams of `peer/framed.rs`, counted by their encoders (the
/// sender's side) and decoders (the receiver's).
#[derive(Debug, Default)]
pub struct Framed {
    /// NAR bytes put in framed streams.
    sent_nar: AtomicU64,
    /// Blocks sent: raw, zstd.
    sent_blocks: [AtomicU64; 2],
    /// NAR bytes of the blocks sent compressed, and their zstd bytes.
    zstd_in: AtomicU64,
    zstd_out: AtomicU64,
    /// Bytes of framed streams received (block headers included).
    received: AtomicU64,
    /// NAR bytes decoded from them.
    decoded: AtomicU64,
}

impl Framed {
    /// A block of `nar` NAR bytes was made, compressed to `zstd` bytes or
    /// (`None`) sent raw.
    pub fn sent_block(&self, nar: usize, zstd: Option<usize>) {
        self.sent_nar.fetch_add(nar as u64, Ordering::Relaxed);
        self.sent_blocks[usize::from(zstd.is_some())].fetch_add(1, Ordering::Relaxed);
        if let Some(zstd) = zstd {
            self.zstd_in.fetch_add(nar as u64, Ordering::Relaxed);
            self.zstd_out.fetch_add(zstd as u64, Ordering::Relaxed);
        }
    }

    /// `wire` bytes of a framed stream were received, and `nar` NAR bytes
    /// decoded.
    pub fn received(&self, wire: usize, nar: usize) {
        self.received.fetch_add(wire as u64, Ordering::Relaxed);
        self.decoded.fetch_add(nar as u64, Ordering::Relaxed);
    }

    /// The byte counts so far, each with its name (in the status; on
    /// `/metrics` as `peerix_compress_{name}_total`) and what it counts.
    pub fn bytes(&self) -> [(&'static str, &'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                "sent_nar_bytes",
                "NAR bytes sent to peers in framed streams, compressed or not.",
                get(&self.sent_nar),
            ),
            (
                "zstd_in_bytes",
                "NAR bytes of the blocks sent zstd-compressed.",
                get(&self.zstd_in),
            ),
            (
                "zstd_out_bytes",
                "Bytes of the zstd-compressed blocks sent (in - out: bytes saved).",
                get(&self.zstd_out),
            ),
            (
                "received_bytes",
                "Bytes of framed streams received from peers, block headers included.",
                get(&self.received),
            ),
            (
                "decoded_bytes",
                "NAR bytes decoded from framed streams received from peers.",
                get(&self.decoded),
            ),
        ]
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let started = Instant::now();
        let started_unix = (SystemTime::now().duration_since(SystemTime::UNIX_EPOCH))
            .map_or(0.0, |d| d.as_secs_f64());
        Metrics {
            started,
            started_unix,
            requests: Mutex::default(),
            passed_over: Mutex::default(),
            hits: AtomicU64::default(),
            misses: AtomicU64::default(),
            latency: Default::default(),
            latency_sum_us: AtomicU64::default(),
            nar_bytes_store: AtomicU64::default(),
            nar_bytes_peers: AtomicU64::default(),
            nar_bytes_upstream: AtomicU64::default(),
            nar_bytes_peer_pull: AtomicU64::default(),
            nar_bytes_spool: AtomicU64::default(),
            nar_aborted: AtomicU64::default(),
            peer_bytes: Mutex::new(Bounded::new(PEERS_COUNTED)),
            nar_striped: AtomicU64::default(),
            framed: Arc::default(),
            history: History::new(started),
        }
    }
}

/// The gauges `/metrics` shows, counted by other layers at the time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    /// Peers heard from lately.
    pub peers: usize,
    /// Valid paths in the local store.
    pub store_paths: usize,
    /// NAR streams from peers to the local Nix in flight.
    pub transfers: usize,
}

/// A source of NAR bytes for the local Nix that can be passed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PassedOver {
    /// A peer that serves the NAR from its store.
    Peer,
    /// A node that fetches a NAR from an upstream cache for the LAN.
    Puller,
}

impl PassedOver {
    fn label(self) -> &'static str {
        match self {
            PassedOver::Peer => "peer",
            PassedOver::Puller => "puller",
        }
    }
}

/// Which way NAR bytes went between this node and a peer.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// From this store to the peer.
    Sent = 0,
    /// From the peer to the local Nix.
    Received = 1,
}

/// Where the bytes of a NAR reply come from.
#[derive(Clone, Copy, Debug)]
pub enum NarSource {
    /// This node's store, served to a peer.
    Store,
    /// A peer, passed on to the local Nix.
    Peer,
    /// An upstream cache, fetched by this node itself (over the internet),
    /// passed on to the local Nix.
    Upstream,
    /// An upstream cache's NAR fetched for the LAN by a peer, streamed from
    /// it (over the LAN), passed on to the local Nix: an internet download
    /// saved. A stream is counted by the node it started from.
    PeerPull,
    /// This node's spool (a NAR it fetches from an upstream for the LAN),
    /// served to a peer.
    Spool,
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((route, status)).or_default() += 1;
        }
    }

    /// A narinfo request of the local Nix, answered after `took`.
    pub fn lookup(&self, hit: bool, took: Duration) {
        self.record_minute();
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
        self.record_minute();
        let counter = match source {
            NarSource::Store => &self.nar_bytes_store,
            NarSource::Peer => &self.nar_bytes_peers,
            NarSource::Upstream => &self.nar_bytes_upstream,
            NarSource::PeerPull => &self.nar_bytes_peer_pull,
            NarSource::Spool => &self.nar_bytes_spool,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A NAR reply whose client went away (or stopped reading) before its
    /// end.
    pub fn nar_aborted(&self) {
        self.nar_aborted.fetch_add(1, Ordering::Relaxed);
    }

    /// A source of a NAR for the local Nix was passed over (for that NAR,
    /// or from now on), for `reason`: a short snake_case word, such as
    /// `wrong_bytes`, `stalled` or `too_slow`.
    pub fn passed_over(&self, source: PassedOver, reason: &'static str) {
        if let Ok(mut passed) = self.passed_over.lock() {
            *passed.entry((source, reason)).or_default() += 1;
        }
    }

    /// A NAR for the local Nix is fetched from several peers at once.
    pub fn nar_striped(&self) {
        self.nar_striped.fetch_add(1, Ordering::Relaxed);
    }

    /// NAR bytes that went `direction` between this node and the peer at `ip`.
    pub fn peer_bytes(&self, ip: IpAddr, direction: Direction, bytes: u64) {
        if let Ok(mut peers) = self.peer_bytes.lock() {
            let counts = peers.entry_or_insert_with(ip.to_canonical(), Default::default);
            counts[direction as usize] += bytes;
        }
    }

    /// NAR bytes sent to and received from the peer at `ip`.
    pub fn peer_totals(&self, ip: IpAddr) -> (u64, u64) {
        let peers = self.peer_bytes.lock();
        let counts = peers.ok().and_then(|p| p.get(&ip.to_canonical()).copied());
        counts.map_or((0, 0), |[sent, received]| (sent, received))
    }

    /// How long the node has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The counters the history follows, now.
    pub fn totals(&self) -> Sample {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Sample {
            hits: get(&self.hits),
            misses: get(&self.misses),
            from_peers: get(&self.nar_bytes_peers),
            from_peer_pulls: get(&self.nar_bytes_peer_pull),
            from_upstreams: get(&self.nar_bytes_upstream),
            to_peers: get(&self.nar_bytes_store) + get(&self.nar_bytes_spool),
        }
    }

    fn record_minute(&self) {
        self.history.record(Instant::now(), || self.totals());
    }

    /// Each of the last 60 minutes, oldest first (the last one is under way).
    pub fn last_hour(&self) -> Vec<Sample> {
        self.record_minute();
        self.history.last_hour(Instant::now(), self.totals())
    }

    /// The Prometheus text exposition, with the gauges of the moment (the
    /// other layers' counts) and the pace learnt of each peer (bytes a
    /// second, by node id as 16 hex digits, an original node's by
    /// address).
    pub fn render(&self, now: Gauges, paces: &[(String, f64)]) -> String {
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
            (
                "peers",
                "gauge",
                "Peers heard from lately.",
                now.peers as u64,
            ),
            (
                "store_paths",
                "gauge",
                "Valid paths in the local store.",
                now.store_paths as u64,
            ),
            (
                "nar_transfers",
                "gauge",
                "NAR streams from peers to the local Nix in flight.",
                now.transfers as u64,
            ),
            (
                "nar_striped_total",
                "counter",
                "NARs for the local Nix fetched from several peers at once.",
                get(&self.nar_striped),
            ),
        ] {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "peerix_{name} {value}");
        }
        for (name, help, value) in self.framed.bytes() {
            let name = format!("compress_{name}_total");
            head(&mut out, &name, "counter", help);
            let _ = writeln!(out, "peerix_{name} {value}");
        }
        head(
            &mut out,
            "nar_bytes_total",
            "counter",
            "NAR bytes sent, by where they came from.",
        );
        for (source, counter) in [
            ("store", &self.nar_bytes_store),
            ("peers", &self.nar_bytes_peers),
            ("peer_pull", &self.nar_bytes_peer_pull),
            ("upstream", &self.nar_bytes_upstream),
            ("spool", &self.nar_bytes_spool),
        ] {
            let _ = writeln!(
                out,
                "peerix_nar_bytes_total{{source=\"{source}\"}} {}",
                get(counter)
            );
        }
        head(
            &mut out,
            "compress_sent_blocks_total",
            "counter",
            "Blocks of framed streams sent to peers, raw or zstd-compressed.",
        );
        for (kind, blocks) in ["raw", "zstd"].iter().zip(&self.framed.sent_blocks) {
            let n = get(blocks);
            let _ = writeln!(
                out,
                "peerix_compress_sent_blocks_total{{kind=\"{kind}\"}} {n}"
            );
        }
        head(
            &mut out,
            "peer_pace_bytes_per_second",
            "gauge",
            "Each peer's pace learnt from its recent NARs, by node id (an original node's address).",
        );
        let paces: BTreeMap<&str, f64> = (paces.iter()).map(|(n, p)| (n.as_str(), *p)).collect();
        for (node, pace) in paces {
            let _ = writeln!(
                out,
                "peerix_peer_pace_bytes_per_second{{node=\"{node}\"}} {pace:.0}"
            );
        }
        head(
            &mut out,
            "peer_nar_bytes_total",
            "counter",
            "NAR bytes sent to and received from each peer, by its address.",
        );
        let peer_bytes = (self.peer_bytes.lock())
            .map(|p| {
                p.iter()
                    .map(|(ip, c)| (*ip, *c))
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default();
        for (ip, [sent, received]) in peer_bytes {
            let _ = writeln!(
                out,
                "peerix_peer_nar_bytes_total{{peer=\"{ip}\",direction=\"sent\"}} {sent}\n\
                 peerix_peer_nar_bytes_total{{peer=\"{ip}\",direction=\"received\"}} {received}"
            );
        }
        head(
            &mut out,
            "passed_over_total",
            "counter",
            "Peers and pullers passed over for a NAR of the local Nix, by reason.",
        );
        let passed = self
            .passed_over
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        for ((source, reason), n) in passed {
            let source = source.label();
            let _ = writeln!(
                out,
                "peerix_passed_over_total{{source=\"{source}\",reason=\"{reason}\"}} {n}"
            );
        }
        head(
            &mut out,
            "build_info",
            "gauge",
            "The version and commit of the running daemon (always 1).",
        );
        let _ = writeln!(
            out,
            "peerix_build_info{{version=\"{VERSION}\",commit=\"{}\"}} 1",
            COMMIT.unwrap_or("")
        );
        head(
            &mut out,
            "start_time_seconds",
            "gauge",
            "When the daemon started, in seconds since the Unix epoch.",
        );
        let _ = writeln!(out, "peerix_start_time_seconds {:.3}", self.started_unix);
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
        m.nar_bytes(NarSource::Spool, 4);
        m.nar_bytes(NarSource::Upstream, 3);
        m.nar_bytes(NarSource::PeerPull, 2);
        m.nar_aborted();
        m.peer_bytes("10.0.0.2".parse().unwrap(), Direction::Sent, 10);
        m.peer_bytes("::ffff:10.0.0.2".parse().unwrap(), Direction::Received, 5);
        m.nar_striped();
        m.passed_over(PassedOver::Puller, "wrong_bytes");
        m.passed_over(PassedOver::Puller, "wrong_bytes");
        m.passed_over(PassedOver::Peer, "stalled");
        m.framed.sent_block(100, Some(40));
        m.framed.sent_block(50, None);
        m.framed.received(9 + 40, 100);
        let paces = [
            ("00000000000000ab".to_string(), 1.25e6),
            ("10.0.0.3".to_string(), 2e6),
        ];
        let now = Gauges {
            peers: 3,
            store_paths: 7,
            transfers: 0,
        };
        let text = m.render(now, &paces);
        for line in [
            "peerix_http_requests_total{route=\"narinfo\",status=\"200\"} 2",
            "peerix_http_requests_total{route=\"nar\",status=\"404\"} 1",
            "peerix_narinfo_hits_total 1",
            "peerix_narinfo_misses_total 1",
            "peerix_nar_aborted_total 1",
            "peerix_peers 3",
            "peerix_store_paths 7",
            "peerix_nar_bytes_total{source=\"store\"} 10",
            "peerix_nar_bytes_total{source=\"spool\"} 4",
            "peerix_nar_bytes_total{source=\"upstream\"} 3",
            "peerix_nar_bytes_total{source=\"peer_pull\"} 2",
            "peerix_discovery_seconds_bucket{le=\"0.001\"} 0",
            "peerix_discovery_seconds_bucket{le=\"0.002\"} 1",
            "peerix_discovery_seconds_bucket{le=\"1\"} 1",
            "peerix_discovery_seconds_bucket{le=\"+Inf\"} 2",
            "peerix_discovery_seconds_count 2",
            "peerix_nar_transfers 0",
            "peerix_nar_striped_total 1",
            "peerix_passed_over_total{source=\"puller\",reason=\"wrong_bytes\"} 2",
            "peerix_passed_over_total{source=\"peer\",reason=\"stalled\"} 1",
            "peerix_compress_sent_nar_bytes_total 150",
            "peerix_compress_sent_blocks_total{kind=\"raw\"} 1",
            "peerix_compress_sent_blocks_total{kind=\"zstd\"} 1",
            "peerix_compress_zstd_in_bytes_total 100",
            "peerix_compress_zstd_out_bytes_total 40",
            "peerix_compress_received_bytes_total 49",
            "peerix_compress_decoded_bytes_total 100",
            "peerix_peer_pace_bytes_per_second{node=\"00000000000000ab\"} 1250000",
            "peerix_peer_pace_bytes_per_second{node=\"10.0.0.3\"} 2000000",
            "peerix_peer_nar_bytes_total{peer=\"10.0.0.2\",direction=\"sent\"} 10",
            "peerix_peer_nar_bytes_total{peer=\"10.0.0.2\",direction=\"received\"} 5",
            &format!(
                "peerix_build_info{{version=\"{VERSION}\",commit=\"{}\"}} 1",
                COMMIT.unwrap_or("")
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with('\n'));
        let totals = m.totals();
        assert_eq!(
            (
                totals.to_peers,
                totals.from_upstreams,
                totals.from_peer_pulls
            ),
            (14, 3, 2)
        );
    }
}
