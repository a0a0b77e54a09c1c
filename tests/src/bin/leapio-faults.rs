//! `leapio-faults`: a fault campaign against the split deployment.
//! `leapio-hostd --keep` serves one controller; `socp` processes serve it
//! over the link; a guest (the test driver) keeps verified 4 KiB reads and
//! writes in flight the whole time while faults are injected at random:
//! `socp` killed (SIGKILL), stopped and continued (SIGSTOP), killed at a
//! random step of the queue protocol (`--crash-at`), replaced by an upgrade
//! in place (`--handover`), a hostile second runtime on the link,
//! `leapio-hostd` upgraded in place or killed and started again, and with
//! `--remote` the namespace's NVMe/TCP target killed and restarted. At the
//! end every chunk is read back.
//!
//!   leapio-faults [--seconds S] [--seed N] [--remote] [--json]
//!
//! Prints the faults injected per kind, I/Os completed and verified,
//! errors and mismatches (the goal: 0 and 0) and the longest pause of the
//! guest's I/O; exits non-zero if anything was lost or wrong.

use leapio_link::proto::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use leapio_link::{frame, ToHost, ToRuntime};
use leapio_tests::kept::KeptSplit;
use leapio_tests::split::{bin, kill9, Rng, Workload, CHUNK};
use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 16 MiB namespace.
const CHUNKS: u64 = 4096;
const QD: usize = 16;
const NQN: &str = "nqn.2026-12.io.leapio:faults";

/// The namespace's NVMe/TCP target (`--remote`), on a fixed port so that
/// a restarted one is found where the old one was.
struct Target {
    child: Option<Child>,
    port: u16,
    path: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Target {
    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = Command::new(bin("socp"))
                .args([
                    "--tcp-target",
                    &format!(
                        "listen=127.0.0.1:{},nqn={NQN},ns=file:{}",
                        self.port,
                        self.path.display()
                    ),
                ])
                .env("RUST_LOG", "info")
                .stderr(log.try_clone().map_err(|e| e.to_string())?)
                .spawn()
                .map_err(|e| format!("target: {e}"))?;
            std::thread::sleep(Duration::from_millis(300));
            match c.try_wait() {
                // The port may still be held by the killed one's sockets.
                Ok(Some(_)) if Instant::now() < deadline => continue,
                Ok(Some(s)) => return Err(format!("the target exited: {s}")),
                _ => {
                    self.child = Some(c);
                    return Ok(());
                }
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A runtime that connects, says hello and asks for the controller with
/// namespaces the guest does not have, or sends garbage: it must be
/// refused or cut off, and change nothing.
fn hostile_runtime(link: &std::path::Path, ctrl: &str, rng: &mut Rng) -> &'static str {
    let Ok(s) = UnixStream::connect(link) else {
        return "hostile runtime (could not connect)";
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if rng.below(3) == 0 {
        let _ = std::io::Write::write_all(&mut &s, &[0x5a; 64]);
        return "hostile runtime: garbage";
    }
    let hello = ToHost::Hello {
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        software: "leapio-faults hostile".into(),
    };
    if frame::send(&s, &hello, &[]).is_err() {
        return "hostile runtime (refused)";
    }
    let _ = frame::recv::<ToRuntime>(&s);
    let attach = ToHost::Attach {
        ctrl: ctrl.to_string(),
        namespaces: vec![leapio_link::NsDecl {
            nsid: 1,
            block_size: 512,
            num_blocks: 1,
            volatile_write_cache: true,
            write_zeroes: true,
            deallocate: true,
            persistent: true,
            describe: "a lie".into(),
            zoned: None,
        }],
        handover: rng.below(2) == 0,
    };
    let _ = frame::send(&s, &attach, &[]);
    let _ = frame::recv::<ToRuntime>(&s);
    "hostile runtime: a lying attach"
}

/// Run [`hostile_runtime`] in a process of its own (the host-driver kills
/// a runtime that breaks the protocol: not this one), up to 20 s.
fn hostile_process(host: &KeptSplit, rng: &mut Rng) -> &'static str {
    let seed = rng.next_u64().to_string();
    let child = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .arg("--hostile-runtime")
            .arg(&host.link)
            .arg(&host.name)
            .arg(&seed)
            .stdout(std::process::Stdio::piped())
            .spawn()
    });
    let Ok(mut child) = child else {
        return "hostile runtime (could not start)";
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill9(&mut child);
    let mut said = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut said);
    }
    match said.trim() {
        "garbage" => "hostile runtime: garbage",
        "lie" => "hostile runtime: a lying attach",
        _ => "hostile runtime (refused, or killed by the host-driver)",
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, link, ctrl, seed] = argv.as_slice() {
        if flag == "--hostile-runtime" {
            let mut rng = Rng::new(seed.parse().unwrap_or(1));
            let what = hostile_runtime(std::path::Path::new(link), ctrl, &mut rng);
            println!(
                "{}",
                match what {
                    "hostile runtime: garbage" => "garbage",
                    "hostile runtime: a lying attach" => "lie",
                    _ => "other",
                }
            );
            return ExitCode::SUCCESS;
        }
    }
    let mut secs = 60u64;
    let mut seed = 0x5eed_fa17_u64;
    let mut remote = false;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => secs = args.next().and_then(|s| s.parse().ok()).unwrap_or(secs),
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(seed),
            "--remote" => remote = true,
            "--json" => json = true,
            _ => {
                eprintln!("usage: leapio-faults [--seconds S] [--seed N] [--remote] [--json]");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut rng = Rng::new(seed);
    let mut host = match KeptSplit::start_sized(CHUNKS * CHUNK) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("leapio-faults: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("leapio-faults: logs in {}", host.dir.display());
    let disk = host.disk.clone();
    let mut target = None;
    let ns = if remote {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(4420);
        let mut t = Target {
            child: None,
            port,
            path: disk.clone(),
            log: host.dir.join("target.log"),
        };
        if let Err(e) = t.start() {
            eprintln!("leapio-faults: {e}");
            return ExitCode::FAILURE;
        }
        target = Some(t);
        format!("ns=nvme-tcp:127.0.0.1:{port}/{NQN}?kato=2000&retry=60000")
    } else {
        format!("ns=file:{}", disk.display())
    };
    let mut socp = host.spawn_socp(&ns, &[]);
    if !host.wait_attached(Duration::from_secs(20)) {
        eprintln!("leapio-faults: socp did not attach:\n{}", host.logs());
        kill9(&mut socp);
        return ExitCode::FAILURE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let sock = host.vfio();
    let guest = std::thread::spawn(move || {
        let mut w = Workload::new(&sock, CHUNKS, QD, seed).expect("guest bring-up");
        while !st.load(Ordering::Acquire) {
            w.run_for(Duration::from_millis(20));
        }
        w.drain(Duration::from_secs(90));
        let before = w.errors.len();
        if before > 0 {
            // Reading 4096 chunks back from a runtime that stopped
            // answering would take hours: report what is known.
            return (w, before);
        }
        w.verify_all();
        (w, before)
    });
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
        let kinds = if remote { 8 } else { 7 };
        let what = match rng.below(kinds) {
            0 => {
                kill9(&mut socp);
                socp = host.spawn_socp(&ns, &[]);
                "socp SIGKILL"
            }
            1 => {
                let pid = i32::try_from(socp.id()).unwrap_or(0);
                // SAFETY: signals to our own child process.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                std::thread::sleep(Duration::from_millis(200 + rng.below(1300)));
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
                "socp SIGSTOP then SIGCONT"
            }
            2 => {
                let point = [
                    "sqe-fetched",
                    "inflight-recorded",
                    "executed",
                    "completion-recorded",
                    "cqe-written",
                    "cqe-posted",
                ][usize::try_from(rng.below(6)).unwrap_or(0)];
                kill9(&mut socp);
                let n = 1 + rng.below(300);
                let mut crashing = host.spawn_socp(&ns, &["--crash-at", &format!("{point}:{n}")]);
                let deadline = Instant::now() + Duration::from_secs(20);
                while crashing.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                kill9(&mut crashing);
                socp = host.spawn_socp(&ns, &[]);
                "socp killed at a step of the queue protocol"
            }
            3 => {
                let new = host.spawn_socp(&ns, &["--handover"]);
                // The old one drains, detaches and exits.
                let deadline = Instant::now() + Duration::from_secs(20);
                while socp.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                kill9(&mut socp);
                socp = new;
                "socp upgraded in place (--handover)"
            }
            4 => hostile_process(&host, &mut rng),
            5 => {
                if let Err(e) = host.upgrade() {
                    eprintln!("leapio-faults: {e}");
                    break;
                }
                "leapio-hostd upgraded in place (--handover)"
            }
            6 => {
                if let Err(e) = host.crash() {
                    eprintln!("leapio-faults: {e}");
                    break;
                }
                "leapio-hostd SIGKILL, then a new one"
            }
            _ => {
                if let Some(t) = target.as_mut() {
                    t.kill();
                    std::thread::sleep(Duration::from_millis(rng.below(1000)));
                    if let Err(e) = t.start() {
                        eprintln!("leapio-faults: restarting the target: {e}");
                    }
                }
                "NVMe/TCP target SIGKILL and restart"
            }
        };
        *faults.entry(what).or_default() += 1;
        eprintln!("[{:6.1} s] {what}", t0.elapsed().as_secs_f64());
        // A runtime must serve before the next fault, or the campaign only
        // measures waiting.
        if !host.wait_attached(Duration::from_secs(30)) {
            eprintln!("leapio-faults: no runtime attached 30 s after '{what}'");
            break;
        }
    }
    stop.store(true, Ordering::Release);
    let (w, lost_before_verify) = guest.join().expect("guest");
    kill9(&mut socp);
    drop(target);
    let mismatches = w.errors.iter().filter(|e| e.contains("wrong data")).count();
    let errors = w.errors.len() - mismatches;
    let injected: u64 = faults.values().sum();
    if json {
        let f: BTreeMap<&str, u64> = faults.clone();
        println!(
            "{}",
            serde_json::json!({
                "seconds": t0.elapsed().as_secs(),
                "remote": remote,
                "faults": f,
                "faults_total": injected,
                "completed": w.completed,
                "writes": w.writes,
                "reads_verified": w.reads,
                "chunks_verified_at_end": CHUNKS,
                "errors": errors,
                "mismatches": mismatches,
                "errors_before_final_verify": lost_before_verify,
                "longest_pause_ms": w.longest_pause.as_millis(),
            })
        );
    } else {
        println!(
            "fault campaign: {} s, namespace {}",
            t0.elapsed().as_secs(),
            if remote { "on NVMe/TCP" } else { "a file" }
        );
        for (k, n) in &faults {
            println!("  {n:5}  {k}");
        }
        println!("  {injected:5}  faults in all");
        println!(
            "I/Os: {} completed ({} writes, {} reads checked), {CHUNKS} chunks read back at the end",
            w.completed, w.writes, w.reads
        );
        println!(
            "errors: {errors}, mismatches: {mismatches}, longest I/O pause: {} ms",
            w.longest_pause.as_millis()
        );
    }
    for e in w.errors.iter().take(20) {
        eprintln!("  {e}");
    }
    if !w.errors.is_empty() {
        eprintln!("logs: {}", host.dir.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
