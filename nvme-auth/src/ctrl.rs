//! The controller's side of DH-HMAC-CHAP on one queue: a state machine fed
//! by the queue's AUTH_Send commands ([`send`](CtrlAuth::send)) and asked
//! for the data of its AUTH_Recv commands ([`recv`](CtrlAuth::recv)).
//!
//! Negotiate -> (recv) Challenge -> Reply -> (recv) Success1 [-> Success2
//! when the host asked the controller to authenticate]. Whatever goes wrong
//! (a wrong response, a malformed or out-of-sequence message, a transaction
//! identifier that changes mid-transaction or repeats the previous one) is
//! answered by AUTH_Failure1 on the next AUTH_Recv, after which
//! [`must_close`](CtrlAuth::must_close) says the queue is to be torn down.
//! A host's AUTH_Failure2 ends it the same way.

use crate::dh::{DhGroup, DhKey};
use crate::hash::HashId;
use crate::msg::{self, FailureCode, Message};
use crate::response::{ctrl_response, effective_challenge, host_response};
use crate::Secrets;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What the controller accepts, in order of preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub hashes: Vec<HashId>,
    pub groups: Vec<DhGroup>,
}

impl Default for Policy {
    /// SHA-256 first and a DH exchange (ffdhe2048) before the null group.
    fn default() -> Policy {
        Policy {
            hashes: HashId::ALL.to_vec(),
            groups: vec![
                DhGroup::Ffdhe2048,
                DhGroup::Ffdhe3072,
                DhGroup::Ffdhe4096,
                DhGroup::Null,
            ],
        }
    }
}

enum State {
    AwaitNegotiate,
    SendChallenge {
        tid: u16,
        hash: HashId,
        group: DhGroup,
    },
    AwaitReply {
        tid: u16,
        hash: HashId,
        c1: Vec<u8>,
        s1: u32,
        key: Option<DhKey>,
    },
    SendSuccess1 {
        tid: u16,
        hash: HashId,
        ctrl_response: Option<Vec<u8>>,
    },
    AwaitSuccess2 {
        tid: u16,
    },
    SendFailure1 {
        tid: u16,
        code: FailureCode,
    },
    Failed,
}

/// A queue's authentication state.
pub struct CtrlAuth {
    secrets: Arc<Secrets>,
    hostnqn: String,
    subnqn: String,
    policy: Arc<Policy>,
    state: State,
    authenticated: bool,
    /// T_ID of the last transaction started on this queue.
    last_tid: Option<u16>,
    /// Why it failed (for the log).
    why: Option<String>,
}

impl CtrlAuth {
    pub fn new(
        secrets: Arc<Secrets>,
        hostnqn: &str,
        subnqn: &str,
        policy: Arc<Policy>,
    ) -> CtrlAuth {
        CtrlAuth {
            secrets,
            hostnqn: hostnqn.to_string(),
            subnqn: subnqn.to_string(),
            policy,
            state: State::AwaitNegotiate,
            authenticated: false,
            last_tid: None,
            why: None,
        }
    }

    /// The queue may carry other commands.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Authentication failed for good: close the queue (once the Failure1,
    /// if any, is out).
    pub fn must_close(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Why the transaction failed, once it has.
    pub fn failure_reason(&self) -> Option<&str> {
        self.why.as_deref()
    }

    /// End authentication on this queue for good (e.g. the transport could
    /// not deliver a message).
    pub fn abort(&mut self, why: &str) {
        self.authenticated = false;
        self.why = Some(why.to_string());
        self.state = State::Failed;
    }

    fn fail(&mut self, tid: u16, code: FailureCode, why: impl std::fmt::Display) {
        self.authenticated = false;
        self.why = Some(format!("{why} ({code})"));
        self.state = State::SendFailure1 { tid, code };
    }

    /// The data of an AUTH_Send.
    pub fn send(&mut self, data: &[u8]) {
        if matches!(self.state, State::Failed | State::SendFailure1 { .. }) {
            return;
        }
        let m = match msg::parse(data) {
            Ok(m) => m,
            Err(e) => {
                let tid = data
                    .get(4..6)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                self.fail(tid, e.failure_code(), e);
                return;
            }
        };
        let tid = m.tid();
        match (&self.state, m) {
            (_, Message::Failure2 { code, .. }) => {
                self.authenticated = false;
                self.why = Some(format!("the host rejected the controller: {code}"));
                self.state = State::Failed;
            }
            // A Negotiate starts (or restarts) a transaction at any time.
            (
                _,
                Message::Negotiate {
                    sc_c,
                    hashes,
                    dhgroups,
                    ..
                },
            ) => self.negotiate(tid, sc_c, &hashes, &dhgroups),
            (State::AwaitReply { tid: want, .. }, Message::Reply { .. }) if *want != tid => {
                let want = *want;
                self.fail(
                    want,
                    FailureCode::INCORRECT_PAYLOAD,
                    format!("Reply for transaction {tid}, expected {want}"),
                )
            }
            (
                State::AwaitReply { .. },
                Message::Reply {
                    seqnum,
                    response,
                    challenge,
                    dh_value,
                    ..
                },
            ) => self.reply(seqnum, response, challenge, dh_value),
            (State::AwaitSuccess2 { tid: want }, Message::Success2 { .. }) if *want == tid => {
                self.authenticated = true;
                self.state = State::AwaitNegotiate;
            }
            (_, m) => {
                let name = m.name();
                self.fail(
                    tid,
                    FailureCode::INCORRECT_MESSAGE,
                    format!("{name} out of sequence"),
                )
            }
        }
    }

    fn negotiate(&mut self, tid: u16, sc_c: u8, hashes: &[u8], groups: &[u8]) {
        if self.last_tid == Some(tid) {
            return self.fail(
                tid,
                FailureCode::INCORRECT_PAYLOAD,
                format!("transaction identifier {tid} replayed"),
            );
        }
        self.last_tid = Some(tid);
        if sc_c != 0 {
            return self.fail(
                tid,
                FailureCode::CONCAT_MISMATCH,
                "secure channel concatenation is not supported",
            );
        }
        let Some(hash) = self
            .policy
            .hashes
            .iter()
            .copied()
            .find(|h| hashes.contains(&h.id()))
        else {
            return self.fail(
                tid,
                FailureCode::HASH_UNUSABLE,
                format!("no acceptable hash among {hashes:?}"),
            );
        };
        let Some(group) = self
            .policy
            .groups
            .iter()
            .copied()
            .find(|g| groups.contains(&g.id()))
        else {
            return self.fail(
                tid,
                FailureCode::DHGROUP_UNUSABLE,
                format!("no acceptable DH group among {groups:?}"),
            );
        };
        self.state = State::SendChallenge { tid, hash, group };
    }

    fn reply(&mut self, s2: u32, r1: &[u8], c2: Option<&[u8]>, dh_value: &[u8]) {
        let State::AwaitReply {
            tid,
            hash,
            c1,
            s1,
            key,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return;
        };
        if r1.len() != hash.len() {
            return self.fail(
                tid,
                FailureCode::INCORRECT_PAYLOAD,
                format!("{}-byte response for {hash}", r1.len()),
            );
        }
        let session = match (&key, dh_value.is_empty()) {
            (None, true) => None,
            (None, false) => {
                return self.fail(
                    tid,
                    FailureCode::INCORRECT_PAYLOAD,
                    "a DH value with the null group",
                )
            }
            (Some(k), _) => match k.shared_secret(dh_value) {
                Ok(s) => Some(s),
                Err(e) => return self.fail(tid, FailureCode::DHGROUP_UNUSABLE, e),
            },
        };
        let session = session.as_deref().map(Vec::as_slice);
        let kh = self.secrets.host.transformed(&self.hostnqn);
        let ca1 = effective_challenge(hash, session, &c1);
        let expected = Zeroizing::new(host_response(
            hash,
            &kh,
            &ca1,
            s1,
            tid,
            &self.hostnqn,
            &self.subnqn,
        ));
        if !bool::from(expected.as_slice().ct_eq(r1)) {
            return self.fail(
                tid,
                FailureCode::FAILED,
                "the host's response does not match its secret",
            );
        }
        // S2 = 0 with C2: no controller authentication (C2 would only feed a
        // TLS PSK), as Linux's target reads it.
        let ctrl_response = match (c2, s2) {
            (Some(c2), s2) if s2 != 0 => {
                let Some(ctrl) = &self.secrets.ctrl else {
                    return self.fail(
                        tid,
                        FailureCode::FAILED,
                        "the host asks the controller to authenticate, but it has no controller secret for this host",
                    );
                };
                let kc = ctrl.transformed(&self.subnqn);
                let ca2 = effective_challenge(hash, session, c2);
                Some(ctrl_response(
                    hash,
                    &kc,
                    &ca2,
                    s2,
                    tid,
                    &self.hostnqn,
                    &self.subnqn,
                ))
            }
            _ => None,
        };
        self.state = State::SendSuccess1 {
            tid,
            hash,
            ctrl_response,
        };
    }

    /// The data of an AUTH_Recv: the next message for the host.
    pub fn recv(&mut self) -> Vec<u8> {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::SendChallenge { tid, hash, group } => self.challenge(tid, hash, group),
            State::SendSuccess1 {
                tid,
                hash,
                ctrl_response,
            } => {
                let m = msg::success1(tid, hash.len(), ctrl_response.as_deref());
                if ctrl_response.is_some() {
                    self.state = State::AwaitSuccess2 { tid };
                } else {
                    self.authenticated = true;
                    self.state = State::AwaitNegotiate;
                }
                m
            }
            State::SendFailure1 { tid, code } => msg::failure(tid, true, code),
            State::AwaitNegotiate
            | State::AwaitReply { .. }
            | State::AwaitSuccess2 { .. }
            | State::Failed => {
                self.authenticated = false;
                if self.why.is_none() {
                    self.why = Some("AUTH_Recv with no message due".into());
                }
                msg::failure(
                    self.last_tid.unwrap_or(0),
                    true,
                    FailureCode::INCORRECT_MESSAGE,
                )
            }
        }
    }

    fn challenge(&mut self, tid: u16, hash: HashId, group: DhGroup) -> Vec<u8> {
        let mut c1 = vec![0u8; hash.len()];
        let mut s = [0u8; 4];
        let key = match (crate::random(&mut c1), crate::random(&mut s)) {
            (Ok(()), Ok(())) if group == DhGroup::Null => Ok(None),
            (Ok(()), Ok(())) => DhKey::generate(group).map(Some).map_err(|e| e.to_string()),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        };
        let key = match key {
            Ok(k) => k,
            Err(e) => {
                self.why = Some(e);
                return msg::failure(tid, true, FailureCode::FAILED);
            }
        };
        // S1 is never 0.
        let s1 = u32::from_le_bytes(s).max(1);
        let value = key.as_ref().map_or(&[][..], DhKey::public);
        let m = msg::challenge(tid, hash, group, s1, &c1, value);
        self.state = State::AwaitReply {
            tid,
            hash,
            c1,
            s1,
            key,
        };
        m
    }
}
