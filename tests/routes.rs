//! Every route and status, against a real Redis.

mod common;

use common::{request, Redis, Tally};

fn start() -> (Redis, Tally) {
    let redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url()), ("INSTANCE_NAME", "test-1")]);
    (redis, tally)
}

#[test]
fn get_root_counts_visits() {
    let (redis, tally) = start();
    let first = tally.get("/");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.body,
        r#"{"counter":"visits","count":1,"instance":"test-1"}"#
    );
    assert_eq!(first.header("Content-Type"), Some("application/json"));
    assert_eq!(first.header("Cache-Control"), Some("no-store"));
    assert!(first.header("Date").unwrap().ends_with(" GMT"));
    assert_eq!(tally.get("/").json()["count"], 2);
    assert_eq!(redis.get("tally:visits"), 2);
}

#[test]
fn counters_read_and_increment() {
    let (redis, tally) = start();
    let never = tally.get("/counters/page.a");
    assert_eq!(never.status, 200);
    assert_eq!(never.json()["count"], 0);
    assert_eq!(never.json()["counter"], "page.a");
    assert_eq!(tally.post("/counters/page.a").json()["count"], 1);
    assert_eq!(tally.post("/counters/page.a?by=41").json()["count"], 42);
    assert_eq!(
        tally.post("/counters/page.a?by=1000000").json()["count"],
        1_000_042
    );
    assert_eq!(tally.get("/counters/page.a").json()["count"], 1_000_042);
    assert_eq!(redis.get("tally:page.a"), 1_000_042);
}

#[test]
fn head_never_counts() {
    let (redis, tally) = start();
    for path in ["/", "/counters/h", "/healthz", "/readyz"] {
        let raw = format!("HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let response = request(tally.addr, &raw);
        assert_eq!(response.status, 200, "HEAD {path}");
        assert!(
            response
                .header("Content-Length")
                .unwrap()
                .parse::<usize>()
                .unwrap()
                > 0
        );
    }
    assert_eq!(redis.get("tally:visits"), 0);
    assert_eq!(redis.get("tally:h"), 0);
}

#[test]
fn probes_answer() {
    let (_redis, tally) = start();
    let health = tally.get("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = tally.get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    // Query strings do not change routing.
    assert_eq!(tally.get("/healthz?x=1").status, 200);
    assert_eq!(tally.get("/readyz?probe=kubelet").status, 200);
}

#[test]
fn unknown_paths_are_404_and_count_nothing() {
    let (redis, tally) = start();
    for path in [
        "/favicon.ico",
        "/healthz/",
        "/counters",
        "/counters/",
        "/counters/a/b",
        "//",
        "/visits",
    ] {
        let response = tally.get(path);
        assert_eq!(
            response.status,
            if path == "/counters/" { 400 } else { 404 },
            "{path}"
        );
        assert!(response.json()["error"].is_string(), "{path}");
    }
    assert_eq!(redis.get("tally:visits"), 0);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let (redis, tally) = start();
    let cases = [
        ("POST", "/", "GET, HEAD"),
        ("DELETE", "/counters/a", "GET, HEAD, POST"),
        ("PUT", "/healthz", "GET, HEAD"),
        ("OPTIONS", "/readyz", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let response = request(tally.addr, &raw);
        assert_eq!(response.status, 405, "{method} {path}");
        assert_eq!(response.header("Allow"), Some(allow), "{method} {path}");
    }
    assert_eq!(redis.get("tally:visits"), 0);
}

#[test]
fn invalid_names_and_increments_are_400() {
    let (_redis, tally) = start();
    let long = format!("/counters/{}", "x".repeat(65));
    for path in [
        long.as_str(),
        "/counters/a%20b",
        "/counters/%C3%A9",
        "/counters/a:b",
        "/counters/%2e%2E%2F",
    ] {
        let response = tally.post(path);
        assert_eq!(response.status, 400, "{path}");
        assert!(
            response.json()["error"]
                .as_str()
                .unwrap()
                .contains("counter name"),
            "{path}"
        );
    }
    for query in ["by=0", "by=1000001", "by=-5", "by=abc", "by=1&by=2", "by="] {
        let response = tally.post(&format!("/counters/a?{query}"));
        assert_eq!(response.status, 400, "{query}");
        assert!(
            response.json()["error"].as_str().unwrap().contains("by"),
            "{query}"
        );
    }
    assert_eq!(tally.get("/counters/a").json()["count"], 0);
}

#[test]
fn bad_percent_encoding_is_400() {
    let (_redis, tally) = start();
    for path in ["/%zz", "/counters/%ff%fe", "/%"] {
        assert_eq!(tally.get(path).status, 400, "{path}");
    }
}

#[test]
fn request_id_is_echoed_or_made() {
    let (_redis, tally) = start();
    let raw =
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n";
    assert_eq!(
        request(tally.addr, raw).header("X-Request-Id"),
        Some("abc-123")
    );
    let made = tally.get("/healthz");
    let id = made.header("X-Request-Id").unwrap();
    assert_eq!(id.len(), 16);
    let raw =
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: has space\r\nConnection: close\r\n\r\n";
    assert_ne!(
        request(tally.addr, raw).header("X-Request-Id"),
        Some("has space")
    );
    let log = tally
        .wait_for_log("abc-123", std::time::Duration::from_secs(2))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(&log).unwrap();
    assert_eq!(line["message"], "request");
    assert_eq!(line["path"], "/healthz");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].is_number());
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[test]
fn counter_at_i64_max_is_409() {
    let (redis, tally) = start();
    redis
        .cli(&["SET", "tally:full", "9223372036854775807"])
        .unwrap();
    let response = tally.post("/counters/full");
    assert_eq!(response.status, 409);
    assert!(response.json()["error"]
        .as_str()
        .unwrap()
        .contains("maximum"));
    assert_eq!(
        redis.cli(&["GET", "tally:full"]).unwrap(),
        "9223372036854775807"
    );
    let log = tally
        .wait_for_log("counter request failed", std::time::Duration::from_secs(2))
        .unwrap();
    assert!(log.contains("tally:full"));
}

#[test]
fn non_integer_and_wrong_type_are_409() {
    let (redis, tally) = start();
    redis.cli(&["SET", "tally:text", "hello"]).unwrap();
    redis.cli(&["SET", "tally:plus", "+12"]).unwrap();
    redis.cli(&["RPUSH", "tally:list", "a"]).unwrap();
    for path in ["/counters/text", "/counters/list"] {
        let post = tally.post(path);
        assert_eq!(post.status, 409, "POST {path}");
        assert!(post.json()["error"].is_string());
        assert_eq!(tally.get(path).status, 409, "GET {path}");
    }
    // The first failure is logged with its key; the three after it within
    // a second are counted in the next line instead.
    let log = tally
        .wait_for_log("counter request failed", std::time::Duration::from_secs(2))
        .unwrap();
    assert!(log.contains("tally:text"), "{log}");
    assert!(log.contains("not a 64-bit integer"), "{log}");
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert_eq!(tally.post("/counters/list").status, 409);
    let next = tally
        .wait_for_log("\"suppressed\":3", std::time::Duration::from_secs(2))
        .unwrap();
    assert!(next.contains("tally:list"), "{next}");
    assert!(next.contains("wrong type"), "{next}");
    // GET reports as a count only what INCR would accept.
    assert_eq!(tally.get("/counters/plus").status, 409);
    // One bad key does not affect other requests in the same pipeline.
    assert_eq!(tally.get("/").status, 200);
}

#[test]
fn key_prefix_is_applied() {
    let redis = Redis::start();
    let tally = Tally::start(&[("REDIS_URL", &redis.url()), ("KEY_PREFIX", "")]);
    assert_eq!(tally.get("/").status, 200);
    assert_eq!(redis.get("visits"), 1);
    assert_eq!(redis.get("tally:visits"), 0);
}

#[test]
fn redis_database_index_and_password_work() {
    let redis = Redis::start();
    redis
        .cli(&["CONFIG", "SET", "requirepass", "p@ss word"])
        .unwrap();
    let url = format!("redis://:p%40ss%20word@127.0.0.1:{}/3", redis.port);
    let tally = Tally::start(&[("REDIS_URL", &url)]);
    assert_eq!(tally.get("/").status, 200);
    let count = redis.cli(&[
        "-a",
        "p@ss word",
        "--no-auth-warning",
        "-n",
        "3",
        "GET",
        "tally:visits",
    ]);
    assert_eq!(count.as_deref(), Some("1"));
    assert!(!tally.log_text().contains("p@ss"));
    assert!(!tally.log_text().contains("p%40ss"));
}

#[test]
fn unix_socket_url_works() {
    let dir = common::TempDir::new("sock");
    let socket = dir.0.join("redis.sock");
    let socket_arg = socket.to_str().unwrap();
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--unixsocket",
            socket_arg,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let url = format!("redis+unix://{socket_arg}?db=2");
    let tally = Tally::start(&[("REDIS_URL", &url)]);
    let response = tally.get("/");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["count"], 1);
}
