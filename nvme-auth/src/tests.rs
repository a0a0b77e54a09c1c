//! Known vectors for the responses and in-process transactions between
//! [`HostTransaction`] and [`CtrlAuth`].

use crate::ctrl::{CtrlAuth, Policy};
use crate::dh::DhGroup;
use crate::hash::HashId;
use crate::host::HostTransaction;
use crate::msg::{self, FailureCode, Message};
use crate::response::{augmented_challenge, ctrl_response, host_response};
use crate::secret::Secret;
use crate::{AuthError, Secrets};
use std::sync::Arc;

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:6c656170-696f-0000-0000-000000000001";
const SUBNQN: &str = "nqn.2026-11.io.leapio:tgt0";

/// Expected values computed with Python's hmac/hashlib from the formulas
/// of the specification (see `response`).
#[test]
fn response_vectors() {
    let key: Vec<u8> = (0..32).collect();
    let s = Secret::new(&key, Some(HashId::Sha256)).unwrap();
    let kh = s.transformed(HOSTNQN);
    let c1 = [0x11u8; 32];
    assert_eq!(
        host_response(
            HashId::Sha256,
            &kh,
            &c1,
            0x0102_0304,
            0x0a0b,
            HOSTNQN,
            SUBNQN
        ),
        unhex("43ad213c9475bb98ecd669171c4f3f248ce4d1b6503cbcca9593a257ff80add6")
    );
    let kc: Vec<u8> = (0x20..0x40).collect();
    assert_eq!(
        ctrl_response(
            HashId::Sha256,
            &kc,
            &c1,
            0x0102_0304,
            0x0a0b,
            HOSTNQN,
            SUBNQN
        ),
        unhex("340cb9ac35959604bb3bff79a95460e7fcad4d467fbea538d46504f50dfa7496")
    );
    assert_eq!(
        *augmented_challenge(HashId::Sha384, &[0x5a; 256], &[0x22; 48]),
        unhex("adcab64cfb10087e6841864c2c5ccd775f6c84e6ab88d9c6a9d4dd1a67753edb7d5650d339250ff6e6884fb31b5c1acf")
    );
}

fn secrets(bidirectional: bool) -> Secrets {
    Secrets {
        host: Secret::generate(48, Some(HashId::Sha384)).unwrap(),
        ctrl: bidirectional.then(|| Secret::generate(32, None).unwrap()),
    }
}

/// Run a whole transaction: the host's result and the controller's state.
fn run(
    host: &Secrets,
    ctrl: &Secrets,
    policy: Policy,
    tid: u16,
) -> (Result<(), AuthError>, CtrlAuth) {
    let mut c = CtrlAuth::new(Arc::new(ctrl.clone()), HOSTNQN, SUBNQN, Arc::new(policy));
    let r = run_on(&mut c, host, tid);
    (r, c)
}

fn run_on(c: &mut CtrlAuth, host: &Secrets, tid: u16) -> Result<(), AuthError> {
    let mut h = HostTransaction::new(host, HOSTNQN, SUBNQN, tid);
    c.send(&h.negotiate());
    let challenge = c.recv();
    let reply = match h.reply(&challenge) {
        Ok(r) => r,
        Err(e) => {
            c.send(&h.failure2(e.failure_code()));
            return Err(e);
        }
    };
    c.send(&reply);
    match h.finish(&c.recv()) {
        Ok(Some(s2)) => {
            c.send(&s2);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            if !matches!(e, AuthError::Refused(_)) {
                c.send(&h.failure2(e.failure_code()));
            }
            Err(e)
        }
    }
}

#[test]
fn every_hash_and_group_authenticates() {
    for hash in HashId::ALL {
        for group in DhGroup::ALL {
            for bidi in [false, true] {
                let s = secrets(bidi);
                let policy = Policy {
                    hashes: vec![hash],
                    groups: vec![group],
                };
                let (r, c) = run(&s, &s, policy, 1);
                assert!(r.is_ok(), "{hash} {group} bidi={bidi}: {r:?}");
                assert!(c.authenticated() && !c.must_close(), "{hash} {group}");
            }
        }
    }
}

#[test]
fn the_controller_prefers_its_own_order() {
    let s = secrets(false);
    let mut c = CtrlAuth::new(
        Arc::new(s.clone()),
        HOSTNQN,
        SUBNQN,
        Arc::new(Policy {
            hashes: vec![HashId::Sha512, HashId::Sha256],
            groups: vec![DhGroup::Ffdhe3072, DhGroup::Null],
        }),
    );
    let mut h = HostTransaction::new(&s, HOSTNQN, SUBNQN, 9);
    c.send(&h.negotiate());
    let ch = c.recv();
    h.reply(&ch).unwrap();
    assert_eq!(h.negotiated(), Some((HashId::Sha512, DhGroup::Ffdhe3072)));
}

#[test]
fn wrong_host_secret_gets_failure1() {
    let good = secrets(false);
    let bad = secrets(false);
    let (r, c) = run(&bad, &good, Policy::default(), 1);
    assert!(
        matches!(r, Err(AuthError::Refused(FailureCode::FAILED))),
        "{r:?}"
    );
    assert!(!c.authenticated());
    assert!(c.must_close());
    assert!(c.failure_reason().unwrap().contains("does not match"));
}

#[test]
fn wrong_controller_secret_is_caught_by_the_host() {
    let host = secrets(true);
    let mut ctrl = host.clone();
    ctrl.ctrl = Some(Secret::generate(32, None).unwrap());
    let (r, c) = run(&host, &ctrl, Policy::default(), 1);
    assert!(
        matches!(r, Err(AuthError::ControllerNotAuthenticated)),
        "{r:?}"
    );
    // the host's Failure2 ends it on the controller's side too
    assert!(!c.authenticated() && c.must_close());
}

#[test]
fn bidirectional_needs_a_controller_secret() {
    let host = secrets(true);
    let ctrl = Secrets {
        ctrl: None,
        ..host.clone()
    };
    let (r, c) = run(&host, &ctrl, Policy::default(), 1);
    assert!(
        matches!(r, Err(AuthError::Refused(FailureCode::FAILED))),
        "{r:?}"
    );
    assert!(c.must_close());
}

#[test]
fn unusable_offers_are_refused() {
    let s = secrets(false);
    let mut c = CtrlAuth::new(
        Arc::new(s.clone()),
        HOSTNQN,
        SUBNQN,
        Arc::new(Policy::default()),
    );
    c.send(&msg::negotiate(1, &[], &DhGroup::ALL));
    assert_eq!(
        msg::parse(&c.recv()).unwrap(),
        Message::Failure1 {
            tid: 1,
            code: FailureCode::HASH_UNUSABLE
        }
    );
    assert!(c.must_close());
    let mut c = CtrlAuth::new(
        Arc::new(s),
        HOSTNQN,
        SUBNQN,
        Arc::new(Policy {
            groups: vec![DhGroup::Ffdhe4096],
            ..Policy::default()
        }),
    );
    c.send(&msg::negotiate(1, &HashId::ALL, &[DhGroup::Null]));
    assert!(matches!(
        msg::parse(&c.recv()).unwrap(),
        Message::Failure1 {
            code: FailureCode::DHGROUP_UNUSABLE,
            ..
        }
    ));
}

#[test]
fn replayed_and_mismatched_transaction_ids() {
    let s = secrets(false);
    let mut c = CtrlAuth::new(
        Arc::new(s.clone()),
        HOSTNQN,
        SUBNQN,
        Arc::new(Policy::default()),
    );
    run_on(&mut c, &s, 5).unwrap();
    assert!(c.authenticated());
    // re-authentication with a new T_ID works...
    run_on(&mut c, &s, 6).unwrap();
    assert!(c.authenticated());
    // ...the same T_ID again does not
    let r = run_on(&mut c, &s, 6);
    assert!(
        matches!(r, Err(AuthError::Refused(FailureCode::INCORRECT_PAYLOAD))),
        "{r:?}"
    );
    assert!(!c.authenticated() && c.must_close());

    // a Reply carrying another transaction's T_ID
    let mut c = CtrlAuth::new(
        Arc::new(s.clone()),
        HOSTNQN,
        SUBNQN,
        Arc::new(Policy::default()),
    );
    let mut h = HostTransaction::new(&s, HOSTNQN, SUBNQN, 7);
    c.send(&h.negotiate());
    let mut reply = h.reply(&c.recv()).unwrap();
    reply[4] = 8;
    c.send(&reply);
    assert!(matches!(
        msg::parse(&c.recv()).unwrap(),
        Message::Failure1 {
            code: FailureCode::INCORRECT_PAYLOAD,
            ..
        }
    ));
    assert!(!c.authenticated());
}

#[test]
fn malformed_and_out_of_sequence_messages() {
    let s = secrets(false);
    let new = || {
        CtrlAuth::new(
            Arc::new(s.clone()),
            HOSTNQN,
            SUBNQN,
            Arc::new(Policy::default()),
        )
    };
    // garbage
    let mut c = new();
    c.send(&[0xff; 3]);
    assert!(matches!(
        msg::parse(&c.recv()).unwrap(),
        Message::Failure1 { .. }
    ));
    assert!(c.must_close() && !c.authenticated());
    // a Reply before any Negotiate
    let mut c = new();
    c.send(&msg::reply(1, &[0; 32], None, 0, &[]));
    assert!(matches!(
        msg::parse(&c.recv()).unwrap(),
        Message::Failure1 {
            code: FailureCode::INCORRECT_MESSAGE,
            ..
        }
    ));
    // AUTH_Recv with nothing due
    let mut c = new();
    assert!(matches!(
        msg::parse(&c.recv()).unwrap(),
        Message::Failure1 { .. }
    ));
    assert!(c.must_close());
    // a truncated Reply (DH value shorter than announced)
    let mut c = new();
    let mut h = HostTransaction::new(&s, HOSTNQN, SUBNQN, 3);
    c.send(&h.negotiate());
    let mut reply = h.reply(&c.recv()).unwrap();
    reply.truncate(reply.len() - 1);
    c.send(&reply);
    assert!(matches!(
        msg::parse(&c.recv()).unwrap(),
        Message::Failure1 {
            code: FailureCode::INCORRECT_PAYLOAD,
            ..
        }
    ));
    // a DH value out of range
    let mut c = new();
    let mut h = HostTransaction::new(&s, HOSTNQN, SUBNQN, 4);
    c.send(&h.negotiate());
    let mut reply = h.reply(&c.recv()).unwrap();
    let n = reply.len();
    reply[n - 256..].fill(0);
    c.send(&reply);
    assert!(matches!(
        msg::parse(&c.recv()).unwrap(),
        Message::Failure1 {
            code: FailureCode::DHGROUP_UNUSABLE,
            ..
        }
    ));
    // secure channel concatenation is refused
    let mut c = new();
    let mut n = msg::negotiate(1, &HashId::ALL, &DhGroup::ALL);
    n[6] = 1;
    c.send(&n);
    assert!(matches!(
        msg::parse(&c.recv()).unwrap(),
        Message::Failure1 {
            code: FailureCode::CONCAT_MISMATCH,
            ..
        }
    ));
}

#[test]
fn the_host_rejects_bad_challenges() {
    let s = secrets(false);
    let bad: [(Vec<u8>, FailureCode); 4] = [
        (
            msg::challenge(1, HashId::Sha256, DhGroup::Null, 1, &[0; 48], &[]),
            FailureCode::HASH_UNUSABLE,
        ),
        (
            msg::challenge(1, HashId::Sha256, DhGroup::Ffdhe2048, 1, &[0; 32], &[]),
            FailureCode::INCORRECT_PAYLOAD,
        ),
        (
            msg::challenge(2, HashId::Sha256, DhGroup::Null, 1, &[0; 32], &[]),
            FailureCode::INCORRECT_MESSAGE,
        ),
        (msg::success2(1), FailureCode::INCORRECT_MESSAGE),
    ];
    for (m, code) in bad {
        let mut h = HostTransaction::new(&s, HOSTNQN, SUBNQN, 1);
        h.negotiate();
        let e = h.reply(&m).unwrap_err();
        assert_eq!(e.failure_code(), code, "{e}");
    }
    let mut unknown_hash = msg::challenge(1, HashId::Sha256, DhGroup::Null, 1, &[0; 32], &[]);
    unknown_hash[8] = 9;
    let mut h = HostTransaction::new(&s, HOSTNQN, SUBNQN, 1);
    h.negotiate();
    assert_eq!(
        h.reply(&unknown_hash).unwrap_err().failure_code(),
        FailureCode::HASH_UNUSABLE
    );
}

/// Mutated messages (valid ones with bytes flipped, truncated or extended)
/// fed to the parser and to a controller at every step: no panic, and a
/// controller that took garbage never counts as authenticated.
#[test]
fn mutated_messages_never_panic_or_authenticate() {
    let s = secrets(true);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let null_only = Arc::new(Policy {
        groups: vec![DhGroup::Null],
        ..Policy::default()
    });
    for round in 0..500u16 {
        let mut c = CtrlAuth::new(Arc::new(s.clone()), HOSTNQN, SUBNQN, null_only.clone());
        let mut h = HostTransaction::new(&s, HOSTNQN, SUBNQN, round);
        let mut msgs = vec![h.negotiate()];
        c.send(&msgs[0]);
        let ch = c.recv();
        let _ = msg::parse(&ch);
        msgs.push(h.reply(&ch).unwrap());
        msgs.push(msg::success2(round));
        msgs.push(msg::failure(round, false, FailureCode::FAILED));
        // mutate one of them and replay the transaction with it
        let k = usize::try_from(next() % 4).unwrap();
        let mut m = msgs[k].clone();
        match next() % 3 {
            0 => {
                let i = usize::try_from(next()).unwrap() % m.len();
                m[i] ^= u8::try_from(next() % 255 + 1).unwrap();
            }
            1 => m.truncate(usize::try_from(next()).unwrap() % m.len()),
            _ => m.extend((0..next() % 64).map(|x| u8::try_from(x).unwrap())),
        }
        let _ = msg::parse(&m);
        let mut c = CtrlAuth::new(Arc::new(s.clone()), HOSTNQN, SUBNQN, null_only.clone());
        for (j, good) in msgs.iter().enumerate().take(3) {
            c.send(if j == k { &m } else { good });
            let out = c.recv();
            assert!(
                msg::parse(&out).is_ok(),
                "the controller sends well-formed messages"
            );
        }
        // the Reply was computed for another challenge: never authenticated
        assert!(!c.authenticated(), "round {round}");
    }
}
