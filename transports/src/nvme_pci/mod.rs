//! An NVMe SSD driven from user space: the device is bound to `vfio-pci`,
//! its BAR0 mapped, its queues in DMA memory and polled, and its commands'
//! PRPs point straight into the memory a request names, guest memory
//! included: every guest region the runtime maps is also mapped into the
//! SSD's IOMMU domain (`leapio_backend::dma`), so the SSD moves the guest's
//! data and the runtime's CPU copies none of it. Memory outside the IOMMU
//! domain goes through bounce buffers, and what is copied is counted
//! ([`Backend::copied_bytes`]).
//!
//! Spec: `nvme-pci:BDF[?nsid=N&timeout=MS]`, e.g. `nvme-pci:0000:00:03.0`.
//! `nsid` (default 1) is the SSD's namespace served; `timeout` (ms, default
//! 30000) how long a command may run before it is aborted, and then the
//! controller reset.
//!
//! Only one process drives a device: a runtime taking over from one that
//! was killed waits (up to 10 s) for the kernel to let go of it, then
//! resets the controller, which stops whatever the old one left running.

mod device;
mod queue;
pub mod vfio;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leapio_backend::dma::DmaRegistry;
use leapio_options::Options;

use self::device::{Mmio, NvmeDevice, Registers};
use self::queue::IoQueue;
use self::vfio::PciDevice;
use crate::{human_size, Backend, BackendError, BackendQueue, Features, Geometry};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which SSD, which namespace, how patient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmePciSpec {
    /// PCI address, `DDDD:BB:DD.F`.
    pub bdf: String,
    /// Namespace of the SSD.
    pub nsid: u32,
    /// Longest a command may run.
    pub timeout: Duration,
}

impl fmt::Display for NvmePciSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nvme-pci:{}", self.bdf)?;
        let mut sep = '?';
        if self.nsid != 1 {
            write!(f, "{sep}nsid={}", self.nsid)?;
            sep = '&';
        }
        if self.timeout != DEFAULT_TIMEOUT {
            write!(f, "{sep}timeout={}", self.timeout.as_millis())?;
        }
        Ok(())
    }
}

/// Parse what follows `nvme-pci:`.
pub(crate) fn parse_spec(body: &str) -> Result<NvmePciSpec, String> {
    let (bdf, query) = match body.split_once('?') {
        Some((b, q)) => (b, q),
        None => (body, ""),
    };
    let bdf = vfio::parse_bdf(bdf.trim())?;
    let opts = Options::parse(query, '&').map_err(|e| e.to_string())?;
    opts.check_once(&["nsid", "timeout"])
        .map_err(|e| e.to_string())?;
    let nsid = match opts.get("nsid") {
        Some(o) => o.number(1..=0xffff_fffe).map_err(|e| e.to_string())?,
        None => 1,
    };
    let timeout = match opts.get("timeout") {
        Some(o) => o.millis(100..=3_600_000).map_err(|e| e.to_string())?,
        None => DEFAULT_TIMEOUT,
    };
    Ok(NvmePciSpec { bdf, nsid, timeout })
}

/// See the module documentation.
pub struct NvmePciBackend {
    spec: NvmePciSpec,
    dev: Arc<NvmeDevice>,
    copied: Arc<AtomicU64>,
}

impl fmt::Debug for NvmePciBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvmePciBackend")
            .field("spec", &self.spec)
            .finish()
    }
}

impl NvmePciBackend {
    /// Open the SSD and take its controller over.
    pub fn open(spec: &NvmePciSpec) -> Result<NvmePciBackend, BackendError> {
        let remote = |e: Box<dyn std::error::Error + Send + Sync>| BackendError::Remote {
            target: spec.to_string(),
            source: e,
        };
        let pci = Arc::new(PciDevice::open(&spec.bdf).map_err(|e| remote(Box::new(e)))?);
        let regs: Arc<dyn Registers> = Arc::new(Mmio::new(Arc::clone(&pci)));
        let dev = NvmeDevice::open(
            regs,
            Some(pci),
            DmaRegistry::global(),
            spec.nsid,
            spec.timeout,
        )
        .map_err(|e| remote(Box::new(e)))?;
        tracing::info!(
            bdf = %spec.bdf,
            model = %dev.info.model,
            nsid = spec.nsid,
            queues = dev.info.queues,
            max_command = dev.info.max_command,
            "NVMe SSD taken over through VFIO"
        );
        Ok(NvmePciBackend {
            spec: spec.clone(),
            dev: Arc::new(dev),
            copied: Arc::new(AtomicU64::new(0)),
        })
    }

    #[cfg(test)]
    fn with_device(dev: NvmeDevice, spec: NvmePciSpec) -> NvmePciBackend {
        NvmePciBackend {
            spec,
            dev: Arc::new(dev),
            copied: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Drop for NvmePciBackend {
    fn drop(&mut self) {
        self.dev.shutdown();
    }
}

impl Backend for NvmePciBackend {
    fn geometry(&self) -> Geometry {
        self.dev.info.geometry
    }

    fn features(&self) -> Features {
        Features {
            volatile_write_cache: self.dev.info.volatile_write_cache,
            write_zeroes: self.dev.info.write_zeroes,
            deallocate: self.dev.info.deallocate,
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        Ok(Box::new(IoQueue::open(
            &self.dev,
            depth,
            Arc::clone(&self.copied),
        )?))
    }

    fn flush(&self) -> Result<(), BackendError> {
        if !self.dev.info.volatile_write_cache {
            return Ok(());
        }
        let mut q = self.open_queue(1)?;
        let req = crate::IoRequest {
            tag: 0,
            kind: crate::IoKind::Flush,
            offset: 0,
            len: 0,
            iov: &[],
            owner: 0,
            journal: None,
        };
        let fail = |what: String| BackendError::Flush {
            target: self.spec.to_string(),
            source: std::io::Error::other(what),
        };
        // SAFETY: a flush carries no iovecs.
        unsafe { q.submit(&req) }.map_err(|e| fail(e.to_string()))?;
        let mut out = Vec::new();
        q.drain(&mut out, self.spec.timeout * 2);
        match out.pop() {
            Some(c) => c.result.map_err(|e| fail(e.to_string())),
            None => Err(fail("no completion".into())),
        }
    }

    fn describe(&self) -> String {
        let g = self.dev.info.geometry;
        format!(
            "{} ({}, {} B blocks, {} serial {} namespace {}, VFIO, {} I/O queues)",
            self.spec,
            human_size(g.size_bytes()),
            g.block_size,
            self.dev.info.model,
            self.dev.info.serial,
            self.dev.info.nsid,
            self.dev.info.queues
        )
    }

    fn copied_bytes(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
