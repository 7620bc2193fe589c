//! A NAR from one peer after another: when the peer streaming it stops,
//! stalls or trickles (under the peer client's floor), another with the
//! same NarHash goes on from the same byte (`Range`), so Nix gets one
//! unbroken NAR; only when none is left (the known sources, then those
//! found anew) does the stream fail. Each peer's pace is learnt from what
//! it sent (`pace.rs`).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::find::{Finder, Source};
use super::nar_hash::Blame;
use super::pace::Paces;
use super::transfers::Transfer;
use crate::nix::narinfo::HashPart;
use crate::peer::framed;
use crate::peer::Who;

/// The bytes of one NAR from one peer after another: when the current one
/// fails or stalls, the next source goes on from the same byte.
pub struct FailoverNar {
    finder: Arc<Finder>,
    paces: Arc<Paces>,
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
    /// The NAR of `hash` (`total` bytes, `nar_hash`) from the first of
    /// `sources` that starts it, read from its first byte; `searched` when
    /// `sources` are those found just now (else peers are asked anew once
    /// they run out, or at once when there are none). What comes from
    /// which peer goes to `transfer`. An error when none can start it.
    pub fn start(
        (finder, paces): (Arc<Finder>, Arc<Paces>),
        (hash, nar_hash, total): (HashPart, [u8; 32], u64),
        sources: Vec<Source>,
        searched: bool,
        transfer: Transfer,
    ) -> io::Result<FailoverNar> {
        let mut nar = FailoverNar {
            finder,
            paces,
            hash,
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
        let opened = nar.open_next()?;
        nar.current = Some(opened);
        Ok(nar)
    }

    /// The peer it comes from now.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.current.as_ref().map(|c| c.addr)
    }

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
                let found = self.finder.search(&self.hash, &self.nar_hash);
                let tried = &self.tried;
                self.left = found
                    .into_iter()
                    .filter(|s| !tried.contains(&s.peer.who()))
                    .collect();
                continue;
            };
            let (who, addr) = (source.peer.who(), source.peer.addr);
            if self.tried.contains(&who) {
                continue;
            }
            self.tried.push(who);
            // Compressed only where it may pay (see `framed::NO_GAIN_PACE`).
            let pace = self.paces.pace(&who);
            let compressible = pace.is_none_or(|p| p < framed::NO_GAIN_PACE);
            match self.finder.open(&source, self.pos, compressible, None) {
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
            self.paces
                .record(current.who, sent, current.opened.elapsed());
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
        self.finder.blame(&self.hash, &self.nar_hash, &self.sent_by);
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
