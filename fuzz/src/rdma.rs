//! NVMe/RDMA command capsules (a command, then in-capsule data) from
//! fuzzer input, for the fabrics queue as the RDMA target drives it: data
//! outside the capsule named by keyed SGL descriptors (of the right length,
//! or not), and some capsules that are not: short, or an SGL of another
//! transport, or in-capsule descriptors beyond the data that came.

use crate::fabrics::{self, Data};
use crate::Input;
use leapio_nvme::fabrics::SglDescriptor;
use leapio_nvme::rdma::KeyedSgl;
use leapio_nvme::Sqe;
use zerocopy::IntoBytes;

fn capsule(sqe: &Sqe, data: &[u8]) -> Vec<u8> {
    let mut out = sqe.as_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// One capsule of a host with CIDs from `cid`.
pub fn host_capsule(input: &mut Input<'_>, cid: &mut u16) -> Vec<u8> {
    *cid = cid.wrapping_add(1);
    let c = *cid;
    let k = input.u8() % 12;
    if k >= 10 {
        // Shorter than a command, or garbage of any length.
        let len = if k == 10 {
            input.below(64)
        } else {
            input.below(300)
        };
        let mut b = input.bytes(len).to_vec();
        if b.len() >= 4 {
            // A command of garbage still has the queue's next CID: the
            // host's view stays one command per CID.
            b[2..4].copy_from_slice(&c.to_le_bytes());
        }
        return b;
    }
    let choice = [0, 1, 2, 3, 3, 3, 4, 4, 5, 0][usize::from(k)];
    match fabrics::command(input, choice, c) {
        (sqe, Data::Capsule(d)) => {
            if !d.is_empty() && input.u8() > 240 {
                // The descriptor names more than came.
                let cut = input.below(d.len());
                return capsule(&sqe, &d[..cut]);
            }
            capsule(&sqe, &d)
        }
        (mut sqe, Data::Transfer(n)) => {
            match input.u8() {
                0..=229 => KeyedSgl::new(input.u64(), n, input.u32()).store(&mut sqe),
                230..=239 => SglDescriptor::transport(n).store(&mut sqe),
                240..=247 => {
                    // In the capsule, but nothing follows.
                    SglDescriptor::in_capsule(u64::from(input.u32()), n).store(&mut sqe);
                }
                _ => {
                    let raw = input.array::<16>();
                    sqe.prp1 = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default()).into();
                    sqe.prp2 = u64::from_le_bytes(raw[8..].try_into().unwrap_or_default()).into();
                    sqe.flags |= 0x40;
                }
            }
            capsule(&sqe, &[])
        }
    }
}
