//! The connection machinery: one thread accepts, a fixed pool of workers
//! serves connections that `epoll` reports readable, and a housekeeping
//! thread closes connections whose head or keep-alive timeout ran out.
//! Idle connections cost a slot and a file descriptor, never a thread.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::connection::{self, Connection, Outcome};
use super::poller::Poller;
use super::response::Response;
use crate::log::{self, Throttle};

/// Serves one parsed request. Implementations must not panic on any input.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: &super::Request, request_id: &str) -> Response;
}

/// Time and size bounds for client connections.
#[derive(Clone, Debug)]
pub struct Limits {
    pub workers: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub write_timeout: Duration,
}

/// File descriptors kept free for the listener, epoll, Redis, stdio, the
/// signal pipe and the log writer when `MAX_CONNECTIONS` is fitted under
/// the open-file limit.
const RESERVED_FDS: usize = 32;
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(100);
const DRAIN_TICK: Duration = Duration::from_millis(5);

enum Slot {
    Free,
    /// Waiting for bytes; closed by housekeeping once `deadline` passes.
    Idle(Box<Connection>, Instant),
    /// A worker is serving it.
    Busy,
}

struct Registry {
    slots: Vec<(u32, Slot)>,
    free: Vec<usize>,
}

pub(super) struct Shared {
    pub(super) handler: Arc<dyn Handler>,
    pub(super) limits: Limits,
    /// Set once shutdown starts: every later response carries
    /// `Connection: close`.
    pub(super) closing: AtomicBool,
    /// Set once tally stops accepting: idle connections are closed.
    draining: AtomicBool,
    poller: Poller,
    registry: Mutex<Registry>,
    open: AtomicUsize,
    accept_stopped: AtomicBool,
}

/// A running server. Dropping it does not stop the threads; the process
/// exits instead.
pub struct Server {
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    local_addr: SocketAddr,
}

static SHED_LOG: Throttle = Throttle::new(Duration::from_secs(10));
static ACCEPT_ERROR_LOG: Throttle = Throttle::new(Duration::from_secs(10));
static TIMEOUT_LOG: Throttle = Throttle::new(Duration::from_secs(10));
static WRITE_TIMEOUT_LOG: Throttle = Throttle::new(Duration::from_secs(10));

impl Server {
    /// Binds `addr` and starts the accept, worker and housekeeping threads.
    pub fn start(
        addr: SocketAddr,
        mut limits: Limits,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Server> {
        limits.max_connections = fit_open_file_limit(limits.max_connections);
        let listener = TcpListener::bind(addr)?;
        // std listens with a backlog of 128; a burst of connections from a
        // load balancer overflows that, so ask for more.
        // SAFETY: the fd belongs to `listener`, which is alive.
        unsafe { libc::listen(listener.as_raw_fd(), 1024) };
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            handler,
            limits: limits.clone(),
            closing: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            poller: Poller::new()?,
            registry: Mutex::new(Registry {
                slots: Vec::new(),
                free: Vec::new(),
            }),
            open: AtomicUsize::new(0),
            accept_stopped: AtomicBool::new(false),
        });
        let listener = Arc::new(listener);
        // The accept thread and one worker start first and the other
        // workers from a background thread, so that the first request does
        // not wait for every thread to be created.
        let acceptor = Arc::clone(&shared);
        let accept_listener = Arc::clone(&listener);
        spawn("accept", 64 * 1024, move || {
            accept_loop(&acceptor, &accept_listener)
        })?;
        spawn_worker(&shared, 0)?;
        let housekeeper = Arc::clone(&shared);
        spawn("housekeeping", 64 * 1024, move || {
            close_expired(&housekeeper)
        })?;
        let spawner = Arc::clone(&shared);
        spawn("spawn-workers", 64 * 1024, move || {
            for index in 1..spawner.limits.workers {
                if let Err(err) = spawn_worker(&spawner, index) {
                    log::error(
                        "failed to start a worker thread",
                        &[("worker", index.into()), ("error", err.to_string().into())],
                    );
                }
            }
        })?;
        Ok(Server {
            shared,
            listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting: new connections are refused at once, while accepted
    /// ones keep being served.
    pub fn stop_accepting(&self) {
        self.shared.accept_stopped.store(true, Ordering::SeqCst);
        // SAFETY: the listener is kept alive by `self`, so the fd is valid.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RD) };
    }

    /// Makes every later response carry `Connection: close`, so that
    /// keep-alive clients such as load balancers move to other replicas
    /// while this one still serves.
    pub fn close_after_responses(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
    }

    /// Closes idle keep-alive connections now and every connection once its
    /// request in progress is served.
    pub fn drain(&self) {
        self.close_after_responses();
        self.shared.draining.store(true, Ordering::SeqCst);
        sweep(&self.shared, Instant::now());
    }

    /// Counts open connections as (being served, waiting for bytes).
    pub fn connection_counts(&self) -> (usize, usize) {
        let registry = lock(&self.shared);
        let mut counts = (0, 0);
        for (_, slot) in &registry.slots {
            match slot {
                Slot::Busy => counts.0 += 1,
                Slot::Idle(..) => counts.1 += 1,
                Slot::Free => {}
            }
        }
        counts
    }

    /// Number of client connections still open.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

fn spawn_worker(shared: &Arc<Shared>, index: usize) -> io::Result<()> {
    let shared = Arc::clone(shared);
    spawn(&format!("worker-{index}"), 256 * 1024, move || {
        serve_ready(&shared)
    })
}

fn spawn(name: &str, stack: usize, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new()
        .name(name.into())
        .stack_size(stack)
        .spawn(body)
        .map(drop)
}

/// Raises the soft open-file limit toward the hard one when needed, and
/// lowers `wanted` when the limit is still too small for it.
fn fit_open_file_limit(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    let needed = (wanted + RESERVED_FDS) as libc::rlim_t;
    if limit.rlim_cur < needed && limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: needed.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    let available = (limit.rlim_cur as usize)
        .saturating_sub(RESERVED_FDS)
        .max(1);
    if wanted > available {
        log::warn(
            "MAX_CONNECTIONS lowered to fit the open-file limit",
            &[
                ("requested", wanted.into()),
                ("max_connections", available.into()),
                ("open_file_limit", limit.rlim_cur.into()),
            ],
        );
        return available;
    }
    wanted
}

fn lock(shared: &Shared) -> MutexGuard<'_, Registry> {
    shared.registry.lock().unwrap_or_else(|e| e.into_inner())
}

fn token(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | index as u64
}

fn accept_loop(shared: &Shared, listener: &TcpListener) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                admit(shared, stream, peer);
            }
            Err(_) if shared.accept_stopped.load(Ordering::SeqCst) => return,
            Err(err) => {
                let transient = matches!(
                    err.raw_os_error(),
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
                );
                if transient {
                    continue;
                }
                if let Some(suppressed) = ACCEPT_ERROR_LOG.allow() {
                    log::warn(
                        "accept failed; retrying",
                        &[
                            ("error", err.to_string().into()),
                            ("retry_ms", (backoff.as_millis() as u64).into()),
                            (
                                "open_connections",
                                shared.open.load(Ordering::Relaxed).into(),
                            ),
                            ("suppressed", suppressed.into()),
                        ],
                    );
                }
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Registers a new connection, or sheds it with a 503 when the server is at
/// `MAX_CONNECTIONS`.
fn admit(shared: &Shared, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    if stream
        .set_write_timeout(Some(shared.limits.write_timeout))
        .is_err()
    {
        return;
    }
    let mut registry = lock(shared);
    if shared.open.load(Ordering::SeqCst) >= shared.limits.max_connections {
        drop(registry);
        shed(shared, &stream, peer);
        return;
    }
    let fd = stream.as_raw_fd();
    let connection = Box::new(Connection::new(stream, peer));
    let index = match registry.free.pop() {
        Some(index) => index,
        None => {
            registry.slots.push((0, Slot::Free));
            registry.slots.len() - 1
        }
    };
    let deadline = Instant::now() + shared.limits.header_timeout;
    let generation = registry.slots[index].0;
    registry.slots[index].1 = Slot::Idle(connection, deadline);
    shared.open.fetch_add(1, Ordering::SeqCst);
    if let Err(err) = shared.poller.add(fd, token(index, generation)) {
        release(&mut registry, shared, index);
        log::error(
            "failed to watch a connection",
            &[("error", err.to_string().into())],
        );
    }
}

fn shed(shared: &Shared, stream: &TcpStream, peer: SocketAddr) {
    let response = Response::error(503, "server is at its connection limit; retry shortly")
        .header("Retry-After", "1");
    connection::send_closing_response(stream, &response);
    if let Some(suppressed) = SHED_LOG.allow() {
        log::warn(
            "connection limit reached; new connections get 503",
            &[
                ("max_connections", shared.limits.max_connections.into()),
                ("client", peer.to_string().into()),
                ("suppressed", suppressed.into()),
            ],
        );
    }
}

/// Frees slot `index`; the caller drops the connection, which closes its
/// socket and removes it from epoll.
fn release(registry: &mut Registry, shared: &Shared, index: usize) {
    let slot = &mut registry.slots[index];
    slot.0 = slot.0.wrapping_add(1);
    slot.1 = Slot::Free;
    registry.free.push(index);
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

fn serve_ready(shared: &Shared) {
    let mut out = Vec::with_capacity(4096);
    loop {
        let token = match shared.poller.wait() {
            Ok(token) => token,
            Err(err) => {
                log::error("epoll_wait failed", &[("error", err.to_string().into())]);
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let index = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        let Some(mut conn) = take(shared, index, generation) else {
            continue;
        };
        // A panic must cost one connection, not a worker and its slot.
        let served = panic::catch_unwind(AssertUnwindSafe(|| {
            connection::serve(shared, &mut conn, &mut out)
        }));
        let outcome = served.unwrap_or_else(|_| {
            log::error(
                "panic while serving a connection; closing it",
                &[("client", conn.peer().into())],
            );
            Outcome::Close
        });
        park_or_close(shared, index, conn, outcome);
    }
}

fn take(shared: &Shared, index: usize, generation: u32) -> Option<Box<Connection>> {
    let mut registry = lock(shared);
    let slot = registry.slots.get_mut(index)?;
    if slot.0 != generation || !matches!(slot.1, Slot::Idle(..)) {
        return None;
    }
    match std::mem::replace(&mut slot.1, Slot::Busy) {
        Slot::Idle(conn, _) => Some(conn),
        _ => None,
    }
}

fn park_or_close(shared: &Shared, index: usize, mut conn: Box<Connection>, outcome: Outcome) {
    conn.shrink_buffer();
    let mut registry = lock(shared);
    let draining = shared.draining.load(Ordering::SeqCst);
    let done = draining && conn.is_idle() && !conn.has_unread_input();
    let keep = match outcome {
        Outcome::KeepOpen => !done,
        Outcome::WaitWritable => true,
        Outcome::Close => false,
    };
    if !keep {
        release(&mut registry, shared, index);
        drop(registry);
        drop(conn);
        return;
    }
    let limits = &shared.limits;
    let deadline = conn
        .deadline(limits.header_timeout, limits.write_timeout)
        .unwrap_or_else(|| Instant::now() + limits.keepalive_timeout);
    let fd = conn.fd();
    let token = token(index, registry.slots[index].0);
    registry.slots[index].1 = Slot::Idle(conn, deadline);
    let armed = match outcome {
        Outcome::WaitWritable => shared.poller.rearm_writable(fd, token),
        _ => shared.poller.rearm(fd, token),
    };
    if armed.is_err() {
        release(&mut registry, shared, index);
    }
}

fn close_expired(shared: &Shared) {
    loop {
        let draining = shared.draining.load(Ordering::SeqCst);
        thread::sleep(if draining {
            DRAIN_TICK
        } else {
            HOUSEKEEPING_TICK
        });
        sweep(shared, Instant::now());
    }
}

/// Closes idle connections past their deadline and, while draining, every
/// connection that has no request in progress.
fn sweep(shared: &Shared, now: Instant) {
    let draining = shared.draining.load(Ordering::SeqCst);
    let mut expired = Vec::new();
    {
        let mut registry = lock(shared);
        for index in 0..registry.slots.len() {
            // A request that arrived but is not read yet is served (with
            // `Connection: close`) rather than reset by closing under it.
            let due = match &registry.slots[index].1 {
                Slot::Idle(conn, deadline) => {
                    *deadline <= now || (draining && conn.is_idle() && !conn.has_unread_input())
                }
                _ => false,
            };
            if due {
                let slot = std::mem::replace(&mut registry.slots[index].1, Slot::Busy);
                release(&mut registry, shared, index);
                if let Slot::Idle(conn, _) = slot {
                    expired.push(conn);
                }
            }
        }
    }
    for conn in expired {
        if conn.is_receiving_head() {
            conn.send_timeout_response();
            if let Some(suppressed) = TIMEOUT_LOG.allow() {
                let timeout_ms = shared.limits.header_timeout.as_millis() as u64;
                log::warn(
                    "request head not received in time; connection closed",
                    &[
                        ("client", conn.peer().into()),
                        ("header_timeout_ms", timeout_ms.into()),
                        ("suppressed", suppressed.into()),
                    ],
                );
            }
        } else if conn.has_pending_output() {
            if let Some(suppressed) = WRITE_TIMEOUT_LOG.allow() {
                let timeout_ms = shared.limits.write_timeout.as_millis() as u64;
                log::warn(
                    "client did not read its answers in time; connection closed",
                    &[
                        ("client", conn.peer().into()),
                        ("write_timeout_ms", timeout_ms.into()),
                        ("suppressed", suppressed.into()),
                    ],
                );
            }
        }
    }
}
