//! The hypervisor-facing shim: a vfio-user server that presents a PCI NVMe
//! controller to a stock hypervisor (QEMU `vfio-user-pci`, cloud-hypervisor
//! `--user-device`).
//!
//! - [`vfio_user`]: the protocol (server for the device, client for tests).
//! - [`pci`]: configuration space.
//! - [`controller`]: registers, enable/reset/shutdown, vfio-user device.
//! - `admin`: the admin command set.
//! - [`queue`]: submission/completion rings in guest memory.
//! - [`shared`]: what the runtime's pollers share with the controller.
//!
//! The shim knows nothing about backends: I/O queues are handed to the
//! runtime through [`controller::IoQueues`].

mod admin;
pub mod controller;
pub mod dma;
pub mod doorbell;
pub mod features;
pub mod identify;
pub mod irq;
pub mod pci;
pub mod queue;
pub mod shared;
pub mod vfio_user;

pub use controller::{ControllerConfig, CqSetup, IoQueues, NvmeController, SqSetup};
pub use shared::{CtrlShared, NamespaceInfo, ShadowDoorbells};
