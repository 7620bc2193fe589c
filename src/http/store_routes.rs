//! The routes other machines use to fetch from this node's own store.
//!
//! - `/peer/nix-cache-info`, `/peer/<hash>.narinfo`, `/peer/nar/<hash>.nar`:
//!   ours; `http://HOST:PORT/peer` is a complete binary cache for Nix.
//! - `/peer/summary/<version>`: what changed in this store's summary since
//!   that version (`store/summary.rs`; 0 for the whole of it).
//! - `/local/<hash>.narinfo`, `/local/nar/<b64>.nar`: the original Peerix's,
//!   so that nodes still running it can fetch from ours (`<b64>` is the
//!   base64 of the whole store path, `/` written `_`).
//!
//! Only valid paths of this store that the share policy offers are ever
//! served (404 otherwise, 400 for a malformed hash). A narinfo carries the
//! path's own signatures, this node's (`--private-key`) and, with a network
//! key, the LAN key's; one in such a key's name that does not verify (an
//! older key of that name) is replaced. NARs come from Nix's serializer
//! (`store/nar.rs`), with `Content-Length`; `Range: bytes=N-` is answered
//! 206, the first N bytes of the NAR read and dropped (a peer of ours
//! resumes a NAR so when the peer it came from broke off). Those bytes, and
//! those of the other stripes a stripe's sender drops (`peer/stripe.rs`),
//! come out of a per-source budget of bytes read and dropped
//! (`App::range_skips`: 2 GiB at once, 256 MiB a second; 503 past it),
//! whatever the headers. With a network key, requests must carry a valid
//! `Authorization` (`peer/network_key.rs`; checked before they are
//! queued), and the original's routes are off: its nodes cannot
//! authenticate.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::app::App;
use super::reply::Reply;
use super::request::Incoming;
use crate::base::logs::Throttle;
use crate::metrics::NarSource;
use crate::nix::narinfo::{basename_of, HashPart, STORE_DIR};
use crate::peer::framed::Mode;
use crate::pull::Refusal;
use crate::store::PathInfo;

/// Requests refused for want of the network key, logged at most once a second.
pub static REFUSED: Throttle = Throttle::new();

/// True when `path` is one of the routes for peers.
pub fn is_peer_route(path: &str) -> bool {
    path.starts_with("/peer/") || path.starts_with("/local/")
}

/// Answers the request if its path is one of the peer routes.
pub fn route(app: &App, incoming: &Incoming) -> Option<Reply> {
    let path = incoming.path;
    // Only our own routes offer the framed stream: original nodes never ask.
    // A stripe is sent framed even without compression.
    let framed = incoming.framed && (app.compress != Mode::Never || incoming.stripe.is_some());
    let compress = match framed {
        true => Some(app.compress),
        false => None,
    };
    if !is_peer_route(path) {
        return None;
    }
    if app.network_key.is_some() && path.starts_with("/local/") {
        return Some(Reply::not_found());
    }
    if let Some(rest) = path.strip_prefix("/peer/") {
        return Some(match rest {
            "nix-cache-info" => cache_info(app),
            _ if rest.starts_with("summary/") => summary_reply(app, &rest["summary/".len()..]),
            _ if rest.starts_with("pull/") => pulled_nar(app, rest, incoming),
            _ => match rest.strip_prefix("nar/") {
                Some(nar) => match nar.strip_suffix(".nar").map(HashPart::parse) {
                    Some(Some(hash)) => nar_reply(app, &hash, incoming, compress),
                    _ => Reply::status(400, "expected /peer/nar/<32-char hash>.nar"),
                },
                None => match rest.strip_suffix(".narinfo").map(HashPart::parse) {
                    Some(Some(hash)) => narinfo_reply(app, &hash, format!("nar/{hash}.nar")),
                    Some(None) => Reply::status(400, "expected a 32-character nix32 hash"),
                    None => Reply::not_found(),
                },
            },
        });
    }
    let rest = path.strip_prefix("/local/")?;
    Some(match rest.strip_prefix("nar/") {
        Some(nar) => match nar.strip_suffix(".nar").and_then(decode_v1_nar_name) {
            Some(Ok(basename)) => match HashPart::of_basename(&basename) {
                Some(hash) if app.store.lookup(&hash).as_deref() == Some(&*basename) => {
                    nar_reply(app, &hash, incoming, None)
                }
                _ => Reply::not_found(),
            },
            Some(Err(())) => Reply::not_found(),
            None => Reply::status(400, "expected /local/nar/<base64 of a store path>.nar"),
        },
        None => match rest.strip_suffix(".narinfo").map(HashPart::parse) {
            Some(Some(hash)) => match app.store.lookup(&hash) {
                Some(name) => {
                    let url = format!("local/nar/{}.nar", encode_v1_nar_name(&name));
                    narinfo_reply(app, &hash, url)
                }
                None => Reply::not_found(),
            },
            Some(None) => Reply::status(400, "expected a 32-character nix32 hash"),
            None => Reply::not_found(),
        },
    })
}

/// Range requests refused for their cost, logged at most once a second.
static SKIPS: Throttle = Throttle::new();

/// Takes `skipped` bytes of `peer`'s budget of bytes read and dropped;
/// false when it has fewer.
fn skip_allowed(app: &App, peer: Option<std::net::IpAddr>, skipped: u64) -> bool {
    let Some(peer) = peer else { return true };
    match app.range_skips.lock() {
        Ok(mut skips) => skips.allow_cost(peer, skipped as f64),
        Err(_) => true,
    }
}

/// `/nix-cache-info`: what a Nix client reads before anything else.
pub fn cache_info(app: &App) -> Reply {
    Reply::text(
        200,
        "text/x-nix-cache-info",
        format!(
            "StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: {}\n",
            app.priority
        ),
    )
}

/// `/peer/summary/<version>`: the changes since that version, or the
/// whole summary.
fn summary_reply(app: &App, since: &str) -> Reply {
    let Ok(since) = since.parse::<u64>() else {
        return Reply::status(400, "expected /peer/summary/<version, a number>");
    };
    match app.store.summary_since(since) {
        Some(update) => Reply::Bytes {
            content_type: "application/octet-stream",
            body: update.encode(),
        },
        None => Reply::status(500, "the summary is not available"),
    }
}

/// The path info of a hash this store holds and shares; `Err` is the reply
/// to give when there is none. A path the share policy withholds is not
/// found, whatever the route.
fn path_info(app: &App, hash: &HashPart) -> Result<std::sync::Arc<PathInfo>, Reply> {
    let found = match app.store.shareable(hash) {
        Ok(true) => app.store.path_info(hash),
        Ok(false) => Ok(None),
        Err(e) => Err(e),
    };
    match found {
        Ok(Some(info)) => Ok(info),
        Ok(None) => Err(Reply::not_found()),
        Err(e) => {
            // A 5xx on a narinfo aborts the builds of Nix clients up to 2.31:
            // say "not here" and let them try their next substituter.
            log::warn!("cannot read the path info of {hash}: {e}");
            Err(Reply::not_found())
        }
    }
}

fn narinfo_reply(app: &App, hash: &HashPart, url: String) -> Reply {
    match path_info(app, hash) {
        Ok(info) => {
            let lan_key = app.network_key.as_deref().map(|k| k.lan_key());
            let narinfo = info.served_at(url, app.key.iter().chain(lan_key));
            Reply::text(200, "text/x-nix-narinfo", narinfo.render())
        }
        Err(reply) => reply,
    }
}

fn nar_reply(app: &App, hash: &HashPart, incoming: &Incoming, compress: Option<Mode>) -> Reply {
    let (head, range) = (incoming.head, incoming.range);
    let info = match path_info(app, hash) {
        Ok(info) => info,
        Err(reply) => return reply,
    };
    let offset = range.unwrap_or(0);
    if offset >= info.nar_size {
        return Reply::status(416, "the range starts after the end of the NAR");
    }
    // A stripe is sent only in the framed stream; its sender reads the
    // other stripes' bytes and drops them.
    let stripe = incoming.stripe.filter(|_| compress.is_some());
    let others = stripe.map_or(0, |s| {
        (info.nar_size - offset) - s.bytes_in(offset, info.nar_size)
    });
    let skipped = offset + others;
    if !head && skipped > 0 && !skip_allowed(app, incoming.peer, skipped) {
        SKIPS.log(log::Level::Warn, || {
            format!(
                "refused a request of {:?} for {}: its Range and stripe requests asked for \
                 more skipped bytes than allowed",
                incoming.peer, info.path
            )
        });
        return Reply::status(
            503,
            "too many bytes skipped for Range and stripe requests; ask another peer",
        );
    }
    let body = match head {
        true => None,
        false => match app.store.nar(&info, offset) {
            Ok(nar) => Some(nar),
            Err(e) => {
                log::warn!("cannot read the NAR of {}: {e}", info.path);
                return Reply::not_found();
            }
        },
    };
    Reply::Stream {
        compress,
        stripe,
        content_type: "application/x-nix-nar",
        len: info.nar_size,
        range,
        body,
        source: NarSource::Store,
        what: format!("the NAR of {}", info.path),
    }
}

/// `/peer/pull/<nix32 NarHash>-<hash>.nar`: a NAR this node fetches from
/// its upstream caches for the LAN, from its spool as it arrives. Never
/// passed on to another node: a peer asks here because this node is the
/// path's fetcher. Taken on only for a path whose upstream narinfo this
/// node remembers, or that it fetches and the peer proves an upstream has
/// (`pull/mod.rs`): 404 otherwise, 503 to a source that asks too often.
fn pulled_nar(app: &App, rest: &str, incoming: &Incoming) -> Reply {
    let (head, range) = (incoming.head, incoming.range);
    let name = rest
        .strip_prefix("pull/")
        .and_then(|n| n.strip_suffix(".nar"));
    let parsed = name.and_then(|n| {
        let (nar_hash, hash) = n.split_once('-')?;
        Some((
            HashPart::parse(hash)?,
            crate::nix::nix32::decode::<32>(nar_hash)?,
        ))
    });
    let Some((hash, nar_hash)) = parsed else {
        return Reply::status(400, "expected /peer/pull/<NarHash>-<hash>.nar");
    };
    let Some(pull) = app.pull.as_ref() else {
        return Reply::not_found();
    };
    let proof = incoming.proof.as_deref();
    let pulled = match pull.for_peer(&hash, nar_hash, proof, incoming.peer) {
        Ok(pulled) => pulled,
        Err(Refusal::NotHere) => return Reply::not_found(),
        Err(Refusal::TooMany) => {
            return Reply::status(503, "too many pull requests; fetch it yourself")
        }
    };
    let offset = range.unwrap_or(0);
    if offset >= pulled.info.nar_size {
        return Reply::status(416, "the range starts after the end of the NAR");
    }
    let body = match head {
        true => None,
        false => match pull.nar_here(&pulled, offset, false) {
            Ok(body) => Some(body),
            Err(e) => {
                log::info!("{hash}: cannot pull it for a peer: {e}");
                return Reply::not_found();
            }
        },
    };
    // A pulled NAR goes out raw, as it arrives in the spool.
    Reply::Stream {
        compress: None,
        stripe: None,
        content_type: "application/x-nix-nar",
        len: pulled.info.nar_size,
        range,
        body,
        source: NarSource::Spool,
        what: format!("the pulled NAR of {hash}"),
    }
}

/// The original's NAR name: base64 of the full store path, `/` → `_`.
pub fn encode_v1_nar_name(basename: &str) -> String {
    STANDARD
        .encode(format!("{STORE_DIR}/{basename}"))
        .replace('/', "_")
}

/// Decodes the original's NAR name into a store path basename. `None`
/// when it is not base64 at all (a malformed request); `Err` when it
/// decodes to anything but a well-formed store path.
fn decode_v1_nar_name(name: &str) -> Option<Result<String, ()>> {
    let name = percent_decode(name)?;
    let bytes = STANDARD.decode(name.replace('_', "/")).ok()?;
    let check = || {
        let path = String::from_utf8(bytes).map_err(drop)?;
        basename_of(&path).map(str::to_owned).map_err(drop)
    };
    Some(check())
}

/// Decodes `%XX` escapes (a client may escape `+` and `=`).
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_nar_names_round_trip() {
        let name = "awrccy8w2v4v74m9ipglpniq94nkh3x4-vec-top";
        let encoded = encode_v1_nar_name(name);
        assert!(!encoded.contains('/'));
        assert_eq!(decode_v1_nar_name(&encoded), Some(Ok(name.to_owned())));
        let escaped = encoded.replace('=', "%3D").replace('+', "%2B");
        assert_eq!(decode_v1_nar_name(&escaped), Some(Ok(name.to_owned())));
    }

    #[test]
    fn v1_nar_names_outside_the_store_are_refused() {
        for path in ["/etc/passwd", "/nix/store/../etc/passwd", "/nix/store/x"] {
            let encoded = STANDARD.encode(path).replace('/', "_");
            assert_eq!(decode_v1_nar_name(&encoded), Some(Err(())), "{path}");
        }
        assert_eq!(decode_v1_nar_name("!!notbase64"), None);
        assert_eq!(decode_v1_nar_name("%zz"), None);
    }
}
