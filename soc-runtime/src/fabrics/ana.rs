//! Asymmetric Namespace Access of a target: one ANA group holding every
//! namespace of the subsystem, in the state the target's `ana=` gives it
//! (and that the control socket's `target_ana` changes while it runs).
//! Hosts with several paths to a subsystem (Linux's native multipath, the
//! runtime's `multipath:` service) read the state from the ANA log page,
//! learn of a change through an Asynchronous Event, and prefer optimized
//! paths; I/O sent down an inaccessible one completes with ANA
//! Inaccessible, a path error the host retries down another.

use leapio_nvme::log::AnaState;
use leapio_nvme::Status;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// The one ANA group's id.
pub const GROUP: u32 = 1;
/// ANA Transition Time reported, seconds.
pub const ANATT: u8 = 10;

/// The state name `ana=` takes.
pub fn parse_state(s: &str) -> Result<u8, String> {
    Ok(match s {
        "optimized" => AnaState::OPTIMIZED,
        "non-optimized" => AnaState::NON_OPTIMIZED,
        "inaccessible" => AnaState::INACCESSIBLE,
        other => {
            return Err(format!(
                "ANA state '{other}': expected optimized, non-optimized or inaccessible"
            ))
        }
    })
}

pub fn state_name(s: u8) -> &'static str {
    match s {
        AnaState::OPTIMIZED => "optimized",
        AnaState::NON_OPTIMIZED => "non-optimized",
        AnaState::INACCESSIBLE => "inaccessible",
        AnaState::PERSISTENT_LOSS => "persistent-loss",
        _ => "change",
    }
}

/// The subsystem's ANA reporting: off unless the target has `ana=`.
pub struct Ana {
    enabled: bool,
    state: AtomicU8,
    /// Bumped at each change (the log's change count).
    change: AtomicU64,
}

impl Ana {
    pub fn new(state: Option<u8>) -> Ana {
        Ana {
            enabled: state.is_some(),
            state: AtomicU8::new(state.unwrap_or(AnaState::OPTIMIZED)),
            change: AtomicU64::new(1),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    pub fn change_count(&self) -> u64 {
        self.change.load(Ordering::Acquire)
    }

    /// Change the state; hosts are told by an Asynchronous Event.
    pub fn set(&self, state: u8) -> Result<(), String> {
        if !self.enabled {
            return Err("this target reports no ANA state (start it with ana=STATE)".into());
        }
        if self.state.swap(state, Ordering::AcqRel) != state {
            self.change.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// What an I/O command gets in this state, if not served.
    pub fn refuses_io(&self) -> Option<Status> {
        if !self.enabled {
            return None;
        }
        match self.state() {
            AnaState::INACCESSIBLE => Some(Status::ANA_INACCESSIBLE),
            AnaState::PERSISTENT_LOSS => Some(Status::ANA_PERSISTENT_LOSS),
            AnaState::CHANGE => Some(Status::ANA_TRANSITION),
            _ => None,
        }
    }

    /// The ANA log page: a header, then the group's descriptor with the
    /// namespaces `nsids` unless `groups_only` (LSP bit 0, RGO).
    pub fn log_page(&self, nsids: &[u32], groups_only: bool) -> Vec<u8> {
        let change = self.change_count();
        let mut v = Vec::with_capacity(16 + 32 + 4 * nsids.len());
        v.extend_from_slice(&change.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&[0u8; 6]);
        v.extend_from_slice(&GROUP.to_le_bytes());
        let listed: &[u32] = if groups_only { &[] } else { nsids };
        let n = u32::try_from(listed.len()).unwrap_or(0);
        v.extend_from_slice(&n.to_le_bytes());
        v.extend_from_slice(&change.to_le_bytes());
        v.push(self.state());
        v.extend_from_slice(&[0u8; 15]);
        for id in listed {
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_page_has_the_group_its_namespaces_and_the_change_count() {
        let a = Ana::new(Some(AnaState::OPTIMIZED));
        let p = a.log_page(&[1, 2], false);
        assert_eq!(p.len(), 16 + 32 + 8);
        assert_eq!(u64::from_le_bytes(p[..8].try_into().unwrap()), 1);
        assert_eq!(u16::from_le_bytes([p[8], p[9]]), 1);
        assert_eq!(u32::from_le_bytes(p[16..20].try_into().unwrap()), GROUP);
        assert_eq!(u32::from_le_bytes(p[20..24].try_into().unwrap()), 2);
        assert_eq!(p[32], AnaState::OPTIMIZED);
        assert_eq!(u32::from_le_bytes(p[52..56].try_into().unwrap()), 2);
        assert_eq!(a.refuses_io(), None);
        a.set(AnaState::INACCESSIBLE).unwrap();
        let p = a.log_page(&[1, 2], true);
        assert_eq!(p.len(), 16 + 32);
        assert_eq!(u64::from_le_bytes(p[..8].try_into().unwrap()), 2);
        assert_eq!(p[32], AnaState::INACCESSIBLE);
        assert_eq!(a.refuses_io(), Some(Status::ANA_INACCESSIBLE));
        assert!(Ana::new(None).set(AnaState::OPTIMIZED).is_err());
        assert_eq!(Ana::new(None).refuses_io(), None);
    }
}
