//! The `tally` binary: parses the command line, then serves until SIGTERM
//! or SIGINT and drains. Exit codes: 0 after a clean shutdown, 1 for a
//! runtime failure or a drain cut short, 2 for invalid configuration.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tally::config::{Config, ConfigError, Source, VARIABLES};
use tally::http::{Limits, Server};
use tally::log::{self, Field};
use tally::routes::App;
use tally::shutdown::{self, Signals};
use tally::store::Store;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const EXIT_FAILURE: i32 = 1;
const EXIT_CONFIG: i32 = 2;

fn main() {
    let started = Instant::now();
    let signals = match shutdown::install() {
        Ok(signals) => signals,
        Err(err) => {
            log::error(
                "cannot install signal handlers",
                &[("error", err.to_string().into())],
            );
            std::process::exit(EXIT_FAILURE);
        }
    };
    // Panics become one JSON log line instead of text on stderr, which
    // would break log collectors that expect JSON.
    std::panic::set_hook(Box::new(|info| {
        log::error("panic", &[("error", info.to_string().into())]);
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        None => serve(signals, started),
        Some("healthcheck") if args.len() == 1 => healthcheck(),
        Some("healthcheck") => {
            eprintln!(
                "tally: unknown argument '{}' after healthcheck; run 'tally --help' for usage",
                args[1]
            );
            EXIT_CONFIG
        }
        Some("--version" | "-V") => {
            println!("tally {VERSION}");
            0
        }
        Some("--help" | "-h") => {
            print!("{}", help());
            0
        }
        Some(other) => {
            eprintln!("tally: unknown argument '{other}'; run 'tally --help' for usage");
            EXIT_CONFIG
        }
    };
    std::process::exit(code);
}

fn help() -> String {
    let mut text = format!(
        "tally {VERSION}: a visit counter backed by Redis\n\n\
         Usage:\n  tally               serve until SIGTERM or SIGINT\n  \
         tally healthcheck   exit 0 if the local server answers /healthz with 200\n  \
         tally --version\n  tally --help\n\n\
         Environment (also read from .env as docker run --env-file reads it):\n"
    );
    for (name, default, meaning) in VARIABLES {
        text.push_str(&format!(
            "  {name:<24} {meaning}\n  {:<24} default: {default}\n",
            ""
        ));
    }
    text.push_str("\nExit codes: 0 clean shutdown, 1 runtime failure, 2 invalid configuration.\n");
    text
}

fn load_config() -> Result<(Config, Vec<String>), ConfigError> {
    let source = Source::from_process()?;
    let config = Config::from_source(&source)?;
    Ok((config, source.warnings))
}

fn report_config_error(err: &ConfigError) -> i32 {
    log::error(
        &err.to_string(),
        &[
            ("variable", err.variable.as_str().into()),
            ("value", err.value.as_str().into()),
        ],
    );
    EXIT_CONFIG
}

fn healthcheck() -> i32 {
    let (config, _) = match load_config() {
        Ok(loaded) => loaded,
        Err(err) => {
            println!("unhealthy: {err}");
            return EXIT_FAILURE;
        }
    };
    match tally::healthcheck::probe(config.host, config.port) {
        Ok(()) => {
            println!("healthy");
            0
        }
        Err(reason) => {
            println!("unhealthy: {reason}");
            EXIT_FAILURE
        }
    }
}

fn serve(mut signals: Signals, started: Instant) -> i32 {
    let (config, warnings) = match load_config() {
        Ok(loaded) => loaded,
        Err(err) => return report_config_error(&err),
    };
    log::init(config.log_level, config.log_format);
    log::info(
        "starting",
        &[
            ("version", VERSION.into()),
            ("pid", std::process::id().into()),
            ("config", config.log_fields().into()),
        ],
    );
    for warning in warnings {
        log::warn(&warning, &[]);
    }

    let on_ready = Box::new(move || {
        let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
        let ready_ms = (ready_ms * 1000.0).round() / 1000.0;
        log::info(
            &format!("ready in {ready_ms} ms"),
            &[("ready_ms", ready_ms.into())],
        );
    });
    let store = match Store::start(&config.redis_url, config.redis_timeout, on_ready) {
        Ok(store) => store,
        Err(err) => {
            log::error(
                "cannot start the redis client",
                &[("error", err.to_string().into())],
            );
            return EXIT_FAILURE;
        }
    };

    let draining = Arc::new(AtomicBool::new(false));
    let app = App {
        store,
        instance: config.instance_name.clone(),
        key_prefix: config.key_prefix.clone(),
        draining: Arc::clone(&draining),
    };

    let limits = Limits {
        workers: config.workers,
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        keepalive_timeout: config.keepalive_timeout,
        write_timeout: config.write_timeout,
    };
    let addr = SocketAddr::new(config.host, config.port);
    let server = match Server::start(addr, limits, Arc::new(app)) {
        Ok(server) => server,
        Err(err) => {
            log::error(
                &format!("cannot listen on {addr}: {err}"),
                &[
                    ("addr", addr.to_string().into()),
                    ("error", err.to_string().into()),
                ],
            );
            log::flush(Duration::from_millis(200));
            return EXIT_FAILURE;
        }
    };
    log::info(
        "listening",
        &[
            ("addr", server.local_addr().to_string().into()),
            ("port", server.local_addr().port().into()),
        ],
    );

    signals.wait();
    let code = drain(&server, &config, &draining);
    log::flush(Duration::from_millis(500));
    code
}

/// Runs the shutdown phases and returns the exit code.
fn drain(server: &Server, config: &Config, draining: &AtomicBool) -> i32 {
    let start = Instant::now();
    let elapsed_ms =
        |at: Instant| -> Field { ((at.elapsed().as_secs_f64() * 1e6).round() / 1e3).into() };
    draining.store(true, Ordering::Release);
    server.close_after_responses();
    log::info(
        "shutdown started",
        &[
            ("delay_secs", config.shutdown_delay.as_secs().into()),
            ("timeout_secs", config.shutdown_timeout.as_secs().into()),
            ("open_connections", server.open_connections().into()),
        ],
    );

    if !config.shutdown_delay.is_zero() {
        thread::sleep(config.shutdown_delay);
        log::info("drain delay over", &[("elapsed_ms", elapsed_ms(start))]);
    }

    server.stop_accepting();
    server.drain();
    log::info(
        "stopped accepting",
        &[
            ("elapsed_ms", elapsed_ms(start)),
            ("open_connections", server.open_connections().into()),
        ],
    );

    let deadline = start + config.shutdown_timeout;
    while server.open_connections() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_micros(500));
    }

    let (busy, idle) = server.connection_counts();
    let code = if busy + idle > 0 {
        log::error(
            "shutdown timed out; cutting open connections",
            &[
                ("requests_in_flight", busy.into()),
                ("connections_waiting_for_client", idle.into()),
                ("elapsed_ms", elapsed_ms(start)),
            ],
        );
        EXIT_FAILURE
    } else {
        log::info("drained", &[("elapsed_ms", elapsed_ms(start))]);
        0
    };
    log::info(
        "stopped",
        &[
            ("exit_code", code.into()),
            ("elapsed_ms", elapsed_ms(start)),
        ],
    );
    code
}
