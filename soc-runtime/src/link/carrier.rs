//! How the runtime's link reaches the host-driver: a Unix socket (the
//! host-driver passes file descriptors for the shared memory), or the
//! rings of a link function, with the shared memory in the function's BARs
//! ([`Windows`]): a runtime on an SoC.

use leapio_link::frame::{self, LinkError};
use leapio_link::ring::Rings;
use leapio_link::{ToHost, ToRuntime};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shared memory of a link function, as the runtime sees it.
pub trait Windows: Send + Sync {
    /// The doorbell page's memfd, from offset 0 (BAR 2).
    fn doorbells(&self) -> io::Result<File>;
    /// The queue-state area (BAR 3).
    fn qstate(&self) -> io::Result<File>;
    /// The guest's RAM (BAR 4): guest memory maps name offsets in it.
    fn guest_mem(&self) -> io::Result<File>;
    /// Raise the guest's MSI-X vector `v` (the IRQ register). Whatever the
    /// runtime wrote into guest memory before must be visible first.
    fn irq(&self, v: u16);
    /// A message waits in the to-host ring (the KICK register).
    fn kick(&self);
}

/// The link's carrier, runtime side.
#[derive(Clone)]
pub enum Carrier {
    Socket(Arc<UnixStream>),
    Rings {
        rings: Arc<Rings>,
        windows: Arc<dyn Windows>,
        /// Set by [`Carrier::shutdown`]: the reader stops.
        closed: Arc<AtomicBool>,
    },
}

/// How long to wait for a ring to have room.
const RING_SEND_TIMEOUT: Duration = Duration::from_secs(5);

impl Carrier {
    pub fn socket(s: UnixStream) -> Carrier {
        Carrier::Socket(Arc::new(s))
    }

    /// Over a link function's rings, with its memory in `windows`.
    pub fn rings(rings: Arc<Rings>, windows: Arc<dyn Windows>) -> Carrier {
        Carrier::Rings {
            rings,
            windows,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn windows(&self) -> Option<&Arc<dyn Windows>> {
        match self {
            Carrier::Rings { windows, .. } => Some(windows),
            Carrier::Socket(_) => None,
        }
    }

    pub fn send(&self, msg: &ToHost) -> Result<(), LinkError> {
        match self {
            Carrier::Socket(s) => frame::send(s, msg, &[]),
            Carrier::Rings { rings, windows, .. } => {
                let deadline = Instant::now() + RING_SEND_TIMEOUT;
                loop {
                    match rings.send(msg) {
                        Ok(()) => {
                            windows.kick();
                            return Ok(());
                        }
                        Err(LinkError::Timeout(_)) if Instant::now() < deadline => {
                            windows.kick();
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// The next message; `timeout` None waits for ever.
    pub fn recv(&self, timeout: Option<Duration>) -> Result<(ToRuntime, Vec<OwnedFd>), LinkError> {
        match self {
            Carrier::Socket(s) => {
                s.set_read_timeout(timeout).map_err(LinkError::Io)?;
                frame::recv(s)
            }
            Carrier::Rings { rings, closed, .. } => {
                let deadline = timeout.map(|t| Instant::now() + t);
                // Poll: nothing interrupts a user-space runtime on the SoC.
                // Messages are control only: a short sleep costs nothing
                // on the I/O path and leaves the CPU to the guests.
                let mut pause = Duration::from_micros(50);
                loop {
                    if closed.load(Ordering::Acquire) {
                        return Err(LinkError::Closed);
                    }
                    if let Some(m) = rings.recv::<ToRuntime>()? {
                        return Ok((m, Vec::new()));
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(LinkError::Timeout("a message from the host-driver".into()));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(2));
                }
            }
        }
    }

    /// End the link (the reader returns).
    pub fn shutdown(&self) {
        match self {
            Carrier::Socket(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Carrier::Rings { closed, .. } => closed.store(true, Ordering::Release),
        }
    }

    /// Whether [`Carrier::shutdown`] was called (rings).
    pub fn is_closed(&self) -> bool {
        match self {
            Carrier::Rings { closed, .. } => closed.load(Ordering::Acquire),
            Carrier::Socket(_) => false,
        }
    }

    /// The runtime is alive (rings: the heartbeat the host-driver watches).
    pub fn beat(&self) {
        if let Carrier::Rings { rings, .. } = self {
            rings.beat();
        }
    }
}
