//! An in-process harness for coverage-guided fuzzing of the target's
//! connection handling (feature `fuzzing`; not part of the runtime's API).
//!
//! One poller serves connections whose bytes come from the caller instead
//! of sockets: the PDU parser, the connection state machine (ICReq,
//! capsules, Connect, properties, admin commands, R2T/H2CData, C2HData,
//! TermReqs), command planning and a RAM backend all run as in a real
//! poller, on one thread, with no I/O and no timers.

use super::poller::{TargetPoller, BACKEND_DEPTH};
use crate::fabrics::config::TargetSpec;
use crate::fabrics::fuzzing::{serve, Served};
use crate::fabrics::subsystem::Subsystem;
use leapio_backends::Backend;
use leapio_controller::NamespaceInfo;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use crate::fabrics::fuzzing::SPEC;

/// What one run left behind after every connection closed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Leftovers {
    /// Connections still open in the poller.
    pub connections: usize,
    /// Connections the subsystem still counts.
    pub counted_connections: usize,
    /// Controllers still alive.
    pub controllers: usize,
    /// Commands of closed connections still held for the backends.
    pub orphans: usize,
    /// Backend operations not completed.
    pub in_flight: usize,
}

/// A poller, its RAM namespaces and its backend queues, reused across runs.
pub struct Harness {
    poller: TargetPoller,
    spec: TargetSpec,
    namespaces: Vec<NamespaceInfo>,
    backends: Vec<Arc<dyn Backend>>,
    listener: Arc<TcpListener>,
}

impl Harness {
    /// Open the namespaces of [`SPEC`] and a poller for them.
    pub fn new() -> std::io::Result<Harness> {
        let Served {
            spec,
            backends,
            namespaces,
            engine,
            queues,
        } = serve(SPEC, BACKEND_DEPTH)?;
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0")?);
        let sub = Self::subsystem(&spec, &namespaces, &backends, &listener)?;
        let stop = Arc::new(AtomicBool::new(false));
        let poller = TargetPoller::new(0, sub, listener.clone(), engine, queues, stop)?;
        Ok(Harness {
            poller,
            spec,
            namespaces,
            backends,
            listener,
        })
    }

    fn subsystem(
        spec: &TargetSpec,
        namespaces: &[NamespaceInfo],
        backends: &[Arc<dyn Backend>],
        listener: &TcpListener,
    ) -> std::io::Result<Arc<Subsystem>> {
        Ok(Arc::new(Subsystem::new(
            spec,
            "FUZZ".into(),
            listener.local_addr()?,
            leapio_backends::Transport::Tcp,
            namespaces.to_vec(),
            backends.to_vec(),
        )))
    }

    /// Serve `connections` new connections (at most 8) of a fresh
    /// subsystem: each `(connection, bytes)` of `chunks` arrives in order,
    /// and after each the backends complete what they were given. Every PDU
    /// the target sends goes to `sent` (connection, PDU). Then every peer
    /// goes away; returns what that left behind.
    pub fn run(
        &mut self,
        connections: usize,
        chunks: &[(usize, &[u8])],
        sent: &mut dyn FnMut(usize, &[u8]),
    ) -> std::io::Result<Leftovers> {
        let sub = Self::subsystem(&self.spec, &self.namespaces, &self.backends, &self.listener)?;
        self.poller.fuzz_set_subsystem(sub.clone());
        let mut slots = Vec::new();
        for _ in 0..connections.clamp(1, 8) {
            slots.push(self.poller.fuzz_open(unconnected_socket()?));
        }
        for &(c, bytes) in chunks {
            let slot = slots[c % slots.len()];
            self.poller.fuzz_feed(slot, bytes);
            self.poller.fuzz_settle(&mut |s, pdu| {
                if let Some(i) = slots.iter().position(|&x| x == s) {
                    sent(i, pdu);
                }
            });
        }
        self.poller.fuzz_close_all();
        let (connections, orphans, in_flight) = self.poller.fuzz_leftovers();
        Ok(Leftovers {
            connections,
            counted_connections: sub.connections.load(Ordering::Acquire),
            controllers: sub.controller_count(),
            orphans,
            in_flight,
        })
    }
}

/// A TCP socket that is connected to nothing: the connection's socket in
/// the harness, never read or written.
fn unconnected_socket() -> std::io::Result<TcpStream> {
    // SAFETY: socket(2) with constant arguments; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
