//! What the node tells a person or a script about itself, from one set of
//! facts: `/status` as text (one line per peer), as JSON (`/status.json`,
//! or `/status` with `Accept: application/json`), and the dashboard at `/`,
//! a page (`dashboard.html`, in the binary) that shows the same JSON and
//! fetches it again every few seconds. The numbers are those of `/metrics`.

use std::time::Duration;

use super::app::App;
use super::reply::Reply;
use crate::base::json::Json;
use crate::base::version::{COMMIT, VERSION};
use crate::metrics::history::Sample;
use crate::peer::Who;

/// The dashboard; `/*FACTS*/null` is replaced by the facts at the time.
const DASHBOARD: &str = include_str!("dashboard.html");

/// After this long without a peer, status says so as a warning.
const LONELY_AFTER: Duration = Duration::from_secs(60);

/// `/status` as text: this node and the peers it knows, one line each.
pub fn text(app: &App) -> Reply {
    let peers = app.discovery.peers();
    let mut text = format!(
        "peerix {VERSION}\nnode {:016x}\nstore: {} valid paths\nnix-store --serve for NARs: {}\npeers: {}\n",
        app.discovery.node(),
        app.store.valid_paths(),
        app.store.nar_children(),
        peers.len()
    );
    for peer in peers {
        text.push_str(&format!("  {peer}\n"));
    }
    Reply::text(200, "text/plain", text)
}

/// `/status.json`.
pub fn json(app: &App) -> Reply {
    Reply::text(200, "application/json", facts(app).render())
}

/// `/`: the dashboard, with the facts of now in it.
pub fn dashboard(app: &App) -> Reply {
    let page = DASHBOARD.replacen("/*FACTS*/null", &facts(app).render(), 1);
    Reply::text(200, "text/html; charset=utf-8", page)
}

/// Everything status says, as JSON.
fn facts(app: &App) -> Json {
    let metrics = &app.metrics;
    let peers = app.discovery.peers();
    let uptime = metrics.uptime();
    let mut warnings = app.about.warnings.clone();
    if peers.is_empty() && uptime > LONELY_AFTER {
        warnings.push(format!(
            "no peer heard from: a firewall closed to port {port} (TCP and UDP) on either \
             side, peers on another --port, or none running",
            port = app.port
        ));
    }
    warnings.extend(app.pull.as_ref().and_then(|p| p.warning()));
    let peers = peers.iter().map(|peer| {
        let (sent, received) = (peer.addrs.iter())
            .map(|ip| metrics.peer_totals(*ip))
            .fold((0, 0), |(s, r), (s1, r1)| (s + s1, r + r1));
        // Its pace is learnt by node id (original nodes by address).
        let pace = match peer.node {
            Some(id) => app.substituter.pace(&Who::Node(id)),
            None => (peer.addrs.iter()).find_map(|ip| app.substituter.pace(&Who::Addr(*ip))),
        };
        Json::Object(vec![
            (
                "node",
                Json::opt(peer.node, |id| Json::str(format!("{id:016x}"))),
            ),
            (
                "kind",
                Json::str(match peer.node {
                    Some(_) => "peerix",
                    None => "original",
                }),
            ),
            (
                "addrs",
                Json::Array(
                    peer.addrs
                        .iter()
                        .map(|a| Json::str(a.to_string()))
                        .collect(),
                ),
            ),
            (
                "http_port",
                Json::opt(peer.http_port, |p| Json::Int(p.into())),
            ),
            ("heard_seconds_ago", Json::Float(secs(peer.heard))),
            ("answering", Json::Bool(peer.answering)),
            ("pulls", Json::Bool(peer.pulls)),
            ("bytes_received", Json::Int(received)),
            ("bytes_sent", Json::Int(sent)),
            (
                "pace_bytes_per_second",
                Json::opt(pace, |p| Json::Float(p.round())),
            ),
        ])
    });
    let (transfers, running) = app.substituter.transfers().snapshot();
    let transfers = transfers.iter().map(|t| {
        let took = t.started.elapsed();
        Json::Object(vec![
            ("path", Json::str(&t.path)),
            ("peer", Json::opt(t.peer(), |p| Json::str(p.to_string()))),
            ("bytes", Json::Int(t.bytes())),
            ("offset", Json::Int(t.offset)),
            ("nar_size", Json::Int(t.nar_size)),
            ("seconds", Json::Float(secs(took))),
            (
                "bytes_per_second",
                Json::Float(t.bytes() as f64 / secs(took).max(0.001)),
            ),
        ])
    });
    let minutes = metrics.last_hour();
    let last_hour = minutes.iter().fold(Sample::default(), |a, m| a.plus(*m));
    let column =
        |f: fn(&Sample) -> u64| Json::Array(minutes.iter().map(|m| Json::Int(f(m))).collect());
    let strings = |v: &[String]| Json::Array(v.iter().map(Json::str).collect());
    let about = &app.about;
    Json::Object(vec![
        ("version", Json::str(VERSION)),
        ("commit", Json::opt(COMMIT, Json::str)),
        ("node", Json::str(format!("{:016x}", app.discovery.node()))),
        ("uptime_seconds", Json::Float(secs(uptime))),
        (
            "store",
            Json::Object(vec![
                ("valid_paths", Json::Int(app.store.valid_paths() as u64)),
                ("nar_children", Json::Int(app.store.nar_children() as u64)),
            ]),
        ),
        ("share", Json::str(&about.share)),
        (
            "trust",
            Json::Object(vec![
                ("trusted_keys", strings(&about.trusted_keys)),
                (
                    "signing_key",
                    Json::opt(about.signing_key.clone(), Json::str),
                ),
                ("lan_key", Json::opt(about.lan_key.clone(), Json::str)),
                ("network_key", Json::Bool(about.network_key)),
                ("broadcast", Json::Bool(about.broadcast)),
                ("extra_hosts", strings(&about.extra_hosts)),
            ]),
        ),
        ("warnings", strings(&warnings)),
        ("peers", Json::Array(peers.collect())),
        ("transfers", Json::Array(transfers.collect())),
        ("transfers_running", Json::Int(running as u64)),
        (
            "compression",
            Json::Object(
                (metrics.framed.bytes().iter())
                    .map(|&(name, _, n)| (name, Json::Int(n)))
                    .collect(),
            ),
        ),
        (
            "totals",
            Json::Object(vec![
                ("since_start", totals(metrics.totals())),
                ("last_hour", totals(last_hour)),
            ]),
        ),
        (
            "last_hour",
            Json::Object(vec![
                ("hits", column(|m| m.hits)),
                ("misses", column(|m| m.misses)),
                ("bytes_from_peers", column(|m| m.from_peers)),
                ("bytes_from_peer_pulls", column(|m| m.from_peer_pulls)),
                ("bytes_from_upstreams", column(|m| m.from_upstreams)),
                ("bytes_to_peers", column(|m| m.to_peers)),
            ]),
        ),
    ])
}

fn totals(s: Sample) -> Json {
    Json::Object(vec![
        ("hits", Json::Int(s.hits)),
        ("misses", Json::Int(s.misses)),
        ("bytes_from_peers", Json::Int(s.from_peers)),
        ("bytes_from_peer_pulls", Json::Int(s.from_peer_pulls)),
        ("bytes_from_upstreams", Json::Int(s.from_upstreams)),
        ("bytes_to_peers", Json::Int(s.to_peers)),
    ])
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}
