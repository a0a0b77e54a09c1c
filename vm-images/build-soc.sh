#!/usr/bin/env bash
# Build the SoC VM's initramfs: busybox-static:arm64 (+ applet symlinks),
# the aarch64 socp and leapioctl (scripts/build-soc.sh) with the shared
# objects they load (from the root's aarch64 cross libc), the virtio-net
# and VFIO modules, and
# vm-images/soc-init as /init. The
# kernel is Debian's arm64 cloud kernel (PCI host generic, PL011 console,
# NVMe built in), unpacked by setup-host.sh.
#
# Writes $LEAPIO_DATA/images/soc.env with, as seen inside the root:
#   KERNEL=/var/lib/leapio/soc/pkgs/root/boot/vmlinuz-...  INITRD=...
# and prints the host path of the initramfs on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/lib.sh
. "$here/../scripts/lib.sh"
need_root
need_cmd cpio "apt-get install cpio"
need_cmd zstd "apt-get install zstd"
need_cmd xz "apt-get install xz-utils"

pkgs=$LEAPIO_DATA/soc/pkgs/root
kernels=("$pkgs"/boot/vmlinuz-*)
[[ -f ${kernels[0]} ]] || die "no arm64 kernel under $pkgs: run scripts/setup-host.sh"
socp=$(bash "$here/../scripts/build-soc.sh")
images=$LEAPIO_DATA/images
mkdir -p "$images"
cross=$LEAPIO_ROOT/usr/aarch64-linux-gnu/lib

work=$(mktemp -d "$images/soc-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
st=$work/root
mkdir -p "$st"/{usr/bin,usr/sbin,usr/lib,proc,sys,dev,tmp,run,etc,root}
ln -s usr/bin "$st/bin"
ln -s usr/sbin "$st/sbin"
ln -s usr/lib "$st/lib"
cp "$pkgs/usr/bin/busybox" "$st/usr/bin/busybox"
for a in $(chroot "$LEAPIO_ROOT" /usr/bin/busybox --list); do
    [[ -e $st/usr/bin/$a ]] || ln -s busybox "$st/usr/bin/$a"
done
for b in socp leapioctl; do
    cp "${socp%/*}/$b" "$st/usr/bin/$b"
    chroot "$LEAPIO_ROOT" aarch64-linux-gnu-strip "${LEAPIO_GUEST_DIR}/images/${work##*/}/root/usr/bin/$b" 2>/dev/null || true
done
for l in ld-linux-aarch64.so.1 libc.so.6 libgcc_s.so.1; do
    cp -L "$cross/$l" "$st/usr/lib/$l"
done
# virtio-net for the SoC's network (a remote NVMe/TCP namespace): modules of
# the cloud kernel, in load order
kmods=("$pkgs"/usr/lib/modules/*)
mkdir -p "$st/usr/lib/modules"
# and VFIO, to drive the SoC's SSD from user space (leapio.vfio=1)
for m in net/core/failover drivers/net/net_failover drivers/net/virtio_net \
    drivers/iommu/virtio-iommu drivers/vfio/vfio drivers/vfio/vfio_iommu_type1 drivers/vfio/pci/vfio-pci-core drivers/vfio/pci/vfio-pci; do
    xz -dc "${kmods[-1]}/kernel/$m.ko.xz" > "$st/usr/lib/modules/${m##*/}.ko"
done
install -m 0755 "$here/soc-init" "$st/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$st/etc/passwd"

hash=$( { sha256sum "$st/usr/bin/socp" "$st/usr/bin/leapioctl" "$here/soc-init" "$here/build-soc.sh"; echo "${kernels[-1]}"; } | sha256sum | cut -c1-16)
initrd=$LEAPIO_GUEST_DIR/images/soc-$hash.cpio.zst
out=$LEAPIO_ROOT$initrd
if [[ ! -f $out ]]; then
    find "$st" -exec touch -h -d @0 {} +
    (cd "$st" && find . -mindepth 1 | LC_ALL=C sort \
        | cpio --quiet -o -H newc --reproducible --owner=0:0) \
        | zstd -q -T1 -10 -o "$work/soc.cpio.zst"
    mv "$work/soc.cpio.zst" "$out"
    find "$images" -maxdepth 1 -name 'soc-*.cpio.zst' ! -name "${out##*/}" -delete
    log "SoC initramfs: $out ($(du -h "$out" | cut -f1))"
fi
kernel=${kernels[-1]#"$LEAPIO_ROOT"}
printf 'KERNEL=%s\nINITRD=%s\n' "$kernel" "$initrd" > "$images/soc.env"
echo "$out"
