//! `--backend SPEC`: drive one of socp's backends directly from the
//! harness thread, through the same submit/poll queue socp's pollers use,
//! with no controller, rings or poller in between. Against `nvme-tcp:...`
//! the harness is the NVMe/TCP host, one thread: the cheapest load a host
//! can put on a target, so a target on its own core can be driven to its
//! limit on a 2-core machine; against `ram:...` it is the baseline.

use crate::engine::{end_sample, start_sample, Cpus, Outcome};
use crate::stats::new_histogram;
use crate::workload::{Op, OpGen};
use hdrhistogram::Histogram;
use leapio_backends::{BackendQueue, Completion, IoKind, IoRequest, SubmitError};
use leapio_nvme::Cqe;
use std::time::{Duration, Instant};

/// What the loop needs to know.
pub struct DirectParams {
    pub qd: u32,
    pub io_size: u64,
    pub lba_size: u32,
    pub warmup_ns: u64,
    pub time_ns: u64,
}

/// One request slot: its buffer, and what is in flight in it.
struct Slot {
    buf: Vec<u8>,
    op: Op,
    start: Instant,
    busy: bool,
}

struct Window {
    hist: Histogram<u64>,
    ios: u64,
    reads: u64,
    errors: u64,
    first_error: Option<(Cqe, Op)>,
}

/// Closed loop at `p.qd` on `q`: warm-up, measured window, drain.
pub fn run(
    q: &mut dyn BackendQueue,
    p: &DirectParams,
    gen: &mut OpGen,
    cpus: Cpus<'_>,
) -> Result<Outcome, String> {
    let len = usize::try_from(p.io_size).map_err(|_| "I/O size")?;
    let mut slots: Vec<Slot> = (0..p.qd)
        .map(|_| Slot {
            buf: vec![0x5a; len],
            op: Op {
                read: true,
                slba: 0,
            },
            start: Instant::now(),
            busy: false,
        })
        .collect();
    let mut done: Vec<Completion> = Vec::with_capacity(slots.len());
    let mut w = Window {
        hist: new_histogram(),
        ios: 0,
        reads: 0,
        errors: 0,
        first_error: None,
    };
    let Cpus {
        target: mut target_cpu,
        remote: mut remote_cpu,
        harness,
    } = cpus;
    let t0 = Instant::now();
    let warm_end = t0 + Duration::from_nanos(p.warmup_ns);
    let end = warm_end + Duration::from_nanos(p.time_ns);
    let (mut recording, mut measure_start) = (false, t0);
    let (mut cpu0, mut remote0, mut me0) = (None, None, harness.sample());
    for i in 0..slots.len() {
        issue(q, &mut slots, i, gen, p)?;
    }
    q.kick().map_err(|e| e.to_string())?;
    loop {
        let now = Instant::now();
        if !recording && now >= warm_end {
            recording = true;
            measure_start = now;
            cpu0 = target_cpu.as_deref_mut().map(start_sample);
            remote0 = remote_cpu.as_deref_mut().map(start_sample);
            me0 = harness.sample();
        }
        if now >= end {
            break;
        }
        done.clear();
        if q.poll(&mut done) == 0 {
            continue;
        }
        let now = Instant::now();
        for c in &done {
            let i = usize::try_from(c.tag).unwrap_or(usize::MAX);
            let Some(s) = slots.get_mut(i).filter(|s| s.busy) else {
                return Err(format!("completion for tag {} not in flight", c.tag));
            };
            s.busy = false;
            if let Err(e) = &c.result {
                w.errors += 1;
                if w.first_error.is_none() {
                    let kind = if s.op.read {
                        IoKind::Read
                    } else {
                        IoKind::Write
                    };
                    let cqe = Cqe {
                        status: (leapio_controller::nvm::backend_status(kind, e.errno).field()
                            << 1)
                            .into(),
                        ..Cqe::default()
                    };
                    w.first_error = Some((cqe, s.op));
                }
            }
            if recording {
                let ns = u64::try_from((now - s.start).as_nanos()).unwrap_or(u64::MAX);
                w.hist.saturating_record(ns.max(1));
                w.ios += 1;
                w.reads += u64::from(s.op.read);
            }
            issue(q, &mut slots, i, gen, p)?;
        }
        q.kick().map_err(|e| e.to_string())?;
    }
    let stop = Instant::now();
    let (target_cpu, target_threads) = end_sample(target_cpu, cpu0);
    let (remote_cpu, remote_threads) = end_sample(remote_cpu, remote0);
    let harness_cpu = harness.sample().since(me0);
    // Drain: the buffers must outlive what the backend still does with them.
    done.clear();
    q.drain(&mut done, Duration::from_secs(10));
    let lost = q.in_flight() as u64;
    Ok(Outcome {
        hist: w.hist,
        ios: w.ios,
        reads: w.reads,
        writes: w.ios - w.reads,
        bytes: w.ios * p.io_size,
        elapsed_ns: u64::try_from((stop - measure_start).as_nanos()).unwrap_or(u64::MAX),
        errors: w.errors,
        first_error: w.first_error,
        verified_blocks: 0,
        mismatches: 0,
        first_mismatch: None,
        stray: 0,
        target_cpu,
        target_threads,
        remote_cpu,
        remote_threads,
        harness_cpu,
        issued: 0,
        max_backlog: 0,
        lost,
    })
}

/// Submit the next operation in slot `i` (its tag).
fn issue(
    q: &mut dyn BackendQueue,
    slots: &mut [Slot],
    i: usize,
    gen: &mut OpGen,
    p: &DirectParams,
) -> Result<(), String> {
    let s = &mut slots[i];
    s.op = gen.next_op();
    s.start = Instant::now();
    let iov = [libc::iovec {
        iov_base: s.buf.as_mut_ptr().cast(),
        iov_len: s.buf.len(),
    }];
    let req = IoRequest {
        tag: i as u64,
        kind: if s.op.read {
            IoKind::Read
        } else {
            IoKind::Write
        },
        offset: s.op.slba * u64::from(p.lba_size),
        len: p.io_size,
        iov: &iov,
        owner: 0,
        journal: None,
    };
    // SAFETY: the buffer belongs to the slot, which is neither reused nor
    // dropped before this tag's completion is polled (or the queue drained).
    match unsafe { q.submit(&req) } {
        Ok(()) => {
            s.busy = true;
            Ok(())
        }
        Err(SubmitError::Full) => Err(format!(
            "the backend queue refused request {} of a queue opened {} deep",
            i + 1,
            p.qd
        )),
        Err(SubmitError::Invalid(why)) => Err(format!("the backend refused a request: {why}")),
    }
}
