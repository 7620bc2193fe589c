//! Build script: the git commit the daemon is built from, for `--version`
//! and `/status`, when there is one to be had without any build dependency.
//! `PEERIX_COMMIT` from the environment wins (a Nix build has no `.git`;
//! default.nix may set it); else `git rev-parse` in the source tree; else
//! nothing, and the daemon shows its version alone. It never fails a build.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PEERIX_COMMIT");
    let commit = match std::env::var("PEERIX_COMMIT") {
        Ok(commit) => Some(commit),
        Err(_) => from_git(),
    };
    // Only characters that need no escaping anywhere it is shown (a
    // Prometheus label, JSON, HTML).
    let commit = commit.map(|c| {
        c.chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-+._".contains(*c))
            .collect::<String>()
    });
    if let Some(commit) = commit.filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=PEERIX_COMMIT={commit}");
    }
}

/// The short commit of HEAD, and the files to watch so that a new commit
/// (or checkout) runs this script again.
fn from_git() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        out.status.success().then(|| text.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &head])?);
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"])?);
    // Cargo runs a script again every build when a watched file is
    // missing: watch only those that exist.
    for path in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    Some(commit)
}
