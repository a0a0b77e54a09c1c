//! Writes the seed corpora of every fuzz target: `seeds DIR` creates
//! `DIR/<target>/seed-N` (`scripts/fuzz.sh --regen-seeds` rewrites the
//! committed fuzz/seeds/ with it). The seeds are the sessions the test suite runs
//! (the link's messages of tests/tests/link.rs and the frame tests, a
//! vfio-user bring-up as tests/src/vfio_user_client.rs does it, the admin
//! commands of tests/src/driver.rs, NVMe/TCP sessions as in
//! soc-runtime/src/tcp_target/tests.rs), encoded in each target's input
//! format. The output is committed (a few small files): CI then needs no
//! second build of every dependency without libFuzzer's flags just to make
//! them; regenerate them when a message format or an input format changes.

use leapio_link::proto::{CqSetup, CtrlConfig, NsDecl, Shadow, SqSetup, ToHost, ToRuntime};
use std::path::Path;

fn ns(nsid: u32) -> NsDecl {
    NsDecl {
        nsid,
        block_size: 512,
        num_blocks: 8192,
        volatile_write_cache: true,
        write_zeroes: true,
        deallocate: true,
        persistent: false,
        describe: "ram 4 MiB".into(),
        zoned: None,
    }
}

fn to_host() -> Vec<ToHost> {
    let ctrl = "vm0".to_string();
    vec![
        ToHost::Hello {
            major: 1,
            minor: 0,
            software: "socp 0.1.0".into(),
        },
        ToHost::Attach {
            ctrl: ctrl.clone(),
            namespaces: vec![ns(1), ns(2)],
            handover: false,
        },
        ToHost::Ack { req: 7, status: 0 },
        ToHost::Event {
            ctrl: ctrl.clone(),
            dw0: 0x0002_0002,
        },
        ToHost::Error {
            ctrl: ctrl.clone(),
            sqid: 1,
            cid: 3,
            status: 0x4004,
            nsid: 1,
            lba: 99,
        },
        ToHost::NsAdd {
            ctrl: ctrl.clone(),
            ns: ns(3),
        },
        ToHost::NsRemove {
            ctrl: ctrl.clone(),
            nsid: 3,
        },
        ToHost::Fatal {
            ctrl: ctrl.clone(),
            reason: "backend lost".into(),
        },
        ToHost::Detach { ctrl },
    ]
}

fn to_runtime() -> Vec<ToRuntime> {
    let ctrl = "vm0".to_string();
    vec![
        ToRuntime::Welcome {
            major: 1,
            minor: 0,
            software: "leapio-hostd 0.1.0".into(),
        },
        ToRuntime::Attached {
            ctrl: ctrl.clone(),
            config: CtrlConfig {
                serial: "LEAPIO0000".into(),
                max_io_queues: 4,
                max_queue_entries: 1024,
                mdts_bytes: 131_072,
                vectors: 5,
            },
            epoch: 1,
            windows: false,
        },
        ToRuntime::State {
            ctrl: ctrl.clone(),
            enabled: true,
            page_size: 4096,
            shadow: Some(Shadow {
                dbs: 0x10000,
                eis: 0x11000,
            }),
            write_cache: true,
        },
        ToRuntime::Map {
            req: 1,
            ctrl: ctrl.clone(),
            gpa: 0x1000,
            size: 0x2000,
            file_offset: 0,
            read: true,
            write: true,
            fd: true,
            window: None,
        },
        ToRuntime::Irqs {
            ctrl: ctrl.clone(),
            first: 0,
            has_fd: vec![true, true],
        },
        ToRuntime::CreateCq {
            req: 2,
            ctrl: ctrl.clone(),
            setup: CqSetup {
                qid: 1,
                gpa: 0x20000,
                entries: 64,
                vector: 1,
                ien: true,
            },
            resume: false,
        },
        ToRuntime::CreateSq {
            req: 3,
            ctrl: ctrl.clone(),
            setup: SqSetup {
                qid: 1,
                cqid: 1,
                gpa: 0x30000,
                entries: 64,
            },
            resume: true,
        },
        ToRuntime::DeleteSq {
            req: 4,
            ctrl: ctrl.clone(),
            qid: 1,
        },
        ToRuntime::Unmap {
            req: 5,
            ctrl: ctrl.clone(),
            gpa: 0x1000,
            size: 0x2000,
            all: false,
        },
        ToRuntime::Flush {
            req: 6,
            ctrl: ctrl.clone(),
        },
        ToRuntime::Reset { ctrl: ctrl.clone() },
        ToRuntime::Detach {
            ctrl,
            reason: "removed".into(),
        },
    ]
}

/// A link frame: header, JSON body.
fn frame(json: &[u8], nfds: u32) -> Vec<u8> {
    let len = u32::try_from(json.len()).expect("small");
    [
        &leapio_link::frame::raw_header(leapio_link::frame::FRAME_MAGIC, len, nfds)[..],
        json,
    ]
    .concat()
}

/// A chunk of the link_frame input: descriptors, length, bytes.
fn chunk(nfds: u8, bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("small");
    [&[nfds][..], &len.to_le_bytes(), bytes].concat()
}

struct Writer<'a> {
    dir: &'a Path,
}

impl Writer<'_> {
    fn put(&self, target: &str, seeds: &[Vec<u8>]) {
        let d = self.dir.join(target);
        std::fs::create_dir_all(&d).expect("create corpus directory");
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), s).expect("write seed");
        }
    }
}

fn link_seeds(w: &Writer<'_>) {
    let host: Vec<Vec<u8>> = to_host()
        .iter()
        .map(|m| serde_json::to_vec(m).expect("json"))
        .collect();
    let runtime: Vec<Vec<u8>> = to_runtime()
        .iter()
        .map(|m| serde_json::to_vec(m).expect("json"))
        .collect();
    w.put("link_proto", &[host.clone(), runtime.clone()].concat());

    // link_frame: direction byte, then chunks.
    let mut seeds = Vec::new();
    let mut all_host = vec![1u8];
    for h in &host {
        all_host.extend(chunk(0, &frame(h, 0)));
    }
    seeds.push(all_host);
    let mut all_rt = vec![0u8];
    for (m, j) in to_runtime().iter().zip(&runtime) {
        let n = u8::try_from(m.fd_count()).expect("few");
        let f = frame(j, u32::from(n));
        // The descriptors with the first byte, the rest separately.
        all_rt.extend(chunk(n, &f[..1]));
        all_rt.extend(chunk(0, &f[1..]));
    }
    seeds.push(all_rt);
    w.put("link_frame", &seeds);

    // link_ring: op 0 (runtime sends JSON), 1 (host sends), 2/3 receive.
    let mut ring = Vec::new();
    for (h, r) in host.iter().zip(&runtime) {
        ring.push(0);
        ring.push(u8::try_from(h.len()).unwrap_or(0));
        ring.extend_from_slice(h);
        ring.push(1);
        ring.push(u8::try_from(r.len()).unwrap_or(0));
        ring.extend_from_slice(r);
        ring.extend([2, 3]);
    }
    // Wrap around: many sends and receives.
    let mut wrap = Vec::new();
    for _ in 0..200 {
        wrap.extend([0, 0, 0, 0, 0, 0, 2]);
    }
    w.put("link_ring", &[ring, wrap]);

    // link_qstate: 4 queues x 16 slots; CQ 1 and SQ 1, two commands in
    // flight, one completed, one posted; no corruption (then one).
    let journal: Vec<u8> = [
        &[3u8, 15][..],
        &[0, 1, 0, 30],    // init_cq(1, 32)
        &[1, 1, 0, 30, 1], // init_sq(1, 32, cq 1)
        &[2, 1, 0],
        &[0x01; 64],
        &[1, 0, 0, 0],                            // begin slot 0, sq 1, seq 0
        &[5, 1, 0, 1, 0],                         // consumed 1
        &[3, 1, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0], // complete slot 0
        &[2, 1, 1],
        &[0x02; 64],
        &[1, 0, 1, 0],
        &[5, 1, 0, 2, 0],
        &[4, 1, 0, 1, 0, 1], // posted 1, head 1, free 0
        &[6, 1, 2, 8, 0, 0, 0, 8, 0, 0, 0],
        &[0xff],
    ]
    .concat();
    let mut corrupted = journal.clone();
    corrupted.extend([1, 0x10, 0x10, 8, 2, 0, 0, 0, 0, 0, 0, 0]);
    w.put("link_qstate", &[journal, corrupted]);
}

/// virtqueue: a queue of 8 with event indexes; a chain of a readable
/// buffer and an indirect table of a readable and a writable one is
/// published, taken and given back; then a looping chain.
fn virtqueue_seeds(w: &Writer<'_>) {
    const RAM: u64 = 0x1_0000;
    let desc = |addr: u64, len: u32, flags: u16, next: u16| -> Vec<u8> {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend(len.to_le_bytes());
        d.extend(flags.to_le_bytes());
        d.extend(next.to_le_bytes());
        d
    };
    // op 0: write BYTES at OFFSET of RAM
    let write = |s: &mut Vec<u8>, offset: u16, bytes: &[u8]| {
        s.push(0);
        s.extend(offset.to_le_bytes());
        s.push(u8::try_from(bytes.len()).unwrap_or(0));
        s.extend_from_slice(bytes);
    };
    let mut good = vec![0x83u8];
    write(&mut good, 0, &desc(RAM + 0x8000, 64, 1, 1));
    write(&mut good, 16, &desc(RAM + 0x6000, 32, 4, 0));
    write(&mut good, 0x6000, &desc(RAM + 0x9000, 16, 1, 1));
    write(&mut good, 0x6010, &desc(RAM + 0xa000, 512, 2, 0));
    write(&mut good, 0x1004, &0u16.to_le_bytes());
    good.extend([1, 1, 2, 1, 3, 0, 0]);
    let mut looping = vec![0x03u8];
    write(&mut looping, 0, &desc(RAM + 0x8000, 64, 1, 1));
    write(&mut looping, 16, &desc(RAM + 0x8000, 64, 1, 0));
    write(&mut looping, 0x1004, &0u16.to_le_bytes());
    looping.extend([1, 1, 2, 0]);
    w.put("virtqueue", &[good, looping]);
}

/// fuse_request: a LOOKUP, a WRITE, an INIT, a SETXATTR (extended
/// argument), a BATCH_FORGET and a RENAME2.
fn fuse_seeds(w: &Writer<'_>) {
    let req = |first: u8, opcode: u32, nodeid: u64, args: &[&[u8]]| -> Vec<u8> {
        let body: usize = args.iter().map(|a| a.len()).sum();
        let mut v = vec![first];
        v.extend(u32::try_from(40 + body).unwrap_or(0).to_le_bytes());
        v.extend(opcode.to_le_bytes());
        v.extend(42u64.to_le_bytes());
        v.extend(nodeid.to_le_bytes());
        v.extend([0u8; 16]);
        for a in args {
            v.extend_from_slice(a);
        }
        v
    };
    let le32 = |xs: &[u32]| -> Vec<u8> { xs.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let le64 = |xs: &[u64]| -> Vec<u8> { xs.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let write_in = [le64(&[3, 0]), le32(&[5, 0]), le64(&[0]), le32(&[0, 0])].concat();
    let seeds = vec![
        req(0, 1, 1, &[b"hello\0"]),
        req(0, 16, 2, &[&write_in, b"12345"]),
        req(0, 26, 0, &[&le32(&[7, 38, 1 << 20, 0xffff])]),
        req(1, 21, 2, &[&le32(&[3, 0, 0, 0]), b"user.a\0xyz"]),
        req(0, 42, 0, &[&le32(&[1, 0]), &le64(&[5, 1])]),
        req(0, 45, 1, &[&le64(&[9]), &le32(&[1, 0]), b"a\0b\0"]),
    ];
    w.put("fuse_request", &seeds);
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let w = Writer {
        dir: Path::new(&dir),
    };
    link_seeds(&w);
    virtqueue_seeds(&w);
    fuse_seeds(&w);
    leapio_fuzz::seeds::nvme(&|t, s| w.put(t, s));
    leapio_fuzz::seeds::vfio(&|t, s| w.put(t, s));
    leapio_fuzz::seeds::tcp(&|t, s| w.put(t, s));
    leapio_fuzz::seeds::rdma(&|t, s| w.put(t, s));
}
