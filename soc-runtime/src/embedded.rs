//! The all-in-one deployment: the host-driver embedded in this process and
//! linked to the runtime over a socket pair (the in-process carrier). The
//! messages and shared memory are those of the split deployment.

use crate::config::CtrlSpec;
use crate::ctrl::Namespace;
use crate::error_chain;
use crate::link_client::LinkClient;
use crate::namespaces::open_served;
use crate::runtime::Runtime;
use leapio_host_driver::{HostCtrlSpec, HostDriver};
use std::sync::Arc;
use std::time::Duration;

/// How long the embedded host-driver has to take the runtime's controllers.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// A running all-in-one: host-driver, link, runtime.
pub struct Embedded {
    pub host: Arc<HostDriver>,
    client: Option<Arc<LinkClient>>,
}

impl Embedded {
    /// Open every controller's namespaces, serve the controllers on their
    /// vfio-user sockets and attach them to `rt`'s pollers.
    pub fn start(specs: &[CtrlSpec], rt: &Arc<Runtime>) -> Result<Embedded, String> {
        let mut served: Vec<(String, Vec<Arc<Namespace>>)> = Vec::new();
        for c in specs {
            let name = c.ctrl_name();
            let ns = open_served(&c.namespaces, &name, true).map_err(|(nsid, e)| {
                format!("controller {name}: namespace {nsid}: {}", error_chain(&e))
            })?;
            served.push((name, ns));
        }
        Embedded::start_with(specs, rt, served)
    }

    /// As [`Embedded::start`], with the namespaces already open (in the
    /// order of `specs`).
    pub fn start_with(
        specs: &[CtrlSpec],
        rt: &Arc<Runtime>,
        served: Vec<(String, Vec<Arc<Namespace>>)>,
    ) -> Result<Embedded, String> {
        let host = HostDriver::new(&format!(
            "socp {} (embedded host-driver)",
            env!("CARGO_PKG_VERSION")
        ));
        let mut e = Embedded { host, client: None };
        if let Err(why) = e.attach(specs, rt, served) {
            e.shutdown();
            return Err(why);
        }
        Ok(e)
    }

    fn attach(
        &mut self,
        specs: &[CtrlSpec],
        rt: &Arc<Runtime>,
        served: Vec<(String, Vec<Arc<Namespace>>)>,
    ) -> Result<(), String> {
        for c in specs {
            let Some(sock) = &c.sock else {
                return Err(format!("controller {}: needs sock=PATH", c.ctrl_name()));
            };
            let spec = HostCtrlSpec {
                name: c.ctrl_name(),
                sock: sock.clone(),
                serial: c.serial.clone(),
                io_queues: c.io_queues,
                queue_entries: c.queue_entries,
                mdts: c.mdts,
            };
            self.host
                .add_controller(&spec)
                .map_err(|e| error_chain(&e))?;
        }
        if served.is_empty() {
            return Ok(());
        }
        let sock = self
            .host
            .connect_in_process()
            .map_err(|e| format!("in-process link: {e}"))?;
        let software = format!("socp {}", env!("CARGO_PKG_VERSION"));
        let (client, _reader) = LinkClient::connect(sock, rt.clone(), &software)
            .map_err(|e| format!("in-process link: {}", error_chain(&e)))?;
        self.client = Some(client.clone());
        let waits: Vec<_> = served
            .into_iter()
            .map(|(name, ns)| {
                let rx = client.attach(&name, ns, false);
                (name, rx)
            })
            .collect();
        for (name, rx) in waits {
            match rx.recv_timeout(ATTACH_TIMEOUT) {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(format!("controller {name}: {why}")),
                Err(_) => return Err(format!("controller {name}: not attached in time")),
            }
        }
        Ok(())
    }

    /// Stop: the controllers first (their resets need the pollers to drain
    /// their queues), then the link. The caller stops the pollers.
    pub fn shutdown(&mut self) {
        self.host.shutdown();
        self.client = None;
    }
}
