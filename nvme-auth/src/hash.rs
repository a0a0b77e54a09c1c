//! The hash functions of DH-HMAC-CHAP (hash identifiers 01h..03h): SHA-256,
//! SHA-384 and SHA-512, as plain digests and as HMAC.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// A hash function DH-HMAC-CHAP can negotiate (HashID) or use to transform a
/// secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashId {
    Sha256,
    Sha384,
    Sha512,
}

impl HashId {
    /// Every hash function, in the order a host offers them.
    pub const ALL: [HashId; 3] = [HashId::Sha256, HashId::Sha384, HashId::Sha512];

    /// From its identifier on the wire (01h, 02h, 03h).
    pub fn from_id(id: u8) -> Option<HashId> {
        match id {
            1 => Some(HashId::Sha256),
            2 => Some(HashId::Sha384),
            3 => Some(HashId::Sha512),
            _ => None,
        }
    }

    pub fn id(self) -> u8 {
        match self {
            HashId::Sha256 => 1,
            HashId::Sha384 => 2,
            HashId::Sha512 => 3,
        }
    }

    /// Digest length in bytes (also the length of challenges and responses).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            HashId::Sha256 => 32,
            HashId::Sha384 => 48,
            HashId::Sha512 => 64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HashId::Sha256 => "sha256",
            HashId::Sha384 => "sha384",
            HashId::Sha512 => "sha512",
        }
    }

    /// From "sha256", "sha384", "sha512" (also "hmac(sha256)", as Linux's
    /// configfs spells them).
    pub fn from_name(s: &str) -> Option<HashId> {
        let s = s
            .strip_prefix("hmac(")
            .and_then(|x| x.strip_suffix(')'))
            .unwrap_or(s);
        HashId::ALL.into_iter().find(|h| h.name() == s)
    }

    /// H(data).
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashId::Sha256 => Sha256::digest(data).to_vec(),
            HashId::Sha384 => Sha384::digest(data).to_vec(),
            HashId::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// HMAC(key, parts[0] || parts[1] || ...).
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            HashId::Sha256 => mac::<Hmac<Sha256>>(key, parts),
            HashId::Sha384 => mac::<Hmac<Sha384>>(key, parts),
            HashId::Sha512 => mac::<Hmac<Sha512>>(key, parts),
        }
    }
}

impl std::fmt::Display for HashId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length: new_from_slice cannot fail. Were it to,
    // an empty value matches no response, so authentication fails closed.
    let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
        return Vec::new();
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        crate::tests::unhex(s)
    }

    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = b"Jefe";
        let parts: [&[u8]; 2] = [b"what do ya want ", b"for nothing?"];
        assert_eq!(
            HashId::Sha256.hmac(key, &parts),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            HashId::Sha384.hmac(key, &parts),
            hex("af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649")
        );
        assert_eq!(
            HashId::Sha512.hmac(key, &parts),
            hex("164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737")
        );
    }

    #[test]
    fn ids_names_lengths() {
        for h in HashId::ALL {
            assert_eq!(HashId::from_id(h.id()), Some(h));
            assert_eq!(HashId::from_name(h.name()), Some(h));
            assert_eq!(h.digest(b"").len(), h.len());
        }
        assert_eq!(HashId::from_id(0), None);
        assert_eq!(HashId::from_id(4), None);
        assert_eq!(HashId::from_name("hmac(sha384)"), Some(HashId::Sha384));
        assert_eq!(HashId::from_name("md5"), None);
    }
}
