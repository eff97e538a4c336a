//! Start-up floor of a Rust program for scripts/bench-startup: binds
//! 0.0.0.0:$PORT with std's TcpListener and responds 200 to every request,
//! one request per connection, on one thread. Measured next to tally it
//! shows what the Rust runtime and the C library's loading cost before any
//! of tally's own work.
//!
//! Build and measure (glibc, then static musl):
//!   rustc -O -C strip=symbols -o /tmp/std-floor bench/std-floor.rs
//!   scripts/bench-startup -c 0 --vs /tmp/std-floor --vs-name std-floor
//!   rustc -O -C strip=symbols --target x86_64-unknown-linux-musl \
//!       -o /tmp/std-floor-musl bench/std-floor.rs

use std::io::{Read, Write};
use std::net::TcpListener;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

fn main() {
    let port: u16 = match std::env::var("PORT").map(|text| text.parse()) {
        Ok(Ok(port)) => port,
        _ => {
            eprintln!("std-floor: missing or invalid PORT");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("std-floor: listen on port {port} failed: {err}");
            std::process::exit(1);
        }
    };
    for connection in listener.incoming() {
        let Ok(mut connection) = connection else {
            continue;
        };
        // One read is enough for the probe's short request head.
        let mut buffer = [0u8; 4096];
        let _ = connection.read(&mut buffer);
        let _ = connection.write_all(RESPONSE);
    }
}
