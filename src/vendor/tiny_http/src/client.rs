use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Result as IoResult};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::StatusCode;
use crate::connection::Connection;
use crate::head::{parse_head, Refusal};
use crate::util::RefinedTcpStream;
use crate::util::SequentialWriterBuilder;
use crate::{Request, Response};

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
///
/// peerix patch: a request has no body (a head announcing one is refused,
/// see `head.rs`), so the next head is read from the same buffered reader;
/// upstream's sequence of body readers is gone.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // the request heads come from here
    source: BufReader<RefinedTcpStream>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // peerix patch: the connection, handed to each request so that a failed
    // response can cut it (see `Request::respond`); shared, not duplicated,
    // so that a request costs no file descriptor.
    control: Option<Arc<Connection>>,

    // peerix patch: the request line and headers may take `max_head_bytes`
    // (431 beyond) and `head_timeout` from their first byte (408 after): a
    // client trickling a byte at a time never trips a read timeout.
    max_head_bytes: usize,
    head_timeout: Option<Duration>,

    // peerix patch: whether the connection ended with a refusal (a 4xx
    // sent by this reader), after which the caller closes it gently.
    refused: bool,
}

/// peerix patch: why no request was read.
#[derive(Debug)]
enum ReadError {
    /// Answer with this status, then close the connection.
    Refused(Refusal),
    /// The client closed the connection, or it failed: close, say nothing.
    Closed,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        control: Option<Arc<Connection>>,
        max_head_bytes: usize,
        head_timeout: Option<Duration>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        ClientConnection {
            source: BufReader::with_capacity(1024, read_socket),
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            no_more_requests: false,
            secure,
            control,
            max_head_bytes,
            head_timeout,
            refused: false,
        }
    }

    /// peerix patch: whether the last request head was refused.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// peerix patch: reads the bytes of one request head, up to and
    /// including the empty line that ends it, within the limits.
    fn read_head(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut head = Vec::new();
        let mut started: Option<Instant> = None;
        loop {
            let available = match self.source.fill_buf() {
                Ok([]) => return Err(ReadError::Closed),
                Ok(bytes) => bytes,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Idle until the read timeout: closed without a word, as
                // keep-alive connections are.
                Err(e) if head.is_empty() && is_timeout(&e) => return Err(ReadError::Closed),
                Err(e) if is_timeout(&e) => {
                    return Err(ReadError::Refused(Refusal {
                        status: 408,
                        why: "the request took too long",
                    }))
                }
                Err(_) => return Err(ReadError::Closed),
            };
            let started = *started.get_or_insert_with(Instant::now);
            if self.head_timeout.is_some_and(|t| started.elapsed() > t) {
                return Err(ReadError::Refused(Refusal {
                    status: 408,
                    why: "the request head took too long",
                }));
            }
            // Up to the end of the head, or what is here; never past the limit.
            let mut used = 0;
            let mut complete = false;
            for &byte in available {
                if head.len() == self.max_head_bytes {
                    break;
                }
                head.push(byte);
                used += 1;
                if head.ends_with(b"\r\n\r\n") {
                    complete = true;
                    break;
                }
            }
            self.source.consume(used);
            if complete {
                return Ok(head);
            }
            if head.len() == self.max_head_bytes {
                return Err(ReadError::Refused(Refusal {
                    status: 431,
                    why: "the request head is too large",
                }));
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let head = parse_head(&self.read_head()?).map_err(ReadError::Refused)?;

        // peerix patch: a client that is already gone is an error, not a panic.
        let remote_addr = match &self.remote_addr {
            Ok(addr) => *addr,
            Err(_) => return Err(ReadError::Closed),
        };

        if !head.keep_alive() {
            self.no_more_requests = true;
        }
        let writer = self.sink.next().ok_or(ReadError::Closed)?;
        let request = crate::request::new_request(self.secure, head, remote_addr, writer);
        Ok(request.with_abort(self.control.clone()))
    }

    /// peerix patch: answers a refused head with its status and
    /// `Connection: close`; the connection is closed after it.
    fn refuse(&mut self, refusal: Refusal) {
        self.refused = true;
        let Some(mut writer) = self.sink.next() else {
            return;
        };
        let response = Response::from_string(format!("{}\n", refusal.why))
            .with_status_code(StatusCode(refusal.status));
        let version = crate::common::HTTPVersion(1, 1);
        if response
            .raw_print(&mut writer, version, true, false)
            .is_ok()
        {
            let _ = std::io::Write::flush(&mut writer);
        }
    }
}

/// A read that ended at the socket's read timeout (`WouldBlock` on Linux).
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }
        match self.read() {
            Ok(rq) => Some(rq),
            Err(ReadError::Refused(refusal)) => {
                self.refuse(refusal);
                None
            }
            Err(ReadError::Closed) => None,
        }
    }
}
