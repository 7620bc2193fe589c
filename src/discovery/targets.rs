//! Where this node's queries go: the IPv4 broadcast address of every
//! interface on a private network, the IPv6 link-local multicast group on
//! every interface, and the `--extra-host` peers by unicast. Interfaces and
//! host names are looked at again now and then on the targets thread, so
//! that neither a slow DNS server nor a new interface ever blocks or
//! escapes the UDP thread.
//!
//! Also the networks this host is on (every address of an up interface,
//! with its prefix), and with the extra hosts where a peer that another
//! peer tells of may be probed ([`Targets::may_probe`], see
//! `exchange.rs`).

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The link-local multicast group peers listen on ("peerix" in hex).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0x7065, 0x6572, 0x6978);

/// How often interfaces and extra hosts are looked at again.
const REFRESH_EVERY: Duration = Duration::from_secs(30);

#[derive(Default, Debug)]
pub struct Targets {
    /// Broadcast and multicast addresses: every peer of a network.
    pub lan: Vec<SocketAddr>,
    /// The extra hosts, resolved.
    pub hosts: Vec<SocketAddr>,
    /// The networks of this host's interfaces.
    pub subnets: Vec<Subnet>,
}

/// A network an interface of this host is on: an address and its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl Subnet {
    /// Whether `ip` is in this network: for IPv4 below /31, neither its
    /// network address nor its broadcast address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                let (net, ip) = (u32::from(net), u32::from(ip));
                let host = ip & !mask;
                net & mask == ip & mask && (bits >= 31 || (host != 0 && host != !mask))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Around an extra host, the network a peer told of may be believed in
/// (see `exchange.rs`): a /24 for IPv4, a /64 for IPv6.
const NEAR_V4: u8 = 24;
const NEAR_V6: u8 = 64;

impl Targets {
    pub fn all(&self) -> impl Iterator<Item = &SocketAddr> {
        self.lan.iter().chain(&self.hosts)
    }

    /// Whether a peer that another peer told of at `addr` may be sent a
    /// probe: at `port` (the LAN's), a unicast address (not broadcast,
    /// multicast, loopback or unspecified; not IPv6 link-local, whose
    /// interface the list cannot name) on a network of this host's
    /// interfaces, or an extra host's, or near one (its /24 or /64).
    pub fn may_probe(&self, addr: SocketAddr, port: u16) -> bool {
        let ip = addr.ip().to_canonical();
        let unicast = match ip {
            IpAddr::V4(v4) => {
                !(v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast())
            }
            IpAddr::V6(v6) => {
                !(v6.is_unspecified()
                    || v6.is_loopback()
                    || v6.is_multicast()
                    || v6.segments()[0] & 0xffc0 == 0xfe80)
            }
        };
        let near = |host: &SocketAddr| {
            let host = host.ip().to_canonical();
            let prefix = if host.is_ipv4() { NEAR_V4 } else { NEAR_V6 };
            host == ip || Subnet { ip: host, prefix }.contains(ip)
        };
        addr.port() == port
            && unicast
            && (self.subnets.iter().any(|s| s.contains(ip)) || self.hosts.iter().any(near))
    }
}

/// The current targets, replaced as a whole by the targets thread.
pub type SharedTargets = Arc<RwLock<Arc<Targets>>>;

pub struct Settings {
    pub port: u16,
    pub broadcast: bool,
    pub extra_hosts: Vec<String>,
}

/// Computes the targets once, then keeps them fresh from a thread.
/// Host names are first resolved on the thread too, so that a slow or
/// absent DNS server never delays the start.
pub fn start(settings: Settings, socket: UdpSocket) -> std::io::Result<SharedTargets> {
    let first = refresh(&settings, &socket, false);
    let shared: SharedTargets = Arc::new(RwLock::new(Arc::new(first)));
    let weak = Arc::downgrade(&shared);
    std::thread::Builder::new()
        .name("discovery-targets".into())
        .spawn(move || loop {
            let Some(shared) = weak.upgrade() else { return };
            let targets = Arc::new(refresh(&settings, &socket, true));
            if let Ok(mut current) = shared.write() {
                *current = targets;
            };
            drop(shared);
            std::thread::sleep(REFRESH_EVERY);
        })?;
    Ok(shared)
}

/// The targets now; extra hosts given by name only when `names` (that may
/// wait for DNS).
fn refresh(settings: &Settings, socket: &UdpSocket, names: bool) -> Targets {
    let mut lan = Vec::new();
    if settings.broadcast {
        for interface in interfaces() {
            match interface {
                Interface::V4 { broadcast, .. } => {
                    lan.push(SocketAddr::new(broadcast.into(), settings.port))
                }
                Interface::V6 { index, .. } => {
                    // Joining again reports "address in use": that is fine.
                    let _ = socket.join_multicast_v6(&MULTICAST_V6, index);
                    lan.push(SocketAddrV6::new(MULTICAST_V6, settings.port, 0, index).into());
                }
            }
        }
    }
    let mut hosts = Vec::new();
    for host in &settings.extra_hosts {
        if !names && literal(host, settings.port).is_none() {
            continue;
        }
        match resolve(host, settings.port) {
            Ok(found) => hosts.extend(found),
            Err(e) => log::warn!("extra host {host}: {e}; skipped until the next look"),
        }
    }
    hosts.sort();
    hosts.dedup();
    let subnets = subnets();
    log::debug!("discovery targets: LAN {lan:?}, hosts {hosts:?}, networks {subnets:?}");
    Targets {
        lan,
        hosts,
        subnets,
    }
}

/// `host` as an address, `ADDR`, `ADDR:PORT` or `[V6]:PORT`, if it is one.
fn literal(host: &str, default_port: u16) -> Option<SocketAddr> {
    host.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .or_else(|_| host.parse::<SocketAddr>())
        .ok()
}

/// Resolves `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare address.
fn resolve(host: &str, default_port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Some(addr) = literal(host, default_port) {
        return Ok(vec![addr]);
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (
            name,
            port.parse::<u16>()
                .map_err(|_| format!("{port:?} is not a port"))?,
        ),
        _ => (host, default_port),
    };
    let found: Vec<SocketAddr> = (name, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    if found.is_empty() {
        return Err("resolves to no address".into());
    }
    Ok(found)
}

#[derive(Debug, PartialEq, Eq)]
enum Interface {
    V4 { name: String, broadcast: Ipv4Addr },
    V6 { name: String, index: u32 },
}

/// True for the networks the original Peerix broadcasts on: RFC 1918 and
/// link-local.
fn is_private_v4(ip: Ipv4Addr) -> bool {
    ip.is_private() || ip.is_link_local()
}

/// One address of an up, non-loopback interface, as `getifaddrs` lists it.
struct IfAddr {
    name: String,
    flags: u32,
    ip: IpAddr,
    /// Its prefix length (from the netmask).
    prefix: u8,
    /// The broadcast address (IPv4 on a broadcast interface).
    broadcast: Option<Ipv4Addr>,
    /// The interface's index (IPv6).
    scope: u32,
}

/// The addresses of the up, non-loopback interfaces.
fn if_addrs() -> Vec<IfAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that we only read
    // and then free with freeifaddrs; every pointer is checked for null and
    // each sockaddr is read as the type its family says.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            log::warn!(
                "cannot list network interfaces: {}",
                std::io::Error::last_os_error()
            );
            return found;
        }
        let mut cursor = list;
        while let Some(ifa) = cursor.as_ref() {
            cursor = ifa.ifa_next;
            let flags = ifa.ifa_flags;
            let up = flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_LOOPBACK as u32 == 0;
            if !up || ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let mask = ifa.ifa_netmask;
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
                    let prefix = match mask.is_null() {
                        true => 32,
                        false => {
                            let mask = &*(mask as *const libc::sockaddr_in);
                            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
                        }
                    };
                    let bcast = ifa.ifa_ifu;
                    let broadcast = (flags & libc::IFF_BROADCAST as u32 != 0 && !bcast.is_null())
                        .then(|| {
                            let bcast = &*(bcast as *const libc::sockaddr_in);
                            Ipv4Addr::from(u32::from_be(bcast.sin_addr.s_addr))
                        });
                    found.push(IfAddr {
                        name,
                        flags,
                        ip: ip.into(),
                        prefix,
                        broadcast,
                        scope: 0,
                    });
                }
                libc::AF_INET6 => {
                    let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
                    let prefix = match mask.is_null() {
                        true => 128,
                        false => {
                            let mask = &*(mask as *const libc::sockaddr_in6);
                            u128::from_be_bytes(mask.sin6_addr.s6_addr).count_ones() as u8
                        }
                    };
                    found.push(IfAddr {
                        name,
                        flags,
                        ip: ip.into(),
                        prefix,
                        broadcast: None,
                        scope: addr.sin6_scope_id,
                    });
                }
                _ => {}
            }
        }
        libc::freeifaddrs(list);
    }
    found
}

/// The up, non-loopback interfaces: with their broadcast address for IPv4
/// on a private network, with their index for IPv6 with a link-local
/// address and multicast.
fn interfaces() -> Vec<Interface> {
    let mut found = Vec::new();
    for a in if_addrs() {
        match a.ip {
            IpAddr::V4(ip) => {
                if let Some(broadcast) = a.broadcast.filter(|_| is_private_v4(ip)) {
                    found.push(Interface::V4 {
                        name: a.name,
                        broadcast,
                    });
                }
            }
            IpAddr::V6(ip) => {
                let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
                if link_local && a.flags & libc::IFF_MULTICAST as u32 != 0 {
                    found.push(Interface::V6 {
                        name: a.name,
                        index: a.scope,
                    });
                }
            }
        }
    }
    found.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    found.dedup();
    found
}

/// The networks of the up, non-loopback interfaces (point-to-point ones,
/// such as a VPN's, included), but IPv6 link-local.
fn subnets() -> Vec<Subnet> {
    let mut found: Vec<Subnet> = (if_addrs().into_iter())
        .filter_map(|a| subnet_of(a.ip, a.prefix))
        .collect();
    found.sort_by_key(|s| (s.ip, s.prefix));
    found.dedup();
    found
}

/// The network of an interface address `ip`/`prefix`; none for IPv6
/// link-local. A single address (/32) in the shared address space
/// 100.64.0.0/10 is a mesh VPN's (Tailscale and Headscale give each node
/// one there, on a point-to-point interface): its network is that /10,
/// reached through the VPN only.
fn subnet_of(ip: IpAddr, prefix: u8) -> Option<Subnet> {
    match ip {
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => None,
        IpAddr::V4(v4) if prefix == 32 && v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64 => {
            Some(Subnet { ip, prefix: 10 })
        }
        _ => Some(Subnet { ip, prefix }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_addresses_and_ports_without_dns() {
        assert_eq!(
            resolve("10.0.0.2", 12304).unwrap(),
            ["10.0.0.2:12304".parse().unwrap()]
        );
        assert_eq!(
            resolve("10.0.0.2:99", 12304).unwrap(),
            ["10.0.0.2:99".parse().unwrap()]
        );
        assert_eq!(
            resolve("fd00::2", 12304).unwrap(),
            ["[fd00::2]:12304".parse().unwrap()]
        );
        assert_eq!(
            resolve("[fd00::2]:7", 12304).unwrap(),
            ["[fd00::2]:7".parse().unwrap()]
        );
        assert!(resolve("localhost:7", 1)
            .unwrap()
            .iter()
            .all(|a| a.port() == 7));
        assert!(resolve("localhost:notaport", 1).is_err());
    }

    #[test]
    fn peers_told_of_are_probed_only_on_this_hosts_networks_or_near_an_extra_host() {
        let targets = Targets {
            lan: Vec::new(),
            hosts: vec!["10.0.1.5:12304".parse().unwrap()],
            subnets: vec![
                Subnet {
                    ip: "10.0.0.7".parse().unwrap(),
                    prefix: 24,
                },
                Subnet {
                    ip: "fd00:1:2:3::7".parse().unwrap(),
                    prefix: 64,
                },
            ],
        };
        let may = |a: &str| targets.may_probe(a.parse().unwrap(), 12304);
        for yes in [
            "10.0.0.8:12304",
            "10.0.0.254:12304",
            "[::ffff:10.0.0.8]:12304",
            "[fd00:1:2:3::9]:12304",
            "10.0.1.5:12304",
            "10.0.1.77:12304",
        ] {
            assert!(may(yes), "{yes}");
        }
        for no in [
            "10.0.0.8:9999",
            "10.0.0.255:12304",
            "10.0.0.0:12304",
            "255.255.255.255:12304",
            "169.254.169.254:12304",
            "192.168.5.5:12304",
            "10.0.2.1:12304",
            "224.0.0.1:12304",
            "127.0.0.1:12304",
            "0.0.0.0:12304",
            "[fe80::1]:12304",
            "[ff02::1]:12304",
            "[fd00:1:2:4::9]:12304",
            "[::1]:12304",
        ] {
            assert!(!may(no), "{no}");
        }
        let point_to_point = Subnet {
            ip: "10.9.0.1".parse().unwrap(),
            prefix: 32,
        };
        assert!(point_to_point.contains("10.9.0.1".parse().unwrap()));
        assert!(!point_to_point.contains("10.9.0.2".parse().unwrap()));
        // A Tailscale address: the tailnet's 100.64.0.0/10.
        let tailnet = subnet_of("100.101.102.103".parse().unwrap(), 32).unwrap();
        assert!(tailnet.contains("100.64.5.6".parse().unwrap()));
        assert!(!tailnet.contains("100.128.0.1".parse().unwrap()));
        assert_eq!(subnet_of("fe80::1".parse().unwrap(), 64), None);
    }

    #[test]
    fn only_private_networks_are_broadcast_to() {
        assert!(is_private_v4(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(is_private_v4(Ipv4Addr::new(192, 168, 1, 1)));
        assert!(is_private_v4(Ipv4Addr::new(169, 254, 0, 1)));
        assert!(!is_private_v4(Ipv4Addr::new(8, 8, 8, 8)));
    }
}
