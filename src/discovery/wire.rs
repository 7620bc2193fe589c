//! The discovery datagrams: the original Peerix's v1 format, spoken in both
//! directions, and our own versioned extension. Parsing never panics and
//! checks every length; anything else is `None`, and the UDP thread drops
//! it with a debug line. Every datagram goes to UDP port `--port` (12304
//! by default), the number of the HTTP port too.
//!
//! How the two are spoken together: a node sends each query in both
//! formats (v1 only without a network key and without `--no-v1`: one
//! broadcast datagram, which nodes of ours drop unanswered). It answers a
//! v1 request only when it has the path, as the original does, unless the
//! sender is known as one of ours, which gets the v2 answer. A path found
//! on an original Peerix is fetched from its `/local/` routes, on ours from
//! `/peer/`.
//!
//! v1 (no magic, no version; hashes are 32 ASCII nix32 characters):
//!
//! | datagram | bytes |
//! |---|---|
//! | request, 37 bytes | `0x00`, request id (u32 BE), hash |
//! | reply, 55 bytes | `0x01`, request id (u32 BE), HTTP port (u32 BE), `local/<hash>.narinfo` |
//!
//! Ours (v2), which v1 nodes ignore since it starts with neither 0 nor 1:
//!
//! | bytes | field |
//! |---|---|
//! | 0–1 | magic `PX` |
//! | 2 | version, 2 |
//! | 3 | kind: 1 query, 2 have, 3 not here, 4 hello, 5 bye, 6 pulls, 7 notice, 8 peers |
//! | 4–11 | sender's node id (u64 BE, random per process) |
//! | 12–15 | request id (u32 BE; 0 for hello and bye) |
//! | 16– | by kind: query and not here: hash (32); have: hash (32) and HTTP port (u16 BE); hello: flags (1; bit 0 asks for a hello back) and HTTP port (u16 BE); bye: nothing; pulls: HTTP port (u16 BE); notice: HTTP port (u16 BE) and store summary version (u64 BE); peers: flags (1; bit 0 asks for the receiver's peers back), a count (1, at most 32), then per peer its node id (u64 BE), address (16, IPv4 as `::ffff:a.b.c.d`), UDP port (u16 BE) and seconds since it was last heard (u16 BE) |
//!
//! A v1 request of ours has the top bit of its id set ([`OURS`]): the
//! original numbers its requests with a per-process counter from 0, which
//! never gets there. A node of ours may speak v1 from an address its
//! peers never heard it use in v2 (IPv6 multicast leaves from the
//! link-local address), and must not be taken there for an original
//! Peerix, nor answered in v1 for what it asked in v2.
//!
//! Every kind has exactly one length (48, 50, 48, 19, 16, 18, 26 bytes;
//! peers 18 + 28 per peer).
//!
//! `pulls` goes out beside every hello of a node with upstream caches
//! (`--upstream`), every hello it answers, and to each peer it hears for
//! the first time: it may be asked for paths it fetches from them
//! (`src/pull/`). Nodes before it drop the unknown kind, as every node
//! drops what it cannot parse, so their hellos and ours are unchanged; so
//! do nodes before notices and peer lists (store summaries and peer
//! exchange), which are then asked every query by unicast.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::nix::narinfo::HashPart;
pub use crate::peer::NodeId;

pub const MAGIC: &[u8; 2] = b"PX";
pub const VERSION: u8 = 2;

/// The bit that marks the request ids of ours (see the module doc).
pub const OURS: u32 = 1 << 31;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// v1: who has this hash?
    V1Request { id: u32, hash: HashPart },
    /// v1: I have it; fetch `http://<sender>:<port>/local/<hash>.narinfo`.
    V1Reply { id: u32, port: u16, hash: HashPart },
    /// Ours; `node` is the sender.
    V2 {
        node: NodeId,
        id: u32,
        message: Message,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Query {
        hash: HashPart,
    },
    Have {
        hash: HashPart,
        port: u16,
    },
    NotHere {
        hash: HashPart,
    },
    Hello {
        want_reply: bool,
        port: u16,
    },
    Bye,
    /// The sender's store summary is now at `version` (`store/summary.rs`);
    /// fetch it from its HTTP `port`.
    Notice {
        port: u16,
        version: u64,
    },
    /// Peers the sender heard from itself lately.
    Peers {
        want_reply: bool,
        peers: Vec<PeerEntry>,
    },
    /// The sender fetches from upstream caches for its peers.
    Pulls {
        port: u16,
    },
}

/// One peer in a `Peers` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    pub node: NodeId,
    /// Where its datagrams come from (its UDP port).
    pub addr: SocketAddr,
    /// Seconds since the sender last heard it.
    pub age: u16,
}

/// Peers in one `Peers` message, at most (938 bytes, under any MTU with
/// the network key's trailer).
pub const PEERS_MAX: usize = 32;

const PEER_ENTRY: usize = 28;

const HEADER: usize = 16;

impl Datagram {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Datagram::V1Request { id, hash } => {
                out.push(0);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(hash.as_str().as_bytes());
            }
            Datagram::V1Reply { id, port, hash } => {
                out.push(1);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&u32::from(*port).to_be_bytes());
                out.extend_from_slice(format!("local/{hash}.narinfo").as_bytes());
            }
            Datagram::V2 { node, id, message } => {
                let kind = match message {
                    Message::Query { .. } => 1,
                    Message::Have { .. } => 2,
                    Message::NotHere { .. } => 3,
                    Message::Hello { .. } => 4,
                    Message::Bye => 5,
                    Message::Pulls { .. } => 6,
                    Message::Notice { .. } => 7,
                    Message::Peers { .. } => 8,
                };
                out.extend_from_slice(MAGIC);
                out.extend_from_slice(&[VERSION, kind]);
                out.extend_from_slice(&node.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
                match message {
                    Message::Query { hash } | Message::NotHere { hash } => {
                        out.extend_from_slice(hash.as_str().as_bytes())
                    }
                    Message::Have { hash, port } => {
                        out.extend_from_slice(hash.as_str().as_bytes());
                        out.extend_from_slice(&port.to_be_bytes());
                    }
                    Message::Pulls { port } => out.extend_from_slice(&port.to_be_bytes()),
                    Message::Hello { want_reply, port } => {
                        out.push(u8::from(*want_reply));
                        out.extend_from_slice(&port.to_be_bytes());
                    }
                    Message::Bye => {}
                    Message::Notice { port, version } => {
                        out.extend_from_slice(&port.to_be_bytes());
                        out.extend_from_slice(&version.to_be_bytes());
                    }
                    Message::Peers { want_reply, peers } => {
                        let peers = &peers[..peers.len().min(PEERS_MAX)];
                        out.push(u8::from(*want_reply));
                        out.push(peers.len() as u8);
                        for p in peers {
                            let ip = match p.addr.ip() {
                                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                                IpAddr::V6(v6) => v6,
                            };
                            out.extend_from_slice(&p.node.to_be_bytes());
                            out.extend_from_slice(&ip.octets());
                            out.extend_from_slice(&p.addr.port().to_be_bytes());
                            out.extend_from_slice(&p.age.to_be_bytes());
                        }
                    }
                }
            }
        }
        out
    }

    /// Parses a datagram; `None` for anything malformed or foreign.
    pub fn parse(data: &[u8]) -> Option<Datagram> {
        let u32_at = |i: usize| Some(u32::from_be_bytes(data.get(i..i + 4)?.try_into().ok()?));
        let hash_at = |i: usize| HashPart::parse(std::str::from_utf8(data.get(i..i + 32)?).ok()?);
        match data.first()? {
            0 if data.len() == 37 => Some(Datagram::V1Request {
                id: u32_at(1)?,
                hash: hash_at(5)?,
            }),
            1 if data.len() == 55 => {
                let hash = HashPart::parse(
                    std::str::from_utf8(&data[9..])
                        .ok()?
                        .strip_prefix("local/")?
                        .strip_suffix(".narinfo")?,
                )?;
                Some(Datagram::V1Reply {
                    id: u32_at(1)?,
                    port: u16::try_from(u32_at(5)?).ok().filter(|&p| p != 0)?,
                    hash,
                })
            }
            b'P' if data.len() >= HEADER && &data[..2] == MAGIC && data[2] == VERSION => {
                let node = u64::from_be_bytes(data[4..12].try_into().ok()?);
                let id = u32_at(12)?;
                let port_at = |i: usize| {
                    let port = u16::from_be_bytes(data.get(i..i + 2)?.try_into().ok()?);
                    (port != 0).then_some(port)
                };
                let message = match (data[3], data.len()) {
                    (1, 48) => Message::Query { hash: hash_at(16)? },
                    (2, 50) => Message::Have {
                        hash: hash_at(16)?,
                        port: port_at(48)?,
                    },
                    (3, 48) => Message::NotHere { hash: hash_at(16)? },
                    (4, 19) if data[16] <= 1 => Message::Hello {
                        want_reply: data[16] == 1,
                        port: port_at(17)?,
                    },
                    (5, 16) => Message::Bye,
                    (6, 18) => Message::Pulls { port: port_at(16)? },
                    (7, 26) => Message::Notice {
                        port: port_at(16)?,
                        version: u64::from_be_bytes(data[18..26].try_into().ok()?),
                    },
                    (8, len) if len >= 18 && data[16] <= 1 => {
                        let count = usize::from(data[17]);
                        if count > PEERS_MAX || len != 18 + count * PEER_ENTRY {
                            return None;
                        }
                        let peers = (data[18..].chunks_exact(PEER_ENTRY))
                            .map(parse_peer)
                            .collect::<Option<Vec<_>>>()?;
                        Message::Peers {
                            want_reply: data[16] == 1,
                            peers,
                        }
                    }
                    _ => return None,
                };
                Some(Datagram::V2 { node, id, message })
            }
            _ => None,
        }
    }
}

/// One entry of a `Peers` message; `None` for a zero port.
fn parse_peer(entry: &[u8]) -> Option<PeerEntry> {
    let node = u64::from_be_bytes(entry[0..8].try_into().ok()?);
    let octets: [u8; 16] = entry[8..24].try_into().ok()?;
    let ip = Ipv6Addr::from(octets);
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    let port = u16::from_be_bytes(entry[24..26].try_into().ok()?);
    let age = u16::from_be_bytes(entry[26..28].try_into().ok()?);
    (port != 0).then_some(PeerEntry {
        node,
        addr: SocketAddr::new(ip, port),
        age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> HashPart {
        HashPart::parse("awrccy8w2v4v74m9ipglpniq94nkh3x4").unwrap()
    }

    #[test]
    fn v1_matches_the_documented_bytes() {
        let request = Datagram::V1Request {
            id: 0x01020304,
            hash: hash(),
        };
        let bytes = request.encode();
        assert_eq!(bytes.len(), 37);
        assert_eq!(&bytes[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(&bytes[5..], b"awrccy8w2v4v74m9ipglpniq94nkh3x4");
        assert_eq!(Datagram::parse(&bytes), Some(request));

        let reply = Datagram::V1Reply {
            id: 7,
            port: 12304,
            hash: hash(),
        };
        let bytes = reply.encode();
        assert_eq!(bytes.len(), 55);
        assert_eq!(&bytes[..9], &[1, 0, 0, 0, 7, 0, 0, 0x30, 0x10]);
        assert_eq!(
            &bytes[9..],
            b"local/awrccy8w2v4v74m9ipglpniq94nkh3x4.narinfo"
        );
        assert_eq!(Datagram::parse(&bytes), Some(reply));
    }

    #[test]
    fn v2_round_trips_with_exact_lengths() {
        let messages = [
            (Message::Query { hash: hash() }, 48),
            (
                Message::Have {
                    hash: hash(),
                    port: 12304,
                },
                50,
            ),
            (Message::NotHere { hash: hash() }, 48),
            (
                Message::Hello {
                    want_reply: true,
                    port: 1,
                },
                19,
            ),
            (Message::Bye, 16),
            (Message::Pulls { port: 12304 }, 18),
            (
                Message::Notice {
                    port: 12304,
                    version: 1 << 40,
                },
                26,
            ),
            (
                Message::Peers {
                    want_reply: true,
                    peers: vec![],
                },
                18,
            ),
            (
                Message::Peers {
                    want_reply: false,
                    peers: vec![
                        PeerEntry {
                            node: 9,
                            addr: "10.1.2.3:12304".parse().unwrap(),
                            age: 3,
                        },
                        PeerEntry {
                            node: 10,
                            addr: "[fd00::7]:99".parse().unwrap(),
                            age: 0,
                        },
                    ],
                },
                18 + 2 * 28,
            ),
        ];
        for (message, len) in messages {
            let datagram = Datagram::V2 {
                node: 0xdead_beef_0000_0001,
                id: 42,
                message,
            };
            let bytes = datagram.encode();
            assert_eq!(bytes.len(), len);
            assert_eq!(bytes[0], b'P', "v1 nodes must not take it for 0 or 1");
            assert_eq!(Datagram::parse(&bytes), Some(datagram.clone()));
            // One byte more or less is refused.
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Datagram::parse(&longer), None);
            assert_eq!(Datagram::parse(&bytes[..len - 1]), None);
        }
    }

    #[test]
    fn foreign_and_broken_datagrams_are_refused() {
        let good = Datagram::V2 {
            node: 1,
            id: 1,
            message: Message::Query { hash: hash() },
        }
        .encode();
        let mut other_version = good.clone();
        other_version[2] = 3;
        let mut bad_kind = good.clone();
        bad_kind[3] = 9;
        let mut bad_hash = good.clone();
        bad_hash[20] = b'e';
        let mut v1_bad_url = Datagram::V1Reply {
            id: 1,
            port: 1,
            hash: hash(),
        }
        .encode();
        v1_bad_url[9] = b'L';
        let mut v1_port_zero = v1_bad_url.clone();
        v1_port_zero[9] = b'l';
        v1_port_zero[5..9].copy_from_slice(&[0, 0, 0, 0]);
        let mut v1_big_port = v1_port_zero.clone();
        v1_big_port[5..9].copy_from_slice(&[0, 1, 0, 0]);
        for data in [
            &[][..],
            &[0],
            &[1; 55],
            &[0xff; 48],
            &other_version,
            &bad_kind,
            &bad_hash,
            &v1_bad_url,
            &v1_port_zero,
            &v1_big_port,
            &good[..20],
        ] {
            assert_eq!(Datagram::parse(data), None, "{data:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: every length up to 64, many times.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 65) as usize;
            let mut data: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if let Some(b) = data.first_mut() {
                *b = [0, 1, b'P', *b][(x % 4) as usize];
            }
            let _ = Datagram::parse(&data);
        }
    }
}
