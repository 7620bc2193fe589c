//! peerix patch: a request head (request line and headers) parsed from its
//! bytes, and whether it can be served at all. Peerix takes no request
//! bodies: a head that announces one (`Content-Length` above 0, any
//! `Transfer-Encoding`, `Expect: 100-continue`) is refused here, before a
//! byte of the body is read and before the request reaches a handler, so
//! that no number a client sends sizes a buffer or a wait.
//!
//! `parse_head` is a pure function, the one the connection reader uses
//! (`client.rs`) and the one `integration/fuzz` fuzzes.

use std::str::FromStr;

use crate::common::{HTTPVersion, Header, Method};

/// A request head that may be served.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: Method,
    /// The request target as sent (path and query).
    pub path: String,
    pub version: HTTPVersion,
    pub headers: Vec<Header>,
}

/// Why a head is not served: the status to answer it with (the connection
/// is closed after it) and a line saying why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: &'static str,
}

const fn refuse(status: u16, why: &'static str) -> Refusal {
    Refusal { status, why }
}

/// Parses the bytes of a request head: the request line and the header
/// lines, each ended by CRLF, and the empty line that ends the head (which
/// may be left out). Refuses what is malformed (400), a version other than
/// HTTP/1.0 or 1.1 (400), a head that announces a body (413: this server
/// takes none; 400 for a `Content-Length` that is not a number) and an
/// expectation it cannot meet (417).
pub fn parse_head(bytes: &[u8]) -> Result<Head, Refusal> {
    let text = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or(refuse(400, "the request head is not ASCII"))?;
    let text = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    let mut lines = text.split("\r\n");
    // No control characters but the tab (in header values): a lone CR or
    // LF is where parsers disagree on where a line ends.
    if lines
        .clone()
        .any(|line| line.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f))
    {
        return Err(refuse(400, "control characters in the request head"));
    }
    let request_line = lines.next().unwrap_or_default();
    if request_line.contains('\t') {
        return Err(refuse(400, "malformed request line"));
    }
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(400, "malformed request line"));
    };
    let method: Method = method
        .parse()
        .map_err(|_| refuse(400, "malformed method"))?;
    if method.as_str().is_empty() || path.is_empty() {
        return Err(refuse(400, "malformed request line"));
    }
    let version = match version {
        "HTTP/1.1" => HTTPVersion(1, 1),
        "HTTP/1.0" => HTTPVersion(1, 0),
        // 400, not 505: bad input never gets a 5xx.
        _ => return Err(refuse(400, "only HTTP/1.0 and 1.1")),
    };
    let headers = lines
        .map(|line| Header::from_str(line.trim()).map_err(|_| refuse(400, "malformed header")))
        .collect::<Result<Vec<Header>, Refusal>>()?;
    refuse_body(&headers)?;
    Ok(Head {
        method,
        path: path.to_owned(),
        version,
        headers,
    })
}

/// Refuses a head that announces a body or expects one to be asked for.
fn refuse_body(headers: &[Header]) -> Result<(), Refusal> {
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    };
    for length in values("Content-Length") {
        let digits = !length.is_empty() && length.bytes().all(|b| b.is_ascii_digit());
        if !digits {
            return Err(refuse(400, "malformed Content-Length"));
        }
        if length.bytes().any(|b| b != b'0') {
            return Err(refuse(413, "this server takes no request bodies"));
        }
    }
    if values("Transfer-Encoding").next().is_some() {
        return Err(refuse(413, "this server takes no request bodies"));
    }
    for expect in values("Expect") {
        if expect.eq_ignore_ascii_case("100-continue") {
            return Err(refuse(413, "this server takes no request bodies"));
        }
        return Err(refuse(417, "unknown expectation"));
    }
    Ok(())
}

impl Head {
    /// Whether the client may send another request on this connection:
    /// not after `Connection: close` (or `upgrade`, which is not served),
    /// nor with HTTP/1.0 without `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let connection = self
            .headers
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str().to_ascii_lowercase());
        match connection {
            Some(v) if v.contains("close") || v.contains("upgrade") => false,
            Some(v) if self.version == HTTPVersion(1, 0) => v.contains("keep-alive"),
            None => self.version != HTTPVersion(1, 0),
            Some(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str) -> Result<(), u16> {
        parse_head(head.as_bytes())
            .map(|_| ())
            .map_err(|r| r.status)
    }

    #[test]
    fn heads_without_bodies_are_served() {
        let head = parse_head(b"GET /peer/x.narinfo?a=b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.path, "/peer/x.narinfo?a=b");
        assert_eq!(head.version, HTTPVersion(1, 1));
        assert_eq!(head.headers.len(), 1);
        assert!(head.keep_alive());
        assert_eq!(
            status("HEAD / HTTP/1.0\r\nContent-Length: 0\r\n\r\n"),
            Ok(())
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 000\r\n\r\n"),
            Ok(())
        );
        assert_eq!(status("GET / HTTP/1.1"), Ok(()));
    }

    #[test]
    fn bodies_are_refused() {
        for claim in [
            "1",
            "1000000000000000",
            "18446744073709551615",
            "99999999999999999999999",
        ] {
            let head = format!("GET / HTTP/1.1\r\nContent-Length: {claim}\r\n\r\n");
            assert_eq!(status(&head), Err(413), "{claim}");
        }
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length:\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n"),
            Err(413)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(413)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n"),
            Err(413)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"),
            Err(413)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nExpect: something\r\n\r\n"),
            Err(417)
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for head in [
            "",
            "\r\n\r\n",
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n\r\nY: b\r\n\r\n",
            "GET / HTTQ/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: \u{e9}\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\nX: a\r\n\r\n",
            "GET /\0 HTTP/1.1\r\n\r\n",
            "GET /a\tb HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(head), Err(400), "{head:?}");
        }
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), Err(400));
        assert_eq!(status("GET / HTTP/0.9\r\n\r\n"), Err(400));
    }

    #[test]
    fn keep_alive_follows_connection_and_version() {
        let keep = |h: &str| parse_head(h.as_bytes()).unwrap().keep_alive();
        assert!(!keep("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(keep("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"));
    }
}
