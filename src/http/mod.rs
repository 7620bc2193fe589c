//! The HTTP side of the node: one blocking tiny_http listener hands each
//! request over a crossbeam channel to a fixed pool of worker threads, and
//! each worker routes it and writes the reply. Requests from loopback (the
//! local Nix) and from the network (peers) go to two pools of their own, so
//! that no amount of peer traffic can keep the local Nix waiting.

mod local_routes;
mod peer_routes;
mod reply;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tiny_http::{Limits, Method, Request, Server};

use crate::auth::NetworkKey;
use crate::discovery::Discovery;
use crate::keys::SigningKey;
use crate::metrics::Metrics;
use crate::peer_client::PeerClient;
use crate::store::Store;
use crate::trust::Trust;
use reply::Reply;

/// What every worker needs to answer a request; never changes.
pub struct App {
    pub store: Arc<Store>,
    pub key: Option<SigningKey>,
    pub priority: u32,
    pub discovery: Arc<Discovery>,
    pub client: PeerClient,
    pub trust: Trust,
    pub metrics: Metrics,
    /// When set, requests for the peer routes must be authenticated.
    pub network_key: Option<Arc<NetworkKey>>,
}

/// The running listener and workers.
pub struct Http {
    addr: SocketAddr,
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
    let (local_tx, local_rx) = crossbeam_channel::bounded::<Request>(workers * 2);
    let (peers_tx, peers_rx) = crossbeam_channel::bounded::<Request>(workers * 2);
    // Never sent on: dropping the sender is the signal, seen by the listener
    // and by every body being streamed.
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);

    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(f)
            .map_err(|e| format!("cannot start a thread: {e}"))
    };
    let mut threads = vec![spawn(
        "http-listener".into(),
        Box::new({
            let stop = stop_rx.clone();
            move || listen(listener, [local_tx, peers_tx], stop)
        }),
    )?];
    for (pool, requests) in [("local", local_rx), ("peers", peers_rx)] {
        for i in 0..workers {
            let (rx, app, stop) = (requests.clone(), app.clone(), stop_rx.clone());
            threads.push(spawn(
                format!("http-{pool}-{i}"),
                Box::new(move || work(&app, rx, &stop)),
            )?);
        }
    }
    Ok(Http {
        addr,
        stop: stop_tx,
        threads,
    })
}

impl Http {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends the bodies being streamed (their connections
    /// are cut and their `nix-store` children killed and reaped) and waits
    /// for the workers, at most a few seconds.
    pub fn stop(self) {
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

/// What one connection may take (tiny_http as patched in src/vendor): an
/// idle client is dropped after `read_timeout`, a client that stops reading
/// a body after `write_timeout`; peers may hold at most `max_connections`
/// (the local Nix is not counted); a request head is at most 16 KiB and
/// must come within 10 s of its first byte.
const LIMITS: Limits = Limits {
    max_connections: 256,
    read_timeout: Some(Duration::from_secs(30)),
    write_timeout: Some(Duration::from_secs(60)),
    max_head_bytes: 16 * 1024,
    head_timeout: Some(Duration::from_secs(10)),
};

/// The listener thread: takes requests from tiny_http and queues them for
/// the workers, those from loopback for the local pool and the others for
/// the peers' pool.
fn listen(listener: TcpListener, [local, peers]: [Sender<Request>; 2], stop: Receiver<()>) {
    let server = match Server::from_listener_with_limits(listener, None, LIMITS) {
        Ok(s) => s,
        Err(e) => return log::error!("cannot start the HTTP server: {e}"),
    };
    while matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
        match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(request)) => {
                let from_loopback = request
                    .remote_addr()
                    .is_some_and(|a| a.ip().to_canonical().is_loopback());
                let pool = if from_loopback { &local } else { &peers };
                if pool.send(request).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                log::error!("HTTP server: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A worker thread: answers requests until the listener goes away.
fn work(app: &App, requests: Receiver<Request>, stop: &Receiver<()>) {
    for request in requests {
        let head = match request.method() {
            Method::Get => false,
            Method::Head => true,
            _ => {
                app.metrics.request("other", 405);
                reply::send(
                    request,
                    Reply::status(405, "only GET and HEAD"),
                    &app.metrics,
                    stop,
                );
                continue;
            }
        };
        let url = request.url();
        let path = url.split('?').next().unwrap_or_default().to_owned();
        let client = request.remote_addr().copied();
        let authorization = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_owned());
        let method = if head { "HEAD" } else { "GET" };
        let reply = peer_routes::route(app, &path, head, || match &app.network_key {
            None => Ok(()),
            Some(key) => key.check_authorization(method, &path, authorization.as_deref()),
        })
        .or_else(|| local_routes::route(app, &path, head, client))
        .unwrap_or_else(Reply::not_found);
        log::debug!(
            "{} {path} from {:?}: {}",
            request.method(),
            request.remote_addr(),
            reply.status_code()
        );
        app.metrics.request(route_name(&path), reply.status_code());
        reply::send(request, reply, &app.metrics, stop);
    }
}

/// The route a path is for, as a metrics label.
fn route_name(path: &str) -> &'static str {
    match path {
        "/nix-cache-info" => "cache_info",
        "/status" => "status",
        "/metrics" => "metrics",
        "/peer/nix-cache-info" => "peer_cache_info",
        p if p.starts_with("/peer/nar/") => "peer_nar",
        p if p.starts_with("/peer/") => "peer_narinfo",
        p if p.starts_with("/local/nar/") => "v1_nar",
        p if p.starts_with("/local/") => "v1_narinfo",
        p if p.starts_with("/nar/") => "nar",
        p if p.ends_with(".narinfo") => "narinfo",
        _ => "other",
    }
}
