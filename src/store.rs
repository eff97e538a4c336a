//! The Redis backing service: one thread owns one connection and sends
//! every queued command as a single pipeline. Workers hand it commands over
//! a channel and wait, bounded, for their reply.
//!
//! Why one pipelining connection rather than a connection per worker: with
//! 16 threads each issuing one INCR at a time on 2 cores, one pipelining
//! thread did 1.0 to 2.1 times the operations per second of a connection
//! per thread. Those are six rounds of bench/redis-sharing, with results in
//! docs/benchmarks.md. With 4 threads it did 0.43 to 0.76 times, but tally
//! runs 8 workers per CPU by default, and one connection per replica also
//! spares Redis.
//!
//! No command is ever retried: a command that timed out or whose
//! connection broke may have been applied, so it is answered with an
//! "outcome unknown" error instead of risking a double count.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redis::Value;

use crate::log::{self, Throttle};

/// Most commands sent in one pipeline.
const MAX_BATCH: usize = 256;
/// Idle time after which the connection is checked with `PING`, so that
/// readiness reflects Redis without a probe ever reaching it.
const HEARTBEAT: Duration = Duration::from_millis(1_000);
/// Readiness turns false when Redis has not replied for this long.
const READY_WINDOW: Duration = Duration::from_millis(3_000);
/// Pause between reconnect attempts; short, so that service resumes within
/// a second of Redis coming back.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `INCRBY key n`, returning the new value.
    Increment(i64),
    /// `GET key`, returning 0 for a missing key.
    Read,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Redis cannot be reached; nothing was sent.
    Unavailable(String),
    /// The command may or may not have been applied.
    OutcomeUnknown(String),
    /// The increment would pass the largest 64-bit integer.
    Overflow,
    /// The key contains a string that is not a 64-bit integer.
    NotInteger,
    /// The key contains a list, hash or other non-string type.
    WrongType,
    /// Any other error reply from Redis.
    Server(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(reason) => write!(f, "redis unavailable: {reason}"),
            StoreError::OutcomeUnknown(reason) => {
                write!(f, "redis did not confirm the command: {reason}")
            }
            StoreError::Overflow => write!(f, "increment would overflow a 64-bit integer"),
            StoreError::NotInteger => write!(f, "value is not a 64-bit integer"),
            StoreError::WrongType => write!(f, "key contains a value of the wrong type"),
            StoreError::Server(message) => write!(f, "redis error: {message}"),
        }
    }
}

type Reply = (u64, Result<i64, StoreError>);

struct Job {
    op: Op,
    key: String,
    sequence: u64,
    reply: Sender<Reply>,
}

struct Health {
    connected: AtomicBool,
    /// Becomes true when the first connection attempt has ended either way.
    first_attempt_done: (Mutex<bool>, Condvar),
    /// Milliseconds since `started` when Redis last replied.
    last_answer_ms: AtomicU64,
    reason: Mutex<String>,
    started: Instant,
}

/// A handle to the Redis thread; cheap to share between workers.
#[derive(Clone)]
pub struct Store {
    jobs: Sender<Job>,
    health: Arc<Health>,
    timeout: Duration,
}

/// A worker's reply channel and the sequence number of its last job.
type ReplyChannel = (Sender<Reply>, Receiver<Reply>, u64);

thread_local! {
    static REPLIES: RefCell<Option<ReplyChannel>> = const { RefCell::new(None) };
}

impl Store {
    /// Starts the Redis thread. It connects in the background, so tally
    /// serves liveness while Redis is down; `on_first_answer` runs once,
    /// when Redis first replies.
    pub fn start(
        url: &str,
        timeout: Duration,
        on_first_answer: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<Store> {
        let client = redis::Client::open(url).map_err(std::io::Error::other)?;
        let (jobs, queue) = mpsc::channel();
        let health = Arc::new(Health {
            connected: AtomicBool::new(false),
            first_attempt_done: (Mutex::new(false), Condvar::new()),
            last_answer_ms: AtomicU64::new(0),
            reason: Mutex::new("not connected to redis yet".into()),
            started: Instant::now(),
        });
        let thread_health = Arc::clone(&health);
        thread::Builder::new()
            .name("redis".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut link = Link {
                    client,
                    timeout,
                    health: thread_health,
                    connection: None,
                    timed_out: false,
                    on_first_answer: Some(on_first_answer),
                };
                link.run(&queue);
            })?;
        Ok(Store {
            jobs,
            health,
            timeout,
        })
    }

    /// Runs one command and waits for its reply. Never waits longer than
    /// twice the Redis timeout plus a margin.
    pub fn execute(&self, op: Op, key: &str) -> Result<i64, StoreError> {
        let deadline = Instant::now() + self.timeout * 2 + Duration::from_millis(100);
        if !self.health.connected.load(Ordering::Acquire) {
            // A request that arrives while tally is still making its first
            // connection waits for it rather than failing.
            self.health.wait_first_attempt(self.timeout);
        }
        if !self.health.connected.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(self.health.reason()));
        }
        REPLIES.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (sender, receiver, last) = cell.get_or_insert_with(|| {
                let (sender, receiver) = mpsc::channel();
                (sender, receiver, 0)
            });
            *last += 1;
            let sequence = *last;
            let job = Job {
                op,
                key: key.to_string(),
                sequence,
                reply: sender.clone(),
            };
            if self.jobs.send(job).is_err() {
                return Err(StoreError::Unavailable("redis thread stopped".into()));
            }
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match receiver.recv_timeout(left) {
                    // A late reply to a job this worker gave up on.
                    Ok((seen, _)) if seen != sequence => continue,
                    Ok((_, result)) => return result,
                    Err(_) => {
                        let reason = "no reply within the timeout".to_string();
                        return Err(match op {
                            Op::Increment(_) => StoreError::OutcomeUnknown(reason),
                            Op::Read => StoreError::Unavailable(reason),
                        });
                    }
                }
            }
        })
    }

    /// Returns why tally is not ready, or `None` when Redis answered recently.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.health.connected.load(Ordering::Acquire) {
            return Some(self.health.reason());
        }
        let last = Duration::from_millis(self.health.last_answer_ms.load(Ordering::Acquire));
        let silent = self.health.started.elapsed().saturating_sub(last);
        (silent > READY_WINDOW)
            .then(|| format!("redis has not answered for {} ms", silent.as_millis()))
    }
}

impl Health {
    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn wait_first_attempt(&self, limit: Duration) {
        let (done, changed) = &self.first_attempt_done;
        let done = done.lock().unwrap_or_else(|e| e.into_inner());
        let _ = changed.wait_timeout_while(done, limit, |done| !*done);
    }

    fn end_first_attempt(&self) {
        let (done, changed) = &self.first_attempt_done;
        *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
    }

    fn answered(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_answer_ms.store(now, Ordering::Release);
    }

    fn set_down(&self, reason: String) {
        self.connected.store(false, Ordering::Release);
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }
}

static CONNECT_ERROR_LOG: Throttle = Throttle::new(Duration::from_secs(10));

/// The Redis thread's state: the client, its one connection and health.
struct Link {
    client: redis::Client,
    timeout: Duration,
    health: Arc<Health>,
    connection: Option<redis::Connection>,
    /// Set when the last batch failed on a timeout rather than a broken
    /// connection.
    timed_out: bool,
    on_first_answer: Option<Box<dyn FnOnce() + Send>>,
}

impl Link {
    fn run(&mut self, queue: &Receiver<Job>) {
        loop {
            if self.connection.is_none() {
                let connected = self.connect();
                self.health.end_first_attempt();
                if !connected && !answer_unavailable_for(queue, RECONNECT_DELAY, &self.health) {
                    return;
                }
                continue;
            }
            match queue.recv_timeout(HEARTBEAT) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    self.run_batch(batch);
                    if self.connection.is_none() {
                        // Jobs queued behind a failed batch were never sent, so
                        // "unavailable" is exact for them. Failing fast for a
                        // moment before reconnecting keeps a stalled Redis from
                        // holding every worker for a full timeout in turn.
                        answer_queued_unavailable(queue, &self.health);
                        let stalled = std::mem::take(&mut self.timed_out);
                        if stalled && !answer_unavailable_for(queue, RECONNECT_DELAY, &self.health)
                        {
                            return;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.ping(),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Opens the connection and sets its timeouts, which the redis crate
    /// resets to none after the handshake (redis 1.8).
    fn connect(&mut self) -> bool {
        let result = self
            .client
            .get_connection_with_timeout(self.timeout)
            .and_then(|mut conn| {
                conn.set_read_timeout(Some(self.timeout))?;
                conn.set_write_timeout(Some(self.timeout))?;
                // A connection is usable only if Redis runs commands on it:
                // without this, a server that wants a password (NOAUTH)
                // would count as connected.
                redis::cmd("PING").query::<String>(&mut conn)?;
                Ok(conn)
            });
        match result {
            Ok(conn) => {
                self.connection = Some(conn);
                self.health.answered();
                self.health.connected.store(true, Ordering::Release);
                let was_down = CONNECT_ERROR_LOG.allow();
                log::info(
                    "redis connected",
                    &[("suppressed_errors", was_down.unwrap_or(0).into())],
                );
                if let Some(callback) = self.on_first_answer.take() {
                    callback();
                }
                true
            }
            Err(err) => {
                let reason = format!("cannot connect to redis: {}", describe(&err, self.timeout));
                if let Some(suppressed) = CONNECT_ERROR_LOG.allow() {
                    log::warn(
                        "redis unavailable; retrying",
                        &[
                            ("error", err.to_string().into()),
                            ("retry_ms", (RECONNECT_DELAY.as_millis() as u64).into()),
                            ("suppressed", suppressed.into()),
                        ],
                    );
                }
                self.health.set_down(reason);
                false
            }
        }
    }

    fn drop_connection(&mut self, err: &redis::RedisError) {
        self.connection = None;
        let error = describe(err, self.timeout);
        log::warn(
            "redis connection lost; reconnecting",
            &[("error", error.as_str().into())],
        );
        self.health
            .set_down(format!("lost the redis connection: {error}"));
    }

    fn ping(&mut self) {
        let Some(conn) = self.connection.as_mut() else {
            return;
        };
        // A batch leaves the read timeout at what was left of its deadline.
        let pong = conn
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| redis::cmd("PING").query::<String>(conn));
        match pong {
            Ok(_) => self.health.answered(),
            Err(err) => self.drop_connection(&err),
        }
    }

    /// Sends the batch as one pipeline and reads the replies one by one
    /// under one deadline. The redis crate's own pipeline query waits a
    /// full read timeout for every reply still missing (redis 1.8.2), so a
    /// stalled Redis would hold a batch of N for N timeouts.
    fn run_batch(&mut self, batch: Vec<Job>) {
        let Some(conn) = self.connection.as_mut() else {
            let reason = self.health.reason();
            answer_all(batch, |_| StoreError::Unavailable(reason.clone()));
            return;
        };
        let mut pipe = redis::pipe();
        for job in &batch {
            match job.op {
                Op::Increment(by) => pipe.cmd("INCRBY").arg(&job.key).arg(by),
                Op::Read => pipe.cmd("GET").arg(&job.key),
            };
        }

        let started = Instant::now();
        let deadline = started + self.timeout;
        if let Err(err) = conn.send_packed_command(&pipe.get_packed_pipeline()) {
            let reason = describe(&err, self.timeout);
            self.drop_connection(&err);
            answer_all(batch, |job| unconfirmed(job, &reason));
            return;
        }

        let mut rejected_connection = false;
        // The socket's read timeout is the full timeout. It is shortened to
        // what is left of the deadline only once a tenth of it has passed,
        // which spares a setsockopt per reply in the usual fast batch and
        // bounds the batch at 1.1 times the timeout.
        let mut shortened = false;
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            let mut set_timeout = Ok(());
            if started.elapsed() > self.timeout / 10 {
                let left = deadline.saturating_duration_since(Instant::now());
                set_timeout = conn.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                shortened = true;
            }
            let reply = set_timeout.and_then(|()| conn.recv_response());
            match reply {
                Ok(value) => {
                    rejected_connection |= is_connection_error(&value);
                    let result = interpret(&job, value);
                    let _ = job.reply.send((job.sequence, result));
                }
                Err(err) => {
                    let reason = describe(&err, self.timeout);
                    self.timed_out = err.is_timeout();
                    self.drop_connection(&err);
                    let rest = std::iter::once(job).chain(jobs).collect();
                    answer_all(rest, |job| unconfirmed(job, &reason));
                    return;
                }
            }
        }

        if shortened {
            let _ = conn.set_read_timeout(Some(self.timeout));
        }
        if rejected_connection {
            // Commands were refused for the connection itself (NOAUTH after
            // a password change): reconnect, and let the PING there tell
            // readiness why it fails.
            self.connection = None;
            self.health
                .set_down("redis rejected the connection's commands".into());
            log::warn("redis rejected the connection; reconnecting", &[]);
            return;
        }
        self.health.answered();
    }
}

/// Returns the error for a job whose reply never came: an increment may
/// have been applied, a read changed nothing.
fn unconfirmed(job: &Job, reason: &str) -> StoreError {
    match job.op {
        Op::Increment(_) => StoreError::OutcomeUnknown(reason.to_string()),
        Op::Read => StoreError::Unavailable(reason.to_string()),
    }
}

/// Describes a Redis error in plain words, giving a timeout's length.
fn describe(err: &redis::RedisError, timeout: Duration) -> String {
    if err.is_timeout() {
        format!("timed out after {} ms", timeout.as_millis())
    } else {
        err.to_string()
    }
}

/// True for error replies about the connection rather than the command.
fn is_connection_error(value: &Value) -> bool {
    matches!(value, Value::ServerError(err) if matches!(err.code(), "NOAUTH" | "WRONGPASS"))
}

fn answer_all(batch: Vec<Job>, error: impl Fn(&Job) -> StoreError) {
    for job in batch {
        let result = Err(error(&job));
        let _ = job.reply.send((job.sequence, result));
    }
}

fn answer_queued_unavailable(queue: &Receiver<Job>, health: &Health) {
    while let Ok(job) = queue.try_recv() {
        let _ = job
            .reply
            .send((job.sequence, Err(StoreError::Unavailable(health.reason()))));
    }
}

/// Answers every job that arrives within `wait` with "unavailable".
/// Returns false when every store handle is gone.
fn answer_unavailable_for(queue: &Receiver<Job>, wait: Duration, health: &Health) -> bool {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        match queue.recv_timeout(left) {
            Ok(job) => {
                let _ = job
                    .reply
                    .send((job.sequence, Err(StoreError::Unavailable(health.reason()))));
            }
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// Parses a value the way INCR accepts it: an optional '-', then digits
/// with no leading zero, within 64 bits. GET must not report as a count
/// what INCR would reject, such as "+12" or " 12".
fn parse_redis_integer(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let leading_zero = digits.len() > 1 && digits[0] == b'0';
    if digits.is_empty() || leading_zero || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Turns one pipeline reply into a count or a typed error.
fn interpret(job: &Job, value: Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(count) => Ok(count),
        Value::Nil => Ok(0),
        Value::BulkString(bytes) => parse_redis_integer(&bytes).ok_or(StoreError::NotInteger),
        Value::ServerError(err) => {
            let detail = err.details().unwrap_or_default();
            Err(match (err.code(), job.op) {
                ("NOAUTH" | "WRONGPASS" | "NOPERM", _) => {
                    StoreError::Unavailable(format!("{} {detail}", err.code()))
                }
                ("WRONGTYPE", _) => StoreError::WrongType,
                (_, Op::Increment(_)) if detail.contains("overflow") => StoreError::Overflow,
                (_, Op::Increment(_)) if detail.contains("not an integer") => {
                    StoreError::NotInteger
                }
                (code, _) => StoreError::Server(format!("{code} {detail}")),
            })
        }
        other => Err(StoreError::Server(format!("unexpected reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_as_redis_does() {
        assert_eq!(parse_redis_integer(b"12"), Some(12));
        assert_eq!(parse_redis_integer(b"-7"), Some(-7));
        assert_eq!(parse_redis_integer(b"0"), Some(0));
        assert_eq!(parse_redis_integer(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b"+12"[..],
            b" 12",
            b"012",
            b"",
            b"-",
            b"1e3",
            b"9223372036854775808",
        ] {
            assert_eq!(
                parse_redis_integer(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
