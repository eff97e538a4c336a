//! Signal handling for the graceful drain. The first SIGTERM or SIGINT sets
//! a flag and wakes the main thread. A second one exits at once with code 1,
//! running no destructors and flushing nothing.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::{flag, low_level};

/// Exit code when a second signal cuts the drain short.
const SECOND_SIGNAL_EXIT: i32 = 1;

pub struct Signals {
    received: Arc<AtomicBool>,
    wake: UnixStream,
}

/// Installs the handlers. Call this first in `main`: as PID 1 in a
/// container a process with no handler ignores SIGTERM.
pub fn install() -> io::Result<Signals> {
    let received = Arc::new(AtomicBool::new(false));
    let (wake, notify) = UnixStream::pair()?;
    for signal in [SIGTERM, SIGINT] {
        // The conditional exit must be registered before the flag setter:
        // signal-hook runs actions in order, so the other way round the
        // first signal would already see the flag set and exit.
        flag::register_conditional_shutdown(signal, SECOND_SIGNAL_EXIT, Arc::clone(&received))?;
        flag::register(signal, Arc::clone(&received))?;
        low_level::pipe::register(signal, notify.try_clone()?)?;
    }
    Ok(Signals { received, wake })
}

impl Signals {
    /// Blocks until the first SIGTERM or SIGINT.
    pub fn wait(&mut self) {
        let mut byte = [0u8; 1];
        while !self.received.load(Ordering::SeqCst) {
            if self.wake.read(&mut byte).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
