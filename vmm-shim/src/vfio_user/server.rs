//! The server side: [`Listener`] and [`serve`].

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use leapio_service::socket::SocketAccess;
use leapio_service::socket::{BindError, OwnedSocket};
use libc::{E2BIG, EINVAL, ENOSYS, ENOTSUP, ENOTTY, EPERM};
use vfio_bindings::bindings::vfio::{
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use zerocopy::{FromBytes, IntoBytes};

use super::socket::{dup_cloexec, poll_fd, recv_with_fds, require_eventfd, send_with_fds};
use super::wire::{self, cmd, len_u32, Header, HEADER_SIZE};
use super::{
    Device, DmaMap, DmaUnmap, Errno, IrqAction, IrqData, ServerError, SetIrqs, MAX_DATA_XFER_SIZE,
    MAX_MSG_FDS, MAX_MSG_SIZE, STOP_POLL_INTERVAL, VERSION_MAJOR, VERSION_MINOR,
};

/// Messages handled between two looks at the device's ticks in [`serve`].
const SERVE_BATCH: usize = 16;

/// How long a stopped server waits for the rest of a message.
const PARTIAL_MESSAGE_WAIT: Duration = Duration::from_secs(1);

/// Most sparse-mmap areas we describe in one region info reply.
const MAX_SPARSE_AREAS: usize = 64;

/// A listening vfio-user socket. The socket file is removed on drop (if it is
/// still ours).
#[derive(Debug)]
pub struct Listener {
    sock: OwnedSocket,
}

impl Listener {
    /// Listen on `path`. A stale socket file (nobody accepts on it any more:
    /// connect() is refused) is removed first; a live one is left alone
    /// ([`ServerError::InUse`]), and so is anything that is not a socket.
    pub fn bind(path: &Path) -> Result<Listener, ServerError> {
        Listener::bind_with(path, &SocketAccess::default())
    }

    /// [`Listener::bind`], with the socket's mode and owner set before it
    /// appears at `path` ([`OwnedSocket`]), so no client ever sees it with
    /// the permissions of the process's umask.
    pub fn bind_with(path: &Path, access: &SocketAccess) -> Result<Listener, ServerError> {
        let sock = OwnedSocket::bind(path, access).map_err(|e| match e {
            BindError::InUse(path) => ServerError::InUse { path },
            BindError::NotASocket(path) => ServerError::NotASocket { path },
            BindError::Io(path, source) => ServerError::Bind { path, source },
        })?;
        Listener::serving(sock)
    }

    /// Accept on `sock` without blocking (accepts wait in poll).
    fn serving(sock: OwnedSocket) -> Result<Listener, ServerError> {
        sock.listener()
            .set_nonblocking(true)
            .map_err(|source| ServerError::Bind {
                path: sock.path().to_owned(),
                source,
            })?;
        Ok(Listener { sock })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.sock.path()
    }

    /// A listener that was bound at `path` by another process (a host-driver
    /// taking over from the one before it): it is served as one of ours.
    pub fn adopt(fd: OwnedFd, path: &Path) -> Result<Listener, ServerError> {
        Listener::serving(OwnedSocket::adopt(
            std::os::unix::net::UnixListener::from(fd),
            path,
        ))
    }

    /// The listening socket (to keep it alive outside this process).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.listener().as_fd()
    }

    /// Wait for a client. Returns `None` once `stop` is set (checked every
    /// [`STOP_POLL_INTERVAL`]). The returned stream is blocking.
    pub fn accept(&self, stop: &AtomicBool) -> Result<Option<UnixStream>, ServerError> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some(s) = self.accept_timeout(STOP_POLL_INTERVAL)? {
                return Ok(Some(s));
            }
        }
    }

    /// Wait up to `timeout` for a client (`None` if none came). The
    /// returned stream is blocking.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<UnixStream>, ServerError> {
        let mut waited = false;
        loop {
            match self.sock.listener().accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(ServerError::Accept)?;
                    return Ok(Some(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if waited {
                        return Ok(None);
                    }
                    waited = true;
                    poll_fd(self.sock.listener().as_fd(), false, timeout)
                        .map_err(ServerError::Accept)?;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(ServerError::Accept(e)),
            }
        }
    }
}

/// Serve one client until it disconnects, `stop` is set, or it breaks
/// framing. Calls `dev.disconnected()` on every exit path (panics included).
///
/// Returns `Ok(())` on a clean end of stream or when stopped; an error when
/// the connection failed or the client broke framing (the connection is
/// closed either way when `stream` is dropped).
pub fn serve(
    stream: UnixStream,
    dev: &mut dyn Device,
    stop: &AtomicBool,
) -> Result<(), ServerError> {
    serve_from(stream, dev, stop, false)
}

/// [`serve`] a connection that may have been served before, by a process
/// that handed it over: `negotiated` says whether the client already
/// negotiated the version (a connection is handed over between messages).
pub fn serve_from(
    stream: UnixStream,
    dev: &mut dyn Device,
    stop: &AtomicBool,
    negotiated: bool,
) -> Result<(), ServerError> {
    let guard = Disconnect(dev);
    let dev = &mut *guard.0;
    let mut conn = Connection::new(stream, negotiated).map_err(ServerError::Io)?;
    let mut next_tick: Option<Instant> = None;
    // Stopped with a message partly read (or a reply partly sent): the rest
    // is waited for a moment, so that the connection is left between two
    // messages (another server may go on with it).
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if conn.between_messages() || since.elapsed() > PARTIAL_MESSAGE_WAIT {
                return Ok(());
            }
        }
        maybe_tick(dev, &mut next_tick);
        let timeout = match next_tick {
            Some(t) => t
                .saturating_duration_since(Instant::now())
                .min(STOP_POLL_INTERVAL),
            None => STOP_POLL_INTERVAL,
        };
        if !poll_fd(conn.fd(), conn.wants_write(), timeout).map_err(ServerError::Io)? {
            continue;
        }
        // In batches, so that a client sending without pause does not hold
        // off the device's ticks.
        if !conn.service(dev, SERVE_BATCH)? {
            return Ok(());
        }
    }
}

/// Tells the device its client is gone, however serving ends.
struct Disconnect<'a>(&'a mut dyn Device);

impl Drop for Disconnect<'_> {
    fn drop(&mut self) {
        self.0.disconnected();
    }
}

/// Tick the device if due (see [`Device::tick`]).
fn maybe_tick(dev: &mut dyn Device, next_tick: &mut Option<Instant>) {
    let Some(interval) = dev.tick_interval() else {
        *next_tick = None;
        return;
    };
    let now = Instant::now();
    match *next_tick {
        Some(t) if now < t => {
            // The interval may have shrunk since the deadline was set.
            if t > now + interval {
                *next_tick = Some(now + interval);
            }
        }
        _ => {
            dev.tick();
            *next_tick = Some(Instant::now() + interval);
        }
    }
}

/// One client's connection, served without blocking: an event loop calls
/// [`Connection::service`] when its socket is readable (or writable, while
/// [`Connection::wants_write`]). It never waits for a client: a message is
/// reassembled as it arrives, and a reply the client does not take is kept
/// and sent when it can be (no further message is read meanwhile). The
/// owner calls `Device::disconnected` when it ends.
pub struct Connection {
    stream: UnixStream,
    reader: Reader,
    negotiated: bool,
    limiter: LogLimiter,
    /// A reply not sent in full: bytes, how many went, its descriptors
    /// (they go with the first byte).
    out: Option<(Vec<u8>, usize, Vec<OwnedFd>)>,
}

impl Connection {
    /// Serve `stream`; `negotiated` as in [`serve_from`]. The stream is
    /// made non-blocking.
    pub fn new(stream: UnixStream, negotiated: bool) -> io::Result<Connection> {
        stream.set_nonblocking(true)?;
        Ok(Connection {
            stream,
            reader: Reader::new(),
            negotiated,
            limiter: LogLimiter::default(),
            out: None,
        })
    }

    /// The socket, to wait on.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// A reply waits for the socket to be writable.
    pub fn wants_write(&self) -> bool {
        self.out.is_some()
    }

    /// No message is partly read and no reply partly sent: the connection
    /// can be handed to another server.
    pub fn between_messages(&self) -> bool {
        self.reader.is_idle() && self.out.is_none()
    }

    /// Send what is pending, then read and handle the messages that are
    /// there, at most `budget` of them. Ok(false) at the client's end of
    /// stream; an error when the connection failed or the client broke
    /// framing.
    pub fn service(&mut self, dev: &mut dyn Device, budget: usize) -> Result<bool, ServerError> {
        let mut conn = Conn { dev, c: self };
        if !conn.flush()? {
            return Ok(true);
        }
        for _ in 0..budget {
            match conn.c.reader.next(&conn.c.stream)? {
                ReadEvent::Message(msg) => conn.handle(msg)?,
                ReadEvent::WouldBlock => break,
                ReadEvent::Eof => return Ok(false),
            }
            if conn.c.out.is_some() {
                break;
            }
        }
        Ok(true)
    }
}

/// A connection and its device, while a message is handled.
struct Conn<'a> {
    dev: &'a mut dyn Device,
    c: &'a mut Connection,
}

/// A complete message as received.
struct Msg {
    hdr: Header,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// More than [`MAX_MSG_FDS`] descriptors came (all were closed), or some
    /// came after the header.
    bad_fds: bool,
}

impl Msg {
    fn command(&self) -> u16 {
        self.hdr.command.get()
    }
}

enum ReadEvent {
    Message(Msg),
    WouldBlock,
    Eof,
}

/// Incremental, non-blocking message reassembly.
struct Reader {
    hdr: [u8; HEADER_SIZE],
    hdr_got: usize,
    body: Option<(Header, Vec<u8>, usize)>,
    fds: Vec<OwnedFd>,
    bad_fds: bool,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            hdr: [0; HEADER_SIZE],
            hdr_got: 0,
            body: None,
            fds: Vec::new(),
            bad_fds: false,
        }
    }

    /// No message is partly read.
    fn is_idle(&self) -> bool {
        self.hdr_got == 0 && self.body.is_none()
    }

    fn take_fds(&mut self, fds: Vec<OwnedFd>, in_header: bool) {
        if !in_header {
            self.bad_fds = true;
        }
        if self.bad_fds || self.fds.len() + fds.len() > MAX_MSG_FDS {
            // Close everything: the message will fail.
            self.bad_fds = true;
            self.fds.clear();
            drop(fds);
        } else {
            self.fds.extend(fds);
        }
    }

    fn finish(&mut self, hdr: Header, body: Vec<u8>) -> Msg {
        self.hdr_got = 0;
        self.body = None;
        Msg {
            hdr,
            body,
            fds: std::mem::take(&mut self.fds),
            bad_fds: std::mem::replace(&mut self.bad_fds, false),
        }
    }

    fn next(&mut self, sock: &UnixStream) -> Result<ReadEvent, ServerError> {
        loop {
            if let Some((hdr, mut body, got)) = self.body.take() {
                let r = match recv_with_fds(sock, &mut body[got..]) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.body = Some((hdr, body, got));
                        return Ok(ReadEvent::WouldBlock);
                    }
                    Err(e) => return Err(ServerError::Io(e)),
                };
                if r.len == 0 {
                    return Err(ServerError::Truncated {
                        got: HEADER_SIZE + got,
                        expected: HEADER_SIZE + body.len(),
                    });
                }
                if !r.fds.is_empty() {
                    self.take_fds(r.fds, false);
                }
                let got = got + r.len;
                if got == body.len() {
                    return Ok(ReadEvent::Message(self.finish(hdr, body)));
                }
                self.body = Some((hdr, body, got));
                continue;
            }

            let got = self.hdr_got;
            let r = match recv_with_fds(sock, &mut self.hdr[got..]) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadEvent::WouldBlock)
                }
                Err(e) => return Err(ServerError::Io(e)),
            };
            if !r.fds.is_empty() {
                self.take_fds(r.fds, true);
            }
            if r.len == 0 {
                if got == 0 {
                    return Ok(ReadEvent::Eof);
                }
                return Err(ServerError::Truncated {
                    got,
                    expected: HEADER_SIZE,
                });
            }
            self.hdr_got += r.len;
            if self.hdr_got < HEADER_SIZE {
                continue;
            }
            let hdr = Header::read_from_bytes(&self.hdr[..]).unwrap_or_default();
            let msg_size = hdr.msg_size.get();
            let size = usize::try_from(msg_size).unwrap_or(usize::MAX);
            if !(HEADER_SIZE..=MAX_MSG_SIZE).contains(&size) {
                return Err(ServerError::BadMessageSize { msg_size });
            }
            let body_len = size - HEADER_SIZE;
            if body_len == 0 {
                return Ok(ReadEvent::Message(self.finish(hdr, Vec::new())));
            }
            self.body = Some((hdr, vec![0; body_len], 0));
        }
    }
}

/// At most [`LogLimiter::BURST`] warnings a second per connection: a peer
/// must not be able to flood the log.
#[derive(Default)]
struct LogLimiter {
    window: Option<Instant>,
    count: u32,
    suppressed: u32,
}

impl LogLimiter {
    const BURST: u32 = 10;

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        match self.window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                if self.suppressed > 0 {
                    tracing::warn!(
                        suppressed = self.suppressed,
                        "vfio-user: warnings suppressed"
                    );
                }
                self.window = Some(now);
                self.count = 0;
                self.suppressed = 0;
            }
        }
        if self.count < Self::BURST {
            self.count += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// A successful reply: payload and fds.
type ReplyOk = (Vec<u8>, Vec<OwnedFd>);

fn reply(payload: Vec<u8>) -> Result<ReplyOk, Errno> {
    Ok((payload, Vec::new()))
}

/// Read a fixed structure from the front of a body; `EINVAL` if too short.
fn parse<T: FromBytes>(body: &[u8]) -> Result<(T, &[u8]), Errno> {
    T::read_from_prefix(body).map_err(|_| EINVAL)
}

impl Conn<'_> {
    /// Log a peer-triggered event, rate-limited. Failed commands are normal
    /// (QEMU probes the ERR irq index, for one) and go to debug; protocol
    /// oddities to warn.
    fn log(&mut self, msg: &Msg, what: &str, errno: Errno, warn: bool) {
        if !self.c.limiter.allow() {
            return;
        }
        let (command, msg_id) = (msg.command(), msg.hdr.msg_id.get());
        if warn {
            tracing::warn!(command, msg_id, errno, "vfio-user: {what}");
        } else {
            tracing::debug!(command, msg_id, errno, "vfio-user: {what}");
        }
    }

    /// Handle one message and send its reply (unless NO_REPLY).
    fn handle(&mut self, mut msg: Msg) -> Result<(), ServerError> {
        let flags = msg.hdr.flags.get();
        let no_reply = flags & wire::FLAG_NO_REPLY != 0;
        let result = match flags & wire::FLAG_TYPE_MASK {
            wire::FLAG_TYPE_COMMAND => self.dispatch(&mut msg),
            wire::FLAG_TYPE_REPLY => {
                // We never send commands, so nothing waits for this.
                self.log(&msg, "unsolicited reply ignored", 0, true);
                return Ok(());
            }
            _ => Err(EINVAL),
        };
        // Descriptors nobody took are closed here.
        msg.fds.clear();
        let (msg_flags, errno, payload, fds) = match result {
            Ok((payload, fds)) => (wire::FLAG_TYPE_REPLY, 0, payload, fds),
            Err(errno) => {
                let errno = if errno > 0 { errno } else { EINVAL };
                self.log(&msg, "command failed", errno, no_reply);
                (
                    wire::FLAG_TYPE_REPLY | wire::FLAG_ERROR,
                    errno,
                    Vec::new(),
                    Vec::new(),
                )
            }
        };
        if no_reply {
            return Ok(());
        }
        let out = wire::message(
            msg.hdr.msg_id.get(),
            msg.command(),
            msg_flags,
            u32::try_from(errno).unwrap_or(libc::EINVAL.unsigned_abs()),
            &[&payload],
        );
        self.c.out = Some((out, 0, fds));
        self.flush().map(|_| ())
    }

    /// Send what is left of the pending reply; Ok(true) once all went.
    fn flush(&mut self) -> Result<bool, ServerError> {
        let Some((buf, mut sent, fds)) = self.c.out.take() else {
            return Ok(true);
        };
        while sent < buf.len() {
            let borrowed: Vec<_> = if sent == 0 {
                fds.iter().map(|f| f.as_fd()).collect()
            } else {
                Vec::new()
            };
            match send_with_fds(&self.c.stream, &buf[sent..], &borrowed) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The client is not reading: sent when it is.
                    self.c.out = Some((buf, sent, fds));
                    return Ok(false);
                }
                Err(e) => return Err(ServerError::Io(e)),
            }
        }
        Ok(true)
    }

    fn dispatch(&mut self, msg: &mut Msg) -> Result<ReplyOk, Errno> {
        if msg.bad_fds {
            return Err(E2BIG);
        }
        let command = msg.command();
        if command == cmd::VERSION {
            return self.version(msg);
        }
        if !self.c.negotiated {
            return Err(EINVAL);
        }
        // Only these commands carry descriptors.
        if !msg.fds.is_empty() && !matches!(command, cmd::DMA_MAP | cmd::DEVICE_SET_IRQS) {
            return Err(EINVAL);
        }
        match command {
            cmd::DMA_MAP => self.dma_map(msg),
            cmd::DMA_UNMAP => self.dma_unmap(&msg.body),
            cmd::DEVICE_GET_INFO => self.device_info(&msg.body),
            cmd::DEVICE_GET_REGION_INFO => self.region_info(&msg.body),
            cmd::DEVICE_GET_IRQ_INFO => self.irq_info(&msg.body),
            cmd::DEVICE_SET_IRQS => self.set_irqs(msg),
            cmd::REGION_READ => self.region_read(&msg.body),
            cmd::REGION_WRITE => self.region_write(&msg.body),
            cmd::DEVICE_RESET => self.dev.reset().and_then(|()| reply(Vec::new())),
            // Server-to-client commands have no business arriving here.
            cmd::DMA_READ | cmd::DMA_WRITE => Err(EINVAL),
            // Like the kernel's VFIO_DEVICE_FEATURE on a device without features.
            cmd::DEVICE_FEATURE => Err(ENOTTY),
            cmd::DEVICE_GET_REGION_IO_FDS
            | cmd::DIRTY_PAGES
            | cmd::REGION_WRITE_MULTI
            | cmd::MIG_DATA_READ
            | cmd::MIG_DATA_WRITE => Err(ENOTSUP),
            _ => Err(ENOSYS),
        }
    }

    fn version(&mut self, msg: &Msg) -> Result<ReplyOk, Errno> {
        let (ver, rest) = parse::<wire::Version>(&msg.body)?;
        if !msg.fds.is_empty() {
            return Err(EINVAL);
        }
        // The JSON is NUL-terminated; tolerate a missing NUL, ignore what
        // follows it.
        let json = match rest.iter().position(|&b| b == 0) {
            Some(nul) => &rest[..nul],
            None => rest,
        };
        let caps = if json.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(client_capabilities(json)?)
        };
        if ver.major.get() != VERSION_MAJOR {
            return Err(ENOTSUP);
        }
        let minor = ver.minor.get().min(VERSION_MINOR);
        let reply_ver = wire::Version {
            major: VERSION_MAJOR.into(),
            minor: minor.into(),
        };
        let mut payload = reply_ver.as_bytes().to_vec();
        if let Some(proposed) = caps {
            // The reply's capabilities must be a subset of those proposed,
            // and only ones we implement (never write_multiple, migration,
            // twin_socket).
            let mut ours = serde_json::Map::new();
            if proposed.max_msg_fds {
                ours.insert("max_msg_fds".into(), MAX_MSG_FDS.into());
            }
            if proposed.max_data_xfer_size {
                ours.insert("max_data_xfer_size".into(), MAX_DATA_XFER_SIZE.into());
            }
            let mut top = serde_json::Map::new();
            top.insert("capabilities".into(), serde_json::Value::Object(ours));
            payload.extend_from_slice(serde_json::Value::Object(top).to_string().as_bytes());
            payload.push(0);
        }
        self.c.negotiated = true;
        self.dev.negotiated();
        reply(payload)
    }

    fn dma_map(&mut self, msg: &mut Msg) -> Result<ReplyOk, Errno> {
        let (req, _) = parse::<wire::DmaMap>(&msg.body)?;
        if (req.argsz.get() as usize) < size_of::<wire::DmaMap>() {
            return Err(EINVAL);
        }
        let flags = req.flags.get();
        if flags & !(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE) != 0 {
            return Err(EINVAL);
        }
        let (iova, size, file_offset) = (req.addr.get(), req.size.get(), req.offset.get());
        if size == 0 || iova.checked_add(size).is_none() {
            return Err(EINVAL);
        }
        if msg.fds.len() > 1 {
            return Err(EINVAL);
        }
        let fd = msg.fds.pop();
        if fd.is_some() && file_offset.checked_add(size).is_none() {
            return Err(EINVAL);
        }
        self.dev.dma_map(DmaMap {
            iova,
            size,
            file_offset,
            read: flags & VFIO_DMA_MAP_FLAG_READ != 0,
            write: flags & VFIO_DMA_MAP_FLAG_WRITE != 0,
            fd,
        })?;
        reply(Vec::new())
    }

    fn dma_unmap(&mut self, body: &[u8]) -> Result<ReplyOk, Errno> {
        let (req, _) = parse::<wire::DmaUnmap>(body)?;
        if (req.argsz.get() as usize) < size_of::<wire::DmaUnmap>() {
            return Err(EINVAL);
        }
        let flags = req.flags.get();
        // No dirty-page tracking (bit 0), no unknown flags.
        if flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0
            || flags & !VFIO_DMA_UNMAP_FLAG_ALL != 0
        {
            return Err(EINVAL);
        }
        let all = flags & VFIO_DMA_UNMAP_FLAG_ALL != 0;
        let (iova, size) = (req.addr.get(), req.size.get());
        if all && (iova != 0 || size != 0) {
            return Err(EINVAL);
        }
        if !all && (size == 0 || iova.checked_add(size).is_none()) {
            return Err(EINVAL);
        }
        self.dev.dma_unmap(DmaUnmap { iova, size, all })?;
        // The specification: "responds with the original DMA entry".
        let out = wire::DmaUnmap {
            argsz: len_u32(size_of::<wire::DmaUnmap>()).into(),
            ..req
        };
        reply(out.as_bytes().to_vec())
    }

    fn device_info(&mut self, body: &[u8]) -> Result<ReplyOk, Errno> {
        let (req, _) = parse::<wire::DeviceInfo>(body)?;
        let need = size_of::<wire::DeviceInfo>();
        if (req.argsz.get() as usize) < need {
            return Err(EINVAL);
        }
        let info = self.dev.device_info();
        let out = wire::DeviceInfo {
            argsz: len_u32(need).into(),
            flags: info.flags.into(),
            num_regions: info.num_regions.into(),
            num_irqs: info.num_irqs.into(),
        };
        reply(out.as_bytes().to_vec())
    }

    fn region_info(&mut self, body: &[u8]) -> Result<ReplyOk, Errno> {
        let (req, _) = parse::<wire::RegionInfo>(body)?;
        let base = size_of::<wire::RegionInfo>();
        let argsz = req.argsz.get() as usize;
        if argsz < base {
            return Err(EINVAL);
        }
        let index = req.index.get();
        if index >= self.dev.device_info().num_regions {
            return Err(EINVAL);
        }
        let info = self.dev.region_info(index).ok_or(EINVAL)?;
        let mut flags = 0;
        if info.read {
            flags |= VFIO_REGION_INFO_FLAG_READ;
        }
        if info.write {
            flags |= VFIO_REGION_INFO_FLAG_WRITE;
        }
        let mut caps = Vec::new();
        let mut fds = Vec::new();
        let mut offset = 0;
        if let Some(mmap) = &info.mmap {
            if mmap.areas.len() > MAX_SPARSE_AREAS {
                tracing::error!(
                    index,
                    areas = mmap.areas.len(),
                    "device describes too many sparse mmap areas"
                );
                return Err(EINVAL);
            }
            flags |= VFIO_REGION_INFO_FLAG_MMAP;
            offset = mmap.file_offset;
            if !mmap.areas.is_empty() {
                flags |= VFIO_REGION_INFO_FLAG_CAPS;
                let cap = wire::CapHeader {
                    id: u16::try_from(VFIO_REGION_INFO_CAP_SPARSE_MMAP)
                        .unwrap_or(1)
                        .into(),
                    version: wire::SPARSE_MMAP_CAP_VERSION.into(),
                    next: 0.into(),
                };
                caps.extend_from_slice(cap.as_bytes());
                let sparse = wire::SparseMmap {
                    nr_areas: len_u32(mmap.areas.len()).into(),
                    reserved: 0.into(),
                };
                caps.extend_from_slice(sparse.as_bytes());
                for &(offset, size) in &mmap.areas {
                    caps.extend_from_slice(
                        wire::SparseArea {
                            offset: offset.into(),
                            size: size.into(),
                        }
                        .as_bytes(),
                    );
                }
            }
            // Sent on both passes of the two-pass query (QEMU closes the first).
            fds.push(dup_cloexec(mmap.fd).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?);
        }
        let full = base + caps.len();
        let out = wire::RegionInfo {
            argsz: len_u32(full).into(),
            flags: flags.into(),
            index: index.into(),
            // QEMU insists on a valid cap_offset even when the caps do not fit.
            cap_offset: if caps.is_empty() { 0 } else { len_u32(base) }.into(),
            size: info.size.into(),
            offset: offset.into(),
        };
        let mut payload = out.as_bytes().to_vec();
        // Never more than the client's buffer: it asks again with argsz = full.
        if argsz >= full {
            payload.extend_from_slice(&caps);
        }
        Ok((payload, fds))
    }

    fn irq_info(&mut self, body: &[u8]) -> Result<ReplyOk, Errno> {
        let (req, _) = parse::<wire::IrqInfo>(body)?;
        let need = size_of::<wire::IrqInfo>();
        if (req.argsz.get() as usize) < need {
            return Err(EINVAL);
        }
        let index = req.index.get();
        if index >= self.dev.device_info().num_irqs {
            return Err(EINVAL);
        }
        let info = self.dev.irq_info(index).ok_or(EINVAL)?;
        let out = wire::IrqInfo {
            argsz: len_u32(need).into(),
            flags: info.flags.into(),
            index: index.into(),
            count: info.count.into(),
        };
        reply(out.as_bytes().to_vec())
    }

    fn set_irqs(&mut self, msg: &mut Msg) -> Result<ReplyOk, Errno> {
        let (req, data) = parse::<wire::IrqSet>(&msg.body)?;
        if req.argsz.get() as usize != msg.body.len() {
            return Err(EINVAL);
        }
        let flags = req.flags.get();
        let data_type = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action_type = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
            || data_type.count_ones() != 1
            || action_type.count_ones() != 1
        {
            return Err(EINVAL);
        }
        let action = match action_type {
            VFIO_IRQ_SET_ACTION_MASK => IrqAction::Mask,
            VFIO_IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
            VFIO_IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
            _ => return Err(EINVAL),
        };
        let (index, start, count) = (req.index.get(), req.start.get(), req.count.get());
        if index >= self.dev.device_info().num_irqs {
            return Err(EINVAL);
        }
        let info = self.dev.irq_info(index).ok_or(EINVAL)?;
        match start.checked_add(count) {
            Some(end) if end <= info.count => {}
            _ => return Err(EINVAL),
        }
        if count == 0 && data_type != VFIO_IRQ_SET_DATA_NONE {
            return Err(EINVAL);
        }
        let data = match data_type {
            VFIO_IRQ_SET_DATA_NONE => {
                if !data.is_empty() || !msg.fds.is_empty() {
                    return Err(EINVAL);
                }
                IrqData::None
            }
            VFIO_IRQ_SET_DATA_BOOL => {
                if data.len() != count as usize || !msg.fds.is_empty() {
                    return Err(EINVAL);
                }
                IrqData::Bool(data.iter().map(|&b| b != 0).collect())
            }
            VFIO_IRQ_SET_DATA_EVENTFD => {
                if !data.is_empty() || info.flags & VFIO_IRQ_INFO_EVENTFD == 0 {
                    return Err(EINVAL);
                }
                if msg.fds.is_empty() {
                    // No fds at all: de-assign the range (QEMU's "enable" trick).
                    IrqData::Eventfd((0..count).map(|_| None).collect())
                } else if msg.fds.len() == count as usize {
                    for fd in &msg.fds {
                        if let Err(e) = require_eventfd(fd.as_fd()) {
                            if self.c.limiter.allow() {
                                tracing::warn!("vfio-user: SET_IRQS refused: {e}");
                            }
                            return Err(EINVAL);
                        }
                    }
                    IrqData::Eventfd(std::mem::take(&mut msg.fds).into_iter().map(Some).collect())
                } else {
                    return Err(EINVAL);
                }
            }
            _ => return Err(EINVAL),
        };
        self.dev.set_irqs(SetIrqs {
            index,
            start,
            count,
            action,
            data,
        })?;
        reply(Vec::new())
    }

    /// Validate a region access against the region's size and permissions.
    fn check_access(&self, req: &wire::RegionAccess, write: bool) -> Result<(), Errno> {
        let (index, offset, count) = (req.region.get(), req.offset.get(), req.count.get());
        if count > MAX_DATA_XFER_SIZE {
            return Err(E2BIG);
        }
        if index >= self.dev.device_info().num_regions {
            return Err(EINVAL);
        }
        let info = self.dev.region_info(index).ok_or(EINVAL)?;
        match offset.checked_add(u64::from(count)) {
            Some(end) if end <= info.size => {}
            _ => return Err(EINVAL),
        }
        if (write && !info.write) || (!write && !info.read) {
            return Err(EPERM);
        }
        Ok(())
    }

    fn region_read(&mut self, body: &[u8]) -> Result<ReplyOk, Errno> {
        let (req, _) = parse::<wire::RegionAccess>(body)?;
        self.check_access(&req, false)?;
        let prefix = size_of::<wire::RegionAccess>();
        let count = req.count.get() as usize;
        let mut payload = Vec::with_capacity(prefix + count);
        payload.extend_from_slice(req.as_bytes());
        payload.resize(prefix + count, 0);
        if count > 0 {
            self.dev
                .region_read(req.region.get(), req.offset.get(), &mut payload[prefix..])?;
        }
        reply(payload)
    }

    fn region_write(&mut self, body: &[u8]) -> Result<ReplyOk, Errno> {
        let (req, data) = parse::<wire::RegionAccess>(body)?;
        if req.count.get() > MAX_DATA_XFER_SIZE {
            return Err(E2BIG);
        }
        if data.len() != req.count.get() as usize {
            return Err(EINVAL);
        }
        self.check_access(&req, true)?;
        if !data.is_empty() {
            self.dev
                .region_write(req.region.get(), req.offset.get(), data)?;
        }
        reply(req.as_bytes().to_vec())
    }
}

/// Which capabilities the client proposed (that we care about).
struct Proposed {
    max_msg_fds: bool,
    max_data_xfer_size: bool,
}

/// Parse the client's VERSION JSON; `EINVAL` for anything malformed.
fn client_capabilities(json: &[u8]) -> Result<Proposed, Errno> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|_| EINVAL)?;
    let top = value.as_object().ok_or(EINVAL)?;
    let mut proposed = Proposed {
        max_msg_fds: false,
        max_data_xfer_size: false,
    };
    let Some(caps) = top.get("capabilities") else {
        return Ok(proposed);
    };
    let caps = caps.as_object().ok_or(EINVAL)?;
    for (key, slot) in [
        ("max_msg_fds", &mut proposed.max_msg_fds),
        ("max_data_xfer_size", &mut proposed.max_data_xfer_size),
    ] {
        if let Some(v) = caps.get(key) {
            v.as_u64().ok_or(EINVAL)?;
            *slot = true;
        }
    }
    Ok(proposed)
}
