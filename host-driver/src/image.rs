//! A controller's device state as a host-driver that replaces this one
//! needs it, and the sealed memfd it is kept in.
//!
//! The image is everything the control plane knows that is not in guest
//! memory, the doorbell page or the queue-state area (those are shared
//! memory and survive as they are): PCI config space and the MSI-X table,
//! the registers, the admin queue's positions, the I/O queues the guest
//! created, features, outstanding AERs, the namespaces, guest-memory
//! regions and interrupt wiring (naming their descriptors in the keeper),
//! and the runtime that served it (to fence it).
//!
//! The state file holds two copies, written alternately, each with a
//! generation number and a checksum: a host-driver killed while writing
//! one leaves the other, one change older. A change is written before
//! the guest can see its effect (an admin completion is recorded with the
//! state it leads to, and posted again by a successor: posting it twice
//! writes the same bytes into the same slot).

use crate::controller::{ControllerConfig, Features};
use leapio_controller::admin::AdminCore;
use leapio_controller::regs::SavedRegisters;
use leapio_link::qstate::IoCounts;
use leapio_link::{CqSetup, NsDecl, Shadow, SqSetup};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Bumped when the image changes incompatibly.
pub const IMAGE_VERSION: u32 = 1;
/// Bytes per copy (a serialized image is some tens of KiB).
const COPY_SIZE: u64 = 1 << 20;
/// "LKIM".
const MAGIC: u32 = u32::from_le_bytes(*b"LKIM");
const HEADER_LEN: usize = 16;
const COPY_HEADER: u64 = HEADER_LEN as u64;

/// The admin queue's positions.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminImage {
    pub sq_gpa: u64,
    pub sq_size: u32,
    pub sq_head: u32,
    pub cq_gpa: u64,
    pub cq_size: u32,
    pub cq_tail: u32,
    pub cq_head: u32,
    pub cq_phase: bool,
    pub bad_sq_doorbell: bool,
    pub bad_cq_doorbell: bool,
}

/// An admin completion recorded before it was posted: the completion
/// queue's tail and phase before it, and what it says.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingCompletion {
    pub cq_tail: u32,
    pub cq_phase: bool,
    pub sq_head: u32,
    pub cid: u16,
    pub status: u16,
    pub dw0: u32,
}

/// A guest-memory region and the keeper entry of its descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegionImage {
    pub gpa: u64,
    pub size: u64,
    pub file_offset: u64,
    pub read: bool,
    pub write: bool,
    pub fd: Option<String>,
}

/// The runtime process that served the controller (to be fenced by a
/// successor, unless it comes back itself).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeImage {
    pub pid: i32,
    /// Its start time (/proc/PID/stat field 22): a pid reused by another
    /// process is not taken for it.
    pub start_time: u64,
}

/// One controller's device state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CtrlImage {
    pub version: u32,
    pub name: String,
    pub sock: PathBuf,
    pub config: ControllerConfig,
    pub pci: Vec<u8>,
    pub msix_table: Vec<u8>,
    pub regs: SavedRegisters,
    pub admin: Option<AdminImage>,
    pub pending: Option<PendingCompletion>,
    pub cqs: Vec<CqSetup>,
    pub sqs: Vec<SqSetup>,
    pub features: Features,
    pub admin_core: AdminCore,
    pub shadow: Option<Shadow>,
    pub ns_decls: Option<Vec<NsDecl>>,
    pub page_size: u64,
    pub fatal: bool,
    pub events: Vec<u32>,
    pub changed_ns: Vec<u32>,
    pub errors: (u64, Vec<Vec<u8>>),
    pub retired: IoCounts,
    pub regions: Vec<RegionImage>,
    /// Vectors with an eventfd and their keeper entries.
    pub irqs: Vec<(u16, String)>,
    pub runtime: Option<RuntimeImage>,
    /// A vfio-user client is connected (keeper entry `conn`) and has
    /// negotiated the version.
    pub connected: bool,
    pub negotiated: bool,
}

/// The sealed memfd a controller's image is kept in.
pub struct StateFile {
    file: File,
    generation: u64,
    /// The last bytes written (nothing is written if they did not change).
    last: Vec<u8>,
}

fn crc(bytes: &[u8]) -> u32 {
    // FNV-1a: a torn copy is what it must catch.
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

impl StateFile {
    /// A new, empty state file.
    pub fn create() -> io::Result<StateFile> {
        let file = leapio_link::shm::sealed_memfd(c"leapio-ctrl-state", 2 * COPY_SIZE)?;
        Ok(StateFile {
            file,
            generation: 0,
            last: Vec::new(),
        })
    }

    /// The descriptor (to keep it in the keeper).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Write `image` if it changed since the last write.
    pub fn write(&mut self, image: &CtrlImage) -> io::Result<()> {
        let body = serde_json::to_vec(image).map_err(io::Error::other)?;
        if body == self.last {
            return Ok(());
        }
        let len = u64::try_from(body.len()).map_err(io::Error::other)?;
        if len > COPY_SIZE - COPY_HEADER {
            return Err(io::Error::other(format!(
                "controller state of {len} bytes does not fit in {COPY_SIZE}"
            )));
        }
        let generation = self.generation + 1;
        let copy = generation % 2;
        let mut head = [0u8; HEADER_LEN];
        head[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        head[4..8].copy_from_slice(&crc(&body).to_le_bytes());
        // Length and generation last: a copy is valid once its header is.
        let off = copy * COPY_SIZE;
        self.file.write_all_at(&body, off + COPY_HEADER)?;
        head[8..12].copy_from_slice(&u32::try_from(len).unwrap_or(0).to_le_bytes());
        head[12..16].copy_from_slice(&u32::try_from(generation).unwrap_or(0).to_le_bytes());
        self.file.write_all_at(&head, off)?;
        self.generation = generation;
        self.last = body;
        Ok(())
    }

    /// Open a state file a keeper gave back: the newer valid copy.
    pub fn open(file: File) -> Result<(StateFile, CtrlImage), String> {
        let mut best: Option<(u64, Vec<u8>)> = None;
        for copy in 0..2u64 {
            let mut head = [0u8; HEADER_LEN];
            if file.read_exact_at(&mut head, copy * COPY_SIZE).is_err() {
                continue;
            }
            let word =
                |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
            let (magic, sum, len, generation) = (word(0), word(4), word(8), word(12));
            if magic != MAGIC || u64::from(len) > COPY_SIZE - COPY_HEADER || generation == 0 {
                continue;
            }
            let mut body = vec![0u8; len as usize];
            if file
                .read_exact_at(&mut body, copy * COPY_SIZE + COPY_HEADER)
                .is_err()
                || crc(&body) != sum
            {
                continue;
            }
            let g = u64::from(generation);
            if best.as_ref().is_none_or(|(bg, _)| g > *bg) {
                best = Some((g, body));
            }
        }
        let (generation, body) = best.ok_or("no valid copy of the controller state")?;
        let image: CtrlImage =
            serde_json::from_slice(&body).map_err(|e| format!("controller state: {e}"))?;
        if image.version != IMAGE_VERSION {
            return Err(format!(
                "controller state version {} (this host-driver reads {IMAGE_VERSION})",
                image.version
            ));
        }
        Ok((
            StateFile {
                file,
                generation,
                last: body,
            },
            image,
        ))
    }
}

/// A process's start time (field 22 of /proc/PID/stat), if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> CtrlImage {
        CtrlImage {
            version: IMAGE_VERSION,
            name: name.into(),
            sock: "/run/x.sock".into(),
            config: ControllerConfig::default(),
            pci: vec![1; 4096],
            msix_table: vec![2; 528],
            regs: SavedRegisters {
                cc: 0x460001,
                csts: 1,
                aqa: 0x1f001f,
                asq: 0x1000,
                acq: 0x2000,
            },
            admin: None,
            pending: None,
            cqs: Vec::new(),
            sqs: Vec::new(),
            features: Features::default(),
            admin_core: AdminCore::default(),
            shadow: None,
            ns_decls: None,
            page_size: 4096,
            fatal: false,
            events: vec![7],
            changed_ns: Vec::new(),
            errors: (0, Vec::new()),
            retired: IoCounts::default(),
            regions: Vec::new(),
            irqs: vec![(0, "irq/0.1".into())],
            runtime: Some(RuntimeImage {
                pid: 1,
                start_time: 5,
            }),
            connected: true,
            negotiated: true,
        }
    }

    #[test]
    fn the_newer_whole_copy_is_read_back() {
        let mut f = StateFile::create().unwrap();
        f.write(&image("a")).unwrap();
        f.write(&image("b")).unwrap();
        let dup = || f.file().try_clone().unwrap();
        let (_, got) = StateFile::open(dup()).unwrap();
        assert_eq!(got.name, "b");
        // The newer copy torn (a host-driver killed while writing it): the
        // older one is read.
        f.file().write_all_at(b"xx", COPY_HEADER + 3).unwrap();
        let (mut again, got) = StateFile::open(dup()).unwrap();
        assert_eq!(got.name, "a");
        // Writing goes on from there, over the torn copy.
        again.write(&image("c")).unwrap();
        assert_eq!(StateFile::open(dup()).unwrap().1.name, "c");
        // Both torn: an error, not a panic or a default device.
        f.file().write_all_at(b"xx", COPY_HEADER + 3).unwrap();
        f.file()
            .write_all_at(b"xx", COPY_SIZE + COPY_HEADER + 3)
            .unwrap();
        assert!(StateFile::open(dup()).is_err());
    }

    #[test]
    fn a_process_start_time_tells_a_reused_pid() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        assert_eq!(start_time(i32::MAX), None);
    }
}
