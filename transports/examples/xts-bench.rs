//! CPU cost of the crypt service's XTS per 4 KiB I/O: the `xts-mode`
//! crate's unit-at-a-time path the service used before (one AES block
//! at a time, tweak by tweak) against the service's own, which enciphers
//! the tweaks of a request's units together and each pass of whitened
//! data in one multi-block call (pipelined with AES-NI).
//!
//! Encrypts and decrypts one 4 KiB buffer over and over, as 8 data
//! units of 512 bytes and as one of 4096, for XTS-AES-256 and -128, and
//! prints MB/s and ns per 4 KiB of each path and the ratio.
//!
//! `cargo run --release -p leapio-backends --example xts-bench [MILLISECONDS]`
//! (time spent on each line, default 1000; each figure is the best of
//! many rounds of 200 calls, old and new taking turns).

// A benchmark's figures: floats from counts and durations.
#![allow(clippy::cast_precision_loss)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes::cipher::KeyInit;
use leapio_backends::services::crypt::Cipher;
use xts_mode::{get_tweak_default, Xts128};

const IO: usize = 4096;
/// The block number of the buffer's first unit: any; a volume's middle.
const FIRST: u64 = 123_456;

/// The service's former path: `xts-mode`, one unit (sector) per call.
enum Old {
    Aes128(Box<Xts128<aes::Aes128>>),
    Aes256(Box<Xts128<aes::Aes256>>),
}

impl Old {
    fn new(key: &[u8]) -> Old {
        let (k1, k2) = key.split_at(key.len() / 2);
        if key.len() == 32 {
            Old::Aes128(Box::new(Xts128::new(
                aes::Aes128::new_from_slice(k1).expect("a 16- or 32-byte half"),
                aes::Aes128::new_from_slice(k2).expect("a 16- or 32-byte half"),
            )))
        } else {
            Old::Aes256(Box::new(Xts128::new(
                aes::Aes256::new_from_slice(k1).expect("a 16- or 32-byte half"),
                aes::Aes256::new_from_slice(k2).expect("a 16- or 32-byte half"),
            )))
        }
    }

    fn run(&self, buf: &mut [u8], unit: usize, encrypt: bool) {
        for (n, u) in (u128::from(FIRST)..).zip(buf.chunks_exact_mut(unit)) {
            let t = get_tweak_default(n);
            match (self, encrypt) {
                (Old::Aes128(x), true) => x.encrypt_sector(u, t),
                (Old::Aes128(x), false) => x.decrypt_sector(u, t),
                (Old::Aes256(x), true) => x.encrypt_sector(u, t),
                (Old::Aes256(x), false) => x.decrypt_sector(u, t),
            }
        }
    }
}

fn run_new(c: &Cipher, buf: &mut [u8], unit: usize, encrypt: bool) {
    let r = if encrypt {
        c.encrypt(buf, unit, u128::from(FIRST))
    } else {
        c.decrypt(buf, unit, u128::from(FIRST))
    };
    r.unwrap_or_else(|e| panic!("{e}"));
}

/// Nanoseconds per call of `old` and of `new` on the buffer, each the
/// best of many short rounds, the two taking turns for `budget` in all:
/// on a shared machine the quietest round is the one that shows what the
/// code costs, and taking turns gives both the same chances of one.
fn time(
    budget: Duration,
    buf: &mut [u8],
    mut old: impl FnMut(&mut [u8]),
    mut new: impl FnMut(&mut [u8]),
) -> (f64, f64) {
    const CALLS: u32 = 200;
    let round = |f: &mut dyn FnMut(&mut [u8]), buf: &mut [u8]| {
        let start = Instant::now();
        for _ in 0..CALLS {
            f(black_box(&mut *buf));
        }
        start.elapsed().as_nanos() as f64 / f64::from(CALLS)
    };
    round(&mut old, buf);
    round(&mut new, buf);
    let (mut best_old, mut best_new) = (f64::INFINITY, f64::INFINITY);
    let start = Instant::now();
    while start.elapsed() < budget {
        best_old = best_old.min(round(&mut old, buf));
        best_new = best_new.min(round(&mut new, buf));
    }
    (best_old, best_new)
}

fn main() {
    let ms = std::env::args()
        .nth(1)
        .map_or(1000, |a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")));
    let budget = Duration::from_millis(ms);
    // A fixed key, never printed; only its size matters here.
    let key: Vec<u8> = (0u8..64)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let data: Vec<u8> = (0..=250u8).cycle().take(IO).collect();

    println!(
        "{:<12} {:>5} {:>4}  {:>10} {:>10}  {:>10} {:>10}  {:>6}",
        "cipher", "unit", "op", "old MB/s", "old ns/4K", "new MB/s", "new ns/4K", "ratio"
    );
    for key_len in [64, 32] {
        let key = &key[..key_len];
        let (old, new) = (
            Old::new(key),
            Cipher::new(key).unwrap_or_else(|e| panic!("{e}")),
        );
        for unit in [512, 4096] {
            // Both paths must agree before their times mean anything.
            let (mut a, mut b) = (data.clone(), data.clone());
            old.run(&mut a, unit, true);
            run_new(&new, &mut b, unit, true);
            assert!(
                a == b,
                "the two paths disagree ({key_len}-byte key, {unit}-byte units)"
            );
            new.decrypt(&mut b, unit, u128::from(FIRST))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(b == data, "no round trip");

            for (op, encrypt) in [("enc", true), ("dec", false)] {
                let mut buf = data.clone();
                let (t_old, t_new) = time(
                    budget,
                    &mut buf,
                    |b| old.run(b, unit, encrypt),
                    |b| run_new(&new, b, unit, encrypt),
                );
                let mbs = |ns: f64| IO as f64 / ns * 1e3;
                println!(
                    "XTS-AES-{:<4} {unit:>5} {op:>4}  {:>10.0} {:>10.0}  {:>10.0} {:>10.0}  {:>5.1}x",
                    key_len * 4,
                    mbs(t_old),
                    t_old,
                    mbs(t_new),
                    t_new,
                    t_old / t_new
                );
            }
        }
    }
}
