//! tally counts visits: each counted request is one Redis `INCR`, and the
//! process keeps no state of its own. The binary's entry point is
//! `src/main.rs`. This library contains everything it is made of, so that
//! tests and fuzzers can reach the parsers.

pub mod clock;
pub mod config;
pub mod envfile;
pub mod healthcheck;
pub mod http;
pub mod ids;
pub mod log;
pub mod routes;
pub mod shutdown;
pub mod store;
