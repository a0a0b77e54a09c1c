//! Runs the flash FTL on a zoned device (`media=zoned`) end to end, for a
//! machine that has one (the e2e test runs it in a guest whose disk is a
//! socp ZNS namespace): verified random overwrites of the whole namespace,
//! twice its capacity (GC runs), then a reopen of the media and a verify.
//!
//!     zoned-check 'flash:/dev/nvme0n1?media=zoned&dies=2&op=0.5'
//!
//! Prints `ZONED-CHECK ok ...` and exits 0, or `ZONED-CHECK fail ...` and 1.

use std::sync::Arc;
use std::time::Duration;

use leapio_backends::{open_backend, Backend, BackendSpec, IoKind, IoRequest};

/// xorshift64*: reproducible pseudo-random numbers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn page(lba: u64, version: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xff51) | 1);
    (0..len / 8).flat_map(|_| r.next().to_le_bytes()).collect()
}

fn io(b: &Arc<dyn Backend>, kind: IoKind, lba: u64, buf: &mut [u8]) -> Result<(), String> {
    let bs = u64::from(b.geometry().block_size);
    let mut q = b.open_queue(1).map_err(|e| e.to_string())?;
    let v = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let req = IoRequest {
        tag: 1,
        kind,
        offset: lba * bs,
        len: buf.len() as u64,
        iov: &v,
        owner: 0,
        journal: None,
    };
    // SAFETY: `buf` outlives the request: drained below before returning.
    unsafe { q.submit(&req) }.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    q.drain(&mut out, Duration::from_secs(30));
    match out.pop() {
        Some(c) => c.result.map_err(|e| format!("{kind:?} of LBA {lba}: {e}")),
        None => Err(format!("{kind:?} of LBA {lba} did not complete")),
    }
}

fn verify(b: &Arc<dyn Backend>, versions: &[u64]) -> Result<(), String> {
    let bs = b.geometry().block_size as usize;
    let mut buf = vec![0u8; bs];
    for (lba, &v) in versions.iter().enumerate() {
        io(b, IoKind::Read, lba as u64, &mut buf)?;
        let want = if v == 0 {
            vec![0; bs]
        } else {
            page(lba as u64, v, bs)
        };
        if buf != want {
            return Err(format!("LBA {lba} does not hold version {v}"));
        }
    }
    Ok(())
}

fn run(spec: &str) -> Result<String, String> {
    let spec: BackendSpec = spec.parse().map_err(|e| format!("{e}"))?;
    let b = open_backend(&spec).map_err(|e| format!("{e}"))?;
    let n = b.geometry().num_blocks;
    let bs = b.geometry().block_size as usize;
    let mut versions = vec![0u64; usize::try_from(n).unwrap_or(0)];
    let mut rng = Rng(0x5eed);
    for i in 0..2 * n {
        let lba = rng.next() % n;
        let v = i + 1;
        io(&b, IoKind::Write, lba, &mut page(lba, v, bs))?;
        versions[usize::try_from(lba).unwrap_or(0)] = v;
    }
    verify(&b, &versions)?;
    b.flush().map_err(|e| e.to_string())?;
    let first = b.describe();
    drop(b);
    let b = open_backend(&spec).map_err(|e| format!("reopen: {e}"))?;
    verify(&b, &versions).map_err(|e| format!("after reopen: {e}"))?;
    Ok(format!(
        "{} pages of {bs} B, {} writes verified before and after a reopen; {first}",
        n,
        2 * n
    ))
}

fn main() {
    let Some(spec) = std::env::args().nth(1) else {
        eprintln!("usage: zoned-check SPEC");
        std::process::exit(2);
    };
    match run(&spec) {
        Ok(s) => println!("ZONED-CHECK ok {s}"),
        Err(e) => {
            println!("ZONED-CHECK fail {e}");
            std::process::exit(1);
        }
    }
}
