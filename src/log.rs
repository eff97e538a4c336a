//! The event-stream logger: one JSON object (or one text line) per event on
//! stdout, written by a background thread so that a slow or closed stdout
//! never blocks a request. Lines that cannot be queued or written are
//! counted, and the count is reported once writing works again.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::clock;

/// Docker splits longer lines into partial messages, which breaks JSON
/// parsing in Fluentd and Elasticsearch, so no line may reach 16 KiB.
const MAX_LINE_BYTES: usize = 16 * 1024 - 1;
/// Maximum length of a string field, in characters, before it is cut.
const MAX_FIELD_CHARS: usize = 2048;
/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 4096;
/// Most bytes the writer gathers from the queue into one write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "json" => Some(Format::Json),
            "text" => Some(Format::Text),
            _ => None,
        }
    }
}

/// A log field value. Strings are escaped as they are written, with no
/// intermediate JSON tree, because the access line is on the hot path.
#[derive(Debug)]
pub enum Field<'a> {
    Str(std::borrow::Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Json(Value),
}

impl<'a> From<&'a str> for Field<'a> {
    fn from(text: &'a str) -> Self {
        Field::Str(text.into())
    }
}

impl From<String> for Field<'_> {
    fn from(text: String) -> Self {
        Field::Str(text.into())
    }
}

impl From<Value> for Field<'_> {
    fn from(value: Value) -> Self {
        Field::Json(value)
    }
}

impl From<bool> for Field<'_> {
    fn from(value: bool) -> Self {
        Field::Bool(value)
    }
}

impl From<f64> for Field<'_> {
    fn from(value: f64) -> Self {
        Field::Float(value)
    }
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl From<$t> for Field<'_> {
            fn from(value: $t) -> Self {
                Field::Int(i64::try_from(value).unwrap_or(i64::MAX))
            }
        }
    )*};
}

int_field!(i32, i64, u16, u32, u64, usize);

enum Message {
    Line(String),
    Flush(SyncSender<()>),
}

struct Logger {
    level: Level,
    format: Format,
    queue: SyncSender<Message>,
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Reports of dropped lines come at most once a second; the count adds up
/// in between.
static LOST_LINES_LOG: Throttle = Throttle::new(Duration::from_secs(1));

/// Starts the writer thread. Until this runs, events are written to stdout
/// synchronously as JSON at every level, which covers configuration errors.
pub fn init(level: Level, format: Format) {
    let (queue, receiver) = mpsc::sync_channel(QUEUE_LINES);
    let logger = Logger {
        level,
        format,
        queue,
        dropped: AtomicU64::new(0),
    };
    if LOGGER.set(logger).is_ok() {
        let spawned = thread::Builder::new()
            .name("log-writer".into())
            .stack_size(64 * 1024)
            .spawn(move || write_lines(receiver));
        if let Err(err) = spawned {
            eprintln!("failed to start the log writer thread: {err}");
        }
    }
}

/// Returns whether an event at `level` would be written.
pub fn enabled(level: Level) -> bool {
    LOGGER.get().is_none_or(|logger| level <= logger.level)
}

/// Records one event. Never blocks: when the writer falls behind, the line
/// is dropped and counted.
pub fn event(level: Level, message: &str, fields: &[(&str, Field)]) {
    if !enabled(level) {
        return;
    }
    let Some(logger) = LOGGER.get() else {
        let line = format_json(level, message, fields);
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
        return;
    };
    let line = match logger.format {
        Format::Json => format_json(level, message, fields),
        Format::Text => format_text(level, message, fields),
    };
    match logger.queue.try_send(Message::Line(line)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            logger.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn error(message: &str, fields: &[(&str, Field)]) {
    event(Level::Error, message, fields);
}

pub fn warn(message: &str, fields: &[(&str, Field)]) {
    event(Level::Warn, message, fields);
}

pub fn info(message: &str, fields: &[(&str, Field)]) {
    event(Level::Info, message, fields);
}

pub fn debug(message: &str, fields: &[(&str, Field)]) {
    event(Level::Debug, message, fields);
}

/// Limits a repeated event to one line per interval, counting the rest.
pub struct Throttle {
    interval: Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            last: std::sync::Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns `Some(n)` when the event should be logged now, where `n` is
    /// how many were suppressed since the last logged one.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if now.duration_since(at) < self.interval => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

/// Waits up to `timeout` for queued lines to reach stdout, so that the last
/// lifecycle events survive `process::exit`.
pub fn flush(timeout: Duration) {
    let Some(logger) = LOGGER.get() else { return };
    let (done, wait) = mpsc::sync_channel(1);
    if logger.queue.try_send(Message::Flush(done)).is_ok() {
        let _ = wait.recv_timeout(timeout);
    }
}

fn write_lines(receiver: Receiver<Message>) {
    let logger = LOGGER
        .get()
        .expect("logger is set before its writer starts");
    let mut lost: u64 = 0;
    let mut batch = String::with_capacity(WRITE_BATCH_BYTES);
    while let Ok(first) = receiver.recv() {
        // Gather what else is queued, so a burst costs one write, not one
        // write per line.
        let mut lines = 0u64;
        let mut flush = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Line(line) => {
                    batch.push_str(&line);
                    lines += 1;
                }
                Message::Flush(done) => flush.push(done),
            }
            if batch.len() < WRITE_BATCH_BYTES {
                next = receiver.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if write_stdout(&batch) {
                lost += logger.dropped.swap(0, Ordering::Relaxed);
                if lost > 0
                    && LOST_LINES_LOG.allow().is_some()
                    && write_stdout(&lost_lines_line(logger, lost))
                {
                    lost = 0;
                }
            } else {
                lost += lines;
            }
            batch.clear();
        }
        for done in flush {
            let _ = done.try_send(());
        }
    }
}

fn write_stdout(line: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

fn lost_lines_line(logger: &Logger, lost: u64) -> String {
    let fields = [("lost", Field::from(lost))];
    let message = "log lines dropped because stdout was slow or closed";
    match logger.format {
        Format::Json => format_json(Level::Warn, message, &fields),
        Format::Text => format_text(Level::Warn, message, &fields),
    }
}

/// Cuts `text` to at most `MAX_FIELD_CHARS` characters.
fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_FIELD_CHARS) {
        None => text.into(),
        Some((end, _)) => format!("{}...", &text[..end]).into(),
    }
}

/// Appends `text` as a JSON string literal.
fn push_json_str(line: &mut String, text: &str) {
    use std::fmt::Write as _;
    line.push('"');
    for c in clip(text).chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

fn push_json_value(line: &mut String, field: &Field) {
    use std::fmt::Write as _;
    match field {
        Field::Str(text) => push_json_str(line, text),
        Field::Int(n) => {
            let _ = write!(line, "{n}");
        }
        Field::Float(x) if x.is_finite() => {
            let _ = write!(line, "{x}");
        }
        Field::Float(_) => line.push_str("null"),
        Field::Bool(b) => line.push_str(if *b { "true" } else { "false" }),
        Field::Json(Value::String(text)) => push_json_str(line, text),
        Field::Json(value) => line.push_str(&value.to_string()),
    }
}

fn format_json(level: Level, message: &str, fields: &[(&str, Field)]) -> String {
    let mut line = String::with_capacity(256);
    line.push_str("{\"time\":\"");
    clock::push_rfc3339(&mut line);
    line.push_str("\",\"level\":\"");
    line.push_str(level.as_str());
    line.push_str("\",\"message\":");
    push_json_str(&mut line, message);
    let head_len = line.len();
    for (key, value) in fields {
        line.push(',');
        push_json_str(&mut line, key);
        line.push(':');
        push_json_value(&mut line, value);
    }
    if line.len() + 2 > MAX_LINE_BYTES {
        line.truncate(head_len);
        line.push_str(",\"truncated\":true");
    }
    line.push_str("}\n");
    line
}

fn format_text(level: Level, message: &str, fields: &[(&str, Field)]) -> String {
    let mut line = format!(
        "{} {:5} {}",
        clock::rfc3339_now(),
        level.as_str().to_uppercase(),
        message
    );
    for (key, value) in fields {
        let mut json = String::new();
        push_json_value(&mut json, value);
        let plain = match value {
            Field::Str(text) if !text.contains([' ', '"', '=']) => Some(clip(text).into_owned()),
            _ => None,
        };
        line.push_str(&format!(" {key}={}", plain.unwrap_or(json)));
    }
    if line.len() > MAX_LINE_BYTES {
        let mut end = MAX_LINE_BYTES - 4;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str("...");
    }
    line = line.replace(['\n', '\r'], " ");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_time_level_message_fields() {
        let line = format_json(Level::Info, "listening", &[("port", 8080.into())]);
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "info");
        assert_eq!(value["message"], "listening");
        assert_eq!(value["port"], 8080);
        assert!(value["time"].as_str().unwrap().ends_with('Z'));
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn json_line_stays_under_limit() {
        let long = "x".repeat(100_000);
        let fields: Vec<(&str, Field)> = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .map(|key| (*key, Field::from(long.clone())))
            .collect();
        let line = format_json(Level::Warn, &long, &fields);
        assert!(line.len() <= MAX_LINE_BYTES + 1);
        assert!(serde_json::from_str::<Value>(&line).is_ok());
    }

    #[test]
    fn json_strings_are_escaped() {
        let nasty = "quote\" backslash\\ newline\n tab\t bell\u{7} é";
        let line = format_json(Level::Info, nasty, &[("path", nasty.into())]);
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["message"], nasty);
        assert_eq!(value["path"], nasty);
    }

    #[test]
    fn text_line_is_one_line() {
        let line = format_text(Level::Warn, "bad\nthing", &[("path", "/a b".into())]);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains("path=\"/a b\""));
    }
}
