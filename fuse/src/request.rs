//! A request parsed from the bytes the guest gave: its lengths checked
//! against them, its names and strings NUL-terminated inside them.

use crate::abi::{self, op, InHeader};
use zerocopy::FromBytes;

/// errno values the parser's callers answer with (Linux's numbers: the
/// guest's kernel reads them).
pub mod errno {
    #![allow(missing_docs)]
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const ENOTDIR: i32 = 20;
    pub const EINVAL: i32 = 22;
    pub const EMFILE: i32 = 24;
    pub const EROFS: i32 = 30;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOSYS: i32 = 38;
    pub const ELOOP: i32 = 40;
    pub const EPROTO: i32 = 71;
}

/// The longest name of one directory entry.
pub const NAME_MAX: usize = 255;

/// What the negotiation (INIT) settled that changes how requests look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proto {
    /// The minor version agreed.
    pub minor: u32,
    /// `init::SETXATTR_EXT` agreed: SETXATTR's argument is 16 bytes.
    pub setxattr_ext: bool,
}

impl Default for Proto {
    fn default() -> Proto {
        Proto {
            minor: abi::KERNEL_MINOR_VERSION,
            setxattr_ext: false,
        }
    }
}

/// What is wrong with a request. The reply is EINVAL (or nothing, when
/// not even the header could be read: the chain is given back empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than a header.
    #[error("a request of {0} bytes, shorter than its header")]
    ShortHeader(usize),
    /// The header's length against the bytes given.
    #[error("the header says {said} bytes, the request has {got}")]
    Length {
        /// The header's `len`.
        said: u32,
        /// Bytes given.
        got: usize,
    },
    /// Extensions longer than the request.
    #[error("extensions of {0} bytes do not fit in the request")]
    Extensions(usize),
    /// An argument structure cut short.
    #[error("{op}: {got} bytes of arguments, {need} needed")]
    Short {
        /// The operation.
        op: &'static str,
        /// Bytes there.
        got: usize,
        /// Bytes its argument needs.
        need: usize,
    },
    /// A name or string without its terminating NUL.
    #[error("{0}: a name without its terminating NUL")]
    Unterminated(&'static str),
    /// A payload whose length disagrees with the size its argument gives.
    #[error("{op}: the argument says {said} bytes, {got} follow")]
    Payload {
        /// The operation.
        op: &'static str,
        /// The size in the argument.
        said: u64,
        /// Bytes that follow.
        got: usize,
    },
}

/// One operation with its arguments, borrowed from the request's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op<'a> {
    Lookup {
        name: &'a [u8],
    },
    Forget(abi::ForgetIn),
    BatchForget {
        count: u32,
        nodes: &'a [u8],
    },
    Getattr(abi::GetattrIn),
    Setattr(abi::SetattrIn),
    Readlink,
    /// `name` in the directory, pointing at `target`.
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Mknod {
        arg: abi::MknodIn,
        name: &'a [u8],
    },
    Mkdir {
        arg: abi::MkdirIn,
        name: &'a [u8],
    },
    Unlink {
        name: &'a [u8],
    },
    Rmdir {
        name: &'a [u8],
    },
    /// RENAME (flags 0) and RENAME2.
    Rename {
        newdir: u64,
        flags: u32,
        old: &'a [u8],
        new: &'a [u8],
    },
    Link {
        arg: abi::LinkIn,
        name: &'a [u8],
    },
    Open(abi::OpenIn),
    Read(abi::ReadIn),
    Write {
        arg: abi::WriteIn,
        data: &'a [u8],
    },
    Statfs,
    Release(abi::ReleaseIn),
    Fsync(abi::FsyncIn),
    Setxattr {
        arg: abi::SetxattrIn,
        name: &'a [u8],
        value: &'a [u8],
    },
    Getxattr {
        arg: abi::GetxattrIn,
        name: &'a [u8],
    },
    Listxattr(abi::GetxattrIn),
    Removexattr {
        name: &'a [u8],
    },
    Flush(abi::FlushIn),
    Init(abi::InitIn),
    Opendir(abi::OpenIn),
    Readdir(abi::ReadIn),
    Readdirplus(abi::ReadIn),
    Releasedir(abi::ReleaseIn),
    Fsyncdir(abi::FsyncIn),
    Getlk(abi::LkIn),
    /// SETLK, and SETLKW (`wait`).
    Setlk {
        arg: abi::LkIn,
        wait: bool,
    },
    Access(abi::AccessIn),
    Create {
        arg: abi::CreateIn,
        name: &'a [u8],
    },
    Interrupt(abi::InterruptIn),
    Destroy,
    Fallocate(abi::FallocateIn),
    Lseek(abi::LseekIn),
    Syncfs,
    /// An operation this server does not implement (the reply: ENOSYS).
    Unsupported {
        opcode: u32,
    },
}

/// A request: its header and its operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// As the guest sent it.
    pub header: InHeader,
    /// What to do.
    pub op: Op<'a>,
}

/// The arguments after the header, read front to back.
struct Args<'a> {
    op: &'static str,
    rest: &'a [u8],
}

impl<'a> Args<'a> {
    fn fixed<T: FromBytes>(&mut self) -> Result<T, ParseError> {
        let need = std::mem::size_of::<T>();
        match T::read_from_prefix(self.rest) {
            Ok((v, rest)) => {
                self.rest = rest;
                Ok(v)
            }
            Err(_) => Err(ParseError::Short {
                op: self.op,
                got: self.rest.len(),
                need,
            }),
        }
    }

    /// The first `n` bytes of an argument the older protocols send
    /// shorter (INIT, SETXATTR): the rest of `T` zero.
    fn fixed_prefix<T: FromBytes + zerocopy::IntoBytes>(
        &mut self,
        n: usize,
    ) -> Result<T, ParseError> {
        if self.rest.len() < n {
            return Err(ParseError::Short {
                op: self.op,
                got: self.rest.len(),
                need: n,
            });
        }
        let mut v = T::new_zeroed();
        let dst = v.as_mut_bytes();
        let n = n.min(dst.len());
        dst[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(v)
    }

    /// A NUL-terminated string (without its NUL).
    fn cstr(&mut self) -> Result<&'a [u8], ParseError> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::Unterminated(self.op))?;
        let s = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

impl<'a> Request<'a> {
    /// Parse the request in `buf` (the chain's readable bytes; any bytes
    /// after the header's length are ignored).
    pub fn parse(buf: &'a [u8], proto: Proto) -> Result<Request<'a>, ParseError> {
        let Ok((header, _)) = InHeader::read_from_prefix(buf) else {
            return Err(ParseError::ShortHeader(buf.len()));
        };
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        if len < std::mem::size_of::<InHeader>() || len > buf.len() {
            return Err(ParseError::Length {
                said: header.len,
                got: buf.len(),
            });
        }
        let ext = usize::from(header.total_extlen) * 8;
        let end = len
            .checked_sub(ext)
            .filter(|&e| e >= std::mem::size_of::<InHeader>())
            .ok_or(ParseError::Extensions(ext))?;
        let mut a = Args {
            op: name_of(header.opcode),
            rest: &buf[std::mem::size_of::<InHeader>()..end],
        };
        let op = match header.opcode {
            op::LOOKUP => Op::Lookup { name: a.cstr()? },
            op::FORGET => Op::Forget(a.fixed()?),
            op::BATCH_FORGET => {
                let arg: abi::BatchForgetIn = a.fixed()?;
                let nodes = a.rest();
                let want = u64::from(arg.count) * 16;
                if (nodes.len() as u64) < want {
                    return Err(ParseError::Payload {
                        op: a.op,
                        said: want,
                        got: nodes.len(),
                    });
                }
                Op::BatchForget {
                    count: arg.count,
                    nodes: &nodes[..usize::try_from(want).unwrap_or(0)],
                }
            }
            op::GETATTR => Op::Getattr(a.fixed()?),
            op::SETATTR => Op::Setattr(a.fixed()?),
            op::READLINK => Op::Readlink,
            op::SYMLINK => {
                let name = a.cstr()?;
                Op::Symlink {
                    name,
                    target: a.cstr()?,
                }
            }
            op::MKNOD => {
                let arg = a.fixed()?;
                Op::Mknod {
                    arg,
                    name: a.cstr()?,
                }
            }
            op::MKDIR => {
                let arg = a.fixed()?;
                Op::Mkdir {
                    arg,
                    name: a.cstr()?,
                }
            }
            op::UNLINK => Op::Unlink { name: a.cstr()? },
            op::RMDIR => Op::Rmdir { name: a.cstr()? },
            op::RENAME | op::RENAME2 => {
                let (newdir, flags) = if header.opcode == op::RENAME {
                    (a.fixed::<abi::RenameIn>()?.newdir, 0)
                } else {
                    let r: abi::Rename2In = a.fixed()?;
                    (r.newdir, r.flags)
                };
                let old = a.cstr()?;
                Op::Rename {
                    newdir,
                    flags,
                    old,
                    new: a.cstr()?,
                }
            }
            op::LINK => {
                let arg = a.fixed()?;
                Op::Link {
                    arg,
                    name: a.cstr()?,
                }
            }
            op::OPEN => Op::Open(a.fixed()?),
            op::READ => Op::Read(a.fixed()?),
            op::WRITE => {
                let arg: abi::WriteIn = a.fixed()?;
                let data = a.rest();
                if data.len() != usize::try_from(arg.size).unwrap_or(usize::MAX) {
                    return Err(ParseError::Payload {
                        op: "WRITE",
                        said: u64::from(arg.size),
                        got: data.len(),
                    });
                }
                Op::Write { arg, data }
            }
            op::STATFS => Op::Statfs,
            op::RELEASE => Op::Release(a.fixed()?),
            op::FSYNC => Op::Fsync(a.fixed()?),
            op::SETXATTR => {
                let arg: abi::SetxattrIn = if proto.setxattr_ext {
                    a.fixed()?
                } else {
                    a.fixed_prefix(8)?
                };
                let name = a.cstr()?;
                let value = a.rest();
                if value.len() != usize::try_from(arg.size).unwrap_or(usize::MAX) {
                    return Err(ParseError::Payload {
                        op: "SETXATTR",
                        said: u64::from(arg.size),
                        got: value.len(),
                    });
                }
                Op::Setxattr { arg, name, value }
            }
            op::GETXATTR => {
                let arg = a.fixed()?;
                Op::Getxattr {
                    arg,
                    name: a.cstr()?,
                }
            }
            op::LISTXATTR => Op::Listxattr(a.fixed()?),
            op::REMOVEXATTR => Op::Removexattr { name: a.cstr()? },
            op::FLUSH => Op::Flush(a.fixed()?),
            // major and minor at least; 16 bytes before 7.36, 64 after
            op::INIT => {
                let n = a.rest.len().clamp(8, std::mem::size_of::<abi::InitIn>());
                Op::Init(a.fixed_prefix(n)?)
            }
            op::OPENDIR => Op::Opendir(a.fixed()?),
            op::READDIR => Op::Readdir(a.fixed()?),
            op::READDIRPLUS => Op::Readdirplus(a.fixed()?),
            op::RELEASEDIR => Op::Releasedir(a.fixed()?),
            op::FSYNCDIR => Op::Fsyncdir(a.fixed()?),
            op::GETLK => Op::Getlk(a.fixed()?),
            op::SETLK | op::SETLKW => Op::Setlk {
                arg: a.fixed()?,
                wait: header.opcode == op::SETLKW,
            },
            op::ACCESS => Op::Access(a.fixed()?),
            op::CREATE => {
                let arg = a.fixed()?;
                Op::Create {
                    arg,
                    name: a.cstr()?,
                }
            }
            op::INTERRUPT => Op::Interrupt(a.fixed()?),
            op::DESTROY => Op::Destroy,
            op::FALLOCATE => Op::Fallocate(a.fixed()?),
            op::LSEEK => Op::Lseek(a.fixed()?),
            op::SYNCFS => Op::Syncfs,
            opcode => Op::Unsupported { opcode },
        };
        Ok(Request { header, op })
    }
}

impl Op<'_> {
    /// The nodes of a BATCH_FORGET.
    pub fn forgets(&self) -> impl Iterator<Item = abi::ForgetOne> + '_ {
        let nodes = match self {
            Op::BatchForget { nodes, .. } => *nodes,
            _ => &[],
        };
        nodes
            .chunks_exact(16)
            .filter_map(|c| abi::ForgetOne::read_from_bytes(c).ok())
    }

    /// Whether the kernel waits for a reply (FORGET and BATCH_FORGET get
    /// none).
    pub fn wants_reply(&self) -> bool {
        !matches!(self, Op::Forget(_) | Op::BatchForget { .. })
    }
}

/// Whether `name` is one directory entry's name a server may resolve:
/// not empty, no `/`, not `.` or `..`, at most 255 bytes. The errno to
/// answer with otherwise.
pub fn check_component(name: &[u8]) -> Result<(), i32> {
    if name.is_empty() {
        return Err(errno::ENOENT);
    }
    if name.len() > NAME_MAX {
        return Err(errno::ENAMETOOLONG);
    }
    if name == b"." || name == b".." || name.contains(&b'/') {
        return Err(errno::EINVAL);
    }
    Ok(())
}

/// The opcode's name, for errors and logs.
pub fn name_of(opcode: u32) -> &'static str {
    match opcode {
        op::LOOKUP => "LOOKUP",
        op::FORGET => "FORGET",
        op::GETATTR => "GETATTR",
        op::SETATTR => "SETATTR",
        op::READLINK => "READLINK",
        op::SYMLINK => "SYMLINK",
        op::MKNOD => "MKNOD",
        op::MKDIR => "MKDIR",
        op::UNLINK => "UNLINK",
        op::RMDIR => "RMDIR",
        op::RENAME => "RENAME",
        op::LINK => "LINK",
        op::OPEN => "OPEN",
        op::READ => "READ",
        op::WRITE => "WRITE",
        op::STATFS => "STATFS",
        op::RELEASE => "RELEASE",
        op::FSYNC => "FSYNC",
        op::SETXATTR => "SETXATTR",
        op::GETXATTR => "GETXATTR",
        op::LISTXATTR => "LISTXATTR",
        op::REMOVEXATTR => "REMOVEXATTR",
        op::FLUSH => "FLUSH",
        op::INIT => "INIT",
        op::OPENDIR => "OPENDIR",
        op::READDIR => "READDIR",
        op::RELEASEDIR => "RELEASEDIR",
        op::FSYNCDIR => "FSYNCDIR",
        op::GETLK => "GETLK",
        op::SETLK => "SETLK",
        op::SETLKW => "SETLKW",
        op::ACCESS => "ACCESS",
        op::CREATE => "CREATE",
        op::INTERRUPT => "INTERRUPT",
        op::DESTROY => "DESTROY",
        op::BATCH_FORGET => "BATCH_FORGET",
        op::FALLOCATE => "FALLOCATE",
        op::READDIRPLUS => "READDIRPLUS",
        op::RENAME2 => "RENAME2",
        op::LSEEK => "LSEEK",
        op::SYNCFS => "SYNCFS",
        _ => "an unknown operation",
    }
}

#[cfg(test)]
mod tests;
