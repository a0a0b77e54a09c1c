//! NVMe over Fabrics in-band authentication: DH-HMAC-CHAP (NVMe Base
//! Specification 2.x, 8.13 and the Authentication Send/Receive Fabrics
//! commands), for both ends of a queue.
//!
//! - [`secret`]: DHHC-1 secrets (`nvme gen-dhchap-key` format) and their
//!   NQN transformation.
//! - [`hash`], [`dh`]: SHA-2 HMACs and the RFC 7919 ffdhe groups.
//! - [`msg`]: the messages (zerocopy wire structs, parsing and building).
//! - [`response`]: the responses both sides compute.
//! - [`host`]: one transaction as the host runs it.
//! - [`ctrl`]: a queue's state as the controller keeps it.
//!
//! Each queue (admin and I/O) authenticates separately. Secure channel
//! concatenation (TLS after authentication) is not implemented: an
//! AUTH_Negotiate asking for it fails with "concatenation mismatch".

pub mod ctrl;
pub mod dh;
pub mod hash;
pub mod host;
pub mod msg;
pub mod response;
pub mod secret;

pub use ctrl::{CtrlAuth, Policy};
pub use dh::DhGroup;
pub use hash::HashId;
pub use host::HostTransaction;
pub use msg::FailureCode;
pub use secret::{redact, Secret, SecretError};

/// The secrets of one host-controller pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secrets {
    /// The host secret: the host proves it holds it.
    pub host: Secret,
    /// The controller secret: when set, the controller proves it holds it
    /// (bidirectional authentication; the host decides whether to ask).
    pub ctrl: Option<Secret>,
}

/// Why a transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The controller answered with AUTH_Failure1.
    #[error("the controller refused authentication: {0} (wrong dhchap secret, or none configured for this host NQN?)")]
    Refused(FailureCode),
    /// A message was malformed, out of sequence or unusable.
    #[error("{what} ({code})")]
    Protocol { code: FailureCode, what: String },
    /// The controller's response does not prove the controller secret.
    #[error(
        "the controller failed to authenticate: its response does not match the dhchap-ctrl secret"
    )]
    ControllerNotAuthenticated,
}

impl AuthError {
    pub fn protocol(code: FailureCode, what: impl std::fmt::Display) -> AuthError {
        AuthError::Protocol {
            code,
            what: what.to_string(),
        }
    }

    /// The explanation sent in AUTH_Failure2.
    pub fn failure_code(&self) -> FailureCode {
        match self {
            AuthError::Refused(c) | AuthError::Protocol { code: c, .. } => *c,
            AuthError::ControllerNotAuthenticated => FailureCode::FAILED,
        }
    }
}

/// Fill `buf` from the operating system's random source.
pub(crate) fn random(buf: &mut [u8]) -> Result<(), AuthError> {
    getrandom::fill(buf)
        .map_err(|e| AuthError::protocol(FailureCode::FAILED, format!("no random bytes: {e}")))
}

#[cfg(test)]
mod tests;
