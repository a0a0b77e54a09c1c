//! Virtio 1.x for the runtime: the device's side of split virtqueues whose
//! rings and buffers live in guest memory, read and written through an
//! [`leapio_ats::Snapshot`] (the guest's memory as the runtime maps it).
//!
//! A guest is not trusted: every index, descriptor, chain and buffer it
//! names is checked before use, and a bad one is an error naming what is
//! wrong, never a panic, a loop or an access outside its memory. The
//! device-side state of a queue (the next available entry to take, the
//! next used entry to fill) is two 16-bit counters a restarted runtime
//! can take over ([`SplitQueue::resume`]).

mod split;

pub use split::{Chain, Desc, QueueLayout, Segment, SplitQueue, VqError};
