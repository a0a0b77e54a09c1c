//! The PCI carrier of the link, without a VM: the host-driver serves a
//! controller's link function, the test plays the SoC's hypervisor (maps
//! the function's BARs) and runs a runtime on them in this process; a
//! guest (the test driver) does verified I/O on the controller.

use leapio_backends::BackendSpec;
use leapio_host_driver::port::Timeouts;
use leapio_host_driver::{HostCtrlSpec, HostDriver};
use leapio_link::function::{self, reg};
use leapio_link::ToHost;
use leapio_tests::soc::SocFunction;
use leapio_tests::split::{Workload, CHUNK};
use leapio_tests::Driver;
use socp::link::client::LinkClient;
use socp::namespaces::open_served;
use socp::pcie::runtime::Runtime;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNKS: u64 = 512;

struct Soc {
    dir: PathBuf,
    host: Arc<HostDriver>,
    vfio: PathBuf,
    soc: PathBuf,
    disk: PathBuf,
}

impl Soc {
    fn start() -> Soc {
        let dir = leapio_tests::server::test_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let host = HostDriver::new("leapio-hostd (test)");
        host.set_timeouts(Timeouts {
            ack: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            fence: Duration::from_secs(10),
        });
        let vfio = dir.join("vm0.sock");
        let soc = dir.join("vm0-soc.sock");
        let mut spec = HostCtrlSpec::new("vm0", &vfio);
        spec.soc = Some(soc.clone());
        spec.limits.io_queues = 4;
        host.add_controller(&spec).unwrap();
        let disk = dir.join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(CHUNKS * CHUNK)
            .unwrap();
        Soc {
            dir,
            host,
            vfio,
            soc,
            disk,
        }
    }

    fn attached(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.host.status().iter().any(|c| c.runtime != 0) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// A runtime on the SoC: pollers, a session on the function, the
    /// controller attached with the file namespace.
    fn runtime(&self, f: &Arc<SocFunction>, session: u32) -> (Arc<Runtime>, Arc<LinkClient>) {
        let rt = Runtime::start(1).unwrap();
        let (client, _reader) = LinkClient::connect(f.open(session), rt.clone(), "socp (test SoC)")
            .expect("link over the function's rings");
        let spec = BackendSpec::File {
            path: self.disk.clone(),
            block_size: 512,
        };
        let ns = open_served(&[(1, spec)], "vm0", true).unwrap();
        client
            .attach("vm0", ns, false)
            .recv_timeout(Duration::from_secs(20))
            .expect("an answer")
            .expect("attached");
        (rt, client)
    }
}

impl Drop for Soc {
    fn drop(&mut self) {
        self.host.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stop a runtime the way a process that dies would leave it: the link
/// ends, the pollers stop; the queue-state area is what it left.
fn stop(rt: Arc<Runtime>, client: Arc<LinkClient>) {
    client.close();
    rt.shutdown();
}

#[test]
fn a_runtime_on_the_link_function_serves_verified_io_across_sessions() {
    let soc = Soc::start();
    // The VM's hypervisor maps its memory first: the function's window is it.
    let d = Driver::connect(&soc.vfio, 64 << 20).unwrap();
    let f = Arc::new(SocFunction::connect(&soc.soc).expect("the SoC's hypervisor connects"));
    assert_eq!(f.read(reg::MAGIC), function::MAGIC);
    assert_eq!(f.read(reg::VERSION), function::VERSION);
    assert_eq!(f.read(reg::GUEST_MEM_LO), 64 << 20);
    assert_eq!(f.read(reg::NAME), u32::from_le_bytes(*b"vm0\0"));
    let (mut rt, mut client) = soc.runtime(&f, 1);
    assert!(soc.attached());
    let st = soc.host.status();
    assert!(
        st[0]
            .runtime_desc
            .as_deref()
            .is_some_and(|d| d.contains("SoC runtime on link function vm0")),
        "{st:?}"
    );
    let mut w = Workload::with_driver(d, CHUNKS, 8, 21).unwrap();
    for session in 2..7 {
        w.run_for(Duration::from_millis(150));
        // The runtime goes away; what the guest submits meanwhile waits;
        // a new runtime opens a session and takes over.
        stop(rt, client);
        w.reap();
        w.fill();
        (rt, client) = soc.runtime(&f, session);
        assert!(soc.attached());
    }
    w.drain(Duration::from_secs(20));
    w.verify_all();
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    assert!(w.completed > 300, "too little I/O: {}", w.completed);
    stop(rt, client);
}

#[test]
fn a_hostile_soc_cannot_hurt_the_guest_or_the_host_driver() {
    let soc = Soc::start();
    let d = Driver::connect(&soc.vfio, 64 << 20).unwrap();
    let f = Arc::new(SocFunction::connect(&soc.soc).unwrap());
    let (rt, client) = soc.runtime(&f, 1);
    assert!(soc.attached());
    let mut w = Workload::with_driver(d, CHUNKS, 8, 22).unwrap();
    w.run_for(Duration::from_millis(100));
    w.drain(Duration::from_secs(10));
    stop(rt, client);
    // Registers: unknown offsets, unaligned and short accesses, a vector
    // that does not exist, the memory BARs through the trap path, past a
    // BAR's end: refused or ignored.
    for off in [0x1c, 0x100, 0xffc] {
        f.write(off, 0xdead_beef);
    }
    f.write(reg::IRQ, 0xffff);
    {
        let mut c = f.client();
        assert!(c.region_write(0, 2, &[1, 2, 3, 4]).is_ok());
        assert!(c.region_write(0, 4096, &[0; 4]).is_err());
        assert!(c.region_write(4, 0, &[0; 4]).is_err());
        let mut b = [0u8; 8];
        assert!(c.region_read(3, 0, &mut b).is_err());
    }
    // A session whose first message is not Hello: ended.
    let rings = f.rings();
    f.write(reg::OPEN, 7);
    rings.send(&ToHost::Detach { ctrl: "vm0".into() }).unwrap();
    f.write(reg::KICK, 1);
    // A session that says Hello, attaches, and goes silent (no heartbeat,
    // no answers): the host-driver gives up on it and waits for another.
    let rings = f.rings();
    f.write(reg::OPEN, 9);
    rings
        .send(&ToHost::Hello {
            major: leapio_link::proto::PROTOCOL_MAJOR,
            minor: 0,
            software: "silent".into(),
        })
        .unwrap();
    f.write(reg::KICK, 1);
    std::thread::sleep(Duration::from_millis(100));
    let decl = leapio_link::NsDecl {
        nsid: 1,
        block_size: 512,
        num_blocks: CHUNKS * 8,
        volatile_write_cache: true,
        write_zeroes: true,
        deallocate: true,
        persistent: true,
        describe: "silent".into(),
        zoned: None,
    };
    rings
        .send(&ToHost::Attach {
            ctrl: "vm0".into(),
            namespaces: vec![decl],
            handover: false,
        })
        .unwrap();
    f.write(reg::KICK, 1);
    // Meanwhile the guest's commands wait; none fails.
    w.fill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(soc.host.status().iter().all(|c| c.runtime == 0));
    // A good runtime (a new session fences the silent one) serves the
    // guest afterwards, data intact.
    let (rt, client) = soc.runtime(&f, 8);
    assert!(soc.attached());
    w.run_for(Duration::from_millis(100));
    w.drain(Duration::from_secs(20));
    w.verify_all();
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    stop(rt, client);
}
