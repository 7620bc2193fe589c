//! Control over the TCP connections that tiny_http accepted, which it does
//! not expose: find a connection's socket by its address pair and cut it,
//! or give it a write timeout.
//!
//! tiny_http keeps a connection open after a response body failed, waiting
//! for the client's next request while the client waits for the rest of the
//! body. Shutting the socket down from here ends both waits: the client
//! sees the connection close early, and tiny_http's connection thread sees
//! end of file and lets the connection go.

use std::mem::ManuallyDrop;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

/// The sockets of this process connected to a peer on our `local_port`:
/// the descriptors tiny_http holds for its connections (two per
/// connection: it clones the stream for reading and writing).
fn connections(local_port: u16) -> Vec<(SocketAddr, ManuallyDrop<TcpStream>)> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|fd| {
            // SAFETY: the descriptor was open and a socket when listed just
            // now; ManuallyDrop makes this a borrow that never closes it, and
            // the address checks make sure it is one of our connections
            // before anything is done to it.
            let stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
            let local = stream.local_addr().ok()?;
            let peer = stream.peer_addr().ok()?;
            (local.port() == local_port).then_some((peer, stream))
        })
        .collect()
}

/// Compares addresses, treating `::ffff:a.b.c.d` as `a.b.c.d`.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| (s.ip().to_canonical(), s.port());
    canon(a) == canon(b)
}

/// Cuts the connection from `peer` to our `local_port`: the client sees it
/// close at once, whatever it was waiting for.
pub fn cut(local_port: u16, peer: SocketAddr) {
    for (addr, stream) in connections(local_port) {
        if same_addr(addr, peer) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
    log::debug!("cut the connection from {peer}");
}

/// Cuts every connection on `local_port` (at shutdown).
pub fn cut_all(local_port: u16) {
    for (_, stream) in connections(local_port) {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// Makes writes to the connection from `peer` fail after `timeout` without
/// progress, so a client that stops reading cannot hold a worker forever.
pub fn set_write_timeout(local_port: u16, peer: SocketAddr, timeout: Duration) {
    for (addr, stream) in connections(local_port) {
        if same_addr(addr, peer) {
            let _ = stream.set_write_timeout(Some(timeout));
        }
    }
}
