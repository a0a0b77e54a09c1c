//! Many VMs on one host-driver and one runtime: threads do not grow with
//! the controllers, and every guest is served, whichever one and in any
//! order, while the others sit idle.

use leapio_host_driver::port::Timeouts;
use leapio_host_driver::HostCtrlSpec;
use leapio_tests::split::{bin, kill9, SplitHost};
use leapio_tests::vfio_user_client::Client;
use leapio_tests::Driver;
use leapio_vmm_shim::vfio_user::wire;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VMS: usize = 100;
/// Guests that connect and do I/O (the others only have a controller).
const GUESTS: usize = 24;

fn threads_of(pid: u32) -> u64 {
    leapio_tests::proc_stat::status_field(&pid.to_string(), "Threads").unwrap_or(0)
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

/// Clients that send requests and never read the replies (more of them
/// than the host-driver has pool threads) hold up no other VM: their
/// replies wait in their connections, not in a thread.
#[test]
fn clients_that_do_not_read_their_replies_hold_up_no_other_vm() {
    let host = SplitHost::start(
        "vm0",
        2,
        Timeouts {
            ack: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            fence: Duration::from_secs(5),
        },
    );
    let mut stalled = Vec::new();
    for i in 1..=6 {
        let sock = host.dir.join(format!("vm{i}.sock"));
        host.host
            .add_controller(&HostCtrlSpec::new(&format!("vm{i}"), &sock))
            .expect("controller");
        let stream = UnixStream::connect(&sock).expect("connect");
        let client = Client::from_stream(stream.try_clone().unwrap()).expect("negotiate");
        // 4 KiB config-space reads, sent until the socket takes no more:
        // the server stops reading once a reply finds the client's buffer
        // full.
        let req = wire::RegionAccess {
            offset: 0u64.into(),
            region: vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX.into(),
            count: 4096u32.into(),
        };
        let msg = wire::message(
            1,
            wire::cmd::REGION_READ,
            0,
            0,
            &[zerocopy::IntoBytes::as_bytes(&req)],
        );
        stream.set_nonblocking(true).unwrap();
        let mut sent = 0usize;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut w = &stream;
        while Instant::now() < deadline {
            match w.write(&msg) {
                Ok(n) if n == msg.len() => sent += 1,
                // A partial message: the rest is never sent (the server
                // waits for it, as for any slow client).
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if sent > 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("vm{i}: {e}"),
            }
        }
        assert!(sent > 10, "vm{i}: only {sent} requests went out");
        stalled.push((client, stream));
    }
    // Let the host-driver fill their sockets with replies.
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut d = Driver::connect(&host.vfio, 1 << 20).expect("vm0 connects");
    d.enable(32).expect("vm0's controller is enabled");
    let id = d
        .identify_controller()
        .expect("vm0's admin queue is served");
    assert!(id.sn.iter().any(|&b| b != b' '), "a serial number");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "vm0 took {:?} to come up beside 6 stalled clients",
        t0.elapsed()
    );
    drop(stalled);
}
