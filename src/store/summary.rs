//! Store summaries: a compact, versioned picture of the hash parts a node
//! offers, so that peers ask it only about paths it may hold.
//!
//! The picture is a binary fuse filter (Graf and Lemire, 2022) of arity
//! 4: each path has four slots, one in each of four consecutive segments
//! of a table, and the table is filled so that the four slots of a path
//! hold, XORed together, a 10-bit fingerprint of it. A path not in the
//! store matches by chance once in 1,024 (0.1 % false positives); the
//! fingerprints are packed into 64-bit words, about 1.07 slots a path, so
//! a summary takes about 1.33 bytes a path (1.44 at 1,000 paths). The
//! paper fills the table by peeling, which at 1,000 to 5,000 paths needs
//! 1.23 to 1.3 slots a path (arity 3; 1.55 bytes a path and more); this
//! one solves the table's equations by Gaussian elimination (each row
//! spans four segments: a band, which keeps the work linear in the
//! paths), with a few seeds tried before a looser table. Arity 3 solved
//! so still needs about 1.15 slots a path at 1,000 paths.
//!
//! A filter cannot change once built, so the owner ([`Published`]) keeps,
//! beside the filter, the paths added and removed since it was built, as
//! exact 64-bit keys in sorted lists: an added path is claimed, a removed
//! one no longer. Every path added or removed is a change with a new
//! version, kept in a bounded log; a peer that holds version V asks for
//! what changed since V and gets a [`Update::Delta`] (each change 9
//! bytes), or the whole summary ([`Update::Full`]) when the log no longer
//! reaches back to V or the whole one is smaller. A peer's copy
//! ([`PeerSummary`]) is exactly the owner's: the filter and both lists.
//! The log holds the last `LOG_MAX` (65,536) changes, and the lists are
//! bounded: past 1/64 of the paths (`CHANGES_MAX_SHARE`, at least
//! `CHANGES_MIN`) the owner builds its filter anew and the peers take the
//! new whole summary.
//!
//! The version follows the store's index change by change; the node tells
//! a new one at once in a `notice` datagram (at most one every 100 ms) and
//! with every hello, and its peers fetch what changed. So a path added to
//! a store is found by the peers within a second (until the new summary is
//! fetched, the peer is asked every query), and a removed one is no longer
//! claimed as quickly.
//!
//! The encoding ([`Update::encode`], [`Update::parse`]) is what the peer
//! route `/peer/summary/<version>` sends (magic `PXS2`; the Bloom filters
//! of `PXS1` are refused, and a peer that sends them is asked every query
//! as one without a summary); parsing checks every length and bound and
//! never panics.

use std::collections::VecDeque;

use crate::nix::narinfo::HashPart;

/// Bits of a fingerprint: a path not in the store matches one in 2^10.
const FINGERPRINT_BITS: u32 = 10;
const FINGERPRINT_MASK: u64 = (1 << FINGERPRINT_BITS) - 1;

/// Slots of a path, each in its own segment of the table.
const ARITY: usize = 4;

/// Slots of a segment, about, at most: the rows solved are `ARITY`
/// segments wide, and building takes that many bits a slot for a while
/// (72 bytes; 40 past `LARGE` paths). Tables of up to `SOLVED_WHOLE`
/// paths are just `ARITY` segments, solved whole: they need less room so
/// (1.07 slots a path from 1,000 to 4,000 paths, where a few dozen
/// segments need 1.08 or more), and take 12 ms at most.
const SEGMENT_MAX: usize = 128;
const SEGMENT_MAX_LARGE: usize = 64;
const LARGE: usize = 65_536;
const SOLVED_WHOLE: usize = 4_000;

/// Tries of a filter, each under a new seed; every `TRIES_PER_SIZE` the
/// table grows by `GROWTH_PERMILLE`. Past the last the filter claims
/// every path (never seen: the last tables are 17 % larger than the first).
const TRIES: u32 = 24;
const TRIES_PER_SIZE: u32 = 3;
const GROWTH_PERMILLE: usize = 25;

/// The largest table accepted from a peer, in 64-bit words (8 MiB:
/// about six million paths).
const MAX_WORDS: usize = 1 << 20;
const MAX_SLOTS: usize = MAX_WORDS * 64 / FINGERPRINT_BITS as usize;

/// Changes kept in the owner's log, at most; older versions get a whole
/// summary.
const LOG_MAX: usize = 65_536;

/// Paths added or removed since a build a summary may carry, as a share
/// of the paths it was built from (1/64), at least `CHANGES_MIN`; past
/// that the owner builds anew. A peer accepts twice as many.
const CHANGES_MAX_SHARE: usize = 64;
const CHANGES_MIN: usize = 16;

/// Changes accepted in one delta, at most.
const DELTA_MAX: usize = LOG_MAX;

/// Bytes of one change on the wire: a kind and the key.
const CHANGE_LEN: usize = 9;

/// Bytes before a whole summary's table: magic, kind, version, seed,
/// paths, segment length, segments.
const FULL_HEAD: usize = 4 + 1 + 8 + 8 + 4 + 4 + 4;

/// The longest encoded update accepted.
pub const MAX_ENCODED: usize = {
    let full = FULL_HEAD + MAX_WORDS * 8 + 2 * 4 + 2 * changes_max(MAX_SLOTS) * 8;
    let delta = 4 + 1 + 8 + 8 + 4 + DELTA_MAX * CHANGE_LEN;
    if full > delta {
        full
    } else {
        delta
    }
};

const MAGIC: &[u8; 4] = b"PXS2";

/// The changes a summary built from `paths` paths may carry, on the
/// owner's side (a peer accepts twice as many).
const fn changes_max(paths: usize) -> usize {
    let share = paths / CHANGES_MAX_SHARE;
    if share > CHANGES_MIN {
        share
    } else {
        CHANGES_MIN
    }
}

/// A path's key: 64 bits of its hash part, which is random already (nix32
/// of a SHA-256 truncation). The lists of added and removed paths hold
/// it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub u64);

fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The high 64 bits of `a * b`: `a` scaled to `0..b`.
fn scale(a: u64, b: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) >> 64) as u64
}

impl Key {
    pub fn of(hash: &HashPart) -> Key {
        let bytes = hash.as_str().as_bytes();
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Key(mix(word(0) ^ mix(word(1) ^ mix(word(2) ^ mix(word(3))))))
    }
}

/// Where a filter's slots are: a seed for the keys' hashes, and a table
/// of `segments + ARITY - 1` segments of `segment_len` slots. A path's
/// first slot is anywhere in the first `segments` segments, the others
/// each in one of the segments after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    seed: u64,
    segment_len: u32,
    segments: u32,
}

impl Geometry {
    /// A table of about `n * permille / 1000` slots.
    fn for_keys(n: usize, permille: usize, seed: u64) -> Geometry {
        let target = (n * permille).div_ceil(1000);
        let most = if n > LARGE {
            SEGMENT_MAX_LARGE
        } else {
            SEGMENT_MAX
        };
        let segments = match n <= SOLVED_WHOLE {
            true => ARITY,
            false => ARITY.max(target / most),
        };
        let len = (target / segments).max(1);
        let total = (target / len).max(ARITY);
        Geometry {
            seed,
            segment_len: len as u32,
            segments: (total - (ARITY - 1)) as u32,
        }
    }

    fn slots(&self) -> usize {
        match self.segments {
            0 => 0,
            s => (s as usize + ARITY - 1) * self.segment_len as usize,
        }
    }

    fn hash(&self, key: Key) -> u64 {
        mix(key.0 ^ self.seed)
    }

    /// The slots of a key with hash `h`, in order: one in each of
    /// `ARITY` consecutive segments.
    fn positions(&self, h: u64) -> [usize; ARITY] {
        let len = u64::from(self.segment_len);
        let first = scale(h, u64::from(self.segments) * len);
        let segment = first / len * len;
        // The other slots' places come from bits of their own (those of
        // `h` would follow the first slot's).
        let other = mix(h);
        let mut at = [first as usize; ARITY];
        for (i, slot) in at.iter_mut().enumerate().skip(1) {
            let offset = scale(other.rotate_left(21 * (i as u32 - 1)), len);
            *slot = (segment + i as u64 * len + offset) as usize;
        }
        at
    }
}

/// The low bits of a key's hash (its slots come from the high ones).
fn fingerprint(h: u64) -> u16 {
    (h & FINGERPRINT_MASK) as u16
}

/// A binary fuse filter of keys (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    geometry: Geometry,
    /// Distinct keys it was built from.
    keys: u32,
    /// The slots' fingerprints, `FINGERPRINT_BITS` each, packed from the
    /// low bits of the first word up. With no slots, the filter holds
    /// nothing when built from no key, and claims every key otherwise.
    words: Vec<u64>,
}

impl Filter {
    /// The filter of `keys` (repeats are taken once).
    pub fn build(keys: impl IntoIterator<Item = Key>) -> Filter {
        let mut keys: Vec<Key> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let n = keys.len();
        let count = u32::try_from(n).unwrap_or(u32::MAX);
        let none = Geometry {
            seed: 0,
            segment_len: 0,
            segments: 0,
        };
        if n == 0 {
            return Filter {
                geometry: none,
                keys: 0,
                words: Vec::new(),
            };
        }
        // Small tables need a little more room, relatively.
        let permille = 1065 + 5_000 / n;
        for attempt in 0..TRIES {
            let grown = (attempt / TRIES_PER_SIZE) as usize * GROWTH_PERMILLE;
            let seed = mix(0x5eed_0000 + u64::from(attempt));
            let geometry = Geometry::for_keys(n, permille + grown, seed);
            if geometry.slots() > MAX_SLOTS {
                break;
            }
            if let Some(values) = solve(&keys, geometry) {
                log::debug!(
                    "summary: filter of {n} paths in {} slots (try {})",
                    geometry.slots(),
                    attempt + 1
                );
                return Filter {
                    geometry,
                    keys: count,
                    words: pack(&values),
                };
            }
        }
        log::warn!("summary: no filter of {n} paths could be built; it claims every path");
        Filter {
            geometry: none,
            keys: count,
            words: Vec::new(),
        }
    }

    /// False when `key` was surely not among those it was built from.
    pub fn contains(&self, key: Key) -> bool {
        if self.words.is_empty() {
            return self.keys > 0;
        }
        let h = self.geometry.hash(key);
        let x = (self.geometry.positions(h).iter()).fold(0, |x, &at| x ^ self.slot(at));
        x == fingerprint(h)
    }

    fn slot(&self, at: usize) -> u16 {
        let bit = at * FINGERPRINT_BITS as usize;
        let (word, shift) = (bit / 64, bit % 64);
        let low = self.words.get(word).map_or(0, |w| w >> shift);
        let high = match shift + FINGERPRINT_BITS as usize > 64 {
            true => self.words.get(word + 1).map_or(0, |w| w << (64 - shift)),
            false => 0,
        };
        ((low | high) & FINGERPRINT_MASK) as u16
    }

    /// Bytes of memory its table takes.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

fn words_for(slots: usize) -> usize {
    (slots * FINGERPRINT_BITS as usize).div_ceil(64)
}

fn pack(values: &[u16]) -> Vec<u64> {
    let mut words = vec![0u64; words_for(values.len())];
    for (at, &v) in values.iter().enumerate() {
        let bit = at * FINGERPRINT_BITS as usize;
        let (word, shift) = (bit / 64, bit % 64);
        words[word] |= u64::from(v) << shift;
        if shift + FINGERPRINT_BITS as usize > 64 {
            words[word + 1] |= u64::from(v) >> (64 - shift);
        }
    }
    words
}

/// The slots' values such that each key's slots XOR to its fingerprint,
/// or `None` when the keys' equations contradict each other (another
/// seed or a larger table then). Gaussian elimination over GF(2), one key
/// at a time: a key's row is a window of bits starting at its first slot,
/// reduced by the rows kept so far until its first bit is a column no row
/// starts at, where it is kept. Every row fits `ARITY` segments from its
/// first bit, so a window of that width (and a word for the alignment)
/// holds it, and the work stays linear in the keys.
fn solve(keys: &[Key], geometry: Geometry) -> Option<Vec<u16>> {
    let slots = geometry.slots();
    let width = (ARITY * geometry.segment_len as usize).div_ceil(64) + 1;
    let mut rows = vec![0u64; slots * width];
    let mut sums = vec![0u16; slots];
    let mut kept = vec![false; slots];
    let mut row = vec![0u64; width];
    for &key in keys {
        let h = geometry.hash(key);
        let at = geometry.positions(h);
        // The row's first word is word `base` of the table.
        let mut base = at[0] / 64;
        row.fill(0);
        for a in at {
            let a = a - base * 64;
            row[a / 64] |= 1 << (a % 64);
        }
        let mut sum = fingerprint(h);
        loop {
            let Some(skip) = row.iter().position(|&w| w != 0) else {
                // A sum of kept rows: fine when it agrees with them.
                if sum != 0 {
                    return None;
                }
                break;
            };
            row.copy_within(skip.., 0);
            row[width - skip..].fill(0);
            base += skip;
            let column = base * 64 + row[0].trailing_zeros() as usize;
            let other = &mut rows[column * width..(column + 1) * width];
            if !kept[column] {
                other.copy_from_slice(&row);
                sums[column] = sum;
                kept[column] = true;
                break;
            }
            row.iter_mut().zip(other.iter()).for_each(|(a, b)| *a ^= b);
            sum ^= sums[column];
        }
    }
    // Each kept row's other bits lie after its first: last column first.
    let mut values = vec![0u16; slots];
    for column in (0..slots).rev() {
        if !kept[column] {
            continue;
        }
        let mut value = sums[column];
        let words = &rows[column * width..(column + 1) * width];
        for (i, &word) in words.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let bit = (column / 64 + i) * 64 + word.trailing_zeros() as usize;
                if bit != column {
                    value ^= values[bit];
                }
                word &= word - 1;
            }
        }
        values[column] = value;
    }
    Some(values)
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
    /// The whole summary (a node may send one without waiting for a
    /// rebuild).
    Full(PeerSummary),
    /// What changed from version `from` to `version`, in order.
    Delta {
        from: u64,
        version: u64,
        changes: Vec<Change>,
    },
    /// Nothing changed since the version asked about.
    Same { version: u64 },
}

/// A summary as a peer keeps it, and as its owner keeps it too: the
/// filter, and the paths added and removed since it was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSummary {
    pub version: u64,
    filter: Filter,
    /// Keys added since the build that the filter does not hold, sorted.
    added: Vec<u64>,
    /// Keys removed since the build that the filter holds, sorted: they
    /// override it.
    removed: Vec<u64>,
}

/// Why an update cannot be taken in.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// A delta from another version than the one held: ask for a full one.
    WrongBase { held: Option<u64>, from: u64 },
    /// The added and removed paths outgrew their bound: ask for a full one.
    TooManyChanges,
}

impl PeerSummary {
    /// Takes in `update` over `held` (the copy kept so far, if any).
    pub fn update(held: Option<PeerSummary>, update: Update) -> Result<PeerSummary, UpdateError> {
        match update {
            Update::Full(summary) => Ok(summary),
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
                held.apply(&changes);
                if held.changes() > 2 * changes_max(held.filter.keys as usize) {
                    return Err(UpdateError::TooManyChanges);
                }
                held.version = version;
                Ok(held)
            }
        }
    }

    /// Takes in `changes`, in order: for each key the last one counts.
    fn apply(&mut self, changes: &[Change]) {
        let mut last: Vec<(u64, bool)> = (changes.iter())
            .map(|c| match c {
                Change::Added(k) => (k.0, true),
                Change::Removed(k) => (k.0, false),
            })
            .collect();
        last.sort_by_key(|(k, _)| *k);
        last.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                *kept = *later;
            }
            same
        });
        let changed = |k: &u64| last.binary_search_by_key(k, |(k, _)| *k).is_ok();
        self.added.retain(|k| !changed(k));
        self.removed.retain(|k| !changed(k));
        for &(k, added) in &last {
            match (added, self.filter.contains(Key(k))) {
                (true, false) => self.added.push(k),
                (false, true) => self.removed.push(k),
                _ => {}
            }
        }
        self.added.sort_unstable();
        self.removed.sort_unstable();
        self.added.shrink_to_fit();
        self.removed.shrink_to_fit();
    }

    /// Paths added or removed since the filter was built.
    fn changes(&self) -> usize {
        self.added.len() + self.removed.len()
    }

    /// False when the peer surely does not hold `hash`.
    pub fn may_hold(&self, hash: &HashPart) -> bool {
        let key = Key::of(hash);
        if self.removed.binary_search(&key.0).is_ok() {
            return false;
        }
        self.filter.contains(key) || self.added.binary_search(&key.0).is_ok()
    }

    /// Bytes of memory it takes.
    pub fn bytes(&self) -> usize {
        let lists = (self.added.capacity() + self.removed.capacity()) * 8;
        self.filter.bytes() + lists + std::mem::size_of::<Self>()
    }
}

/// The owner's summary of its own store, followed change by change.
pub struct Published {
    /// What a peer holding the current version has.
    current: PeerSummary,
    /// Paths in the store now (as far as the summary knows).
    paths: usize,
    /// Changes since the build, with the version each made; at most
    /// `LOG_MAX`.
    log: VecDeque<(u64, Change)>,
    /// The first version the log reaches back from.
    log_from: u64,
}

impl Published {
    /// The summary of `hashes`, at a version after `previous` (0 at start).
    pub fn build<'a>(hashes: impl IntoIterator<Item = &'a HashPart>, previous: u64) -> Self {
        let mut paths = 0;
        let filter = Filter::build(hashes.into_iter().map(|h| {
            paths += 1;
            Key::of(h)
        }));
        let version = previous + 1;
        Published {
            current: PeerSummary {
                version,
                filter,
                added: Vec::new(),
                removed: Vec::new(),
            },
            paths,
            log: VecDeque::new(),
            log_from: version,
        }
    }

    pub fn version(&self) -> u64 {
        self.current.version
    }

    /// True when the filter should be built anew from the store: it
    /// carries too many added or removed paths, or its log is full.
    pub fn needs_rebuild(&self) -> bool {
        let max = changes_max(self.current.filter.keys as usize);
        self.current.changes() > max || self.log.len() >= LOG_MAX
    }

    /// Takes in paths added to and removed from the store; a new version
    /// when anything changed.
    pub fn apply(&mut self, added: &[HashPart], removed: &[HashPart]) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let changes: Vec<Change> = (added.iter().map(|h| Change::Added(Key::of(h))))
            .chain(removed.iter().map(|h| Change::Removed(Key::of(h))))
            .collect();
        self.current.apply(&changes);
        self.current.version += 1;
        self.paths = (self.paths + added.len()).saturating_sub(removed.len());
        let version = self.current.version;
        self.log.extend(changes.into_iter().map(|c| (version, c)));
        while self.log.len() > LOG_MAX {
            if let Some((v, _)) = self.log.pop_front() {
                self.log_from = v;
            }
        }
    }

    /// What a peer holding version `since` (0: none) needs: nothing, the
    /// changes since, or the whole summary (when the log does not reach
    /// back that far, or the changes would be larger).
    pub fn since(&self, since: u64) -> Update {
        let version = self.current.version;
        if since == version {
            return Update::Same { version };
        }
        if since >= self.log_from && since < version {
            let changes: Vec<Change> = (self.log.iter())
                .filter(|(v, _)| *v > since)
                .map(|(_, c)| *c)
                .collect();
            if changes.len() * CHANGE_LEN < self.current.filter.bytes() {
                return Update::Delta {
                    from: since,
                    version,
                    changes,
                };
            }
        }
        Update::Full(self.current.clone())
    }

    /// Paths in the summary.
    pub fn paths(&self) -> usize {
        self.paths
    }
}

impl Update {
    pub fn version(&self) -> u64 {
        match self {
            Update::Full(s) => s.version,
            Update::Delta { version, .. } | Update::Same { version } => *version,
        }
    }

    /// The bytes of `/peer/summary/<since>`: magic `PXS2`, a kind (1 whole,
    /// 2 delta, 3 same) and the version (u64 BE; all numbers are BE). A
    /// whole summary then has its filter's seed (u64), paths (u32),
    /// segment length and segments (u32 each: the table has three
    /// segments more, of 10 bits a slot; both 0 for no table), the
    /// table's words (u64, as many as its slots need), and the added and
    /// removed keys: each list a count (u32) and the keys (u64, ascending).
    /// A delta has the version it starts from (u64) and its changes: a
    /// count (u32), then each a kind (1 added, 2 removed) and the key (u64).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        match self {
            Update::Full(s) => {
                let g = &s.filter.geometry;
                out.reserve(FULL_HEAD + s.filter.bytes() + 8 + s.changes() * 8);
                out.push(1);
                out.extend_from_slice(&s.version.to_be_bytes());
                out.extend_from_slice(&g.seed.to_be_bytes());
                out.extend_from_slice(&s.filter.keys.to_be_bytes());
                out.extend_from_slice(&g.segment_len.to_be_bytes());
                out.extend_from_slice(&g.segments.to_be_bytes());
                for w in &s.filter.words {
                    out.extend_from_slice(&w.to_be_bytes());
                }
                for list in [&s.added, &s.removed] {
                    out.extend_from_slice(&(list.len() as u32).to_be_bytes());
                    for k in list {
                        out.extend_from_slice(&k.to_be_bytes());
                    }
                }
            }
            Update::Delta {
                from,
                version,
                changes,
            } => {
                out.push(2);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&(changes.len() as u32).to_be_bytes());
                for change in changes {
                    let (kind, key) = match change {
                        Change::Added(k) => (1, k),
                        Change::Removed(k) => (2, k),
                    };
                    out.push(kind);
                    out.extend_from_slice(&key.0.to_be_bytes());
                }
            }
            Update::Same { version } => {
                out.push(3);
                out.extend_from_slice(&version.to_be_bytes());
            }
        }
        out
    }

    /// Parses what `encode` makes; `None` for anything else (the `PXS1`
    /// Bloom filters of earlier versions too).
    pub fn parse(data: &[u8]) -> Option<Update> {
        let mut r = Reader { data, at: 0 };
        if r.take(4)? != MAGIC {
            return None;
        }
        let kind = r.take(1)?[0];
        let version = r.u64()?;
        let update = match kind {
            1 => Update::Full(r.summary(version)?),
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

    /// A whole summary after its version.
    fn summary(&mut self, version: u64) -> Option<PeerSummary> {
        let seed = self.u64()?;
        let keys = self.u32()?;
        let geometry = Geometry {
            seed,
            segment_len: self.u32()?,
            segments: self.u32()?,
        };
        let (len, segments) = (geometry.segment_len as usize, geometry.segments as usize);
        let slots = match (len, segments) {
            (0, 0) => 0,
            (0, _) | (_, 0) => return None,
            _ => (segments.checked_add(ARITY - 1)?).checked_mul(len)?,
        };
        if slots > MAX_SLOTS || (slots > 0 && keys as usize > slots) {
            return None;
        }
        let words = (self.take(words_for(slots) * 8)?.chunks_exact(8))
            .map(be64)
            .collect();
        let max = 2 * changes_max(keys as usize);
        let added = self.keys(max)?;
        let removed = self.keys(max.checked_sub(added.len())?)?;
        Some(PeerSummary {
            version,
            filter: Filter {
                geometry,
                keys,
                words,
            },
            added,
            removed,
        })
    }

    /// A list of at most `max` keys, ascending.
    fn keys(&mut self, max: usize) -> Option<Vec<u64>> {
        let n = self.u32()? as usize;
        if n > max || n * 8 > self.data.len() - self.at {
            return None;
        }
        let keys: Vec<u64> = self.take(n * 8)?.chunks_exact(8).map(be64).collect();
        keys.windows(2).all(|w| w[0] < w[1]).then_some(keys)
    }

    fn changes(&mut self) -> Option<Vec<Change>> {
        let n = self.u32()? as usize;
        if n > DELTA_MAX || n * CHANGE_LEN > self.data.len() - self.at {
            return None;
        }
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let entry = self.take(CHANGE_LEN)?;
            let key = Key(be64(&entry[1..9]));
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
    use std::collections::HashSet;

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

    /// Through the wire, as a peer gets it.
    fn sent(update: Update) -> Update {
        Update::parse(&update.encode()).expect("parses")
    }

    #[test]
    fn about_a_tenth_of_a_percent_false_positives_within_one_and_a_half_bytes_a_path() {
        let absent = hashes(100_000, 7);
        for n in [1_000, 5_000, 20_000] {
            let present = hashes(n, n as u64);
            let published = Published::build(present.iter(), 0);
            let peer = PeerSummary::update(None, sent(published.since(0))).unwrap();
            assert!(
                present.iter().all(|h| peer.may_hold(h)),
                "no false negative"
            );
            let fp = false_positives(&peer, &absent);
            let per_path = peer.bytes() as f64 / n as f64;
            eprintln!(
                "{n} paths: {:.3} % false positives, {per_path:.3} bytes a path",
                fp * 100.0
            );
            assert!(
                fp <= 0.0015,
                "{n} paths: {:.3} % false positives",
                fp * 100.0
            );
            assert!(per_path <= 1.5, "{n} paths: {per_path:.3} bytes a path");
        }
    }

    #[test]
    fn a_large_store_gets_a_table_too() {
        // Past `LARGE` paths the segments are shorter; the slots must
        // still be independent enough for the table to be solved.
        let keys: Vec<Key> = (0..1_000_000).map(|i| Key(mix(i))).collect();
        let filter = Filter::build(keys.iter().copied());
        assert!(
            !filter.words.is_empty(),
            "not the filter claiming every path"
        );
        assert!(keys.iter().all(|k| filter.contains(*k)));
        assert!(filter.bytes() as f64 / keys.len() as f64 <= 1.45);
    }

    #[test]
    fn small_and_empty_stores() {
        let none = Published::build(std::iter::empty(), 0);
        let peer = PeerSummary::update(None, sent(none.since(0))).unwrap();
        assert!(hashes(100, 1).iter().all(|h| !peer.may_hold(h)));
        for n in [1, 2, 3, 10, 100] {
            let present = hashes(n, 40 + n as u64);
            let published = Published::build(present.iter(), 0);
            assert!(!published.current.filter.words.is_empty(), "{n} paths");
            let peer = PeerSummary::update(None, sent(published.since(0))).unwrap();
            assert!(present.iter().all(|h| peer.may_hold(h)), "{n} paths");
        }
    }

    #[test]
    fn repeated_paths_do_not_break_the_build() {
        let present = hashes(2_000, 13);
        let thrice: Vec<&HashPart> = present.iter().chain(&present).chain(&present).collect();
        let published = Published::build(thrice, 0);
        assert_eq!(published.current.filter.keys, 2_000);
        let peer = PeerSummary::update(None, published.since(0)).unwrap();
        assert!(present.iter().all(|h| peer.may_hold(h)));
        let keys = present.iter().map(Key::of);
        let filter = Filter::build(keys.clone().chain(keys.clone()).chain(keys));
        assert!(present.iter().all(|h| filter.contains(Key::of(h))));
    }

    #[test]
    fn a_filter_that_could_not_be_built_claims_every_path() {
        let everything = Filter {
            geometry: Geometry {
                seed: 0,
                segment_len: 0,
                segments: 0,
            },
            keys: 5,
            words: Vec::new(),
        };
        assert!(hashes(100, 3)
            .iter()
            .all(|h| everything.contains(Key::of(h))));
        let summary = PeerSummary {
            version: 4,
            filter: everything,
            added: Vec::new(),
            removed: Vec::new(),
        };
        let full = Update::Full(summary);
        assert_eq!(sent(full.clone()), full);
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
        assert_eq!(
            peer, published.current,
            "the peer holds what the owner does"
        );
        assert!(added.iter().all(|h| peer.may_hold(h)));
        assert!(base[..5].iter().all(|h| !peer.may_hold(h)));
        assert!(base[5..].iter().all(|h| peer.may_hold(h)));
        // Added back: claimed again; an added one removed: no longer.
        let v2 = published.version();
        published.apply(&base[..1], &added[..1]);
        peer = PeerSummary::update(Some(peer), sent(published.since(v2))).unwrap();
        assert!(peer.may_hold(&base[0]));
        assert!(!peer.may_hold(&added[0]));
        // Nothing new: "same".
        let version = published.version();
        assert_eq!(published.since(version), Update::Same { version });
        // A delta over another version is refused (ask for a full one).
        let mut old = PeerSummary::update(None, published.since(0)).unwrap();
        old.version = 1;
        assert!(PeerSummary::update(Some(old), published.since(v2)).is_err());
    }

    #[test]
    fn no_false_negative_through_many_deltas() {
        let mut rng = 0x1234_5678_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let pool = hashes(3_000, 21);
        let mut store: HashSet<HashPart> = pool[..2_000].iter().copied().collect();
        let mut published = Published::build(store.iter(), 0);
        let mut peer = PeerSummary::update(None, sent(published.since(0))).unwrap();
        let mut rebuilds = 0;
        for _ in 0..300 {
            let (mut added, mut removed) = (Vec::new(), Vec::new());
            for _ in 0..(next() % 4) {
                let h = pool[next() as usize % pool.len()];
                match store.contains(&h) {
                    true => removed.push(h),
                    false => added.push(h),
                }
            }
            for h in &added {
                store.insert(*h);
            }
            for h in &removed {
                store.remove(h);
            }
            let held = peer.version;
            published.apply(&added, &removed);
            if published.needs_rebuild() {
                published = Published::build(store.iter(), published.version());
                rebuilds += 1;
            }
            peer = match PeerSummary::update(Some(peer), sent(published.since(held))) {
                Ok(peer) => peer,
                Err(_) => PeerSummary::update(None, sent(published.since(0))).unwrap(),
            };
            assert_eq!(peer, published.current);
            assert!(store.iter().all(|h| peer.may_hold(h)), "no false negative");
            assert!(
                removed.iter().all(|h| !peer.may_hold(h)),
                "removed: not claimed"
            );
        }
        assert!(
            rebuilds > 0,
            "the changes outgrew their bound at least once"
        );
    }

    #[test]
    fn many_changes_rebuild_and_a_full_summary_carries_them() {
        let base = hashes(1_000, 5);
        let mut published = Published::build(base.iter(), 0);
        let max = changes_max(1_000);
        published.apply(&[], &base[..max]);
        assert!(!published.needs_rebuild());
        let peer = PeerSummary::update(None, sent(published.since(0))).unwrap();
        assert!(base[..max].iter().all(|h| !peer.may_hold(h)));
        assert!(base[max..].iter().all(|h| peer.may_hold(h)));
        published.apply(&[], &base[max..max + 1]);
        assert!(published.needs_rebuild());
        let rebuilt = Published::build(base[max + 1..].iter(), published.version());
        assert!(rebuilt.version() > published.version());
        assert!(!rebuilt.needs_rebuild());
        // Added paths count too.
        let mut grown = Published::build(base.iter(), 0);
        grown.apply(&hashes(changes_max(1_000), 60), &[]);
        assert!(!grown.needs_rebuild());
        grown.apply(&hashes(1, 70), &[]);
        assert!(grown.needs_rebuild());
    }

    #[test]
    fn a_peer_refuses_a_delta_past_the_bound() {
        let base = hashes(1_000, 8);
        let mut published = Published::build(base.iter(), 0);
        let peer = PeerSummary::update(None, published.since(0)).unwrap();
        let from = published.version();
        published.apply(&hashes(2 * changes_max(1_000) + 1, 100), &[]);
        let delta = Update::Delta {
            from,
            version: published.version(),
            changes: (published.log.iter()).map(|(_, c)| *c).collect(),
        };
        let refused = PeerSummary::update(Some(peer), sent(delta));
        assert_eq!(refused, Err(UpdateError::TooManyChanges));
    }

    #[test]
    fn a_long_delta_is_sent_as_a_full_summary() {
        let mut published = Published::build(hashes(100, 6).iter(), 0);
        let v = published.version();
        published.apply(&hashes(400, 8), &[]);
        assert!(matches!(published.since(v), Update::Full(_)));
    }

    #[test]
    fn broken_updates_are_refused_without_panic() {
        let mut published = Published::build(hashes(50, 10).iter(), 0);
        let v = published.version();
        published.apply(&hashes(3, 110), &hashes(2, 120));
        published.apply(&[], &hashes(50, 10)[..2]);
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
        let full = published.since(0).encode();
        let at = |field: usize| FULL_HEAD - 12 + field;
        // A table too large, or one whose segments overflow.
        for (field, value) in [(4, u32::MAX), (8, u32::MAX), (4, 0), (0, u32::MAX)] {
            let mut bad = full.clone();
            bad[at(field)..at(field) + 4].copy_from_slice(&value.to_be_bytes());
            assert_eq!(Update::parse(&bad), None, "field {field} = {value}");
        }
        // Keys out of order.
        let Update::Full(mut summary) = published.since(0) else {
            panic!("a whole summary")
        };
        summary.removed.reverse();
        assert!(summary.removed.len() > 1);
        assert_eq!(Update::parse(&Update::Full(summary).encode()), None);
        // Counts past what the bytes hold.
        let mut huge = b"PXS2\x02".to_vec();
        huge.extend_from_slice(&9u64.to_be_bytes());
        huge.extend_from_slice(&1u64.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Update::parse(&huge), None);
        assert_eq!(Update::parse(b"PXS2\x09\0\0\0\0\0\0\0\0"), None);
        // Garbage, with and without the magic.
        let mut x = 99u64;
        for len in 0..2_000 {
            let mut bytes: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x = mix(x);
                    x as u8
                })
                .collect();
            if len % 2 == 0 && bytes.len() > 5 {
                bytes[..4].copy_from_slice(MAGIC);
                bytes[4] = (len % 4) as u8;
            }
            let _ = Update::parse(&bytes);
        }
    }

    #[test]
    fn the_bloom_filters_of_pxs1_are_refused() {
        // PXS1 "same", and a PXS1 whole Bloom filter of one word with no
        // removed path: what a node of the version before sends.
        let mut same = b"PXS1\x03".to_vec();
        same.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(Update::parse(&same), None);
        let mut bloom = b"PXS1\x01".to_vec();
        bloom.extend_from_slice(&5u64.to_be_bytes());
        bloom.extend_from_slice(&1u32.to_be_bytes());
        bloom.extend_from_slice(&u64::MAX.to_be_bytes());
        bloom.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(Update::parse(&bloom), None);
    }
}
