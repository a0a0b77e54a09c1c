//! The host-driver embedded in this process and linked to the runtime over
//! a socket pair (the in-process carrier). The messages and shared memory
//! are those of the split deployment.

use crate::config::CtrlSpec;
use leapio_host_driver::HostDriver;
use leapio_service::control::{param_str, Handler};
use leapio_service::error_chain;
use serde_json::{json, Value};
use socp::controllers::{Controllers, Served};
use socp::link::client::LinkClient;
use socp::pcie::runtime::Runtime;
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
            "leapio {} (embedded host-driver)",
            env!("CARGO_PKG_VERSION")
        ));
        let ctrls = Controllers::new(specs.iter().map(|s| Served::of(&s.runtime)).collect());
        let mut e = Embedded { host, ctrls };
        if let Err(why) = e.attach(specs, rt) {
            e.shutdown();
            return Err(why);
        }
        Ok(e)
    }

    fn attach(&mut self, specs: &[CtrlSpec], rt: &Arc<Runtime>) -> Result<(), String> {
        for c in specs {
            self.host
                .add_controller(&c.host)
                .map_err(|e| error_chain(&e))?;
        }
        let sock = self
            .host
            .connect_in_process()
            .map_err(|e| format!("in-process link: {e}"))?;
        let software = format!("leapio {}", env!("CARGO_PKG_VERSION"));
        let (client, _reader) =
            LinkClient::connect(socp::link::Carrier::socket(sock), rt.clone(), &software)
                .map_err(|e| format!("in-process link: {}", error_chain(&e)))?;
        self.ctrls.set_client(Some(client));
        self.ctrls.attach_all(false, &AtomicBool::new(false))
    }

    /// Serve one more controller (`ctrl_add`): the host-driver serves it to
    /// the hypervisor, the runtime attaches it.
    pub fn add(&self, spec: &CtrlSpec) -> Result<Value, String> {
        self.host
            .add_controller(&spec.host)
            .map_err(|e| error_chain(&e))?;
        if let Err(e) = self.ctrls.add(&spec.runtime) {
            let _ = self.host.remove_controller(&spec.host.name);
            return Err(e);
        }
        Ok(json!({ "name": spec.host.name }))
    }

    /// Stop serving a controller (`ctrl_remove`): the host-driver resets it
    /// and asks the runtime to let go.
    pub fn remove(&self, name: &str) -> Result<Value, String> {
        self.ctrls.forget(name)?;
        self.host
            .remove_controller(name)
            .map_err(|e| error_chain(&e))?;
        Ok(json!(true))
    }

    /// The control socket's methods: controllers are added and removed on
    /// both halves; the rest is the runtime's.
    pub fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        let runtime = self.ctrls.handler();
        Arc::new(move |method, params| match method {
            "ctrl_add" => {
                let spec: CtrlSpec = param_str(params, "spec")?
                    .parse()
                    .map_err(|e: crate::config::SpecError| e.to_string())?;
                me.add(&spec)
            }
            "ctrl_remove" => me.remove(param_str(params, "name")?),
            _ => runtime(method, params),
        })
    }

    /// Stop: the controllers first (their resets need the pollers to drain
    /// their queues), then the link. The caller stops the pollers.
    pub fn shutdown(&self) {
        self.host.shutdown();
        self.ctrls.set_client(None);
    }
}
