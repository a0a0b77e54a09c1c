use super::*;
use leapio_fuse::abi::Dirent;
use listing::entries;

const ME: Caller = Caller { uid: 0, gid: 0 };

const EEXIST: i32 = 17;

/// Directory listings parsed back (what the guest's kernel reads).
mod listing {
    use super::*;

    /// (name, off, nodeid) of each entry; nodeid 0 without READDIRPLUS.
    pub fn entries(buf: &[u8], plus: bool) -> Vec<(Vec<u8>, u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        let le64 = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let le32 = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        while at < buf.len() {
            let (nodeid, d) = if plus {
                (le64(buf, at), at + std::mem::size_of::<EntryOut>())
            } else {
                (0, at)
            };
            let off = le64(buf, d + 8);
            let namelen = le32(buf, d + 16) as usize;
            let name = buf[d + std::mem::size_of::<Dirent>()..][..namelen].to_vec();
            out.push((name, off, nodeid));
            at = (d + std::mem::size_of::<Dirent>() + namelen).next_multiple_of(8);
        }
        out
    }
}

fn share() -> (tempfile::TempDir, PassthroughFs) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), b"hello, guest\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/inner"), b"x").unwrap();
    let fs = PassthroughFs::new(dir.path(), Config::default()).unwrap();
    (dir, fs)
}

#[test]
fn lookups_give_nodes_their_attributes_and_forget_drops_them() {
    let (dir, fs) = share();
    let e = fs.lookup(ROOT_ID, b"hello.txt").unwrap();
    assert!(e.nodeid > ROOT_ID);
    assert_eq!(e.attr.size, 13);
    assert_eq!(e.attr.mode & 0o170000, 0o100000);
    // The same file under another name is the same node.
    std::fs::hard_link(dir.path().join("hello.txt"), dir.path().join("again")).unwrap();
    let again = fs.lookup(ROOT_ID, b"again").unwrap();
    assert_eq!(again.nodeid, e.nodeid);
    assert_eq!(fs.getattr(e.nodeid).unwrap().attr.nlink, 2);
    assert_eq!(fs.nodes(), 2);
    fs.forget(e.nodeid, 1);
    assert!(fs.getattr(e.nodeid).is_ok(), "one lookup left");
    fs.forget(e.nodeid, 1);
    assert_eq!(fs.getattr(e.nodeid).unwrap_err(), e::ENOENT);
    assert_eq!(fs.nodes(), 1, "the root stays");
    fs.forget(ROOT_ID, 1000);
    assert!(fs.getattr(ROOT_ID).is_ok());
    assert_eq!(fs.lookup(ROOT_ID, b"missing").unwrap_err(), e::ENOENT);
    let sub = fs.lookup(ROOT_ID, b"sub").unwrap();
    assert_eq!(fs.lookup(sub.nodeid, b"inner").unwrap().attr.size, 1);
}

#[test]
fn names_that_are_not_one_component_are_refused() {
    let (_dir, fs) = share();
    for bad in [&b".."[..], b".", b"sub/inner", b"/etc", b"../../etc"] {
        assert_eq!(fs.lookup(ROOT_ID, bad).unwrap_err(), e::EINVAL, "{bad:?}");
        assert_eq!(fs.mkdir(ROOT_ID, bad, 0o755, 0, ME).unwrap_err(), e::EINVAL);
        assert_eq!(
            fs.create(ROOT_ID, bad, 0o101, 0o644, 0, ME).unwrap_err(),
            e::EINVAL
        );
        assert_eq!(
            fs.rename(ROOT_ID, b"hello.txt", ROOT_ID, bad, 0)
                .unwrap_err(),
            e::EINVAL
        );
    }
}

#[test]
fn symlinks_are_nodes_never_followed_out_of_the_share() {
    let (dir, fs) = share();
    std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("file-out")).unwrap();
    let out = fs.lookup(ROOT_ID, b"out").unwrap();
    assert_eq!(out.attr.mode & 0o170000, 0o120000, "the link itself");
    assert_eq!(fs.readlink(out.nodeid).unwrap(), b"/etc");
    // Looking up a name "inside" the link does not reach /etc.
    assert_eq!(fs.lookup(out.nodeid, b"passwd").unwrap_err(), e::ENOTDIR);
    assert_eq!(fs.opendir(out.nodeid).unwrap_err(), e::ENOTDIR);
    let f = fs.lookup(ROOT_ID, b"file-out").unwrap();
    assert_eq!(fs.open(f.nodeid, 0).unwrap_err(), e::ELOOP);
    // A symlink the guest makes is text, whatever it says.
    let l = fs
        .symlink(ROOT_ID, b"mine", b"../../../etc/shadow", ME)
        .unwrap();
    assert_eq!(fs.readlink(l.nodeid).unwrap(), b"../../../etc/shadow");
    assert_eq!(fs.open(l.nodeid, 0).unwrap_err(), e::ELOOP);
    // Creating through a symlink's name does not follow it.
    assert_eq!(
        fs.create(ROOT_ID, b"file-out", 0o1, 0o644, 0, ME)
            .unwrap_err(),
        e::ELOOP
    );
    assert!(std::fs::read("/etc/hostname").is_ok());
}

#[test]
fn files_are_created_written_read_and_synced() {
    let (dir, fs) = share();
    let (e, o) = fs
        .create(ROOT_ID, b"new", 0o2 | 0o100, 0o666, 0o022, ME)
        .unwrap();
    assert_eq!(e.attr.mode & 0o777, 0o644, "the umask applies");
    assert_eq!(fs.write(o.fh, 0, b"abcdef").unwrap(), 6);
    assert_eq!(fs.write(o.fh, 3, b"XY").unwrap(), 2);
    assert_eq!(fs.read(o.fh, 0, 100).unwrap(), b"abcXYf");
    assert_eq!(fs.read(o.fh, 4, 1).unwrap(), b"Y");
    assert_eq!(fs.read(o.fh, 100, 10).unwrap(), b"");
    fs.fsync(o.fh, true).unwrap();
    fs.fsync(o.fh, false).unwrap();
    assert_eq!(fs.handles(), 1);
    fs.release(o.fh).unwrap();
    assert_eq!(fs.release(o.fh).unwrap_err(), e::EBADF);
    assert_eq!(fs.read(o.fh, 0, 1).unwrap_err(), e::EBADF);
    assert_eq!(std::fs::read(dir.path().join("new")).unwrap(), b"abcXYf");
    // O_EXCL on an existing name
    assert_eq!(
        fs.create(ROOT_ID, b"new", 0o2 | 0o100 | 0o200, 0o644, 0, ME)
            .unwrap_err(),
        EEXIST
    );
    // open and truncate through setattr
    let o = fs.open(e.nodeid, 0o2).unwrap();
    let a = fs
        .setattr(
            e.nodeid,
            &SetattrIn {
                valid: fattr::SIZE | fattr::FH,
                fh: o.fh,
                size: 2,
                ..SetattrIn::default()
            },
        )
        .unwrap();
    assert_eq!(a.attr.size, 2);
    let a = fs
        .setattr(
            e.nodeid,
            &SetattrIn {
                valid: fattr::MODE | fattr::MTIME,
                mode: 0o600,
                mtime: 1_000_000,
                mtimensec: 5,
                ..SetattrIn::default()
            },
        )
        .unwrap();
    assert_eq!(
        (a.attr.mode & 0o777, a.attr.mtime, a.attr.mtimensec),
        (0o600, 1_000_000, 5)
    );
    let bad = SetattrIn {
        valid: fattr::UID,
        uid: u32::MAX,
        ..SetattrIn::default()
    };
    assert_eq!(fs.setattr(e.nodeid, &bad).unwrap_err(), e::EINVAL);
    fs.release(o.fh).unwrap();
}

#[test]
fn directories_are_made_listed_in_pieces_renamed_and_removed() {
    let (dir, fs) = share();
    let d = fs.mkdir(ROOT_ID, b"d", 0o755, 0, ME).unwrap();
    for i in 0..40 {
        let name = format!("file-{i:02}");
        let e = fs
            .mknod(d.nodeid, name.as_bytes(), 0o100644, 0, ME)
            .unwrap();
        // the guest's kernel lets go of it
        fs.forget(e.nodeid, 1);
    }
    let h = fs.opendir(d.nodeid).unwrap();
    // Small replies: the listing goes on from each last entry's offset.
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let buf = fs.readdir(h.fh, off, 200, false).unwrap();
        let got = entries(&buf, false);
        if got.is_empty() {
            break;
        }
        off = got.last().unwrap().1;
        names.extend(got.into_iter().map(|(n, _, _)| n));
    }
    names.sort();
    assert_eq!(names.len(), 42, "40 files, . and ..");
    assert_eq!(names[0], b".");
    assert_eq!(names[2], b"file-00");
    // With lookups: each entry gets a node (not . and ..).
    let before = fs.nodes();
    let buf = fs.readdir(h.fh, 0, 64 << 10, true).unwrap();
    let plus = entries(&buf, true);
    assert_eq!(plus.len(), 42);
    for (name, _, nodeid) in &plus {
        if name == b"." || name == b".." {
            assert_eq!(*nodeid, 0);
        } else {
            assert!(*nodeid > ROOT_ID);
        }
    }
    assert_eq!(fs.nodes(), before + 40);
    // A reply too small for one entry with its lookup: nothing, and no
    // lookup counted.
    let buf = fs.readdir(h.fh, plus[1].1, 100, true).unwrap();
    assert!(buf.is_empty());
    assert_eq!(fs.nodes(), before + 40);
    fs.release(h.fh).unwrap();

    fs.rename(d.nodeid, b"file-00", ROOT_ID, b"moved", 0)
        .unwrap();
    assert!(dir.path().join("moved").exists());
    assert_eq!(fs.remove(ROOT_ID, b"d", true), Err(39), "ENOTEMPTY");
    fs.remove(ROOT_ID, b"moved", false).unwrap();
    assert!(!dir.path().join("moved").exists());
    assert_eq!(fs.remove(ROOT_ID, b"moved", false).unwrap_err(), e::ENOENT);
    // RENAME_NOREPLACE
    assert_eq!(
        fs.rename(ROOT_ID, b"hello.txt", ROOT_ID, b"d", 1)
            .unwrap_err(),
        EEXIST
    );
    assert_eq!(
        fs.rename(ROOT_ID, b"hello.txt", ROOT_ID, b"x", 0xdead_0000)
            .unwrap_err(),
        e::EINVAL
    );
}

#[test]
fn links_devices_and_statfs() {
    let (dir, fs) = share();
    let f = fs.lookup(ROOT_ID, b"hello.txt").unwrap();
    let l = fs.link(f.nodeid, ROOT_ID, b"hard").unwrap();
    assert_eq!(l.nodeid, f.nodeid);
    assert_eq!(
        std::fs::read(dir.path().join("hard")).unwrap(),
        b"hello, guest\n"
    );
    let sub = fs.lookup(ROOT_ID, b"sub").unwrap();
    assert_eq!(
        fs.link(sub.nodeid, ROOT_ID, b"dirlink").unwrap_err(),
        e::EPERM
    );
    // a block device, a character device: refused; a FIFO: made
    assert_eq!(
        fs.mknod(ROOT_ID, b"blk", 0o060600, 0, ME).unwrap_err(),
        e::EPERM
    );
    assert_eq!(
        fs.mknod(ROOT_ID, b"chr", 0o020600, 0, ME).unwrap_err(),
        e::EPERM
    );
    let p = fs.mknod(ROOT_ID, b"pipe", 0o010600, 0, ME).unwrap();
    assert_eq!(p.attr.mode & 0o170000, 0o010000);
    let s = fs.statfs(ROOT_ID).unwrap();
    assert!(s.blocks > 0 && s.bsize > 0 && s.namelen >= 255);
}

#[test]
fn open_handles_are_bounded_and_a_read_only_share_refuses_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"data").unwrap();
    let fs = PassthroughFs::new(
        dir.path(),
        Config {
            max_handles: 3,
            ..Config::default()
        },
    )
    .unwrap();
    let f = fs.lookup(ROOT_ID, b"f").unwrap();
    let hs: Vec<u64> = (0..3).map(|_| fs.open(f.nodeid, 0).unwrap().fh).collect();
    assert_eq!(fs.open(f.nodeid, 0).unwrap_err(), e::EMFILE);
    assert_eq!(fs.opendir(ROOT_ID).unwrap_err(), e::EMFILE);
    fs.release(hs[0]).unwrap();
    fs.open(f.nodeid, 0).unwrap();

    let ro = PassthroughFs::new(
        dir.path(),
        Config {
            read_only: true,
            ..Config::default()
        },
    )
    .unwrap();
    let f = ro.lookup(ROOT_ID, b"f").unwrap();
    let o = ro.open(f.nodeid, 0).unwrap();
    assert_eq!(ro.read(o.fh, 0, 10).unwrap(), b"data");
    assert_eq!(ro.write(o.fh, 0, b"x").unwrap_err(), e::EROFS);
    assert_eq!(ro.open(f.nodeid, 0o2).unwrap_err(), e::EROFS);
    assert_eq!(ro.open(f.nodeid, 0o1000).unwrap_err(), e::EROFS, "O_TRUNC");
    assert_eq!(ro.mkdir(ROOT_ID, b"d", 0o755, 0, ME).unwrap_err(), e::EROFS);
    assert_eq!(ro.remove(ROOT_ID, b"f", false).unwrap_err(), e::EROFS);
    assert_eq!(
        ro.create(ROOT_ID, b"g", 0o101, 0o644, 0, ME).unwrap_err(),
        e::EROFS
    );
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"data");
}
