//! The split deployment: the host-driver here, `socp` in other processes
//! that are killed, stopped and replaced while a guest (the test driver)
//! keeps verified I/O in flight. Nothing may be lost, fail, complete twice
//! or read back wrong.

use leapio_host_driver::port::Timeouts;
use leapio_nvme::Status;
use leapio_tests::split::{kill9, term, SplitHost, Workload, CHUNK};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 4 MiB namespace.
const CHUNKS: u64 = 1024;
const QD: usize = 16;

fn timeouts() -> Timeouts {
    Timeouts {
        ack: Duration::from_secs(5),
        drain: Duration::from_secs(5),
        fence: Duration::from_secs(10),
    }
}

fn disk(host: &SplitHost) -> String {
    let path = host.dir.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(CHUNKS * CHUNK).unwrap();
    format!("ns=file:{}", path.display())
}

/// A guest running the workload on its own thread until `stop`; returns it
/// drained and fully verified.
fn guest(host: &SplitHost, seed: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Workload> {
    let sock = host.vfio.clone();
    std::thread::spawn(move || {
        let mut w = Workload::new(&sock, CHUNKS, QD, seed).expect("guest bring-up");
        while !stop.load(Ordering::Acquire) {
            w.run_for(Duration::from_millis(20));
        }
        w.drain(Duration::from_secs(30));
        w.verify_all();
        w
    })
}

fn report(host: &SplitHost, w: &Workload, what: &str) {
    eprintln!(
        "{what}: {} completions ({} writes, {} reads), {} errors",
        w.completed,
        w.writes,
        w.reads,
        w.errors.len()
    );
    if !w.errors.is_empty() {
        eprintln!("{}", host.socp_logs());
        panic!("{what}: {:#?}", &w.errors[..w.errors.len().min(20)]);
    }
}

/// xorshift for kill points.
fn next(r: &mut u64) -> u64 {
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    *r
}

#[test]
fn kill_9_with_io_in_flight_twenty_times() {
    let host = SplitHost::start("vm0", 4, timeouts());
    let ns = disk(&host);
    let mut socp = host.spawn_socp(&ns, &[]);
    assert!(
        host.wait_attached(Duration::from_secs(20)),
        "{}",
        host.socp_logs()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let g = guest(&host, 0x5eed_0001, stop.clone());
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(30 + next(&mut rng) % 220));
        kill9(&mut socp);
        let t = Instant::now();
        socp = host.spawn_socp(&ns, &[]);
        assert!(
            host.wait_attached(Duration::from_secs(20)),
            "{}",
            host.socp_logs()
        );
        worst = worst.max(t.elapsed());
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    let w = g.join().expect("guest");
    eprintln!("slowest restart to attach: {worst:?}");
    report(&host, &w, "20 x kill -9");
    assert!(w.completed > 1000, "too little I/O ran: {}", w.completed);
    let logs = host.socp_logs();
    assert!(
        logs.contains("completion queue resumed"),
        "no runtime resumed a queue:\n{logs}"
    );
    kill9(&mut socp);
}

#[test]
fn sigterm_and_restart_hand_over_cleanly() {
    let host = SplitHost::start("vm0", 4, timeouts());
    let ns = disk(&host);
    let mut socp = host.spawn_socp(&ns, &[]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    let stop = Arc::new(AtomicBool::new(false));
    let g = guest(&host, 0x5eed_0002, stop.clone());
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(150));
        let status = term(&mut socp, Duration::from_secs(20)).expect("socp stops on SIGTERM");
        assert!(status.success(), "socp exited with {status}");
        socp = host.spawn_socp(&ns, &[]);
        assert!(
            host.wait_attached(Duration::from_secs(20)),
            "{}",
            host.socp_logs()
        );
    }
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::Release);
    let w = g.join().expect("guest");
    report(&host, &w, "5 x SIGTERM + restart");
    // A clean stop leaves nothing for the successor to redo.
    let logs = host.socp_logs();
    assert!(!logs.contains("running again"), "{logs}");
    kill9(&mut socp);
}

#[test]
fn handover_upgrades_in_place() {
    let host = SplitHost::start("vm0", 4, timeouts());
    let ns = disk(&host);
    let mut old = host.spawn_socp(&ns, &[]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    let stop = Arc::new(AtomicBool::new(false));
    let g = guest(&host, 0x5eed_0003, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    // A plain second runtime is refused while the first serves (with a
    // file of its own: the first one's is claimed)...
    let other = host.dir.join("other.img");
    std::fs::File::create(&other)
        .unwrap()
        .set_len(CHUNKS * CHUNK)
        .unwrap();
    let mut refused = host.spawn_socp(&format!("ns=file:{}", other.display()), &[]);
    let status = refused.wait().unwrap();
    assert!(!status.success());
    assert!(host.socp_logs().contains("serves it (attach with handover"));
    // ...one with --handover takes over; the old one drains and exits.
    let mut new = host.spawn_socp(&ns, &["--handover"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let old_status = loop {
        if let Some(s) = old.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "{}", host.socp_logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(old_status.success(), "old runtime: {old_status}");
    assert!(host.wait_attached(Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let w = g.join().expect("guest");
    report(&host, &w, "handover");
    kill9(&mut new);
}

/// Stop the runtime exactly between two steps of the queue protocol; the
/// successor must finish the job from the queue-state area.
#[test]
fn crash_at_every_step_of_the_queue_protocol() {
    let host = SplitHost::start("vm0", 4, timeouts());
    let ns = disk(&host);
    let mut socp = host.spawn_socp(&ns, &[]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    let stop = Arc::new(AtomicBool::new(false));
    let g = guest(&host, 0x5eed_0004, stop.clone());
    std::thread::sleep(Duration::from_millis(100));
    let mut rng = 0xfeed_beef_u64;
    for point in [
        "sqe-fetched",
        "inflight-recorded",
        "executed",
        "completion-recorded",
        "cqe-written",
        "cqe-posted",
    ] {
        kill9(&mut socp);
        let n = 50 + next(&mut rng) % 400;
        socp = host.spawn_socp(&ns, &["--crash-at", &format!("{point}:{n}")]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = socp.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "socp never reached {point}:\n{}",
                host.socp_logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{point}: {status}");
        socp = host.spawn_socp(&ns, &[]);
        assert!(host.wait_attached(Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Release);
    let w = g.join().expect("guest");
    report(&host, &w, "crash points");
    let logs = host.socp_logs();
    // What each stop point leaves behind was found and dealt with.
    assert!(logs.contains("refetch=1"), "{logs}");
    assert!(logs.contains("reposted=1"), "{logs}");
    kill9(&mut socp);
}

/// A runtime that does not answer a queue deletion is killed (it may
/// still write into the queue), and the guest's command completes.
#[test]
fn a_runtime_that_left_its_descriptors_to_a_helper_is_not_fenced() {
    let host = SplitHost::start("vm0", 4, timeouts());
    let ns = disk(&host);
    let mut socp = host.spawn_socp(&ns, &[]);
    assert!(
        host.wait_attached(Duration::from_secs(20)),
        "{}",
        host.socp_logs()
    );
    // The runtime passes its queue-state area on to a helper, then dies.
    let qs = leapio_tests::split::reopen_fd_of(socp.id(), "leapio-queue-state")
        .expect("socp holds the queue-state area");
    let mut helper = leapio_tests::split::spawn_holding(&qs);
    drop(qs);
    kill9(&mut socp);
    assert!(host.wait_detached(Duration::from_secs(10)));
    let mut next = host.spawn_socp(&ns, &[]);
    assert!(
        !host.wait_attached(Duration::from_secs(2)),
        "a successor was admitted while the dead runtime's helper holds its shared memory"
    );
    kill9(&mut helper);
    assert!(
        host.wait_attached(Duration::from_secs(20)),
        "{}",
        host.socp_logs()
    );
    kill9(&mut next);
}

#[test]
fn a_runtime_that_never_acknowledges_a_deletion_is_fenced() {
    let t = Timeouts {
        ack: Duration::from_secs(2),
        drain: Duration::from_secs(1),
        fence: Duration::from_secs(10),
    };
    let host = SplitHost::start("vm0", 4, t);
    let ns = disk(&host);
    let mut socp = host.spawn_socp(&ns, &["--test-hang-deletes"]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    let mut w = Workload::new(&host.vfio, CHUNKS, QD, 7).unwrap();
    w.run_for(Duration::from_millis(100));
    w.drain(Duration::from_secs(10));
    let start = Instant::now();
    w.d.delete_queue_pair(1)
        .expect("the deletion completes once the runtime is fenced");
    let took = start.elapsed();
    let status = socp.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(took < Duration::from_secs(10), "deletion took {took:?}");
    // The controller lives on with a new runtime.
    let mut good = host.spawn_socp(&ns, &[]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    w.d.create_queue_pair(1, 256, 1).unwrap();
    let (c, _) = w.d.read_blocks(1, 1, 0, 512, 4096).unwrap();
    assert_eq!(c.status_field(), Status::SUCCESS);
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    kill9(&mut good);
}

/// With no runtime the admin queue answers and I/O waits; the first
/// runtime to come serves what was submitted meanwhile.
#[test]
fn io_waits_for_a_runtime() {
    let host = SplitHost::start("vm0", 4, timeouts());
    let ns = disk(&host);
    let mut socp = host.spawn_socp(&ns, &[]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    let mut w = Workload::new(&host.vfio, CHUNKS, QD, 9).unwrap();
    w.run_for(Duration::from_millis(100));
    kill9(&mut socp);
    // What the dead runtime posted, then commands submitted while nobody
    // serves: none of them completes.
    w.reap();
    w.fill();
    std::thread::sleep(Duration::from_millis(300));
    let n = w.reap();
    assert_eq!(n, 0, "commands completed with no runtime");
    assert_eq!(w.in_flight(), QD);
    // The admin queue still answers.
    let id = w.d.identify_controller().expect("identify with no runtime");
    assert_ne!(id.nn.get(), 0);
    socp = host.spawn_socp(&ns, &[]);
    w.drain(Duration::from_secs(30));
    w.verify_all();
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    kill9(&mut socp);
}

/// VMs come and go: controllers and namespaces added and removed on a
/// running host-driver and socp (the control socket), while another VM's
/// I/O goes on.
#[test]
fn controllers_and_namespaces_come_and_go() {
    use leapio_host_driver::HostCtrlSpec;
    use leapio_service::control::call;
    use serde_json::json;
    let host = SplitHost::start("vm0", 4, timeouts());
    let ns = disk(&host);
    let ctl = host.dir.join("socp-ctl.sock");
    let ctl_arg = ctl.display().to_string();
    let mut socp = host.spawn_socp(&ns, &["--control", &ctl_arg]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    let stop = Arc::new(AtomicBool::new(false));
    let g = guest(&host, 0x5eed_0005, stop.clone());
    // A second VM appears: the host-driver gets its controller, the
    // runtime serves it.
    let vm1 = host.dir.join("vm1.sock");
    host.host
        .add_controller(&HostCtrlSpec::new("vm1", &vm1))
        .unwrap();
    let d1 = host.dir.join("vm1.img");
    std::fs::File::create(&d1)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let r = call(
        &ctl,
        "ctrl_add",
        json!({ "spec": format!("name=vm1,ns=file:{}", d1.display()) }),
    )
    .expect("ctrl_add on socp");
    assert_eq!(r["name"], "vm1");
    let mut d = leapio_tests::Driver::bring_up(&vm1, 16 << 20, 1, 64).unwrap();
    let data = vec![0x5au8; 4096];
    assert!(d
        .write_blocks(1, 1, 8, 512, &data)
        .unwrap()
        .status_field()
        .is_success());
    // A namespace is added to it, then removed.
    let d2 = host.dir.join("vm1-b.img");
    std::fs::File::create(&d2)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let r = call(
        &ctl,
        "ns_add",
        json!({ "ctrl": "vm1", "ns": format!("file:{}", d2.display()) }),
    )
    .expect("ns_add");
    assert_eq!(r["nsid"], 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.identify_controller().unwrap().nn.get() < 2 {
        assert!(Instant::now() < deadline, "namespace 2 never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (c, _) = d.read_blocks(1, 2, 0, 512, 4096).unwrap();
    assert!(c.status_field().is_success(), "{}", c.status_field());
    assert_eq!(d.identify_namespace(2).unwrap().nsze.get(), 8192);
    call(&ctl, "ns_remove", json!({ "ctrl": "vm1", "nsid": 2 })).expect("ns_remove");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (c, _) = d.read_blocks(1, 2, 0, 512, 4096).unwrap();
        if c.status_field().same_code(Status::INVALID_NAMESPACE) {
            break;
        }
        assert!(Instant::now() < deadline, "namespace 2 still served");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (c, back) = d.read_blocks(1, 1, 8, 512, 4096).unwrap();
    assert!(c.status_field().is_success() && back == data);
    // Mistakes get messages, not damage.
    let e = call(&ctl, "ctrl_add", json!({ "spec": "name=vm1,ns=ram:1M" })).unwrap_err();
    assert!(e.contains("served already"), "{e}");
    let e = call(&ctl, "ctrl_add", json!({ "spec": "name=nosuch,ns=ram:1M" })).unwrap_err();
    assert!(e.contains("no controller named nosuch"), "{e}");
    let e = call(&ctl, "ns_remove", json!({ "ctrl": "vm1", "nsid": 9 })).unwrap_err();
    assert!(e.contains("no namespace 9"), "{e}");
    // The VM goes away.
    drop(d);
    call(&ctl, "ctrl_remove", json!({ "name": "vm1" })).expect("ctrl_remove");
    host.host.remove_controller("vm1").unwrap();
    assert!(host.host.status().iter().all(|c| c.name != "vm1"));
    let st = call(&ctl, "status", json!({})).unwrap();
    assert_eq!(st["controllers"].as_array().map(Vec::len), Some(1), "{st}");
    // Each namespace's backend as it is now (a flash one's FTL figures).
    let state = st["controllers"][0]["namespaces"][0]["state"].as_str();
    assert!(state.is_some_and(|s| s.contains("B blocks")), "{st}");
    assert!(
        st["controllers"][0]["namespaces"][0]["copied_bytes"].is_u64(),
        "{st}"
    );
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Release);
    let w = g.join().expect("guest");
    report(&host, &w, "vm0 while vm1 came and went");
    kill9(&mut socp);
}

/// After a restart the new runtime raises each completion queue's
/// interrupt once (the guest may have missed one), and that interrupt
/// must not swallow the next completion's: a guest driver that sleeps on
/// interrupts would time out.
#[test]
fn a_resumed_queue_still_interrupts() {
    let host = SplitHost::start("vm0", 4, timeouts());
    let ns = disk(&host);
    let mut socp = host.spawn_socp(&ns, &[]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    let mut w = Workload::new(&host.vfio, CHUNKS, QD, 13).unwrap();
    w.run_for(Duration::from_millis(50));
    w.drain(Duration::from_secs(10));
    kill9(&mut socp);
    w.d.take_irqs(1);
    socp = host.spawn_socp(&ns, &[]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    // The resumed queue's interrupt.
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.d.take_irqs(1) == 0 {
        assert!(Instant::now() < deadline, "no interrupt after the resume");
        std::thread::sleep(Duration::from_millis(5));
    }
    // One command on the idle queue: its completion comes with an interrupt.
    for i in 0..3u64 {
        let buf = w.d.mem.alloc(4096, 4096);
        let sqe =
            w.d.rw_sqe(leapio_nvme::IoOpcode::READ, 1, i * 8, 8, buf, 4096, 0);
        w.d.push(1, sqe);
        w.d.ring(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut irqs = 0;
        while irqs == 0 {
            assert!(
                Instant::now() < deadline,
                "command {i} after the resume completed without an interrupt"
            );
            std::thread::sleep(Duration::from_millis(5));
            irqs = w.d.take_irqs(1);
        }
        let c = w.d.poll(1).expect("the completion the interrupt announced");
        assert!(c.status_field().is_success());
    }
    kill9(&mut socp);
}

/// The all-in-one leapio stops promptly on SIGTERM once its guest has
/// gone (its embedded host-driver lets go of the runtime and hears back).
#[test]
fn all_in_one_stops_promptly() {
    let dir = leapio_tests::server::test_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("aio.sock");
    let mut socp = std::process::Command::new(leapio_tests::split::bin("leapio"))
        .arg("--ctrl")
        .arg(format!("sock={},ns=ram:4M", sock.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no vfio-user socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    {
        let mut w = Workload::new(&sock, 256, 4, 17).unwrap();
        w.run_for(Duration::from_millis(50));
        w.drain(Duration::from_secs(10));
        assert!(w.errors.is_empty(), "{:?}", w.errors);
    }
    let t = Instant::now();
    let status = term(&mut socp, Duration::from_secs(20)).expect("leapio exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest turns its volatile write cache off (Set Features): the
/// host-driver tells the runtime, which then writes through (FUA) until it
/// is turned on again.
#[test]
fn the_guest_turning_the_write_cache_off_reaches_the_runtime() {
    use leapio_nvme::{AdminOpcode, Sqe};
    use leapio_service::control::call;
    use serde_json::json;
    let host = SplitHost::start("vm0", 2, timeouts());
    let ns = disk(&host);
    let ctl = host.dir.join("socp-ctl.sock");
    let ctl_arg = ctl.display().to_string();
    let mut socp = host.spawn_socp(&ns, &["--control", &ctl_arg]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    let mut d = leapio_tests::Driver::bring_up(&host.vfio, 16 << 20, 1, 64).unwrap();
    let runtime_wc = || {
        let st = call(&ctl, "status", json!({})).expect("socp status");
        st["controllers"][0]["write_cache"].as_bool()
    };
    assert_eq!(runtime_wc(), Some(true), "enabled by default");
    for on in [false, true] {
        let c = d
            .admin(Sqe {
                opcode: AdminOpcode::SET_FEATURES,
                cdw10: 0x06.into(),
                cdw11: u32::from(on).into(),
                ..Default::default()
            })
            .unwrap();
        assert!(c.status_field().is_success(), "Set Features VWC {on}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while runtime_wc() != Some(on) {
            assert!(Instant::now() < deadline, "the runtime never saw VWC {on}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let data = vec![u8::from(on) + 1; 4096];
        let c = d.write_blocks(1, 1, 64, 512, &data).unwrap();
        assert!(c.status_field().is_success());
        let (c, back) = d.read_blocks(1, 1, 64, 512, 4096).unwrap();
        assert!(c.status_field().is_success() && back == data);
    }
    term(&mut socp, Duration::from_secs(15));
}

/// A runtime serving a namespace that lives on a remote NVMe/TCP target
/// dies with writes in flight: the successor runs them again only once
/// the target can no longer execute the dead runtime's copies (its
/// keep-alive timeout and a second), so an old copy never lands over a
/// newer write; the guest's verified I/O loses nothing.
#[test]
fn a_dead_runtimes_remote_writes_run_again_only_once_they_cannot_land() {
    const NQN: &str = "nqn.2026-12.io.leapio:split-remote";
    let host = SplitHost::start("vm0", 4, timeouts());
    let path = host.dir.join("remote.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(CHUNKS * CHUNK)
        .unwrap();
    // The target, on a port it picks (read back from its log).
    let log = host.dir.join("target.out");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            kill9(&mut self.0);
        }
    }
    let _target = Reap(
        std::process::Command::new(leapio_tests::split::bin("socp"))
            .args([
                "--tcp-target",
                &format!("listen=127.0.0.1:0,nqn={NQN},ns=file:{}", path.display()),
            ])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("target"),
    );
    let t0 = Instant::now();
    let port = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(p) = leapio_tests::split::tcp_target_port(&text) {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "target: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let ns = format!("ns=nvme-tcp:127.0.0.1:{port}/{NQN}?kato=2000");
    let mut socp = host.spawn_socp(&ns, &[]);
    assert!(
        host.wait_attached(Duration::from_secs(20)),
        "{}",
        host.socp_logs()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let g = guest(&host, 0x5eed_0007, stop.clone());
    // Killed under load until a death leaves writes in flight.
    let mut held = false;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        kill9(&mut socp);
        let t = Instant::now();
        socp = host.spawn_socp(&ns, &[]);
        assert!(
            host.wait_attached(Duration::from_secs(20)),
            "{}",
            host.socp_logs()
        );
        std::thread::sleep(Duration::from_millis(500));
        let logs = host.socp_logs();
        if logs.contains("can no longer land") {
            assert!(logs.contains("wait_ms=3000"), "{logs}");
            // The held writes ran and the guest goes on.
            std::thread::sleep(Duration::from_secs(3).saturating_sub(t.elapsed()));
            held = true;
            break;
        }
    }
    stop.store(true, Ordering::Release);
    let w = g.join().expect("guest");
    report(&host, &w, "remote namespace, runtime killed");
    assert!(
        held,
        "no death left a write in flight:\n{}",
        host.socp_logs()
    );
    kill9(&mut socp);
}

/// Zoned commands are not idempotent: a runtime killed after its backend
/// ran one and before its completion was recorded leaves it to its
/// successor, which must complete it once. A Write (its blocks are below
/// the write pointer), an Append (at the LBA it was given, appended once),
/// a Close of a zone the first run already emptied; an explicit Open holds
/// across runtimes.
#[test]
fn zoned_commands_run_again_after_a_crash_complete_once() {
    use leapio_nvme::zns::Zsa;
    use leapio_nvme::{Cqe, IoOpcode, Sqe};
    use leapio_tests::driver::Driver;
    use std::process::Child;

    const BS: u32 = 4096;
    let host = SplitHost::start("vm0", 1, timeouts());
    // 2 x 2 dies x 8 blocks x 4 pages of 4 KiB: 8 zones of 16 blocks.
    let ns = format!(
        "ns=zns:{}?channels=2&dies=2&blocks=8&pages=4&timing=0&max_open=4&max_active=6",
        host.dir.join("z.nand").display()
    );
    let mut socp = host.spawn_socp(&ns, &[]);
    assert!(host.wait_attached(Duration::from_secs(20)));
    let mut d = Driver::bring_up(&host.vfio, 16 << 20, 1, 32).expect("bring-up");
    d.timeout = Duration::from_secs(30);

    let replace = |socp: &mut Child, extra: &[&str]| {
        kill9(socp);
        assert!(host.wait_detached(Duration::from_secs(20)));
        *socp = host.spawn_socp(&ns, extra);
        assert!(
            host.wait_attached(Duration::from_secs(20)),
            "{}",
            host.socp_logs()
        );
    };
    // The command reaches a runtime that dies once its backend ran it; the
    // successor runs it again.
    let crash_on = |d: &mut Driver, socp: &mut Child, sqe: Sqe| -> Cqe {
        replace(socp, &["--crash-at", "executed:1"]);
        let cid = d.push(1, sqe);
        d.ring(1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while socp.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "socp never ran the command:\n{}",
                host.socp_logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(host.wait_detached(Duration::from_secs(20)));
        *socp = host.spawn_socp(&ns, &[]);
        let c = d.wait(1).expect("the command completes");
        assert_eq!(c.cid.get(), cid);
        c
    };
    let zone_send = |zslba: u64, zsa: u8| Sqe {
        opcode: IoOpcode::ZONE_MGMT_SEND,
        nsid: 1.into(),
        cdw10: u32::try_from(zslba).unwrap().into(),
        cdw13: u32::from(zsa).into(),
        ..Default::default()
    };
    let pattern = |seed: u8, blocks: usize| -> Vec<u8> {
        (0..blocks * BS as usize)
            .map(|i| {
                seed.wrapping_mul(31)
                    .wrapping_add(u8::try_from(i % 251).unwrap_or(0))
            })
            .collect()
    };

    // A Write at zone 1's write pointer.
    let w = pattern(1, 4);
    let buf = d.mem.alloc(w.len() as u64, 4096);
    d.mem.write(buf, &w);
    let sqe = d.rw_sqe(IoOpcode::WRITE, 1, 16, 4, buf, w.len() as u64, 0);
    let c = crash_on(&mut d, &mut socp, sqe);
    assert_eq!(c.status_field(), Status::SUCCESS, "{}", host.socp_logs());
    let c = d.write_blocks(1, 1, 20, BS, &pattern(2, 1)).unwrap();
    assert_eq!(
        c.status_field(),
        Status::SUCCESS,
        "the write pointer moved once"
    );

    // An Append to zone 2.
    let a = pattern(3, 3);
    let buf = d.mem.alloc(a.len() as u64, 4096);
    d.mem.write(buf, &a);
    let sqe = d.rw_sqe(IoOpcode::ZONE_APPEND, 1, 32, 3, buf, a.len() as u64, 0);
    let c = crash_on(&mut d, &mut socp, sqe);
    assert_eq!(c.status_field(), Status::SUCCESS, "{}", host.socp_logs());
    assert_eq!(c.dw0.get(), 32, "the LBA it was given");
    let c = d.write_blocks(1, 1, 35, BS, &pattern(4, 1)).unwrap();
    assert_eq!(c.status_field(), Status::SUCCESS, "appended once");

    // An explicit Open outlives its runtime; a Close run twice succeeds.
    let c = d.command(1, zone_send(48, Zsa::OPEN)).unwrap();
    assert_eq!(c.status_field(), Status::SUCCESS);
    let c = d.command(1, zone_send(64, Zsa::OPEN)).unwrap();
    assert_eq!(c.status_field(), Status::SUCCESS);
    replace(&mut socp, &[]);
    let c = d.command(1, zone_send(64, Zsa::CLOSE)).unwrap();
    assert_eq!(c.status_field(), Status::SUCCESS, "zone 4 was still open");
    let c = crash_on(&mut d, &mut socp, zone_send(48, Zsa::CLOSE));
    assert_eq!(c.status_field(), Status::SUCCESS, "{}", host.socp_logs());

    // The data, once each.
    let (c, back) = d.read_blocks(1, 1, 16, BS, 4 * u64::from(BS)).unwrap();
    assert_eq!(c.status_field(), Status::SUCCESS);
    assert!(back == w, "zone 1's data");
    let (_, back) = d.read_blocks(1, 1, 32, BS, 3 * u64::from(BS)).unwrap();
    assert!(back == a, "zone 2's data");
    let logs = host.socp_logs();
    assert_eq!(
        logs.matches("running again the commands the previous runtime had in flight")
            .count(),
        3,
        "{logs}"
    );
    kill9(&mut socp);
}
