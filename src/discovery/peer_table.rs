//! The peer table: the nodes this one has heard from lately, kept by the
//! UDP thread alone. It says which peers will answer a query either way
//! (ours, by node id), whether a peer that is silent on a miss (an
//! original Peerix, known by address) is about, and how long such peers
//! take to answer their hits, which decides how long a miss waits for them.
//!
//! Both tables are bounded (`cache::Bounded`): datagrams with made-up node
//! ids or addresses can push out peers not heard from lately, never grow
//! the daemon.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::hello::HELLO_MAX;
use super::wire::{NodeId, PeerEntry};
use crate::base::bounded::Bounded;

/// A peer not heard from for this long is forgotten. Peers say hello
/// every `HELLO_EVERY`, so a live one is heard well within it. On a large
/// LAN hellos come further apart (`hello_period`): a peer is then
/// forgotten after `TTL_GAPS` of its last gap between hellos.
pub const PEER_TTL: Duration = Duration::from_secs(95);
const TTL_GAPS: u32 = 3;

/// Added to a peer's gaps between hellos, for a hello late on the way.
const TTL_SLACK: Duration = Duration::from_secs(5);

/// The longest time to live a peer's hellos can earn it.
const TTL_MAX: Duration =
    Duration::from_secs(HELLO_MAX.as_secs() * TTL_GAPS as u64).saturating_add(TTL_SLACK);

/// An original Peerix node is remembered this long after it was last
/// heard: it says no hello, and is heard only when it asks (its Nix wants
/// a path) or answers a hit; forgotten, its next hit would be missed.
const V1_TTL: Duration = Duration::from_secs(3600);

/// Queries a peer of ours may leave unanswered before it is no longer
/// waited for (it is waited for again as soon as it is heard).
const MAX_STRIKES: u8 = 2;

/// Addresses remembered per peer (IPv4 and IPv6, a few interfaces).
const MAX_ADDRS: usize = 8;

/// Peers of ours, and original Peerix nodes, per generation of their table.
pub const MAX_PEERS: usize = 512;
const MAX_V1_PEERS: usize = 128;

/// Answer times remembered per original Peerix node.
const V1_SAMPLES: usize = 32;

/// Hits an original Peerix node must have answered before its answer time
/// is trusted; until then a miss waits the whole timeout for it.
const V1_LEARNED: usize = 5;

/// A miss waits for original Peerix nodes this many times their slowest
/// recent answer (about their p99), at least `V1_WAIT_MIN`.
const V1_WAIT_FACTOR: u32 = 4;
const V1_WAIT_MIN: Duration = Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct OurNode {
    /// Where its datagrams come from, most recent first: a peer is heard
    /// over IPv4 broadcast and IPv6 multicast alike.
    pub addrs: Vec<SocketAddr>,
    pub http_port: Option<u16>,
    pub last_heard: Instant,
    /// When it last said hello, and how long it is thought about after
    /// it was last heard (see `PEER_TTL`).
    hello_at: Option<Instant>,
    ttl: Duration,
    strikes: u8,
    /// It fetches from upstream caches for its peers (`Message::Pulls`).
    pulls: bool,
}

/// An original Peerix node: when it was heard, and how long its answers
/// to our queries took.
struct V1Node {
    last_heard: Instant,
    answers: VecDeque<Duration>,
}

pub struct PeerTable {
    ours: Bounded<NodeId, OurNode>,
    /// Which node of ours sends from an address.
    by_addr: Bounded<IpAddr, NodeId>,
    /// Original Peerix nodes, by the address their datagrams come from.
    v1: Bounded<IpAddr, V1Node>,
}

impl Default for PeerTable {
    fn default() -> PeerTable {
        PeerTable {
            ours: Bounded::new(MAX_PEERS),
            by_addr: Bounded::new(MAX_PEERS * 2),
            v1: Bounded::new(MAX_V1_PEERS),
        }
    }
}

impl OurNode {
    /// Heard within its time to live.
    fn live(&self) -> bool {
        self.live_at(Instant::now())
    }

    fn live_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heard) < self.ttl
    }
}

impl PeerTable {
    /// Any datagram of ours from `node`; true when it is new.
    pub fn heard(&mut self, node: NodeId, addr: SocketAddr, http_port: Option<u16>) -> bool {
        let now = Instant::now();
        let new = !self.ours.contains_key(&node);
        let peer = self.ours.entry_or_insert_with(node, || OurNode {
            addrs: Vec::new(),
            http_port,
            last_heard: now,
            hello_at: None,
            ttl: PEER_TTL,
            strikes: 0,
            pulls: false,
        });
        peer.addrs.retain(|a| a.ip() != addr.ip());
        peer.addrs.insert(0, addr);
        peer.addrs.truncate(MAX_ADDRS);
        peer.http_port = http_port.or(peer.http_port);
        peer.last_heard = now;
        peer.strikes = 0;
        if self.by_addr.get(&addr.ip()) != Some(&node) {
            self.by_addr.insert(addr.ip(), node);
        }
        self.v1.remove(&addr.ip());
        new
    }

    /// `node` said hello (after `heard`): the time between its hellos sets
    /// how long it is thought about once silent.
    pub fn heard_hello(&mut self, node: NodeId, now: Instant) {
        if let Some(peer) = self.ours.get_mut(&node) {
            if let Some(at) = peer.hello_at {
                let gap = now.saturating_duration_since(at);
                peer.ttl = (gap * TTL_GAPS + TTL_SLACK).clamp(PEER_TTL, TTL_MAX);
            }
            peer.hello_at = Some(now);
        }
    }

    /// How long `node` is thought about after it was last heard.
    pub fn ttl(&self, node: NodeId) -> Duration {
        self.ours.get(&node).map_or(PEER_TTL, |p| p.ttl)
    }

    /// A v1 datagram from `ip`: an original Peerix there, unless a node of
    /// ours speaks from that address (ours send v1 queries too).
    pub fn heard_v1(&mut self, ip: IpAddr) {
        if !self.is_ours(ip) {
            self.v1_peer(ip).last_heard = Instant::now();
        }
    }

    /// An original Peerix node at `ip` answered a query of ours (a hit)
    /// after `took`.
    pub fn v1_answered(&mut self, ip: IpAddr, took: Duration) {
        if self.is_ours(ip) {
            return;
        }
        let peer = self.v1_peer(ip);
        peer.last_heard = Instant::now();
        if peer.answers.len() == V1_SAMPLES {
            peer.answers.pop_front();
        }
        peer.answers.push_back(took);
    }

    fn v1_peer(&mut self, ip: IpAddr) -> &mut V1Node {
        self.v1.entry_or_insert_with(ip, || V1Node {
            last_heard: Instant::now(),
            answers: VecDeque::new(),
        })
    }

    pub fn forget(&mut self, node: NodeId) {
        self.ours.remove(&node);
    }

    /// True when a live node of ours sends from `ip`.
    pub fn is_ours(&self, ip: IpAddr) -> bool {
        self.by_addr
            .get(&ip)
            .and_then(|node| self.ours.get(node))
            .is_some_and(|p| p.addrs.iter().any(|a| a.ip() == ip))
    }

    /// The live peers of ours that answer every query, hit or miss.
    pub fn expected(&self) -> Vec<NodeId> {
        self.ours
            .iter()
            .filter(|(_, p)| p.live() && p.strikes < MAX_STRIKES)
            .map(|(id, _)| *id)
            .collect()
    }

    /// True when `node` is a live peer of ours.
    pub fn knows(&self, node: NodeId) -> bool {
        (self.ours.get(&node)).is_some_and(|p| p.live())
    }

    /// The live peers of ours that answer every query, at the address
    /// they were last heard from.
    pub fn expected_addrs(&self) -> Vec<(NodeId, SocketAddr)> {
        (self.ours.iter())
            .filter(|(_, p)| p.live() && p.strikes < MAX_STRIKES)
            .map(|(id, p)| (*id, p.addrs[0]))
            .collect()
    }

    /// The peers to pass on to others: those heard lately, with how long
    /// ago, one entry per address they were heard from (but IPv6
    /// link-local ones, which mean nothing past the link).
    pub fn live_entries(&self) -> Vec<PeerEntry> {
        let live = (self.ours.iter()).filter(|(_, p)| p.live() && p.strikes < MAX_STRIKES);
        let mut entries = Vec::new();
        for (node, p) in live {
            let age = p.last_heard.elapsed().as_secs().min(u64::from(u16::MAX)) as u16;
            for addr in &p.addrs {
                let link_local =
                    matches!(addr, SocketAddr::V6(v6) if v6.ip().segments()[0] & 0xffc0 == 0xfe80);
                if !link_local {
                    entries.push(PeerEntry {
                        node: *node,
                        addr: *addr,
                        age,
                    });
                }
            }
        }
        entries
    }

    /// True when an original Peerix node was heard lately.
    pub fn v1_about(&self) -> bool {
        (self.v1.iter()).any(|(_, p)| p.last_heard.elapsed() < V1_TTL)
    }

    /// `node` fetches from upstream caches for its peers.
    pub fn heard_pulls(&mut self, node: NodeId) {
        if let Some(peer) = self.ours.get_mut(&node) {
            peer.pulls = true;
        }
    }

    /// The live peers of ours that fetch from upstream caches, with the
    /// address of their HTTP server.
    pub fn pullers(&self) -> Vec<(NodeId, SocketAddr)> {
        (self.ours.iter())
            .filter(|(_, p)| p.pulls && p.live())
            .filter(|(_, p)| p.strikes < MAX_STRIKES)
            .filter_map(|(id, p)| {
                // The address as heard, with an IPv6 link-local scope.
                let mut addr = *p.addrs.first()?;
                addr.set_port(p.http_port?);
                Some((*id, addr))
            })
            .collect()
    }

    /// How long a query waits for original Peerix nodes (they answer only
    /// hits) once every peer of ours has answered: nothing when none is
    /// about; the whole `timeout` while one of them has not answered
    /// enough hits to know its pace; else a few times its slowest recent
    /// answer, within `timeout`.
    pub fn v1_wait(&self, timeout: Duration) -> Option<Duration> {
        let live: Vec<&V1Node> = (self.v1.iter())
            .map(|(_, p)| p)
            .filter(|p| p.last_heard.elapsed() < V1_TTL)
            .collect();
        if live.is_empty() {
            return None;
        }
        if live.iter().any(|p| p.answers.len() < V1_LEARNED) {
            return Some(timeout);
        }
        let slowest = (live.iter())
            .flat_map(|p| p.answers.iter())
            .max()
            .copied()
            .unwrap_or(timeout);
        Some((slowest * V1_WAIT_FACTOR).clamp(V1_WAIT_MIN, timeout))
    }

    /// A peer did not answer a query in time.
    pub fn strike(&mut self, node: NodeId) {
        if let Some(peer) = self.ours.get_mut(&node) {
            peer.strikes = peer.strikes.saturating_add(1);
            if peer.strikes == MAX_STRIKES {
                log::info!("peer {node:016x} at {} stopped answering", peer.addrs[0]);
            }
        }
    }

    /// Drops peers not heard from for their time to live (`PEER_TTL`, or
    /// a few of their gaps between hellos).
    pub fn expire(&mut self, now: Instant) {
        self.ours.retain(|node, p| {
            let live = p.live_at(now);
            if !live {
                log::info!("peer {node:016x} at {} is gone", p.addrs[0]);
            }
            live
        });
        let ours = &self.ours;
        self.by_addr.retain(|_, node| ours.contains_key(node));
        self.v1.retain(|_, p| p.last_heard.elapsed() < V1_TTL);
    }

    /// What is known of every peer, for status: ours by node id first
    /// (with what `more` says of each), then original Peerix nodes.
    pub fn snapshot(&self, more: impl Fn(NodeId) -> String) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = (self.ours.iter())
            .map(|(id, p)| PeerInfo {
                node: Some(*id),
                more: more(*id),
                addrs: p.addrs.iter().map(SocketAddr::ip).collect(),
                http_port: p.http_port,
                heard: p.last_heard.elapsed(),
                answering: p.strikes < MAX_STRIKES,
                pulls: p.pulls,
                answers_timed: 0,
                slowest: None,
            })
            .collect();
        peers.sort_by_key(|p| p.node);
        let mut v1: Vec<PeerInfo> = (self.v1.iter())
            .map(|(ip, p)| PeerInfo {
                node: None,
                more: String::new(),
                addrs: vec![*ip],
                http_port: None,
                heard: p.last_heard.elapsed(),
                answering: true,
                pulls: false,
                answers_timed: p.answers.len(),
                slowest: p.answers.iter().max().copied(),
            })
            .collect();
        v1.sort_by_key(|p| p.addrs.clone());
        peers.extend(v1);
        peers
    }
}

/// One peer as status shows it.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Its node id; `None` for an original Peerix node (known by address).
    pub node: Option<NodeId>,
    /// What else is known of it (its store summary), for the status line.
    pub more: String,
    /// The addresses it was heard from, most recent first.
    pub addrs: Vec<IpAddr>,
    pub http_port: Option<u16>,
    /// How long ago it was last heard.
    pub heard: Duration,
    /// False when it left the last queries unanswered.
    pub answering: bool,
    /// It fetches from upstream caches for its peers.
    pub pulls: bool,
    /// For an original Peerix node: its answers timed, and the slowest.
    pub answers_timed: usize,
    pub slowest: Option<Duration>,
}

/// One line per peer, for `/status`.
impl std::fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.node {
            Some(id) => {
                let addrs: Vec<String> = self.addrs.iter().map(IpAddr::to_string).collect();
                write!(
                    f,
                    "{id:016x} {} http {} heard {:.0?} ago{}{}{}",
                    addrs.join(" "),
                    self.http_port.map_or("?".into(), |p| p.to_string()),
                    self.heard,
                    if self.pulls {
                        ", pulls from upstreams"
                    } else {
                        ""
                    },
                    if self.answering {
                        ""
                    } else {
                        " (not answering)"
                    },
                    self.more
                )
            }
            None => write!(
                f,
                "v1 {} heard {:.0?} ago, {} answers timed{}",
                self.addrs.first().map_or("?".into(), IpAddr::to_string),
                self.heard,
                self.answers_timed,
                self.slowest
                    .map_or(String::new(), |s| format!(", slowest {s:.1?}"))
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_forgotten_after_a_few_of_its_gaps_between_hellos() {
        let mut table = PeerTable::default();
        let addr: SocketAddr = "10.0.0.2:12304".parse().unwrap();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Hellos every 30 s: forgotten 95 s after it was last heard.
        table.heard(1, addr, Some(12304));
        table.heard_hello(1, at(0));
        table.heard_hello(1, at(30));
        assert_eq!(table.ttl(1), PEER_TTL);
        table.expire(at(96));
        assert!(!table.knows(1));
        // A node on a large LAN says hello every 400 s: still known 1,000 s
        // after it was last heard, forgotten after 1,210 s.
        table.heard(2, addr, Some(12304));
        table.heard_hello(2, at(0));
        table.heard_hello(2, at(400));
        assert_eq!(table.ttl(2), Duration::from_secs(1205));
        table.expire(at(1000));
        assert!(table.knows(2));
        table.expire(at(1210));
        assert!(!table.knows(2));
        // Whatever its gaps, the time to live stays bounded.
        table.heard(3, addr, Some(12304));
        table.heard_hello(3, at(0));
        table.heard_hello(3, at(86_400));
        assert_eq!(table.ttl(3), TTL_MAX);
    }

    #[test]
    fn a_peer_heard_on_v4_and_v6_is_ours_on_both() {
        let mut table = PeerTable::default();
        let v4: SocketAddr = "10.0.0.2:12304".parse().unwrap();
        let v6: SocketAddr = "[fd00::2]:12304".parse().unwrap();
        assert!(table.heard(7, v4, Some(12304)));
        assert!(!table.heard(7, v6, None));
        assert!(table.is_ours(v4.ip()) && table.is_ours(v6.ip()));
        // Its v1 queries do not make it an original Peerix.
        table.heard_v1(v4.ip());
        assert!(table.v1_wait(Duration::from_millis(500)).is_none());
        table.heard_v1("10.0.0.9".parse().unwrap());
        assert!(table.v1_wait(Duration::from_millis(500)).is_some());
        assert_eq!(table.expected(), [7]);
        table.strike(7);
        table.strike(7);
        assert!(table.expected().is_empty());
        table.heard(7, v4, None);
        assert_eq!(table.expected(), [7]);
    }

    #[test]
    fn misses_wait_for_original_nodes_as_long_as_their_answers_need() {
        let timeout = Duration::from_millis(500);
        let mut table = PeerTable::default();
        let v1: IpAddr = "10.0.0.9".parse().unwrap();
        table.heard_v1(v1);
        // Not learnt yet: the whole timeout.
        for _ in 0..V1_LEARNED - 1 {
            table.v1_answered(v1, Duration::from_millis(5));
            assert_eq!(table.v1_wait(timeout), Some(timeout));
        }
        table.v1_answered(v1, Duration::from_millis(6));
        assert_eq!(table.v1_wait(timeout), Some(Duration::from_millis(24)));
        // A slow answer lengthens the wait, never beyond the timeout.
        table.v1_answered(v1, Duration::from_millis(200));
        assert_eq!(table.v1_wait(timeout), Some(timeout));
        // Fast again: the slow one ages out of the last V1_SAMPLES.
        for _ in 0..V1_SAMPLES {
            table.v1_answered(v1, Duration::from_millis(1));
        }
        assert_eq!(table.v1_wait(timeout), Some(V1_WAIT_MIN));
    }

    #[test]
    fn made_up_peers_never_grow_the_table() {
        let mut table = PeerTable::default();
        let ours: SocketAddr = "10.0.0.2:12304".parse().unwrap();
        table.heard(1, ours, Some(12304));
        for id in 2..100_000u64 {
            let addr = SocketAddr::from(([10, (id >> 16) as u8, (id >> 8) as u8, id as u8], 12304));
            table.heard(id, addr, None);
            table.heard_v1(addr.ip());
            if id % 100 == 0 {
                table.heard(1, ours, Some(12304));
            }
        }
        assert!(table.ours.len() <= 2 * MAX_PEERS);
        assert!(table.by_addr.len() <= 4 * MAX_PEERS);
        assert!(table.v1.len() <= 2 * MAX_V1_PEERS);
        assert!(table.is_ours(ours.ip()), "a peer heard lately is kept");
    }
}
