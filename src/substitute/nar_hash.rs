//! A NAR handed to the local Nix is the one its narinfo names: every byte
//! is hashed (SHA-256) on its way through, and the last chunk is held
//! back until the hash of the whole NAR equals the NarHash. On a mismatch
//! the stream fails instead, so the connection is cut before Nix has the
//! whole NAR, and the source is told (to drop the peers that sent it).
//!
//! Nix resumes a cut download with `Range: bytes=N-`. The node then reads
//! the NAR from its first byte again (to hash it whole) and sends from N
//! on. The digest of what a cut stream had sent is remembered: if the
//! new stream's first N bytes differ from what Nix holds, no resumed
//! stream can give Nix its NAR, and the request is refused instead (404:
//! Nix then gets the path anew). What a stream sent is what left the
//! reply's buffer (tiny_http, as patched, sends what the body gave before
//! it cuts a failed reply, and counts only what left its buffer). And once
//! a stream of a NAR failed its NarHash, a resume of that NAR from a byte
//! where no stream of it was cut is refused too: the node cannot vouch for
//! what Nix holds there.

use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use ring::digest::{Context, SHA256};

use crate::base::bounded::Bounded;

/// Cut streams whose sent prefix is remembered, per generation.
const PREFIXES: usize = 256;

/// A NarHash, or the SHA-256 digest of part of a NAR.
type Digest = [u8; 32];

/// The digests of what cut streams had sent, by NarHash and byte count;
/// and the NARs a stream of which did not match its NarHash.
pub struct Prefixes {
    sent: Mutex<Bounded<(Digest, u64), Digest>>,
    wrong: Mutex<Bounded<Digest, ()>>,
}

impl Prefixes {
    pub fn new() -> Prefixes {
        Prefixes {
            sent: Mutex::new(Bounded::new(PREFIXES)),
            wrong: Mutex::new(Bounded::new(PREFIXES)),
        }
    }

    fn remember(&self, nar_hash: [u8; 32], len: u64, digest: [u8; 32]) {
        if let Ok(mut known) = self.sent.lock() {
            known.insert((nar_hash, len), digest);
        }
    }

    fn get(&self, nar_hash: [u8; 32], len: u64) -> Option<[u8; 32]> {
        self.sent.lock().ok()?.get(&(nar_hash, len)).copied()
    }

    /// A stream of the NAR with `nar_hash` did not match it.
    fn went_wrong(&self, nar_hash: [u8; 32]) {
        if let Ok(mut wrong) = self.wrong.lock() {
            wrong.insert(nar_hash, ());
        }
    }

    fn ever_wrong(&self, nar_hash: [u8; 32]) -> bool {
        // A poisoned lock: be careful.
        (self.wrong.lock()).map_or(true, |wrong| wrong.contains_key(&nar_hash))
    }
}

impl Default for Prefixes {
    fn default() -> Prefixes {
        Prefixes::new()
    }
}

/// Why a checked stream could not start.
#[derive(Debug)]
pub enum StartError {
    /// The source failed before byte `offset`.
    Io(io::Error),
    /// The NAR's first `offset` bytes differ from those a cut stream sent
    /// (which the client holds): no resumed stream can complete it.
    PrefixDiffers,
    /// A stream of this NAR went wrong, and none was cut at `offset`: what
    /// the client holds there is not known.
    PrefixUnknown,
}

/// What the source of a checked stream is told when its bytes do not hash
/// to the NarHash.
pub trait Blame {
    fn bad_bytes(&mut self);
}

/// A NAR of `total` bytes from `inner`, checked against `nar_hash`.
pub struct Checked<R: Read + Blame> {
    inner: R,
    hash: Context,
    nar_hash: [u8; 32],
    total: u64,
    /// Bytes read from `inner` and hashed.
    pos: u64,
    /// Bytes handed on, counted from the NAR's start (those before the
    /// requested offset count as the client's own).
    sent: u64,
    prefixes: Arc<Prefixes>,
    /// The stream ended at its last byte, with the right hash or not.
    ended: bool,
}

impl<R: Read + Blame> Checked<R> {
    /// The NAR from `inner` (which starts at its first byte), to be handed
    /// on from byte `offset`: the bytes before are read, hashed and
    /// dropped, and must be those a cut stream sent, if one did.
    pub fn start(
        inner: R,
        nar_hash: [u8; 32],
        total: u64,
        offset: u64,
        prefixes: Arc<Prefixes>,
    ) -> Result<Checked<R>, StartError> {
        let mut checked = Checked {
            inner,
            hash: Context::new(&SHA256),
            nar_hash,
            total,
            pos: 0,
            sent: 0,
            prefixes,
            ended: false,
        };
        let mut buf = vec![0u8; 64 * 1024];
        while checked.pos < offset {
            let want = buf.len().min((offset - checked.pos) as usize);
            let n = (checked.inner.read(&mut buf[..want])).map_err(StartError::Io)?;
            if n == 0 {
                return Err(StartError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the NAR ended before byte {offset}"),
                )));
            }
            checked.hash.update(&buf[..n]);
            checked.pos += n as u64;
        }
        checked.sent = offset;
        if offset > 0 {
            let refused = match checked.prefixes.get(nar_hash, offset) {
                Some(held) if held != digest(checked.hash.clone()) => {
                    Some(StartError::PrefixDiffers)
                }
                Some(_) => None,
                None if checked.prefixes.ever_wrong(nar_hash) => Some(StartError::PrefixUnknown),
                None => None,
            };
            if let Some(refused) = refused {
                checked.ended = true; // nothing to remember
                return Err(refused);
            }
        }
        Ok(checked)
    }
}

/// The NAR of `hash` from `inner` checked against `nar_hash` and handed
/// on from byte `offset` (`Checked::start`), ready for a reply; `None`
/// when it cannot start, with the reason logged (the request gets a 404).
pub fn checked_or_log<R: Read + Blame + Send + 'static>(
    hash: &impl fmt::Display,
    inner: R,
    nar_hash: [u8; 32],
    total: u64,
    offset: u64,
    prefixes: Arc<Prefixes>,
) -> Option<Box<dyn Read + Send>> {
    match Checked::start(inner, nar_hash, total, offset, prefixes) {
        Ok(checked) => Some(Box::new(checked)),
        Err(StartError::Io(e)) => {
            log::info!("{hash}: {e}");
            None
        }
        Err(StartError::PrefixDiffers) => {
            log::warn!(
                "{hash}: Nix resumes a NAR whose first {offset} bytes were wrong; \
                 refused (404), so that it gets the path anew"
            );
            None
        }
        Err(StartError::PrefixUnknown) => {
            log::warn!(
                "{hash}: Nix resumes a NAR at byte {offset}, where no stream of it was cut, \
                 after one that did not match its NarHash; refused (404), so that it gets \
                 the path anew"
            );
            None
        }
    }
}

fn digest(context: Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

impl<R: Read + Blame> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended || self.pos >= self.total || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.total - self.pos).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(0); // short: the reply's length check cuts it
        }
        if self.pos + n as u64 == self.total {
            let sent = self.hash.clone();
            self.hash.update(&buf[..n]);
            self.pos = self.total;
            self.ended = true;
            if digest(self.hash.clone()) != self.nar_hash {
                // Held back: the client never has the whole of a wrong NAR.
                self.prefixes
                    .remember(self.nar_hash, self.sent, digest(sent));
                self.prefixes.went_wrong(self.nar_hash);
                self.inner.bad_bytes();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the NAR does not match its NarHash",
                ));
            }
        } else {
            self.hash.update(&buf[..n]);
            self.pos += n as u64;
        }
        self.sent = self.pos;
        Ok(n)
    }
}

impl<R: Read + Blame> Drop for Checked<R> {
    /// A stream cut short remembers the digest of what it sent, which the
    /// client holds when it resumes.
    fn drop(&mut self) {
        if !self.ended && self.sent > 0 && self.sent == self.pos {
            let sent = digest(self.hash.clone());
            self.prefixes.remember(self.nar_hash, self.sent, sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes from a slice; counts the times it was blamed.
    struct Bytes<'a>(&'a [u8], usize);

    impl Read for Bytes<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // At most 100 bytes a read, like a socket.
            let n = buf.len().min(self.0.len()).min(100);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    impl Blame for Bytes<'static> {
        fn bad_bytes(&mut self) {
            self.1 += 1;
        }
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&SHA256, data).as_ref());
        out
    }

    static GOOD: [u8; 1000] = [7u8; 1000];
    static BAD: [u8; 1000] = {
        let mut b = [7u8; 1000];
        b[10] = 8;
        b
    };

    fn read_all<R: Read>(r: &mut R) -> (Vec<u8>, io::Result<()>) {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return (out, Ok(())),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Err(e)),
            }
        }
    }

    #[test]
    fn a_good_nar_passes_whole_and_a_bad_one_never_does() {
        let prefixes = Arc::new(Prefixes::new());
        let want = sha256(&GOOD);
        let mut good = Checked::start(Bytes(&GOOD, 0), want, 1000, 0, prefixes.clone()).unwrap();
        let (out, end) = read_all(&mut good);
        assert!(end.is_ok());
        assert_eq!(out, GOOD);

        let mut bad = Checked::start(Bytes(&BAD, 0), want, 1000, 0, prefixes.clone()).unwrap();
        let (out, end) = read_all(&mut bad);
        assert!(end.is_err());
        assert_eq!(out.len(), 900, "the last chunk is held back");
        assert_eq!(bad.inner.1, 1, "the source is blamed");
        drop(bad);

        // Nix resumes at 900 with the bad prefix: a good NAR cannot
        // complete it, so the resume is refused.
        let resumed = Checked::start(Bytes(&GOOD, 0), want, 1000, 900, prefixes.clone());
        assert!(matches!(resumed, Err(StartError::PrefixDiffers)));
        // Nor from a byte no stream was cut at: what Nix holds there is
        // not known (issue 24: a count off by tiny_http's buffer).
        let resumed = Checked::start(Bytes(&GOOD, 0), want, 1000, 300, prefixes.clone());
        assert!(matches!(resumed, Err(StartError::PrefixUnknown)));
        // Another NAR is not affected.
        let other = sha256(&BAD);
        assert!(Checked::start(Bytes(&BAD, 0), other, 1000, 300, prefixes).is_ok());
    }

    #[test]
    fn a_resume_after_a_good_prefix_goes_on() {
        let prefixes = Arc::new(Prefixes::new());
        let want = sha256(&GOOD);
        // The corruption is in the last chunk only: the prefix is good.
        let mut late = GOOD;
        late[999] = 0;
        let late: &'static [u8] = Box::leak(Box::new(late));
        let mut bad = Checked::start(Bytes(late, 0), want, 1000, 0, prefixes.clone()).unwrap();
        let (out, end) = read_all(&mut bad);
        assert!(end.is_err());
        drop(bad);
        let mut resumed =
            Checked::start(Bytes(&GOOD, 0), want, 1000, out.len() as u64, prefixes).unwrap();
        let (rest, end) = read_all(&mut resumed);
        assert!(end.is_ok());
        assert_eq!([out, rest].concat(), GOOD);
    }
}
