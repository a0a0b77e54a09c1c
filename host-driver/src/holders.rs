//! Who else holds a controller's shared memory: the other half of fencing
//! a runtime process.
//!
//! A runtime that exited can have left its descriptors (or mappings) to a
//! helper: one it forked, or one it passed them to. Its exit then proves
//! nothing. The doorbell page and the queue-state area are given to
//! runtimes only: a process holding them that is neither this host-driver,
//! its fd keeper, nor a hypervisor it serves (QEMU maps the doorbell page;
//! an SoC's QEMU maps both as BARs) got them from a runtime. While one
//! does, the runtime is not fenced.
//!
//! Guest memory itself is not judged this way: other devices' backends
//! (vhost-user, virtiofsd) hold it legitimately. A helper given only the
//! guest-memory descriptor goes unseen; on a DPU the function's bus
//! mastering (or a function-level reset) is what cuts a dead runtime's
//! access, whatever its processes kept.

use std::os::unix::fs::MetadataExt;

/// (st_dev, st_ino) of an open file.
pub fn identity(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u64, u64)> {
    let f = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let m = f.metadata().ok()?;
    Some((m.dev(), m.ino()))
}

/// Processes, other than those in `allowed`, that hold one of `files`
/// (device, inode) as a descriptor or a mapping (`/proc/PID/fd`,
/// `/proc/PID/maps`). Processes this one may not inspect are not seen.
pub fn holders(files: &[(u64, u64)], allowed: &[i32]) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<i32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !allowed.contains(pid) && holds(*pid, files))
        .collect();
    out.sort_unstable();
    out
}

fn holds(pid: i32, files: &[(u64, u64)]) -> bool {
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if std::fs::metadata(fd.path()).is_ok_and(|m| files.contains(&(m.dev(), m.ino()))) {
                return true;
            }
        }
    }
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    maps.lines().any(|line| {
        let mut f = line.split_whitespace().skip(3);
        let (Some(dev), Some(ino)) = (f.next(), f.next()) else {
            return false;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            return false;
        };
        let (Ok(major), Ok(minor), Ok(ino)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
            ino.parse::<u64>(),
        ) else {
            return false;
        };
        ino != 0 && files.contains(&(libc::makedev(major, minor), ino))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_or_a_mapping_is_seen_and_the_allowed_are_not() {
        let f = leapio_link::shm::sealed_memfd(c"held", 4096).unwrap();
        let id = identity(f.as_fd()).unwrap();
        let me = std::process::id() as i32;
        assert!(holders(&[id], &[me]).is_empty());
        assert_eq!(holders(&[id], &[]), vec![me]);
        // (A helper process given the descriptor: tests/tests/split.rs.)
        // A mapping alone counts too: this process maps it, then closes it.
        let map = leapio_link::shm::SharedMem::open(
            std::os::fd::OwnedFd::from(f.try_clone().unwrap()),
            0,
            4096,
            "test",
        )
        .unwrap();
        drop(f);
        assert_eq!(holders(&[id], &[]), vec![me]);
        drop(map);
        assert!(holders(&[id], &[]).is_empty());
    }
}
