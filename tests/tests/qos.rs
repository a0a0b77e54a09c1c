//! QoS end to end, no VM: two controllers whose namespaces are one emulated
//! flash device (a real latency-vs-load curve), one of them flooding it
//! with writes, the other reading at a fixed rate under a p95 SLO. Tenants
//! are configured at run time through the control socket's methods.
//! Timing is only a loose bound here (a shared 2-core machine); the
//! figures are the benchmark's job (scripts/bench-qos.sh).

use leapio_backends::{open_backend, BackendSpec, Completion, IoKind, IoRequest};
use leapio_nvme::{IoOpcode, Status};
use leapio_tests::driver::PAGE;
use leapio_tests::proc_stat::thread_cpu;
use leapio_tests::server::TestServer;
use leapio_tests::Driver;
use serde_json::json;
use socp::tcp_target::{TargetSpec, TcpTarget};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The tests configure the process's schedulers (one per device) through
/// its registry, which they clear first: they take turns.
static SERIAL: Mutex<()> = Mutex::new(());

const MEM: u64 = 32 << 20;
/// A slow device, so that its own latencies dominate the scheduling noise
/// of a shared machine: 4 dies, reads 1 ms, programs 10 ms. A writer at
/// QD32 keeps every die busy for tens of milliseconds ahead.
const FLASH: &str = "channels=2&dies=2&blocks=64&pages=32&read=1000&prog=10000&erase=20000&op=1";
/// Blocks the LC tenant reads (written first, so reads touch the media).
const LC_BLOCKS: u64 = 128;
/// The LC tenant: reads per second, and its SLO (p95).
const LC_RATE: f64 = 200.0;
const SLO_MS: u64 = 20;

/// A device model for FLASH, written by hand and conservative (4 dies x
/// 1 ms reads: 4000 reads/s at most, but 10 ms programs, and garbage
/// collection copying pages: a write costs 30 reads at steady state).
fn write_model(path: &std::path::Path) {
    let m = json!({
        "backend": "test flash",
        "write_cost": 30.0,
        "points": [
            {"tokens_per_s": 200.0, "p95_us": 2000.0, "p99_us": 3000.0},
            {"tokens_per_s": 400.0, "p95_us": 7500.0, "p99_us": 12500.0},
            {"tokens_per_s": 600.0, "p95_us": 20000.0, "p99_us": 40000.0},
            {"tokens_per_s": 3800.0, "p95_us": 200000.0, "p99_us": 300000.0}
        ]
    });
    std::fs::write(path, m.to_string()).unwrap();
}

fn rpc(method: &str, params: serde_json::Value) -> Result<serde_json::Value, String> {
    socp::qos::registry()
        .handle(method, &params)
        .expect("a QoS method")
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Reads of 4 KiB at `rate` per second for `secs` over the first
/// LC_BLOCKS blocks; returns the latencies (from each read's due time).
fn paced_reads(d: &mut Driver, rate: f64, secs: f64) -> Vec<Duration> {
    let buf = d.mem.alloc(PAGE * 64, PAGE);
    let start = Instant::now();
    let mut due_of = [None::<Instant>; 64];
    let mut free: Vec<usize> = (0..64).collect();
    let mut k = 0u64;
    let mut lat = Vec::new();
    let mut seed = 12345u64;
    loop {
        let now = Instant::now();
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        let over = now.duration_since(start).as_secs_f64() >= secs;
        if !over && due <= now {
            if let Some(slot) = free.pop() {
                let lba = xorshift(&mut seed) % LC_BLOCKS;
                let sqe = d.rw_sqe(
                    IoOpcode::READ,
                    1,
                    lba,
                    1,
                    buf + slot as u64 * PAGE,
                    PAGE,
                    slot,
                );
                let cid = d.push(1, sqe);
                d.ring(1);
                // CIDs advance by one per command and at most 64 are in
                // flight: cid % 64 is unique among them.
                due_of[usize::from(cid) % 64] = Some(due);
                k += 1;
                continue;
            }
        }
        match d.poll(1) {
            Some(c) => {
                assert_eq!(c.status_field(), Status::SUCCESS, "LC read failed");
                let i = usize::from(c.cid.get()) % 64;
                if let Some(t) = due_of[i].take() {
                    lat.push(t.elapsed());
                }
                free.push(i);
            }
            None if over && free.len() == 64 => break,
            None => std::thread::sleep(Duration::from_micros(50)),
        }
    }
    lat.sort();
    lat
}

/// 4 KiB random writes at QD32 past the LC blocks, as fast as they
/// complete, until `stop`; returns the driver and the writes done.
fn flood(mut be: Driver, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Driver, u64)> {
    std::thread::spawn(move || {
        let buf = be.mem.alloc(PAGE * 32, PAGE);
        let mut seed = 99u64;
        let (mut inflight, mut done) = (0usize, 0u64);
        while !stop.load(Ordering::Relaxed) || inflight > 0 {
            while inflight < 32 && !stop.load(Ordering::Relaxed) {
                let lba = LC_BLOCKS + xorshift(&mut seed) % 1500;
                let slot = (usize::try_from(done % 32).unwrap_or(0) + inflight) % 32;
                let sqe = be.rw_sqe(
                    IoOpcode::WRITE,
                    1,
                    lba,
                    1,
                    buf + slot as u64 * PAGE,
                    PAGE,
                    slot,
                );
                be.push(1, sqe);
                inflight += 1;
            }
            be.ring(1);
            match be.poll(1) {
                Some(c) => {
                    assert_eq!(c.status_field(), Status::SUCCESS, "BE write failed");
                    inflight -= 1;
                    done += 1;
                }
                None => std::thread::sleep(Duration::from_micros(100)),
            }
        }
        (be, done)
    })
}

fn p95(lat: &[Duration]) -> Duration {
    lat[lat.len() * 95 / 100]
}

#[test]
fn a_flooding_tenant_does_not_break_the_other_tenants_slo() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // On tmpfs where there is one: the flash backend's fdatasync (garbage
    // collection waits for one) then costs what the model says, not what
    // this machine's disk does.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let media = format!("flash:{}?{FLASH}", dir.path().join("dev.flash").display());
    let srv = TestServer::start(
        &[
            &format!("name=lc,ns={media}"),
            &format!("name=be,ns={media}"),
        ],
        1,
    );
    let mut lc = Driver::bring_up(srv.sock(0), MEM, 1, 128).unwrap();
    let mut be = Driver::bring_up(srv.sock(1), MEM, 1, 64).unwrap();
    // Both controllers see the same device (one backend for one spec).
    lc.write_blocks(1, 1, 7, 4096, &[0x5a; 4096]).unwrap();
    let (c, data) = be.read_blocks(1, 1, 7, 4096, 4096).unwrap();
    assert_eq!(c.status_field(), Status::SUCCESS);
    assert_eq!(
        data,
        vec![0x5a; 4096],
        "the two controllers share the device"
    );
    // The LC tenant's blocks hold data (reads of unwritten pages would not
    // touch the media).
    for lba in (0..LC_BLOCKS).step_by(32) {
        let c = lc
            .write_blocks(1, 1, lba, 4096, &vec![0x11; 32 * 4096])
            .unwrap();
        assert_eq!(c.status_field(), Status::SUCCESS);
    }

    // Without QoS: the flood fills the dies' queues with 10 ms programs.
    socp::qos::registry().clear();
    let stop = Arc::new(AtomicBool::new(false));
    let f = flood(be, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let without = paced_reads(&mut lc, LC_RATE, 2.0);
    stop.store(true, Ordering::Relaxed);
    let (be, be_without) = f.join().unwrap();

    // QoS on at run time: the device model, then the tenants.
    let model = dir.path().join("dev.json");
    write_model(&model);
    rpc(
        "qos_device",
        json!({"path": model.to_str().unwrap(), "backend": media}),
    )
    .unwrap();
    // Refused: at p95 7.5 ms the device carries 400 tokens/s (380
    // reservable); 30 IOPS at 50:50 with writes at 30 needs 465.
    let e = rpc(
        "qos_tenant_add",
        json!({"spec": "name=lc,ctrl=lc,class=lc,slo=p95:7500us,iops=30,rw=50:50"}),
    )
    .unwrap_err();
    assert!(e.contains("needs 465 tokens/s"), "{e}");
    assert!(e.contains("carries 400 tokens/s at p95 7500us"), "{e}");
    // Admitted: 200 reads/s under p95 20 ms (600 tokens/s at that SLO),
    // with 10% of headroom (a tenant paced at exactly its reservation
    // would keep any backlog a hiccup gave it).
    let lc_spec = format!("name=lc,ctrl=lc,class=lc,slo=p95:{SLO_MS}ms,iops=220");
    rpc("qos_tenant_add", json!({ "spec": lc_spec })).unwrap();
    rpc(
        "qos_tenant_add",
        json!({"spec": "name=be,ctrl=be,class=be"}),
    )
    .unwrap();
    // Let the dies drain what the unscheduled flood queued.
    std::thread::sleep(Duration::from_millis(500));
    let stop = Arc::new(AtomicBool::new(false));
    let f = flood(be, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let with = paced_reads(&mut lc, LC_RATE, 3.0);
    stop.store(true, Ordering::Relaxed);
    let (_be, be_with) = f.join().unwrap();

    let st = rpc("qos_stats", json!({})).unwrap();
    let tenant = |n: &str| {
        st["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .cloned()
            .unwrap()
    };
    let (l, b) = (tenant("lc"), tenant("be"));
    eprintln!(
        "LC p95 without QoS {:?} ({} reads, BE {be_without} writes); with QoS {:?} ({} reads, BE {be_with} writes); lc {l}; be {b}",
        p95(&without),
        without.len(),
        p95(&with),
        with.len()
    );
    assert!(with.len() >= 500, "LC got {} of ~600 reads", with.len());
    // Loose bounds (a shared machine, where the runtime's debug-build
    // poller waits for a CPU too): the scheduler's own view (from taking
    // the command to its completion) within 5x the SLO, and the reader's
    // better than without QoS.
    let in_socp = l["lat_p95_us"].as_f64().unwrap();
    assert!(
        in_socp < 5.0 * 1000.0 * SLO_MS as f64,
        "LC p95 {in_socp} us in socp"
    );
    assert!(
        p95(&with) < p95(&without),
        "LC p95 with QoS {:?}, without {:?}",
        p95(&with),
        p95(&without)
    );
    // BE was throttled, not starved.
    assert!(be_with > 10, "BE completed only {be_with} writes");
    assert!(b["throttled_cmds"].as_u64().unwrap() > 0, "{b}");
    assert!(b["tokens_used"].as_f64().unwrap() >= 30.0 * 10.0, "{b}");
    assert!(l["ios"].as_u64().unwrap() >= 500, "{l}");

    // Reconfigured while running: the LC tenant removed, then QoS off.
    rpc("qos_tenant_remove", json!({"name": "lc"})).unwrap();
    assert!(rpc("qos_tenant_remove", json!({"name": "lc"})).is_err());
    rpc("qos_device", json!({"off": true})).unwrap();
    let (c, _) = lc.read_blocks(1, 1, 0, 4096, 4096).unwrap();
    assert_eq!(c.status_field(), Status::SUCCESS);
    drop(srv);
}

#[test]
fn nvme_tcp_hosts_are_tenants_too() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const NQN: &str = "nqn.2026-11.io.leapio:qos";
    const HOST: &str = "nqn.2026-11.io.leapio:host-be";
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    // Whatever another test left: QoS starts afresh.
    socp::qos::registry().clear();
    // A device that carries 2000 tokens/s: 4 KiB reads at 2000 IOPS.
    let model = dir.path().join("dev.json");
    let m = json!({"write_cost": 4.0, "points": [{"tokens_per_s": 2000.0, "p95_us": 100.0, "p99_us": 200.0}]});
    std::fs::write(&model, m.to_string()).unwrap();
    let disk = dir.path().join("tcp.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let ns = format!("file:{}", disk.display());
    rpc(
        "qos_device",
        json!({"path": model.to_str().unwrap(), "backend": ns}),
    )
    .unwrap();
    rpc(
        "qos_tenant_add",
        json!({"spec": format!("name=be,hostnqn={HOST},class=be")}),
    )
    .unwrap();
    let spec: TargetSpec = format!("listen=127.0.0.1:0,nqn={NQN},ns={ns}")
        .parse()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let target = TcpTarget::start(0, &spec, 1, stop.clone()).unwrap();
    let port = target.local_addr.port();
    let host: BackendSpec = format!("nvme-tcp:127.0.0.1:{port}/{NQN}?hostnqn={HOST}")
        .parse()
        .unwrap();
    let b = open_backend(&host).unwrap();
    let mut q = b.open_queue(64).unwrap();
    // 1200 reads of 4 KiB at QD32 (1200 tokens): the scheduler lets ~2000
    // tokens/s through, so this takes about half a second, not a few ms.
    let mut bufs = vec![vec![0u8; 4096]; 32];
    let total = 1200u64;
    let (mut sent, mut done) = (0u64, 0u64);
    let mut out: Vec<Completion> = Vec::new();
    let t0 = Instant::now();
    let cpu0 = thread_cpu("socp-tcp-0.0").expect("the target's poller thread");
    while done < total {
        while sent < total && sent - done < 32 {
            let buf = &mut bufs[usize::try_from(sent % 32).unwrap()];
            let iov = [libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: 4096,
            }];
            let req = IoRequest {
                tag: sent,
                kind: IoKind::Read,
                offset: (sent % 4096) * 4096,
                len: 4096,
                iov: &iov,
                owner: 0,
                journal: None,
            };
            // SAFETY: the buffers outlive their requests (all are waited for).
            match unsafe { q.submit(&req) } {
                Ok(()) => sent += 1,
                Err(_) => break,
            }
        }
        q.kick().unwrap();
        out.clear();
        q.poll(&mut out);
        for c in &out {
            assert!(c.result.is_ok(), "read {} failed", c.tag);
            done += 1;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "reads did not complete"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    let took = t0.elapsed();
    let poller_cpu = thread_cpu("socp-tcp-0.0")
        .expect("the target's poller thread")
        .saturating_sub(cpu0);
    let st = rpc("qos_stats", json!({})).unwrap();
    let be = st["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "be")
        .cloned()
        .unwrap();
    eprintln!("1200 reads took {took:?}; stats {be}");
    // Every read completed (held, never dropped), charged to the host's
    // tenant, many of them throttled; a loose bound on the time.
    assert_eq!(be["ios"].as_u64().unwrap(), total, "{be}");
    assert!(be["throttled_cmds"].as_u64().unwrap() > 0, "{be}");
    assert!(
        (be["tokens_used"].as_f64().unwrap() - 1200.0).abs() < 1e-6,
        "{be}"
    );
    assert!(took > Duration::from_millis(300), "took {took:?}");
    // Most of that time the target's only work was commands waiting for
    // tokens: its poller naps then instead of spinning a core.
    eprintln!("target poller CPU {poller_cpu:?} over {took:?}");
    assert!(
        poller_cpu < took / 2,
        "the poller spun while commands were held: {poller_cpu:?} of CPU in {took:?}"
    );
    drop(q);
    drop(b);
    rpc("qos_device", json!({"off": true})).unwrap();
    stop.store(true, Ordering::Release);
    target.join();
}

/// `n` reads of 4 KiB at QD16 on namespace 1 of `d`; how long they took.
fn reads(d: &mut Driver, n: u64) -> Duration {
    let buf = d.mem.alloc(PAGE * 16, PAGE);
    let t0 = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    while done < n {
        while sent < n && sent - done < 16 {
            let slot = usize::try_from(sent % 16).unwrap();
            let sqe = d.rw_sqe(
                IoOpcode::READ,
                1,
                sent % 1024,
                1,
                buf + slot as u64 * PAGE,
                PAGE,
                slot,
            );
            d.push(1, sqe);
            sent += 1;
        }
        d.ring(1);
        match d.poll(1) {
            Some(c) => {
                assert_eq!(c.status_field(), Status::SUCCESS, "read failed");
                done += 1;
            }
            None => std::thread::sleep(Duration::from_micros(50)),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "reads did not complete"
        );
    }
    t0.elapsed()
}

/// Two devices in one process, each with its scheduler: each charges and
/// holds its own tenants' I/O at its own rate, and neither holds up the
/// other's.
#[test]
fn two_devices_have_two_schedulers() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    socp::qos::registry().clear();
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let mut ns = Vec::new();
    for name in ["slow", "fast"] {
        let disk = dir.path().join(format!("{name}.img"));
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        ns.push(format!("file:{}", disk.display()));
    }
    let srv = TestServer::start(
        &[
            &format!("name=va,ns={}", ns[0]),
            &format!("name=vb,ns={}", ns[1]),
        ],
        1,
    );
    let mut va = Driver::bring_up(srv.sock(0), MEM, 1, 64).unwrap();
    let mut vb = Driver::bring_up(srv.sock(1), MEM, 1, 64).unwrap();
    // The slow device carries 2000 4 KiB reads a second, the fast one
    // a million.
    for (name, rate, backend) in [("slow", 2000.0, &ns[0]), ("fast", 1e6, &ns[1])] {
        let model = dir.path().join(format!("{name}.json"));
        let m = json!({"write_cost": 4.0, "points": [{"tokens_per_s": rate, "p95_us": 100.0, "p99_us": 200.0}]});
        std::fs::write(&model, m.to_string()).unwrap();
        let r = rpc(
            "qos_device",
            json!({"path": model.to_str().unwrap(), "backend": backend, "qos": name}),
        )
        .unwrap();
        assert_eq!(r["qos"], name);
    }
    // A second scheduler on a device that has one is refused; a tenant
    // must say which scheduler it belongs to.
    let model = dir.path().join("slow.json");
    let e = rpc(
        "qos_device",
        json!({"path": model.to_str().unwrap(), "backend": ns[0], "qos": "again"}),
    )
    .unwrap_err();
    assert!(e.contains("has a scheduler already (slow)"), "{e}");
    let e = rpc("qos_tenant_add", json!({"spec": "name=x,ctrl=va,class=be"})).unwrap_err();
    assert!(e.contains("name one"), "{e}");
    rpc(
        "qos_tenant_add",
        json!({"spec": "name=ta,qos=slow,ctrl=va,class=be"}),
    )
    .unwrap();
    rpc(
        "qos_tenant_add",
        json!({"spec": "name=tb,qos=fast,ctrl=vb,class=be"}),
    )
    .unwrap();

    // Both controllers read at once, on one poller.
    let t = std::thread::spawn(move || {
        let took = reads(&mut va, 1200);
        (va, took)
    });
    let fast_took = reads(&mut vb, 1200);
    let (_va, slow_took) = t.join().unwrap();
    eprintln!("1200 reads: {slow_took:?} on the slow device, {fast_took:?} on the fast one");

    let tenant = |qos: &str, name: &str| {
        let st = rpc("qos_stats", json!({ "qos": qos })).unwrap();
        assert_eq!(st["qos"], qos, "{st}");
        let ts = st["tenants"].as_array().unwrap().clone();
        assert!(
            ts.iter()
                .all(|t| t["name"] != if name == "ta" { "tb" } else { "ta" }),
            "one scheduler's tenants only: {st}"
        );
        ts.into_iter().find(|t| t["name"] == name).unwrap()
    };
    let (ta, tb) = (tenant("slow", "ta"), tenant("fast", "tb"));
    // Each device charged its own tenant for every read; only the slow
    // one held any back (1200 tokens at 2000 a second: about 0.6 s).
    assert_eq!(ta["ios"].as_u64(), Some(1200), "{ta}");
    assert_eq!(tb["ios"].as_u64(), Some(1200), "{tb}");
    assert!(ta["throttled_cmds"].as_u64().unwrap() > 0, "{ta}");
    assert_eq!(tb["throttled_cmds"].as_u64(), Some(0), "{tb}");
    assert!(slow_took > Duration::from_millis(300), "{slow_took:?}");
    // Both schedulers at once without a name.
    let all = rpc("qos_stats", json!({})).unwrap();
    assert_eq!(all["schedulers"].as_array().map(Vec::len), Some(2), "{all}");
    // One off: its device's I/O is no longer held or charged.
    rpc("qos_device", json!({"off": true, "qos": "slow"})).unwrap();
    assert!(rpc("qos_stats", json!({"qos": "slow"})).unwrap()["error"].is_string());
    socp::qos::registry().clear();
    drop(srv);
}
