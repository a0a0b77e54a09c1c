//! `leapio`: the host-driver and the runtime in one process.

use clap::Parser;
use leapio::{CtrlSpec, Embedded};
use leapio_service::config_file;
use socp::cli::{Daemon, RuntimeOpts};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// LeapIO in one process: the host-driver (each VM's vfio-user device,
/// PCI function and admin queue) and the runtime (socp: pollers serving
/// the I/O queues on the namespaces' backends) linked in-process.
///
///   leapio --ctrl sock=/run/leapio/vm0.sock,ns=file:/srv/vm0.img
///
/// QEMU >= 10.1 attaches the controller with
///
///   -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem
///   -device '{"driver":"vfio-user-pci","socket":{"path":"/run/leapio/vm0.sock","type":"unix"}}'
///
/// or cloud-hypervisor: --memory shared=on --user-device socket=/run/leapio/vm0.sock
///
/// The runtime restarts on its own only when it is a process of its own:
/// leapio-hostd and socp --link (see their --help).
#[derive(Parser, Debug)]
#[command(name = "leapio", version, verbatim_doc_comment)]
struct Args {
    /// A controller: sock=PATH[,name=NAME],ns=BACKEND[,bs=N][,ns=BACKEND[,bs=N]...][,io-queues=N][,queue-entries=N][,mdts=N][,vectors=N][,serial=S][,sock-mode=MODE][,sock-owner=UID:GID]
    ///
    /// sock is the vfio-user socket the hypervisor connects to; the name
    /// defaults to its file's stem. BACKEND is ram:SIZE (e.g. ram:256M),
    /// file:PATH (a regular file or a block device),
    /// nvme-tcp:HOST:PORT/SUBNQN[?options], flash:PATH[?...] or
    /// zns:PATH[?...]. A bs=N right after an ns= sets that namespace's LBA
    /// size (512..65536). Namespaces get NSIDs 1, 2, ... in order.
    /// io-queues: I/O queue pairs offered (default 32); queue-entries: max
    /// entries per queue (default 1024); mdts: max transfer 4 KiB << N
    /// (default 5 = 128 KiB).
    #[arg(long = "ctrl", value_name = "SPEC", verbatim_doc_comment)]
    ctrls: Vec<CtrlSpec>,

    #[command(flatten)]
    opts: RuntimeOpts,
}

fn main() -> ExitCode {
    let (mut args, config) = config_file::parse_or_exit::<Args>(std::env::args_os());
    args.opts.running_config = config.toml;
    leapio_service::logging::init(&args.opts.log_level, args.opts.log_format);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leapio: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.ctrls.is_empty() && args.opts.targets() == 0 && args.opts.control.is_none() {
        return Err(
            "nothing to serve: give --ctrl, --tcp-target, --rdma-target or --control (see --help)"
                .into(),
        );
    }
    let d = Daemon::start(&args.opts)?;
    let served = serve(args, &d);
    d.finish(served)
}

fn serve(args: &Args, d: &Daemon) -> Result<(), String> {
    let e = Arc::new(Embedded::start(&args.ctrls, &d.rt)?);
    let mut sources = d.sources(vec![e.ctrls.clone()]);
    let host = e.host.clone();
    sources.host = Some(Arc::new(
        move |x: &mut leapio_service::metrics::Exposition| {
            host.expose(x);
        },
    ));
    if let Err(why) = d.serve_control(&args.opts, e.handler(), sources) {
        e.shutdown();
        return Err(why);
    }
    tracing::info!(
        controllers = args.ctrls.len(),
        pollers = d.rt.pollers(),
        "leapio running"
    );
    // Serving: the controllers' sockets are up and attached to the
    // pollers, the control socket and the targets listen. The watchdog
    // watches the embedded host-driver's events thread with the pollers.
    let host = e.host.clone();
    d.ready(
        &format!(
            "serving {} controllers, {} pollers",
            args.ctrls.len(),
            d.rt.pollers()
        ),
        leapio_service::notify::counters_moved("the host-driver's events thread", move || {
            host.heartbeat().into_iter().collect()
        }),
    );
    while !d.stopping() {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping");
    d.notify_stopping();
    e.shutdown();
    Ok(())
}
