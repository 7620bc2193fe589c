//! peerix: the daemon. Flags become a configuration, the store is indexed,
//! the HTTP server starts, and SIGINT or SIGTERM stops it cleanly.

mod config;
mod http;
mod keys;
mod narinfo;
mod nix32;
mod signals;
mod store;

use std::process::ExitCode;
use std::sync::Arc;

use config::{Args, Config};

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let level = if args.verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();

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

    let store = match store::Store::open() {
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
    let app = Arc::new(http::App {
        store,
        key: config.signing_key,
        priority: config.priority,
    });
    let server = match http::start(&listen, config.port, config.threads, app) {
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
    server.stop();
    ExitCode::SUCCESS
}
