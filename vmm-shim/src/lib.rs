//! The hypervisor-facing device: the vfio-user protocol (a server that
//! lets a stock hypervisor, QEMU >= 10.1 `-device vfio-user-pci` or
//! cloud-hypervisor `--user-device`, drive a device) and the PCI function's
//! configuration space. The NVMe controller behind it is the host-driver's;
//! the NVMe interface itself is the `leapio-nvme` crate (`vmm-shim/nvme`).

pub mod pci;
pub mod vfio_user;
