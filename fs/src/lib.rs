//! A passthrough file system: a directory of the runtime's machine (the
//! share) served to a guest through FUSE's operations, by node id and
//! file handle.
//!
//! The guest is not trusted, so nothing it names can reach outside the
//! share:
//! - every node is an `O_PATH` descriptor, and every name is one component
//!   ([`leapio_fuse::check_component`]: no `/`, `.` or `..`), resolved from
//!   its parent's descriptor with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`: a symlink is a node of its
//!   own, never followed here (the guest's kernel follows it, by lookups
//!   that come back here);
//! - nothing is resolved by path from the share's root, so a rename racing
//!   a lookup cannot lead it out;
//! - open handles are bounded ([`Config::max_handles`]: EMFILE past it);
//! - device nodes are not created (EPERM): a guest could otherwise make
//!   one that opens a device of the host's.
//!
//! Files are created with the runtime's credentials and then given to the
//! caller's uid and gid when the runtime may do so (as root); permission
//! checks are the runtime's. The mapping of a guest's credentials
//! configured per share is still to come.

use leapio_fuse::abi::fattr;
use leapio_fuse::abi::{Attr, AttrOut, EntryOut, OpenOut, SetattrIn, StatfsOut};
use leapio_fuse::{check_component, reply::Dirents};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, RawDir, ResolveFlags, Stat, Uid, CWD};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use leapio_fuse::abi::ROOT_ID;

// The errno values replies carry (Linux's numbers: the guest reads them).
use leapio_fuse::errno as e;

/// How every name is resolved from its parent: beneath it, through no
/// magic link, on no other mount.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// How a share is served.
#[derive(Clone, Debug)]
pub struct Config {
    /// Open files and directories at most (EMFILE past it).
    pub max_handles: usize,
    /// How long the guest may keep names and attributes without asking.
    pub timeout: Duration,
    /// Refuse every change (EROFS).
    pub read_only: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_handles: 4096,
            timeout: Duration::from_secs(1),
            read_only: false,
        }
    }
}

/// A node the guest knows: an `O_PATH` descriptor and how many lookups
/// the guest has not forgotten.
#[derive(Debug)]
struct Inode {
    fd: OwnedFd,
    key: (u64, u64),
    kind: FileType,
    /// Changed under the tables' lock.
    lookups: AtomicU64,
}

/// An open file or directory.
#[derive(Debug)]
struct Handle {
    fd: OwnedFd,
    node: u64,
}

#[derive(Debug, Default)]
struct Tables {
    inodes: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<(u64, u64), u64>,
    next_node: u64,
    handles: HashMap<u64, Arc<Handle>>,
    next_handle: u64,
}

/// The file system of one share.
#[derive(Debug)]
pub struct PassthroughFs {
    cfg: Config,
    tables: Mutex<Tables>,
}

type Result<T> = std::result::Result<T, i32>;

fn errno(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

fn u64_of<T: TryInto<u64>>(v: T) -> u64 {
    v.try_into().unwrap_or(0)
}

fn u32_of<T: TryInto<u32>>(v: T) -> u32 {
    v.try_into().unwrap_or(0)
}

/// A uid to give (-1 means "no change" to chown: not a uid).
fn uid_of(raw: u32) -> Result<Uid> {
    if raw == u32::MAX {
        return Err(e::EINVAL);
    }
    Ok(Uid::from_raw(raw))
}

fn gid_of(raw: u32) -> Result<Gid> {
    if raw == u32::MAX {
        return Err(e::EINVAL);
    }
    Ok(Gid::from_raw(raw))
}

fn name_of(name: &[u8]) -> Result<&OsStr> {
    check_component(name)?;
    Ok(OsStr::from_bytes(name))
}

/// `/proc/self/fd/N`: the node itself, for the calls that take no
/// `O_PATH` descriptor (open, chmod, utimensat).
fn proc_path(fd: BorrowedFd<'_>) -> String {
    use rustix::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn attr_of(st: &Stat) -> Attr {
    Attr {
        ino: u64_of(st.st_ino),
        size: u64_of(st.st_size),
        blocks: u64_of(st.st_blocks),
        atime: u64_of(st.st_atime),
        mtime: u64_of(st.st_mtime),
        ctime: u64_of(st.st_ctime),
        atimensec: u32_of(st.st_atime_nsec),
        mtimensec: u32_of(st.st_mtime_nsec),
        ctimensec: u32_of(st.st_ctime_nsec),
        mode: u32_of(st.st_mode),
        nlink: u32_of(st.st_nlink),
        uid: u32_of(st.st_uid),
        gid: u32_of(st.st_gid),
        rdev: u32_of(st.st_rdev),
        blksize: u32_of(st.st_blksize),
        flags: 0,
    }
}

fn stat(fd: BorrowedFd<'_>) -> Result<Stat> {
    rustix::fs::statat(fd, "", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
}

/// The caller, for what it creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
}

impl PassthroughFs {
    /// Serve the directory `root`.
    pub fn new(root: &Path, cfg: Config) -> std::io::Result<PassthroughFs> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let key = (u64_of(st.st_dev), u64_of(st.st_ino));
        let mut t = Tables {
            next_node: ROOT_ID + 1,
            next_handle: 1,
            ..Tables::default()
        };
        t.inodes.insert(
            ROOT_ID,
            Arc::new(Inode {
                fd,
                key,
                kind: FileType::Directory,
                // The root is never forgotten.
                lookups: AtomicU64::new(u64::MAX / 2),
            }),
        );
        t.by_key.insert(key, ROOT_ID);
        Ok(PassthroughFs {
            cfg,
            tables: Mutex::new(t),
        })
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn node(&self, id: u64) -> Result<Arc<Inode>> {
        self.tables().inodes.get(&id).cloned().ok_or(e::ENOENT)
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.tables().handles.get(&fh).cloned().ok_or(e::EBADF)
    }

    fn writable(&self) -> Result<()> {
        if self.cfg.read_only {
            Err(e::EROFS)
        } else {
            Ok(())
        }
    }

    fn valid(&self) -> (u64, u32) {
        (self.cfg.timeout.as_secs(), self.cfg.timeout.subsec_nanos())
    }

    /// The number of nodes the guest holds (tests, figures).
    pub fn nodes(&self) -> usize {
        self.tables().inodes.len()
    }

    /// The number of open handles.
    pub fn handles(&self) -> usize {
        self.tables().handles.len()
    }

    /// `name` in directory `parent`, one more lookup of it.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<EntryOut> {
        let dir = self.node(parent)?;
        let name = name_of(name)?;
        let fd = rustix::fs::openat2(
            &dir.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )
        .map_err(errno)?;
        let st = stat(fd.as_fd())?;
        let key = (u64_of(st.st_dev), u64_of(st.st_ino));
        let id = {
            let mut t = self.tables();
            match t.by_key.get(&key).copied() {
                Some(id) => {
                    if let Some(n) = t.inodes.get(&id) {
                        n.lookups.fetch_add(1, Ordering::Relaxed);
                    }
                    // (the new descriptor is dropped: the node has one)
                    id
                }
                None => {
                    let id = t.next_node;
                    t.next_node += 1;
                    t.inodes.insert(
                        id,
                        Arc::new(Inode {
                            fd,
                            key,
                            kind: FileType::from_raw_mode(st.st_mode),
                            lookups: AtomicU64::new(1),
                        }),
                    );
                    t.by_key.insert(key, id);
                    id
                }
            }
        };
        let (secs, nsecs) = self.valid();
        Ok(EntryOut {
            nodeid: id,
            generation: 0,
            entry_valid: secs,
            attr_valid: secs,
            entry_valid_nsec: nsecs,
            attr_valid_nsec: nsecs,
            attr: attr_of(&st),
        })
    }

    /// The guest forgets `n` lookups of `node`.
    pub fn forget(&self, node: u64, n: u64) {
        if node == ROOT_ID {
            return;
        }
        let mut t = self.tables();
        let gone = t.inodes.get(&node).and_then(|i| {
            let left = i.lookups.load(Ordering::Relaxed).saturating_sub(n);
            i.lookups.store(left, Ordering::Relaxed);
            (left == 0).then_some(i.key)
        });
        if let Some(key) = gone {
            t.inodes.remove(&node);
            t.by_key.remove(&key);
        }
    }

    /// A node's attributes.
    pub fn getattr(&self, node: u64) -> Result<AttrOut> {
        let n = self.node(node)?;
        let st = stat(n.fd.as_fd())?;
        let (secs, nsecs) = self.valid();
        Ok(AttrOut {
            attr_valid: secs,
            attr_valid_nsec: nsecs,
            dummy: 0,
            attr: attr_of(&st),
        })
    }

    /// Change a node's attributes (`arg.valid`: which).
    pub fn setattr(&self, node: u64, arg: &SetattrIn) -> Result<AttrOut> {
        self.writable()?;
        let n = self.node(node)?;
        if n.kind == FileType::Symlink && arg.valid & (fattr::MODE | fattr::SIZE) != 0 {
            return Err(e::EINVAL);
        }
        let path = proc_path(n.fd.as_fd());
        if arg.valid & fattr::MODE != 0 {
            rustix::fs::chmodat(CWD, &path, Mode::from_raw_mode(arg.mode), AtFlags::empty())
                .map_err(errno)?;
        }
        if arg.valid & (fattr::UID | fattr::GID) != 0 {
            let uid = if arg.valid & fattr::UID != 0 {
                Some(uid_of(arg.uid)?)
            } else {
                None
            };
            let gid = if arg.valid & fattr::GID != 0 {
                Some(gid_of(arg.gid)?)
            } else {
                None
            };
            rustix::fs::chownat(
                &n.fd,
                "",
                uid,
                gid,
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(errno)?;
        }
        if arg.valid & fattr::SIZE != 0 {
            let h = if arg.valid & fattr::FH != 0 {
                Some(self.handle(arg.fh)?)
            } else {
                None
            };
            match h {
                Some(h) => rustix::fs::ftruncate(&h.fd, arg.size).map_err(errno)?,
                None => {
                    let fd =
                        rustix::fs::open(&path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
                            .map_err(errno)?;
                    rustix::fs::ftruncate(&fd, arg.size).map_err(errno)?;
                }
            }
        }
        let times = fattr::ATIME | fattr::MTIME | fattr::ATIME_NOW | fattr::MTIME_NOW;
        if arg.valid & times != 0 && n.kind != FileType::Symlink {
            let ts = |set: u32, now: u32, secs: u64, nsecs: u32| rustix::fs::Timespec {
                tv_sec: if arg.valid & now != 0 || arg.valid & set == 0 {
                    0
                } else {
                    i64::try_from(secs).unwrap_or(i64::MAX)
                },
                tv_nsec: if arg.valid & now != 0 {
                    rustix::fs::UTIME_NOW
                } else if arg.valid & set == 0 {
                    rustix::fs::UTIME_OMIT
                } else {
                    rustix::fs::Nsecs::from(nsecs)
                },
            };
            let t = rustix::fs::Timestamps {
                last_access: ts(fattr::ATIME, fattr::ATIME_NOW, arg.atime, arg.atimensec),
                last_modification: ts(fattr::MTIME, fattr::MTIME_NOW, arg.mtime, arg.mtimensec),
            };
            rustix::fs::utimensat(CWD, &path, &t, AtFlags::empty()).map_err(errno)?;
        }
        self.getattr(node)
    }

    /// A symlink's target.
    pub fn readlink(&self, node: u64) -> Result<Vec<u8>> {
        let n = self.node(node)?;
        let t = rustix::fs::readlinkat(&n.fd, "", Vec::new()).map_err(errno)?;
        Ok(t.into_bytes())
    }

    /// Give what `caller` created to it (where the runtime may).
    fn give(&self, entry: &EntryOut, caller: Caller) {
        if entry.attr.uid == caller.uid && entry.attr.gid == caller.gid {
            return;
        }
        if let (Ok(n), Ok(uid), Ok(gid)) = (
            self.node(entry.nodeid),
            uid_of(caller.uid),
            gid_of(caller.gid),
        ) {
            // Not permitted (the runtime is not root): the runtime's own.
            let _ = rustix::fs::chownat(
                &n.fd,
                "",
                Some(uid),
                Some(gid),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            );
        }
    }

    fn created(&self, parent: u64, name: &[u8], caller: Caller) -> Result<EntryOut> {
        let entry = self.lookup(parent, name)?;
        self.give(&entry, caller);
        match self.getattr(entry.nodeid) {
            Ok(a) => Ok(EntryOut {
                attr: a.attr,
                ..entry
            }),
            Err(_) => Ok(entry),
        }
    }

    /// A new directory.
    pub fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<EntryOut> {
        self.writable()?;
        let dir = self.node(parent)?;
        let os = name_of(name)?;
        rustix::fs::mkdirat(&dir.fd, os, Mode::from_raw_mode(mode & !umask)).map_err(errno)?;
        self.created(parent, name, caller)
    }

    /// A new FIFO, socket or regular file (no devices: EPERM).
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<EntryOut> {
        self.writable()?;
        let kind = FileType::from_raw_mode(mode);
        if !matches!(
            kind,
            FileType::Fifo | FileType::Socket | FileType::RegularFile
        ) {
            return Err(e::EPERM);
        }
        let dir = self.node(parent)?;
        let os = name_of(name)?;
        rustix::fs::mknodat(
            &dir.fd,
            os,
            kind,
            Mode::from_raw_mode(mode & !umask & 0o7777),
            0,
        )
        .map_err(errno)?;
        self.created(parent, name, caller)
    }

    /// A new symlink `name` in `parent` pointing at `target` (any text: it
    /// is never followed here).
    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<EntryOut> {
        self.writable()?;
        let dir = self.node(parent)?;
        let os = name_of(name)?;
        if target.is_empty() {
            return Err(e::ENOENT);
        }
        rustix::fs::symlinkat(OsStr::from_bytes(target), &dir.fd, os).map_err(errno)?;
        self.created(parent, name, caller)
    }

    /// Another name for `node`.
    pub fn link(&self, node: u64, parent: u64, name: &[u8]) -> Result<EntryOut> {
        self.writable()?;
        let n = self.node(node)?;
        let dir = self.node(parent)?;
        let os = name_of(name)?;
        if n.kind == FileType::Directory {
            return Err(e::EPERM);
        }
        rustix::fs::linkat(&n.fd, "", &dir.fd, os, AtFlags::EMPTY_PATH)
            .or_else(|_| {
                rustix::fs::linkat(
                    CWD,
                    proc_path(n.fd.as_fd()).as_str(),
                    &dir.fd,
                    os,
                    AtFlags::SYMLINK_FOLLOW,
                )
            })
            .map_err(errno)?;
        self.lookup(parent, name)
    }

    /// Remove a name (`dir`: a directory's).
    pub fn remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        self.writable()?;
        let d = self.node(parent)?;
        let os = name_of(name)?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&d.fd, os, flags).map_err(errno)
    }

    /// Rename (`flags`: RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.writable()?;
        let a = self.node(parent)?;
        let b = self.node(newparent)?;
        let (old, new) = (name_of(name)?, name_of(newname)?);
        let flags = rustix::fs::RenameFlags::from_bits(flags).ok_or(e::EINVAL)?;
        rustix::fs::renameat_with(&a.fd, old, &b.fd, new, flags).map_err(errno)
    }

    fn add_handle(&self, fd: OwnedFd, node: u64) -> Result<u64> {
        let mut t = self.tables();
        if t.handles.len() >= self.cfg.max_handles {
            return Err(e::EMFILE);
        }
        let fh = t.next_handle;
        t.next_handle += 1;
        t.handles.insert(fh, Arc::new(Handle { fd, node }));
        Ok(fh)
    }

    fn open_flags(&self, flags: u32) -> Result<OFlags> {
        let f = OFlags::from_bits_retain(flags)
            & !(OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY | OFlags::NOFOLLOW);
        let acc = f & OFlags::RWMODE;
        if self.cfg.read_only && (acc != OFlags::RDONLY || f.contains(OFlags::TRUNC)) {
            return Err(e::EROFS);
        }
        Ok(f | OFlags::CLOEXEC)
    }

    /// Open `node` (`flags`: the guest's open flags).
    pub fn open(&self, node: u64, flags: u32) -> Result<OpenOut> {
        let n = self.node(node)?;
        if n.kind == FileType::Symlink {
            return Err(e::ELOOP);
        }
        let f = self.open_flags(flags)?;
        let fd =
            rustix::fs::open(proc_path(n.fd.as_fd()).as_str(), f, Mode::empty()).map_err(errno)?;
        Ok(OpenOut {
            fh: self.add_handle(fd, node)?,
            open_flags: 0,
            backing_id: 0,
        })
    }

    /// Create and open `name` in `parent`.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        flags: u32,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<(EntryOut, OpenOut)> {
        self.writable()?;
        let dir = self.node(parent)?;
        let os = name_of(name)?;
        let f = self.open_flags(flags)? | OFlags::CREATE | OFlags::NOFOLLOW;
        let f = if flags & OFlags::EXCL.bits() != 0 {
            f | OFlags::EXCL
        } else {
            f
        };
        let fd = rustix::fs::openat2(
            &dir.fd,
            os,
            f,
            Mode::from_raw_mode(mode & !umask & 0o7777),
            BENEATH,
        )
        .map_err(errno)?;
        let entry = self.created(parent, name, caller)?;
        match self.add_handle(fd, entry.nodeid) {
            Ok(fh) => Ok((
                entry,
                OpenOut {
                    fh,
                    open_flags: 0,
                    backing_id: 0,
                },
            )),
            Err(err) => {
                self.forget(entry.nodeid, 1);
                Err(err)
            }
        }
    }

    /// Up to `size` bytes of open file `fh` at `offset`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let mut buf = vec![0u8; usize::try_from(size).map_err(|_| e::EINVAL)?];
        let n = rustix::io::pread(&h.fd, &mut buf[..], offset).map_err(errno)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Write `data` to open file `fh` at `offset`: bytes written.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        self.writable()?;
        let h = self.handle(fh)?;
        let n = rustix::io::pwrite(&h.fd, data, offset).map_err(errno)?;
        u32::try_from(n).map_err(|_| e::EIO)
    }

    /// Close open file or directory `fh`.
    pub fn release(&self, fh: u64) -> Result<()> {
        self.tables()
            .handles
            .remove(&fh)
            .map(|_| ())
            .ok_or(e::EBADF)
    }

    /// Make open file `fh` durable (`data_only`: fdatasync).
    pub fn fsync(&self, fh: u64, data_only: bool) -> Result<()> {
        let h = self.handle(fh)?;
        if data_only {
            rustix::fs::fdatasync(&h.fd).map_err(errno)
        } else {
            rustix::fs::fsync(&h.fd).map_err(errno)
        }
    }

    /// Open directory `node` for listing.
    pub fn opendir(&self, node: u64) -> Result<OpenOut> {
        let n = self.node(node)?;
        if n.kind != FileType::Directory {
            return Err(e::ENOTDIR);
        }
        let fd = rustix::fs::open(
            proc_path(n.fd.as_fd()).as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(OpenOut {
            fh: self.add_handle(fd, node)?,
            open_flags: 0,
            backing_id: 0,
        })
    }

    /// The entries of directory `fh` from `offset` (0, or an entry's `off`
    /// from an earlier listing), at most `size` bytes of them; `plus`:
    /// each with its lookup (READDIRPLUS; `.` and `..` get none).
    pub fn readdir(&self, fh: u64, offset: u64, size: u32, plus: bool) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        rustix::fs::seek(&h.fd, rustix::fs::SeekFrom::Start(offset)).map_err(errno)?;
        let mut out = Dirents::new(size);
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 16 << 10];
        let mut dir = RawDir::new(&h.fd, &mut buf);
        while let Some(ent) = dir.next() {
            let ent = ent.map_err(errno)?;
            let name = ent.file_name().to_bytes();
            let typ = ent.file_type().as_raw_mode() >> 12;
            let off = ent.next_entry_cookie();
            let fits = if !plus {
                out.push(ent.ino(), off, typ, name)
            } else if name == b"." || name == b".." {
                out.push_plus(
                    &EntryOut {
                        attr: Attr {
                            ino: ent.ino(),
                            ..Attr::default()
                        },
                        ..EntryOut::default()
                    },
                    off,
                    typ,
                    name,
                )
            } else if !out.fits(true, name.len()) {
                false
            } else {
                match self.lookup(h.node, name) {
                    Ok(entry) => out.push_plus(&entry, off, typ, name),
                    // Gone meanwhile: left out.
                    Err(_) => true,
                }
            };
            if !fits {
                break;
            }
        }
        Ok(out.bytes().to_vec())
    }

    /// Whether the runtime may reach `node` as `mask` asks (R_OK, W_OK,
    /// X_OK; 0: it exists).
    pub fn access(&self, node: u64, mask: u32) -> Result<()> {
        let n = self.node(node)?;
        if self.cfg.read_only && mask & 2 != 0 {
            return Err(e::EROFS);
        }
        if n.kind == FileType::Symlink {
            return Ok(());
        }
        let access = rustix::fs::Access::from_bits(mask).ok_or(e::EINVAL)?;
        rustix::fs::accessat(
            CWD,
            proc_path(n.fd.as_fd()).as_str(),
            access,
            AtFlags::empty(),
        )
        .map_err(errno)
    }

    /// Allocate (or, by `mode`, punch or zero) a range of open file `fh`.
    pub fn fallocate(&self, fh: u64, mode: u32, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        let h = self.handle(fh)?;
        let mode = rustix::fs::FallocateFlags::from_bits(mode).ok_or(e::EINVAL)?;
        rustix::fs::fallocate(&h.fd, mode, offset, len).map_err(errno)
    }

    /// Where the next data (`whence` 3) or hole (4), or a plain position,
    /// is in open file `fh`.
    pub fn lseek(&self, fh: u64, offset: u64, whence: u32) -> Result<u64> {
        use rustix::fs::SeekFrom;
        let h = self.handle(fh)?;
        let pos = match whence {
            0 => SeekFrom::Start(offset),
            3 => SeekFrom::Data(offset),
            4 => SeekFrom::Hole(offset),
            _ => return Err(e::EINVAL),
        };
        rustix::fs::seek(&h.fd, pos).map_err(errno)
    }

    /// The file system's figures.
    pub fn statfs(&self, node: u64) -> Result<StatfsOut> {
        let n = self.node(node)?;
        let s = rustix::fs::fstatfs(&n.fd).map_err(errno)?;
        Ok(StatfsOut {
            blocks: u64_of(s.f_blocks),
            bfree: u64_of(s.f_bfree),
            bavail: u64_of(s.f_bavail),
            files: u64_of(s.f_files),
            ffree: u64_of(s.f_ffree),
            bsize: u32_of(s.f_bsize),
            namelen: u32_of(s.f_namelen),
            frsize: u32_of(s.f_frsize),
            ..StatfsOut::default()
        })
    }
}

mod server;

pub use server::Server;

#[cfg(test)]
mod tests;
