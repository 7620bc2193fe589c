//! The routes for the local Nix: this node as a substituter on localhost.
//!
//! - `/nix-cache-info`
//! - `/<hash>.narinfo`: asks the peers, and hands on the narinfo of the
//!   first one that has the path and whose narinfo passes every check
//!   (see `substitute/`), naming its NAR by content:
//!   `nar/<nix32 NarHash>-<hash>.nar`.
//! - `/nar/<nix32 NarHash>-<hash>.nar`: streams that NAR from peers whose
//!   narinfo has that NarHash, failing over mid-stream; `/nar/<hash>.nar`
//!   (the form of earlier versions) only when every peer that has the
//!   path agrees on its NarHash. 404 when none can serve it, so that Nix
//!   moves on to its next substituter. `Range: bytes=N-` is answered 206
//!   (Nix resumes a broken download so), HEAD from what the node knows
//!   without opening a stream.
//!   When no peer has a path and the node pulls through upstream caches
//!   (`src/pull/`), the narinfo is the first upstream's (checked as a
//!   peer's), and its NAR comes from the node that fetches it for the
//!   LAN, decompressed, as it arrives.
//! - `/status`: this node and the peers it knows, one line each; as JSON
//!   with `Accept: application/json`, or at `/status.json`.
//! - `/`: the dashboard (see `status.rs`).
//! - `/metrics`: counters in the Prometheus text format.
//!
//! They answer the local Nix only (403 for others, which Nix takes for
//! "not here"), and over loopback only a request whose `Host` names
//! loopback (`request.rs`: a web page cannot read them by DNS rebinding).
//! A narinfo request is answered 200 or 404, never an error: an error
//! aborts the build on Nix up to 2.31.

use std::time::Instant;

use super::app::App;
use super::reply::Reply;
use super::request::{Client, Incoming};
use super::status;
use super::store_routes::cache_info;
use crate::metrics::{Gauges, NarSource};
use crate::nix::narinfo::HashPart;
use crate::nix::nix32;
use crate::peer::Who;
use crate::substitute::NoNar;

/// Answers the request if its path is one of the local routes.
pub fn route(app: &App, incoming: &Incoming) -> Option<Reply> {
    let rest = incoming.path.strip_prefix('/')?;
    let route = if rest == "nix-cache-info" {
        Route::CacheInfo
    } else if rest == "status" && !incoming.json {
        Route::Status
    } else if rest == "status" || rest == "status.json" {
        Route::StatusJson
    } else if rest.is_empty() {
        Route::Dashboard
    } else if rest == "metrics" {
        Route::Metrics
    } else if let Some(name) = rest.strip_suffix(".narinfo") {
        Route::NarInfo(name)
    } else if let Some(name) = (rest.strip_prefix("nar/")).and_then(|n| n.strip_suffix(".nar")) {
        Route::Nar(name)
    } else {
        return None;
    };
    if incoming.from != Client::Local {
        return Some(Reply::status(403, "this route answers the local Nix only"));
    }
    Some(match route {
        Route::CacheInfo => cache_info(app),
        Route::Status => status::text(app),
        Route::StatusJson => status::json(app),
        Route::Dashboard => status::dashboard(app),
        Route::Metrics => metrics(app),
        Route::NarInfo(name) => match HashPart::parse(name) {
            Some(hash) => narinfo(app, &hash),
            None => Reply::status(400, "expected a 32-character nix32 hash"),
        },
        Route::Nar(name) => match parse_nar_name(name) {
            Some((hash, nar_hash)) => nar(app, &hash, nar_hash, incoming),
            None => Reply::status(400, "expected /nar/<NarHash>-<hash>.nar"),
        },
    })
}

enum Route<'a> {
    CacheInfo,
    Status,
    StatusJson,
    Dashboard,
    Metrics,
    NarInfo(&'a str),
    Nar(&'a str),
}

/// `<52 nix32 NarHash>-<hash part>`, or a bare hash part (the NAR URL of
/// earlier versions).
fn parse_nar_name(name: &str) -> Option<(HashPart, Option<[u8; 32]>)> {
    match name.split_once('-') {
        Some((nar_hash, hash)) => Some((HashPart::parse(hash)?, Some(nix32::decode(nar_hash)?))),
        None => Some((HashPart::parse(name)?, None)),
    }
}

/// The counters, with the gauges of the moment.
fn metrics(app: &App) -> Reply {
    let now = Gauges {
        peers: app.discovery.peers().len(),
        store_paths: app.store.valid_paths(),
        transfers: app.substituter.transfers().snapshot().1,
    };
    let paces: Vec<(String, f64)> = (app.substituter.paces().into_iter())
        .map(|(who, pace)| match who {
            Who::Node(id) => (format!("{id:016x}"), pace),
            Who::Addr(ip) => (ip.to_string(), pace),
        })
        .collect();
    let text = app.metrics.render(now, &paces);
    Reply::text(200, "text/plain; version=0.0.4", text)
}

/// The narinfo of `hash` from the peers, else the upstream caches.
fn narinfo(app: &App, hash: &HashPart) -> Reply {
    let start = Instant::now();
    let found = app.substituter.narinfo(hash);
    app.metrics.lookup(found.is_some(), start.elapsed());
    match found {
        Some(info) => Reply::text(200, "text/x-nix-narinfo", info.render()),
        None => Reply::not_found(),
    }
}

/// The NAR of `hash` with `nar_hash`, from byte `incoming.range` on:
/// plain NAR bytes, as from any binary cache.
fn nar(app: &App, hash: &HashPart, nar_hash: Option<[u8; 32]>, incoming: &Incoming) -> Reply {
    let offset = incoming.range.unwrap_or(0);
    let nar = match app.substituter.nar(hash, nar_hash, offset, incoming.head) {
        Ok(nar) => nar,
        Err(NoNar::Nowhere) => return Reply::not_found(),
        Err(NoNar::PastTheEnd) => {
            return Reply::status(416, "the range starts after the end of the NAR")
        }
    };
    let from = match nar.from {
        NarSource::Peer => "peers",
        _ => "upstream",
    };
    Reply::Stream {
        compress: None,
        stripe: None,
        content_type: "application/x-nix-nar",
        len: nar.total,
        range: incoming.range,
        body: nar.body,
        source: nar.from,
        what: format!("the NAR of {hash} from {from}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_names_carry_the_nar_hash_or_not() {
        let hash = "awrccy8w2v4v74m9ipglpniq94nkh3x4";
        let nar_hash = "14kn0rmhxf2lpqwbkv4bk9sfaxxrbgdsdz8x7r38hw2mg8bgx1vw";
        let (h, n) = parse_nar_name(&format!("{nar_hash}-{hash}")).unwrap();
        assert_eq!(
            (h.as_str(), n.map(|n| nix32::encode(&n))),
            (hash, Some(nar_hash.into()))
        );
        assert_eq!(
            parse_nar_name(hash).map(|(h, n)| (h, n.is_none())),
            HashPart::parse(hash).map(|h| (h, true))
        );
        assert!(parse_nar_name(&format!("{}-{hash}", &nar_hash[1..])).is_none());
        assert!(parse_nar_name(&format!("{nar_hash}-{hash}x")).is_none());
        assert!(parse_nar_name("").is_none());
    }
}
