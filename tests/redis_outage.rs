//! Redis down, restarted or stalled: tally keeps serving liveness, answers
//! counters with a fast 503, never counts twice, and recovers by itself.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, Redis, Tally};

fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn starts_without_redis_then_recovers() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let tally = Tally::start(&[("REDIS_URL", &url), ("REDIS_TIMEOUT_MS", "200")]);
    assert_eq!(tally.get("/healthz").status, 200);
    let ready = tally.get("/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.json()["reason"].as_str().unwrap().contains("redis"));
    let visit = tally.get("/");
    assert_eq!(visit.status, 503);
    assert_eq!(visit.header("Retry-After"), Some("1"));
    assert!(visit.json()["error"].is_string());
    assert!(tally
        .wait_for_log("redis unavailable", Duration::from_secs(2))
        .is_some());

    let redis = Redis::start_on(port);
    assert!(wait_until(Duration::from_secs(3), || tally
        .get("/readyz")
        .status
        == 200));
    assert_eq!(tally.get("/").status, 200);
    assert_eq!(redis.get("tally:visits"), 1);
    assert!(tally.log_text().contains("ready in "));
}

#[test]
fn redis_restart_mid_traffic_recovers_without_double_count() {
    let mut redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url()), ("REDIS_TIMEOUT_MS", "300")]);
    for _ in 0..20 {
        assert_eq!(tally.get("/").status, 200);
    }
    redis.restart();
    // The restarted server has no data: every 200 from here on is exactly one INCR.
    let mut ok = 0;
    let mut first_ok_at = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let response = tally.get("/");
        match response.status {
            200 => {
                ok += 1;
                first_ok_at.get_or_insert(started.elapsed());
            }
            503 => assert_eq!(response.header("Retry-After"), Some("1")),
            other => panic!("unexpected status {other}"),
        }
    }
    let recovered_after = first_ok_at.expect("tally never recovered after the restart");
    assert!(
        recovered_after < Duration::from_secs(1),
        "recovered after {recovered_after:?}"
    );
    assert_eq!(redis.get("tally:visits"), ok);
    assert!(tally
        .wait_for_log("redis connection lost", Duration::from_secs(1))
        .is_some());
}

#[test]
fn paused_redis_gives_fast_503_and_no_double_count() {
    let redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url()), ("REDIS_TIMEOUT_MS", "300")]);
    assert_eq!(tally.get("/").status, 200);
    redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]).unwrap();
    let started = Instant::now();
    let stalled = tally.get("/");
    let took = started.elapsed();
    assert_eq!(stalled.status, 503);
    assert_eq!(stalled.header("Retry-After"), Some("1"));
    assert!(
        took < Duration::from_millis(1_000),
        "the stalled request took {took:?}"
    );
    assert!(tally.get("/healthz").status == 200);
    thread::sleep(Duration::from_millis(1_600));
    // Redis drops the paused INCR when tally closes the timed-out
    // connection, or applies it if it got there first; either way tally
    // must not have retried it.
    let after_stall = redis.get("tally:visits");
    assert!(
        (1..=2).contains(&after_stall),
        "count after the stall is {after_stall}"
    );
    assert!(wait_until(Duration::from_secs(3), || tally.get("/").status == 200));
    assert_eq!(redis.get("tally:visits"), after_stall + 1);
}

#[test]
fn many_requests_during_a_stall_stay_bounded() {
    let redis = Redis::start();
    let tally = Tally::start(&[
        ("REDIS_URL", &redis.url()),
        ("REDIS_TIMEOUT_MS", "300"),
        ("WORKERS", "4"),
    ]);
    assert_eq!(tally.get("/").status, 200);
    let threads_before = tally.thread_count();
    redis.cli(&["CLIENT", "PAUSE", "2000", "WRITE"]).unwrap();
    let addr = tally.addr;
    let clients: Vec<_> = (0..16)
        .map(|_| {
            thread::spawn(move || {
                let started = Instant::now();
                let response = common::request(
                    addr,
                    "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                );
                (response.status, started.elapsed())
            })
        })
        .collect();
    for client in clients {
        let (status, took) = client.join().unwrap();
        assert_eq!(status, 503);
        // A batch of pipelined commands fails after one timeout in all, not
        // one per command, and requests queued behind it fail fast.
        assert!(took < Duration::from_millis(900), "a request took {took:?}");
    }
    assert_eq!(tally.thread_count(), threads_before);
    thread::sleep(Duration::from_millis(2_100));
    assert!(wait_until(Duration::from_secs(3), || tally.get("/").status == 200));
}

#[test]
fn password_change_makes_readiness_fail_with_reason() {
    let redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url()), ("REDIS_TIMEOUT_MS", "300")]);
    assert_eq!(tally.get("/").status, 200);
    redis
        .cli(&["CONFIG", "SET", "requirepass", "n3w-secret"])
        .unwrap();
    redis
        .cli(&[
            "-a",
            "n3w-secret",
            "--no-auth-warning",
            "CLIENT",
            "KILL",
            "TYPE",
            "normal",
        ])
        .unwrap();
    let unready = wait_until(Duration::from_secs(3), || {
        let ready = tally.get("/readyz");
        ready.status == 503 && ready.body.contains("NOAUTH")
    });
    assert!(unready, "readyz: {}", tally.get("/readyz").body);
    assert_eq!(tally.get("/").status, 503);
    assert!(!tally.log_text().contains("n3w-secret"));

    redis
        .cli(&[
            "-a",
            "n3w-secret",
            "--no-auth-warning",
            "CONFIG",
            "SET",
            "requirepass",
            "",
        ])
        .unwrap();
    assert!(wait_until(Duration::from_secs(3), || tally
        .get("/readyz")
        .status
        == 200));
    assert_eq!(tally.get("/").status, 200);
}
