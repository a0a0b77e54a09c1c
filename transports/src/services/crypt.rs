//! Encryption at rest (`crypt:(CHILD)?key=PATH`): AES-XTS (IEEE 1619,
//! written here over RustCrypto's `aes`), one data unit per block, the
//! block's number as the tweak. A 32-byte key is XTS-AES-128, a 64-byte
//! key XTS-AES-256. The child never holds plaintext: writes are encrypted
//! into a buffer of the queue's own, reads decrypted in the reader's
//! buffers once the child has filled them (before the completion).
//!
//! A block the child holds as zeroes reads as zeroes (it was never
//! written, or written with Write Zeroes or deallocated, which go to the
//! child as they are): a fresh volume reads as zeroes as a fresh disk does.
//! A block of ciphertext that happens to be all zeroes has a chance of
//! 2^-4096; what it gives away is which blocks hold nothing, as a sparse
//! child file does anyway.
//!
//! The child's first 4 KiB (or one block, if larger) hold a header: a
//! magic, the key size, the block size and a key check value (the
//! encryption of zeroes under a tweak no block uses). An empty child (all
//! zeroes there) is formatted on first claim; a child with another key is
//! refused, as is one that holds other data. The key is read from its
//! file and never printed (`describe` names the file).

use aes::cipher::consts::U16;
use aes::cipher::inout::InOutBuf;
use aes::cipher::{BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};
use aes::Block;
use leapio_backend::{
    validate, Backend, BackendError, BackendQueue, Completion, Features, Geometry, IoError, IoKind,
    IoRequest, Owner, SubmitError,
};
use memmap2::MmapMut;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MAGIC: &[u8; 12] = b"LEAPIOCRYPT1";
/// A tweak no block uses: the key check value's.
const KCV_TWEAK: u128 = u128::MAX;

/// Data units whose tweaks are enciphered by one `encrypt_blocks` call:
/// the eight 512-byte blocks of a 4 KiB I/O go in one call, and the
/// array of their tweaks stays small enough for the stack.
const UNITS_PER_CALL: usize = 16;
/// AES blocks whitened, enciphered and whitened again in one pass: 4 KiB,
/// so a pass's tweaks (kept for the second whitening rather than
/// computed twice) and its data stay in L1, and a 4096-byte unit is one
/// `encrypt_blocks` call the cipher can pipeline from end to end.
const BLOCKS_PER_PASS: usize = 256;
/// Bytes of a read deciphered at a time (gathered from the reader's
/// iovecs into the queue's buffer, and scattered back): a few passes'
/// worth, so a long read costs few calls and a queue little memory.
const READ_SPAN: usize = 16 << 10;

/// Why a buffer cannot be enciphered: XTS is applied here to whole data
/// units of whole AES blocks (a block is always one unit, and block sizes
/// are multiples of 16 bytes, so ciphertext stealing is never needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XtsError {
    #[error("a data unit of {0} bytes is not a positive multiple of the 16-byte AES block")]
    Unit(usize),
    #[error("a buffer of {len} bytes is not a whole number of {unit}-byte data units")]
    Buffer { len: usize, unit: usize },
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// Multiplication by alpha (x) in GF(2^128) as IEEE 1619 defines it for
/// the tweaks of consecutive AES blocks of a data unit: the 16 bytes are
/// one little-endian 128-bit value, shifted left by one bit; the bit
/// shifted out of the top comes back as x^7 + x^2 + x + 1 (0x87) in the
/// low byte. Branch-free, so a unit's tweak chain costs no mispredicts.
fn times_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

fn xor_block(b: &mut Block, t: u128) {
    let x = u128::from_le_bytes((*b).into()) ^ t;
    *b = Block::from(x.to_le_bytes());
}

/// XTS-AES with one key pair (IEEE 1619): `data` (Key1) enciphers the
/// whitened data, `tweak` (Key2) the data unit numbers.
struct Xts<C> {
    data: C,
    tweak: C,
}

impl<C: BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16>> Xts<C> {
    /// Encipher or decipher `blocks`, consecutive data units of `unit`
    /// AES blocks each (the callers check that they divide evenly and
    /// that `unit` is not 0), the first of them numbered `first`.
    ///
    /// Per IEEE 1619, block j of unit n is C = E1(P ^ T) ^ T with
    /// T = E2(LE128(n)) * alpha^j. Rather than one block at a time, the
    /// tweaks are whitened in for a whole pass, the pass goes through
    /// the cipher in one call (which the `aes` crate runs several blocks
    /// abreast with AES-NI), and the same tweaks are whitened out.
    fn apply(&self, blocks: &mut [Block], unit: usize, first: u128, dir: Direction) {
        let unit = unit.max(1);
        let mut number = first;
        let mut tweaks = [0u128; BLOCKS_PER_PASS];
        for group in blocks.chunks_mut(unit.saturating_mul(UNITS_PER_CALL)) {
            // T of block 0 of each unit of the group, in one call.
            let units = group.len().div_ceil(unit).min(UNITS_PER_CALL);
            let mut starts = [Block::default(); UNITS_PER_CALL];
            for s in &mut starts[..units] {
                *s = Block::from(number.to_le_bytes());
                number = number.wrapping_add(1);
            }
            self.tweak.encrypt_blocks(&mut starts[..units]);
            let mut starts = starts[..units].iter();
            // The running tweak, and the blocks of its unit still to go:
            // units and passes need not line up (units of 8 KiB and more
            // span passes; a pass holds many 512-byte units).
            let mut t = 0u128;
            let mut left = 0usize;
            for pass in group.chunks_mut(BLOCKS_PER_PASS) {
                for (b, kept) in pass.iter_mut().zip(tweaks.iter_mut()) {
                    if left == 0 {
                        t = starts
                            .next()
                            .map_or(0, |s| u128::from_le_bytes((*s).into()));
                        left = unit;
                    }
                    *kept = t;
                    xor_block(b, t);
                    t = times_alpha(t);
                    left -= 1;
                }
                match dir {
                    Direction::Encrypt => self.data.encrypt_blocks(pass),
                    Direction::Decrypt => self.data.decrypt_blocks(pass),
                }
                for (b, kept) in pass.iter_mut().zip(tweaks.iter()) {
                    xor_block(b, *kept);
                }
            }
        }
    }
}

impl<C: KeyInit> Xts<C> {
    /// From Key1 || Key2, the halves of an XTS key.
    fn from_halves(key: &[u8]) -> Result<Box<Xts<C>>, String> {
        let (k1, k2) = key.split_at(key.len() / 2);
        Ok(Box::new(Xts {
            data: C::new_from_slice(k1).map_err(|e| e.to_string())?,
            tweak: C::new_from_slice(k2).map_err(|e| e.to_string())?,
        }))
    }
}

/// The cipher of one key: XTS-AES-128 or XTS-AES-256 over data units of
/// any multiple of 16 bytes. Public for the `xts-bench` example; it has
/// no `Debug`, so no formatting can reach the key schedule.
pub struct Cipher(Keys);

enum Keys {
    Aes128(Box<Xts<aes::Aes128>>),
    Aes256(Box<Xts<aes::Aes256>>),
}

/// `buf` as AES blocks, and `unit_len` in blocks, once both are known to
/// hold whole units of whole blocks.
fn units(buf: &mut [u8], unit_len: usize) -> Result<(&mut [Block], usize), XtsError> {
    if unit_len == 0 || unit_len % 16 != 0 {
        return Err(XtsError::Unit(unit_len));
    }
    if buf.len() % unit_len != 0 {
        return Err(XtsError::Buffer {
            len: buf.len(),
            unit: unit_len,
        });
    }
    // Safe reinterpretation of the bytes as 16-byte blocks (`inout` does
    // it for the cipher crates); no tail, as `buf` holds whole units.
    let (blocks, _) = InOutBuf::from(buf).into_chunks::<U16>();
    Ok((blocks.into_out(), unit_len / 16))
}

impl Cipher {
    /// From a key of 32 or 64 bytes.
    pub fn new(key: &[u8]) -> Result<Cipher, String> {
        match key.len() {
            32 => Ok(Cipher(Keys::Aes128(Xts::from_halves(key)?))),
            64 => Ok(Cipher(Keys::Aes256(Xts::from_halves(key)?))),
            n => Err(format!(
                "a key of {n} bytes (32 or 64: XTS-AES-128 or -256)"
            )),
        }
    }

    fn bits(&self) -> u32 {
        match self.0 {
            Keys::Aes128(_) => 256,
            Keys::Aes256(_) => 512,
        }
    }

    fn apply(&self, blocks: &mut [Block], unit: usize, first: u128, dir: Direction) {
        match &self.0 {
            Keys::Aes128(x) => x.apply(blocks, unit, first, dir),
            Keys::Aes256(x) => x.apply(blocks, unit, first, dir),
        }
    }

    /// Encrypt `buf` in place: consecutive data units of `unit_len`
    /// bytes, the first numbered `first` (a block's number, for the
    /// volume's blocks).
    pub fn encrypt(&self, buf: &mut [u8], unit_len: usize, first: u128) -> Result<(), XtsError> {
        let (blocks, unit) = units(buf, unit_len)?;
        self.apply(blocks, unit, first, Direction::Encrypt);
        Ok(())
    }

    /// Decrypt `buf` in place, as [`Cipher::encrypt`] encrypted it.
    pub fn decrypt(&self, buf: &mut [u8], unit_len: usize, first: u128) -> Result<(), XtsError> {
        let (blocks, unit) = units(buf, unit_len)?;
        self.apply(blocks, unit, first, Direction::Decrypt);
        Ok(())
    }

    /// 32 zeroes encrypted as one data unit under a tweak no block uses.
    fn check_value(&self) -> [u8; 32] {
        let mut v = [Block::default(); 2];
        self.apply(&mut v, 2, KCV_TWEAK, Direction::Encrypt);
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&v[0]);
        out[16..].copy_from_slice(&v[1]);
        out
    }
}

/// Read a key file: 32 or 64 bytes as they are, or as 64 or 128 hex
/// digits (whitespace around them ignored). Errors never show the key.
pub fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("key file {}: {e}", path.display()))?;
    if raw.len() == 32 || raw.len() == 64 {
        return Ok(raw);
    }
    let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
    if (text.len() == 64 || text.len() == 128) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect();
    }
    Err(format!(
        "key file {}: expected 32 or 64 bytes, or 64 or 128 hex digits ({} bytes found)",
        path.display(),
        raw.len()
    ))
}

/// An encrypted backend over one child.
pub struct Crypt {
    child: Arc<dyn Backend>,
    cipher: Arc<Cipher>,
    /// Bytes of I/O data its queues copied through their buffers (a
    /// write's ciphertext, a read's deciphering).
    copied: Arc<AtomicU64>,
    key_path: PathBuf,
    header: u64,
    geometry: Geometry,
}

impl Crypt {
    pub fn new(child: Arc<dyn Backend>, key_path: &Path) -> Result<Crypt, BackendError> {
        let key = read_key(key_path).map_err(BackendError::Config)?;
        let cipher = Cipher::new(&key)
            .map_err(|e| BackendError::Config(format!("key file {}: {e}", key_path.display())))?;
        let g = child.geometry();
        if child.zoned().is_some() {
            return Err(BackendError::Config(format!(
                "crypt: {} is zoned: encryption takes a conventional child",
                child.describe()
            )));
        }
        if g.block_size == 0 || g.block_size % 16 != 0 {
            return Err(BackendError::Config(format!(
                "crypt: {} has blocks of {} bytes: XTS takes whole 16-byte AES blocks",
                child.describe(),
                g.block_size
            )));
        }
        let bs = u64::from(g.block_size);
        let header = bs.max(4096);
        let blocks = g.size_bytes().saturating_sub(header) / bs;
        if blocks == 0 {
            return Err(BackendError::Config(format!(
                "crypt: {} has no room after its {header}-byte header",
                child.describe()
            )));
        }
        Ok(Crypt {
            child,
            cipher: Arc::new(cipher),
            copied: Arc::new(AtomicU64::new(0)),
            key_path: key_path.to_path_buf(),
            header,
            geometry: Geometry {
                block_size: g.block_size,
                num_blocks: blocks,
            },
        })
    }

    fn header_bytes(&self) -> Vec<u8> {
        let mut h = vec![0u8; usize::try_from(self.header).unwrap_or(4096)];
        h[..12].copy_from_slice(MAGIC);
        h[12..16].copy_from_slice(&self.cipher.bits().to_le_bytes());
        h[16..20].copy_from_slice(&self.geometry.block_size.to_le_bytes());
        h[32..64].copy_from_slice(&self.cipher.check_value());
        h
    }

    /// Read the child's header; format an empty child; refuse a child
    /// with another key or other data.
    fn check_header(&self) -> Result<(), BackendError> {
        let len = usize::try_from(self.header).unwrap_or(4096);
        let mut buf = MmapMut::map_anon(len).map_err(|e| BackendError::Config(e.to_string()))?;
        let mut q = self.child.open_queue(1)?;
        child_io(q.as_mut(), IoKind::Read, &mut buf)?;
        let what = self.child.describe();
        if buf.iter().all(|b| *b == 0) {
            buf.copy_from_slice(&self.header_bytes());
            child_io(q.as_mut(), IoKind::WriteFua, &mut buf)?;
            tracing::info!(child = %what, bits = self.cipher.bits(), "crypt: formatted an empty child");
            return Ok(());
        }
        if &buf[..12] != MAGIC {
            return Err(BackendError::Config(format!(
                "crypt: {what} holds data that is not a LeapIO encrypted volume: not formatting it"
            )));
        }
        let want = self.header_bytes();
        if buf[12..20] != want[12..20] {
            return Err(BackendError::Config(format!(
                "crypt: {what} was formatted with another key size or block size"
            )));
        }
        if buf[32..64] != want[32..64] {
            return Err(BackendError::Config(format!(
                "crypt: the key in {} does not open {what} (its key check value differs)",
                self.key_path.display()
            )));
        }
        Ok(())
    }
}

/// One synchronous request of the whole of `buf` at the child's start.
fn child_io(q: &mut dyn BackendQueue, kind: IoKind, buf: &mut [u8]) -> Result<(), BackendError> {
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let req = IoRequest {
        tag: 0,
        kind,
        offset: 0,
        len: buf.len() as u64,
        iov: &iov,
        owner: 0,
        journal: None,
    };
    // SAFETY: `buf` outlives the request: it is drained below.
    unsafe { q.submit(&req) }.map_err(|e| BackendError::Config(format!("crypt header: {e}")))?;
    let mut out = Vec::new();
    q.drain(&mut out, Duration::from_secs(30));
    match out.first() {
        Some(c) if c.result.is_ok() => Ok(()),
        Some(c) => Err(BackendError::Config(format!(
            "crypt header: {}",
            std::io::Error::from_raw_os_error(c.result.unwrap_err().errno)
        ))),
        None => Err(BackendError::Config(
            "crypt header: no completion in 30 s".into(),
        )),
    }
}

impl Backend for Crypt {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn features(&self) -> Features {
        // Zeroes in the child read as zeroes: the child's own.
        self.child.features()
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BackendQueue>, BackendError> {
        Ok(Box::new(CryptQueue {
            child: self.child.open_queue(depth)?,
            cipher: self.cipher.clone(),
            copied: Arc::clone(&self.copied),
            header: self.header,
            geometry: self.geometry,
            pending: Vec::new(),
            free: Vec::new(),
            bufs: Vec::new(),
            got: Vec::new(),
            span: vec![0u8; read_span(self.geometry.block_size as usize)],
        }))
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.child.flush()
    }

    fn describe(&self) -> String {
        format!(
            "crypt (XTS-AES-{}, key {}) of [{}]",
            self.cipher.bits() / 2,
            self.key_path.display(),
            self.child.describe()
        )
    }

    fn persistent(&self) -> bool {
        self.child.persistent()
    }

    fn claim(&self) -> Result<(), BackendError> {
        self.child.claim()?;
        self.check_header()
    }

    fn copied_bytes(&self) -> u64 {
        self.copied.load(Ordering::Relaxed) + self.child.copied_bytes()
    }

    fn owner(&self, who: &Owner<'_>) -> u32 {
        self.child.owner(who)
    }

    fn stale_writes_for(&self) -> Duration {
        self.child.stale_writes_for()
    }

    fn max_io_bytes(&self) -> u64 {
        self.child.max_io_bytes()
    }
}

/// A request in flight: a read's iovecs (decrypted into at completion),
/// or a write's encrypted copy.
struct Pending {
    tag: u64,
    read: Option<(Vec<libc::iovec>, u64)>,
    buf: Option<MmapMut>,
}

// SAFETY: the iovecs point into the requester's memory, which it keeps
// valid until the request's completion (the `submit` contract) whatever
// thread the queue is used from.
unsafe impl Send for Pending {}

struct CryptQueue {
    child: Box<dyn BackendQueue>,
    cipher: Arc<Cipher>,
    copied: Arc<AtomicU64>,
    header: u64,
    geometry: Geometry,
    pending: Vec<Option<Pending>>,
    free: Vec<usize>,
    /// Write buffers kept for reuse.
    bufs: Vec<MmapMut>,
    got: Vec<Completion>,
    /// A read's ciphertext, gathered to be deciphered: whole blocks.
    span: Vec<u8>,
}

/// The read buffer's size: [`READ_SPAN`] in whole blocks, one at least.
fn read_span(bs: usize) -> usize {
    (READ_SPAN / bs.max(1)).max(1) * bs
}

impl CryptQueue {
    fn buffer(&mut self, len: usize) -> Result<MmapMut, SubmitError> {
        if let Some(i) = self.bufs.iter().position(|b| b.len() >= len) {
            return Ok(self.bufs.swap_remove(i));
        }
        MmapMut::map_anon(len.next_multiple_of(64 << 10)).map_err(|_| SubmitError::Full)
    }

    fn finish(&mut self, c: Completion, out: &mut Vec<Completion>) {
        let Ok(i) = usize::try_from(c.tag) else {
            return;
        };
        let Some(p) = self.pending.get_mut(i).and_then(Option::take) else {
            return;
        };
        self.free.push(i);
        if let Some(b) = p.buf {
            self.bufs.push(b);
        }
        let mut result = c.result;
        if let (Some((iov, offset)), Ok(())) = (&p.read, &result) {
            if let Err(e) = self.decrypt_read(iov, *offset) {
                tracing::error!(error = %e, "crypt: a read could not be deciphered");
                result = Err(IoError::from_errno(libc::EIO));
            }
        }
        out.push(Completion {
            tag: p.tag,
            result,
            value: 0,
        });
    }

    /// Decipher a completed read in the reader's iovecs, a span at a
    /// time; each run of consecutive blocks that hold something goes to
    /// the cipher in one call (so their tweaks are enciphered together),
    /// and blocks of zeroes, never written, are left as they are.
    fn decrypt_read(&mut self, iov: &[libc::iovec], offset: u64) -> Result<(), XtsError> {
        let bs = self.geometry.block_size as usize;
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        let first = offset / bs as u64;
        let mut at = 0;
        while at < total {
            let len = self.span.len().min(total - at);
            let span = &mut self.span[..len];
            // SAFETY: the reader's iovecs are valid until this
            // completion is handed back, and cover `total` bytes.
            unsafe { crate::iov::gather(iov, at as u64, span) };
            self.copied.fetch_add(len as u64, Ordering::Relaxed);
            let span_first = first + (at / bs) as u64;
            let count = len / bs;
            let zero = |b: &[u8]| b.iter().all(|x| *x == 0);
            let mut n = 0;
            while n < count {
                if zero(&span[n * bs..(n + 1) * bs]) {
                    n += 1;
                    continue;
                }
                let start = n;
                while n < count && !zero(&span[n * bs..(n + 1) * bs]) {
                    n += 1;
                }
                let run = &mut span[start * bs..n * bs];
                self.cipher
                    .decrypt(run, bs, u128::from(span_first + start as u64))?;
                // SAFETY: as above; they are writable (a read's).
                unsafe { crate::iov::scatter(iov, (at + start * bs) as u64, run) };
            }
            at += len;
        }
        Ok(())
    }
}

impl BackendQueue for CryptQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate(req, self.geometry)?;
        let bs = self.geometry.block_size as usize;
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        let mut p = Pending {
            tag: req.tag,
            read: None,
            buf: None,
        };
        let wiov;
        let iov: &[libc::iovec] = match req.kind {
            IoKind::Flush => &[],
            IoKind::Read => {
                p.read = Some((req.iov.to_vec(), req.offset));
                req.iov
            }
            IoKind::Write | IoKind::WriteFua => {
                let len = usize::try_from(req.len).map_err(|_| SubmitError::Invalid("too long"))?;
                let mut b = match self.buffer(len) {
                    Ok(b) => b,
                    Err(e) => {
                        self.free.push(slot);
                        return Err(e);
                    }
                };
                // SAFETY: the request's iovecs cover `len` readable bytes.
                unsafe { crate::iov::gather(req.iov, 0, &mut b[..len]) };
                self.copied.fetch_add(req.len, Ordering::Relaxed);
                let first = req.offset / bs as u64;
                if self
                    .cipher
                    .encrypt(&mut b[..len], bs, u128::from(first))
                    .is_err()
                {
                    // Not reached: `validate` took whole blocks, and
                    // `Crypt::new` blocks of whole AES blocks.
                    self.bufs.push(b);
                    self.free.push(slot);
                    return Err(SubmitError::Invalid("not whole blocks of whole AES blocks"));
                }
                wiov = [libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: len,
                }];
                p.buf = Some(b);
                &wiov
            }
            // Zeroes and deallocation reach the child as they are.
            IoKind::WriteZeroes | IoKind::WriteZeroesFua | IoKind::Deallocate => &[],
            _ => {
                self.free.push(slot);
                return Err(SubmitError::Invalid(
                    "an encrypted namespace takes no zone commands",
                ));
            }
        };
        let child = IoRequest {
            tag: slot as u64,
            kind: req.kind,
            offset: if req.kind == IoKind::Flush {
                0
            } else {
                req.offset + self.header
            },
            len: req.len,
            iov,
            owner: req.owner,
            journal: None,
        };
        // SAFETY: a read's iovecs are the caller's (valid until its
        // completion); a write's buffer is kept in `pending` until then.
        match unsafe { self.child.submit(&child) } {
            Ok(()) => {
                self.pending[slot] = Some(p);
                Ok(())
            }
            Err(e) => {
                if let Some(b) = p.buf {
                    self.bufs.push(b);
                }
                self.free.push(slot);
                Err(e)
            }
        }
    }

    fn kick(&mut self) -> Result<(), BackendError> {
        self.child.kick()
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        let mut got = std::mem::take(&mut self.got);
        got.clear();
        self.child.poll(&mut got);
        for c in got.drain(..) {
            self.finish(c, out);
        }
        self.got = got;
        out.len() - before
    }

    fn in_flight(&self) -> usize {
        self.child.in_flight()
    }

    fn held(&self) -> usize {
        self.child.held()
    }

    fn drain(&mut self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        let before = out.len();
        let mut got = Vec::new();
        self.child.drain(&mut got, timeout);
        for c in got {
            self.finish(c, out);
        }
        out.len() - before
    }

    fn wait_completion(&mut self, timeout: Duration) {
        self.child.wait_completion(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// IEEE 1619-2007 annex B, vectors 1, 4 (XTS-AES-128) and 10
    /// (XTS-AES-256, first 32 bytes of its 512-byte data unit checked
    /// through a round trip and the published start).
    #[test]
    fn ieee_1619_vectors() {
        let c = Cipher::new(&[0u8; 32]).unwrap();
        let mut v = [0u8; 32];
        c.encrypt(&mut v, 32, 0).unwrap();
        assert_eq!(
            v.to_vec(),
            hex("917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e")
        );
        // Vector 4: keys from pi and e digits, data unit 0, 512 bytes.
        let key = hex(concat!(
            "27182818284590452353602874713526",
            "31415926535897932384626433832795"
        ));
        let c = Cipher::new(&key).unwrap();
        let mut unit: Vec<u8> = (0..=255u8).cycle().take(512).collect();
        c.encrypt(&mut unit, 512, 0).unwrap();
        assert_eq!(
            unit[..32].to_vec(),
            hex("27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c")
        );
        c.decrypt(&mut unit, 512, 0).unwrap();
        assert!(unit.iter().zip((0..=255u8).cycle()).all(|(a, b)| *a == b));
        // Vector 10: XTS-AES-256, data unit 0xff.
        let key = hex(concat!(
            "2718281828459045235360287471352662497757247093699959574966967627",
            "3141592653589793238462643383279502884197169399375105820974944592"
        ));
        let c = Cipher::new(&key).unwrap();
        let mut unit: Vec<u8> = (0..=255u8).cycle().take(512).collect();
        c.encrypt(&mut unit, 512, 0xff).unwrap();
        assert_eq!(
            unit[..32].to_vec(),
            hex("1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b")
        );
    }

    /// IEEE 1619-2007 annex B, vectors 2 and 3 (XTS-AES-128, one 32-byte
    /// data unit numbered 0x3333333333), and vector 10's data unit in the
    /// middle of a buffer of three, so that its tweak is enciphered in a
    /// batch with its neighbours' and its data in one pass with theirs.
    #[test]
    fn ieee_1619_vectors_through_batches() {
        for (key, ctx) in [
            (
                concat!(
                    "11111111111111111111111111111111",
                    "22222222222222222222222222222222"
                ),
                "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0",
            ),
            (
                concat!(
                    "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0",
                    "22222222222222222222222222222222"
                ),
                "af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89",
            ),
        ] {
            let c = Cipher::new(&hex(key)).unwrap();
            let mut v = [0x44u8; 32];
            c.encrypt(&mut v, 32, 0x33_3333_3333).unwrap();
            assert_eq!(v.to_vec(), hex(ctx));
            c.decrypt(&mut v, 32, 0x33_3333_3333).unwrap();
            assert_eq!(v, [0x44u8; 32]);
        }
        let key = hex(concat!(
            "2718281828459045235360287471352662497757247093699959574966967627",
            "3141592653589793238462643383279502884197169399375105820974944592"
        ));
        let c = Cipher::new(&key).unwrap();
        let plain: Vec<u8> = (0..=255u8).cycle().take(3 * 512).collect();
        let mut buf = plain.clone();
        c.encrypt(&mut buf, 512, 0xfe).unwrap();
        assert_eq!(
            buf[512..544].to_vec(),
            hex("1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b")
        );
        c.decrypt(&mut buf, 512, 0xfe).unwrap();
        assert_eq!(buf, plain);
    }

    /// Random bytes from a fixed seed (splitmix64): the same every run.
    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// The unit-at-a-time XTS of the `xts-mode` crate, which the service
    /// used to write its volumes with.
    enum OldXts {
        Aes128(Box<xts_mode::Xts128<aes::Aes128>>),
        Aes256(Box<xts_mode::Xts128<aes::Aes256>>),
    }

    impl OldXts {
        fn new(key: &[u8]) -> OldXts {
            let (k1, k2) = key.split_at(key.len() / 2);
            match key.len() {
                32 => OldXts::Aes128(Box::new(xts_mode::Xts128::new(
                    aes::Aes128::new_from_slice(k1).unwrap(),
                    aes::Aes128::new_from_slice(k2).unwrap(),
                ))),
                _ => OldXts::Aes256(Box::new(xts_mode::Xts128::new(
                    aes::Aes256::new_from_slice(k1).unwrap(),
                    aes::Aes256::new_from_slice(k2).unwrap(),
                ))),
            }
        }

        fn encrypt(&self, buf: &mut [u8], unit: usize, first: u128) {
            for (n, u) in buf.chunks_exact_mut(unit).enumerate() {
                let t = xts_mode::get_tweak_default(first + n as u128);
                match self {
                    OldXts::Aes128(x) => x.encrypt_sector(u, t),
                    OldXts::Aes256(x) => x.encrypt_sector(u, t),
                }
            }
        }

        fn decrypt(&self, buf: &mut [u8], unit: usize, first: u128) {
            for (n, u) in buf.chunks_exact_mut(unit).enumerate() {
                let t = xts_mode::get_tweak_default(first + n as u128);
                match self {
                    OldXts::Aes128(x) => x.decrypt_sector(u, t),
                    OldXts::Aes256(x) => x.decrypt_sector(u, t),
                }
            }
        }
    }

    /// The on-disk format is unchanged: what the `xts-mode` crate
    /// encrypted, the service's XTS decrypts, and it encrypts the same
    /// bytes (which `xts-mode` decrypts), for both key sizes and both
    /// block sizes, over buffers of one unit up to more units than one
    /// tweak batch or one pass holds, at low and high block numbers; and
    /// for other unit sizes, which cut passes elsewhere.
    #[test]
    fn xts_reads_and_writes_what_the_xts_mode_crate_does() {
        let mut seed = 1;
        for key_len in [32, 64] {
            for bs in [512usize, 4096] {
                for units in [1usize, 2, 8, 16, 17, 40] {
                    for first in [0u128, 7, u128::from(u64::MAX - 100)] {
                        seed += 1;
                        let key = random_bytes(seed, key_len);
                        let (new, old) = (Cipher::new(&key).unwrap(), OldXts::new(&key));
                        let plain = random_bytes(seed << 32, units * bs);
                        let what = format!("{key_len}-byte key, {units} x {bs} at {first}");

                        let mut by_old = plain.clone();
                        old.encrypt(&mut by_old, bs, first);
                        let mut by_new = plain.clone();
                        new.encrypt(&mut by_new, bs, first).unwrap();
                        assert!(by_new == by_old, "ciphertext differs: {what}");

                        new.decrypt(&mut by_old, bs, first).unwrap();
                        assert!(by_old == plain, "new misreads old: {what}");
                        old.decrypt(&mut by_new, bs, first);
                        assert!(by_new == plain, "old misreads new: {what}");
                    }
                }
            }
        }
        // Units no block size gives, where units and passes do not line
        // up: a 768-byte unit straddles passes, an 8 KiB one spans two.
        for unit in [32usize, 768, 8192] {
            let key = random_bytes(unit as u64, 64);
            let (new, old) = (Cipher::new(&key).unwrap(), OldXts::new(&key));
            let plain = random_bytes(!(unit as u64), 21 * unit);
            let mut by_old = plain.clone();
            old.encrypt(&mut by_old, unit, 1000);
            let mut by_new = plain.clone();
            new.encrypt(&mut by_new, unit, 1000).unwrap();
            assert!(by_new == by_old, "ciphertext differs: {unit}-byte units");
            new.decrypt(&mut by_new, unit, 1000).unwrap();
            assert!(by_new == plain, "no round trip: {unit}-byte units");
        }
    }

    #[test]
    fn xts_refuses_partial_units_and_blocks_without_panicking() {
        let c = Cipher::new(&[9u8; 64]).unwrap();
        let mut buf = vec![0u8; 1024];
        assert_eq!(c.encrypt(&mut buf, 0, 0), Err(XtsError::Unit(0)));
        assert_eq!(c.decrypt(&mut buf, 520, 0), Err(XtsError::Unit(520)));
        assert_eq!(
            c.encrypt(&mut buf[..1000], 512, 0),
            Err(XtsError::Buffer {
                len: 1000,
                unit: 512
            })
        );
        assert!(buf.iter().all(|b| *b == 0), "nothing touched");
        assert!(c
            .encrypt(&mut buf, 520, 0)
            .unwrap_err()
            .to_string()
            .contains("16-byte AES block"));
        // An empty buffer is whole units: nothing to do.
        assert_eq!(c.encrypt(&mut [], 512, 0), Ok(()));
    }

    /// Through the service: a volume whose blocks the `xts-mode` crate
    /// encrypted (as the service did before) reads back, in one request
    /// over written and never-written blocks; what the service writes,
    /// `xts-mode` decrypts; and the header's key check value is the one
    /// it computed. Both block sizes.
    #[test]
    fn a_volume_written_with_the_xts_mode_crate_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let raw_key = random_bytes(77, 64);
        std::fs::write(&key, &raw_key).unwrap();
        let old = OldXts::new(&raw_key);
        for bs in [512usize, 4096] {
            let img = dir.path().join(format!("{bs}.img"));
            std::fs::File::create(&img)
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
            // A service takes its children's block size: the child's is
            // set where it is opened.
            let open = || -> Crypt {
                let child: crate::BackendSpec =
                    format!("file:{},bs={bs}", img.display()).parse().unwrap();
                let c = Crypt::new(crate::open_backend_unclaimed(&child).unwrap(), &key).unwrap();
                c.claim().unwrap();
                c
            };
            let b = open();
            assert_eq!(b.geometry().block_size as usize, bs);
            drop(b);
            let header = bs.max(4096);
            let mut image = std::fs::read(&img).unwrap();
            let mut kcv = [0u8; 32];
            old.encrypt(&mut kcv, 32, KCV_TWEAK);
            assert_eq!(image[32..64], kcv, "key check value");

            // Blocks 3..12 as the old code wrote them, but for block 6,
            // never written (zeroes).
            let plain = random_bytes(bs as u64, 9 * bs);
            let mut cipher = plain.clone();
            old.encrypt(&mut cipher, bs, 3);
            cipher[3 * bs..4 * bs].fill(0);
            image[header + 3 * bs..header + 12 * bs].copy_from_slice(&cipher);
            std::fs::write(&img, &image).unwrap();

            let b = open();
            let mut q = b.open_queue(2).unwrap();
            let mut r = vec![0xaau8; 11 * bs];
            crate::services::run_io(q.as_mut(), IoKind::Read, 2 * bs as u64, &mut r).unwrap();
            let mut want = vec![0u8; 11 * bs];
            want[bs..10 * bs].copy_from_slice(&plain);
            want[4 * bs..5 * bs].fill(0);
            assert!(r == want, "{bs}-byte blocks read back differently");

            let mut w = random_bytes(3 * bs as u64, 20 * bs);
            let written = w.clone();
            crate::services::run_io(q.as_mut(), IoKind::Write, 30 * bs as u64, &mut w).unwrap();
            drop(q);
            drop(b);
            let image = std::fs::read(&img).unwrap();
            let mut on_disk = image[header + 30 * bs..header + 50 * bs].to_vec();
            old.decrypt(&mut on_disk, bs, 30);
            assert!(on_disk == written, "{bs}-byte blocks: xts-mode misreads");
        }
    }

    #[test]
    fn keys_are_read_raw_or_as_hex_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("leapio-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("raw");
        std::fs::write(&raw, [7u8; 64]).unwrap();
        assert_eq!(read_key(&raw).unwrap(), vec![7u8; 64]);
        let h = dir.join("hex");
        std::fs::write(&h, format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(read_key(&h).unwrap(), vec![0xab; 32]);
        let bad = dir.join("bad");
        std::fs::write(&bad, "secretsecret").unwrap();
        let e = read_key(&bad).unwrap_err();
        assert!(e.contains("12 bytes found") && !e.contains("secret"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_child_holds_no_plaintext_and_a_wrong_key_or_a_foreign_child_is_refused() {
        let dir = std::env::temp_dir().join(format!("leapio-crypt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (img, key, other) = (dir.join("a.img"), dir.join("k"), dir.join("k2"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        std::fs::write(&key, [1u8; 64]).unwrap();
        std::fs::write(&other, [2u8; 64]).unwrap();
        let spec = |k: &Path| -> crate::BackendSpec {
            format!("crypt:(file:{})?key={}", img.display(), k.display())
                .parse()
                .unwrap()
        };
        let b = crate::open_backend(&spec(&key)).unwrap();
        assert_eq!(b.geometry().size_bytes(), (1 << 20) - 4096);
        assert!(!b.describe().contains("0101"), "{}", b.describe());
        let mut q = b.open_queue(4).unwrap();
        let plain: Vec<u8> = b"LEAPIO-PLAINTEXT-"
            .iter()
            .copied()
            .cycle()
            .take(8192)
            .collect();
        let copied = b.copied_bytes();
        let mut w = plain.clone();
        crate::services::run_io(q.as_mut(), IoKind::Write, 4096, &mut w).unwrap();
        assert_eq!(w, plain, "the writer's buffer is left as it was");
        let mut r = vec![0u8; 8192];
        crate::services::run_io(q.as_mut(), IoKind::Read, 4096, &mut r).unwrap();
        assert_eq!(r, plain);
        // Both went through the queue's buffers: counted as copied.
        assert!(
            b.copied_bytes() - copied >= 2 * 8192,
            "{}",
            b.copied_bytes()
        );
        // Never written: zeroes, as on a fresh disk; a written block of
        // zeroes is no zero ciphertext.
        let mut z = vec![0xffu8; 4096];
        crate::services::run_io(q.as_mut(), IoKind::Read, 65536, &mut z).unwrap();
        assert!(z.iter().all(|b| *b == 0));
        let mut zw = vec![0u8; 4096];
        crate::services::run_io(q.as_mut(), IoKind::Write, 131072, &mut zw).unwrap();
        let mut zr = vec![0xffu8; 4096];
        crate::services::run_io(q.as_mut(), IoKind::Read, 131072, &mut zr).unwrap();
        assert!(zr.iter().all(|b| *b == 0));
        drop(q);
        drop(b);
        let on_disk = std::fs::read(&img).unwrap();
        assert!(
            !on_disk.windows(17).any(|x| x == b"LEAPIO-PLAINTEXT-"),
            "plaintext in the child"
        );
        assert_eq!(&on_disk[..12], MAGIC);
        let zero_block = &on_disk[4096 + 131072..4096 + 131072 + 4096];
        assert!(
            zero_block.iter().any(|b| *b != 0),
            "zeroes written in the clear"
        );
        // Opened again with its key: the data; with another: refused.
        let b = crate::open_backend(&spec(&key)).unwrap();
        let mut q = b.open_queue(1).unwrap();
        let mut r = vec![0u8; 8192];
        crate::services::run_io(q.as_mut(), IoKind::Read, 4096, &mut r).unwrap();
        assert_eq!(r, plain);
        drop(q);
        drop(b);
        let e = crate::open_backend(&spec(&other))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("does not open") && e.contains("key check value"),
            "{e}"
        );
        // A child with other data is not formatted.
        let foreign = dir.join("b.img");
        std::fs::write(&foreign, vec![0x55u8; 1 << 20]).unwrap();
        let s: crate::BackendSpec =
            format!("crypt:(file:{})?key={}", foreign.display(), key.display())
                .parse()
                .unwrap();
        let e = crate::open_backend(&s).err().unwrap().to_string();
        assert!(e.contains("not a LeapIO encrypted volume"), "{e}");
        assert!(std::fs::read(&foreign).unwrap().iter().all(|b| *b == 0x55));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
