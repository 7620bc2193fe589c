//! Discovery: finding which peers hold a store path, and answering peers
//! who ask about ours.
//!
//! One thread owns the UDP socket. It answers peers' queries from the store
//! index (memory only: no process, no HTTP), keeps the peer table, and
//! routes the answers to this node's queries to the worker that asked, over
//! a per-query crossbeam channel. A worker asks with [`Discovery::ask`]: the
//! query is registered with the UDP thread first, then sent (from a clone
//! of the socket) to every target, so no answer can arrive unannounced.
//!
//! When the share policy has not judged a path yet (that takes the Nix
//! CLI), the UDP thread hands the query to the verdicts thread, which
//! answers it when it knows. With a network key every datagram of ours is
//! sealed and checked (`peer/network_key.rs`), and v1 is not spoken: it
//! cannot be authenticated. Each source gets at most `--answer-rate`
//! answers a second. A node never answers its own queries: ours carry its
//! random node id, and its v1 requests ids it remembers.
//!
//! A query with no "have" after a third of the timeout is sent once more
//! (datagrams get lost on a busy network). The timeout's default, 500 ms,
//! rides out Wi-Fi access points, which hold broadcast frames for sleeping
//! stations until the next DTIM beacon (often 100 to 300 ms: the
//! original's 50 ms lost real hits); peers answer from memory, so a loaded
//! machine still answers in milliseconds.
//!
//! Past one broadcast domain and past a few dozen nodes: nodes pass on the
//! peers they hear (`exchange.rs`), and keep each other's store summaries
//! (`peer_summaries.rs`), so that a query goes by unicast to the peers that
//! may hold the path, and a miss sends nothing at all.

mod exchange;
mod hello;
mod outbox;
mod peer_summaries;
mod peer_table;
mod targets;
mod udp;
pub mod wire;

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::base::rate::RateLimit;
use crate::nix::narinfo::HashPart;
use crate::peer::network_key::NetworkKey;
use crate::peer::Peer;
use crate::store::Store;
use exchange::Exchange;
pub use hello::hello_period;
use hello::HELLO_EVERY;
use outbox::{Outbox, Query};
use peer_summaries::{Routes, SharedRoutes, Summaries};
pub use peer_table::PeerInfo;
use peer_table::PeerTable;
use targets::SharedTargets;
use udp::{Answer, Command, UdpThread};
use wire::{Datagram, Message, NodeId};

/// Paths whose recent "have" answers are remembered, per generation.
const RECENT_MAX: usize = 4096;

/// Commands waiting for the UDP thread, at most.
const COMMANDS_MAX: usize = 4096;

/// Answers to one query waiting for its worker, at most.
const ANSWERS_MAX: usize = 64;

/// Receive buffer asked for the UDP socket, to ride out bursts of queries.
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// A query of this node's, being answered.
pub struct Asked<'a> {
    discovery: &'a Discovery,
    id: u32,
    hash: HashPart,
    answers: Receiver<Answer>,
    deadline: Instant,
    /// When to send the query once more, if no peer has said it has the
    /// path by then (a datagram lost on a busy network).
    resend_at: Option<Instant>,
    /// The peers it went to by unicast; `None` when it went everywhere.
    to: Option<Vec<SocketAddr>>,
}

impl Asked<'_> {
    /// The next peer that says it has the path; `None` once no more will
    /// (every peer of ours has answered, and original Peerix nodes had the
    /// time their answers need), or at the discovery timeout.
    pub fn next_have(&mut self) -> Option<Peer> {
        loop {
            let wait = self
                .resend_at
                .map_or(self.deadline, |r| r.min(self.deadline));
            match self.answers.recv_deadline(wait) {
                Ok(Answer::Have(found)) => {
                    self.resend_at = None;
                    return Some(found);
                }
                Ok(Answer::Settled { until }) => {
                    self.deadline = self.deadline.min(until);
                    self.resend_at = self.resend_at.filter(|r| *r < self.deadline);
                    if Instant::now() >= self.deadline {
                        return None;
                    }
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < self.deadline => {
                    if self.resend_at.take().is_some() {
                        log::debug!("discovery: no answer yet for {}; asking again", self.hash);
                        self.discovery
                            .send_query(self.id, &self.hash, self.to.as_deref());
                    }
                }
                Err(_) => return None,
            }
        }
    }
}

pub struct Settings {
    pub port: u16,
    pub broadcast: bool,
    pub extra_hosts: Vec<String>,
    pub timeout: Duration,
    pub network_key: Option<Arc<NetworkKey>>,
    /// Answers a second to one source; 0 for no limit.
    pub answer_rate: u32,
    /// Ask original Peerix nodes too, in their format.
    pub v1: bool,
    /// This node fetches from upstream caches for its peers: say so
    /// beside every hello.
    pub pulls: bool,
}

/// Queries waiting for the share policy's verdict, at most; more are
/// dropped (the asker's timeout covers it).
const DEFERRED_MAX: usize = 256;

/// The handle workers ask through.
pub struct Discovery {
    outbox: Arc<Outbox>,
    commands: Sender<Command>,
    targets: SharedTargets,
    routes: SharedRoutes,
    next_id: AtomicU32,
    timeout: Duration,
    /// Ask original Peerix nodes too (`--no-v1` turns it off).
    v1: bool,
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

/// Asks for a receive buffer that rides out bursts of queries (the kernel
/// caps it at `net.core.rmem_max` unless the daemon runs as root).
fn widen_receive_buffer(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = RECEIVE_BUFFER;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a socket we own, with a c_int value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                len,
            )
        };
        if rc == 0 {
            return;
        }
    }
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
        widen_receive_buffer(&socket);
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
        let outbox = Arc::new(Outbox {
            node,
            port: settings.port,
            socket: socket.try_clone()?,
            key: settings.network_key.clone(),
        });
        let (commands, commands_rx) = crossbeam_channel::bounded(COMMANDS_MAX);
        let routes: SharedRoutes = Arc::new(std::sync::RwLock::new(Arc::new(Routes {
            legacy: true,
            ..Routes::default()
        })));
        // A new version of this store's summary wakes the UDP thread, which
        // tells the peers at once.
        let waker = Arc::downgrade(&outbox);
        store.on_summary_change(Box::new(move || {
            if let Some(outbox) = waker.upgrade() {
                outbox.wake();
            }
        }));
        let summaries = Summaries::start(
            // Summaries are small: no compression asked for.
            crate::peer::client::PeerClient::new(
                settings.network_key.clone(),
                crate::peer::framed::Mode::Never,
            ),
            outbox.clone(),
            peer_table::MAX_PEERS,
        )?;
        let discovery = Arc::new(Discovery {
            outbox: outbox.clone(),
            commands,
            targets: targets.clone(),
            routes: routes.clone(),
            v1: settings.v1,
            next_id: AtomicU32::new(random_u64() as u32),
            timeout: settings.timeout,
        });
        let (deferred, deferred_rx) = crossbeam_channel::bounded::<Query>(DEFERRED_MAX);
        let thread = UdpThread {
            outbox: outbox.clone(),
            socket,
            store: store.clone(),
            targets,
            commands: commands_rx,
            deferred,
            key: settings.network_key,
            rate: RateLimit::new(settings.answer_rate),
            peers: PeerTable::default(),
            pending: HashMap::new(),
            recent: crate::base::bounded::Bounded::new(RECENT_MAX),
            last_hello: None,
            hello_period: HELLO_EVERY,
            started: Instant::now(),
            exchange: Exchange::default(),
            summaries,
            routes,
            routes_stale: true,
            announced: 0,
            last_notice: None,
            last_publish: None,
            departed: crate::base::bounded::Bounded::new(64),
            pulls: settings.pulls,
        };
        std::thread::Builder::new()
            .name("discovery-udp".into())
            .spawn(move || thread.run())?;
        std::thread::Builder::new()
            .name("discovery-verdicts".into())
            .spawn(move || {
                for query in deferred_rx {
                    match store.shareable(&query.hash) {
                        Ok(shared) => outbox.answer(&query, shared),
                        Err(e) => log::warn!("discovery: cannot judge {}: {e}", query.hash),
                    }
                }
            })?;
        log::info!("discovery: node {node:016x} on UDP port {}", settings.port);
        Ok(discovery)
    }

    /// Asks the peers who has `hash`; see [`Asked::next_have`]. With the
    /// peers' summaries the query goes by unicast to those that may hold
    /// the path (and to those whose summary is not known): when there are
    /// none, nothing is sent and the answer is a miss at once.
    pub fn ask(&self, hash: &HashPart) -> Asked<'_> {
        let (answers, rx) = crossbeam_channel::bounded(ANSWERS_MAX);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) | wire::OURS;
        let now = Instant::now();
        let routes = self.routes.read().map(|r| r.clone()).unwrap_or_default();
        let chosen = (!routes.legacy).then(|| routes.recipients(hash));
        let mut asked = Asked {
            discovery: self,
            id,
            hash: *hash,
            answers: rx,
            deadline: now + self.timeout,
            resend_at: Some(now + self.timeout / 3),
            to: None,
        };
        if chosen.as_ref().is_some_and(Vec::is_empty) {
            log::debug!("discovery: no peer may have {hash}");
            asked.deadline = now;
            asked.resend_at = None;
            // An original Peerix not heard yet may have it: it is asked as
            // before, and learnt when it answers. The query is registered
            // (nobody waited for) so that this node knows its own
            // broadcast when it hears it back, and learns the original's
            // pace from a late answer.
            if self.speaks_v1() {
                let registered = self.commands.try_send(Command::Register {
                    id,
                    hash: *hash,
                    answers,
                    sent: now,
                    deadline: now + self.timeout,
                    waiting: Some(Vec::new()),
                });
                if registered.is_ok() {
                    self.send_v1(id, hash);
                }
            }
            return asked;
        }
        let (waiting, to) = match chosen {
            Some(chosen) => {
                let (nodes, addrs) = chosen.into_iter().unzip();
                (Some(nodes), Some(addrs))
            }
            None => (None, None),
        };
        let registered = self.commands.try_send(Command::Register {
            id,
            hash: *hash,
            answers,
            sent: now,
            deadline: asked.deadline,
            waiting,
        });
        asked.to = to;
        if registered.is_ok() {
            self.send_query(id, hash, asked.to.as_deref());
            match &asked.to {
                Some(to) => log::debug!(
                    "discovery: asked {} peers that may have {hash} (query {id})",
                    to.len()
                ),
                None => log::debug!("discovery: asked for {hash} (query {id})"),
            }
        }
        asked
    }

    /// Sends query `id` for `hash` to the peers `to`, or to every target.
    fn send_query(&self, id: u32, hash: &HashPart, to: Option<&[SocketAddr]>) {
        let v2 = self.outbox.v2(id, Message::Query { hash: *hash });
        if let Some(to) = to {
            // The answers wake the UDP thread, which sees the registration
            // before them.
            for addr in to {
                self.outbox.send(&v2, *addr);
            }
            self.send_v1(id, hash);
            return;
        }
        // v1 cannot be authenticated: with a network key only ours is spoken.
        let v1 = self
            .speaks_v1()
            .then_some(Datagram::V1Request { id, hash: *hash });
        let targets = self.targets.read().map(|t| t.clone()).unwrap_or_default();
        let routes = self.routes.read().map(|r| r.clone()).unwrap_or_default();
        let mesh = routes.mesh.iter().filter(|a| !targets.hosts.contains(a));
        for addr in targets.all().chain(mesh) {
            for datagram in std::iter::once(&v2).chain(&v1) {
                self.outbox.send(datagram, *addr);
            }
        }
        // The UDP thread may have nobody to hear from: let it see the
        // registration now.
        self.outbox.wake();
    }

    /// True when queries go in the original's format too: no network key
    /// (v1 cannot be authenticated) and no `--no-v1`.
    fn speaks_v1(&self) -> bool {
        self.outbox.key.is_none() && self.v1
    }

    /// Sends query `id` for `hash` in the original's format to the LAN,
    /// unless the network has a key (v1 cannot be authenticated) or
    /// `--no-v1` says there is no original Peerix about.
    fn send_v1(&self, id: u32, hash: &HashPart) {
        if !self.speaks_v1() {
            return;
        }
        let targets = self.targets.read().map(|t| t.clone()).unwrap_or_default();
        let v1 = Datagram::V1Request { id, hash: *hash };
        for addr in targets.all() {
            self.outbox.send(&v1, *addr);
        }
    }

    /// This node's id on the wire.
    pub fn node(&self) -> NodeId {
        self.outbox.node
    }

    /// The configured discovery timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What is known of every peer.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let wait = Duration::from_secs(1);
        if self
            .commands
            .send_timeout(Command::Status(tx), wait)
            .is_err()
        {
            return Vec::new();
        }
        self.outbox.wake();
        rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
    }

    /// The live peers of ours that fetch from upstream caches for their
    /// peers, with their HTTP addresses; empty when the UDP thread does not
    /// answer within a second.
    pub fn pullers(&self) -> Vec<(NodeId, SocketAddr)> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let wait = Duration::from_secs(1);
        if (self.commands.send_timeout(Command::Pullers(tx), wait)).is_err() {
            return Vec::new();
        }
        self.outbox.wake();
        rx.recv_timeout(wait).unwrap_or_default()
    }

    /// Says goodbye to the peers and stops the UDP thread.
    pub fn stop(&self) {
        let _ = self
            .commands
            .send_timeout(Command::Stop, Duration::from_secs(1));
        self.outbox.wake();
    }
}
