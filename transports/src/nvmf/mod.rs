//! NVMe over Fabrics, the host side every transport shares: the spec of a
//! remote namespace, the errors, and what a host does on a queue whatever
//! carries its capsules (Connect, DH-HMAC-CHAP, Property Get/Set), on top
//! of one method a transport provides ([`Channel::command`]); and the
//! session (the admin queue, its keep-alive thread, the connection of I/O
//! queues) built on it. NVMe/TCP (`nvme_tcp`) and NVMe/RDMA (`nvme_rdma`)
//! are the transports.

mod backend;
mod config;
mod session;

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use leapio_nvme::fabrics::{
    self, AuthCmd, FcType, PropertyCmd, CATTR_DISABLE_SQFLOW, CONNECT_AUTHREQ_ASCR,
    CONNECT_AUTHREQ_ATR, FABRICS_OPCODE,
};
use leapio_nvme::{Cqe, Sqe, Status};
use leapio_nvme_auth::msg::{MAX_MESSAGE, SECP_DHCHAP, SPSP_DHCHAP};
use leapio_nvme_auth::{AuthError, HostTransaction, Secrets};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

pub(crate) use backend::{Fabric, FabricBackend};
pub(crate) use config::parse as parse_spec;
pub use config::{NvmfSpec, Transport, DEFAULT_HOSTNQN};
pub(crate) use session::{reconnect_loop, Info, Session};

/// What went wrong talking to a remote NVMe over Fabrics controller.
#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    /// The target's address could not be resolved.
    #[error("cannot resolve {addr}")]
    Resolve {
        /// HOST:PORT.
        addr: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The connection could not be made (TCP connect; RDMA CM address,
    /// route or connection).
    #[error("cannot connect to {addr}")]
    Connect {
        /// HOST:PORT.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A socket or verbs operation failed.
    #[error("I/O error")]
    Io {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The target closed the connection.
    #[error("connection closed by the target")]
    Closed,
    /// The controller closed the connection after the host's DH-HMAC-CHAP
    /// reply: a refusal that did not say so (Linux's target over RDMA
    /// disconnects before its failure message goes out).
    #[error("DH-HMAC-CHAP on queue {qid}: the controller closed the connection after the host's reply (it refused authentication)")]
    AuthClosed {
        /// The queue.
        qid: u16,
    },
    /// Nothing arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The target broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The target ended the connection (NVMe/TCP C2HTermReq).
    #[error("target terminated the connection (FES {fes:#x})")]
    Terminated {
        /// Fatal error status.
        fes: u16,
    },
    /// A control command failed.
    #[error("{what} failed with status {status}")]
    Status {
        /// Which command.
        what: &'static str,
        /// Its status.
        status: Status,
    },
    /// The target or namespace cannot be used.
    #[error("{0}")]
    Unusable(String),
    /// The controller asks for authentication and we have no secret.
    #[error("the target requires DH-HMAC-CHAP authentication of host {hostnqn}: give dhchap=DHHC-1:..: in the spec")]
    AuthRequired {
        /// Our host NQN.
        hostnqn: String,
    },
    /// DH-HMAC-CHAP failed on a queue.
    #[error("DH-HMAC-CHAP authentication of queue {qid} failed")]
    Auth {
        /// The queue.
        qid: u16,
        /// What went wrong.
        #[source]
        source: leapio_nvme_auth::AuthError,
    },
}

/// A queue to a remote controller used one command at a time (the
/// control path: the admin queue, an I/O queue's Connect and
/// authentication). A transport provides `command`; the rest is the same
/// on every transport.
pub(crate) trait Channel: Send {
    /// Run one command: `data` goes to the controller (in-capsule), and
    /// `read_len` bytes come back from it. Returns the completion (any
    /// status) and the data.
    fn command(
        &mut self,
        sqe: Sqe,
        data: &[u8],
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), NvmfError>;

    /// Close the connection now.
    fn shutdown(&self);

    /// A command that must succeed.
    fn command_ok(
        &mut self,
        what: &'static str,
        sqe: Sqe,
        data: &[u8],
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), NvmfError> {
        let (cqe, d) = self.command(sqe, data, read_len)?;
        let st = cqe.status_field();
        if !st.is_success() {
            return Err(NvmfError::Status { what, status: st });
        }
        Ok((cqe, d))
    }

    /// Fabrics Connect for queue `qid`; returns the CNTLID.
    fn connect(
        &mut self,
        spec: &NvmfSpec,
        hostid: [u8; 16],
        qid: u16,
        cntlid: u16,
        sqsize: u16,
    ) -> Result<u16, NvmfError> {
        let kato = if qid == 0 {
            u32::try_from(spec.kato.as_millis()).unwrap_or(u32::MAX)
        } else {
            0
        };
        let (mut c, d) = fabrics::connect(
            qid,
            sqsize,
            kato,
            hostid,
            cntlid,
            &spec.hostnqn,
            &spec.subnqn,
        );
        if qid != 0 {
            // Never more commands in flight than the queue holds, so SQ
            // head reports are not needed; without them the target may end
            // a read with its last C2HData PDU (SUCCESS) and no response.
            c.cattr = CATTR_DISABLE_SQFLOW;
        }
        let sqe = Sqe::read_from_bytes(c.as_bytes()).unwrap_or_default();
        let (cqe, _) = self.command_ok("Connect", sqe, d.as_bytes(), 0)?;
        // DW0 bits 15:0: the controller ID (admin queue); AUTHREQ above.
        let dw0 = cqe.dw0.get();
        if dw0 & CONNECT_AUTHREQ_ASCR != 0 {
            return Err(NvmfError::Unusable(
                "the target requires secure channel concatenation (TLS after authentication), which is not supported".into(),
            ));
        }
        let asked = dw0 & CONNECT_AUTHREQ_ATR != 0;
        match &spec.dhchap {
            None if asked => {
                return Err(NvmfError::AuthRequired {
                    hostnqn: spec.hostnqn.clone(),
                })
            }
            // To trust the controller it must authenticate, asked or not.
            Some(s) if asked || s.ctrl.is_some() => self.authenticate(spec, s, qid)?,
            _ => {}
        }
        Ok(u16::try_from(dw0 & 0xffff).unwrap_or(0))
    }

    /// One DH-HMAC-CHAP transaction on this queue.
    fn authenticate(
        &mut self,
        spec: &NvmfSpec,
        secrets: &Secrets,
        qid: u16,
    ) -> Result<(), NvmfError> {
        let mut t = HostTransaction::new(secrets, &spec.hostnqn, &spec.subnqn, next_tid());
        self.auth_send(&t.negotiate())?;
        let challenge = self.auth_recv()?;
        let reply = match t.reply(&challenge) {
            Ok(r) => r,
            Err(e) => return Err(self.auth_failed(&t, qid, e)),
        };
        self.auth_send(&reply)?;
        let success1 = match self.auth_recv() {
            Ok(m) => m,
            Err(NvmfError::Closed) => return Err(NvmfError::AuthClosed { qid }),
            Err(e) => return Err(e),
        };
        match t.finish(&success1) {
            Ok(Some(success2)) => self.auth_send(&success2)?,
            Ok(None) => {}
            Err(e) => return Err(self.auth_failed(&t, qid, e)),
        }
        if let Some((hash, group)) = t.negotiated() {
            tracing::debug!(
                qid, %hash, %group, bidirectional = secrets.ctrl.is_some(),
                "queue authenticated (DH-HMAC-CHAP)"
            );
        }
        Ok(())
    }

    /// Tell the controller why we give up (unless it refused us), and say
    /// what failed.
    fn auth_failed(&mut self, t: &HostTransaction<'_>, qid: u16, e: AuthError) -> NvmfError {
        if !matches!(e, AuthError::Refused(_)) {
            let _ = self.auth_send(&t.failure2(e.failure_code()));
        }
        NvmfError::Auth { qid, source: e }
    }

    fn auth_send(&mut self, m: &[u8]) -> Result<(), NvmfError> {
        let sqe = auth_cmd(FcType::AUTH_SEND, m.len());
        self.command_ok("Authentication Send", sqe, m, 0)
            .map(|_| ())
    }

    fn auth_recv(&mut self) -> Result<Vec<u8>, NvmfError> {
        let sqe = auth_cmd(FcType::AUTH_RECV, MAX_MESSAGE);
        let (_, d) = self.command_ok("Authentication Receive", sqe, &[], MAX_MESSAGE)?;
        Ok(d)
    }

    /// Property Get (8-byte properties when `wide`).
    fn prop_get(&mut self, offset: u32, wide: bool) -> Result<u64, NvmfError> {
        let mut p = PropertyCmd::new_zeroed();
        p.opcode = FABRICS_OPCODE;
        p.fctype = FcType::PROPERTY_GET;
        p.attrib = u8::from(wide);
        p.offset = offset.into();
        let sqe = Sqe::read_from_bytes(p.as_bytes()).unwrap_or_default();
        let (cqe, _) = self.command_ok("Property Get", sqe, &[], 0)?;
        Ok(u64::from(cqe.dw0.get()) | (u64::from(cqe.dw1.get()) << 32))
    }

    /// Property Set of a 4-byte property.
    fn prop_set(&mut self, offset: u32, value: u32) -> Result<(), NvmfError> {
        let mut p = PropertyCmd::new_zeroed();
        p.opcode = FABRICS_OPCODE;
        p.fctype = FcType::PROPERTY_SET;
        p.offset = offset.into();
        p.value = u64::from(value).into();
        let sqe = Sqe::read_from_bytes(p.as_bytes()).unwrap_or_default();
        self.command_ok("Property Set", sqe, &[], 0).map(|_| ())
    }
}

fn auth_cmd(fctype: u8, len: usize) -> Sqe {
    let mut a = AuthCmd::new_zeroed();
    a.opcode = FABRICS_OPCODE;
    a.fctype = fctype;
    a.secp = SECP_DHCHAP;
    a.spsp0 = SPSP_DHCHAP;
    a.spsp1 = SPSP_DHCHAP;
    a.len = u32::try_from(len).unwrap_or(u32::MAX).into();
    Sqe::read_from_bytes(a.as_bytes()).unwrap_or_default()
}

/// A fresh transaction identifier (the controller refuses one that repeats
/// the previous transaction of a queue).
fn next_tid() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Wait until `f` returns true, polling every 10 ms, up to `deadline`.
pub(crate) fn wait_until(
    deadline: Instant,
    mut f: impl FnMut() -> Result<bool, NvmfError>,
) -> Result<bool, NvmfError> {
    loop {
        if f()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The CIDs (indexes) of the commands in `cmds` that have waited for a
/// connection (since `waiting`) for `retry` or longer.
pub(crate) fn overdue<T>(
    cmds: &[Option<T>],
    waiting: impl Fn(&T) -> Option<Instant>,
    retry: Duration,
) -> Vec<u16> {
    let now = Instant::now();
    cmds.iter()
        .enumerate()
        .filter(|(_, c)| {
            c.as_ref()
                .and_then(&waiting)
                .is_some_and(|t| now.duration_since(t) >= retry)
        })
        .filter_map(|(i, _)| u16::try_from(i).ok())
        .collect()
}
