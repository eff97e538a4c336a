//! Hostile and malformed HTTP: each gets the right status or a close, and
//! the process stays alive with a bounded number of threads.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{connect, read_response, read_to_close, Redis, Tally};

fn start(env: &[(&str, &str)]) -> (Redis, Tally) {
    let redis = Redis::start();
    let mut all = vec![("REDIS_URL", redis.url())];
    all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let borrowed: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tally = Tally::start(&borrowed);
    (redis, tally)
}

/// Sends `raw` and returns everything until the server closes.
fn exchange(tally: &Tally, raw: &[u8]) -> String {
    let mut stream = connect(tally.addr);
    let _ = stream.write_all(raw);
    String::from_utf8_lossy(&read_to_close(&mut stream)).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn assert_still_serves(tally: &Tally) {
    assert_eq!(tally.get("/healthz").status, 200, "tally stopped serving");
}

#[test]
fn malformed_requests_get_400_and_close() {
    let (_redis, tally) = start(&[]);
    let cases: [&[u8]; 7] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET nopath HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    for raw in cases {
        let answer = exchange(&tally, raw);
        assert_eq!(
            status_of(&answer),
            400,
            "{:?} -> {answer}",
            String::from_utf8_lossy(raw)
        );
        assert!(answer.contains("Connection: close\r\n"));
        assert!(answer.contains("{\"error\":"));
    }
    assert_still_serves(&tally);
}

#[test]
fn http2_preface_gets_505() {
    let (_redis, tally) = start(&[]);
    let answer = exchange(&tally, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(status_of(&answer), 505);
    assert_eq!(
        status_of(&exchange(&tally, b"GET / HTTP/3.0\r\nHost: t\r\n\r\n")),
        505
    );
    assert_still_serves(&tally);
}

#[test]
fn oversized_heads_are_rejected() {
    let (_redis, tally) = start(&[]);
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(1 << 20));
    assert_eq!(status_of(&exchange(&tally, long_line.as_bytes())), 414);
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    assert_eq!(status_of(&exchange(&tally, big_header.as_bytes())), 431);
    let many: String = (0..10_000).map(|i| format!("X-{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    assert_eq!(status_of(&exchange(&tally, many_headers.as_bytes())), 431);
    assert_still_serves(&tally);
}

#[test]
fn bodies_are_bounded_and_never_desync() {
    let (redis, tally) = start(&[]);
    let huge = b"POST /counters/b HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999999\r\n\r\n";
    assert_eq!(status_of(&exchange(&tally, huge)), 413);
    let chunked =
        b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(status_of(&exchange(&tally, chunked)), 413);
    let gzip = b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n";
    assert_eq!(status_of(&exchange(&tally, gzip)), 501);
    let both = b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello";
    assert_eq!(status_of(&exchange(&tally, both)), 400);
    let conflicting =
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    assert_eq!(status_of(&exchange(&tally, conflicting)), 400);
    assert_eq!(redis.get("tally:visits"), 0);

    // A small body is read and skipped: the pipelined request after it is
    // answered as itself, and the body is never parsed as a request.
    let mut stream = connect(tally.addr);
    let body = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let raw = format!(
        "POST /counters/b HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}GET /counters/b HTTP/1.1\r\nHost: t\r\n\r\n",
        body.len()
    );
    stream.write_all(raw.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    assert_eq!(
        read_response(&mut reader, false).unwrap().json()["count"],
        1
    );
    let second = read_response(&mut reader, false).unwrap();
    assert_eq!(second.json()["counter"], "b");
    assert_eq!(second.json()["count"], 1);
    assert_eq!(redis.get("tally:visits"), 0);
    assert_still_serves(&tally);
}

#[test]
fn expect_continue_without_body_is_answered_and_closed() {
    let (_redis, tally) = start(&[]);
    let raw = b"POST /counters/e HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n";
    let answer = exchange(&tally, raw);
    assert_eq!(status_of(&answer), 200);
    assert!(answer.contains("Connection: close\r\n"));
}

#[test]
fn odd_bytes_in_path_and_headers_do_not_hurt() {
    let (_redis, tally) = start(&[]);
    let cases: [&[u8]; 3] = [
        b"GET /\xc3\xa9\xff HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Name: caf\xc3\xa9 \xff\r\nConnection: close\r\n\r\n",
        b"GET /%ff%fe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ];
    for raw in cases {
        let status = status_of(&exchange(&tally, raw));
        assert!(
            [200, 400, 404].contains(&status),
            "{:?} -> {status}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_still_serves(&tally);
}

#[test]
fn http_1_0_keep_alive_rules() {
    let (_redis, tally) = start(&[]);
    let plain = exchange(&tally, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&plain), 200);
    assert!(plain.contains("Connection: close\r\n"));
    let mut stream = connect(tally.addr);
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let first = read_response(&mut reader, false).unwrap();
    assert_eq!(first.header("Connection"), Some("keep-alive"));
    stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut reader, false).unwrap().status, 200);
}

#[test]
fn many_idle_connections_cost_no_threads() {
    let (_redis, tally) = start(&[]);
    let threads_before = tally.thread_count();
    let idle: Vec<TcpStream> = (0..500).map(|_| connect(tally.addr)).collect();
    let slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut stream = connect(tally.addr);
            stream.write_all(b"GET / HT").unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    assert_eq!(tally.get("/").status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(tally.thread_count(), threads_before);
    drop(idle);
    drop(slow);
    assert_still_serves(&tally);
}

#[test]
fn connection_limit_sheds_with_503_then_recovers() {
    let (_redis, tally) = start(&[("MAX_CONNECTIONS", "5")]);
    let held: Vec<TcpStream> = (0..5).map(|_| connect(tally.addr)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let answer = exchange(&tally, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status_of(&answer), 503);
    assert!(answer.contains("Retry-After: 1\r\n"));
    assert!(tally
        .wait_for_log("connection limit reached", Duration::from_secs(2))
        .is_some());
    drop(held);
    std::thread::sleep(Duration::from_millis(100));
    assert_still_serves(&tally);
}

#[test]
fn abrupt_client_disconnects_are_harmless() {
    let (redis, tally) = start(&[]);
    for _ in 0..50 {
        let mut stream = connect(tally.addr);
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        drop(stream);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_still_serves(&tally);
    assert!(redis.get("tally:visits") <= 50);
}

#[test]
fn long_pipeline_in_one_write_is_answered() {
    let (_redis, tally) = start(&[]);
    let mut stream = connect(tally.addr);
    let mut batch = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(300);
    batch.push_str("GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(batch.as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let mut reader = BufReader::new(stream);
    for i in 0..301 {
        let response = read_response(&mut reader, false);
        assert_eq!(response.map(|r| r.status), Some(200), "answer {i}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn client_that_never_reads_holds_no_worker() {
    let (_redis, tally) = start(&[("WORKERS", "1")]);
    // Enough pipelined requests that their answers overflow the socket
    // buffers of both ends; the client then stops reading altogether.
    let mut hog = connect(tally.addr);
    hog.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let batch = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(100_000);
    let writer = std::thread::spawn(move || {
        let _ = hog.write_all(batch.as_bytes());
        hog
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    assert_eq!(tally.get("/healthz").status, 200);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "a normal request took {took:?}"
    );
    drop(writer.join().unwrap());
    assert_still_serves(&tally);
}
