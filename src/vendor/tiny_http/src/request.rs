use std::io::{self, ErrorKind, Read, Write};

use std::fmt;
use std::net::{Shutdown, SocketAddr};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::connection::Connection;
use crate::head::Head;
use crate::response::Progress;
use crate::util::Sink;
use crate::{HTTPVersion, Header, Method, Response};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// peerix patch: a request has no body. A head that announces one is
/// refused before a `Request` is made (see `head.rs`), so upstream's body
/// readers (a buffer of the claimed length, a reader that drained the
/// claimed length when dropped, chunked decoding, `100 Continue`) and
/// `upgrade`, `as_reader`, `into_writer` are gone.
///
/// # Dropped unanswered
///
/// If a `Request` is dropped without `respond` being called (say, the thread
/// answering it panicked), the connection is cut. Upstream sent a 500, which
/// a Nix client takes for an error that aborts its build; a cut connection
/// it retries.
pub struct Request {
    // if this writer is empty, then the request has been answered
    response_writer: Option<Box<dyn Sink + 'static>>,

    remote_addr: Option<SocketAddr>,

    // true if HTTPS, false if HTTP
    secure: bool,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    // If Some, a message must be sent after responding: whether the
    // connection goes on (true) or is to be closed (false).
    notify_when_responded: Option<Sender<bool>>,

    // peerix patch: the connection, to shut down when a response fails half
    // way, so that the client neither takes a short body for a whole one nor
    // waits for bytes that will not come.
    abort: Option<Arc<Connection>>,
}

/// peerix patch: a response that could not be sent whole.
#[derive(Debug)]
pub struct RespondError {
    /// What failed: the body's reader, or writing to the client.
    pub error: io::Error,
    /// Bytes of the body the socket took before that.
    pub sent: u64,
    /// Whether reading the body failed; otherwise writing to the client
    /// did (it went away, or stopped reading until the write timeout).
    pub body_failed: bool,
}

impl RespondError {
    /// Whether the client went away (closed or reset the connection).
    pub fn client_gone(&self) -> bool {
        !self.body_failed
            && matches!(
                self.error.kind(),
                ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::ConnectionReset
                    | ErrorKind::NotConnected
            )
    }
}

impl fmt::Display for RespondError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} after {} bytes of the body", self.error, self.sent)
    }
}

impl std::error::Error for RespondError {}

/// Builds a new request from its head; `writer` writes its response.
pub(crate) fn new_request<W>(
    secure: bool,
    head: Head,
    remote_addr: Option<SocketAddr>,
    writer: W,
) -> Request
where
    W: Sink + 'static,
{
    Request {
        response_writer: Some(Box::new(writer) as Box<dyn Sink + 'static>),
        remote_addr,
        secure,
        method: head.method,
        path: head.path,
        http_version: head.version,
        headers: head.headers,
        notify_when_responded: None,
        abort: None,
    }
}

impl Request {
    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the address of the client that sent this request.
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Sends a response to this request; returns the bytes of its body
    /// sent. peerix patch: when that fails (the body's reader failed, a
    /// write timed out, the client went away: upstream reported the last
    /// as success), the connection is cut and the error says how many bytes
    /// of the body went out before.
    #[inline]
    pub fn respond<R>(self, response: Response<R>) -> Result<u64, RespondError>
    where
        R: Read,
    {
        self.respond_with(response, false)
    }

    /// peerix patch: `respond`, with `Connection: close`: the connection is
    /// closed after this response, and no further request is read from it.
    pub fn respond_and_close<R>(self, response: Response<R>) -> Result<u64, RespondError>
    where
        R: Read,
    {
        self.respond_with(response, true)
    }

    fn respond_with<R>(mut self, response: Response<R>, close: bool) -> Result<u64, RespondError>
    where
        R: Read,
    {
        let mut sent = Progress::default();
        let res = self.respond_impl(response, close, &mut sent);
        if let (Err(e), Some(connection)) = (&res, &self.abort) {
            log::debug!("cutting the connection to {:?}: {}", self.remote_addr, e);
            let _ = connection.shutdown(Shutdown::Both);
        }
        if let Some(sender) = self.notify_when_responded.take() {
            let _ = sender.send(res.is_ok() && !close);
        }
        res.map(|()| sent.bytes).map_err(|error| RespondError {
            error,
            sent: sent.bytes,
            body_failed: sent.body_failed,
        })
    }

    fn respond_impl<R>(
        &mut self,
        response: Response<R>,
        close: bool,
        sent: &mut Progress,
    ) -> io::Result<()>
    where
        R: Read,
    {
        let mut writer = self
            .response_writer
            .take()
            .ok_or_else(|| io::Error::other("answered twice"))?;

        let do_not_send_body = self.method == Method::Head;

        let printed = response
            .print(
                &mut writer,
                self.http_version.clone(),
                do_not_send_body,
                close,
                sent,
            )
            .and_then(|()| writer.flush());
        if printed.is_err() {
            // peerix patch: what the body's reader gave goes out before
            // the connection is cut, and the bytes counted as sent are
            // those that left the buffer: a client resuming a body must
            // hold exactly that many.
            if sent.body_failed {
                let _ = writer.flush();
            }
            sent.bytes = sent.bytes.saturating_sub(writer.pending() as u64);
        }
        printed
    }

    /// peerix patch: the connection to shut down if responding fails.
    pub(crate) fn with_abort(mut self, connection: Option<Arc<Connection>>) -> Self {
        self.abort = connection;
        self
    }

    pub(crate) fn with_notify_sender(mut self, sender: Sender<bool>) -> Self {
        self.notify_when_responded = Some(sender);
        self
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    /// peerix patch: a request dropped unanswered cuts its connection
    /// (upstream answered 500).
    fn drop(&mut self) {
        if self.response_writer.take().is_some() {
            if let Some(connection) = &self.abort {
                let _ = connection.shutdown(Shutdown::Both);
            }
            if let Some(sender) = self.notify_when_responded.take() {
                let _ = sender.send(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
