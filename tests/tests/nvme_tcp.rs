//! The NVMe/TCP host backend (`nvme-tcp:...`) against socp's NVMe/TCP target
//! on 127.0.0.1: geometry, data integrity with and without digests, flush,
//! write zeroes, deallocate, a target that restarts mid-I/O, a target that
//! never comes back, a hostile target (repeated R2Ts, commands accepted and
//! never answered), and a socp controller whose namespace is remote.

// Test data patterns deliberately wrap byte values.
#![allow(clippy::cast_possible_truncation)]

use leapio_backends::{
    open_backend, Backend, BackendQueue, BackendSpec, Completion, IoKind, IoRequest,
};
use leapio_tests::server::TestServer;
use leapio_tests::Driver;
use socp::tcp_target::{TargetSpec, TcpTarget};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2026-11.io.leapio:tgt0";

struct Target {
    t: Option<TcpTarget>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Target {
    fn start(port: u16, ns: &str) -> Target {
        Target::start_with(port, ns, "")
    }

    fn start_with(port: u16, ns: &str, extra: &str) -> Target {
        let spec: TargetSpec = format!("listen=127.0.0.1:{port},nqn={NQN},ns={ns}{extra}")
            .parse()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        // The old listener's port may take a moment to be free again.
        let t = loop {
            match TcpTarget::start(0, &spec, 1, stop.clone()) {
                Ok(t) => break t,
                Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                    eprintln!("target start: {e}, retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("target start: {e}"),
            }
        };
        let port = t.local_addr.port();
        Target {
            t: Some(t),
            stop,
            port,
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.t.take() {
            t.join();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A sparse file of `bytes` in `dir` as a target's namespace spec.
fn file_ns(dir: &std::path::Path, bytes: u64) -> String {
    let img = dir.join("ns.img");
    std::fs::File::create(&img).unwrap().set_len(bytes).unwrap();
    format!("file:{}", img.display())
}

fn host_spec(port: u16, opts: &str) -> BackendSpec {
    format!("nvme-tcp:127.0.0.1:{port}/{NQN}{opts}")
        .parse()
        .unwrap()
}

/// A tiny xorshift generator: reproducible "random" offsets and sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (seed as u8).wrapping_add((i >> 9) as u8))
        .collect()
}

/// Runs requests on one queue and waits for them.
struct Host {
    q: Box<dyn BackendQueue>,
    done: HashMap<u64, Completion>,
}

impl Host {
    fn new(b: &Arc<dyn Backend>, depth: u32) -> Host {
        Host {
            q: b.open_queue(depth).unwrap(),
            done: HashMap::new(),
        }
    }

    /// Submit (retrying while full) without waiting.
    fn submit(&mut self, tag: u64, kind: IoKind, offset: u64, buf: &mut [u8]) {
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let data = kind.has_data();
        let req = IoRequest {
            tag,
            kind,
            offset,
            len: if kind == IoKind::Flush {
                0
            } else {
                buf.len() as u64
            },
            iov: if data { &iov } else { &[] },
            owner: 0,
            journal: None,
        };
        let t0 = Instant::now();
        loop {
            // SAFETY: every buffer passed here outlives the wait for its tag.
            match unsafe { self.q.submit(&req) } {
                Ok(()) => break,
                Err(leapio_backends::SubmitError::Full) => {
                    assert!(t0.elapsed() < Duration::from_secs(60), "queue stays full");
                    self.q.kick().unwrap();
                    self.reap();
                }
                Err(e) => panic!("submit {req:?}: {e}"),
            }
        }
    }

    fn reap(&mut self) {
        let mut out = Vec::new();
        self.q.poll(&mut out);
        for c in out {
            self.done.insert(c.tag, c);
        }
    }

    /// Wait for every tag in `tags`; returns their results.
    fn wait(&mut self, tags: &[u64], limit: Duration) -> Vec<Result<(), i32>> {
        self.q.kick().unwrap();
        let t0 = Instant::now();
        while tags.iter().any(|t| !self.done.contains_key(t)) {
            assert!(
                t0.elapsed() < limit,
                "requests did not complete within {limit:?}"
            );
            self.q.kick().unwrap();
            self.reap();
            std::thread::yield_now();
        }
        tags.iter()
            .map(|t| self.done.remove(t).unwrap().result.map_err(|e| e.errno))
            .collect()
    }

    fn io(&mut self, kind: IoKind, offset: u64, buf: &mut [u8]) -> Result<(), i32> {
        self.submit(u64::MAX, kind, offset, buf);
        self.wait(&[u64::MAX], Duration::from_secs(30))[0]
    }
}

const SECS: Duration = Duration::from_secs(30);

/// Random writes of 4k..128k (non-overlapping within a batch, many in flight),
/// mirrored in `shadow`, then everything read back.
fn write_read_verify(h: &mut Host, shadow: &mut [u8], rng: &mut Rng, batches: usize) {
    let size = shadow.len() as u64;
    for batch in 0..batches {
        let mut bufs: Vec<(u64, Vec<u8>)> = Vec::new();
        while bufs.len() < 24 {
            let len = 4096 * (1 + rng.below(32));
            let off = rng.below((size - len) / 4096) * 4096;
            if bufs
                .iter()
                .any(|(o, b)| off < o + b.len() as u64 && *o < off + len)
            {
                continue;
            }
            bufs.push((off, pattern(rng.next(), len as usize)));
        }
        let tags: Vec<u64> = (0..bufs.len() as u64).collect();
        for (i, (off, b)) in bufs.iter_mut().enumerate() {
            let kind = if i % 5 == 0 {
                IoKind::WriteFua
            } else {
                IoKind::Write
            };
            h.submit(i as u64, kind, *off, b);
        }
        for r in h.wait(&tags, SECS) {
            assert_eq!(r, Ok(()), "batch {batch}: write failed");
        }
        for (off, b) in &bufs {
            let o = *off as usize;
            shadow[o..o + b.len()].copy_from_slice(b);
        }
        // Read back the batch and as many random other ranges.
        let mut reads: Vec<(u64, Vec<u8>)> = bufs
            .iter()
            .map(|(o, b)| (*o, vec![0xeeu8; b.len()]))
            .collect();
        for _ in 0..8 {
            let len = 4096 * (1 + rng.below(32));
            let off = rng.below((size - len) / 4096) * 4096;
            reads.push((off, vec![0xeeu8; len as usize]));
        }
        let tags: Vec<u64> = (0..reads.len() as u64).collect();
        for (i, (off, b)) in reads.iter_mut().enumerate() {
            h.submit(i as u64, IoKind::Read, *off, b);
        }
        for r in h.wait(&tags, SECS) {
            assert_eq!(r, Ok(()), "batch {batch}: read failed");
        }
        for (off, b) in &reads {
            let o = *off as usize;
            assert!(
                b[..] == shadow[o..o + b.len()],
                "batch {batch}: data mismatch at {off} (+{})",
                b.len()
            );
        }
    }
}

fn geometry_and_data(opts: &str) {
    let tgt = Target::start(0, "ram:32M");
    let b = open_backend(&host_spec(tgt.port, opts)).unwrap();
    let g = b.geometry();
    assert_eq!(g.block_size, 512);
    assert_eq!(g.num_blocks, (32 << 20) / 512);
    let f = b.features();
    assert!(f.write_zeroes && f.deallocate, "{f:?}");
    assert!(
        b.describe().contains("nvme-tcp 127.0.0.1"),
        "{}",
        b.describe()
    );
    let mut h = Host::new(&b, 64);
    let mut shadow = vec![0u8; 32 << 20];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    write_read_verify(&mut h, &mut shadow, &mut rng, 12);
    // Flush.
    assert_eq!(h.io(IoKind::Flush, 0, &mut []), Ok(()));
    b.flush().unwrap();
    // Write zeroes and deallocate read back as zeroes.
    let mut junk = pattern(7, 256 << 10);
    // 256 KiB is over the target's 128 KiB MDTS: two writes.
    let (a, bb) = junk.split_at_mut(128 << 10);
    assert_eq!(h.io(IoKind::Write, 1 << 20, a), Ok(()));
    assert_eq!(h.io(IoKind::Write, (1 << 20) + (128 << 10), bb), Ok(()));
    let mut big = vec![0u8; 256 << 10];
    let req = IoRequest {
        tag: 1,
        kind: IoKind::Write,
        offset: 0,
        len: 256 << 10,
        iov: &[libc::iovec {
            iov_base: big.as_mut_ptr().cast(),
            iov_len: big.len(),
        }],
        owner: 0,
        journal: None,
    };
    // SAFETY: refused at submit, nothing is queued.
    let e = unsafe { h.q.submit(&req) }.unwrap_err().to_string();
    assert!(e.contains("MDTS"), "{e}");
    let mut z = vec![0u8; 64 << 10];
    assert_eq!(h.io(IoKind::WriteZeroes, 1 << 20, &mut z), Ok(()));
    assert_eq!(
        h.io(IoKind::Deallocate, (1 << 20) + (128 << 10), &mut z),
        Ok(())
    );
    let mut back = vec![0xeeu8; 256 << 10];
    let (a, bb) = back.split_at_mut(128 << 10);
    assert_eq!(h.io(IoKind::Read, 1 << 20, a), Ok(()));
    assert_eq!(h.io(IoKind::Read, (1 << 20) + (128 << 10), bb), Ok(()));
    assert!(back[..64 << 10].iter().all(|&x| x == 0), "write zeroes");
    assert!(back[64 << 10..128 << 10] == junk[64 << 10..128 << 10]);
    assert!(
        back[128 << 10..192 << 10].iter().all(|&x| x == 0),
        "deallocate"
    );
    assert!(back[192 << 10..] == junk[192 << 10..]);
    // Out of range is refused at submit.
    let mut one = vec![0u8; 4096];
    let req = IoRequest {
        tag: 1,
        kind: IoKind::Read,
        offset: 32 << 20,
        len: 4096,
        iov: &[libc::iovec {
            iov_base: one.as_mut_ptr().cast(),
            iov_len: 4096,
        }],
        owner: 0,
        journal: None,
    };
    // SAFETY: refused at submit, nothing is queued.
    assert!(unsafe { h.q.submit(&req) }.is_err());
}

#[test]
fn geometry_and_data_without_digests() {
    geometry_and_data("");
}

#[test]
fn geometry_and_data_with_digests() {
    geometry_and_data("?hdgst=1&ddgst=1&qd=32");
}

#[test]
fn several_queues_share_one_controller() {
    let tgt = Target::start(0, "ram:8M");
    let b = open_backend(&host_spec(tgt.port, "?queues=3")).unwrap();
    let mut hs: Vec<Host> = (0..3).map(|_| Host::new(&b, 16)).collect();
    assert!(b.open_queue(16).is_err(), "a fourth queue is refused");
    for (i, h) in hs.iter_mut().enumerate() {
        let mut d = pattern(i as u64, 8192);
        assert_eq!(h.io(IoKind::Write, i as u64 * 8192, &mut d), Ok(()));
    }
    for i in 0..3 {
        let mut back = vec![0u8; 8192];
        let h = &mut hs[(i + 1) % 3];
        assert_eq!(h.io(IoKind::Read, i as u64 * 8192, &mut back), Ok(()));
        assert!(back == pattern(i as u64, 8192));
    }
    drop(hs);
    // Queue IDs are given back.
    let _q = b.open_queue(16).unwrap();
}

#[test]
fn target_restart_mid_io_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let ns = file_ns(dir.path(), 16 << 20);
    let mut tgt = Target::start(0, &ns);
    let port = tgt.port;
    let b = open_backend(&host_spec(port, "?kato=2000&retry=20000")).unwrap();
    let mut h = Host::new(&b, 32);
    let mut shadow = vec![0u8; 16 << 20];
    let mut rng = Rng(12345);
    write_read_verify(&mut h, &mut shadow, &mut rng, 2);
    // Writes in flight while the target goes away and comes back.
    let mut bufs: Vec<(u64, Vec<u8>)> = (0..32u64)
        .map(|i| (i * (256 << 10), pattern(1000 + i, 128 << 10)))
        .collect();
    for (i, (off, buf)) in bufs.iter_mut().enumerate() {
        h.submit(i as u64, IoKind::Write, *off, buf);
    }
    h.q.kick().unwrap();
    h.reap();
    let pending = h.q.in_flight();
    eprintln!("{pending} of 32 writes in flight when the target stops");
    assert!(pending > 0, "the restart must catch writes in flight");
    tgt.shutdown();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(300) {
        h.reap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let tgt2 = Target::start(port, &ns);
    let tags: Vec<u64> = (0..32).collect();
    for r in h.wait(&tags, SECS) {
        assert_eq!(r, Ok(()), "write across the restart");
    }
    for (off, buf) in &bufs {
        let o = *off as usize;
        shadow[o..o + buf.len()].copy_from_slice(buf);
    }
    // Everything acknowledged reads back, on the new connection.
    let mut back = vec![0u8; 16 << 20];
    for chunk in 0..(16 << 20) / (128 << 10) {
        let o = chunk * (128 << 10);
        assert_eq!(
            h.io(IoKind::Read, o as u64, &mut back[o..o + (128 << 10)]),
            Ok(())
        );
    }
    assert!(back == shadow, "data after the restart");
    write_read_verify(&mut h, &mut shadow, &mut rng, 2);
    drop(h);
    drop(b);
    drop(tgt2);
}

/// What a mirror re-adding a remote child relies on: the child's claim
/// says whether its target answers now, and once it does, I/O goes
/// through at once, even from a queue whose reconnection was backing off.
#[test]
fn a_remote_namespace_is_claimable_only_while_its_target_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ns = file_ns(dir.path(), 4 << 20);
    let mut tgt = Target::start(0, &ns);
    let port = tgt.port;
    let b = open_backend(&host_spec(port, "?kato=1000&retry=300")).unwrap();
    b.claim().expect("claimable while the target runs");
    let mut h = Host::new(&b, 4);
    let mut d = pattern(3, 4096);
    assert_eq!(h.io(IoKind::Write, 0, &mut d), Ok(()));
    tgt.shutdown();
    let e = b.claim().expect_err("claimable with the target gone");
    assert!(
        chain(&e).contains(&format!("127.0.0.1:{port}")),
        "{}",
        chain(&e)
    );
    // A write while it is gone fails at the retry deadline; the queue's
    // reconnection backs off meanwhile (its next try 3 s after the loss).
    assert_eq!(h.io(IoKind::Write, 0, &mut d), Err(libc::ETIMEDOUT));
    std::thread::sleep(Duration::from_millis(2300));
    let _tgt2 = Target::start(port, &ns);
    let t0 = Instant::now();
    while let Err(e) = b.claim() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not claimable after the target came back: {}",
            chain(&e)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Claimed: the queue connects again at once, well within the 300 ms.
    assert_eq!(h.io(IoKind::Write, 4096, &mut d), Ok(()));
}

#[test]
fn target_that_never_returns_fails_io_within_the_deadline() {
    let mut tgt = Target::start(0, "ram:4M");
    let b = open_backend(&host_spec(tgt.port, "?retry=1000&timeout=200")).unwrap();
    let mut h = Host::new(&b, 8);
    let mut d = pattern(1, 4096);
    assert_eq!(h.io(IoKind::Write, 0, &mut d), Ok(()));
    tgt.shutdown();
    let t0 = Instant::now();
    let mut bufs: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; 4096]).collect();
    for (i, buf) in bufs.iter_mut().enumerate() {
        h.submit(i as u64, IoKind::Read, i as u64 * 4096, buf);
    }
    let rs = h.wait(&[0, 1, 2, 3], Duration::from_secs(10));
    let took = t0.elapsed();
    for r in rs {
        assert_eq!(r, Err(libc::ETIMEDOUT));
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // New requests fail too, instead of hanging.
    assert_eq!(h.io(IoKind::Write, 0, &mut d), Err(libc::ETIMEDOUT));
}

#[test]
fn socp_controller_with_a_remote_namespace() {
    let tgt = Target::start(0, "ram:16M");
    let srv = TestServer::start(
        &[&format!(
            "ns=nvme-tcp:127.0.0.1:{}/{NQN}?qd=64,io-queues=2",
            tgt.port
        )],
        1,
    );
    let mut d = Driver::bring_up(srv.sock(0), 64 << 20, 2, 64).unwrap();
    let ns = d.identify_namespace(1).unwrap();
    assert_eq!(ns.nsze.get(), (16 << 20) / 512);
    let mut rng = Rng(777);
    for i in 0..40u64 {
        let len = 4096 * (1 + rng.below(32)) as usize;
        let slba = rng.below(((16 << 20) - len as u64) / 512);
        let data = pattern(i, len);
        let q = 1 + (i % 2) as u16;
        let c = d.write_blocks(q, 1, slba, 512, &data).unwrap();
        Driver::check("write", &c).unwrap();
        let (c, back) = d.read_blocks(3 - q, 1, slba, 512, len as u64).unwrap();
        Driver::check("read", &c).unwrap();
        assert!(back == data, "mismatch at slba {slba} (+{len})");
    }
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_target_repeating_r2ts_costs_its_connection_not_memory() {
    use leapio_tests::tcp_proxy::{Misbehave, TcpProxy, R2T_REPEATS};
    let tgt = Target::start(0, "ram:8M");
    let proxy = TcpProxy::start(tgt.port);
    let b = open_backend(&host_spec(proxy.port, "?retry=1500")).unwrap();
    let mut h = Host::new(&b, 8);
    let mut d = pattern(3, 128 << 10);
    assert_eq!(
        h.io(IoKind::Write, 0, &mut d),
        Ok(()),
        "a clean write first"
    );
    proxy.misbehave(Misbehave::RepeatR2t);
    let before = rss();
    let t0 = Instant::now();
    // Every R2T comes R2T_REPEATS + 1 times: answering each would queue
    // 128 KiB x 2001 = 250 MiB of H2CData per write.
    let r = h.io(IoKind::Write, 1 << 20, &mut d);
    let grew = rss().saturating_sub(before);
    assert_eq!(r, Err(libc::ETIMEDOUT), "the write cannot succeed");
    // (Generous: other tests of this binary may run in the same process.)
    assert!(
        grew < 96 << 20,
        "resident memory grew by {} MiB with {R2T_REPEATS} repeated R2Ts",
        grew >> 20
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    // Back to normal: the queue serves again.
    proxy.misbehave(Misbehave::Nothing);
    let mut back = vec![0u8; 128 << 10];
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.io(IoKind::Read, 0, &mut back) != Ok(()) {
        assert!(Instant::now() < deadline, "the queue never recovered");
    }
    assert!(back == d);
}

#[test]
fn a_target_that_accepts_commands_and_never_answers_fails_them_in_time() {
    use leapio_tests::tcp_proxy::{Misbehave, TcpProxy};
    let tgt = Target::start(0, "ram:8M");
    let proxy = TcpProxy::start(tgt.port);
    // The connection is declared stalled after 5 s without a byte (kato
    // 5000, the shortest), then re-made; retry 1 s.
    let b = open_backend(&host_spec(proxy.port, "?retry=1000&kato=5000")).unwrap();
    let mut h = Host::new(&b, 8);
    let mut d = pattern(4, 4096);
    assert_eq!(h.io(IoKind::Write, 0, &mut d), Ok(()));
    proxy.misbehave(Misbehave::Swallow);
    let t0 = Instant::now();
    h.submit(7, IoKind::Read, 0, &mut d);
    // Reconnections succeed (the proxy accepts and the Connect goes
    // through), re-sends vanish: the command must still fail once its
    // retry deadline has passed, at the first stall after it.
    let r = h.wait(&[7], Duration::from_secs(40));
    assert_eq!(r, vec![Err(libc::ETIMEDOUT)]);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "failed after {:?}",
        t0.elapsed()
    );
}

/// Two paths to one subsystem through two proxies (two listeners): a
/// multipath namespace keeps serving, with the data intact, when one path
/// is cut mid-I/O, and counts the failures.
#[test]
fn multipath_moves_io_to_the_surviving_path() {
    use leapio_tests::tcp_proxy::{Misbehave, TcpProxy};
    let tgt = Target::start(0, "ram:8M");
    let (p1, p2) = (TcpProxy::start(tgt.port), TcpProxy::start(tgt.port));
    let spec: BackendSpec = format!(
        "multipath:(nvme-tcp:127.0.0.1:{}/{NQN}?retry=300&queues=1|nvme-tcp:127.0.0.1:{}/{NQN}?retry=300&queues=1)",
        p1.port, p2.port
    )
    .parse()
    .unwrap();
    let b = open_backend(&spec).unwrap();
    let mut h = Host::new(&b, 8);
    let mut rng = Rng(7);
    let mut shadow = vec![0u8; 8 << 20];
    write_read_verify(&mut h, &mut shadow, &mut rng, 3);
    p1.misbehave(Misbehave::Cut);
    let t0 = Instant::now();
    write_read_verify(&mut h, &mut shadow, &mut rng, 6);
    let failures = b
        .figures()
        .iter()
        .find(|f| f.name == "multipath_path_failures_total")
        .map_or(0.0, |f| f.value);
    assert!(failures > 0.0, "no request moved: {}", b.describe());
    assert!(b.describe().contains("(failed)"), "{}", b.describe());
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
}

/// Two listeners of one subsystem (two paths) reporting ANA states: the
/// multipath namespace sends its I/O down the optimized path, moves to the
/// other when the first becomes inaccessible (no error), and comes back
/// when the states swap.
#[test]
fn multipath_follows_the_targets_ana_states() {
    use leapio_nvme::log::AnaState;
    let dir = tempfile::tempdir().unwrap();
    let ns = file_ns(dir.path(), 8 << 20);
    let a = Target::start_with(0, &ns, ",ana=optimized");
    let b = Target::start_with(0, &ns, ",ana=non-optimized");
    let spec: BackendSpec = format!(
        "multipath:(nvme-tcp:127.0.0.1:{}/{NQN}?retry=300&queues=1&kato=1000|nvme-tcp:127.0.0.1:{}/{NQN}?retry=300&queues=1&kato=1000)?policy=qd",
        a.port, b.port
    )
    .parse()
    .unwrap();
    let backend = open_backend(&spec).unwrap();
    let reads = |t: &Target| t.t.as_ref().unwrap().sub.io[0].totals().reads;
    let mut h = Host::new(&backend, 8);
    let mut buf = pattern(1, 4096);
    assert_eq!(h.io(IoKind::Write, 0, &mut buf), Ok(()));
    // Both states read (the keep-alive period is 0.5 s).
    let wait_desc = |what: &str| {
        let t0 = Instant::now();
        while !backend.describe().contains(what) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{what}: {}",
                backend.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_desc("ANA non-optimized");
    wait_desc("ANA optimized");
    let (a0, b0) = (reads(&a), reads(&b));
    for _ in 0..20 {
        assert_eq!(h.io(IoKind::Read, 0, &mut buf), Ok(()));
    }
    assert_eq!(reads(&a) - a0, 20, "reads go down the optimized path");
    assert_eq!(reads(&b), b0);
    // The optimized path becomes inaccessible: no error, the other serves.
    a.t.as_ref()
        .unwrap()
        .sub
        .ana
        .set(AnaState::INACCESSIBLE)
        .unwrap();
    for _ in 0..20 {
        assert_eq!(h.io(IoKind::Read, 0, &mut buf), Ok(()));
    }
    assert!(reads(&b) >= b0 + 19, "the non-optimized path took over");
    // The states swap: the I/O follows the optimized one.
    b.t.as_ref()
        .unwrap()
        .sub
        .ana
        .set(AnaState::OPTIMIZED)
        .unwrap();
    a.t.as_ref()
        .unwrap()
        .sub
        .ana
        .set(AnaState::NON_OPTIMIZED)
        .unwrap();
    wait_desc("ANA optimized)");
    let t0 = Instant::now();
    while backend.describe().matches("ANA optimized").count() != 1
        || !backend.describe().contains("ANA non-optimized")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{}",
            backend.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let (a1, b1) = (reads(&a), reads(&b));
    for _ in 0..20 {
        assert_eq!(h.io(IoKind::Read, 0, &mut buf), Ok(()));
    }
    assert_eq!(reads(&b) - b1, 20, "{}", backend.describe());
    assert_eq!(reads(&a), a1);
}

// ---- DH-HMAC-CHAP between the host backend and the target ----

const AUTH_HOST: &str = "nqn.2026-11.io.leapio:auth-host";
const K_HOST: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

/// The whole error chain, as a person reads it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

fn open_err(spec: &BackendSpec) -> String {
    match open_backend(spec) {
        Ok(_) => panic!("{spec} opened"),
        Err(e) => chain(&e),
    }
}

#[test]
fn dhchap_authenticates_every_queue_both_ways() {
    let k_ctrl = leapio_nvme_auth::Secret::generate(48, Some(leapio_nvme_auth::HashId::Sha384))
        .unwrap()
        .to_string();
    for groups in ["ffdhe2048", "null"] {
        let tgt = Target::start_with(
            0,
            "ram:8M",
            &format!(",allow={AUTH_HOST}:{K_HOST}:{k_ctrl},dhchap-dhgroups={groups}"),
        );
        let opts = format!("?hostnqn={AUTH_HOST}&queues=2&dhchap={K_HOST}&dhchap-ctrl={k_ctrl}");
        let b = open_backend(&host_spec(tgt.port, &opts)).unwrap();
        // the target serves nothing to an unauthenticated queue: I/O on two
        // queues (and the flush's own queue) shows each authenticated
        let mut hs: Vec<Host> = (0..2).map(|_| Host::new(&b, 16)).collect();
        for (i, h) in hs.iter_mut().enumerate() {
            let mut d = pattern(i as u64, 8192);
            assert_eq!(h.io(IoKind::Write, i as u64 * 8192, &mut d), Ok(()));
        }
        let mut back = vec![0u8; 8192];
        assert_eq!(hs[1].io(IoKind::Read, 0, &mut back), Ok(()));
        assert!(back == pattern(0, 8192), "{groups}");
        b.flush().unwrap();
        // only the spec's text is shown, never the secrets
        assert!(!b.describe().contains("DHHC"), "{}", b.describe());
    }
}

#[test]
fn dhchap_refusals_say_why() {
    let tgt = Target::start_with(
        0,
        "ram:8M",
        &format!(
            ",allow={AUTH_HOST}:{K_HOST},allow=nqn.2026-11.io.leapio:plain,allow=nqn.2026-11.io.leapio:bidi:{K_HOST}:{K_HOST}"
        ),
    );
    let other = leapio_nvme_auth::Secret::generate(32, None).unwrap();
    // the controller holds another controller secret than ours: we refuse it
    let e = open_err(&host_spec(
        tgt.port,
        &format!("?hostnqn=nqn.2026-11.io.leapio:bidi&retry=0&dhchap={K_HOST}&dhchap-ctrl={other}"),
    ));
    assert!(e.contains("the controller failed to authenticate"), "{e}");
    let base = format!("?hostnqn={AUTH_HOST}&retry=0");
    for (opts, want) in [
        (String::new(), "requires DH-HMAC-CHAP authentication"),
        (
            format!("&dhchap={other}"),
            "the controller refused authentication: authentication failed",
        ),
        (
            format!("&dhchap={K_HOST}&dhchap-ctrl={other}"),
            "the controller refused authentication",
        ),
    ] {
        let e = open_err(&host_spec(tgt.port, &format!("{base}{opts}")));
        assert!(e.contains(want), "{opts}: {e}");
        assert!(
            !e.contains(&other.to_string()[10..20]),
            "no secret in errors: {e}"
        );
    }
    // a target that does not know our secret cannot prove itself: a host
    // that wants to authenticate the controller refuses it
    let e = open_err(&host_spec(
        tgt.port,
        &format!("?hostnqn=nqn.2026-11.io.leapio:plain&dhchap={K_HOST}&dhchap-ctrl={other}"),
    ));
    assert!(e.contains("Authentication Send failed"), "{e}");
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let path = std::path::PathBuf::from(format!("/proc/{pid}/stat"));
    let (_, t) = leapio_tests::proc_stat::cpu_time(&path).expect("the process's stat");
    t.as_secs_f64()
}

#[test]
fn running_out_of_descriptors_pauses_accepting_without_spinning() {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = std::process::Command::new(leapio_tests::split::bin("socp"));
    // Port 0, read back from socp's log: a port picked here and freed
    // could be taken by a test running beside this one before socp binds it.
    cmd.args([
        "--tcp-target",
        &format!("listen=127.0.0.1:0,nqn={NQN},ns=ram:4M"),
        "--tcp-pollers",
        "1",
    ])
    .env("RUST_LOG", "warn,socp::tcp_target=info")
    .env("NO_COLOR", "1")
    .stderr(log.reopen().unwrap());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(cmd.spawn().expect("socp"));
    let pid = child.0.id();
    let t0 = Instant::now();
    let port = loop {
        let text = std::fs::read_to_string(log.path()).unwrap();
        if let Some(port) = leapio_tests::split::tcp_target_port(&text) {
            break port;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "socp exited: {text}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "socp is not listening: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // More connections than socp has descriptors for.
    let held: Vec<_> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_seconds(pid) - cpu0;
    assert!(
        spent < 0.5,
        "socp used {spent:.2} s of CPU in 2 s while out of descriptors"
    );
    let warnings = std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .filter(|l| l.contains("accept:"))
        .count();
    assert!(warnings > 0 && warnings < 20, "{warnings} accept warnings");
    // Descriptors free again: new hosts are served.
    drop(held);
    let t0 = Instant::now();
    loop {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut icreq = [0u8; 128];
        icreq[..8].copy_from_slice(&[0x00, 0, 128, 0, 128, 0, 0, 0]);
        s.write_all(&icreq).unwrap();
        let mut resp = [0u8; 128];
        if s.read_exact(&mut resp).is_ok() {
            assert_eq!(resp[0], 0x01, "an ICResp");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "socp accepts no more"
        );
    }
    drop(child);
}
