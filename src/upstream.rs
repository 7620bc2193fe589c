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
//! none is left is the connection cut. The peers are asked fastest first
//! (`throughput.rs`); for a large NAR, every peer with its NarHash is
//! looked for, not only the one whose narinfo Nix got.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cache::Bounded;
use crate::discovery::{Discovery, Found};
use crate::narinfo::{HashPart, NarInfo};
use crate::nix32;
use crate::peer_client::PeerClient;
use crate::throughput::Throughput;
use crate::trust::Trust;

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
    pub found: Found,
    pub info: NarInfo,
}

pub struct Upstream {
    discovery: Arc<Discovery>,
    client: PeerClient,
    trust: Trust,
    known: Mutex<Bounded<HashPart, Vec<Source>>>,
    throughput: Throughput,
}

impl Upstream {
    pub fn new(discovery: Arc<Discovery>, client: PeerClient, trust: Trust) -> Upstream {
        Upstream {
            discovery,
            client,
            trust,
            known: Mutex::new(Bounded::new(REMEMBERED)),
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

    /// The URL of a source's NAR on this node, as the narinfo handed to Nix
    /// names it: by NarHash and hash part.
    pub fn nar_url(source: &Source) -> String {
        format!(
            "nar/{}-{}.nar",
            nix32::encode(&source.info.nar_hash),
            source.info.hash_part()
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
        all
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
        found
    }

    /// The NAR of `hash` (with the NarHash of `sources`) from byte `offset`
    /// on, from the fastest of `sources` that serves it, failing over to the
    /// others (and then to peers found anew) mid-stream; `None` when none
    /// can start it. A large NAR with a single known source first looks for
    /// the other peers that have it.
    pub fn nar(
        self: &Arc<Self>,
        hash: &HashPart,
        mut sources: Vec<Source>,
        offset: u64,
    ) -> Option<Box<dyn Read + Send>> {
        let first = sources.first()?.clone();
        let searched = sources.len() < 2 && first.info.nar_size - offset >= LARGE_NAR;
        if searched {
            for found in self.search(hash, &first.info.nar_hash) {
                if !sources.iter().any(|s| s.found.addr == found.found.addr) {
                    sources.push(found);
                }
            }
        }
        let sources = (self.throughput).fastest_first(sources, |s| s.found.addr);
        let mut nar = FailoverNar {
            upstream: self.clone(),
            hash: *hash,
            nar_hash: first.info.nar_hash,
            total: first.info.nar_size,
            pos: offset,
            current: None,
            left: sources.into(),
            tried: Vec::new(),
            searched,
        };
        match nar.open_next() {
            Ok(opened) => {
                log::debug!(
                    "{hash}: NAR of {} bytes from {}{}",
                    nar.total,
                    opened.addr,
                    if offset > 0 {
                        format!(" from byte {offset}")
                    } else {
                        String::new()
                    }
                );
                nar.current = Some(opened);
                Some(Box::new(nar))
            }
            Err(e) => {
                log::info!("{hash}: {e}");
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
        sources.retain(|s| s.found.addr != source.found.addr);
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
        let info = (self.client.narinfo(found, hash, timeout)).map_err(|e| e.to_string())?;
        if info.compression != "none" {
            return Err(format!(
                "its NAR is compressed ({}); only raw NARs are passed on",
                info.compression
            ));
        }
        if !self.trust.accepts(&info) {
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
    tried: Vec<SocketAddr>,
    /// Whether peers were asked anew once the known sources ran out.
    searched: bool,
}

/// The peer a NAR is coming from now, and since when.
struct Current {
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
                    .filter(|s| !tried.contains(&s.found.addr))
                    .collect();
                continue;
            };
            let addr = source.found.addr;
            self.tried.push(addr);
            match self
                .upstream
                .client
                .nar(&source.found, &source.info, self.pos)
            {
                Ok(body) => {
                    return Ok(Current {
                        addr,
                        body,
                        opened: Instant::now(),
                        from: self.pos,
                    })
                }
                Err(e) => log::warn!("{}: NAR from {addr}: {e}; trying the next peer", self.hash),
            }
        }
    }

    /// Leaves the current peer, its pace learnt from what it sent.
    fn leave_current(&mut self) {
        if let Some(current) = self.current.take() {
            let sent = self.pos - current.from;
            (self.upstream.throughput).record(current.addr, sent, current.opened.elapsed());
        }
    }
}

impl Drop for FailoverNar {
    fn drop(&mut self) {
        self.leave_current();
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
            let failure = match current.body.read(&mut buf[..want]) {
                Ok(0) => "it ended early".to_string(),
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) => e.to_string(),
            };
            log::info!(
                "{}: the NAR from {} broke at byte {} of {} ({failure}); another peer goes on",
                self.hash,
                current.addr,
                self.pos,
                self.total
            );
            self.leave_current();
        }
    }
}
