//! Signing and public keys in Nix's text format (`name:base64`), and the
//! Ed25519 signatures over a store path's fingerprint that Nix checks.
//!
//! Secret keys are what `nix-store --generate-binary-cache-key` writes:
//! `name:` + base64 of the 32-byte seed followed by the 32-byte public key.
//! Public keys are `name:` + base64 of the 32-byte public key.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// Why a key could not be used. The message names what to fix.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The key file could not be read.
    Unreadable { path: PathBuf, reason: String },
    /// The text is not a key in Nix's format.
    Malformed {
        path: Option<PathBuf>,
        reason: String,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Unreadable { path, reason } => {
                write!(f, "cannot read key file {}: {reason}", path.display())
            }
            KeyError::Malformed {
                path: Some(path),
                reason,
            } => write!(
                f,
                "key file {} is not a Nix key ({reason}); make one with \
                 `nix-store --generate-binary-cache-key NAME secret public`",
                path.display()
            ),
            KeyError::Malformed { path: None, reason } => write!(f, "not a Nix key: {reason}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Warns when a secret key file can be read by others than its owner, or
/// lies in the (world-readable) Nix store. Never shows the key itself.
pub fn warn_if_exposed(path: &Path, what: &str) {
    if let Some(warning) = exposure(path, what) {
        log::warn!("{warning}");
    }
}

/// What is wrong with where a secret key file lies, if anything: in the
/// Nix store, or readable by others than its owner.
pub fn exposure(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if resolved.starts_with("/nix/store") {
        return Some(format!(
            "the {what} {} is in the Nix store, where every user and every peer that \
             asks for its path can read it: make a new key outside the store",
            path.display()
        ));
    }
    let mode = std::fs::metadata(&resolved).ok()?.permissions().mode();
    (mode & 0o044 != 0).then(|| {
        format!(
            "the {what} {} can be read by others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

/// Splits `name:base64` and decodes the base64 part into exactly `N` bytes.
fn split_key<const N: usize>(text: &str) -> Result<(&str, [u8; N]), String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let (name, data) = text
        .split_once(':')
        .ok_or("expected NAME:BASE64, found no ':'")?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err("the key name is empty or contains white space".into());
    }
    let bytes = STANDARD
        .decode(data)
        .map_err(|e| format!("the part after ':' is not base64 ({e})"))?;
    let bytes: [u8; N] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("expected {N} bytes of key, found {}", b.len()))?;
    Ok((name, bytes))
}

/// This node's secret key: signs narinfo fingerprints.
pub struct SigningKey {
    name: String,
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Reads a secret key file written by `nix-store --generate-binary-cache-key`.
    pub fn from_file(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        warn_if_exposed(path, "private key");
        SigningKey::parse(&text).map_err(|e| match e {
            KeyError::Malformed { reason, .. } => KeyError::Malformed {
                path: Some(path.to_owned()),
                reason,
            },
            other => other,
        })
    }

    /// Parses the text of a secret key.
    pub fn parse(text: &str) -> Result<SigningKey, KeyError> {
        let malformed = |reason: String| KeyError::Malformed { path: None, reason };
        let (name, bytes) = split_key::<64>(text).map_err(|reason| {
            if split_key::<32>(text).is_ok() {
                malformed("this is a public key; give the secret key".into())
            } else {
                malformed(reason)
            }
        })?;
        let pair = Ed25519KeyPair::from_seed_and_public_key(&bytes[..32], &bytes[32..])
            .map_err(|_| malformed("the public half does not match the secret seed".into()))?;
        Ok(SigningKey {
            name: name.to_owned(),
            pair,
        })
    }

    /// The key of a 32-byte Ed25519 seed, named by `name` from its public
    /// key (so that the name says which key it is).
    pub fn from_seed(seed: &[u8; 32], name: impl FnOnce(&[u8; 32]) -> String) -> SigningKey {
        // ring accepts every 32-byte seed; the error case cannot happen.
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .expect("an Ed25519 key pair from a 32-byte seed");
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        SigningKey {
            name: name(&public),
            pair,
        }
    }

    /// The key's name, as it appears before the ':' of a signature.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs a fingerprint; returns the narinfo `Sig` value `name:base64`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.pair.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, STANDARD.encode(sig.as_ref()))
    }

    /// The matching public key, in Nix's format.
    pub fn public_key(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey {
            name: self.name.clone(),
            key,
        }
    }
}

/// True when `sig` has the form of a signature: `name:` + base64 of 64
/// bytes (whether it is valid is another question).
pub fn is_signature(sig: &str) -> bool {
    !sig.ends_with('\n') && split_key::<64>(sig).is_ok()
}

/// A public key that signatures are checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: [u8; 32],
}

impl PublicKey {
    /// Parses `name:base64` (as in `trusted-public-keys`).
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let (name, key) = split_key::<32>(text.trim())
            .map_err(|reason| KeyError::Malformed { path: None, reason })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when `sig` (a narinfo `Sig` value, `name:base64`) is this key's
    /// valid signature of `fingerprint`.
    pub fn verifies(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, data)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(sig) = STANDARD.decode(data) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(fingerprint.as_bytes(), &sig)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by `nix-store --generate-binary-cache-key test-upstream-1 sk pk`
    // (Nix 2.8); SIG is what `nix store sign --key-file sk` put on the
    // path whose fingerprint is FINGERPRINT.
    const SECRET: &str = "test-upstream-1:yqwdjQ38E5tWOwEPB7y8GsP4a8HXURuORSA7fiqe40XQh0cLJqNEVz3NVgS+zZ/ToxNFhh9XF4ae9ngef+FW5Q==";
    const PUBLIC: &str = "test-upstream-1:0IdHCyajRFc9zVYEvs2f06MTRYYfVxeGnvZ4Hn/hVuU=";
    pub const FINGERPRINT: &str = "1;/nix/store/awrccy8w2v4v74m9ipglpniq94nkh3x4-vec-top;\
        sha256:14kn0rmhxf2lpqwbkv4bk9sfaxxrbgdsdz8x7r38hw2mg8bgx1vw;168;\
        /nix/store/65hpr3iwgygz9ahgnagy7f6cnlmphkxm-vec-dep";
    const SIG: &str = "test-upstream-1:HlHn9ZyiYEa4PaQsRuSGFxur+CjjWVblTMAff9j5jmi5acjU82zth/yAOIjU3A8GPnfzu8Fc/QMws1x81XwSDg==";

    #[test]
    fn signs_like_nix() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(FINGERPRINT), SIG);
        assert_eq!(key.public_key().to_string(), PUBLIC);
        assert_eq!(key.name(), "test-upstream-1");
    }

    #[test]
    fn verifies_like_nix() {
        let public = PublicKey::parse(PUBLIC).unwrap();
        assert!(public.verifies(FINGERPRINT, SIG));
        assert!(!public.verifies(&FINGERPRINT.replace("168", "169"), SIG));
        assert!(!public.verifies(FINGERPRINT, &SIG.replace("test-upstream-1", "other")));
        assert!(!public.verifies(FINGERPRINT, "test-upstream-1:!!"));
        assert!(!public.verifies(FINGERPRINT, "no-colon"));
    }

    #[test]
    fn accepts_a_trailing_newline() {
        assert!(SigningKey::parse(&format!("{SECRET}\n")).is_ok());
        assert!(PublicKey::parse(&format!("{PUBLIC}\n")).is_ok());
    }

    #[test]
    fn refuses_malformed_keys_with_a_reason() {
        for (text, reason) in [
            ("", "no ':'"),
            ("name-only", "no ':'"),
            (":AAAA", "name"),
            ("k:not base64!", "base64"),
            ("k:AAAA", "64 bytes"),
            (PUBLIC, "public key"),
        ] {
            let err = SigningKey::parse(text).err().unwrap().to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
        // A seed whose public half was tampered with.
        let mut bytes = STANDARD.decode(SECRET.split_once(':').unwrap().1).unwrap();
        bytes[40] ^= 1;
        let bad = format!("k:{}", STANDARD.encode(bytes));
        assert!(SigningKey::parse(&bad)
            .err()
            .unwrap()
            .to_string()
            .contains("does not match"));
    }

    #[test]
    fn names_the_file() {
        let err = SigningKey::from_file(Path::new("/nonexistent/sk"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/sk"), "{err}");
    }
}
