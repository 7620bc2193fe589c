//! The HTTP side of the node: one blocking tiny_http listener hands each
//! request over a crossbeam channel to a fixed pool of worker threads, and
//! each worker routes it and writes the reply. Requests from loopback (the
//! local Nix) and from the network (peers) go to two pools of their own, so
//! that no amount of peer traffic can keep the local Nix waiting.

mod conn;
mod local_routes;
mod peer_routes;
mod reply;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tiny_http::{Method, Request, Server};

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
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);

    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(f)
            .map_err(|e| format!("cannot start a thread: {e}"))
    };
    let mut threads = vec![spawn(
        "http-listener".into(),
        Box::new(move || listen(listener, [local_tx, peers_tx], stop_rx)),
    )?];
    for (pool, requests) in [("local", local_rx), ("peers", peers_rx)] {
        for i in 0..workers {
            let (rx, app) = (requests.clone(), app.clone());
            threads.push(spawn(
                format!("http-{pool}-{i}"),
                Box::new(move || work(&app, rx, addr.port())),
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

    /// Stops accepting, cuts open connections (so streams end and their
    /// `nix-store` children are killed and reaped) and waits for the
    /// workers, at most a few seconds.
    pub fn stop(self) {
        let _ = self.stop.send(());
        conn::cut_all(self.addr.port());
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

/// The listener thread: takes requests from tiny_http and queues them for
/// the workers, those from loopback for the local pool and the others for
/// the peers' pool. tiny_http stops accepting for good after an accept
/// error (say, out of file descriptors): then a new server is made on the
/// same socket.
fn listen(listener: TcpListener, [local, peers]: [Sender<Request>; 2], stop: Receiver<()>) {
    let new_server = || {
        let socket = listener.try_clone().map_err(|e| e.to_string())?;
        Server::from_listener(socket, None).map_err(|e| e.to_string())
    };
    let mut server = match new_server() {
        Ok(s) => s,
        Err(e) => return log::error!("cannot start the HTTP server: {e}"),
    };
    while stop.try_recv().is_err() {
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
                log::error!("HTTP server stopped accepting ({e}); starting it again");
                std::thread::sleep(Duration::from_millis(100));
                match new_server() {
                    Ok(s) => server = s,
                    Err(e) => log::error!("cannot restart the HTTP server: {e}"),
                }
            }
        }
    }
}

/// A worker thread: answers requests until the listener goes away.
fn work(app: &App, requests: Receiver<Request>, port: u16) {
    for request in requests {
        let head = match request.method() {
            Method::Get => false,
            Method::Head => true,
            _ => {
                app.metrics.request("other", 405);
                reply::send(
                    request,
                    Reply::status(405, "only GET and HEAD"),
                    port,
                    &app.metrics,
                );
                continue;
            }
        };
        let url = request.url();
        let path = url.split('?').next().unwrap_or_default().to_owned();
        let client = request.remote_addr().copied();
        let reply = peer_routes::route(app, &path, head)
            .or_else(|| local_routes::route(app, &path, head, client))
            .unwrap_or_else(Reply::not_found);
        log::debug!(
            "{} {path} from {:?}: {}",
            request.method(),
            request.remote_addr(),
            reply.status_code()
        );
        app.metrics.request(route_name(&path), reply.status_code());
        reply::send(request, reply, port, &app.metrics);
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
