//! A small NVMe host driver over vfio-user, playing the guest and the
//! hypervisor at once (the mock-driver pattern of rust-vmm's virtio-queue):
//! it owns a memfd of "guest RAM", maps it into the controller with DMA_MAP,
//! maps the doorbell page like QEMU does, wires MSI-X vectors to eventfds,
//! enables the controller, creates queues, submits commands and reaps
//! completions. Integration tests use it to run without a VM, and to do
//! what a well-behaved Linux guest never does. The `leapio-perf` benchmark
//! drives controllers with it too.

pub mod driver;
pub mod kept;
pub mod mem;
pub mod proc_stat;
pub mod server;
pub mod soc;
pub mod split;
pub mod tcp_proxy;
pub mod vfio_user_client;

pub use driver::{Driver, DriverError, QueuePair};
pub use mem::GuestMem;
