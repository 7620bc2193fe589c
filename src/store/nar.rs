//! NARs of this store's paths, always from Nix's own serializer through a
//! pipe, never held in memory: from a pool of long-lived `nix-store
//! --serve` children (a NAR then costs a round trip, not a process start),
//! or from one `nix-store --dump` per path when no serve child can be had.
//!
//! A stream that ends before its NAR size, fails, stalls, or is dropped
//! half way (the client left) kills its child: the protocol stream of a
//! serve child is then out of step, and a dump is of no more use. A
//! stream read to its end gives its serve child back to the pool, but only
//! once the child has shown it is in step: a store file that changed after
//! Nix registered its path makes a NAR longer than its recorded NarSize,
//! and the rest would be read as the answer to the next question. So the
//! child is asked one question with a known answer (is this path valid?)
//! first; any other answer kills it and fails the stream, which cuts the
//! connection. Children idle for `IDLE` are ended.

use std::io::{self, Read};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::serve::{PathInfo, Serve};
use crate::base::child::Child;
use crate::nix::narinfo::STORE_DIR;

/// Serve children kept for NARs, at most (busy or idle).
const CHILDREN: usize = 16;

/// How long a NAR request waits for a busy serve child to come free
/// before it starts a `nix-store --dump` instead: tiny NARs take well
/// under a millisecond, a process start tens of milliseconds.
const WAIT_FOR_CHILD: Duration = Duration::from_millis(50);

/// How long a serve child may take to answer the question that shows it
/// is in step after a NAR.
const IN_STEP: Duration = Duration::from_secs(2);

/// A serve child idle this long is ended.
const IDLE: Duration = Duration::from_secs(30);

/// Nix may take this long for the first byte of a NAR, and between two
/// reads of one, before the stream is cut.
const STALL: Duration = Duration::from_secs(10);

/// The serve children for NARs.
pub struct Pool {
    state: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<(Serve, Instant)>,
    /// Children that exist, idle or streaming.
    live: usize,
    /// The daemon is stopping: no child is kept.
    stopped: bool,
}

impl Pool {
    pub fn new() -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
        })
    }

    /// The NAR of `info`'s path from byte `offset` on (the bytes before it
    /// are read and dropped, never kept).
    pub fn nar(self: &Arc<Self>, info: &PathInfo, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let mut stream: Box<dyn Read + Send> = match self.take() {
            Some(mut serve) => match serve.dump(&info.path, STALL) {
                Ok(()) => Box::new(ServeNar {
                    serve: Some(serve),
                    name: info.path.clone(),
                    left: info.nar_size,
                    pool: self.clone(),
                }),
                Err(e) => {
                    self.lost();
                    return Err(io::Error::other(e.to_string()));
                }
            },
            None => Box::new(Dump::start(&info.path)?),
        };
        skip(&mut stream, offset)?;
        Ok(stream)
    }

    /// An idle serve child, or a new one if there is room, or one that
    /// comes free soon; `None` when none can be had (then a dump it is).
    fn take(&self) -> Option<Serve> {
        let mut state = self.state.lock().ok()?;
        let deadline = Instant::now() + WAIT_FOR_CHILD;
        loop {
            if let Some((serve, _)) = state.idle.pop() {
                return Some(serve);
            }
            if state.live < CHILDREN {
                state.live += 1;
                drop(state);
                return match Serve::start() {
                    Ok(serve) => Some(serve),
                    Err(e) => {
                        log::warn!(
                            "store: no nix-store --serve for NARs ({e}); using nix-store --dump"
                        );
                        self.lost();
                        None
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self.freed.wait_timeout(state, left).ok()?.0;
        }
    }

    /// Takes back a child whose NAR was read to its end.
    fn give_back(&self, serve: Serve) {
        if let Ok(mut state) = self.state.lock() {
            match state.stopped {
                true => state.live -= 1,
                false => state.idle.push((serve, Instant::now())),
            }
            self.freed.notify_one();
        }
    }

    /// A child is gone (killed, or it never started).
    fn lost(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.live = state.live.saturating_sub(1);
            self.freed.notify_one();
        }
    }

    /// Ends the children idle for longer than `IDLE`.
    pub fn prune(&self) {
        let ended: Vec<Serve> = match self.state.lock() {
            Ok(mut state) => {
                let (old, kept) = std::mem::take(&mut state.idle)
                    .into_iter()
                    .partition(|(_, since)| since.elapsed() >= IDLE);
                state.idle = kept;
                state.live -= old.len();
                old.into_iter().map(|(serve, _)| serve).collect()
            }
            Err(_) => return,
        };
        if !ended.is_empty() {
            log::debug!(
                "store: ended {} idle nix-store --serve for NARs",
                ended.len()
            );
        }
    }

    /// Ends every idle child, and every child given back from now on.
    pub fn stop(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.stopped = true;
            state.live -= state.idle.len();
            state.idle.clear();
        }
    }

    /// Children that exist now, idle or streaming.
    pub fn children(&self) -> usize {
        self.state.lock().map_or(0, |s| s.live)
    }
}

/// Reads and drops the first `offset` bytes of a NAR (a `Range` request).
fn skip(stream: &mut dyn Read, offset: u64) -> io::Result<()> {
    let copied = io::copy(&mut stream.take(offset), &mut io::sink())?;
    if copied < offset {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the NAR ended before byte {offset}"),
        ));
    }
    Ok(())
}

/// A NAR being read from a serve child: exactly its NAR size, then the
/// end. Read whole, the child goes back to the pool; dropped early, it is
/// killed.
struct ServeNar {
    serve: Option<Serve>,
    /// The store path's basename.
    name: String,
    left: u64,
    pool: Arc<Pool>,
}

impl ServeNar {
    /// Gives the child back if its NAR ended at its NarSize: it answers a
    /// question whose answer is known (the path is valid). Else it is
    /// killed, and the stream fails.
    fn give_back_in_step(&mut self) -> io::Result<()> {
        let Some(mut serve) = self.serve.take() else {
            return Ok(());
        };
        let name = self.name.as_str();
        match serve.valid_paths(&[name], IN_STEP) {
            Ok(valid) if valid.len() == 1 && valid[0] == name => {
                self.pool.give_back(serve);
                Ok(())
            }
            answer => {
                let pid = serve.pid();
                drop(serve);
                self.pool.lost();
                log::warn!(
                    "store: the NAR of {name} did not end at its recorded size (a file \
                     changed after Nix registered it? `nix-store --verify --check-contents` \
                     tells); nix-store --serve {pid} killed ({})",
                    match answer {
                        Ok(_) => "out of step".to_string(),
                        Err(e) => e.to_string(),
                    }
                );
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the NAR of {name} is longer than its NarSize"),
                ))
            }
        }
    }
}

impl Read for ServeNar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(serve) = self.serve.as_mut() else {
            return Ok(0);
        };
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = serve.read_by(&mut buf[..want], Instant::now() + STALL)?;
        self.left -= n as u64;
        if self.left == 0 {
            // The last chunk goes out only if the NAR ended here.
            self.give_back_in_step()?;
        }
        Ok(n)
    }
}

impl Drop for ServeNar {
    fn drop(&mut self) {
        if let Some(serve) = self.serve.take() {
            log::debug!(
                "store: NAR stopped {} bytes before its end; nix-store --serve {} killed",
                self.left,
                serve.pid()
            );
            drop(serve);
            self.pool.lost();
        }
    }
}

/// `nix-store --dump` of one path, the fallback: its stdout as it comes,
/// and an error if it exits non-zero, never a quiet short end.
struct Dump {
    child: Child,
    done: bool,
}

impl Dump {
    fn start(name: &str) -> io::Result<Dump> {
        let mut command = Command::new("nix-store");
        command.arg("--dump").arg(format!("{STORE_DIR}/{name}"));
        let child = Child::spawn(command, false)?;
        log::debug!("store: {} (pid {})", child.what(), child.id());
        Ok(Dump { child, done: false })
    }
}

impl Read for Dump {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.child.read_by(buf, Instant::now() + STALL)?;
        if n == 0 {
            self.done = true;
            let status = self.child.wait_by(Instant::now() + STALL)?;
            if !status.success() {
                let said = self.child.stderr_text();
                return Err(io::Error::other(format!(
                    "{} failed ({status}): {said}",
                    self.child.what()
                )));
            }
        }
        Ok(n)
    }
}
