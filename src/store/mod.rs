//! The local Nix store, as this node offers it to peers: the index of
//! valid paths by hash part (`index.rs`, followed with inotify), path
//! metadata asked of a long-lived `nix-store --serve` (`serve.rs`) by one
//! thread and cached per path, the share policy (`share.rs`) and its
//! verdict per path (cached too), NARs streamed from Nix (`nar.rs`), and
//! the store's summary that peers keep a copy of (`summary.rs`).
//!
//! Nothing here waits on Nix without a deadline: a hung nix-daemon makes
//! a path info "not found" after `INFO_WAIT`, never a stuck worker.

mod index;
mod nar;
mod serve;
pub mod share;
pub mod summary;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub use serve::{NixError, PathInfo};

use crate::base::bounded::Bounded;
use crate::nix::narinfo::{HashPart, STORE_DIR};
use serve::Serve;
use share::Policy;
use summary::{Published, Update};

/// Path infos kept in memory, per generation of the cache.
const INFO_CACHE: usize = 8192;

/// Paths per question to Nix about metadata.
const INFO_BATCH: usize = 1000;

/// Paths per question to Nix about validity.
const VALID_BATCH: usize = 10_000;

/// Paths of the closures of asked paths whose infos are fetched ahead, at
/// most per batch: Nix asks for a path's references next.
const PREFETCH_MAX: usize = 2000;

/// The longest a worker waits for a path's info (or a verdict) before it
/// answers "not found".
const INFO_WAIT: Duration = Duration::from_secs(5);

/// The longest one exchange with the metadata `nix-store --serve` may take.
const META_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata `nix-store --serve` is ended after this long without a
/// question.
const META_IDLE: Duration = Duration::from_secs(30);

/// A question to the metadata child that fails within this long is asked
/// again of a new child.
const RETRY_WITHIN: Duration = Duration::from_secs(1);

/// Questions waiting for the metadata thread, at most; more are refused.
const META_QUEUE: usize = 4096;

/// Where the metadata thread sends an answer.
type Reply<T> = Sender<Result<T, NixError>>;

/// A question for path infos: the paths, and where the answer goes.
type InfoQuestion = (Vec<String>, Reply<Vec<Arc<PathInfo>>>);

/// A question to the metadata thread, with where its answer goes.
enum Question {
    /// The infos of those of these paths that are valid (cached too).
    Infos(Vec<String>, Reply<Vec<Arc<PathInfo>>>),
    /// Which of these paths are valid.
    Valid(Vec<String>, Reply<Vec<String>>),
    /// Their closure; `None` when one of them is not valid.
    Closure(Vec<String>, Reply<Option<Vec<String>>>),
    /// End the child and the thread; say when done.
    Stop(Sender<()>),
}

pub struct Store {
    valid: index::Valid,
    infos: Mutex<Bounded<HashPart, Arc<PathInfo>>>,
    policy: Policy,
    /// Whether the policy lets a path (with its closure) be shared.
    verdicts: Mutex<Bounded<HashPart, bool>>,
    /// To the metadata thread, which owns a `nix-store --serve`.
    questions: Sender<Question>,
    nars: Arc<nar::Pool>,
    /// The summary of the valid paths peers are sent (`summary.rs`),
    /// following the index change by change.
    summary: Mutex<Published>,
    /// Its version, read by the UDP thread at every turn.
    summary_version: AtomicU64,
    /// Told when the version changes (discovery wakes its UDP thread, so
    /// that peers hear of new paths at once).
    summary_changed: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl Store {
    /// The valid paths among `names`, asked of the metadata thread.
    fn valid_by_meta(&self, names: &[&str]) -> Result<Vec<String>, NixError> {
        let mut found = Vec::new();
        for batch in names.chunks(VALID_BATCH) {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let batch = batch.iter().map(|n| n.to_string()).collect();
            found.extend(self.ask(Question::Valid(batch, reply), answer, 2 * META_TIMEOUT)?);
        }
        Ok(found)
    }

    /// Starts the metadata thread, indexes the store directory (asking Nix
    /// which entries are valid) and follows it from a thread of its own.
    pub fn open(policy: Policy) -> Result<Arc<Store>, NixError> {
        let (questions, asked) = crossbeam_channel::bounded(META_QUEUE);
        let store = Arc::new(Store {
            valid: RwLock::new(HashMap::new()),
            infos: Mutex::new(Bounded::new(INFO_CACHE)),
            policy,
            verdicts: Mutex::new(Bounded::new(INFO_CACHE)),
            questions,
            nars: nar::Pool::new(),
            summary: Mutex::new(Published::build(std::iter::empty(), 0)),
            summary_version: AtomicU64::new(1),
            summary_changed: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&store);
        spawn("store-meta", move || answer_questions(weak, asked))?;
        let started = Instant::now();
        let follower = index::Follower::start(
            Path::new(STORE_DIR),
            Path::new("/nix/var/nix/db"),
            &store.valid,
            &*store,
        )?;
        log::info!(
            "store: {} valid paths in {STORE_DIR} (indexed in {:.1?})",
            store.valid_paths(),
            started.elapsed()
        );
        release_free_memory();
        let weak = Arc::downgrade(&store);
        spawn("store-index", move || {
            let Some(store) = weak.upgrade() else { return };
            let alive = || weak.strong_count() > 1;
            follower.run(&store.valid, &*store, alive);
        })?;
        Ok(store)
    }

    /// The version of this store's summary: it changes within a tick of
    /// the index when a path is added or removed.
    pub fn summary_version(&self) -> u64 {
        self.summary_version.load(Ordering::Relaxed)
    }

    /// What a peer that holds version `since` of the summary needs.
    pub fn summary_since(&self, since: u64) -> Option<Update> {
        Some(self.summary.lock().ok()?.since(since))
    }

    /// Takes the index's changes into the summary, building it anew from
    /// the index when it is due.
    fn summarise(&self, added: &[HashPart], removed: &[HashPart]) {
        let Ok(mut summary) = self.summary.lock() else {
            return;
        };
        summary.apply(added, removed);
        if summary.needs_rebuild() {
            if let Ok(valid) = self.valid.read() {
                *summary = Published::build(valid.keys(), summary.version());
                log::debug!("store: summary of {} paths built anew", summary.paths());
            }
        }
        let before = (self.summary_version).swap(summary.version(), Ordering::Relaxed);
        drop(summary);
        if before != self.summary_version.load(Ordering::Relaxed) {
            if let Some(changed) = self.summary_changed.get() {
                changed();
            }
        }
    }

    /// Calls `f` whenever the summary's version changes (once set, for
    /// good).
    pub fn on_summary_change(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.summary_changed.set(f);
    }

    /// The number of valid paths.
    pub fn valid_paths(&self) -> usize {
        self.valid.read().map_or(0, |v| v.len())
    }

    /// The basename of the valid path with this hash part, from memory.
    pub fn lookup(&self, hash: &HashPart) -> Option<String> {
        self.valid.read().ok()?.get(hash).map(|n| n.to_string())
    }

    /// Ends the Nix children that are not streaming a NAR (those that are
    /// end with their streams), waiting a moment for them to be reaped.
    pub fn stop(&self) {
        self.nars.stop();
        let (done, finished) = crossbeam_channel::bounded(1);
        if (self.questions)
            .send_timeout(Question::Stop(done), Duration::from_secs(1))
            .is_ok()
        {
            let _ = finished.recv_timeout(Duration::from_secs(2));
        }
    }

    /// Serve children that exist for NARs now.
    pub fn nar_children(&self) -> usize {
        self.nars.children()
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
    /// peers: the path and every path of its closure pass. One closure
    /// question decides the path; when it passes, every path of its
    /// closure passes too (their closures are part of it), and all of
    /// them are remembered.
    pub fn shareable(&self, hash: &HashPart) -> Result<bool, NixError> {
        if let Some(known) = self.shareable_known(hash) {
            return Ok(known);
        }
        let Some(name) = self.lookup(hash) else {
            return Ok(false);
        };
        let (reply, answer) = crossbeam_channel::bounded(1);
        let closure = match self.ask(
            Question::Closure(vec![name.clone()], reply),
            answer,
            INFO_WAIT,
        )? {
            Some(closure) => closure,
            None => return Ok(false),
        };
        let infos = match self.policy.signed_by.is_empty() {
            true => Vec::new(),
            false => self.infos(&closure)?,
        };
        let failing: Vec<&str> = match self.policy.signed_by.is_empty() {
            true => (closure.iter())
                .filter(|n| !self.policy.name_allowed(n))
                .map(String::as_str)
                .collect(),
            false => {
                let known: HashMap<&str, &PathInfo> =
                    infos.iter().map(|i| (i.path.as_str(), &**i)).collect();
                (closure.iter())
                    .filter(|n| !known.get(n.as_str()).is_some_and(|i| self.policy.allows(i)))
                    .map(String::as_str)
                    .collect()
            }
        };
        let shared = failing.is_empty();
        if !shared {
            log::debug!("store: {name} is not shared (share policy: {})", failing[0]);
        }
        if let Ok(mut verdicts) = self.verdicts.lock() {
            let decided = match shared {
                true => closure.iter().map(String::as_str).collect(),
                false => failing,
            };
            for hash in decided.iter().filter_map(|n| HashPart::of_basename(n)) {
                verdicts.insert(hash, shared);
            }
            verdicts.insert(*hash, shared);
        }
        Ok(shared)
    }

    /// The metadata of the valid path with this hash part: from the cache,
    /// or from the metadata thread, which asks Nix for all the paths asked
    /// at the same time at once. `Ok(None)` when this store does not hold it.
    pub fn path_info(&self, hash: &HashPart) -> Result<Option<Arc<PathInfo>>, NixError> {
        if let Some(info) = self.cached_info(hash) {
            return Ok(Some(info));
        }
        let Some(name) = self.lookup(hash) else {
            return Ok(None);
        };
        Ok(self.infos(&[name])?.pop())
    }

    /// The NAR of a path this store holds, from byte `offset` on.
    pub fn nar(&self, info: &PathInfo, offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
        self.nars.nar(info, offset)
    }

    /// The infos of those of `names` that are valid, cached or asked for.
    fn infos(&self, names: &[String]) -> Result<Vec<Arc<PathInfo>>, NixError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.ask(Question::Infos(names.to_vec(), reply), answer, INFO_WAIT)
    }

    /// Sends a question to the metadata thread and waits for its answer,
    /// `wait` at most in all.
    fn ask<T>(
        &self,
        question: Question,
        answer: Receiver<Result<T, NixError>>,
        wait: Duration,
    ) -> Result<T, NixError> {
        let deadline = Instant::now() + wait;
        (self.questions)
            .send_deadline(question, deadline)
            .map_err(|_| NixError::Io("too many questions wait for Nix".into()))?;
        answer
            .recv_deadline(deadline)
            .map_err(|_| NixError::Io(format!("Nix did not answer within {wait:?}")))?
    }

    fn cached_info(&self, hash: &HashPart) -> Option<Arc<PathInfo>> {
        self.infos.lock().ok()?.get(hash).cloned()
    }

    fn cache_info(&self, info: PathInfo) -> Option<Arc<PathInfo>> {
        let hash = HashPart::of_basename(&info.path)?;
        let info = Arc::new(info);
        if let Ok(mut infos) = self.infos.lock() {
            infos.insert(hash, info.clone());
        }
        Some(info)
    }

    /// Asks Nix for the infos of those of `names` not cached yet, and
    /// caches them.
    fn fetch_infos(&self, nix: &mut Meta, names: &[&str]) -> Result<(), NixError> {
        let missing: Vec<&str> = (names.iter().copied())
            .filter(|n| HashPart::of_basename(n).is_some_and(|h| self.cached_info(&h).is_none()))
            .collect();
        for chunk in missing.chunks(INFO_BATCH) {
            for info in nix.with(|serve| serve.path_infos(chunk, META_TIMEOUT))? {
                self.cache_info(info);
            }
        }
        Ok(())
    }

    /// Answers the info questions of a batch with as few Nix questions as
    /// it can, then fetches ahead the infos of their closures.
    fn answer_infos(&self, nix: &mut Meta, batch: Vec<InfoQuestion>) {
        let mut names: Vec<&str> = batch
            .iter()
            .flat_map(|(n, _)| n.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        let fetched = self.fetch_infos(nix, &names);
        for (asked, reply) in &batch {
            let answer = match &fetched {
                Ok(()) => Ok(asked
                    .iter()
                    .filter_map(|n| HashPart::of_basename(n).and_then(|h| self.cached_info(&h)))
                    .collect()),
                Err(e) => Err(e.clone()),
            };
            let _ = reply.send(answer);
        }
        // Nix asks for a path's references right after it: fetch the
        // closures of single paths ahead. (Questions of many paths are
        // closures already, the share policy's.)
        let singles: Vec<&str> = (batch.iter())
            .filter(|(names, _)| names.len() == 1)
            .map(|(names, _)| names[0].as_str())
            .collect();
        if fetched.is_ok() && !singles.is_empty() {
            self.prefetch(nix, &singles);
        }
    }

    /// Caches the infos of the closures of `names` (Nix asks for the
    /// references of a path next), up to `PREFETCH_MAX` paths.
    fn prefetch(&self, nix: &mut Meta, names: &[&str]) {
        let closure = match nix.closure(names) {
            Ok(Some(closure)) => closure,
            Ok(None) => return,
            Err(e) => return log::debug!("store: cannot fetch ahead: {e}"),
        };
        let ahead: Vec<&str> = closure
            .iter()
            .map(String::as_str)
            .take(PREFETCH_MAX)
            .collect();
        match self.fetch_infos(nix, &ahead) {
            Ok(()) => log::debug!("store: fetched ahead the infos of {} paths", ahead.len()),
            Err(e) => log::debug!("store: cannot fetch ahead: {e}"),
        }
    }
}

/// What the index thread asks of the store.
impl index::Nix for Store {
    /// Asked of the metadata thread, `VALID_BATCH` paths per question.
    /// Many paths (a whole store, when the index is built) are split in
    /// two, the second half asked of a `nix-store --serve` of its own at
    /// the same time: Nix's work on them is most of the start-up.
    fn valid(&self, names: &[&str]) -> Result<Vec<String>, NixError> {
        if names.len() <= 2 * VALID_BATCH {
            return self.valid_by_meta(names);
        }
        let (mine, theirs) = names.split_at(names.len() / 2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| -> Result<Vec<String>, NixError> {
                let mut serve = Serve::start()?;
                let mut found = Vec::new();
                for batch in theirs.chunks(VALID_BATCH) {
                    found.extend(serve.valid_paths(batch, META_TIMEOUT)?);
                }
                Ok(found)
            });
            let mut found = self.valid_by_meta(mine)?;
            let theirs = other
                .join()
                .map_err(|_| NixError::Io("a validity thread panicked".into()))??;
            found.extend(theirs);
            Ok(found)
        })
    }

    fn added(&self, hashes: &[HashPart]) {
        self.summarise(hashes, &[]);
    }

    fn removed(&self, hashes: &[HashPart]) {
        self.summarise(&[], hashes);
        if let Ok(mut infos) = self.infos.lock() {
            for hash in hashes {
                infos.remove(hash);
            }
        }
        if let Ok(mut verdicts) = self.verdicts.lock() {
            for hash in hashes {
                verdicts.remove(hash);
            }
        }
    }

    fn tick(&self) {
        self.nars.prune();
    }
}

/// The metadata thread's `nix-store --serve`, started when a question
/// comes and replaced after any failure.
struct Meta {
    serve: Option<Serve>,
}

impl Meta {
    /// Runs `f` on the serve child (started if need be). A failure ends
    /// the child; one that came fast (the child had died, or broke) is
    /// tried once more on a fresh child, so that a passing failure never
    /// becomes a "not found" that Nix keeps for an hour. A slow one (a
    /// hung nix-daemon) is not: the asker's deadline is near.
    fn with<T>(
        &mut self,
        mut f: impl FnMut(&mut Serve) -> Result<T, NixError>,
    ) -> Result<T, NixError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let started = Instant::now();
            let serve = match &mut self.serve {
                Some(serve) => serve,
                None => self.serve.insert(Serve::start()?),
            };
            match f(serve) {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    self.serve = None;
                    if tries > 1 || started.elapsed() > RETRY_WITHIN {
                        log::debug!("store: nix-store --serve for metadata ended: {e}");
                        return Err(e);
                    }
                    log::info!(
                        "store: nix-store --serve for metadata failed ({e}); asking a new one"
                    );
                }
            }
        }
    }

    fn closure(&mut self, names: &[&str]) -> Result<Option<Vec<String>>, NixError> {
        let closure = self.with(|serve| serve.closure(names, META_TIMEOUT))?;
        if closure.is_none() {
            self.serve = None; // it said a path is not valid, and exited
        }
        Ok(closure)
    }
}

/// The metadata thread: takes every question waiting, answers the info
/// questions together, and goes on while the store lives.
fn answer_questions(store: Weak<Store>, questions: Receiver<Question>) {
    let mut nix = Meta { serve: None };
    loop {
        let first = match questions.recv_timeout(META_IDLE) {
            Ok(q) => q,
            Err(RecvTimeoutError::Timeout) => {
                if nix.serve.take().is_some() {
                    log::debug!("store: ended the idle nix-store --serve for metadata");
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(store) = store.upgrade() else { return };
        let mut infos = Vec::new();
        for question in std::iter::once(first).chain(questions.try_iter().take(INFO_BATCH)) {
            match question {
                Question::Infos(names, reply) => infos.push((names, reply)),
                Question::Valid(names, reply) => {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let _ = reply.send(nix.with(|serve| serve.valid_paths(&names, META_TIMEOUT)));
                }
                Question::Closure(names, reply) => {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let _ = reply.send(nix.closure(&names));
                }
                Question::Stop(done) => {
                    drop(nix);
                    let _ = done.send(());
                    return;
                }
            }
        }
        if !infos.is_empty() {
            store.answer_infos(&mut nix, infos);
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), NixError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| NixError::Io(format!("cannot start the {name} thread: {e}")))
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
