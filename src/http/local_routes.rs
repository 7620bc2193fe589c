//! The routes for the local Nix: this node as a substituter on localhost.
//!
//! - `/nix-cache-info`
//! - `/<hash>.narinfo`: asks the peers, and hands on the narinfo of the
//!   first one that has the path and whose narinfo the local Nix will
//!   accept, its URL rewritten to the route below.
//! - `/nar/<hash>.nar`: streams the NAR from a peer that has the path,
//!   trying the next one when a peer fails; 404 when none can serve it, so
//!   that Nix moves on to its next substituter.
//!
//! - `/status`: this node and the peers it knows, one line each.
//! - `/metrics`: counters in the Prometheus text format.
//!
//! They answer loopback clients only (403 for others, which Nix takes for
//! "not here"). A narinfo request is answered 200 or 404, never an error:
//! an error aborts the build on Nix up to 2.31.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::peer_routes::cache_info;
use super::reply::Reply;
use super::App;
use crate::metrics::NarSource;
use crate::narinfo::HashPart;
use crate::peer_client::PeerClient;

/// The longest a narinfo fetch from one peer may take. A narinfo request
/// is answered within the discovery timeout plus this.
const NARINFO_FETCH: Duration = Duration::from_secs(2);

/// Answers `path` if it is one of the local routes.
pub fn route(app: &App, path: &str, head: bool, client: Option<SocketAddr>) -> Option<Reply> {
    let rest = path.strip_prefix('/')?;
    let route = if rest == "nix-cache-info" {
        Route::CacheInfo
    } else if rest == "status" {
        Route::Status
    } else if rest == "metrics" {
        Route::Metrics
    } else if let Some(name) = rest.strip_suffix(".narinfo") {
        Route::NarInfo(name)
    } else if let Some(name) = rest
        .strip_prefix("nar/")
        .and_then(|n| n.strip_suffix(".nar"))
    {
        Route::Nar(name)
    } else {
        return None;
    };
    if !client.is_some_and(|c| c.ip().to_canonical().is_loopback()) {
        return Some(Reply::status(403, "this route answers the local Nix only"));
    }
    Some(match route {
        Route::CacheInfo => cache_info(app),
        Route::Status => status(app),
        Route::Metrics => Reply::text(
            200,
            "text/plain; version=0.0.4",
            app.metrics
                .render(app.discovery.peers().len(), app.store.valid_paths()),
        ),
        Route::NarInfo(name) => match HashPart::parse(name) {
            Some(hash) => narinfo(app, &hash),
            None => Reply::status(400, "expected a 32-character nix32 hash"),
        },
        Route::Nar(name) => match HashPart::parse(name) {
            Some(hash) => nar(app, &hash, head),
            None => Reply::status(400, "expected /nar/<32-character hash>.nar"),
        },
    })
}

enum Route<'a> {
    CacheInfo,
    Status,
    Metrics,
    NarInfo(&'a str),
    Nar(&'a str),
}

/// `/status`: this node and the peers it knows, for people.
fn status(app: &App) -> Reply {
    let peers = app.discovery.peers();
    let mut text = format!(
        "peerix {}\nnode {:016x}\nstore: {} valid paths\npeers: {}\n",
        env!("CARGO_PKG_VERSION"),
        app.discovery.node(),
        app.store.valid_paths(),
        peers.len()
    );
    for peer in peers {
        text.push_str(&format!("  {peer}\n"));
    }
    Reply::text(200, "text/plain", text)
}

/// Asks the peers for `hash` and hands on the first acceptable narinfo.
fn narinfo(app: &App, hash: &HashPart) -> Reply {
    let start = Instant::now();
    let mut asked = app.discovery.ask(hash);
    let hard_deadline = start + app.discovery.timeout() + NARINFO_FETCH;
    while let Some(found) = asked.next_have() {
        let left = hard_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let url = PeerClient::narinfo_url(&found, hash);
        match app.client.narinfo(&found, hash, left.min(NARINFO_FETCH)) {
            Ok(mut info) if app.trust.accepts(&info) => {
                log::debug!("{hash}: found at {url} in {:.1?}", start.elapsed());
                app.metrics.lookup(true, start.elapsed());
                info.url = format!("nar/{hash}.nar");
                return Reply::text(200, "text/x-nix-narinfo", info.render());
            }
            Ok(_) => {
                log::warn!("{url}: not signed by a key the local Nix trusts; trying the next peer")
            }
            Err(e) => log::warn!("{url}: {e}; trying the next peer"),
        }
    }
    log::debug!("{hash}: no peer has it ({:.1?})", start.elapsed());
    app.metrics.lookup(false, start.elapsed());
    Reply::not_found()
}

/// Streams the NAR of `hash` from the first peer that serves it.
fn nar(app: &App, hash: &HashPart, head: bool) -> Reply {
    let mut asked = app.discovery.ask(hash);
    while let Some(found) = asked.next_have() {
        let fetched = app
            .client
            .narinfo(&found, hash, NARINFO_FETCH)
            .and_then(|info| app.client.nar(&found, &info));
        match fetched {
            Ok(stream) => {
                log::info!("{hash}: NAR of {} bytes from {}", stream.len, found.addr);
                return Reply::Stream {
                    content_type: "application/x-nix-nar",
                    len: stream.len,
                    body: (!head).then_some(stream.body),
                    source: NarSource::Peer,
                    what: format!("the NAR of {hash} from {}", found.addr),
                };
            }
            Err(e) => log::warn!("{hash}: NAR from {}: {e}; trying the next peer", found.addr),
        }
    }
    log::info!("{hash}: no peer can serve the NAR");
    Reply::not_found()
}
