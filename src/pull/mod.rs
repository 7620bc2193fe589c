//! Pulling through upstream caches (`--upstream`, e.g. cache.nixos.org)
//! for a path no peer has, so that each upstream path crosses the internet
//! once per LAN, however many machines want it at the same moment.
//!
//! - `https.rs`: HTTPS to the upstreams, as Nix does it (CAs, proxies).
//! - `decode.rs`: xz and zstd NARs decompressed, so every Nix reads them.
//! - `spool.rs`: the downloads under way, in files every reader follows.
//! - `pullers.rs`: which node of the LAN fetches a path (the first in
//!   rendezvous order), and the pullers passed over.
//! - here: the upstreams' narinfo (checked, cached); which peers' requests
//!   for pulled NARs this node takes on; and a pulled NAR for the local
//!   Nix, from one node after another.
//!
//! A pulled NAR for the local Nix comes from the node that fetches it for
//! the LAN; when that node is unreachable, refuses or breaks off, the next
//! in the order goes on from the byte reached, and this node itself in the
//! end, which fetches from the upstream directly. A puller that fails is
//! skipped for the rest of the NAR with every id claimed at its address;
//! after `MAX_PULLER_FAILURES` pullers failed one NAR, no other is asked:
//! this node fetches it itself. Its bytes go to Nix through the NarHash check
//! (`substitute/nar_hash.rs`): when they fail it, the pullers that sent any
//! of them are blamed (`pullers.rs`); only when this node's own download
//! sent them all is the upstream's answer forgotten.
//!
//! A peer asks this node for a pulled NAR (`/peer/pull/…`) because it ranks
//! this node first. That costs no upstream request unless this node
//! remembers the upstream's narinfo (its own Nix asked for the path), or
//! it ranks itself first too and the peer proves that an upstream has the
//! path: it sends the upstream's narinfo (`PROOF_HEADER`), which must be
//! signed by a key the local Nix trusts. A stranger's requests for made-up
//! paths cost nothing upstream, and each source may ask `PEER_PULLS` times
//! a second (`PEER_PULL_BURST` at once).

mod decode;
mod https;
mod pullers;
mod spool;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

pub use https::Cache;
use https::{Client, UpstreamError};
use pullers::{Pullers, Via, Why};
use spool::{Open, Spool};

use crate::base::bounded::Bounded;
use crate::base::logs::Throttle;
use crate::base::rate::RateLimit;
use crate::discovery::Discovery;
use crate::metrics::{Metrics, PassedOver};
use crate::nix::narinfo::{HashPart, NarInfo};
use crate::nix::nix32;
use crate::nix::trust::Trust;
use crate::peer::client::{FetchError, PeerClient};
use crate::peer::Peer;
use crate::store::Store;

/// The header a node sends with `/peer/pull/` requests: the upstream's
/// narinfo of the path (base64), proof that an upstream has it.
pub const PROOF_HEADER: &str = "X-Peerix-Narinfo";
/// A proof is at most this long (base64): a narinfo with so many
/// references that it is longer goes without, and only a fetcher that
/// remembers the path serves it.
const PROOF_MAX: usize = 8 * 1024;
/// `/peer/pull/` requests a second each source may make, and at once.
const PEER_PULLS: f64 = 20.0;
const PEER_PULL_BURST: f64 = 100.0;
/// Pullers that may fail one NAR before this node fetches it itself,
/// asking no other.
const MAX_PULLER_FAILURES: usize = 3;

/// The longest all upstreams together may take to answer a narinfo.
const NARINFO_TIMEOUT: Duration = Duration::from_secs(5);
/// An upstream's narinfo is remembered this long (a NAR request follows
/// its narinfo within seconds; Nix itself keeps it 30 days).
const FOUND_TTL: Duration = Duration::from_secs(3600);
/// "No upstream has it" is remembered this long: briefly, since an
/// upstream may get it any time.
const MISSING_TTL: Duration = Duration::from_secs(30);
/// Upstream answers remembered, per generation.
const ANSWERS: usize = 8192;

static UPSTREAM_FAILED: Throttle = Throttle::new();

/// How this node pulls through upstream caches.
pub struct Settings {
    pub caches: Vec<Cache>,
    /// The spool's directory, and its size in bytes.
    pub spool_dir: PathBuf,
    pub spool_bytes: u64,
}

/// A path an upstream has: which, and its narinfo there (checked).
#[derive(Clone, Debug)]
pub struct Pulled {
    cache: usize,
    pub info: NarInfo,
}

#[derive(Clone)]
enum Answer {
    Found(Box<Pulled>, Instant),
    Missing(Instant),
}

pub struct Pull {
    caches: Vec<Cache>,
    client: Arc<Client>,
    trust: Trust,
    answers: Mutex<Bounded<HashPart, Answer>>,
    spool: Spool,
    discovery: Arc<Discovery>,
    peers: PeerClient,
    pullers: Pullers,
    /// `/peer/pull/` requests, per source.
    peer_pulls: Mutex<RateLimit>,
    metrics: Arc<Metrics>,
}

/// Why a peer's request for a pulled NAR is not taken on.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a path this node fetches, or none an upstream has (404).
    NotHere,
    /// Its source asked too often (503).
    TooMany,
}

impl Pull {
    pub fn new(
        settings: Settings,
        trust: Trust,
        discovery: Arc<Discovery>,
        peers: PeerClient,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Pull, String> {
        let spool = Spool::new(
            settings.spool_dir,
            settings.spool_bytes,
            Box::new(move |hash| store.lookup(hash).is_some()),
        );
        Ok(Pull {
            caches: settings.caches,
            client: Arc::new(Client::new()?),
            trust,
            answers: Mutex::new(Bounded::new(ANSWERS)),
            spool,
            discovery,
            peers,
            pullers: Pullers::new(),
            peer_pulls: Mutex::new(RateLimit::with_burst(PEER_PULLS, PEER_PULL_BURST)),
            metrics,
        })
    }

    /// What is remembered of the upstreams' answers for `hash`, while it is
    /// fresh.
    fn remembered(&self, hash: &HashPart) -> Option<Answer> {
        let answer = self.answers.lock().ok()?.get(hash).cloned()?;
        match &answer {
            Answer::Found(_, at) if at.elapsed() < FOUND_TTL => Some(answer),
            Answer::Missing(at) if at.elapsed() < MISSING_TTL => Some(answer),
            _ => None,
        }
    }

    /// The narinfo of the first upstream that has `hash`, if it passes
    /// every check a peer's does (signed by a key the local Nix trusts);
    /// remembered, misses briefly. Within `NARINFO_TIMEOUT`.
    pub fn narinfo(&self, hash: &HashPart) -> Option<Pulled> {
        match self.remembered(hash) {
            Some(Answer::Found(p, _)) => return Some(*p),
            Some(Answer::Missing(_)) => return None,
            None => {}
        }
        let deadline = Instant::now() + NARINFO_TIMEOUT;
        let mut failed = false;
        for (i, cache) in self.caches.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failed = true;
                break;
            }
            let why = match self.client.narinfo(cache, hash, left) {
                Ok(mut info) => match self.trust.keep_trusted(&mut info) {
                    true => {
                        let pulled = Pulled { cache: i, info };
                        let found = Answer::Found(Box::new(pulled.clone()), Instant::now());
                        self.remember(hash, found);
                        return Some(pulled);
                    }
                    false => "not signed by a key the local Nix trusts".to_string(),
                },
                Err(UpstreamError::Missing) => continue,
                Err(e) => {
                    failed = true;
                    e.to_string()
                }
            };
            UPSTREAM_FAILED.log(log::Level::Warn, || {
                format!("{cache}/{hash}.narinfo: {why}; trying the next upstream")
            });
        }
        // A miss is remembered only when every upstream said so.
        if !failed {
            self.remember(hash, Answer::Missing(Instant::now()));
        }
        None
    }

    fn remember(&self, hash: &HashPart, answer: Answer) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.insert(*hash, answer);
        }
    }

    /// The upstream narinfo of `hash`, if its NarHash is `nar_hash` (or
    /// none was asked for).
    pub fn matching(&self, hash: &HashPart, nar_hash: Option<[u8; 32]>) -> Option<Pulled> {
        self.narinfo(hash)
            .filter(|p| nar_hash.is_none_or(|n| n == p.info.nar_hash))
    }

    /// The upstream narinfo of `hash` for a peer's request (from `from`)
    /// for its NAR with `nar_hash`, `proof` the upstream narinfo it sent:
    /// what this node remembers, else, when this node ranks itself first
    /// for the path and `proof` shows that an upstream has it, its own
    /// upstream's answer. No upstream request otherwise.
    pub fn for_peer(
        &self,
        hash: &HashPart,
        nar_hash: [u8; 32],
        proof: Option<&str>,
        from: Option<IpAddr>,
    ) -> Result<Pulled, Refusal> {
        if let Some(ip) = from {
            let allowed = self.peer_pulls.lock().map_or(true, |mut r| r.allow(ip));
            if !allowed {
                return Err(Refusal::TooMany);
            }
        }
        match self.remembered(hash) {
            Some(Answer::Found(p, _)) if p.info.nar_hash == nar_hash => return Ok(*p),
            Some(_) => return Err(Refusal::NotHere),
            None => {}
        }
        if !self.proven(hash, &nar_hash, proof) {
            return Err(Refusal::NotHere);
        }
        if self.order(hash, &nar_hash).first() != Some(&Via::Here) {
            return Err(Refusal::NotHere);
        }
        self.matching(hash, Some(nar_hash)).ok_or(Refusal::NotHere)
    }

    /// True when `proof` is an upstream's narinfo of `hash` with
    /// `nar_hash`, signed by a key the local Nix trusts.
    fn proven(&self, hash: &HashPart, nar_hash: &[u8; 32], proof: Option<&str>) -> bool {
        let text = (proof.filter(|p| p.len() <= PROOF_MAX))
            .and_then(|p| STANDARD.decode(p.trim()).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match text.map(|t| NarInfo::parse(&t)) {
            Some(Ok(mut info)) => {
                info.hash_part() == *hash
                    && info.nar_hash == *nar_hash
                    && self.trust.keep_trusted(&mut info)
            }
            _ => false,
        }
    }

    /// The NAR of `pulled` for the local Nix, from its first byte: from
    /// the node that fetches it for the LAN, failing over down the
    /// rendezvous order to this node itself. `None` when no node can start
    /// it. With it, whether it starts from a peer (over the LAN) rather
    /// than from this node's own download.
    pub fn nar(self: &Arc<Self>, pulled: Pulled) -> Option<(PullNar, bool)> {
        let hash = pulled.info.hash_part();
        let order = self.order(&hash, &pulled.info.nar_hash);
        if let Some(Via::Peer(_, first)) = order.first() {
            log::debug!("{hash}: fetched for the LAN by {first}");
        }
        let proof = Some(STANDARD.encode(pulled.info.render())).filter(|p| p.len() <= PROOF_MAX);
        let mut nar = PullNar {
            pull: self.clone(),
            pulled,
            proof,
            pos: 0,
            order: order.into(),
            current: None,
            sent_by: Vec::new(),
            failed: Vec::new(),
        };
        match nar.open_next() {
            Ok(opened) => {
                let from_peer = matches!(nar.current.insert(opened).0, Via::Peer(..));
                Some((nar, from_peer))
            }
            Err(e) => {
                log::info!("{hash}: {e}");
                None
            }
        }
    }

    /// This node's own download of `hash` sent bytes that do not hash to
    /// its NarHash: its narinfo is asked for anew.
    fn forget(&self, hash: &HashPart) {
        log::warn!("{hash}: the NAR pulled through the upstream does not match its NarHash");
        if let Ok(mut answers) = self.answers.lock() {
            answers.remove(hash);
        }
    }

    /// The NAR of `pulled` from byte `offset` on, fetched by this node
    /// (through the spool): for the local Nix (`local`) and for peers.
    pub fn nar_here(
        &self,
        pulled: &Pulled,
        offset: u64,
        local: bool,
    ) -> io::Result<Box<dyn Read + Send>> {
        let (client, cache, info) = (
            self.client.clone(),
            self.caches[pulled.cache].clone(),
            pulled.info.clone(),
        );
        let open: Open = Arc::new(move |from| {
            (client.nar(&cache, &info, from)).map_err(|e| io::Error::other(e.to_string()))
        });
        let info = &pulled.info;
        let nar = (info.nar_hash, info.nar_size);
        self.spool.read(&info.hash_part(), nar, offset, open, local)
    }

    /// What keeps this node from sharing what it pulls, if anything (see
    /// `Spool::warning`).
    pub fn warning(&self) -> Option<String> {
        self.spool.warning()
    }

    /// The nodes that may serve the NAR of `hash` with `nar_hash`, in
    /// rendezvous order (`pullers.rs`).
    fn order(&self, hash: &HashPart, nar_hash: &[u8; 32]) -> Vec<Via> {
        let (pullers, me) = (self.discovery.pullers(), self.discovery.node());
        self.pullers.order(pullers, me, hash, nar_hash)
    }

    /// `via` is passed over for the NAR with `nar_hash`, for `why`.
    fn pass_over(&self, via: Via, why: Why, nar_hash: &[u8; 32]) {
        self.pullers.pass_over(via, why, nar_hash);
        self.metrics.passed_over(PassedOver::Puller, why.reason());
    }
}

/// The URL of a pulled NAR on a peer's `/peer/` routes.
pub fn peer_nar_url(info: &NarInfo) -> String {
    format!(
        "pull/{}-{}.nar",
        nix32::encode(&info.nar_hash),
        info.hash_part()
    )
}

/// A pulled NAR for the local Nix, from one node after another: when the
/// current one fails, the next goes on from the same byte.
pub struct PullNar {
    pull: Arc<Pull>,
    pulled: Pulled,
    /// What is sent to pullers as proof that an upstream has the path.
    proof: Option<String>,
    pos: u64,
    order: VecDeque<Via>,
    current: Option<(Via, Box<dyn Read + Send>)>,
    /// Who sent its bytes, each once.
    sent_by: Vec<Via>,
    /// The sources of pullers that failed it: no id there is asked again.
    failed: Vec<IpAddr>,
}

impl PullNar {
    fn open_next(&mut self) -> io::Result<(Via, Box<dyn Read + Send>)> {
        let hash = self.pulled.info.hash_part();
        loop {
            // Enough pullers failed: this node goes on itself, or none.
            if self.failed.len() >= MAX_PULLER_FAILURES {
                self.order.retain(|v| *v == Via::Here);
            }
            let Some(via) = self.order.pop_front() else {
                break;
            };
            if via.source().is_some_and(|s| self.failed.contains(&s)) {
                continue;
            }
            let opened = match via {
                Via::Here => (self.pull.nar_here(&self.pulled, self.pos, true))
                    .map_err(|e| (Why::Failed, e.to_string())),
                Via::Peer(node, addr) => {
                    let found = Peer {
                        addr,
                        v1: false,
                        node: Some(node),
                    };
                    let info = NarInfo {
                        url: peer_nar_url(&self.pulled.info),
                        ..self.pulled.info.clone()
                    };
                    let proof = self.proof.clone().map(|p| (PROOF_HEADER, p));
                    let asked = (self.pos, true, None);
                    let peers = &self.pull.peers;
                    (peers.nar_with(&found, &info, asked, proof.into_iter().collect())).map_err(
                        |e| match e {
                            FetchError::Status(_) => (Why::Refused, e.to_string()),
                            _ => (Why::Failed, e.to_string()),
                        },
                    )
                }
            };
            match opened {
                Ok(body) => return Ok((via, body)),
                Err((why, e)) => {
                    log::info!("{hash}: the pulled NAR from {via}: {e}; trying the next");
                    self.passed_over(via, why);
                }
            }
        }
        Err(io::Error::other(format!(
            "no node can go on with the pulled NAR from byte {}",
            self.pos
        )))
    }

    /// `via` let this NAR down, for `why`: no id at its address is asked
    /// for it again, and it is passed over (`pullers.rs`).
    fn passed_over(&mut self, via: Via, why: Why) {
        let Some(source) = via.source() else { return };
        if !self.failed.contains(&source) {
            self.failed.push(source);
        }
        self.pull.pass_over(via, why, &self.pulled.info.nar_hash);
    }

    /// Its bytes did not hash to its NarHash: the pullers that sent any of
    /// them are passed over; when this node's own download sent them all,
    /// the upstream's answer is forgotten.
    pub fn blame(&mut self) {
        let hash = self.pulled.info.hash_part();
        let pullers: Vec<Via> = (self.sent_by.iter())
            .filter(|v| v.source().is_some())
            .copied()
            .collect();
        if pullers.is_empty() {
            return self.pull.forget(&hash);
        }
        for via in pullers {
            log::warn!(
                "{hash}: the pulled NAR from {via} does not match its NarHash; \
                 that address is not asked for it again"
            );
            self.passed_over(via, Why::WrongBytes);
        }
    }
}

/// How a read error of a puller's stream counts.
fn why_broke(e: &io::Error) -> Why {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Why::Stalled,
        _ => Why::Failed,
    }
}

impl Read for PullNar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let total = self.pulled.info.nar_size;
        if self.pos >= total || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(total - self.pos).unwrap_or(usize::MAX));
        loop {
            let (via, body) = match &mut self.current {
                Some(current) => current,
                None => {
                    let opened = self.open_next()?;
                    log::info!(
                        "{}: going on from {} at byte {}",
                        self.pulled.info.hash_part(),
                        opened.0,
                        self.pos
                    );
                    self.current.insert(opened)
                }
            };
            let via = *via;
            let (why, failure) = match body.read(&mut buf[..want]) {
                Ok(0) => (Why::Failed, "it ended early".to_string()),
                Ok(n) => {
                    if !self.sent_by.contains(&via) {
                        self.sent_by.push(via);
                    }
                    self.pos += n as u64;
                    return Ok(n);
                }
                // This node's download failed the NarHash: nothing to go
                // on with, the upstream's answer is asked for anew.
                Err(e) if via == Via::Here && e.kind() == io::ErrorKind::InvalidData => {
                    self.pull.forget(&self.pulled.info.hash_part());
                    return Err(e);
                }
                Err(e) => (why_broke(&e), e.to_string()),
            };
            log::info!(
                "{}: the pulled NAR from {via} broke at byte {} of {total} ({failure})",
                self.pulled.info.hash_part(),
                self.pos,
            );
            self.current = None;
            self.passed_over(via, why);
        }
    }
}
