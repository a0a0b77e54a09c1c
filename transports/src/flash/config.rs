//! `flash:PATH[?key=value&key=value...]`: a namespace served by the FTL on
//! emulated NAND kept in the file PATH.
//!
//! Geometry keys (used when the file is created; when it exists, any that
//! are given must match it):
//! - `channels=N` (default 2), `dies=N` dies per channel (2),
//!   `blocks=N` erase blocks per die (64), `pages=N` pages per block (64),
//!   `page=SIZE` page size, also the namespace's block size (4K),
//!   `oob=N` spare bytes per page (64, at least 36).
//!
//! FTL key: `op=X` over-provisioning, (physical - logical) / logical
//! (default 0.2; decimals to 0.001). The namespace has
//! `floor(physical pages / (1 + op))` blocks, recorded in the file: a
//! different `op` later is refused.
//!
//! Timing keys, in microseconds (decimals to 0.001), not recorded in the
//! file: `read=` (40), `prog=` (200), `erase=` (2000), `xfer=` one page over
//! the channel (page size at 800 MB/s: 5.12 for 4 KiB). `timing=0` sets them
//! all to zero.
//!
//! No commas, so the spec fits in socp's comma-separated `--ctrl` lists;
//! PATH cannot contain '?'.

use leapio_options::{OptionError, Options};
use std::fmt;
use std::path::PathBuf;

use super::nand::{NandGeometry, Timing};

/// What `flash:` names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlashSpec {
    /// The media file.
    pub path: PathBuf,
    /// Channels, if given.
    pub channels: Option<u32>,
    /// Dies per channel, if given.
    pub dies: Option<u32>,
    /// Erase blocks per die, if given.
    pub blocks: Option<u32>,
    /// Pages per block, if given.
    pub pages: Option<u32>,
    /// Page size, if given.
    pub page_size: Option<u32>,
    /// OOB bytes per page, if given.
    pub oob: Option<u32>,
    /// Over-provisioning in thousandths, if given.
    pub op_milli: Option<u32>,
    /// Read latency (ns), if given.
    pub read_ns: Option<u64>,
    /// Program latency (ns), if given.
    pub program_ns: Option<u64>,
    /// Erase latency (ns), if given.
    pub erase_ns: Option<u64>,
    /// Channel transfer time per page (ns), if given.
    pub xfer_ns: Option<u64>,
    /// `media=zoned`: PATH is a zoned block device, or a file emulating
    /// one (see [`super::zoned_media`]), not emulated NAND.
    pub zoned: bool,
    /// Zone size of a new zoned emulation file, if given.
    pub zone_bytes: Option<u64>,
    /// Zones of a new zoned emulation file, if given.
    pub zones: Option<u32>,
}

/// Over-provisioning when the spec names none, in thousandths.
pub const DEFAULT_OP_MILLI: u32 = 200;

impl FlashSpec {
    /// The geometry a new media file gets: given values, defaults for the
    /// rest.
    pub fn new_geometry(&self) -> NandGeometry {
        let d = NandGeometry::default();
        NandGeometry {
            channels: self.channels.unwrap_or(d.channels),
            dies_per_channel: self.dies.unwrap_or(d.dies_per_channel),
            blocks_per_die: self.blocks.unwrap_or(d.blocks_per_die),
            pages_per_block: self.pages.unwrap_or(d.pages_per_block),
            page_size: self.page_size.unwrap_or(d.page_size),
            oob_size: self.oob.unwrap_or(d.oob_size),
        }
    }

    /// The keys given that differ from `geo`, as "key=spec (media: value)".
    pub fn geometry_mismatches(&self, geo: &NandGeometry) -> Vec<String> {
        [
            ("channels", self.channels, geo.channels),
            ("dies", self.dies, geo.dies_per_channel),
            ("blocks", self.blocks, geo.blocks_per_die),
            ("pages", self.pages, geo.pages_per_block),
            ("page", self.page_size, geo.page_size),
            ("oob", self.oob, geo.oob_size),
        ]
        .into_iter()
        .filter_map(|(k, asked, has)| match asked {
            Some(a) if a != has => Some(format!("{k}={a} (media: {has})")),
            _ => None,
        })
        .collect()
    }

    /// Timing: FEMU's defaults for the page size, overridden by given keys.
    pub fn timing(&self, page_size: u32) -> Timing {
        let d = Timing::femu(page_size);
        Timing {
            read_ns: self.read_ns.unwrap_or(d.read_ns),
            program_ns: self.program_ns.unwrap_or(d.program_ns),
            erase_ns: self.erase_ns.unwrap_or(d.erase_ns),
            xfer_ns: self.xfer_ns.unwrap_or(d.xfer_ns),
        }
    }

    /// Over-provisioning as a fraction.
    pub fn op(&self) -> f64 {
        f64::from(self.op_milli.unwrap_or(DEFAULT_OP_MILLI)) / 1000.0
    }
}

/// `1234` thousandths as "1.234", "0.2", "5".
fn milli(v: u64) -> String {
    let (i, f) = (v / 1000, v % 1000);
    if f == 0 {
        return i.to_string();
    }
    let s = format!("{i}.{f:03}");
    s.trim_end_matches('0').to_owned()
}

/// The keys of `flash:PATH?...`.
pub(crate) const KEYS: [&str; 15] = [
    "channels",
    "dies",
    "blocks",
    "pages",
    "oob",
    "page",
    "op",
    "read",
    "prog",
    "erase",
    "xfer",
    "timing",
    "media",
    "zone_size",
    "zones",
];

const SHAPE: &str = "expected 'flash:PATH[?channels=N&dies=N&blocks=N&pages=N&page=SIZE&oob=N&op=X&read=US&prog=US&erase=US&xfer=US&timing=0]'";

/// Split what follows `flash:` (or `zns:`) into the path and its options.
pub(crate) fn split(body: &str) -> Result<(&str, Options<'_>), String> {
    if body.contains(',') {
        return Err(format!("commas are not allowed ({SHAPE})"));
    }
    let (path, query) = body.split_once('?').unwrap_or((body, ""));
    if path.is_empty() {
        return Err(format!("flash path is empty ({SHAPE})"));
    }
    let opts = Options::parse(query, '&').map_err(|e| format!("{e} ({SHAPE})"))?;
    Ok((path, opts))
}

/// Parse what follows `flash:`.
pub(crate) fn parse(body: &str) -> Result<FlashSpec, String> {
    let (path, opts) = split(body)?;
    opts.check_once(&KEYS)
        .map_err(|e| format!("{e} ({SHAPE})"))?;
    from_options(path, &opts)
}

/// The FTL's spec from `opts` (checked by the caller; keys not of the FTL
/// are the caller's).
pub(crate) fn from_options(path: &str, opts: &Options<'_>) -> Result<FlashSpec, String> {
    let mut s = FlashSpec {
        path: PathBuf::from(path),
        ..FlashSpec::default()
    };
    let e = |e: OptionError| e.to_string();
    for o in opts.iter() {
        let count = |max: u32| o.number(1..=max).map(Some).map_err(e);
        let us = || o.milli(10_000_000).map(Some).map_err(e);
        match o.key {
            "channels" => s.channels = count(64)?,
            "dies" => s.dies = count(64)?,
            "blocks" => s.blocks = count(1 << 20)?,
            "pages" => s.pages = count(1 << 16)?,
            "oob" => s.oob = count(4096)?,
            "page" => match u32::try_from(o.size().map_err(e)?) {
                Ok(p) if p.is_power_of_two() && (512..=65536).contains(&p) => s.page_size = Some(p),
                _ => {
                    return Err(format!(
                        "page size {} is not a power of two between 512 and 65536",
                        o.value
                    ))
                }
            },
            "op" => {
                let m = o.milli(10).map_err(e)?;
                s.op_milli = Some(u32::try_from(m).map_err(|_| "op too large".to_owned())?);
            }
            "read" => s.read_ns = us()?,
            "prog" => s.program_ns = us()?,
            "erase" => s.erase_ns = us()?,
            "xfer" => s.xfer_ns = us()?,
            "timing" if o.value == "0" => {
                s.read_ns = Some(0);
                s.program_ns = Some(0);
                s.erase_ns = Some(0);
                s.xfer_ns = Some(0);
            }
            "timing" => {
                return Err(format!(
                    "timing= only takes 0 (all latencies zero), got '{}'",
                    o.value
                ))
            }
            "media" => match o.value {
                "zoned" => s.zoned = true,
                "nand" => {}
                v => return Err(format!("media= takes nand or zoned, got '{v}'")),
            },
            "zone_size" => {
                let z = o.size().map_err(e)?;
                if z == 0 || z % 4096 != 0 {
                    return Err(format!("zone_size {z} is not a multiple of 4 KiB"));
                }
                s.zone_bytes = Some(z);
            }
            "zones" => s.zones = count(1 << 20)?,
            _ => {}
        }
    }
    let seen = |k: &str| opts.has(k);
    if seen("timing") && ["read", "prog", "erase", "xfer"].into_iter().any(seen) {
        return Err("timing=0 and a latency key cannot be combined".to_owned());
    }
    let zoned_only = ["zone_size", "zones"];
    let nand_only = [
        "channels", "blocks", "pages", "oob", "read", "prog", "erase", "xfer", "timing",
    ];
    if s.zoned {
        if let Some(k) = nand_only.into_iter().find(|k| seen(k)) {
            return Err(format!(
                "{k}= does not apply to media=zoned (the zones give the geometry; no timing model)"
            ));
        }
    } else if let Some(k) = zoned_only.into_iter().find(|k| seen(k)) {
        return Err(format!("{k}= only applies to media=zoned"));
    }
    Ok(s)
}

impl fmt::Display for FlashSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flash:{}", self.path.display())?;
        let mut sep = '?';
        let mut opt = |f: &mut fmt::Formatter<'_>, k: &str, v: String| {
            let r = write!(f, "{sep}{k}={v}");
            sep = '&';
            r
        };
        for (k, v) in [
            ("channels", self.channels),
            ("dies", self.dies),
            ("blocks", self.blocks),
            ("pages", self.pages),
            ("page", self.page_size),
            ("oob", self.oob),
        ] {
            if let Some(v) = v {
                opt(f, k, v.to_string())?;
            }
        }
        if let Some(op) = self.op_milli {
            opt(f, "op", milli(u64::from(op)))?;
        }
        let times = [self.read_ns, self.program_ns, self.erase_ns, self.xfer_ns];
        if times.iter().all(|t| *t == Some(0)) {
            return opt(f, "timing", "0".into());
        }
        for (k, v) in ["read", "prog", "erase", "xfer"].into_iter().zip(times) {
            if let Some(ns) = v {
                opt(f, k, milli(ns))?;
            }
        }
        if self.zoned {
            opt(f, "media", "zoned".into())?;
        }
        if let Some(z) = self.zone_bytes {
            opt(f, "zone_size", z.to_string())?;
        }
        if let Some(z) = self.zones {
            opt(f, "zones", z.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let s = parse(
            "/tmp/f.nand?channels=4&dies=2&blocks=32&pages=16&page=4K&op=0.25&read=40&xfer=5.12",
        )
        .unwrap();
        assert_eq!(s.channels, Some(4));
        assert_eq!(s.page_size, Some(4096));
        assert_eq!(s.op_milli, Some(250));
        assert_eq!(s.read_ns, Some(40_000));
        assert_eq!(s.xfer_ns, Some(5_120));
        assert_eq!(s.program_ns, None);
        let text = format!(
            "flash:{}",
            "/tmp/f.nand?channels=4&dies=2&blocks=32&pages=16&page=4096&op=0.25&read=40&xfer=5.12"
        );
        assert_eq!(s.to_string(), text);
        let z = parse("/x?timing=0").unwrap();
        assert_eq!(z.timing(4096), Timing::ZERO);
        assert_eq!(z.to_string(), "flash:/x?timing=0");
        assert_eq!(parse("/x").unwrap().timing(4096), Timing::femu(4096));
    }

    #[test]
    fn bad_specs_name_the_problem() {
        for (spec, want) in [
            ("", "path is empty"),
            ("/x?channels=0", "channels must be a number from 1"),
            ("/x?page=3000", "not a power of two"),
            ("/x?op=0.2.1", "op must be a decimal"),
            ("/x?op=0.0001", "at most 3 decimals"),
            ("/x?read=-1", "read must be"),
            ("/x?colour=red", "unknown key 'colour'"),
            ("/x?dies=2&dies=2", "given twice"),
            ("/x?dies", "not key=value"),
            ("/x,bs=4096", "commas"),
            ("/x?timing=1", "only takes 0"),
            ("/x?timing=0&read=4", "cannot be combined"),
        ] {
            let e = parse(spec).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn mismatches_name_the_keys() {
        let s = parse("/x?blocks=128&pages=64").unwrap();
        let m = s.geometry_mismatches(&NandGeometry::default());
        assert_eq!(m, vec!["blocks=128 (media: 64)".to_owned()]);
    }
}
