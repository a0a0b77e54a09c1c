//! Encryption at rest (`crypt:(CHILD)?key=PATH`): AES-XTS (IEEE 1619,
//! RustCrypto's `aes` and `xts-mode`), one data unit per block, the
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

use aes::cipher::KeyInit;
use leapio_backend::{
    validate, Backend, BackendError, BackendQueue, Completion, Features, Geometry, IoKind,
    IoRequest, Owner, SubmitError,
};
use memmap2::MmapMut;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use xts_mode::{get_tweak_default, Xts128};

const MAGIC: &[u8; 12] = b"LEAPIOCRYPT1";
/// A tweak no block uses: the key check value's.
const KCV_TWEAK: u128 = u128::MAX;

/// The cipher of one key.
enum Cipher {
    Aes128(Box<Xts128<aes::Aes128>>),
    Aes256(Box<Xts128<aes::Aes256>>),
}

impl Cipher {
    /// From a key of 32 or 64 bytes.
    fn new(key: &[u8]) -> Result<Cipher, String> {
        let half = key.len() / 2;
        let (k1, k2) = key.split_at(half);
        Ok(match key.len() {
            32 => Cipher::Aes128(Box::new(Xts128::new(
                aes::Aes128::new_from_slice(k1).map_err(|e| e.to_string())?,
                aes::Aes128::new_from_slice(k2).map_err(|e| e.to_string())?,
            ))),
            64 => Cipher::Aes256(Box::new(Xts128::new(
                aes::Aes256::new_from_slice(k1).map_err(|e| e.to_string())?,
                aes::Aes256::new_from_slice(k2).map_err(|e| e.to_string())?,
            ))),
            n => {
                return Err(format!(
                    "a key of {n} bytes (32 or 64: XTS-AES-128 or -256)"
                ))
            }
        })
    }

    fn bits(&self) -> u32 {
        match self {
            Cipher::Aes128(_) => 256,
            Cipher::Aes256(_) => 512,
        }
    }

    fn encrypt(&self, unit: &mut [u8], n: u128) {
        let t = get_tweak_default(n);
        match self {
            Cipher::Aes128(x) => x.encrypt_sector(unit, t),
            Cipher::Aes256(x) => x.encrypt_sector(unit, t),
        }
    }

    fn decrypt(&self, unit: &mut [u8], n: u128) {
        let t = get_tweak_default(n);
        match self {
            Cipher::Aes128(x) => x.decrypt_sector(unit, t),
            Cipher::Aes256(x) => x.decrypt_sector(unit, t),
        }
    }

    fn check_value(&self) -> [u8; 32] {
        let mut v = [0u8; 32];
        self.encrypt(&mut v, KCV_TWEAK);
        v
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
            header: self.header,
            geometry: self.geometry,
            pending: Vec::new(),
            free: Vec::new(),
            bufs: Vec::new(),
            got: Vec::new(),
            block: vec![0u8; self.geometry.block_size as usize],
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
        self.child.copied_bytes()
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
    header: u64,
    geometry: Geometry,
    pending: Vec<Option<Pending>>,
    free: Vec<usize>,
    /// Write buffers kept for reuse.
    bufs: Vec<MmapMut>,
    got: Vec<Completion>,
    block: Vec<u8>,
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
        if let (Some((iov, offset)), Ok(())) = (&p.read, &c.result) {
            let bs = self.block.len();
            let total: usize = iov.iter().map(|v| v.iov_len).sum();
            let first = offset / bs as u64;
            for (n, at) in (0..total).step_by(bs).enumerate() {
                // SAFETY: the reader's iovecs are valid until this
                // completion is handed back, and cover `total` bytes.
                unsafe { crate::iov::gather(iov, at as u64, &mut self.block) };
                if self.block.iter().all(|b| *b == 0) {
                    // Nothing written there: zeroes, already in place.
                    continue;
                }
                self.cipher
                    .decrypt(&mut self.block, u128::from(first + n as u64));
                // SAFETY: as above; they are writable (a read's).
                unsafe { crate::iov::scatter(iov, at as u64, &self.block) };
            }
        }
        out.push(Completion {
            tag: p.tag,
            result: c.result,
            value: 0,
        });
    }
}

impl BackendQueue for CryptQueue {
    unsafe fn submit(&mut self, req: &IoRequest<'_>) -> Result<(), SubmitError> {
        validate(req, self.geometry)?;
        let bs = self.block.len();
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
                let first = req.offset / bs as u64;
                for (n, unit) in b[..len].chunks_exact_mut(bs).enumerate() {
                    self.cipher.encrypt(unit, u128::from(first + n as u64));
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
        c.encrypt(&mut v, 0);
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
        c.encrypt(&mut unit, 0);
        assert_eq!(
            unit[..32].to_vec(),
            hex("27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c")
        );
        c.decrypt(&mut unit, 0);
        assert!(unit.iter().zip((0..=255u8).cycle()).all(|(a, b)| *a == b));
        // Vector 10: XTS-AES-256, data unit 0xff.
        let key = hex(concat!(
            "2718281828459045235360287471352662497757247093699959574966967627",
            "3141592653589793238462643383279502884197169399375105820974944592"
        ));
        let c = Cipher::new(&key).unwrap();
        let mut unit: Vec<u8> = (0..=255u8).cycle().take(512).collect();
        c.encrypt(&mut unit, 0xff);
        assert_eq!(
            unit[..32].to_vec(),
            hex("1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b")
        );
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
        let mut w = plain.clone();
        crate::services::run_io(q.as_mut(), IoKind::Write, 4096, &mut w).unwrap();
        assert_eq!(w, plain, "the writer's buffer is left as it was");
        let mut r = vec![0u8; 8192];
        crate::services::run_io(q.as_mut(), IoKind::Read, 4096, &mut r).unwrap();
        assert_eq!(r, plain);
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
