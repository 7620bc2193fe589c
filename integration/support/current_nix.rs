//! Placeholder until the current-Nix module lands.
use std::path::{Path, PathBuf};
use std::process::Command;
pub fn root() -> Option<PathBuf> {
    None
}
pub fn command(
    _netns: &str,
    _nix_dir: &Path,
    _root: &Path,
    program: &str,
    _args: &[&str],
) -> Command {
    Command::new(program)
}
