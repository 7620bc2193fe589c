//! A request as the routes see it, and who it comes from.
//!
//! A request over loopback comes from this machine, but not always from a
//! program that means to talk to the node: a web page in a browser whose
//! name an attacker rebinds to 127.0.0.1 (DNS rebinding) reaches the port
//! with `Host: <the attacker's name>`. So a loopback client's `Host` must
//! name loopback: `localhost` (or a name under `.localhost`), an address of
//! 127.0.0.0/8 or `[::1]`, or this machine's host name (which Debian and
//! NixOS map to a loopback address), with or without a port; or be absent
//! (HTTP/1.0). Every Nix client (libcurl) sends the substituter URL's host,
//! `127.0.0.1:12304` as the README and the NixOS module write it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::peer::stripe::Stripe;

/// Who a request comes from: the one place where loopback is told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// The local Nix (or another process of this machine).
    Local,
    /// A peer, or anyone else on the network.
    Peer,
}

impl Client {
    pub fn of(addr: SocketAddr) -> Client {
        match addr.ip().to_canonical().is_loopback() {
            true => Client::Local,
            false => Client::Peer,
        }
    }
}

/// Whether `host`, a `Host` header's value, names this machine's loopback:
/// see the module's comment. `hostname` is this machine's host name.
pub fn names_loopback(host: &str, hostname: &str) -> bool {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(is_port) => {
                return v6
                    .parse::<Ipv6Addr>()
                    .is_ok_and(|ip| IpAddr::V6(ip).to_canonical().is_loopback());
            }
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    if name.is_empty() {
        return true; // `Host:` with no value: no authority named
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || (!hostname.is_empty() && name == hostname.to_ascii_lowercase())
}

/// A port: up to five digits.
fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// A request as the routes see it.
pub struct Incoming<'a> {
    /// The path, without the query.
    pub path: &'a str,
    pub head: bool,
    pub from: Client,
    /// Where the body should start: the `N` of `Range: bytes=N-`.
    pub range: Option<u64>,
    /// The client asked for the framed, compressible NAR stream
    /// (`peer/framed.rs`): only nodes of ours do.
    pub framed: bool,
    /// The stripe of the NAR asked for (`peer/stripe.rs`), with `framed`.
    pub stripe: Option<Stripe>,
    /// The client's address.
    pub peer: Option<IpAddr>,
    /// The upstream narinfo a peer sends with `/peer/pull/` (base64), as
    /// proof that an upstream has the path (`pull::PROOF_HEADER`).
    pub proof: Option<String>,
    /// True when the client prefers JSON (`Accept: application/json`).
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_loopback_names_and_addresses() {
        for host in [
            "localhost",
            "localhost:12304",
            "LocalHost.",
            "nix.localhost:1",
            "127.0.0.1",
            "127.0.0.1:12304",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:12304",
            "[::ffff:127.0.0.1]:12304",
            "myhost",
            "MyHost:12304",
            "",
        ] {
            assert!(names_loopback(host, "myhost"), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:12304",
            "127.0.0.1.nip.io",
            "localhost.attacker.example",
            "10.0.0.1:12304",
            "[fd00::1]:12304",
            "[::1]x",
            "[::1",
            "localhost:http",
            "[::1]12304",
            "::1",
            "myhost.attacker.example",
        ] {
            assert!(!names_loopback(host, "myhost"), "{host}");
        }
        assert!(!names_loopback("myhost", ""));
    }
}
