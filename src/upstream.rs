//! The peers as the local Nix's upstream: finding a path among them,
//! checking what they say before Nix sees any of it, remembering which
//! peers serve which NAR, and streaming a NAR from them with fail-over.
//!
//! Two machines that built one derivation themselves may hold different
//! NARs (different NarHashes) for the same store path. So a NAR is always
//! asked for by its NarHash: the narinfo handed to Nix names its NAR
//! `nar/<nix32 NarHash>-<hash part>.nar`, and a NAR is served only from
//! peers whose own narinfo for the path has that NarHash. When the peer
//! streaming a NAR stops or stalls, another with the same NarHash goes on
//! from the same byte (`Range`), so Nix gets one unbroken NAR; only when
//! none is left is the connection cut. Every NAR is checked against its
//! NarHash on its way to Nix (`nar_check.rs`): a peer whose bytes do not
//! match is no longer asked for that NAR. Peers are told apart by node id
//! (one node heard over IPv4 and IPv6 is one source), original nodes by
//! address.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cache::Bounded;
use crate::discovery::{Discovery, Found, Who};
use crate::nar_check::{Blame, Checked, Prefixes, StartError};
use crate::narinfo::{HashPart, NarInfo};
use crate::nix32;
use crate::peer_client::PeerClient;
use crate::transfers::Transfer;
use crate::trust::Trust;

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
    pub found: Found,
    pub info: NarInfo,
}

pub struct Upstream {
    discovery: Arc<Discovery>,
    client: PeerClient,
    trust: Trust,
    known: Mutex<Bounded<HashPart, Vec<Source>>>,
    /// Peers that sent bytes not matching a NarHash: alone (never asked
    /// for that NAR again) or in a stream spliced from several (asked
    /// last).
    blamed: Mutex<Bounded<NarHash, Vec<(Who, Guilt)>>>,
    /// What cut streams to the local Nix had sent (for its resumes).
    prefixes: Arc<Prefixes>,
}

type NarHash = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guilt {
    /// It alone sent a NAR that did not match.
    Sure,
    /// It was one of several that a NAR that did not match came from.
    Suspect,
}

impl Upstream {
    pub fn new(discovery: Arc<Discovery>, client: PeerClient, trust: Trust) -> Upstream {
        Upstream {
            discovery,
            client,
            trust,
            known: Mutex::new(Bounded::new(REMEMBERED)),
            blamed: Mutex::new(Bounded::new(REMEMBERED)),
            prefixes: Arc::new(Prefixes::new()),
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

    /// What cut NAR streams to the local Nix had sent, for pulled NARs too.
    pub fn prefixes(&self) -> Arc<Prefixes> {
        self.prefixes.clone()
    }

    /// The URL of a NAR on this node, as the narinfo handed to Nix names
    /// it: by NarHash and hash part.
    pub fn nar_url(info: &NarInfo) -> String {
        format!(
            "nar/{}-{}.nar",
            nix32::encode(&info.nar_hash),
            info.hash_part()
        )
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
    fn search(&self, hash: &HashPart, nar_hash: &[u8; 32]) -> Vec<Source> {
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
    fn unblamed_first(&self, nar_hash: &[u8; 32], mut sources: Vec<Source>) -> Vec<Source> {
        let Ok(blamed) = self.blamed.lock() else {
            return sources;
        };
        let Some(guilty) = blamed.get(nar_hash) else {
            return sources;
        };
        let guilt = |s: &Source| {
            let who = s.found.who();
            guilty.iter().find(|(w, _)| *w == who).map(|(_, g)| *g)
        };
        sources.retain(|s| guilt(s) != Some(Guilt::Sure));
        sources.sort_by_key(|s| guilt(s).is_some());
        sources
    }

    /// Peers sent bytes that do not hash to `nar_hash`: one alone is never
    /// asked for it again; of several, each is asked last from now on.
    fn blame(&self, hash: &HashPart, nar_hash: &[u8; 32], from: &[(Who, SocketAddr)]) {
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
                        .retain(|s| !(s.info.nar_hash == *nar_hash && s.found.who() == from[0].0));
                }
            }
        }
    }

    /// The NAR of `hash` (with the NarHash of `sources`) to hand on from
    /// byte `offset`: read from its first byte, from the first of
    /// `sources` that serves it, failing over to the others (and then to
    /// peers found anew) mid-stream, and checked against its NarHash.
    /// `None` when none can start it, or when the client's first `offset`
    /// bytes (of a stream that was cut) are not this NAR's. What comes
    /// from which peer goes to `transfer`.
    pub fn nar(
        self: &Arc<Self>,
        hash: &HashPart,
        sources: Vec<Source>,
        offset: u64,
        transfer: Transfer,
    ) -> Option<Box<dyn Read + Send>> {
        let first = sources.first()?;
        let (nar_hash, total) = (first.info.nar_hash, first.info.nar_size);
        let mut nar = FailoverNar {
            upstream: self.clone(),
            hash: *hash,
            nar_hash,
            total,
            pos: 0,
            current: None,
            left: self.unblamed_first(&nar_hash, sources).into(),
            tried: Vec::new(),
            sent_by: Vec::new(),
            searched: false,
            transfer,
        };
        match nar.open_next() {
            Ok(opened) => {
                log::debug!(
                    "{hash}: NAR of {total} bytes from {}{}",
                    opened.1,
                    if offset > 0 {
                        format!(", handed on from byte {offset}")
                    } else {
                        String::new()
                    }
                );
                nar.current = Some(opened);
            }
            Err(e) => {
                log::info!("{hash}: {e}");
                return None;
            }
        }
        match Checked::start(nar, nar_hash, total, offset, self.prefixes.clone()) {
            Ok(checked) => Some(Box::new(checked)),
            Err(StartError::Io(e)) => {
                log::info!("{hash}: {e}");
                None
            }
            Err(StartError::PrefixDiffers) => {
                log::warn!(
                    "{hash}: Nix resumes a NAR whose first {offset} bytes were wrong; \
                     refused (404), so that it gets the path anew"
                );
                None
            }
        }
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
        sources.retain(|s| s.found.who() != source.found.who());
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
        while let Some(found) = asked.next_have() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.checked(&found, hash, left.min(NARINFO_FETCH)) {
                Ok(info) => {
                    log::debug!(
                        "{hash}: narinfo from {} after {:.1?}",
                        found.addr,
                        start.elapsed()
                    );
                    let source = Source { found, info };
                    self.remember(&source);
                    if !each(source) {
                        return;
                    }
                }
                // At most one line per peer per request of the local Nix.
                Err(e) => log::warn!(
                    "{}: {e}; trying the next peer",
                    PeerClient::narinfo_url(&found, hash)
                ),
            }
        }
    }

    /// The peer's narinfo for `hash`, if it may reach the local Nix: every
    /// field parses as Nix parses it (`NarInfo::parse`), it describes the
    /// raw NAR, and it is signed by a key the local Nix trusts.
    fn checked(
        &self,
        found: &Found,
        hash: &HashPart,
        timeout: Duration,
    ) -> Result<NarInfo, String> {
        let mut info = (self.client.narinfo(found, hash, timeout)).map_err(|e| e.to_string())?;
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

/// The bytes of one NAR from one peer after another: when the current one
/// fails or stalls, the next source goes on from the same byte.
struct FailoverNar {
    upstream: Arc<Upstream>,
    hash: HashPart,
    nar_hash: [u8; 32],
    total: u64,
    /// The next byte to read.
    pos: u64,
    current: Option<(Who, SocketAddr, Box<dyn Read + Send>)>,
    left: VecDeque<Source>,
    /// The peers asked so far.
    tried: Vec<Who>,
    /// The peers that sent bytes of it, in order.
    sent_by: Vec<(Who, SocketAddr)>,
    /// Whether peers were asked anew once the known sources ran out.
    searched: bool,
    transfer: Transfer,
}

impl FailoverNar {
    /// Opens the next source at `pos`; an error when none is left.
    fn open_next(&mut self) -> io::Result<(Who, SocketAddr, Box<dyn Read + Send>)> {
        loop {
            let Some(source) = self.left.pop_front() else {
                if self.searched {
                    return Err(io::Error::other(format!(
                        "no peer left that serves its NAR (from byte {})",
                        self.pos
                    )));
                }
                self.searched = true;
                let found = self.upstream.search(&self.hash, &self.nar_hash);
                let tried = &self.tried;
                self.left = found
                    .into_iter()
                    .filter(|s| !tried.contains(&s.found.who()))
                    .collect();
                continue;
            };
            let (who, addr) = (source.found.who(), source.found.addr);
            if self.tried.contains(&who) {
                continue;
            }
            self.tried.push(who);
            match self
                .upstream
                .client
                .nar(&source.found, &source.info, self.pos)
            {
                Ok(body) => {
                    self.transfer.from_peer(addr);
                    return Ok((who, addr, body));
                }
                Err(e) => log::warn!("{}: NAR from {addr}: {e}; trying the next peer", self.hash),
            }
        }
    }
}

impl Blame for FailoverNar {
    fn bad_bytes(&mut self) {
        self.upstream
            .blame(&self.hash, &self.nar_hash, &self.sent_by);
    }
}

impl Read for FailoverNar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.total || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.total - self.pos).unwrap_or(usize::MAX));
        loop {
            let (who, from, body) = match &mut self.current {
                Some(current) => current,
                None => {
                    let opened = self.open_next()?;
                    log::info!(
                        "{}: going on from {} at byte {}",
                        self.hash,
                        opened.1,
                        self.pos
                    );
                    self.current.insert(opened)
                }
            };
            let failure = match body.read(&mut buf[..want]) {
                Ok(0) => "it ended early".to_string(),
                Ok(n) => {
                    if self.sent_by.last().map(|(w, _)| w) != Some(who) {
                        self.sent_by.push((*who, *from));
                    }
                    self.pos += n as u64;
                    self.transfer.add(n);
                    return Ok(n);
                }
                Err(e) => e.to_string(),
            };
            log::info!(
                "{}: the NAR from {from} broke at byte {} of {} ({failure}); another peer goes on",
                self.hash,
                self.pos,
                self.total
            );
            self.current = None;
        }
    }
}
