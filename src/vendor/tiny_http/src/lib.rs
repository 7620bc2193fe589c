//! tiny_http 0.12.0 as Peerix uses it: HTTP/1.1 request parsing and
//! response writing for one connection at a time (`serve_connection`).
//! Peerix accepts connections itself (`src/http/mod.rs`); upstream's
//! `Server` (its accept thread, thread pool and unbounded request queue) is
//! removed. See PATCHES.md.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use client::ClientConnection;
use connection::Connection;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use head::{parse_head, Head, Refusal};
pub use request::{Request, RespondError};
pub use response::{Response, ResponseBox};

mod client;
mod common;
mod connection;
mod head;
mod request;
mod response;
mod ssl;
mod util;

/// peerix patch: limits that keep a slow, idle or hostile client from
/// holding its connection. Each connection gets the read and write
/// timeouts; a request line and headers longer than `max_head_bytes`, or
/// taking longer than `head_timeout` from its first byte, gets 431 or 408
/// and the connection is closed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    pub max_head_bytes: usize,
    /// How long a request head may take from its first byte (408 after).
    pub head_timeout: Option<Duration>,
}

impl Default for Limits {
    /// No timeouts, as tiny_http 0.12 had; request heads bounded to 64 KiB.
    fn default() -> Limits {
        Limits {
            read_timeout: None,
            write_timeout: None,
            max_head_bytes: 64 * 1024,
            head_timeout: None,
        }
    }
}

/// peerix patch: serves one accepted connection on the calling thread.
///
/// Each request read from `stream` is handed to `handle` (which may pass it
/// to another thread to answer), and the next one is read only once it has
/// been answered (then `answered` is called) or dropped: a client that
/// pipelines requests without reading the answers holds one request in the
/// server at a time, and no queue grows with what it sends. Returns when
/// the client closes the connection, breaks a limit of `limits` or sends a
/// head that is refused (a 4xx is sent first where one can be), asks for
/// `Connection: close`, or its request was answered with
/// `Request::respond_and_close`, dropped unanswered or failed. `stream` may
/// be shut down by another thread to end it.
pub fn serve_connection(
    stream: Arc<TcpStream>,
    limits: &Limits,
    mut handle: impl FnMut(Request),
    mut answered: impl FnMut(),
) {
    let connection = Connection::from(stream);
    let _ = connection.set_timeouts(limits.read_timeout, limits.write_timeout);
    let connection = Arc::new(connection);
    let (read, write) = util::RefinedTcpStream::new(connection.clone());
    let mut client = ClientConnection::new(
        write,
        read,
        Some(connection.clone()),
        limits.max_head_bytes,
        limits.head_timeout,
    );
    let (answered_tx, answer) = mpsc::channel();
    for request in &mut client {
        handle(request.with_notify_sender(answered_tx.clone()));
        match answer.recv() {
            Ok(true) => answered(),
            Ok(false) | Err(_) => return connection.close_gently(),
        }
    }
    if client.refused() {
        connection.close_gently();
    }
}
