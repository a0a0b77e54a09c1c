//! An SoC played on the host, for tests of the PCI carrier of the link:
//! the test connects to a controller's link function as the SoC's
//! hypervisor would (a vfio-user client), maps its BARs from the
//! descriptors it is given, and hands them to a runtime in this process as
//! its [`Windows`] (in an SoC VM the same runtime maps them from sysfs).

use crate::vfio_user_client::{Client, ClientError};
use leapio_link::function::{self, reg};
use leapio_link::ring::{End, RingMemory, Rings, RING_AREA};
use leapio_link::shm::SharedMem;
use socp::link::{Carrier, Windows};
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The link function, mapped.
pub struct SocFunction {
    client: Mutex<Client>,
    rings: Arc<SharedMem>,
    doorbells: File,
    qstate: File,
    guest_mem: File,
}

fn bar_file(c: &mut Client, bar: usize) -> Result<File, ClientError> {
    let (_, fd) = c.region_info(u32::try_from(bar).unwrap_or(0))?;
    fd.map(File::from)
        .ok_or_else(|| ClientError::Protocol(format!("BAR {bar} has no descriptor")))
}

impl SocFunction {
    /// Connect to the link function at `sock` and map its BARs.
    pub fn connect(sock: &Path) -> Result<SocFunction, ClientError> {
        let mut c = Client::connect(sock)?;
        let rings = SharedMem::window(
            bar_file(&mut c, function::BAR_RINGS)?,
            0,
            RING_AREA,
            "rings",
        )
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(SocFunction {
            doorbells: bar_file(&mut c, function::BAR_DOORBELLS)?,
            qstate: bar_file(&mut c, function::BAR_QSTATE)?,
            guest_mem: bar_file(&mut c, function::BAR_GUEST_MEM)?,
            rings: Arc::new(rings),
            client: Mutex::new(c),
        })
    }

    /// Read a register.
    pub fn read(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        let mut c = self.client.lock().unwrap_or_else(|e| e.into_inner());
        match c.region_read(0, off, &mut b) {
            Ok(()) => u32::from_le_bytes(b),
            Err(_) => 0,
        }
    }

    /// Write a register.
    pub fn write(&self, off: u64, v: u32) {
        let mut c = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.region_write(0, off, &v.to_le_bytes());
    }

    /// The rings as the runtime's end sees them (no session opened).
    pub fn rings(&self) -> Arc<Rings> {
        Arc::new(Rings::attach(
            self.rings.clone() as Arc<dyn RingMemory>,
            End::Runtime,
        ))
    }

    /// Open a session numbered `id` and give the transport a runtime uses.
    pub fn open(self: &Arc<Self>, id: u32) -> Carrier {
        self.write(reg::OPEN, id);
        Carrier::rings(self.rings(), self.clone() as Arc<dyn Windows>)
    }

    /// The raw vfio-user client (for tests of bad input).
    pub fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Windows for SocFunction {
    fn doorbells(&self) -> io::Result<File> {
        self.doorbells.try_clone()
    }
    fn qstate(&self) -> io::Result<File> {
        self.qstate.try_clone()
    }
    fn guest_mem(&self) -> io::Result<File> {
        self.guest_mem.try_clone()
    }
    fn irq(&self, v: u16) {
        self.write(reg::IRQ, u32::from(v));
    }
    fn kick(&self) {
        self.write(reg::KICK, 1);
    }
}
