//! The API: which path and method do what, and how store results become
//! JSON responses. Routing ignores the query string, and paths match
//! exactly: `/healthz/` is not `/healthz`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::http::{Handler, Method, Request, Response};
use crate::log::{self, Throttle};
use crate::store::{Op, Store, StoreError};

/// The counter that `GET /` increments.
pub const VISITS: &str = "visits";
const MAX_NAME_LEN: usize = 64;
const MAX_INCREMENT: u64 = 1_000_000;

/// Failed counter requests are logged at most once a second, with a count
/// of those left out, so a broken key under load cannot flood the log.
static STORE_ERROR_LOG: Throttle = Throttle::new(Duration::from_secs(1));

pub struct App {
    pub store: Store,
    pub instance: String,
    pub key_prefix: String,
    /// Set once shutdown starts; readiness then fails.
    pub draining: Arc<AtomicBool>,
}

enum Route<'a> {
    Visits,
    Health,
    Ready,
    Counter(&'a str),
    NotFound,
}

impl Handler for App {
    fn handle(&self, request: &Request, request_id: &str) -> Response {
        let (path, query) = match request.target.split_once('?') {
            Some((path, query)) => (path, query),
            None => (request.target.as_str(), ""),
        };
        let segments = match decode_path(path) {
            Ok(segments) => segments,
            Err(message) => return Response::error(400, message),
        };
        let names: Vec<&str> = segments.iter().map(|segment| segment.as_ref()).collect();
        let route = match names.as_slice() {
            [""] => Route::Visits,
            ["healthz"] => Route::Health,
            ["readyz"] => Route::Ready,
            ["counters", name] => Route::Counter(name),
            _ => Route::NotFound,
        };
        let method = request.method;
        match (route, method) {
            (Route::Visits, Method::Get) => self.count(VISITS, Op::Increment(1), request_id),
            (Route::Visits, Method::Head) => self.count(VISITS, Op::Read, request_id),
            (Route::Health, Method::Get | Method::Head) => {
                Response::json(200, &json!({ "status": "ok" })).header("Cache-Control", "no-store")
            }
            (Route::Ready, Method::Get | Method::Head) => self.readiness(),
            (Route::Counter(name), _) if !is_valid_name(name) => Response::error(
                400,
                "invalid counter name: expected 1 to 64 characters from A-Z a-z 0-9 . _ -",
            ),
            (Route::Counter(name), Method::Get | Method::Head) => {
                self.count(name, Op::Read, request_id)
            }
            (Route::Counter(name), Method::Post) => match increment_from_query(query) {
                Ok(by) => self.count(name, Op::Increment(by), request_id),
                Err(message) => Response::error(400, &message),
            },
            (Route::Counter(_), _) => not_allowed("GET, HEAD, POST"),
            (Route::Visits | Route::Health | Route::Ready, _) => not_allowed("GET, HEAD"),
            (Route::NotFound, _) => Response::error(404, "not found"),
        }
    }
}

impl App {
    fn count(&self, name: &str, op: Op, request_id: &str) -> Response {
        let key = format!("{}{}", self.key_prefix, name);
        match self.store.execute(op, &key) {
            Ok(count) => counter_response(name, count, &self.instance),
            Err(err) => store_error(&err, name, &key, request_id),
        }
    }

    fn readiness(&self) -> Response {
        let reason = if self.draining.load(Ordering::Acquire) {
            Some("shutting down".to_string())
        } else {
            self.store.not_ready_reason()
        };
        let response = match reason {
            None => Response::json(200, &json!({ "status": "ready" })),
            Some(reason) => {
                Response::json(503, &json!({ "status": "not ready", "reason": reason }))
            }
        };
        response.header("Cache-Control", "no-store")
    }
}

/// Builds `{"counter":…,"count":…,"instance":…}` with its keys in that
/// order, which `json!` would sort.
fn counter_response(name: &str, count: i64, instance: &str) -> Response {
    let body = format!(
        "{{\"counter\":{},\"count\":{},\"instance\":{}}}",
        serde_json::Value::from(name),
        count,
        serde_json::Value::from(instance)
    );
    Response {
        status: 200,
        body,
        headers: vec![("Cache-Control", "no-store".into())],
    }
}

fn not_allowed(allow: &'static str) -> Response {
    Response::error(405, "method not allowed").header("Allow", allow)
}

fn store_error(err: &StoreError, name: &str, key: &str, request_id: &str) -> Response {
    let (status, message) = match err {
        StoreError::Unavailable(_) => (503, "counter store unavailable; retry shortly".to_string()),
        StoreError::OutcomeUnknown(_) => (
            503,
            "counter store did not confirm the update in time; it may have been counted"
                .to_string(),
        ),
        StoreError::Overflow => (
            409,
            format!("counter '{name}' is at its maximum and cannot grow"),
        ),
        StoreError::NotInteger => (
            409,
            format!("counter '{name}' holds a value that is not a 64-bit integer"),
        ),
        StoreError::WrongType => (
            409,
            format!("counter '{name}' is stored under a key of another Redis type"),
        ),
        StoreError::Server(_) => (
            503,
            "counter store rejected the command; retry shortly".to_string(),
        ),
    };
    // Unavailability is logged by the store, once per outage, not per request.
    if !matches!(err, StoreError::Unavailable(_)) {
        if let Some(suppressed) = STORE_ERROR_LOG.allow() {
            log::warn(
                "counter request failed",
                &[
                    ("key", key.into()),
                    ("error", err.to_string().into()),
                    ("request_id", request_id.into()),
                    ("suppressed", suppressed.into()),
                ],
            );
        }
    }
    let response = Response::error(status, &message).header("Cache-Control", "no-store");
    if status == 503 {
        response.header("Retry-After", "1")
    } else {
        response
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Splits a path into percent-decoded segments. `/` gives `[""]`.
fn decode_path(path: &str) -> Result<Vec<Cow<'_, str>>, &'static str> {
    let raw = path.strip_prefix('/').unwrap_or(path);
    raw.split('/')
        .map(|segment| {
            if !segment.contains('%') {
                return Ok(Cow::Borrowed(segment));
            }
            let bytes = percent_decode(segment).ok_or("invalid percent-encoding in path")?;
            String::from_utf8(bytes)
                .map(Cow::Owned)
                .map_err(|_| "path is not valid UTF-8 once decoded")
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Reads `by` from the query string: absent means 1.
fn increment_from_query(query: &str) -> Result<i64, String> {
    let mut by: Option<i64> = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "by" {
            continue;
        }
        if by.is_some() {
            return Err("query parameter 'by' is given more than once".into());
        }
        let decoded = percent_decode(value).and_then(|bytes| String::from_utf8(bytes).ok());
        let shown: String = value.chars().take(32).collect();
        let expected =
            format!("invalid by '{shown}': expected a whole number from 1 to {MAX_INCREMENT}");
        let number = decoded
            .filter(|text| {
                !text.is_empty() && text.len() <= 7 && text.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|text| text.parse::<u64>().ok())
            .filter(|n| (1..=MAX_INCREMENT).contains(n))
            .ok_or(expected)?;
        by = Some(number as i64);
    }
    Ok(by.unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("a.b_c-9"));
        assert!(is_valid_name(&"x".repeat(64)));
        assert!(!is_valid_name(&"x".repeat(65)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("é"));
    }

    #[test]
    fn path_decoding() {
        assert_eq!(decode_path("/").unwrap(), vec![""]);
        assert_eq!(
            decode_path("/counters/a%2Eb").unwrap(),
            vec!["counters", "a.b"]
        );
        assert!(decode_path("/%zz").is_err());
        assert!(decode_path("/%ff%fe").is_err());
        assert!(decode_path("/%4").is_err());
    }

    #[test]
    fn increments() {
        assert_eq!(increment_from_query(""), Ok(1));
        assert_eq!(increment_from_query("by=5"), Ok(5));
        assert_eq!(increment_from_query("x=1&by=1000000"), Ok(1_000_000));
        for bad in [
            "by=0",
            "by=1000001",
            "by=-1",
            "by=",
            "by=1.5",
            "by=1&by=2",
            "by=%2B1",
            "by=99999999999999999999",
        ] {
            assert!(increment_from_query(bad).is_err(), "{bad}");
        }
    }
}
