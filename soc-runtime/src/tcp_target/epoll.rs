//! The target poller's epoll set (vmm-sys-util's), level-triggered: every
//! descriptor is watched for hang-ups, input when it is read, output when
//! something waits to be written.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll as Set, EpollEvent, EventSet};

pub(super) struct Epoll {
    set: Set,
    events: Vec<EpollEvent>,
}

/// What woke a descriptor.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ready(EventSet);

impl Ready {
    /// The peer hung up (or half-closed), or the descriptor failed.
    pub fn hangup(self) -> bool {
        self.0
            .intersects(EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
    }

    pub fn readable(self) -> bool {
        self.0.contains(EventSet::IN)
    }
}

fn interest(inp: bool, out: bool) -> EventSet {
    let mut e = EventSet::READ_HANG_UP;
    if inp {
        e |= EventSet::IN;
    }
    if out {
        e |= EventSet::OUT;
    }
    e
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            set: Set::new()?,
            events: vec![EpollEvent::default(); 64],
        })
    }

    /// Watch `fd` for input (and output when `out`).
    pub fn add(&self, fd: RawFd, token: u64, out: bool) -> io::Result<()> {
        self.set.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(interest(true, out), token),
        )
    }

    /// Watch `fd` for input when `inp`, output when `out` (hang-ups always).
    pub fn modify(&self, fd: RawFd, token: u64, inp: bool, out: bool) -> io::Result<()> {
        self.set.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(interest(inp, out), token),
        )
    }

    pub fn delete(&self, fd: RawFd) {
        let _ = self
            .set
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Wait up to `timeout`; append (token, what woke it) of ready
    /// descriptors.
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<(u64, Ready)>) -> io::Result<()> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let n = match self.set.wait(ms, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        out.extend(
            self.events[..n]
                .iter()
                .map(|ev| (ev.data(), Ready(ev.event_set()))),
        );
        Ok(())
    }
}
