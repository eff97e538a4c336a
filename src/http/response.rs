//! Responses: a status, a JSON body and a few headers, serialised with the
//! framing headers every response carries (`Date`, `Content-Length`,
//! `X-Request-Id`, and `Connection: close` whenever the server will close).

use serde_json::Value;

use crate::clock;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// Headers beyond the ones `serialize` always writes.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(status: u16, body: &Value) -> Response {
        Response {
            status,
            body: body.to_string(),
            headers: Vec::new(),
        }
    }

    /// Builds an error response: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// Appends the response to `out`. `head_only` drops the body (for `HEAD`)
/// but keeps its `Content-Length`.
pub fn serialize(
    out: &mut Vec<u8>,
    response: &Response,
    head_only: bool,
    request_id: &str,
    close: bool,
    http_1_0_keep_alive: bool,
) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nDate: ",
        response.status,
        reason(response.status)
    );
    clock::push_http_date(out);
    let _ = write!(
        out,
        "\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: {}\r\n",
        response.body.len(),
        request_id,
    );
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http_1_0_keep_alive {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_keeps_length_without_body() {
        let mut out = Vec::new();
        let response = Response::error(404, "no route");
        serialize(&mut out, &response, true, "id1", false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", response.body.len())));
        assert!(text.ends_with("\r\n\r\n"));
        assert!(!text.contains("Connection:"));
    }

    #[test]
    fn close_is_announced() {
        let mut out = Vec::new();
        let response =
            Response::json(200, &serde_json::json!({"a": 1})).header("Cache-Control", "no-store");
        serialize(&mut out, &response, false, "id2", true, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Cache-Control: no-store\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"));
    }
}
