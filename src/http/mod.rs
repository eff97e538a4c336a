//! tally's own HTTP/1.1 server: a blocking thread pool behind `epoll`, with
//! bounds on every size and wait. See `server` for the threads,
//! `connection` for one client, `request` and `response` for the wire format.

mod connection;
mod poller;
pub mod request;
pub mod response;
mod server;

pub use request::{parse_head, Method, ParseError, Request};
pub use response::Response;
pub use server::{Handler, Limits, Server};
