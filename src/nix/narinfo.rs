//! The `.narinfo` text: the value a binary cache serves for a store path,
//! rendered for Nix clients and parsed (strictly, with bounds) when it comes
//! from a peer. Also the fingerprint that signatures cover.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::nix::keys::{PublicKey, SigningKey};
use crate::nix::nix32;

/// The store directory every narinfo is relative to.
pub const STORE_DIR: &str = "/nix/store";

/// Largest narinfo accepted from a peer. A path with thousands of
/// references stays well below it.
pub const MAX_LEN: usize = 256 * 1024;

/// A store path hash part: 32 characters of nix32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashPart([u8; 32]);

impl HashPart {
    /// Parses exactly 32 nix32 characters.
    pub fn parse(text: &str) -> Option<HashPart> {
        let bytes: [u8; 32] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|&c| nix32::is_digit(c))
            .then_some(HashPart(bytes))
    }

    /// The hash part of a store path basename `<hash>-<name>`.
    pub fn of_basename(basename: &str) -> Option<HashPart> {
        check_basename(basename).ok()?;
        HashPart::parse(&basename[..32])
    }

    pub fn as_str(&self) -> &str {
        // Only nix32 digits are ever stored, which are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for HashPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for HashPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a store path basename: `<32 nix32>-<name>`, with Nix's rules for
/// the name (at most 211 characters of `A-Za-z0-9+-._?=`, not starting
/// with a dot).
pub fn check_basename(basename: &str) -> Result<(), String> {
    let b = basename.as_bytes();
    if b.len() < 34 || b[32] != b'-' {
        return Err(format!("{basename:?} is not <hash>-<name>"));
    }
    if !b[..32].iter().all(|&c| nix32::is_digit(c)) {
        return Err(format!("{basename:?} has a hash part that is not nix32"));
    }
    let name = &b[33..];
    let name_ok = name.len() <= 211
        && name[0] != b'.'
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c));
    if !name_ok {
        return Err(format!("{basename:?} has an invalid name"));
    }
    Ok(())
}

/// The basename of a full store path, checked.
pub fn basename_of(path: &str) -> Result<&str, String> {
    let base = path
        .strip_prefix(STORE_DIR)
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(|| format!("{path:?} is not in {STORE_DIR}"))?;
    check_basename(base)?;
    Ok(base)
}

/// True for a NAR URL that is a plain path relative to the cache it came
/// from: no scheme, no host, no `..`, no query; the only URLs fetched.
pub fn is_plain_relative_url(url: &str) -> bool {
    !url.is_empty()
        && !url.starts_with('/')
        && !url.contains("..")
        && (url.bytes()).all(|c| c.is_ascii_alphanumeric() || b"._-+=/".contains(&c))
}

/// A narinfo's content. `nar_hash` is the 32-byte sha256 of the NAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    /// Basename of the store path (`<hash>-<name>`).
    pub path: String,
    pub url: String,
    pub compression: String,
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Basenames of the references, in the order given.
    pub references: Vec<String>,
    /// Basename of the deriver, if known.
    pub deriver: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

/// Why a narinfo text was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid narinfo: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

impl NarInfo {
    pub fn hash_part(&self) -> HashPart {
        HashPart::of_basename(&self.path).expect("NarInfo.path is always a checked basename")
    }

    /// The narinfo this node serves for a path of its own store (`self`,
    /// as the store knows it): the NAR at `url`, the path's existing
    /// signatures and this node's by each of `keys` (its own, the LAN's).
    pub fn served_at<'a>(
        &self,
        url: String,
        keys: impl IntoIterator<Item = &'a SigningKey>,
    ) -> NarInfo {
        let mut narinfo = NarInfo {
            url,
            ..self.clone()
        };
        for key in keys {
            narinfo.sign(key);
        }
        narinfo
    }

    /// The text signatures cover:
    /// `1;<path>;sha256:<nix32>;<size>;<sorted full reference paths>`.
    pub fn fingerprint(&self) -> String {
        let mut refs: Vec<String> = self
            .references
            .iter()
            .map(|r| format!("{STORE_DIR}/{r}"))
            .collect();
        refs.sort();
        format!(
            "1;{STORE_DIR}/{};sha256:{};{};{}",
            self.path,
            nix32::encode(&self.nar_hash),
            self.nar_size,
            refs.join(",")
        )
    }

    /// Adds this node's signature, unless the path already carries a valid
    /// one. A signature in this key's name that does not verify (an older
    /// key of the same name, say) is replaced.
    pub fn sign(&mut self, key: &SigningKey) {
        let fingerprint = self.fingerprint();
        let public = key.public_key();
        if self.sigs.iter().any(|s| public.verifies(&fingerprint, s)) {
            return;
        }
        let prefix = format!("{}:", key.name());
        self.sigs.retain(|s| !s.starts_with(&prefix));
        self.sigs.push(key.sign(&fingerprint));
    }

    /// This narinfo as it is handed to the local Nix, its NAR at `url`:
    /// only what Nix reads and every Nix parses (signatures of the wrong
    /// form are dropped; the file hash and size, which described another
    /// file, are not rendered).
    pub fn for_nix(&self, url: String) -> NarInfo {
        NarInfo {
            url,
            compression: "none".into(),
            sigs: (self.sigs.iter())
                .filter(|s| crate::nix::keys::is_signature(s))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// True when one of the signatures is valid for one of `keys`.
    pub fn signed_by_any(&self, keys: &[PublicKey]) -> bool {
        let fingerprint = self.fingerprint();
        self.sigs
            .iter()
            .any(|sig| keys.iter().any(|k| k.verifies(&fingerprint, sig)))
    }

    /// The narinfo text as Nix clients read it.
    pub fn render(&self) -> String {
        let mut out = format!(
            "StorePath: {STORE_DIR}/{}\nURL: {}\nCompression: {}\nNarHash: sha256:{}\nNarSize: {}\nReferences: {}\n",
            self.path,
            self.url,
            self.compression,
            nix32::encode(&self.nar_hash),
            self.nar_size,
            self.references.join(" "),
        );
        if let Some(deriver) = &self.deriver {
            out.push_str(&format!("Deriver: {deriver}\n"));
        }
        for sig in &self.sigs {
            out.push_str(&format!("Sig: {sig}\n"));
        }
        if let Some(ca) = &self.ca {
            out.push_str(&format!("CA: {ca}\n"));
        }
        out
    }

    /// Parses a narinfo as a peer serves it. Strict where Nix is strict
    /// (required fields, store paths, hashes), bounded in size, and never
    /// panics: anything odd is a `ParseError`.
    pub fn parse(text: &str) -> Result<NarInfo, ParseError> {
        let err = |m: String| ParseError(m);
        if text.len() > MAX_LEN {
            return Err(err(format!("longer than {MAX_LEN} bytes")));
        }
        let (mut path, mut url, mut compression) = (None, None, None);
        let (mut nar_hash, mut nar_size, mut references) = (None, None, Vec::new());
        let (mut deriver, mut sigs, mut ca) = (None, Vec::new(), None);
        for line in text.split('\n') {
            if line.is_empty() {
                continue;
            }
            if line.chars().any(char::is_control) {
                return Err(err(format!("control character in {:?}", clip(line))));
            }
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
                .ok_or_else(|| err(format!("line without ': ' {:?}", clip(line))))?;
            match key {
                "StorePath" => path = Some(basename_of(value).map_err(err)?.to_owned()),
                "URL" => url = Some(value.to_owned()),
                "Compression" => compression = Some(value.to_owned()),
                "NarHash" => nar_hash = Some(parse_sha256(value).map_err(err)?),
                "NarSize" => {
                    nar_size = Some(
                        Some(value)
                            .filter(|v| v.bytes().all(|c| c.is_ascii_digit()))
                            .and_then(|v| v.parse::<u64>().ok())
                            .filter(|&n| n > 0)
                            .ok_or_else(|| err(format!("NarSize {:?}", clip(value))))?,
                    )
                }
                "References" => {
                    for r in value.split(' ').filter(|r| !r.is_empty()) {
                        check_basename(r).map_err(err)?;
                        references.push(r.to_owned());
                    }
                }
                "Deriver" if value != "unknown-deriver" && !value.is_empty() => {
                    check_basename(value).map_err(err)?;
                    deriver = Some(value.to_owned());
                }
                "Sig" => sigs.push(value.to_owned()),
                "CA" if !value.is_empty() => {
                    check_content_address(value).map_err(err)?;
                    ca = Some(value.to_owned())
                }
                _ => {}
            }
        }
        let missing = |f: &str| err(format!("no {f} field"));
        let url: String = url.ok_or_else(|| missing("URL"))?;
        if url.is_empty() {
            return Err(missing("URL"));
        }
        Ok(NarInfo {
            path: path.ok_or_else(|| missing("StorePath"))?,
            url,
            // A narinfo without Compression means bzip2 to Nix.
            compression: compression.unwrap_or_else(|| "bzip2".into()),
            nar_hash: nar_hash.ok_or_else(|| missing("NarHash"))?,
            nar_size: nar_size.ok_or_else(|| missing("NarSize"))?,
            references,
            deriver,
            sigs,
            ca,
        })
    }
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Checks a content address in the forms every Nix from 2.3 on parses:
/// `text:sha256:<hash>` and `fixed:[r:]<algorithm>:<hash>`, the hash in
/// nix32, hex or base64 of the algorithm's length.
pub fn check_content_address(ca: &str) -> Result<(), String> {
    let bad = |why: &str| format!("CA {:?}: {why}", clip(ca));
    let (method, rest) = ca.split_once(':').ok_or_else(|| bad("not METHOD:…"))?;
    let rest = match method {
        "text" => rest,
        "fixed" => rest.strip_prefix("r:").unwrap_or(rest),
        _ => return Err(bad("the method is neither text nor fixed")),
    };
    let (algorithm, digest) = rest.split_once(':').ok_or_else(|| bad("no hash"))?;
    let size: usize = match algorithm {
        "md5" => 16,
        "sha1" => 20,
        "sha256" => 32,
        "sha512" => 64,
        _ => return Err(bad("unknown hash algorithm")),
    };
    if method == "text" && algorithm != "sha256" {
        return Err(bad("a text hash is sha256"));
    }
    let nix32_len = (size * 8).div_ceil(5);
    let ok = match digest.len() {
        n if n == 2 * size => digest.bytes().all(|c| c.is_ascii_hexdigit()),
        n if n == nix32_len => digest.bytes().all(nix32::is_digit),
        n if n == size.div_ceil(3) * 4 => STANDARD.decode(digest).is_ok_and(|b| b.len() == size),
        _ => false,
    };
    match ok {
        true => Ok(()),
        false => Err(bad("the hash has the wrong form or length")),
    }
}

/// Parses a sha256 in any form Nix writes: `sha256:` + nix32, hex or
/// base64, or SRI `sha256-<base64>`.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let bad = || format!("NarHash {:?} is not a sha256", clip(text));
    let digest = text
        .strip_prefix("sha256:")
        .or_else(|| text.strip_prefix("sha256-"))
        .ok_or_else(bad)?;
    match digest.len() {
        52 => nix32::decode::<32>(digest).ok_or_else(bad),
        64 if digest.bytes().all(|c| c.is_ascii_hexdigit()) => {
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(digest.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                    .map_err(|_| bad())?;
            }
            Ok(out)
        }
        44 => STANDARD
            .decode(digest)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `nix copy --to file://…` (Nix 2.8) after `nix store sign`.
    const FROM_NIX: &str = "StorePath: /nix/store/awrccy8w2v4v74m9ipglpniq94nkh3x4-vec-top
URL: nar/1l6x3s1mh6bdwb4p2vf6mak79ahmz1qjnfsjgax9ydby84ncfirc.nar.xz
Compression: xz
FileHash: sha256:1l6x3s1mh6bdwb4p2vf6mak79ahmz1qjnfsjgax9ydby84ncfirc
FileSize: 172
NarHash: sha256:14kn0rmhxf2lpqwbkv4bk9sfaxxrbgdsdz8x7r38hw2mg8bgx1vw
NarSize: 168
References: 65hpr3iwgygz9ahgnagy7f6cnlmphkxm-vec-dep
Deriver: pmmgx7l9m9i70nghxhk7dn97qpnswj2j-vec-top.drv
Sig: test-upstream-1:HlHn9ZyiYEa4PaQsRuSGFxur+CjjWVblTMAff9j5jmi5acjU82zth/yAOIjU3A8GPnfzu8Fc/QMws1x81XwSDg==
";
    const PUBLIC: &str = "test-upstream-1:0IdHCyajRFc9zVYEvs2f06MTRYYfVxeGnvZ4Hn/hVuU=";
    const SECRET: &str = "test-upstream-1:yqwdjQ38E5tWOwEPB7y8GsP4a8HXURuORSA7fiqe40XQh0cLJqNEVz3NVgS+zZ/ToxNFhh9XF4ae9ngef+FW5Q==";

    #[test]
    fn parses_what_nix_writes_and_checks_its_signature() {
        let info = NarInfo::parse(FROM_NIX).unwrap();
        assert_eq!(info.path, "awrccy8w2v4v74m9ipglpniq94nkh3x4-vec-top");
        assert_eq!(
            info.hash_part().as_str(),
            "awrccy8w2v4v74m9ipglpniq94nkh3x4"
        );
        assert_eq!(info.nar_size, 168);
        assert_eq!(
            info.references,
            ["65hpr3iwgygz9ahgnagy7f6cnlmphkxm-vec-dep"]
        );
        assert_eq!(
            info.fingerprint(),
            "1;/nix/store/awrccy8w2v4v74m9ipglpniq94nkh3x4-vec-top;\
             sha256:14kn0rmhxf2lpqwbkv4bk9sfaxxrbgdsdz8x7r38hw2mg8bgx1vw;168;\
             /nix/store/65hpr3iwgygz9ahgnagy7f6cnlmphkxm-vec-dep"
        );
        assert!(info.signed_by_any(&[PublicKey::parse(PUBLIC).unwrap()]));
    }

    #[test]
    fn renders_what_it_parses() {
        let mut info = NarInfo::parse(FROM_NIX).unwrap();
        info.url = "nar/awrccy8w2v4v74m9ipglpniq94nkh3x4.nar".into();
        info.compression = "none".into();
        info.ca =
            Some("fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw".into());
        let text = info.render();
        assert!(text.ends_with('\n') && !text.contains("\n\n") && !text.contains('\r'));
        assert!(text.contains("Compression: none\n"));
        assert!(
            text.contains("NarHash: sha256:14kn0rmhxf2lpqwbkv4bk9sfaxxrbgdsdz8x7r38hw2mg8bgx1vw\n")
        );
        assert_eq!(NarInfo::parse(&text).unwrap(), info);
    }

    #[test]
    fn an_empty_reference_list_keeps_its_space() {
        let mut info = NarInfo::parse(FROM_NIX).unwrap();
        info.references.clear();
        assert!(info.render().contains("\nReferences: \n"));
        assert!(info.fingerprint().ends_with(";168;"));
    }

    #[test]
    fn signing_keeps_existing_signatures_and_adds_ours_once() {
        let mut info = NarInfo::parse(FROM_NIX).unwrap();
        let before = info.sigs.clone();
        let ours = SigningKey::parse(
            "node-1:GiyaBAJsHSYtfKaXbfE4sW+HzE8PuA1aSEzg/PJObwbyn0Gyi5nn6evs5LcRhwFpEQ1KGKQOAvSMomjS+GcjSA==",
        )
        .unwrap();
        info.sign(&ours);
        info.sign(&ours);
        assert_eq!(info.sigs.len(), 2);
        assert_eq!(info.sigs[0], before[0]);
        assert!(info.signed_by_any(&[ours.public_key()]));
        // Re-signing with the upstream key adds nothing: it already signed.
        info.sign(&SigningKey::parse(SECRET).unwrap());
        assert_eq!(info.sigs.len(), 2);
    }

    #[test]
    fn served_narinfo_is_signed_with_every_key_given() {
        let info = NarInfo::parse(FROM_NIX).unwrap();
        let ours = SigningKey::parse(
            "node-1:GiyaBAJsHSYtfKaXbfE4sW+HzE8PuA1aSEzg/PJObwbyn0Gyi5nn6evs5LcRhwFpEQ1KGKQOAvSMomjS+GcjSA==",
        )
        .unwrap();
        let lan = SigningKey::from_seed(&[7; 32], |_| "peerix-lan-test".into());
        let served = info.served_at("nar/x.nar".into(), [&ours, &lan]);
        assert_eq!(served.url, "nar/x.nar");
        assert_eq!(served.sigs.len(), 3, "{:?}", served.sigs);
        for key in [&ours, &lan] {
            assert!(served.signed_by_any(&[key.public_key()]), "{}", key.name());
        }
        assert_eq!(info.served_at("x".into(), []).sigs, info.sigs);
    }

    #[test]
    fn a_signature_in_our_name_that_does_not_verify_is_replaced() {
        let ours = SigningKey::parse(
            "node-1:GiyaBAJsHSYtfKaXbfE4sW+HzE8PuA1aSEzg/PJObwbyn0Gyi5nn6evs5LcRhwFpEQ1KGKQOAvSMomjS+GcjSA==",
        )
        .unwrap();
        let mut info = NarInfo::parse(FROM_NIX).unwrap();
        let stale = format!("node-1:{}", STANDARD.encode([7u8; 64]));
        info.sigs.push(stale.clone());
        info.sign(&ours);
        assert!(!info.sigs.contains(&stale), "{:?}", info.sigs);
        assert_eq!(info.sigs.len(), 2);
        assert!(info.signed_by_any(&[ours.public_key()]));
    }

    #[test]
    fn content_addresses_are_checked_as_nix_parses_them() {
        let sha256 = "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw";
        let hex = "7c87fe167a557088463e1dfda6db5bb977e5749a8becb938be54b80e6b067692";
        let b64 = STANDARD.encode([1u8; 32]);
        for good in [
            format!("fixed:r:sha256:{sha256}"),
            format!("fixed:sha256:{hex}"),
            format!("text:sha256:{sha256}"),
            format!("fixed:r:sha256:{b64}"),
            "fixed:sha1:0123456789abcdef0123456789abcdef01234567".into(),
            "fixed:md5:0123456789abcdfghijklmnpqr".into(),
        ] {
            assert_eq!(check_content_address(&good), Ok(()), "{good}");
            let text = FROM_NIX.replace("Sig:", &format!("CA: {good}\nSig:"));
            assert_eq!(NarInfo::parse(&text).unwrap().ca.as_deref(), Some(&*good));
        }
        for bad in [
            "garbage:xyz".to_string(),
            "fixed:xyz".into(),
            format!("text:sha1:{hex}"),
            format!("fixed:r:sha256:{}", &sha256[1..]),
            format!("fixed:git:sha1:{hex}"),
            format!("fixed:r:blake3:{sha256}"),
            format!("fixed:r:sha256:{}", hex.replace('7', "g")),
        ] {
            assert!(check_content_address(&bad).is_err(), "{bad}");
            let text = FROM_NIX.replace("Sig:", &format!("CA: {bad}\nSig:"));
            assert!(NarInfo::parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_nix_gets_has_only_well_formed_signatures_and_no_file_fields() {
        let mut info = NarInfo::parse(FROM_NIX).unwrap();
        info.sigs.push("garbage".into());
        info.sigs.push("k:c2hvcnQ=".into());
        let text = info.for_nix("nar/x.nar".into()).render();
        assert_eq!(text.matches("Sig: ").count(), 1, "{text}");
        assert!(text.contains("Compression: none\n"));
        assert!(!text.contains("FileHash") && !text.contains("FileSize"));
        assert!(text.contains("URL: nar/x.nar\n"));
    }

    #[test]
    fn hashes_parse_in_every_form() {
        let nix32 =
            parse_sha256("sha256:14kn0rmhxf2lpqwbkv4bk9sfaxxrbgdsdz8x7r38hw2mg8bgx1vw").unwrap();
        let hex =
            parse_sha256("sha256:7c87fe167a557088463e1dfda6db5bb977e5749a8becb938be54b80e6b067692")
                .unwrap();
        let sri = parse_sha256(&format!("sha256-{}", STANDARD.encode(nix32))).unwrap();
        assert_eq!(nix32, hex);
        assert_eq!(nix32, sri);
        assert!(parse_sha256("md5:abc").is_err());
        assert!(parse_sha256(&format!(
            "sha256:+{}",
            &"7c87fe167a557088463e1dfda6db5bb977e5749a8becb938be54b80e6b067692"[1..]
        ))
        .is_err());
        assert!(parse_sha256(
            "sha256:zz87fe167a557088463e1dfda6db5bb977e5749a8becb938be54b80e6b067692"
        )
        .is_err());
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        let cases = [
            "",
            "garbage",
            "StorePath /nix/store/x\n",
            &FROM_NIX.replace("StorePath: /nix/store/", "StorePath: /etc/"),
            &FROM_NIX.replace("NarSize: 168", "NarSize: 0"),
            &FROM_NIX.replace("NarSize: 168", "NarSize: -1"),
            &FROM_NIX.replace("NarSize: 168", "NarSize: +168"),
            &FROM_NIX.replace("URL: nar/", "URL: \rnar/"),
            &FROM_NIX.replace("Compression: xz\n", "Compression: xz\r\r\n"),
            &format!("{FROM_NIX}Sig: s\r"),
            &FROM_NIX.replace("sha256:14kn", "sha256:14k"),
            &FROM_NIX.replace("References: 65hp", "References: ../../etc"),
            &FROM_NIX.replace("URL: nar/", "X: "),
            &"x".repeat(MAX_LEN + 1),
            "StorePath: /nix/store/\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}-x\n",
        ];
        for text in cases {
            assert!(NarInfo::parse(text).is_err(), "accepted {:?}", clip(text));
        }
    }

    #[test]
    fn store_path_names_follow_nix_rules() {
        assert!(check_basename("65hpr3iwgygz9ahgnagy7f6cnlmphkxm-vec-dep").is_ok());
        assert!(check_basename("65hpr3iwgygz9ahgnagy7f6cnlmphkxm-.hidden").is_err());
        assert!(check_basename("65hpr3iwgygz9ahgnagy7f6cnlmphkxm-a/b").is_err());
        assert!(check_basename("65hpr3iwgygz9ahgnagy7f6cnlmphkxm").is_err());
        assert!(check_basename("e5hpr3iwgygz9ahgnagy7f6cnlmphkxm-x").is_err());
        assert!(HashPart::parse("65hpr3iwgygz9ahgnagy7f6cnlmphkx").is_none());
        assert!(basename_of("/nix/store/../etc/65hpr3iwgygz9ahgnagy7f6cnlmphkxm-x").is_err());
    }
}
