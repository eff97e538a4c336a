//! Request ids for responses and logs when the client sent none.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static SEED: OnceLock<RandomState> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Returns 16 hex digits, unpredictable across processes: a sequence number
/// hashed with the standard library's per-process random keys (SipHash).
pub fn new_request_id() -> String {
    let seed = SEED.get_or_init(RandomState::new);
    let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", seed.hash_one(sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_have_fixed_width() {
        let first = new_request_id();
        let second = new_request_id();
        assert_ne!(first, second);
        assert_eq!(first.len(), 16);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
