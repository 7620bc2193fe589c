//! Discovery: finding which peers hold a store path, and answering peers
//! who ask about ours.
//!
//! One thread owns the UDP socket. It answers peers' queries from the store
//! index (memory only: no process, no HTTP), keeps the peer table, and
//! routes the answers to this node's queries to the worker that asked, over
//! a per-query crossbeam channel. A worker asks with [`Discovery::ask`]: the
//! query is registered with the UDP thread first, then sent (from a clone
//! of the socket) to every target, so no answer can arrive unannounced.

mod peers;
mod targets;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::narinfo::HashPart;
use crate::store::Store;
use peers::PeerTable;
use targets::SharedTargets;
use wire::{Datagram, Message, NodeId};

/// How often a node says hello to the LAN, so that peers know it is there.
const HELLO_EVERY: Duration = Duration::from_secs(30);

/// The UDP thread's longest sleep: how often it prunes and says hello.
const TICK: Duration = Duration::from_millis(250);

/// After start, the time in which the peers' answers to our first hello
/// come back; until then nobody's silence means a miss.
const STARTUP: Duration = Duration::from_secs(2);

/// A peer that says it has a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The peer's HTTP address (with its scope, for IPv6 link-local).
    pub addr: SocketAddr,
    /// An original Peerix, whose routes are the `/local/…` ones.
    pub v1: bool,
}

/// What the UDP thread tells a worker about its query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Have(Found),
    /// Every peer that answers misses has said "not here", and no peer
    /// that is silent on a miss is about: no `Have` will come.
    AllMissed,
}

pub struct Settings {
    pub port: u16,
    pub broadcast: bool,
    pub extra_hosts: Vec<String>,
    pub timeout: Duration,
}

/// The handle workers ask through.
pub struct Discovery {
    node: NodeId,
    socket: UdpSocket,
    commands: Sender<Command>,
    targets: SharedTargets,
    next_id: AtomicU32,
    timeout: Duration,
    port: u16,
}

enum Command {
    Register {
        id: u32,
        hash: HashPart,
        answers: Sender<Answer>,
        deadline: Instant,
    },
    Status(Sender<Vec<String>>),
    Stop,
}

/// A query of ours waiting for answers.
struct Pending {
    hash: HashPart,
    answers: Sender<Answer>,
    deadline: Instant,
    /// Peers of ours that have not answered yet.
    waiting: Vec<NodeId>,
    /// Peers that said they have it (each is reported once, though it
    /// may answer on IPv4 and IPv6 alike).
    have: Vec<NodeId>,
    /// False when a miss cannot be known early (silent peers, or none known).
    can_miss_early: bool,
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ u64::from(std::process::id()) << 32;
    }
    u64::from_be_bytes(bytes)
}

/// Binds the UDP socket on every address (IPv6 with IPv4, else IPv4).
fn bind(port: u16) -> std::io::Result<UdpSocket> {
    UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).or_else(|_| UdpSocket::bind(("0.0.0.0", port)))
}

impl Discovery {
    /// Binds the UDP port and starts the UDP and targets threads.
    pub fn start(settings: Settings, store: Arc<Store>) -> std::io::Result<Arc<Discovery>> {
        let socket = bind(settings.port)?;
        socket.set_broadcast(true)?;
        socket.set_multicast_loop_v6(false).ok();
        let node = random_u64();
        let targets = targets::start(
            targets::Settings {
                port: settings.port,
                broadcast: settings.broadcast,
                extra_hosts: settings.extra_hosts,
            },
            socket.try_clone()?,
        )?;
        let (commands, commands_rx) = crossbeam_channel::unbounded();
        let discovery = Arc::new(Discovery {
            node,
            socket: socket.try_clone()?,
            commands,
            targets: targets.clone(),
            next_id: AtomicU32::new(random_u64() as u32),
            timeout: settings.timeout,
            port: settings.port,
        });
        let thread = UdpThread {
            node,
            port: settings.port,
            socket,
            store,
            targets,
            commands: commands_rx,
            peers: PeerTable::default(),
            pending: HashMap::new(),
            last_hello: None,
            started: Instant::now(),
        };
        std::thread::Builder::new()
            .name("discovery-udp".into())
            .spawn(move || thread.run())?;
        log::info!("discovery: node {node:016x} on UDP port {}", settings.port);
        Ok(discovery)
    }

    /// Asks the peers who has `hash`. Answers come on the returned channel
    /// until `AllMissed` or the discovery timeout; the caller stops
    /// listening whenever it likes.
    pub fn ask(&self, hash: &HashPart) -> Receiver<Answer> {
        let (answers, rx) = crossbeam_channel::unbounded();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        let registered = self.commands.send(Command::Register {
            id,
            hash: *hash,
            answers,
            deadline,
        });
        if registered.is_err() {
            return rx;
        }
        let v1 = Datagram::V1Request { id, hash: *hash }.encode();
        let v2 = Datagram::V2 {
            node: self.node,
            id,
            message: Message::Query { hash: *hash },
        }
        .encode();
        let targets = self.targets.read().map(|t| t.clone()).unwrap_or_default();
        for addr in targets.all() {
            for datagram in [&v2, &v1] {
                if let Err(e) = self.socket.send_to(datagram, addr) {
                    log::debug!("discovery: cannot send to {addr}: {e}");
                }
            }
        }
        // The UDP thread may have nobody to hear from: let it see the
        // registration now.
        self.wake();
        log::debug!("discovery: asked for {hash} (query {id})");
        rx
    }

    /// This node's id on the wire.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The configured discovery timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One line per known peer.
    pub fn peers(&self) -> Vec<String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.commands.send(Command::Status(tx)).is_err() {
            return Vec::new();
        }
        self.wake();
        rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
    }

    /// Says goodbye to the peers and stops the UDP thread.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
        self.wake();
    }

    /// Wakes the UDP thread from its receive with an empty datagram to
    /// itself, which it ignores.
    fn wake(&self) {
        let _ = self
            .socket
            .send_to(&[], (IpAddr::from(Ipv6Addr::LOCALHOST), self.port))
            .or_else(|_| {
                self.socket
                    .send_to(&[], (IpAddr::from([127, 0, 0, 1]), self.port))
            });
    }
}

struct UdpThread {
    node: NodeId,
    port: u16,
    socket: UdpSocket,
    store: Arc<Store>,
    targets: SharedTargets,
    commands: Receiver<Command>,
    peers: PeerTable,
    pending: HashMap<u32, Pending>,
    last_hello: Option<Instant>,
    started: Instant,
}

impl UdpThread {
    fn run(mut self) {
        if let Err(e) = self.socket.set_read_timeout(Some(TICK)) {
            log::error!("discovery: cannot set the UDP timeout: {e}");
        }
        let mut buf = [0u8; 2048];
        loop {
            let received = self.socket.recv_from(&mut buf);
            // Registrations first: the answer just received may be for one.
            while let Ok(command) = self.commands.try_recv() {
                match command {
                    Command::Register {
                        id,
                        hash,
                        answers,
                        deadline,
                    } => self.register(id, hash, answers, deadline),
                    Command::Status(reply) => {
                        let _ = reply.send(self.peers.describe());
                    }
                    Command::Stop => {
                        self.broadcast(Message::Bye);
                        log::debug!("discovery: stopped");
                        return;
                    }
                }
            }
            match received {
                Ok((len, from)) => self.handle(&buf[..len], from),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    log::debug!("discovery: receive failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            self.housekeeping();
        }
    }

    /// Takes a query of ours. A miss can be told early unless a peer that
    /// is silent on a miss may be about: an original Peerix heard lately,
    /// an extra host not known as ours, or anybody at all in the first
    /// moments after start, before the peers' hellos came back.
    fn register(&mut self, id: u32, hash: HashPart, answers: Sender<Answer>, deadline: Instant) {
        let waiting = self.peers.expected();
        let can_miss_early = !self.peers.has_v1()
            && !self.silent_extra_host()
            && (!waiting.is_empty() || self.started.elapsed() > STARTUP);
        if waiting.is_empty() && can_miss_early {
            let _ = answers.send(Answer::AllMissed);
        }
        self.pending.insert(
            id,
            Pending {
                hash,
                answers,
                deadline,
                waiting,
                have: Vec::new(),
                can_miss_early,
            },
        );
    }

    /// True when an `--extra-host` is not (yet) known as a node of ours: it
    /// may be an original Peerix, which answers only hits.
    fn silent_extra_host(&self) -> bool {
        let targets = self.targets.read().map(|t| t.clone()).unwrap_or_default();
        targets
            .hosts
            .iter()
            .any(|a| !self.peers.is_ours(a.ip().to_canonical()))
    }

    fn send(&self, datagram: &Datagram, to: SocketAddr) {
        if let Err(e) = self.socket.send_to(&datagram.encode(), to) {
            log::debug!("discovery: cannot send to {to}: {e}");
        }
    }

    fn broadcast(&self, message: Message) {
        let datagram = Datagram::V2 {
            node: self.node,
            id: 0,
            message,
        };
        let targets = self.targets.read().map(|t| t.clone()).unwrap_or_default();
        for addr in targets.all() {
            self.send(&datagram, *addr);
        }
    }

    fn v2(&self, id: u32, message: Message) -> Datagram {
        Datagram::V2 {
            node: self.node,
            id,
            message,
        }
    }

    /// One datagram from `from`. Nothing in it can make this fail or block.
    fn handle(&mut self, data: &[u8], from: SocketAddr) {
        let from = match from {
            SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
                SocketAddr::new(from.ip().to_canonical(), from.port())
            }
            other => other, // keeps an IPv6 scope id
        };
        if data.is_empty() {
            return; // a wake-up from `Discovery::wake`
        }
        let Some(datagram) = Datagram::parse(data) else {
            log::debug!(
                "discovery: dropped a malformed datagram of {} bytes from {from}",
                data.len()
            );
            return;
        };
        match datagram {
            Datagram::V1Request { id, hash } => {
                if self.pending.contains_key(&id) {
                    return; // our own query, heard back
                }
                self.peers.heard_v1(from.ip());
                // Nodes of ours asked in v2 as well and get that answer.
                if !self.peers.is_ours(from.ip()) && self.store.lookup(&hash).is_some() {
                    log::debug!("discovery: v1 {from} asks for {hash}: have it");
                    self.send(
                        &Datagram::V1Reply {
                            id,
                            port: self.port,
                            hash,
                        },
                        from,
                    );
                }
            }
            Datagram::V1Reply { id, port, hash } => {
                self.peers.heard_v1(from.ip());
                if self.peers.is_ours(from.ip()) {
                    return; // its v2 answer counts
                }
                if let Some(p) = self.pending.get(&id).filter(|p| p.hash == hash) {
                    let addr = SocketAddr::new(from.ip(), port);
                    let _ = p.answers.send(Answer::Have(Found { addr, v1: true }));
                }
            }
            Datagram::V2 { node, .. } if node == self.node => {}
            Datagram::V2 { node, id, message } => self.handle_v2(node, id, message, from),
        }
    }

    fn handle_v2(&mut self, node: NodeId, id: u32, message: Message, from: SocketAddr) {
        let port = match message {
            Message::Have { port, .. } | Message::Hello { port, .. } => Some(port),
            _ => None,
        };
        if matches!(message, Message::Bye) {
            log::info!("peer {node:016x} at {from} said goodbye");
            self.peers.forget(node);
            return;
        }
        if self.peers.heard(node, from, port) {
            log::info!("peer {node:016x} at {from} is here");
        }
        match message {
            Message::Query { hash } => {
                let reply = if self.store.lookup(&hash).is_some() {
                    Message::Have {
                        hash,
                        port: self.port,
                    }
                } else {
                    Message::NotHere { hash }
                };
                log::debug!("discovery: {from} asks for {hash}: {reply:?}");
                self.send(&self.v2(id, reply), from);
            }
            Message::Have { hash, port } => {
                if let Some(p) = self.pending.get_mut(&id).filter(|p| p.hash == hash) {
                    p.waiting.retain(|n| *n != node);
                    if !p.have.contains(&node) {
                        p.have.push(node);
                        let mut addr = from;
                        addr.set_port(port);
                        let _ = p.answers.send(Answer::Have(Found { addr, v1: false }));
                    }
                }
            }
            Message::NotHere { hash } => {
                if let Some(p) = self.pending.get_mut(&id).filter(|p| p.hash == hash) {
                    p.waiting.retain(|n| *n != node);
                    if p.waiting.is_empty() && p.can_miss_early {
                        let _ = p.answers.send(Answer::AllMissed);
                    }
                }
            }
            Message::Hello {
                want_reply: true, ..
            } => {
                self.send(
                    &self.v2(
                        0,
                        Message::Hello {
                            want_reply: false,
                            port: self.port,
                        },
                    ),
                    from,
                );
            }
            Message::Hello { .. } | Message::Bye => {}
        }
    }

    /// Drops expired queries (striking peers that never answered), forgets
    /// silent peers, and says hello when it is time.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                for node in p.waiting {
                    self.peers.strike(node);
                }
            }
        }
        if self.last_hello.is_none_or(|t| t.elapsed() >= HELLO_EVERY) {
            let first = self.last_hello.is_none();
            self.broadcast(Message::Hello {
                want_reply: first,
                port: self.port,
            });
            self.last_hello = Some(now);
            self.peers.expire();
        }
    }
}
