//! Tests of the vfio-user server and client: a fake device recording calls,
//! the server on one end of `UnixStream::pair()` in a thread, the client on
//! the other.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use libc::{E2BIG, EINVAL, ENOSYS, ENOTSUP, EPERM};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zerocopy::{FromBytes, IntoBytes};

use leapio_tests::vfio_user_client::{Client, ClientError};
use leapio_vmm_shim::vfio_user::wire::{self, cmd, Header, HEADER_SIZE};
use leapio_vmm_shim::vfio_user::*;

const TIMEOUT: Duration = Duration::from_secs(10);
const CONFIG: u32 = 7;
const BAR0: u32 = 0;
const BAR0_SIZE: u64 = 0x4000;
const MSIX: u32 = 2;
const MSIX_COUNT: u32 = 32;

/// What the fake device saw.
#[derive(Default)]
struct State {
    calls: Vec<String>,
    config: Vec<u8>,
    dma_fds: Vec<Option<OwnedFd>>,
    irq_fds: Vec<Option<OwnedFd>>,
    last_irq_data: Option<String>,
    ticks: u32,
    disconnected: u32,
}

struct FakeDev {
    state: Arc<Mutex<State>>,
    bar_file: File,
    tick: Option<Duration>,
}

impl FakeDev {
    fn log(&self, s: String) {
        self.state.lock().unwrap().calls.push(s);
    }
}

impl Device for FakeDev {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        match index {
            BAR0 => Some(RegionInfo {
                size: BAR0_SIZE,
                read: true,
                write: true,
                mmap: Some(RegionMmap {
                    fd: self.bar_file.as_raw_fd(),
                    file_offset: 0x1000,
                    areas: vec![(0x1000, 0x1000)],
                }),
            }),
            // A read-only region without mmap.
            1 => Some(RegionInfo {
                size: 0x100,
                read: true,
                write: false,
                mmap: None,
            }),
            // Whole-region mmap, no sparse capability.
            2 => Some(RegionInfo {
                size: 0x1000,
                read: true,
                write: true,
                mmap: Some(RegionMmap {
                    fd: self.bar_file.as_raw_fd(),
                    file_offset: 0,
                    areas: vec![],
                }),
            }),
            CONFIG => Some(RegionInfo {
                size: 4096,
                read: true,
                write: true,
                mmap: None,
            }),
            _ => None,
        }
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        match index {
            MSIX => Some(IrqInfo {
                count: MSIX_COUNT,
                flags: VFIO_IRQ_INFO_EVENTFD,
            }),
            0 => Some(IrqInfo { count: 1, flags: 0 }),
            _ => None,
        }
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        self.log(format!("read {index} {offset:#x} {}", data.len()));
        if index != CONFIG {
            data.fill(0xab);
            return Ok(());
        }
        let st = self.state.lock().unwrap();
        let off = usize::try_from(offset).unwrap();
        data.copy_from_slice(&st.config[off..off + data.len()]);
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.log(format!("write {index} {offset:#x} {}", data.len()));
        if index != CONFIG {
            return Err(libc::EIO);
        }
        let mut st = self.state.lock().unwrap();
        let off = usize::try_from(offset).unwrap();
        st.config[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn dma_map(&mut self, map: DmaMap) -> Result<(), Errno> {
        self.log(format!(
            "map {:#x} {:#x} {:#x} r={} w={} fd={}",
            map.iova,
            map.size,
            map.file_offset,
            map.read,
            map.write,
            map.fd.is_some()
        ));
        self.state.lock().unwrap().dma_fds.push(map.fd);
        Ok(())
    }

    fn dma_unmap(&mut self, unmap: DmaUnmap) -> Result<(), Errno> {
        self.log(format!(
            "unmap {:#x} {:#x} all={}",
            unmap.iova, unmap.size, unmap.all
        ));
        Ok(())
    }

    fn set_irqs(&mut self, req: SetIrqs) -> Result<(), Errno> {
        let data = match &req.data {
            IrqData::None => "none".to_string(),
            IrqData::Bool(v) => format!("bool{v:?}"),
            IrqData::Eventfd(v) => format!(
                "eventfd{:?}",
                v.iter().map(Option::is_some).collect::<Vec<_>>()
            ),
        };
        self.log(format!(
            "irqs {} {} {} {:?} {data}",
            req.index, req.start, req.count, req.action
        ));
        let mut st = self.state.lock().unwrap();
        st.last_irq_data = Some(data);
        if let IrqData::Eventfd(fds) = req.data {
            st.irq_fds = fds;
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.log("reset".into());
        Ok(())
    }

    fn tick(&mut self) {
        self.state.lock().unwrap().ticks += 1;
    }

    fn tick_interval(&self) -> Option<Duration> {
        self.tick
    }

    fn disconnected(&mut self) {
        let mut st = self.state.lock().unwrap();
        st.disconnected += 1;
        st.dma_fds.clear();
        st.irq_fds.clear();
    }
}

struct Harness {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<Result<(), ServerError>>>,
    bar_file: File,
}

impl Harness {
    fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    fn last_call(&self) -> String {
        self.state
            .lock()
            .unwrap()
            .calls
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Wait for the server to return.
    fn join(&mut self) -> Result<(), ServerError> {
        self.server
            .take()
            .expect("joined twice")
            .join()
            .expect("server panicked")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
    }
}

fn start_server(stream: UnixStream, tick: Option<Duration>) -> Harness {
    let state = Arc::new(Mutex::new(State {
        config: (0..4096u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect(),
        ..Default::default()
    }));
    let bar_file = tempfile::tempfile().unwrap();
    bar_file.set_len(BAR0_SIZE).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut dev = FakeDev {
        state: state.clone(),
        bar_file: bar_file.try_clone().unwrap(),
        tick,
    };
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || serve(stream, &mut dev, &stop2));
    Harness {
        state,
        stop,
        server: Some(server),
        bar_file,
    }
}

/// A negotiated client and a server.
fn setup() -> (Client, Harness) {
    let (a, b) = UnixStream::pair().unwrap();
    let h = start_server(b, None);
    let client = Client::from_stream(a).unwrap();
    client.set_timeout(Some(TIMEOUT)).unwrap();
    (client, h)
}

fn raw(id: u16, command: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    wire::message(id, command, flags, 0, &[payload])
}

fn reply_header(reply: &[u8]) -> Header {
    Header::read_from_prefix(reply).unwrap().0
}

/// Assert an error reply with `errno` to message `id`.
fn assert_error(reply: &[u8], id: u16, errno: i32) {
    let hdr = reply_header(reply);
    assert_eq!(hdr.msg_id.get(), id);
    assert_eq!(
        hdr.flags.get(),
        wire::FLAG_TYPE_REPLY | wire::FLAG_ERROR,
        "not an error reply"
    );
    assert_eq!(hdr.error_no.get(), u32::try_from(errno).unwrap());
    assert_eq!(
        hdr.msg_size.get() as usize,
        HEADER_SIZE,
        "error replies carry only the header"
    );
    assert_eq!(reply.len(), HEADER_SIZE);
}

fn assert_remote(r: Result<impl std::fmt::Debug, ClientError>, errno: i32) {
    match r {
        Err(ClientError::Remote { errno: e }) => assert_eq!(e, errno),
        other => panic!("expected Remote({errno}), got {other:?}"),
    }
}

/// The connection still works.
fn assert_alive(client: &mut Client) {
    let info = client.device_info().unwrap();
    assert_eq!(info.num_regions, 9);
}

fn bfd(f: &impl AsFd) -> BorrowedFd<'_> {
    f.as_fd()
}

/// A non-blocking eventfd.
fn eventfd() -> File {
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    // SAFETY: into_raw_fd hands over sole ownership of a valid descriptor.
    File::from(unsafe { OwnedFd::from_raw_fd(efd.into_raw_fd()) })
}

/// The eventfd's counter, or None if it is zero.
fn eventfd_read(f: &File) -> Option<u64> {
    let mut buf = [0u8; 8];
    let mut f = f;
    f.read_exact(&mut buf)
        .ok()
        .map(|()| u64::from_ne_bytes(buf))
}

#[test]
fn version_negotiation() {
    let (a, b) = UnixStream::pair().unwrap();
    let _h = start_server(b, None);
    let mut client = Client::from_stream_unnegotiated(a);
    client.set_timeout(Some(TIMEOUT)).unwrap();

    // Before VERSION nothing else is served.
    let req = wire::DeviceInfo {
        argsz: 16.into(),
        ..Default::default()
    };
    let reply = client
        .send_raw(&raw(1, cmd::DEVICE_GET_INFO, 0, req.as_bytes()), &[])
        .unwrap();
    assert_error(&reply, 1, EINVAL);

    // What QEMU 11 sends: 0.0 with write_multiple, migration, etc.
    let json = br#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;
    let mut payload = wire::Version {
        major: 0.into(),
        minor: 0.into(),
    }
    .as_bytes()
    .to_vec();
    payload.extend_from_slice(json);
    payload.push(0);
    let request = raw(2, cmd::VERSION, 0, &payload);
    let reply = client.send_raw(&request, &[]).unwrap();
    let hdr = reply_header(&reply);
    assert_eq!(hdr.msg_id.get(), 2);
    assert_eq!(hdr.command.get(), cmd::VERSION);
    assert_eq!(hdr.flags.get(), wire::FLAG_TYPE_REPLY);
    assert_eq!(hdr.msg_size.get() as usize, reply.len());
    assert!(
        reply.len() <= request.len(),
        "reply must fit QEMU's buffer (the request size)"
    );
    let (ver, rest) = wire::Version::read_from_prefix(&reply[HEADER_SIZE..]).unwrap();
    assert_eq!(
        (ver.major.get(), ver.minor.get()),
        (0, 0),
        "never a minor above the proposal"
    );
    assert_eq!(rest.last(), Some(&0), "JSON is NUL-terminated");
    let v: serde_json::Value = serde_json::from_slice(&rest[..rest.len() - 1]).unwrap();
    let caps = v["capabilities"].as_object().unwrap();
    assert_eq!(caps["max_msg_fds"], 16);
    assert_eq!(caps["max_data_xfer_size"], 1 << 20);
    assert!(!caps.contains_key("write_multiple"));
    assert!(!caps.contains_key("migration"));
    assert!(!caps.contains_key("twin_socket"));

    // A newer minor is answered with ours.
    let mut payload = wire::Version {
        major: 0.into(),
        minor: 7.into(),
    }
    .as_bytes()
    .to_vec();
    payload.extend_from_slice(b"{}\0");
    let reply = client
        .send_raw(&raw(3, cmd::VERSION, 0, &payload), &[])
        .unwrap();
    let (ver, rest) = wire::Version::read_from_prefix(&reply[HEADER_SIZE..]).unwrap();
    assert_eq!((ver.major.get(), ver.minor.get()), (0, VERSION_MINOR));
    let v: serde_json::Value = serde_json::from_slice(&rest[..rest.len() - 1]).unwrap();
    assert_eq!(
        v["capabilities"].as_object().unwrap().len(),
        0,
        "only capabilities that were proposed"
    );

    // Unknown major.
    let payload = wire::Version {
        major: 1.into(),
        minor: 0.into(),
    }
    .as_bytes()
    .to_vec();
    let reply = client
        .send_raw(&raw(4, cmd::VERSION, 0, &payload), &[])
        .unwrap();
    assert_error(&reply, 4, ENOTSUP);

    // Our own client negotiates 0.1 and learns the limits.
    client.negotiate().unwrap();
    assert_eq!(client.server_version(), (0, 1));
    assert_eq!(client.server_max_msg_fds(), MAX_MSG_FDS);
    assert_eq!(client.max_data_xfer_size(), MAX_DATA_XFER_SIZE);
    assert_alive(&mut client);
}

#[test]
fn bad_version_json_is_an_error_reply() {
    let (mut client, _h) = setup();
    for (i, json) in [
        &b"{not json\0"[..],
        b"[1,2]\0",
        b"{\"capabilities\":5}\0",
        b"{\"capabilities\":{\"max_msg_fds\":\"many\"}}\0",
        b"{\"capabilities\":{\"max_msg_fds\":-1}}\0",
        b"\xff\xfe\0",
    ]
    .iter()
    .enumerate()
    {
        let mut payload = wire::Version {
            major: 0.into(),
            minor: 0.into(),
        }
        .as_bytes()
        .to_vec();
        payload.extend_from_slice(json);
        let id = u16::try_from(i).unwrap() + 100;
        let reply = client
            .send_raw(&raw(id, cmd::VERSION, 0, &payload), &[])
            .unwrap();
        assert_error(&reply, id, EINVAL);
    }
    // Too short for major/minor.
    let reply = client
        .send_raw(&raw(7, cmd::VERSION, 0, &[0]), &[])
        .unwrap();
    assert_error(&reply, 7, EINVAL);
    assert_alive(&mut client);
}

#[test]
fn device_info() {
    let (mut client, _h) = setup();
    let info = client.device_info().unwrap();
    assert_eq!(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));

    // QEMU's buffer is the 32-byte request: the reply is the 16-byte struct.
    let req = wire::DeviceInfo {
        argsz: 16.into(),
        ..Default::default()
    };
    let reply = client
        .send_raw(&raw(9, cmd::DEVICE_GET_INFO, 0, req.as_bytes()), &[])
        .unwrap();
    assert_eq!(reply.len(), 32);
    assert_eq!(reply_header(&reply).msg_size.get(), 32);
    let (info, _) = wire::DeviceInfo::read_from_prefix(&reply[HEADER_SIZE..]).unwrap();
    assert_eq!(info.argsz.get(), 16);
}

#[test]
fn region_info_two_pass_with_sparse_mmap_and_fd() {
    let (mut client, h) = setup();

    // First pass as QEMU does it: argsz 32.
    let req = wire::RegionInfo {
        argsz: 32.into(),
        index: BAR0.into(),
        ..Default::default()
    };
    let (reply, fds) = client
        .send_raw_with_fds(&raw(5, cmd::DEVICE_GET_REGION_INFO, 0, req.as_bytes()), &[])
        .unwrap();
    assert_eq!(
        reply.len(),
        HEADER_SIZE + 32,
        "first pass must not exceed argsz"
    );
    let (info, _) = wire::RegionInfo::read_from_prefix(&reply[HEADER_SIZE..]).unwrap();
    assert_eq!(info.argsz.get(), 32 + 32, "argsz tells the size needed");
    assert_eq!(info.cap_offset.get(), 32);
    assert_eq!(
        info.flags.get(),
        VFIO_REGION_INFO_FLAG_READ
            | VFIO_REGION_INFO_FLAG_WRITE
            | VFIO_REGION_INFO_FLAG_MMAP
            | VFIO_REGION_INFO_FLAG_CAPS
    );
    assert_eq!(info.size.get(), BAR0_SIZE);
    assert_eq!(info.offset.get(), 0x1000);
    assert_eq!(fds.len(), 1, "the region fd comes on the first pass too");

    // Second pass: struct + the 32-byte sparse-mmap capability.
    let req = wire::RegionInfo {
        argsz: 64.into(),
        index: BAR0.into(),
        ..Default::default()
    };
    let reply = client
        .send_raw(&raw(6, cmd::DEVICE_GET_REGION_INFO, 0, req.as_bytes()), &[])
        .unwrap();
    assert_eq!(reply.len(), HEADER_SIZE + 64);
    let cap = &reply[HEADER_SIZE + 32..];
    assert_eq!(
        &cap[..16],
        &[1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        "id 1, version 1, next 0, 1 area"
    );
    assert_eq!(u64::from_le_bytes(cap[16..24].try_into().unwrap()), 0x1000);
    assert_eq!(u64::from_le_bytes(cap[24..32].try_into().unwrap()), 0x1000);

    // The client does both passes.
    let (info, fd) = client.region_info(BAR0).unwrap();
    let fd = fd.expect("region fd");
    let mmap = info.mmap.as_ref().unwrap();
    assert_eq!(mmap.fd, fd.as_raw_fd());
    assert_eq!(mmap.file_offset, 0x1000);
    assert_eq!(mmap.areas, vec![(0x1000, 0x1000)]);
    assert!(info.read && info.write);
    // The received fd is the device's file.
    let mut got = File::from(fd);
    got.write_all_at_start(b"doorbell");
    let mut check = h.bar_file.try_clone().unwrap();
    let mut buf = [0u8; 8];
    check.seek(SeekFrom::Start(0)).unwrap();
    check.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"doorbell");

    // Whole-region mmap: no capability, areas = whole region.
    let (info, fd) = client.region_info(2).unwrap();
    assert!(fd.is_some());
    assert_eq!(info.mmap.unwrap().areas, vec![(0, 0x1000)]);

    // Config space: no mmap, no fd, plain 32-byte reply.
    let req = wire::RegionInfo {
        argsz: 32.into(),
        index: CONFIG.into(),
        ..Default::default()
    };
    let (reply, fds) = client
        .send_raw_with_fds(&raw(8, cmd::DEVICE_GET_REGION_INFO, 0, req.as_bytes()), &[])
        .unwrap();
    assert_eq!(reply.len(), HEADER_SIZE + 32);
    assert!(fds.is_empty());
    let (info, _) = wire::RegionInfo::read_from_prefix(&reply[HEADER_SIZE..]).unwrap();
    assert_eq!(
        (info.argsz.get(), info.cap_offset.get(), info.size.get()),
        (32, 0, 4096)
    );
    assert_eq!(
        info.flags.get(),
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
    );

    // Unknown regions.
    assert_remote(client.region_info(5), EINVAL);
    assert_remote(client.region_info(9), EINVAL);
    assert_remote(client.region_info(u32::MAX), EINVAL);
}

trait WriteAtStart {
    fn write_all_at_start(&mut self, data: &[u8]);
}

impl WriteAtStart for File {
    fn write_all_at_start(&mut self, data: &[u8]) {
        self.seek(SeekFrom::Start(0)).unwrap();
        self.write_all(data).unwrap();
    }
}

#[test]
fn irq_info() {
    let (mut client, _h) = setup();
    let info = client.irq_info(MSIX).unwrap();
    assert_eq!(
        info,
        IrqInfo {
            count: MSIX_COUNT,
            flags: VFIO_IRQ_INFO_EVENTFD
        }
    );
    assert_remote(client.irq_info(3), EINVAL);
    assert_remote(client.irq_info(5), EINVAL);
}

#[test]
fn region_read_write_round_trip() {
    let (mut client, h) = setup();
    // QEMU reads all of config space at once.
    let mut buf = vec![0u8; 256];
    client.region_read(CONFIG, 0, &mut buf).unwrap();
    let expect: Vec<u8> = (0..256u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    assert_eq!(buf, expect);

    client.region_write(CONFIG, 0x40, &[1, 2, 3, 4]).unwrap();
    let mut buf = [0u8; 4];
    client.region_read(CONFIG, 0x40, &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3, 4]);
    assert_eq!(h.state.lock().unwrap().config[0x40..0x44], [1, 2, 3, 4]);

    // A write reply is {offset, region, count}, no data.
    let req = wire::RegionAccess {
        offset: 0x10.into(),
        region: CONFIG.into(),
        count: 2.into(),
    };
    let mut payload = req.as_bytes().to_vec();
    payload.extend_from_slice(&[9, 9]);
    let reply = client
        .send_raw(&raw(3, cmd::REGION_WRITE, 0, &payload), &[])
        .unwrap();
    assert_eq!(reply.len(), HEADER_SIZE + 16);
    assert_eq!(&reply[HEADER_SIZE..], req.as_bytes());

    // Bounds and permissions are checked before the device sees anything.
    let before = h.calls().len();
    assert_remote(client.region_read(CONFIG, 4095, &mut [0u8; 2]), EINVAL);
    assert_remote(client.region_read(CONFIG, u64::MAX, &mut [0u8; 2]), EINVAL);
    assert_remote(client.region_write(1, 0, &[0]), EPERM);
    assert_remote(client.region_read(8, 0, &mut [0u8; 1]), EINVAL);
    assert_eq!(h.calls().len(), before, "the device saw a rejected access");
    // Device errors come back as they are.
    assert_remote(client.region_write(BAR0, 0, &[0]), libc::EIO);

    // A read larger than max_data_xfer_size: E2BIG, connection goes on.
    let req = wire::RegionAccess {
        offset: 0.into(),
        region: BAR0.into(),
        count: (MAX_DATA_XFER_SIZE + 1).into(),
    };
    let reply = client
        .send_raw(&raw(4, cmd::REGION_READ, 0, req.as_bytes()), &[])
        .unwrap();
    assert_error(&reply, 4, E2BIG);
    // A write whose count disagrees with its data.
    let req = wire::RegionAccess {
        offset: 0.into(),
        region: CONFIG.into(),
        count: 8.into(),
    };
    let mut payload = req.as_bytes().to_vec();
    payload.extend_from_slice(&[0; 4]);
    let reply = client
        .send_raw(&raw(5, cmd::REGION_WRITE, 0, &payload), &[])
        .unwrap();
    assert_error(&reply, 5, EINVAL);
    assert_alive(&mut client);
}

#[test]
fn dma_map_with_fd_and_without() {
    let (mut client, h) = setup();
    let mut mem = tempfile::tempfile().unwrap();
    mem.set_len(0x10000).unwrap();
    client
        .dma_map(0x10_0000, 0x10000, Some(mem.as_fd()), 0x2000, true, true)
        .unwrap();
    assert_eq!(
        h.last_call(),
        "map 0x100000 0x10000 0x2000 r=true w=true fd=true"
    );
    // The fd that arrived is the same file.
    {
        let st = h.state.lock().unwrap();
        let got = st.dma_fds[0].as_ref().unwrap();
        let theirs = File::from(got.try_clone().unwrap()).metadata().unwrap();
        let ours = mem.metadata().unwrap();
        assert_eq!((theirs.dev(), theirs.ino()), (ours.dev(), ours.ino()));
    }
    mem.write_all_at_start(b"x");

    // The BIOS ROM comes without an fd and read-only.
    client
        .dma_map(0xfffc_0000, 0x40000, None, 0, true, false)
        .unwrap();
    assert_eq!(
        h.last_call(),
        "map 0xfffc0000 0x40000 0x0 r=true w=false fd=false"
    );
    assert!(h.state.lock().unwrap().dma_fds[1].is_none());

    client.dma_unmap(0x10_0000, 0x10000, false).unwrap();
    assert_eq!(h.last_call(), "unmap 0x100000 0x10000 all=false");
    client.dma_unmap(0, 0, true).unwrap();
    assert_eq!(h.last_call(), "unmap 0x0 0x0 all=true");

    // The unmap reply echoes the entry (40 bytes, what QEMU sent).
    let req = wire::DmaUnmap {
        argsz: 24.into(),
        flags: 0.into(),
        addr: 0x1000.into(),
        size: 0x1000.into(),
    };
    let reply = client
        .send_raw(&raw(1, cmd::DMA_UNMAP, 0, req.as_bytes()), &[])
        .unwrap();
    assert_eq!(reply.len(), 40);
    assert_eq!(&reply[HEADER_SIZE..], req.as_bytes());

    let n = h.calls().len();
    // "Get dirty bitmap" (bit 0) is not supported; 1 << 2 is not "all".
    for (id, flags) in [(2u16, 1u32), (3, 1 << 2), (4, 3)] {
        let req = wire::DmaUnmap {
            argsz: 24.into(),
            flags: flags.into(),
            addr: 0.into(),
            size: 0.into(),
        };
        let reply = client
            .send_raw(&raw(id, cmd::DMA_UNMAP, 0, req.as_bytes()), &[])
            .unwrap();
        assert_error(&reply, id, EINVAL);
    }
    // "All" with a range, a zero-sized map, an overflowing map, two fds.
    assert_remote(client.dma_unmap(0x1000, 0x1000, true), EINVAL);
    assert_remote(client.dma_map(0x1000, 0, None, 0, true, true), EINVAL);
    assert_remote(client.dma_map(u64::MAX, 2, None, 0, true, true), EINVAL);
    let req = wire::DmaMap {
        argsz: 32.into(),
        flags: 3.into(),
        offset: 0.into(),
        addr: 0.into(),
        size: 0x1000.into(),
    };
    let reply = client
        .send_raw(
            &raw(5, cmd::DMA_MAP, 0, req.as_bytes()),
            &[mem.as_fd(), mem.as_fd()],
        )
        .unwrap();
    assert_error(&reply, 5, EINVAL);
    // Unknown map flags.
    let req = wire::DmaMap {
        argsz: 32.into(),
        flags: 4.into(),
        offset: 0.into(),
        addr: 0.into(),
        size: 0x1000.into(),
    };
    let reply = client
        .send_raw(&raw(6, cmd::DMA_MAP, 0, req.as_bytes()), &[])
        .unwrap();
    assert_error(&reply, 6, EINVAL);
    assert_eq!(h.calls().len(), n, "the device saw a rejected map/unmap");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (a, b) = UnixStream::pair().unwrap();
    let h = start_server(b, None);
    let client = Client::from_stream(a.try_clone().unwrap()).unwrap();
    client.set_timeout(Some(TIMEOUT)).unwrap();
    let mut a = a;
    // Several DMA_MAPs before reading any reply, like QEMU's memory listener,
    // plus a posted write (NO_REPLY) that must not be answered.
    let mut all = Vec::new();
    for i in 0..4u16 {
        let req = wire::DmaMap {
            argsz: 32.into(),
            flags: 3.into(),
            offset: 0.into(),
            addr: (u64::from(i) << 20).into(),
            size: 0x1000.into(),
        };
        all.extend(raw(100 + i, cmd::DMA_MAP, 0, req.as_bytes()));
    }
    let wr = wire::RegionAccess {
        offset: 0.into(),
        region: CONFIG.into(),
        count: 1.into(),
    };
    let mut payload = wr.as_bytes().to_vec();
    payload.push(0x5a);
    all.extend(raw(200, cmd::REGION_WRITE, wire::FLAG_NO_REPLY, &payload));
    let rd = wire::RegionAccess {
        offset: 0.into(),
        region: CONFIG.into(),
        count: 1.into(),
    };
    all.extend(raw(201, cmd::REGION_READ, 0, rd.as_bytes()));
    a.write_all(&all).unwrap();
    for i in 0..4u16 {
        let mut hdr = [0u8; 16];
        a.read_exact(&mut hdr).unwrap();
        let hdr = Header::read_from_bytes(&hdr[..]).unwrap();
        assert_eq!(hdr.msg_id.get(), 100 + i);
        assert_eq!(hdr.command.get(), cmd::DMA_MAP);
        assert_eq!(hdr.flags.get(), wire::FLAG_TYPE_REPLY);
        assert_eq!(hdr.msg_size.get(), 16);
    }
    let mut reply = [0u8; 16 + 16 + 1];
    a.read_exact(&mut reply).unwrap();
    assert_eq!(
        reply_header(&reply).msg_id.get(),
        201,
        "NO_REPLY write was answered"
    );
    assert_eq!(
        reply[32], 0x5a,
        "the posted write was executed before the read"
    );
    assert_eq!(h.calls().iter().filter(|c| c.starts_with("map")).count(), 4);
}

#[test]
fn set_irqs_with_eventfds() {
    let (mut client, h) = setup();
    let efds: Vec<File> = (0..3).map(|_| eventfd()).collect();

    // QEMU's MSI-X enable: EVENTFD|TRIGGER for vector 0 without any fd.
    client
        .set_irqs_raw(
            MSIX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[],
        )
        .unwrap();
    assert_eq!(h.last_call(), "irqs 2 0 1 Trigger eventfd[false]");
    // Then "disable all".
    client
        .set_irqs_raw(
            MSIX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            &[],
        )
        .unwrap();
    assert_eq!(h.last_call(), "irqs 2 0 0 Trigger none");

    let fds: Vec<BorrowedFd<'_>> = efds.iter().map(bfd).collect();
    client.set_irq_eventfds(MSIX, 4, &fds).unwrap();
    assert_eq!(
        h.last_call(),
        "irqs 2 4 3 Trigger eventfd[true, true, true]"
    );

    // The device signals vector 4+1 through the fd it received...
    {
        let st = h.state.lock().unwrap();
        let fd = st.irq_fds[1].as_ref().unwrap();
        File::from(fd.try_clone().unwrap())
            .write_all(&1u64.to_ne_bytes())
            .unwrap();
    }
    // ... and the client sees it on its own eventfd, not on the others.
    assert_eq!(eventfd_read(&efds[1]), Some(1));
    assert_eq!(eventfd_read(&efds[0]), None);
    assert_eq!(eventfd_read(&efds[2]), None);

    // Chunking: more eventfds than max_msg_fds in one call.
    let many: Vec<File> = (0..MSIX_COUNT).map(|_| eventfd()).collect();
    let fds: Vec<BorrowedFd<'_>> = many.iter().map(bfd).collect();
    client.set_irq_eventfds(MSIX, 0, &fds).unwrap();
    let calls = h.calls();
    assert_eq!(
        calls[calls.len() - 2]
            .split(' ')
            .take(4)
            .collect::<Vec<_>>(),
        ["irqs", "2", "0", "16"]
    );
    assert_eq!(
        calls[calls.len() - 1]
            .split(' ')
            .take(4)
            .collect::<Vec<_>>(),
        ["irqs", "2", "16", "16"]
    );

    // BOOL data.
    client
        .set_irqs_bool(MSIX, VFIO_IRQ_SET_ACTION_UNMASK, 1, &[true, false])
        .unwrap();
    assert_eq!(h.last_call(), "irqs 2 1 2 Unmask bool[true, false]");
}

#[test]
fn set_irqs_validation() {
    let (mut client, h) = setup();
    let efd = eventfd();
    let n = h.calls().len();
    let trigger_none = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
    let cases: &[(u32, u32, u32, u32, usize)] = &[
        // (index, flags, start, count, fds)
        (
            MSIX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            0,
        ),
        (
            MSIX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            0,
        ),
        (MSIX, VFIO_IRQ_SET_DATA_NONE, 0, 1, 0),
        (MSIX, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, 0),
        (MSIX, trigger_none | (1 << 6), 0, 1, 0),
        // Out of range.
        (MSIX, trigger_none, MSIX_COUNT, 1, 0),
        (MSIX, trigger_none, u32::MAX, 2, 0),
        (3, trigger_none, 0, 1, 0),
        (99, trigger_none, 0, 1, 0),
        // fds with DATA_NONE; fd count != count; eventfd on an index without EVENTFD.
        (MSIX, trigger_none, 0, 1, 1),
        (
            MSIX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            2,
            1,
        ),
        (
            0,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            1,
        ),
        // count 0 is only "disable all" with DATA_NONE.
        (
            MSIX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            0,
        ),
        // BOOL without its data bytes.
        (
            MSIX,
            VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            0,
        ),
    ];
    for &(index, flags, start, count, nfds) in cases {
        let fds: Vec<BorrowedFd<'_>> = (0..nfds).map(|_| efd.as_fd()).collect();
        assert_remote(
            client.set_irqs_raw(index, flags, start, count, &fds),
            EINVAL,
        );
    }
    // argsz disagreeing with the payload.
    let req = wire::IrqSet {
        argsz: 24.into(),
        flags: trigger_none.into(),
        index: MSIX.into(),
        start: 0.into(),
        count: 1.into(),
    };
    let reply = client
        .send_raw(&raw(1, cmd::DEVICE_SET_IRQS, 0, req.as_bytes()), &[])
        .unwrap();
    assert_error(&reply, 1, EINVAL);
    assert_eq!(h.calls().len(), n, "the device saw an invalid SET_IRQS");
    assert_alive(&mut client);
}

#[test]
fn reset() {
    let (mut client, h) = setup();
    client.reset().unwrap();
    assert_eq!(h.last_call(), "reset");
}

#[test]
fn wrong_argsz_is_einval() {
    let (mut client, h) = setup();
    let n = h.calls().len();
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (
            cmd::DEVICE_GET_INFO,
            wire::DeviceInfo {
                argsz: 8.into(),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (cmd::DEVICE_GET_INFO, vec![16, 0, 0]),
        (
            cmd::DEVICE_GET_REGION_INFO,
            wire::RegionInfo {
                argsz: 16.into(),
                index: CONFIG.into(),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            cmd::DEVICE_GET_IRQ_INFO,
            wire::IrqInfo {
                argsz: 4.into(),
                index: MSIX.into(),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            cmd::DMA_MAP,
            wire::DmaMap {
                argsz: 16.into(),
                flags: 3.into(),
                size: 0x1000.into(),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (cmd::DMA_MAP, vec![0; 31]),
        (
            cmd::DMA_UNMAP,
            wire::DmaUnmap {
                argsz: 8.into(),
                size: 0x1000.into(),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (cmd::REGION_READ, vec![0; 12]),
    ];
    for (i, (command, payload)) in cases.iter().enumerate() {
        let id = u16::try_from(i).unwrap();
        let reply = client
            .send_raw(&raw(id, *command, 0, payload), &[])
            .unwrap();
        assert_error(&reply, id, EINVAL);
    }
    assert_eq!(h.calls().len(), n);
    assert_alive(&mut client);
}

#[test]
fn unknown_and_unsupported_commands() {
    let (mut client, _h) = setup();
    let reply = client.send_raw(&raw(1, 99, 0, &[1, 2, 3]), &[]).unwrap();
    assert_error(&reply, 1, ENOSYS);
    assert_eq!(reply_header(&reply).command.get(), 99);
    let reply = client.send_raw(&raw(2, 0, 0, &[]), &[]).unwrap();
    assert_error(&reply, 2, ENOSYS);
    for (id, command) in [
        (3u16, cmd::DEVICE_GET_REGION_IO_FDS),
        (4, cmd::DIRTY_PAGES),
        (5, cmd::REGION_WRITE_MULTI),
    ] {
        let reply = client
            .send_raw(&raw(id, command, 0, &[0; 16]), &[])
            .unwrap();
        assert_error(&reply, id, ENOTSUP);
    }
    for (id, command) in [(6u16, cmd::DMA_READ), (7, cmd::DMA_WRITE)] {
        let reply = client
            .send_raw(&raw(id, command, 0, &[0; 16]), &[])
            .unwrap();
        assert_error(&reply, id, EINVAL);
    }
    let reply = client
        .send_raw(&raw(8, cmd::DEVICE_FEATURE, 0, &[0; 8]), &[])
        .unwrap();
    assert_error(&reply, 8, libc::ENOTTY);
    // Not a command type.
    let reply = client
        .send_raw(&raw(9, cmd::DEVICE_RESET, 0x7, &[]), &[])
        .unwrap();
    assert_error(&reply, 9, EINVAL);
    assert_alive(&mut client);
}

/// A message announcing a size we cannot frame closes the connection.
fn assert_framing_closes(msg_size: u32) {
    let (mut client, mut h) = setup();
    let hdr = Header {
        msg_id: 1.into(),
        command: cmd::DEVICE_GET_INFO.into(),
        msg_size: msg_size.into(),
        flags: 0.into(),
        error_no: 0.into(),
    };
    match client.send_raw(hdr.as_bytes(), &[]) {
        Err(ClientError::Closed) => {}
        other => panic!("msg_size {msg_size}: expected the connection closed, got {other:?}"),
    }
    match h.join() {
        Err(ServerError::BadMessageSize { msg_size: s }) => assert_eq!(s, msg_size),
        other => panic!("msg_size {msg_size}: serve returned {other:?}"),
    }
    assert_eq!(h.state.lock().unwrap().disconnected, 1);
}

#[test]
fn msg_size_too_small_closes_connection() {
    assert_framing_closes(0);
    assert_framing_closes(15);
}

#[test]
fn msg_size_too_large_closes_connection() {
    assert_framing_closes(u32::try_from(MAX_MSG_SIZE).unwrap() + 1);
    assert_framing_closes(u32::MAX);
}

#[test]
fn max_size_message_is_accepted() {
    let (mut client, h) = setup();
    let data = vec![0x11u8; MAX_DATA_XFER_SIZE as usize];
    // Writes to BAR0 fail in the fake device, but the message is framed fine.
    assert_remote(client.region_write(BAR0, 0, &data[..0x4000]), libc::EIO);
    let req = wire::RegionAccess {
        offset: 0.into(),
        region: BAR0.into(),
        count: MAX_DATA_XFER_SIZE.into(),
    };
    let mut payload = req.as_bytes().to_vec();
    payload.extend_from_slice(&data);
    let reply = client
        .send_raw(&raw(1, cmd::REGION_WRITE, 0, &payload), &[])
        .unwrap();
    assert_error(&reply, 1, EINVAL); // beyond the 16 KiB region
    assert_alive(&mut client);
    drop(h);
}

#[test]
fn truncated_message_then_eof() {
    for partial in [
        &b"\x01\x00\x04"[..],
        &raw(1, cmd::REGION_WRITE, 0, &[0; 84])[..40],
    ] {
        let (a, b) = UnixStream::pair().unwrap();
        let mut h = start_server(b, None);
        let client = Client::from_stream(a.try_clone().unwrap()).unwrap();
        client.set_timeout(Some(TIMEOUT)).unwrap();
        let mut a = a;
        a.write_all(partial).unwrap();
        drop(client);
        drop(a);
        match h.join() {
            Err(ServerError::Truncated { .. }) => {}
            other => panic!("serve returned {other:?}"),
        }
        assert_eq!(h.state.lock().unwrap().disconnected, 1);
    }
}

#[test]
fn clean_eof_and_stop() {
    let (client, mut h) = setup();
    drop(client);
    h.join().unwrap();
    assert_eq!(h.state.lock().unwrap().disconnected, 1);

    let (_client, mut h) = setup();
    h.stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert_eq!(h.state.lock().unwrap().disconnected, 1);
}

#[test]
fn half_a_message_does_not_stop_ticks() {
    let (a, b) = UnixStream::pair().unwrap();
    let h = start_server(b, Some(Duration::from_millis(1)));
    let client = Client::from_stream(a.try_clone().unwrap()).unwrap();
    client.set_timeout(Some(TIMEOUT)).unwrap();
    let mut a = a;
    let msg = raw(1, cmd::DEVICE_RESET, 0, &[]);
    a.write_all(&msg[..7]).unwrap();
    let before = h.state.lock().unwrap().ticks;
    let mut waited = Duration::ZERO;
    while h.state.lock().unwrap().ticks < before + 5 {
        assert!(
            waited < TIMEOUT,
            "no ticks while a message is half received"
        );
        std::thread::sleep(Duration::from_millis(5));
        waited += Duration::from_millis(5);
    }
    a.write_all(&msg[7..]).unwrap();
    let mut reply = [0u8; 16];
    a.read_exact(&mut reply).unwrap();
    assert_eq!(reply_header(&reply).flags.get(), wire::FLAG_TYPE_REPLY);
    assert_eq!(h.last_call(), "reset");
}

#[test]
fn too_many_fds_are_refused_and_closed() {
    let (mut client, h) = setup();
    // Every copy of `probe` we send must be closed by the server: then `peer`
    // reads end-of-file.
    let (probe, mut peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let copies: Vec<OwnedFd> = (0..MAX_MSG_FDS + 1)
        .map(|_| probe.as_fd().try_clone_to_owned().unwrap())
        .collect();
    let fds: Vec<BorrowedFd<'_>> = copies.iter().map(bfd).collect();
    let n = h.calls().len();
    let req = wire::DmaMap {
        argsz: 32.into(),
        flags: 3.into(),
        offset: 0.into(),
        addr: 0.into(),
        size: 0x1000.into(),
    };
    let reply = client
        .send_raw(&raw(1, cmd::DMA_MAP, 0, req.as_bytes()), &fds)
        .unwrap();
    assert_error(&reply, 1, E2BIG);
    // fds on a command that takes none: refused, closed.
    let reply = client
        .send_raw(&raw(2, cmd::DEVICE_RESET, 0, &[]), &fds[..1])
        .unwrap();
    assert_error(&reply, 2, EINVAL);
    assert_eq!(h.calls().len(), n, "the device saw a refused message");
    drop(fds);
    drop(copies);
    drop(probe);
    let mut buf = [0u8; 1];
    match peer.read(&mut buf) {
        Ok(0) => {}
        other => panic!("the server kept a descriptor: {other:?}"),
    }
    assert_alive(&mut client);
}

#[test]
fn listener_bind_accept_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm0.sock");

    // A stale socket file (its listener is gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = Listener::bind(&path).unwrap();

    // Not a socket: left alone.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Listener::bind(&file),
        Err(ServerError::NotASocket { .. })
    ));
    assert!(file.exists());

    // accept returns None once stopped.
    let stop = AtomicBool::new(true);
    assert!(listener.accept(&stop).unwrap().is_none());

    // A real client over the path.
    let stop = Arc::new(AtomicBool::new(false));
    let p2 = path.clone();
    let client = std::thread::spawn(move || {
        let stream = UnixStream::connect(&p2).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut c = Client::from_stream(stream).unwrap();
        let info = c.device_info().unwrap();
        c.reset().unwrap();
        info
    });
    let stream = listener.accept(&stop).unwrap().expect("a connection");
    let mut h = start_server(stream, None);
    let info = client.join().unwrap();
    assert_eq!(info.num_irqs, 5);
    h.join().unwrap();
    assert_eq!(h.calls(), vec!["reset".to_string()]);

    // A live socket is not stolen, and the error names the path. (The probe
    // connection lands in the live listener's backlog: a server sees it as a
    // client that leaves at once.)
    let err = Listener::bind(&path).unwrap_err();
    assert!(matches!(err, ServerError::InUse { .. }));
    assert!(err.to_string().contains("vm0.sock"), "{err}");
    assert!(path.exists());

    drop(listener);
    assert!(!path.exists(), "the socket file outlived the listener");
}

#[test]
fn listener_sockets_get_the_mode_and_owner_asked_for() {
    use leapio_vmm_shim::vfio_user::SocketAccess;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    // Default: only the server's user, whatever the umask.
    let path = dir.path().join("a.sock");
    let l = Listener::bind(&path).unwrap();
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    drop(l);
    // Asked for: a hypervisor in another group.
    let path = dir.path().join("b.sock");
    let mut access = SocketAccess::default();
    access.set_mode("0660").unwrap();
    let gid = m.gid() + 1;
    access.set_owner(&format!("{}:{gid}", m.uid())).unwrap();
    let l = Listener::bind_with(&path, &access).unwrap();
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!((m.permissions().mode() & 0o777, m.gid()), (0o660, gid));
    // Nothing left behind next to the socket.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("b.sock")]);
    drop(l);
}

#[test]
fn header_layout_is_little_endian_as_specified() {
    let msg = wire::message(0x0102, cmd::DEVICE_GET_REGION_INFO, 0x21, 22, &[&[0xaa; 4]]);
    assert_eq!(
        msg,
        [2, 1, 5, 0, 20, 0, 0, 0, 0x21, 0, 0, 0, 22, 0, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa]
    );
    let set = wire::IrqSet {
        argsz: 20.into(),
        flags: 0x24.into(),
        index: 2.into(),
        start: 3.into(),
        count: 4.into(),
    };
    assert_eq!(
        set.as_bytes(),
        [20, 0, 0, 0, 0x24, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]
    );
}
