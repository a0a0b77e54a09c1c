//! Storage services: backends made of other backends, so that a namespace
//! is a tree (as SPDK stacks its bdevs). A service's spec names its
//! children in parentheses, separated by `|`, and its own options after a
//! `?`, joined by `&`:
//!
//! ```text
//! raid0:(file:/srv/a.img|file:/srv/b.img)?strip=64K
//! concat:(ram:1G|nvme-tcp:10.0.0.2:4420/nqn.2026-01.io.example:disk)
//! crypt:(file:/srv/a.img)?key=/etc/leapio/vm0.key
//! multipath:(nvme-tcp:10.0.0.2:4420/nqn.x:d?retry=500|nvme-tcp:10.0.1.2:4420/nqn.x:d?retry=500)
//! multipath:(nvme-tcp:10.0.0.2:4420/nqn.x:d?retry=500|nvme-tcp:10.0.1.2:4420/nqn.x:d?retry=500)
//! raid1:(file:/srv/a.img|nvme-tcp:10.0.0.2:4420/nqn.2026-01.io.example:disk)?bitmap=/var/lib/leapio/vm0.bitmap
//! ```
//!
//! A child is any backend spec, a service included
//! (`raid0:(concat:(ram:1G|ram:1G)|ram:2G)`). A child's spec must not hold
//! a `,` (the option strings it sits in are split at commas): a child
//! takes the block size of what it is (a file's is the device's; RAM's is
//! 512 bytes), and every child of a service must have the same.

pub mod crypt;
pub mod mirror;
pub mod multipath;
pub mod stripe;

use crate::config::BackendSpec;
use leapio_options::Options;
use std::fmt;

/// A service and its children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceSpec {
    /// RAID-0: `strip` bytes on each child in turn.
    Stripe {
        children: Vec<BackendSpec>,
        strip: u64,
    },
    /// The children one after the other.
    Concat { children: Vec<BackendSpec> },
    /// Several paths to one namespace.
    Multipath {
        children: Vec<BackendSpec>,
        policy: multipath::Policy,
    },
    /// AES-XTS over one child, the key in a file.
    Crypt {
        children: Vec<BackendSpec>,
        key: std::path::PathBuf,
    },
    /// RAID-1 over 2..N children, with a write-intent bitmap in a file.
    Mirror {
        children: Vec<BackendSpec>,
        bitmap: std::path::PathBuf,
        /// Bytes per bitmap bit (a power of two, at least 64 KiB).
        region: u64,
        /// Background resync rate limit, MB/s.
        resync_mbps: u64,
    },
}

/// Default strip size of `raid0`.
pub const DEFAULT_STRIP: u64 = 64 << 10;
/// Most children of one service.
pub const MAX_CHILDREN: usize = 32;

impl ServiceSpec {
    pub fn children(&self) -> &[BackendSpec] {
        match self {
            ServiceSpec::Stripe { children, .. }
            | ServiceSpec::Concat { children }
            | ServiceSpec::Crypt { children, .. }
            | ServiceSpec::Multipath { children, .. }
            | ServiceSpec::Mirror { children, .. } => children,
        }
    }
}

fn join(children: &[BackendSpec]) -> String {
    children
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("|")
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceSpec::Stripe { children, strip } => {
                write!(f, "raid0:({})", join(children))?;
                if *strip != DEFAULT_STRIP {
                    write!(f, "?strip={}", crate::config::format_size(*strip))?;
                }
                Ok(())
            }
            ServiceSpec::Concat { children } => write!(f, "concat:({})", join(children)),
            ServiceSpec::Multipath { children, policy } => {
                write!(f, "multipath:({})", join(children))?;
                if *policy != multipath::Policy::RoundRobin {
                    write!(f, "?policy={}", policy.name())?;
                }
                Ok(())
            }
            ServiceSpec::Crypt { children, key } => {
                write!(f, "crypt:({})?key={}", join(children), key.display())
            }
            ServiceSpec::Mirror {
                children,
                bitmap,
                region,
                resync_mbps,
            } => {
                write!(f, "raid1:({})?bitmap={}", join(children), bitmap.display())?;
                if *region != mirror::DEFAULT_REGION {
                    write!(f, "&region={}", crate::config::format_size(*region))?;
                }
                if *resync_mbps != mirror::DEFAULT_RESYNC_MBPS {
                    write!(f, "&resync-mbps={resync_mbps}")?;
                }
                Ok(())
            }
        }
    }
}

/// What a service's children say together.
pub(crate) mod children {
    use leapio_backend::{Backend, BackendError, BackendQueue, Completion, Owner};
    use std::sync::Arc;
    use std::time::Duration;

    /// Bytes every child's CPU copied.
    pub fn copied_bytes(c: &[Arc<dyn Backend>]) -> u64 {
        c.iter().map(|c| c.copied_bytes()).sum()
    }

    /// The first child's id for `who`: the children tell owners apart
    /// their own way, and a QoS scheduler sits above a service.
    pub fn owner(c: &[Arc<dyn Backend>], who: &Owner<'_>) -> u32 {
        c.first().map_or(0, |c| c.owner(who))
    }

    /// The longest any child's writes may still land after a runtime died.
    pub fn stale_writes_for(c: &[Arc<dyn Backend>]) -> Duration {
        c.iter()
            .map(|c| c.stale_writes_for())
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Poll the child queues that have requests out, their completions
    /// into `got`. An idle queue is not asked: for a remote child that is
    /// a receive call saved per poll.
    pub fn poll_busy(queues: &mut [Box<dyn BackendQueue>], got: &mut Vec<Completion>) {
        for q in queues.iter_mut().filter(|q| q.in_flight() > 0) {
            q.poll(got);
        }
    }

    /// Kick the child queues that have requests out (every one, even
    /// after an error); the first error.
    pub fn kick_busy(queues: &mut [Box<dyn BackendQueue>]) -> Result<(), BackendError> {
        let mut first = Ok(());
        for q in queues.iter_mut().filter(|q| q.in_flight() > 0) {
            if let Err(e) = q.kick() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// The largest request every child takes.
    pub fn max_io_bytes(c: &[Arc<dyn Backend>]) -> u64 {
        c.iter().map(|c| c.max_io_bytes()).min().unwrap_or(u64::MAX)
    }
}

/// A test backend over another whose requests all fail with `errno` while
/// `broken` is set: a child or path that dies and comes back. It refuses
/// requests larger than `max_io` bytes, as a remote target does.
#[cfg(test)]
pub(crate) struct Flaky {
    pub inner: std::sync::Arc<dyn leapio_backend::Backend>,
    pub broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub errno: i32,
    pub max_io: u64,
}

#[cfg(test)]
struct FlakyQueue {
    inner: Box<dyn leapio_backend::BackendQueue>,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    errno: i32,
    max_io: u64,
    failed: Vec<leapio_backend::Completion>,
}

#[cfg(test)]
impl leapio_backend::Backend for Flaky {
    fn geometry(&self) -> leapio_backend::Geometry {
        self.inner.geometry()
    }
    fn features(&self) -> leapio_backend::Features {
        self.inner.features()
    }
    fn open_queue(
        &self,
        depth: u32,
    ) -> Result<Box<dyn leapio_backend::BackendQueue>, leapio_backend::BackendError> {
        Ok(Box::new(FlakyQueue {
            inner: self.inner.open_queue(depth)?,
            broken: std::sync::Arc::clone(&self.broken),
            errno: self.errno,
            max_io: self.max_io,
            failed: Vec::new(),
        }))
    }
    fn max_io_bytes(&self) -> u64 {
        self.max_io
    }
    fn flush(&self) -> Result<(), leapio_backend::BackendError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "flaky".into()
    }
}

#[cfg(test)]
impl leapio_backend::BackendQueue for FlakyQueue {
    unsafe fn submit(
        &mut self,
        req: &leapio_backend::IoRequest<'_>,
    ) -> Result<(), leapio_backend::SubmitError> {
        if req.len > self.max_io {
            return Err(leapio_backend::SubmitError::Invalid(
                "request larger than the target's MDTS",
            ));
        }
        if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
            self.failed.push(leapio_backend::Completion {
                tag: req.tag,
                result: Err(leapio_backend::IoError::from_errno(self.errno)),
                value: 0,
            });
            return Ok(());
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.submit(req) }
    }
    fn kick(&mut self) -> Result<(), leapio_backend::BackendError> {
        self.inner.kick()
    }
    fn poll(&mut self, out: &mut Vec<leapio_backend::Completion>) -> usize {
        let n = self.failed.len();
        out.append(&mut self.failed);
        n + self.inner.poll(out)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.failed.len()
    }
    fn drain(
        &mut self,
        out: &mut Vec<leapio_backend::Completion>,
        timeout: std::time::Duration,
    ) -> usize {
        let n = self.failed.len();
        out.append(&mut self.failed);
        n + self.inner.drain(out, timeout)
    }
}

/// One request of the whole of `buf` at `offset` (none for a flush), run
/// to its completion: the tests' way of driving a queue.
#[cfg(test)]
pub(crate) fn run_io(
    q: &mut dyn leapio_backend::BackendQueue,
    kind: leapio_backend::IoKind,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), leapio_backend::IoError> {
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let req = leapio_backend::IoRequest {
        tag: 7,
        kind,
        offset,
        len: buf.len() as u64,
        iov: if buf.is_empty() { &[] } else { &iov },
        owner: 0,
        journal: None,
    };
    // SAFETY: buf outlives the request: it is drained below.
    unsafe { q.submit(&req) }.expect("submitted");
    let mut out = Vec::new();
    q.drain(&mut out, std::time::Duration::from_secs(5));
    assert_eq!(out.len(), 1, "one completion");
    assert_eq!(out[0].tag, 7);
    out[0].result
}

/// Open a service and its children (unclaimed, as
/// [`crate::open_backend_unclaimed`]: claiming the service claims them).
pub fn open(
    spec: &ServiceSpec,
) -> Result<std::sync::Arc<dyn leapio_backend::Backend>, leapio_backend::BackendError> {
    let children = spec
        .children()
        .iter()
        .map(crate::open_backend_unclaimed)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match spec {
        ServiceSpec::Stripe { strip, .. } => {
            std::sync::Arc::new(stripe::Striped::stripe(children, *strip)?)
        }
        ServiceSpec::Concat { .. } => std::sync::Arc::new(stripe::Striped::concat(children)?),
        ServiceSpec::Multipath { policy, .. } => {
            std::sync::Arc::new(multipath::Multipath::new(children, *policy)?)
        }
        ServiceSpec::Crypt { key, .. } => {
            let child = children.into_iter().next().ok_or_else(|| {
                leapio_backend::BackendError::Config("crypt needs its child".into())
            })?;
            std::sync::Arc::new(crypt::Crypt::new(child, key)?)
        }
        ServiceSpec::Mirror {
            bitmap,
            region,
            resync_mbps,
            ..
        } => std::sync::Arc::new(mirror::Mirror::new(
            children,
            bitmap,
            *region,
            *resync_mbps,
        )?),
    })
}

/// Split `(A|B|...)?OPTIONS` into the children's specs and the options
/// (the text after `?`, empty if none). Parentheses nest: a child may be a
/// service itself.
pub(crate) fn split_children(body: &str) -> Result<(Vec<&str>, &str), String> {
    let Some(inner) = body.strip_prefix('(') else {
        return Err("expected '(' and the children, e.g. raid0:(file:/a|file:/b)".into());
    };
    let mut depth = 1usize;
    let mut start = 0usize;
    let mut children = Vec::new();
    let mut end = None;
    for (i, c) in inner.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    children.push(&inner[start..i]);
                    end = Some(i);
                    break;
                }
            }
            '|' if depth == 1 => {
                children.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let Some(end) = end else {
        return Err("no ')' closes the children".into());
    };
    let rest = &inner[end + 1..];
    let opts = match rest.strip_prefix('?') {
        Some(o) => o,
        None if rest.is_empty() => "",
        None => {
            return Err(format!(
                "'{rest}' after the children (options follow a '?')"
            ))
        }
    };
    if let Some(i) = children.iter().position(|c| c.trim().is_empty()) {
        return Err(format!("child {} is empty", i + 1));
    }
    if children.len() > MAX_CHILDREN {
        return Err(format!(
            "{} children (at most {MAX_CHILDREN})",
            children.len()
        ));
    }
    Ok((children, opts))
}

/// Parse each child; an error names the child by its place and spec.
fn parse_children(children: &[&str]) -> Result<Vec<BackendSpec>, String> {
    children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse::<BackendSpec>()
                .map_err(|e| format!("child {} ({c}): {}", i + 1, crate::config::spec_reason(&e)))
        })
        .collect()
}

/// Parse the spec of service `kind` (`raid0`, `concat`) from what follows
/// its `kind:`; None if `kind` is no service.
pub(crate) fn parse(kind: &str, body: &str) -> Option<Result<ServiceSpec, String>> {
    let parse = || -> Result<ServiceSpec, String> {
        if body.contains(",bs=") {
            return Err("bs= does not apply to a service: its block size is its children's".into());
        }
        let (children, opts) = split_children(body)?;
        let children = parse_children(&children)?;
        let opts = Options::parse(opts, '&').map_err(|e| e.to_string())?;
        match kind {
            "raid0" => {
                opts.check_once(&["strip"]).map_err(|e| e.to_string())?;
                let strip = match opts.get("strip") {
                    Some(o) => o.size().map_err(|e| e.to_string())?,
                    None => DEFAULT_STRIP,
                };
                if !strip.is_power_of_two() || !(4096..=(16 << 20)).contains(&strip) {
                    return Err(format!(
                        "strip {strip} is not a power of two from 4 KiB to 16 MiB"
                    ));
                }
                if children.len() < 2 {
                    return Err("raid0 needs at least 2 children".into());
                }
                Ok(ServiceSpec::Stripe { children, strip })
            }
            "multipath" => {
                opts.check_once(&["policy"]).map_err(|e| e.to_string())?;
                let policy = match opts.get("policy").map(|o| o.value) {
                    None | Some("rr") => multipath::Policy::RoundRobin,
                    Some("qd") => multipath::Policy::QueueDepth,
                    Some(other) => {
                        return Err(format!(
                            "policy '{other}': expected rr (round-robin) or qd (queue depth)"
                        ))
                    }
                };
                if children.len() < 2 {
                    return Err("multipath needs at least 2 paths".into());
                }
                Ok(ServiceSpec::Multipath { children, policy })
            }
            "crypt" => {
                opts.check_once(&["key"]).map_err(|e| e.to_string())?;
                let key = opts
                    .require("key", "key=PATH (the key file)")
                    .map_err(|e| e.to_string())?;
                if children.len() != 1 {
                    return Err("crypt takes one child".into());
                }
                Ok(ServiceSpec::Crypt {
                    children,
                    key: std::path::PathBuf::from(key.value),
                })
            }
            "raid1" => {
                opts.check_once(&["bitmap", "region", "resync-mbps"])
                    .map_err(|e| e.to_string())?;
                let bitmap = opts
                    .require("bitmap", "bitmap=PATH (the write-intent bitmap file)")
                    .map_err(|e| e.to_string())?;
                if bitmap.value.is_empty() {
                    return Err("bitmap= names no file".into());
                }
                let region = match opts.get("region") {
                    Some(o) => o.size().map_err(|e| e.to_string())?,
                    None => mirror::DEFAULT_REGION,
                };
                if !region.is_power_of_two()
                    || !(mirror::MIN_REGION..=mirror::MAX_REGION).contains(&region)
                {
                    return Err(format!(
                        "region {region} is not a power of two from 64 KiB to 1 GiB"
                    ));
                }
                let resync_mbps = match opts.get("resync-mbps") {
                    Some(o) => o.number(1..=1_000_000u64).map_err(|e| e.to_string())?,
                    None => mirror::DEFAULT_RESYNC_MBPS,
                };
                if children.len() < 2 {
                    return Err("raid1 needs at least 2 children".into());
                }
                Ok(ServiceSpec::Mirror {
                    children,
                    bitmap: std::path::PathBuf::from(bitmap.value),
                    region,
                    resync_mbps,
                })
            }
            _ => {
                opts.check_once(&[]).map_err(|e| e.to_string())?;
                if children.len() < 2 {
                    return Err("concat needs at least 2 children".into());
                }
                Ok(ServiceSpec::Concat { children })
            }
        }
    };
    matches!(kind, "raid0" | "concat" | "crypt" | "multipath" | "raid1").then(parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_split_at_the_top_level_only() {
        let (c, o) = split_children("(a|b:(c|d)|e)?strip=4K").unwrap();
        assert_eq!(c, ["a", "b:(c|d)", "e"]);
        assert_eq!(o, "strip=4K");
        let (c, o) = split_children("(a|b)").unwrap();
        assert_eq!((c.len(), o), (2, ""));
        assert!(split_children("a|b").unwrap_err().contains("expected '('"));
        assert!(split_children("(a|b").unwrap_err().contains("no ')'"));
        assert!(split_children("(a||b)")
            .unwrap_err()
            .contains("child 2 is empty"));
        assert!(split_children("(a|b)x")
            .unwrap_err()
            .contains("after the children"));
    }

    #[test]
    fn specs_parse_print_and_name_the_bad_part() {
        for s in [
            "raid0:(ram:1M|ram:1M)",
            "raid0:(ram:1M|file:/srv/b.img)?strip=4K",
            "concat:(ram:1M|raid0:(ram:1M|ram:1M))",
            "raid1:(ram:1M|file:/srv/b.img)?bitmap=/var/lib/m.bitmap",
            "raid1:(ram:1M|ram:1M|raid0:(ram:1M|ram:1M))?bitmap=/b&region=64K&resync-mbps=20",
        ] {
            let spec: BackendSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        let err = |s: &str| s.parse::<BackendSpec>().unwrap_err().to_string();
        assert!(err("raid0:(ram:1M)").contains("at least 2 children"));
        assert!(err("raid0:(ram:1M|ram:1M)?strip=3K").contains("power of two"));
        assert!(err("raid0:(ram:1M|ram:1M)?stripe=4K").contains("unknown key 'stripe'"));
        let e = err("concat:(ram:1M|bogus:1)");
        assert!(
            e.contains("child 2 (bogus:1)") && e.contains("unknown backend type"),
            "{e}"
        );
        assert!(err("raid1:(ram:1M)?bitmap=/b").contains("at least 2 children"));
        assert!(err("raid1:(ram:1M|ram:1M)").contains("bitmap"));
        assert!(err("raid1:(ram:1M|ram:1M)?bitmap=/b&region=32K").contains("region 32768"));
        assert!(err("raid1:(ram:1M|ram:1M)?bitmap=/b&region=96K").contains("power of two"));
        let e = err("raid1:(ram:1M|ram:1M)?bitmap=/b&resync-mbps=0");
        assert!(e.contains("resync-mbps"), "{e}");
        assert!(err("raid1:(ram:1M|ram:1M)?bitmap=/b&speed=1").contains("unknown key 'speed'"));
        let e = err("raid1:(ram:1M|nope:1)?bitmap=/b");
        assert!(e.contains("child 2 (nope:1)"), "{e}");
        let e = err("concat:(ram:1M|raid0:(ram:1M|ram:0))");
        assert!(
            e.contains("child 2") && e.contains("must not be zero"),
            "{e}"
        );
    }
}
