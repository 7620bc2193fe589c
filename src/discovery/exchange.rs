//! Peer exchange: nodes tell each other the peers they hear from, so one
//! `--extra-host` seeds a whole mesh with no broadcast (a VPN, several
//! subnets).
//!
//! A node sends its list (`Message::Peers`: node id, address, seconds
//! since last heard) to the nodes it reaches by unicast: its extra hosts
//! and every node that sent it a list, each hello period, and at once to
//! a node new to it. What it passes on are the peers it heard from itself
//! within their time to live (`PEER_TTL`, more on a large LAN): an
//! address it could not reach is never passed on.
//! What it learns is a candidate, no more: it is sent this node's list (a
//! probe), and becomes a peer only when it answers from that address
//! itself; candidates unanswered after a few probes, or not told about
//! again, are forgotten.
//!
//! With a network key every datagram is authenticated, so only nodes of
//! the network are heard at all. Without one, a stranger's list can make
//! this node probe at most `PROBES_PER_TICK` nodes a tick, at up to
//! `CANDIDATE_ADDRS` addresses each (a datagram of at most 938 bytes each),
//! each at most `PROBES` times, and hold at most `CANDIDATES_MAX`
//! candidates; it can never make a node believe a peer exists that did
//! not answer itself.
//!
//! Nor can it aim the probes (`Targets::may_probe`): a candidate is taken
//! only at the LAN's port (every peer shares it) and at a unicast address
//! on a network of this host's interfaces, or at an extra host's address
//! or near one (its /24, or /64 for IPv6). A broadcast or multicast
//! address, a bystander's other port, a cloud's metadata service
//! (169.254.169.254) or the internet are never probed. A VPN mesh seeded by
//! `--extra-host` (WireGuard, say) works as a LAN does: its interface's
//! address has the mesh's prefix (`Address = 10.100.0.2/24`), so its
//! members are on a network of this host. Tailscale (and Headscale) give
//! each node a single address (/32) in 100.64.0.0/10: that /10 is taken
//! as the tailnet (`targets::subnet_of`). A mesh that is neither must name
//! its nodes as extra hosts, or have them in an extra host's /24. Peers
//! heard directly (a hello, an answer, a probe answered) are never
//! filtered: they spoke from where they are.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::peer_table::PeerTable;
use super::targets::Targets;
use super::wire::{NodeId, PeerEntry, PEERS_MAX};
use crate::base::bounded::Bounded;

/// Candidates kept, per generation of their table.
const CANDIDATES_MAX: usize = 256;

/// Nodes reached by unicast, per generation of their table.
const UNICAST_MAX: usize = 1024;

/// Probes sent a tick, at most.
const PROBES_PER_TICK: usize = 8;

/// Probes a candidate gets before it is forgotten, and their spacing.
const PROBES: u8 = 3;
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// A candidate not told about again for this long is forgotten.
const CANDIDATE_TTL: Duration = Duration::from_secs(120);

/// Addresses kept per candidate.
const CANDIDATE_ADDRS: usize = 4;

struct Candidate {
    /// Where it was heard from by those who told of it.
    addrs: Vec<SocketAddr>,
    told: Instant,
    probes: u8,
    next_probe: Instant,
}

pub struct Exchange {
    candidates: Bounded<NodeId, Candidate>,
    /// Nodes that talk to this one by unicast: they get its hellos,
    /// notices and lists by unicast too.
    unicast: Bounded<NodeId, SocketAddr>,
}

impl Default for Exchange {
    fn default() -> Exchange {
        Exchange {
            candidates: Bounded::new(CANDIDATES_MAX),
            unicast: Bounded::new(UNICAST_MAX),
        }
    }
}

impl Exchange {
    /// Takes in a peer's list: the nodes not yet known become candidates,
    /// at the addresses `targets` allows probes to at `port` (the LAN's).
    pub fn learn(
        &mut self,
        entries: &[PeerEntry],
        (me, port): (NodeId, u16),
        peers: &PeerTable,
        targets: &Targets,
    ) {
        let now = Instant::now();
        for entry in entries {
            let unusable = !targets.may_probe(entry.addr, port);
            if entry.node == me || unusable || peers.knows(entry.node) {
                continue;
            }
            let candidate = self
                .candidates
                .entry_or_insert_with(entry.node, || Candidate {
                    addrs: Vec::new(),
                    told: now,
                    probes: 0,
                    next_probe: now,
                });
            candidate.told = now;
            if !candidate.addrs.contains(&entry.addr) && candidate.addrs.len() < CANDIDATE_ADDRS {
                candidate.addrs.push(entry.addr);
                candidate.probes = 0;
            }
        }
    }

    /// A node of ours was heard from `addr`; `unicast` when it spoke to
    /// this node directly (a list, or from a candidate's or an extra
    /// host's address).
    pub fn heard(&mut self, node: NodeId, addr: SocketAddr, unicast: bool) {
        let was_candidate = self.candidates.remove(&node).is_some();
        if unicast || was_candidate || self.unicast.contains_key(&node) {
            self.unicast.insert(node, addr);
        }
    }

    pub fn forget(&mut self, node: NodeId) {
        self.unicast.remove(&node);
        self.candidates.remove(&node);
    }

    /// The candidates to probe now, at most `PROBES_PER_TICK`; those
    /// probed enough or not told about lately are dropped.
    pub fn due_probes(&mut self) -> Vec<SocketAddr> {
        let now = Instant::now();
        self.candidates
            .retain(|_, c| c.probes < PROBES && now.duration_since(c.told) < CANDIDATE_TTL);
        let mut due = Vec::new();
        let mut chosen = Vec::new();
        for (node, c) in self.candidates.iter() {
            if chosen.len() < PROBES_PER_TICK && c.next_probe <= now {
                chosen.push(*node);
                due.extend_from_slice(&c.addrs);
            }
        }
        for node in chosen {
            if let Some(c) = self.candidates.get_mut(&node) {
                c.probes += 1;
                c.next_probe = now + PROBE_EVERY;
            }
        }
        due
    }

    /// The unicast nodes still in the peer table, at the address they
    /// were last heard from.
    pub fn unicast(&mut self, peers: &PeerTable) -> Vec<SocketAddr> {
        self.unicast.retain(|node, _| peers.knows(*node));
        self.unicast.iter().map(|(_, a)| *a).collect()
    }
}

/// The lists to send: this node's live peers, `PEERS_MAX` a message.
pub fn lists(peers: &PeerTable) -> Vec<Vec<PeerEntry>> {
    let entries: Vec<PeerEntry> = peers.live_entries();
    entries
        .chunks(PEERS_MAX)
        .map(<[PeerEntry]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::targets::Subnet;

    /// A host on 10.0.0.0/8 (every address the tests name).
    fn targets() -> Targets {
        Targets {
            subnets: vec![Subnet {
                ip: "10.0.0.1".parse().unwrap(),
                prefix: 8,
            }],
            ..Targets::default()
        }
    }

    fn entry(node: NodeId, addr: &str) -> PeerEntry {
        PeerEntry {
            node,
            addr: addr.parse().unwrap(),
            age: 0,
        }
    }

    #[test]
    fn candidates_are_probed_a_few_times_then_forgotten() {
        let mut ex = Exchange::default();
        let mut peers = PeerTable::default();
        peers.heard(2, "10.0.0.2:12304".parse().unwrap(), Some(12304));
        ex.learn(
            &[
                entry(1, "10.0.0.1:12304"), // myself
                entry(2, "10.0.0.2:12304"), // known
                entry(3, "10.0.1.3:12304"),
                entry(4, "127.0.0.1:12304"),
                entry(5, "10.0.1.5:9999"),         // another port
                entry(6, "10.255.255.255:12304"),  // broadcast
                entry(7, "169.254.169.254:12304"), // not on a network of ours
            ],
            (1, 12304),
            &peers,
            &targets(),
        );
        assert_eq!(ex.due_probes(), ["10.0.1.3:12304".parse().unwrap()]);
        assert!(ex.due_probes().is_empty(), "spaced out");
        for c in ex.candidates.values_mut() {
            c.next_probe = Instant::now();
        }
        assert_eq!(ex.due_probes().len(), 1);
        // Answered: a peer reached by unicast, no longer a candidate.
        peers.heard(3, "10.0.1.3:12304".parse().unwrap(), None);
        ex.heard(3, "10.0.1.3:12304".parse().unwrap(), false);
        assert!(ex.candidates.is_empty());
        assert_eq!(ex.unicast(&peers), ["10.0.1.3:12304".parse().unwrap()]);
        peers.forget(3);
        assert!(ex.unicast(&peers).is_empty());
    }

    #[test]
    fn a_flood_of_lists_stays_bounded_and_probes_stay_few() {
        let mut ex = Exchange::default();
        let peers = PeerTable::default();
        let targets = targets();
        for i in 0..100_000u64 {
            let addr = format!("10.{}.{}.{}:1", (i >> 16) as u8, (i >> 8) as u8, i as u8);
            ex.learn(&[entry(i + 10, &addr)], (1, 1), &peers, &targets);
        }
        assert!(ex.candidates.len() <= 2 * CANDIDATES_MAX);
        assert!(ex.due_probes().len() <= PROBES_PER_TICK * CANDIDATE_ADDRS);
    }
}
