//! The NVMe host driver over vfio-user.

use crate::mem::GuestMem;
use crate::vfio_user_client::{Client, ClientError};
use leapio_nvme::cmd::FeatureId;
use leapio_nvme::identify::{Cns, IdentifyController, IdentifyNamespace};
use leapio_nvme::regs::{csts, offset};
use leapio_nvme::{AdminOpcode, Cqe, IoOpcode, Sqe, Status};
use memmap2::{MmapOptions, MmapRaw};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::path::Path;
use std::ptr::NonNull;
use std::time::{Duration, Instant};
use zerocopy::FromBytes;

pub const PAGE: u64 = 4096;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX as REGION_BAR0, VFIO_PCI_CONFIG_REGION_INDEX as REGION_CONFIG,
    VFIO_PCI_MSIX_IRQ_INDEX as IRQ_MSIX,
};
/// Guest-physical addresses below this are never allocated (like RAM holes).
const FIRST_GPA: u64 = 0x10000;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("vfio-user: {0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("{what} failed: {status}")]
    Status { what: String, status: Status },
    #[error("{0}")]
    Setup(String),
}

/// A submission/completion queue pair as the host sees it.
#[derive(Clone, Debug)]
pub struct QueuePair {
    pub qid: u16,
    pub sq_gpa: u64,
    pub cq_gpa: u64,
    pub entries: u32,
    pub sq_tail: u32,
    pub cq_head: u32,
    pub phase: bool,
    pub vector: u16,
    next_cid: u16,
    /// Command ids submitted and not completed: a new command never
    /// takes one (a command may stay in flight while 65536 others pass).
    outstanding: std::collections::HashSet<u16>,
}

impl QueuePair {
    fn new(qid: u16, sq_gpa: u64, cq_gpa: u64, entries: u32, vector: u16) -> QueuePair {
        QueuePair {
            qid,
            sq_gpa,
            cq_gpa,
            entries,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            vector,
            next_cid: 0,
            outstanding: std::collections::HashSet::new(),
        }
    }
}

/// The driver: the client connection, guest RAM, doorbells and queues.
pub struct Driver {
    pub client: Client,
    pub mem: GuestMem,
    /// In `doorbell_map`, which the driver keeps.
    doorbells: NonNull<u32>,
    _doorbell_map: MmapRaw,
    irqs: Vec<File>,
    pub queues: BTreeMap<u16, QueuePair>,
    pub timeout: Duration,
    /// PRP list pages, one per command slot, reused.
    prp_lists: Vec<u64>,
}

// SAFETY: the doorbell mapping is owned by the driver, used from one thread at a time.
unsafe impl Send for Driver {}

fn eventfd() -> io::Result<File> {
    // SAFETY: plain eventfd creation, checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl Driver {
    /// Connect, map `mem_size` bytes of guest RAM, map the doorbell page,
    /// turn on memory decoding and bus mastering, and wire every MSI-X vector.
    pub fn connect(path: &Path, mem_size: u64) -> Result<Driver, DriverError> {
        Driver::connect_vectors(path, mem_size, u32::MAX)
    }

    /// [`Driver::connect`], wiring only the first `max_vectors` MSI-X
    /// vectors to eventfds (as QEMU does for the vectors a guest enables:
    /// a small guest uses a few of the 33 a controller offers). Harnesses
    /// that attach many controllers from one process keep their
    /// descriptors, and the host-driver's, in proportion.
    pub fn connect_vectors(
        path: &Path,
        mem_size: u64,
        max_vectors: u32,
    ) -> Result<Driver, DriverError> {
        let mut client = Client::connect(path)?;
        client.set_timeout(Some(Duration::from_secs(60)))?;
        let mem = GuestMem::new(0, mem_size)?;
        client.dma_map(0, mem_size, Some(mem.fd()), 0, true, true)?;
        let (info, fd) = client.region_info(REGION_BAR0)?;
        let (mmap, fd) = match (info.mmap, fd) {
            (Some(m), Some(fd)) => (m, fd),
            _ => {
                return Err(DriverError::Setup(
                    "BAR0 offers no mmap area for the doorbells".into(),
                ))
            }
        };
        let Some(&(area_off, area_len)) = mmap.areas.first() else {
            return Err(DriverError::Setup("BAR0 has no sparse mmap area".into()));
        };
        if area_off != offset::DOORBELLS || area_len < PAGE {
            return Err(DriverError::Setup(format!(
                "unexpected doorbell area {area_off:#x}+{area_len:#x}"
            )));
        }
        // The page the server offered, mapped as a hypervisor would.
        let doorbell_map = MmapOptions::new()
            .offset(mmap.file_offset + area_off)
            .len(4096)
            .map_raw(&fd)?;
        let doorbells = NonNull::new(doorbell_map.as_mut_ptr().cast::<u32>())
            .ok_or_else(|| DriverError::Setup("mmap returned null".into()))?;
        // Memory space + bus master.
        client.region_write(REGION_CONFIG, 4, &0x0006u16.to_le_bytes())?;
        let n = client.irq_info(IRQ_MSIX)?.count.min(max_vectors);
        let irqs = (0..n).map(|_| eventfd()).collect::<io::Result<Vec<_>>>()?;
        let fds: Vec<_> = irqs.iter().map(|f| f.as_fd()).collect();
        client.set_irq_eventfds(IRQ_MSIX, 0, &fds)?;
        let mut mem = mem;
        mem.alloc(FIRST_GPA, 1);
        Ok(Driver {
            client,
            mem,
            doorbells,
            _doorbell_map: doorbell_map,
            irqs,
            queues: BTreeMap::new(),
            timeout: Duration::from_secs(20),
            prp_lists: Vec::new(),
        })
    }

    pub fn reg32(&mut self, off: u64) -> Result<u32, DriverError> {
        let mut b = [0u8; 4];
        self.client.region_read(REGION_BAR0, off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn reg64(&mut self, off: u64) -> Result<u64, DriverError> {
        let mut b = [0u8; 8];
        self.client.region_read(REGION_BAR0, off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn set_reg32(&mut self, off: u64, v: u32) -> Result<(), DriverError> {
        Ok(self
            .client
            .region_write(REGION_BAR0, off, &v.to_le_bytes())?)
    }

    pub fn set_reg64(&mut self, off: u64, v: u64) -> Result<(), DriverError> {
        Ok(self
            .client
            .region_write(REGION_BAR0, off, &v.to_le_bytes())?)
    }

    fn wait_csts(&mut self, what: &str, done: impl Fn(u32) -> bool) -> Result<u32, DriverError> {
        let start = Instant::now();
        loop {
            let v = self.reg32(offset::CSTS)?;
            if done(v) {
                return Ok(v);
            }
            if v & csts::CFS != 0 {
                return Err(DriverError::Setup(format!(
                    "controller fatal status while waiting for {what}"
                )));
            }
            if start.elapsed() > self.timeout {
                return Err(DriverError::Timeout(what.into()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Program the admin queue and enable the controller.
    pub fn enable(&mut self, admin_entries: u32) -> Result<(), DriverError> {
        let sq = self.mem.alloc(u64::from(admin_entries) * 64, PAGE);
        let cq = self.mem.alloc(u64::from(admin_entries) * 16, PAGE);
        let n = admin_entries - 1;
        self.set_reg32(offset::AQA, n | (n << 16))?;
        self.set_reg64(offset::ASQ, sq)?;
        self.set_reg64(offset::ACQ, cq)?;
        self.set_reg32(offset::CC, 1 | (6 << 16) | (4 << 20))?;
        self.wait_csts("CSTS.RDY", |v| v & csts::RDY != 0)?;
        self.queues
            .insert(0, QueuePair::new(0, sq, cq, admin_entries, 0));
        Ok(())
    }

    /// Clear CC.EN and wait for CSTS.RDY to drop; forget every queue.
    pub fn disable(&mut self) -> Result<(), DriverError> {
        self.set_reg32(offset::CC, (6 << 16) | (4 << 20))?;
        self.wait_csts("CSTS.RDY = 0", |v| v & csts::RDY == 0)?;
        self.queues.clear();
        Ok(())
    }

    /// Raw doorbell store into the shared page, as a guest vCPU would.
    pub fn ring_sq_raw(&self, qid: u16, value: u32) {
        // SAFETY: index 2*qid is inside the 4 KiB page for qid < 512.
        unsafe {
            self.doorbells
                .as_ptr()
                .add(usize::from(qid) * 2)
                .write_volatile(value)
        };
    }

    pub fn ring_cq_raw(&self, qid: u16, value: u32) {
        // SAFETY: as in ring_sq_raw.
        unsafe {
            self.doorbells
                .as_ptr()
                .add(usize::from(qid) * 2 + 1)
                .write_volatile(value)
        };
    }

    /// Write a command at the SQ tail (assigning a CID) without ringing.
    pub fn push(&mut self, qid: u16, mut sqe: Sqe) -> u16 {
        let q = self.queues.get_mut(&qid).expect("no such queue");
        let mut cid = q.next_cid;
        while q.outstanding.contains(&cid) {
            cid = cid.wrapping_add(1);
        }
        q.next_cid = cid.wrapping_add(1);
        q.outstanding.insert(cid);
        sqe.cid = cid.into();
        let gpa = q.sq_gpa + u64::from(q.sq_tail) * 64;
        q.sq_tail = (q.sq_tail + 1) % q.entries;
        self.mem.write(gpa, zerocopy::IntoBytes::as_bytes(&sqe));
        cid
    }

    /// Ring the SQ tail doorbell with the current tail.
    pub fn ring(&mut self, qid: u16) {
        let tail = self.queues[&qid].sq_tail;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.ring_sq_raw(qid, tail);
    }

    /// Take the next completion if the controller posted one.
    pub fn poll(&mut self, qid: u16) -> Option<Cqe> {
        let q = self.queues.get_mut(&qid)?;
        let gpa = q.cq_gpa + u64::from(q.cq_head) * 16;
        let dw3 = self.mem.read_u32_volatile(gpa + 12);
        if (dw3 >> 16) & 1 != u32::from(q.phase) {
            return None;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let bytes = self.mem.read_vec(gpa, 16);
        let cqe = Cqe::read_from_bytes(&bytes).ok()?;
        q.outstanding.remove(&cqe.cid.get());
        q.cq_head += 1;
        if q.cq_head == q.entries {
            q.cq_head = 0;
            q.phase = !q.phase;
        }
        let head = q.cq_head;
        self.ring_cq_raw(qid, head);
        Some(cqe)
    }

    /// Wait for the next completion on `qid`.
    pub fn wait(&mut self, qid: u16) -> Result<Cqe, DriverError> {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(c) = self.poll(qid) {
                return Ok(c);
            }
            if start.elapsed() > self.timeout {
                return Err(DriverError::Timeout(format!("a completion on queue {qid}")));
            }
            spins += 1;
            if spins > 1000 {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    /// Submit one command and wait for its completion.
    pub fn command(&mut self, qid: u16, sqe: Sqe) -> Result<Cqe, DriverError> {
        let cid = self.push(qid, sqe);
        self.ring(qid);
        let c = self.wait(qid)?;
        if c.cid.get() != cid {
            return Err(DriverError::Setup(format!(
                "completion for cid {} while waiting for {cid}",
                c.cid.get()
            )));
        }
        Ok(c)
    }

    pub fn admin(&mut self, sqe: Sqe) -> Result<Cqe, DriverError> {
        self.command(0, sqe)
    }

    /// Fail unless the completion succeeded.
    pub fn check(what: &str, c: &Cqe) -> Result<(), DriverError> {
        let status = c.status_field();
        if status.is_success() {
            Ok(())
        } else {
            Err(DriverError::Status {
                what: what.into(),
                status,
            })
        }
    }

    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>, DriverError> {
        let buf = self.mem.alloc(PAGE, PAGE);
        let c = self.admin(Sqe {
            opcode: AdminOpcode::IDENTIFY,
            nsid: nsid.into(),
            prp1: buf.into(),
            cdw10: u32::from(cns).into(),
            ..Default::default()
        })?;
        Self::check("identify", &c)?;
        Ok(self.mem.read_vec(buf, 4096))
    }

    pub fn identify_controller(&mut self) -> Result<IdentifyController, DriverError> {
        let v = self.identify(Cns::CONTROLLER, 0)?;
        IdentifyController::read_from_bytes(&v)
            .map_err(|_| DriverError::Setup("short identify".into()))
    }

    pub fn identify_namespace(&mut self, nsid: u32) -> Result<IdentifyNamespace, DriverError> {
        let v = self.identify(Cns::NAMESPACE, nsid)?;
        IdentifyNamespace::read_from_bytes(&v)
            .map_err(|_| DriverError::Setup("short identify".into()))
    }

    /// Set Features Number of Queues; returns the granted (sq, cq) counts.
    pub fn set_queue_count(&mut self, n: u16) -> Result<(u16, u16), DriverError> {
        let v = u32::from(n - 1) | (u32::from(n - 1) << 16);
        let c = self.admin(Sqe {
            opcode: AdminOpcode::SET_FEATURES,
            cdw10: u32::from(FeatureId::NUMBER_OF_QUEUES).into(),
            cdw11: v.into(),
            ..Default::default()
        })?;
        Self::check("set number of queues", &c)?;
        let dw0 = c.dw0.get();
        Ok(((dw0 & 0xffff) as u16 + 1, (dw0 >> 16) as u16 + 1))
    }

    /// Create I/O CQ then SQ `qid` with `entries` entries on MSI-X `vector`.
    pub fn create_queue_pair(
        &mut self,
        qid: u16,
        entries: u32,
        vector: u16,
    ) -> Result<(), DriverError> {
        let cq = self.mem.alloc(u64::from(entries) * 16, PAGE);
        let sq = self.mem.alloc(u64::from(entries) * 64, PAGE);
        let c = self.admin(create_cq(qid, cq, entries, vector))?;
        Self::check("create I/O completion queue", &c)?;
        let c = self.admin(create_sq(qid, sq, entries, qid))?;
        Self::check("create I/O submission queue", &c)?;
        self.queues
            .insert(qid, QueuePair::new(qid, sq, cq, entries, vector));
        Ok(())
    }

    pub fn delete_queue_pair(&mut self, qid: u16) -> Result<(), DriverError> {
        let c = self.admin(Sqe {
            opcode: AdminOpcode::DELETE_SQ,
            cdw10: u32::from(qid).into(),
            ..Default::default()
        })?;
        Self::check("delete I/O submission queue", &c)?;
        let c = self.admin(Sqe {
            opcode: AdminOpcode::DELETE_CQ,
            cdw10: u32::from(qid).into(),
            ..Default::default()
        })?;
        Self::check("delete I/O completion queue", &c)?;
        self.queues.remove(&qid);
        Ok(())
    }

    /// PRP1/PRP2 for a buffer of `len` bytes at `gpa` (page-aligned or with
    /// an offset in the first page), building a PRP list in `slot`'s page.
    pub fn prps(&mut self, gpa: u64, len: u64, slot: usize) -> (u64, u64) {
        let first = PAGE - (gpa % PAGE);
        if len <= first {
            return (gpa, 0);
        }
        let rest = len - first;
        let second = gpa - (gpa % PAGE) + PAGE;
        if rest <= PAGE {
            return (gpa, second);
        }
        while self.prp_lists.len() <= slot {
            let p = self.mem.alloc(PAGE * 2, PAGE);
            self.prp_lists.push(p);
        }
        let list = self.prp_lists[slot];
        let pages = rest.div_ceil(PAGE);
        assert!(pages <= 511, "the driver builds one-page PRP lists");
        let mut entries = Vec::with_capacity(usize::try_from(pages).unwrap_or(0) * 8);
        for i in 0..pages {
            entries.extend_from_slice(&(second + i * PAGE).to_le_bytes());
        }
        self.mem.write(list, &entries);
        (gpa, list)
    }

    /// A Read or Write command for `nlb` blocks at `slba` into/from `buf`.
    #[allow(clippy::too_many_arguments)]
    pub fn rw_sqe(
        &mut self,
        opcode: u8,
        nsid: u32,
        slba: u64,
        nlb: u32,
        buf: u64,
        len: u64,
        slot: usize,
    ) -> Sqe {
        let (prp1, prp2) = self.prps(buf, len, slot);
        Sqe {
            opcode,
            nsid: nsid.into(),
            prp1: prp1.into(),
            prp2: prp2.into(),
            cdw10: ((slba & 0xffff_ffff) as u32).into(),
            cdw11: ((slba >> 32) as u32).into(),
            cdw12: (nlb - 1).into(),
            ..Default::default()
        }
    }

    /// Synchronous write of `data` at `slba` (block size `bs`) through queue `qid`.
    pub fn write_blocks(
        &mut self,
        qid: u16,
        nsid: u32,
        slba: u64,
        bs: u32,
        data: &[u8],
    ) -> Result<Cqe, DriverError> {
        let len = data.len() as u64;
        let buf = self.mem.alloc(len, PAGE);
        self.mem.write(buf, data);
        let nlb = u32::try_from(len / u64::from(bs)).unwrap_or(0);
        let sqe = self.rw_sqe(IoOpcode::WRITE, nsid, slba, nlb, buf, len, 0);
        self.command(qid, sqe)
    }

    /// Synchronous read of `len` bytes at `slba`.
    pub fn read_blocks(
        &mut self,
        qid: u16,
        nsid: u32,
        slba: u64,
        bs: u32,
        len: u64,
    ) -> Result<(Cqe, Vec<u8>), DriverError> {
        let buf = self.mem.alloc(len, PAGE);
        self.mem.fill(buf, len, 0xa5);
        let nlb = u32::try_from(len / u64::from(bs)).unwrap_or(0);
        let sqe = self.rw_sqe(IoOpcode::READ, nsid, slba, nlb, buf, len, 0);
        let c = self.command(qid, sqe)?;
        let out = self.mem.read_vec(buf, usize::try_from(len).unwrap_or(0));
        Ok((c, out))
    }

    /// The eventfd of MSI-X vector `vector` (to block on it).
    pub fn irq_fd(&self, vector: u16) -> Option<std::os::fd::RawFd> {
        self.irqs.get(usize::from(vector)).map(|f| f.as_raw_fd())
    }

    /// Interrupts delivered on `vector` since the last call.
    pub fn take_irqs(&self, vector: u16) -> u64 {
        let Some(f) = self.irqs.get(usize::from(vector)) else {
            return 0;
        };
        let mut b = [0u8; 8];
        match (&*f).read(&mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    /// A typical bring-up: enable, n queue pairs of `entries` on vectors 1..=n.
    pub fn bring_up(
        path: &Path,
        mem_size: u64,
        n: u16,
        entries: u32,
    ) -> Result<Driver, DriverError> {
        let mut d = Driver::connect(path, mem_size)?;
        d.enable(32)?;
        d.set_queue_count(n)?;
        for q in 1..=n {
            d.create_queue_pair(q, entries, q)?;
        }
        Ok(d)
    }
}

pub fn create_cq(qid: u16, gpa: u64, entries: u32, vector: u16) -> Sqe {
    Sqe {
        opcode: AdminOpcode::CREATE_CQ,
        prp1: gpa.into(),
        cdw10: (u32::from(qid) | ((entries - 1) << 16)).into(),
        cdw11: (0x3 | (u32::from(vector) << 16)).into(),
        ..Default::default()
    }
}

pub fn create_sq(qid: u16, gpa: u64, entries: u32, cqid: u16) -> Sqe {
    Sqe {
        opcode: AdminOpcode::CREATE_SQ,
        prp1: gpa.into(),
        cdw10: (u32::from(qid) | ((entries - 1) << 16)).into(),
        cdw11: (0x1 | (u32::from(cqid) << 16)).into(),
        ..Default::default()
    }
}

// ---- Fast path, for benchmarks ------------------------------------------

/// Create I/O Completion Queue with interrupts enabled or not (`ien`);
/// [`create_cq`] always enables them.
pub fn create_cq_ien(qid: u16, gpa: u64, entries: u32, vector: u16, ien: bool) -> Sqe {
    let mut sqe = create_cq(qid, gpa, entries, vector);
    if !ien {
        sqe.cdw11 = (sqe.cdw11.get() & !0x2).into();
    }
    sqe
}

/// PRP1/PRP2 for a buffer of `len` bytes at `gpa`, writing a PRP list into
/// the page at `list` when the buffer spans more than two pages (the caller
/// allocated it; it is untouched otherwise). For buffers whose PRPs never
/// change: build them once, reuse them for every command.
pub fn write_prps(mem: &GuestMem, gpa: u64, len: u64, list: u64) -> (u64, u64) {
    let first = PAGE - (gpa % PAGE);
    if len <= first {
        return (gpa, 0);
    }
    let rest = len - first;
    let second = gpa - (gpa % PAGE) + PAGE;
    if rest <= PAGE {
        return (gpa, second);
    }
    let pages = rest.div_ceil(PAGE);
    assert!(pages <= PAGE / 8, "one-page PRP lists only");
    for i in 0..pages {
        mem.write(list + i * 8, &(second + i * PAGE).to_le_bytes());
    }
    (gpa, list)
}

/// Where a queue pair's host-side cursors stand (to hand a queue back and
/// forth between [`Driver`]'s slow path and a [`FastQueue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueCursor {
    pub sq_tail: u32,
    pub cq_head: u32,
    pub phase: bool,
}

/// Direct access to one I/O queue pair for benchmarks, in the spirit of
/// SPDK's `spdk_nvme_qpair`: the caller writes SQEs with CIDs of its
/// choosing (e.g. its slot indexes), rings the SQ doorbell once per batch,
/// and reaps every posted completion with one CQ doorbell write. No system
/// call and no allocation on this path: only stores and loads in the shared
/// guest RAM and doorbell page.
pub struct FastQueue<'a> {
    mem: &'a GuestMem,
    doorbells: NonNull<u32>,
    pub qid: u16,
    sq_gpa: u64,
    cq_gpa: u64,
    entries: u32,
    sq_tail: u32,
    /// The tail the controller last saw through the doorbell.
    rung_tail: u32,
    /// SQ head as the controller last reported it in a CQE.
    sq_head: u32,
    cq_head: u32,
    phase: bool,
}

impl<'a> FastQueue<'a> {
    /// A queue pair over `mem` whose doorbells live in the page at
    /// `doorbells` (NVMe layout, stride 4: SQ tail at `2 * qid`, CQ head at
    /// `2 * qid + 1`), starting from `cursor`.
    ///
    /// # Safety
    /// `doorbells` must point to a page mapped read-write for at least `'a`,
    /// and `qid` must be below 512 so both doorbells lie inside it.
    pub unsafe fn from_raw(
        mem: &'a GuestMem,
        doorbells: NonNull<u32>,
        qid: u16,
        sq_gpa: u64,
        cq_gpa: u64,
        entries: u32,
        cursor: QueueCursor,
    ) -> FastQueue<'a> {
        assert!(qid < 512, "doorbell outside the page");
        FastQueue {
            mem,
            doorbells,
            qid,
            sq_gpa,
            cq_gpa,
            entries,
            sq_tail: cursor.sq_tail,
            rung_tail: cursor.sq_tail,
            sq_head: cursor.sq_tail,
            cq_head: cursor.cq_head,
            phase: cursor.phase,
        }
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Commands that can be pushed before the SQ is full, as far as the
    /// completions reaped so far tell (the controller reports its SQ head in
    /// every CQE).
    pub fn sq_space(&self) -> u32 {
        let used = (self.sq_tail + self.entries - self.sq_head) % self.entries;
        self.entries - 1 - used
    }

    /// Write `sqe` (its CID included) at the SQ tail without ringing; false
    /// if the SQ is full.
    pub fn push(&mut self, sqe: &Sqe) -> bool {
        if self.sq_space() == 0 {
            return false;
        }
        let gpa = self.sq_gpa + u64::from(self.sq_tail) * 64;
        self.mem.write(gpa, zerocopy::IntoBytes::as_bytes(sqe));
        self.sq_tail += 1;
        if self.sq_tail == self.entries {
            self.sq_tail = 0;
        }
        true
    }

    /// Publish every pushed command with one SQ tail doorbell write (none if
    /// nothing was pushed since the last ring).
    pub fn ring(&mut self) {
        if self.sq_tail == self.rung_tail {
            return;
        }
        self.rung_tail = self.sq_tail;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.store_doorbell(usize::from(self.qid) * 2, self.sq_tail);
    }

    /// Hand every completion the controller has posted to `f`, up to `max`,
    /// then write the new CQ head once. Returns how many were reaped.
    pub fn reap(&mut self, max: usize, mut f: impl FnMut(&Cqe)) -> usize {
        let mut n = 0;
        while n < max {
            let gpa = self.cq_gpa + u64::from(self.cq_head) * 16;
            let dw3 = self.mem.read_u32_volatile(gpa + 12);
            if (dw3 >> 16) & 1 != u32::from(self.phase) {
                break;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let mut bytes = [0u8; 16];
            self.mem.read(gpa, &mut bytes);
            let cqe = Cqe::read_from_bytes(&bytes).unwrap_or_default();
            self.sq_head = u32::from(cqe.sq_head.get()) % self.entries;
            self.cq_head += 1;
            if self.cq_head == self.entries {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            n += 1;
            f(&cqe);
        }
        if n > 0 {
            self.store_doorbell(usize::from(self.qid) * 2 + 1, self.cq_head);
        }
        n
    }

    /// The host-side cursors, to give the queue back with
    /// [`Driver::set_cursor`].
    pub fn cursor(&self) -> QueueCursor {
        QueueCursor {
            sq_tail: self.sq_tail,
            cq_head: self.cq_head,
            phase: self.phase,
        }
    }

    fn store_doorbell(&self, index: usize, value: u32) {
        // SAFETY: `from_raw`'s contract: the page is mapped for 'a and
        // index <= 2 * 511 + 1 lies inside it.
        unsafe { self.doorbells.as_ptr().add(index).write_volatile(value) };
    }
}

impl Driver {
    /// Create I/O CQ then SQ `qid` like [`Driver::create_queue_pair`], with
    /// interrupts on the CQ enabled or not (`ien`); benchmarks that poll
    /// turn them off, as SPDK's perf does.
    pub fn create_queue_pair_ien(
        &mut self,
        qid: u16,
        entries: u32,
        vector: u16,
        ien: bool,
    ) -> Result<(), DriverError> {
        let cq = self.mem.alloc(u64::from(entries) * 16, PAGE);
        let sq = self.mem.alloc(u64::from(entries) * 64, PAGE);
        let c = self.admin(create_cq_ien(qid, cq, entries, vector, ien))?;
        Self::check("create I/O completion queue", &c)?;
        let c = self.admin(create_sq(qid, sq, entries, qid))?;
        Self::check("create I/O submission queue", &c)?;
        self.queues
            .insert(qid, QueuePair::new(qid, sq, cq, entries, vector));
        Ok(())
    }

    /// Fast-path access to queue `qid` (see [`FastQueue`]), starting where
    /// the slow path left it. The driver's own cursors for `qid` go stale
    /// while it is in use: hand them back with [`Driver::set_cursor`].
    pub fn fast_queue(&self, qid: u16) -> Option<FastQueue<'_>> {
        let q = self.queues.get(&qid)?;
        let cursor = QueueCursor {
            sq_tail: q.sq_tail,
            cq_head: q.cq_head,
            phase: q.phase,
        };
        // SAFETY: the doorbell page is mapped for as long as the driver
        // lives, which outlives the borrow; qid < 512 is asserted inside.
        Some(unsafe {
            FastQueue::from_raw(
                &self.mem,
                self.doorbells,
                qid,
                q.sq_gpa,
                q.cq_gpa,
                q.entries,
                cursor,
            )
        })
    }

    /// Take back the cursors of a queue after fast-path use.
    pub fn set_cursor(&mut self, qid: u16, c: QueueCursor) {
        if let Some(q) = self.queues.get_mut(&qid) {
            q.sq_tail = c.sq_tail;
            q.cq_head = c.cq_head;
            q.phase = c.phase;
        }
    }
}
