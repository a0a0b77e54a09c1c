//! An in-process harness for coverage-guided fuzzing of the fabrics queue
//! as NVMe/RDMA drives it (feature `fuzzing`; not part of the runtime's
//! API): command capsules with keyed SGL descriptors, in-capsule data,
//! RDMA READs of host data that complete later (or never: the peer goes
//! away first), buffers that cannot be had. The RDMA target's poller does
//! exactly this with verbs around it; here a simulated wire records what
//! it would have sent, so the harness needs no RDMA device.

use super::config::TargetSpec;
use super::queue::{Ctx, FabricQueue, Wire};
use super::subsystem::Subsystem;
use crate::engine::{Engine, QueueId};
use leapio_backends::{Backend, Transport};
use leapio_controller::NamespaceInfo;
use leapio_nvme::rdma::KeyedSgl;
use leapio_nvme::{Cqe, Sqe};
use std::net::SocketAddr;
use std::sync::Arc;

/// The subsystem every run serves: two RAM namespaces with 512-byte and
/// 4096-byte blocks.
pub const SPEC: &str = "listen=127.0.0.1:0,nqn=nqn.2026-11.io.leapio:fuzz,\
ns=ram:1M,ns=ram:1M,bs=4096,io-queues=4,queue-entries=32,mdts=2";

/// Backend requests in flight per queue of the harness.
const DEPTH: u32 = 64;

/// What one step of a run does.
#[derive(Debug, Clone)]
pub enum Step {
    /// A command capsule (SQE and in-capsule data) arrives on queue `conn`.
    Capsule { conn: usize, bytes: Vec<u8> },
    /// The oldest RDMA READ outstanding on queue `conn` completes.
    ReadDone { conn: usize },
    /// The backends complete what they were given.
    Settle,
    /// Buffers cannot be had (`true`) or can again (`false`).
    Starve(bool),
    /// Queue `conn`'s peer goes away (its queue pair is gone).
    Close { conn: usize },
}

/// What the target did on one queue, as its peer sees it.
#[derive(Debug, Clone)]
pub enum Sent {
    /// An RDMA READ of `len` bytes of the host's buffer of command `cid`.
    Read { cid: u16, len: usize },
    /// An RDMA WRITE of `len` bytes into the host's buffer of `cid`.
    Write { cid: u16, len: usize },
    /// A response capsule.
    Response(Cqe),
    /// The target closes the connection once this is sent.
    Close,
}

/// What one run left behind after every queue closed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Leftovers {
    /// Commands still held by a closed queue's state (answered or not).
    pub commands: usize,
    /// Controllers still alive.
    pub controllers: usize,
    /// Backend operations not completed.
    pub in_flight: usize,
}

/// The length of a keyed SGL descriptor in `sqe`'s SGL1 (what the host
/// registered for it), if SGL1 is one.
pub fn keyed_len(sqe: &Sqe) -> Option<usize> {
    let k = KeyedSgl::of(sqe);
    if sqe.psdt() == 0 || !k.is_keyed() {
        return None;
    }
    usize::try_from(k.len()).ok()
}

/// The simulated RDMA side of one queue.
#[derive(Default)]
struct SimWire {
    sent: Vec<Sent>,
    /// RDMA READs posted and not completed: command index.
    reads: Vec<usize>,
    starved: bool,
    closing: bool,
}

impl Wire for SimWire {
    type Buf = Vec<u8>;
    fn data_buffer(&mut self, len: usize) -> Option<Vec<u8>> {
        (!self.starved).then(|| vec![0; len])
    }
    fn read_buffer(&mut self, len: usize) -> Option<(Vec<u8>, usize)> {
        (!self.starved).then(|| (vec![0; len], 0))
    }
    fn fetch(&mut self, idx: usize, sqe: &Sqe, buf: &mut [u8]) {
        buf.fill(0x5a);
        self.reads.push(idx);
        self.sent.push(Sent::Read {
            cid: sqe.cid.get(),
            len: buf.len(),
        });
    }
    fn send_data(&mut self, sqe: &Sqe, data: &[u8]) {
        self.sent.push(Sent::Write {
            cid: sqe.cid.get(),
            len: data.len(),
        });
    }
    fn send_read(&mut self, sqe: &Sqe, buf: Vec<u8>, at: usize, len: usize, _last: bool) -> bool {
        assert!(at + len <= buf.len(), "read data outside its buffer");
        self.sent.push(Sent::Write {
            cid: sqe.cid.get(),
            len,
        });
        false
    }
    fn respond(&mut self, cqe: &Cqe) {
        self.sent.push(Sent::Response(*cqe));
    }
    fn close_after_flush(&mut self) {
        self.closing = true;
        self.sent.push(Sent::Close);
    }
    fn over_limit(&self, owed: usize) -> bool {
        owed > 1 << 20
    }
}

struct Queue {
    q: FabricQueue<Vec<u8>>,
    wire: SimWire,
    open: bool,
}

/// What a fuzzing harness serves: a target's spec, its namespaces, and an
/// engine with a queue of `depth` on each.
pub(crate) struct Served {
    pub spec: TargetSpec,
    pub backends: Vec<Arc<dyn Backend>>,
    pub namespaces: Vec<NamespaceInfo>,
    pub engine: Engine,
    pub queues: Vec<QueueId>,
}

/// Open the namespaces of the target `spec` names, and their queues.
pub(crate) fn serve(spec: &str, depth: u32) -> std::io::Result<Served> {
    let spec: TargetSpec = spec.parse().map_err(std::io::Error::other)?;
    let (backends, namespaces) =
        crate::namespaces::open_namespaces(&spec.namespaces, "FUZZ", &spec.nqn)
            .map_err(|(_, e)| std::io::Error::other(e))?;
    let mut engine = Engine::default();
    let mut queues = Vec::new();
    for b in &backends {
        queues.push(
            engine
                .open(b.as_ref(), depth)
                .map_err(std::io::Error::other)?,
        );
    }
    Ok(Served {
        spec,
        backends,
        namespaces,
        engine,
        queues,
    })
}

/// RAM namespaces and their backend queues, reused across runs.
pub struct Harness {
    spec: TargetSpec,
    namespaces: Vec<NamespaceInfo>,
    backends: Vec<Arc<dyn Backend>>,
    engine: Engine,
    queues: Vec<QueueId>,
}

impl Harness {
    /// Open the namespaces of [`SPEC`] and their backend queues.
    pub fn new() -> std::io::Result<Harness> {
        let Served {
            spec,
            backends,
            namespaces,
            engine,
            queues,
        } = serve(SPEC, DEPTH)?;
        Ok(Harness {
            spec,
            namespaces,
            backends,
            engine,
            queues,
        })
    }

    /// Serve `conns` queues (at most 4) of a fresh subsystem through
    /// `steps`; what each queue's peer saw goes to `sent` (queue, what;
    /// [`Sent::Close`] also when the peer went away). Then the peers still
    /// connected take their data and the backends finish; `sent` gets
    /// `(usize::MAX, Close)`: every command of an open queue has been
    /// answered by then (but Asynchronous Event Requests). Then every peer
    /// goes away; returns what that left behind.
    pub fn run(
        &mut self,
        conns: usize,
        steps: &[Step],
        sent: &mut dyn FnMut(usize, &Sent),
    ) -> Leftovers {
        let sub = Arc::new(Subsystem::new(
            &self.spec,
            "FUZZ".into(),
            SocketAddr::from(([127, 0, 0, 1], 4420)),
            Transport::Rdma,
            self.namespaces.clone(),
            self.backends.clone(),
        ));
        let mut qs: Vec<Queue> = (0..conns.clamp(1, 4))
            .map(|i| Queue {
                q: FabricQueue::new(format!("fuzz {i}"), &sub.limits),
                wire: SimWire::default(),
                open: true,
            })
            .collect();
        let n = qs.len();
        for step in steps {
            match step {
                Step::Capsule { conn, bytes } => {
                    let c = conn % n;
                    let Queue { q, wire, open } = &mut qs[c];
                    if !*open || wire.closing {
                        continue;
                    }
                    if let Ok((sqe, rest)) = <Sqe as zerocopy::FromBytes>::read_from_prefix(bytes) {
                        let mut cx = self.ctx(&sub, c);
                        q.command(&mut cx, wire, &sqe, rest, true);
                    } else {
                        // The RDMA poller closes a connection whose
                        // capsule is shorter than a command.
                        Self::close(&sub, &mut qs[c]);
                    }
                }
                Step::ReadDone { conn } => {
                    let c = conn % n;
                    let Queue { q, wire, open } = &mut qs[c];
                    if !*open || wire.reads.is_empty() {
                        continue;
                    }
                    let idx = wire.reads.remove(0);
                    let mut cx = self.ctx(&sub, c);
                    q.data_fetched(&mut cx, wire, idx, leapio_nvme::Status::SUCCESS);
                }
                Step::Settle => self.settle(&sub, &mut qs),
                Step::Starve(on) => qs.iter_mut().for_each(|q| q.wire.starved = *on),
                Step::Close { conn } => {
                    let c = conn % n;
                    Self::close(&sub, &mut qs[c]);
                }
            }
            for (i, q) in qs.iter_mut().enumerate() {
                for s in q.wire.sent.drain(..) {
                    sent(i, &s);
                }
                // The poller closes a queue once what it said is sent.
                if q.wire.closing && q.open {
                    Self::close(&sub, q);
                }
            }
        }
        // The peers still there take their data, and the backends finish.
        for _ in 0..8 {
            for (c, Queue { q, wire, open }) in qs.iter_mut().enumerate() {
                while *open && !wire.reads.is_empty() {
                    let idx = wire.reads.remove(0);
                    let mut cx = self.ctx(&sub, c);
                    q.data_fetched(&mut cx, wire, idx, leapio_nvme::Status::SUCCESS);
                }
            }
            self.settle(&sub, &mut qs);
            if qs.iter().all(|q| q.wire.reads.is_empty()) {
                break;
            }
        }
        for (i, q) in qs.iter_mut().enumerate() {
            for s in q.wire.sent.drain(..) {
                sent(i, &s);
            }
        }
        sent(usize::MAX, &Sent::Close);
        for q in qs.iter_mut() {
            Self::close(&sub, q);
        }
        self.settle(&sub, &mut qs);
        Leftovers {
            commands: qs.iter().map(|q| q.q.cmds.iter().flatten().count()).sum(),
            controllers: sub.controller_count(),
            in_flight: self.engine.in_flight(),
        }
    }

    fn ctx<'a>(&'a mut self, sub: &'a Arc<Subsystem>, conn: usize) -> Ctx<'a> {
        Ctx {
            sub,
            engine: &mut self.engine,
            queues: &self.queues,
            io: &[],
            tag_base: u64::try_from(conn).unwrap_or(0) << 32,
        }
    }

    /// The peer of queue `conn` is gone: reads never complete, the queue
    /// is released; its backend work still completes (into its state, as
    /// the poller's orphans hold the buffers) and is then dropped.
    fn close(sub: &Subsystem, q: &mut Queue) {
        if !q.open {
            return;
        }
        q.open = false;
        q.wire.reads.clear();
        if !q.wire.closing {
            q.wire.sent.push(Sent::Close);
        }
        q.q.release(sub);
        // Commands waiting for data that will never come are dropped;
        // those in the backends are finished by `settle`.
        for c in q.q.cmds.iter_mut() {
            if c.as_ref().is_some_and(|c| c.in_backend() == 0) {
                *c = None;
            }
        }
        q.q.deferred.clear();
    }

    /// Run the backends until nothing is in flight, handing completions to
    /// their queues, and start reads that were deferred.
    fn settle(&mut self, sub: &Arc<Subsystem>, qs: &mut [Queue]) {
        // Bounded: the RAM backend completes everything it accepts on the
        // next poll.
        for _ in 0..64 {
            self.engine.retry();
            self.engine.kick();
            let mut done = Vec::new();
            self.engine.poll(&mut done);
            for d in done {
                let conn = usize::try_from(d.tag >> 32).unwrap_or(usize::MAX);
                let idx = usize::try_from(d.tag & 0xffff).unwrap_or(usize::MAX);
                let Some(Queue { q, wire, open }) = qs.get_mut(conn) else {
                    continue;
                };
                let mut cx = self.ctx(sub, conn);
                q.op_done(&mut cx, wire, idx, d.result.map(|()| d.value));
                if !*open {
                    // Nothing goes to a peer that is gone.
                    wire.sent.clear();
                }
            }
            for (conn, Queue { q, wire, open }) in qs.iter_mut().enumerate() {
                if *open && !q.deferred.is_empty() {
                    let mut cx = self.ctx(sub, conn);
                    q.resume_deferred(&mut cx, wire);
                }
            }
            if self.engine.in_flight() == 0 && qs.iter().all(|q| q.q.deferred.is_empty() || !q.open)
            {
                break;
            }
        }
    }
}
