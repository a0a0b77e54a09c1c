//! Opening the backends of a front end's namespaces.

use crate::pcie::controller::Namespace;
use crate::qos::QosBackend;
use leapio_backends::{open_backend, open_backend_unclaimed, Backend, BackendError, BackendSpec};
use leapio_controller::{namespace_ids, NamespaceInfo, ZonedInfo};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Backends open in this process, by spec: the same spec given to several
/// controllers (or targets) names one device, shared (a namespace attached
/// to several controllers), as QoS tenants on one device need. Each is
/// opened inside a [`QosBackend`], where the device's scheduler sits.
static OPEN: Mutex<Option<HashMap<String, Weak<dyn Backend>>>> = Mutex::new(None);

/// Open `spec`, or share the backend this process already has open for it.
fn open_shared(
    spec: &BackendSpec,
    open: fn(&BackendSpec) -> Result<Arc<dyn Backend>, BackendError>,
) -> Result<Arc<dyn Backend>, BackendError> {
    let key = spec.to_string();
    let mut g = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    let map = g.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    // RAM namespaces are private memory: each spec is a new disk.
    let shareable = !matches!(spec, BackendSpec::Ram { .. });
    if shareable {
        if let Some(b) = map.get(&key).and_then(Weak::upgrade) {
            tracing::info!("{key}: shared with the controllers already serving it");
            return Ok(b);
        }
    }
    let b = open(spec)?;
    if !shareable {
        return Ok(b);
    }
    let b: Arc<dyn Backend> = QosBackend::wrap(&key, b);
    map.insert(key, Arc::downgrade(&b));
    Ok(b)
}

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
) -> Result<Namespaces, (u32, BackendError)> {
    let mut backends = Vec::new();
    let mut namespaces = Vec::new();
    for (i, ns) in specs.iter().enumerate() {
        let nsid = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let b = open_shared(ns, open_backend).map_err(|e| (nsid, e))?;
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
) -> Result<Vec<Arc<Namespace>>, (u32, BackendError)> {
    let mut out = Vec::new();
    for (nsid, spec) in specs {
        let nsid = *nsid;
        let open = if claim {
            open_backend
        } else {
            open_backend_unclaimed
        };
        let backend = open_shared(spec, open).map_err(|e| (nsid, e))?;
        tracing::info!(ctrl, nsid, "namespace {nsid}: {}", backend.describe());
        let info = info(nsid, backend.as_ref(), ctrl);
        out.push(Arc::new(Namespace {
            info,
            backend,
            io: Default::default(),
        }));
    }
    Ok(out)
}
