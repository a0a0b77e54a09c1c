//! A target poller thread: non-blocking sockets in one epoll set, run to
//! completion. Each loop it accepts connections (every poller watches the
//! shared listener; whoever wins `accept` serves the connection), reads and
//! handles PDUs, submits backend work on its own backend queues, reaps
//! completions, writes queued PDUs and does the timed checks (ICReq
//! timeout, keep-alive timeout, controllers torn down elsewhere).

use super::bufs::BufPool;
use super::conn::{Conn, Phase, TcpCtx};
use super::epoll::Epoll;
use crate::engine::{Engine, QueueId};
use crate::fabrics::orphans::Orphans;
use crate::fabrics::queue::{Ctx, OpOutcome};
use crate::fabrics::subsystem::Subsystem;
use leapio_backends::Completion;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::timerfd::TimerFd;

const LISTENER: u64 = u64::MAX;
/// Epoll token of the nap timer.
const NAP: u64 = u64::MAX - 1;
/// How long the poller sleeps when its only work is commands held for
/// QoS tokens: nothing but time releases them (a new command or a
/// completion wakes it at once). Best effort's buckets hold at least 1 ms
/// of its rate by default, so a tenth of that loses it no tokens.
const HELD_NAP: Duration = Duration::from_micros(100);
/// Requests in flight per backend queue.
pub(super) const BACKEND_DEPTH: u32 = 256;
/// Reads per connection per loop (fairness).
const READS_PER_LOOP: usize = 4;
/// Longest epoll sleep when idle.
const IDLE_WAIT: Duration = Duration::from_millis(10);
/// Timed checks period.
const TICK: Duration = Duration::from_millis(10);
/// Most connections one poller serves.
const MAX_CONNS: usize = 4096;
/// How long accepting pauses after `accept` failed for lack of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// A connection as the poller serves it: its socket, what epoll watches
/// on it, and its protocol state (which does no I/O of its own).
struct Client {
    sock: TcpStream,
    /// EPOLLIN is armed (input is read).
    reading: bool,
    /// EPOLLOUT is armed.
    want_out: bool,
    conn: Conn,
}

impl Client {
    fn new(sock: TcpStream, conn: Conn) -> Client {
        Client {
            sock,
            reading: true,
            want_out: false,
            conn,
        }
    }
}

pub(super) struct TargetPoller {
    pub index: usize,
    pub sub: Arc<Subsystem>,
    listener: Arc<TcpListener>,
    epoll: Epoll,
    conns: Vec<Option<Client>>,
    gens: Vec<u16>,
    free: Vec<usize>,
    /// The backend queues, and which is each namespace's (by index).
    pub(super) engine: Engine,
    pub(super) queues: Vec<QueueId>,
    /// This poller's counters of each namespace (by index).
    io: Vec<Arc<crate::io_stats::IoShard>>,
    orphans: Orphans<Vec<u8>>,
    completions: Vec<Completion>,
    scratch: Vec<u8>,
    /// Sent C2HData buffers, for the next reads.
    pub(super) bufs: BufPool,
    stop: Arc<AtomicBool>,
    last_tick: Instant,
    /// Accepting is paused (the listener unwatched) until then.
    accept_paused_until: Option<Instant>,
    /// This poller's share of `Subsystem::tx_peak`.
    tx_peak: usize,
    /// When the last pass found work (busy polling lasts
    /// `Limits::busy_poll` after it).
    last_work: Instant,
    /// Wakes the poller after [`HELD_NAP`] (armed while it sleeps with
    /// only held commands); epoll's own timeout counts in milliseconds.
    nap: TimerFd,
    /// Arming `nap` failed once (said once, not on every pass).
    nap_failed: bool,
}

impl TargetPoller {
    pub fn new(
        index: usize,
        sub: Arc<Subsystem>,
        listener: Arc<TcpListener>,
        engine: Engine,
        queues: Vec<QueueId>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<TargetPoller> {
        let epoll = Epoll::new()?;
        epoll.add(listener.as_raw_fd(), LISTENER, false)?;
        let nap = TimerFd::new().map_err(std::io::Error::from)?;
        epoll.add(nap.as_raw_fd(), NAP, false)?;
        Ok(TargetPoller {
            index,
            io: sub.io.iter().map(crate::io_stats::IoStats::shard).collect(),
            sub,
            listener,
            epoll,
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            engine,
            queues,
            orphans: Orphans::default(),
            completions: Vec::new(),
            scratch: vec![0u8; 128 * 1024],
            bufs: BufPool::default(),
            stop,
            last_tick: Instant::now(),
            accept_paused_until: None,
            tx_peak: 0,
            last_work: Instant::now(),
            nap,
            nap_failed: false,
        })
    }

    /// Backend tag of command `idx` of the connection in `slot`.
    pub fn tag(&self, slot: usize, idx: usize) -> u64 {
        let s = u64::try_from(slot).unwrap_or(0);
        let g = u64::from(self.gens.get(slot).copied().unwrap_or(0));
        let i = u64::try_from(idx).unwrap_or(0) & 0xffff;
        (s << 32) | (g << 16) | i
    }

    /// The connection in `slot` and the context its protocol works with.
    fn split(&mut self, slot: usize) -> Option<(&mut Conn, TcpCtx<'_>)> {
        let tag_base = self.tag(slot, 0);
        let client = self.conns.get_mut(slot)?.as_mut()?;
        let cx = TcpCtx {
            fab: Ctx {
                sub: &self.sub,
                engine: &mut self.engine,
                queues: &self.queues,
                io: &self.io,
                tag_base,
            },
            bufs: &mut self.bufs,
        };
        Some((&mut client.conn, cx))
    }

    fn untag(tag: u64) -> (usize, u16, usize) {
        let slot = usize::try_from(tag >> 32).unwrap_or(usize::MAX);
        let g = u16::try_from((tag >> 16) & 0xffff).unwrap_or(0);
        let i = usize::try_from(tag & 0xffff).unwrap_or(0);
        (slot, g, i)
    }

    pub fn run(mut self) {
        let mut events = Vec::with_capacity(64);
        while !self.stop.load(Ordering::Acquire) {
            let busy = self.engine.busy()
                || self
                    .conns
                    .iter()
                    .flatten()
                    .any(|c| c.conn.tx_pending() && !c.want_out);
            let now = Instant::now();
            if busy {
                self.last_work = now;
            }
            let polling = busy || now.duration_since(self.last_work) < self.sub.limits.busy_poll;
            let wait = if polling {
                Duration::ZERO
            } else if !self.engine.held() || self.arm_nap() {
                // Sleep until a socket (or, with commands held for
                // tokens, the nap timer) wakes the poller.
                IDLE_WAIT
            } else {
                Duration::ZERO
            };
            events.clear();
            if let Err(e) = self.epoll.wait(wait, &mut events) {
                tracing::error!(poller = self.index, "epoll_wait: {e}");
                std::thread::sleep(IDLE_WAIT);
            }
            if !events.is_empty() {
                self.last_work = Instant::now();
            }
            for &(token, ev) in &events {
                if token == LISTENER {
                    self.accept();
                    continue;
                }
                if token == NAP {
                    // Expired: clear it (the held commands are looked at
                    // below, as on every pass).
                    let _ = self.nap.wait();
                    continue;
                }
                let Ok(slot) = usize::try_from(token) else {
                    continue;
                };
                let hangup = ev.hangup();
                let paused = self
                    .conns
                    .get(slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|c| !c.reading);
                if hangup && paused {
                    // Gone (or half-gone) while owing reads: nothing more
                    // will be read from it, and the event would repeat.
                    self.close(slot);
                } else if hangup || ev.readable() {
                    self.readable(slot);
                }
            }
            self.engine.retry();
            self.engine.kick();
            self.reap();
            self.flush_all();
            if self.last_tick.elapsed() >= TICK {
                self.last_tick = Instant::now();
                self.tick();
            }
        }
        self.shutdown();
    }

    /// Have the nap timer wake the poller within [`HELD_NAP`]; false if it
    /// cannot (the poller then polls rather than sleep with commands held).
    fn arm_nap(&mut self) -> bool {
        if self.nap.is_armed().unwrap_or(false) {
            return true;
        }
        match self.nap.reset(HELD_NAP, None) {
            Ok(()) => true,
            Err(e) => {
                if !self.nap_failed {
                    tracing::warn!(poller = self.index, "nap timer: {e}; polling instead");
                    self.nap_failed = true;
                }
                false
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..16 {
            match self.listener.accept() {
                Ok((sock, peer)) => {
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    let live = self.conns.iter().flatten().count();
                    if live >= MAX_CONNS {
                        tracing::warn!(%peer, "too many connections, refusing");
                        continue;
                    }
                    let conn = Conn::new(peer, &self.sub.limits);
                    let slot = match self.free.pop() {
                        Some(s) => s,
                        None => {
                            self.conns.push(None);
                            self.gens.push(0);
                            self.conns.len() - 1
                        }
                    };
                    let token = u64::try_from(slot).unwrap_or(0);
                    if let Err(e) = self.epoll.add(sock.as_raw_fd(), token, false) {
                        tracing::error!(%peer, "epoll add: {e}");
                        self.free.push(slot);
                        continue;
                    }
                    tracing::debug!(poller = self.index, %peer, slot, "connection accepted");
                    self.conns[slot] = Some(Client::new(sock, conn));
                    self.sub.connections.fetch_add(1, Ordering::AcqRel);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the
                    // pending connection stays queued and the listener stays
                    // readable. Stop watching it for a while instead of
                    // failing (and logging) on every pass.
                    if self.accept_paused_until.is_none() {
                        tracing::warn!(
                            poller = self.index,
                            "accept: {e}; not accepting for {ACCEPT_BACKOFF:?}"
                        );
                    }
                    self.epoll.delete(self.listener.as_raw_fd());
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn readable(&mut self, slot: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut closed = false;
        for _ in 0..READS_PER_LOOP {
            let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                break;
            };
            if c.conn.over_limit() && !c.conn.closing() {
                // Owed too much output: leave the input in the socket.
                break;
            }
            let n = match c.sock.read(&mut scratch) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(peer = %c.conn.peer(), "read: {e}");
                    closed = true;
                    break;
                }
            };
            if c.conn.closing() {
                // Terminated: input is discarded (reading it keeps the
                // level-triggered epoll from waking us again and again).
                continue;
            }
            let Some((conn, mut cx)) = self.split(slot) else {
                break;
            };
            conn.on_bytes(&mut cx, &scratch[..n]);
            if conn.closing() || n < scratch.len() {
                // A short read emptied the socket: the next read would only
                // say so (and take the socket's lock); epoll reports more.
                break;
            }
        }
        self.scratch = scratch;
        if closed {
            // Still answer what can be answered? The peer is gone: no.
            if let Some(c) = self.conns.get(slot).and_then(Option::as_ref) {
                tracing::debug!(peer = %c.conn.peer(), "peer closed the connection");
            }
            self.close(slot);
        }
    }

    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.completions);
        self.engine.poll(&mut done);
        for c in done.drain(..) {
            self.complete_tag(c.tag, c.result.map(|()| c.value));
        }
        self.completions = done;
    }

    fn complete_tag(&mut self, tag: u64, outcome: OpOutcome) {
        let (slot, gen, idx) = Self::untag(tag);
        let live =
            self.gens.get(slot) == Some(&gen) && matches!(self.conns.get(slot), Some(Some(_)));
        if live {
            if let Some((conn, mut cx)) = self.split(slot) {
                conn.op_done(&mut cx, idx, outcome);
            }
            return;
        }
        self.orphans.completed(&self.sub, tag);
    }

    fn flush_all(&mut self) {
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.conn.wire.tx_bytes > self.tx_peak {
                self.tx_peak = c.conn.wire.tx_bytes;
                self.sub
                    .tx_peak
                    .fetch_max(c.conn.wire.tx_bytes, Ordering::Relaxed);
            }
            if !c.conn.tx_pending() {
                if c.conn.closing() {
                    self.close(slot);
                } else if !c.reading {
                    // Everything owed was sent: read again.
                    c.reading = true;
                    let token = u64::try_from(slot).unwrap_or(0);
                    let _ = self
                        .epoll
                        .modify(c.sock.as_raw_fd(), token, true, c.want_out);
                }
                continue;
            }
            match flush(c, &mut self.bufs) {
                Ok(blocked) => {
                    let reading = !c.conn.over_limit();
                    if blocked != c.want_out || reading != c.reading {
                        c.want_out = blocked;
                        c.reading = reading;
                        let token = u64::try_from(slot).unwrap_or(0);
                        let _ = self
                            .epoll
                            .modify(c.sock.as_raw_fd(), token, reading, blocked);
                    }
                    if !c.conn.tx_pending() && c.conn.closing() {
                        self.close(slot);
                    } else if !c.conn.q.deferred.is_empty() && !c.conn.over_limit() {
                        self.resume(slot);
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %c.conn.peer(), "write: {e}");
                    self.close(slot);
                }
            }
        }
    }

    /// Start the deferred reads of the connection in `slot` that now fit.
    fn resume(&mut self, slot: usize) {
        if let Some((conn, mut cx)) = self.split(slot) {
            conn.resume_deferred(&mut cx);
        }
    }

    /// Timed checks.
    fn tick(&mut self) {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            if let Err(e) = self.epoll.add(self.listener.as_raw_fd(), LISTENER, false) {
                tracing::error!(poller = self.index, "epoll add (listener): {e}");
            }
        }
        for slot in 0..self.conns.len() {
            let Some(Client { conn, .. }) = self.conns[slot].as_mut() else {
                continue;
            };
            match conn.wire.phase {
                Phase::AwaitIcReq { deadline } if now >= deadline => {
                    tracing::warn!(peer = %conn.peer(), "no ICReq in time");
                    let hdr = conn.wire.parser.partial_header().to_vec();
                    conn.wire
                        .terminate(leapio_nvme::tcp::Fes::PDU_SEQUENCE_ERROR, 0, &hdr);
                    continue;
                }
                Phase::Closing { deadline } if now >= deadline => {
                    self.close(slot);
                    continue;
                }
                _ => {}
            }
            if let Some(why) = conn.q.expired(&self.sub, now) {
                tracing::warn!(peer = %conn.peer(), "closing the connection: {why}");
                self.close(slot);
                continue;
            }
            conn.notify_ana(&self.sub, &mut self.bufs);
        }
        // Notices just queued go out now.
        self.flush_all();
    }

    /// Drop a connection: its queue and (admin queue) its controller go
    /// away; backend work in flight keeps its buffers until it completes.
    fn close(&mut self, slot: usize) {
        let Some(Client { sock, mut conn, .. }) = self.conns.get_mut(slot).and_then(Option::take)
        else {
            return;
        };
        self.epoll.delete(sock.as_raw_fd());
        let _ = sock.shutdown(std::net::Shutdown::Both);
        // Operations a full backend queue never took: forget them.
        let base = self.tag(slot, 0) & !0xffff;
        self.orphans
            .adopt(&self.sub, &mut self.engine, base, &mut conn.q);
        conn.q.release(&self.sub);
        if let Some(g) = self.gens.get_mut(slot) {
            *g = g.wrapping_add(1);
        }
        self.free.push(slot);
        self.sub.connections.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!(poller = self.index, peer = %conn.peer(), "connection closed");
    }

    fn shutdown(&mut self) {
        for slot in 0..self.conns.len() {
            self.close(slot);
        }
        let mut out = Vec::new();
        self.engine.drain(&mut out, Duration::from_secs(10));
        self.orphans.clear(&self.sub);
    }
}

/// Write queued PDUs, giving sent buffers to `bufs`; Ok(true) when the
/// socket would block with data left.
fn flush(c: &mut Client, bufs: &mut BufPool) -> std::io::Result<bool> {
    let Client { sock, conn, .. } = c;
    while !conn.wire.tx.is_empty() {
        let mut slices = Vec::with_capacity(16);
        for (i, b) in conn.wire.tx.iter().take(16).enumerate() {
            slices.push(IoSlice::new(if i == 0 {
                &b[conn.wire.tx_off..]
            } else {
                b
            }));
        }
        match sock.write_vectored(&slices) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                while n > 0 {
                    let Some(front) = conn.wire.tx.front() else {
                        break;
                    };
                    let left = front.len() - conn.wire.tx_off;
                    if n >= left {
                        n -= left;
                        if let Some(done) = conn.wire.tx.pop_front() {
                            conn.wire.tx_bytes -= done.len();
                            bufs.give(done);
                        }
                        conn.wire.tx_off = 0;
                    } else {
                        conn.wire.tx_off += n;
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// In-process hooks for the `fuzzing` harness ([`super::fuzzing`]): the
/// caller hands the connection its bytes instead of a socket, and takes its
/// PDUs instead of writing them. Everything in between (parser, state
/// machine, commands, backend queues, closing) is the code above.
#[cfg(feature = "fuzzing")]
impl TargetPoller {
    /// Start serving a connection whose bytes the caller provides. `sock` is
    /// never read or written (an unconnected socket does).
    pub(super) fn fuzz_open(&mut self, sock: std::net::TcpStream) -> usize {
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let conn = Client::new(sock, Conn::new(peer, &self.sub.limits));
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.gens.push(0);
            self.conns.len() - 1
        });
        self.conns[slot] = Some(conn);
        self.sub.connections.fetch_add(1, Ordering::AcqRel);
        slot
    }

    /// Bytes from the peer of the connection in `slot`, if it is still open.
    pub(super) fn fuzz_feed(&mut self, slot: usize, bytes: &[u8]) {
        if let Some((conn, mut cx)) = self.split(slot) {
            if !conn.closing() {
                conn.on_bytes(&mut cx, bytes);
            }
        }
    }

    /// Run the backends until nothing is in flight; hand every queued PDU
    /// to `sent` (slot, bytes) and close the connections that terminated.
    pub(super) fn fuzz_settle(&mut self, sent: &mut dyn FnMut(usize, &[u8])) {
        // Bounded: the RAM backend completes everything it accepts on the
        // next poll, so a handful of rounds always suffices; reads deferred
        // until their host took its data (which it does here at once) start
        // in the next round.
        for _ in 0..8 {
            for _ in 0..64 {
                self.engine.retry();
                self.engine.kick();
                self.reap();
                if self.engine.in_flight() == 0 {
                    break;
                }
            }
            let mut deferred = false;
            for slot in 0..self.conns.len() {
                let Some(Client { conn, .. }) = self.conns[slot].as_mut() else {
                    continue;
                };
                for pdu in conn.wire.tx.drain(..) {
                    sent(slot, &pdu);
                }
                conn.wire.tx_off = 0;
                conn.wire.tx_bytes = 0;
                if conn.closing() {
                    self.close(slot);
                } else if !conn.q.deferred.is_empty() {
                    deferred = true;
                    self.resume(slot);
                }
            }
            if !deferred {
                return;
            }
        }
    }

    /// Close every connection (as their peers going away) and forget the
    /// buffers of commands still in the backends once they complete.
    pub(super) fn fuzz_close_all(&mut self) {
        for slot in 0..self.conns.len() {
            self.close(slot);
        }
        self.fuzz_settle(&mut |_, _| {});
    }

    /// Serve a new subsystem (controllers start again from CNTLID 1).
    pub(super) fn fuzz_set_subsystem(&mut self, sub: Arc<Subsystem>) {
        self.sub = sub;
    }

    /// Connections open, commands orphaned, backend operations not done.
    pub(super) fn fuzz_leftovers(&self) -> (usize, usize, usize) {
        let in_flight = self.engine.in_flight();
        (
            self.conns.iter().flatten().count(),
            self.orphans.len(),
            in_flight,
        )
    }
}
