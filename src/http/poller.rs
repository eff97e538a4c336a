//! A thin, safe wrapper over Linux `epoll` in one-shot mode: each readiness
//! event goes to exactly one worker, and the connection is not reported
//! again until that worker re-arms it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub struct Poller {
    fd: OwnedFd,
}

const READ_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;
const WRITE_EVENTS: u32 = (libc::EPOLLOUT | libc::EPOLLONESHOT) as u32;

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 takes no pointers; a valid result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
        Ok(Poller {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Starts watching `fd` for one readable event, reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, token, READ_EVENTS)
    }

    /// Re-arms `fd` for one more readable event after it was reported.
    pub fn rearm(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, token, READ_EVENTS)
    }

    /// Re-arms `fd` for one event when its socket can take more output.
    pub fn rearm_writable(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, token, WRITE_EVENTS)
    }

    fn control(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Blocks until one watched fd is ready and returns its token.
    pub fn wait(&self) -> io::Result<u64> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        loop {
            // SAFETY: the buffer is exactly the one event we ask for.
            let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), &mut event, 1, -1) };
            if n == 1 {
                return Ok(event.u64);
            }
            let err = io::Error::last_os_error();
            if n < 0 && err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}
