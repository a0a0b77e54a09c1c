//! NVMe over Fabrics, the controller side every transport shares: the
//! target's spec ([`config`]), the subsystem and its dynamic controllers
//! ([`subsystem`]), the admin commands, properties and the discovery log
//! ([`admin`]), where a command's data travels ([`data`]), and one queue's
//! state machine ([`queue`]). NVMe/TCP (`tcp_target`) and NVMe/RDMA
//! (`rdma_target`) carry it.

pub mod admin;
pub mod ana;
pub mod config;
pub mod data;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod orphans;
pub mod queue;
pub mod subsystem;
