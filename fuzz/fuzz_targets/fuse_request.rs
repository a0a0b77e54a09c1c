//! FUSE requests as a guest may write them: any bytes. Properties: parsing
//! never panics; what it accepts lies inside the request's length (names
//! and strings without a NUL inside, payloads of the sizes their arguments
//! give, BATCH_FORGET's nodes all there), and a reply to it can be built.
//!
//! Input: one byte (bit 0: SETXATTR_EXT negotiated), then the request.
#![no_main]

use leapio_fuse::{reply, Op, Proto, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, buf)) = data.split_first() else {
        return;
    };
    let proto = Proto {
        setxattr_ext: first & 1 != 0,
        ..Proto::default()
    };
    let Ok(r) = Request::parse(buf, proto) else {
        return;
    };
    let len = usize::try_from(r.header.len).unwrap_or(usize::MAX);
    assert!(len >= 40 && len <= buf.len());
    let no_nul = |s: &[u8]| assert!(!s.contains(&0), "a NUL inside a name");
    match &r.op {
        Op::Lookup { name }
        | Op::Unlink { name }
        | Op::Rmdir { name }
        | Op::Removexattr { name }
        | Op::Mknod { name, .. }
        | Op::Mkdir { name, .. }
        | Op::Link { name, .. }
        | Op::Create { name, .. }
        | Op::Getxattr { name, .. } => no_nul(name),
        Op::Symlink { name, target } => {
            no_nul(name);
            no_nul(target);
        }
        Op::Rename { old, new, .. } => {
            no_nul(old);
            no_nul(new);
        }
        Op::Write { arg, data } => assert_eq!(data.len(), arg.size as usize),
        Op::Setxattr { arg, name, value } => {
            no_nul(name);
            assert_eq!(value.len(), arg.size as usize);
        }
        Op::BatchForget { count, .. } => {
            assert_eq!(r.op.forgets().count(), *count as usize);
        }
        Op::Init(arg) => {
            let _ = reply::init(arg, u32::MAX, 1 << 20, 1 << 20);
        }
        _ => {}
    }
    let _ = leapio_fuse::check_component(match &r.op {
        Op::Lookup { name } => name,
        _ => &[],
    });
    let out = reply::error(r.header.unique, 22);
    assert_eq!(out.len(), 16);
});
