//! Who a peer is: where to reach it over HTTP, its node id, and whether
//! it is an original Peerix.

use std::net::{IpAddr, SocketAddr};

/// A node of ours names itself with a random 64-bit id, new at each start.
pub type NodeId = u64;

/// A peer, as discovery found it: where to reach it over HTTP, and who
/// it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's HTTP address (with its scope, for IPv6 link-local).
    pub addr: SocketAddr,
    /// An original Peerix, whose routes are the `/local/…` ones.
    pub v1: bool,
    /// The node id of a peer of ours (original nodes have none).
    pub node: Option<NodeId>,
}

impl Peer {
    /// Who the peer is, whichever of its addresses it was heard from: one
    /// node heard over IPv4 and IPv6 link-local is one source of a NAR.
    pub fn who(&self) -> Who {
        match self.node {
            Some(node) => Who::Node(node),
            None => Who::Addr(self.addr.ip().to_canonical()),
        }
    }
}

/// A peer's identity: its node id, or for an original node its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Who {
    Node(NodeId),
    Addr(IpAddr),
}
