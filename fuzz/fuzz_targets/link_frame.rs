//! Frames of the link on a Unix socket, with descriptors: the fuzzer's
//! bytes are written to one end of a socket pair in chunks, each chunk
//! carrying some descriptors (SCM_RIGHTS), and `frame::recv` reads messages
//! from the other end until it reports an error. It must never panic,
//! allocate more than a frame allows, or leak a descriptor.
//!
//! Input: a byte choosing the direction (ToHost or ToRuntime), then chunks
//! of [descriptors: u8 (low 5 bits)] [length: u16] [bytes].
#![no_main]

use leapio_fuzz::{lowest_free_fd, Input};
use leapio_link::frame::recv;
use leapio_link::proto::{ToHost, ToRuntime};
use libfuzzer_sys::fuzz_target;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most bytes written per run: well below the socket's buffer, so the
/// writer never blocks (there is one thread).
const MAX_WRITE: usize = 64 << 10;

fn fd_to_send() -> RawFd {
    static FILE: OnceLock<std::fs::File> = OnceLock::new();
    FILE.get_or_init(|| std::fs::File::open("/dev/null").expect("/dev/null"))
        .as_raw_fd()
}

fuzz_target!(|data: &[u8]| {
    let before = lowest_free_fd();
    {
        let mut input = Input::new(data);
        let to_host = input.bool();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let mut written = 0;
        while !input.is_empty() && written < MAX_WRITE {
            let nfds = usize::from(input.u8() & 0x1f);
            let len = usize::from(input.u16()).min(MAX_WRITE - written);
            let chunk = input.bytes(len);
            if chunk.is_empty() {
                break;
            }
            let fds = vec![fd_to_send(); nfds];
            // More than the kernel's SCM_MAX_FD fails: send the bytes alone.
            if a.send_with_fds(&[chunk], &fds).is_err() {
                a.send_with_fds(&[chunk], &[]).expect("send");
            }
            written += chunk.len();
        }
        a.shutdown(std::net::Shutdown::Write).expect("shutdown");
        // Every frame is at least its header: this bounds the loop.
        for _ in 0..=written / 16 {
            let ok = if to_host {
                recv::<ToHost>(&b).is_ok()
            } else {
                recv::<ToRuntime>(&b).is_ok()
            };
            if !ok {
                break;
            }
        }
    }
    assert_eq!(lowest_free_fd(), before, "descriptors leaked");
});
