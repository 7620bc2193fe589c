//! The peer table: the nodes this one has heard from lately, kept by the
//! UDP thread alone. It says which peers will answer a query either way
//! (ours, by node id) and whether a peer that is silent on a miss (an
//! original Peerix, known by address) is about, which decides whether a
//! miss can be answered before the timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::wire::NodeId;

/// A peer not heard from for this long is forgotten. Peers say hello
/// every `HELLO_EVERY`, so a live one is heard well within it.
pub const PEER_TTL: Duration = Duration::from_secs(95);

/// Queries a peer of ours may leave unanswered before it is no longer
/// waited for (it is waited for again as soon as it is heard).
const MAX_STRIKES: u8 = 2;

/// Addresses remembered per peer (IPv4 and IPv6, a few interfaces).
const MAX_ADDRS: usize = 8;

#[derive(Clone, Debug)]
pub struct Peer {
    /// Where its datagrams come from, most recent first: a peer is heard
    /// over IPv4 broadcast and IPv6 multicast alike.
    pub addrs: Vec<SocketAddr>,
    pub http_port: Option<u16>,
    pub last_heard: Instant,
    strikes: u8,
}

#[derive(Default)]
pub struct PeerTable {
    ours: HashMap<NodeId, Peer>,
    /// Original Peerix nodes, by the address their datagrams come from.
    v1: HashMap<IpAddr, Instant>,
}

impl PeerTable {
    /// Any datagram of ours from `node`; true when it is new.
    pub fn heard(&mut self, node: NodeId, addr: SocketAddr, http_port: Option<u16>) -> bool {
        let now = Instant::now();
        let new = !self.ours.contains_key(&node);
        let peer = self.ours.entry(node).or_insert(Peer {
            addrs: Vec::new(),
            http_port,
            last_heard: now,
            strikes: 0,
        });
        peer.addrs.retain(|a| a.ip() != addr.ip());
        peer.addrs.insert(0, addr);
        peer.addrs.truncate(MAX_ADDRS);
        peer.http_port = http_port.or(peer.http_port);
        peer.last_heard = now;
        peer.strikes = 0;
        self.v1.remove(&addr.ip());
        new
    }

    /// A v1 datagram from `ip`: an original Peerix there, unless a node of
    /// ours speaks from that address (ours send v1 queries too).
    pub fn heard_v1(&mut self, ip: IpAddr) {
        if !self.is_ours(ip) {
            self.v1.insert(ip, Instant::now());
        }
    }

    pub fn forget(&mut self, node: NodeId) {
        self.ours.remove(&node);
    }

    /// True when a live node of ours sends from `ip`.
    pub fn is_ours(&self, ip: IpAddr) -> bool {
        self.ours
            .values()
            .any(|p| p.addrs.iter().any(|a| a.ip() == ip))
    }

    /// The live peers of ours that answer every query, hit or miss.
    pub fn expected(&self) -> Vec<NodeId> {
        self.ours
            .iter()
            .filter(|(_, p)| p.last_heard.elapsed() < PEER_TTL && p.strikes < MAX_STRIKES)
            .map(|(id, _)| *id)
            .collect()
    }

    /// True when a live original Peerix is about: it answers only hits.
    pub fn has_v1(&self) -> bool {
        self.v1.values().any(|t| t.elapsed() < PEER_TTL)
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

    /// Drops peers not heard from for `PEER_TTL`.
    pub fn expire(&mut self) {
        self.ours.retain(|node, p| {
            let live = p.last_heard.elapsed() < PEER_TTL;
            if !live {
                log::info!("peer {node:016x} at {} is gone", p.addrs[0]);
            }
            live
        });
        self.v1.retain(|_, t| t.elapsed() < PEER_TTL);
    }

    /// One line per peer, for logs and status.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .ours
            .iter()
            .map(|(id, p)| {
                let addrs: Vec<String> = p.addrs.iter().map(|a| a.ip().to_string()).collect();
                format!(
                    "{id:016x} {} http {} heard {:.0?} ago{}",
                    addrs.join(" "),
                    p.http_port.map_or("?".into(), |p| p.to_string()),
                    p.last_heard.elapsed(),
                    if p.strikes >= MAX_STRIKES {
                        " (not answering)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        lines.extend(
            self.v1
                .iter()
                .map(|(ip, t)| format!("v1 {ip} heard {:.0?} ago", t.elapsed())),
        );
        lines.sort();
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!table.has_v1());
        table.heard_v1("10.0.0.9".parse().unwrap());
        assert!(table.has_v1());
        assert_eq!(table.expected(), [7]);
        table.strike(7);
        table.strike(7);
        assert!(table.expected().is_empty());
        table.heard(7, v4, None);
        assert_eq!(table.expected(), [7]);
    }
}
