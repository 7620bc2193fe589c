//! A request as the routes see it, and who it comes from.

use std::net::{IpAddr, SocketAddr};

use crate::peer::stripe::Stripe;

/// Who a request comes from: the one place where loopback is told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// The local Nix (or another process of this machine).
    Local,
    /// A peer, or anyone else on the network.
    Peer,
}

impl Client {
    pub fn of(addr: SocketAddr) -> Client {
        match addr.ip().to_canonical().is_loopback() {
            true => Client::Local,
            false => Client::Peer,
        }
    }
}

/// A request as the routes see it.
pub struct Incoming<'a> {
    /// The path, without the query.
    pub path: &'a str,
    pub head: bool,
    pub from: Client,
    /// Where the body should start: the `N` of `Range: bytes=N-`.
    pub range: Option<u64>,
    /// The client asked for the framed, compressible NAR stream
    /// (`peer/framed.rs`): only nodes of ours do.
    pub framed: bool,
    /// The stripe of the NAR asked for (`peer/stripe.rs`), with `framed`.
    pub stripe: Option<Stripe>,
    /// The client's address.
    pub peer: Option<IpAddr>,
    /// The upstream narinfo a peer sends with `/peer/pull/` (base64), as
    /// proof that an upstream has the path (`pull::PROOF_HEADER`).
    pub proof: Option<String>,
    /// True when the client prefers JSON (`Accept: application/json`).
    pub json: bool,
}
