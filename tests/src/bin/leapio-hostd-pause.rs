//! `leapio-hostd-pause`: how long a guest's I/O pauses while the
//! host-driver is upgraded in place or killed and started again.
//!
//! The split deployment (`leapio-hostd --keep`, `socp` from a file) and a
//! guest (the test driver) with 16 verified 4 KiB I/Os in flight. Side by
//! side in one run: ROUNDS windows with nothing happening (the baseline:
//! the longest gap between completions of an undisturbed guest), ROUNDS
//! upgrades (`--handover`) and ROUNDS crashes (SIGKILL, then a new
//! host-driver). For each, the longest time the guest had commands in
//! flight and none completing, from just before the event to 300 ms after
//! the runtime attached again.
//!
//!   leapio-hostd-pause [--rounds N] [--json]
//!
//! Exits non-zero if any I/O failed or read back wrong.

use leapio_tests::kept::{Guest, KeptSplit};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn summary(v: &[Duration]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort();
    (ms(s[s.len() / 2]), ms(*s.last().unwrap_or(&Duration::ZERO)))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rounds = 10usize;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => match it.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => rounds = n,
                _ => {
                    eprintln!("--rounds takes a number above 0");
                    return ExitCode::FAILURE;
                }
            },
            "--json" => json = true,
            other => {
                eprintln!("unknown argument {other} (--rounds N, --json)");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut k = match KeptSplit::start() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut socp = k.spawn_socp(&k.file_ns(), &[]);
    if !k.wait_attached(Duration::from_secs(20)) {
        eprintln!("socp did not attach\n{}", k.logs());
        leapio_tests::split::kill9(&mut socp);
        return ExitCode::FAILURE;
    }
    let g = Guest::start(&k, 0x5eed_9a05);
    std::thread::sleep(Duration::from_millis(500));
    let (mut base, mut upgrades, mut crashes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut up_attach, mut crash_attach) = (Vec::new(), Vec::new());
    let mut run = || -> Result<(), String> {
        for _ in 0..rounds {
            g.reset_pause();
            std::thread::sleep(Duration::from_millis(400));
            base.push(g.pause_since_reset());

            g.reset_pause();
            let t = Instant::now();
            k.upgrade().map_err(|e| format!("upgrade: {e}"))?;
            up_attach.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(300));
            upgrades.push(g.pause_since_reset());

            g.reset_pause();
            let t = Instant::now();
            k.crash()
                .map_err(|e| format!("restart after SIGKILL: {e}"))?;
            crash_attach.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(300));
            crashes.push(g.pause_since_reset());
        }
        Ok(())
    };
    if let Err(e) = run() {
        leapio_tests::split::kill9(&mut socp);
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let w = g.finish();
    leapio_tests::split::kill9(&mut socp);
    let (b50, bmax) = summary(&base);
    let (u50, umax) = summary(&upgrades);
    let (c50, cmax) = summary(&crashes);
    let (ua50, uamax) = summary(&up_attach);
    let (ca50, camax) = summary(&crash_attach);
    println!("guest I/O pause (ms), {rounds} rounds each, p50 / max:");
    println!("  nothing happening      {b50:>7} / {bmax}");
    println!("  upgrade (--handover)   {u50:>7} / {umax}   (new host-driver started to runtime attached: {ua50} / {uamax})");
    println!(
        "  SIGKILL + restart      {c50:>7} / {cmax}   (kill to runtime attached: {ca50} / {camax})"
    );
    println!(
        "{} I/Os completed ({} writes, {} reads), {} errors or mismatches",
        w.completed,
        w.writes,
        w.reads,
        w.errors.len()
    );
    if json {
        let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>();
        println!(
            "{}",
            serde_json::json!({
                "rounds": rounds,
                "baseline_pause_ms": list(&base),
                "upgrade_pause_ms": list(&upgrades),
                "crash_pause_ms": list(&crashes),
                "upgrade_to_attach_ms": list(&up_attach),
                "crash_to_attach_ms": list(&crash_attach),
                "ios": w.completed,
                "errors": w.errors.len(),
            })
        );
    }
    for e in w.errors.iter().take(20) {
        eprintln!("{e}");
    }
    if w.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
