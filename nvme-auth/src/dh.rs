//! Finite-field Diffie-Hellman groups of DH-HMAC-CHAP (DH group identifiers
//! 00h null, 01h ffdhe2048, 02h ffdhe3072, 03h ffdhe4096; RFC 7919, g = 2).
//!
//! Arithmetic is crypto-bigint's fixed-size Montgomery exponentiation
//! (constant time in the exponent's value); private exponents are 512
//! random bits (RFC 7919 asks for at least 225, 275 and 325 bits for these
//! groups). Peer values are checked to lie in [2, p-2]. Values on the wire
//! are big-endian and padded to the size of the group's prime, as Linux
//! sends them.

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Uint, Word, U512};
use zeroize::Zeroizing;

/// A DH group DH-HMAC-CHAP can negotiate (DhGroupID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// No Diffie-Hellman exchange: the plain challenge is used.
    Null,
    Ffdhe2048,
    Ffdhe3072,
    Ffdhe4096,
}

/// Why a DH value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DhError {
    #[error("DH value of {got} bytes for {group}, which takes {want}")]
    Length {
        group: DhGroup,
        got: usize,
        want: usize,
    },
    #[error("DH value outside [2, p-2] for {0}")]
    Range(DhGroup),
    #[error("the null DH group has no exchange")]
    NullGroup,
    #[error("no random bytes for a DH exponent")]
    Random,
}

impl DhGroup {
    /// Every group, in the order a host offers them.
    pub const ALL: [DhGroup; 4] = [
        DhGroup::Null,
        DhGroup::Ffdhe2048,
        DhGroup::Ffdhe3072,
        DhGroup::Ffdhe4096,
    ];

    pub fn from_id(id: u8) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|g| g.id() == id)
    }

    pub fn id(self) -> u8 {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 1,
            DhGroup::Ffdhe3072 => 2,
            DhGroup::Ffdhe4096 => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
        }
    }

    pub fn from_name(s: &str) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|g| g.name() == s)
    }

    /// Bytes of a DH value on the wire (0 for the null group).
    pub fn value_len(self) -> usize {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 256,
            DhGroup::Ffdhe3072 => 384,
            DhGroup::Ffdhe4096 => 512,
        }
    }

    /// The group's prime, big-endian hex.
    fn prime_hex(self) -> &'static str {
        match self {
            DhGroup::Null => "",
            DhGroup::Ffdhe2048 => FFDHE2048_P,
            DhGroup::Ffdhe3072 => FFDHE3072_P,
            DhGroup::Ffdhe4096 => FFDHE4096_P,
        }
    }

    /// base^exp mod p; `base` is `value_len()` bytes. Checks the base lies
    /// in [2, p-2] unless it is the generator.
    fn pow(self, base: Option<&[u8]>, exp: &[u8; 64]) -> Result<Zeroizing<Vec<u8>>, DhError> {
        const L2048: usize = 2048 / Word::BITS as usize;
        const L3072: usize = 3072 / Word::BITS as usize;
        const L4096: usize = 4096 / Word::BITS as usize;
        match self {
            DhGroup::Null => Err(DhError::NullGroup),
            DhGroup::Ffdhe2048 => pow_mod::<L2048>(self, base, exp),
            DhGroup::Ffdhe3072 => pow_mod::<L3072>(self, base, exp),
            DhGroup::Ffdhe4096 => pow_mod::<L4096>(self, base, exp),
        }
    }
}

impl std::fmt::Display for DhGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn pow_mod<const L: usize>(
    group: DhGroup,
    base: Option<&[u8]>,
    exp: &[u8; 64],
) -> Result<Zeroizing<Vec<u8>>, DhError> {
    let p = Uint::<L>::from_be_hex(group.prime_hex());
    let b = match base {
        None => Uint::<L>::from_u8(2),
        Some(bytes) => {
            if bytes.len() != Uint::<L>::BYTES {
                return Err(DhError::Length {
                    group,
                    got: bytes.len(),
                    want: Uint::<L>::BYTES,
                });
            }
            let y = Uint::<L>::from_be_slice(bytes);
            let p_minus_1 = p.wrapping_sub(&Uint::<L>::ONE);
            if y < Uint::<L>::from_u8(2) || y >= p_minus_1 {
                return Err(DhError::Range(group));
            }
            y
        }
    };
    let params = DynResidueParams::new(&p);
    // The private exponent and the shared value are wiped when dropped.
    let x = Zeroizing::new(U512::from_be_slice(exp));
    let r = Zeroizing::new(
        DynResidue::new(&b, params)
            .pow_bounded_exp(&x, 512)
            .retrieve(),
    );
    Ok(Zeroizing::new(be_bytes(&r)))
}

/// Big-endian bytes of `v`, as wide as the type (allocated once: a
/// growing vector would leave copies of a secret behind).
fn be_bytes<const L: usize>(v: &Uint<L>) -> Vec<u8> {
    let mut out = Vec::with_capacity(Uint::<L>::BYTES);
    for w in v.as_words().iter().rev() {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out
}

/// One side's ephemeral key pair.
pub struct DhKey {
    group: DhGroup,
    private: Zeroizing<[u8; 64]>,
    public: Vec<u8>,
}

impl DhKey {
    /// A fresh key pair in `group` (not the null group).
    pub fn generate(group: DhGroup) -> Result<DhKey, DhError> {
        let mut private = Zeroizing::new([0u8; 64]);
        getrandom::fill(&mut *private).map_err(|_| DhError::Random)?;
        // An exponent of 0 or 1 would expose g^x; force the top bit instead.
        private[0] |= 0x80;
        DhKey::from_private(group, private)
    }

    fn from_private(group: DhGroup, private: Zeroizing<[u8; 64]>) -> Result<DhKey, DhError> {
        let public = group.pow(None, &private)?.to_vec();
        Ok(DhKey {
            group,
            private,
            public,
        })
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// g^x mod p, to send to the peer.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret g^xy mod p from the peer's value.
    pub fn shared_secret(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, DhError> {
        self.group.pow(Some(peer), &self.private)
    }
}

const FFDHE2048_P: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF",
);
const FFDHE3072_P: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B",
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF",
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E",
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF",
);
const FFDHE4096_P: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B",
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF",
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E",
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB",
    "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A",
    "7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038",
    "092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF",
    "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E655F6AFFFFFFFFFFFFFFFF",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::unhex;

    const X_HEX: &str = "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";
    const GX_2048_HEX: &str = concat!(
        "489bec9e520a21fdc71352ab9e9ba7cd214c5571718be25f99c3ba32b98f65c6",
        "c760ba015239cafd9ee5d7aec08d191b404183e1d6e567d16b9406d02a43df64",
        "52b34a9a830dce297e2cf91c496fe01ad4ec5f9ab4b268ef9d78aee94cd55a47",
        "65111963afd7123746c4d709535715bae5396504df5226e55d3e9d22626ae982",
        "74a5de00980310f064530776bf4f74b81640a31ea6426c9f8d207a9de72f8c2e",
        "ceea86ed877e712cfe2d296d85f2de682e654ba59025ba70ee0c2e4ba7a95ef6",
        "0aac0190d90624385b0f42c4662107593c31727c8a267aa248c4a476f22d7509",
        "65080a78758bee3d5ebecc17b1ed1b585b84ada3755573867d7dbc621ef57798",
    );

    #[test]
    fn primes_have_the_rfc7919_shape() {
        for g in [DhGroup::Ffdhe2048, DhGroup::Ffdhe3072, DhGroup::Ffdhe4096] {
            let h = g.prime_hex();
            assert_eq!(h.len(), g.value_len() * 2, "{g}");
            assert!(h.starts_with("FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1"));
            assert!(h.ends_with("FFFFFFFFFFFFFFFF"));
        }
        assert!(FFDHE2048_P.ends_with("886B423861285C97FFFFFFFFFFFFFFFF"));
    }

    /// Expected values from Python's pow(2, x, p) with the RFC 7919 prime.
    #[test]
    fn known_exponentiation() {
        let mut x = Zeroizing::new([0u8; 64]);
        x[63] = 3;
        let k = DhKey::from_private(DhGroup::Ffdhe2048, x).unwrap();
        let mut want = vec![0u8; 256];
        want[255] = 8;
        assert_eq!(k.public(), want, "2^3");
        let mut x = Zeroizing::new([0u8; 64]);
        x.copy_from_slice(&unhex(X_HEX));
        let k = DhKey::from_private(DhGroup::Ffdhe2048, x).unwrap();
        assert_eq!(k.public(), unhex(GX_2048_HEX));
    }

    #[test]
    fn agreement_in_every_group() {
        for g in [DhGroup::Ffdhe2048, DhGroup::Ffdhe3072, DhGroup::Ffdhe4096] {
            let a = DhKey::generate(g).unwrap();
            let b = DhKey::generate(g).unwrap();
            assert_eq!(a.public().len(), g.value_len());
            let s1 = a.shared_secret(b.public()).unwrap();
            let s2 = b.shared_secret(a.public()).unwrap();
            assert_eq!(*s1, *s2, "{g}");
            assert_eq!(s1.len(), g.value_len());
            assert_ne!(a.public(), b.public());
        }
    }

    #[test]
    fn bad_peer_values() {
        let a = DhKey::generate(DhGroup::Ffdhe2048).unwrap();
        let mut v = vec![0u8; 256];
        v[255] = 1;
        assert_eq!(a.shared_secret(&v), Err(DhError::Range(DhGroup::Ffdhe2048)));
        let p_minus_1 = {
            let mut p = unhex(FFDHE2048_P);
            p[255] -= 1;
            p
        };
        assert_eq!(
            a.shared_secret(&p_minus_1),
            Err(DhError::Range(DhGroup::Ffdhe2048))
        );
        assert_eq!(
            a.shared_secret(&[0xff; 256]),
            Err(DhError::Range(DhGroup::Ffdhe2048))
        );
        assert!(matches!(
            a.shared_secret(&[2u8; 255]),
            Err(DhError::Length { got: 255, .. })
        ));
        assert_eq!(
            DhKey::generate(DhGroup::Null).err(),
            Some(DhError::NullGroup)
        );
    }
}
