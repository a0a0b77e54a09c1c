//! A hostile NVMe/TCP target for tests: a proxy on 127.0.0.1 in front of a
//! real target that forwards PDU by PDU and, on I/O queue connections, can
//! misbehave the way a broken or malicious target would: repeat every R2T
//! many times, or accept commands and never answer them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the proxy does to I/O queue connections (the admin queue is left
/// alone so the host can connect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Misbehave {
    /// Forward everything.
    Nothing = 0,
    /// Send every R2T to the host this many extra times.
    RepeatR2t = 1,
    /// Drop the host's command capsules after the Connect: the target never
    /// sees them, the host never gets an answer.
    Swallow = 2,
    /// The path is cut: connections close at their next PDU, new ones are
    /// closed at once.
    Cut = 3,
}

/// R2Ts sent again per R2T with [`Misbehave::RepeatR2t`].
pub const R2T_REPEATS: usize = 2000;

const CAPSULE_CMD: u8 = 0x04;
const R2T: u8 = 0x09;
const FABRICS: u8 = 0x7f;

/// The proxy: listens on an ephemeral port, forwards to `target`.
pub struct TcpProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
}

impl TcpProxy {
    pub fn start(target: u16) -> TcpProxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = l.local_addr().expect("address").port();
        l.set_nonblocking(true).expect("non-blocking listener");
        let mode = Arc::new(AtomicU8::new(Misbehave::Nothing as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mode.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                match l.accept() {
                    Ok((host, _)) if m.load(Ordering::Acquire) == Misbehave::Cut as u8 => {
                        drop(host);
                    }
                    Ok((host, _)) => {
                        let _ = host.set_nonblocking(false);
                        if let Ok(tgt) = TcpStream::connect(("127.0.0.1", target)) {
                            relay(host, tgt, m.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpProxy { port, mode, stop }
    }

    pub fn misbehave(&self, m: Misbehave) {
        self.mode.store(m as u8, Ordering::Release);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// One PDU: its 8-byte common header and the rest (PLEN bytes in all).
fn read_pdu(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut ch = [0u8; 8];
    s.read_exact(&mut ch).ok()?;
    let plen = usize::try_from(u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]])).ok()?;
    if !(8..=16 << 20).contains(&plen) {
        return None;
    }
    let mut pdu = ch.to_vec();
    pdu.resize(plen, 0);
    s.read_exact(&mut pdu[8..]).ok()?;
    Some(pdu)
}

/// Whether a command capsule is a Fabrics Connect for an I/O queue (the
/// SQE follows the 8-byte header: FCTYPE at byte 4, QID at bytes 42-43).
fn connects_io_queue(pdu: &[u8]) -> bool {
    pdu.len() >= 8 + 64
        && pdu[0] == CAPSULE_CMD
        && pdu[8] == FABRICS
        && pdu[8 + 4] == 0x01
        && u16::from_le_bytes([pdu[8 + 42], pdu[8 + 43]]) != 0
}

fn relay(mut host: TcpStream, mut tgt: TcpStream, mode: Arc<AtomicU8>) {
    let (Ok(mut host2), Ok(mut tgt2)) = (host.try_clone(), tgt.try_clone()) else {
        return;
    };
    let io_queue = Arc::new(AtomicBool::new(false));
    let io2 = io_queue.clone();
    let mode2 = mode.clone();
    // Host to target.
    std::thread::spawn(move || {
        let mut connected = false;
        while let Some(pdu) = read_pdu(&mut host2) {
            if mode2.load(Ordering::Acquire) == Misbehave::Cut as u8 {
                break;
            }
            if pdu[0] == CAPSULE_CMD && connects_io_queue(&pdu) {
                io2.store(true, Ordering::Release);
                connected = true;
            } else if connected
                && pdu[0] == CAPSULE_CMD
                && mode2.load(Ordering::Acquire) == Misbehave::Swallow as u8
            {
                continue;
            }
            if tgt2.write_all(&pdu).is_err() {
                break;
            }
        }
        let _ = tgt2.shutdown(Shutdown::Both);
        let _ = host2.shutdown(Shutdown::Both);
    });
    // Target to host.
    std::thread::spawn(move || {
        while let Some(pdu) = read_pdu(&mut tgt) {
            if mode.load(Ordering::Acquire) == Misbehave::Cut as u8 {
                break;
            }
            let repeats = if pdu[0] == R2T
                && io_queue.load(Ordering::Acquire)
                && mode.load(Ordering::Acquire) == Misbehave::RepeatR2t as u8
            {
                R2T_REPEATS
            } else {
                0
            };
            let mut ok = host.write_all(&pdu).is_ok();
            for _ in 0..repeats {
                ok = ok && host.write_all(&pdu).is_ok();
            }
            if !ok {
                break;
            }
        }
        let _ = host.shutdown(Shutdown::Both);
        let _ = tgt.shutdown(Shutdown::Both);
    });
}
