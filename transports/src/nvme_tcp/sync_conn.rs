//! A blocking NVMe/TCP connection for the control path: ICReq/ICResp,
//! Fabrics Connect, Property Get/Set, Identify, Set Features, Keep Alive.
//! I/O queues use it for their handshake, then go non-blocking.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use leapio_nvme::fabrics::SglDescriptor;
use leapio_nvme::tcp::{
    write_pdu, CapsuleCmd, Digests, IcReq, ParserConfig, PduHeader, PduParser, Role, MIN_MAXH2CDATA,
};
use leapio_nvme::{Cqe, Sqe};
use zerocopy::IntoBytes;

use crate::nvmf::{Channel, NvmfError, NvmfSpec};

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
pub(crate) struct SyncConn {
    sock: TcpStream,
    parser: PduParser,
    neg: Negotiated,
    cid: u16,
    /// Bytes read but not parsed yet.
    rx: Vec<u8>,
}

impl SyncConn {
    /// TCP connect and ICReq/ICResp within `timeout`.
    pub fn open(spec: &NvmfSpec, timeout: Duration) -> Result<SyncConn, NvmfError> {
        let hp = spec.host_port();
        let addrs = hp.to_socket_addrs().map_err(|source| NvmfError::Resolve {
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
            return Err(NvmfError::Connect {
                addr: hp,
                source: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
            });
        };
        let io = |source| NvmfError::Io { source };
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
            return Err(NvmfError::Protocol(format!(
                "expected ICResp, got PDU type {:#04x}",
                pdu.header.common().pdu_type
            )));
        };
        if r.pfv.get() != 0 {
            return Err(NvmfError::Protocol(format!(
                "target speaks PDU format version {}",
                r.pfv.get()
            )));
        }
        let got = Digests::from_dgst(r.dgst);
        // The controller may only turn off what we asked for.
        if (got.header && !want.header) || (got.data && !want.data) {
            return Err(NvmfError::Protocol(format!(
                "ICResp enables digests we did not ask for ({got:?})"
            )));
        }
        if r.cpda > 31 {
            return Err(NvmfError::Protocol(format!("ICResp CPDA {}", r.cpda)));
        }
        let maxh2cdata = r.maxh2cdata.get();
        if maxh2cdata < MIN_MAXH2CDATA || maxh2cdata % 4 != 0 {
            return Err(NvmfError::Protocol(format!(
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

    fn send(&mut self, b: &[u8]) -> Result<(), NvmfError> {
        self.sock
            .write_all(b)
            .map_err(|source| NvmfError::Io { source })
    }

    /// Next PDU (bytes read past it stay in `rx`).
    fn recv(&mut self) -> Result<leapio_nvme::tcp::Pdu, NvmfError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let (used, r) = self.parser.feed(&self.rx);
            self.rx.drain(..used);
            match r {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(NvmfError::Protocol(e.to_string())),
            }
            let n = match self.sock.read(&mut chunk) {
                Ok(0) => return Err(NvmfError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NvmfError::Timeout("a response"))
                }
                Err(source) => return Err(NvmfError::Io { source }),
            };
            self.rx.extend_from_slice(&chunk[..n]);
        }
    }

    /// Give the socket to a non-blocking I/O queue.
    pub(super) fn into_stream(self) -> Result<(TcpStream, Negotiated), NvmfError> {
        if self.parser.partial() || !self.rx.is_empty() {
            return Err(NvmfError::Protocol(
                "unexpected bytes after the handshake".into(),
            ));
        }
        let io = |source| NvmfError::Io { source };
        self.sock.set_read_timeout(None).map_err(io)?;
        self.sock.set_write_timeout(None).map_err(io)?;
        self.sock.set_nonblocking(true).map_err(io)?;
        Ok((self.sock, self.neg))
    }
}

impl Channel for SyncConn {
    /// Run one command: `data` goes in-capsule, `read_len` bytes of C2H data
    /// are collected. Returns the completion (any status) and the data.
    fn command(
        &mut self,
        mut sqe: Sqe,
        data: &[u8],
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), NvmfError> {
        self.cid = self.cid.wrapping_add(1);
        sqe.cid = self.cid.into();
        let len = if data.is_empty() {
            read_len
        } else {
            data.len()
        };
        let len32 =
            u32::try_from(len).map_err(|_| NvmfError::Protocol("command data too long".into()))?;
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
                        return Err(NvmfError::Protocol("C2HData out of range".into()));
                    };
                    dst.copy_from_slice(src);
                    if d.ch
                        .flags()
                        .contains(leapio_nvme::tcp::PduFlags::DATA_SUCCESS)
                    {
                        return Ok((Cqe::default(), buf));
                    }
                }
                PduHeader::C2hTermReq(t) => return Err(NvmfError::Terminated { fes: t.fes.get() }),
                _ => {
                    return Err(NvmfError::Protocol(format!(
                        "unexpected PDU type {:#04x}",
                        pdu.header.common().pdu_type
                    )))
                }
            }
        }
    }

    /// Close the socket now (wakes nothing; the peer sees EOF).
    fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}
