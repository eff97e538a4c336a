//! Configuration from the environment and `.env`: every bad value exits
//! with code 2 and one log line naming the variable; the command line.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{tally_command, Redis, Tally, TempDir};

fn run(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = tally_command(dir, env);
    command.args(args);
    command.output().unwrap()
}

#[test]
fn bad_values_exit_2_naming_the_variable() {
    let dir = TempDir::new("config");
    let cases = [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("HOST", "example.com"),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_URL", "rediss://secret-host"),
        ("REDIS_URL", "redis://host:notaport"),
        ("REDIS_TIMEOUT_MS", "0"),
        ("REDIS_TIMEOUT_MS", "1s"),
        ("KEY_PREFIX", "has space"),
        ("WORKERS", "0"),
        ("WORKERS", "many"),
        ("MAX_CONNECTIONS", "0"),
        ("HEADER_TIMEOUT_MS", "5"),
        ("KEEPALIVE_TIMEOUT_SECS", "0"),
        ("WRITE_TIMEOUT_MS", ""),
        ("SHUTDOWN_DELAY_SECS", "9"),
        ("SHUTDOWN_TIMEOUT_SECS", "0"),
        ("LOG_LEVEL", "trace"),
        ("LOG_FORMAT", "yaml"),
        ("INSTANCE_NAME", ""),
    ];
    for (name, value) in cases {
        let output = run(&dir.0, &[(name, value)], &[]);
        assert_eq!(output.status.code(), Some(2), "{name}={value}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{name}={value}: {stdout}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["level"], "error");
        assert_eq!(line["variable"], name);
        let message = line["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("invalid {name} '")),
            "{message}"
        );
        assert!(
            message.contains("expected") || message.contains("not"),
            "{message}"
        );
        assert!(output.stderr.is_empty(), "{name}={value} wrote to stderr");
    }
}

#[test]
fn redis_password_never_appears_in_logs() {
    let dir = TempDir::new("config");
    let urls = [
        "rediss://user:hunter2@h:1/0",
        "redis://:Ab/hunter2@127.0.0.1:1/0",
        "redis+unix:///tmp/tally-missing.sock?db=x&pass=hunter2",
        "redis+unix:///tmp/tally-missing.sock?db=2&pass=hunter2",
    ];
    for url in urls {
        let mut child = tally_command(&dir.0, &[("REDIS_URL", url)])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(!text.is_empty(), "{url}: no output");
        assert!(
            !text.contains("hunter2"),
            "{url} leaked its password:\n{text}"
        );
    }
}

#[test]
fn dot_env_is_read_and_environment_wins() {
    let redis = Redis::start();
    let dir = TempDir::new("dotenv");
    let file = format!(
        "# comment\nREDIS_URL={}\nINSTANCE_NAME=from-file\nKEY_PREFIX=file:\n",
        redis.url()
    );
    std::fs::write(dir.0.join("custom.env"), file).unwrap();
    let path = dir.0.join("custom.env");
    let env_file = path.to_str().unwrap();
    let tally = Tally::start(&[("ENV_FILE", env_file), ("KEY_PREFIX", "env:")]);
    let response = tally.get("/");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["instance"], "from-file");
    assert_eq!(redis.get("env:visits"), 1);
    drop(tally);
    // LOG_LEVEL="info" keeps its quotes, as docker does, so it is invalid.
    std::fs::write(&path, "LOG_LEVEL=\"info\"\n").unwrap();
    let output = run(&dir.0, &[("ENV_FILE", env_file)], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("invalid LOG_LEVEL '\\\"info\\\"'"));
}

#[test]
fn quoted_value_in_dot_env_is_warned_about() {
    let redis = Redis::start();
    let dir = TempDir::new("dotenv");
    std::fs::write(
        dir.0.join("q.env"),
        format!("REDIS_URL={}\nINSTANCE_NAME='quoted'\n", redis.url()),
    )
    .unwrap();
    let path = dir.0.join("q.env");
    let tally = Tally::start(&[("ENV_FILE", path.to_str().unwrap())]);
    assert_eq!(tally.get("/").json()["instance"], "'quoted'");
    let warning = tally
        .wait_for_log("keeps its quotes", Duration::from_secs(2))
        .unwrap();
    assert!(warning.contains("INSTANCE_NAME"));
}

#[test]
fn unreadable_env_files_exit_2() {
    let dir = TempDir::new("dotenv");
    for (path, reason) in [
        ("/nonexistent/tally.env", "No such file"),
        ("/dev/zero", "larger than 1 MiB"),
        ("/tmp", "directory"),
    ] {
        let output = run(&dir.0, &[("ENV_FILE", path)], &[]);
        assert_eq!(output.status.code(), Some(2), "{path}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("invalid ENV_FILE"), "{path}: {stdout}");
        assert!(stdout.contains(reason), "{path}: {stdout}");
    }
}

#[test]
fn version_and_help() {
    let dir = TempDir::new("cli");
    let version = run(&dir.0, &[], &["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("tally "));
    let help = run(&dir.0, &[], &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8(help.stdout).unwrap();
    for (name, default, _) in tally::config::VARIABLES {
        assert!(text.contains(name), "help lacks {name}");
        assert!(
            text.contains(&format!("default: {default}")),
            "help lacks the default of {name}"
        );
    }
    let unknown = run(&dir.0, &[], &["--bogus"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn healthcheck_reports_the_server() {
    let redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url())]);
    let port = tally.addr.port().to_string();
    let dir = TempDir::new("cli");
    let healthy = run(&dir.0, &[("PORT", &port)], &["healthcheck"]);
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    drop(tally);
    let unhealthy = run(&dir.0, &[("PORT", &port)], &["healthcheck"]);
    assert_eq!(unhealthy.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unhealthy.stdout).starts_with("unhealthy: "));
}

#[test]
fn port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = TempDir::new("cli");
    let output = run(&dir.0, &[("PORT", &port)], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("cannot listen on"));
}

#[test]
fn env_example_lists_every_variable() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    for (name, default, _) in tally::config::VARIABLES {
        let commented = example.contains(&format!("#{name}="));
        let with_default = example.contains(&format!("\n{name}={default}\n"));
        assert!(
            with_default || commented,
            ".env.example lacks {name} with its default {default}"
        );
    }
    // The uncommented lines parse as tally would read them.
    let entries = tally::envfile::parse(&example, |_| None).unwrap();
    let pairs: Vec<(&str, &str)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let source = tally::config::Source::from_pairs(&[], &pairs);
    assert!(tally::config::Config::from_source(&source).is_ok());
}
