//! Which narinfo signatures the local Nix accepts: the keys of its own
//! configuration (`trusted-public-keys`, read once at start from
//! `nix config show`) and those given with `--trusted-key`. A narinfo from
//! a peer that Nix would refuse is never handed on: Nix would remember the
//! refusal for 30 days. Nor is one without a signature by one of these
//! keys, even when the local Nix has `require-sigs = false`: that setting
//! trusts the substituters one configured, not every host on the LAN.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::nix::keys::PublicKey;
use crate::nix::narinfo::NarInfo;

/// How long `nix config show` may take.
const NIX_CONFIG_TIMEOUT: Duration = Duration::from_secs(10);

/// Signatures kept of a peer's narinfo, at most.
const MAX_SIGNATURES: usize = 4;

#[derive(Clone)]
pub struct Trust {
    keys: Vec<PublicKey>,
    require_sigs: bool,
}

impl Trust {
    /// Nix's trusted keys plus `extra`.
    pub fn from_nix(extra: Vec<PublicKey>) -> Trust {
        let mut trust = match nix_settings() {
            Some(text) => Trust::parse(&text),
            None => {
                log::warn!(
                    "cannot read the Nix configuration (nix config show); \
                     trusting only the --trusted-key keys"
                );
                Trust {
                    keys: Vec::new(),
                    require_sigs: true,
                }
            }
        };
        trust.keys.extend(extra);
        let names: Vec<&str> = trust.keys.iter().map(PublicKey::name).collect();
        log::info!(
            "peers' narinfo must be signed by one of: {}",
            names.join(", ")
        );
        if !trust.require_sigs {
            log::info!(
                "the local Nix has require-sigs = false; peers' narinfo is still handed \
                 on only with a signature by one of these keys"
            );
        }
        trust
    }

    /// Reads `trusted-public-keys` and `require-sigs` from the text of
    /// `nix config show`; keys that do not parse are skipped.
    fn parse(text: &str) -> Trust {
        let mut trust = Trust {
            keys: Vec::new(),
            require_sigs: true,
        };
        for line in text.lines() {
            let Some((name, value)) = line.split_once(" = ") else {
                continue;
            };
            match name.trim() {
                "trusted-public-keys" => {
                    trust.keys = value
                        .split_whitespace()
                        .filter_map(|k| PublicKey::parse(k).ok())
                        .collect()
                }
                "require-sigs" => trust.require_sigs = value.trim() != "false",
                _ => {}
            }
        }
        trust
    }

    /// The names of the keys accepted.
    pub fn key_names(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.name().to_owned()).collect()
    }

    /// Keeps only the signatures that a trusted key verifies, a few at
    /// most (what a peer sent may carry any number of others); false when
    /// none is left.
    pub fn keep_trusted(&self, narinfo: &mut NarInfo) -> bool {
        let fingerprint = narinfo.fingerprint();
        let mut sigs = std::mem::take(&mut narinfo.sigs);
        sigs.retain(|sig| self.keys.iter().any(|k| k.verifies(&fingerprint, sig)));
        sigs.truncate(MAX_SIGNATURES);
        narinfo.sigs = sigs;
        !narinfo.sigs.is_empty()
    }
}

/// The Nix configuration in force: `nix config show`, or the older
/// `nix show-config` on Nix before 2.20, without the flag on Nix 2.3
/// (which has no `--extra-experimental-features`, and needs none).
fn nix_settings() -> Option<String> {
    const FLAG: [&str; 2] = ["--extra-experimental-features", "nix-command"];
    [
        &[FLAG[0], FLAG[1], "config", "show"][..],
        &[FLAG[0], FLAG[1], "show-config"][..],
        &["show-config"][..],
    ]
    .iter()
    .find_map(|args| {
        let mut command = Command::new("nix");
        command.args(*args);
        match crate::base::child::output_by(command, Instant::now() + NIX_CONFIG_TIMEOUT) {
            Ok(out) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(e) => {
                log::debug!("{e}");
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_keys_nix_shows() {
        let text = "require-sigs = true\n\
            trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= bad-key test-upstream-1:0IdHCyajRFc9zVYEvs2f06MTRYYfVxeGnvZ4Hn/hVuU=\n\
            trusted-substituters = \n";
        let trust = Trust::parse(text);
        let names: Vec<&str> = trust.keys.iter().map(PublicKey::name).collect();
        assert_eq!(names, ["cache.nixos.org-1", "test-upstream-1"]);
        assert!(trust.require_sigs);
        assert!(!Trust::parse("require-sigs = false\n").require_sigs);
    }
}
