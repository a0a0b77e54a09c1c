//! DH-HMAC-CHAP secrets in their textual representation (NVMe Base
//! Specification 2.x, 8.13.5.8; what `nvme gen-dhchap-key` prints):
//!
//! `DHHC-1:XX:BASE64:` where XX is the hash transformation (00 none, 01
//! SHA-256, 02 SHA-384, 03 SHA-512) and BASE64 encodes the key (32, 48 or
//! 64 bytes) followed by its CRC-32 in little-endian byte order.
//!
//! A transformed secret is HMAC(H, key, NQN || "NVMe-over-Fabrics"): the host
//! secret with the host NQN, the controller secret with the subsystem NQN.

use crate::hash::HashId;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const PREFIX: &str = "DHHC-1:";

/// Why a secret string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a DH-HMAC-CHAP secret starts with 'DHHC-1:' (DHHC-1:XX:BASE64:)")]
    Prefix,
    #[error("unknown hash transformation '{0}' (00 none, 01 SHA-256, 02 SHA-384, 03 SHA-512)")]
    Transform(String),
    #[error("the key is not base64: {0}")]
    Base64(String),
    #[error("the key decodes to {0} bytes; expected 36, 52 or 68 (a 32, 48 or 64-byte key and its CRC-32)")]
    Length(usize),
    #[error("CRC-32 mismatch: the secret carries {stored:#010x}, its key has {computed:#010x} (mistyped or truncated?)")]
    Crc { stored: u32, computed: u32 },
    #[error("transformation {transform} takes a {want}-byte key, this one has {got} bytes")]
    TransformLength {
        transform: HashId,
        want: usize,
        got: usize,
    },
    #[error("no random bytes for a new key")]
    Random,
}

/// A DH-HMAC-CHAP secret (the key is wiped from memory when dropped).
#[derive(Clone)]
pub struct Secret {
    key: Zeroizing<Vec<u8>>,
    transform: Option<HashId>,
}

impl Secret {
    /// A secret from its key bytes.
    pub fn new(key: &[u8], transform: Option<HashId>) -> Result<Secret, SecretError> {
        if !matches!(key.len(), 32 | 48 | 64) {
            return Err(SecretError::Length(key.len() + 4));
        }
        if let Some(t) = transform {
            if key.len() != t.len() {
                return Err(SecretError::TransformLength {
                    transform: t,
                    want: t.len(),
                    got: key.len(),
                });
            }
        }
        Ok(Secret {
            key: Zeroizing::new(key.to_vec()),
            transform,
        })
    }

    /// A random secret of `len` bytes (what `nvme gen-dhchap-key` does).
    pub fn generate(len: usize, transform: Option<HashId>) -> Result<Secret, SecretError> {
        let mut key = Zeroizing::new(vec![0u8; len]);
        getrandom::fill(&mut key).map_err(|_| SecretError::Random)?;
        Secret::new(&key, transform)
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn transform(&self) -> Option<HashId> {
        self.transform
    }

    /// The key as used for HMAC: transformed with `nqn` when the secret says
    /// so, else the key itself.
    pub fn transformed(&self, nqn: &str) -> Zeroizing<Vec<u8>> {
        match self.transform {
            None => self.key.clone(),
            Some(h) => Zeroizing::new(h.hmac(&self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"])),
        }
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.transform == other.transform && bool::from(self.key.ct_eq(&other.key))
    }
}
impl Eq for Secret {}

/// Never prints the key.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Secret({} bytes, transform {})",
            self.key.len(),
            self.transform.map_or("none", HashId::name)
        )
    }
}

/// The DHHC-1 representation (contains the key: for key generation, not
/// for logs).
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sized once: growing it would leave an unwiped copy behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(self.key.len() + 4));
        buf.extend_from_slice(&self.key);
        buf.extend_from_slice(&crc32fast::hash(&self.key).to_le_bytes());
        let b64 = Zeroizing::new(STANDARD.encode(&*buf));
        write!(
            f,
            "{PREFIX}{:02}:{}:",
            self.transform.map_or(0, HashId::id),
            b64.as_str()
        )
    }
}

impl FromStr for Secret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Secret, SecretError> {
        let rest = s.strip_prefix(PREFIX).ok_or(SecretError::Prefix)?;
        let (xx, b64) = rest
            .split_once(':')
            .ok_or_else(|| SecretError::Transform(rest.chars().take(2).collect()))?;
        let transform = match xx {
            "00" => None,
            _ => Some(
                xx.parse::<u8>()
                    .ok()
                    .filter(|_| xx.len() == 2)
                    .and_then(HashId::from_id)
                    .ok_or_else(|| SecretError::Transform(xx.chars().take(8).collect()))?,
            ),
        };
        // The trailing ':' is part of the format; Linux accepts it missing.
        let b64 = b64.strip_suffix(':').unwrap_or(b64);
        let raw = Zeroizing::new(
            STANDARD
                .decode(b64)
                .map_err(|e| SecretError::Base64(e.to_string()))?,
        );
        if !matches!(raw.len(), 36 | 52 | 68) {
            return Err(SecretError::Length(raw.len()));
        }
        let (key, crc) = raw.split_at(raw.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32fast::hash(key);
        if stored != computed {
            return Err(SecretError::Crc { stored, computed });
        }
        Secret::new(key, transform)
    }
}

/// `text` with the key of every DHHC-1 secret in it replaced by "...", for
/// error messages that quote what an operator typed.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(PREFIX) {
        // keep "DHHC-1:XX:", drop the base64 key up to the next ':' or ','
        let head = (i + PREFIX.len() + 3).min(rest.len());
        out.push_str(&rest[..head]);
        let tail = &rest[head..];
        let end = tail.find([':', ',', '&']).unwrap_or(tail.len());
        out.push_str("...");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::unhex;

    // Vectors computed independently (Python: zlib.crc32, base64, hmac).
    const KEY32: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY32_00: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const KEY32_01: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:6c656170-696f-0000-0000-000000000001";
    const KEY32_01_TRANSFORMED: &str =
        "4e34dc7d003bf5a1ed7c0c8821f6db25dac8770b28dedcee4edfcb874b9ef09e";

    #[test]
    fn parses_and_prints() {
        let s: Secret = KEY32_00.parse().unwrap();
        assert_eq!(s.key(), unhex(KEY32));
        assert_eq!(s.transform(), None);
        assert_eq!(s.to_string(), KEY32_00);
        let s: Secret = KEY32_01.parse().unwrap();
        assert_eq!(s.transform(), Some(HashId::Sha256));
        assert_eq!(s.to_string(), KEY32_01);
        // without the trailing colon, as Linux accepts it
        let t: Secret = KEY32_01.trim_end_matches(':').parse().unwrap();
        assert_eq!(t, s);
        assert!(!format!("{s:?}").contains("AAEC"), "Debug shows no key");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact(&format!("allow=nqn.a:h:{KEY32_00}:{KEY32_01},x=1")),
            "allow=nqn.a:h:DHHC-1:00:...::DHHC-1:01:...:,x=1"
        );
        assert_eq!(redact("nothing here"), "nothing here");
        assert_eq!(redact("DHHC-1:0"), "DHHC-1:0...");
    }

    #[test]
    fn transformation() {
        let s: Secret = KEY32_01.parse().unwrap();
        assert_eq!(*s.transformed(HOSTNQN), unhex(KEY32_01_TRANSFORMED));
        let s: Secret = KEY32_00.parse().unwrap();
        assert_eq!(*s.transformed(HOSTNQN), unhex(KEY32));
    }

    #[test]
    fn generated_secrets_round_trip() {
        for (len, t) in [
            (32, None),
            (48, None),
            (64, None),
            (32, Some(HashId::Sha256)),
            (48, Some(HashId::Sha384)),
            (64, Some(HashId::Sha512)),
        ] {
            let s = Secret::generate(len, t).unwrap();
            let back: Secret = s.to_string().parse().unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let flipped = KEY32_00.replace("AAEC", "AAED");
        for (text, want) in [
            ("DHHC-2:00:AAAA:", SecretError::Prefix),
            ("secret", SecretError::Prefix),
            ("DHHC-1:04:AAAA:", SecretError::Transform("04".into())),
            ("DHHC-1:1:AAAA:", SecretError::Transform("1".into())),
            ("DHHC-1:AAAA", SecretError::Transform("AA".into())),
            ("DHHC-1:00:AAAA:", SecretError::Length(3)),
        ] {
            assert_eq!(text.parse::<Secret>().unwrap_err(), want, "{text}");
        }
        assert!(matches!(
            "DHHC-1:00:not base64!:".parse::<Secret>(),
            Err(SecretError::Base64(_))
        ));
        assert!(matches!(
            flipped.parse::<Secret>(),
            Err(SecretError::Crc { .. })
        ));
        // a 32-byte key cannot carry the SHA-384 transformation
        let wrong = KEY32_01.replace("DHHC-1:01", "DHHC-1:02");
        assert_eq!(
            wrong.parse::<Secret>().unwrap_err(),
            SecretError::TransformLength {
                transform: HashId::Sha384,
                want: 48,
                got: 32
            }
        );
        for e in [
            SecretError::Length(3).to_string(),
            flipped.parse::<Secret>().unwrap_err().to_string(),
        ] {
            assert!(
                e.contains("36, 52 or 68") || e.contains("CRC-32 mismatch"),
                "{e}"
            );
        }
    }
}
