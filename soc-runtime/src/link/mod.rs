//! The runtime's end of the link to a host-driver: the client that attaches
//! controllers and follows the host-driver's messages ([`client`]), the
//! carriers it travels over ([`carrier`]: a Unix socket, or the rings of a
//! link function), and a link function as an SoC sees it on its PCI bus
//! ([`pci_function`]).

pub mod carrier;
pub mod client;
pub mod pci_function;

pub use carrier::{Carrier, Windows};
pub use client::LinkClient;
