//! The local Nix store, as this node offers it to peers: an in-memory index
//! of valid paths by hash part, path metadata from the Nix CLI cached per
//! path, the share policy's verdict per path (cached too), and NARs
//! streamed from `nix-store --dump`.

mod dump;
mod index;
mod nix;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use dump::Dump;
pub use nix::{NixError, PathInfo};

use crate::narinfo::{HashPart, STORE_DIR};
use crate::share::Policy;
use index::Index;

/// How often the store directory is looked at for new and deleted paths.
const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// Path infos kept in memory; beyond this the cache starts again empty.
const INFO_CACHE_MAX: usize = 8192;

/// Paths per `nix-store --dump-db` call when a closure is checked.
const INFO_BATCH: usize = 500;

pub struct Store {
    index: RwLock<Index>,
    infos: Mutex<HashMap<HashPart, Arc<PathInfo>>>,
    policy: Policy,
    /// Whether the policy lets a path (with its closure) be shared.
    verdicts: Mutex<HashMap<HashPart, bool>>,
}

impl Store {
    /// Indexes the store directory (validating every entry once) and keeps
    /// the index fresh from a background thread.
    pub fn open(policy: Policy) -> Result<Arc<Store>, NixError> {
        let mut index = Index::new(Path::new(STORE_DIR), Path::new("/nix/var/nix/db"));
        index.refresh()?;
        log::info!("store: {} valid paths in {STORE_DIR}", index.len());
        let store = Arc::new(Store {
            index: RwLock::new(index),
            infos: Mutex::new(HashMap::new()),
            policy,
            verdicts: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("store-refresh".into())
            .spawn(move || {
                while let Some(store) = weak.upgrade() {
                    store.refresh();
                    drop(store);
                    std::thread::sleep(REFRESH_EVERY);
                }
            })
            .map_err(|e| NixError::Io(format!("cannot start the store thread: {e}")))?;
        Ok(store)
    }

    /// Looks at the store directory again; see `Index::refresh`. When the
    /// directory changed, lookups wait for the `nix-store --check-validity`
    /// of the new entries (tens of milliseconds); otherwise this is a `stat`.
    fn refresh(&self) {
        let changes = match self.index.write() {
            Ok(mut index) => index.refresh(),
            Err(_) => return,
        };
        match changes {
            Ok(changes) => {
                if changes.added > 0 || !changes.removed.is_empty() {
                    log::debug!(
                        "store: {} paths added, {} removed",
                        changes.added,
                        changes.removed.len()
                    );
                }
                if let Ok(mut infos) = self.infos.lock() {
                    for hash in &changes.removed {
                        infos.remove(hash);
                    }
                }
                if let Ok(mut verdicts) = self.verdicts.lock() {
                    for hash in &changes.removed {
                        verdicts.remove(hash);
                    }
                }
            }
            Err(e) => log::warn!("store: cannot refresh the index: {e}"),
        }
    }

    /// The number of valid paths.
    pub fn valid_paths(&self) -> usize {
        self.index.read().map_or(0, |i| i.len())
    }

    /// The basename of the valid path with this hash part, from memory.
    pub fn lookup(&self, hash: &HashPart) -> Option<String> {
        self.index.read().ok()?.get(hash).map(str::to_owned)
    }

    /// Whether the share policy offers this path to peers, from memory:
    /// `None` when that is not known yet (see `shareable`).
    pub fn shareable_known(&self, hash: &HashPart) -> Option<bool> {
        if self.lookup(hash).is_none() {
            return Some(false);
        }
        if self.policy.shares_everything() {
            return Some(true);
        }
        self.verdicts.lock().ok()?.get(hash).copied()
    }

    /// Whether this store holds the path and the share policy offers it to
    /// peers: the path and every path of its closure pass. Decided once per
    /// path with the Nix CLI (its closure, and the path infos of the
    /// closure when signatures matter), then from the cache.
    pub fn shareable(&self, hash: &HashPart) -> Result<bool, NixError> {
        if let Some(known) = self.shareable_known(hash) {
            return Ok(known);
        }
        let Some(name) = self.lookup(hash) else {
            return Ok(false);
        };
        let verdict = self.judge(&name)?;
        if !verdict {
            log::debug!("store: {name} is not shared (share policy)");
        }
        if let Ok(mut verdicts) = self.verdicts.lock() {
            if verdicts.len() >= INFO_CACHE_MAX {
                verdicts.clear();
            }
            verdicts.insert(*hash, verdict);
        }
        Ok(verdict)
    }

    fn judge(&self, name: &str) -> Result<bool, NixError> {
        let Some(closure) = nix::closure(name)? else {
            return Ok(false);
        };
        if !closure.iter().all(|p| self.policy.name_allowed(p)) {
            return Ok(false);
        }
        if self.policy.signed_by.is_empty() {
            return Ok(true);
        }
        let names: Vec<&str> = closure.iter().map(String::as_str).collect();
        for batch in names.chunks(INFO_BATCH) {
            match nix::path_infos(batch)? {
                Some(infos) if infos.iter().all(|i| self.policy.allows(i)) => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The metadata of the valid path with this hash part: from the cache,
    /// or from one round of Nix CLI calls. `Ok(None)` when this store does
    /// not hold it.
    pub fn path_info(&self, hash: &HashPart) -> Result<Option<Arc<PathInfo>>, NixError> {
        if let Some(info) = self.infos.lock().ok().and_then(|i| i.get(hash).cloned()) {
            return Ok(Some(info));
        }
        let Some(name) = self.lookup(hash) else {
            return Ok(None);
        };
        let Some(info) = nix::path_info(&name)? else {
            log::debug!("store: {name} is no longer valid");
            if let Ok(mut index) = self.index.write() {
                index.forget(hash);
            }
            return Ok(None);
        };
        let info = Arc::new(info);
        if let Ok(mut infos) = self.infos.lock() {
            if infos.len() >= INFO_CACHE_MAX {
                infos.clear();
            }
            infos.insert(*hash, info.clone());
        }
        Ok(Some(info))
    }
}
