//! Request-head parsing with `httparse`, plus the checks a server facing
//! untrusted clients needs on top of it: size and header-count limits, the
//! framing headers (`Content-Length`, `Transfer-Encoding`) and keep-alive.

/// Maximum size of a request head, request line and headers together.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields accepted in one request.
pub const MAX_HEADERS: usize = 64;
/// Maximum request body read and discarded, because the API takes no body.
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// Maximum length of a client-sent `X-Request-Id` that is kept.
const MAX_REQUEST_ID: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub method_name: String,
    /// The request target in origin form: path and optional query.
    pub target: String,
    /// Minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub keep_alive: bool,
    /// The client's `X-Request-Id` when it was sane.
    pub request_id: Option<String>,
    /// Length of the head in bytes, including the blank line.
    pub head_len: usize,
    /// Declared `Content-Length`, at most `MAX_BODY_BYTES`.
    pub body_len: usize,
    pub expects_continue: bool,
}

/// A request that cannot be served: the status to send before closing.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub status: u16,
    pub message: &'static str,
}

fn reject(status: u16, message: &'static str) -> ParseError {
    ParseError { status, message }
}

/// Parses one request head at the start of `buf`. Returns `Ok(None)` while
/// the head is incomplete and within limits.
pub fn parse_head(buf: &[u8]) -> Result<Option<Request>, ParseError> {
    if buf.starts_with(b"PRI * HTTP/2") {
        return Err(reject(505, "HTTP/2 is not supported; use HTTP/1.1"));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(oversized(buf));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(431, "too many header fields"));
        }
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(_) => return Err(reject(400, "malformed request")),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(oversized(buf));
    }
    build_request(&parsed, head_len).map(Some)
}

fn oversized(buf: &[u8]) -> ParseError {
    let line_end = buf[..MAX_HEAD_BYTES.min(buf.len())]
        .iter()
        .position(|&b| b == b'\n');
    match line_end {
        None => reject(414, "request line too long"),
        Some(_) => reject(431, "request header fields too large"),
    }
}

fn version_error(buf: &[u8]) -> ParseError {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    let has_version = line.windows(5).any(|window| window == b"HTTP/");
    if has_version && !line.windows(7).any(|window| window == b"HTTP/1.") {
        reject(505, "HTTP version not supported; use HTTP/1.1")
    } else {
        reject(400, "malformed request line")
    }
}

fn build_request(parsed: &httparse::Request, head_len: usize) -> Result<Request, ParseError> {
    let method_name = parsed.method.unwrap_or_default();
    let method = match method_name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let minor_version = parsed.version.unwrap_or(1);
    let target = origin_form(parsed.path.unwrap_or_default())?;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<Vec<u8>> = None;
    let mut host_count = 0;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut request_id = None;
    let mut expects_continue = false;
    for header in parsed.headers.iter() {
        let name = header.name;
        let value = trim(header.value);
        if name.eq_ignore_ascii_case("content-length") {
            let length = parse_length(value)?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(reject(400, "conflicting Content-Length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let mut all = transfer_encoding.take().unwrap_or_default();
            if !all.is_empty() {
                all.push(b',');
            }
            all.extend_from_slice(value);
            transfer_encoding = Some(all);
        } else if name.eq_ignore_ascii_case("host") {
            host_count += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = trim(token);
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = sane_request_id(value);
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(reject(417, "only Expect: 100-continue is supported"));
            }
            expects_continue = true;
        }
    }
    if minor_version == 1 && host_count != 1 {
        return Err(reject(
            400,
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    if host_count > 1 {
        return Err(reject(400, "more than one Host header"));
    }
    if let Some(coding) = transfer_encoding {
        if content_length.is_some() {
            return Err(reject(
                400,
                "both Transfer-Encoding and Content-Length are set",
            ));
        }
        if minor_version == 0 {
            return Err(reject(400, "Transfer-Encoding is not allowed in HTTP/1.0"));
        }
        let last = coding
            .rsplit(|&b| b == b',')
            .next()
            .map(trim)
            .unwrap_or_default();
        if last.eq_ignore_ascii_case(b"chunked") {
            return Err(reject(413, "request bodies are not accepted"));
        }
        return Err(reject(501, "unsupported Transfer-Encoding"));
    }
    let declared = content_length.unwrap_or(0);
    if declared > MAX_BODY_BYTES as u64 {
        return Err(reject(
            413,
            "request body too large; this API takes no body",
        ));
    }
    let keep_alive = match minor_version {
        1 => !connection_close,
        _ => connection_keep_alive && !connection_close,
    };
    Ok(Request {
        method,
        method_name: method_name.to_string(),
        target,
        minor_version,
        keep_alive,
        request_id,
        head_len,
        body_len: declared as usize,
        expects_continue,
    })
}

/// Accepts origin form (`/path?query`) and absolute form
/// (`http://host/path`), returning the path and query.
fn origin_form(target: &str) -> Result<String, ParseError> {
    // httparse lets bytes above 0x7F through, but a URI is ASCII: other
    // characters must be percent-encoded.
    if !target.is_ascii() {
        return Err(reject(
            400,
            "request target must be ASCII; percent-encode other characters",
        ));
    }
    if target.starts_with('/') {
        return Ok(target.to_string());
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Err(reject(400, "request target must start with '/'"));
    };
    match rest.find(['/', '?']) {
        Some(start) if rest[start..].starts_with('/') => Ok(rest[start..].to_string()),
        Some(start) => Ok(format!("/{}", &rest[start..])),
        None => Ok("/".to_string()),
    }
}

fn parse_length(value: &[u8]) -> Result<u64, ParseError> {
    let invalid = || reject(400, "invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(invalid)
}

fn sane_request_id(value: &[u8]) -> Option<String> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b);
    if value.is_empty() || value.len() > MAX_REQUEST_ID || !value.iter().all(allowed) {
        return None;
    }
    std::str::from_utf8(value).ok().map(str::to_string)
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !b" \t".contains(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b" \t".contains(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Request>, ParseError> {
        parse_head(text.as_bytes())
    }

    fn status(text: &str) -> u16 {
        parse(text).unwrap_err().status
    }

    #[test]
    fn simple_get() {
        let request = parse("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.target, "/a?b=1");
        assert!(request.keep_alive);
        assert_eq!(request.head_len, 32);
        assert_eq!(request.body_len, 0);
    }

    #[test]
    fn partial_head_waits() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert!(parse("GE").unwrap().is_none());
    }

    #[test]
    fn keep_alive_rules_per_version() {
        let close = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n");
        assert!(!close.unwrap().unwrap().keep_alive);
        let old = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive);
        let old_keep = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(old_keep.unwrap().unwrap().keep_alive);
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            413
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"), 400);
    }

    #[test]
    fn repeated_equal_length_is_accepted() {
        let request =
            parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(request.unwrap().unwrap().body_len, 3);
    }

    #[test]
    fn host_is_required_in_http_1_1() {
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    }

    #[test]
    fn bad_versions_and_garbage() {
        assert_eq!(status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), 400);
        assert_eq!(status("\x00\x01\x02\x03 garbage\r\n\r\n"), 400);
        assert_eq!(status("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(status("GET /caf\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    }

    #[test]
    fn limits() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(status(&long_line), 414);
        let big_header = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(status(&big_header), 431);
        let many: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            431
        );
    }

    #[test]
    fn absolute_form_is_reduced_to_path() {
        let request = parse("GET http://example/healthz?x=1 HTTP/1.1\r\nHost: example\r\n\r\n");
        assert_eq!(request.unwrap().unwrap().target, "/healthz?x=1");
    }

    #[test]
    fn request_id_is_kept_only_when_sane() {
        let good = parse("GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123\r\n\r\n");
        assert_eq!(
            good.unwrap().unwrap().request_id.as_deref(),
            Some("abc-123")
        );
        let bad = parse("GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: a b\r\n\r\n");
        assert_eq!(bad.unwrap().unwrap().request_id, None);
    }
}
