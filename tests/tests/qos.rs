//! QoS end to end, no VM: two controllers whose namespaces are one emulated
//! flash device (a real latency-vs-load curve), one of them flooding it
//! with writes, the other reading at a fixed rate under a p95 SLO. Tenants
//! are configured at run time through the control socket's methods.
//! Timing is only a loose bound here (a shared 2-core machine); the
//! figures are the benchmark's job (scripts/bench-qos.sh).

use leapio_nvme::{IoOpcode, Status};
use leapio_tests::driver::PAGE;
use leapio_tests::server::TestServer;
use leapio_tests::Driver;
use leapio_transports::{open_backend, BackendSpec, Completion, IoKind, IoRequest};
use serde_json::json;
use socp::tcp_target::{TcpTarget, TcpTargetSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The scheduler is one per process: the tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

const MEM: u64 = 32 << 20;
/// Slow programs (2 ms) on 4 dies: a writer at QD32 keeps every die busy.
const FLASH: &str = "channels=2&dies=2&blocks=64&pages=32&read=200&prog=2000&erase=5000";
/// Blocks the LC tenant reads (written first, so reads touch the media).
const LC_BLOCKS: u64 = 512;

/// A device model for FLASH, written by hand (4 dies x 200 us reads:
/// 20k reads/s at most; writes 10x).
fn write_model(path: &std::path::Path) {
    let m = json!({
        "backend": "test flash",
        "write_cost": 10.0,
        "points": [
            {"tokens_per_s": 2000.0, "p95_us": 400.0, "p99_us": 600.0},
            {"tokens_per_s": 8000.0, "p95_us": 1500.0, "p99_us": 2500.0},
            {"tokens_per_s": 14000.0, "p95_us": 4000.0, "p99_us": 8000.0},
            {"tokens_per_s": 19000.0, "p95_us": 40000.0, "p99_us": 60000.0}
        ]
    });
    std::fs::write(path, m.to_string()).unwrap();
}

fn rpc(method: &str, params: serde_json::Value) -> Result<serde_json::Value, String> {
    socp::qos::global()
        .handle(method, &params)
        .expect("a QoS method")
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
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let lba = seed % LC_BLOCKS;
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
            None => std::thread::sleep(Duration::from_micros(20)),
        }
    }
    lat
}

#[test]
fn a_flooding_tenant_does_not_break_the_other_tenants_slo() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
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

    // QoS on at run time: the device model, then the tenants.
    let model = dir.path().join("dev.json");
    write_model(&model);
    rpc("qos_device", json!({"path": model.to_str().unwrap()})).unwrap();
    // Refused: at p95 1.5 ms the device carries 8000 tokens/s (7600
    // reservable); 1000 IOPS at 50:50 with writes at 10 needs 5500, fine;
    // 2000 IOPS needs 11000.
    let e = rpc(
        "qos_tenant_add",
        json!({"spec": "name=lc,ctrl=lc,class=lc,slo=p95:1500us,iops=2000,rw=50:50"}),
    )
    .unwrap_err();
    assert!(e.contains("needs 11000 tokens/s"), "{e}");
    assert!(e.contains("carries 8000 tokens/s at p95 1500us"), "{e}");
    // Admitted: 1000 reads/s under p95 4 ms (14000 tokens/s at that SLO).
    rpc(
        "qos_tenant_add",
        json!({"spec": "name=lc,ctrl=lc,class=lc,slo=p95:4ms,iops=1000"}),
    )
    .unwrap();
    rpc(
        "qos_tenant_add",
        json!({"spec": "name=be,ctrl=be,class=be"}),
    )
    .unwrap();

    // The flood: 4 KiB random writes at QD32, as fast as they complete.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let buf = be.mem.alloc(PAGE * 32, PAGE);
            let blocks = 5000u64;
            let mut seed = 99u64;
            let mut inflight = 0;
            let mut done = 0u64;
            let next = |s: &mut u64| {
                *s ^= *s << 13;
                *s ^= *s >> 7;
                *s ^= *s << 17;
                LC_BLOCKS + *s % blocks
            };
            while !stop.load(Ordering::Relaxed) || inflight > 0 {
                while inflight < 32 && !stop.load(Ordering::Relaxed) {
                    let lba = next(&mut seed);
                    let slot = usize::try_from(done % 32).unwrap_or(0) + inflight;
                    let slot = slot % 32;
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
                    None => std::thread::sleep(Duration::from_micros(50)),
                }
            }
            done
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut lat = paced_reads(&mut lc, 1000.0, 3.0);
    stop.store(true, Ordering::Relaxed);
    let be_done = flood.join().unwrap();

    lat.sort();
    assert!(lat.len() >= 2400, "LC got {} of ~3000 reads", lat.len());
    let p95 = lat[lat.len() * 95 / 100];
    // The SLO is 4 ms; a loose bound for a shared machine.
    assert!(
        p95 < Duration::from_millis(25),
        "LC p95 {p95:?} beside the flood"
    );
    // BE was throttled, not starved.
    assert!(be_done > 100, "BE completed only {be_done} writes");
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
    assert!(l["ios"].as_u64().unwrap() >= 2400, "{st}");
    assert!(b["ios"].as_u64().unwrap() >= be_done.min(100), "{st}");
    assert!(b["throttled_cmds"].as_u64().unwrap() > 0, "{st}");
    assert!(b["tokens_used"].as_f64().unwrap() >= 10.0 * 100.0, "{st}");
    eprintln!(
        "LC p95 {p95:?} ({} reads); BE {be_done} writes; stats {st}",
        lat.len()
    );

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
    let dir = tempfile::tempdir().unwrap();
    // A device that carries 2000 tokens/s: 4 KiB reads at 2000 IOPS.
    let model = dir.path().join("dev.json");
    let m = json!({"write_cost": 4.0, "points": [{"tokens_per_s": 2000.0, "p95_us": 100.0, "p99_us": 200.0}]});
    std::fs::write(&model, m.to_string()).unwrap();
    rpc("qos_device", json!({"path": model.to_str().unwrap()})).unwrap();
    rpc(
        "qos_tenant_add",
        json!({"spec": format!("name=be,hostnqn={HOST},class=be")}),
    )
    .unwrap();
    let spec: TcpTargetSpec = format!("listen=127.0.0.1:0,nqn={NQN},ns=ram:16M")
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
    drop(q);
    drop(b);
    rpc("qos_device", json!({"off": true})).unwrap();
    stop.store(true, Ordering::Release);
    target.join();
}
