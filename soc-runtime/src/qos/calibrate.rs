//! `socp calibrate`: ReFlex's device model from a backend's latency-vs-load
//! curve. Open-loop load (each I/O due at a fixed schedule, its latency
//! counted from its due time, so a saturated device is charged for the
//! I/Os it made wait) at rising rates, for several read/write mixes:
//!
//! - latencies are those of the reads (as in ReFlex: the SLO is about the
//!   reads of latency-critical tenants; writes are acknowledged from the
//!   device's buffers, and their own latency is best effort's business);
//! - the read-only sweep is the curve (tokens per second = read IOPS,
//!   with p95 and p99 at each load);
//! - for a mix with write fraction w, the IOPS it sustains at the SLO, R_w,
//!   and the read-only rate at the SLO, T, give the write cost c from
//!   R_w (1 - w + w c) = T; the median over the mixes is the model's.

use super::model::{DeviceModel, MixRate, Point, Slo, TOKEN_BYTES};
use clap::Parser;
use leapio_backends::{open_backend, BackendQueue, BackendSpec, Completion, IoKind, IoRequest};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Calibrate a backend for QoS: drive it with open-loop load at several
/// read/write mixes and write the device model `socp --qos device=FILE`
/// loads.
///
///   socp calibrate 'flash:/var/tmp/f0.flash?channels=2&dies=2' --slo p95:500us --out f0.json
///   socp calibrate file:/dev/nvme0n1 --slo p99:1ms --mixes 100,90,70,50 --out nvme0.json
#[derive(Parser, Debug)]
#[command(name = "socp calibrate", verbatim_doc_comment)]
pub struct CalibrateArgs {
    /// The backend (socp's ns= syntax: flash:PATH?..., file:PATH, ...).
    pub backend: String,
    /// The latency objective the write cost is derived at.
    #[arg(long, default_value = "p95:500us")]
    pub slo: Slo,
    /// Read percentages of the mixes (100 first: the curve).
    #[arg(long, value_delimiter = ',', default_value = "100,90,70,50")]
    pub mixes: Vec<u32>,
    /// Seconds per load step.
    #[arg(long, default_value_t = 0.5)]
    pub step_seconds: f64,
    /// First load, in IOPS.
    #[arg(long, default_value_t = 2000.0)]
    pub start_iops: f64,
    /// Each step multiplies the load by this.
    #[arg(long, default_value_t = 1.2)]
    pub factor: f64,
    /// Most steps per mix.
    #[arg(long, default_value_t = 30)]
    pub max_steps: u32,
    /// Most I/Os outstanding (later ones wait, and count as late).
    #[arg(long, default_value_t = 512)]
    pub depth: u32,
    /// Bytes of the device to address from offset 0 (default: all).
    #[arg(long)]
    pub range: Option<u64>,
    /// Do not write the range before measuring (by default it is written
    /// once in order, then overwritten once at random: a flash device reads
    /// unwritten pages without touching the media, and its writes cost
    /// their steady-state garbage collection only once it is full).
    #[arg(long)]
    pub no_prefill: bool,
    /// Where to write the model (JSON); stdout without it.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One step's measurement.
#[derive(Clone, Copy, Debug)]
struct Step {
    offered: f64,
    achieved: f64,
    p95_us: f64,
    p99_us: f64,
}

/// I/O buffers, 4 KiB aligned (O_DIRECT).
struct Buffers {
    mem: Vec<u8>,
    base: usize,
}

impl Buffers {
    fn new(n: usize) -> Buffers {
        let bytes = usize::try_from(TOKEN_BYTES).unwrap_or(4096);
        let mut mem = vec![0x5au8; n * bytes + bytes];
        let addr = mem.as_mut_ptr() as usize;
        let base = addr.next_multiple_of(bytes) - addr;
        Buffers { mem, base }
    }
    fn iov(&mut self, i: usize) -> libc::iovec {
        let bytes = usize::try_from(TOKEN_BYTES).unwrap_or(4096);
        let off = self.base + i * bytes;
        libc::iovec {
            iov_base: self.mem[off..off + bytes].as_mut_ptr().cast(),
            iov_len: bytes,
        }
    }
}

/// A xorshift generator (no dependency; reproducible).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    let n_f = f64::from(u32::try_from(n).unwrap_or(u32::MAX));
    // In [0, n): a valid index.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((p * n_f).ceil() as usize).clamp(1, n) - 1;
    f64::from(u32::try_from(sorted[i]).unwrap_or(u32::MAX)) / 1000.0
}

struct Driver {
    q: Box<dyn BackendQueue>,
    bufs: Buffers,
    free: Vec<usize>,
    due: Vec<u64>,
    /// Per slot: a read (whose latency the SLO is about).
    read: Vec<bool>,
    units: u64,
    rng: Rng,
    done: Vec<Completion>,
    epoch: Instant,
}

impl Driver {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn submit(&mut self, kind: IoKind, offset: u64, due: u64) -> Result<bool, String> {
        let Some(slot) = self.free.pop() else {
            return Ok(false);
        };
        let iov = [self.bufs.iov(slot)];
        let req = IoRequest {
            tag: slot as u64,
            kind,
            offset,
            len: TOKEN_BYTES,
            iov: &iov,
            owner: 0,
            journal: None,
        };
        // SAFETY: the iovec points into `bufs`, owned by this driver and
        // not touched until the tag completes (the slot is not free until
        // then); the driver drains every request before it is dropped.
        match unsafe { self.q.submit(&req) } {
            Ok(()) => {
                self.due[slot] = due;
                self.read[slot] = kind == IoKind::Read;
                Ok(true)
            }
            Err(leapio_backends::SubmitError::Full) => {
                self.free.push(slot);
                Ok(false)
            }
            Err(e) => Err(format!("submit: {e}")),
        }
    }

    /// Reap completions; latencies (from due time) into `lat`.
    fn reap(&mut self, lat: Option<&mut Vec<u64>>) -> Result<usize, String> {
        self.q.kick().map_err(|e| format!("kick: {e}"))?;
        self.done.clear();
        self.q.poll(&mut self.done);
        let now = self.now();
        let mut lat = lat;
        let n = self.done.len();
        for c in self.done.drain(..) {
            if let Err(e) = c.result {
                return Err(format!("I/O failed: {e}"));
            }
            let slot = usize::try_from(c.tag).unwrap_or(0);
            if let Some(l) = lat.as_deref_mut().filter(|_| self.read[slot]) {
                l.push(now.saturating_sub(self.due[slot]));
            }
            self.free.push(slot);
        }
        Ok(n)
    }

    fn drain(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.free.len() < self.due.len() {
            self.reap(None)?;
            if Instant::now() > deadline {
                return Err("the backend did not complete its requests in 30 s".into());
            }
        }
        Ok(())
    }

    fn offset(&mut self) -> u64 {
        (self.rng.next() % self.units) * TOKEN_BYTES
    }

    /// Open-loop load at `rate` IOPS with `read_pct` reads for `secs`.
    fn step(&mut self, rate: f64, read_pct: u32, secs: f64) -> Result<Step, String> {
        let mut lat = Vec::new();
        let start = self.now() + 1_000_000;
        let dur_ns = secs * 1e9;
        let mut k: u64 = 0;
        let mut completed = 0usize;
        loop {
            let now = self.now();
            // Due time of the k-th I/O.
            let due_off = f64::from(u32::try_from(k).unwrap_or(u32::MAX)) * 1e9 / rate;
            if due_off >= dur_ns {
                break;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let due = start + due_off as u64;
            if due <= now {
                let read = self.rng.next() % 100 < u64::from(read_pct);
                let kind = if read { IoKind::Read } else { IoKind::Write };
                let off = self.offset();
                if self.submit(kind, off, due)? {
                    k += 1;
                    continue;
                }
            }
            let n = self.reap(Some(&mut lat))?;
            completed += n;
            if n == 0 && due > now {
                // Sleep until the next I/O is due or a completion is (a
                // sleeper gets the CPU back at once when it wakes; a
                // spinner on a busy machine waits for its turn).
                self.q
                    .wait_completion(Duration::from_nanos((due - now).min(500_000)));
            }
        }
        let end = start + {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let d = dur_ns as u64;
            d
        };
        // Completions up to the end of the window count for throughput.
        while self.now() < end {
            let n = self.reap(Some(&mut lat))?;
            completed += n;
            if n == 0 {
                let left = end.saturating_sub(self.now()).min(500_000);
                self.q.wait_completion(Duration::from_nanos(left));
            }
        }
        let in_window = completed;
        // The rest still counts for latency.
        while self.free.len() < self.due.len() {
            self.reap(Some(&mut lat))?;
        }
        lat.sort_unstable();
        Ok(Step {
            offered: rate,
            achieved: f64::from(u32::try_from(in_window).unwrap_or(u32::MAX)) / secs,
            p95_us: pct(&lat, 0.95),
            p99_us: pct(&lat, 0.99),
        })
    }
}

/// A sweep's steps as the model's curve (achieved load against the
/// reads' latencies).
fn points(steps: &[Step]) -> Vec<Point> {
    steps
        .iter()
        .map(|s| Point {
            tokens_per_s: s.achieved.max(1.0),
            p95_us: s.p95_us,
            p99_us: s.p99_us,
        })
        .collect()
}

/// The load a sweep sustains at the SLO (interpolated, in achieved IOPS).
fn rate_at(steps: &[Step], slo: Slo) -> f64 {
    let m = DeviceModel {
        backend: String::new(),
        write_cost: 1.0,
        points: points(steps),
        mixes: vec![],
        calib_slo: None,
    };
    m.rate_at(slo)
}

/// The highest load a sweep sustained (achieved >= 90% of offered).
fn sustained(steps: &[Step]) -> f64 {
    steps
        .iter()
        .filter(|s| s.achieved >= 0.9 * s.offered)
        .map(|s| s.achieved)
        .fold(0.0, f64::max)
}

/// Run the calibration and return the model (also printing a table to
/// stderr as it goes).
pub fn calibrate(a: &CalibrateArgs) -> Result<DeviceModel, String> {
    let spec: BackendSpec = a
        .backend
        .parse()
        .map_err(|e| format!("{}: {e}", a.backend))?;
    let b = open_backend(&spec).map_err(|e| e.to_string())?;
    let g = b.geometry();
    let size = g.num_blocks * u64::from(g.block_size);
    let range = a.range.unwrap_or(size).min(size);
    let units = range / TOKEN_BYTES;
    if units == 0 || u64::from(g.block_size) > TOKEN_BYTES {
        return Err(format!(
            "{}: need 4 KiB I/Os on at least 4 KiB (blocks of {} B, {range} B)",
            a.backend, g.block_size
        ));
    }
    if a.mixes.first() != Some(&100) {
        return Err("--mixes must start with 100 (read-only: the curve)".into());
    }
    // Sleeps end within 1 us of their time, not the default 50 us.
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer; no memory involved.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64, 0u64, 0u64, 0u64) };
    let depth = a.depth.clamp(1, 4096);
    let q = b
        .open_queue(depth)
        .map_err(|e| format!("{}: {e}", a.backend))?;
    let n = usize::try_from(depth).unwrap_or(512);
    let mut d = Driver {
        q,
        bufs: Buffers::new(n),
        free: (0..n).collect(),
        due: vec![0; n],
        read: vec![false; n],
        units,
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        done: Vec::with_capacity(n),
        epoch: Instant::now(),
    };
    eprintln!("{}: {} MiB addressed", b.describe(), range >> 20);
    if !a.no_prefill {
        eprintln!("prefill: writing the range once");
        let mut u = 0;
        while u < units {
            let now = d.now();
            if d.submit(IoKind::Write, u * TOKEN_BYTES, now)? {
                u += 1;
            } else {
                d.reap(None)?;
            }
        }
        d.drain()?;
        // Then overwrite it once at random: a flash device reaches the
        // steady state of its garbage collection (SNIA's preconditioning),
        // where writes cost what they will cost in service.
        eprintln!("precondition: overwriting the range once at random");
        let mut n = 0;
        while n < units {
            let now = d.now();
            let off = d.offset();
            if d.submit(IoKind::Write, off, now)? {
                n += 1;
            } else {
                d.reap(None)?;
            }
        }
        d.drain()?;
        // Let the device settle (garbage collection, erases) first.
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut sweeps: Vec<(u32, Vec<Step>)> = Vec::new();
    for &mix in &a.mixes {
        let mix = mix.min(100);
        eprintln!("mix {mix}:{} read:write", 100 - mix);
        eprintln!("  offered IOPS  achieved IOPS   read p95 us  read p99 us");
        let mut steps = Vec::new();
        let mut rate = a.start_iops.max(10.0);
        let mut over = 0;
        for _ in 0..a.max_steps {
            let s = d.step(rate, mix, a.step_seconds)?;
            eprintln!(
                "  {:>12.0}  {:>13.0} {:>13.1} {:>12.1}",
                s.offered, s.achieved, s.p95_us, s.p99_us
            );
            steps.push(s);
            let lat = match a.slo.pct {
                super::model::Pct::P95 => s.p95_us,
                super::model::Pct::P99 => s.p99_us,
            };
            let bound = a.slo.bound_us();
            // Saturated, or far past the SLO twice in a row (once may be
            // the machine, not the device).
            over = if lat > 4.0 * bound { over + 1 } else { 0 };
            if s.achieved < 0.9 * s.offered || over >= 2 {
                break;
            }
            rate *= a.factor.max(1.01);
        }
        sweeps.push((mix, steps));
    }
    let t = rate_at(&sweeps[0].1, a.slo);
    if t <= 0.0 {
        return Err(format!(
            "the device does not meet {} even at the lightest load ({} IOPS); try a looser SLO or a lower --start-iops",
            a.slo, a.start_iops
        ));
    }
    let mut mixes = vec![MixRate {
        read_pct: 100,
        iops_at_slo: t,
    }];
    let mut costs = Vec::new();
    let mut fallback = Vec::new();
    // Without an SLO-based rate for a mix (even its lightest load broke
    // the SLO), the cost comes from the saturation throughputs instead
    // (the highest load each mix sustained), used only when no mix gave
    // an SLO-based one.
    let t_sat = sustained(&sweeps[0].1);
    for (mix, steps) in &sweeps[1..] {
        let r = rate_at(steps, a.slo);
        mixes.push(MixRate {
            read_pct: *mix,
            iops_at_slo: r,
        });
        let w = f64::from(100 - *mix) / 100.0;
        if w <= 0.0 {
            continue;
        }
        if r > 0.0 {
            costs.push(((t / r - (1.0 - w)) / w).clamp(1.0, 1000.0));
            continue;
        }
        let rr = sustained(steps);
        if rr > 0.0 {
            let c = ((t_sat / rr - (1.0 - w)) / w).clamp(1.0, 1000.0);
            eprintln!(
                "mix {mix}: no load met the SLO; from saturation throughputs a write costs {c:.2}"
            );
            fallback.push(c);
        }
    }
    if costs.is_empty() {
        costs = fallback;
    }
    costs.sort_by(f64::total_cmp);
    let write_cost = match costs.len() {
        0 => 1.0,
        n if n % 2 == 1 => costs[n / 2],
        n => (costs[n / 2 - 1] + costs[n / 2]) / 2.0,
    };
    let model = DeviceModel {
        backend: a.backend.clone(),
        write_cost,
        points: points(&sweeps[0].1),
        mixes,
        calib_slo: Some(a.slo),
    };
    model.check()?;
    eprintln!(
        "write cost {:.2} tokens (costs per mix {:?}); {:.0} tokens/s at {}",
        write_cost,
        costs
            .iter()
            .map(|c| (c * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        t,
        a.slo
    );
    Ok(model)
}

/// `socp calibrate ...` (argv after the program name).
pub fn main(args: impl IntoIterator<Item = String>) -> Result<(), String> {
    let a = CalibrateArgs::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        String::new()
    })?;
    let m = calibrate(&a)?;
    let text = serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?;
    match &a.out {
        Some(p) => {
            std::fs::write(p, text + "\n").map_err(|e| format!("{}: {e}", p.display()))?;
            eprintln!("device model written to {}", p.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrates_the_flash_backend_and_writes_cost_more() {
        // Slow programs (2 ms) on 2 dies: writes saturate at ~1000 IOPS
        // while reads (40 us) go past 8000; the SLO is loose so that the
        // machine's scheduling noise does not matter (timing is a loose
        // bound here).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.flash");
        let a = CalibrateArgs::try_parse_from([
            "socp calibrate",
            &format!(
                "flash:{}?channels=1&dies=2&blocks=32&pages=16&prog=2000",
                path.display()
            ),
            "--slo",
            "p95:10s",
            "--mixes",
            "100,50",
            "--step-seconds",
            "0.1",
            "--start-iops",
            "2000",
            "--factor",
            "2",
            "--max-steps",
            "3",
        ])
        .unwrap();
        let m = calibrate(&a).unwrap();
        assert!(m.write_cost > 2.0, "{m:?}");
        assert!(m.rate_at(a.slo) > 1000.0, "{m:?}");
        assert_eq!(m.mixes.len(), 2);
    }
}
