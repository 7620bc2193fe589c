//! The Nix command line, as far as Peerix asks it about the local store:
//! which paths are valid, and a valid path's metadata. Only interfaces
//! that are stable from Nix 2.4 to today (and in Lix) are used.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::narinfo::{self, basename_of, NarInfo, STORE_DIR};

/// A Nix command that could not be run or did not answer as expected.
#[derive(Clone, Debug)]
pub enum NixError {
    /// The command could not be started, or the store directory read.
    Io(String),
    /// The command ran and failed.
    Failed { command: String, stderr: String },
    /// The command's output was not what this version of Peerix expects.
    Output { command: String, problem: String },
}

impl fmt::Display for NixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NixError::Io(m) => f.write_str(m),
            NixError::Failed { command, stderr } => {
                write!(f, "`{command}` failed: {}", stderr.trim())
            }
            NixError::Output { command, problem } => {
                write!(f, "unexpected output from `{command}`: {problem}")
            }
        }
    }
}

impl std::error::Error for NixError {}

/// A store path's metadata: the narinfo of the raw NAR, without a URL (a
/// route gives it one; see `NarInfo::served_at`).
pub type PathInfo = NarInfo;

/// Starts `program args… PATHS…`, the paths being `basenames` in
/// `store_dir`, with its output captured.
fn start(
    program: &str,
    args: &[&str],
    store_dir: &Path,
    basenames: &[&str],
) -> Result<Child, NixError> {
    Command::new(program)
        .args(args)
        .args(basenames.iter().map(|b| store_dir.join(b)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NixError::Io(format!("cannot run {program}: {e}")))
}

/// Waits for a command from `start`: its output, or `Ok(None)` when it
/// failed because a path it was given is not valid.
fn finish(child: Child, command: &str) -> Result<Option<Output>, NixError> {
    let output = child
        .wait_with_output()
        .map_err(|e| NixError::Io(format!("{command}: {e}")))?;
    if output.status.success() {
        return Ok(Some(output));
    }
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if stderr.contains("is not valid") {
        return Ok(None);
    }
    Err(NixError::Failed {
        command: command.into(),
        stderr,
    })
}

/// The subset of `names` (basenames in `store_dir`) that are not valid paths.
pub fn invalid_paths(store_dir: &Path, names: &[&str]) -> Result<HashSet<String>, NixError> {
    if names.is_empty() {
        return Ok(HashSet::new());
    }
    let args = ["--check-validity", "--print-invalid"];
    let command = "nix-store --check-validity";
    let child = start("nix-store", &args, store_dir, names)?;
    let output = finish(child, command)?.ok_or_else(|| NixError::Output {
        command: command.into(),
        problem: "it refused a path instead of printing it".into(),
    })?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(str::to_owned)
        .collect())
}

/// Asks Nix for the metadata of valid paths (basenames): `nix-store
/// --dump-db` for hash, size, deriver and references, and `nix path-info
/// --sigs` for signatures and CA, run side by side, once for all of them.
/// `Ok(None)` when one of them is not valid.
pub fn path_infos(basenames: &[&str]) -> Result<Option<Vec<PathInfo>>, NixError> {
    // Without arguments `nix-store --dump-db` dumps the whole database.
    if basenames.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let dir = Path::new(STORE_DIR);
    let sigs_args = [
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--sigs",
    ];
    let db = start("nix-store", &["--dump-db"], dir, basenames)?;
    let sigs = start("nix", &sigs_args, dir, basenames)?;
    let (db, sigs) = (
        finish(db, "nix-store --dump-db"),
        finish(sigs, "nix path-info --sigs"),
    );
    let (Some(db), Some(sigs)) = (db?, sigs?) else {
        return Ok(None);
    };
    let unexpected = |problem: String| NixError::Output {
        command: "nix-store --dump-db".into(),
        problem,
    };
    let text = String::from_utf8_lossy(&db.stdout);
    let mut lines = text.lines().peekable();
    let mut infos = Vec::with_capacity(basenames.len());
    while lines.peek().is_some() {
        infos.push(parse_dump_db(&mut lines).map_err(unexpected)?);
    }
    let sigs = parse_sigs(&String::from_utf8_lossy(&sigs.stdout));
    for (info, wanted) in infos.iter_mut().zip(basenames) {
        if info.path != *wanted {
            return Err(unexpected(format!("asked for {wanted}, got {}", info.path)));
        }
        if let Some((sigs, ca)) = sigs.get(&info.path) {
            (info.sigs, info.ca) = (sigs.clone(), ca.clone());
        }
    }
    if infos.len() != basenames.len() {
        return Err(unexpected(format!(
            "{} paths for {} asked",
            infos.len(),
            basenames.len()
        )));
    }
    Ok(Some(infos))
}

/// The metadata of one valid path; see `path_infos`.
pub fn path_info(basename: &str) -> Result<Option<PathInfo>, NixError> {
    Ok(path_infos(&[basename])?.and_then(|mut infos| infos.pop()))
}

/// The basenames of the closure of valid paths (`nix-store -qR`), the
/// paths themselves included; `Ok(None)` when one of them is not valid.
pub fn closure(basenames: &[&str]) -> Result<Option<Vec<String>>, NixError> {
    if basenames.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let child = start("nix-store", &["-qR"], Path::new(STORE_DIR), basenames)?;
    let Some(output) = finish(child, "nix-store -qR")? else {
        return Ok(None);
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| basename_of(l).map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(|problem| NixError::Output {
            command: "nix-store -qR".into(),
            problem,
        })
}

/// Parses one registration of `nix-store --dump-db`: the path, its NAR
/// hash (hex), NAR size, deriver (or an empty line), the number of
/// references, then the references, one line each.
fn parse_dump_db<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Result<PathInfo, String> {
    let mut next = |what: &str| lines.next().ok_or(format!("missing {what}"));
    let path = basename_of(next("path")?)?.to_owned();
    let hash = next("NAR hash")?;
    let nar_hash = narinfo::parse_sha256(&format!("sha256:{hash}"))?;
    let nar_size = next("NAR size")?
        .parse()
        .map_err(|_| "NAR size is not a number".to_string())?;
    let deriver = match next("deriver")? {
        "" => None,
        d => Some(basename_of(d)?.to_owned()),
    };
    let count: usize = next("reference count")?
        .parse()
        .map_err(|_| "reference count is not a number".to_string())?;
    let mut references = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        references.push(basename_of(next("reference")?)?.to_owned());
    }
    Ok(PathInfo {
        path,
        url: String::new(),
        compression: "none".into(),
        nar_hash,
        nar_size,
        references,
        deriver,
        sigs: Vec::new(),
        ca: None,
    })
}

/// Parses `nix path-info --sigs`: per path, `PATH<TAB>[ultimate] [ca:…]
/// [sig…]`; by basename.
fn parse_sigs(text: &str) -> HashMap<String, (Vec<String>, Option<String>)> {
    let mut found = HashMap::new();
    for line in text.lines() {
        let (path, fields) = line.split_once('\t').unwrap_or((line, ""));
        let Ok(basename) = basename_of(path.trim()) else {
            continue;
        };
        let mut sigs = Vec::new();
        let mut ca = None;
        for field in fields.split(' ').filter(|f| !f.is_empty()) {
            if field == "ultimate" {
                continue;
            } else if let Some(c) = field.strip_prefix("ca:") {
                ca = Some(c.to_owned());
            } else if field.contains(':') {
                sigs.push(field.to_owned());
            }
        }
        found.insert(basename.to_owned(), (sigs, ca));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dump_db_as_nix_prints_it() {
        // `nix-store --dump-db` of a path with one reference (Nix 2.8).
        let text = "/nix/store/awrccy8w2v4v74m9ipglpniq94nkh3x4-vec-top
7c87fe167a557088463e1dfda6db5bb977e5749a8becb938be54b80e6b067692
168
/nix/store/pmmgx7l9m9i70nghxhk7dn97qpnswj2j-vec-top.drv
1
/nix/store/65hpr3iwgygz9ahgnagy7f6cnlmphkxm-vec-dep
";
        let info = parse_dump_db(&mut text.lines()).unwrap();
        assert_eq!(info.path, "awrccy8w2v4v74m9ipglpniq94nkh3x4-vec-top");
        assert_eq!(info.nar_size, 168);
        assert_eq!(
            info.deriver.as_deref(),
            Some("pmmgx7l9m9i70nghxhk7dn97qpnswj2j-vec-top.drv")
        );
        assert_eq!(
            info.references,
            ["65hpr3iwgygz9ahgnagy7f6cnlmphkxm-vec-dep"]
        );
        assert_eq!(
            crate::nix32::encode(&info.nar_hash),
            "14kn0rmhxf2lpqwbkv4bk9sfaxxrbgdsdz8x7r38hw2mg8bgx1vw"
        );
        // No deriver, no references (a `nix-store --add` path).
        let text = "/nix/store/hp4xhizqijy1k440fq06xfq6xpl37pf6-h.txt
1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13
120

0
";
        let info = parse_dump_db(&mut text.lines()).unwrap();
        assert_eq!(info.deriver, None);
        assert!(info.references.is_empty());
        assert!(parse_dump_db(&mut "/nix/store/x\n".lines()).is_err());
        assert!(parse_dump_db(&mut text.replace("\n0\n", "\n3\n").lines()).is_err());
    }

    #[test]
    fn reads_sigs_and_ca() {
        let all = parse_sigs(
            "/nix/store/hp4xhizqijy1k440fq06xfq6xpl37pf6-h.txt\tultimate ca:fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw a-1:AAAA b-1:BBBB\n\
             /nix/store/awrccy8w2v4v74m9ipglpniq94nkh3x4-vec-top\t\n",
        );
        let (sigs, ca) = all["hp4xhizqijy1k440fq06xfq6xpl37pf6-h.txt"].clone();
        assert_eq!(
            ca.as_deref(),
            Some("fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw")
        );
        assert_eq!(sigs, ["a-1:AAAA", "b-1:BBBB"]);
        assert_eq!(
            all["awrccy8w2v4v74m9ipglpniq94nkh3x4-vec-top"],
            (vec![], None)
        );
        assert!(parse_sigs("").is_empty());
    }
}
