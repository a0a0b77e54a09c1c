//! The values both sides compute (NVMe Base Specification 2.x, 8.13.5.6):
//!
//! - host response R1 = HMAC(Kh, Ca1 || S1 || T_ID || 00h || "HostHost" ||
//!   NQNh || 00h || NQNc), with Kh the host secret transformed with NQNh;
//! - controller response R2 = HMAC(Kc, Ca2 || S2 || T_ID || 00h ||
//!   "Controller" || NQNc || 00h || NQNh), with Kc the controller secret
//!   transformed with NQNc;
//! - with a DH group, each challenge C is first augmented:
//!   Ca = HMAC(H(g^xy mod p), C); with the null group Ca = C.
//!
//! S1, S2 are little-endian 32-bit, T_ID little-endian 16-bit; the 00h
//! after T_ID is the secure channel concatenation byte (SC_C).

use crate::hash::HashId;
use zeroize::Zeroizing;

/// Ca = HMAC(H(session key), C), wiped when dropped (it is derived from
/// the session key).
pub fn augmented_challenge(
    hash: HashId,
    session_key: &[u8],
    challenge: &[u8],
) -> Zeroizing<Vec<u8>> {
    let k = Zeroizing::new(hash.digest(session_key));
    Zeroizing::new(hash.hmac(&k, &[challenge]))
}

/// The challenge to answer: augmented when there is a session key.
pub fn effective_challenge(
    hash: HashId,
    session_key: Option<&[u8]>,
    challenge: &[u8],
) -> Zeroizing<Vec<u8>> {
    match session_key {
        Some(k) => augmented_challenge(hash, k, challenge),
        None => Zeroizing::new(challenge.to_vec()),
    }
}

/// R1, the host's response.
pub fn host_response(
    hash: HashId,
    host_key: &[u8],
    challenge: &[u8],
    seqnum: u32,
    tid: u16,
    hostnqn: &str,
    subnqn: &str,
) -> Vec<u8> {
    response(
        hash,
        host_key,
        challenge,
        seqnum,
        tid,
        b"HostHost",
        hostnqn,
        subnqn,
    )
}

/// R2, the controller's response.
pub fn ctrl_response(
    hash: HashId,
    ctrl_key: &[u8],
    challenge: &[u8],
    seqnum: u32,
    tid: u16,
    hostnqn: &str,
    subnqn: &str,
) -> Vec<u8> {
    response(
        hash,
        ctrl_key,
        challenge,
        seqnum,
        tid,
        b"Controller",
        subnqn,
        hostnqn,
    )
}

#[allow(clippy::too_many_arguments)]
fn response(
    hash: HashId,
    key: &[u8],
    challenge: &[u8],
    seqnum: u32,
    tid: u16,
    label: &[u8],
    first: &str,
    second: &str,
) -> Vec<u8> {
    hash.hmac(
        key,
        &[
            challenge,
            &seqnum.to_le_bytes(),
            &tid.to_le_bytes(),
            &[0],
            label,
            first.as_bytes(),
            &[0],
            second.as_bytes(),
        ],
    )
}
