//! `leapioctl`: talk to the control socket of `leapio-hostd` or `socp`,
//! and watch a runtime live (`leapioctl top`).

mod top;

use clap::Parser;
use leapio_service::control::call;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// Add and remove controllers (VMs) and namespaces while leapio-hostd or
/// socp runs, and see what they serve.
///
///   leapioctl -s /run/leapio/hostd-ctl.sock ctrl-add name=vm1,sock=/run/leapio/vm1.sock
///   leapioctl -s /run/leapio/socp-ctl.sock ctrl-add name=vm1,ns=file:/srv/vm1.img
///   leapioctl -s /run/leapio/socp-ctl.sock ns-add vm1 file:/srv/vm1-data.img
///   leapioctl -s /run/leapio/socp-ctl.sock ns-remove vm1 2
///   leapioctl -s /run/leapio/hostd-ctl.sock ctrl-remove vm1
///   leapioctl -s /run/leapio/hostd-ctl.sock status
///   leapioctl -s /run/leapio/socp-ctl.sock config > socp.toml   (the running configuration: socp --config socp.toml)
///   leapioctl -s /run/leapio/socp-ctl.sock qos-stats
///   leapioctl -s /run/leapio/socp-ctl.sock qos-add name=db,ctrl=vm1,class=lc,slo=p95:500us,iops=20000,rw=90:10
///   leapioctl -s /run/leapio/socp-ctl.sock qos-remove db
///   leapioctl -s /run/leapio/socp-ctl.sock qos-device /etc/leapio/flash0.json   (or off)
///   leapioctl -s /run/leapio/socp-ctl.sock service vm1 1   (a mirror's children, resync progress)
///   leapioctl -s /run/leapio/socp-ctl.sock service vm1 1 fail|readd|rebuild CHILD   (children from 0)
///   leapioctl -s /run/leapio/socp-ctl.sock service vm1 1 rate MBPS   (the resync's limit, until a restart)
///   leapioctl -s /run/leapio/socp-ctl.sock ana NQN STATE [IP:PORT]   (optimized, non-optimized, inaccessible)
///   leapioctl -s /run/leapio/socp-ctl.sock top [--interval SECS] [--sort iops|mbps|p99|depth|name] [--count N]
///   leapioctl -s PATH call METHOD '{"json":"params"}'
#[derive(Parser, Debug)]
#[command(name = "leapioctl", version, verbatim_doc_comment)]
struct Args {
    /// The control socket (leapio-hostd --control, socp --control).
    #[arg(short, long, value_name = "PATH")]
    sock: PathBuf,
    /// ctrl-add SPEC | ctrl-remove NAME | ns-add CTRL BACKEND | ns-remove
    /// CTRL NSID | status | config | qos-stats | qos-add TENANT | qos-remove
    /// NAME | qos-device FILE|off | service CTRL NSID [ACTION ARG...] | ana
    /// NQN STATE [IP:PORT] | top [--interval
    /// SECS] [--sort KEY] [--count N] | call METHOD [JSON]
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn request(cmd: &[String]) -> Result<(String, Value), String> {
    let arg = |i: usize, what: &str| {
        cmd.get(i)
            .cloned()
            .ok_or_else(|| format!("{}: missing {what}", cmd[0]))
    };
    Ok(match cmd[0].as_str() {
        "ctrl-add" => ("ctrl_add".into(), json!({ "spec": arg(1, "SPEC")? })),
        "ctrl-remove" => ("ctrl_remove".into(), json!({ "name": arg(1, "NAME")? })),
        "ns-add" => (
            "ns_add".into(),
            json!({ "ctrl": arg(1, "CTRL")?, "ns": arg(2, "BACKEND")? }),
        ),
        "ns-remove" => {
            let nsid: u32 = arg(2, "NSID")?
                .parse()
                .map_err(|_| "ns-remove: NSID must be a number".to_string())?;
            (
                "ns_remove".into(),
                json!({ "ctrl": arg(1, "CTRL")?, "nsid": nsid }),
            )
        }
        "status" => ("status".into(), json!({})),
        "config" => ("config".into(), json!({})),
        "qos-stats" => ("qos_stats".into(), json!({})),
        "qos-add" => ("qos_tenant_add".into(), json!({ "spec": arg(1, "SPEC")? })),
        "qos-remove" => ("qos_tenant_remove".into(), json!({ "name": arg(1, "NAME")? })),
        "qos-device" => match arg(1, "FILE")?.as_str() {
            "off" => ("qos_device".into(), json!({ "off": true })),
            f => ("qos_device".into(), json!({ "path": f })),
        },
        "service" => {
            let num = |i: usize, what: &str| -> Result<u64, String> {
                arg(i, what)?
                    .parse()
                    .map_err(|_| format!("service: {what} must be a number"))
            };
            let mut p = json!({ "ctrl": arg(1, "CTRL")?, "nsid": num(2, "NSID")? });
            if let Some(action) = cmd.get(3) {
                p["action"] = json!(action);
                p["args"] = json!(cmd[4..]);
            }
            ("service".into(), p)
        }
        "ana" => {
            let mut p = json!({ "nqn": arg(1, "NQN")?, "state": arg(2, "STATE")? });
            if let Some(l) = cmd.get(3) {
                p["listen"] = json!(l);
            }
            ("target_ana".into(), p)
        }
        "call" => {
            let params = match cmd.get(2) {
                Some(p) => serde_json::from_str(p).map_err(|e| format!("call: params: {e}"))?,
                None => json!({}),
            };
            (arg(1, "METHOD")?, params)
        }
        other => {
            return Err(format!(
                "unknown command {other} (ctrl-add, ctrl-remove, ns-add, ns-remove, status, config, qos-stats, qos-add, qos-remove, qos-device, service, ana, top, call)"
            ))
        }
    })
}

/// `top [--interval SECS] [--sort KEY] [--count N]`.
fn top_options(sock: &std::path::Path, cmd: &[String]) -> Result<top::Options, String> {
    let mut o = top::Options {
        sock: sock.to_path_buf(),
        interval: std::time::Duration::from_secs(1),
        sort: top::Sort::Iops,
        count: None,
    };
    let mut it = cmd.iter().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("top: {flag} needs a value"))
        };
        match flag.as_str() {
            "--interval" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.1 && *s <= 3600.0)
                    .ok_or_else(|| format!("top: --interval {v}: seconds from 0.1 to 3600"))?;
                o.interval = std::time::Duration::from_secs_f64(secs);
            }
            "--sort" => o.sort = value()?.parse()?,
            "--count" => {
                let v = value()?;
                o.count = Some(
                    v.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("top: --count {v}: a number above 0"))?,
                );
            }
            other => {
                return Err(format!(
                    "top: unknown option {other} (--interval SECS, --sort KEY, --count N)"
                ))
            }
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.command[0] == "top" {
        return match top_options(&args.sock, &args.command).and_then(|o| top::run(&o)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("leapioctl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = request(&args.command).and_then(|(m, p)| call(&args.sock, &m, p));
    match result {
        // The configuration as the file it is, not as JSON.
        Ok(v) if args.command[0] == "config" => match v.get("toml").and_then(Value::as_str) {
            Some(toml) => {
                print!("{toml}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("leapioctl: config: no \"toml\" in the answer: {v}");
                ExitCode::FAILURE
            }
        },
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("leapioctl: {e}");
            ExitCode::FAILURE
        }
    }
}
