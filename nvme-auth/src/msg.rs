//! The messages of an authentication transaction, carried as the data of
//! AUTH_Send (host to controller) and AUTH_Recv (controller to host)
//! Fabrics commands (NVMe Base Specification 2.x, 8.13.5 and the
//! Authentication Send/Receive commands: SECP E9h, SPSP0 01h, SPSP1 01h).
//!
//! Each message starts with AUTH-Type (00h common, 01h DH-HMAC-CHAP),
//! AUTH-Id and the transaction identifier (T_ID). Fixed parts are zerocopy
//! structs; variable parts (challenge, response, DH values) follow them.

use crate::dh::DhGroup;
use crate::hash::HashId;
use zerocopy::little_endian::{U16 as Le16, U32 as Le32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Security protocol of DH-HMAC-CHAP (SECP of AUTH_Send/AUTH_Recv).
pub const SECP_DHCHAP: u8 = 0xe9;
/// SPSP0 and SPSP1 of AUTH_Send/AUTH_Recv for DH-HMAC-CHAP.
pub const SPSP_DHCHAP: u8 = 0x01;
/// AUTH-Type of Negotiate and the Failure messages.
pub const AUTH_TYPE_COMMON: u8 = 0x00;
/// AUTH-Type of the other DH-HMAC-CHAP messages.
pub const AUTH_TYPE_DHCHAP: u8 = 0x01;
/// AUTH-ID of the DH-HMAC-CHAP protocol descriptor.
pub const AUTHID_DHCHAP: u8 = 0x01;
/// Most hash or DH group identifiers one descriptor lists.
pub const MAX_IDS: usize = 30;
/// A buffer large enough for any message (a Challenge with an ffdhe8192
/// value is 1104 bytes); what Linux's host gives AUTH_Recv.
pub const MAX_MESSAGE: usize = 4096;

/// AUTH-Id values.
pub struct MsgId;
impl MsgId {
    pub const NEGOTIATE: u8 = 0x00;
    pub const CHALLENGE: u8 = 0x01;
    pub const REPLY: u8 = 0x02;
    pub const SUCCESS1: u8 = 0x03;
    pub const SUCCESS2: u8 = 0x04;
    pub const FAILURE2: u8 = 0xf0;
    pub const FAILURE1: u8 = 0xf1;
}

/// Reason code explanations of Failure1/Failure2 (reason code 01h,
/// "authentication failure").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureCode(pub u8);
impl FailureCode {
    pub const FAILED: FailureCode = FailureCode(0x01);
    pub const PROTOCOL_UNUSABLE: FailureCode = FailureCode(0x02);
    pub const CONCAT_MISMATCH: FailureCode = FailureCode(0x03);
    pub const HASH_UNUSABLE: FailureCode = FailureCode(0x04);
    pub const DHGROUP_UNUSABLE: FailureCode = FailureCode(0x05);
    pub const INCORRECT_PAYLOAD: FailureCode = FailureCode(0x06);
    pub const INCORRECT_MESSAGE: FailureCode = FailureCode(0x07);
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match *self {
            FailureCode::FAILED => "authentication failed",
            FailureCode::PROTOCOL_UNUSABLE => "authentication protocol not usable",
            FailureCode::CONCAT_MISMATCH => "secure channel concatenation mismatch",
            FailureCode::HASH_UNUSABLE => "hash function not usable",
            FailureCode::DHGROUP_UNUSABLE => "DH group not usable",
            FailureCode::INCORRECT_PAYLOAD => "incorrect payload",
            FailureCode::INCORRECT_MESSAGE => "incorrect protocol message",
            _ => "unknown reason",
        };
        write!(f, "{what} ({:#04x})", self.0)
    }
}

/// Failure reason code "authentication failure".
const RESCODE_FAILED: u8 = 0x01;

/// AUTH_Negotiate, fixed part (followed by NAPD protocol descriptors).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct NegotiateHdr {
    pub auth_type: u8,
    pub auth_id: u8,
    pub rsvd2: [u8; 2],
    pub t_id: Le16,
    /// Secure channel concatenation (00h: none).
    pub sc_c: u8,
    /// Number of protocol descriptors.
    pub napd: u8,
}
const _: () = assert!(core::mem::size_of::<NegotiateHdr>() == 8);

/// An authentication protocol descriptor (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ProtocolDescriptor {
    pub authid: u8,
    pub rsvd1: u8,
    /// Hash identifiers listed (at most 30, in idlist[0..30]).
    pub halen: u8,
    /// DH group identifiers listed (at most 30, in idlist[30..60]).
    pub dhlen: u8,
    pub idlist: [u8; 60],
}
const _: () = assert!(core::mem::size_of::<ProtocolDescriptor>() == 64);

/// DH-HMAC-CHAP_Challenge, fixed part (followed by HL bytes of challenge
/// and DHVLEN bytes of DH value).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ChallengeHdr {
    pub auth_type: u8,
    pub auth_id: u8,
    pub rsvd2: [u8; 2],
    pub t_id: Le16,
    pub hl: u8,
    pub rsvd7: u8,
    pub hashid: u8,
    pub dhgid: u8,
    pub dhvlen: Le16,
    pub seqnum: Le32,
}
const _: () = assert!(core::mem::size_of::<ChallengeHdr>() == 16);

/// DH-HMAC-CHAP_Reply, fixed part (followed by HL bytes of response, HL
/// bytes of the host's challenge C2 and DHVLEN bytes of DH value).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReplyHdr {
    pub auth_type: u8,
    pub auth_id: u8,
    pub rsvd2: [u8; 2],
    pub t_id: Le16,
    pub hl: u8,
    pub rsvd7: u8,
    /// C2 is valid: the host asks the controller to authenticate.
    pub cvalid: u8,
    pub rsvd9: u8,
    pub dhvlen: Le16,
    /// S2 (0: no controller authentication).
    pub seqnum: Le32,
}
const _: () = assert!(core::mem::size_of::<ReplyHdr>() == 16);

/// DH-HMAC-CHAP_Success1, fixed part (followed by HL bytes of the
/// controller's response).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Success1Hdr {
    pub auth_type: u8,
    pub auth_id: u8,
    pub rsvd2: [u8; 2],
    pub t_id: Le16,
    pub hl: u8,
    pub rsvd7: u8,
    /// The response value is valid.
    pub rvalid: u8,
    pub rsvd9: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<Success1Hdr>() == 16);

/// DH-HMAC-CHAP_Success2.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Success2 {
    pub auth_type: u8,
    pub auth_id: u8,
    pub rsvd2: [u8; 2],
    pub t_id: Le16,
    pub rsvd6: [u8; 10],
}
const _: () = assert!(core::mem::size_of::<Success2>() == 16);

/// AUTH_Failure1 and AUTH_Failure2.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Failure {
    pub auth_type: u8,
    pub auth_id: u8,
    pub rsvd2: [u8; 2],
    pub t_id: Le16,
    pub rescode: u8,
    pub rescode_exp: u8,
}
const _: () = assert!(core::mem::size_of::<Failure>() == 8);

/// A message as received.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Negotiate {
        tid: u16,
        sc_c: u8,
        /// Hash identifiers offered, in the host's order.
        hashes: Vec<u8>,
        /// DH group identifiers offered, in the host's order.
        dhgroups: Vec<u8>,
    },
    Challenge {
        tid: u16,
        hashid: u8,
        dhgid: u8,
        seqnum: u32,
        challenge: &'a [u8],
        dh_value: &'a [u8],
    },
    Reply {
        tid: u16,
        seqnum: u32,
        response: &'a [u8],
        /// C2, when CVALID is set.
        challenge: Option<&'a [u8]>,
        dh_value: &'a [u8],
    },
    Success1 {
        tid: u16,
        hl: u8,
        /// The controller's response, when RVALID is set.
        response: Option<&'a [u8]>,
    },
    Success2 {
        tid: u16,
    },
    Failure1 {
        tid: u16,
        code: FailureCode,
    },
    Failure2 {
        tid: u16,
        code: FailureCode,
    },
}

impl Message<'_> {
    pub fn tid(&self) -> u16 {
        match *self {
            Message::Negotiate { tid, .. }
            | Message::Challenge { tid, .. }
            | Message::Reply { tid, .. }
            | Message::Success1 { tid, .. }
            | Message::Success2 { tid }
            | Message::Failure1 { tid, .. }
            | Message::Failure2 { tid, .. } => tid,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Message::Negotiate { .. } => "AUTH_Negotiate",
            Message::Challenge { .. } => "DH-HMAC-CHAP_Challenge",
            Message::Reply { .. } => "DH-HMAC-CHAP_Reply",
            Message::Success1 { .. } => "DH-HMAC-CHAP_Success1",
            Message::Success2 { .. } => "DH-HMAC-CHAP_Success2",
            Message::Failure1 { .. } => "AUTH_Failure1",
            Message::Failure2 { .. } => "AUTH_Failure2",
        }
    }
}

/// Why a message could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsgError {
    #[error("{0}-byte message is too short")]
    Short(usize),
    #[error("unknown message (AUTH-Type {auth_type:#04x}, AUTH-Id {auth_id:#04x})")]
    Unknown { auth_type: u8, auth_id: u8 },
    #[error("{what}: {len} bytes announced, {have} present")]
    Truncated {
        what: &'static str,
        len: usize,
        have: usize,
    },
    #[error("AUTH_Negotiate lists no DH-HMAC-CHAP protocol descriptor")]
    NoDhchapDescriptor,
    #[error(
        "AUTH_Negotiate lists {halen} hash and {dhlen} DH group identifiers (at most 30 each)"
    )]
    TooManyIds { halen: u8, dhlen: u8 },
}

impl MsgError {
    /// The failure explanation a peer gets for this message.
    pub fn failure_code(&self) -> FailureCode {
        match self {
            MsgError::Unknown { .. } => FailureCode::INCORRECT_MESSAGE,
            MsgError::NoDhchapDescriptor => FailureCode::PROTOCOL_UNUSABLE,
            _ => FailureCode::INCORRECT_PAYLOAD,
        }
    }
}

fn fixed<T: FromBytes + KnownLayout + Immutable>(b: &[u8]) -> Result<(T, &[u8]), MsgError> {
    T::read_from_prefix(b).map_err(|_| MsgError::Short(b.len()))
}

/// `len` bytes at the start of `rest`.
fn take<'a>(rest: &mut &'a [u8], len: usize, what: &'static str) -> Result<&'a [u8], MsgError> {
    if rest.len() < len {
        return Err(MsgError::Truncated {
            what,
            len,
            have: rest.len(),
        });
    }
    let (a, b) = rest.split_at(len);
    *rest = b;
    Ok(a)
}

/// Parse one message (bytes past its end are ignored: AUTH_Recv buffers
/// are larger than the message they carry).
pub fn parse(b: &[u8]) -> Result<Message<'_>, MsgError> {
    if b.len() < 8 {
        return Err(MsgError::Short(b.len()));
    }
    match (b[0], b[1]) {
        (AUTH_TYPE_COMMON, MsgId::NEGOTIATE) => parse_negotiate(b),
        (AUTH_TYPE_COMMON, MsgId::FAILURE1 | MsgId::FAILURE2) => {
            let (f, _) = fixed::<Failure>(b)?;
            let tid = f.t_id.get();
            let code = FailureCode(f.rescode_exp);
            Ok(if b[1] == MsgId::FAILURE1 {
                Message::Failure1 { tid, code }
            } else {
                Message::Failure2 { tid, code }
            })
        }
        (AUTH_TYPE_DHCHAP, MsgId::CHALLENGE) => {
            let (h, mut rest) = fixed::<ChallengeHdr>(b)?;
            let challenge = take(&mut rest, usize::from(h.hl), "challenge value")?;
            let dh_value = take(&mut rest, usize::from(h.dhvlen.get()), "DH value")?;
            Ok(Message::Challenge {
                tid: h.t_id.get(),
                hashid: h.hashid,
                dhgid: h.dhgid,
                seqnum: h.seqnum.get(),
                challenge,
                dh_value,
            })
        }
        (AUTH_TYPE_DHCHAP, MsgId::REPLY) => {
            let (h, mut rest) = fixed::<ReplyHdr>(b)?;
            let hl = usize::from(h.hl);
            let response = take(&mut rest, hl, "response value")?;
            let c2 = take(&mut rest, hl, "challenge value")?;
            let dh_value = take(&mut rest, usize::from(h.dhvlen.get()), "DH value")?;
            Ok(Message::Reply {
                tid: h.t_id.get(),
                seqnum: h.seqnum.get(),
                response,
                challenge: (h.cvalid & 1 != 0).then_some(c2),
                dh_value,
            })
        }
        (AUTH_TYPE_DHCHAP, MsgId::SUCCESS1) => {
            let (h, mut rest) = fixed::<Success1Hdr>(b)?;
            let response = if h.rvalid & 1 != 0 {
                Some(take(&mut rest, usize::from(h.hl), "response value")?)
            } else {
                None
            };
            Ok(Message::Success1 {
                tid: h.t_id.get(),
                hl: h.hl,
                response,
            })
        }
        (AUTH_TYPE_DHCHAP, MsgId::SUCCESS2) => {
            let (h, _) = fixed::<Success2>(b)?;
            Ok(Message::Success2 { tid: h.t_id.get() })
        }
        (auth_type, auth_id) => Err(MsgError::Unknown { auth_type, auth_id }),
    }
}

fn parse_negotiate(b: &[u8]) -> Result<Message<'_>, MsgError> {
    let (h, mut rest) = fixed::<NegotiateHdr>(b)?;
    let mut found = None;
    for _ in 0..h.napd {
        let d = take(&mut rest, 64, "protocol descriptor")?;
        let (d, _) = fixed::<ProtocolDescriptor>(d)?;
        if d.authid == AUTHID_DHCHAP && found.is_none() {
            found = Some(d);
        }
    }
    let d = found.ok_or(MsgError::NoDhchapDescriptor)?;
    if usize::from(d.halen) > MAX_IDS || usize::from(d.dhlen) > MAX_IDS {
        return Err(MsgError::TooManyIds {
            halen: d.halen,
            dhlen: d.dhlen,
        });
    }
    Ok(Message::Negotiate {
        tid: h.t_id.get(),
        sc_c: h.sc_c,
        hashes: d.idlist[..usize::from(d.halen)].to_vec(),
        dhgroups: d.idlist[MAX_IDS..MAX_IDS + usize::from(d.dhlen)].to_vec(),
    })
}

fn le16(v: u16) -> Le16 {
    v.into()
}

/// AUTH_Negotiate offering `hashes` and `groups` (no secure channel).
pub fn negotiate(tid: u16, hashes: &[HashId], groups: &[DhGroup]) -> Vec<u8> {
    let h = NegotiateHdr {
        auth_type: AUTH_TYPE_COMMON,
        auth_id: MsgId::NEGOTIATE,
        rsvd2: [0; 2],
        t_id: le16(tid),
        sc_c: 0,
        napd: 1,
    };
    let mut d = ProtocolDescriptor::new_zeroed();
    d.authid = AUTHID_DHCHAP;
    for (slot, h) in d.idlist[..MAX_IDS].iter_mut().zip(hashes) {
        *slot = h.id();
        d.halen += 1;
    }
    for (slot, g) in d.idlist[MAX_IDS..].iter_mut().zip(groups) {
        *slot = g.id();
        d.dhlen += 1;
    }
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(d.as_bytes());
    v
}

fn len_u8(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

fn len_u16(n: usize) -> Le16 {
    u16::try_from(n).unwrap_or(u16::MAX).into()
}

/// DH-HMAC-CHAP_Challenge.
pub fn challenge(
    tid: u16,
    hash: HashId,
    group: DhGroup,
    seqnum: u32,
    c1: &[u8],
    dh_value: &[u8],
) -> Vec<u8> {
    let h = ChallengeHdr {
        auth_type: AUTH_TYPE_DHCHAP,
        auth_id: MsgId::CHALLENGE,
        rsvd2: [0; 2],
        t_id: le16(tid),
        hl: len_u8(c1.len()),
        rsvd7: 0,
        hashid: hash.id(),
        dhgid: group.id(),
        dhvlen: len_u16(dh_value.len()),
        seqnum: seqnum.into(),
    };
    [h.as_bytes(), c1, dh_value].concat()
}

/// DH-HMAC-CHAP_Reply; `c2` None when the controller is not to
/// authenticate (its bytes are then zero).
pub fn reply(
    tid: u16,
    response: &[u8],
    c2: Option<&[u8]>,
    seqnum: u32,
    dh_value: &[u8],
) -> Vec<u8> {
    let h = ReplyHdr {
        auth_type: AUTH_TYPE_DHCHAP,
        auth_id: MsgId::REPLY,
        rsvd2: [0; 2],
        t_id: le16(tid),
        hl: len_u8(response.len()),
        rsvd7: 0,
        cvalid: u8::from(c2.is_some()),
        rsvd9: 0,
        dhvlen: len_u16(dh_value.len()),
        seqnum: seqnum.into(),
    };
    let zeros = vec![0u8; response.len()];
    [h.as_bytes(), response, c2.unwrap_or(&zeros), dh_value].concat()
}

/// DH-HMAC-CHAP_Success1 with the controller's response, if any.
pub fn success1(tid: u16, hl: usize, response: Option<&[u8]>) -> Vec<u8> {
    let h = Success1Hdr {
        auth_type: AUTH_TYPE_DHCHAP,
        auth_id: MsgId::SUCCESS1,
        rsvd2: [0; 2],
        t_id: le16(tid),
        hl: len_u8(hl),
        rsvd7: 0,
        rvalid: u8::from(response.is_some()),
        rsvd9: [0; 7],
    };
    [h.as_bytes(), response.unwrap_or(&[])].concat()
}

/// DH-HMAC-CHAP_Success2.
pub fn success2(tid: u16) -> Vec<u8> {
    let mut m = Success2::new_zeroed();
    m.auth_type = AUTH_TYPE_DHCHAP;
    m.auth_id = MsgId::SUCCESS2;
    m.t_id = le16(tid);
    m.as_bytes().to_vec()
}

/// AUTH_Failure1 (controller to host) or AUTH_Failure2 (host to controller).
pub fn failure(tid: u16, failure1: bool, code: FailureCode) -> Vec<u8> {
    let f = Failure {
        auth_type: AUTH_TYPE_COMMON,
        auth_id: if failure1 {
            MsgId::FAILURE1
        } else {
            MsgId::FAILURE2
        },
        rsvd2: [0; 2],
        t_id: le16(tid),
        rescode: RESCODE_FAILED,
        rescode_exp: code.0,
    };
    f.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn offsets_match_the_spec() {
        assert_eq!(offset_of!(NegotiateHdr, t_id), 4);
        assert_eq!(offset_of!(NegotiateHdr, napd), 7);
        assert_eq!(offset_of!(ProtocolDescriptor, idlist), 4);
        assert_eq!(offset_of!(ChallengeHdr, hashid), 8);
        assert_eq!(offset_of!(ChallengeHdr, dhvlen), 10);
        assert_eq!(offset_of!(ChallengeHdr, seqnum), 12);
        assert_eq!(offset_of!(ReplyHdr, cvalid), 8);
        assert_eq!(offset_of!(ReplyHdr, seqnum), 12);
        assert_eq!(offset_of!(Success1Hdr, rvalid), 8);
        assert_eq!(offset_of!(Failure, rescode_exp), 7);
    }

    /// The bytes Linux's host sends as its AUTH_Negotiate (all three hashes,
    /// null and the five ffdhe groups), built by hand.
    #[test]
    fn linux_negotiate_parses() {
        let mut b = vec![0u8, 0, 0, 0, 0x2a, 0, 0, 1, 1, 0, 3, 6];
        let mut ids = [0u8; 60];
        ids[..3].copy_from_slice(&[1, 2, 3]);
        ids[30..36].copy_from_slice(&[0, 1, 2, 3, 4, 5]);
        b.extend_from_slice(&ids);
        assert_eq!(b.len(), 72);
        assert_eq!(
            parse(&b).unwrap(),
            Message::Negotiate {
                tid: 42,
                sc_c: 0,
                hashes: vec![1, 2, 3],
                dhgroups: vec![0, 1, 2, 3, 4, 5]
            }
        );
        let ours = negotiate(42, &HashId::ALL, &[DhGroup::Null, DhGroup::Ffdhe2048]);
        assert_eq!(&ours[..8], &b[..8]);
        assert_eq!(ours[10..12], [3, 2]);
    }

    #[test]
    fn round_trips() {
        let c = challenge(
            7,
            HashId::Sha384,
            DhGroup::Ffdhe2048,
            99,
            &[1; 48],
            &[2; 256],
        );
        assert_eq!(c.len(), 16 + 48 + 256);
        match parse(&c).unwrap() {
            Message::Challenge {
                tid: 7,
                hashid: 2,
                dhgid: 1,
                seqnum: 99,
                challenge,
                dh_value,
            } => {
                assert_eq!(challenge, &[1; 48]);
                assert_eq!(dh_value, &[2; 256]);
            }
            m => panic!("{m:?}"),
        }
        let r = reply(7, &[3; 32], Some(&[4; 32]), 5, &[]);
        assert!(matches!(
            parse(&r).unwrap(),
            Message::Reply { tid: 7, seqnum: 5, challenge: Some(c2), .. } if c2 == [4; 32]
        ));
        let r = reply(7, &[3; 32], None, 0, &[]);
        assert!(matches!(
            parse(&r).unwrap(),
            Message::Reply {
                challenge: None,
                ..
            }
        ));
        let s = success1(7, 32, Some(&[9; 32]));
        assert!(matches!(
            parse(&s).unwrap(),
            Message::Success1 { tid: 7, hl: 32, response: Some(r) } if r == [9; 32]
        ));
        // an AUTH_Recv buffer is bigger than the message: the tail is ignored
        let mut padded = success2(7);
        padded.resize(4096, 0);
        assert_eq!(parse(&padded).unwrap(), Message::Success2 { tid: 7 });
        assert_eq!(
            parse(&failure(7, true, FailureCode::FAILED)).unwrap(),
            Message::Failure1 {
                tid: 7,
                code: FailureCode::FAILED
            }
        );
    }

    #[test]
    fn malformed_messages() {
        assert_eq!(parse(&[0; 3]), Err(MsgError::Short(3)));
        assert_eq!(
            parse(&[1, 0x42, 0, 0, 0, 0, 0, 0]),
            Err(MsgError::Unknown {
                auth_type: 1,
                auth_id: 0x42
            })
        );
        // a challenge announcing more than it carries
        let mut c = challenge(
            1,
            HashId::Sha256,
            DhGroup::Ffdhe2048,
            1,
            &[1; 32],
            &[2; 256],
        );
        c.truncate(100);
        assert!(matches!(
            parse(&c),
            Err(MsgError::Truncated {
                what: "DH value",
                ..
            })
        ));
        // a negotiate without its descriptor, or with too many identifiers
        let n = negotiate(1, &HashId::ALL, &DhGroup::ALL);
        assert!(matches!(parse(&n[..8]), Err(MsgError::Truncated { .. })));
        let mut bad = n.clone();
        bad[8] = 9;
        assert_eq!(parse(&bad), Err(MsgError::NoDhchapDescriptor));
        let mut bad = n;
        bad[10] = 31;
        assert!(matches!(parse(&bad), Err(MsgError::TooManyIds { .. })));
        let mut s = success1(1, 64, Some(&[0; 64]));
        s.truncate(40);
        assert!(parse(&s).is_err());
    }
}
