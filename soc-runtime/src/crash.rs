//! Test hooks that kill the runtime (SIGKILL, as `kill -9` does) at an
//! exact point of the queue protocol, to show that a successor recovers
//! from each (see `leapio_link::qstate`). Armed with `socp --crash-at
//! POINT:N` (the N-th time the point is reached); unarmed, a point costs
//! one relaxed load.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Where to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Point {
    /// The SQE is copied out of the guest's queue, nothing recorded yet.
    SqeFetched = 1,
    /// The command is recorded in flight; the SQ's consumed count is not.
    InflightRecorded = 2,
    /// The backend ran the command; its completion is not recorded (a
    /// successor runs it again: zoned commands must tell).
    Executed = 6,
    /// The completion is recorded; the CQE is not written.
    CompletionRecorded = 3,
    /// The CQE is written; the CQ's posted count is not advanced.
    CqeWritten = 4,
    /// The posted count is advanced; the slot is not freed, no interrupt.
    CqePosted = 5,
}

impl Point {
    const ALL: [(&'static str, Point); 6] = [
        ("sqe-fetched", Point::SqeFetched),
        ("inflight-recorded", Point::InflightRecorded),
        ("executed", Point::Executed),
        ("completion-recorded", Point::CompletionRecorded),
        ("cqe-written", Point::CqeWritten),
        ("cqe-posted", Point::CqePosted),
    ];
}

/// `POINT:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashAt {
    pub point: Point,
    pub count: u32,
}

impl FromStr for CrashAt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (p, n) = s.split_once(':').unwrap_or((s, "1"));
        let point = Point::ALL
            .iter()
            .find(|(name, _)| *name == p)
            .map(|(_, pt)| *pt)
            .ok_or_else(|| {
                let names: Vec<&str> = Point::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown crash point '{p}' (one of {})", names.join(", "))
            })?;
        let count = n
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("crash count must be a positive number, got '{n}'"))?;
        Ok(CrashAt { point, count })
    }
}

static ARMED: AtomicU8 = AtomicU8::new(0);
static LEFT: AtomicU32 = AtomicU32::new(0);

/// Arm the hook (once, at start-up).
pub fn arm(c: CrashAt) {
    LEFT.store(c.count, Ordering::Relaxed);
    ARMED.store(c.point as u8, Ordering::Release);
    tracing::warn!(point = ?c.point, count = c.count, "test hook armed: this runtime will kill itself");
}

/// Called at each point of the queue protocol.
#[inline]
pub fn at(p: Point) {
    if ARMED.load(Ordering::Relaxed) == p as u8 {
        fire(p);
    }
}

#[cold]
fn fire(p: Point) {
    if LEFT.fetch_sub(1, Ordering::AcqRel) == 1 {
        eprintln!("socp: test hook: killing myself at {p:?}");
        // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

static HANG_DELETES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Test hook: never answer queue deletions (a runtime the host-driver must
/// fence).
pub fn arm_hang_deletes() {
    HANG_DELETES.store(true, Ordering::Release);
    tracing::warn!("test hook armed: queue deletions will never be answered");
}

/// Whether queue deletions are to be left unanswered.
pub fn hang_deletes() -> bool {
    HANG_DELETES.load(Ordering::Acquire)
}
