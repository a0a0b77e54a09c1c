//! Many VMs on one host-driver and one runtime: threads do not grow with
//! the controllers, and every guest is served, whichever one and in any
//! order, while the others sit idle.

use leapio_host_driver::port::Timeouts;
use leapio_host_driver::HostCtrlSpec;
use leapio_tests::split::{bin, kill9, SplitHost};
use leapio_tests::Driver;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VMS: usize = 100;
/// Guests that connect and do I/O (the others only have a controller).
const GUESTS: usize = 24;

fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_hundred_vms_take_no_more_threads_than_one_and_each_guest_is_served() {
    let host = SplitHost::start(
        "vm0",
        2,
        Timeouts {
            ack: Duration::from_secs(10),
            drain: Duration::from_secs(10),
            fence: Duration::from_secs(10),
        },
    );
    let me = std::process::id();
    let with_one = threads_of(me);
    let mut socks = vec![host.vfio.clone()];
    for i in 1..VMS {
        let sock = host.dir.join(format!("vm{i}.sock"));
        let mut spec = HostCtrlSpec::new(&format!("vm{i}"), &sock);
        spec.limits.io_queues = 2;
        host.host.add_controller(&spec).expect("controller");
        socks.push(sock);
    }
    let with_all = threads_of(me);
    assert!(
        with_all <= with_one + 2,
        "the host-driver went from {with_one} threads with one controller to {with_all} with {VMS}"
    );

    // One runtime serving them all.
    let log = std::fs::File::create(host.dir.join("socp-scale.log")).unwrap();
    let mut cmd = Command::new(bin("socp"));
    cmd.arg("--link")
        .arg(format!("unix:{}", host.link.display()));
    for i in 0..VMS {
        cmd.arg("--ctrl").arg(format!("name=vm{i},ns=ram:1M"));
    }
    let mut socp = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn socp");
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.host.status().iter().any(|c| c.runtime == 0) {
        if Instant::now() > deadline {
            kill9(&mut socp);
            panic!(
                "not every controller was attached in 60 s: {} of {VMS}\n{}",
                host.host.status().iter().filter(|c| c.runtime != 0).count(),
                host.socp_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let socp_threads = threads_of(socp.id());

    // Guests on a spread of controllers, last ones first; all connected
    // at once, each doing its I/O in turn while the others are idle.
    let picks: Vec<usize> = (0..GUESTS).map(|g| VMS - 1 - g * (VMS / GUESTS)).collect();
    let mut guests: Vec<(usize, Driver)> = picks
        .iter()
        .map(|&i| {
            let d = Driver::bring_up(&socks[i], 1 << 20, 2, 16)
                .unwrap_or_else(|e| panic!("guest on vm{i}: {e}\n{}", host.socp_logs()));
            (i, d)
        })
        .collect();
    let connected = threads_of(me);
    for round in 0..3u8 {
        for (i, d) in guests.iter_mut() {
            let salt = u8::try_from(*i % 256).unwrap() ^ round;
            let block: Vec<u8> = (0..=255u8).chain(0..=255u8).map(|b| b ^ salt).collect();
            let qid = 1 + u16::from(round % 2);
            let c = d
                .write_blocks(qid, 1, u64::from(round), 512, &block)
                .unwrap();
            Driver::check("write", &c).unwrap();
            let (c, back) = d.read_blocks(qid, 1, u64::from(round), 512, 512).unwrap();
            Driver::check("read", &c).unwrap();
            assert_eq!(
                back, block,
                "vm{i} read back something else (round {round})"
            );
        }
    }
    assert!(
        connected <= with_one + 4,
        "the host-driver went from {with_one} threads to {connected} with a runtime and {GUESTS} guests connected"
    );
    assert!(
        socp_threads < 24,
        "socp runs {socp_threads} threads for {VMS} controllers"
    );
    drop(guests);
    kill9(&mut socp);
}
