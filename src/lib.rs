//! Peerix: a peer-to-peer binary cache for Nix. The daemon is `src/main.rs`;
//! the modules are a library so that fuzz targets and benchmarks can reach
//! the parsers and the store index.

pub mod base;

pub mod config;
pub mod discovery;
pub mod http;
pub mod metrics;
pub mod nar_check;
pub mod nix;
pub mod peer;

pub mod pull;
pub mod store;
pub mod stripe;
pub mod throughput;
pub mod transfers;
pub mod upstream;
