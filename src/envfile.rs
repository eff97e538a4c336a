//! Parses a `.env` file the way `docker run --env-file` reads it, so a file
//! that works with docker gives tally the same variables. Finding the file
//! and letting the real environment win are left to the configuration.
//!
//! The rules, read in the docker CLI's `pkg/kvfile` and checked against
//! docker CLI 28.2.2, engine 20.10.24 and runc 1.1.5:
//! - Lines end at `\n`, and one `\r` before it is dropped. A line contains
//!   at most 65535 bytes, and the whole file must be valid UTF-8.
//! - A UTF-8 byte order mark at the start of the file is skipped.
//! - Leading whitespace is trimmed, but trailing whitespace is part of the
//!   value. Empty lines and lines starting with `#` are skipped.
//! - `NAME=VALUE` splits at the first `=`, and the value is taken literally:
//!   quotes, `$`, `#` and later `=` stay as written.
//! - A name is not empty and contains no space or tab, so docker rejects
//!   `export NAME=VALUE`. Any other character is allowed.
//! - A bare `NAME` takes the host's value and is left out if the host has
//!   none.
//! - No name or value contains a NUL byte, because runc then refuses to
//!   start the container.
//! - When a name repeats, the last value wins.

use std::collections::HashMap;
use std::fmt;

/// Maximum line length in bytes, counting a trailing `\r`. The docker CLI
/// reads the file with Go's `bufio.Scanner`, whose 64 KiB buffer must also
/// contain the `\n`.
const MAX_LINE_BYTES: usize = 64 * 1024 - 1;

const BYTE_ORDER_MARK: &str = "\u{feff}";

/// A line that makes `docker run --env-file` fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid .env line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for EnvFileError {}

/// Parses the contents of a `.env` file into `(name, value)` pairs in the
/// order the names first appear. `text` may be a `&str` or the raw bytes,
/// and bytes let invalid UTF-8 be reported with its line. `lookup` is called
/// only for a bare `NAME` line and returns the host's value. Fails on the
/// first line that docker would reject.
pub fn parse(
    text: impl AsRef<[u8]>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut entries = Vec::new();
    for (index, raw) in text.as_ref().split(|&byte| byte == b'\n').enumerate() {
        let line = index + 1;
        if let Some((name, value)) = parse_line(raw, line, &lookup)? {
            entries.push((line, name, value));
        }
    }

    // The CLI reads the whole file before runc checks for NUL bytes, so a
    // syntax error on a later line is reported first.
    reject_nul(&entries)?;
    Ok(merge_repeats(entries))
}

/// Returns true if `value` starts and ends with the same quote, `'` or `"`.
/// Docker keeps such quotes in the value, unlike Compose and shells.
pub fn has_quotes(value: &str) -> bool {
    value.len() >= 2
        && ['"', '\'']
            .into_iter()
            .any(|quote| value.starts_with(quote) && value.ends_with(quote))
}

fn parse_line(
    raw: &[u8],
    line: usize,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>, EnvFileError> {
    let error = |message| EnvFileError { line, message };
    if raw.len() > MAX_LINE_BYTES {
        return Err(error(format!(
            "line is {} bytes long, docker reads at most {MAX_LINE_BYTES}",
            raw.len()
        )));
    }

    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let text = std::str::from_utf8(raw)
        .map_err(|e| error(format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1)))?;
    let text = match line {
        1 => text.strip_prefix(BYTE_ORDER_MARK).unwrap_or(text),
        _ => text,
    };

    // Go's `unicode.IsSpace`, which docker uses here, and Rust's
    // `char::is_whitespace` both follow the Unicode White_Space property.
    let text = text.trim_start();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }

    let (name, value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (text, None),
    };
    if name.is_empty() {
        return Err(error(format!(
            "missing variable name in '{}'",
            text.escape_debug()
        )));
    }
    if name.contains([' ', '\t']) {
        return Err(error(format!(
            "variable name '{}' contains whitespace",
            name.escape_debug()
        )));
    }

    let value = match value {
        Some(value) => Some(value.to_string()),
        // The CLI's Go `os.LookupEnv` never finds a name containing NUL.
        None if name.contains('\0') => None,
        None => lookup(name),
    };
    Ok(value.map(|value| (name.to_string(), value)))
}

/// Rejects a NUL byte in any entry, as runc 1.1 does even for a value that
/// a later line replaces.
// NOTE: runc 1.2 and later check only the value that wins, so they accept
// a NUL byte in a replaced value, which this rejects.
fn reject_nul(entries: &[(usize, String, String)]) -> Result<(), EnvFileError> {
    let with_nul = entries
        .iter()
        .find(|(_, name, value)| name.contains('\0') || value.contains('\0'));
    match with_nul {
        Some((line, name, _)) => Err(EnvFileError {
            line: *line,
            message: format!("variable '{}' contains a NUL byte", name.escape_debug()),
        }),
        None => Ok(()),
    }
}

/// Keeps one entry per name, with the last value at the first position.
/// runc 1.1 sets the variables one by one with Go's `os.Setenv`, which
/// replaces a value in place.
// NOTE: runc 1.2 and later keep the last position instead, so only the
// order of a repeated name differs from what those versions pass on.
fn merge_repeats(entries: Vec<(usize, String, String)>) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut positions: HashMap<String, usize> = HashMap::new();
    for (_, name, value) in entries {
        match positions.get(&name) {
            Some(&position) => merged[position].1 = value,
            None => {
                positions.insert(name.clone(), merged.len());
                merged.push((name, value));
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> Option<String> {
        match name {
            "HOST_VAR" => Some("from host".to_string()),
            "EMPTY_VAR" => Some(String::new()),
            _ => None,
        }
    }

    /// Formats the result the way `env` prints variables, one per line.
    fn parse_to_env(text: &[u8]) -> Result<String, String> {
        let entries = parse(text, host).map_err(|e| format!("{}: {}", e.line, e.message))?;
        let lines: Vec<String> = entries
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        Ok(lines.join("\n"))
    }

    #[test]
    fn parse_accepts_docker_syntax() {
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"A=1\nB=2\n", "A=1\nB=2"),
            (b"A=1", "A=1"),
            (b"  A=1\n\tB=2\n", "A=1\nB=2"),
            ("\u{a0}\u{3000}A=1".as_bytes(), "A=1"),
            (b"A=1 \t\n", "A=1 \t"),
            (b"\n   \n\t\nA=1\n\n", "A=1"),
            (b"# x=1\n   # y=2\nA=1\n", "A=1"),
            (b"A=1 # note\n", "A=1 # note"),
            (b"A#=1\n", "A#=1"),
            (b"A=\"q\"\nB='s'\n", "A=\"q\"\nB='s'"),
            (b"A=$HOME\n", "A=$HOME"),
            (b"A=b=c=\n", "A=b=c="),
            (b"A=\n", "A="),
            (b"A=1\r\nB=2\r\n", "A=1\nB=2"),
            (b"A=1\r\r\n", "A=1\r"),
            (b"A=x\ry\n", "A=x\ry"),
            (b"\xef\xbb\xbf  A=1\n", "A=1"),
            (b"A=1\n\xef\xbb\xbfB=2\n", "A=1\n\u{feff}B=2"),
            (
                b"1A=1\nA-B=2\nA.B=3\nA\x0b=4\n",
                "1A=1\nA-B=2\nA.B=3\nA\x0b=4",
            ),
            (b"HOST_VAR\nEMPTY_VAR\n", "HOST_VAR=from host\nEMPTY_VAR="),
            (b"MISSING_VAR\nA=1\n", "A=1"),
            (b"HOST_VAR\0\n", ""),
            (b"#\0\nA=1\n", "A=1"),
            (b"A=1\nB=2\nA=3\n", "A=3\nB=2"),
        ];
        for (text, expected) in cases {
            let input = String::from_utf8_lossy(text);
            assert_eq!(
                parse_to_env(text),
                Ok(expected.to_string()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn parse_rejects_what_docker_rejects() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"A=1\nA B=1\n",
                "2: variable name 'A B' contains whitespace",
            ),
            (b"A\tB=1\n", "1: variable name 'A\\tB' contains whitespace"),
            (b"A =1\n", "1: variable name 'A ' contains whitespace"),
            (
                b"export A=1\n",
                "1: variable name 'export A' contains whitespace",
            ),
            (
                b"HOST_VAR \n",
                "1: variable name 'HOST_VAR ' contains whitespace",
            ),
            (b"\n  =value\n", "2: missing variable name in '=value'"),
            (b"A=1\nB=\xff\n", "2: invalid UTF-8 at byte 3"),
            (b"#\xff\n", "1: invalid UTF-8 at byte 2"),
            (b"A=1\nB=x\0\n", "2: variable 'B' contains a NUL byte"),
            (b"A\0=1\n", "1: variable 'A\\0' contains a NUL byte"),
            (
                b"A=\0\nB C=1\n",
                "2: variable name 'B C' contains whitespace",
            ),
        ];
        for (text, expected) in cases {
            let input = String::from_utf8_lossy(text);
            assert_eq!(
                parse_to_env(text),
                Err(expected.to_string()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn parse_limits_line_length() {
        let longest = format!("A={}", "x".repeat(MAX_LINE_BYTES - 2));
        assert!(parse(format!("{longest}\n"), host).is_ok());
        assert!(parse(&longest, host).is_ok());
        let crlf = parse(format!("B=1\n{longest}\r\n"), host);
        assert_eq!(crlf.map_err(|e| e.line), Err(2));
        let no_newline = parse(format!("{longest}x"), host);
        assert_eq!(no_newline.map_err(|e| e.line), Err(1));
    }

    #[test]
    fn error_display_names_line() {
        let error = parse("A B=1", host).unwrap_err();
        let expected = "invalid .env line 1: variable name 'A B' contains whitespace";
        assert_eq!(error.to_string(), expected);
    }

    #[test]
    fn has_quotes_needs_matching_pair() {
        let cases = [
            ("\"x\"", true),
            ("'x'", true),
            ("''", true),
            ("\"", false),
            ("'x\"", false),
            ("x\"", false),
            ("\"x", false),
            ("x", false),
            ("", false),
        ];
        for (value, expected) in cases {
            assert_eq!(has_quotes(value), expected, "value {value:?}");
        }
    }
}
