use super::*;
use leapio_ats::testing::memfd;
use leapio_ats::{Domain, Prot};
use std::sync::Arc;

const RAM: u64 = 0x10_0000;
const RAM_SIZE: u64 = 0x10_0000;
/// Read-only guest memory (a ROM): the device may read it, not write it.
const ROM: u64 = 0x30_0000;
const DESC: u64 = RAM;
const AVAIL: u64 = RAM + 0x1000;
const USED: u64 = RAM + 0x2000;
const BUF: u64 = RAM + 0x1_0000;
const TABLE: u64 = RAM + 0x8000;

struct Guest {
    _domain: Domain,
    snap: Arc<Snapshot>,
    size: u16,
}

impl Guest {
    fn new(size: u16) -> Guest {
        let d = Domain::new();
        let fd = memfd(c"leapio-virtio-test", RAM_SIZE).unwrap();
        d.map(RAM, RAM_SIZE, Some(fd), 0, Prot::READ_WRITE).unwrap();
        let rom = memfd(c"leapio-virtio-rom", 0x1000).unwrap();
        d.map(ROM, 0x1000, Some(rom), 0, Prot::READ).unwrap();
        let snap = d.snapshot();
        Guest {
            _domain: d,
            snap,
            size,
        }
    }

    fn layout(&self) -> QueueLayout {
        QueueLayout {
            size: self.size,
            desc: DESC,
            avail: AVAIL,
            used: USED,
        }
    }

    fn queue(&self, event_idx: bool) -> SplitQueue {
        SplitQueue::new(self.layout(), event_idx).unwrap()
    }

    fn desc(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Desc {
            addr,
            len,
            flags,
            next,
        };
        self.snap.write_obj(table + 16 * u64::from(i), &d).unwrap();
    }

    /// The driver makes `head` available (entry `at` of the ring).
    fn offer(&self, at: u16, head: u16) {
        self.snap
            .write_obj(AVAIL + 4 + 2 * u64::from(at % self.size), &head)
            .unwrap();
        self.snap
            .store_u16_release(AVAIL + 2, at.wrapping_add(1))
            .unwrap();
    }

    fn used(&self, at: u16) -> (u32, u32) {
        let e: UsedElem = self
            .snap
            .read_obj(USED + 4 + 8 * u64::from(at % self.size))
            .unwrap();
        (e.id, e.len)
    }
}

#[test]
fn a_chain_of_readable_then_writable_buffers_comes_out_whole_and_goes_back_used() {
    let g = Guest::new(8);
    let mut q = g.queue(false);
    g.desc(DESC, 3, BUF, 40, DESC_F_NEXT, 5);
    g.desc(DESC, 5, BUF + 0x100, 0, DESC_F_NEXT, 6);
    g.desc(DESC, 6, BUF + 0x200, 4096, DESC_F_WRITE, 0);
    let mut c = Chain::default();
    assert!(!q.pop(&g.snap, &mut c).unwrap(), "nothing offered yet");
    g.offer(0, 3);
    assert_eq!(q.pending(&g.snap).unwrap(), 1);
    assert!(q.pop(&g.snap, &mut c).unwrap());
    assert_eq!(c.head, 3);
    assert_eq!(
        c.segments,
        [
            Segment {
                gpa: BUF,
                len: 40,
                writable: false
            },
            Segment {
                gpa: BUF + 0x200,
                len: 4096,
                writable: true
            }
        ],
        "the zero-length buffer is left out"
    );
    assert_eq!((c.readable, c.writable), (40, 4096));
    assert_eq!(c.readable().count(), 1);
    assert_eq!(c.writable().count(), 1);
    assert!(!q.pop(&g.snap, &mut c).unwrap());
    q.push_used(&g.snap, 3, 100).unwrap();
    assert_eq!(g.snap.load_u16_acquire(USED + 2).unwrap(), 1);
    assert_eq!(g.used(0), (3, 100));
    assert_eq!((q.next_avail(), q.next_used()), (1, 1));
}

#[test]
fn a_looping_chain_is_an_error_and_its_entry_is_taken() {
    let g = Guest::new(8);
    let mut q = g.queue(false);
    g.desc(DESC, 0, BUF, 16, DESC_F_NEXT, 1);
    g.desc(DESC, 1, BUF, 16, DESC_F_NEXT, 0);
    g.offer(0, 0);
    let mut c = Chain::default();
    let e = q.pop(&g.snap, &mut c).unwrap_err();
    assert!(matches!(e, VqError::Loop { head: 0, table: 8 }), "{e}");
    assert!(e.to_string().contains("a loop"), "{e}");
    assert_eq!(c.head, 0);
    assert_eq!(q.next_avail(), 1, "the bad entry is taken off the ring");
    // The next entry is served.
    g.desc(DESC, 2, BUF, 16, 0, 0);
    g.offer(1, 2);
    assert!(q.pop(&g.snap, &mut c).unwrap());
    assert_eq!((c.head, c.readable), (2, 16));
}

#[test]
fn heads_and_nexts_outside_the_table_are_errors() {
    let g = Guest::new(8);
    let mut q = g.queue(false);
    let mut c = Chain::default();
    g.offer(0, 8);
    let e = q.pop(&g.snap, &mut c).unwrap_err();
    assert!(matches!(e, VqError::BadIndex { index: 8, table: 8 }), "{e}");
    g.desc(DESC, 1, BUF, 16, DESC_F_NEXT, 0xffff);
    g.offer(1, 1);
    let e = q.pop(&g.snap, &mut c).unwrap_err();
    assert!(matches!(e, VqError::BadIndex { index: 0xffff, .. }), "{e}");
}

#[test]
fn indirect_tables_are_walked_and_their_misuse_refused() {
    let g = Guest::new(8);
    let mut q = g.queue(false);
    let mut c = Chain::default();
    // A direct buffer, then an indirect table of three.
    g.desc(DESC, 0, BUF, 8, DESC_F_NEXT, 1);
    g.desc(DESC, 1, TABLE, 48, DESC_F_INDIRECT, 0);
    g.desc(TABLE, 0, BUF + 8, 24, DESC_F_NEXT, 2);
    g.desc(TABLE, 2, BUF + 0x1000, 512, DESC_F_WRITE | DESC_F_NEXT, 1);
    g.desc(TABLE, 1, BUF + 0x2000, 512, DESC_F_WRITE, 0);
    g.offer(0, 0);
    assert!(q.pop(&g.snap, &mut c).unwrap());
    assert_eq!(c.segments.len(), 4);
    assert_eq!((c.readable, c.writable), (32, 1024));
    assert_eq!(c.segments[3].gpa, BUF + 0x2000);

    let cases: [(Desc, &str); 5] = [
        (
            Desc {
                addr: TABLE,
                len: 48,
                flags: DESC_F_INDIRECT | DESC_F_NEXT,
                next: 0,
            },
            "INDIRECT and NEXT",
        ),
        (
            Desc {
                addr: TABLE,
                len: 20,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
            "multiple of 16",
        ),
        (
            Desc {
                addr: TABLE,
                len: 0,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
            "multiple of 16",
        ),
        (
            Desc {
                addr: TABLE + 8,
                len: 32,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
            "aligned",
        ),
        (
            Desc {
                addr: TABLE,
                len: 16 * (MAX_INDIRECT + 1),
                flags: DESC_F_INDIRECT,
                next: 0,
            },
            "65536",
        ),
    ];
    for (k, (d, why)) in cases.iter().enumerate() {
        g.desc(DESC, 4, d.addr, d.len, d.flags, d.next);
        g.offer(q.next_avail(), 4);
        let e = q.pop(&g.snap, &mut c).unwrap_err();
        assert!(
            matches!(e, VqError::BadIndirect { index: 4, .. }) && e.to_string().contains(why),
            "case {k}: {e}"
        );
    }
    // An indirect table inside one, and a loop inside one.
    g.desc(DESC, 5, TABLE, 32, DESC_F_INDIRECT, 0);
    g.desc(TABLE, 0, TABLE, 32, DESC_F_INDIRECT, 0);
    g.offer(q.next_avail(), 5);
    let e = q.pop(&g.snap, &mut c).unwrap_err();
    assert!(e.to_string().contains("inside an indirect table"), "{e}");
    g.desc(TABLE, 0, BUF, 8, DESC_F_NEXT, 1);
    g.desc(TABLE, 1, BUF, 8, DESC_F_NEXT, 0);
    g.offer(q.next_avail(), 5);
    let e = q.pop(&g.snap, &mut c).unwrap_err();
    assert!(matches!(e, VqError::Loop { head: 5, table: 2 }), "{e}");
}

#[test]
fn buffers_the_device_cannot_reach_are_errors() {
    let g = Guest::new(8);
    let mut q = g.queue(false);
    let mut c = Chain::default();
    let bad = [
        // written by the device, in read-only memory
        (ROM, 64, DESC_F_WRITE, "not allowed"),
        // past the end of guest memory
        (RAM + RAM_SIZE - 8, 64, 0, ""),
        // nowhere
        (0x4000_0000, 16, 0, ""),
        // wrapping the address space
        (u64::MAX - 8, 64, 0, ""),
    ];
    for (k, (addr, len, flags, why)) in bad.into_iter().enumerate() {
        g.desc(DESC, 2, addr, len, flags, 0);
        g.offer(q.next_avail(), 2);
        let e = q.pop(&g.snap, &mut c).unwrap_err();
        assert!(
            matches!(e, VqError::Buffer { index: 2, .. })
                && e.to_string().to_lowercase().contains(why),
            "case {k}: {e}"
        );
    }
    // Read from read-only memory: fine.
    g.desc(DESC, 2, ROM, 64, 0, 0);
    g.offer(q.next_avail(), 2);
    assert!(q.pop(&g.snap, &mut c).unwrap());
}

#[test]
fn a_readable_buffer_after_a_writable_one_is_refused() {
    let g = Guest::new(8);
    let mut q = g.queue(false);
    g.desc(DESC, 0, BUF, 16, DESC_F_WRITE | DESC_F_NEXT, 1);
    g.desc(DESC, 1, BUF + 16, 16, 0, 0);
    g.offer(0, 0);
    let e = q.pop(&g.snap, &mut Chain::default()).unwrap_err();
    assert!(matches!(e, VqError::ReadAfterWrite { index: 1 }), "{e}");
}

#[test]
fn a_chain_over_the_byte_limit_is_refused() {
    let g = Guest::new(8);
    let mut q = g.queue(false);
    q.set_max_chain_bytes(4096);
    g.desc(DESC, 0, BUF, 4096, DESC_F_NEXT, 1);
    g.desc(DESC, 1, BUF, 1, DESC_F_WRITE, 0);
    g.offer(0, 0);
    let e = q.pop(&g.snap, &mut Chain::default()).unwrap_err();
    assert!(matches!(e, VqError::TooLarge { head: 0, max: 4096 }), "{e}");
}

#[test]
fn an_available_index_that_runs_ahead_is_refused() {
    let g = Guest::new(8);
    let mut q = g.queue(false);
    g.snap.store_u16_release(AVAIL + 2, 9).unwrap();
    let e = q.pop(&g.snap, &mut Chain::default()).unwrap_err();
    assert!(
        matches!(e, VqError::TooManyAvailable { count: 9, size: 8 }),
        "{e}"
    );
    assert_eq!(q.next_avail(), 0, "nothing taken");
}

#[test]
fn the_indexes_wrap_and_a_resumed_queue_goes_on() {
    let g = Guest::new(8);
    let mut q = SplitQueue::resume(g.layout(), false, 0xffff, 0xfffe).unwrap();
    g.desc(DESC, 1, BUF, 16, 0, 0);
    g.desc(DESC, 2, BUF, 16, 0, 0);
    g.offer(0xffff, 1);
    assert_eq!(g.snap.load_u16_acquire(AVAIL + 2).unwrap(), 0);
    g.offer(0, 2);
    let mut c = Chain::default();
    assert!(q.pop(&g.snap, &mut c).unwrap());
    assert_eq!(c.head, 1);
    assert!(q.pop(&g.snap, &mut c).unwrap());
    assert_eq!(c.head, 2);
    assert_eq!(q.next_avail(), 1);
    q.push_used(&g.snap, 1, 0).unwrap();
    q.push_used(&g.snap, 2, 0).unwrap();
    assert_eq!(g.snap.load_u16_acquire(USED + 2).unwrap(), 0);
    assert_eq!(g.used(0xfffe), (1, 0));
    assert_eq!(g.used(0xffff), (2, 0));
}

#[test]
fn layouts_a_device_cannot_use_are_refused() {
    let ok = QueueLayout {
        size: 256,
        desc: 0x1000,
        avail: 0x2002,
        used: 0x3004,
    };
    ok.check().unwrap();
    for size in [0, 3, 100, 65535] {
        let e = QueueLayout { size, ..ok }.check().unwrap_err();
        assert!(matches!(e, VqError::BadSize(s) if s == size), "{e}");
    }
    QueueLayout { size: 32768, ..ok }.check().unwrap();
    let e = QueueLayout { desc: 0x1008, ..ok }.check().unwrap_err();
    assert!(e.to_string().contains("descriptor table"), "{e}");
    let e = QueueLayout {
        avail: 0x2001,
        ..ok
    }
    .check()
    .unwrap_err();
    assert!(e.to_string().contains("available ring"), "{e}");
    let e = QueueLayout { used: 0x3002, ..ok }.check().unwrap_err();
    assert!(e.to_string().contains("used ring"), "{e}");
}

#[test]
fn need_event_is_virtios_rule() {
    // The driver asked for an interrupt once the used index passes 5.
    assert!(need_event(5, 6, 5));
    assert!(need_event(5, 8, 3));
    assert!(!need_event(5, 5, 3), "not passed yet");
    assert!(!need_event(5, 9, 7), "passed before the last interrupt");
    // Across the wrap.
    assert!(need_event(0xffff, 2, 0xfffe));
    assert!(!need_event(3, 2, 0xfffe));
}

#[test]
fn interrupts_and_notifications_are_suppressed_as_the_driver_and_device_ask() {
    let g = Guest::new(8);
    // With event indexes: the driver's used_event, the device's avail_event.
    let mut q = g.queue(true);
    let used_event = AVAIL + 4 + 2 * 8;
    let avail_event = USED + 4 + 8 * 8;
    g.snap.write_obj(used_event, &1u16).unwrap();
    q.push_used(&g.snap, 0, 0).unwrap();
    assert!(
        !q.needs_interrupt(&g.snap, 0).unwrap(),
        "used 0..1, event at 1"
    );
    q.push_used(&g.snap, 0, 0).unwrap();
    assert!(q.needs_interrupt(&g.snap, 1).unwrap(), "used 1..2 passes 1");
    g.desc(DESC, 0, BUF, 16, 0, 0);
    g.offer(0, 0);
    assert!(q.pop(&g.snap, &mut Chain::default()).unwrap());
    q.suppress_notifications(&g.snap).unwrap();
    let ev: u16 = g.snap.read_obj(avail_event).unwrap();
    assert!(
        !need_event(ev, 2, 1),
        "a driver adding entry 1 does not notify"
    );
    assert!(!q.enable_notifications(&g.snap).unwrap(), "nothing pending");
    let ev: u16 = g.snap.read_obj(avail_event).unwrap();
    assert!(need_event(ev, 2, 1), "now it does");
    g.offer(1, 0);
    assert!(
        q.enable_notifications(&g.snap).unwrap(),
        "one came meanwhile"
    );

    // Without: the flags.
    let g = Guest::new(8);
    let mut q = g.queue(false);
    q.push_used(&g.snap, 0, 0).unwrap();
    assert!(q.needs_interrupt(&g.snap, 0).unwrap());
    g.snap
        .store_u16_release(AVAIL, AVAIL_F_NO_INTERRUPT)
        .unwrap();
    assert!(!q.needs_interrupt(&g.snap, 0).unwrap());
    q.suppress_notifications(&g.snap).unwrap();
    assert_eq!(g.snap.load_u16_acquire(USED).unwrap(), USED_F_NO_NOTIFY);
    q.enable_notifications(&g.snap).unwrap();
    assert_eq!(g.snap.load_u16_acquire(USED).unwrap(), 0);
}

#[test]
fn rings_outside_guest_memory_are_errors_not_panics() {
    let g = Guest::new(8);
    let layout = QueueLayout {
        size: 8,
        desc: 0x4000_0000,
        avail: 0x4000_1000,
        used: 0x4000_2000,
    };
    let mut q = SplitQueue::new(layout, true).unwrap();
    let e = q.pop(&g.snap, &mut Chain::default()).unwrap_err();
    assert!(matches!(e, VqError::Memory(_)), "{e}");
    assert!(q.push_used(&g.snap, 0, 0).is_err());
    assert!(q.needs_interrupt(&g.snap, 0).is_err());
    assert!(q.enable_notifications(&g.snap).is_err());
    assert_eq!(
        q.next_used(),
        0,
        "a used entry that could not be written is not counted"
    );
}
