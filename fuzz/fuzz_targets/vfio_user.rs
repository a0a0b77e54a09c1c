//! The vfio-user server (`leapio_vmm_shim::vfio_user::serve`) with the
//! host-driver's NVMe controller as its device, fed by a hostile client
//! over a Unix socket pair: messages with descriptors (memory for DMA_MAP,
//! eventfds for SET_IRQS, or descriptors where none belong), mostly
//! well-formed so the device's regions, DMA maps and interrupts are
//! reached, sometimes raw. One thread plays both sides: the client writes
//! everything and shuts its side down, the server runs until EOF, and the
//! device's tick drains the replies so the server never blocks.
//!
//! Properties: nothing panics; the replies are well framed (one reply per
//! message at most, each a reply-typed header whose size covers it); no
//! descriptor leaks.
//!
//! Input: a byte (bit 0: negotiate first), then messages (see
//! `Message::from_input`).
#![no_main]

use leapio_fuzz::vfio::{Fds, Message};
use leapio_fuzz::{lowest_free_fd, Input};
use leapio_host_driver::NvmeController;
use leapio_vmm_shim::vfio_user::{
    serve, Device, DeviceInfo, DmaMap, DmaUnmap, Errno, IrqInfo, RegionInfo, SetIrqs,
};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most bytes the client writes per run: below the socket's buffer, so
/// writing never blocks.
const MAX_WRITE: usize = 96 << 10;

/// The controller, and the client's end of the socket to drain.
struct Dev<'a> {
    ctrl: &'a mut NvmeController,
    client: &'a UnixStream,
    replies: Vec<u8>,
}

impl Dev<'_> {
    fn drain(&mut self) {
        let mut buf = [0u8; 64 << 10];
        let mut c = self.client;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            // Only the headers matter; keep the stream's framing.
            self.replies.extend_from_slice(&buf[..n]);
            if self.replies.len() > 4 << 20 {
                check_framing(&mut self.replies, false);
            }
        }
    }
}

/// Check and consume the complete replies in `bytes`; with `end`, nothing
/// may be left over.
fn check_framing(bytes: &mut Vec<u8>, end: bool) {
    let mut at = 0;
    while bytes.len() - at >= 16 {
        let h = &bytes[at..at + 16];
        let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let flags = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        assert!(size >= 16, "reply of {size} bytes");
        assert_eq!(flags & 0xf, 1, "a reply that is not a reply");
        if bytes.len() - at < size {
            break;
        }
        at += size;
    }
    bytes.drain(..at);
    if end {
        assert!(bytes.is_empty(), "a truncated reply");
    }
}

impl Device for Dev<'_> {
    fn device_info(&self) -> DeviceInfo {
        self.ctrl.device_info()
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.ctrl.region_info(index)
    }
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.ctrl.irq_info(index)
    }
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        self.ctrl.region_read(index, offset, data)
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.ctrl.region_write(index, offset, data)
    }
    fn dma_map(&mut self, map: DmaMap) -> Result<(), Errno> {
        self.ctrl.dma_map(map)
    }
    fn dma_unmap(&mut self, unmap: DmaUnmap) -> Result<(), Errno> {
        self.ctrl.dma_unmap(unmap)
    }
    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        self.ctrl.set_irqs(req)
    }
    fn reset(&mut self) -> Result<(), Errno> {
        self.ctrl.reset()
    }
    fn tick(&mut self) {
        self.drain();
        self.ctrl.tick();
    }
    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
    fn disconnected(&mut self) {
        self.ctrl.disconnected();
    }
}

struct Fixture {
    ctrl: NvmeController,
    memory: OwnedFd,
    event: OwnedFd,
}

thread_local! {
    static FIXTURE: RefCell<Fixture> = RefCell::new(Fixture {
        ctrl: leapio_fuzz::controller(),
        memory: leapio_fuzz::memfd(1 << 20),
        event: leapio_fuzz::eventfd(),
    });
}

/// Send one message; false when the socket is full (many small messages
/// with descriptors fill its buffer before MAX_WRITE bytes: the rest of
/// the input is not sent).
fn send(client: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> bool {
    match client.send_with_fds(&[bytes], fds) {
        Ok(_) => true,
        Err(e) if e.errno() == libc::EAGAIN => false,
        // Over the kernel's SCM_MAX_FD: the bytes alone.
        Err(_) => match client.send_with_fds(&[bytes], &[]) {
            Ok(_) => true,
            Err(e) if e.errno() == libc::EAGAIN => false,
            Err(e) => panic!("send: {e}"),
        },
    }
}

fuzz_target!(|data: &[u8]| {
    FIXTURE.with_borrow_mut(|f| {
        let before = lowest_free_fd();
        let mut input = Input::new(data);
        let (client, server) = UnixStream::pair().expect("socketpair");
        client.set_nonblocking(true).expect("nonblocking");
        let mut msgs = Vec::new();
        if input.u8() & 1 != 0 {
            msgs.push(Message::version(br#"{"capabilities":{}}"#));
        }
        while !input.is_empty() {
            msgs.push(Message::from_input(&mut input));
        }
        let mut written = 0;
        for (i, m) in msgs.iter().enumerate() {
            let bytes = m.encode(u16::try_from(i).unwrap_or(u16::MAX));
            if written + bytes.len() > MAX_WRITE {
                break;
            }
            let fds: Vec<RawFd> = match m.fds {
                Fds::None => Vec::new(),
                Fds::Memory(n) => vec![f.memory.as_raw_fd(); n],
                Fds::Events(n) => vec![f.event.as_raw_fd(); n],
            };
            if !send(&client, &bytes, &fds) {
                break;
            }
            written += bytes.len();
        }
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        let mut dev = Dev {
            ctrl: &mut f.ctrl,
            client: &client,
            replies: Vec::new(),
        };
        let stop = AtomicBool::new(false);
        let _ = serve(server, &mut dev, &stop);
        dev.drain();
        check_framing(&mut dev.replies, true);
        drop(client);
        assert_eq!(lowest_free_fd(), before, "descriptors leaked");
    });
});
