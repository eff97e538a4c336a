//! Feeds arbitrary bytes to the .env parser. It must return entries or an
//! error naming a line of the input, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines = data.split(|&byte| byte == b'\n').count();
    match tally::envfile::parse(data, |name| Some(format!("host-{name}"))) {
        Ok(entries) => {
            for (name, _) in &entries {
                assert!(!name.is_empty(), "empty variable name");
            }
        }
        Err(error) => assert!((1..=lines).contains(&error.line), "line {}", error.line),
    }
});
