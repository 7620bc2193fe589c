//! `nix-store --serve`: one long-lived Nix process that answers any number
//! of questions about the local store over the legacy serve protocol (the
//! one ssh:// stores and Hydra use), read-only. A question costs a round
//! trip through a pipe instead of a process start (tens of milliseconds of
//! CPU). The commands used are the same from Nix 2.3 to today and in Lix.
//!
//! Every exchange has a deadline. Any failure leaves the protocol stream
//! in an unknown state: the caller drops the `Serve` (which kills and
//! reaps the process) and starts another when it needs one.

use std::fmt;
use std::io;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::base::child::Child;
use crate::nix::narinfo::{self, basename_of, NarInfo, STORE_DIR};

const MAGIC_1: u64 = 0x390c_9deb;
const MAGIC_2: u64 = 0x5452_eecb;
/// Protocol 2.6: path infos carry the NAR hash, CA and signatures from
/// minor 4 on; Nix 2.3 answers 2.5, later ones 2.7.
const VERSION: u64 = 0x206;

const QUERY_VALID_PATHS: u64 = 1;
const QUERY_PATH_INFOS: u64 = 2;
const DUMP_STORE_PATH: u64 = 3;
const QUERY_CLOSURE: u64 = 7;

/// Longest string accepted from Nix (a store path, a signature, a CA).
const MAX_STRING: u64 = 64 * 1024;
/// Longest list accepted from Nix (references, a closure, valid paths).
const MAX_LIST: u64 = 1 << 22;

/// How long `nix-store --serve` may take to start and greet us.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A Nix command that could not be run or did not answer as expected.
#[derive(Clone, Debug)]
pub enum NixError {
    /// Nix could not be started, or did not answer in time.
    Io(String),
    /// Nix answered something this version of Peerix does not understand.
    Protocol(String),
}

impl fmt::Display for NixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NixError::Io(m) => f.write_str(m),
            NixError::Protocol(m) => write!(f, "unexpected answer from nix-store --serve: {m}"),
        }
    }
}

impl std::error::Error for NixError {}

/// A store path's metadata: the narinfo of the raw NAR, without a URL (a
/// route gives it one; see `NarInfo::served_at`).
pub type PathInfo = NarInfo;

/// A running `nix-store --serve`, greeted.
pub struct Serve {
    child: Child,
}

impl Serve {
    /// Starts `nix-store --serve` and exchanges the greeting.
    pub fn start() -> Result<Serve, NixError> {
        let mut command = Command::new("nix-store");
        command.arg("--serve");
        let child = Child::spawn(command, true).map_err(|e| NixError::Io(e.to_string()))?;
        let mut serve = Serve { child };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut hello = Vec::new();
        put_u64(&mut hello, MAGIC_1);
        put_u64(&mut hello, VERSION);
        serve.send(&hello, deadline)?;
        let magic = serve.u64(deadline)?;
        if magic != MAGIC_2 {
            return Err(NixError::Protocol(format!("greeting {magic:#x}")));
        }
        let version = serve.u64(deadline)?;
        if version >> 8 != 2 || version & 0xff < 4 {
            return Err(NixError::Protocol(format!(
                "protocol {}.{} (2.4 or later is needed: Nix 2.0 or later)",
                version >> 8,
                version & 0xff
            )));
        }
        log::debug!(
            "nix-store --serve (pid {}) speaks protocol 2.{}",
            serve.child.id(),
            version & 0xff
        );
        Ok(serve)
    }

    /// The valid paths among `names` (basenames).
    pub fn valid_paths(
        &mut self,
        names: &[&str],
        timeout: Duration,
    ) -> Result<Vec<String>, NixError> {
        // Flags: lock (read-only: no), substitute (never).
        let deadline = self.ask(QUERY_VALID_PATHS, &[0, 0], names, timeout)?;
        self.paths(deadline)
    }

    /// The metadata of those of `names` (basenames) that are valid.
    pub fn path_infos(
        &mut self,
        names: &[&str],
        timeout: Duration,
    ) -> Result<Vec<PathInfo>, NixError> {
        let deadline = self.ask(QUERY_PATH_INFOS, &[], names, timeout)?;
        let mut infos = Vec::with_capacity(names.len());
        loop {
            let path = self.string(deadline)?;
            if path.is_empty() {
                return Ok(infos);
            }
            infos.push(self.path_info(&path, deadline)?);
        }
    }

    /// The closure of `names` (valid basenames), themselves included.
    /// `Ok(None)` when one of them is not valid: Nix then says so and
    /// exits, and this `Serve` is spent.
    pub fn closure(
        &mut self,
        names: &[&str],
        timeout: Duration,
    ) -> Result<Option<Vec<String>>, NixError> {
        // Flag: include outputs (no).
        let deadline = self.ask(QUERY_CLOSURE, &[0], names, timeout)?;
        match self.paths(deadline) {
            Ok(paths) => Ok(Some(paths)),
            Err(NixError::Io(m)) if m.contains("is not valid") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks for the NAR of `name` (a valid basename): it follows on
    /// stdout, exactly its NAR size long (read it with [`Serve::read_by`]).
    pub fn dump(&mut self, name: &str, timeout: Duration) -> Result<(), NixError> {
        let mut request = Vec::new();
        put_u64(&mut request, DUMP_STORE_PATH);
        put_string(&mut request, &format!("{STORE_DIR}/{name}"));
        self.send(&request, Instant::now() + timeout)
    }

    /// Reads NAR bytes (after [`Serve::dump`]) by `deadline`; an error
    /// carries what Nix said if it stopped.
    pub fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        match self.child.read_by(buf, deadline) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                self.failure("ended the NAR early"),
            )),
            Ok(n) => Ok(n),
            Err(e) => Err(io::Error::new(e.kind(), self.failure(&e.to_string()))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A message for a failure, with what Nix wrote on stderr.
    fn failure(&mut self, what: &str) -> String {
        let said = self.child.stderr_text();
        match said.is_empty() {
            true => format!("nix-store --serve: {what}"),
            false => format!("nix-store --serve: {what}: {said}"),
        }
    }

    /// Sends `command`, its `flags` and the store paths of `names`; the
    /// deadline of the whole exchange, `timeout` from now.
    fn ask(
        &mut self,
        command: u64,
        flags: &[u64],
        names: &[&str],
        timeout: Duration,
    ) -> Result<Instant, NixError> {
        let deadline = Instant::now() + timeout;
        let mut request = Vec::new();
        for n in std::iter::once(&command).chain(flags) {
            put_u64(&mut request, *n);
        }
        put_paths(&mut request, names);
        self.send(&request, deadline)?;
        Ok(deadline)
    }

    fn send(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), NixError> {
        self.child
            .write_all_by(bytes, deadline)
            .map_err(|e| NixError::Io(self.failure(&e.to_string())))
    }

    fn u64(&mut self, deadline: Instant) -> Result<u64, NixError> {
        let mut bytes = [0u8; 8];
        self.child
            .read_exact_by(&mut bytes, deadline)
            .map_err(|e| NixError::Io(self.failure(&e.to_string())))?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn string(&mut self, deadline: Instant) -> Result<String, NixError> {
        let len = self.u64(deadline)?;
        if len > MAX_STRING {
            return Err(NixError::Protocol(format!("a string of {len} bytes")));
        }
        let padded = (len as usize).div_ceil(8) * 8;
        let mut bytes = vec![0u8; padded];
        self.child
            .read_exact_by(&mut bytes, deadline)
            .map_err(|e| NixError::Io(self.failure(&e.to_string())))?;
        bytes.truncate(len as usize);
        String::from_utf8(bytes)
            .map_err(|_| NixError::Protocol("a string that is not UTF-8".into()))
    }

    fn strings(&mut self, deadline: Instant) -> Result<Vec<String>, NixError> {
        let count = self.u64(deadline)?;
        if count > MAX_LIST {
            return Err(NixError::Protocol(format!("a list of {count} items")));
        }
        (0..count).map(|_| self.string(deadline)).collect()
    }

    /// A list of full store paths, as basenames.
    fn paths(&mut self, deadline: Instant) -> Result<Vec<String>, NixError> {
        self.strings(deadline)?
            .iter()
            .map(|p| {
                basename_of(p)
                    .map(str::to_owned)
                    .map_err(NixError::Protocol)
            })
            .collect()
    }

    /// The rest of one answer of QueryPathInfos, after its path.
    fn path_info(&mut self, path: &str, deadline: Instant) -> Result<PathInfo, NixError> {
        let bad = NixError::Protocol;
        let path = basename_of(path).map_err(bad)?.to_owned();
        let deriver = match self.string(deadline)? {
            d if d.is_empty() => None,
            d => Some(basename_of(&d).map_err(bad)?.to_owned()),
        };
        let references = self.paths(deadline)?;
        let _download_size = self.u64(deadline)?;
        let nar_size = self.u64(deadline)?;
        let nar_hash = narinfo::parse_sha256(&self.string(deadline)?).map_err(bad)?;
        let ca = Some(self.string(deadline)?).filter(|c| !c.is_empty());
        let sigs = self.strings(deadline)?;
        Ok(PathInfo {
            path,
            url: String::new(),
            compression: "none".into(),
            nar_hash,
            nar_size,
            references,
            deriver,
            sigs,
            ca,
        })
    }
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len().div_ceil(8) * 8, 0);
}

fn put_paths(out: &mut Vec<u8>, names: &[&str]) {
    put_u64(out, names.len() as u64);
    for name in names {
        put_string(out, &format!("{STORE_DIR}/{name}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_padded_to_eight_bytes() {
        let mut out = Vec::new();
        put_string(&mut out, "abc");
        assert_eq!(
            out,
            [3, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]
        );
        out.clear();
        put_string(&mut out, "");
        assert_eq!(out, [0; 8]);
        out.clear();
        put_paths(&mut out, &["x"]);
        assert_eq!(out.len(), 8 + 8 + 16);
    }
}
