//! The spool: NARs being fetched from an upstream cache, written to a file
//! under the state directory as they arrive (decompressed), and read by
//! every client that wants them meanwhile, the local Nix and peers alike,
//! each following the file as it grows. One download per path, however
//! many read it.
//!
//! A flight is one such download: a writer thread copies the upstream's
//! stream into the file and says how far it got; readers read up to there
//! and wait for more. When the writer fails (the upstream breaks off, the
//! disk is full), each reader goes on by itself: it opens the upstream
//! anew from the byte it reached, so no client gets a broken NAR. A
//! reader that leaves just stops reading; the writer goes on for the
//! others.
//!
//! Bounded: at most `capacity` bytes of NARs (their sizes are known from
//! the narinfo before a byte is written) and `MAX_WRITERS` downloads at
//! once; when there is no room (spool or disk full, too many downloads, no
//! spool directory), a client streams from the upstream directly, without
//! sharing, never an error. A file is removed once nobody reads it and the
//! path is in the local store, or after `LINGER` (peers that ask late still
//! find it until then), or earlier when room is needed: a sweeping thread
//! looks every `SWEEP_EVERY`, and every new download first. Files left by an
//! earlier run (partial ones included) are removed at start.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::base::bounded::Bounded;
use crate::base::logs::Throttle;
use crate::nix::narinfo::HashPart;

/// Downloads into the spool at once, at most; more stream directly.
const MAX_WRITERS: usize = 64;
/// Flights remembered, per generation of their table.
const MAX_FLIGHTS: usize = 4096;
/// A complete file nobody reads stays this long at most.
const LINGER: Duration = Duration::from_secs(600);
/// A reader waits this long for the writer to write more, at most.
const READER_STALL: Duration = Duration::from_secs(60);
/// Room left on the disk beside the spool, at least.
const DISK_MARGIN: u64 = 64 * 1024 * 1024;
/// Bytes copied at a time.
const CHUNK: usize = 256 * 1024;
/// How often files nobody needs any more are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Status warns this long after the spool last had no room.
const WARN_FOR: Duration = Duration::from_secs(600);

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

/// What the spool and its sweeping thread share.
struct Shared {
    capacity: u64,
    /// Whether the local store holds a path (its file may then go).
    in_store: Box<dyn Fn(&HashPart) -> bool + Send + Sync>,
    flights: Mutex<Bounded<HashPart, Arc<Flight>>>,
}

/// One download into a file of the spool.
struct Flight {
    nar_hash: [u8; 32],
    total: u64,
    file: PathBuf,
    progress: Mutex<Progress>,
    grew: Condvar,
}

#[derive(Default)]
struct Progress {
    written: u64,
    /// `Some` once the writer is done: `Ok` with the whole NAR written.
    end: Option<Result<(), String>>,
    finished: Option<Instant>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
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
            flights: Mutex::new(Bounded::new(MAX_FLIGHTS)),
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
                if let Ok(mut flights) = shared.flights.lock() {
                    shared.sweep(&mut flights, 0);
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
    /// none and there is room, else from `open` directly.
    pub fn read(
        &self,
        hash: &HashPart,
        nar_hash: [u8; 32],
        total: u64,
        offset: u64,
        open: Open,
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
        let file = File::open(&flight.file)?;
        Ok(Box::new(Reader {
            flight,
            file,
            pos: offset,
            open,
            direct: None,
        }))
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
        let mut flights = shared.flights.lock().map_err(|_| None)?;
        if let Some(f) = flights
            .get(hash)
            .filter(|f| f.nar_hash == nar_hash && !f.failed())
        {
            return Ok(f.clone());
        }
        shared.sweep(&mut flights, total);
        let (used, writing) = (flights.iter()).fold((0, 0), |(used, writing), (_, f)| {
            (used + f.total, writing + usize::from(f.writing()))
        });
        if used + total > shared.capacity {
            return Err(Some(format!(
                "full ({} of {} MiB in use)",
                used >> 20,
                shared.capacity >> 20
            )));
        }
        if writing >= MAX_WRITERS {
            return Err(Some(format!("{MAX_WRITERS} downloads under way")));
        }
        if free_bytes(dir).is_some_and(|free| free < total + DISK_MARGIN) {
            return Err(Some("the disk is nearly full".into()));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{hash}-{n}.nar"));
        let file = (fs::OpenOptions::new().write(true).create_new(true))
            .open(&path)
            .map_err(|e| Some(format!("cannot create {}: {e}", path.display())))?;
        let flight = Arc::new(Flight {
            nar_hash,
            total,
            file: path,
            progress: Mutex::new(Progress::default()),
            grew: Condvar::new(),
        });
        // The upstream is opened by the writer, outside the lock: other
        // paths' flights do not wait for this one's round trip.
        let (writer, open) = (flight.clone(), open.clone());
        let started = std::thread::Builder::new()
            .name("spool-writer".into())
            .stack_size(256 * 1024)
            .spawn(move || writer.write(&open, file));
        if let Err(e) = started {
            return Err(Some(format!("cannot start a thread: {e}")));
        }
        flights.insert(*hash, flight.clone());
        log::debug!("spool: fetching {hash} ({total} bytes)");
        Ok(flight)
    }

    /// Forgets the flight of `hash`: its readers go on, new ones get a new
    /// download.
    pub fn forget(&self, hash: &HashPart) {
        if let Ok(mut flights) = self.shared.flights.lock() {
            flights.remove(hash);
        }
    }
}

impl Shared {
    /// Drops failed flights and complete ones nobody reads whose path is
    /// in the local store or that lingered long enough; then, oldest first,
    /// complete unread ones until `room` more bytes fit.
    fn sweep(&self, flights: &mut Bounded<HashPart, Arc<Flight>>, room: u64) {
        flights.retain(|hash, f| {
            let unread = Arc::strong_count(f) == 1;
            match f.finished() {
                Some(Err(())) => false,
                Some(Ok(at)) if unread => at.elapsed() < LINGER && !(self.in_store)(hash),
                _ => true,
            }
        });
        let used: u64 = flights.iter().map(|(_, f)| f.total).sum();
        if used + room <= self.capacity {
            return;
        }
        let mut idle: Vec<(Instant, HashPart, u64)> = (flights.iter())
            .filter(|(_, f)| Arc::strong_count(f) == 1)
            .filter_map(|(h, f)| Some((f.finished()?.ok()?, *h, f.total)))
            .collect();
        idle.sort();
        let mut over = used + room - self.capacity;
        for (_, hash, size) in idle {
            if over == 0 {
                break;
            }
            flights.remove(&hash);
            over = over.saturating_sub(size);
        }
    }
}

impl Flight {
    fn failed(&self) -> bool {
        matches!(self.finished(), Some(Err(())))
    }

    fn writing(&self) -> bool {
        self.finished().is_none()
    }

    /// When the writer finished, and whether it wrote the whole NAR.
    fn finished(&self) -> Option<Result<Instant, ()>> {
        let p = self.progress.lock().ok()?;
        match (&p.end, p.finished) {
            (Some(Ok(())), Some(at)) => Some(Ok(at)),
            (Some(Err(_)), _) => Some(Err(())),
            _ => None,
        }
    }

    /// The writer thread: the upstream's stream into the file, telling the
    /// readers how far it got.
    fn write(&self, open: &Open, mut file: File) {
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        let mut source = match open(0) {
            Ok(source) => source,
            Err(e) => {
                return self.tell(|p| {
                    p.end = Some(Err(format!("cannot open the upstream: {e}")));
                    p.finished = Some(Instant::now());
                })
            }
        };
        let end = loop {
            let n = match source.read(&mut buf) {
                Ok(0) if written == self.total => break Ok(()),
                Ok(0) => {
                    break Err(format!(
                        "the upstream's NAR ended at byte {written} of {}",
                        self.total
                    ))
                }
                Ok(n) if written + n as u64 > self.total => {
                    break Err(format!(
                        "the upstream's NAR is longer than {} bytes",
                        self.total
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(format!("reading the upstream at byte {written}: {e}")),
            };
            if let Err(e) = file.write_all(&buf[..n]) {
                break Err(format!("writing the spool file: {e}"));
            }
            written += n as u64;
            self.tell(|p| p.written = written);
        };
        if let Err(e) = &end {
            log::warn!(
                "spool: {}: {e}; its readers go on by themselves",
                self.file.display()
            );
        }
        self.tell(|p| {
            p.end = Some(end);
            p.finished = Some(Instant::now());
        });
    }

    fn tell(&self, change: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            change(&mut p);
        }
        self.grew.notify_all();
    }

    /// How many bytes from `pos` can be read now: `Ok(0)` at the end,
    /// `Err` when the writer failed. Waits up to `READER_STALL` for more.
    fn readable(&self, pos: u64) -> Result<u64, String> {
        let deadline = Instant::now() + READER_STALL;
        let mut p = self
            .progress
            .lock()
            .map_err(|_| "spool lock poisoned".to_string())?;
        loop {
            if p.written > pos {
                return Ok(p.written - pos);
            }
            match &p.end {
                Some(Ok(())) => return Ok(0),
                Some(Err(e)) => return Err(e.clone()),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no byte from the upstream for {READER_STALL:?}"));
            }
            p = self
                .grew
                .wait_timeout(p, left)
                .map_err(|_| "spool lock poisoned".to_string())?
                .0;
        }
    }
}

/// One client following a flight's file; on its own from the upstream
/// once the writer failed.
struct Reader {
    flight: Arc<Flight>,
    file: File,
    pos: u64,
    open: Open,
    direct: Option<Box<dyn Read + Send>>,
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(direct) = &mut self.direct {
            return direct.read(buf);
        }
        if buf.is_empty() || self.pos >= self.flight.total {
            return Ok(0);
        }
        match self.flight.readable(self.pos) {
            Ok(0) => Ok(0),
            Ok(ready) => {
                let want = buf.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
                let n = self.file.read_at(&mut buf[..want], self.pos)?;
                if n == 0 {
                    return Err(io::Error::other("the spool file is shorter than written"));
                }
                self.pos += n as u64;
                Ok(n)
            }
            Err(e) => {
                log::info!(
                    "spool: {} broke at byte {} ({e}); this reader goes on from the upstream",
                    self.flight.file.display(),
                    self.pos
                );
                self.direct.insert((self.open)(self.pos)?).read(buf)
            }
        }
    }
}

/// Makes `dir` (only this user may read it) and removes what is in it.
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

    /// A source that gives `data` in `step`-byte reads, failing after
    /// `fail_at` bytes if set, counting the times it was opened.
    fn source(data: Vec<u8>, fail_at: Option<u64>, opened: Arc<AtomicU64>) -> Open {
        Arc::new(move |offset| {
            opened.fetch_add(1, Ordering::Relaxed);
            struct Slow(io::Cursor<Vec<u8>>, Option<u64>);
            impl Read for Slow {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    std::thread::sleep(Duration::from_millis(1));
                    if self.1.is_some_and(|f| self.0.position() >= f) {
                        return Err(io::Error::other("cut"));
                    }
                    let n = buf.len().min(1000);
                    self.0.read(&mut buf[..n])
                }
            }
            let mut cursor = io::Cursor::new(data.clone());
            cursor.set_position(offset);
            Ok(Box::new(Slow(cursor, fail_at.filter(|_| offset == 0))) as Box<dyn Read + Send>)
        })
    }

    fn spool(dir: &Path, capacity: u64) -> Spool {
        Spool::new(dir.to_owned(), capacity, Box::new(|_| false))
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("peerix-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn readers_at_once_share_one_download() {
        let dir = temp("share");
        let spool = Arc::new(spool(&dir, 1 << 30));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let opened = Arc::new(AtomicU64::new(0));
        let open = source(data.clone(), None, opened.clone());
        let readers: Vec<_> = (0..4u64)
            .map(|i| {
                let (spool, open, data) = (spool.clone(), open.clone(), data.clone());
                std::thread::spawn(move || {
                    let offset = i * 1000;
                    let mut out = Vec::new();
                    let mut r = spool
                        .read(&hash('a'), [1; 32], data.len() as u64, offset, open)
                        .unwrap();
                    r.read_to_end(&mut out).unwrap();
                    assert_eq!(out, data[offset as usize..]);
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(opened.load(Ordering::Relaxed), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_writer_leaves_its_readers_complete() {
        let dir = temp("fail");
        let spool = spool(&dir, 1 << 30);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let opened = Arc::new(AtomicU64::new(0));
        let open = source(data.clone(), Some(40_000), opened.clone());
        let mut out = Vec::new();
        let mut r = spool
            .read(&hash('b'), [2; 32], data.len() as u64, 0, open)
            .unwrap();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(
            opened.load(Ordering::Relaxed),
            2,
            "once for the flight, once to go on"
        );
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
        let opened = Arc::new(AtomicU64::new(0));
        let mut out = Vec::new();
        let open = source(data.clone(), None, opened.clone());
        let mut r = spool
            .read(&hash('c'), [3; 32], data.len() as u64, 10, open)
            .unwrap();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data[10..]);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing spooled");
        let warning = spool.warning().expect("a warning once it had no room");
        assert!(warning.contains("full (0 of 0 MiB in use)"), "{warning}");
        assert!(warning.contains("(1 since start)"), "{warning}");
        // One that fits is spooled, and removed once nobody reads it.
        let small = vec![6u8; 10_000];
        let open = source(small.clone(), None, opened.clone());
        let mut r = spool
            .read(&hash('d'), [4; 32], small.len() as u64, 0, open.clone())
            .unwrap();
        out.clear();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, small);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        drop(r);
        spool.forget(&hash('d'));
        // The writer thread lets go of it as it ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_dir(&dir).unwrap().count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
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
        use std::sync::atomic::AtomicBool;
        let dir = temp("store");
        let stored = Arc::new(AtomicBool::new(false));
        let seen = stored.clone();
        let spool = Spool::new(
            dir.clone(),
            1 << 30,
            Box::new(move |_| seen.load(Ordering::Relaxed)),
        );
        let data = vec![7u8; 20_000];
        let open = source(data.clone(), None, Arc::new(AtomicU64::new(0)));
        let mut r = spool
            .read(&hash('f'), [5; 32], data.len() as u64, 0, open)
            .unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        drop(r);
        std::thread::sleep(SWEEP_EVERY + Duration::from_secs(1));
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "kept: not in the store yet"
        );
        stored.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + SWEEP_EVERY * 3;
        while fs::read_dir(&dir).unwrap().count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "removed by the sweep"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
