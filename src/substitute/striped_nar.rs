//! Several peers at once for a large NAR: the NAR is cut into blocks of
//! `BLOCK` bytes dealt round-robin to up to `MAX_LANES` peers (a stripe
//! each), every peer streams its stripe over one connection, and the
//! receiver reads the lanes in turn, so Nix gets the NAR in order.
//!
//! What a stripe is and how a peer sends one is `peer/stripe.rs`. Memory
//! stays bounded without a reordering buffer of our own: a lane not being
//! read waits in its socket (TCP flow control holds the sender), so at
//! most the socket buffers hold NAR bytes ahead. A lane whose peer fails,
//! stalls (no byte for the stall timeout of the peer client) or trickles
//! (under its floor, which counts only the time spent waiting in reads:
//! a lane not being read is not slow) is asked of another peer from the
//! byte it stopped at; the others go on.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::find::{Finder, Source};
use super::nar_hash::Blame;
use super::pace::Paces;
use super::transfers::Transfer;
use crate::nix::narinfo::HashPart;
use crate::peer::stripe::Stripe;
use crate::peer::Who;

/// NAR bytes per block dealt to a lane: small enough that the sockets of
/// the lanes not being read hold their next block (a LAN's TCP buffers stay
/// small, its round trips being short), so that no lane idles.
pub const BLOCK: u64 = 512 << 10;
/// NARs smaller than this come from one peer.
pub const MIN_NAR: u64 = 32 << 20;
/// Peers one NAR is fetched from at once, at most.
pub const MAX_LANES: usize = 4;

/// One peer's stripe of the NAR on its way in.
struct Lane {
    source: Source,
    body: Option<Box<dyn Read + Send>>,
    /// NAR bytes it sent, and the time spent waiting for them.
    bytes: u64,
    waited: Duration,
}

/// The receiver's side: the NAR of `total` bytes from several peers at
/// once, in order.
pub struct Striped {
    finder: Arc<Finder>,
    paces: Arc<Paces>,
    hash: HashPart,
    total: u64,
    pos: u64,
    lanes: Vec<Lane>,
    /// Every peer that serves the NAR, fastest first: the lanes' first
    /// peers, then those that take over a lane.
    sources: Vec<Source>,
    next_source: usize,
    failed: Vec<Who>,
    sent_by: Vec<(Who, SocketAddr)>,
    /// What comes from which peer, for the status; and the peer that
    /// sent the last bytes.
    transfer: Option<Transfer>,
    last_from: Option<SocketAddr>,
    started: Instant,
}

impl Striped {
    /// Starts a lane on each of the first `every` of `sources`, taking
    /// `transfer`; an error (and `transfer` left in place) when a lane
    /// cannot start on any of them.
    pub fn start(
        finder: Arc<Finder>,
        paces: Arc<Paces>,
        hash: HashPart,
        sources: Vec<Source>,
        every: usize,
        transfer: &mut Option<Transfer>,
    ) -> io::Result<Striped> {
        let every = every.min(sources.len());
        let total = sources.first().map_or(0, |s| s.info.nar_size);
        let lanes = (sources.iter().take(every).cloned())
            .map(|source| Lane {
                source,
                body: None,
                bytes: 0,
                waited: Duration::ZERO,
            })
            .collect();
        let mut striped = Striped {
            finder,
            paces,
            hash,
            total,
            pos: 0,
            lanes,
            next_source: every,
            sources,
            failed: Vec::new(),
            sent_by: Vec::new(),
            transfer: None,
            last_from: None,
            started: Instant::now(),
        };
        for i in 0..every {
            striped.open(i)?;
        }
        striped.transfer = transfer.take();
        if let Some(transfer) = &striped.transfer {
            transfer.striped();
        }
        Ok(striped)
    }

    fn stripe(&self, lane: usize) -> Stripe {
        Stripe {
            block: BLOCK,
            every: self.lanes.len() as u64,
            index: lane as u64,
        }
    }

    /// Opens lane `i` at `pos` on its peer, or on the next peers in turn
    /// when its own fails.
    fn open(&mut self, i: usize) -> io::Result<()> {
        loop {
            let stripe = self.stripe(i);
            let source = self.lanes[i].source.clone();
            match self.finder.open(&source, self.pos, true, Some(stripe)) {
                Ok(body) => {
                    self.lanes[i].body = Some(body);
                    return Ok(());
                }
                Err(e) => {
                    log::warn!("{}: stripe {i} from {}: {e}", self.hash, source.peer.addr);
                    self.replace(i)?;
                }
            }
        }
    }

    /// Gives lane `i` to the next peer that has not failed (one already
    /// serving another lane will do); an error when none is left.
    fn replace(&mut self, i: usize) -> io::Result<()> {
        let lane = &mut self.lanes[i];
        self.failed.push(lane.source.peer.who());
        (self.paces).record(lane.source.peer.who(), lane.bytes, lane.waited);
        (lane.bytes, lane.waited, lane.body) = (0, Duration::ZERO, None);
        let n = self.sources.len();
        for k in 0..n {
            let candidate = &self.sources[(self.next_source + k) % n];
            if !self.failed.contains(&candidate.peer.who()) {
                self.next_source = (self.next_source + k + 1) % n;
                self.lanes[i].source = candidate.clone();
                return Ok(());
            }
        }
        Err(io::Error::other(format!(
            "no peer left for stripe {i} of its NAR (at byte {})",
            self.pos
        )))
    }
}

impl Read for Striped {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.total || buf.is_empty() {
            return Ok(0);
        }
        let i = ((self.pos / BLOCK) % self.lanes.len() as u64) as usize;
        let block_end = (self.pos / BLOCK + 1) * BLOCK;
        let want = buf
            .len()
            .min(usize::try_from(block_end.min(self.total) - self.pos).unwrap_or(usize::MAX));
        loop {
            if self.lanes[i].body.is_none() {
                self.open(i)?;
                log::info!(
                    "{}: stripe {i}: going on from {} at byte {}",
                    self.hash,
                    self.lanes[i].source.peer.addr,
                    self.pos
                );
            }
            let lane = &mut self.lanes[i];
            let Some(body) = lane.body.as_mut() else {
                continue;
            };
            let started = Instant::now();
            let result = body.read(&mut buf[..want]);
            lane.waited += started.elapsed();
            let failure = match result {
                Ok(0) => "it ended early".to_string(),
                Ok(n) => {
                    lane.bytes += n as u64;
                    let who = (lane.source.peer.who(), lane.source.peer.addr);
                    if let Some(transfer) = &mut self.transfer {
                        if self.last_from != Some(who.1) {
                            transfer.from_peer(who.1);
                            self.last_from = Some(who.1);
                        }
                        transfer.add(n);
                    }
                    if !self.sent_by.iter().any(|(w, _)| *w == who.0) {
                        self.sent_by.push(who);
                    }
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) => e.to_string(),
            };
            log::info!(
                "{}: stripe {i}: the NAR from {} broke at byte {} of {} ({failure}); another peer goes on",
                self.hash,
                lane.source.peer.addr,
                self.pos,
                self.total
            );
            self.replace(i)?;
        }
    }
}

impl Blame for Striped {
    fn bad_bytes(&mut self) {
        let nar_hash = self.sources.first().map(|s| s.info.nar_hash);
        if let Some(nar_hash) = nar_hash {
            self.finder.blame(&self.hash, &nar_hash, &self.sent_by);
        }
    }
}

impl Drop for Striped {
    /// Learns the lanes' paces. The lane that waited longest set the pace
    /// of all, and its bytes over its waits are its own pace; the others
    /// were read from what their sockets held while it was waited for, so
    /// their waits say little (a peer as fast as the slowest looks much
    /// faster): they are known to be at least as fast as the stripe went.
    fn drop(&mut self) {
        let took = self.started.elapsed();
        let slowest = (0..self.lanes.len()).max_by_key(|&i| self.lanes[i].waited);
        for (i, lane) in self.lanes.iter().enumerate() {
            let who = lane.source.peer.who();
            match Some(i) == slowest {
                true => self.paces.record(who, lane.bytes, lane.waited),
                false => self.paces.record_at_least(who, lane.bytes, took),
            }
        }
    }
}
