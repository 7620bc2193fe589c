//! What a route answers, and how it is written to the client: status codes,
//! bodies of known length (never chunked), `Range: bytes=N-` answered 206,
//! HEAD without a body, and a connection cut when a streamed body fails
//! half-way (tiny_http, as patched in src/vendor, shuts the socket down
//! when a response fails).

use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Arc;

use crossbeam_channel::{Receiver, TryRecvError};
use tiny_http::{Header, Request, Response, StatusCode};

use crate::metrics::{Direction, Metrics, NarSource};

pub enum Reply {
    /// A short text body.
    Text {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// A short binary body (a store summary).
    Bytes {
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// A streamed body (a NAR) of `len` bytes in all; with `range`, from
    /// that byte on (206). `body` is `None` for HEAD.
    Stream {
        content_type: &'static str,
        len: u64,
        range: Option<u64>,
        body: Option<Box<dyn Read + Send>>,
        source: NarSource,
        what: String,
    },
}

impl Reply {
    pub fn text(status: u16, content_type: &'static str, body: String) -> Reply {
        Reply::Text {
            status,
            content_type,
            body,
        }
    }

    /// A status with a one-line plain text explanation.
    pub fn status(status: u16, why: &str) -> Reply {
        Reply::text(status, "text/plain", format!("{why}\n"))
    }

    pub fn not_found() -> Reply {
        Reply::status(404, "not found")
    }

    pub fn status_code(&self) -> u16 {
        match self {
            Reply::Text { status, .. } => *status,
            Reply::Bytes { .. } => 200,
            Reply::Stream { range: None, .. } => 200,
            Reply::Stream { range: Some(_), .. } => 206,
        }
    }
}

/// The `N` of a `Range: bytes=N-` header (what Nix, through curl, sends to
/// resume a download). Other ranges are not served: the whole body is, as
/// HTTP allows.
pub fn range(request: &Request) -> Option<u64> {
    let value = (request.headers().iter())
        .find(|h| h.field.equiv("Range"))?
        .value
        .as_str();
    let start = value.trim().strip_prefix("bytes=")?.strip_suffix('-')?;
    match start.bytes().all(|c| c.is_ascii_digit()) {
        true => start.parse().ok(),
        false => None,
    }
}

/// True when the `Accept` header names `application/json`.
pub fn accepts_json(request: &Request) -> bool {
    (request.headers().iter())
        .filter(|h| h.field.equiv("Accept"))
        .any(|h| h.value.as_str().contains("application/json"))
}

fn header(name: &str, value: &str) -> Header {
    // Names and values here are our own ASCII constants and numbers.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

/// Writes `reply` to the client of `request`. A streamed body that fails
/// half-way, or is stopped because the daemon stops, cuts the connection,
/// so the client never takes a short body for a whole one, nor waits for
/// bytes that will not come.
pub fn send(request: Request, reply: Reply, metrics: &Arc<Metrics>, stop: &Receiver<()>) {
    let peer = request.remote_addr().copied();
    match reply {
        Reply::Text {
            status,
            content_type,
            body,
        } => {
            let response = Response::from_string(body)
                .with_status_code(StatusCode(status))
                .with_header(header("Content-Type", content_type));
            if let Err(e) = request.respond(response) {
                log::debug!("reply to {peer:?}: {e}");
            }
        }
        Reply::Bytes { content_type, body } => {
            let response =
                Response::from_data(body).with_header(header("Content-Type", content_type));
            if let Err(e) = request.respond(response) {
                log::debug!("reply to {peer:?}: {e}");
            }
        }
        Reply::Stream {
            content_type,
            len,
            range,
            body,
            source,
            what,
        } => {
            let streamed = body.is_some();
            let offset = range.unwrap_or(0);
            let left = len - offset.min(len);
            let body: Box<dyn Read + Send> = match body {
                Some(body) => Box::new(Exact {
                    inner: body,
                    left,
                    stop: stop.clone(),
                    count: Some(Count {
                        metrics: metrics.clone(),
                        source,
                        peer: peer.map(|p| p.ip()),
                        unflushed: 0,
                    }),
                }),
                None => Box::new(io::empty()),
            };
            let mut headers = vec![
                header("Content-Type", content_type),
                header("Accept-Ranges", "bytes"),
            ];
            if range.is_some() {
                let last = len.saturating_sub(1);
                headers.push(header(
                    "Content-Range",
                    &format!("bytes {offset}-{last}/{len}"),
                ));
            }
            let status = if range.is_some() { 206 } else { 200 };
            let response =
                Response::new(StatusCode(status), headers, body, Some(left as usize), None)
                    .with_chunked_threshold(usize::MAX);
            // tiny_http reports a client that went away as success; a body
            // that failed as an error. Either way the body (and a Nix child
            // behind it) is dropped, and so killed, right here.
            match request.respond(response) {
                Ok(()) if streamed => log::debug!("sent {what} ({left} bytes) to {peer:?}"),
                Ok(()) => {}
                Err(e) => log::warn!("sending {what} to {peer:?} failed: {e}; connection cut"),
            }
        }
    }
}

/// A body that must be exactly `left` bytes long: ending early or running
/// over is an error, so that the connection is cut instead of ending a 200
/// that looks complete. It also ends with an error when the daemon stops.
/// Its bytes are counted as they are read (`count`).
struct Exact {
    inner: Box<dyn Read + Send>,
    left: u64,
    stop: Receiver<()>,
    count: Option<Count>,
}

/// Bytes of a NAR reply, for the metrics: passed on at least every
/// `FLUSH_EVERY` bytes and when the reply ends (however it ends), so that
/// a client that leaves early is counted for what it got, about.
struct Count {
    metrics: Arc<Metrics>,
    source: NarSource,
    /// The client: a peer when the NAR comes from this store.
    peer: Option<IpAddr>,
    unflushed: u64,
}

/// How often a NAR reply's bytes reach the counters, at least.
const FLUSH_EVERY: u64 = 256 * 1024;

impl Count {
    fn add(&mut self, n: usize) {
        self.unflushed += n as u64;
        if self.unflushed >= FLUSH_EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let n = std::mem::take(&mut self.unflushed);
        if n == 0 {
            return;
        }
        self.metrics.nar_bytes(self.source, n);
        if let (NarSource::Store, Some(peer)) = (self.source, self.peer) {
            self.metrics.peer_bytes(peer, Direction::Sent, n);
        }
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Err(TryRecvError::Disconnected) = self.stop.try_recv() {
            return Err(io::Error::other("the daemon is stopping"));
        }
        if self.left == 0 {
            // Read on to see that the source ends here.
            return match self.inner.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(io::Error::other("the body is longer than announced")),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the body ended {} bytes short", self.left),
            ));
        }
        self.left -= n as u64;
        if let Some(count) = &mut self.count {
            count.add(n);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(data: &'static [u8], len: u64) -> io::Result<Vec<u8>> {
        let (_running, stop) = crossbeam_channel::bounded::<()>(0);
        let mut out = Vec::new();
        Exact {
            inner: Box::new(data),
            left: len,
            stop,
            count: None,
        }
        .read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn exact_bodies_pass_and_others_fail() {
        assert_eq!(read_all(b"abc", 3).unwrap(), b"abc");
        assert!(read_all(b"ab", 3).is_err());
        assert!(read_all(b"abcd", 3).is_err());
        assert_eq!(read_all(b"", 0).unwrap(), b"");
    }

    #[test]
    fn a_stopping_daemon_ends_the_body() {
        let (running, stop) = crossbeam_channel::bounded::<()>(0);
        let mut body = Exact {
            inner: Box::new(&b"abcdef"[..]),
            left: 6,
            stop,
            count: None,
        };
        let mut buf = [0u8; 2];
        assert_eq!(body.read(&mut buf).unwrap(), 2);
        drop(running);
        assert!(body.read(&mut buf).is_err());
    }
}
