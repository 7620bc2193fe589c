//! The UDP thread: owns the socket's receiving side, answers peers'
//! queries from memory, keeps the peer table and the recent "have" answers,
//! and routes the answers to this node's queries to the workers that asked.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::exchange::{self, Exchange};
use super::hello::hello_period;
use super::outbox::{Outbox, Query};
use super::peer_summaries::{Routes, SharedRoutes, Summaries};
use super::peer_table::{PeerInfo, PeerTable};
use super::targets::SharedTargets;
use super::wire::{self, Datagram, Message, NodeId, PeerEntry};
use crate::base::bounded::Bounded;
use crate::base::logs::Throttle;
use crate::base::rate::RateLimit;
use crate::nix::narinfo::HashPart;
use crate::peer::network_key::{AuthError, NetworkKey};
use crate::peer::Peer;
use crate::store::Store;

/// The UDP thread's longest sleep: how often it prunes and says hello.
pub(super) const TICK: Duration = Duration::from_millis(250);

/// After start, the time in which the peers' answers to our first hello
/// come back; until then nobody's silence means a miss.
pub(super) const STARTUP: Duration = Duration::from_secs(2);

/// How long a peer's "have" is remembered: a query for the same path
/// (Nix asks for the NAR right after the narinfo) gets it at once, whether
/// or not the new answers make it through a busy network.
pub(super) const RECENT: Duration = Duration::from_secs(60);

/// What the UDP thread tells a worker about its query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Have(Peer),
    /// Every peer of ours has answered: a `Have` may still come from an
    /// original Peerix (silent on a miss) until `until`, then no more.
    Settled {
        until: Instant,
    },
}

pub(super) enum Command {
    Register {
        id: u32,
        hash: HashPart,
        answers: Sender<Answer>,
        sent: Instant,
        deadline: Instant,
        /// The peers it went to, when it went to chosen ones.
        waiting: Option<Vec<NodeId>>,
    },
    /// A peer's summary, fetched.
    Status(Sender<Vec<PeerInfo>>),
    Pullers(Sender<Vec<(NodeId, SocketAddr)>>),
    Stop,
}

/// A query of ours waiting for answers. It is kept until the full
/// timeout, even after its worker stopped listening, so that the answer
/// times of original Peerix nodes are learnt from late answers too.
pub(super) struct Pending {
    pub(super) hash: HashPart,
    pub(super) answers: Sender<Answer>,
    pub(super) sent: Instant,
    pub(super) deadline: Instant,
    /// Peers of ours that have not answered yet.
    pub(super) waiting: Vec<NodeId>,
    /// Peers that said they have it (each is reported once, though it
    /// may answer on IPv4 and IPv6 alike).
    pub(super) have: Vec<NodeId>,
    /// When nothing more is to be expected once every peer of ours has
    /// answered: later for peers that are silent on a miss.
    pub(super) settled_at: Instant,
}

pub(super) struct UdpThread {
    pub(super) outbox: Arc<Outbox>,
    pub(super) socket: UdpSocket,
    pub(super) store: Arc<Store>,
    pub(super) targets: SharedTargets,
    pub(super) commands: Receiver<Command>,
    /// Queries for the verdicts thread.
    pub(super) deferred: Sender<Query>,
    pub(super) key: Option<Arc<NetworkKey>>,
    pub(super) rate: RateLimit,
    pub(super) peers: PeerTable,
    pub(super) pending: HashMap<u32, Pending>,
    /// Recent "have" answers by path: who, and when.
    pub(super) recent: Bounded<HashPart, Vec<(Option<NodeId>, Peer, Instant)>>,
    pub(super) last_hello: Option<Instant>,
    /// The time from the last hello to the next (see `hello_period`).
    pub(super) hello_period: Duration,
    pub(super) started: Instant,
    pub(super) exchange: Exchange,
    pub(super) summaries: Summaries,
    /// Where queries go, for the workers.
    pub(super) routes: SharedRoutes,
    /// The routes must be published again.
    pub(super) routes_stale: bool,
    /// The version of this store's summary last told the peers.
    pub(super) announced: u64,
    pub(super) last_notice: Option<Instant>,
    pub(super) last_publish: Option<Instant>,
    /// Nodes that said goodbye, and when: datagrams of theirs still on
    /// the way (through a router, say) do not bring them back.
    pub(super) departed: Bounded<NodeId, Instant>,
    /// Whether to say `Pulls` beside every hello.
    pub(super) pulls: bool,
}

/// Datagrams of a node that said goodbye are ignored this long.
const DEPARTED_FOR: Duration = Duration::from_secs(10);

/// The routes are published again at most this often.
const PUBLISH_GAP: Duration = Duration::from_millis(20);

/// Peers without a summary asked by unicast, at most; past that queries
/// go the old way (a flood of made-up peers makes no query fan out).
const OTHERS_MAX: usize = 64;

/// Notices of this store's summary are this far apart at least: a build
/// adding paths one by one makes one notice for many.
const NOTICE_GAP: Duration = Duration::from_millis(100);

/// Queries of ours waiting for answers, at most (each is kept until its
/// timeout); beyond, a query is sent unregistered and its worker waits out
/// the timeout.
const PENDING_MAX: usize = 16_384;

/// "Have" answers remembered per path, at most.
const RECENT_PER_PATH: usize = 8;

static NEW_PEER: Throttle = Throttle::new();
static MALFORMED: Throttle = Throttle::new();
static FORGED: Throttle = Throttle::new();
static STALE: Throttle = Throttle::new();
static REPLAYED: Throttle = Throttle::new();
static TOO_FAST: Throttle = Throttle::new();
static NO_VERDICT: Throttle = Throttle::new();

impl UdpThread {
    pub(super) fn run(mut self) {
        if let Err(e) = self.socket.set_read_timeout(Some(TICK)) {
            log::error!("discovery: cannot set the UDP timeout: {e}");
        }
        let mut buf = [0u8; 2048];
        // The first hello goes out now, not a tick later: until peers hear
        // it, a miss of theirs settles without this node.
        self.housekeeping();
        let mut waiting = TICK;
        loop {
            // A notice held back by the gap goes out as soon as it may.
            let held_back = (self.store.summary_version() != self.announced)
                .then(|| {
                    self.last_notice
                        .map(|t| NOTICE_GAP.saturating_sub(t.elapsed()))
                })
                .flatten();
            let wait = held_back.map_or(TICK, |w| w.clamp(Duration::from_millis(1), TICK));
            if wait != waiting {
                let _ = self.socket.set_read_timeout(Some(wait));
                waiting = wait;
            }
            let received = self.socket.recv_from(&mut buf);
            // Registrations first: the answer just received may be for one.
            while let Ok(command) = self.commands.try_recv() {
                match command {
                    Command::Register {
                        id,
                        hash,
                        answers,
                        sent,
                        deadline,
                        waiting,
                    } => self.register(id, hash, answers, (sent, deadline), waiting),
                    Command::Status(reply) => {
                        let summaries = &self.summaries;
                        let lines = self.peers.snapshot(|node| summaries.describe(node));
                        let _ = reply.send(lines);
                    }
                    Command::Pullers(reply) => {
                        let _ = reply.send(self.peers.pullers());
                    }
                    Command::Stop => {
                        self.broadcast(Message::Bye);
                        log::debug!("discovery: stopped");
                        return;
                    }
                }
            }
            self.routes_stale |= self.summaries.take_fetched();
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

    /// Takes a query of ours. Once every peer of ours has answered, a miss
    /// is certain at once, unless a peer that is silent on a miss may be
    /// about: an original Peerix (waited for as long as its answers need,
    /// see `PeerTable::v1_wait`), an extra host not known as ours, or
    /// anybody at all in the first moments after start, before the peers'
    /// hellos came back (both waited for until the timeout).
    fn register(
        &mut self,
        id: u32,
        hash: HashPart,
        answers: Sender<Answer>,
        (sent, deadline): (Instant, Instant),
        chosen: Option<Vec<NodeId>>,
    ) {
        let settled_at;
        let waiting = match chosen {
            // Chosen from the summaries: no peer silent on a miss is asked.
            Some(chosen) => {
                settled_at = sent;
                chosen
            }
            None => {
                let waiting = self.peers.expected();
                let starting = waiting.is_empty() && self.started.elapsed() <= STARTUP;
                settled_at = match starting || self.silent_extra_host() {
                    true => deadline,
                    false => match self.peers.v1_wait(deadline - sent) {
                        Some(wait) => (sent + wait).min(deadline),
                        None => sent,
                    },
                };
                waiting
            }
        };
        // Peers that said "have" lately are offered first, at once.
        let mut have = Vec::new();
        for (node, found, _) in self.recent.get(&hash).into_iter().flatten() {
            let _ = answers.try_send(Answer::Have(*found));
            have.extend(node);
        }
        if waiting.is_empty() {
            let _ = answers.try_send(Answer::Settled { until: settled_at });
        }
        if self.pending.len() >= PENDING_MAX {
            return;
        }
        self.pending.insert(
            id,
            Pending {
                hash,
                answers,
                sent,
                deadline,
                waiting,
                have,
                settled_at,
            },
        );
    }

    /// Remembers that `node` (at `found`) has `hash`.
    fn remember(&mut self, hash: HashPart, node: Option<NodeId>, found: Peer) {
        let entries = self.recent.entry_or_insert_with(hash, Vec::new);
        entries.retain(|(n, f, _)| !(*n == node && f.addr.ip() == found.addr.ip()));
        entries.insert(0, (node, found, Instant::now()));
        entries.truncate(RECENT_PER_PATH);
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

    /// Sends `message` to every target and to the peers reached by
    /// unicast only.
    fn broadcast(&mut self, message: Message) {
        let datagram = self.outbox.v2(0, message);
        let targets = self.targets.read().map(|t| t.clone()).unwrap_or_default();
        let mesh = self.exchange.unicast(&self.peers);
        let mesh = mesh.iter().filter(|a| !targets.hosts.contains(a));
        for addr in targets.all().chain(mesh) {
            self.outbox.send(&datagram, *addr);
        }
    }

    /// Sends this node's peers to `to`, asking for its own when `want_reply`.
    fn send_lists(&self, to: SocketAddr, want_reply: bool) {
        let mut lists = exchange::lists(&self.peers);
        if lists.is_empty() {
            lists.push(Vec::new());
        }
        for peers in lists {
            let message = Message::Peers { want_reply, peers };
            self.outbox.send(&self.outbox.v2(0, message), to);
        }
    }

    /// True when `ip` is one of the extra hosts.
    fn is_extra_host(&self, ip: std::net::IpAddr) -> bool {
        let targets = self.targets.read().map(|t| t.clone()).unwrap_or_default();
        targets.hosts.iter().any(|a| a.ip() == ip)
    }

    /// True when the routes published ask the old way.
    fn legacy_published(&self) -> bool {
        self.routes.read().is_ok_and(|r| r.legacy)
    }

    /// Publishes where queries go now, for the workers: the peers whose
    /// current summary is held, and the live peers without one that
    /// answer (at most `OTHERS_MAX`; past that, and while no peer is
    /// known, an original Peerix or an unknown extra host is about, the
    /// old way).
    fn publish_routes(&mut self) {
        self.routes_stale = false;
        let summarised = self.summaries.summarised();
        let mut others = self.summaries.unsummarised();
        let mut known: std::collections::HashSet<NodeId> =
            (summarised.iter().map(|(n, _, _)| *n)).collect();
        known.extend(others.iter().map(|(n, _)| *n));
        for (node, addr) in self.peers.expected_addrs() {
            if known.insert(node) {
                others.push((node, addr));
            }
        }
        let nobody = summarised.is_empty() && others.is_empty();
        let starting = nobody && self.started.elapsed() <= STARTUP;
        let legacy = starting
            || nobody
            || others.len() > OTHERS_MAX
            || self.peers.v1_about()
            || self.silent_extra_host();
        let routes = Routes {
            legacy,
            mesh: self.exchange.unicast(&self.peers),
            summarised,
            others,
        };
        if let Ok(mut shared) = self.routes.write() {
            *shared = Arc::new(routes);
        }
    }

    /// Answers a peer's query: from memory when the share policy's verdict
    /// is known, else through the verdicts thread.
    fn answer(&mut self, query: Query) {
        if !self.rate.allow(query.from.ip()) {
            TOO_FAST.log(log::Level::Debug, || {
                format!("discovery: {} asks too fast; query dropped", query.from)
            });
            return;
        }
        match self.store.shareable_known(&query.hash) {
            Some(shared) => self.outbox.answer(&query, shared),
            None => {
                if self.deferred.try_send(query).is_err() {
                    NO_VERDICT.log(log::Level::Debug, || {
                        "discovery: too many queries wait for a verdict; one dropped".into()
                    });
                }
            }
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
            return; // a wake-up from `Outbox::wake`
        }
        let len = data.len();
        let malformed = |why: &str| {
            MALFORMED.log(log::Level::Debug, || {
                format!("discovery: dropped a malformed datagram of {len} bytes from {from}: {why}")
            })
        };
        let data = match &self.key {
            Some(key) => match key.open(data) {
                Ok(body) => body,
                Err(e) => {
                    let (throttle, level) = match e {
                        AuthError::Forged => (&FORGED, log::Level::Warn),
                        AuthError::Stale => (&STALE, log::Level::Warn),
                        AuthError::Replayed => (&REPLAYED, log::Level::Debug),
                        AuthError::Missing | AuthError::Malformed => {
                            (&MALFORMED, log::Level::Debug)
                        }
                    };
                    return throttle.log(level, || {
                        format!("discovery: dropped a datagram from {from}: {e}")
                    });
                }
            },
            None => data,
        };
        let Some(datagram) = Datagram::parse(data) else {
            return malformed("not a Peerix datagram");
        };
        match datagram {
            Datagram::V1Request { id, hash } => {
                if id & wire::OURS != 0 {
                    return; // ours heard back, or another node of ours (which asked in v2 too)
                }
                self.peers.heard_v1(from.ip());
                // Nodes of ours asked in v2 as well and get that answer.
                if !self.peers.is_ours(from.ip()) {
                    self.routes_stale |= !self.legacy_published();
                    self.answer(Query {
                        hash,
                        id,
                        from,
                        v1: true,
                    });
                }
            }
            Datagram::V1Reply { id, port, hash } => {
                if self.peers.is_ours(from.ip()) {
                    return; // its v2 answer counts
                }
                self.routes_stale |= !self.legacy_published();
                let Some(p) = self.pending.get(&id).filter(|p| p.hash == hash) else {
                    return self.peers.heard_v1(from.ip());
                };
                let found = Peer {
                    addr: SocketAddr::new(from.ip(), port),
                    v1: true,
                    node: None,
                };
                let _ = p.answers.try_send(Answer::Have(found));
                let took = p.sent.elapsed();
                self.peers.v1_answered(from.ip(), took);
                self.remember(hash, None, found);
            }
            Datagram::V2 { node, .. } if node == self.outbox.node => {}
            Datagram::V2 { node, id, message } => self.handle_v2(node, id, message, from),
        }
    }

    fn handle_v2(&mut self, node: NodeId, id: u32, message: Message, from: SocketAddr) {
        let port = match message {
            Message::Have { port, .. }
            | Message::Hello { port, .. }
            | Message::Notice { port, .. }
            | Message::Pulls { port } => Some(port),
            _ => None,
        };
        if matches!(message, Message::Bye) {
            NEW_PEER.log(log::Level::Info, || {
                format!("peer {node:016x} at {from} said goodbye")
            });
            self.peers.forget(node);
            self.departed.insert(node, Instant::now());
            self.summaries.forget(node);
            self.exchange.forget(node);
            self.routes_stale = true;
            for entries in self.recent.values_mut() {
                entries.retain(|(n, _, _)| *n != Some(node));
            }
            return;
        }
        if (self.departed.get(&node)).is_some_and(|at| at.elapsed() < DEPARTED_FOR) {
            return;
        }
        let new = self.peers.heard(node, from, port);
        let unicast = matches!(message, Message::Peers { .. }) || self.is_extra_host(from.ip());
        self.exchange.heard(node, from, unicast);
        if new {
            NEW_PEER.log(log::Level::Info, || {
                format!("peer {node:016x} at {from} is here")
            });
            self.routes_stale = true;
            if unicast && !matches!(message, Message::Peers { .. }) {
                self.send_lists(from, true);
            }
            self.tell_mesh(node, from);
            // A new peer learns at once that this node pulls, whether or
            // not it heard its hellos.
            if self.pulls && self.rate.allow(from.ip()) {
                let pulls = Message::Pulls {
                    port: self.outbox.port,
                };
                self.outbox.send(&self.outbox.v2(0, pulls), from);
            }
        }
        if matches!(message, Message::Hello { .. }) {
            self.peers.heard_hello(node, Instant::now());
        }
        match message {
            Message::Query { hash } => self.answer(Query {
                hash,
                id,
                from,
                v1: false,
            }),
            Message::Have { hash, port } => {
                let mut addr = from;
                addr.set_port(port);
                let found = Peer {
                    addr,
                    v1: false,
                    node: Some(node),
                };
                if let Some(p) = self.pending.get_mut(&id).filter(|p| p.hash == hash) {
                    if !p.have.contains(&node) {
                        p.have.push(node);
                        let _ = p.answers.try_send(Answer::Have(found));
                    }
                    p.answered(node);
                    self.remember(hash, Some(node), found);
                    self.summaries.hit(node);
                }
            }
            Message::NotHere { hash } => {
                if let Some(p) = self.pending.get_mut(&id).filter(|p| p.hash == hash) {
                    p.answered(node);
                }
            }
            Message::Hello {
                want_reply: true, ..
            } if self.rate.allow(from.ip()) => {
                let hello = Message::Hello {
                    want_reply: false,
                    port: self.outbox.port,
                };
                self.outbox.send(&self.outbox.v2(0, hello), from);
                self.send_notice(from);
                if self.pulls {
                    let pulls = Message::Pulls {
                        port: self.outbox.port,
                    };
                    self.outbox.send(&self.outbox.v2(0, pulls), from);
                }
            }
            Message::Notice { port, version } => {
                let mut http = from;
                http.set_port(port);
                let ttl = self.peers.ttl(node);
                self.summaries.announced(node, (from, http), version, ttl);
                self.routes_stale = true;
            }
            Message::Peers { want_reply, peers } => {
                let targets = self.targets.read().map(|t| t.clone()).unwrap_or_default();
                let me = (self.outbox.node, self.outbox.port);
                self.exchange.learn(&peers, me, &self.peers, &targets);
                if want_reply && self.rate.allow(from.ip()) {
                    self.send_lists(from, false);
                }
            }
            Message::Pulls { .. } => self.peers.heard_pulls(node),
            Message::Hello { .. } | Message::Bye => {}
        }
    }

    /// Tells the nodes reached by unicast of a peer just heard from `addr`.
    fn tell_mesh(&mut self, node: NodeId, addr: SocketAddr) {
        let entry = PeerEntry { node, addr, age: 0 };
        let message = Message::Peers {
            want_reply: false,
            peers: vec![entry],
        };
        let datagram = self.outbox.v2(0, message);
        for to in self.exchange.unicast(&self.peers) {
            if to != addr {
                self.outbox.send(&datagram, to);
            }
        }
    }

    /// Tells `to` this store's summary version.
    fn send_notice(&self, to: SocketAddr) {
        let notice = Message::Notice {
            port: self.outbox.port,
            version: self.store.summary_version(),
        };
        self.outbox.send(&self.outbox.v2(0, notice), to);
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
                    self.routes_stale = true;
                }
            }
        }
        for addr in self.exchange.due_probes() {
            self.send_lists(addr, true);
        }
        self.summaries.retry_failed();
        let version = self.store.summary_version();
        let hello_due = self
            .last_hello
            .is_none_or(|t| t.elapsed() >= self.hello_period);
        let notice_due =
            version != self.announced && self.last_notice.is_none_or(|t| t.elapsed() >= NOTICE_GAP);
        if notice_due || hello_due {
            self.announced = version;
            self.last_notice = Some(now);
            self.broadcast(Message::Notice {
                port: self.outbox.port,
                version,
            });
        }
        if hello_due {
            let first = self.last_hello.is_none();
            self.broadcast(Message::Hello {
                want_reply: first,
                port: self.outbox.port,
            });
            for addr in self.exchange.unicast(&self.peers) {
                self.send_lists(addr, true);
            }
            if self.pulls {
                self.broadcast(Message::Pulls {
                    port: self.outbox.port,
                });
            }
            if let Some(last) = self.last_hello {
                let live = self.peers.expected().len();
                self.hello_period = hello_period(live, now - last);
            }
            self.last_hello = Some(now);
            self.peers.expire(now);
            self.summaries.prune();
            self.routes_stale = true;
            self.recent.retain(|_, entries| {
                entries.retain(|(_, _, at)| at.elapsed() < RECENT);
                !entries.is_empty()
            });
            self.rate.forget_idle();
        }
        // At most every `PUBLISH_GAP`: a flood of made-up peers must not
        // make every datagram rebuild the routes.
        if self.routes_stale && self.last_publish.is_none_or(|t| t.elapsed() >= PUBLISH_GAP) {
            self.last_publish = Some(now);
            self.publish_routes();
        }
    }
}

impl Pending {
    /// A peer of ours answered (either way): once all have, nothing more
    /// is to be expected after `settled_at`.
    fn answered(&mut self, node: NodeId) {
        let before = self.waiting.len();
        self.waiting.retain(|n| *n != node);
        if before > 0 && self.waiting.is_empty() {
            let _ = self.answers.try_send(Answer::Settled {
                until: self.settled_at,
            });
        }
    }
}
