//! Command line: options in spdk_nvme_perf's spelling where it has one
//! (-q -o -w -M -t), parsed with clap, then checked into a [`Config`].

use clap::{ArgGroup, Parser, ValueEnum};
use std::path::PathBuf;

/// Drive a LeapIO NVMe controller as a host over vfio-user, with no VM, and
/// report IOPS, bandwidth, latency percentiles and the controller's CPU cost
/// per I/O (in the spirit of SPDK's spdk_nvme_perf).
///
/// Targets:
///   --sock PATH     a running socp (add --socp-pid PID to account its CPU)
///   --spawn SPEC    start socp in this process, e.g. --spawn ns=ram:1G
///   --null          a zero-work controller thread over the same shared-memory
///                   queues: the harness's own cost, to subtract
///   --null-copy     the null controller plus the data copy of a RAM disk of
///                   --range bytes: the floor of any RAM backend on this machine
///
/// Examples:
///   leapio-perf --spawn ns=ram:1G -q 1 -o 4k -w randread -t 10
///   leapio-perf --sock /run/leapio/vm0.sock --socp-pid $(pidof socp) -q 128 --json
///   leapio-perf --null -q 1 -t 5
///   leapio-perf --spawn ns=ram:256M -w randrw -M 70 --verify
///   leapio-perf --spawn ns=ram:1G --rate 100000 -q 32   (open loop)
#[derive(Parser, Debug, Clone)]
#[command(name = "leapio-perf", version, verbatim_doc_comment)]
#[command(group(ArgGroup::new("target").required(true).args(["sock", "spawn", "null", "null_copy", "backend"])))]
pub struct Args {
    /// vfio-user socket of a running socp controller.
    #[arg(long, value_name = "PATH")]
    pub sock: Option<PathBuf>,

    /// PID of that socp: its socp-poller-* threads' CPU time is reported.
    #[arg(long, value_name = "PID")]
    pub socp_pid: Option<u32>,

    /// PID of the socp serving the NVMe/TCP target behind the namespace
    /// (ns=nvme-tcp:...): its socp-tcp-* pollers' CPU time is reported.
    #[arg(long, value_name = "PID")]
    pub remote_pid: Option<u32>,

    /// Start socp in-process with this controller spec (socp's --ctrl
    /// syntax without sock=), e.g. ns=ram:1G or ns=file:/dev/shm/img.
    #[arg(long, value_name = "SPEC")]
    pub spawn: Option<String>,

    /// Drive one of socp's backends directly from the harness thread (no
    /// controller, rings or poller), e.g. ram:1G or
    /// nvme-tcp:127.0.0.1:4420/NQN (the harness is then the NVMe/TCP host).
    /// One queue, closed loop.
    #[arg(long, value_name = "SPEC")]
    pub backend: Option<String>,

    /// Poller threads of the spawned socp.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub pollers: usize,

    /// A zero-work controller in this process (reads each SQE, posts a
    /// successful CQE at once): the cost of the harness and of the shared
    /// memory queues themselves.
    #[arg(long)]
    pub null: bool,

    /// The null controller, but reads and writes copy their data between the
    /// guest buffers and a private RAM area of --range bytes (as socp's RAM
    /// backend does), and nothing else. I/O sizes up to 8 KiB (PRP1+PRP2).
    #[arg(long)]
    pub null_copy: bool,

    /// Outstanding I/Os per queue.
    #[arg(
        short = 'q',
        long = "queue-depth",
        default_value_t = 1,
        value_name = "N"
    )]
    pub queue_depth: u32,

    /// I/O size in bytes (suffixes k, M: 4k, 128k).
    #[arg(short = 'o', long = "io-size", default_value = "4k", value_parser = parse_size, value_name = "BYTES")]
    pub io_size: u64,

    /// I/O pattern.
    #[arg(short = 'w', long = "workload", value_enum, default_value_t = Pattern::Randread)]
    pub workload: Pattern,

    /// Percentage of reads in randrw.
    #[arg(
        short = 'M',
        long = "rwmixread",
        default_value_t = 50,
        value_name = "PCT"
    )]
    pub rwmixread: u8,

    /// I/O queue pairs, all driven by one harness thread.
    #[arg(short = 'n', long = "queues", default_value_t = 1, value_name = "N")]
    pub queues: u16,

    /// Measured run time in seconds.
    #[arg(
        short = 't',
        long = "time",
        default_value_t = 10.0,
        value_name = "SECONDS"
    )]
    pub time: f64,

    /// Warm-up before measuring, in seconds (I/O runs, nothing is recorded).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub warmup: f64,

    /// Open loop: issue at this many IOPS (over all queues) on a fixed
    /// schedule; latency counts from each I/O's scheduled time, so a stalled
    /// controller is charged for the I/Os it held back (wrk2/ReFlex's
    /// coordinated-omission correction). Closed loop without it.
    #[arg(long, value_name = "IOPS")]
    pub rate: Option<f64>,

    /// With --rate: when no completion arrived and the next I/O is not due
    /// for this long, sleep this long instead of spinning (a paced tenant
    /// on a machine with few cores; latencies are then seen up to about
    /// this late). 0: always spin.
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub idle_sleep_us: u64,

    /// Namespace to drive.
    #[arg(long, default_value_t = 1, value_name = "NSID")]
    pub nsid: u32,

    /// Wait up to this many seconds for the namespace to become active (a
    /// split controller shows its namespaces once a runtime has attached,
    /// e.g. socp in a SoC VM that boots after the host connected).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub wait_ns: f64,

    /// Bytes of the namespace to address, from LBA 0 (default: all of it;
    /// 1G for --null).
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    pub range: Option<u64>,

    /// Enable interrupts on the I/O completion queues (the controller then
    /// signals an eventfd per batch, as for a real guest). Default: polled
    /// queues, as SPDK's perf uses.
    #[arg(long)]
    pub irq: bool,

    /// Implies --irq: when no completion is waiting, block on the queues'
    /// interrupt eventfds (as a guest's driver sleeps) instead of spinning.
    /// On a machine with few cores, a spinning harness takes the CPU the
    /// kernel needs to complete the backend's I/O.
    #[arg(long)]
    pub irq_wait: bool,

    /// Data integrity: writes carry a pattern made of their LBA and --seed,
    /// reads check it. With reads in the workload, the range is first
    /// written sequentially (not timed).
    #[arg(long)]
    pub verify: bool,

    /// Write the whole range once, sequentially, before the run (not
    /// timed): reads then find real data (a RAM namespace's untouched pages
    /// cost a page fault on first access; a sparse file's holes cost no
    /// I/O). Implied by --verify when the workload reads.
    #[arg(long)]
    pub prefill: bool,

    /// Pin the harness thread to this CPU (like spdk_nvme_perf's core mask).
    #[arg(long, value_name = "CPU")]
    pub cpu: Option<usize>,

    /// Pin the target's threads to this CPU: the null controller, the
    /// pollers of --spawn, or with --socp-pid those of that socp. Two
    /// spinning threads sharing a core wait for each other's time slices:
    /// pin them apart on a busy machine.
    #[arg(long, value_name = "CPU")]
    pub target_cpu: Option<usize>,

    /// With --spawn: socp's --io-wait-us (pollers with only backend I/O
    /// pending sleep in io_uring up to this long instead of spinning).
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub io_wait_us: u64,

    /// Seed of the random offsets and of the --verify pattern.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// One JSON object on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,

    /// After this run, take more from standard input, one per line (the
    /// options of this command line but the target), against the same
    /// controller over the same connection: the guest's memory stays the
    /// same (a controller served from an SoC keeps its memory window). A
    /// report (one line of JSON with --json) each. Needs --sock.
    #[arg(long, requires = "sock")]
    pub more: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Randread,
    Randwrite,
    Read,
    Write,
    Randrw,
}

impl Pattern {
    pub fn random(self) -> bool {
        matches!(
            self,
            Pattern::Randread | Pattern::Randwrite | Pattern::Randrw
        )
    }
    /// Percentage of reads.
    pub fn read_pct(self, rwmixread: u8) -> u8 {
        match self {
            Pattern::Randread | Pattern::Read => 100,
            Pattern::Randwrite | Pattern::Write => 0,
            Pattern::Randrw => rwmixread,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Randread => "randread",
            Pattern::Randwrite => "randwrite",
            Pattern::Read => "read",
            Pattern::Write => "write",
            Pattern::Randrw => "randrw",
        }
    }
}

/// Which controller to drive.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Sock {
        path: PathBuf,
        pid: Option<u32>,
    },
    Spawn {
        spec: String,
        pollers: usize,
    },
    /// A backend driven directly (--backend).
    Backend {
        spec: String,
    },
    /// `copy`: move the data too (--null-copy).
    Null {
        copy: bool,
    },
}

/// Checked settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub target: Target,
    pub qd: u32,
    pub io_size: u64,
    pub pattern: Pattern,
    pub read_pct: u8,
    pub queues: u16,
    pub time_ns: u64,
    pub warmup_ns: u64,
    pub rate: Option<f64>,
    pub idle_sleep_ns: u64,
    pub nsid: u32,
    pub wait_ns_ns: u64,
    pub range: Option<u64>,
    pub irq: bool,
    pub irq_wait: bool,
    pub verify: bool,
    pub prefill: bool,
    pub cpu: Option<usize>,
    pub target_cpu: Option<usize>,
    pub remote_pid: Option<u32>,
    pub io_wait_us: u64,
    pub seed: u64,
    pub json: bool,
    pub more: bool,
}

/// Most entries an I/O queue can have (CAP.MQES is 16 bits, 0's based).
const MAX_QUEUE_ENTRIES: u32 = 65536;

fn seconds_ns(what: &str, s: f64, min: f64) -> Result<u64, String> {
    if !s.is_finite() || s < min || s > 86_400.0 {
        return Err(format!(
            "{what} must be between {min} and 86400 seconds, not {s}"
        ));
    }
    // In range: at most 8.64e13 ns.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((s * 1e9).round() as u64)
}

impl Config {
    pub fn from_args(a: &Args) -> Result<Config, String> {
        if a.socp_pid.is_some() && a.sock.is_none() {
            return Err(
                "--socp-pid goes with --sock (--spawn and --null account their own threads)".into(),
            );
        }
        let target = if let Some(path) = &a.sock {
            Target::Sock {
                path: path.clone(),
                pid: a.socp_pid,
            }
        } else if let Some(spec) = &a.spawn {
            if spec.split(',').any(|kv| kv.starts_with("sock=")) {
                return Err("--spawn picks its own socket: leave sock= out".into());
            }
            if a.pollers == 0 {
                return Err("--pollers must be at least 1".into());
            }
            Target::Spawn {
                spec: spec.clone(),
                pollers: a.pollers,
            }
        } else if let Some(spec) = &a.backend {
            if a.rate.is_some() || a.verify || a.queues != 1 || a.irq || a.irq_wait {
                return Err(
                    "--backend runs one queue, closed loop, unverified: no --rate, --verify, -n, --irq".into(),
                );
            }
            Target::Backend { spec: spec.clone() }
        } else {
            Target::Null { copy: a.null_copy }
        };
        if a.queue_depth == 0 || a.queue_depth >= MAX_QUEUE_ENTRIES {
            return Err(format!(
                "-q must be between 1 and {}",
                MAX_QUEUE_ENTRIES - 1
            ));
        }
        if a.queues == 0 || a.queues > 511 {
            return Err("-n must be between 1 and 511".into());
        }
        if a.io_size == 0 || a.io_size % 512 != 0 || a.io_size > (2 << 20) {
            return Err(format!(
                "-o {} is not a multiple of 512 between 512 B and 2 MiB",
                a.io_size
            ));
        }
        if a.rwmixread > 100 {
            return Err("-M is a percentage (0..100)".into());
        }
        if a.rwmixread != 50 && a.workload != Pattern::Randrw {
            return Err("-M only applies to -w randrw".into());
        }
        if let Some(r) = a.rate {
            if !(1.0..=1e9).contains(&r) {
                return Err(format!("--rate {r} is not between 1 and 1e9 IOPS"));
            }
        }
        if a.verify && matches!(target, Target::Null { .. }) {
            return Err("--verify needs a controller that stores data (not --null)".into());
        }
        if a.null_copy && a.io_size > 8192 {
            return Err("--null-copy handles I/O sizes up to 8k (PRP1 and PRP2)".into());
        }
        if a.nsid == 0 || a.nsid == u32::MAX {
            return Err(format!("--nsid {} is not a namespace ID", a.nsid));
        }
        if a.target_cpu.is_some() && matches!(target, Target::Sock { pid: None, .. }) {
            return Err("--target-cpu with --sock needs --socp-pid".into());
        }
        if let Some(r) = a.range {
            if r < a.io_size {
                return Err(format!("--range {r} is smaller than one I/O"));
            }
        }
        Ok(Config {
            target,
            qd: a.queue_depth,
            io_size: a.io_size,
            pattern: a.workload,
            read_pct: a.workload.read_pct(a.rwmixread),
            queues: a.queues,
            time_ns: seconds_ns("-t", a.time, 0.001)?,
            warmup_ns: seconds_ns("--warmup", a.warmup, 0.0)?,
            rate: a.rate,
            idle_sleep_ns: a.idle_sleep_us.min(1_000_000) * 1000,
            nsid: a.nsid,
            wait_ns_ns: seconds_ns("--wait-ns", a.wait_ns, 0.0)?,
            range: a.range,
            irq: a.irq || a.irq_wait,
            irq_wait: a.irq_wait,
            verify: a.verify,
            prefill: a.prefill || (a.verify && a.workload.read_pct(a.rwmixread) > 0),
            cpu: a.cpu,
            target_cpu: a.target_cpu,
            remote_pid: a.remote_pid,
            io_wait_us: a.io_wait_us,
            seed: a.seed,
            json: a.json,
            more: a.more,
        })
    }
}

/// A byte count: digits with an optional binary suffix (k/K, m/M, g/G, t/T,
/// optionally followed by "iB" or "B").
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 4k, 1M, 2G)"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{s:?}: unknown size suffix {suffix:?}")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["leapio-perf"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        Config::from_args(&a)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("128K"), Ok(128 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("4q").is_err());
        assert!(parse_size("-4k").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("17179869184G").is_err());
    }

    #[test]
    fn null_copy_is_a_null_target_that_moves_data() {
        let c = parse(&["--null-copy", "--range", "8M"]).unwrap();
        assert_eq!(c.target, Target::Null { copy: true });
        assert_eq!(c.range, Some(8 << 20));
        let e = parse(&["--null-copy", "-o", "16k"]).unwrap_err();
        assert!(e.contains("up to 8k"), "{e}");
        assert!(parse(&["--null-copy", "--verify"]).is_err());
        assert!(parse(&["--null-copy", "--null"]).is_err());
    }

    #[test]
    fn defaults_and_spdk_spellings() {
        let c = parse(&["--null"]).unwrap();
        assert_eq!(c.target, Target::Null { copy: false });
        assert_eq!((c.qd, c.io_size, c.queues), (1, 4096, 1));
        assert_eq!(c.pattern, Pattern::Randread);
        assert_eq!(c.read_pct, 100);
        assert_eq!((c.time_ns, c.warmup_ns), (10_000_000_000, 1_000_000_000));
        assert_eq!(c.rate, None);

        let c = parse(&[
            "--spawn",
            "ns=ram:1G",
            "--pollers",
            "2",
            "-q",
            "128",
            "-o",
            "8k",
            "-w",
            "randrw",
            "-M",
            "70",
            "-n",
            "4",
            "-t",
            "2.5",
            "--warmup",
            "0",
            "--rate",
            "1000",
            "--nsid",
            "2",
            "--verify",
            "--json",
            "--cpu",
            "1",
            "--target-cpu",
            "0",
        ])
        .unwrap();
        assert!(c.prefill, "--verify with reads prefills");
        assert_eq!((c.cpu, c.target_cpu), (Some(1), Some(0)));
        assert_eq!(
            c.target,
            Target::Spawn {
                spec: "ns=ram:1G".into(),
                pollers: 2
            }
        );
        assert_eq!((c.qd, c.io_size, c.queues, c.nsid), (128, 8192, 4, 2));
        assert_eq!((c.pattern, c.read_pct), (Pattern::Randrw, 70));
        assert_eq!((c.time_ns, c.warmup_ns), (2_500_000_000, 0));
        assert_eq!(c.rate, Some(1000.0));
        assert!(c.verify && c.json);

        assert!(!parse(&["--null"]).unwrap().prefill);
        assert!(parse(&["--null", "--prefill"]).unwrap().prefill);
        assert!(
            !parse(&["--sock", "/s", "--verify", "-w", "write"])
                .unwrap()
                .prefill
        );
        let c = parse(&["--sock", "/tmp/s", "--socp-pid", "42", "-w", "write"]).unwrap();
        assert_eq!(
            c.target,
            Target::Sock {
                path: "/tmp/s".into(),
                pid: Some(42)
            }
        );
        assert_eq!(c.read_pct, 0);
    }

    #[test]
    fn bad_combinations_are_refused() {
        for bad in [
            &[][..],                                   // no target
            &["--null", "--sock", "/x"],               // two targets
            &["--null", "--socp-pid", "3"],            // pid without sock
            &["--null", "-q", "0"],                    // no depth
            &["--null", "-q", "65536"],                // deeper than any queue
            &["--null", "-o", "1000"],                 // not a multiple of 512
            &["--null", "-o", "4M"],                   // too large
            &["--null", "-n", "0"],                    // no queue
            &["--null", "-w", "randread", "-M", "30"], // -M without randrw
            &["--null", "-w", "randrw", "-M", "101"],  // not a percentage
            &["--null", "--rate", "0"],                // no rate
            &["--null", "--verify"],                   // nothing to verify
            &["--null", "-t", "0"],                    // no time
            &["--null", "--warmup", "-1"],             // negative warm-up
            &["--null", "--nsid", "0"],                // no such NSID
            &["--null", "--range", "1k"],              // smaller than an I/O
            &["--spawn", "sock=/x,ns=ram:1M"],         // socket is ours
            &["--spawn", "ns=ram:1M", "--pollers", "0"],
            &["--null", "-w", "trim"],
            &["--sock", "/s", "--target-cpu", "0"], // whose threads?
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
