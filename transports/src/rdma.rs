//! RDMA verbs and the RDMA connection manager, on `rdma-sys`, in the few
//! shapes LeapIO needs: an event channel read with a timeout, connection
//! identifiers with their queue pair, completion queues polled, memory
//! registrations (one table per protection domain, fed by the process's
//! DMA registry so every guest region the runtime maps is registered), and
//! posting sends, receives, RDMA reads and writes. The NVMe/RDMA host
//! backend and the runtime's NVMe/RDMA target both build on it.
//!
//! Every raw pointer here is owned by exactly one wrapper and released in
//! its `Drop`; wrappers are `Send` (moved between threads, used by one at a
//! time) and the protection domain and registration table are `Sync`
//! (verbs allow registrations from any thread).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use leapio_backend::dma::{DmaRegistry, Iommu};
use rdma_sys as sys;

/// An RDMA CM event, copied out of the channel (and acknowledged).
#[derive(Debug)]
pub struct CmEvent {
    /// `rdma_cm_event_type`.
    pub kind: u32,
    /// The event's status (negative errno, or the peer's reject reason).
    pub status: i32,
    /// The identifier the event is for (a new one for a connect request).
    pub id: *mut sys::rdma_cm_id,
    /// The listening identifier of a connect request.
    pub listen_id: *mut sys::rdma_cm_id,
    /// The peer's private data (a connect request's, reply's or reject's).
    pub private: Vec<u8>,
    /// A connect request's initiator depth and responder resources.
    pub depth: (u8, u8),
}

/// Event kinds (`rdma_cm_event_type`).
pub mod event {
    use rdma_sys::rdma_cm_event_type as t;
    pub const ADDR_RESOLVED: u32 = t::RDMA_CM_EVENT_ADDR_RESOLVED;
    pub const ROUTE_RESOLVED: u32 = t::RDMA_CM_EVENT_ROUTE_RESOLVED;
    pub const CONNECT_REQUEST: u32 = t::RDMA_CM_EVENT_CONNECT_REQUEST;
    pub const ESTABLISHED: u32 = t::RDMA_CM_EVENT_ESTABLISHED;
    pub const REJECTED: u32 = t::RDMA_CM_EVENT_REJECTED;
    pub const DISCONNECTED: u32 = t::RDMA_CM_EVENT_DISCONNECTED;
    pub const TIMEWAIT_EXIT: u32 = t::RDMA_CM_EVENT_TIMEWAIT_EXIT;
    pub const DEVICE_REMOVAL: u32 = t::RDMA_CM_EVENT_DEVICE_REMOVAL;
}

/// An RDMA CM event channel.
pub struct EventChannel(*mut sys::rdma_event_channel);

// SAFETY: the channel is a file descriptor and a few words; librdmacm lets
// any thread use it, and we use it from one thread at a time.
unsafe impl Send for EventChannel {}
// SAFETY: as above; reads of its fd from two threads would only race for
// events, which the callers avoid.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    /// A new channel, its descriptor non-blocking.
    pub fn new() -> io::Result<EventChannel> {
        // SAFETY: no arguments; null on failure.
        let ch = unsafe { sys::rdma_create_event_channel() };
        if ch.is_null() {
            return Err(io::Error::other(
                "cannot open the RDMA CM (no RDMA device or rdma_ucm not loaded)",
            ));
        }
        let c = EventChannel(ch);
        let fd = c.fd();
        // SAFETY: fcntl on a descriptor the channel owns.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(c)
    }

    /// Its descriptor (readable when an event waits).
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel lives as long as `self`.
        unsafe { (*self.0).fd }
    }

    pub(crate) fn raw(&self) -> *mut sys::rdma_event_channel {
        self.0
    }

    /// The next event, waiting up to `timeout`; `None` when none came.
    pub fn get(&self, timeout: Duration) -> io::Result<Option<CmEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ev: *mut sys::rdma_cm_event = std::ptr::null_mut();
            // SAFETY: the channel is valid; the library fills `ev`.
            let r = unsafe { sys::rdma_get_cm_event(self.0, &mut ev) };
            if r == 0 && !ev.is_null() {
                // SAFETY: the event is valid until acknowledged below; the
                // private data pointer covers private_data_len bytes.
                let out = unsafe {
                    let e = &*ev;
                    let conn = e.param.conn;
                    let private = if conn.private_data.is_null() {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts(
                            conn.private_data.cast::<u8>(),
                            usize::from(conn.private_data_len),
                        )
                        .to_vec()
                    };
                    CmEvent {
                        kind: e.event,
                        status: e.status,
                        id: e.id,
                        listen_id: e.listen_id,
                        private,
                        depth: (conn.initiator_depth, conn.responder_resources),
                    }
                };
                // SAFETY: the event came from this channel, acknowledged once.
                unsafe { sys::rdma_ack_cm_event(ev) };
                return Ok(Some(out));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut p = libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one pollfd we own.
            unsafe { libc::poll(&mut p, 1, ms) };
        }
    }

    /// Wait for an event of `kind` on `id` within `timeout`; any other
    /// event on `id` is an error that names it.
    pub fn expect(
        &self,
        id: *mut sys::rdma_cm_id,
        kind: u32,
        timeout: Duration,
        what: &str,
    ) -> io::Result<CmEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(ev) = self.get(left)? else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to {what} in {timeout:?}"),
                ));
            };
            if ev.id != id {
                continue;
            }
            if ev.kind == kind {
                return Ok(ev);
            }
            return Err(io::Error::other(format!(
                "{what}: {} (status {})",
                event_name(ev.kind),
                ev.status
            )));
        }
    }
}

impl EventChannel {
    /// For the channel of one connected identifier: read its pending
    /// events (without waiting) and say whether one means the connection is
    /// gone (a disconnect, the device removed), and which.
    pub fn connection_gone(&self) -> Option<String> {
        loop {
            match self.get(Duration::ZERO) {
                Ok(None) => return None,
                Ok(Some(ev)) => {
                    if matches!(
                        ev.kind,
                        event::DISCONNECTED | event::DEVICE_REMOVAL | event::TIMEWAIT_EXIT
                    ) {
                        return Some(format!("RDMA CM: {}", event_name(ev.kind)));
                    }
                }
                Err(e) => return Some(format!("RDMA CM event channel: {e}")),
            }
        }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: ours; every identifier on it is destroyed first (they
        // hold an `Arc` of the channel).
        unsafe { sys::rdma_destroy_event_channel(self.0) };
    }
}

/// The name of an event kind.
pub fn event_name(kind: u32) -> &'static str {
    // SAFETY: returns a static string for any value.
    let p = unsafe { sys::rdma_event_str(kind) };
    if p.is_null() {
        return "unknown event";
    }
    // SAFETY: a NUL-terminated static string.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_str()
        .unwrap_or("unknown event")
}

fn sockaddr(a: &SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
                sin_port: v.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough for any sockaddr.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(v) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(10),
                sin6_port: v.port().to_be(),
                sin6_flowinfo: v.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v.ip().octets(),
                },
                sin6_scope_id: v.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

/// An RDMA CM identifier and, once created, its queue pair.
pub struct CmId {
    id: *mut sys::rdma_cm_id,
    has_qp: bool,
    _channel: Arc<EventChannel>,
}

// SAFETY: the identifier is used by one thread at a time; librdmacm allows
// that from any thread.
unsafe impl Send for CmId {}

fn check(r: i32, what: &str) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

impl CmId {
    /// A new identifier on `channel` (reliable connections, the TCP port
    /// space).
    pub fn new(channel: &Arc<EventChannel>) -> io::Result<CmId> {
        let mut id = std::ptr::null_mut();
        // SAFETY: a valid channel; the library fills `id`.
        let r = unsafe {
            sys::rdma_create_id(
                channel.raw(),
                &mut id,
                std::ptr::null_mut(),
                sys::rdma_port_space::RDMA_PS_TCP,
            )
        };
        check(r, "rdma_create_id")?;
        Ok(CmId {
            id,
            has_qp: false,
            _channel: Arc::clone(channel),
        })
    }

    /// Take over an identifier the CM created (a connect request's).
    ///
    /// # Safety
    ///
    /// `id` comes from a CONNECT_REQUEST event of `channel` and nobody else
    /// owns it.
    pub unsafe fn adopt(id: *mut sys::rdma_cm_id, channel: &Arc<EventChannel>) -> CmId {
        CmId {
            id,
            has_qp: false,
            _channel: Arc::clone(channel),
        }
    }

    pub fn raw(&self) -> *mut sys::rdma_cm_id {
        self.id
    }

    /// The device context the identifier is bound to (after address
    /// resolution or on a connect request).
    pub fn verbs(&self) -> *mut sys::ibv_context {
        // SAFETY: the identifier lives as long as `self`.
        unsafe { (*self.id).verbs }
    }

    /// Its queue pair (after `create_qp`).
    pub fn qp(&self) -> *mut sys::ibv_qp {
        // SAFETY: as above.
        unsafe { (*self.id).qp }
    }

    /// Resolve `dst` to a device and then a route, waiting on `channel`.
    pub fn resolve(
        &self,
        channel: &EventChannel,
        dst: &SocketAddr,
        timeout: Duration,
    ) -> io::Result<()> {
        let mut ss = sockaddr(dst);
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the identifier and the address are valid; src may be null.
        let r = unsafe {
            sys::rdma_resolve_addr(
                self.id,
                std::ptr::null_mut(),
                (&mut ss as *mut libc::sockaddr_storage).cast(),
                ms,
            )
        };
        check(r, "rdma_resolve_addr")?;
        channel.expect(self.id, event::ADDR_RESOLVED, timeout, "address resolution")?;
        // SAFETY: the identifier is valid.
        let r = unsafe { sys::rdma_resolve_route(self.id, ms) };
        check(r, "rdma_resolve_route")?;
        channel.expect(self.id, event::ROUTE_RESOLVED, timeout, "route resolution")?;
        Ok(())
    }

    /// Bind to `addr` and listen.
    pub fn listen(&self, addr: &SocketAddr, backlog: i32) -> io::Result<()> {
        let mut ss = sockaddr(addr);
        // SAFETY: the identifier and the address are valid.
        let r = unsafe {
            sys::rdma_bind_addr(self.id, (&mut ss as *mut libc::sockaddr_storage).cast())
        };
        check(r, "rdma_bind_addr")?;
        // SAFETY: the identifier is bound.
        let r = unsafe { sys::rdma_listen(self.id, backlog) };
        check(r, "rdma_listen")
    }

    /// A reliable-connection queue pair on `pd`, both queues completing on
    /// `cq`.
    pub fn create_qp(
        &mut self,
        pd: &Pd,
        cq: &Cq,
        send: u32,
        recv: u32,
        send_sge: u32,
    ) -> io::Result<()> {
        // SAFETY: all-zero is a valid init attribute to fill in.
        let mut attr: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = cq.0;
        attr.recv_cq = cq.0;
        attr.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        attr.cap.max_send_wr = send;
        attr.cap.max_recv_wr = recv;
        attr.cap.max_send_sge = send_sge;
        attr.cap.max_recv_sge = 1;
        // SAFETY: the identifier, PD and CQ are valid and outlive the QP
        // (the owner drops the identifier, which destroys the QP, first).
        let r = unsafe { sys::rdma_create_qp(self.id, pd.0, &mut attr) };
        check(r, "rdma_create_qp")?;
        self.has_qp = true;
        Ok(())
    }

    /// Connect with `private` data, waiting for ESTABLISHED; a reject
    /// returns the peer's private data in the error's message.
    pub fn connect(
        &self,
        channel: &EventChannel,
        private: &[u8],
        timeout: Duration,
    ) -> io::Result<Vec<u8>> {
        let ev = self.request(channel, private, timeout)?;
        match ev.kind {
            event::ESTABLISHED => Ok(ev.private),
            _ => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "connection rejected (status {}, private data {:02x?})",
                    ev.status, ev.private
                ),
            )),
        }
    }

    /// Send a connection request with `private` data and wait for its
    /// answer: the ESTABLISHED or REJECTED event (any other is an error).
    pub fn request(
        &self,
        channel: &EventChannel,
        private: &[u8],
        timeout: Duration,
    ) -> io::Result<CmEvent> {
        let mut p = conn_param(private);
        // SAFETY: the identifier is valid; the parameters and the private
        // data live through the call (the library copies them).
        let r = unsafe { sys::rdma_connect(self.id, &mut p) };
        check(r, "rdma_connect")?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(ev) = channel.get(left)? else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer to the connection request",
                ));
            };
            if ev.id != self.id {
                continue;
            }
            return match ev.kind {
                event::ESTABLISHED | event::REJECTED => Ok(ev),
                k => Err(io::Error::other(format!(
                    "connecting: {} (status {})",
                    event_name(k),
                    ev.status
                ))),
            };
        }
    }

    /// Accept a connect request with `private` data.
    pub fn accept(&self, private: &[u8]) -> io::Result<()> {
        let mut p = conn_param(private);
        // SAFETY: as for connect.
        let r = unsafe { sys::rdma_accept(self.id, &mut p) };
        check(r, "rdma_accept")
    }

    /// Reject a connect request with `private` data.
    pub fn reject(&self, private: &[u8]) -> io::Result<()> {
        let len = u8::try_from(private.len()).unwrap_or(u8::MAX);
        // SAFETY: the identifier is valid; the data lives through the call.
        check(
            unsafe { sys::rdma_reject(self.id, private.as_ptr().cast(), len) },
            "rdma_reject",
        )
    }

    /// Start a disconnect (the peer gets DISCONNECTED, queued work flushes).
    pub fn disconnect(&self) {
        // SAFETY: the identifier is valid.
        unsafe { sys::rdma_disconnect(self.id) };
    }
}

fn conn_param(private: &[u8]) -> sys::rdma_conn_param {
    // SAFETY: all-zero is a valid parameter block to fill in.
    let mut p: sys::rdma_conn_param = unsafe { std::mem::zeroed() };
    p.private_data = private.as_ptr().cast();
    p.private_data_len = u8::try_from(private.len()).unwrap_or(u8::MAX);
    p.initiator_depth = 16;
    p.responder_resources = 16;
    p.retry_count = 7;
    p.rnr_retry_count = 7;
    p
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: ours; the QP first, then the identifier.
        unsafe {
            if self.has_qp {
                sys::rdma_destroy_qp(self.id);
            }
            sys::rdma_destroy_id(self.id);
        }
    }
}

/// A protection domain, and the memory registered in it.
pub struct Pd(*mut sys::ibv_pd);

// SAFETY: verbs allow a PD to be used from any thread.
unsafe impl Send for Pd {}
// SAFETY: as above.
unsafe impl Sync for Pd {}

impl Pd {
    /// A protection domain on the device `id` is bound to.
    pub fn new(id: &CmId) -> io::Result<Pd> {
        let ctx = id.verbs();
        if ctx.is_null() {
            return Err(io::Error::other("no RDMA device context"));
        }
        // SAFETY: a valid device context.
        let pd = unsafe { sys::ibv_alloc_pd(ctx) };
        if pd.is_null() {
            return Err(io::Error::other("ibv_alloc_pd failed"));
        }
        Ok(Pd(pd))
    }

    /// Its device context.
    pub fn context(&self) -> *mut sys::ibv_context {
        // SAFETY: the PD lives as long as `self`.
        unsafe { (*self.0).context }
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: ours; its registrations and QPs are gone first.
        unsafe { sys::ibv_dealloc_pd(self.0) };
    }
}

/// A completion queue, polled.
pub struct Cq(*mut sys::ibv_cq);

// SAFETY: used by one thread at a time.
unsafe impl Send for Cq {}

impl Cq {
    /// A completion queue of `entries` on the device of `pd`.
    pub fn new(pd: &Pd, entries: u32) -> io::Result<Cq> {
        let ctx = pd.context();
        let n = i32::try_from(entries).unwrap_or(i32::MAX);
        // SAFETY: a valid context; no channel, no context pointer.
        let cq =
            unsafe { sys::ibv_create_cq(ctx, n, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        if cq.is_null() {
            return Err(io::Error::other("ibv_create_cq failed"));
        }
        Ok(Cq(cq))
    }

    /// Append up to 16 completions to `out`; returns how many.
    pub fn poll(&self, out: &mut Vec<WorkDone>) -> io::Result<usize> {
        let mut wc: [sys::ibv_wc; 16] = std::array::from_fn(|_| wc_zeroed());
        // SAFETY: the CQ is valid; `wc` has room for 16 entries.
        let r = unsafe { sys::ibv_poll_cq(self.0, 16, wc.as_mut_ptr()) };
        let n = usize::try_from(r).map_err(|_| io::Error::other("ibv_poll_cq failed"))?;
        out.extend(wc[..n].iter().map(|w| WorkDone {
            wr_id: w.wr_id,
            status: w.status,
            opcode: w.opcode,
            byte_len: w.byte_len,
        }));
        Ok(n)
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: ours; the QPs using it are destroyed first.
        unsafe { sys::ibv_destroy_cq(self.0) };
    }
}

/// A work completion, as polled.
#[derive(Clone, Copy, Debug)]
pub struct WorkDone {
    /// The work request's id.
    pub wr_id: u64,
    /// `ibv_wc_status` (0: success).
    pub status: u32,
    /// `ibv_wc_opcode`.
    pub opcode: u32,
    /// Bytes received (receives).
    pub byte_len: u32,
}

fn wc_zeroed() -> sys::ibv_wc {
    // SAFETY: all-zero is a valid ibv_wc.
    unsafe { std::mem::zeroed() }
}

/// What the registrations of a protection domain let the peers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A host's: the target reads and writes the registered memory (where
    /// a command's keyed descriptor names it).
    Host,
    /// A target's: only the local device reads and writes its memory; no
    /// peer reaches it, whatever key it tries.
    Target,
}

impl Role {
    /// Access flags of a registration, `writable` by the device or not.
    fn access(self, writable: bool) -> u32 {
        use sys::ibv_access_flags as f;
        match (self, writable) {
            (Role::Host, true) => {
                f::IBV_ACCESS_LOCAL_WRITE.0
                    | f::IBV_ACCESS_REMOTE_READ.0
                    | f::IBV_ACCESS_REMOTE_WRITE.0
            }
            (Role::Host, false) => f::IBV_ACCESS_REMOTE_READ.0,
            (Role::Target, true) => f::IBV_ACCESS_LOCAL_WRITE.0,
            (Role::Target, false) => 0,
        }
    }
}

/// One registration.
struct Mr(*mut sys::ibv_mr);

// SAFETY: a registration is a handle the verbs let any thread release.
unsafe impl Send for Mr {}
// SAFETY: as above; only its keys are read.
unsafe impl Sync for Mr {}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: ours, deregistered once.
        unsafe { sys::ibv_dereg_mr(self.0) };
    }
}

#[derive(Clone, Copy, Debug)]
struct Keyed {
    va: usize,
    end: usize,
    lkey: u32,
    rkey: u32,
}

/// The memory registered in one protection domain: every region of the
/// process's DMA registry (guest memory, buffers), looked up by address
/// without locks. Attached to the registry as an [`Iommu`]: its "IOVA" is
/// ignored, RDMA names memory by address and key.
pub struct Registrations {
    pd: Arc<Pd>,
    role: Role,
    mrs: Mutex<BTreeMap<u64, (usize, Mr)>>,
    table: ArcSwap<Vec<Keyed>>,
}

impl Registrations {
    /// Register everything of the process's DMA registry in `pd`, and
    /// every later region, with the access `role` gives peers.
    pub fn attach(pd: &Arc<Pd>, role: Role) -> io::Result<Arc<Registrations>> {
        let r = Arc::new(Registrations {
            pd: Arc::clone(pd),
            role,
            mrs: Mutex::new(BTreeMap::new()),
            table: ArcSwap::from_pointee(Vec::new()),
        });
        DmaRegistry::global()
            .attach(r.clone())
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(r)
    }

    fn publish(&self, m: &BTreeMap<u64, (usize, Mr)>) {
        let mut t: Vec<Keyed> = m
            .values()
            .map(|(va, mr)| {
                // SAFETY: a live registration's fields.
                let (len, lkey, rkey) = unsafe { ((*mr.0).length, (*mr.0).lkey, (*mr.0).rkey) };
                Keyed {
                    va: *va,
                    end: va + len,
                    lkey,
                    rkey,
                }
            })
            .collect();
        t.sort_by_key(|k| k.va);
        self.table.store(Arc::new(t));
    }

    /// The keys of `[va, va + len)` when it lies in one registration:
    /// (lkey, rkey).
    pub fn keys(&self, va: *const u8, len: usize) -> Option<(u32, u32)> {
        let t = self.table.load();
        let va = va as usize;
        let end = va.checked_add(len)?;
        let i = t.partition_point(|k| k.va <= va);
        let k = t.get(i.checked_sub(1)?)?;
        (end <= k.end).then_some((k.lkey, k.rkey))
    }

    /// Its protection domain.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }
}

impl Iommu for Registrations {
    fn map(&self, iova: u64, va: usize, len: usize, writable: bool) -> io::Result<()> {
        let access = self.role.access(writable);
        // SAFETY: the registry's caller keeps the memory mapped until it is
        // unmapped from us (`unmap`), which deregisters it.
        let mr = unsafe {
            sys::ibv_reg_mr(
                self.pd.0,
                va as *mut libc::c_void,
                len,
                i32::try_from(access).unwrap_or(0),
            )
        };
        if mr.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut m = self.mrs.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(iova, (va, Mr(mr)));
        self.publish(&m);
        Ok(())
    }

    fn unmap(&self, iova: u64, _len: usize) -> io::Result<()> {
        let mut m = self.mrs.lock().unwrap_or_else(|e| e.into_inner());
        let gone = m.remove(&iova);
        self.publish(&m);
        drop(gone);
        Ok(())
    }

    fn accepts(&self) -> Vec<RangeInclusive<u64>> {
        vec![0..=u64::MAX]
    }

    fn name(&self) -> String {
        "an RDMA protection domain".into()
    }
}

/// An RDMA device as this process uses it in one role: one protection
/// domain, every DMA region of the process registered in it. A process
/// that is host and target has two on one device: a target's queue pairs
/// never reach memory registered for a host's.
pub struct Device {
    pub regs: Arc<Registrations>,
}

/// The devices in use, by device context and role.
type Devices = Mutex<Vec<((usize, Role), Arc<Device>)>>;

/// The device `id` is bound to, in `role` (set up on first use, kept for
/// the process).
pub fn device(id: &CmId, role: Role) -> io::Result<Arc<Device>> {
    static DEVICES: OnceLock<Devices> = OnceLock::new();
    let mut d = DEVICES
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (id.verbs() as usize, role);
    if let Some((_, dev)) = d.iter().find(|(k, _)| *k == key) {
        return Ok(Arc::clone(dev));
    }
    let pd = Arc::new(Pd::new(id)?);
    let regs = Registrations::attach(&pd, role)?;
    let dev = Arc::new(Device { regs });
    d.push((key, Arc::clone(&dev)));
    Ok(dev)
}

/// Post a send work request chain.
///
/// # Safety
///
/// Every buffer its scatter lists name is registered, and stays valid
/// until the request's completion is polled.
pub unsafe fn post_send(qp: *mut sys::ibv_qp, wr: &mut sys::ibv_send_wr) -> io::Result<()> {
    let mut bad = std::ptr::null_mut();
    // SAFETY: the caller's contract; the QP is valid.
    let r = unsafe { sys::ibv_post_send(qp, wr, &mut bad) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Post a receive of `len` bytes at `addr` (key `lkey`).
///
/// # Safety
///
/// The buffer is registered and stays valid until the receive completes.
pub unsafe fn post_recv(
    qp: *mut sys::ibv_qp,
    wr_id: u64,
    addr: *mut u8,
    len: u32,
    lkey: u32,
) -> io::Result<()> {
    let mut sge = sys::ibv_sge {
        addr: addr as u64,
        length: len,
        lkey,
    };
    let mut wr = sys::ibv_recv_wr {
        wr_id,
        next: std::ptr::null_mut(),
        sg_list: &mut sge,
        num_sge: 1,
    };
    let mut bad = std::ptr::null_mut();
    // SAFETY: the caller's contract; the QP is valid; `wr` and `sge` live
    // through the call (the provider copies them).
    let r = unsafe { sys::ibv_post_recv(qp, &mut wr, &mut bad) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Post an RDMA READ (`read`) or WRITE of `len` bytes between the local
/// buffer at `buf` (key `lkey`) and the peer's memory at `raddr` (key
/// `rkey`), signaled with `wr_id`.
///
/// # Safety
///
/// The local buffer is registered and stays valid until the completion.
#[allow(clippy::too_many_arguments)]
pub unsafe fn post_rdma(
    qp: *mut sys::ibv_qp,
    wr_id: u64,
    read: bool,
    buf: *mut u8,
    len: u32,
    lkey: u32,
    raddr: u64,
    rkey: u32,
) -> io::Result<()> {
    let op = if read {
        sys::ibv_wr_opcode::IBV_WR_RDMA_READ
    } else {
        sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE
    };
    // SAFETY: the caller's contract.
    unsafe { post_one(qp, wr_id, op, buf, len, lkey, Some((raddr, rkey))) }
}

/// Post a SEND of `len` bytes at `buf` (key `lkey`), signaled with `wr_id`.
///
/// # Safety
///
/// The buffer is registered and stays valid until the completion.
pub unsafe fn post_send_buf(
    qp: *mut sys::ibv_qp,
    wr_id: u64,
    buf: *mut u8,
    len: u32,
    lkey: u32,
) -> io::Result<()> {
    let op = sys::ibv_wr_opcode::IBV_WR_SEND;
    // SAFETY: the caller's contract.
    unsafe { post_one(qp, wr_id, op, buf, len, lkey, None) }
}

/// Post one signaled work request `op` on one local buffer, with the
/// peer's address and key for RDMA READ and WRITE.
///
/// # Safety
///
/// As [`post_rdma`].
unsafe fn post_one(
    qp: *mut sys::ibv_qp,
    wr_id: u64,
    op: sys::ibv_wr_opcode::Type,
    buf: *mut u8,
    len: u32,
    lkey: u32,
    remote: Option<(u64, u32)>,
) -> io::Result<()> {
    let mut sge = sys::ibv_sge {
        addr: buf as u64,
        length: len,
        lkey,
    };
    let mut wr = send_wr();
    wr.wr_id = wr_id;
    wr.sg_list = &mut sge;
    wr.num_sge = 1;
    wr.opcode = op;
    wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
    if let Some((remote_addr, rkey)) = remote {
        wr.wr.rdma = sys::rdma_t { remote_addr, rkey };
    }
    // SAFETY: the caller's contract; `wr` and `sge` live through the call.
    unsafe { post_send(qp, &mut wr) }
}

/// A zeroed send work request to fill in.
pub fn send_wr() -> sys::ibv_send_wr {
    // SAFETY: all-zero is a valid send work request.
    unsafe { std::mem::zeroed() }
}

pub use sys::ibv_send_flags as send_flags;
pub use sys::ibv_sge as Sge;
pub use sys::ibv_wc_opcode as wc_opcode;
pub use sys::ibv_wc_status as wc_status;
pub use sys::ibv_wr_opcode as wr_opcode;
