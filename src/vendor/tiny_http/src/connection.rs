//! Abstractions of Tcp and Unix socket types

use std::net::{Shutdown, SocketAddr, TcpStream};
#[cfg(unix)]
use std::os::unix::net as unix_net;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Unified connection. Either a [`TcpStream`] or [`std::os::unix::net::UnixStream`].
#[derive(Debug)]
pub(crate) enum Connection {
    // peerix patch: shared with the caller of `serve_connection`, which may
    // shut it down (to make room for another connection).
    Tcp(Arc<TcpStream>),
    #[cfg(unix)]
    Unix(unix_net::UnixStream),
}
// peerix patch: reads and writes through a shared reference, so that the
// halves of a connection can share one socket (see refined_tcp_stream.rs).
impl std::io::Read for &Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Tcp(s) => (&**s).read(buf),
            #[cfg(unix)]
            Connection::Unix(s) => (&*s).read(buf),
        }
    }
}
impl std::io::Write for &Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Tcp(s) => (&**s).write(buf),
            #[cfg(unix)]
            Connection::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Tcp(s) => (&**s).flush(),
            #[cfg(unix)]
            Connection::Unix(s) => (&*s).flush(),
        }
    }
}
impl Connection {
    /// Gets the peer's address. Some for TCP, None for Unix sockets.
    pub(crate) fn peer_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        match self {
            Self::Tcp(s) => s.peer_addr().map(Some),
            #[cfg(unix)]
            Self::Unix(_) => Ok(None),
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(how),
            #[cfg(unix)]
            Self::Unix(s) => s.shutdown(how),
        }
    }

    /// peerix patch: read and write timeouts on the socket.
    pub(crate) fn set_timeouts(
        &self,
        read: Option<std::time::Duration>,
        write: Option<std::time::Duration>,
    ) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(read).and(s.set_write_timeout(write)),
            #[cfg(unix)]
            Self::Unix(s) => s.set_read_timeout(read).and(s.set_write_timeout(write)),
        }
    }

    /// peerix patch: closes a connection after a refusal without reading
    /// what the client sent on: the reply is followed by the end of the
    /// stream at once, then what already arrived is read and thrown away,
    /// at most `LINGER_BYTES` and `LINGER`, so that closing does not reset
    /// the connection (a reset can make the client lose the reply).
    pub(crate) fn close_gently(&self) {
        const LINGER: Duration = Duration::from_millis(200);
        const LINGER_BYTES: usize = 64 * 1024;
        let _ = self.shutdown(Shutdown::Write);
        let _ = self.set_timeouts(Some(LINGER), None);
        let deadline = Instant::now() + LINGER;
        let (mut buf, mut left) = ([0u8; 4096], LINGER_BYTES);
        while left > 0 && Instant::now() < deadline {
            match std::io::Read::read(&mut &*self, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
        let _ = self.shutdown(Shutdown::Both);
    }
}
impl From<Arc<TcpStream>> for Connection {
    fn from(s: Arc<TcpStream>) -> Self {
        Self::Tcp(s)
    }
}
#[cfg(unix)]
impl From<unix_net::UnixStream> for Connection {
    fn from(s: unix_net::UnixStream) -> Self {
        Self::Unix(s)
    }
}
