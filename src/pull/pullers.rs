//! Which node of the LAN fetches a path from the upstream, and the
//! pullers this node passes over.
//!
//! The fetcher is the first in rendezvous order (a hash of node id and
//! path, the larger first) among the live nodes that pull, this one
//! included. Every node computes the same order from its peer table
//! without a message, so nodes asking in the same millisecond agree on one
//! fetcher; the others stream from it (`/peer/pull/…`) while it arrives.
//!
//! Anyone on the LAN can claim a node id that ranks first for a path, so a
//! puller is only asked for NARs whose narinfo came from an upstream (the
//! NarHash and NarSize it must match), and one that lets this node down is
//! passed over: by its address (its source, `base::rate::source_of`),
//! whatever node ids are claimed there, so that made-up ids at one address
//! cost one try.
//! - Its bytes failed the NarHash: never asked for that NAR again, and
//!   ranked after this node, for every path, for `LIED_FOR`.
//! - It failed, stalled or could not be reached: ranked after this node
//!   for `FAILED_FOR`.
//! - It refused (it answered, with something else than the NAR): passed
//!   over for that NAR only (`PullNar`'s business).
//!
//! Ranked after this node, a puller is asked only when this node cannot
//! fetch from the upstream itself.

use std::cmp::Reverse;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::base::bounded::Bounded;
use crate::base::rate::source_of;
use crate::nix::narinfo::HashPart;
use crate::peer::NodeId;

/// A puller whose bytes failed a NarHash ranks after this node this long.
const LIED_FOR: Duration = Duration::from_secs(3600);
/// A puller that failed or stalled ranks after this node this long.
const FAILED_FOR: Duration = Duration::from_secs(600);
/// Sources passed over, per generation of their table.
const SOURCES: usize = 1024;
/// NARs remembered per source that it sent wrong bytes of.
const LIES_PER_SOURCE: usize = 16;

/// Who goes on with a NAR: a peer that pulls, or this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Peer(NodeId, SocketAddr),
    Here,
}

impl Via {
    /// The source a peer is passed over by; `None` for this node.
    pub fn source(&self) -> Option<IpAddr> {
        match self {
            Via::Peer(_, addr) => Some(source_of(addr.ip())),
            Via::Here => None,
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Peer(node, addr) => write!(f, "node {node:016x} at {addr}"),
            Via::Here => f.write_str("this node"),
        }
    }
}

/// Why a puller was passed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Bytes it sent failed the NarHash.
    WrongBytes,
    /// It sent nothing for too long.
    Stalled,
    /// It could not be reached, broke off or answered nonsense.
    Failed,
    /// It answered, with a status other than the NAR.
    Refused,
}

impl Why {
    /// The reason as `/metrics` counts it.
    pub fn reason(self) -> &'static str {
        match self {
            Why::WrongBytes => "wrong_bytes",
            Why::Stalled => "stalled",
            Why::Failed => "failed",
            Why::Refused => "refused",
        }
    }
}

/// A source passed over: until when it ranks after this node, and the
/// NARs (by NarHash) it sent wrong bytes of.
struct Passed {
    until: Instant,
    lied: Vec<[u8; 32]>,
}

/// The pullers passed over, by source.
pub struct Pullers {
    passed: Mutex<Bounded<IpAddr, Passed>>,
}

impl Pullers {
    pub fn new() -> Pullers {
        Pullers {
            passed: Mutex::new(Bounded::new(SOURCES)),
        }
    }

    /// The nodes that may serve the NAR of `hash` (with `nar_hash`) in
    /// rendezvous order: `pullers` (the live peers that pull) and this
    /// node, `me`; those passed over after this node, and those that sent
    /// wrong bytes of this NAR left out.
    pub fn order(
        &self,
        pullers: Vec<(NodeId, SocketAddr)>,
        me: NodeId,
        hash: &HashPart,
        nar_hash: &[u8; 32],
    ) -> Vec<Via> {
        let now = Instant::now();
        let passed = self.passed.lock().ok();
        let mut ranked = vec![(false, score(me, hash), Via::Here)];
        for (node, addr) in pullers {
            let p = (passed.as_ref()).and_then(|p| p.get(&source_of(addr.ip())));
            if p.is_some_and(|p| p.lied.contains(nar_hash)) {
                continue;
            }
            let demoted = p.is_some_and(|p| p.until > now);
            ranked.push((demoted, score(node, hash), Via::Peer(node, addr)));
        }
        ranked.sort_by_key(|(demoted, score, _)| (*demoted, Reverse(*score)));
        ranked.into_iter().map(|(_, _, via)| via).collect()
    }

    /// `via` was passed over for the NAR with `nar_hash`, for `why`: it
    /// ranks after this node for a while (not for a refusal), and is never
    /// asked for that NAR again when it sent wrong bytes.
    pub fn pass_over(&self, via: Via, why: Why, nar_hash: &[u8; 32]) {
        let Some(source) = via.source() else { return };
        let demoted_for = match why {
            Why::WrongBytes => LIED_FOR,
            Why::Stalled | Why::Failed => FAILED_FOR,
            Why::Refused => return,
        };
        let now = Instant::now();
        if let Ok(mut passed) = self.passed.lock() {
            let p = passed.entry_or_insert_with(source, || Passed {
                until: now,
                lied: Vec::new(),
            });
            p.until = p.until.max(now + demoted_for);
            if why == Why::WrongBytes && !p.lied.contains(nar_hash) {
                p.lied.insert(0, *nar_hash);
                p.lied.truncate(LIES_PER_SOURCE);
            }
        }
    }
}

/// A node's rank for a path: the larger, the earlier.
fn score(node: NodeId, hash: &HashPart) -> u64 {
    let mut input = node.to_be_bytes().to_vec();
    input.extend_from_slice(hash.as_str().as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: NodeId, ip: &str) -> (NodeId, SocketAddr) {
        (node, SocketAddr::new(ip.parse().unwrap(), 12304))
    }

    #[test]
    fn the_passed_over_rank_after_this_node_and_liars_not_at_all() {
        let hash = HashPart::parse(&"a".repeat(32)).unwrap();
        let (me, nar, other) = (1, [1u8; 32], [2u8; 32]);
        // Made-up ids at one address, and an honest peer.
        let peers: Vec<_> = (2..12)
            .map(|n| peer(n, "10.0.0.9"))
            .chain([peer(99, "10.0.0.2")])
            .collect();
        let pullers = Pullers::new();
        let order = pullers.order(peers.clone(), me, &hash, &nar);
        assert_eq!(order.len(), 12);
        let stranger = order
            .iter()
            .find(|v| v.source() == Some("10.0.0.9".parse().unwrap()));
        pullers.pass_over(*stranger.unwrap(), Why::Failed, &nar);
        let order = pullers.order(peers.clone(), me, &hash, &nar);
        let here = order.iter().position(|v| *v == Via::Here).unwrap();
        let strangers: Vec<usize> = (order.iter().enumerate())
            .filter(|(_, v)| v.source() == Some("10.0.0.9".parse().unwrap()))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(strangers.len(), 10);
        assert!(strangers.iter().all(|&i| i > here), "{order:?}");
        // A refusal changes nothing; wrong bytes leave the address out
        // for that NAR, and after this node for others.
        pullers.pass_over(Via::Peer(99, peers[10].1), Why::Refused, &nar);
        let honest = |o: &[Via]| o.iter().position(|v| *v == Via::Peer(99, peers[10].1));
        let order = pullers.order(peers.clone(), me, &hash, &nar);
        assert!(honest(&order).is_some_and(|i| i <= 1), "{order:?}");
        pullers.pass_over(*stranger.unwrap(), Why::WrongBytes, &nar);
        assert_eq!(pullers.order(peers.clone(), me, &hash, &nar).len(), 2);
        let order = pullers.order(peers, me, &hash, &other);
        assert_eq!(order.len(), 12);
    }
}
