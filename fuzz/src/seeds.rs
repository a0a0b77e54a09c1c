//! Seeds for the NVMe, vfio-user and NVMe/TCP targets, in their input
//! formats (see each target's documentation). They replay what the test
//! suite's drivers do: bring a controller up, Identify, create and delete
//! queues, read and write through PRP lists; negotiate, map memory, set
//! interrupts; connect NVMe/TCP queues and move data both ways.

/// Where seeds go: (target, seeds).
pub type Sink<'a> = dyn Fn(&str, &[Vec<u8>]) + 'a;

/// An address in `guest::address`'s encoding: page `p` of region `r`.
fn page(r: u8, p: u8) -> [u8; 2] {
    [r, p]
}

/// An admin command in nvme_admin's encoding (step byte included).
fn admin(
    op_index: u8,
    nsid_sel: u8,
    prp1: [u8; 2],
    cdw10_lo: u8,
    cdw10_hi: u16,
    cdw11: [u8; 2],
) -> Vec<u8> {
    let mut v = vec![0u8, op_index, nsid_sel];
    v.extend(prp1);
    v.extend(page(0, 0));
    v.push(0); // cdw10: structured
    v.push(cdw10_lo);
    v.extend(cdw10_hi.to_le_bytes());
    v.push(0); // cdw11: structured
    v.extend(cdw11);
    v.push(0); // flags
    v.extend([0u8; 2 + 4 + 4]);
    v
}

pub fn nvme(sink: &Sink<'_>) {
    // OPCODES order in nvme_admin: IDENTIFY 0, GET_LOG_PAGE 1, GET_FEATURES 2,
    // SET_FEATURES 3, CREATE_CQ 4, CREATE_SQ 5, DELETE_SQ 6, DELETE_CQ 7,
    // AER 8, DBBC 9, ABORT 10, KEEP_ALIVE 11, FORMAT 12, NS_MGMT 13.
    let bring_up = [
        vec![0u8],                               // MPS 0
        admin(0, 0, page(0, 4), 1, 0, [0, 0]),   // Identify Controller
        admin(0, 0, page(0, 5), 0, 0, [0, 0]),   // Identify Namespace 1
        admin(0, 2, page(0, 5), 0, 0, [0, 0]),   // Identify Namespace 2
        admin(0, 0, page(0, 6), 2, 0, [0, 0]),   // active namespace list
        admin(1, 3, page(0, 7), 2, 127, [0, 0]), // SMART log, 512 bytes
        admin(3, 3, page(0, 0), 7, 0, [3, 3]),   // Number of Queues
        admin(2, 3, page(0, 0), 7, 0, [0, 0]),
        admin(4, 3, page(0, 8), 1, 15, [3, 1]), // Create I/O CQ 1
        admin(5, 3, page(0, 9), 1, 15, [1, 1]), // Create I/O SQ 1 on CQ 1
        admin(8, 3, page(0, 0), 0, 0, [0, 0]),  // AER
        admin(11, 3, page(0, 0), 0, 0, [0, 0]), // Keep Alive
        admin(9, 3, page(0, 10), 0, 0, [0, 0]), // Doorbell Buffer Config
        admin(6, 3, page(0, 0), 1, 0, [0, 0]),  // Delete SQ 1
        admin(7, 3, page(0, 0), 1, 0, [0, 0]),  // Delete CQ 1
    ]
    .concat();
    let mut reset = bring_up.clone();
    reset.extend([15, 1]); // reset, enable with MPS 1
    reset.extend(admin(0, 0, page(1, 4), 1, 0, [0, 0]));
    // A PRP list: Get Log Page of 8 KiB into page 20, then 21-22 through
    // the list at page 12.
    let mut prp_list = vec![0u8];
    prp_list.extend([8u8]); // write guest memory
    prp_list.extend(page(0, 12));
    prp_list.push(16);
    for p in [21u64, 22] {
        prp_list.extend((p * 4096).to_le_bytes());
    }
    prp_list.extend(admin(1, 3, page(0, 20), 2, 2047, [0, 0]));
    sink("nvme_admin", &[bring_up, reset, prp_list]);

    // nvme_io: limits, namespace, memory writes, commands.
    let mut io = vec![0u8, 5, 0]; // 4 KiB pages, 128 KiB MDTS, 512-byte blocks
    io.push(1); // one memory write: a PRP list at page 10
    io.extend(page(0, 10));
    io.extend(24u16.to_le_bytes());
    for p in [31u64, 32, 33] {
        io.extend((p * 4096).to_le_bytes());
    }
    let cmd = |sel: u8, slba: u16, nlb: u8, prp1: [u8; 2], prp2: [u8; 2]| {
        let mut v = vec![sel, 0, 0];
        v.extend(slba.to_le_bytes());
        v.extend([0, nlb, 0, 0]);
        v.extend(prp1);
        v.extend(prp2);
        v
    };
    io.extend(cmd(0, 0, 7, page(0, 20), page(0, 0))); // read 4 KiB
    io.extend(cmd(1, 8, 15, page(0, 20), page(0, 21))); // write 8 KiB
    io.extend(cmd(0, 16, 31, page(0, 30), page(0, 10))); // read 16 KiB, list
    io.extend(cmd(2, 0, 0, page(0, 0), page(0, 0))); // flush
    io.extend(cmd(3, 0, 7, page(0, 0), page(0, 0))); // write zeroes
    io.extend(cmd(1, 0, 7, page(2, 0), page(0, 0))); // write from read-only memory
    io.extend(cmd(0, 0, 7, page(2, 0), page(0, 0))); // read into read-only memory
    sink("nvme_io", &[io]);
}

pub fn vfio(sink: &Sink<'_>) {
    let mut s = vec![1u8]; // negotiate
    s.extend([3, 1]); // GET_INFO
    for r in [0u8, 4, 7] {
        s.extend([4, 1, r]); // REGION_INFO
    }
    s.extend([5, 2]); // IRQ_INFO MSI-X
                      // DMA_MAP of 256 pages at 0 with the memory fd, then a second range.
    s.extend([1, 0, 0, 255, 0, 0, 0, 3, 0]);
    s.extend([1, 0, 1, 15, 0, 0, 0, 3, 0]);
    // SET_IRQS: two eventfds for MSI-X vectors 0-1.
    s.extend([6, 0, 0, 0, 2, 0, 0]);
    // Config space: command register, BAR reads.
    s.extend([8, 7, 0, 4, 1]);
    s.extend([6u8, 0, 0, 0]);
    s.extend([7, 7, 0, 0x10, 0, 2]);
    // BAR0: AQA, ASQ, ACQ, CC.EN, then CSTS.
    for (off, v) in [
        (0x24u8, 0x000f_000fu32),
        (0x28, 0x10_0000),
        (0x30, 0x10_1000),
        (0x14, 0x0046_0001),
    ] {
        s.extend([8, 0, 1, off, 2]);
        s.extend(v.to_le_bytes());
    }
    s.extend([7, 0, 0, 0x1c, 0, 2]);
    // A doorbell, DMA_UNMAP, RESET.
    s.extend([9, 0, 0, 0x00, 0x10, 2, 1, 0, 0, 0]);
    s.extend([2, 0, 1, 0, 15, 0]);
    s.push(10);
    sink("vfio_user", &[s]);
}

pub fn tcp(sink: &Sink<'_>) {
    // tcp_target: connections, then [conn][pdu...][split].
    let mut t = vec![1u8]; // two connections
    let icreq = |c: u8| vec![c, 0, 0, 0, 0];
    t.extend(icreq(0));
    t.extend([0, 1, 0, 0, 31, 0x10, 0x27, 0]); // admin Connect, KATO 10 s
    t.extend([0, 2, 0, 0, 0, 0]); // CC.EN = 1
    t.extend([0, 3, 0x1c, 0, 0]); // CSTS
    t.extend([0, 6, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]); // Identify Controller
    t.extend([0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]);
    t.extend(icreq(1));
    t.extend([1, 1, 1, 200, 0, 31, 0, 0, 0]); // I/O Connect, cntlid 1
                                              // Write 1 block in the capsule, then read it back.
    t.extend([1, 4, 0, 1, 0, 8, 0, 0, 0, 0, 1]);
    t.extend([0xa5; 512]);
    t.extend([0, 0]);
    t.extend([1, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0]);
    // Write 2 blocks by R2T, then its H2CData.
    t.extend([1, 4, 0, 1, 0, 9, 0, 1, 0, 0, 0, 0, 0]);
    t.extend([1, 7]);
    t.extend(1024u16.to_le_bytes());
    t.extend([0x5a; 1024]);
    t.extend([0, 1, 0, 0, 1, 0]);
    t.extend([1, 4, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]); // flush
    t.extend([1, 8, 0, 0, 0]); // disconnect
    sink("tcp_target", &[t]);

    // tcp_host: [cfg] then steps.
    let mut h = vec![0u8];
    h.extend([0, 0, 0, 0, 0, 0, 0, 0]); // submit: read 1 block at 0
    h.extend([1, 2, 0, 0]); // C2HData for cid 0
    h.extend(512u16.to_le_bytes());
    h.extend([0x11; 512]);
    h.extend([0, 0x0c, 0, 0, 0]); // SUCCESS|LAST, no flip, no split
    h.extend([0, 1, 1, 0, 0, 0, 0, 0]); // submit: write 2 blocks
    h.extend([1, 4, 0, 0, 0, 0, 0, 0xff, 3, 0, 0]); // R2T 1024 bytes
    h.extend([1, 0, 0, 0, 0, 0, 0]); // response for cid 0
    h.extend([0, 3, 0, 0, 0, 0, 0, 0]); // flush
    h.extend([1, 0, 0, 0, 0, 0, 0]);
    let mut digests = h.clone();
    digests[0] = 3;
    sink("tcp_host", &[h, digests]);
}

pub fn rdma(sink: &Sink<'_>) {
    // rdma_target: queues, then [kind][queue][capsule choices...].
    let mut t = vec![1u8]; // two queues
    let keyed = |t: &mut Vec<u8>, addr: u64| {
        t.push(0); // a keyed descriptor
        t.extend(addr.to_le_bytes());
        t.extend(0x1234u32.to_le_bytes());
    };
    t.extend([0, 0, 0, 0, 0, 31, 0x10, 0x27, 0]); // admin Connect, KATO 10 s
    t.extend([0, 0, 1, 0, 0, 0]); // CC.EN = 1
    t.extend([0, 0, 2, 0x1c, 0]); // CSTS
    t.extend([0, 0, 6, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x10]); // Identify Controller
    keyed(&mut t, 0x10_0000);
    t.extend([12, 0]); // the backends complete
    t.extend([0, 1, 0, 1, 200, 0, 31, 0, 0, 0]); // I/O Connect, cntlid 1
                                                 // Write a block by RDMA READ, the READ completes, read it back by
                                                 // RDMA WRITE.
    t.extend([0, 1, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    keyed(&mut t, 0x20_0000);
    t.extend([10, 1, 12, 0]);
    t.extend([0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    keyed(&mut t, 0x30_0000);
    // Write a block in the capsule.
    t.extend([0, 1, 3, 1, 0, 0, 0, 0, 0, 0, 1]);
    t.extend([0xa5; 512]);
    t.extend([0, 0]);
    // A write whose READ never completes: the host goes away.
    t.extend([0, 1, 3, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
    keyed(&mut t, 0x40_0000);
    t.extend([12, 0, 15, 1]);
    sink("rdma_target", &[t]);
}
