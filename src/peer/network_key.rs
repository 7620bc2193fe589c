//! The network key: a secret shared by the nodes of one network, with which
//! every datagram and every request between peers is authenticated
//! (HMAC-SHA256 with a timestamp; a message seen before, or older than
//! `WINDOW`, is refused). A node without the key gets no answer to its
//! datagrams and nothing from the routes for peers.
//!
//! It authenticates; it does not encrypt: who can watch the network still
//! sees which paths are asked for and the NARs that are sent. Nodes' clocks
//! must agree within `WINDOW` (NTP does).

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;

/// How far a message's timestamp may be from this node's clock.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Bytes an authenticated datagram carries after its body: the timestamp
/// (u64 BE, milliseconds since 1970) and the HMAC-SHA256 tag.
pub const TRAILER: usize = 8 + 32;

/// Tags remembered against replays per generation (two are kept).
const REMEMBERED: usize = 50_000;

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Forged,
    Stale,
    Replayed,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Missing => "not authenticated",
            AuthError::Malformed => "malformed authentication",
            AuthError::Forged => "wrong authentication tag (another key?)",
            AuthError::Stale => "timestamp outside the window (clocks apart?)",
            AuthError::Replayed => "replayed",
        })
    }
}

pub struct NetworkKey {
    key: hmac::Key,
    /// The tags of accepted messages, against replays.
    seen: Mutex<Replays>,
}

/// The tags of the messages accepted, in two generations of at most
/// `REMEMBERED` each, O(1) per message. When a generation is dropped, no
/// message as old as the newest one it held is accepted any more (the
/// floor): so a replay is refused whether its tag is remembered or not,
/// and whatever this node's clock does. A wall clock set back does not
/// reopen the window, as the floor comes from the messages' own times.
#[derive(Default)]
struct Replays {
    current: HashSet<[u8; 32]>,
    previous: HashSet<[u8; 32]>,
    /// The newest timestamp in each generation.
    current_newest: u64,
    previous_newest: u64,
    /// Messages stamped at or before this are refused.
    floor: u64,
}

impl Replays {
    /// Remembers `tag` stamped `ts`; false when it is a replay (or older
    /// than what was forgotten).
    fn accept(&mut self, tag: [u8; 32], ts: u64) -> bool {
        if ts <= self.floor || self.current.contains(&tag) || self.previous.contains(&tag) {
            return false;
        }
        if self.current.len() >= REMEMBERED {
            self.floor = self.floor.max(self.previous_newest);
            self.previous = std::mem::take(&mut self.current);
            self.previous_newest = std::mem::take(&mut self.current_newest);
        }
        self.current.insert(tag);
        self.current_newest = self.current_newest.max(ts);
        true
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl NetworkKey {
    /// A key from its bytes (at least 16).
    pub fn new(secret: &[u8]) -> Result<NetworkKey, String> {
        if secret.len() < 16 {
            return Err(format!(
                "{} bytes is too short for a network key: use at least 16 random bytes",
                secret.len()
            ));
        }
        Ok(NetworkKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            seen: Mutex::new(Replays::default()),
        })
    }

    /// Reads a network key file (its content, without surrounding white
    /// space, is the secret), warning when others can read it.
    pub fn from_file(path: &Path) -> Result<NetworkKey, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read network key file {}: {e}", path.display()))?;
        crate::nix::keys::warn_if_exposed(path, "network key");
        NetworkKey::new(text.trim_ascii())
            .map_err(|e| format!("network key file {}: {e}", path.display()))
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.key);
        for part in parts {
            context.update(part);
        }
        let mut tag = [0u8; 32];
        tag.copy_from_slice(context.sign().as_ref());
        tag
    }

    /// Appends the timestamp and tag to a datagram.
    pub fn seal(&self, datagram: &mut Vec<u8>) {
        let ts = now_ms().to_be_bytes();
        let tag = self.tag(&[b"peerix-udp\n", datagram, &ts]);
        datagram.extend_from_slice(&ts);
        datagram.extend_from_slice(&tag);
    }

    /// Checks an authenticated datagram; returns its body.
    pub fn open<'a>(&self, data: &'a [u8]) -> Result<&'a [u8], AuthError> {
        let body_len = data.len().checked_sub(TRAILER).ok_or(AuthError::Missing)?;
        let (body, trailer) = data.split_at(body_len);
        let (ts, tag) = trailer.split_at(8);
        let ts: [u8; 8] = ts.try_into().map_err(|_| AuthError::Malformed)?;
        self.check(&[b"peerix-udp\n", body, &ts], u64::from_be_bytes(ts), tag)?;
        Ok(body)
    }

    /// The `Authorization` header value for a request to a peer.
    pub fn authorization(&self, method: &str, path: &str) -> String {
        let ts = now_ms().to_string();
        let mut nonce = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce);
        let nonce = hex(&nonce);
        let tag = self.tag(&http_message(method, path, &ts, &nonce));
        format!("Peerix {ts}.{nonce}.{}", hex(&tag))
    }

    /// Checks the `Authorization` header of a request from a peer.
    pub fn check_authorization(
        &self,
        method: &str,
        path: &str,
        header: Option<&str>,
    ) -> Result<(), AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let mut parts = value
            .strip_prefix("Peerix ")
            .ok_or(AuthError::Malformed)?
            .split('.');
        let (Some(ts), Some(nonce), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let ts_value: u64 = ts.parse().map_err(|_| AuthError::Malformed)?;
        let tag = unhex(tag).ok_or(AuthError::Malformed)?;
        if nonce.len() > 64 {
            return Err(AuthError::Malformed);
        }
        self.check(&http_message(method, path, ts, nonce), ts_value, &tag)
    }

    /// Verifies `tag` over `parts` in constant time, then the timestamp,
    /// then that this tag was not seen before.
    fn check(&self, parts: &[&[u8]], ts: u64, tag: &[u8]) -> Result<(), AuthError> {
        // ring compares the whole tag in constant time.
        let mut message = Vec::new();
        for part in parts {
            message.extend_from_slice(part);
        }
        hmac::verify(&self.key, &message, tag).map_err(|_| AuthError::Forged)?;
        let skew = now_ms().abs_diff(ts);
        if skew > WINDOW.as_millis() as u64 {
            return Err(AuthError::Stale);
        }
        let tag: [u8; 32] = tag.try_into().map_err(|_| AuthError::Malformed)?;
        let mut seen = self.seen.lock().map_err(|_| AuthError::Replayed)?;
        match seen.accept(tag, ts) {
            true => Ok(()),
            false => Err(AuthError::Replayed),
        }
    }
}

/// What the tag of a request covers.
fn http_message<'a>(method: &'a str, path: &'a str, ts: &'a str, nonce: &'a str) -> [&'a [u8]; 8] {
    [
        b"peerix-http\n",
        method.as_bytes(),
        b"\n",
        path.as_bytes(),
        b"\n",
        ts.as_bytes(),
        b"\n",
        nonce.as_bytes(),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> NetworkKey {
        NetworkKey::new(secret.as_bytes()).unwrap()
    }

    #[test]
    fn datagrams_open_once_and_only_with_the_key() {
        let (ours, theirs) = (key("0123456789abcdef-ours"), key("0123456789abcdef-theirs"));
        let mut datagram = b"PX\x02\x01 some datagram".to_vec();
        ours.seal(&mut datagram);
        assert_eq!(theirs.open(&datagram), Err(AuthError::Forged));
        assert_eq!(ours.open(&datagram).unwrap(), b"PX\x02\x01 some datagram");
        assert_eq!(ours.open(&datagram), Err(AuthError::Replayed));
        let mut forged = datagram.clone();
        forged[3] ^= 1;
        assert_eq!(ours.open(&forged), Err(AuthError::Forged));
        assert_eq!(ours.open(b"short"), Err(AuthError::Missing));
    }

    #[test]
    fn old_datagrams_are_stale() {
        let k = key("0123456789abcdef");
        let body = b"body".to_vec();
        let ts = (now_ms() - 60_000).to_be_bytes();
        let tag = k.tag(&[b"peerix-udp\n", &body, &ts]);
        let mut datagram = body.clone();
        datagram.extend_from_slice(&ts);
        datagram.extend_from_slice(&tag);
        assert_eq!(k.open(&datagram), Err(AuthError::Stale));
    }

    #[test]
    fn requests_are_bound_to_method_and_path() {
        let k = key("0123456789abcdef");
        let header = k.authorization("GET", "/peer/x.narinfo");
        assert_eq!(
            k.check_authorization("GET", "/peer/y.narinfo", Some(&header)),
            Err(AuthError::Forged)
        );
        assert_eq!(
            k.check_authorization("GET", "/peer/x.narinfo", Some(&header)),
            Ok(())
        );
        assert_eq!(
            k.check_authorization("GET", "/peer/x.narinfo", Some(&header)),
            Err(AuthError::Replayed)
        );
        assert_eq!(
            k.check_authorization("GET", "/", None),
            Err(AuthError::Missing)
        );
        assert_eq!(
            k.check_authorization("GET", "/", Some("Peerix 1.2")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            k.check_authorization("GET", "/", Some("Basic abc")),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn replays_stay_refused_after_their_tags_are_forgotten() {
        let mut replays = Replays::default();
        let tag = |i: usize| {
            let mut t = [0u8; 32];
            t[..8].copy_from_slice(&(i as u64).to_be_bytes());
            t
        };
        assert!(replays.accept(tag(0), 1_000));
        assert!(!replays.accept(tag(0), 1_000));
        // A flood of fresh messages pushes the first one's tag out of memory…
        for i in 1..=3 * REMEMBERED {
            assert!(replays.accept(tag(i), 1_000 + i as u64));
        }
        assert!(replays.current.len() + replays.previous.len() <= 2 * REMEMBERED);
        // …but its time is below the floor now, so it is refused all the same.
        assert!(!replays.accept(tag(0), 1_000));
        assert!(replays.accept(tag(usize::MAX), 10_000_000));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(NetworkKey::new(b"short").is_err());
    }
}
