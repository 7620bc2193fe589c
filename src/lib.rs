//! Peerix: a peer-to-peer binary cache for Nix. The daemon is `src/main.rs`;
//! the modules are a library so that fuzz targets and benchmarks can reach
//! the parsers and the store index.

pub mod auth;
pub mod base;
pub mod compress;
pub mod config;
pub mod discovery;
pub mod http;
pub mod metrics;
pub mod nar_check;
pub mod nix;
pub mod peer_client;
pub mod peer_http;
pub mod pull;
pub mod store;
pub mod stripe;
pub mod throughput;
pub mod transfers;
pub mod upstream;
