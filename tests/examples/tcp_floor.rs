//! The floor under any NVMe/TCP target on this machine: a loopback TCP
//! round trip of a 72-byte request (a command capsule's size) answered by
//! 4 KiB plus a 24-byte header (a C2HData PDU), between two threads pinned
//! to different CPUs that spin on non-blocking sockets, doing nothing else,
//! with QD requests outstanding (each side answers or re-sends for all
//! that arrived in one write, as a poller batches). Prints the round trip's percentiles and the
//! answering thread's CPU time per answer (what the kernel's TCP costs a
//! target per 4 KiB read, at that depth).
//!
//!   cargo run --release -p leapio-tests --example tcp_floor [SECONDS [QD]]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const REQ: usize = 72;
const ANSWER: usize = 24 + 4096;

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // within it, and sched_setaffinity reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("tcp_floor: cannot pin to CPU {cpu}");
        }
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Write all of `buf`, spinning on a non-blocking socket; false when the
/// peer is gone.
fn write_spin(s: &mut TcpStream, buf: &[u8]) -> bool {
    let mut off = 0;
    while off < buf.len() {
        match s.write(&buf[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(_) => return false,
        }
    }
    true
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let secs = args.first().copied().unwrap_or(4);
    let qd = usize::try_from(args.get(1).copied().unwrap_or(1).clamp(1, 1024)).unwrap_or(1);
    let (scpu, ccpu) = (0, 1);
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        pin(scpu);
        let (mut s, _) = l.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        s.set_nonblocking(true).expect("nonblocking");
        // Answer whatever requests have arrived, all in one write, as a
        // target's poller does.
        let mut inbuf = vec![0u8; 64 << 10];
        let answers = vec![0x5au8; ANSWER * 1024];
        let (c0, mut n, mut partial) = (thread_cpu(), 0u64, 0usize);
        loop {
            let got = match s.read(&mut inbuf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::hint::spin_loop();
                    continue;
                }
                Err(_) => break,
            };
            let k = (partial + got) / REQ;
            partial = (partial + got) % REQ;
            if k > 0 && !write_spin(&mut s, &answers[..k.min(1024) * ANSWER]) {
                break;
            }
            n += k as u64;
        }
        (thread_cpu() - c0, n)
    });
    pin(ccpu);
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    c.set_nonblocking(true).expect("nonblocking");
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let mut inbuf = vec![0u8; 256 << 10];
    let end = Instant::now() + Duration::from_secs(secs);
    let reqs = vec![0u8; REQ * qd];
    // Send times of the requests in flight, oldest first (answers come in
    // order).
    let mut sent = std::collections::VecDeque::with_capacity(qd);
    let now = Instant::now();
    sent.extend(std::iter::repeat_n(now, qd));
    assert!(write_spin(&mut c, &reqs), "send");
    let mut partial = 0usize;
    while Instant::now() < end {
        let got = match c.read(&mut inbuf) {
            Ok(0) => panic!("closed"),
            Ok(k) => k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::hint::spin_loop();
                continue;
            }
            Err(e) => panic!("receive: {e}"),
        };
        let k = (partial + got) / ANSWER;
        partial = (partial + got) % ANSWER;
        if k == 0 {
            continue;
        }
        let now = Instant::now();
        for _ in 0..k {
            let t = sent.pop_front().expect("a request in flight");
            hist.saturating_record(u64::try_from((now - t).as_nanos()).unwrap_or(u64::MAX));
            sent.push_back(now);
        }
        assert!(write_spin(&mut c, &reqs[..k * REQ]), "send");
    }
    drop(c);
    let (cpu, n) = server.join().expect("server");
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{{\"qd\": {qd}, \"round_trips\": {n}, \"p50_us\": {:.3}, \"p99_us\": {:.3}, \"answering_cpu_us_per_answer\": {:.3}}}",
        us(0.5),
        us(0.99),
        cpu.as_secs_f64() * 1e6 / n.max(1) as f64
    );
}
