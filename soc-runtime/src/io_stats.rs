//! What each namespace served: commands, bytes, errors, latency and depth,
//! for the metrics endpoint and `leapioctl top`.
//!
//! A poller counts into a shard of its own for each namespace it serves
//! (plain loads and stores, no locked instruction on the I/O path); a
//! reader adds the shards up. Shards live as long as their namespace, so
//! the totals of a controller that moved between pollers still add up.

use leapio_service::metrics::{bump, Latency, LatencySnapshot};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One namespace's counters: the shards of the pollers that served it.
#[derive(Default)]
pub struct IoStats {
    shards: Mutex<Vec<Arc<IoShard>>>,
}

/// What a command was, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    Read,
    Write,
    /// Flush, Write Zeroes, Dataset Management, zone management, ...
    Other,
}

impl OpClass {
    /// The class of NVM command set opcode `opcode` (Zone Append writes).
    pub fn of(opcode: u8) -> OpClass {
        use leapio_nvme::IoOpcode;
        match opcode {
            IoOpcode::READ => OpClass::Read,
            IoOpcode::WRITE | IoOpcode::ZONE_APPEND => OpClass::Write,
            _ => OpClass::Other,
        }
    }
}

/// One poller's counters for one namespace (its only writer).
#[derive(Default)]
pub struct IoShard {
    submitted: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    others: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    errors: AtomicU64,
    read_latency: Latency,
    write_latency: Latency,
}

impl IoShard {
    /// A command for this namespace started.
    #[inline]
    pub fn started(&self) {
        bump(&self.submitted, 1);
    }

    /// A command that [`started`](Self::started) finished after `ns`
    /// nanoseconds, moving `bytes` if it succeeded.
    #[inline]
    pub fn finished(&self, class: OpClass, bytes: u64, ok: bool, ns: u64) {
        if !ok {
            bump(&self.errors, 1);
        }
        match class {
            OpClass::Read => {
                bump(&self.reads, 1);
                if ok {
                    bump(&self.read_bytes, bytes);
                }
                self.read_latency.record(ns);
            }
            OpClass::Write => {
                bump(&self.writes, 1);
                if ok {
                    bump(&self.written_bytes, bytes);
                }
                self.write_latency.record(ns);
            }
            OpClass::Other => bump(&self.others, 1),
        }
    }
}

/// The sum of a namespace's shards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoTotals {
    pub reads: u64,
    pub writes: u64,
    /// Commands other than reads and writes.
    pub others: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Commands that completed with an error status.
    pub errors: u64,
    /// Commands started and not finished now (the queue depth).
    pub in_flight: u64,
    pub read_latency: LatencySnapshot,
    pub write_latency: LatencySnapshot,
}

impl IoStats {
    /// A new shard for one poller.
    pub fn shard(&self) -> Arc<IoShard> {
        let s = Arc::new(IoShard::default());
        self.shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(s.clone());
        s
    }

    pub fn totals(&self) -> IoTotals {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut t = IoTotals::default();
        let mut submitted = 0u64;
        for s in &shards {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            // Finished before started: a reader that sees a command's end
            // also sees its start.
            let (reads, writes, others) = (get(&s.reads), get(&s.writes), get(&s.others));
            submitted = submitted.saturating_add(get(&s.submitted));
            t.reads = t.reads.saturating_add(reads);
            t.writes = t.writes.saturating_add(writes);
            t.others = t.others.saturating_add(others);
            t.read_bytes = t.read_bytes.saturating_add(get(&s.read_bytes));
            t.written_bytes = t.written_bytes.saturating_add(get(&s.written_bytes));
            t.errors = t.errors.saturating_add(get(&s.errors));
            t.read_latency.add(&s.read_latency.snapshot());
            t.write_latency.add(&s.write_latency.snapshot());
        }
        let finished = t.reads.saturating_add(t.writes).saturating_add(t.others);
        t.in_flight = submitted.saturating_sub(finished);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_and_depth_is_what_has_not_finished() {
        let s = IoStats::default();
        let (a, b) = (s.shard(), s.shard());
        for _ in 0..3 {
            a.started();
        }
        b.started();
        a.finished(OpClass::Read, 4096, true, 2_000);
        a.finished(OpClass::Write, 8192, false, 5_000);
        b.finished(OpClass::Write, 4096, true, 9_000);
        let t = s.totals();
        assert_eq!((t.reads, t.writes, t.others, t.errors), (1, 2, 0, 1));
        assert_eq!((t.read_bytes, t.written_bytes), (4096, 4096));
        assert_eq!(t.in_flight, 1);
        assert_eq!(t.read_latency.count(), 1);
        assert_eq!(t.write_latency.count(), 2);
        assert_eq!(t.write_latency.sum_ns, 14_000);
    }
}
