//! Fetching from a peer over HTTP: its narinfo for a path (bounded in time
//! and size, parsed strictly) and the NAR it points to. Every request has
//! a deadline to the reply's head, on a new or a reused connection alike
//! (`connection.rs`), and a NAR's body a stall limit per read, so a peer
//! that freezes is given up on: 1 s to connect, 3 s for a NAR's head (plus
//! the time to skip to a `Range` start), 10 s without a byte; and a floor
//! (`NAR_FLOOR`, `PULLED_FLOOR`, over the time spent waiting for the
//! body), so a peer that trickles is too. Every NAR from another node
//! comes through here: a peer's (`substitute/failover_nar.rs`), a stripe
//! lane (`substitute/striped_nar.rs`), a puller's (`pull/`); a source given
//! up on loses the NAR to the next, from the byte it stopped at, and is
//! counted (`peerix_passed_over_total`, `too_slow` or `stalled`). Only
//! `200` (the NAR from its first byte) and `206` with the range asked for
//! are taken as a NAR; an original Peerix, which sends the whole NAR to a
//! `Range` request, has the first bytes read and dropped. Only the peer
//! that discovery found is ever asked, at its fixed routes: no host or URL
//! is taken from a request or a narinfo.

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::{Connections, Floor, Reply};
use super::framed::{self, Decoder};
use super::identity::Peer;
use super::network_key::NetworkKey;
use super::stripe::{self, Stripe};
use crate::metrics::{Metrics, PassedOver};
use crate::nix::narinfo::{self, HashPart, NarInfo};
use crate::store::summary;

/// A connection to a LAN peer that takes longer than this is a dead peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A NAR stream that moves no byte for this long is given up on (and
/// another peer asked to go on from there).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A NAR stream slower than this, over the time spent waiting for it, is
/// given up on too (once its first bytes came): far below any LAN, and
/// far above a peer that trickles a byte now and then to stay above
/// curl's low-speed limit (which kept a NAR "in progress" for days).
pub const NAR_FLOOR: Floor = Floor {
    rate: 64 * 1024,
    window: Duration::from_secs(5),
};
/// The floor of a NAR a node pulls through an upstream cache for the LAN:
/// it comes at the pace of that node's internet link, shared by every
/// download under way (16 at once over 1 Mbit/s: 8 KiB/s each), and
/// giving up on it would make this node fetch the NAR over the same link
/// again.
pub const PULLED_FLOOR: Floor = Floor {
    rate: 8 * 1024,
    window: Duration::from_secs(5),
};
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
    /// Where the framed streams received and the sources given up on are
    /// counted, if anywhere.
    metrics: Option<Arc<Metrics>>,
    /// The least a NAR body must come at: from a peer's store, and
    /// pulled through an upstream by another node.
    floors: (Floor, Floor),
}

impl PeerClient {
    pub fn new(key: Option<Arc<NetworkKey>>, compress: framed::Mode) -> PeerClient {
        PeerClient {
            key,
            compress,
            metrics: None,
            floors: (NAR_FLOOR, PULLED_FLOOR),
            connections: Connections::new(
                IDLE_CONNECTIONS,
                CONNECT_TIMEOUT,
                concat!("peerix/", env!("CARGO_PKG_VERSION")).into(),
            ),
        }
    }

    /// Counts the framed streams it receives, and the sources of NARs it
    /// gives up on, in `metrics` (the node's).
    pub fn counted(mut self, metrics: Arc<Metrics>) -> PeerClient {
        self.metrics = Some(metrics);
        self
    }

    /// Another floor for every NAR body (tests).
    #[cfg(test)]
    fn with_floor(mut self, floor: Floor) -> PeerClient {
        self.floors = (floor, floor);
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
        // A pulled NAR comes from a node that fetches it for the LAN.
        let (source, floor) = match info.url.starts_with("pull/") {
            true => (PassedOver::Puller, self.floors.1),
            false => (PassedOver::Peer, self.floors.0),
        };
        let metrics = self.metrics.clone();
        let given_up = move |why| {
            if let Some(metrics) = &metrics {
                metrics.passed_over(source, why);
            }
        };
        let watched = reply.body.watched(floor, Box::new(given_up));
        let mut body: Box<dyn Read + Send> = match framed {
            true => {
                let counted = self.metrics.as_ref().map(|m| m.framed.clone());
                Box::new(Decoder::new(watched, left).counted(counted))
            }
            false => Box::new(watched),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Gauges;
    use std::io::Write;
    use std::net::TcpListener;

    /// A node on loopback that answers one NAR request with its head, 1000
    /// bytes, then a byte every 50 ms.
    fn trickling_node() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let reply = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
            stream.write_all(reply.as_bytes()).unwrap();
            stream.write_all(&[1u8; 1000]).unwrap();
            while stream.write_all(&[1]).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        addr
    }

    /// A puller (a NAR on `/peer/pull/`) and a peer that trickle are given
    /// up on alike, each counted as what it is: every NAR from another
    /// node, the pulled ones too, is read through this client.
    #[test]
    fn trickling_pullers_and_peers_are_given_up_on_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let floor = Floor {
            rate: 64 * 1024,
            window: Duration::from_millis(300),
        };
        let client = PeerClient::new(None, framed::Mode::Never)
            .counted(metrics.clone())
            .with_floor(floor);
        let hash = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        for url in [
            format!("pull/{hash}-awrccy8w2v4v74m9ipglpniq94nkh3x4.nar"),
            "nar/awrccy8w2v4v74m9ipglpniq94nkh3x4.nar".to_string(),
        ] {
            let info = NarInfo::parse(&format!(
                "StorePath: /nix/store/awrccy8w2v4v74m9ipglpniq94nkh3x4-x\nURL: {url}\n\
                 Compression: none\nNarHash: sha256:{hash}\nNarSize: 100000\n"
            ))
            .unwrap();
            let peer = Peer {
                addr: trickling_node(),
                v1: false,
                node: Some(7),
            };
            let mut body = client.nar(&peer, &info, 0, false, None).unwrap();
            let mut got = Vec::new();
            let error = body.read_to_end(&mut got).unwrap_err();
            assert!(error.to_string().contains("too slow"), "{error}");
        }
        let gauges = Gauges {
            peers: 0,
            store_paths: 0,
            transfers: 0,
        };
        let text = metrics.render(gauges, &[]);
        for source in ["puller", "peer"] {
            let line =
                format!("peerix_passed_over_total{{source=\"{source}\",reason=\"too_slow\"}} 1");
            assert!(text.contains(&line), "{line}\n{text}");
        }
    }
}
