//! The FUSE protocol as the Linux kernel speaks it, here as virtio-fs
//! carries it: a request is the readable bytes of a descriptor chain
//! (`fuse_in_header`, then the operation's arguments), its reply goes to
//! the chain's writable bytes (`fuse_out_header`, then the result).
//!
//! Wire types and parsing only, no I/O: [`abi`] holds the structures and
//! constants (protocol 7.x, little-endian), [`Request::parse`] checks a
//! request's lengths, names and strings against the bytes the guest gave
//! before anything is used, and [`reply`] builds replies (with directory
//! entries packed as the kernel reads them). A guest is not trusted:
//! every length is checked, nothing panics.

pub mod abi;
pub mod reply;
mod request;

pub use request::{check_component, errno, name_of, Op, ParseError, Proto, Request, NAME_MAX};
