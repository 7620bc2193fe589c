//! peerix: the daemon. Flags become a configuration, the store is indexed,
//! the HTTP server starts, and SIGINT or SIGTERM stops it cleanly.

use std::process::ExitCode;
use std::sync::Arc;

use peerix::base::signals;
use peerix::config::{Args, Command, Config};
use peerix::nix::trust;
use peerix::peer::client::PeerClient;
use peerix::substitute::Substituter;
use peerix::{discovery, http, metrics, pull, store};

fn main() -> ExitCode {
    let mut args: Args = argh::from_env();
    if args.version {
        println!("{}", peerix::base::version::version_line());
        return ExitCode::SUCCESS;
    }
    let level = match (args.verbose, &args.command) {
        (_, Some(_)) => "warn",
        (true, None) => "debug",
        (false, None) => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        // A line per TLS handshake step with upstream caches is noise.
        .filter_module("rustls", log::LevelFilter::Warn)
        .format_target(false)
        .init();
    if let Some(Command::LanKey(lan_key)) = args.command.take() {
        return match lan_key.line() {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("peerix lan-key: {e}");
                ExitCode::from(2)
            }
        };
    }

    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peerix: {e}");
            return ExitCode::from(2);
        }
    };
    // Before any thread starts, so that every thread inherits the mask and
    // the signals reach only `signals::wait`.
    let signals = signals::block_termination();
    raise_fd_limit();
    tune_malloc();

    let store = match store::Store::open(config.share.clone()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot read the Nix store: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(key) = &config.signing_key {
        log::info!("signing narinfo with key {}", key.public_key());
    }
    let listen = config.listen_addrs();
    let network_key = config.network_key.map(Arc::new);
    if let Some(key) = &network_key {
        log::info!(
            "network key: peers are authenticated; original Peerix nodes are not spoken to; \
             signing narinfo with the LAN key {}",
            key.lan_key().public_key()
        );
    }
    let lan_keys = (network_key.iter())
        .flat_map(|k| k.lan_public_keys())
        .collect();
    let discovery = match discovery::Discovery::start(
        discovery::Settings {
            port: config.port,
            broadcast: config.broadcast,
            extra_hosts: config.extra_hosts.clone(),
            timeout: config.timeout,
            network_key: network_key.clone(),
            answer_rate: config.answer_rate,
            v1: config.v1,
            pulls: !config.upstreams.is_empty(),
        },
        store.clone(),
    ) {
        Ok(d) => d,
        Err(e) => {
            log::error!("cannot start discovery on UDP port {}: {e}", config.port);
            return ExitCode::FAILURE;
        }
    };
    let trust = trust::Trust::from_nix(config.trusted_keys, lan_keys);
    let mut warnings = config.warnings;
    warnings.extend(trust.warning());
    if trust.key_names().is_empty() {
        let warning = "no trusted keys (the local Nix's trusted-public-keys, --trusted-key): \
                       no peer's narinfo is ever handed to Nix";
        log::warn!("{warning}");
        warnings.push(warning.into());
    }
    let about = http::About {
        trusted_keys: trust.key_names(),
        signing_key: config.signing_key.as_ref().map(|k| k.name().to_owned()),
        lan_key: (network_key.as_ref()).map(|k| k.lan_key().public_key().to_string()),
        share: config.share.to_string(),
        network_key: network_key.is_some(),
        broadcast: config.broadcast,
        extra_hosts: config.extra_hosts.clone(),
        warnings,
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let peers = || PeerClient::new(network_key.clone(), config.compress).counted(metrics.clone());
    let pull = match config.upstreams.is_empty() {
        true => None,
        false => {
            let caches: Vec<String> = config.upstreams.iter().map(|c| c.to_string()).collect();
            let settings = pull::Settings {
                caches: config.upstreams,
                spool_dir: config.state_dir.join("spool"),
                spool_bytes: config.spool_bytes,
            };
            match pull::Pull::new(
                settings,
                trust.clone(),
                discovery.clone(),
                peers(),
                store.clone(),
                metrics.clone(),
            ) {
                Ok(p) => {
                    log::info!("pulling through {} for the LAN", caches.join(", "));
                    Some(Arc::new(p))
                }
                Err(e) => {
                    log::error!("cannot reach upstream caches: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let substituter = Arc::new(Substituter::new(
        discovery.clone(),
        peers(),
        trust,
        pull.clone(),
        metrics.clone(),
    ));
    let app = Arc::new(http::App {
        store,
        key: config.signing_key,
        priority: config.priority,
        discovery: discovery.clone(),
        substituter,
        pull,
        network_key,
        metrics,
        compress: config.compress,
        range_skips: http::range_skips(),
        port: config.port,
        about,
    });
    let server = match http::start(&listen, config.port, config.threads, app.clone()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "serving on http://{} with {} workers",
        server.addr(),
        config.threads
    );

    let signal = signals.wait();
    log::info!("{signal}: shutting down");
    discovery.stop();
    server.stop();
    app.store.stop();
    ExitCode::SUCCESS
}

/// Raises the soft limit on open files to the hard one: every connection
/// and every pipe to Nix is a descriptor, and systemd's default soft limit
/// (1024) is far below its hard one. Where that is refused (a seccomp
/// filter, say), the connection caps follow the limit there is.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            log::debug!(
                "open files: at most {} (was {})",
                limit.rlim_max,
                limit.rlim_cur
            );
        }
    }
}

/// Keeps the memory of a daemon that idles for days small after a burst:
/// large blocks (the 256 KiB copy buffer of each NAR reply) are mapped and
/// unmapped on their own instead of staying in the heap once glibc raised
/// its threshold, and the many worker and connection threads share two
/// heaps instead of one each.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
