//! Figures of the flash backend, through the `Backend` API (no socp):
//!
//! 1. QD1 4 KiB random read latency against the timing model's read +
//!    transfer;
//! 2. sequential write bandwidth against the number of dies;
//! 3. write amplification of uniform random writes against
//!    over-provisioning, with the textbook figure for greedy/FIFO cleaning.
//!
//! `cargo run --release -p leapio-backends --example flash-bench [DIR]`
//! (media files go to DIR, default a temporary directory; ~1 GiB at most).

// A benchmark's figures: small counts, and floats truncated on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leapio_backends::{Backend, BackendQueue, BackendSpec, FlashBackend, IoKind, IoRequest};

const PAGE: usize = 4096;

fn flash(path: &Path, opts: &str) -> FlashBackend {
    let spec: BackendSpec = format!("flash:{}?{opts}", path.display())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let BackendSpec::Flash(spec) = spec else {
        unreachable!()
    };
    let b = FlashBackend::open(&spec).unwrap_or_else(|e| panic!("{e}"));
    b.claim().unwrap_or_else(|e| panic!("{e}"));
    b
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Keeps `qd` requests of `pages` pages in flight at the LBAs `next`
/// gives, until it gives none; returns the elapsed time.
fn pump(
    q: &mut dyn BackendQueue,
    kind: IoKind,
    pages: u64,
    qd: usize,
    mut next: impl FnMut() -> Option<u64>,
) -> Duration {
    let mut bufs: Vec<Vec<u8>> = (0..qd)
        .map(|i| vec![i as u8; pages as usize * PAGE])
        .collect();
    let mut free: Vec<usize> = (0..qd).collect();
    let mut out = Vec::new();
    let start = Instant::now();
    let mut done = false;
    loop {
        while !done && !free.is_empty() {
            let Some(lba) = next() else {
                done = true;
                break;
            };
            let slot = free.pop().unwrap_or_default();
            let v = [libc::iovec {
                iov_base: bufs[slot].as_mut_ptr().cast(),
                iov_len: bufs[slot].len(),
            }];
            let req = IoRequest {
                tag: slot as u64,
                kind,
                offset: lba * PAGE as u64,
                len: pages * PAGE as u64,
                iov: &v,
                owner: 0,
                journal: None,
            };
            // SAFETY: `bufs` outlives every request (drained below).
            unsafe { q.submit(&req) }.expect("submit");
        }
        out.clear();
        q.poll(&mut out);
        for c in &out {
            c.result.expect("I/O failed");
            free.push(c.tag as usize);
        }
        if done && q.in_flight() == 0 {
            return start.elapsed();
        }
    }
}

fn fill(b: &FlashBackend) {
    let n = b.geometry().num_blocks;
    let mut q = b.open_queue(64).unwrap();
    let mut lba = 0;
    pump(&mut *q, IoKind::Write, 1, 64, || {
        let l = lba;
        lba += 1;
        (l < n).then_some(l)
    });
}

fn read_latency(dir: &Path) {
    println!(
        "## QD1 4 KiB random read latency (2 ch x 2 dies x 64 blocks x 64 pages, FEMU timing)"
    );
    let path = dir.join("lat.nand");
    let _ = std::fs::remove_file(&path);
    // Fill with the timing model off (it is not stored in the file), then
    // reopen with FEMU's figures.
    fill(&flash(&path, "timing=0"));
    let b = flash(&path, "");
    let t = b.timing();
    let n = b.geometry().num_blocks;
    let mut q = b.open_queue(1).unwrap();
    let mut rng = Rng(0x9e37_79b9);
    let mut lat: Vec<f64> = Vec::new();
    for _ in 0..5000 {
        let lba = rng.below(n);
        let mut left = 1;
        let d = pump(&mut *q, IoKind::Read, 1, 1, || {
            left -= 1;
            (left == 0).then_some(lba)
        });
        lat.push(d.as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let model = (t.read_ns + t.xfer_ns) as f64 / 1000.0;
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!("model (read + transfer): {model:.2} us");
    println!(
        "measured over {} reads: mean {mean:.2} us, min {:.2}, p50 {:.2}, p99 {:.2}, max {:.2} (mean {:+.1}% vs model)",
        lat.len(),
        lat[0],
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1],
        (mean / model - 1.0) * 100.0
    );
    println!();
}

fn write_bandwidth(dir: &Path) {
    println!(
        "## Sequential write bandwidth vs dies (128 KiB writes, QD 16, FEMU timing, 4 KiB pages)"
    );
    println!("| channels x dies | dies | model MB/s | measured MB/s | ratio |");
    println!("|---|---|---|---|---|");
    for (ch, dies) in [(1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (8, 4)] {
        let path = dir.join(format!("bw-{ch}x{dies}.nand"));
        let _ = std::fs::remove_file(&path);
        let b = flash(
            &path,
            &format!("channels={ch}&dies={dies}&blocks=32&pages=64&op=0.25"),
        );
        let t = b.timing();
        let total_dies = ch * dies;
        let pages = (b.geometry().num_blocks / 2).min(16384) / 32 * 32;
        let mut q = b.open_queue(16).unwrap();
        let mut lba = 0;
        let took = pump(&mut *q, IoKind::Write, 32, 16, || {
            let l = lba;
            lba += 32;
            (l < pages).then_some(l)
        });
        let bytes = (pages * PAGE as u64) as f64;
        let per_die = PAGE as f64 / ((t.program_ns + t.xfer_ns) as f64 / 1e9);
        let per_channel = PAGE as f64 / (t.xfer_ns as f64 / 1e9);
        let model = (per_die * f64::from(total_dies)).min(per_channel * f64::from(ch)) / 1e6;
        let got = bytes / took.as_secs_f64() / 1e6;
        println!(
            "| {ch} x {dies} | {total_dies} | {model:.1} | {got:.1} | {:.2} |",
            got / model
        );
        drop(q);
        drop(b);
        let _ = std::fs::remove_file(&path);
    }
    println!();
}

/// Principal branch of Lambert W on [-1/e, 0).
fn lambert_w0(x: f64) -> f64 {
    let mut w: f64 = -0.5;
    for _ in 0..100 {
        let e = w.exp();
        let f = w * e - x;
        let step = f / (e * (w + 1.0) - (w + 2.0) * f / (2.0 * w + 2.0));
        w -= step;
        if step.abs() < 1e-12 {
            break;
        }
    }
    w
}

fn write_amplification(dir: &Path) {
    println!(
        "## Write amplification vs over-provisioning (uniform random 4 KiB writes, greedy GC)"
    );
    println!("4 dies x 128 blocks x 64 pages (128 MiB); filled once, then 4x the capacity in random writes; WA over the last 2x.");
    println!("| op | spare / physical | measured WA | FIFO/greedy model (Desnoyers) |");
    println!("|---|---|---|---|");
    for op in ["0.07", "0.12", "0.2", "0.28", "0.5", "1"] {
        let path = dir.join(format!("wa-{op}.nand"));
        let _ = std::fs::remove_file(&path);
        let b = flash(
            &path,
            &format!("channels=2&dies=2&blocks=128&pages=64&op={op}&timing=0"),
        );
        fill(&b);
        let n = b.geometry().num_blocks;
        let mut q = b.open_queue(32).unwrap();
        let mut rng = Rng(0x1234_5678_9abc);
        let mut left = 2 * n;
        pump(&mut *q, IoKind::Write, 1, 32, || {
            left = left.checked_sub(1)?;
            Some(rng.below(n))
        });
        let before = b.stats().unwrap();
        let mut left = 2 * n;
        pump(&mut *q, IoKind::Write, 1, 32, || {
            left = left.checked_sub(1)?;
            Some(rng.below(n))
        });
        let after = b.stats().unwrap();
        let wa = (after.media_pages_programmed - before.media_pages_programmed) as f64
            / (after.host_pages_written - before.host_pages_written) as f64;
        let alpha = after.physical_pages as f64 / n as f64;
        let model = alpha / (alpha + lambert_w0(-alpha * (-alpha).exp()));
        println!("| {op} | {:.3} | {wa:.2} | {model:.2} |", 1.0 - 1.0 / alpha);
        drop(q);
        drop(b);
        let _ = std::fs::remove_file(&path);
    }
    println!();
}

fn main() {
    let tmp;
    let dir: PathBuf = match std::env::args().nth(1) {
        Some(d) => d.into(),
        None => {
            tmp = tempdir();
            tmp.clone()
        }
    };
    read_latency(&dir);
    write_bandwidth(&dir);
    write_amplification(&dir);
    let _ = std::fs::remove_file(dir.join("lat.nand"));
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("flash-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temporary directory");
    d
}
