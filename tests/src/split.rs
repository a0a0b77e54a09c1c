//! The split deployment for tests: the host-driver in this process (as a
//! library), `socp` as separate processes that tests start, kill and
//! restart, and a verifying workload that plays the guest through the
//! test NVMe driver.

use crate::driver::{Driver, DriverError};
use leapio_host_driver::port::Timeouts;
use leapio_host_driver::{HostCtrlSpec, HostDriver};
use leapio_nvme::IoOpcode;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A binary of this workspace, built next to the test executables
/// (`cargo build --workspace --bins`; the test command does that first),
/// or next to the program asking (a binary of `leapio-tests` itself).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>, or
    // target/<profile>/<program> -> target/<profile>/<name>.
    let here = exe.parent().expect("the executable's directory");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target/<profile>")
    } else {
        here
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// xorshift64*: reproducible pseudo-random numbers for workloads and
/// campaigns.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The loopback port a `socp --tcp-target listen=127.0.0.1:0,...` says in
/// its log `text` that it listens on, once it has said so.
pub fn tcp_target_port(text: &str) -> Option<u16> {
    text.lines()
        .find(|l| l.contains("NVMe/TCP target listening"))
        .and_then(|l| l.split("addr=127.0.0.1:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse::<u16>().ok())
}

/// A host-driver serving one controller, in this process.
pub struct SplitHost {
    pub dir: PathBuf,
    pub host: Arc<HostDriver>,
    /// The link socket runtimes connect to.
    pub link: PathBuf,
    /// The controller's vfio-user socket.
    pub vfio: PathBuf,
    pub name: String,
}

impl SplitHost {
    /// Start a host-driver with controller `name` (`io-queues` queue pairs
    /// offered) and the given timeouts.
    pub fn start(name: &str, io_queues: u16, timeouts: Timeouts) -> SplitHost {
        let dir = crate::server::test_dir();
        std::fs::create_dir_all(&dir).expect("test dir");
        let host = HostDriver::new("leapio-hostd (test)");
        host.set_timeouts(timeouts);
        let vfio = dir.join(format!("{name}.sock"));
        let mut spec = HostCtrlSpec::new(name, &vfio);
        spec.limits.io_queues = io_queues;
        host.add_controller(&spec).expect("controller");
        let link = dir.join("hostd.sock");
        host.listen(&link).expect("link socket");
        SplitHost {
            dir,
            host,
            link,
            vfio,
            name: name.to_string(),
        }
    }

    /// Start `socp --link` serving this controller with namespace `ns`
    /// (and extra arguments); its log goes to `DIR/socp-N.log`.
    pub fn spawn_socp(&self, ns: &str, extra: &[&str]) -> Child {
        spawn_runtime(&self.dir, &self.link, &self.name, ns, extra)
    }

    /// The logs of every socp started so far, concatenated.
    pub fn socp_logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for p in names {
            if p.extension().is_some_and(|e| e == "log") {
                out.push_str(&format!("---- {}\n", p.display()));
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
        out
    }

    /// Wait until a runtime serves the controller (or `timeout`).
    pub fn wait_attached(&self, timeout: Duration) -> bool {
        self.wait_served(true, timeout)
    }

    /// Wait until the host-driver has seen its runtime go (a runtime killed
    /// a moment ago may still be taken for the server) (or `timeout`).
    pub fn wait_detached(&self, timeout: Duration) -> bool {
        self.wait_served(false, timeout)
    }

    fn wait_served(&self, served: bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .host
                .status()
                .iter()
                .any(|c| c.name == self.name && (c.runtime != 0) == served)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for SplitHost {
    fn drop(&mut self) {
        self.host.shutdown();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Start `socp --link LINK` serving controller `ctrl` with namespace `ns`
/// (and extra arguments); its log goes to `DIR/socp-N.log` (N counts the
/// runtimes this process started).
pub fn spawn_runtime(dir: &Path, link: &Path, ctrl: &str, ns: &str, extra: &[&str]) -> Child {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let log = std::fs::File::create(dir.join(format!("socp-{n}.log"))).expect("log");
    Command::new(bin("socp"))
        .arg("--link")
        .arg(format!("unix:{}", link.display()))
        .arg("--ctrl")
        .arg(format!("name={ctrl},{ns}"))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn socp")
}

/// Kill a child with SIGKILL and reap it.
pub fn kill9(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Send SIGTERM and wait up to `timeout` for the child to exit; its status.
pub fn term(c: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(i32::try_from(c.id()).unwrap_or(0), libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Bytes per workload I/O (and per tracked chunk).
pub const CHUNK: u64 = 4096;
const CHUNK_BYTES: usize = 4096;

fn ix(chunk: u64) -> usize {
    usize::try_from(chunk).unwrap_or(usize::MAX)
}

struct Io {
    write: bool,
    chunk: u64,
    slot: usize,
    tag: u64,
}

/// A guest that keeps `qd` commands in flight on one queue: random 4 KiB
/// writes of unique contents and reads checked against what was last
/// written, never two commands on the same chunk at once, so the expected
/// contents are exact. Every command must complete exactly once.
pub struct Workload {
    pub d: Driver,
    qid: u16,
    bs: u32,
    chunks: u64,
    qd: usize,
    buf: u64,
    expected: Vec<u64>,
    busy: Vec<bool>,
    free_slots: Vec<usize>,
    inflight: HashMap<u16, Io>,
    rng: Rng,
    version: u64,
    pub completed: u64,
    pub writes: u64,
    pub reads: u64,
    /// Problems seen: I/O errors, wrong data, unknown or duplicate
    /// completions.
    pub errors: Vec<String>,
    /// The longest time commands were in flight with none completing.
    pub longest_pause: Duration,
    last_progress: Option<Instant>,
}

fn pattern(tag: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHUNK_BYTES);
    for _ in 0..CHUNK / 8 {
        v.extend_from_slice(&tag.to_le_bytes());
    }
    v
}

impl Workload {
    /// Bring up the driver on `sock` with one queue pair of `entries`, for
    /// a namespace of `chunks` 4 KiB chunks (all zero at start), `qd`
    /// commands in flight.
    pub fn new(sock: &Path, chunks: u64, qd: usize, seed: u64) -> Result<Workload, DriverError> {
        Workload::with_driver(Driver::connect(sock, 64 << 20)?, chunks, qd, seed)
    }

    /// As [`Workload::new`], on a driver already connected (its memory
    /// mapped): enable the controller and create the queue.
    pub fn with_driver(
        mut d: Driver,
        chunks: u64,
        qd: usize,
        seed: u64,
    ) -> Result<Workload, DriverError> {
        d.enable(32)?;
        d.set_queue_count(1)?;
        d.create_queue_pair(1, 256, 1)?;
        d.timeout = Duration::from_secs(60);
        let id = d.identify_namespace(1)?;
        let bs = 1u32 << id.lbaf[0].lbads;
        let buf = d.mem.alloc(CHUNK * qd as u64, CHUNK);
        Ok(Workload {
            d,
            qid: 1,
            bs,
            chunks,
            qd,
            buf,
            expected: vec![0; ix(chunks)],
            busy: vec![false; ix(chunks)],
            free_slots: (0..qd).collect(),
            inflight: HashMap::new(),
            rng: Rng::new(seed),
            version: 1,
            completed: 0,
            writes: 0,
            reads: 0,
            errors: Vec::new(),
            longest_pause: Duration::ZERO,
            last_progress: None,
        })
    }

    fn rand(&mut self) -> u64 {
        self.rng.next_u64()
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn submit(&mut self, write: bool, chunk: u64) {
        let Some(slot) = self.free_slots.pop() else {
            return;
        };
        let gpa = self.buf + slot as u64 * CHUNK;
        let tag = if write {
            self.version += 1;
            (chunk << 32) | self.version
        } else {
            0
        };
        if write {
            self.d.mem.write(gpa, &pattern(tag));
        } else {
            self.d.mem.fill(gpa, CHUNK, 0xee);
        }
        let op = if write {
            IoOpcode::WRITE
        } else {
            IoOpcode::READ
        };
        let nlb = u32::try_from(CHUNK / u64::from(self.bs)).unwrap_or(1);
        let slba = chunk * (CHUNK / u64::from(self.bs));
        let sqe = self.d.rw_sqe(op, 1, slba, nlb, gpa, CHUNK, slot);
        let cid = self.d.push(self.qid, sqe);
        self.busy[ix(chunk)] = true;
        if let Some(old) = self.inflight.insert(
            cid,
            Io {
                write,
                chunk,
                slot,
                tag,
            },
        ) {
            self.errors.push(format!(
                "cid {cid} reused while chunk {} in flight",
                old.chunk
            ));
        }
    }

    /// Top the queue up to `qd` commands (random reads and writes) and ring.
    pub fn fill(&mut self) {
        let mut pushed = false;
        while self.inflight.len() < self.qd && !self.free_slots.is_empty() {
            let chunk = self.rand() % self.chunks;
            if self.busy[ix(chunk)] {
                continue;
            }
            let write = self.rand() % 2 == 0;
            self.submit(write, chunk);
            pushed = true;
        }
        if pushed {
            self.d.ring(self.qid);
        }
    }

    /// Take every completion posted so far; returns how many.
    pub fn reap(&mut self) -> usize {
        let mut n = 0;
        let now = Instant::now();
        if self.inflight.is_empty() {
            self.last_progress = None;
        } else if let Some(t) = self.last_progress {
            self.longest_pause = self.longest_pause.max(now.duration_since(t));
        } else {
            self.last_progress = Some(now);
        }
        while let Some(c) = self.d.poll(self.qid) {
            self.last_progress = Some(now);
            n += 1;
            self.completed += 1;
            let cid = c.cid.get();
            let Some(io) = self.inflight.remove(&cid) else {
                self.errors.push(format!(
                    "completion for cid {cid} that is not in flight (completed twice?)"
                ));
                continue;
            };
            self.busy[ix(io.chunk)] = false;
            self.free_slots.push(io.slot);
            let status = c.status_field();
            if !status.is_success() {
                self.errors.push(format!(
                    "{} of chunk {} failed: {status}",
                    if io.write { "write" } else { "read" },
                    io.chunk
                ));
                continue;
            }
            if io.write {
                self.writes += 1;
                self.expected[ix(io.chunk)] = io.tag;
            } else {
                self.reads += 1;
                let got = self
                    .d
                    .mem
                    .read_vec(self.buf + io.slot as u64 * CHUNK, CHUNK_BYTES);
                let want = pattern(self.expected[ix(io.chunk)]);
                if got != want {
                    self.errors.push(format!(
                        "read of chunk {}: wrong data (first word {:#x}, expected {:#x})",
                        io.chunk,
                        u64::from_le_bytes(got[..8].try_into().unwrap_or([0; 8])),
                        self.expected[ix(io.chunk)]
                    ));
                }
            }
        }
        n
    }

    /// Run for `d`: keep the queue full, check what completes.
    pub fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.fill();
            if self.reap() == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Stop submitting and wait (up to `timeout`) for what is in flight.
    /// Commands that never complete are lost: reported as errors.
    pub fn drain(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while !self.inflight.is_empty() && Instant::now() < end {
            if self.reap() == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        for (cid, io) in &self.inflight {
            self.errors.push(format!(
                "cid {cid} ({} of chunk {}) never completed: lost",
                if io.write { "write" } else { "read" },
                io.chunk
            ));
        }
    }

    /// Read every chunk back, one at a time, and compare.
    pub fn verify_all(&mut self) {
        for chunk in 0..self.chunks {
            let slba = chunk * (CHUNK / u64::from(self.bs));
            match self.d.read_blocks(self.qid, 1, slba, self.bs, CHUNK) {
                Ok((c, data)) if c.status_field().is_success() => {
                    if data != pattern(self.expected[ix(chunk)]) {
                        self.errors
                            .push(format!("final read of chunk {chunk}: wrong data"));
                    }
                }
                Ok((c, _)) => self
                    .errors
                    .push(format!("final read of chunk {chunk}: {}", c.status_field())),
                Err(e) => self
                    .errors
                    .push(format!("final read of chunk {chunk}: {e}")),
            }
        }
    }
}

/// Start `sleep 600` holding `f` as its descriptor 3: a process a runtime
/// passed a descriptor to.
pub fn spawn_holding(f: &std::fs::File) -> Child {
    use std::os::unix::process::CommandExt;
    let raw = std::os::fd::AsRawFd::as_raw_fd(f);
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    // SAFETY: dup2 and fcntl are async-signal-safe; they only touch
    // descriptors.
    unsafe {
        cmd.pre_exec(move || {
            // (dup2 onto itself would leave close-on-exec set)
            let r = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn sleep")
}

/// Open again the descriptor of process `pid` whose target's name
/// contains `name` (a memfd: "/memfd:NAME (deleted)").
pub fn reopen_fd_of(pid: u32, name: &str) -> Option<std::fs::File> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains(name)))
        .and_then(|e| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(e.path())
                .ok()
        })
}
