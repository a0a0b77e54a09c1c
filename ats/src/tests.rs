//! Helpers shared by the unit tests of this crate.

use std::ffi::CString;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::testing::memfd;
use crate::{Access, Domain, Prot, Snapshot};

/// A unique memfd name, so tests running in parallel can look for their own
/// mappings in /proc/self/maps.
pub(crate) fn unique_name(tag: &str) -> CString {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    CString::new(format!("leapio-ats-{tag}-{}-{n}", std::process::id())).expect("no NUL")
}

/// Map a fresh memfd of `size` bytes at `gpa`; returns its name.
pub(crate) fn map_ram(d: &Domain, gpa: u64, size: u64, prot: Prot) -> CString {
    let name = unique_name("ram");
    let fd = memfd(&name, size).expect("memfd");
    d.map(gpa, size, Some(fd), 0, prot).expect("map");
    name
}

/// Whether a memfd named `name` is mapped in this process.
pub(crate) fn is_mapped(name: &CString) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let needle = format!("/memfd:{} ", name.to_str().expect("utf8"));
    maps.lines().any(|l| l.contains(&needle))
}

/// Host address of `gpa` as an integer, for comparisons.
pub(crate) fn host(snap: &Snapshot, gpa: u64) -> usize {
    snap.translate(gpa, 1, Access::Read)
        .expect("translate")
        .addr()
}
