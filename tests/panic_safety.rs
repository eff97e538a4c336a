//! A handler that panics costs its connection, never a worker or the
//! process: the server keeps answering on every worker afterwards.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally::http::{Handler, Limits, Request, Response, Server};

struct PanicsOnSomePaths;

impl Handler for PanicsOnSomePaths {
    fn handle(&self, request: &Request, _request_id: &str) -> Response {
        if request.target == "/panic" {
            panic!("handler panic on purpose");
        }
        Response::json(200, &serde_json::json!({ "ok": true }))
    }
}

#[test]
fn panicking_handler_keeps_server_alive() {
    let limits = Limits {
        workers: 2,
        max_connections: 64,
        header_timeout: Duration::from_secs(5),
        keepalive_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
    };
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(addr, limits, Arc::new(PanicsOnSomePaths)).unwrap();
    let addr = server.local_addr();
    // More panics than workers: each must cost only its own connection.
    for _ in 0..5 {
        let mut stream = common::connect(addr);
        std::io::Write::write_all(&mut stream, b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert!(common::read_to_close(&mut stream).is_empty());
    }
    for _ in 0..10 {
        let response = common::request(
            addr,
            "GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(response.status, 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while server.open_connections() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        server.open_connections(),
        0,
        "a slot stayed taken after a panic"
    );
}
