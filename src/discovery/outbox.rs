//! What this node sends on the discovery socket: its datagrams, encoded
//! and (ours, with a network key) sealed, from the workers, the UDP thread
//! and the verdicts thread alike; the answers to peers' queries; and the
//! empty datagram that wakes the UDP thread.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

use super::wire::{Datagram, Message, NodeId};
use crate::nix::narinfo::HashPart;
use crate::peer::network_key::NetworkKey;

/// Sends this node's datagrams: encodes them, and seals ours with the
/// network key when there is one. Shared by the workers, the UDP thread
/// and the verdicts thread.
pub struct Outbox {
    pub node: NodeId,
    pub port: u16,
    pub socket: UdpSocket,
    pub key: Option<Arc<NetworkKey>>,
}

impl Outbox {
    pub fn send(&self, datagram: &Datagram, to: SocketAddr) {
        let mut bytes = datagram.encode();
        if let (Some(key), Datagram::V2 { .. }) = (&self.key, datagram) {
            key.seal(&mut bytes);
        }
        if let Err(e) = self.socket.send_to(&bytes, to) {
            log::debug!("discovery: cannot send to {to}: {e}");
        }
    }

    /// A datagram of ours.
    pub fn v2(&self, id: u32, message: Message) -> Datagram {
        Datagram::V2 {
            node: self.node,
            id,
            message,
        }
    }

    /// The answer to a query for `hash`, from `shared`: whether this node
    /// offers the path.
    pub fn answer(&self, query: &Query, shared: bool) {
        let datagram = match query.v1 {
            true if shared => Datagram::V1Reply {
                id: query.id,
                port: self.port,
                hash: query.hash,
            },
            true => return, // an original Peerix expects silence on a miss
            false if shared => self.v2(
                query.id,
                Message::Have {
                    hash: query.hash,
                    port: self.port,
                },
            ),
            false => self.v2(query.id, Message::NotHere { hash: query.hash }),
        };
        log::debug!(
            "discovery: {} asks for {}: {}",
            query.from,
            query.hash,
            if shared { "have" } else { "not here" }
        );
        self.send(&datagram, query.from);
    }

    /// Wakes the UDP thread from its receive with an empty datagram to
    /// itself, which it ignores.
    pub fn wake(&self) {
        let _ = self
            .socket
            .send_to(&[], (IpAddr::from(Ipv6Addr::LOCALHOST), self.port))
            .or_else(|_| {
                self.socket
                    .send_to(&[], (IpAddr::from([127, 0, 0, 1]), self.port))
            });
    }
}

/// A peer's query, to answer.
pub struct Query {
    pub hash: HashPart,
    pub id: u32,
    pub from: SocketAddr,
    pub v1: bool,
}
