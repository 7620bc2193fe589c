//! The network key: a secret shared by the nodes of one network, with which
//! every datagram and every request between peers is authenticated
//! (HMAC-SHA256 with a timestamp; a message seen before, or older than
//! `WINDOW`, is refused). A node without the key gets no answer to its
//! datagrams and nothing from the routes for peers.
//!
//! It authenticates; it does not encrypt: who can watch the network still
//! sees which paths are asked for and the NARs that are sent. Nodes' clocks
//! must agree within `WINDOW` (NTP does).
//!
//! The LAN key: from each secret an Ed25519 signing key is derived with
//! HKDF-SHA256 (RFC 5869): the secret as input key material, the salt
//! `peerix-lan-key`, the label (HKDF's info) `ed25519 seed v1`, 32 bytes of
//! output as the seed. It is named `peerix-lan-` and the first 4 bytes of
//! its public key in hex, so `NAME:BASE64` of its public half (`lan_key`)
//! is the same on every machine with the secret, and the one line their
//! Nix needs in `trusted-public-keys`. Nodes sign the narinfo they serve to
//! peers with it.
//!
//! Rotation: a node may hold several secrets. Every one is accepted; the
//! first seals and authenticates what this node sends, and its LAN key
//! signs.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::{hkdf, hmac};

use crate::nix::keys::{PublicKey, SigningKey};

/// How far a message's timestamp may be from this node's clock.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Bytes an authenticated datagram carries after its body: the timestamp
/// (u64 BE, milliseconds since 1970) and the HMAC-SHA256 tag.
pub const TRAILER: usize = 8 + 32;

/// Tags remembered against replays per generation (two are kept).
const REMEMBERED: usize = 50_000;

/// HKDF's salt for the LAN key. Never changes: the LAN key's line is
/// pasted into every machine's Nix configuration.
const LAN_KEY_SALT: &[u8] = b"peerix-lan-key";
/// HKDF's info, the label, for the LAN key. Never changes (see above).
const LAN_KEY_LABEL: &[u8] = b"ed25519 seed v1";
/// What the LAN key's name starts with.
const LAN_KEY_PREFIX: &str = "peerix-lan-";

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

/// The network's secrets (one, or more while moving to a new one).
pub struct NetworkKey {
    /// Every secret accepted; the first one's is used for what this node
    /// sends. Never empty.
    secrets: Vec<Secret>,
    /// The tags of accepted messages, against replays.
    seen: Mutex<Replays>,
}

/// What one secret gives: its HMAC key and its LAN key.
struct Secret {
    hmac: hmac::Key,
    lan: SigningKey,
}

impl Secret {
    fn new(secret: &[u8]) -> Result<Secret, String> {
        if secret.len() < 16 {
            return Err(format!(
                "{} bytes is too short for a network key: use at least 16 random bytes",
                secret.len()
            ));
        }
        Ok(Secret {
            hmac: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lan: lan_key(secret),
        })
    }
}

/// The LAN key of `secret` (see the module's documentation).
fn lan_key(secret: &[u8]) -> SigningKey {
    let mut seed = [0u8; 32];
    let filled = hkdf::Salt::new(hkdf::HKDF_SHA256, LAN_KEY_SALT)
        .extract(secret)
        .expand(&[LAN_KEY_LABEL], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut seed));
    // HKDF-SHA256 gives up to 8160 bytes; 32 are always there.
    filled.expect("32 bytes of HKDF-SHA256 output");
    SigningKey::from_seed(&seed, |public| {
        format!("{LAN_KEY_PREFIX}{}", hex(&public[..4]))
    })
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
        NetworkKey::from_secrets(&[secret])
    }

    /// The keys of several secrets, the first one's used for what this
    /// node sends; at least one.
    pub fn from_secrets(secrets: &[&[u8]]) -> Result<NetworkKey, String> {
        let secrets = secrets.iter().map(|s| Secret::new(s)).collect();
        NetworkKey::of(secrets)
    }

    /// Reads network key files (the content of each, without surrounding
    /// white space, is a secret), warning about those others can read.
    /// The first one's is used for what this node sends.
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<NetworkKey, String> {
        let read = |path: &Path| {
            let text = std::fs::read(path)
                .map_err(|e| format!("cannot read network key file {}: {e}", path.display()))?;
            crate::nix::keys::warn_if_exposed(path, "network key");
            Secret::new(text.trim_ascii())
                .map_err(|e| format!("network key file {}: {e}", path.display()))
        };
        NetworkKey::of(paths.iter().map(|p| read(p.as_ref())).collect())
    }

    fn of(secrets: Result<Vec<Secret>, String>) -> Result<NetworkKey, String> {
        let secrets = secrets?;
        if secrets.is_empty() {
            return Err("no network key".into());
        }
        Ok(NetworkKey {
            secrets,
            seen: Mutex::new(Replays::default()),
        })
    }

    /// Writes a new random secret to `path`, which must not exist (made
    /// 0600, never overwritten), and returns its key.
    pub fn create(path: &Path) -> Result<NetworkKey, String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "the system gave no random bytes for a new network key".to_string())?;
        let text = format!("{}\n", STANDARD.encode(bytes));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => format!(
                    "{} exists: a network key is never overwritten (remove the file first \
                     if it is really to go)",
                    path.display()
                ),
                _ => format!("cannot create {}: {e}", path.display()),
            })?;
        if let Err(e) = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
        {
            let _ = std::fs::remove_file(path);
            return Err(format!("cannot write {}: {e}", path.display()));
        }
        NetworkKey::new(text.trim().as_bytes())
    }

    /// The key this node signs the narinfo it serves to peers with: the
    /// first secret's LAN key.
    pub fn lan_key(&self) -> &SigningKey {
        &self.secrets[0].lan
    }

    /// The public halves of every secret's LAN key, the first first: what
    /// peers sign with.
    pub fn lan_public_keys(&self) -> Vec<PublicKey> {
        self.secrets.iter().map(|s| s.lan.public_key()).collect()
    }

    /// The tag of `parts` with the first secret.
    fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.secrets[0].hmac);
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

    /// Verifies `tag` over `parts` in constant time with each secret, then
    /// the timestamp, then that this tag was not seen before.
    fn check(&self, parts: &[&[u8]], ts: u64, tag: &[u8]) -> Result<(), AuthError> {
        // ring compares the whole tag in constant time.
        let mut message = Vec::new();
        for part in parts {
            message.extend_from_slice(part);
        }
        let verified = (self.secrets.iter()).any(|s| hmac::verify(&s.hmac, &message, tag).is_ok());
        if !verified {
            return Err(AuthError::Forged);
        }
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
        assert!(NetworkKey::from_secrets(&[b"0123456789abcdef", b"short"]).is_err());
        assert!(NetworkKey::from_secrets(&[]).is_err());
    }

    /// The LAN key's line is pasted into every machine's Nix configuration:
    /// it must never change for a given secret. Checked independently
    /// (Python's hmac for HKDF-SHA256, `openssl pkey` for the public key).
    #[test]
    fn the_lan_key_of_a_secret_never_changes() {
        let line = |secret: &str| key(secret).lan_key().public_key().to_string();
        assert_eq!(
            line("peerix lan key test vector, 0123456789"),
            "peerix-lan-3178f3e4:MXjz5Be/kUY2Y8f5WIX6loChlMZjHYP/M+VuSsTEHc4="
        );
        // Another secret, another key (and name).
        assert_eq!(
            line("peerix lan key test vector, 0123456780"),
            "peerix-lan-d4bf004a:1L8ASv1U05EStK4t8qJQO7ZDwTP74SqrqNE+qypgcwQ="
        );
        // The name is the public key's first 4 bytes, in hex.
        let public = key("0123456789abcdef").lan_key().public_key();
        let bytes = STANDARD
            .decode(public.to_string().split_once(':').unwrap().1)
            .unwrap();
        assert_eq!(public.name(), format!("peerix-lan-{}", hex(&bytes[..4])));
        // It signs as a Nix key does: what it signs, its public half verifies.
        let signing = key("0123456789abcdef");
        let sig = signing.lan_key().sign("1;/nix/store/x;sha256:y;1;");
        assert!(public.verifies("1;/nix/store/x;sha256:y;1;", &sig));
    }

    #[test]
    fn every_secret_is_accepted_and_the_first_one_sends() {
        let (old, new) = (b"the old secret of the LAN", b"the new secret of the LAN");
        let old_only = NetworkKey::new(old).unwrap();
        let new_only = NetworkKey::new(new).unwrap();
        let moving = NetworkKey::from_secrets(&[old, new]).unwrap();
        let moved = NetworkKey::from_secrets(&[new, old]).unwrap();
        // Nodes that have the old secret only, or have moved on, are heard.
        for (i, (sender, receiver)) in [
            (&old_only, &moving),
            (&new_only, &moving),
            (&moving, &old_only),
            (&moved, &new_only),
            (&moved, &moving),
            (&old_only, &moved),
        ]
        .into_iter()
        .enumerate()
        {
            let body = format!("datagram {i}");
            let mut datagram = body.clone().into_bytes();
            sender.seal(&mut datagram);
            assert_eq!(receiver.open(&datagram), Ok(body.as_bytes()), "{i}");
            let header = sender.authorization("GET", "/peer/x.narinfo");
            assert_eq!(
                receiver.check_authorization("GET", "/peer/x.narinfo", Some(&header)),
                Ok(()),
                "{i}"
            );
        }
        // The first secret sends: a node still on the old one alone cannot
        // hear one that put the new one first.
        let mut datagram = b"a datagram".to_vec();
        moved.seal(&mut datagram);
        assert_eq!(old_only.open(&datagram), Err(AuthError::Forged));
        // And the first secret's LAN key signs; every one's is trusted.
        let line = |k: &NetworkKey| k.lan_key().public_key();
        assert_eq!(line(&moving), line(&old_only));
        assert_eq!(line(&moved), line(&new_only));
        assert_eq!(moving.lan_public_keys(), [line(&old_only), line(&new_only)]);
    }

    #[test]
    fn a_new_secret_is_written_private_and_never_over_another() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("peerix-network-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("network-key");
        let _ = std::fs::remove_file(&file);
        let made = NetworkKey::create(&file).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(STANDARD.decode(text.trim()).unwrap().len(), 32);
        let read = NetworkKey::from_files(&[&file]).unwrap();
        assert_eq!(read.lan_key().public_key(), made.lan_key().public_key());
        // Never overwritten: the first secret stays.
        let err = NetworkKey::create(&file).err().unwrap();
        assert!(err.contains("exists"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        // Two new secrets differ.
        let other = dir.join("other");
        let _ = std::fs::remove_file(&other);
        let second = NetworkKey::create(&other).unwrap();
        assert_ne!(second.lan_key().public_key(), made.lan_key().public_key());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
