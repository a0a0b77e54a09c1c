//! Start `socp` controllers in-process for tests, with a handle that stops
//! them.

use socp::config::CtrlSpec;
use socp::error_chain;
use socp::runtime::Runtime;
use socp::server::{start_controller, Served};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Running controllers and their pollers; stops everything on drop.
pub struct TestServer {
    pub dir: PathBuf,
    pub sockets: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    rt: Arc<Runtime>,
    served: Vec<Served>,
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
        let dir =
            std::env::temp_dir().join(format!("leapio-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let rt = Runtime::start_with(pollers, &[], io_wait)
            .map_err(|e| format!("starting pollers: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut served = Vec::new();
        let mut sockets = Vec::new();
        let fail =
            |e: String, rt: &Arc<Runtime>, stop: &Arc<AtomicBool>, served: &mut Vec<Served>| {
                stop.store(true, Ordering::Release);
                for s in served.drain(..) {
                    let _ = s.thread.join();
                }
                rt.shutdown();
                let _ = std::fs::remove_dir_all(&dir);
                e
            };
        for (i, s) in specs.iter().enumerate() {
            let sock = dir.join(format!("c{i}.sock"));
            let spec: CtrlSpec = match format!("sock={},{s}", sock.display()).parse() {
                Ok(spec) => spec,
                Err(e) => return Err(fail(format!("{e}"), &rt, &stop, &mut served)),
            };
            match start_controller(i, &spec, &rt, stop.clone()) {
                Ok(c) => served.push(c),
                Err(e) => return Err(fail(error_chain(&e), &rt, &stop, &mut served)),
            }
            sockets.push(sock);
        }
        Ok(TestServer {
            dir,
            sockets,
            stop,
            rt,
            served,
        })
    }

    pub fn sock(&self, i: usize) -> &std::path::Path {
        &self.sockets[i]
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for s in self.served.drain(..) {
            let _ = s.thread.join();
        }
        self.rt.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
