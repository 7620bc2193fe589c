//! The command line and the validated configuration it becomes.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use crate::nix::keys::{KeyError, PublicKey, SigningKey};
use crate::peer::framed;
use crate::peer::network_key::NetworkKey;
use crate::store::share::Policy;

/// The port of the original Peerix, for TCP (HTTP) and UDP alike.
pub const DEFAULT_PORT: u16 = 12304;

/// Peerix: a peer-to-peer binary cache for Nix. Every machine on the LAN
/// serves its /nix/store to the others, and substitutes from them through
/// this daemon on localhost.
#[derive(FromArgs, Debug)]
pub struct Args {
    /// the TCP (HTTP) and UDP port, shared by all peers of a LAN (default 12304)
    #[argh(option, default = "DEFAULT_PORT")]
    pub port: u16,

    /// the address to listen on (default: every address, IPv6 and IPv4)
    #[argh(option)]
    pub bind: Option<IpAddr>,

    /// the secret key this node signs narinfo with, as written by
    /// `nix-store --generate-binary-cache-key` (beside the LAN key of
    /// --network-key-file; optional with it)
    #[argh(option)]
    pub private_key: Option<PathBuf>,

    /// how long to wait for peers to answer a query, in milliseconds (default 500)
    #[argh(option, default = "500")]
    pub timeout: u64,

    /// a peer to ask by unicast, HOST or HOST:PORT; repeat for several
    #[argh(option)]
    pub extra_host: Vec<String>,

    /// do not broadcast queries on the LAN; ask only the --extra-host peers
    #[argh(switch)]
    pub no_broadcast: bool,

    /// log debug messages (RUST_LOG takes precedence when set)
    #[argh(switch, short = 'v')]
    pub verbose: bool,

    /// the substituter priority told to the local Nix; lower is tried first (default 20)
    #[argh(option, default = "20")]
    pub priority: u32,

    /// HTTP worker threads for the local Nix, and as many again for peers;
    /// each serves one request at a time (default 32)
    #[argh(option, default = "32")]
    pub threads: usize,

    /// a public key (NAME:BASE64) whose signatures on peers' narinfo the local
    /// Nix accepts, beyond its own trusted-public-keys; repeat for several
    #[argh(option)]
    pub trusted_key: Vec<String>,

    /// share only paths signed by this public key (NAME:BASE64), e.g.
    /// cache.nixos.org's; repeat for several (default: share every path)
    #[argh(option)]
    pub share_signed_by: Vec<String>,

    /// never share paths whose name (after the hash) matches this pattern
    /// (`*` and `?`), nor paths that depend on them; repeat for several
    #[argh(option)]
    pub never_share: Vec<String>,

    /// answers a second to one peer's queries, at most (twice that at once);
    /// 0 for no limit (default 5000)
    #[argh(option, default = "5000")]
    pub answer_rate: u32,

    /// a secret shared by the nodes of this network: every datagram and
    /// every request between peers is authenticated with it, nodes without
    /// it get nothing (original Peerix nodes included), and the narinfo
    /// served to peers is signed with the LAN key derived from it (see
    /// `peerix lan-key`); repeat to move to a new secret: every one is
    /// accepted, the first authenticates and signs what this node sends
    #[argh(option)]
    pub network_key_file: Vec<PathBuf>,

    /// compress NARs between nodes of ours: auto (while the link, not the
    /// CPU, is the bottleneck and the data compresses), always or never
    /// (default auto)
    #[argh(option, default = "framed::Mode::Auto")]
    pub compress: framed::Mode,
    /// never ask original Peerix nodes (their format is broadcast with
    /// every query otherwise): on a LAN of this version only, a miss then
    /// sends nothing
    #[argh(switch)]
    pub no_v1: bool,
    /// an upstream binary cache (e.g. https://cache.nixos.org) to fetch
    /// paths no peer has from, once for the whole LAN; repeat for several,
    /// tried in order
    #[argh(option)]
    pub upstream: Vec<String>,

    /// where the node keeps its state: the spool of NARs being fetched from
    /// upstream caches (default: systemd's $STATE_DIRECTORY, else
    /// /var/lib/peerix)
    #[argh(option, default = "default_state_dir()")]
    pub state_dir: PathBuf,

    /// the most the spool may hold, in MiB (default 2048)
    #[argh(option, default = "2048")]
    pub spool_size: u64,

    /// print the version (and the commit it was built from) and exit
    #[argh(switch, short = 'V')]
    pub version: bool,

    #[argh(subcommand)]
    pub command: Option<Command>,
}

/// What `peerix SUBCOMMAND` does instead of running the daemon.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    LanKey(LanKeyArgs),
}

/// Print the LAN key of a network key, one line `NAME:BASE64` for Nix's
/// trusted-public-keys: the same on every machine with that network key.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "lan-key")]
pub struct LanKeyArgs {
    /// the network key file whose LAN key to print
    #[argh(option)]
    pub network_key_file: Option<PathBuf>,

    /// write a new random network key to this file (mode 0600; refused if
    /// the file exists) and print its LAN key
    #[argh(option)]
    pub new: Option<PathBuf>,
}

impl LanKeyArgs {
    /// The line to print: the LAN key's public half, `NAME:BASE64`.
    pub fn line(&self) -> Result<String, String> {
        let key = match (&self.network_key_file, &self.new) {
            (Some(path), None) => NetworkKey::from_files(&[path])?,
            (None, Some(path)) => NetworkKey::create(path)?,
            _ => {
                return Err(
                    "give either --network-key-file FILE (an existing network key) \
                     or --new FILE (to make one)"
                        .into(),
                )
            }
        };
        Ok(key.lan_key().public_key().to_string())
    }
}

/// Where the node keeps its state without `--state-dir`: the directory
/// systemd made for it (`StateDirectory=`, the first of them), else this.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/peerix";

fn default_state_dir() -> PathBuf {
    let given = std::env::var("STATE_DIRECTORY").unwrap_or_default();
    match given.split(':').next().filter(|d| d.starts_with('/')) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

/// The validated configuration the daemon runs with.
pub struct Config {
    pub port: u16,
    /// `None` means every address (`::`, or `0.0.0.0` without IPv6).
    pub bind: Option<IpAddr>,
    pub signing_key: Option<SigningKey>,
    pub timeout: Duration,
    pub extra_hosts: Vec<String>,
    pub broadcast: bool,
    pub priority: u32,
    pub threads: usize,
    pub trusted_keys: Vec<PublicKey>,
    pub share: Policy,
    pub network_key: Option<NetworkKey>,
    pub answer_rate: u32,
    pub compress: framed::Mode,
    /// Ask original Peerix nodes too.
    pub v1: bool,
    /// Upstream caches, in order; none: the node asks only its peers.
    pub upstreams: Vec<crate::pull::Cache>,
    pub state_dir: PathBuf,
    /// The spool's bound, in bytes.
    pub spool_bytes: u64,
    /// What is unwise about this configuration (logged at start; shown by
    /// `/status` and the dashboard).
    pub warnings: Vec<String>,
}

/// A configuration the daemon cannot start with.
#[derive(Debug)]
pub enum ConfigError {
    Key(KeyError),
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Key(e) => e.fmt(f),
            ConfigError::Invalid(m) => f.write_str(m),
        }
    }
}

impl Config {
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let signing_key = match &args.private_key {
            Some(path) => Some(SigningKey::from_file(path).map_err(ConfigError::Key)?),
            None => None,
        };
        let public_keys = |flag: &str, keys: &[String]| {
            keys.iter()
                .map(|k| {
                    PublicKey::parse(k)
                        .map_err(|e| ConfigError::Invalid(format!("--{flag} {k:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let trusted_keys = public_keys("trusted-key", &args.trusted_key)?;
        let share = Policy {
            signed_by: public_keys("share-signed-by", &args.share_signed_by)?,
            never: args.never_share.clone(),
        };
        if let Some(p) = share.never.iter().find(|p| p.is_empty() || p.contains('/')) {
            return Err(ConfigError::Invalid(format!(
                "--never-share {p:?}: a pattern is a store path name, with * and ?"
            )));
        }
        let network_key = match args.network_key_file.is_empty() {
            true => None,
            false => {
                Some(NetworkKey::from_files(&args.network_key_file).map_err(ConfigError::Invalid)?)
            }
        };
        if args.threads == 0 || args.threads > 1024 {
            return Err(ConfigError::Invalid(
                "--threads must be between 1 and 1024".into(),
            ));
        }
        if args.timeout == 0 || args.timeout > 60_000 {
            return Err(ConfigError::Invalid(
                "--timeout must be between 1 and 60000 ms".into(),
            ));
        }
        if let Some(h) = args.extra_host.iter().find(|h| h.trim().is_empty()) {
            return Err(ConfigError::Invalid(format!("--extra-host {h:?} is empty")));
        }
        let upstreams = (args.upstream.iter())
            .map(|u| {
                crate::pull::Cache::parse(u)
                    .map_err(|e| ConfigError::Invalid(format!("--upstream: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if args.spool_size == 0 || args.spool_size > 1 << 24 {
            return Err(ConfigError::Invalid(
                "--spool-size must be between 1 and 16777216 MiB".into(),
            ));
        }
        // Logged where they are found (the key files' when they are read).
        let key_files = (args.private_key.iter().map(|p| (p, "private key")))
            .chain(args.network_key_file.iter().map(|p| (p, "network key")));
        let mut warnings: Vec<String> = key_files
            .filter_map(|(path, what)| crate::nix::keys::exposure(path, what))
            .collect();
        let mut warn = |warning: &str| {
            log::warn!("{warning}");
            warnings.push(warning.to_owned());
        };
        if signing_key.is_none() && network_key.is_none() {
            warn(
                "no --private-key and no --network-key-file: peers accept from this node \
                 only paths signed by keys they already trust (such as cache.nixos.org's), \
                 not its own builds",
            );
        }
        if args.no_broadcast && args.extra_host.is_empty() {
            warn("--no-broadcast and no --extra-host: no peer is ever asked");
        }
        Ok(Config {
            warnings,
            upstreams,
            state_dir: args.state_dir,
            spool_bytes: args.spool_size << 20,
            port: args.port,
            bind: args.bind,
            signing_key,
            timeout: Duration::from_millis(args.timeout),
            extra_hosts: args.extra_host,
            broadcast: !args.no_broadcast,
            priority: args.priority,
            threads: args.threads,
            trusted_keys,
            share,
            network_key,
            answer_rate: args.answer_rate,
            compress: args.compress,
            v1: !args.no_v1,
        })
    }

    /// The addresses to try listening on, best first.
    pub fn listen_addrs(&self) -> Vec<IpAddr> {
        match self.bind {
            Some(addr) => vec![addr],
            None => vec![
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                IpAddr::from([0, 0, 0, 0]),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::from_args(&["peerix"], args).map_err(|e| e.output)
    }

    #[test]
    fn without_a_subcommand_the_daemon_runs_with_its_flags() {
        let args = parse(&["--port", "12305", "--no-broadcast"]).unwrap();
        assert!(args.command.is_none());
        assert_eq!(args.port, 12305);
        assert!(args.network_key_file.is_empty());
        assert!(parse(&["--version"]).unwrap().version);
    }

    #[test]
    fn network_key_files_repeat_in_order() {
        let args = parse(&["--network-key-file", "new", "--network-key-file", "old"]).unwrap();
        assert_eq!(
            args.network_key_file,
            [PathBuf::from("new"), PathBuf::from("old")]
        );
    }

    #[test]
    fn lan_key_is_a_subcommand() {
        let args = parse(&["lan-key", "--network-key-file", "k"]).unwrap();
        let Some(Command::LanKey(lan_key)) = args.command else {
            panic!("no lan-key subcommand");
        };
        assert_eq!(lan_key.network_key_file, Some(PathBuf::from("k")));
        let Some(Command::LanKey(lan_key)) = parse(&["lan-key", "--new", "k"]).unwrap().command
        else {
            panic!("no lan-key subcommand");
        };
        assert_eq!(lan_key.new, Some(PathBuf::from("k")));
        let err = (LanKeyArgs {
            network_key_file: None,
            new: None,
        })
        .line()
        .unwrap_err();
        assert!(err.contains("--new FILE"), "{err}");
        assert!(parse(&["lan-key", "--port", "1"]).is_err());
    }
}
