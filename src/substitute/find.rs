//! Finding a path among the peers: asking discovery who has it, fetching
//! and checking each one's narinfo before Nix sees any of it (parsed as
//! Nix parses it, raw, signed by a key the local Nix trusts), remembering
//! which peers serve which NAR, and which peers sent bytes that did not
//! match a NarHash.
//!
//! Two machines that built one derivation themselves may hold different
//! NARs (different NarHashes) for the same store path. So a NAR is always
//! asked for by its NarHash, and served only from peers whose own narinfo
//! for the path has that NarHash. Peers are told apart by node id (one
//! node heard over IPv4 and IPv6 is one source), original nodes by
//! address. Nix asks for the NAR right after the narinfo: the peers whose
//! narinfo was checked are remembered, so that needs no second discovery
//! round and no second narinfo fetch.
//!
//! What a peer's narinfo must be to reach Nix (Nix remembers a refused
//! one for 30 days): every field as Nix parses it (`nix/narinfo.rs`: the
//! store path asked for, references and deriver valid names, a sha256
//! NarHash, a content address in a form every Nix from 2.3 reads),
//! `Compression: none` (a peer offering another is skipped), and a
//! signature by a key of the local Nix's `trusted-public-keys`, of
//! `--trusted-key` or, where Nix trusts it, of this node's LAN key
//! (`nix/trust.rs`); `FileHash`, `FileSize` and signatures of the wrong
//! form are not passed on.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::base::bounded::Bounded;
use crate::discovery::Discovery;
use crate::nix::narinfo::{HashPart, NarInfo};
use crate::nix::nix32;
use crate::nix::trust::Trust;
use crate::peer::client::PeerClient;
use crate::peer::stripe::Stripe;
use crate::peer::{Peer, Who};

/// The longest a narinfo fetch from one peer may take. A narinfo request
/// is answered within the discovery timeout plus this.
pub const NARINFO_FETCH: Duration = Duration::from_secs(2);

/// Paths whose sources are remembered, per generation of the cache.
const REMEMBERED: usize = 4096;

/// Sources remembered per path, at most.
const SOURCES_PER_PATH: usize = 8;

/// A peer that serves a path's NAR: where, and its narinfo for the path
/// (checked: parsed strictly, signed by a key the local Nix trusts, raw).
#[derive(Clone, Debug)]
pub struct Source {
    pub peer: Peer,
    pub info: NarInfo,
}

/// The peers as sources of paths: who has what, checked and remembered.
pub struct Finder {
    discovery: Arc<Discovery>,
    client: PeerClient,
    trust: Trust,
    known: Mutex<Bounded<HashPart, Vec<Source>>>,
    /// Peers that sent bytes not matching a NarHash: alone (never asked
    /// for that NAR again) or in a stream spliced from several (asked
    /// last).
    blamed: Mutex<Bounded<NarHash, Vec<(Who, Guilt)>>>,
}

type NarHash = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guilt {
    /// It alone sent a NAR that did not match.
    Sure,
    /// It was one of several that a NAR that did not match came from.
    Suspect,
}

impl Finder {
    pub fn new(discovery: Arc<Discovery>, client: PeerClient, trust: Trust) -> Finder {
        Finder {
            discovery,
            client,
            trust,
            known: Mutex::new(Bounded::new(REMEMBERED)),
            blamed: Mutex::new(Bounded::new(REMEMBERED)),
        }
    }

    /// The narinfo of the first peer that has `hash` and whose narinfo
    /// passes every check, remembered as a source of its NAR.
    pub fn narinfo(&self, hash: &HashPart) -> Option<Source> {
        let mut first = None;
        self.find(hash, |source| {
            first = Some(source);
            false
        });
        first
    }

    /// The peers that serve the NAR of `hash` whose NarHash is `nar_hash`:
    /// those remembered, else those found now. Without a NarHash (a NAR URL
    /// from before it was part of it, which Nix may have kept for 30 days),
    /// every peer that has the path is asked, and they must all agree on
    /// one NarHash: otherwise Nix could get a NAR its narinfo does not
    /// describe, and there are none.
    pub fn sources(&self, hash: &HashPart, nar_hash: Option<[u8; 32]>) -> Vec<Source> {
        if let Some(want) = nar_hash {
            let known = self.known(hash, &want);
            return match known.is_empty() {
                true => self.search(hash, &want),
                false => known,
            };
        }
        let mut all: Vec<Source> = Vec::new();
        self.find(hash, |s| {
            all.push(s);
            true
        });
        if all
            .windows(2)
            .any(|w| w[0].info.nar_hash != w[1].info.nar_hash)
        {
            log::warn!(
                "{hash}: peers hold different NARs for it; a NAR URL without its NarHash is not served"
            );
            return Vec::new();
        }
        match all.first().map(|s| s.info.nar_hash) {
            Some(nar_hash) => self.unblamed_first(&nar_hash, all),
            None => all,
        }
    }

    /// The peers that serve the NAR of `hash` whose NarHash is `nar_hash`,
    /// asked now.
    pub fn search(&self, hash: &HashPart, nar_hash: &[u8; 32]) -> Vec<Source> {
        let mut found = Vec::new();
        self.find(hash, |s| {
            if s.info.nar_hash == *nar_hash {
                found.push(s);
            }
            true
        });
        self.unblamed_first(nar_hash, found)
    }

    /// `sources` without the peers surely guilty of wrong bytes for
    /// `nar_hash`, the suspects last.
    pub fn unblamed_first(&self, nar_hash: &[u8; 32], mut sources: Vec<Source>) -> Vec<Source> {
        let Ok(blamed) = self.blamed.lock() else {
            return sources;
        };
        let Some(guilty) = blamed.get(nar_hash) else {
            return sources;
        };
        let guilt = |s: &Source| {
            let who = s.peer.who();
            guilty.iter().find(|(w, _)| *w == who).map(|(_, g)| *g)
        };
        sources.retain(|s| guilt(s) != Some(Guilt::Sure));
        sources.sort_by_key(|s| guilt(s).is_some());
        sources
    }

    /// Peers sent bytes that do not hash to `nar_hash`: one alone is never
    /// asked for it again; of several, each is asked last from now on.
    pub fn blame(&self, hash: &HashPart, nar_hash: &[u8; 32], from: &[(Who, SocketAddr)]) {
        let guilt = match from.len() {
            1 => Guilt::Sure,
            _ => Guilt::Suspect,
        };
        let names: Vec<String> = from.iter().map(|(_, a)| a.to_string()).collect();
        log::warn!(
            "{hash}: the NAR from {} does not match its NarHash {}; {}",
            names.join(" and "),
            nix32::encode(nar_hash),
            match guilt {
                Guilt::Sure => "that peer is no longer asked for it",
                Guilt::Suspect => "those peers are asked for it last",
            }
        );
        if let Ok(mut blamed) = self.blamed.lock() {
            let guilty = blamed.entry_or_insert_with(*nar_hash, Vec::new);
            for (who, _) in from {
                match guilty.iter_mut().find(|(w, _)| w == who) {
                    Some((_, g)) if *g == Guilt::Suspect => *g = guilt,
                    Some(_) => {}
                    None => guilty.push((*who, guilt)),
                }
            }
            guilty.truncate(SOURCES_PER_PATH * 2);
        }
        if guilt == Guilt::Sure {
            if let Ok(mut known) = self.known.lock() {
                if let Some(sources) = known.get_mut(hash) {
                    sources
                        .retain(|s| !(s.info.nar_hash == *nar_hash && s.peer.who() == from[0].0));
                }
            }
        }
    }

    /// Opens `source`'s NAR from byte `pos`: the framed stream where
    /// `compressible`, `stripe`'s bytes alone when given.
    pub fn open(
        &self,
        source: &Source,
        pos: u64,
        compressible: bool,
        stripe: Option<Stripe>,
    ) -> io::Result<Box<dyn Read + Send>> {
        (self.client)
            .nar(&source.peer, &source.info, pos, compressible, stripe)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// The sources remembered for `hash` with `nar_hash`.
    fn known(&self, hash: &HashPart, nar_hash: &[u8; 32]) -> Vec<Source> {
        let Ok(known) = self.known.lock() else {
            return Vec::new();
        };
        (known.get(hash).into_iter().flatten())
            .filter(|s| s.info.nar_hash == *nar_hash)
            .cloned()
            .collect()
    }

    fn remember(&self, source: &Source) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        let sources = known.entry_or_insert_with(source.info.hash_part(), Vec::new);
        // Another identity at the same address is a node that restarted.
        sources.retain(|s| s.peer.who() != source.peer.who() && s.peer.addr != source.peer.addr);
        sources.insert(0, source.clone());
        sources.truncate(SOURCES_PER_PATH);
    }

    /// Asks the peers for `hash` and checks the narinfo of each that has
    /// it, as they answer; `each` gets every one that passes, and says
    /// whether to go on. Within the discovery timeout plus one narinfo
    /// fetch.
    fn find(&self, hash: &HashPart, mut each: impl FnMut(Source) -> bool) {
        let start = Instant::now();
        let deadline = start + self.discovery.timeout() + NARINFO_FETCH;
        let mut asked = self.discovery.ask(hash);
        while let Some(peer) = asked.next_have() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.checked(&peer, hash, left.min(NARINFO_FETCH)) {
                Ok(info) => {
                    log::debug!(
                        "{hash}: narinfo from {} after {:.1?}",
                        peer.addr,
                        start.elapsed()
                    );
                    let source = Source { peer, info };
                    self.remember(&source);
                    if !each(source) {
                        return;
                    }
                }
                // At most one line per peer per request of the local Nix.
                Err(e) => log::warn!(
                    "{}: {e}; trying the next peer",
                    PeerClient::narinfo_url(&peer, hash)
                ),
            }
        }
    }

    /// The peer's narinfo for `hash`, if it may reach the local Nix: every
    /// field parses as Nix parses it (`NarInfo::parse`), it describes the
    /// raw NAR, and it is signed by a key the local Nix trusts.
    fn checked(&self, peer: &Peer, hash: &HashPart, timeout: Duration) -> Result<NarInfo, String> {
        let mut info = (self.client.narinfo(peer, hash, timeout)).map_err(|e| e.to_string())?;
        if info.compression != "none" {
            return Err(format!(
                "its NAR is compressed ({}); only raw NARs are passed on",
                info.compression
            ));
        }
        if !self.trust.keep_trusted(&mut info) {
            return Err("not signed by a key the local Nix trusts".into());
        }
        Ok(info)
    }
}
