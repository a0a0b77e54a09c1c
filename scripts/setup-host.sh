#!/usr/bin/env bash
# Install everything the demo and the tests need on a Debian 12 host (root).
# Idempotent: a second run only checks and returns in a few seconds.
#
#  - host packages: mmdebstrap (to build the trixie root), cpio, zstd and
#    xz-utils (guest initramfs), fio (host baseline), python3 (parses the
#    guest's output); liburing headers are not needed (io-uring crate is
#    pure Rust).
#  - a Debian trixie root under $LEAPIO_CACHE/trixie with QEMU >= 10.1 from
#    trixie-backports (the vfio-user-pci client), the guest kernel and the
#    guest tools (busybox, fio, nvme-cli) that vm-images/build.sh packs into an
#    initramfs.
#  - for the SoC VM (an emulated ARM SoC running socp): in the same root,
#    qemu-system-aarch64 (trixie-backports), rustc/cargo 1.97 with the arm64
#    standard library and the aarch64 cross linker (scripts/build-soc.sh),
#    and, unpacked under $LEAPIO_DATA/soc/pkgs, Debian's arm64 cloud kernel
#    and busybox-static:arm64 (vm-images/build-soc.sh).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

need_root

# (libibverbs-dev, librdmacm-dev, libclang-dev, pkg-config: the RDMA
# backends build on rdma-sys, whose build runs bindgen; tmux: the test of
# leapioctl top reads its screen)
host_pkgs=(mmdebstrap cpio fio xz-utils zstd python3 libibverbs-dev librdmacm-dev libclang-dev pkg-config tmux)
missing=()
for p in "${host_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing host packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Debian mirror (and HTTP proxy) of this machine's own apt: the first
# URI of a Debian source that is not the security archive, from deb822
# .sources files, then one-line .list ones. LEAPIO_DEBIAN_MIRROR and
# LEAPIO_APT_PROXY override them. APT_ETC is where apt's configuration is.
host_debian_mirror() {
    local etc=${APT_ETC:-/etc/apt} f u
    for f in "$etc"/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        u=$(awk 'BEGIN { RS = "" }
            /(^|\n)Types:[^\n]*deb([ \t]|\n|$)/ && !/(^|\n)Suites:[^\n]*-security/ {
                if (match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/)) {
                    u = substr($0, RSTART, RLENGTH); sub(/^\n?URIs:[ \t]*/, "", u); print u; exit
                }
            }' "$f")
        [[ -z $u ]] || { echo "$u"; return 0; }
    done
    for f in "$etc/sources.list" "$etc"/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        u=$(awk '$1 == "deb" && !/-security/ {
                for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; exit }
            }' "$f")
        [[ -z $u ]] || { echo "$u"; return 0; }
    done
    return 1
}
mirror=${LEAPIO_DEBIAN_MIRROR:-$(host_debian_mirror || echo http://deb.debian.org/debian)}
mirror=${mirror%/}
proxy=${LEAPIO_APT_PROXY:-}
if [[ -z $proxy ]]; then
    eval "$(apt-config shell proxy Acquire::http::Proxy 2>/dev/null)" || true
fi
aptopts=()
[[ -z $proxy ]] || aptopts=(--aptopt="Acquire::http::Proxy \"$proxy\"")

root="$LEAPIO_CACHE/trixie"
stamp="$root/.leapio-ready-v1"
if [[ ! -f $stamp ]]; then
    log "building the Debian trixie root in $root from $mirror${proxy:+ through $proxy} (QEMU from trixie-backports, guest kernel and tools)"
    rm -rf "$root" "$root.tmp"
    mkdir -p "$LEAPIO_CACHE"
    # the hooks are run by mmdebstrap, which sets $1
    # shellcheck disable=SC2016
    mmdebstrap --variant=apt --quiet "${aptopts[@]}" \
        --components=main \
        --include=ca-certificates \
        --setup-hook='mkdir -p "$1/etc/apt/sources.list.d"' \
        --customize-hook="echo 'deb $mirror trixie-backports main' > \"\$1/etc/apt/sources.list.d/backports.list\"" \
        --customize-hook='chroot "$1" apt-get update -qq' \
        --customize-hook='chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t trixie-backports qemu-system-x86 qemu-utils' \
        --customize-hook='chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-image-cloud-amd64 busybox-static fio nvme-cli' \
        trixie "$root.tmp" "$mirror"
    mv "$root.tmp" "$root"
    touch "$stamp"
fi
qemu_version=$(chroot "$root" qemu-system-x86_64 --version | head -1)
log "QEMU in $root: $qemu_version"
chroot "$root" qemu-system-x86_64 -device help 2>/dev/null | grep -q vfio-user-pci \
    || die "QEMU in $root has no vfio-user-pci device"

soc_stamp="$root/.leapio-soc-ready-v1"
if [[ ! -f $soc_stamp ]]; then
    log "adding the SoC VM's tools to $root (qemu-system-aarch64, rustc + arm64 std, cross linker, arm64 kernel)"
    chroot "$root" dpkg --add-architecture arm64
    chroot "$root" apt-get update -qq
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t trixie-backports qemu-system-arm rustc cargo libstd-rust-dev:arm64 >/dev/null
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
    pkgs=$LEAPIO_DATA/soc/pkgs
    rm -rf "$pkgs"
    mkdir -p "$pkgs"
    kpkg=$(chroot "$root" apt-cache depends linux-image-cloud-arm64:arm64 | sed -n 's/.*Depends: \(linux-image-[^:]*\).*/\1/p' | head -1)
    [[ -n $kpkg ]] || die "cannot find the arm64 cloud kernel package"
    chroot "$root" sh -c "cd $LEAPIO_GUEST_DIR/soc/pkgs && apt-get download -q $kpkg:arm64 busybox-static:arm64" >/dev/null 2>&1 \
        || die "downloading $kpkg:arm64 and busybox-static:arm64 failed"
    for deb in "$pkgs"/*.deb; do
        dpkg-deb -x "$deb" "$pkgs/root"
    done
    rm -f "$pkgs"/*.deb
    touch "$soc_stamp"
fi
chroot "$root" qemu-system-aarch64 -device help 2>/dev/null | grep -q vfio-user-pci \
    || die "qemu-system-aarch64 in $root has no vfio-user-pci device"

# NVMe over RDMA runs in a guest with Debian's generic kernel, which has
# soft-RoCE (rdma_rxe) beside nvme-rdma and nvmet-rdma (the cloud kernel
# has no software RDMA device), with the verbs libraries and the rxe
# provider, iproute2 (rdma link add) and kmod (the kernel loads crc32 for
# rxe through /sbin/modprobe).
rdma_stamp="$root/.leapio-rdma-ready-v1"
if [[ ! -f $rdma_stamp ]]; then
    log "adding the RDMA guest's kernel and tools to $root (linux-image-amd64, rdma-core, iproute2, kmod)"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        linux-image-amd64 ibverbs-providers libibverbs1 librdmacm1 ibverbs-utils iproute2 kmod >/dev/null \
        || die "installing the RDMA guest's packages failed"
    touch "$rdma_stamp"
fi
