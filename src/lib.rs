//! Peerix: a peer-to-peer binary cache for Nix. The daemon is `src/main.rs`;
//! the modules are a library so that fuzz targets and benchmarks can reach
//! the parsers and the store index.
//!
//! The folders are layers, a request's way through the house from the top
//! down; a module imports only from its own layer or lower ones
//! (`integration/layers.rs` checks it):
//!
//! - `config`: the command line and the validated configuration.
//! - `http`: the front end: connections, worker pools, routes, replies.
//! - `substitute`: answering the local Nix: a path among the peers, NARs
//!   with fail-over or from several peers at once, each checked against
//!   its NarHash; the upstream caches after the peers.
//! - `pull`: pulling from upstream caches for the LAN.
//! - `discovery`: who holds what: datagrams, the peer table, summaries.
//! - `peer`: talking to one peer: its requests, the framed stream, stripes.
//! - `store`: the local store: its index, serve children, share policy.
//! - `metrics`: the counters behind `/metrics` and the status.
//! - `nix`: Nix's formats and keys: narinfo, signatures, base-32.
//! - `base`: bounded maps, rate limits, logs, child processes, JSON.

pub mod base;
pub mod config;
pub mod discovery;
pub mod http;
pub mod metrics;
pub mod nix;
pub mod peer;
pub mod pull;
pub mod store;
pub mod substitute;
