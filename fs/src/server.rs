//! The FUSE server of a share: a request's bytes in, its reply's bytes
//! out, whatever carries them (a virtqueue, or `/dev/fuse` in tests).

use crate::{Caller, PassthroughFs};
use leapio_fuse::abi::{init, InHeader, LseekOut, WriteOut};
use leapio_fuse::{errno, reply, Op, ParseError, Proto, Request};
use std::sync::{Mutex, PoisonError};
use zerocopy::{FromBytes, IntoBytes};

/// The largest WRITE (and READ) this server takes.
pub const MAX_WRITE: u32 = 1 << 20;

/// What the server asks of the kernel at INIT (those it offers).
const WANT: u32 = init::ASYNC_READ
    | init::BIG_WRITES
    | init::ATOMIC_O_TRUNC
    | init::MAX_PAGES
    | init::DO_READDIRPLUS
    | init::READDIRPLUS_AUTO
    | init::PARALLEL_DIROPS;

/// One share's FUSE server.
#[derive(Debug)]
pub struct Server {
    fs: PassthroughFs,
    proto: Mutex<Proto>,
}

impl Server {
    /// Serve `fs`.
    pub fn new(fs: PassthroughFs) -> Server {
        Server {
            fs,
            proto: Mutex::new(Proto::default()),
        }
    }

    /// The file system served.
    pub fn fs(&self) -> &PassthroughFs {
        &self.fs
    }

    /// Run the request in `buf`: its reply, or `None` when it gets none
    /// (FORGET, BATCH_FORGET, INTERRUPT) or cannot be answered (not even
    /// a header). Errors go back to the guest as errno replies.
    pub fn handle(&self, buf: &[u8]) -> Option<Vec<u8>> {
        let proto = *self.proto.lock().unwrap_or_else(PoisonError::into_inner);
        let req = match Request::parse(buf, proto) {
            Ok(r) => r,
            Err(ParseError::ShortHeader(_)) => return None,
            Err(_) => {
                // (a request past its header: the header is there)
                let (h, _) = InHeader::read_from_prefix(buf).ok()?;
                let unique = h.unique;
                return Some(reply::error(unique, errno::EINVAL).to_vec());
            }
        };
        let unique = req.header.unique;
        match self.run(&req) {
            Ok(Some(parts)) => Some(reply::ok(unique, &[&parts])),
            Ok(None) => None,
            Err(e) => Some(reply::error(unique, e).to_vec()),
        }
    }

    fn run(&self, req: &Request<'_>) -> Result<Option<Vec<u8>>, i32> {
        let fs = &self.fs;
        let node = req.header.nodeid;
        let caller = Caller {
            uid: req.header.uid,
            gid: req.header.gid,
        };
        let bytes = |b: &[u8]| Ok(Some(b.to_vec()));
        let empty = || Ok(Some(Vec::new()));
        match &req.op {
            Op::Init(arg) => {
                let (out, len) = reply::init(arg, WANT, MAX_WRITE, MAX_WRITE)?;
                *self.proto.lock().unwrap_or_else(PoisonError::into_inner) = Proto {
                    minor: out.minor,
                    setxattr_ext: out.flags & init::SETXATTR_EXT != 0,
                };
                bytes(&out.as_bytes()[..len])
            }
            Op::Destroy | Op::Syncfs => empty(),
            Op::Forget(arg) => {
                fs.forget(node, arg.nlookup);
                Ok(None)
            }
            Op::BatchForget { .. } => {
                for f in req.op.forgets() {
                    fs.forget(f.nodeid, f.nlookup);
                }
                Ok(None)
            }
            Op::Interrupt(_) => Ok(None),
            Op::Lookup { name } => bytes(fs.lookup(node, name)?.as_bytes()),
            Op::Getattr(_) => bytes(fs.getattr(node)?.as_bytes()),
            Op::Setattr(arg) => bytes(fs.setattr(node, arg)?.as_bytes()),
            Op::Readlink => Ok(Some(fs.readlink(node)?)),
            Op::Symlink { name, target } => {
                bytes(fs.symlink(node, name, target, caller)?.as_bytes())
            }
            Op::Mknod { arg, name } => bytes(
                fs.mknod(node, name, arg.mode, arg.umask, caller)?
                    .as_bytes(),
            ),
            Op::Mkdir { arg, name } => bytes(
                fs.mkdir(node, name, arg.mode | 0o040000, arg.umask, caller)?
                    .as_bytes(),
            ),
            Op::Unlink { name } => fs.remove(node, name, false).and_then(|()| empty()),
            Op::Rmdir { name } => fs.remove(node, name, true).and_then(|()| empty()),
            Op::Rename {
                newdir,
                flags,
                old,
                new,
            } => fs
                .rename(node, old, *newdir, new, *flags)
                .and_then(|()| empty()),
            Op::Link { arg, name } => bytes(fs.link(arg.oldnodeid, node, name)?.as_bytes()),
            Op::Open(arg) => bytes(fs.open(node, arg.flags)?.as_bytes()),
            Op::Opendir(_) => bytes(fs.opendir(node)?.as_bytes()),
            Op::Create { arg, name } => {
                let (e, o) = fs.create(node, name, arg.flags, arg.mode, arg.umask, caller)?;
                Ok(Some([e.as_bytes(), o.as_bytes()].concat()))
            }
            Op::Read(arg) => Ok(Some(fs.read(
                arg.fh,
                arg.offset,
                arg.size.min(MAX_WRITE),
            )?)),
            Op::Write { arg, data } => {
                let size = fs.write(arg.fh, arg.offset, data)?;
                bytes(WriteOut { size, padding: 0 }.as_bytes())
            }
            Op::Release(arg) | Op::Releasedir(arg) => fs.release(arg.fh).and_then(|()| empty()),
            Op::Flush(_) => empty(),
            Op::Fsync(arg) | Op::Fsyncdir(arg) => fs
                .fsync(arg.fh, arg.fsync_flags & 1 != 0)
                .and_then(|()| empty()),
            Op::Readdir(arg) => Ok(Some(fs.readdir(arg.fh, arg.offset, arg.size, false)?)),
            Op::Readdirplus(arg) => Ok(Some(fs.readdir(arg.fh, arg.offset, arg.size, true)?)),
            Op::Statfs => bytes(fs.statfs(node)?.as_bytes()),
            Op::Access(arg) => fs.access(node, arg.mask).and_then(|()| empty()),
            Op::Fallocate(arg) => fs
                .fallocate(arg.fh, arg.mode, arg.offset, arg.length)
                .and_then(|()| empty()),
            Op::Lseek(arg) => {
                let offset = fs.lseek(arg.fh, arg.offset, arg.whence)?;
                bytes(LseekOut { offset }.as_bytes())
            }
            // Extended attributes and POSIX locks are still to come: the
            // kernel remembers ENOSYS and stops asking (locks stay local).
            Op::Getxattr { .. }
            | Op::Listxattr(_)
            | Op::Setxattr { .. }
            | Op::Removexattr { .. }
            | Op::Getlk(_)
            | Op::Setlk { .. }
            | Op::Unsupported { .. } => Err(errno::ENOSYS),
        }
    }
}
