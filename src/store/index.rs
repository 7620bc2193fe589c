//! The index of the store directory: which valid store path (if any) has a
//! given hash part, answered from memory.
//!
//! It is built by listing the store directory and confirming validity with
//! one `nix-store --check-validity` per batch: a directory entry exists
//! while a path is being built or substituted, before it is valid.
//! [`refresh`] notices new and deleted paths (the directory's mtime changes)
//! and paths that became valid since the last look (Nix's database
//! changed, or, where it cannot be seen, after a growing wait).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use crate::narinfo::HashPart;
use crate::store::nix::{self, NixError};

/// Entries that were not valid yet (a path being built or substituted) are
/// checked again after this, then after twice as long each time nothing
/// became valid, up to `RECHECK_MAX`: a finished build is noticed within a
/// fraction of a second, and a leftover directory that never becomes valid
/// costs a `nix-store` call only every half minute.
const RECHECK_FIRST: Duration = Duration::from_millis(250);
const RECHECK_MAX: Duration = Duration::from_secs(30);

/// Bytes of arguments per `nix-store --check-validity` call: far below the
/// command line limit, and large enough that Nix's start-up (tens of
/// milliseconds) is paid a few times for a store of 100 000 paths, not
/// a hundred times.
const BATCH_BYTES: usize = 512 * 1024;

/// Hash part → basename, for valid paths and for entries still pending.
#[derive(Default)]
pub struct Index {
    dir: PathBuf,
    valid: HashMap<HashPart, Box<str>>,
    pending: HashMap<HashPart, Box<str>>,
    dir_mtime: Option<SystemTime>,
    /// Nix's database, whose files change when a path becomes valid.
    db_files: Vec<PathBuf>,
    db_mtimes: Vec<Option<SystemTime>>,
    /// When pending entries are checked next, and the wait after that.
    next_recheck: Option<Instant>,
    recheck_wait: Duration,
}

/// What changed in one refresh.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: Vec<HashPart>,
}

impl Index {
    /// The index of the store directory `dir`, whose Nix database is in
    /// `db_dir` (`/nix/var/nix/db`).
    pub fn new(dir: &Path, db_dir: &Path) -> Index {
        Index {
            dir: dir.to_owned(),
            db_files: ["db.sqlite", "db.sqlite-wal"]
                .iter()
                .map(|f| db_dir.join(f))
                .collect(),
            ..Index::default()
        }
    }

    /// The basename of the valid path with this hash part.
    pub fn get(&self, hash: &HashPart) -> Option<&str> {
        self.valid.get(hash).map(|b| &**b)
    }

    pub fn len(&self) -> usize {
        self.valid.len()
    }

    /// Forgets a path (it turned out not to be valid any more).
    pub fn forget(&mut self, hash: &HashPart) {
        if let Some(name) = self.valid.remove(hash) {
            self.pending.insert(*hash, name);
        }
    }

    /// Takes in a listing of the store directory made at `mtime`: entries
    /// gone are dropped (returned), new ones wait for a validity check.
    fn apply_listing(
        &mut self,
        mtime: SystemTime,
        listed: HashMap<HashPart, Box<str>>,
    ) -> Vec<HashPart> {
        self.dir_mtime = Some(mtime);
        let removed = (self.valid.keys())
            .filter(|h| !listed.contains_key(h))
            .copied()
            .collect();
        self.valid.retain(|h, _| listed.contains_key(h));
        self.pending.retain(|h, _| listed.contains_key(h));
        for (hash, name) in listed {
            if !self.valid.contains_key(&hash) {
                // Overwrite: what was listed as `<path>.lock` while the path
                // was being built is the path itself now.
                self.pending.insert(hash, name);
            }
        }
        self.next_recheck = None;
        self.recheck_wait = RECHECK_FIRST;
        removed
    }

    /// The pending entries, taken out to be checked, when a check is due:
    /// after a listing, when Nix's database changed, or when the growing
    /// wait has passed.
    fn take_due(&mut self, db_mtimes: Vec<Option<SystemTime>>) -> Vec<(HashPart, Box<str>)> {
        if db_mtimes != self.db_mtimes {
            self.db_mtimes = db_mtimes;
            self.next_recheck = None;
        }
        if self.pending.is_empty() || self.next_recheck.is_some_and(|t| Instant::now() < t) {
            return Vec::new();
        }
        std::mem::take(&mut self.pending).into_iter().collect()
    }

    /// Puts checked entries back: valid ones into the index, the others
    /// pending again. Returns how many became valid.
    fn put_checked(&mut self, checked: Vec<Checked>) -> usize {
        let mut added = 0;
        for (hash, name, valid) in checked {
            if valid {
                self.valid.insert(hash, name);
                added += 1;
            } else {
                self.pending.insert(hash, name);
            }
        }
        self.recheck_wait = if added > 0 {
            RECHECK_FIRST
        } else {
            (self.recheck_wait * 2).min(RECHECK_MAX)
        };
        self.next_recheck = Some(Instant::now() + self.recheck_wait);
        added
    }
}

/// Brings the index behind `lock` up to date with the store directory,
/// validating what is new. The lock is held only while the maps change:
/// the directory is listed and Nix is asked without it, so lookups (the
/// UDP thread's) never wait for a `nix-store` process. Cheap when nothing
/// changed: a few `stat`s. Only one thread may refresh a given index.
pub fn refresh(lock: &RwLock<Index>) -> Result<Changes, NixError> {
    let poisoned = || NixError::Io("the store index lock is poisoned".into());
    let (dir, db_files, known_mtime) = {
        let index = lock.read().map_err(|_| poisoned())?;
        (index.dir.clone(), index.db_files.clone(), index.dir_mtime)
    };
    let mtime = std::fs::metadata(&dir)
        .and_then(|m| m.modified())
        .map_err(|e| NixError::Io(format!("cannot stat {}: {e}", dir.display())))?;
    let listed = match known_mtime == Some(mtime) {
        true => None,
        false => Some(list_store_dir(&dir)?),
    };
    let db_mtimes = (db_files.iter())
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect();
    let mut changes = Changes::default();
    let due = {
        let mut index = lock.write().map_err(|_| poisoned())?;
        if let Some(listed) = listed {
            changes.removed = index.apply_listing(mtime, listed);
        }
        index.take_due(db_mtimes)
    };
    if due.is_empty() {
        return Ok(changes);
    }
    let (checked, failure) = check_validity(&dir, due);
    changes.added = lock.write().map_err(|_| poisoned())?.put_checked(checked);
    match failure {
        Some(e) => Err(e),
        None => Ok(changes),
    }
}

/// An entry of the store directory, and whether Nix says it is valid.
type Checked = (HashPart, Box<str>, bool);

/// Asks Nix which of `entries` are valid paths, in batches of at most
/// `BATCH_BYTES` of arguments, two `nix-store --check-validity` at a time.
/// An entry whose batch failed counts as not valid (it is checked again
/// later); the first failure is returned beside.
fn check_validity(
    dir: &Path,
    entries: Vec<(HashPart, Box<str>)>,
) -> (Vec<Checked>, Option<NixError>) {
    let mut lengths = Vec::new();
    let (mut len, mut bytes) = (0, 0);
    for (_, name) in &entries {
        bytes += dir.as_os_str().len() + name.len() + 2;
        if bytes > BATCH_BYTES && len > 0 {
            lengths.push(len);
            (len, bytes) = (0, 0);
        }
        len += 1;
    }
    lengths.push(len);
    let mut batches = Vec::with_capacity(lengths.len());
    let mut rest = &entries[..];
    for &len in &lengths {
        let (batch, tail) = rest.split_at(len);
        batches.push(batch);
        rest = tail;
    }
    let check = |batch: &[(HashPart, Box<str>)]| {
        let names: Vec<&str> = batch.iter().map(|(_, n)| &**n).collect();
        nix::invalid_paths(dir, &names)
    };
    let mut results = Vec::with_capacity(batches.len());
    for pair in batches.chunks(2) {
        std::thread::scope(|scope| {
            let second = pair.get(1).map(|b| scope.spawn(|| check(b)));
            results.push(check(pair[0]));
            if let Some(second) = second {
                results.push(second.join().unwrap_or_else(|_| {
                    Err(NixError::Io("nix-store --check-validity panicked".into()))
                }));
            }
        });
    }
    let mut failure = None;
    let mut checked = Vec::with_capacity(entries.len());
    let mut entries = entries.into_iter();
    for (len, result) in lengths.into_iter().zip(results) {
        let invalid = match result {
            Ok(invalid) => Some(invalid),
            Err(e) => {
                failure.get_or_insert(e);
                None
            }
        };
        for (hash, name) in entries.by_ref().take(len) {
            let valid = invalid.as_ref().is_some_and(|i| !i.contains(&*name));
            checked.push((hash, name, valid));
        }
    }
    (checked, failure)
}

/// Lists the store directory: every entry that looks like a store path.
fn list_store_dir(dir: &Path) -> Result<HashMap<HashPart, Box<str>>, NixError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| NixError::Io(format!("cannot list {}: {e}", dir.display())))?;
    let mut listed: HashMap<HashPart, Box<str>> = HashMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(hash) = HashPart::of_basename(name) else {
            continue;
        };
        // A lock file `<path>.lock` shares its path's hash part: keep the path.
        match listed.entry(hash) {
            Entry::Vacant(slot) => {
                slot.insert(name.into());
            }
            Entry::Occupied(mut slot) if slot.get().len() > name.len() => {
                slot.insert(name.into());
            }
            Entry::Occupied(_) => {}
        }
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_keeps_paths_over_their_lock_files_and_skips_the_rest() {
        let dir = std::env::temp_dir().join(format!("peerix-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let hash = "65hpr3iwgygz9ahgnagy7f6cnlmphkxm";
        for name in [
            format!("{hash}-hello.lock"),
            format!("{hash}-hello"),
            "awrccy8w2v4v74m9ipglpniq94nkh3x4-being-built.lock".into(),
            ".links".into(),
            "not-a-store-path".into(),
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let listed = list_store_dir(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(
            &*listed[&HashPart::parse(hash).unwrap()],
            format!("{hash}-hello")
        );
        let building = HashPart::parse("awrccy8w2v4v74m9ipglpniq94nkh3x4").unwrap();
        assert_eq!(
            &*listed[&building],
            "awrccy8w2v4v74m9ipglpniq94nkh3x4-being-built.lock"
        );
    }
}
