//! A current Nix client (Debian sid's `nix-bin`, 2.34.x) next to the
//! machine's Nix 2.8, for checking peerix against today's client behaviour.
//!
//! `integration/setup-current-nix` prepares a Debian sid root with `nix-bin`
//! in it (once; it is reused across runs). [`command`] runs a program from
//! that root inside a test host: in the host's network namespace, with the
//! host's store on `/nix`, chrooted into the root. Tests call [`root`] first
//! and skip the current-client part with a message when it is `None`.
//!
//! Like every Nix command of the tests, it reads the test host's own
//! `nix.conf` (`NIX_CONF_DIR`, see `Host::nix_conf_dir`), never the root's or
//! the machine's `/etc/nix`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the setup script puts the root unless `PEERIX_CURRENT_NIX_ROOT` says
/// otherwise.
pub const DEFAULT_ROOT: &str = "/var/cache/peerix-test/nix-current";
/// Stamp file in a finished root (holds `nix-store --version`'s output); the
/// same name as in `integration/setup-current-nix`.
const STAMP: &str = ".peerix-current-nix-ready";
/// What `PATH` is inside the root.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The prepared root (`$PEERIX_CURRENT_NIX_ROOT`, default [`DEFAULT_ROOT`]),
/// or `None` if `integration/setup-current-nix` has not finished there.
pub fn root() -> Option<PathBuf> {
    let root = std::env::var_os("PEERIX_CURRENT_NIX_ROOT")
        .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from);
    root.join(STAMP).is_file().then_some(root)
}

/// `nix-store --version` of the Nix in `root` as recorded by the setup
/// script, e.g. `nix-store (Nix) 2.34.8`.
pub fn version(root: &Path) -> String {
    std::fs::read_to_string(root.join(STAMP))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A command running `program args…` from the current Nix inside a test
/// host: `ip netns exec NETNS unshare -m --propagation private sh -c …`,
/// where the script bind-mounts `nix_dir` onto `/nix` and onto `ROOT/nix`,
/// mounts proc on `ROOT/proc`, binds `/dev` onto `ROOT/dev` and the machine's
/// temporary directory (which holds the test hosts' directories) onto the
/// same path in the root, then `exec chroot ROOT program args…`. The mounts
/// live in the command's private mount namespace and vanish with it.
///
/// Environment: the host's `nix.conf` (`NIX_CONF_DIR` = `etc-nix` next to
/// `nix_dir`), `NIX_REMOTE=local`, a standard `PATH`, and `HOME` /
/// `XDG_CONFIG_HOME` / `XDG_CACHE_HOME` set to `home` / `config` / `cache`
/// next to `nix_dir` (like `Host::cmd`: Nix's narinfo cache is per host,
/// never shared through the root). The caller may override any of them.
/// Stdin is null.
pub fn command(netns: &str, nix_dir: &Path, root: &Path, program: &str, args: &[&str]) -> Command {
    let host_dir = nix_dir.parent().unwrap_or(Path::new("/"));
    let script = r#"set -e
nix=$1 root=$2 tmp=$3
shift 3
mount --bind "$nix" /nix
mkdir -p "$root/nix" "$root$tmp"
mount --bind "$nix" "$root/nix"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount --bind "$tmp" "$root$tmp"
exec chroot "$root" "$@""#;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns])
        .args(["unshare", "-m", "--propagation", "private"])
        .args(["sh", "-c", script, "sh"])
        .arg(nix_dir)
        .arg(root)
        .arg(std::env::temp_dir())
        .arg(program)
        .args(args)
        .env_remove("NIX_CONFIG")
        .env("NIX_CONF_DIR", host_dir.join("etc-nix"))
        .env(
            "NIX_USER_CONF_FILES",
            host_dir.join("etc-nix").join("user.conf"),
        )
        .env("NIX_REMOTE", "local")
        .env("PATH", PATH)
        .env("HOME", host_dir.join("home"))
        .env("XDG_CONFIG_HOME", host_dir.join("config"))
        .env("XDG_CONFIG_DIRS", host_dir.join("config"))
        .env("XDG_CACHE_HOME", host_dir.join("cache"))
        .stdin(Stdio::null());
    c
}
