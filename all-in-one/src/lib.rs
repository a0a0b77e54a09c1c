//! The all-in-one deployment: the host-driver and the runtime in one
//! process, linked over a socket pair (the in-process carrier of the
//! link). Messages, shared memory and code paths are those of the split
//! deployment; only the runtime cannot restart on its own. This is the one
//! crate that depends on both sides.
//!
//! - [`config`]: the all-in-one `--ctrl` (the host side's keys and the
//!   runtime's in one string).
//! - [`embedded`]: starting and stopping both halves, and the control
//!   socket's controller methods.

pub mod config;
pub mod embedded;

pub use config::CtrlSpec;
pub use embedded::Embedded;
