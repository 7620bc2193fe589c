//! Which narinfo signatures the local Nix accepts: the keys of its own
//! configuration (`trusted-public-keys`, read once at start from
//! `nix config show`) and those given with `--trusted-key`. A narinfo from
//! a peer that Nix would refuse is never handed on: Nix would remember the
//! refusal for 30 days.

use crate::keys::PublicKey;
use crate::narinfo::NarInfo;
use std::process::{Command, Stdio};

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
            "peers' narinfo must be signed by one of: {}{}",
            names.join(", "),
            if trust.require_sigs {
                ""
            } else {
                " (or by nobody: require-sigs is false)"
            }
        );
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

    /// True when the local Nix would accept this narinfo's signatures.
    pub fn accepts(&self, narinfo: &NarInfo) -> bool {
        !self.require_sigs || narinfo.signed_by_any(&self.keys)
    }
}

/// The Nix configuration in force: `nix config show`, or the older
/// `nix show-config` on Nix before 2.20.
fn nix_settings() -> Option<String> {
    [&["config", "show"][..], &["show-config"][..]]
        .iter()
        .find_map(|args| {
            let output = Command::new("nix")
                .args(["--extra-experimental-features", "nix-command"])
                .args(*args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
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
