//! Fetching from a peer over HTTP: its narinfo for a path (bounded in time
//! and size, parsed strictly) and the NAR it points to. Every request has
//! connect and read timeouts, so a peer that stalls is given up on. Only
//! the peer that discovery found is ever asked, at its fixed routes: no
//! host or URL is taken from a request or a narinfo.

use std::fmt;
use std::io::{self, Read};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::NetworkKey;
use crate::discovery::Found;
use crate::narinfo::{self, HashPart, NarInfo};
use crate::summary;

/// A connection to a LAN peer that takes longer than this is a dead peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A NAR stream that moves no byte for this long is given up on (and
/// another peer asked to go on from there).
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections kept per peer, to be reused by the next request.
const IDLE_CONNECTIONS: usize = 8;

#[derive(Debug)]
pub enum FetchError {
    /// The peer could not be reached, or answered with an error status.
    Http(String),
    /// The peer answered something that is not a usable narinfo or NAR.
    Invalid(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Http(m) => write!(f, "request failed: {m}"),
            FetchError::Invalid(m) => write!(f, "unusable answer: {m}"),
        }
    }
}

pub struct PeerClient {
    agent: ureq::Agent,
    /// Authenticates requests to peers, when the network has a key.
    key: Option<Arc<NetworkKey>>,
}

impl PeerClient {
    pub fn new(key: Option<Arc<NetworkKey>>) -> PeerClient {
        PeerClient {
            key,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(STALL_TIMEOUT)
                .timeout_write(STALL_TIMEOUT)
                .redirects(0)
                .max_idle_connections_per_host(IDLE_CONNECTIONS)
                .resolver(ScopedResolver)
                .user_agent(concat!("peerix/", env!("CARGO_PKG_VERSION")))
                .build(),
        }
    }

    /// A GET request for `path` on the peer at `addr`, authenticated when
    /// there is a network key.
    fn get(&self, addr: SocketAddr, path: &str) -> ureq::Request {
        let request = self.agent.get(&format!("http://{}{path}", host(addr)));
        match &self.key {
            Some(key) => request.set("Authorization", &key.authorization("GET", path)),
            None => request,
        }
    }
    /// The peer's narinfo path for `hash`.
    fn narinfo_path(found: &Found, hash: &HashPart) -> String {
        let route = if found.v1 { "local" } else { "peer" };
        format!("/{route}/{hash}.narinfo")
    }

    /// The peer's narinfo URL for `hash`, for messages.
    pub fn narinfo_url(found: &Found, hash: &HashPart) -> String {
        format!(
            "http://{}{}",
            host(found.addr),
            PeerClient::narinfo_path(found, hash)
        )
    }

    /// Fetches and parses the peer's narinfo for `hash`; gives up after
    /// `timeout`.
    pub fn narinfo(
        &self,
        found: &Found,
        hash: &HashPart,
        timeout: Duration,
    ) -> Result<NarInfo, FetchError> {
        let response = self
            .get(found.addr, &PeerClient::narinfo_path(found, hash))
            .timeout(timeout)
            .call()
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let mut text = String::new();
        response
            .into_reader()
            .take(narinfo::MAX_LEN as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| FetchError::Http(format!("reading the narinfo: {e}")))?;
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
        let response = self
            .get(addr, &format!("/peer/summary/{since}"))
            .timeout(timeout)
            .call()
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let mut body = Vec::new();
        response
            .into_reader()
            .take(summary::MAX_ENCODED as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| FetchError::Http(format!("reading the summary: {e}")))?;
        summary::Update::parse(&body)
            .ok_or_else(|| FetchError::Invalid(format!("a summary of {} bytes", body.len())))
    }

    /// Starts receiving the NAR that the peer's narinfo `info` names, from
    /// byte `offset` on: with `Range` (206); a peer that sends the whole
    /// NAR anyway (an original Peerix) has the bytes before `offset` read
    /// and dropped. The URL must be a plain relative path: relative to
    /// `/peer/` on ours, to the root on an original Peerix.
    pub fn nar(
        &self,
        found: &Found,
        info: &NarInfo,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, FetchError> {
        let url = &info.url;
        let plain = !url.is_empty()
            && !url.starts_with('/')
            && !url.contains("..")
            && url
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-+=/".contains(&c));
        if !plain {
            return Err(FetchError::Invalid(format!(
                "NAR URL {url:?} is not a plain relative path"
            )));
        }
        let base = if found.v1 { "/" } else { "/peer/" };
        let mut request = self.get(found.addr, &format!("{base}{url}"));
        if offset > 0 {
            request = request.set("Range", &format!("bytes={offset}-"));
        }
        let response = request
            .call()
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let total = info.nar_size;
        let length = match response.header("Content-Length").map(str::parse::<u64>) {
            Some(Ok(len)) => Some(len),
            Some(Err(_)) => return Err(FetchError::Invalid("bad Content-Length".into())),
            None => None,
        };
        let resumed = response.status() == 206;
        if resumed {
            let range = format!("bytes {offset}-{}/{total}", total.saturating_sub(1));
            if response.header("Content-Range") != Some(&*range) || length != Some(total - offset) {
                return Err(FetchError::Invalid(format!(
                    "asked for {range}, got {:?} of {length:?} bytes",
                    response.header("Content-Range")
                )));
            }
        } else if length.is_some_and(|l| l != total) {
            return Err(FetchError::Invalid(format!(
                "{length:?} bytes, where the narinfo says {total}"
            )));
        }
        let mut body: Box<dyn Read + Send> = Box::new(response.into_reader());
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

/// The host part of a URL for `addr`. A URL cannot carry an IPv6 scope,
/// so a scoped (link-local) address is written as a made-up name that
/// `ScopedResolver` turns back into the address.
fn host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V6(v6) if v6.scope_id() != 0 => {
            format!(
                "ll-{:032x}-{}.peerix:{}",
                u128::from(*v6.ip()),
                v6.scope_id(),
                v6.port()
            )
        }
        other => other.to_string(),
    }
}

/// Resolves the names `host` makes, and everything else as usual.
struct ScopedResolver;

impl ureq::Resolver for ScopedResolver {
    fn resolve(&self, netloc: &str) -> io::Result<Vec<SocketAddr>> {
        let scoped = || {
            let (name, port) = netloc.rsplit_once(':')?;
            let (ip, scope) = name
                .strip_prefix("ll-")?
                .strip_suffix(".peerix")?
                .split_once('-')?;
            let ip = Ipv6Addr::from(u128::from_str_radix(ip, 16).ok()?);
            Some(SocketAddrV6::new(ip, port.parse().ok()?, 0, scope.parse().ok()?).into())
        };
        match scoped() {
            Some(addr) => Ok(vec![addr]),
            None => netloc.to_socket_addrs().map(Iterator::collect),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::Resolver;

    #[test]
    fn scoped_addresses_survive_the_url() {
        let addr: SocketAddr = SocketAddrV6::new("fe80::1:2".parse().unwrap(), 12304, 0, 7).into();
        let netloc = host(addr);
        assert_eq!(ScopedResolver.resolve(&netloc).unwrap(), [addr]);
        let plain: SocketAddr = "10.0.0.1:12304".parse().unwrap();
        assert_eq!(host(plain), "10.0.0.1:12304");
        assert_eq!(ScopedResolver.resolve(&host(plain)).unwrap(), [plain]);
    }
}
