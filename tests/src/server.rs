//! Start `socp` controllers in-process for tests (the all-in-one
//! deployment: host-driver and runtime linked over a socket pair), with a
//! handle that stops them.

use leapio::{CtrlSpec, Embedded};
use socp::pcie::runtime::Runtime;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Running controllers and their pollers; stops everything on drop.
pub struct TestServer {
    pub dir: PathBuf,
    pub sockets: Vec<PathBuf>,
    rt: Arc<Runtime>,
    embedded: Embedded,
}

impl TestServer {
    /// One controller per spec string (without `sock=`: sockets are
    /// created in a fresh directory), served by `pollers` pollers.
    pub fn start(specs: &[&str], pollers: usize) -> TestServer {
        TestServer::start_with(specs, pollers, None)
    }

    /// As [`TestServer::start`], with the pollers' `io_wait` setting.
    /// Panics on a bad spec or a backend that cannot open (tests).
    pub fn start_with(
        specs: &[&str],
        pollers: usize,
        io_wait: Option<std::time::Duration>,
    ) -> TestServer {
        match TestServer::try_start(specs, pollers, io_wait) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// As [`TestServer::start_with`], with errors (bad spec, a backend that
    /// cannot open) returned as messages that name the problem.
    pub fn try_start(
        specs: &[&str],
        pollers: usize,
        io_wait: Option<std::time::Duration>,
    ) -> Result<TestServer, String> {
        let dir = test_dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let opts = socp::pcie::runtime::PollerOptions {
            io_wait,
            ..Default::default()
        };
        let rt = Runtime::start_with(pollers, &[], opts)
            .map_err(|e| format!("starting pollers: {e}"))?;
        let mut parsed = Vec::new();
        let mut sockets = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let sock = dir.join(format!("c{i}.sock"));
            match format!("sock={},{s}", sock.display()).parse::<CtrlSpec>() {
                Ok(spec) => parsed.push(spec),
                Err(e) => {
                    rt.shutdown();
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e.to_string());
                }
            }
            sockets.push(sock);
        }
        match Embedded::start(&parsed, &rt) {
            Ok(embedded) => Ok(TestServer {
                dir,
                sockets,
                rt,
                embedded,
            }),
            Err(e) => {
                rt.shutdown();
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub fn sock(&self, i: usize) -> &std::path::Path {
        &self.sockets[i]
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.embedded.shutdown();
        self.rt.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory for one test's sockets and files.
pub fn test_dir() -> PathBuf {
    std::env::temp_dir().join(format!("leapio-test-{}-{}", std::process::id(), unique()))
}

fn unique() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
