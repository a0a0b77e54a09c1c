//! The daemons under a service manager that asks for notifications
//! (systemd's `Type=notify` with `WatchdogSec=`): this test plays the
//! manager, a datagram socket named by NOTIFY_SOCKET, with WATCHDOG_USEC
//! set and WATCHDOG_PID unset (as systemd-run and some managers leave it).
//! READY=1 must come only once the process serves (its control socket
//! answers then), WATCHDOG=1 must keep coming while it runs, and STOPPING=1
//! must come on SIGTERM.

use leapio_tests::split::{bin, term};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The watchdog timeout given to the daemons: they pet every half of it.
const WATCHDOG_USEC: u64 = 200_000;

/// The service manager's end: what the daemon sends.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every line received so far, in order.
    lines: Vec<String>,
}

impl Manager {
    fn bind(path: PathBuf) -> Manager {
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        Manager {
            sock,
            path,
            lines: Vec::new(),
        }
    }

    /// Receive until a datagram with `line` arrives (true) or `timeout`.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let Ok(n) = self.sock.recv(&mut buf) else {
                return false;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let found = msg.lines().any(|l| l == line);
            self.lines.extend(msg.lines().map(str::to_string));
            if found {
                return true;
            }
        }
    }

    /// How many times `line` came so far.
    fn count(&self, line: &str) -> usize {
        self.lines.iter().filter(|l| *l == line).count()
    }
}

/// A daemon started as the manager would start it; its log in a file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(mut cmd: Command, manager: &Manager, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("NOTIFY_SOCKET", &manager.path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
            .env_remove("WATCHDOG_PID")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn the daemon");
        Daemon { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The control socket's answer to `status`, tried once: a JSON-RPC
/// response, its result or its error (socp without a host-driver has no
/// such method, and says so).
fn answer(control: &Path) -> Result<serde_json::Value, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = UnixStream::connect(control).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    writeln!(
        s,
        "{}",
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "status", "params": {}})
    )
    .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
    if v["id"] == 1 && (v.get("result").is_some() || v.get("error").is_some()) {
        Ok(v)
    } else {
        Err(format!("not a JSON-RPC response: {line}"))
    }
}

/// Play the manager for `cmd`, whose control socket is `control`.
fn notified(name: &str, dir: &Path, cmd: Command, control: &Path) {
    let mut m = Manager::bind(dir.join("notify.sock"));
    let mut d = Daemon::start(cmd, &m, dir.join(format!("{name}.log")));

    assert!(
        m.wait_for("READY=1", Duration::from_secs(30)),
        "{name}: no READY=1 (got {:?}):\n{}",
        m.lines,
        d.logs()
    );
    // Serving already: the control socket answers at once.
    let answer = answer(control);
    assert!(
        answer.is_ok(),
        "{name}: READY=1 came before the control socket answered: {answer:?}\n{}",
        d.logs()
    );
    assert!(
        m.lines.iter().any(|l| l.starts_with("STATUS=")),
        "{name}: no status line with READY=1: {:?}",
        m.lines
    );
    assert_eq!(
        m.count("WATCHDOG=1"),
        0,
        "{name}: WATCHDOG=1 before READY=1: {:?}",
        m.lines
    );

    // WATCHDOG=1 every 100 ms: at least 5 in 1.5 s, however loaded the
    // machine is.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        m.wait_for("WATCHDOG=1", Duration::from_millis(300));
    }
    let pets = m.count("WATCHDOG=1");
    assert!(
        pets >= 5,
        "{name}: {pets} WATCHDOG=1 in 1.5 s with WATCHDOG_USEC={WATCHDOG_USEC}:\n{}",
        d.logs()
    );

    let status = term(&mut d.child, Duration::from_secs(30));
    assert!(
        m.wait_for("STOPPING=1", Duration::from_secs(5)),
        "{name}: no STOPPING=1 on SIGTERM (got {:?}):\n{}",
        &m.lines[m.lines.len().saturating_sub(5)..],
        d.logs()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{name}: did not stop cleanly ({status:?}):\n{}",
        d.logs()
    );
    assert!(
        !d.logs().contains("no progress"),
        "{name}: the watchdog saw no progress:\n{}",
        d.logs()
    );
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = leapio_tests::server::test_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn socp_says_ready_pets_the_watchdog_and_says_stopping() {
    let dir = fresh_dir("socp");
    let control = dir.join("ctl.sock");
    let mut cmd = Command::new(bin("socp"));
    cmd.arg("--control").arg(&control).args(["--pollers", "2"]);
    notified("socp", &dir, cmd, &control);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostd_says_ready_pets_the_watchdog_and_says_stopping() {
    let dir = fresh_dir("hostd");
    let control = dir.join("ctl.sock");
    let mut cmd = Command::new(bin("leapio-hostd"));
    cmd.arg("--link")
        .arg(format!("unix:{}", dir.join("link.sock").display()))
        .arg("--control")
        .arg(&control)
        // A controller: the events thread whose progress the watchdog
        // checks runs once there is one.
        .arg("--ctrl")
        .arg(format!("name=vm0,sock={}", dir.join("vm0.sock").display()));
    notified("leapio-hostd", &dir, cmd, &control);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn leapio_says_ready_pets_the_watchdog_and_says_stopping() {
    let dir = fresh_dir("leapio");
    let control = dir.join("ctl.sock");
    let mut cmd = Command::new(bin("leapio"));
    cmd.arg("--control")
        .arg(&control)
        .arg("--ctrl")
        .arg(format!(
            "sock={},ns=ram:16M",
            dir.join("vm0.sock").display()
        ));
    notified("leapio", &dir, cmd, &control);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child process killed (if still running) and reaped when the test
/// ends, passed or not.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `log` has a line with all of `words`.
fn logged(log: &Path, words: &[&str]) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| words.iter().all(|w| l.contains(w)))
}

/// The processes whose command line has `arg`.
fn processes_with(arg: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        .count()
}

/// The keeper as `leapio-fd-keeper.socket` and its service run it: the
/// service manager listens and passes the socket (LISTEN_FDS, LISTEN_PID);
/// a host-driver with --keep at that path uses that keeper and starts none
/// of its own, takes its controllers back from it after a crash, and a
/// clean stop ends it.
#[test]
fn the_keeper_serves_the_socket_its_service_manager_passes() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = fresh_dir("keeper");
    let keep = dir.join("keep.sock");
    // The service manager's socket: held here for the whole test, as
    // systemd holds it.
    let listener = std::os::unix::net::UnixListener::bind(&keep).unwrap();
    let fd = listener.as_raw_fd();
    let keeper_log = dir.join("keeper.log");
    let mut cmd = Command::new("/bin/sh");
    // LISTEN_PID is the keeper's own pid: the shell's, which it execs.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(bin("leapio-hostd"))
        .arg("--fd-keeper")
        .arg(&keep)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&keeper_log).unwrap());
    // SAFETY: only dup2 and fcntl (async-signal-safe) between fork and
    // exec, on a descriptor this process owns.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut keeper = Reap(cmd.spawn().expect("spawn the keeper"));

    let hostd_log = dir.join("hostd.log");
    let link = dir.join("link.sock");
    let hostd = |log: &Path| {
        Command::new(bin("leapio-hostd"))
            .arg("--keep")
            .arg(&keep)
            .arg("--link")
            .arg(format!("unix:{}", link.display()))
            .arg("--ctrl")
            .arg(format!("name=vm0,sock={}", dir.join("vm0.sock").display()))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .map(Reap)
            .expect("spawn leapio-hostd")
    };
    let wait = |what: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !what() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        what()
    };
    let logs = || {
        format!(
            "keeper:\n{}\nhost-driver:\n{}",
            std::fs::read_to_string(&keeper_log).unwrap_or_default(),
            std::fs::read_to_string(&hostd_log).unwrap_or_default()
        )
    };

    let mut first = hostd(&hostd_log);
    assert!(
        wait(&|| logged(&hostd_log, &["leapio-hostd running"])),
        "{}",
        logs()
    );
    assert!(
        logged(&keeper_log, &["fd keeper running", "passed=true"]),
        "the keeper did not serve the passed socket:\n{}",
        logs()
    );
    let keep_arg = keep.display().to_string();
    assert_eq!(
        processes_with(&keep_arg),
        2,
        "one keeper (the passed socket's) and one host-driver:\n{}",
        logs()
    );

    // A crash: the next host-driver takes the controller back.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let second_log = dir.join("hostd2.log");
    let mut second = hostd(&second_log);
    assert!(
        wait(&|| logged(
            &second_log,
            &["took over from the previous host-driver", "vm0"]
        )),
        "{}\nsecond host-driver:\n{}",
        logs(),
        std::fs::read_to_string(&second_log).unwrap_or_default()
    );
    assert_eq!(processes_with(&keep_arg), 2, "{}", logs());

    // A clean stop ends the keeper too.
    let stopped = term(&mut second.0, Duration::from_secs(20));
    assert!(stopped.is_some_and(|s| s.success()), "{}", logs());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ended = None;
    while ended.is_none() && Instant::now() < deadline {
        ended = keeper.0.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ended.is_some_and(|s| s.success()),
        "the keeper did not stop with its host-driver ({ended:?}):\n{}",
        logs()
    );
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

/// socp in the split: READY=1 only once the host-driver's controller is
/// attached (its namespaces declared), so that a unit ordered after the
/// runtime finds the guest's disk served.
#[test]
fn socp_with_a_link_is_ready_once_its_controllers_are_attached() {
    let dir = fresh_dir("split");
    let link = dir.join("link.sock");
    let hostd_ctl = dir.join("hostd-ctl.sock");
    let hostd_log = dir.join("hostd.log");
    let _hostd = Reap(
        Command::new(bin("leapio-hostd"))
            .arg("--link")
            .arg(format!("unix:{}", link.display()))
            .arg("--control")
            .arg(&hostd_ctl)
            .arg("--ctrl")
            .arg(format!("name=vm0,sock={}", dir.join("vm0.sock").display()))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&hostd_log).unwrap())
            .spawn()
            .expect("spawn leapio-hostd"),
    );
    let mut m = Manager::bind(dir.join("notify.sock"));
    let mut cmd = Command::new(bin("socp"));
    cmd.arg("--link")
        .arg(format!("unix:{}", link.display()))
        .arg("--control")
        .arg(dir.join("socp-ctl.sock"))
        .args(["--ctrl", "name=vm0,ns=ram:16M,ns=ram:16M"]);
    let mut socp = Daemon::start(cmd, &m, dir.join("socp.log"));
    assert!(
        m.wait_for("READY=1", Duration::from_secs(30)),
        "no READY=1 (got {:?}):\n{}",
        m.lines,
        socp.logs()
    );
    let status =
        leapio_service::control::call(&hostd_ctl, "status", serde_json::json!({})).unwrap();
    let vm0 = &status["controllers"][0];
    assert!(
        vm0["runtime"].as_u64().is_some_and(|r| r != 0) && vm0["namespaces"] == 2,
        "READY=1 before the controller was attached: {status}\n{}",
        socp.logs()
    );
    assert!(
        m.lines
            .iter()
            .any(|l| l.starts_with("STATUS=serving 1 controllers")),
        "{:?}",
        m.lines
    );
    let stopped = term(&mut socp.child, Duration::from_secs(30));
    assert!(
        m.wait_for("STOPPING=1", Duration::from_secs(5)),
        "no STOPPING=1 on SIGTERM:\n{}",
        socp.logs()
    );
    assert!(
        stopped.is_some_and(|s| s.success()),
        "{stopped:?}\n{}",
        socp.logs()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
