//! Nix's own formats and keys, as a binary cache speaks them: base-32,
//! signing and public keys and the signatures over a path's fingerprint,
//! the narinfo, and which keys the local Nix trusts.

pub mod keys;
pub mod narinfo;
pub mod nix32;
pub mod trust;
