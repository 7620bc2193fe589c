//! Talking to one peer: who a peer is (its address, its node id, whether
//! it is an original Peerix), the network key that authenticates what
//! peers send each other (`network_key.rs`), HTTP requests to one peer on
//! reused connections (`connection.rs`), fetching its narinfo, NARs and
//! store summary (`client.rs`), and the two shapes a NAR takes between
//! nodes of ours: the framed, adaptively compressed stream (`framed.rs`)
//! and stripes of it (`stripe.rs`).

pub mod client;
pub mod connection;
pub mod framed;
mod identity;
pub mod network_key;
pub mod stripe;

pub use identity::{NodeId, Peer, Who};
