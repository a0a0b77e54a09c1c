//! The link's messages. They are control-plane only (queue creation, memory
//! maps, attach): no message is sent per I/O. Each is one JSON object with a
//! `type` tag, framed by [`crate::frame`]; file descriptors travel beside
//! it, in the order the message says.
//!
//! Requests that need an answer carry a `req` number; the answer is an
//! [`ToHost::Ack`] with the same number.

use serde::{Deserialize, Serialize};

/// Protocol version. A different major version is refused by both sides;
/// minor versions only add messages or optional fields.
pub const PROTOCOL_MAJOR: u16 = 1;
pub const PROTOCOL_MINOR: u16 = 1;

/// A namespace as the runtime declares it: what the host-driver needs to
/// answer Identify. The host-driver derives the unique identifiers (NGUID,
/// EUI-64, UUID) from the controller's serial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsDecl {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub volatile_write_cache: bool,
    pub write_zeroes: bool,
    pub deallocate: bool,
    /// The data outlives the runtime process (a file, a block device, a
    /// remote target); a RAM namespace does not.
    pub persistent: bool,
    /// What backs it, for logs ("file /srv/vm0.img").
    pub describe: String,
    /// A zoned namespace's zones (since 1.1; absent: not zoned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoned: Option<ZonedDecl>,
}

/// The zones of a zoned namespace, as declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZonedDecl {
    /// Blocks per zone (a power of two).
    pub zone_blocks: u64,
    /// Writable blocks per zone.
    pub capacity: u64,
    /// Most open zones at once.
    pub max_open: u32,
    /// Most active zones at once.
    pub max_active: u32,
}

/// The controller's limits, sent with [`ToRuntime::Attached`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtrlConfig {
    pub serial: String,
    pub max_io_queues: u16,
    pub max_queue_entries: u32,
    pub mdts_bytes: u64,
    pub vectors: u16,
}

/// Shadow doorbell buffers (Doorbell Buffer Config), guest-physical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shadow {
    pub dbs: u64,
    pub eis: u64,
}

impl Shadow {
    /// Shadow SQ `qid` tail doorbell (guest-physical).
    pub fn sq_tail(&self, qid: u16) -> u64 {
        self.dbs + u64::from(qid) * 8
    }
    /// Shadow CQ `qid` head doorbell.
    pub fn cq_head(&self, qid: u16) -> u64 {
        self.dbs + u64::from(qid) * 8 + 4
    }
    /// EventIdx of SQ `qid`.
    pub fn sq_event(&self, qid: u16) -> u64 {
        self.eis + u64::from(qid) * 8
    }
    /// EventIdx of CQ `qid`.
    pub fn cq_event(&self, qid: u16) -> u64 {
        self.eis + u64::from(qid) * 8 + 4
    }
}

/// An I/O completion queue the guest created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CqSetup {
    pub qid: u16,
    pub gpa: u64,
    pub entries: u32,
    pub vector: u16,
    pub ien: bool,
}

/// An I/O submission queue the guest created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqSetup {
    pub qid: u16,
    pub cqid: u16,
    pub gpa: u64,
    pub entries: u32,
}

/// Runtime -> host-driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToHost {
    /// First message: who is speaking.
    Hello {
        major: u16,
        minor: u16,
        software: String,
    },
    /// Serve controller `ctrl` with these namespaces (NSIDs 1..). With
    /// `handover`, a runtime that serves it now is asked to let go first
    /// (an upgrade in place); without, the attach is refused while another
    /// runtime serves it.
    Attach {
        ctrl: String,
        namespaces: Vec<NsDecl>,
        #[serde(default)]
        handover: bool,
    },
    /// The runtime no longer touches `ctrl`'s memory: every command it
    /// took is completed and posted (graceful stop or handover).
    Detach { ctrl: String },
    /// A namespace was added on the runtime side.
    NsAdd { ctrl: String, ns: NsDecl },
    /// A namespace was removed on the runtime side (its I/O has drained).
    NsRemove { ctrl: String, nsid: u32 },
    /// Answer to request `req`: `status` is an NVMe status field (0 = done).
    Ack { req: u64, status: u16 },
    /// An asynchronous event for the guest (completion dword 0 of an AER).
    Event { ctrl: String, dw0: u32 },
    /// A failed command, for the error information log.
    Error {
        ctrl: String,
        sqid: u16,
        cid: u16,
        status: u16,
        nsid: u32,
        lba: u64,
    },
    /// The runtime cannot go on with `ctrl` (Controller Fatal Status).
    Fatal { ctrl: String, reason: String },
}

/// Host-driver -> runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToRuntime {
    Welcome {
        major: u16,
        minor: u16,
        software: String,
    },
    /// The link is refused (version): the host-driver closes it.
    Refused {
        reason: String,
    },
    /// `ctrl` is the runtime's. Two fds: the doorbell page memfd and the
    /// queue-state area memfd. What the controller already has follows:
    /// [`ToRuntime::State`], maps, interrupts, queues (with `resume`).
    Attached {
        ctrl: String,
        config: CtrlConfig,
        epoch: u64,
        /// The runtime reaches the shared memory through the link
        /// function's BARs (no descriptors follow).
        #[serde(default)]
        windows: bool,
    },
    /// `ctrl` is not the runtime's (no such controller, namespaces that
    /// do not match, another runtime serves it).
    AttachRefused {
        ctrl: String,
        reason: String,
    },
    /// The attach waits (the previous runtime has not exited yet).
    AttachWaiting {
        ctrl: String,
        reason: String,
    },
    /// Controller state: enabled, memory page size (CC.MPS), shadow doorbells.
    State {
        ctrl: String,
        enabled: bool,
        page_size: u64,
        shadow: Option<Shadow>,
        /// Volatile Write Cache enabled (Set Features); disabled, every
        /// write completes only once durable.
        #[serde(default = "enabled")]
        write_cache: bool,
    },
    /// Guest memory `[gpa, gpa+size)`; with `fd`, one descriptor follows
    /// (mapped at `file_offset`), else the range is recorded, never
    /// accessed (ROM, the device's own BAR). Answered once the runtime can
    /// translate it: the guest may use the memory as soon as its
    /// hypervisor's DMA_MAP returns.
    Map {
        req: u64,
        ctrl: String,
        gpa: u64,
        size: u64,
        file_offset: u64,
        read: bool,
        write: bool,
        fd: bool,
        /// Instead of a descriptor: the region's offset in the link
        /// function's guest memory window.
        #[serde(default)]
        window: Option<u64>,
    },
    /// Remove guest memory; answer once nothing in flight points into it.
    Unmap {
        req: u64,
        ctrl: String,
        gpa: u64,
        size: u64,
        all: bool,
    },
    /// Interrupt eventfds for vectors `first..`: `has_fd[i]` says whether a
    /// descriptor follows for vector `first + i` (false detaches it).
    Irqs {
        ctrl: String,
        first: u16,
        has_fd: Vec<bool>,
    },
    CreateCq {
        req: u64,
        ctrl: String,
        setup: CqSetup,
        /// The queue existed before this runtime attached: recover it from
        /// the queue-state area.
        resume: bool,
    },
    CreateSq {
        req: u64,
        ctrl: String,
        setup: SqSetup,
        resume: bool,
    },
    /// Stop fetching; answer once every command taken is completed and posted.
    DeleteSq {
        req: u64,
        ctrl: String,
        qid: u16,
    },
    DeleteCq {
        req: u64,
        ctrl: String,
        qid: u16,
    },
    /// The controller was reset (every queue is already deleted).
    Reset {
        ctrl: String,
    },
    /// Make every completed write durable (shutdown notification).
    Flush {
        req: u64,
        ctrl: String,
    },
    /// Let go of `ctrl` (it is being removed, or another runtime takes
    /// over): drain, then send [`ToHost::Detach`].
    Detach {
        ctrl: String,
        reason: String,
    },
}

impl ToRuntime {
    /// The controller a message is about, if any.
    pub fn ctrl(&self) -> Option<&str> {
        use ToRuntime::*;
        match self {
            Welcome { .. } | Refused { .. } => None,
            Attached { ctrl, .. }
            | AttachRefused { ctrl, .. }
            | AttachWaiting { ctrl, .. }
            | State { ctrl, .. }
            | Map { ctrl, .. }
            | Unmap { ctrl, .. }
            | Irqs { ctrl, .. }
            | CreateCq { ctrl, .. }
            | CreateSq { ctrl, .. }
            | DeleteSq { ctrl, .. }
            | DeleteCq { ctrl, .. }
            | Reset { ctrl }
            | Flush { ctrl, .. }
            | Detach { ctrl, .. } => Some(ctrl),
        }
    }

    /// How many file descriptors travel with this message.
    pub fn fd_count(&self) -> usize {
        match self {
            ToRuntime::Attached { windows: false, .. } => 2,
            ToRuntime::Map { fd: true, .. } => 1,
            ToRuntime::Irqs { has_fd, .. } => has_fd.iter().filter(|b| **b).count(),
            _ => 0,
        }
    }
}

impl ToHost {
    /// How many file descriptors travel with this message (none today).
    pub fn fd_count(&self) -> usize {
        0
    }

    /// The controller the message is about, if it is about one.
    pub fn ctrl(&self) -> Option<&str> {
        match self {
            ToHost::Hello { .. } | ToHost::Ack { .. } => None,
            ToHost::Attach { ctrl, .. }
            | ToHost::Detach { ctrl }
            | ToHost::NsAdd { ctrl, .. }
            | ToHost::NsRemove { ctrl, .. }
            | ToHost::Event { ctrl, .. }
            | ToHost::Error { ctrl, .. }
            | ToHost::Fatal { ctrl, .. } => Some(ctrl),
        }
    }
}

/// A controller's name, as both sides of the link know it: 1-64 letters,
/// digits, '-', '_' or '.'.
pub fn check_ctrl_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(format!(
            "name must be 1-64 letters, digits, '-', '_' or '.', got '{name}'"
        ));
    }
    Ok(())
}

/// Most characters of a peer's `software` string that logs and messages
/// carry (a Hello may hold up to a frame's size).
pub const SOFTWARE_SHOWN: usize = 128;

/// A peer's `software` string as logs and messages show it: at most
/// [`SOFTWARE_SHOWN`] characters, control characters replaced.
pub fn software_shown(software: &str) -> String {
    let mut s: String = software
        .chars()
        .take(SOFTWARE_SHOWN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if software.chars().nth(SOFTWARE_SHOWN).is_some() {
        s.push_str("...");
    }
    s
}

/// Whether a peer speaking `major.minor` (as `software`) can talk to us
/// (`ours`, e.g. "leapio-hostd 0.1.0"); the error says why not.
pub fn check_version(major: u16, minor: u16, software: &str, ours: &str) -> Result<(), String> {
    if major != PROTOCOL_MAJOR {
        let software = software_shown(software);
        return Err(format!(
            "{software} speaks link protocol {major}.{minor}, {ours} speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}: upgrade one of them"
        ));
    }
    Ok(())
}

/// Serde default of [`ToRuntime::State`]'s `write_cache` (a host-driver of
/// an earlier minor version does not send it).
fn enabled() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_software_string_is_cut_in_refusals() {
        let huge = "x".repeat(1 << 20);
        let e = check_version(PROTOCOL_MAJOR + 1, 0, &huge, "leapio-hostd").unwrap_err();
        assert!(e.len() < 400, "refusal of {} bytes", e.len());
        assert!(e.contains("xxx..."), "{e}");
        let bell = software_shown("socp\u{7}\n0.1");
        assert_eq!(bell, "socp??0.1");
        assert!(check_version(PROTOCOL_MAJOR, 99, &huge, "leapio-hostd").is_ok());
    }
}
