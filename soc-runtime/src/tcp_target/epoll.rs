//! A minimal level-triggered epoll wrapper.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub(super) struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: fd is a new descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watch `fd` for input (and output when `out`).
    pub fn add(&self, fd: RawFd, token: u64, out: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, mask(true, out), token)
    }

    /// Watch `fd` for input when `inp`, output when `out` (hang-ups always).
    pub fn modify(&self, fd: RawFd, token: u64, inp: bool, out: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, mask(inp, out), token)
    }

    pub fn delete(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// Wait up to `timeout`; append (token, events) of ready descriptors.
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<(u64, u32)>) -> io::Result<()> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let max = i32::try_from(self.events.len()).unwrap_or(64);
        // SAFETY: `events` has room for `max` entries and lives across the call.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        let n = usize::try_from(n).unwrap_or(0);
        for ev in &self.events[..n] {
            let (token, events) = (ev.u64, ev.events);
            out.push((token, events));
        }
        Ok(())
    }
}

fn mask(inp: bool, out: bool) -> u32 {
    let mut m = libc::EPOLLRDHUP as u32;
    if inp {
        m |= libc::EPOLLIN as u32;
    }
    if out {
        m |= libc::EPOLLOUT as u32;
    }
    m
}
