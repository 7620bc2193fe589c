//! Foundations every layer stands on, knowing nothing of Nix or peers:
//! the bounded map every table is kept in, per-source rate limits, log
//! lines strangers can cause, JSON, child processes with deadlines,
//! signals, and the version facts of the build.

pub mod bounded;
pub mod child;
pub mod json;
pub mod logs;
pub mod rate;
pub mod signals;
pub mod version;
