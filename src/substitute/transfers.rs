//! NAR streams from peers to the local Nix while they run: which path,
//! from which peer, how far, for the dashboard and `/status.json`; and the
//! bytes each peer gave, passed on to the per-peer counters of `metrics/`.
//!
//! The stream touches its entry per chunk with one atomic add; the peer is
//! set under a short lock when a peer starts or takes over. At most
//! `LISTED` streams are listed (beyond that they are only counted), and
//! each leaves the list when it is dropped, whether it ended or broke.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::{Direction, Metrics};

/// Streams listed at once, at most.
const LISTED: usize = 64;

/// Bytes from one peer are passed to its counters at least this often.
const FLUSH_EVERY: u64 = 256 * 1024;

/// The streams in flight.
pub struct Transfers {
    listed: Mutex<Vec<Arc<Progress>>>,
    /// Streams in flight, listed or not.
    running: AtomicUsize,
    /// Where each peer's bytes are counted.
    metrics: Arc<Metrics>,
}

/// One stream as status shows it.
#[derive(Debug)]
pub struct Progress {
    /// The store path's basename (`<hash>-<name>`).
    pub path: String,
    pub nar_size: u64,
    /// The byte Nix asked from (a resumed download); the NAR is read from
    /// its first byte anyway, to check it against its NarHash.
    pub offset: u64,
    pub started: Instant,
    bytes: AtomicU64,
    peer: Mutex<Option<SocketAddr>>,
}

impl Progress {
    /// Bytes of the NAR received so far, from its first byte.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The peer streaming it now.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer.lock().ok().and_then(|p| *p)
    }
}

impl Transfers {
    pub fn new(metrics: Arc<Metrics>) -> Transfers {
        Transfers {
            listed: Mutex::default(),
            running: AtomicUsize::new(0),
            metrics,
        }
    }

    /// The streams listed now, oldest first, and how many run in all.
    pub fn snapshot(&self) -> (Vec<Arc<Progress>>, usize) {
        let listed = self.listed.lock().map(|l| l.clone()).unwrap_or_default();
        (listed, self.running.load(Ordering::Relaxed))
    }
}

/// A stream's handle: counts its bytes, and takes it off the list when
/// dropped.
pub struct Transfer {
    transfers: Arc<Transfers>,
    progress: Arc<Progress>,
    listed: bool,
    /// The peer streaming now, and its bytes not yet passed on.
    from: Option<IpAddr>,
    unflushed: u64,
}

impl Transfer {
    /// A stream of the NAR of `path` (`nar_size` bytes) from byte `offset`.
    pub fn start(transfers: &Arc<Transfers>, path: String, nar_size: u64, offset: u64) -> Transfer {
        let progress = Arc::new(Progress {
            path,
            nar_size,
            offset,
            started: Instant::now(),
            bytes: AtomicU64::new(0),
            peer: Mutex::new(None),
        });
        transfers.running.fetch_add(1, Ordering::Relaxed);
        let listed = match transfers.listed.lock() {
            Ok(mut listed) if listed.len() < LISTED => {
                listed.push(progress.clone());
                true
            }
            _ => false,
        };
        Transfer {
            transfers: transfers.clone(),
            progress,
            listed,
            from: None,
            unflushed: 0,
        }
    }

    /// `peer` streams from now on.
    pub fn from_peer(&mut self, peer: SocketAddr) {
        self.flush();
        self.from = Some(peer.ip());
        if let Ok(mut current) = self.progress.peer.lock() {
            *current = Some(peer);
        }
    }

    /// The stream comes from several peers at once (`striped_nar.rs`).
    pub fn striped(&self) {
        self.transfers.metrics.nar_striped();
    }

    /// `n` more bytes came from the current peer.
    pub fn add(&mut self, n: usize) {
        self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.unflushed += n as u64;
        if self.unflushed >= FLUSH_EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let (Some(ip), n @ 1..) = (self.from, self.unflushed) {
            self.transfers
                .metrics
                .peer_bytes(ip, Direction::Received, n);
        }
        self.unflushed = 0;
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.flush();
        let transfers = &self.transfers;
        transfers.running.fetch_sub(1, Ordering::Relaxed);
        if self.listed {
            if let Ok(mut listed) = transfers.listed.lock() {
                listed.retain(|p| !Arc::ptr_eq(p, &self.progress));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_listed_while_they_run_and_their_bytes_reach_their_peers() {
        let metrics = Arc::new(Metrics::default());
        let transfers = Arc::new(Transfers::new(metrics.clone()));
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.2:12304".parse().unwrap(),
            "10.0.0.3:12304".parse().unwrap(),
        );
        let mut t = Transfer::start(&transfers, "x-hello".into(), 3 << 20, 0);
        t.from_peer(a);
        t.add(1 << 20);
        let (listed, running) = transfers.snapshot();
        assert_eq!((listed.len(), running), (1, 1));
        assert_eq!(listed[0].bytes(), 1 << 20);
        assert_eq!(listed[0].peer(), Some(a));
        assert_eq!(metrics.peer_totals(a.ip()), (0, 1 << 20));
        // B takes over; its bytes are passed on when the stream ends.
        t.from_peer(b);
        t.add(1000);
        drop(t);
        assert_eq!(metrics.peer_totals(b.ip()), (0, 1000));
        assert_eq!(transfers.snapshot().1, 0);
        assert!(transfers.snapshot().0.is_empty());
    }

    #[test]
    fn at_most_so_many_are_listed() {
        let transfers = Arc::new(Transfers::new(Arc::new(Metrics::default())));
        let all: Vec<Transfer> = (0..LISTED + 10)
            .map(|i| Transfer::start(&transfers, format!("p{i}"), 1, 0))
            .collect();
        let (listed, running) = transfers.snapshot();
        assert_eq!((listed.len(), running), (LISTED, LISTED + 10));
        drop(all);
        assert_eq!(transfers.snapshot().1, 0);
    }
}
