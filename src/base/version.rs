//! What this build is: the version and, when known, the git commit it was
//! built from (see src/build.rs), for `--version`, `/status` and
//! `/metrics`.

/// The version of the daemon, as `--version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the daemon was built from, when known (see src/build.rs).
pub const COMMIT: Option<&str> = option_env!("PEERIX_COMMIT");

/// `peerix 0.2.0 (commit 1a2b3c4d5e6f)`, or without the commit.
pub fn version_line() -> String {
    match COMMIT {
        Some(commit) => format!("peerix {VERSION} (commit {commit})"),
        None => format!("peerix {VERSION}"),
    }
}
