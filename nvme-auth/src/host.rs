//! The host's side of one DH-HMAC-CHAP transaction on one queue:
//!
//! 1. AUTH_Send [`negotiate`](HostTransaction::negotiate);
//! 2. AUTH_Recv a Challenge, AUTH_Send the [`reply`](HostTransaction::reply);
//! 3. AUTH_Recv Success1 (or Failure1), [`finish`](HostTransaction::finish):
//!    with a controller secret the controller's response is checked and
//!    Success2 sent.
//!
//! Any error after the Challenge is answered with AUTH_Send
//! [`failure2`](HostTransaction::failure2) (except a Failure1 from the
//! controller, which ends the transaction).

use crate::dh::{DhGroup, DhKey};
use crate::hash::HashId;
use crate::msg::{self, FailureCode, Message};
use crate::response::{ctrl_response, effective_challenge, host_response};
use crate::{AuthError, Secrets};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Negotiate,
    Challenge,
    Success1,
    Done,
}

/// One transaction.
pub struct HostTransaction<'a> {
    secrets: &'a Secrets,
    hostnqn: &'a str,
    subnqn: &'a str,
    tid: u16,
    step: Step,
    hash: Option<HashId>,
    group: DhGroup,
    /// The controller's response we expect (bidirectional only).
    expected: Option<Zeroizing<Vec<u8>>>,
}

impl<'a> HostTransaction<'a> {
    pub fn new(
        secrets: &'a Secrets,
        hostnqn: &'a str,
        subnqn: &'a str,
        tid: u16,
    ) -> HostTransaction<'a> {
        HostTransaction {
            secrets,
            hostnqn,
            subnqn,
            tid,
            step: Step::Negotiate,
            hash: None,
            group: DhGroup::Null,
            expected: None,
        }
    }

    /// What was negotiated (after the Challenge).
    pub fn negotiated(&self) -> Option<(HashId, DhGroup)> {
        self.hash.map(|h| (h, self.group))
    }

    /// AUTH_Negotiate: every hash and DH group this crate implements.
    pub fn negotiate(&mut self) -> Vec<u8> {
        self.step = Step::Challenge;
        msg::negotiate(self.tid, &HashId::ALL, &DhGroup::ALL)
    }

    fn expect<'m>(&self, m: &'m [u8], want: u8) -> Result<Message<'m>, AuthError> {
        let parsed = msg::parse(m).map_err(|e| AuthError::protocol(e.failure_code(), e))?;
        if let Message::Failure1 { code, .. } = parsed {
            return Err(AuthError::Refused(code));
        }
        let id = m[1];
        if id != want {
            return Err(AuthError::protocol(
                FailureCode::INCORRECT_MESSAGE,
                format!("got {} out of sequence", parsed.name()),
            ));
        }
        if parsed.tid() != self.tid {
            return Err(AuthError::protocol(
                FailureCode::INCORRECT_MESSAGE,
                format!(
                    "{} for transaction {}, ours is {}",
                    parsed.name(),
                    parsed.tid(),
                    self.tid
                ),
            ));
        }
        Ok(parsed)
    }

    /// Answer the controller's Challenge: the DH-HMAC-CHAP_Reply.
    pub fn reply(&mut self, challenge_msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        if self.step != Step::Challenge {
            return Err(AuthError::protocol(
                FailureCode::INCORRECT_MESSAGE,
                "a Challenge before the Negotiate",
            ));
        }
        let Message::Challenge {
            hashid,
            dhgid,
            seqnum,
            challenge,
            dh_value,
            ..
        } = self.expect(challenge_msg, msg::MsgId::CHALLENGE)?
        else {
            return Err(AuthError::protocol(
                FailureCode::INCORRECT_MESSAGE,
                "not a Challenge",
            ));
        };
        let hash = HashId::from_id(hashid).ok_or_else(|| {
            AuthError::protocol(
                FailureCode::HASH_UNUSABLE,
                format!("unknown hash {hashid:#04x}"),
            )
        })?;
        if challenge.len() != hash.len() {
            return Err(AuthError::protocol(
                FailureCode::HASH_UNUSABLE,
                format!("{}-byte challenge for {hash}", challenge.len()),
            ));
        }
        let group = DhGroup::from_id(dhgid).ok_or_else(|| {
            AuthError::protocol(
                FailureCode::DHGROUP_UNUSABLE,
                format!("unknown DH group {dhgid:#04x}"),
            )
        })?;
        if dh_value.len() != group.value_len() {
            return Err(AuthError::protocol(
                FailureCode::INCORRECT_PAYLOAD,
                format!("{}-byte DH value for {group}", dh_value.len()),
            ));
        }
        self.hash = Some(hash);
        self.group = group;
        let (our_value, session) = if group == DhGroup::Null {
            (Vec::new(), None)
        } else {
            let k =
                DhKey::generate(group).map_err(|e| AuthError::protocol(FailureCode::FAILED, e))?;
            let s = k
                .shared_secret(dh_value)
                .map_err(|e| AuthError::protocol(FailureCode::DHGROUP_UNUSABLE, e))?;
            (k.public().to_vec(), Some(s))
        };
        let session = session.as_deref().map(Vec::as_slice);
        let kh = self.secrets.host.transformed(self.hostnqn);
        let c1 = effective_challenge(hash, session, challenge);
        let r1 = host_response(hash, &kh, &c1, seqnum, self.tid, self.hostnqn, self.subnqn);
        let mut c2 = None;
        let mut s2 = 0;
        if let Some(ctrl) = &self.secrets.ctrl {
            let mut c = vec![0u8; hash.len()];
            let mut s = [0u8; 4];
            crate::random(&mut c)?;
            crate::random(&mut s)?;
            // S2 = 0 would say "no controller authentication".
            s2 = u32::from_le_bytes(s).max(1);
            let kc = ctrl.transformed(self.subnqn);
            let ca2 = effective_challenge(hash, session, &c);
            self.expected = Some(Zeroizing::new(ctrl_response(
                hash,
                &kc,
                &ca2,
                s2,
                self.tid,
                self.hostnqn,
                self.subnqn,
            )));
            c2 = Some(c);
        }
        self.step = Step::Success1;
        Ok(msg::reply(self.tid, &r1, c2.as_deref(), s2, &our_value))
    }

    /// Take Success1: Ok(Some(Success2)) to send when the controller proved
    /// itself, Ok(None) when the host did not ask it to.
    pub fn finish(&mut self, success1_msg: &[u8]) -> Result<Option<Vec<u8>>, AuthError> {
        let (Step::Success1, Some(hash)) = (self.step, self.hash) else {
            return Err(AuthError::protocol(
                FailureCode::INCORRECT_MESSAGE,
                "a Success1 before the Reply",
            ));
        };
        let Message::Success1 { hl, response, .. } =
            self.expect(success1_msg, msg::MsgId::SUCCESS1)?
        else {
            return Err(AuthError::protocol(
                FailureCode::INCORRECT_MESSAGE,
                "not a Success1",
            ));
        };
        if usize::from(hl) != hash.len() {
            return Err(AuthError::protocol(
                FailureCode::HASH_UNUSABLE,
                format!("Success1 HL {hl} for {hash}"),
            ));
        }
        self.step = Step::Done;
        let Some(expected) = &self.expected else {
            return Ok(None);
        };
        let ok = response.is_some_and(|r| bool::from(r.ct_eq(expected.as_slice())));
        if !ok {
            return Err(AuthError::ControllerNotAuthenticated);
        }
        Ok(Some(msg::success2(self.tid)))
    }

    /// AUTH_Failure2 telling the controller why the host gives up.
    pub fn failure2(&self, code: FailureCode) -> Vec<u8> {
        msg::failure(self.tid, false, code)
    }
}
