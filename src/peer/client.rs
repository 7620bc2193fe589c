//! Fetching from a peer over HTTP: its narinfo for a path (bounded in time
//! and size, parsed strictly) and the NAR it points to. Every request has
//! a deadline to the reply's head, on a new or a reused connection alike
//! (`connection.rs`), and a NAR's body a stall limit per read, so a peer
//! that freezes is given up on. Only the peer that discovery found is ever
//! asked, at its fixed routes: no host or URL is taken from a request or a
//! narinfo.

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::{Connections, Reply};
use super::framed::{self, Decoder};
use super::identity::Peer;
use super::network_key::NetworkKey;
use super::stripe::{self, Stripe};
use crate::metrics::Framed;
use crate::nix::narinfo::{self, HashPart, NarInfo};
use crate::store::summary;

/// A connection to a LAN peer that takes longer than this is a dead peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A NAR stream that moves no byte for this long is given up on (and
/// another peer asked to go on from there).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer may take to start a NAR (the reply's head, sent once
/// its Nix has begun the NAR)...
const NAR_HEAD_TIMEOUT: Duration = Duration::from_secs(3);
/// ...plus the time to read and drop the bytes before a `Range` start
/// at this pace, which Nix's serializer beats on any disk.
const SKIP_PACE: u64 = 64 * 1024 * 1024;

/// Idle connections kept per peer, to be reused by the next request.
const IDLE_CONNECTIONS: usize = 8;

#[derive(Debug)]
pub enum FetchError {
    /// The peer could not be reached, or its reply broke off.
    Http(String),
    /// The peer answered with this status, not 200 or 206.
    Status(u16),
    /// The peer answered something that is not a usable narinfo or NAR.
    Invalid(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Http(m) => write!(f, "request failed: {m}"),
            FetchError::Status(status) => write!(f, "request failed: status {status}"),
            FetchError::Invalid(m) => write!(f, "unusable answer: {m}"),
        }
    }
}

pub struct PeerClient {
    connections: Connections,
    /// Authenticates requests to peers, when the network has a key.
    key: Option<Arc<NetworkKey>>,
    /// Whether to ask nodes of ours for the framed, compressible stream.
    compress: framed::Mode,
    /// Where the framed streams received are counted, if anywhere.
    framed: Option<Arc<Framed>>,
}

impl PeerClient {
    pub fn new(key: Option<Arc<NetworkKey>>, compress: framed::Mode) -> PeerClient {
        PeerClient {
            key,
            compress,
            framed: None,
            connections: Connections::new(
                IDLE_CONNECTIONS,
                CONNECT_TIMEOUT,
                concat!("peerix/", env!("CARGO_PKG_VERSION")).into(),
            ),
        }
    }

    /// Counts the framed streams it receives in `framed` (the node's
    /// metrics).
    pub fn counted(mut self, framed: Arc<Framed>) -> PeerClient {
        self.framed = Some(framed);
        self
    }

    /// GET `path` on the peer at `addr`, authenticated when there is a
    /// network key: the reply's head by `deadline`, each read of its body
    /// within `stall`, with `headers` beside the authorization.
    /// Statuses other than 200 and 206 are errors.
    fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        mut headers: Vec<(&str, String)>,
        deadline: Instant,
        stall: Duration,
    ) -> Result<Reply, FetchError> {
        if let Some(key) = &self.key {
            headers.push(("Authorization", key.authorization("GET", path)));
        }
        let reply = (self.connections)
            .get(addr, path, &headers, deadline, stall)
            .map_err(|e| FetchError::Http(e.to_string()))?;
        match reply.status {
            200 | 206 => Ok(reply),
            status => {
                reply.discard();
                Err(FetchError::Status(status))
            }
        }
    }

    /// The peer's narinfo path for `hash`.
    fn narinfo_path(peer: &Peer, hash: &HashPart) -> String {
        let route = if peer.v1 { "local" } else { "peer" };
        format!("/{route}/{hash}.narinfo")
    }

    /// The peer's narinfo URL for `hash`, for messages.
    pub fn narinfo_url(peer: &Peer, hash: &HashPart) -> String {
        format!(
            "http://{}{}",
            peer.addr,
            PeerClient::narinfo_path(peer, hash)
        )
    }

    /// Fetches and parses the peer's narinfo for `hash`; gives up after
    /// `timeout`.
    pub fn narinfo(
        &self,
        peer: &Peer,
        hash: &HashPart,
        timeout: Duration,
    ) -> Result<NarInfo, FetchError> {
        let deadline = Instant::now() + timeout;
        let path = PeerClient::narinfo_path(peer, hash);
        let reply = self.get(peer.addr, &path, Vec::new(), deadline, timeout)?;
        if reply.status != 200 {
            reply.discard();
            return Err(FetchError::Invalid("a narinfo answered 206".into()));
        }
        let mut text = String::new();
        let mut body = reply.body.until(deadline);
        (&mut body)
            .take(narinfo::MAX_LEN as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| FetchError::Http(format!("reading the narinfo: {e}")))?;
        if text.len() > narinfo::MAX_LEN {
            return Err(FetchError::Invalid(format!(
                "a narinfo over {} bytes",
                narinfo::MAX_LEN
            )));
        }
        // Read to its end: the connection is reused.
        let _ = body.read(&mut [0u8; 1]);
        let info = NarInfo::parse(&text).map_err(|e| FetchError::Invalid(e.to_string()))?;
        if info.hash_part() != *hash {
            return Err(FetchError::Invalid(format!(
                "asked for {hash}, the narinfo is for {}",
                info.path
            )));
        }
        Ok(info)
    }

    /// The changes to the store summary of the peer of ours at `addr`
    /// since `since` (0: the whole summary); gives up after `timeout`.
    pub fn summary(
        &self,
        addr: SocketAddr,
        since: u64,
        timeout: Duration,
    ) -> Result<summary::Update, FetchError> {
        let deadline = Instant::now() + timeout;
        let path = format!("/peer/summary/{since}");
        let reply = self.get(addr, &path, Vec::new(), deadline, timeout)?;
        let mut body = reply.body.until(deadline);
        let mut bytes = Vec::new();
        (&mut body)
            .take(summary::MAX_ENCODED as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| FetchError::Http(format!("reading the summary: {e}")))?;
        summary::Update::parse(&bytes).ok_or_else(|| {
            let magic = String::from_utf8_lossy(&bytes[..bytes.len().min(4)]);
            FetchError::Invalid(format!(
                "a summary of {} bytes starting {magic:?}, not one of ours",
                bytes.len()
            ))
        })
    }

    /// Starts receiving the NAR that the peer's narinfo `info` names, from
    /// byte `offset` on: with `Range`, answered 206 with exactly that
    /// range, or 200 with the whole NAR (an original Peerix ignores
    /// `Range`), whose bytes before `offset` are then read and dropped.
    /// Any other status is refused. The URL must be a plain relative
    /// path: relative to `/peer/` on ours, to the root on an original
    /// Peerix. Nodes of ours are asked for the framed stream
    /// (`framed.rs`) when `compressible` and compression is on; what
    /// this returns is plain NAR bytes either way. With `stripe`, a node of
    /// ours is asked for that stripe's bytes only (`stripe.rs`), framed,
    /// and what this returns is them.
    pub fn nar(
        &self,
        peer: &Peer,
        info: &NarInfo,
        offset: u64,
        compressible: bool,
        stripe: Option<Stripe>,
    ) -> Result<Box<dyn Read + Send>, FetchError> {
        self.nar_with(peer, info, (offset, compressible, stripe), Vec::new())
    }

    /// [`PeerClient::nar`], with `headers` beside its own (a pulled NAR's
    /// proof, `pull/mod.rs`).
    pub fn nar_with(
        &self,
        peer: &Peer,
        info: &NarInfo,
        (offset, compressible, stripe): (u64, bool, Option<Stripe>),
        mut headers: Vec<(&str, String)>,
    ) -> Result<Box<dyn Read + Send>, FetchError> {
        let url = &info.url;
        if !narinfo::is_plain_relative_url(url) {
            return Err(FetchError::Invalid(format!(
                "NAR URL {url:?} is not a plain relative path"
            )));
        }
        let base = if peer.v1 { "/" } else { "/peer/" };
        let head_by = Instant::now()
            + NAR_HEAD_TIMEOUT
            + Duration::from_secs_f64(offset as f64 / SKIP_PACE as f64);
        let compressing = compressible && self.compress != framed::Mode::Never;
        let framed = !peer.v1 && (compressing || stripe.is_some());
        if offset > 0 {
            headers.push(("Range", format!("bytes={offset}-")));
        }
        if framed {
            headers.push(("Accept-Encoding", framed::ENCODING.to_string()));
        }
        if let Some(stripe) = stripe {
            headers.push((stripe::HEADER, stripe.render()));
        }
        let reply = self.get(
            peer.addr,
            &format!("{base}{url}"),
            headers,
            head_by,
            STALL_TIMEOUT,
        )?;
        let total = info.nar_size;
        let length = match reply.header("Content-Length").map(str::parse::<u64>) {
            Some(Ok(len)) => Some(len),
            Some(Err(_)) => return Err(FetchError::Invalid("bad Content-Length".into())),
            None => None,
        };
        // A framed stream has no length of its own: the decoder ends only
        // at a block boundary, and the NAR's exact length is checked in
        // NAR bytes by the route that passes it on.
        let framed = match reply.header("Content-Encoding") {
            None => false,
            Some(framed::ENCODING) if framed && length.is_none() => true,
            Some(other) => {
                return Err(FetchError::Invalid(format!(
                    "Content-Encoding {other:?} with Content-Length {length:?}"
                )))
            }
        };
        let length = match framed {
            true => Some(total - offset.min(total)),
            false => length,
        };
        let resumed = reply.status == 206;
        if resumed {
            let range = format!("bytes {offset}-{}/{total}", total.saturating_sub(1));
            if range_header(&reply) != Some(&*range) || length != Some(total - offset) {
                return Err(FetchError::Invalid(format!(
                    "asked for {range}, got {:?} of {length:?} bytes",
                    range_header(&reply)
                )));
            }
        } else if length.is_some_and(|l| l != total) {
            return Err(FetchError::Invalid(format!(
                "{length:?} bytes, where the narinfo says {total}"
            )));
        }
        let left = match stripe {
            Some(stripe) if framed && reply.header(stripe::HEADER) == Some(&stripe.render()) => {
                stripe.bytes_in(offset, total)
            }
            Some(_) => {
                return Err(FetchError::Invalid(
                    "the stripe asked for is not sent".into(),
                ))
            }
            None => total - offset.min(total),
        };
        let mut body: Box<dyn Read + Send> = match framed {
            true => Box::new(Decoder::new(reply.body, left).counted(self.framed.clone())),
            false => Box::new(reply.body),
        };
        if !resumed && offset > 0 {
            let skipped = io::copy(&mut (&mut body).take(offset), &mut io::sink())
                .map_err(|e| FetchError::Http(format!("reading up to byte {offset}: {e}")))?;
            if skipped < offset {
                return Err(FetchError::Http(format!(
                    "the NAR ended before byte {offset}"
                )));
            }
        }
        Ok(body)
    }
}

fn range_header(reply: &Reply) -> Option<&str> {
    reply.header("Content-Range")
}
