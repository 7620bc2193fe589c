//! Answering the local Nix: this node as its substituter. A path is
//! looked for among the peers first (`find.rs`), then in the upstream
//! caches when the node pulls through them (`pull/`). The narinfo handed
//! to Nix names its NAR by content, `nar/<nix32 NarHash>-<hash part>.nar`,
//! so that a NAR is only ever served from peers whose own narinfo has
//! that NarHash.
//!
//! A NAR comes from one peer after another (`failover_nar.rs`), or for a
//! large NAR from several at once (`striped_nar.rs`), the fastest first
//! (`pace.rs`); else from the node that fetches it for the LAN. Every NAR
//! is checked against its NarHash on its way to Nix (`nar_hash.rs`), and
//! a peer whose bytes do not match is no longer asked for it. The streams
//! in flight are listed for the status (`transfers.rs`).

mod failover_nar;
mod find;
mod nar_hash;
mod pace;
mod striped_nar;
pub mod transfers;

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use crate::discovery::Discovery;
use crate::metrics::{Metrics, NarSource};
use crate::nix::narinfo::{HashPart, NarInfo};
use crate::nix::nix32;
use crate::nix::trust::Trust;
use crate::peer::client::PeerClient;
use crate::peer::Who;
use crate::pull::{Pull, PullNar};
use failover_nar::FailoverNar;
pub use find::NARINFO_FETCH;
use find::{Finder, Source};
use nar_hash::{checked_or_log, Blame, Prefixes};
use pace::Paces;
use striped_nar::Striped;
use transfers::{Transfer, Transfers};

/// A NAR at least this large is worth a discovery round to find every
/// peer that has it, so that the fastest serves it.
const LARGE_NAR: u64 = 8 << 20;

/// The local Nix's substituter: the peers, then the upstream caches.
pub struct Substituter {
    finder: Arc<Finder>,
    /// How fast each peer sent its recent NARs.
    paces: Arc<Paces>,
    /// What cut streams to the local Nix had sent (for its resumes).
    prefixes: Arc<Prefixes>,
    transfers: Arc<Transfers>,
    /// Upstream caches, when this node pulls through them.
    pull: Option<Arc<Pull>>,
}

/// A NAR for the local Nix.
pub struct Nar {
    /// Its size in bytes: the reply's length.
    pub total: u64,
    /// Its bytes from the byte asked for on; none for a HEAD request.
    pub body: Option<Box<dyn Read + Send>>,
    /// Where its bytes come from, for the counters.
    pub from: NarSource,
}

/// Why no NAR is handed on.
#[derive(Debug, PartialEq, Eq)]
pub enum NoNar {
    /// Nobody serves it (Nix moves on to its next substituter).
    Nowhere,
    /// The byte asked for is past its end.
    PastTheEnd,
}

impl Substituter {
    pub fn new(
        discovery: Arc<Discovery>,
        client: PeerClient,
        trust: Trust,
        pull: Option<Arc<Pull>>,
        metrics: Arc<Metrics>,
    ) -> Substituter {
        Substituter {
            finder: Arc::new(Finder::new(discovery, client, trust)),
            paces: Arc::new(Paces::default()),
            prefixes: Arc::new(Prefixes::new()),
            transfers: Arc::new(Transfers::new(metrics)),
            pull,
        }
    }

    /// The narinfo of `hash` for the local Nix: the first peer's that has
    /// the path and whose narinfo passes every check, else the first
    /// upstream's; its NAR named by NarHash.
    pub fn narinfo(&self, hash: &HashPart) -> Option<NarInfo> {
        let start = Instant::now();
        let found = match self.finder.narinfo(hash) {
            Some(source) => {
                log::debug!(
                    "{hash}: found at http://{} in {:.1?}",
                    source.peer.addr,
                    start.elapsed()
                );
                Some(source.info)
            }
            None => (self.pull.as_ref().and_then(|pull| pull.narinfo(hash))).map(|pulled| {
                log::debug!("{hash}: found upstream in {:.1?}", start.elapsed());
                pulled.info
            }),
        };
        if found.is_none() {
            log::debug!("{hash}: nobody has it ({:.1?})", start.elapsed());
        }
        found.map(|info| info.for_nix(nar_url(&info)))
    }

    /// The NAR of `hash` with `nar_hash` (any, without), from byte
    /// `offset` on: from the peers that serve it, else pulled through the
    /// upstream caches; without a body for a HEAD request.
    pub fn nar(
        &self,
        hash: &HashPart,
        nar_hash: Option<[u8; 32]>,
        offset: u64,
        head: bool,
    ) -> Result<Nar, NoNar> {
        let sources = self.finder.sources(hash, nar_hash);
        let Some(total) = sources.first().map(|s| s.info.nar_size) else {
            return self.pulled(hash, nar_hash, offset, head);
        };
        if offset >= total {
            return Err(NoNar::PastTheEnd);
        }
        let body = match head {
            true => None,
            false => {
                let path = sources[0].info.path.clone();
                let transfer = Transfer::start(&self.transfers, path, total, offset);
                match self.peer_nar(hash, sources, offset, transfer) {
                    // No peer could start it: through the upstreams, if any.
                    None => return self.pulled(hash, nar_hash, offset, head),
                    body => body,
                }
            }
        };
        Ok(Nar {
            total,
            body,
            from: NarSource::Peer,
        })
    }

    /// The NAR of `hash` from the upstream caches, when no peer has it.
    fn pulled(
        &self,
        hash: &HashPart,
        nar_hash: Option<[u8; 32]>,
        offset: u64,
        head: bool,
    ) -> Result<Nar, NoNar> {
        let Some((pull, pulled)) =
            (self.pull.as_ref()).and_then(|p| Some((p, p.matching(hash, nar_hash)?)))
        else {
            log::info!("{hash}: no peer serves the NAR asked for");
            return Err(NoNar::Nowhere);
        };
        let (nar_hash, total) = (pulled.info.nar_hash, pulled.info.nar_size);
        if offset >= total {
            return Err(NoNar::PastTheEnd);
        }
        if head {
            return Ok(Nar {
                total,
                body: None,
                from: NarSource::Upstream,
            });
        }
        let (nar, from_peer) = pull.nar(pulled).ok_or(NoNar::Nowhere)?;
        let prefixes = self.prefixes.clone();
        let body = checked_or_log(hash, nar, nar_hash, total, offset, prefixes);
        Ok(Nar {
            total,
            body: Some(body.ok_or(NoNar::Nowhere)?),
            from: match from_peer {
                true => NarSource::PeerPull,
                false => NarSource::Upstream,
            },
        })
    }

    /// The NAR of `hash` (with the NarHash of `sources`) to hand on from
    /// byte `offset`: read from its first byte, from the fastest of
    /// `sources` that serves it, failing over to the others (and then to
    /// peers found anew) mid-stream, and checked against its NarHash.
    /// `None` when none can start it, or when the client's first `offset`
    /// bytes (of a stream that was cut) are not this NAR's. For a large NAR
    /// the peers are asked anew first, so that the fastest can be chosen,
    /// or several at once. What comes from which peer goes to `transfer`.
    fn peer_nar(
        &self,
        hash: &HashPart,
        mut sources: Vec<Source>,
        offset: u64,
        transfer: Transfer,
    ) -> Option<Box<dyn Read + Send>> {
        let first = sources.first()?;
        let (nar_hash, total) = (first.info.nar_hash, first.info.nar_size);
        // A large NAR is worth a discovery round: every peer that has it,
        // as it is now (a node that restarted answers with its new
        // identity, and is not taken for two).
        let searched = total >= LARGE_NAR;
        if searched {
            let mut found = self.finder.search(hash, &nar_hash);
            let mut seen = Vec::new();
            found.retain(|s| {
                let new = !seen.contains(&s.peer.who());
                seen.push(s.peer.who());
                new
            });
            if !found.is_empty() {
                sources = found;
            }
        }
        let sources = (self.paces).fastest_first(sources, |s| s.peer.who());
        let sources = self.finder.unblamed_first(&nar_hash, sources);
        let lanes = self.lanes(&sources, total);
        let mut transfer = Some(transfer);
        if lanes >= 2 {
            let ours: Vec<Source> = sources.iter().filter(|s| !s.peer.v1).cloned().collect();
            let (finder, paces) = (self.finder.clone(), self.paces.clone());
            match Striped::start(finder, paces, *hash, ours, lanes, &mut transfer) {
                Ok(striped) => {
                    log::debug!("{hash}: NAR of {total} bytes from {lanes} peers at once");
                    let prefixes = self.prefixes.clone();
                    return checked_or_log(hash, striped, nar_hash, total, offset, prefixes);
                }
                Err(e) => log::info!("{hash}: {e}; one peer at a time"),
            }
        }
        let parts = (self.finder.clone(), self.paces.clone());
        let nar = (*hash, nar_hash, total);
        let nar = match FailoverNar::start(parts, nar, sources, searched, transfer?) {
            Ok(nar) => nar,
            Err(e) => {
                log::info!("{hash}: {e}");
                return None;
            }
        };
        log::debug!(
            "{hash}: NAR of {total} bytes from {}{}",
            nar.peer().map_or_else(String::new, |a| a.to_string()),
            if offset > 0 {
                format!(", handed on from byte {offset}")
            } else {
                String::new()
            }
        );
        checked_or_log(hash, nar, nar_hash, total, offset, self.prefixes.clone())
    }

    /// How many peers to fetch a NAR of `total` bytes from at once: the
    /// first k of ours among `sources` (fastest first), up to
    /// `striped_nar::MAX_LANES`, for the k that makes k times the slowest
    /// of them largest (a stripe goes at its slowest lane's pace; a peer
    /// not measured yet counts as the fastest). 1 when one peer alone is
    /// faster; none for a NAR under `striped_nar::MIN_NAR`.
    fn lanes(&self, sources: &[Source], total: u64) -> usize {
        if total < striped_nar::MIN_NAR {
            return 0;
        }
        let paces: Vec<Option<f64>> = (sources.iter())
            .filter(|s| !s.peer.v1)
            .take(striped_nar::MAX_LANES)
            .map(|s| self.paces.pace(&s.peer.who()))
            .collect();
        let best = paces.iter().flatten().fold(0.0, |a: f64, &b| a.max(b));
        let mut slowest = f64::INFINITY;
        let mut chosen = (0, 0.0);
        for (i, pace) in paces.iter().enumerate() {
            slowest = slowest.min(pace.unwrap_or(best).max(f64::MIN_POSITIVE));
            let k = i + 1;
            let rate = k as f64 * slowest;
            if rate >= chosen.1 || best == 0.0 {
                chosen = (k, rate);
            }
        }
        chosen.0
    }

    /// The pace learnt of `who`, in bytes a second (for the status).
    pub fn pace(&self, who: &Who) -> Option<f64> {
        self.paces.pace(who)
    }

    /// The pace learnt of each peer, in bytes a second (for the metrics).
    pub fn paces(&self) -> Vec<(Who, f64)> {
        self.paces.paces()
    }

    /// The NAR streams from peers in flight.
    pub fn transfers(&self) -> &Transfers {
        &self.transfers
    }
}

/// A pulled NAR whose bytes do not match tells its puller, or the upstream.
impl Blame for PullNar {
    fn bad_bytes(&mut self) {
        self.blame();
    }
}

/// The URL of a NAR on this node, as the narinfo handed to Nix names it:
/// by NarHash and hash part.
pub fn nar_url(info: &NarInfo) -> String {
    format!(
        "nar/{}-{}.nar",
        nix32::encode(&info.nar_hash),
        info.hash_part()
    )
}
