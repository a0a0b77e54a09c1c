//! The hypervisor-facing device: the vfio-user protocol (a server that
//! lets a stock hypervisor, QEMU >= 10.1 `-device vfio-user-pci` or
//! cloud-hypervisor `--user-device`, drive a device) and the PCI function's
//! configuration space. The NVMe controller behind it is the host-driver's;
//! its wire types are the `leapio-nvme` crate (`nvme/`).

pub mod pci;
pub mod vfio_user;
