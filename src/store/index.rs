//! The index of the store directory: which valid store path (if any) has a
//! given hash part, answered from memory.
//!
//! It is built once by listing the store directory and asking Nix which
//! entries are valid paths (a directory entry exists while a path is being
//! built or substituted, before it is valid). Then it follows the
//! directory with inotify: each entry created, moved or deleted is one
//! event, so keeping the index current costs in proportion to what
//! changes, never to the size of the store. New entries wait as pending
//! until Nix says they are valid: they are asked about again when Nix's
//! database changes, or after a growing wait. Where inotify cannot be had
//! the directory is listed again whenever its mtime changes.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use super::serve::NixError;
use crate::nix::narinfo::HashPart;

/// Pending entries (a path being built or substituted) are asked about
/// again after this, then after twice as long each time none became
/// valid, up to `RECHECK_MAX`, and at once when Nix's database changes.
const RECHECK_FIRST: Duration = Duration::from_millis(250);
const RECHECK_MAX: Duration = Duration::from_secs(30);

/// Validity questions are this far apart at least: while a build or a
/// substitution adds paths one after the other, one question covers many.
const RECHECK_MIN: Duration = Duration::from_millis(100);

/// The valid paths: hash part → basename. Shared with the UDP thread and
/// the workers; written only by the index thread, a change at a time.
pub type Valid = RwLock<HashMap<HashPart, Box<str>>>;

/// What the index thread asks of the rest of the store.
pub trait Nix {
    /// The valid paths among `names` (all the entries of a store, when the
    /// index is built).
    fn valid(&self, names: &[&str]) -> Result<Vec<String>, NixError>;
    /// Paths new in the index.
    fn added(&self, hashes: &[HashPart]);
    /// Paths gone from the index: forget what is known of them.
    fn removed(&self, hashes: &[HashPart]);
    /// Called every tick, for the store's other upkeep.
    fn tick(&self);
}

/// The index thread's own state: what it watches and what is pending.
pub struct Follower {
    dir: PathBuf,
    watch: Option<Watch>,
    /// Entries of the directory not (yet) valid, by hash part.
    pending: HashMap<HashPart, Box<str>>,
    /// Nix's database, whose files change when a path becomes valid.
    db_files: Vec<PathBuf>,
    db_mtimes: Vec<Option<SystemTime>>,
    dir_mtime: Option<SystemTime>,
    next_recheck: Option<Instant>,
    recheck_wait: Duration,
    last_check: Option<Instant>,
}

/// How often the thread looks at the database and does its upkeep when
/// no event comes.
pub const TICK: Duration = Duration::from_millis(250);

impl Follower {
    /// Lists `dir` (the store directory, whose Nix database is in `db_dir`),
    /// asks `nix` which entries are valid and fills `valid`; then it is
    /// ready to [`Follower::run`].
    pub fn start(
        dir: &Path,
        db_dir: &Path,
        valid: &Valid,
        nix: &dyn Nix,
    ) -> Result<Follower, NixError> {
        let watch = match Watch::new(dir) {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!(
                    "store: cannot watch {} ({e}); listing it again whenever it changes",
                    dir.display()
                );
                None
            }
        };
        let mut follower = Follower {
            dir: dir.to_owned(),
            watch,
            pending: HashMap::new(),
            db_files: ["db.sqlite", "db.sqlite-wal"]
                .iter()
                .map(|f| db_dir.join(f))
                .collect(),
            db_mtimes: Vec::new(),
            dir_mtime: None,
            next_recheck: None,
            recheck_wait: RECHECK_FIRST,
            last_check: None,
        };
        follower.relist(valid, nix)?;
        follower.check_pending(valid, nix)?;
        Ok(follower)
    }

    /// Follows the directory while `alive` says so.
    pub fn run(mut self, valid: &Valid, nix: &dyn Nix, alive: impl Fn() -> bool) {
        while alive() {
            if let Err(e) = self.step(valid, nix) {
                log::warn!("store: cannot follow {}: {e}", self.dir.display());
                std::thread::sleep(TICK);
            }
            nix.tick();
        }
    }

    /// Waits for events (at most a tick), applies them, and asks Nix about
    /// pending entries when that is due.
    fn step(&mut self, valid: &Valid, nix: &dyn Nix) -> Result<(), NixError> {
        match &mut self.watch {
            Some(watch) => {
                let events = watch.wait(TICK).map_err(|e| NixError::Io(e.to_string()))?;
                match events {
                    Events::Overflow => {
                        log::debug!("store: inotify queue overflowed; listing the store again");
                        self.relist(valid, nix)?;
                    }
                    Events::Changes(changes) => self.apply(changes, valid, nix)?,
                }
            }
            None => {
                std::thread::sleep(TICK);
                if self.dir_changed()? {
                    self.relist(valid, nix)?;
                }
            }
        }
        self.check_pending(valid, nix)
    }

    fn dir_changed(&self) -> Result<bool, NixError> {
        Ok(Some(mtime(&self.dir)?) != self.dir_mtime)
    }

    /// Lists the directory again and makes the index agree with it: gone
    /// entries are dropped, new ones become pending.
    fn relist(&mut self, valid: &Valid, nix: &dyn Nix) -> Result<(), NixError> {
        self.dir_mtime = Some(mtime(&self.dir)?);
        let listed = list_store_dir(&self.dir)?;
        let removed: Vec<HashPart> = {
            let mut valid = valid.write().map_err(|_| poisoned())?;
            let gone: Vec<HashPart> = (valid.keys())
                .filter(|h| !listed.contains_key(h))
                .copied()
                .collect();
            for hash in &gone {
                valid.remove(hash);
            }
            self.pending = listed
                .into_iter()
                .filter(|(h, _)| !valid.contains_key(h))
                .collect();
            gone
        };
        if !removed.is_empty() {
            nix.removed(&removed);
        }
        self.next_recheck = None;
        Ok(())
    }

    /// Takes in the entries created and deleted since the last look.
    fn apply(
        &mut self,
        changes: Vec<(Change, String)>,
        valid: &Valid,
        nix: &dyn Nix,
    ) -> Result<(), NixError> {
        let mut removed = Vec::new();
        for (change, name) in changes {
            let Some(hash) = HashPart::of_basename(&name) else {
                continue;
            };
            match change {
                Change::Added => {
                    // `<path>.lock` shares its path's hash part: the path wins.
                    let is_lock = name.ends_with(".lock");
                    let known = valid.read().map_err(|_| poisoned())?.contains_key(&hash);
                    let shorter = self
                        .pending
                        .get(&hash)
                        .is_some_and(|p| p.len() < name.len());
                    if !(is_lock && (known || shorter)) {
                        self.pending.insert(hash, name.into());
                        self.next_recheck = None;
                        self.recheck_wait = RECHECK_FIRST;
                    }
                }
                Change::Removed => {
                    if self.pending.get(&hash).is_some_and(|p| **p == *name) {
                        self.pending.remove(&hash);
                    }
                    let mut valid = valid.write().map_err(|_| poisoned())?;
                    if valid.get(&hash).is_some_and(|p| **p == *name) {
                        valid.remove(&hash);
                        removed.push(hash);
                    }
                }
            }
        }
        if !removed.is_empty() {
            log::debug!("store: {} paths removed", removed.len());
            nix.removed(&removed);
        }
        Ok(())
    }

    /// Asks Nix about the pending entries, when due: at once after a
    /// change or when Nix's database changed, else after a growing wait.
    fn check_pending(&mut self, valid: &Valid, nix: &dyn Nix) -> Result<(), NixError> {
        let db_mtimes: Vec<Option<SystemTime>> = (self.db_files.iter())
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect();
        if db_mtimes != self.db_mtimes {
            self.db_mtimes = db_mtimes;
            self.next_recheck = None;
        }
        let now = Instant::now();
        let waiting = self.next_recheck.is_some_and(|t| now < t);
        let too_soon = self.last_check.is_some_and(|t| now - t < RECHECK_MIN);
        if self.pending.is_empty() || waiting || too_soon {
            return Ok(());
        }
        self.last_check = Some(now);
        let names: Vec<&str> = self.pending.values().map(|n| &**n).collect();
        let found = nix.valid(&names)?;
        let added = found.len();
        if added > 0 {
            let mut hashes = Vec::with_capacity(added);
            {
                let mut valid = valid.write().map_err(|_| poisoned())?;
                for name in found {
                    if let Some(hash) = HashPart::of_basename(&name) {
                        self.pending.remove(&hash);
                        if valid.insert(hash, name.into()).is_none() {
                            hashes.push(hash);
                        }
                    }
                }
            }
            log::debug!("store: {added} paths became valid");
            nix.added(&hashes);
        }
        self.recheck_wait = match added {
            0 => (self.recheck_wait * 2).min(RECHECK_MAX),
            _ => RECHECK_FIRST,
        };
        self.next_recheck = Some(Instant::now() + self.recheck_wait);
        Ok(())
    }
}

fn poisoned() -> NixError {
    NixError::Io("the store index lock is poisoned".into())
}

fn mtime(dir: &Path) -> Result<SystemTime, NixError> {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .map_err(|e| NixError::Io(format!("cannot stat {}: {e}", dir.display())))
}

/// Lists the store directory: every entry that looks like a store path,
/// the path itself preferred over its `.lock` file.
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
        if listed.get(&hash).is_none_or(|n| n.len() > name.len()) {
            listed.insert(hash, name.into());
        }
    }
    Ok(listed)
}

/// One change to the store directory.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Added,
    Removed,
}

enum Events {
    Changes(Vec<(Change, String)>),
    /// The kernel dropped events: the directory must be listed again.
    Overflow,
}

/// An inotify watch on the store directory.
struct Watch {
    fd: OwnedFd,
}

impl Watch {
    fn new(dir: &Path) -> io::Result<Watch> {
        // SAFETY: inotify_init1 takes flags and returns a new descriptor.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("a NUL in the store directory"))?;
        let mask = libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_ONLYDIR;
        // SAFETY: a valid descriptor and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watch { fd })
    }

    /// The changes that came within `wait` (none if nothing happened).
    fn wait(&mut self, wait: Duration) -> io::Result<Events> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return Ok(Events::Changes(Vec::new()));
        }
        let mut changes = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(Events::Changes(changes)),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if parse_events(&buf[..n as usize], &mut changes) {
                return Ok(Events::Overflow);
            }
        }
    }
}

/// Appends the changes in a buffer of `inotify_event`s; true when one of
/// them says the queue overflowed.
fn parse_events(mut buf: &[u8], changes: &mut Vec<(Change, String)>) -> bool {
    const HEAD: usize = std::mem::size_of::<libc::inotify_event>();
    while buf.len() >= HEAD {
        let field =
            |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let (mask, len) = (field(4), field(12) as usize);
        let Some(name) = buf.get(HEAD..HEAD + len) else {
            break;
        };
        if mask & libc::IN_Q_OVERFLOW != 0 {
            return true;
        }
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if let Ok(name) = std::str::from_utf8(name) {
            let change = match mask {
                m if m & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 => Some(Change::Added),
                m if m & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 => Some(Change::Removed),
                _ => None,
            };
            changes.extend(change.map(|c| (c, name.to_owned())));
        }
        buf = &buf[HEAD + len..];
    }
    false
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

    #[test]
    fn inotify_reports_what_is_created_and_removed() {
        let dir = std::env::temp_dir().join(format!("peerix-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut watch = Watch::new(&dir).unwrap();
        let name = "65hpr3iwgygz9ahgnagy7f6cnlmphkxm-hello";
        std::fs::create_dir(dir.join(name)).unwrap();
        std::fs::rename(dir.join(name), dir.join("x")).unwrap();
        std::fs::write(dir.join("y"), "").unwrap();
        let mut seen = Vec::new();
        for _ in 0..10 {
            if let Events::Changes(c) = watch.wait(Duration::from_millis(100)).unwrap() {
                seen.extend(c);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            seen,
            [
                (Change::Added, name.to_string()),
                (Change::Removed, name.to_string()),
                (Change::Added, "x".to_string()),
                (Change::Added, "y".to_string()),
            ]
        );
    }
}
