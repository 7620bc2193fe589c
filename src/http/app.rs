//! What every worker needs to answer a request, the same for every
//! request: the node's parts (store, discovery, substituter, upstream
//! caches, metrics), its keys and settings, and what it was started with.

use std::sync::{Arc, Mutex};

use crate::base::rate::RateLimit;
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use crate::nix::keys::SigningKey;
use crate::peer::framed;
use crate::peer::network_key::NetworkKey;
use crate::pull::Pull;
use crate::store::Store;
use crate::substitute::Substituter;

/// What every worker needs to answer a request; never changes.
pub struct App {
    pub store: Arc<Store>,
    pub key: Option<SigningKey>,
    pub priority: u32,
    pub discovery: Arc<Discovery>,
    /// The local Nix's substituter: the peers, then upstream caches.
    pub substituter: Arc<Substituter>,
    /// Upstream caches, when this node pulls through them (for peers).
    pub pull: Option<Arc<Pull>>,
    pub metrics: Arc<Metrics>,
    /// When set, requests for the peer routes must be authenticated.
    pub network_key: Option<Arc<NetworkKey>>,
    /// Whether NARs to peers that ask for it are compressed, and how.
    pub compress: framed::Mode,
    /// The port peers use, for status.
    pub port: u16,
    /// What the node was started with, for status.
    pub about: About,
    /// The bytes each source's `Range` and stripe requests may make Nix's
    /// serializer read and drop (see `range_skips`).
    pub range_skips: Mutex<RateLimit>,
}

/// What peers' `Range` and stripe requests may cost: each source may have
/// this node read and drop 256 MiB a second of NAR bytes (before the asked
/// start, and of the stripes not asked for), 2 GiB at once (a peer of
/// ours resumes a broken NAR once, or stripes one; a larger NAR passes
/// when the budget is full, and is paid back). Past that, 503: a stranger
/// asking for the last byte of the largest NAR, or a stripe of none of
/// its bytes, over and over costs whole reads of it.
pub fn range_skips() -> Mutex<RateLimit> {
    const MIB: f64 = 1024.0 * 1024.0;
    Mutex::new(RateLimit::with_burst(256.0 * MIB, 2048.0 * MIB))
}

/// What the node was started with, for status.
pub struct About {
    /// Names of the keys peers' narinfo must be signed by.
    pub trusted_keys: Vec<String>,
    /// The name of this node's signing key.
    pub signing_key: Option<String>,
    /// The public half of the LAN key this node signs with too, when it
    /// has a network key (`NAME:BASE64`, the line for Nix).
    pub lan_key: Option<String>,
    /// The share policy, in a few words.
    pub share: String,
    pub network_key: bool,
    pub broadcast: bool,
    pub extra_hosts: Vec<String>,
    /// What is unwise about the configuration.
    pub warnings: Vec<String>,
}
