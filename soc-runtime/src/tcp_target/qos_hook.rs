//! The QoS scheduler's hook in the target's I/O path: a command's backend
//! operations wait, per tenant (host NQN, namespace), until the scheduler
//! gives its tokens; then they join the poller's pending queue. Off, it
//! is one atomic load per command.

use super::poller::{PendingOp, Poller};
use crate::qos::{self, spec::Key};
use leapio_backends::IoKind;

impl Poller {
    /// Queue backend operation `p` of host `hostnqn`'s command on
    /// namespace `nsid`: pending at once, or held for its tenant's tokens.
    pub(super) fn qos_queue(&mut self, hostnqn: Option<&str>, nsid: u32, p: PendingOp) {
        let (Some(q), Some(nqn)) = (qos::get(), hostnqn) else {
            self.pending.push_back(p);
            return;
        };
        let Some(tenant) = q.resolve(&Key::Host { nqn, nsid }) else {
            self.pending.push_back(p);
            return;
        };
        self.qos_lat
            .entry(p.tag)
            .or_insert_with(|| (qos::Running::new(&tenant), p.op.kind, p.op.len));
        let cost = qos::sched::cost(p.op.kind, p.op.len, q.write_cost());
        if let Some(p) = self.qos_held.admit(q, &tenant, cost, p) {
            self.pending.push_back(p);
        }
    }

    /// Move the held operations that got their tokens (all of them once
    /// QoS is off) to the pending queue.
    pub(super) fn qos_release(&mut self) {
        if self.qos_held.is_empty() {
            return;
        }
        let mut out = Vec::new();
        self.qos_held.release(qos::get(), &mut out);
        for p in &out {
            if let Some((r, _, _)) = self.qos_lat.get_mut(&p.tag) {
                r.start();
            }
        }
        self.pending.extend(out);
    }

    /// The command with backend tag `tag` completed (its statistics).
    pub(super) fn qos_done(&mut self, tag: u64) {
        if self.qos_lat.is_empty() {
            return;
        }
        if let Some((r, kind, len)) = self.qos_lat.remove(&tag) {
            r.done(
                kind == IoKind::Read,
                matches!(kind, IoKind::Write | IoKind::WriteFua),
                len,
            );
        }
    }

    /// A connection (tags `base | index`) closed: forget its commands'
    /// statistics (those still held or in the backend complete as orphans).
    pub(super) fn qos_forget(&mut self, base: u64) {
        if !self.qos_lat.is_empty() {
            self.qos_lat.retain(|tag, _| tag & !0xffff != base);
        }
    }
}
