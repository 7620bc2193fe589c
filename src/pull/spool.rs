//! The spool: NARs being fetched from an upstream cache, written to a file
//! under the state directory as they arrive (decompressed), and read by
//! every client that wants them meanwhile, the local Nix and peers alike,
//! each following the file as it grows. One download per path, however
//! many read it.
//!
//! A flight is one such download: a writer thread copies the upstream's
//! stream into the file, hashing it, and says how far readers may read;
//! they read up to there and wait for more. The last chunk is let out
//! only once the whole file hashes to the NarHash: a download whose bytes
//! do not match is deleted at once and its readers are cut (an error,
//! never the whole of a wrong NAR); the next request fetches it anew.
//! When the writer fails otherwise (the upstream breaks off, the disk
//! fills), each reader goes on by itself: it lets go of the file and opens
//! the upstream anew from the byte it reached, so no client gets a broken
//! NAR. A reader that leaves just stops reading; the writer goes on for
//! the others, and stops `UNREAD_FOR` after the last one left, unless the
//! local Nix read it (it comes back to resume).
//!
//! Bounded: at most `capacity` bytes of NARs and `MAX_WRITERS` downloads
//! at once. A file counts by its NarSize (known from the narinfo before a
//! byte is written) from its download's start until its last reader lets
//! go of it, listed or not: downloads under way are kept apart from the
//! table of complete ones, so no number of newer downloads pushes them out
//! of the count. On the disk, a download starts only when its bytes, those
//! every download under way has yet to write and `DISK_MARGIN` fit, and
//! stops when the free space falls under half the margin (something else
//! filled the disk). When there is no room (spool or disk full, too many
//! downloads, no spool directory), a client streams from the upstream
//! directly, without sharing, never an error. A complete file is removed
//! once nobody reads it and the path is in the local store, or after
//! `LINGER` (peers that ask late still find it until then), or earlier when
//! room is needed: a sweeping thread looks every `SWEEP_EVERY`, and every
//! new download first. Files left by an earlier run (partial ones
//! included) are removed at start.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};

use crate::base::bounded::Bounded;
use crate::base::logs::Throttle;
use crate::nix::narinfo::HashPart;

/// Downloads into the spool at once, at most; more stream directly.
const MAX_WRITERS: usize = 64;
/// Complete downloads remembered, per generation of their table.
const MAX_DONE: usize = 4096;
/// A complete file nobody reads stays this long at most.
const LINGER: Duration = Duration::from_secs(600);
/// A reader waits this long for the writer to write more, at most.
const READER_STALL: Duration = Duration::from_secs(60);
/// Room left on the disk beside the spool, at least.
const DISK_MARGIN: u64 = 64 * 1024 * 1024;
/// The writer looks at the disk's free space every this many bytes.
const DISK_CHECK_EVERY: u64 = 16 * 1024 * 1024;
/// A download nobody reads (the local Nix never did) stops after this
/// long: a peer that broke off comes back within it.
const UNREAD_FOR: Duration = Duration::from_secs(2);
/// Bytes copied at a time.
const CHUNK: usize = 256 * 1024;
/// How often files nobody needs any more are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Status warns this long after the spool last had no room.
const WARN_FOR: Duration = Duration::from_secs(600);

/// What a reader of a download whose bytes failed the NarHash gets.
const WRONG: &str = "the upstream's NAR does not match its NarHash";

static NO_ROOM: Throttle = Throttle::new();

/// Opens the upstream's NAR (decompressed) from a byte offset.
pub type Open = Arc<dyn Fn(u64) -> io::Result<Box<dyn Read + Send>> + Send + Sync>;

pub struct Spool {
    /// `None` when the directory could not be made: every client streams
    /// directly.
    dir: Option<PathBuf>,
    /// Why the directory could not be made, for status.
    unusable: Option<String>,
    shared: Arc<Shared>,
    next: AtomicU64,
    /// The last time a NAR was streamed without sharing for want of room
    /// (or of a directory), and why; for status.
    no_room: Mutex<Option<(Instant, String)>>,
    /// NARs streamed without sharing so, since start.
    unshared: AtomicU64,
}

/// What the spool, its writers and its sweeping thread share.
struct Shared {
    capacity: u64,
    /// Whether the local store holds a path (its file may then go).
    in_store: Box<dyn Fn(&HashPart) -> bool + Send + Sync>,
    table: Mutex<Table>,
    usage: Arc<Usage>,
}

/// The flights a new reader may join.
struct Table {
    /// Downloads under way: at most `MAX_WRITERS`, each until it ends.
    running: HashMap<HashPart, Arc<Flight>>,
    /// Complete downloads, kept for readers that come late.
    done: Bounded<HashPart, Arc<Flight>>,
}

/// What the spool's files take, counted by the flights themselves.
#[derive(Default)]
struct Usage {
    /// The NarSize of every flight alive (its file there or to come).
    held: AtomicU64,
    /// The bytes downloads under way have yet to write.
    unwritten: AtomicU64,
}

/// One download into a file of the spool.
struct Flight {
    hash: HashPart,
    nar_hash: [u8; 32],
    total: u64,
    file: PathBuf,
    progress: Mutex<Progress>,
    grew: Condvar,
    /// Readers following it now.
    readers: AtomicUsize,
    /// The local Nix read it: it goes on when nobody reads it.
    local: AtomicBool,
    usage: Arc<Usage>,
}

#[derive(Default)]
struct Progress {
    /// Bytes readers may read: written, the last chunk once checked.
    readable: u64,
    /// `Some` once the writer is done.
    end: Option<End>,
    finished: Option<Instant>,
}

/// How a download ended.
#[derive(Clone, Debug)]
enum End {
    /// The whole NAR, hashed to its NarHash.
    Complete,
    /// It broke off: its readers go on from the upstream by themselves.
    Broke(String),
    /// Its bytes do not hash to the NarHash: its readers are cut.
    Wrong,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
        self.usage.held.fetch_sub(self.total, Ordering::Relaxed);
    }
}

impl Spool {
    /// The spool in `dir` (made if missing, emptied of what an earlier run
    /// left), holding at most `capacity` bytes.
    pub fn new(
        dir: PathBuf,
        capacity: u64,
        in_store: Box<dyn Fn(&HashPart) -> bool + Send + Sync>,
    ) -> Spool {
        Spool::with_table(dir, capacity, MAX_DONE, in_store)
    }

    /// The spool, remembering `done` complete downloads per generation.
    fn with_table(
        dir: PathBuf,
        capacity: u64,
        done: usize,
        in_store: Box<dyn Fn(&HashPart) -> bool + Send + Sync>,
    ) -> Spool {
        let (dir, unusable) = match prepare(&dir) {
            Ok(removed) => {
                if removed > 0 {
                    log::info!(
                        "spool: removed {removed} files of an earlier run from {}",
                        dir.display()
                    );
                }
                (Some(dir), None)
            }
            Err(e) => {
                let why = format!("cannot use {}: {e}", dir.display());
                log::warn!("spool: {why}; NARs from upstream caches are streamed without sharing");
                (None, Some(why))
            }
        };
        let shared = Arc::new(Shared {
            capacity,
            in_store,
            table: Mutex::new(Table {
                running: HashMap::new(),
                done: Bounded::new(done),
            }),
            usage: Arc::new(Usage::default()),
        });
        // Files go soon after their paths reach the store, not only when
        // the next download starts.
        let weak = Arc::downgrade(&shared);
        let sweeper = std::thread::Builder::new()
            .name("spool-sweep".into())
            .stack_size(128 * 1024)
            .spawn(move || loop {
                std::thread::sleep(SWEEP_EVERY);
                let Some(shared) = weak.upgrade() else { return };
                if let Ok(mut table) = shared.table.lock() {
                    shared.sweep(&mut table, 0);
                };
            });
        if let Err(e) = sweeper {
            log::warn!("spool: cannot start its sweeping thread ({e}); files go as room is needed");
        }
        Spool {
            dir,
            unusable,
            shared,
            next: AtomicU64::new(0),
            no_room: Mutex::new(None),
            unshared: AtomicU64::new(0),
        }
    }

    /// What keeps the spool from sharing NARs, if anything: a directory
    /// it cannot use, or no room (spool or disk full, too many downloads)
    /// within the last `WARN_FOR`.
    pub fn warning(&self) -> Option<String> {
        let unshared = self.unshared.load(Ordering::Relaxed);
        if let Some(why) = &self.unusable {
            return Some(format!(
                "the spool {why}: NARs from upstream caches are streamed without sharing \
                 ({unshared} since start)"
            ));
        }
        let last = self.no_room.lock().ok()?.clone();
        let (at, why) = last.filter(|(at, _)| at.elapsed() < WARN_FOR)?;
        Some(format!(
            "the spool could not take a NAR {} s ago: {why}; NARs from upstream caches were streamed \
             without sharing ({unshared} since start)",
            at.elapsed().as_secs()
        ))
    }

    /// The NAR of `hash` (`total` bytes, with `nar_hash`) from byte
    /// `offset` on: from its flight, started now with `open` if there is
    /// none and there is room, else from `open` directly. `local` when the
    /// local Nix reads it: its download then goes on when nobody reads it.
    pub fn read(
        &self,
        hash: &HashPart,
        (nar_hash, total): ([u8; 32], u64),
        offset: u64,
        open: Open,
        local: bool,
    ) -> io::Result<Box<dyn Read + Send>> {
        let flight = match self.flight(hash, nar_hash, total, &open) {
            Ok(flight) => flight,
            Err(why) => {
                self.unshared.fetch_add(1, Ordering::Relaxed);
                if let Some(why) = why {
                    if let Ok(mut last) = self.no_room.lock() {
                        *last = Some((Instant::now(), why.clone()));
                    }
                    NO_ROOM.log(log::Level::Info, || {
                        format!("spool: {why}; {hash} is streamed without sharing")
                    });
                }
                return open(offset);
            }
        };
        if local {
            flight.local.store(true, Ordering::Relaxed);
        }
        Ok(Box::new(Reader::follow(flight, offset, open)?))
    }

    /// The flight of `hash`: the one under way, or a new one. `Err` with
    /// why not when the client should stream directly (`None`: the spool
    /// is off).
    fn flight(
        &self,
        hash: &HashPart,
        nar_hash: [u8; 32],
        total: u64,
        open: &Open,
    ) -> Result<Arc<Flight>, Option<String>> {
        let dir = self.dir.as_ref().ok_or(None)?;
        let shared = &self.shared;
        let mut table = shared.table.lock().map_err(|_| None)?;
        if let Some(f) = table.running.get(hash) {
            return match f.nar_hash == nar_hash {
                true => Ok(f.clone()),
                false => Err(Some("another NAR of the path is being fetched".into())),
            };
        }
        if let Some(f) = table.done.get(hash).filter(|f| f.nar_hash == nar_hash) {
            return Ok(f.clone());
        }
        shared.sweep(&mut table, total);
        let usage = &shared.usage;
        let held = usage.held.load(Ordering::Relaxed);
        if held + total > shared.capacity {
            return Err(Some(format!(
                "full ({} of {} MiB in use)",
                held >> 20,
                shared.capacity >> 20
            )));
        }
        if table.running.len() >= MAX_WRITERS {
            return Err(Some(format!("{MAX_WRITERS} downloads under way")));
        }
        let unwritten = usage.unwritten.load(Ordering::Relaxed);
        if free_bytes(dir).is_some_and(|free| free < total + unwritten + DISK_MARGIN) {
            return Err(Some("the disk is nearly full".into()));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{hash}-{n}.nar"));
        let file = (fs::OpenOptions::new().write(true).create_new(true))
            .open(&path)
            .map_err(|e| Some(format!("cannot create {}: {e}", path.display())))?;
        usage.held.fetch_add(total, Ordering::Relaxed);
        usage.unwritten.fetch_add(total, Ordering::Relaxed);
        let flight = Arc::new(Flight {
            hash: *hash,
            nar_hash,
            total,
            file: path,
            progress: Mutex::new(Progress::default()),
            grew: Condvar::new(),
            readers: AtomicUsize::new(0),
            local: AtomicBool::new(false),
            usage: usage.clone(),
        });
        // The upstream is opened by the writer, outside the lock: other
        // paths' flights do not wait for this one's round trip.
        let (writer, open, shared, dir) =
            (flight.clone(), open.clone(), shared.clone(), dir.clone());
        let started = std::thread::Builder::new()
            .name("spool-writer".into())
            .stack_size(256 * 1024)
            .spawn(move || writer.write(&open, file, &dir, &shared));
        if let Err(e) = started {
            usage.unwritten.fetch_sub(total, Ordering::Relaxed);
            return Err(Some(format!("cannot start a thread: {e}")));
        }
        table.running.insert(*hash, flight.clone());
        log::debug!("spool: fetching {hash} ({total} bytes)");
        Ok(flight)
    }
}

impl Shared {
    /// Drops complete flights nobody reads whose path is in the local
    /// store or that lingered long enough; then, oldest first, complete
    /// ones nobody holds until `room` more bytes fit.
    fn sweep(&self, table: &mut Table, room: u64) {
        table.done.retain(|hash, f| {
            let unread = f.readers.load(Ordering::Relaxed) == 0;
            let lingered = f.finished().is_none_or(|at| at.elapsed() >= LINGER);
            !(unread && (lingered || (self.in_store)(hash)))
        });
        let held = self.usage.held.load(Ordering::Relaxed);
        if held + room <= self.capacity {
            return;
        }
        let mut idle: Vec<(Instant, HashPart, u64)> = (table.done.iter())
            .filter(|(_, f)| Arc::strong_count(f) == 1)
            .filter_map(|(h, f)| Some((f.finished()?, *h, f.total)))
            .collect();
        idle.sort();
        let mut over = held + room - self.capacity;
        for (_, hash, size) in idle {
            if over == 0 {
                break;
            }
            table.done.remove(&hash);
            over = over.saturating_sub(size);
        }
    }

    /// `flight`'s writer is done: it leaves the downloads under way, and
    /// joins the complete ones if it is.
    fn landed(&self, flight: &Arc<Flight>, complete: bool) {
        if let Ok(mut table) = self.table.lock() {
            if (table.running.get(&flight.hash)).is_some_and(|f| Arc::ptr_eq(f, flight)) {
                table.running.remove(&flight.hash);
            }
            if complete {
                table.done.insert(flight.hash, flight.clone());
            }
        }
    }
}

impl Flight {
    /// When the writer finished.
    fn finished(&self) -> Option<Instant> {
        self.progress.lock().ok()?.finished
    }

    /// The writer thread: the upstream's stream into the file, telling
    /// the readers how far they may read; then the file is listed as
    /// complete, or removed.
    fn write(self: &Arc<Flight>, open: &Open, mut file: File, dir: &Path, shared: &Shared) {
        let (end, written) = self.copy(open, &mut file, dir);
        drop(file);
        let unwritten = self.total - written;
        self.usage.unwritten.fetch_sub(unwritten, Ordering::Relaxed);
        match &end {
            End::Complete => {}
            End::Wrong => {
                let _ = fs::remove_file(&self.file);
                log::warn!(
                    "spool: {}: {WRONG}; the file is removed, its readers cut, and the next \
                     request fetches it anew",
                    self.hash
                );
            }
            End::Broke(e) => {
                let _ = fs::remove_file(&self.file);
                log::info!(
                    "spool: {}: {e}; its download stops, its readers go on by themselves",
                    self.hash
                );
            }
        }
        shared.landed(self, matches!(end, End::Complete));
        self.tell(|p| {
            if matches!(end, End::Complete) {
                p.readable = self.total;
            }
            p.end = Some(end);
            p.finished = Some(Instant::now());
        });
    }

    /// Copies the upstream's NAR into `file`; how that ended, and the bytes
    /// written.
    fn copy(&self, open: &Open, file: &mut File, dir: &Path) -> (End, u64) {
        let mut buf = vec![0u8; CHUNK];
        let mut hashed = Context::new(&SHA256);
        let (mut written, mut disk_checked) = (0u64, 0u64);
        let mut unread_since: Option<Instant> = None;
        let mut source = match open(0) {
            Ok(source) => source,
            Err(e) => return (End::Broke(format!("cannot open the upstream: {e}")), 0),
        };
        loop {
            if self.readers.load(Ordering::Relaxed) == 0 && !self.local.load(Ordering::Relaxed) {
                let since = *unread_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREAD_FOR {
                    return (End::Broke("nobody reads it".into()), written);
                }
            } else {
                unread_since = None;
            }
            let n = match source.read(&mut buf) {
                Ok(0) if written == self.total => return (End::Complete, written),
                Ok(0) => {
                    let why = format!("the upstream's NAR ended at byte {written}");
                    return (End::Broke(format!("{why} of {}", self.total)), written);
                }
                Ok(n) if written + n as u64 > self.total => {
                    let why = format!("the upstream's NAR is longer than {} bytes", self.total);
                    return (End::Broke(why), written);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = format!("reading the upstream at byte {written}: {e}");
                    return (End::Broke(why), written);
                }
            };
            if let Err(e) = file.write_all(&buf[..n]) {
                return (End::Broke(format!("writing the spool file: {e}")), written);
            }
            hashed.update(&buf[..n]);
            written += n as u64;
            self.usage.unwritten.fetch_sub(n as u64, Ordering::Relaxed);
            // The last chunk is let out once the whole NAR is checked.
            if written < self.total {
                self.tell(|p| p.readable = written);
            } else if hashed.clone().finish().as_ref() != self.nar_hash {
                return (End::Wrong, written);
            }
            if written - disk_checked >= DISK_CHECK_EVERY {
                disk_checked = written;
                if free_bytes(dir).is_some_and(|free| free < DISK_MARGIN / 2) {
                    return (End::Broke("the disk is nearly full".into()), written);
                }
            }
        }
    }

    fn tell(&self, change: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            change(&mut p);
        }
        self.grew.notify_all();
    }

    /// How many bytes from `pos` can be read now: `Ok(0)` at the end,
    /// `Err` when the download failed (at once when its bytes are wrong,
    /// else once its readable bytes are read). Waits up to `READER_STALL`
    /// for more.
    fn readable(&self, pos: u64) -> Result<u64, End> {
        let poisoned = || End::Broke("spool lock poisoned".into());
        let deadline = Instant::now() + READER_STALL;
        let mut p = self.progress.lock().map_err(|_| poisoned())?;
        loop {
            if let Some(End::Wrong) = p.end {
                return Err(End::Wrong);
            }
            if p.readable > pos {
                return Ok(p.readable - pos);
            }
            match &p.end {
                Some(End::Complete) => return Ok(0),
                Some(end) => return Err(end.clone()),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = format!("no byte from the upstream for {READER_STALL:?}");
                return Err(End::Broke(why));
            }
            p = (self.grew.wait_timeout(p, left)).map_err(|_| poisoned())?.0;
        }
    }
}

/// One client following a flight's file; on its own from the upstream
/// once the writer broke off.
struct Reader {
    /// The flight and its file, until this reader lets go of them.
    following: Option<(Arc<Flight>, File)>,
    total: u64,
    pos: u64,
    open: Open,
    direct: Option<Box<dyn Read + Send>>,
}

impl Reader {
    fn follow(flight: Arc<Flight>, pos: u64, open: Open) -> io::Result<Reader> {
        let file = File::open(&flight.file)?;
        flight.readers.fetch_add(1, Ordering::Relaxed);
        Ok(Reader {
            total: flight.total,
            following: Some((flight, file)),
            pos,
            open,
            direct: None,
        })
    }

    /// Stops following the flight: its file may go.
    fn let_go(&mut self) {
        if let Some((flight, _)) = self.following.take() {
            flight.readers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.let_go();
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(direct) = &mut self.direct {
            return direct.read(buf);
        }
        if buf.is_empty() || self.pos >= self.total {
            return Ok(0);
        }
        let Some((flight, file)) = &self.following else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, WRONG));
        };
        match flight.readable(self.pos) {
            Ok(0) => Ok(0),
            Ok(ready) => {
                let want = buf.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
                let n = file.read_at(&mut buf[..want], self.pos)?;
                if n == 0 {
                    return Err(io::Error::other("the spool file is shorter than written"));
                }
                self.pos += n as u64;
                Ok(n)
            }
            Err(End::Wrong) => {
                self.let_go();
                Err(io::Error::new(io::ErrorKind::InvalidData, WRONG))
            }
            Err(End::Complete) => Ok(0),
            Err(End::Broke(why)) => {
                log::info!(
                    "spool: {} broke at byte {} ({why}); this reader goes on from the upstream",
                    flight.hash,
                    self.pos
                );
                self.let_go();
                self.direct.insert((self.open)(self.pos)?).read(buf)
            }
        }
    }
}

fn prepare(dir: &Path) -> io::Result<usize> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Bytes an unprivileged process may still write on the file system of
/// `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills one struct we own, from a NUL-terminated path.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(c: char) -> HashPart {
        HashPart::parse(&c.to_string().repeat(32)).unwrap()
    }

    /// The `i`th of many hash parts.
    fn numbered(i: usize) -> HashPart {
        let digits = format!("{i:0>32}");
        HashPart::parse(&digits).unwrap()
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&SHA256, data).as_ref());
        out
    }

    /// How a test source behaves the first time it is opened from byte 0.
    #[derive(Clone, Copy)]
    enum First {
        Good,
        /// Fails after this many bytes.
        FailsAt(u64),
        /// Sends its middle byte flipped.
        Corrupt,
        /// Sends nothing until the flag is set.
        Held(&'static AtomicBool),
    }

    /// What a test source counts: the times it was opened, the bytes it gave.
    #[derive(Clone, Default)]
    struct Counts {
        opened: Arc<AtomicU64>,
        given: Arc<AtomicU64>,
    }

    /// A source of `data` in reads of at most 1000 bytes, 1 ms apart.
    fn source(data: Vec<u8>, first: First, counts: Counts) -> Open {
        Arc::new(move |offset| {
            let once = counts.opened.fetch_add(1, Ordering::Relaxed) == 0 && offset == 0;
            let mut data = data.clone();
            let mut fail_at = None;
            match first {
                First::Corrupt if once => {
                    let middle = data.len() / 2;
                    data[middle] ^= 0xff;
                }
                First::FailsAt(at) if once => fail_at = Some(at),
                First::Held(flag) if once => {
                    while !flag.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                _ => {}
            }
            struct Slow(io::Cursor<Vec<u8>>, Option<u64>, Arc<AtomicU64>);
            impl Read for Slow {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    std::thread::sleep(Duration::from_millis(1));
                    if self.1.is_some_and(|f| self.0.position() >= f) {
                        return Err(io::Error::other("cut"));
                    }
                    let n = buf.len().min(1000);
                    let n = self.0.read(&mut buf[..n])?;
                    self.2.fetch_add(n as u64, Ordering::Relaxed);
                    Ok(n)
                }
            }
            let mut cursor = io::Cursor::new(data);
            cursor.set_position(offset);
            let slow = Slow(cursor, fail_at, counts.given.clone());
            Ok(Box::new(slow) as Box<dyn Read + Send>)
        })
    }

    /// `data` (the NAR of `h`) from `spool`, from byte `offset`, through `open`.
    fn read(
        spool: &Spool,
        h: HashPart,
        data: &[u8],
        offset: u64,
        open: Open,
        local: bool,
    ) -> Box<dyn Read + Send> {
        let nar = (sha256(data), data.len() as u64);
        spool.read(&h, nar, offset, open, local).unwrap()
    }

    fn spool(dir: &Path, capacity: u64) -> Spool {
        Spool::new(dir.to_owned(), capacity, Box::new(|_| false))
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("peerix-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn files(dir: &Path) -> usize {
        fs::read_dir(dir).map_or(0, |d| d.count())
    }

    /// Waits up to `limit` for `done`.
    fn wait(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while !done() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[test]
    fn readers_at_once_share_one_download() {
        let dir = temp("share");
        let spool = Arc::new(spool(&dir, 1 << 30));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let counts = Counts::default();
        let open = source(data.clone(), First::Good, counts.clone());
        let readers: Vec<_> = (0..4u64)
            .map(|i| {
                let (spool, open, data) = (spool.clone(), open.clone(), data.clone());
                std::thread::spawn(move || {
                    let offset = i * 1000;
                    let mut out = Vec::new();
                    let mut r = read(&spool, hash('a'), &data, offset, open, false);
                    r.read_to_end(&mut out).unwrap();
                    assert_eq!(out, data[offset as usize..]);
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(counts.opened.load(Ordering::Relaxed), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    /// A download that breaks off leaves its readers complete, and its
    /// file goes at once, though a reader still reads (from the upstream).
    #[test]
    fn a_failing_writer_leaves_its_readers_complete_and_no_file() {
        let dir = temp("fail");
        let spool = spool(&dir, 1 << 30);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let counts = Counts::default();
        let open = source(data.clone(), First::FailsAt(40_000), counts.clone());
        let mut out = Vec::new();
        let mut r = read(&spool, hash('b'), &data, 0, open.clone(), false);
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(
            counts.opened.load(Ordering::Relaxed),
            2,
            "once for the flight, once to go on"
        );
        assert_eq!(files(&dir), 0, "its reader keeps no file");
        // The next reader gets a new download; only its bytes count.
        let mut again = read(&spool, hash('b'), &data, 0, open, false);
        out.clear();
        again.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(files(&dir), 1);
        let held = spool.shared.usage.held.load(Ordering::Relaxed);
        assert_eq!(held, data.len() as u64);
        drop(r);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_spool_streams_directly_and_files_go() {
        let dir = temp("full");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("left-over.nar"), b"partial").unwrap();
        let spool = spool(&dir, 50_000);
        assert!(
            !dir.join("left-over.nar").exists(),
            "an earlier run's file is removed"
        );
        let data = vec![5u8; 100_000];
        let mut out = Vec::new();
        let open = source(data.clone(), First::Good, Counts::default());
        let mut r = read(&spool, hash('c'), &data, 10, open, false);
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data[10..]);
        assert_eq!(files(&dir), 0, "nothing spooled");
        let warning = spool.warning().expect("a warning once it had no room");
        assert!(warning.contains("full (0 of 0 MiB in use)"), "{warning}");
        assert!(warning.contains("(1 since start)"), "{warning}");
        // One that fits is spooled.
        let small = vec![6u8; 10_000];
        let open = source(small.clone(), First::Good, Counts::default());
        let mut r = read(&spool, hash('d'), &small, 0, open, false);
        out.clear();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, small);
        assert_eq!(files(&dir), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unusable_directory_is_a_warning() {
        let file = temp("not-a-dir");
        fs::write(&file, b"a file where the directory should be").unwrap();
        let spool = spool(&file.join("spool"), 1 << 30);
        let warning = spool.warning().expect("a warning");
        assert!(warning.contains("cannot use"), "{warning}");
        let _ = fs::remove_file(&file);
    }

    #[test]
    fn a_file_goes_once_nobody_reads_it_and_its_path_is_in_the_store() {
        let dir = temp("store");
        let stored = Arc::new(AtomicBool::new(false));
        let seen = stored.clone();
        let spool = Spool::new(
            dir.clone(),
            1 << 30,
            Box::new(move |_| seen.load(Ordering::Relaxed)),
        );
        let data = vec![7u8; 20_000];
        let open = source(data.clone(), First::Good, Counts::default());
        let mut r = read(&spool, hash('f'), &data, 0, open, false);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        drop(r);
        std::thread::sleep(SWEEP_EVERY + Duration::from_secs(1));
        assert_eq!(files(&dir), 1, "kept: not in the store yet");
        stored.store(true, Ordering::Relaxed);
        let removed = wait(SWEEP_EVERY * 3, || files(&dir) == 0);
        assert!(removed, "removed by the sweep");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 24, item 6: an upstream answer whose bytes fail the NarHash
    /// is never read whole, its file goes at once, and the next request
    /// fetches anew.
    #[test]
    fn a_download_that_fails_its_nar_hash_is_removed_and_its_readers_cut() {
        let dir = temp("wrong");
        let spool = spool(&dir, 1 << 30);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let counts = Counts::default();
        let open = source(data.clone(), First::Corrupt, counts.clone());
        let mut first = read(&spool, hash('w'), &data, 0, open.clone(), false);
        let mut out = Vec::new();
        let cut = first.read_to_end(&mut out);
        let kind = cut.as_ref().map_err(|e| e.kind());
        assert_eq!(kind.err(), Some(io::ErrorKind::InvalidData), "{cut:?}");
        assert!(out.len() < data.len(), "the last chunk is held back");
        assert_eq!(files(&dir), 0, "removed at once, a reader still there");
        let mut second = read(&spool, hash('w'), &data, 0, open, false);
        out.clear();
        second.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(counts.opened.load(Ordering::Relaxed), 2, "fetched anew");
        drop(first);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 24, item 7: a download under way stays listed and counted
    /// however many downloads complete after it.
    #[test]
    fn a_download_under_way_stays_counted_however_many_complete_after_it() {
        static RELEASED: AtomicBool = AtomicBool::new(false);
        let dir = temp("running");
        let big = vec![9u8; 1_000_000];
        // Room for the one under way and a little more.
        let spool = Spool::with_table(dir.clone(), 1_050_000, 8, Box::new(|_| false));
        let held = source(big.clone(), First::Held(&RELEASED), Counts::default());
        let mut under_way = read(&spool, hash('r'), &big, 0, held, false);
        for i in 0..40 {
            let tiny = vec![i as u8; 100];
            let open = source(tiny.clone(), First::Good, Counts::default());
            let mut out = Vec::new();
            (read(&spool, numbered(i), &tiny, 0, open, false))
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, tiny);
        }
        // A reader of it joins the download under way.
        let again = Counts::default();
        let open = source(big.clone(), First::Good, again.clone());
        let mut joined = read(&spool, hash('r'), &big, 0, open, false);
        // Another large one finds no room: the download under way counts.
        let other = vec![8u8; 100_000];
        let open = source(other.clone(), First::Good, Counts::default());
        let mut out = Vec::new();
        (read(&spool, hash('p'), &other, 0, open, false))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, other);
        RELEASED.store(true, Ordering::Relaxed);
        for r in [&mut under_way, &mut joined] {
            out.clear();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, big);
        }
        assert_eq!(
            again.opened.load(Ordering::Relaxed),
            0,
            "joined, not fetched again"
        );
        let warning = spool.warning().unwrap_or_default();
        assert!(
            warning.contains("full"),
            "the other one was spooled: {warning:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 24, item 8: a download whose readers all left stops, unless
    /// the local Nix read it.
    #[test]
    fn a_download_nobody_reads_stops_unless_the_local_nix_read_it() {
        let dir = temp("unread");
        let spool = spool(&dir, 1 << 30);
        // About 3 s at 1000 bytes a millisecond, longer than `UNREAD_FOR`.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
        for (h, local) in [(hash('v'), false), (hash('l'), true)] {
            let counts = Counts::default();
            let open = source(data.clone(), First::Good, counts.clone());
            let mut r = read(&spool, h, &data, 0, open, local);
            let mut start = [0u8; 4096];
            r.read_exact(&mut start).unwrap();
            drop(r);
            let given = || counts.given.load(Ordering::Relaxed);
            let total = data.len() as u64;
            let ours = || {
                (fs::read_dir(&dir).into_iter().flatten().flatten())
                    .filter(|e| e.file_name().to_string_lossy().starts_with(h.as_str()))
                    .count()
            };
            match local {
                false => {
                    // Its file goes as the download stops.
                    let stopped = wait(Duration::from_secs(20), || ours() == 0);
                    assert!(stopped && given() < total, "it went on: {} bytes", given());
                }
                true => {
                    let complete = wait(Duration::from_secs(60), || given() == total);
                    assert!(complete, "it stopped at {} bytes", given());
                    assert_eq!(ours(), 1);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
