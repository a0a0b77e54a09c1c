//! Start `socp` controllers in-process for tests, with a handle that stops
//! them.

use socp::config::CtrlSpec;
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
    pub fn start_with(
        specs: &[&str],
        pollers: usize,
        io_wait: Option<std::time::Duration>,
    ) -> TestServer {
        let dir =
            std::env::temp_dir().join(format!("leapio-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let rt = Runtime::start_with(pollers, &[], io_wait).expect("pollers");
        let stop = Arc::new(AtomicBool::new(false));
        let mut served = Vec::new();
        let mut sockets = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let sock = dir.join(format!("c{i}.sock"));
            let spec: CtrlSpec = format!("sock={},{s}", sock.display())
                .parse()
                .expect("spec");
            served.push(start_controller(i, &spec, &rt, stop.clone()).expect("controller"));
            sockets.push(sock);
        }
        TestServer {
            dir,
            sockets,
            stop,
            rt,
            served,
        }
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
