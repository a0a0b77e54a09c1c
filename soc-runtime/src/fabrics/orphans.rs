//! Commands of a closed connection that backends still work on: a backend
//! may still write a command's buffer, so the buffer is kept until the
//! command's last operation completes. Every fabrics target's poller keeps
//! one of these; the subsystem counts what they hold (`orphans`).

use super::queue::FabricQueue;
use super::subsystem::Subsystem;
use crate::engine::Engine;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// See the module documentation.
pub struct Orphans<B> {
    /// By backend tag: operations outstanding, and the buffer.
    held: HashMap<u64, (u32, Option<B>)>,
}

impl<B> Default for Orphans<B> {
    fn default() -> Self {
        Orphans {
            held: HashMap::new(),
        }
    }
}

impl<B> Orphans<B> {
    /// Take over the commands of `q`, whose connection is closing and whose
    /// backend tags are `base | index`: operations the engine never gave a
    /// backend are forgotten, commands with operations in a backend keep
    /// their buffers here.
    pub fn adopt(
        &mut self,
        sub: &Subsystem,
        engine: &mut Engine,
        base: u64,
        q: &mut FabricQueue<B>,
    ) {
        let mut unsent: HashMap<u64, u32> = HashMap::new();
        for tag in engine.forget(|t| t & !0xffff == base) {
            *unsent.entry(tag).or_default() += 1;
        }
        for (idx, cmd) in q.cmds.drain(..).enumerate() {
            let Some(cmd) = cmd else {
                continue;
            };
            let tag = base | u64::try_from(idx).unwrap_or(0);
            let remaining = cmd
                .in_backend()
                .saturating_sub(unsent.get(&tag).copied().unwrap_or(0));
            if remaining > 0 {
                sub.orphans.fetch_add(1, Ordering::AcqRel);
                self.held.insert(tag, (remaining, cmd.into_buffer()));
            }
        }
    }

    /// A backend operation with `tag` completed; an orphan whose last one it
    /// was lets its buffer go.
    pub fn completed(&mut self, sub: &Subsystem, tag: u64) {
        if let Some((remaining, _)) = self.held.get_mut(&tag) {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                self.held.remove(&tag);
                sub.orphans.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Forget them all (the backends are drained or gone).
    pub fn clear(&mut self, sub: &Subsystem) {
        sub.orphans.fetch_sub(self.held.len(), Ordering::AcqRel);
        self.held.clear();
    }

    /// Commands held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}
