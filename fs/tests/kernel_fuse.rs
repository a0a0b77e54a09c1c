//! The server against a real peer: this machine's Linux FUSE client,
//! through `/dev/fuse` (the same protocol virtio-fs carries, another
//! transport). A share is mounted and used with ordinary file calls; what
//! the calls see and what the share's directory holds must agree.
//!
//! Needs root and `/dev/fuse`; without them the test says why and passes
//! nothing off as tested (it returns at once).

use leapio_fs::{Config, PassthroughFs, Server};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

struct Mounted {
    mnt: tempfile::TempDir,
    thread: Option<JoinHandle<usize>>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.mnt.path(), UnmountFlags::DETACH);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve `share` on a fresh mount point: None when this machine cannot
/// (no /dev/fuse, or not allowed to mount).
fn mount(share: &Path) -> Option<Mounted> {
    let dev: OwnedFd =
        match rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("kernel_fuse: no /dev/fuse here ({e}): not run");
                return None;
            }
        };
    let mnt = tempfile::tempdir().expect("mount point");
    let opts = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
        rustix::fd::AsRawFd::as_raw_fd(&dev)
    );
    let data = std::ffi::CString::new(opts).expect("no NUL");
    if let Err(e) = rustix::mount::mount(
        "leapio-share",
        mnt.path(),
        "fuse.leapio",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    ) {
        eprintln!("kernel_fuse: cannot mount a FUSE file system here ({e}): not run");
        return None;
    }
    let server = Arc::new(Server::new(
        PassthroughFs::new(share, Config::default()).expect("share"),
    ));
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; (1 << 20) + (64 << 10)];
        let mut served = 0usize;
        loop {
            let n = match rustix::io::read(&dev, &mut buf[..]) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::NOENT) => continue,
                // ENODEV: unmounted
                Err(_) => return served,
            };
            served += 1;
            if let Some(reply) = server.handle(&buf[..n]) {
                // ENOENT: the request was interrupted meanwhile
                let _ = rustix::io::write(&dev, &reply);
            }
        }
    });
    Some(Mounted {
        mnt,
        thread: Some(thread),
    })
}

#[test]
fn a_mounted_share_serves_the_kernels_file_calls() {
    let share = tempfile::tempdir().expect("share");
    std::fs::write(share.path().join("before.txt"), b"there before the mount\n").unwrap();
    let Some(m) = mount(share.path()) else {
        return;
    };
    let mnt = m.mnt.path();
    // What was there, read through the mount.
    assert_eq!(
        std::fs::read(mnt.join("before.txt")).unwrap(),
        b"there before the mount\n"
    );
    // Files and directories made through the mount land in the share.
    std::fs::create_dir_all(mnt.join("a/b/c")).unwrap();
    std::fs::write(mnt.join("a/b/c/file"), b"deep").unwrap();
    assert_eq!(
        std::fs::read(share.path().join("a/b/c/file")).unwrap(),
        b"deep"
    );
    // Large writes and reads (more than one request each), at offsets.
    let big: Vec<u8> = (0..3 * (1 << 20) + 12345)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(mnt.join("big"), &big).unwrap();
    assert!(std::fs::read(mnt.join("big")).unwrap() == big);
    assert!(std::fs::read(share.path().join("big")).unwrap() == big);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("big"))
        .unwrap();
    f.seek(SeekFrom::Start(1_000_000)).unwrap();
    f.write_all(b"OVERWRITTEN").unwrap();
    f.sync_all().unwrap();
    let mut back = [0u8; 11];
    f.seek(SeekFrom::Start(1_000_000)).unwrap();
    f.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"OVERWRITTEN");
    f.set_len(4096).unwrap();
    drop(f);
    assert_eq!(
        std::fs::metadata(share.path().join("big")).unwrap().len(),
        4096
    );
    // Listings.
    for i in 0..100 {
        std::fs::write(mnt.join(format!("a/n{i:03}")), b"").unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(mnt.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 101, "b and 100 files");
    assert_eq!(names[0], "b");
    assert_eq!(names[100], "n099");
    // Rename, links, symlinks, permissions, removal.
    std::fs::rename(mnt.join("a/n000"), mnt.join("renamed")).unwrap();
    assert!(share.path().join("renamed").exists());
    assert!(!share.path().join("a/n000").exists());
    std::fs::hard_link(mnt.join("renamed"), mnt.join("hard")).unwrap();
    assert_eq!(std::fs::metadata(mnt.join("hard")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("a/b/c/file", mnt.join("sym")).unwrap();
    assert_eq!(std::fs::read(mnt.join("sym")).unwrap(), b"deep");
    assert_eq!(
        std::fs::read_link(share.path().join("sym")).unwrap(),
        Path::new("a/b/c/file")
    );
    std::fs::set_permissions(mnt.join("renamed"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        std::fs::metadata(share.path().join("renamed"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    std::fs::remove_dir_all(mnt.join("a")).unwrap();
    assert!(!share.path().join("a").exists());
    assert_eq!(
        std::fs::read_dir(mnt).unwrap().count(),
        std::fs::read_dir(share.path()).unwrap().count()
    );
    // The file system's figures come from the share's.
    let st = rustix::fs::statfs(mnt).unwrap();
    assert!(st.f_blocks > 0);
    drop(m);
}
