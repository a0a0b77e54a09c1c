//! A blocking vfio-user client: tests and the leapio-perf benchmark play the
//! hypervisor with it. One request at a time; every reply is checked against
//! its request (id, command, type, size).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use zerocopy::{FromBytes, IntoBytes};

use leapio_vmm_shim::vfio_user::socket::{recv_with_fds, send_with_fds};
use leapio_vmm_shim::vfio_user::wire::{self, cmd, len_u32, Header, HEADER_SIZE};
use leapio_vmm_shim::vfio_user::{
    DeviceInfo, IrqInfo, RegionInfo, RegionMmap, MAX_DATA_XFER_SIZE, MAX_MSG_FDS, MAX_MSG_SIZE,
    VERSION_MAJOR, VERSION_MINOR,
};

/// Errors of [`Client`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the socket failed.
    #[error("cannot connect to {}", path.display())]
    Connect {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed (including a timeout).
    #[error("vfio-user socket I/O failed")]
    Io(#[source] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server answered with an error reply.
    #[error("the server replied with errno {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Remote {
        /// The errno of the reply (0 if the server sent none, which this
        /// crate's server never does).
        errno: leapio_vmm_shim::vfio_user::Errno,
    },
    /// The server's reply does not follow the protocol.
    #[error("bad reply from the server: {0}")]
    Protocol(String),
    /// The request cannot be expressed (e.g. offset + length overflows).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The server's VERSION reply is not a version we speak.
    #[error(
        "server speaks vfio-user {major}.{minor}, we speak {}.{}",
        leapio_vmm_shim::vfio_user::VERSION_MAJOR,
        leapio_vmm_shim::vfio_user::VERSION_MINOR
    )]
    Version {
        /// Server's major.
        major: u16,
        /// Server's minor.
        minor: u16,
    },
}

/// Largest region-info reply we accept (struct + capabilities).
const MAX_REGION_INFO_ARGSZ: u32 = 64 * 1024;

/// A connected, negotiated vfio-user client.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u16,
    server_version: (u16, u16),
    server_max_msg_fds: usize,
    server_max_xfer: u32,
}

fn protocol(what: impl Into<String>) -> ClientError {
    ClientError::Protocol(what.into())
}

fn io_err(e: io::Error) -> ClientError {
    ClientError::Io(e)
}

/// Read a fixed structure from the front of a reply payload.
fn parse<'a, T: FromBytes>(payload: &'a [u8], what: &str) -> Result<(T, &'a [u8]), ClientError> {
    T::read_from_prefix(payload)
        .map_err(|_| protocol(format!("{what} reply too short ({} bytes)", payload.len())))
}

impl Client {
    /// Connect to a server's socket and negotiate the version.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Client::from_stream(stream)
    }

    /// Use an already connected stream (e.g. one end of
    /// `UnixStream::pair()`) and negotiate the version.
    pub fn from_stream(stream: UnixStream) -> Result<Client, ClientError> {
        let mut client = Client::from_stream_unnegotiated(stream);
        client.negotiate()?;
        Ok(client)
    }

    /// Wrap a stream without sending VERSION (for tests of what a server
    /// does before negotiation); call [`Client::negotiate`] next.
    pub fn from_stream_unnegotiated(stream: UnixStream) -> Client {
        Client {
            stream,
            next_id: 0,
            server_version: (0, 0),
            server_max_msg_fds: 1,
            server_max_xfer: MAX_DATA_XFER_SIZE,
        }
    }

    /// Bound every blocking read and write (`None`: wait forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream.set_read_timeout(timeout).map_err(io_err)?;
        self.stream.set_write_timeout(timeout).map_err(io_err)
    }

    /// The version the server replied with.
    pub fn server_version(&self) -> (u16, u16) {
        self.server_version
    }

    /// The server's `max_msg_fds` (1 if it did not say).
    pub fn server_max_msg_fds(&self) -> usize {
        self.server_max_msg_fds
    }

    /// The largest region transfer we send in one message: the server's
    /// `max_data_xfer_size`, capped at ours.
    pub fn max_data_xfer_size(&self) -> u32 {
        self.server_max_xfer
    }

    /// Send VERSION (ours: 0.1 with `max_msg_fds` and `max_data_xfer_size`)
    /// and check the reply.
    pub fn negotiate(&mut self) -> Result<(), ClientError> {
        let ver = wire::Version {
            major: VERSION_MAJOR.into(),
            minor: VERSION_MINOR.into(),
        };
        let json = serde_json::json!({
            "capabilities": { "max_msg_fds": MAX_MSG_FDS, "max_data_xfer_size": MAX_DATA_XFER_SIZE }
        })
        .to_string();
        let mut payload = ver.as_bytes().to_vec();
        payload.extend_from_slice(json.as_bytes());
        payload.push(0);
        let (reply, _) = self.request(cmd::VERSION, &payload, &[])?;
        let (ver, rest) = parse::<wire::Version>(&reply, "VERSION")?;
        let (major, minor) = (ver.major.get(), ver.minor.get());
        if major != VERSION_MAJOR || minor > VERSION_MINOR {
            return Err(ClientError::Version { major, minor });
        }
        self.server_version = (major, minor);
        self.server_max_msg_fds = 1;
        self.server_max_xfer = MAX_DATA_XFER_SIZE;
        if rest.is_empty() {
            return Ok(());
        }
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(protocol("VERSION reply JSON is not NUL-terminated"));
        };
        let value: serde_json::Value = serde_json::from_slice(&rest[..nul])
            .map_err(|e| protocol(format!("VERSION reply JSON: {e}")))?;
        let caps = value.get("capabilities").and_then(|c| c.as_object());
        if let Some(caps) = caps {
            if let Some(v) = caps.get("max_msg_fds") {
                let n = v
                    .as_u64()
                    .ok_or_else(|| protocol("max_msg_fds is not a number"))?;
                self.server_max_msg_fds = usize::try_from(n).unwrap_or(usize::MAX).min(MAX_MSG_FDS);
            }
            if let Some(v) = caps.get("max_data_xfer_size") {
                let n = v
                    .as_u64()
                    .ok_or_else(|| protocol("max_data_xfer_size is not a number"))?;
                if n == 0 {
                    return Err(protocol("max_data_xfer_size is 0"));
                }
                self.server_max_xfer = u32::try_from(n).unwrap_or(u32::MAX).min(MAX_DATA_XFER_SIZE);
            }
        }
        Ok(())
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfo, ClientError> {
        let req = wire::DeviceInfo {
            argsz: len_u32(size_of::<wire::DeviceInfo>()).into(),
            ..Default::default()
        };
        let (reply, _) = self.request(cmd::DEVICE_GET_INFO, req.as_bytes(), &[])?;
        let (info, _) = parse::<wire::DeviceInfo>(&reply, "DEVICE_GET_INFO")?;
        Ok(DeviceInfo {
            flags: info.flags.get(),
            num_regions: info.num_regions.get(),
            num_irqs: info.num_irqs.get(),
        })
    }

    /// DEVICE_GET_REGION_INFO, two-pass like QEMU (argsz 32 first, then what
    /// the server asked for). If the region is mappable the server's fd is
    /// returned and `mmap.fd` is its raw value; without a sparse-mmap
    /// capability `areas` is the whole region.
    pub fn region_info(
        &mut self,
        index: u32,
    ) -> Result<(RegionInfo, Option<OwnedFd>), ClientError> {
        let base = len_u32(size_of::<wire::RegionInfo>());
        let mut argsz = base;
        let (reply, mut fds) = loop {
            let req = wire::RegionInfo {
                argsz: argsz.into(),
                index: index.into(),
                ..Default::default()
            };
            let (reply, fds) = self.request(cmd::DEVICE_GET_REGION_INFO, req.as_bytes(), &[])?;
            let (info, _) = parse::<wire::RegionInfo>(&reply, "DEVICE_GET_REGION_INFO")?;
            if reply.len() > argsz as usize {
                return Err(protocol("region info reply larger than argsz"));
            }
            let need = info.argsz.get();
            if need <= argsz || argsz != base {
                break (reply, fds);
            }
            if need > MAX_REGION_INFO_ARGSZ {
                return Err(protocol(format!("region info argsz {need} too large")));
            }
            argsz = need;
        };
        let (info, _) = parse::<wire::RegionInfo>(&reply, "DEVICE_GET_REGION_INFO")?;
        let flags = info.flags.get();
        let size = info.size.get();
        let mut region = RegionInfo {
            size,
            read: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            write: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmap: None,
        };
        if flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || fds.is_empty() {
            return Ok((region, None));
        }
        let fd = fds.swap_remove(0);
        let mut areas = None;
        if flags & VFIO_REGION_INFO_FLAG_CAPS != 0 {
            areas = sparse_areas(&reply, info.cap_offset.get())?;
        }
        region.mmap = Some(RegionMmap {
            fd: fd.as_raw_fd(),
            file_offset: info.offset.get(),
            areas: areas.unwrap_or_else(|| vec![(0, size)]),
        });
        Ok((region, Some(fd)))
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, ClientError> {
        let req = wire::IrqInfo {
            argsz: len_u32(size_of::<wire::IrqInfo>()).into(),
            index: index.into(),
            ..Default::default()
        };
        let (reply, _) = self.request(cmd::DEVICE_GET_IRQ_INFO, req.as_bytes(), &[])?;
        let (info, _) = parse::<wire::IrqInfo>(&reply, "DEVICE_GET_IRQ_INFO")?;
        Ok(IrqInfo {
            count: info.count.get(),
            flags: info.flags.get(),
        })
    }

    /// DMA_MAP `[iova, iova + size)` at `file_offset` of `fd` (no fd: a
    /// range the server must not access directly).
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: Option<BorrowedFd<'_>>,
        file_offset: u64,
        read: bool,
        write: bool,
    ) -> Result<(), ClientError> {
        let mut flags = 0;
        if read {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if write {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        let req = wire::DmaMap {
            argsz: len_u32(size_of::<wire::DmaMap>()).into(),
            flags: flags.into(),
            offset: file_offset.into(),
            addr: iova.into(),
            size: size.into(),
        };
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        self.request(cmd::DMA_MAP, req.as_bytes(), &fds)?;
        Ok(())
    }

    /// DMA_UNMAP one mapping, or all of them (`all`, with iova = size = 0).
    pub fn dma_unmap(&mut self, iova: u64, size: u64, all: bool) -> Result<(), ClientError> {
        let req = wire::DmaUnmap {
            argsz: len_u32(size_of::<wire::DmaUnmap>()).into(),
            flags: if all { VFIO_DMA_UNMAP_FLAG_ALL } else { 0 }.into(),
            addr: iova.into(),
            size: size.into(),
        };
        self.request(cmd::DMA_UNMAP, req.as_bytes(), &[])?;
        Ok(())
    }

    /// SET_IRQS `EVENTFD | TRIGGER` for `start..start + fds.len()`, in
    /// chunks of the server's `max_msg_fds`.
    pub fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
        if fds.is_empty() {
            return self.set_irqs_raw(index, flags, start, 0, &[]);
        }
        let mut sub = start;
        for chunk in fds.chunks(self.server_max_msg_fds.max(1)) {
            let n = len_u32(chunk.len());
            self.set_irqs_raw(index, flags, sub, n, chunk)?;
            sub = sub.saturating_add(n);
        }
        Ok(())
    }

    /// SET_IRQS exactly as given: argsz 20, no data bytes, `fds` as
    /// `SCM_RIGHTS`. (For `DATA_BOOL` use [`Client::set_irqs_bool`].)
    pub fn set_irqs_raw(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let req = wire::IrqSet {
            argsz: len_u32(size_of::<wire::IrqSet>()).into(),
            flags: flags.into(),
            index: index.into(),
            start: start.into(),
            count: count.into(),
        };
        self.request(cmd::DEVICE_SET_IRQS, req.as_bytes(), fds)?;
        Ok(())
    }

    /// SET_IRQS `DATA_BOOL | action` (`action` is one `VFIO_IRQ_SET_ACTION_*`)
    /// for `start..start + which.len()`.
    pub fn set_irqs_bool(
        &mut self,
        index: u32,
        action: u32,
        start: u32,
        which: &[bool],
    ) -> Result<(), ClientError> {
        let req = wire::IrqSet {
            argsz: len_u32(size_of::<wire::IrqSet>() + which.len()).into(),
            flags: (VFIO_IRQ_SET_DATA_BOOL | action).into(),
            index: index.into(),
            start: start.into(),
            count: len_u32(which.len()).into(),
        };
        let mut payload = req.as_bytes().to_vec();
        payload.extend(which.iter().map(|&b| u8::from(b)));
        self.request(cmd::DEVICE_SET_IRQS, &payload, &[])?;
        Ok(())
    }

    /// REGION_READ `buf.len()` bytes at `offset`, split into transfers the
    /// server accepts.
    pub fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ClientError> {
        let step = self.server_max_xfer.max(1) as usize;
        let mut done = 0usize;
        for chunk in buf.chunks_mut(step) {
            let count = len_u32(chunk.len());
            let at = offset
                .checked_add(done as u64)
                .ok_or(ClientError::Invalid("offset + length overflows"))?;
            let req = wire::RegionAccess {
                offset: at.into(),
                region: index.into(),
                count: count.into(),
            };
            let (reply, _) = self.request(cmd::REGION_READ, req.as_bytes(), &[])?;
            let (got, data) = parse::<wire::RegionAccess>(&reply, "REGION_READ")?;
            if got.count.get() != count || data.len() != chunk.len() {
                return Err(protocol(format!(
                    "REGION_READ of {count} bytes answered with count {} and {} data bytes",
                    got.count.get(),
                    data.len()
                )));
            }
            chunk.copy_from_slice(data);
            done += chunk.len();
        }
        Ok(())
    }

    /// REGION_WRITE `data` at `offset`, split into transfers the server accepts.
    pub fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let step = self.server_max_xfer.max(1) as usize;
        let mut done = 0usize;
        for chunk in data.chunks(step) {
            let at = offset
                .checked_add(done as u64)
                .ok_or(ClientError::Invalid("offset + length overflows"))?;
            let req = wire::RegionAccess {
                offset: at.into(),
                region: index.into(),
                count: len_u32(chunk.len()).into(),
            };
            let mut payload = req.as_bytes().to_vec();
            payload.extend_from_slice(chunk);
            self.request(cmd::REGION_WRITE, &payload, &[])?;
            done += chunk.len();
        }
        Ok(())
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<(), ClientError> {
        self.request(cmd::DEVICE_RESET, &[], &[])?;
        Ok(())
    }

    /// Send arbitrary bytes (+fds) as one message and return the raw reply
    /// (header + payload), for malformed-input tests. Returns `Err` on EOF.
    /// Blocks if the server sends no reply (e.g. a NO_REPLY command):
    /// use [`Client::set_timeout`].
    pub fn send_raw(
        &mut self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, ClientError> {
        self.send_raw_with_fds(bytes, fds).map(|(reply, _)| reply)
    }

    /// [`Client::send_raw`], also returning the descriptors of the reply.
    pub fn send_raw_with_fds(
        &mut self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), ClientError> {
        self.send_bytes(bytes, fds)?;
        let (hdr, payload, fds) = self.recv()?;
        let mut out = hdr.as_bytes().to_vec();
        out.extend_from_slice(&payload);
        Ok((out, fds))
    }

    /// Send one command and wait for its reply; returns the reply payload
    /// and descriptors, or [`ClientError::Remote`] for an error reply.
    fn request(
        &mut self,
        command: u16,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let msg = wire::message(id, command, wire::FLAG_TYPE_COMMAND, 0, &[payload]);
        self.send_bytes(&msg, fds)?;
        let (hdr, payload, fds) = self.recv()?;
        let flags = hdr.flags.get();
        if flags & wire::FLAG_TYPE_MASK != wire::FLAG_TYPE_REPLY {
            return Err(protocol(format!(
                "message type {} where a reply was due",
                flags & wire::FLAG_TYPE_MASK
            )));
        }
        if hdr.msg_id.get() != id || hdr.command.get() != command {
            return Err(protocol(format!(
                "reply to id {} command {} where id {id} command {command} was due",
                hdr.msg_id.get(),
                hdr.command.get()
            )));
        }
        if flags & wire::FLAG_ERROR != 0 {
            let errno = i32::try_from(hdr.error_no.get()).unwrap_or(libc::EINVAL);
            return Err(ClientError::Remote { errno });
        }
        Ok((payload, fds))
    }

    fn send_bytes(&mut self, mut bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ClientError> {
        let mut fds = fds;
        while !bytes.is_empty() {
            match send_with_fds(&self.stream, bytes, fds) {
                Ok(n) => {
                    bytes = &bytes[n..];
                    fds = &[];
                }
                Err(e)
                    if e.kind() == io::ErrorKind::BrokenPipe
                        || e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    return Err(ClientError::Closed)
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(())
    }

    /// Receive one message: header (with its fds), then the payload.
    fn recv(&mut self) -> Result<(Header, Vec<u8>, Vec<OwnedFd>), ClientError> {
        let mut hdr_buf = [0u8; HEADER_SIZE];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < HEADER_SIZE {
            let r = self.recv_some(&mut hdr_buf[got..])?;
            fds.extend(r.fds);
            got += r.len;
        }
        let hdr = Header::read_from_bytes(&hdr_buf[..]).map_err(|_| protocol("short header"))?;
        let size = hdr.msg_size.get() as usize;
        if !(HEADER_SIZE..=MAX_MSG_SIZE).contains(&size) {
            return Err(protocol(format!("reply size {size} out of bounds")));
        }
        let mut payload = vec![0u8; size - HEADER_SIZE];
        let mut got = 0;
        while got < payload.len() {
            // Descriptors must come with the header; drop (close) others.
            let r = self.recv_some(&mut payload[got..])?;
            got += r.len;
        }
        Ok((hdr, payload, fds))
    }

    fn recv_some(
        &mut self,
        buf: &mut [u8],
    ) -> Result<leapio_vmm_shim::vfio_user::socket::Received, ClientError> {
        match recv_with_fds(&self.stream, buf) {
            Ok(r) if r.len == 0 => Err(ClientError::Closed),
            Ok(r) => Ok(r),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(ClientError::Closed),
            Err(e) => Err(io_err(e)),
        }
    }
}

/// Find the sparse-mmap capability in a region info reply.
fn sparse_areas(reply: &[u8], cap_offset: u32) -> Result<Option<Vec<(u64, u64)>>, ClientError> {
    let mut off = cap_offset as usize;
    let mut hops = 0;
    while off != 0 {
        hops += 1;
        if hops > 16 || off < size_of::<wire::RegionInfo>() {
            return Err(protocol("bad region info capability chain"));
        }
        let cap_bytes = reply
            .get(off..)
            .ok_or_else(|| protocol("capability offset past the reply"))?;
        let (cap, rest) = parse::<wire::CapHeader>(cap_bytes, "capability")?;
        if u32::from(cap.id.get()) == VFIO_REGION_INFO_CAP_SPARSE_MMAP {
            let (sparse, mut rest) = parse::<wire::SparseMmap>(rest, "sparse mmap capability")?;
            let n = sparse.nr_areas.get() as usize;
            if n > rest.len() / size_of::<wire::SparseArea>() {
                return Err(protocol("sparse mmap areas past the reply"));
            }
            let mut areas = Vec::with_capacity(n);
            for _ in 0..n {
                let (area, tail) = parse::<wire::SparseArea>(rest, "sparse mmap area")?;
                areas.push((area.offset.get(), area.size.get()));
                rest = tail;
            }
            return Ok(Some(areas));
        }
        let next = cap.next.get() as usize;
        if next != 0 && next <= off {
            return Err(protocol("region info capability chain loops"));
        }
        off = next;
    }
    Ok(None)
}
