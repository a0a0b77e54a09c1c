//! Parsing of backend spec strings: `ram:64M`, `ram:1G,bs=4096`,
//! `file:/path/to/img`, `file:/dev/nvme0n1,bs=4096`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::flash::{FlashSpec, ZnsSpec};
use crate::nvme_pci::NvmePciSpec;
use crate::nvmf::{NvmfSpec, Transport};
use crate::{BackendError, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

/// Block size of RAM backends and regular files when the spec names none.
pub const DEFAULT_BLOCK_SIZE: u32 = 512;

/// `BackendSpec::File::block_size` value meaning "choose": the device's
/// logical block size for a block device, [`DEFAULT_BLOCK_SIZE`] for a file.
pub const AUTO_BLOCK_SIZE: u32 = 0;

/// Which backend to open.
///
/// Text form (`FromStr` / `Display`):
/// - `ram:SIZE[,bs=N]`: SIZE is bytes with an optional binary suffix
///   K, M, G or T (`64M`, `1G`); N defaults to 512.
/// - `file:PATH[,bs=N]`: a regular file or a block device; without `bs` the
///   block size is the device's logical block size (512 for files).
///
/// - `nvme-tcp:HOST:PORT/SUBNQN[?nsid=N&hostnqn=NQN&qd=N&hdgst=1&ddgst=1...]`:
///   a namespace of a remote NVMe/TCP subsystem (see [`NvmfSpec`]); its
///   block size is the remote namespace's.
///
/// - `nvme-rdma:HOST:PORT/SUBNQN[?...]`: a namespace of a remote NVMe/RDMA
///   subsystem (the options of `nvme-tcp:` but the digests).
///
/// - `nvme-pci:BDF[?nsid=N&timeout=MS]`: a namespace of an NVMe SSD bound
///   to vfio-pci, driven from user space (see [`NvmePciSpec`]).
///
/// - `flash:PATH[?channels=N&dies=N&blocks=N&pages=N&page=SIZE&op=X&...]`:
///   an FTL on emulated NAND in the file PATH, created when absent (see
///   [`FlashSpec`]); its block size is the flash page size.
///
/// - `zns:PATH[?channels=N&...&max_open=N&max_active=N]`: a zoned
///   namespace on emulated NAND in the file PATH (see [`ZnsSpec`]).
///
/// Block sizes are powers of two from 512 to 65536.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendSpec {
    /// Anonymous memory of `size` bytes (a multiple of `block_size`).
    Ram {
        /// Bytes.
        size: u64,
        /// Bytes per block.
        block_size: u32,
    },
    /// A regular file or a block device.
    File {
        /// Path to the file or device node.
        path: PathBuf,
        /// Bytes per block, or [`AUTO_BLOCK_SIZE`].
        block_size: u32,
    },
    /// A namespace of a remote NVMe/TCP subsystem.
    NvmeTcp(NvmfSpec),
    /// A namespace of an NVMe SSD driven through VFIO.
    NvmePci(NvmePciSpec),
    /// A namespace of a remote NVMe/RDMA subsystem.
    NvmeRdma(NvmfSpec),
    /// An FTL on emulated NAND in a file.
    Flash(FlashSpec),
    /// A zoned namespace on emulated NAND in a file.
    Zns(ZnsSpec),
    /// A storage service over other backends (`raid0:(...)`, `concat:(...)`).
    Service(Box<crate::services::ServiceSpec>),
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSpec::Ram { size, block_size } => {
                write!(f, "ram:{}", format_size(*size))?;
                if *block_size != DEFAULT_BLOCK_SIZE {
                    write!(f, ",bs={block_size}")?;
                }
                Ok(())
            }
            BackendSpec::File { path, block_size } => {
                write!(f, "file:{}", path.display())?;
                if *block_size != AUTO_BLOCK_SIZE {
                    write!(f, ",bs={block_size}")?;
                }
                Ok(())
            }
            BackendSpec::NvmeTcp(spec) => write!(f, "{spec}"),
            BackendSpec::NvmePci(spec) => write!(f, "{spec}"),
            BackendSpec::NvmeRdma(spec) => write!(f, "{spec}"),
            BackendSpec::Flash(spec) => write!(f, "{spec}"),
            BackendSpec::Zns(spec) => write!(f, "{spec}"),
            BackendSpec::Service(spec) => write!(f, "{spec}"),
        }
    }
}

pub(crate) fn format_size(size: u64) -> String {
    for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        let unit = 1u64 << shift;
        if size >= unit && size % unit == 0 {
            return format!("{}{suffix}", size >> shift);
        }
    }
    size.to_string()
}

/// Parse a size: decimal bytes with an optional binary suffix K, M, G or T
/// (either case), e.g. `4096`, `64M`, `1G` (the option grammar's sizes).
pub use leapio_options::size as parse_size;

fn parse_block_size(text: &str) -> Result<u32, String> {
    let value = parse_size(text).map_err(|e| format!("block size: {e}"))?;
    match u32::try_from(value) {
        Ok(bs) if bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) => Ok(bs),
        _ => Err(format!(
            "block size {value} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}"
        )),
    }
}

/// Splits trailing `,bs=N` options off `body`. Only known keys are options, so
/// a file path may itself contain commas.
fn split_options(body: &str) -> Result<(&str, Option<u32>), String> {
    let mut rest = body;
    let mut block_size = None;
    while let Some((head, tail)) = rest.rsplit_once(',') {
        let Some((key, value)) = tail.split_once('=') else {
            break;
        };
        match key.trim() {
            "bs" => {
                if block_size.is_some() {
                    return Err("option 'bs' given twice".to_owned());
                }
                block_size = Some(parse_block_size(value.trim())?);
            }
            _ => break,
        }
        rest = head;
    }
    Ok((rest, block_size))
}

/// Why a spec was refused, without the spec itself (a service names its
/// child).
pub(crate) fn spec_reason(e: &BackendError) -> String {
    match e {
        BackendError::Spec { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn parse_spec(s: &str) -> Result<BackendSpec, String> {
    let Some((kind, body)) = s.split_once(':') else {
        return Err(
            "expected 'ram:SIZE[,bs=N]', 'file:PATH[,bs=N]', 'nvme-tcp:HOST:PORT/SUBNQN[?...]', 'nvme-pci:BDF[?...]' or 'flash:PATH[?...]'"
                .to_owned(),
        );
    };
    if let Some(service) = crate::services::parse(kind.trim(), body) {
        return service.map(|s| BackendSpec::Service(Box::new(s)));
    }
    match kind.trim() {
        "ram" => {
            let (size_text, bs) = split_options(body)?;
            if size_text.contains(',') {
                let (_, opt) = size_text.split_once(',').unwrap_or_default();
                return Err(format!("unknown option '{opt}' (known: bs=N)"));
            }
            let size = parse_size(size_text)?;
            let block_size = bs.unwrap_or(DEFAULT_BLOCK_SIZE);
            if size == 0 {
                return Err("ram size must not be zero".to_owned());
            }
            if size % u64::from(block_size) != 0 {
                return Err(format!(
                    "ram size {size} is not a multiple of the block size {block_size}"
                ));
            }
            Ok(BackendSpec::Ram { size, block_size })
        }
        "file" => {
            let (path, bs) = split_options(body)?;
            if path.is_empty() {
                return Err("file path is empty".to_owned());
            }
            Ok(BackendSpec::File {
                path: PathBuf::from(path),
                block_size: bs.unwrap_or(AUTO_BLOCK_SIZE),
            })
        }
        "nvme-tcp" => crate::nvmf::parse_spec(Transport::Tcp, body).map(BackendSpec::NvmeTcp),
        "nvme-pci" => crate::nvme_pci::parse_spec(body).map(BackendSpec::NvmePci),
        "nvme-rdma" => crate::nvmf::parse_spec(Transport::Rdma, body).map(BackendSpec::NvmeRdma),
        "flash" => crate::flash::parse_spec(body).map(BackendSpec::Flash),
        "zns" => crate::flash::zns::parse_spec(body).map(BackendSpec::Zns),
        other => Err(format!(
            "unknown backend type '{other}' (known: ram, file, nvme-tcp, nvme-rdma, nvme-pci, flash, zns; services: raid0, concat, crypt, multipath, raid1)"
        )),
    }
}

impl FromStr for BackendSpec {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_spec(s).map_err(|reason| BackendError::Spec {
            spec: s.to_owned(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> BackendSpec {
        s.parse()
            .unwrap_or_else(|e| panic!("'{s}' should parse: {e}"))
    }

    fn err(s: &str) -> String {
        match s.parse::<BackendSpec>() {
            Ok(spec) => panic!("'{s}' should not parse, got {spec:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("").unwrap_err().contains("empty"));
        assert!(parse_size("M").unwrap_err().contains("number"));
    }

    #[test]
    fn good_specs() {
        assert_eq!(
            ok("ram:64M"),
            BackendSpec::Ram {
                size: 64 << 20,
                block_size: 512
            }
        );
        assert_eq!(
            ok("ram:1G,bs=4096"),
            BackendSpec::Ram {
                size: 1 << 30,
                block_size: 4096
            }
        );
        assert_eq!(
            ok("ram:1G,bs=4K"),
            BackendSpec::Ram {
                size: 1 << 30,
                block_size: 4096
            }
        );
        assert_eq!(
            ok("file:/var/lib/x.img"),
            BackendSpec::File {
                path: "/var/lib/x.img".into(),
                block_size: AUTO_BLOCK_SIZE
            }
        );
        assert_eq!(
            ok("file:/dev/nvme0n1,bs=4096"),
            BackendSpec::File {
                path: "/dev/nvme0n1".into(),
                block_size: 4096
            }
        );
        // Commas that are not options stay in the path.
        assert_eq!(
            ok("file:/tmp/a,b.img,bs=512"),
            BackendSpec::File {
                path: "/tmp/a,b.img".into(),
                block_size: 512
            }
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "ram:64M",
            "ram:1G,bs=4096",
            "ram:1536K",
            "file:/x.img",
            "file:/dev/sdb,bs=4096",
        ] {
            assert_eq!(ok(s).to_string(), s);
            assert_eq!(ok(&ok(s).to_string()), ok(s));
        }
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let e = err("disk:/x");
        assert!(
            e.contains("'disk:/x'") && e.contains("unknown backend type 'disk'"),
            "{e}"
        );
        let e = err("ram64M");
        assert!(e.contains("expected 'ram:SIZE"), "{e}");
        let e = err("ram:64X");
        assert!(e.contains("unknown suffix 'X'"), "{e}");
        let e = err("ram:");
        assert!(e.contains("size is empty"), "{e}");
        let e = err("ram:0");
        assert!(e.contains("must not be zero"), "{e}");
        let e = err("ram:1000");
        assert!(e.contains("not a multiple of the block size 512"), "{e}");
        let e = err("ram:64M,bs=1000");
        assert!(e.contains("block size 1000 is not a power of two"), "{e}");
        let e = err("ram:64M,bs=256");
        assert!(e.contains("block size 256"), "{e}");
        let e = err("ram:64M,bs=abc");
        assert!(e.contains("block size: size 'abc'"), "{e}");
        let e = err("ram:64M,foo=1");
        assert!(e.contains("unknown option 'foo=1'"), "{e}");
        let e = err("ram:64M,bs=512,bs=512");
        assert!(e.contains("'bs' given twice"), "{e}");
        let e = err("file:");
        assert!(e.contains("file path is empty"), "{e}");
        let e = err("file:,bs=4096");
        assert!(e.contains("file path is empty"), "{e}");
    }
}
