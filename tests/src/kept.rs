//! The split deployment with `leapio-hostd` in a process of its own that
//! keeps its descriptors and device state in an fd keeper (`--keep`), so
//! that it can be upgraded in place (`--handover`) or killed and started
//! again; `socp` processes serve the controller over the link; a guest
//! (the test driver, a vfio-user client that never reconnects) keeps
//! verified I/O in flight on its own thread.

use crate::split::{bin, kill9, Workload, CHUNK};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// 4 MiB namespace.
pub const CHUNKS: u64 = 1024;
const QD: usize = 16;

/// `leapio-hostd --keep` serving controller vm0 (4 I/O queue pairs), its
/// control socket, and a file for a namespace.
pub struct KeptSplit {
    pub dir: PathBuf,
    /// The controller's name.
    pub name: String,
    /// Where runtimes connect.
    pub link: PathBuf,
    /// A file for the namespace (`ns=file:...`; 4 MiB unless
    /// [`KeptSplit::start_sized`]).
    pub disk: PathBuf,
    /// Host-drivers started so far (their logs are hostd-N.log).
    pub started: usize,
    pub hostd: Option<Child>,
}

/// Wait until `f` holds (or `timeout`).
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

impl KeptSplit {
    /// Start the host-driver; wait until it serves its control socket.
    pub fn start() -> Result<KeptSplit, String> {
        KeptSplit::start_sized(CHUNKS * CHUNK)
    }

    /// [`KeptSplit::start`] with a file of `bytes`.
    pub fn start_sized(bytes: u64) -> Result<KeptSplit, String> {
        let dir = crate::server::test_dir();
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let disk = dir.join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| e.to_string())?;
        let mut k = KeptSplit {
            link: dir.join("link.sock"),
            dir,
            name: "vm0".into(),
            disk,
            started: 0,
            hostd: None,
        };
        k.hostd = Some(k.spawn_hostd(false)?);
        if !wait_for(Duration::from_secs(10), || k.status().is_some()) {
            return Err(format!("leapio-hostd did not start\n{}", k.logs()));
        }
        Ok(k)
    }

    /// `ns=file:` of the file.
    pub fn file_ns(&self) -> String {
        format!("ns=file:{}", self.disk.display())
    }

    /// Start `socp --link` serving the controller with namespace `ns` (and
    /// extra arguments); its log goes to `DIR/socp-N.log`.
    pub fn spawn_socp(&self, ns: &str, extra: &[&str]) -> Child {
        crate::split::spawn_runtime(&self.dir, &self.link, &self.name, ns, extra)
    }

    /// The host-driver's status (None while none answers).
    fn status(&self) -> Option<serde_json::Value> {
        leapio_service::control::call(
            &self.dir.join("hostd-ctl.sock"),
            "status",
            serde_json::json!({}),
        )
        .ok()
    }

    /// The controller's vfio-user socket.
    pub fn vfio(&self) -> PathBuf {
        self.dir.join("vm0.sock")
    }

    fn spawn_hostd(&mut self, handover: bool) -> Result<Child, String> {
        self.started += 1;
        let log = std::fs::File::create(self.dir.join(format!("hostd-{}.log", self.started)))
            .map_err(|e| e.to_string())?;
        let mut c = Command::new(bin("leapio-hostd"));
        c.arg("--link")
            .arg(format!("unix:{}", self.link.display()))
            .arg("--keep")
            .arg(self.dir.join("keeper.sock"))
            .arg("--control")
            .arg(self.dir.join("hostd-ctl.sock"))
            .arg("--ctrl")
            .arg(format!(
                "name={},sock={},io-queues=4",
                self.name,
                self.vfio().display()
            ))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if handover {
            c.arg("--handover");
        }
        c.spawn().map_err(|e| format!("leapio-hostd: {e}"))
    }

    /// Every log so far.
    pub fn logs(&self) -> String {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        let mut out = String::new();
        for p in names {
            if p.extension().is_some_and(|e| e == "log") {
                out += &format!("---- {}\n", p.display());
                out += &std::fs::read_to_string(&p).unwrap_or_default();
            }
        }
        out
    }

    /// Wait until the running host-driver has a runtime attached.
    pub fn wait_attached(&self, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.status().is_some_and(|s| {
                s["controllers"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["runtime"].as_u64().is_some_and(|r| r != 0))
                })
            })
        })
    }

    /// Upgrade in place: a new host-driver with `--handover`; returns once
    /// the old one exited (0) and the runtime is attached to the new one.
    pub fn upgrade(&mut self) -> Result<(), String> {
        let new = self.spawn_hostd(true)?;
        let mut old = self.hostd.replace(new).ok_or("no host-driver")?;
        let mut status = None;
        wait_for(Duration::from_secs(20), || {
            status = old.try_wait().ok().flatten();
            status.is_some()
        });
        match status {
            Some(s) if s.success() => {}
            Some(s) => {
                return Err(format!(
                    "the old host-driver exited with {s}\n{}",
                    self.logs()
                ))
            }
            None => {
                kill9(&mut old);
                return Err(format!("the old host-driver did not exit\n{}", self.logs()));
            }
        }
        if !self.wait_attached(Duration::from_secs(20)) {
            return Err(format!("the runtime did not attach again\n{}", self.logs()));
        }
        Ok(())
    }

    /// Kill the host-driver with SIGKILL and start a new one; returns once
    /// the runtime is attached to it.
    pub fn crash(&mut self) -> Result<(), String> {
        if let Some(mut old) = self.hostd.take() {
            kill9(&mut old);
        }
        self.hostd = Some(self.spawn_hostd(false)?);
        if !self.wait_attached(Duration::from_secs(20)) {
            return Err(format!("the runtime did not attach again\n{}", self.logs()));
        }
        Ok(())
    }
}

impl Drop for KeptSplit {
    fn drop(&mut self) {
        if let Some(mut c) = self.hostd.take() {
            // A clean stop lets the keeper go too.
            let _ = crate::split::term(&mut c, Duration::from_secs(20));
            kill9(&mut c);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A guest keeping verified I/O in flight on its own thread, with the
/// longest pause of its I/O since the last [`Guest::pause_since_reset`].
pub struct Guest {
    stop: Arc<AtomicBool>,
    reset: Arc<AtomicBool>,
    pause_ns: Arc<AtomicU64>,
    thread: JoinHandle<Workload>,
}

impl Guest {
    pub fn start(k: &KeptSplit, seed: u64) -> Guest {
        let (stop, reset, pause_ns) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let sock = k.vfio();
        let (st, rs, pn) = (stop.clone(), reset.clone(), pause_ns.clone());
        let thread = std::thread::spawn(move || {
            let mut w = Workload::new(&sock, CHUNKS, QD, seed).expect("guest bring-up");
            while !st.load(Ordering::Acquire) {
                if rs.swap(false, Ordering::AcqRel) {
                    w.longest_pause = Duration::ZERO;
                }
                w.run_for(Duration::from_millis(5));
                pn.store(
                    u64::try_from(w.longest_pause.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Release,
                );
            }
            w.drain(Duration::from_secs(30));
            w.verify_all();
            w
        });
        Guest {
            stop,
            reset,
            pause_ns,
            thread,
        }
    }

    /// Start measuring the longest pause afresh.
    pub fn reset_pause(&self) {
        self.reset.store(true, Ordering::Release);
        wait_for(Duration::from_secs(1), || {
            !self.reset.load(Ordering::Acquire)
        });
        self.pause_ns.store(0, Ordering::Release);
    }

    /// The longest time commands were in flight with none completing,
    /// since the last reset.
    pub fn pause_since_reset(&self) -> Duration {
        Duration::from_nanos(self.pause_ns.load(Ordering::Acquire))
    }

    /// Stop, drain, verify every chunk; the workload.
    pub fn finish(self) -> Workload {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("guest thread")
    }
}
