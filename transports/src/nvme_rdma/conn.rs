//! One NVMe/RDMA queue's connection: its RDMA CM identifier and queue pair,
//! a completion queue, its receive buffers (one response capsule each)
//! posted, and a buffer for the data of control commands. Used one command
//! at a time for the control path ([`Channel`]), then handed to an I/O
//! queue ([`RdmaConn::into_parts`]).
//!
//! All of its buffers are DMA buffers of the process's registry, so they
//! are registered in the device's protection domain like guest memory;
//! their keys come from the device's [`Registrations`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leapio_backend::dma::{DmaBuffer, DmaRegistry};
use leapio_nvme::rdma::{CmReply, CmRequest, KeyedSgl, RECFMT};
use leapio_nvme::{Cqe, Sqe};
use zerocopy::{FromBytes, IntoBytes};

use crate::nvmf::{Channel, NvmfError, NvmfSpec};
use crate::rdma::{self, device, CmId, Cq, Device, EventChannel};

/// Bytes of the control path's data buffer (Connect data, Identify,
/// DH-HMAC-CHAP messages).
const CTRL_DATA: usize = 8192;
/// Bytes of one response capsule.
pub(super) const RESP: usize = 16;
/// wr_id bit of receives.
pub(super) const RECV_BIT: u64 = 1 << 63;
/// How long a control command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// The address of the spec's target.
fn target_addr(spec: &NvmfSpec) -> Result<SocketAddr, NvmfError> {
    let hp = spec.host_port();
    hp.to_socket_addrs()
        .map_err(|source| NvmfError::Resolve {
            addr: hp.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| NvmfError::Resolve {
            addr: hp,
            source: std::io::ErrorKind::NotFound.into(),
        })
}

/// A registered buffer of `len` bytes from the process's DMA registry.
pub(super) fn dma_buffer(len: usize) -> Result<DmaBuffer, NvmfError> {
    DmaBuffer::new(DmaRegistry::global(), len).map_err(|e| NvmfError::Io {
        source: std::io::Error::other(e.to_string()),
    })
}

/// A connection as an I/O queue drives it.
pub(super) struct Parts {
    // Drop order: the identifier (and its QP) before the CQ.
    pub(super) id: CmId,
    pub(super) cq: Cq,
    /// The connection's own CM events (a disconnect) arrive here.
    pub(super) channel: Arc<EventChannel>,
    pub(super) dev: Arc<Device>,
    /// One response capsule per receive.
    pub(super) recv: DmaBuffer,
    pub(super) recvs: u32,
}

/// See the module documentation.
pub(crate) struct RdmaConn {
    // Field order is drop order: the identifier (and its QP) before the CQ.
    pub(super) id: CmId,
    pub(super) cq: Cq,
    pub(super) channel: Arc<EventChannel>,
    pub(super) dev: Arc<Device>,
    /// One response capsule per receive.
    pub(super) recv: DmaBuffer,
    pub(super) recvs: u32,
    /// The control path's capsule and data.
    capsule: DmaBuffer,
    data: DmaBuffer,
    cid: u16,
    /// Completions polled but not yet consumed by the control path.
    pending: Vec<rdma::WorkDone>,
    /// The RDMA CM said the connection is gone (and why).
    gone: Option<String>,
}

impl RdmaConn {
    /// Resolve, create the queue pair for a queue of `entries` commands,
    /// post its receives and connect as queue `qid`.
    pub fn open(
        spec: &NvmfSpec,
        timeout: Duration,
        qid: u16,
        entries: u32,
    ) -> Result<RdmaConn, NvmfError> {
        let addr = target_addr(spec)?;
        let connect_err = |source| NvmfError::Connect {
            addr: spec.host_port(),
            source,
        };
        let channel = Arc::new(EventChannel::new().map_err(connect_err)?);
        let mut id = CmId::new(&channel).map_err(connect_err)?;
        id.resolve(&channel, &addr, timeout).map_err(connect_err)?;
        let dev = device(&id, rdma::Role::Host).map_err(|source| NvmfError::Io { source })?;
        let io = |source| NvmfError::Io { source };
        let entries = entries.max(2);
        let cq = Cq::new(dev.regs.pd(), entries * 3 + 8).map_err(io)?;
        // Sends: one per command (in-capsule data: two pieces, the guest's
        // memory possibly more).
        id.create_qp(dev.regs.pd(), &cq, entries + 4, entries + 4, 8)
            .map_err(io)?;
        let recv = dma_buffer(usize::try_from(entries).unwrap_or(2) * RESP)?;
        let c = RdmaConn {
            id,
            cq,
            channel,
            dev,
            recv,
            recvs: entries,
            capsule: dma_buffer(64)?,
            data: dma_buffer(CTRL_DATA)?,
            cid: 0,
            pending: Vec::new(),
            gone: None,
        };
        for i in 0..entries {
            c.post_recv(i)?;
        }
        let req = CmRequest {
            recfmt: RECFMT.into(),
            qid: qid.into(),
            hrqsize: u16::try_from(entries).unwrap_or(u16::MAX).into(),
            hsqsize: u16::try_from(entries - 1).unwrap_or(u16::MAX).into(),
            cntlid: 0xffff.into(),
            rsvd: [0; 22],
        };
        let rep =
            c.id.connect(&c.channel, req.as_bytes(), timeout)
                .map_err(connect_err)?;
        if let Ok((r, _)) = CmReply::read_from_prefix(&rep) {
            if r.recfmt.get() != RECFMT {
                return Err(NvmfError::Protocol(format!(
                    "connect reply record format {}",
                    r.recfmt.get()
                )));
            }
        }
        Ok(c)
    }

    /// Post receive `i` again (its response capsule consumed).
    pub(super) fn post_recv(&self, i: u32) -> Result<(), NvmfError> {
        let at = usize::try_from(i).unwrap_or(0) * RESP;
        let p = self.recv.as_ptr().wrapping_add(at);
        let (lkey, _) = self
            .dev
            .regs
            .keys(p, RESP)
            .ok_or_else(|| NvmfError::Protocol("receive buffer not registered".into()))?;
        let len = u32::try_from(RESP).unwrap_or(16);
        // SAFETY: the buffer is registered and lives as long as the QP
        // (both in `self`; the QP is destroyed first).
        unsafe { rdma::post_recv(self.id.qp(), RECV_BIT | u64::from(i), p, len, lkey) }
            .map_err(|source| NvmfError::Io { source })
    }

    /// Send one capsule (our buffer, `len` bytes) signaled with `wr_id`.
    fn send_capsule(&self, wr_id: u64) -> Result<(), NvmfError> {
        let p = self.capsule.as_ptr();
        let (lkey, _) = self
            .dev
            .regs
            .keys(p, 64)
            .ok_or_else(|| NvmfError::Protocol("capsule buffer not registered".into()))?;
        let mut sge = rdma::Sge {
            addr: p as u64,
            length: 64,
            lkey,
        };
        let mut wr = rdma::send_wr();
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = rdma::wr_opcode::IBV_WR_SEND;
        wr.send_flags = rdma::send_flags::IBV_SEND_SIGNALED.0;
        // SAFETY: the capsule buffer is registered and lives until the
        // send completes (we wait for it).
        unsafe { rdma::post_send(self.id.qp(), &mut wr) }.map_err(|source| NvmfError::Io { source })
    }

    /// Poll completions into `pending`, waiting up to `until`, until
    /// `done` (given each new batch of completions) says it is enough.
    fn poll_until(
        &mut self,
        until: Instant,
        mut done: impl FnMut(&[rdma::WorkDone]) -> bool,
    ) -> Result<(), NvmfError> {
        loop {
            let before = self.pending.len();
            let n = self
                .cq
                .poll(&mut self.pending)
                .map_err(|source| NvmfError::Io { source })?;
            if let Some(w) = self.pending[before..]
                .iter()
                .find(|w| w.status != rdma::wc_status::IBV_WC_SUCCESS)
            {
                return Err(NvmfError::Protocol(format!(
                    "work request failed (status {})",
                    w.status
                )));
            }
            // Each completion is shown once: a receive seen twice would be
            // posted twice on one buffer, and a later response would then
            // overwrite an earlier one before it is read.
            if done(&self.pending[before..]) {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(NvmfError::Timeout("a response"));
            }
            if n == 0 {
                if let Some(why) = &self.gone {
                    tracing::debug!("NVMe/RDMA connection closed: {why}");
                    return Err(NvmfError::Closed);
                }
                // Disconnected: what the peer sent before (a response
                // saying why) is still read, with one more poll.
                self.gone = self.channel.connection_gone();
                if self.gone.is_some() {
                    continue;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// The pieces an I/O queue drives.
    pub(super) fn into_parts(self) -> Result<Parts, NvmfError> {
        if !self.pending.is_empty() {
            return Err(NvmfError::Protocol(
                "completions left after the handshake".into(),
            ));
        }
        Ok(Parts {
            id: self.id,
            cq: self.cq,
            channel: self.channel,
            dev: self.dev,
            recv: self.recv,
            recvs: self.recvs,
        })
    }
}

impl Channel for RdmaConn {
    fn command(
        &mut self,
        mut sqe: Sqe,
        data: &[u8],
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), NvmfError> {
        let len = if data.is_empty() {
            read_len
        } else {
            data.len()
        };
        if len > CTRL_DATA {
            return Err(NvmfError::Protocol("command data too long".into()));
        }
        self.cid = self.cid.wrapping_add(1);
        sqe.cid = self.cid.into();
        if len > 0 {
            // SAFETY: our registered data buffer, CTRL_DATA bytes long.
            let buf = unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), len) };
            if !data.is_empty() {
                buf.copy_from_slice(data);
            }
            let (_, rkey) = self
                .dev
                .regs
                .keys(self.data.as_ptr(), len)
                .ok_or_else(|| NvmfError::Protocol("data buffer not registered".into()))?;
            KeyedSgl::new(
                self.data.as_ptr() as u64,
                u32::try_from(len).unwrap_or(0),
                rkey,
            )
            .store(&mut sqe);
        } else {
            KeyedSgl::new(0, 0, 0).store(&mut sqe);
        }
        // SAFETY: our registered capsule buffer, 64 bytes long.
        unsafe {
            std::ptr::copy_nonoverlapping(sqe.as_bytes().as_ptr(), self.capsule.as_ptr(), 64)
        };
        self.send_capsule(u64::from(self.cid))?;
        let cid = self.cid;
        let until = Instant::now() + CMD_TIMEOUT;
        let mut resp = None;
        let mut sent = false;
        let mut recvs = Vec::new();
        let mut short = None;
        {
            let recv = self.recv.as_ptr();
            self.poll_until(until, |pending| {
                for w in pending {
                    if w.wr_id & RECV_BIT != 0 && w.byte_len as usize != RESP {
                        // Stale bytes of an earlier response would be read.
                        short = Some(w.byte_len);
                        return true;
                    }
                    if w.wr_id & RECV_BIT != 0 {
                        let i = u32::try_from(w.wr_id & !RECV_BIT).unwrap_or(0);
                        let at = usize::try_from(i).unwrap_or(0) * RESP;
                        // SAFETY: inside the receive buffer; completed.
                        let b = unsafe { std::slice::from_raw_parts(recv.add(at), RESP) };
                        let c = Cqe::read_from_bytes(b).unwrap_or_default();
                        if c.cid.get() == cid {
                            resp = Some(c);
                        }
                        recvs.push(i);
                    } else if w.wr_id == u64::from(cid) {
                        sent = true;
                    }
                }
                sent && resp.is_some()
            })?;
        }
        if let Some(n) = short {
            return Err(NvmfError::Protocol(format!(
                "a response capsule of {n} bytes (not {RESP})"
            )));
        }
        self.pending.clear();
        for i in recvs {
            self.post_recv(i)?;
        }
        let out = if read_len > 0 {
            // SAFETY: the controller wrote `read_len` bytes before its
            // response; our buffer.
            unsafe { std::slice::from_raw_parts(self.data.as_ptr(), read_len) }.to_vec()
        } else {
            Vec::new()
        };
        Ok((resp.unwrap_or_default(), out))
    }

    fn shutdown(&self) {
        self.id.disconnect();
    }
}
