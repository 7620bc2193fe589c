//! What a route answers, and how it is written to the client: status codes,
//! bodies of known length (never chunked), `Range: bytes=N-` answered 206,
//! HEAD without a body, a connection cut when a streamed body fails
//! half-way (tiny_http, as patched in src/vendor, shuts the socket down
//! when a response fails), and a connection closed after a refusal.

use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, TryRecvError};
use tiny_http::{Header, Request, Response, StatusCode};

use crate::metrics::{Direction, Metrics, NarSource};
use crate::peer::framed::{self, Encoder};
use crate::peer::stripe::{self, Filter, Stripe};

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
    /// With `compress`, sent as the framed stream of `peer/framed.rs`,
    /// chunked (offsets and `Content-Range` still count NAR bytes).
    Stream {
        compress: Option<framed::Mode>,
        /// Only this stripe's bytes (`peer/stripe.rs`); with `compress` only.
        stripe: Option<Stripe>,
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

/// True when the request asks for the framed stream in `Accept-Encoding`.
pub fn asks_framed(request: &Request) -> bool {
    (request.headers().iter())
        .filter(|h| h.field.equiv("Accept-Encoding"))
        .any(|h| framed::accepts(h.value.as_str()))
}

/// The stripe a request asks for in `X-Peerix-Stripe`, if well-formed.
pub fn stripe(request: &Request) -> Option<Stripe> {
    (request.headers().iter())
        .find(|h| h.field.equiv(stripe::HEADER))
        .and_then(|h| Stripe::parse(h.value.as_str()))
}

/// The value of the `name` header, if the request has one.
pub fn header_value(request: &Request, name: &'static str) -> Option<String> {
    (request.headers().iter())
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_owned())
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

/// Whether a connection is closed after a reply with this status: a
/// malformed or refused request (400, 403, 405, 413) says the client is not
/// one of ours, or not allowed; it gets no further requests on this
/// connection (a new one costs it a handshake and a place under the caps).
/// A 404 is an ordinary miss.
fn closes(status: u16) -> bool {
    matches!(status, 400 | 403 | 405 | 413)
}

/// Writes `reply` to the client of `request`. A streamed body that fails
/// half-way, or is stopped because the daemon stops, cuts the connection,
/// so the client never takes a short body for a whole one, nor waits for
/// bytes that will not come. The NAR bytes counted are those the socket
/// took; a client that went away is counted as an aborted NAR.
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
            let sent = match closes(status) {
                true => request.respond_and_close(response),
                false => request.respond(response),
            };
            if let Err(e) = sent {
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
            compress,
            stripe,
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
            let count = Count {
                metrics: metrics.clone(),
                source,
                peer: peer.map(|p| p.ip()),
                unflushed: 0,
                pending: 0,
                counted: Arc::new(AtomicU64::new(0)),
            };
            let counted = count.counted.clone();
            let exact = |body| Exact {
                inner: body,
                left,
                stop: stop.clone(),
                count: Some(count),
            };
            let stripe = stripe.filter(|_| compress.is_some() && body.is_some());
            let (body, length, framed): (Box<dyn Read + Send>, _, _) = match (body, compress) {
                (Some(body), Some(mode)) => {
                    let nar: Box<dyn Read + Send> = match stripe {
                        Some(s) => Box::new(Filter::new(exact(body), s, offset)),
                        None => Box::new(exact(body)),
                    };
                    let counted = Some(metrics.framed.clone());
                    (
                        Box::new(Encoder::new(nar, mode).counted(counted)),
                        None,
                        true,
                    )
                }
                (Some(body), None) => (Box::new(exact(body)), Some(left as usize), false),
                (None, _) => (Box::new(io::empty()), Some(left as usize), false),
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
            if framed {
                headers.push(header("Content-Encoding", framed::ENCODING));
            }
            if let Some(s) = stripe {
                headers.push(header(stripe::HEADER, &s.render()));
            }
            let status = if range.is_some() { 206 } else { 200 };
            let response = Response::new(StatusCode(status), headers, body, length, None)
                .with_chunked_threshold(usize::MAX);
            // Whatever happened, the body (and a Nix child behind it) is
            // dropped, and so killed, right here.
            let result = request.respond(response);
            if !streamed {
                return;
            }
            let sent = match &result {
                Ok(sent) => *sent,
                Err(e) => e.sent,
            };
            // The part of the last piece the socket took before it failed
            // (in NAR bytes: not known for a framed stream, whose bytes on
            // the wire are not the NAR's).
            let short = sent.saturating_sub(counted.load(Ordering::Relaxed));
            if short > 0 && !framed {
                count_bytes(metrics, source, peer.map(|p| p.ip()), short);
            }
            match result {
                Ok(_) => log::debug!("sent {what} ({left} bytes) to {peer:?}"),
                Err(e) if !e.body_failed => {
                    metrics.nar_aborted();
                    log::debug!("{peer:?} left before the end of {what} ({left} bytes): {e}");
                }
                Err(e) => log::warn!("sending {what} to {peer:?} failed: {e}; connection cut"),
            }
        }
    }
}

/// Counts `n` NAR bytes sent, from `source`, to `peer`.
fn count_bytes(metrics: &Metrics, source: NarSource, peer: Option<IpAddr>, n: u64) {
    metrics.nar_bytes(source, n);
    if let (NarSource::Store | NarSource::Spool, Some(peer)) = (source, peer) {
        metrics.peer_bytes(peer, Direction::Sent, n);
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
/// `FLUSH_EVERY` bytes and when the reply ends (however it ends). A piece
/// read is counted when the next is asked for, which tiny_http does only
/// once it wrote the whole piece (to the socket, or the last few hundred
/// bytes to its 1 KiB buffer); what the socket took of the last piece
/// when a reply broke off is added by `send` (from `counted`), so that
/// what is counted is what was sent.
struct Count {
    metrics: Arc<Metrics>,
    source: NarSource,
    /// The client: a peer when the NAR comes from this store or spool.
    peer: Option<IpAddr>,
    unflushed: u64,
    /// The last piece read, not yet known to be sent.
    pending: u64,
    /// Bytes counted so far.
    counted: Arc<AtomicU64>,
}

/// How often a NAR reply's bytes reach the counters, at least.
const FLUSH_EVERY: u64 = 256 * 1024;

impl Count {
    /// A piece of `n` bytes was read: the one before it was sent.
    fn read(&mut self, n: usize) {
        let sent = std::mem::replace(&mut self.pending, n as u64);
        self.unflushed += sent;
        self.counted.fetch_add(sent, Ordering::Relaxed);
        if self.unflushed >= FLUSH_EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let n = std::mem::take(&mut self.unflushed);
        if n > 0 {
            count_bytes(&self.metrics, self.source, self.peer, n);
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
            if let Some(count) = &mut self.count {
                count.read(0);
            }
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
            count.read(n);
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

    /// A body of a few pieces, then a failure (a NAR that failed its hash).
    struct Failing(Vec<Vec<u8>>);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("the body failed"));
            }
            let piece = self.0.remove(0);
            buf[..piece.len()].copy_from_slice(&piece);
            Ok(piece.len())
        }
    }

    /// What `send` and the NarHash check rely on (tiny_http as patched):
    /// when a body fails, what its reader gave reaches the client before
    /// the connection is cut, and the bytes counted as sent are those the
    /// client got, also when the last pieces were smaller than tiny_http's
    /// buffer (issue 24: 600 bytes counted as sent never left it, so Nix
    /// resumed from fewer bytes than the node remembered).
    #[test]
    fn a_failed_body_counts_what_the_client_got() {
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};
        for pieces in [vec![70_000, 600], vec![600], vec![70_000, 300, 300]] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let body: Vec<Vec<u8>> = pieces.iter().map(|&n| vec![7u8; n]).collect();
            let server = std::thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                tiny_http::serve_connection(
                    Arc::new(stream),
                    &tiny_http::Limits::default(),
                    |request| {
                        let body = Failing(body.clone());
                        let response =
                            Response::new(StatusCode(200), vec![], body, Some(1 << 20), None)
                                .with_chunked_threshold(usize::MAX);
                        let _ = tx.send(request.respond(response));
                    },
                    || {},
                );
                rx.recv().unwrap()
            });
            let mut client = TcpStream::connect(addr).unwrap();
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got);
            let head = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let error = server.join().unwrap().unwrap_err();
            assert!(error.body_failed);
            let given = pieces.iter().sum::<usize>() as u64;
            assert_eq!(error.sent, (got.len() - head) as u64, "{pieces:?}");
            assert_eq!(error.sent, given, "{pieces:?}");
        }
    }
}
