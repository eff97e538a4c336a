//! Feeds arbitrary bytes to the request-head parser. It must return a
//! request, "incomplete" or a 4xx/5xx rejection, never panic, and parse a
//! complete head the same way when the bytes after it are cut off.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::http::{parse_head, request::MAX_HEAD_BYTES};

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(Some(request)) => {
            assert!(request.head_len <= data.len(), "head_len past the input");
            assert!(request.head_len <= MAX_HEAD_BYTES, "head longer than the limit");
            let alone = parse_head(&data[..request.head_len]);
            let alone_len = alone.ok().flatten().map(|head| head.head_len);
            assert_eq!(alone_len, Some(request.head_len), "head parsed differently alone");
        }
        Ok(None) => assert!(data.len() < MAX_HEAD_BYTES, "incomplete past the limit"),
        Err(error) => assert!((400..600).contains(&error.status), "status {}", error.status),
    }
});
