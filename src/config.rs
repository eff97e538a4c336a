//! Settings, read only from the environment and an optional `.env` file,
//! and validated once at start. A bad value stops the process with exit
//! code 2 and a message naming the variable, the value and what is allowed.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::envfile;
use crate::log::{Format, Level};

/// Every variable tally reads: name, default, meaning and unit. `--help`
/// and the README's table list these.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    ("PORT", "8080", "TCP port to listen on; 0 picks a free one"),
    (
        "HOST",
        "0.0.0.0",
        "IP address to listen on (:: for IPv6 and IPv4)",
    ),
    (
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis server: redis://[user:password@]host[:port][/db] or redis+unix:///path[?db=N]",
    ),
    (
        "REDIS_TIMEOUT_MS",
        "1000",
        "connect, read and write timeout for Redis, in milliseconds",
    ),
    (
        "KEY_PREFIX",
        "tally:",
        "prefix of every Redis key; a counter's key is prefix + name",
    ),
    ("WORKERS", "8 x CPUs", "threads that serve requests"),
    (
        "MAX_CONNECTIONS",
        "1024",
        "open client connections; past it new ones get 503 and are closed",
    ),
    (
        "HEADER_TIMEOUT_MS",
        "5000",
        "time a client has to send a whole request head, in milliseconds",
    ),
    (
        "KEEPALIVE_TIMEOUT_SECS",
        "30",
        "idle time before a keep-alive connection is closed, in seconds",
    ),
    (
        "WRITE_TIMEOUT_MS",
        "5000",
        "time a response may take to be sent, in milliseconds",
    ),
    (
        "SHUTDOWN_DELAY_SECS",
        "0",
        "after SIGTERM, seconds to keep serving while /readyz says 503",
    ),
    (
        "SHUTDOWN_TIMEOUT_SECS",
        "8",
        "after SIGTERM, seconds before open requests are cut and tally exits 1",
    ),
    ("LOG_LEVEL", "info", "error, warn, info or debug"),
    ("LOG_FORMAT", "json", "json (one object per line) or text"),
    (
        "INSTANCE_NAME",
        "host name",
        "name returned in counter responses and logs",
    ),
    (
        "ENV_FILE",
        ".env",
        "file of KEY=VALUE lines read as docker run --env-file reads it",
    ),
];

/// The validated settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub redis_url: String,
    pub redis_timeout: Duration,
    pub key_prefix: String,
    pub workers: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_delay: Duration,
    pub shutdown_timeout: Duration,
    pub log_level: Level,
    pub log_format: Format,
    pub instance_name: String,
}

/// An invalid setting: `invalid PORT 'abc': expected a number from 0 to 65535`.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} '{}': {}",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

fn invalid(variable: &str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        variable: variable.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

/// The variables as seen by tally: the process environment, then the
/// `.env` file for names the environment does not set.
#[derive(Debug, Default)]
pub struct Source {
    environment: HashMap<String, String>,
    file: HashMap<String, String>,
    /// Warnings to log once the logger runs.
    pub warnings: Vec<String>,
}

impl Source {
    /// Reads the process environment and the `.env` file (or `ENV_FILE`).
    /// A missing `.env` is fine; a missing `ENV_FILE` is an error.
    pub fn from_process() -> Result<Source, ConfigError> {
        let mut environment = HashMap::new();
        for (name, value) in std::env::vars_os() {
            if let (Some(name), Some(value)) = (name.to_str(), value.to_str()) {
                environment.insert(name.to_string(), value.to_string());
            } else if let Some(name) = name.to_str() {
                if VARIABLES.iter().any(|(known, _, _)| *known == name) {
                    let shown = value.to_string_lossy().into_owned();
                    return Err(invalid(name, &shown, "expected valid UTF-8"));
                }
            }
        }
        let mut source = Source {
            environment,
            ..Source::default()
        };
        let (path, explicit) = match source.environment.get("ENV_FILE") {
            Some(path) => (path.clone(), true),
            None => (".env".to_string(), false),
        };
        match read_limited(&path) {
            Ok(bytes) => source.load_file(&path, &bytes)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(err) => {
                return Err(invalid(
                    "ENV_FILE",
                    &path,
                    format!("cannot read the file: {err}"),
                ))
            }
        }
        Ok(source)
    }

    /// Builds a source from explicit maps, for tests.
    pub fn from_pairs(environment: &[(&str, &str)], file: &[(&str, &str)]) -> Source {
        let to_map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect()
        };
        Source {
            environment: to_map(environment),
            file: to_map(file),
            warnings: Vec::new(),
        }
    }

    fn load_file(&mut self, path: &str, bytes: &[u8]) -> Result<(), ConfigError> {
        let entries = envfile::parse(bytes, |name| self.environment.get(name).cloned())
            .map_err(|err| invalid("ENV_FILE", path, err.to_string()))?;
        for (name, value) in entries {
            let known = VARIABLES.iter().any(|(known, _, _)| *known == name);
            if known && envfile::has_quotes(&value) && !self.environment.contains_key(&name) {
                self.warnings.push(format!(
                    "{name} in {path} keeps its quotes, as docker run --env-file does; remove them unless they belong to the value"
                ));
            }
            self.file.insert(name, value);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.environment
            .get(name)
            .or_else(|| self.file.get(name))
            .map(String::as_str)
    }
}

/// Largest `.env` file read; a bigger one (or `/dev/zero`) is an error, not
/// an unbounded read.
const MAX_ENV_FILE_BYTES: u64 = 1024 * 1024;

fn read_limited(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::other("it is a directory"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(std::io::Error::other("the file is larger than 1 MiB"));
    }
    Ok(bytes)
}

impl Config {
    /// Validates every setting in `source`, returning the first invalid one.
    pub fn from_source(source: &Source) -> Result<Config, ConfigError> {
        let port = number(source, "PORT", 8080, 0, 65_535, "")? as u16;
        let host = match source.get("HOST") {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(text) => text.parse().map_err(|_| {
                invalid(
                    "HOST",
                    text,
                    "expected an IP address such as 0.0.0.0, 127.0.0.1 or ::",
                )
            })?,
        };

        let redis_url = redis_url(source)?;
        let redis_timeout = millis(source, "REDIS_TIMEOUT_MS", 1_000, 1, 60_000)?;
        let key_prefix = key_prefix(source)?;

        let default_workers = std::thread::available_parallelism().map_or(1, |n| n.get()) * 8;
        let workers = number(source, "WORKERS", default_workers as u64, 1, 1_024, "")? as usize;
        let max_connections = number(source, "MAX_CONNECTIONS", 1_024, 1, 1_000_000, "")? as usize;
        let header_timeout = millis(source, "HEADER_TIMEOUT_MS", 5_000, 100, 600_000)?;
        let keepalive_timeout = seconds(source, "KEEPALIVE_TIMEOUT_SECS", 30, 1, 3_600)?;
        let write_timeout = millis(source, "WRITE_TIMEOUT_MS", 5_000, 100, 600_000)?;

        let shutdown_delay = seconds(source, "SHUTDOWN_DELAY_SECS", 0, 0, 3_600)?;
        let shutdown_timeout = seconds(source, "SHUTDOWN_TIMEOUT_SECS", 8, 1, 3_600)?;
        if shutdown_delay >= shutdown_timeout {
            let value = source.get("SHUTDOWN_DELAY_SECS").unwrap_or("0");
            let expected = format!(
                "expected fewer seconds than SHUTDOWN_TIMEOUT_SECS ({})",
                shutdown_timeout.as_secs()
            );
            return Err(invalid("SHUTDOWN_DELAY_SECS", value, expected));
        }

        let log_level = choice(
            source,
            "LOG_LEVEL",
            "info",
            Level::parse,
            "error, warn, info or debug",
        )?;
        let log_format = choice(source, "LOG_FORMAT", "json", Format::parse, "json or text")?;
        let instance_name = instance_name(source)?;
        Ok(Config {
            host,
            port,
            redis_url,
            redis_timeout,
            key_prefix,
            workers,
            max_connections,
            header_timeout,
            keepalive_timeout,
            write_timeout,
            shutdown_delay,
            shutdown_timeout,
            log_level,
            log_format,
            instance_name,
        })
    }

    /// Returns the settings as log fields, with the Redis password masked.
    pub fn log_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "HOST": self.host.to_string(),
            "PORT": self.port,
            "REDIS_URL": mask_password(&self.redis_url),
            "REDIS_TIMEOUT_MS": self.redis_timeout.as_millis() as u64,
            "KEY_PREFIX": self.key_prefix,
            "WORKERS": self.workers,
            "MAX_CONNECTIONS": self.max_connections,
            "HEADER_TIMEOUT_MS": self.header_timeout.as_millis() as u64,
            "KEEPALIVE_TIMEOUT_SECS": self.keepalive_timeout.as_secs(),
            "WRITE_TIMEOUT_MS": self.write_timeout.as_millis() as u64,
            "SHUTDOWN_DELAY_SECS": self.shutdown_delay.as_secs(),
            "SHUTDOWN_TIMEOUT_SECS": self.shutdown_timeout.as_secs(),
            "LOG_LEVEL": self.log_level.as_str(),
            "LOG_FORMAT": match self.log_format { Format::Json => "json", Format::Text => "text" },
            "INSTANCE_NAME": self.instance_name,
        })
    }
}

/// Parses a whole decimal number: digits only, no sign, no spaces.
fn number(
    source: &Source,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<u64, ConfigError> {
    let Some(text) = source.get(name) else {
        return Ok(default);
    };
    let expected = format!("expected a whole number{unit} from {min} to {max}");
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(name, text, expected));
    }
    match text.parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(invalid(name, text, expected)),
    }
}

fn millis(
    source: &Source,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(source, name, default, min, max, " of milliseconds").map(Duration::from_millis)
}

fn seconds(
    source: &Source,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(source, name, default, min, max, " of seconds").map(Duration::from_secs)
}

fn choice<T>(
    source: &Source,
    name: &str,
    default: &str,
    parse: fn(&str) -> Option<T>,
    allowed: &str,
) -> Result<T, ConfigError> {
    let text = source.get(name).unwrap_or(default);
    parse(text).ok_or_else(|| invalid(name, text, format!("expected {allowed}")))
}

fn redis_url(source: &Source) -> Result<String, ConfigError> {
    let url = source
        .get("REDIS_URL")
        .unwrap_or("redis://127.0.0.1:6379/0");
    let shown = mask_password(url);
    let scheme = url.split("://").next().unwrap_or("");
    match scheme {
        "redis" | "redis+unix" | "unix" => {}
        "rediss" | "rediss+unix" => {
            return Err(invalid(
                "REDIS_URL",
                &shown,
                "TLS (rediss://) is not supported by this build; use redis:// or redis+unix://",
            ));
        }
        _ => {
            return Err(invalid(
                "REDIS_URL",
                &shown,
                "expected redis://[user:password@]host[:port][/db] or redis+unix:///path[?db=N]",
            ));
        }
    }
    redis::Client::open(url)
        .map_err(|err| invalid("REDIS_URL", &shown, format!("not a valid Redis URL: {err}")))?;
    Ok(url.to_string())
}

fn key_prefix(source: &Source) -> Result<String, ConfigError> {
    let prefix = source.get("KEY_PREFIX").unwrap_or("tally:");
    let printable = prefix.bytes().all(|b| b.is_ascii_graphic());
    if prefix.len() > 64 || !printable {
        return Err(invalid(
            "KEY_PREFIX",
            prefix,
            "expected at most 64 printable ASCII characters without spaces",
        ));
    }
    Ok(prefix.to_string())
}

fn instance_name(source: &Source) -> Result<String, ConfigError> {
    let name = match source.get("INSTANCE_NAME") {
        Some(name) => name.to_string(),
        None => host_name().unwrap_or_else(|| "tally".to_string()),
    };
    let printable = name.chars().all(|c| !c.is_control());
    if name.is_empty() || name.len() > 255 || !printable {
        return Err(invalid(
            "INSTANCE_NAME",
            &name,
            "expected 1 to 255 characters with no control characters",
        ));
    }
    Ok(name)
}

/// Returns the kernel's host name, which Docker and Kubernetes set to the
/// container or pod name.
fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the pointer and length describe `buffer`, which outlives the call.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// Replaces the passwords in a Redis URL with `***`: the one in the user
/// information and any `pass` or `password` query parameter, which the
/// redis crate accepts for `redis+unix://` URLs.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    // The user information ends at the last '@': a password that is not
    // percent-encoded may contain '/', '?' or '#', so those prove nothing.
    let masked = match rest.rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{head}{}:***{}", &rest[..colon], &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    let Some((before, query)) = masked.split_once('?') else {
        return masked;
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if name == "pass" || name == "password" => format!("{name}=***"),
            _ => param.to_string(),
        })
        .collect();
    format!("{before}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(environment: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_source(&Source::from_pairs(environment, &[]))
    }

    #[test]
    fn defaults_are_valid() {
        let config = config(&[]).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.redis_url, "redis://127.0.0.1:6379/0");
        assert_eq!(config.shutdown_timeout, Duration::from_secs(8));
        assert_eq!(config.key_prefix, "tally:");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            ("PORT", "abc"),
            ("PORT", "65536"),
            ("PORT", "-1"),
            ("PORT", " 80"),
            ("PORT", ""),
            ("HOST", "localhost"),
            ("REDIS_URL", "http://x"),
            ("REDIS_URL", "rediss://x"),
            ("REDIS_TIMEOUT_MS", "0"),
            ("WORKERS", "0"),
            ("WORKERS", "1e3"),
            ("MAX_CONNECTIONS", "0"),
            ("SHUTDOWN_TIMEOUT_SECS", "0"),
            ("LOG_LEVEL", "verbose"),
            ("LOG_FORMAT", "xml"),
            ("INSTANCE_NAME", ""),
            ("KEY_PREFIX", "a b"),
        ];
        for (name, value) in cases {
            let err = config(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, name, "{name}={value}");
            assert!(err.to_string().starts_with(&format!("invalid {name} '")));
        }
    }

    #[test]
    fn defaults_match_the_variables_table() {
        let fields = config(&[]).unwrap().log_fields();
        for (name, default, _) in VARIABLES {
            if ["WORKERS", "INSTANCE_NAME", "ENV_FILE"].contains(name) {
                continue;
            }
            let shown = match &fields[*name] {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            assert_eq!(&shown, default, "{name}");
        }
    }

    #[test]
    fn delay_must_be_shorter_than_timeout() {
        let err = config(&[("SHUTDOWN_DELAY_SECS", "8")]).unwrap_err();
        assert_eq!(err.variable, "SHUTDOWN_DELAY_SECS");
        assert!(config(&[("SHUTDOWN_DELAY_SECS", "7")]).is_ok());
    }

    #[test]
    fn environment_wins_over_file() {
        let source = Source::from_pairs(
            &[("PORT", "9000")],
            &[("PORT", "9001"), ("HOST", "127.0.0.1")],
        );
        let config = Config::from_source(&source).unwrap();
        assert_eq!(config.port, 9000);
        assert_eq!(config.host.to_string(), "127.0.0.1");
    }

    #[test]
    fn password_is_masked() {
        assert_eq!(
            mask_password("redis://u:s3cret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(mask_password("redis://:p%40ss@h"), "redis://:***@h");
        assert_eq!(mask_password("redis://h:6379"), "redis://h:6379");
        assert_eq!(mask_password("redis://user@h"), "redis://user@h");
        assert_eq!(
            mask_password("redis://:Ab/Se?c#r@h:1/0"),
            "redis://:***@h:1/0"
        );
        assert_eq!(
            mask_password("redis+unix:///tmp/r.sock?db=2&pass=Sup3r"),
            "redis+unix:///tmp/r.sock?db=2&pass=***"
        );
        assert_eq!(
            mask_password("unix:///s?password=x&db=1"),
            "unix:///s?password=***&db=1"
        );
    }

    #[test]
    fn masked_url_in_error() {
        let err = config(&[("REDIS_URL", "rediss://u:topsecret@h")]).unwrap_err();
        assert!(!err.to_string().contains("topsecret"));
    }
}
