//! SIGTERM and SIGINT: drain in-flight requests, close idle keep-alive
//! connections, honour the drain delay and the shutdown timeout, and exit
//! at once on a second signal.

mod common;

use std::io::{BufReader, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, read_response, read_to_close, request, Redis, Tally};

const SIGTERM: i32 = libc::SIGTERM;

#[test]
fn idle_sigterm_exits_zero() {
    let redis = Redis::start();
    let mut tally = Tally::start(&[("REDIS_URL", &redis.url())]);
    assert_eq!(tally.get("/").status, 200);
    tally.signal(SIGTERM);
    let status = tally
        .wait_exit(Duration::from_secs(2))
        .expect("tally did not exit");
    assert_eq!(status.code(), Some(0));
    for phase in [
        "shutdown started",
        "stopped accepting",
        "drained",
        "\"stopped\"",
    ] {
        assert!(tally.log_text().contains(phase), "missing log line {phase}");
    }
}

#[test]
fn sigint_drains_like_sigterm() {
    let redis = Redis::start();
    let mut tally = Tally::start(&[("REDIS_URL", &redis.url())]);
    tally.signal(libc::SIGINT);
    let status = tally
        .wait_exit(Duration::from_secs(2))
        .expect("tally did not exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn in_flight_request_completes_on_sigterm() {
    let redis = Redis::start();
    let mut tally = Tally::start(&[("REDIS_URL", &redis.url()), ("REDIS_TIMEOUT_MS", "5000")]);
    assert_eq!(tally.get("/").status, 200);
    redis.cli(&["CLIENT", "PAUSE", "1000", "WRITE"]).unwrap();
    let addr = tally.addr;
    let client = thread::spawn(move || request(addr, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
    thread::sleep(Duration::from_millis(300));
    tally.signal(SIGTERM);
    let response = client.join().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["count"], 2);
    assert_eq!(response.header("Connection"), Some("close"));
    let status = tally
        .wait_exit(Duration::from_secs(5))
        .expect("tally did not exit");
    assert_eq!(status.code(), Some(0));
    assert_eq!(redis.get("tally:visits"), 2);
}

#[test]
fn second_signal_exits_at_once() {
    let redis = Redis::start();
    let mut tally = Tally::start(&[
        ("REDIS_URL", &redis.url()),
        ("SHUTDOWN_DELAY_SECS", "5"),
        ("SHUTDOWN_TIMEOUT_SECS", "10"),
    ]);
    tally.signal(SIGTERM);
    assert!(tally
        .wait_for_log("shutdown started", Duration::from_secs(2))
        .is_some());
    let started = Instant::now();
    tally.signal(SIGTERM);
    let status = tally
        .wait_exit(Duration::from_secs(2))
        .expect("tally ignored the second signal");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(status.code(), Some(1));
}

#[test]
fn idle_keep_alive_clients_do_not_delay_exit() {
    let redis = Redis::start();
    let mut tally = Tally::start(&[("REDIS_URL", &redis.url())]);
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut stream = connect(tally.addr);
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        assert_eq!(read_response(&mut reader, false).unwrap().status, 200);
        idle.push(stream);
    }
    let started = Instant::now();
    tally.signal(SIGTERM);
    let status = tally
        .wait_exit(Duration::from_secs(2))
        .expect("tally did not exit");
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "exit took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(0));
    for mut stream in idle {
        assert!(read_to_close(&mut stream).is_empty());
    }
}

#[test]
fn drain_delay_keeps_serving_while_unready() {
    let redis = Redis::start();
    let mut tally = Tally::start(&[("REDIS_URL", &redis.url()), ("SHUTDOWN_DELAY_SECS", "1")]);
    let mut keep_alive = connect(tally.addr);
    let mut reader = BufReader::new(keep_alive.try_clone().unwrap());
    keep_alive
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut reader, false)
            .unwrap()
            .header("Connection"),
        None
    );
    tally.signal(SIGTERM);
    assert!(tally
        .wait_for_log("shutdown started", Duration::from_secs(2))
        .is_some());
    let ready = tally.get("/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["reason"], "shutting down");
    assert_eq!(tally.get("/").status, 200);
    // A keep-alive client is told to close after its answer.
    keep_alive
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let answer = read_response(&mut reader, false).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("Connection"), Some("close"));
    let status = tally
        .wait_exit(Duration::from_secs(3))
        .expect("tally did not exit");
    assert_eq!(status.code(), Some(0));
    assert_eq!(redis.get("tally:visits"), 3);
    // After the drain the port refuses connections.
    assert!(std::net::TcpStream::connect(tally.addr).is_err());
}

#[test]
fn shutdown_timeout_cuts_and_exits_one() {
    let redis = Redis::start();
    let mut tally = Tally::start(&[
        ("REDIS_URL", &redis.url()),
        ("REDIS_TIMEOUT_MS", "10000"),
        ("SHUTDOWN_TIMEOUT_SECS", "1"),
    ]);
    assert_eq!(tally.get("/").status, 200);
    redis.cli(&["CLIENT", "PAUSE", "3000", "WRITE"]).unwrap();
    let addr = tally.addr;
    let _client = thread::spawn(move || {
        let mut stream = connect(addr);
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        read_to_close(&mut stream)
    });
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    tally.signal(SIGTERM);
    let status = tally
        .wait_exit(Duration::from_secs(3))
        .expect("tally did not exit");
    assert_eq!(status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_millis(1_800),
        "exit took {:?}",
        started.elapsed()
    );
    let line = tally
        .wait_for_log("shutdown timed out", Duration::from_secs(1))
        .unwrap();
    assert!(line.contains("\"requests_in_flight\":1"), "{line}");
}

#[test]
fn partial_head_times_out_with_408() {
    let redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url()), ("HEADER_TIMEOUT_MS", "300")]);
    let mut stream = connect(tally.addr);
    stream.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    let started = Instant::now();
    let answer = String::from_utf8(read_to_close(&mut stream)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(redis.get("tally:visits"), 0);
}

#[test]
fn idle_keep_alive_connection_times_out() {
    let redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url()), ("KEEPALIVE_TIMEOUT_SECS", "1")]);
    let mut stream = connect(tally.addr);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let all = read_to_close(&mut stream);
    assert!(String::from_utf8(all).unwrap().starts_with("HTTP/1.1 200 "));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}
