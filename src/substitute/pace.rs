//! How fast each peer sent its recent NARs, and the order to ask peers for
//! a new one in: the fastest first, so that a slow Wi-Fi laptop does not
//! serve a wired desktop when a wired peer has the path too.
//!
//! A peer's pace is an average of its recent NAR transfers (bytes a second,
//! halfway between the last ones and the new one), counted only for
//! transfers long enough (`MIN_BYTES`) that latency does not dominate.
//! Peers are known by node id (original nodes by address), as NAR sources
//! are.

use std::sync::Mutex;
use std::time::Duration;

use crate::base::bounded::Bounded;
use crate::peer::Who;

/// Peers whose pace is remembered, per generation of the table.
const REMEMBERED: usize = 256;
/// Transfers shorter than this say more about latency than about the link.
const MIN_BYTES: u64 = 1 << 20;

pub struct Paces {
    /// Bytes a second, per peer.
    paces: Mutex<Bounded<Who, f64>>,
}

impl Default for Paces {
    fn default() -> Paces {
        Paces {
            paces: Mutex::new(Bounded::new(REMEMBERED)),
        }
    }
}

impl Paces {
    /// `peer` sent `bytes` of a NAR in `took`.
    pub fn record(&self, peer: Who, bytes: u64, took: Duration) {
        self.update(peer, bytes, took, false);
    }

    /// `peer` sent `bytes` in `took` while held back by a slower one (a
    /// lane of a stripe that waited for another): it is at least this
    /// fast, so its pace is raised to this, never lowered.
    pub fn record_at_least(&self, peer: Who, bytes: u64, took: Duration) {
        self.update(peer, bytes, took, true);
    }

    fn update(&self, peer: Who, bytes: u64, took: Duration, at_least: bool) {
        if bytes < MIN_BYTES {
            return;
        }
        let pace = bytes as f64 / took.as_secs_f64().max(1e-6);
        let Ok(mut paces) = self.paces.lock() else {
            return;
        };
        let average = match paces.get(&peer) {
            Some(&old) if at_least => old.max(pace),
            Some(old) => 0.5 * old + 0.5 * pace,
            None => pace,
        };
        log::debug!(
            "{peer:?}: {:.1} MB/s for {bytes} bytes, {:.1} MB/s on average",
            pace / 1e6,
            average / 1e6
        );
        paces.insert(peer, average);
    }

    /// The pace learnt for `peer`, in bytes a second.
    pub fn pace(&self, peer: &Who) -> Option<f64> {
        self.paces.lock().ok()?.get(peer).copied()
    }

    /// Every peer's pace in the table, in bytes a second.
    pub fn paces(&self) -> Vec<(Who, f64)> {
        let paces = self.paces.lock();
        paces.map_or_else(
            |_| Vec::new(),
            |p| p.iter().map(|(w, p)| (*w, *p)).collect(),
        )
    }

    /// `items` (whose peer `addr_of` tells) fastest first. A peer not
    /// measured yet ranks as the median of those measured, ahead of any of
    /// that pace: it is worth a try before a peer known to be middling,
    /// not before one known to be fast. Otherwise the order is kept.
    pub fn fastest_first<T>(&self, items: Vec<T>, addr_of: impl Fn(&T) -> Who) -> Vec<T> {
        let mut ranked: Vec<(Option<f64>, T)> = (items.into_iter())
            .map(|i| (self.pace(&addr_of(&i)), i))
            .collect();
        let mut known: Vec<f64> = ranked.iter().filter_map(|r| r.0).collect();
        known.sort_by(f64::total_cmp);
        if let Some(&median) = known.get(known.len() / 2) {
            let rank = |p: &Option<f64>| (p.unwrap_or(median), p.is_none());
            ranked.sort_by(|(a, _), (b, _)| {
                let ((a, a_new), (b, b_new)) = (rank(a), rank(b));
                b.total_cmp(&a).then(b_new.cmp(&a_new))
            });
        }
        ranked.into_iter().map(|(_, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> Who {
        Who::Addr([10, 0, 0, i].into())
    }

    fn ranked(t: &Paces, peers: &[u8]) -> Vec<u8> {
        t.fastest_first(peers.to_vec(), |&i| addr(i))
    }

    #[test]
    fn the_fastest_peer_comes_first_and_unknown_ones_in_between() {
        let t = Paces::default();
        assert_eq!(
            ranked(&t, &[1, 2, 3]),
            [1, 2, 3],
            "nothing learnt: as found"
        );
        let s = Duration::from_secs(1);
        t.record(addr(1), 2_500_000, s); // 20 Mbit/s Wi-Fi
        assert_eq!(
            ranked(&t, &[1, 2]),
            [2, 1],
            "an unknown peer before a slow one"
        );
        t.record(addr(2), 110_000_000, s); // gigabit
        t.record(addr(4), 40_000_000, s);
        assert_eq!(ranked(&t, &[1, 3, 2, 4]), [2, 3, 4, 1]);
        // Short transfers are not counted.
        t.record(addr(5), 1000, Duration::from_millis(1));
        assert_eq!(t.pace(&addr(5)), None);
        // Averaged: one fast NAR does not undo a slow history at once.
        t.record(addr(1), 200_000_000, s);
        assert_eq!(t.pace(&addr(1)), Some(101_250_000.0));
        let mut paces = t.paces();
        paces.sort_by(|a, b| a.1.total_cmp(&b.1));
        assert_eq!(
            paces,
            [
                (addr(4), 40_000_000.0),
                (addr(1), 101_250_000.0),
                (addr(2), 110_000_000.0)
            ]
        );
        assert_eq!(ranked(&t, &[1, 2]), [2, 1]);
    }
}
