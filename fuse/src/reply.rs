//! Replies: a header and the result's bytes, and directory listings packed
//! as the kernel reads them.

use crate::abi::{self, Dirent, EntryOut, InitIn, InitOut, OutHeader};
use crate::request::errno;
use zerocopy::IntoBytes;

const OUT: usize = std::mem::size_of::<OutHeader>();

/// The reply to request `unique`: its header, then `parts` in order.
pub fn ok(unique: u64, parts: &[&[u8]]) -> Vec<u8> {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let mut v = Vec::with_capacity(OUT + body);
    let h = OutHeader {
        len: u32::try_from(OUT + body).unwrap_or(u32::MAX),
        error: 0,
        unique,
    };
    v.extend_from_slice(h.as_bytes());
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

/// The error reply to request `unique` (`errno` positive, as in libc).
pub fn error(unique: u64, errno: i32) -> [u8; OUT] {
    let h = OutHeader {
        len: u32::try_from(OUT).unwrap_or(u32::MAX),
        error: -errno.abs(),
        unique,
    };
    let mut out = [0u8; OUT];
    out.copy_from_slice(h.as_bytes());
    out
}

/// The reply to INIT, and its length in bytes for the kernel's minor
/// version (kernels before 7.5 read 8 bytes, before 7.23 read 24). Err:
/// the errno when the kernel's major version cannot be served.
///
/// `want`: the flags this server would use; the reply holds those the
/// kernel offered. A kernel with a newer major version gets this server's
/// version back (and may retry with it).
pub fn init(
    arg: &InitIn,
    want: u32,
    max_write: u32,
    max_readahead: u32,
) -> Result<(InitOut, usize), i32> {
    if arg.major < abi::KERNEL_VERSION {
        return Err(errno::EPROTO);
    }
    let mut out = InitOut {
        major: abi::KERNEL_VERSION,
        minor: abi::KERNEL_MINOR_VERSION,
        ..InitOut::default()
    };
    if arg.major > abi::KERNEL_VERSION {
        return Ok((out, 8));
    }
    out.minor = arg.minor.min(abi::KERNEL_MINOR_VERSION);
    out.flags = arg.flags & want;
    out.max_readahead = arg.max_readahead.min(max_readahead);
    out.max_write = max_write;
    out.max_background = 64;
    out.congestion_threshold = 48;
    out.time_gran = 1;
    if out.flags & abi::init::MAX_PAGES != 0 {
        out.max_pages = u16::try_from(max_write.div_ceil(4096)).unwrap_or(u16::MAX);
    }
    let len = match out.minor {
        0..=4 => 8,
        5..=22 => 24,
        _ => std::mem::size_of::<InitOut>(),
    };
    Ok((out, len))
}

/// A READDIR or READDIRPLUS reply being filled, no larger than the size
/// the kernel asked for.
#[derive(Debug)]
pub struct Dirents {
    buf: Vec<u8>,
    max: usize,
}

impl Dirents {
    /// At most `max` bytes (the request's `size`).
    pub fn new(max: u32) -> Dirents {
        Dirents {
            buf: Vec::new(),
            max: usize::try_from(max).unwrap_or(usize::MAX),
        }
    }

    /// Add an entry (READDIR); false when it does not fit (the listing
    /// goes on at its `off` in the next request).
    pub fn push(&mut self, ino: u64, off: u64, typ: u32, name: &[u8]) -> bool {
        self.add(None, ino, off, typ, name)
    }

    /// Add an entry with its lookup (READDIRPLUS).
    pub fn push_plus(&mut self, entry: &EntryOut, off: u64, typ: u32, name: &[u8]) -> bool {
        self.add(Some(entry), entry.attr.ino, off, typ, name)
    }

    fn size(plus: bool, namelen: usize) -> usize {
        let head = if plus {
            std::mem::size_of::<EntryOut>()
        } else {
            0
        };
        (head + std::mem::size_of::<Dirent>() + namelen).next_multiple_of(8)
    }

    /// Whether an entry with a name of `namelen` bytes (with its lookup:
    /// `plus`) still fits: asked before a lookup that would have to be
    /// undone.
    pub fn fits(&self, plus: bool, namelen: usize) -> bool {
        self.buf.len() + Dirents::size(plus, namelen) <= self.max
    }

    fn add(&mut self, entry: Option<&EntryOut>, ino: u64, off: u64, typ: u32, name: &[u8]) -> bool {
        let Ok(namelen) = u32::try_from(name.len()) else {
            return false;
        };
        if !self.fits(entry.is_some(), name.len()) {
            return false;
        }
        let size = Dirents::size(entry.is_some(), name.len());
        let start = self.buf.len();
        if let Some(e) = entry {
            self.buf.extend_from_slice(e.as_bytes());
        }
        let d = Dirent {
            ino,
            off,
            namelen,
            typ,
        };
        self.buf.extend_from_slice(d.as_bytes());
        self.buf.extend_from_slice(name);
        self.buf.resize(start + size, 0);
        true
    }

    /// The packed entries.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// No entry yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    #[test]
    fn replies_carry_their_length_and_the_requests_id() {
        let r = ok(77, &[b"abc", b"de"]);
        let (h, rest) = OutHeader::read_from_prefix(&r).unwrap();
        assert_eq!((h.len, h.error, h.unique), (21, 0, 77));
        assert_eq!(rest, b"abcde");
        let e = error(78, errno::ENOENT);
        let h = OutHeader::read_from_bytes(&e).unwrap();
        assert_eq!((h.len, h.error, h.unique), (16, -2, 78));
        assert_eq!(
            OutHeader::read_from_bytes(&error(1, -22)).unwrap().error,
            -22
        );
    }

    #[test]
    fn init_settles_on_the_older_version_and_the_flags_both_want() {
        let arg = InitIn {
            major: 7,
            minor: 41,
            max_readahead: 1 << 20,
            flags: abi::init::ASYNC_READ | abi::init::MAX_PAGES | abi::init::POSIX_ACL,
            ..InitIn::default()
        };
        let want = abi::init::ASYNC_READ | abi::init::MAX_PAGES | abi::init::DO_READDIRPLUS;
        let (out, len) = init(&arg, want, 1 << 20, 128 << 10).unwrap();
        assert_eq!(
            (out.major, out.minor, len),
            (7, abi::KERNEL_MINOR_VERSION, 64)
        );
        assert_eq!(out.flags, abi::init::ASYNC_READ | abi::init::MAX_PAGES);
        assert_eq!(
            (out.max_readahead, out.max_write, out.max_pages),
            (128 << 10, 1 << 20, 256)
        );
        let old = InitIn { minor: 19, ..arg };
        let (out, len) = init(&old, want, 1 << 20, 1 << 20).unwrap();
        assert_eq!((out.minor, len), (19, 24));
        let newer = InitIn { major: 8, ..arg };
        let (out, len) = init(&newer, want, 1 << 20, 1 << 20).unwrap();
        assert_eq!((out.major, len), (7, 8));
        let older = InitIn { major: 6, ..arg };
        assert_eq!(
            init(&older, want, 1 << 20, 1 << 20).unwrap_err(),
            errno::EPROTO
        );
    }

    #[test]
    fn directory_entries_are_padded_to_8_bytes_and_stop_at_the_size_asked() {
        let mut d = Dirents::new(64);
        assert!(d.is_empty());
        assert!(d.push(5, 1, 4, b"a"));
        assert_eq!(d.bytes().len(), 32, "24 + 1, padded to 8");
        assert!(d.push(6, 2, 8, b"file.txt"));
        assert_eq!(d.bytes().len(), 64, "24 + 8: no padding needed");
        assert!(!d.push(7, 3, 8, b"x"), "full");
        let (e, rest) = Dirent::read_from_prefix(d.bytes()).unwrap();
        assert_eq!((e.ino, e.off, e.namelen, e.typ), (5, 1, 1, 4));
        assert_eq!(&rest[..8], b"a\0\0\0\0\0\0\0");
        let mut p = Dirents::new(4096);
        let entry = EntryOut {
            nodeid: 9,
            attr: abi::Attr {
                ino: 1234,
                ..abi::Attr::default()
            },
            ..EntryOut::default()
        };
        assert!(p.push_plus(&entry, 1, 4, b"dir"));
        assert_eq!(p.bytes().len(), 128 + 24 + 8);
        let (e, rest) = EntryOut::read_from_prefix(p.bytes()).unwrap();
        assert_eq!(e.nodeid, 9);
        let (d, _) = Dirent::read_from_prefix(rest).unwrap();
        assert_eq!((d.ino, d.namelen), (1234, 3));
    }
}
