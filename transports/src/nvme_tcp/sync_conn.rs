//! A blocking NVMe/TCP connection for the control path: ICReq/ICResp,
//! Fabrics Connect, Property Get/Set, Identify, Set Features, Keep Alive.
//! I/O queues use it for their handshake, then go non-blocking.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use leapio_nvme::fabrics::{
    put_nqn, AuthCmd, ConnectCmd, ConnectData, FcType, PropertyCmd, SglDescriptor,
    CATTR_DISABLE_SQFLOW, CONNECT_AUTHREQ_ASCR, CONNECT_AUTHREQ_ATR, FABRICS_OPCODE,
};
use leapio_nvme::tcp::{
    write_pdu, CapsuleCmd, Digests, IcReq, ParserConfig, PduHeader, PduParser, Role, MIN_MAXH2CDATA,
};
use leapio_nvme::{Cqe, Sqe};
use leapio_nvme_auth::msg::{MAX_MESSAGE, SECP_DHCHAP, SPSP_DHCHAP};
use leapio_nvme_auth::{AuthError, HostTransaction, Secrets};
use std::sync::atomic::{AtomicU16, Ordering};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::config::NvmeTcpSpec;
use super::NvmeTcpError;

/// What ICReq/ICResp settled on a connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Negotiated {
    /// Digests in use.
    pub digests: Digests,
    /// Most data in one H2CData PDU.
    pub maxh2cdata: u32,
    /// Alignment of data in our PDUs: (CPDA + 1) * 4.
    pub align: usize,
}

/// Largest C2HData we accept: far more than any MDTS we send commands for.
pub(super) const MAX_C2H_DATA: u32 = 16 << 20;

/// A blocking connection (read/write timeouts set).
pub(super) struct SyncConn {
    sock: TcpStream,
    parser: PduParser,
    neg: Negotiated,
    cid: u16,
    /// Bytes read but not parsed yet.
    rx: Vec<u8>,
}

impl SyncConn {
    /// TCP connect and ICReq/ICResp within `timeout`.
    pub fn open(spec: &NvmeTcpSpec, timeout: Duration) -> Result<SyncConn, NvmeTcpError> {
        let hp = spec.host_port();
        let addrs = hp
            .to_socket_addrs()
            .map_err(|source| NvmeTcpError::Resolve {
                addr: hp.clone(),
                source,
            })?;
        let mut last = None;
        let mut sock = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(sock) = sock else {
            return Err(NvmeTcpError::Connect {
                addr: hp,
                source: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
            });
        };
        let io = |source| NvmeTcpError::Io { source };
        sock.set_nodelay(true).map_err(io)?;
        sock.set_read_timeout(Some(timeout)).map_err(io)?;
        sock.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut c = SyncConn {
            sock,
            parser: PduParser::new(ParserConfig {
                role: Role::Host,
                digests: Digests::default(),
                max_capsule_data: 0,
                max_data: MAX_C2H_DATA,
            }),
            neg: Negotiated {
                digests: Digests::default(),
                maxh2cdata: MIN_MAXH2CDATA,
                align: 4,
            },
            cid: 0,
            rx: Vec::new(),
        };
        let want = Digests {
            header: spec.hdgst,
            data: spec.ddgst,
        };
        let mut req = IcReq::new();
        req.dgst = want.to_dgst();
        req.hpda = 0;
        req.maxr2t = 0.into();
        let mut out = Vec::new();
        write_pdu(&mut out, req.as_bytes(), &[], Digests::default(), 4);
        c.send(&out)?;
        let pdu = c.recv()?;
        let PduHeader::IcResp(r) = pdu.header else {
            return Err(NvmeTcpError::Protocol(format!(
                "expected ICResp, got PDU type {:#04x}",
                pdu.header.common().pdu_type
            )));
        };
        if r.pfv.get() != 0 {
            return Err(NvmeTcpError::Protocol(format!(
                "target speaks PDU format version {}",
                r.pfv.get()
            )));
        }
        let got = Digests::from_dgst(r.dgst);
        // The controller may only turn off what we asked for.
        if (got.header && !want.header) || (got.data && !want.data) {
            return Err(NvmeTcpError::Protocol(format!(
                "ICResp enables digests we did not ask for ({got:?})"
            )));
        }
        if r.cpda > 31 {
            return Err(NvmeTcpError::Protocol(format!("ICResp CPDA {}", r.cpda)));
        }
        let maxh2cdata = r.maxh2cdata.get();
        if maxh2cdata < MIN_MAXH2CDATA || maxh2cdata % 4 != 0 {
            return Err(NvmeTcpError::Protocol(format!(
                "ICResp MAXH2CDATA {maxh2cdata} is below 4096 or not a multiple of 4"
            )));
        }
        c.neg = Negotiated {
            digests: got,
            maxh2cdata,
            align: (usize::from(r.cpda) + 1) * 4,
        };
        c.parser.set_config(ParserConfig {
            digests: got,
            ..*c.parser.config()
        });
        Ok(c)
    }

    fn send(&mut self, b: &[u8]) -> Result<(), NvmeTcpError> {
        self.sock
            .write_all(b)
            .map_err(|source| NvmeTcpError::Io { source })
    }

    /// Next PDU (bytes read past it stay in `rx`).
    fn recv(&mut self) -> Result<leapio_nvme::tcp::Pdu, NvmeTcpError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let (used, r) = self.parser.feed(&self.rx);
            self.rx.drain(..used);
            match r {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(NvmeTcpError::Protocol(e.to_string())),
            }
            let n = match self.sock.read(&mut chunk) {
                Ok(0) => return Err(NvmeTcpError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NvmeTcpError::Timeout("a response"))
                }
                Err(source) => return Err(NvmeTcpError::Io { source }),
            };
            self.rx.extend_from_slice(&chunk[..n]);
        }
    }

    /// Run one command: `data` goes in-capsule, `read_len` bytes of C2H data
    /// are collected. Returns the completion (any status) and the data.
    pub fn command(
        &mut self,
        mut sqe: Sqe,
        data: &[u8],
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), NvmeTcpError> {
        self.cid = self.cid.wrapping_add(1);
        sqe.cid = self.cid.into();
        let len = if data.is_empty() {
            read_len
        } else {
            data.len()
        };
        let len32 = u32::try_from(len)
            .map_err(|_| NvmeTcpError::Protocol("command data too long".into()))?;
        let sgl = if data.is_empty() {
            SglDescriptor::transport(len32)
        } else {
            SglDescriptor::in_capsule(0, len32)
        };
        sgl.store(&mut sqe);
        let mut c = CapsuleCmd::new();
        c.sqe = sqe;
        let mut out = Vec::new();
        write_pdu(
            &mut out,
            c.as_bytes(),
            data,
            self.neg.digests,
            self.neg.align,
        );
        self.send(&out)?;
        let mut buf = vec![0u8; read_len];
        loop {
            let pdu = self.recv()?;
            match pdu.header {
                PduHeader::CapsuleResp(r) if r.cqe.cid.get() == self.cid => {
                    return Ok((r.cqe, buf))
                }
                PduHeader::C2hData(d) if d.cccid.get() == self.cid => {
                    let o = usize::try_from(d.datao.get()).unwrap_or(usize::MAX);
                    let src = pdu.data();
                    let Some(dst) = o.checked_add(src.len()).and_then(|end| buf.get_mut(o..end))
                    else {
                        return Err(NvmeTcpError::Protocol("C2HData out of range".into()));
                    };
                    dst.copy_from_slice(src);
                    if d.ch
                        .flags()
                        .contains(leapio_nvme::tcp::PduFlags::DATA_SUCCESS)
                    {
                        return Ok((Cqe::default(), buf));
                    }
                }
                PduHeader::C2hTermReq(t) => {
                    return Err(NvmeTcpError::Terminated { fes: t.fes.get() })
                }
                _ => {
                    return Err(NvmeTcpError::Protocol(format!(
                        "unexpected PDU type {:#04x}",
                        pdu.header.common().pdu_type
                    )))
                }
            }
        }
    }

    /// A command that must succeed.
    pub fn command_ok(
        &mut self,
        what: &'static str,
        sqe: Sqe,
        data: &[u8],
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), NvmeTcpError> {
        let (cqe, d) = self.command(sqe, data, read_len)?;
        let st = cqe.status_field();
        if !st.is_success() {
            return Err(NvmeTcpError::Status { what, status: st });
        }
        Ok((cqe, d))
    }

    /// Fabrics Connect for queue `qid`; returns the CNTLID.
    pub fn connect(
        &mut self,
        spec: &NvmeTcpSpec,
        hostid: [u8; 16],
        qid: u16,
        cntlid: u16,
        sqsize: u16,
    ) -> Result<u16, NvmeTcpError> {
        let mut c = ConnectCmd::new_zeroed();
        c.opcode = FABRICS_OPCODE;
        c.fctype = FcType::CONNECT;
        c.qid = qid.into();
        c.sqsize = sqsize.into();
        if qid == 0 {
            c.kato = u32::try_from(spec.kato.as_millis())
                .unwrap_or(u32::MAX)
                .into();
        } else {
            // Never more commands in flight than the queue holds, so SQ
            // head reports are not needed; without them the target may end
            // a read with its last C2HData PDU (SUCCESS) and no response.
            c.cattr = CATTR_DISABLE_SQFLOW;
        }
        let mut d = ConnectData::zeroed();
        d.hostid = hostid;
        d.cntlid = cntlid.into();
        put_nqn(&mut d.subnqn, &spec.subnqn);
        put_nqn(&mut d.hostnqn, &spec.hostnqn);
        let sqe = Sqe::read_from_bytes(c.as_bytes()).unwrap_or_default();
        let (cqe, _) = self.command_ok("Connect", sqe, d.as_bytes(), 0)?;
        // DW0 bits 15:0: the controller ID (admin queue); AUTHREQ above.
        let dw0 = cqe.dw0.get();
        if dw0 & CONNECT_AUTHREQ_ASCR != 0 {
            return Err(NvmeTcpError::Unusable(
                "the target requires secure channel concatenation (TLS after authentication), which is not supported".into(),
            ));
        }
        let asked = dw0 & CONNECT_AUTHREQ_ATR != 0;
        match &spec.dhchap {
            None if asked => {
                return Err(NvmeTcpError::AuthRequired {
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
        spec: &NvmeTcpSpec,
        secrets: &Secrets,
        qid: u16,
    ) -> Result<(), NvmeTcpError> {
        let mut t = HostTransaction::new(secrets, &spec.hostnqn, &spec.subnqn, next_tid());
        self.auth_send(&t.negotiate())?;
        let challenge = self.auth_recv()?;
        let reply = match t.reply(&challenge) {
            Ok(r) => r,
            Err(e) => return Err(self.auth_failed(&t, qid, e)),
        };
        self.auth_send(&reply)?;
        let success1 = self.auth_recv()?;
        match t.finish(&success1) {
            Ok(Some(success2)) => self.auth_send(&success2)?,
            Ok(None) => {}
            Err(e) => return Err(self.auth_failed(&t, qid, e)),
        }
        if let Some((hash, group)) = t.negotiated() {
            tracing::debug!(
                qid, %hash, %group, bidirectional = secrets.ctrl.is_some(),
                "NVMe/TCP queue authenticated (DH-HMAC-CHAP)"
            );
        }
        Ok(())
    }

    /// Tell the controller why we give up (unless it refused us), and say
    /// what failed.
    fn auth_failed(&mut self, t: &HostTransaction<'_>, qid: u16, e: AuthError) -> NvmeTcpError {
        if !matches!(e, AuthError::Refused(_)) {
            let _ = self.auth_send(&t.failure2(e.failure_code()));
        }
        NvmeTcpError::Auth { qid, source: e }
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

    fn auth_send(&mut self, m: &[u8]) -> Result<(), NvmeTcpError> {
        let sqe = SyncConn::auth_cmd(FcType::AUTH_SEND, m.len());
        self.command_ok("Authentication Send", sqe, m, 0)
            .map(|_| ())
    }

    fn auth_recv(&mut self) -> Result<Vec<u8>, NvmeTcpError> {
        let sqe = SyncConn::auth_cmd(FcType::AUTH_RECV, MAX_MESSAGE);
        let (_, d) = self.command_ok("Authentication Receive", sqe, &[], MAX_MESSAGE)?;
        Ok(d)
    }

    /// Property Get (8-byte properties when `wide`).
    pub fn prop_get(&mut self, offset: u32, wide: bool) -> Result<u64, NvmeTcpError> {
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
    pub fn prop_set(&mut self, offset: u32, value: u32) -> Result<(), NvmeTcpError> {
        let mut p = PropertyCmd::new_zeroed();
        p.opcode = FABRICS_OPCODE;
        p.fctype = FcType::PROPERTY_SET;
        p.offset = offset.into();
        p.value = u64::from(value).into();
        let sqe = Sqe::read_from_bytes(p.as_bytes()).unwrap_or_default();
        self.command_ok("Property Set", sqe, &[], 0).map(|_| ())
    }

    /// Close the socket now (wakes nothing; the peer sees EOF).
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    /// Give the socket to a non-blocking I/O queue.
    pub fn into_stream(self) -> Result<(TcpStream, Negotiated), NvmeTcpError> {
        if self.parser.partial() || !self.rx.is_empty() {
            return Err(NvmeTcpError::Protocol(
                "unexpected bytes after the handshake".into(),
            ));
        }
        let io = |source| NvmeTcpError::Io { source };
        self.sock.set_read_timeout(None).map_err(io)?;
        self.sock.set_write_timeout(None).map_err(io)?;
        self.sock.set_nonblocking(true).map_err(io)?;
        Ok((self.sock, self.neg))
    }
}

/// A fresh transaction identifier (the controller refuses one that repeats
/// the previous transaction of a queue).
fn next_tid() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Wait until `f` returns true, polling every 10 ms, up to `deadline`.
pub(super) fn wait_until(
    deadline: Instant,
    mut f: impl FnMut() -> Result<bool, NvmeTcpError>,
) -> Result<bool, NvmeTcpError> {
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
