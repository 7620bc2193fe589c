//! The Nix clients the tests can run in a test host: the machine's own
//! (Debian 12's `nix-bin`, 2.8) and one per Debian root that
//! `integration/support/setup-nix-clients` prepared (reused across runs):
//!
//! | suite | Nix |
//! |---|---|
//! | bullseye | 2.3.7, the oldest client still in use |
//! | trixie | 2.26.3 |
//! | sid | the current one (2.34.x) |
//!
//! [`Client::command`] runs a client's program inside a test host: in the
//! host's network namespace with the host's store on `/nix` (as
//! [`Host::cmd`]), and for a root chrooted into it with that store bound on
//! `ROOT/nix`. Tests skip the clients whose root is missing.
//!
//! Like every Nix command of the tests, a client reads the test host's own
//! `nix.conf` (`NIX_CONF_DIR`, see [`Host::nix_conf_dir`]), never the root's
//! or the machine's `/etc/nix`. Nix 2.3 predates `experimental-features`: it
//! prints "warning: unknown setting 'experimental-features'" and goes on.
//! Its `nix` needs no such setting, and has `copy` and `path-info` but signs
//! with `nix sign-paths` (`nix store sign` came with 2.4); `nix-store -r`
//! and `--delete` are the same in every version. The tests' own helpers
//! (building, signing, copying) use the machine's Nix; the other clients
//! only substitute.

use std::path::PathBuf;
use std::process::Command;

use super::Host;

/// Where the setup script puts the roots unless `PEERIX_NIX_ROOTS` says
/// otherwise: one directory `nix-SUITE` per suite.
pub const DEFAULT_ROOTS: &str = "/var/cache/peerix-test";
/// The suites the setup script prepares, oldest first.
pub const SUITES: [&str; 3] = ["bullseye", "trixie", "sid"];
/// The suite whose Nix is the current one.
pub const CURRENT: &str = "sid";
/// Stamp file in a finished root (holds `nix-store --version`'s output); the
/// same name as in `integration/support/setup-nix-clients`.
const STAMP: &str = ".peerix-nix-client-ready";
/// What `PATH` is inside a root.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Run by `sh -c` inside a host (whose store is on `/nix` already):
/// `$1` is the root, `$2` the machine's temporary directory (which holds the
/// test hosts' directories: their `nix.conf`, caches and scratch files), the
/// rest the command, run with the root ready for `chroot`. The mounts live
/// in the host command's private mount namespace and vanish with it.
const MOUNT_ROOT: &str = r#"set -e
root=$1 tmp=$2
shift 2
mount --bind /nix "$root/nix"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mkdir -p "$root$tmp"
mount --bind "$tmp" "$root$tmp"
exec "$@""#;

/// One Nix client.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host` for the machine's own Nix, else the Debian suite of its root.
    pub name: String,
    /// Its version, e.g. `2.3.7`.
    pub version: String,
    /// The prepared root; `None` for the machine's own Nix.
    root: Option<PathBuf>,
}

impl Client {
    /// E.g. `nix 2.3.7 (bullseye)`.
    pub fn label(&self) -> String {
        format!("nix {} ({})", self.version, self.name)
    }

    /// A command running this client's `program args…` inside `host`, with
    /// the environment of [`Host::cmd`] (the host's `nix.conf`, `HOME`…)
    /// except for `XDG_CACHE_HOME`, which is [`Client::cache_dir`]: Nix's
    /// narinfo cache is per host and client, never shared between versions.
    pub fn command(&self, host: &Host, program: &str, args: &[&str]) -> Command {
        let mut c = match &self.root {
            None => host.cmd(program, args),
            Some(root) => {
                let (root, tmp) = (root.to_str().unwrap(), std::env::temp_dir());
                let mut argv = vec!["-c", MOUNT_ROOT, "sh", root, tmp.to_str().unwrap()];
                argv.extend(["chroot", root, program]);
                argv.extend(args);
                let mut c = host.cmd("sh", &argv);
                c.env("PATH", ROOT_PATH);
                c
            }
        };
        c.env("XDG_CACHE_HOME", self.cache_dir(host));
        c
    }

    /// A peerix node on `host` (as [`Host::spawn_peerix`]) whose `nix-store`
    /// and `nix` are this client's: for a root, wrappers first on its
    /// `PATH` run them chrooted into the root (mounted once, in the node's
    /// own mount namespace), so that the daemon's Nix children (`nix-store
    /// --serve`, `nix config show`) are of that version.
    pub fn spawn_peerix(&self, host: &Host, args: &[&str]) -> super::Daemon {
        let Some(root) = &self.root else {
            return host.spawn_peerix(args);
        };
        let wrappers = host.dir.join(format!("nix-{}", self.name));
        std::fs::create_dir_all(&wrappers).expect("make the wrappers' directory");
        for program in ["nix-store", "nix"] {
            let file = wrappers.join(program);
            let script = format!(
                "#!/bin/sh\nexec chroot {} /usr/bin/{program} \"$@\"\n",
                root.display()
            );
            std::fs::write(&file, script).expect("write a wrapper");
            let status = Command::new("chmod").arg("+x").arg(&file).status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "chmod +x {}",
                file.display()
            );
        }
        let tmp = std::env::temp_dir();
        let wrapper = [
            "sh",
            "-c",
            MOUNT_ROOT,
            "sh",
            root.to_str().unwrap(),
            tmp.to_str().unwrap(),
        ];
        let path = format!(
            "{}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            wrappers.display()
        );
        host.spawn_peerix_with(&wrapper, &[("PATH", &path)], args)
    }

    /// This client's cache directory on `host` (`XDG_CACHE_HOME`), which
    /// holds its narinfo cache; removing it makes the client forget every
    /// narinfo it has seen.
    pub fn cache_dir(&self, host: &Host) -> PathBuf {
        host.dir.join(format!("cache-{}", self.name))
    }
}

/// Every client available: the machine's own Nix (its version asked inside
/// `host`), then the prepared roots, oldest first. A root not prepared is
/// left out with a message saying how to prepare it.
pub fn all(host: &Host) -> Vec<Client> {
    let own = host.run("nix-store --version");
    let mut clients = vec![Client {
        name: "host".into(),
        version: version_in(&own),
        root: None,
    }];
    for suite in SUITES {
        match prepared(suite) {
            Some(client) => clients.push(client),
            None => eprintln!(
                "no Nix client from Debian {suite}: run integration/support/setup-nix-clients {suite}"
            ),
        }
    }
    clients
}

/// The current Nix (Debian sid's), if its root is prepared.
pub fn current() -> Option<Client> {
    prepared(CURRENT)
}

/// The client of `suite`'s root (`$PEERIX_NIX_ROOTS/nix-SUITE`, default
/// under [`DEFAULT_ROOTS`]), or `None` if the setup script has not finished
/// it.
pub fn prepared(suite: &str) -> Option<Client> {
    let roots =
        std::env::var_os("PEERIX_NIX_ROOTS").map_or_else(|| DEFAULT_ROOTS.into(), PathBuf::from);
    let root = roots.join(format!("nix-{suite}"));
    let stamp = std::fs::read_to_string(root.join(STAMP)).ok()?;
    Some(Client {
        name: suite.into(),
        version: version_in(&stamp),
        root: Some(root),
    })
}

/// The version in `nix-store --version`'s output (its last word).
fn version_in(output: &str) -> String {
    output.split_whitespace().last().unwrap_or("?").to_string()
}
