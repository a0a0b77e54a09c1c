//! The all-in-one deployment: the host-driver embedded in this process and
//! linked to the runtime over a socket pair (the in-process carrier). The
//! messages and shared memory are those of the split deployment.

use crate::config::CtrlSpec;
use crate::controllers::{Controllers, Served};
use crate::error_chain;
use crate::link_client::LinkClient;
use crate::runtime::Runtime;
use leapio_host_driver::HostDriver;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A running all-in-one: host-driver, link, runtime.
pub struct Embedded {
    pub host: Arc<HostDriver>,
    pub ctrls: Arc<Controllers>,
}

impl Embedded {
    /// Serve the controllers on their vfio-user sockets, open their
    /// namespaces and attach them to `rt`'s pollers.
    pub fn start(specs: &[CtrlSpec], rt: &Arc<Runtime>) -> Result<Embedded, String> {
        let host = HostDriver::new(&format!(
            "socp {} (embedded host-driver)",
            env!("CARGO_PKG_VERSION")
        ));
        let ctrls = Controllers::new(specs.iter().map(Served::of).collect(), Some(host.clone()));
        let mut e = Embedded { host, ctrls };
        if let Err(why) = e.attach(specs, rt) {
            e.shutdown();
            return Err(why);
        }
        Ok(e)
    }

    fn attach(&mut self, specs: &[CtrlSpec], rt: &Arc<Runtime>) -> Result<(), String> {
        for c in specs {
            let Some(sock) = &c.sock else {
                return Err(format!("controller {}: needs sock=PATH", c.ctrl_name()));
            };
            self.host
                .add_controller(&c.host_spec(sock))
                .map_err(|e| error_chain(&e))?;
        }
        let sock = self
            .host
            .connect_in_process()
            .map_err(|e| format!("in-process link: {e}"))?;
        let software = format!("socp {}", env!("CARGO_PKG_VERSION"));
        let (client, _reader) = LinkClient::connect(
            crate::transport::Transport::socket(sock),
            rt.clone(),
            &software,
        )
        .map_err(|e| format!("in-process link: {}", error_chain(&e)))?;
        self.ctrls.set_client(Some(client));
        self.ctrls.attach_all(false, &AtomicBool::new(false))
    }

    /// Stop: the controllers first (their resets need the pollers to drain
    /// their queues), then the link. The caller stops the pollers.
    pub fn shutdown(&mut self) {
        self.host.shutdown();
        self.ctrls.set_client(None);
    }
}
