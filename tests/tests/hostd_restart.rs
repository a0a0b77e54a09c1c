//! The host-driver replaced while a guest (the test driver, a vfio-user
//! client that never reconnects) keeps verified I/O in flight: upgraded in
//! place (`--handover`) and killed with SIGKILL then started again, its
//! connections, memory, interrupts and device state kept by the fd keeper
//! (`--keep`). Nothing may be lost, fail, complete twice or read back
//! wrong, and the guest's connection is never closed.

use leapio_tests::kept::{wait_for, Guest, KeptSplit};
use std::time::Duration;

#[test]
fn the_host_driver_is_upgraded_and_killed_under_io() {
    let mut k = KeptSplit::start().unwrap_or_else(|e| panic!("{e}"));
    let mut socp = k.spawn_socp(&k.file_ns(), &[]);
    assert!(k.wait_attached(Duration::from_secs(20)), "{}", k.logs());
    let g = Guest::start(&k, 0x5eed_4057);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        k.upgrade().unwrap_or_else(|e| panic!("upgrade: {e}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..5 {
        k.crash()
            .unwrap_or_else(|e| panic!("restart after SIGKILL: {e}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let w = g.finish();
    eprintln!(
        "{} completions ({} writes, {} reads), longest I/O pause {:?}",
        w.completed, w.writes, w.reads, w.longest_pause
    );
    assert!(
        w.errors.is_empty(),
        "{:#?}\n{}",
        &w.errors[..w.errors.len().min(20)],
        k.logs()
    );
    assert!(w.completed > 1000, "too little I/O ran: {}", w.completed);
    // The guest's connection was never closed: no host-driver saw a client
    // connect after the first; each successor took the controller over.
    let logs = k.logs();
    assert_eq!(
        logs.matches("vfio-user client connected").count(),
        1,
        "{logs}"
    );
    assert_eq!(
        logs.matches("taken over from the previous host-driver")
            .count(),
        10,
        "{logs}"
    );
    // A clean stop lets go of everything, the keeper included.
    let keeper = k.dir.join("keeper.sock");
    let mut hostd = k.hostd.take().expect("host-driver");
    let status = leapio_tests::split::term(&mut hostd, Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", k.logs());
    assert!(
        wait_for(Duration::from_secs(5), || {
            std::os::unix::net::UnixStream::connect(&keeper).is_err()
        }),
        "the keeper outlived a clean stop"
    );
    leapio_tests::split::kill9(&mut socp);
}

#[test]
fn a_second_host_driver_without_handover_is_refused() {
    let k = KeptSplit::start().unwrap_or_else(|e| panic!("{e}"));
    let mut socp = k.spawn_socp(&k.file_ns(), &[]);
    assert!(k.wait_attached(Duration::from_secs(20)), "{}", k.logs());
    let out = std::process::Command::new(leapio_tests::split::bin("leapio-hostd"))
        .arg("--link")
        .arg(format!("unix:{}", k.dir.join("link2.sock").display()))
        .arg("--keep")
        .arg(k.dir.join("keeper.sock"))
        .output()
        .expect("run leapio-hostd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("owns this keeper") && err.contains("--handover"),
        "{err}"
    );
    // The running one still serves.
    assert!(k.wait_attached(Duration::from_secs(1)), "{}", k.logs());
    leapio_tests::split::kill9(&mut socp);
}
