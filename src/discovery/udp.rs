//! The UDP thread: owns the socket's receiving side, answers peers'
//! queries from memory, keeps the peer table and the recent "have" answers,
//! and routes the answers to this node's queries to the workers that asked.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::peers::PeerTable;
use super::rate::RateLimit;
use super::targets::SharedTargets;
use super::wire::{Datagram, Message, NodeId};
use super::{
    Answer, Command, Found, Outbox, Pending, Query, HELLO_EVERY, RECENT, RECENT_MAX, STARTUP, TICK,
};
use crate::auth::NetworkKey;
use crate::narinfo::HashPart;
use crate::store::Store;

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
    pub(super) recent: HashMap<HashPart, Vec<(Option<NodeId>, Found, Instant)>>,
    pub(super) last_hello: Option<Instant>,
    pub(super) started: Instant,
}

impl UdpThread {
    pub(super) fn run(mut self) {
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
        // Peers that said "have" lately are offered first, at once.
        let mut have = Vec::new();
        for (node, found, _) in self.recent.get(&hash).into_iter().flatten() {
            let _ = answers.send(Answer::Have(*found));
            have.extend(node);
        }
        if waiting.is_empty() && can_miss_early && have.is_empty() {
            let _ = answers.send(Answer::AllMissed);
        }
        self.pending.insert(
            id,
            Pending {
                hash,
                answers,
                deadline,
                waiting,
                have,
                can_miss_early,
            },
        );
    }

    /// Remembers that `node` (at `found`) has `hash`.
    fn remember(&mut self, hash: HashPart, node: Option<NodeId>, found: Found) {
        if self.recent.len() >= RECENT_MAX && !self.recent.contains_key(&hash) {
            self.recent.clear();
        }
        let entries = self.recent.entry(hash).or_default();
        entries.retain(|(n, f, _)| !(*n == node && f.addr.ip() == found.addr.ip()));
        entries.push((node, found, Instant::now()));
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

    fn broadcast(&self, message: Message) {
        let datagram = self.outbox.v2(0, message);
        let targets = self.targets.read().map(|t| t.clone()).unwrap_or_default();
        for addr in targets.all() {
            self.outbox.send(&datagram, *addr);
        }
    }

    /// Answers a peer's query: from memory when the share policy's verdict
    /// is known, else through the verdicts thread.
    fn answer(&mut self, query: Query) {
        if !self.rate.allow(query.from.ip()) {
            log::debug!("discovery: {} asks too fast; query dropped", query.from);
            return;
        }
        match self.store.shareable_known(&query.hash) {
            Some(shared) => self.outbox.answer(&query, shared),
            None => {
                if self.deferred.try_send(query).is_err() {
                    log::debug!("discovery: too many queries wait for a verdict; one dropped");
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
        let drop = |why: &dyn std::fmt::Display| {
            log::debug!(
                "discovery: dropped a malformed datagram of {} bytes from {from}: {why}",
                data.len()
            );
        };
        let data = match &self.key {
            Some(key) => match key.open(data) {
                Ok(body) => body,
                Err(e) => return drop(&e),
            },
            None => data,
        };
        let Some(datagram) = Datagram::parse(data) else {
            return drop(&"not a Peerix datagram");
        };
        match datagram {
            Datagram::V1Request { id, hash } => {
                if self.pending.contains_key(&id) {
                    return; // our own query, heard back
                }
                self.peers.heard_v1(from.ip());
                // Nodes of ours asked in v2 as well and get that answer.
                if !self.peers.is_ours(from.ip()) {
                    self.answer(Query {
                        hash,
                        id,
                        from,
                        v1: true,
                    });
                }
            }
            Datagram::V1Reply { id, port, hash } => {
                self.peers.heard_v1(from.ip());
                if self.peers.is_ours(from.ip()) {
                    return; // its v2 answer counts
                }
                if let Some(p) = self.pending.get(&id).filter(|p| p.hash == hash) {
                    let found = Found {
                        addr: SocketAddr::new(from.ip(), port),
                        v1: true,
                    };
                    let _ = p.answers.send(Answer::Have(found));
                    self.remember(hash, None, found);
                }
            }
            Datagram::V2 { node, .. } if node == self.outbox.node => {}
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
            for entries in self.recent.values_mut() {
                entries.retain(|(n, _, _)| *n != Some(node));
            }
            return;
        }
        if self.peers.heard(node, from, port) {
            log::info!("peer {node:016x} at {from} is here");
        }
        match message {
            Message::Query { hash } => self.answer(Query {
                hash,
                id,
                from,
                v1: false,
            }),
            Message::Have { hash, port } => {
                if let Some(p) = self.pending.get_mut(&id).filter(|p| p.hash == hash) {
                    p.waiting.retain(|n| *n != node);
                    let mut addr = from;
                    addr.set_port(port);
                    let found = Found { addr, v1: false };
                    if !p.have.contains(&node) {
                        p.have.push(node);
                        let _ = p.answers.send(Answer::Have(found));
                    }
                    self.remember(hash, Some(node), found);
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
            } if self.rate.allow(from.ip()) => {
                let hello = Message::Hello {
                    want_reply: false,
                    port: self.outbox.port,
                };
                self.outbox.send(&self.outbox.v2(0, hello), from);
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
                port: self.outbox.port,
            });
            self.last_hello = Some(now);
            self.peers.expire();
            self.recent.retain(|_, entries| {
                entries.retain(|(_, _, at)| at.elapsed() < RECENT);
                !entries.is_empty()
            });
            self.rate.forget_idle();
        }
    }
}
