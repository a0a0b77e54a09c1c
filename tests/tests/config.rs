//! One config file per process (`--config FILE`): the daemons start from
//! a TOML file with the command line over it, `leapioctl config` prints
//! the running configuration as a file they start from again, and a
//! broken file stops them with its name, line and key.

use leapio_tests::split::{bin, term};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A test's folder, removed when done.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = leapio_tests::server::test_dir();
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Write `text` to `name`; its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon started with `args`, its control socket at `control`.
struct Daemon {
    child: Child,
    control: PathBuf,
}

impl Daemon {
    /// Start `name` and wait until its control socket answers.
    fn start(name: &str, args: &[&str], control: &Path) -> Daemon {
        let child = Command::new(bin(name))
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut d = Daemon {
            child,
            control: control.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Answers: a socket file a stopped daemon left behind does not.
        while std::os::unix::net::UnixStream::connect(control).is_err() {
            if let Ok(Some(s)) = d.child.try_wait() {
                panic!("{name} exited ({s}):\n{}", d.stderr());
            }
            assert!(Instant::now() < deadline, "{name}: no control socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// What `leapioctl config` prints.
    fn config(&self) -> String {
        let out = Command::new(bin("leapioctl"))
            .arg("-s")
            .arg(&self.control)
            .arg("config")
            .output()
            .expect("run leapioctl");
        assert!(
            out.status.success(),
            "leapioctl config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        text
    }

    /// Stop it (SIGTERM); it must exit cleanly.
    fn stop(mut self) {
        let status = term(&mut self.child, Duration::from_secs(20));
        let log = self.stderr();
        assert!(
            status.is_some_and(|s| s.success()),
            "did not stop cleanly ({status:?}):\n{log}"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A printed configuration as a table (comments and layout aside).
fn table(text: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("not TOML ({e}):\n{text}"))
}

/// Run `name` with `args`, expected to fail at once: its exit status and
/// what it wrote on stderr.
fn fails(name: &str, args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(bin(name))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    (status, text)
}

#[test]
fn socp_runs_from_a_file_with_the_command_line_over_it_and_again_from_what_it_prints() {
    let dir = Dir::new();
    let control = dir.join("socp-ctl.sock");
    let file = dir.write(
        "socp.toml",
        "# the runtime\n\
         pollers = 2\n\
         log-level = \"warn\"\n\
         poll = \"sleep\"\n\
         io-wait-us = \"50\"\n\
         poller-stats = true\n",
    );
    let socp = Daemon::start(
        "socp",
        &[
            "--config",
            file.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
            "--pollers",
            "1",
        ],
        &control,
    );
    let printed = socp.config();
    let t = table(&printed);
    // The command line won; the file's other keys are there.
    assert_eq!(t["pollers"].as_integer(), Some(1), "{printed}");
    assert_eq!(t["log-level"].as_str(), Some("warn"), "{printed}");
    assert_eq!(t["poll"].as_str(), Some("sleep"), "{printed}");
    assert_eq!(t["io-wait-us"].as_integer(), Some(50), "{printed}");
    assert_eq!(t["poller-stats"].as_bool(), Some(true), "{printed}");
    assert_eq!(t["control"].as_str(), control.to_str(), "{printed}");
    // Defaults are comments, not keys.
    assert!(!t.contains_key("tcp-pollers"), "{printed}");
    assert!(printed.contains("\n# tcp-pollers = 1\n"), "{printed}");
    socp.stop();

    // Started from the printed file alone: the same configuration.
    let again = dir.write("printed.toml", &printed);
    let socp = Daemon::start("socp", &["--config", again.to_str().unwrap()], &control);
    assert_eq!(table(&socp.config()), t);
    socp.stop();
}

#[test]
fn socp_refuses_a_broken_file_naming_its_line_and_key() {
    let dir = Dir::new();
    let control = dir.join("ctl.sock");
    for (name, text, at, key, says) in [
        (
            "bad-key.toml",
            "pollers = 2\npolers = 3\n",
            2,
            "polers",
            "unknown option (did you mean \"pollers\"?)",
        ),
        (
            "bad-value.toml",
            "log-level = \"warn\"\n\npollers = \"x\"\n",
            3,
            "pollers",
            "invalid value 'x': invalid digit found in string",
        ),
        (
            "bad-syntax.toml",
            "pollers = 2\nlog-level = \"warn\n",
            2,
            "log-level",
            "",
        ),
        (
            "bad-type.toml",
            "pollers = 2\ntcp-target = \"listen=127.0.0.1:4420\"\n",
            2,
            "tcp-target",
            "expected an array of strings",
        ),
    ] {
        let file = dir.write(name, text);
        let (status, stderr) = fails(
            "socp",
            &[
                "--config",
                file.to_str().unwrap(),
                "--control",
                control.to_str().unwrap(),
            ],
        );
        assert!(!status.success(), "{name}: {status}");
        let want = format!("socp: {}:{at}: key \"{key}\": {says}", file.display());
        assert!(
            stderr.starts_with(&want),
            "{name}: want {want}, got:\n{stderr}"
        );
        assert!(!control.exists(), "{name}: it served");
    }
}

#[test]
fn hostd_runs_from_a_file_with_the_command_line_over_it_and_refuses_a_broken_one() {
    let dir = Dir::new();
    let control = dir.join("hostd-ctl.sock");
    let link = format!("unix:{}", dir.join("link.sock").display());
    let ctrl = format!("name=vm0,sock={}", dir.join("vm0.sock").display());
    let file = dir.write(
        "hostd.toml",
        &format!("link = \"{link}\"\nctrl = [\n  \"{ctrl}\",\n]\nlog-level = \"warn\"\n"),
    );
    let hostd = Daemon::start(
        "leapio-hostd",
        &[
            "--config",
            file.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
            "--log-level",
            "error",
        ],
        &control,
    );
    let printed = hostd.config();
    let t = table(&printed);
    assert_eq!(t["log-level"].as_str(), Some("error"), "{printed}");
    assert_eq!(t["link"].as_str(), Some(link.as_str()), "{printed}");
    let ctrls: Vec<&str> = t["ctrl"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    assert_eq!(ctrls, [ctrl.as_str()], "{printed}");
    assert_eq!(t["control"].as_str(), control.to_str(), "{printed}");
    hostd.stop();

    // A controller the host-driver cannot parse, on the second line of
    // its array.
    let broken = dir.write(
        "broken.toml",
        &format!("link = \"{link}\"\nctrl = [\n  \"{ctrl}\",\n  \"name=vm1\",\n]\n"),
    );
    let (status, stderr) = fails(
        "leapio-hostd",
        &[
            "--config",
            broken.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
    );
    assert!(!status.success(), "{status}");
    let want = format!(
        "leapio-hostd: {}:4: key \"ctrl\": invalid value 'name=vm1': ",
        broken.display()
    );
    assert!(stderr.starts_with(&want), "want {want}, got:\n{stderr}");
    // An option only the host-driver itself gives is no key.
    let hidden = dir.write("hidden.toml", "fd-keeper = \"/tmp/keeper.sock\"\n");
    let (status, stderr) = fails("leapio-hostd", &["--config", hidden.to_str().unwrap()]);
    assert!(!status.success(), "{status}");
    let want = format!(
        "leapio-hostd: {}:1: key \"fd-keeper\": unknown option",
        hidden.display()
    );
    assert!(stderr.starts_with(&want), "want {want}, got:\n{stderr}");
}

/// scripts/systemd/NAME: the samples the install script puts in /etc/leapio.
fn sample(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/systemd")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn the_sample_files_start_a_host_driver_and_a_runtime() {
    let dir = Dir::new();
    let (hostd_ctl, socp_ctl) = (dir.join("hostd-ctl.sock"), dir.join("socp-ctl.sock"));
    let link = format!("unix:{}", dir.join("hostd.sock").display());
    let vm0 = format!("name=vm0,sock={}", dir.join("vm0.sock").display());
    // The samples' paths are the machine's (/run/leapio, /srv): the
    // command line puts them here; the rest is the samples'.
    let hostd = Daemon::start(
        "leapio-hostd",
        &[
            "--config",
            &sample("hostd.toml"),
            "--link",
            &link,
            "--control",
            hostd_ctl.to_str().unwrap(),
            "--ctrl",
            &vm0,
        ],
        &hostd_ctl,
    );
    let socp = Daemon::start(
        "socp",
        &[
            "--config",
            &sample("socp-example.toml"),
            "--link",
            &link,
            "--control",
            socp_ctl.to_str().unwrap(),
            "--ctrl",
            "name=vm0,ns=ram:16M",
        ],
        &socp_ctl,
    );
    let (h, s) = (table(&hostd.config()), table(&socp.config()));
    assert_eq!(h["link"].as_str(), Some(link.as_str()), "{h}");
    assert_eq!(s["pollers"].as_integer(), Some(2), "{s}");
    assert_eq!(s["link"].as_str(), Some(link.as_str()), "{s}");
    socp.stop();
    hostd.stop();
}
