//! vfio-user messages for the fuzz targets and their seeds.

use crate::Input;
use leapio_vmm_shim::vfio_user::wire::cmd;

/// `VFIO_USER_F_DMA_REGION_READ | _WRITE`.
pub const DMA_READ_WRITE: u32 = 3;
/// `VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_EVENTFD_TRIGGER: u32 = 4 | 32;
/// The MSI-X interrupt index.
pub const IRQ_MSIX: u32 = 2;

/// Which descriptors go with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fds {
    None,
    /// This many copies of the memory descriptor.
    Memory(usize),
    /// This many eventfds.
    Events(usize),
}

/// One message: header fields, body, descriptors.
pub struct Message {
    pub command: u16,
    pub flags: u32,
    /// `None`: the real size.
    pub msg_size: Option<u32>,
    pub body: Vec<u8>,
    pub fds: Fds,
}

fn le(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Message {
    pub fn new(command: u16, body: Vec<u8>) -> Message {
        Message {
            command,
            flags: 0,
            msg_size: None,
            body,
            fds: Fds::None,
        }
    }

    /// The bytes on the wire with `msg_id`.
    pub fn encode(&self, msg_id: u16) -> Vec<u8> {
        let size = self
            .msg_size
            .unwrap_or_else(|| u32::try_from(16 + self.body.len()).unwrap_or(u32::MAX));
        le(&[
            &msg_id.to_le_bytes(),
            &self.command.to_le_bytes(),
            &size.to_le_bytes(),
            &self.flags.to_le_bytes(),
            &0u32.to_le_bytes(),
            &self.body,
        ])
    }

    pub fn version(json: &[u8]) -> Message {
        let mut body = le(&[&0u16.to_le_bytes(), &1u16.to_le_bytes(), json]);
        body.push(0);
        Message::new(cmd::VERSION, body)
    }

    pub fn dma_map(flags: u32, offset: u64, addr: u64, size: u64, with_fd: bool) -> Message {
        let body = le(&[
            &32u32.to_le_bytes(),
            &flags.to_le_bytes(),
            &offset.to_le_bytes(),
            &addr.to_le_bytes(),
            &size.to_le_bytes(),
        ]);
        let mut m = Message::new(cmd::DMA_MAP, body);
        if with_fd {
            m.fds = Fds::Memory(1);
        }
        m
    }

    pub fn dma_unmap(flags: u32, addr: u64, size: u64) -> Message {
        let body = le(&[
            &24u32.to_le_bytes(),
            &flags.to_le_bytes(),
            &addr.to_le_bytes(),
            &size.to_le_bytes(),
        ]);
        Message::new(cmd::DMA_UNMAP, body)
    }

    pub fn device_info(argsz: u32) -> Message {
        Message::new(cmd::DEVICE_GET_INFO, le(&[&argsz.to_le_bytes(), &[0; 12]]))
    }

    pub fn region_info(argsz: u32, index: u32) -> Message {
        let body = le(&[
            &argsz.to_le_bytes(),
            &0u32.to_le_bytes(),
            &index.to_le_bytes(),
            &[0; 20],
        ]);
        Message::new(cmd::DEVICE_GET_REGION_INFO, body)
    }

    pub fn irq_info(index: u32) -> Message {
        let body = le(&[
            &16u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &index.to_le_bytes(),
            &0u32.to_le_bytes(),
        ]);
        Message::new(cmd::DEVICE_GET_IRQ_INFO, body)
    }

    pub fn set_irqs(flags: u32, index: u32, start: u32, count: u32, data: &[u8]) -> Message {
        let argsz = u32::try_from(20 + data.len()).unwrap_or(u32::MAX);
        let body = le(&[
            &argsz.to_le_bytes(),
            &flags.to_le_bytes(),
            &index.to_le_bytes(),
            &start.to_le_bytes(),
            &count.to_le_bytes(),
            data,
        ]);
        Message::new(cmd::DEVICE_SET_IRQS, body)
    }

    pub fn region_read(region: u32, offset: u64, count: u32) -> Message {
        let body = le(&[
            &offset.to_le_bytes(),
            &region.to_le_bytes(),
            &count.to_le_bytes(),
        ]);
        Message::new(cmd::REGION_READ, body)
    }

    pub fn region_write(region: u32, offset: u64, data: &[u8]) -> Message {
        let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let body = le(&[
            &offset.to_le_bytes(),
            &region.to_le_bytes(),
            &count.to_le_bytes(),
            data,
        ]);
        Message::new(cmd::REGION_WRITE, body)
    }

    /// A message built from fuzzer input: mostly well-formed commands with
    /// chosen fields, sometimes raw bytes.
    pub fn from_input(input: &mut Input<'_>) -> Message {
        let region = |input: &mut Input<'_>| {
            let r = input.u8();
            if r < 200 {
                u32::from(r % 9)
            } else {
                u32::from(r)
            }
        };
        let small = |input: &mut Input<'_>, max: u64| u64::from(input.u16()) % max;
        match input.u8() % 12 {
            0 => {
                let len = input.below(128);
                let json = input.bytes(len);
                Message::version(if json.first() == Some(&b'{') {
                    json
                } else {
                    br#"{"capabilities":{"max_msg_fds":16}}"#
                })
            }
            1 => {
                let page = 4096;
                let addr = small(input, 0x400) * page;
                let size = (1 + small(input, 0x100)) * page;
                let offset = small(input, 0x100) * page;
                let flags = u32::from(input.u8() % 8);
                Message::dma_map(flags, offset, addr, size, input.u8() < 200)
            }
            2 => {
                let page = 4096;
                let flags = u32::from(input.u8() % 8);
                Message::dma_unmap(
                    flags,
                    small(input, 0x400) * page,
                    small(input, 0x100) * page,
                )
            }
            3 => Message::device_info(if input.bool() { 16 } else { input.u32() }),
            4 => {
                let argsz = if input.bool() {
                    32
                } else {
                    u32::from(input.u16())
                };
                Message::region_info(argsz, region(input))
            }
            5 => Message::irq_info(u32::from(input.u8() % 8)),
            6 => {
                let flags = if input.u8() < 200 {
                    IRQ_EVENTFD_TRIGGER
                } else {
                    u32::from(input.u8())
                };
                let index = if input.u8() < 200 {
                    IRQ_MSIX
                } else {
                    u32::from(input.u8() % 8)
                };
                let start = u32::from(input.u8() % 10);
                let count = u32::from(input.u8() % 6);
                let data_len = input.below(8);
                let data = input.bytes(data_len).to_vec();
                let mut m = Message::set_irqs(flags, index, start, count, &data);
                if flags & 4 != 0 && input.u8() < 200 {
                    m.fds = Fds::Events(usize::try_from(count).unwrap_or(0));
                }
                m
            }
            7 => {
                let r = region(input);
                let count = if input.u8() < 240 {
                    1 << (input.u8() % 4)
                } else {
                    input.u32()
                };
                Message::region_read(r, u64::from(input.u16()), count)
            }
            8 | 9 => {
                let r = region(input);
                let off = if r == 0 && input.bool() {
                    u64::from(input.u8() % 0x40)
                } else {
                    u64::from(input.u16())
                };
                let len = 1 << (input.u8() % 4);
                let data = input.bytes(len).to_vec();
                Message::region_write(r, off, &data)
            }
            10 => Message::new(cmd::DEVICE_RESET, Vec::new()),
            _ => {
                let command = u16::from(input.u8() % 24);
                let flags = u32::from(input.u8());
                let len = input.below(64);
                let mut m = Message::new(command, input.bytes(len).to_vec());
                m.flags = flags;
                if input.u8() > 240 {
                    m.msg_size = Some(input.u32());
                }
                m.fds = match input.u8() % 8 {
                    0 => Fds::Memory(1),
                    1 => Fds::Events(usize::from(input.u8() % 20)),
                    _ => Fds::None,
                };
                m
            }
        }
    }
}
