//! Deadlines for every request on a connection, not only the first.
//!
//! actix-http arms its request-head timer only before a connection's first
//! request, and stops its keep-alive timer as soon as one byte of the next
//! request arrives: after one answer, a client sending a single byte (or
//! trickling a body the handler never read) held the connection forever.
//! Each accepted stream is wrapped in a [`TimedStream`] whose deadline
//! follows the connection through its phases:
//!
//! - waiting for a request (after an answer): `limits.keep_alive_secs`;
//! - from the first byte of a request to its dispatch to the app:
//!   `limits.client_request_timeout_ms`. No route reads a request body
//!   (the answer comes first and the rest is drained), so a body's bytes
//!   after the answer count as the next request's and have the same bound;
//! - while the app works on a request: none (the server's own time);
//! - while its answer is being written: `limits.keep_alive_secs` without
//!   progress (a client that never reads).
//!
//! At the deadline the stream fails its reads and writes, which ends the
//! connection; a late request head first gets a best-effort 408. The app
//! marks dispatch and answer through [`RequestPhase`], found in the
//! connection's data.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::ServiceRequest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::config::LimitSettings;

/// How long a client may take in each phase of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From a request's first byte until the app has it.
    pub request: Duration,
    /// Waiting for the next request, or for the client to take an answer.
    pub idle: Duration,
}

impl Deadlines {
    pub fn from_limits(limits: &LimitSettings) -> Self {
        Self {
            request: Duration::from_millis(limits.client_request_timeout_ms),
            // keep_alive_secs = 0 turns keep-alive off in actix; a client
            // that does not take its answer still gets a bound.
            idle: Duration::from_secs(limits.keep_alive_secs.max(1)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests (after an answer was written).
    Idle,
    /// Bytes of a request are arriving; the app does not have it yet.
    Head,
    /// The app works on a request.
    Busy,
    /// The app's answer is ready and being written.
    Answering,
}

#[derive(Debug)]
struct Shared {
    phase: Cell<Phase>,
    /// `None` while the app works (see [`Phase::Busy`]).
    deadline: Cell<Option<Instant>>,
    limits: Deadlines,
}

impl Shared {
    fn enter(&self, phase: Phase, bound: Option<Duration>) {
        self.phase.set(phase);
        self.deadline.set(bound.map(|b| Instant::now() + b));
    }
}

/// The connection's clock as the app sees it (in the connection's data).
#[derive(Debug, Clone)]
pub struct ConnectionClock(Rc<Shared>);

/// Marks a request as dispatched to the app until it is dropped, then as
/// answered (whatever the outcome: an answer, an error, a cancellation).
pub struct RequestPhase(Option<ConnectionClock>);

impl RequestPhase {
    /// Starts the app's own time for `req` (a no-op off a [`TimedStream`]).
    pub fn start(req: &ServiceRequest) -> Self {
        let clock = req.conn_data::<ConnectionClock>().cloned();
        if let Some(ConnectionClock(shared)) = &clock {
            shared.enter(Phase::Busy, None);
        }
        Self(clock)
    }
}

impl Drop for RequestPhase {
    fn drop(&mut self) {
        if let Some(ConnectionClock(shared)) = &self.0 {
            shared.enter(Phase::Answering, Some(shared.limits.idle));
        }
    }
}

/// Sent when a request head is late, if no answer is half-written.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// A TCP stream that fails once its connection's current deadline passes.
pub struct TimedStream {
    io: TcpStream,
    shared: Rc<Shared>,
    /// Fires at `armed`; moved only when the deadline comes earlier than
    /// that (a later one is checked for when it fires), so the common
    /// request costs no timer update.
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// The last write was refused: part of an answer may be unwritten.
    write_blocked: bool,
    /// Some byte has arrived. A connection opened and never used (an HTTP
    /// client's spare, kept in its pool) is closed at its deadline without
    /// a 408, which that client would read as the answer to a later request.
    used: bool,
    expired: bool,
}

impl TimedStream {
    /// Wraps a new connection: its first request's head is due now.
    pub fn new(io: TcpStream, limits: Deadlines) -> Self {
        let deadline = Instant::now() + limits.request;
        Self {
            io,
            shared: Rc::new(Shared {
                phase: Cell::new(Phase::Head),
                deadline: Cell::new(Some(deadline)),
                limits,
            }),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: Some(deadline),
            write_blocked: false,
            used: false,
            expired: false,
        }
    }

    /// What the app's requests on this connection share with it.
    pub fn clock(&self) -> ConnectionClock {
        ConnectionClock(Rc::clone(&self.shared))
    }

    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "the client was too slow")
    }

    /// Registers the deadline's wake-up with `cx`; `Err` once it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.expired {
            return Err(Self::timed_out());
        }
        loop {
            let Some(deadline) = self.shared.deadline.get() else {
                return Ok(());
            };
            if self.armed.is_none_or(|armed| deadline < armed) {
                self.sleep.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            self.armed = None;
            if deadline <= Instant::now() {
                self.expire(cx);
                return Err(Self::timed_out());
            }
        }
    }

    fn expire(&mut self, cx: &mut Context<'_>) {
        self.expired = true;
        if self.shared.phase.get() == Phase::Head && self.used && !self.write_blocked {
            // Best effort: whatever the socket takes now, never waiting.
            let _ = Pin::new(&mut self.io).poll_write(cx, REQUEST_TIMEOUT);
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.used |= buf.filled().len() > before;
                if buf.filled().len() > before && this.shared.phase.get() == Phase::Idle {
                    this.shared
                        .enter(Phase::Head, Some(this.shared.limits.request));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.poll_deadline(cx)?;
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(Self::timed_out()));
        }
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.write_blocked = false;
                // An answer moving out: the client is taking it. Writes
                // while the app works on a pipelined request are the
                // previous answer's and leave the phase alone.
                if n > 0 && matches!(this.shared.phase.get(), Phase::Answering | Phase::Idle) {
                    this.shared
                        .enter(Phase::Idle, Some(this.shared.limits.idle));
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                this.write_blocked = true;
                this.poll_deadline(cx)?;
                Poll::Pending
            }
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Raises this process's soft limit on open files to its hard limit, so
/// `limits.max_connections` is not cut short by a default soft limit
/// (often 1024). Failure is logged and harmless.
pub fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        log::debug!(
            "open-file limit: {:?} (already the hard limit)",
            limit.current
        );
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => log::debug!(
            "open-file limit raised from {:?} to {:?}",
            limit.current,
            limit.maximum
        ),
        Err(e) => log::debug!(
            "open-file limit stays at {:?} (cannot raise it to {:?}: {e})",
            limit.current,
            limit.maximum
        ),
    }
}
