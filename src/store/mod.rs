//! The local Nix store, as this node offers it to peers: an in-memory index
//! of valid paths by hash part, path metadata from the Nix CLI cached per
//! path, the share policy's verdict per path (cached too), and NARs
//! streamed from `nix-store --dump`.

mod dump;
mod index;
mod nix;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

pub use dump::Dump;
pub use nix::{NixError, PathInfo};

use crate::narinfo::{HashPart, STORE_DIR};
use crate::share::Policy;
use index::Index;

/// How often the store directory is looked at for new and deleted paths.
const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// Path infos kept in memory; beyond this the cache starts again empty.
const INFO_CACHE_MAX: usize = 8192;

/// Paths per `nix-store --dump-db` call.
const INFO_BATCH: usize = 500;

/// Paths of the closures of asked paths whose infos are fetched ahead, at
/// most per batch: Nix asks for a path's references next.
const PREFETCH_MAX: usize = 2000;

/// The longest a worker waits for a path's info.
const INFO_WAIT: Duration = Duration::from_secs(20);

/// A worker's question to the path-info thread.
struct InfoRequest {
    hash: HashPart,
    name: String,
    reply: Sender<Result<Option<Arc<PathInfo>>, NixError>>,
}

pub struct Store {
    index: RwLock<Index>,
    infos: Mutex<HashMap<HashPart, Arc<PathInfo>>>,
    policy: Policy,
    /// Whether the policy lets a path (with its closure) be shared.
    verdicts: Mutex<HashMap<HashPart, bool>>,
    /// To the path-info thread, which asks Nix for many paths at once.
    info_requests: Sender<InfoRequest>,
}

impl Store {
    /// Indexes the store directory (validating every entry once) and keeps
    /// the index fresh from a background thread.
    pub fn open(policy: Policy) -> Result<Arc<Store>, NixError> {
        let index = RwLock::new(Index::new(
            Path::new(STORE_DIR),
            Path::new("/nix/var/nix/db"),
        ));
        index::refresh(&index)?;
        let valid = index.read().map_or(0, |i| i.len());
        log::info!("store: {valid} valid paths in {STORE_DIR}");
        release_free_memory();
        let (info_requests, info_rx) = crossbeam_channel::unbounded();
        let store = Arc::new(Store {
            index,
            infos: Mutex::new(HashMap::new()),
            policy,
            verdicts: Mutex::new(HashMap::new()),
            info_requests,
        });
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("store-infos".into())
            .spawn(move || serve_infos(weak, info_rx))
            .map_err(|e| NixError::Io(format!("cannot start the store thread: {e}")))?;
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

    /// Looks at the store directory again; see `index::refresh`.
    fn refresh(&self) {
        match index::refresh(&self.index) {
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
        let Some(closure) = nix::closure(&[name])? else {
            return Ok(false);
        };
        if !closure.iter().all(|p| self.policy.name_allowed(p)) {
            return Ok(false);
        }
        if self.policy.signed_by.is_empty() {
            return Ok(true);
        }
        let names: Vec<&str> = closure.iter().map(String::as_str).collect();
        if !self.fetch_infos(&names)? {
            return Ok(false);
        }
        Ok(names.iter().all(|name| {
            HashPart::of_basename(name)
                .and_then(|hash| self.cached_info(&hash))
                .is_some_and(|info| self.policy.allows(&info))
        }))
    }

    /// Caches the infos of those of `names` not cached yet, `INFO_BATCH`
    /// paths per Nix call. False when one of them is not valid.
    fn fetch_infos(&self, names: &[&str]) -> Result<bool, NixError> {
        let missing: Vec<&str> = (names.iter().copied())
            .filter(|n| HashPart::of_basename(n).is_some_and(|h| self.cached_info(&h).is_none()))
            .collect();
        for chunk in missing.chunks(INFO_BATCH) {
            match nix::path_infos(chunk)? {
                Some(infos) => infos.into_iter().for_each(|i| drop(self.cache_info(i))),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The metadata of the valid path with this hash part: from the cache,
    /// or from the path-info thread, which asks Nix for all the paths asked
    /// at the same time at once. `Ok(None)` when this store does not hold it.
    pub fn path_info(&self, hash: &HashPart) -> Result<Option<Arc<PathInfo>>, NixError> {
        if let Some(info) = self.cached_info(hash) {
            return Ok(Some(info));
        }
        let Some(name) = self.lookup(hash) else {
            return Ok(None);
        };
        let (reply, answer) = crossbeam_channel::bounded(1);
        let request = InfoRequest {
            hash: *hash,
            name,
            reply,
        };
        let gone = || NixError::Io("the path-info thread is gone".into());
        self.info_requests.send(request).map_err(|_| gone())?;
        answer
            .recv_timeout(INFO_WAIT)
            .map_err(|_| NixError::Io(format!("no path info for {hash} after {INFO_WAIT:?}")))?
    }

    fn cached_info(&self, hash: &HashPart) -> Option<Arc<PathInfo>> {
        self.infos.lock().ok()?.get(hash).cloned()
    }

    fn cache_info(&self, info: PathInfo) -> Option<Arc<PathInfo>> {
        let hash = HashPart::of_basename(&info.path)?;
        let info = Arc::new(info);
        if let Ok(mut infos) = self.infos.lock() {
            if infos.len() >= INFO_CACHE_MAX {
                infos.clear();
            }
            infos.insert(hash, info.clone());
        }
        Some(info)
    }

    /// Answers a batch of requests with as few Nix calls as it can, then
    /// fetches ahead the infos of their closures.
    fn answer_infos(&self, batch: Vec<InfoRequest>) {
        let mut names: Vec<&str> = (batch.iter())
            .filter(|r| self.cached_info(&r.hash).is_none())
            .map(|r| r.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut failed: HashMap<&str, NixError> = HashMap::new();
        match nix::path_infos(&names) {
            Ok(Some(infos)) => infos.into_iter().for_each(|i| drop(self.cache_info(i))),
            // One of them is not valid (any more): ask one by one.
            Ok(None) => {
                for name in &names {
                    match nix::path_info(name) {
                        Ok(Some(info)) => drop(self.cache_info(info)),
                        Ok(None) => log::debug!("store: {name} is no longer valid"),
                        Err(e) => drop(failed.insert(name, e)),
                    }
                }
            }
            Err(e) => names.iter().for_each(|n| drop(failed.insert(n, e.clone()))),
        }
        for request in &batch {
            let answer = match (self.cached_info(&request.hash), failed.get(&*request.name)) {
                (Some(info), _) => Ok(Some(info)),
                (None, Some(e)) => Err(e.clone()),
                (None, None) => {
                    if let Ok(mut index) = self.index.write() {
                        index.forget(&request.hash);
                    }
                    Ok(None)
                }
            };
            let _ = request.reply.send(answer);
        }
        self.prefetch(&names);
    }

    /// Caches the infos of the closures of `names` (Nix asks for the
    /// references of a path next), up to `PREFETCH_MAX` paths.
    fn prefetch(&self, names: &[&str]) {
        let Ok(Some(closure)) = nix::closure(names) else {
            return;
        };
        let ahead: Vec<&str> = closure
            .iter()
            .map(String::as_str)
            .take(PREFETCH_MAX)
            .collect();
        match self.fetch_infos(&ahead) {
            Ok(_) => log::debug!("store: fetched ahead the infos of {} paths", ahead.len()),
            Err(e) => log::debug!("store: cannot fetch ahead: {e}"),
        }
    }
}

/// Gives the memory freed after building the index (the listing, the
/// batches) back to the system, so that it does not stay in the resident
/// size of a daemon that idles for days.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The path-info thread: takes every request waiting, answers them
/// together, and goes on while the store lives.
fn serve_infos(store: Weak<Store>, requests: Receiver<InfoRequest>) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < INFO_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        match store.upgrade() {
            Some(store) => store.answer_infos(batch),
            None => return,
        }
    }
}
