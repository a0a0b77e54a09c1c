//! A controller whose state and descriptors are kept for the host-driver
//! that replaces this one (`leapio-hostd --keep`): what it puts in the
//! keeper, when it writes its image, and how a successor rebuilds it.
//!
//! Keeper entries of controller NAME, all under `ctrl/NAME/`: `doorbells`,
//! `qstate`, `state` (the image's memfd), `listener` (the vfio-user
//! socket), `conn` (the client's connection, while one is connected),
//! `mem/GPA.N` (a guest-memory region's file), `irq/V.N` (vector V's
//! eventfd). N numbers the descriptors put, so that a region or vector
//! given a new descriptor gets a new entry.

use crate::controller::{AdminQueue, NvmeController};
use crate::image::{
    start_time, AdminImage, CtrlImage, PendingCompletion, RegionImage, RuntimeImage, StateFile,
    IMAGE_VERSION,
};
use crate::keep::{Held, Keeper};
use crate::port::PortEvent;
use leapio_ats::ring::{CqRing, SqRing};
use leapio_ats::Prot;
use leapio_link::doorbells::Doorbells;
use leapio_link::qstate::QueueState;
use leapio_nvme::Status;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use zerocopy::{FromBytes, IntoBytes};

/// What a kept controller holds besides its device state.
pub(crate) struct Kept {
    keeper: Arc<Keeper>,
    state: StateFile,
    prefix: String,
    sock: PathBuf,
    /// Keeper entries of the guest-memory regions, by first address.
    regions: BTreeMap<u64, String>,
    /// Keeper entries of the vectors' eventfds.
    irqs: BTreeMap<u16, String>,
    next: u64,
    /// Something changed that the image does not show yet.
    pub(crate) dirty: bool,
}

impl Kept {
    fn put(&mut self, what: &str, fd: BorrowedFd<'_>) -> Option<String> {
        self.next += 1;
        let name = format!("{}{what}.{}", self.prefix, self.next);
        match self.keeper.put(&name, &[fd]) {
            Ok(()) => Some(name),
            Err(e) => {
                tracing::error!("keeping {name}: {e}");
                None
            }
        }
    }

    /// The entry of `key` in the table `table` picks: the old one let go
    /// of, `fd` (if any) kept under a new name `what.N`.
    fn replace<K: Ord + Copy>(
        &mut self,
        table: fn(&mut Kept) -> &mut BTreeMap<K, String>,
        key: K,
        what: &str,
        fd: Option<BorrowedFd<'_>>,
    ) {
        if let Some(old) = table(self).remove(&key) {
            self.remove(&old);
        }
        if let Some(name) = fd.and_then(|fd| self.put(what, fd)) {
            table(self).insert(key, name);
        }
        self.dirty = true;
    }

    fn remove(&self, name: &str) {
        if let Err(e) = self.keeper.remove(name) {
            tracing::error!("letting go of {name}: {e}");
        }
    }
}

impl AdminQueue {
    pub(crate) fn image(&self) -> AdminImage {
        AdminImage {
            sq_gpa: self.sq.gpa,
            sq_size: self.sq.size,
            sq_head: self.sq.head,
            cq_gpa: self.cq.gpa,
            cq_size: self.cq.size,
            cq_tail: self.cq.tail,
            cq_head: self.cq.head,
            cq_phase: self.cq.phase,
            bad_sq_doorbell: self.bad_sq_doorbell,
            bad_cq_doorbell: self.bad_cq_doorbell,
        }
    }
}

/// The controller's entry prefix in the keeper.
pub fn prefix(name: &str) -> String {
    format!("ctrl/{name}/")
}

impl NvmeController {
    /// Keep this controller's state and descriptors in `keeper` from now
    /// on; `sock` is its vfio-user socket (whose listener the caller keeps
    /// as `listener`).
    pub fn keep(&mut self, keeper: Arc<Keeper>, sock: &Path) -> std::io::Result<()> {
        let state = StateFile::create()?;
        let prefix = prefix(&self.shared.name);
        for (what, fd) in [
            ("doorbells", self.shared.doorbells.fd()),
            ("qstate", self.shared.qstate.fd()),
            ("state", state.file().as_fd()),
        ] {
            keeper
                .put(&format!("{prefix}{what}"), &[fd])
                .map_err(std::io::Error::other)?;
        }
        self.kept = Some(Kept {
            keeper,
            state,
            prefix,
            sock: sock.to_owned(),
            regions: BTreeMap::new(),
            irqs: BTreeMap::new(),
            next: 0,
            dirty: true,
        });
        self.persist();
        Ok(())
    }

    /// Write the image if something changed.
    pub(crate) fn persist(&mut self) {
        if self.kept.as_ref().is_some_and(|k| k.dirty) {
            let adm = self.admin.as_ref().map(AdminQueue::image);
            self.write_image(adm, None);
        }
    }

    /// Note that the image must be written.
    pub(crate) fn changed(&mut self) {
        if let Some(k) = &mut self.kept {
            k.dirty = true;
        }
    }

    /// Write the image with the admin queue `adm` (taken out of the
    /// controller while it is polled) and a completion about to be posted.
    pub(crate) fn write_image(
        &mut self,
        adm: Option<AdminImage>,
        pending: Option<PendingCompletion>,
    ) {
        if self.kept.is_none() {
            return;
        }
        let image = self.image(adm, pending);
        if let Some(k) = &mut self.kept {
            match k.state.write(&image) {
                Ok(()) => k.dirty = false,
                Err(e) => {
                    tracing::error!(ctrl = %self.shared.name, "writing the controller state: {e}")
                }
            }
        }
    }

    fn image(&self, adm: Option<AdminImage>, pending: Option<PendingCompletion>) -> CtrlImage {
        let kept = self.kept.as_ref();
        let snap = self.shared.domain.snapshot();
        let regions = snap
            .regions()
            .map(|r| RegionImage {
                gpa: r.gpa,
                size: r.size,
                file_offset: r.file_offset,
                read: r.prot.read,
                write: r.prot.write,
                fd: kept.and_then(|k| k.regions.get(&r.gpa).cloned()),
            })
            .collect();
        let runtime = self
            .port
            .runtime()
            .or(self.port.fencing())
            .and_then(|l| l.peer.pid())
            .and_then(|pid| {
                Some(RuntimeImage {
                    pid,
                    start_time: start_time(pid)?,
                })
            });
        let (count, entries) = self.shared.error_log();
        CtrlImage {
            version: IMAGE_VERSION,
            name: self.shared.name.clone(),
            sock: kept.map(|k| k.sock.clone()).unwrap_or_default(),
            config: self.cfg.clone(),
            pci: self.pci.contents().to_vec(),
            msix_table: self.msix_table.clone(),
            regs: self.regs.saved(),
            admin: adm,
            pending,
            cqs: self.cqs.values().copied().collect(),
            sqs: self.sqs.values().copied().collect(),
            features: self.features.clone(),
            admin_core: self.admin_core.clone(),
            shadow: self.shadow,
            ns_decls: self.ns_decls.clone(),
            page_size: self.shared.page_size(),
            fatal: self.shared.fatal.load(Ordering::Acquire),
            events: self.shared.events(),
            changed_ns: self.shared.changed_namespaces(),
            errors: (
                count,
                entries.iter().map(|e| e.as_bytes().to_vec()).collect(),
            ),
            retired: self.shared.retired(),
            regions,
            irqs: kept
                .map(|k| k.irqs.iter().map(|(v, n)| (*v, n.clone())).collect())
                .unwrap_or_default(),
            runtime,
            connected: self.connected,
            negotiated: self.negotiated,
        }
    }

    /// A guest-memory region was mapped: keep its file.
    pub(crate) fn kept_region(&mut self, gpa: u64, fd: Option<BorrowedFd<'_>>) {
        if let Some(k) = &mut self.kept {
            k.replace(|k| &mut k.regions, gpa, &format!("mem/{gpa:x}"), fd);
        }
    }

    /// Regions were unmapped: let go of the files of those that are gone.
    pub(crate) fn kept_regions_gone(&mut self) {
        let Some(k) = &mut self.kept else {
            return;
        };
        let snap = self.shared.domain.snapshot();
        let live: Vec<u64> = snap.regions().map(|r| r.gpa).collect();
        let gone: Vec<u64> = k
            .regions
            .keys()
            .filter(|g| !live.contains(g))
            .copied()
            .collect();
        for g in gone {
            if let Some(name) = k.regions.remove(&g) {
                k.remove(&name);
            }
        }
        k.dirty = true;
    }

    /// Vector `v` has this eventfd now (or none).
    pub(crate) fn kept_irq(&mut self, v: u16, fd: Option<BorrowedFd<'_>>) {
        if let Some(k) = &mut self.kept {
            k.replace(|k| &mut k.irqs, v, &format!("irq/{v}"), fd);
        }
    }

    /// A vfio-user client connected on `stream`.
    pub fn client_connected(&mut self, stream: &UnixStream) {
        self.connected = true;
        self.shared.client.store(true, Ordering::Relaxed);
        self.negotiated = false;
        if let Some(k) = &mut self.kept {
            let name = format!("{}conn", k.prefix);
            if let Err(e) = k.keeper.put(&name, &[stream.as_fd()]) {
                tracing::error!(ctrl = %self.shared.name, "keeping the client's connection: {e}");
            }
            k.dirty = true;
        }
        self.persist();
    }

    /// The client is gone: its connection is not kept any more.
    pub(crate) fn kept_client_gone(&mut self) {
        self.connected = false;
        self.shared.client.store(false, Ordering::Relaxed);
        self.negotiated = false;
        if let Some(k) = &mut self.kept {
            k.remove(&format!("{}conn", k.prefix));
            k.dirty = true;
        }
    }

    /// The controller is removed for good: the keeper lets go of it.
    pub(crate) fn forget_kept(&mut self) {
        if let Some(k) = self.kept.take() {
            k.remove(&k.prefix);
        }
    }

    /// Rebuild controller `name` from what `held` has of it (see the
    /// module documentation); its runtime's messages arrive on `events`.
    /// Returns it and the client's connection, if one was kept.
    pub fn restore(
        name: &str,
        keeper: Arc<Keeper>,
        held: &mut Held,
        events: Receiver<PortEvent>,
        timeouts: crate::port::Timeouts,
    ) -> Result<(NvmeController, Option<UnixStream>, PathBuf), String> {
        let prefix = prefix(name);
        let mut one = |what: &str| {
            held.take_one(&format!("{prefix}{what}"))
                .ok_or_else(|| format!("the keeper has no {what}"))
        };
        let (state, image) = StateFile::open(std::fs::File::from(one("state")?))?;
        if image.name != name {
            return Err(format!("its state is controller {}'s", image.name));
        }
        crate::controller::check_config(&image.config).map_err(|e| e.to_string())?;
        let doorbells =
            Doorbells::open(one("doorbells")?).map_err(|e| format!("doorbells: {e}"))?;
        let qstate = QueueState::open(one("qstate")?).map_err(|e| format!("queue state: {e}"))?;
        if qstate.queues() != u32::from(image.config.max_io_queues)
            || qstate.slots() != image.config.max_queue_entries
        {
            return Err("its queue-state area does not fit its configuration".into());
        }
        let conn = held
            .take_one(&format!("{prefix}conn"))
            .map(UnixStream::from)
            .filter(|_| image.connected);
        let mut c = NvmeController::build(
            name,
            image.config.clone(),
            doorbells,
            qstate,
            events,
            timeouts,
        );
        // Guest memory and interrupts.
        for r in &image.regions {
            let fd: Option<OwnedFd> = r.fd.as_ref().and_then(|n| held.take_one(n));
            if r.fd.is_some() && fd.is_none() {
                return Err(format!(
                    "the keeper has no file for the region at {:#x}",
                    r.gpa
                ));
            }
            c.shared
                .domain
                .map(
                    r.gpa,
                    r.size,
                    fd,
                    r.file_offset,
                    Prot {
                        read: r.read,
                        write: r.write,
                    },
                )
                .map_err(|e| format!("guest memory at {:#x}: {e}", r.gpa))?;
        }
        let mut irqs = BTreeMap::new();
        for (v, n) in &image.irqs {
            if let Some(fd) = held.take_one(n) {
                c.shared.irqs.set_eventfd(*v, Some(std::fs::File::from(fd)));
                irqs.insert(*v, n.clone());
            }
        }
        if !c.pci.restore(&image.pci) || image.msix_table.len() != c.msix_table.len() {
            return Err("its config space or MSI-X table does not fit".into());
        }
        c.msix_table.clone_from(&image.msix_table);
        c.regs.restore(&image.regs);
        c.cqs = image.cqs.iter().map(|q| (q.qid, *q)).collect();
        c.sqs = image.sqs.iter().map(|q| (q.qid, *q)).collect();
        c.features = image.features.clone();
        c.admin_core = image.admin_core.clone();
        c.shadow = image.shadow;
        c.shared.page_size.store(image.page_size, Ordering::Relaxed);
        c.shared.fatal.store(image.fatal, Ordering::Release);
        c.shared.restore_reports(
            &image.events,
            &image.changed_ns,
            image.errors.0,
            image
                .errors
                .1
                .iter()
                .filter_map(|b| leapio_nvme::log::ErrorLogEntry::read_from_bytes(b).ok())
                .collect(),
            image.retired,
        );
        if let Some(decls) = image.ns_decls.clone() {
            c.present_namespaces(decls);
        }
        c.admin = image.admin.map(|a| AdminQueue {
            sq: SqRing {
                head: a.sq_head,
                ..SqRing::new(0, 0, a.sq_gpa, a.sq_size)
            },
            cq: CqRing {
                tail: a.cq_tail,
                head: a.cq_head,
                phase: a.cq_phase,
                ..CqRing::new(0, a.cq_gpa, a.cq_size, 0, true)
            },
            bad_sq_doorbell: a.bad_sq_doorbell,
            bad_cq_doorbell: a.bad_cq_doorbell,
        });
        if let (Some(p), Some(adm)) = (image.pending, c.admin.as_mut()) {
            // Posted or not before the previous host-driver died: posting it
            // again writes the same entry.
            adm.cq.tail = p.cq_tail;
            adm.cq.phase = p.cq_phase;
            let snap = c.shared.domain.snapshot();
            if adm
                .cq
                .post(
                    &snap,
                    0,
                    p.sq_head,
                    p.cid,
                    Status::from_field(p.status),
                    p.dw0,
                )
                .is_ok()
            {
                c.shared.irqs.trigger(0);
            }
        }
        if let Some(rt) = image.runtime {
            c.port.restored_runtime(rt);
        }
        c.connected = conn.is_some();
        c.shared.client.store(c.connected, Ordering::Relaxed);
        c.negotiated = image.negotiated && conn.is_some();
        c.kept = Some(Kept {
            keeper,
            state,
            prefix,
            sock: image.sock.clone(),
            regions: image
                .regions
                .iter()
                .filter_map(|r| Some((r.gpa, r.fd.clone()?)))
                .collect(),
            irqs,
            next: entry_number(&image),
            dirty: true,
        });
        c.persist();
        Ok((c, conn, image.sock))
    }
}

/// The highest N of the image's `.N` entries (new ones are numbered after).
fn entry_number(image: &CtrlImage) -> u64 {
    image
        .regions
        .iter()
        .filter_map(|r| r.fd.as_deref())
        .chain(image.irqs.iter().map(|(_, n)| n.as_str()))
        .filter_map(|n| n.rsplit('.').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}
