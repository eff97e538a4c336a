//! One client connection: reading without blocking, responding to every
//! complete request in the buffer in order (pipelining), and sending the
//! responses without blocking. Reading stops at a bounded buffer and while
//! responses are unsent, so a client can make the server hold at most one
//! head, one small body and the responses to what it already sent.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::request::{self, Method, Request, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use super::response::{self, Response};
use super::server::Shared;
use crate::log::{self, Level};

/// Requests served in one turn before the worker stops reading from the
/// connection and lets others go first. Requests already read are served
/// regardless, because epoll does not report bytes that left the socket.
const MAX_REQUESTS_PER_TURN: usize = 64;
const READ_CHUNK: usize = 4096;
/// How long input is drained after an error response before the socket closes.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Wait until the client sends more bytes.
    KeepOpen,
    /// Wait until the socket takes the rest of the pending output.
    WaitWritable,
    Close,
}

/// The next step once the pending output is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterFlush {
    Continue,
    Close,
    Linger,
}

pub struct Connection {
    stream: TcpStream,
    /// The client's address as text, formatted once for the access log.
    peer: String,
    buf: Vec<u8>,
    /// When the first byte of the request now being received arrived.
    head_started: Option<Instant>,
    /// Set after an error response: input is read and discarded until this
    /// time, so that closing with unread input does not reset the
    /// connection before the client has read the error.
    linger_until: Option<Instant>,
    /// Responses the socket did not take yet. While any are pending, no
    /// more requests are read, so a client that does not read its responses
    /// costs this buffer and a file descriptor, but no worker.
    pending: Vec<u8>,
    /// When `pending` last became non-empty.
    write_started: Option<Instant>,
    after_flush: AfterFlush,
}

impl Connection {
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Connection {
        Connection {
            stream,
            peer: peer.to_string(),
            buf: Vec::new(),
            head_started: None,
            linger_until: None,
            pending: Vec::new(),
            write_started: None,
            after_flush: AfterFlush::Continue,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// True when no request is partly received and no response is unsent.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.pending.is_empty()
    }

    /// Frees a buffer grown by a large request, so that an idle keep-alive
    /// connection keeps at most one read chunk.
    pub fn shrink_buffer(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > READ_CHUNK {
            self.buf = Vec::new();
        }
    }

    /// True when the client has sent bytes that no worker has read yet.
    pub fn has_unread_input(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: the buffer is one valid byte; MSG_PEEK leaves the data queued.
        let n = unsafe {
            libc::recv(
                self.fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n > 0
    }

    /// True while part of a request head has arrived and nothing else is
    /// going on: the state in which a head timeout earns a 408.
    pub fn is_receiving_head(&self) -> bool {
        !self.buf.is_empty() && self.pending.is_empty() && self.linger_until.is_none()
    }

    pub fn has_pending_output(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When the connection must be closed if it makes no progress: the end
    /// of its write timeout, linger time or head timeout, if one applies.
    pub fn deadline(
        &self,
        header_timeout: std::time::Duration,
        write_timeout: std::time::Duration,
    ) -> Option<Instant> {
        self.write_started
            .map(|started| started + write_timeout)
            .or(self.linger_until)
            .or_else(|| self.head_started.map(|started| started + header_timeout))
    }

    /// Tells a client that sent only part of a head that it took too long.
    pub fn send_timeout_response(&self) {
        let response = Response::error(408, "request head not received in time");
        send_closing_response(&self.stream, &response);
    }

    /// Reads what the socket holds without blocking, returning the bytes
    /// read and the most that were asked for. `Ok((0, _))` means the peer
    /// closed its side.
    fn read_available(&mut self) -> io::Result<(usize, usize)> {
        let room = (MAX_HEAD_BYTES + MAX_BODY_BYTES + READ_CHUNK).saturating_sub(self.buf.len());
        let want = room.min(READ_CHUNK);
        if want == 0 {
            return Err(io::Error::other("request buffer full"));
        }
        self.buf.reserve(want);
        let spare = self.buf.spare_capacity_mut();
        // SAFETY: `spare` has at least `want` writable bytes; recv writes at most that many.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                want,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised the first `n` spare bytes.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        if n > 0 && self.head_started.is_none() {
            self.head_started = Some(Instant::now());
        }
        Ok((n, want))
    }
}

/// Sends `response` with `Connection: close` if the socket takes it at
/// once: a best-effort answer to a client that is about to be dropped.
pub fn send_closing_response(stream: &TcpStream, response: &Response) {
    let mut out = Vec::new();
    let request_id = crate::ids::new_request_id();
    response::serialize(&mut out, response, false, &request_id, true, false);
    // SAFETY: the pointer and length describe `out`.
    unsafe {
        libc::send(
            stream.as_raw_fd(),
            out.as_ptr().cast(),
            out.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// Serves a connection that epoll reported ready, until its socket has
/// nothing more to read, cannot take more output, or must close. `out` is
/// the worker's reusable output buffer and is left empty.
pub(super) fn serve(shared: &Shared, conn: &mut Connection, out: &mut Vec<u8>) -> Outcome {
    out.clear();
    if !conn.pending.is_empty() {
        match flush_pending(conn) {
            Ok(true) => {}
            Ok(false) => return Outcome::WaitWritable,
            Err(_) => return Outcome::Close,
        }
        match conn.after_flush {
            AfterFlush::Continue => {}
            AfterFlush::Close => return Outcome::Close,
            AfterFlush::Linger => return start_linger(conn),
        }
    }
    if conn.linger_until.is_some() {
        return discard_input(conn);
    }
    let mut answered = 0;
    loop {
        // A short read drained the socket: after answering, the worker parks
        // the connection instead of spending a recv on an empty socket. Bytes
        // that arrive meanwhile make epoll report it again on re-arm.
        let drained = match conn.read_available() {
            Ok((0, _)) => return Outcome::Close,
            Ok((n, want)) => n < want,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Outcome::KeepOpen,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Outcome::Close,
        };
        // Every complete request already read is answered now: epoll would
        // not report the connection again for bytes that left the socket.
        let next = answer_buffered(shared, conn, out, &mut answered);
        let after_flush = match next {
            Next::Continue => AfterFlush::Continue,
            Next::Close => AfterFlush::Close,
            Next::CloseAfterError => AfterFlush::Linger,
        };
        if !out.is_empty() {
            match send_available(conn, out) {
                Ok(sent) if sent == out.len() => {}
                Ok(sent) => {
                    conn.pending.extend_from_slice(&out[sent..]);
                    conn.write_started = Some(Instant::now());
                    conn.after_flush = after_flush;
                    out.clear();
                    return Outcome::WaitWritable;
                }
                Err(_) => return Outcome::Close,
            }
            out.clear();
        }
        match after_flush {
            AfterFlush::Continue if drained || answered >= MAX_REQUESTS_PER_TURN => {
                return Outcome::KeepOpen;
            }
            AfterFlush::Continue => {}
            AfterFlush::Close => return Outcome::Close,
            AfterFlush::Linger => return start_linger(conn),
        }
    }
}

/// Sends as much of `bytes` as the socket takes without blocking.
fn send_available(conn: &Connection, bytes: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: the pointer and length describe `rest`.
        let n = unsafe {
            libc::send(
                conn.fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            sent += n as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(sent),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
    Ok(sent)
}

/// Sends pending output; returns whether all of it went out.
fn flush_pending(conn: &mut Connection) -> io::Result<bool> {
    let sent = send_available(conn, &conn.pending)?;
    conn.pending.drain(..sent);
    if conn.pending.is_empty() {
        conn.pending = Vec::new();
        conn.write_started = None;
        return Ok(true);
    }
    Ok(false)
}

/// Closes the write side after an error answer and starts discarding input.
fn start_linger(conn: &mut Connection) -> Outcome {
    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
    conn.buf = Vec::new();
    conn.head_started = None;
    conn.linger_until = Some(Instant::now() + LINGER);
    discard_input(conn)
}

/// Reads and drops whatever the client still sends after an error, until
/// it closes or `LINGER` runs out (enforced by housekeeping).
fn discard_input(conn: &mut Connection) -> Outcome {
    let mut scratch = [0u8; READ_CHUNK];
    for _ in 0..64 {
        // SAFETY: the pointer and length describe `scratch`.
        let n = unsafe {
            libc::recv(
                conn.fd(),
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return Outcome::Close;
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Outcome::KeepOpen,
                _ => Outcome::Close,
            };
        }
    }
    Outcome::KeepOpen
}

enum Next {
    Continue,
    /// Close after writing the answers, as HTTP asks (`Connection: close`).
    Close,
    /// Close after an error answer; the client may still be sending.
    CloseAfterError,
}

/// Answers every complete request at the front of the buffer, and says
/// what the connection does once the answers are written.
fn answer_buffered(
    shared: &Shared,
    conn: &mut Connection,
    out: &mut Vec<u8>,
    answered: &mut usize,
) -> Next {
    loop {
        if conn.buf.is_empty() {
            conn.head_started = None;
            return Next::Continue;
        }
        let request = match request::parse_head(&conn.buf) {
            Ok(Some(request)) => request,
            Ok(None) => return Next::Continue,
            Err(err) => {
                let response = Response::error(err.status, err.message);
                let request_id = crate::ids::new_request_id();
                response::serialize(out, &response, false, &request_id, true, false);
                log_rejected(conn, &err, &request_id);
                return Next::CloseAfterError;
            }
        };
        let total = request.head_len + request.body_len;
        let body_complete = conn.buf.len() >= total;
        if !body_complete && !request.expects_continue {
            return Next::Continue;
        }
        let started = Instant::now();
        let request_id = request
            .request_id
            .clone()
            .unwrap_or_else(crate::ids::new_request_id);
        let response = shared.handler.handle(&request, &request_id);
        let closing = shared.closing.load(Ordering::Relaxed);
        // A client waiting for `100 Continue` may still send its body; closing
        // is simpler and safer than guessing whether those bytes will come.
        let close = !request.keep_alive || closing || !body_complete;
        let head_only = request.method == Method::Head;
        let keep_alive_1_0 = request.minor_version == 0 && !close;
        response::serialize(
            out,
            &response,
            head_only,
            &request_id,
            close,
            keep_alive_1_0,
        );
        log_access(conn, &request, &response, &request_id, started);
        *answered += 1;
        let consumed = total.min(conn.buf.len());
        conn.buf.drain(..consumed);
        conn.head_started = (!conn.buf.is_empty()).then(Instant::now);
        if close && !body_complete {
            return Next::CloseAfterError;
        }
        if close {
            return Next::Close;
        }
    }
}

fn log_access(
    conn: &Connection,
    request: &Request,
    response: &Response,
    request_id: &str,
    started: Instant,
) {
    if !log::enabled(Level::Info) {
        return;
    }
    let micros = started.elapsed().as_micros() as f64;
    log::info(
        "request",
        &[
            ("method", request.method_name.as_str().into()),
            ("path", request.target.as_str().into()),
            ("status", response.status.into()),
            ("duration_ms", ((micros / 10.0).round() / 100.0).into()),
            ("request_id", request_id.into()),
            ("client", conn.peer.as_str().into()),
        ],
    );
}

fn log_rejected(conn: &Connection, err: &request::ParseError, request_id: &str) {
    log::info(
        "request rejected",
        &[
            ("status", err.status.into()),
            ("error", err.message.into()),
            ("request_id", request_id.into()),
            ("client", conn.peer.as_str().into()),
        ],
    );
}
