//! HTTP/1.1 GET requests to peers, on plain TCP: idle keep-alive
//! connections per peer, reused; a deadline from the request's start to
//! the last byte of the reply's head, whether the connection is new or
//! reused (a peer that freezes between request and reply is given up on
//! then); a stall limit on each read of the body; and, for a body given a
//! [`Floor`], a least rate over the time spent waiting for it. Bodies are
//! framed by `Content-Length`, chunked (original Peerix nodes send NARs
//! so) or by the end of the connection. A connection goes back to its pool
//! only when its body was read exactly to its end.
//!
//! Only what peers send is parsed, and nothing they send sizes a buffer:
//! the head is at most `MAX_HEAD` bytes, a chunk-size line 64.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::base::bounded::Bounded;

/// The longest reply head read from a peer.
const MAX_HEAD: usize = 16 * 1024;

/// Peers whose idle connections are kept, per generation of the table.
const PEERS: usize = 256;

/// A connection's read buffer (a NAR passes through it).
const BUFFER: usize = 64 * 1024;

#[derive(Debug)]
pub enum HttpError {
    /// No connection, or it broke, or a deadline passed.
    Io(String),
    /// The peer's reply is not HTTP as we speak it.
    Protocol(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io(m) => f.write_str(m),
            HttpError::Protocol(m) => write!(f, "bad reply: {m}"),
        }
    }
}

/// The idle connections to each peer.
pub struct Connections {
    idle: Arc<Mutex<Bounded<SocketAddr, Vec<TcpStream>>>>,
    per_peer: usize,
    connect_timeout: Duration,
    user_agent: String,
}

/// A reply: status, headers and its body as a reader.
pub struct Reply {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    /// Reads and drops a short body (an error page), so that its
    /// connection can be reused; a long one closes it.
    pub fn discard(self) {
        let mut body = self.body;
        let _ = io::copy(&mut (&mut body).take(64 * 1024), &mut io::sink());
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Connections {
    pub fn new(per_peer: usize, connect_timeout: Duration, user_agent: String) -> Connections {
        Connections {
            idle: Arc::new(Mutex::new(Bounded::new(PEERS))),
            per_peer,
            connect_timeout,
            user_agent,
        }
    }

    /// `GET path` on `addr` with `headers`: the reply's head by `deadline`,
    /// then its body, each read of which may wait `stall` at most. A
    /// reused connection that the peer closed while it was idle is
    /// replaced by a new one, once.
    pub fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, String)],
        deadline: Instant,
        stall: Duration,
    ) -> Result<Reply, HttpError> {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", host_header(addr));
        request += &format!("User-Agent: {}\r\n", self.user_agent);
        for (name, value) in headers {
            request += &format!("{name}: {value}\r\n");
        }
        request += "\r\n";
        if let Some(stream) = self.take_idle(addr) {
            match exchange(stream, &request, deadline, stall) {
                Ok(Exchanged::Reply(reply)) => return Ok(self.with_pool(reply, addr)),
                Ok(Exchanged::ClosedWhileIdle) => {}
                Err(e) => return Err(e),
            }
        }
        let stream = self.connect(addr, deadline)?;
        match exchange(stream, &request, deadline, stall)? {
            Exchanged::Reply(reply) => Ok(self.with_pool(reply, addr)),
            Exchanged::ClosedWhileIdle => {
                Err(HttpError::Io("the connection closed before a reply".into()))
            }
        }
    }

    fn connect(&self, addr: SocketAddr, deadline: Instant) -> Result<TcpStream, HttpError> {
        let left = left_until(deadline)?;
        let stream = TcpStream::connect_timeout(&addr, left.min(self.connect_timeout))
            .map_err(|e| HttpError::Io(format!("cannot connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// An idle connection to `addr` that the peer has not closed.
    fn take_idle(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().ok()?;
        let streams = idle.get_mut(&addr)?;
        while let Some(stream) = streams.pop() {
            if still_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    fn with_pool(&self, mut reply: Reply, addr: SocketAddr) -> Reply {
        reply.body.home = Some(Home {
            idle: self.idle.clone(),
            addr,
            per_peer: self.per_peer,
        });
        reply
    }
}

/// Where a connection goes back to once its body was read to the end.
struct Home {
    idle: Arc<Mutex<Bounded<SocketAddr, Vec<TcpStream>>>>,
    addr: SocketAddr,
    per_peer: usize,
}

impl Home {
    fn put(self, stream: TcpStream) {
        let _ = stream.set_read_timeout(None);
        if let Ok(mut idle) = self.idle.lock() {
            let streams = idle.entry_or_insert_with(self.addr, Vec::new);
            if streams.len() < self.per_peer {
                streams.push(stream);
            }
        }
    }
}

enum Exchanged {
    Reply(Reply),
    /// A reused connection ended before the first byte of a reply: the
    /// peer closed it while it was idle.
    ClosedWhileIdle,
}

/// Sends `request` on `stream` and reads the reply's head by `deadline`.
fn exchange(
    stream: TcpStream,
    request: &str,
    deadline: Instant,
    stall: Duration,
) -> Result<Exchanged, HttpError> {
    let io = |e: io::Error| HttpError::Io(timed_out(e, "the peer did not answer in time"));
    stream
        .set_write_timeout(Some(left_until(deadline)?))
        .map_err(io)?;
    match (&stream).write_all(request.as_bytes()) {
        Ok(()) => {}
        Err(e) if is_closed(&e) => return Ok(Exchanged::ClosedWhileIdle),
        Err(e) => return Err(io(e)),
    }
    let mut reader = BufReader::with_capacity(BUFFER, stream);
    let mut head = Vec::new();
    loop {
        reader
            .get_ref()
            .set_read_timeout(Some(left_until(deadline)?))
            .map_err(io)?;
        let got = match reader.fill_buf() {
            Ok(got) => got,
            Err(e) if head.is_empty() && is_closed(&e) => return Ok(Exchanged::ClosedWhileIdle),
            Err(e) => return Err(io(e)),
        };
        if got.is_empty() {
            return match head.is_empty() {
                true => Ok(Exchanged::ClosedWhileIdle),
                false => Err(HttpError::Io("the connection closed mid-head".into())),
            };
        }
        // Take bytes up to the end of the head, no further.
        let before = head.len();
        let take = got.len().min(MAX_HEAD + 1 - before);
        head.extend_from_slice(&got[..take]);
        let end = find_head_end(&head, before.saturating_sub(3));
        let used = match end {
            Some(end) => end - before,
            None => take,
        };
        reader.consume(used);
        if let Some(end) = end {
            head.truncate(end);
            break;
        }
        if head.len() > MAX_HEAD {
            return Err(HttpError::Protocol(format!(
                "a reply head over {MAX_HEAD} bytes"
            )));
        }
    }
    let (status, headers) = parse_head(&head)?;
    let framing = framing(status, &headers)?;
    reader.get_ref().set_read_timeout(Some(stall)).map_err(io)?;
    Ok(Exchanged::Reply(Reply {
        status,
        headers,
        body: Body {
            reader: Some(reader),
            framing,
            home: None,
            deadline: None,
            watch: None,
        },
    }))
}

/// Where the head of `buf` ends (after its blank line), searching from
/// `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(3))
        .find(|&i| &buf[i..i + 4] == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The status and headers of a reply head.
fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let bad = |what: &str| HttpError::Protocol(what.to_string());
    let text = std::str::from_utf8(head).map_err(|_| bad("a head that is not text"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !matches!(parts.next(), Some("HTTP/1.1" | "HTTP/1.0")) {
        return Err(bad("not an HTTP/1 reply"));
    }
    let status = (parts.next())
        .filter(|s| s.len() == 3 && s.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((n, v)) => Ok((n.trim().to_string(), v.trim().to_string())),
            None => Err(bad("a header line without a colon")),
        })
        .collect::<Result<_, _>>()?;
    Ok((status, headers))
}

/// How the body of a reply ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: this many bytes are left in the current chunk (`None`
    /// before the first chunk's size line, and after each chunk).
    Chunked(Option<u64>),
    /// The body ends with the connection.
    Close,
    /// The body has ended.
    Done,
}

fn framing(status: u16, headers: &[(String, String)]) -> Result<Framing, HttpError> {
    fn get<'h>(
        headers: &'h [(String, String)],
        name: &'static str,
    ) -> impl Iterator<Item = &'h str> {
        (headers.iter())
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Done);
    }
    if let Some(encoding) = get(headers, "Transfer-Encoding").last() {
        return match encoding.eq_ignore_ascii_case("chunked") {
            true => Ok(Framing::Chunked(None)),
            false => Err(HttpError::Protocol(format!(
                "Transfer-Encoding {encoding:?}"
            ))),
        };
    }
    let lengths: Vec<&str> = get(headers, "Content-Length").collect();
    match lengths.first() {
        None => Ok(Framing::Close),
        Some(first) if lengths.iter().all(|l| l == first) => first
            .parse()
            .map(Framing::Length)
            .map_err(|_| HttpError::Protocol(format!("Content-Length {first:?}"))),
        Some(_) => Err(HttpError::Protocol("several Content-Lengths".into())),
    }
}

/// The least a body must come at once its first bytes came: `rate` bytes
/// a second over each `window` of time spent waiting in its reads. Only
/// waits count, not the time between reads: a body its reader leaves
/// alone for a while (a stripe lane while another is read) waits in its
/// socket, and is not slow for that.
#[derive(Clone, Copy, Debug)]
pub struct Floor {
    pub rate: u64,
    pub window: Duration,
}

/// Why a body was given up on, for whoever counts it: `"too_slow"` (under
/// its floor) or `"stalled"` (no byte for the stall limit).
pub type GivenUp = Box<dyn Fn(&'static str) + Send>;

/// A body's floor, and what it came at in the current window.
struct Watch {
    floor: Floor,
    given_up: GivenUp,
    /// Its first bytes came: the floor holds from then on.
    started: bool,
    waited: Duration,
    bytes: u64,
}

impl Watch {
    /// Takes in a read of `n` bytes that waited `waited`; an error when
    /// the window it closes came under the floor.
    fn read(&mut self, n: usize, waited: Duration) -> io::Result<()> {
        if !self.started {
            self.started = n > 0;
            return Ok(());
        }
        self.waited += waited;
        self.bytes += n as u64;
        if self.waited < self.floor.window {
            return Ok(());
        }
        let least = self.floor.rate as f64 * self.waited.as_secs_f64();
        let (bytes, waited) = (self.bytes, self.waited);
        (self.waited, self.bytes) = (Duration::ZERO, 0);
        if (bytes as f64) >= least {
            return Ok(());
        }
        (self.given_up)("too_slow");
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "too slow: {bytes} bytes in {waited:.1?} of waiting, under {} KiB/s",
                self.floor.rate / 1024
            ),
        ))
    }
}

/// The body of a reply. Read to its end, its connection goes back to the
/// peer's idle connections; dropped before, the connection is closed.
pub struct Body {
    reader: Option<BufReader<TcpStream>>,
    framing: Framing,
    home: Option<Home>,
    /// When set, no read of the body waits past it.
    deadline: Option<Instant>,
    /// When set, the least the body must come at.
    watch: Option<Box<Watch>>,
}

impl Body {
    /// The body, all of which must come by `deadline`.
    pub fn until(mut self, deadline: Instant) -> Body {
        self.deadline = Some(deadline);
        self
    }

    /// The body, which must come at `floor` at least, and otherwise fails;
    /// `given_up` is told why it failed when that is too slow or a stall.
    pub fn watched(mut self, floor: Floor, given_up: GivenUp) -> Body {
        self.watch = Some(Box::new(Watch {
            floor,
            given_up,
            started: false,
            waited: Duration::ZERO,
            bytes: 0,
        }));
        self
    }

    /// Reads up to `buf.len()` bytes of the body; 0 at its end.
    fn read_framed(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(0);
        };
        if let Some(deadline) = self.deadline {
            let left = left_until(deadline)
                .map_err(|e| io::Error::new(io::ErrorKind::TimedOut, e.to_string()))?;
            reader.get_ref().set_read_timeout(Some(left))?;
        }
        let io_eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "the body ended early");
        loop {
            match self.framing {
                Framing::Done => return Ok(0),
                Framing::Close => {
                    let n = reader.read(buf)?;
                    if n == 0 {
                        self.framing = Framing::Done;
                        self.reader = None; // never reused
                    }
                    return Ok(n);
                }
                Framing::Length(0) => self.framing = Framing::Done,
                Framing::Length(left) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = reader.read(&mut buf[..want])?;
                    if n == 0 && want > 0 {
                        return Err(io_eof());
                    }
                    self.framing = match left - n as u64 {
                        0 => Framing::Done,
                        left => Framing::Length(left),
                    };
                    return Ok(n);
                }
                Framing::Chunked(None) => {
                    let size = chunk_size(reader)?;
                    if size == 0 {
                        skip_trailers(reader)?;
                        self.framing = Framing::Done;
                        return Ok(0);
                    }
                    self.framing = Framing::Chunked(Some(size));
                }
                Framing::Chunked(Some(left)) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = reader.read(&mut buf[..want])?;
                    if n == 0 && want > 0 {
                        return Err(io_eof());
                    }
                    match left - n as u64 {
                        0 => {
                            expect_crlf(reader)?;
                            self.framing = Framing::Chunked(None);
                        }
                        left => self.framing = Framing::Chunked(Some(left)),
                    }
                    return Ok(n);
                }
            }
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let read = self.read_framed(buf);
        let checked = match (read, &mut self.watch) {
            (Ok(n), Some(watch)) => watch.read(n, started.elapsed()).map(|()| n),
            (Err(e), Some(watch)) if is_timeout(&e) => {
                (watch.given_up)("stalled");
                Err(e)
            }
            (read, _) => read,
        };
        let n = checked.map_err(|e| {
            self.reader = None; // a broken stream is never reused
            io::Error::new(e.kind(), timed_out(e, "the peer stalled"))
        })?;
        if self.framing == Framing::Done {
            if let (Some(reader), Some(home)) = (self.reader.take(), self.home.take()) {
                // Reused only when nothing beyond the body came.
                if reader.buffer().is_empty() {
                    home.put(reader.into_inner());
                }
            }
        }
        Ok(n)
    }
}

/// The size line of the next chunk (hex, extensions ignored).
fn chunk_size(reader: &mut BufReader<TcpStream>) -> io::Result<u64> {
    let line = short_line(reader)?;
    let hex = line.split(';').next().unwrap_or_default().trim();
    match !hex.is_empty() && hex.len() <= 15 {
        true => u64::from_str_radix(hex, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a bad chunk size")),
        false => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a bad chunk size",
        )),
    }
}

fn expect_crlf(reader: &mut BufReader<TcpStream>) -> io::Result<()> {
    match short_line(reader)?.is_empty() {
        true => Ok(()),
        false => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a chunk longer than its size",
        )),
    }
}

/// The trailer lines after the last chunk, up to the blank line.
fn skip_trailers(reader: &mut BufReader<TcpStream>) -> io::Result<()> {
    for _ in 0..64 {
        if short_line(reader)?.is_empty() {
            return Ok(());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "endless trailers",
    ))
}

/// One line of at most 64 bytes, without its CRLF.
fn short_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = Vec::new();
    (&mut *reader).take(66).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a bad line in a chunked body",
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a chunk line that is not text"))
}

/// The time left until `deadline`; an error once it has passed.
fn left_until(deadline: Instant) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match left.is_zero() {
        true => Err(HttpError::Io("the peer did not answer in time".into())),
        false => Ok(left),
    }
}

/// A socket's read or write timeout (`WouldBlock` on Linux).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A socket timeout said in words; other errors (a floor's too) as they
/// are.
fn timed_out(e: io::Error, said: &str) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock => said.to_string(),
        io::ErrorKind::TimedOut if e.get_ref().is_none() => said.to_string(),
        _ => e.to_string(),
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Whether an idle connection is still usable: nothing to read (the peer
/// neither closed it nor sent anything unasked).
fn still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let open =
        matches!(stream.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    open && stream.set_nonblocking(false).is_ok()
}

/// The `Host` header for `addr` (a scope is not part of it).
fn host_header(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
        v4 => v4.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A server on loopback that answers each connection's requests with
    /// `replies` in turn, and reports how many connections it saw.
    fn serve(replies: Vec<&'static [u8]>) -> (SocketAddr, thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let mut connections = 0;
            let mut replies = replies.into_iter();
            listener.set_nonblocking(false).unwrap();
            for stream in listener.incoming() {
                connections += 1;
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8];
                        if reader.read(&mut byte).unwrap_or(0) == 0 {
                            break;
                        }
                        head.push(byte[0]);
                    }
                    if !head.ends_with(b"\r\n\r\n") {
                        break;
                    }
                    match replies.next() {
                        Some(b"") => {
                            // Freeze: never answer this request.
                            thread::sleep(Duration::from_secs(3));
                            return connections;
                        }
                        Some(reply) => stream.write_all(reply).unwrap(),
                        None => return connections,
                    }
                    if replies.len() == 0 {
                        // Closing ends a body without a length.
                        thread::sleep(Duration::from_millis(100));
                        return connections;
                    }
                }
            }
            connections
        });
        (addr, handle)
    }

    fn read_all(reply: Reply) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut body = reply.body;
        body.read_to_end(&mut out)?;
        Ok(out)
    }

    fn client() -> Connections {
        Connections::new(4, Duration::from_secs(1), "test".into())
    }

    #[test]
    fn bodies_of_every_framing_and_a_reused_connection() {
        let (addr, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1;x=y\r\nf\r\n0\r\n\r\n",
            b"HTTP/1.1 206 Partial\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        ]);
        let c = client();
        let get = |path| {
            let deadline = Instant::now() + Duration::from_secs(2);
            c.get(addr, path, &[], deadline, Duration::from_secs(2))
                .unwrap()
        };
        assert_eq!(read_all(get("/a")).unwrap(), b"abc");
        assert_eq!(read_all(get("/b")).unwrap(), b"def");
        let partial = get("/c");
        assert_eq!(partial.status, 206);
        assert_eq!(partial.header("Content-Length"), Some("0"));
        assert_eq!(read_all(partial).unwrap(), b"");
        assert_eq!(read_all(get("/d")).unwrap(), b"until the end");
        assert_eq!(server.join().unwrap(), 1, "one connection for all four");
    }

    #[test]
    fn a_peer_frozen_before_its_reply_head_is_given_up_at_the_deadline() {
        let (addr, _server) = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", b""]);
        let c = client();
        let deadline = Instant::now() + Duration::from_secs(2);
        let first = c.get(addr, "/", &[], deadline, Duration::from_secs(5));
        assert_eq!(read_all(first.unwrap()).unwrap(), b"x");
        // The reused connection: the peer never answers.
        let start = Instant::now();
        let deadline = start + Duration::from_millis(300);
        let frozen = c.get(addr, "/", &[], deadline, Duration::from_secs(5));
        assert!(frozen.is_err());
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn short_bodies_and_bad_heads_are_errors() {
        let (addr, _server) = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"]);
        let c = client();
        let deadline = Instant::now() + Duration::from_secs(2);
        let reply = c.get(addr, "/", &[], deadline, Duration::from_millis(300));
        assert!(read_all(reply.unwrap()).is_err());
        assert!(parse_head(b"HTTP/1.1 2000 OK\r\n").is_err());
        assert!(parse_head(b"SPDY 200 OK\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n").is_err());
        let lengths = |l: &[&str]| {
            let h: Vec<_> = l
                .iter()
                .map(|v| ("Content-Length".to_string(), v.to_string()))
                .collect();
            framing(200, &h)
        };
        assert!(lengths(&["1", "2"]).is_err());
        assert!(lengths(&["-1"]).is_err());
        assert!(lengths(&["18446744073709551616"]).is_err());
        assert_eq!(lengths(&["7", "7"]).unwrap(), Framing::Length(7));
    }

    /// A server on loopback that answers one request with a head for
    /// `len` bytes, `first` bytes at once, then a byte every `every`.
    fn trickle(len: usize, first: usize, every: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head);
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            stream.write_all(reply.as_bytes()).unwrap();
            stream.write_all(&vec![1u8; first]).unwrap();
            for _ in first..len {
                thread::sleep(every);
                if stream.write_all(&[1]).is_err() {
                    return;
                }
            }
        });
        addr
    }

    /// A body with a floor of 64 KiB/s over 300 ms of waiting, and what it
    /// was given up for.
    fn watched(addr: SocketAddr) -> (Body, Arc<Mutex<Vec<&'static str>>>) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let reply = client().get(addr, "/", &[], deadline, Duration::from_secs(2));
        let why = Arc::new(Mutex::new(Vec::new()));
        let told = why.clone();
        let floor = Floor {
            rate: 64 * 1024,
            window: Duration::from_millis(300),
        };
        let given_up = Box::new(move |w| told.lock().unwrap().push(w));
        (reply.unwrap().body.watched(floor, given_up), why)
    }

    #[test]
    fn a_body_under_its_floor_is_given_up_on() {
        let (mut body, why) = watched(trickle(100_000, 1000, Duration::from_millis(50)));
        let mut buf = [0u8; 4096];
        let error = loop {
            match body.read(&mut buf) {
                Ok(0) => panic!("the trickle ended"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert!(error.to_string().contains("too slow"), "{error}");
        assert_eq!(*why.lock().unwrap(), ["too_slow"]);
    }

    /// A stripe lane not read for a while waits in its socket: the time
    /// between reads is not the peer's.
    #[test]
    fn a_body_left_unread_is_not_slow() {
        let (mut body, why) = watched(trickle(60_000, 60_000, Duration::ZERO));
        let mut buf = [0u8; 1];
        assert_eq!(body.read(&mut buf).unwrap(), 1);
        let mut rest = Vec::new();
        for _ in 0..3 {
            thread::sleep(Duration::from_millis(400));
            let mut piece = [0u8; 10_000];
            let n = body.read(&mut piece).unwrap();
            rest.extend_from_slice(&piece[..n]);
        }
        body.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len(), 59_999);
        assert!(why.lock().unwrap().is_empty());
    }
}
