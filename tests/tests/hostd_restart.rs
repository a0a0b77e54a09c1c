//! The host-driver replaced while a guest (the test driver, a vfio-user
//! client that never reconnects) keeps verified I/O in flight: upgraded in
//! place (`--handover`) and killed with SIGKILL then started again, its
//! connections, memory, interrupts and device state kept by the fd keeper
//! (`--keep`). Nothing may be lost, fail, complete twice or read back
//! wrong, and the guest's connection is never closed.

use leapio_tests::split::{bin, kill9, term, Workload, CHUNK};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNKS: u64 = 1024;
const QD: usize = 16;

struct Deployment {
    dir: PathBuf,
    hostd_n: usize,
}

impl Deployment {
    fn new() -> Deployment {
        let dir = leapio_tests::server::test_dir();
        std::fs::create_dir_all(&dir).unwrap();
        Deployment { dir, hostd_n: 0 }
    }

    fn vfio(&self) -> PathBuf {
        self.dir.join("vm0.sock")
    }

    fn hostd(&mut self, handover: bool) -> Child {
        self.hostd_n += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("hostd-{}.log", self.hostd_n))).unwrap();
        let mut c = Command::new(bin("leapio-hostd"));
        c.arg("--link")
            .arg(format!("unix:{}", self.dir.join("link.sock").display()))
            .arg("--keep")
            .arg(self.dir.join("keeper.sock"))
            .arg("--ctrl")
            .arg(format!(
                "name=vm0,sock={},io-queues=4",
                self.vfio().display()
            ))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if handover {
            c.arg("--handover");
        }
        c.spawn().expect("spawn leapio-hostd")
    }

    fn socp(&self) -> Child {
        let img = self.dir.join("disk.img");
        if !img.exists() {
            std::fs::File::create(&img)
                .unwrap()
                .set_len(CHUNKS * CHUNK)
                .unwrap();
        }
        let log = std::fs::File::create(self.dir.join("socp.log")).unwrap();
        Command::new(bin("socp"))
            .arg("--link")
            .arg(format!("unix:{}", self.dir.join("link.sock").display()))
            .arg("--ctrl")
            .arg(format!("name=vm0,ns=file:{}", img.display()))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn socp")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.hostd_n {
            out += &format!(
                "---- hostd-{n}.log\n{}",
                self.log(&format!("hostd-{n}.log"))
            );
        }
        out + "---- socp.log\n" + &self.log("socp.log")
    }

    /// Wait until the current host-driver's log shows a runtime attached.
    fn wait_attached(&self, timeout: Duration) -> bool {
        let name = format!("hostd-{}.log", self.hostd_n);
        wait_for(timeout, || self.log(&name).contains("runtime attached"))
    }
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn the_host_driver_is_upgraded_and_killed_under_io() {
    let mut d = Deployment::new();
    let mut hostd = d.hostd(false);
    assert!(
        wait_for(Duration::from_secs(10), || d
            .log("hostd-1.log")
            .contains("accepting runtimes")),
        "{}",
        d.logs()
    );
    let mut socp = d.socp();
    assert!(d.wait_attached(Duration::from_secs(20)), "{}", d.logs());
    let stop = Arc::new(AtomicBool::new(false));
    let sock = d.vfio();
    let st = stop.clone();
    let g = std::thread::spawn(move || {
        let mut w = Workload::new(&sock, CHUNKS, QD, 0x5eed_4057).expect("guest bring-up");
        while !st.load(Ordering::Acquire) {
            w.run_for(Duration::from_millis(20));
        }
        w.drain(Duration::from_secs(30));
        w.verify_all();
        w
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut upgrades = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut new = d.hostd(true);
        let old_exit = wait_for(Duration::from_secs(20), || {
            matches!(hostd.try_wait(), Ok(Some(_)))
        });
        assert!(old_exit, "the old host-driver did not exit\n{}", d.logs());
        assert!(hostd.wait().unwrap().success(), "{}", d.logs());
        assert!(d.wait_attached(Duration::from_secs(20)), "{}", d.logs());
        upgrades.push(t.elapsed());
        std::mem::swap(&mut hostd, &mut new);
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut crashes = Vec::new();
    for _ in 0..5 {
        kill9(&mut hostd);
        let t = Instant::now();
        hostd = d.hostd(false);
        assert!(d.wait_attached(Duration::from_secs(20)), "{}", d.logs());
        crashes.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Release);
    let w = g.join().expect("guest");
    eprintln!(
        "{} completions ({} writes, {} reads), longest I/O pause {:?}; upgrades to attach {:?}; restarts to attach {:?}",
        w.completed, w.writes, w.reads, w.longest_pause, upgrades, crashes
    );
    assert!(
        w.errors.is_empty(),
        "{:#?}\n{}",
        &w.errors[..w.errors.len().min(20)],
        d.logs()
    );
    assert!(w.completed > 1000, "too little I/O ran: {}", w.completed);
    // The guest's connection was never closed: no host-driver saw a client
    // connect after the first.
    let logs = d.logs();
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
    // A clean stop lets go of everything (the keeper too).
    assert!(
        term(&mut hostd, Duration::from_secs(20)).is_some_and(|s| s.success()),
        "{}",
        d.logs()
    );
    kill9(&mut socp);
    assert!(
        wait_for(Duration::from_secs(5), || {
            std::os::unix::net::UnixStream::connect(d.dir.join("keeper.sock")).is_err()
        }),
        "the keeper outlived a clean stop"
    );
    let _ = std::fs::remove_dir_all(&d.dir);
}
