//! Fetching from upstream binary caches (cache.nixos.org, an attic, …)
//! over HTTP or HTTPS, as Nix would: the system's CA certificates (or
//! `NIX_SSL_CERT_FILE`, else `SSL_CERT_FILE`, as Nix reads them), through
//! `https_proxy` / `http_proxy` / `all_proxy` when set. TLS is rustls on
//! ring. Every request has connect and read timeouts; a narinfo is bounded
//! in size and parsed strictly; a NAR comes as a stream, decompressed
//! (`decode.rs`), never whole in memory.

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::decode;
use crate::nix::narinfo::{self, HashPart, NarInfo};

/// Connecting to an upstream across the internet may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A NAR download that moves no byte for this long is given up on.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where distributions keep the CA bundle, as Nix looks for it when
/// neither variable is set.
const CA_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/nix/var/nix/profiles/default/etc/ssl/certs/ca-bundle.crt",
];

/// Why an upstream could not give what was asked.
#[derive(Debug)]
pub enum UpstreamError {
    /// It does not have it (404, 403, 410, as Nix reads them).
    Missing,
    /// It could not be reached, or answered with an error.
    Http(String),
    /// It answered something unusable.
    Invalid(String),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Missing => f.write_str("not there"),
            UpstreamError::Http(m) => write!(f, "request failed: {m}"),
            UpstreamError::Invalid(m) => write!(f, "unusable answer: {m}"),
        }
    }
}

/// One upstream cache: its base URL without a trailing `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache(String);

impl Cache {
    /// `http://…` or `https://…`, nothing else.
    pub fn parse(url: &str) -> Result<Cache, String> {
        let url = url.trim().trim_end_matches('/');
        let rest = (url.strip_prefix("https://"))
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
        if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Cache(url.to_owned()))
    }

    pub fn url(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Agents by scheme (a proxy applies to one scheme or the other) and by
/// use. ureq hands back a pooled connection without its read timeout, so
/// only narinfo requests, each with a deadline of its own, reuse
/// connections; a NAR, which may take minutes, gets a new connection whose
/// read timeout catches an upstream that stalls (a TLS handshake more per
/// NAR).
pub struct Client {
    https: ureq::Agent,
    http: ureq::Agent,
    https_nar: ureq::Agent,
    http_nar: ureq::Agent,
}

impl Client {
    pub fn new() -> Result<Client, String> {
        let tls = tls_config()?;
        let agent = |proxy: Option<ureq::Proxy>, pooled: bool| {
            let mut builder = ureq::AgentBuilder::new()
                .max_idle_connections(if pooled { 100 } else { 0 })
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(STALL_TIMEOUT)
                .timeout_write(STALL_TIMEOUT)
                .redirects(4)
                .tls_config(tls.clone())
                .user_agent(concat!("peerix/", env!("CARGO_PKG_VERSION")));
            if let Some(proxy) = proxy {
                builder = builder.proxy(proxy);
            }
            builder.build()
        };
        let (https, http) = (
            proxy_for(&["https_proxy", "HTTPS_PROXY"]),
            proxy_for(&["http_proxy"]),
        );
        Ok(Client {
            https: agent(https.clone(), true),
            http: agent(http.clone(), true),
            https_nar: agent(https, false),
            http_nar: agent(http, false),
        })
    }

    fn get(&self, url: &str, nar: bool) -> ureq::Request {
        let agent = match (url.starts_with("https://"), nar) {
            (true, false) => &self.https,
            (false, false) => &self.http,
            (true, true) => &self.https_nar,
            (false, true) => &self.http_nar,
        };
        agent.get(url)
    }

    /// The cache's narinfo for `hash`, parsed strictly and describing that
    /// path; within `timeout`.
    pub fn narinfo(
        &self,
        cache: &Cache,
        hash: &HashPart,
        timeout: Duration,
    ) -> Result<NarInfo, UpstreamError> {
        let url = format!("{cache}/{hash}.narinfo");
        let response = match self.get(&url, false).timeout(timeout).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(403 | 404 | 410, _)) => return Err(UpstreamError::Missing),
            Err(e) => return Err(UpstreamError::Http(e.to_string())),
        };
        let mut text = String::new();
        (response.into_reader())
            .take(narinfo::MAX_LEN as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| UpstreamError::Http(format!("reading {url}: {e}")))?;
        let info = NarInfo::parse(&text).map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        if info.hash_part() != *hash {
            return Err(UpstreamError::Invalid(format!(
                "asked for {hash}, the narinfo is for {}",
                info.path
            )));
        }
        if !narinfo::is_plain_relative_url(&info.url) {
            return Err(UpstreamError::Invalid(format!(
                "NAR URL {:?} is not a plain relative path",
                info.url
            )));
        }
        decode::check(&info.compression).map_err(UpstreamError::Invalid)?;
        Ok(info)
    }

    /// The NAR that `info` (this cache's narinfo) names, decompressed, from
    /// byte `offset` of the NAR on: an uncompressed one is resumed with
    /// `Range`, a compressed one read from its start and the first
    /// `offset` bytes of the NAR dropped.
    pub fn nar(
        &self,
        cache: &Cache,
        info: &NarInfo,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, UpstreamError> {
        let url = format!("{cache}/{}", info.url);
        let ranged = offset > 0 && info.compression == "none";
        let mut request = self.get(&url, true);
        if ranged {
            request = request.set("Range", &format!("bytes={offset}-"));
        }
        let response = match request.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(403 | 404 | 410, _)) => return Err(UpstreamError::Missing),
            Err(e) => return Err(UpstreamError::Http(format!("{url}: {e}"))),
        };
        let resumed = ranged && response.status() == 206;
        if resumed {
            let want = format!("bytes {offset}-");
            if !(response.header("Content-Range")).is_some_and(|r| r.starts_with(&want)) {
                return Err(UpstreamError::Invalid(format!(
                    "{url}: asked for {want}, got {:?}",
                    response.header("Content-Range")
                )));
            }
        }
        let raw: Box<dyn Read + Send> = Box::new(response.into_reader());
        let mut nar = decode::decoder(&info.compression, raw)
            .map_err(|e| UpstreamError::Invalid(format!("{url}: {e}")))?;
        if offset > 0 && !resumed {
            let skipped = io::copy(&mut (&mut nar).take(offset), &mut io::sink()).map_err(|e| {
                UpstreamError::Http(format!("{url}: reading up to byte {offset}: {e}"))
            })?;
            if skipped < offset {
                return Err(UpstreamError::Invalid(format!(
                    "{url}: the NAR ended before byte {offset}"
                )));
            }
        }
        Ok(nar)
    }
}

/// The first proxy set among `names`, then `all_proxy`.
fn proxy_for(names: &[&str]) -> Option<ureq::Proxy> {
    let (name, value) = (names.iter().chain(&["all_proxy", "ALL_PROXY"]))
        .find_map(|n| Some((*n, std::env::var(n).ok().filter(|v| !v.is_empty())?)))?;
    match ureq::Proxy::new(&value) {
        Ok(proxy) => {
            log::info!("upstream caches: through the proxy in {name}");
            Some(proxy)
        }
        Err(e) => {
            log::warn!("upstream caches: ignoring {name}: {e}");
            None
        }
    }
}

/// The CA bundle Nix would use: `NIX_SSL_CERT_FILE`, else `SSL_CERT_FILE`,
/// else the first of the distributions' places that exists.
fn ca_bundle() -> Option<PathBuf> {
    for name in ["NIX_SSL_CERT_FILE", "SSL_CERT_FILE"] {
        if let Some(path) = std::env::var_os(name).filter(|p| !p.is_empty()) {
            return Some(path.into());
        }
    }
    (CA_BUNDLES.iter().map(PathBuf::from)).find(|p| p.exists())
}

/// rustls on ring, trusting the certificates of the CA bundle.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_bundle() {
        Some(path) => match CertificateDer::pem_file_iter(&path) {
            Ok(certs) => {
                let (added, ignored) = roots.add_parsable_certificates(certs.flatten());
                log::debug!(
                    "upstream caches: {added} CA certificates from {} ({ignored} unusable)",
                    path.display()
                );
                if added == 0 {
                    log::warn!("upstream caches: no CA certificate in {}", path.display());
                }
            }
            Err(e) => log::warn!("upstream caches: cannot read {}: {e}", path.display()),
        },
        None => log::warn!(
            "upstream caches: no CA bundle found (set NIX_SSL_CERT_FILE or SSL_CERT_FILE); HTTPS will fail"
        ),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS on ring: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_urls() {
        assert_eq!(
            Cache::parse("https://cache.nixos.org/").unwrap().url(),
            "https://cache.nixos.org"
        );
        assert!(Cache::parse("ftp://x").is_err());
        assert!(Cache::parse("https://").is_err());
        assert!(Cache::parse("cache.nixos.org").is_err());
    }
}
