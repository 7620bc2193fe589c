//! The share policy: which of this node's store paths it offers to peers.
//!
//! By default everything (sharing one's builds is the point). The user can
//! restrict it to paths that carry a valid signature by named keys (say,
//! only what came from cache.nixos.org, which is public anyway) and name
//! patterns never to share (`*-secret*`, `*.key`, `*-source`). A path is
//! offered only when every path of its closure passes: its narinfo names
//! its references, and a peer could not complete the closure anyway.

use super::serve::PathInfo;
use crate::nix::keys::PublicKey;

#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// When not empty, a path must carry a valid signature by one of these.
    pub signed_by: Vec<PublicKey>,
    /// Globs (`*`, `?`) on the name after `<hash>-`; a match is never shared.
    pub never: Vec<String>,
}

impl Policy {
    /// True when every path may be shared: no look at path infos needed.
    pub fn shares_everything(&self) -> bool {
        self.signed_by.is_empty() && self.never.is_empty()
    }

    /// True when the name of the basename `<hash>-<name>` matches no
    /// `never` pattern. Needs no path info.
    pub fn name_allowed(&self, basename: &str) -> bool {
        let name = basename.get(33..).unwrap_or(basename);
        !self
            .never
            .iter()
            .any(|p| glob(p.as_bytes(), name.as_bytes()))
    }

    /// True when this one path (not its closure) may be shared.
    pub fn allows(&self, info: &PathInfo) -> bool {
        self.name_allowed(&info.path)
            && (self.signed_by.is_empty() || info.signed_by_any(&self.signed_by))
    }
}

/// The policy in a few words, for status: `every path`, or what limits it.
impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.shares_everything() {
            return f.write_str("every path");
        }
        let mut parts = Vec::new();
        if !self.signed_by.is_empty() {
            let names: Vec<&str> = self.signed_by.iter().map(PublicKey::name).collect();
            parts.push(format!("only paths signed by {}", names.join(", ")));
        }
        if !self.never.is_empty() {
            parts.push(format!("never {}", self.never.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Shell-style matching of the whole `text`: `*` any run, `?` one byte.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        for (pattern, name, want) in [
            ("*-secret*", "my-secret-thing", true),
            ("*-secret*", "secret", false),
            ("*.key", "wg.key", true),
            ("*.key", "wg.key.pub", false),
            ("*-source", "foo-source", true),
            ("?ello", "hello", true),
            ("hello", "hello-2.12", false),
            ("*", "", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
        ] {
            assert_eq!(
                glob(pattern.as_bytes(), name.as_bytes()),
                want,
                "{pattern} {name}"
            );
        }
    }

    #[test]
    fn names_are_checked_after_the_hash() {
        let policy = Policy {
            never: vec!["*-secret*".into(), "*.key".into()],
            ..Policy::default()
        };
        assert!(!policy.shares_everything());
        assert!(!policy.name_allowed("65hpr3iwgygz9ahgnagy7f6cnlmphkxm-db-secret-x"));
        assert!(!policy.name_allowed("65hpr3iwgygz9ahgnagy7f6cnlmphkxm-wg.key"));
        assert!(policy.name_allowed("65hpr3iwgygz9ahgnagy7f6cnlmphkxm-hello-2.12"));
    }
}
