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
//! address. The peers are asked fastest first (`throughput.rs`); for a
//! large NAR, every peer with its NarHash is looked for, not only the one
//! whose narinfo Nix got.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::base::bounded::Bounded;
use crate::discovery::Discovery;
use crate::nar_check::{checked_or_log, Blame, Prefixes};
use crate::nix::narinfo::{HashPart, NarInfo};
use crate::nix::nix32;
use crate::nix::trust::Trust;
use crate::peer::client::PeerClient;
use crate::peer::framed;
use crate::peer::stripe::Stripe;
use crate::peer::{Peer, Who};
use crate::stripe::{self, Striped};
use crate::throughput::Throughput;
use crate::transfers::Transfer;

/// The longest a narinfo fetch from one peer may take. A narinfo request
/// is answered within the discovery timeout plus this.
pub const NARINFO_FETCH: Duration = Duration::from_secs(2);

/// Paths whose sources are remembered, per generation of the cache.
const REMEMBERED: usize = 4096;

/// Sources remembered per path, at most.
const SOURCES_PER_PATH: usize = 8;

/// A NAR at least this large is worth a discovery round to find every
/// peer that has it, so that the fastest serves it.
const LARGE_NAR: u64 = 8 << 20;

/// A peer that serves a path's NAR: where, and its narinfo for the path
/// (checked: parsed strictly, signed by a key the local Nix trusts, raw).
#[derive(Clone, Debug)]
pub struct Source {
    pub found: Peer,
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
    /// How fast each peer sent its recent NARs.
    throughput: Throughput,
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
            throughput: Throughput::default(),
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
    pub(crate) fn blame(&self, hash: &HashPart, nar_hash: &[u8; 32], from: &[(Who, SocketAddr)]) {
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
    /// byte `offset`: read from its first byte, from the fastest of
    /// `sources` that serves it, failing over to the others (and then to
    /// peers found anew) mid-stream, and checked against its NarHash.
    /// `None` when none can start it, or when the client's first `offset`
    /// bytes (of a stream that was cut) are not this NAR's. For a large NAR
    /// the peers are asked anew first, so that the fastest can be chosen,
    /// or several at once. What comes from which peer goes to `transfer`.
    pub fn nar(
        self: &Arc<Self>,
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
            let mut found = self.search(hash, &nar_hash);
            let mut seen = Vec::new();
            found.retain(|s| {
                let new = !seen.contains(&s.found.who());
                seen.push(s.found.who());
                new
            });
            if !found.is_empty() {
                sources = found;
            }
        }
        let sources = (self.throughput).fastest_first(sources, |s| s.found.who());
        let sources = self.unblamed_first(&nar_hash, sources);
        let lanes = self.lanes(&sources, total);
        let mut transfer = Some(transfer);
        if lanes >= 2 {
            let ours: Vec<Source> = sources.iter().filter(|s| !s.found.v1).cloned().collect();
            match Striped::start(self.clone(), *hash, ours, lanes, &mut transfer) {
                Ok(striped) => {
                    log::debug!("{hash}: NAR of {total} bytes from {lanes} peers at once");
                    let prefixes = self.prefixes.clone();
                    return checked_or_log(hash, striped, nar_hash, total, offset, prefixes);
                }
                Err(e) => log::info!("{hash}: {e}; one peer at a time"),
            }
        }
        let transfer = transfer?;
        let mut nar = FailoverNar {
            upstream: self.clone(),
            hash: *hash,
            nar_hash,
            total,
            pos: 0,
            current: None,
            left: sources.into(),
            tried: Vec::new(),
            sent_by: Vec::new(),
            searched,
            transfer,
        };
        match nar.open_next() {
            Ok(opened) => {
                log::debug!(
                    "{hash}: NAR of {total} bytes from {}{}",
                    opened.addr,
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
        checked_or_log(hash, nar, nar_hash, total, offset, self.prefixes.clone())
    }

    /// How many peers to fetch a NAR of `total` bytes from at once: the
    /// first k of ours among `sources` (fastest first), up to
    /// `stripe::MAX_LANES`, for the k that makes k times the slowest of
    /// them largest (a stripe goes at its slowest lane's pace; a peer not
    /// measured yet counts as the fastest). 1 when one peer alone is
    /// faster; none for a NAR under `stripe::MIN_NAR`.
    fn lanes(&self, sources: &[Source], total: u64) -> usize {
        if total < stripe::MIN_NAR {
            return 0;
        }
        let paces: Vec<Option<f64>> = (sources.iter())
            .filter(|s| !s.found.v1)
            .take(stripe::MAX_LANES)
            .map(|s| self.throughput.pace(&s.found.who()))
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

    /// Opens a lane of a striped NAR: `stripe`'s bytes from `pos` on.
    pub(crate) fn open_stripe(
        &self,
        source: &Source,
        pos: u64,
        stripe: Stripe,
    ) -> io::Result<Box<dyn Read + Send>> {
        (self.client)
            .nar(&source.found, &source.info, pos, true, Some(stripe))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// The pace learnt of `who`, in bytes a second (for the status).
    pub fn pace(&self, who: &Who) -> Option<f64> {
        self.throughput.pace(who)
    }

    /// The pace learnt of each peer, in bytes a second (for the metrics).
    pub fn paces(&self) -> Vec<(Who, f64)> {
        self.throughput.paces()
    }

    /// `who` sent `bytes` of a NAR, waited for in `took`; with `at_least`,
    /// while held back by a slower peer (see `Throughput::record_at_least`).
    pub(crate) fn learn(&self, who: Who, bytes: u64, took: Duration, at_least: bool) {
        match at_least {
            true => self.throughput.record_at_least(who, bytes, took),
            false => self.throughput.record(who, bytes, took),
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
        // Another identity at the same address is a node that restarted.
        sources
            .retain(|s| s.found.who() != source.found.who() && s.found.addr != source.found.addr);
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
    fn checked(&self, found: &Peer, hash: &HashPart, timeout: Duration) -> Result<NarInfo, String> {
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
    current: Option<Current>,
    left: VecDeque<Source>,
    /// The peers asked so far.
    tried: Vec<Who>,
    /// The peers that sent bytes of it, in order.
    sent_by: Vec<(Who, SocketAddr)>,
    /// Whether peers were asked anew once the known sources ran out.
    searched: bool,
    transfer: Transfer,
}

/// The peer a NAR is coming from now, and since when.
struct Current {
    who: Who,
    addr: SocketAddr,
    body: Box<dyn Read + Send>,
    opened: Instant,
    from: u64,
}

impl FailoverNar {
    /// Opens the next source at `pos`; an error when none is left.
    fn open_next(&mut self) -> io::Result<Current> {
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
            // Compressed only where it may pay (see `framed::NO_GAIN_PACE`).
            let pace = self.upstream.throughput.pace(&who);
            let compressible = pace.is_none_or(|p| p < framed::NO_GAIN_PACE);
            match (self.upstream.client).nar(
                &source.found,
                &source.info,
                self.pos,
                compressible,
                None,
            ) {
                Ok(body) => {
                    self.transfer.from_peer(addr);
                    return Ok(Current {
                        who,
                        addr,
                        body,
                        opened: Instant::now(),
                        from: self.pos,
                    });
                }
                Err(e) => log::warn!("{}: NAR from {addr}: {e}; trying the next peer", self.hash),
            }
        }
    }
}

impl FailoverNar {
    /// Leaves the current peer, its pace learnt from what it sent.
    fn leave_current(&mut self) {
        if let Some(current) = self.current.take() {
            let sent = self.pos - current.from;
            (self.upstream.throughput).record(current.who, sent, current.opened.elapsed());
        }
    }
}

impl Drop for FailoverNar {
    fn drop(&mut self) {
        self.leave_current();
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
            self.leave_current();
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.total - self.pos).unwrap_or(usize::MAX));
        loop {
            let current = match &mut self.current {
                Some(current) => current,
                None => {
                    let opened = self.open_next()?;
                    log::info!(
                        "{}: going on from {} at byte {}",
                        self.hash,
                        opened.addr,
                        self.pos
                    );
                    self.current.insert(opened)
                }
            };
            let (who, from) = (current.who, current.addr);
            let failure = match current.body.read(&mut buf[..want]) {
                Ok(0) => "it ended early".to_string(),
                Ok(n) => {
                    if self.sent_by.last().map(|(w, _)| w) != Some(&who) {
                        self.sent_by.push((who, from));
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
            self.leave_current();
        }
    }
}
