//! Opening the backends of a front end's namespaces.

use crate::ctrl::Namespace;
use leapio_nvme::controller::{namespace_ids, NamespaceInfo, ZonedInfo};
use leapio_transports::{
    open_backend, open_backend_unclaimed, Backend, BackendSpec, TransportError,
};
use std::sync::Arc;

/// A front end's namespaces: their backends and how they are presented,
/// both in NSID order.
pub type Namespaces = (Vec<Arc<dyn Backend>>, Vec<NamespaceInfo>);

/// Open the backends of a controller's (or target's) namespaces, in NSID
/// order, and describe them as presented with identifiers derived from
/// `serial`. A failure names the NSID.
pub fn open_namespaces(
    specs: &[BackendSpec],
    serial: &str,
    owner: &str,
) -> Result<Namespaces, (u32, TransportError)> {
    let mut backends = Vec::new();
    let mut namespaces = Vec::new();
    for (i, ns) in specs.iter().enumerate() {
        let nsid = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let b = open_backend(ns).map_err(|e| (nsid, e))?;
        tracing::info!(owner, nsid, "namespace {nsid}: {}", b.describe());
        namespaces.push(info(nsid, b.as_ref(), serial));
        backends.push(b);
    }
    Ok((backends, namespaces))
}

/// Namespace `nsid` as a backend presents it.
pub fn info(nsid: u32, b: &dyn Backend, serial: &str) -> NamespaceInfo {
    let g = b.geometry();
    let f = b.features();
    let (nguid, eui64, uuid) = namespace_ids(serial, nsid);
    NamespaceInfo {
        nsid,
        block_size: g.block_size,
        num_blocks: g.num_blocks,
        volatile_write_cache: f.volatile_write_cache,
        write_zeroes: f.write_zeroes,
        deallocate: f.deallocate,
        zoned: b.zoned().map(|z| ZonedInfo {
            zone_blocks: z.zone_blocks,
            capacity: z.capacity,
            max_open: z.max_open,
            max_active: z.max_active,
        }),
        nguid,
        eui64,
        uuid,
    }
}

/// Open the namespaces a runtime serves for one controller, by NSID.
/// The identifiers the guest sees are the host-driver's; these carry
/// what the data path needs (geometry, capabilities). Without `claim`
/// the backends are claimed later (taking over from a runtime that still
/// holds them: see [`Backend::claim`]).
pub fn open_served(
    specs: &[(u32, BackendSpec)],
    ctrl: &str,
    claim: bool,
) -> Result<Vec<Arc<Namespace>>, (u32, TransportError)> {
    let mut out = Vec::new();
    for (nsid, spec) in specs {
        let nsid = *nsid;
        let open = if claim {
            open_backend
        } else {
            open_backend_unclaimed
        };
        let backend = open(spec).map_err(|e| (nsid, e))?;
        tracing::info!(ctrl, nsid, "namespace {nsid}: {}", backend.describe());
        let info = info(nsid, backend.as_ref(), ctrl);
        out.push(Arc::new(Namespace { info, backend }));
    }
    Ok(out)
}
