//! The HTTP side of the node. One thread accepts connections; each
//! connection gets a thread that reads its requests (tiny_http, as patched
//! in src/vendor) one at a time and hands each over a bounded channel to a
//! fixed pool of workers, which route it; the reply comes back to the
//! connection's thread, which writes it; the next request of that
//! connection is read only once this one is answered. A client that reads
//! its reply slowly (a NAR at 64 bytes a second) so holds its own
//! connection's thread and no worker: the workers stay free for others,
//! and the NARs being written at once are bounded by the connections (the
//! caps below), as the workers bounded them before.
//!
//! The local Nix (loopback clients) and peers (everyone else) have pools,
//! queues and connection caps of their own, so that no amount of peer
//! traffic keeps the local Nix waiting. Nothing grows with what a client
//! sends: a connection holds one request at a time and no request body is
//! taken (tiny_http refuses a head announcing one), the queues and the
//! number of connections are bounded (by the file descriptor limit too),
//! a peer finding its queue full gets 503 at once (nodes of ours then ask
//! another peer), and the network key is checked before a request is
//! queued. Connections are also capped per source (`rate::source_of`: an
//! IPv4 address, an IPv6 link-local address, another IPv6 one's /64) among
//! peers, and when a kind's connections are all taken its
//! idlest one is closed to make room: one stranger holds only its share.
//! Requests over loopback must name loopback in their `Host` (or none), so
//! that a web page cannot read the node by DNS rebinding (`request.rs`).
//! A worker that panics is replaced. Running out of file descriptors makes
//! new connections wait in the kernel's backlog until some are free, with a
//! log line a second.

mod app;
mod local_routes;
mod reply;
mod request;
mod status;
mod store_routes;

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tiny_http::{Limits, Method, Request};

use crate::base::logs::Throttle;
use crate::peer::stripe::Stripe;
pub use app::{range_skips, About, App};
use reply::Reply;
use request::{names_loopback, Client, Incoming};

/// What one connection may take (tiny_http as patched in src/vendor): an
/// idle client is dropped after `read_timeout`, a client that stops reading
/// a body after `write_timeout`; a request head is at most 16 KiB and must
/// come within 10 s of its first byte.
const LIMITS: Limits = Limits {
    read_timeout: Some(Duration::from_secs(30)),
    write_timeout: Some(Duration::from_secs(60)),
    max_head_bytes: 16 * 1024,
    head_timeout: Some(Duration::from_secs(10)),
};

/// Connections of one kind of client, at most, and never more than a
/// quarter of the file descriptors each (the rest are for Nix and peers).
const MAX_CONNECTIONS: usize = 256;

/// Connections from one source (`rate::source_of`) among the peers, at
/// most, and never more than half the peers' connections: a node
/// of ours fetches at most as many NARs at once as its local Nix asks for
/// (25 connections).
const MAX_PER_SOURCE: usize = 32;

/// How long a request of the local Nix waits for a worker before it gets
/// 503.
const LOCAL_QUEUE_WAIT: Duration = Duration::from_secs(30);

/// Stack of a connection thread (address space; it only parses request
/// heads and touches a few pages). Not smaller: glibc keeps the stacks of
/// ended threads, up to 40 MiB of them, each with the pages at its top
/// still resident; of 1 MiB stacks it keeps few, so that a burst of
/// connections leaves little behind in an idle daemon.
const CONNECTION_STACK: usize = 1024 * 1024;

static REFUSED: Throttle = Throttle::new();
static EVICTED: Throttle = Throttle::new();
static PANICKED: Throttle = Throttle::new();
static BUSY: Throttle = Throttle::new();
static NO_FDS: Throttle = Throttle::new();
static ACCEPT_FAILED: Throttle = Throttle::new();
static FOREIGN_HOST: Throttle = Throttle::new();

/// One kind of client's share: its workers' queue and its connections.
struct Pool {
    kind: &'static str,
    jobs: Sender<Job>,
    slots: Mutex<Slots>,
    max_connections: usize,
    /// Connections one source may hold; `None` for the local Nix.
    per_source: Option<usize>,
}

/// The open connections of one kind of client. Entries exist only while
/// their connections do, so both maps are bounded by the pool's cap.
#[derive(Default)]
struct Slots {
    next_id: u64,
    open: HashMap<u64, Slot>,
    per_source: HashMap<IpAddr, usize>,
}

struct Slot {
    source: IpAddr,
    /// Shared with the connection's thread: shutting it down ends that.
    stream: Arc<TcpStream>,
    /// A request of it is being answered.
    busy: bool,
    /// When its last request was answered (or it was opened).
    idle_since: Instant,
}

/// Why a connection got no slot.
enum NoSlot {
    /// Its source holds its share.
    Source(usize),
    /// Every connection of its kind is answering a request.
    Full,
}

/// A request for a worker: what the routes need of it, and where its
/// reply goes (back to its connection's thread, which writes it).
struct Job {
    asked: Asked,
    reply: Sender<Reply>,
}

/// A request as the routes need it, read from the request on its
/// connection's thread.
struct Asked {
    method: &'static str,
    path: String,
    from: Client,
    range: Option<u64>,
    framed: bool,
    stripe: Option<Stripe>,
    remote: Option<SocketAddr>,
    /// `X-Peerix-Narinfo` (`pull::PROOF_HEADER`), on pull requests.
    proof: Option<String>,
    json: bool,
}

impl Asked {
    fn of(request: &Request, from: Client) -> Asked {
        Asked {
            method: match request.method() {
                Method::Head => "HEAD",
                _ => "GET",
            },
            path: path_of(request).to_owned(),
            from,
            range: reply::range(request),
            framed: reply::asks_framed(request),
            stripe: reply::stripe(request),
            remote: request.remote_addr().copied(),
            proof: reply::header_value(request, crate::pull::PROOF_HEADER),
            json: reply::accepts_json(request),
        }
    }

    fn incoming(&self) -> Incoming<'_> {
        Incoming {
            path: &self.path,
            head: self.method == "HEAD",
            from: self.from,
            range: self.range,
            framed: self.framed,
            stripe: self.stripe,
            peer: self.remote.map(|a| a.ip()),
            proof: self.proof.clone(),
            json: self.json,
        }
    }
}

/// What the accepting and connection threads share.
struct Front {
    app: Arc<App>,
    local: Pool,
    peers: Pool,
    /// Never sent on: dropped when the daemon stops, which every body being
    /// streamed and every worker sees.
    stop: Receiver<()>,
    /// This machine's host name, a name of its loopback (`request.rs`).
    hostname: String,
}

/// The running listener and workers.
pub struct Http {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

/// Binds the first address of `addrs` that works and starts serving.
pub fn start(addrs: &[IpAddr], port: u16, workers: usize, app: Arc<App>) -> Result<Http, String> {
    let mut errors = Vec::new();
    let listener = addrs
        .iter()
        .find_map(|&ip| match TcpListener::bind((ip, port)) {
            Ok(l) => Some(l),
            Err(e) => {
                errors.push(format!("{}: {e}", SocketAddr::new(ip, port)));
                None
            }
        })
        .ok_or_else(|| format!("cannot listen on {}", errors.join(", ")))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let max_connections = MAX_CONNECTIONS.min(fd_limit() / 4).max(4);
    let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
    let (local_jobs, local_rx) = crossbeam_channel::bounded(workers * 2);
    let (peer_jobs, peers_rx) = crossbeam_channel::bounded(workers * 2);
    let pool = |kind, jobs, per_source| Pool {
        kind,
        jobs,
        slots: Mutex::new(Slots::default()),
        max_connections,
        per_source,
    };
    let per_source = MAX_PER_SOURCE.min(max_connections / 2).max(1);
    let front = Arc::new(Front {
        app: app.clone(),
        local: pool("the local Nix", local_jobs, None),
        peers: pool("peers", peer_jobs, Some(per_source)),
        stop: stop.clone(),
        hostname: hostname(),
    });
    let stopping = Arc::new(AtomicBool::new(false));
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(f)
            .map_err(|e| format!("cannot start a thread: {e}"))
    };
    let mut threads = vec![spawn(
        "http-accept".into(),
        Box::new({
            let (front, stopping) = (front.clone(), stopping.clone());
            move || accept(listener, front, stopping)
        }),
    )?];
    for (kind, jobs) in [("local", local_rx), ("peers", peers_rx)] {
        for i in 0..workers {
            let (jobs, app, stop) = (jobs.clone(), app.clone(), stop.clone());
            let name = format!("http-{kind}-{i}");
            threads.push(spawn(
                name.clone(),
                Box::new(move || supervise(&name, || work(&app, &jobs, &stop))),
            )?);
        }
    }
    log::debug!(
        "http: at most {max_connections} connections from peers ({per_source} from one source), \
         and as many local ones"
    );
    Ok(Http {
        addr,
        stopping,
        stop: stop_tx,
        threads,
    })
}

impl Http {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends the bodies being streamed (their connections
    /// are cut and their Nix children killed and reaped) and waits for the
    /// workers, at most a few seconds.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Relaxed);
        drop(self.stop);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for thread in self.threads {
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// This machine's host name; empty when it cannot be had.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The soft limit on open file descriptors.
fn fd_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit we own.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX),
        _ => 1024,
    }
}

/// The accepting thread: a connection thread for each client while there
/// is room for its kind; waits and tries again when out of descriptors.
fn accept(listener: TcpListener, front: Arc<Front>, stopping: Arc<AtomicBool>) {
    while !stopping.load(Ordering::Relaxed) {
        let mut ready = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a 200 ms wait to notice a stop.
        if unsafe { libc::poll(&mut ready, 1, 200) } <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, addr)) => connection(&front, stream, addr),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                NO_FDS.log(log::Level::Warn, || {
                    format!("http: cannot accept a connection ({e}); trying again as descriptors free up")
                });
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                ACCEPT_FAILED.log(log::Level::Warn, || format!("http: accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Starts the thread of one accepted connection, if its kind of client
/// has room for one more (made by closing its idlest connection if need
/// be) and its source has not used up its share.
fn connection(front: &Arc<Front>, stream: TcpStream, addr: SocketAddr) {
    // A reply's head and body are separate writes: without this, Nagle's
    // algorithm holds the body until the client's delayed ACK (40 ms), for
    // every NAR larger than the head's buffer.
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let from = Client::of(addr);
    let pool = front.pool(from);
    let id = match pool.admit(addr.ip(), &stream) {
        Ok(id) => id,
        Err(why) => {
            REFUSED.log(log::Level::Warn, || match why {
                NoSlot::Source(n) => {
                    format!(
                        "http: {n} connections from {} are open: refused one more",
                        addr.ip()
                    )
                }
                NoSlot::Full => format!(
                    "http: {} connections from {} are open and busy: refused one from {addr}",
                    pool.max_connections, pool.kind
                ),
            });
            return;
        }
    };
    // Gives the slot back however the thread ends (or if it never starts).
    let slot = SlotGuard {
        front: front.clone(),
        from,
        id,
    };
    let thread = std::thread::Builder::new()
        .name("http-connection".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            let front = &slot.front;
            let pool = front.pool(from);
            tiny_http::serve_connection(
                stream,
                &LIMITS,
                |request| {
                    pool.mark(id, true);
                    front.hand(request, from)
                },
                || pool.mark(id, false),
            );
        });
    if let Err(e) = thread {
        NO_FDS.log(log::Level::Warn, || {
            format!("http: cannot start a thread for {addr}: {e}")
        });
    }
}

/// A connection's slot in its pool, given back when dropped.
struct SlotGuard {
    front: Arc<Front>,
    from: Client,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.front.pool(self.from).release(self.id);
    }
}

impl Pool {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`: refused when its source holds its
    /// share; when the pool is full, its idlest connection (the one not
    /// answering a request whose last request ended longest ago) is shut
    /// down to make room, and only when every one is busy is it refused.
    fn admit(&self, ip: IpAddr, stream: &Arc<TcpStream>) -> Result<u64, NoSlot> {
        let source = crate::base::rate::source_of(ip);
        let mut slots = self.slots();
        let held = slots.per_source.get(&source).copied().unwrap_or(0);
        if self.per_source.is_some_and(|share| held >= share) {
            return Err(NoSlot::Source(held));
        }
        if slots.open.len() >= self.max_connections {
            let idlest = (slots.open.iter())
                .filter(|(_, slot)| !slot.busy)
                .min_by_key(|(_, slot)| slot.idle_since)
                .map(|(&id, _)| id)
                .ok_or(NoSlot::Full)?;
            if let Some(evicted) = slots.remove(idlest) {
                let _ = evicted.stream.shutdown(Shutdown::Both);
                EVICTED.log(log::Level::Warn, || {
                    format!(
                        "http: {} connections from {} are open: closed the idlest (from {}, idle {:?}) for one from {ip}",
                        self.max_connections,
                        self.kind,
                        evicted.source,
                        evicted.idle_since.elapsed()
                    )
                });
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        *slots.per_source.entry(source).or_default() += 1;
        let slot = Slot {
            source,
            stream: stream.clone(),
            busy: false,
            idle_since: Instant::now(),
        };
        slots.open.insert(id, slot);
        Ok(id)
    }

    /// A request of connection `id` is being answered (`busy`), or was.
    fn mark(&self, id: u64, busy: bool) {
        if let Some(slot) = self.slots().open.get_mut(&id) {
            slot.busy = busy;
            slot.idle_since = Instant::now();
        }
    }

    fn release(&self, id: u64) {
        self.slots().remove(id);
    }
}

impl Slots {
    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.open.remove(&id)?;
        if let Some(held) = self.per_source.get_mut(&slot.source) {
            *held -= 1;
            if *held == 0 {
                self.per_source.remove(&slot.source);
            }
        }
        Some(slot)
    }
}

impl Front {
    fn pool(&self, from: Client) -> &Pool {
        match from {
            Client::Local => &self.local,
            Client::Peer => &self.peers,
        }
    }

    /// Answers a request, on its connection's thread: what can be refused
    /// cheaply is refused here, before it takes a place in a queue; the
    /// rest is routed by a worker, and its reply written here (however
    /// slowly the client reads it, no worker waits for that).
    fn hand(&self, request: Request, from: Client) {
        let refusal = match request.method() {
            Method::Get | Method::Head => self.refusal(&request, from),
            _ => Some(Reply::status(405, "only GET and HEAD")),
        };
        if let Some(reply) = refusal {
            return self.answer_here(request, reply);
        }
        let pool = self.pool(from);
        let (reply, routed) = crossbeam_channel::bounded(1);
        let job = Job {
            asked: Asked::of(&request, from),
            reply,
        };
        let queued = match pool.jobs.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(job)) if from == Client::Local => {
                pool.jobs.send_timeout(job, LOCAL_QUEUE_WAIT).is_ok()
            }
            Err(_) => false,
        };
        if !queued {
            BUSY.log(log::Level::Warn, || {
                format!("http: every worker for {} is busy: answered 503", pool.kind)
            });
            return self.answer_here(request, Reply::status(503, "busy; ask another peer"));
        }
        // A worker that panicked drops its job's sender, and a stopping
        // daemon drops `stop`: the request is then dropped unanswered,
        // which cuts its connection.
        crossbeam_channel::select! {
            recv(routed) -> reply => {
                if let Ok(reply) = reply {
                    reply::send(request, reply, &self.app.metrics, &self.stop);
                }
            }
            recv(self.stop) -> _ => {}
        }
    }

    /// The answer to a request that needs no worker, if any: a loopback
    /// request whose `Host` is not a loopback name (`request.rs`), a peer
    /// request without the network's key.
    fn refusal(&self, request: &Request, from: Client) -> Option<Reply> {
        if from == Client::Local {
            let foreign = (request.headers().iter())
                .filter(|h| h.field.equiv("Host"))
                .find(|h| !names_loopback(h.value.as_str(), &self.hostname));
            if let Some(host) = foreign {
                FOREIGN_HOST.log(log::Level::Warn, || {
                    format!(
                        "http: refused {} from this machine: Host {:?} is not a name of this \
                         machine's loopback (a web page's, by DNS rebinding?)",
                        path_of(request),
                        host.value.as_str()
                    )
                });
                return Some(Reply::status(
                    403,
                    "the Host is not a name of this machine's loopback",
                ));
            }
        }
        let key = self.app.network_key.as_ref()?;
        let path = path_of(request);
        // With a key, the original's `/local/` routes are off (404): only
        // ours need it.
        if from != Client::Peer || !path.starts_with("/peer/") {
            return None;
        }
        let authorization = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str());
        let method = if request.method() == &Method::Head {
            "HEAD"
        } else {
            "GET"
        };
        match key.check_authorization(method, path, authorization) {
            Ok(()) => None,
            Err(e) => {
                store_routes::REFUSED.log(log::Level::Warn, || {
                    format!("refused {path} from {:?}: {e}", request.remote_addr())
                });
                Some(Reply::status(403, "this network needs its key"))
            }
        }
    }

    fn answer_here(&self, request: Request, reply: Reply) {
        let path = path_of(&request).to_owned();
        self.app
            .metrics
            .request(route_name(&path), reply.status_code());
        reply::send(request, reply, &self.app.metrics, &self.stop);
    }
}

/// The path of a request, without its query.
fn path_of(request: &Request) -> &str {
    let url = request.url();
    url.split('?').next().unwrap_or_default()
}

thread_local! {
    /// Whether this thread runs under `supervise`, which logs its panics.
    static SUPERVISED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The last panic of this supervised thread: where and what.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `work` until it returns. When it panics, which no input should
/// make it do, that is logged once (one line, where and what, at most a
/// line a second: the default panic hook, which would print every one, is
/// bypassed on supervised threads) and it runs again: a worker that panics
/// is replaced, and the connection of the request it was answering is cut
/// (tiny_http cuts a request dropped unanswered).
fn supervise(name: &str, mut work: impl FnMut()) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| match SUPERVISED.with(|s| s.get()) {
            true => LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string())),
            false => default(info),
        }));
    });
    SUPERVISED.with(|s| s.set(true));
    while std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut work)).is_err() {
        let what = LAST_PANIC.with(|p| p.borrow_mut().take());
        let what = what.as_deref().unwrap_or("panicked").replace('\n', " ");
        PANICKED.log(log::Level::Error, || {
            format!("http: {name} {what}; its request's connection was cut, and it goes on")
        });
    }
    SUPERVISED.with(|s| s.set(false));
}

/// A worker thread: routes requests until the daemon stops.
fn work(app: &App, jobs: &Receiver<Job>, stop: &Receiver<()>) {
    loop {
        crossbeam_channel::select! {
            recv(jobs) -> job => match job {
                Ok(job) => answer(app, job),
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        }
    }
}

/// Routes a request, and hands its reply back to its connection's thread.
fn answer(app: &App, job: Job) {
    let asked = &job.asked;
    let incoming = asked.incoming();
    let reply = store_routes::route(app, &incoming)
        .or_else(|| local_routes::route(app, &incoming))
        .unwrap_or_else(Reply::not_found);
    log::debug!(
        "{} {} from {:?}: {}",
        asked.method,
        asked.path,
        asked.remote,
        reply.status_code()
    );
    app.metrics
        .request(route_name(&asked.path), reply.status_code());
    // Its connection's thread waits for it (unless the daemon stops).
    let _ = job.reply.send(reply);
}

/// The route a path is for, as a metrics label.
fn route_name(path: &str) -> &'static str {
    match path {
        "/nix-cache-info" => "cache_info",
        "/status" | "/status.json" => "status",
        "/" => "dashboard",
        "/metrics" => "metrics",
        "/peer/nix-cache-info" => "peer_cache_info",
        p if p.starts_with("/peer/nar/") => "peer_nar",
        p if p.starts_with("/peer/summary/") => "peer_summary",
        p if p.starts_with("/peer/pull/") => "peer_pull",
        p if p.starts_with("/peer/") => "peer_narinfo",
        p if p.starts_with("/local/nar/") => "v1_nar",
        p if p.starts_with("/local/") => "v1_narinfo",
        p if p.starts_with("/nar/") => "nar",
        p if p.ends_with(".narinfo") => "narinfo",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_panics_is_replaced() {
        let mut runs = 0;
        supervise("test worker", || {
            runs += 1;
            if runs <= 3 {
                panic!("panic number {runs}");
            }
        });
        assert_eq!(runs, 4);
        // Told by `supervise`, not by the default hook.
        assert_eq!(LAST_PANIC.with(|p| p.borrow().clone()), None);
    }
}
