//! The peers' store summaries (`store/summary.rs`) as this node keeps them, and
//! the routes a query takes from them.
//!
//! A peer of ours tells its summary's version in a notice datagram (at
//! once when its store changes, and with every hello). When it differs
//! from the copy held, the UDP thread hands a fetch to the fetcher thread,
//! which asks the peer's `/peer/summary/<held version>` (authenticated
//! like every peer route) and hands the update back as a command. Until
//! the copy is current the peer is asked every query, as before.
//!
//! Workers read the routes ([`Routes`]) the UDP thread publishes: the
//! peers with a current summary (those that served it over HTTP and told
//! of it lately, kept apart from the peer table so that made-up node ids
//! cannot push them out), asked only when it may hold the path; the
//! others, always asked by unicast (at most 64; past that, queries go the
//! old way); and whether to ask the old way too (broadcast, multicast, v1),
//! while an original Peerix was heard in the last hour, an `--extra-host`
//! is not known as one of ours, or no peer is known yet.
//!
//! A peer whose summary cannot be read (a node of an earlier version,
//! whose summaries were Bloom filters) is asked every query, as one
//! without a summary, and its summary is not fetched again for
//! `UNREADABLE_RETRY`.
//!
//! The copies are bounded in memory (`BUDGET`): past it the summaries of
//! the peers that answered fewest hits lately are dropped, and those peers
//! are asked every query.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::outbox::Outbox;
use super::wire::NodeId;
use crate::base::logs::Throttle;
use crate::nix::narinfo::HashPart;
use crate::peer::client::{FetchError, PeerClient};
use crate::store::summary::{PeerSummary, Update};

/// Memory for peers' summaries, at most (about 50 peers of a million
/// paths, or 2,000 of 20,000).
const BUDGET: usize = 64 << 20;

/// Fetches waiting for the fetcher thread, at most.
const FETCHES_MAX: usize = 256;

/// How long a fetch may take, and when one not come back is tried again.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// A fetch that failed is tried again after this.
const RETRY: Duration = Duration::from_secs(1);

/// A summary that could not be read (another format) is fetched again
/// after this: the peer may have been upgraded by then.
const UNREADABLE_RETRY: Duration = Duration::from_secs(600);

static FETCH_FAILED: Throttle = Throttle::new();

/// Where a query goes; published by the UDP thread, read by workers.
#[derive(Default)]
pub struct Routes {
    /// Peers of ours with a current summary, at their UDP address.
    pub summarised: Vec<(NodeId, SocketAddr, Arc<PeerSummary>)>,
    /// Live peers of ours without one: asked every query.
    pub others: Vec<(NodeId, SocketAddr)>,
    /// Ask the old way as well: broadcast, v1, and wait as before.
    pub legacy: bool,
    /// Peers reached by unicast only (`exchange.rs`), asked the old way too.
    pub mesh: Vec<SocketAddr>,
}

impl Routes {
    /// The peers to ask about `hash`.
    pub fn recipients(&self, hash: &HashPart) -> Vec<(NodeId, SocketAddr)> {
        let mut to: Vec<(NodeId, SocketAddr)> = (self.summarised.iter())
            .filter(|(_, _, s)| s.may_hold(hash))
            .map(|(n, a, _)| (*n, *a))
            .collect();
        to.extend_from_slice(&self.others);
        to
    }
}

pub type SharedRoutes = Arc<RwLock<Arc<Routes>>>;

/// A summary to fetch.
pub struct Fetch {
    node: NodeId,
    http: SocketAddr,
    since: u64,
}

/// What a fetch brought back.
pub struct Fetched {
    node: NodeId,
    since: u64,
    result: Result<Update, FetchError>,
}

/// One peer's summary, as far as this node knows it.
struct Held {
    /// The version the peer last told.
    announced: u64,
    /// When it last told, and from where (its UDP address).
    told: Instant,
    /// How long after that it is still about (its hellos' pace, see
    /// `PeerTable::ttl`).
    ttl: Duration,
    udp: SocketAddr,
    http: SocketAddr,
    summary: Option<Arc<PeerSummary>>,
    /// When a fetch was asked for, while it is under way.
    fetching: Option<Instant>,
    /// Hits it answered lately: the most useful summaries are kept.
    hits: u32,
    /// Dropped for the budget: not fetched again until there is room.
    dropped: bool,
    /// When its summary last could not be read: not fetched again for
    /// `UNREADABLE_RETRY`.
    unreadable: Option<Instant>,
}

impl Held {
    /// It told of its summary within its time to live.
    fn about(&self) -> bool {
        self.told.elapsed() < self.ttl
    }
}

pub struct Summaries {
    peers: HashMap<NodeId, Held>,
    fetches: Sender<Fetch>,
    /// What the fetcher thread brought back, for the UDP thread.
    results: Receiver<Fetched>,
    /// Peers whose summaries are held, at most (with the peer table's bound).
    max_peers: usize,
    /// When a failed fetch is to be tried again.
    retry_at: Option<Instant>,
}

impl Summaries {
    /// Starts the fetcher thread, which hands its results back (see
    /// [`Summaries::take_fetched`]) and wakes the UDP thread.
    pub fn start(
        client: PeerClient,
        outbox: Arc<Outbox>,
        max_peers: usize,
    ) -> std::io::Result<Summaries> {
        let (fetches, rx) = crossbeam_channel::bounded::<Fetch>(FETCHES_MAX);
        let (done, results) = crossbeam_channel::bounded::<Fetched>(FETCHES_MAX);
        std::thread::Builder::new()
            .name("discovery-summaries".into())
            .spawn(move || {
                for f in rx {
                    let result = client.summary(f.http, f.since, FETCH_TIMEOUT);
                    let fetched = Fetched {
                        node: f.node,
                        since: f.since,
                        result,
                    };
                    if done.send_timeout(fetched, FETCH_TIMEOUT).is_err() {
                        return;
                    }
                    outbox.wake();
                }
            })?;
        Ok(Summaries {
            peers: HashMap::new(),
            fetches,
            results,
            max_peers,
            retry_at: None,
        })
    }

    /// A peer told its summary's version; fetches what changed when the
    /// copy held is another. It is about for `ttl` from now.
    pub fn announced(
        &mut self,
        node: NodeId,
        (udp, http): (SocketAddr, SocketAddr),
        version: u64,
        ttl: Duration,
    ) {
        if !self.peers.contains_key(&node) && self.peers.len() >= self.max_peers {
            return;
        }
        let held = self.peers.entry(node).or_insert(Held {
            announced: version,
            told: Instant::now(),
            ttl,
            udp,
            http,
            summary: None,
            fetching: None,
            hits: 0,
            dropped: false,
            unreadable: None,
        });
        held.announced = version;
        held.told = Instant::now();
        held.ttl = ttl;
        held.udp = udp;
        held.http = http;
        self.fetch_if_due(node);
    }

    fn fetch_if_due(&mut self, node: NodeId) {
        let Some(held) = self.peers.get_mut(&node) else {
            return;
        };
        let current = held.summary.as_ref().map(|s| s.version);
        let busy = held
            .fetching
            .is_some_and(|t| t.elapsed() < FETCH_TIMEOUT * 2);
        let unreadable = held
            .unreadable
            .is_some_and(|t| t.elapsed() < UNREADABLE_RETRY);
        if current == Some(held.announced) || busy || held.dropped || unreadable {
            return;
        }
        let fetch = Fetch {
            node,
            http: held.http,
            since: current.unwrap_or(0),
        };
        if self.fetches.try_send(fetch).is_ok() {
            held.fetching = Some(Instant::now());
        }
    }

    /// Takes in the results the fetcher thread brought back since the
    /// last call; true when a copy changed.
    pub fn take_fetched(&mut self) -> bool {
        let mut changed = false;
        while let Ok(fetched) = self.results.try_recv() {
            changed |= self.fetched(fetched);
        }
        changed
    }

    /// Takes in a fetch's result; true when a copy changed.
    fn fetched(&mut self, fetched: Fetched) -> bool {
        let Some(held) = self.peers.get_mut(&fetched.node) else {
            return false;
        };
        held.fetching = None;
        let node = fetched.node;
        let update = match fetched.result {
            Ok(update) => update,
            Err(FetchError::Invalid(e)) => {
                log::debug!(
                    "discovery: the summary of peer {node:016x} cannot be read ({e}); \
                     it is asked every query"
                );
                held.summary = None;
                held.unreadable = Some(Instant::now());
                return true;
            }
            Err(e) => {
                FETCH_FAILED.log(log::Level::Info, || {
                    format!("discovery: cannot fetch the summary of peer {node:016x}: {e}")
                });
                self.retry_at.get_or_insert(Instant::now() + RETRY);
                return false;
            }
        };
        held.unreadable = None;
        let base = held.summary.clone().filter(|s| s.version == fetched.since);
        match PeerSummary::update(base.map(|s| (*s).clone()), update) {
            Ok(summary) => {
                log::debug!(
                    "discovery: summary of peer {node:016x} at version {} ({} bytes)",
                    summary.version,
                    summary.bytes()
                );
                held.summary = Some(Arc::new(summary));
            }
            Err(e) => {
                log::debug!("discovery: summary of peer {node:016x}: {e:?}; fetching it whole");
                held.summary = None;
            }
        }
        self.keep_within_budget();
        self.fetch_if_due(node);
        true
    }

    /// Tries the failed fetches again, when it is time.
    pub fn retry_failed(&mut self) {
        if self.retry_at.is_none_or(|t| Instant::now() < t) {
            return;
        }
        self.retry_at = None;
        let nodes: Vec<NodeId> = self.peers.keys().copied().collect();
        for node in nodes {
            self.fetch_if_due(node);
        }
    }

    /// The peers about whose current summary is held, at their UDP
    /// address. Only a node that served its
    /// summary over HTTP is here: a flood of made-up node ids, which can
    /// push real peers out of the peer table, cannot push them out of this.
    pub fn summarised(&self) -> Vec<(NodeId, SocketAddr, Arc<PeerSummary>)> {
        (self.peers.iter())
            .filter(|(_, h)| h.about())
            .filter_map(|(node, h)| {
                let s = h.summary.clone().filter(|s| s.version == h.announced)?;
                Some((*node, h.udp, s))
            })
            .collect()
    }

    /// The peers about that told of a summary whose current one is
    /// not held (being fetched, or dropped for the budget): they are asked
    /// every query until it is.
    pub fn unsummarised(&self) -> Vec<(NodeId, SocketAddr)> {
        (self.peers.iter())
            .filter(|(_, h)| h.about())
            .filter(|(_, h)| h.summary.as_ref().is_none_or(|s| s.version != h.announced))
            .map(|(node, h)| (*node, h.udp))
            .collect()
    }

    /// The peer answered a hit.
    pub fn hit(&mut self, node: NodeId) {
        if let Some(held) = self.peers.get_mut(&node) {
            held.hits = held.hits.saturating_add(1);
        }
    }

    pub fn forget(&mut self, node: NodeId) {
        self.peers.remove(&node);
    }

    /// Keeps only the peers `live` says are still about; halves the hit
    /// counts (so that "lately" means the last few minutes) and lets
    /// dropped summaries be fetched again when there is room.
    pub fn prune(&mut self) {
        self.peers.retain(|_, h| h.about());
        let used: usize = self.bytes();
        for held in self.peers.values_mut() {
            held.hits /= 2;
            if held.dropped && used < BUDGET / 2 {
                held.dropped = false;
            }
        }
        let nodes: Vec<NodeId> = self.peers.keys().copied().collect();
        for node in nodes {
            self.fetch_if_due(node);
        }
    }

    /// Bytes the copies take.
    pub fn bytes(&self) -> usize {
        (self.peers.values())
            .filter_map(|h| h.summary.as_ref())
            .map(|s| s.bytes())
            .sum()
    }

    /// Drops the summaries of the least useful peers while over budget.
    fn keep_within_budget(&mut self) {
        let mut used = self.bytes();
        if used <= BUDGET {
            return;
        }
        let mut by_use: Vec<(u32, NodeId)> = (self.peers.iter())
            .filter(|(_, h)| h.summary.is_some())
            .map(|(n, h)| (h.hits, *n))
            .collect();
        by_use.sort();
        for (_, node) in by_use {
            if used <= BUDGET {
                break;
            }
            if let Some(held) = self.peers.get_mut(&node) {
                if let Some(s) = held.summary.take() {
                    used -= s.bytes();
                }
                held.dropped = true;
            }
        }
        log::info!("discovery: peers' summaries over their memory budget; the least used dropped");
    }

    /// A word on a peer's summary, for the status lines.
    pub fn describe(&self, node: NodeId) -> String {
        match self.peers.get(&node) {
            None => String::new(),
            Some(h) => match &h.summary {
                Some(s) if s.version == h.announced => {
                    format!(", summary v{} {} bytes", s.version, s.bytes())
                }
                Some(s) => format!(", summary v{} (v{} told)", s.version, h.announced),
                None if h.dropped => ", summary dropped (memory)".into(),
                None if h.unreadable.is_some() => ", summary unreadable (another format)".into(),
                None => format!(", summary v{} not fetched yet", h.announced),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summaries() -> (Summaries, crossbeam_channel::Receiver<Fetch>) {
        let (fetches, rx) = crossbeam_channel::bounded(FETCHES_MAX);
        let summaries = Summaries {
            peers: HashMap::new(),
            fetches,
            results: crossbeam_channel::never(),
            max_peers: 16,
            retry_at: None,
        };
        (summaries, rx)
    }

    fn fetched(node: NodeId, result: Result<Update, FetchError>) -> Fetched {
        Fetched {
            node,
            since: 0,
            result,
        }
    }

    #[test]
    fn a_summary_that_cannot_be_read_leaves_the_peer_asked_every_query() {
        let (mut s, rx) = summaries();
        let udp: SocketAddr = "127.0.0.1:12304".parse().unwrap();
        let addrs = (udp, udp);
        let ttl = Duration::from_secs(60);
        s.announced(7, addrs, 3, ttl);
        assert!(rx.try_recv().is_ok(), "fetched once told");
        let old = FetchError::Invalid("a summary starting \"PXS1\"".into());
        assert!(s.fetched(fetched(7, Err(old))));
        assert_eq!(s.unsummarised(), vec![(7, udp)]);
        assert!(s.describe(7).contains("unreadable"), "{}", s.describe(7));
        assert!(s.summarised().is_empty());
        // Not fetched again, even at a new version or a retry's time.
        s.announced(7, addrs, 4, ttl);
        s.retry_at = Some(Instant::now());
        s.retry_failed();
        s.prune();
        assert!(
            rx.try_recv().is_err(),
            "an unreadable summary is not fetched again at once"
        );

        // A peer that could not be reached is tried again.
        s.announced(8, addrs, 1, ttl);
        assert!(rx.try_recv().is_ok());
        s.fetched(fetched(8, Err(FetchError::Http("refused".into()))));
        s.retry_at = Some(Instant::now());
        s.retry_failed();
        assert!(matches!(rx.try_recv(), Ok(Fetch { node: 8, .. })));
    }
}
