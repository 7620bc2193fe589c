//! Store summaries: a compact, versioned picture of the hash parts a node
//! offers, so that peers ask it only about paths it may hold.
//!
//! The picture is a Bloom filter of about 10 bits per path with 7 probes
//! (at most about 1 % false positives, 1.3 bytes per path). The node that
//! owns it ([`Published`]) follows its store index: each path added or
//! removed is a change with a new version, kept in a bounded log; a peer
//! that holds version V asks for what changed since V and gets a
//! [`Update::Delta`] (each change 17 bytes), or a [`Update::Full`] filter
//! when the log no longer reaches back to V or a full filter is smaller.
//!
//! A Bloom filter cannot forget a path, so a peer's copy ([`PeerSummary`])
//! keeps the removed ones beside it, as 8-byte fingerprints, and they
//! override the filter. That set is bounded: past `REMOVED_MAX_SHARE` of
//! the paths (or once the filter is fuller than it was built for) the
//! owner builds its filter anew and the peers take the new full one. A
//! counting filter would forget by itself but costs four times the memory
//! at every peer, all the time; removals are rare (garbage collections),
//! and a collection removing many paths is cheaper sent as a new filter.
//!
//! The encoding ([`Update::encode`], [`Update::parse`]) is what the peer
//! route `/peer/summary/<version>` sends; parsing checks every length and
//! bound and never panics.

use std::collections::{HashSet, VecDeque};

use crate::narinfo::HashPart;

/// Probes per path.
const PROBES: u32 = 7;

/// Bits per path the filter is built for, in tenths: 9.6 bits with 7
/// probes is 1 % false positives when full.
const BITS_PER_PATH_TENTHS: usize = 96;

/// Room for paths added after a build, as a share of the paths then.
const HEADROOM_SHARE: usize = 10;

/// The smallest filter, in bits (so that a nearly empty store does not
/// rebuild at every path).
const MIN_BITS: usize = 4096;

/// The largest filter accepted from a peer, in bits (8 MiB: about seven
/// million paths).
pub const MAX_BITS: usize = 64 << 20;

/// Changes kept in the owner's log, at most; older versions get a full
/// filter.
const LOG_MAX: usize = 65_536;

/// Removed paths a filter may carry, as a share of its paths (1/64), at
/// least `REMOVED_MIN`; past that the owner builds anew.
const REMOVED_MAX_SHARE: usize = 64;
const REMOVED_MIN: usize = 256;

/// Changes accepted in one delta, at most.
const DELTA_MAX: usize = LOG_MAX;

/// The longest encoded update accepted.
pub const MAX_ENCODED: usize = 4 + 1 + 8 + 4 + MAX_BITS / 8 + 8 + 4 + DELTA_MAX * CHANGE_LEN;

const MAGIC: &[u8; 4] = b"PXS1";

/// The two 64-bit hashes a path's probes come from. Hash parts are
/// already random (nix32 of a SHA-256 truncation), so mixing their bytes
/// is enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub h1: u64,
    pub h2: u64,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Key {
    pub fn of(hash: &HashPart) -> Key {
        let bytes = hash.as_str().as_bytes();
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Key {
            h1: mix(word(0) ^ mix(word(1))),
            h2: mix(word(2) ^ mix(word(3) ^ 0x9e37_79b9_7f4a_7c15)),
        }
    }
}

/// A Bloom filter of hash parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    words: Vec<u64>,
    /// Paths it was built for (beyond them it is rebuilt).
    capacity: usize,
}

impl Filter {
    /// An empty filter for `paths` paths and some more.
    pub fn for_paths(paths: usize) -> Filter {
        let capacity = paths + paths / HEADROOM_SHARE + 64;
        let bits = (capacity * BITS_PER_PATH_TENTHS / 10).clamp(MIN_BITS, MAX_BITS);
        Filter {
            words: vec![0; bits.div_ceil(64)],
            capacity: bits * 10 / BITS_PER_PATH_TENTHS,
        }
    }

    fn bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    fn probes(&self, key: Key) -> impl Iterator<Item = (usize, u64)> {
        let bits = self.bits();
        let step = key.h2 | 1;
        (0..u64::from(PROBES)).map(move |i| {
            let bit = key.h1.wrapping_add(i.wrapping_mul(step)) % bits;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    pub fn insert(&mut self, key: Key) {
        for (word, mask) in self.probes(key) {
            self.words[word] |= mask;
        }
    }

    pub fn may_hold(&self, key: Key) -> bool {
        self.probes(key)
            .all(|(word, mask)| self.words[word] & mask != 0)
    }

    /// Bytes of memory its bits take.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// One change of a store: a path added or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added(Key),
    Removed(Key),
}

/// What a peer is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The whole filter at `version`, with the paths removed since it was
    /// built (a node may send one without waiting for a rebuild).
    Full {
        version: u64,
        filter: Filter,
        removed: Vec<Key>,
    },
    /// What changed from version `from` to `version`, in order.
    Delta {
        from: u64,
        version: u64,
        changes: Vec<Change>,
    },
    /// Nothing changed since the version asked about.
    Same { version: u64 },
}

/// The owner's summary of its own store, followed change by change.
pub struct Published {
    version: u64,
    filter: Filter,
    /// Paths in the store now (as far as the summary knows).
    paths: usize,
    /// Paths put into the filter since it was built (with those it was
    /// built from).
    inserted: usize,
    /// Removed since the build, by key.
    removed: HashSet<Key>,
    /// Changes since the build, with the version each made; at most
    /// `LOG_MAX`.
    log: VecDeque<(u64, Change)>,
    /// The first version the log reaches back from.
    log_from: u64,
}

impl Published {
    /// The summary of `hashes`, at a version after `previous` (0 at start).
    pub fn build<'a>(hashes: impl ExactSizeIterator<Item = &'a HashPart>, previous: u64) -> Self {
        let mut filter = Filter::for_paths(hashes.len());
        let mut paths = 0;
        for hash in hashes {
            filter.insert(Key::of(hash));
            paths += 1;
        }
        let version = previous + 1;
        Published {
            version,
            filter,
            paths,
            inserted: paths,
            removed: HashSet::new(),
            log: VecDeque::new(),
            log_from: version,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// True when the filter should be built anew from the store: fuller
    /// than it was built for, or carrying too many removed paths, or its
    /// log is full.
    pub fn needs_rebuild(&self) -> bool {
        let removed_max = (self.paths / REMOVED_MAX_SHARE).max(REMOVED_MIN);
        self.inserted > self.filter.capacity
            || self.removed.len() > removed_max
            || self.log.len() >= LOG_MAX
    }

    /// Takes in paths added to and removed from the store; a new version
    /// when anything changed.
    pub fn apply(&mut self, added: &[HashPart], removed: &[HashPart]) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        self.version += 1;
        for hash in added {
            let key = Key::of(hash);
            self.removed.remove(&key);
            self.filter.insert(key);
            self.paths += 1;
            self.inserted += 1;
            self.log.push_back((self.version, Change::Added(key)));
        }
        for hash in removed {
            let key = Key::of(hash);
            self.removed.insert(key);
            self.paths = self.paths.saturating_sub(1);
            self.log.push_back((self.version, Change::Removed(key)));
        }
        while self.log.len() > LOG_MAX {
            if let Some((v, _)) = self.log.pop_front() {
                self.log_from = v;
            }
        }
    }

    /// What a peer holding version `since` (0: none) needs: nothing, the
    /// changes since, or the whole filter (when the log does not reach
    /// back that far, or the changes would be larger).
    pub fn since(&self, since: u64) -> Update {
        if since == self.version {
            return Update::Same {
                version: self.version,
            };
        }
        if since >= self.log_from && since < self.version {
            let changes: Vec<Change> = (self.log.iter())
                .filter(|(v, _)| *v > since)
                .map(|(_, c)| *c)
                .collect();
            if changes.len() * CHANGE_LEN < self.filter.bytes() {
                return Update::Delta {
                    from: since,
                    version: self.version,
                    changes,
                };
            }
        }
        Update::Full {
            version: self.version,
            filter: self.filter.clone(),
            removed: self.removed.iter().copied().collect(),
        }
    }

    /// Paths in the summary.
    pub fn paths(&self) -> usize {
        self.paths
    }
}

/// A peer's summary as this node keeps it.
#[derive(Clone, Debug)]
pub struct PeerSummary {
    pub version: u64,
    filter: Filter,
    /// Fingerprints (`h1`) of the paths removed since the filter was
    /// built: they override it.
    removed: HashSet<u64>,
}

/// Why an update cannot be taken in.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// A delta from another version than the one held: ask for a full one.
    WrongBase { held: Option<u64>, from: u64 },
    /// The removed paths outgrew their bound: ask for a full one.
    TooManyRemoved,
}

impl PeerSummary {
    /// Takes in `update` over `held` (the copy kept so far, if any).
    pub fn update(held: Option<PeerSummary>, update: Update) -> Result<PeerSummary, UpdateError> {
        match update {
            Update::Full {
                version,
                filter,
                removed,
            } => Ok(PeerSummary {
                version,
                filter,
                removed: removed.iter().map(|k| k.h1).collect(),
            }),
            Update::Same { version } => match held {
                Some(held) if held.version == version => Ok(held),
                held => Err(UpdateError::WrongBase {
                    held: held.map(|h| h.version),
                    from: version,
                }),
            },
            Update::Delta {
                from,
                version,
                changes,
            } => {
                let mut held = match held {
                    Some(h) if h.version == from => h,
                    held => {
                        return Err(UpdateError::WrongBase {
                            held: held.map(|h| h.version),
                            from,
                        })
                    }
                };
                for change in changes {
                    match change {
                        Change::Added(key) => {
                            held.removed.remove(&key.h1);
                            held.filter.insert(key);
                        }
                        Change::Removed(key) => {
                            held.removed.insert(key.h1);
                        }
                    }
                }
                let bound = (held.filter.capacity / REMOVED_MAX_SHARE).max(REMOVED_MIN) * 2;
                if held.removed.len() > bound {
                    return Err(UpdateError::TooManyRemoved);
                }
                held.version = version;
                Ok(held)
            }
        }
    }

    /// False when the peer surely does not hold `hash`.
    pub fn may_hold(&self, hash: &HashPart) -> bool {
        let key = Key::of(hash);
        self.filter.may_hold(key) && !self.removed.contains(&key.h1)
    }

    /// Bytes of memory it takes (the filter, and the removed set at about
    /// 16 bytes an entry in its hash set).
    pub fn bytes(&self) -> usize {
        self.filter.bytes() + self.removed.capacity() * 16 + std::mem::size_of::<Self>()
    }
}

/// Bytes of one change on the wire: a kind and the two hashes.
const CHANGE_LEN: usize = 17;

impl Update {
    pub fn version(&self) -> u64 {
        match self {
            Update::Full { version, .. }
            | Update::Delta { version, .. }
            | Update::Same { version } => *version,
        }
    }

    /// The bytes of `/peer/summary/<since>`: magic `PXS1`, a kind (1 full,
    /// 2 delta, 3 same) and the version (u64 BE); a full one then has its
    /// filter's length in 64-bit words (u32 BE) and the words (u64 BE),
    /// and removed paths as a delta's changes; a delta has the version it
    /// starts from (u64 BE) and its changes: a count (u32 BE), then each
    /// a kind (1 added, 2 removed) and the two hashes (u64 BE each).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        let changes = |out: &mut Vec<u8>, changes: &mut dyn Iterator<Item = Change>, n: usize| {
            out.extend_from_slice(&(n as u32).to_be_bytes());
            for change in changes {
                let (kind, key) = match change {
                    Change::Added(k) => (1, k),
                    Change::Removed(k) => (2, k),
                };
                out.push(kind);
                out.extend_from_slice(&key.h1.to_be_bytes());
                out.extend_from_slice(&key.h2.to_be_bytes());
            }
        };
        match self {
            Update::Full {
                version,
                filter,
                removed,
            } => {
                out.push(1);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&(filter.words.len() as u32).to_be_bytes());
                out.reserve(filter.words.len() * 8 + removed.len() * CHANGE_LEN);
                for w in &filter.words {
                    out.extend_from_slice(&w.to_be_bytes());
                }
                let mut it = removed.iter().map(|k| Change::Removed(*k));
                changes(&mut out, &mut it, removed.len());
            }
            Update::Delta {
                from,
                version,
                changes: list,
            } => {
                out.push(2);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&from.to_be_bytes());
                changes(&mut out, &mut list.iter().copied(), list.len());
            }
            Update::Same { version } => {
                out.push(3);
                out.extend_from_slice(&version.to_be_bytes());
            }
        }
        out
    }

    /// Parses what `encode` makes; `None` for anything else.
    pub fn parse(data: &[u8]) -> Option<Update> {
        let mut r = Reader { data, at: 0 };
        if r.take(4)? != MAGIC {
            return None;
        }
        let kind = r.take(1)?[0];
        let version = r.u64()?;
        let update = match kind {
            1 => {
                let words = r.u32()? as usize;
                if words == 0 || words > MAX_BITS / 64 {
                    return None;
                }
                let words: Vec<u64> = r.take(words * 8)?.chunks_exact(8).map(be64).collect();
                let bits = words.len() * 64;
                let removed = (r.changes()?.into_iter())
                    .map(|c| match c {
                        Change::Removed(k) => Some(k),
                        Change::Added(_) => None,
                    })
                    .collect::<Option<Vec<Key>>>()?;
                Update::Full {
                    version,
                    filter: Filter {
                        words,
                        capacity: bits * 10 / BITS_PER_PATH_TENTHS,
                    },
                    removed,
                }
            }
            2 => {
                let from = r.u64()?;
                let changes = r.changes()?;
                if from >= version {
                    return None;
                }
                Update::Delta {
                    from,
                    version,
                    changes,
                }
            }
            3 => Update::Same { version },
            _ => return None,
        };
        (r.at == data.len()).then_some(update)
    }
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().unwrap_or([0; 8]))
}

/// Reads an update's bytes front to back, checking every length.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let part = self.data.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(part)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(be64)
    }

    fn changes(&mut self) -> Option<Vec<Change>> {
        let n = self.u32()? as usize;
        if n > DELTA_MAX || n * CHANGE_LEN > self.data.len() - self.at {
            return None;
        }
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let entry = self.take(CHANGE_LEN)?;
            let key = Key {
                h1: be64(&entry[1..9]),
                h2: be64(&entry[9..17]),
            };
            list.push(match entry[0] {
                1 => Change::Added(key),
                2 => Change::Removed(key),
                _ => return None,
            });
        }
        Some(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random hash parts from a small deterministic generator.
    fn hashes(n: usize, seed: u64) -> Vec<HashPart> {
        const DIGITS: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                let text: String = (0..32)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        DIGITS[(x % 32) as usize] as char
                    })
                    .collect();
                HashPart::parse(&text).expect("nix32")
            })
            .collect()
    }

    fn false_positives(summary: &PeerSummary, absent: &[HashPart]) -> f64 {
        absent.iter().filter(|h| summary.may_hold(h)).count() as f64 / absent.len() as f64
    }

    #[test]
    fn about_one_percent_false_positives_at_under_one_and_a_half_bytes_a_path() {
        for n in [1_000, 20_000, 100_000] {
            let present = hashes(n, n as u64);
            let published = Published::build(present.iter(), 0);
            let peer = PeerSummary::update(None, published.since(0)).unwrap();
            assert!(
                present.iter().all(|h| peer.may_hold(h)),
                "no false negative"
            );
            let fp = false_positives(&peer, &hashes(100_000, 7));
            assert!(fp < 0.01, "{n} paths: {:.3} % false positives", fp * 100.0);
            let per_path = peer.bytes() as f64 / n as f64;
            if n >= 20_000 {
                assert!(per_path <= 1.5, "{n} paths: {per_path:.2} bytes a path");
            }
        }
    }

    #[test]
    fn full_at_capacity_it_stays_near_one_percent() {
        let mut published = Published::build(hashes(10_000, 1).iter(), 0);
        let more = hashes(1_000, 2);
        published.apply(&more, &[]);
        assert!(!published.needs_rebuild());
        let peer = PeerSummary::update(None, published.since(0)).unwrap();
        let fp = false_positives(&peer, &hashes(100_000, 9));
        assert!(fp < 0.013, "{:.3} %", fp * 100.0);
    }

    #[test]
    fn deltas_add_and_remove_and_a_removed_path_is_no_longer_claimed() {
        let base = hashes(1_000, 3);
        let mut published = Published::build(base.iter(), 0);
        let v1 = published.version();
        let mut peer = PeerSummary::update(None, published.since(0)).unwrap();
        let added = hashes(10, 4);
        published.apply(&added, &base[..5]);
        let update = published.since(v1);
        assert!(matches!(update, Update::Delta { ref changes, .. } if changes.len() == 15));
        let bytes = update.encode();
        assert_eq!(bytes.len(), 4 + 1 + 8 + 8 + 4 + 15 * CHANGE_LEN);
        peer = PeerSummary::update(Some(peer), Update::parse(&bytes).unwrap()).unwrap();
        assert_eq!(peer.version, published.version());
        assert!(added.iter().all(|h| peer.may_hold(h)));
        assert!(base[..5].iter().all(|h| !peer.may_hold(h)));
        assert!(base[5..].iter().all(|h| peer.may_hold(h)));
        // Added back: claimed again.
        let v2 = published.version();
        published.apply(&base[..1], &[]);
        peer = PeerSummary::update(Some(peer), published.since(v2)).unwrap();
        assert!(peer.may_hold(&base[0]));
        // Nothing new: "same".
        assert_eq!(
            published.since(published.version()),
            Update::Same {
                version: published.version()
            }
        );
        // A delta over another version is refused (ask for a full one).
        let stale = PeerSummary::update(None, published.since(0)).unwrap();
        let mut old = stale.clone();
        old.version = 1;
        assert!(PeerSummary::update(Some(old), published.since(v2)).is_err());
    }

    #[test]
    fn many_removals_rebuild_and_a_full_summary_carries_them() {
        let base = hashes(1_000, 5);
        let mut published = Published::build(base.iter(), 0);
        published.apply(&[], &base[..300]);
        assert!(published.needs_rebuild());
        let full = published.since(0);
        let peer = PeerSummary::update(None, Update::parse(&full.encode()).unwrap()).unwrap();
        assert!(base[..300].iter().all(|h| !peer.may_hold(h)));
        let rebuilt = Published::build(base[300..].iter(), published.version());
        assert!(rebuilt.version() > published.version());
        assert!(!rebuilt.needs_rebuild());
    }

    #[test]
    fn a_long_delta_is_sent_as_a_full_filter() {
        let mut published = Published::build(hashes(100, 6).iter(), 0);
        let v = published.version();
        published.apply(&hashes(400, 8), &[]);
        assert!(matches!(published.since(v), Update::Full { .. }));
    }

    #[test]
    fn broken_updates_are_refused_without_panic() {
        let mut published = Published::build(hashes(50, 10).iter(), 0);
        let v = published.version();
        published.apply(&hashes(3, 11), &hashes(2, 12));
        for update in [published.since(0), published.since(v), published.since(99)] {
            let bytes = update.encode();
            assert_eq!(Update::parse(&bytes), Some(update));
            for cut in 0..bytes.len() {
                assert_eq!(Update::parse(&bytes[..cut]), None);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Update::parse(&longer), None);
        }
        let mut huge = b"PXS1\x01".to_vec();
        huge.extend_from_slice(&[0; 8]);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Update::parse(&huge), None);
        assert_eq!(Update::parse(b"PXS1\x09\0\0\0\0\0\0\0\0"), None);
    }
}
