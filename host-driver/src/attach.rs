//! Admitting a runtime to a controller, and what runtimes report about it
//! later (namespaces added or removed, detaching, dying).
//!
//! A runtime declares the namespaces it serves. The first runtime's
//! declaration becomes the controller's namespaces; a later one (after a
//! restart or an upgrade) must declare the same ones with the same
//! geometry, or it is refused: the guest would see its disks change under
//! it. A namespace whose data did not survive its runtime (RAM) cannot be
//! taken over at all.

use crate::controller::NvmeController;
use crate::link::RuntimeLink;
use crate::port::PortEvent;
use leapio_controller::{namespace_ids, NamespaceInfo, ZonedInfo};
use leapio_link::{NsDecl, ToRuntime};
use leapio_nvme::cmd::AsyncEvent;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Most namespaces per controller.
pub const MAX_NAMESPACES: u32 = 1024;
/// Changed Namespace List log page.
const LOG_CHANGED_NS: u8 = 0x04;
/// Asynchronous Event Configuration bit for Namespace Attribute Notices.
const AEC_NS_ATTR: u32 = 1 << 8;

/// Check one declaration on its own.
fn check_decl(d: &NsDecl) -> Result<(), String> {
    if d.nsid == 0 || d.nsid > MAX_NAMESPACES {
        return Err(format!("NSID {} out of range 1..={MAX_NAMESPACES}", d.nsid));
    }
    if !d.block_size.is_power_of_two() || !(512..=65536).contains(&d.block_size) {
        return Err(format!(
            "namespace {}: block size {} is not a power of two in 512..=65536",
            d.nsid, d.block_size
        ));
    }
    if d.num_blocks == 0 || d.num_blocks.checked_mul(u64::from(d.block_size)).is_none() {
        return Err(format!(
            "namespace {}: {} blocks of {} bytes",
            d.nsid, d.num_blocks, d.block_size
        ));
    }
    if let Some(z) = &d.zoned {
        let ok = z.zone_blocks.is_power_of_two()
            && (1..=z.zone_blocks).contains(&z.capacity)
            && d.num_blocks % z.zone_blocks == 0
            && (1..=z.max_active).contains(&z.max_open);
        if !ok {
            return Err(format!("namespace {}: impossible zones {z:?}", d.nsid));
        }
    }
    Ok(())
}

/// The NSIDs that change if a controller with namespaces `old` (None: it
/// never had a runtime) takes `new`, or why it must not.
pub fn namespace_changes(old: Option<&[NsDecl]>, new: &[NsDecl]) -> Result<Vec<u32>, String> {
    namespace_changes_by(old, new, false)
}

/// [`namespace_changes`]; `same_process`: the runtime that declared `old`
/// declares `new` (it reconnected), so volatile namespaces kept their data.
fn namespace_changes_by(
    old: Option<&[NsDecl]>,
    new: &[NsDecl],
    same_process: bool,
) -> Result<Vec<u32>, String> {
    for d in new {
        check_decl(d)?;
    }
    if new.windows(2).any(|w| w[0].nsid >= w[1].nsid) {
        return Err("namespaces must be declared once each, in NSID order".into());
    }
    let Some(old) = old else {
        return Ok(new.iter().map(|d| d.nsid).collect());
    };
    let mut changed = Vec::new();
    for o in old {
        let Some(n) = new.iter().find(|n| n.nsid == o.nsid) else {
            return Err(format!(
                "namespace {} ({}) is not declared: the guest has it; remove it first",
                o.nsid, o.describe
            ));
        };
        if !o.persistent && !same_process {
            return Err(format!(
                "namespace {} ({}) is volatile: its data did not survive the previous runtime",
                o.nsid, o.describe
            ));
        }
        if n.zoned.map(|z| (z.zone_blocks, z.capacity))
            != o.zoned.map(|z| (z.zone_blocks, z.capacity))
        {
            return Err(format!(
                "namespace {} has zones {:?} for the guest, the runtime declares {:?} ({})",
                o.nsid, o.zoned, n.zoned, n.describe
            ));
        }
        if (n.block_size, n.num_blocks) != (o.block_size, o.num_blocks) {
            return Err(format!(
                "namespace {} is {} blocks of {} bytes for the guest, the runtime declares {} of {} ({})",
                o.nsid, o.num_blocks, o.block_size, n.num_blocks, n.block_size, n.describe
            ));
        }
        if (n.volatile_write_cache, n.write_zeroes, n.deallocate)
            != (o.volatile_write_cache, o.write_zeroes, o.deallocate)
            || n.zoned != o.zoned
        {
            changed.push(o.nsid);
        }
    }
    changed.extend(
        new.iter()
            .filter(|n| old.iter().all(|o| o.nsid != n.nsid))
            .map(|n| n.nsid),
    );
    changed.sort_unstable();
    Ok(changed)
}

impl NvmeController {
    /// Take what the link readers reported; admit a runtime that waited
    /// for its predecessor to be fenced.
    pub(crate) fn port_events(&mut self) {
        while let Some(ev) = self.port.next_event() {
            self.changed();
            match ev {
                PortEvent::Attach {
                    link,
                    namespaces,
                    handover,
                } => {
                    self.shared.attach_queued.fetch_sub(1, Ordering::AcqRel);
                    self.attach_request(link, namespaces, handover);
                }
                PortEvent::Detached { link } => self.port.runtime_gone(link, true),
                PortEvent::Lost { link } => {
                    if self
                        .waiting_attach
                        .as_ref()
                        .is_some_and(|(l, _)| l.id == link)
                    {
                        self.waiting_attach = None;
                    }
                    self.port.runtime_gone(link, false);
                }
                PortEvent::NsAdd { link, ns } => self.ns_change(link, Some(ns), None),
                PortEvent::NsRemove { link, nsid } => self.ns_change(link, None, Some(nsid)),
            }
        }
        if let Some((link, ns)) = self.waiting_attach.take() {
            if link.is_closed() {
                return;
            }
            if self.port.try_fence() {
                self.admit(link, ns, false);
            } else {
                self.waiting_attach = Some((link, ns));
            }
        }
    }

    /// Refuse a runtime's attach. Any runtime can ask, so the answer must
    /// not hold this thread (which serves the guest's admin queue) for a
    /// runtime that does not read: it is sent briefly or not at all.
    fn refuse(&self, link: &RuntimeLink, reason: String) {
        tracing::warn!(ctrl = %self.shared.name, runtime = %link.describe(), "attach refused: {reason}");
        let _ = link.send_brief(&ToRuntime::AttachRefused {
            ctrl: self.shared.name.clone(),
            reason,
        });
    }

    fn attach_request(&mut self, link: Arc<RuntimeLink>, namespaces: Vec<NsDecl>, handover: bool) {
        if self.port.runtime().is_some_and(|cur| cur.id == link.id) {
            self.refuse(&link, "this runtime already serves it".into());
            return;
        }
        if let Some(cur) = self.port.live_runtime() {
            if !handover {
                self.refuse(
                    &link,
                    format!(
                        "{} serves it (attach with handover to take over)",
                        cur.describe()
                    ),
                );
                return;
            }
            if let Err(why) = namespace_changes(self.ns_decls.as_deref(), &namespaces) {
                self.refuse(&link, why);
                return;
            }
            tracing::info!(ctrl = %self.shared.name, old = %cur.describe(), new = %link.describe(), "handover: asking the serving runtime to let go");
            self.port
                .detach(&format!("handover to {}", link.describe()));
        }
        let back = self.port.came_back(&link);
        if let Err(why) = namespace_changes_by(self.ns_decls.as_deref(), &namespaces, back) {
            self.refuse(&link, why);
            return;
        }
        if back {
            return self.admit(link, namespaces, true);
        }
        if !self.port.try_fence() {
            let prev = self
                .port
                .fencing()
                .map(|l| l.describe())
                .unwrap_or_default();
            let reason = format!("waiting for the previous runtime, {prev}, to exit");
            tracing::info!(ctrl = %self.shared.name, runtime = %link.describe(), "{reason}");
            let _ = link.send_brief(&ToRuntime::AttachWaiting {
                ctrl: self.shared.name.clone(),
                reason,
            });
            if let Some((older, _)) = self.waiting_attach.replace((link, namespaces)) {
                self.refuse(&older, "a newer runtime asked to attach".into());
            }
            return;
        }
        self.admit(link, namespaces, false);
    }

    /// Hand the controller to `link`: its memory, interrupts, state and
    /// queues (resumed from the queue-state area).
    /// `same_process`: the runtime reconnected (see [`crate::port::RuntimePort::came_back`]).
    fn admit(&mut self, link: Arc<RuntimeLink>, namespaces: Vec<NsDecl>, same_process: bool) {
        let changed =
            match namespace_changes_by(self.ns_decls.as_deref(), &namespaces, same_process) {
                Ok(c) => c,
                Err(why) => return self.refuse(&link, why),
            };
        let epoch = self.shared.qstate.next_epoch();
        let windows = link.windows();
        let attached = ToRuntime::Attached {
            ctrl: self.shared.name.clone(),
            config: self.link_config(),
            epoch,
            windows,
        };
        // A runtime on an SoC finds these in the link function's BARs.
        let fds = if windows {
            Vec::new()
        } else {
            vec![self.shared.doorbells.fd(), self.shared.qstate.fd()]
        };
        if let Err(e) = link.send(&attached, &fds) {
            tracing::warn!(ctrl = %self.shared.name, runtime = %link.describe(), "attach failed: {e}");
            return;
        }
        self.adopt_namespaces(namespaces, &changed);
        self.port.set_attached(link.clone());
        let enabled = self.regs.ready() && self.admin.is_some();
        let wc = self.write_cache();
        self.port.state(enabled, self.shadow, wc);
        let snap = self.shared.domain.snapshot();
        for (info, fd) in snap.region_files() {
            self.port.map(&info, fd);
        }
        drop(snap);
        let vectors = self.shared.irqs.count();
        self.port.irqs(0, vectors);
        let (ncq, nsq) = (self.cqs.len(), self.sqs.len());
        let cqs: Vec<_> = self.cqs.values().copied().collect();
        let sqs: Vec<_> = self.sqs.values().copied().collect();
        let mut failed = None;
        for cq in cqs {
            if let Err(s) = self.port.create_cq(cq, true) {
                failed = Some(format!("CQ {}: {s}", cq.qid));
            }
        }
        for sq in sqs {
            if let Err(s) = self.port.create_sq(sq, true) {
                failed = Some(format!("SQ {}: {s}", sq.qid));
            }
        }
        if let Some(why) = failed {
            tracing::error!(ctrl = %self.shared.name, runtime = %link.describe(), "resuming queues failed ({why}): controller fatal");
            self.shared
                .fatal
                .store(true, std::sync::atomic::Ordering::Release);
        }
        if self.port.runtime().is_some() {
            tracing::info!(ctrl = %self.shared.name, runtime = %link.describe(), epoch, completion_queues = ncq, submission_queues = nsq, "runtime attached");
        }
    }

    fn link_config(&self) -> leapio_link::CtrlConfig {
        leapio_link::CtrlConfig {
            serial: self.cfg.serial.clone(),
            max_io_queues: self.cfg.max_io_queues,
            max_queue_entries: self.cfg.max_queue_entries,
            mdts_bytes: self.shared.mdts_bytes,
            vectors: self.shared.irqs.count(),
        }
    }

    /// Present `decls` to the guest; tell it (Namespace Attribute Changed)
    /// about the NSIDs in `changed` if it is running and asked to know.
    fn adopt_namespaces(&mut self, decls: Vec<NsDecl>, changed: &[u32]) {
        for d in &decls {
            if changed.contains(&d.nsid) {
                tracing::info!(ctrl = %self.shared.name, nsid = d.nsid, blocks = d.num_blocks, block_size = d.block_size, "namespace {}: {}", d.nsid, d.describe);
            }
        }
        self.present_namespaces_changed(decls, changed);
        if changed.is_empty() || self.admin.is_none() {
            return;
        }
        if self.admin_core.features().async_event_config() & AEC_NS_ATTR != 0 {
            self.shared
                .post_event(AsyncEvent::dw0(AsyncEvent::TYPE_NOTICE, 0, LOG_CHANGED_NS));
        }
    }

    /// Present `decls` as the namespaces the guest had (a host-driver that
    /// took over from another).
    pub(crate) fn present_namespaces(&mut self, decls: Vec<NsDecl>) {
        self.present_namespaces_changed(decls, &[]);
    }

    fn present_namespaces_changed(&mut self, decls: Vec<NsDecl>, changed: &[u32]) {
        let infos = decls
            .iter()
            .map(|d| {
                let (nguid, eui64, uuid) = namespace_ids(&self.cfg.serial, d.nsid);
                NamespaceInfo {
                    nsid: d.nsid,
                    block_size: d.block_size,
                    num_blocks: d.num_blocks,
                    volatile_write_cache: d.volatile_write_cache,
                    write_zeroes: d.write_zeroes,
                    deallocate: d.deallocate,
                    zoned: d.zoned.map(|z| ZonedInfo {
                        zone_blocks: z.zone_blocks,
                        capacity: z.capacity,
                        max_open: z.max_open,
                        max_active: z.max_active,
                    }),
                    nguid,
                    eui64,
                    uuid,
                }
            })
            .collect();
        self.ns_decls = Some(decls);
        self.shared.set_namespaces(infos, changed);
    }

    /// The serving runtime added (`add`) or removed (`remove`) a namespace.
    fn ns_change(&mut self, link: u64, add: Option<NsDecl>, remove: Option<u32>) {
        if self.port.runtime().is_none_or(|l| l.id != link) {
            return;
        }
        let mut decls = self.ns_decls.clone().unwrap_or_default();
        if let Some(nsid) = remove {
            decls.retain(|d| d.nsid != nsid);
        }
        if let Some(ns) = add {
            decls.retain(|d| d.nsid != ns.nsid);
            decls.push(ns);
            decls.sort_by_key(|d| d.nsid);
        }
        let nsid = remove.unwrap_or(0);
        let changed: Vec<u32> = match namespace_changes(None, &decls) {
            Ok(_) => {
                let old = self.ns_decls.clone().unwrap_or_default();
                let mut c: Vec<u32> = decls
                    .iter()
                    .filter(|d| !old.contains(d))
                    .map(|d| d.nsid)
                    .collect();
                if nsid != 0 {
                    c.push(nsid);
                }
                c
            }
            Err(why) => {
                tracing::warn!(ctrl = %self.shared.name, "namespace change refused: {why}");
                return;
            }
        };
        if remove.is_some() {
            tracing::info!(ctrl = %self.shared.name, nsid, "namespace removed");
        }
        self.adopt_namespaces(decls, &changed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(nsid: u32, blocks: u64, persistent: bool) -> NsDecl {
        NsDecl {
            nsid,
            block_size: 512,
            num_blocks: blocks,
            volatile_write_cache: true,
            write_zeroes: true,
            deallocate: true,
            persistent,
            describe: format!("test {nsid}"),
            zoned: None,
        }
    }

    #[test]
    fn a_later_runtime_must_declare_the_same_namespaces() {
        let first = vec![ns(1, 100, true), ns(2, 200, true)];
        assert_eq!(namespace_changes(None, &first).unwrap(), vec![1, 2]);
        assert_eq!(
            namespace_changes(Some(&first), &first).unwrap(),
            Vec::<u32>::new()
        );
        // A third one is new.
        let more = vec![ns(1, 100, true), ns(2, 200, true), ns(3, 8, true)];
        assert_eq!(namespace_changes(Some(&first), &more).unwrap(), vec![3]);
        // Lying about the size, forgetting one, a volatile one, bad input.
        let e = namespace_changes(Some(&first), &[ns(1, 100, true), ns(2, 201, true)]);
        assert!(e.unwrap_err().contains("namespace 2 is 200 blocks"));
        let e = namespace_changes(Some(&first), &[ns(1, 100, true)]);
        assert!(e
            .unwrap_err()
            .contains("namespace 2 (test 2) is not declared"));
        let vol = vec![ns(1, 100, false)];
        let e = namespace_changes(Some(&vol), &vol);
        assert!(e.unwrap_err().contains("volatile"));
        assert!(namespace_changes(None, &[ns(0, 1, true)]).is_err());
        assert!(namespace_changes(None, &[ns(2, 1, true), ns(1, 1, true)]).is_err());
        let mut odd = ns(1, 1, true);
        odd.block_size = 1000;
        assert!(namespace_changes(None, &[odd]).is_err());
        assert!(namespace_changes(None, &[ns(1, u64::MAX, true)]).is_err());
    }

    #[test]
    fn zones_are_part_of_what_a_later_runtime_must_declare() {
        let zoned = |zone_blocks, capacity, max_open, max_active| {
            let mut d = ns(1, 1024, true);
            d.zoned = Some(leapio_link::ZonedDecl {
                zone_blocks,
                capacity,
                max_open,
                max_active,
            });
            d
        };
        let first = vec![zoned(256, 256, 4, 6)];
        assert_eq!(namespace_changes(None, &first).unwrap(), vec![1]);
        assert!(namespace_changes(Some(&first), &first).unwrap().is_empty());
        // Other zones: refused; other limits: a change the guest is told of.
        let e = namespace_changes(Some(&first), &[zoned(128, 128, 4, 6)]).unwrap_err();
        assert!(e.contains("has zones"), "{e}");
        assert!(namespace_changes(Some(&first), &[ns(1, 1024, true)]).is_err());
        assert_eq!(
            namespace_changes(Some(&first), &[zoned(256, 256, 2, 6)]).unwrap(),
            vec![1]
        );
        // Impossible zones: size not a power of two, capacity 0 or past
        // the size, zones not dividing the namespace, open limits.
        let mut uneven = zoned(512, 512, 4, 6);
        uneven.num_blocks = 1000;
        for bad in [
            zoned(300, 256, 4, 6),
            zoned(256, 257, 4, 6),
            zoned(256, 0, 4, 6),
            uneven,
            zoned(256, 256, 0, 6),
            zoned(256, 256, 7, 6),
        ] {
            assert!(namespace_changes(None, &[bad]).is_err());
        }
    }
}
