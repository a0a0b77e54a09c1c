//! NVMe/RDMA hosts that break the protocol, one after another, against a
//! `socp --rdma-target`: connection requests it must refuse, capsules
//! shorter than a command, data descriptors naming memory the host never
//! registered (a wrong key, or past the end of its registration), a host
//! that never posts a receive, a connection that never sends its Connect.
//! Each says what the target did; a target that admits what it must
//! refuse, or keeps a connection it must drop, fails the run.

use leapio_backends::dma::{DmaBuffer, DmaRegistry};
use leapio_backends::rdma::{self, device, event, CmEvent, CmId, Cq, Device, EventChannel};
use leapio_nvme::fabrics::{self, SglDescriptor, CNTLID_DYNAMIC};
use leapio_nvme::rdma::{
    CmReject, CmRequest, KeyedSgl, RECFMT, REJECT_INVALID_HRQSIZE, REJECT_INVALID_HSQSIZE,
    REJECT_INVALID_RECFMT,
};
use leapio_nvme::{Cqe, Sqe};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

const HOSTNQN: &str = "nqn.2026-12.io.leapio:hostile-rdma";
/// How long the target may take to act on what it must not keep.
const BOUND: Duration = Duration::from_secs(5);
/// Commands the hostile hosts say they may send.
const ENTRIES: u16 = 32;
/// Where a capsule goes in the peer's buffer (receives come first).
const SEND_AT: usize = 8192;

/// One connection of a hostile host.
struct Peer {
    // Drop order: the identifier (and its QP) before the CQ.
    id: CmId,
    cq: Cq,
    channel: Arc<EventChannel>,
    dev: Arc<Device>,
    buf: DmaBuffer,
}

impl Peer {
    /// Resolve `addr`, post `recvs` receives, and send a connection
    /// request with `private` data: the peer, and the target's answer.
    fn request(addr: &SocketAddr, recvs: u32, private: &[u8]) -> Result<(Peer, CmEvent), String> {
        fn e(what: &'static str) -> impl Fn(std::io::Error) -> String {
            move |err| format!("{what}: {err}")
        }
        let channel = Arc::new(EventChannel::new().map_err(e("event channel"))?);
        let mut id = CmId::new(&channel).map_err(e("CM identifier"))?;
        id.resolve(&channel, addr, BOUND).map_err(e("resolve"))?;
        let dev = device(&id, rdma::Role::Host).map_err(e("device"))?;
        let cq = Cq::new(dev.regs.pd(), 256).map_err(e("CQ"))?;
        id.create_qp(dev.regs.pd(), &cq, 64, 64, 1)
            .map_err(e("QP"))?;
        let buf = DmaBuffer::new(DmaRegistry::global(), 64 << 10)
            .map_err(|err| format!("buffer: {err}"))?;
        let p = Peer {
            id,
            cq,
            channel,
            dev,
            buf,
        };
        for i in 0..recvs {
            let at = p
                .buf
                .as_ptr()
                .wrapping_add(usize::try_from(i).unwrap_or(0) * 64);
            let (lkey, _) = p.keys(at, 64)?;
            // SAFETY: the buffer is registered and outlives the QP (field
            // order).
            unsafe { rdma::post_recv(p.id.qp(), u64::from(i), at, 64, lkey) }
                .map_err(e("post receive"))?;
        }
        let ev =
            p.id.request(&p.channel, private, BOUND)
                .map_err(e("connection request"))?;
        Ok((p, ev))
    }

    /// A connection the target accepted, with `recvs` receives posted.
    fn connect(addr: &SocketAddr, recvs: u32) -> Result<Peer, String> {
        let (p, ev) = Peer::request(addr, recvs, &request(RECFMT, ENTRIES, ENTRIES - 1))?;
        if ev.kind != event::ESTABLISHED {
            return Err(format!("a valid connection request was refused ({ev:?})"));
        }
        Ok(p)
    }

    fn keys(&self, p: *const u8, len: usize) -> Result<(u32, u32), String> {
        self.dev
            .regs
            .keys(p, len)
            .ok_or_else(|| "the peer's buffer is not registered".to_string())
    }

    /// SEND `bytes` (a capsule, or not).
    fn send(&self, bytes: &[u8]) -> Result<(), String> {
        // SAFETY: the buffer has 64 KiB; the capsule goes at SEND_AT, past
        // the receives, and is at most a few KiB.
        let p = unsafe { self.buf.as_ptr().add(SEND_AT) };
        let n = bytes.len().min(self.buf.len() - SEND_AT);
        // SAFETY: `n` bytes fit at `p` (above); nothing else writes there.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n) };
        let (lkey, _) = self.keys(p, n.max(1))?;
        let len = u32::try_from(n).unwrap_or(0);
        // SAFETY: registered, and kept until the peer is dropped.
        unsafe { rdma::post_send_buf(self.id.qp(), 1 << 40, p, len, lkey) }
            .map_err(|err| format!("send: {err}"))
    }

    /// How long until the target dropped the connection, if it did within
    /// `within`.
    fn dropped_within(&self, within: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let mut done = Vec::new();
        while t0.elapsed() < within {
            if self.channel.connection_gone().is_some() {
                return Some(t0.elapsed());
            }
            done.clear();
            let _ = self.cq.poll(&mut done);
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The first response capsule received within `within`.
    fn response(&self, within: Duration) -> Option<Cqe> {
        let t0 = Instant::now();
        let mut done = Vec::new();
        while t0.elapsed() < within {
            done.clear();
            let _ = self.cq.poll(&mut done);
            for w in &done {
                if w.status == rdma::wc_status::IBV_WC_SUCCESS && w.wr_id < 1 << 40 {
                    let at = usize::try_from(w.wr_id).unwrap_or(0) * 64;
                    // SAFETY: a receive completed into this 64-byte slot.
                    let b = unsafe { std::slice::from_raw_parts(self.buf.as_ptr().add(at), 16) };
                    return Cqe::read_from_bytes(b).ok();
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// NVMe/RDMA's connection request record.
fn request(recfmt: u16, hrqsize: u16, hsqsize: u16) -> Vec<u8> {
    CmRequest {
        recfmt: recfmt.into(),
        qid: 0.into(),
        hrqsize: hrqsize.into(),
        hsqsize: hsqsize.into(),
        cntlid: 0xffff.into(),
        rsvd: [0; 22],
    }
    .as_bytes()
    .to_vec()
}

/// An admin-queue Connect capsule for `nqn`: its data in the capsule, or
/// named by `keyed` (then only the command is sent).
fn connect_capsule(nqn: &str, keyed: Option<KeyedSgl>) -> Vec<u8> {
    let (c, d) = fabrics::connect(0, ENTRIES - 1, 0, [5; 16], CNTLID_DYNAMIC, HOSTNQN, nqn);
    let mut sqe = Sqe::read_from_bytes(c.as_bytes()).unwrap_or_default();
    sqe.cid = 1.into();
    let mut out = Vec::new();
    match keyed {
        Some(k) => {
            k.store(&mut sqe);
            out.extend_from_slice(sqe.as_bytes());
        }
        None => {
            SglDescriptor::in_capsule(0, 1024).store(&mut sqe);
            out.extend_from_slice(sqe.as_bytes());
            out.extend_from_slice(d.as_bytes());
        }
    }
    out
}

/// Run every attack on the target at `addr` (subsystem `nqn`); `hold`:
/// how long the host that posts no receives keeps its connection (while
/// a well-behaved host runs beside it). A line per attack, or the first
/// thing the target got wrong.
pub fn run(addr: &str, nqn: &str, hold: Duration) -> Result<String, String> {
    let addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut out = Vec::new();

    // Connection requests the target must refuse, with the status that
    // says why.
    // (RoCE pads a request's private data with zeros: a request with none
    // reads as HSQSIZE 0.)
    let bad: [(&str, Vec<u8>, u16); 4] = [
        (
            "record format 1",
            request(1, ENTRIES, ENTRIES - 1),
            REJECT_INVALID_RECFMT,
        ),
        (
            "HSQSIZE 0",
            request(RECFMT, ENTRIES, 0),
            REJECT_INVALID_HSQSIZE,
        ),
        (
            "HSQSIZE 65535",
            request(RECFMT, u16::MAX, u16::MAX),
            REJECT_INVALID_HSQSIZE,
        ),
        (
            "HRQSIZE below HSQSIZE",
            request(RECFMT, 4, ENTRIES - 1),
            REJECT_INVALID_HRQSIZE,
        ),
    ];
    for (what, private, want) in bad {
        let (_p, ev) = Peer::request(&addr, 0, &private)?;
        if ev.kind != event::REJECTED {
            return Err(format!(
                "a connection request with {what} was not refused ({ev:?})"
            ));
        }
        let sts = CmReject::read_from_prefix(&ev.private)
            .map(|(r, _)| r.sts.get())
            .map_err(|_| format!("{what}: a reject without NVMe/RDMA's record ({ev:?})"))?;
        if sts != want {
            return Err(format!("{what}: refused with status {sts}, not {want}"));
        }
    }
    out.push("4 bad connection requests refused with their status".to_string());

    // A capsule shorter than a command: the connection is dropped.
    let p = Peer::connect(&addr, 4)?;
    p.send(&[0x7f; 10])?;
    let t = p
        .dropped_within(BOUND)
        .ok_or("a capsule of 10 bytes: the connection was kept")?;
    out.push(format!(
        "a 10-byte capsule: dropped in {} ms",
        t.as_millis()
    ));

    // Connect data named by a key the host never had, then by a valid key
    // past the end of its registration: the target's RDMA READ fails and
    // the connection is dropped, nothing is read from elsewhere.
    for (what, wrong_key) in [
        ("a key never registered", true),
        ("past its registration", false),
    ] {
        let p = Peer::connect(&addr, 4)?;
        let (_, rkey) = p.keys(p.buf.as_ptr(), p.buf.len())?;
        let base = p.buf.as_ptr() as u64;
        let k = if wrong_key {
            KeyedSgl::new(base, 1024, rkey ^ 0x00ff_ff00)
        } else {
            KeyedSgl::new(base + (p.buf.len() as u64) - 512, 1024, rkey)
        };
        p.send(&connect_capsule(nqn, Some(k)))?;
        if let Some(cqe) = p.response(Duration::from_millis(500)) {
            if cqe.status_field().is_success() {
                return Err(format!("Connect data {what}: the Connect succeeded"));
            }
        }
        let t = p
            .dropped_within(BOUND)
            .ok_or_else(|| format!("Connect data {what}: the connection was kept"))?;
        out.push(format!(
            "Connect data {what}: dropped in {} ms",
            t.as_millis()
        ));
    }

    // A connection that never sends its Connect is dropped once the
    // target's deadline passes (twice its icreq-timeout).
    let p = Peer::connect(&addr, 4)?;
    let t = p
        .dropped_within(Duration::from_secs(30))
        .ok_or("a connection with no Connect was kept for 30 s")?;
    out.push(format!("no Connect: dropped after {} ms", t.as_millis()));

    // A host that posts no receive: the target's responses wait on it
    // (receiver not ready). It holds its connection for `hold` while others
    // are served; the target must neither stall nor fail.
    let p = Peer::connect(&addr, 0)?;
    p.send(&connect_capsule(nqn, None))?;
    std::thread::sleep(hold);
    let kept = p.channel.connection_gone().is_none();
    out.push(format!(
        "no receives posted: held {} s ({})",
        hold.as_secs(),
        if kept {
            "still connected"
        } else {
            "dropped by the target"
        }
    ));
    drop(p);
    Ok(out.join("; "))
}
