//! Many keep-alive clients at once: every visit is counted exactly once.

mod common;

use std::io::{BufReader, Write};
use std::thread;

use common::{connect, read_response, Redis, Tally};

#[test]
fn fifty_clients_count_exactly() {
    const CLIENTS: usize = 50;
    const REQUESTS: usize = 200;
    let redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url())]);
    let addr = tally.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            thread::spawn(move || {
                let mut stream = connect(addr);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut ok = 0;
                for _ in 0..REQUESTS {
                    stream
                        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                        .unwrap();
                    let response = read_response(&mut reader, false).expect("response");
                    if response.status == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(ok, CLIENTS * REQUESTS);
    assert_eq!(redis.get("tally:visits"), (CLIENTS * REQUESTS) as i64);
    assert_eq!(
        tally.get("/counters/visits").json()["count"],
        (CLIENTS * REQUESTS) as i64
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url())]);
    let mut stream = connect(tally.addr);
    let mut batch = String::new();
    for i in 0..20 {
        batch.push_str(&format!(
            "POST /counters/p?by={} HTTP/1.1\r\nHost: t\r\nX-Request-Id: r{i}\r\n\r\n",
            i + 1
        ));
    }
    stream.write_all(batch.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut expected = 0;
    for i in 0..20 {
        let response = read_response(&mut reader, false).unwrap();
        expected += i + 1;
        assert_eq!(
            response.header("X-Request-Id"),
            Some(format!("r{i}").as_str())
        );
        assert_eq!(response.json()["count"], expected);
    }
}
