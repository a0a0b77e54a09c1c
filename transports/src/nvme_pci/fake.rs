//! An emulated NVMe controller for the driver's tests: registers in
//! memory, watched by a thread that fetches commands, moves data by
//! following PRPs through the test's IOMMU table (IOVA to address) and
//! posts completions. It can be told to misbehave: swallow commands, fail
//! fatally, stop answering, report a media error.

#![allow(clippy::cast_possible_truncation)] // register fields, narrowed on purpose

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use leapio_backend::dma::{DmaRegistry, Iommu};
use leapio_nvme::identify::{IdentifyController, IdentifyNamespace, ONCS_DSM, ONCS_WRITE_ZEROES};
use leapio_nvme::{AdminOpcode, Cqe, IoOpcode, Sqe, Status};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::device::Registers;

/// IOVA to address, as the test's IOMMU maps it.
#[derive(Default)]
pub(crate) struct Table {
    maps: Mutex<BTreeMap<u64, (usize, usize)>>,
}

impl Iommu for Table {
    fn map(&self, iova: u64, va: usize, len: usize, _w: bool) -> std::io::Result<()> {
        self.maps.lock().unwrap().insert(iova, (va, len));
        Ok(())
    }
    fn unmap(&self, iova: u64, _len: usize) -> std::io::Result<()> {
        self.maps.lock().unwrap().remove(&iova);
        Ok(())
    }
    fn accepts(&self) -> Vec<RangeInclusive<u64>> {
        vec![0..=(1 << 48) - 1]
    }
    fn name(&self) -> String {
        "the test IOMMU".into()
    }
}

impl Table {
    /// The address of `[iova, iova + len)`, which must be mapped.
    fn addr(&self, iova: u64, len: usize) -> Option<*mut u8> {
        let m = self.maps.lock().unwrap();
        let (&base, &(va, l)) = m.range(..=iova).next_back()?;
        let off = usize::try_from(iova - base).ok()?;
        (off + len <= l).then(|| (va + off) as *mut u8)
    }
}

/// A registry with the test's IOMMU attached (leaked: registries live as
/// long as the process).
pub(crate) fn registry() -> (&'static DmaRegistry, Arc<Table>) {
    let reg: &'static DmaRegistry = Box::leak(Box::new(DmaRegistry::new()));
    let table = Arc::new(Table::default());
    reg.attach(table.clone()).unwrap();
    (reg, table)
}

/// Registers the driver and the emulation share.
pub(crate) struct Regs {
    words: Vec<AtomicU32>,
    /// Reads all ones, as a device that is gone.
    pub(crate) gone: AtomicBool,
}

impl Registers for Regs {
    fn read32(&self, off: usize) -> u32 {
        if self.gone.load(Ordering::SeqCst) {
            return u32::MAX;
        }
        self.words
            .get(off / 4)
            .map_or(u32::MAX, |w| w.load(Ordering::SeqCst))
    }
    fn write32(&self, off: usize, v: u32) {
        if let Some(w) = self.words.get(off / 4) {
            w.store(v, Ordering::SeqCst);
        }
    }
}

impl Regs {
    fn get(&self, off: usize) -> u32 {
        self.words[off / 4].load(Ordering::SeqCst)
    }
    fn set(&self, off: usize, v: u32) {
        self.words[off / 4].store(v, Ordering::SeqCst);
    }
}

/// How the emulated controller misbehaves.
#[derive(Default)]
pub(crate) struct Faults {
    /// I/O commands to fetch and never complete (Abort completes them).
    pub(crate) swallow: AtomicU32,
    /// Set CSTS.CFS at the next I/O command (cleared by a reset).
    pub(crate) fatal: AtomicBool,
    /// Stop answering anything, and never become ready again.
    pub(crate) hang: AtomicBool,
    /// Reads of this LBA fail with an unrecovered read error (0: none).
    pub(crate) bad_lba: AtomicU32,
}

struct Queue {
    iova: u64,
    entries: u16,
    head: u16,
    tail: u16,
    phase: bool,
    cqid: u16,
}

struct State {
    sqs: HashMap<u16, Queue>,
    cqs: HashMap<u16, Queue>,
    enabled: bool,
    disk: Vec<u8>,
    held: Vec<(u16, u16)>,
}

/// The emulated controller: see the module documentation.
pub(crate) struct FakeSsd {
    pub(crate) regs: Arc<Regs>,
    pub(crate) faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
    /// Resets the driver made (CC.EN from 1 to 0).
    pub(crate) resets: Arc<AtomicU32>,
}

pub(crate) const BLOCK: usize = 512;
/// MDTS 5: 128 KiB per command.
const MDTS: u8 = 5;

impl FakeSsd {
    pub(crate) fn new(table: Arc<Table>, blocks: usize) -> FakeSsd {
        let regs = Arc::new(Regs {
            words: (0..0x2000 / 4).map(|_| AtomicU32::new(0)).collect(),
            gone: AtomicBool::new(false),
        });
        // CAP: MQES 63, CQR, TO 2 (1 s), DSTRD 0, CSS NVM.
        let cap: u64 = 63 | (1 << 16) | (2 << 24) | (1 << 37);
        regs.set(0, (cap & 0xffff_ffff) as u32);
        regs.set(4, (cap >> 32) as u32);
        let state = Arc::new(Mutex::new(State {
            sqs: HashMap::new(),
            cqs: HashMap::new(),
            enabled: false,
            disk: vec![0; blocks * BLOCK],
            held: Vec::new(),
        }));
        let faults = Arc::new(Faults::default());
        let stop = Arc::new(AtomicBool::new(false));
        let resets = Arc::new(AtomicU32::new(0));
        let thread = {
            let (regs, state, faults, stop, resets) = (
                regs.clone(),
                state.clone(),
                faults.clone(),
                stop.clone(),
                resets.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    step(&regs, &state, &faults, &table, &resets);
                    std::thread::sleep(Duration::from_micros(20));
                }
            })
        };
        FakeSsd {
            regs,
            faults,
            stop,
            state,
            thread: Some(thread),
            resets,
        }
    }

    /// The disk's bytes at `[off, off + len)`.
    pub(crate) fn disk(&self, off: usize, len: usize) -> Vec<u8> {
        self.state.lock().unwrap().disk[off..off + len].to_vec()
    }

    /// I/O queues the controller has now.
    pub(crate) fn io_queues(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .sqs
            .keys()
            .filter(|&&q| q != 0)
            .count()
    }
}

impl Drop for FakeSsd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn step(regs: &Regs, state: &Mutex<State>, faults: &Faults, table: &Table, resets: &AtomicU32) {
    let mut st = state.lock().unwrap();
    if faults.hang.load(Ordering::SeqCst) {
        return;
    }
    let cc = regs.get(0x14);
    let csts = regs.get(0x1c);
    if cc & 1 == 1 && !st.enabled {
        let aqa = regs.get(0x24);
        let asq = u64::from(regs.get(0x28)) | (u64::from(regs.get(0x2c)) << 32);
        let acq = u64::from(regs.get(0x30)) | (u64::from(regs.get(0x34)) << 32);
        let q = |iova, n| Queue {
            iova,
            entries: n,
            head: 0,
            tail: 0,
            phase: true,
            cqid: 0,
        };
        st.sqs.insert(0, q(asq, (aqa & 0xfff) as u16 + 1));
        st.cqs.insert(0, q(acq, ((aqa >> 16) & 0xfff) as u16 + 1));
        st.enabled = true;
        regs.set(0x1c, 1);
    } else if cc & 1 == 0 && st.enabled {
        st.sqs.clear();
        st.cqs.clear();
        st.held.clear();
        st.enabled = false;
        // A reset forgets the queues' positions.
        for off in (0x1000..0x2000).step_by(4) {
            regs.set(off, 0);
        }
        resets.fetch_add(1, Ordering::SeqCst);
        regs.set(0x1c, 0);
        faults.fatal.store(false, Ordering::SeqCst);
    }
    if (cc >> 14) & 3 != 0 && (csts >> 2) & 3 != 2 {
        regs.set(0x1c, regs.get(0x1c) | (2 << 2));
    }
    if !st.enabled || csts & 2 != 0 {
        return;
    }
    let qids: Vec<u16> = st.sqs.keys().copied().collect();
    for qid in qids {
        let db = regs.get(0x1000 + 8 * usize::from(qid)) as u16;
        while let Some(sq) = st.sqs.get_mut(&qid) {
            if db >= sq.entries || sq.head == db {
                break;
            }
            let at = sq.iova + u64::from(sq.head) * 64;
            sq.head = (sq.head + 1) % sq.entries;
            let cqid = sq.cqid;
            let Some(p) = table.addr(at, 64) else { break };
            // SAFETY: the driver's SQ memory, mapped in the table.
            let sqe: Sqe = unsafe { std::ptr::read_volatile(p.cast::<Sqe>()) };
            let reply = if qid == 0 {
                Some(admin(&mut st, &sqe, table, regs))
            } else {
                io(&mut st, &sqe, table, faults, regs)
            };
            match reply {
                Some((status, dw0)) => post(&mut st, table, cqid, qid, sqe.cid.get(), status, dw0),
                None => st.held.push((qid, sqe.cid.get())),
            }
        }
    }
}

fn post(st: &mut State, table: &Table, cqid: u16, sqid: u16, cid: u16, status: Status, dw0: u32) {
    let Some(cq) = st.cqs.get_mut(&cqid) else {
        return;
    };
    let at = cq.iova + u64::from(cq.tail) * 16;
    let cqe = Cqe {
        dw0: dw0.into(),
        sq_id: sqid.into(),
        cid: cid.into(),
        status: ((status.field() << 1) | u16::from(cq.phase)).into(),
        ..Default::default()
    };
    if let Some(p) = table.addr(at, 16) {
        // SAFETY: the driver's CQ memory, mapped in the table.
        unsafe { std::ptr::write_volatile(p.cast::<Cqe>(), cqe) };
    }
    cq.tail += 1;
    if cq.tail == cq.entries {
        cq.tail = 0;
        cq.phase = !cq.phase;
    }
}

fn write_page(table: &Table, iova: u64, data: &[u8]) {
    if let Some(p) = table.addr(iova, data.len()) {
        // SAFETY: mapped in the table for that length.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    }
}

fn admin(st: &mut State, sqe: &Sqe, table: &Table, _regs: &Regs) -> (Status, u32) {
    let cdw10 = sqe.cdw10.get();
    let qid = (cdw10 & 0xffff) as u16;
    let entries = (cdw10 >> 16) as u16 + 1;
    match sqe.opcode {
        AdminOpcode::IDENTIFY => {
            let page = match cdw10 & 0xff {
                1 => {
                    let mut c = IdentifyController::new_zeroed();
                    c.mdts = MDTS;
                    c.nn = 1.into();
                    c.oncs = (ONCS_WRITE_ZEROES | ONCS_DSM).into();
                    c.vwc = 1;
                    c.mn[..11].copy_from_slice(b"LEAPIO FAKE");
                    c.as_bytes().to_vec()
                }
                0 => {
                    let mut n = IdentifyNamespace::new_zeroed();
                    n.nsze = ((st.disk.len() / BLOCK) as u64).into();
                    n.lbaf[0].lbads = 9;
                    n.as_bytes().to_vec()
                }
                _ => return (Status::INVALID_FIELD, 0),
            };
            write_page(table, sqe.prp1.get(), &page);
            (Status::SUCCESS, 0)
        }
        AdminOpcode::SET_FEATURES => (Status::SUCCESS, 7 | (7 << 16)),
        AdminOpcode::CREATE_CQ => {
            st.cqs.insert(
                qid,
                Queue {
                    iova: sqe.prp1.get(),
                    entries,
                    head: 0,
                    tail: 0,
                    phase: true,
                    cqid: qid,
                },
            );
            (Status::SUCCESS, 0)
        }
        AdminOpcode::CREATE_SQ => {
            let cqid = (sqe.cdw11.get() >> 16) as u16;
            if !st.cqs.contains_key(&cqid) {
                return (Status::COMPLETION_QUEUE_INVALID, 0);
            }
            st.sqs.insert(
                qid,
                Queue {
                    iova: sqe.prp1.get(),
                    entries,
                    head: 0,
                    tail: 0,
                    phase: true,
                    cqid,
                },
            );
            (Status::SUCCESS, 0)
        }
        AdminOpcode::DELETE_SQ => {
            st.sqs.remove(&qid);
            st.held.retain(|&(q, _)| q != qid);
            (Status::SUCCESS, 0)
        }
        AdminOpcode::DELETE_CQ => {
            st.cqs.remove(&qid);
            (Status::SUCCESS, 0)
        }
        AdminOpcode::ABORT => {
            let cid = (cdw10 >> 16) as u16;
            if let Some(i) = st.held.iter().position(|&h| h == (qid, cid)) {
                st.held.remove(i);
                let cqid = st.sqs.get(&qid).map_or(0, |q| q.cqid);
                post(st, table, cqid, qid, cid, Status::ABORT_REQUESTED, 0);
                (Status::SUCCESS, 0)
            } else {
                (Status::SUCCESS, 1)
            }
        }
        _ => (Status::INVALID_OPCODE, 0),
    }
}

/// The pages a command's PRPs name, for `len` bytes.
fn prp_pages(sqe: &Sqe, len: usize, table: &Table) -> Option<Vec<(u64, usize)>> {
    let p1 = sqe.prp1.get();
    let first = (4096 - (p1 % 4096) as usize).min(len);
    let mut v = vec![(p1, first)];
    let mut left = len - first;
    if left == 0 {
        return Some(v);
    }
    let p2 = sqe.prp2.get();
    if left <= 4096 {
        v.push((p2, left));
        return Some(v);
    }
    let pages = left.div_ceil(4096);
    let list = table.addr(p2, pages * 8)?;
    for i in 0..pages {
        // SAFETY: the list is mapped for `pages` entries (checked above).
        let e = unsafe { std::ptr::read_unaligned(list.cast::<u64>().add(i)) };
        let n = left.min(4096);
        v.push((e, n));
        left -= n;
    }
    Some(v)
}

fn io(st: &mut State, sqe: &Sqe, table: &Table, f: &Faults, regs: &Regs) -> Option<(Status, u32)> {
    if f.fatal.load(Ordering::SeqCst) {
        regs.set(0x1c, regs.get(0x1c) | 2);
        return None;
    }
    if f.swallow.load(Ordering::SeqCst) > 0 {
        f.swallow.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let slba = u64::from(sqe.cdw10.get()) | (u64::from(sqe.cdw11.get()) << 32);
    let nlb = (sqe.cdw12.get() & 0xffff) as usize + 1;
    let off = slba as usize * BLOCK;
    let len = nlb * BLOCK;
    let ok = (Status::SUCCESS, 0);
    match sqe.opcode {
        IoOpcode::FLUSH => Some(ok),
        IoOpcode::READ | IoOpcode::WRITE => {
            if off + len > st.disk.len() {
                return Some((Status::LBA_OUT_OF_RANGE, 0));
            }
            let bad = f.bad_lba.load(Ordering::SeqCst) as usize;
            if sqe.opcode == IoOpcode::READ
                && bad != 0
                && (slba as usize..slba as usize + nlb).contains(&bad)
            {
                return Some((Status::UNRECOVERED_READ_ERROR, 0));
            }
            let Some(pages) = prp_pages(sqe, len, table) else {
                return Some((Status::DATA_TRANSFER_ERROR, 0));
            };
            let mut at = off;
            for (iova, n) in pages {
                let Some(p) = table.addr(iova, n) else {
                    return Some((Status::DATA_TRANSFER_ERROR, 0));
                };
                // SAFETY: mapped in the table for `n` bytes.
                unsafe {
                    if sqe.opcode == IoOpcode::READ {
                        std::ptr::copy_nonoverlapping(st.disk[at..].as_ptr(), p, n);
                    } else {
                        std::ptr::copy_nonoverlapping(p, st.disk[at..].as_mut_ptr(), n);
                    }
                }
                at += n;
            }
            Some(ok)
        }
        IoOpcode::WRITE_ZEROES => {
            if off + len > st.disk.len() {
                return Some((Status::LBA_OUT_OF_RANGE, 0));
            }
            st.disk[off..off + len].fill(0);
            Some(ok)
        }
        IoOpcode::DATASET_MANAGEMENT => {
            let p = table.addr(sqe.prp1.get(), 16)?;
            let mut r = [0u8; 16];
            // SAFETY: mapped for 16 bytes.
            unsafe { std::ptr::copy_nonoverlapping(p, r.as_mut_ptr(), 16) };
            let range = leapio_nvme::cmd::DsmRange::read_from_bytes(&r).ok()?;
            let off = range.slba.get() as usize * BLOCK;
            let len = range.nlb.get() as usize * BLOCK;
            if off + len > st.disk.len() {
                return Some((Status::LBA_OUT_OF_RANGE, 0));
            }
            st.disk[off..off + len].fill(0);
            Some(ok)
        }
        _ => Some((Status::INVALID_OPCODE, 0)),
    }
}
