//! Which narinfo signatures the local Nix accepts: the keys of its own
//! configuration (`trusted-public-keys`, read once at start from
//! `nix config show`, `nix show-config` before Nix 2.20), those given with
//! `--trusted-key`, and this node's own LAN keys (derived from its network
//! keys) where Nix trusts them too: when its configuration lists them, or
//! cannot be read at all. A narinfo from
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
    /// Keys of this node's own that Nix's configuration does not list.
    left_out: Vec<PublicKey>,
}

impl Trust {
    /// Nix's trusted keys plus `extra`, plus those of `own` (the LAN keys
    /// this node derives from its network keys) that Nix trusts: those it
    /// lists, or all when its configuration cannot be read.
    pub fn from_nix(extra: Vec<PublicKey>, own: Vec<PublicKey>) -> Trust {
        let settings = nix_settings();
        if settings.is_none() {
            log::warn!(
                "cannot read the Nix configuration (nix config show); \
                 trusting only the --trusted-key keys and the LAN key"
            );
        }
        let trust = Trust::of(settings.as_deref(), extra, own);
        if let Some(warning) = trust.warning() {
            log::warn!("{warning}");
        }
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

    /// The keys of `settings` (the text of `nix config show`, `None` when it
    /// cannot be read) and `extra`, and of `own` those Nix trusts: those
    /// among them, or all when the settings are unknown.
    fn of(settings: Option<&str>, extra: Vec<PublicKey>, own: Vec<PublicKey>) -> Trust {
        let mut trust = Trust::parse(settings.unwrap_or_default());
        if settings.is_none() {
            trust.keys.extend(own.iter().cloned());
        }
        for key in extra {
            if !trust.keys.contains(&key) {
                trust.keys.push(key);
            }
        }
        trust.left_out = own
            .into_iter()
            .filter(|k| !trust.keys.contains(k))
            .collect();
        trust
    }

    /// Reads `trusted-public-keys` and `require-sigs` from the text of
    /// `nix config show`; keys that do not parse are skipped.
    fn parse(text: &str) -> Trust {
        let mut trust = Trust {
            keys: Vec::new(),
            require_sigs: true,
            left_out: Vec::new(),
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

    /// What to tell the user about keys of this node that Nix does not
    /// trust, if any.
    pub fn warning(&self) -> Option<String> {
        let lines: Vec<String> = self.left_out.iter().map(PublicKey::to_string).collect();
        (!lines.is_empty()).then(|| {
            format!(
                "the local Nix does not trust the LAN key {} (not in its trusted-public-keys): \
                 peers' narinfo signed only by it is not handed on. Add it to \
                 trusted-public-keys (services.peerix.lanPublicKey on NixOS), or give it \
                 with --trusted-key if Nix trusts it by means this node cannot see",
                lines.join(" ")
            )
        })
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

    #[test]
    fn the_lan_key_is_trusted_where_nix_trusts_it() {
        let lan =
            PublicKey::parse("peerix-lan-3178f3e4:MXjz5Be/kUY2Y8f5WIX6loChlMZjHYP/M+VuSsTEHc4=")
                .unwrap();
        let other =
            PublicKey::parse("test-upstream-1:0IdHCyajRFc9zVYEvs2f06MTRYYfVxeGnvZ4Hn/hVuU=")
                .unwrap();
        let names = |t: &Trust| t.key_names().join(" ");
        // Listed in Nix's configuration: trusted, nothing to say.
        let listed = format!("trusted-public-keys = {lan}\n");
        let trust = Trust::of(Some(&listed), vec![], vec![lan.clone()]);
        assert_eq!(names(&trust), "peerix-lan-3178f3e4");
        assert_eq!(trust.warning(), None);
        // Nix's configuration unknown (no `nix` that shows it): trusted.
        let trust = Trust::of(None, vec![other.clone()], vec![lan.clone()]);
        assert_eq!(names(&trust), "peerix-lan-3178f3e4 test-upstream-1");
        assert_eq!(trust.warning(), None);
        // Given with --trusted-key: trusted.
        let unlisted = format!("trusted-public-keys = {other}\n");
        let trust = Trust::of(Some(&unlisted), vec![lan.clone()], vec![lan.clone()]);
        assert_eq!(names(&trust), "test-upstream-1 peerix-lan-3178f3e4");
        // Known not to be trusted by Nix, which would refuse what it signs:
        // left out, with a warning that gives the line to add.
        let trust = Trust::of(Some(&unlisted), vec![], vec![lan.clone()]);
        assert_eq!(names(&trust), "test-upstream-1");
        let warning = trust.warning().unwrap();
        assert!(warning.contains(&lan.to_string()), "{warning}");
    }
}
